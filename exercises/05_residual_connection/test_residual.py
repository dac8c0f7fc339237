"""模块 05 的测试：PreNormResidual 与 PostNormResidual。

**这些测试不依赖模块 01 是否完成。** 每个测试先用你的类搭出包装，再把 ``self.norm`` 换成一个已知正确的
RMSNorm（``torch.nn.RMSNorm``），然后检查你的 forward 是怎么“连”的。所以 forward 里必须通过
``self.norm`` 和 ``self.sublayer`` 调用，不要另外新建。只有“契约”那一组会看 ``__init__`` 里建的是不是
你在模块 01 写的 RMSNorm（只看类型和参数，不调用它）。

分层（每一层都能失败）：
1. 契约：属性 norm / sublayer、参数名、输出形状与 dtype；
2. 与参考实现对比（同一子层、同一 norm 权重，hypothesis 抽形状和数值）；
3. 与独立参考对比：一个换了写法的 float64 公式（均方根用 L2 范数写）；
4. 性质：子层为 0 时 Pre-Norm 是恒等映射、Post-Norm 的输出被归一化、Pre-Norm 保持残差流的量级、
   norm 与子层各调用一次且顺序正确、不原地修改输入；
5. 梯度：雅可比矩阵里的恒等通路（I + …）、Post-Norm 的 J_N·(I + J_F)、float64 gradcheck。
"""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

from kata.impl import resolve
from kata.testing import assert_close, require, require_gradcheck

MODULE = "05_residual_connection"
SECTION = {"pre": "teaching.md §2（Pre-Norm 残差）", "post": "teaching.md §3（Post-Norm 残差）"}
CLASS = {"pre": "PreNormResidual", "post": "PostNormResidual"}
KINDS = ("pre", "post")

# 容差只在这里写一次，每个都有理由
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),  # 同样的运算在 float64 下只差舍入
    torch.float32: dict(atol=1e-5, rtol=1e-5),    # 归约（mean、matmul）顺序不同会差几个 ulp；输出量级 ≤ 1e2
}

shapes = st.tuples(
    st.lists(st.integers(1, 3), min_size=0, max_size=2),  # 前导维（batch、seq…）
    st.integers(2, 24),                                   # 特征维 dim（dim=1 时 RMSNorm 只剩符号，几种错误分不开）
)
seeds = st.integers(0, 2**31 - 1)
log_scales = st.floats(-2.0, 2.0)  # 输入量级 10^-2 … 10^2


# ---------------------------------------------------------------- 搭测试用的零件

