"""模块 04 的测试：FeedForward（SwiGLU）。

分层（每一层都能失败）：
1. 契约：参数名与形状、没有 bias、默认宽度规则、显式 hidden_dim、任意前导维；
2. 与参考实现对比（同一权重，hypothesis 抽形状和数值）；
3. 与独立参考对比：用 F.silu 写的公式，以及一个用 sigmoid 和 einsum 换了写法的 float64 公式——
   在 --solutions 模式下靠它们保持诚实；
4. 性质：门控激活的曲线就是 SiLU、零输入得零输出、输出对 up 分支是线性的、逐 token 独立、
   dropout 在 eval 时不起作用；
5. float64 gradcheck。
失败信息会告诉你：期望什么、你给了什么、与哪个常见错误一致、该读 teaching.md 的哪一节。
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from kata.impl import resolve
from kata.testing import assert_close, require, require_gradcheck

MODULE = "04_feedforward"
WHAT_IS = "teaching.md §2（SwiGLU 是什么）"
WIDTH = "teaching.md §2.3（默认宽度：8/3 与 multiple_of）"
VERIFY = "teaching.md §3（如何验证）"
NAMES = ("gate_proj", "up_proj", "down_proj")

# 容差只在这里写一次，每个都有理由
TOL = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),  # 同一公式在 float64 下只差舍入
    torch.float32: dict(atol=2e-5, rtol=1e-4),    # 三次矩阵乘的累加顺序、silu 的写法不同，会差几个 ulp
}

leading = st.lists(st.integers(1, 4), min_size=0, max_size=2)  # 前导维（batch、seq…）
dims = st.integers(1, 24)                                      # 特征维 dim
hiddens = st.integers(1, 48)                                   # 显式的隐层宽度
seeds = st.integers(0, 2**31 - 1)
log_scales = st.floats(-1.0, 1.0)  # 输入量级 0.1 … 10：SiLU 的弯曲部分和近似线性部分都要覆盖


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """这里的矩阵都很小：多线程只会带来调度开销（机器忙时，单线程快几十倍）。测完恢复原设置。"""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Mismatch(Exception):
    """实现的参数名或形状与约定不符（普通异常：bug 比对时会被跳过，测试里转成中文失败信息）。"""


def _make(shape, dim, hidden, seed, log_scale=0.0, dtype=torch.float32):
    """输入 x 和三个权重矩阵（形状同 nn.Linear.weight：[out, in]）。"""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, dim, generator=g, dtype=torch.float64) * (10.0 ** log_scale)
    w = {
        "gate_proj": torch.randn(hidden, dim, generator=g, dtype=torch.float64) / math.sqrt(dim),
        "up_proj": torch.randn(hidden, dim, generator=g, dtype=torch.float64) / math.sqrt(dim),
        "down_proj": torch.randn(dim, hidden, generator=g, dtype=torch.float64) / math.sqrt(hidden),
    }
    return x.to(dtype), {k: v.to(dtype) for k, v in w.items()}


def _load(ffn, weights):
    """把权重按名字拷进 ffn；名字或形状不对时抛 _Mismatch。"""
    for name, w in weights.items():
        lin = getattr(ffn, name, None)
        if lin is None or not isinstance(getattr(lin, "weight", None), torch.Tensor):
            raise _Mismatch(f"FeedForward 应该有名为 {name} 的 nn.Linear（名字同 minimind：{' / '.join(NAMES)}），没有找到")
        if tuple(lin.weight.shape) != tuple(w.shape):
            raise _Mismatch(f"{name}.weight 期望形状 {tuple(w.shape)}（[输出, 输入]），实际 {tuple(lin.weight.shape)}")
        with torch.no_grad():
            lin.weight.copy_(w.to(lin.weight.dtype))


def _runner(x, weights, *, dropout=0.0, train=False):
    """返回一个函数：给定任意实现的命名空间，用相同权重在 x 上跑一次。也用于 bug 比对。"""
    dim, hidden = weights["gate_proj"].shape[1], weights["gate_proj"].shape[0]

    def run(ns):
        ffn = ns.FeedForward(dim, hidden_dim=hidden, dropout=dropout)
        if x.dtype == torch.float64:
            ffn = ffn.double()
        _load(ffn, weights)
        ffn.train(train)
        return ffn(x)
    return run


def _call(run, ns, section=WHAT_IS):
    try:
        return run(ns)
    except _Mismatch as exc:
        require(False, str(exc), section)


def _swiglu_silu(x, w):
    """独立参考 1：直接照公式用 F.silu 写。"""
    return F.linear(F.silu(F.linear(x, w["gate_proj"])) * F.linear(x, w["up_proj"]), w["down_proj"])


def _swiglu_float64(x, w):
    """独立参考 2：float64、einsum、silu 写成 g·sigmoid(g)。"""
    xd = x.double()
    g = torch.einsum("...d,hd->...h", xd, w["gate_proj"].double())
    u = torch.einsum("...d,hd->...h", xd, w["up_proj"].double())
    return torch.einsum("...h,dh->...d", g * torch.sigmoid(g) * u, w["down_proj"].double())


def _width_rule(dim, multiple_of):
    return multiple_of * math.ceil(int(8 * dim / 3) / multiple_of)


# ---------------------------------------------------------------- 1. 契约

def test_parameters_are_three_bias_free_projections(impl):
    ffn = impl.FeedForward(16, hidden_dim=40)
    ffn(torch.randn(2, 16))  # 先前向一次：参数契约要在模块能工作之后仍然成立
    params = dict(ffn.named_parameters())
    expected = {"gate_proj.weight": (40, 16), "up_proj.weight": (40, 16), "down_proj.weight": (16, 40)}
    biases = sorted(n for n in params if n.endswith("bias"))
    require(not biases, f"三个投影都不应该有 bias（nn.Linear(..., bias=False)），实际多出：{biases}", WHAT_IS)
    require(set(params) == set(expected),
            f"FeedForward 的参数应该恰好是 {sorted(expected)}（名字同 minimind），实际：{sorted(params)}", WHAT_IS)
    for name, shape in expected.items():
        require(tuple(params[name].shape) == shape,
                f"{name} 期望形状 {shape}（nn.Linear 的 weight 是 [输出, 输入]），实际 {tuple(params[name].shape)}",
                WHAT_IS)


@pytest.mark.parametrize(
    "dim, multiple_of, expected",
    [
        (512, 64, 1408),  # MiniMind2：int(1365.33)=1365 → 向上取整到 64 的倍数
        (64, 64, 192),    # 170 → 192
        (768, 64, 2048),  # 8·768/3 = 2048 恰好是整数，也恰好是 64 的倍数
        (100, 64, 320),   # 266 → 320
        (1, 64, 64),      # 2 → 64：再小也至少一个 multiple_of
        (64, 16, 176),    # kata 的小模型用 multiple_of=16：170 → 176
        (64, 2, 170),     # 先 int() 截断：int(170.67)=170 已是 2 的倍数；先 ceil 会得到 172
        (30, 1, 80),      # multiple_of=1：就是 int(8·dim/3)
    ],
    ids=lambda v: str(v),
)
def test_default_width(impl, dim, multiple_of, expected):
    ffn = impl.FeedForward(dim, multiple_of=multiple_of)
    out = ffn(torch.randn(3, dim))
    assert expected == _width_rule(dim, multiple_of)  # 表里的数与公式一致（测试自己的自检）
    require(tuple(out.shape) == (3, dim), f"期望输出形状 {(3, dim)}，实际 {tuple(out.shape)}", WHAT_IS)
    got = {n: tuple(getattr(ffn, n).weight.shape) for n in NAMES if hasattr(ffn, n)}
    want = {"gate_proj": (expected, dim), "up_proj": (expected, dim), "down_proj": (dim, expected)}
    require(got == want,
            f"FeedForward({dim}, multiple_of={multiple_of}) 的默认隐层宽度应为 "
            f"{multiple_of}·ceil(int(8·{dim}/3)/{multiple_of}) = {expected}；实际的权重形状 {got}"
            f"（期望 {want}）", WIDTH)


@pytest.mark.parametrize("dim, expected", [(512, 1408), (100, 320)], ids=lambda v: str(v))
def test_default_multiple_of_is_64(impl, dim, expected):
    # 不传 multiple_of 时它是 64（与 minimind 相同）：FeedForward(512) 的隐层宽度 1408
    ffn = impl.FeedForward(dim)
    got = tuple(ffn.gate_proj.weight.shape) if hasattr(ffn, "gate_proj") else None
    require(got == (expected, dim),
            f"FeedForward({dim})（不传 hidden_dim、multiple_of）的隐层宽度应为 64·ceil(int(8·{dim}/3)/64) = {expected}"
            f"（multiple_of 默认 64）：gate_proj.weight 期望 {(expected, dim)}，实际 {got}", WIDTH)


@pytest.mark.parametrize("hidden", [1, 100, 1000], ids=lambda h: f"hidden={h}")
def test_explicit_hidden_dim_is_used_as_given(impl, hidden):
    ffn = impl.FeedForward(24, hidden_dim=hidden)  # 100、1000 都不是 64 的倍数：不许再取整
    ffn(torch.randn(2, 24))
    got = tuple(ffn.gate_proj.weight.shape) if hasattr(ffn, "gate_proj") else None
    require(got == (hidden, 24),
            f"显式给了 hidden_dim={hidden} 时应原样使用（不再取整、不再乘 8/3）：gate_proj.weight 期望 "
            f"{(hidden, 24)}，实际 {got}", WIDTH)


@pytest.mark.parametrize("shape", [(8,), (3, 8), (2, 5, 8), (2, 3, 4, 8)], ids=str)
def test_output_shape_any_leading_dims(impl, shape):
    x = torch.randn(*shape)
    out = impl.FeedForward(8, hidden_dim=12)(x)
    require(isinstance(out, torch.Tensor) and tuple(out.shape) == shape,
            f"期望形状 {shape}，实际 {tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}",
            WHAT_IS)


def test_leading_dims_are_just_a_batch(impl):
    # FFN 对每个 token 各自计算：[2, 3, 4, D] 的结果应等于先摊平成 [24, D] 算、再变回来
    x, w = _make((2, 3, 4), 8, 20, seed=11)
    run = _runner(x, w)
    out = _call(run, impl)
    flat = _call(_runner(x.reshape(-1, 8), w), impl)
    assert_close(out, flat.reshape(2, 3, 4, 8), **TOL[torch.float32],
                 what="任意前导维：[2, 3, 4, D] 的输出 vs 先摊平成 [24, D] 再变回来", section=WHAT_IS)


# ---------------------------------------------------------------- 2. 与参考实现对比

@given(leading, dims, hiddens, seeds, log_scales)
def test_matches_reference_solution(impl, shape, dim, hidden, seed, log_scale):
    x, w = _make(shape, dim, hidden, seed, log_scale)
    run = _runner(x, w)
    expected = run(resolve(MODULE, "solutions"))
    assert_close(_call(run, impl), expected, **TOL[torch.float32],
                 what=f"与参考实现对比（x 形状 {tuple(x.shape)}，hidden={hidden}，量级约 {10 ** log_scale:.2g}）",
                 section=WHAT_IS, module=MODULE, run=run)


# ---------------------------------------------------------------- 3. 独立参考

@given(leading, dims, hiddens, seeds, log_scales)
def test_matches_formula_with_F_silu(impl, shape, dim, hidden, seed, log_scale):
    x, w = _make(shape, dim, hidden, seed, log_scale)
    run = _runner(x, w)
    assert_close(_call(run, impl), _swiglu_silu(x, w), **TOL[torch.float32],
                 what=f"与公式 down(F.silu(gate(x)) * up(x)) 对比（x 形状 {tuple(x.shape)}，hidden={hidden}）",
                 section=WHAT_IS, module=MODULE, run=run)


@pytest.mark.parametrize("log_scale", [-1.0, 0.0, 1.0], ids=lambda s: f"1e{s:+.0f}")
def test_float64_formula_written_differently(impl, log_scale):
    x, w = _make((3, 5), 12, 28, seed=21, log_scale=log_scale, dtype=torch.float64)
    run = _runner(x, w)
    assert_close(_call(run, impl), _swiglu_float64(x, w), **TOL[torch.float64],
                 what=f"float64、输入量级 1e{log_scale:+.0f}，与 einsum + g·sigmoid(g) 写成的公式对比",
                 section=WHAT_IS, module=MODULE, run=run)


# ---------------------------------------------------------------- 4. 性质

def _activation_probe(s: torch.Tensor):
    """让 gate 分支恰好等于 s、up 分支恰好等于 1、down 只读出第 0 维：输出就是“门控激活的曲线”。

    dim=2，x = [s, 1]；gate 取第 0 维，up 取第 1 维；hidden=1；down 写回第 0 维。
    """
    x = torch.stack([s, torch.ones_like(s)], dim=-1).double()
    w = {"gate_proj": torch.tensor([[1.0, 0.0]], dtype=torch.float64),
         "up_proj": torch.tensor([[0.0, 1.0]], dtype=torch.float64),
         "down_proj": torch.tensor([[1.0], [0.0]], dtype=torch.float64)}
    return x, w


def test_gate_activation_is_silu(impl):
    s = torch.linspace(-6, 6, 25, dtype=torch.float64)
    x, w = _activation_probe(s)
    run = _runner(x, w)
    out = _call(run, impl)
    curve = out[:, 0]
    candidates = {
        "SiLU（正确）": F.silu(s), "ReLU": F.relu(s), "GELU": F.gelu(s), "sigmoid": torch.sigmoid(s),
        "tanh": torch.tanh(s), "恒等（没有激活）": s, "silu(1)·s（gate 与 up 用反了）": F.silu(torch.ones_like(s)) * s,
    }
    looks_like = [name for name, c in candidates.items() if torch.allclose(curve, c, atol=1e-6)]
    hint = f"；你的曲线与 {looks_like[0]} 一致" if looks_like else ""
    require(bool(torch.allclose(out[:, 1], torch.zeros_like(s), atol=1e-12)),
            "down_proj 只写回第 0 维时，输出第 1 维应该是 0", WHAT_IS)
    assert_close(curve, F.silu(s), atol=1e-9, rtol=1e-9,
                 what=f"门控激活的曲线（gate 分支 = s ∈ [-6, 6]、up 分支 = 1 时的输出）应该是 silu(s) = s·sigmoid(s){hint}",
                 section=WHAT_IS, module=MODULE, run=lambda ns: run(ns)[:, 0])


def test_zero_input_gives_zero_output(impl):
    x, w = _make((2, 3), 10, 24, seed=5)
    ffn = impl.FeedForward(10, hidden_dim=24)
    ffn(x)
    out = ffn(torch.zeros(2, 3, 10))
    require(bool(torch.all(out == 0)),
            f"零输入应得到零输出（silu(0)=0 且没有 bias），实际最大绝对值 {out.abs().max().item():.3g}"
            "——是不是线性层带了 bias？", WHAT_IS)


@given(seeds, st.floats(-1.0, 1.0).filter(lambda v: abs(v) > 0.05))
def test_output_is_linear_in_up_branch(impl, seed, c):
    # y = down(silu(g) ⊙ u)：g 不变时，y 对 u 是线性的——把 up_proj 的权重乘 c，输出也恰好乘 c。
    # gate 分支则不是线性的：把 gate_proj 乘 c，输出不会简单地乘 c。
    x, w = _make((4, 3), 10, 24, seed, dtype=torch.float64)
    base = _call(_runner(x, w), impl)
    w_c = dict(w, up_proj=w["up_proj"] * c)
    scaled = _call(_runner(x, w_c), impl)
    assert_close(scaled, c * base, **TOL[torch.float64],
                 what=f"把 up_proj 的权重乘 {c:.3g} 后，输出应恰好乘 {c:.3g}（SiLU 只作用在 gate 分支上，up 分支是线性的）",
                 section=WHAT_IS)


def test_each_token_independent(impl):
    # FFN 逐位置计算：改变一个 token，不应影响任何其他 token 的输出（混合 token 是注意力的工作）
    x, w = _make((3, 4), 8, 20, seed=9)
    before = _call(_runner(x, w), impl)
    x2 = x.clone()
    x2[0, 0] = x2[0, 0] * 100.0 + 1.0
    after = _call(_runner(x2, w), impl)
    assert_close(after[1:], before[1:], atol=1e-6, rtol=1e-6,
                 what="改变 x[0, 0] 后，其他序列的输出", section=WHAT_IS)
    assert_close(after[0, 1:], before[0, 1:], atol=1e-6, rtol=1e-6,
                 what="改变 x[0, 0] 后，同一序列里其他位置的输出", section=WHAT_IS)
    require(not torch.allclose(after[0, 0], before[0, 0]),
            "改变 x[0, 0] 后它自己的输出应该变化", WHAT_IS)


def test_dropout_inactive_in_eval(impl):
    x, w = _make((4, 6), 16, 32, seed=13)
    run_eval = _runner(x, w, dropout=0.5, train=False)
    out = _call(run_eval, impl)
    assert_close(out, _swiglu_silu(x, w), **TOL[torch.float32],
                 what="dropout=0.5、eval 模式下（dropout 应该不起作用，输出等于公式）",
                 section=WHAT_IS, module=MODULE, run=run_eval)


@pytest.mark.parametrize("p", [0.25, 0.75])
def test_dropout_acts_on_the_output_in_training(impl, p):
    # nn.Dropout(p) 作用在 down_proj 的输出上：每个输出元素要么恰好是 0，要么恰好是公式值的 1/(1−p) 倍。
    # 被丢弃的比例是 Binomial(n, p)/n，n = 8·16·16 = 2048：标准差 ≤ 0.01，容差 0.08 是 8 个标准差。
    # 随机数种子固定，同一个实现每次得到同样的结果（不会时红时绿）。
    x, w = _make((8, 16), 16, 40, seed=17, dtype=torch.float64)
    torch.manual_seed(0)
    with torch.no_grad():
        out = _call(_runner(x, w, dropout=p, train=True), impl)
    ref = _swiglu_float64(x, w)
    require(isinstance(out, torch.Tensor) and out.shape == ref.shape, f"输出形状应为 {tuple(ref.shape)}", WHAT_IS)
    zero = out == 0
    frac = float(zero.double().mean())
    if frac < 0.02:
        unchanged = bool(torch.allclose(out, ref, **TOL[torch.float64]))
        require(False,
                f"FeedForward(dropout={p}) 在训练模式下，输出里恰好为 0 的元素应约占 {p:.0%}（down_proj 之后的 "
                f"nn.Dropout({p}) 以概率 {p} 把每个输出元素置 0），实际只占 {frac:.1%}——"
                + ("输出与不加 dropout 时完全相同：dropout 没有起作用（没建 nn.Dropout、建了没用上，或者把 dropout 参数丢了）"
                   if unchanged else
                   "输出变了，却几乎没有 0：dropout 做在了隐层上（silu(gate(x)) ⊙ up(x) 或 gate / up 的输出），"
                   "被丢弃的隐层单元经过 down_proj 又混进了每个输出元素。本课（与 minimind 一样）把 dropout 放在 down_proj 的输出上"),
                "teaching.md §2（SwiGLU 是什么；dropout 在 down_proj 之后）")
    require(abs(frac - p) <= 0.08,
            f"FeedForward(dropout={p}) 在训练模式下，输出里恰好为 0 的元素应约占 {p:.0%}，实际占 {frac:.1%}"
            f"——dropout 的概率不对：构造参数 dropout 要原样传给 nn.Dropout（nn.Dropout() 不传参数时 p=0.5）", WHAT_IS)
    kept = ~zero
    ok = bool(torch.allclose(out[kept], ref[kept] / (1 - p), atol=1e-9, rtol=1e-9))
    ratio = (out[kept] / ref[kept]).abs()
    require(ok, f"FeedForward(dropout={p}) 在训练模式下，没被丢弃的输出元素应恰好是公式值的 1/(1−{p}) = {1 / (1 - p):.4g} 倍，"
                f"实际倍数在 {float(ratio.min()):.4g} … {float(ratio.max()):.4g} 之间"
                "——dropout 不在 down_proj 的输出上，或者被丢弃之后没有按 1/(1−p) 放大（用 nn.Dropout 或 F.dropout，不要自己乘掩码）",
            WHAT_IS)


def test_dropout_zero_in_training_is_the_formula(impl):
    x, w = _make((4, 6), 16, 32, seed=17)
    run0 = _runner(x, w, dropout=0.0, train=True)
    assert_close(_call(run0, impl), _swiglu_silu(x, w), **TOL[torch.float32],
                 what="dropout=0、训练模式下（输出应等于公式：是不是把 dropout 的概率写死了？）", section=WHAT_IS,
                 module=MODULE, run=run0)


# ---------------------------------------------------------------- 5. 梯度

def test_gradcheck_float64(impl):
    x, w = _make((2, 3), 6, 10, seed=4, dtype=torch.float64)
    x.requires_grad_(True)
    ffn = impl.FeedForward(6, hidden_dim=10).double()
    try:
        _load(ffn, w)
    except _Mismatch as exc:
        require(False, str(exc), WHAT_IS)
    require_gradcheck(lambda t: ffn(t), (x,), WHAT_IS)
    ffn(x).sum().backward()
    missing = [n for n in NAMES if getattr(getattr(ffn, n), "weight").grad is None]
    require(not missing and x.grad is not None,
            f"反向传播后这些参数没有梯度：{missing or ['x']}——计算图在某处断了，或者某个投影没用上", WHAT_IS)
