"""实验 2：不用归一化 vs LayerNorm vs 你的 RMSNorm——在 TinyShakespeare 上训练小型字符级因果语言模型。

三个变体只差归一化层（Pre-LN 位置，含最后的 norm；“不用”= nn.Identity），其余完全相同：
同样的初始化种子、同样的数据顺序、同样的学习率（不加 warmup）。完整模式每个变体跑 ≥3 个种子，
报告验证 loss 的 均值 ± 标准差；另外单独测 nn.LayerNorm 与你的 RMSNorm 前向 + 反向的耗时。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from kata.experiment import (Experiment, compare_means, describe_gap, fmt_mean_std, summarize, mean_std_curve,  # noqa: E402
                             unigram_baseline)
from kata.plots import new_figure, plot_loss_curves  # noqa: E402
from kata.arms import Arm, run_arms  # noqa: E402

VARIANTS = ("none", "layernorm", "rmsnorm")
PAPER_SPEEDUP = "Zhang & Sennrich 2019（Root Mean Square Layer Normalization, NeurIPS）报告 RMSNorm 的运行时间比 LayerNorm 少 7%–64%（视模型而定）"


def variant_names(impl: str) -> dict:
    rms = {"exercises": ("你的 RMSNorm", "your RMSNorm"), "solutions": ("参考 RMSNorm", "reference RMSNorm")}.get(
        impl, (f"RMSNorm（{impl}）", "RMSNorm"))
    return {"none": ("不用归一化", "no norm"), "layernorm": ("LayerNorm", "LayerNorm"), "rmsnorm": rms}


# ---------------------------------------------------------------------------------------------
# 计时：nn.LayerNorm vs 你的 RMSNorm（前向 + 反向）
# ---------------------------------------------------------------------------------------------

def time_fwd_bwd(modules: dict, shape, repeats: int, warmup: int, device: str) -> dict:
    """交替计时（每一轮依次跑每个模块一次），返回每个模块每次前向+反向的耗时中位数（毫秒）与全部样本。"""
    x = torch.randn(*shape, device=device, requires_grad=True)
    grad_out = torch.randn(*shape, device=device)
    times = {name: [] for name in modules}

    def once(mod):
        x.grad = None
        for p in mod.parameters():
            p.grad = None
        y = mod(x)
        y.backward(grad_out)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()
        elif device == "mps":
            torch.mps.synchronize()

    for _ in range(warmup):
        for mod in modules.values():
            once(mod)
    for _ in range(repeats):
        for name, mod in modules.items():
            sync()
            t0 = time.perf_counter()
            once(mod)
            sync()
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {name: {"median_ms": statistics.median(ts), "samples_ms": ts} for name, ts in times.items()}


def moving_average(values, window: int) -> list:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > window:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


# ---------------------------------------------------------------------------------------------
# 结论
# ---------------------------------------------------------------------------------------------

def _sp(text: str) -> str:
    return text + (" " if text[-1:].isascii() else "")


def steps_to_beat(run: dict, level: float):
    """第一次验证 loss 低于 level 的步数（一直没低于 → None）。"""
    for step, v in zip(run["val_steps"], run["val_losses"]):
        if math.isfinite(v) and v < level:
            return step
    return None


def final_losses(runs: list) -> list:
    """每个种子的最终验证 loss；发散的记为 nan（summarize 会单独计数）。"""
    return [r["final_val_loss"] if r["diverged_at"] is None else float("nan") for r in runs]


def write_conclusion(results: dict, bench: dict, names: dict, n_seeds: int, steps: int, lr: float,
                     unigram: float) -> tuple[str, dict]:
    """由数字决定措辞的结论，以及用于 JSON 的判定。results[variant] = 每个种子的 TrainResult dict。"""
    zh = {k: v[0] for k, v in names.items()}
    loss = {v: final_losses(results[v]) for v in VARIANTS}
    div = {v: [r["diverged_at"] for r in results[v] if r["diverged_at"] is not None] for v in VARIANTS}
    parts, verdict = [], {}

    # 1) LayerNorm vs RMSNorm：预期“效果相当”
    c = compare_means(loss["layernorm"], loss["rmsnorm"])
    tie = 0.01
    multi = n_seeds > 1
    parts.append(f"{steps} 步、学习率 {lr:g}、不加 warmup，{n_seeds} 个种子：" +
                 describe_gap(loss["layernorm"], loss["rmsnorm"], zh["layernorm"], zh["rmsnorm"], tie=tie,
                              spread_note=multi))
    if c["exceeds_spread"] is None:
        same = abs(c["diff"]) <= 0.05 if math.isfinite(c["diff"]) else False
        verdict["ln_vs_rms"] = "comparable (1 seed, |Δ| ≤ 0.05)" if same else "differ (1 seed)"
    else:
        same = not c["exceeds_spread"] or abs(c["diff"]) <= tie
        verdict["ln_vs_rms"] = "comparable" if same else "differ"
    if same and c["exceeds_spread"] is None:
        parts.append("单个种子下两者只差不到 0.05，与 Zhang & Sennrich 2019 “RMSNorm 的效果与 LayerNorm 相当”的结论一致。")
    elif same:
        parts.append("这与 Zhang & Sennrich 2019 “RMSNorm 的效果与 LayerNorm 相当”的结论一致：去掉减均值这一步，没有让模型变差。")
    else:
        better = zh["rmsnorm"] if c["diff"] < 0 else zh["layernorm"]
        parts.append(f"这与论文“两者效果相当”的预期不一致：本次 {better} 明显更好。"
                     "小模型、短训练下这种差别可能来自学习率恰好更适合其中一个；换几个 --seed 或用完整模式再看。")

    # 2) 不用归一化 vs 有归一化：预期更慢、更差或发散
    best = "rmsnorm" if summarize(loss["rmsnorm"])["mean"] <= summarize(loss["layernorm"])["mean"] else "layernorm"
    s_none = summarize(loss["none"])
    if div["none"]:
        parts.append(f"不用归一化的模型在 {len(div['none'])}/{n_seeds} 个种子上发散了（loss 变成 NaN/inf，"
                     f"发生在第 {', '.join(str(d) for d in div['none'])} 步）。")
    if s_none["n"]:
        cn = compare_means(loss[best], loss["none"])
        parts.append(describe_gap(loss[best], loss["none"], zh[best], zh["none"], spread_note=multi))
        worse = cn["diff"] > 0.05 and cn["exceeds_spread"] is not False
        verdict["none_vs_norm"] = "no-norm worse" if worse or div["none"] else "no-norm not worse"
        if worse:
            parts.append(f"没有归一化时，同样的步数和学习率下模型学得明显更慢（验证 loss 高 {cn['diff']:.2f}）——"
                         "归一化让每层的输入尺度固定，同一个学习率对所有层都合适。")
        elif not div["none"]:
            parts.append("与预期不一致：本次不用归一化的模型并没有明显更差。这个模型只有几层、初始化也很小心"
                         "（残差分支按 1/√(2·层数) 缩小），在这个学习率下可能还不需要归一化；试试更大的 --lr 或更多层（--layers）。")
        level = unigram - 0.1
        beat = {v: [steps_to_beat(r, level) for r in results[v]] for v in ("none", best)}
        if all(b is not None for b in beat[best]):
            def when(name, bs):
                got = [b for b in bs if b is not None]
                if not got:
                    return f"{_sp(name)}到训练结束都没有做到"
                text = f"{_sp(name)}在第 {'、'.join(map(str, got))} 步"
                if len(got) < len(bs):
                    text += f"（另有 {len(bs) - len(got)} 个种子到训练结束都没有做到）"
                return text
            parts.append(f"参照线：只按字符频率猜（不看上下文）的验证 loss 是 {unigram:.3f}。验证 loss 第一次比它低 0.1："
                         f"{when(zh[best], beat[best])}，{when(zh['none'], beat['none'])}"
                         "（越晚说明模型在“只会猜常见字符”的阶段卡得越久）。")
    else:
        verdict["none_vs_norm"] = "no-norm diverged"

    # 3) 计时
    ln, rms = bench["layernorm"]["median_ms"], bench["rmsnorm"]["median_ms"]
    ratio = rms / ln
    verdict["speed_ratio_rms_over_ln"] = ratio
    shape = "×".join(str(d) for d in bench["shape"])
    speed = (f"计时（输入 [{shape}]，前向+反向，{bench['repeats']} 次取中位数）：nn.LayerNorm {ln:.3f} ms，"
             f"{zh['rmsnorm']} {rms:.3f} ms，比值 {ratio:.2f}")
    if "torch_rmsnorm" in bench:
        speed += f"（torch.nn.RMSNorm {bench['torch_rmsnorm']['median_ms']:.3f} ms）"
    slower = f"慢了 {100 * (ratio - 1):.0f}%" if ratio < 2 else f"慢，耗时是它的 {ratio:.1f} 倍"
    if ratio < 0.97:
        speed += f"：{zh['rmsnorm']} 快了 {100 * (1 - ratio):.0f}%，方向与论文一致：{PAPER_SPEEDUP}。"
    elif ratio <= 1.03:
        speed += f"：两者几乎一样快（差别在 3% 以内）。作为对照，{PAPER_SPEEDUP}。"
    else:
        speed += (f"：{zh['rmsnorm']} 反而比 nn.LayerNorm {slower}。这与论文的方向相反：{PAPER_SPEEDUP}。"
                  "原因：nn.LayerNorm 在 PyTorch 里是一个融合好的内核，而手写的 RMSNorm 是 float()、pow、mean、rsqrt、"
                  "两次乘法、type_as 等好几个独立的张量操作，每个都要完整读写一遍内存；"
                  "在这台机器上，这些额外的内存读写和调度开销盖过了“少一次归约”省下的计算。论文是在作者自己的实现和硬件上测的。")
    if "torch_rmsnorm" in bench:
        t_ratio = bench["torch_rmsnorm"]["median_ms"] / ln
        verdict["speed_ratio_torch_rms_over_ln"] = t_ratio
        if t_ratio > 1.2 and ratio > 1.2:
            speed += (f"连 PyTorch 自带的 torch.nn.RMSNorm 在这里也是 LayerNorm 耗时的 {t_ratio:.1f} 倍："
                      "差别主要来自“是否有融合好的内核”，而不是公式本身的计算量。")
        elif t_ratio < 0.97:
            speed += f"PyTorch 自带的 torch.nn.RMSNorm 比 LayerNorm 快 {100 * (1 - t_ratio):.0f}%：融合实现才能体现少一次归约的好处。"
    parts.append(speed)
    if not multi:
        parts.append("快速模式只跑了 1 个种子，上面的 loss 差距是否超过随机波动无法判断；去掉 --quick 会跑 3 个种子并给出 均值 ± 标准差。")
    return "\n".join(parts), verdict


# ---------------------------------------------------------------------------------------------
# 实验
# ---------------------------------------------------------------------------------------------

class NormComparison(Experiment):
    name = "exp2_norm_comparison"
    module = "01_normalization"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "它比较的是不同归一化下训练收敛的快慢与稳定性（外加计时），这是优化层面的现象，在任何有结构的字符序列上都能测出来"
    title = "实验 2：不用归一化 vs LayerNorm vs RMSNorm（TinyShakespeare 上的小型字符级语言模型）"
    description = (
        "三个只差归一化层的小型因果语言模型（真实的因果掩码、预测下一个字符），同样的初始化、数据和学习率，\n"
        "比较验证集 loss 曲线（完整模式 ≥3 个种子，均值 ± 标准差）；另外测 nn.LayerNorm 与你的 RMSNorm\n"
        "前向+反向的耗时。对应 teaching.md §2.2 与实验 2 的观察框。"
    )
    requires = ("RMSNorm",)

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 120，完整 300）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3，不加 warmup）")
        parser.add_argument("--layers", type=int, default=4, help="层数（默认 4）")
        parser.add_argument("--dim", type=int, default=64, help="隐藏维度（默认 64）")

    def run(self):
        names = variant_names(self.impl)
        corpus = self.load_corpus()
        self.unigram = unigram_baseline(corpus)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=4, quick=120, full=300)
        dim = self.by_mode(smoke=32, quick=self.args.dim, full=self.args.dim)
        layers = self.by_mode(smoke=2, quick=self.args.layers, full=self.args.layers)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(32, 64), full=(32, 64))
        eval_every = max(1, steps // self.by_mode(smoke=2, quick=10, full=15))
        eval_iters = self.by_mode(smoke=2, quick=5, full=10)
        lr = self.args.lr
        self.config(steps=steps, lr=lr, warmup_steps=0, grad_clip=1.0, dim=dim, n_layers=layers, n_heads=4,
                    batch_size=batch, seq_len=seq_len, eval_every=eval_every, eval_iters=eval_iters,
                    norm_position="pre", schedule="cosine decay to 0.1·lr, no warmup (kata.tinylm.train_lm)")

        arms = [Arm(v, names[v][0], names[v][1], {"norm": v}) for v in VARIANTS]
        run_arms(self, corpus, arms, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=lr,
                 base_cfg={"dim": dim, "n_layers": layers, "n_heads": 4}, require=("RMSNorm",),
                 eval_every=eval_every, eval_iters=eval_iters)
        results = {a.key: a.runs for a in arms}
        n_params = {a.key: a.n_params for a in arms}

        # 计时
        bshape = self.by_mode(smoke=(4, 16, 64), quick=(32, 128, 512), full=(32, 128, 512))
        repeats = self.by_mode(smoke=3, quick=20, full=60)
        RMSNorm = self.component("RMSNorm")
        mods = {"layernorm": nn.LayerNorm(bshape[-1]), "rmsnorm": RMSNorm(bshape[-1])}
        if hasattr(nn, "RMSNorm"):
            mods["torch_rmsnorm"] = nn.RMSNorm(bshape[-1], eps=1e-5)
        mods = {k: m.to(self.device) for k, m in mods.items()}
        bench = time_fwd_bwd(mods, bshape, repeats=repeats, warmup=self.by_mode(smoke=1, quick=5, full=10),
                             device=self.device)
        bench = {**bench, "shape": list(bshape), "repeats": repeats, "threads": torch.get_num_threads()}

        self._plot(results, names, seeds)

        rows = []
        for v in VARIANTS:
            divs = [r["diverged_at"] for r in results[v] if r["diverged_at"] is not None]
            rows.append([names[v][0], n_params[v], fmt_mean_std(final_losses(results[v])),
                         "、".join(map(str, divs)) if divs else "无",
                         f"{statistics.median(r['tokens_per_sec'] for r in results[v]):,.0f}"])
        self.print_table(["变体", "参数量", f"最终验证 loss（{len(seeds)} 个种子）", "发散步数", "tokens/s（中位数）"], rows)
        brow = [["nn.LayerNorm", f"{bench['layernorm']['median_ms']:.3f}", "1.00"],
                [names["rmsnorm"][0], f"{bench['rmsnorm']['median_ms']:.3f}",
                 f"{bench['rmsnorm']['median_ms'] / bench['layernorm']['median_ms']:.2f}"]]
        if "torch_rmsnorm" in bench:
            brow.append(["torch.nn.RMSNorm", f"{bench['torch_rmsnorm']['median_ms']:.3f}",
                         f"{bench['torch_rmsnorm']['median_ms'] / bench['layernorm']['median_ms']:.2f}"])
        self.print_table(["归一化层", "前向+反向 中位数（ms）", "相对 LayerNorm"], brow,
                         title=f"计时：输入 {list(bshape)}，{repeats} 次，设备 {self.device}，{bench['threads']} 个线程")

        text, verdict = write_conclusion(results, bench, names, len(seeds), steps, lr, self.unigram)
        self.conclude(text)
        return {"runs": results, "benchmark": bench, "n_params": n_params, "verdict": verdict,
                "unigram_baseline_val_loss": self.unigram,
                "final_val_loss": {v: summarize(final_losses(results[v])) for v in VARIANTS}}

    def _plot(self, results, names, seeds):
        curves, diverged = {}, {}
        for v in VARIANTS:
            runs = results[v]
            steps, mean, std = mean_std_curve(runs)
            key = names[v]
            curves[key] = (steps, mean, std) if len(runs) > 1 else (steps, mean)
            divs = [r["diverged_at"] for r in runs if r["diverged_at"] is not None]
            if divs:
                diverged[key] = min(divs)
        fig, axes = new_figure(1, 2, width=6.4, height=4.4)
        plot_loss_curves(curves, ax=axes[0, 0], diverged=diverged,
                         title=(f"验证集 loss（{len(seeds)} 个种子" + ("，均值 ± 标准差）" if len(seeds) > 1 else "）"),
                                f"Validation loss ({len(seeds)} seed(s)" + (", mean ± std)" if len(seeds) > 1 else ")")),
                         ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"),
                         references={("只按字符频率猜", "unigram baseline"): self.unigram})
        train_curves = {}
        for v in VARIANTS:
            r = results[v][0]
            train_curves[names[v]] = (r["train_steps"], moving_average(r["train_losses"], 10))
        plot_loss_curves(train_curves, ax=axes[0, 1], diverged=diverged,
                         title=(f"训练 loss（种子 {seeds[0]}，10 步滑动平均）", f"Training loss (seed {seeds[0]}, 10-step moving average)"),
                         ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"),
                         references={("只按字符频率猜", "unigram baseline"): self.unigram})
        self.save_figure(fig, "val_loss")


if __name__ == "__main__":
    sys.exit(NormComparison.main())
