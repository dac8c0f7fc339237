"""kata.sft_data：离线指令数据（确定、答案可验证、按实例划分）与 minimind SFT jsonl 的读写。"""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, strategies as st

from kata import sft_data as D
from kata.impl import resolve


def _independent_answer(e: D.Example) -> str:
    """从题面里把参数读回来，另算一遍答案（与生成器的写法无关）。"""
    nums = [int(x) for x in re.findall(r"\d+", e.prompt)]
    if e.task == "add":
        return str(nums[0] + nums[1])
    if e.task == "sub":
        a, b = nums if not e.prompt.startswith("Subtract") else nums[::-1]
        return str(a - b)
    words = [w for w in re.findall(r"[a-z]+", e.prompt) if w in D.WORDS]
    if e.task == "reverse":
        return "".join(reversed(words[-1]))
    if e.task == "upper":
        return "".join(chr(ord(ch) - 32) for ch in words[-1])
    if e.task == "count":
        w, c = e.key.split(",")
        assert w in e.prompt and re.search(rf"(letter |字母){c}\b|字母{c}", e.prompt)
        return str(sum(1 for ch in w if ch == c))
    if e.task == "next_letter":
        c = e.key
        assert c in e.prompt
        return "abcdefghijklmnopqrstuvwxyz"["abcdefghijklmnopqrstuvwxyz".index(c) + 1]
    if e.task == "next_number":
        return str(nums[0] + 1)
    if e.task == "copy":
        return e.prompt.split("：", 1)[-1].split(": ", 1)[-1]
    raise AssertionError(e.task)


@given(st.integers(0, 10_000), st.sampled_from(D.SPLITS))
def test_every_answer_is_right(seed, split):
    for e in D.make_examples(40, split, seed):
        assert e.answer == _independent_answer(e), e
        assert D.check_answer(e, " " + e.answer + "\n") and not D.check_answer(e, e.answer + "x")


def test_deterministic_and_seed_dependent():
    a = D.make_examples(50, "train", 3)
    assert a == D.make_examples(50, "train", 3)
    assert a != D.make_examples(50, "train", 4)
    assert [e.task for e in a[:8]] == list(D.TASKS), "任务按 TASKS 轮流"


def test_held_out_split_is_by_instance():
    train = D.make_examples(2000, "train", 0)
    held = D.make_examples(500, "held_out", 0)
    tk = {(e.task, e.key) for e in train}
    hk = {(e.task, e.key) for e in held}
    assert not tk & hk, "同一个实例不能同时出现在 train 和 held_out（换个问法也不行）"
    assert all(D.split_of(e.task, e.key) == "train" for e in train)
    assert all(D.split_of(e.task, e.key) == "held_out" for e in held)
    # 划分与种子、模板、语言都无关：另一个种子抽到的 held_out 实例也不在任何种子的 train 里
    other = D.make_examples(500, "train", 99)
    assert not hk & {(e.task, e.key) for e in other}
    # 大约 20% 的 add 实例在 held_out（10000 个实例，期望 2000）
    frac = sum(D.split_of("add", f"{a},{b}") == "held_out" for a in range(100) for b in range(100)) / 10_000
    assert 0.17 < frac < 0.23, frac


def test_both_languages_and_all_templates_appear():
    ex = D.make_examples(800, "train", 1)
    assert {e.lang for e in ex} == {"en", "zh"}
    used = {(e.task, e.lang) for e in ex}
    assert used == {(t, lang) for t in D.TASKS for lang in D.LANGS}
    assert any(re.search(r"[\u4e00-\u9fff]", e.prompt) for e in ex if e.lang == "zh")
    only_en = D.make_examples(50, "train", 1, tasks=("add",), langs=("en",))
    assert all(e.task == "add" and e.lang == "en" and e.prompt.isascii() for e in only_en)


def test_alphabet_covers_every_character():
    ex = D.make_examples(500, "train", 2) + D.make_examples(200, "held_out", 2)
    alpha = set(D.alphabet())
    missing = {ch for e in ex for ch in e.prompt + e.answer} - alpha
    assert not missing, missing
    assert set(D.alphabet(ex)) >= {ch for e in ex for ch in e.prompt + e.answer}


