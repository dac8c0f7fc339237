"""实验 2：参数量相同，深而窄 vs 浅而宽。

MobileLLM（Liu et al. 2024）认为：十亿参数以下的小模型，同样的参数量，做得“深而窄”比“浅而宽”好——
MobileLLM-125M 是 30 层 × 576 维（Hugging Face 上 facebook/MobileLLM-125M 的模型卡）。MiniMind2-small 是
8 层 × 512 维：宽深比（hidden ÷ 层数）64，比 MobileLLM-125M 的 ≈19 宽得多。这个实验在 ~20 万参数的尺度上自己量一次。

三个**你的** MiniMindForCausalLM（模块 06），非嵌入参数相差不到 5%（脚本算出来打印）：

  深而窄：8 层 × 48 维（3 个头）│ 居中：4 层 × 64 维（4 个头）│ 浅而宽：2 层 × 96 维（6 个头）

头维都是 16，FFN 宽度都按 minimind 的规则（int(8h/3) 向上取整到 64），嵌入与 lm_head 共享。
同一个种子的三个模型用同一份数据顺序（你的 rank_batch）、同样的学习率与余弦调度（你的 cosine_lr）、你的 AdamW /
train_step 训练同样的步数，最后用你的 evaluate 在同一段验证集上比较；按种子配对，差距是否超过种子间的波动用
kata.arms 的 paired / describe_paired 判断（所有种子方向一致且 |均值| > 2 倍标准误）。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from _pretrain_tools import Parts, build_model, param_counts, shape_config, train_model  # noqa: E402
from kata.arms import PAIRED_HEADERS, Arm, arms_table, describe_paired, paired, paired_row  # noqa: E402
from kata.experiment import Experiment, fmt_mean_std, summarize  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

# key → (中文, English, hidden, 层数)
SHAPES = {
    "smoke": {"deep": ("深而窄", "deep-narrow", 16, 4), "wide": ("浅而宽", "shallow-wide", 32, 1)},
    "quick": {"deep": ("深而窄 8×48", "deep-narrow 8x48", 48, 8), "wide": ("浅而宽 2×96", "shallow-wide 2x96", 96, 2)},
    "full": {"deep": ("深而窄 8×48", "deep-narrow 8x48", 48, 8), "mid": ("居中 4×64", "middle 4x64", 64, 4),
             "wide": ("浅而宽 2×96", "shallow-wide 2x96", 96, 2)},
}
BATCH, SEQ = 16, 64
MOBILELLM_125M = (30, 576)     # 层数、维度（facebook/MobileLLM-125M 模型卡）
MINIMIND2_SMALL = (8, 512)     # MiniMind2-small：8 层 × 512
KAPLAN_ALPHA_N = 0.076         # Kaplan et al. 2020：L ∝ N^(−0.076)，用来估计参数量的小差别值多少 loss


def gap_curve(a_runs, b_runs):
    """每个评估点上 b − a 的验证 loss（先按种子配对相减，再平均）；只用两边都没发散的种子。"""
    a = {r["seed"]: r for r in a_runs if r["diverged_at"] is None}
    pairs = [(a[r["seed"]], r) for r in b_runs if r["diverged_at"] is None and r["seed"] in a]
    if not pairs:
        return [], []
    steps = pairs[0][1]["eval_steps"]
    gaps = [statistics.fmean(rb["val_loss"][i] - ra["val_loss"][i] for ra, rb in pairs) for i in range(len(steps))]
    return steps, gaps


class DepthVsWidth(Experiment):
    name = "exp2_depth_vs_width"
    module = "09_pretrain"
    can_use_synthetic = False
    synthetic_reason = "深度与宽度的取舍取决于语料里有多少需要多步组合的结构，合成语料上的胜负说明不了真实文本"
    title = "实验 2：参数量相同，深而窄 vs 浅而宽（你的 MiniMind，MobileLLM 的问题）"
    description = (
        "参数量相差不到 5% 的几个 MiniMind 形状（8×48、4×64、2×96），同样的数据、学习率与步数，\n"
        "按种子配对比较验证 loss（完整模式 3 个种子），看差距是否超过种子间的波动；也报每个形状的训练速度。"
    )

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 250，完整 600）")
        parser.add_argument("--lr", type=float, default=3e-3, help="峰值学习率（默认 3e-3，余弦退火到 10%%，所有形状相同）")

    def run(self):
        t_cpu0 = time.process_time()
        parts = Parts(self, ("MiniMindForCausalLM", "AdamW", "train_step", "cosine_lr", "PretrainDataset",
                             "rank_batch", "evaluate"))
        corpus = self.load_corpus()
        vocab = corpus.tokenizer.vocab_size
        train_ds = parts.PretrainDataset(corpus.train_ids, SEQ)
        val_ds = parts.PretrainDataset(corpus.val_ids, SEQ)
        seeds = self.seeds(full=3, quick=2, smoke=2)
        steps = self.args.steps or self.by_mode(smoke=4, quick=250, full=600)
        lr = self.args.lr
        warmup = min(self.by_mode(smoke=1, quick=25, full=30), steps)
        eval_batches = self.by_mode(smoke=1, quick=4, full=6)
        final_batches = self.by_mode(smoke=1, quick=12, full=16)
        shapes = SHAPES[self.mode]
        cfgs = {k: shape_config(h, L, vocab, SEQ) for k, (_, _, h, L) in shapes.items()}
        grid = sorted({max(1, round(steps * f)) for f in (0.1, 0.2, 0.35, 0.5, 0.7, 0.85)} | {steps})

        def lr_at(step):
            return parts.cosine_lr(step, steps, lr, warmup, lr * 0.1)

        self.config(shapes={k: c.to_dict() for k, c in cfgs.items()}, steps=steps, batch_size=BATCH, seq_len=SEQ, lr=lr,
                    schedule=f"cosine_lr: warmup {warmup}, min_lr = 0.1·lr", eval_steps=grid,
                    final_eval_samples=final_batches * 64,
                    optimizer="AdamW(betas=(0.9, 0.95), weight_decay=0.1), grad clip 1.0")
        print(f"部件：{parts.describe()}。")
        print(f"{len(shapes)} 个形状 × {len(seeds)} 个种子，各 {steps} 步（batch {BATCH} × 序列 {SEQ}），"
              f"学习率 {lr:g}（warmup {warmup} 步，余弦退火到 10%）。")

        arms = [Arm(k, zh, en, tag=(h, L)) for k, (zh, en, h, L) in shapes.items()]
        counts = {}
        for s in seeds:
            for arm in arms:
                model = build_model(parts, cfgs[arm.key], s, self.device)
                counts[arm.key] = param_counts(model)
                arm.n_params = counts[arm.key]["total"]
                rec = train_model(parts, model, train_ds, val_ds, steps=steps, batch=BATCH, lr_at=lr_at,
                                  eval_steps=grid, seed=s, eval_batches=eval_batches, final_eval_batches=final_batches,
                                  device=self.device, progress=self.progress, desc=f"{arm.en} seed {s}")
                rec["seed"] = s
                arm.runs.append(rec)
                state = (f"发散于第 {rec['diverged_at']} 步" if rec["diverged_at"] is not None
                         else f"val loss {rec['final_val_loss']:.4f}")
                print(f"  {arm.zh:<12} seed {s}: {state}，{rec['tokens_per_cpu_sec']:,.0f} tokens/CPU 秒")

        non_emb = {k: c["non_embedding"] for k, c in counts.items()}
        tot = {k: c["total"] for k, c in counts.items()}
        spread_ne = max(non_emb.values()) / min(non_emb.values()) - 1
        spread_tot = max(tot.values()) / min(tot.values()) - 1
        speed = {a.key: statistics.median(r["tokens_per_cpu_sec"] for r in a.runs) for a in arms}

        headers, rows = arms_table(arms, what="最终验证 loss", fmt=".4f")
        headers = ["形状", "全部参数", "非嵌入参数", "层 × 维", "宽深比 hidden ÷ 层数", headers[2], "bits/字符", "tokens/CPU 秒"]
        rows = []
        for a in arms:
            h, L = a.tag
            rows.append([a.zh, f"{tot[a.key]:,}", f"{non_emb[a.key]:,}", f"{L} × {h}", f"{h / L:.0f}",
                         fmt_mean_std(a.finals(), ".4f"), fmt_mean_std(a.finals("final_val_bpb"), ".4f"),
                         f"{speed[a.key]:,.0f}"])
        self.print_table(headers, rows, title=f"{steps} 步之后（参数量最多相差：非嵌入 {100 * spread_ne:.1f}%，全部 {100 * spread_tot:.1f}%）")

        by = {a.key: a for a in arms}
        pairs = [("wide", "deep")] + ([("mid", "deep"), ("wide", "mid")] if "mid" in by else [])
        cmp = {}
        prow = []
        for ka, kb in pairs:
            p = paired(by[ka].runs, by[kb].runs)
            cmp[f"{kb}_minus_{ka}"] = p
            prow.append(paired_row(by[ka].zh, by[kb].zh, p, fmt=".4f"))
        self.print_table(PAIRED_HEADERS, prow, title="按种子配对的差（负 = 后者更好）")

        self._plot(arms, seeds)
        text, verdict = self._conclusion(arms, by, cmp, speed, non_emb, tot, spread_ne, steps, seeds, parts)
        self.conclude(text)
        return {"n_params_total": tot, "n_params_non_embedding": non_emb, "param_spread_non_embedding": spread_ne,
                "param_spread_total": spread_tot, "tokens_per_cpu_sec": speed, "paired": cmp,
                "final_val_loss": {a.key: summarize(a.finals()) for a in arms},
                "final_val_bpb": {a.key: summarize(a.finals("final_val_bpb")) for a in arms},
                "runs": {a.key: a.runs for a in arms}, "verdict": verdict,
                "process_cpu_seconds_in_run": time.process_time() - t_cpu0, "parts": parts.source}

    def _conclusion(self, arms, by, cmp, speed, non_emb, tot, spread_ne, steps, seeds, parts):
        out, verdict = [], {}
        deep, wide = by["deep"], by["wide"]
        means = {a.key: summarize(a.finals())["mean"] for a in arms}
        best = min((k for k in means if math.isfinite(means[k])), key=lambda k: means[k], default=None)
        p = cmp["deep_minus_wide"]
        out.append(f"{steps} 步、{len(seeds)} 个种子：" + "，".join(f"{a.zh} {fmt_mean_std(a.finals(), '.4f')}" for a in arms)
                   + "。")
        out.append(describe_paired(p, wide.zh, deep.zh, expected="lower", fmt=".4f"))
        verdict["deep_minus_wide"] = {"mean": p["mean"], "se": p["se"], "beyond_noise": p["beyond_noise"]}
        steps_c, gaps = gap_curve(wide.runs, deep.runs)
        verdict["deep_minus_wide_curve"] = {"steps": steps_c, "gap": gaps}
        trend = None
        if len(gaps) >= 3:
            mid_i = len(gaps) // 2
            g1, g2 = gaps[mid_i], gaps[-1]
            trend = ("在缩小" if abs(g2) < abs(g1) * 0.8 else "在扩大" if abs(g2) > abs(g1) * 1.25 else "差不多")
            text = (f"差距随训练的变化（同一段验证集，种子平均，深 − 宽）：第 {steps_c[0]} 步 {gaps[0]:+.3f}，第 {steps_c[mid_i]} 步 "
                    f"{g1:+.3f}，第 {steps_c[-1]} 步 {g2:+.3f}——{trend}。")
            if trend == "在缩小" and g2 > 0:
                text += "深的模型在追赶：训练更久结论可能会变（这里没有测；可以用 --steps 加长试试）。"
            out.append(text)
        if "deep_minus_mid" in cmp:
            for key, (a, b) in (("deep_minus_mid", ("mid", "deep")), ("mid_minus_wide", ("wide", "mid"))):
                q = cmp[key]
                verdict[key] = {"mean": q["mean"], "se": q["se"], "beyond_noise": q["beyond_noise"]}
            mids = [f"{by[b].zh} − {by[a].zh} = {cmp[k]['mean']:+.4f}" + (f" ± {cmp[k]['se']:.4f}（标准误）" if cmp[k]["se"] else "")
                    + ("，超过波动" if cmp[k]["beyond_noise"] else "，在波动之内")
                    for k, (a, b) in (("deep_minus_mid", ("mid", "deep")), ("mid_minus_wide", ("wide", "mid")))]
            out.append("和居中的形状比：" + "；".join(mids) + "。")
        verdict["best"] = best
        # 参数量的小差别值多少 loss（用 Kaplan 的指数粗估）
        if best is not None and math.isfinite(means[best]):
            worth = KAPLAN_ALPHA_N * spread_ne * means[best]
            gap = abs(p["mean"]) if p["n"] else float("nan")
            small = math.isfinite(gap) and worth < gap / 3
            out.append(f"这几个形状的非嵌入参数最多差 {100 * spread_ne:.1f}%：按 Kaplan et al. 2020 的 L ∝ N^−{KAPLAN_ALPHA_N} 粗算，"
                       f"这值 ≈ {worth:.4f} nats，" + ("比测到的差距小得多，不是它造成的。" if small else
                                                      "和测到的差距同一量级，比较时要把它算进去。"))
        slow = speed["deep"] / speed["wide"]
        verdict["deep_speed_over_wide"] = slow
        out.append(f"速度（每 CPU 秒训练的 token）：{deep.zh} {speed['deep']:,.0f}，{wide.zh} {speed['wide']:,.0f}——"
                   f"参数与 6N FLOPs 几乎相同，深的那个慢 {100 * (1 - slow):.0f}%："
                   "层数多意味着更多串行的小矩阵乘和更多次算子调用，小模型在 CPU 上吃亏的是调用开销"
                   "（生成时每个 token 也要串行走完所有层，推理延迟同理）。" if slow < 1 else
                   f"速度（每 CPU 秒训练的 token）：{deep.zh} {speed['deep']:,.0f}，{wide.zh} {speed['wide']:,.0f}——这次深的那个不慢。")
        ratio = {a.key: a.tag[0] / a.tag[1] for a in arms}
        mm = MINIMIND2_SMALL[1] / MINIMIND2_SMALL[0]
        mb = MOBILELLM_125M[1] / MOBILELLM_125M[0]
        if p["beyond_noise"] and p["mean"] < 0:
            tail = (f"在这个尺度上方向与 MobileLLM（Liu et al. 2024）一致：同样的参数，深而窄更好。MobileLLM-125M 的宽深比（hidden ÷ 层数）是 {mb:.0f}"
                    f"（{MOBILELLM_125M[0]} 层 × {MOBILELLM_125M[1]}），MiniMind2-small 是 {mm:.0f}（{MINIMIND2_SMALL[0]} 层 × "
                    f"{MINIMIND2_SMALL[1]}）——MiniMind 选的是更宽、更浅、在 GPU 上更快的形状。")
        elif p["beyond_noise"]:
            slow_start = (f"只训练了 {steps} 步，深的模型起步慢、还在追赶；" if trend == "在缩小" else
                          "差距在后半段没有缩小（见上），所以不只是深的模型起步慢；" if trend is not None else "")
            tail = (f"方向与 MobileLLM（Liu et al. 2024）相反：这里浅而宽更好。可能的原因（没有实验验证）：{slow_start}"
                    f"字符级、序列 64 的任务需要的“多步组合”有限；学习率没有按形状调（同一个学习率对 {deep.tag[1]} 层的残差流未必合适）。"
                    f"MiniMind2-small 的宽深比（hidden ÷ 层数）{mm:.0f}（{MINIMIND2_SMALL[0]} 层 × {MINIMIND2_SMALL[1]}）也是偏宽的选择，"
                    f"MobileLLM-125M 是 {mb:.0f}（{MOBILELLM_125M[0]} 层 × {MOBILELLM_125M[1]}）。")
        else:
            tail = (f"在这个尺度、这么短的训练里，深度与宽度的取舍在种子间的波动之内——MobileLLM 说的效应是在 1.25 亿参数量级上"
                    f"测到的，这里既没有证实也没有否定它。宽深比（hidden ÷ 层数）："
                    f"MiniMind2-small {mm:.0f}（{MINIMIND2_SMALL[0]} 层 × {MINIMIND2_SMALL[1]}），MobileLLM-125M {mb:.0f}（{MOBILELLM_125M[0]} 层 × "
                    f"{MOBILELLM_125M[1]}），这里的形状 " + "、".join(f"{ratio[a.key]:.0f}" for a in arms) + "。")
        out.append(tail)
        if parts.fallbacks:
            out.append("（这次换成参考实现的部件：" + "、".join(parts.fallbacks) + "。）")
        return "\n".join(out), verdict

    def _plot(self, arms, seeds):
        fig, axes = new_figure(1, 2, width=6.0, height=4.2)
        ax = axes[0, 0]
        for j, a in enumerate(arms):
            rs = [r for r in a.runs if r["diverged_at"] is None]
            if not rs:
                continue
            xs = rs[0]["eval_steps"]
            ys = [statistics.fmean(r["val_loss"][i] for r in rs) for i in range(len(xs))]
            ax.plot(xs, ys, "o-", color=f"C{j}", ms=3, label=label((a.zh, a.en)))
        ax.set_xlabel(label(("更新次数", "step")))
        ax.set_ylabel(label(("验证 loss（种子平均）", "val loss (mean over seeds)")))
        ax.set_title(label(("训练曲线", "learning curves")))
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        ax = axes[0, 1]
        for j, a in enumerate(arms):
            f = a.finals()
            ax.scatter([j] * len(f), f, color=f"C{j}", s=25)
        for k, s in enumerate(seeds):   # 同一个种子连线：配对
            ys = [a.finals()[k] if k < len(a.runs) else float("nan") for a in arms]
            ax.plot(range(len(arms)), ys, color="gray", lw=0.8, alpha=0.6)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels([label((a.zh, a.en)) for a in arms], fontsize=8)
        ax.set_ylabel(label(("最终验证 loss", "final val loss")))
        ax.set_title(label(("每个种子（灰线连起同一个种子）", "per seed (grey lines pair a seed)")))
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "depth_vs_width")


if __name__ == "__main__":
    sys.exit(DepthVsWidth.main())
