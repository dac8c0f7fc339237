"""练习 09 · 预训练：把 token 流打包成样本、在 held-out 上评估（loss 与 bits per byte）、多进程（DDP）的接线。

写完后运行 `pytest exercises/09_pretrain`。背景知识在 exercises/09_pretrain/teaching.md。
建议顺序：PretrainDataset（§2）→ rank_batch（§4.2）→ evaluate（§3）→ setup_distributed / cleanup_distributed /
all_reduce_mean（§4.1、§4.4）→ pretrain（§5）。最后那个测试会真的启动两个进程（gloo，只连 127.0.0.1）。

约定（与 minimind 的异同见 code_guide.md）：labels 在数据集里就右移好了——labels[t] 是 input_ids[t] 的下一个
token，padding 位置是 −100；loss 是逐位置的 cross_entropy(logits, labels)，模型自己不再移位。
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


# ---------------------------------------------------------------------------------------------
# 给定的小工具（不是这一课的重点）
# ---------------------------------------------------------------------------------------------

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


def _world() -> tuple[int, int]:
    """(rank, world_size)：进程组已初始化时问 torch.distributed，否则是单进程 (0, 1)。"""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce_sum(values: Sequence[float]) -> list[float]:
    """把几个数在所有进程上分别求和（单进程时原样返回）。evaluate 用它汇总 nll、token 数、字节数。"""
    t = torch.tensor(values, dtype=torch.float64)
    if _world()[1] > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _atomic_save(obj, path: Path) -> None:
    """先写同目录的临时文件，再 os.replace：中途崩溃也不会留下半个文件。"""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# 你要写的部分
# ---------------------------------------------------------------------------------------------

class PretrainDataset(torch.utils.data.Dataset):
    """把一条 token 流切成定长样本（teaching.md §2）。

    第 i 个样本取流里 [i·seq_len, i·seq_len + seq_len] 这 seq_len + 1 个 token：
        input_ids = 前 seq_len 个，labels = 后 seq_len 个（右移一位：labels[t] = input_ids[t+1] 位置上的 token）。
    样本首尾相接、互不重叠，len = ceil((N − 1) / seq_len)：每个 token（第一个除外）恰好当一次 label。
    最后一个样本不够长时：input_ids 用 pad_id 补齐，labels 用 −100 补齐（不计入 loss，teaching.md §2.2）。

    __init__ 要检查：seq_len 是 ≥ 1 的整数、token_ids 是一维整数序列且至少 2 个 token，否则 raise ValueError（中文说明）。
    __getitem__(i) 返回 (input_ids, labels)，都是 int64、形状 [seq_len]；支持负下标，越界 raise IndexError。

    提示：
    - self.ids = torch.as_tensor(token_ids).long()；
    - chunk = self.ids[start:start + seq_len + 1]；x, y = chunk[:-1], chunk[1:]；
    - 补齐用 torch.cat([x, torch.full((pad,), pad_id, dtype=torch.long)])。
    """

    def __init__(self, token_ids, seq_len: int, pad_id: int = 0):
        raise NotImplementedError("还没实现：exercises/09_pretrain/pretrain.py · PretrainDataset.__init__ — 先读 teaching.md §2")

    def __len__(self) -> int:
        raise NotImplementedError("还没实现：exercises/09_pretrain/pretrain.py · PretrainDataset.__len__ — 先读 teaching.md §2")

    def __getitem__(self, index: int):
        raise NotImplementedError("还没实现：exercises/09_pretrain/pretrain.py · PretrainDataset.__getitem__ — 先读 teaching.md §2")


def rank_batch(dataset, step: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
    """第 step 个全局批次里属于 rank 的那一份：(input_ids [B, T], labels [B, T])，B = batch_size（teaching.md §4.2）。

    - 全局批大小 G = batch_size × world_size；全局批次 step 占样本顺序里的位置 step·G … step·G + G − 1；
    - rank r 拿其中的 r·B … r·B + B − 1（先加 rank·batch_size 的偏移！）；
    - 位置 p 的 epoch, within = divmod(p, len(dataset))；第 epoch 轮的样本顺序是
      torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))，
      位置 p 上的样本是 dataset[perm[within]]；
    - rank 不在 [0, world_size) 里 → raise ValueError。
    关键性质（测试会检查）：所有 rank 的那一份按 rank 顺序拼起来 == rank_batch(dataset, step, G, 0, 1, seed)。
    """
    raise NotImplementedError("还没实现：exercises/09_pretrain/pretrain.py · rank_batch — 先读 teaching.md §4.2")


def all_reduce_mean(value) -> float:
    """value（Python 数或单元素张量）在所有进程上的平均，返回 Python float；没有进程组时原样返回（teaching.md §4.4）。

    提示：t = torch.as_tensor(value, dtype=torch.float64).detach().clone().cpu().reshape(())；
    world_size > 1 时 dist.all_reduce(t, op=dist.ReduceOp.SUM)，再除以 world_size。
    """
    raise NotImplementedError("还没实现：exercises/09_pretrain/pretrain.py · all_reduce_mean — 先读 teaching.md §4.4")


@torch.no_grad()
def evaluate(model: nn.Module, dataset, batch_size: int = 32, token_bytes: Optional[torch.Tensor] = None,
             max_batches: Optional[int] = None) -> dict:
    """held-out 上的平均 loss（nats / token）与 bits per byte（teaching.md §3）。

    返回 {"loss": 总 nll / 非 −100 的 token 数, "bpb": 总 nll / ln 2 / 这些 token 的字节数,
          "tokens": token 数, "bytes": 字节数}。
    - 按 token 加权：累加每批的 nll **之和**（F.cross_entropy(..., reduction="sum", ignore_index=−100)），
      最后再除——不要“每批求平均再平均”（最后一批可能不满、可能有 padding）；
    - token_bytes[v] = token v 的 UTF-8 字节数（None 表示每个 token 1 字节）；字节数 = token_bytes[labels 里非 −100 的那些]之和；
    - max_batches 不为 None：只评估前 max_batches × batch_size 个样本；
    - 分布式：rank r 只评估下标 r, r + world_size, r + 2·world_size, … 的样本（用 _world()），
      然后 _all_reduce_sum([nll, tokens, bytes])——每个进程都得到整个数据集上的结果；
    - 先 model.eval()（关掉 dropout），最后（try/finally）恢复成原来的 model.training；
    - 模型输出用 _logits_of(model(x)) 取 logits，算之前 .float()；x、y 要放到模型所在的设备上。
    """
    raise NotImplementedError("还没实现：exercises/09_pretrain/pretrain.py · evaluate — 先读 teaching.md §3")


def setup_distributed() -> tuple[int, int, str]:
    """读 torchrun 设的环境变量，初始化进程组；返回 (rank, world_size, device)（teaching.md §4.1）。

    - 环境里没有 RANK：不是 torchrun 启动的，单进程：返回 (0, 1, "cuda" if torch.cuda.is_available() else "cpu")，
      不调用 init_process_group；
    - 有 RANK：rank = int(RANK)（全局编号）、world_size = int(WORLD_SIZE)、local_rank = int(LOCAL_RANK)（本机第几个）；
      torch.cuda.is_available() 时 backend = "nccl"、device = f"cuda:{local_rank}"，并 torch.cuda.set_device(local_rank)；
      否则 backend = "gloo"、device = "cpu"；
      然后 dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
      （init_method 默认 env://，它自己读 MASTER_ADDR、MASTER_PORT）；
    - 设置了 RANK 却缺 WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT：raise RuntimeError，说“请用 torchrun 启动”。
    """
    raise NotImplementedError("还没实现：exercises/09_pretrain/pretrain.py · setup_distributed — 先读 teaching.md §4.1")


def cleanup_distributed() -> None:
    """进程组已初始化时 dist.destroy_process_group()；没有初始化时什么也不做（teaching.md §4.1）。"""
    raise NotImplementedError("还没实现：exercises/09_pretrain/pretrain.py · cleanup_distributed — 先读 teaching.md §4.1")


def pretrain(model: nn.Module, dataset, optimizer: torch.optim.Optimizer, *, steps: int, batch_size: int,
             seed: int = 0, ckpt_path=None) -> list[float]:
    """最小的（分布式）预训练循环：steps 次更新，返回每一步的全局平均 loss（teaching.md §5）。

    1. rank, world_size = _world()；world_size > 1 时 net = DistributedDataParallel(model)，否则 net = model；net.train()；
    2. 每一步：x, y = rank_batch(dataset, step, batch_size, rank, world_size, seed)（放到模型的设备上）；
       logits = _logits_of(net(x))；loss = F.cross_entropy(logits 展平成 [−1, V] 再 .float(), y 展平, ignore_index=−100)；
       optimizer.zero_grad(set_to_none=True)；loss.backward()；optimizer.step()；
       losses.append(all_reduce_mean(loss.detach()))——记下全局平均，而不是本进程那一份；
    3. 训练结束，ckpt_path 不为 None **且 rank == 0** 时：_atomic_save(model.state_dict(), Path(ckpt_path))
       （存没包装的 model：键名没有 “module.” 前缀，与 minimind 一样）。

    不要自己把 loss 除以 world_size：DDP 在反向时已经把各进程的梯度求了平均（teaching.md §4.3）。
    """
    raise NotImplementedError("还没实现：exercises/09_pretrain/pretrain.py · pretrain — 先读 teaching.md §5")
