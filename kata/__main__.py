"""minimind-kata 的进度命令行。

    python -m kata status          每个模块：你的代码通过了几个测试、状态、下一步做什么
    python -m kata check 01        跑模块 01 的测试，给出紧凑的结果
    python -m kata hint 01         渐进提示：每调用一次多给一条（--reset 从头开始）
    python -m kata quickstart      “30 分钟快速体验”：依次运行课程的快速实验
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from kata.curriculum import MODULES, Module, get_module
from kata.impl import REPO_ROOT
from kata.runner import TestSummary, has_exercises, run_tests

STATE_FILE = REPO_ROOT / ".kata-state.json"


def _state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_state(state: dict) -> None:
    tmp = STATE_FILE.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(state, ensure_ascii=False, indent=2), encoding="utf-8")
    os.replace(tmp, STATE_FILE)


def _label(summary: TestSummary) -> str:
    if summary.total == 0 or summary.errors and summary.passed == 0 and summary.failed == 0:
        return "出错"
    if summary.passed == summary.total:
        return "已完成"
    if summary.passed == 0:
        return "未开始"
    return "进行中"


def _first_experiment_cmd(m: Module) -> str:
    if not m.experiments:
        return ""
    return f"python experiments/{m.key}/{m.experiments[0]} --quick"


def cmd_status(args) -> int:
    print("minimind-kata 学习进度（测的是你的代码 exercises/）\n")
    next_step = None
    live = [m for m in MODULES if has_exercises(m)]
    with ThreadPoolExecutor(max_workers=2) as pool:  # 每个模块一个子进程，两个核各跑一个
        summaries = dict(zip([m.key for m in live], pool.map(lambda m: run_tests(m, "exercises"), live)))
    for m in MODULES:
        if m.key not in summaries:
            print(f"  {m.key:<24} 即将上线")
            continue
        s = summaries[m.key]
        label = _label(s)
        print(f"  {m.key:<24} {s.passed:>3}/{s.total:<3} {label}")
        if next_step is None and label != "已完成":
            if label == "出错":
                next_step = f"先修好导入错误：python -m kata check {m.number}"
            else:
                next_step = (f"读 exercises/{m.key}/teaching.md，完成 exercises/{m.key}/"
                             f"{'、'.join(m.files)}，然后 python -m kata check {m.number}")
    done = [m for m in MODULES if has_exercises(m)]
    if next_step is None and done:
        last = done[-1]
        next_step = f"全部完成！在你自己的代码上跑实验：{_first_experiment_cmd(last)}"
    print(f"\n下一步：{next_step}")
    return 0


def cmd_check(args) -> int:
    m = get_module(args.module)
    if not has_exercises(m):
        print(f"模块 {m.key} 还没有上线练习。")
        return 1
    impl = "solutions" if args.solutions else "exercises"
    t0 = time.perf_counter()
    s = run_tests(m, impl)
    print(f"模块 {m.key}（{m.title}）· 被测：{'参考实现' if args.solutions else '你的实现'}\n")
    for o in s.outcomes:
        mark = {"passed": "✓", "failed": "✗", "error": "!", "skipped": "-"}[o.status]
        print(f"  {mark} {o.name}")
        if o.status in ("failed", "error"):
            print(f"      {o.message}")
            for line in o.detail.splitlines()[1:]:
                if "你的输出与" in line or line.strip().startswith("→ 见"):
                    print(f"      {line.strip()}")
    print(f"\n{s.passed}/{s.total} 通过（{time.perf_counter() - t0:.1f} 秒）· 状态：{_label(s)}")
    if s.passed == s.total and s.total:
        print(f"下一步：在你自己的代码上跑实验，例如 {_first_experiment_cmd(m)}")
    elif s.total and all("还没实现" in o.message for o in s.outcomes if o.status == "failed"):
        print(f"还没开始？先读 exercises/{m.key}/teaching.md；卡住时 python -m kata hint {m.number}")
    return 0 if s.passed == s.total and s.total else 1


def cmd_hint(args) -> int:
    m = get_module(args.module)
    if not m.hints:
        print(f"模块 {m.key} 还没有提示。")
        return 1
    state = _state()
    shown = state.setdefault("hints", {}).get(m.key, 0)
    if args.reset:
        state["hints"][m.key] = 0
        _save_state(state)
        print(f"模块 {m.key} 的提示已重置。")
        return 0
    n = min(shown + 1, len(m.hints))
    for i, hint in enumerate(m.hints[:n], 1):
        print(f"提示 {i}/{len(m.hints)}：{hint}\n")
    if n == len(m.hints):
        print("这已经是最后一条提示了。（python -m kata hint %s --reset 可以从头再看）" % m.number)
    else:
        print("还需要？再运行一次同样的命令，会多给一条。")
    state["hints"][m.key] = n
    _save_state(state)
    return 0


def cmd_quickstart(args) -> int:
    print("30 分钟快速体验：依次运行课程的快速实验。\n")
    failures = 0
    for m in MODULES:
        if not m.quickstart:
            continue
        if has_exercises(m):
            s = run_tests(m, "exercises")
            if s.total and s.passed == s.total:
                impl, why = "exercises", f"你的 {m.key} 已全部通过测试，用你自己的代码运行"
            else:
                impl, why = "solutions", (f"你的 {m.key} 还没完成（{s.passed}/{s.total} 个测试通过），"
                                          "这次用参考实现 solutions/ 运行；完成后再跑就会换成你的代码")
        else:
            impl, why = "solutions", f"{m.key} 的练习还没上线，用参考实现运行"
        for script, *extra in m.quickstart:
            path = REPO_ROOT / "experiments" / m.key / script
            if args.smoke:  # CI 自检用：--smoke 与 --quick 互斥
                extra = [a for a in extra if a != "--quick"] + ["--smoke"]
            cmd = [sys.executable, str(path), "--impl", impl, *extra]
            print(f"== {m.key}/{script}：{why}")
            print("   $ " + " ".join(["python", str(path.relative_to(REPO_ROOT)), *cmd[2:]]) + "\n", flush=True)
            rc = subprocess.call(cmd, cwd=REPO_ROOT)
            if rc != 0:
                failures += 1
                print(f"   （{script} 以退出码 {rc} 结束）")
            print()
    print("快速体验结束。" + ("" if not failures else f"有 {failures} 个实验没有正常结束，见上方信息。"))
    print("结果（JSON 与 PNG）在各模块的 experiments/<模块>/results/ 里。下一步：python -m kata status")
    return 1 if failures else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kata", description="minimind-kata 学习进度与快速体验")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{status,check,hint,quickstart}")
    p = sub.add_parser("status", help="每个模块的进度与下一步")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("check", help="运行一个模块的测试（紧凑输出）")
    p.add_argument("module", help="模块编号或目录名，例如 01 或 01_normalization")
    p.add_argument("--solutions", action="store_true", help="改为检查参考实现")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("hint", help="渐进提示：每次多给一条")
    p.add_argument("module", help="模块编号，例如 01")
    p.add_argument("--reset", action="store_true", help="从第一条提示重新开始")
    p.set_defaults(func=cmd_hint)
    p = sub.add_parser("quickstart", help="运行课程 README 的“30 分钟快速体验”实验")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_quickstart)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
