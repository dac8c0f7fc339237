"""练习 05：残差连接（Residual Connection）。

把两个 `forward` 补完，直到 `pytest exercises/05_residual_connection` 全部通过。
需要的背景知识在 exercises/05_residual_connection/teaching.md §2（Pre-Norm）和 §3（Post-Norm）。

这两个类把“一个子层（注意力或 FFN）+ 它的归一化 + 残差相加”包成一个模块。
`self.norm` 用的是**你在模块 01 写的 RMSNorm**（`from exercises import RMSNorm`）。
测试不依赖模块 01 是否完成：它们会把 `self.norm` 换成一个已知正确的 RMSNorm 再检查你的 forward，
所以 forward 里一定要通过 `self.norm` 和 `self.sublayer` 来调用，不要另外新建。
"""
from __future__ import annotations

import torch
from torch import nn

from exercises import RMSNorm


class PreNormResidual(nn.Module):
    """Pre-Norm 残差连接（minimind、GPT-2、LLaMA 的做法）。

    公式（N = self.norm，F = self.sublayer）::

        out = x + F( N(x) )

    形状：x 为 [..., dim]（常见是 [B, S, dim]），输出与 x 形状相同、dtype 相同。
    self.sublayer 是任意把 [..., dim] 映射到 [..., dim] 的模块（注意力、FFN、一个 Linear……）。

    提示：
    - 只有送进子层的那一份被归一化；加回去的是**原始的 x**（不是 N(x)）；
    - 相加之后**不再**归一化——残差流 x 在 Pre-Norm 里从来不被归一化；
    - 写 `x + …` 得到一个新张量；不要写 `x += …`（那会原地修改调用者传进来的 x）；
    - 不要 `x.detach()` / `x.data`：恒等通路的梯度正是残差连接的意义所在；
    - 还卡住？运行 `python -m kata hint 05`，每次多给一条提示。
    """

    def __init__(self, dim: int, sublayer: nn.Module, eps: float = 1e-5):
        super().__init__()
        self.norm = RMSNorm(dim, eps=eps)
        self.sublayer = sublayer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "还没实现：exercises/05_residual_connection/residual.py · PreNormResidual.forward — 先读 teaching.md §2"
        )


class PostNormResidual(nn.Module):
    """Post-Norm 残差连接（原始 Transformer，Vaswani et al. 2017 的做法）。

    公式（N = self.norm，F = self.sublayer）::

        out = N( x + F(x) )

    形状：x 为 [..., dim]，输出与 x 形状相同、dtype 相同。

    提示：
    - 子层直接吃**没有归一化的 x**；
    - 先把 x 和 F(x) 相加，**再**对和做一次归一化——所以输出每个 token 的均方根 ≈ 1（weight 全 1 时）；
    - norm 只调用一次，子层也只调用一次；
    - 还卡住？运行 `python -m kata hint 05`。
    """

    def __init__(self, dim: int, sublayer: nn.Module, eps: float = 1e-5):
        super().__init__()
        self.norm = RMSNorm(dim, eps=eps)
        self.sublayer = sublayer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "还没实现：exercises/05_residual_connection/residual.py · PostNormResidual.forward — 先读 teaching.md §3"
        )
