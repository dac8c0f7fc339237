"""进度命令行 python -m kata：status / check / hint / quickstart。"""
from __future__ import annotations

import subprocess
import sys

import pytest

from kata import __main__ as cli
from kata.impl import REPO_ROOT


def _run(*args):
    return subprocess.run([sys.executable, "-m", "kata", *args], cwd=REPO_ROOT, capture_output=True, text=True)


def test_check_solutions_reports_all_passed():
    p = _run("check", "01", "--solutions")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "已完成" in p.stdout and "✓ test_gradcheck_float64" in p.stdout


def test_check_on_a_wrong_implementation_shows_the_diagnosis(monkeypatch, capsys, tmp_path):
    # 直接调用 cmd_check，但把被测实现换成 bug bank 里的一个错误实现
    import kata.runner as runner

    monkeypatch.setenv("KATA_RESULT_CACHE", str(tmp_path))
    real = runner.run_tests
    monkeypatch.setattr(cli, "run_tests", lambda m, impl: real(m, "bug:subtracts_mean"))
    rc = cli.main(["check", "01"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "✗ test_does_not_subtract_the_mean" in out
    assert "你的输出与『先减了均值——这是 LayerNorm，不是 RMSNorm』" in out
    assert "进行中" in out


def test_status_lists_every_module_and_a_next_step(monkeypatch, capsys, tmp_path):
    # 真实的测试运行由 test_check_* 覆盖；这里把每个模块的结果换成“桩”的样子，检查 status 的输出逻辑
    from kata.runner import TestOutcome, TestSummary

    monkeypatch.setenv("KATA_RESULT_CACHE", str(tmp_path))
    fake = lambda m, impl, **kw: TestSummary(m.key, impl, [TestOutcome("t", "failed", "还没实现：…")] * 3)
    monkeypatch.setattr(cli, "run_tests_cached", fake)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    for key in ("01_normalization", "02_position_encoding", "07_tokenizer", "10_sft"):
        assert key in out
    assert "0/3" in out and "未开始" in out
    from kata.curriculum import MODULES
    from kata.runner import has_exercises

    assert ("即将上线" in out) == any(not has_exercises(m) for m in MODULES)
    assert "下一步：读 exercises/01_normalization/teaching.md" in out


def test_hint_is_progressive(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "STATE_FILE", tmp_path / "state.json")
    cli.main(["hint", "01"])
    first = capsys.readouterr().out
    cli.main(["hint", "01"])
    second = capsys.readouterr().out
    assert "提示 1/" in first and "提示 2/" not in first
    assert "提示 2/" in second
    cli.main(["hint", "01", "--reset"])
    capsys.readouterr()
    cli.main(["hint", "01"])
    assert "提示 2/" not in capsys.readouterr().out


def test_unknown_module_is_a_clear_error():
    p = _run("hint", "42")
    assert p.returncode == 2 and "没有这个模块" in p.stderr


@pytest.mark.parametrize("label,counts", [("未开始", (0, 5)), ("进行中", (2, 5)), ("已完成", (5, 5))])
def test_status_labels(label, counts):
    from kata.runner import TestOutcome, TestSummary

    passed, total = counts
    s = TestSummary("01", "exercises", [TestOutcome(str(i), "passed" if i < passed else "failed") for i in range(total)])
    assert cli._label(s) == label


# ---------------------------------------------------------------- 说中文、路径、--solutions 的下一步（issue 11 §7）

def test_no_arguments_speaks_chinese():
    p = _run()
    assert p.returncode == 2
    text = p.stdout + p.stderr
    assert "用法：python -m kata" in text and "缺少要运行的命令" in text and "status" in text
    assert "usage:" not in text and "required" not in text and "Traceback" not in text


@pytest.mark.parametrize("args,expected", [
    (["bogus"], "没有这个命令：'bogus'"),
    (["check"], "缺少参数：模块"),
    (["status", "--nope"], "不认识的参数：--nope"),
])
def test_bad_arguments_speak_chinese(args, expected):
    p = _run(*args)
    assert p.returncode == 2, p.stderr
    assert expected in p.stderr and "参数错误" in p.stderr, p.stderr
    for english in ("usage:", "invalid choice", "the following arguments", "unrecognized", "Traceback"):
        assert english not in p.stderr, p.stderr


def test_help_is_chinese():
    p = _run("check", "--help")
    assert p.returncode == 0 and "用法：" in p.stdout and "显示这段帮助并退出" in p.stdout


def _fake_summary(status_of, *, names=("t1", "t2", "t3")):
    from kata.runner import TestOutcome, TestSummary

    def fake(m, impl, **kw):
        return TestSummary(m.key, impl, [TestOutcome(n, status_of(impl), "还没实现：…" if status_of(impl) == "failed"
                                                     else "", not_implemented=status_of(impl) == "failed")
                                         for n in names])
    return fake


def test_check_solutions_does_not_send_a_stub_learner_to_experiments_on_their_own_code(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("KATA_RESULT_CACHE", str(tmp_path))
    monkeypatch.setattr(cli, "run_tests", _fake_summary(lambda impl: "passed" if impl == "solutions" else "failed"))
    assert cli.main(["check", "01", "--solutions"]) == 0
    out = capsys.readouterr().out
    assert "在你自己的代码上跑实验" not in out
    assert "参考实现全部通过" in out and "python -m kata check 01" in out
    assert "--impl solutions" in out  # 想看实验现象，就明说用的是参考实现


def test_check_on_own_code_all_green_suggests_experiments(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("KATA_RESULT_CACHE", str(tmp_path))
    monkeypatch.setattr(cli, "run_tests", _fake_summary(lambda impl: "passed"))
    assert cli.main(["check", "01"]) == 0
    assert "在你自己的代码上跑实验" in capsys.readouterr().out


def test_printed_paths_are_relative_to_the_current_directory(monkeypatch, capsys, tmp_path):
    # 在仓库外面运行：路径要能从当前目录直接打开（绝对路径）；在仓库里运行：相对路径
    monkeypatch.setenv("KATA_RESULT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "run_tests", _fake_summary(lambda impl: "failed"))
    monkeypatch.chdir(tmp_path)
    cli.main(["check", "01"])
    out = capsys.readouterr().out
    assert f"先读 {REPO_ROOT}/exercises/01_normalization/teaching.md" in out, out
    monkeypatch.chdir(REPO_ROOT / "exercises")
    cli.main(["check", "01"])
    out = capsys.readouterr().out
    assert "先读 01_normalization/teaching.md" in out, out


def test_localize_paths_in_messages(monkeypatch, tmp_path):
    from kata.runner import localize_paths

    monkeypatch.chdir(tmp_path)
    text = localize_paths("还没实现：exercises/01_normalization/rmsnorm.py · RMSNorm.forward")
    assert f"{REPO_ROOT}/exercises/01_normalization/rmsnorm.py" in text
    monkeypatch.chdir(REPO_ROOT)
    assert localize_paths("见 exercises/01_normalization/x.py") == "见 exercises/01_normalization/x.py"


# ---------------------------------------------------------------- status 的缓存（issue 10 §4）

def test_status_reuses_unchanged_results_and_says_so(monkeypatch, capsys, tmp_path):
    from kata import runner

    monkeypatch.setenv("KATA_RESULT_CACHE", str(tmp_path))
    calls = []

    def fake_run(m, impl, **kw):
        calls.append(m.key)
        return _fake_summary(lambda i: "failed")(m, impl)

    monkeypatch.setattr(runner, "run_tests", fake_run)
    cli.main(["status"])
    first = capsys.readouterr().out
    n_live = len(calls)
    assert n_live >= 6 and "缓存" not in first.split("下一步")[0].replace("文件没变的模块直接用上次的结果", "")
    cli.main(["status"])
    second = capsys.readouterr().out
    assert len(calls) == n_live, "第二次 status 不应再运行任何测试"
    assert second.count("（缓存：文件没变）") == n_live and "--fresh" in second
    cli.main(["status", "--fresh"])
    assert len(calls) == 2 * n_live and "（缓存：文件没变）" not in capsys.readouterr().out


def test_check_problem_is_not_reported_as_broken_code(monkeypatch, capsys, tmp_path):
    from kata.runner import TestSummary

    monkeypatch.setenv("KATA_RESULT_CACHE", str(tmp_path))
    monkeypatch.setattr(cli, "run_tests", lambda m, impl: TestSummary(
        m.key, impl, problem="没法运行测试：当前的 Python 里没有装 pytest。这不是你的代码的问题",
        fix="python -m pip install -e ."))
    assert cli.main(["check", "01"]) == 2
    out = capsys.readouterr().out
    assert "这不是你的代码的问题" in out and "修复（一条命令）：python -m pip install -e ." in out
    assert "还没开始" not in out and "0/0" not in out


def test_quickstart_with_a_missing_tool_does_not_call_the_learner_unfinished(monkeypatch, capsys):
    from kata.runner import TestSummary, _missing_tool_problem

    def broken(m, impl, **kw):
        s = TestSummary(m.key, impl)
        s.problem, s.fix = _missing_tool_problem(["pytest"])
        return s

    ran = []
    monkeypatch.setattr(cli, "run_tests_cached", broken)
    monkeypatch.setattr(cli, "_run_child", lambda cmd: ran.append(cmd) or 0)
    assert cli.main(["quickstart", "--smoke"]) == 0
    out = capsys.readouterr().out
    assert ran and all("solutions" in cmd for cmd in ran)
    assert "没法检查你的 01_normalization" in out and "这不是你的代码的问题" in out and "-m pip install -e" in out
    assert "还没完成" not in out and "0/0" not in out


def test_tier3_jobs_are_dispatched_with_their_own_arguments(monkeypatch):
    """python -m kata train/generate/sft/chat 把其余参数原样交给各自模块的 main。"""
    import importlib
    from kata import __main__ as cli

    seen = {}
    for name, (modname, _text) in cli.JOBS.items():
        mod = importlib.import_module(modname)
        monkeypatch.setattr(mod, "main", lambda argv, _n=name: seen.setdefault(_n, list(argv)) and 7)
    for name in cli.JOBS:
        assert cli.main([name, "--steps", "3", "--x"]) == 7
    assert seen == {n: ["--steps", "3", "--x"] for n in cli.JOBS}
