"""课程自检（rustlings 的 `dev check`）：对每个已上线的模块证明——

1. 原始的桩在被调用时抛出 NotImplementedError，模块的测试在桩上**全部失败**（不是 error），
   且每条失败信息都是那一行“还没实现：…”；
2. 同一批测试在参考实现上全部通过；
3. exercises/ 与 solutions/ 暴露同样的公开名字和签名；
4. bug bank 里的每个错误实现都会让模块的测试失败；
5. 模块的文档齐全、实验脚本都在。
"""
from __future__ import annotations

import inspect

import pytest

from kata.bugbank import bugs_for
from kata.curriculum import MODULES
from kata.impl import REPO_ROOT, load_side_file, resolve
from kata.runner import run_bug_bank, run_tests
from tests.conftest import pristine_stub_dir


def test_curriculum_is_consistent():
    keys = [m.key for m in MODULES]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for m in MODULES:
        for fname in m.files:
            assert (REPO_ROOT / "exercises" / m.key / fname).exists() == (REPO_ROOT / "exercises" / m.key).is_dir(), \
                f"{m.key}: exercises 目录存在时每个练习文件都必须存在（{fname}）"


def test_stub_tests_all_fail_cleanly(live_module, tmp_path):
    stub = pristine_stub_dir(live_module, tmp_path / "stub")
    s = run_tests(live_module, str(stub))
    assert s.total > 0, s.output[-2000:]
    assert s.errors == 0, f"桩上有测试 error（应该是 fail）：{[o.name for o in s.outcomes if o.status == 'error']}"
    assert s.passed == 0, f"桩上竟然有测试通过（测试没测到学习者要写的东西）：{[o.name for o in s.outcomes if o.status == 'passed']}"
    not_clean = [(o.name, o.message) for o in s.outcomes if not o.message.startswith("还没实现：")]
    assert not not_clean, f"桩上的失败信息应该只有一行“还没实现：…”：{not_clean[:3]}"


def test_stub_messages_name_file_and_section(live_module, tmp_path):
    stub = pristine_stub_dir(live_module, tmp_path / "stub")
    s = run_tests(live_module, str(stub), exitfirst=True)
    msg = s.outcomes[0].message
    assert f"exercises/{live_module.key}/" in msg and "teaching.md §" in msg, msg


def test_solutions_pass_all_tests(live_module):
    s = run_tests(live_module, "solutions")
    bad = [(o.name, o.message) for o in s.outcomes if o.status != "passed"]
    assert s.total > 0 and not bad, bad[:5]


def _signatures(obj):
    if inspect.isclass(obj):
        methods = {n: str(inspect.signature(f)) for n, f in vars(obj).items()
                   if inspect.isfunction(f) and (not n.startswith("_") or n == "__init__") and n != "_norm"}
        return methods
    return str(inspect.signature(obj))


def test_exercises_and_solutions_share_api(live_module, tmp_path):
    stub_dir = pristine_stub_dir(live_module, tmp_path / "stub")
    stub = resolve(live_module, str(stub_dir))
    sol = resolve(live_module, "solutions")
    for name in live_module.public_names:
        s_sig, r_sig = _signatures(getattr(stub, name)), _signatures(getattr(sol, name))
        if isinstance(s_sig, dict):
            # 学习者要写的公开方法（__init__、forward…）在两边签名一致；参考实现可以多一些私有辅助方法
            missing = {k: v for k, v in s_sig.items() if r_sig.get(k) != v}
            assert not missing, f"{name}：桩与参考实现的方法签名不一致 {missing} vs {r_sig}"
        else:
            assert s_sig == r_sig, f"{name}：桩 {s_sig} vs 参考实现 {r_sig}"


def test_bug_bank_is_big_enough(live_module):
    bugs = bugs_for(live_module.key)
    assert len(bugs) >= 6, f"{live_module.key} 的 bug bank 只有 {len(bugs)} 个错误实现（至少 6 个）"
    assert len({b.name for b in bugs}) == len(bugs)
    for b in bugs:
        assert b.description and set(b.overrides) <= set(live_module.public_names), b.name


