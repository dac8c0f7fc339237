"""练习 07：字节级 BPE 分词器（byte-level BPE）。

把 `train_bpe` 和 `BPETokenizer` 补完，直到 `pytest exercises/07_tokenizer` 全部通过。
需要的背景知识在 exercises/07_tokenizer/teaching.md §2。

已经给你的（不是本课的重点，直接用）：
- ``split_words(text)``：GPT-2 的预切分（与 minimind 用的 HF ``ByteLevel(add_prefix_space=False)`` 完全一致）；
- ``bytes_to_unicode()``：HF tokenizer.json 里“字节 ↔ 可见字符”的对照表（只有 from_hf_json 用得到）。

id 的约定（测试、实验和以后的模块都依赖它）：特殊 token 在最前（0…k−1，minimind 是
``<|endoftext|>``=0、``<|im_start|>``=1、``<|im_end|>``=2），然后是 256 个字节（字节 b 的 id 是 k+b），
然后是按学到的顺序排列的合并结果。
"""
from __future__ import annotations

# 下面这些 import 你的实现会用到（json、os、tempfile：save/load；warnings：train_bpe；Counter：数词频）
import functools
import json
import os
import re
import sys
import tempfile
import unicodedata
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

# ---------------------------------------------------------------------------------------------
# 预切分（pre-tokenization）：GPT-2 的规则，与 HF 的 pre_tokenizers.ByteLevel(add_prefix_space=False) 一致
# ---------------------------------------------------------------------------------------------

# Unicode 的 White_Space 属性（HF 用的正则引擎里 \s 就是它；Python 的 \s 还多了 U+001C–U+001F）
_WHITESPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _ranges(codepoints: list[int]) -> str:
    """把一串递增的码位写成正则字符类里的区间：[a-z] 这种。"""
    out, start, prev = [], None, None
    for c in codepoints:
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            out.append((start, prev))
            start = prev = c
    if start is not None:
        out.append((start, prev))
    esc = lambda c: re.escape(chr(c))  # noqa: E731
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in out)


@functools.lru_cache(maxsize=None)
def split_pattern() -> "re.Pattern[str]":
    r"""GPT-2 的预切分正则（HF ByteLevel 用的就是它）::

        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+

    Python 自带的 re 不认识 \p{L}（字母）和 \p{N}（数字），这里按 unicodedata 的类别把它们展开成字符类。
    第一次调用要扫一遍全部码位（约 0.3 秒），之后缓存。
    """
    letters, numbers = [], []
    for c in range(sys.maxunicode + 1):
        cat = unicodedata.category(chr(c))
        if cat[0] == "L":
            letters.append(c)
        elif cat[0] == "N":
            numbers.append(c)
    L, N, S = _ranges(letters), _ranges(numbers), _WHITESPACE
    return re.compile(
        rf"'(?:s|t|re|ve|m|ll|d)| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"
    )


def split_words(text: str) -> list[str]:
    """把一段（不含特殊 token 的）文本切成“词”：字母串、数字串、标点串、空白串；词前的一个空格跟着词走。

    例：``"Hello, world!  ok"`` → ``['Hello', ',', ' world', '!', ' ', ' ok']``。
    BPE 只在一个词的内部合并，所以 “o w” 这种跨词的组合永远不会成为 token。
    """
    return split_pattern().findall(text)



@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / HF ByteLevel 把每个字节映射成一个“看得见”的字符（空格 → 'Ġ'，换行 → 'Ċ'），tokenizer.json 里的词表就是这样写的。

    可打印的 188 个字节（! 到 ~、¡ 到 ¬、® 到 ÿ）映射到自己；其余 68 个按顺序映射到 U+0100 起的字符。
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table



# ---------------------------------------------------------------------------------------------
# 你要写的部分
# ---------------------------------------------------------------------------------------------

