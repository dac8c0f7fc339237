"""RMSNorm 参考实现（对应 minimind model/model_minimind.py 的 RMSNorm）。"""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """均方根归一化：y = weight ⊙ x / sqrt(mean(x², 最后一维) + eps)。

    与 LayerNorm 相比：不减均值、没有 bias，只按均方根缩放。
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        # 逐通道的可学习缩放 γ，初始化为 1：一开始 RMSNorm 只做“纯归一化”
        self.weight = nn.Parameter(torch.ones(dim))

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        # eps 放在 sqrt 里面：全零向量时分母是 sqrt(eps) 而不是 0
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 至少升到 float32 再算：float16 的 x² 超过 65504 就会变成 inf；算完再转回输入的 dtype。
        # minimind 写的是 x.float()；这里用 promote_types，float64 输入就留在 float64（gradcheck 需要）。
        # MiniMind2 写作 self.weight * self._norm(x.float()).type_as(x)：float32 权重 + bf16 输入会得到
        # float32 输出（minimind issue #665）；minimind-3 改成 (self.weight * self.norm(x.float())).type_as(x)。
        # 这里把 weight 也转成 x 的 dtype，保证输出 dtype 总是等于输入 dtype。
        x_hi = x.to(torch.promote_types(x.dtype, torch.float32))
        return self.weight.type_as(x) * self._norm(x_hi).type_as(x)
