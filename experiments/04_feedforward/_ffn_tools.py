"""模块 04 的实验共用的小工具：按“变体 × 种子”训练小模型、汇总曲线、配对比较、数参数。

不是实验脚本（文件名以下划线开头，课程表里不列它）。
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kata.arms import Arm, final_values, paired, run_arms  # noqa: F401（paired 供各实验导入）
from kata.experiment import mean_std_curve
from kata.plots import plot_loss_curves

# Shazeer 2020, "GLU Variants Improve Transformer", Table 1：T5 式模型预训练 65,536 步后的
# 验证集 log-perplexity（越低越好）；GLU 变体把 FFN 宽度从 3072 降到 2048，使参数量相同。
SHAZEER_2020_TABLE1 = {
    "ReLU": 1.997, "GELU": 1.983, "Swish": 1.994, "GLU": 1.982,
    "Bilinear": 1.960, "ReGLU": 1.953, "GEGLU": 1.942, "SwiGLU": 1.944,
}
SHAZEER_CITE = "Shazeer 2020《GLU Variants Improve Transformer》Table 1（65k 步，log-perplexity）"

# Vaswani et al. 2017 Table 3 第 (C) 行：d_model = 512 时只改 d_ff，开发集 perplexity
VASWANI_ROW_C = {1024: 5.12, 2048: 4.92, 4096: 4.75}
VASWANI_CITE = "Vaswani et al. 2017 Table 3 第 (C) 行（d_model=512，newstest2013 开发集 perplexity）"


@dataclass
class Variant(Arm):
    """kata.arms.Arm 加上 FFN 自己的参数个数（exp1/exp3 要报告 FFN 占比）。"""
    ffn_params: Optional[int] = None


final_losses = final_values


def ffn_parameter_count(model) -> int:
    """模型里所有 block 的 mlp 子层的参数个数（没有 FFN 时为 0）。"""
    return sum(p.numel() for b in model.blocks if b.mlp is not None for p in b.mlp.parameters())


def train_variants(exp, corpus, variants: list, seeds: list, *, steps: int, batch: int, seq_len: int, lr: float,
                   eval_every: int, eval_iters: int, base_cfg: dict, require=("FeedForward",),
                   warmup_steps: int = 0, final_eval_iters: Optional[int] = None) -> None:
    """kata.arms.run_arms 加上“数一数 FFN 的参数”（同一种子的所有变体看到完全相同的 batch 顺序）。"""
    run_arms(exp, corpus, variants, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=lr, base_cfg=base_cfg,
             require=require, eval_every=eval_every, eval_iters=eval_iters, warmup_steps=warmup_steps,
             final_eval_iters=final_eval_iters,
             after_train=lambda v, s, model, d: setattr(v, "ffn_params", ffn_parameter_count(model)))


def minimind_param_breakdown(name: str, *, hidden: int, layers: int, heads: int, kv_heads: int, vocab: int,
                             ffn_params_per_layer: int, qk_norm: bool) -> dict:
    """按 minimind model_minimind.py 的结构数参数（词嵌入与 lm_head 共享，只算一次）。

    每层：q_proj d×(H·hd)，k_proj / v_proj d×(KV·hd)，o_proj (H·hd)×d，两个 RMSNorm 各 d 个，
    minimind-3 另有 q_norm / k_norm 各 hd 个；FFN 的参数个数由调用者给出（用你的 FeedForward 实例数出来）；
    最后一个 RMSNorm d 个；词嵌入 V×d。
    """
    hd = hidden // heads
    attn = hidden * heads * hd + 2 * hidden * kv_heads * hd + heads * hd * hidden
    norms = 2 * hidden + (2 * hd if qk_norm else 0)
    parts = {
        "embedding": vocab * hidden,
        "attention": layers * attn,
        "ffn": layers * ffn_params_per_layer,
        "norms": layers * norms + hidden,
    }
    total = sum(parts.values())
    return {"name": name, "parts": parts, "total": total,
            "share": {k: v / total for k, v in parts.items()}}


def plot_val_curves(ax, variants: list, n_seeds: int, unigram: float) -> None:
    """各变体的验证 loss 曲线（多个种子时画均值 ± 标准差），灰线是只按字符频率猜的基线。"""
    curves = {}
    for v in variants:
        steps, mean, std = mean_std_curve(v.runs)
        curves[v.label] = (steps, mean, std) if len(v.runs) > 1 else (steps, mean)
    many = n_seeds > 1
    plot_loss_curves(curves, ax=ax,
                     title=(f"验证集 loss（{n_seeds} 个种子" + ("，均值 ± 标准差）" if many else "）"),
                            f"Validation loss ({n_seeds} seed(s)" + (", mean ± std)" if many else ")")),
                     ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"),
                     references={("只按字符频率猜", "unigram baseline"): unigram})
