"""练习 10：监督微调（SFT）——对话模板 + 只在助手回复上算 loss 的数据集。

把 `apply_chat_template` 和 `SFTDataset` 补完，直到 `pytest exercises/10_sft` 全部通过。
背景知识在 exercises/10_sft/teaching.md §2（模板）和 §3（掩码）。

已经给你的（不是本课的重点，直接用）：常量（特殊 token、角色、ASSISTANT_HEADER、TURN_END）、
``_checked_messages(messages)``（检查一段对话、返回 [(role, content), …]，不合法时抛中文错误）、
``_single_id(tokenizer, token)``（特殊 token 的 id，编不成一个 id 时抛中文错误）。

要对照的 minimind（jingyaogong/minimind，HEAD d65ef2c，2026-08-21；minimind-3 的模板来自提交 101d7df）：
- 模板 = model/tokenizer_config.json 的 chat_template，每条消息渲染成
  ``<|im_start|>{role}\\n{content}<|im_end|>\\n``，``add_generation_prompt=True`` 时末尾再加
  ``<|im_start|>assistant\\n``。
- 数据集 = dataset/lm_dataset.py 的 SFTDataset：整段对话套模板 → 编码 → 截断到 max_length → 用
  <|endoftext|> 补齐；``generate_labels`` 在 token 序列里找 ``<|im_start|>assistant\\n`` 的 token 串，
  从它后面一个 token 起、到下一个 ``<|im_end|>\\n`` 的 token 串（含）为止，labels = input_ids；
  其余位置 −100。labels **不移位**：与 input_ids 对齐，由模型在内部移位
  （MiniMindForCausalLM：logits[:, :-1] 对 labels[:, 1:]）。

本课支持的子集（与 minimind-3 的差别，都写在 teaching.md §2.3）：
- 角色只有 system / user / assistant，content 必须是字符串；tool 角色、tools、tool_calls、
  reasoning_content（思考过程）都不支持，遇到时报中文错误；
- 助手回复不加 ``<think>\\n\\n</think>\\n\\n``：minimind-3 的模板会加，但它的 SFTDataset 以 80% 的概率
  把这个空思考块删掉（post_processing_chat）；我们的数据没有思考过程，所以总是删掉，生成提示里也不加；
- 没有系统提示就不加（minimind-3 的行为；MiniMind2 的模板会补一条 "You are a helpful assistant"）；
  minimind 以 20% 的概率随机补一条系统提示（pre_processing_chat）——这是数据增强，不在这里做；
- content 里不能出现三个特殊 token 的字面文本（否则模板与掩码都会被打乱）。
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

IGNORE_INDEX = -100
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)  # minimind 的 id：0、1、2
ROLES = ("system", "user", "assistant")
ASSISTANT_HEADER = IM_START + "assistant\n"     # minimind 的 bos_id 就是这一串编码出来的 token
TURN_END = IM_END + "\n"                        # minimind 的 eos_id：<|im_end|> 和它后面的换行
UNSUPPORTED_KEYS = ("tools", "tool_calls", "reasoning_content")


def _checked_messages(messages) -> list[tuple[str, str]]:
    """检查一段对话，返回 [(role, content), …]；不合法时抛 ValueError / TypeError（中文，说清期望什么）。"""
    if isinstance(messages, Mapping) and "conversations" in messages:
        messages = messages["conversations"]   # minimind 的 jsonl 一行就是 {"conversations": [...]}
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages 应是消息的列表 [{{'role': 'user', 'content': '…'}}, …]，实际 {type(messages).__name__}")
    if len(messages) == 0:
        raise ValueError("messages 是空列表：一段对话至少要有一条消息")
    out = []
    for k, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise TypeError(f"第 {k} 条消息应是 dict（有 'role' 和 'content'），实际 {type(msg).__name__}")
        if "role" not in msg or "content" not in msg:
            raise ValueError(f"第 {k} 条消息缺少 'role' 或 'content'：{dict(msg)!r}")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise ValueError(f"第 {k} 条消息的角色 {role!r} 不支持：本课只支持 system / user / assistant"
                             "（minimind-3 的 tool 角色与工具调用不在本课范围，见 teaching.md §2.3）")
        for key in UNSUPPORTED_KEYS:
            if msg.get(key):
                raise ValueError(f"第 {k} 条消息带有 {key!r}：本课的模板不支持工具调用和思考过程"
                                 "（见 teaching.md §2.3），请去掉这个字段")
        if not isinstance(content, str):
            raise TypeError(f"第 {k} 条消息的 content 应是字符串，实际 {type(content).__name__}")
        for special in SPECIAL_TOKENS:
            if special in content:
                raise ValueError(f"第 {k} 条消息的 content 里出现了特殊 token {special!r} 的字面文本："
                                 "它会打乱模板和 loss 掩码（见 teaching.md §2.3）")
        out.append((role, content))
    return out


def apply_chat_template(messages, add_generation_prompt: bool = False) -> str:
    """把一段对话渲染成 minimind 的对话格式（ChatML）。

    每条消息：``<|im_start|>{role}\\n{content}<|im_end|>\\n``，按顺序拼接；
    add_generation_prompt=True 时末尾再加 ``<|im_start|>assistant\\n``——推理时让模型从这里接着写回复。

    例：[{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}] →
        "<|im_start|>user\\n1+1=<|im_end|>\\n<|im_start|>assistant\\n2<|im_end|>\\n"

    提示：
    - 先用 _checked_messages(messages) 拿到 [(role, content), …]（坏输入它会报错）；
    - 没有系统提示就不加；system 和 user、assistant 用同一个格式；
    - 生成提示只有 ASSISTANT_HEADER 这一串，不多不少。
    """
    raise NotImplementedError("还没实现：exercises/10_sft/sft.py · apply_chat_template — 先读 teaching.md §2")


def _single_id(tokenizer, token: str) -> int:
    ids = list(tokenizer.encode(token))
    if len(ids) != 1:
        raise ValueError(f"分词器应把特殊 token {token!r} 编成恰好一个 id，实际得到 {ids}："
                         f"构造分词器时要传 special_tokens={SPECIAL_TOKENS!r}（见 teaching.md §3.1）")
    return int(ids[0])


class SFTDataset(torch.utils.data.Dataset):
    """SFT 数据集：每个样本是一段对话，``__getitem__`` 返回 (input_ids, labels)，都是长 max_length 的 long 张量。

    conversations：对话的列表；每段对话是消息列表（或 minimind jsonl 的一行 {"conversations": [...]}）。
    tokenizer：有 ``encode(text) -> list[int]`` 的分词器，三个特殊 token 各编成一个 id。
    max_length：样本长度；更长的从右边截掉，更短的用 <|endoftext|> 的 id 补齐。

    labels：每个助手回复（``<|im_start|>assistant\\n`` 之后的第一个 token 起，到它的 ``<|im_end|>\\n`` 为止，
    两个都含）等于 input_ids，其余位置（系统提示、用户的话、角色头、padding）都是 −100。labels 不移位：
    与 input_ids 逐位对齐，由模型在内部移位（和模块 09 的 PretrainDataset 不同！见 teaching.md §3.4）。

    提示：
    - __init__：max_length 必须是 ≥ 1 的整数（否则 ValueError）；conversations 里每段对话都用 _checked_messages
      检查一遍；pad_id = _single_id(tokenizer, ENDOFTEXT)；bos_id = tokenizer.encode(ASSISTANT_HEADER)，
      eos_id = tokenizer.encode(TURN_END)（都是 token 的列表，和 minimind 一样）；
    - generate_labels：在 token 列表里滑动找 bos_id，找到后往后找 eos_id，[bos 之后, eos 末尾) 这一段复制 id；
      找不到 eos（回复被截断）就一直标到末尾；
    - __getitem__：套模板 → encode → 截断 → 在**真实 token** 上算 labels → 再补齐（input 补 pad_id，labels 补 −100）。
    """

    def __init__(self, conversations, tokenizer, max_length: int):
        raise NotImplementedError("还没实现：exercises/10_sft/sft.py · SFTDataset.__init__ — 先读 teaching.md §3.1")

    def __len__(self) -> int:
        raise NotImplementedError("还没实现：exercises/10_sft/sft.py · SFTDataset.__len__ — 先读 teaching.md §3.1")

    def generate_labels(self, input_ids: list[int]) -> list[int]:
        """minimind 的规则：每个 ``<|im_start|>assistant\\n`` 之后、直到 ``<|im_end|>\\n``（含）的 token 进 loss。"""
        raise NotImplementedError("还没实现：exercises/10_sft/sft.py · SFTDataset.generate_labels — 先读 teaching.md §3.2")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("还没实现：exercises/10_sft/sft.py · SFTDataset.__getitem__ — 先读 teaching.md §3.3")
