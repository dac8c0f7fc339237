"""模块 09 · 预训练的测试：打包与右移、评估（loss / bpb）、分布式接线，和一次真正的 2 进程 gloo 训练。

分层（KATA_CONTRACTS）：
- 数据：PretrainDataset 的形状、右移、padding（hypothesis 抽流长与样本长）；
- 切批：rank_batch 把一个全局批次不重不漏地分给各进程（拼回去 = 单进程的大批次）；
- 评估：evaluate 与手算的 nll / bpb 一致（float64 的 log-sum-exp、不均匀的批次、padding、每 token 字节数）；
- 环境：setup_distributed 读 torchrun 的环境变量（用假的 init_process_group 检查 gloo/nccl、RANK、LOCAL_RANK）；
- 循环：pretrain 在单进程下 = 手写的 SGD 循环；
- 多进程：两个真的进程（gloo，127.0.0.1）跑 k 步 = 一个进程在拼起来的全局批次上跑 k 步。
"""
from __future__ import annotations

import importlib.util
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hypothesis import given, strategies as st
from torch import nn

from kata.impl import REPO_ROOT, resolve
from kata.testing import Contract, assert_close, require

MODULE = "09_pretrain"
DATA = "teaching.md §2（PretrainDataset：打包与右移）"
PAD = "teaching.md §2.2（padding 与 −100）"
EVAL = "teaching.md §3（evaluate：loss 与 bits per byte）"
BPB = "teaching.md §3.2（bpb 的换算）"
ENV = "teaching.md §4.1（torchrun 的环境变量与 setup_distributed）"
SHARD = "teaching.md §4.2（按 rank 切批次）"
DDP = "teaching.md §4.3（DDP 做了什么）"
RANK0 = "teaching.md §4.4（只有 rank 0 写文件，指标先 all-reduce）"
LOOP = "teaching.md §5（pretrain 循环）"

# 同一段 float32 计算、只是求和顺序不同（DDP 先各自求梯度再平均）：实测差 < 1e-7，留 100 倍余量
TOL = dict(atol=1e-5, rtol=1e-5)
# 评估与 float64 手算相比：模型的 logits 是 float32，log-sum-exp 在 float32 里做，相对误差 ~1e-7
EVAL_TOL = 1e-5

KATA_CONTRACTS = (
    Contract("dataset", "PretrainDataset：样本个数、形状、右移一位、padding 标成 −100",
             ("test_dataset_*",)),
    Contract("shard", "rank_batch：全局批次按 rank 切开，拼回去等于单进程的大批次",
             ("test_rank_batch_*",), after=("dataset",)),
    Contract("evaluate", "evaluate：按 token 加权的平均 nll 与 bits per byte",
             ("test_evaluate_*",), after=("dataset",)),
    Contract("setup", "setup_distributed / cleanup_distributed / all_reduce_mean（单进程与 torchrun 环境）",
             ("test_setup_*", "test_cleanup_*", "test_all_reduce_*")),
    Contract("loop", "pretrain：单进程下等于手写的 SGD 循环，只写一份 checkpoint",
             ("test_pretrain_*",), after=("shard",)),
    Contract("ddp", "两个进程（gloo）= 一个进程跑全局批次",
             ("test_two_processes_*",), after=("shard", "evaluate", "setup", "loop")),
)


def _worker():
    path = Path(__file__).with_name("_ddp_worker.py")
    spec = importlib.util.spec_from_file_location("kata_09_ddp_worker", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


W = _worker()


def _samples(ds):
    return [ds[i] for i in range(len(ds))]


# ---------------------------------------------------------------------------------------------
# PretrainDataset
# ---------------------------------------------------------------------------------------------

def test_dataset_length_shapes_and_dtype(impl):
    ds = impl.PretrainDataset(torch.arange(23), 5)
    require(len(ds) == 5, f"23 个 token、seq_len=5：要预测的 token 有 22 个，应切成 ceil(22/5) = 5 个样本，实际 {len(ds)}",
            DATA)
    x, y = ds[0]
    require(tuple(x.shape) == (5,) and tuple(y.shape) == (5,),
            f"每个样本应是 (input_ids [5], labels [5])，实际形状 {tuple(x.shape)}、{tuple(y.shape)}", DATA)
    require(x.dtype == torch.long and y.dtype == torch.long,
            f"input_ids 和 labels 应是 int64（torch.long），实际 {x.dtype}、{y.dtype}", DATA)
    require(torch.equal(x, torch.arange(5)),
            f"第 0 个样本的 input_ids 应是流里的前 5 个 token [0, 1, 2, 3, 4]，实际 {x.tolist()}", DATA)
    x4, _ = ds[4]
    require(int(x4[0]) == 20, f"样本首尾相接：第 4 个样本应从第 4·5 = 20 个 token 开始，实际从 {int(x4[0])} 开始", DATA)
    require(x4.tolist() == [20, 21, 0, 0, 0],
            f"最后一个样本只剩 token 20、21 当输入，其余 3 个位置用默认的 pad_id=0 补齐：期望 [20, 21, 0, 0, 0]，实际 {x4.tolist()}",
            PAD)
    x_last, _ = ds[-1]
    require(torch.equal(x_last, x4), "负下标 ds[-1] 应等于最后一个样本", DATA)
    for bad in (len(ds), -len(ds) - 1):
        err = None
        try:
            ds[bad]
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001
            err = exc
        require(isinstance(err, IndexError),
                f"{len(ds)} 个样本：ds[{bad}] 越界，应抛 IndexError（合法的下标是 −{len(ds)} … {len(ds) - 1}；"
                "for 循环靠它停下，负下标太小时也不能悄悄取出别的 token），"
                f"实际 {'返回了一个样本' if err is None else f'{type(err).__name__}: {err}'}", DATA)


@given(n=st.integers(2, 60), seq_len=st.integers(1, 9), seed=st.integers(0, 10))
def test_dataset_labels_are_inputs_shifted_by_one(impl, n, seq_len, seed):
    ids = torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(seed))
    ds = impl.PretrainDataset(ids, seq_len)
    xs, ys = zip(*_samples(ds))
    labels = torch.cat(ys)
    kept = labels[labels != -100]
    require(torch.equal(kept, ids[1:]),
            f"把所有样本的 labels（去掉 −100）按顺序拼起来，应恰好是 token 流去掉第一个：每个 token 当一次 label。\n"
            f"  流 {ids.tolist()[:12]}…，seq_len={seq_len}\n  期望 {ids[1:].tolist()[:12]}…\n  实际 {kept.tolist()[:12]}…\n"
            "  如果实际等于流本身（从第 0 个 token 开始），labels 没有右移一位——那样模型学的是“抄写当前 token”",
            DATA)
    for x, y in zip(xs, ys):
        valid = (y != -100).nonzero().flatten().tolist()
        for t in valid[:-1]:
            require(int(y[t]) == int(x[t + 1]),
                    f"labels[t] 应是 input_ids[t] 的下一个 token，即 input_ids[t+1]：位置 {t} 上 labels={int(y[t])}，"
                    f"input_ids[t+1]={int(x[t + 1])}", DATA)


