"""kata.runner：分清“没能运行”与“测试失败”（issue 11 §1），结果缓存（issue 10 §4）。"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from kata import runner
from kata.curriculum import get_module
from kata.impl import REPO_ROOT

# 用 sitecustomize 在子进程里“卸掉”某些包：import 它们（或 find_spec）就抛 ModuleNotFoundError
_BLOCKER = textwrap.dedent('''
    import os, sys
    _blocked = set(os.environ.get("KATA_TEST_BLOCK", "").split(","))
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in _blocked:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
    sys.meta_path.insert(0, _Block())
''')


@pytest.fixture
def without(tmp_path, monkeypatch):
    """without("pytest") → 一个环境变量字典：在这个环境里运行的 Python 找不到 pytest。"""
    (tmp_path / "sitecustomize.py").write_text(_BLOCKER, encoding="utf-8")

    def make(*names):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["KATA_TEST_BLOCK"] = ",".join(names)
        env["KATA_RESULT_CACHE"] = str(tmp_path / "cache")
        env.pop("KATA_IMPL", None)
        return env
    return make


def _kata(env, *args):
    return subprocess.run([sys.executable, "-m", "kata", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("missing", ["pytest", "hypothesis"])
def test_check_without_a_tool_says_why_and_the_fix_not_that_the_code_is_broken(without, missing):
    p = _kata(without(missing), "check", "01")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "测试没能运行" in p.stdout and "这不是你的代码的问题" in p.stdout, p.stdout
    assert f"没有装 {missing}" in p.stdout
    assert "修复（一条命令）：python -m pip install -e ." in p.stdout or "-m pip install -e" in p.stdout
    for wrong in ("还没开始", "0/0", "No module named", "Traceback", "未开始"):
        assert wrong not in p.stdout + p.stderr, p.stdout + p.stderr


def test_status_without_pytest_names_the_problem_once(without):
    p = _kata(without("pytest"), "status")
    out = p.stdout
    assert p.returncode == 2, out + p.stderr
    assert "无法运行" in out and out.count("没有装 pytest") == 1, out
    assert "先修好导入错误" not in out and "未开始" not in out
    assert "下一步：python -m pip install -e ." in out or "下一步：" in out and "-m pip install -e" in out


def test_collection_failure_of_the_test_files_is_a_problem_not_a_failure(tmp_path, monkeypatch):
    # kata 自己的解释器里什么都不缺，但跑测试的子进程 import 不了 hypothesis（例如装坏了）。
    # （pytest 会自己去找插件包的 spec，绕过 meta_path 上的拦截器，所以这里用一个同名的坏模块挡在前面。）
    (tmp_path / "hypothesis.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'hypothesis'\", name='hypothesis')\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(runner, "missing_tools", lambda: [])
    s = runner.run_tests("01_normalization", "solutions")
    assert s.problem and not s.outcomes, s.output[-2000:]
    assert "hypothesis" in s.problem and "-m pip install -e" in s.fix


def test_summary_roundtrips_through_json():
    o = runner.TestOutcome("t[1]", "failed", "m", "d", {"contract": "a", "title": "T", "rank": 0, "deps": []}, True)
    s = runner.TestSummary("01_normalization", "exercises", [o], seconds=1.5)
    back = runner.TestSummary.from_json(s.to_json())
    assert back.outcomes == [o] and back.module == s.module and back.seconds == 1.5


# ---------------------------------------------------------------- 缓存键

@pytest.fixture
def mini_repo(tmp_path, monkeypatch):
    """一个最小的仓库布局：01（RMSNorm）、03（import 了 01）、04（独立），供缓存键测试改文件。"""
    root = tmp_path / "repo"
    files = {
        "exercises/__init__.py": "", "solutions/__init__.py": "",
        "exercises/01_normalization/rmsnorm.py": "class RMSNorm: pass\n",
        "exercises/01_normalization/test_rmsnorm.py": "def test_x(): pass\n",
        "exercises/03_attention/attention.py": "from exercises import RMSNorm, apply_rotary_pos_emb\n",
        "exercises/03_attention/test_attention.py": "def test_y(): pass\n",
        "exercises/02_position_encoding/rope.py": "def apply_rotary_pos_emb(): pass\n",
        "exercises/04_feedforward/feedforward.py": "import torch\n",
        "solutions/01_normalization/rmsnorm.py": "x = 1\n",
        "kata/testing.py": "# kata\n", "conftest.py": "", "pyproject.toml": "",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    monkeypatch.setattr(runner, "REPO_ROOT", root)
    monkeypatch.setenv("KATA_RESULT_CACHE", str(tmp_path / "cache"))
    return root


def test_fingerprint_follows_the_files_a_module_really_uses(mini_repo):
    m01, m03, m04 = (get_module(k) for k in ("01", "03", "04"))
    assert [m.key for m in runner.depends_on(m03)] == ["01_normalization", "02_position_encoding", "03_attention"]
    before = {m.key: runner.fingerprint(m) for m in (m01, m03, m04)}

    def changed():
        now = {m.key: runner.fingerprint(m) for m in (m01, m03, m04)}
        return {k for k in now if now[k] != before[k]}

    (mini_repo / "exercises/01_normalization/rmsnorm.py").write_text("class RMSNorm: x = 2\n", encoding="utf-8")
    assert changed() == {"01_normalization", "03_attention"}       # 03 import 了 01
    before = {m.key: runner.fingerprint(m) for m in (m01, m03, m04)}
    (mini_repo / "exercises/03_attention/test_attention.py").write_text("def test_z(): pass\n", encoding="utf-8")
    assert changed() == {"03_attention"}                             # 测试文件变了
    before = {m.key: runner.fingerprint(m) for m in (m01, m03, m04)}
    (mini_repo / "kata/testing.py").write_text("# kata v2\n", encoding="utf-8")
    assert changed() == {"01_normalization", "03_attention", "04_feedforward"}   # kata 自己变了
    assert runner.fingerprint(m01, "exercises") != runner.fingerprint(m01, "solutions")


def test_run_tests_cached_reuses_and_invalidates(mini_repo, monkeypatch):
    calls = []

    def fake(m, impl, **kw):
        calls.append(m.key)
        return runner.TestSummary(m.key, impl, [runner.TestOutcome("t", "passed")])

    monkeypatch.setattr(runner, "run_tests", fake)
    first = runner.run_tests_cached("01", "exercises")
    second = runner.run_tests_cached("01", "exercises")
    assert calls == ["01_normalization"] and not first.cached and second.cached and second.passed == 1
    (mini_repo / "exercises/01_normalization/rmsnorm.py").write_text("class RMSNorm: y = 3\n", encoding="utf-8")
    assert not runner.run_tests_cached("01", "exercises").cached and len(calls) == 2
    # 没能运行的结果不进缓存
    monkeypatch.setattr(runner, "run_tests", lambda m, impl, **kw: runner.TestSummary(m.key, impl, problem="x"))
    (mini_repo / "exercises/01_normalization/rmsnorm.py").write_text("class RMSNorm: y = 4\n", encoding="utf-8")
    runner.run_tests_cached("01", "exercises")
    assert runner.load_cached("01", "exercises", runner.fingerprint(get_module("01"))) is None
    cache = runner.cache_dir()
    assert (cache / ".gitignore").read_text(encoding="utf-8").strip().endswith("*")   # 不会进 git
    assert not [p for p in cache.rglob("*.tmp")]                                       # 没有留下临时文件


def test_default_cache_dir_is_git_ignored(monkeypatch):
    monkeypatch.delenv("KATA_RESULT_CACHE", raising=False)
    d = runner.cache_dir()
    assert d.parent == REPO_ROOT
    probe = d / "tests" / "x.json"
    # 仓库的 .gitignore 里有 .kata-cache/；缓存目录第一次建好时还会自带一个 .gitignore（两道保险，这里查前一道）
    p = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(probe)], cwd=REPO_ROOT)
    assert p.returncode == 0, "缓存目录里的文件应被 git 忽略"
