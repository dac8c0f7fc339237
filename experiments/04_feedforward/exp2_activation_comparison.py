"""实验 2：ReLU-MLP vs GELU-MLP vs SwiGLU——参数量完全相同时，门控值多少？

三个字符级因果语言模型（TinyShakespeare），只差 FFN：
- ReLU MLP：down(relu(up(x)))，隐层 1.5·H；
- GELU MLP：down(gelu(up(x)))，隐层 1.5·H；
- SwiGLU（你的 FeedForward）：down(silu(gate(x)) ⊙ up(x))，隐层 H。
两矩阵 MLP 的隐层取 SwiGLU 的 1.5 倍，使 2·d·1.5H = 3·d·H，FFN 参数量逐个相等（dim=64 时 264 vs 176），
这正是 Shazeer 2020 控制参数量的做法（他把 GLU 变体的 d_ff 从 3072 降到 2048）。
完整模式每个变体 3 个种子，同一种子的三个变体看到完全相同的数据顺序，可以逐种子配对比较。
结果旁边打印 Shazeer 2020 Table 1 的数字，并判断测到的差距是否超过种子间的波动。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”
sys.path.insert(0, str(Path(__file__).resolve().parent))

import math  # noqa: E402

from _ffn_tools import (SHAZEER_2020_TABLE1, SHAZEER_CITE, Variant, final_losses, paired, plot_val_curves,  # noqa: E402
                        train_variants)
from kata.experiment import Experiment, describe_gap, fmt_mean_std, summarize, unigram_baseline  # noqa: E402
from kata.plots import new_figure  # noqa: E402

PAPER_NAME = {"relu": "ReLU", "gelu": "GELU", "swiglu": "SwiGLU"}


class ActivationComparison(Experiment):
    name = "exp2_activation_comparison"
    module = "04_feedforward"
    can_use_synthetic = False  # 拿不到 TinyShakespeare 时不改用合成语料
    synthetic_reason = "要与 Shazeer 2020 在真实文本上的数字对照；激活函数之间的差距只有百分之几，合成语料上的差距说明不了真实语言的情况"
    title = "实验 2：ReLU-MLP vs GELU-MLP vs SwiGLU（参数量相同，TinyShakespeare）"
    description = (
        "三个只差 FFN 的小型字符级语言模型，FFN 参数量逐个相等。完整模式 3 个种子，报告验证 loss 的\n"
        "均值 ± 标准差和逐种子配对的差，并与 Shazeer 2020 Table 1 并排打印。对应 teaching.md §2.1。"
    )
    requires = ("FeedForward",)

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 150，完整 300）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3）")
        parser.add_argument("--layers", type=int, default=4, help="层数（默认 4）")
        parser.add_argument("--dim", type=int, default=64, help="隐藏维度（默认 64）")

    def run(self):
        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=4, quick=150, full=300)
        dim = self.by_mode(smoke=32, quick=self.args.dim, full=self.args.dim)
        layers = self.by_mode(smoke=1, quick=self.args.layers, full=self.args.layers)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(32, 64), full=(32, 64))
        eval_every = max(1, steps // self.by_mode(smoke=2, quick=10, full=15))
        eval_iters = self.by_mode(smoke=2, quick=4, full=6)            # 训练中的曲线：少量 batch
        final_eval_iters = self.by_mode(smoke=2, quick=24, full=48)    # 最终比较用的数：更多 batch
        lr = self.args.lr
        base = dict(dim=dim, n_layers=layers, n_heads=4, max_seq_len=seq_len)
        self.config(steps=steps, lr=lr, dim=dim, n_layers=layers, n_heads=4, batch_size=batch, seq_len=seq_len,
                    eval_every=eval_every, eval_iters=eval_iters, final_eval_iters=final_eval_iters,
                    warmup_steps=0, grad_clip=1.0,
                    width_rule="MLP hidden = 1.5 × SwiGLU hidden (kata.tinylm.TinyLMConfig.ffn_hidden_size)")
        mine = "你的 FeedForward" if self.impl == "exercises" else "参考 FeedForward"
        variants = [
            Variant("relu", "ReLU MLP", "ReLU MLP", dict(ffn="relu")),
            Variant("gelu", "GELU MLP", "GELU MLP", dict(ffn="gelu")),
            Variant("swiglu", f"SwiGLU（{mine}）", "SwiGLU", dict(ffn="swiglu")),
        ]
        print(f"{len(variants)} 个变体 × {len(seeds)} 个种子，每个 {steps} 步")
        train_variants(self, corpus, variants, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=lr,
                       eval_every=eval_every, eval_iters=eval_iters, base_cfg=base,
                       final_eval_iters=final_eval_iters)
        V = {v.key: v for v in variants}
        from kata.tinylm import TinyLMConfig
        widths = {v.key: TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, **{**base, **v.cfg}).ffn_hidden_size
                  for v in variants}

        rows = []
        for v in variants:
            rows.append([v.zh, widths[v.key], f"{v.ffn_params:,}", f"{v.n_params:,}",
                         fmt_mean_std(final_losses(v.runs)), f"{SHAZEER_2020_TABLE1[PAPER_NAME[v.key]]:.3f}"])
        self.print_table(["FFN", "隐层宽度", "FFN 参数", "总参数", f"本次验证 loss（{len(seeds)} 个种子，nats/字符）",
                          "Shazeer 2020（log-ppl）"], rows,
                         title=f"结果，旁边是 {SHAZEER_CITE}；两列的单位和任务都不同，只能比较顺序与差距的相对大小")

        pairs = [("relu", "swiglu"), ("gelu", "swiglu"), ("relu", "gelu")]
        stats = {f"{b}_minus_{a}": paired(V[a].runs, V[b].runs) for a, b in pairs}
        prow = []
        for a, b in pairs:
            p = stats[f"{b}_minus_{a}"]
            paper = SHAZEER_2020_TABLE1[PAPER_NAME[b]] - SHAZEER_2020_TABLE1[PAPER_NAME[a]]
            per_seed = "、".join(f"{d:+.3f}" for d in p["diffs"]) if p["diffs"] else "—"
            prow.append([f"{V[b].en} − {V[a].en}", per_seed,
                         f"{p['mean']:+.3f}" + (f" ± {p['se']:.3f}" if p["se"] is not None else ""), f"{paper:+.3f}"])
        self.print_table(["差（负 = 后者更好）", "逐种子的差", "均值 ± 标准误", "Shazeer 2020 的差"], prow,
                         title="逐种子配对（同一种子 = 同样的数据顺序）")

        self._plot(variants, seeds, unigram)
        text, verdict = self._conclusion(V, stats, len(seeds), steps)
        self.conclude(text)
        return {
            "runs": {v.key: v.runs for v in variants},
            "ffn_hidden": widths,
            "ffn_params": {v.key: v.ffn_params for v in variants},
            "n_params": {v.key: v.n_params for v in variants},
            "final_val_loss": {v.key: summarize(final_losses(v.runs)) for v in variants},
            "paired": stats,
            "shazeer_2020_table1": SHAZEER_2020_TABLE1,
            "unigram_baseline_val_loss": unigram,
            "verdict": verdict,
        }

    def _conclusion(self, V, stats, n_seeds, steps):
        parts, verdict = [], {}
        multi = n_seeds > 1
        means = {k: summarize(final_losses(v.runs))["mean"] for k, v in V.items()}
        if not all(math.isfinite(m) for m in means.values()):
            bad = [V[k].zh for k, m in means.items() if not math.isfinite(m)]
            verdict["status"] = "diverged"
            return f"{'、'.join(bad)} 发散了（loss 变成 NaN/inf），无法比较；试试更小的 --lr。", verdict
        order = sorted(means, key=means.get)
        order_text = " < ".join(f"{V[k].en} {means[k]:.3f}" for k in order)
        paper_order = sorted(PAPER_NAME, key=lambda k: SHAZEER_2020_TABLE1[PAPER_NAME[k]])
        verdict["order"] = order
        verdict["order_matches_paper"] = order == paper_order
        parts.append(f"本次的验证 loss 从低到高：{order_text}（{n_seeds} 个种子的均值，{steps} 步）。"
                     f"Shazeer 2020 的顺序是 SwiGLU 1.944 < GELU 1.983 < ReLU 1.997"
                     + ("，两者一致。" if order == paper_order else "，本次的顺序与论文不同。"))
        if not multi:
            for a, b in (("relu", "swiglu"), ("gelu", "swiglu")):
                parts.append(describe_gap(final_losses(V[a].runs), final_losses(V[b].runs), V[a].en, V[b].en,
                                          spread_note=False))
        else:
            parts.append("差距是否超过种子间的波动，按种子配对来判断：同一种子的三个模型看到同样的数据顺序，"
                         "标准是各种子的差方向一致、且 |均值| > 2 倍标准误。")
        # 诚实地判断：差距是否超过种子间的波动（正 = SwiGLU 更差，负 = SwiGLU 更好）
        judged = {}
        for a, b in (("relu", "swiglu"), ("gelu", "swiglu")):
            p = stats[f"{b}_minus_{a}"]
            if p["se"] is None:
                continue
            real = bool(p["same_sign"] and p["beyond_2se"])
            judged[a] = ("better" if p["mean"] < 0 else "worse") if real else "noise"
            verdict[f"{b}_vs_{a}"] = {"better": "better beyond noise", "worse": "worse beyond noise",
                                      "noise": "within noise"}[judged[a]]
            sign = "低" if p["mean"] < 0 else "高"
            head = (f"SwiGLU 的验证 loss 比 {V[a].en} {sign} {abs(p['mean']):.3f}"
                    f"（{means['swiglu']:.3f} vs {means[a]:.3f}；逐种子的差 "
                    + "、".join(f"{d:+.3f}" for d in p["diffs"]) + "）")
            if real:
                parts.append(f"{head}：{p['n']} 个种子方向一致，|均值| 超过 2 倍标准误（{2 * p['se']:.3f}）——"
                             "这个差距超过了种子间的波动。")
            else:
                why = "各种子的方向不一致" if not p["same_sign"] else f"均值的绝对值没有超过 2 倍标准误（{2 * p['se']:.3f}）"
                parts.append(f"{head}：但{why}——在这个规模和步数下，不能说这个差距超过了种子间的波动。")
        paper_gap = SHAZEER_2020_TABLE1["ReLU"] - SHAZEER_2020_TABLE1["SwiGLU"]
        units = ("注意单位不同（这里是每个字符的 nats，论文是 SentencePiece token 的 log-perplexity），"
                 "数值大小不能直接比较。")
        if not multi:
            verdict["noise"] = "unknown (1 seed)"
            parts.append("快速模式只跑了 1 个种子，无法判断差距是否超过随机波动；去掉 --quick 会跑 3 个种子并逐种子配对。")
        elif judged and all(j == "noise" for j in judged.values()):
            parts.append(f"诚实的结论：论文里 ReLU 与 SwiGLU 差 {paper_gap:.3f}（65k 步、T5 规模）；在这里，只训练 {steps} 步、"
                         "每层 FFN 只有几万个参数的小模型上，这样大小的差别被种子间的波动盖住了。"
                         "“SwiGLU 更好”在这个实验里没有被证实，也没有被否定。想看得更清楚：加大 --steps、"
                         "--n-seeds，或加宽模型（--dim 128）。")
        elif judged and all(j == "better" for j in judged.values()):
            parts.append(f"SwiGLU 对两种 MLP 的优势都超过了种子间的波动，方向与论文一致（论文里 ReLU − SwiGLU = {paper_gap:.3f}）。"
                         + units)
        elif any(j == "worse" for j in judged.values()):
            worse = "、".join(V[a].en for a, j in judged.items() if j == "worse")
            parts.append(f"与论文的方向相反：本次 SwiGLU 比 {worse} 差，而且超过了种子间的波动。论文的结论来自 65k 步的大模型；"
                         f"这里只训练 {steps} 步，更简单的激活函数可能在训练初期学得更快——试试更大的 --steps，"
                         "看差距是否缩小或反转。" + units)
        elif judged:
            bits = []
            for a, j in judged.items():
                paper = SHAZEER_2020_TABLE1[PAPER_NAME[a]] - SHAZEER_2020_TABLE1["SwiGLU"]
                if j == "better":
                    bits.append(f"SwiGLU 优于 {V[a].en}：超过了波动，方向与论文一致（论文里差 {paper:.3f}）")
                else:
                    bits.append(f"SwiGLU 与 {V[a].en} 的差距在波动之内：论文里 {paper:.3f} 的优势在这里"
                                "既没有被证实，也没有被否定")
            parts.append("小结：" + "；".join(bits) + "。" + units)
        # GELU 明显不如 ReLU 时，给一个可以自己去验证的猜测
        pg = stats.get("gelu_minus_relu")
        if pg and pg["se"] is not None and pg["same_sign"] and pg["beyond_2se"] and pg["mean"] > 0:
            parts.append(f"GELU MLP 比 ReLU MLP 差 {pg['mean']:.3f}（各种子方向一致），也与论文（GELU 略好于 ReLU）相反。"
                         "一个可能的原因（这里没有验证，留给你用 forward hook 去查）：初始化很小（权重 std 0.02），"
                         "隐层的输入起初只有零点几；GELU 在 0 附近近似 z/2 + z²/√(2π)，几乎是一条直线，"
                         "而 ReLU 在任何尺度上都是一个折角——训练初期 GELU 的 MLP 更接近线性，学得更慢。"
                         "加大 --steps，看差距是否缩小。")
        return "\n".join(parts), verdict

    def _plot(self, variants, seeds, unigram):
        fig, axes = new_figure(1, 2, width=6.4, height=4.4)
        plot_val_curves(axes[0, 0], variants, len(seeds), unigram)
        ax = axes[0, 1]
        from kata.plots import label
        for i, v in enumerate(variants):
            vals = final_losses(v.runs)
            ax.scatter([i] * len(vals), vals, s=30, alpha=0.8, label=label(v.label))
            s = summarize(vals)
            if math.isfinite(s["mean"]):
                ax.errorbar([i + 0.15], [s["mean"]], yerr=[s["std"] or 0.0], fmt="_", color="black", capsize=4)
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels([v.en for v in variants])
        ax.set_ylabel(label(("最终验证 loss", "final validation loss")))
        ax.set_title(label(("每个种子一个点（黑线：均值 ± 标准差）", "one dot per seed (black: mean ± std)")))
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "val_loss")


if __name__ == "__main__":
    sys.exit(ActivationComparison.main())
