"""预训练的参考实现：打包数据、评估（loss 与 bits per byte）、多进程（DDP）的接线。

对应 minimind 的 dataset/lm_dataset.py（PretrainDataset）与 trainer/train_pretrain.py、trainer/trainer_utils.py
（init_distributed_mode、DistributedSampler、DDP、只有主进程存盘和打日志）。与 minimind 的不同：
- 输入是一整条 token 流（TinyShakespeare），切成首尾相接的样本，而不是一行一个 jsonl 文档；
- labels 在数据集里就右移好了（labels[t] = 第 t+1 个 token），padding 位置是 −100。MiniMind2 时期的
  lm_dataset.py 也在数据集里移位（X = ids[:-1], Y = ids[1:]，另给 loss_mask）；minimind-3 改成 labels = input_ids
  的副本、由模型在内部移位。本课用前一种，所以 loss 是逐位置的 cross_entropy(logits, labels)（模块 08 的
  train_step 就这样算）——别再把这份 labels 交给 MiniMindForCausalLM(labels=…)，它会再移一次。
- 批次按“全局步号”确定地切给每个进程（rank_batch），不用 DistributedSampler：续训时只要知道步号。
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

IGNORE_INDEX = -100


def _logits_of(out) -> torch.Tensor:
    """模型输出可以是 logits 张量、(logits, …) 元组，或带 .logits 的对象（MiniMindForCausalLM）。"""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise TypeError(f"model(input_ids) 应返回 logits 张量、(logits, …) 或带 .logits 的对象，实际 {type(out).__name__}")


class PretrainDataset(torch.utils.data.Dataset):
    """把一条 token 流切成定长样本：第 i 个样本 = 流里 [i·seq_len, i·seq_len + seq_len] 这 seq_len+1 个 token，

        input_ids = 前 seq_len 个，labels = 后 seq_len 个（右移一位：labels[t] 是 input_ids[t] 之后的那个 token）。

    样本首尾相接、互不重叠：整个数据集里每个 token（第一个除外）恰好当一次 label。最后一个样本不够长时，
    input_ids 用 pad_id 补齐、labels 用 −100 补齐（cross_entropy 的 ignore_index，不计入 loss）。
    """

    def __init__(self, token_ids, seq_len: int, pad_id: int = 0):
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len 应为 ≥ 1 的整数，实际 {seq_len!r}")
        ids = torch.as_tensor(token_ids)
        if ids.dim() != 1 or ids.is_floating_point():
            raise ValueError(f"token_ids 应是一维的整数序列，实际形状 {tuple(ids.shape)}、dtype {ids.dtype}")
        if ids.numel() < 2:
            raise ValueError(f"token_ids 至少要有 2 个 token（一个输入、一个 label），实际 {ids.numel()} 个")
        self.ids = ids.long()
        self.seq_len = seq_len
        self.pad_id = int(pad_id)

    def __len__(self) -> int:
        # 要预测的 token 有 N−1 个，每个样本负责 seq_len 个
        return math.ceil((self.ids.numel() - 1) / self.seq_len)

    def __getitem__(self, index: int):
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"样本下标 {index} 超出范围 [0, {n})")
        start = index * self.seq_len
        chunk = self.ids[start:start + self.seq_len + 1]
        x, y = chunk[:-1], chunk[1:]
        pad = self.seq_len - x.numel()
        if pad:
            x = torch.cat([x, torch.full((pad,), self.pad_id, dtype=torch.long)])
            y = torch.cat([y, torch.full((pad,), IGNORE_INDEX, dtype=torch.long)])
        return x.clone(), y.clone()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_batch(dataset, step: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
    """第 step 个全局批次里属于 rank 的那一份：(input_ids [B, T], labels [B, T])，B = batch_size。

    全局批次 = batch_size × world_size 个样本，取自按 (seed, epoch) 打乱的样本顺序里的第
    step·G … step·G + G − 1 个位置（G = 全局批大小；越过数据集末尾就进入下一个 epoch、换一种打乱）。
    rank r 拿其中第 r·B … r·B + B − 1 个。于是：把所有 rank 的那一份按 rank 顺序拼起来，恰好等于
    world_size = 1、batch_size = G 时的那一批——这正是“2 个进程 = 1 个进程跑全局批次”的前提。
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank 应在 [0, world_size={world_size}) 之内，实际 {rank!r}")
    n = len(dataset)
    global_size = batch_size * world_size
    first = step * global_size + rank * batch_size
    positions = range(first, first + batch_size)
    perms: dict[int, torch.Tensor] = {}
    idx = []
    for p in positions:
        epoch, within = divmod(p, n)
        if epoch not in perms:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perms[epoch] = torch.randperm(n, generator=g)
        idx.append(int(perms[epoch][within]))
    xs, ys = zip(*(dataset[i] for i in idx))
    return torch.stack(xs), torch.stack(ys)


def all_reduce_mean(value) -> float:
    """所有进程上的 value 的平均值（每个进程都拿到同一个数）；没有初始化进程组时原样返回。

    日志和评估要用它：只打印 rank 0 自己那一份数据上的 loss，看到的是半个批次的 loss。
    """
    t = torch.as_tensor(value, dtype=torch.float64).detach().clone().cpu().reshape(())
    _, world_size = _world()
    if world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)   # gloo 在 CPU 张量上做；nccl 时调用者应先放到 GPU
        t /= world_size
    return float(t)


