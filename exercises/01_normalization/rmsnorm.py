"""练习 01：RMSNorm（均方根归一化）。

把 `forward` 补完，直到 `pytest exercises/01_normalization` 全部通过。
需要的背景知识在 exercises/01_normalization/teaching.md §2。
"""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """均方根归一化（Root Mean Square Layer Normalization）。

    公式（沿最后一维，D = dim）::

        rms(x) = sqrt( mean(x_i², i=1..D) + eps )
        y      = weight ⊙ x / rms(x)

    形状：输入 x 为 [..., D]（常见是 [B, S, D]），输出与输入形状相同、dtype 相同。
    参数：`weight` 形状 [D]，初始化为全 1（已经在 __init__ 里写好了）。

    提示：
    - 不减均值、没有 bias——这正是它和 LayerNorm 的区别；
    - eps 加在 sqrt **里面**；mean 沿 dim=-1 并 keepdim=True；
    - 至少在 float32 里计算（float16 的 x² 会溢出）：`x.to(torch.promote_types(x.dtype, torch.float32))`
      （minimind 写的是 `x.float()`；float64 输入应留在 float64），最后转回输入的 dtype；
    - `torch.rsqrt(v)` 等于 `1 / torch.sqrt(v)`。
    - 还卡住？运行 `python -m kata hint 01`，每次多给一条提示。
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "还没实现：exercises/01_normalization/rmsnorm.py · RMSNorm.forward — 先读 teaching.md §2"
        )
