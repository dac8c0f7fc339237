"""Ctrl-C 是正常的停止方式（issue 11 §4）：一行“已中断”，退出码 130，没有 traceback，子进程停掉，不留临时文件。

给 `python -m kata …` 发 SIGINT（和终端里按 Ctrl-C 一样：只发给 kata 自己——它的子进程在自己的进程组里，
由 kata 负责停掉）。在三个时刻发：导入期间、测试子进程运行期间、quickstart 的实验子进程运行期间。
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from kata.impl import REPO_ROOT

pytestmark = pytest.mark.skipif(os.name != "posix" or not Path("/proc").is_dir(), reason="需要 POSIX 信号和 /proc")


def _procs_with(token: str) -> list[tuple[int, str]]:
    """环境变量里带 token 的进程（kata 和它的所有子孙进程都继承了它）。"""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if token.encode() in (d / "environ").read_bytes():
                found.append((int(d.name), (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")))
        except OSError:
            continue
    return found


def _start(tmp_path, *args):
    token = f"KATA_SIGINT_TEST={uuid.uuid4().hex}"
    env = dict(os.environ, TMPDIR=str(tmp_path / "tmp"), KATA_RESULT_CACHE=str(tmp_path / "cache"),
               KATA_SIGINT_TEST=token.split("=", 1)[1], MPLBACKEND="Agg")
    env.pop("KATA_IMPL", None)
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "kata", *args], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # 像终端里那样：SIGINT 的默认处理（后台启动的进程可能继承了“忽略 SIGINT”）
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc, token


def _wait_for_child(proc, token, needle, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"kata 在子进程出现之前就结束了：{proc.communicate()}")
        if any(needle in cmd and pid != proc.pid for pid, cmd in _procs_with(token)):
            return
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"等了 {timeout} 秒也没看到子进程 {needle!r}")


def _interrupt_and_check(proc, token, tmp_path):
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "已中断" in lines[0], err
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    time.sleep(0.5)
    assert _procs_with(token) == [], "kata 结束后还有子进程在跑"
    leftovers = [p for p in (tmp_path / "tmp").rglob("*") if p.name.startswith("kata-run-")]
    leftovers += list((tmp_path / "cache").rglob("*.tmp"))
    assert leftovers == [], f"留下了临时文件：{leftovers}"
    return out


def _wait_until_importing_torch(proc, timeout=120):
    """等到 kata 正在导入 torch（libtorch 已映射进内存）——导入期间最长的那一段。"""
    maps = Path(f"/proc/{proc.pid}/maps")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "libtorch" in maps.read_text(errors="replace"):
                return
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"kata 提前结束了：{proc.communicate()}")
        time.sleep(0.02)
    pytest.fail("没等到 kata 导入 torch")


@pytest.mark.parametrize("args", [["status"], ["check", "01"], ["quickstart"]], ids=" ".join)
def test_ctrl_c_during_imports(tmp_path, args):
    proc, token = _start(tmp_path, *args)
    _wait_until_importing_torch(proc)
    _interrupt_and_check(proc, token, tmp_path)


@pytest.mark.parametrize("args", [["status"], ["check", "01"]], ids=" ".join)
def test_ctrl_c_while_the_tests_run(tmp_path, args):
    proc, token = _start(tmp_path, *args)
    _wait_for_child(proc, token, "-m pytest")
    time.sleep(1.0)  # 让 pytest 子进程真正开始收集、写临时文件
    _interrupt_and_check(proc, token, tmp_path)


def test_ctrl_c_while_quickstart_runs_an_experiment(tmp_path):
    proc, token = _start(tmp_path, "quickstart")
    _wait_for_child(proc, token, "experiments/01_normalization/")
    time.sleep(2.0)
    out = _interrupt_and_check(proc, token, tmp_path)
    assert "== 01_normalization/" in out  # 确实停在了实验里