class Sublayer(nn.Module):
    """测试用的子层：down(tanh(up(x)))，带 bias——非线性，才能分辨“先归一化还是先相加”。"""

    def __init__(self, dim: int, seed: int = 0, zero: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.up = nn.Linear(dim, 2 * dim)
        self.down = nn.Linear(2 * dim, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.zeros_like(p) if zero else torch.randn(p.shape, generator=g) * 0.7)

    def forward(self, x):
        return self.down(torch.tanh(self.up(x)))


def _ref_norm(dim: int, eps: float, weight=None, dtype=torch.float32) -> nn.Module:
    """已知正确的 RMSNorm（PyTorch 内置），换进包装里：测试因此不依赖你的模块 01。"""
    norm = nn.RMSNorm(dim, eps=eps).to(dtype)
    if weight is not None:
        with torch.no_grad():
            norm.weight.copy_(weight.to(dtype))
    return norm


def _build(ns, kind, dim, sublayer, *, eps=1e-5, weight=None, dtype=torch.float32, norm=None):
    """用实现 ns 的类搭一个包装，再把它的 norm 换成已知正确的 RMSNorm（或给定的 norm）。"""
    wrapper = getattr(ns, CLASS[kind])(dim, sublayer, eps=eps)
    wrapper.norm = norm if norm is not None else _ref_norm(dim, eps, weight, dtype)
    return wrapper


def _make(shape, dim, seed, log_scale, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, dim, generator=g, dtype=torch.float64) * (10.0 ** log_scale)
    w = torch.rand(dim, generator=g, dtype=torch.float64) * 2 - 0.5  # 含负数、非 1 的 norm 权重
    sub = Sublayer(dim, seed=seed % 1000).to(dtype)
    return x.to(dtype), w.to(dtype), sub


def _runner(kind, x, sublayer, weight, eps=1e-5):
    """返回 run(ns)：用实现 ns 在 x 的一份拷贝上跑一次（也用于和 bug bank 比对——拷贝防止原地修改串味）。"""
    def run(ns):
        wrapper = _build(ns, kind, x.shape[-1], sublayer, eps=eps, weight=weight, dtype=x.dtype)
        with torch.no_grad():
            return wrapper(x.clone())
    return run


def _rms_norm_float64(h, weight, eps):
    """独立的 float64 RMSNorm：均方根用 L2 范数写，||h||₂ / sqrt(D)。"""
    hd, dim = h.double(), h.shape[-1]
    return weight.double() * hd / torch.sqrt(torch.linalg.vector_norm(hd, dim=-1, keepdim=True) ** 2 / dim + eps)


def _formula_float64(kind, x, sublayer, weight, eps):
    """独立参考：按公式在 float64 里直接算 x + F(N(x)) 或 N(x + F(x))。"""
    f = copy.deepcopy(sublayer).double()
    xd = x.double()
    with torch.no_grad():
        if kind == "pre":
            return xd + f(_rms_norm_float64(xd, weight, eps))
        return _rms_norm_float64(xd + f(xd), weight, eps)


def _rms(t):
    return t.double().pow(2).mean(-1).sqrt()


# ---------------------------------------------------------------- 1. 契约

@pytest.mark.parametrize("kind", KINDS)
def test_attributes_norm_and_sublayer(impl, kind):
    sub = Sublayer(16)
    _build(impl, kind, 16, sub)(torch.randn(2, 16))  # 先前向一次：契约要在模块能工作之后仍然成立
    wrapper = getattr(impl, CLASS[kind])(16, sub, eps=1e-3)
    name, where = CLASS[kind], SECTION[kind]
    require(isinstance(wrapper, nn.Module), f"{name} 应该是 nn.Module 的子类", where)
    require(getattr(wrapper, "sublayer", None) is sub,
            f"{name}.sublayer 应该就是传进来的那个子层对象（self.sublayer = sublayer）", where)
    norm = getattr(wrapper, "norm", None)
    require(isinstance(norm, nn.Module), f"{name} 应该有一个名为 norm 的子模块（self.norm = RMSNorm(dim, eps=eps)）",
            where)
    origin = type(norm).__module__
    require(type(norm).__name__ == "RMSNorm" and origin.endswith("_01_normalization.rmsnorm"),
            f"{name}.norm 应该是你在模块 01 写的 RMSNorm（from exercises import RMSNorm），"
            f"实际是 {origin}.{type(norm).__name__}", where)
    weight = getattr(norm, "weight", None)
    require(isinstance(weight, torch.Tensor) and tuple(weight.shape) == (16,) and bool(torch.all(weight == 1)),
            f"{name}.norm 应该是 RMSNorm(dim=16)：weight 形状 (16,)、全 1", where)
    require(getattr(norm, "eps", None) == 1e-3,
            f"{name}(dim, sublayer, eps=1e-3) 应该把 eps 传给 RMSNorm，实际 norm.eps = {getattr(norm, 'eps', None)}",
            where)
    default_eps = getattr(getattr(getattr(impl, CLASS[kind])(16, sub), "norm", None), "eps", None)
    require(default_eps == 1e-5, f"{name}(dim, sublayer) 不传 eps 时 norm 的 eps 应为默认的 1e-5，实际 {default_eps}", where)
    params = dict(wrapper.named_parameters())
    expected = {"norm.weight", "sublayer.up.weight", "sublayer.up.bias", "sublayer.down.weight", "sublayer.down.bias"}
    require(set(params) == expected,
            f"{name} 的参数应该正好是 norm 的 weight 加上子层的参数 {sorted(expected)}，实际 {sorted(params)}", where)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(8,), (3, 8), (2, 5, 8), (2, 3, 4, 8)], ids=str)
