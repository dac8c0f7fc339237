"""实验 1：注意力在看哪里？——在 TinyShakespeare 上训练一个小模型，画出每一层、每一个头的注意力热力图。

注意力权重由**你的** scaled_dot_product_attention 算出：把 v 取成单位矩阵，输出 P·I 就是权重 P 本身。
同一批统计量在刚初始化时和训练之后各算一次：每个头的熵（越低越“专注”）、平均往回看多远、
分给前一个 token / 自己 / 第一个 token 的权重。完整模式跑 3 个种子，看这些“分工”是否每次都会出现。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”
sys.path.insert(0, str(Path(__file__).resolve().parent))

import statistics  # noqa: E402

import torch  # noqa: E402

from _attention_tools import (CLASS_EN, classify_head, default_one_thread, head_stats, probe_attention,  # noqa: E402
                              weights_from_sdpa)
from kata.experiment import Experiment, fmt_mean_std, unigram_baseline  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402


def _show(ch: str) -> str:
    return {" ": "␣", "\n": "↵"}.get(ch, ch)


def sample_text(corpus, n_chars: int) -> str:
    """验证集里第一段以“角色名:”开头的台词（确定的，每次一样）。"""
    val = corpus.tokenizer.decode(corpus.val_ids[:5000].tolist())
    start = val.find("\n\n")
    start = start + 2 if start >= 0 else 0
    return val[start:start + n_chars]


def measure(model, x, weights_fn) -> tuple[list, dict]:
    """在输入 x 上前向一次，返回每层的头统计，以及每层的注意力权重。"""
    record = {}
    was_training = model.training
    model.eval()
    with torch.no_grad(), probe_attention(model, record=record, weights_fn=weights_fn):
        model(x)
    model.train(was_training)
    return [head_stats(record[layer]) for layer in sorted(record)], record


def sanity(*records: dict) -> dict:
    """你的 scaled_dot_product_attention 给出的权重：每行之和离 1 多远、未来位置的最大权重。"""
    row_err, future = 0.0, 0.0
    for P in (P for rec in records for P in rec.values()):
        S = P.size(-1)
        row_err = max(row_err, float((P.double().sum(-1) - 1).abs().max()))
        upper = torch.ones(S, S, dtype=torch.bool).triu(1)
        future = max(future, float(P[..., upper].abs().max()) if upper.any() else 0.0)
    return {"max_row_sum_error": row_err, "max_future_weight": future}


def flat(stats: list, key: str) -> list:
    return [v for layer in stats for v in layer[key]]


def write_conclusion(per_seed: list, n_layers: int, n_heads: int, unigram: float, steps: int) -> tuple[str, dict]:
    parts, verdict = [], {}
    first = per_seed[0]
    losses = [r["final_val_loss"] for r in per_seed]
    parts.append(f"训练 {steps} 步后验证 loss {fmt_mean_std(losses)}（{len(per_seed)} 个种子），只按字符频率猜的基线是 {unigram:.3f}"
                 + ("：模型确实用上了前文。" if max(losses) < unigram - 0.1 else "：还没明显好于基线，热力图里的结构可能还不清楚，试试更多 --steps。"))
    s = first["sanity"]
    ok = s["max_row_sum_error"] < 1e-4 and s["max_future_weight"] == 0.0
    verdict["weights_valid"] = ok
    parts.append(f"先检查你的 scaled_dot_product_attention 给出的权重：每行之和与 1 最多差 {s['max_row_sum_error']:.1e}，"
                 f"未来位置的最大权重 {s['max_future_weight']:.1e}" +
                 ("——是合格的因果注意力。" if ok else "——不合格！回去跑 pytest exercises/03_attention。"))

    init_ratio = [e / first["init"][0]["uniform_entropy"] for e in flat(first["init"], "entropy")]
    trained_ratio = [e / first["trained"][0]["uniform_entropy"] for e in flat(first["trained"], "entropy")]
    verdict["init_entropy_ratio_mean"] = statistics.fmean(init_ratio)
    verdict["trained_entropy_ratio_mean"] = statistics.fmean(trained_ratio)
    i_mean, t_mean = statistics.fmean(init_ratio), statistics.fmean(trained_ratio)
    text = (f"刚初始化时，{n_layers}×{n_heads} 个头的平均熵是“均匀地看所有可见位置”的 {100 * i_mean:.0f}%"
            f"（最低 {100 * min(init_ratio):.0f}%）")
    if min(init_ratio) > 0.9:
        text += "——权重 ~N(0, 0.02) 让 q·k 几乎为 0，softmax 接近均匀，每个头都只是在“平均”前文。"
    else:
        text += "。"
    if t_mean < i_mean - 0.05:
        text += (f"训练之后平均降到 {100 * t_mean:.0f}%（最低 {100 * min(trained_ratio):.0f}%）："
                 "头学会了有选择地看，而且不同的头看的地方不一样（见热力图）。")
    else:
        text += f"训练之后是 {100 * t_mean:.0f}%，几乎没变：训练太短，头还没有分化。"
    parts.append(text)

    classes = first["classes"]
    counts = {}
    for c in classes:
        counts[c] = counts.get(c, 0) + 1
    parts.append("种子 %d 训练后按统计给头分类（阈值：某一类权重 ≥ 0.5；前一个 + 自己 ≥ 0.6 算“局部”；熵 ≥ 均匀熵的 80%% 算“广泛”）：%s。" % (
        first["seed"], "，".join(f"{k} {v} 个" for k, v in counts.items())))
    prev = flat(first["trained"], "prev")
    best = max(range(len(prev)), key=prev.__getitem__)
    prev0 = flat(first["init"], "prev")[best]
    parts.append(f"最像“看前一个 token”的头是 L{best // n_heads}H{best % n_heads}：平均把 {prev[best]:.2f} 的权重给了前一个字符"
                 f"（初始化时是 {prev0:.2f}）。字符级语言模型特别需要它——下一个字符强烈依赖上一个字符（拼写、词内位置）。")
    dist = flat(first["trained"], "distance")
    far = max(range(len(dist)), key=dist.__getitem__)
    parts.append(f"往回看得最远的头是 L{far // n_heads}H{far % n_heads}，平均回看 {dist[far]:.1f} 个位置"
                 f"（所有头的中位数 {statistics.median(dist):.1f}）。")
    with_prev = [r["seed"] for r in per_seed if max(flat(r["trained"], "prev")) >= 0.5]
    verdict["seeds_with_previous_token_head"] = with_prev
    if len(per_seed) > 1:
        parts.append(f"{len(with_prev)}/{len(per_seed)} 个种子训练出了至少一个“前一个 token”头（权重 ≥ 0.5）"
                     + ("：这种分工不是偶然。" if len(with_prev) == len(per_seed) else "：并不是每次都出现，说明它依赖训练长度和初始化。"))
    elif not with_prev:
        parts.append("这次没有哪个头把一半以上的权重给前一个 token；试试更多 --steps"
                     + ("（或去掉 --quick）" if steps < 500 else "") + "，或者换几个 --seed。")
    return "\n".join(parts), verdict


class AttentionBasics(Experiment):
    name = "exp1_attention_basics"
    module = "03_attention"
    can_use_synthetic = False  # 拿不到 TinyShakespeare 时不改用合成语料
    synthetic_reason = "它要看训练后的注意力头在真实英文上学到了哪些分工，合成语料只会给出合成文法的模式"
    title = "实验 1：注意力在看哪里？（TinyShakespeare 上的小模型，每个头的注意力热力图）"
    description = (
        "训练一个 4 层、每层 4 个头的字符级因果语言模型，用你的 scaled_dot_product_attention 读出每个头的注意力权重，\n"
        "画热力图，并统计每个头在初始化时和训练后“在看哪里”。对应 teaching.md §1。"
    )
    requires = ("scaled_dot_product_attention",)

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 200，完整 500）")
        parser.add_argument("--layers", type=int, default=4, help="层数（默认 4）")
        parser.add_argument("--heads", type=int, default=4, help="每层的头数（默认 4）")
        parser.add_argument("--dim", type=int, default=64, help="隐藏维度（默认 64）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3）")

    def run(self):
        from kata.tinylm import TinyLMConfig, build_tiny_lm, train_lm

        threads = default_one_thread(self)
        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        sdpa = self.component("scaled_dot_product_attention")
        weights_fn = weights_from_sdpa(sdpa)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=3, quick=200, full=500)
        layers = self.by_mode(smoke=2, quick=self.args.layers, full=self.args.layers)
        heads = self.by_mode(smoke=2, quick=self.args.heads, full=self.args.heads)
        dim = self.by_mode(smoke=16, quick=self.args.dim, full=self.args.dim)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        n_show = self.by_mode(smoke=12, quick=32, full=32)
        self.config(steps=steps, n_layers=layers, n_heads=heads, dim=dim, batch_size=batch, seq_len=seq_len,
                    lr=self.args.lr, threads=threads, stats_batch="16 validation windows (seed 1234)",
                    head_classes="weight ≥ 0.5 on previous/self/first token; previous+self ≥ 0.6 = local; entropy ≥ 80% of uniform = broad")

        text = sample_text(corpus, n_show)
        ids = corpus.tokenizer.encode_tensor(text)[None].to(self.device)
        gen = torch.Generator().manual_seed(1234)
        x_stats, _ = corpus.get_batch("val", self.by_mode(smoke=4, quick=16, full=16), seq_len, generator=gen,
                                      device=self.device)

        per_seed, shown = [], None
        for s in seeds:
            cfg = TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, dim=dim, n_layers=layers, n_heads=heads,
                               max_seq_len=seq_len)
            model, prov = build_tiny_lm(cfg, impl=self.impl, require=("scaled_dot_product_attention",), seed=s)
            model.to(self.device)
            self.record_provenance({f"tinylm[seed {s}]": prov})
            if s == seeds[0]:
                print("模型各部件的来源：" + "，".join(f"{k} ← {v}" for k, v in prov.items()))
            init_stats, _ = measure(model, x_stats, weights_fn)
            _, init_rec = measure(model, ids, weights_fn)
            res = train_lm(model, corpus, steps=steps, batch_size=batch, seq_len=seq_len, lr=self.args.lr,
                           eval_every=max(1, steps // 10), eval_iters=self.by_mode(smoke=2, quick=10, full=10),
                           seed=s, device=self.device, progress=self.progress, desc=f"seed {s}")
            trained_stats, stats_rec = measure(model, x_stats, weights_fn)
            _, text_rec = measure(model, ids, weights_fn)
            classes = [classify_head(trained_stats[l], h) for l in range(layers) for h in range(heads)]
            state = (f"发散于第 {res.diverged_at} 步" if res.diverged_at is not None else f"val loss {res.final_val_loss:.3f}")
            print(f"  seed {s}: {state}，{res.tokens_per_sec:,.0f} tokens/s，{res.wall_time_s:.1f} 秒")
            per_seed.append({"seed": s, "final_val_loss": res.final_val_loss, "diverged_at": res.diverged_at,
                             "train": res.to_dict(), "init": init_stats, "trained": trained_stats,
                             "classes": classes, "sanity": sanity(stats_rec, text_rec)})
            if shown is None:
                shown = (init_rec, text_rec)

        tokens = [_show(c) for c in text]
        self._plot_heatmaps(shown[1], tokens, layers, heads, per_seed[0], "heatmaps",
                            ("训练后每个头的注意力（行 = query，列 = key）", "Attention per head after training (rows = queries, cols = keys)"))
        self._plot_heatmaps(shown[0], tokens, layers, heads, None, "heatmaps_init",
                            ("刚初始化时每个头的注意力", "Attention per head at initialisation"))
        self._plot_stats(per_seed[0], layers, heads)

        rows = []
        first = per_seed[0]
        for l in range(layers):
            for h in range(heads):
                t, i = first["trained"][l], first["init"][l]
                rows.append([f"L{l}H{h}", first["classes"][l * heads + h],
                             f"{i['entropy'][h]:.2f} → {t['entropy'][h]:.2f}", f"{i['prev'][h]:.2f} → {t['prev'][h]:.2f}",
                             f"{t['self'][h]:.2f}", f"{t['first'][h]:.2f}", f"{t['distance'][h]:.1f}"])
        self.print_table(["头", "类型", "熵 初始→训练", "前一个 token 权重", "自己", "第一个 token", "平均回看距离"], rows,
                         title=f"种子 {first['seed']}：每个头的统计（query 位置 ≥ 8 的行上平均；均匀分布的熵 = "
                               f"{first['trained'][0]['uniform_entropy']:.2f}）")
        text_c, verdict = write_conclusion(per_seed, layers, heads, unigram, steps)
        self.conclude(text_c)
        return {"per_seed": per_seed, "sample_text": text, "unigram_baseline_val_loss": unigram, "verdict": verdict}

    def _plot_heatmaps(self, record, tokens, layers, heads, info, name, title):
        # 直接 imshow（plot_attention_heatmap 每画一个子图就排一次版，16 个子图时很慢），最后统一排版一次
        fig, axes = new_figure(layers, heads, width=3.0, height=2.9)
        n = len(tokens)
        for l in range(layers):
            for h in range(heads):
                ax = axes[l, h]
                ax.imshow(record[l][0, h].cpu().numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto",
                          interpolation="nearest")
                sub = f"L{l} H{h}"
                if info is not None:
                    c = info["classes"][l * heads + h]
                    sub += f": {CLASS_EN[c]}"
                ax.set_title(sub, fontsize="small")
                ticks = list(range(n))
                ax.set_yticks(ticks, tokens if h == 0 else [""] * n, fontsize=6)
                ax.set_xticks(ticks, tokens if l == layers - 1 else [""] * n, fontsize=6, rotation=90)
                ax.tick_params(length=0)
        fig.suptitle(label(title))
        fig.tight_layout()
        self.save_figure(fig, name)

    def _plot_stats(self, info, layers, heads):
        names = [f"L{l}H{h}" for l in range(layers) for h in range(heads)]
        fig, axes = new_figure(1, 3, width=5.0, height=3.8)
        xs = range(len(names))
        for ax, key, ttl in [(axes[0, 0], "prev", ("分给前一个 token 的权重", "Weight on the previous token")),
                             (axes[0, 1], "distance", ("平均回看距离（位置）", "Mean look-back distance (positions)")),
                             (axes[0, 2], "entropy", ("注意力的熵（nats）", "Attention entropy (nats)"))]:
            init = flat(info["init"], key)
            trained = flat(info["trained"], key)
            ax.bar([x - 0.2 for x in xs], init, width=0.4, label="init")
            ax.bar([x + 0.2 for x in xs], trained, width=0.4, label="trained")
            if key == "entropy":
                ax.axhline(info["trained"][0]["uniform_entropy"], color="gray", linestyle="--", label="uniform")
            ax.set_xticks(list(xs), names, rotation=90, fontsize="x-small")
            ax.set_title(label(ttl))
            ax.legend(fontsize="small")
            ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "head_stats")


if __name__ == "__main__":
    sys.exit(AttentionBasics.main())