@given(n=st.integers(2, 60), seq_len=st.integers(1, 9), pad_id=st.integers(0, 60))
def test_dataset_padding_is_ignored_in_labels(impl, n, seq_len, pad_id):
    ids = torch.arange(100, 100 + n)    # 与 pad_id 不会撞上
    ds = impl.PretrainDataset(ids, seq_len, pad_id=pad_id)
    n_pad = len(ds) * seq_len - (n - 1)
    xs, ys = zip(*_samples(ds))
    x_last, y_last = xs[-1], ys[-1]
    n_ignored = int((torch.cat(ys) == -100).sum())
    require(n_ignored == n_pad,
            f"流长 {n}、seq_len={seq_len}：最后一个样本差 {n_pad} 个 token 才满，labels 里应恰好有 {n_pad} 个 −100，"
            f"实际 {n_ignored} 个（labels 的 padding 必须是 −100，否则 padding 也算进 loss）", PAD)
    if n_pad:
        require(torch.all(y_last[-n_pad:] == -100) and torch.all(x_last[-n_pad:] == pad_id),
                f"padding 在最后一个样本的末尾：input_ids 补 pad_id={pad_id}、labels 补 −100；"
                f"实际 input_ids 末尾 {x_last[-n_pad:].tolist()}，labels 末尾 {y_last[-n_pad:].tolist()}", PAD)


def test_dataset_rejects_bad_input(impl):
    for bad_len in (0, -3):
        with pytest.raises(ValueError):
            impl.PretrainDataset(torch.arange(10), bad_len)
    with pytest.raises(ValueError):
        impl.PretrainDataset(torch.arange(1), 4)   # 一个 token 没有任何 label
    for bad, what in ((torch.arange(24).reshape(4, 6), "二维的 [4, 6]（一批序列，而不是一条 token 流）"),
                      (torch.linspace(0, 9, 12), "浮点数（.long() 会悄悄把 1.7 截成 1）")):
        err = None
        try:
            impl.PretrainDataset(bad, 3)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001
            err = exc
        require(isinstance(err, ValueError) and re.search(r"[\u4e00-\u9fff]", str(err)),
                f"token_ids 是{what}时应抛 ValueError（中文说明期望一维的整数序列），"
                f"实际 {'没有报错' if err is None else f'{type(err).__name__}: {err}'}", DATA)


# ---------------------------------------------------------------------------------------------
# rank_batch
# ---------------------------------------------------------------------------------------------

