"""练习 03：注意力（Attention）——缩放点积注意力、GQA 的 repeat_kv、带 KV cache 的多头注意力。

按这个顺序补完三样东西，直到 `pytest exercises/03_attention` 全部通过：

1. `scaled_dot_product_attention`（teaching.md §2）；
2. `repeat_kv`（teaching.md §3）；
3. `Attention.__init__` 与 `Attention.forward`（teaching.md §4）。

`Attention` 用的是**你自己**在模块 01、02 写的 RMSNorm 和 apply_rotary_pos_emb（下面那行 import），
手写路径上调用的是你在本文件写的 scaled_dot_product_attention 和 repeat_kv。
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from exercises import RMSNorm, apply_rotary_pos_emb  # 你在模块 01、02 写的实现


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None,
                                 is_causal: bool = False) -> torch.Tensor:
    """缩放点积注意力（手写，不许调用 F.scaled_dot_product_attention）。

    公式（D = head_dim）::

        scores = q · kᵀ / √D                  [B, H, Sq, Sk]
        scores[被屏蔽的位置] = -∞
        P      = softmax(scores, 沿最后一维 = key 轴)
        out    = P · v                         [B, H, Sq, D]

    形状：q 为 [B, H, Sq, D]，k、v 为 [B, H, Sk, D]；返回 [B, H, Sq, D]，dtype 与 q 相同。

    掩码：
    - attn_mask：bool 张量，**True = 可以看**、False = 屏蔽（与 F.scaled_dot_product_attention 相同的约定），
      能广播到 [B, H, Sq, Sk]（例如 padding 掩码 [B, 1, 1, Sk]）。
    - is_causal=True：因果掩码**对齐到最后一个 query**——第 i 个 query（i = 0 … Sq−1）只能看第
      0 … Sk−Sq+i 个 key。Sq == Sk 时就是普通的下三角；带 KV cache 解码时 Sq < Sk，新 query 是序列
      最后几个位置，能看到全部旧 key。
    - 两者同时给出时，两个掩码都要生效（取“与”）。

    提示：
    - `k.transpose(-2, -1)` 交换最后两维；`torch.ones(Sq, Sk, dtype=torch.bool).tril(diagonal)` 的
      diagonal 参数正好用来做“对齐到最后一个 query”的偏移（偏移是多少？画一个 Sq=2、Sk=5 的表格想想）；
    - 屏蔽用 `scores.masked_fill(~allowed, float("-inf"))`；softmax 在 float32 里做
      （`scores.to(torch.promote_types(scores.dtype, torch.float32))`，float64 保持 float64），乘 v 之前转回 v 的 dtype；
    - 某一行的 key 全部被屏蔽（例如左侧 padding 的位置）时，softmax 会得到 0/0 = NaN，而 NaN 会在下一层
      传染给真实 token：让这种行输出有限值（例如 0），见 teaching.md §2.4；
    - 还卡住？运行 `python -m kata hint 03`，每次多给一条提示。
    """
    raise NotImplementedError(
        "还没实现：exercises/03_attention/attention.py · scaled_dot_product_attention — 先读 teaching.md §2"
    )


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """GQA：把每个 KV 头复制 n_rep 份，[B, S, KVH, D] → [B, S, KVH·n_rep, D]。

    复制是**交错**的（interleave）：输出的第 h 个头 = 输入的第 h // n_rep 个 KV 头，
    即 KV 头 0 0 … 0（n_rep 个）1 1 … 1 …，相邻的 n_rep 个 query 头共用一个 KV 头。
    结果必须等于 `torch.repeat_interleave(x, n_rep, dim=2)`。n_rep == 1 时原样返回。

    提示：
    - `x[:, :, :, None, :]` 在 KV 头后面插入一个长度为 1 的新维度，`.expand(B, S, KVH, n_rep, D)` 把它
      “看成”长度 n_rep（不拷贝内存），最后 `.reshape(B, S, KVH * n_rep, D)`；
    - `x.repeat(1, 1, n_rep, 1)` 是**平铺**（0 1 … 0 1 …），不是交错——这是常见错误。
    """
    raise NotImplementedError(
        "还没实现：exercises/03_attention/attention.py · repeat_kv — 先读 teaching.md §3"
    )


class Attention(nn.Module):
    """多头因果自注意力（支持 GQA / MQA、QK-norm、RoPE、padding 掩码与 KV cache）。

    构造 `Attention(dim, n_heads, n_kv_heads=None, dropout=0.0, qk_norm=False, eps=1e-5)`：
    - head_dim = dim // n_heads；n_kv_heads 为 None 时等于 n_heads（标准多头）；
    - 参数名与 minimind 相同，都**没有 bias**：
        q_proj: Linear(dim, n_heads·head_dim)      k_proj: Linear(dim, n_kv_heads·head_dim)
        v_proj: Linear(dim, n_kv_heads·head_dim)   o_proj: Linear(n_heads·head_dim, dim)
    - qk_norm=True 时还有 q_norm、k_norm = RMSNorm(head_dim, eps)（minimind-3 的做法，用你的 RMSNorm）；
      qk_norm=False 时不要创建它们（state_dict 里不应出现 q_norm / k_norm）；
    - n_heads、n_kv_heads 不是正整数，或 dim 不能被 n_heads 整除、或 n_heads 不能被 n_kv_heads 整除时，
      抛出 ValueError 并说明原因（先检查正整数：n_heads=0 时 dim % n_heads 本身就会抛 ZeroDivisionError）；
    - dropout 只有一处：o_proj 的**输出**之后的 `nn.Dropout(dropout)`（minimind 叫 resid_dropout）。
      train() 时它以概率 dropout 把输出的元素置 0、其余除以 1 − dropout；eval() 后什么都不做。
      注意力概率上**不做** dropout（minimind 还有一个 attn_dropout / dropout_p；本课的
      scaled_dot_product_attention 没有 dropout 参数，为了快速路径和手写路径结果一致，这里不做）；
      也不要把 dropout 放在 o_proj 之前。测试会在 train() 下检查：输出的元素要么恰好是 0，
      要么恰好是不加 dropout 时的 1/(1 − dropout) 倍；
    - eps 传给 q_norm、k_norm（测试会用一个很大的 eps 检查它真的传进去了）。
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: Optional[int] = None, dropout: float = 0.0,
                 qk_norm: bool = False, eps: float = 1e-5):
        super().__init__()
        raise NotImplementedError(
            "还没实现：exercises/03_attention/attention.py · Attention.__init__ — 先读 teaching.md §4"
        )

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                past_key_value: Optional[tuple[torch.Tensor, torch.Tensor]] = None, use_cache: bool = False,
                attention_mask: Optional[torch.Tensor] = None):
        """一次前向。

        输入：
        - x：[B, S, dim]，这一次新来的 S 个 token；
        - position_embeddings = (cos, sin)，各 [S, head_dim]：**已经切好**的、这 S 个 token 所在位置的 RoPE 表
          （带 cache 时是位置 S_past … S_past+S−1 的那几行，由调用者切好）；
        - past_key_value：上一次返回的 present = (k, v)，各 [B, S_past, n_kv_heads, head_dim]；没有就是 None；
        - use_cache：True 时返回 present，False 时 present 为 None；
        - attention_mask：[B, S_past + S]，1 = 真实 token，0 = padding；None = 没有 padding。
          它覆盖**全部** S_past + S 个 key（旧的 padding 也在里面）：不要只切出新 token 的那几列。

        返回 (out, present)：out 为 [B, S, dim]；present = (k, v)，各 [B, S_past + S, n_kv_heads, head_dim]
        ——存的是 RoPE 之后、**repeat_kv 之前**的 k 和 v（只存 KV 头，这正是 GQA 省显存的地方）。

        步骤（teaching.md §4 逐步解释）：
        1. 投影并拆头：q → [B, S, n_heads, head_dim]，k、v → [B, S, n_kv_heads, head_dim]；
        2. qk_norm 时对 q、k 各做 RMSNorm（在 RoPE **之前**）；
        3. RoPE：`q, k = apply_rotary_pos_emb(q, k, cos, sin)`（只转 q 和 k，不转 v）；
        4. 有 past_key_value 就沿序列维（dim=1）把旧的 k、v 拼在前面；记下 present；
        5. repeat_kv 到 n_heads 个头，transpose 成 [B, H, S, D]；
        6. 用你的 scaled_dot_product_attention（is_causal=True；有 padding 时再加 bool 掩码 [B, 1, 1, S_total]）；
        7. transpose 回 [B, S, H, D]，合并成 [B, S, H·D]，过 o_proj，再过 dropout（两条路径都要过）。

        提示：
        - view 成 [B, S, H, D] 再 transpose(1, 2)，不要直接 view 成 [B, H, S, D]（那会把序列和头混在一起）；
        - 合并头之前先 transpose(1, 2) 回来，再 reshape（transpose 之后内存不连续，用 reshape 而不是 view）；
        - 你也可以像 minimind 一样在“没有 cache、没有 padding”时走 F.scaled_dot_product_attention 的快速路径，
          但手写路径必须正确——测试会专门检查带 cache 和带 padding 的情况。
        """
        raise NotImplementedError(
            "还没实现：exercises/03_attention/attention.py · Attention.forward — 先读 teaching.md §4"
        )
