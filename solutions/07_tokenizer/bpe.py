"""字节级 BPE 分词器参考实现（对应 minimind trainer/train_tokenizer.py 用 HF tokenizers 训练出的 model/tokenizer.json）。

三件事：
1. ``train_bpe``：在文本上学出合并规则（merges）。用“增量维护的 pair 计数 + 懒删除的堆”，
   每次合并只更新受影响的词，而不是每一步把整个语料重数一遍（模块实验 3 比较两者）；
2. ``BPETokenizer.encode / decode``：按合并规则的**先后顺序（rank）**切分，字节序列拼回文本；
3. ``save / load / from_hf_json``：自己的 JSON 格式，以及读 Hugging Face 的 ByteLevel-BPE tokenizer.json。

id 的约定（与 minimind 相同）：特殊 token 在最前（0…k−1，``<|endoftext|>``=0、``<|im_start|>``=1、
``<|im_end|>``=2），然后是 256 个字节，然后是按学到的顺序排列的合并结果。
"""
from __future__ import annotations

import functools
import heapq
import json
import operator
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


# ---------------------------------------------------------------------------------------------
# 训练
# ---------------------------------------------------------------------------------------------

def _check_special_tokens(special_tokens) -> list[str]:
    if isinstance(special_tokens, str):
        raise TypeError(f"special_tokens 应该是字符串的列表或元组，实际是一个字符串 {special_tokens!r}"
                        "（只有一个特殊 token 时写成 [\"...\"]）")
    specials = list(special_tokens)
    for s in specials:
        if not isinstance(s, str) or not s:
            raise TypeError(f"special_tokens 里每一项都应该是非空字符串，实际有 {s!r}")
    if len(set(specials)) != len(specials):
        dup = sorted({s for s in specials if specials.count(s) > 1})
        raise ValueError(f"special_tokens 里有重复的项：{dup}")
    return specials


def _special_splitter(specials: Sequence[str]):
    """按特殊 token 切开文本的正则（长的优先：`<|im_start|>x` 不会被 `<|im_start|>` 抢先）；没有特殊 token 时为 None。"""
    if not specials:
        return None
    return re.compile("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")")


class _Greater:
    """堆里的次序键：bytes 对越“大”越先出堆（平局时选字典序更大的 pair，同 Stanford CS336）。"""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __lt__(self, other):
        return self.key > other.key

    def __eq__(self, other):
        return self.key == other.key