def _sample_ids(x: torch.Tensor, seq_len: int) -> list[int]:
    return (x[:, 0] // seq_len).tolist()    # 流是 arange：样本 i 的第一个 token 是 i·seq_len


@given(n_samples=st.integers(3, 20), batch=st.integers(1, 4), world=st.integers(1, 4),
       step=st.integers(0, 12), seed=st.integers(0, 5))
def test_rank_batch_shards_concatenate_to_the_single_process_batch(impl, n_samples, batch, world, step, seed):
    seq = 3
    ds = impl.PretrainDataset(torch.arange(n_samples * seq + 1), seq)
    parts = [impl.rank_batch(ds, step, batch, r, world, seed) for r in range(world)]
    for x, y in parts:
        require(tuple(x.shape) == (batch, seq) and tuple(y.shape) == (batch, seq),
                f"rank_batch 应返回 (input_ids, labels)，各 [batch_size={batch}, seq_len={seq}]，实际 "
                f"{tuple(x.shape)}、{tuple(y.shape)}", SHARD)
    whole_x, whole_y = impl.rank_batch(ds, step, batch * world, 0, 1, seed)
    cat_x = torch.cat([p[0] for p in parts])
    require(torch.equal(cat_x, whole_x) and torch.equal(torch.cat([p[1] for p in parts]), whole_y),
            f"world_size={world}、每个进程 batch_size={batch}：把各 rank 的那一份按 rank 顺序拼起来，应等于单进程"
            f"（world_size=1）batch_size={batch * world} 的同一步批次。\n"
            f"  单进程的样本 {_sample_ids(whole_x, seq)}\n  各 rank 拼起来 {_sample_ids(cat_x, seq)}\n"
            "  如果每个 rank 拿到的都一样，是没有按 rank 偏移（每个进程都在看同一份数据）", SHARD)


def test_rank_batch_visits_every_sample_once_per_epoch(impl):
    seq, n = 2, 12
    ds = impl.PretrainDataset(torch.arange(n * seq + 1), seq)
    seen = []
    for step in range(3):                      # 3 步 × 2 个进程 × 2 个样本 = 12 = 一个 epoch
        for r in range(2):
            seen += _sample_ids(impl.rank_batch(ds, step, 2, r, 2, 0)[0], seq)
    require(sorted(seen) == list(range(n)),
            f"一个 epoch（3 步、2 个进程、每个 2 个样本）应恰好把 12 个样本各看一遍，实际看到 {sorted(seen)}", SHARD)
    a = _sample_ids(impl.rank_batch(ds, 0, n, 0, 1, seed=0)[0], seq)
    b = _sample_ids(impl.rank_batch(ds, 0, n, 0, 1, seed=1)[0], seq)
    require(a != b and sorted(a) == sorted(b) == list(range(n)),
            f"seed 决定打乱的顺序：seed=0 与 seed=1 的第一个 epoch 应是同一组样本、不同的顺序，实际 {a} 与 {b}", SHARD)
    again = _sample_ids(impl.rank_batch(ds, 0, n, 0, 1, seed=0)[0], seq)
    require(again == a, "同样的 (step, seed) 应给出同样的批次（续训只靠步号就能接上）", SHARD)
    nxt = _sample_ids(impl.rank_batch(ds, 1, n, 0, 1, seed=0)[0], seq)
    require(sorted(nxt) == list(range(n)) and nxt != a,
            f"第二个 epoch 应重新打乱（换一种顺序），实际两个 epoch 都是 {a}", SHARD)
    for step, want in ((0, a), (1, nxt)):
        default = _sample_ids(impl.rank_batch(ds, step, n)[0], seq)
        require(default == want, f"默认参数 rank=0、world_size=1、seed=0：rank_batch(ds, {step}, {n}) 应等于 "
                                 f"rank_batch(ds, {step}, {n}, 0, 1, seed=0) = {want}，实际 {default}", SHARD)


def test_rank_batch_rejects_bad_rank(impl):
    ds = impl.PretrainDataset(torch.arange(20), 3)
    for r, w in ((2, 2), (-1, 2)):
        with pytest.raises(ValueError):
            impl.rank_batch(ds, 0, 2, r, w, 0)


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------

class TableLM(nn.Module):
    """logits = table[input_id]：一张可以手算的表（再加一个可选的 dropout）。"""

    def __init__(self, vocab: int, seed: int = 0, dropout: float = 0.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab, vocab, generator=g) * 2)
        self.drop = nn.Dropout(dropout)

    def forward(self, input_ids):
        return self.drop(self.table[input_ids])


def _hand_eval(table: torch.Tensor, samples, token_bytes=None):
    """float64、逐个 token 的 log-sum-exp：总 nll、token 数、字节数。"""
    t = table.detach().double()
    nll = n_tok = n_bytes = 0.0
    for x, y in samples:
        for a, b in zip(x.tolist(), y.tolist()):
            if b == -100:
                continue
            row = t[a].tolist()
            m = max(row)
            nll += m + math.log(sum(math.exp(v - m) for v in row)) - row[b]
            n_tok += 1
            n_bytes += 1 if token_bytes is None else int(token_bytes[b])
    return nll, n_tok, n_bytes


def _check_eval(got, nll, n_tok, n_bytes, what, section=EVAL):
    require(isinstance(got, dict) and "loss" in got and "bpb" in got,
            f"evaluate 应返回含 \"loss\" 与 \"bpb\" 的 dict，实际 {got!r}", EVAL)
    loss, bpb = nll / n_tok, nll / math.log(2) / n_bytes
    gl, gb = float(got["loss"]), float(got["bpb"])
    require(abs(gl - loss) <= EVAL_TOL * max(1, loss),
            f"{what}：期望 loss = 总 nll / 非 −100 的 token 数 = {nll:.6f} / {n_tok:g} = {loss:.6f}，实际 {gl:.6f}。"
            + (f"\n  你的值等于“每批平均、再对批平均”（最后一批短，权重被放大了）" if gl != 0 and abs(gl - loss) > 1e-3 else "")
            , EVAL)
    hints = []
    if abs(gb - loss / math.log(2)) < 1e-6 and abs(n_bytes - n_tok) > 0.5:
        hints.append("你的 bpb 等于 loss / ln 2——除的是 token 数，不是字节数（token_bytes 没用上）")
    if abs(gb - nll / n_bytes) < 1e-6:
        hints.append("你的 bpb 等于 nats / 字节——少除了 ln 2（nats → bits）")
    require(abs(gb - bpb) <= EVAL_TOL * max(1, bpb),
            f"{what}：期望 bpb = 总 nll / ln 2 / 字节数 = {nll:.6f} / {math.log(2):.6f} / {n_bytes:g} = {bpb:.6f}，"
            f"实际 {gb:.6f}" + ("\n  " + "；".join(hints) if hints else ""), BPB)
    got_counts = tuple(got.get(k) for k in ("tokens", "bytes"))
    require(all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in got_counts)
            and (round(got_counts[0]), round(got_counts[1])) == (round(n_tok), round(n_bytes)),
            f"{what}：evaluate 还应返回 \"tokens\"（参与平均的 token 数，即非 −100 的 label 数）= {round(n_tok)} 和 "
            f"\"bytes\"（这些 token 的字节数）= {round(n_bytes)}，实际 tokens={got_counts[0]!r}、bytes={got_counts[1]!r}", EVAL)


