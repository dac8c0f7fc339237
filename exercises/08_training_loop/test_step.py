"""模块 08 · train_step（梯度累积）与 save_checkpoint / load_checkpoint（精确续训）的测试。

train_step 用到你在本模块写的 cross_entropy 和 clip_grad_norm；这些测试用 torch 自带的优化器
（SGD / torch.optim.AdamW），只检查 train_step 自己的编排：
- 一步 = 手写的参考（F.cross_entropy → backward → SGD）；返回的 dict；
- 累积：k 个大小 b 的 micro-batch == 一个大小 k·b 的 batch（与独立的大 batch 参考对比）；
- 最后一个 micro-step 之前不更新、梯度在累加；max_grad_norm、lr、micro_step、accum_steps 都起作用；
续训：
- checkpoint 是普通的 dict（model / optimizer / step / rng / extra），weights_only=True 读得回；
- 原子写入：写到一半出错，旧文件完好；load 用 weights_only=True；
- 训 2N 步 == 训 N 步 + 存盘 + 读进全新的模型和优化器 + 再训 N 步，逐位相同（CPU），
  dropout（torch 随机数）、numpy、python 的随机数和数据位置都参与其中。
"""
from __future__ import annotations

import io
import math
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kata.impl import resolve
from kata.testing import assert_close, require

MODULE = "08_training_loop"
STEP = "teaching.md §6（训练一步）"
ACCUM = "teaching.md §6.1（梯度累积）"
RESUME = "teaching.md §7（断点续训）"
SAVE = "teaching.md §7.1（保存什么）"
ATOMIC = "teaching.md §7.2（原子写入与 weights_only）"

V, D = 13, 8
# 累积 k×b vs 一次 k·b：梯度的求和顺序不同，float32 实测差 ≤ 6e-8；同一条代码路径的续训必须逐位相同（容差 0）
ACCUM_TOL = dict(atol=1e-6, rtol=1e-5)
STEP_TOL = dict(atol=1e-6, rtol=1e-5)

def _diag(impl):
    """失败时拿 bug bank 比对用的模块名；被测的本身就是 bug bank 条目时不比对（省下几十倍的重算）。"""
    return None if str(getattr(impl, "_impl", "")).startswith("bug:") else MODULE



class TinyLM(nn.Module):
    """词嵌入 → dropout → tanh → 线性头。output 决定 forward 返回什么（三种常见的模型输出）。"""

    def __init__(self, dropout: float = 0.0, output: str = "tensor", seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed_tokens = nn.Embedding(V, D)
        self.drop = nn.Dropout(dropout)
        self.lm_head = nn.Linear(D, V)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.output = output

    def forward(self, input_ids):
        logits = self.lm_head(torch.tanh(self.drop(self.embed_tokens(input_ids))))
        if self.output == "tuple":
            return logits, None
        if self.output == "object":
            return SimpleNamespace(logits=logits, loss=None)
        return logits


def _batch(b, s, seed, ignore=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, s + 1), generator=g)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    if ignore:
        y[:, : s // 2] = -100
    return x, y


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _grads(model):
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


# ---------------------------------------------------------------- train_step：一步

@pytest.mark.parametrize("output", ["tensor", "tuple", "object"])
def test_one_step_matches_manual_reference(impl, output):
    x, y = _batch(4, 6, 1, ignore=True)
    model = TinyLM(output=output)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = impl.train_step(model, (x, y), opt)

    ref = TinyLM()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    loss = F.cross_entropy(ref(x).reshape(-1, V), y.reshape(-1), ignore_index=-100)
    loss.backward()
    ref_opt.step()
    require(isinstance(out, dict) and {"loss", "stepped", "grad_norm", "lr"} <= set(out),
            f"train_step 应返回含 loss / stepped / grad_norm / lr 的 dict，实际 {out!r}", STEP)
    require(math.isclose(float(out["loss"]), float(loss.detach()), rel_tol=1e-5),
            f"返回的 loss 应是这个 batch 的平均交叉熵（被 −100 忽略的位置不算）{float(loss.detach()):.6g}，实际 {out['loss']!r}", STEP)
    require(out["stepped"] is True and out["grad_norm"] is None and math.isclose(out["lr"], 0.1),
            f"accum_steps=1 时每次都更新：stepped=True、没裁剪 grad_norm=None、lr=0.1；实际 {out}", STEP)
    assert_close(_flat(model), _flat(ref), **STEP_TOL,
                 what=f"一步之后的参数（模型返回 {output}），与 F.cross_entropy → backward → SGD.step 手写的参考对比",
                 section=STEP)
    require(all(p.grad is None or not p.grad.any() for p in model.parameters()),
            "更新之后要清空梯度（optimizer.zero_grad(set_to_none=True)），否则下一步会把这一步的梯度再加一次", STEP)


# ---------------------------------------------------------------- train_step：梯度累积

def _accumulated(ns, k, b, make_opt, max_grad_norm=None):
    model = TinyLM()
    opt = make_opt(model.parameters())
    x, y = _batch(k * b, 5, 7)
    losses = []
    for i in range(k):
        out = ns.train_step(model, (x[i * b:(i + 1) * b], y[i * b:(i + 1) * b]), opt, accum_steps=k, micro_step=i,
                            max_grad_norm=max_grad_norm)
        losses.append(out["loss"])
    return _flat(model)


def _big_batch(k, b, make_opt, max_grad_norm=None):
    model = TinyLM()
    opt = make_opt(model.parameters())
    x, y = _batch(k * b, 5, 7)
    F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1)).backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    return _flat(model)


