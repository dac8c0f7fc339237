"""监督微调（SFT）的参考实现：对话模板 + 只在助手回复上算 loss 的数据集。

对照 minimind（jingyaogong/minimind，HEAD d65ef2c，2026-08-21；minimind-3 的模板来自提交 101d7df）：
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
    """
    parts = [f"{IM_START}{role}\n{content}{IM_END}\n" for role, content in _checked_messages(messages)]
    if add_generation_prompt:
        parts.append(ASSISTANT_HEADER)
    return "".join(parts)


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
    """

    def __init__(self, conversations, tokenizer, max_length: int):
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length 应为 ≥ 1 的整数，实际 {max_length!r}")
        if isinstance(conversations, (str, bytes, Mapping)) or not isinstance(conversations, Sequence):
            raise TypeError(f"conversations 应是对话的列表（每段对话是一个消息列表），实际 {type(conversations).__name__}")
        if not callable(getattr(tokenizer, "encode", None)):
            raise TypeError(f"tokenizer 应有 encode(text) -> list[int] 方法，实际 {type(tokenizer).__name__}")
        for k, conv in enumerate(conversations):
            try:
                _checked_messages(conv)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"第 {k} 段对话：{exc}") from None
        self.conversations = list(conversations)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = _single_id(tokenizer, ENDOFTEXT)
        _single_id(tokenizer, IM_START)
        _single_id(tokenizer, IM_END)
        # 与 minimind 相同：用“编码这两串文本”得到的 token 串来找回复的起止，而不是写死 id
        self.bos_id = list(tokenizer.encode(ASSISTANT_HEADER))
        self.eos_id = list(tokenizer.encode(TURN_END))

    def __len__(self) -> int:
        return len(self.conversations)

    def generate_labels(self, input_ids: list[int]) -> list[int]:
        """minimind 的规则：每个 ``<|im_start|>assistant\\n`` 之后、直到 ``<|im_end|>\\n``（含）的 token 进 loss。

        回复被截断、找不到结尾时，一直标到序列末尾（截断后的回复前半段仍然参与训练）。
        """
        n, nb, ne = len(input_ids), len(self.bos_id), len(self.eos_id)
        labels = [IGNORE_INDEX] * n
        i = 0
        while i < n:
            if input_ids[i:i + nb] == self.bos_id:
                start = end = i + nb
                while end < n and input_ids[end:end + ne] != self.eos_id:
                    end += 1
                stop = min(end + ne, n)
                labels[start:stop] = input_ids[start:stop]
                i = stop
            else:
                i += 1
        return labels

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        prompt = apply_chat_template(self.conversations[index])
        ids = list(self.tokenizer.encode(prompt))[: self.max_length]
        labels = self.generate_labels(ids)   # 先在真实 token 上算掩码，再补齐：padding 永远不进 loss
        pad = self.max_length - len(ids)
        input_ids = torch.tensor(ids + [self.pad_id] * pad, dtype=torch.long)
        return input_ids, torch.tensor(labels + [IGNORE_INDEX] * pad, dtype=torch.long)
