"""模块 02：“不在 bug bank 里”的错误 RoPE / 正弦位置编码也必须被抓住，并且失败信息要点出概念。

这些实现故意不放进 kata/bugbank/position_encoding.py：它们模拟测试作者没有预料到的学习者错误。
每个都是一份完整的 rope.py（四个公开函数），只在一个地方写错。
"""
from __future__ import annotations

import pytest

from kata.runner import run_tests

CORRECT = '''
import math
import torch

def _freqs(dim, rope_base):
    return 1.0 / (rope_base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))

def _yarn(freqs, dim, end, rope_base, rope_scaling):
    if rope_scaling is None:
        return freqs, 1.0
    orig = rope_scaling.get("original_max_position_embeddings", 2048)
    factor = rope_scaling.get("factor", 16)
    bf, bs = rope_scaling.get("beta_fast", 32.0), rope_scaling.get("beta_slow", 1.0)
    attn = rope_scaling.get("attention_factor", 1.0)
    if end > orig:
        inv = lambda b: dim * math.log(orig / (b * 2 * math.pi)) / (2 * math.log(rope_base))
        low, high = max(math.floor(inv(bf)), 0), min(math.ceil(inv(bs)), dim // 2 - 1)
        ramp = ((torch.arange(dim // 2).float() - low) / max(high - low, 0.001)).clamp(0, 1)
        freqs = freqs * RAMP_EXPR
    return freqs, attn

def precompute_freqs_cis(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    freqs, attn = _yarn(FREQS_EXPR, dim, end, rope_base, rope_scaling)
    t = POSITIONS_EXPR
    ang = torch.outer(t, freqs).float()
    return torch.cat([ang.cos(), ang.cos()], -1) * attn, torch.cat([ang.sin(), ang.sin()], -1) * attn

def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)

def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
    APPLY_BODY

def sinusoidal_position_encoding(max_len, dim, base=10000.0):
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    ang = pos * base ** (-SIN_EXPONENT)
    pe = torch.zeros(max_len, dim, dtype=torch.float64)
    pe[:, 0::2] = ang.sin()
    pe[:, 1::2] = ang[:, : dim // 2].cos()
    return pe.float()
'''

DEFAULTS = {
    "RAMP_EXPR": "(1 - ramp + ramp / factor)",
    "FREQS_EXPR": "_freqs(dim, rope_base)",
    "POSITIONS_EXPR": "torch.arange(end, dtype=torch.float32)",
    "APPLY_BODY": "return (q * cos + rotate_half(q) * sin).to(q.dtype), (k * cos + rotate_half(k) * sin).to(k.dtype)",
    "SIN_EXPONENT": "torch.arange(0, dim, 2, dtype=torch.float64) / dim",
}

LLAMA_COMPLEX = '''
import torch

# Meta LLaMA 的写法：复数 + 相邻两维配对（interleaved），cos/sin 表按相邻两维重复
def precompute_freqs_cis(dim, end=32 * 1024, rope_base=1e6, rope_scaling=None):
    freqs = 1.0 / (rope_base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
    ang = torch.outer(torch.arange(end, dtype=torch.float32), freqs)
    return ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)

def rotate_half(x):
    x = x.reshape(*x.shape[:-1], -1, 2)
    return torch.stack((-x[..., 1], x[..., 0]), -1).flatten(-2)

def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
    def rot(x):
        z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
        c = cos[..., 0::2].unsqueeze(unsqueeze_dim)
        s = sin[..., 0::2].unsqueeze(unsqueeze_dim)
        return torch.view_as_real(z * torch.complex(c.float(), s.float())).flatten(-2).to(x.dtype)
    return rot(q), rot(k)

def sinusoidal_position_encoding(max_len, dim, base=10000.0):
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    ang = pos * base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    pe = torch.zeros(max_len, dim, dtype=torch.float64)
    pe[:, 0::2] = ang.sin()
    pe[:, 1::2] = ang[:, : dim // 2].cos()
    return pe.float()
'''


