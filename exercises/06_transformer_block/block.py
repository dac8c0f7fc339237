"""练习 06（上）：MiniMindBlock——把你自己的 RMSNorm、Attention、FeedForward 组装成一个 Transformer 块。

把 `__init__` 和 `forward` 补完，直到 `pytest exercises/06_transformer_block/test_block.py` 全部通过。
需要的背景知识在 exercises/06_transformer_block/teaching.md §2。

注意：下面这行 import 拿的是**你自己的**模块 01–04（exercises/），不是参考实现。
如果其中某个还没写完，测试会直接告诉你是哪一个（“还没实现：exercises/01_normalization/…”）。
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from kata.config import MiniMindConfig
from exercises import Attention, FeedForward, RMSNorm


class MiniMindBlock(nn.Module):
    """Pre-Norm Transformer 块（minimind 的 MiniMindBlock）。

    公式（x 是块的输入，形状 [B, S, hidden]）::

        h   = x + self_attn(input_layernorm(x))
        out = h + mlp(post_attention_layernorm(h))

    子模块（名字是契约的一部分，state_dict 的键由它们决定）：
    - `self_attn`               = Attention(hidden_size, num_attention_heads, num_key_value_heads,
                                            dropout, qk_norm, eps=rms_norm_eps)   ← 你的模块 03
    - `input_layernorm`         = RMSNorm(hidden_size, eps=rms_norm_eps)          ← 你的模块 01
    - `post_attention_layernorm`= RMSNorm(hidden_size, eps=rms_norm_eps)
    - `mlp`                     = FeedForward(hidden_size, intermediate_size, dropout=dropout) ← 你的模块 04
      （intermediate_size 为 None 时 FeedForward 自己按 int(8h/3) 向上取整到 64 的倍数）

    config 的每个字段都要送到它的使用者（测试会逐个字段检查）：
    - rms_norm_eps 给两个 norm，**也给 Attention**（qk_norm=True 时它的 q_norm / k_norm 用这个 eps）；
    - num_key_value_heads、qk_norm 给 Attention；intermediate_size 给 FeedForward；
    - dropout 给 Attention 和 FeedForward：它们各自在**自己的输出**上 dropout（注意力的 resid_dropout、
      FFN 的 down_proj 之后）。块的 forward 里不要再加 dropout；
    - flash_attn 只选注意力的计算路径、不改变结果：config.flash_attn=False 时，如果你的 Attention 有 `flash`
      开关，就把它关掉（self.self_attn.flash = False），与 minimind 一致。

    提示：
    - 残差加回的是**没有归一化**的 x；归一化只发生在“进子层之前”；
    - 用 __init__ 里建好的 self.input_layernorm / self.post_attention_layernorm，不要在 forward 里新建 RMSNorm
      （新建的 weight 全是 1，学到的 weight 就白学了）；
    - FFN 读的是加过注意力之后的 h，不是块的输入 x；
    - self_attn 返回 (out, present)，把 present 原样作为第二个返回值交出去（KV cache 靠它）；
    - 不要原地修改输入张量（`hidden_states += …`），测试会拿原来的 x 做比较；
    - 还卡住？运行 `python -m kata hint 06`，每次多给一条提示。
    """

    def __init__(self, layer_id: int, config: MiniMindConfig):
        super().__init__()
        self.layer_id = layer_id
        raise NotImplementedError(
            "还没实现：exercises/06_transformer_block/block.py · MiniMindBlock.__init__ — 先读 teaching.md §2"
        )

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                past_key_value: Optional[tuple[torch.Tensor, torch.Tensor]] = None, use_cache: bool = False,
                attention_mask: Optional[torch.Tensor] = None):
        """hidden_states [B, S, hidden]；position_embeddings = (cos, sin)，各 [S, head_dim]（已切好这 S 个位置）。

        past_key_value / use_cache / attention_mask 原样交给 self_attn（含义见模块 03）。
        返回 (out [B, S, hidden], present)。
        """
        raise NotImplementedError(
            "还没实现：exercises/06_transformer_block/block.py · MiniMindBlock.forward — 先读 teaching.md §2"
        )
