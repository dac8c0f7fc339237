"""练习 04：FeedForward（SwiGLU 前馈网络）。

把 `__init__` 和 `forward` 补完，直到 `pytest exercises/04_feedforward` 全部通过。
需要的背景知识在 exercises/04_feedforward/teaching.md §2。
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class FeedForward(nn.Module):
    """SwiGLU 前馈网络（Shazeer 2020；LLaMA、MiniMind 都用它）。

    公式（对每个 token 的向量 x 各自计算，D = dim，H = hidden_dim）::

        g = gate_proj(x)              # [..., H]   “门”：经过 SiLU 决定每个特征放行多少
        u = up_proj(x)                # [..., H]   “值”：被门逐元素地缩放
        y = down_proj( silu(g) ⊙ u )  # [..., D]   silu(z) = z · sigmoid(z)

    形状：输入 x 为 [..., D]（常见是 [B, S, D]，前面有几维都行），输出 [..., D]，与输入形状相同。

    __init__ 要做的事：
    - 默认宽度（hidden_dim 为 None 时）::

          H = multiple_of · ceil( int(8·dim/3) / multiple_of )     # dim=512 → 1408（MiniMind2）

      先用 int() 把 8·dim/3 截成整数，再向上取整到 multiple_of 的倍数；显式给了 hidden_dim 就**原样照用**；
    - 三个**没有 bias** 的线性层，名字必须是 gate_proj、up_proj（D → H）和 down_proj（H → D）；
    - 一个 nn.Dropout(dropout)，作用在 down_proj 的**输出**上：y = dropout(down_proj(…))（与 minimind 相同）。
      训练模式下它以概率 dropout 把输出的元素置 0、其余除以 1 − dropout；eval 模式下自动失效。
      不要放在隐层 silu(g) ⊙ u 上——测试会检查训练时输出里恰好为 0 的元素约占 dropout 的比例；
    - multiple_of 和 dropout 都要用构造参数的值（测试会换不同的值）。

    提示：
    - 激活函数是 SiLU：`F.silu(g)`，不是 ReLU / GELU / sigmoid；只作用在 gate 分支上，up 分支不过激活；
    - ⊙ 是逐元素相乘（`*`），不是矩阵乘；先乘、再 down_proj；
    - `nn.Linear(in, out, bias=False)`；它只作用在最后一维上，前面有几维都不用 reshape；
    - 还卡住？运行 `python -m kata hint 04`，每次多给一条提示。
    """

    def __init__(self, dim: int, hidden_dim: Optional[int] = None, multiple_of: int = 64, dropout: float = 0.0):
        super().__init__()
        raise NotImplementedError(
            "还没实现：exercises/04_feedforward/feedforward.py · FeedForward.__init__ — 先读 teaching.md §2"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(
            "还没实现：exercises/04_feedforward/feedforward.py · FeedForward.forward — 先读 teaching.md §2"
        )