def _variant(**changes) -> str:
    src = CORRECT
    for key, default in DEFAULTS.items():
        src = src.replace(key, changes.get(key, default))
    return src


assert "max(math.floor(inv(bf)), 0), min(math.ceil(inv(bs))" in _variant()
assert '"original_max_position_embeddings", 2048' in _variant()


HELD_OUT_ROPE = {
    # Meta LLaMA 的复数写法（交错配对），与 bank 里的交错实现代码完全不同
    "llama_complex_interleaved": LLAMA_COMPLEX,
    # 频率随 i 变快而不是变慢：θ_i = base^(+2i/dim)
    "increasing_frequencies": _variant(FREQS_EXPR="rope_base ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim)"),
    # 位置用 float16 存：2048 以上的整数表示不了
    "float16_positions": _variant(POSITIONS_EXPR="torch.arange(end, dtype=torch.float16).float()"),
    # YaRN 的斜坡方向反了：高频被除以 factor、低频不动
    "yarn_ramp_reversed": _variant(RAMP_EXPR="(ramp + (1 - ramp) / factor)"),
    # 用 .detach() 得到旋转后的 k：前向数值全对，梯度传不到 k
    "detached_k": _variant(APPLY_BODY="return (q * cos + rotate_half(q) * sin).to(q.dtype), "
                                      "(k.detach() * cos + rotate_half(k.detach()) * sin).to(k.dtype)"),
    # 原地修改了调用者的 q
    "in_place_q": _variant(APPLY_BODY="q_rot = rotate_half(q) * sin\n    q.mul_(cos).add_(q_rot)\n"
                                      "    return q, (k * cos + rotate_half(k) * sin).to(k.dtype)"),
    # YaRN 的上下界取整方向反了：low 用 ceil、high 用 floor（斜坡两端各缩进一对）
    "yarn_bounds_rounded_inward": _variant().replace("max(math.floor(inv(bf)), 0), min(math.ceil(inv(bs))",
                                                     "max(math.ceil(inv(bf)), 0), min(math.floor(inv(bs))"),
    # YaRN 读错了键名：max_position_embeddings 不在 rope_scaling 里，于是总用默认的 2048
    "yarn_wrong_key_for_original_length": _variant().replace('"original_max_position_embeddings", 2048',
                                                             '"max_position_embeddings", 2048'),
    # 正弦编码的指数少了 2：pos / base^(i/dim)
    "sinusoidal_exponent_without_2": _variant(SIN_EXPONENT="torch.arange(0, dim, 2, dtype=torch.float64) / (2 * dim)"),
}

CONCEPT_WORDS = ("RoPE", "旋转", "位置", "频率", "YaRN", "正弦", "cos", "sin", "相对", "对比", "dtype", "梯度",
                 "形状", "half-split", "原地")


@pytest.mark.parametrize("name", sorted(HELD_OUT_ROPE))
def test_held_out_wrong_rope_fails_with_a_concept(name, tmp_path):
    path = tmp_path / "rope.py"
    path.write_text(HELD_OUT_ROPE[name], encoding="utf-8")
    s = run_tests("02_position_encoding", str(path))
    assert s.failed > 0, f"错误实现 {name} 通过了模块 02 的全部测试"
    assert s.errors == 0, [o.name for o in s.outcomes if o.status == "error"]
    messages = [o.message for o in s.outcomes if o.status == "failed"]
    assert all(any(w in m for w in CONCEPT_WORDS) for m in messages), messages
    assert not any("Traceback" in o.detail for o in s.outcomes), "失败信息里不应该出现 traceback"


def test_correct_template_passes(tmp_path):
    # 模板本身（不做任何修改）必须通过全部测试：否则上面的失败可能来自模板，而不是那一处错误
    path = tmp_path / "rope.py"
    path.write_text(_variant(), encoding="utf-8")
    s = run_tests("02_position_encoding", str(path))
    assert s.total > 0 and s.failed == 0 and s.errors == 0, [(o.name, o.message) for o in s.outcomes
                                                            if o.status != "passed"][:5]
