"""实验 3：FFN 要多宽？——隐层 = 1×、2×、8/3×、4×、8× dim 的 SwiGLU（你的 FeedForward）。

同一个 4 层字符级语言模型（TinyShakespeare），只改 FeedForward 的 hidden_dim（显式传入，不取整），
看验证 loss 随参数量怎么变。8/3× 是 MiniMind2 的默认（int(8·dim/3)），minimind-3 用的是 π×。
对照 Vaswani et al. 2017 Table 3 第 (C) 行：d_model = 512 时 d_ff 从 1024 → 2048 → 4096，
开发集 perplexity 5.12 → 4.92 → 4.75（越宽越好，但每翻一倍的收益在变小）。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”
sys.path.insert(0, str(Path(__file__).resolve().parent))

import math  # noqa: E402
import statistics  # noqa: E402

from _ffn_tools import VASWANI_CITE, VASWANI_ROW_C, Variant, final_losses, paired, train_variants  # noqa: E402
from kata.experiment import Experiment, fmt_mean_std, summarize, unigram_baseline  # noqa: E402
from kata.plots import label, new_figure, plot_loss_curves  # noqa: E402

RATIOS = (("1", 1.0), ("2", 2.0), ("8/3", 8 / 3), ("4", 4.0), ("8", 8.0))


def widths_for(dim: int) -> dict:
    """比例 → 隐层宽度；8/3 按 minimind 的 int(8·dim/3)，其余取整到整数。"""
    return {name: (int(8 * dim / 3) if name == "8/3" else int(round(r * dim))) for name, r in RATIOS}


def spearman(xs, ys) -> float:
    """Spearman 秩相关（没有并列时的公式；有并列时用平均秩）。"""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return r
    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else float("nan")


class ExpansionRatio(Experiment):
    name = "exp3_expansion_ratio"
    module = "04_feedforward"
    can_use_synthetic = False  # 拿不到 TinyShakespeare 时不改用合成语料
    synthetic_reason = "要与 Vaswani 等 2017 在真实文本上“越宽越好”的数字对照；合成语料词汇很小，宽度的收益会很快饱和，结论会失真"
    title = "实验 3：FFN 隐层宽度 1× / 2× / 8/3× / 4× / 8× dim——验证 loss 与参数量"
    description = (
        "只改你的 FeedForward 的 hidden_dim，其余完全相同。画“验证 loss vs 参数量”，\n"
        "并与 Vaswani et al. 2017 Table 3 第 (C) 行（d_ff 越大 perplexity 越低）对照。对应 teaching.md §1.2 与 §2.3。"
    )
    requires = ("FeedForward",)

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 100，完整 240）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3）")
        parser.add_argument("--dim", type=int, default=64, help="隐藏维度（默认 64）")

    def run(self):
        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=4, quick=100, full=180)
        dim = self.by_mode(smoke=32, quick=self.args.dim, full=self.args.dim)
        layers = self.by_mode(smoke=1, quick=4, full=4)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(32, 64), full=(32, 64))
        eval_every = max(1, steps // self.by_mode(smoke=2, quick=6, full=8))
        eval_iters = self.by_mode(smoke=2, quick=4, full=6)
        final_eval_iters = self.by_mode(smoke=2, quick=16, full=48)
        lr = self.args.lr
        widths = widths_for(dim)
        base = dict(dim=dim, n_layers=layers, n_heads=4, max_seq_len=seq_len, ffn="swiglu")
        self.config(steps=steps, lr=lr, dim=dim, n_layers=layers, n_heads=4, batch_size=batch, seq_len=seq_len,
                    eval_every=eval_every, eval_iters=eval_iters, final_eval_iters=final_eval_iters,
                    warmup_steps=0, grad_clip=1.0, widths=widths)
        variants = [Variant(f"x{name}", f"{name}×（{w}）", f"{name}x ({w})", dict(ffn_hidden=w))
                    for name, w in widths.items()]
        print(f"{len(variants)} 种宽度 × {len(seeds)} 个种子，每个 {steps} 步；dim={dim}，宽度 {list(widths.values())}")
        train_variants(self, corpus, variants, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=lr,
                       eval_every=eval_every, eval_iters=eval_iters, base_cfg=base,
                       final_eval_iters=final_eval_iters)

        rows = []
        for (name, _), v in zip(RATIOS, variants):
            tps = statistics.median(r["tokens_per_sec"] for r in v.runs)
            rows.append([f"{name}×", widths[name], f"{v.ffn_params:,}", f"{v.n_params:,}",
                         f"{100 * v.ffn_params / v.n_params:.0f}%", fmt_mean_std(final_losses(v.runs)), f"{tps:,.0f}"])
        self.print_table(["隐层/dim", "隐层宽度", "FFN 参数", "总参数", "FFN 占比",
                          f"验证 loss（{len(seeds)} 个种子）", "tokens/s（中位数）"], rows,
                         title=f"dim={dim}、{layers} 层、{steps} 步")
        self.print_table(["d_ff", "d_ff / d_model", "开发集 perplexity"],
                         [[k, f"{k / 512:g}×", v] for k, v in VASWANI_ROW_C.items()], title=f"对照：{VASWANI_CITE}")

        self._plot(variants, seeds, unigram)
        text, verdict = self._conclusion(variants, len(seeds))
        self.conclude(text)
        return {
            "widths": widths,
            "runs": {v.key: v.runs for v in variants},
            "n_params": {v.key: v.n_params for v in variants},
            "ffn_params": {v.key: v.ffn_params for v in variants},
            "final_val_loss": {v.key: summarize(final_losses(v.runs)) for v in variants},
            "vaswani_2017_table3_row_c": VASWANI_ROW_C,
            "unigram_baseline_val_loss": unigram,
            "verdict": verdict,
        }

    def _conclusion(self, variants, n_seeds):
        parts, verdict = [], {}
        multi = n_seeds > 1
        means = [summarize(final_losses(v.runs))["mean"] for v in variants]
        params = [v.n_params for v in variants]
        if not all(math.isfinite(m) for m in means):
            verdict["status"] = "diverged"
            return "有的宽度发散了（loss 变成 NaN/inf），无法比较；试试更小的 --lr。", verdict
        rho = spearman(params, means)
        verdict["spearman_params_vs_loss"] = rho
        first, last = variants[0], variants[-1]
        p_ends = paired(first.runs, last.runs)
        drop = -p_ends["mean"]
        parts.append(f"从 {first.zh}到 {last.zh}，总参数从 {first.n_params:,} 增加到 {last.n_params:,}"
                     f"（×{last.n_params / first.n_params:.1f}），验证 loss 从 {means[0]:.3f} 变到 {means[-1]:.3f}"
                     f"（{'下降' if drop > 0 else '上升'} {abs(drop):.3f}）。"
                     f"参数量与 loss 的秩相关 ρ = {rho:+.2f}（−1 表示严格地越宽越好）。")
        monotone = all(b <= a for a, b in zip(means, means[1:]))
        verdict["monotone"] = monotone
        vas = ("Vaswani et al. 2017 Table 3 第 (C) 行的方向"
               "（d_ff 1024 → 2048 → 4096 时 perplexity 5.12 → 4.92 → 4.75）")
        if monotone:
            parts.append(f"loss 随宽度单调下降，与 {vas}一致。")
        elif rho < -0.5:
            parts.append(f"整体趋势是越宽越好，与 {vas}一致；但不是每一步都单调：相邻宽度之间的差别小，会被随机波动打乱。")
        else:
            parts.append(f"本次没有看到“越宽越好”的趋势，与 {vas}不一致。"
                         "步数很少时，更宽的 FFN 还来不及被用上；去掉 --quick 或加大 --steps 再看。")
        # 收益递减：每把参数翻一倍，loss 降多少
        gains = [(a - b) / math.log2(vb.n_params / va.n_params)
                 for a, b, va, vb in zip(means, means[1:], variants, variants[1:])]
        verdict["loss_drop_per_param_doubling"] = gains
        logp = [math.log2(p) for p in params]
        mx, my = statistics.fmean(logp), statistics.fmean(means)
        slope = sum((x - mx) * (y - my) for x, y in zip(logp, means)) / sum((x - mx) ** 2 for x in logp)
        verdict["loss_change_per_doubling_fit"] = slope
        early, late = statistics.fmean(gains[:2]), statistics.fmean(gains[2:])
        parts.append("总参数每翻一倍，loss 下降多少（负数 = 反而上升）：" + "，".join(
            f"{va.en.split(' ')[0]}→{vb.en.split(' ')[0]} {g:+.3f}" for g, va, vb in zip(gains, variants, variants[1:]))
            + f"；用直线拟合“loss vs log₂(参数量)”，平均每翻一倍{'下降' if slope < 0 else '上升'} {abs(slope):.3f}。")
        if slope < 0:
            parts.append("loss 大致随参数量的对数下降：想再降同样多，参数（以及与之成正比的每个 token 的计算量）得再翻一倍，"
                         "每多一个参数换回的越来越少。8/3× 之后再加宽，代价成倍增长、收益却是线性的——"
                         "这是 minimind 停在 8/3（或 π）附近、而不是更宽的理由之一。"
                         + (f"按对数算，后两段（平均 {late:+.3f}）也比前两段（{early:+.3f}）慢。" if early > 0 and late < 0.7 * early
                            else f"按对数算，后两段（平均 {late:+.3f}）并没有比前两段（{early:+.3f}）明显变慢。"))
        if multi:
            p84 = paired(variants[2].runs, variants[3].runs)
            if p84["se"] is not None:
                real = bool(p84["same_sign"] and p84["beyond_2se"])
                verdict["x4_vs_x8_3"] = "beyond noise" if real else "within noise"
                parts.append(f"8/3× → 4×（SwiGLU 参数从与 4× MLP 相当变成 1.5 倍）：逐种子配对的差 {p84['mean']:+.3f} ± "
                             f"{p84['se']:.3f}（标准误），" + ("超过了种子间的波动。" if real else "没有超过种子间的波动。"))
        else:
            parts.append("快速模式只跑了 1 个种子，相邻宽度之间的小差别无法和随机波动区分；去掉 --quick 会跑 3 个种子。")
        return "\n".join(parts), verdict

    def _plot(self, variants, seeds, unigram):
        fig, axes = new_figure(1, 2, width=6.4, height=4.4)
        ax = axes[0, 0]
        xs = [v.n_params for v in variants]
        stats = [summarize(final_losses(v.runs)) for v in variants]
        ax.errorbar(xs, [s["mean"] for s in stats], yerr=[s["std"] or 0.0 for s in stats], marker="o", capsize=4,
                    label=label(("你的 FeedForward（SwiGLU）", "your FeedForward (SwiGLU)")))
        for x, s, v in zip(xs, stats, variants):
            ax.annotate(v.en.split(" ")[0], (x, s["mean"]), textcoords="offset points", xytext=(4, 6), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label(("总参数量（对数轴）", "total parameters (log scale)")))
        ax.set_ylabel(label(("最终验证 loss（nats/字符）", "final validation loss (nats/char)")))
        ax.set_title(label((f"验证 loss vs 参数量（{len(seeds)} 个种子）", f"Val loss vs parameters ({len(seeds)} seed(s))")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        curves = {}
        for v in variants:
            r = v.runs[0]
            curves[v.label] = (r["val_steps"], r["val_losses"])
        plot_loss_curves(curves, ax=axes[0, 1],
                         title=(f"验证 loss 曲线（种子 {seeds[0]}）", f"Validation loss (seed {seeds[0]})"),
                         ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"),
                         references={("只按字符频率猜", "unigram baseline"): unigram})
        self.save_figure(fig, "loss_vs_params")


if __name__ == "__main__":
    sys.exit(ExpansionRatio.main())