def test_output_shape(impl, kind, shape):
    out = _build(impl, kind, 8, Sublayer(8))(torch.randn(*shape))
    require(isinstance(out, torch.Tensor) and tuple(out.shape) == shape,
            f"{CLASS[kind]}：期望形状 {shape}，实际 "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}", SECTION[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_float64_dtype_preserved_and_values_right(impl, kind):
    x, w, sub = _make((2, 5), 12, seed=1, log_scale=0.5, dtype=torch.float64)
    run = _runner(kind, x, sub, w)
    assert_close(run(impl), _formula_float64(kind, x, sub, w, 1e-5), **TOL[torch.float64],
                 what=f"{CLASS[kind]}：float64 输入", section=SECTION[kind], module=MODULE, run=run)


# ---------------------------------------------------------------- 2. 与参考实现对比

def _first_call(ns, kind):
    """在 hypothesis 之前先跑一次：桩直接在这里抛出“还没实现”，不必让 hypothesis 反复缩小一个必然失败的例子。"""
    _build(ns, kind, 4, Sublayer(4))(torch.randn(2, 4))


@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference_solution(impl, kind):
    _first_call(impl, kind)

    @given(shape_dim=shapes, seed=seeds, log_scale=log_scales)
    def check(shape_dim, seed, log_scale):
        shape, dim = shape_dim
        x, w, sub = _make(shape, dim, seed, log_scale)
        run = _runner(kind, x, sub, w)
        actual = run(impl)
        assert_close(actual, run(resolve(MODULE, "solutions")), **TOL[torch.float32],
                     what=f"{CLASS[kind]} 与参考实现对比（x 形状 {tuple(x.shape)}，量级约 {10 ** log_scale:.2g}）",
                     section=SECTION[kind], module=MODULE, run=run)

    check()


# ---------------------------------------------------------------- 3. 独立参考

@pytest.mark.parametrize("kind", KINDS)
def test_matches_float64_formula(impl, kind):
    _first_call(impl, kind)
    formula = "x + F(N(x))" if kind == "pre" else "N(x + F(x))"

    @given(shape_dim=shapes, seed=seeds, log_scale=log_scales)
    def check(shape_dim, seed, log_scale):
        shape, dim = shape_dim
        x, w, sub = _make(shape, dim, seed, log_scale, dtype=torch.float64)
        run = _runner(kind, x, sub, w)
        assert_close(run(impl), _formula_float64(kind, x, sub, w, 1e-5), **TOL[torch.float64],
                     what=f"{CLASS[kind]} 与 float64 公式 {formula} 对比（x 形状 {tuple(x.shape)}，"
                          f"量级约 {10 ** log_scale:.2g}）", section=SECTION[kind], module=MODULE, run=run)

    check()


# ---------------------------------------------------------------- 4. 性质

@pytest.mark.parametrize("log_scale", [-3.0, 0.0, 3.0])
def test_pre_zero_sublayer_is_identity(impl, log_scale):
    # 子层输出恒为 0（权重、bias 全 0）：x + 0 = x，必须逐位相等，无论 x 多大多小
    x, w, _ = _make((2, 3), 10, seed=4, log_scale=log_scale)
    zero = Sublayer(10, zero=True)
    run = _runner("pre", x, zero, w)
    assert_close(run(impl), x, atol=0.0, rtol=0.0,
                 what=f"子层输出恒为 0 时，PreNormResidual 应该原样返回 x（恒等映射；x 量级约 {10 ** log_scale:.2g}）",
                 section=SECTION["pre"], module=MODULE, run=run)