OPTS = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.5),
    "AdamW+clip": lambda ps: torch.optim.AdamW(ps, lr=0.01, foreach=False),
}


@pytest.mark.parametrize("k", [2, 3, 4], ids=lambda k: f"k={k}")
@pytest.mark.parametrize("opt_name", list(OPTS))
def test_accumulation_equals_one_big_batch(impl, k, opt_name):
    b = 3
    clip = 0.5 if opt_name == "AdamW+clip" else None
    make = OPTS[opt_name]
    run = lambda ns: _accumulated(ns, k, b, make, clip)  # noqa: E731
    assert_close(run(impl), _big_batch(k, b, make, clip), **ACCUM_TOL,
                 what=f"{k} 个大小 {b} 的 micro-batch 累积（accum_steps={k}）vs 一个大小 {k * b} 的 batch，"
                      f"用 {opt_name} 更新一次后的参数（每个 micro-batch 的 loss 要先除以 accum_steps）",
                 section=ACCUM, module=_diag(impl), run=run)


def test_no_update_until_the_last_micro_step(impl):
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = _flat(model)
    x, y = _batch(2, 5, 3)
    out = impl.train_step(model, (x, y), opt, accum_steps=3, micro_step=0)
    require(torch.equal(_flat(model), before) and out.get("stepped") is False and out.get("lr") is None,
            f"accum_steps=3、micro_step=0 时只做前向和反向，参数不能动、stepped=False、lr=None（实际 stepped="
            f"{out.get('stepped')!r}，参数最大变化 {float((_flat(model) - before).abs().max()):.3g}）", ACCUM)
    ref = TinyLM()
    (F.cross_entropy(ref(x).reshape(-1, V), y.reshape(-1)) / 3).backward()
    assert_close(_grads(model), _grads(ref), **STEP_TOL,
                 what="第一个 micro-step 之后留在 p.grad 里的梯度（应是 loss/accum_steps 的梯度，等着后面的 micro-step 累加）",
                 section=ACCUM)
    impl.train_step(model, (x, y), opt, accum_steps=3, micro_step=1)
    require(torch.equal(_flat(model), before), "micro_step=1（共 3 个）时参数仍然不能动", ACCUM)
    out = impl.train_step(model, (x, y), opt, accum_steps=3, micro_step=2)
    require(out.get("stepped") is True and not torch.equal(_flat(model), before),
            "micro_step=2 是最后一个（accum_steps=3）：这时才更新参数、stepped=True", ACCUM)


@pytest.mark.parametrize("kw", [dict(accum_steps=2, micro_step=2), dict(accum_steps=2, micro_step=-1),
                                dict(accum_steps=0, micro_step=0)], ids=str)