@pytest.mark.timeout(900)  # 09 的 bug bank 里有真实的双进程训练；机器忙时单个模块也要几分钟
def test_every_bug_fails_the_module_tests(live_module):
    # 一个子进程、默认（learner）hypothesis 配置档：学习者拿到的测试强度就足以抓住每个错误
    per_bug = run_bug_bank(live_module)
    names = [b.name for b in bugs_for(live_module.key)]
    assert sorted(per_bug) == sorted(names), (sorted(per_bug), names, next(iter(per_bug.values())).output[-2000:] if per_bug else "")
    survivors = [n for n in names if per_bug[n].failed == 0]
    assert not survivors, f"这些错误实现通过了全部测试（测试抓不住它们）：{survivors}"
    errored = [n for n in names if per_bug[n].errors]
    assert not errored, f"这些错误实现让测试 error 而不是 fail：{errored}"


def test_module_docs_and_experiments_exist(live_module):
    d = REPO_ROOT / "exercises" / live_module.key
    for doc in ("README.md", "teaching.md", "code_guide.md", "quiz.md"):
        assert (d / doc).is_file(), f"缺少 {d / doc}"
    quiz = (d / "quiz.md").read_text(encoding="utf-8")
    assert quiz.count("<details>") >= 5, "quiz.md 至少 5 道题、答案折叠在 <details> 里"
    for exp in live_module.experiments:
        assert (REPO_ROOT / "experiments" / live_module.key / exp).is_file(), f"缺少实验 {exp}"
    for script, *_ in live_module.quickstart:
        assert script in live_module.experiments


def test_hints_exist_and_point_to_real_sections(live_module):
    """`python -m kata hint NN` 至少给 3 条提示；提示里提到的 teaching.md §x.y 必须真的存在。"""
    import re
    assert len(live_module.hints) >= 3, f"{live_module.key}: 至少需要 3 条渐进提示"
    teaching = (REPO_ROOT / "exercises" / live_module.key / "teaching.md").read_text(encoding="utf-8")
    headings = set(re.findall(r"^#+\s*§?(\d+(?:\.\d+)?)\s", teaching, flags=re.M))
    headings |= {h.split(".")[0] for h in headings}
    for hint in live_module.hints:
        for ref in re.findall(r"§(\d+(?:\.\d+)?)", hint):
            assert ref in headings, f"{live_module.key}: 提示引用了 teaching.md §{ref}，但没有这一节：{hint[:40]}…"


def test_stubs_raise_not_implemented_directly(tmp_path):
    # 模块 01 的桩：直接调用也抛 NotImplementedError，并且信息指向文件和章节
    m = MODULES[0]
    ns = resolve(m, str(pristine_stub_dir(m, tmp_path / "stub")))
    import torch

    with pytest.raises(NotImplementedError, match="rmsnorm.py · RMSNorm.forward"):
        ns.RMSNorm(4)(torch.ones(2, 4))


def test_prerequisite_stub_is_named_as_such(tmp_path):
    """03 的注意力写完了、02 的 RoPE 还是桩：失败信息要说清楚该去完成的是前置模块 02。"""
    src = (REPO_ROOT / "solutions" / "03_attention" / "attention.py").read_text(encoding="utf-8")
    src = src.replace("from solutions import RMSNorm, apply_rotary_pos_emb", (
        "from solutions import RMSNorm\n\n\n"
        "def apply_rotary_pos_emb(*args, **kwargs):\n"
        "    raise NotImplementedError('还没实现：exercises/02_position_encoding/rope.py · apply_rotary_pos_emb"
        " — 先读 teaching.md §2.4')\n"))
    assert "def apply_rotary_pos_emb" in src, "solutions/03_attention/attention.py 的 import 行变了，更新这个测试"
    (tmp_path / "attention.py").write_text(src, encoding="utf-8")
    s = run_tests("03", str(tmp_path / "attention.py"), extra_args=("-k", "matches_reference_solution"))
    failed = [o for o in s.outcomes if o.status == "failed"]
    assert failed, s.output[-2000:]
    assert all("前置模块 02_position_encoding" in o.message and "pytest exercises/02_position_encoding" in o.message
               for o in failed), [o.message for o in failed]
    assert "前置模块 02_position_encoding" in s.output