def test_post_zero_sublayer_is_just_the_norm(impl):
    x, w, _ = _make((2, 3), 10, seed=11, log_scale=1.0)
    zero = Sublayer(10, zero=True)
    run = _runner("post", x, zero, w)
    assert_close(run(impl), _rms_norm_float64(x, w, 1e-5).float(), **TOL[torch.float32],
                 what="子层输出恒为 0 时，PostNormResidual 应该等于 norm(x)", section=SECTION["post"],
                 module=MODULE, run=run)


@pytest.mark.parametrize("log_scale", [-1.0, 1.0, 3.0])
def test_post_output_is_normalised(impl, log_scale):
    # weight 全 1 时，Post-Norm 的输出（下一层的残差流）每个 token 的均方根都应 ≈ 1，不管输入多大
    x, _, sub = _make((3, 4), 16, seed=7, log_scale=log_scale)
    run = _runner("post", x, sub, torch.ones(16), eps=1e-8)
    out = run(impl)
    rms = _rms(out)
    require(isinstance(out, torch.Tensor) and bool(torch.allclose(rms, torch.ones_like(rms), atol=1e-4, rtol=0)),
            f"PostNormResidual 的输出应该被归一化（norm weight 全 1 时每个 token 的均方根 ≈ 1）；"
            f"输入量级约 {10 ** log_scale:.2g} 时你的输出均方根是 {[round(float(r), 4) for r in rms.flatten()[:4]]}……"
            "——是不是先归一化、后相加了？", SECTION["post"])


def test_pre_keeps_the_residual_stream_scale(impl):
    # Pre-Norm 的残差流不被归一化：x 的均方根是 100、子层输出只有 O(1) 时，输出的均方根仍应 ≈ 100
    x, _, sub = _make((4, 5), 16, seed=3, log_scale=2.0)
    run = _runner("pre", x, sub, torch.ones(16))
    out = run(impl)
    ratio = (_rms(out) / _rms(x)).flatten()
    require(bool(((ratio - 1).abs() < 0.2).all()),
            "PreNormResidual 的输出不应该被归一化：残差流 x 的量级要原样保留（输出 = x + 一个 O(1) 的增量）。"
            f"x 每个 token 的均方根约 100，你的输出与 x 的均方根之比是 {[round(float(r), 3) for r in ratio[:4]]}……"
            "（≈0.01 说明相加之后又归一化了，或者加回去的不是原始的 x）", SECTION["pre"])


class _Spy(nn.Module):
    """包住一个模块，记下每次被调用时的输入和输出。"""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.inputs, self.outputs = [], []

    def forward(self, h):
        out = self.inner(h)
        self.inputs.append(h.detach().clone())
        self.outputs.append(out.detach().clone())
        return out


def _same(a, b):
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=1e-6, rtol=1e-6))


