"""模块 09 的 bug bank：预训练与多进程训练里真实会写出来的错误。

每个错误都让 exercises/09_pretrain 的测试失败；分布式的几个（同一份数据、loss 除两次、所有 rank 都写文件、
指标只看 rank 0、没包 DDP）只有那个真的 2 进程测试抓得住——单进程里 world_size = 1，它们和正确的代码一模一样。
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kata.bugbank import Bug
from kata.impl import load_side_file

_ref = load_side_file("solutions", "09_pretrain", "pretrain.py")


# ---------------------------------------------------------------- 数据

class LabelsNotShifted(_ref.PretrainDataset):
    """labels = input_ids 的副本（minimind-3 的写法，它的模型会在内部移位）；本课的 loss 是逐位置的，于是模型在学“抄当前 token”。"""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x, torch.where(y == _ref.IGNORE_INDEX, y, x)


class PaddingCountedInLoss(_ref.PretrainDataset):
    """labels 的 padding 用 pad_id 而不是 −100：补出来的假 token 也算进 loss。"""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return x, torch.where(y == _ref.IGNORE_INDEX, torch.full_like(y, self.pad_id), y)


class PadIdIgnored(_ref.PretrainDataset):
    """input_ids 永远补 0，不管 pad_id 是多少。"""

    def __getitem__(self, index):
        x, y = super().__getitem__(index)
        return torch.where(y == _ref.IGNORE_INDEX, torch.zeros_like(x), x), y


def rank_batch_same_data(dataset, step, batch_size, rank=0, world_size=1, seed=0):
    """每个进程都从全局批次的开头取：没有加 rank·batch_size 的偏移，所有进程在看同一份数据。"""
    return _ref.rank_batch(dataset, step * world_size, batch_size, 0, 1, seed)


# ---------------------------------------------------------------- 评估

def _evaluate_variant(model, dataset, batch_size=32, token_bytes=None, max_batches=None, *,
                      mean_of_means=False, per_token_bpb=False, natural_log=False, reduce=True, eval_mode=True,
                      raw_logits=False):
    rank, world_size = _ref._world()
    n = len(dataset)
    if max_batches is not None:
        n = min(n, max_batches * batch_size)
    mine = list(range(rank, n, world_size))
    was = model.training
    if eval_mode:
        model.eval()
    nll_sum = n_tok = n_bytes = 0.0
    batch_means = []
    try:
        with torch.no_grad():
            for start in range(0, len(mine), batch_size):
                xs, ys = zip(*(dataset[i] for i in mine[start:start + batch_size]))
                x, y = torch.stack(xs), torch.stack(ys)
                out = model(x)
                logits = (out if raw_logits else _ref._logits_of(out)).float()
                keep = y != -100
                nll = float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                            ignore_index=-100, reduction="sum"))
                nll_sum += nll
                n_tok += float(keep.sum())
                n_bytes += float(keep.sum()) if token_bytes is None else float(torch.as_tensor(token_bytes)[y[keep]].sum())
                batch_means.append(nll / max(float(keep.sum()), 1.0))
    finally:
        model.train(was)
    if reduce:
        nll_sum, n_tok, n_bytes = _ref._all_reduce_sum([nll_sum, n_tok, n_bytes])
    loss = sum(batch_means) / len(batch_means) if mean_of_means else nll_sum / n_tok
    denom = n_tok if per_token_bpb else n_bytes
    bpb = nll_sum / denom if natural_log else nll_sum / math.log(2) / denom
    return {"loss": loss, "bpb": bpb, "tokens": int(n_tok), "bytes": int(n_bytes)}


def evaluate_mean_of_batch_means(model, dataset, batch_size=32, token_bytes=None, max_batches=None):
    """每批先求平均 loss，再对批求平均：最后一批不满（或有 padding）时，它的每个 token 权重被放大了。"""
    return _evaluate_variant(model, dataset, batch_size, token_bytes, max_batches, mean_of_means=True)


def evaluate_bpb_per_token(model, dataset, batch_size=32, token_bytes=None, max_batches=None):
    """bpb 除的是 token 数而不是字节数（token_bytes 没用上）：那是 bits per token。"""
    return _evaluate_variant(model, dataset, batch_size, token_bytes, max_batches, per_token_bpb=True)


def evaluate_bpb_in_nats(model, dataset, batch_size=32, token_bytes=None, max_batches=None):
    """bpb 忘了除以 ln 2：单位还是 nats / byte。"""
    return _evaluate_variant(model, dataset, batch_size, token_bytes, max_batches, natural_log=True)


def evaluate_without_eval_mode(model, dataset, batch_size=32, token_bytes=None, max_batches=None):
    """评估时没有 model.eval()：dropout 还开着，评估结果带噪声、偏高。"""
    return _evaluate_variant(model, dataset, batch_size, token_bytes, max_batches, eval_mode=False)


def evaluate_not_reduced(model, dataset, batch_size=32, token_bytes=None, max_batches=None):
    """评估各进程只看自己那一份样本，却没有 all-reduce：每个 rank 报的是不同的、只含部分数据的结果。"""
    return _evaluate_variant(model, dataset, batch_size, token_bytes, max_batches, reduce=False)


def evaluate_logits_not_unwrapped(model, dataset, batch_size=32, token_bytes=None, max_batches=None):
    """直接把 model(x) 当 logits：测试里的小模型返回张量时没事，kata train 的 TinyLM（返回 (logits, loss)）
    和 MiniMindForCausalLM（返回带 .logits 的对象）一来就崩。"""
    return _evaluate_variant(model, dataset, batch_size, token_bytes, max_batches, raw_logits=True)


# ---------------------------------------------------------------- 进程组

def setup_always_gloo(*_a):
    """不看有没有 CUDA，backend 永远是 gloo、设备永远是 cpu（GPU 机器上 torchrun 也只在 CPU 上训练）。"""
    if "RANK" not in os.environ:
        return 0, 1, ("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group(backend="gloo", rank=rank, world_size=world)
    return rank, world, "cpu"


def setup_rank_from_local_rank():
    """把 LOCAL_RANK（本机第几个进程）当成了全局 rank：单机看不出来，两台机器时两个进程都自称 rank 0。"""
    if "RANK" not in os.environ:
        return 0, 1, ("cuda" if torch.cuda.is_available() else "cpu")
    local = int(os.environ["LOCAL_RANK"])
    world = int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl", rank=local, world_size=world)
        return local, world, f"cuda:{local}"
    dist.init_process_group(backend="gloo", rank=local, world_size=world)
    return local, world, "cpu"


# ---------------------------------------------------------------- 指标与训练循环

def all_reduce_mean_rank0_only(value):
    """指标只取本进程（rank 0 打印的就是它自己那一半数据上的 loss），没有 all-reduce。"""
    return float(torch.as_tensor(value, dtype=torch.float64).detach().reshape(()))


def _pretrain_variant(model, dataset, optimizer, *, steps, batch_size, seed=0, ckpt_path=None,
                      divide_by_world=False, wrap=True, every_rank_saves=False, batch_fn=None, metric_fn=None,
                      in_place_save=False):
    batch_fn = batch_fn or _ref.rank_batch
    metric_fn = metric_fn or _ref.all_reduce_mean
    rank, world_size = _ref._world()
    net = _ref.DistributedDataParallel(model) if (world_size > 1 and wrap) else model
    net.train()
    losses = []
    for step in range(steps):
        x, y = batch_fn(dataset, step, batch_size, rank, world_size, seed)
        logits = _ref._logits_of(net(x))
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        (loss / world_size if divide_by_world else loss).backward()
        optimizer.step()
        losses.append(metric_fn(loss.detach()))
    if ckpt_path is not None and (rank == 0 or every_rank_saves):
        if in_place_save:
            Path(ckpt_path).parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), ckpt_path)
        else:
            _ref._atomic_save(model.state_dict(), Path(ckpt_path))
    return losses


def pretrain_loss_averaged_twice(model, dataset, optimizer, *, steps, batch_size, seed=0, ckpt_path=None):
    """loss 先自己除以 world_size 再 backward：DDP 又对梯度求了一次平均，更新量只剩 1/world_size。"""
    return _pretrain_variant(model, dataset, optimizer, steps=steps, batch_size=batch_size, seed=seed,
                             ckpt_path=ckpt_path, divide_by_world=True)


def pretrain_without_ddp(model, dataset, optimizer, *, steps, batch_size, seed=0, ckpt_path=None):
    """模型没有用 DistributedDataParallel 包起来：各进程只用自己那份梯度，参数越走越远。"""
    return _pretrain_variant(model, dataset, optimizer, steps=steps, batch_size=batch_size, seed=seed,
                             ckpt_path=ckpt_path, wrap=False)


def pretrain_all_ranks_save(model, dataset, optimizer, *, steps, batch_size, seed=0, ckpt_path=None):
    """每个进程都写 checkpoint：同一个路径被同时写好几遍，可能互相覆盖、写坏。"""
    return _pretrain_variant(model, dataset, optimizer, steps=steps, batch_size=batch_size, seed=seed,
                             ckpt_path=ckpt_path, every_rank_saves=True)


def pretrain_same_data(model, dataset, optimizer, *, steps, batch_size, seed=0, ckpt_path=None):
    """（与 rank_batch_same_data 配套）训练循环用的是那个没按 rank 偏移的 rank_batch。"""
    return _pretrain_variant(model, dataset, optimizer, steps=steps, batch_size=batch_size, seed=seed,
                             ckpt_path=ckpt_path, batch_fn=rank_batch_same_data)


def pretrain_metrics_rank0(model, dataset, optimizer, *, steps, batch_size, seed=0, ckpt_path=None):
    """（与 all_reduce_mean_rank0_only 配套）训练循环记下的是本进程那一份数据上的 loss。"""
    return _pretrain_variant(model, dataset, optimizer, steps=steps, batch_size=batch_size, seed=seed,
                             ckpt_path=ckpt_path, metric_fn=all_reduce_mean_rank0_only)


def pretrain_checkpoint_in_place(model, dataset, optimizer, *, steps, batch_size, seed=0, ckpt_path=None):
    """直接 torch.save 到 ckpt_path（没有先写临时文件再 os.replace）：写到一半被打断，旧的 checkpoint 也坏了。"""
    return _pretrain_variant(model, dataset, optimizer, steps=steps, batch_size=batch_size, seed=seed,
                             ckpt_path=ckpt_path, in_place_save=True)


BUGS = [
    Bug("labels_not_shifted", "labels 没有右移一位（等于 input_ids）", {"PretrainDataset": LabelsNotShifted}),
    Bug("padding_counted_in_loss", "padding 位置的 labels 不是 −100（padding 被算进了 loss）",
        {"PretrainDataset": PaddingCountedInLoss}),
    Bug("pad_id_ignored", "input_ids 永远补 0，忽略了 pad_id", {"PretrainDataset": PadIdIgnored}),
    Bug("same_data_every_rank", "每个进程拿到的都是同一份数据（没有按 rank 偏移）", {"rank_batch": rank_batch_same_data, "pretrain": pretrain_same_data}),
    Bug("eval_mean_of_batch_means", "评估时每批先平均再对批平均（不按 token 加权）",
        {"evaluate": evaluate_mean_of_batch_means}),
    Bug("bpb_per_token", "bpb 除的是 token 数而不是字节数", {"evaluate": evaluate_bpb_per_token}),
    Bug("bpb_in_nats", "bpb 忘了除以 ln 2（单位还是 nats）", {"evaluate": evaluate_bpb_in_nats}),
    Bug("eval_without_eval_mode", "评估时没有 model.eval()（dropout 还开着）", {"evaluate": evaluate_without_eval_mode}),
    Bug("eval_not_reduced", "评估结果没有在进程间 all-reduce（每个 rank 只报自己那一份）",
        {"evaluate": evaluate_not_reduced}),
    Bug("always_gloo", "backend 永远是 gloo、设备永远是 cpu（有 CUDA 也不用 nccl）", {"setup_distributed": setup_always_gloo}),
    Bug("rank_from_local_rank", "把 LOCAL_RANK 当成了全局 rank", {"setup_distributed": setup_rank_from_local_rank}),
    Bug("metrics_from_rank0_only", "指标只取本进程的值（没有 all-reduce，rank 0 只看到一半数据）",
        {"all_reduce_mean": all_reduce_mean_rank0_only, "pretrain": pretrain_metrics_rank0}),
    Bug("loss_averaged_twice", "loss 自己又除了一次 world_size（DDP 已经对梯度求平均）",
        {"pretrain": pretrain_loss_averaged_twice}),
    Bug("no_ddp_wrap", "模型没有用 DistributedDataParallel 包起来（梯度不同步）", {"pretrain": pretrain_without_ddp}),
    Bug("all_ranks_save", "每个进程都写 checkpoint（应只有 rank 0 写）", {"pretrain": pretrain_all_ranks_save}),
    Bug("eval_logits_not_unwrapped", "评估时直接把 model(x) 当 logits（模型返回 (logits, loss) 或 .logits 对象时就崩）",
        {"evaluate": evaluate_logits_not_unwrapped}),
    Bug("checkpoint_not_atomic", "checkpoint 直接 torch.save 到目标路径（写到一半被打断，旧文件也坏了）",
        {"pretrain": pretrain_checkpoint_in_place}),
]
