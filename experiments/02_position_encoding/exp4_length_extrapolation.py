"""实验 4：把训练好的 RoPE 模型用在更长的序列上——直接外推、位置插值、NTK-aware、YaRN（零样本，不再训练）。

先用**你的** RoPE 在长度 L 上训练一个小型字符级语言模型，然后在 2L、4L、8L 上评估，每个长度只换 RoPE 的
cos/sin 表（模型权重完全不动，做法是直接替换模型里的 freqs_cos / freqs_sin 缓冲区）：
- 直接外推：precompute_freqs_cis(end=T) 原样用，位置 ≥ L 的角度模型从没见过；
- 位置插值 PI（Chen 等 2023）：所有频率除以 s = T/L，把 T 个位置压回训练时见过的角度范围
  （这张表由脚本按公式算：你的表里读回 θ_i，再算 cos(m·θ_i/s)——PI 不在 minimind 的 API 里）；
- NTK-aware（Peng 等 2023 引用的做法）：rope_base 换成 b·s^(D/(D−2))，高频几乎不变、最低频正好被压缩 s 倍；
- YaRN（minimind 的公式，你的 rope_scaling 分支）：original_max_position_embeddings=L、factor=s，
  高频不动、低频除以 s、中间线性过渡；另有两个版本：
  · YaRN + 温度：attention_factor = 0.1·ln(s) + 1（Peng 等 2023 的注意力温度）；
  · YaRN 固定 factor=8：像 minimind 的配置那样一次设定（factor 不随评估长度变）。
报告整个窗口的平均 loss、只看 ≥ L 的位置的 loss，画一张“loss vs 评估长度”的图（外加 8L 窗口里 loss 随位置的变化）。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import contextlib  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402

from kata.experiment import Experiment, fmt_mean_std, summarize  # noqa: E402
from kata.plots import label, new_figure, position_curve  # noqa: E402

MULTS = (1, 2, 4, 8)
METHODS = ("extrapolate", "pi", "ntk", "yarn", "yarn_temp", "yarn_fixed")
NAMES = {
    "extrapolate": ("直接外推", "plain extrapolation"),
    "pi": ("位置插值 PI", "position interpolation"),
    "ntk": ("NTK-aware（改 base）", "NTK-aware"),
    "yarn": ("YaRN（factor=s）", "YaRN (factor=s)"),
    "yarn_temp": ("YaRN + 温度", "YaRN + temperature"),
    "yarn_fixed": ("YaRN（固定 factor=8）", "YaRN (fixed factor 8)"),
}
ROPE_BASE = 1e4
TIE = 0.02


@contextlib.contextmanager
def rope_tables(model, cos, sin):
    """临时把模型的 RoPE 表换成 (cos, sin)（行数 = 评估长度，tinylm 就不会自己重算），用完换回去。"""
    old = model.freqs_cos, model.freqs_sin
    device = old[0].device
    model.freqs_cos, model.freqs_sin = cos.float().to(device), sin.float().to(device)
    try:
        yield
    finally:
        model.freqs_cos, model.freqs_sin = old


def make_tables(method: str, precompute, hd: int, T: int, L: int, max_mult: int):
    """评估长度 T 时各方法的 (cos, sin)。除 PI 外全部调用你的 precompute_freqs_cis。"""
    s = T / L
    if method == "extrapolate" or T <= L:
        return precompute(hd, end=T, rope_base=ROPE_BASE)
    if method == "pi":
        cos1, sin1 = precompute(hd, end=2, rope_base=ROPE_BASE)
        h = hd // 2
        theta = torch.atan2(sin1[1, :h].double(), cos1[1, :h].double())   # 从你的表里读回 θ_i
        ang = torch.arange(T, dtype=torch.float64)[:, None] * (theta / s)[None, :]
        return torch.cat([ang.cos(), ang.cos()], -1).float(), torch.cat([ang.sin(), ang.sin()], -1).float()
    if method == "ntk":
        return precompute(hd, end=T, rope_base=ROPE_BASE * s ** (hd / (hd - 2)))
    factor = float(max_mult) if method == "yarn_fixed" else s
    attn = 0.1 * math.log(s) + 1.0 if method == "yarn_temp" else 1.0
    scaling = {"original_max_position_embeddings": L, "factor": factor, "beta_fast": 32, "beta_slow": 1,
               "attention_factor": attn, "type": "yarn"}
    return precompute(hd, end=T, rope_base=ROPE_BASE, rope_scaling=scaling)


def _mean(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else float("nan")


def write_conclusion(window: dict, beyond: dict, L: int, n_seeds: int, n_diverged: int) -> tuple:
    """window[method][mult] = 每个种子的整窗平均 loss（mult=1 时各方法相同）。"""
    verdict, parts = {}, []
    if n_diverged:
        parts.append(f"有 {n_diverged}/{n_seeds} 个种子的训练发散了，下面只用没发散的种子。")
    base = _mean(window["extrapolate"][1])
    if not math.isfinite(base):
        return "\n".join(parts + ["所有种子都发散了，没有可比较的数字。"]), verdict
    top = MULTS[-1]
    plain = {m: _mean(window["extrapolate"][m]) - base for m in MULTS[1:]}
    verdict["plain_delta"] = plain
    if plain[top] > TIE:
        parts.append(f"直接外推：整个窗口的平均 loss 从 L={L} 的 {base:.3f} 升到 {top}L 的 {base + plain[top]:.3f}"
                     f"（{plain[top]:+.3f}；只看 ≥ L 的位置：{_mean(beyond['extrapolate'][top]) - base:+.3f}）"
                     "——模型没见过的转角让它变差了。Chen 等 2023 在 LLaMA 上看到的更极端：直接外推时困惑度超过 10^3。")
    else:
        parts.append(f"直接外推在 {top}L 时只变化了 {plain[top]:+.3f}，这次几乎没有变差——与 Chen 等 2023 的观察（直接外推会崩）不一致，"
                     "可能是这个小模型主要依赖最近的几十个字符。")
    best = {}
    for m in MULTS[1:]:
        scores = {k: _mean(window[k][m]) for k in METHODS}
        best[m] = min(scores, key=scores.get)
    verdict["best_method"] = {f"{m}L": best[m] for m in MULTS[1:]}
    def best_text(m):
        if best[m] == "extrapolate":
            return f"{m}L={m * L}：直接外推本身（{_mean(window['extrapolate'][m]):.3f}）"
        return (f"{m}L={m * L}：{NAMES[best[m]][0]}（{_mean(window[best[m]][m]):.3f}，"
                f"直接外推 {_mean(window['extrapolate'][m]):.3f}）")
    parts.append("每个长度上整窗 loss 最低的方法：" + "；".join(best_text(m) for m in MULTS[1:]) + "。")
    better = {k: [(_mean(window["extrapolate"][m]) - _mean(window[k][m])) for m in MULTS[1:]] for k in METHODS[1:]}
    verdict["gain_over_plain"] = better
    helped = [k for k in METHODS[1:] if all(g > TIE for g in better[k])]
    helped_top = [k for k in METHODS[1:] if better[k][-1] > TIE]
    hurt = [k for k in METHODS[1:] if all(g < -TIE for g in better[k])]
    if helped:
        parts.append(f"在 2L–{top}L 的每个长度上都比直接外推好（超过 {TIE}）的：" + "、".join(NAMES[k][0] for k in helped)
                     + "——不改任何权重，只换 cos/sin 表，就能把没见过的位置映射回模型熟悉的转角。")
    else:
        parts.append(f"没有一种方法在每个长度上都比直接外推好 {TIE} 以上。")
    if helped_top and set(helped_top) != set(helped):
        parts.append(f"只看最长的 {top}L：比直接外推好 {TIE} 以上的有 " + "、".join(
            f"{NAMES[k][0]}（{better[k][-1]:+.3f}）" for k in helped_top) + "——越长，换表的好处越明显。")
    if hurt:
        parts.append("反而在每个长度上都更差的：" + "、".join(NAMES[k][0] for k in hurt) + "。")
    g_pi, g_yarn = better["pi"], better["yarn"]
    if all(y > p + TIE for y, p in zip(g_yarn, g_pi)):
        parts.append("YaRN 在每个长度上都比 PI 好：PI 把所有频率都压缩了 s 倍，连区分相邻字符的高频也被压扁；"
                     "YaRN 只压低频、保留高频（teaching.md §5.2、§5.4）。")
    elif all(p > y + TIE for y, p in zip(g_yarn, g_pi)):
        parts.append("这次 PI 在每个长度上都比 YaRN 好——与 Peng 等 2023 的结论方向相反；小模型、短训练长度下"
                     "YaRN 的斜坡边界（beta_fast=32 圈）可能不合适：L=64 时最快的一对也只转约 10 圈。")
    else:
        parts.append("PI 与 YaRN 互有胜负（或相差不到 0.02）。")
    gt = [a - b for a, b in zip(better["yarn_temp"], better["yarn"])]
    parts.append("加上注意力温度（attention_factor=0.1·ln s+1）相对 YaRN 的变化：" +
                 "、".join(f"{m}L {d:+.3f}" for m, d in zip(MULTS[1:], gt)) + "（正 = 更好）。")
    gf = [a - b for a, b in zip(better["yarn_fixed"], better["yarn"])]
    text = ("YaRN 固定 factor=8（像 minimind 一次设好）相对“factor 随长度设”的变化：" +
            "、".join(f"{m}L {d:+.3f}" for m, d in zip(MULTS[1:], gf)) + f"（{top}L 时两者是同一张表）")
    if gf[0] < -TIE:
        text += "：短一些的序列上固定的大 factor 更差——它把低频压缩得比需要的更多。minimind 的表按 32768 一次建好，短提示也付这个代价。"
    elif gf[0] > TIE:
        text += "：短一些的序列上固定的大 factor 反而更好。"
    else:
        text += "：短序列上两者相差不到 0.02。"
    parts.append(text)
    parts.append("这些都是零样本（没有在长序列上再训练）；PI、YaRN 论文里的做法还包括用少量长序列数据微调，这里没有做。")
    if n_seeds == 1:
        parts.append("快速模式只有 1 个种子；去掉 --quick 会跑 3 个种子（均值 ± 标准差）。")
    return "\n".join(parts), verdict


class LengthExtrapolation(Experiment):
    name = "exp4_length_extrapolation"
    module = "02_position_encoding"
    can_use_synthetic = False  # 拿不到 TinyShakespeare 时不改用合成语料
    synthetic_reason = "位置插值 / NTK / YaRN 的比较依赖真实文本在长距离上的统计；合成语料句子短、模式重复，结论会失真"
    title = "实验 4：长度外推——直接外推 vs 位置插值 vs NTK-aware vs YaRN（零样本）"
    description = (
        "用你的 RoPE 在长度 L 上训练小型字符级语言模型，再在 2L、4L、8L 上评估：只替换 cos/sin 表，\n"
        "比较直接外推、位置插值、NTK-aware 和 minimind 的 YaRN（你的 rope_scaling 分支）。对应 teaching.md §5。"
    )
    requires = ("precompute_freqs_cis", "rotate_half", "apply_rotary_pos_emb")

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 200，完整 300）")
        parser.add_argument("--train-len", type=int, default=64, help="训练长度 L（默认 64）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3）")

    def run(self):
        from kata.tinylm import TinyLMConfig, build_tiny_lm, per_position_loss, train_lm

        precompute = self.component("precompute_freqs_cis")
        corpus = self.load_corpus()
        seeds = self.seeds(full=3, quick=1, smoke=1)
        L = self.by_mode(smoke=16, quick=self.args.train_len, full=self.args.train_len)
        steps = self.args.steps or self.by_mode(smoke=3, quick=200, full=300)
        dim, layers, heads = self.by_mode(smoke=(32, 1, 2), quick=(64, 4, 4), full=(64, 4, 4))
        batch = self.by_mode(smoke=4, quick=16, full=16)
        n_eval = self.by_mode(smoke=2, quick=32, full=64)
        hd = dim // heads
        lengths = [m * L for m in MULTS]
        self.config(train_len=L, eval_lengths=lengths, steps=steps, lr=self.args.lr, batch_size=batch, dim=dim,
                    n_layers=layers, n_heads=heads, head_dim=hd, rope_base=ROPE_BASE, eval_sequences=n_eval,
                    methods=METHODS, yarn={"beta_fast": 32, "beta_slow": 1, "original_max_position_embeddings": L},
                    ntk_base=f"{ROPE_BASE:g}·s^({hd}/{hd - 2})")
        window = {k: {m: [] for m in MULTS} for k in METHODS}
        beyond = {k: {m: [] for m in MULTS} for k in METHODS}
        curves = {k: [] for k in METHODS}
        n_div = 0
        for s in seeds:
            cfg = TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, dim=dim, n_layers=layers, n_heads=heads,
                               max_seq_len=L, pos="rope", rope_base=ROPE_BASE)
            model, prov = build_tiny_lm(cfg, impl=self.impl, require=("rope",), seed=s)
            model.to(self.device)
            self.record_provenance({"tinylm": prov})
            res = train_lm(model, corpus, steps=steps, batch_size=batch, seq_len=L, lr=self.args.lr,
                           eval_iters=self.by_mode(smoke=1, quick=4, full=8), seed=s, device=self.device,
                           progress=self.progress, desc=f"RoPE seed {s}")
            if res.diverged:
                n_div += 1
                print(f"  seed {s}: 训练发散于第 {res.diverged_at} 步，跳过评估")
                continue
            print(f"  seed {s}: 训练完（val loss {res.final_val_loss:.3f}，{res.wall_time_s:.0f} 秒），开始在长序列上评估")
            for m in MULTS:
                T = m * L
                for k in METHODS:
                    if m == 1 and k != "extrapolate":  # 长度 L 上所有方法都是原表，不重复评估
                        continue
                    cos, sin = make_tables(k, precompute, hd, T, L, MULTS[-1])
                    with rope_tables(model, cos, sin):
                        curve = per_position_loss(model, corpus, seq_len=T, n_seqs=n_eval,
                                                  batch_size=max(1, min(16, 4096 // T)), seed=2000 + m)
                    w = sum(curve) / T
                    b = sum(curve[L:]) / (T - L) if T > L else None
                    window[k][m].append(w)
                    beyond[k][m].append(b)
                    if m == MULTS[-1]:
                        curves[k].append(curve)
            for k in METHODS[1:]:  # 长度 L 上各方法相同
                window[k][1].append(window["extrapolate"][1][-1])
            print("   " + "；".join(f"{NAMES[k][0]} " + "/".join(f"{window[k][m][-1]:.3f}" for m in MULTS[1:])
                                    for k in METHODS) + f"（{'/'.join(map(str, lengths[1:]))}）")

        rows = [[NAMES[k][0]] + [fmt_mean_std(window[k][m]) for m in MULTS] for k in METHODS]
        self.print_table(["RoPE 表"] + [f"L={L}" if m == 1 else f"{m}L={m * L}" for m in MULTS], rows,
                         title=f"整个评估窗口的平均验证 loss（nats/字符，{len(seeds) - n_div} 个种子）")
        rows_b = [[NAMES[k][0]] + [fmt_mean_std(beyond[k][m]) for m in MULTS[1:]] for k in METHODS]
        self.print_table(["RoPE 表"] + [f"{m}L 窗口里位置 ≥ {L}" for m in MULTS[1:]], rows_b,
                         title="只看训练时没见过的位置（≥ L）")
        self._plot(window, curves, L, len(seeds) - n_div)
        text, verdict = write_conclusion(window, beyond, L, len(seeds), n_div)
        self.conclude(text)
        return {"train_len": L, "eval_lengths": lengths, "window_loss": window, "beyond_L_loss": beyond,
                "per_position_loss_8L": curves, "verdict": verdict,
                "summary": {k: {str(m * L): summarize(window[k][m]) for m in MULTS} for k in METHODS}}

    def _plot(self, window, curves, L, n_seeds):
        fig, axes = new_figure(1, 2, width=6.4, height=4.4)
        ax = axes[0, 0]
        styles = {"extrapolate": dict(color="black", linewidth=2.2), "pi": {}, "ntk": {}, "yarn": {},
                  "yarn_temp": dict(linestyle="--"), "yarn_fixed": dict(linestyle=":")}
        for k in METHODS:
            ys = [_mean(window[k][m]) for m in MULTS]
            ax.plot([m * L for m in MULTS], ys, marker="o", label=label(NAMES[k]), **styles[k])
        ax.axvline(L, color="gray", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks([m * L for m in MULTS], [str(m * L) for m in MULTS])
        ax.set_xlabel(label(("评估长度（虚线 = 训练长度 L）", "evaluation length (dotted: training length L)")))
        ax.set_ylabel(label(("整个窗口的平均 loss", "mean loss over the window")))
        ax.set_title(label((f"只换 cos/sin 表，不再训练（{n_seeds} 个种子的均值）", f"Zero-shot, mean of {n_seeds} seed(s)")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        ax = axes[0, 1]
        T = MULTS[-1] * L
        for k in METHODS:
            if not curves[k]:
                continue
            xs, ys = position_curve(curves[k])
            ax.plot(xs, ys, label=label(NAMES[k]), **styles[k])
        ax.axvline(L, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel(label(("位置", "position")))
        ax.set_ylabel(label(("该位置的平均 loss", "loss at this position")))
        ax.set_title(label((f"长 {T} 的窗口里 loss 随位置的变化", f"Loss by position, window {T}")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        self.save_figure(fig, "loss_vs_length")


if __name__ == "__main__":
    sys.exit(LengthExtrapolation.main())
