"""实验 3：梯度裁剪——偏大的学习率下，不裁剪 vs 按全局范数 1.0 裁剪。

同一个小语言模型、同样的数据，用你的 AdamW、cosine_lr、train_step 和 clip_grad_norm，
在一个偏大的学习率（默认 3e-2，无 warmup）下训练两次：max_grad_norm=None 与 1.0。
不裁剪的那次也记下每一步的全局梯度范数（用 clip_grad_norm(…, inf)：系数恒为 1，不改梯度）。
数 loss 尖峰（比前 10 步的中位数高出 SPIKE 以上）、比较最终验证 loss、画梯度范数的分布。对应 teaching.md §5。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402
import statistics  # noqa: E402

from _train_tools import TrainingExperiment, pieces, tiny_model, train  # noqa: E402
from kata.experiment import describe_gap, fmt_mean_std  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

SPIKE = 0.3    # nats：比前 10 步 loss 的中位数高出这么多就算一次尖峰
WINDOW = 10


def count_spikes(losses) -> int:
    n = 0
    for i in range(WINDOW, len(losses)):
        if losses[i] - statistics.median(losses[i - WINDOW:i]) > SPIKE:
            n += 1
    return n


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * (len(v) - 1) + 0.5))]


class Clipping(TrainingExperiment):
    name = "exp3_clipping"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "它数的是高学习率下的 loss 尖峰与梯度范数的分布，这是优化层面的现象，不依赖语料是不是真实英文"
    module = "08_training_loop"
    title = "实验 3：偏大学习率下的 loss 尖峰——不裁剪 vs 全局梯度裁剪（你的 clip_grad_norm）"
    description = "数尖峰、比较最终 loss，并画出训练中全局梯度范数的分布。"
    default_threads = 1
    needs = ("cross_entropy", "AdamW", "cosine_lr", "clip_grad_norm", "train_step")

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="更新次数（默认：快速 150，完整 300）")
        parser.add_argument("--lr", type=float, default=3e-2, help="学习率（默认 3e-2，偏大；无 warmup）")
        parser.add_argument("--max-grad-norm", type=float, default=1.0, help="裁剪阈值（默认 1.0，同 minimind）")

    def run(self):
        ns = pieces(self, self.needs)
        corpus = self.load_corpus()
        steps = self.args.steps or self.by_mode(smoke=12, quick=150, full=300)
        lr, clip = self.args.lr, self.args.max_grad_norm
        dim, layers = self.by_mode(smoke=(32, 1), quick=(64, 2), full=(64, 4))
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        seeds = self.seeds(full=3, quick=2, smoke=1)
        self.config(steps=steps, lr=lr, max_grad_norm=clip, dim=dim, n_layers=layers, batch_size=batch,
                    seq_len=seq_len, warmup_steps=0, min_lr_ratio=0.1, weight_decay=0.1, spike_threshold=SPIKE)
        runs = {"none": [], "clip": []}
        for seed in seeds:
            for key, max_norm in (("none", None), ("clip", clip)):
                model = tiny_model(self, corpus, dim=dim, layers=layers, seq_len=seq_len, seed=seed)
                opt = ns.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
                r = train(ns, model, corpus, opt, steps=steps, batch=batch, seq_len=seq_len,
                          lr_at=lambda s: ns.cosine_lr(s, steps, lr, min_lr=lr * 0.1), max_grad_norm=max_norm,
                          record_norm=True, seed=seed, progress=self.progress,
                          desc=f"{'不裁剪' if key == 'none' else f'裁剪 {clip:g}'} seed={seed}", device=self.device)
                d = r.to_dict()
                d["spikes"] = count_spikes(r.losses)
                runs[key].append(d)

        rows = []
        for key, name in (("none", "不裁剪"), ("clip", f"全局裁剪 {clip:g}")):
            rs = runs[key]
            norms = [n for r in rs for n in r["grad_norms"] if n is not None and math.isfinite(n)]
            div = [r["diverged_at"] for r in rs if r["diverged_at"] is not None]
            frac = sum(n > clip for n in norms) / max(len(norms), 1)
            rows.append([name, fmt_mean_std([r["val_loss"] for r in rs]), fmt_mean_std([r["spikes"] for r in rs], ".1f"),
                         f"{pct(norms, 0.5):.2f} / {pct(norms, 0.99):.2f} / {max(norms):.1f}" if norms else "-",
                         f"{frac:.0%}", "、".join(map(str, div)) or "无"])
        self.print_table(["设置", "验证 loss", "尖峰数", "梯度范数 中位数 / p99 / 最大", f"范数 > {clip:g} 的步",
                          "发散的步"], rows, title=f"lr={lr:g}、{steps} 步、{len(seeds)} 个种子")
        self._plot(runs, clip)
        self.conclude(self._conclusion(runs, clip, len(seeds)))
        return {"runs": runs, "spike_threshold": SPIKE}

    def _conclusion(self, runs, clip, n_seeds):
        s0 = [r["spikes"] for r in runs["none"]]
        s1 = [r["spikes"] for r in runs["clip"]]
        norms = [n for r in runs["none"] for n in r["grad_norms"] if n is not None and math.isfinite(n)]
        parts = []
        if norms:
            med, mx = pct(norms, 0.5), max(norms)
            ratio = mx / med
            tail = ("大多数步平平无奇，少数几步的梯度大出一个量级以上——裁剪就是为这几步准备的。" if ratio >= 10 else
                    "这次最大值与中位数相差不到一个量级，梯度的分布比较集中。")
            parts.append(f"不裁剪时全局梯度范数的中位数是 {med:.2f}，最大 {mx:.1f}（{ratio:.1f} 倍）：{tail}")
        m0, m1 = sum(s0) / len(s0), sum(s1) / len(s1)
        if m1 < m0:
            parts.append(f"裁剪把 loss 尖峰从平均 {m0:.1f} 次降到 {m1:.1f} 次。")
        elif m1 == m0:
            parts.append(f"两者的尖峰数相同（平均 {m0:.1f} 次）：这个学习率下的不稳定没有表现为尖峰，试试更大的 --lr。")
        else:
            parts.append(f"这次裁剪后尖峰反而更多（{m0:.1f} → {m1:.1f} 次），与预期方向相反。")
        div0 = [r["diverged_at"] for r in runs["none"] if r["diverged_at"] is not None]
        div1 = [r["diverged_at"] for r in runs["clip"] if r["diverged_at"] is not None]
        if div0 or div1:
            parts.append(f"发散：不裁剪 {len(div0)} 次、裁剪 {len(div1)} 次（共 {n_seeds} 个种子）。")
        parts.append(describe_gap([r["val_loss"] for r in runs["none"]], [r["val_loss"] for r in runs["clip"]],
                                  "不裁剪", f"裁剪 {clip:g}"))
        clipped = [n for r in runs["clip"] for n in r["grad_norms"] if n is not None and math.isfinite(n)]
        if clipped:
            parts.append(f" 裁剪那次有 {sum(n > clip for n in clipped) / len(clipped):.0%} 的步（裁剪前的范数超过 {clip:g}）"
                         "真的被缩小了。")
        return "".join(parts)

    def _plot(self, runs, clip):
        fig, axes = new_figure(1, 2, width=6.0, height=4.2)
        ax = axes[0, 0]
        for key, name in (("none", ("不裁剪", "no clipping")), ("clip", (f"裁剪 {clip:g}", f"clip {clip:g}"))):
            r = runs[key][0]
            ax.plot(r["steps"], r["losses"], label=label(name), linewidth=1.0)
        ax.set_xlabel(label(("更新次数", "step")))
        ax.set_ylabel(label(("训练 loss（第一个种子）", "train loss (first seed)")))
        ax.set_ylim(top=5.0)
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        ax = axes[0, 1]
        for key, name in (("none", ("不裁剪", "no clipping")), ("clip", (f"裁剪 {clip:g}（裁剪前的范数）", f"clip {clip:g} (pre-clip)"))):
            norms = [n for r in runs[key] for n in r["grad_norms"] if n is not None and math.isfinite(n) and n > 0]
            if norms:
                lo, hi = math.log10(min(norms)), math.log10(max(norms))
                bins = [10 ** (lo + (hi - lo) * i / 30) for i in range(31)] if hi > lo else 10
                ax.hist(norms, bins=bins, alpha=0.5, label=label(name))
        ax.axvline(clip, color="k", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_xlabel(label(("全局梯度范数（对数轴）", "global grad norm (log)")))
        ax.set_ylabel(label(("步数", "steps")))
        ax.set_title(label(("梯度范数的分布（虚线 = 阈值）", "grad-norm distribution (dashed = threshold)")))
        ax.legend(fontsize="small")
        fig.tight_layout()
        self.save_figure(fig, "grad_norms")


if __name__ == "__main__":
    sys.exit(Clipping.main())
