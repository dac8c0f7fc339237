"""minimind-kata 的进度命令行。

    python -m kata status          每个模块：你的代码通过了几个测试、状态、下一步做什么（文件没变的模块用缓存）
    python -m kata check 01        跑模块 01 的测试，给出紧凑的结果（有连带失败时先说“先修这一条”）
    python -m kata hint 01         渐进提示：每调用一次多给一条（--reset 从头开始）
    python -m kata quickstart      “30 分钟快速体验”：依次运行课程的快速实验

Ctrl-C 随时可以按：只打印一行“已中断。”，退出码 130，子进程一并停掉，不留临时文件。
"""
from __future__ import annotations

import sys

try:  # Ctrl-C 在导入期间也只说一行（较重的 torch 在 main() 里导入，同样有保护）
    import argparse
    import json
    import os
    import re
    import signal
    import subprocess
    import time
    from concurrent.futures import ThreadPoolExecutor

    from kata import runner
    from kata.curriculum import MODULES, Module, get_module
    from kata.impl import REPO_ROOT
    from kata.runner import (TestSummary, cascade, has_exercises, localize_paths, repo_path, run_tests,
                             run_tests_cached, shown, worth_showing)
except KeyboardInterrupt:
    print("已中断。", file=sys.stderr)
    sys.exit(130)

STATE_FILE = REPO_ROOT / ".kata-state.json"
INTERRUPTED = "已中断。"


class _ChildSaidInterrupted(KeyboardInterrupt):
    """子进程（实验脚本）已经自己打印过“已中断。”：kata 不再重复。"""


def _state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _save_state(state: dict) -> None:
    runner._atomic_write_text(STATE_FILE, json.dumps(state, ensure_ascii=False, indent=2))


def _label(summary: TestSummary) -> str:
    if summary.problem:
        return "无法运行"
    if summary.total == 0 or summary.errors and summary.passed == 0 and summary.failed == 0:
        return "出错"
    if summary.passed == summary.total:
        return "已完成"
    if summary.passed == 0:
        return "未开始"
    return "进行中"


def _pretty(name: str) -> str:
    """pytest 把测试 id 里的中文转义成 \\uXXXX；显示时还原。"""
    if "\\u" not in name:
        return name
    try:
        return name.encode("ascii").decode("unicode_escape")
    except (UnicodeError, ValueError):
        return name


def _first_experiment_cmd(m: Module, impl: str = "") -> str:
    if not m.experiments:
        return ""
    extra = f" --impl {impl}" if impl else ""
    return f"python {repo_path(f'experiments/{m.key}/{m.experiments[0]}')} --quick{extra}"


def _print_problem(s: TestSummary, indent: str = "") -> None:
    print(f"{indent}{localize_paths(s.problem)}。")
    if s.fix:
        print(f"{indent}修复（一条命令）：{s.fix}")


# ---------------------------------------------------------------------------------------------
# status
# ---------------------------------------------------------------------------------------------

