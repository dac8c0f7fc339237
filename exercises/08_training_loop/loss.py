"""练习 08 · 第 1 步：交叉熵（数值稳定、支持 ignore_index）。

写完后运行 `pytest exercises/08_training_loop/test_loss.py`。背景知识在 exercises/08_training_loop/teaching.md §2。
"""
from __future__ import annotations

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """平均交叉熵：对每个 targets != ignore_index 的位置算 −log softmax(logits)[target]，再取平均。

    公式（一行 logits x ∈ R^V，正确答案 y）::

        loss = logsumexp(x) − x[y]，   logsumexp(x) = m + log Σ_j exp(x_j − m)，m = max_j x_j

    形状：logits [..., V]（例如 [B, S, V]），targets [...]（整数 token id，与 logits 去掉最后一维同形）；
    返回一个标量（0 维张量）。

    约定：
    - 只对没被忽略的位置取平均（分母 = 没被忽略的个数），与 F.cross_entropy(…, ignore_index=…) 相同；
    - **全部位置都被忽略时返回 0**（梯度也是 0）——F.cross_entropy 此时给 nan（0/0），我们不要 nan；
    - logits 的绝对值可以大到 1e4（float32），不许出现 inf / nan；
    - 至少在 float32 里计算（float64 输入保持 float64，gradcheck 要用）。

    提示：
    - 不要写 torch.log(torch.softmax(x)) 或 exp(x)/Σexp(x)：exp(1e4) 在 float32 里就是 inf；
      先减去每行的最大值 m（m 可以 detach：它只是一个平移，梯度里会消掉）；
    - 取出正确答案那一项用 x.gather(-1, y.unsqueeze(-1))；被忽略的位置先换成一个合法下标（比如 0），再乘上 0；
    - 分母用 keep.sum().clamp(min=1)，全部被忽略时就是 0/1 = 0；
    - 还卡住？运行 `python -m kata hint 08`，每次多给一条提示。
    """
    raise NotImplementedError("还没实现：exercises/08_training_loop/loss.py · cross_entropy — 先读 teaching.md §2")
