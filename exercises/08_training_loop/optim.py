"""练习 08 · 第 2 步：AdamW（解耦的权重衰减）。

写完后运行 `pytest exercises/08_training_loop/test_optim.py`。背景知识在 exercises/08_training_loop/teaching.md §3。
"""
from __future__ import annotations

import math

import torch


class AdamW(torch.optim.Optimizer):
    """AdamW（Loshchilov & Hutter 2019）。每个参数 p（梯度 g），第 t 步（t 从 **1** 数）::

        p ← p − lr·wd·p                              # ① 解耦的权重衰减：直接缩小参数，不经过 g、m、v
        m ← β1·m + (1−β1)·g                          # ② 一阶矩（梯度的滑动平均）
        v ← β2·v + (1−β2)·g²                         # ③ 二阶矩（梯度平方的滑动平均）
        m̂ = m / (1 − β1^t)，   v̂ = v / (1 − β2^t)      # ④ 偏差修正（m、v 从 0 起步，前几步偏小）
        p ← p − lr · m̂ / (√v̂ + eps)                   # ⑤ 更新；eps 在 sqrt 的**外面**

    与 torch.optim.AdamW 逐步相同（测试会拿它对比）。__init__ 已经写好：lr、betas、eps、weight_decay
    存进了 defaults，每个 param_group 里都有这四个键（某个 group 可以有自己的值，例如 weight_decay=0）。

    你要写 step()：
    - 对每个 group、group 里每个 p.grad 不为 None 的参数做上面的 ①–⑤；超参数**每一步都从 group 里读**
      （调度器会在两步之间改 group["lr"]）；
    - 状态放在 self.state[p] 里（一个 dict，第一次见到 p 时是空的）：键名用 torch 的
      "step"、"exp_avg"、"exp_avg_sq"——放在别处，state_dict() 就存不下来，断点续训就接不上；
    - 整个 step 在 torch.no_grad() 下（已经加好装饰器），用原地操作改 p：p.mul_(…)、p.addcdiv_(…)；
    - closure（torch.optim 的约定）：不为 None 时先 `with torch.enable_grad(): loss = closure()`，最后 return loss
      （没有 closure 时返回 None）。

    提示：
    - 权重衰减**不要**加到梯度上（g + wd·p 是 Adam + L2，会被 √v̂ 除掉，效果完全不同，teaching.md §3.3）；
    - 偏差修正用的 t 是“这是第几次更新”，第一次更新 t = 1（用 0 会除以 0）；
    - torch 的写法：m.lerp_(g, 1 − β1)；v.mul_(β2).addcmul_(g, g, value=1 − β2)；
      denom = (v.sqrt() / math.sqrt(1 − β2**t)).add_(eps)；p.addcdiv_(m, denom, value=−lr / (1 − β1**t))。
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        if not (isinstance(lr, (int, float)) and 0.0 <= lr and math.isfinite(lr)):
            raise ValueError(f"AdamW 的 lr 应为非负有限数，实际 {lr!r}")
        if not (isinstance(eps, (int, float)) and 0.0 <= eps):
            raise ValueError(f"AdamW 的 eps 应为非负数，实际 {eps!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamW 的 betas 应为两个 [0, 1) 之间的数，实际 {betas!r}")
        if not (isinstance(weight_decay, (int, float)) and 0.0 <= weight_decay):
            raise ValueError(f"AdamW 的 weight_decay 应为非负数，实际 {weight_decay!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        raise NotImplementedError("还没实现：exercises/08_training_loop/optim.py · AdamW.step — 先读 teaching.md §3")
