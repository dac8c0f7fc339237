"""残差连接参考实现：Pre-Norm 与 Post-Norm 两种包装。

对应 minimind model/model_minimind.py 的 ``MiniMindBlock.forward``：minimind 没有单独的残差类，
而是在块里直接写 ``residual = hidden_states … hidden_states += residual``（Pre-Norm）。
这里把“一个子层 + 它的 norm + 残差相加”提成一个小模块，好让学习者单独实现、单独测试它。
"""
from __future__ import annotations

import torch
from torch import nn

from solutions import RMSNorm


class PreNormResidual(nn.Module):
    """Pre-Norm 残差：out = x + sublayer(norm(x))（GPT-2、LLaMA、minimind 的做法）。"""

    def __init__(self, dim: int, sublayer: nn.Module, eps: float = 1e-5):
        super().__init__()
        self.norm = RMSNorm(dim, eps=eps)
        self.sublayer = sublayer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 残差流 x 本身不归一化：只有送进子层的那份副本被归一化。
        # 于是 ∂out/∂x = I + ∂sublayer(norm(x))/∂x，第一项是一条不经过任何层的恒等通路。
        # 写成 x + …（新张量），不要写 x += …：那会原地改掉调用者的 x，而 norm 的反向还要用到它。
        return x + self.sublayer(self.norm(x))


class PostNormResidual(nn.Module):
    """Post-Norm 残差：out = norm(x + sublayer(x))（原始 Transformer，Vaswani et al. 2017）。"""

    def __init__(self, dim: int, sublayer: nn.Module, eps: float = 1e-5):
        super().__init__()
        self.norm = RMSNorm(dim, eps=eps)
        self.sublayer = sublayer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 先相加再归一化：输出（也就是下一层的残差流）每个 token 的均方根都被拉回 ≈ 1，
        # 代价是反向传播时梯度必须穿过每一层的 norm（∂out/∂x = J_norm · (I + ∂sublayer/∂x)）。
        return self.norm(x + self.sublayer(x))
