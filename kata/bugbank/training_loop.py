"""模块 08 的 bug bank：训练循环里真实会写出来的错误（交叉熵、AdamW、调度、裁剪、累积、续训）。"""
from __future__ import annotations

import math
import random

import torch

from kata.bugbank import Bug
from kata.impl import load_side_file

_loss = load_side_file("solutions", "08_training_loop", "loss.py")
_optim = load_side_file("solutions", "08_training_loop", "optim.py")
_sched = load_side_file("solutions", "08_training_loop", "schedule.py")
_clip = load_side_file("solutions", "08_training_loop", "clip.py")
_step = load_side_file("solutions", "08_training_loop", "step.py")


# ---------------------------------------------------------------- 交叉熵

def ce_naive_softmax(logits, targets, ignore_index=-100):
    """log(exp(x) / Σexp(x))：不减最大值，exp(1e4) 溢出成 inf。"""
    v = logits.size(-1)
    x = logits.reshape(-1, v).to(torch.promote_types(logits.dtype, torch.float32))
    t = targets.reshape(-1).long()
    keep = t != ignore_index
    probs = torch.exp(x) / torch.exp(x).sum(-1, keepdim=True)
    logp = torch.log(probs.gather(-1, torch.where(keep, t, 0).unsqueeze(-1)).squeeze(-1))
    return -(logp * keep).sum() / keep.sum().clamp(min=1)


def ce_mean_over_all(logits, targets, ignore_index=-100):
    """被忽略的位置 loss 记 0，但分母用了全部位置的个数（padding 把 loss 稀释了）。"""
    v = logits.size(-1)
    x = logits.reshape(-1, v).to(torch.promote_types(logits.dtype, torch.float32))
    t = targets.reshape(-1).long()
    keep = t != ignore_index
    nll = torch.logsumexp(x, -1) - x.gather(-1, torch.where(keep, t, 0).unsqueeze(-1)).squeeze(-1)
    return (nll * keep).sum() / t.numel()


def ce_ignore_index_hardcoded(logits, targets, ignore_index=-100):
    """ignore_index 参数没用上：永远忽略 −100。"""
    return _loss.cross_entropy(logits, targets, -100)


# ---------------------------------------------------------------- AdamW

class _AdamWBase(_optim.AdamW):
    """按参考实现的顺序逐步计算；子类只改其中一处。"""

    def _hparams(self, group):
        return group["lr"], group["weight_decay"], group["eps"], group["betas"]

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd, eps, (b1, b2) = self._hparams(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"].item()
                g = self._grad(p, p.grad, wd)
                self._decay(p, lr, wd)
                st["exp_avg"].lerp_(g, 1 - b1)
                st["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
                p.add_(self._update(st["exp_avg"], st["exp_avg_sq"], t, lr, eps, b1, b2))
        return None

    def _grad(self, p, g, wd):
        return g

    def _decay(self, p, lr, wd):
        p.mul_(1 - lr * wd)

    def _update(self, m, v, t, lr, eps, b1, b2):
        return -lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)


class AdamL2(_AdamWBase):
    def _grad(self, p, g, wd):
        return g + wd * p

    def _decay(self, p, lr, wd):
        pass


class DecayWithoutLr(_AdamWBase):
    def _decay(self, p, lr, wd):
        p.mul_(1 - wd)


class DecayIgnoresGroup(_AdamWBase):
    def _hparams(self, group):
        return group["lr"], self.defaults["weight_decay"], group["eps"], group["betas"]


class LrCachedAtInit(_AdamWBase):
    def _hparams(self, group):
        return self.defaults["lr"], group["weight_decay"], group["eps"], group["betas"]


class NoBiasCorrection(_AdamWBase):
    def _update(self, m, v, t, lr, eps, b1, b2):
        return -lr * m / (v.sqrt() + eps)


class BiasCorrectionFromZero(_AdamWBase):
    def _update(self, m, v, t, lr, eps, b1, b2):
        t = t - 1   # 先用旧的步数（第一步是 0）算修正，再加一
        return -lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)


