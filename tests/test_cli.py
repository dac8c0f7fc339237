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


def test_check_on_a_wrong_implementation_shows_the_diagnosis(monkeypatch, capsys):
    # 直接调用 cmd_check，但把被测实现换成 bug bank 里的一个错误实现
    import kata.runner as runner

    real = runner.run_tests
    monkeypatch.setattr(cli, "run_tests", lambda m, impl: real(m, "bug:subtracts_mean"))
    rc = cli.main(["check", "01"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "✗ test_does_not_subtract_the_mean" in out
    assert "你的输出与『先减了均值——这是 LayerNorm，不是 RMSNorm』" in out
    assert "进行中" in out


def test_status_lists_every_module_and_a_next_step(monkeypatch, capsys):
    # 真实的测试运行由 test_check_* 覆盖；这里把每个模块的结果换成“桩”的样子，检查 status 的输出逻辑
    from kata.runner import TestOutcome, TestSummary

    fake = lambda m, impl: TestSummary(m.key, impl, [TestOutcome("t", "failed", "还没实现：…")] * 3)
    monkeypatch.setattr(cli, "run_tests", fake)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    for key in ("01_normalization", "02_position_encoding", "07_tokenizer", "10_sft"):
        assert key in out
    assert "0/3" in out and "未开始" in out and "即将上线" in out
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
