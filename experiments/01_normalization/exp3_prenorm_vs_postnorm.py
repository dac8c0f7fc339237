"""实验 3：Pre-LN vs Post-LN——同样的学习率、不加 warmup（Xiong et al. 2020 的设定），两种深度。

  Pre-LN ：x = x + f(norm(x))      （minimind、GPT-2 以后的做法）
  Post-LN：x = norm(x + f(x))      （原始 Transformer）

归一化层是你写的 RMSNorm；你还没写的部件（RoPE、注意力、FFN……）来自参考实现，脚本开头会打印每个部件的来源。
记录两样东西：
1. 初始化时每个 block 的梯度范数（一次前向 + 反向，kata.tinylm.layer_grad_norms）；
2. 训练曲线；loss 变成 NaN/inf 记为发散（连同步数），loss 停在“只按字符频率猜”的水平记为“卡住”。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402
import statistics  # noqa: E402

from kata.experiment import (STUCK_MARGIN, Experiment, UsageError, compare_means, describe_gap,  # noqa: E402
                             fmt_mean_std, last_first_ratio, mean_std_curve, run_status, status_summary,
                             summarize, unigram_baseline)
from kata.plots import new_figure, plot_gradient_flow, plot_loss_curves  # noqa: E402
from kata.arms import Arm, run_arms  # noqa: E402

POSITIONS = ("pre", "post")
POS_NAME = {"pre": "Pre-LN", "post": "Post-LN"}


def key(depth: int, pos: str, warmup: bool = False) -> str:
    return f"{POS_NAME[pos]} {depth}L" + (" +warmup" if warmup else "")


def final_stream_rms(model, corpus, *, seq_len: int, batch_size: int, seed: int) -> float:
    """初始化时最后一个 block 的输出（进入最终 norm 之前的残差流）的均方根。"""
    import torch

    seen = []
    hook = model.blocks[-1].register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    try:
        g = torch.Generator().manual_seed(seed)
        x, _ = corpus.get_batch("train", batch_size, seq_len, generator=g, device=next(model.parameters()).device)
        with torch.no_grad():
            model(x)
    finally:
        hook.remove()
    return float(seen[0].float().pow(2).mean().sqrt())


def final_losses(runs: list) -> list:
    return [r["final_val_loss"] if r["diverged_at"] is None else float("nan") for r in runs]


def write_conclusion(grads: dict, runs: dict, depths: list, unigram: float, lr: float, steps: int,
                     n_seeds: int, warmup_runs: dict, stream_rms: dict) -> tuple[str, dict]:
    """grads[(d, pos)] = 每个种子的逐层梯度列表；runs[(d, pos)] = 每个种子的 TrainResult dict。"""
    parts, verdict = [], {"init": {}, "train": {}}
    multi = n_seeds > 1

    # 1) 初始化时的梯度
    ratio = {k: statistics.fmean(last_first_ratio(g) for g in v) for k, v in grads.items()}
    scale = {k: statistics.fmean(statistics.fmean(g) for g in v) for k, v in grads.items()}
    desc = "；".join(f"{d} 层：Post-LN {ratio[(d, 'post')]:.2f}，Pre-LN {ratio[(d, 'pre')]:.2f}" for d in depths)
    parts.append(f"初始化时，最后一个 block 与第一个 block 的梯度范数之比（last/first）——{desc}。")
    post_grows = all(ratio[(d, "post")] > 1.5 and ratio[(d, "post")] > 1.3 * ratio[(d, "pre")] for d in depths)
    verdict["init"]["post_larger_near_output"] = post_grows
    if post_grows:
        parts.append("Post-LN 的梯度集中在靠近输出的层，Pre-LN 更均匀：与 Xiong 等（2020）的分析一致"
                     "（初始化时 Post-LN 靠近输出的参数梯度大，所以需要 warmup）。")
    else:
        parts.append("Xiong 等（2020）的分析预期 Post-LN 在初始化时靠近输出的层梯度明显更大（last/first 远大于 1），"
                     "本次测到的并非如此：这个预期在这个小模型和它的初始化下没有出现。")
    rel = [scale[(d, "post")] / scale[(d, "pre")] for d in depths if scale[(d, "pre")] > 0]
    if rel:
        r = statistics.fmean(rel)
        verdict["init"]["post_over_pre_grad_scale"] = r
        if r < 0.5 or r > 2:
            text = (f"另一个测到的差别是整体大小：Post-LN 各 block 的梯度平均是 Pre-LN 的 {r:.2g} 倍"
                    f"（{'小得多' if r < 1 else '大得多'}）。")
            rp = statistics.fmean(stream_rms[(d, "pre")] for d in depths)
            rq = statistics.fmean(stream_rms[(d, "post")] for d in depths)
            verdict["init"]["final_stream_rms"] = {"pre": rp, "post": rq}
            if r < 1 and rp < 0.5 * rq:
                text += (f"可以测到的一个原因：初始化时，最后一个 block 的输出（进入最终 norm 之前的残差流）"
                         f"在 Pre-LN 里 RMS 只有 {rp:.3g}（词向量初始化很小，残差流里从来没有归一化），在 Post-LN 里是 {rq:.3g}"
                         "（每个 block 之后都归一化过）。归一化把输入除以它的 RMS，反向传播经过最终的 norm 时，"
                         f"梯度也被放大约 1/RMS ≈ {1 / rp:.0f} 倍——这是 Pre-LN 各 block 梯度大得多的一个原因。")
            parts.append(text)

    # 2) 训练
    parts.append(f"训练（学习率 {lr:g}、不加 warmup、{steps} 步、{n_seeds} 个种子）：")
    post_worse_at = []
    for d in depths:
        pre, post = runs[(d, "pre")], runs[(d, "post")]
        s_pre, s_post = status_summary(pre, unigram), status_summary(post, unigram)
        bad_post = any(run_status(r, unigram) != "ok" for r in post)
        bad_pre = any(run_status(r, unigram) != "ok" for r in pre)
        lp, lq = final_losses(pre), final_losses(post)
        c = compare_means(lp, lq)
        line = f"{d} 层："
        if s_post or s_pre:
            line += "；".join(x for x in (f"Post-LN {s_post}" if s_post else "", f"Pre-LN {s_pre}" if s_pre else "") if x)
            line += "。"
        if summarize(lp)["n"] and summarize(lq)["n"]:
            line += describe_gap(lp, lq, "Pre-LN", "Post-LN", spread_note=multi)
        worse = bad_post and not bad_pre or (
            math.isfinite(c["diff"]) and c["diff"] > 0.05 and c["exceeds_spread"] is not False)
        better = not bad_post and math.isfinite(c["diff"]) and c["diff"] < -0.05 and c["exceeds_spread"] is not False
        verdict["train"][f"{d}L"] = "post worse" if worse else ("post better" if better else "similar")
        if worse:
            post_worse_at.append(d)
        parts.append(line)
    deepest, shallowest = max(depths), min(depths)
    frac = {d: sum(run_status(r, unigram) != "ok" for r in runs[(d, "post")]) / len(runs[(d, "post")]) for d in depths}
    verdict["post_failed_fraction"] = {f"{d}L": f for d, f in frac.items()}
    if multi and frac[deepest] > frac[shallowest]:
        parts.append("层数越多，Post-LN 失败（发散或停在字频水平）的种子越多：" +
                     "，".join(f"{d} 层 {round(frac[d] * len(runs[(d, 'post')]))}/{len(runs[(d, 'post')])}" for d in depths) + "。")
    xiong = ("这与 Xiong 等（2020）的结论方向一致——不加 warmup 时 Post-LN 比 Pre-LN 难训练"
             "（他们的解释是初始化时靠近输出的梯度太大，所以 Post-LN 需要 warmup，Pre-LN 不需要）")
    if deepest in post_worse_at and shallowest not in post_worse_at:
        parts.append(f"同一个学习率下，{shallowest} 层的 Post-LN 训练正常，加深到 {deepest} 层就明显不行了，"
                     f"而 Pre-LN 两种深度都能训练。{xiong}；而且层数越多越明显。")
        if verdict["train"].get(f"{shallowest}L") == "post better":
            parts.append(f"注意 {shallowest} 层时 Post-LN 反而比 Pre-LN 好：Post-LN 的毛病是不稳定（加深或学习率变大就训不动），"
                         "而不是只要训练得起来就一定差。")
    elif post_worse_at:
        parts.append(f"Post-LN 在 {'、'.join(map(str, post_worse_at))} 层时比 Pre-LN 差。{xiong}。")
    else:
        parts.append("与预期不一致：在这个学习率和步数下，Post-LN 并没有比 Pre-LN 差。"
                     "模型小、学习率不高时问题不一定暴露；试试更大的 --lr（例如 2e-2）或更深的 --depths。")
    verdict["post_worse_at_depths"] = post_worse_at

    # 3) warmup 对照
    for (d, pos), wr in warmup_runs.items():
        st = [run_status(r, unigram) for r in wr]
        lw = final_losses(wr)
        if all(s == "ok" for s in st):
            txt = (f"对照：{d} 层 Post-LN 加上 warmup（其余完全相同）后，最终验证 loss {fmt_mean_std(lw)}，"
                   f"训练正常——问题出在一开始的大步长，warmup 正是对症的办法。")
            verdict["warmup_rescues_post"] = True
        else:
            txt = (f"对照：{d} 层 Post-LN 加上 warmup 后仍然{status_summary(wr, unigram)}："
                   "在这个设置下，warmup 还不足以救回它（可以试试更长的 warmup 或更小的 --lr）。")
            verdict["warmup_rescues_post"] = False
        parts.append(txt)
    return "\n".join(parts), verdict


class PreVsPostNorm(Experiment):
    name = "exp3_prenorm_vs_postnorm"
    module = "01_normalization"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "它测的是 Pre-LN / Post-LN 初始化时的梯度大小与训练是否发散，这是优化层面的现象，不依赖语料是不是真实英文"
    title = "实验 3：Pre-LN vs Post-LN（同样的学习率、不加 warmup，两种深度）"
    description = (
        "用你的 RMSNorm 搭 Pre-LN 和 Post-LN 两种小型字符级语言模型，各取两种深度，\n"
        "在同一个学习率、不加 warmup 的条件下：画出初始化时每个 block 的梯度范数，以及训练曲线；\n"
        "发散（NaN/inf）连同步数一起记录。对应 teaching.md §4。"
    )
    requires = ("RMSNorm",)

    def add_arguments(self, parser):
        parser.add_argument("--depths", type=int, nargs="+", default=None, metavar="L",
                            help="比较哪些层数（默认 6 12）")
        parser.add_argument("--lr", type=float, default=1e-2, help="学习率（默认 1e-2，所有变体相同，不加 warmup）")
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 80，完整 120）")
        parser.add_argument("--warmup-arm", action="store_true",
                            help="加跑一个对照：最深的 Post-LN 加上 warmup（前一半步数线性升温），其余完全相同")

    def run(self):
        from kata.tinylm import layer_grad_norms

        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        depths = self.args.depths or self.by_mode(smoke=[2, 3], quick=[4, 12], full=[6, 12])
        depths = sorted(set(depths))
        if len(depths) < 2:
            raise UsageError("--depths 至少要给两个不同的层数，例如 --depths 6 12")
        steps = self.args.steps or self.by_mode(smoke=3, quick=64, full=96)
        dim = self.by_mode(smoke=32, quick=64, full=64)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(32, 64), full=(32, 64))
        eval_every = max(1, steps // self.by_mode(smoke=1, quick=10, full=10))
        eval_iters = self.by_mode(smoke=2, quick=5, full=6)
        lr = self.args.lr
        warmup_arm = self.args.warmup_arm
        warmup_steps = max(1, steps // 2)
        self.config(depths=depths, lr=lr, warmup_steps=0, steps=steps, dim=dim, n_heads=4, batch_size=batch,
                    seq_len=seq_len, grad_clip=1.0, eval_every=eval_every, eval_iters=eval_iters, norm="rmsnorm",
                    warmup_arm=({"depth": depths[-1], "position": "post", "warmup_steps": warmup_steps}
                                if warmup_arm else None),
                    stuck_rule=f"final val loss > unigram baseline − {STUCK_MARGIN}")

        grads, stream_rms = {}, {}

        def measure_at_init(arm, s, model):
            if arm.train_kwargs:          # 加 warmup 的那一组只看训练曲线
                return None
            grads.setdefault(arm.tag, []).append(
                layer_grad_norms(model, corpus, seq_len=seq_len, batch_size=batch, seed=s))
            if s == seeds[0]:
                stream_rms[arm.tag] = final_stream_rms(model, corpus, seq_len=seq_len, batch_size=batch, seed=s)

        arms = []
        for d in depths:
            for pos in POSITIONS:
                arms.append(Arm(key(d, pos), key(d, pos), key(d, pos), {"n_layers": d, "norm_position": pos},
                                tag=(d, pos)))
        if warmup_arm:
            d = depths[-1]
            arms.append(Arm(key(d, "post", True), key(d, "post", True), key(d, "post", True),
                            {"n_layers": d, "norm_position": "post"}, train_kwargs={"warmup_steps": warmup_steps},
                            tag=(d, "post")))
        run_arms(self, corpus, arms, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=lr,
                 base_cfg={"dim": dim, "n_heads": 4, "norm": "rmsnorm"}, require=("RMSNorm",),
                 eval_every=eval_every, eval_iters=eval_iters, before_train=measure_at_init, unigram=unigram)
        runs = {a.tag: a.runs for a in arms if not a.train_kwargs}
        warm = {a.tag: a.runs for a in arms if a.train_kwargs}

        self._plots(grads, runs, warm, depths, seeds, unigram)

        rows = []
        for (d, pos), rs in list(runs.items()) + [((d, p), rs) for (d, p), rs in warm.items()]:
            is_warm = rs is warm.get((d, pos))
            g = grads.get((d, pos)) if not is_warm else None
            rows.append([
                key(d, pos, is_warm),
                f"{statistics.fmean(last_first_ratio(x) for x in g):.2f}" if g else "—",
                f"{statistics.fmean(statistics.fmean(x) for x in g):.3g}" if g else "—",
                fmt_mean_std(final_losses(rs)),
                "、".join({"ok": "正常", "stuck": "停在字频水平", "diverged": "发散"}[run_status(r, unigram)] for r in rs),
            ])
        self.print_table(["变体", "初始化梯度 last/first", "初始化梯度均值", f"最终验证 loss（{len(seeds)} 个种子）", "状态"],
                         rows, title=f"只按字符频率猜的验证 loss = {unigram:.3f}（低于它 {STUCK_MARGIN} 以上才算学到了上下文）")

        text, verdict = write_conclusion(grads, runs, depths, unigram, lr, steps, len(seeds), warm, stream_rms)
        if not self.smoke and len(seeds) == 1:
            text += "\n快速模式只跑了 1 个种子；去掉 --quick 会跑 3 个种子。"
        if not warmup_arm:
            text += ("\n本次没有检验 warmup 能不能救回 Post-LN；想看，加上 --warmup-arm"
                     "（会多跑一组“最深的 Post-LN + warmup”，其余完全相同）。")
        self.conclude(text)
        return {
            "unigram_baseline_val_loss": unigram,
            "init_grad_norms": {key(d, p): g for (d, p), g in grads.items()},
            "init_final_stream_rms": {key(d, p): v for (d, p), v in stream_rms.items()},
            "init_last_first_ratio": {key(d, p): [last_first_ratio(x) for x in g] for (d, p), g in grads.items()},
            "runs": {key(d, p): rs for (d, p), rs in runs.items()},
            "warmup_runs": {key(d, p, True): rs for (d, p), rs in warm.items()},
            "status": {key(d, p): [run_status(r, unigram) for r in rs] for (d, p), rs in runs.items()},
            "verdict": verdict,
        }

    def _plots(self, grads, runs, warm, depths, seeds, unigram):
        colors = {"pre": "C0", "post": "C3"}
        styles = {d: ls for d, ls in zip(depths, ("--", "-", ":", "-."))}
        fig, axes = new_figure(1, 2, width=6.4, height=4.4)
        per_layer, st = {}, {}
        for (d, pos), g in grads.items():
            k = key(d, pos)
            per_layer[k] = [statistics.fmean(col) for col in zip(*g)]
            st[k] = {"color": colors[pos], "linestyle": styles.get(d, "-")}
        plot_gradient_flow(per_layer, ax=axes[0, 0], styles=st,
                           title=("初始化时每个 block 的梯度范数", "Per-block gradient norm at initialisation"),
                           xlabel=("block（0 = 最靠近输入）", "block (0 = nearest the input)"))
        curves, diverged, cst = {}, {}, {}
        for (d, pos), rs in list(runs.items()) + list(warm.items()):
            is_warm = rs is warm.get((d, pos))
            k = key(d, pos, is_warm)
            steps, mean, std = mean_std_curve(rs)
            curves[k] = (steps, mean, std) if len(rs) > 1 else (steps, mean)
            divs = [r["diverged_at"] for r in rs if r["diverged_at"] is not None]
            if divs:
                diverged[k] = min(divs)
            cst[k] = {"color": "C2" if is_warm else colors[pos], "linestyle": styles.get(d, "-")}
        plot_loss_curves(curves, ax=axes[0, 1], diverged=diverged, styles=cst,
                         references={("只按字符频率猜", "unigram baseline"): unigram},
                         title=(f"验证集 loss（{len(seeds)} 个种子）", f"Validation loss ({len(seeds)} seed(s))"),
                         ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"))
        self.save_figure(fig, "grads_and_loss")


if __name__ == "__main__":
    sys.exit(PreVsPostNorm.main())
