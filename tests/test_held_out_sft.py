"""模块 10：“不在 bug bank 里”的错误模板 / 数据集也必须被抓住，并且失败信息要点出概念。

这些实现故意不放进 kata/bugbank/sft.py：它们模拟测试作者没有预料到的学习者错误。每一个都是在参考实现的源码上
改一行（改之前先确认那一行还在，参考实现改了就让这个测试提醒更新）。
"""
from __future__ import annotations

import pytest

from kata.impl import REPO_ROOT
from kata.runner import run_tests

SOLUTION = REPO_ROOT / "solutions" / "10_sft" / "sft.py"

HELD_OUT = {
    # 照 minimind-3 模板的默认分支，在生成提示后加了空思考块（训练数据里没有它）
    "think_block_in_generation_prompt": (
        "parts.append(ASSISTANT_HEADER)",
        'parts.append(ASSISTANT_HEADER + "<think>\\n\\n</think>\\n\\n")'),
    # 截断的是字符串而不是 token
    "truncate_the_string": (
        "ids = list(self.tokenizer.encode(prompt))[: self.max_length]",
        "ids = list(self.tokenizer.encode(prompt[: self.max_length]))"),
    # 内容被 strip 了（“顺手清理一下空白”）
    "stripped_content": (
        'parts = [f"{IM_START}{role}\\n{content}{IM_END}\\n" for role, content in _checked_messages(messages)]',
        'parts = [f"{IM_START}{role}\\n{content.strip()}{IM_END}\\n" for role, content in _checked_messages(messages)]'),
    # 开头标记里少了换行（MiniMind2 的 bos_id，却没有它的 start + 1）：角色头后的换行进了 loss
    "bos_without_newline": (
        "self.bos_id = list(tokenizer.encode(ASSISTANT_HEADER))",
        'self.bos_id = list(tokenizer.encode(IM_START + "assistant"))'),
    # 用 0 而不是 −100 表示“不算 loss”（像乘一个 0/1 掩码那样）
    "zero_instead_of_ignore": (
        "labels = [IGNORE_INDEX] * n",
        "labels = [0] * n"),
    # 先遍历检查、再 list()：传进来的是生成器时检查已经把它耗尽，数据集静悄悄地变成空的
    "one_shot_iterable_consumed": (
        "if isinstance(conversations, (str, bytes, Mapping)) or not isinstance(conversations, Sequence):",
        "if isinstance(conversations, (str, bytes, Mapping)):"),
}

CONCEPT_WORDS = ("模板", "labels", "loss", "掩码", "生成提示", "截断", "padding", "input_ids", "<|im_end|>", "−100",
                 "回复", "对话")


@pytest.mark.parametrize("name", sorted(HELD_OUT))
def test_held_out_wrong_sft_fails_with_a_concept(name, tmp_path):
    old, new = HELD_OUT[name]
    src = SOLUTION.read_text(encoding="utf-8")
    assert src.count(old) == 1, f"solutions/10_sft/sft.py 里找不到（或不止一处）要改的那一行，更新这个测试：{old}"
    path = tmp_path / "sft.py"
    path.write_text(src.replace(old, new), encoding="utf-8")
    s = run_tests("10_sft", str(path))
    assert s.failed > 0, f"错误实现 {name} 通过了模块 10 的全部测试"
    assert s.errors == 0, [o.name for o in s.outcomes if o.status == "error"]
    messages = [o.message for o in s.outcomes if o.status == "failed"]
    assert all(any(w in m for w in CONCEPT_WORDS) for m in messages), messages
    assert not any("Traceback" in o.detail for o in s.outcomes), "失败信息里不应该出现 traceback"
