"""在子进程里跑一个模块的测试并读回结果（CLI 的 status/check/quickstart 与 tests/ 的自检共用）。

用 pytest 自带的 --junitxml 拿到逐个测试的结果，不引入额外依赖。

三种结果要分清（学习者最怕的是“工具坏了却说我的代码坏了”）：
- 测试跑完了：``summary.problem == ""``，逐个测试的结果在 ``summary.outcomes``；
- 根本没能运行（缺 pytest / hypothesis、测试文件导入失败、超时、被中断……）：``summary.problem`` 是一句
  中文原因，``summary.fix`` 是能修好它的那一条命令（知道的话）——这时 outcomes 为空，不算学习者的失败；
- 结果来自缓存：``summary.cached`` 为真（见 ``run_tests_cached``：文件内容都没变时直接复用上一次的结果）。
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, TypeVar

from kata.curriculum import MODULES, Module, get_module, module_of_name
from kata.impl import REPO_ROOT

# 跑学习者测试需要的工具：(import 名, pip 包名)
TOOLS = (("pytest", "pytest"), ("pytest_timeout", "pytest-timeout"), ("hypothesis", "hypothesis"), ("torch", "torch"))
CONTRACT_PROPERTY = "kata_contract"      # conftest 写进 junit 的每个测试的契约信息（JSON）
NOT_IMPLEMENTED_PROPERTY = "not_implemented"
CACHE_VERSION = 1


@dataclass
class TestOutcome:
    __test__ = False     # 不是 pytest 的测试类
    name: str
    status: str          # "passed" | "failed" | "error" | "skipped"
    message: str = ""    # 失败时的第一行说明
    detail: str = ""     # 完整失败信息
    layer: Optional[dict] = None   # 契约信息（kata.testing.contract_info），没有声明时为 None
    not_implemented: bool = False  # 失败原因是“还没实现”（桩）


@dataclass
class TestSummary:
    __test__ = False
    module: str
    impl: str
    outcomes: list[TestOutcome] = field(default_factory=list)
    returncode: int = 0
    output: str = ""
    problem: str = ""    # 非空 = 测试没能运行（不是学习者代码的问题）：原因
    fix: str = ""        # 能修好 problem 的那一条命令（知道的话）
    cached: bool = False
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def ran(self) -> bool:
        return not self.problem

    @property
    def passed(self) -> int:
        return self.count("passed")

    @property
    def failed(self) -> int:
        return self.count("failed")

    @property
    def errors(self) -> int:
        return self.count("error")

    @property
    def total(self) -> int:
        return len(self.outcomes)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("output", None)
        d.pop("cached", None)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "TestSummary":
        outcomes = [TestOutcome(**o) for o in d.pop("outcomes", [])]
        return cls(outcomes=outcomes, **d)


# ---------------------------------------------------------------------------------------------
# 路径与命令的显示
# ---------------------------------------------------------------------------------------------

def shown(path: Path | str) -> str:
    """给学习者看的路径：在当前目录之下就写相对路径，否则写绝对路径——从运行命令的地方能直接打开。"""
    p = Path(path).resolve()
    try:
        rel = p.relative_to(Path.cwd().resolve())
    except ValueError:
        return str(p)
    return str(rel) if str(rel) != "." else "."


def repo_path(rel: str) -> str:
    """仓库里的相对路径（如 "exercises/01_normalization/teaching.md"）→ 从当前目录看的路径。"""
    return shown(REPO_ROOT / rel)


_REPO_REL = re.compile(r"(?<![\w./-])((?:exercises|solutions|experiments)/[\w./-]*)")


def localize_paths(text: str) -> str:
    """把文字里以 exercises/、solutions/、experiments/ 开头的仓库相对路径换成从当前目录看的路径。"""
    if Path.cwd().resolve() == REPO_ROOT:
        return text
    return _REPO_REL.sub(lambda m: repo_path(m.group(1)), text)


def python_cmd() -> str:
    """在提示里写的 python：PATH 上的 python 就是当前解释器时写 python，否则写完整路径。"""
    found = shutil.which("python")
    try:
        if found and Path(found).resolve() == Path(sys.executable).resolve():
            return "python"
    except OSError:
        pass
    return shlex.quote(sys.executable)


def install_command() -> str:
    """装齐学习者工具的那一条命令（pytest、pytest-timeout、hypothesis 都是 kata 的运行时依赖）。"""
    return f"{python_cmd()} -m pip install -e {shlex.quote(shown(REPO_ROOT))}"


def missing_tools() -> list[str]:
    """当前解释器里缺哪些跑测试要用的包（pip 包名）。"""
    missing = []
    for mod, pkg in TOOLS:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(pkg)
    return missing


def _missing_tool_problem(missing: list[str]) -> tuple[str, str]:
    why = (f"没法运行测试：当前的 Python（{sys.executable}）里没有装 {'、'.join(missing)}。"
           "这不是你的代码的问题")
    if "torch" in missing:
        fix = (f"{python_cmd()} -m pip install torch --index-url https://download.pytorch.org/whl/cpu"
               f" && {install_command()}")
    else:
        fix = install_command()
    return why, fix


# ---------------------------------------------------------------------------------------------
# 子进程：统一登记，Ctrl-C 时一个不剩地停掉
# ---------------------------------------------------------------------------------------------

_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()
_STOPPING = threading.Event()


class Interrupted(KeyboardInterrupt):
    """run_tests 在 stop_children() 之后被调用，或它的子进程被 stop_children() 停掉了。"""


def spawn(cmd: list[str], **kw) -> subprocess.Popen:
    """启动一个登记在案的子进程。它在自己的进程组里：终端的 Ctrl-C 只送到 kata，由 kata 决定怎么停它。"""
    if _STOPPING.is_set():
        raise Interrupted()
    if os.name == "posix":
        kw.setdefault("start_new_session", True)
    proc = subprocess.Popen(cmd, **kw)
    with _LIVE_LOCK:
        _LIVE.add(proc)
    return proc


def forget(proc: subprocess.Popen) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(proc)


def stop_children(grace: float = 3.0) -> None:
    """停掉所有登记的子进程（先 SIGINT，让它们自己收拾；grace 秒后还在就强杀），之后不再启动新的。"""
    _STOPPING.set()
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGINT)
            except OSError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ---------------------------------------------------------------------------------------------
# 运行测试
# ---------------------------------------------------------------------------------------------

def run_bug_bank(module: Module | str, *, timeout: float = 900) -> dict[str, TestSummary]:
    """在一个子进程里把模块的全部测试在 bug bank 的每个错误实现上各跑一遍，按 bug 分组返回。"""
    m = get_module(module) if isinstance(module, str) else module
    whole = run_tests(m, "solutions", extra_args=("--bug-bank",), timeout=timeout)
    if whole.problem:
        raise RuntimeError(f"{whole.problem}\n{whole.output[-3000:]}")
    per_bug: dict[str, TestSummary] = {}
    for o in whole.outcomes:
        found = re.search(r"bug:([A-Za-z0-9_]+)", o.name)
        key = found.group(1) if found else "<unknown>"
        per_bug.setdefault(key, TestSummary(m.key, f"bug:{key}", output=whole.output)).outcomes.append(o)
    return per_bug


def exercise_dir(module: Module) -> Path:
    return REPO_ROOT / "exercises" / module.key


def has_exercises(module: Module) -> bool:
    d = exercise_dir(module)
    return d.is_dir() and any(d.glob("test_*.py"))


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        line = line.strip().removeprefix("Failed:").removeprefix("E ").strip()
        if line:
            return line
    return ""


def _tool_in(text: str) -> Optional[str]:
    found = re.search(r"No module named '([\w.]+)'", text or "")
    if not found:
        return None
    top = found.group(1).split(".")[0]
    return next((pkg for mod, pkg in TOOLS if mod == top), None)


def _parse_junit(xml_path: Path, summary: TestSummary) -> None:
    collection_errors = []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        name = case.get("name", "?")
        status, message, detail = "passed", "", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                status = {"failure": "failed"}.get(tag, tag)
                detail = (node.text or node.get("message") or "").strip()
                message = _first_line(node.get("message") or node.text or "")
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        if status == "error" and node is not None and node.get("message") == "collection failure":
            collection_errors.append((case.get("classname") or name, detail))
            continue
        layer = None
        if props.get(CONTRACT_PROPERTY):
            try:
                layer = json.loads(props[CONTRACT_PROPERTY])
            except ValueError:
                layer = None
        summary.outcomes.append(TestOutcome(name, status, message, detail, layer,
                                            NOT_IMPLEMENTED_PROPERTY in props))
    if collection_errors:
        where, detail = collection_errors[0]
        tool = _tool_in(detail)
        if tool:
            summary.problem, summary.fix = _missing_tool_problem([tool])
        else:
            last = [ln.strip() for ln in detail.splitlines() if ln.strip()]
            summary.problem = (f"测试文件 {where} 没能导入（{last[-1] if last else '原因未知'}）。"
                               "这是测试本身的问题，不是你的代码的问题")
            summary.fix = "git status  # 看看测试文件是否被改动过；git checkout -- <那个测试文件> 可以还原"
        summary.outcomes.clear()


def run_tests(
    module: Module | str,
    impl: str = "exercises",
    *,
    exitfirst: bool = False,
    extra_args: tuple[str, ...] = (),
    timeout: float = 900,
) -> TestSummary:
    """跑 exercises/<模块>/ 下的测试，impl 可以是 exercises / solutions / bug:<名字> / 路径。

    没能运行时（缺工具、测试文件导入失败、超时）返回的 summary 带 problem / fix，outcomes 为空。
    """
    m = get_module(module) if isinstance(module, str) else module
    summary = TestSummary(m.key, impl)
    missing = missing_tools()
    if missing:
        summary.problem, summary.fix = _missing_tool_problem(missing)
        return summary
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kata-run-") as tmp:
        xml_path = Path(tmp) / "report.xml"
        cmd = [
            sys.executable, "-m", "pytest", str(exercise_dir(m)), f"--impl={impl}", "-q",
            "-p", "no:cacheprovider", f"--junitxml={xml_path}", "-o", "junit_family=xunit1",
            # 测试的 tmp_path 也放进这个临时目录：跑完（或被 Ctrl-C 停下）后一起删掉，不在系统临时目录里留东西
            f"--basetemp={Path(tmp) / 'basetemp'}",
        ]
        if exitfirst:
            cmd.append("-x")
        cmd.extend(extra_args)
        env = dict(os.environ)
        env.pop("KATA_IMPL", None)
        # 小张量上多线程只有开销；两个子进程并行时还会互相抢核（见 conftest.py 的 set_num_threads）
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = spawn(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                     encoding="utf-8", errors="replace", env=env)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            summary.problem = f"测试运行超过 {timeout:.0f} 秒被停下了（机器太忙，或者某个测试卡住了）"
            summary.fix = f"python -m pytest {shown(exercise_dir(m))} -x  # 直接运行，看卡在哪个测试"
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            forget(proc)
        summary.returncode, summary.output = proc.returncode, out or ""
        summary.seconds = time.perf_counter() - t0
        if _STOPPING.is_set() and proc.returncode != 0:
            raise Interrupted()
        if summary.problem:
            return summary
        if xml_path.exists():
            _parse_junit(xml_path, summary)
    if summary.problem or (summary.outcomes and summary.returncode in (0, 1)):
        return summary
    # 没有可用的逐测试结果：pytest 的参数错误（退出码 4）、没收集到测试（5）、内部错误（3）……
    text = summary.output
    tool = _tool_in(text)
    if tool:
        summary.problem, summary.fix = _missing_tool_problem([tool])
    elif summary.returncode == 5:
        summary.problem = f"在 {shown(exercise_dir(m))} 里没有收集到任何测试"
    elif not summary.outcomes:
        err = next((ln.strip().removeprefix("ERROR:").strip() for ln in text.splitlines()
                    if ln.strip().startswith("ERROR")), "") or _first_line(text[-2000:])
        summary.problem = f"pytest 没能运行（退出码 {summary.returncode}）：{err or '没有输出'}"
    return summary


# ---------------------------------------------------------------------------------------------
# 缓存：文件都没变，就复用上一次的结果
# ---------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """结果缓存放在仓库根目录的 .kata-cache/（目录里自带一个内容为 * 的 .gitignore，不会进 git）。

    KATA_RESULT_CACHE 可以改到别处（测试用）。
    """
    return Path(os.environ.get("KATA_RESULT_CACHE") or REPO_ROOT / ".kata-cache")


def _imported_modules(py: Path) -> set[str]:
    """一个练习文件用 ``from exercises import X`` / ``exercises.X`` 用到了哪些模块的名字。"""
    try:
        text = py.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return set()
    if "exercises" not in text:
        return set()
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "exercises":
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "exercises":
            names.add(node.attr)
    keys = set()
    for n in names:
        try:
            keys.add(module_of_name(n)[0].key)
        except AttributeError:
            pass
    return keys


def depends_on(module: Module) -> list[Module]:
    """这个模块的练习文件（传递地）import 了哪些模块的练习：包括它自己，按课程顺序。"""
    todo, seen = [module.key], {module.key}
    while todo:
        key = todo.pop()
        for py in sorted((REPO_ROOT / "exercises" / key).glob("*.py")):
            if py.name.startswith("test_"):
                continue  # 测试按 kata.impl.resolve 加载实现，不直接 import exercises
            for dep in _imported_modules(py) - seen:
                seen.add(dep)
                todo.append(dep)
    return [m for m in MODULES if m.key in seen]


@functools.lru_cache(maxsize=None)
def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "cache": CACHE_VERSION}
    for pkg in ("minimind-kata", "torch", "pytest", "pytest-timeout", "hypothesis"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def fingerprint(module: Module | str, impl: str = "exercises") -> str:
    """缓存的键：模块的练习与测试文件 + 它（传递地）import 的前面模块的练习文件 + 参考实现 +
    kata 自己的代码与版本 + Python / torch / pytest / hypothesis 的版本 + hypothesis 配置档。"""
    m = get_module(module) if isinstance(module, str) else module
    files: set[Path] = set()
    for dep in depends_on(m):
        files.update((REPO_ROOT / "exercises" / dep.key).glob("*.py"))
    for side in ("exercises", "solutions"):
        files.add(REPO_ROOT / side / "__init__.py")
    files.update((REPO_ROOT / "solutions").glob("*/*.py"))
    files.update((REPO_ROOT / "kata").rglob("*.py"))
    files.update({REPO_ROOT / "conftest.py", REPO_ROOT / "pyproject.toml"})
    h = hashlib.sha256()
    h.update(json.dumps({"impl": impl, "module": m.key, "versions": _versions(),
                         "profile": os.environ.get("KATA_HYPOTHESIS_PROFILE", "")}, sort_keys=True).encode())
    for f in sorted(files):
        h.update(str(f.relative_to(REPO_ROOT)).encode() + b"\0")
        h.update(_file_digest(f))
    return h.hexdigest()


_DIGESTS: dict[tuple, bytes] = {}


def _file_digest(f: Path) -> bytes:
    """文件内容的 sha256（同一进程里按 路径+大小+修改时间 记住，status 要给每个模块各算一遍）。"""
    try:
        st = f.stat()
    except OSError:
        return b"<missing>"
    key = (str(f), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        try:
            _DIGESTS[key] = hashlib.sha256(f.read_bytes()).digest()
        except OSError:
            return b"<missing>"
    return _DIGESTS[key]


def _cache_file(m: Module, impl: str) -> Path:
    # 每个 Python 环境一个文件：同一份代码在两个 venv 里交替运行时不会互相覆盖
    env = hashlib.sha256(sys.executable.encode()).hexdigest()[:8]
    return cache_dir() / "tests" / f"{m.key}--{impl}--{env}.json"


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def store_cached(summary: TestSummary, key: str) -> None:
    """把一次真正跑完的结果存进缓存（没能运行的结果不存）。缓存目录写不了就算了。"""
    if summary.problem or not summary.outcomes or summary.impl not in ("exercises", "solutions"):
        return
    m = get_module(summary.module)
    try:
        root = cache_dir()
        root.mkdir(parents=True, exist_ok=True)
        ignore = root / ".gitignore"
        if not ignore.exists():
            ignore.write_text("# kata 的结果缓存（python -m kata status/check），可以随时删掉\n*\n", encoding="utf-8")
        record = {"key": key, "saved": time.strftime("%Y-%m-%d %H:%M:%S"), "summary": summary.to_json()}
        _atomic_write_text(_cache_file(m, summary.impl), json.dumps(record, ensure_ascii=False))
    except OSError:
        pass


def load_cached(module: Module | str, impl: str, key: str) -> Optional[TestSummary]:
    m = get_module(module) if isinstance(module, str) else module
    try:
        record = json.loads(_cache_file(m, impl).read_text(encoding="utf-8"))
        if record.get("key") != key:
            return None
        summary = TestSummary.from_json(record["summary"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    summary.cached = True
    return summary


def run_tests_cached(module: Module | str, impl: str = "exercises", *, use_cache: bool = True,
                     timeout: float = 900) -> TestSummary:
    """同 run_tests，但文件内容都没变时直接返回上一次的结果（summary.cached 为真）；跑完就更新缓存。"""
    m = get_module(module) if isinstance(module, str) else module
    key = fingerprint(m, impl)
    if use_cache:
        hit = load_cached(m, impl, key)
        if hit is not None:
            return hit
    summary = run_tests(m, impl, timeout=timeout)
    if fingerprint(m, impl) == key:  # 运行期间文件被改了就不存：那份结果说不清对应的是哪个版本
        store_cached(summary, key)
    return summary


# ---------------------------------------------------------------------------------------------
# 先修这一条：把失败按契约分层
# ---------------------------------------------------------------------------------------------

T = TypeVar("T")


@dataclass
class CascadeGroup:
    contract: str
    title: str
    primary: list = field(default_factory=list)      # 这个契约自己的失败测试（先修这些）
    dependents: list = field(default_factory=list)   # 依赖它、很可能被它连带的失败测试


def cascade(failures: Iterable[T], layer_of: Callable[[T], Optional[dict]]) -> list[CascadeGroup]:
    """把失败的测试分组：每个“根”契约（自己失败了、它依赖的契约都没失败）一组，依赖它的失败归在它下面。

    layer_of(测试) 返回 kata.testing.contract_info 的结果（None = 这个模块没有声明契约）。
    没有任何根契约（只有未分层的测试失败，或模块没有声明契约）时返回 []。
    """
    items = [(f, layer_of(f)) for f in failures]
    items = [(f, info) for f, info in items if info is not None]
    failing = {info["contract"] for _, info in items if info["contract"]}
    ranks = {info["contract"]: info["rank"] for _, info in items if info["contract"]}
    roots = sorted((c for c in failing
                    if not set(next(i["deps"] for _, i in items if i["contract"] == c)) & failing),
                   key=ranks.get)
    groups = {}
    for c in roots:
        title = next(i["title"] for _, i in items if i["contract"] == c)
        groups[c] = CascadeGroup(c, title)
    for f, info in items:
        if info["contract"] in groups:
            groups[info["contract"]].primary.append(f)
            continue
        owner = next((r for r in roots if r in info["deps"]), None)
        if owner is not None:
            groups[owner].dependents.append(f)
    return [groups[c] for c in roots]


def worth_showing(groups: list[CascadeGroup]) -> bool:
    """只有一个失败时没有“连带”可言；有依赖的失败，或有不止一个独立的根时才值得单独讲。"""
    return bool(groups) and (len(groups) > 1 or any(g.dependents for g in groups))


def by_function(items: Iterable[T], name_of: Callable[[T], str]) -> list[tuple[T, list[str]]]:
    """把同一个测试函数的不同参数归到一起：[(第一个, [其余的参数部分…]), …]，保持顺序。"""
    groups: dict[str, tuple[T, list[str]]] = {}
    for it in items:
        name = name_of(it)
        base, _, params = name.partition("[")
        if base in groups:
            groups[base][1].append("[" + params if params else name)
        else:
            groups[base] = (it, [])
    return list(groups.values())
