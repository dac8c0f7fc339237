"""位置编码参考实现：RoPE（含 YaRN 外推）与 Vaswani 正弦位置编码。

对应 minimind model/model_minimind.py 的 ``precompute_freqs_cis`` / ``apply_rotary_pos_emb``
（``rotate_half`` 在 minimind 里是 apply_rotary_pos_emb 内部的小函数，这里把它提到模块层，方便单独测试）。

布局是“前后两半”（half-split）：第 i 维与第 i + D/2 维组成一对做二维旋转，
而不是 RoFormer 论文里相邻的 (2i, 2i+1) 一对（interleaved）。两种写法数学上等价，
但权重不通用——minimind / LLaMA(HF) 用的是 half-split（minimind issue #449、#532）。
"""
from __future__ import annotations

import math
from typing import Optional

import torch


def _yarn_ramp(dim: int, rope_base: float, orig_max: int, beta_fast: float, beta_slow: float) -> torch.Tensor:
    """YaRN 的线性斜坡 γ_i ∈ [0, 1]（i 是第几对维度，共 dim/2 对）。

    第 i 对的频率 θ_i = base^(-2i/dim)，在原训练长度 L 内转 L·θ_i / 2π 圈。
    令“转 b 圈”解出 i：i(b) = dim · ln(L / (2π·b)) / (2 · ln base)。
    - 转得比 beta_fast 圈还多的高频维（i ≤ low）：局部位置信息，保持原样（γ=0）；
    - 转得比 beta_slow 圈还少的低频维（i ≥ high）：完全按 factor 插值（γ=1）；
    - 中间线性过渡。
    """
    def dim_for_rotations(b: float) -> float:
        return dim * math.log(orig_max / (b * 2 * math.pi)) / (2 * math.log(rope_base))

    low = max(math.floor(dim_for_rotations(beta_fast)), 0)
    high = min(math.ceil(dim_for_rotations(beta_slow)), dim // 2 - 1)
    # high == low 时避免除零（minimind 同样用 0.001 兜底）
    return ((torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 0.001)).clamp(0, 1)


def precompute_freqs_cis(dim: int, end: int = 32 * 1024, rope_base: float = 1e6,
                         rope_scaling: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """预先算好位置 0..end-1 的 cos / sin 表，各 [end, dim]、float32。

    第 i 对维度的角频率 θ_i = rope_base^(-2i/dim)，位置 m 的转角 m·θ_i。
    表的前半 [:, :dim/2] 与后半 [:, dim/2:] 完全相同——这正是 half-split 布局：
    第 i 维和第 i + dim/2 维用同一个角度旋转。

    rope_scaling（YaRN，与 minimind 相同的键与默认值）：
    ``original_max_position_embeddings``(2048)、``factor``(16)、``beta_fast``(32)、``beta_slow``(1)、
    ``attention_factor``(1.0)。只有 end 超过原训练长度时才改频率：θ'_i = θ_i · ((1-γ_i) + γ_i / factor)。
    attention_factor 与 minimind 一样总是乘到 cos / sin 上（默认 1.0，即不变）。
    """
    # 频率用 float32 算，与 minimind 一致（不同精度会让长位置上的角度差出可见的误差）
    freqs = 1.0 / (rope_base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    attn_factor = 1.0
    if rope_scaling is not None:
        orig_max = rope_scaling.get("original_max_position_embeddings", 2048)
        factor = rope_scaling.get("factor", 16)
        beta_fast = rope_scaling.get("beta_fast", 32.0)
        beta_slow = rope_scaling.get("beta_slow", 1.0)
        attn_factor = rope_scaling.get("attention_factor", 1.0)
        if end > orig_max:  # 没超过原训练长度就不需要插值
            ramp = _yarn_ramp(dim, rope_base, orig_max, beta_fast, beta_slow)
            freqs = freqs * (1 - ramp + ramp / factor)
    positions = torch.arange(end, dtype=torch.float32)
    angles = torch.outer(positions, freqs)                        # [end, dim/2]
    freqs_cos = torch.cat([angles.cos(), angles.cos()], dim=-1) * attn_factor
    freqs_sin = torch.cat([angles.sin(), angles.sin()], dim=-1) * attn_factor
    return freqs_cos, freqs_sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """把最后一维切成前后两半 (x1, x2)，返回 (-x2, x1)。

    配合 x·cos + rotate_half(x)·sin，第 i 维与第 i + D/2 维就完成了一次二维旋转：
    (x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin)。
    """
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """对 q、k 施加旋转位置编码。

    q: [B, S, H, D]，k: [B, S, KVH, D]，cos / sin: [S, D]（已经切好当前这几个位置）。
    unsqueeze_dim=1 把 cos / sin 变成 [S, 1, D]，对所有头广播；若 q 是 [B, H, S, D] 布局则传 0。
    旋转后 q_m·k_n 只依赖 m − n（相对位置），这是 RoPE 的全部意义。
    返回的 q、k 保持输入的 dtype（cos / sin 是 float32，乘完要转回去）。
    """
    cos = cos.unsqueeze(unsqueeze_dim)
    sin = sin.unsqueeze(unsqueeze_dim)
    q_embed = (q * cos + rotate_half(q) * sin).to(q.dtype)
    k_embed = (k * cos + rotate_half(k) * sin).to(k.dtype)
    return q_embed, k_embed


def sinusoidal_position_encoding(max_len: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. 2017 §3.5 的正弦位置编码，[max_len, dim]、float32。

    PE[pos, 2i]   = sin(pos / base^(2i/dim))
    PE[pos, 2i+1] = cos(pos / base^(2i/dim))
    偶数维放 sin、奇数维放 cos（与论文一样交错排列）。它是加到词向量上的绝对位置，
    与 RoPE“乘到 q、k 上”的做法不同。
    """
    positions = torch.arange(max_len, dtype=torch.float64)[:, None]
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)   # [ceil(dim/2)]
    angles = positions * inv_freq                                              # [max_len, ceil(dim/2)]
    pe = torch.zeros(max_len, dim, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : dim // 2])   # dim 为奇数时最后一维只有 sin
    # 在 float64 里算再转 float32：长位置（几千）上的角度不会因 float32 乘法而漂移
    return pe.float()
