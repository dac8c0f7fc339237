"""一个训练步（含梯度累积）与可精确续训的 checkpoint。

对应 minimind trainer/train_pretrain.py 的 train_epoch 循环体与 trainer/trainer_utils.py 的 lm_checkpoint。
与 minimind 的两处不同（都是为了“续训 = 没中断过”）：权重按原 dtype 保存（minimind 存成 fp16），
并且保存 torch / numpy / python 三个随机数发生器的状态。
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

from solutions import clip_grad_norm, cross_entropy


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
    """一个 micro-batch：前向、loss / accum_steps、反向；最后一个 micro-step 上再裁剪、更新、清梯度。

    batch = (input_ids, labels)，labels 与 logits 逐位置对齐（labels[..., t] 是第 t 个位置要预测的 token，
    −100 表示不计 loss）。micro_step ∈ [0, accum_steps)；micro_step == accum_steps − 1 时：
    设学习率（lr 不为 None 时写进每个 param_group）→ 裁剪（max_grad_norm 不为 None 时）→ optimizer.step()
    → optimizer.zero_grad(set_to_none=True)。

    返回 {"loss": 这个 micro-batch 的平均 loss（未除以 accum_steps）, "stepped": 是否更新了参数,
          "grad_norm": 裁剪前的全局梯度范数（没裁剪时为 None）, "lr": 本次更新用的学习率（没更新时为 None）}。
    """
    if isinstance(accum_steps, bool) or not isinstance(accum_steps, int) or accum_steps < 1:
        raise ValueError(f"accum_steps 应为 ≥ 1 的整数，实际 {accum_steps!r}")
    if isinstance(micro_step, bool) or not isinstance(micro_step, int) or not 0 <= micro_step < accum_steps:
        raise ValueError(f"micro_step 应在 [0, accum_steps={accum_steps}) 之内，实际 {micro_step!r}")
    input_ids, labels = batch
    logits = _logits_of(model(input_ids))
    loss = cross_entropy(logits, labels)
    (loss / accum_steps).backward()          # 累积 k 次的梯度之和 = 大 batch 平均 loss 的梯度
    out = {"loss": float(loss.detach()), "stepped": False, "grad_norm": None, "lr": None}
    if micro_step != accum_steps - 1:
        return out
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr
    if max_grad_norm is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        out["grad_norm"] = float(clip_grad_norm(params, max_grad_norm))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    out.update(stepped=True, lr=optimizer.param_groups[0]["lr"])
    return out


def _rng_states() -> dict:
    np_state = np.random.get_state()   # ('MT19937', uint32[624], pos, has_gauss, cached_gaussian)
    states = {
        "torch": torch.get_rng_state(),
        # numpy 数组不能用 weights_only=True 加载：换成张量 + 普通数字
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    npd = states["numpy"]
    np.random.set_state(("MT19937", npd["keys"].numpy().astype(np.uint32), npd["pos"], npd["has_gauss"],
                         npd["cached_gaussian"]))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(path, model: nn.Module, optimizer: Optional[torch.optim.Optimizer], step: int, **extra) -> None:
    """把续训需要的一切写进一个普通的 dict（键名同 minimind 的 resume 文件：model / optimizer / step）::

        {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
         "rng": {"torch", "numpy", "python"}, **extra}

    extra 里放调用者自己的位置信息（数据发生器的状态、epoch……）。只含张量、数字、字符串、list/tuple/dict，
    所以能用 torch.load(weights_only=True) 读回。原子写入：先写同目录的临时文件，再 os.replace——
    中途崩溃或 Ctrl-C，path 上要么是旧文件、要么是完整的新文件。
    """
    reserved = {"model", "optimizer", "step", "rng"} & set(extra)
    if reserved:
        raise ValueError(f"extra 里不能用这些保留的键：{sorted(reserved)}")
    ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "step": int(step), "rng": _rng_states(), **extra}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_checkpoint(path, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> dict:
    """读回 save_checkpoint 写的文件（torch.load(…, weights_only=True)）：恢复模型、优化器（给了的话）
    和三个随机数发生器，返回整个 dict（step 与 extra 都在里面，数据位置由调用者自己恢复）。"""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"找不到 checkpoint 文件：{path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise ValueError(f"{path} 不是 save_checkpoint 写的 checkpoint（缺少 model / step）")
    model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise ValueError(f"{path} 里没有优化器状态，无法续训（保存时没有传 optimizer）")
        optimizer.load_state_dict(ckpt["optimizer"])
    if "rng" in ckpt:
        _set_rng_states(ckpt["rng"])
    return ckpt