def test_messages_and_accuracy():
    e = D.make_examples(1, "train", 0)[0]
    assert e.messages() == [{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.answer}]
    assert e.messages(with_answer=False, system="S")[0] == {"role": "system", "content": "S"}
    ex = D.make_examples(16, "held_out", 0)
    replies = [e.answer if i % 2 == 0 else "?" for i, e in enumerate(ex)]
    acc = D.accuracy_by_task(ex, replies)
    assert acc["all"] == 0.5 and set(acc) == set(D.TASKS) | {"all"}
    with pytest.raises(D.SFTDataError):
        D.accuracy_by_task(ex, replies[:-1])


@pytest.mark.parametrize("kwargs", [dict(n=-1), dict(n=2.0), dict(n=3, split="test"), dict(n=3, tasks=("nope",)),
                                    dict(n=3, langs=()), dict(n=3, langs=("fr",))], ids=str)
def test_bad_arguments_are_explained_in_chinese(kwargs):
    with pytest.raises(D.SFTDataError, match=r"[\u4e00-\u9fff]"):
        D.make_examples(**kwargs)


# ---------------------------------------------------------------- minimind jsonl

MINIMIND_ROWS = [
    {"conversations": [{"role": "user", "content": "你好", "reasoning_content": None, "tools": None, "tool_calls": None},
                       {"role": "assistant", "content": "你好！我是minimind。", "reasoning_content": "",
                        "tools": "", "tool_calls": ""}]},
    {"conversations": [{"role": "system", "content": "You are a helpful AI assistant."},
                       {"role": "user", "content": "1+1=?"}, {"role": "assistant", "content": "2"},
                       {"role": "user", "content": "再加1呢"}, {"role": "assistant", "content": "3"}]},
]


def test_reads_a_minimind_sft_jsonl_file(tmp_path):
    path = tmp_path / "sft_mini.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in MINIMIND_ROWS) + "\n\n", encoding="utf-8")
    convs = D.read_sft_jsonl(path)
    assert convs == [[{"role": m["role"], "content": m["content"]} for m in r["conversations"]] for r in MINIMIND_ROWS]
    assert D.read_sft_jsonl(path, limit=1) == convs[:1]
    # 读出来的对话直接能进模块 10 的模板和数据集（参考实现）
    ref = resolve("10_sft", "solutions")
    text = ref.apply_chat_template(convs[1])
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n") and text.endswith("3<|im_end|>\n")


def test_keeps_non_empty_tool_fields_so_the_template_can_refuse_them(tmp_path):
    path = tmp_path / "tools.jsonl"
    row = {"conversations": [{"role": "user", "content": "天气？"},
                             {"role": "assistant", "content": "", "tool_calls": "[{\"name\": \"weather\"}]"}]}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    conv = D.read_sft_jsonl(path)[0]
    assert conv[1]["tool_calls"]
    with pytest.raises(ValueError, match="tool_calls"):
        resolve("10_sft", "solutions").apply_chat_template(conv)


@pytest.mark.parametrize("content, where", [
    ('{"conversations": [{"role": "user", "content": "a"}]}\n{not json}\n', "第 2 行"),
    ('{"text": "pretrain style"}\n', "第 1 行"),
    ('{"conversations": []}\n', "第 1 行"),
    ('{"conversations": [{"role": "user", "content": 5}]}\n', "第 0 条消息"),
])
def test_bad_lines_name_the_line(tmp_path, content, where):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(D.SFTDataError, match=where):
        D.read_sft_jsonl(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(D.SFTDataError, match="找不到"):
        D.read_sft_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(D.SFTDataError, match="目录"):
        D.read_sft_jsonl(tmp_path)


def test_write_then_read_round_trip_atomically(tmp_path):
    convs = [e.messages() for e in D.make_examples(20, "train", 5)]
    path = D.write_sft_jsonl(tmp_path / "out" / "gen.jsonl", convs)
    assert D.read_sft_jsonl(path) == convs
    assert "加" in path.read_text(encoding="utf-8") or "\\u" not in path.read_text(encoding="utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["gen.jsonl"], "不应留下临时文件"

    class Boom(Exception):
        pass

    def gen():
        yield convs[0]
        raise Boom

    with pytest.raises(Boom):
        D.write_sft_jsonl(path, gen())
    assert D.read_sft_jsonl(path) == convs, "写到一半出错时，原文件应保持不变"
    assert [p.name for p in path.parent.iterdir()] == ["gen.jsonl"]
