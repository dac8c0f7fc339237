"""pytest 配置：实现切换、hypothesis 配置档、超时与“还没实现”的一行提示。

- ``pytest exercises/01_normalization``            测你的代码（exercises/）
- ``pytest exercises/01_normalization --solutions`` 同一批测试跑参考实现（等价于 KATA_IMPL=solutions）
- ``pytest exercises/01_normalization --impl PATH``  跑任意实现文件/目录，或 ``bug:<名字>``（bug bank）
- ``--hypothesis-profile=ci``                        CI 用的大样本配置；默认是快速、去随机化的 learner 档
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

import torch

from kata import impl as kata_impl
from kata.runner import CONTRACT_PROPERTY, NOT_IMPLEMENTED_PROPERTY, by_function, cascade, worth_showing

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
    # 值不对（KATA_IMPL=bogus、不存在的路径）：在这里停一次，说一句话——而不是每个测试各报一遍同样的错
    source = "--impl" if chosen is not None else kata_impl.ENV_VAR
    value = chosen if chosen is not None else os.environ.get(kata_impl.ENV_VAR)
    if value:
        try:
            normalized = kata_impl.check_impl(value, source=source)
        except kata_impl.ImplLoadError as exc:
            raise pytest.UsageError(str(exc)) from None
        if chosen is not None:
            chosen = normalized
    kata_impl.set_default_impl(chosen)


def pytest_report_header(config):
    return f"minimind-kata: 被测实现 = {kata_impl.describe(kata_impl.default_impl())}"


def _module_key(path) -> str | None:
    key = Path(str(path)).parent.name
    return key if re.fullmatch(r"\d\d_[a-z0-9_]+", key) else None


def _contracts_for(items_in_dir) -> tuple:
    """一个模块目录的契约表：各测试文件的 KATA_CONTRACTS 按文件顺序合并；都没有就用 kata.testing.CONTRACTS。"""
    from kata.testing import CONTRACTS, check_contracts

    merged, seen_files = [], set()
    for item in items_in_dir:
        mod = getattr(item, "module", None)
        if mod is None or mod.__name__ in seen_files:
            continue
        seen_files.add(mod.__name__)
        merged.extend(getattr(mod, "KATA_CONTRACTS", ()))
    key = _module_key(items_in_dir[0].path)
    where = f"exercises/{key}/test_*.py 的 KATA_CONTRACTS"
    if not merged:
        merged, where = list(CONTRACTS.get(key, ())), f"kata.testing.CONTRACTS[{key!r}]"
    try:
        return check_contracts(merged, where)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_collection_modifyitems(session, config, items):
    """① bug:<名字> 不在被测模块的 bug bank 里：停一次，列出可用的名字；
    ② 给每个练习测试记下它的契约（写进报告与 junit，供“先修这一条”分组），并按契约顺序排列同一文件里的测试。"""
    from kata.testing import contract_info

    by_dir: dict[str, list] = {}
    for item in items:
        key = _module_key(item.path)
        if key is not None:
            by_dir.setdefault(key, []).append(item)
    impl = kata_impl.default_impl()
    if impl.startswith("bug:") and by_dir and not config.getoption("--bug-bank"):
        try:
            kata_impl.check_impl(impl, list(by_dir), source="--impl" if config.getoption("--impl") else kata_impl.ENV_VAR)
        except (kata_impl.ImplLoadError, ValueError) as exc:
            raise pytest.UsageError(str(exc)) from None
    rank: dict[int, int] = {}
    for key, group in by_dir.items():
        contracts = _contracts_for(group)
        if not contracts:
            continue
        for item in group:
            info = contract_info(item.name, contracts)
            item.user_properties.append((CONTRACT_PROPERTY, json.dumps(info, ensure_ascii=False)))
            rank[id(item)] = info["rank"]
    if rank and not config.getoption("--bug-bank"):
        # 同一个文件里按契约顺序跑：最基础的失败出现在最前面（-x 时也最先停在它上面）
        files = {}
        for i, item in enumerate(items):
            files.setdefault(str(item.path), i)
        items.sort(key=lambda it: (files[str(it.path)], rank.get(id(it), 10**6)))


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


_NOT_IMPLEMENTED = NOT_IMPLEMENTED_PROPERTY


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
    # 记在 item 上：junit 报告取的是 teardown 时 item 的 user_properties（kata.runner 靠它认出“还没实现”）
    item.user_properties.append((_NOT_IMPLEMENTED, msg))
    return pytest.TestReport(
        item.nodeid, item.location, {x: 1 for x in item.keywords}, "failed", msg, "call", sections,
        call.duration, call.start, call.stop, user_properties=list(item.user_properties),
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


def _layer(rep):
    for key, value in rep.user_properties:
        if key == CONTRACT_PROPERTY:
            return json.loads(value)
    return None


def _is_stub(rep) -> bool:
    return any(key == _NOT_IMPLEMENTED for key, _ in rep.user_properties)


def _pretty(name: str) -> str:
    """pytest 把测试 id 里的中文转义成 \\uXXXX；显示时还原。"""
    if "\\u" not in name:
        return name
    try:
        return name.encode("ascii").decode("unicode_escape")
    except (UnicodeError, ValueError):
        return name


def _first_message_line(rep) -> str:
    text = getattr(rep, "longreprtext", "") or ""
    for line in text.splitlines():
        line = line.strip().removeprefix("E ").strip()
        if line and not line.startswith(("def ", "@", ">")):
            return line
    return ""


def _write_cascade(terminalreporter) -> None:
    """失败按契约分层：先讲最基础的那个失败契约，依赖它的失败归在它下面（kata.testing 的模块文档）。"""
    failed = [r for r in terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
              if getattr(r, "when", "call") in ("call", "setup") and not _is_stub(r)]
    groups = cascade(failed, _layer)
    if not worth_showing(groups):
        return
    tr = terminalreporter
    tr.section("先修这一条")
    for i, g in enumerate(groups):
        head = "先修这一条" if i == 0 else "另一个独立的失败（也要修）"
        tr.write_line(f"{head}：{g.title}（{len(g.primary)} 个测试失败）", bold=True, red=True)
        for rep, others in by_function(g.primary, lambda r: r.nodeid.split("::")[-1]):
            more = f"（另外 {len(others)} 组参数也失败了）" if others else ""
            tr.write_line(f"  ✗ {_pretty(rep.nodeid.split('::')[-1])}{more}：{_first_message_line(rep)}")
        hints = []
        for rep in g.primary:
            for line in (getattr(rep, "longreprtext", "") or "").splitlines():
                line = line.strip()
                if line.startswith(("你的输出与", "误差约", "→ 见")) and line not in hints:
                    hints.append(line)
        for line in hints:
            tr.write_line(f"  {line}")
        if g.dependents:
            tr.write_line(f"  下面 {len(g.dependents)} 个失败都依赖它，很可能是它连带的——先修好上面这一条，再重跑看还剩哪些：")
            for rep, others in by_function(g.dependents, lambda r: r.nodeid.split("::")[-1]):
                name = rep.nodeid.split("::")[-1]
                name = f"{name.split('[')[0]}（{len(others) + 1} 组参数）" if others else name
                tr.write_line(f"    · {_pretty(name)}")


def pytest_terminal_summary(terminalreporter):
    _write_cascade(terminalreporter)
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
