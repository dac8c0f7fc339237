"""模块 10 的 bug bank：真实会写出来的错误对话模板与 loss 掩码。

每个错误都是在参考实现上改一处：要么换掉 apply_chat_template（数据集也跟着用这份错误的模板），
要么换掉 SFTDataset 的 generate_labels / __getitem__（子类）。
"""
from __future__ import annotations

import contextlib

import torch

from kata.bugbank import Bug
from kata.impl import load_side_file

_sol = load_side_file("solutions", "10_sft", "sft.py")
_DS = _sol.SFTDataset
IGNORE = _sol.IGNORE_INDEX


@contextlib.contextmanager
def _patched(**replacements):
    """临时替换参考实现模块里的全局名字（只在这一次调用里生效）。"""
    old = {k: getattr(_sol, k) for k in replacements}
    for k, v in replacements.items():
        setattr(_sol, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(_sol, k, v)


def _with_template(template):
    """一份错误的模板：apply_chat_template 和数据集都用它。"""
    class DS(_DS):
        def __getitem__(self, index):
            with _patched(apply_chat_template=template):
                return super().__getitem__(index)
    return {"apply_chat_template": template, "SFTDataset": DS}


# ---- 模板的错误 -------------------------------------------------------------------------------

def _no_generation_prompt(messages, add_generation_prompt=False):
    """忘了处理 add_generation_prompt：推理时模型不知道该轮到助手说话了。"""
    return _sol.apply_chat_template(messages)


def _default_system(messages, add_generation_prompt=False):
    """照抄了 MiniMind2 的模板：没有系统提示时补一条 "You are a helpful assistant"。"""
    msgs = list(_sol._checked_messages(messages))
    text = _sol.apply_chat_template(messages, add_generation_prompt)
    if msgs[0][0] != "system":
        text = "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n" + text
    return text


def _no_newline_after_role(messages, add_generation_prompt=False):
    """角色名后面少了换行：<|im_start|>user你好<|im_end|>。"""
    parts = [f"<|im_start|>{r}{c}<|im_end|>\n" for r, c in _sol._checked_messages(messages)]
    return "".join(parts) + ("<|im_start|>assistant" if add_generation_prompt else "")


def _no_newline_between_turns(messages, add_generation_prompt=False):
    """消息之间没有换行：…<|im_end|><|im_start|>…（minimind 的 eos 串是 <|im_end|>\\n，掩码也跟着坏）。"""
    parts = [f"<|im_start|>{r}\n{c}<|im_end|>" for r, c in _sol._checked_messages(messages)]
    return "".join(parts) + ("<|im_start|>assistant\n" if add_generation_prompt else "")


# ---- 掩码的错误 -------------------------------------------------------------------------------

def _spans(ds, ids):
    """参考规则找到的每个助手回复的 token 区间 [start, stop)。"""
    labels = _DS.generate_labels(ds, ids)
    spans, start = [], None
    for i, lab in enumerate(labels + [IGNORE]):
        if lab != IGNORE and start is None:
            start = i
        if lab == IGNORE and start is not None:
            spans.append((start, i))
            start = None
    return spans


class _LabelsFromSpans(_DS):
    """用一个“区间 → labels”的错误规则替换 generate_labels。"""

    def spans_to_labels(self, ids, spans):
        raise NotImplementedError

    def generate_labels(self, input_ids):
        return self.spans_to_labels(list(input_ids), _spans(self, list(input_ids)))


class _ImEndNotLearned(_LabelsFromSpans):
    def spans_to_labels(self, ids, spans):
        labels = [IGNORE] * len(ids)
        for a, b in spans:
            stop = b
            if ids[a:b][-len(self.eos_id):] == self.eos_id:
                stop = b - len(self.eos_id)
            labels[a:stop] = ids[a:stop]
        return labels


class _NewlineNotLearned(_LabelsFromSpans):
    def spans_to_labels(self, ids, spans):
        labels = [IGNORE] * len(ids)
        for a, b in spans:
            stop = b - 1 if ids[a:b][-len(self.eos_id):] == self.eos_id else b
            labels[a:stop] = ids[a:stop]
        return labels


class _ShiftedLeft(_LabelsFromSpans):
    def spans_to_labels(self, ids, spans):
        labels = [IGNORE] * len(ids)
        for a, b in spans:
            labels[a - 1:b - 1] = ids[a - 1:b - 1]
        return labels


class _ShiftedRight(_LabelsFromSpans):
    def spans_to_labels(self, ids, spans):
        labels = [IGNORE] * len(ids)
        for a, b in spans:
            stop = min(b + 1, len(ids))
            labels[a + 1:stop] = ids[a + 1:stop]
        return labels


class _LabelsPreShifted(_LabelsFromSpans):
    """像模块 09 那样在数据集里就把 labels 右移了一位（labels[t] = 下一个 token），模型又移一次。"""

    def spans_to_labels(self, ids, spans):
        labels = [IGNORE] * len(ids)
        for a, b in spans:
            for t in range(a - 1, b - 1):
                labels[t] = ids[t + 1]
        return labels


class _HeaderInMask(_LabelsFromSpans):
    def spans_to_labels(self, ids, spans):
        labels = [IGNORE] * len(ids)
        for a, b in spans:
            start = max(a - len(self.bos_id), 0)
            labels[start:b] = ids[start:b]
        return labels


class _OnlyLastReply(_LabelsFromSpans):
    def spans_to_labels(self, ids, spans):
        labels = [IGNORE] * len(ids)
        for a, b in spans[-1:]:
            labels[a:b] = ids[a:b]
        return labels


class _UserTurnInLoss(_DS):
    """用户的话也进了 loss：把 <|im_start|>user\\n 之后的内容也当回复来标。"""

    def generate_labels(self, input_ids):
        labels = _DS.generate_labels(self, input_ids)
        user_head = list(self.tokenizer.encode("<|im_start|>user\n"))
        saved = self.bos_id
        try:
            self.bos_id = user_head
            user = _DS.generate_labels(self, input_ids)
        finally:
            self.bos_id = saved
        return [u if u != IGNORE else a for a, u in zip(labels, user)]


class _EverythingInLoss(_DS):
    """像预训练一样，所有真实 token 都进 loss（没有掩码）。"""

    def generate_labels(self, input_ids):
        return list(input_ids)


class _PaddingLearned(_DS):
    """先补齐、再在整条序列上算 labels：padding 也被标成了 <|endoftext|>（“学会”了一直输出 padding）。"""

    def __getitem__(self, index):
        ids, labels = super().__getitem__(index)
        labels = labels.clone()
        n = len(self.tokenizer.encode(_sol.apply_chat_template(self.conversations[index])))
        labels[n:] = ids[n:]
        return ids, labels


class _PadWithZero(_DS):
    """padding 写死成 id 0（minimind 的 <|endoftext|> 恰好是 0，但这个分词器不是）。"""

    def __getitem__(self, index):
        ids, labels = super().__getitem__(index)
        n = len(self.tokenizer.encode(_sol.apply_chat_template(self.conversations[index])))
        ids = ids.clone()
        ids[n:] = 0
        return ids, labels


class _TruncateLeft(_DS):
    """截断时留下最后 max_length 个 token（丢掉了开头）。"""

    def __getitem__(self, index):
        ids = list(self.tokenizer.encode(_sol.apply_chat_template(self.conversations[index])))
        ids = ids[-self.max_length:]
        labels = self.generate_labels(ids)
        pad = self.max_length - len(ids)
        return (torch.tensor(ids + [self.pad_id] * pad, dtype=torch.long),
                torch.tensor(labels + [IGNORE] * pad, dtype=torch.long))


class _UnfinishedReplyDropped(_DS):
    """回复被截断、找不到 <|im_end|>\\n 时整段都不标（minimind 会训练截断后留下的那部分）。"""

    def generate_labels(self, input_ids):
        labels = _DS.generate_labels(self, input_ids)
        n, ne = len(input_ids), len(self.eos_id)
        i = n
        while i > 0 and labels[i - 1] != IGNORE:
            i -= 1
        if i < n and input_ids[n - ne:] != self.eos_id:
            labels[i:] = [IGNORE] * (n - i)
        return labels


BUGS = [
    Bug("user_turn_in_loss", "用户的话也进了 loss（只应训练助手回复）", {"SFTDataset": _UserTurnInLoss}),
    Bug("everything_in_loss", "没有 loss 掩码：所有 token 都进了 loss（像预训练一样）", {"SFTDataset": _EverythingInLoss}),
    Bug("im_end_not_learned", "<|im_end|>\\n 没进 loss：模型学不会在回复结束时停下", {"SFTDataset": _ImEndNotLearned}),
    Bug("newline_after_im_end_not_learned", "<|im_end|> 后面的换行没进 loss（minimind 的 eos 串是 <|im_end|>\\n，两个都训练）",
        {"SFTDataset": _NewlineNotLearned}),
    Bug("mask_shifted_left", "掩码往左错了一位：角色头的最后一个 token 进了 loss、<|im_end|>\\n 的最后一个没进",
        {"SFTDataset": _ShiftedLeft}),
    Bug("mask_shifted_right", "掩码往右错了一位：回复的第一个 token 没进 loss", {"SFTDataset": _ShiftedRight}),
    Bug("labels_pre_shifted", "labels 在数据集里就右移了一位（模块 09 的习惯），模型 forward 里又移一次",
        {"SFTDataset": _LabelsPreShifted}),
    Bug("role_header_in_mask", "角色头 <|im_start|>assistant\\n 也进了 loss", {"SFTDataset": _HeaderInMask}),
    Bug("only_last_reply", "只训练了最后一个助手回复（多轮对话前面的回复没进 loss）", {"SFTDataset": _OnlyLastReply}),
    Bug("padding_learned", "padding 进了 loss（先补齐再算掩码，或补齐的 labels 没设成 −100）", {"SFTDataset": _PaddingLearned}),
    Bug("pad_with_zero", "padding 写死成 id 0，而不是这个分词器里 <|endoftext|> 的 id", {"SFTDataset": _PadWithZero}),
    Bug("truncate_left", "截断时丢掉了开头、留下最后 max_length 个 token", {"SFTDataset": _TruncateLeft}),
    Bug("unfinished_reply_dropped", "被截断的回复整段不训练（minimind 训练截断后留下的部分）",
        {"SFTDataset": _UnfinishedReplyDropped}),
    Bug("generation_prompt_missing", "add_generation_prompt=True 时没有加 <|im_start|>assistant\\n（生成提示）",
        {"apply_chat_template": _no_generation_prompt}),
    Bug("default_system_prompt", "没有系统提示时补了一条默认的（MiniMind2 的旧模板；minimind-3 不补）",
        _with_template(_default_system)),
    Bug("no_newline_after_role", "角色名后面少了换行（应是 <|im_start|>user\\n…）", _with_template(_no_newline_after_role)),
    Bug("no_newline_between_turns", "<|im_end|> 后面少了换行（应是 …<|im_end|>\\n<|im_start|>…）",
        _with_template(_no_newline_between_turns)),
]
