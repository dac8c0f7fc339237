"""全局梯度范数裁剪，行为同 torch.nn.utils.clip_grad_norm_（minimind：clip_grad_norm_(…, args.grad_clip)）。"""
from __future__ import annotations

import math
from typing import Iterable, Union

import torch


def clip_grad_norm(parameters: Union[torch.Tensor, Iterable[torch.Tensor]], max_norm: float) -> torch.Tensor:
    """把所有参数的梯度看成**一个**长向量，求它的 L2 范数 total；total > max_norm 时整体乘 max_norm/(total+1e-6)。

    返回裁剪**之前**的 total（0 维张量）。total 是 inf / nan 时原样返回（不要藏起来：那正是该停下来查的时候），
    梯度也与 torch 一样被乘上 max_norm/total（于是变成 0 或 nan）。没有梯度的参数被跳过。
    """
    if not (isinstance(max_norm, (int, float)) and not isinstance(max_norm, bool) and max_norm > 0):
        raise ValueError(f"max_norm 应为正数，实际 {max_norm!r}")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]   # 先收集：parameters 可能是只能遍历一次的生成器
    if not grads:
        return torch.tensor(0.0)
    norms = [torch.linalg.vector_norm(g.detach(), 2) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms), 2)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)        # ≤ 1：只缩小，不放大
    for g in grads:
        g.detach().mul_(coef.to(g.dtype))
    return total
