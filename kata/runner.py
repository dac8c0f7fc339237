"""在子进程里跑一个模块的测试并读回结果（CLI 的 status/check 与 tests/ 的自检共用）。

用 pytest 自带的 --junitxml 拿到逐个测试的结果，不引入额外依赖。
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from kata.curriculum import Module, get_module
from kata.impl import REPO_ROOT


@dataclass
class TestOutcome:
    name: str
    status: str          # "passed" | "failed" | "error" | "skipped"
    message: str = ""    # 失败时的第一行说明
    detail: str = ""     # 完整失败信息


@dataclass
class TestSummary:
    module: str
    impl: str
    outcomes: list[TestOutcome] = field(default_factory=list)
    returncode: int = 0
    output: str = ""

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def passed(self) -> int:
        return self.count("passed")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def errors(self) -> int:
        return self.count("error")

    @property
    def total(self) -> int:
        return len(self.outcomes)


def run_bug_bank(module: Module | str, *, timeout: float = 900) -> dict[str, TestSummary]:
    """在一个子进程里把模块的全部测试在 bug bank 的每个错误实现上各跑一遍，按 bug 分组返回。"""
    m = get_module(module) if isinstance(module, str) else module
    whole = run_tests(m, "solutions", extra_args=("--bug-bank",), timeout=timeout)
    per_bug: dict[str, TestSummary] = {}
    for o in whole.outcomes:
        found = re.search(r"bug:([A-Za-z0-9_]+)", o.name)
        key = found.group(1) if found else "<unknown>"
        per_bug.setdefault(key, TestSummary(m.key, f"bug:{key}", output=whole.output)).outcomes.append(o)
    return per_bug


def exercise_dir(module: Module) -> Path:
    return REPO_ROOT / "exercises" / module.key


def has_exercises(module: Module) -> bool:
    d = exercise_dir(module)
    return d.is_dir() and any(d.glob("test_*.py"))


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        line = line.strip().removeprefix("Failed:").removeprefix("E ").strip()
        if line:
            return line
    return ""


def run_tests(
    module: Module | str,
    impl: str = "exercises",
    *,
    exitfirst: bool = False,
    extra_args: tuple[str, ...] = (),
    timeout: float = 900,
) -> TestSummary:
    """跑 exercises/<模块>/ 下的测试，impl 可以是 exercises / solutions / bug:<名字> / 路径。"""
    m = get_module(module) if isinstance(module, str) else module
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = Path(tmp) / "report.xml"
        cmd = [
            sys.executable, "-m", "pytest", str(exercise_dir(m)), f"--impl={impl}", "-q",
            "-p", "no:cacheprovider", f"--junitxml={xml_path}", "-o", "junit_family=xunit1",
        ]
        if exitfirst:
            cmd.append("-x")
        cmd.extend(extra_args)
        env = dict(os.environ)
        env.pop("KATA_IMPL", None)
        # 小张量上多线程只有开销；两个子进程并行时还会互相抢核（见 conftest.py 的 set_num_threads）
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        summary = TestSummary(m.key, impl, returncode=proc.returncode, output=proc.stdout + proc.stderr)
        if not xml_path.exists():
            summary.outcomes.append(TestOutcome("<collection>", "error", _first_line(proc.stdout + proc.stderr)))
            return summary
        for case in ET.parse(xml_path).getroot().iter("testcase"):
            name = case.get("name", "?")
            status, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    status = {"failure": "failed"}.get(tag, tag)
                    detail = (node.text or node.get("message") or "").strip()
                    message = _first_line(node.get("message") or node.text or "")
                    break
            else:
                detail = ""
            summary.outcomes.append(TestOutcome(name, status, message, detail))
    return summary
