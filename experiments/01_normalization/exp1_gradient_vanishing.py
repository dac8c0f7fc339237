"""实验 1：为什么需要归一化？——深层网络里激活和梯度的乘法累积，以及你的 RMSNorm 如何打断它。

一个很深的 MLP（每层 Linear → ReLU，可选再接一个你写的 RMSNorm），两种初始化：
- vanish（消失）：PyTorch 的 nn.Linear 默认初始化（权重 std = 1/√(3·fan_in)，带 bias），
  每层把信号缩小约 1/√6 倍；
- explode（爆炸）：权重 ~ N(0, (2/√fan_in)²)、bias 为 0，每层把信号放大约 √2 倍
  （是 He 初始化 √(2/fan_in) 的 √2 倍）。
前向记录每层输出的标准差，反向（loss = 输出与随机目标的均方误差）记录每层输出收到的梯度
‖∂L/∂h_l‖ 和每层权重的梯度 ‖∂L/∂W_l‖。结论由“第一层 / 最后一层”梯度之比算出。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from kata.experiment import Experiment, fmt_mean_std, orders_of_magnitude, summarize  # noqa: E402
from kata.plots import new_figure, plot_gradient_flow  # noqa: E402

SCENARIOS = {
    "vanish": ("默认初始化（信号逐层缩小）", "default init (shrinks)"),
    "explode": ("偏大的初始化（信号逐层放大）", "large init (grows)"),
}
VARIANTS = ("none", "rmsnorm")


class DeepMLP(nn.Module):
    """depth 层 Linear → ReLU（→ norm）。保留每层输出，便于读出激活与梯度。"""

    def __init__(self, depth: int, width: int, init: str, norm_cls=None):
        super().__init__()
        self.linears = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.norms = nn.ModuleList(norm_cls(width) for _ in range(depth)) if norm_cls else None
        if init == "explode":
            for lin in self.linears:
                nn.init.normal_(lin.weight, 0.0, 2.0 / math.sqrt(width))
                nn.init.zeros_(lin.bias)
        elif init != "vanish":  # vanish = 保持 nn.Linear 的默认初始化
            raise ValueError(init)

    def forward(self, x):
        outs = []
        h = x
        for i, lin in enumerate(self.linears):
            h = torch.relu(lin(h))
            if self.norms is not None:
                h = self.norms[i](h)
            h.retain_grad()
            outs.append(h)
        return h, outs


def measure(depth, width, batch, init, norm_cls, seed, device):
    """返回每层的激活 std、‖∂L/∂h_l‖、‖∂L/∂W_l‖（第 0 个是最靠近输入的层）。"""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # 权重初始化用全局随机数
    model = DeepMLP(depth, width, init, norm_cls).to(device)
    x = torch.randn(batch, width, generator=g).to(device)
    target = torch.randn(batch, width, generator=g).to(device)
    out, outs = model(x)
    loss = (out - target).pow(2).mean()
    loss.backward()
    # 范数在 float64 里算：1e-25 这样的梯度在 float32 里平方会下溢成 0，范数就变成 0 了
    act_std = [h.detach().double().std().item() for h in outs]
    grad_h = [h.grad.double().norm().item() if h.grad is not None else float("nan") for h in outs]
    grad_w = [lin.weight.grad.double().norm().item() for lin in model.linears]
    return {"act_std": act_std, "grad_h": grad_h, "grad_w": grad_w, "loss": loss.item()}


def ratio(values):
    first, last = values[0], values[-1]
    if not (math.isfinite(first) and math.isfinite(last)) or last == 0:
        return float("nan") if first == 0 or not math.isfinite(first) else float("inf")
    return first / last


def log10_ratio(values):
    r = ratio(values)
    if r == 0:
        return float("-inf")
    return math.log10(r) if math.isfinite(r) and r > 0 else float("nan")


def _fmt_pow(x):
    if x is None or not math.isfinite(x):
        return "非有限值"
    return f"{x:.1e}"


def scenario_sentence(scn: str, no: dict, rms: dict, rms_label: str) -> tuple[str, bool]:
    """一个初始化场景的结论句（措辞由数字决定）与“是否符合预期”。"""
    o_no = abs(no["log10_ratio_mean"]) if math.isfinite(no["log10_ratio_mean"]) else float("inf")
    o_rms = abs(rms["log10_ratio_mean"]) if math.isfinite(rms["log10_ratio_mean"]) else float("inf")
    name = SCENARIOS[scn][0]
    r_no = 10 ** no["log10_ratio_mean"] if math.isfinite(no["log10_ratio_mean"]) else float("nan")
    r_rms = 10 ** rms["log10_ratio_mean"] if math.isfinite(rms["log10_ratio_mean"]) else float("nan")
    if not math.isfinite(o_no):
        trend = "梯度在反向传播中出现了 0 或非有限值（完全消失/溢出）"
    elif o_no < 1:
        trend = f"第一层与最后一层收到的梯度只差 {o_no:.1f} 个数量级（本设置下没有出现明显的梯度消失或爆炸）"
    elif r_no < 1:
        trend = f"第一层收到的梯度只有最后一层的 {_fmt_pow(r_no)}（差 {o_no:.1f} 个数量级）：梯度消失"
    else:
        trend = f"第一层收到的梯度是最后一层的 {_fmt_pow(r_no)} 倍（差 {o_no:.1f} 个数量级）：梯度爆炸"
    text = f"【{name}】不加归一化时，{trend}；"
    if math.isfinite(o_rms):
        text += f"每层后接 {rms_label} 后，这个比值是 {r_rms:.3g}（差 {o_rms:.1f} 个数量级）"
    else:
        text += f"每层后接 {rms_label} 后，梯度里出现了 0 或非有限值"
    ok = o_no >= 2 and o_rms <= 1
    if ok:
        text += "，各层梯度回到了同一个量级——正是 teaching.md §1.4 说的“打断乘法累积”。"
    elif math.isfinite(o_rms) and o_rms < o_no - 1:
        text += "，差距明显缩小了，但没有缩到 1 个数量级以内。"
    elif o_no < 2:
        text += "。因为不加归一化时差距本来就不大，这个场景说明不了归一化的作用。"
    else:
        text += ("。与预期不符：加了归一化以后差距没有明显缩小。如果用的是你的实现，"
                 "先确认 pytest exercises/01_normalization 全部通过，再用 --impl solutions 对照。")
    return text, ok


class GradientVanishing(Experiment):
    name = "exp1_gradient_vanishing"
    module = "01_normalization"
    title = "实验 1：为什么需要归一化？（深层网络的激活与梯度）"
    description = (
        "搭一个很深的 MLP（每层 Linear → ReLU），分别不加 / 每层后加你写的 RMSNorm，\n"
        "在“信号逐层缩小”和“信号逐层放大”两种初始化下，画出每层激活的标准差（前向）和\n"
        "每层收到的梯度范数（反向）。对应 teaching.md §1。"
    )
    requires = ("RMSNorm",)

    def add_arguments(self, parser):
        parser.add_argument("--depth", type=int, default=None, help="主实验的层数（默认：快速 / 完整模式都是 32）")
        parser.add_argument("--width", type=int, default=None, help="每层宽度（默认：快速 256，完整 512）")

    def run(self):
        RMSNorm = self.component("RMSNorm")
        rms_label = "你的 RMSNorm" if self.impl == "exercises" else (
            "参考 RMSNorm" if self.impl == "solutions" else f"RMSNorm（{self.impl}）")
        depth = self.args.depth or self.by_mode(smoke=16, quick=32, full=32)
        width = self.args.width or self.by_mode(smoke=32, quick=256, full=512)
        batch = self.by_mode(smoke=16, quick=256, full=512)
        sweep = self.by_mode(smoke=[2, 4], quick=[4, 8, 16, 32], full=[4, 8, 16, 32, 48, 64])
        seeds = self.seeds(full=3, quick=1, smoke=1)
        self.config(depth=depth, width=width, batch=batch, depth_sweep=sweep, activation="relu",
                    norm_position="Linear → ReLU → RMSNorm", loss="MSE(output, N(0,1) target)",
                    inits={"vanish": "nn.Linear default (kaiming_uniform a=√5, std=1/√(3·fan_in), bias U)",
                           "explode": "weight N(0, (2/√fan_in)²), bias 0"})
        norm_of = {"none": None, "rmsnorm": RMSNorm}
        self.dataset = {"name": "gaussian", "source": "generated", "sha256": None, "fell_back_to_synthetic": False,
                        "description": f"输入与回归目标都是 N(0,1) 随机数（[{batch}, {width}]，由种子决定），不需要语料"}

        runs = {scn: {v: [measure(depth, width, batch, scn, norm_of[v], s, self.device) for s in seeds]
                      for v in VARIANTS} for scn in SCENARIOS}

        # 每层数值：多个种子时取几何平均（它们跨数量级）
        def per_layer(scn, v, key):
            arr = torch.tensor([r[key] for r in runs[scn][v]], dtype=torch.float64)
            return torch.exp(torch.log(arr.clamp_min(1e-300)).mean(0)).tolist()

        summary = {}
        for scn in SCENARIOS:
            summary[scn] = {}
            for v in VARIANTS:
                lr_h = [log10_ratio(r["grad_h"]) for r in runs[scn][v]]
                lr_w = [log10_ratio(r["grad_w"]) for r in runs[scn][v]]
                stds = [r["act_std"] for r in runs[scn][v]]
                act_span = [orders_of_magnitude(max(s) / min(s)) if min(s) > 0 else float("inf") for s in stds]
                summary[scn][v] = {
                    "log10_ratio_mean": summarize(lr_h)["mean"],
                    "log10_ratio": summarize(lr_h),
                    "log10_ratio_weight_grad": summarize(lr_w),
                    "act_std_first": per_layer(scn, v, "act_std")[0],
                    "act_std_last": per_layer(scn, v, "act_std")[-1],
                    "act_std_span_orders": summarize(act_span),
                    "median_weight_grad": float(torch.tensor(per_layer(scn, v, "grad_w")).median()),
                    "per_layer": {k: per_layer(scn, v, k) for k in ("act_std", "grad_h", "grad_w")},
                }

        # 深度扫描：梯度比值的数量级随层数怎样变化（乘法累积 → 近似线性）
        sweep_res = {scn: {v: [log10_ratio(measure(d, width, batch, scn, norm_of[v], seeds[0], self.device)["grad_h"])
                               for d in sweep] for v in VARIANTS} for scn in SCENARIOS}

        self._plots(summary, sweep, sweep_res, depth, rms_label)

        rows = []
        for scn in SCENARIOS:
            for v in VARIANTS:
                s = summary[scn][v]
                rows.append([
                    scn, "无归一化" if v == "none" else rms_label,
                    f"{_fmt_pow(s['act_std_first'])} → {_fmt_pow(s['act_std_last'])}",
                    fmt_mean_std(s["log10_ratio"]["values"], ".2f"),
                    fmt_mean_std(s["log10_ratio_weight_grad"]["values"], ".2f"),
                    _fmt_pow(s["median_weight_grad"]),
                ])
        self.print_table(
            ["初始化", "设置", "激活 std（第 1 层 → 最后一层）", "log10(‖∂L/∂h‖ 第1层/最后层)",
             "log10(‖∂L/∂W‖ 第1层/最后层)", "‖∂L/∂W‖ 中位数"],
            rows, title=f"{depth} 层、宽 {width}、batch {batch}，种子 {seeds}（多个种子时为 均值 ± 标准差）")

        sentences, oks = [], []
        for scn in SCENARIOS:
            text, ok = scenario_sentence(scn, summary[scn]["none"], summary[scn]["rmsnorm"], rms_label)
            sentences.append(text)
            oks.append(ok)
        fwd = []
        for scn in SCENARIOS:
            span_no = summary[scn]["none"]["act_std_span_orders"]["mean"]
            span_rms = summary[scn]["rmsnorm"]["act_std_span_orders"]["mean"]
            fwd.append(f"{SCENARIOS[scn][0]}：不加归一化 {span_no:.1f} 个数量级、加了以后 {span_rms:.1f} 个")
        sentences.append("前向：各层激活标准差的最大值与最小值相差——" + "；".join(fwd) + "。")
        span_v = summary["vanish"]["none"]["act_std_span_orders"]["mean"]
        grad_v = abs(summary["vanish"]["none"]["log10_ratio_mean"])
        if math.isfinite(span_v) and math.isfinite(grad_v) and grad_v > span_v + 2:
            sentences.append(
                f"默认初始化下，前向的激活只缩小了 {span_v:.1f} 个数量级，反向的梯度却差了 {grad_v:.1f} 个：激活降到 bias 的"
                "尺度后，每层的 bias 又注入一点信号，前向有了“地板”；反向没有这样的地板，梯度继续逐层乘以一个小于 1 的因子。"
                "所以只看前向的激活，会低估梯度消失的程度。")
        w_no = summary["explode"]["none"]["median_weight_grad"]
        w_rms = summary["explode"]["rmsnorm"]["median_weight_grad"]
        if math.isfinite(w_no) and math.isfinite(w_rms) and w_rms > 0:
            sentences.append(
                f"另外注意权重梯度 ‖∂L/∂W‖：放大型初始化下，不加归一化时各层权重梯度的中位数是 {_fmt_pow(w_no)}，"
                f"加了以后是 {_fmt_pow(w_rms)}——{'前者大了 ' + format(orders_of_magnitude(w_no / w_rms), '.1f') + ' 个数量级，同一个学习率不可能同时适合两者' if w_no > 10 * w_rms else '两者在同一量级'}。")
        finite = [(d, v) for d, v in zip(sweep, sweep_res["vanish"]["none"]) if math.isfinite(v)]
        if len(finite) >= 2:
            (d_lo, v_lo), (d_hi, v_hi) = finite[0], finite[-1]
            per_layer_orders = (abs(v_hi) - abs(v_lo)) / (d_hi - d_lo)
            grows = abs(v_hi) > 2 * abs(v_lo) and abs(v_hi) - abs(v_lo) > 1
            sentences.append(
                f"深度扫描（默认初始化、无归一化）：{d_lo} 层时比值的 log10 是 {v_lo:.1f}，{d_hi} 层时是 {v_hi:.1f}——"
                + (f"层数越多差距越大，平均每多一层再差 {per_layer_orders:.2f} 个数量级（对数轴上近似一条直线），"
                   "这就是按层相乘的累积。" if grows else "差距没有随层数明显增大。"))
        verdict = ("两种初始化下的结果都与预期（Linear+激活的深层网络梯度按层指数式消失/爆炸，逐层归一化把它拉回同一量级）一致。"
                   if all(oks) else "至少有一个场景与预期不一致，见上面的具体说明。")
        self.conclude("\n".join(sentences + [verdict]))
        return {"depth": depth, "width": width, "summary": summary, "depth_sweep": {"depths": sweep, **sweep_res},
                "as_expected": all(oks)}

    def _plots(self, summary, sweep, sweep_res, depth, rms_label):
        rms_en = {"exercises": "your RMSNorm", "solutions": "reference RMSNorm"}.get(self.impl, "RMSNorm")
        lbl = {"none": ("无归一化", "no norm"), "rmsnorm": (rms_label, rms_en)}
        fig, axes = new_figure(2, 2, width=6.2, height=4.2)
        for i, scn in enumerate(SCENARIOS):
            plot_gradient_flow(
                {lbl[v]: summary[scn][v]["per_layer"]["act_std"] for v in VARIANTS},
                title=(f"前向：每层激活的标准差 · {SCENARIOS[scn][0]}", f"Forward: activation std · {SCENARIOS[scn][1]}"),
                ylabel=("激活 std（对数轴）", "activation std (log)"), ax=axes[i, 0])
            series, styles = {}, {}
            for v in VARIANTS:
                kh = (lbl[v][0] + " ‖∂L/∂h‖", lbl[v][1] + " |dL/dh|")
                kw = (lbl[v][0] + " ‖∂L/∂W‖", lbl[v][1] + " |dL/dW|")
                series[kh] = summary[scn][v]["per_layer"]["grad_h"]
                series[kw] = summary[scn][v]["per_layer"]["grad_w"]
                color = "C0" if v == "none" else "C1"
                styles[kh] = {"color": color}
                styles[kw] = {"color": color, "linestyle": "--", "marker": "x"}
            plot_gradient_flow(
                {k: series[k] for k in series}, styles={k: styles[k] for k in styles},
                title=(f"反向：每层的梯度范数 · {SCENARIOS[scn][0]}", f"Backward: gradient norm · {SCENARIOS[scn][1]}"),
                ax=axes[i, 1])
        fig.suptitle(f"Deep MLP, {depth} layers (Linear → ReLU → [RMSNorm])")
        fig.tight_layout()
        self.save_figure(fig, "layers")

        fig2, ax2 = new_figure(1, 1, width=6.4, height=4.2)
        ax = ax2[0, 0]
        for scn, marker in (("vanish", "o"), ("explode", "s")):
            for v, ls in (("none", "-"), ("rmsnorm", "--")):
                ax.plot(sweep, sweep_res[scn][v], marker=marker, linestyle=ls,
                        label=f"{SCENARIOS[scn][1]}, {lbl[v][1]}")
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel("log10( |dL/dh| first layer / last layer )")
        ax.set_title("Gradient ratio vs depth (0 = balanced)")
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        fig2.tight_layout()
        self.save_figure(fig2, "depth_sweep")


if __name__ == "__main__":
    sys.exit(GradientVanishing.main())