def test_invalid_accumulation_arguments_raise(impl, kw):
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        impl.train_step(model, _batch(2, 4, 0), opt, **kw)
    except ValueError:
        return
    require(False, f"train_step(…, {kw}) 应抛 ValueError：micro_step 必须在 [0, accum_steps) 里、accum_steps ≥ 1", ACCUM)


@pytest.mark.parametrize("max_grad_norm", [None, 0.05, 1e3], ids=lambda m: f"max_grad_norm={m}")
def test_max_grad_norm_clips_before_the_update(impl, max_grad_norm):
    x, y = _batch(4, 6, 5)
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    out = impl.train_step(model, (x, y), opt, max_grad_norm=max_grad_norm)
    ref = TinyLM()
    F.cross_entropy(ref(x).reshape(-1, V), y.reshape(-1)).backward()
    norm = float(torch.nn.utils.clip_grad_norm_(ref.parameters(), max_grad_norm or float("inf")))
    torch.optim.SGD(ref.parameters(), lr=1.0).step()
    assert_close(_flat(model), _flat(ref), **STEP_TOL,
                 what=f"max_grad_norm={max_grad_norm}（全局梯度范数 {norm:.3g}）时 SGD(lr=1) 更新后的参数"
                      "——先裁剪、再 optimizer.step()", section=STEP)
    if max_grad_norm is None:
        require(out.get("grad_norm") is None, f"没有裁剪时 grad_norm 应为 None，实际 {out.get('grad_norm')!r}", STEP)
    else:
        got = out.get("grad_norm")
        require(isinstance(got, (int, float)) and math.isclose(got, norm, rel_tol=1e-4),
                f"返回的 grad_norm 应是裁剪**前**的全局范数 {norm:.6g}（Python float），实际 {got!r}", STEP)


def test_lr_argument_sets_every_param_group(impl):
    model = TinyLM()
    groups = [{"params": [model.embed_tokens.weight]}, {"params": list(model.lm_head.parameters()), "lr": 7.0}]
    opt = torch.optim.SGD(groups, lr=5.0)
    x, y = _batch(3, 5, 9)
    out = impl.train_step(model, (x, y), opt, lr=0.02)
    ref = TinyLM()
    F.cross_entropy(ref(x).reshape(-1, V), y.reshape(-1)).backward()
    torch.optim.SGD(ref.parameters(), lr=0.02).step()
    assert_close(_flat(model), _flat(ref), **STEP_TOL,
                 what="传入 lr=0.02 时（两个 param group 原来的 lr 是 5 和 7）更新后的参数——lr 要写进**每个** group",
                 section=STEP)
    lrs = [g["lr"] for g in opt.param_groups]
    require(lrs == [0.02, 0.02] and out.get("lr") == 0.02,
            f"更新后每个 group 的 lr 都应是 0.02、返回的 lr 也是 0.02；实际 group {lrs}，返回 {out.get('lr')!r}", STEP)


# ---------------------------------------------------------------- checkpoint

def test_checkpoint_is_a_plain_dict_loadable_with_weights_only(impl, tmp_path):
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    impl.train_step(model, _batch(2, 4, 1), opt)
    path = tmp_path / "sub" / "ck.pth"   # 父目录还不存在
    impl.save_checkpoint(path, model, opt, 17, epoch=2, data_rng=torch.Generator().manual_seed(5).get_state())
    require(path.is_file(), f"save_checkpoint 之后 {path} 应该存在（父目录不存在时先创建）", SAVE)
    try:
        ck = torch.load(path, weights_only=True)
    except Exception as exc:
        require(False, f"torch.load(path, weights_only=True) 读不回你的 checkpoint：{type(exc).__name__}: "
                       f"{str(exc).splitlines()[0][:160]}——只能存张量、数字、字符串、list/tuple/dict"
                       "（numpy 数组要换成张量）", ATOMIC)
    require(isinstance(ck, dict) and {"model", "optimizer", "step", "rng", "epoch", "data_rng"} <= set(ck),
            f"checkpoint 应是含 model / optimizer / step / rng 和 extra（epoch、data_rng）的 dict，实际键 "
            f"{sorted(ck) if isinstance(ck, dict) else type(ck).__name__}", SAVE)
    require(ck["step"] == 17 and ck["epoch"] == 2, f"step 应为 17、epoch 应为 2，实际 {ck['step']!r}、{ck['epoch']!r}", SAVE)
    require(set(ck["model"]) == set(model.state_dict()) and all(
        torch.equal(ck["model"][k], v) and ck["model"][k].dtype == v.dtype for k, v in model.state_dict().items()),
            "ck['model'] 应就是 model.state_dict()（同样的键、原 dtype、数值一样——minimind 存成 fp16，续训就不精确了）",
            SAVE)
    require(isinstance(ck["rng"], dict) and {"torch", "numpy", "python"} <= set(ck["rng"]),
            f"ck['rng'] 应包含 torch / numpy / python 三个随机数发生器的状态，实际 "
            f"{sorted(ck['rng']) if isinstance(ck['rng'], dict) else type(ck['rng']).__name__}", SAVE)
    require(ck["optimizer"] is not None and len(ck["optimizer"].get("state", {})) > 0,
            "ck['optimizer'] 应是 optimizer.state_dict()，里面有 AdamW 的 m、v 和步数", SAVE)


