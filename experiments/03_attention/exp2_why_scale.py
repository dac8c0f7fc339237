"""实验 2：为什么要除以 √D？

A. 论文的前提（Vaswani et al. 2017 §3.2.1）：q、k 的分量独立、方差为 1 时，q·k 的方差是 D。
   对 D = 4 … 256，用你的 scaled_dot_product_attention 在随机 q、k 上测：q·k 的方差、softmax 的熵、
   每行最大权重、以及梯度能穿过 softmax 多少（对 q 的梯度范数）——除以 √D 与不除各一次
   （不除：把 q 先乘上 √D 再交给你的函数，它除掉 √D 后正好是原始的 q·k）。
B. 真实训练：两种 head_dim（4 个头 × 16 维、1 个头 × 64 维，参数一样多）× 除 / 不除 √D，
   在 TinyShakespeare 上训练，记录初始化时和训练后的注意力熵、最大权重、q/k 投影的梯度范数和验证 loss。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”
sys.path.insert(0, str(Path(__file__).resolve().parent))

import math  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402

from _attention_tools import default_one_thread, entropy_of_rows, probe_attention  # noqa: E402
from kata.experiment import Experiment, compare_means, describe_gap, fmt_mean_std, summarize, mean_std_curve  # noqa: E402
from kata.plots import label, new_figure, plot_loss_curves  # noqa: E402

PAPER = "Vaswani et al. 2017 §3.2.1：q、k 的分量独立、均值 0、方差 1 时，q·k 的方差是 d_k；点积太大会把 softmax 推进梯度极小的区域，所以除以 √d_k"


# ---------------------------------------------------------------------------------------------
# A. 随机 q、k 上的 softmax 饱和
# ---------------------------------------------------------------------------------------------

def synthetic(sdpa, dims, n_keys: int, batch: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for D in dims:
        q = torch.randn(batch, 1, n_keys, D, generator=g, dtype=torch.float64)
        k = torch.randn(batch, 1, n_keys, D, generator=g, dtype=torch.float64)
        v = torch.randn(batch, 1, n_keys, D, generator=g, dtype=torch.float64)
        gout = torch.randn(batch, 1, n_keys, D, generator=g, dtype=torch.float64)
        eye = torch.eye(n_keys, dtype=torch.float64).expand(batch, 1, n_keys, n_keys)
        raw = q @ k.transpose(-2, -1)
        row = {"qk_var": float(raw.var()), "qk_var_expected": float(D)}
        for name, q_in in (("scaled", q), ("unscaled", q * math.sqrt(D))):
            with torch.no_grad():
                P = sdpa(q_in, k, eye)                       # 非因果：每行都有 n_keys 个 key
            leaf = q_in.clone().requires_grad_()
            (sdpa(leaf, k, v) * gout).sum().backward()
            # 两种情况下分数都是 leaf·kᵀ/√D，所以对 leaf 的梯度只差在 softmax 的雅可比 diag(P) − PPᵀ 上。
            # 看每个 query 各自收到的梯度 ‖∂L/∂q_t‖ 的中位数：饱和（接近 one-hot）的行几乎收不到梯度
            per_row = leaf.grad.norm(dim=-1).flatten()
            row[name] = {"entropy": float(entropy_of_rows(P).mean()),
                         "max_weight": float(P.max(-1).values.mean()),
                         "saturated_rows": float((P.max(-1).values > 0.99).double().mean()),
                         "grad_norm": float(per_row.median()),
                         "grad_norm_mean": float(per_row.mean())}
        out[D] = row
    return out


# ---------------------------------------------------------------------------------------------
# B. 训练时的测量
# ---------------------------------------------------------------------------------------------

def attention_stats(model, x) -> dict:
    """一个 batch 上所有层、所有头的平均熵 / 最大权重（只看有 ≥ 8 个可见 key 的 query）。"""
    record = {}
    was = model.training
    model.eval()
    with torch.no_grad(), probe_attention(model, record=record):
        model(x)
    model.train(was)
    ents, maxes = [], []
    for P in record.values():
        use = slice(min(8, P.size(-2) - 1), None)
        ents.append(float(entropy_of_rows(P[..., use, :]).mean()))
        maxes.append(float(P[..., use, :].max(-1).values.mean()))
    S = next(iter(record.values())).size(-1)
    uniform = statistics.fmean(math.log(i + 1) for i in range(min(8, S - 1), S))
    return {"entropy": statistics.fmean(ents), "uniform_entropy": uniform, "max_weight": statistics.fmean(maxes)}


def qk_grad_norm(model, x, y) -> float:
    """一次前向+反向，所有层 q_proj、k_proj 权重梯度的总 L2 范数（梯度能否流回“决定看哪里”的参数）。"""
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    total = 0.0
    for block in model.blocks:
        for lin in (block.self_attn.q_proj, block.self_attn.k_proj):
            total += float(lin.weight.grad.double().pow(2).sum())
    model.zero_grad(set_to_none=True)
    return math.sqrt(total)


def finals(runs):
    return [r["final_val_loss"] if r["diverged_at"] is None else float("nan") for r in runs]


def write_conclusion(syn: dict, results: dict, variants: list, n_seeds: int, steps: int) -> tuple[str, dict]:
    parts, verdict = [], {}
    dims = sorted(syn)
    big, small = dims[-1], dims[0]
    ratios = {D: syn[D]["qk_var"] / D for D in dims}
    verdict["qk_var_over_D"] = ratios
    parts.append(f"A. 随机 q、k（方差 1）：q·k 的方差 / D 在 {min(ratios.values()):.2f}–{max(ratios.values()):.2f} 之间"
                 f"（D = {', '.join(map(str, dims))}），与 {PAPER.split('：')[0]} 的推导“方差 = D”"
                 + ("一致。" if all(0.8 < r < 1.25 for r in ratios.values()) else "有出入（样本太少？）。"))
    u, s = syn[big]["unscaled"], syn[big]["scaled"]
    n_keys_ent = syn[big]["n_keys_entropy"]
    parts.append(f"不除 √D 时，D={big} 的 softmax 平均熵只有 {u['entropy']:.2f} nats（均匀分布是 {n_keys_ent:.2f}），"
                 f"每行最大权重平均 {u['max_weight']:.2f}——" + ("几乎是 one-hot" if u["max_weight"] > 0.9 else "明显更尖")
                 + f"；除以 √D 后熵 {s['entropy']:.2f}、最大权重 {s['max_weight']:.2f}，"
                 f"而且不随 D 变（D={small} 时 {syn[small]['scaled']['entropy']:.2f} / {syn[small]['scaled']['max_weight']:.2f}）。")
    g_ratio = u["grad_norm"] / s["grad_norm"]
    verdict["grad_ratio_unscaled_over_scaled_at_max_D"] = g_ratio
    verdict["saturated_rows_unscaled_at_max_D"] = u["saturated_rows"]
    if g_ratio < 0.5:
        parts.append(f"梯度：D={big} 不缩放时，{100 * u['saturated_rows']:.0f}% 的 query 把 99% 以上的权重给了同一个 key"
                     f"（缩放时 {100 * s['saturated_rows']:.0f}%）；每个 query 收到的梯度 ‖∂L/∂q‖ 的中位数只有缩放时的 {100 * g_ratio:.0f}%"
                     "——softmax 接近 one-hot 时它的雅可比 diag(p) − ppᵀ 趋于 0，梯度传不回去。这就是论文说的“梯度极小的区域”。"
                     f"（平均值没降这么多：{u['grad_norm_mean']:.3g} vs {s['grad_norm_mean']:.3g}——没饱和的少数行梯度反而很大，梯度变得极不均匀。）")
    else:
        parts.append(f"梯度：D={big} 时每个 query 收到的梯度中位数，不缩放 / 缩放 = {g_ratio:.2f}，这次没有看到论文说的梯度变小。")

    # B
    names = {v["key"]: v["label"] for v in variants}
    parts.append(f"B. 真实训练（{steps} 步，{n_seeds} 个种子）：")
    for hd in sorted({v["head_dim"] for v in variants}):
        ks, ku = f"hd{hd}_scaled", f"hd{hd}_unscaled"
        rs, ru = results[ks], results[ku]
        init_s = statistics.fmean(r["init_stats"]["entropy"] for r in rs)
        init_u = statistics.fmean(r["init_stats"]["entropy"] for r in ru)
        tr_s = statistics.fmean(r["trained_stats"]["entropy"] for r in rs if r["trained_stats"])
        tr_u = statistics.fmean(r["trained_stats"]["entropy"] for r in ru if r["trained_stats"])
        mx_s = statistics.fmean(r["trained_stats"]["max_weight"] for r in rs if r["trained_stats"])
        mx_u = statistics.fmean(r["trained_stats"]["max_weight"] for r in ru if r["trained_stats"])
        gs = statistics.fmean(r["grad_trained"] for r in rs if r["grad_trained"] is not None)
        gu = statistics.fmean(r["grad_trained"] for r in ru if r["grad_trained"] is not None)
        uni = rs[0]["init_stats"]["uniform_entropy"]
        verdict[f"hd{hd}"] = {"entropy_init": [init_s, init_u], "entropy_trained": [tr_s, tr_u],
                              "max_weight_trained": [mx_s, mx_u], "qk_grad_trained": [gs, gu]}
        line = (f"head_dim={hd}：初始化时熵 {init_s:.2f}（除 √D）vs {init_u:.2f}（不除），均匀分布是 {uni:.2f}")
        if abs(init_s - init_u) < 0.1 * uni:
            line += "——这个小模型的权重初始化得很小（N(0, 0.02)），q·k 本来就接近 0，刚开始缩不缩放差别不大；"
        else:
            line += "——不缩放时初始化就已经更“尖”了；"
        line += (f"训练后熵 {tr_s:.2f} vs {tr_u:.2f}，每行最大权重 {mx_s:.2f} vs {mx_u:.2f}，"
                 f"q/k 投影的梯度范数 {gs:.3g} vs {gu:.3g}。")
        parts.append(line)
        parts.append("  " + describe_gap(finals(rs), finals(ru), names[ks], names[ku], spread_note=n_seeds > 1, tie=0.005))
        verdict[f"hd{hd}"]["val_loss"] = compare_means(finals(rs), finals(ru))
    sharper = {hd: verdict[f"hd{hd}"]["entropy_trained"][0] - verdict[f"hd{hd}"]["entropy_trained"][1]
               for hd in sorted({v["head_dim"] for v in variants})}
    hd_sorted = sorted(sharper)
    if all(d > 0.05 for d in sharper.values()):
        parts.append("训练后，不缩放的模型注意力更尖（熵更低、最大权重更大）"
                     + (f"，而且 head_dim 越大越明显（熵差 {sharper[hd_sorted[0]]:.2f} → {sharper[hd_sorted[-1]]:.2f}）"
                        if sharper[hd_sorted[-1]] > sharper[hd_sorted[0]] + 0.05 else "")
                     + "：正是 q·k 的方差随 D 增长的后果。q/k 投影的梯度反而更大，是因为分数对 W_q、W_k 的导数少了 1/√D 这个因子，"
                       "不代表学得更好。")
    else:
        parts.append("训练后，不缩放的模型注意力并不总是明显更尖：" + "，".join(
            f"head_dim={hd} 熵差（除 − 不除）{d:+.2f}" for hd, d in sharper.items()) + "。")
    gap = {hd: compare_means(finals(results[f"hd{hd}_scaled"]), finals(results[f"hd{hd}_unscaled"]))["diff"]
           for hd in sorted({v["head_dim"] for v in variants})}
    hds = sorted(gap)
    if all(math.isfinite(g) for g in gap.values()):
        if gap[hds[-1]] > gap[hds[0]] + 0.01:
            ex = verdict[f"hd{hds[-1]}"]["val_loss"]["exceeds_spread"]
            parts.append(f"head_dim 越大，不缩放的代价越大（验证 loss 差 {gap[hds[0]]:+.3f} → {gap[hds[-1]]:+.3f}），"
                         "与“方差随 D 增长”的推导方向一致"
                         + ({True: "，而且 head_dim=" + str(hds[-1]) + " 的差距超过了种子间波动。",
                             False: "；不过 head_dim=" + str(hds[-1]) + " 的差距还没有超过种子间波动，只能算方向上的迹象。",
                             None: "（只有 1 个种子，还不能排除随机波动）。"}[ex]))
        else:
            parts.append(f"验证 loss 的差距没有随 head_dim 变大（{gap[hds[0]]:+.3f} → {gap[hds[-1]]:+.3f}）："
                         "在这么小、训练这么短的模型里，网络可以把 W_q、W_k 学得小一点来补偿缺失的 1/√D——"
                         "A 部分的饱和在“方差为 1”的前提下才会出现；大模型、长训练时 q、k 的量级会长大，那时缩放才显出必要。")
    return "\n".join(parts), verdict


class WhyScale(Experiment):
    name = "exp2_why_scale"
    module = "03_attention"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "它测的是除不除 √D 对注意力熵、梯度和训练稳定性的影响，这是优化层面的现象，不依赖语料是不是真实英文"
    title = "实验 2：为什么注意力分数要除以 √D？"
    description = (
        "A：随机 q、k 上，用你的 scaled_dot_product_attention 比较除 / 不除 √D 时 softmax 的熵、最大权重和梯度（D = 4…256）。\n"
        "B：TinyShakespeare 上训练 head_dim 16 与 64 的小模型，各有除 / 不除 √D 两个版本（完整模式 3 个种子）。\n"
        "对应 teaching.md §2.2。"
    )
    requires = ("scaled_dot_product_attention",)

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="B 部分的训练步数（默认：快速 200，完整 300）")
        parser.add_argument("--layers", type=int, default=2, help="B 部分的层数（默认 2）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3）")

    def run(self):
        from kata.tinylm import TinyLMConfig, build_tiny_lm, train_lm

        threads = default_one_thread(self)
        sdpa = self.component("scaled_dot_product_attention")
        dims = self.by_mode(smoke=[4, 16], quick=[4, 16, 64, 256], full=[4, 16, 64, 256])
        n_keys = self.by_mode(smoke=16, quick=64, full=64)
        syn = synthetic(sdpa, dims, n_keys=n_keys, batch=self.by_mode(smoke=4, quick=32, full=64), seed=self.seed)
        for D in dims:
            syn[D]["n_keys_entropy"] = math.log(n_keys)
        self.print_table(
            ["D", "q·k 的方差", "熵 除√D / 不除", "最大权重 除√D / 不除", "饱和的行 除√D / 不除", "每行梯度中位数 除√D / 不除"],
            [[D, f"{syn[D]['qk_var']:.1f}（推导 {D}）",
              f"{syn[D]['scaled']['entropy']:.2f} / {syn[D]['unscaled']['entropy']:.2f}",
              f"{syn[D]['scaled']['max_weight']:.2f} / {syn[D]['unscaled']['max_weight']:.2f}",
              f"{100 * syn[D]['scaled']['saturated_rows']:.0f}% / {100 * syn[D]['unscaled']['saturated_rows']:.0f}%",
              f"{syn[D]['scaled']['grad_norm']:.3g} / {syn[D]['unscaled']['grad_norm']:.3g}"] for D in dims],
            title=f"A. 随机 q、k（分量 ~N(0,1)），{n_keys} 个 key，均匀分布的熵 = {math.log(n_keys):.2f} nats；"
                  "饱和 = 最大权重 > 0.99；梯度 = 每个 query 的 ‖∂L/∂q_t‖")

        corpus = self.load_corpus()
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=3, quick=200, full=300)
        layers = self.by_mode(smoke=2, quick=self.args.layers, full=self.args.layers)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        dim = self.by_mode(smoke=32, quick=64, full=64)
        head_dims = self.by_mode(smoke=[8, 32], quick=[16, 64], full=[16, 64])
        variants = []
        for hd in head_dims:
            for scaled in (True, False):
                variants.append({"key": f"hd{hd}_{'scaled' if scaled else 'unscaled'}", "head_dim": hd,
                                 "n_heads": dim // hd, "scaled": scaled,
                                 "label": f"head_dim={hd}，{'除以 √D' if scaled else '不除 √D'}",
                                 "label_en": f"head_dim={hd}, {'scaled' if scaled else 'unscaled'}"})
        self.config(synthetic={"dims": dims, "n_keys": n_keys}, steps=steps, lr=self.args.lr, dim=dim, n_layers=layers,
                    batch_size=batch, seq_len=seq_len, variants=[{k: v[k] for k in ("key", "n_heads", "head_dim", "scaled")}
                                                                   for v in variants], threads=threads)
        gen = torch.Generator().manual_seed(4321)
        x_fixed, y_fixed = corpus.get_batch("val", batch, seq_len, generator=gen, device=self.device)
        results = {v["key"]: [] for v in variants}
        first = True
        for v in variants:
            for s in seeds:
                cfg = TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, dim=dim, n_layers=layers, n_heads=v["n_heads"],
                                   max_seq_len=seq_len, attn_scale=v["scaled"])
                model, prov = build_tiny_lm(cfg, impl=self.impl, require=("scaled_dot_product_attention",), seed=s)
                model.to(self.device)
                self.record_provenance({f"tinylm[{v['key']}]": prov})
                if first:
                    print("模型各部件的来源（除以 √D 的变体）：" + "，".join(f"{k} ← {val}" for k, val in prov.items()))
                    first = False
                init_stats = attention_stats(model, x_fixed)
                grad_init = qk_grad_norm(model, x_fixed, y_fixed)
                res = train_lm(model, corpus, steps=steps, batch_size=batch, seq_len=seq_len, lr=self.args.lr,
                               eval_every=max(1, steps // 10), eval_iters=self.by_mode(smoke=2, quick=8, full=10),
                               seed=s, device=self.device, progress=self.progress, desc=f"{v['label_en']} seed {s}")
                d = res.to_dict()
                d.update(seed=s, init_stats=init_stats, grad_init=grad_init, trained_stats=None, grad_trained=None)
                if res.diverged_at is None:
                    d["trained_stats"] = attention_stats(model, x_fixed)
                    d["grad_trained"] = qk_grad_norm(model, x_fixed, y_fixed)
                results[v["key"]].append(d)
                state = f"发散于第 {res.diverged_at} 步" if res.diverged_at is not None else f"val loss {res.final_val_loss:.3f}"
                print(f"  {v['label']} seed {s}: {state}，{res.wall_time_s:.1f} 秒")

        rows = []
        for v in variants:
            rs = results[v["key"]]
            ok = [r for r in rs if r["trained_stats"]]
            rows.append([v["label"], fmt_mean_std(finals(rs)),
                         f"{statistics.fmean(r['init_stats']['entropy'] for r in rs):.2f} → "
                         + (f"{statistics.fmean(r['trained_stats']['entropy'] for r in ok):.2f}" if ok else "—"),
                         f"{statistics.fmean(r['trained_stats']['max_weight'] for r in ok):.2f}" if ok else "—",
                         f"{statistics.fmean(r['grad_init'] for r in rs):.3g} → "
                         + (f"{statistics.fmean(r['grad_trained'] for r in ok):.3g}" if ok else "—")])
        uni = results[variants[0]["key"]][0]["init_stats"]["uniform_entropy"]
        self.print_table(["变体", f"验证 loss（{len(seeds)} 个种子）", "熵 初始→训练", "训练后最大权重", "q/k 梯度 初始→训练"],
                         rows, title=f"B. {corpus.name}，dim={dim}，{layers} 层，{steps} 步（均匀分布的熵 = {uni:.2f}）")
        self._plot(syn, dims, results, variants, seeds)
        text, verdict = write_conclusion(syn, results, variants, len(seeds), steps)
        self.conclude(text)
        return {"synthetic": {str(D): syn[D] for D in dims}, "runs": results, "verdict": verdict,
                "final_val_loss": {k: summarize(finals(rs)) for k, rs in results.items()}}

    def _plot(self, syn, dims, results, variants, seeds):
        fig, axes = new_figure(1, 3, width=4.8, height=3.8)
        for ax, key, ttl in [(axes[0, 0], "entropy", ("softmax 的熵（nats）", "softmax entropy (nats)")),
                             (axes[0, 1], "max_weight", ("每行最大权重", "max weight per row")),
                             (axes[0, 2], "grad_norm", ("每个 query 的梯度（中位数）", "median per-query grad wrt q"))]:
            for name, zh, en in (("scaled", "除以 √D", "scaled by 1/√D"), ("unscaled", "不除", "unscaled")):
                ax.plot(dims, [syn[D][name][key] for D in dims], marker="o", label=label((zh, en)))
            if key == "entropy":
                ax.axhline(syn[dims[0]]["n_keys_entropy"], color="gray", linestyle="--", label=label(("均匀", "uniform")))
            ax.set_xscale("log", base=2)
            if key == "grad_norm":
                ax.set_yscale("log")
            ax.set_xlabel("D (head_dim)")
            ax.set_title(label(ttl))
            ax.legend(fontsize="small")
            ax.grid(True, alpha=0.3)
        fig.suptitle(label(("A. 随机 q、k：不缩放时 softmax 随 D 饱和", "A. Random q, k: without scaling softmax saturates as D grows")))
        fig.tight_layout()
        self.save_figure(fig, "synthetic")

        curves = {}
        for v in variants:
            rs = results[v["key"]]
            steps, mean, std = mean_std_curve(rs)
            curves[(v["label"], v["label_en"])] = (steps, mean, std) if len(rs) > 1 else (steps, mean)
        fig = plot_loss_curves(curves, title=("B. 验证 loss", "B. Validation loss"),
                               ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"),
                               styles={(v["label"], v["label_en"]): {"linestyle": "-" if v["scaled"] else "--"}
                                       for v in variants})
        self.save_figure(fig, "val_loss")


if __name__ == "__main__":
    sys.exit(WhyScale.main())
