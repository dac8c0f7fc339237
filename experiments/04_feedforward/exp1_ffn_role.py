"""实验 1：FFN 在 Transformer 里有多重要？——去掉它、或者把省下的参数全给注意力，会怎样？

A. 三个字符级因果语言模型（TinyShakespeare），只差 FFN：
   - 注意力 + 你的 FeedForward（SwiGLU），4 层——minimind 的结构；
   - 纯注意力，4 层（同样的深度，去掉每层的 FFN 子层）；
   - 纯注意力，12 层（把省下的参数还给注意力：参数量与第一个几乎相同）。
   同样的种子、数据顺序和学习率；完整模式每个变体 3 个种子，报告验证 loss 的 均值 ± 标准差。
B. 数参数：MiniMind2-small 与 minimind-3 的真实配置里，FFN 占了多少参数
   （FFN 的参数用你的 FeedForward 实例数出来，其余部分按 minimind 的结构计算）。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”
sys.path.insert(0, str(Path(__file__).resolve().parent))

import math  # noqa: E402


from _ffn_tools import (Variant, final_losses, minimind_param_breakdown, paired, plot_val_curves,  # noqa: E402
                        train_variants)
from kata.experiment import Experiment, describe_gap, fmt_mean_std, summarize, unigram_baseline  # noqa: E402
from kata.plots import new_figure  # noqa: E402

# MiniMind2-small 共 25,829,888 个参数（词嵌入与 lm_head 共享；minimind README 的 "25.8M"，按 model_minimind.py 的结构逐项数出）；minimind-3 约 64M
MINIMIND2_TOTAL = 25_829_888


def minimind_configs(FeedForward) -> list:
    """两个真实配置的参数分解；FFN 部分来自你的 FeedForward。"""
    out = []
    # MiniMind2-small（commit c090b69c）：hidden 512、8 层、8/2 头、vocab 6400、intermediate_size 默认 → 8/3 规则
    ffn2 = FeedForward(512)
    w2 = tuple(ffn2.gate_proj.weight.shape)[0]
    out.append(dict(minimind_param_breakdown(
        "MiniMind2-small", hidden=512, layers=8, heads=8, kv_heads=2, vocab=6400,
        ffn_params_per_layer=sum(p.numel() for p in ffn2.parameters()), qk_norm=False), ffn_width=w2,
        width_rule="FeedForward(512) 的默认宽度（8/3 规则）"))
    # minimind-3（commit dddedc68）：hidden 768、8 层、8/4 头、QK-norm、intermediate_size = ceil(768·π/64)·64
    w3 = math.ceil(768 * math.pi / 64) * 64
    ffn3 = FeedForward(768, hidden_dim=w3)
    out.append(dict(minimind_param_breakdown(
        "minimind-3", hidden=768, layers=8, heads=8, kv_heads=4, vocab=6400,
        ffn_params_per_layer=sum(p.numel() for p in ffn3.parameters()), qk_norm=True), ffn_width=w3,
        width_rule="ceil(768·π/64)·64"))
    # 对照：如果 minimind-3 仍用 8/3 规则
    ffn3b = FeedForward(768)
    out.append(dict(minimind_param_breakdown(
        "minimind-3（假如用 8/3 规则）", hidden=768, layers=8, heads=8, kv_heads=4, vocab=6400,
        ffn_params_per_layer=sum(p.numel() for p in ffn3b.parameters()), qk_norm=True),
        ffn_width=tuple(ffn3b.gate_proj.weight.shape)[0], width_rule="FeedForward(768) 的默认宽度（8/3 规则）"))
    return out


class FFNRole(Experiment):
    name = "exp1_ffn_role"
    module = "04_feedforward"
    can_use_synthetic = False  # 拿不到 TinyShakespeare 时不改用合成语料
    synthetic_reason = "FFN 的作用要在真实文本上才看得出；合成语料的词汇和文法都很小，会低估 FFN"
    title = "实验 1：FFN 的作用——纯注意力 vs 注意力 + FFN，以及 FFN 在 MiniMind 里占多少参数"
    description = (
        "同样 4 层：有没有 FFN 子层，验证 loss 差多少？把 FFN 的参数换成更多注意力层（12 层纯注意力，\n"
        "参数量相当）又如何？再按 MiniMind2-small 与 minimind-3 的真实配置数一数 FFN 的参数占比。\n"
        "对应 teaching.md §1。"
    )
    requires = ("FeedForward",)

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 150，完整 300）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3）")
        parser.add_argument("--dim", type=int, default=64, help="隐藏维度（默认 64）")

    def run(self):
        FeedForward = self.component("FeedForward")

        # ---- B. 真实配置的参数占比（先做：只要几秒）
        configs = minimind_configs(FeedForward)
        rows = []
        for c in configs:
            p, s = c["parts"], c["share"]
            rows.append([c["name"], f"{c['ffn_width']}", f"{c['total']:,}", f"{p['ffn']:,}", f"{100 * s['ffn']:.1f}%",
                         f"{100 * s['attention']:.1f}%", f"{100 * s['embedding']:.1f}%", f"{100 * s['norms']:.3f}%"])
        self.print_table(["配置", "FFN 宽度", "总参数", "FFN 参数", "FFN 占比", "注意力", "词嵌入", "RMSNorm"], rows,
                         title="B. MiniMind 真实配置的参数分解（FFN 用你的 FeedForward 数出；词嵌入与 lm_head 共享）")
        mm2 = configs[0]
        total_ok = mm2["total"] == MINIMIND2_TOTAL
        print(f"MiniMind2-small 总参数 {mm2['total']:,}："
              + ("与 minimind 公布的 MiniMind2-small（25.8M，逐项数出 25,829,888）一致。" if total_ok else
                 f"与 minimind 公布的 MiniMind2-small（25.8M，逐项数出 25,829,888）不一致（差 {mm2['total'] - MINIMIND2_TOTAL:+,}）——"
                 f"多半是你的 FeedForward(512) 默认宽度不是 1408（现在是 {mm2['ffn_width']}）。"))

        # ---- A. 训练
        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=4, quick=150, full=300)
        dim = self.by_mode(smoke=32, quick=self.args.dim, full=self.args.dim)
        layers = self.by_mode(smoke=1, quick=4, full=4)
        deep = 3 * layers
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(32, 64), full=(32, 64))
        eval_every = max(1, steps // self.by_mode(smoke=2, quick=10, full=16))
        eval_iters = self.by_mode(smoke=2, quick=4, full=6)            # 训练中的曲线：少量 batch
        final_eval_iters = self.by_mode(smoke=2, quick=24, full=48)    # 最终比较用的数：更多 batch
        lr = self.args.lr
        base = dict(dim=dim, n_heads=4, max_seq_len=seq_len)
        self.config(steps=steps, lr=lr, dim=dim, n_layers=layers, deep_layers=deep, n_heads=4, batch_size=batch,
                    seq_len=seq_len, eval_every=eval_every, eval_iters=eval_iters, final_eval_iters=final_eval_iters,
                    warmup_steps=0, grad_clip=1.0)
        mine = "你的 FeedForward" if self.impl == "exercises" else "参考 FeedForward"
        variants = [
            Variant("attn_ffn", f"注意力+FFN（{layers} 层）", f"attention + FFN, {layers} layers",
                    dict(n_layers=layers, ffn="swiglu")),
            Variant("attn_only", f"纯注意力（{layers} 层）", f"attention only, {layers} layers",
                    dict(n_layers=layers, ffn="none")),
            Variant("attn_only_deep", f"纯注意力（{deep} 层）", f"attention only, {deep} layers",
                    dict(n_layers=deep, ffn="none")),
        ]
        print(f"\nA. 训练：{len(variants)} 个变体 × {len(seeds)} 个种子，每个 {steps} 步（FFN 来自{mine}）")
        train_variants(self, corpus, variants, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=lr,
                       eval_every=eval_every, eval_iters=eval_iters, base_cfg=base,
                       final_eval_iters=final_eval_iters)
        V = {v.key: v for v in variants}

        rows = []
        for v in variants:
            rows.append([v.zh, f"{v.n_params:,}", f"{100 * v.ffn_params / v.n_params:.0f}%",
                         fmt_mean_std(final_losses(v.runs))])
        self.print_table(["变体", "参数量", "FFN 占比", f"最终验证 loss（{len(seeds)} 个种子）"], rows,
                         title=f"A. 小模型（dim={dim}，{steps} 步）")
        self._plot(variants, seeds, unigram)
        text, verdict = self._conclusion(V, configs, len(seeds), unigram)
        self.conclude(text)
        return {
            "runs": {v.key: v.runs for v in variants},
            "n_params": {v.key: v.n_params for v in variants},
            "ffn_params": {v.key: v.ffn_params for v in variants},
            "final_val_loss": {v.key: summarize(final_losses(v.runs)) for v in variants},
            "paired_attn_only_minus_ffn": paired(V["attn_ffn"].runs, V["attn_only"].runs),
            "paired_deep_minus_ffn": paired(V["attn_ffn"].runs, V["attn_only_deep"].runs),
            "minimind_param_breakdown": configs,
            "minimind2_total_matches_reference": total_ok,
            "unigram_baseline_val_loss": unigram,
            "verdict": verdict,
        }

    def _conclusion(self, V, configs, n_seeds, unigram):
        parts, verdict = [], {}
        multi = n_seeds > 1
        ffn, only, deep = V["attn_ffn"], V["attn_only"], V["attn_only_deep"]
        lf, lo, ld = (final_losses(v.runs) for v in (ffn, only, deep))

        # 1) 同样深度：去掉 FFN
        p = paired(ffn.runs, only.runs)
        parts.append(describe_gap(lf, lo, ffn.zh, only.zh, spread_note=multi))
        gap = p["mean"]
        if math.isfinite(gap) and gap > 0.02 and p["same_sign"] is not False:
            verdict["same_depth"] = "FFN helps"
            parts.append(f"同样 {ffn.cfg['n_layers']} 层，去掉 FFN 后验证 loss 高了 {gap:.3f} nats/字符"
                         + (f"（{p['n']} 个种子逐一配对，每个种子都是有 FFN 的更好）" if p["same_sign"] else "")
                         + f"，而它的参数也只剩 {only.n_params / ffn.n_params:.0%}。注意力只负责在位置之间搬运信息，"
                           "每个位置拿到信息之后的“加工”——非线性变换——几乎全靠 FFN。")
        elif math.isfinite(gap):
            verdict["same_depth"] = "no clear effect"
            parts.append("与预期不一致：本次去掉 FFN 并没有明显变差。步数很少时模型还停留在学字符频率和常见搭配的阶段，"
                         "FFN 的作用未必显现；去掉 --quick 或加大 --steps 再看。")

        # 2) 参数量相当：12 层纯注意力
        pd = paired(ffn.runs, deep.runs)
        parts.append(describe_gap(lf, ld, ffn.zh, deep.zh, spread_note=multi).rstrip("。")
                     + f"；两者的参数量 {deep.n_params:,} vs {ffn.n_params:,}。")
        if math.isfinite(pd["mean"]) and pd["mean"] > 0.01 and pd["same_sign"] is not False:
            verdict["matched_params"] = "FFN better per parameter"
            parts.append(f"把同样多的参数花在更多注意力层上，并没有换回 FFN 的效果，而且 {deep.cfg['n_layers']} 层的前向更慢："
                         "在这个规模上，FFN 是更划算的参数用法。")
        elif math.isfinite(pd["mean"]) and pd["mean"] < -0.01 and pd["same_sign"] is not False:
            verdict["matched_params"] = "deep attention-only better"
            parts.append(f"有意思：本次 {deep.cfg['n_layers']} 层纯注意力反而更好。更深的网络每层都有注意力的 softmax 非线性和"
                         "RMSNorm，小模型、短训练下多几层“搬运”也能弥补；这与 minimind 的选择不同，值得想一想为什么 MiniMind 仍然"
                         f"把 {configs[0]['share']['ffn']:.0%} 的参数给 FFN（提示：计算量、并行度、以及 teaching.md §4 的“记忆”）。")
        else:
            verdict["matched_params"] = "comparable"
            parts.append(f"两者相差不到 0.01 或方向在种子之间不一致：在这个规模上，{deep.cfg['n_layers']} 层纯注意力"
                         "用相同的参数量大致追平了有 FFN 的 4 层模型——但它的层数是 3 倍，前向更慢。")

        # 3) 参数占比
        mm2, mm3, mm3b = configs
        verdict["minimind2_ffn_share"] = mm2["share"]["ffn"]
        verdict["minimind3_ffn_share"] = mm3["share"]["ffn"]
        parts.append(f"参数账：MiniMind2-small 的 FFN 占全部参数的 {100 * mm2['share']['ffn']:.1f}%"
                     f"（注意力 {100 * mm2['share']['attention']:.1f}%，词嵌入 {100 * mm2['share']['embedding']:.1f}%）；"
                     f"minimind-3 把宽度从 8/3 规则的 {mm3b['ffn_width']} 加到 π 规则的 {mm3['ffn_width']}，"
                     f"FFN 占比 {100 * mm3['share']['ffn']:.1f}%（若仍用 8/3 规则则是 {100 * mm3b['share']['ffn']:.1f}%）。")
        largest = max(mm2["share"], key=mm2["share"].get)
        largest_zh = {"embedding": "词嵌入", "attention": "注意力", "norms": "归一化", "ffn": "FFN"}[largest]
        if largest == "ffn" and mm3["share"]["ffn"] > 0.5:
            parts.append("一个 Transformer 的大部分参数在 FFN 里——这也是 Geva 等（2021）把它看作“键值记忆”的出发点（实验 4）。")
        else:
            parts.append(f"按这次算出的数，FFN 并不是参数最多的部分（MiniMind2-small 里最多的是{largest_zh}）："
                         "如果你的 FeedForward 默认宽度不是 8/3 规则（512 → 1408），先让 pytest exercises/04_feedforward 通过。")
        if not multi:
            parts.append("快速模式只跑了 1 个种子，上面的差距是否超过随机波动无法判断；去掉 --quick 会跑 3 个种子。")
        return "\n".join(parts), verdict

    def _plot(self, variants, seeds, unigram):
        fig, axes = new_figure(1, 1, width=7.0, height=4.6)
        plot_val_curves(axes[0, 0], variants, len(seeds), unigram)
        self.save_figure(fig, "val_loss")


if __name__ == "__main__":
    sys.exit(FFNRole.main())
