"""模块 02 的 bug bank：真实会写出来的错误 RoPE / 正弦位置编码。

每个错误都是对参考实现的一处覆盖。注意 apply_rotary_pos_emb 在参考实现里调用的是参考实现自己的
rotate_half，所以凡是改了 rotate_half 的错误，也要一起给出用它的 apply_rotary_pos_emb。
"""
from __future__ import annotations

import math

import torch

from kata.bugbank import Bug


def _freqs(dim: int, rope_base: float) -> torch.Tensor:
    return 1.0 / (rope_base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))


def _tables(freqs: torch.Tensor, end: int, start: int = 0, attn_factor: float = 1.0, layout: str = "half"):
    angles = torch.outer(torch.arange(start, start + end, dtype=torch.float32), freqs)
    if layout == "half":
        cos, sin = torch.cat([angles.cos(), angles.cos()], -1), torch.cat([angles.sin(), angles.sin()], -1)
    else:  # 交错：(2i, 2i+1) 用同一个角度
        cos, sin = angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)
    return cos * attn_factor, sin * attn_factor


def _yarn(freqs: torch.Tensor, dim: int, end: int, rope_base: float, rope_scaling, *, always: bool = False,
          clamp_low: bool = True, clamp_high: bool = True, fixed_betas: bool = False,
          use_attn_factor: bool = True):
    """参考实现的 YaRN 段落（供几个 bug 复用，每个开关拧错一处）；返回 (freqs, attn_factor)。"""
    if rope_scaling is None:
        return freqs, 1.0
    orig = rope_scaling.get("original_max_position_embeddings", 2048)
    factor = rope_scaling.get("factor", 16)
    beta_fast, beta_slow = rope_scaling.get("beta_fast", 32.0), rope_scaling.get("beta_slow", 1.0)
    if fixed_betas:  # 照抄了 minimind 的默认值，没有读字典里的 beta_fast / beta_slow
        beta_fast, beta_slow = 32.0, 1.0
    attn = rope_scaling.get("attention_factor", 1.0) if use_attn_factor else 1.0
    if end > orig or always:
        inv = lambda b: dim * math.log(orig / (b * 2 * math.pi)) / (2 * math.log(rope_base))  # noqa: E731
        low, high = math.floor(inv(beta_fast)), math.ceil(inv(beta_slow))
        if clamp_low:
            low = max(low, 0)
        if clamp_high:
            high = min(high, dim // 2 - 1)
        ramp = ((torch.arange(dim // 2).float() - low) / max(high - low, 0.001)).clamp(0, 1)
        freqs = freqs * (1 - ramp + ramp / factor)
    return freqs, attn


def _precompute(dim, end, rope_base, rope_scaling, *, layout="half", start=0, exponent_scale=2.0,
                base_override=None, yarn="ramp", **yarn_knobs):
    base = rope_base if base_override is None else base_override
    if exponent_scale == 2.0:
        freqs = _freqs(dim, base)
    else:  # 指数写错：θ_i = base^(-i/dim)（少了那个 2）
        freqs = 1.0 / (base ** (torch.arange(dim // 2).float() / dim))
    if yarn == "ramp":
        freqs, attn = _yarn(freqs, dim, end, base, rope_scaling, **yarn_knobs)
    elif yarn == "always":
        freqs, attn = _yarn(freqs, dim, end, base, rope_scaling, always=True)
    else:  # "all"：所有维都除以 factor（这是位置插值 PI，不是 YaRN）
        attn = 1.0
        if rope_scaling is not None:
            attn = rope_scaling.get("attention_factor", 1.0)
            if end > rope_scaling.get("original_max_position_embeddings", 2048):
                freqs = freqs / rope_scaling.get("factor", 16)
    return _tables(freqs, end, start, attn, layout)


# ---------------------------------------------------------------- precompute_freqs_cis 的错误

def precompute_interleaved(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    return _precompute(dim, end, rope_base, rope_scaling, layout="interleaved")


def precompute_exponent_misscaled(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    return _precompute(dim, end, rope_base, rope_scaling, exponent_scale=1.0)


def precompute_positions_from_1(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    return _precompute(dim, end, rope_base, rope_scaling, start=1)


def precompute_cos_sin_swapped(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    cos, sin = _precompute(dim, end, rope_base, rope_scaling)
    return sin, cos


def precompute_base_ignored(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    return _precompute(dim, end, rope_base, rope_scaling, base_override=10000.0)


def precompute_yarn_always(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    return _precompute(dim, end, rope_base, rope_scaling, yarn="always")


def precompute_yarn_all_dims(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    return _precompute(dim, end, rope_base, rope_scaling, yarn="all")


def precompute_yarn_high_unclamped(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    return _precompute(dim, end, rope_base, rope_scaling, clamp_high=False)


def precompute_yarn_low_unclamped(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    return _precompute(dim, end, rope_base, rope_scaling, clamp_low=False)


def precompute_yarn_betas_ignored(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    return _precompute(dim, end, rope_base, rope_scaling, fixed_betas=True)


def precompute_yarn_attention_factor_ignored(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    return _precompute(dim, end, rope_base, rope_scaling, use_attn_factor=False)


# ---------------------------------------------------------------- rotate_half / apply 的错误

def rotate_half_interleaved(x):
    # Su 的 RoFormer 写法：相邻两维 (x_{2i}, x_{2i+1}) → (−x_{2i+1}, x_{2i})
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def rotate_half_wrong_sign(x):
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], -x[..., :half]), dim=-1)


def _apply_with(rot):
    def apply(q, k, cos, sin, unsqueeze_dim=1):
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return ((q * cos + rot(q) * sin).to(q.dtype), (k * cos + rot(k) * sin).to(k.dtype))
    return apply


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_only_q(q, k, cos, sin, unsqueeze_dim=1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return (q * cos + _rotate_half(q) * sin).to(q.dtype), k


def apply_no_dtype_cast(q, k, cos, sin, unsqueeze_dim=1):
    # MiniMind2 的原样写法：bf16 的 q 乘 float32 的 cos，结果被提升成 float32
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    return q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin


# ---------------------------------------------------------------- 正弦位置编码的错误

def _sin_angles(max_len, dim, base):
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    return pos * base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def sinusoidal_half_split(max_len, dim, base=10000.0):
    a = _sin_angles(max_len, dim, base)
    return torch.cat([a.sin(), a.cos()], dim=-1)[:, :dim].float()


def sinusoidal_sin_cos_swapped(max_len, dim, base=10000.0):
    a = _sin_angles(max_len, dim, base)
    pe = torch.zeros(max_len, dim, dtype=torch.float64)
    pe[:, 0::2] = a.cos()
    pe[:, 1::2] = a[:, : dim // 2].sin()
    return pe.float()


def sinusoidal_odd_dim_breaks(max_len, dim, base=10000.0):
    # 奇数维时 cos 只有 ⌊dim/2⌋ 列可放，却把 ⌈dim/2⌉ 列全塞进去：形状对不上，直接报错
    a = _sin_angles(max_len, dim, base)
    pe = torch.zeros(max_len, dim, dtype=torch.float64)
    pe[:, 0::2] = a.sin()
    pe[:, 1::2] = a.cos()
    return pe.float()


def sinusoidal_odd_dim_truncated(max_len, dim, base=10000.0):
    # 奇数维时少算了一对频率（arange(0, dim - 1, 2)），最后一维留成 0
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    a = pos * base ** (-torch.arange(0, dim - 1, 2, dtype=torch.float64) / dim)
    pe = torch.zeros(max_len, dim, dtype=torch.float64)
    pe[:, 0: 2 * a.shape[1]: 2] = a.sin()
    pe[:, 1: 2 * a.shape[1]: 2] = a.cos()
    return pe.float()


def sinusoidal_base_ignored(max_len, dim, base=10000.0):
    a = _sin_angles(max_len, dim, 10000.0)
    pe = torch.zeros(max_len, dim, dtype=torch.float64)
    pe[:, 0::2] = a.sin()
    pe[:, 1::2] = a[:, : dim // 2].cos()
    return pe.float()


BUGS = [
    Bug("interleaved_pairs",
        "用了 RoFormer 论文的交错配对 (2i, 2i+1)（repeat_interleave 的表 + 相邻两维的 rotate_half），"
        "本课（和 minimind）要的是 half-split：第 i 维与第 i+D/2 维一对",
        {"precompute_freqs_cis": precompute_interleaved, "rotate_half": rotate_half_interleaved,
         "apply_rotary_pos_emb": _apply_with(rotate_half_interleaved)}),
    Bug("mixed_layouts",
        "两种约定混用：cos/sin 表按交错布局 repeat_interleave，rotate_half 却按前后两半——这已经不是旋转了",
        {"precompute_freqs_cis": precompute_interleaved}),
    Bug("rotate_half_wrong_sign",
        "rotate_half 的负号放错了一半：写成了 [x2, −x1]，实际上是在往反方向转（−mθ）",
        {"rotate_half": rotate_half_wrong_sign, "apply_rotary_pos_emb": _apply_with(rotate_half_wrong_sign)}),
    Bug("exponent_misscaled",
        "频率指数写错：θ_i = base^(−i/dim)（少了 2），最慢的一对只转到 base^(−1/2)，频率范围只覆盖了一半",
        {"precompute_freqs_cis": precompute_exponent_misscaled}),
    Bug("positions_start_at_1",
        "位置从 1 开始编号（arange(1, end+1)）：位置 0 不再是恒等变换，整张表错位一格",
        {"precompute_freqs_cis": precompute_positions_from_1}),
    Bug("cos_sin_swapped",
        "cos 表和 sin 表返回反了：x·sin + rotate_half(x)·cos 不是旋转，会改变向量长度",
        {"precompute_freqs_cis": precompute_cos_sin_swapped}),
    Bug("base_ignored",
        "rope_base 参数被忽略、写死成 10000：minimind 用的是 1e6，最慢一对的频率差了几十倍",
        {"precompute_freqs_cis": precompute_base_ignored}),
    Bug("only_q_rotated",
        "只旋转了 q、忘了 k：q·k 不再只依赖相对位置 m−n",
        {"apply_rotary_pos_emb": apply_only_q}),
    Bug("no_dtype_cast",
        "没有把结果转回 q/k 的 dtype：bfloat16 的 q 乘 float32 的 cos 被提升成 float32（MiniMind2 原样如此，minimind-3 加了 .to(q.dtype)）",
        {"apply_rotary_pos_emb": apply_no_dtype_cast}),
    Bug("yarn_always_on",
        "end 没超过 original_max_position_embeddings 也做了 YaRN 插值：不需要外推时 RoPE 也被改了",
        {"precompute_freqs_cis": precompute_yarn_always}),
    Bug("yarn_all_dims_divided",
        "所有频率都除以 factor（这是位置插值 PI，不是 YaRN）：高频维本该原样保留",
        {"precompute_freqs_cis": precompute_yarn_all_dims}),
    Bug("yarn_high_not_clamped",
        "YaRN 的上界 high 没有截到 dim/2 − 1（少了 min(…, dim//2 − 1)）：rope_base 或 head_dim 小时斜坡被拉长，"
        "最慢的几对没有完全除以 factor",
        {"precompute_freqs_cis": precompute_yarn_high_unclamped}),
    Bug("yarn_low_not_clamped",
        "YaRN 的下界 low 没有截到 0（少了 max(…, 0)）：original_max_position_embeddings 小时 low 为负，"
        "斜坡从负的维度编号起步，最快的几对也被插值了",
        {"precompute_freqs_cis": precompute_yarn_low_unclamped}),
    Bug("yarn_betas_ignored",
        "YaRN 没有读 rope_scaling 里的 beta_fast / beta_slow，写死成默认的 32 和 1：换了配置斜坡的位置不变",
        {"precompute_freqs_cis": precompute_yarn_betas_ignored}),
    Bug("yarn_attention_factor_ignored",
        "YaRN 没有把 attention_factor 乘到 cos、sin 表上（minimind 乘了；默认 1.0 时看不出来）",
        {"precompute_freqs_cis": precompute_yarn_attention_factor_ignored}),
    Bug("sinusoidal_half_split",
        "正弦位置编码写成了前半 sin、后半 cos（half-split）；Vaswani 的公式是偶数维 sin、奇数维 cos 交错",
        {"sinusoidal_position_encoding": sinusoidal_half_split}),
    Bug("sinusoidal_sin_cos_swapped",
        "正弦位置编码偶数维放了 cos、奇数维放了 sin（反了）",
        {"sinusoidal_position_encoding": sinusoidal_sin_cos_swapped}),
    Bug("sinusoidal_odd_dim_breaks",
        "正弦位置编码在 dim 为奇数时出错：cos 只能放进 ⌊dim/2⌋ 列（pe[:, 1::2] 比 pe[:, 0::2] 少一列），"
        "要用 angles[:, : dim // 2]",
        {"sinusoidal_position_encoding": sinusoidal_odd_dim_breaks}),
    Bug("sinusoidal_odd_dim_truncated",
        "正弦位置编码在 dim 为奇数时少算了一对频率：最后一维（应是 sin）留成了 0",
        {"sinusoidal_position_encoding": sinusoidal_odd_dim_truncated}),
    Bug("sinusoidal_base_ignored",
        "正弦位置编码忽略了 base 参数、写死成 10000",
        {"sinusoidal_position_encoding": sinusoidal_base_ignored}),
]
