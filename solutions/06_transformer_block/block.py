"""Transformer Block 参考实现（对应 minimind model/model_minimind.py 的 MiniMindBlock）。

一个块 = 两个“Pre-Norm 残差子层”串起来：

    h   = x + self_attn(input_layernorm(x))
    out = h + mlp(post_attention_layernorm(h))

部件全部来自参考实现（from solutions import …）；学习者的 exercises/06_transformer_block/block.py
用的则是学习者自己的 RMSNorm / Attention / FeedForward。
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kata.config import MiniMindConfig
from solutions import Attention, FeedForward, RMSNorm


class MiniMindBlock(nn.Module):
    """Pre-Norm Transformer 块：注意力子层 + 前馈子层，各自“先归一化、再计算、再加回残差”。"""

    def __init__(self, layer_id: int, config: MiniMindConfig):
        super().__init__()
        self.layer_id = layer_id
        # 创建顺序与 minimind 相同（先 self_attn 再两个 norm 和 mlp）：参数的初始化消耗随机数的顺序因此也相同
        self.self_attn = Attention(config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                                   dropout=config.dropout, qk_norm=config.qk_norm, eps=config.rms_norm_eps)
        if not config.flash_attn:
            # 与 minimind 的 config.flash_attn 一样：关掉 F.scaled_dot_product_attention 快速路径
            self.self_attn.flash = False
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # intermediate_size=None 时 FeedForward 自己按 int(8h/3) 向上取整到 64 的倍数（512 → 1408）
        self.mlp = FeedForward(config.hidden_size, config.intermediate_size, dropout=config.dropout)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                past_key_value: Optional[tuple[torch.Tensor, torch.Tensor]] = None, use_cache: bool = False,
                attention_mask: Optional[torch.Tensor] = None):
        residual = hidden_states
        # 注意力只看到归一化之后的 x；残差加回的是**没有**归一化的 x——这条“恒等高速公路”从不经过任何 norm
        attn_out, present = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings,
            past_key_value=past_key_value, use_cache=use_cache, attention_mask=attention_mask,
        )
        hidden_states = residual + attn_out   # minimind 写的是原地的 +=；这里不改输入张量
        # FFN 读的是“加过注意力之后”的 h（串行块），不是块的输入 x（那是 GPT-J 式的并行块）
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, present
