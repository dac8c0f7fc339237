"""坏的 --impl / KATA_IMPL：停一次、一句话、没有 traceback（issue 11 §6）。"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kata import impl as kimpl
from kata.impl import REPO_ROOT


def _pytest(*args, env_impl=None, cwd=REPO_ROOT):
    env = dict(os.environ)
    env.pop("KATA_IMPL", None)
    if env_impl is not None:
        env["KATA_IMPL"] = env_impl
    return subprocess.run([sys.executable, "-m", "pytest", str(REPO_ROOT / "exercises/01_normalization"), "-q",
                           "-p", "no:cacheprovider", *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=300)


def _one_clear_line(p, needle):
    text = p.stdout + p.stderr
    assert p.returncode == 4, text[-2000:]                # pytest 的“用法错误”：一个测试都没跑
    assert text.count(needle) == 1, text[-2000:]          # 只说一次，不是每个测试各一遍
    assert "Traceback" not in text and "INTERNALERROR" not in text, text[-2000:]
    assert " error" not in text.lower().split("ERROR:", 1)[-1], text[-2000:]   # 没有 “N errors”
    return text


def test_bogus_env_impl_stops_once_with_one_line():
    text = _one_clear_line(_pytest(env_impl="bogus"), "KATA_IMPL 的值 'bogus' 不是可用的实现")
    assert "exercises（你的代码）、solutions（参考实现）、bug:<名字>" in text


def test_nonexistent_impl_path_says_the_file_does_not_exist(tmp_path):
    missing = tmp_path / "nope" / "rmsnorm.py"
    text = _one_clear_line(_pytest(f"--impl={missing}"), "文件不存在")
    assert str(missing) in text


def test_unknown_bug_lists_the_available_ones():
    text = _one_clear_line(_pytest("--impl=bug:no_such_bug"), "bug bank 里没有 'no_such_bug'")
    assert "可用的有：" in text and "eps_outside_sqrt" in text


def test_check_impl_unit():
    assert kimpl.check_impl("exercises") == "exercises"
    assert kimpl.check_impl("bug:no_eps", ["01_normalization"]) == "bug:no_eps"
    with pytest.raises(kimpl.ImplLoadError, match="文件不存在"):
        kimpl.check_impl("./no/such/file.py")
    with pytest.raises(kimpl.ImplLoadError, match="可用的有：.*no_eps"):
        kimpl.check_impl("bug:nope", ["01_normalization"])
    with pytest.raises(kimpl.ImplLoadError, match="bug: 后面要写"):
        kimpl.check_impl("bug:")


def test_unknown_bug_from_resolve_is_an_impl_load_error_and_a_value_error():
    # 实验的 main() 把 ImplLoadError 显示成一句话；以前这里是 ValueError → traceback
    with pytest.raises(kimpl.ImplLoadError) as info:
        kimpl.resolve("01_normalization", "bug:nope")
    assert isinstance(info.value, ValueError) and "可用的有：" in str(info.value)