def _run_many(mods: list[Module], use_cache: bool) -> dict[str, TestSummary]:
    """两个子进程并行（每个模块一个）；Ctrl-C 时停掉子进程、等线程收拾完临时目录再往外抛。"""
    pool = ThreadPoolExecutor(max_workers=2)
    try:
        futures = {m.key: pool.submit(run_tests_cached, m, "exercises", use_cache=use_cache) for m in mods}
        return {k: f.result() for k, f in futures.items()}
    except KeyboardInterrupt:
        runner.stop_children()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def cmd_status(args) -> int:
    print("minimind-kata 学习进度（测的是你的代码 exercises/）\n", flush=True)
    live = [m for m in MODULES if has_exercises(m)]
    use_cache = not args.fresh
    todo = [m for m in live if not use_cache or runner.load_cached(m, "exercises", runner.fingerprint(m)) is None]
    if todo and not runner.missing_tools():
        print(f"（正在运行 {len(todo)} 个模块的测试"
              + ("；文件没变的模块直接用上次的结果" if len(todo) < len(live) else "") + "……）\n", flush=True)
    summaries = _run_many(live, use_cache)
    next_step = None
    problems: dict[tuple[str, str], list[str]] = {}
    for m in MODULES:
        if m.key not in summaries:
            print(f"  {m.key:<24} 即将上线")
            continue
        s = summaries[m.key]
        label = _label(s)
        counts = "  -/-  " if s.problem else f"{s.passed:>3}/{s.total:<3}"
        note = "  （缓存：文件没变）" if s.cached else ""
        print(f"  {m.key:<24} {counts} {label}{note}")
        if s.problem:
            problems.setdefault((s.problem, s.fix), []).append(m.key)
        if next_step is None and label != "已完成":
            if label == "无法运行":
                next_step = s.fix or f"python -m kata check {m.number}（看看为什么没能运行）"
            elif label == "出错":
                next_step = f"先修好导入错误：python -m kata check {m.number}"
            else:
                files = "、".join(repo_path(f"exercises/{m.key}/{f}") for f in m.files)
                next_step = (f"读 {repo_path(f'exercises/{m.key}/teaching.md')}，完成 {files}，"
                             f"然后 python -m kata check {m.number}")
    for (problem, fix), keys in problems.items():
        which = "全部模块" if len(keys) == len(live) and len(keys) > 1 else "、".join(keys)
        print(f"\n无法运行（{which}）：{localize_paths(problem)}。")
        if fix:
            print(f"修复（一条命令）：{fix}")
    if any(s.cached for s in summaries.values()):
        print("\n标“缓存”的模块：练习、测试和它用到的前面模块的文件都没变，直接沿用上次的结果"
              "（python -m kata status --fresh 全部重跑）。")
    if next_step is None and live:
        next_step = f"全部完成！在你自己的代码上跑实验：{_first_experiment_cmd(live[-1])}"
    print(f"\n下一步：{next_step}")
    return 0 if not problems else 2


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------

_DETAIL_PREFIXES = ("你的输出与", "→ 见", "误差约", "常见原因", "本课要求", "你的计算在某处")


def _print_failure(o, indent: str) -> None:
    print(f"{indent}{'✗' if o.status == 'failed' else '!'} {_pretty(o.name)}")
    print(f"{indent}    {localize_paths(o.message)}")
    for line in o.detail.splitlines()[1:]:
        if line.strip().startswith(_DETAIL_PREFIXES):
            print(f"{indent}    {localize_paths(line.strip())}")


