"""模块 07：“不在 bug bank 里”的错误 BPE 也必须被抓住，并且失败信息要点出概念。

这些实现故意不放进 kata/bugbank/tokenizer.py：它们模拟测试作者没有预料到的学习者错误。
每一个都是在参考实现的源码上改一处（文本替换），写成一个独立的 bpe.py 再跑模块 07 的全部测试。
"""
from __future__ import annotations

import pytest

from kata.impl import REPO_ROOT
from kata.runner import run_tests

SOLUTION = REPO_ROOT / "solutions" / "07_tokenizer" / "bpe.py"

HELD_OUT = {
    # 平局时比较的是 id（谁先进词表）而不是 bytes：对单字节碰巧一样，一有合并出来的 token 就不同
    "tie_break_by_id": [
        ("heap = [(-c, _Greater((vocab[a], vocab[b])), (a, b))", "heap = [(-c, _Greater((a, b)), (a, b))"),
        ("heapq.heappush(heap, (-c, _Greater((vocab[p[0]], vocab[p[1]])), p))",
         "heapq.heappush(heap, (-c, _Greater(p), p))"),
    ],
    # 训练时每个词里只合并第一处出现（"aaaa" 里的 (a, a) 只换一次），之后的 pair 次数就错了
    "train_merges_first_occurrence_only": [
        ("                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:\n"
         "                    out.append(new)\n"
         "                    i += 2",
         "                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b and new not in out:\n"
         "                    out.append(new)\n"
         "                    i += 2"),
    ],
    # 数 pair 时忘了乘词频：每个不同的词只算一次
    "word_frequency_ignored": [
        ("    freqs = list(counts.values())", "    freqs = [1] * len(counts)"),
    ],
    # decode 用 errors='ignore'：非法字节被悄悄丢掉，而不是变成 U+FFFD
    "decode_ignores_invalid_bytes": [
        ('return b"".join(chunks).decode("utf-8", errors="replace")',
         'return b"".join(chunks).decode("utf-8", errors="ignore")'),
    ],
    # encode 前先 strip()：首尾的空白丢了
    "encode_strips_text": [
        ("        parts = self._splitter.split(text) if self._splitter else [text]",
         "        text = text.strip()\n        parts = self._splitter.split(text) if self._splitter else [text]"),
    ],
}

CONCEPT_WORDS = ("合并", "merges", "平局", "encode", "decode", "词表", "vocab", "特殊 token", "字节", "UTF-8", "U+FFFD",
                 "预切分", "往返", "rank", "朴素", "HF")


def _variant(name: str) -> str:
    src = SOLUTION.read_text(encoding="utf-8")
    for old, new in HELD_OUT[name]:
        assert src.count(old) == 1, f"solutions/07_tokenizer/bpe.py 变了，更新 {name} 的替换：{old[:60]!r}"
        src = src.replace(old, new)
    return src


@pytest.mark.parametrize("name", sorted(HELD_OUT))
def test_held_out_wrong_tokenizer_fails_with_a_concept(name, tmp_path):
    path = tmp_path / "bpe.py"
    path.write_text(_variant(name), encoding="utf-8")
    s = run_tests("07_tokenizer", str(path))
    assert s.failed > 0, f"错误实现 {name} 通过了模块 07 的全部测试"
    assert s.errors == 0, [o.message for o in s.outcomes if o.status == "error"]
    messages = [o.message for o in s.outcomes if o.status == "failed"]
    assert all(any(w in m for w in CONCEPT_WORDS) for m in messages), messages
    assert not any("Traceback" in o.detail for o in s.outcomes), "失败信息里不应该出现 traceback"
