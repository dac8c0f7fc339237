"""模块 08 · clip_grad_norm 的测试。

与 torch.nn.utils.clip_grad_norm_ 对比（返回的范数与裁剪后的梯度；hypothesis 抽参数个数、形状、量级，
一半的例子在阈值之下）；低于阈值时一点不变；全局而不是逐参数；裁剪后全局范数 = max_norm；
model.parameters() 这种只能遍历一次的生成器；inf / nan 照实报告；没有梯度的参数被跳过。
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, strategies as st

from kata.impl import resolve
from kata.testing import assert_close, require

MODULE = "08_training_loop"
CLIP = "teaching.md §5（梯度裁剪）"
GLOBAL = "teaching.md §5.1（为什么是全局范数）"

TOL = dict(atol=1e-6, rtol=1e-5)   # 范数是几十个平方和的开方：float32 累加顺序不同差几个 ulp

seeds = st.integers(0, 2**31 - 1)
shape_lists = st.lists(st.sampled_from([(3,), (2, 3), (4, 4), (1,), (5, 1, 2)]), min_size=1, max_size=4)
log_scales = st.floats(-3.0, 3.0)
max_norms = st.sampled_from([0.1, 1.0, 5.0])

def _diag(impl):
    """失败时拿 bug bank 比对用的模块名；被测的本身就是 bug bank 条目时不比对（省下几十倍的重算）。"""
    return None if str(getattr(impl, "_impl", "")).startswith("bug:") else MODULE



def _params(shapes, seed, log_scale, none_at=None):
    g = torch.Generator().manual_seed(seed)
    ps = []
    for i, s in enumerate(shapes):
        p = torch.nn.Parameter(torch.randn(*s, generator=g))
        # 各个参数的梯度量级不同（差 10 倍）：逐参数裁剪与全局裁剪的结果就不一样
        p.grad = None if i == none_at else torch.randn(*s, generator=g) * 10.0 ** (log_scale + (i % 2))
        ps.append(p)
    return ps


def _runner(shapes, seed, log_scale, max_norm, none_at=None):
    """返回 run(ns)：在新参数上裁剪一次，输出 [返回的范数, 裁剪后的全部梯度…]（给 bug 比对用）。"""
    def run(ns):
        ps = _params(shapes, seed, log_scale, none_at)
        total = ns.clip_grad_norm(ps, max_norm)
        grads = [p.grad.flatten() for p in ps if p.grad is not None]
        return torch.cat([torch.as_tensor(total, dtype=torch.float32).reshape(1)] + grads)
    return run


def _torch(shapes, seed, log_scale, max_norm, none_at=None):
    ps = _params(shapes, seed, log_scale, none_at)
    total = torch.nn.utils.clip_grad_norm_(ps, max_norm)
    return torch.cat([total.reshape(1)] + [p.grad.flatten() for p in ps if p.grad is not None])


@given(shape_lists, seeds, log_scales, max_norms)
def test_matches_torch_clip_grad_norm(impl, shapes, seed, log_scale, max_norm):
    run = _runner(shapes, seed, log_scale, max_norm)
    expected = _torch(shapes, seed, log_scale, max_norm)
    above = float(expected[0]) > max_norm
    assert_close(run(impl), expected, **TOL,
                 what=f"[返回的范数, 裁剪后的梯度…] 与 torch.nn.utils.clip_grad_norm_ 对比（{len(shapes)} 个参数，"
                      f"max_norm={max_norm:g}，全局范数 {float(expected[0]):.3g}，{'高于' if above else '低于'}阈值）",
                 section=GLOBAL if above else CLIP, module=_diag(impl), run=run)


@given(shape_lists, seeds, log_scales, max_norms)
def test_matches_reference_solution(impl, shapes, seed, log_scale, max_norm):
    run = _runner(shapes, seed, log_scale, max_norm)
    assert_close(run(impl), run(resolve(MODULE, "solutions")), **TOL,
                 what=f"clip_grad_norm 与参考实现对比（{len(shapes)} 个参数，max_norm={max_norm:g}）",
                 section=CLIP, module=_diag(impl), run=run)


def test_returns_the_norm_before_clipping(impl):
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    total = impl.clip_grad_norm([p], 1.0)
    require(isinstance(total, (torch.Tensor, float)) and math.isclose(float(total), 5.0, rel_tol=1e-6),
            f"梯度 [3, 4]、max_norm=1：应返回裁剪**之前**的范数 5（日志要看的是它），实际 {total!r}", CLIP)
    assert_close(p.grad, torch.tensor([0.6, 0.8]), atol=1e-6, rtol=1e-5,
                 what="梯度 [3, 4] 裁剪到范数 1 之后（方向不变，应为 [0.6, 0.8]）", section=CLIP)


def test_no_op_below_threshold(impl):
    ps = _params([(3, 3), (5,)], 1, -2.0)
    before = [p.grad.clone() for p in ps]
    total = float(impl.clip_grad_norm(ps, 10.0))
    require(total < 10.0, f"测试前提：全局范数 {total:.3g} 应低于阈值 10", CLIP)
    require(all(torch.equal(p.grad, b) for p, b in zip(ps, before)),
            f"全局范数 {total:.3g} 低于 max_norm=10 时梯度应该一点都不变（系数取 min(1, …)，只缩小不放大）", CLIP)


def test_clipped_global_norm_equals_max_norm(impl):
    ps = _params([(4, 4), (6,), (2, 3)], 2, 1.0)
    impl.clip_grad_norm(ps, 0.5)
    after = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in ps))
    require(math.isclose(after, 0.5, rel_tol=1e-4),
            f"裁剪后所有梯度拼起来的全局范数应为 max_norm=0.5，实际 {after:.6g}"
            "（逐参数裁剪时每个参数各自 ≤ 0.5，拼起来会更大）", GLOBAL)


def test_global_not_per_parameter(impl):
    # 两个参数的梯度差 100 倍：全局裁剪保持它们的比例（方向不变）；逐参数裁剪把它们拉成一样大
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([3.0, 4.0]), torch.tensor([0.03, 0.04])
    impl.clip_grad_norm([a, b], 1.0)
    ratio = float(a.grad.norm() / b.grad.norm())
    require(math.isclose(ratio, 100.0, rel_tol=1e-4),
            f"全局裁剪后两个梯度的大小之比应保持 100（整体乘同一个系数），实际 {ratio:.4g}——是不是逐个参数裁剪了？",
            GLOBAL)


def test_accepts_a_generator_like_model_parameters(impl):
    # model.parameters() 只能遍历一次：先求范数、再遍历一遍去缩放，第二遍是空的
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    g = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g) * 10
    total = float(impl.clip_grad_norm(model.parameters(), 1.0))
    after = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
    require(total > 1.0 and math.isclose(after, 1.0, rel_tol=1e-4),
            f"传入 model.parameters()（生成器）时也要真的裁剪：裁剪前范数 {total:.3g}，之后应为 1，实际 {after:.4g}"
            "——生成器只能遍历一次，先把它变成 list", CLIP)


def test_single_tensor_and_missing_grads(impl):
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([2.0, 0.0, 0.0])
    total = impl.clip_grad_norm(p, 1.0)
    require(math.isclose(float(total), 2.0, rel_tol=1e-6) and torch.allclose(p.grad, torch.tensor([1.0, 0.0, 0.0])),
            f"只传一个张量时也要工作（torch 允许），返回 2、梯度变成 [1, 0, 0]；实际 {float(total)!r}、{p.grad.tolist()}",
            CLIP)
    run = _runner([(3,), (2, 2), (4,)], 5, 0.5, 1.0, none_at=1)
    assert_close(run(impl), _torch([(3,), (2, 2), (4,)], 5, 0.5, 1.0, none_at=1), **TOL,
                 what="中间一个参数没有梯度（p.grad is None，应被跳过）时与 torch 对比", section=CLIP,
                 module=_diag(impl), run=run)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_non_finite_norm_is_reported(impl, bad):
    ps = _params([(3,), (2,)], 3, 0.0)
    ps[1].grad[0] = bad
    total = float(impl.clip_grad_norm(ps, 1.0))
    ok = math.isinf(total) if math.isinf(bad) else math.isnan(total)
    require(ok, f"有一个梯度是 {bad} 时，返回的全局范数应该是 {bad}（照实报告，让训练循环发现它），实际 {total!r}"
                "——不要把非有限值过滤掉、也不要返回裁剪后的范数", CLIP)


@pytest.mark.parametrize("max_norm", [0.0, -1.0], ids=lambda m: f"max_norm={m:g}")
def test_invalid_max_norm_raises(impl, max_norm):
    ps = _params([(3,)], 4, 0.0)
    try:
        impl.clip_grad_norm(ps, max_norm)
    except ValueError:
        return
    require(False, f"max_norm={max_norm:g} 不是正数，应抛 ValueError（中文说明），而不是悄悄把梯度清零或放大", CLIP)


def test_no_gradients_at_all(impl):
    ps = _params([(3,)], 6, 0.0)
    impl.clip_grad_norm(ps, 1.0)
    empty = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))]   # 还没 backward：grad 都是 None
    total = impl.clip_grad_norm(empty, 1.0)
    require(math.isclose(float(total), 0.0, abs_tol=0.0),
            f"一个梯度都没有时（都是 None）应返回 0（torch 也是），实际 {total!r}", CLIP)
