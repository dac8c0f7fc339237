"""实验 2：RoPE vs 绝对位置编码——在训练长度 L 上训练，在 L、2L、4L、8L 上评估（长度外推）。

五个只差位置编码的小型字符级因果语言模型（TinyShakespeare，真实的因果掩码）：
- NoPE：不加任何位置信息，只靠因果掩码（Haviv 等 2022）；
- 可学习绝对位置：nn.Embedding(L, dim) 加到词向量上——只有 L 行，长于 L 的序列根本没法算（记录下来，不崩溃）；
- 正弦绝对位置：**你的** sinusoidal_position_encoding 加到词向量上（Vaswani 等 2017）；
- RoPE：**你的** precompute_freqs_cis / apply_rotary_pos_emb 旋转 q、k；
- ALiBi（参照）：Press 等 2022 的线性距离偏置（tinylm 自带）。
同样的初始化种子、数据顺序、学习率。训练长度 L，评估时把窗口拉长到 2L、4L、8L：
报告整个窗口的平均 loss（与 Press 等 2022 Table 2 的做法相同），以及只看 ≥ L 那些“没见过的位置”的 loss，
并画出 loss 随位置变化的曲线。最后把 Press 等 2022 Table 2 的数字并排打印，按本次数字说明方向是否一致。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402
import statistics  # noqa: E402


from kata.experiment import Experiment, fmt_mean_std, pad, summarize, unigram_baseline  # noqa: E402
from kata.plots import label, new_figure, position_curve  # noqa: E402

VARIANTS = ("nope", "learned", "sinusoidal", "rope", "alibi")
COLORS = {"nope": "C0", "learned": "C1", "sinusoidal": "C2", "rope": "C3", "alibi": "C4"}  # 两张图里颜色一致
MULTS = (1, 2, 4, 8)
# Press et al. 2022, "Train Short, Test Long", Table 2：WikiText-103，L = 512，评估长度 512 / 1012 / 2512 / 15512 的困惑度
PRESS_LENGTHS = (512, 1012, 2512, 15512)
PRESS_PPL = {
    "sinusoidal": (20.05, 43.54, 132.41, 406.01),
    "rope": (20.07, 21.37, 31.58, 79.25),
    "alibi": (19.73, 18.73, 18.41, 18.31),
}
PRESS_CITE = "Press 等 2022（Train Short, Test Long，ICLR）Table 2，WikiText-103，训练长度 L=512"
TIE = 0.02  # |Δloss| ≤ 0.02 nats/字符 视为“基本不变”


def variant_names(impl: str) -> dict:
    mine = {"exercises": "你的", "solutions": "参考"}.get(impl, "")
    return {
        "nope": ("NoPE（不加位置）", "NoPE"),
        "learned": ("可学习绝对位置", "learned absolute"),
        "sinusoidal": (f"正弦绝对位置（{mine}实现）" if mine else "正弦绝对位置", "sinusoidal"),
        "rope": (f"RoPE（{mine}实现）" if mine else "RoPE", "RoPE"),
        "alibi": ("ALiBi（参照）", "ALiBi"),
    }


def window_and_beyond(curve: list, L: int) -> tuple:
    """(整个窗口的平均 loss, 只看位置 ≥ L 的平均 loss；窗口不长于 L 时为 None)。"""
    whole = sum(curve) / len(curve)
    beyond = sum(curve[L:]) / len(curve[L:]) if len(curve) > L else None
    return whole, beyond


def _mean(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(vals) if vals else float("nan")


def write_conclusion(window: dict, beyond: dict, names: dict, L: int, n_seeds: int, diverged: dict,
                     unigram: float, n_params: int = 0) -> tuple:
    """window[v][mult] / beyond[v][mult] = 每个种子的 loss 列表（learned 在 mult>1 时为 None，发散为 nan）。"""
    zh = {k: v[0] for k, v in names.items()}
    parts, verdict = [], {}
    ok = [v for v in VARIANTS if math.isfinite(_mean(window[v][1]))]
    for v, steps in diverged.items():
        gone = "，下面的比较不含它" if v not in ok else "，下面只用没发散的种子"
        parts.append(f"{zh[v]} 在 {len(steps)}/{n_seeds} 个种子上训练发散（第 {', '.join(map(str, steps))} 步）{gone}。")
    if not ok:
        return "\n".join(parts + ["所有变体都发散了，没有可比较的数字。"]), verdict

    # 1) 训练长度上的 loss：谁学得好
    at_L = {v: _mean(window[v][1]) for v in ok}
    best = min(at_L, key=at_L.get)
    worst = max(at_L, key=at_L.get)
    parts.append(f"在训练长度 L={L} 上：{zh[best]} 最好（{at_L[best]:.3f}），{zh[worst]} 最差（{at_L[worst]:.3f}），"
                 f"相差 {at_L[worst] - at_L[best]:.3f} nats/字符。")
    if "nope" in at_L and "rope" in at_L:
        gap = at_L["nope"] - at_L["rope"]
        learned_lm = at_L["nope"] < unigram - 0.3
        lm = (f"它的 loss {at_L['nope']:.3f} 比只按字符频率猜（{unigram:.3f}）低得多，说明它确实学会了利用上文："
              if learned_lm else f"它的 loss {at_L['nope']:.3f} 离只按字符频率猜（{unigram:.3f}）不远，训练得还不够；")
        haviv = "因果掩码本身泄露了位置（Haviv 等 2022：WikiText-103 上 NoPos 20.97、学习式绝对位置 20.42 困惑度）。"
        if gap > TIE:
            parts.append(f"NoPE 比 RoPE 差 {gap:.3f}；{lm}{haviv}")
        else:
            parts.append(f"NoPE 与 RoPE 在 L 上几乎一样（差 {gap:+.3f}）；{lm}{haviv}")

    # 2) 外推：整个窗口的 loss 从 L 到 kL 变了多少
    delta = {v: {m: _mean(window[v][m]) - at_L[v] for m in MULTS[1:]} for v in ok if v != "learned"}
    dbey = {v: {m: _mean(beyond[v][m]) - at_L[v] for m in MULTS[1:]} for v in ok if v != "learned"}
    verdict["delta_window"] = delta
    verdict["delta_beyond"] = dbey
    if "learned" in VARIANTS:
        parts.append(f"可学习绝对位置只有 {L} 行位置向量：评估长度超过 L 时根本没法前向（记录为“不能外推”），"
                     "这是它最直接的缺点。")
    describe = []
    for v in delta:
        d2, d8 = delta[v][2], delta[v][MULTS[-1]]
        if d2 > TIE:
            word = f"2L 时就变差了 {d2:+.3f}"
        elif d2 < -TIE:
            word = f"2L 时反而更好 {d2:+.3f}（多出来的上下文被用上了）"
        else:
            word = f"2L 时基本不变（{d2:+.3f}）"
        describe.append(f"{zh[v]} {word}，{MULTS[-1]}L 时 {d8:+.3f}（只看 ≥L 的位置：{dbey[v][MULTS[-1]]:+.3f}）")
    parts.append("把评估窗口拉长后，整个窗口平均 loss 相对 L 的变化：" + "；".join(describe) + "。")

    # 3) 与 Press 等 2022 的方向对比：正弦 > RoPE > ALiBi（外推时变差的程度）
    press_ratio = {v: [p / PRESS_PPL[v][0] for p in PRESS_PPL[v][1:]] for v in PRESS_PPL}
    checks = []
    if "sinusoidal" in delta and "rope" in delta:
        gaps = [delta["sinusoidal"][m] - delta["rope"][m] for m in MULTS[1:]]
        sin_worse = [g > TIE for g in gaps]
        rope_worse = [g < -TIE for g in gaps]
        verdict["sinusoidal_minus_rope_degradation"] = gaps
        if all(sin_worse):
            checks.append(f"正弦绝对位置在每个长度上都比 RoPE 退化得更多（{MULTS[-1]}L："
                          f"{delta['sinusoidal'][MULTS[-1]]:+.3f} vs {delta['rope'][MULTS[-1]]:+.3f}）——与论文方向一致"
                          f"（论文：~2L 时困惑度 ×{press_ratio['sinusoidal'][0]:.2f} vs ×{press_ratio['rope'][0]:.2f}）")
        elif any(sin_worse) and any(rope_worse):
            more = "、".join(f"{m}L" for m, w in zip(MULTS[1:], sin_worse) if w)
            less = "、".join(f"{m}L" for m, w in zip(MULTS[1:], rope_worse) if w)
            checks.append(f"正弦位置在 {more} 上比 RoPE 退化得更多，在 {less} 上反而更少——与论文（正弦在每个长度上都差得多）只部分一致")
        elif any(rope_worse):
            less = "、".join(f"{m}L" for m, w in zip(MULTS[1:], rope_worse) if w)
            checks.append(f"与论文方向相反：本次 RoPE 在 {less} 上比正弦位置退化得更多（{MULTS[-1]}L："
                          f"RoPE {delta['rope'][MULTS[-1]]:+.3f}，正弦 {delta['sinusoidal'][MULTS[-1]]:+.3f}；"
                          f"其余长度相差不到 {TIE}）")
        elif any(sin_worse):
            more = "、".join(f"{m}L" for m, w in zip(MULTS[1:], sin_worse) if w)
            checks.append(f"正弦位置在 {more} 上比 RoPE 退化得更多、其余长度相差不到 {TIE}——方向与论文一致")
        else:
            checks.append(f"正弦位置与 RoPE 退化的程度在每个长度上都相差不到 {TIE}——看不出论文里“正弦差得多”的方向")
    if "alibi" in delta:
        others = [v for v in delta if v != "alibi"]
        al_best = all(delta["alibi"][m] <= min(delta[v][m] for v in others) + TIE for m in MULTS[1:]) if others else False
        verdict["alibi_extrapolates_best"] = al_best
        if al_best:
            checks.append(f"ALiBi 在每个长度上都退化最少或与最少者相差不到 {TIE}（{MULTS[-1]}L：{delta['alibi'][MULTS[-1]]:+.3f}）——与论文一致"
                          "（论文里 ALiBi 外推时困惑度甚至略降）")
        else:
            better = [v for v in others if any(delta[v][m] < delta["alibi"][m] - TIE for m in MULTS[1:])]
            checks.append("ALiBi 并不是在每个长度上都退化最少（" + "、".join(zh[v] for v in better) +
                          " 在某些长度上更好）——与论文不完全一致")
    if checks:
        parts.append(f"对照 {PRESS_CITE}：" + "；".join(checks) + "。")
    if "sinusoidal" in delta and "rope" in delta and "nope" in at_L:
        used = at_L["nope"] - at_L["sinusoidal"]
        if used < 0.05 and delta["sinusoidal"][MULTS[-1]] < delta["rope"][MULTS[-1]] - TIE:
            vs_nope = f"只比 NoPE 好 {used:.3f}" if used > 0 else f"甚至比 NoPE 还差 {-used:.3f}"
            parts.append(f"怎么理解正弦位置“退化得少”：它在 L 上{vs_nope}（RoPE 比 NoPE 好 "
                         f"{at_L['nope'] - at_L['rope']:.3f}），说明这个小模型几乎没学会用加上去的正弦位置——"
                         "一个没怎么依赖位置的模型，遇到没见过的位置当然也不怎么受影响。所以更可能的解释是它本来就没用好位置，"
                         "而不是正弦编码更会外推；论文里的大模型真正用上了正弦位置，外推时才崩得那么厉害。")
    size = f"约 {n_params / 1e4:.1f} 万个参数" if n_params else "很小"
    parts.append(f"注意规模差别：论文是 WikiText-103 上大得多的词级模型、L=512，这里是{size}的字符级模型、L={L}。"
                 "只能比较方向（谁退化得多），不能比较数值。")
    if n_seeds == 1:
        parts.append("快速模式只跑了 1 个种子；小于 0.02 左右的差距可能只是随机波动，去掉 --quick 会跑 3 个种子并给出 均值 ± 标准差。")
    return "\n".join(parts), verdict


class RopeVsAbsolute(Experiment):
    name = "exp2_rope_vs_absolute"
    module = "02_position_encoding"
    can_use_synthetic = False  # 拿不到 TinyShakespeare 时不改用合成语料
    synthetic_reason = "长度外推的结论要与 Press 等 2022 在真实文本上的数字对照，依赖真实文本的长程统计；合成语料句子短、模式重复，会给出误导性的结果"
    title = "实验 2：RoPE vs 绝对位置编码——短训练、长评估（长度外推）"
    description = (
        "NoPE、可学习绝对位置、你的正弦位置编码、你的 RoPE、ALiBi 五个只差位置编码的小型字符级因果语言模型，\n"
        "在长度 L 上训练，在 L、2L、4L、8L 上评估，并与 Press 等 2022 Table 2 对照。对应 teaching.md §4。"
    )
    requires = ("precompute_freqs_cis", "rotate_half", "apply_rotary_pos_emb", "sinusoidal_position_encoding")

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 200，完整 300）")
        parser.add_argument("--train-len", type=int, default=64, help="训练长度 L（默认 64）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3）")
        parser.add_argument("--variants", default=",".join(VARIANTS),
                            help=f"只跑其中几个，逗号分隔（默认全部：{','.join(VARIANTS)}）")

    def run(self):
        from kata.tinylm import TinyLMConfig, build_tiny_lm, count_parameters, per_position_loss, train_lm

        variants = tuple(v.strip() for v in self.args.variants.split(",") if v.strip())
        bad = [v for v in variants if v not in VARIANTS]
        if bad or not variants:
            from kata.experiment import UsageError
            raise UsageError(f"--variants 只能取 {','.join(VARIANTS)} 中的若干个，实际 {self.args.variants!r}")
        names = variant_names(self.impl)
        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        L = self.by_mode(smoke=16, quick=self.args.train_len, full=self.args.train_len)
        steps = self.args.steps or self.by_mode(smoke=3, quick=200, full=300)
        dim, layers, heads = self.by_mode(smoke=(32, 1, 2), quick=(64, 4, 4), full=(64, 4, 4))
        batch = self.by_mode(smoke=4, quick=16, full=16)
        n_eval = self.by_mode(smoke=2, quick=32, full=64)
        lengths = [m * L for m in MULTS]
        self.config(train_len=L, eval_lengths=lengths, steps=steps, lr=self.args.lr, batch_size=batch, dim=dim,
                    n_layers=layers, n_heads=heads, rope_base=1e4, eval_sequences=n_eval, variants=variants,
                    schedule="cosine decay to 0.1·lr, no warmup (kata.tinylm.train_lm)")
        print(f"训练长度 L={L}，评估长度 {lengths}，每个长度 {n_eval} 段验证集片段（所有变体相同）。")

        curves = {v: {m: [] for m in MULTS} for v in variants}
        window = {v: {m: [] for m in MULTS} for v in variants}
        beyond = {v: {m: [] for m in MULTS} for v in variants}
        finals, diverged, n_params, tps = {v: [] for v in variants}, {}, {}, {v: [] for v in variants}
        printed = False
        for v in variants:
            for s in seeds:
                cfg = TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, dim=dim, n_layers=layers, n_heads=heads,
                                   max_seq_len=L, pos=v, rope_base=1e4)
                model, prov = build_tiny_lm(cfg, impl=self.impl, require=("rope", "sinusoidal_position_encoding"),
                                            seed=s)
                model.to(self.device)
                self.record_provenance({f"tinylm[{v}]": prov})
                if not printed and v in ("rope", "sinusoidal"):
                    print("位置编码的来源：" + "，".join(f"{k} ← {val}" for k, val in prov.items()
                                                        if k in ("rope", "sinusoidal_position_encoding")))
                    printed = True
                n_params[v] = count_parameters(model)
                res = train_lm(model, corpus, steps=steps, batch_size=batch, seq_len=L, lr=self.args.lr,
                               eval_every=None, eval_iters=self.by_mode(smoke=1, quick=4, full=8), seed=s,
                               device=self.device, progress=self.progress, desc=f"{names[v][1]} seed {s}")
                tps[v].append(res.tokens_per_sec)
                if res.diverged:
                    diverged.setdefault(v, []).append(res.diverged_at)
                    print(f"  {pad(names[v][0], 24)} seed {s}: 发散于第 {res.diverged_at} 步")
                    for m in MULTS:
                        window[v][m].append(float("nan"))
                        beyond[v][m].append(float("nan"))
                    continue
                finals[v].append(res.final_val_loss)
                row = []
                for m in MULTS:
                    T = m * L
                    try:
                        curve = per_position_loss(model, corpus, seq_len=T, n_seqs=n_eval,
                                                  batch_size=max(1, min(16, 4096 // T)), seed=1000 + m)
                    except ValueError:  # learned：超出位置表，不能外推——这是结果
                        curves[v][m].append(None)
                        window[v][m].append(None)
                        beyond[v][m].append(None)
                        row.append(f"{T}: 不能外推")
                        continue
                    w, b = window_and_beyond(curve, L)
                    curves[v][m].append(curve)
                    window[v][m].append(w)
                    beyond[v][m].append(b)
                    row.append(f"{T}: {w:.3f}")
                print(f"  {pad(names[v][0], 24)} seed {s}: " + "，".join(row) + f"（{res.wall_time_s:.0f} 秒）")

        # ---- 表格
        def cell(vals):
            if any(x is None for x in vals):
                return "不能外推"
            return fmt_mean_std(vals)

        rows = [[names[v][0]] + [cell(window[v][m]) for m in MULTS] for v in variants]
        self.print_table(["位置编码"] + [f"L={L}" if m == 1 else f"{m}L={m * L}" for m in MULTS], rows,
                         title=f"整个评估窗口的平均验证 loss（nats/字符，{len(seeds)} 个种子；只按字符频率猜 = {unigram:.3f}）")
        rows_b = [[names[v][0]] + [cell(beyond[v][m]) for m in MULTS[1:]] for v in variants]
        self.print_table(["位置编码"] + [f"{m}L 窗口里位置 ≥ {L}" for m in MULTS[1:]], rows_b,
                         title="只看训练时没见过的位置（≥ L）的平均 loss")
        ratio_rows = []
        for v in variants:
            if v == "learned" or v in diverged:
                continue
            base = _mean(window[v][1])
            ratio_rows.append([names[v][0]] + [f"×{math.exp(_mean(window[v][m]) - base):.2f}" for m in MULTS[1:]])
        self.print_table(["位置编码"] + [f"{m}L / L" for m in MULTS[1:]], ratio_rows,
                         title="本次：困惑度相对 L 的倍数 exp(loss_kL − loss_L)")
        press_rows = [[{"sinusoidal": "正弦（sinusoidal）", "rope": "旋转（rotary）", "alibi": "ALiBi"}[v]]
                      + [f"{p:g}" for p in PRESS_PPL[v]] + [f"×{PRESS_PPL[v][1] / PRESS_PPL[v][0]:.2f}",
                                                           f"×{PRESS_PPL[v][2] / PRESS_PPL[v][0]:.2f}"]
                      for v in ("sinusoidal", "rope", "alibi")]
        self.print_table(["位置编码"] + [str(n) for n in PRESS_LENGTHS] + ["≈2L / L", "≈5L / L"], press_rows,
                         title=f"对照：{PRESS_CITE}，困惑度")

        self._plot(curves, window, names, variants, L, seeds, unigram)
        if set(variants) == set(VARIANTS):
            text, verdict = write_conclusion(window, beyond, names, L, len(seeds), diverged, unigram,
                                             n_params.get("rope", 0))
        else:
            text, verdict = "只跑了部分变体（--variants），不做与论文的整体对照；看上面的表格和图。", {}
        self.conclude(text)
        return {"train_len": L, "eval_lengths": lengths, "window_loss": window, "beyond_L_loss": beyond,
                "per_position_loss": curves, "final_val_loss_at_L": {v: summarize(finals[v]) for v in variants},
                "diverged": diverged, "n_params": n_params, "tokens_per_sec": tps, "verdict": verdict,
                "unigram_baseline_val_loss": unigram, "press2022_table2": {"eval_lengths": PRESS_LENGTHS,
                                                                           "perplexity": PRESS_PPL}}

    def _plot(self, curves, window, names, variants, L, seeds, unigram):
        fig, axes = new_figure(1, 2, width=6.4, height=4.4)
        ax = axes[0, 0]
        for v in variants:
            xs, ys = [], []
            for m in MULTS:
                vals = window[v][m]
                if any(x is None for x in vals):
                    continue
                xs.append(m * L)
                ys.append(_mean(vals))
            kw = {"marker": "o", "linewidth": 1.6, "color": COLORS[v]}
            if v == "learned":
                kw.update(marker="s", markersize=8)
            ax.plot(xs, ys, label=label(names[v]), **kw)
        ax.axvline(L, color="gray", linestyle=":", linewidth=1)
        ax.axhline(unigram, color="gray", linestyle="--", linewidth=1,
                   label=label(("只按字符频率猜", "unigram baseline")) + f" = {unigram:.2f}")
        ax.set_xscale("log", base=2)
        ax.set_xticks([m * L for m in MULTS], [str(m * L) for m in MULTS])
        ax.set_xlabel(label(("评估长度（训练长度 L 处的虚线）", "evaluation length (dotted: training length L)")))
        ax.set_ylabel(label(("整个窗口的平均 loss", "mean loss over the window")))
        ax.set_title(label((f"外推：训练 L={L}，{len(seeds)} 个种子的均值", f"Extrapolation: trained at L={L}")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        ax = axes[0, 1]
        m = MULTS[-1]
        for v in variants:
            runs = [c for c in curves[v][m] if c is not None]
            if not runs:
                continue
            xs, ys = position_curve(runs)
            ax.plot(xs, ys, label=label(names[v]), linewidth=1.4, color=COLORS[v])
        ax.axvline(L, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel(label(("位置（虚线右边是训练时没见过的位置）", "position (right of dotted line: unseen)")))
        ax.set_ylabel(label(("该位置的平均 loss", "loss at this position")))
        ax.set_title(label((f"长 {m * L} 的窗口里，loss 随位置的变化", f"Loss by position in a {m * L}-long window")))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        self.save_figure(fig, "extrapolation")


if __name__ == "__main__":
    sys.exit(RopeVsAbsolute.main())
