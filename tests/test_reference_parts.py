"""参考实现（solutions/ 的模块 02–04）的快速独立检查。

各模块完整的测试套件在 exercises/NN/test_*.py；这里只用几条与实现写法不同的独立参考，
在 tests/ 里单独把参考实现钉住（tinylm 和所有实验都建立在它们之上）：复数形式的 float64 RoPE、torch 自带的 F.scaled_dot_product_attention、
repeat_interleave、直接用 F.silu 写的 SwiGLU。
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kata.impl import resolve


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # 张量都很小，多线程没有好处；机器忙时 2 个 OpenMP 线程互相等待反而慢好几倍
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


rope = resolve("02_position_encoding", "solutions")
attn = resolve("03_attention", "solutions")
ffn = resolve("04_feedforward", "solutions")

# 容差（各写一次）：
F64 = dict(atol=1e-10, rtol=1e-10)   # 同一数学在 float64 下只差舍入
TABLE = dict(atol=1e-5, rtol=1e-5)   # cos/sin 表是 float32（与 minimind 一样），位置 < 64 时角度误差 ~1e-6
F32 = dict(atol=1e-5, rtol=1e-4)     # float32 下不同的累加顺序


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- RoPE

def _rope_complex(x: torch.Tensor, base: float) -> torch.Tensor:
    """独立参考：把第 i 维与第 i + D/2 维看成一个复数，乘上 e^{i·m·θ_i}（float64）。x: [B, S, H, D]。"""
    seq_len, dim = x.shape[1], x.shape[-1]
    half = dim // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / dim)
    angle = torch.arange(seq_len, dtype=torch.float64)[:, None] * theta        # [S, D/2]
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    z = z * torch.polar(torch.ones_like(angle), angle)[None, :, None, :]
    return torch.cat([z.real, z.imag], dim=-1)


@pytest.mark.parametrize("dim,base", [(8, 10000.0), (32, 1e6), (64, 10000.0)])
def test_rope_matches_complex_rotation(dim, base):
    q = torch.randn(2, 40, 3, dim, dtype=torch.float64, generator=_g(dim))
    k = torch.randn(2, 40, 1, dim, dtype=torch.float64, generator=_g(dim + 1))
    cos, sin = rope.precompute_freqs_cis(dim, end=40, rope_base=base)
    assert cos.shape == sin.shape == (40, dim) and cos.dtype == torch.float32
    q_rot, k_rot = rope.apply_rotary_pos_emb(q, k, cos, sin)
    assert q_rot.dtype == torch.float64 and k_rot.shape == k.shape
    torch.testing.assert_close(q_rot, _rope_complex(q, base), **TABLE)
    torch.testing.assert_close(k_rot, _rope_complex(k, base), **TABLE)


def test_rope_half_split_table_and_rotate_half():
    cos, sin = rope.precompute_freqs_cis(16, end=10, rope_base=10000.0)
    torch.testing.assert_close(cos[:, :8], cos[:, 8:])   # 前后两半用同一组角度
    torch.testing.assert_close(sin[:, :8], sin[:, 8:])
    torch.testing.assert_close(cos[0], torch.ones(16))   # 位置 0 不旋转
    x = torch.arange(6.0)
    torch.testing.assert_close(rope.rotate_half(x), torch.tensor([-3.0, -4.0, -5.0, 0.0, 1.0, 2.0]))


def test_rope_keeps_input_dtype_and_norm():
    cos, sin = rope.precompute_freqs_cis(16, end=12, rope_base=10000.0)
    q = torch.randn(1, 12, 2, 16, generator=_g(3)).to(torch.bfloat16)
    q_rot, k_rot = rope.apply_rotary_pos_emb(q, q, cos, sin)
    assert q_rot.dtype == k_rot.dtype == torch.bfloat16
    q32 = torch.randn(1, 12, 2, 16, generator=_g(4))
    r, _ = rope.apply_rotary_pos_emb(q32, q32, cos, sin)
    torch.testing.assert_close(r.norm(dim=-1), q32.norm(dim=-1), **F32)   # 旋转不改变长度


def test_rope_scores_depend_only_on_relative_position():
    dim = 32
    cos, sin = rope.precompute_freqs_cis(dim, end=64, rope_base=10000.0)
    q = torch.randn(dim, dtype=torch.float64, generator=_g(5))
    k = torch.randn(dim, dtype=torch.float64, generator=_g(6))

    def score(m, n):
        qs = q.expand(1, 64, 1, dim)
        ks = k.expand(1, 64, 1, dim)
        qr, kr = rope.apply_rotary_pos_emb(qs, ks, cos, sin)
        return float(qr[0, m, 0] @ kr[0, n, 0])

    for m, n, shift in [(5, 2, 10), (9, 9, 30), (3, 17, 40)]:
        assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)


def _angles(cos, sin, pos=1):
    return torch.atan2(sin[pos, : cos.shape[1] // 2].double(), cos[pos, : cos.shape[1] // 2].double())


def test_yarn_unchanged_within_original_length():
    plain = rope.precompute_freqs_cis(64, end=2048, rope_base=1e6)
    scaled = rope.precompute_freqs_cis(64, end=2048, rope_base=1e6, rope_scaling={
        "original_max_position_embeddings": 2048, "factor": 16, "beta_fast": 32, "beta_slow": 1})
    torch.testing.assert_close(scaled[0], plain[0], atol=0, rtol=0)
    torch.testing.assert_close(scaled[1], plain[1], atol=0, rtol=0)


def test_yarn_ramp_and_attention_factor():
    """dim 64、base 1e6、原长 2048：转 ≥32 圈的维度（i ≤ 5）不变，转 ≤1 圈的（i ≥ 14）频率除以 factor。"""
    dim, base, factor = 64, 1e6, 16
    scaling = {"original_max_position_embeddings": 2048, "factor": factor, "beta_fast": 32, "beta_slow": 1,
               "attention_factor": 1.0}
    cos0, sin0 = rope.precompute_freqs_cis(dim, end=4096, rope_base=base)
    cos1, sin1 = rope.precompute_freqs_cis(dim, end=4096, rope_base=base, rope_scaling=scaling)
    ratio = _angles(cos1, sin1) / _angles(cos0, sin0)      # 每对维度的新旧频率比
    # 独立地算边界：第 i 对在 L 内转 L·θ_i/2π 圈
    rotations = 2048 * base ** (-torch.arange(dim // 2, dtype=torch.float64) * 2 / dim) / (2 * math.pi)
    fast, slow = rotations >= 32 * 2 ** (1 / 32), rotations <= 1 / 2 ** (1 / 32)   # 离边界稍远一点，避开取整
    torch.testing.assert_close(ratio[fast], torch.ones_like(ratio[fast]), atol=1e-5, rtol=0)
    torch.testing.assert_close(ratio[slow], torch.full_like(ratio[slow], 1 / factor), atol=1e-5, rtol=0)
    assert bool(fast.any()) and bool(slow.any())
    assert bool((ratio[1:] <= ratio[:-1] + 1e-6).all()), "频率比应随维度单调不增（高频保留、低频插值）"
    cos2, sin2 = rope.precompute_freqs_cis(dim, end=4096, rope_base=base,
                                           rope_scaling={**scaling, "attention_factor": 1.5})
    torch.testing.assert_close(cos2, cos1 * 1.5)
    torch.testing.assert_close(sin2, sin1 * 1.5)


def test_sinusoidal_matches_paper_formula():
    pe = rope.sinusoidal_position_encoding(50, 16)
    assert pe.shape == (50, 16) and pe.dtype == torch.float32
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000.0 ** (2 * i / 16)
            assert float(pe[pos, 2 * i]) == pytest.approx(math.sin(angle), abs=1e-6)
            assert float(pe[pos, 2 * i + 1]) == pytest.approx(math.cos(angle), abs=1e-6)
    odd = rope.sinusoidal_position_encoding(5, 7)   # 奇数维：最后一维只有 sin
    assert odd.shape == (5, 7)
    assert float(odd[3, 5]) == pytest.approx(math.cos(3 / 10000.0 ** (4 / 7)), abs=1e-6)
    assert float(odd[3, 6]) == pytest.approx(math.sin(3 / 10000.0 ** (6 / 7)), abs=1e-6)


# ---------------------------------------------------------------- 注意力

def _qkv(b=2, h=3, sq=5, sk=5, d=8, seed=0, dtype=torch.float64):
    g = _g(seed)
    return (torch.randn(b, h, sq, d, generator=g, dtype=dtype),
            torch.randn(b, h, sk, d, generator=g, dtype=dtype),
            torch.randn(b, h, sk, d, generator=g, dtype=dtype))


def test_sdpa_matches_torch_plain_and_causal():
    q, k, v = _qkv()
    torch.testing.assert_close(attn.scaled_dot_product_attention(q, k, v),
                               F.scaled_dot_product_attention(q, k, v), **F64)
    torch.testing.assert_close(attn.scaled_dot_product_attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), **F64)


def test_sdpa_bool_mask_matches_torch():
    q, k, v = _qkv(sq=6, sk=6, seed=1)
    mask = torch.rand(2, 1, 6, 6, generator=_g(2)) > 0.4
    mask[..., 0] = True  # 每行至少能看见一个 key（整行屏蔽时 torch 给 NaN，我们给 0，单独测）
    torch.testing.assert_close(attn.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **F64)


def test_sdpa_causal_is_aligned_to_last_query_when_sq_lt_sk():
    q, k, v = _qkv(sq=3, sk=7, seed=3)
    # 第 i 个 query 能看见 key 0 … Sk−Sq+i（右下对齐）；torch 的 is_causal 是左上对齐，所以显式给 mask
    bottom_right = torch.ones(3, 7, dtype=torch.bool).tril(7 - 3)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bottom_right)
    torch.testing.assert_close(attn.scaled_dot_product_attention(q, k, v, is_causal=True), expected, **F64)
    # 最后 3 个 query 单独算，应等于完整 7×7 因果注意力的最后 3 行
    q_full, _, _ = _qkv(sq=7, sk=7, seed=3)
    q_full[:, :, 4:] = q
    full = attn.scaled_dot_product_attention(q_full, k, v, is_causal=True)
    torch.testing.assert_close(full[:, :, 4:], expected, **F64)


def test_sdpa_fully_masked_rows_are_zero_and_gradients_finite():
    q, k, v = _qkv(sq=4, sk=4, seed=4)
    q.requires_grad_(True)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[2] = False
    out = attn.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out[:, :, 2], torch.zeros_like(out[:, :, 2]))
    out.sum().backward()
    assert bool(torch.isfinite(q.grad).all())


def test_sdpa_low_precision_keeps_dtype():
    q, k, v = _qkv(dtype=torch.bfloat16)
    out = attn.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == torch.bfloat16
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)   # bf16 只有 ~3 位有效数字


def test_repeat_kv_matches_repeat_interleave():
    x = torch.randn(2, 5, 3, 4, generator=_g(5))
    for n_rep in (1, 2, 4):
        torch.testing.assert_close(attn.repeat_kv(x, n_rep), torch.repeat_interleave(x, n_rep, dim=2),
                                   atol=0, rtol=0)


def _attention(dim=32, n_heads=4, n_kv_heads=2, qk_norm=False, seed=0):
    torch.manual_seed(seed)
    return attn.Attention(dim, n_heads, n_kv_heads, qk_norm=qk_norm).double().eval()


def test_attention_parameter_names_and_shapes():
    a = attn.Attention(32, 4, 2)
    assert {n for n, _ in a.named_parameters()} == {f"{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert a.k_proj.weight.shape == (16, 32) and a.q_proj.weight.shape == (32, 32)
    b = attn.Attention(32, 4, qk_norm=True)
    assert {"q_norm.weight", "k_norm.weight"} <= {n for n, _ in b.named_parameters()}
    assert b.q_norm.weight.shape == (8,)
    with pytest.raises(ValueError, match="整除"):
        attn.Attention(30, 4)
    with pytest.raises(ValueError, match="整除"):
        attn.Attention(32, 4, 3)


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_kv_cache_decode_equals_full_forward(qk_norm):
    a = _attention(qk_norm=qk_norm)
    cos, sin = (t.double() for t in rope.precompute_freqs_cis(8, end=16, rope_base=10000.0))
    x = torch.randn(2, 9, 32, dtype=torch.float64, generator=_g(6))
    full, _ = a(x, (cos[:9], sin[:9]))
    out, past = a(x[:, :5], (cos[:5], sin[:5]), use_cache=True)      # prefill 5 个
    assert past[0].shape == (2, 5, 2, 8)                             # cache 只存 KVH=2 个头
    pieces = [out]
    for t in range(5, 9):                                            # 然后一个一个解码
        step, past = a(x[:, t:t + 1], (cos[t:t + 1], sin[t:t + 1]), past_key_value=past, use_cache=True)
        pieces.append(step)
    assert past[0].shape == (2, 9, 2, 8)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, **F64)


def test_attention_fast_path_equals_manual_path():
    a = _attention()
    cos, sin = (t.double() for t in rope.precompute_freqs_cis(8, end=7, rope_base=10000.0))
    x = torch.randn(3, 7, 32, dtype=torch.float64, generator=_g(7))
    fast, _ = a(x, (cos, sin))
    a.flash = False
    manual, _ = a(x, (cos, sin))
    torch.testing.assert_close(fast, manual, **F64)


def test_attention_left_padding_does_not_change_real_tokens():
    """RoPE 只看相对位置：左边补 2 个 padding（mask=0）后，真实 token 的输出应与不补时相同。"""
    a = _attention()
    cos, sin = (t.double() for t in rope.precompute_freqs_cis(8, end=8, rope_base=10000.0))
    x = torch.randn(1, 6, 32, dtype=torch.float64, generator=_g(8))
    plain, _ = a(x, (cos[:6], sin[:6]))
    padded = torch.cat([torch.randn(1, 2, 32, dtype=torch.float64, generator=_g(9)), x], dim=1)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]])
    out, _ = a(padded, (cos, sin), attention_mask=mask)
    torch.testing.assert_close(out[:, 2:], plain, **TABLE)   # 不同绝对位置的 float32 角度各自舍入
    assert bool(torch.isfinite(out).all())


# ---------------------------------------------------------------- FFN

def test_feedforward_matches_silu_formula_and_names():
    torch.manual_seed(0)
    f = ffn.FeedForward(24, hidden_dim=40)
    assert {n for n, _ in f.named_parameters()} == {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}
    x = torch.randn(2, 5, 24, generator=_g(10))
    expected = (F.silu(x @ f.gate_proj.weight.T) * (x @ f.up_proj.weight.T)) @ f.down_proj.weight.T
    torch.testing.assert_close(f(x), expected, **F32)


def test_feedforward_default_width():
    assert ffn.FeedForward(512).gate_proj.weight.shape == (1408, 512)     # MiniMind2：512 → 1408
    assert ffn.FeedForward(768).up_proj.weight.shape == (2048, 768)       # int(8·768/3)=2048，已是 64 的倍数
    assert ffn.FeedForward(64, multiple_of=16).down_proj.weight.shape == (64, 176)
    assert ffn.FeedForward(64, hidden_dim=100).gate_proj.weight.shape == (100, 64)
