"""AdamW 参考实现（Loshchilov & Hutter 2019，“Decoupled Weight Decay Regularization”）。

与 torch.optim.AdamW 的算法逐行相同（默认参数也相同）；minimind 的 trainer 用的是
``optim.AdamW(model.parameters(), lr=args.learning_rate)``。
"""
from __future__ import annotations

import math

import torch


class AdamW(torch.optim.Optimizer):
    """每个参数 p（梯度 g，第 t 步，t 从 1 数）::

        p ← p − lr·wd·p                       # 解耦的权重衰减：直接缩参数，不经过 g
        m ← β1·m + (1−β1)·g
        v ← β2·v + (1−β2)·g²
        m̂ = m / (1 − β1^t)，  v̂ = v / (1 − β2^t)   # 偏差修正
        p ← p − lr · m̂ / (√v̂ + eps)

    状态放在 ``self.state[p]``（step、exp_avg、exp_avg_sq，名字同 torch），这样
    ``state_dict()`` / ``load_state_dict()`` 由 torch.optim.Optimizer 负责、断点续训才能接上。
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
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]   # 每一步都从 group 里读：调度器会改 lr
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if g.is_sparse:
                    raise RuntimeError("AdamW 不支持稀疏梯度")
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                state["step"] += 1
                t = state["step"].item()

                p.mul_(1 - lr * wd)                                   # 解耦：衰减不进 m、v
                m.lerp_(g, 1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                bias1 = 1 - beta1 ** t
                bias2 = 1 - beta2 ** t
                denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)       # eps 在 sqrt 外面
                p.addcdiv_(m, denom, value=-lr / bias1)
        return loss
