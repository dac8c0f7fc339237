"""模块 08 · cross_entropy 的测试。

分层（每一层都能失败）：
1. 契约：返回标量、dtype；
2. 与参考实现对比（hypothesis 抽形状、量级、被忽略的位置）；
3. 与独立参考 F.cross_entropy 对比（含 ignore_index，logits 大到 ±1e4 也不溢出），
   以及一个 float64 的“−log 概率”公式；梯度也与 F.cross_entropy 的梯度对比；
4. 约定：全部被忽略时返回 0、梯度为 0；ignore_index 这个参数真的起作用；
5. float64 gradcheck。
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from kata.impl import resolve
from kata.testing import assert_close, require, require_gradcheck

MODULE = "08_training_loop"
CE = "teaching.md §2（交叉熵）"
STABLE = "teaching.md §2.1（数值稳定：减去最大值）"
IGNORE = "teaching.md §2.2（ignore_index 与全部被忽略）"

TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),    # 求和顺序不同：float32 差几个 ulp（与 F.cross_entropy 实测相对误差 ≤ 2.3e-7，logits 到 1e4 时）
    torch.float64: dict(atol=1e-12, rtol=1e-12),  # 同一个数学量，float64 只差舍入
}

seeds = st.integers(0, 2**31 - 1)
shapes = st.sampled_from([(5,), (2, 3), (3, 4), (1, 7), (2, 2, 3)])  # targets 的形状；logits 再加一维 V
vocabs = st.integers(2, 40)
log_scales = st.floats(-1.0, 4.0)   # logits 量级 0.1 … 1e4：1e4 时 exp 在 float32 里早就溢出了
ignore_fracs = st.sampled_from([0.0, 0.3, 0.7])

def _diag(impl):
    """失败时拿 bug bank 比对用的模块名；被测的本身就是 bug bank 条目时不比对（省下几十倍的重算）。"""
    return None if str(getattr(impl, "_impl", "")).startswith("bug:") else MODULE



def _make(shape, vocab, seed, log_scale, ignore_frac, ignore_index=-100, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, vocab, generator=g, dtype=torch.float64) * 10.0 ** log_scale).to(dtype)
    targets = torch.randint(0, vocab, shape, generator=g)
    drop = torch.rand(shape, generator=g) < ignore_frac
    targets[drop] = ignore_index
    if bool((targets == ignore_index).all()):
        targets.view(-1)[0] = 0 if ignore_index != 0 else 1   # 这里要至少一个有效位置（全部被忽略单独测）
    return logits, targets


def _torch_ce(logits, targets, ignore_index=-100):
    v = logits.size(-1)
    return F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1), ignore_index=ignore_index)


def _runner(logits, targets, **kw):
    return lambda ns: ns.cross_entropy(logits, targets, **kw)


# ---------------------------------------------------------------- 1. 契约

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_returns_a_scalar_of_at_least_float32(impl, dtype):
    logits, targets = _make((2, 3), 5, 0, 0.0, 0.0, dtype=dtype)
    out = impl.cross_entropy(logits, targets)
    require(isinstance(out, torch.Tensor) and out.dim() == 0,
            f"cross_entropy 应返回一个标量（0 维张量，才能 .backward()），实际 "
            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}", CE)
    require(out.dtype == dtype, f"{dtype} 的 logits 应得到 {dtype} 的 loss，实际 {out.dtype}", CE)


def test_low_precision_input_is_computed_in_float32(impl):
    logits, targets = _make((4, 6), 50, 1, 1.0, 0.0)
    out = impl.cross_entropy(logits.bfloat16(), targets)
    require(out.dtype == torch.float32,
            f"bfloat16 的 logits 应在 float32 里算（bf16 只有 8 位有效数字，求和误差很大），实际返回 {out.dtype}", STABLE)
    assert_close(out, _torch_ce(logits.bfloat16().float(), targets), **TOL[torch.float32],
                 what="bfloat16 logits（先升到 float32 再算）vs F.cross_entropy", section=STABLE)


# ---------------------------------------------------------------- 2. 与参考实现对比

@given(shapes, vocabs, seeds, log_scales, ignore_fracs)
def test_matches_reference_solution(impl, shape, vocab, seed, log_scale, frac):
    logits, targets = _make(shape, vocab, seed, log_scale, frac)
    run = _runner(logits, targets)
    expected = run(resolve(MODULE, "solutions"))
    assert_close(impl.cross_entropy(logits, targets), expected, **TOL[torch.float32],
                 what=f"交叉熵与参考实现对比（logits 形状 {tuple(logits.shape)}，量级约 {10 ** log_scale:.3g}）",
                 section=CE, module=_diag(impl), run=run)


# ---------------------------------------------------------------- 3. 独立参考

@given(shapes, vocabs, seeds, log_scales, ignore_fracs)
def test_matches_F_cross_entropy(impl, shape, vocab, seed, log_scale, frac):
    logits, targets = _make(shape, vocab, seed, log_scale, frac)
    run = _runner(logits, targets)
    assert_close(impl.cross_entropy(logits, targets), _torch_ce(logits, targets), **TOL[torch.float32],
                 what=f"交叉熵与 F.cross_entropy(ignore_index=-100) 对比（logits 形状 {tuple(logits.shape)}，"
                      f"量级约 {10 ** log_scale:.3g}，{int((targets == -100).sum())} 个位置被忽略）",
                 section=STABLE if log_scale > 1.5 else CE, module=_diag(impl), run=run)


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4], ids=lambda s: f"±{s:g}")
def test_huge_logits_do_not_overflow(impl, scale):
    # 每行一个极大、一个极小：正确答案有时是最小的那个（概率下溢到 0，log 得 −inf 的写法会得到 inf）
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 9, generator=g)
    logits[:, 0] = scale
    logits[:, 1] = -scale
    targets = torch.tensor([0, 1, 2, 1, 0, 5])
    out = impl.cross_entropy(logits, targets)
    require(bool(torch.isfinite(out)),
            f"logits 含 ±{scale:g} 时 loss 变成了 {float(out)}——exp({scale:g}) 在 float32 里溢出（> 3.4e38），"
            "或者概率下溢成 0 后取了 log。先减去每行最大值（log-sum-exp）", STABLE)
    assert_close(out, _torch_ce(logits, targets), atol=1e-2, rtol=1e-5,
                 what=f"logits 大到 ±{scale:g} 时与 F.cross_entropy 对比（loss 本身约 {scale:g} 量级，容差按相对误差）",
                 section=STABLE, module=_diag(impl), run=_runner(logits, targets))


def test_float64_formula_written_differently(impl):
    # −log p(y)，p 用 float64 的 exp 直接算（量级小，不会溢出）；忽略的位置不进平均
    logits, targets = _make((3, 5), 11, 7, 0.0, 0.3, dtype=torch.float64)
    p = logits.exp() / logits.exp().sum(-1, keepdim=True)
    keep = targets != -100
    ref = -(p[keep].gather(-1, targets[keep].unsqueeze(-1)).log()).mean()
    assert_close(impl.cross_entropy(logits, targets), ref, **TOL[torch.float64],
                 what="交叉熵（float64）：与 −mean(log p(y)) 直接计算的结果对比", section=CE,
                 module=_diag(impl), run=_runner(logits, targets))


@given(shapes, vocabs, seeds, st.floats(-1.0, 3.0), ignore_fracs)
def test_gradient_matches_F_cross_entropy(impl, shape, vocab, seed, log_scale, frac):
    logits, targets = _make(shape, vocab, seed, log_scale, frac)
    mine = logits.clone().requires_grad_(True)
    impl.cross_entropy(mine, targets).backward()
    ref = logits.clone().requires_grad_(True)
    _torch_ce(ref, targets).backward()
    require(mine.grad is not None,
            "对 logits 的梯度是 None：计算图断了（是不是用了 .detach()、.item() 或 .data？）", CE)
    assert_close(mine.grad, ref.grad, atol=1e-6, rtol=1e-4,
                 what="∂loss/∂logits（应为 (softmax − onehot)/有效个数，被忽略的行为 0）vs F.cross_entropy 的梯度",
                 section=IGNORE if frac else CE)


# ---------------------------------------------------------------- 4. ignore_index 的约定

@pytest.mark.parametrize("ignore_index", [0, 3, -1], ids=lambda i: f"ignore_index={i}")
def test_ignore_index_argument_is_used(impl, ignore_index):
    # 例如 padding 的 id 是 0（minimind 的 <|endoftext|>）：标成 0 的位置就不该算 loss
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(4, 6, 8, generator=g)
    targets = torch.randint(0, 8, (4, 6), generator=g)
    targets[:, ::2] = ignore_index
    got = impl.cross_entropy(logits, targets, ignore_index=ignore_index)
    run = _runner(logits, targets, ignore_index=ignore_index)
    assert_close(got, _torch_ce(logits, targets, ignore_index), **TOL[torch.float32],
                 what=f"交叉熵的 ignore_index={ignore_index}：等于这个值的位置不计 loss、也不进分母（对比 F.cross_entropy）",
                 section=IGNORE, module=_diag(impl), run=run)


def test_ignored_positions_do_not_dilute_the_mean(impl):
    # 一半位置被忽略：平均只在剩下的一半上取（分母不是总个数）
    logits, targets = _make((8,), 5, 9, 0.0, 0.0)
    half = targets.clone()
    half[4:] = -100
    got = impl.cross_entropy(logits, half)
    expected = impl.cross_entropy(logits[:4], targets[:4])
    assert_close(got, expected, **TOL[torch.float32],
                 what="交叉熵：后 4 个位置被忽略时的 loss vs 只用前 4 个位置算的 loss（被忽略的不该进分母）",
                 section=IGNORE, module=_diag(impl), run=_runner(logits, half))


def test_all_ignored_gives_zero_and_zero_gradient(impl):
    logits = torch.randn(2, 3, 7, requires_grad=True)
    targets = torch.full((2, 3), -100)
    out = impl.cross_entropy(logits, targets)
    require(bool(torch.isfinite(out.detach())) and float(out.detach()) == 0.0,
            f"全部位置都被忽略时应返回 0（本模块的约定；F.cross_entropy 此时是 0/0 = nan），实际 {float(out.detach())}"
            "——分母用 clamp(min=1)", IGNORE)
    out.backward()
    require(logits.grad is not None and bool((logits.grad == 0).all()),
            "全部位置都被忽略时对 logits 的梯度应该全是 0（有限，不是 nan）", IGNORE)


# ---------------------------------------------------------------- 5. 梯度

def test_gradcheck_float64(impl):
    logits, targets = _make((3, 4), 6, 11, 0.0, 0.3, dtype=torch.float64)
    logits.requires_grad_(True)
    require_gradcheck(lambda x: impl.cross_entropy(x, targets), (logits,), CE, who="cross_entropy")


# ---------------------------------------------------------------- 6. 不合法的输入

def test_mismatched_shapes_are_an_error_not_a_silent_answer(impl):
    # logits [2, 3, V] 配 targets [3, 2]：元素个数相同，摊平后能算出一个数——但位置全对错了
    impl.cross_entropy(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long))   # 形状对的时候能算
    try:
        got = impl.cross_entropy(torch.randn(2, 3, 5), torch.zeros(3, 2, dtype=torch.long))
    except Exception:
        return
    require(False, f"logits [2, 3, 5] 配 targets [3, 2] 应该报错（targets 的形状要等于 logits 去掉最后一维），"
                   f"实际悄悄返回了 {float(got.detach()):.4g}——摊平以后位置已经对不上了", CE)
