"""实验用的画图函数（课程 README 里 ``visualization`` 的四个名字）。

    from kata.plots import (plot_attention_heatmap, plot_activation_distribution,
                            plot_gradient_flow, plot_loss_curves)

每个函数都返回 matplotlib 的 ``Figure``（传入 ``ax`` 时画在那个 ax 上，返回它所在的 Figure），
保存用 ``Experiment.save_figure(fig, name)``。只用 matplotlib（Agg 后端，无需显示器），不用 seaborn。

中文字形：matplotlib 自带的字体没有汉字，直接写中文会变成方框。本模块启动时在已安装的字体里找一个
CJK 字体（Noto Sans CJK、思源黑体、文泉驿、PingFang、微软雅黑、黑体……），找到就用它。
图里的文字可以写成 ``(中文, English)`` 二元组：有 CJK 字体时显示中文，没有就显示英文；
普通字符串里的汉字在没有 CJK 字体时会被去掉（绝不画出方框）。实验脚本里统一用二元组或英文。
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Mapping, Optional, Sequence, Union

import matplotlib

matplotlib.use("Agg")

import matplotlib.font_manager as font_manager  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "Label", "cjk_font", "has_cjk_font", "label", "new_figure", "position_curve",
    "plot_attention_heatmap", "plot_activation_distribution", "plot_gradient_flow", "plot_loss_curves",
]

Label = Union[str, tuple[str, str], None]

# 按偏好排序：名字里含这些片段的字体被认为能显示中文
_CJK_FONT_HINTS = (
    "Noto Sans CJK", "Noto Serif CJK", "Source Han Sans", "Source Han Serif", "WenQuanYi",
    "PingFang", "Hiragino Sans GB", "Heiti", "STHeiti", "Songti", "Microsoft YaHei", "SimHei",
    "SimSun", "Sarasa", "AR PL", "Droid Sans Fallback", "Noto Sans SC", "Noto Sans TC",
)
_CJK_RE = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef\u3000-\u303f]")


@lru_cache(maxsize=1)
def cjk_font() -> Optional[str]:
    """已安装的、能显示中文的字体族名；没有时返回 None。找到时顺便设成默认无衬线字体。"""
    names = {f.name for f in font_manager.fontManager.ttflist}
    for hint in _CJK_FONT_HINTS:
        for name in sorted(names):
            if hint.lower() in name.lower():
                matplotlib.rcParams["font.sans-serif"] = [name] + [
                    n for n in matplotlib.rcParams["font.sans-serif"] if n != name
                ]
                matplotlib.rcParams["font.family"] = "sans-serif"
                matplotlib.rcParams["axes.unicode_minus"] = False  # CJK 字体常常缺 “−” 字形
                return name
    return None


def has_cjk_font() -> bool:
    return cjk_font() is not None


def label(text: Label) -> str:
    """把 ``(中文, English)`` 或字符串变成可以安全画出来的文字（见模块说明）。"""
    if text is None:
        return ""
    if isinstance(text, tuple):
        zh, en = text
        return zh if has_cjk_font() else en
    if has_cjk_font() or not _CJK_RE.search(text):
        return text
    stripped = _CJK_RE.sub(" ", text)
    return re.sub(r"\s{2,}", " ", stripped).strip(" ,.;:()（）")


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 6.4, height: float = 4.2, **kw):
    """``plt.subplots`` 的薄包装：每个子图 width×height 英寸，返回 (fig, axes)。"""
    cjk_font()
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, **kw)
    return fig, axes


def position_curve(curves, bins: int = 64) -> tuple[list, list]:
    """几条逐位置的 loss 曲线（等长）→ 先按位置取平均，再每 k 个位置并成一格（约 bins 格），曲线才看得清。

    返回 (xs, ys)：xs 是每一格的中心位置。
    """
    curves = [list(c) for c in curves]
    n = len(curves[0])
    mean = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
    k = max(1, n // bins)
    xs = [i * k + (k - 1) / 2 for i in range(n // k)]
    ys = [sum(mean[i * k:(i + 1) * k]) / k for i in range(n // k)]
    return xs, ys


def _as_array(x) -> np.ndarray:
    """torch 张量 / numpy 数组 / 列表 → float64 numpy 数组（不依赖 torch 也能用）。"""
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    return np.asarray(x, dtype=np.float64)


def _axes(ax, **kw):
    if ax is not None:
        cjk_font()
        return ax.figure, ax
    fig, axes = new_figure(**kw)
    return fig, axes[0, 0]


def _finish(fig, ax, title: Label, xlabel: Label, ylabel: Label, legend: bool = True):
    if title is not None:
        ax.set_title(label(title))
    if xlabel is not None:
        ax.set_xlabel(label(xlabel))
    if ylabel is not None:
        ax.set_ylabel(label(ylabel))
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# 注意力热力图
# ---------------------------------------------------------------------------------------------

def plot_attention_heatmap(
    weights,
    tokens: Optional[Sequence[str]] = None,
    title: Label = ("注意力权重", "Attention weights"),
    ax=None,
    *,
    key_tokens: Optional[Sequence[str]] = None,
    cmap: str = "viridis",
    colorbar: bool = True,
    max_heads: int = 8,
):
    """画注意力权重矩阵：``weights`` 为 ``[S_q, S_k]``（行 = query，列 = key）。

    也接受 ``[H, S_q, S_k]``（每个头一个子图，最多 ``max_heads`` 个；此时不能传 ``ax``）。
    ``tokens`` 标在两个轴上（``key_tokens`` 可单独给 key 轴）。
    """
    w = _as_array(weights)
    if w.ndim == 4 and w.shape[0] == 1:
        w = w[0]
    if w.ndim == 3:
        if ax is not None:
            raise ValueError("多头权重 [H, S_q, S_k] 会画成多个子图，不能同时传入 ax")
        n = min(w.shape[0], max_heads)
        ncols = min(n, 4)
        nrows = math.ceil(n / ncols)
        fig, axes = new_figure(nrows, ncols, width=3.6, height=3.4)
        for h in range(nrows * ncols):
            a = axes[h // ncols, h % ncols]
            if h < n:
                _heatmap(a, w[h], tokens, key_tokens, cmap, colorbar=False)
                a.set_title(f"head {h}", fontsize="small")
            else:
                a.axis("off")
        if title is not None:
            fig.suptitle(label(title))
        fig.tight_layout()
        return fig
    if w.ndim != 2:
        raise ValueError(f"注意力权重应为 [S_q, S_k] 或 [H, S_q, S_k]，实际形状 {w.shape}")
    fig, ax = _axes(ax, width=5.2, height=4.6)
    im = _heatmap(ax, w, tokens, key_tokens, cmap, colorbar=False)
    if colorbar:
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _finish(fig, ax, title, ("key（被看的位置）", "key position"),
                   ("query（发出查询的位置）", "query position"), legend=False)


def _heatmap(ax, w, tokens, key_tokens, cmap, colorbar):
    im = ax.imshow(w, cmap=cmap, aspect="auto", interpolation="nearest")
    sq, sk = w.shape
    if tokens is not None and len(tokens) == sq and sq <= 64:
        ax.set_yticks(range(sq), [label(str(t)) for t in tokens], fontsize="x-small")
    kt = key_tokens if key_tokens is not None else tokens
    if kt is not None and len(kt) == sk and sk <= 64:
        ax.set_xticks(range(sk), [label(str(t)) for t in kt], fontsize="x-small", rotation=90)
    if colorbar:
        ax.figure.colorbar(im, ax=ax)
    return im


# ---------------------------------------------------------------------------------------------
# 激活值分布
# ---------------------------------------------------------------------------------------------

def plot_activation_distribution(
    acts: Mapping[str, object],
    title: Label = ("激活值分布", "Activation distribution"),
    ax=None,
    *,
    bins: int = 80,
    log_y: bool = False,
    xlabel: Label = ("激活值", "activation value"),
    clip_quantile: Optional[float] = 0.999,
):
    """把若干组激活值（``{名字: 张量或数组}``）的直方图叠画在一起，图例里带上均值和标准差。

    ``clip_quantile``：横轴范围取所有数据绝对值的这个分位数，免得极少数离群点把图压扁（None = 不裁）。
    非有限值（NaN/inf）不参与直方图，个数写进图例。
    """
    fig, ax = _axes(ax)
    arrays = {name: _as_array(v).ravel() for name, v in acts.items()}
    finite_all = [a[np.isfinite(a)] for a in arrays.values()]
    finite_all = np.concatenate(finite_all) if finite_all else np.zeros(0)
    lim = None
    if finite_all.size and clip_quantile is not None:
        lim = float(np.quantile(np.abs(finite_all), clip_quantile)) or None
    for name, a in arrays.items():
        fin = a[np.isfinite(a)]
        bad = a.size - fin.size
        text = f"{label(name)} (mean {fin.mean():.3g}, std {fin.std():.3g})" if fin.size else f"{label(name)} (no finite values)"
        if bad:
            text += f", {bad} non-finite"
        if fin.size:
            rng = (-lim, lim) if lim else None
            ax.hist(fin, bins=bins, range=rng, histtype="step", linewidth=1.5, density=True, label=text)
        else:
            ax.plot([], [], label=text)
    if log_y:
        ax.set_yscale("log")
    return _finish(fig, ax, title, xlabel, ("密度", "density"))


# ---------------------------------------------------------------------------------------------
# 逐层梯度（或任何“每层一个数”的量）
# ---------------------------------------------------------------------------------------------

def plot_gradient_flow(
    per_layer: Mapping[str, Sequence[float]],
    title: Label = ("逐层梯度范数", "Per-layer gradient norm"),
    ax=None,
    *,
    log: bool = True,
    xlabel: Label = ("层（0 = 最靠近输入）", "layer (0 = nearest the input)"),
    ylabel: Label = ("梯度范数", "gradient norm"),
    styles: Optional[Mapping[str, dict]] = None,
):
    """每条曲线是一组“每层一个数”（梯度范数、激活标准差……），横轴是层号。

    ``log=True``（默认）纵轴取对数——乘法累积的漂移在对数轴上是一条斜线。对数轴上画不出的点
    （≤0、NaN、inf）会被跳过，并在图例里注明个数。``styles`` 可按名字给 ``ax.plot`` 额外参数。
    """
    fig, ax = _axes(ax)
    styles = styles or {}
    for name, values in per_layer.items():
        v = _as_array(values)
        x = np.arange(len(v))
        ok = np.isfinite(v) & ((v > 0) if log else True)
        text = label(name)
        if (~ok).any():
            text += f" ({int((~ok).sum())} point(s) not plottable)"
        y = np.where(ok, v, np.nan)
        kw = {"marker": "o", "markersize": 3, "linewidth": 1.5}
        kw.update(styles.get(name, {}))
        ax.plot(x, y, label=text, **kw)
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _finish(fig, ax, title, xlabel, ylabel)


# ---------------------------------------------------------------------------------------------
# loss 曲线
# ---------------------------------------------------------------------------------------------

def _curve_parts(curve):
    """(steps, losses) / (steps, mean, std) / {"steps", "mean"|"losses", "std"} → (steps, mean, std|None)。"""
    if isinstance(curve, Mapping):
        steps = curve["steps"]
        mean = curve["mean"] if "mean" in curve else curve["losses"]
        std = curve.get("std")
    else:
        parts = tuple(curve)
        if len(parts) == 2:
            steps, mean = parts
            std = None
        elif len(parts) == 3:
            steps, mean, std = parts
        else:
            raise ValueError("每条 loss 曲线应为 (steps, losses) 或 (steps, mean, std)")
    steps, mean = _as_array(steps), _as_array(mean)
    if steps.shape != mean.shape:
        raise ValueError(f"steps 与 loss 的长度不同：{steps.shape} vs {mean.shape}")
    return steps, mean, (None if std is None else _as_array(std))


def plot_loss_curves(
    curves: Mapping[str, object],
    title: Label = ("loss 曲线", "Loss curves"),
    ax=None,
    *,
    xlabel: Label = ("训练步数", "step"),
    ylabel: Label = ("loss", "loss"),
    log: bool = False,
    diverged: Optional[Mapping[str, Optional[int]]] = None,
    styles: Optional[Mapping[str, dict]] = None,
    ylim: Optional[tuple[float, float]] = None,
    references: Optional[Mapping[Label, float]] = None,
):
    """画若干条 loss 曲线：``{名字: (steps, losses)}``，或带标准差带的 ``(steps, mean, std)``
    （也可写成 ``{"steps": …, "mean": …, "std": …}``）。

    非有限的 loss（发散后的 NaN/inf）不画；``diverged={名字: 步数}`` 会在那一步画一个 ×
    并写进图例。默认纵轴范围会裁掉开头极高的 loss，让后面的差别看得清（``ylim`` 可自定）。
    ``references={名字: 数值}`` 画水平虚线作参照（例如只按字符频率猜的 loss）。
    """
    fig, ax = _axes(ax)
    styles = styles or {}
    diverged = diverged or {}
    finite_tails = []
    for i, (name, curve) in enumerate(curves.items()):
        steps, mean, std = _curve_parts(curve)
        ok = np.isfinite(mean)
        text = label(name)
        div = diverged.get(name)
        if div is not None:
            text += f" (diverged @ step {div})"
        kw = {"linewidth": 1.6}
        if ok.sum() <= 3:
            kw["marker"] = "o"  # 只有几个点时，没有标记就看不见
        kw.update(styles.get(name, {}))
        (line,) = ax.plot(steps[ok], mean[ok], label=text, **kw)
        if std is not None:
            sd = np.where(np.isfinite(std), std, 0.0)
            ax.fill_between(steps[ok], (mean - sd)[ok], (mean + sd)[ok], color=line.get_color(), alpha=0.2,
                            linewidth=0)
        if div is not None:
            y = mean[ok][-1] if ok.any() else np.nan
            if np.isfinite(y):
                ax.plot([div], [y], marker="x", markersize=10, mew=2.5, color=line.get_color(), linestyle="none")
        if ok.any():
            finite_tails.append(mean[ok][len(mean[ok]) // 5:])
    for i, (name, value) in enumerate((references or {}).items()):
        if value is not None and np.isfinite(value):
            ax.axhline(value, color="gray", linestyle=(0, (4, 3 + 2 * i)), linewidth=1.0,
                       label=f"{label(name)} = {value:.3f}")
            finite_tails.append(np.array([value]))
    if log:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    elif finite_tails and not log:
        tail = np.concatenate(finite_tails)
        lo, hi = float(np.min(tail)), float(np.max(tail))
        if hi > lo:
            pad = 0.08 * (hi - lo)
            top = max(hi + pad, min(hi + 4 * pad, ax.get_ylim()[1]))
            ax.set_ylim(lo - pad, top)
    return _finish(fig, ax, title, xlabel, ylabel)
