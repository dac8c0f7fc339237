"""测试用的小工具：像助教一样说话的断言。

失败信息包含：比较的是什么、期望 vs 实际（形状、dtype、最大误差及其位置、几个样本值）、
如果与 bug bank 里某个常见错误的输出一致就点名它，最后指向 teaching.md 的对应章节。
"""
from __future__ import annotations

from typing import Callable, Optional

import pytest
import torch

from kata.impl import describe, resolve


def _fmt(t: torch.Tensor, n: int = 4) -> str:
    flat = t.detach().flatten()[:n].double().tolist()
    return "[" + ", ".join(f"{v:.6g}" for v in flat) + (", …]" if t.numel() > n else "]")


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    return bool(torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol, equal_nan=True))


def matching_bugs(module_key: str, run: Callable, actual: torch.Tensor, expected: torch.Tensor,
                  atol: float, rtol: float) -> list[str]:
    """bug bank 里哪些错误实现在同一输入上给出与 actual 一致、且与 expected 不一致的结果。"""
    from kata.bugbank import bugs_for

    found = []
    for bug in bugs_for(module_key):
        try:
            out = run(resolve(module_key, f"bug:{bug.name}"))
        except Exception:  # 某个错误实现在这个输入上直接报错：就不可能“一致”
            continue
        if isinstance(out, tuple):
            out = out[0]
        if not isinstance(out, torch.Tensor) or out.dtype != actual.dtype or not _close(out, actual, atol, rtol):
            continue
        if out.dtype == expected.dtype and _close(out, expected, atol, rtol):
            continue  # 这个错误在此输入上看不出来，不能拿它当诊断
        found.append(bug.description)
    return found


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    atol: float,
    rtol: float,
    what: str,
    section: str,
    module: Optional[str] = None,
    run: Optional[Callable] = None,
    check_dtype: bool = True,
) -> None:
    """断言 actual ≈ expected；失败时给出助教式的中文说明。

    what:    比较的是什么（“与 torch.nn.RMSNorm 对比”）；
    section: 去哪里读（“teaching.md §2”）；
    module + run: 提供时，失败信息会用 run(命名空间) 在 bug bank 的每个错误实现上重算一遍，
             找出与学习者输出一致的常见错误。
    """
    if not isinstance(actual, torch.Tensor):
        pytest.fail(f"{what}：期望得到 torch.Tensor，实际得到 {type(actual).__name__}。→ 见 {section}", pytrace=False)
    lines: list[str] = []
    if actual.shape != expected.shape:
        lines.append(f"{what}：期望形状 {tuple(expected.shape)}，实际 {tuple(actual.shape)}")
    elif check_dtype and actual.dtype != expected.dtype:
        lines.append(f"{what}：期望 dtype {expected.dtype}，实际 {actual.dtype}")
    elif not _close(actual, expected, atol, rtol):
        a, e = actual.detach().double(), expected.detach().double()
        if torch.isnan(a).any() and not torch.isnan(e).any():
            lines.append(f"{what}：你的输出里有 NaN（{int(torch.isnan(a).sum())} 个），期望里没有")
        elif torch.isinf(a).any() and not torch.isinf(e).any():
            lines.append(f"{what}：你的输出里有 inf（{int(torch.isinf(a).sum())} 个），期望里没有——是不是溢出了？")
        else:
            err = (a - e).abs().nan_to_num(nan=float("inf"))
            idx = int(err.flatten().argmax())
            pos = tuple(int(i) for i in torch.unravel_index(torch.tensor(idx), a.shape)) if a.dim() else ()
            lines.append(
                f"{what}：数值不一致（容差 atol={atol:g}, rtol={rtol:g}）\n"
                f"  最大绝对误差 {float(err.flatten()[idx]):.3g}，位置 {pos}：期望 {float(e.flatten()[idx]):.6g}，"
                f"实际 {float(a.flatten()[idx]):.6g}\n"
                f"  期望前几个值 {_fmt(e)}\n  实际前几个值 {_fmt(a)}"
            )
    if not lines:
        return
    if module is not None and run is not None:
        hits = matching_bugs(module, run, actual, expected, atol, rtol)
        if hits:
            lines.append("  你的输出与" + "、".join(f"『{h}』" for h in hits) + "这个常见错误一致。")
    lines.append(f"  → 见 {section}")
    pytest.fail("\n".join(lines), pytrace=False)


def require(cond: bool, message: str, section: str) -> None:
    """性质类断言：条件不成立就给出中文说明（不显示 traceback）。"""
    if not cond:
        pytest.fail(f"{message}\n  → 见 {section}", pytrace=False)


def require_gradcheck(fn: Callable, inputs: tuple, section: str, *, who: str = "", atol: float = 1e-5,
                      fast_mode: bool = False) -> None:
    """float64 gradcheck（解析梯度 vs 中心差分）；不一致时给出中文说明，而不是 gradcheck 的长报错。

    NotImplementedError 原样抛出（桩的“还没实现”由 conftest 统一显示）；其余 RuntimeError
    （GradcheckError、对需要梯度的叶子张量原地修改……）都算失败，并附上报错的第一行。
    """
    try:
        ok = torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=atol, fast_mode=fast_mode)
        detail = ""
    except NotImplementedError:
        raise
    except RuntimeError as exc:
        text = str(exc).strip()
        first = text.splitlines()[0].rstrip(" ,.:;") if text else type(exc).__name__
        ok, detail = False, f"（PyTorch：{first}）"
    prefix = f"{who}：" if who else ""
    require(ok, f"{prefix}float64 gradcheck 失败——解析梯度与数值梯度不一致。{detail}"
                "（forward 里有 .detach()、.data 或原地修改（x += …）吗？）", section)


def impl_label(ns) -> str:
    return describe(ns._impl)
