"""逐层比对（layer-by-layer divergence report）：学习者的块 / 模型和参考实现用同一份权重跑同一个输入，
找出**第一个**算错的子模块，告诉学习者去哪里找错。

做法：给两个模型的每个子模块都挂上 forward hook，记下每个子模块第一次被调用时的输入和输出
（按参数名记，所以关键字参数还是位置参数都一样）。然后按参考实现里子模块**完成**的先后顺序逐个比：

- 输出一致 → 这里没问题，往下看；
- 输出不同、但输入一致 → 错误就发生在这个子模块自己的 forward 里：它就是“罪魁”；
- 输出不同、输入也已经不同 → 错误在更早的地方，或者在调用它的父模块里，继续往下看；
- 参考实现调用了它，你的实现却从没调用 → 也是“罪魁”（例如漏了最后的 norm）。

罪魁如果有子模块，再补充两条线索：哪个子模块最先收到了不同的输入（哪个参数不同），
以及子模块的调用顺序与参考是否不同（Post-Norm 写成 Pre-Norm 时顺序就变了）。

    from kata.divergence import compare_modules
    report = compare_modules(mine, reference, lambda m: m(input_ids).logits)
    if report is not None:
        print(report.message())
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

__all__ = ["Call", "Divergence", "record_calls", "compare_modules", "copy_weights", "flatten_tensors"]

# 一个类名属于哪一个课程模块：罪魁是这些类时，提示学习者回到那个模块
_COMPONENT_MODULE = {
    "RMSNorm": "01_normalization",
    "Attention": "03_attention",
    "FeedForward": "04_feedforward",
    "MiniMindBlock": "06_transformer_block",
}


@dataclass
class Call:
    """某个子模块第一次被调用时的记录。"""

    order: int                       # 完成的先后（forward hook 在子模块返回时触发）
    start: int                       # 开始的先后（决定子模块的调用顺序）
    cls: str                         # 类名
    inputs: dict                     # 参数名 -> 展平后的张量列表
    outputs: list                    # 展平后的输出张量


def flatten_tensors(obj) -> list:
    """把嵌套的 tuple / list / dict / dataclass 里的张量按顺序取出来（None 跳过）。"""
    if isinstance(obj, torch.Tensor):
        return [obj.detach()]
    if obj is None or isinstance(obj, (int, float, bool, str)):
        return []
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in flatten_tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in flatten_tensors(v)]
    if hasattr(obj, "__dataclass_fields__"):
        return [t for k in obj.__dataclass_fields__ for t in flatten_tensors(getattr(obj, k))]
    return []


def _named_inputs(module: nn.Module, args: tuple, kwargs: dict) -> dict:
    """参数名 -> 展平后的张量列表。绑定不上签名时退回 "#0"、"#1"… 这样的位置名。"""
    try:
        params = inspect.signature(module.forward).parameters
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        items = [(f"#{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
        return {k: flatten_tensors(v) for k, v in items}
    named = {}
    for k, v in bound.arguments.items():
        kind = params[k].kind if k in params else None
        if kind == inspect.Parameter.VAR_KEYWORD:      # **kwargs：展开成各自的名字
            named.update({kk: flatten_tensors(vv) for kk, vv in v.items()})
        elif kind == inspect.Parameter.VAR_POSITIONAL:  # *args
            named.update({f"{k}[{i}]": flatten_tensors(vv) for i, vv in enumerate(v)})
        else:
            named[k] = flatten_tensors(v)
    return named


def record_calls(model: nn.Module, run: Callable[[nn.Module], Any]) -> tuple[dict, Any]:
    """跑一次 run(model)，返回 ({子模块名: Call}, run 的返回值)。根模块本身不记录；
    同一个子模块被调用多次时只留最后一次。"""
    calls: dict[str, Call] = {}
    started: dict[str, int] = {}
    counter = {"start": 0, "end": 0}
    handles = []

    for name, mod in model.named_modules():
        if not name:
            continue

        def pre_hook(m, args, kwargs, _name=name):
            counter["start"] += 1
            started[_name] = counter["start"]

        def hook(m, args, kwargs, output, _name=name):
            # 同一个子模块被调用多次时（例如先算前缀、再带着 cache 解码一步）记最后一次：
            # run 的最后一次前向才是要比对的那一次
            counter["end"] += 1
            calls[_name] = Call(order=counter["end"], start=started.get(_name, -1), cls=type(m).__name__,
                                inputs=_named_inputs(m, args, kwargs), outputs=flatten_tensors(output))

        handles.append(mod.register_forward_pre_hook(pre_hook, with_kwargs=True))
        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        result = run(model)
    finally:
        for h in handles:
            h.remove()
    return calls, result


def _max_err(a: list, b: list) -> Optional[float]:
    """两组张量的最大绝对误差；个数或形状不同时返回 inf；都为空时返回 None。"""
    if not a and not b:
        return None
    if len(a) != len(b):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return float("inf")
        if x.numel() == 0:
            continue
        if x.dtype == torch.bool or y.dtype == torch.bool or not x.is_floating_point():
            if not torch.equal(x, y.to(x.dtype)):
                return float("inf")
            continue
        d = (x.double() - y.double()).abs()
        d = torch.where(torch.isnan(x.double()) & torch.isnan(y.double()), torch.zeros_like(d), d)
        worst = max(worst, float(d.nan_to_num(nan=float("inf")).max()))
    return worst


def _close(a: list, b: list, atol: float, rtol: float) -> bool:
    if not a and not b:
        return True
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape:
            return False
        if not x.is_floating_point() or not y.is_floating_point():
            if not torch.equal(x, y.to(x.dtype)):
                return False
            continue
        if not torch.allclose(x.double(), y.double(), atol=atol, rtol=rtol, equal_nan=True):
            return False
    return True


@dataclass
class Divergence:
    """逐层比对的结论。"""

    name: str                            # 罪魁子模块的名字（如 "layers.0.self_attn"）；"" = 整个模块本身
    cls: str                             # 它的类名
    kind: str                            # "output"（输入相同、输出不同）| "not_called"（参考调用了、你没调用）| "top"
    max_abs_err: Optional[float]         # 罪魁输出的最大绝对误差（not_called 时为 None）
    first_output_diff: Optional[str] = None   # 按参考的完成顺序，第一个输出不同的子模块（不管输入是否相同）
    first_output_err: Optional[float] = None
    child_with_bad_input: Optional[str] = None  # 罪魁的子模块里，第一个收到不同输入的
    bad_input_args: list = field(default_factory=list)  # 它哪些参数不同
    order_mine: Optional[list] = None    # 罪魁的直接子模块调用顺序（你的）
    order_ref: Optional[list] = None     # 罪魁的直接子模块调用顺序（参考）
    prefix: str = ""                     # 名字前缀（例如整模型里 "model."）

    def where(self) -> str:
        return (self.prefix + self.name) if self.name else (self.prefix.rstrip(".") or "最外层")

    def message(self) -> str:
        """给学习者看的几行中文。"""
        label = f"{self.where()}（{self.cls}）"
        if self.kind == "not_called":
            lines = [f"逐层比对：参考实现调用了 {label}，你的实现从头到尾没有调用它——是不是漏掉了这一步？"]
        elif self.kind == "top":
            lines = [f"逐层比对：所有子模块的输出都与参考一致，差别出在{label}自己的 forward 里"
                     f"（最后一个子模块之后的那几行计算），最大绝对误差 {self.max_abs_err:.3g}。"]
        else:
            err = "形状或个数不同" if self.max_abs_err == float("inf") else f"最大绝对误差 {self.max_abs_err:.3g}"
            lines = [f"逐层比对：第一个算错的子模块是 {label}——它收到的输入与参考实现相同，输出却不同（{err}）。"]
        if self.child_with_bad_input:
            args = "、".join(self.bad_input_args) or "输入"
            lines.append(f"  线索：在它内部，{self.prefix}{self.child_with_bad_input} 是第一个收到不同输入的子模块"
                         f"（不同的参数：{args}）：问题出在 {self.cls}.forward 自己的那几行——"
                         f"交给子模块的东西、顺序，或者子模块之间的计算。")
        if self.order_mine is not None and self.order_ref is not None and self.order_mine != self.order_ref:
            lines.append(f"  线索：子模块的调用顺序与参考不同——你的：{' → '.join(self.order_mine)}；"
                         f"参考：{' → '.join(self.order_ref)}。")
        if (self.first_output_diff and self.first_output_diff != self.name and self.kind != "not_called"
                and self.first_output_err is not None):
            lines.append(f"  （按执行顺序，最早出现不同输出的是 {self.prefix}{self.first_output_diff}，"
                         f"但它的输入已经不同了，所以错不在它。）")
        module = _COMPONENT_MODULE.get(self.cls)
        if module and module != "06_transformer_block" and self.kind == "output":
            lines.append(f"  {self.cls} 是模块 {module} 的组件：你的块用的是你自己的 {self.cls}，"
                         f"先让 `pytest exercises/{module}` 全部通过。")
        return "\n".join(lines)


def _direct_children_order(calls: dict, parent: str) -> list:
    depth = parent.count(".") + 1 if parent else 0
    kids = [(c.start, n) for n, c in calls.items()
            if (n.startswith(parent + ".") if parent else True) and n.count(".") == depth]
    return [n.rsplit(".", 1)[-1] for _, n in sorted(kids)]


def compare_modules(mine: nn.Module, reference: nn.Module, run: Callable[[nn.Module], Any], *,
                    atol: float = 1e-5, rtol: float = 1e-4, prefix: str = "") -> Optional[Divergence]:
    """用 run(module) 分别跑两边（应当已经是同一份权重），返回 Divergence；最终输出一致时返回 None。

    prefix：报告里名字的前缀（比如拿 MiniMindForCausalLM 比对时不需要；只比对 .model 时写 "model."）。
    """
    ref_calls, ref_out = record_calls(reference, run)
    my_calls, my_out = record_calls(mine, run)
    ref_flat, my_flat = flatten_tensors(ref_out), flatten_tensors(my_out)
    if _close(my_flat, ref_flat, atol, rtol):
        return None

    ordered = sorted(ref_calls.items(), key=lambda kv: kv[1].order)
    first_diff, first_err = None, None
    for name, rc in ordered:
        mc = my_calls.get(name)
        if mc is not None and not _close(mc.outputs, rc.outputs, atol, rtol):
            first_diff, first_err = name, _max_err(mc.outputs, rc.outputs)
            break

    culprit, kind, err = None, "top", _max_err(my_flat, ref_flat)
    for name, rc in ordered:
        mc = my_calls.get(name)
        if mc is None:
            culprit, kind, err = name, "not_called", None
            break
        if _close(mc.outputs, rc.outputs, atol, rtol):
            continue
        same_inputs = set(mc.inputs) == set(rc.inputs) and all(
            _close(mc.inputs[k], rc.inputs[k], atol, rtol) for k in rc.inputs)
        if same_inputs:
            culprit, kind, err = name, "output", _max_err(mc.outputs, rc.outputs)
            break

    name = culprit or ""
    cls = ref_calls[culprit].cls if culprit else type(reference).__name__
    report = Divergence(name=name, cls=cls, kind=kind, max_abs_err=err, first_output_diff=first_diff,
                        first_output_err=first_err, prefix=prefix)
    if kind != "not_called":
        # 罪魁内部：哪个子模块最先收到不同的输入（按参考的开始顺序）
        inner = sorted(((c.start, n) for n, c in ref_calls.items()
                        if (n.startswith(name + ".") if name else True)), key=lambda t: t[0])
        for _, child in inner:
            mc, rc = my_calls.get(child), ref_calls[child]
            if mc is None:
                continue
            bad = sorted(set(mc.inputs) ^ set(rc.inputs)) + [
                k for k in rc.inputs if k in mc.inputs and not _close(mc.inputs[k], rc.inputs[k], atol, rtol)]
            if bad:
                report.child_with_bad_input, report.bad_input_args = child, bad
                break
        report.order_mine = _direct_children_order(my_calls, name)
        report.order_ref = _direct_children_order(ref_calls, name)
    return report


def copy_weights(dst: nn.Module, src: nn.Module) -> dict:
    """把 src 的 state_dict 中形状相同的条目拷进 dst，返回 {"missing": dst 有而 src 没有的键,
    "unexpected": src 有而 dst 没有的键, "shape": [(键, dst 的形状, src 的形状)]}。

    共享的权重（tie_word_embeddings）在 state_dict 里出现两次、值相同，拷进去不会破坏共享。
    """
    mine, theirs = dst.state_dict(), src.state_dict()
    shape = [(k, tuple(mine[k].shape), tuple(v.shape)) for k, v in theirs.items()
             if k in mine and mine[k].shape != v.shape]
    bad = {k for k, *_ in shape}
    dst.load_state_dict({k: v for k, v in theirs.items() if k in mine and k not in bad}, strict=False)
    return {"missing": sorted(set(mine) - set(theirs)), "unexpected": sorted(set(theirs) - set(mine)),
            "shape": shape}


def fail_with_report(exc_message: str, report: Optional[Divergence]) -> None:
    """把逐层比对的几行插到一条失败信息的“→ 见 …”之前，然后让测试失败（不显示 traceback）。"""
    import pytest

    if report is None:
        pytest.fail(exc_message, pytrace=False)
    lines = exc_message.splitlines()
    tail = [ln for ln in lines if ln.strip().startswith("→ 见")]
    head = [ln for ln in lines if not ln.strip().startswith("→ 见")]
    body = ["  " + ln if not ln.startswith("  ") else ln for ln in report.message().splitlines()]
    pytest.fail("\n".join(head + body + tail), pytrace=False)


def assert_close_with_report(actual, expected, *, mine: Optional[nn.Module], reference: Optional[nn.Module],
                             probe: Optional[Callable[[nn.Module], Any]], **assert_close_kw) -> None:
    """kata.testing.assert_close 失败时，再用 compare_modules(mine, reference, probe) 做逐层比对，
    把“第一个算错的子模块”写进失败信息。mine / reference 已经是同一份权重；
    其余关键字参数（atol、rtol、what、section、module、run…）原样交给 assert_close。"""
    import pytest

    from kata.testing import assert_close

    try:
        assert_close(actual, expected, **assert_close_kw)
        return
    except pytest.fail.Exception as exc:
        message = str(getattr(exc, "msg", exc))
    report = None   # 在 except 之外再比对、再失败：失败信息里不会出现“During handling of the above exception”
    if mine is not None and reference is not None and probe is not None:
        try:
            report = compare_modules(mine, reference, probe, atol=assert_close_kw.get("atol", 1e-5),
                                     rtol=assert_close_kw.get("rtol", 1e-4))
        except NotImplementedError:
            raise
        except Exception:  # 比对本身出错时不要掩盖原来的失败信息
            report = None
    fail_with_report(message, report)
