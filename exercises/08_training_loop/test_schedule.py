"""模块 08 · 学习率调度的测试。

cosine_lr：边界（step 0、warmup 最后一步、warmup 结束、正中间、终点、终点之后）、warmup 内单调上升、
warmup 之后单调下降且不低于 min_lr、与一个换了写法的公式（cos² 形式）对比、与参考实现对比、
每个参数都起作用、参数不合法时报错。
minimind_lr：与 minimind trainer/trainer_utils.py 的 get_lr 公式逐点相等。
"""
from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from kata.impl import resolve
from kata.testing import require

MODULE = "08_training_loop"
WARMUP = "teaching.md §4.1（为什么要 warmup）"
COSINE = "teaching.md §4.2（余弦衰减与下限）"
MINIMIND = "teaching.md §4.3（minimind 的公式）"
REL = 1e-12   # 同一个数学量，float64 里只差舍入


def _close(a, b):
    return isinstance(a, (int, float)) and math.isclose(a, b, rel_tol=REL, abs_tol=1e-15)


def _ref_cosine(step, total, max_lr, warmup, min_lr):
    """独立写法：½(1 + cos πp) = cos²(πp/2)。"""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    p = (step - warmup) / (total - warmup)
    return min_lr + (max_lr - min_lr) * math.cos(math.pi * p / 2) ** 2


def _ref_minimind(current_step, total_steps, lr):
    # 照抄 minimind trainer/trainer_utils.py（HEAD d65ef2c）的 get_lr
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * current_step / total_steps)))


def _bug_hint(step, total, max_lr, warmup, min_lr, got):
    """失败时：你的值与哪个常见错误一致。"""
    from kata.bugbank import bugs_for
    hits = []
    for bug in bugs_for(MODULE):
        fn = bug.overrides.get("cosine_lr")
        if fn is None:
            continue
        try:
            v = fn(step, total, max_lr, warmup, min_lr)
        except Exception:
            continue
        if _close(v, got) and not _close(v, _ref_cosine(step, total, max_lr, warmup, min_lr)):
            hits.append(bug.description)
    return ("；你的值与『" + "』『".join(hits) + "』一致") if hits else ""


def _check(impl, step, total, max_lr, warmup, min_lr, why, section):
    got = impl.cosine_lr(step, total, max_lr, warmup_steps=warmup, min_lr=min_lr)
    want = _ref_cosine(step, total, max_lr, warmup, min_lr)
    require(_close(got, want),
            f"cosine_lr(step={step}, total_steps={total}, max_lr={max_lr:g}, warmup_steps={warmup}, min_lr={min_lr:g})"
            f" 期望 {want:.9g}（{why}），实际 {got!r}{_bug_hint(step, total, max_lr, warmup, min_lr, got)}", section)


# ---------------------------------------------------------------- cosine_lr：边界

@pytest.mark.parametrize("step, why, section", [
    (0, "step 从 0 数：第一次更新用 max_lr·1/warmup_steps，不是 0", WARMUP),
    (4, "warmup 的最后一步 step = warmup_steps−1 恰好到 max_lr", WARMUP),
    (5, "warmup 结束：余弦从 max_lr 开始", COSINE),
    (55, "余弦走到一半：正好是 (max_lr + min_lr)/2", COSINE),
    (105, "终点 step = total_steps：降到 min_lr", COSINE),
    (106, "终点之后一直是 min_lr", COSINE),
    (400, "远在终点之后也是 min_lr（不会随着 cos 再升回去）", COSINE),
], ids=lambda v: str(v) if isinstance(v, int) else "")
def test_cosine_boundaries(impl, step, why, section):
    _check(impl, step, 105, 3e-3, 5, 3e-4, why, section)


def test_no_warmup_starts_at_max_lr(impl):
    _check(impl, 0, 10, 0.5, 0, 0.05, "warmup_steps=0 时 step=0 直接是 max_lr", COSINE)
    _check(impl, 10, 10, 0.5, 0, 0.05, "终点是 min_lr", COSINE)


def test_warmup_equal_to_total(impl):
    _check(impl, 9, 10, 1.0, 10, 0.1, "整个训练都在 warmup：最后一步到 max_lr", WARMUP)
    _check(impl, 10, 10, 1.0, 10, 0.1, "之后是 min_lr", COSINE)


# ---------------------------------------------------------------- cosine_lr：公式与单调性

@given(st.integers(0, 300), st.integers(1, 200), st.integers(0, 50), st.floats(1e-5, 1.0), st.floats(0.0, 1.0))
def test_cosine_matches_cos_squared_form(impl, step, total, warmup, max_lr, min_frac):
    warmup = min(warmup, total)
    _check(impl, step, total, max_lr, warmup, max_lr * min_frac, "换一种写法：min + (max−min)·cos²(πp/2)",
           WARMUP if step < warmup else COSINE)


@given(st.integers(0, 300), st.integers(1, 200), st.integers(0, 50), st.floats(1e-5, 1.0), st.floats(0.0, 1.0))
def test_cosine_matches_reference_solution(impl, step, total, warmup, max_lr, min_frac):
    warmup = min(warmup, total)
    ref = resolve(MODULE, "solutions").cosine_lr(step, total, max_lr, warmup_steps=warmup, min_lr=max_lr * min_frac)
    got = impl.cosine_lr(step, total, max_lr, warmup_steps=warmup, min_lr=max_lr * min_frac)
    require(_close(got, ref), f"cosine_lr({step}, {total}, {max_lr:g}, warmup_steps={warmup}, min_lr={max_lr * min_frac:g})"
                              f" 与参考实现不同：期望 {ref!r}，实际 {got!r}"
                              f"{_bug_hint(step, total, max_lr, warmup, max_lr * min_frac, got)}", COSINE)