def train_bpe(text: str, vocab_size: int, special_tokens: Sequence[str] = ()) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """在 text 上训练字节级 BPE，返回 (vocab, merges)。

    - vocab：dict，id → bytes。ids 0…k−1 是 special_tokens（按给定顺序，值是它的 UTF-8 字节），
      k…k+255 是 256 个单字节 ``bytes([b])``，之后每学到一个合并就新增一项；``len(vocab) == vocab_size``；
    - merges：list，按学到的先后排列的 (左, 右) 两个 bytes，例如 ``(b" ", b"t")``。

    算法（teaching.md §2.3）::

        先用特殊 token 把 text 切开（特殊 token 本身不参与训练），每一段再用 split_words 切成词，数词频
        每个词 = 它的 UTF-8 字节序列
        重复直到词表够大：
            数出所有词里每个相邻 pair 出现的次数（一个词出现 f 次，它里面的 pair 就算 f 次）
            选次数最多的 pair；次数相同时选字典序**更大**的 pair：比较 (左 bytes, 右 bytes)
            把它记进 merges；左+右 这串字节是新 token（如果已经在词表里，就不新增 id）
            在每个词里从左到右把这个 pair 换成新 token

    提示：
    - vocab_size 小于 k + 256 时抛 ValueError（中文说明）；参数类型不对（text 不是 str、vocab_size 不是整数、
      special_tokens 是一个字符串或有重复）时抛 TypeError / ValueError（中文说明）；
    - 语料太小、已经没有相邻 pair 可合并时：停下（词表会比要求的小），并用 ``warnings.warn`` 用中文说明；
    - 先写最直白的版本（每一轮重新数一遍）就能通过测试；TinyShakespeare 上训练 6400 的词表会很慢，
      teaching.md §3 讲怎么只更新受影响的词（实验 3 比较两种写法的速度）；
    - 还卡住？运行 `python -m kata hint 07`，每次多给一条提示。
    """
    raise NotImplementedError("还没实现：exercises/07_tokenizer/bpe.py · train_bpe — 先读 teaching.md §2.3")


class BPETokenizer:
    """字节级 BPE 分词器：``BPETokenizer(vocab, merges, special_tokens=())``。

    - vocab：id → bytes（特殊 token 也在里面）；merges：按 rank（学到的先后）排列的 (左, 右) bytes 对；
    - special_tokens：整体匹配、永不拆开的字符串，它们的 id 在 vocab 里查（值等于它的 UTF-8 字节的那一项）。

    提示：
    - __init__ 里先建好查表用的字典：bytes → id，以及 (左 id, 右 id) → (rank, 合并后的 id)；
      vocab 里缺少某个单字节、某个特殊 token 不在 vocab 里、或某条合并的两边（或合并结果）不在 vocab 里时，
      抛 ValueError（中文说明）；
    - encode（teaching.md §2.4）：特殊 token 先整体换成 id；其余部分 split_words 切词，每个词从单字节开始，
      反复合并“当前所有相邻 pair 里 **rank 最小**（最早学到）的那一个”，直到没有可合并的 pair；
    - decode（teaching.md §2.5）：先把全部字节拼起来，**最后**一起 ``.decode("utf-8", errors="replace")``；
      不在词表里的 id 抛 ValueError；
    - save / load / from_hf_json：teaching.md §2.7。
    """

    def __init__(self, vocab: dict[int, bytes], merges: Sequence[tuple[bytes, bytes]], special_tokens: Sequence[str] = ()):
        raise NotImplementedError("还没实现：exercises/07_tokenizer/bpe.py · BPETokenizer.__init__ — 先读 teaching.md §2.4")

    @property
    def vocab_size(self) -> int:
        """embedding 表需要的行数：最大 id + 1（train_bpe 的 id 连续，就等于 len(vocab)）。"""
        raise NotImplementedError("还没实现：exercises/07_tokenizer/bpe.py · BPETokenizer.vocab_size — 先读 teaching.md §2.4")

    def encode(self, text: str) -> list[int]:
        """文本 → id 列表。``encode("")`` 是 ``[]``；不是 str 时抛 TypeError。"""
        raise NotImplementedError("还没实现：exercises/07_tokenizer/bpe.py · BPETokenizer.encode — 先读 teaching.md §2.4")

    def decode(self, ids: Iterable[int]) -> str:
        """id 序列 → 文本；非法的 UTF-8 变成 U+FFFD（"\ufffd"），不抛异常。"""
        raise NotImplementedError("还没实现：exercises/07_tokenizer/bpe.py · BPETokenizer.decode — 先读 teaching.md §2.5")

    def save(self, path) -> None:
        """写成一个 JSON 文件（bytes 可以用 .hex() 存）；先写临时文件再 os.replace，不留半个文件。"""
        raise NotImplementedError("还没实现：exercises/07_tokenizer/bpe.py · BPETokenizer.save — 先读 teaching.md §2.7")

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        """读 save 写出的文件，得到一个编码结果完全相同的分词器。"""
        raise NotImplementedError("还没实现：exercises/07_tokenizer/bpe.py · BPETokenizer.load — 先读 teaching.md §2.7")

    @classmethod
    def from_hf_json(cls, path) -> "BPETokenizer":
        """读 Hugging Face 的 ByteLevel-BPE tokenizer.json（minimind 的 model/tokenizer.json），id 保持不变。

        model.vocab：{bytes_to_unicode 映射后的字符串: id}；model.merges：["左 右", ...] 或 [[左, 右], ...]；
        added_tokens：[{"id": 0, "content": "<|endoftext|>", ...}, ...]，它们就是 special_tokens。
        """
        raise NotImplementedError("还没实现：exercises/07_tokenizer/bpe.py · BPETokenizer.from_hf_json — 先读 teaching.md §2.7")
