"""实验 2：AdamW vs Adam + L2 vs SGD + 动量——各自在自己最好的学习率上比。

同一个小语言模型、同样的数据顺序、同样的 weight_decay 和余弦调度（cosine_lr，5% warmup，梯度裁剪 1.0），
只换优化器：你的 AdamW（解耦衰减）、torch.optim.Adam(weight_decay=…)（L2 加进梯度）、
torch.optim.SGD(momentum=0.9, weight_decay=…)。每个优化器先在一小组学习率上扫一遍（种子 0），
再在各自最好的学习率上补跑其余种子。记录训练过程中全部参数的 L2 范数。对应 teaching.md §3.3。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402

import torch  # noqa: E402

from _train_tools import TrainingExperiment, pieces, tiny_model, train  # noqa: E402
from kata.experiment import describe_gap, fmt_mean_std, summarize  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

OPTIMIZERS = ("AdamW", "Adam+L2", "SGD+momentum")
LR_GRID = {"AdamW": [3e-3, 1e-2, 3e-2], "Adam+L2": [3e-3, 1e-2, 3e-2], "SGD+momentum": [0.1, 0.3, 1.0]}


class AdamWVsAdamL2(TrainingExperiment):
    name = "exp2_adamw_vs_adam_l2"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "它比较的是三种优化器把同一个模型训到多低、权重范数怎么变，这是优化层面的现象，不依赖语料是不是真实英文"
    module = "08_training_loop"
    title = "实验 2：AdamW（你的）vs Adam + L2 vs SGD + 动量，各自最好的学习率，≥3 个种子"
    description = "同一个 weight_decay，只换优化器；比较验证 loss 与训练中的权重范数。"
    default_threads = 1
    needs = ("cross_entropy", "AdamW", "cosine_lr", "clip_grad_norm", "train_step")

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="每次训练的更新次数（默认：快速 120，完整 300）")
        parser.add_argument("--weight-decay", type=float, default=0.1, help="三个优化器共用的 weight_decay（默认 0.1）")

    def _optimizer(self, ns, kind, params, lr, wd):
        if kind == "AdamW":
            return ns.AdamW(params, lr=lr, weight_decay=wd)
        if kind == "Adam+L2":
            return torch.optim.Adam(params, lr=lr, weight_decay=wd)
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd)

    def run(self):
        ns = pieces(self, self.needs)
        corpus = self.load_corpus()
        steps = self.args.steps or self.by_mode(smoke=4, quick=120, full=300)
        wd = self.args.weight_decay
        dim, layers = self.by_mode(smoke=(32, 1), quick=(64, 2), full=(64, 2))
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        grid = {k: (v[1:2] if self.smoke else (v[:2] if k == "SGD+momentum" and self.quick else v))
                for k, v in LR_GRID.items()}
        if self.quick:
            grid = {"AdamW": [3e-3, 1e-2], "Adam+L2": [3e-3, 1e-2], "SGD+momentum": [0.3, 1.0]}
        seeds = self.seeds(full=3, quick=1, smoke=1)
        warmup = max(1, steps // 20)
        every = max(1, steps // 30)
        self.config(steps=steps, weight_decay=wd, lr_grid=grid, dim=dim, n_layers=layers, batch_size=batch,
                    seq_len=seq_len, warmup_steps=warmup, min_lr_ratio=0.1, grad_clip=1.0)
        print(f"学习率扫描：{sum(len(v) for v in grid.values())} 次（种子 {seeds[0]}），"
              f"然后每个优化器在最好的学习率上再跑 {len(seeds) - 1} 个种子；每次 {steps} 步，weight_decay={wd}")

        def one(kind, lr, seed):
            model = tiny_model(self, corpus, dim=dim, layers=layers, seq_len=seq_len, seed=seed)
            opt = self._optimizer(ns, kind, model.parameters(), lr, wd)
            sched = lambda s: ns.cosine_lr(s, steps, lr, warmup_steps=warmup, min_lr=lr * 0.1)  # noqa: E731
            norms = []

            def lr_at(s):   # 顺便在每 every 步记一次全部参数的 L2 范数（在这一步更新之前）
                if s % every == 0:
                    norms.append((s, math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))))
                return sched(s)
            r = train(ns, model, corpus, opt, steps=steps, batch=batch, seq_len=seq_len, lr_at=lr_at,
                      max_grad_norm=1.0, seed=seed, progress=self.progress, desc=f"{kind} lr={lr:g} seed={seed}",
                      device=self.device)
            norms.append((steps, math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))))
            d = r.to_dict()
            d["weight_norm"] = norms
            return d

        sweep = {kind: {lr: one(kind, lr, seeds[0]) for lr in grid[kind]} for kind in OPTIMIZERS}
        best_lr = {}
        for kind in OPTIMIZERS:
            finite = [(r["val_loss"], lr) for lr, r in sweep[kind].items() if math.isfinite(r["val_loss"])]
            best_lr[kind] = min(finite)[1] if finite else grid[kind][0]
        runs = {kind: [sweep[kind][best_lr[kind]]] + [one(kind, best_lr[kind], s) for s in seeds[1:]]
                for kind in OPTIMIZERS}

        self.print_table(["优化器"] + [f"lr 扫描（种子 {seeds[0]}）"], [
            [kind, "，".join(f"{lr:g}: " + (f"{r['val_loss']:.3f}" if math.isfinite(r["val_loss"])
                                             else f"发散 @ {r['diverged_at']}") for lr, r in sweep[kind].items())]
            for kind in OPTIMIZERS], title="各优化器的学习率扫描（最终验证 loss）")
        rows = []
        for kind in OPTIMIZERS:
            vals = [r["val_loss"] for r in runs[kind]]
            n0 = runs[kind][0]["weight_norm"][0][1]
            n1 = summarize([r["weight_norm"][-1][1] for r in runs[kind]])["mean"]
            rows.append([kind, f"{best_lr[kind]:g}", fmt_mean_std(vals), f"{n0:.2f} → {n1:.2f}"])
        self.print_table(["优化器", "最好的 lr", f"验证 loss（{len(seeds)} 个种子）", "权重范数 开始 → 结束"], rows,
                         title=f"{steps} 步，weight_decay={wd}")
        self._plot(runs)
        text = self._conclusion(runs, best_lr, len(seeds), wd)
        edge = [k for k in OPTIMIZERS if len(grid[k]) > 1 and best_lr[k] in (grid[k][0], grid[k][-1])]
        if edge:
            text += ("注意：" + "、".join(f"{k}（{best_lr[k]:g}）" for k in edge)
                     + " 的最好学习率落在扫描范围的端点上，范围之外可能还有更好的学习率，它的成绩可能被低估了。")
        self.conclude(text)
        return {"sweep": {k: {f"{lr:g}": r for lr, r in v.items()} for k, v in sweep.items()},
                "best_lr": best_lr, "runs": runs,
                "final_val_loss": {k: summarize([r["val_loss"] for r in v]) for k, v in runs.items()}}

    def _conclusion(self, runs, best_lr, n_seeds, wd):
        vals = {k: [r["val_loss"] for r in v] for k, v in runs.items()}
        norms = {k: summarize([r["weight_norm"][-1][1] for r in v])["mean"] for k, v in runs.items()}
        means = {k: summarize(v)["mean"] for k, v in vals.items()}
        order = sorted((m, k) for k, m in means.items() if math.isfinite(m))
        parts = []
        if order:
            parts.append("按验证 loss 从低到高：" + " < ".join(f"{k}（{m:.3f}）" for m, k in order) + "。")
        parts.append(describe_gap(vals["Adam+L2"], vals["AdamW"], "Adam + L2", "AdamW") + " ")
        parts.append(describe_gap(vals["AdamW"], vals["SGD+momentum"], "AdamW", "SGD + 动量") + " ")
        a, l2 = norms["AdamW"], norms["Adam+L2"]
        if math.isfinite(a) and math.isfinite(l2):
            rel = (l2 - a) / a
            if abs(rel) < 0.02:
                parts.append(f"结束时的权重范数 AdamW {a:.2f}、Adam + L2 {l2:.2f}，几乎相同：这么短的训练里衰减的累积作用还很小。")
            else:
                big, small = ("Adam + L2", "AdamW") if l2 > a else ("AdamW", "Adam + L2")
                parts.append(f"结束时的权重范数 AdamW {a:.2f}、Adam + L2 {l2:.2f}：{big} 的权重更大（相差 {abs(rel):.0%}）。"
                             f"同样写着 weight_decay={wd}，L2 那一项被 √v̂ 除掉以后，实际的衰减强度与 AdamW 的 lr·wd·p 完全不同"
                             "（Loshchilov & Hutter 2019）。")
        if n_seeds < 3:
            parts.append("只有 1 个种子：差距是否超过随机波动无法判断，去掉 --quick 跑 3 个种子。")
        return "".join(parts)

    def _plot(self, runs):
        fig, axes = new_figure(1, 2, width=6.0, height=4.2)
        ax = axes[0, 0]
        for kind in OPTIMIZERS:
            r = runs[kind][0]
            ax.plot(r["steps"], r["losses"], label=kind, linewidth=1.0)
        ax.set_xlabel(label(("更新次数", "step")))
        ax.set_ylabel(label(("训练 loss（第一个种子）", "train loss (first seed)")))
        ax.set_ylim(top=4.5)
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        ax = axes[0, 1]
        for kind in OPTIMIZERS:
            for i, r in enumerate(runs[kind]):
                xs, ys = zip(*r["weight_norm"])
                ax.plot(xs, ys, color=f"C{OPTIMIZERS.index(kind)}", alpha=1.0 if i == 0 else 0.4,
                        label=kind if i == 0 else None)
        ax.set_xlabel(label(("更新次数", "step")))
        ax.set_ylabel(label(("全部参数的 L2 范数", "L2 norm of all parameters")))
        ax.set_title(label(("权重范数（每条线一个种子）", "weight norm (one line per seed)")))
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "curves")


if __name__ == "__main__":
    sys.exit(AdamWVsAdamL2.main())
