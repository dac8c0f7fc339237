"""课程自检：课程表里列出的每个实验都能在 --smoke 模式下用参考实现跑完，并写出结果 JSON。

（完整模式与 --quick 的耗时记录在实验报告里，不在测试里断言。）
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kata.curriculum import MODULES
from kata.impl import REPO_ROOT

EXPERIMENTS = [(m.key, exp) for m in MODULES for exp in m.experiments]
REQUIRED_KEYS = {"config", "impl", "metrics"}


@pytest.mark.parametrize("module_key,script", EXPERIMENTS, ids=[f"{m}/{e}" for m, e in EXPERIMENTS])
def test_experiment_smoke_writes_json(module_key, script, tmp_path):
    path = REPO_ROOT / "experiments" / module_key / script
    assert path.is_file(), f"课程表列出了 {path}，但文件不存在"
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, str(path), "--smoke", "--impl", "solutions", "--out-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    results = list(tmp_path.glob("*.json"))
    assert results, f"{script} 没有在 {tmp_path} 写出 JSON"
    data = json.loads(results[0].read_text(encoding="utf-8"))
    missing = REQUIRED_KEYS - set(data)
    assert not missing, f"{script} 的结果 JSON 缺少 {missing}"
    assert not list(tmp_path.glob("*.tmp*")) and not list(tmp_path.glob(".*part*")), "留下了临时文件"