def test_evaluate_uniform_logits_give_log_vocab(impl):
    vocab = 8
    model = TableLM(vocab)
    with torch.no_grad():
        model.table.zero_()                    # 均匀分布：每个 token 的 nll = ln 8 = 3 bits
    ds = impl.PretrainDataset(torch.arange(17) % vocab, 4)
    got = impl.evaluate(model, ds, batch_size=2)
    _check_eval(got, 16 * math.log(vocab), 16, 16, "logits 全 0（均匀分布，每 token ln 8 nats = 3 bits）")
    got2 = impl.evaluate(model, ds, batch_size=2, token_bytes=torch.full((vocab,), 2))
    _check_eval(got2, 16 * math.log(vocab), 16, 32, "同上，但每个 token 占 2 字节（应是 1.5 bits/byte）", BPB)
    big = 2 ** 24 + 1                          # float32 只有 24 位有效二进制位：大验证集的字节数、nll 之和会被舍入
    got3 = impl.evaluate(model, ds, batch_size=2, token_bytes=torch.full((vocab,), big))
    _check_eval(got3, 16 * math.log(vocab), 16, 16 * big,
                f"同上，但每个 token 占 {big} 字节（总字节数 16·(2^24 + 1) 超出 float32 能精确表示的范围；"
                "计数和求和要在 float64 或整数里做）", BPB)


@given(n=st.integers(2, 40), seq_len=st.integers(1, 6), batch=st.integers(1, 5), seed=st.integers(0, 20))
def test_evaluate_matches_hand_computation(impl, n, seq_len, batch, seed):
    vocab = 7
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n,), generator=g)
    token_bytes = torch.randint(1, 5, (vocab,), generator=g)
    model = TableLM(vocab, seed)
    ds = impl.PretrainDataset(ids, seq_len)
    got = impl.evaluate(model, ds, batch_size=batch, token_bytes=token_bytes)
    nll, n_tok, n_bytes = _hand_eval(model.table, _samples(ds), token_bytes)
    _check_eval(got, nll, n_tok, n_bytes,
                f"流长 {n}、seq_len={seq_len}、batch_size={batch}（最后一批可能不满、最后一个样本可能有 padding）、"
                f"每个 token 的字节数 {token_bytes.tolist()}")


def test_evaluate_max_batches_limits_the_samples(impl):
    vocab = 7
    model = TableLM(vocab, 3)
    ds = impl.PretrainDataset(torch.randint(0, vocab, (41,), generator=torch.Generator().manual_seed(4)), 4)
    got = impl.evaluate(model, ds, batch_size=3, max_batches=2)
    nll, n_tok, n_bytes = _hand_eval(model.table, _samples(ds)[:6])
    _check_eval(got, nll, n_tok, n_bytes, "max_batches=2、batch_size=3：只评估前 6 个样本")


class _Wrapped(nn.Module):
    """同一张表，换一种输出形式，并记下每次 forward 收到的批大小。"""

    def __init__(self, base: nn.Module, style: str):
        super().__init__()
        self.base, self.style, self.batch_sizes, self.modes = base, style, [], []

    def forward(self, input_ids):
        self.batch_sizes.append(int(input_ids.shape[0]))
        self.modes.append(self.training)
        logits = self.base(input_ids)
        if self.style == "tuple":                 # kata 的 TinyLM：(logits, loss)
            return logits, None
        if self.style == "object":                # MiniMindForCausalLM：带 .logits 的输出对象
            return type("CausalLMOutput", (), {"logits": logits, "loss": None})()
        if self.style == "dict":                  # 认不出的输出：应清楚地报错，而不是在后面莫名其妙地崩
            return {"scores": logits}
        return logits


def test_evaluate_batches_and_model_output_forms(impl):
    vocab = 7
    base = TableLM(vocab, 2)
    ds = impl.PretrainDataset(torch.randint(0, vocab, (41,), generator=torch.Generator().manual_seed(8)), 4)  # 10 个样本
    nll, n_tok, n_bytes = _hand_eval(base.table, _samples(ds))
    for style, what in (("tensor", "logits 张量"), ("tuple", "(logits, loss) 元组（kata train 用的 TinyLM 就这样返回）"),
                        ("object", "带 .logits 的对象（MiniMindForCausalLM）")):
        model, got, err = _Wrapped(base, style), None, None
        try:
            got = impl.evaluate(model, ds, batch_size=3)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001
            err = f"{type(exc).__name__}: {exc}"
        require(err is None, f"模型返回{what}时 evaluate 出错：{err}\n"
                             "  logits 要用给定的 _logits_of(model(x)) 取出来，而不是直接把 model(x) 当 logits", EVAL)
        _check_eval(got, nll, n_tok, n_bytes, f"模型返回{what}、batch_size=3")
        require(model.batch_sizes and max(model.batch_sizes) <= 3 and sum(model.batch_sizes) == len(ds),
                f"batch_size=3、10 个样本：每次送进模型的批不应超过 3 个样本、一共 10 个，实际各批大小 {model.batch_sizes}"
                "（batch_size 没用上：整个验证集一次塞进模型，大数据集会把内存撑爆）", EVAL)
    err = None
    try:
        impl.evaluate(_Wrapped(base, "dict"), ds, batch_size=3)
    except NotImplementedError:
        raise
    except Exception as exc:  # noqa: BLE001
        err = exc
    require(isinstance(err, TypeError) and re.search(r"[\u4e00-\u9fff]", str(err)) and "logits" in str(err),
            "模型返回认不出的东西（这里是 dict）时应抛 TypeError、中文说明期望 logits 张量 / (logits, …) / .logits "
            f"（给定的 _logits_of 就这样做），实际 {type(err).__name__}: {err}", EVAL)