def test_load_uses_weights_only(impl, tmp_path, monkeypatch):
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    impl.save_checkpoint(tmp_path / "ck.pth", model, opt, 3)
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)
    monkeypatch.setattr(torch, "load", spy)
    ck = impl.load_checkpoint(tmp_path / "ck.pth", TinyLM(seed=1), torch.optim.SGD(TinyLM().parameters(), lr=0.1))
    require(seen and all(w is True for w in seen),
            f"load_checkpoint 应该用 torch.load(…, weights_only=True)（不执行文件里的任意 pickle 代码），"
            f"实际 weights_only={seen}", ATOMIC)
    require(isinstance(ck, dict) and ck.get("step") == 3, f"load_checkpoint 应返回 checkpoint 的 dict（step=3），实际 {ck!r:.80}",
            SAVE)


def test_interrupted_save_leaves_the_old_file_intact(impl, tmp_path, monkeypatch):
    path = tmp_path / "ck.pth"
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    impl.save_checkpoint(path, model, opt, 1)
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):  # 写了一半就崩（磁盘满、Ctrl-C……）
        data = io.BytesIO()
        real_save(obj, data)
        half = data.getvalue()[: len(data.getvalue()) // 2]
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as fh:
                fh.write(half)
        else:
            f.write(half)
        raise OSError("模拟：写到一半磁盘满了")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        impl.save_checkpoint(path, model, opt, 2)
    monkeypatch.setattr(torch, "save", real_save)
    try:
        ck = torch.load(path, weights_only=True)
        step = ck.get("step")
    except Exception as exc:
        step = f"读不出来（{type(exc).__name__}）"
    require(step == 1, f"第二次保存写到一半失败后，{path.name} 应该还是第一次的完整文件（step=1），实际 {step}"
                       "——先写临时文件，写完再 os.replace 到目标路径", ATOMIC)


def test_missing_checkpoint_raises_file_not_found(impl, tmp_path):
    with pytest.raises(FileNotFoundError):
        impl.load_checkpoint(tmp_path / "nope.pth", TinyLM())


def test_load_model_only(impl, tmp_path):
    model = TinyLM(seed=3)
    impl.save_checkpoint(tmp_path / "ck.pth", model, torch.optim.SGD(model.parameters(), lr=0.1), 4)
    fresh = TinyLM(seed=4)
    impl.load_checkpoint(tmp_path / "ck.pth", fresh)
    require(torch.equal(_flat(fresh), _flat(model)),
            "load_checkpoint(path, model)（不给 optimizer，例如只想拿模型去生成）也应把权重恢复得一模一样", SAVE)


# ---------------------------------------------------------------- 精确续训

N, ACC, B, S = 3, 2, 3, 6


def _lr_at(step):
    return 0.05 * (1 - step / (2 * N + 1))   # 学习率随 step 变：续训要从正确的 step 接上


def _train(ns, model, opt, gen, start, end):
    """从 start 训到 end；数据用 gen（torch.Generator）、numpy 和 python 三个随机源，模型里有 dropout。"""
    losses = []
    for step in range(start, end):
        for micro in range(ACC):
            ids = torch.randint(0, V, (B, S + 2), generator=gen)
            offset = random.randrange(2)                  # python 的 random：随机裁剪的起点
            ids[:, 0] = int(np.random.randint(0, V))      # numpy：随机替换第一个 token
            x, y = ids[:, offset:offset + S], ids[:, offset + 1:offset + S + 1]
            out = ns.train_step(model, (x, y), opt, accum_steps=ACC, micro_step=micro, max_grad_norm=1.0,
                                lr=_lr_at(step))
            losses.append(out["loss"])
    return losses


def _seed_all(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _resume_runner(make_opt, path):
    def run(ns):
        _seed_all(0)
        model, gen = TinyLM(dropout=0.3), torch.Generator().manual_seed(11)
        opt = make_opt(ns, model)
        _train(ns, model, opt, gen, 0, N)
        ns.save_checkpoint(path, model, opt, N, data_rng=gen.get_state())
        _seed_all(999)                                    # 中断：进程重启，随机数状态全变了
        model, gen = TinyLM(dropout=0.3, seed=7), torch.Generator().manual_seed(12)
        opt = make_opt(ns, model)
        ck = ns.load_checkpoint(path, model, opt)
        gen.set_state(ck["data_rng"])
        _train(ns, model, opt, gen, ck["step"], 2 * N)
        return _flat(model)
    return run


def _straight(ns, make_opt):
    _seed_all(0)
    model, gen = TinyLM(dropout=0.3), torch.Generator().manual_seed(11)
    opt = make_opt(ns, model)
    _train(ns, model, opt, gen, 0, 2 * N)
    return _flat(model)


RESUME_OPTS = {
    "torch.optim.AdamW": lambda ns, m: torch.optim.AdamW(m.parameters(), lr=0.05, foreach=False),
    "你的 AdamW": lambda ns, m: ns.AdamW(m.parameters(), lr=0.05),
}


@pytest.mark.parametrize("opt_name", list(RESUME_OPTS), ids=["torch_AdamW", "your_AdamW"])
def test_resume_is_bit_exact(impl, tmp_path, opt_name):
    make = RESUME_OPTS[opt_name]
    run = _resume_runner(make, tmp_path / "ck.pth")
    resumed = run(impl)
    straight = _straight(impl, make)
    assert_close(resumed, straight, atol=0.0, rtol=0.0,
                 what=f"训 {N} 步 → save_checkpoint → 全新的模型和 {opt_name} → load_checkpoint → 再训 {N} 步，"
                      f"vs 一口气训 {2 * N} 步（每步 {ACC} 个 micro-batch，带 dropout；应逐位相同）"
                      "——模型、优化器状态、step、torch / numpy / python 随机数、数据位置，少一样就接不上",
                 section=RESUME, module=_diag(impl), run=run)


def test_checkpoint_bad_usage_is_reported(impl, tmp_path):
    model = TinyLM()
    impl.save_checkpoint(tmp_path / "no_opt.pth", model, None, 5)          # 只存模型（例如导出给推理用）
    with pytest.raises(ValueError):                                         # 想续训，文件里却没有优化器状态
        impl.load_checkpoint(tmp_path / "no_opt.pth", TinyLM(), torch.optim.SGD(TinyLM().parameters(), lr=0.1))
    with pytest.raises(ValueError):                                         # extra 不能覆盖保留的键
        impl.save_checkpoint(tmp_path / "x.pth", model, None, 5, rng="oops")
    with pytest.raises(TypeError):                                          # 模型的输出既不是张量也没有 .logits
        impl.train_step(lambda ids: {"logits": 1}, _batch(2, 4, 0), torch.optim.SGD(model.parameters(), lr=0.1))


def test_failed_save_leaves_no_stray_files(impl, tmp_path, monkeypatch):
    model = TinyLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    impl.save_checkpoint(tmp_path / "ck.pth", model, opt, 1)

    def crash(*args, **kwargs):
        raise OSError("模拟：磁盘满了")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        impl.save_checkpoint(tmp_path / "ck.pth", model, opt, 2)
    left = sorted(p.name for p in tmp_path.iterdir())
    require(left == ["ck.pth"], f"保存失败后目录里应该只剩原来的 ck.pth，实际 {left}——出错时把临时文件删掉再抛出异常", ATOMIC)
