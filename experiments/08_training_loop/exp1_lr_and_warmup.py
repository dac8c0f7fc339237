"""实验 1：学习率扫一遍，有 warmup 和没有 warmup——最大的稳定学习率是多少？

同一个小语言模型（TinyShakespeare 字符级），用你的 AdamW、cosine_lr 和 train_step，
学习率从小到大扫一遍，每个学习率跑两次：warmup_steps = 0 和 warmup_steps = 总步数的 10%。
为了让不稳定看得见，这里**不做梯度裁剪**（minimind 默认裁到 1.0，实验 3 专门看裁剪）。
发散（loss 或梯度不再有限）记下是第几次更新，不算崩溃。对应 teaching.md §4.1。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402

from _train_tools import TrainingExperiment, pieces, tiny_model, train  # noqa: E402
from kata.experiment import STUCK_MARGIN, fmt_mean_std, summarize, unigram_baseline  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402


def status(run: dict, unigram: float) -> str:
    """'diverged'（loss / 梯度不再有限）| 'stuck'（最终验证 loss 停在只按字符频率猜的水平）| 'ok'。"""
    if run["diverged_at"] is not None:
        return "diverged"
    if not math.isfinite(run["val_loss"]) or run["val_loss"] > unigram - STUCK_MARGIN:
        return "stuck"
    return "ok"


class LrAndWarmup(TrainingExperiment):
    name = "exp1_lr_and_warmup"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "它比较的是学习率与 warmup 对训练稳定性的影响（能不能收敛、在哪一步发散），这是优化层面的现象，不依赖语料是不是真实英文"
    module = "08_training_loop"
    title = "实验 1：学习率扫描 × 有无 warmup（你的 AdamW + cosine_lr + train_step）"
    description = ("学习率从 1e-3 扫到 1e-1（完整模式到 3e-1），各跑一次无 warmup、一次 10% warmup；不裁剪梯度。\n"
                   "报告每个学习率的最终验证 loss、发散的步数，以及有/无 warmup 时最大的“稳定”学习率。")
    default_threads = 1
    needs = ("cross_entropy", "AdamW", "cosine_lr", "train_step")
    nonnegative_args = ("warmup_frac",)

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="每次训练的更新次数（默认：快速 120，完整 300）")
        parser.add_argument("--norm-position", choices=("pre", "post"), default="post",
                            help="Pre-LN（minimind）还是 Post-LN（原始 Transformer，Xiong et al. 2020 说它最需要 warmup；默认 post）")
        parser.add_argument("--warmup-frac", type=float, default=0.1, help="warmup 占总步数的比例（默认 0.1）")

    def run(self):
        ns = pieces(self, self.needs)
        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        steps = self.args.steps or self.by_mode(smoke=4, quick=120, full=300)
        warmup = max(1, round(steps * self.args.warmup_frac))
        lrs = self.by_mode(smoke=[1e-3, 3e-2], quick=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                           full=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1])
        dim, layers = self.by_mode(smoke=(32, 1), quick=(64, 2), full=(64, 4))
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        seeds = self.seeds(full=1, quick=1, smoke=1)
        self.config(steps=steps, warmup_steps=warmup, lrs=lrs, dim=dim, n_layers=layers, batch_size=batch,
                    seq_len=seq_len, min_lr_ratio=0.1, weight_decay=0.1, grad_clip=None)
        print(f"{len(lrs)} 个学习率 × 2（有/无 warmup）× {len(seeds)} 个种子，每次 {steps} 步；warmup = {warmup} 步")

        results = {}
        for wu in (0, warmup):
            for lr in lrs:
                runs = []
                for seed in seeds:
                    model = tiny_model(self, corpus, dim=dim, layers=layers, seq_len=seq_len, seed=seed,
                                       norm_position=self.args.norm_position)
                    opt = ns.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
                    sched = lambda s, lr=lr, wu=wu: ns.cosine_lr(s, steps, lr, warmup_steps=wu, min_lr=lr * 0.1)  # noqa: E731
                    run = train(ns, model, corpus, opt, steps=steps, batch=batch, seq_len=seq_len, lr_at=sched,
                                seed=seed, progress=self.progress, desc=f"lr={lr:g} warmup={wu}", device=self.device)
                    runs.append(run.to_dict())
                results[(wu, lr)] = runs

        rows, best = [], {}
        for lr in lrs:
            row = [f"{lr:g}"]
            for wu in (0, warmup):
                runs = results[(wu, lr)]
                div = [r["diverged_at"] for r in runs if r["diverged_at"] is not None]
                stuck = sum(status(r, unigram) == "stuck" for r in runs)
                cell = fmt_mean_std([r["val_loss"] for r in runs]) if not div else f"发散 @ 第 {min(div)} 步"
                row.append(cell + ("（卡在字频水平）" if stuck and not div else ""))
            rows.append(row)
        self.print_table(["学习率", "无 warmup：验证 loss", f"warmup {warmup} 步：验证 loss"], rows,
                         title=f"{steps} 步后的验证 loss（nats/字符；不裁剪梯度；只按字符频率猜 = {unigram:.3f}）")

        def stable(wu):
            ok = [lr for lr in lrs if all(status(r, unigram) == "ok" for r in results[(wu, lr)])]
            return max(ok) if ok else None

        def best_lr(wu):
            finite = [(summarize([r["val_loss"] for r in results[(wu, lr)]])["mean"], lr) for lr in lrs]
            finite = [f for f in finite if math.isfinite(f[0])]
            return min(finite) if finite else (float("nan"), None)

        for wu in (0, warmup):
            best[wu] = {"largest_stable_lr": stable(wu), "best": best_lr(wu)}
        self._plot(results, lrs, warmup, steps)
        self.conclude(self._conclusion(results, lrs, warmup, best, unigram))
        return {"runs": {f"warmup={wu},lr={lr:g}": v for (wu, lr), v in results.items()},
                "largest_stable_lr": {str(wu): best[wu]["largest_stable_lr"] for wu in best},
                "best_lr": {str(wu): {"lr": best[wu]["best"][1], "val_loss": best[wu]["best"][0]} for wu in best},
                "status": {f"warmup={wu},lr={lr:g}": [status(r, unigram) for r in v] for (wu, lr), v in results.items()},
                "unigram_baseline_val_loss": unigram}

    def _conclusion(self, results, lrs, warmup, best, unigram):
        parts = []
        for wu, name in ((0, "无 warmup"), (warmup, f"有 warmup（{warmup} 步）")):
            div = [(lr, r["diverged_at"]) for lr in lrs for r in results[(wu, lr)] if r["diverged_at"] is not None]
            loss, lr = best[wu]["best"]
            s = best[wu]["largest_stable_lr"]
            txt = f"{name}：最好的学习率是 {lr:g}（验证 loss {loss:.3f}）" if lr is not None else f"{name}：全部发散"
            txt += f"，最大的稳定学习率是 {s:g}" if s is not None else "，没有一个学习率算得上稳定"
            txt += ("，发散的有 " + "、".join(f"lr={a:g}（第 {b} 步）" for a, b in div)) if div else "，没有发散"
            stuck = [lr for lr in lrs if any(status(r, unigram) == "stuck" for r in results[(wu, lr)])]
            if stuck:
                txt += "，卡在字频水平的有 lr=" + "、".join(f"{a:g}" for a in stuck)
            parts.append(txt + "。")
        s0, s1 = best[0]["largest_stable_lr"], best[warmup]["largest_stable_lr"]
        l0, l1 = best[0]["best"][0], best[warmup]["best"][0]
        holes = {wu: [lr for lr in lrs if best[wu]["largest_stable_lr"] is not None
                      and lr < best[wu]["largest_stable_lr"]
                      and not all(status(r, unigram) == "ok" for r in results[(wu, lr)])] for wu in (0, warmup)}
        if s0 is not None and s1 is not None and s1 > s0:
            parts.append(f"warmup 把可用的学习率上限从 {s0:g} 提到了 {s1:g}：开头几步 Adam 的二阶矩 v 还只见过很少的梯度，"
                         "估计得很不准，这时用满学习率最容易把模型推坏（Liu et al. 2020 的论证）。")
        elif s0 is not None and s1 is not None and s1 < s0:
            parts.append(f"这次有 warmup 的稳定上限（{s1:g}）反而低于无 warmup（{s0:g}），与 Liu et al. 2020 / Xiong et al. 2020 "
                         "预期的方向相反：单个种子、150–300 步的小模型里，边界附近的学习率成败有很大的偶然性，"
                         "而 warmup 占掉一部分步数后，余弦衰减前的“满学习率”阶段也不同。")
        elif s0 is not None and s1 is not None and s1 == s0:
            parts.append(f"这次有无 warmup 的最大稳定学习率相同（{s0:g}）：这个 Pre-LN 的小模型本来就比较稳"
                         "（Xiong et al. 2020：Pre-LN 对 warmup 的依赖远小于 Post-LN），warmup 的作用要在更大的学习率、"
                         "更深的模型或 Post-LN 上才明显。")
        else:
            parts.append("这次没有看到 warmup 提高可用学习率上限（见上表）。")
        for wu, name in ((0, "无 warmup"), (warmup, "有 warmup")):
            if holes[wu]:
                parts.append(f"注意：{name}时比“最大稳定学习率”更小的 lr=" + "、".join(f"{a:g}" for a in holes[wu])
                             + " 却失败了——稳定与否在边界附近有很大的偶然性（单个种子），上限只是一个粗略的刻度。")
        if math.isfinite(l0) and math.isfinite(l1):
            better = "有 warmup" if l1 < l0 else "无 warmup"
            parts.append(f"各自最好的验证 loss：无 warmup {l0:.3f}，有 warmup {l1:.3f}（{better}更低，差 {abs(l1 - l0):.3f}；"
                         "单个种子，差距在 0.02 以内时不要当真）。")
        parts.append(f"“稳定”的定义：没有发散，且最终验证 loss 低于只按字符频率猜的 {unigram:.3f} 至少 {STUCK_MARGIN}"
                     "（高学习率常见的失败不是 nan，而是模型被推坏后停在“只会猜常见字符”的水平）。")
        return "".join(parts)

    def _plot(self, results, lrs, warmup, steps):
        fig, axes = new_figure(1, 2, width=6.0, height=4.2)
        ax = axes[0, 0]
        for wu, style, name in ((0, "o-", ("无 warmup", "no warmup")), (warmup, "s--", ("有 warmup", "warmup"))):
            ys = [summarize([r["val_loss"] for r in results[(wu, lr)]])["mean"] for lr in lrs]
            ax.plot(lrs, [y if math.isfinite(y) else float("nan") for y in ys], style, label=label(name))
            for lr, y in zip(lrs, ys):
                if not math.isfinite(y):
                    ax.axvline(lr, color="red" if wu == 0 else "orange", alpha=0.3)
        ax.set_xscale("log")
        ax.set_xlabel(label(("峰值学习率", "peak lr")))
        ax.set_ylabel(label(("最终验证 loss", "final val loss")))
        ax.set_title(label(("验证 loss vs 学习率（竖线 = 发散）", "val loss vs lr (vertical line = diverged)")))
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        ax = axes[0, 1]
        for lr in lrs[-3:]:
            for wu, ls in ((0, "-"), (warmup, "--")):
                r = results[(wu, lr)][0]
                ax.plot(r["steps"], r["losses"], ls, label=f"lr={lr:g}" + (" warmup" if wu else ""), linewidth=1.0)
        ax.set_xlabel(label(("更新次数", "step")))
        ax.set_ylabel(label(("训练 loss", "train loss")))
        ax.set_title(label(("最大的三个学习率：训练曲线", "three largest lrs: training curves")))
        ax.set_ylim(top=6.0)
        ax.legend(fontsize="x-small")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "curves")


if __name__ == "__main__":
    sys.exit(LrAndWarmup.main())
