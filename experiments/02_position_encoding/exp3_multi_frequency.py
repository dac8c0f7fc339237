"""实验 3：为什么 RoPE 要用很多个频率？

全部用你的 precompute_freqs_cis / apply_rotary_pos_emb：
A. 频谱：head_dim=64 时每一对维度的波长 λ_i = 2π/θ_i（从你的 cos/sin 表里读回角度），rope_base = 1e4 与
   minimind 的 1e6 各一条；有多少对在 2048（minimind YaRN 的原训练长度）个位置里连一圈都转不完。
B. 远程衰减：RoFormer（Su 等）给出 q·k 的一个上界 ∝ (1/(D/2))·Σ_j |Σ_{k<j} e^{i·r·θ_k}|，它随相对距离 r 变小；
   再直接算 q = k = 全 1 时的 ⟨RoPE(q, r), RoPE(k, 0)⟩ / D。
C. 只有一个频率会怎样：所有对都用 θ = 1（rope_base = 1）时，位置 0 和位置 d 的“指纹”相似度 cos(d) 会周期性地
   回到 1——d = 44、710……与位置 0 几乎分不出来（混叠）；很多个频率时远处的位置再也不会“撞脸”。
D. 训练小语言模型：多频率（rope_base=1e4）vs 只有一个高频（所有 θ_i = 1）vs 只有一个低频
   （所有对都用最慢那一对的角度，几乎等于不加位置），比较验证 loss。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402

import torch  # noqa: E402

from kata.experiment import Experiment, check_component, describe_gap, fmt_mean_std, pad, summarize  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

HEAD_DIM = 64          # MiniMind2 的 head_dim
BASES = (1e4, 1e6)     # 原始 RoPE / LLaMA 的 1e4，minimind 的 1e6
ORIG_LEN = 2048        # minimind YaRN 的 original_max_position_embeddings
LM_VARIANTS = ("multi", "single_fast", "single_slow")


def angles_from_table(cos, sin) -> torch.Tensor:
    """从表的第 1 行读回每一对的转角 θ_i（θ_i ≤ 1 < π，不会绕圈）。"""
    h = cos.shape[-1] // 2
    return torch.atan2(sin[1, :h].double(), cos[1, :h].double())


def decay_bound(cos, sin, n: int) -> torch.Tensor:
    """RoFormer 的相对上界 (1/h)·Σ_{j=1..h} |Σ_{k<j} e^{i·r·θ_k}|，r = 0..n−1。cos/sin 取表的前半。"""
    h = cos.shape[-1] // 2
    z = torch.complex(cos[:n, :h].double(), sin[:n, :h].double())   # e^{i r θ_k}
    partial = torch.cumsum(z, dim=-1).abs()                          # |S_j|，j = 1..h
    return partial.mean(-1)


def ones_score(apply, cos, sin, n: int) -> torch.Tensor:
    """q = k = 全 1：⟨RoPE(q, r), RoPE(k, 0)⟩ / D，r = 0..n−1（用你的 apply_rotary_pos_emb）。"""
    D = cos.shape[-1]
    q = torch.ones(1, n, 1, D)
    qr, _ = apply(q, q, cos[:n], sin[:n])
    k0 = torch.ones(D)                     # 位置 0 不旋转
    return (qr[0, :, 0].double() @ k0.double()) / D


def first_alias(sim: torch.Tensor, start: int = 2, level: float = 0.99):
    """第一个 d ≥ start、使 sim(d) > level 的位置（没有则 None）。"""
    idx = (sim[start:] > level).nonzero()
    return int(idx[0]) + start if len(idx) else None


class MultiFrequency(Experiment):
    name = "exp3_multi_frequency"
    module = "02_position_encoding"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "频谱、远程衰减和混叠三部分不用数据；训练部分比较的是模型能否分辨位置，在合成语料上同样成立"
    title = "实验 3：RoPE 的频谱、远程衰减，以及只有一个频率时的混叠"
    description = (
        "用你的 RoPE 画出每一对维度的波长、q·k 上界随距离的衰减、单一频率时位置“撞脸”的混叠，\n"
        "并训练三个小语言模型（多频率 / 单一高频 / 单一低频）比较验证 loss。对应 teaching.md §3。"
    )
    requires = ("precompute_freqs_cis", "rotate_half", "apply_rotary_pos_emb")

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="D 部分每个模型的训练步数（默认：快速 150，完整 300）")
        parser.add_argument("--max-distance", type=int, default=None, help="B、C 部分看多远（默认：快速 4096，完整 16384）")
        parser.add_argument("--skip-training", action="store_true", help="只做 A–C（几秒钟），不训练 D 部分的语言模型")

    def run(self):
        precompute = self.component("precompute_freqs_cis")
        apply = check_component("apply_rotary_pos_emb", self.impl)
        self.component("apply_rotary_pos_emb")  # 记录来源
        n = self.args.max_distance or self.by_mode(smoke=256, quick=4096, full=16384)

        # ---- A. 频谱
        tables = {b: precompute(HEAD_DIM, end=n, rope_base=b) for b in BASES}
        theta = {b: angles_from_table(*tables[b]) for b in BASES}
        wavelength = {b: (2 * math.pi / theta[b]) for b in BASES}
        rows = []
        for b in BASES:
            lam = wavelength[b]
            rows.append([f"{b:g}", f"{float(lam[0]):.2f}", f"{float(lam[-1]):,.0f}",
                         int((lam > ORIG_LEN).sum()), int((lam > 32768).sum())])
        self.print_table(["rope_base", "最短波长（位置）", "最长波长（位置）", f"波长 > {ORIG_LEN} 的对数",
                          "波长 > 32768 的对数"], rows,
                         title=f"A. head_dim={HEAD_DIM}（{HEAD_DIM // 2} 对）时每一对的波长 λ_i = 2π/θ_i")

        # ---- B. 远程衰减
        bound = {b: decay_bound(*tables[b], n) for b in BASES}
        score = {b: ones_score(apply, *tables[b], n) for b in BASES}
        marks = [d for d in (1, 16, 256, 4096, 16384) if d < n]
        self.print_table(["rope_base"] + [f"r={d}" for d in marks],
                         [[f"{b:g}"] + [f"{float(bound[b][d]) / float(bound[b][0]):.3f}" for d in marks] for b in BASES],
                         title="B. RoFormer 上界相对 r=0 的比例（越小 = 远处的 q·k 最多能有多大越受限制）")

        # ---- C. 单一频率的混叠
        single = precompute(HEAD_DIM, end=n, rope_base=1.0)            # 1^(−2i/D) = 1：所有对同一个频率
        sim_single = ones_score(apply, *single, n)
        sim = {b: score[b] for b in BASES}
        alias = {"single": first_alias(sim_single)}
        alias.update({b: first_alias(sim[b]) for b in BASES})
        far = {key: float(s[2:].max()) for key, s in (("single", sim_single), *((b, sim[b]) for b in BASES))}
        far_at = {key: int(s[2:].argmax()) + 2 for key, s in (("single", sim_single), *((b, sim[b]) for b in BASES))}
        self.print_table(
            ["频率", "第一个与位置 0 相似度 > 0.99 的 d（d ≥ 2）", f"d ∈ [2, {n}) 里最大的相似度", "出现在 d ="],
            [["只有一个（θ=1）", alias["single"] or "没有", f"{far['single']:.5f}", far_at["single"]]] +
            [[f"rope_base={b:g}", alias[b] or "没有", f"{far[b]:.5f}", far_at[b]] for b in BASES],
            title="C. 位置“指纹”的相似度 ⟨RoPE(1, d), RoPE(1, 0)⟩ / D：会不会和位置 0 撞脸？")

        lm = None if self.args.skip_training else self._train_lms(precompute)
        self._plot(wavelength, bound, score, sim_single, n)
        self.conclude(self._conclusion(wavelength, bound, alias, far, far_at, lm, n))
        return {"wavelengths": {f"{b:g}": wavelength[b] for b in BASES},
                "decay_bound": {f"{b:g}": bound[b][marks].tolist() for b in BASES}, "decay_marks": marks,
                "alias_first_d": {str(k): v for k, v in alias.items()},
                "max_similarity_far": {str(k): v for k, v in far.items()}, "lm": lm}

    # ---- D. 小语言模型
    def _train_lms(self, precompute):
        from kata.tinylm import TinyLMConfig, build_tiny_lm, train_lm

        corpus = self.load_corpus()
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=3, quick=150, full=300)
        L = self.by_mode(smoke=16, quick=64, full=64)
        dim, layers, heads = self.by_mode(smoke=(32, 1, 2), quick=(64, 4, 4), full=(64, 4, 4))
        batch = self.by_mode(smoke=4, quick=16, full=16)
        hd = dim // heads
        self.config(lm_steps=steps, lm_train_len=L, lm_dim=dim, lm_layers=layers, lm_heads=heads, lm_batch=batch,
                    lm_lr=3e-3, lm_rope_base=1e4)
        names = {"multi": ("多频率（rope_base=1e4）", "multi-frequency"),
                 "single_fast": ("只有一个高频（所有 θ_i = 1）", "single fast frequency"),
                 "single_slow": ("只有一个低频（所有对 = 最慢那一对）", "single slow frequency")}
        cos_f, sin_f = precompute(hd, end=L, rope_base=1.0)
        cos_m, sin_m = precompute(hd, end=L, rope_base=1e4)
        h = hd // 2
        slow_cos = cos_m[:, h - 1:h].expand(L, hd).contiguous()
        slow_sin = sin_m[:, h - 1:h].expand(L, hd).contiguous()
        swap = {"multi": None, "single_fast": (cos_f, sin_f), "single_slow": (slow_cos, slow_sin)}
        results = {v: [] for v in LM_VARIANTS}
        for v in LM_VARIANTS:
            for s in seeds:
                cfg = TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, dim=dim, n_layers=layers, n_heads=heads,
                                   max_seq_len=L, pos="rope", rope_base=1e4)
                model, prov = build_tiny_lm(cfg, impl=self.impl, require=("rope",), seed=s)
                self.record_provenance({f"tinylm[{v}]": prov})
                if swap[v] is not None:  # 换掉模型里的 RoPE 表（训练长度固定为 L，tinylm 不会再重算它）
                    model.freqs_cos, model.freqs_sin = (t.float().clone() for t in swap[v])
                model.to(self.device)
                res = train_lm(model, corpus, steps=steps, batch_size=batch, seq_len=L, lr=3e-3,
                               eval_iters=self.by_mode(smoke=1, quick=8, full=16), seed=s, device=self.device,
                               progress=self.progress, desc=f"{names[v][1]} seed {s}")
                val = float("nan") if res.diverged else res.final_val_loss
                results[v].append(val)
                state = f"发散于第 {res.diverged_at} 步" if res.diverged else f"val loss {val:.3f}"
                print(f"  {pad(names[v][0], 36)} seed {s}: {state}（{res.wall_time_s:.0f} 秒）")
        self.print_table(["RoPE 的频率", f"验证 loss（{len(seeds)} 个种子）"],
                         [[names[v][0], fmt_mean_std(results[v])] for v in LM_VARIANTS],
                         title=f"D. 小语言模型（训练长度 {L}，{steps} 步）")
        return {"val_loss": results, "summary": {v: summarize(results[v]) for v in LM_VARIANTS},
                "names": {v: names[v][0] for v in LM_VARIANTS}, "n_seeds": len(seeds), "steps": steps}

    def _conclusion(self, wavelength, bound, alias, far, far_at, lm, n) -> str:
        parts = []
        lam4, lam6 = wavelength[1e4], wavelength[1e6]
        parts.append(f"A：head_dim={HEAD_DIM} 时，最快的一对每 {float(lam4[0]):.2f} 个位置转一圈（θ_0 = 1，与 rope_base 无关），"
                     f"最慢的一对：rope_base=1e4 要 {float(lam4[-1]):,.0f} 个位置，1e6 要 {float(lam6[-1]):,.0f} 个位置。"
                     f"rope_base=1e6 时有 {int((lam6 > ORIG_LEN).sum())} 对在 {ORIG_LEN} 个位置内转不满一圈"
                     f"（1e4 时 {int((lam4 > ORIG_LEN).sum())} 对）：base 越大，慢频率越多，能区分的距离越远。")
        r_mid = min(256, n - 1)
        ratios = {b: float(bound[b][r_mid]) / float(bound[b][0]) for b in bound}
        decays = all(v < 0.5 for v in ratios.values())
        parts.append(f"B：RoFormer 的上界在距离 r={r_mid} 时降到 r=0 时的 "
                     + "、".join(f"{ratios[b]:.2f}（rope_base={b:g}）" for b in ratios)
                     + ("——远处 token 的 q·k 能达到的最大值变小了，这就是“远程衰减”。" if decays else
                        "——衰减没有预期的明显（上界仍在 r=0 的一半以上）。"))
        a = alias["single"]
        if a is not None:
            parts.append(f"C：只有一个频率（θ=1）时，位置 {a} 与位置 0 的相似度就超过了 0.99，"
                         f"在 [2, {n}) 里最像的是 d={far_at['single']}（相似度 {far['single']:.5f}）：旋转角每 2π 重复一次，"
                         "远处的位置会和近处“撞脸”（混叠）。")
        else:
            parts.append("C：与预期不符——单一频率时没有找到与位置 0 高度相似的远处位置。")
        multi_ok = all(alias[b] is None for b in BASES)
        parts.append("很多个频率时，" + "、".join(f"rope_base={b:g} 在 [2, {n}) 里最大相似度 {far[b]:.3f}（d={far_at[b]}）"
                                                for b in BASES)
                     + ("，没有任何远处位置和位置 0 撞脸：不同的频率像钟表的秒针、分针、时针，合起来才能唯一地读出时间。"
                        if multi_ok else "，也出现了相似度 > 0.99 的远处位置。"))
        if lm is not None:
            vals = lm["val_loss"]
            nm = lm["names"]
            parts.append("D：" + describe_gap(vals["multi"], vals["single_fast"], nm["multi"], nm["single_fast"],
                                              spread_note=lm["n_seeds"] > 1)
                         + describe_gap(vals["multi"], vals["single_slow"], nm["multi"], nm["single_slow"],
                                        spread_note=lm["n_seeds"] > 1))
            m = {v: summarize(vals[v])["mean"] for v in LM_VARIANTS}
            if all(math.isfinite(x) for x in m.values()):
                if m["multi"] < min(m["single_fast"], m["single_slow"]):
                    parts.append("多频率的模型最好：它既能分清相邻的位置（快频率），又不会把远处的位置和近处混淆（慢频率）。")
                else:
                    parts.append("与预期不完全一致：多频率的模型不是最好的。训练长度只有几十个位置时，"
                                 "单一频率的混叠（周期约 6.3 个位置）未必伤得很重；换几个 --seed 或用完整模式再看。")
        return "\n".join(parts)

    def _plot(self, wavelength, bound, score, sim_single, n):
        fig, axes = new_figure(1, 3, width=5.0, height=4.2)
        ax = axes[0, 0]
        for b in BASES:
            ax.plot(range(len(wavelength[b])), wavelength[b].numpy(), marker=".", label=f"rope_base={b:g}")
        for y, txt in ((64, "L=64"), (ORIG_LEN, str(ORIG_LEN)), (32768, "32768")):
            ax.axhline(y, color="gray", linestyle=":", linewidth=1)
            ax.text(0, y * 1.15, txt, fontsize="x-small", color="gray")
        ax.set_yscale("log")
        ax.set_xlabel(label(("第 i 对维度", "pair index i")))
        ax.set_ylabel(label(("波长 2π/θ_i（位置数）", "wavelength 2π/θ_i (positions)")))
        ax.set_title(label((f"A. 频谱（head_dim={HEAD_DIM}）", f"A. Spectrum (head_dim={HEAD_DIM})")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        ax = axes[0, 1]
        # 对数间隔取 ~200 个距离：曲线在对数横轴上疏密均匀，看得清趋势
        r = torch.unique(torch.logspace(0, math.log10(n - 1), 200).round().long())
        for j, b in enumerate(BASES):
            ax.plot(r.numpy(), (bound[b][r] / bound[b][0]).numpy(), color=f"C{j}", linewidth=2.0,
                    label=label((f"上界 rope_base={b:g}", f"bound base={b:g}")))
            ax.plot(r.numpy(), score[b][r].numpy(), color=f"C{j}", linewidth=0.8, alpha=0.6, linestyle="--",
                    label=label((f"q=k=全1 的 q·k/D，base={b:g}", f"q=k=1 score/D, base={b:g}")))
        ax.set_xscale("log")
        ax.set_xlabel(label(("相对距离 r", "relative distance r")))
        ax.set_ylabel(label(("相对 r=0 的比例", "relative to r=0")))
        ax.set_title(label(("B. 远程衰减", "B. Long-term decay")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
        ax = axes[0, 2]
        m = min(n, 400)
        d = torch.arange(m)
        ax.plot(d.numpy(), sim_single[:m].numpy(), linewidth=0.9, label=label(("只有一个频率 θ=1", "single frequency θ=1")))
        ax.plot(d.numpy(), score[1e4][:m].numpy(), linewidth=1.4, label=label(("多频率 rope_base=1e4", "multi, base=1e4")))
        ax.axhline(0.99, color="gray", linestyle=":", linewidth=1)
        if m > 44:
            ax.annotate("d=44", xy=(44, float(sim_single[44])), xytext=(60, 1.08), fontsize="x-small",
                        arrowprops={"arrowstyle": "->", "color": "gray"})
        ax.set_ylim(-1.1, 1.2)
        ax.set_xlabel(label(("与位置 0 的距离 d", "distance d from position 0")))
        ax.set_ylabel(label(("相似度 ⟨RoPE(1,d), RoPE(1,0)⟩ / D", "similarity to position 0")))
        ax.set_title(label(("C. 单一频率：远处位置与位置 0 撞脸", "C. Single frequency aliases")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        self.save_figure(fig, "frequencies")


if __name__ == "__main__":
    sys.exit(MultiFrequency.main())
