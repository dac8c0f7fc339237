"""模块 03 的 bug bank：真实会写出来的错误注意力。

两类：
- 注意力函数 / repeat_kv 本身的错误：同时换掉 ``scaled_dot_product_attention``（或 ``repeat_kv``）和
  ``Attention``——学习者的 Attention 调用的是他自己的函数，所以这个错误也会出现在 Attention 的输出里；
- 只在 ``Attention.forward`` 里的错误（RoPE 转了 v、合并头时忘了 transpose、KV cache 的各种错位……）。

所有错误的 Attention 都继承参考实现的 ``__init__``（参数一样），只重写 forward，并且总走手写路径。
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kata.bugbank import Bug
from solutions import Attention as _RefAttention
from solutions import RMSNorm, apply_rotary_pos_emb
from solutions import repeat_kv as _ref_repeat_kv


# ---------------------------------------------------------------------------------------------
# 一个带开关的注意力函数：默认就是正确的，每个 bug 拧错一个开关
# ---------------------------------------------------------------------------------------------

def _make_sdpa(*, scale: str = "sqrt", softmax_dim: int = -1, diag_shift: int = 0, top_left: bool = False,
               mask_after_softmax: bool = False, invert_bool: bool = False, mask_xor_causal: bool = False,
               guard_dead_rows: bool = True, float32_only: bool = False):
    def sdpa(q, k, v, attn_mask=None, is_causal=False):
        q_len, k_len, head_dim = q.size(-2), k.size(-2), q.size(-1)
        scores = q @ k.transpose(-2, -1)
        if scale == "sqrt":
            scores = scores / math.sqrt(head_dim)
        elif scale == "d":
            scores = scores / head_dim
        scores = scores.float() if float32_only else scores.to(torch.promote_types(scores.dtype, torch.float32))
        allowed = None
        if is_causal:
            diag = (0 if top_left else k_len - q_len) + diag_shift
            allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(diag)
        if attn_mask is not None and not (mask_xor_causal and is_causal):
            m = ~attn_mask if invert_bool else attn_mask
            allowed = m if allowed is None else allowed & m
        dead = None
        if allowed is not None and not mask_after_softmax:
            scores = scores.masked_fill(~allowed, float("-inf"))
            if guard_dead_rows:
                dead = torch.isneginf(scores).all(dim=-1, keepdim=True)
                scores = scores.masked_fill(dead, 0.0)
        probs = torch.softmax(scores, dim=softmax_dim)
        if dead is not None:
            probs = probs.masked_fill(dead, 0.0)
        if mask_after_softmax and allowed is not None:
            probs = probs * allowed
        return probs.to(v.dtype) @ v
    return sdpa


_good_sdpa = _make_sdpa()


def _tiled_repeat_kv(x, n_rep):
    return x.repeat(1, 1, n_rep, 1)  # 平铺：头的来源是 0 1 0 1 …，而不是 0 0 1 1 …


# ---------------------------------------------------------------------------------------------
# 一个带开关的 Attention：默认与参考实现的手写路径相同
# ---------------------------------------------------------------------------------------------

class _BugAttention(_RefAttention):
    sdpa = staticmethod(_good_sdpa)
    rkv = staticmethod(_ref_repeat_kv)
    rope_on_v = False
    merge_without_transpose = False
    cache_after_repeat = False
    forget_past = False
    padding_inverted = False
    qk_norm_after_rope = False
    causal_only_without_cache = False
    torch_sdpa_even_with_cache = False
    mask_new_tokens_only = False
    heads_first_view = False
    dropout_site = "output"      # output（正确）| none | before_o_proj | probs | always（F.dropout 没传 training）
    qk_norm_default_eps = False

    def __init__(self, dim, n_heads, n_kv_heads=None, dropout=0.0, qk_norm=False, eps=1e-5):
        super().__init__(dim, n_heads, n_kv_heads=n_kv_heads, dropout=dropout, qk_norm=qk_norm, eps=eps)
        if qk_norm and self.qk_norm_default_eps:  # RMSNorm(head_dim)：没把 eps 传进去
            self.q_norm, self.k_norm = RMSNorm(self.head_dim), RMSNorm(self.head_dim)

    def _split(self, t, n):
        bsz, seq_len, _ = t.shape
        if self.heads_first_view:  # view(B, H, S, D) 当成了 [B, H, S, D]：把不同位置的数拼进了同一个头
            return t.view(bsz, n, seq_len, self.head_dim).transpose(1, 2)
        return t.view(bsz, seq_len, n, self.head_dim)

    def forward(self, x, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        bsz, seq_len, _ = x.shape
        p = self.resid_dropout.p
        q = self._split(self.q_proj(x), self.n_heads)
        k = self._split(self.k_proj(x), self.n_kv_heads)
        v = self._split(self.v_proj(x), self.n_kv_heads)
        cos, sin = position_embeddings
        if self.qk_norm and not self.qk_norm_after_rope:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k2 = apply_rotary_pos_emb(q, k, cos, sin)
        if self.rope_on_v:
            _, v = apply_rotary_pos_emb(q, v, cos, sin)
        k = k2
        if self.qk_norm and self.qk_norm_after_rope:
            q, k = self.q_norm(q), self.k_norm(k)

        if self.cache_after_repeat:
            k, v = self.rkv(k, self.n_rep), self.rkv(v, self.n_rep)
        if past_key_value is not None and not self.forget_past:
            k = torch.cat([past_key_value[0], k], dim=1)
            v = torch.cat([past_key_value[1], v], dim=1)
        present = (k, v) if use_cache else None
        if not self.cache_after_repeat:
            k, v = self.rkv(k, self.n_rep), self.rkv(v, self.n_rep)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

        no_padding = attention_mask is None or bool(torch.all(attention_mask == 1))
        if self.dropout_site == "probs" and past_key_value is None and no_padding:
            # minimind 快速路径的写法：dropout 在注意力概率上，输出投影之后却没有
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p if self.training else 0.0, is_causal=True)
        elif self.torch_sdpa_even_with_cache and no_padding:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # Sq ≠ Sk 时是左上对齐的
        else:
            mask = None
            if not no_padding:
                keep = attention_mask == 0 if self.padding_inverted else attention_mask.bool()
                if self.mask_new_tokens_only:  # 只留下新 token 的那几列：[B, S] 而不是 [B, S_past + S]
                    keep = keep[:, -seq_len:]
                mask = keep[:, None, None, :]
            causal = past_key_value is None if self.causal_only_without_cache else True
            out = self.sdpa(q, k, v, attn_mask=mask, is_causal=causal)
        if self.merge_without_transpose:
            out = out.reshape(bsz, seq_len, -1)
        else:
            out = out.transpose(1, 2).reshape(bsz, seq_len, -1)
        if self.dropout_site == "before_o_proj":
            return self.o_proj(self.resid_dropout(out)), present
        if self.dropout_site in ("none", "probs"):
            return self.o_proj(out), present
        if self.dropout_site == "always":
            return F.dropout(self.o_proj(out), p), present
        return self.resid_dropout(self.o_proj(out)), present


def _attention(name: str, **attrs):
    attrs = {k: staticmethod(v) if callable(v) else v for k, v in attrs.items()}
    return type(f"Attention_{name}", (_BugAttention,), attrs)


def _sdpa_bug(name: str, description: str, **knobs) -> Bug:
    bad = _make_sdpa(**knobs)
    return Bug(name, description, {"scaled_dot_product_attention": bad, "Attention": _attention(name, sdpa=bad)})


def _attention_bug(name: str, description: str, **attrs) -> Bug:
    return Bug(name, description, {"Attention": _attention(name, **attrs)})


BUGS = [
    # ---- 缩放点积注意力本身
    _sdpa_bug("no_scale", "忘了除以 √D：分数的方差随 head_dim 增大，softmax 被推向 one-hot", scale="none"),
    _sdpa_bug("scale_by_d", "除以 D 而不是 √D：分数被压得太小，注意力几乎是均匀的", scale="d"),
    _sdpa_bug("softmax_over_queries", "softmax 沿了 query 轴（dim=-2）而不是 key 轴（dim=-1）：每列之和为 1，每行不是",
              softmax_dim=-2),
    _sdpa_bug("diagonal_masked", "因果掩码把对角线也屏蔽了（triu(diagonal=0)）：token 看不见自己，第一个 token 什么都看不见",
              diag_shift=-1),
    _sdpa_bug("one_future_token_visible", "因果掩码差了一位（triu(diagonal=2)）：每个 token 能偷看下一个 token", diag_shift=1),
    _sdpa_bug("causal_top_left", "因果掩码左上对齐（tril(0)，F.scaled_dot_product_attention 的 is_causal 在 Sq≠Sk 时就是这样）："
              "带 KV cache 时新 query 只能看见最前面的几个 key", top_left=True),
    _sdpa_bug("mask_after_softmax", "掩码在 softmax 之后才乘上去：被屏蔽的权重归零了，但每行之和不再是 1", mask_after_softmax=True),
    _sdpa_bug("bool_mask_inverted", "bool 掩码的含义弄反了（把 True 当成“屏蔽”，那是 nn.MultiheadAttention 的约定）",
              invert_bool=True),
    _sdpa_bug("mask_ignored_when_causal", "is_causal=True 时忽略了 attn_mask（只用了其中一个掩码）：padding 没有被屏蔽",
              mask_xor_causal=True),
    _sdpa_bug("float64_downcast", "softmax 前用了 scores.float()（minimind 的原话）：float64 输入也被降到 float32，精度只剩 ~1e-7；"
              "本课要求“至少 float32”：scores.to(torch.promote_types(scores.dtype, torch.float32))", float32_only=True),
    _sdpa_bug("nan_on_fully_masked_row", "没有处理整行都被屏蔽的 query：softmax(全 −∞) = NaN，会传染给下一层",
              guard_dead_rows=False),
    # ---- repeat_kv
    Bug("repeat_kv_tiles", "repeat_kv 用了平铺 x.repeat(1, 1, n_rep, 1)（头的来源 0 1 0 1）而不是交错（0 0 1 1）",
        {"repeat_kv": _tiled_repeat_kv, "Attention": _attention("repeat_kv_tiles", rkv=_tiled_repeat_kv)}),
    # ---- Attention.forward
    _attention_bug("rope_on_v", "RoPE 也转了 v：输出随绝对位置变化（RoPE 只该转 q 和 k）", rope_on_v=True),
    _attention_bug("heads_merged_without_transpose", "合并头时忘了先 transpose(1, 2)：[B, H, S, D] 直接 reshape 成 "
                   "[B, S, H·D]，把不同位置的向量拼在了一起", merge_without_transpose=True),
    _attention_bug("cache_after_repeat_kv", "KV cache 存的是 repeat_kv 之后的 k、v（n_heads 个头）：GQA 省下的显存又花回去了",
                   cache_after_repeat=True),
    _attention_bug("past_not_concatenated", "忘了把 past_key_value 拼到新的 k、v 前面：解码时只看得见当前这几个 token",
                   forget_past=True),
    _attention_bug("padding_mask_inverted", "把 attention_mask 的 1 当成了 padding（约定是 1 = 真实 token，0 = padding）",
                   padding_inverted=True),
    _attention_bug("qk_norm_after_rope", "QK-norm 放在了 RoPE 之后（minimind-3 是先 q_norm / k_norm 再 RoPE）",
                   qk_norm_after_rope=True),
    _attention_bug("no_causal_mask_with_cache", "有 KV cache 时就不加因果掩码：逐 token 解码没问题，但一次喂多个新 token 时"
                   "它们能互相看见未来", causal_only_without_cache=True),
    _attention_bug("torch_sdpa_with_cache", "带 KV cache 时也走 F.scaled_dot_product_attention(is_causal=True)："
                   "它的因果掩码在 Sq≠Sk 时左上对齐，新 token 看不见大部分旧 key", torch_sdpa_even_with_cache=True),
    _attention_bug("padding_mask_sliced_to_new_tokens", "带 KV cache 时把 attention_mask 切成只剩新 token 的那几列"
                   "（attention_mask[:, -S:]）：逐 token 解码时 [B, 1, 1, 1] 的掩码广播到全部 key，cache 里的旧 padding 不再被屏蔽",
                   mask_new_tokens_only=True),
    _attention_bug("view_heads_first_without_transpose", "拆头时直接 view(B, H, S, D)（没有先 view(B, S, H, D) 再 transpose）："
                   "q_proj 的输出是“每个位置连着放 H·D 个数”，这样会把不同位置的数拼进同一个头", heads_first_view=True),
    _attention_bug("no_output_dropout", "Attention 没有做 dropout（或建了 resid_dropout 却没用上）：dropout=p 在训练时不起作用",
                   dropout_site="none"),
    _attention_bug("dropout_before_o_proj", "dropout 放在了 o_proj 之前（合并头之后、输出投影之前）：本课的 dropout 在 o_proj 的输出上",
                   dropout_site="before_o_proj"),
    _attention_bug("dropout_on_attention_probs", "dropout 做在了注意力概率上（F.scaled_dot_product_attention 的 dropout_p，"
                   "minimind 的 attn_dropout），o_proj 的输出却没有 dropout；本课只在 o_proj 之后做 dropout",
                   dropout_site="probs"),
    _attention_bug("functional_dropout_without_training", "用了 F.dropout(out, p) 却没传 training=self.training："
                   "它的默认值是 True，eval() 之后也在随机丢弃", dropout_site="always"),
    _attention_bug("qk_norm_eps_ignored", "q_norm / k_norm 建成了 RMSNorm(head_dim)，没把构造参数 eps 传进去",
                   qk_norm_default_eps=True),
]
