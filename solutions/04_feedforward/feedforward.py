"""前馈网络参考实现：SwiGLU（对应 minimind model/model_minimind.py 的 FeedForward）。"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    """SwiGLU 前馈网络：down( silu(gate(x)) ⊙ up(x) )。

    gate 分支经过 SiLU 后像一个“软开关”，逐元素地决定 up 分支的每个特征放行多少（Shazeer 2020）。
    三个矩阵都没有 bias，名字与 minimind 相同：gate_proj、up_proj（dim → hidden）、down_proj（hidden → dim）。

    默认宽度 hidden = multiple_of · ceil(int(8·dim/3) / multiple_of)（512 → 1408，MiniMind2）：
    普通 FFN 用 4·dim 宽、两个矩阵；SwiGLU 有三个矩阵，宽度取 4·dim 的 2/3 让参数量持平（LLaMA §2.2），
    再向上取整到 multiple_of 的倍数，矩阵形状对硬件更友好。显式给出 hidden_dim 时照用。
    """

    def __init__(self, dim: int, hidden_dim: Optional[int] = None, multiple_of: int = 64, dropout: float = 0.0):
        super().__init__()
        if hidden_dim is None:
            hidden_dim = multiple_of * math.ceil(int(8 * dim / 3) / multiple_of)
        self.hidden_dim = hidden_dim
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))