def test_evaluate_without_any_target_token_is_an_error(impl):
    model = TableLM(7, 1)
    all_ignored = [(torch.arange(4), torch.full((4,), -100)) for _ in range(3)]   # 每个 label 都是 −100
    for ds, what in ((all_ignored, "labels 全是 −100 的数据集"),
                     (impl.PretrainDataset(torch.arange(9) % 7, 4), "max_batches=0（一个样本也不评估）")):
        err, got = None, None
        try:
            got = impl.evaluate(model, ds, batch_size=2, max_batches=0 if "max_batches" in what else None)
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001
            err = exc
        require(isinstance(err, ValueError) and re.search(r"[\u4e00-\u9fff]", str(err)),
                f"{what}：没有任何要预测的 token，平均 loss 没有定义——应抛 ValueError（中文说明），"
                f"实际 {f'返回了 {got!r}（一个看起来正常的数，是静悄悄的错误答案）' if err is None else f'{type(err).__name__}: {err}'}",
                EVAL)


def test_evaluate_uses_eval_mode_and_restores_it(impl):
    vocab = 7
    model = TableLM(vocab, 5, dropout=0.5)
    model.train()
    ds = impl.PretrainDataset(torch.randint(0, vocab, (30,), generator=torch.Generator().manual_seed(6)), 4)
    torch.manual_seed(0)
    got = impl.evaluate(model, ds, batch_size=4)
    nll, n_tok, n_bytes = _hand_eval(model.table, _samples(ds))
    _check_eval(got, nll, n_tok, n_bytes, "模型有 dropout=0.5、调用前处于 train 模式：评估时必须 model.eval()（关掉 dropout）")
    require(model.training, "evaluate 结束后应把模型恢复成调用前的模式（这里是 train 模式），否则后面的训练没有 dropout",
            EVAL)
    p = next(model.parameters())
    require(p.grad is None, "evaluate 不应留下梯度（用 torch.no_grad()）", EVAL)


# ---------------------------------------------------------------------------------------------
# setup_distributed / cleanup_distributed / all_reduce_mean（单进程，假的进程组）
# ---------------------------------------------------------------------------------------------

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class _FakeInit:
    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        backend = kwargs.get("backend", args[0] if args else None)
        self.calls.append({"backend": str(backend) if backend is not None else None, **{
            k: v for k, v in kwargs.items() if k != "backend"}})


def _fake_torchrun(monkeypatch, rank, world, local_rank, cuda: bool):
    for k, v in {"RANK": rank, "WORLD_SIZE": world, "LOCAL_RANK": local_rank, "LOCAL_WORLD_SIZE": 2,
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": 29511}.items():
        monkeypatch.setenv(k, str(v))
    fake = _FakeInit()
    devices = []
    monkeypatch.setattr(dist, "init_process_group", fake)
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(fake.calls))
    monkeypatch.setattr(dist, "get_rank", lambda *a, **k: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: world)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2 if cuda else 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: devices.append(str(d)))
    return fake, devices


def test_setup_single_process_without_torchrun(impl, monkeypatch):
    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    fake = _FakeInit()
    monkeypatch.setattr(dist, "init_process_group", fake)
    got = impl.setup_distributed()
    expected_dev = "cuda" if torch.cuda.is_available() else "cpu"
    require(isinstance(got, tuple) and len(got) == 3, f"setup_distributed 应返回 (rank, world_size, device)，实际 {got!r}",
            ENV)
    require(got[0] == 0 and got[1] == 1 and str(got[2]) == expected_dev,
            f"没有 torchrun 的环境变量（没有 RANK）时应是单进程：期望 (0, 1, {expected_dev!r})，实际 {got!r}", ENV)
    require(not fake.calls, "单进程时不应调用 init_process_group（没有别的进程可以连）", ENV)


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu-gloo", "cuda-nccl"])
def test_setup_reads_torchrun_environment(impl, monkeypatch, cuda):
    # 第 2 台机器上的第 2 个进程：全局 rank 3、本机 local_rank 1（只有一台机器时两者才相等）
    fake, devices = _fake_torchrun(monkeypatch, rank=3, world=4, local_rank=1, cuda=cuda)
    got = impl.setup_distributed()
    require(len(fake.calls) == 1, f"torchrun 启动时应调用一次 dist.init_process_group，实际 {len(fake.calls)} 次", ENV)
    want_backend = "nccl" if cuda else "gloo"
    require(fake.calls[0]["backend"] == want_backend,
            f"{'有' if cuda else '没有'} CUDA 时 backend 应是 {want_backend!r}（gloo 跑在 CPU 上，nccl 只能跑 GPU），"
            f"实际 {fake.calls[0]['backend']!r}", ENV)
    want_dev = "cuda:1" if cuda else "cpu"
    require(tuple(got[:2]) == (3, 4) and str(got[2]) == want_dev,
            f"RANK=3、WORLD_SIZE=4、LOCAL_RANK=1：期望返回 (3, 4, {want_dev!r})，实际 {got!r}。"
            "rank 是全局编号（RANK），设备按本机编号（LOCAL_RANK）选——多机时两者不同", ENV)
    if cuda:
        require(devices and devices[-1] in ("1", "cuda:1"),
                f"有 CUDA 时应 torch.cuda.set_device(local_rank=1)，实际调用 {devices}", ENV)


