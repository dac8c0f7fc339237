"""模块 03：“不在 bug bank 里”的错误注意力也必须被抓住，并且失败信息要点出概念。

这些实现故意不放进 kata/bugbank/attention.py：它们模拟测试作者没有预料到的学习者错误。
每一个都是在一份正确实现的源码上改一处（BASE + 一对 (原文, 改成)），写到临时文件里，
用 ``--impl <文件>`` 跑模块 03 的全部测试。
"""
from __future__ import annotations

import pytest

from kata.runner import run_tests

# 每个用例都在子进程里把模块 03 的全部测试跑一遍：机器繁忙时会超过 pyproject 里默认的 120 秒
pytestmark = pytest.mark.timeout(900)

BASE = '''
import math
import torch
import torch.nn.functional as F
from torch import nn

from solutions import RMSNorm, apply_rotary_pos_emb


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    sq, sk, d = q.size(-2), k.size(-2), q.size(-1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    allowed = torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq) if is_causal else None
    if attn_mask is not None:
        allowed = attn_mask if allowed is None else allowed & attn_mask
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -1e9)
    probs = torch.softmax(scores, dim=-1)
    return probs.to(v.dtype) @ v


def repeat_kv(x, n_rep):
    if n_rep == 1:
        return x
    b, s, h, d = x.shape
    return x[:, :, :, None, :].expand(b, s, h, n_rep, d).reshape(b, s, h * n_rep, d)


class Attention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads=None, dropout=0.0, qk_norm=False, eps=1e-5):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads <= 0 or n_kv_heads <= 0 or dim % n_heads or n_heads % n_kv_heads:
            raise ValueError("bad head counts")
        self.n_heads, self.n_kv_heads, self.n_rep = n_heads, n_kv_heads, n_heads // n_kv_heads
        self.head_dim = dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.qk_norm = qk_norm
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=eps)
            self.k_norm = RMSNorm(self.head_dim, eps=eps)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=1)
            v = torch.cat([past_key_value[1], v], dim=1)
        present = (k, v) if use_cache else None
        q = q.transpose(1, 2)
        k = repeat_kv(k, self.n_rep).transpose(1, 2)
        v = repeat_kv(v, self.n_rep).transpose(1, 2)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
        out = out.transpose(1, 2).reshape(b, s, -1)
        return self.resid_dropout(self.o_proj(out)), present
'''

HELD_OUT_ATTENTION = {
    # 1/√D 放在了 softmax 之后：权重之和变成 1/√D
    "scale_after_softmax": (
        "    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)\n",
        "    scores = q @ k.transpose(-2, -1)\n",
        "    probs = torch.softmax(scores, dim=-1)\n",
        "    probs = torch.softmax(scores, dim=-1) / math.sqrt(d)\n",
    ),
    # 因果掩码“取反”：只看得见未来
    "causal_inverted": (
        "tril(sk - sq) if is_causal else None",
        "triu(sk - sq + 1) if is_causal else None",
    ),
    # 打分用了 v、加权平均用了 k（k 和 v 弄反）
    "k_and_v_swapped": (
        "        out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)\n",
        "        out = scaled_dot_product_attention(q, v, k, attn_mask=mask, is_causal=True)\n",
    ),
    # 忘了输出投影 o_proj（dim == H·D 时形状照样对）
    "no_o_proj": (
        "        return self.resid_dropout(self.o_proj(out)), present\n",
        "        return self.resid_dropout(out), present\n",
    ),
    # present 存成了转置之后的 [B, KVH, S, D]
    "present_transposed": (
        "        present = (k, v) if use_cache else None\n",
        "        present = (k.transpose(1, 2), v.transpose(1, 2)) if use_cache else None\n",
    ),
    # 合并头时用了 view 成 [B, S, H·D] 之前没有 transpose，而是把 q 一开始就 view 成 [B, H, S, D]
    "heads_view_wrong": (
        "        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim)\n",
        "        q = self.q_proj(x).view(b, self.n_heads, s, self.head_dim).transpose(1, 2)\n",
    ),
    # 只在没有 padding 时做 dropout（有 attention_mask 的那条路径上忘了）
    "dropout_skipped_with_padding": (
        "        return self.resid_dropout(self.o_proj(out)), present\n",
        "        out = self.o_proj(out)\n"
        "        return (self.resid_dropout(out) if attention_mask is None else out), present\n",
    ),
    # dropout 做在了 v 上（注意力之前），而不是 o_proj 的输出上
    "dropout_on_v": (
        "        v = repeat_kv(v, self.n_rep).transpose(1, 2)\n",
        "        v = self.resid_dropout(repeat_kv(v, self.n_rep).transpose(1, 2))\n",
        "        return self.resid_dropout(self.o_proj(out)), present\n",
        "        return self.o_proj(out), present\n",
    ),
}

CONCEPT_WORDS = ("dropout", "注意力", "因果", "softmax", "掩码", "cache", "present", "头", "√", "对比", "形状", "RoPE",
                 "padding", "梯度", "分布", "参数", "输出", "GQA", "权重")


def _source(name: str) -> str:
    edits = HELD_OUT_ATTENTION[name]
    src = BASE
    for old, new in zip(edits[0::2], edits[1::2]):
        assert old in src, (name, old)
        src = src.replace(old, new)
    return src


def test_base_implementation_passes(tmp_path):
    # 对照组：没有改动的 BASE 必须全部通过，否则下面的“失败”说明不了什么
    path = tmp_path / "attention.py"
    path.write_text(BASE, encoding="utf-8")
    s = run_tests("03_attention", str(path))
    bad = [(o.name, o.message) for o in s.outcomes if o.status != "passed"]
    assert s.total > 0 and not bad, bad[:5]


@pytest.mark.parametrize("name", sorted(HELD_OUT_ATTENTION))
def test_held_out_wrong_attention_fails_with_a_concept(name, tmp_path):
    path = tmp_path / "attention.py"
    path.write_text(_source(name), encoding="utf-8")
    s = run_tests("03_attention", str(path))
    assert s.failed > 0, f"错误实现 {name} 通过了模块 03 的全部测试"
    assert s.errors == 0
    messages = [o.message for o in s.outcomes if o.status == "failed"]
    assert all(any(w in m for w in CONCEPT_WORDS) for m in messages), messages
    assert not any("Traceback" in o.detail for o in s.outcomes), "失败信息里不应该出现 traceback"