@pytest.mark.parametrize("kind", KINDS)
def test_norm_and_sublayer_called_once_in_the_right_order(impl, kind):
    x, w, sub = _make((2, 3), 8, seed=5, log_scale=1.0)
    spy_norm, spy_sub = _Spy(_ref_norm(8, 1e-5, w)), _Spy(sub)
    wrapper = getattr(impl, CLASS[kind])(8, spy_sub, eps=1e-5)
    wrapper.norm = spy_norm
    with torch.no_grad():
        out = wrapper(x.clone())
    name, where = CLASS[kind], SECTION[kind]
    require(len(spy_norm.inputs) >= 1,
            f"{name}.forward 没有调用 self.norm：要用 __init__ 里存好的 self.norm（测试把它换成了一个已知正确的 RMSNorm，"
            "另外新建的 norm 或手写的归一化它看不见）", where)
    require(len(spy_norm.inputs) == 1, f"{name}.forward 调用了 {len(spy_norm.inputs)} 次 self.norm，应该只调用 1 次", where)
    require(len(spy_sub.inputs) >= 1, f"{name}.forward 没有调用 self.sublayer", where)
    require(len(spy_sub.inputs) == 1,
            f"{name}.forward 调用了 {len(spy_sub.inputs)} 次 self.sublayer，应该只调用 1 次（算一次存进变量里）", where)
    (n_in,), (n_out,), (s_in,), (s_out,) = spy_norm.inputs, spy_norm.outputs, spy_sub.inputs, spy_sub.outputs
    if kind == "pre":
        require(_same(n_in, x), "Pre-Norm 里 self.norm 应该作用在输入 x 上（先归一化、再进子层）"
                + ("；你的 norm 收到的是 x + sublayer(…)——这是 Post-Norm 的顺序" if _same(n_in, x + s_out) else
                   "；你的 norm 收到的是子层的输出" if _same(n_in, s_out) else "；你的 norm 收到的不是 x"), where)
        require(_same(s_in, n_out), "Pre-Norm 里子层应该吃 norm(x)，"
                + ("实际吃的是没归一化的 x" if _same(s_in, x) else "实际吃的不是 norm(x)"), where)
        require(_same(out, x + s_out), "Pre-Norm 的输出应该是 x + sublayer(norm(x))"
                + ("；你加回去的是 norm(x) 而不是原始的 x" if _same(out, n_out + s_out) else
                   "；你没有加回 x（残差丢了）" if _same(out, s_out) else ""), where)
    else:
        require(_same(s_in, x), "Post-Norm 里子层应该直接吃输入 x"
                + ("；实际吃的是 norm(x)——这是 Pre-Norm 的顺序" if _same(s_in, n_out) else "；实际吃的不是 x"), where)
        require(_same(n_in, x + s_out), "Post-Norm 里 self.norm 应该作用在 x + sublayer(x) 上（先相加、再归一化）"
                + ("；你的 norm 只作用在子层输出上" if _same(n_in, s_out) else
                   "；你的 norm 作用在 x 上" if _same(n_in, x) else ""), where)
        require(_same(out, n_out), "Post-Norm 的输出应该就是 norm(x + sublayer(x))"
                + ("；你在 norm 之后又加了 x" if _same(out, x + n_out) else ""), where)


@pytest.mark.parametrize("kind", KINDS)
def test_does_not_modify_the_input(impl, kind):
    x, w, sub = _make((2, 4), 8, seed=6, log_scale=0.0)
    before = x.clone()
    with torch.no_grad():
        _build(impl, kind, 8, sub, weight=w)(x)
    require(bool(torch.equal(x, before)),
            f"{CLASS[kind]}.forward 原地修改了传进来的 x（x += … 或 x.add_(…)）：调用者手里的张量被改掉了，"
            "需要梯度时反向传播还会报错。写成 out = x + … 返回一个新张量。", SECTION[kind])


# ---------------------------------------------------------------- 5. 梯度

def _jacobian(fn, x):
    """fn: [1, D] → [1, D] 的雅可比矩阵 [D, D]（float64）。"""
    d = x.shape[-1]
    return torch.autograd.functional.jacobian(fn, x).reshape(d, d)


def _first_line(exc):
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _backward_error(kind, exc):
    return f"{CLASS[kind]} 求梯度时出错：{_first_line(exc)}（forward 里有原地修改（x += …）吗？）"


def _try_jacobian(kind, wrapper, x):
    """(雅可比, None) 或 (None, 一句中文)。不在 except 块里断言，免得失败信息带上“During handling…”。"""
    try:
        return _jacobian(wrapper, x), None
    except NotImplementedError:
        raise
    except RuntimeError as exc:  # NotImplementedError 也是 RuntimeError 的子类：先放它过去
        return None, _backward_error(kind, exc)


