"""kata.arms：多种子对照实验的共用形状（变体 × 种子 → 表 → 逐种子配对 → 结论句）。"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from kata.arms import Arm, arms_table, describe_paired, final_values, paired, paired_row, run_arms


def _run(seed, loss, diverged_at=None):
    return {"seed": seed, "final_val_loss": loss, "diverged_at": diverged_at}


def test_final_values_marks_divergence_as_nan():
    vals = final_values([_run(0, 2.0), _run(1, 1.5, diverged_at=7)])
    assert vals[0] == 2.0 and math.isnan(vals[1])


def test_paired_uses_same_seed_and_skips_diverged():
    a = [_run(0, 2.0), _run(1, 2.1), _run(2, 2.2)]
    b = [_run(2, 2.0), _run(0, 1.7), _run(1, 9.0, diverged_at=3)]   # 顺序打乱 + 一个发散
    p = paired(a, b)
    assert p["seeds"] == [2, 0] and p["diffs"] == pytest.approx([-0.2, -0.3])
    assert p["n"] == 2 and p["mean"] == pytest.approx(-0.25)
    assert p["se"] == pytest.approx(p["std"] / math.sqrt(2))


def test_paired_verdicts():
    a = [_run(s, 2.0) for s in range(3)]
    clear = paired(a, [_run(0, 1.80), _run(1, 1.82), _run(2, 1.79)])
    assert clear["same_sign"] and clear["beyond_noise"]
    mixed = paired(a, [_run(0, 1.9), _run(1, 2.1), _run(2, 1.95)])
    assert mixed["same_sign"] is False and mixed["beyond_noise"] is False
    # 方向一致但波动大：|均值| < 2·标准误
    wobbly = paired(a, [_run(0, 1.99), _run(1, 1.5), _run(2, 1.999)])
    assert wobbly["same_sign"] and not wobbly["beyond_2se"] and wobbly["beyond_noise"] is False
    single = paired(a[:1], [_run(0, 1.0)])
    assert single["n"] == 1 and single["beyond_noise"] is None and single["se"] is None


def test_describe_paired_is_computed_from_numbers():
    a = [_run(s, 2.0) for s in range(3)]
    lower = describe_paired(paired(a, [_run(0, 1.80), _run(1, 1.82), _run(2, 1.79)]), "A", "B", expected="lower")
    assert "低 0.197" in lower and "超过了种子间的波动" in lower and "与预期一致" in lower
    higher = describe_paired(paired(a, [_run(0, 2.20), _run(1, 2.22), _run(2, 2.19)]), "A", "B", expected="lower")
    assert "高 0.203" in higher and "与预期相反" in higher
    noise = describe_paired(paired(a, [_run(0, 1.9), _run(1, 2.1), _run(2, 1.95)]), "A", "B", expected="lower")
    assert "波动之内" in noise and "方向不一致" in noise and "预期" not in noise
    one = describe_paired(paired(a[:1], [_run(0, 1.0)]), "A", "B")
    assert "无法判断" in one
    none = describe_paired(paired(a[:1], [_run(0, 1.0, diverged_at=1)]), "A", "B")
    assert "无法比较" in none


def test_paired_row_and_table():
    a = Arm("a", "甲", "A", runs=[_run(0, 2.0), _run(1, 2.2)], n_params=1234)
    b = Arm("b", "乙", "B", runs=[_run(0, 1.5), _run(1, 9.9, diverged_at=5)])
    headers, rows = arms_table([a, b])
    assert headers[-1].startswith("验证 loss（2 个种子")
    assert rows[0] == ["甲", "1,234", "2.100 ± 0.141"]
    assert rows[1][0] == "乙" and rows[1][2].startswith("1.500") and "1 次发散" in rows[1][2]
    row = paired_row("甲", "乙", paired(a.runs, b.runs))
    assert row[0] == "乙 − 甲" and row[1] == "-0.500" and row[3] == "种子不够，无法判断"


def test_run_arms_pairs_data_by_seed(tmp_path):
    """同一种子的两个完全相同的变体得到完全相同的结果（同样的数据顺序与初始化）；不同种子不同。"""
    from kata.data import load_corpus

    corpus = load_corpus("synthetic", size_mb=0.05)
    exp = SimpleNamespace(impl="solutions", device="cpu", progress=False, record_provenance=lambda p: None)
    arms = [Arm("x", "甲", "x", {}), Arm("y", "乙", "y", {}), Arm("z", "丙（更宽）", "z", {"dim": 32}),
            Arm("w", "丁（只有它 lr 不同）", "w", {}, train_kwargs={"lr": 3e-2})]
    seen = []
    run_arms(exp, corpus, arms, [0, 1], steps=3, batch=2, seq_len=16, lr=1e-3,
             base_cfg={"dim": 16, "n_layers": 1, "n_heads": 2}, eval_iters=1, final_eval_iters=2,
             before_train=lambda arm, s, model: {"at_init": (arm.key, s)},
             after_train=lambda arm, s, model, d: seen.append((arm.key, s)))
    assert seen == [("x", 0), ("x", 1), ("y", 0), ("y", 1), ("z", 0), ("z", 1), ("w", 0), ("w", 1)]
    assert arms[3].finals() != arms[0].finals()   # 每个变体自己的训练设置确实用上了
    assert [r["seed"] for r in arms[0].runs] == [0, 1]
    assert [r["at_init"] for r in arms[2].runs] == [("z", 0), ("z", 1)]
    assert arms[0].finals() == arms[1].finals()
    assert arms[0].finals()[0] != arms[0].finals()[1]
    assert arms[2].n_params > arms[0].n_params
    assert all(r["final_eval_iters"] == 2 and "final_val_loss_curve" in r for r in arms[0].runs)
    p = paired(arms[0].runs, arms[1].runs)
    assert p["diffs"] == [0.0, 0.0] and p["beyond_noise"] is False
