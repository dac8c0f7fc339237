"""tests/ 下的自检用的共享工具。"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kata.curriculum import MODULES
from kata.impl import REPO_ROOT
from kata.runner import has_exercises

LIVE_MODULES = [m for m in MODULES if has_exercises(m)]


def pristine_stub_dir(module, dest: Path) -> Path:
    """把模块的练习文件按 git HEAD 里的原样（未被学习者改动的桩）写到 dest，返回 dest。

    学习者改过 exercises/ 之后，自检仍然要检查“原始的桩”。不在 git 仓库里时退回到工作区文件。
    """
    dest.mkdir(parents=True, exist_ok=True)
    for fname in module.files:
        rel = f"exercises/{module.key}/{fname}"
        try:
            text = subprocess.run(["git", "show", f"HEAD:{rel}"], cwd=REPO_ROOT, capture_output=True,
                                  text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            text = (REPO_ROOT / rel).read_text(encoding="utf-8")
        (dest / fname).write_text(text, encoding="utf-8")
    return dest


@pytest.fixture(params=LIVE_MODULES, ids=lambda m: m.key)
def live_module(request):
    return request.param
