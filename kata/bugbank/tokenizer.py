"""模块 07 的 bug bank：真实会写出来的错误字节级 BPE。

每个错误都是在参考实现上改一处：要么换掉 BPETokenizer 的一个方法（子类），要么在调用参考实现的
train_bpe 时临时换掉它用到的一个模块级辅助函数（预切分、平局次序、特殊 token 的切分）。
"""
from __future__ import annotations

import contextlib
import re

from kata.bugbank import Bug
from kata.impl import load_side_file

_sol = load_side_file("solutions", "07_tokenizer", "bpe.py")
_Tok = _sol.BPETokenizer


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


# ---- 预切分的错误 -----------------------------------------------------------------------------

def _lines(text):
    """只按行切开：一行里的词连成一片，合并会跨过词的边界（" th" + "e c" …）。"""
    return re.findall(r"[^\n]*\n|[^\n]+", text)


def _whitespace_split(text):
    """text.split()：空白全被丢掉了。"""
    return text.split()


def _train_with(**replacements):
    def train_bpe(text, vocab_size, special_tokens=()):
        with _patched(**replacements):
            return _sol.train_bpe(text, vocab_size, special_tokens)
    return train_bpe


def _tokenizer_with(**replacements):
    class Tok(_Tok):
        def encode(self, text):
            with _patched(**replacements):
                return super().encode(text)
    return Tok


# ---- 训练的错误 -------------------------------------------------------------------------------

class _Smaller:
    """平局时选字典序更小的 pair（堆里的次序反了）。"""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def __lt__(self, other):
        return self.key < other.key

    def __eq__(self, other):
        return self.key == other.key


def _train_specials_counted(text, vocab_size, special_tokens=()):
    """没有先按特殊 token 切开：特殊 token 的字符也被数进了 pair（词表里长出 '<|'、'im' 这种碎片）。"""
    with _patched(_special_splitter=lambda specials: None):
        return _sol.train_bpe(text, vocab_size, special_tokens)


def _train_forgot_specials_in_size(text, vocab_size, special_tokens=()):
    """合并条数算成 vocab_size − 256，忘了减去特殊 token：词表比要求的大 k 个。"""
    return _sol.train_bpe(text, vocab_size + len(tuple(special_tokens)), special_tokens)


def _train_bytes_first(text, vocab_size, special_tokens=()):
    """256 个字节占了 0…255，特殊 token 排在它们后面：所有 id 都错了位（<|endoftext|> 不再是 0）。"""
    vocab, merges = _sol.train_bpe(text, vocab_size, special_tokens)
    k = len(tuple(special_tokens))
    order = list(range(k, k + 256)) + list(range(k)) + sorted(i for i in vocab if i >= k + 256)
    return {new: vocab[old] for new, old in enumerate(order)}, merges


# ---- 编码 / 解码 / 保存的错误 -----------------------------------------------------------------

class _SpecialsAsText(_Tok):
    """encode 没有先把特殊 token 整体挑出来：'<|im_end|>' 被拆成了字节再合并。"""

    def encode(self, text):
        saved, self._splitter = self._splitter, None
        try:
            return super().encode(text)
        finally:
            self._splitter = saved


class _LeftmostFirst(_Tok):
    """每次合并词里**最靠左**的、能合并的 pair，而不是 rank 最小（最早学到）的那个。"""

    def _encode_word(self, word):
        ids = [self._id_of[bytes([b])] for b in word.encode("utf-8")]
        while True:
            for i, p in enumerate(zip(ids, ids[1:])):
                if p in self._rank:
                    ids = ids[:i] + [self._rank[p][1]] + ids[i + 2:]
                    break
            else:
                return ids


class _MostFrequentFirst(_Tok):
    """编码时照着训练的思路“先合并出现次数最多的 pair”，而不是按 merges 的 rank。"""

    def _encode_word(self, word):
        ids = [self._id_of[bytes([b])] for b in word.encode("utf-8")]
        while True:
            pairs = [p for p in zip(ids, ids[1:]) if p in self._rank]
            if not pairs:
                return ids
            best = max(set(pairs), key=lambda p: (pairs.count(p), p))
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == best:
                    out.append(self._rank[best][1])
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out


