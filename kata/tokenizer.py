"""字符级分词器 CharTokenizer：与模块 07 的 BPETokenizer 接口相同（encode / decode / save / load / vocab_size）。

字符级训练（nanoGPT shakespeare_char 的做法）和 BPE 训练因此可以共用同一段代码：哪个分词器都行。
它是 kata.data.CharTokenizer 的超集（同样的构造、from_text、encode_tensor、报错），另外多了 save / load
和可选的特殊 token。
"""
from __future__ import annotations

import json
import operator
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = ["CharTokenizer"]

_FORMAT = "minimind-kata-char"


class CharTokenizer:
    """字符级分词器：每个字符一个 id，id 就是它在 chars 里的位置。

    special_tokens（可选）：整体匹配的字符串，id 排在所有字符之后（len(chars)、len(chars)+1、…）。
    """

    def __init__(self, chars: Iterable[str], special_tokens: Sequence[str] = ()):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer 需要一组互不相同的单个字符")
        if isinstance(special_tokens, str):
            raise TypeError(f"special_tokens 应该是字符串的列表，实际是一个字符串 {special_tokens!r}")
        specials = list(special_tokens)
        if any(not isinstance(s, str) or not s for s in specials) or len(set(specials)) != len(specials):
            raise ValueError(f"special_tokens 应是互不相同的非空字符串，实际 {specials!r}")
        self.chars = chars
        self.special_tokens = specials
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.itos = {i: c for i, c in enumerate(chars)}
        for k, s in enumerate(specials):
            self.itos[len(chars) + k] = s
        self.special_ids = {s: len(chars) + k for k, s in enumerate(specials)}
        order = sorted(range(len(chars)), key=lambda i: chars[i])
        self._sorted_codes = np.array([ord(chars[i]) for i in order], dtype=np.int64)
        self._sorted_ids = np.array(order, dtype=np.int64)

    @classmethod
    def from_text(cls, text: str, special_tokens: Sequence[str] = ()) -> "CharTokenizer":
        """词表 = 文本里出现过的字符，按码位排序（特殊 token 本身的字符不算，除非它们也单独出现）。"""
        for s in special_tokens:
            text = text.replace(s, "")
        return cls(sorted(set(text)), special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        extra = f", special_tokens={self.special_tokens}" if self.special_tokens else ""
        return f"CharTokenizer(vocab_size={self.vocab_size}{extra})"

    def _unknown(self, text: str, pos: int) -> ValueError:
        return ValueError(f"字符 {text[pos]!r}（位置 {pos}）不在词表里（词表共 {self.vocab_size} 个字符）")

    def _encode_plain(self, text: str, offset: int = 0) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            pos = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise ValueError(f"字符 {text[pos]!r}（位置 {offset + pos}）不在词表里"
                             f"（词表共 {self.vocab_size} 个字符）") from None

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode 需要 str，实际 {type(text).__name__}")
        if not self.special_tokens:
            return self._encode_plain(text)
        out, pos = [], 0
        ordered = sorted(self.special_tokens, key=len, reverse=True)
        while pos < len(text):
            nxt = min(((text.find(s, pos), -len(s), s) for s in ordered if text.find(s, pos) >= 0), default=None)
            if nxt is None:
                out.extend(self._encode_plain(text[pos:], pos))
                break
            at, _, s = nxt
            out.extend(self._encode_plain(text[pos:at], pos))
            out.append(self.special_ids[s])
            pos = at + len(s)
        return out

    def encode_tensor(self, text: str) -> torch.Tensor:
        """同 encode，但直接返回 int64 一维张量（没有特殊 token 时用 numpy 向量化，长文本也快）。"""
        if self.special_tokens:
            return torch.tensor(self.encode(text), dtype=torch.long)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
        if len(self._sorted_codes) == 0:
            if len(codes):
                raise self._unknown(text, 0)
            return torch.zeros(0, dtype=torch.long)
        pos = np.clip(np.searchsorted(self._sorted_codes, codes), 0, len(self._sorted_codes) - 1)
        bad = np.nonzero(self._sorted_codes[pos] != codes)[0]
        if len(bad):
            raise self._unknown(text, int(bad[0]))
        return torch.from_numpy(self._sorted_ids[pos])

    def decode(self, ids) -> str:
        """ids：list / tuple / 一维张量 / 一维 numpy 数组。"""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            if ids.ndim != 1:
                raise ValueError(f"decode 需要一维的 id 序列，实际形状 {tuple(ids.shape)}")
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)):
            raise TypeError(f"decode 需要 id 的序列，实际 {type(ids).__name__}")
        out = []
        for i in ids:
            try:
                out.append(self.itos[operator.index(i)])
            except (KeyError, TypeError):
                raise ValueError(f"id {i!r} 不在词表里（应为 0..{self.vocab_size - 1} 的整数）") from None
        return "".join(out)

    def save(self, path) -> None:
        """写成 JSON；先写临时文件再 os.replace，中途出错不会留下半个文件。"""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": _FORMAT, "version": 1, "chars": "".join(self.chars), "special_tokens": self.special_tokens}
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
    def load(cls, path) -> "CharTokenizer":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"读不了分词器文件 {path}：{exc}") from exc
        if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("chars"), str):
            raise ValueError(f"{path} 不是 CharTokenizer.save 写出的文件（缺少 \"format\": \"{_FORMAT}\" 或 chars）")
        return cls(list(data["chars"]), data.get("special_tokens", []))
