"""失败信息说出真正的原因（issue 10 §2）：精度而不是数值、gradcheck 的 float32 原因、
bug bank 诊断时的警告不外传、连带失败归到“先修这一条”下面。"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

from kata import runner
from kata.impl import REPO_ROOT
from kata.testing import (CONTRACTS, Contract, assert_close, check_contracts, contract_info, matching_bugs,
                          require_gradcheck)


def _failure(fn) -> str:
    with pytest.raises(pytest.fail.Exception) as info:
        fn()
    return str(info.value)


# ---------------------------------------------------------------- 精度，而不是数值

def test_float32_downcast_of_float64_is_named_and_digits_show_the_difference():
    g = torch.Generator().manual_seed(0)
    expected = torch.randn(4, 8, generator=g, dtype=torch.float64) * 2
    actual = expected.float().double()          # 学习者写了 x.float()：float64 被降到 float32 又转回来
    msg = _failure(lambda: assert_close(actual, expected, atol=1e-10, rtol=1e-10, what="float64 输入", section="§2"))
    assert "误差约 1e-7 = float32 的精度" in msg and "x.float()" in msg and "本课要求 float64 输入保持 float64" in msg
    # “期望 …，实际 …” 两个数字必须看得出不同（以前都是 -1.96173）
    exp_s, act_s = re.search(r"期望 (\S+)，实际 (\S+)", msg).groups()
    assert exp_s != act_s, msg
    rows = re.findall(r"前几个值 \[(.*)\]", msg)
    assert len(rows) == 2 and rows[0] != rows[1], msg


def test_weight_kept_in_float32_is_also_named():
    # x 是 float64，weight 被写成 weight.float()：结果仍是 float64，但带着 float32 的舍入误差
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 16, generator=g, dtype=torch.float64)
    w = torch.rand(16, generator=g, dtype=torch.float64) + 0.5
    expected = x * w
    actual = x * w.float().double()
    msg = _failure(lambda: assert_close(actual, expected, atol=1e-12, rtol=1e-12, what="y", section="§2"))
    assert "误差约 1e-7 = float32 的精度" in msg


def test_a_small_systematic_error_is_not_blamed_on_float32():
    # eps 少加了：相对误差只有 ~5e-7，但每个元素同号同大小——这是公式错了，不是精度
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 32, generator=g, dtype=torch.float64)
    ms = x.pow(2).mean(-1, keepdim=True)
    expected, actual = x / torch.sqrt(ms + 1e-6), x / torch.sqrt(ms)
    msg = _failure(lambda: assert_close(actual, expected, atol=1e-10, rtol=1e-10, what="eps", section="§2"))
    assert "float32 的精度" not in msg, msg


def test_precision_note_is_not_given_for_real_value_errors_or_float32_inputs():
    e = torch.linspace(1, 2, 10, dtype=torch.float64)
    msg = _failure(lambda: assert_close(e * 1.01, e, atol=1e-10, rtol=1e-10, what="x", section="§1"))
    assert "float32 的精度" not in msg
    e32 = e.float()
    msg = _failure(lambda: assert_close(e32 + 1e-3, e32, atol=1e-6, rtol=1e-6, what="x", section="§1"))
    assert "float32 的精度" not in msg


def test_dtype_mismatch_float64_expected_float32_actual_explains():
    e = torch.ones(3, dtype=torch.float64)
    msg = _failure(lambda: assert_close(e.float(), e, atol=0, rtol=0, what="输出", section="§2"))
    assert "期望 dtype torch.float64，实际 torch.float32" in msg and "降到了 float32" in msg


def test_large_errors_still_print_six_digits():
    e = torch.tensor([1.0, 2.0], dtype=torch.float64)
    msg = _failure(lambda: assert_close(e + torch.tensor([0.5, 0.0], dtype=torch.float64), e, atol=1e-6, rtol=0,
                                        what="x", section="§1"))
    assert "期望 1，实际 1.5" in msg


# ---------------------------------------------------------------- gradcheck 的原因里有 float32

def test_gradcheck_hint_lists_float32_downcasting():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    msg = _failure(lambda: require_gradcheck(lambda t: (t.float() * 3).double(), (x,), "§5"))
    assert "float32" in msg and ".detach()" in msg and "原地修改" in msg
    msg = _failure(lambda: require_gradcheck(lambda t: t.float() * 3, (x,), "§5"))
    assert "你的输出是 torch.float32" in msg


# ---------------------------------------------------------------- 诊断时的警告不外传

def test_warnings_from_the_bug_bank_while_diagnosing_do_not_reach_the_learner():
    x = torch.randn(2, 8, dtype=torch.float64)

    def run(ns):
        warnings.warn("kata/bugbank/normalization.py:42: UserWarning: 只在诊断时出现", UserWarning)
        norm = ns.RMSNorm(8).double()
        return norm(x)

    sol = __import__("kata.impl", fromlist=["resolve"]).resolve("01_normalization", "solutions")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wrong = sol.RMSNorm(8).double()(x) * 1.5
        matching_bugs("01_normalization", run, wrong, sol.RMSNorm(8).double()(x), 1e-6, 1e-6)
    assert [w for w in caught if "诊断" in str(w.message)] == []


# ---------------------------------------------------------------- 契约与“先修这一条”

def test_contract_info_dependencies_are_transitive_and_unlisted_tests_depend_on_everything():
    cs = check_contracts((Contract("a", "A", ("test_a*",)), Contract("b", "B", ("test_b",), after=("a",)),
                          Contract("c", "C", ("test_c",), after=("b",)), Contract("z", "Z", ("test_z",))))
    assert contract_info("test_c[1-2]", cs) == {"contract": "c", "title": "C", "rank": 2, "deps": ["a", "b"]}
    assert contract_info("test_other", cs)["deps"] == ["a", "b", "c", "z"]
    with pytest.raises(ValueError, match="必须是写在它前面的契约"):
        check_contracts((Contract("b", "B", ("x",), after=("a",)), Contract("a", "A", ("y",))))
    with pytest.raises(ValueError, match="重复"):
        check_contracts((Contract("a", "A", ("x",)), Contract("a", "A", ("y",))))


def test_cascade_groups_dependents_under_the_root_and_keeps_independent_roots_apart():
    cs = check_contracts((Contract("freqs", "频率", ("test_freq",)), Contract("apply", "旋转", ("test_apply",)),
                          Contract("rope", "端到端", ("test_rope",), after=("freqs", "apply")),
                          Contract("sin", "正弦", ("test_sin",))))
    failed = ["test_rope", "test_freq[1]", "test_unlisted", "test_freq[2]", "test_sin"]
    groups = runner.cascade(failed, lambda n: contract_info(n, cs))
    assert [g.contract for g in groups] == ["freqs", "sin"]
    assert groups[0].primary == ["test_freq[1]", "test_freq[2]"]
    assert groups[0].dependents == ["test_rope", "test_unlisted"]
    assert groups[1].primary == ["test_sin"] and groups[1].dependents == []
    assert runner.worth_showing(groups)
    assert not runner.worth_showing(runner.cascade(["test_sin"], lambda n: contract_info(n, cs)))
    assert runner.cascade(["test_x"], lambda n: None) == []   # 没声明契约的模块：不分组


def _env():
    env = dict(os.environ)
    env.pop("KATA_IMPL", None)
    return env


def test_wrong_rope_frequency_leads_with_the_frequency_contract_in_pytest():
    p = subprocess.run([sys.executable, "-m", "pytest", "exercises/02_position_encoding", "-q", "-p", "no:cacheprovider",
                        "--impl=bug:exponent_misscaled"], cwd=REPO_ROOT, capture_output=True, text=True, env=_env(),
                       timeout=600)
    out = p.stdout
    assert p.returncode == 1, out[-3000:]
    section = out.split(" 先修这一条 ", 1)[1].split("short test summary", 1)[0]
    first = section.strip("= \n").splitlines()[0]
    assert first.startswith("先修这一条：precompute_freqs_cis 的数值"), section
    assert "✗ test_frequencies_follow_rope_base" in section and "频率指数写错" in section
    deps = section.split("很可能是它连带的", 1)[1]
    assert "test_matches_complex_number_rope" in deps and "test_yarn_" in deps
    assert "test_frequencies_follow_rope_base" not in deps
    assert "另一个独立的失败" not in section     # 只有一个根


def test_wrong_rope_frequency_leads_with_the_frequency_contract_in_kata_check():
    p = subprocess.run([sys.executable, "-m", "kata", "check", "02", "--impl", "bug:exponent_misscaled"], cwd=REPO_ROOT,
                       capture_output=True, text=True, env=_env(), timeout=600)
    body = p.stdout.split("\n", 2)[2]
    assert p.returncode == 1
    assert body.startswith("先修这一条：precompute_freqs_cis 的数值"), p.stdout[:2000]
    head, rest = body.split("很可能是它连带的", 1)
    assert "✗ test_frequencies_follow_rope_base[8-base=100]" in head and "组参数也失败了" in head
    assert "· test_matches_complex_number_rope" in rest.split("其余测试", 1)[0]


def test_stub_failures_are_not_turned_into_a_cascade():
    groups = runner.cascade([], lambda o: None)
    assert groups == []
    o = runner.TestOutcome("test_freq", "failed", "还没实现", layer={"contract": "a", "title": "A", "rank": 0, "deps": []},
                           not_implemented=True)
    # CLI 与 conftest 都先去掉“还没实现”的失败再分组
    assert runner.cascade([x for x in [o] if not x.not_implemented], lambda x: x.layer) == []


def test_registered_contract_tables_are_valid():
    for key, table in CONTRACTS.items():
        check_contracts(table, key)