def test_setup_rank_without_the_rest_of_torchrun_env_is_an_error(impl, monkeypatch):
    for k in TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RANK", "0")           # 只设了 RANK：不是 torchrun 启动的，其余变量都缺
    fake = _FakeInit()
    monkeypatch.setattr(dist, "init_process_group", fake)
    try:
        impl.setup_distributed()
    except NotImplementedError:
        raise
    except RuntimeError as exc:
        require("torchrun" in str(exc), f"错误信息应提示用 torchrun 启动，实际：{exc}", ENV)
        return
    except Exception as exc:  # noqa: BLE001
        require(False, f"设置了 RANK 却缺 WORLD_SIZE 等变量时应抛 RuntimeError（说“请用 torchrun 启动”），"
                       f"实际抛了 {type(exc).__name__}: {exc}", ENV)
    require(False, "设置了 RANK 却缺 WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT 时应抛 RuntimeError，"
                   f"实际没有报错（init_process_group 被调用了 {len(fake.calls)} 次）", ENV)


def test_cleanup_without_process_group_is_a_no_op(impl):
    require(not dist.is_initialized(), "（测试前提）进程组不应已初始化", ENV)
    impl.cleanup_distributed()          # 不应抛异常


def test_all_reduce_mean_single_process_returns_the_value(impl):
    for v in (2.5, torch.tensor(1.25), torch.tensor([3.0]), 0.1, 2 ** 24 + 1):
        got = impl.all_reduce_mean(v)
        want = float(v) if isinstance(v, (int, float)) else float(v.reshape(()))
        require(isinstance(got, float) and abs(got - want) < 1e-12,
                f"单进程时 all_reduce_mean({v!r}) 应原样返回一个 Python float，实际 {got!r}"
                + ("。在 float32 里算会丢精度（只有 24 位有效二进制位：0.1 变成 0.10000000149…，2^24 + 1 变成 2^24）——"
                   "用 torch.float64" if isinstance(got, float) and got != want else ""),
                RANK0)


# ---------------------------------------------------------------------------------------------
# pretrain：单进程
# ---------------------------------------------------------------------------------------------

def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _reference_sgd(batches, lr=W.LR):
    """手写的单进程参考：逐位置交叉熵（−100 不计）→ SGD。返回 (模型, 每步更新前的 loss)。"""
    model = W.TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for x, y in batches:
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model, losses


def _pretrain_saving(impl, model, ds, opt, ckpt, **kw):
    """pretrain(…, ckpt_path=ckpt)；建目录出错时说清是哪种情况，而不是甩出一个 traceback。"""
    try:
        return impl.pretrain(model, ds, opt, ckpt_path=ckpt, **kw)
    except (FileNotFoundError, FileExistsError) as exc:
        err = f"{type(exc).__name__}: {exc}"
    require(False, f"写 checkpoint {ckpt} 时出错：{err}\n  ckpt_path 的目录可能还不存在（要 mkdir(parents=True)），"
                   "也可能已经存在（exist_ok=True）——给定的 _atomic_save 两种情况都处理了", RANK0)


def test_pretrain_single_process_equals_a_hand_written_sgd_loop(impl, tmp_path):
    ds = impl.PretrainDataset(W.tokens(), W.SEQ)
    model = W.TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=W.LR)
    ckpt = tmp_path / "runs" / "out" / "ckpt.pth"          # 两层目录都还不存在：要建出来
    losses = _pretrain_saving(impl, model, ds, opt, ckpt, steps=4, batch_size=3, seed=5)
    batches = [impl.rank_batch(ds, s, 3, 0, 1, 5) for s in range(4)]
    ref, ref_losses = _reference_sgd(batches)
    require(len(losses) == 4, f"steps=4 应返回 4 个 loss（每次更新一个），实际 {len(losses)} 个", LOOP)
    assert_close(torch.tensor(losses, dtype=torch.float64), torch.tensor(ref_losses, dtype=torch.float64),
                 what="每一步记下的 loss（更新之前、这一批的平均交叉熵；批次 = rank_batch(ds, step, 3, 0, 1, seed=5)）",
                 section=LOOP, check_dtype=False, **TOL)
    assert_close(_flat(model), _flat(ref), what="4 步 SGD 之后的参数（与手写的 zero_grad → backward → step 循环对比）",
                 section=LOOP, **TOL)
    require(ckpt.is_file(), f"给了 ckpt_path，单进程（rank 0）训练结束后应写出 {ckpt}", RANK0)
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    require(isinstance(sd, dict) and set(sd) == set(model.state_dict()),
            f"checkpoint 应是普通的 model.state_dict()（键 {sorted(model.state_dict())}），实际键 "
            f"{sorted(sd) if isinstance(sd, dict) else type(sd).__name__}（DDP 包装后的键会多一个 “module.” 前缀）", RANK0)
    for k, v in model.state_dict().items():
        require(torch.equal(sd[k], v), f"checkpoint 里的 {k} 应等于训练结束时的参数", RANK0)
    dirs = sorted(p.name for p in ckpt.parent.iterdir())
    require(dirs == ["ckpt.pth"], f"原子写入：目录里最后只应有 ckpt.pth（临时文件要 os.replace 过去），实际 {dirs}", RANK0)