class _LongestMatch(_Tok):
    """贪心最长匹配：从左往右每次取词表里最长的前缀——这是 WordPiece 式的切法，不是 BPE。"""

    def _encode_word(self, word):
        data, out, i = word.encode("utf-8"), [], 0
        while i < len(data):
            for j in range(len(data), i, -1):
                tid = self._id_of.get(data[i:j])
                if tid is not None:
                    out.append(tid)
                    i = j
                    break
        return out


class _DecodePerToken(_Tok):
    """每个 token 各自按 UTF-8 解码再拼起来：跨 token 的汉字（3 个字节分在两个 token 里）变成了 �。"""

    def decode(self, ids):
        return "".join(self.vocab[int(i)].decode("utf-8", errors="replace") for i in ids)


class _DecodeStrict(_Tok):
    """decode 用了默认的 errors='strict'：遇到半个汉字就抛 UnicodeDecodeError。"""

    def decode(self, ids):
        return b"".join(self.vocab[int(i)] for i in ids).decode("utf-8")


class _SaveAsText(_Tok):
    """save 时把每个 token 的 bytes 当 UTF-8 文本写出（errors='replace'）：半个汉字的 token 变成了 �。"""

    def save(self, path):
        import json
        data = {"format": _sol._FORMAT, "version": 1, "special_tokens": self.special_tokens,
                "vocab": [[i, t.decode("utf-8", errors="replace").encode("utf-8").hex()] for i, t in self.vocab.items()],
                "merges": [[x.decode("utf-8", errors="replace").encode("utf-8").hex(),
                            y.decode("utf-8", errors="replace").encode("utf-8").hex()] for x, y in self.merges]}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)

    @classmethod
    def load(cls, path):
        import json
        data = json.loads(open(path, encoding="utf-8").read())
        vocab = {int(i): bytes.fromhex(h) for i, h in data["vocab"]}
        merges = [(bytes.fromhex(x), bytes.fromhex(y)) for x, y in data["merges"]]
        # 合并两边的 bytes 已经对不上词表了：丢掉对不上的，凑出一个“能用”的分词器
        known = set(vocab.values())
        merges = [(x, y) for x, y in merges if x in known and y in known and x + y in known]
        return cls(vocab, merges, data["special_tokens"])


class _HfIdsRenumbered(_Tok):
    """from_hf_json 没有保留文件里的 id，而是按“特殊 token、256 个字节、merges”重新编号：与 minimind 的 id 对不上。"""

    @classmethod
    def from_hf_json(cls, path):
        tok = _Tok.from_hf_json(path)
        specials = [tok.vocab[tok.special_ids[s]] for s in tok.special_tokens]
        order = specials + [bytes([b]) for b in range(256)] + [x + y for x, y in tok.merges]
        vocab, seen = {}, set()
        for t in order:
            if t not in seen:
                seen.add(t)
                vocab[len(vocab)] = t
        return cls(vocab, tok.merges, tok.special_tokens)


class _HfNoByteMapping(_Tok):
    """from_hf_json 把 vocab 里的字符串直接 .encode('utf-8')，忘了它们是 bytes_to_unicode 映射过的（'Ġ' 是空格）。"""

    @classmethod
    def from_hf_json(cls, path):
        with _patched(bytes_to_unicode=lambda: {b: chr(b) for b in range(256)}):
            try:
                return _Tok.from_hf_json.__func__(cls, path)
            except ValueError:
                pass
        # 没法映射回字节：干脆把字符串按 UTF-8 编码（单字节 token 缺了一半，就用原始字节补上）
        import json
        data = json.loads(open(path, encoding="utf-8").read())
        vocab = {int(i): s.encode("utf-8") for s, i in data["model"]["vocab"].items()}
        for t in data.get("added_tokens", []):
            vocab[int(t["id"])] = t["content"].encode("utf-8")
        have = set(vocab.values())
        nxt = max(vocab) + 1
        for b in range(256):
            if bytes([b]) not in have:
                vocab[nxt] = bytes([b])
                nxt += 1
        merges = []
        for m in data["model"]["merges"]:
            x, y = m.split(" ", 1) if isinstance(m, str) else m
            x, y = x.encode("utf-8"), y.encode("utf-8")
            if x + y in vocab.values():
                merges.append((x, y))
        return cls(vocab, merges, [t["content"] for t in data.get("added_tokens", [])])