def test_pre_jacobian_is_identity_plus_branch(impl):
    # ∂out/∂x = I + ∂F(N(x))/∂x：减掉子层那一支的雅可比，剩下的必须是单位矩阵——这就是“恒等通路”
    x, w, sub = _make((1,), 6, seed=8, log_scale=0.3, dtype=torch.float64)
    wrapper = _build(impl, "pre", 6, sub, weight=w, dtype=torch.float64)
    j_total, error = _try_jacobian("pre", wrapper, x)
    require(error is None, error, SECTION["pre"])
    branch = _ref_norm(6, 1e-5, w, torch.float64)
    j_branch = _jacobian(lambda t: sub(branch(t)), x)
    assert_close(j_total - j_branch, torch.eye(6, dtype=torch.float64), atol=1e-9, rtol=1e-9,
                 what="PreNormResidual 的雅可比矩阵减去子层那一支 ∂F(N(x))/∂x 之后应该是单位矩阵 I"
                      "（恒等通路：梯度不经过任何层、原样流回 x）", section=SECTION["pre"])


def test_pre_identity_path_carries_the_gradient(impl):
    # 子层为 0 时，上游梯度 g 必须原封不动地流到 x：x.grad == g
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 8, generator=g, requires_grad=True)
    upstream = torch.randn(2, 3, 8, generator=g)
    wrapper = _build(impl, "pre", 8, Sublayer(8, zero=True))
    error = None
    try:
        (wrapper(x) * upstream).sum().backward()
    except NotImplementedError:
        raise
    except RuntimeError as exc:  # NotImplementedError 也是 RuntimeError 的子类：先放它过去
        error = _backward_error("pre", exc)
    require(error is None, error, SECTION["pre"])
    grad = x.grad if x.grad is not None else torch.zeros_like(x)
    assert_close(grad, upstream, atol=1e-6, rtol=1e-6,
                 what="子层为 0 时，PreNormResidual 反传到 x 的梯度应该原封不动等于上游梯度"
                      "（x.grad 为 0 说明恒等通路断了：忘了加 x，或者用了 x.detach() / x.data）",
                 section=SECTION["pre"])


def test_post_jacobian_is_norm_times_identity_plus_branch(impl):
    # ∂out/∂x = J_N(x + F(x)) · (I + J_F(x))：恒等项被夹在 norm 的雅可比里
    x, w, sub = _make((1,), 6, seed=10, log_scale=0.3, dtype=torch.float64)
    wrapper = _build(impl, "post", 6, sub, weight=w, dtype=torch.float64)
    j_total, error = _try_jacobian("post", wrapper, x)
    require(error is None, error, SECTION["post"])
    norm = _ref_norm(6, 1e-5, w, torch.float64)
    with torch.no_grad():
        y = x + sub(x)
    expected = _jacobian(norm, y) @ (torch.eye(6, dtype=torch.float64) + _jacobian(sub, x))
    assert_close(j_total, expected, atol=1e-9, rtol=1e-9,
                 what="PostNormResidual 的雅可比矩阵应该等于 J_N(x + F(x)) · (I + J_F(x))", section=SECTION["post"])


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(impl, kind):
    x, w, sub = _make((2, 3), 5, seed=12, log_scale=0.0, dtype=torch.float64)
    sub = sub.double()
    wrapper = _build(impl, kind, 5, sub, weight=w, dtype=torch.float64)
    x = x.clone().requires_grad_(True)
    require_gradcheck(lambda t: wrapper(t), (x,), SECTION[kind], who=CLASS[kind])
    wrapper(x).sum().backward()
    require(x.grad is not None and all(p.grad is not None for p in sub.parameters())
            and wrapper.norm.weight.grad is not None,
            f"{CLASS[kind]}：反向传播后 x、子层参数或 norm.weight 的梯度是 None——计算图在某处断了", SECTION[kind])
