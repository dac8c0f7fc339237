"""Bug bank：每个模块的“常见错误实现”。

两个用途：
1. CI（tests/test_bugbank.py）证明每一个错误实现都会让该模块的测试失败——测试确实能抓错；
2. 学习者的测试失败时，kata.testing 会拿他的输出和这里每个错误实现的输出比对，
   告诉他“你的输出与『eps 放在了 sqrt 外面』这个常见错误一致”。

每个 Bug 是对参考实现的一处“覆盖”：``overrides`` 把若干公开名字替换成错误版本，
其余名字仍来自 solutions/。用 ``KATA_IMPL=bug:<名字>`` 或 ``--impl bug:<名字>`` 可以让测试跑在它上面。
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field

from kata.impl import ImplLoadError


@dataclass(frozen=True)
class Bug:
    name: str            # 机器可读的短名，例如 "eps_outside_sqrt"
    description: str     # 一句中文，出现在失败信息里：你的输出与『…』一致
    overrides: dict = field(default_factory=dict)


def bugs_for(module_key: str) -> list[Bug]:
    """模块 "01_normalization" 的 bug 定义在 kata/bugbank/normalization.py 的 BUGS 列表里（去掉编号前缀）。"""
    src = "kata.bugbank." + module_key.split("_", 1)[1]
    if importlib.util.find_spec(src) is None:
        return []
    return list(importlib.import_module(src).BUGS)


class UnknownBug(ImplLoadError, ValueError):
    """bug:<名字> 里的名字不在 bug bank 里。既是 ImplLoadError（实验与 pytest 把它显示成一句话，没有 traceback），
    也是 ValueError（兼容以前的调用者）。"""


def get_bug(module_key: str, name: str) -> Bug:
    for bug in bugs_for(module_key):
        if bug.name == name:
            return bug
    names = "、".join(b.name for b in bugs_for(module_key)) or "（这个模块还没有 bug bank）"
    raise UnknownBug(f"模块 {module_key} 的 bug bank 里没有 {name!r}。可用的有：{names}")