BUGS = [
    Bug("no_pretokenization", "没有预切分（只按行切开）：合并跨过了词的边界，词表里出现 'e t'、'd, ' 这种跨词的 token",
        {"train_bpe": _train_with(split_words=_lines), "BPETokenizer": _tokenizer_with(split_words=_lines)}),
    Bug("whitespace_dropped", "预切分用了 text.split()：空格、换行全被丢掉，decode 回来的文本粘在了一起",
        {"train_bpe": _train_with(split_words=_whitespace_split),
         "BPETokenizer": _tokenizer_with(split_words=_whitespace_split)}),
    Bug("tie_break_smaller", "平局时选了字典序更小的 pair（应选更大的：比较 (左 bytes, 右 bytes)）",
        {"train_bpe": _train_with(_Greater=_Smaller)}),
    Bug("specials_counted_in_training", "训练前没有按特殊 token 把文本切开：'<|im_start|>' 的字符也参与了合并",
        {"train_bpe": _train_specials_counted}),
    Bug("vocab_size_ignores_specials", "合并条数算成了 vocab_size − 256，忘了减去特殊 token：词表比要求的多出 k 个",
        {"train_bpe": _train_forgot_specials_in_size}),
    Bug("bytes_before_specials", "id 错位：256 个字节占了 0…255，特殊 token 排到了后面（应是特殊 token 在最前：<|endoftext|>=0）",
        {"train_bpe": _train_bytes_first}),
    Bug("special_tokens_split", "encode 没有先整体挑出特殊 token：'<|im_end|>' 被拆成了字节（应是一个 id）",
        {"BPETokenizer": _SpecialsAsText}),
    Bug("leftmost_pair_first", "encode 每次合并最靠左的可合并 pair，而不是 rank 最小（最早学到）的那一个",
        {"BPETokenizer": _LeftmostFirst}),
    Bug("most_frequent_pair_first", "encode 按“出现次数最多的 pair 先合并”，而不是按 merges 的 rank 顺序",
        {"BPETokenizer": _MostFrequentFirst}),
    Bug("greedy_longest_match", "encode 用了贪心最长匹配（每次取词表里最长的前缀），那不是 BPE 的切法",
        {"BPETokenizer": _LongestMatch}),
    Bug("decode_per_token", "decode 对每个 token 各自按 UTF-8 解码：跨 token 的汉字变成了 �（应先拼字节、最后再解码）",
        {"BPETokenizer": _DecodePerToken}),
    Bug("decode_strict", "decode 没有用 errors='replace'：遇到不完整的 UTF-8（半个汉字）就抛异常",
        {"BPETokenizer": _DecodeStrict}),
    Bug("save_bytes_as_text", "save 把 token 的 bytes 当 UTF-8 文本写出：不是完整字符的 token（半个汉字）存坏了",
        {"BPETokenizer": _SaveAsText}),
    Bug("hf_ids_renumbered", "from_hf_json 没保留 tokenizer.json 里的 id，自己重新编号了：与 minimind 的 id 对不上",
        {"BPETokenizer": _HfIdsRenumbered}),
    Bug("hf_no_byte_mapping", "from_hf_json 忘了把 vocab 里的字符映射回字节（'Ġ' 是空格、'Ċ' 是换行）",
        {"BPETokenizer": _HfNoByteMapping}),
]
