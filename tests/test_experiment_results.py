"""实验的“第一个小时”（issue 11）：结果不会悄悄丢失、开始计算之前先检查输出、Ctrl-C 只打印一行、
离线时的合成语料后备、坏的 --impl / --data-file、冒烟模式的结论、打印出来的路径能直接打开。

大部分是子进程测试：检查的正是学习者在终端里看到的东西（退出码、stderr 只有一行、没有 traceback、
磁盘上没有多出或少了文件）。
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kata import data as kata_data
from kata import experiment as kx
from kata.curriculum import MODULES
from kata.experiment import Experiment
from kata.impl import REPO_ROOT

EXP_DIR = REPO_ROOT / "experiments"
EXP1 = EXP_DIR / "01_normalization" / "exp1_gradient_vanishing.py"          # 不用数据，冒烟模式几秒
EXP3 = EXP_DIR / "01_normalization" / "exp3_prenorm_vs_postnorm.py"         # 用数据，可以改用合成语料
EXP_NO_SYNTH = EXP_DIR / "04_feedforward" / "exp4_key_value_memory.py"      # 用数据，不能改用合成语料
# 课程表里已经写好的实验脚本（还在编写中的模块可能先列出名字；文件是否存在由 test_experiments_smoke 检查）
ALL_SCRIPTS = [p for m in MODULES for e in m.experiments if (p := EXP_DIR / m.key / e).is_file()]


def env(**extra) -> dict:
    e = dict(os.environ, MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    e.pop("KATA_IMPL", None)
    e["PYTHONPATH"] = ""
    e.update({k: str(v) for k, v in extra.items()})
    return e


def run(args, *, cwd=REPO_ROOT, timeout=300, **extra_env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*")) if Path(folder).exists() else []


def temp_files(folder: Path) -> list[str]:
    return [f for f in all_files(folder) if ".tmp" in f or ".part" in f or ".kata-write-check" in f]


def one_line(stderr: str) -> str:
    text = stderr.strip()
    assert "Traceback" not in text, text
    assert len(text.splitlines()) == 1, f"应当只有一行：\n{text}"
    return text


# ---------------------------------------------------------------------------------------------
# 进程内用的小实验
# ---------------------------------------------------------------------------------------------

class Tiny(Experiment):
    name = "exp_tiny"
    module = "01_normalization"
    title = "小实验"

    def run(self):
        from kata.plots import new_figure

        fig, axes = new_figure()
        axes[0, 0].plot([0, 1], [self.seed, 1])
        self.save_figure(fig, "curve")
        self.conclude(f"种子 {self.seed}。")
        return {"seed": self.seed}


class NoConclusion(Tiny):
    name = "exp_no_conclusion"

    def run(self):
        return {"x": 1}


class FailsAfterFigure(Tiny):
    name = "exp_tiny"

    def run(self):
        super().run()
        raise KeyboardInterrupt


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# 1. 结果按（模式, 实现）分开，替换时说出来
# ---------------------------------------------------------------------------------------------

def test_each_mode_and_impl_keeps_its_own_result(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert Tiny.main(["--seed", "1", "--out-dir", str(out)]) == 0                       # 完整模式
    full = load(out / "exp_tiny" / "full-exercises.json")
    assert Tiny.main(["--quick", "--seed", "2", "--out-dir", str(out)]) == 0
    assert Tiny.main(["--smoke", "--seed", "3", "--out-dir", str(out)]) == 0
    assert Tiny.main(["--smoke", "--impl", "solutions", "--out-dir", str(out)]) == 0
    assert Tiny.main(["--smoke", "--impl", "bug:no_eps", "--out-dir", str(out)]) == 0
    assert all_files(out) == ["exp_tiny"] + [f"exp_tiny/{stem}{suffix}" for stem in (
        "full-exercises", "quick-exercises", "smoke-bug-no_eps", "smoke-exercises", "smoke-solutions")
        for suffix in (".json", "_curve.png")]
    assert load(out / "exp_tiny" / "full-exercises.json") == full, "快速/冒烟运行不应碰完整模式的结果"
    assert load(out / "exp_tiny" / "quick-exercises.json")["seed"] == 2
    assert load(out / "exp_tiny" / "smoke-exercises.json")["figures"] == ["smoke-exercises_curve.png"]
    printed = capsys.readouterr().out
    assert "替换" not in printed, "第一次写某个（模式, 实现）时没有东西被替换"


def test_rerun_says_which_result_it_replaced(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert Tiny.main(["--quick", "--out-dir", "out"]) == 0
    first = load(tmp_path / "out" / "exp_tiny" / "quick-exercises.json")
    capsys.readouterr()
    assert Tiny.main(["--quick", "--seed", "5", "--out-dir", "out"]) == 0
    printed = capsys.readouterr().out
    line = next(l for l in printed.splitlines() if "替换" in l)
    assert "out/exp_tiny/quick-exercises.json" in line and first["started_at"] in line, line
    assert load(tmp_path / "out" / "exp_tiny" / "quick-exercises.json")["seed"] == 5


def test_impl_tags_are_filesystem_safe_and_distinct(tmp_path):
    a, b = tmp_path / "a" / "my rmsnorm.py", tmp_path / "b" / "my rmsnorm.py"
    ta, tb = kx.impl_tag(str(a)), kx.impl_tag(str(b))
    assert ta.startswith("path-my_rmsnorm-") and ta != tb, (ta, tb)
    for tag in (ta, kx.impl_tag("bug:eps/../x"), kx.impl_tag("exercises")):
        assert all(c.isalnum() or c in "_.-" for c in tag), tag
    assert kx.impl_tag("bug:no_eps") == "bug-no_eps" and kx.impl_tag("solutions") == "solutions"


def test_interrupted_run_leaves_old_results_and_no_temp_files(tmp_path):
    assert Tiny.main(["--out-dir", str(tmp_path), "--seed", "1"]) == 0
    before = {p: (tmp_path / p).read_bytes() for p in all_files(tmp_path) if (tmp_path / p).is_file()}
    assert FailsAfterFigure.main(["--out-dir", str(tmp_path), "--seed", "2"]) == 130
    after = {p: (tmp_path / p).read_bytes() for p in all_files(tmp_path) if (tmp_path / p).is_file()}
    assert after == before, "中断的运行不应换掉任何旧文件（图也不行），也不应留下临时文件"


def test_commit_files_concurrently_never_leaves_temp_files(tmp_path):
    target = tmp_path / "r.json"
    errors = []

    def writer(i):
        try:
            for k in range(20):
                kx.commit_files({target: json.dumps({"writer": i, "k": k}).encode(),
                                 tmp_path / "r_fig.png": bytes([i]) * 1000})
        except Exception as exc:  # pragma: no cover - 失败时才有
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert json.loads(target.read_text())["k"] == 19
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r_fig.png"]


TINY_SCRIPT = '''
import sys
sys.path.insert(0, {repo!r})
import kata.experiment
from kata.experiment import Experiment


class Tiny(Experiment):
    name = "exp_tiny"
    module = "01_normalization"
    title = "小实验"

    def run(self):
        import torch
        from kata.plots import new_figure
        fig, axes = new_figure()
        axes[0, 0].plot([0, 1], [0, 1])
        self.save_figure(fig, "curve")
        model = torch.nn.Linear(32, 32)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        print("TRAINING", flush=True)
        for step in range({steps}):
            loss = model(torch.randn(16, 32)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.conclude("完成。")
        return {{"steps": {steps}}}


if __name__ == "__main__":
    sys.exit(Tiny.main())
'''


def tiny_script(tmp_path: Path, steps: int) -> Path:
    path = tmp_path / "scripts" / "exp_tiny.py"
    path.parent.mkdir(exist_ok=True)
    path.write_text(TINY_SCRIPT.format(repo=str(REPO_ROOT), steps=steps), encoding="utf-8")
    return path


def test_two_concurrent_runs_of_the_same_experiment_do_not_race(tmp_path):
    script = tiny_script(tmp_path, steps=300)
    out = tmp_path / "out"
    cmd = [sys.executable, str(script), "--quick", "--out-dir", str(out)]
    procs = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    assert all_files(out) == ["exp_tiny", "exp_tiny/quick-exercises.json", "exp_tiny/quick-exercises_curve.png"]
    assert load(out / "exp_tiny" / "quick-exercises.json")["metrics"] == {"steps": 300}


# ---------------------------------------------------------------------------------------------
# 2. 开始计算之前先检查输出
# ---------------------------------------------------------------------------------------------

def test_out_dir_pointing_at_a_file_fails_before_any_compute(tmp_path):
    blocker = tmp_path / "results.txt"
    blocker.write_text("不是文件夹")
    proc = run([EXP1, "--impl", "solutions", "--out-dir", blocker], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    msg = one_line(proc.stderr)
    assert msg.startswith("--out-dir 指向的 results.txt 是一个文件，不是文件夹"), msg
    assert proc.stdout == "", "检查没过时不应开始计算（连标题都不打印）"
    assert all_files(tmp_path) == ["results.txt"] and blocker.read_text() == "不是文件夹"


def _unwritable_dir(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        d = tmp_path / "locked"
        d.mkdir()
        d.chmod(0o555)
        return d / "results"
    if not Path("/proc/self").is_dir():
        pytest.skip("以 root 运行且没有 /proc：造不出一个 root 也写不进去的文件夹")
    return Path("/proc/self/kata-results")  # root 也不能在 /proc 里建文件


def test_unwritable_results_folder_fails_before_any_compute(tmp_path):
    target = _unwritable_dir(tmp_path)
    try:
        proc = run([EXP1, "--impl", "solutions", "--out-dir", target], cwd=tmp_path, timeout=120)
    finally:
        if target.parent.name == "locked":
            target.parent.chmod(0o755)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    msg = one_line(proc.stderr)
    assert "不可写" in msg and "换一个可写的文件夹" in msg, msg
    assert proc.stdout == ""
    assert not target.exists() and temp_files(target.parent) == []


def test_default_results_folder_unwritable_suggests_out_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Tiny, "script_path", str(tmp_path / "nowhere" / "exp_tiny.py"))
    monkeypatch.setattr(kx, "_can_write_in", lambda folder: False)
    assert Tiny.main(["--smoke"]) == 2
    captured = capsys.readouterr()
    assert "用 --out-dir 指定一个可写的文件夹" in one_line(captured.err) and captured.out == ""
    assert not (tmp_path / "nowhere" / "results").exists()


# ---------------------------------------------------------------------------------------------
# 3. Ctrl-C：一行“已中断”，退出码 130，没有 traceback，没有临时文件
# ---------------------------------------------------------------------------------------------

def _interrupt_after(cmd, markers, cwd, **extra_env) -> tuple[int, str, str]:
    """等子进程打印出含 markers 之一的行，再给它发 SIGINT（与在终端里按 Ctrl-C 相同）。"""
    markers = (markers,) if isinstance(markers, str) else tuple(markers)
    proc = subprocess.Popen([sys.executable, *map(str, cmd)], cwd=cwd, env=env(**extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if any(m in line for m in markers):
            break
    else:
        proc.wait(timeout=60)
        pytest.fail(f"没等到 {markers!r} 进程就结束了：\n{''.join(seen)}\n{proc.stderr.read()}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + out, err


@pytest.mark.timeout(300)
def test_ctrl_c_during_training_prints_one_line_and_leaves_nothing(tmp_path):
    script = tiny_script(tmp_path, steps=10**9)
    out = tmp_path / "out"
    (out / "exp_tiny").mkdir(parents=True)
    old = out / "exp_tiny" / "full-exercises.json"
    old.write_text('{"old": true}\n')
    rc, stdout, stderr = _interrupt_after([script, "--out-dir", out], "TRAINING", cwd=tmp_path)
    assert rc == 130, stdout + stderr
    assert stderr.strip() == kx.INTERRUPTED, stderr
    assert all_files(out) == ["exp_tiny", "exp_tiny/full-exercises.json"], "中断后不应写出结果或留下临时文件"
    assert old.read_text() == '{"old": true}\n'


@pytest.mark.timeout(300)
def test_ctrl_c_in_a_real_experiment(tmp_path):
    # 有没有真实数据都行：加载语料后（“数据：…”或“注意：本次没有找到…”）训练立刻开始
    rc, stdout, stderr = _interrupt_after([EXP3, "--quick", "--impl", "solutions", "--out-dir", tmp_path / "out"],
                                          ("数据：", "注意：本次没有找到"), cwd=tmp_path)
    assert rc == 130, stdout + stderr
    assert stderr.strip() == kx.INTERRUPTED, stderr
    assert all_files(tmp_path / "out") == []


def test_ctrl_c_while_importing_torch(tmp_path):
    """在 import torch 途中按 Ctrl-C（用一个导入时就抛 KeyboardInterrupt 的假 torch 模拟）。"""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise KeyboardInterrupt\n")
    proc = subprocess.run([sys.executable, str(EXP1), "--smoke", "--impl", "solutions", "--out-dir", str(tmp_path / "o")],
                          cwd=tmp_path, env={**env(), "PYTHONPATH": str(tmp_path / "fake")},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stdout + proc.stderr
    assert proc.stderr.strip() == kx.INTERRUPTED and proc.stdout == "", proc.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# 4. 离线、没有数据文件
# ---------------------------------------------------------------------------------------------

def offline_env(tmp_path: Path) -> dict:
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    return {"KATA_DATA_DIR": empty, "KATA_CACHE_DIR": tmp_path / "cache", kata_data.OFFLINE_ENV: "1"}


def test_offline_message_names_url_data_file_and_env_not_the_authors_folder(tmp_path, monkeypatch):
    for k, v in offline_env(tmp_path).items():
        monkeypatch.setenv(k, str(v))
    with pytest.raises(kata_data.DataUnavailableError) as info:
        kata_data.load_corpus("shakespeare")
    msg = str(info.value)
    for needle in (kata_data.SHAKESPEARE_URL, "--data-file", "KATA_DATA_DIR", "KATA_OFFLINE=1"):
        assert needle in msg, needle
    assert "shared" not in msg, msg
    assert not (tmp_path / "cache").exists() or all_files(tmp_path / "cache") == []


def test_experiments_that_use_data_declare_whether_synthetic_is_honest():
    for script in ALL_SCRIPTS:
        cls = kx.load_experiment_class(script)
        if "load_corpus(" not in script.read_text(encoding="utf-8"):
            continue
        declared = "can_use_synthetic" in vars(cls) and "synthetic_reason" in vars(cls)
        assert declared, (
            f"{script.name} 用到语料，应在类里写明 can_use_synthetic 与 synthetic_reason（为什么可以/不可以用合成语料）")
        assert len(cls.synthetic_reason) > 15, script.name


def test_synthetic_fallback_end_to_end(tmp_path):
    assert kx.load_experiment_class(EXP3).can_use_synthetic
    out = tmp_path / "out"
    proc = run([EXP3, "--smoke", "--impl", "solutions", "--out-dir", out], cwd=tmp_path, **offline_env(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    notice = next(l for l in proc.stdout.splitlines() if l.startswith("注意：本次没有找到 TinyShakespeare"))
    assert "合成语料" in notice and "优化层面" in notice, notice
    rec = load(out / "exp3_prenorm_vs_postnorm" / "smoke-solutions.json")
    assert rec["dataset"]["fell_back_to_synthetic"] is True and rec["dataset"]["name"] == "synthetic"
    assert rec["dataset"]["fallback_notice"] == notice and notice in rec["notes"] and notice in rec["conclusion"]
    assert all_files(tmp_path / "cache") == [], "KATA_OFFLINE=1 时不应尝试下载"


def test_experiment_that_cannot_use_synthetic_says_why_and_how_to_get_data(tmp_path):
    cls = kx.load_experiment_class(EXP_NO_SYNTH)
    assert not cls.can_use_synthetic
    proc = run([EXP_NO_SYNTH, "--smoke", "--impl", "solutions", "--out-dir", tmp_path / "out"], cwd=tmp_path,
               **offline_env(tmp_path))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    err = proc.stderr
    assert "Traceback" not in err and "shared" not in err
    for needle in (kata_data.SHAKESPEARE_URL, "--data-file", "KATA_DATA_DIR"):
        assert needle in err, needle
    assert err.strip().splitlines()[-1] == f"这个实验不改用合成语料：{cls.synthetic_reason}。"
    assert all_files(tmp_path / "out") == []


# ---------------------------------------------------------------------------------------------
# 5. 坏的 --data-file / --impl：一句话，退出码 2，不开始计算
# ---------------------------------------------------------------------------------------------

def _bad_arg(tmp_path, capsys, *argv) -> str:
    out = tmp_path / "out"
    assert Tiny.main([*argv, "--smoke", "--out-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    return one_line(captured.err)


def test_data_file_directory(tmp_path, capsys):
    msg = _bad_arg(tmp_path, capsys, "--data-file", str(tmp_path))
    assert msg.startswith(f"--data-file 指向的 {tmp_path} 是一个文件夹，不是文件"), msg


def test_data_file_missing(tmp_path, capsys):
    msg = _bad_arg(tmp_path, capsys, "--data-file", str(tmp_path / "nope.txt"))
    assert f"--data-file 指定的 {tmp_path / 'nope.txt'} 不存在" in msg


def test_data_file_unreadable(tmp_path, capsys, monkeypatch):
    f = tmp_path / "tinyshakespeare.txt"
    f.write_text("x")
    f.chmod(0)
    real_access = os.access
    if os.geteuid() == 0:  # root 无视权限位：让 os.access 说出普通用户会得到的答案
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == f else real_access(p, mode, **kw))
    try:
        msg = _bad_arg(tmp_path, capsys, "--data-file", str(f))
    finally:
        f.chmod(0o644)
    assert "存在，但当前用户没有读取权限" in msg, msg


def test_data_file_not_a_regular_file(tmp_path, capsys):
    if not hasattr(os, "mkfifo"):
        pytest.skip("没有 mkfifo")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    msg = _bad_arg(tmp_path, capsys, "--data-file", str(fifo))
    assert "存在，但不是普通文件" in msg, msg


def test_impl_nonexistent_path_says_the_file_does_not_exist(tmp_path):
    proc = run([EXP1, "--smoke", "--impl", "./my_rmsnorm.py", "--out-dir", tmp_path / "out"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    msg = one_line(proc.stderr)
    assert msg.startswith("--impl 指定的文件 ./my_rmsnorm.py 不存在"), msg
    assert not (tmp_path / "out").exists()


def test_impl_unknown_bug_lists_the_available_ones(tmp_path):
    from kata.bugbank import bugs_for

    proc = run([EXP1, "--smoke", "--impl", "bug:nope", "--out-dir", tmp_path / "out"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    msg = one_line(proc.stderr)
    assert "bug:nope" in msg and "没有叫 'nope' 的错误实现" in msg
    for bug in bugs_for("01_normalization"):
        assert bug.name in msg, bug.name


def test_impl_bare_unknown_word(tmp_path, capsys):
    msg = _bad_arg(tmp_path, capsys, "--impl", "mine")
    assert "只能是 exercises、solutions、bug:<名字>" in msg and "'mine'" in msg


# ---------------------------------------------------------------------------------------------
# 6. 冒烟模式的结论；打印出来的路径
# ---------------------------------------------------------------------------------------------

def test_smoke_conclusion_always_says_numbers_are_meaningless(tmp_path):
    assert NoConclusion.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    assert load(tmp_path / "exp_no_conclusion" / "smoke-exercises.json")["conclusion"] == kx.SMOKE_NOTICE
    assert Tiny.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    assert load(tmp_path / "exp_tiny" / "smoke-exercises.json")["conclusion"].startswith(kx.SMOKE_NOTICE + "\n种子 0")
    assert Tiny.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    assert kx.SMOKE_NOTICE not in load(tmp_path / "exp_tiny" / "quick-exercises.json")["conclusion"]
    assert NoConclusion.main(["--quick", "--out-dir", str(tmp_path)]) == 0
    assert load(tmp_path / "exp_no_conclusion" / "quick-exercises.json")["conclusion"] is None


def test_printed_paths_open_from_the_current_directory(tmp_path):
    """从别的目录运行、--out-dir 用相对路径：打印出来的每个路径都能从当前目录直接打开。"""
    proc = run([EXP1, "--smoke", "--impl", "solutions", "--out-dir", "out"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    written = next(l for l in lines if l.startswith("结果已写入 ")).removeprefix("结果已写入 ").split("（")[0]
    assert written == "out/exp1_gradient_vanishing/smoke-solutions.json"
    figures = [l.removeprefix("图：") for l in lines if l.startswith("图：")]
    assert figures and all((tmp_path / f).is_file() for f in figures + [written]), figures


def test_display_path_is_relative_to_cwd_or_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert kx.display_path(tmp_path / "a" / "b.json") == "a/b.json"
    elsewhere = tmp_path.parent / "elsewhere.json"
    assert kx.display_path(elsewhere) == str(elsewhere.resolve())


def test_every_script_imports_the_harness_before_torch():
    """Ctrl-C 的处理装在 kata.experiment 里：它必须是脚本的第一个重量级导入（在 numpy / torch 之前）。"""
    for script in ALL_SCRIPTS:
        lines = script.read_text(encoding="utf-8").splitlines()
        first = next((i for i, l in enumerate(lines) if l.startswith("import kata.experiment")), None)
        assert first is not None, (f"{script.name}：在 sys.path.insert(...) 那一行之后加上 "
                                   "`import kata.experiment  # noqa: E402,F401`（导入途中按 Ctrl-C 也只打印一行）")
        heavy = [i for i, l in enumerate(lines) if l.split("#")[0].strip().startswith(
            ("import torch", "from torch", "import numpy", "from numpy", "import matplotlib", "from kata"))]
        assert heavy and first < min(heavy), f"{script.name}：import kata.experiment 应在第 {min(heavy) + 1} 行之前"


@pytest.mark.parametrize("script", [p for p in ALL_SCRIPTS if p.parent.name in ("09_pretrain", "10_sft")],
                         ids=lambda p: p.name)
def test_tier3_experiment_on_an_unwritten_module_stops_with_one_sentence(script, tmp_path):
    """实验研究的是本模块的部件：它还是桩时不偷偷换成参考实现，而是一句话、退出码 2、不写结果。"""
    out = tmp_path / "out"
    proc = run([script, "--smoke", "--impl", "exercises", "--out-dir", out], cwd=tmp_path)
    module = script.parent.name
    assert proc.returncode == 2, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1]
    assert f"exercises/{module}" in last and "--impl solutions" in last, last
    assert not [f for f in all_files(out) if f.endswith(".json")], all_files(out)
