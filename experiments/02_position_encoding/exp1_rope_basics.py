"""实验 1：注意力为什么“不知道顺序”，RoPE 又怎样把顺序放回去。

不训练任何模型，只用随机权重和你写的 RoPE 做三件事：
A. 置换等变：没有位置编码的（双向）自注意力，把输入 token 打乱顺序，输出只是跟着打乱——
   out(P·x) = P·out(x)。“狗咬人”和“人咬狗”里“狗”的输出向量一模一样。加上你的 RoPE 之后，这个等式不再成立。
   （因果掩码本身会泄露顺序：带掩码的 NoPE 也不满足这个等式，对应 Haviv 等 2022 的观察。）
B. 相对位置：同一对向量 q、k 放在位置 m、n，用你的 RoPE 旋转后算 S[m, n] = ⟨RoPE(q, m), RoPE(k, n)⟩。
   如果 S 只依赖 m − n，每条对角线上的值都相同（Toeplitz 矩阵）。对照：把你的正弦位置编码加到词向量上
   再过 W_q、W_k（绝对位置的做法），S 就不只依赖 m − n。
C. 把 S[m, n] 按 m − n 画成散点：RoPE 的点落在一条曲线上，绝对位置是一团云。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402

import torch  # noqa: E402

from kata.experiment import Experiment, check_component  # noqa: E402
from kata.plots import label, new_figure, plot_attention_heatmap  # noqa: E402

SENTENCES = (("狗", "咬", "人"), ("人", "咬", "狗"))


def attention(x, wq, wk, wv, n_heads, rope=None, apply=None, causal=False):
    """最朴素的自注意力（无 batch）：x [S, dim] → [S, dim]。rope = (cos, sin) 时对 q、k 做旋转。"""
    S, dim = x.shape
    hd = dim // n_heads
    q = (x @ wq).view(1, S, n_heads, hd)
    k = (x @ wk).view(1, S, n_heads, hd)
    v = (x @ wv).view(1, S, n_heads, hd)
    if rope is not None:
        q, k = apply(q, k, rope[0][:S], rope[1][:S])
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))             # [1, H, S, hd]
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
    if causal:
        scores = scores.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return out.transpose(1, 2).reshape(S, dim)


def toeplitz_deviation(S: torch.Tensor) -> float:
    """每条对角线（固定 m − n）上数值的最大极差，除以 |S| 的最大值：0 表示 S 只依赖 m − n。"""
    n = S.shape[0]
    worst = 0.0
    for d in range(-(n - 1), n):
        diag = torch.diagonal(S, offset=d)
        worst = max(worst, float(diag.max() - diag.min()))
    return worst / float(S.abs().max())


class RopeBasics(Experiment):
    name = "exp1_rope_basics"
    module = "02_position_encoding"
    title = "实验 1：注意力不知道顺序；RoPE 让 q·k 只依赖相对位置"
    description = (
        "用随机权重和你的 RoPE 测量：(A) 没有位置编码的注意力对输入顺序是置换等变的；(B) 用 RoPE 旋转后，\n"
        "q·k 只依赖位置差 m−n（热力图的每条对角线都是常数），而把正弦位置加到词向量上时不是。对应 teaching.md §1–§2。"
    )
    requires = ("precompute_freqs_cis", "rotate_half", "apply_rotary_pos_emb", "sinusoidal_position_encoding")

    def add_arguments(self, parser):
        parser.add_argument("--dim", type=int, default=64, help="模型维度（默认 64，4 个头，head_dim 16）")
        parser.add_argument("--positions", type=int, default=None, help="B 部分的位置个数（默认：快速 64，完整 128）")

    def run(self):
        precompute = self.component("precompute_freqs_cis")
        apply = check_component("apply_rotary_pos_emb", self.impl)
        self.component("apply_rotary_pos_emb")  # 记录来源
        sinusoidal = self.component("sinusoidal_position_encoding")
        dim, heads = self.args.dim, 4
        if dim % (2 * heads):
            from kata.experiment import UsageError
            raise UsageError(f"--dim 必须是 {2 * heads} 的倍数（{heads} 个头，每个头的维度要是偶数）")
        hd = dim // heads
        n_pos = self.args.positions or self.by_mode(smoke=12, quick=64, full=128)
        trials = self.by_mode(smoke=3, quick=50, full=500)
        seq = self.by_mode(smoke=6, quick=16, full=32)
        self.config(dim=dim, n_heads=heads, head_dim=hd, rope_base=1e4, positions=n_pos, permutation_trials=trials,
                    sequence_length=seq)
        torch.set_default_dtype(torch.float64)  # 这里测的是数学性质：float64 让“等于”真的等于（误差 ~1e-15）
        try:
            return self._run(precompute, apply, sinusoidal, dim, heads, hd, n_pos, trials, seq)
        finally:
            torch.set_default_dtype(torch.float32)

    def _run(self, precompute, apply, sinusoidal, dim, heads, hd, n_pos, trials, seq):
        g = torch.Generator().manual_seed(self.seed)
        init = lambda *shape: torch.randn(*shape, generator=g) / math.sqrt(shape[0])  # noqa: E731
        wq, wk, wv = init(dim, dim), init(dim, dim), init(dim, dim)
        cos, sin = precompute(hd, end=max(n_pos, seq), rope_base=1e4)
        rope = (cos.double(), sin.double())

        # ---- A. 置换等变
        errs = {"nope": [], "rope": [], "nope_causal": []}
        for _ in range(trials):
            x = torch.randn(seq, dim, generator=g)
            perm = torch.randperm(seq, generator=g)
            for key, kw in (("nope", {}), ("rope", {"rope": rope, "apply": apply}), ("nope_causal", {"causal": True})):
                out = attention(x, wq, wk, wv, heads, **kw)
                out_p = attention(x[perm], wq, wk, wv, heads, **kw)
                errs[key].append(float((out_p - out[perm]).abs().max() / out.abs().max()))
        perm_err = {k: {"max": max(v), "median": sorted(v)[len(v) // 2]} for k, v in errs.items()}
        self.print_table(
            ["注意力", f"max |out(Px) − P·out(x)| / max|out|（{trials} 次随机打乱）", "中位数"],
            [["没有位置编码（双向）", f"{perm_err['nope']['max']:.2e}", f"{perm_err['nope']['median']:.2e}"],
             ["你的 RoPE（双向）" if self.impl == "exercises" else "RoPE（双向）",
              f"{perm_err['rope']['max']:.2e}", f"{perm_err['rope']['median']:.2e}"],
             ["没有位置编码 + 因果掩码", f"{perm_err['nope_causal']['max']:.2e}", f"{perm_err['nope_causal']['median']:.2e}"]],
            title="A. 打乱输入顺序，输出是否只是跟着打乱？（0 = 完全置换等变）")

        emb = {w: torch.randn(dim, generator=g) for w in ("狗", "咬", "人")}
        dog = {}
        for key, kw in (("nope", {}), ("rope", {"rope": rope, "apply": apply})):
            outs = []
            for sent in SENTENCES:
                x = torch.stack([emb[w] for w in sent])
                outs.append(attention(x, wq, wk, wv, heads, **kw)[sent.index("狗")])
            dog[key] = float((outs[0] - outs[1]).norm() / outs[0].norm())
        self.print_table(["注意力", "‖out_狗(狗咬人) − out_狗(人咬狗)‖ / ‖out_狗‖"],
                         [["没有位置编码", f"{dog['nope']:.2e}"], ["RoPE", f"{dog['rope']:.2e}"]],
                         title="“狗咬人” vs “人咬狗”：“狗”这个 token 的注意力输出差多少")

        # ---- B. 相对位置：S[m, n] = <RoPE(q, m), RoPE(k, n)>
        q = torch.randn(hd, generator=g)
        k = torch.randn(hd, generator=g)
        Q = q.expand(1, n_pos, 1, hd).contiguous()
        K = k.expand(1, n_pos, 1, hd).contiguous()
        Qr, Kr = apply(Q, K, rope[0][:n_pos], rope[1][:n_pos])
        S_rope = (Qr[0, :, 0] @ Kr[0, :, 0].T)
        pe = sinusoidal(n_pos, dim).double()
        e = torch.randn(dim, generator=g)                         # 同一个 token 放在每个位置上
        xa = e[None, :] + pe
        S_abs = (xa @ wq)[:, :hd] @ (xa @ wk)[:, :hd].T          # 第 0 个头的 q·k（绝对位置：先加再投影）
        S_pe = pe @ pe.T                                         # 只看位置表本身的点积
        dev = {"rope": toeplitz_deviation(S_rope), "sinusoidal_added": toeplitz_deviation(S_abs),
               "sinusoidal_table_only": toeplitz_deviation(S_pe)}
        self.print_table(["q·k 的来源", "每条对角线上的最大极差 / max|S|"],
                         [["RoPE 旋转后的 q、k", f"{dev['rope']:.2e}"],
                          ["正弦位置加到词向量上，再过 W_q、W_k", f"{dev['sinusoidal_added']:.2e}"],
                          ["只看正弦位置表本身 ⟨PE_m, PE_n⟩", f"{dev['sinusoidal_table_only']:.2e}"]],
                         title=f"B. S[m, n] 是否只依赖 m − n？（{n_pos}×{n_pos}，0 = 完全只依赖 m − n）")

        self._plot(S_rope, S_abs, n_pos)
        self.conclude(self._conclusion(perm_err, dog, dev))
        return {"permutation_error": perm_err, "dog_bites_man_difference": dog, "toeplitz_deviation": dev,
                "scores_rope": S_rope, "scores_sinusoidal_added": S_abs}

    def _conclusion(self, perm_err, dog, dev) -> str:
        mine = "你的 RoPE" if self.impl == "exercises" else "RoPE"
        parts = []
        equivariant = perm_err["nope"]["max"] < 1e-9
        broken = perm_err["rope"]["median"] > 1e-3
        if equivariant:
            parts.append(f"A：没有位置编码时，打乱输入顺序后输出与“把原输出照样打乱”最多只差 {perm_err['nope']['max']:.1e}"
                         f"（float64 的舍入误差）——注意力本身对顺序是置换等变的，“狗咬人”和“人咬狗”里“狗”的输出相差 "
                         f"{dog['nope']:.1e}，模型分不出谁咬谁。")
        else:
            parts.append(f"A：与预期不符——没有位置编码时打乱顺序的误差达到 {perm_err['nope']['max']:.1e}，"
                         "按理应该只有舍入误差那么大。")
        if broken:
            parts.append(f"加上 {mine} 之后，这个误差的中位数变成 {perm_err['rope']['median']:.2f}，“狗”的输出相差 "
                         f"{dog['rope']:.2f}：顺序被编码进去了。")
        else:
            parts.append(f"与预期不符：加上 {mine} 之后打乱顺序的误差只有 {perm_err['rope']['median']:.1e}，"
                         "位置信息似乎没有起作用（检查 apply_rotary_pos_emb 是否真的用了 cos、sin）。")
        parts.append(f"另外，没有位置编码但带因果掩码时，误差中位数是 {perm_err['nope_causal']['median']:.2f}："
                     "掩码让每个 token 只能看到它前面的 token，这本身就泄露了顺序（Haviv 等 2022：不加位置编码的因果语言模型也能训练）。")
        if dev["rope"] < 1e-5:
            parts.append(f"B：RoPE 的 S[m, n] 每条对角线上的极差只有 max|S| 的 {dev['rope']:.1e}：q·k 只依赖 m − n。")
        else:
            parts.append(f"B：与预期不符——RoPE 的 S[m, n] 沿对角线的极差达到 max|S| 的 {dev['rope']:.1e}，"
                         "不只依赖 m − n（q 和 k 是否都旋转了？是否用了同一张表？）。")
        if dev["sinusoidal_added"] > 10 * max(dev["rope"], 1e-12) and dev["sinusoidal_added"] > 1e-3:
            parts.append(f"把正弦位置加到词向量上再投影时，这个极差是 {dev['sinusoidal_added']:.2f}：绝对位置的 q·k 里混着"
                         f"“词×位置”的交叉项，不只依赖距离；而位置表自身的点积 ⟨PE_m, PE_n⟩ 的极差只有 "
                         f"{dev['sinusoidal_table_only']:.1e}——正弦编码本身是“相对”的，是加法和投影把它弄乱了。")
        else:
            parts.append(f"正弦位置加到词向量上时的极差 {dev['sinusoidal_added']:.1e} 并没有明显大于 RoPE——与预期不符。")
        return "\n".join(parts)

    def _plot(self, S_rope, S_abs, n):
        fig, axes = new_figure(1, 3, width=5.0, height=4.4)
        plot_attention_heatmap(S_rope, ax=axes[0, 0], cmap="coolwarm",
                               title=("RoPE：S[m,n] = ⟨RoPE(q,m), RoPE(k,n)⟩", "RoPE: <R_m q, R_n k>"))
        plot_attention_heatmap(S_abs, ax=axes[0, 1], cmap="coolwarm",
                               title=("正弦位置加到词向量上（绝对位置）", "sinusoidal added to x"))
        ax = axes[0, 2]
        idx = torch.arange(n)
        offs = (idx[:, None] - idx[None, :]).flatten()
        s = S_abs / S_abs.abs().max()
        ax.scatter(offs.numpy(), s.flatten().numpy(), s=4, alpha=0.35, color="C0",
                   label=label(("绝对位置（正弦相加）：所有 (m, n)", "absolute (sinusoidal added): all (m, n)")))
        s = S_rope / S_rope.abs().max()
        ax.scatter(offs.numpy(), s.flatten().numpy(), s=10, alpha=0.5, color="C3",
                   label=label(("RoPE：所有 (m, n)", "RoPE: all (m, n)")))
        d = torch.arange(-(n - 1), n)
        ax.plot(d.numpy(), [float(torch.diagonal(s, offset=-int(k)).mean()) for k in d], color="C3", linewidth=1.0,
                label=label(("RoPE：每个 m − n 只有一个值", "RoPE: one value per m - n")))
        ax.set_xlabel(label(("m − n（query 位置 − key 位置）", "m - n")))
        ax.set_ylabel(label(("S[m, n] / max|S|", "S[m, n] / max|S|")))
        ax.set_title(label(("按位置差摊开：RoPE 落在一条曲线上", "By offset: RoPE collapses to one curve")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small", markerscale=3)
        fig.tight_layout()
        self.save_figure(fig, "relative_scores")


if __name__ == "__main__":
    sys.exit(RopeBasics.main())
