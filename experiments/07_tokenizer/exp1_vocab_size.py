"""实验 1：词表大小换来了什么？——vocab 256 / 512 / 1024 / 2048 / 6400（你的 BPE，TinyShakespeare）。

对每个词表大小：用你的 train_bpe 在训练集（前 90%）上训练，量验证集（后 10%）上每个 token 平均几个字节；
算出同样大小的词表在 MiniMind2-small（hidden 512，共享 embedding）里占多少参数；
再用同样的训练计算量（同样的步数 × batch × 序列长度，单位是 token）训练一个小语言模型，
把验证 loss 换算成 **bits per byte**——不同词表的“每 token loss”不能直接比（token 长短不同），每字节的比特数可以。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：装好 Ctrl-C 的处理
sys.path.insert(0, str(Path(__file__).resolve().parent))

import math  # noqa: E402

from _bpe_tools import BPEExperiment, TokenCorpus, cpu_seconds, load_bpe  # noqa: E402
from kata.experiment import fmt_mean_std, summarize  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402
from kata.tinylm import TinyLMConfig, build_tiny_lm, count_parameters, evaluate, train_lm  # noqa: E402

MINIMIND2_SMALL_PARAMS = 25_829_888   # vocab 6400、hidden 512、embedding 与 lm_head 共享时的总参数
MINIMIND2_HIDDEN = 512
NON_EMBEDDING = MINIMIND2_SMALL_PARAMS - 6400 * MINIMIND2_HIDDEN


def embedding_share(vocab_size: int) -> float:
    """词表为 vocab_size 时，MiniMind2-small 的参数里 embedding（= lm_head，共享）占多少。"""
    emb = vocab_size * MINIMIND2_HIDDEN
    return emb / (NON_EMBEDDING + emb)


class VocabSize(BPEExperiment):
    name = "exp1_vocab_size"
    module = "07_tokenizer"
    title = "实验 1：词表大小 256 / 512 / 1024 / 2048 / 6400——压缩率、embedding 占比、bits per byte"
    description = (
        "用你的 train_bpe 训练五个词表，量每个 token 的字节数、MiniMind2-small 里 embedding 的参数占比，\n"
        "并在同样的训练计算量下训练小语言模型，比较验证集上的 bits per byte。对应 teaching.md §4。"
    )
    requires = ("train_bpe", "BPETokenizer")
    can_use_synthetic = False
    synthetic_reason = "合成语料只有几百个不同的词，BPE 很快就把整词都合并完，压缩率和 bits per byte 都会失真"

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="每个小语言模型训练多少步（默认：快速 200，完整 300）")
        parser.add_argument("--dim", type=int, default=64, help="小语言模型的宽度（默认 64）")

    def run(self) -> dict:
        train_bpe, Tok = load_bpe(self)
        corpus = self.load_corpus()
        text = corpus.text
        cut = int(len(text) * 0.9)
        train_text, val_text = text[:cut], text[cut:]
        sizes = self.by_mode(smoke=(256, 300), quick=(256, 512, 1024, 2048, 6400), full=(256, 512, 1024, 2048, 6400))
        steps = self.args.steps or self.by_mode(smoke=3, quick=200, full=300)
        batch, seq_len, dim = 16, 64, self.args.dim
        seeds = self.seeds(full=3, quick=1)
        self.config(vocab_sizes=sizes, steps=steps, batch_size=batch, seq_len=seq_len, dim=dim, n_layers=2, n_heads=4,
                    lr=3e-3, tokens_per_run=steps * batch * seq_len, split="前 90% 训练 BPE 与模型，后 10% 验证")

        rows, results = [], {}
        val_bytes = len(val_text.encode("utf-8"))
        for v in sizes:
            (vocab, merges), t_train = cpu_seconds(train_bpe, train_text, v)
            tok = Tok(vocab, merges)
            (train_ids, val_ids), t_enc = cpu_seconds(lambda: (tok.encode(train_text), tok.encode(val_text)))
            if tok.decode(val_ids) != val_text:
                self.note(f"注意：vocab {v} 的分词器没能把验证集原样解码回来——先让 pytest exercises/07_tokenizer 通过。")
            bpt = val_bytes / len(val_ids)
            data = TokenCorpus(train_ids, val_ids)
            bpbs, params = [], 0
            for seed in seeds:
                cfg = TinyLMConfig(vocab_size=tok.vocab_size, dim=dim, n_layers=2, n_heads=4, max_seq_len=seq_len)
                model, _ = build_tiny_lm(cfg, impl=self.impl, seed=seed)
                params = count_parameters(model)
                res = train_lm(model, data, steps=steps, batch_size=batch, seq_len=seq_len, lr=3e-3, seed=seed,
                               progress=self.progress, desc=f"vocab {v} seed {seed}", eval_iters=2)
                if res.diverged:
                    self.note(f"vocab {v}、种子 {seed} 的小模型在第 {res.diverged_at} 步发散（loss 变成 NaN / inf），记为 NaN。")
                    bpbs.append(float("nan"))
                    continue
                loss = evaluate(model, data, seq_len=seq_len, batch_size=batch, iters=self.by_mode(smoke=2, quick=20, full=40))
                bpbs.append(loss / math.log(2) / bpt)
            results[v] = {"bytes_per_token": bpt, "chars_per_token": len(val_text) / len(val_ids),
                          "merges": len(merges), "bpe_train_cpu_s": t_train, "encode_cpu_s": t_enc,
                          "embedding_share_minimind2_small": embedding_share(v), "tiny_lm_params": params,
                          "bpb": bpbs, "bpb_mean_std": summarize(bpbs),
                          "bytes_seen_per_run": steps * batch * seq_len * bpt}
            rows.append([v, f"{bpt:.2f}", f"{embedding_share(v) * 100:.1f}%", f"{params:,}",
                         fmt_mean_std(bpbs) if len(bpbs) > 1 else f"{bpbs[0]:.3f}", f"{t_train:.1f}"])

        self.print_table(["词表", "字节/token（验证集）", "embedding 占 MiniMind2-small", "小模型参数", "bits/byte",
                          "BPE 训练 CPU 秒"], rows, title=f"每个小模型都训练 {steps} 步 × {batch} × {seq_len} 个 token")
        self._plot(results, sizes)
        self._conclude(results, sizes, seeds)
        return {"per_vocab": {str(k): v for k, v in results.items()}}

    def _plot(self, results, sizes):
        fig, axes = new_figure(1, 3, width=13, height=3.8)
        axes = list(getattr(axes, "flat", axes))
        xs = list(sizes)
        axes[0].plot(xs, [results[v]["bytes_per_token"] for v in xs], "o-")
        axes[0].set_ylabel(label(("字节 / token", "bytes per token")))
        axes[1].plot(xs, [100 * results[v]["embedding_share_minimind2_small"] for v in xs], "o-", color="tab:orange")
        axes[1].set_ylabel(label(("embedding 占比 %（MiniMind2-small）", "embedding share % (MiniMind2-small)")))
        means = [results[v]["bpb_mean_std"]["mean"] for v in xs]
        stds = [results[v]["bpb_mean_std"]["std"] or 0.0 for v in xs]
        axes[2].errorbar(xs, means, yerr=stds, fmt="o-", color="tab:green", capsize=3)
        axes[2].set_ylabel(label(("验证集 bits / byte", "val bits per byte")))
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xlabel(label(("词表大小", "vocab size")))
            ax.grid(alpha=0.3)
        self.save_figure(fig, "vocab_size")

    def _conclude(self, results, sizes, seeds):
        bpt = [results[v]["bytes_per_token"] for v in sizes]
        mono = all(a < b for a, b in zip(bpt, bpt[1:]))
        means = [results[v]["bpb_mean_std"]["mean"] for v in sizes]
        stds = [results[v]["bpb_mean_std"]["std"] or 0.0 for v in sizes]
        best = min(range(len(sizes)), key=lambda i: means[i])
        first, last = sizes[0], sizes[-1]
        parts = [
            f"压缩率：词表从 {first} 增加到 {last}，每个 token 平均从 {bpt[0]:.2f} 个字节变成 {bpt[-1]:.2f} 个"
            + ("，随词表单调变长（符合预期）。" if mono else "，但不是单调变长——和预期不符，检查你的 train_bpe。"),
            f"代价：同样大小的词表放进 MiniMind2-small，embedding 占全部参数的 "
            f"{100 * embedding_share(first):.1f}% → {100 * embedding_share(last):.1f}%。",
        ]
        if len(seeds) > 1:
            gap = means[-1] - means[best]
            noise = max(stds[-1], stds[best], 1e-9)
            parts.append(
                f"bits per byte（{len(seeds)} 个种子）：最低的是 vocab {sizes[best]}（{fmt_mean_std(results[sizes[best]]['bpb'])}）；"
                f"vocab {first} 是 {fmt_mean_std(results[first]['bpb'])}。"
                + (f"vocab {last} 比最好的高 {gap:.3f}，" + ("超出种子波动，说明在这么小的模型和训练量下，大词表的 embedding 学不满，"
                   "收益已经被抵消。" if gap > 2 * noise else "在种子波动之内：曲线到这里已经走平。")
                   if best != len(sizes) - 1 else "最大的词表就是最好的：在这个训练量下曲线还没有走平。"))
        else:
            parts.append("bits per byte（只有 1 个种子，差别小于 0.05 的不要当真）："
                         + "，".join(f"{v}: {m:.3f}" for v, m in zip(sizes, means))
                         + f"；最低的是 vocab {sizes[best]}。")
        improve = means[0] - means[best]
        parts.append(f"从纯字节（{first}）到最好的词表，bits per byte 降了 {improve:.3f}"
                     + ("：同样多的 token 训练量下，更长的 token 让模型看到了更多文本、上下文也更长。" if improve > 0
                        else "——没有降低，和预期不符。"))
        self.conclude("".join(parts))


if __name__ == "__main__":
    sys.exit(VocabSize.main())