def test_pretrain_trains_in_train_mode_whatever_the_output_form(impl):
    ds = impl.PretrainDataset(W.tokens(), W.SEQ)
    for style, what, seed in (("tuple", "(logits, loss) 元组", 5),
                              ("object", "带 .logits 的对象（MiniMindForCausalLM）、不传 seed（默认 0）", None)):
        ref, _ = _reference_sgd([impl.rank_batch(ds, s, 3, 0, 1, seed or 0) for s in range(2)])
        model, err = _Wrapped(W.TinyLM(), style), None
        model.eval()                          # 比如刚评估完、或刚从 checkpoint 载入
        try:
            impl.pretrain(model, ds, torch.optim.SGD(model.parameters(), lr=W.LR), steps=2, batch_size=3,
                          **({} if seed is None else {"seed": seed}))
        except NotImplementedError:
            raise
        except Exception as exc:  # noqa: BLE001
            err = f"{type(exc).__name__}: {exc}"
        require(err is None, f"模型返回{what}时 pretrain 出错：{err}\n"
                             "  logits 要用给定的 _logits_of(net(x)) 取出来", LOOP)
        require(model.modes and all(model.modes),
                f"调用 pretrain 之前模型处于 eval 模式：训练时每次 forward 都应处在 train 模式（先 net.train()，"
                f"否则 dropout 一直关着），实际各步的 model.training = {model.modes}", LOOP)
        assert_close(_flat(model.base), _flat(ref), what=f"模型返回{what}时，2 步 SGD 之后的参数", section=LOOP, **TOL)


def test_pretrain_interrupted_save_keeps_the_previous_checkpoint(impl, tmp_path, monkeypatch):
    ds = impl.PretrainDataset(W.tokens(), W.SEQ)
    model = W.TinyLM()
    ckpt = tmp_path / "ckpt.pth"                           # 目录已经存在：再建一次不应报错
    _pretrain_saving(impl, model, ds, torch.optim.SGD(model.parameters(), lr=W.LR), ckpt, steps=1, batch_size=2)
    require(ckpt.is_file(), f"ckpt_path 的目录已经存在时也应写出 {ckpt}", RANK0)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    real_save = torch.save
    during = []

    def crash_midway(obj, f, *args, **kwargs):             # 写了一半就断电 / Ctrl-C
        real_save({"half": torch.zeros(1)}, f, *args, **kwargs)
        during.extend(sorted(p.name for p in tmp_path.iterdir()))
        raise KeyboardInterrupt("模拟：写 checkpoint 写到一半被打断")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        impl.pretrain(model, ds, torch.optim.SGD(model.parameters(), lr=W.LR), steps=1, batch_size=2, ckpt_path=ckpt)
    monkeypatch.setattr(torch, "save", real_save)
    left = sorted(p.name for p in tmp_path.iterdir())
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    require(set(sd) == set(first) and all(torch.equal(sd[k], first[k]) for k in first),
            "写新 checkpoint 时被打断，原来的 ckpt.pth 应完好无损（原子写入：先写临时文件，写完再 os.replace 过去；"
            f"直接 torch.save 到 ckpt_path 会留下半个文件），实际读出来的键 {sorted(sd)}", RANK0)
    require(left == ["ckpt.pth"], f"写入失败后目录里应只剩原来的 ckpt.pth（临时文件要删掉），实际 {left}", RANK0)
    require(len(during) == 2 and "ckpt.pth" in during,
            "写 checkpoint 的临时文件应建在 ckpt_path 同一个目录里（tempfile.mkstemp(dir=ckpt_path 的目录)）："
            "os.replace 只有在同一个文件系统里才是原子的，临时文件放在 /tmp 时，换到另一块盘上就会失败或不再原子。"
            f"写入时目录里是 {during}", RANK0)


