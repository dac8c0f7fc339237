"""模块 04 的实验共用的小工具：按“变体 × 种子”训练小模型、汇总曲线、配对比较、数参数。

不是实验脚本（文件名以下划线开头，课程表里不列它）。
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from kata.experiment import mean_std_curve, pad, summarize
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
class Variant:
    key: str
    zh: str
    en: str
    cfg: dict                       # 传给 TinyLMConfig 的额外参数
    runs: list = field(default_factory=list)
    n_params: Optional[int] = None
    ffn_params: Optional[int] = None

    @property
    def label(self):
        return (self.zh, self.en)


def final_losses(runs: list) -> list:
    """每个种子的最终验证 loss；发散的记为 nan（summarize 会单独计数）。"""
    return [r["final_val_loss"] if r["diverged_at"] is None else float("nan") for r in runs]


def ffn_parameter_count(model) -> int:
    """模型里所有 block 的 mlp 子层的参数个数（没有 FFN 时为 0）。"""
    return sum(p.numel() for b in model.blocks if b.mlp is not None for p in b.mlp.parameters())


def train_variants(exp, corpus, variants: list, seeds: list, *, steps: int, batch: int, seq_len: int, lr: float,
                   eval_every: int, eval_iters: int, base_cfg: dict, require=("FeedForward",),
                   warmup_steps: int = 0, final_eval_iters: Optional[int] = None) -> None:
    """把每个变体在每个种子上各训练一次，结果写进 variant.runs（TrainResult 的 dict + seed）。

    同一个种子的所有变体看到完全相同的 batch 顺序（train_lm 的数据生成器只由 seed 决定）。
    final_eval_iters：训练结束后再用这么多个固定的验证 batch 评估一次，作为 final_val_loss
    （训练中的曲线只用 eval_iters 个 batch，省时间；最后这个数要拿来比较，用更多 batch 让估计更准）。
    所有模型的验证 batch 都相同（evaluate 的 seed 固定），比较是在同样的文本上做的。
    """
    from kata.tinylm import TinyLMConfig, build_tiny_lm, count_parameters, evaluate, train_lm

    printed = set()
    for v in variants:
        for s in seeds:
            cfg = TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, **{**base_cfg, **v.cfg})
            model, prov = build_tiny_lm(cfg, impl=exp.impl, require=require, seed=s)
            model.to(exp.device)
            exp.record_provenance({f"tinylm[{v.key}]": prov})
            if v.key not in printed:
                print(f"[{v.zh}] 部件来源：" + "，".join(f"{k} ← {val}" for k, val in prov.items()))
                printed.add(v.key)
            v.n_params = count_parameters(model)
            v.ffn_params = ffn_parameter_count(model)
            res = train_lm(model, corpus, steps=steps, batch_size=batch, seq_len=seq_len, lr=lr,
                           warmup_steps=warmup_steps, grad_clip=1.0, eval_every=eval_every, eval_iters=eval_iters,
                           seed=s, device=exp.device, progress=exp.progress, desc=f"{v.en} seed {s}")
            d = res.to_dict()
            d["seed"] = s
            if final_eval_iters and res.diverged_at is None:
                d["final_val_loss_curve"] = d["final_val_loss"]
                d["final_val_loss"] = evaluate(model, corpus, split="val", seq_len=seq_len, batch_size=batch,
                                               iters=final_eval_iters, device=exp.device)
                d["final_eval_iters"] = final_eval_iters
            v.runs.append(d)
            res.final_val_loss = d["final_val_loss"]
            state = f"发散于第 {res.diverged_at} 步" if res.diverged_at is not None else f"val loss {res.final_val_loss:.3f}"
            print(f"  {pad(v.zh, 28)} seed {s}: {state}，{res.tokens_per_sec:,.0f} tokens/s，{res.wall_time_s:.1f} 秒")




def paired(a_runs: list, b_runs: list) -> dict:
    """按种子配对：d_s = loss_b(s) − loss_a(s)。同一种子的两个变体看到同样的数据顺序，配对能去掉一部分噪声。

    返回各种子的差、均值、标准差、标准误，以及“所有种子同号”和“|均值| > 2·标准误”两个判断（种子少于 2 个时为 None）。
    """
    a = {r["seed"]: r for r in a_runs}
    diffs = []
    for r in b_runs:
        if r["seed"] in a:
            la, lb = final_losses([a[r["seed"]]])[0], final_losses([r])[0]
            if math.isfinite(la) and math.isfinite(lb):
                diffs.append(lb - la)
    s = summarize(diffs)
    out = {"diffs": diffs, "mean": s["mean"], "std": s["std"], "n": s["n"], "se": None,
           "same_sign": None, "beyond_2se": None}
    if s["n"] >= 2 and s["std"] is not None:
        se = s["std"] / math.sqrt(s["n"])
        out["se"] = se
        out["same_sign"] = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
        out["beyond_2se"] = abs(s["mean"]) > 2 * se
    return out


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
