"""README 的安装说明与 .ci/run 一致、在空环境里够用（issue 11 §1、§8）。

真正的“新 venv 里 pip install -e . 之后 status / check / pytest 都能用”由 CI 本身证明（.ci/run 新建 venv）；
这里检查文字与脚本没有各说各的。
"""
from __future__ import annotations

import re

import pytest

from kata.impl import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
CI = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
tomllib = pytest.importorskip("tomllib")
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
TEST_COMMAND = 'pip install -e ".[dev]" && python -m pytest --solutions --hypothesis-profile=ci'


def _code_lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_readme_test_command_and_ci_are_identical():
    assert TEST_COMMAND in _code_lines(README), "README 的第 2 条命令变了：同时改 .ci/run 和这里"
    assert _code_lines(CI)[-1] == TEST_COMMAND, ".ci/run 的最后一行必须与 README 的测试命令逐字相同"


def test_ci_builds_its_own_venv_and_installs_cpu_torch_first():
    lines = _code_lines(CI)
    venv = next(i for i, ln in enumerate(lines) if "-m venv" in ln)
    activate = next(i for i, ln in enumerate(lines) if ln.startswith("source") and "bin/activate" in ln)
    torch_i = next(i for i, ln in enumerate(lines) if re.search(r'pip install .*"torch==2\.13\.0"', ln))
    assert venv < activate < torch_i < len(lines) - 1
    assert "set -euo pipefail" in CI


def _torch_floor(spec: str) -> tuple[int, ...]:
    found = re.search(r"torch>=([\d.]+)", spec)
    assert found, spec
    return tuple(int(x) for x in found.group(1).split("."))


def test_torch_range_is_the_same_everywhere_and_contains_the_tested_version():
    deps = PYPROJECT["project"]["dependencies"]
    torch_dep = next(d for d in deps if d.startswith("torch"))
    readme_line = next(ln for ln in _code_lines(README) if "download.pytorch.org/whl/cpu" in ln and "pip install" in ln
                       and "download -d" not in ln)
    assert _torch_floor(torch_dep) == _torch_floor(readme_line)
    assert (2, 13, 0) >= _torch_floor(torch_dep)          # CI 测的版本在范围里
    assert "2.13.0" in README                              # 写明在哪个版本上验证过


def test_learner_install_includes_the_test_runner():
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower() for d in PYPROJECT["project"]["dependencies"]}
    assert {"pytest", "pytest-timeout", "hypothesis"} <= names
    assert names <= {"torch", "numpy", "matplotlib", "tqdm", "pytest", "pytest-timeout", "hypothesis"}


def test_readme_says_what_to_do_without_the_pytorch_index():
    section = README.split("连不上 PyTorch 的下载站", 1)[1].split("\n## ", 1)[0]
    assert ".whl" in section and "--no-index --find-links" in section and "镜像" in section
    assert "pip download" in section