class EpsInsideSqrt(_AdamWBase):
    def _update(self, m, v, t, lr, eps, b1, b2):
        return -lr * (m / (1 - b1 ** t)) / (v / (1 - b2 ** t) + eps).sqrt()


class BetasSwapped(_AdamWBase):
    def _hparams(self, group):
        b1, b2 = group["betas"]
        return group["lr"], group["weight_decay"], group["eps"], (b2, b1)


class StateOutsideOptimizer(_AdamWBase):
    """m、v、步数存在自己的 dict 里（self.state 是空的）：state_dict() 存不下来，续训从零开始。"""

    @torch.no_grad()
    def step(self, closure=None):
        mine = self.__dict__.setdefault("_mine", {})
        for group in self.param_groups:
            lr, wd, eps, (b1, b2) = self._hparams(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = mine.setdefault(p, {"t": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                st["t"] += 1
                p.mul_(1 - lr * wd)
                st["m"].lerp_(p.grad, 1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.add_(self._update(st["m"], st["v"], st["t"], lr, eps, b1, b2))
        return None


# ---------------------------------------------------------------- 调度

def warmup_off_by_one(step, total_steps, max_lr, warmup_steps=0, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * step / warmup_steps   # 第一次更新 lr = 0
    return _sched.cosine_lr(step, total_steps, max_lr, warmup_steps, min_lr)


def cosine_to_zero(step, total_steps, max_lr, warmup_steps=0, min_lr=0.0):
    return _sched.cosine_lr(step, total_steps, max_lr, warmup_steps, 0.0)


def cosine_not_clamped(step, total_steps, max_lr, warmup_steps=0, min_lr=0.0):
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    p = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return min_lr + 0.5 * (1 + math.cos(math.pi * p)) * (max_lr - min_lr)


def minimind_lr_half(step, total_steps, lr):
    """把 minimind 的公式记成了 0.1 + 0.5·(1 + cos)：起点是 1.1·lr。"""
    return lr * (0.1 + 0.5 * (1 + math.cos(math.pi * step / total_steps)))


# ---------------------------------------------------------------- 裁剪

def _grads_of(parameters):
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    return [p.grad for p in parameters if p.grad is not None]


def clip_per_parameter(parameters, max_norm):
    grads = _grads_of(parameters)
    norms = [g.norm() for g in grads]
    for g, n in zip(grads, norms):
        g.mul_(torch.clamp(max_norm / (n + 1e-6), max=1.0))
    return torch.stack(norms).norm() if norms else torch.tensor(0.0)


def clip_always_rescales(parameters, max_norm):
    grads = _grads_of(parameters)
    total = torch.stack([g.norm() for g in grads]).norm()
    for g in grads:
        g.mul_(max_norm / (total + 1e-6))   # 没有 min(1, …)：小梯度被放大到 max_norm
    return total


def clip_returns_clipped_norm(parameters, max_norm):
    grads = _grads_of(parameters)
    _clip.clip_grad_norm(grads and [_Holder(g) for g in grads], max_norm)
    return torch.stack([g.norm() for g in grads]).norm()


class _Holder:
    def __init__(self, g):
        self.grad = g


def clip_hides_nonfinite(parameters, max_norm):
    """把 inf / nan 的梯度当 0 算范数：返回一个好看的有限值，问题被藏起来了。"""
    grads = _grads_of(parameters)
    total = torch.stack([torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0).norm() for g in grads]).norm()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(coef)
    return total


# ---------------------------------------------------------------- 训练一步

def _make_train_step(*, divide=True, respect_micro=True, clip_before_step=True):
    def train_step(model, batch, optimizer, *, accum_steps=1, micro_step=0, max_grad_norm=None, lr=None):
        if not (isinstance(accum_steps, int) and accum_steps >= 1 and 0 <= micro_step < accum_steps):
            raise ValueError("micro_step 应在 [0, accum_steps) 之内")
        input_ids, labels = batch
        loss = _loss.cross_entropy(_step._logits_of(model(input_ids)), labels)
        (loss / accum_steps if divide else loss).backward()
        out = {"loss": float(loss.detach()), "stepped": False, "grad_norm": None, "lr": None}
        if respect_micro and micro_step != accum_steps - 1:
            return out
        if lr is not None:
            for g in optimizer.param_groups:
                g["lr"] = lr
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if max_grad_norm is not None and clip_before_step:
            out["grad_norm"] = float(_clip.clip_grad_norm(params, max_grad_norm))
        optimizer.step()
        if max_grad_norm is not None and not clip_before_step:
            out["grad_norm"] = float(_clip.clip_grad_norm(params, max_grad_norm))
        optimizer.zero_grad(set_to_none=True)
        out.update(stepped=True, lr=optimizer.param_groups[0]["lr"])
        return out
    return train_step


# ---------------------------------------------------------------- 续训

def save_without_optimizer(path, model, optimizer, step, **extra):
    _step.save_checkpoint(path, model, None, step, **extra)


def load_without_optimizer(path, model, optimizer=None):
    return _step.load_checkpoint(path, model, None)


def load_without_rng(path, model, optimizer=None):
    rng = (torch.get_rng_state(), __import__("numpy").random.get_state(), random.getstate())
    ck = _step.load_checkpoint(path, model, optimizer)
    torch.set_rng_state(rng[0])
    __import__("numpy").random.set_state(rng[1])
    random.setstate(rng[2])
    return ck


def save_fp16_weights(path, model, optimizer, step, **extra):
    """像 minimind 的 lm_checkpoint 一样把权重存成 fp16：读回来已经不是原来的权重了。"""
    class _Half:
        def state_dict(self):
            return {k: v.half() for k, v in model.state_dict().items()}
    _step.save_checkpoint(path, _Half(), optimizer, step, **extra)


def load_fp16_weights(path, model, optimizer=None):
    ck = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in ck["model"].items()})
    if optimizer is not None:
        optimizer.load_state_dict(ck["optimizer"])
    _step._set_rng_states(ck["rng"])
    return ck


def save_not_atomic(path, model, optimizer, step, **extra):
    """直接 torch.save 到目标路径：写到一半崩了，旧的 checkpoint 也没了。"""
    from pathlib import Path
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
                "step": int(step), "rng": _step._rng_states(), **extra}, path)