# ---------------------------------------------------------------------------------------------
# 两个真的进程（gloo、127.0.0.1）
# ---------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(impl_name: str, out: Path, timeout: float = 300.0) -> list[dict]:
    """像 torchrun 那样启动 2 个进程（各自的 RANK / LOCAL_RANK，共同的 MASTER_ADDR / MASTER_PORT）。

    timeout 只是防止“一个进程永远在等另一个”的卡死（不是对速度的要求）：两份结果都写出来就不再等进程退出。
    """
    port = _free_port()
    procs, logs = [], []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
        env.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO_ROOT))
        log = open(out / f"log_{rank}.txt", "wb")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, str(Path(W.__file__)), "--impl", impl_name, "--out", str(out)],
                                      env=env, cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    files = [out / f"result_{rank}.pt" for rank in range(2)]
    try:
        while time.monotonic() < deadline:
            if all(f.is_file() for f in files) or all(p.poll() is not None for p in procs):
                break
            time.sleep(0.1)
        else:
            got = [f.name for f in files if f.is_file()]
            pytest.fail(f"两个进程 {timeout:.0f} 秒内没有都写出结果（已停掉）：通常是一个进程在等另一个——"
                        "比如只有一个进程调用了某个集合通信（all_reduce / DDP 的反向），或只有一个进程初始化了进程组。"
                        f"已写出的结果 {got}", pytrace=False)
    finally:
        for p in procs:
            try:
                p.wait(timeout=max(1.0, min(20.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    results = []
    for rank, f in enumerate(files):
        if not f.is_file():
            text = (out / f"log_{rank}.txt").read_text(errors="replace")
            pytest.fail(f"rank {rank} 没有写出结果，进程输出：\n{text[-2000:]}", pytrace=False)
        results.append(torch.load(f, weights_only=True))
    return results


# 只有这些常见错误要两个真的进程才看得出来；bug bank 自检时其余的错误实现已被前面的单进程测试抓住，
# 不必为它们各启动一次两个进程（每次要几秒）
_NEEDS_TWO_PROCESSES = {"eval_not_reduced", "metrics_from_rank0_only",
                        "loss_averaged_twice", "no_ddp_wrap", "all_ranks_save"}


def test_two_processes_equal_one_process_on_the_global_batch(impl, tmp_path):
    if impl._impl.startswith("bug:") and impl._impl[4:] not in _NEEDS_TWO_PROCESSES:
        pytest.skip("这个错误实现只改了单进程就能检查的部分，前面的测试已经抓住它")
    # 先在本进程里把单进程参考算好（桩会在这里就抛“还没实现”）
    ds = impl.PretrainDataset(W.tokens(), W.SEQ)
    global_batches = [impl.rank_batch(ds, s, W.BATCH * 2, 0, 1, 3) for s in range(W.STEPS)]
    ref, ref_losses = _reference_sgd(global_batches)
    val = impl.PretrainDataset(W.val_tokens(), W.SEQ)

    results = _launch(impl._impl, tmp_path)
    for r in results:
        if "not_implemented" in r:
            raise NotImplementedError(r["not_implemented"])
    for r in results:
        require("error" not in r, f"rank {r['rank']} 出错：{r.get('error')}\n{r.get('traceback', '')}", ENV)
    for r in results:
        require(tuple(r["setup"][:2]) == (r["rank"], 2) and r["setup"][2] == "cpu",
                f"rank {r['rank']}：setup_distributed 应返回 ({r['rank']}, 2, 'cpu')，实际 {tuple(r['setup'])}", ENV)
        require(r["initialized"] and r["backend"] == "gloo",
                f"rank {r['rank']}：setup_distributed 之后进程组应已初始化、backend 为 gloo（CPU），"
                f"实际 initialized={r['initialized']}、backend={r['backend']!r}", ENV)
    p0, p1 = (torch.cat([v.flatten() for v in r["params"].values()]) for r in results)
    require(torch.allclose(p0, p1, **TOL),
            f"{W.STEPS} 步之后两个进程的参数不一样了（最大差 {float((p0 - p1).abs().max()):.3g}）：梯度没有在进程间同步——"
            "模型要用 DistributedDataParallel 包起来，反向时它才会 all-reduce 梯度", DDP)
    init = _flat(W.TinyLM())
    moved, want = p0 - init, _flat(ref) - init
    ratio = float(moved @ want / (want @ want))
    why = ""
    if 0.35 < ratio < 0.65:
        why = (f"你的参数只走了参考更新量的 {ratio:.2f} 倍（≈ 1/world_size）：loss 被你自己又除了一次 world_size，"
               "而 DDP 已经对梯度求了平均")
    elif not torch.allclose(p0, _flat(ref), **TOL):
        why = "常见原因：两个进程拿到的是同一份数据（rank_batch 没有按 rank 偏移，或 pretrain 没有把 rank 传给它）"
    assert_close(p0, _flat(ref),
                 what=f"2 个进程（各 batch_size={W.BATCH}）训 {W.STEPS} 步后的参数 vs 1 个进程在拼起来的全局批次"
                      f"（batch_size={2 * W.BATCH}）上训 {W.STEPS} 步（SGD lr={W.LR}）" + (f"。{why}" if why else ""),
                 section=DDP, **TOL)
    for r in results:
        assert_close(torch.tensor(r["losses"], dtype=torch.float64), torch.tensor(ref_losses, dtype=torch.float64),
                     what=f"rank {r['rank']} 记下的每步 loss vs 全局批次的 loss（每个进程都应记下 all-reduce 之后的"
                          "全局平均；只用本进程那一半数据的 loss 会不一样）",
                     section=RANK0, check_dtype=False, **TOL)
        require(abs(r["mean_of_ranks"] - 1.5) < 1e-9,
                f"rank {r['rank']}：all_reduce_mean(rank + 1) 应是 (1 + 2) / 2 = 1.5，实际 {r['mean_of_ranks']}", RANK0)
    require(results[0]["ckpt_exists"], "rank 0 应写出 checkpoint（两个进程各给了自己的 ckpt_path 目录）", RANK0)
    require(not results[1]["ckpt_exists"],
            "rank 1 也写了 checkpoint：只有 rank 0 应该写文件（多个进程同时写同一个路径会互相覆盖、写坏）", RANK0)
    nll, n_tok, n_bytes = _hand_eval_model(ref, val)
    for r in results:
        _check_eval(r["eval"], nll, n_tok, n_bytes,
                    f"rank {r['rank']} 上 evaluate 整个验证集（7 个样本，两个进程各评估一部分后 all-reduce 求和；"
                    "只看本进程那一部分会不一样）")
        require(r["initialized_after_cleanup"] is False,
                f"rank {r['rank']}：cleanup_distributed 之后进程组应已销毁（dist.destroy_process_group）", ENV)


def _hand_eval_model(model, ds):
    nll = n_tok = 0.0
    with torch.no_grad():
        for i in range(len(ds)):
            x, y = ds[i]
            logits = model(x[None]).double()[0]
            keep = y != -100
            nll += float(F.cross_entropy(logits[keep], y[keep], reduction="sum"))
            n_tok += float(keep.sum())
    return nll, n_tok, n_tok
