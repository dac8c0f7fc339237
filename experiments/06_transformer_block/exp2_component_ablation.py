"""实验 2（毕业实验）：每个设计选择值多少？

完整的 MiniMind 块（RMSNorm、Pre-Norm、RoPE、SwiGLU、GQA、残差）对照“只改一处”的 8 个变体：

  LayerNorm 代替 RMSNorm │ 不归一化 │ NoPE（不加位置编码）│ 可学习的绝对位置代替 RoPE
  ReLU-MLP 代替 SwiGLU（参数量相同）│ 只有 1 个头 │ MQA（1 个 KV 头）│ 去掉残差

全部用 kata.tinylm 搭（你写的 RMSNorm / RoPE / 注意力 / repeat_kv / FeedForward，其余消融部件在 tinylm 里），
在 TinyShakespeare 上用同样的初始化种子、同样的数据顺序、同样的学习率训练；完整模式每个变体 3 个种子，
报告验证 loss 的 均值 ± 标准差、参数量、耗时，最后一张表 + 一张条形图。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402
import statistics  # noqa: E402

from kata.experiment import Experiment, compare_means, fmt_mean_std, summarize, unigram_baseline  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402
from kata.arms import Arm, run_arms  # noqa: E402

# 名字 → (中文, English, 相对完整块要改的 TinyLMConfig 字段, 预期方向, 出处)
# 预期方向："worse" 更差 / "similar" 相当 / "similar_or_worse" 相当或更差 / "much_worse" 差得最多
VARIANTS = {
    "full": ("完整 MiniMind 块", "full MiniMind block", {}, None, ""),
    "layernorm": ("LayerNorm 代替 RMSNorm", "LayerNorm", {"norm": "layernorm"}, "similar",
                  "Zhang & Sennrich 2019：RMSNorm 与 LayerNorm 效果相当"),
    "no_norm": ("不归一化", "no norm", {"norm": "none"}, "worse", "模块 01 实验 2"),
    "nope": ("NoPE（没有位置编码）", "NoPE", {"pos": "nope"}, "worse",
             "Haviv 等 2022：因果 LM 没有位置编码也能训练，但略差，WikiText-103 困惑度 NoPos 20.97 vs learned 20.42"),
    "learned": ("可学习绝对位置代替 RoPE", "learned absolute", {"pos": "learned"}, "similar_or_worse",
                "训练长度以内两者都能表示位置，但可学习的位置向量要从随机初始化学起，步数少时会落后；"
                "RoPE 的主要优势在相对位置与外推，见模块 02"),
    "relu": ("ReLU-MLP 代替 SwiGLU", "ReLU MLP", {"ffn": "relu"}, "worse",
             "Shazeer 2020 表 1：同参数量下 log-perplexity ReLU 1.997 vs SwiGLU 1.944"),
    "one_head": ("只有 1 个头", "1 head", {"n_heads": 1, "n_kv_heads": None}, "worse",
                 "Vaswani 等 2017 表 3 A 行：h=1 困惑度 5.29 vs h=8 4.92"),
    "mqa": ("MQA（1 个 KV 头）", "MQA", {"n_kv_heads": 1}, "similar",
            "Ainslie 等 2023 表 1：平均分 MQA 46.6、MHA 47.2、GQA-8 47.1，只差一点"),
    "no_residual": ("去掉残差", "no residual", {"residual": False}, "much_worse",
                    "He 等 2016；Dong 等 2021：没有残差，深层网络难以训练、注意力输出秩塌缩"),
}
# 某个改动在小模型上几乎不影响 loss 时，MiniMind 的选择价值在哪里（都有出处，见 teaching.md §7）
VALUE_NOTE = {
    "layernorm": "RMSNorm 去掉了减均值，Zhang & Sennrich 2019 报告运行时间少 7%–64%",
    "mqa": "GQA / MQA 让 KV cache 只存 KVH 个头（MiniMind2 是 8 个 query 头里的 2 个），生成时省显存和带宽",
    "one_head": "多头让不同的头关注不同的位置关系，Vaswani 等 2017 表 3 A 行里 1 个头明显更差",
    "learned": "RoPE 编码的是相对位置，还能外推到训练长度之外（模块 02），可学习的绝对位置做不到",
    "nope": "RoPE 让注意力直接看到相对位置，而不是靠因果掩码间接推断",
    "relu": "SwiGLU 在大模型、长训练上更好（Shazeer 2020 表 1：ReLU 1.997 vs SwiGLU 1.944）",
}
BASE = dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, norm="rmsnorm", norm_position="pre", pos="rope",
            ffn="swiglu", residual=True)
REQUIRED = ("RMSNorm", "rope", "scaled_dot_product_attention", "repeat_kv", "FeedForward")
TIE = {"full": 0.02, "quick": 0.05, "smoke": 0.05}   # |Δ| 不超过它就算“相当”（1 个种子时没有波动可比，门槛放宽）


def mixed(text: str) -> str:
    """中英文混排：以 ASCII 开头 / 结尾的名字两侧补空格（“从 LayerNorm 代替 RMSNorm 的”），汉字一侧不补。"""
    return (" " if text[:1].isascii() else "") + text + (" " if text[-1:].isascii() else "")


def final_losses(runs: list) -> list:
    return [r["final_val_loss"] if r["diverged_at"] is None else float("nan") for r in runs]


def classify(full: list, other: list, tie: float) -> tuple[str, dict]:
    """'worse' / 'better' / 'similar' / 'diverged'，以及 compare_means 的数字。"""
    c = compare_means(full, other)
    if summarize(other)["n"] == 0:
        return "diverged", c
    if not math.isfinite(c["diff"]) or abs(c["diff"]) <= tie or c["exceeds_spread"] is False:
        return "similar", c
    return ("worse" if c["diff"] > 0 else "better"), c


def write_conclusion(variants: dict, results: dict, n_params: dict, times: dict, n_seeds: int, steps: int,
                     lr: float, unigram: float, mode: str) -> tuple[str, dict]:
    """由数字决定措辞的结论。variants 是实际跑了的那些（--only 时是子集）。"""
    tie = TIE[mode]
    full = final_losses(results["full"])
    s_full = summarize(full)
    parts, verdict = [], {"tie": tie, "variants": {}}
    parts.append(f"{steps} 步、学习率 {lr:g}、{n_seeds} 个种子；完整 MiniMind 块的最终验证 loss {fmt_mean_std(full)}"
                 f"（只按字符频率猜是 {unigram:.3f}）。以 |Δ| ≤ {tie} 或差距没有超过种子间波动为“相当”。")
    others = [k for k in variants if k != "full"]
    judged = {k: classify(full, final_losses(results[k]), tie) for k in others}
    deltas = {k: c["diff"] for k, (_, c) in judged.items()}
    finite = [d for d in deltas.values() if math.isfinite(d)]
    agree, disagree = [], []
    for k in others:
        zh, _, _, expected, source = variants[k]
        kind, c = judged[k]
        div = [r["diverged_at"] for r in results[k] if r["diverged_at"] is not None]
        what = {"worse": f"更差（Δ = +{c['diff']:.3f}）", "better": f"更好（Δ = {c['diff']:.3f}）",
                "similar": f"相当（Δ = {c['diff']:+.3f}）", "diverged": "全部发散"}[kind]
        if div and kind != "diverged":
            what += f"，另有 {len(div)} 个种子发散"
        if expected == "similar":
            ok = kind == "similar"
        elif expected == "worse":
            ok = kind in ("worse", "diverged")
        elif expected == "similar_or_worse":
            ok = kind in ("similar", "worse", "diverged")
        else:  # much_worse：要比其余所有改动都差
            ok = kind == "diverged" or (kind == "worse" and c["diff"] >= max(finite))
        exp_text = {"worse": "预期更差", "much_worse": "预期差得最多", "similar": "预期相当",
                    "similar_or_worse": "预期相当或略差"}[expected]
        (agree if ok else disagree).append(zh)
        verdict["variants"][k] = {"result": kind, "expected": expected, "agrees": ok, "delta": c["diff"],
                                  "exceeds_spread": c["exceeds_spread"], "n_params": n_params[k]}
        parts.append(f"· {zh}：{what}；{exp_text}（{source}）——{'一致' if ok else '不一致'}。")
    ranked = sorted(((d, k) for k, d in deltas.items() if math.isfinite(d)), reverse=True)
    top = "、".join(f"{variants[k][0]}（+{d:.3f}）" for d, k in ranked[:3] if d > tie)
    if top:
        parts.append(f"代价最大的改动：{top}。")
    cheap = [k for d, k in ranked if abs(d) <= tie]
    if cheap:
        notes = "；".join(VALUE_NOTE[k] for k in cheap if k in VALUE_NOTE)
        parts.append(f"在这个规模上几乎不影响 loss 的：{'、'.join(variants[k][0] for k in cheap)}。"
                     + (f"MiniMind 的选择在这些地方的价值主要不在小模型的 loss 上：{notes}。" if notes else ""))
    verdict["agree"], verdict["disagree"] = agree, disagree
    if disagree:
        again = "用完整模式（3 个种子）再看。" if n_seeds == 1 else "想确认，可以用 --steps 加长训练、--n-seeds 多跑几个种子。"
        flipped = [variants[k][0] for k in others
                   if not verdict["variants"][k]["agrees"] and judged[k][0] == "better"]
        hidden = [variants[k][0] for k in others
                  if not verdict["variants"][k]["agrees"] and judged[k][0] != "better"]
        text = ""
        if flipped:
            text += (f"测到的方向与预期相反（反而更好）的：{'、'.join(flipped)}。论文的结论是在大得多的模型、"
                     "长得多的训练上得出的；在这个 4 层、几百步的小模型上，方向可以不同。")
        if hidden:
            text += (f"预期会有差别、这里却没有测出来（或方向不同）的：{'、'.join(hidden)}。这类弱效应（百分之几 nat）"
                     "在小模型、短训练里很容易被种子间的波动盖住。")
        parts.append(text + again)
    elif others:
        parts.append("所有变体的方向都与预期一致。")
    full_p = n_params["full"]
    pdiff = [f"{variants[k][0]} {n_params[k] - full_p:+,}" for k in others if n_params[k] != full_p]
    if pdiff:
        parts.append(f"参数量（完整块 {full_p:,}）的变化：{'；'.join(pdiff)}。"
                     + ("ReLU-MLP 把隐层加宽到 1.5 倍，让两矩阵 MLP 与三矩阵 SwiGLU 参数相同（Shazeer 2020 的做法）。"
                        if "relu" in others and n_params["relu"] == full_p else ""))
    fast, slow = min(times, key=times.get), max(times, key=times.get)
    parts.append(f"训练耗时（每个种子的中位数）从{mixed(variants[fast][0])}的 {times[fast]:.1f} 秒到{mixed(variants[slow][0])}的 "
                 f"{times[slow]:.1f} 秒；机器同时在跑别的任务时，耗时只能粗看。")
    if s_full["n"] and s_full["mean"] > unigram - 0.05:
        parts.append("注意：完整块本身都没有明显低于“只按字符频率猜”的水平，步数太少，上面的比较说明不了什么。")
    return "\n".join(parts), verdict


class ComponentAblation(Experiment):
    name = "exp2_component_ablation"
    module = "06_transformer_block"
    can_use_synthetic = False  # 拿不到 TinyShakespeare 时不改用合成语料
    synthetic_reason = "每个设计选择值多少要与真实文本上的经验对照；多项差距只有几百分之一 nat，合成语料上的排序说明不了真实语言的情况"
    title = "实验 2（毕业实验）：每个设计选择值多少——完整 MiniMind 块 vs 只改一处"
    description = (
        "完整的 MiniMind 块对照 8 个“只改一处”的变体（LayerNorm、不归一化、NoPE、可学习绝对位置、ReLU-MLP、\n"
        "1 个头、MQA、去掉残差），同样的初始化、数据和学习率，在 TinyShakespeare 上比较验证 loss（完整模式 3 个种子，\n"
        "均值 ± 标准差）、参数量与耗时。部件来自你的模块 01–04。对应 teaching.md §7。"
    )
    requires = ("RMSNorm", "precompute_freqs_cis", "scaled_dot_product_attention", "repeat_kv", "FeedForward")

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 150，完整 250）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3，所有变体相同，不加 warmup）")
        parser.add_argument("--only", nargs="+", choices=[k for k in VARIANTS if k != "full"], default=None,
                            metavar="VARIANT", help="只跑这几个变体（和完整块比）：" + " ".join(k for k in VARIANTS if k != "full"))

    def run(self):
        from kata.tinylm import TinyLMConfig, build_tiny_lm, train_lm

        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=3, quick=150, full=250)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        eval_every = max(1, steps // self.by_mode(smoke=1, quick=3, full=5))
        eval_iters = self.by_mode(smoke=2, quick=8, full=16)
        lr = self.args.lr
        base = dict(BASE, dim=self.by_mode(smoke=32, quick=64, full=64), n_layers=self.by_mode(smoke=2, quick=4, full=4))
        keys = ["full"] + (self.args.only or [k for k in VARIANTS if k != "full"])
        variants = {k: VARIANTS[k] for k in keys}
        self.config(base=base, steps=steps, lr=lr, warmup_steps=0, grad_clip=1.0, batch_size=batch, seq_len=seq_len,
                    eval_every=eval_every, eval_iters=eval_iters, variants={k: v[2] for k, v in variants.items()},
                    schedule="cosine decay to 0.1·lr, no warmup (kata.tinylm.train_lm)")

        # 先空跑几步：第一次训练要分配内存、预热算子，不热身的话第一个变体的耗时会偏大
        warm, _ = build_tiny_lm(TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, max_seq_len=seq_len, **base),
                                impl=self.impl, require=REQUIRED, seed=0)
        train_lm(warm.to(self.device), corpus, steps=2, batch_size=batch, seq_len=seq_len, lr=lr, eval_iters=1,
                 seed=0, device=self.device, progress=False)
        arms = [Arm(k, zh, en, change) for k, (zh, en, change, _, _) in variants.items()]
        run_arms(self, corpus, arms, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=lr, base_cfg=base,
                 require=REQUIRED, eval_every=eval_every, eval_iters=eval_iters)
        results = {a.key: a.runs for a in arms}
        n_params = {a.key: a.n_params for a in arms}
        times = {a.key: statistics.median(r["wall_time_s"] for r in a.runs) for a in arms}

        self._plot(results, variants, seeds, unigram)
        full_mean = summarize(final_losses(results["full"]))["mean"]
        rows = []
        for k, (zh, *_rest) in variants.items():
            s = summarize(final_losses(results[k]))
            delta = "—" if k == "full" else (f"{s['mean'] - full_mean:+.3f}" if s["n"] else "发散")
            rows.append([zh, f"{n_params[k]:,}", fmt_mean_std(final_losses(results[k])), delta,
                         f"{times[k]:.1f}", f"{statistics.median(r['tokens_per_sec'] for r in results[k]):,.0f}"])
        self.print_table(["变体", "参数量", f"最终验证 loss（{len(seeds)} 个种子）", "Δ vs 完整块", "耗时/种子（秒）",
                          "tokens/s"], rows, title="每个设计选择值多少")
        text, verdict = write_conclusion(variants, results, n_params, times, len(seeds), steps, lr, unigram, self.mode)
        self.conclude(text)
        return {"unigram_baseline_val_loss": unigram, "runs": results, "n_params": n_params,
                "wall_time_median_s": times, "verdict": verdict,
                "final_val_loss": {k: summarize(final_losses(results[k])) for k in variants}}

    def _plot(self, results, variants, seeds, unigram):
        import numpy as np

        keys = list(variants)
        means = [summarize(final_losses(results[k]))["mean"] for k in keys]
        stds = [summarize(final_losses(results[k]))["std"] or 0.0 for k in keys]
        order = sorted(range(len(keys)), key=lambda i: (math.isfinite(means[i]), means[i] if math.isfinite(means[i]) else 0))
        order = [i for i in order if math.isfinite(means[i])]
        fig, axes = new_figure(1, 1, width=8.0, height=0.45 * len(keys) + 1.6)
        ax = axes[0, 0]
        y = np.arange(len(order))
        full = final_losses(results["full"])
        kind = {k: ("full" if k == "full" else classify(full, final_losses(results[k]), TIE[self.mode])[0]) for k in keys}
        palette = {"full": "C0", "worse": "C3", "better": "C2", "similar": "C7", "diverged": "C3"}
        colors = [palette[kind[keys[i]]] for i in order]
        ax.barh(y, [means[i] for i in order], xerr=[stds[i] for i in order], color=colors, alpha=0.85, capsize=3)
        ax.set_yticks(y)
        ax.set_yticklabels([label((variants[keys[i]][0], variants[keys[i]][1])) for i in order])
        full_mean = means[keys.index("full")]
        if math.isfinite(full_mean):
            ax.axvline(full_mean, color="C0", linestyle="--", linewidth=1)
        ax.axvline(unigram, color="gray", linestyle=":", linewidth=1)
        lo = min(means[i] - stds[i] for i in order) if order else 0
        hi = max([means[i] + stds[i] for i in order] + [unigram]) if order else 1
        ax.set_xlim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.12 * (hi - lo + 1e-9))
        for yy, i in zip(y, order):
            ax.text(means[i] + stds[i], yy, f"  {means[i]:.3f}", va="center", fontsize=8)
        ax.set_xlabel(label(("最终验证 loss（nats/字符，越低越好）", "final validation loss (nats/char, lower is better)")))
        ax.set_title(label((f"每个设计选择值多少（{len(seeds)} 个种子" + ("，均值 ± 标准差）" if len(seeds) > 1 else "）")
                            + "\n红 = 更差，绿 = 更好，灰 = 相当；点线 = 只按字符频率猜",
                            f"What each design choice is worth ({len(seeds)} seed(s))"
                            "\nred = worse, green = better, grey = similar; dotted = unigram baseline")))
        ax.invert_yaxis()
        missing = [variants[keys[i]][1] for i in range(len(keys)) if i not in order]
        if missing:
            ax.text(0.99, 0.01, "diverged: " + ", ".join(missing), transform=ax.transAxes, ha="right", fontsize=8)
        self.save_figure(fig, "ablation")


if __name__ == "__main__":
    sys.exit(ComponentAblation.main())
