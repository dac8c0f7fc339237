"""pytest 配置：实现切换、hypothesis 配置档、超时与“还没实现”的一行提示。

- ``pytest exercises/01_normalization``            测你的代码（exercises/）
- ``pytest exercises/01_normalization --solutions`` 同一批测试跑参考实现（等价于 KATA_IMPL=solutions）
- ``pytest exercises/01_normalization --impl PATH``  跑任意实现文件/目录，或 ``bug:<名字>``（bug bank）
- ``--hypothesis-profile=ci``                        CI 用的大样本配置；默认是快速、去随机化的 learner 档
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

import torch

from kata import impl as kata_impl

# 测试里的张量都很小：多线程只有调度开销，机器忙时两个线程还会互相等待（慢几倍）
torch.set_num_threads(1)

settings.register_profile(
    "learner",
    max_examples=6,
    derandomize=True,
    deadline=None,
    print_blob=False,
    # 不要 explain 阶段：它会导入很重的依赖，且对“还没实现”毫无帮助
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.register_profile(
    "ci",
    max_examples=60,
    derandomize=True,
    deadline=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
# 命令行的 --hypothesis-profile 会在之后覆盖这里
settings.load_profile(os.environ.get("KATA_HYPOTHESIS_PROFILE", "learner"))


def pytest_addoption(parser):
    group = parser.getgroup("minimind-kata")
    group.addoption("--solutions", action="store_true", help="测试参考实现 solutions/ 而不是你的 exercises/")
    group.addoption(
        "--impl",
        default=None,
        help="测试哪个实现：exercises | solutions | bug:<名字> | 某个 .py 文件或目录的路径",
    )
    group.addoption(
        "--bug-bank",
        action="store_true",
        help="（自检用）把每个测试在该模块 bug bank 的每个错误实现上各跑一遍，证明测试能抓住它们",
    )


def pytest_configure(config):
    chosen = config.getoption("--impl")
    if config.getoption("--solutions"):
        if chosen not in (None, "solutions"):
            raise pytest.UsageError("--solutions 与 --impl 只能二选一")
        chosen = "solutions"
    kata_impl.set_default_impl(chosen)


def pytest_report_header(config):
    return f"minimind-kata: 被测实现 = {kata_impl.describe(kata_impl.default_impl())}"


def pytest_generate_tests(metafunc):
    if metafunc.config.getoption("--bug-bank") and "impl" in metafunc.fixturenames:
        from kata.bugbank import bugs_for

        names = [f"bug:{b.name}" for b in bugs_for(metafunc.definition.path.parent.name)]
        metafunc.parametrize("impl", names, indirect=True, scope="module")


@pytest.fixture(scope="module")
def impl(request):
    """当前被测实现的命名空间：按测试文件所在的模块目录（如 01_normalization）加载。"""
    module_key = request.path.parent.name
    try:
        return kata_impl.resolve(module_key, getattr(request, "param", None))
    except kata_impl.ImplLoadError as exc:
        pytest.fail(str(exc), pytrace=False)


_NOT_IMPLEMENTED = "not_implemented"


class StubNotImplemented(BaseException):
    """hypothesis 测试里冒出来的 NotImplementedError，换成 hypothesis 不会接住的 BaseException。

    否则 hypothesis 会把“还是桩”当成一个普通的失败，继续抽样、缩小反例、重放——在桩上白白多花好几秒，
    而答案从第一个例子起就不会变。真正的错误（AssertionError 等）不受影响，照常缩小反例。
    """


def _stop_hypothesis_on_stubs(item) -> None:
    handle = getattr(getattr(item, "obj", None), "hypothesis", None)
    inner = getattr(handle, "inner_test", None)
    if inner is None or getattr(inner, "_kata_stub_guard", False):
        return

    @functools.wraps(inner)
    def guarded(*args, **kwargs):
        try:
            return inner(*args, **kwargs)
        except NotImplementedError as exc:
            raise StubNotImplemented(str(exc)) from None

    guarded._kata_stub_guard = True
    handle.inner_test = guarded  # hypothesis 文档里允许替换 inner_test（pytest-trio 就这样做）


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    _stop_hypothesis_on_stubs(item)


def _stub_message(item, exc: BaseException) -> str:
    msg = str(exc) or "还没实现（NotImplementedError）"
    owner = re.search(r"(?:exercises|solutions)/(\d\d_[a-z_]+)/", msg)
    here = Path(str(item.path)).parent.name
    if owner and re.fullmatch(r"\d\d_[a-z_]+", here) and owner.group(1) != here:
        # 桩属于前置模块：本模块的代码用到了它（例如 03 的 Attention 调用你在 02 写的 RoPE）
        msg += (f"（这是前置模块 {owner.group(1)} 的内容，teaching.md 指的是 exercises/{owner.group(1)}/teaching.md；"
                f"先让 pytest exercises/{owner.group(1)} 通过）")
    return msg


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    """还没实现的桩：直接生成只有那一行的报告。

    默认的报告会先把整段 traceback 格式化出来（每个测试约 0.1 秒），随后又被这一行替换掉——
    桩上几十个测试，这就是几秒钟的白等。
    """
    if call.when != "call" or call.excinfo is None:
        return None
    exc = call.excinfo.value
    if not isinstance(exc, (NotImplementedError, StubNotImplemented)):
        return None
    msg = _stub_message(item, exc)
    sections = [(f"Captured {key} {when}", content) for when, key, content in item._report_sections]
    return pytest.TestReport(
        item.nodeid, item.location, {x: 1 for x in item.keywords}, "failed", msg, "call", sections,
        call.duration, call.start, call.stop, user_properties=[*item.user_properties, (_NOT_IMPLEMENTED, msg)],
    )


@pytest.hookimpl(wrapper=True, specname="pytest_runtest_makereport")
def pytest_runtest_makereport_for_timeouts(item, call):
    report = yield
    exc = call.excinfo.value if call.excinfo is not None else None
    if report.when == "call" and report.failed and "Timeout" in str(exc) and type(exc).__name__ == "Failed":
        report.longrepr = (
            f"超时：这个测试运行超过了 {item.config.getini('timeout') or '?'} 秒就被停下了。"
            "你的实现里可能有死循环，或者在逐元素地用 Python 循环处理张量——改用张量运算。"
        )
    return report


def pytest_terminal_summary(terminalreporter):
    pending = {}
    for rep in terminalreporter.stats.get("failed", []):
        for key, msg in rep.user_properties:
            if key == _NOT_IMPLEMENTED:
                pending[msg] = pending.get(msg, 0) + 1
    if pending:
        terminalreporter.section("还没实现的部分")
        for msg, n in pending.items():
            terminalreporter.write_line(f"{n} 个测试在等：{msg}")
        terminalreporter.write_line("实现之后再运行同一条命令；卡住了可以 `python -m kata hint <模块编号>`。")
