"""练习 08 · 第 4 步：全局梯度范数裁剪。

写完后运行 `pytest exercises/08_training_loop/test_clip.py`。背景知识在 exercises/08_training_loop/teaching.md §5。
"""
from __future__ import annotations

import math
from typing import Iterable, Union

import torch


def clip_grad_norm(parameters: Union[torch.Tensor, Iterable[torch.Tensor]], max_norm: float) -> torch.Tensor:
    """和 torch.nn.utils.clip_grad_norm_ 一样：按**全局** L2 范数裁剪所有参数的梯度（原地修改 p.grad）。

    公式（把所有梯度拼成一个长向量 G）::

        total = ‖G‖₂ = sqrt( Σ_参数 ‖g_i‖₂² )
        coef  = min(1, max_norm / (total + 1e-6))
        g_i  ← g_i · coef                          # 每个参数乘**同一个**系数：方向不变

    返回裁剪**之前**的 total（0 维张量）。
    - parameters 可以是一个张量，或张量的可迭代对象（常见的是 model.parameters()——它是生成器，只能遍历一次！）；
    - p.grad 为 None 的参数跳过；一个梯度都没有时返回 torch.tensor(0.)；
    - total 是 inf 或 nan 时**原样返回**（别藏起来），梯度照样乘 coef（与 torch 相同）；
    - max_norm 不是正数时抛 ValueError（中文说明）。

    提示：
    - 每个参数先算 torch.linalg.vector_norm(g)，再对这些范数求一次 vector_norm：就是全局范数；
    - 不要对每个参数各自裁剪（那会改变梯度的方向，teaching.md §5）；
    - 低于阈值时 coef = 1：梯度应当一点都不变。
    """
    raise NotImplementedError("还没实现：exercises/08_training_loop/clip.py · clip_grad_norm — 先读 teaching.md §5")
