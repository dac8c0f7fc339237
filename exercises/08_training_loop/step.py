"""练习 08 · 第 5 步：训练一步（含梯度累积）与可以精确续训的 checkpoint。

写完后运行 `pytest exercises/08_training_loop/test_step.py`。背景知识在 exercises/08_training_loop/teaching.md §6、§7。
它用到你在本模块写的 cross_entropy（loss.py）和 clip_grad_norm（clip.py）。
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from exercises import clip_grad_norm, cross_entropy


def _logits_of(out) -> torch.Tensor:
    """模型输出可以是 logits 张量、(logits, …) 元组（kata 的 TinyLM），或带 .logits 的对象（MiniMindForCausalLM）。"""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"model(input_ids) 应返回 logits 张量、(logits, …) 或带 .logits 的对象，实际 {type(out).__name__}")


def train_step(model: nn.Module, batch, optimizer: torch.optim.Optimizer, *, accum_steps: int = 1,
               micro_step: int = 0, max_grad_norm: Optional[float] = None, lr: Optional[float] = None) -> dict:
    """处理一个 micro-batch；每 accum_steps 个 micro-batch 更新一次参数。

    batch = (input_ids, labels)：labels 与 logits 逐位置对齐（labels[..., t] 是位置 t 要预测的 token，
    −100 表示这个位置不算 loss），和 kata 的 corpus.get_batch 给的 (x, y) 一样。

    每次调用：
    1. logits = _logits_of(model(input_ids))；loss = cross_entropy(logits, labels)（你在 loss.py 写的）；
    2. (loss / accum_steps).backward()——梯度在 p.grad 里**累加**，k 次之后正好是大 batch 平均 loss 的梯度；
    3. 只有 micro_step == accum_steps − 1（这一轮的最后一个 micro-batch）时，按顺序：
       lr 不为 None → 写进 optimizer 的每个 param_group["lr"]；
       max_grad_norm 不为 None → clip_grad_norm(所有参数, max_grad_norm)（你在 clip.py 写的）；
       optimizer.step()；optimizer.zero_grad(set_to_none=True)。

    micro_step 必须在 [0, accum_steps) 之内，accum_steps ≥ 1，否则抛 ValueError（中文说明）。

    返回 dict：
        "loss":      这个 micro-batch 的平均 loss（Python float，**没有**除以 accum_steps）
        "stepped":   这次是否更新了参数
        "grad_norm": 裁剪前的全局梯度范数（float；没裁剪时 None）
        "lr":        本次更新用的学习率（optimizer.param_groups[0]["lr"]；没更新时 None）

    提示：
    - 所有参数 = [p for g in optimizer.param_groups for p in g["params"]]；
    - 记得先除以 accum_steps 再 backward；返回的 "loss" 用没除过的值（minimind 打日志时再乘回去）。
    """
    raise NotImplementedError("还没实现：exercises/08_training_loop/step.py · train_step — 先读 teaching.md §6")


def save_checkpoint(path, model: nn.Module, optimizer: Optional[torch.optim.Optimizer], step: int, **extra) -> None:
    """保存续训需要的一切，写成一个普通的 dict（键名同 minimind 的 resume 文件）::

        {"model": model.state_dict(),
         "optimizer": optimizer.state_dict()（optimizer 为 None 时存 None）,
         "step": step,
         "rng": {"torch": …, "numpy": …, "python": …},   # 三个随机数发生器的状态
         **extra}                                         # 调用者的数据位置等（例如 data_rng=generator.get_state()）

    要求：
    - 能用 torch.load(path, weights_only=True) 读回：只许有张量、数字、字符串、None、list / tuple / dict。
      numpy 的状态 np.random.get_state() 里有一个 numpy 数组——换成 torch 张量（torch.from_numpy(a.astype(np.int64))）
      和普通的 int / float；python 的 random.getstate() 本来就是 tuple 和 int，可以直接存；
    - **原子写入**：先写到同一目录里的临时文件（tempfile.mkstemp(dir=…)），写完再 os.replace(临时文件, path)；
      中途出错时删掉临时文件、重新抛出异常——path 上永远不会出现写了一半的文件；
    - 父目录不存在时先创建；extra 里不能有 model / optimizer / step / rng 这几个键（ValueError）。
    """
    raise NotImplementedError("还没实现：exercises/08_training_loop/step.py · save_checkpoint — 先读 teaching.md §7")


def load_checkpoint(path, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> dict:
    """读回 save_checkpoint 写的文件并恢复状态，返回整个 dict（step 与 extra 都在里面）。

    - 用 torch.load(path, map_location="cpu", weights_only=True)（不执行文件里的任意代码）；
    - model.load_state_dict(ckpt["model"])；给了 optimizer 就 optimizer.load_state_dict(ckpt["optimizer"])
      （文件里没有优化器状态时抛 ValueError）；
    - 恢复三个随机数发生器：torch.set_rng_state、np.random.set_state(("MT19937", uint32 数组, pos, has_gauss,
      cached_gaussian))、random.setstate（第二项要是 tuple）；
    - 文件不存在时抛 FileNotFoundError（中文说明）。
    数据读到了哪里（例如数据发生器的状态）由调用者从返回的 dict 里取出来自己恢复。
    """
    raise NotImplementedError("还没实现：exercises/08_training_loop/step.py · load_checkpoint — 先读 teaching.md §7")
