"""模块 01 的测试：RMSNorm。

分层（每一层都能失败）：
1. 契约：参数名/形状/初始化、输出形状与 dtype；
2. 与参考实现对比（同一权重，hypothesis 抽形状和数值）；
3. 与独立参考对比：torch.nn.RMSNorm，以及一个换了写法的 float64 公式——在 --solutions 模式下靠它们保持诚实；
4. 性质：尺度不变、输出 RMS≈1、不减均值、逐 token 独立、逐通道权重、极小/极大输入；
5. float64 gradcheck。
失败信息会告诉你：期望什么、你给了什么、与哪个常见错误一致、该读 teaching.md 的哪一节。
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from kata.testing import assert_close, require, require_gradcheck
from kata.impl import resolve

MODULE = "01_normalization"
WHAT_IS = "teaching.md §2（RMSNorm 是什么）"
VERIFY = "teaching.md §3（如何验证）"

# 容差只在这里写一次，每个都有理由
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),  # 同一公式在 float64 下只差舍入
    torch.float32: dict(atol=1e-5, rtol=1e-5),    # mean 的累加顺序不同会差几个 ulp
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),   # bfloat16 只有 8 位尾数（~3 位十进制有效数字）
    torch.float16: dict(atol=4e-3, rtol=4e-3),    # float16 有 11 位尾数；乘 weight 前后各舍入一次
}

shapes = st.tuples(
    st.lists(st.integers(1, 4), min_size=0, max_size=2),  # 前导维（batch、seq…）
    st.integers(1, 48),                                   # 特征维 dim
)
seeds = st.integers(0, 2**31 - 1)
log_scales = st.floats(-4.0, 4.0)  # 输入量级 10^-4 … 10^4


def _make(shape, dim, seed, log_scale, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, dim, generator=g, dtype=torch.float64) * (10.0 ** log_scale)
    w = torch.rand(dim, generator=g, dtype=torch.float64) * 2 - 0.5  # 含负数、非 1 的权重
    return x.to(dtype), w.to(dtype)


def _runner(x, w, eps=1e-5):
    """返回一个函数：给定任意实现的命名空间，用相同权重在 x 上跑一次。也用于 bug 比对。"""
    def run(ns):
        norm = ns.RMSNorm(x.shape[-1], eps=eps)
        if x.dtype == torch.float64:
            norm = norm.double()  # 权重也用 float64，否则 float32 的权重舍入会掩盖真正的差别
        with torch.no_grad():
            norm.weight.copy_(w.to(norm.weight.dtype))
        return norm(x)
    return run


def _rms_float64(x, w, eps):
    """独立的 float64 参考：用 L2 范数写——||x||₂ / sqrt(D) 就是均方根。"""
    xd, D = x.double(), x.shape[-1]
    rms = torch.sqrt(torch.linalg.vector_norm(xd, dim=-1, keepdim=True) ** 2 / D + eps)
    return w.double() * xd / rms


# ---------------------------------------------------------------- 1. 契约

def test_weight_is_a_parameter_of_ones(impl):
    norm = impl.RMSNorm(16)
    norm(torch.randn(2, 16))  # 先前向一次：参数契约要在模块能工作之后仍然成立
    params = dict(norm.named_parameters())
    require("weight" in params, f"RMSNorm 应该有名为 weight 的 nn.Parameter，实际参数名：{sorted(params)}", WHAT_IS)
    require(tuple(norm.weight.shape) == (16,), f"weight 期望形状 (16,)，实际 {tuple(norm.weight.shape)}", WHAT_IS)
    require(bool(torch.all(norm.weight == 1)), "weight 应该初始化为全 1（一开始只做纯归一化）", WHAT_IS)
    require(len(params) == 1, f"RMSNorm 只有 weight 一个参数（没有 bias），实际：{sorted(params)}", WHAT_IS)


def test_eps_is_stored_and_used(impl):
    norm = impl.RMSNorm(8, eps=1e-3)
    require(getattr(norm, "eps", None) == 1e-3, "RMSNorm(dim, eps) 应该把 eps 存成 self.eps", WHAT_IS)
    x = torch.full((1, 8), 0.01)  # mean(x²)=1e-4，比 eps=1e-3 小：eps 被忽略时结果会差很多
    assert_close(norm(x), _rms_float64(x, torch.ones(8), 1e-3).float(), **TOL[torch.float32],
                 what="eps=1e-3、输入 0.01 时（eps 必须真的参与计算）", section=WHAT_IS,
                 module=MODULE, run=_runner(x, torch.ones(8), eps=1e-3))
    default = impl.RMSNorm(8)
    require(getattr(default, "eps", None) == 1e-5,
            f"RMSNorm(dim) 不传 eps 时默认 eps = 1e-5（与 minimind 相同），实际 self.eps = {getattr(default, 'eps', None)}",
            WHAT_IS)
    tiny = torch.full((1, 8), 3e-3, dtype=torch.float64)  # mean(x²)≈1e-5：与默认 eps 同量级
    assert_close(default.double()(tiny), _rms_float64(tiny, torch.ones(8), 1e-5), **TOL[torch.float64],
                 what="不传 eps（默认 1e-5）、float64 输入 0.003 时（默认的 eps 也要参与计算）", section=WHAT_IS)


@pytest.mark.parametrize("shape", [(8,), (3, 8), (2, 5, 8), (2, 3, 4, 8)], ids=str)
def test_output_shape(impl, shape):
    x = torch.randn(*shape)
    out = impl.RMSNorm(8)(x)
    require(isinstance(out, torch.Tensor) and tuple(out.shape) == shape,
            f"期望形状 {shape}，实际 {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}",
            WHAT_IS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_dtype_preserved_and_values_right(impl, dtype):
    x, w = _make((2, 7), 32, seed=1, log_scale=0.0, dtype=dtype)
    run = _runner(x, w)
    out = run(impl)
    expected = _rms_float64(x, w, 1e-5).to(dtype)
    assert_close(out, expected, **TOL[dtype], what=f"{dtype} 输入", section=WHAT_IS, module=MODULE, run=run)


# ---------------------------------------------------------------- 2. 与参考实现对比

@given(shapes, seeds, log_scales)
def test_matches_reference_solution(impl, shape_dim, seed, log_scale):
    shape, dim = shape_dim
    x, w = _make(shape, dim, seed, log_scale)
    run = _runner(x, w)
    expected = run(resolve(MODULE, "solutions"))
    assert_close(run(impl), expected, **TOL[torch.float32],
                 what=f"与参考实现对比（x 形状 {tuple(x.shape)}，量级约 {10 ** log_scale:.2g}）",
                 section=WHAT_IS, module=MODULE, run=run)


# ---------------------------------------------------------------- 3. 独立参考

@given(shapes, seeds, log_scales)
def test_matches_torch_nn_rmsnorm(impl, shape_dim, seed, log_scale):
    shape, dim = shape_dim
    x, w = _make(shape, dim, seed, log_scale)
    ref = torch.nn.RMSNorm(dim, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(w)
    run = _runner(x, w)
    assert_close(run(impl), ref(x), **TOL[torch.float32],
                 what=f"与 torch.nn.RMSNorm 对比（x 形状 {tuple(x.shape)}，量级约 {10 ** log_scale:.2g}）",
                 section=WHAT_IS, module=MODULE, run=run)


@pytest.mark.parametrize("eps", [1e-6, 1e-2, 1.0])
def test_eps_inside_the_sqrt_float64(impl, eps):
    # 输入量级与 eps 相当时，eps 的位置会显著改变结果
    x, w = _make((4,), 16, seed=7, log_scale=math.log10(math.sqrt(eps)), dtype=torch.float64)
    run = _runner(x, w, eps=eps)
    assert_close(run(impl), _rms_float64(x, w, eps), **TOL[torch.float64],
                 what=f"float64、eps={eps:g} 时与公式 w·x/sqrt(||x||²/D + eps) 对比",
                 section=WHAT_IS, module=MODULE, run=run)


# ---------------------------------------------------------------- 4. 性质

@given(seeds, st.floats(-2.0, 2.0))
def test_scale_invariant(impl, seed, log_alpha):
    x, _ = _make((3, 5), 24, seed, 0.0, dtype=torch.float64)
    alpha = 10.0 ** log_alpha
    norm = impl.RMSNorm(24, eps=1e-20).double()  # eps 极小，尺度不变性才在 1e-9 内精确成立
    assert_close(norm(alpha * x), norm(x), atol=1e-9, rtol=1e-9,
                 what=f"尺度不变性 RMSNorm({alpha:.3g}·x) 应该等于 RMSNorm(x)", section=VERIFY)


def test_unit_weight_output_has_rms_one(impl):
    x, _ = _make((4, 9), 64, seed=3, log_scale=2.0)
    out = impl.RMSNorm(64, eps=1e-8)(x)
    rms = out.double().pow(2).mean(-1).sqrt()
    assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0, check_dtype=False,
                 what="weight 全 1 时，每个 token 输出的均方根应该是 1", section=VERIFY)


def test_does_not_subtract_the_mean(impl):
    # 常数向量 c·1：RMSNorm 给出 sign(c)·1；LayerNorm（减均值）会给出 0
    x = torch.full((2, 16), 3.0)
    x[1] = -0.5
    expected = torch.sign(x)
    run = _runner(x, torch.ones(16))
    assert_close(run(impl), expected, atol=1e-4, rtol=1e-4,
                 what="常数向量输入（RMSNorm 不减均值，结果应为 ±1；得到 0 说明减了均值）",
                 section=WHAT_IS, module=MODULE, run=run)


def test_each_token_normalised_independently(impl):
    # 改变一个 token 不应影响其他 token 的输出：均方根是“每个 token 各自”沿特征维求的
    x, _ = _make((3, 4), 16, seed=5, log_scale=0.0)
    norm = impl.RMSNorm(16)
    before = norm(x)
    x2 = x.clone()
    x2[0, 0] *= 1000.0
    after = norm(x2)
    assert_close(after[1:], before[1:], atol=1e-6, rtol=1e-6,
                 what="把 x[0, 0] 放大 1000 倍后，其他 token 的输出", section=WHAT_IS)
    assert_close(after[0, 1:], before[0, 1:], atol=1e-6, rtol=1e-6,
                 what="把 x[0, 0] 放大 1000 倍后，同一序列里其他位置的输出", section=WHAT_IS)


def test_weight_is_per_channel(impl):
    x, w = _make((5,), 12, seed=9, log_scale=0.0)
    unit = _runner(x, torch.ones(12))(impl)
    scaled = _runner(x, w)(impl)
    assert_close(scaled, unit * w, atol=1e-6, rtol=1e-5,
                 what="weight 是逐通道缩放：RMSNorm_w(x) 应等于 w ⊙ RMSNorm_1(x)",
                 section=WHAT_IS, module=MODULE, run=_runner(x, w))


@pytest.mark.parametrize("scale", [0.0, 1e-20], ids=["zeros", "1e-20"])
def test_near_zero_input_stays_finite(impl, scale):
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(0)) * scale
    run = _runner(x, torch.ones(8))
    out = run(impl)
    require(bool(torch.isfinite(out).all()),
            f"输入量级 {scale:g} 时输出出现了 NaN/inf：{out.flatten()[:4].tolist()}——eps 应该在 sqrt 里面防止除以 0",
            WHAT_IS)
    assert_close(out, _rms_float64(x, torch.ones(8), 1e-5).float(), **TOL[torch.float32],
                 what=f"输入量级 {scale:g}", section=WHAT_IS, module=MODULE, run=run)


def test_large_float16_input_does_not_overflow(impl):
    # 300² = 90000 > 65504（float16 的最大值）：必须先转 float32 再平方
    x16 = (torch.randn(3, 32, generator=torch.Generator().manual_seed(2)) * 300).half()
    run = _runner(x16, torch.ones(32, dtype=torch.float16))
    out = run(impl)
    expected = _rms_float64(x16.float(), torch.ones(32), 1e-5).half()
    assert_close(out, expected, **TOL[torch.float16],
                 what="float16、量级 300 的输入（x² 超过 float16 上限 65504）",
                 section=WHAT_IS, module=MODULE, run=run)


# ---------------------------------------------------------------- 5. 梯度

def test_gradcheck_float64(impl):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 6, dtype=torch.float64, generator=g, requires_grad=True)
    norm = impl.RMSNorm(6).double()
    with torch.no_grad():
        norm.weight.copy_(torch.rand(6, dtype=torch.float64, generator=g) + 0.5)
    require_gradcheck(lambda t: norm(t), (x,), WHAT_IS)
    out = norm(x)
    out.sum().backward()
    require(norm.weight.grad is not None and x.grad is not None,
            "反向传播后 weight.grad 或 x.grad 是 None：计算图在某处断了", WHAT_IS)
