"""实验 2：加深网络，谁受益？——有残差与没有残差时，验证 loss 随层数怎样变化（He et al. 2016 的方向）。

同一个字符级小语言模型，层数取 1 / 2 / 4（完整模式再加 8），每个深度训练同样的步数、同样的学习率：
- 有残差：每个子层由**你写的 PreNormResidual** 包起来，x + F(N(x))；
- 没有残差：同样的 norm、子层和初始化，写成 F(N(x))。
He 等（2016）在 ImageNet 上看到：没有残差的“plain”网络从 18 层加到 34 层，错误率反而升高（退化问题）；
加了残差之后，34 层比 18 层更好。这里在一个小得多的语言模型上看同一个方向。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”
sys.path.insert(0, str(Path(__file__).resolve().parent))      # 同目录的 _residual_lm.py

import math  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402

from kata.experiment import (STUCK_MARGIN, Experiment, UsageError, compare_means, fmt_mean_std,  # noqa: E402
                             summarize, unigram_baseline)
from kata.plots import label, new_figure, plot_loss_curves  # noqa: E402
from _residual_lm import ARM_NAMES, build_model, impl_label, load_residual  # noqa: E402
from kata.arms import Arm, run_arms  # noqa: E402

ARMS = ("res", "plain")
TIE = 0.005           # 两个深度的平均 loss 相差不超过它，就算“一样”

# He et al. 2016, Deep Residual Learning for Image Recognition, 表 2（ImageNet 验证集 top-1 错误率 %）
HE_2016 = {"plain": {18: 27.94, 34: 28.54}, "res": {18: 27.88, 34: 25.03}}
HE_2016_TEXT = ("He 等（2016，Deep Residual Learning，表 2，ImageNet 验证集 top-1 错误率）：plain-18 27.94% → plain-34 28.54%"
                "（更深反而更差）；ResNet-18 27.88% → ResNet-34 25.03%（更深更好）。")


def finals(runs: list) -> list:
    return [r["final_val_loss"] if r["diverged_at"] is None else float("nan") for r in runs]


def final_train(run: dict) -> float:
    """最后 10% 训练步的平均训练 loss（发散时为 NaN）。"""
    losses = run["train_losses"]
    if run["diverged_at"] is not None or not losses:
        return float("nan")
    tail = losses[-max(1, len(losses) // 10):]
    return statistics.fmean(tail)


def trend(depths: list, runs: dict, arm: str) -> dict:
    """最浅 vs 最深：diff = mean(最深) − mean(最浅)，以及它是否超过种子间波动；还有相邻深度是否单调。"""
    lo, hi = depths[0], depths[-1]
    c = compare_means(finals(runs[(arm, lo)]), finals(runs[(arm, hi)]))
    means = [summarize(finals(runs[(arm, d)]))["mean"] for d in depths]
    steps = [b - a for a, b in zip(means, means[1:])]
    return {"diff": c["diff"], "exceeds_spread": c["exceeds_spread"], "spread": c["spread"], "means": means,
            "monotone_down": all(s < TIE for s in steps), "monotone_up": all(s > -TIE for s in steps)}


def conclusion(depths: list, runs: dict, unigram: float, n_seeds: int, steps: int) -> tuple[str, dict]:
    parts, verdict = [], {}
    lo, hi = depths[0], depths[-1]
    for arm in ARMS:
        t = trend(depths, runs, arm)
        verdict[arm] = {k: v for k, v in t.items() if k != "means"}
        seq = " → ".join(f"{d} 层 {m:.3f}" if math.isfinite(m) else f"{d} 层 发散" for d, m in zip(depths, t["means"]))
        parts.append(f"{ARM_NAMES[arm][0]}：{seq}。")
    r, p = verdict["res"], verdict["plain"]

    def sig(t):
        if t["exceeds_spread"] is None:
            return "（只有 1 个种子，无法判断是否超过随机波动）"
        return ("，超过了种子间的波动" if t["exceeds_spread"] else "，但没有超过种子间的波动（标准差之和 "
                f"{t['spread']:.3f}）")

    res_means = dict(zip(depths, trend(depths, runs, "res")["means"]))
    best = min((d for d in depths if math.isfinite(res_means[d])), key=lambda d: res_means[d], default=None)
    worse_steps = []  # 有残差时，哪些“加深一步”让 loss 明显变高（超过 TIE，且没有被种子波动解释掉）
    for a, b in zip(depths, depths[1:]):
        c = compare_means(finals(runs[("res", a)]), finals(runs[("res", b)]))
        if math.isfinite(c["diff"]) and c["diff"] > TIE and c["exceeds_spread"] is not False:
            worse_steps.append((a, b, c["diff"]))
    verdict["res_best_depth"] = best
    verdict["res_significantly_worse_steps"] = [f"{a}→{b}" for a, b, _ in worse_steps]
    if math.isfinite(r["diff"]) and r["diff"] < -TIE and r["exceeds_spread"] is not False:
        verdict["res_deeper_helps"] = "yes"
        parts.append(f"有残差时，从 {lo} 层加到 {hi} 层，验证 loss 降低了 {-r['diff']:.3f}{sig(r)}："
                     + ("更深更好，而且每加深一次都没有变差。" if r["monotone_down"] else
                        f"更深更好，虽然中间有起伏（最好的是 {best} 层，{res_means[best]:.3f}）。"))
    elif math.isfinite(r["diff"]) and r["diff"] < -TIE:
        verdict["res_deeper_helps"] = "weak"
        parts.append(f"有残差时，从 {lo} 层加到 {hi} 层，验证 loss 降低了 {-r['diff']:.3f}{sig(r)}；"
                     f"最好的是 {best} 层（{res_means[best]:.3f}）。")
    else:
        verdict["res_deeper_helps"] = "no"
        parts.append(f"有残差时，从 {lo} 层加到 {hi} 层，验证 loss 没有降低（差 {r['diff']:+.3f}；"
                     f"最好的是 {best} 层，{res_means[best]:.3f}）：在 {steps} 步的预算里，更深的模型没有占到便宜。")
    if worse_steps:
        parts.append("有残差时也有加深之后明显变差的一步：" + "；".join(
            f"{a} → {b} 层高了 {d:.3f}" for a, b, d in worse_steps) + "。")
    elif verdict["res_deeper_helps"] != "yes":
        parts.append("不过，有残差时没有哪一次加深让验证 loss 明显变差（变化都在种子波动之内）——"
                     "这一点已经和没有残差时截然不同。")
    stuck_deep = [d for d in depths if all(x > unigram - STUCK_MARGIN or not math.isfinite(x)
                                           for x in finals(runs[("plain", d)]))]
    stuck_list = "、".join(map(str, stuck_deep))
    if math.isfinite(p["diff"]) and p["diff"] > TIE:
        parts.append(f"没有残差时，从 {lo} 层加到 {hi} 层，验证 loss 反而升高了 {p['diff']:.3f}{sig(p)}：更深更差。"
                     + (f"{stuck_list} 层时干脆停在只按字符频率猜的水平（{unigram:.3f}）。"
                        if stuck_deep else ""))
        verdict["plain_deeper_hurts"] = True
    else:
        parts.append(f"没有残差时，从 {lo} 层加到 {hi} 层，验证 loss 没有升高（差 {p['diff']:+.3f}）。")
        verdict["plain_deeper_hurts"] = False
    verdict["plain_stuck_at"] = stuck_deep
    gaps = []
    for d in depths:
        c = compare_means(finals(runs[("res", d)]), finals(runs[("plain", d)]))
        gaps.append(c["diff"])
    if all(math.isfinite(g) and g > 0 for g in gaps):
        parts.append("每一个深度上，有残差都比没有残差好（包括只有 1 层时："
                     f"差 {gaps[0]:.3f}），而且差距随深度变大（{hi} 层时差 {gaps[-1]:.3f}）。"
                     if gaps[-1] > gaps[0] else "每一个深度上，有残差都比没有残差好。")
    verdict["res_minus_plain_gap"] = dict(zip(map(str, depths), gaps))
    tr_lo = statistics.fmean(final_train(r) for r in runs[("plain", lo)])
    tr_hi = statistics.fmean(final_train(r) for r in runs[("plain", hi)])
    verdict["plain_final_train_loss"] = {f"{lo}L": tr_lo, f"{hi}L": tr_hi}
    if verdict["plain_deeper_hurts"] and math.isfinite(tr_hi) and math.isfinite(tr_lo) and tr_hi > tr_lo + TIE:
        parts.append(f"没有残差时，{hi} 层的训练 loss（最后 10% 步的平均 {tr_hi:.3f}）也比 {lo} 层（{tr_lo:.3f}）高："
                     "更深的网络连训练集都拟合得更差，所以这不是过拟合，而是更难优化。")
    if verdict["res_deeper_helps"] == "yes" and verdict["plain_deeper_hurts"]:
        parts.append("两个方向都和 He 等（2016）一致：没有残差时加深反而更差，加了残差，加深才变成好事。")
    elif verdict["plain_deeper_hurts"] and not worse_steps:
        parts.append("没有残差时的方向和 He 等（2016）一致：加深反而更差。有残差时，这次只测到了“加深不会变差”，"
                     f"没有测到超出随机波动的“加深更好”：模型小、只训练 {steps} 步，深度的好处还没显出来。"
                     "可以加大 --steps（例如 600）再看，代价是运行时间翻倍。")
    else:
        parts.append("与 He 等（2016）的方向不完全一致，见上面的数字。小模型、短训练时，深度的好处可能还没显出来："
                     "可以加大 --steps，或者换一组 --depths 再看。")
    parts.append(HE_2016_TEXT + "注意两边的任务、模型和规模都完全不同，能比较的只有方向，不是数值。")
    if n_seeds == 1:
        parts.append("快速模式只跑了 1 个种子、少一个深度；去掉 --quick 会跑 1/2/4/8 层、每个 3 个种子，给出 均值 ± 标准差。")
    return "\n".join(parts), verdict


class DepthScaling(Experiment):
    name = "exp2_depth_scaling"
    module = "05_residual_connection"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "它比较的是加深网络时有无残差的可训练性（He 等 2016 的退化问题），这是优化层面的现象，不依赖语料是不是真实英文"
    title = "实验 2：加深网络，谁受益？（有 / 没有残差时，验证 loss 随层数的变化）"
    description = (
        "同一个字符级小语言模型取不同的层数，每个子层用你写的 PreNormResidual 包起来（有残差），\n"
        "或者写成 F(N(x))（没有残差）。同样的步数和学习率下比较验证 loss 随深度的变化，\n"
        "并和 He et al. 2016 的 plain / ResNet 18 vs 34 层的结果对照方向。对应 teaching.md §5。"
    )
    requires = ("PreNormResidual",)

    def add_arguments(self, parser):
        parser.add_argument("--depths", type=int, nargs="+", default=None, metavar="L",
                            help="比较哪些层数（默认：快速 1 2 4，完整 1 2 4 8）")
        parser.add_argument("--steps", type=int, default=None, help="每个模型训练多少步（默认 300）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3，所有变体相同）")
        parser.add_argument("--warmup", type=int, default=None,
                            help="学习率线性 warmup 的步数（默认：总步数的 10%%；所有变体相同）")

    def run(self):
        from kata.tinylm import TinyLMConfig

        residual_cls, note = load_residual(self.impl)
        if note:
            self.note(note)
        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        depths = sorted(set(self.args.depths or self.by_mode(smoke=[1, 2], quick=[1, 2, 4], full=[1, 2, 4, 8])))
        if len(depths) < 2 or any(d < 1 for d in depths):
            raise UsageError("--depths 至少要给两个不同的正整数层数，例如 --depths 1 4")
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=3, quick=300, full=240)
        dim = self.by_mode(smoke=32, quick=64, full=64)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        eval_every = max(1, steps // self.by_mode(smoke=1, quick=6, full=6))
        eval_iters = self.by_mode(smoke=2, quick=8, full=10)
        lr = self.args.lr
        # 所有变体都用同样的短 warmup：不加 warmup 时，8 层的有残差模型在个别种子上一开始就被大步长带偏，
        # 种子间的波动会盖住深度带来的那一点点改进（我们试过：3 个种子的标准差从 0.048 降到 0.015）
        warmup = self.args.warmup if self.args.warmup is not None else steps // 10
        if warmup < 0 or warmup > steps:
            raise UsageError(f"--warmup 应在 0 到 --steps（{steps}）之间")
        self.config(depths=depths, steps=steps, lr=lr, warmup_steps=warmup, dim=dim, n_heads=4, batch_size=batch,
                    seq_len=seq_len, grad_clip=1.0, eval_every=eval_every, eval_iters=eval_iters, norm="rmsnorm",
                    arms={a: ARM_NAMES[a][1] for a in ARMS}, threads=torch.get_num_threads(),
                    stuck_rule=f"final val loss > unigram baseline − {STUCK_MARGIN}",
                    reference={"paper": "He et al. 2016, Table 2, ImageNet val top-1 error (%)", "numbers": HE_2016})

        def cfg(d):
            return TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, dim=dim, n_layers=d, n_heads=4,
                                max_seq_len=seq_len, norm="rmsnorm", norm_position="pre")

        print(f"“有残差”一组的每个子层都由{impl_label(self.impl)} 包起来；“无残差”一组只是不加回 x。")
        arms = [Arm(f"{arm}/{d}L", f"{ARM_NAMES[arm][0]} {d} 层", f"{ARM_NAMES[arm][1][:11]} {d}L",
                    build=lambda s, arm=arm, d=d: build_model(cfg(d), self.impl, arm, s, residual_cls, self.device))
                for d in depths for arm in ARMS]
        run_arms(self, corpus, arms, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=lr, warmup_steps=warmup,
                 eval_every=eval_every, eval_iters=eval_iters)
        it = iter(arms)
        runs, params = {}, {}
        for d in depths:
            for arm in ARMS:
                a = next(it)
                runs[(arm, d)], params[d] = a.runs, a.n_params

        self._plots(depths, runs, unigram, seeds)
        rows = []
        for d in depths:
            rows.append([d, f"{params[d]:,}", fmt_mean_std(finals(runs[("res", d)])),
                         fmt_mean_std(finals(runs[("plain", d)])),
                         f"{compare_means(finals(runs[('res', d)]), finals(runs[('plain', d)]))['diff']:+.3f}"])
        self.print_table(["层数", "参数量", f"有残差 验证 loss（{len(seeds)} 个种子）", "无残差 验证 loss", "无残差 − 有残差"],
                         rows, title=f"{steps} 步，学习率 {lr:g}，前 {warmup} 步线性 warmup；只按字符频率猜的验证 loss = {unigram:.3f}")
        print("\n论文对照（方向，不是数值）：")
        print(format_he_table())

        text, verdict = conclusion(depths, runs, unigram, len(seeds), steps)
        self.conclude(text)
        return {
            "unigram_baseline_val_loss": unigram,
            "depths": depths,
            "params": {str(d): n for d, n in params.items()},
            "final_val_loss": {f"{a}/{d}L": finals(rs) for (a, d), rs in runs.items()},
            "runs": {f"{a}/{d}L": rs for (a, d), rs in runs.items()},
            "reference_he_2016": HE_2016,
            "verdict": verdict,
        }

    def _plots(self, depths, runs, unigram, seeds):
        colors = {"res": "C0", "plain": "C3"}
        fig, axes = new_figure(1, 3, width=5.2, height=4.4)
        for ax, arms, zoom in ((axes[0, 0], ARMS, False), (axes[0, 1], ("res",), True)):
            for arm in arms:
                means, stds = [], []
                for d in depths:
                    s = summarize(finals(runs[(arm, d)]))
                    means.append(s["mean"])
                    stds.append(s["std"] or 0.0)
                ax.errorbar(depths, means, yerr=stds, marker="o", capsize=4, color=colors[arm],
                            label=label(ARM_NAMES[arm]))
            if not zoom:
                ax.axhline(unigram, color="gray", linestyle="--", linewidth=1.0,
                           label=label(("只按字符频率猜", "unigram baseline")) + f" = {unigram:.3f}")
            ax.set_xscale("log", base=2)
            ax.set_xticks(depths, [str(d) for d in depths])
            ax.set_xlabel(label(("层数（对数轴）", "depth (layers, log scale)")))
            ax.set_ylabel(label(("最终验证 loss（nats/字符）", "final val loss (nats/char)")))
            title = (("只看有残差（放大纵轴）", "Residual only (zoomed y axis)") if zoom else
                     (f"验证 loss vs 深度（{len(seeds)} 个种子，均值 ± 标准差）",
                      f"Val loss vs depth ({len(seeds)} seed(s), mean ± std)"))
            ax.set_title(label(title))
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        curves, styles = {}, {}
        lstyle = {d: ls for d, ls in zip(depths, (":", "-.", "--", "-", (0, (1, 1))))}
        for (arm, d), rs in runs.items():
            steps = max((r["val_steps"] for r in rs), key=len)
            mean = []
            for i in range(len(steps)):
                vals = [r["val_losses"][i] for r in rs if i < len(r["val_losses"]) and math.isfinite(r["val_losses"][i])]
                mean.append(statistics.fmean(vals) if vals else float("nan"))
            name = (f"{ARM_NAMES[arm][0]} {d}L", f"{ARM_NAMES[arm][1]} {d}L")
            curves[name] = (steps, mean)
            styles[name] = {"color": colors[arm], "linestyle": lstyle.get(d, "-")}
        plot_loss_curves(curves, ax=axes[0, 2], styles=styles,
                         references={("只按字符频率猜", "unigram baseline"): unigram},
                         title=("验证 loss 曲线（种子平均）", "Validation loss (mean over seeds)"),
                         ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"))
        fig.tight_layout()
        self.save_figure(fig, "depth")


def format_he_table() -> str:
    from kata.experiment import format_table

    return format_table(["He et al. 2016 表 2", "18 层", "34 层", "加深之后"],
                        [["plain（无残差）", f"{HE_2016['plain'][18]}%", f"{HE_2016['plain'][34]}%", "更差"],
                         ["ResNet（有残差）", f"{HE_2016['res'][18]}%", f"{HE_2016['res'][34]}%", "更好"]])


if __name__ == "__main__":
    sys.exit(DepthScaling.main())
