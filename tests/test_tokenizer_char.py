"""kata.tokenizer.CharTokenizer：与 BPETokenizer 同一套接口，且是 kata.data.CharTokenizer 的超集。"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from kata import data
from kata.tokenizer import CharTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n你好，世界 🙂"


def test_ids_match_kata_data_char_tokenizer():
    old, new = data.CharTokenizer.from_text(TEXT), CharTokenizer.from_text(TEXT)
    assert new.chars == old.chars and new.vocab_size == old.vocab_size == len(set(TEXT))
    assert new.encode(TEXT) == old.encode(TEXT)
    assert torch.equal(new.encode_tensor(TEXT), old.encode_tensor(TEXT))
    assert new.decode(new.encode(TEXT)) == TEXT
    assert len(new) == new.vocab_size and "vocab_size" in repr(new)


@given(st.text(st.sampled_from(sorted(set(TEXT))), max_size=50))
def test_round_trip_and_tensor_path_agree(s):
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    assert tok.encode_tensor(s).tolist() == ids
    assert tok.decode(torch.tensor(ids, dtype=torch.long)) == s
    assert tok.decode(np.array(ids, dtype=np.int64)) == s


def test_errors_are_clear():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="不在词表里"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="不在词表里"):
        tok.encode_tensor("zab")
    with pytest.raises(ValueError, match="不在词表里"):
        tok.decode([3])
    with pytest.raises(ValueError, match="一维"):
        tok.decode(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError):
        tok.encode(b"abc")
    with pytest.raises(ValueError):
        CharTokenizer(["a", "a"])
    with pytest.raises(ValueError):
        CharTokenizer(["ab"])


def test_special_tokens_come_after_the_chars():
    tok = CharTokenizer.from_text("hi there<|im_end|>", special_tokens=["<|im_end|>", "<|im_start|>"])
    n = len(set("hi there"))
    assert tok.vocab_size == n + 2
    ids = tok.encode("<|im_start|>hi<|im_end|>")
    assert ids[0] == n + 1 and ids[-1] == n and len(ids) == 4
    assert tok.decode(ids) == "<|im_start|>hi<|im_end|>"
    assert tok.encode_tensor("hi<|im_end|>").tolist() == tok.encode("hi<|im_end|>")


def test_save_load_is_identical_and_atomic(tmp_path):
    tok = CharTokenizer.from_text(TEXT, special_tokens=["<|endoftext|>"])
    path = tmp_path / "sub" / "char.json"
    tok.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["char.json"]
    again = CharTokenizer.load(path)
    assert again.chars == tok.chars and again.special_tokens == tok.special_tokens
    assert again.encode(TEXT + "<|endoftext|>") == tok.encode(TEXT + "<|endoftext|>")


def test_load_rejects_other_files(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text('{"model": {"type": "BPE"}}', encoding="utf-8")
    with pytest.raises(ValueError, match="CharTokenizer.save"):
        CharTokenizer.load(bad)
    with pytest.raises(ValueError, match="读不了"):
        CharTokenizer.load(tmp_path / "missing.json")
