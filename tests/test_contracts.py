"""契约表（kata.testing 的“先修这一条”）的自检：每个通配都对得上真实存在的测试，after 只引用前面的契约。

测试文件里的函数改了名、契约表没跟着改，分层就会悄悄失效——这里让它变红。
"""
from __future__ import annotations

import ast
import fnmatch
import importlib.util

import pytest

from kata.impl import REPO_ROOT
from kata.testing import CONTRACTS, check_contracts
from tests.conftest import LIVE_MODULES


def _test_files(module):
    return sorted((REPO_ROOT / "exercises" / module.key).glob("test_*.py"))


def _declared(module):
    """与 conftest 的规则相同：各测试文件的 KATA_CONTRACTS 按文件顺序合并；都没有就用 kata.testing.CONTRACTS。"""
    merged = []
    for f in _test_files(module):
        if "KATA_CONTRACTS" not in f.read_text(encoding="utf-8"):
            continue
        spec = importlib.util.spec_from_file_location(f"_kata_contract_probe_{module.number}_{f.stem}", f)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        merged.extend(getattr(mod, "KATA_CONTRACTS", ()))
    return tuple(merged) or CONTRACTS.get(module.key, ())


def _test_names(module) -> set[str]:
    names = set()
    for f in _test_files(module):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


@pytest.mark.parametrize("module", LIVE_MODULES, ids=lambda m: m.key)
def test_every_contract_pattern_matches_a_real_test(module):
    contracts = check_contracts(_declared(module), module.key)
    if not contracts:
        pytest.skip(f"{module.key} 还没有声明契约（见 kata/testing.py 的模块文档）")
    names = _test_names(module)
    for c in contracts:
        for pat in c.tests:
            assert any(fnmatch.fnmatchcase(n, pat) for n in names), (
                f"{module.key} 的契约 {c.name!r} 里的 {pat!r} 对不上任何测试函数（测试改名了？）")

