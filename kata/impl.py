"""实现切换：测试、实验、CLI 共用的唯一加载器。

一个“实现”（impl）可以是：
- ``"exercises"``：学习者自己的代码（默认）；
- ``"solutions"``：参考实现；
- ``"bug:<名字>"``：bug bank 中的一个常见错误实现（见 kata/bugbank），用于证明测试能抓住它；
- 一个 ``.py`` 文件或目录的路径：任意其他实现（目录里放与 exercises/NN/ 同名的文件）。

``01_x`` 不是合法的 Python 标识符，所以模块一律按路径加载，并以
``<side>._<模块目录>.<文件名>`` 的名字登记在 sys.modules 里（同一进程内同一个文件只加载一次，
类的身份保持一致）。
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

from kata.curriculum import Module, get_module, module_of_name

REPO_ROOT = Path(__file__).resolve().parent.parent
SIDES = ("exercises", "solutions")
ENV_VAR = "KATA_IMPL"

_default_impl: str | None = None


def set_default_impl(impl: str | None) -> None:
    """conftest 用它把 ``--solutions`` / ``--impl`` 传给所有测试。"""
    global _default_impl
    _default_impl = impl


def default_impl() -> str:
    return _default_impl or os.environ.get(ENV_VAR) or "exercises"


def describe(impl: str) -> str:
    if impl == "exercises":
        return "你的实现（exercises/）"
    if impl == "solutions":
        return "参考实现（solutions/）"
    if impl.startswith("bug:"):
        return f"bug bank 中的错误实现『{impl[4:]}』"
    return f"文件 {impl}"


class ImplLoadError(ImportError):
    """实现文件不存在或无法导入。"""


IMPL_FORMS = "exercises（你的代码）、solutions（参考实现）、bug:<名字>（bug bank），或一个存在的 .py 文件/目录的路径"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def check_impl(impl: str, modules=None, *, source: str = "--impl") -> str:
    """在真正加载之前检查一个 impl 的值；不合法时抛 ImplLoadError（一句中文，说清是哪里不对）。

    modules：要用它的模块（Module 或目录名）；给了的话，``bug:<名字>`` 要在其中某个模块的 bug bank 里。
    返回规范化的值（路径变成绝对路径）。pytest 的 --impl / KATA_IMPL 与实验的 --impl 都用它。
    """
    if impl in SIDES:
        return impl
    if impl.startswith("bug:"):
        name = impl[4:]
        if modules:
            from kata.bugbank import bugs_for, get_bug

            keys = [m if isinstance(m, str) else m.key for m in modules]
            keys = [get_module(k).key for k in keys]
            if not any(b.name == name for k in keys for b in bugs_for(k)):
                get_bug(keys[0], name)  # 抛出列出可用名字的那个错误
        elif not name:
            raise ImplLoadError(f"{source} 的值 {impl!r}：bug: 后面要写一个 bug 的名字（{IMPL_FORMS}）")
        return impl
    path = Path(impl).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if not path.exists():
        looks_like_path = any(ch in impl for ch in "/\\.") or impl.startswith("~")
        if looks_like_path:
            raise ImplLoadError(f"{source}：文件不存在：{_shown(path)}（{source} 可以是 {IMPL_FORMS}）")
        raise ImplLoadError(f"{source} 的值 {impl!r} 不是可用的实现：应为 {IMPL_FORMS}"
                            f"（也没有叫 {_shown(path)} 的文件）")
    return str(path.resolve())


def _load_file(path: Path, modname: str) -> ModuleType:
    path = path.resolve()
    cached = sys.modules.get(modname)
    if cached is not None and getattr(cached, "__file__", None) == str(path):
        return cached
    if not path.is_file():
        raise ImplLoadError(f"文件不存在：{_shown(path)}" + ("（这是一个目录，里面应有同名的 .py 文件）" if path.is_dir() else ""))
    spec = importlib.util.spec_from_file_location(modname, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(modname, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise ImplLoadError(
            f"无法导入 {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}："
            f"{type(exc).__name__}: {exc}（先让这个文件能被 import：检查语法错误和拼写）"
        ) from exc
    return module


def side_file(side: str, module: Module | str, filename: str) -> Path:
    m = get_module(module) if isinstance(module, str) else module
    return REPO_ROOT / side / m.key / filename


def load_side_file(side: str, module: Module | str, filename: str) -> ModuleType:
    if side not in SIDES:
        raise ValueError(f"side 只能是 {SIDES} 之一，实际 {side!r}")
    m = get_module(module) if isinstance(module, str) else module
    stem = Path(filename).stem
    return _load_file(side_file(side, m, filename), f"{side}._{m.key}.{stem}")


def side_getattr(side: str, name: str):
    """exercises/__init__.py 与 solutions/__init__.py 的懒加载 ``__getattr__``。"""
    try:
        m, fname = module_of_name(name)
    except AttributeError:
        raise AttributeError(f"module {side!r} has no attribute {name!r}") from None
    if not side_file(side, m, fname).is_file():
        raise AttributeError(
            f"{side}/{m.key}/{fname} 还不存在，无法提供 {name}（这个模块还没有上线）"
        )
    return getattr(load_side_file(side, m, fname), name)


def side_dir(side: str) -> list[str]:
    from kata.curriculum import MODULES

    return sorted(
        n for m in MODULES for f, names in m.files.items() if side_file(side, m, f).is_file() for n in names
    )


def resolve(module: Module | str, impl: str | None = None) -> SimpleNamespace:
    """把一个模块的公开名字按 impl 装进一个命名空间返回。

    返回的命名空间还带有 ``_impl``（实现标签）和 ``_files``（加载了哪些文件）。
    """
    m = get_module(module) if isinstance(module, str) else module
    impl = impl or default_impl()
    ns = SimpleNamespace(_impl=impl, _module=m.key, _files=[])
    if impl in SIDES:
        for fname, names in m.files.items():
            mod = load_side_file(impl, m, fname)
            ns._files.append(mod.__file__)
            for n in names:
                if not hasattr(mod, n):
                    raise ImplLoadError(f"{impl}/{m.key}/{fname} 里没有定义 {n}（要导出的名字见 exercises/{m.key}/{fname} 里的桩）")
                setattr(ns, n, getattr(mod, n))
        return ns
    if impl.startswith("bug:"):
        from kata.bugbank import get_bug

        bug = get_bug(m.key, impl[4:])
        base = resolve(m, "solutions")
        for n in m.public_names:
            setattr(ns, n, getattr(base, n))
        for n, obj in bug.overrides.items():
            setattr(ns, n, obj)
        ns._files = [f"bug:{bug.name}"]
        return ns
    path = Path(impl).expanduser()
    if not path.is_absolute():
        path = (Path.cwd() / path).resolve()
    if not path.exists():
        check_impl(impl, source=f"--impl / {ENV_VAR}")  # 抛出“文件不存在”或“不是可用的实现”
    for fname, names in m.files.items():
        fpath = path / fname if path.is_dir() else path
        mod = _load_file(fpath, f"kata_external._{m.key}.{abs(hash(str(fpath)))}.{Path(fname).stem}")
        ns._files.append(mod.__file__)
        for n in names:
            if not hasattr(mod, n):
                raise ImplLoadError(f"{_shown(fpath)} 里没有定义 {n}（要导出的名字见 exercises/{m.key}/{fname} 里的桩）")
            setattr(ns, n, getattr(mod, n))
    return ns


def component(name: str, impl: str | None = None):
    """取一个公开名字（例如 ``component("RMSNorm", "exercises")``）。"""
    m, _ = module_of_name(name)
    return getattr(resolve(m, impl), name)
