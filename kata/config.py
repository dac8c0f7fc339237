"""MiniMindConfig：与 minimind `MiniMindConfig` 同名同默认值的配置（课程 API 约定里的 kata.MiniMindConfig）。

默认值对应 MiniMind2-small（hidden 512、8 层、8 个 query 头 / 2 个 KV 头、词表 6400）。
它是一个普通 dataclass，而不是 transformers 的 PretrainedConfig：kata 不依赖 transformers。
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional


@dataclass
class MiniMindConfig:
    hidden_size: int = 512
    num_hidden_layers: int = 8
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    vocab_size: int = 6400
    max_position_embeddings: int = 32768
    rms_norm_eps: float = 1e-5
    rope_theta: float = 1e6
    intermediate_size: Optional[int] = None
    dropout: float = 0.0
    tie_word_embeddings: bool = True
    qk_norm: bool = False
    rope_scaling: Optional[dict] = None
    flash_attn: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size <= 0 or self.num_hidden_layers <= 0:
            raise ValueError(
                f"MiniMindConfig：hidden_size 和 num_hidden_layers 必须是正整数，"
                f"实际 hidden_size={self.hidden_size}, num_hidden_layers={self.num_hidden_layers}"
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"MiniMindConfig：hidden_size（{self.hidden_size}）必须能被 "
                f"num_attention_heads（{self.num_attention_heads}）整除"
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"MiniMindConfig：num_attention_heads（{self.num_attention_heads}）必须能被 "
                f"num_key_value_heads（{self.num_key_value_heads}）整除（GQA 每组共享一个 KV 头）"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def ffn_hidden_size(self) -> int:
        """FFN 宽度：显式给出时照用，否则 int(8·h/3) 向上取整到 64 的倍数（512 → 1408）。"""
        if self.intermediate_size is not None:
            return self.intermediate_size
        return 64 * math.ceil(int(self.hidden_size * 8 / 3) / 64)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
