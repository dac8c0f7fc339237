"""模块 02 的测试：RoPE（precompute_freqs_cis / rotate_half / apply_rotary_pos_emb，含 YaRN）与正弦位置编码。

分层（每一层都能失败）：
1. 契约：cos/sin 表的形状、dtype 和 half-split 布局；位置 0 是恒等变换；apply 的形状、GQA、dtype、unsqueeze_dim；
2. 与参考实现对比（同样的输入，hypothesis 抽形状和数值）；
3. 与独立参考对比：float64 写成 exp(−2i/D·ln base) 的频率公式，以及一个用**复数乘法**写成的 RoPE
   （第 i 维与第 i+D/2 维看成一个复数，乘以 e^{i·m·θ_i}）——在 --solutions 模式下靠它们保持诚实；
   正弦位置编码对照 Vaswani 等 2017 的公式（逐元素用 math.sin / math.cos 写）；
4. 性质：相对位置性质 ⟨RoPE(q,m), RoPE(k,n)⟩ = ⟨RoPE(q,m+s), RoPE(k,n+s)⟩、每一对 (i, i+D/2) 的长度不变、
   YaRN 不需要时不改动 / 需要时高频不动、低频除以 factor、正弦编码的点积只依赖距离；
5. float64 gradcheck。
失败信息会告诉你：期望什么、你给了什么、与哪个常见错误一致、该读 teaching.md 的哪一节。
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, strategies as st

from kata.impl import resolve
from kata.testing import assert_close, require

MODULE = "02_position_encoding"
ROPE = "teaching.md §2（RoPE：把位置写成旋转）"
HALF = "teaching.md §2.3（half-split 与交错配对）"
FREQ = "teaching.md §3（为什么要很多个频率）"
ABS = "teaching.md §4.1（正弦位置编码）"
YARN = "teaching.md §5.4（YaRN 与 minimind 的实现）"
VERIFY = "teaching.md §6（如何验证）"

# 容差只在这里写一次，每个都有理由
TOL = {
    "table": dict(atol=1e-4, rtol=0),          # float32 的角度 m·θ：m ≤ 1000 时舍入误差 ≤ m·θ·6e-8 ≈ 6e-5
    "table_far": dict(atol=5e-3, rtol=0),      # 位置 32767：float32 的 θ 相对误差 6e-8 × 32767 ≈ 2e-3 弧度
    "sin_table": dict(atol=5e-5, rtol=0),      # 正弦表角度 ≤ 128 弧度，float32 里算也只差 ~1e-5
    torch.float64: dict(atol=1e-10, rtol=1e-10),  # 同一个旋转在 float64 下只差舍入
    torch.float32: dict(atol=2e-5, rtol=2e-5),    # float32 的 cos/sin 表（~1e-7）乘上 |q|≈3，再加一次乘加舍入
    torch.bfloat16: dict(atol=3e-2, rtol=3e-2),   # bfloat16 只有 8 位尾数；乘、加、转回去各舍入一次
    torch.float16: dict(atol=3e-3, rtol=4e-3),    # float16 有 11 位尾数
}

seeds = st.integers(0, 2**31 - 1)
halves = st.integers(1, 16)                      # D/2：D = 2 … 32
bases = st.sampled_from([10.0, 1e4, 5e5, 1e6])

YARN_CFG = dict(beta_fast=32, beta_slow=1, attention_factor=1.0)   # minimind 的默认值（factor、L 由测试给）


# ---------------------------------------------------------------- 小工具

def _rand(*shape, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _call(what: str, section: str, fn, *args, **kwargs):
    """调用学习者的函数；NotImplementedError 原样抛出（桩的那一行提示），其他异常变成一句中文失败信息。"""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except Exception as exc:  # 学习者的代码在这个输入上直接报错：给一句话，而不是 traceback
        first = str(exc).splitlines()[0] if str(exc) else ""
        pytest.fail(f"{what} 时出错：{type(exc).__name__}: {first}\n  → 见 {section}", pytrace=False)


def _tables(ns, dim, end, base=1e4, rope_scaling=None, section=ROPE):
    out = _call(f"precompute_freqs_cis({dim}, end={end}, rope_base={base:g}"
                + (f", rope_scaling={rope_scaling}" if rope_scaling else "") + ")",
                section, ns.precompute_freqs_cis, dim, end=end, rope_base=base, rope_scaling=rope_scaling)
    require(isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out),
            f"precompute_freqs_cis 应返回 (cos, sin) 两个张量，实际返回 {type(out).__name__}", section)
    return out


def _apply(ns, q, k, cos, sin, unsqueeze_dim=1, section=ROPE):
    out = _call(f"apply_rotary_pos_emb(q {tuple(q.shape)}, k {tuple(k.shape)}, cos {tuple(cos.shape)}, "
                f"sin {tuple(sin.shape)}, unsqueeze_dim={unsqueeze_dim})",
                section, ns.apply_rotary_pos_emb, q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    require(isinstance(out, tuple) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out),
            f"apply_rotary_pos_emb 应返回 (q, k) 两个张量，实际返回 {type(out).__name__}", section)
    return out


def _theta64(dim: int, base: float) -> torch.Tensor:
    """独立参考：第 i 对的角频率，float64，写成 exp(−(2i/D)·ln base)。"""
    i = torch.arange(dim // 2, dtype=torch.float64)
    return torch.exp(-(2.0 * i / dim) * math.log(base))


def _tables64(theta: torch.Tensor, end: int, start: int = 0):
    angle = torch.arange(start, start + end, dtype=torch.float64)[:, None] * theta[None, :]
    return torch.cat([angle.cos(), angle.cos()], -1), torch.cat([angle.sin(), angle.sin()], -1)


def _complex_rope(x: torch.Tensor, positions: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """独立参考：把 (x_i, x_{i+D/2}) 看成复数 x_i + i·x_{i+D/2}，乘以 e^{i·m·θ_i}。x [B, S, H, D]，float64。"""
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    angle = positions.double()[:, None] * theta[None, :]                  # [S, D/2]
    z = z * torch.polar(torch.ones_like(angle), angle)[None, :, None, :]  # 对 batch、头广播
    return torch.cat([z.real, z.imag], dim=-1)


def _yarn_ratio64(dim, base, orig, factor, beta_fast, beta_slow) -> torch.Tensor:
    """独立写的 minimind YaRN：每一对频率被乘上的比例，float64。

    写法特意与实现不同：“转 b 圈的那一对”用 log 以 base 为底写成 (dim/2)·log_base(L / 2πb)，
    截断用 if 写，斜坡用分段函数写，比例写成 1/s + (1 − 1/s)·(1 − γ)。
    """
    half = dim // 2

    def pair_turning(turns):  # 在 orig 个位置内恰好转 turns 圈的那一对（可以是小数、负数或超过 half）
        return (dim / 2) * math.log(orig / (2 * math.pi * turns), base)

    lo, hi = math.floor(pair_turning(beta_fast)), math.ceil(pair_turning(beta_slow))
    if lo < 0:
        lo = 0                  # 编号为负的对不存在：斜坡最早从第 0 对开始
    if hi > half - 1:
        hi = half - 1           # 编号超过最后一对也不存在：斜坡最晚在第 half−1 对结束
    ratios = []
    for i in range(half):
        if i <= lo:
            gamma = 0.0
        elif i >= hi:
            gamma = 1.0
        else:
            gamma = (i - lo) / (hi - lo)
        ratios.append(1.0 / factor + (1.0 - 1.0 / factor) * (1.0 - gamma))
    return torch.tensor(ratios, dtype=torch.float64)


def _yarn_bounds_unclamped(dim, base, orig, beta_fast, beta_slow):
    """（测试自检用）不截断时的 low、high。"""
    def pair_turning(turns):
        return (dim / 2) * math.log(orig / (2 * math.pi * turns), base)
    return math.floor(pair_turning(beta_fast)), math.ceil(pair_turning(beta_slow))


def _pipeline_run(q, k, dim, base, which):
    """返回一个函数：给定任意实现的命名空间，算整条 precompute → apply，取出 q 或 k。也用于 bug 比对。"""
    def run(ns):
        cos, sin = ns.precompute_freqs_cis(dim, end=q.shape[1], rope_base=base)
        return ns.apply_rotary_pos_emb(q, k, cos, sin)[0 if which == "q" else 1]
    return run


def _angle_at_1(cos, sin):
    """从表里读回位置 1 上每一对的转角（θ_i ≤ 1 < π，atan2 不会绕圈）。"""
    half = cos.shape[-1] // 2
    return torch.atan2(sin[1, :half].double(), cos[1, :half].double())


# ---------------------------------------------------------------- 1. 契约

@pytest.mark.parametrize("dim,end", [(2, 1), (16, 7), (64, 128)], ids=lambda v: str(v))
def test_tables_shape_dtype_and_half_split(impl, dim, end):
    cos, sin = _tables(impl, dim, end)
    for name, t in (("cos", cos), ("sin", sin)):
        require(tuple(t.shape) == (end, dim), f"{name} 表期望形状 {(end, dim)}（[end, dim]），实际 {tuple(t.shape)}", ROPE)
        require(t.dtype == torch.float32, f"{name} 表期望 dtype torch.float32，实际 {t.dtype}", ROPE)
        require(bool(torch.isfinite(t).all()), f"{name} 表里有 NaN / inf", ROPE)
        h = dim // 2
        same = torch.equal(t[:, :h], t[:, h:])
        require(same, f"half-split 布局：{name} 表的前半 [:, :D/2] 与后半 [:, D/2:] 应该完全相同"
                      f"（第 i 维与第 i+D/2 维用同一个角度）。实际第 1 行：{t[min(1, end - 1)].tolist()[:8]}"
                      "——如果相邻两个数相等，你写的是交错布局（repeat_interleave）", HALF)


def test_defaults_match_minimind(impl):
    # 默认参数 = minimind：end=32768、rope_base=1e6；远处的位置也要算对
    cos, sin = _call("precompute_freqs_cis(64)（默认 end=32768、rope_base=1e6）", ROPE, impl.precompute_freqs_cis, 64)
    require(tuple(cos.shape) == (32768, 64) and tuple(sin.shape) == (32768, 64),
            f"默认参数下期望形状 (32768, 64)，实际 cos {tuple(cos.shape)}、sin {tuple(sin.shape)}"
            "（默认 end = 32 * 1024，与 minimind 的 max_position_embeddings 相同）", ROPE)
    rows = [0, 1, 2, 100, 1000]
    angle = torch.tensor(rows + [32767], dtype=torch.float64)[:, None] * _theta64(64, 1e6)[None, :]
    ref = torch.stack([torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)])   # [2, 6, 64]
    # 诊断（与 bug bank 比对）只需要前 1001 行：不必让每个错误实现都算一遍 32768 行的表
    run = lambda ns: torch.stack(ns.precompute_freqs_cis(64, end=1001, rope_base=1e6))[:, rows]  # noqa: E731
    assert_close(torch.stack([cos[rows], sin[rows]]).double(), ref[:, :-1], **TOL["table"],
                 check_dtype=False, what="默认 rope_base=1e6 时第 0/1/2/100/1000 行的 [cos, sin] 与公式 "
                 "θ_i = 1e6^(−2i/64) 对比", section=FREQ, module=MODULE, run=lambda ns: run(ns).double())
    assert_close(torch.stack([cos[-1], sin[-1]]).double(), ref[:, -1], **TOL["table_far"],
                 check_dtype=False, what="位置 32767（表的最后一行）的 [cos, sin] 与 float64 公式对比"
                 "（位置要用能精确表示整数的类型，例如 float32 的 arange，不能是 float16）", section=FREQ)


def test_position_zero_is_identity(impl):
    cos, sin = _tables(impl, 8, 4)
    require(bool(torch.all(cos[0] == 1)) and bool(torch.all(sin[0] == 0)),
            f"位置 0 应该不转：cos[0] 全为 1、sin[0] 全为 0。实际 cos[0]={cos[0].tolist()}，sin[0]={sin[0].tolist()}"
            "（位置要从 0 开始编号；cos 和 sin 也别返回反了）", ROPE)
    q, k = _rand(2, 1, 3, 8, seed=0), _rand(2, 1, 1, 8, seed=1)
    q_out, k_out = _apply(impl, q, k, cos[:1], sin[:1])
    assert_close(q_out, q, atol=1e-7, rtol=0, what="位置 0 上旋转后的 q（应该原样不变）", section=ROPE)
    assert_close(k_out, k, atol=1e-7, rtol=0, what="位置 0 上旋转后的 k（应该原样不变）", section=ROPE)


def test_rotate_half_definition(impl):
    x = _rand(2, 3, 4, 10, seed=3)
    out = _call("rotate_half(x [2, 3, 4, 10])", HALF, impl.rotate_half, x)
    # 独立写法：rotate_half 就是乘以分块矩阵 J = [[0, −I], [I, 0]]（把每一对 (a, b) 变成 (−b, a)）
    h = 5
    J = torch.zeros(10, 10, dtype=torch.float64)
    J[:h, h:] = -torch.eye(h, dtype=torch.float64)
    J[h:, :h] = torch.eye(h, dtype=torch.float64)
    expected = (x.double() @ J.T).float()
    assert_close(out, expected, atol=1e-7, rtol=0,
                 what="rotate_half(x) 应为 [−x2, x1]（half-split：x1、x2 是最后一维的前后两半，相当于把每一对转 90°）", section=HALF,
                 module=MODULE, run=lambda ns: ns.rotate_half(x))
    twice = _call("rotate_half(rotate_half(x))", HALF, impl.rotate_half, out)
    assert_close(twice, -x, atol=1e-7, rtol=0, what="转两次 90° = 转 180°：rotate_half(rotate_half(x)) 应为 −x",
                 section=HALF)


def test_apply_shapes_gqa_and_no_in_place(impl):
    cos, sin = _tables(impl, 8, 5)
    q, k = _rand(2, 5, 4, 8, seed=4), _rand(2, 5, 2, 8, seed=5)   # GQA：4 个 query 头、2 个 KV 头
    q0, k0 = q.clone(), k.clone()
    q_out, k_out = _apply(impl, q, k, cos, sin)
    require(tuple(q_out.shape) == (2, 5, 4, 8), f"旋转后的 q 期望形状 (2, 5, 4, 8)，实际 {tuple(q_out.shape)}", ROPE)
    require(tuple(k_out.shape) == (2, 5, 2, 8),
            f"旋转后的 k 期望形状 (2, 5, 2, 8)（KV 头数可以比 q 少），实际 {tuple(k_out.shape)}", ROPE)
    require(torch.equal(q, q0) and torch.equal(k, k0),
            "apply_rotary_pos_emb 原地修改了传进来的 q 或 k（例如 q *= cos）：调用者手里的张量被改掉了", ROPE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_dtype_preserved_and_values_right(impl, dtype):
    cos, sin = _tables(impl, 16, 6)
    q, k = _rand(1, 6, 2, 16, seed=6, dtype=dtype), _rand(1, 6, 1, 16, seed=7, dtype=dtype)
    q_out, k_out = _apply(impl, q, k, cos, sin)
    pos, theta = torch.arange(6), _theta64(16, 1e4)
    run_q, run_k = _pipeline_run(q, k, 16, 1e4, "q"), _pipeline_run(q, k, 16, 1e4, "k")
    tol = TOL[torch.float32] if dtype == torch.float64 else TOL[dtype]  # float64 的 q 乘的仍是 float32 的表
    assert_close(q_out, _complex_rope(q, pos, theta).to(dtype), **tol, what=f"{dtype} 的 q 旋转后",
                 section=ROPE, module=MODULE, run=run_q)
    assert_close(k_out, _complex_rope(k, pos, theta).to(dtype), **tol, what=f"{dtype} 的 k 旋转后",
                 section=ROPE, module=MODULE, run=run_k)


def test_unsqueeze_dim_for_heads_first_layout(impl):
    cos, sin = _tables(impl, 8, 5)
    q, k = _rand(2, 5, 3, 8, seed=8), _rand(2, 5, 3, 8, seed=9)
    q_ref, k_ref = _apply(impl, q, k, cos, sin, unsqueeze_dim=1)
    # [B, H, S, D] 布局：cos.unsqueeze(0) → [1, S, D]，沿 S 对齐
    q_t, k_t = _apply(impl, q.transpose(1, 2), k.transpose(1, 2), cos, sin, unsqueeze_dim=0)
    assert_close(q_t.transpose(1, 2), q_ref, atol=1e-6, rtol=1e-6,
                 what="q 用 [B, H, S, D] 布局、unsqueeze_dim=0 时（应与 [B, S, H, D]、unsqueeze_dim=1 的结果一致）",
                 section=ROPE)
    assert_close(k_t.transpose(1, 2), k_ref, atol=1e-6, rtol=1e-6,
                 what="k 用 [B, H, S, D] 布局、unsqueeze_dim=0 时", section=ROPE)


# ---------------------------------------------------------------- 2. 与参考实现对比

@given(halves, st.integers(1, 40), bases, seeds)
@example(half=4, seq=5, base=1e4, seed=0)
def test_matches_reference_solution(impl, half, seq, base, seed):
    dim = 2 * half
    q, k = _rand(2, seq, 2, dim, seed=seed), _rand(2, seq, 1, dim, seed=seed + 1)
    sol = resolve(MODULE, "solutions")
    for which in ("q", "k"):
        run = _pipeline_run(q, k, dim, base, which)
        assert_close(_call("precompute_freqs_cis → apply_rotary_pos_emb", ROPE, run, impl), run(sol),
                     **TOL[torch.float32], what=f"与参考实现对比旋转后的 {which}（D={dim}，S={seq}，rope_base={base:g}）",
                     section=ROPE, module=MODULE, run=run)


# ---------------------------------------------------------------- 3. 独立参考

@pytest.mark.parametrize("base", [100.0, 1e4, 1e6], ids=lambda b: f"base={b:g}")
@pytest.mark.parametrize("dim", [8, 64])
def test_frequencies_follow_rope_base(impl, dim, base):
    cos, sin = _tables(impl, dim, 3, base=base, section=FREQ)
    theta = _theta64(dim, base)
    got = _angle_at_1(cos, sin)
    run = lambda ns: _angle_at_1(*ns.precompute_freqs_cis(dim, end=3, rope_base=base))  # noqa: E731
    assert_close(got, theta, atol=1e-6, rtol=1e-5,
                 what=f"位置 1 上每一对的转角 θ_i 应为 rope_base^(−2i/dim)（dim={dim}，rope_base={base:g}；"
                      f"最慢的一对 θ_{dim // 2 - 1} = {float(theta[-1]):.3g}）",
                 section=FREQ, module=MODULE, run=run)


@given(halves, st.integers(1, 300), bases)
@example(half=4, end=20, base=1e4)
def test_tables_match_formula(impl, half, end, base):
    dim = 2 * half
    cos, sin = _tables(impl, dim, end, base=base, section=FREQ)
    cos64, sin64 = _tables64(_theta64(dim, base), end)
    run = lambda ns: torch.stack(ns.precompute_freqs_cis(dim, end=end, rope_base=base))  # noqa: E731
    got = torch.stack([cos, sin]) if cos.shape == sin.shape else cos
    assert_close(got.double(), torch.stack([cos64, sin64]), **TOL["table"], check_dtype=False,
                 what=f"[cos, sin] 表与 float64 公式 cos/sin(m·rope_base^(−2i/dim)) 对比（dim={dim}，end={end}，"
                      f"rope_base={base:g}）", section=FREQ, module=MODULE, run=lambda ns: run(ns).double())


@given(st.integers(1, 2), st.integers(1, 12), st.integers(1, 3), halves, bases, seeds)
@example(batch=2, seq=5, heads=3, half=4, base=1e4, seed=0)
def test_matches_complex_number_rope(impl, batch, seq, heads, half, base, seed):
    dim = 2 * half
    q, k = _rand(batch, seq, heads, dim, seed=seed), _rand(batch, seq, 1, dim, seed=seed + 1)
    cos, sin = _tables(impl, dim, seq, base=base)
    q_out, k_out = _apply(impl, q, k, cos, sin)
    pos, theta = torch.arange(seq), _theta64(dim, base)
    for name, got, x in (("q", q_out, q), ("k", k_out, k)):
        assert_close(got, _complex_rope(x, pos, theta).float(), **TOL[torch.float32],
                     what=f"与复数写法的 RoPE 对比旋转后的 {name}（(x_i, x_(i+D/2)) 当作复数乘 e^(i·m·θ_i)；"
                          f"形状 {tuple(x.shape)}，rope_base={base:g}）",
                     section=HALF, module=MODULE, run=_pipeline_run(q, k, dim, base, name))


@given(st.integers(0, 50), st.integers(1, 6), halves, seeds)
@example(start=7, seq=3, half=4, seed=0)
def test_apply_alone_float64_with_sliced_tables(impl, start, seq, half, seed):
    # 只测 apply：表由测试用 float64 算好，并像 minimind 那样从 start_pos 开始切（KV cache 的情形）
    dim = 2 * half
    q, k = _rand(1, seq, 2, dim, seed=seed, dtype=torch.float64), _rand(1, seq, 1, dim, seed=seed + 1, dtype=torch.float64)
    theta = _theta64(dim, 1e4)
    cos, sin = _tables64(theta, seq, start=start)
    q_out, k_out = _apply(impl, q, k, cos, sin)
    pos = torch.arange(start, start + seq)
    run_q = lambda ns: ns.apply_rotary_pos_emb(q, k, cos, sin)[0]  # noqa: E731
    assert_close(q_out, _complex_rope(q, pos, theta), **TOL[torch.float64],
                 what=f"float64、表从位置 {start} 开始切时旋转后的 q（与复数写法对比）", section=ROPE,
                 module=MODULE, run=run_q)
    assert_close(k_out, _complex_rope(k, pos, theta), **TOL[torch.float64],
                 what=f"float64、表从位置 {start} 开始切时旋转后的 k（与复数写法对比）", section=ROPE,
                 module=MODULE, run=lambda ns: ns.apply_rotary_pos_emb(q, k, cos, sin)[1])


# ---------------------------------------------------------------- 4. 性质

@given(st.integers(0, 400), st.integers(0, 400), st.integers(1, 400), st.sampled_from([8, 16, 32]), seeds)
@example(m=3, n=10, s=100, dim=16, seed=0)
def test_relative_position_property(impl, m, n, s, dim, seed):
    cos, sin = _tables(impl, dim, 801)
    q, k = _rand(1, 1, 1, dim, seed=seed), _rand(1, 1, 1, dim, seed=seed + 1)

    def score(pm, pn):
        qm = _apply(impl, q, q, cos[pm:pm + 1], sin[pm:pm + 1])[0]
        kn = _apply(impl, k, k, cos[pn:pn + 1], sin[pn:pn + 1])[1]
        return float((qm.double() * kn.double()).sum())

    a, b = score(m, n), score(m + s, n + s)
    scale = float(q.norm() * k.norm())
    require(abs(a - b) <= 1e-4 * scale,
            f"相对位置性质不成立：⟨RoPE(q, m), RoPE(k, n)⟩ 应该只依赖 m − n。\n"
            f"  m={m}, n={n}：{a:.6f}；两个位置都加 s={s} 后：{b:.6f}（差 {abs(a - b):.3g}，容差 {1e-4 * scale:.3g}）\n"
            "  q 和 k 都要旋转，而且要用同一张表、各自位置上的那一行", ROPE)


@given(st.integers(1, 20), halves, bases, seeds)
@example(seq=6, half=4, base=1e4, seed=0)
def test_rotation_preserves_each_pair_norm(impl, seq, half, base, seed):
    dim = 2 * half
    cos, sin = _tables(impl, dim, seq, base=base)
    q = _rand(1, seq, 2, dim, seed=seed)
    q_out, _ = _apply(impl, q, q, cos, sin)
    pair = lambda x: x[..., :half].double() ** 2 + x[..., half:].double() ** 2  # noqa: E731
    assert_close(pair(q_out), pair(q), atol=1e-4, rtol=1e-5, check_dtype=False,
                 what=f"每一对 (i, i+D/2) 的长度² x_i² + x_(i+D/2)² 在旋转前后应该不变（D={dim}）",
                 section=HALF, module=MODULE, run=lambda ns: pair(_pipeline_run(q, q, dim, base, "q")(ns)))


@pytest.mark.parametrize("end_ratio", [0.5, 1.0], ids=["end<L", "end=L"])
def test_yarn_is_identity_when_not_needed(impl, end_ratio):
    orig, dim, base = 256, 32, 1e4
    end = int(orig * end_ratio)
    scaling = dict(YARN_CFG, original_max_position_embeddings=orig, factor=4)
    cos, sin = _tables(impl, dim, end, base=base, rope_scaling=scaling, section=YARN)
    plain_cos, plain_sin = _tables(impl, dim, end, base=base, section=YARN)
    run = lambda ns: torch.stack(ns.precompute_freqs_cis(dim, end=end, rope_base=base, rope_scaling=scaling))  # noqa: E731
    assert_close(torch.stack([cos, sin]), torch.stack([plain_cos, plain_sin]), atol=1e-6, rtol=0,
                 what=f"YaRN：end={end} 没有超过 original_max_position_embeddings={orig}，表应与不加 rope_scaling 时完全相同",
                 section=YARN, module=MODULE, run=run)


YARN_CASES = [  # (dim, rope_base, L, factor)
    (64, 1e4, 256, 4),
    (64, 1e6, 2048, 16),   # minimind 的默认 YaRN：L=2048、factor=16、rope_base=1e6、head_dim=64
    (32, 1e4, 512, 8),
]


@pytest.mark.parametrize("dim,base,orig,factor", YARN_CASES, ids=lambda v: str(v))
def test_yarn_high_frequencies_kept_low_frequencies_divided(impl, dim, base, orig, factor):
    scaling = dict(YARN_CFG, original_max_position_embeddings=orig, factor=factor)
    end = 2 * orig
    cos, sin = _tables(impl, dim, end, base=base, rope_scaling=scaling, section=YARN)
    require(tuple(cos.shape) == (end, dim), f"YaRN 表期望形状 {(end, dim)}，实际 {tuple(cos.shape)}", YARN)
    theta = _theta64(dim, base)
    ratio = _angle_at_1(cos, sin) / theta                   # 每一对的频率被乘了多少
    rotations = orig * theta / (2 * math.pi)                 # 在原训练长度 L 内每一对转几圈
    fast, slow = rotations > 32, rotations < 1
    require(bool(fast.any()) and bool(slow.any()), "（测试自检：这个配置应同时有高频对和低频对）", YARN)
    fmt = lambda t: "[" + ", ".join(f"{v:.3f}" for v in t.tolist()) + "]"  # noqa: E731
    require(bool(torch.allclose(ratio[fast], torch.ones_like(ratio[fast]), atol=0, rtol=1e-4)),
            f"YaRN：在 L={orig} 个位置里转了超过 beta_fast=32 圈的高频对（前 {int(fast.sum())} 对）应原样保留，"
            f"频率比例应为 1，实际 {fmt(ratio[fast])}", YARN)
    require(bool(torch.allclose(ratio[slow], torch.full_like(ratio[slow], 1 / factor), atol=0, rtol=1e-4)),
            f"YaRN：转不满 beta_slow=1 圈的低频对（后 {int(slow.sum())} 对）频率应除以 factor={factor}（比例 "
            f"{1 / factor:.4f}），实际 {fmt(ratio[slow])}", YARN)
    expected = _yarn_ratio64(dim, base, orig, factor, 32, 1)
    run = lambda ns: _angle_at_1(*ns.precompute_freqs_cis(dim, end=end, rope_base=base, rope_scaling=scaling)) / theta  # noqa: E731
    assert_close(ratio, expected, atol=1e-5, rtol=1e-4,
                 what=f"YaRN 每一对的频率比例 (1−γ_i) + γ_i/factor（γ 是 low、high 之间的线性斜坡；dim={dim}，L={orig}，"
                      f"factor={factor}）", section=YARN, module=MODULE, run=run)


def test_yarn_attention_factor_scales_cos_and_sin(impl):
    dim, base, orig = 32, 1e4, 64
    plain = dict(YARN_CFG, original_max_position_embeddings=orig, factor=4)
    hot = dict(plain, attention_factor=0.8)
    cos1, sin1 = _tables(impl, dim, 2 * orig, base=base, rope_scaling=plain, section=YARN)
    cos2, sin2 = _tables(impl, dim, 2 * orig, base=base, rope_scaling=hot, section=YARN)
    assert_close(torch.stack([cos2, sin2]), 0.8 * torch.stack([cos1, sin1]), atol=1e-6, rtol=1e-6,
                 what="YaRN：attention_factor=0.8 时 cos、sin 表应是 attention_factor=1.0 时的 0.8 倍", section=YARN)


YARN_EDGE_CASES = [  # (dim, rope_base, L, factor, beta_fast, beta_slow, 这一组检查什么)
    (8, 10.0, 64, 4, 32, 1, "low、high 两端都要截断"),
    (16, 100.0, 2048, 8, 32, 1, "high 超过 dim/2−1，要截断"),
    (32, 1e4, 64, 4, 32, 1, "low 低于 0，要截断"),
    (64, 1e4, 256, 4, 8, 2, "非默认的 beta_fast=8、beta_slow=2"),
    (32, 1e4, 512, 16, 16, 0.5, "非默认的 beta_fast=16、beta_slow=0.5"),
    (4, 10.0, 2048, 4, 32, 1, "斜坡退化：上界被压到 low 之下，分母用 max(high − low, 0.001)"),
]


@pytest.mark.parametrize("dim,base,orig,factor,beta_fast,beta_slow,why", YARN_EDGE_CASES,
                         ids=["clamp_low_and_high", "clamp_high", "clamp_low", "betas_8_2", "betas_16_0.5", "degenerate_ramp"])
def test_yarn_ramp_bounds_clamped_and_betas_used(impl, dim, base, orig, factor, beta_fast, beta_slow, why):
    lo, hi = _yarn_bounds_unclamped(dim, base, orig, beta_fast, beta_slow)
    if "截断" in why:  # 测试自检：这一组确实让截断起作用
        assert ("low" not in why or lo < 0) and ("high" not in why or hi > dim // 2 - 1), (lo, hi)
    scaling = dict(original_max_position_embeddings=orig, factor=factor, beta_fast=beta_fast,
                   beta_slow=beta_slow, attention_factor=1.0)
    end = orig + 1
    cos, sin = _tables(impl, dim, end, base=base, rope_scaling=scaling, section=YARN)
    require(tuple(cos.shape) == (end, dim), f"YaRN 表期望形状 {(end, dim)}，实际 {tuple(cos.shape)}", YARN)
    theta = _theta64(dim, base)
    expected = _yarn_ratio64(dim, base, orig, factor, beta_fast, beta_slow)
    run = lambda ns: _angle_at_1(*ns.precompute_freqs_cis(dim, end=end, rope_base=base, rope_scaling=scaling)) / theta  # noqa: E731
    assert_close(_angle_at_1(cos, sin) / theta, expected, atol=1e-5, rtol=1e-4,
                 what=f"YaRN（{why}；dim={dim}，rope_base={base:g}，L={orig}，factor={factor}，"
                      f"beta_fast={beta_fast}，beta_slow={beta_slow}）每一对的频率比例 (1−γ_i) + γ_i/factor。"
                      f"不截断时 low={lo}、high={hi}；应截到 low=max(low, 0)={max(lo, 0)}、"
                      f"high=min(high, dim/2−1)={min(hi, dim // 2 - 1)}", section=YARN, module=MODULE, run=run)


@given(st.sampled_from([4, 8, 16, 32, 64]), st.sampled_from([10.0, 100.0, 1e4, 1e6]),
       st.sampled_from([16, 64, 256]), st.sampled_from([2, 4, 16]),
       st.sampled_from([(32.0, 1.0), (8.0, 2.0), (64.0, 0.25), (4.0, 1.0)]))
@example(dim=8, base=10.0, orig=64, factor=4, betas=(32.0, 1.0))
def test_yarn_matches_independent_formula(impl, dim, base, orig, factor, betas):
    beta_fast, beta_slow = betas
    scaling = dict(original_max_position_embeddings=orig, factor=factor, beta_fast=beta_fast,
                   beta_slow=beta_slow, attention_factor=1.0)
    theta = _theta64(dim, base)
    run = lambda ns: _angle_at_1(*ns.precompute_freqs_cis(dim, end=orig + 1, rope_base=base, rope_scaling=scaling)) / theta  # noqa: E731
    cos, sin = _tables(impl, dim, orig + 1, base=base, rope_scaling=scaling, section=YARN)
    assert_close(_angle_at_1(cos, sin) / theta, _yarn_ratio64(dim, base, orig, factor, beta_fast, beta_slow),
                 atol=1e-5, rtol=1e-4,
                 what=f"YaRN 每一对的频率比例与独立写的 float64 公式对比（dim={dim}，rope_base={base:g}，L={orig}，"
                      f"factor={factor}，beta_fast={beta_fast:g}，beta_slow={beta_slow:g}）",
                 section=YARN, module=MODULE, run=run)


def test_yarn_missing_keys_use_minimind_defaults(impl):
    # rope_scaling 里没写的键用 minimind 的默认值：L=2048、factor=16、beta_fast=32、beta_slow=1、attention_factor=1
    dim, base, end = 16, 1e4, 2049
    full = dict(original_max_position_embeddings=2048, factor=16, beta_fast=32.0, beta_slow=1.0, attention_factor=1.0)
    for only in ({"attention_factor": 1.0}, {"factor": 16}):  # 第二个字典缺 beta_slow 和 attention_factor
        alone = torch.stack(_tables(impl, dim, end, base=base, rope_scaling=only, section=YARN))
        assert_close(alone, torch.stack(_tables(impl, dim, end, base=base, rope_scaling=full, section=YARN)),
                     atol=1e-6, rtol=0, what=f"rope_scaling={only}（其余键缺省）与写全了默认值的 {full} 应给出同一张表",
                     section=YARN)
    partial = {"beta_slow": 1.0}
    got = torch.stack(_tables(impl, dim, end, base=base, rope_scaling=partial, section=YARN))
    want = torch.stack(_tables(impl, dim, end, base=base, rope_scaling=full, section=YARN))
    theta = _theta64(dim, base)
    ratio = _angle_at_1(got[0], got[1]) / theta
    expected = _yarn_ratio64(dim, base, 2048, 16, 32.0, 1.0)
    assert_close(ratio, expected, atol=1e-5, rtol=1e-4,
                 what=f"rope_scaling={partial}（其余键缺省）、end={end} 时每一对的频率比例：缺省值应与 minimind 相同"
                      "（original_max_position_embeddings=2048、factor=16、beta_fast=32、beta_slow=1）",
                 section=YARN, module=MODULE,
                 run=lambda ns: _angle_at_1(*ns.precompute_freqs_cis(dim, end=end, rope_base=base,
                                                                     rope_scaling=partial)) / theta)
    assert_close(got, want, atol=1e-6, rtol=0,
                 what=f"rope_scaling={partial} 与写全了默认值的 {full} 应给出同一张表（attention_factor 缺省为 1.0）",
                 section=YARN)
    short = torch.stack(_tables(impl, dim, 2048, base=base, rope_scaling=partial, section=YARN))
    plain = torch.stack(_tables(impl, dim, 2048, base=base, section=YARN))
    assert_close(short, plain, atol=1e-6, rtol=0,
                 what="rope_scaling 缺省 original_max_position_embeddings 时它是 2048：end=2048 不超过它，表应不变",
                 section=YARN)


# ---------------------------------------------------------------- 正弦位置编码

def _vaswani(max_len: int, dim: int, base: float) -> torch.Tensor:
    """独立参考：逐元素照抄论文公式（Python 的 math，float64）。"""
    rows = []
    for pos in range(max_len):
        row = []
        for j in range(dim):
            i2 = j - (j % 2)                              # 第 j 维属于第 j//2 对，指数用 2i = j − j%2
            angle = pos / math.pow(base, i2 / dim)
            row.append(math.sin(angle) if j % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("max_len,dim,base", [(50, 16, 1e4), (7, 2, 1e4), (128, 64, 100.0), (9, 7, 1e4), (4, 1, 1e4),
                                            (30, 11, 100.0)], ids=lambda v: str(v))
def test_sinusoidal_matches_vaswani(impl, max_len, dim, base):
    pe = _call(f"sinusoidal_position_encoding({max_len}, {dim}, base={base:g})", ABS,
               impl.sinusoidal_position_encoding, max_len, dim, base=base)
    require(isinstance(pe, torch.Tensor) and tuple(pe.shape) == (max_len, dim),
            f"正弦位置编码期望形状 {(max_len, dim)}，实际 "
            f"{tuple(pe.shape) if isinstance(pe, torch.Tensor) else type(pe).__name__}", ABS)
    require(pe.is_floating_point(), f"正弦位置编码应是浮点张量，实际 {pe.dtype}", ABS)
    assert_close(pe.double(), _vaswani(max_len, dim, base), **TOL["sin_table"], check_dtype=False,
                 what=f"与 Vaswani 等 2017 的公式 PE[pos,2i]=sin(pos/base^(2i/d))、PE[pos,2i+1]=cos(…) 对比"
                      f"（max_len={max_len}，dim={dim}，base={base:g}"
                      + ("；dim 是奇数：最后一维是第 (dim−1)/2 对的 sin，没有与之配对的 cos" if dim % 2 else "")
                      + "）", section=ABS, module=MODULE,
                 run=lambda ns: ns.sinusoidal_position_encoding(max_len, dim, base=base).double())


@given(st.integers(0, 60), st.integers(0, 60), st.sampled_from([8, 16, 32]))
@example(m=5, n=2, dim=16)
def test_sinusoidal_dot_product_depends_on_distance(impl, m, n, dim):
    # Σ_i [sin(mω)sin(nω) + cos(mω)cos(nω)] = Σ_i cos((m−n)ω_i)：表本身的点积只依赖距离（但加到词向量上、
    # 经过 W_q、W_k 之后，交叉项就破坏了这一点——见 teaching.md §4.1 和实验 1）
    pe = _call(f"sinusoidal_position_encoding(61, {dim})", ABS, impl.sinusoidal_position_encoding, 61, dim)
    require(isinstance(pe, torch.Tensor) and tuple(pe.shape) == (61, dim),
            f"正弦位置编码期望形状 {(61, dim)}", ABS)
    omega = torch.exp(-torch.arange(0, dim, 2, dtype=torch.float64) / dim * math.log(1e4))
    expected = float(torch.cos((m - n) * omega).sum())
    got = float((pe[m].double() * pe[n].double()).sum())
    require(abs(got - expected) <= 1e-4,
            f"正弦位置编码：⟨PE[{m}], PE[{n}]⟩ 应等于 Σ_i cos(({m}−{n})·ω_i) = {expected:.5f}，实际 {got:.5f}"
            "（每一对 (2i, 2i+1) 应是同一个频率的 (sin, cos)）", ABS)


# ---------------------------------------------------------------- 5. 梯度

def _numerical_vs_autograd(fn, inputs, eps=1e-6):
    """有限差分的梯度检查（float64）：L = Σ w·fn(inputs)，w 是固定的随机权重。

    与 torch.autograd.gradcheck 做的是同一件事（解析梯度 vs 中心差分），但不用它：它第一次调用会
    导入 sympy，要多花约 2 秒——学习者每次跑测试都要等。返回 (是否一致, 说明)。
    """
    g = torch.Generator().manual_seed(12)
    outs = fn(*inputs)
    weights = [torch.randn(o.shape, generator=g, dtype=torch.float64) for o in outs]
    loss = lambda *xs: sum((o.double() * w).sum() for o, w in zip(fn(*xs), weights))  # noqa: E731
    try:
        analytic = torch.autograd.grad(loss(*inputs), inputs, allow_unused=True)
    except RuntimeError as exc:
        return False, f"无法对输出求梯度（{str(exc).splitlines()[0]}）：输出和输入之间的计算图断了"
    names = ("q", "k")
    for name, x, a in zip(names, inputs, analytic):
        if a is None:
            return False, f"{name} 收不到梯度：计算图在 {name} 这里断了"
        numeric = torch.zeros_like(x)
        with torch.no_grad():
            flat = x.detach().clone().reshape(-1)
            for j in range(flat.numel()):
                plus, minus = flat.clone(), flat.clone()
                plus[j] += eps
                minus[j] -= eps
                args_p = [plus.view_as(x) if y is x else y.detach() for y in inputs]
                args_m = [minus.view_as(x) if y is x else y.detach() for y in inputs]
                numeric.view(-1)[j] = (loss(*args_p) - loss(*args_m)) / (2 * eps)
        err = float((a - numeric).abs().max())
        if not err <= 1e-5:
            return False, f"{name} 的解析梯度与数值梯度最大相差 {err:.3g}"
    return True, ""


def test_gradcheck_float64(impl):
    cos, sin = _tables(impl, 4, 3)
    cos, sin = cos.double(), sin.double()
    g = torch.Generator().manual_seed(11)
    q = torch.randn(1, 3, 2, 4, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 3, 1, 4, dtype=torch.float64, generator=g, requires_grad=True)
    fn = lambda a, b: _apply(impl, a, b, cos, sin)  # noqa: E731
    ok, detail = _numerical_vs_autograd(fn, (q, k))
    require(ok, f"float64 梯度检查失败：apply_rotary_pos_emb 的解析梯度与数值梯度不一致——{detail}"
                "（前向里有 .detach()、.data、原地修改，或者把 float64 降成了 float32？）", ROPE)