def train_bpe(text: str, vocab_size: int, special_tokens: Sequence[str] = ()) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """在 text 上训练字节级 BPE，返回 (vocab, merges)。

    vocab：id → bytes，ids 0…k−1 是特殊 token（按给定顺序），k…k+255 是 256 个字节，之后是合并结果；
    merges：按学到的先后排列的 (左, 右) bytes 对。每一步合并“在所有词里出现次数最多的相邻 pair”，
    次数相同时选字典序更大的 pair（比较 (左, 右) 两个 bytes）。特殊 token 从训练文本里整体拿掉，不参与计数。
    如果某次合并的结果已经在词表里（两条不同的路拼出同一串字节），只记下这条合并、不新增 id（HF 也是这样）。
    """
    if not isinstance(text, str):
        raise TypeError(f"train_bpe 的 text 应为 str，实际 {type(text).__name__}")
    specials = _check_special_tokens(special_tokens)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size 应为整数，实际 {vocab_size!r}")
    base = len(specials) + 256
    if vocab_size < base:
        raise ValueError(f"vocab_size={vocab_size} 太小：至少要放下 {len(specials)} 个特殊 token 和 256 个字节，"
                         f"即 ≥ {base}")

    vocab: dict[int, bytes] = {i: s.encode("utf-8") for i, s in enumerate(specials)}
    for b in range(256):
        vocab[len(specials) + b] = bytes([b])
    id_of = {vocab[i]: i for i in range(len(specials), base)}  # 普通 token 的 bytes → id（特殊 token 不参与合并）
    merges: list[tuple[bytes, bytes]] = []

    # 1. 预切分并数词频：同一个词只处理一次，乘上它出现的次数
    splitter = _special_splitter(specials)
    chunks = splitter.split(text)[::2] if splitter else [text]  # re.split 带括号：奇数位是特殊 token 本身
    counts: Counter = Counter()
    for chunk in chunks:
        counts.update(split_words(chunk))
    offset = len(specials)
    words = [[offset + b for b in w.encode("utf-8")] for w in counts]
    freqs = list(counts.values())

    # 2. pair → 出现次数，pair → 含有它的词；堆里放 (−次数, 次序键, pair)，过期的条目出堆时再丢掉
    pair_count: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, (syms, f) in enumerate(zip(words, freqs)):
        for p in zip(syms, syms[1:]):
            pair_count[p] = pair_count.get(p, 0) + f
            where.setdefault(p, set()).add(w)
    heap = [(-c, _Greater((vocab[a], vocab[b])), (a, b)) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size:
        best = None
        while heap:
            neg, _, p = heapq.heappop(heap)
            if pair_count.get(p) == -neg:  # 次数对得上：这是有效条目
                best = p
                break
        if best is None:
            warnings.warn(f"train_bpe：语料里已经没有可合并的相邻 pair，词表停在 {len(vocab)}（要求 {vocab_size}）。"
                          "换一份更大的语料，或把 vocab_size 调小。", stacklevel=2)
            break
        a, b = best
        merged = vocab[a] + vocab[b]
        merges.append((vocab[a], vocab[b]))
        new = id_of.get(merged)
        if new is None:
            new = len(vocab)
            vocab[new] = merged
            id_of[merged] = new

        # 3. 只改含有这个 pair 的词：先减掉它旧的 pair，合并，再加上新的 pair
        delta: dict[tuple[int, int], int] = {}
        for w in where.pop(best, ()):
            syms, f = words[w], freqs[w]
            old = list(zip(syms, syms[1:]))
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
            new_pairs = list(zip(out, out[1:]))
            for p in old:
                delta[p] = delta.get(p, 0) - f
            for p in new_pairs:
                delta[p] = delta.get(p, 0) + f
                where.setdefault(p, set()).add(w)
            for p in set(old) - set(new_pairs):
                if p != best:
                    where[p].discard(w)
        pair_count.pop(best, None)
        for p, d in delta.items():
            if d == 0 or p == best:
                continue
            c = pair_count.get(p, 0) + d
            if c > 0:
                pair_count[p] = c
                heapq.heappush(heap, (-c, _Greater((vocab[p[0]], vocab[p[1]])), p))
            else:
                pair_count.pop(p, None)
    return vocab, merges


# ---------------------------------------------------------------------------------------------
# 分词器
# ---------------------------------------------------------------------------------------------

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


_FORMAT = "minimind-kata-bpe"


class BPETokenizer:
    """字节级 BPE 分词器。

    vocab：id → bytes（特殊 token 也在里面，值是它的 UTF-8 字节）；merges：按 rank 排列的 (左, 右) bytes 对；
    special_tokens：整体匹配、永不拆开的字符串，它们的 id 在 vocab 里查。
    """

    def __init__(self, vocab: dict[int, bytes], merges: Sequence[tuple[bytes, bytes]], special_tokens: Sequence[str] = ()):
        if not isinstance(vocab, dict):
            raise TypeError(f"vocab 应为 dict[int, bytes]，实际 {type(vocab).__name__}")
        for i, tok in vocab.items():
            if isinstance(i, bool) or not isinstance(i, int) or i < 0 or not isinstance(tok, (bytes, bytearray)):
                raise TypeError(f"vocab 的每一项应为 非负整数 id → bytes，实际有 {i!r}: {tok!r}")
        self.vocab = {int(i): bytes(t) for i, t in sorted(vocab.items())}
        self.special_tokens = _check_special_tokens(special_tokens)

        # 特殊 token 的 id：vocab 里值等于它的字节的最小 id；其余 id 都是普通 token
        self.special_ids: dict[str, int] = {}
        for s in self.special_tokens:
            ids = [i for i, t in self.vocab.items() if t == s.encode("utf-8")]
            if not ids:
                raise ValueError(f"特殊 token {s!r} 不在 vocab 里（vocab 里应有一项的值是 {s.encode('utf-8')!r}）")
            self.special_ids[s] = ids[0]
        taken = set(self.special_ids.values())
        self._id_of: dict[bytes, int] = {}
        for i, t in self.vocab.items():
            if i not in taken:
                self._id_of.setdefault(t, i)  # 同一串字节出现两次时用较小的 id
        missing = [b for b in range(256) if bytes([b]) not in self._id_of]
        if missing:
            raise ValueError(f"vocab 里缺少单字节 token（字节级 BPE 需要全部 256 个字节），例如字节 {missing[:5]}")

        # (左 id, 右 id) → (rank, 合并后的 id)
        self.merges = [(bytes(x), bytes(y)) for x, y in merges]
        self._rank: dict[tuple[int, int], tuple[int, int]] = {}
        for r, (x, y) in enumerate(self.merges):
            ids = (self._id_of.get(x), self._id_of.get(y), self._id_of.get(x + y))
            if None in ids:
                raise ValueError(f"第 {r} 条合并 ({x!r}, {y!r})：左、右或合并后的 {x + y!r} 不在 vocab 里")
            self._rank.setdefault((ids[0], ids[1]), (r, ids[2]))
        self._splitter = _special_splitter(self.special_tokens)
        self._cache: dict[str, list[int]] = {}

    # ---- 基本信息 ------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """embedding 表需要的行数：最大 id + 1（train_bpe 的 id 是连续的，就等于 len(vocab)）。"""
        return max(self.vocab) + 1 if self.vocab else 0

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={self.special_tokens})")

    # ---- 编码 ----------------------------------------------------------------------------------

    def _encode_word(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        ids = [self._id_of[bytes([b])] for b in word.encode("utf-8")]
        rank = self._rank
        while len(ids) > 1:
            # 当前所有相邻 pair 里 rank 最小（最早学到）的那一条
            best = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, (float("inf"),))[0])
            if best not in rank:
                break
            a, b = best
            new = rank[best][1]
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        if len(self._cache) < 200_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """文本 → id 列表：先按特殊 token 切开（它们直接换成自己的 id），其余部分预切分成词，每个词内按 rank 合并。"""
        if not isinstance(text, str):
            raise TypeError(f"encode 需要 str，实际 {type(text).__name__}")
        out: list[int] = []
        parts = self._splitter.split(text) if self._splitter else [text]
        for k, part in enumerate(parts):
            if k % 2 == 1:
                out.append(self.special_ids[part])
            elif part:
                for word in split_words(part):
                    out.extend(self._encode_word(word))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """id 序列 → 文本：先把所有字节拼起来，**最后**一起按 UTF-8 解码（非法字节换成 U+FFFD，不抛异常）。"""
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"decode 需要 id 的序列（list[int]），实际 {type(ids).__name__}")
        if hasattr(ids, "tolist"):  # torch / numpy
            ids = ids.tolist()
        chunks = []
        for i in ids:
            try:
                chunks.append(self.vocab[operator.index(i)])
            except (KeyError, TypeError):
                raise ValueError(f"id {i!r} 不在词表里（应为 vocab 里的整数 id，0…{self.vocab_size - 1}）") from None
        return b"".join(chunks).decode("utf-8", errors="replace")

    # ---- 保存与读取 ----------------------------------------------------------------------------

    def save(self, path) -> None:
        """写成 JSON（bytes 用十六进制），先写临时文件再 os.replace：中途出错也不会留下半个文件。"""
        path = Path(path)
        data = {
            "format": _FORMAT, "version": 1,
            "special_tokens": self.special_tokens,
            "vocab": [[i, t.hex()] for i, t in self.vocab.items()],
            "merges": [[x.hex(), y.hex()] for x, y in self.merges],
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        """读 save 写出的文件。"""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"读不了分词器文件 {path}：{exc}") from exc
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{path} 不是 BPETokenizer.save 写出的文件（缺少 \"format\": \"{_FORMAT}\"）；"
                             "Hugging Face 的 tokenizer.json 请用 BPETokenizer.from_hf_json 读取")
        try:
            vocab = {int(i): bytes.fromhex(h) for i, h in data["vocab"]}
            merges = [(bytes.fromhex(x), bytes.fromhex(y)) for x, y in data["merges"]]
            specials = list(data.get("special_tokens", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} 的内容不完整或已损坏：{exc}") from exc
        return cls(vocab, merges, specials)

    @classmethod
    def from_hf_json(cls, path) -> "BPETokenizer":
        """读 Hugging Face 的 ByteLevel-BPE tokenizer.json（minimind 的 model/tokenizer.json 就是这种），id 保持不变。

        model.vocab 里的 token 是 bytes_to_unicode 映射后的字符串（'Ġthe' = b' the'），要映射回字节；
        model.merges 是 "左 右" 字符串（旧格式）或 [左, 右]（tokenizers ≥ 0.20）；
        added_tokens（minimind 的 36 个特殊 token）整体匹配、不拆开。
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"读不了 tokenizer.json {path}：{exc}") from exc
        model = data.get("model") if isinstance(data, dict) else None
        if not isinstance(model, dict) or model.get("type") != "BPE":
            raise ValueError(f"{path} 不是 BPE 模型的 tokenizer.json（model.type 应为 \"BPE\"）")
        pre = data.get("pre_tokenizer") or {}
        pres = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        byte_level = [p for p in pres if isinstance(p, dict) and p.get("type") == "ByteLevel"]
        if not byte_level:
            raise ValueError(f"{path} 的 pre_tokenizer 不是 ByteLevel：这里只支持字节级 BPE（minimind 用的那种）")
        if byte_level[0].get("add_prefix_space", False):
            raise ValueError(f"{path} 的 ByteLevel 设置了 add_prefix_space=true；这里只支持 minimind 的 add_prefix_space=false")
        inv = {ch: b for b, ch in bytes_to_unicode().items()}

        def to_bytes(s: str) -> bytes:
            try:
                return bytes(inv[ch] for ch in s)
            except KeyError as exc:
                raise ValueError(f"{path}：token {s!r} 里有不属于 ByteLevel 字母表的字符 {exc.args[0]!r}") from None

        added = sorted(data.get("added_tokens") or [], key=lambda t: t["id"])
        added_ids = {int(t["id"]) for t in added}
        vocab = {int(i): to_bytes(s) for s, i in model["vocab"].items() if int(i) not in added_ids}
        merges = []
        for m in model.get("merges", []):
            left, right = m.split(" ", 1) if isinstance(m, str) else m
            merges.append((to_bytes(left), to_bytes(right)))
        specials = []
        for t in added:
            vocab[int(t["id"])] = t["content"].encode("utf-8")
            specials.append(t["content"])
        return cls(vocab, merges, specials)
