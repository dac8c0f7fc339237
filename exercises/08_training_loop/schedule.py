"""练习 08 · 第 3 步：学习率调度。

写完后运行 `pytest exercises/08_training_loop/test_schedule.py`。背景知识在 exercises/08_training_loop/teaching.md §4。
"""
from __future__ import annotations

import math


def cosine_lr(step: int, total_steps: int, max_lr: float, warmup_steps: int = 0, min_lr: float = 0.0) -> float:
    """第 step 次更新用的学习率：线性 warmup，然后余弦衰减到下限 min_lr。

    **step 从 0 数**：step=0 是第一次 optimizer.step()。三段::

        step < warmup_steps:                 max_lr · (step + 1) / warmup_steps
        warmup_steps ≤ step < total_steps:   min_lr + ½·(1 + cos(π·p))·(max_lr − min_lr)，
                                             p = (step − warmup_steps) / (total_steps − warmup_steps)
        step ≥ total_steps:                  min_lr（到底了就停在下限，不会再升回去）

    于是第一次更新用 max_lr/warmup_steps（不是 0），step = warmup_steps − 1 时恰好到 max_lr；
    warmup_steps=0 时 step=0 直接是 max_lr。（别处的约定：CS336 在 step=0 给 0；nanoGPT 给 max_lr/(warmup+1)。）

    参数不合法时抛 ValueError（中文说明）：step < 0、total_steps < 1、warmup_steps < 0 或 > total_steps、
    不满足 0 ≤ min_lr ≤ max_lr。

    提示：
    - 三段按顺序判断；注意 warmup 这段是 step + 1；
    - “到底就停”：step ≥ total_steps 直接返回 min_lr，否则 cos 会越过 π 又升回来；
    - 返回 Python float。
    """
    raise NotImplementedError("还没实现：exercises/08_training_loop/schedule.py · cosine_lr — 先读 teaching.md §4")


def minimind_lr(step: int, total_steps: int, lr: float) -> float:
    """minimind 自己的调度（trainer/trainer_utils.py 的 get_lr），一字不差::

        lr · (0.1 + 0.45 · (1 + cos(π · step / total_steps)))

    没有 warmup：step=0 时是 lr，step=total_steps 时降到 0.1·lr。超过 total_steps 时照公式算（不截断）。
    total_steps < 1 时抛 ValueError。
    """
    raise NotImplementedError("还没实现：exercises/08_training_loop/schedule.py · minimind_lr — 先读 teaching.md §4.3")
