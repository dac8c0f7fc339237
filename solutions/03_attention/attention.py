"""注意力参考实现：缩放点积注意力、GQA 的 repeat_kv、带 KV cache 的 Attention。

对应 minimind model/model_minimind.py 的 ``repeat_kv`` 与 ``Attention``。minimind 把注意力的数学
直接写在 Attention.forward 里；这里把它提成一个函数 ``scaled_dot_product_attention``，
好让学习者单独实现、单独测试它（tinylm 的消融实验也直接调用它）。
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from solutions import RMSNorm, apply_rotary_pos_emb


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None,
                                 is_causal: bool = False) -> torch.Tensor:
    """softmax(q·kᵀ / √D + 掩码) · v。

    形状：q [B, H, Sq, D]，k / v [B, H, Sk, D]，返回 [B, H, Sq, D]（dtype 同 q）。
    - attn_mask：bool 张量时 True = 可以看、False = 屏蔽；浮点张量时直接加到分数上
      （与 F.scaled_dot_product_attention 的约定一样）。可广播到 [B, H, Sq, Sk]。
    - is_causal：第 i 个 query 只能看到第 0 … Sk−Sq+i 个 key，即因果掩码对齐到*最后一个* query。
      带 KV cache 解码时 Sq < Sk：新来的 query 是序列的最后几个位置，能看见全部旧 key。
      （注意 F.scaled_dot_product_attention 的 is_causal 在 Sq ≠ Sk 时是左上对齐的，和这里不同。）
    - softmax 在 float32 里做：低精度下 exp 容易溢出，且求和误差大（minimind 同样 scores.float()）。
    - 整行都被屏蔽的 query 输出 0 而不是 NaN（例如 padding 位置）。
    """
    q_len, k_len, head_dim = q.size(-2), k.size(-2), q.size(-1)
    # 除以 √D：q、k 各分量方差为 1 时 q·k 的方差是 D，不缩放会把 softmax 推进梯度极小的饱和区
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(head_dim)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))

    allowed = None
    if is_causal:
        # 第 i 行允许的列 j ≤ i + (Sk − Sq)：tril 的对角线偏移正好是 Sk − Sq
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).tril(k_len - q_len)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed = attn_mask if allowed is None else allowed & attn_mask
        else:
            scores = scores + attn_mask.to(scores.dtype)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))

    dead_rows = None
    if attn_mask is not None or (is_causal and q_len > k_len):
        # 可能有整行都被屏蔽的 query（只有因果掩码且 Sq ≤ Sk 时每行至少能看见一个 key，省掉这一步）。
        # 整行 -inf 时 softmax 是 0/0 = NaN，而且 NaN 会顺着反向传播污染梯度：
        # 先把这些行的分数换成 0（任意有限值都行）再 softmax，之后把概率清零
        dead_rows = torch.isneginf(scores).all(dim=-1, keepdim=True)
        scores = scores.masked_fill(dead_rows, 0.0)
    probs = torch.softmax(scores, dim=-1)
    if dead_rows is not None:
        probs = probs.masked_fill(dead_rows, 0.0)
    return probs.to(v.dtype) @ v


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """GQA：把 KVH 个 KV 头各复制 n_rep 份，[B, S, KVH, D] → [B, S, KVH·n_rep, D]。

    复制是“交错”的（同 torch.repeat_interleave(x, n_rep, dim=2)）：
    输出的第 h 个头 = 输入的第 h // n_rep 个 KV 头，于是相邻的 n_rep 个 query 头共享一个 KV 头。
    用 expand + reshape 而不是 repeat_interleave：expand 不拷贝，reshape 时才真正复制一次。
    """
    if n_rep == 1:
        return x
    bsz, seq_len, n_kv_heads, head_dim = x.shape
    return (x[:, :, :, None, :]
            .expand(bsz, seq_len, n_kv_heads, n_rep, head_dim)
            .reshape(bsz, seq_len, n_kv_heads * n_rep, head_dim))


class Attention(nn.Module):
    """多头（GQA）因果自注意力，带 RoPE 与 KV cache。

    参数名与 minimind 相同：q_proj k_proj v_proj o_proj（都没有 bias），qk_norm 时还有 q_norm k_norm。
    n_kv_heads < n_heads 就是 GQA：KV 头更少，KV cache 也就更小；n_kv_heads=1 是 MQA。
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: Optional[int] = None, dropout: float = 0.0,
                 qk_norm: bool = False, eps: float = 1e-5):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads <= 0 or n_kv_heads <= 0:
            raise ValueError(f"n_heads 和 n_kv_heads 必须是正整数，实际 n_heads={n_heads}, n_kv_heads={n_kv_heads}")
        if dim % n_heads != 0:
            raise ValueError(f"dim（{dim}）必须能被 n_heads（{n_heads}）整除：每个头分到 dim / n_heads 维")
        if n_heads % n_kv_heads != 0:
            raise ValueError(
                f"n_heads（{n_heads}）必须能被 n_kv_heads（{n_kv_heads}）整除：GQA 里每组 query 头共享一个 KV 头"
            )
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_rep = n_heads // n_kv_heads
        self.head_dim = dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.qk_norm = qk_norm
        if qk_norm:
            # minimind-3：对每个头的 q、k 各做一次 RMSNorm（在 RoPE 之前），限制注意力分数的量级
            self.q_norm = RMSNorm(self.head_dim, eps=eps)
            self.k_norm = RMSNorm(self.head_dim, eps=eps)
        else:
            self.q_norm = None
            self.k_norm = None
        # 只有输出投影之后的 dropout（minimind 的 resid_dropout）。minimind 还对注意力概率做 dropout
        # （attn_dropout / dropout_p）；这里不做：手写的 scaled_dot_product_attention 没有 dropout 参数，
        # 只在快速路径上做会让“有 padding / 没 padding”两条路径的训练行为不一样
        self.resid_dropout = nn.Dropout(dropout)
        # 和 minimind 的 config.flash_attn 一样：可以关掉快速路径（测试用它比较两条路径）
        self.flash = hasattr(F, "scaled_dot_product_attention")

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                past_key_value: Optional[tuple[torch.Tensor, torch.Tensor]] = None, use_cache: bool = False,
                attention_mask: Optional[torch.Tensor] = None):
        """x [B, S, dim]；position_embeddings = (cos, sin)，各 [S, head_dim]，已切好当前这 S 个位置。

        past_key_value：上一步返回的 (k, v)，各 [B, S_past, KVH, head_dim]。
        attention_mask：[B, S_past + S]，1 = 真实 token，0 = padding。
        返回 (out [B, S, dim], present)；present = (k, v) 含全部 S_past + S 个位置（use_cache=False 时为 None）。
        """
        bsz, seq_len, _ = x.shape
        q = self.q_proj(x).view(bsz, seq_len, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = position_embeddings
        q, k = apply_rotary_pos_emb(q, k, cos, sin)

        # KV cache 在 repeat_kv 之前拼接：cache 里只存 KVH 个头，这就是 GQA 省显存的地方
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=1)
            v = torch.cat([past_key_value[1], v], dim=1)
        present = (k, v) if use_cache else None

        q = q.transpose(1, 2)                               # [B, H, S, D]
        k = repeat_kv(k, self.n_rep).transpose(1, 2)        # [B, H, S_total, D]
        v = repeat_kv(v, self.n_rep).transpose(1, 2)

        no_padding = attention_mask is None or bool(torch.all(attention_mask == 1))
        if self.flash and past_key_value is None and no_padding:
            # 没有 cache（Sq == Sk，左上/右下对齐的因果掩码相同）也没有 padding：
            # 与下面的手写路径数学上相同，用 PyTorch 的融合实现更快更省内存
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            mask = None
            if not no_padding:
                mask = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, S_total]：对所有头、所有 query 广播
            out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True)
        out = out.transpose(1, 2).reshape(bsz, seq_len, -1)
        return self.resid_dropout(self.o_proj(out)), present