def cmd_check(args) -> int:
    m = get_module(args.module)
    if not has_exercises(m):
        print(f"模块 {m.key} 还没有上线练习。")
        return 1
    if args.solutions and args.impl:
        print("--solutions 与 --impl 只能二选一", file=sys.stderr)
        return 2
    impl = "solutions" if args.solutions else (args.impl or "exercises")
    if impl not in ("exercises", "solutions"):
        from kata.impl import ImplLoadError, check_impl

        try:
            impl = check_impl(impl, [m], source="--impl")
        except ImplLoadError as exc:
            print(exc, file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    key = runner.fingerprint(m, impl)
    s = run_tests(m, impl)
    if runner.fingerprint(m, impl) == key:
        runner.store_cached(s, key)
    from kata.impl import describe

    who = describe(impl)
    print(f"模块 {m.key}（{m.title}）· 被测：{who}\n")
    if s.problem:
        print("测试没能运行：")
        _print_problem(s, "  ")
        return 2
    failures = [o for o in s.outcomes if o.status in ("failed", "error")]
    groups = cascade([o for o in failures if not o.not_implemented], lambda o: o.layer)
    shown_ids: set[int] = set()
    if worth_showing(groups):
        for i, g in enumerate(groups):
            head = "先修这一条" if i == 0 else "另一个独立的失败（也要修）"
            print(f"{head}：{g.title}")
            for o, others in runner.by_function(g.primary, lambda o: o.name):
                _print_failure(o, "  ")
                if others:
                    print(f"      （同一个测试的另外 {len(others)} 组参数也失败了：{_pretty('、'.join(others))}）")
            shown_ids.update(id(o) for o in g.primary)
            if g.dependents:
                print(f"  下面 {len(g.dependents)} 个失败都依赖它，很可能是它连带的——先修好上面这一条，再重跑看还剩哪些：")
                for o, others in runner.by_function(g.dependents, lambda o: o.name):
                    name = o.name.split("[")[0] + (f"（{len(others) + 1} 组参数）" if others else "")
                    print(f"    · {_pretty(name if others else o.name)}")
                shown_ids.update(id(o) for o in g.dependents)
            print()
        print("其余测试：")
    for o in s.outcomes:
        if id(o) in shown_ids:
            continue
        if o.status in ("failed", "error"):
            _print_failure(o, "  ")
        else:
            print(f"  {'✓' if o.status == 'passed' else '-'} {_pretty(o.name)}")
    print(f"\n{s.passed}/{s.total} 通过（{time.perf_counter() - t0:.1f} 秒）· 状态：{_label(s)}")
    all_passed = s.passed == s.total and s.total > 0
    if impl not in ("exercises", "solutions"):
        pass
    elif all_passed and args.solutions:
        print("参考实现全部通过：测试和环境都正常。检查你自己的代码：python -m kata check "
              f"{m.number}（想先看看实验现象，可以用参考实现跑：{_first_experiment_cmd(m, 'solutions')}）")
    elif all_passed:
        print(f"下一步：在你自己的代码上跑实验，例如 {_first_experiment_cmd(m)}")
    elif failures and all(o.not_implemented for o in failures) and s.passed == 0:
        print(f"还没开始？先读 {repo_path(f'exercises/{m.key}/teaching.md')}；卡住时 python -m kata hint {m.number}")
    return 0 if all_passed else 1


# ---------------------------------------------------------------------------------------------
# hint
# ---------------------------------------------------------------------------------------------

def cmd_hint(args) -> int:
    m = get_module(args.module)
    if not m.hints:
        print(f"模块 {m.key} 还没有提示。")
        return 1
    state = _state()
    shown_n = state.setdefault("hints", {}).get(m.key, 0)
    if args.reset:
        state["hints"][m.key] = 0
        _save_state(state)
        print(f"模块 {m.key} 的提示已重置。")
        return 0
    n = min(shown_n + 1, len(m.hints))
    for i, hint in enumerate(m.hints[:n], 1):
        print(f"提示 {i}/{len(m.hints)}：{hint}\n")
    if n == len(m.hints):
        print("这已经是最后一条提示了。（python -m kata hint %s --reset 可以从头再看）" % m.number)
    else:
        print("还需要？再运行一次同样的命令，会多给一条。")
    state["hints"][m.key] = n
    _save_state(state)
    return 0


# ---------------------------------------------------------------------------------------------
# quickstart
# ---------------------------------------------------------------------------------------------

def _run_child(cmd: list[str]) -> int:
    """运行一个实验子进程。Ctrl-C 时把 SIGINT 转给它，让它自己收拾（删临时文件、打印“已中断。”）。"""
    proc = runner.spawn(cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        try:
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        except KeyboardInterrupt:  # 又按了一次：不再等
            proc.kill()
            proc.wait()
            raise
        if rc == 130:
            raise _ChildSaidInterrupted() from None
        raise
    finally:
        runner.forget(proc)


def cmd_quickstart(args) -> int:
    print("30 分钟快速体验：依次运行课程的快速实验。\n", flush=True)
    failures = 0
    for m in MODULES:
        if not m.quickstart:
            continue
        if has_exercises(m):
            s = run_tests_cached(m, "exercises")
            if s.problem:
                impl, why = "solutions", (f"没法检查你的 {m.key}（{localize_paths(s.problem)}），这次用参考实现运行"
                                          + (f"；修复：{s.fix}" if s.fix else ""))
            elif s.total and s.passed == s.total:
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
            print("   $ " + " ".join(["python", shown(path), *cmd[2:]]) + "\n", flush=True)
            rc = _run_child(cmd)
            if rc != 0:
                failures += 1
                print(f"   （{script} 以退出码 {rc} 结束）")
            print(flush=True)
    print("快速体验结束。" + ("" if not failures else f"有 {failures} 个实验没有正常结束，见上方信息。"))
    print(f"结果（JSON 与 PNG）在各模块的 {repo_path('experiments')}/<模块>/results/ 里。下一步：python -m kata status")
    return 1 if failures else 0


# ---------------------------------------------------------------------------------------------
# 命令行
# ---------------------------------------------------------------------------------------------

# 子命令选错时的说法；其余的 argparse 报错由 kata.experiment 的中文参数解析器统一翻译
_ARGPARSE_ZH = (
    (r"argument (\S+): invalid choice: (\S+) \(choose from (.*)\)", r"没有这个命令：\2（可用的命令：\3）"),
)


def _speak_chinese(parser):
    """子命令的报错换成“没有这个命令”，再交给 kata.experiment 的中文参数解析器（它翻译其余的英文报错）去显示。"""
    original = parser.error

    def error(message):
        for pattern, repl in _ARGPARSE_ZH:
            if re.fullmatch(pattern, message):
                message = re.sub(pattern, repl, message)
                break
        original(message)

    parser.error = error
    return parser


# Tier 3 的主任务：各自是一个带 main(argv) 的模块，参数原样交给它（它们有自己的 --help）
JOBS = {
    "train": ("kata.train", "预训练你的 MiniMind（模块 09；torchrun --nproc_per_node=N -m kata.train 可多进程）"),
    "generate": ("kata.generate", "用检查点续写一段文字（KV cache，流式输出）"),
    "sft": ("kata.sft", "在预训练检查点上做监督微调（模块 10）"),
    "chat": ("kata.chat", "在终端里和你微调过的模型聊天"),
}


def build_parser():
    from kata.experiment import _chinese_parser  # 与实验脚本共用同一个中文参数解析器

    def sub_parser(**kw):
        kw.pop("formatter_class", None)
        kw.pop("add_help", None)
        return _speak_chinese(_chinese_parser(**kw))

    parser = _speak_chinese(_chinese_parser(
        prog="python -m kata", description="minimind-kata 学习进度与快速体验",
        epilog="例如：python -m kata status；python -m kata check 01；python -m kata hint 01"))
    sub = parser.add_subparsers(dest="command", title="命令",
                                metavar="{status,check,hint,quickstart," + ",".join(JOBS) + "}",
                                parser_class=sub_parser)
    p = sub.add_parser("status", help="每个模块的进度与下一步（文件没变的模块直接用上次的结果）")
    p.add_argument("--fresh", action="store_true", help="不用缓存，全部重跑")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("check", help="运行一个模块的测试（紧凑输出）")
    p.add_argument("module", metavar="模块", help="模块编号或目录名，例如 01 或 01_normalization")
    p.add_argument("--solutions", action="store_true", help="改为检查参考实现")
    p.add_argument("--impl", default=None, metavar="IMPL",
                   help="（高级）检查别的实现：bug:<名字>（bug bank 里的一个常见错误）或某个 .py 文件/目录的路径")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("hint", help="渐进提示：每次多给一条")
    p.add_argument("module", metavar="模块", help="模块编号，例如 01")
    p.add_argument("--reset", action="store_true", help="从第一条提示重新开始")
    p.set_defaults(func=cmd_hint)
    p = sub.add_parser("quickstart", help="运行课程 README 的“30 分钟快速体验”实验")
    p.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_quickstart)
    for name, (_module, text) in JOBS.items():   # 只为了出现在 --help 里；真正的参数由各自的模块解析
        sub.add_parser(name, help=text + f"（参数见 python -m kata {name} --help）")
    return parser


def _main(argv) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in JOBS:
        import importlib

        return importlib.import_module(JOBS[argv[0]][0]).main(argv[1:])
    if not argv:
        parser.print_help()
        print("\n参数错误：缺少要运行的命令。先试试 python -m kata status", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2


def main(argv=None) -> int:
    try:
        return _main(argv)
    except _ChildSaidInterrupted:
        runner.stop_children()
        return 130
    except KeyboardInterrupt:
        runner.stop_children()
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:  # 输出接到 head 之类提前关闭的管道上：安静地结束
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
