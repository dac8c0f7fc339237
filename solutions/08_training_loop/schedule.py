"""学习率调度：warmup + 余弦衰减到下限（cosine_lr），以及 minimind 自己的公式（minimind_lr）。"""
from __future__ import annotations

import math


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} 应为 ≥ {minimum} 的整数，实际 {value!r}")


def cosine_lr(step: int, total_steps: int, max_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """第 step 次更新（step 从 0 数：step=0 是第一次 optimizer.step()）用的学习率。

    - warmup：step < warmup_steps 时 max_lr·(step+1)/warmup_steps——第一次更新就是 max_lr/warmup_steps
      （不是 0：CS336 的写法 step=0 给 0，白白浪费一步；nanoGPT 给 max_lr/(warmup+1)），
      第 warmup_steps 次更新（step = warmup_steps−1）恰好到 max_lr；
    - 余弦：warmup_steps ≤ step ≤ total_steps 时 min_lr + ½(1 + cos(π·p))(max_lr − min_lr)，
      p = (step − warmup_steps)/(total_steps − warmup_steps)，从 max_lr 单调降到 min_lr；
    - step ≥ total_steps 时一直是 min_lr（不会再升回去）。
    """
    _check_int("step", step, 0)
    _check_int("total_steps", total_steps, 1)
    _check_int("warmup_steps", warmup_steps, 0)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps（{warmup_steps}）不能大于 total_steps（{total_steps}）")
    if not 0.0 <= min_lr <= max_lr:
        raise ValueError(f"应有 0 ≤ min_lr ≤ max_lr，实际 min_lr={min_lr!r}, max_lr={max_lr!r}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


def minimind_lr(step: int, total_steps: int, lr: float) -> float:
    """minimind trainer/trainer_utils.py 的 get_lr，一字不差：lr·(0.1 + 0.45·(1 + cos(π·step/total_steps)))。

    没有 warmup；step=0 时是 lr，step=total_steps 时是 0.1·lr。超过 total_steps 后余弦会重新上升
    （minimind 从不这样调用它），这里照原样保留。
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps 应为 ≥ 1 的整数，实际 {total_steps!r}")
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / total_steps)))
