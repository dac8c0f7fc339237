"""课程自检：课程表里列出的每个实验都能在 --smoke 模式下用参考实现跑完，并写出结果 JSON。

（完整模式与 --quick 的耗时记录在实验报告里，不在测试里断言。）

本机没有 TinyShakespeare（没设 KATA_DATA_DIR、缓存里也没有）时：能诚实地改用合成语料的实验照跑
（子进程设 KATA_OFFLINE=1，不去联网），结果里必须记下 fell_back_to_synthetic；不能改用的实验跳过，
原因只有一行。CI 设置了 KATA_DATA_DIR，所以每个实验都在真实数据上跑。
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kata import data as kata_data
from kata.curriculum import MODULES
from kata.experiment import SMOKE_NOTICE, load_experiment_class
from kata.impl import REPO_ROOT

EXPERIMENTS = [(m.key, exp) for m in MODULES for exp in m.experiments]
REQUIRED_KEYS = {"config", "impl", "metrics", "dataset", "conclusion"}


@pytest.mark.parametrize("module_key,script", EXPERIMENTS, ids=[f"{m}/{e}" for m, e in EXPERIMENTS])
def test_experiment_smoke_writes_json(module_key, script, tmp_path):
    path = REPO_ROOT / "experiments" / module_key / script
    assert path.is_file(), f"课程表列出了 {path}，但文件不存在"
    cls = load_experiment_class(path)
    env = dict(os.environ, MPLBACKEND="Agg")
    uses_data = "load_corpus(" in path.read_text(encoding="utf-8")
    has_data = kata_data.shakespeare_available()
    if uses_data and not has_data:
        if not cls.can_use_synthetic:
            pytest.skip(f"本机没有 TinyShakespeare（设置 KATA_DATA_DIR 或联网运行 python -m kata.data --download-all），"
                        f"而 {script} 不改用合成语料")
        env[kata_data.OFFLINE_ENV] = "1"  # 测试不联网：直接走合成语料后备
    proc = subprocess.run(
        [sys.executable, str(path), "--smoke", "--impl", "solutions", "--out-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    result = tmp_path / cls.name / "smoke-solutions.json"
    assert result.is_file(), f"{script} 没有写出 {result}"
    data = json.loads(result.read_text(encoding="utf-8"))
    missing = REQUIRED_KEYS - set(data)
    assert not missing, f"{script} 的结果 JSON 缺少 {missing}"
    assert data["conclusion"].startswith(SMOKE_NOTICE), f"{script} 冒烟模式的结论应以“数字没有意义”开头"
    for fig in data["figures"]:
        assert (result.parent / fig).is_file(), f"JSON 里列出的图 {fig} 不存在"
    if uses_data:
        assert data["dataset"]["fell_back_to_synthetic"] is (not has_data)
    leftovers = [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name or ".part" in p.name]
    assert not leftovers, f"留下了临时文件：{leftovers}"
