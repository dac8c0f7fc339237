"""模块 07 三个实验共用的小工具：取出（并试跑）你的 BPE、中文语料、朴素训练器、按 id 取 batch 的语料。"""
from __future__ import annotations

import hashlib
import re
import time
from collections import Counter

import torch

from kata.experiment import ComponentNotImplemented, Experiment, not_implemented_sentence
from kata.impl import REPO_ROOT

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def load_bpe(exp):
    """按 --impl 取 (train_bpe, BPETokenizer)，在一个很小的输入上试一次；还没实现就只给一句话。"""
    train_bpe = exp.component("train_bpe")
    tok_cls = exp.component("BPETokenizer")
    for name, probe in (("train_bpe", lambda: train_bpe("hello hello world", 258, special_tokens=SPECIALS[:1])),
                        ("BPETokenizer", lambda: tok_cls(*train_bpe("hello hello", 258), special_tokens=()).decode(
                            tok_cls(*train_bpe("hello hello", 258), special_tokens=()).encode("hello")))):
        try:
            probe()
        except NotImplementedError as exc:
            raise ComponentNotImplemented(name, exp.impl, not_implemented_sentence(name, exp.impl)) from exc
        except Exception as exc:  # 学习者的实现在小输入上就出错：同样一句话
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip(": ")
            raise ComponentNotImplemented(name, exp.impl, not_implemented_sentence(name, exp.impl, detail)) from exc
    return train_bpe, tok_cls


class BPEExperiment(Experiment):
    """模块 07 的实验基类：先试跑 --impl 的 BPE，再开始打印——还没实现时，输出只有那一句话。"""

    def execute(self) -> dict:
        if self.args is not None:
            load_bpe(self)
        return super().execute()


def chinese_docs() -> tuple[str, list[str]]:
    """仓库自带的中文文档（exercises/*/ 下的 .md）：真实的中文语料，随代码一起发布。返回 (文本, 文件列表)。"""
    files = sorted((REPO_ROOT / "exercises").glob("*/*.md"))
    text = "\n".join(p.read_text(encoding="utf-8") for p in files)
    return text, [str(p.relative_to(REPO_ROOT)) for p in files]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


HANZI = re.compile(r"[\u4e00-\u9fff]+")

# 朴素训练器用的预切分（只对 ASCII 准确；实验 3 用它在 TinyShakespeare 上计时，与 split_words 结果相同）
_ASCII_WORDS = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def naive_train_bpe(text: str, vocab_size: int) -> list:
    """教科书写法：每一轮把所有词里的所有 pair 从头数一遍（实验 3 的“慢”版本）。只返回 merges。"""
    words: Counter = Counter(tuple(bytes([b]) for b in w.encode()) for w in _ASCII_WORDS.findall(text))
    vocab = {bytes([b]) for b in range(256)}
    merges = []
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += f
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        vocab.add(best[0] + best[1])
        nxt: Counter = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            nxt[tuple(out)] += f
        words = nxt
    return merges


def cpu_seconds(fn, *args, **kw):
    """(结果, 本进程用掉的 CPU 秒数)：机器忙时 wall time 会被拉长，CPU 时间更接近空闲机器上的用时。"""
    t0 = time.process_time()
    out = fn(*args, **kw)
    return out, time.process_time() - t0


class TokenCorpus:
    """按 token id 取 batch 的语料（接口同 kata.data.Corpus.get_batch，供 kata.tinylm.train_lm / evaluate 使用）。"""

    def __init__(self, train_ids: list, val_ids: list):
        self.train_ids = torch.tensor(train_ids, dtype=torch.long)
        self.val_ids = torch.tensor(val_ids, dtype=torch.long)

    def get_batch(self, split, batch_size, seq_len, generator=None, device="cpu"):
        data = self.train_ids if split == "train" else self.val_ids
        starts = torch.randint(len(data) - seq_len - 1, (batch_size,), generator=generator)
        idx = starts[:, None] + torch.arange(seq_len)
        x, y = data[idx], data[idx + 1]
        return x.to(device), y.to(device)
