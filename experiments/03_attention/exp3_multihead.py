"""实验 3：为什么要多头？——1 / 2 / 4 / 8 个头（参数量相同），以及“去掉一个头会怎样”。

A. dim=64、2 层固定，头数 1 / 2 / 4 / 8（head_dim = 64 / 32 / 16 / 8）。q/k/v/o 投影都是 64×64，
   所以四个模型的参数量完全一样，只差“把 64 维切成几份各自做注意力”。比较验证 loss
   （Vaswani et al. 2017 Table 3 row A：1 个头比 8 个头差）。
B. 在训练好的 4 头模型上，每次把一个头的输出置零（softmax·v 之后、o_proj 之前），看验证 loss 涨多少；
   再按“单独去掉时影响最小”的顺序一次去掉 25% / 50% 的头（Michel et al. 2019：很多头可以去掉）。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”
sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402

from _attention_tools import default_one_thread, probe_attention  # noqa: E402
from kata.arms import Arm, final_values, run_arms  # noqa: E402
from kata.experiment import (Experiment, compare_means, describe_gap, fmt_mean_std, summarize, mean_std_curve,  # noqa: E402
                             unigram_baseline)
from kata.plots import label, new_figure, plot_loss_curves  # noqa: E402

VASWANI = ("Vaswani et al. 2017 Table 3 row A（dev 困惑度）：1 个头 5.29，4 个头 5.00，8 个头 4.92，16 个头 4.91，32 个头 5.01"
           "——1 个头最差，头太多（每个头的维度太小）也会变差")
MICHEL = "Michel et al. 2019（Are Sixteen Heads Really Better than One?）：测试时去掉 20%（WMT）到 40%（BERT）的头，效果没有明显下降"


finals = final_values


@torch.no_grad()
def masked_val_loss(model, batches, mask) -> float:
    """固定的验证 batch 上的平均交叉熵；mask 为 [n_layers, n_heads] 的 0/1（None = 不屏蔽）。"""
    was = model.training
    model.eval()
    total = 0.0
    ctx = probe_attention(model, head_mask=mask) if mask is not None else contextlib.nullcontext()
    with ctx:
        for x, y in batches:
            total += float(model(x, y)[1])
    model.train(was)
    return total / len(batches)


def ablate(model, batches, layers: int, heads: int) -> dict:
    base = masked_val_loss(model, batches, None)
    single = torch.zeros(layers, heads)
    for l in range(layers):
        for h in range(heads):
            mask = torch.ones(layers, heads)
            mask[l, h] = 0
            single[l, h] = masked_val_loss(model, batches, mask) - base
    order = sorted(((float(single[l, h]), l, h) for l in range(layers) for h in range(heads)))
    pruned = {}
    for frac in (0.25, 0.5):
        n = int(round(frac * layers * heads))
        mask = torch.ones(layers, heads)
        for _, l, h in order[:n]:
            mask[l, h] = 0
        pruned[frac] = {"n_heads_removed": n, "delta": masked_val_loss(model, batches, mask) - base,
                        "removed": [f"L{l}H{h}" for _, l, h in order[:n]]}
    layer_drop = {}
    for l in range(layers):
        mask = torch.ones(layers, heads)
        mask[l] = 0
        layer_drop[l] = masked_val_loss(model, batches, mask) - base
    return {"base_val_loss": base, "single": single.tolist(), "pruned": pruned, "whole_layer": layer_drop}


def write_conclusion(results: dict, head_counts: list, abl: dict, n_seeds: int, steps: int, unigram: float,
                     threshold: float, dim: int) -> tuple[str, dict]:
    parts, verdict = [], {}
    loss = {h: finals(results[h]) for h in head_counts}
    means = {h: summarize(loss[h])["mean"] for h in head_counts}
    best = min((h for h in head_counts if math.isfinite(means[h])), key=means.get)
    multi = n_seeds > 1
    parts.append(f"A. {steps} 步、{n_seeds} 个种子，验证 loss：" + "，".join(f"{h} 个头 {fmt_mean_std(loss[h])}" for h in head_counts)
                 + f"（只按字符频率猜：{unigram:.3f}）。")
    if 1 in head_counts and best != 1:
        c = compare_means(loss[best], loss[1])
        verdict["one_head_gap"] = c
        parts.append(describe_gap(loss[best], loss[1], f"{best} 个头", "1 个头", spread_note=multi))
        why = (f"参数量一样，差别只在“一个 {dim} 维的注意力” vs “{best} 个 {dim // best} 维的注意力”："
               "一个头只能给每个位置一种加权平均，多个头可以同时看不同的地方（前一个字符、本词开头、上一行……）。")
        if abs(c["diff"]) < 0.01:
            parts.append(f"两者相差不到 0.01，这次看不出区别（{VASWANI}）。训练太短时差别可能还没出现，试试更多 --steps。")
        elif c["diff"] > 0 and c["exceeds_spread"]:
            parts.append(f"与论文方向一致，而且差距超过了种子间波动：{VASWANI}。{why}")
        elif c["diff"] > 0:
            parts.append(f"方向与论文一致（{VASWANI}）。{why}"
                         + ("但差距没有超过种子间波动，不能算确定的结论。" if c["exceeds_spread"] is False
                            else "只有 1 个种子，还不能说这个差距超过了随机波动。"))
        else:
            parts.append(f"与论文方向相反：这次 1 个头并不更差。{VASWANI}。小模型、短训练时差别可能被噪声盖住，试试完整模式或更多 --steps。")
    elif best == 1:
        verdict["one_head_gap"] = None
        parts.append(f"这次 1 个头反而最好，与论文方向相反（{VASWANI}）。字符级小模型、训练很短时，"
                     f"每个头维度太小（8 个头时只有 {dim // 8} 维）的代价可能更大；看看完整模式的多种子结果。")
    if 8 in head_counts and best != 8 and math.isfinite(means[8]) and means[8] - means[best] >= 0.01:
        parts.append(f"8 个头（每头 {dim // 8} 维）比 {best} 个头差 {means[8] - means[best]:.3f}：头切得太细也不好，这与论文里 32 个头变差的方向一致。")

    if abl is None:
        parts.append("B. 要逐个去掉头的模型训练发散了，这次没有消融结果。")
    else:
        single = [d for row in abl["single"] for d in row]
        n = len(single)
        small = [d for d in single if d < threshold]
        verdict["frac_heads_removable"] = len(small) / n
        worst = max(range(n), key=single.__getitem__)
        heads = len(abl["single"][0])
        parts.append(f"B. 在训练好的 {heads} 头模型上（基线验证 loss {abl['base_val_loss']:.3f}），每次去掉一个头：{len(small)}/{n} 个头去掉后"
                     f"验证 loss 上升不到 {threshold}（最多涨 {max(single):.3f}，是 L{worst // heads}H{worst % heads}；"
                     f"中位数 {statistics.median(single):+.3f}）。")
        p25, p50 = abl["pruned"][0.25], abl["pruned"][0.5]
        verdict["pruned_25"], verdict["pruned_50"] = p25["delta"], p50["delta"]
        parts.append(f"按“单独影响最小”的顺序一起去掉 {p25['n_heads_removed']} 个头（25%）：loss 涨 {p25['delta']:+.3f}；"
                     f"去掉 {p50['n_heads_removed']} 个（50%）：涨 {p50['delta']:+.3f}。")
        if p25["delta"] < 0.05:
            parts.append(f"与 {MICHEL} 的发现一致：相当一部分头是冗余的，训练时需要，测试时可以去掉。")
        else:
            parts.append(f"这个小模型里头的冗余比论文里少（{MICHEL}）：只有 {n} 个头、dim {dim}，每个头都在干活。")
        lay = abl["whole_layer"]
        wl = max(lay, key=lay.get)
        parts.append(f"整层的注意力都去掉时，影响最大的是第 {wl} 层（+{lay[wl]:.3f}），"
                     + "、".join(f"第 {l} 层 +{d:.3f}" for l, d in lay.items() if l != wl) + "。")
    if not multi:
        parts.append("这次只跑了 1 个种子：A 部分的差距是否超过随机波动无法判断；完整模式（不加 --quick）会跑 3 个种子。")
    return "\n".join(parts), verdict


class MultiHead(Experiment):
    name = "exp3_multihead"
    module = "03_attention"
    can_use_synthetic = False  # 拿不到 TinyShakespeare 时不改用合成语料
    synthetic_reason = "多头与去掉头的结论（Vaswani 等 2017、Michel 等 2019）关乎真实语言里多种依赖关系；合成文法的依赖少而整齐，代表不了"
    title = "实验 3：为什么要多头？（1/2/4/8 个头，参数量相同；再逐个去掉头）"
    description = (
        "A：dim=64 的 2 层小模型，头数 1/2/4/8（参数量相同），在 TinyShakespeare 上比较验证 loss（完整模式 3 个种子）。\n"
        "B：在训练好的 4 头模型上逐个把头置零，测验证 loss 的变化；再一次去掉 25%/50% 的头。对应 teaching.md §3.1。"
    )
    requires = ("scaled_dot_product_attention",)

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 200，完整 300）")
        parser.add_argument("--layers", type=int, default=2, help="层数（默认 2：层少时“一个头只能看一处”的限制更明显，也更快）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3）")
        parser.add_argument("--threshold", type=float, default=0.01,
                            help="“去掉后几乎没影响”的阈值：验证 loss 上升小于它（默认 0.01 nats）")

    def run(self):

        threads = default_one_thread(self)
        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=3, quick=200, full=300)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        dim = self.by_mode(smoke=32, quick=64, full=64)
        layers = self.by_mode(smoke=2, quick=self.args.layers, full=self.args.layers)
        head_counts = self.by_mode(smoke=[1, 4], quick=[1, 2, 4, 8], full=[1, 2, 4, 8])
        ablate_heads = 4
        eval_iters = self.by_mode(smoke=2, quick=8, full=10)
        self.config(steps=steps, lr=self.args.lr, dim=dim, n_layers=layers, head_counts=head_counts,
                    batch_size=batch, seq_len=seq_len, ablation_model_heads=ablate_heads,
                    ablation_eval_batches=eval_iters, threshold=self.args.threshold, threads=threads,
                    head_mask="output of softmax·v for that head set to 0 before o_proj")

        arms = [Arm(str(h), f"{h} 个头（head_dim {dim // h}）", f"{h} heads", {"n_heads": h}) for h in head_counts]
        keep_heads, kept = min(ablate_heads, max(head_counts)), {}

        def keep_for_ablation(arm, seed, model, run):
            if int(arm.key) == keep_heads and seed == seeds[0] and run["diverged_at"] is None:
                kept["model"] = model

        run_arms(self, corpus, arms, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=self.args.lr,
                 base_cfg={"dim": dim, "n_layers": layers}, require=("scaled_dot_product_attention",),
                 eval_iters=eval_iters, after_train=keep_for_ablation)
        results = {h: a.runs for h, a in zip(head_counts, arms)}
        n_params = {h: a.n_params for h, a in zip(head_counts, arms)}
        kept = kept.get("model")

        gen = torch.Generator().manual_seed(2024)
        batches = [corpus.get_batch("val", batch, seq_len, generator=gen, device=self.device) for _ in range(eval_iters)]
        if kept is None:  # 要做消融的那个模型发散了：记下来，不做 B 部分
            self.note("要逐个去掉头的那个模型训练发散了，B 部分（去掉头）这次跳过。")
            n_abl_heads = 0
        else:
            n_abl_heads = kept.cfg.n_heads
        abl = ablate(kept, batches, layers, n_abl_heads) if kept is not None else None

        self.print_table(["头数", "head_dim", "参数量", f"验证 loss（{len(seeds)} 个种子）"],
                         [[h, dim // h, n_params[h], fmt_mean_std(finals(results[h]))] for h in head_counts],
                         title="A. 参数量相同、头数不同")
        if abl is not None:
            self.print_table(["层"] + [f"H{h}" for h in range(n_abl_heads)] + ["整层"],
                             [[f"L{l}"] + [f"{abl['single'][l][h]:+.3f}" for h in range(n_abl_heads)]
                              + [f"{abl['whole_layer'][l]:+.3f}"] for l in range(layers)],
                             title=f"B. 去掉一个头后验证 loss 的变化（基线 {abl['base_val_loss']:.3f}，{eval_iters} 个固定的验证 batch）")
        self._plot(results, head_counts, abl, seeds, dim)
        text, verdict = write_conclusion(results, head_counts, abl, len(seeds), steps, unigram, self.args.threshold, dim)
        self.conclude(text)
        return {"runs": {str(h): r for h, r in results.items()}, "n_params": n_params, "ablation": abl,
                "verdict": verdict, "unigram_baseline_val_loss": unigram,
                "final_val_loss": {str(h): summarize(finals(results[h])) for h in head_counts}}

    def _plot(self, results, head_counts, abl, seeds, dim):
        fig, axes = new_figure(1, 2, width=6.0, height=4.2)
        curves = {}
        for h in head_counts:
            rs = results[h]
            steps, mean, std = mean_std_curve(rs)
            curves[(f"{h} 个头（head_dim {dim // h}）", f"{h} head(s) (head_dim {dim // h})")] = \
                (steps, mean, std) if len(rs) > 1 else (steps, mean)
        plot_loss_curves(curves, ax=axes[0, 0],
                         title=(f"A. 验证 loss（{len(seeds)} 个种子）", f"A. Validation loss ({len(seeds)} seed(s))"),
                         ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"))
        ax = axes[0, 1]
        if abl is None:
            ax.axis("off")
            fig.tight_layout()
            self.save_figure(fig, "heads")
            return
        single = torch.tensor(abl["single"])
        im = ax.imshow(single.numpy(), cmap="magma", aspect="auto")
        for l in range(single.size(0)):
            for h in range(single.size(1)):
                ax.text(h, l, f"{single[l, h]:+.3f}", ha="center", va="center", fontsize="small",
                        color="white" if single[l, h] < single.max() * 0.6 else "black")
        ax.set_xticks(range(single.size(1)), [f"H{h}" for h in range(single.size(1))])
        ax.set_yticks(range(single.size(0)), [f"L{l}" for l in range(single.size(0))])
        ax.set_title(label(("B. 去掉单个头后验证 loss 的变化", "B. Δ val loss when one head is zeroed")))
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        self.save_figure(fig, "heads")


if __name__ == "__main__":
    sys.exit(MultiHead.main())
