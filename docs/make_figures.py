"""Regenerate the explanatory figures embedded in the module docs.

    python docs/make_figures.py            # writes every PNG (a few seconds, CPU only)
    python docs/make_figures.py --check    # also verifies the formulas the pictures are drawn from

Every picture is computed from the formula it illustrates (numpy only, no torch), never drawn by hand:

- exercises/02_position_encoding/figures/rope_rotation.png
    half-split pairing (i, i + D/2) vs interleaved (2i, 2i+1); the pair (q_i, q_{i+D/2}) rotated by
    m * theta_i, theta_i = base^(-2i/D), for several i (fast and slow "clock hands").
- exercises/03_attention/figures/gqa_heads.png
    8 query heads sharing 2 KV heads: repeat_kv = repeat_interleave (head h uses KV head h // n_rep),
    next to the tiled mistake x.repeat(...), and what the KV cache stores.
- exercises/03_attention/figures/attention_masks.png
    the boolean masks (True = may attend) from the rule "query i of Sq sees key j iff
    j <= Sk - Sq + i" and a 0/1 padding mask, including the KV-cache case Sq < Sk and the
    top-left-aligned is_causal mask of F.scaled_dot_product_attention for contrast.
- exercises/05_residual_connection/figures/residual_stream.png
    the Pre-Norm block x -> norm -> attn -> + -> norm -> FFN -> + with minimind's names
    (input_layernorm, self_attn, post_attention_layernorm, mlp), and Post-Norm for comparison.

No CJK font is assumed (labels are English; the Chinese explanation is in the markdown).
Output is deterministic: fixed sizes, no timestamps or version strings in the PNG metadata.
Files are written via a temporary file + os.replace, so an interrupted run never leaves half a PNG.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DPI = 100
# deterministic PNGs: no "Software" version string, no creation time
PNG_METADATA = {"Software": None}
plt.rcParams.update({
    "font.size": 9,
    "axes.titlesize": 9.5,
    "figure.dpi": DPI,
    "svg.hashsalt": "kata",
})

C_Q = "#4C72B0"      # query heads / fast
C_KV = "#DD8452"     # key/value heads
C_OK = "#55A868"     # may attend
C_BAD = "#C44E52"    # mistake / masked-out highlight
C_GREY = "#8C8C8C"


def _save(fig, rel: str) -> Path:
    """Write fig to ROOT/rel atomically (temp file in the same folder, then os.replace)."""
    out = ROOT / rel
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.stem + ".", suffix=".png.part", dir=out.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=DPI, metadata=PNG_METADATA)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)
    return out


# ----------------------------------------------------------------------------- formulas

def rope_angles(dim: int, positions: np.ndarray, base: float) -> np.ndarray:
    """m * theta_i with theta_i = base^(-2i/dim): shape [len(positions), dim // 2]."""
    theta = base ** (-np.arange(0, dim, 2)[: dim // 2] / dim)
    return np.outer(positions, theta)


def rope_half_split(x: np.ndarray, m: int, base: float) -> np.ndarray:
    """RoPE of one vector x at position m, half-split layout: x*cos + rotate_half(x)*sin."""
    D = x.shape[-1]
    ang = rope_angles(D, np.array([m]), base)[0]
    cos, sin = np.concatenate([np.cos(ang)] * 2), np.concatenate([np.sin(ang)] * 2)
    rot = np.concatenate([-x[D // 2:], x[: D // 2]])
    return x * cos + rot * sin


def causal_mask(sq: int, sk: int) -> np.ndarray:
    """True = may attend. Query i (of sq) is the token at position sk - sq + i and sees keys 0..sk-sq+i."""
    i = np.arange(sq)[:, None]
    j = np.arange(sk)[None, :]
    return j <= (sk - sq) + i


def top_left_causal_mask(sq: int, sk: int) -> np.ndarray:
    """What F.scaled_dot_product_attention(is_causal=True) uses: torch.ones(L, S).tril(0)."""
    return np.tril(np.ones((sq, sk), dtype=bool), 0)


def padding_mask(sq: int, attention_mask: list[int]) -> np.ndarray:
    """[B=1] 0/1 attention_mask over the keys, broadcast to every query row."""
    return np.broadcast_to(np.asarray(attention_mask, dtype=bool)[None, :], (sq, len(attention_mask)))


def repeat_kv_sources(n_kv: int, n_rep: int) -> np.ndarray:
    """Which KV head each of the n_kv * n_rep output heads of repeat_kv comes from (repeat_interleave)."""
    return np.repeat(np.arange(n_kv), n_rep)


def tiled_sources(n_kv: int, n_rep: int) -> np.ndarray:
    """The mistake x.repeat(1, 1, n_rep, 1): heads tiled 0 1 0 1 ..."""
    return np.tile(np.arange(n_kv), n_rep)


def check_formulas() -> None:
    """The properties each picture relies on; raises AssertionError if a formula above is wrong."""
    rng = np.random.default_rng(0)
    D, base = 8, 1e4
    q, k = rng.standard_normal(D), rng.standard_normal(D)
    # rotation keeps the length of every pair (i, i + D/2), and q.k depends only on m - n
    for m in (0, 3, 17):
        r = rope_half_split(q, m, base)
        assert np.allclose(r[:4] ** 2 + r[4:] ** 2, q[:4] ** 2 + q[4:] ** 2)
    s1 = rope_half_split(q, 5, base) @ rope_half_split(k, 2, base)
    s2 = rope_half_split(q, 12, base) @ rope_half_split(k, 9, base)
    assert np.isclose(s1, s2)
    # causal mask: square case is the lower triangle; cache case is its last sq rows
    assert (causal_mask(5, 5) == np.tril(np.ones((5, 5), bool))).all()
    assert (causal_mask(2, 6) == np.tril(np.ones((6, 6), bool))[-2:]).all()
    assert (top_left_causal_mask(3, 3) == causal_mask(3, 3)).all()
    assert not (top_left_causal_mask(2, 6) == causal_mask(2, 6)).all()
    # repeat_kv is repeat_interleave
    assert repeat_kv_sources(2, 4).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert (repeat_kv_sources(2, 4) == np.arange(8) // 4).all()


# ----------------------------------------------------------------------------- 02: RoPE

def fig_rope_rotation() -> Path:
    D, base = 8, 1e4
    h = D // 2
    fig = plt.figure(figsize=(8.6, 4.3))
    gs = fig.add_gridspec(2, 4, height_ratios=[0.75, 1.6], hspace=0.3, wspace=0.3,
                          left=0.03, right=0.9, top=0.9, bottom=0.06)

    # -- top: which dims form a pair
    ax = fig.add_subplot(gs[0, :])
    ax.set_xlim(-2.6, D + 0.2)
    ax.set_ylim(-0.75, 2.35)
    ax.axis("off")
    pair_colors = plt.get_cmap("tab10")(np.arange(h))
    rows = [
        ("half-split (minimind,\nHF LLaMA)", 1.35, lambda d: d % h),
        ("interleaved\n(RoFormer paper)", 0.0, lambda d: d // 2),
    ]
    for name, y, pair_of in rows:
        ax.text(-0.25, y + 0.4, name, ha="right", va="center", fontsize=8.5)
        for d in range(D):
            p = pair_of(d)
            ax.add_patch(FancyBboxPatch((d + 0.06, y + 0.06), 0.88, 0.68, boxstyle="round,pad=0.01",
                                        fc=pair_colors[p], ec="white", alpha=0.85))
            ax.text(d + 0.5, y + 0.4, f"x{d}", ha="center", va="center", color="white", fontsize=8.5,
                    fontweight="bold")
        for p in range(h):
            dims = [d for d in range(D) if pair_of(d) == p]
            a, b = dims
            ax.annotate("", xy=(b + 0.5, y + 0.78), xytext=(a + 0.5, y + 0.78),
                        arrowprops=dict(arrowstyle="-", color=pair_colors[p], lw=1.2,
                                        connectionstyle="arc3,rad=-0.25" if b - a > 1 else "arc3,rad=-0.6"))
    ax.text(D / 2, -0.2, f"D = {D}: the same {h} pairs (colour = pair i, rotated by m*theta_i) in different "
            "slots: a fixed permutation of the dims", ha="center", va="top", fontsize=8, color="#444444")

    # -- bottom: the pair (q_i, q_{i+h}) rotated at positions m = 0..M
    M = 12
    q = np.zeros(D)
    q[:h] = 1.0            # every pair starts at (1, 0)
    pos = np.arange(M + 1)
    rotated = np.stack([rope_half_split(q, int(m), base) for m in pos])      # [M+1, D]
    theta = base ** (-np.arange(0, D, 2) / D)
    cmap = plt.get_cmap("viridis")
    for i in range(h):
        ax = fig.add_subplot(gs[1, i])
        circle = np.linspace(0, 2 * np.pi, 200)
        ax.plot(np.cos(circle), np.sin(circle), color="#DDDDDD", lw=0.8)
        for m in pos:
            x, y = rotated[m, i], rotated[m, i + h]
            ax.annotate("", xy=(x, y), xytext=(0, 0),
                        arrowprops=dict(arrowstyle="-|>", color=cmap(m / M), lw=1.0, shrinkA=0, shrinkB=0,
                                        mutation_scale=7))
        for m in (1, 2, 3):
            x, y = rotated[m, i], rotated[m, i + h]
            if np.hypot(x - rotated[m - 1, i], y - rotated[m - 1, i + h]) > 0.25:
                ax.text(1.18 * x, 1.18 * y, f"m={m}", fontsize=6.5, ha="center", va="center")
        ax.set_xlim(-1.35, 1.35)
        ax.set_ylim(-1.35, 1.35)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        lam = 2 * np.pi / theta[i]
        lam_s = f"{lam:.3g}" if lam < 1000 else f"{lam:,.0f}"
        ax.set_title(f"pair i={i}: (x{i}, x{i + h})\ntheta={theta[i]:.3g}, wavelength {lam_s}", fontsize=8)
        ax.set_xlabel(f"m={M}: angle {M * theta[i]:.3g} rad", fontsize=7.5)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, M))
    cax = fig.add_axes([0.925, 0.1, 0.012, 0.4])
    cb = fig.colorbar(sm, cax=cax)
    cb.set_label("position m", fontsize=8)
    fig.suptitle(f"RoPE: pair i of q is rotated by m*theta_i, theta_i = base^(-2i/D)  (D={D}, base={base:g})",
                 fontsize=10, y=0.985)
    return _save(fig, "exercises/02_position_encoding/figures/rope_rotation.png")


# ----------------------------------------------------------------------------- 03: GQA

def fig_gqa_heads() -> Path:
    H, KVH = 8, 2
    n_rep = H // KVH
    fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.5))
    cases = [
        ("repeat_kv = repeat_interleave (correct)\nquery head h uses KV head h // n_rep",
         repeat_kv_sources(KVH, n_rep), C_OK),
        ("x.repeat(1, 1, n_rep, 1) (tiled: a bug)\nquery head 1 is paired with KV head 1",
         tiled_sources(KVH, n_rep), C_BAD),
    ]
    kv_colors = [C_KV, "#8172B3"]
    for ax, (title, src, tcolor) in zip(axes, cases):
        ax.set_xlim(-0.6, H + 0.1)
        ax.set_ylim(-0.2, 3.6)
        ax.axis("off")
        ax.set_title(title, fontsize=9, color=tcolor)
        # KV heads (what k_proj / v_proj produce and what the KV cache stores)
        kv_x = [n_rep * g + (n_rep - 1) / 2 for g in range(KVH)]
        for g, x in enumerate(kv_x):
            ax.add_patch(FancyBboxPatch((x - 0.55 + 0.5, 2.6), 1.1, 0.6, boxstyle="round,pad=0.02",
                                        fc=kv_colors[g], ec="none"))
            ax.text(x + 0.5, 2.9, f"KV {g}", ha="center", va="center", color="white", fontweight="bold")
        ax.text(-0.5, 2.9, "k_proj/v_proj\n(KV cache)", ha="left", va="center", fontsize=7.5, color=C_GREY)
        # query heads
        for hq in range(H):
            ax.add_patch(FancyBboxPatch((hq + 0.1, 0.2), 0.8, 0.6, boxstyle="round,pad=0.02",
                                        fc=C_Q, ec="none"))
            ax.text(hq + 0.5, 0.5, f"q{hq}", ha="center", va="center", color="white", fontweight="bold")
            g = int(src[hq])
            ax.add_patch(FancyArrowPatch((kv_x[g] + 0.5, 2.55), (hq + 0.5, 0.85), arrowstyle="-|>",
                                         mutation_scale=8, color=kv_colors[g], lw=1.1, alpha=0.9))
        ax.text(H / 2, 1.75, "repeat_kv", ha="center", va="center", fontsize=8, color=C_GREY,
                bbox=dict(fc="white", ec="none", alpha=0.8))
        ax.text(H / 2, -0.1, "sources: " + " ".join(str(int(s)) for s in src), ha="center", va="center",
                fontsize=8.5, family="monospace")
    fig.suptitle(f"GQA: {H} query heads share {KVH} KV heads (n_rep = {n_rep}); the cache keeps only the "
                 f"{KVH} KV heads, repeat_kv runs after it", fontsize=9.5)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return _save(fig, "exercises/03_attention/figures/gqa_heads.png")


# ----------------------------------------------------------------------------- 03: masks

def _draw_mask(ax, mask: np.ndarray, title: str, *, row_pos=None, key_labels=None, pad_keys=(),
               highlight_empty_rows=False, tcolor="black") -> None:
    sq, sk = mask.shape
    ax.imshow(mask.astype(float), cmap=ListedColormap(["#F2F2F2", C_OK]), vmin=0, vmax=1,
              aspect="equal", interpolation="nearest")
    ax.set_xticks(range(sk))
    ax.set_xticklabels(key_labels or [str(j) for j in range(sk)], fontsize=7.5)
    ax.set_yticks(range(sq))
    rows = row_pos if row_pos is not None else list(range(sq))
    ax.set_yticklabels([f"q{i}@{p}" if row_pos is not None else str(i) for i, p in enumerate(rows)],
                       fontsize=7.5)
    ax.set_xlabel("key j", fontsize=8)
    ax.set_ylabel("query i" + (" @ position" if row_pos is not None else ""), fontsize=8)
    ax.set_xticks(np.arange(-0.5, sk, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, sq, 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.2)
    ax.tick_params(which="minor", length=0)
    for j in pad_keys:
        ax.get_xticklabels()[j].set_color(C_BAD)
    if highlight_empty_rows:
        for i in range(sq):
            if not mask[i].any():
                ax.add_patch(plt.Rectangle((-0.5, i - 0.5), sk, 1, fill=False, ec=C_BAD, lw=1.8))
                ax.text(sk - 0.5, i, " all masked", color=C_BAD, fontsize=7, va="center", ha="left",
                        clip_on=False)
    ax.set_title(title, fontsize=8.5, color=tcolor)


def fig_attention_masks() -> Path:
    S = 6
    am = [0, 0, 1, 1, 1, 1]          # left padding: 2 pad tokens, then 4 real ones
    pad = [j for j, a in enumerate(am) if a == 0]
    keys_pad = [f"{j}\npad" if a == 0 else str(j) for j, a in enumerate(am)]
    fig, axes = plt.subplots(2, 3, figsize=(9.6, 5.6), gridspec_kw=dict(height_ratios=[3, 1.6]))
    _draw_mask(axes[0, 0], causal_mask(S, S), "(a) causal, Sq = Sk = 6\nj <= i (lower triangle)")
    _draw_mask(axes[0, 1], padding_mask(S, am), "(b) padding, attention_mask=[0,0,1,1,1,1]\n"
               "[B,1,1,Sk]: same for every query", key_labels=keys_pad, pad_keys=pad)
    _draw_mask(axes[0, 2], causal_mask(S, S) & padding_mask(S, am),
               "(c) causal AND padding\nrows 0-1 see nothing: must not give NaN",
               key_labels=keys_pad, pad_keys=pad, highlight_empty_rows=True)
    sq, sk = 2, 6
    _draw_mask(axes[1, 0], causal_mask(sq, sk),
               f"(d) KV cache: Sq={sq} new, Sk={sk}\nj <= Sk-Sq+i (aligned to last query)",
               row_pos=[sk - sq + i for i in range(sq)], tcolor=C_OK)
    _draw_mask(axes[1, 1], top_left_causal_mask(sq, sk),
               "(e) WRONG for a cache: tril(0), top-left\n(F.scaled_dot_product_attention is_causal)",
               row_pos=[sk - sq + i for i in range(sq)], tcolor=C_BAD)
    _draw_mask(axes[1, 2], causal_mask(sq, sk) & padding_mask(sq, am),
               "(f) KV cache AND left padding\nmask covers all Sk keys, not only new ones",
               row_pos=[sk - sq + i for i in range(sq)], key_labels=keys_pad, pad_keys=pad)
    fig.suptitle("Boolean attention masks, True (green) = may attend; built from the rules in "
                 "teaching.md §2.3", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return _save(fig, "exercises/03_attention/figures/attention_masks.png")


# ----------------------------------------------------------------------------- 05: residual stream

def _box(ax, x, y, w, h, text, fc, fontsize=8.5, color="white"):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=fc, ec="none"))
    ax.text(x, y, text, ha="center", va="center", color=color, fontsize=fontsize, fontweight="bold")


def _plus(ax, x, y):
    # a marker stays round whatever the axes aspect
    ax.plot([x], [y], marker="o", ms=15, mfc="white", mec="black", mew=1.2, zorder=3)
    ax.text(x, y, "+", ha="center", va="center", fontsize=12, zorder=4)


def _arrow(ax, p0, p1, color="black", lw=1.3, style="-|>", rad=0.0):
    ax.add_patch(FancyArrowPatch(p0, p1, arrowstyle=style, mutation_scale=9, color=color, lw=lw,
                                 connectionstyle=f"arc3,rad={rad}", zorder=2))


def _block(ax, x0, pre: bool):
    """One transformer block drawn bottom (input) to top (output); the stream is the vertical line at x0."""
    stream = "#E8A33D"
    side = x0 + 1.35
    y_in, y_p1, y_p2, y_out = 0.3, 3.0, 5.7, 6.9
    norm_c, attn_c, ffn_c = "#64B5CD", C_Q, "#8172B3"
    ax.text(x0, y_in - 0.25, "x (hidden_states)", ha="center", va="top", fontsize=8)
    if pre:
        # residual stream: x -> (+) -> (+) -> out, never normalised
        _arrow(ax, (x0, y_in), (x0, y_p1 - 0.17), color=stream, lw=3.0, style="-")
        _arrow(ax, (x0, y_p1 + 0.17), (x0, y_p2 - 0.17), color=stream, lw=3.0, style="-")
        _arrow(ax, (x0, y_p2 + 0.17), (x0, y_out), color=stream, lw=3.0)
        for (yb, ytop, nname, fname, fcol) in ((y_in + 0.5, y_p1, "input_layernorm\n(RMSNorm)", "self_attn", attn_c),
                                               (y_p1 + 0.5, y_p2, "post_attention_\nlayernorm (RMSNorm)",
                                                "mlp (SwiGLU FFN)", ffn_c)):
            _arrow(ax, (x0, yb), (side - 0.45, yb + 0.39), rad=-0.3)
            _box(ax, side, yb + 0.7, 1.75, 0.6, nname, norm_c, fontsize=7.2)
            _arrow(ax, (side, yb + 1.0), (side, yb + 1.35))
            _box(ax, side, yb + 1.65, 1.75, 0.6, fname, fcol, fontsize=7.8)
            _arrow(ax, (side - 0.45, yb + 1.96), (x0 + 0.12, ytop), rad=0.3)
            _plus(ax, x0, ytop)
        ax.text(x0 - 0.2, (y_in + y_p1) / 2, "residual\nstream", ha="right", va="center", fontsize=7.5,
                color="#B5711A", rotation=90)
        ax.text(x0, y_out + 0.12, "out (to next block;\nfinal model.norm after the last)", ha="center",
                va="bottom", fontsize=7.5)
        ax.set_title("Pre-Norm (MiniMindBlock): h = x + attn(norm1(x)),\nout = h + mlp(norm2(h))", fontsize=9)
    else:
        _arrow(ax, (x0, y_in), (x0, y_p1 - 0.17), color=C_GREY, lw=2.0, style="-")
        for (yb, ytop, fname, fcol) in ((y_in + 0.5, y_p1, "attn", attn_c), (y_p1 + 1.1, y_p2, "FFN", ffn_c)):
            _arrow(ax, (x0, yb), (side - 0.35, yb + 0.59), rad=-0.3)
            _box(ax, side, yb + 0.9, 1.4, 0.6, fname, fcol)
            _arrow(ax, (side - 0.35, yb + 1.21), (x0 + 0.12, ytop), rad=0.3)
            _plus(ax, x0, ytop)
            _arrow(ax, (x0, ytop + 0.17), (x0, ytop + 0.5))
            _box(ax, x0, ytop + 0.8, 1.1, 0.55, "norm", norm_c)
        _arrow(ax, (x0, y_p1 + 1.08), (x0, y_p2 - 0.17), color=C_GREY, lw=2.0, style="-")
        _arrow(ax, (x0, y_p2 + 1.08), (x0, y_out + 0.9), color=C_GREY, lw=2.0)
        ax.text(x0, y_out + 1.0, "out", ha="center", va="bottom", fontsize=8)
        ax.text(x0 - 0.2, (y_in + y_p1) / 2, "every path\npasses a norm", ha="right", va="center",
                fontsize=7.5, color=C_GREY, rotation=90)
        ax.set_title("Post-Norm (original Transformer), for comparison:\nx_(l+1) = norm(x_l + F(x_l))",
                     fontsize=9)


def fig_residual_stream() -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(8.2, 5.6), gridspec_kw=dict(width_ratios=[1.25, 1]))
    for ax in axes:
        ax.axis("off")
    axes[0].set_xlim(-0.9, 2.8)
    axes[0].set_ylim(-0.4, 7.9)
    axes[1].set_xlim(-0.9, 2.6)
    axes[1].set_ylim(-0.4, 8.4)
    _block(axes[0], 0.0, pre=True)
    _block(axes[1], 0.0, pre=False)
    fig.tight_layout()
    return _save(fig, "exercises/05_residual_connection/figures/residual_stream.png")


FIGURES = (fig_rope_rotation, fig_gqa_heads, fig_attention_masks, fig_residual_stream)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the PNG figures embedded in the module docs.")
    parser.add_argument("--check", action="store_true", help="only verify the formulas, write nothing")
    args = parser.parse_args(argv)
    check_formulas()
    if args.check:
        print("formulas OK")
        return 0
    for make in FIGURES:
        path = make()
        print(f"{path.relative_to(ROOT)}  {path.stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