def _all_reduce_sum(values: Sequence[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if _world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 32, token_bytes: Optional[torch.Tensor] = None,
             max_batches: Optional[int] = None) -> dict:
    """held-out 上的平均 loss（nats / token）与 bits per byte。

    - 所有非 −100 的 label 一起平均（按 token 加权，不是“每批平均再平均”——最后一批可能短、可能有 padding）；
    - bpb = 总 nll / ln 2 / 这些 label 一共的字节数；token_bytes[v] 是 token v 解码成 UTF-8 的字节数
      （None = 每个 token 1 字节，字符级 ASCII 语料就是这样）。bpb 与分词方式无关，不同词表的模型可以比；
    - 分布式时每个进程评估样本的一份（下标 ≡ rank mod world_size），再把 nll、token 数、字节数 all-reduce
      求和——每个进程都得到整个数据集上的结果；
    - 评估时 model.eval()（关掉 dropout），结束后恢复原来的模式。
    返回 {"loss", "bpb", "tokens", "bytes"}。
    """
    rank, world_size = _world()
    n = len(dataset)
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    mine = list(range(rank, n, world_size))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll_sum, n_tokens, n_bytes = 0.0, 0.0, 0.0
    try:
        for start in range(0, len(mine), batch_size):
            xs, ys = zip(*(dataset[i] for i in mine[start:start + batch_size]))
            x, y = torch.stack(xs).to(device), torch.stack(ys).to(device)
            logits = _logits_of(model(x)).float()
            keep = y != IGNORE_INDEX
            nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                  ignore_index=IGNORE_INDEX, reduction="sum")
            nll_sum += float(nll)
            n_tokens += float(keep.sum())
            if token_bytes is None:
                n_bytes += float(keep.sum())
            else:
                tb = torch.as_tensor(token_bytes, device=device)
                n_bytes += float(tb[y[keep]].sum())
    finally:
        model.train(was_training)
    nll_sum, n_tokens, n_bytes = _all_reduce_sum([nll_sum, n_tokens, n_bytes])
    if n_tokens == 0:
        raise ValueError("评估集里没有任何要预测的 token（labels 全是 −100）")
    return {"loss": nll_sum / n_tokens, "bpb": nll_sum / math.log(2) / max(n_bytes, 1.0),
            "tokens": int(n_tokens), "bytes": int(n_bytes)}


def setup_distributed() -> tuple[int, int, str]:
    """读 torchrun 设的环境变量，初始化进程组；返回 (rank, world_size, device)。

    - 没有 RANK（不是 torchrun 启动的）：单进程，(0, 1, "cuda" 或 "cpu")，不初始化进程组；
    - 有 RANK：rank = RANK（全局编号）、world_size = WORLD_SIZE、local_rank = LOCAL_RANK（本机第几个进程）；
      有 CUDA 时 backend = "nccl"、device = f"cuda:{local_rank}"（并 torch.cuda.set_device），否则
      backend = "gloo"、device = "cpu"；init_process_group 的 init_method 默认是 env://，
      它自己读 MASTER_ADDR / MASTER_PORT。
    对应 minimind trainer/trainer_utils.py 的 init_distributed_mode。
    """
    if "RANK" not in os.environ:
        return 0, 1, ("cuda" if torch.cuda.is_available() else "cpu")
    missing = [k for k in ("WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"设置了 RANK，却缺少环境变量 {missing}：请用 torchrun 启动（它会把这些都设好）")
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        backend, device = "nccl", f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    else:
        backend, device = "gloo", "cpu"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return rank, world_size, device


def cleanup_distributed() -> None:
    """销毁进程组（没有初始化时什么也不做）。"""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pretrain(model: nn.Module, dataset, optimizer: torch.optim.Optimizer, *, steps: int, batch_size: int,
             seed: int = 0, ckpt_path=None) -> list[float]:
    """最小的（分布式）预训练循环：steps 次更新，返回每一步的全局平均 loss。

    - 进程组已初始化且 world_size > 1 时，用 DistributedDataParallel 包住 model：反向时它把各进程的梯度
      all-reduce 求平均，所以 loss 不要再自己除以 world_size；
    - 每一步取 rank_batch(dataset, step, batch_size, rank, world_size, seed)——各进程拿不同的那一份；
    - loss = 逐位置交叉熵（labels 已经右移、−100 不计）；zero_grad → backward → optimizer.step；
    - 记录的 loss 先 all_reduce_mean：每个进程记下的都是整个全局批次的 loss；
    - ckpt_path 不为 None：训练结束后**只有 rank 0** 把 model.state_dict()（不是 DDP 包装的，键名没有
      "module." 前缀）原子地写到 ckpt_path。
    """
    rank, world_size = _world()
    net = DistributedDataParallel(model) if world_size > 1 else model
    net.train()
    device = next(model.parameters()).device
    losses = []
    for step in range(steps):
        x, y = rank_batch(dataset, step, batch_size, rank, world_size, seed)
        x, y = x.to(device), y.to(device)
        logits = _logits_of(net(x))
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1),
                               ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(all_reduce_mean(loss.detach()))
    if ckpt_path is not None and rank == 0:
        _atomic_save(model.state_dict(), Path(ckpt_path))
    return losses