BUGS = [
    Bug("ce_naive_softmax", "交叉熵写成了 log(exp(x)/Σexp(x))：没有减去最大值，logits 大时 exp 溢出成 inf / nan",
        {"cross_entropy": ce_naive_softmax}),
    Bug("ce_mean_over_all", "交叉熵的分母用了全部位置的个数：被忽略（−100）的位置也进了平均，loss 被稀释",
        {"cross_entropy": ce_mean_over_all}),
    Bug("ce_ignore_index_hardcoded", "cross_entropy 的 ignore_index 参数没用上，永远只忽略 −100",
        {"cross_entropy": ce_ignore_index_hardcoded}),
    Bug("adam_l2", "“AdamW”把 wd·p 加进了梯度（这是 Adam + L2）：衰减被 √v̂ 除掉，不再是解耦的权重衰减",
        {"AdamW": AdamL2}),
    Bug("decay_without_lr", "权重衰减没乘 lr：p ← p·(1 − wd)，而不是 p·(1 − lr·wd)", {"AdamW": DecayWithoutLr}),
    Bug("decay_ignores_group", "权重衰减用了 defaults 里的 weight_decay，忽略了 param group 自己的值（weight_decay=0 的组也被衰减）",
        {"AdamW": DecayIgnoresGroup}),
    Bug("lr_cached_at_init", "AdamW 用的是 __init__ 时的 lr，没有每一步从 param_group 里读（调度器改了也不生效）",
        {"AdamW": LrCachedAtInit}),
    Bug("no_bias_correction", "Adam 没做偏差修正：前几步的更新量偏离 lr（m、v 从 0 起步）", {"AdamW": NoBiasCorrection}),
    Bug("bias_correction_from_zero", "偏差修正用的步数从 0 开始：第一步 1 − β^0 = 0，除以 0",
        {"AdamW": BiasCorrectionFromZero}),
    Bug("eps_inside_sqrt", "eps 放进了 sqrt 里：√(v̂ + eps) 而不是 √v̂ + eps（梯度小时更新量差很多）",
        {"AdamW": EpsInsideSqrt}),
    Bug("betas_swapped", "β1 与 β2 用反了：一阶矩用了 β2、二阶矩用了 β1", {"AdamW": BetasSwapped}),
    Bug("adam_state_outside_optimizer", "AdamW 的 m、v、步数存在自己的 dict 里而不是 self.state：state_dict() 存不下来，续训时从零开始",
        {"AdamW": StateOutsideOptimizer}),
    Bug("warmup_off_by_one", "warmup 差了一步：用 step/warmup_steps，第一次更新的学习率是 0", {"cosine_lr": warmup_off_by_one}),
    Bug("cosine_to_zero", "余弦衰减到 0，忘了下限 min_lr", {"cosine_lr": cosine_to_zero}),
    Bug("cosine_not_clamped", "过了 total_steps 没有停在 min_lr：余弦越过 π 又升回去了", {"cosine_lr": cosine_not_clamped}),
    Bug("minimind_lr_half", "minimind 的公式记错了：0.1 + 0.5·(1 + cos) 而不是 0.1 + 0.45·(1 + cos)",
        {"minimind_lr": minimind_lr_half}),
    Bug("clip_per_parameter", "逐个参数裁剪（每个参数各自缩到 max_norm），而不是按全局范数整体缩放",
        {"clip_grad_norm": clip_per_parameter}),
    Bug("clip_always_rescales", "裁剪系数没有取 min(1, …)：范数低于阈值时梯度被放大到 max_norm",
        {"clip_grad_norm": clip_always_rescales}),
    Bug("clip_returns_clipped_norm", "clip_grad_norm 返回的是裁剪之后的范数（总是 ≤ max_norm），日志里看不到真正的梯度大小",
        {"clip_grad_norm": clip_returns_clipped_norm}),
    Bug("clip_hides_nonfinite", "算范数时把 inf / nan 当成 0：返回一个有限值，梯度爆炸被藏起来了",
        {"clip_grad_norm": clip_hides_nonfinite}),
    Bug("loss_not_divided_by_accum", "梯度累积时 loss 没有除以 accum_steps：梯度是大 batch 的 k 倍",
        {"train_step": _make_train_step(divide=False)}),
    Bug("step_every_micro_step", "忽略了 micro_step：每个 micro-batch 都更新参数，梯度累积形同虚设",
        {"train_step": _make_train_step(respect_micro=False)}),
    Bug("clip_after_step", "在 optimizer.step() 之后才裁剪：这一步用的还是没裁剪的梯度",
        {"train_step": _make_train_step(clip_before_step=False)}),
    Bug("optimizer_state_not_saved", "checkpoint 里没有优化器状态：续训时 AdamW 的 m、v、步数从零开始",
        {"save_checkpoint": save_without_optimizer, "load_checkpoint": load_without_optimizer}),
    Bug("rng_not_restored", "续训时没有恢复随机数发生器的状态：dropout 和数据采样与没中断时不同",
        {"load_checkpoint": load_without_rng}),
    Bug("fp16_weights", "像 minimind 一样把权重存成 fp16：读回来的权重被舍入过，续训不再逐位相同",
        {"save_checkpoint": save_fp16_weights, "load_checkpoint": load_fp16_weights}),
    Bug("save_not_atomic", "直接 torch.save 到目标路径：写到一半出错，原来完好的 checkpoint 也被毁了",
        {"save_checkpoint": save_not_atomic}),
]