@given(st.integers(2, 150), st.integers(0, 40), st.floats(0.0, 0.9))
def test_monotone_in_each_phase_and_floored(impl, total, warmup, min_frac):
    warmup = min(warmup, total - 1)
    max_lr, min_lr = 1e-3, 1e-3 * min_frac
    lrs = [impl.cosine_lr(s, total, max_lr, warmup_steps=warmup, min_lr=min_lr) for s in range(total + 20)]
    up = lrs[:warmup]
    down = lrs[warmup:]
    require(all(b >= a for a, b in zip(up, up[1:])),
            f"warmup 阶段（step < {warmup}）学习率应单调上升，实际 {[f'{v:.3g}' for v in up[:8]]}…", WARMUP)
    bad = next((warmup + i for i, (a, b) in enumerate(zip(down, down[1:])) if b > a * (1 + 1e-12)), None)
    require(bad is None,
            f"warmup 之后学习率应单调不增，但在 step {bad} → {bad and bad + 1} 上升了"
            f"（{lrs[bad] if bad is not None else 0:.4g} → {lrs[bad + 1] if bad is not None else 0:.4g}）"
            "——余弦越过终点后又升回去了？", COSINE)
    require(min(down) >= min_lr * (1 - 1e-12) and math.isclose(lrs[-1], min_lr, rel_tol=1e-9, abs_tol=1e-15),
            f"warmup 之后学习率不应低于 min_lr={min_lr:.3g}，且终点之后停在 min_lr；实际最小 {min(down):.4g}、"
            f"最后 {lrs[-1]:.4g}", COSINE)


@pytest.mark.parametrize("change", ["max_lr", "min_lr", "warmup_steps", "total_steps"])
def test_every_argument_takes_effect(impl, change):
    base = dict(step=30, total_steps=100, max_lr=1e-3, warmup_steps=10, min_lr=1e-4)
    other = dict(base, **{"max_lr": dict(max_lr=2e-3), "min_lr": dict(min_lr=5e-4),
                          "warmup_steps": dict(warmup_steps=25), "total_steps": dict(total_steps=40)}[change])
    for kw in (base, other):
        _check(impl, kw["step"], kw["total_steps"], kw["max_lr"], kw["warmup_steps"], kw["min_lr"],
               f"只改了 {change}", COSINE)


@pytest.mark.parametrize("kw", [
    dict(step=-1, total_steps=10, max_lr=1.0),
    dict(step=0, total_steps=0, max_lr=1.0),
    dict(step=0, total_steps=10, max_lr=1.0, warmup_steps=11),
    dict(step=0, total_steps=10, max_lr=1.0, warmup_steps=-1),
    dict(step=0, total_steps=10, max_lr=1.0, min_lr=2.0),
], ids=["negative-step", "zero-total", "warmup>total", "negative-warmup", "min>max"])
def test_invalid_arguments_raise(impl, kw):
    try:
        got = impl.cosine_lr(**kw)
    except ValueError:
        return
    require(False, f"cosine_lr({kw}) 应抛 ValueError（参数不合法，要给出中文说明），实际返回了 {got!r}", COSINE)


# ---------------------------------------------------------------- minimind_lr

@pytest.mark.parametrize("step, total, lr", [
    (0, 1000, 5e-4), (1, 1000, 5e-4), (250, 1000, 5e-4), (500, 1000, 5e-4), (999, 1000, 5e-4), (1000, 1000, 5e-4),
    (7, 13, 1e-5), (1, 2, 1.0), (37_000, 44_160, 5e-4),
], ids=str)
def test_minimind_lr_equals_minimind_formula(impl, step, total, lr):
    got = impl.minimind_lr(step, total, lr)
    want = _ref_minimind(step, total, lr)
    require(_close(got, want),
            f"minimind_lr({step}, {total}, {lr:g}) 期望 {want!r}（minimind trainer/trainer_utils.py 的 get_lr："
            f"lr·(0.1 + 0.45·(1 + cos(π·step/total))))，实际 {got!r}", MINIMIND)


@given(st.integers(0, 5000), st.integers(1, 5000), st.floats(1e-6, 1.0))
def test_minimind_lr_property(impl, step, total, lr):
    got = impl.minimind_lr(step, total, lr)
    require(_close(got, _ref_minimind(step, total, lr)),
            f"minimind_lr({step}, {total}, {lr:g}) 期望 {_ref_minimind(step, total, lr)!r}，实际 {got!r}", MINIMIND)


def test_minimind_lr_has_no_warmup_and_ends_at_a_tenth(impl):
    start, end = impl.minimind_lr(0, 100, 1.0), impl.minimind_lr(100, 100, 1.0)
    require(math.isclose(start, 1.0, rel_tol=1e-12) and math.isclose(end, 0.1, rel_tol=1e-12),
            f"minimind 的调度没有 warmup：step=0 时就是 lr（期望 1.0，实际 {start!r}），"
            f"step=total 时是 0.1·lr（期望 0.1，实际 {end!r}）", MINIMIND)


def test_minimind_lr_rejects_zero_total(impl):
    impl.minimind_lr(0, 10, 1.0)
    try:
        got = impl.minimind_lr(0, 0, 1.0)
    except ValueError:
        return
    except ZeroDivisionError:
        require(False, "minimind_lr(0, total_steps=0, …) 应抛 ValueError（中文说明 total_steps ≥ 1），而不是 ZeroDivisionError",
                MINIMIND)
    require(False, f"minimind_lr(0, total_steps=0, …) 应抛 ValueError，实际返回 {got!r}", MINIMIND)
