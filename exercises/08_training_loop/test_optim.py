"""模块 08 · AdamW 的测试。

分层（每一层都能失败）：
1. 契约：是 torch.optim.Optimizer，param_groups 里有 lr / betas / eps / weight_decay；
2. 与参考实现对比；
3. 与独立参考 torch.optim.AdamW 逐步对比 ≥ 20 步（hypothesis 抽参数形状、梯度、lr、betas、eps、
   weight_decay 和两个 param group，其中一个 weight_decay=0、lr 不同），以及途中改 lr；
4. 性质：解耦的权重衰减（零梯度时参数恰好缩小 lr·wd·p；与 Adam + L2 不同）、第一步更新约为 lr
   （偏差修正）、eps 起作用；
5. state_dict 存下来、读进一个新的优化器后继续训练，与没中断过完全相同。
"""
from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, strategies as st

from kata.impl import resolve
from kata.testing import assert_close, require

MODULE = "08_training_loop"
ADAM = "teaching.md §3（AdamW）"
BIAS = "teaching.md §3.2（偏差修正）"
DECAY = "teaching.md §3.3（解耦的权重衰减）"
EPS = "teaching.md §3.4（eps 放在哪里）"
STATE = "teaching.md §7.1（保存什么：优化器状态）"

# 与 torch.optim.AdamW 逐步对比 25 步：参考实现逐位相同；换一种等价写法（先除 bias2 再开方……）
# 每步差 1 ulp 量级，25 步后参数（量级 1）上实测 2.4e-7（200 步 4.8e-7）。
TOL = dict(atol=2e-6, rtol=1e-5)
STEPS = 25

seeds = st.integers(0, 2**31 - 1)
shape_lists = st.lists(st.sampled_from([(3,), (2, 3), (4, 1), (1,), (2, 2, 2)]), min_size=2, max_size=4)
lrs = st.sampled_from([1e-3, 1e-2, 3e-2, 0.1])
beta1s = st.sampled_from([0.0, 0.5, 0.8, 0.9])
beta2s = st.sampled_from([0.9, 0.95, 0.99, 0.999])
epss = st.sampled_from([1e-8, 1e-6, 1e-3, 0.1])
wds = st.sampled_from([0.0, 0.01, 0.1, 0.5])
grad_scales = st.sampled_from([1e-4, 1e-2, 1.0, 10.0])

def _diag(impl):
    """失败时拿 bug bank 比对用的模块名；被测的本身就是 bug bank 条目时不比对（省下几十倍的重算）。"""
    return None if str(getattr(impl, "_impl", "")).startswith("bug:") else MODULE



def _params(shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in shapes]


def _groups(params, lr, wd, lr2):
    """两个 param group：第一个用默认超参数，第二个 weight_decay=0、lr=lr2（常见：norm / bias 不衰减）。"""
    k = max(1, len(params) // 2)
    return [{"params": params[:k]}, {"params": params[k:], "weight_decay": 0.0, "lr": lr2}], k


def _grads(shapes, steps, seed, scale):
    """每一步每个参数的梯度；第 3 步第 0 个参数没有梯度（None，应被跳过），第 5 步第 1 个参数梯度全 0。"""
    g = torch.Generator().manual_seed(seed + 1)
    out = []
    for t in range(steps):
        row = [torch.randn(*s, generator=g) * scale for s in shapes]
        if t == 3:
            row[0] = None
        if t == 5:
            row[1] = torch.zeros(shapes[1])
        out.append(row)
    return out


def _train(make_opt, init, grads, lr_change=None):
    params = [p.clone().requires_grad_(True) for p in init]
    opt = make_opt(params)
    for t, row in enumerate(grads):
        if lr_change is not None and t == lr_change[0]:
            for group in opt.param_groups:
                group["lr"] = group["lr"] * lr_change[1]
        for p, g in zip(params, row):
            p.grad = None if g is None else g.clone()
        opt.step()
    return torch.cat([p.detach().flatten() for p in params])


def _runner(init, grads, hp, lr2, lr_change=None):
    lr, betas, eps, wd = hp

    def run(ns):
        def make(params):
            groups, _ = _groups(params, lr, wd, lr2)
            return ns.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=wd)
        return _train(make, init, grads, lr_change)
    return run


def _torch_adamw(init, grads, hp, lr2, lr_change=None):
    lr, betas, eps, wd = hp

    def make(params):
        groups, _ = _groups(params, lr, wd, lr2)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    return _train(make, init, grads, lr_change)


def _hp_text(hp, lr2):
    lr, betas, eps, wd = hp
    return f"lr={lr:g}（第二组 {lr2:g}）, betas=({betas[0]:g}, {betas[1]:g}), eps={eps:g}, weight_decay={wd:g}"


# ---------------------------------------------------------------- 1. 契约

def test_is_a_torch_optimizer_with_param_groups(impl):
    p = torch.nn.Parameter(torch.ones(3))
    opt = impl.AdamW([p], lr=0.05, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.2)
    p.grad = torch.ones(3)
    opt.step()
    require(isinstance(opt, torch.optim.Optimizer),
            "AdamW 应该继承 torch.optim.Optimizer（param_groups、state_dict、zero_grad 都靠它）", ADAM)
    group = opt.param_groups[0]
    want = {"lr": 0.05, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.2}
    got = {k: (tuple(group[k]) if k == "betas" else group.get(k)) for k in want}
    require(got == want, f"param_groups[0] 里应有 {want}（调度器改的就是 group['lr']），实际 {got}", ADAM)
    require(len(opt.state[p]) > 0,
            "step() 之后 self.state[p] 还是空的：m、v 和步数要放在 self.state[p] 里，state_dict() 才存得下来", STATE)


# ---------------------------------------------------------------- 2. 与参考实现对比

@given(shape_lists, seeds, lrs, beta1s, beta2s, epss, wds, grad_scales)
def test_matches_reference_solution(impl, shapes, seed, lr, b1, b2, eps, wd, scale):
    init, grads = _params(shapes, seed), _grads(shapes, STEPS, seed, scale)
    hp, lr2 = (lr, (b1, b2), eps, wd), lr * 0.5
    run = _runner(init, grads, hp, lr2)
    assert_close(run(impl), run(resolve(MODULE, "solutions")), **TOL,
                 what=f"AdamW {STEPS} 步之后的参数，与参考实现对比（{_hp_text(hp, lr2)}，梯度量级 {scale:g}）",
                 section=ADAM, module=_diag(impl), run=run)


# ---------------------------------------------------------------- 3. 独立参考：torch.optim.AdamW

@given(shape_lists, seeds, lrs, beta1s, beta2s, epss, wds, grad_scales)
def test_matches_torch_adamw_step_for_step(impl, shapes, seed, lr, b1, b2, eps, wd, scale):
    init, grads = _params(shapes, seed), _grads(shapes, STEPS, seed, scale)
    hp, lr2 = (lr, (b1, b2), eps, wd), lr * 0.5
    run = _runner(init, grads, hp, lr2)
    assert_close(run(impl), _torch_adamw(init, grads, hp, lr2), **TOL,
                 what=f"AdamW {STEPS} 步之后的参数，与 torch.optim.AdamW 对比（{_hp_text(hp, lr2)}，梯度量级 {scale:g}；"
                      "两个 param group，第二组 weight_decay=0）",
                 section=ADAM, module=_diag(impl), run=run)


def test_lr_is_read_from_the_group_every_step(impl):
    # 调度器在两步之间改 group["lr"]：优化器必须每一步重新读它，而不是在 __init__ 里记住
    shapes = [(4,), (2, 3)]
    init, grads = _params(shapes, 1), _grads(shapes, 12, 1, 1.0)
    hp, lr2 = (0.01, (0.9, 0.999), 1e-8, 0.1), 0.02
    run = _runner(init, grads, hp, lr2, lr_change=(6, 10.0))
    assert_close(run(impl), _torch_adamw(init, grads, hp, lr2, lr_change=(6, 10.0)), **TOL,
                 what="第 6 步把每个 group 的 lr 乘 10 之后，与 torch.optim.AdamW 对比",
                 section=ADAM, module=_diag(impl), run=run)


@pytest.mark.parametrize("which", ["beta1", "beta2"])
def test_each_beta_takes_effect(impl, which):
    shapes = [(5,), (3,)]
    init, grads = _params(shapes, 2), _grads(shapes, 10, 2, 1.0)
    betas = (0.5, 0.999) if which == "beta1" else (0.9, 0.5)
    hp, lr2 = (0.05, betas, 1e-8, 0.0), 0.05
    run = _runner(init, grads, hp, lr2)
    assert_close(run(impl), _torch_adamw(init, grads, hp, lr2), **TOL,
                 what=f"betas={betas}（{which} 不是默认值）时与 torch.optim.AdamW 对比——{which} 有没有被用上、用对地方？",
                 section=ADAM, module=_diag(impl), run=run)


# ---------------------------------------------------------------- 4. 性质

@pytest.mark.parametrize("wd", [0.0, 0.1, 0.5], ids=lambda w: f"wd={w}")
def test_zero_gradient_still_decays(impl, wd):
    # 梯度为 0 时 m = v = 0，Adam 那一项是 0/(0+eps) = 0：只剩解耦的衰减 p ← p·(1 − lr·wd)，连续 5 步
    lr = 0.1
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = impl.AdamW([p], lr=lr, weight_decay=wd)
    for _ in range(5):
        p.grad = torch.zeros(3)
        opt.step()
    expected = torch.tensor([1.0, -2.0, 3.0]) * (1 - lr * wd) ** 5
    assert_close(p.detach(), expected, atol=1e-6, rtol=1e-6,
                 what=f"梯度全 0、lr={lr}、weight_decay={wd}，5 步之后参数应恰好是 p·(1 − lr·wd)^5"
                      "（AdamW 的衰减不经过梯度，梯度为 0 也照样缩小；wd=0 时一点都不变）",
                 section=DECAY, module=_diag(impl),
                 run=lambda ns: _zero_grad_run(ns, lr, wd))


def _zero_grad_run(ns, lr, wd):
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = ns.AdamW([p], lr=lr, weight_decay=wd)
    for _ in range(5):
        p.grad = torch.zeros(3)
        opt.step()
    return p.detach()


def test_not_the_same_as_adam_with_l2(impl):
    # Adam + L2（torch.optim.Adam 的 weight_decay）把 wd·p 加进梯度，再被 √v̂ 除掉：与 AdamW 不同
    shapes = [(6,), (4,)]
    init, grads = _params(shapes, 4), _grads(shapes, 20, 4, 0.01)
    lr, wd = 0.05, 0.5
    mine = _train(lambda ps: impl.AdamW(ps, lr=lr, weight_decay=wd), init, grads)
    l2 = _train(lambda ps: torch.optim.Adam(ps, lr=lr, weight_decay=wd, foreach=False), init, grads)
    adamw = _train(lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd, foreach=False), init, grads)
    gap = float((adamw - l2).abs().max())
    require(float((mine - l2).abs().max()) > gap / 10,
            f"你的 AdamW 与 Adam + L2（torch.optim.Adam(weight_decay={wd})）的结果一样（真正的 AdamW 与它差 {gap:.3g}）"
            "——权重衰减被加进了梯度，而不是直接作用在参数上", DECAY)
    assert_close(mine, adamw, **TOL, what=f"20 步、weight_decay={wd} 之后与 torch.optim.AdamW 对比",
                 section=DECAY, module=_diag(impl), run=lambda ns: _train(lambda ps: ns.AdamW(ps, lr=lr, weight_decay=wd),
                                                                     init, grads))


@pytest.mark.parametrize("g", [1e-3, 1.0, -50.0], ids=lambda g: f"g={g:g}")
def test_first_update_is_about_lr(impl, g):
    # 偏差修正之后，第一步 m̂ = g、v̂ = g²：更新量 = lr·g/(|g| + eps) ≈ lr·sign(g)，与梯度大小无关
    lr = 0.01
    p = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    opt = impl.AdamW([p], lr=lr, weight_decay=0.0)
    p.grad = torch.full((2,), g, dtype=torch.float64)
    opt.step()
    expected = torch.full((2,), -lr * g / (abs(g) + 1e-8), dtype=torch.float64)
    assert_close(p.detach(), expected, atol=1e-12, rtol=1e-9,
                 what=f"第一步（t=1）梯度恒为 {g:g} 时的更新量（应为 −lr·g/(|g|+eps) ≈ −lr·sign(g)："
                      "不做偏差修正会差 √(1−β2)/(1−β1) ≈ 0.32 倍；t 从 0 数会除以 0）",
                 section=BIAS)


def test_eps_is_added_outside_the_sqrt(impl):
    # 梯度极小（1e-6）时 eps 的位置决定一切：√v̂ + eps ≈ 1e-6 + 1e-8，而 √(v̂ + eps) ≈ 1e-4
    shapes = [(5,)]
    init, grads = _params(shapes, 8), [[torch.full((5,), 1e-6) * (t + 1)] for t in range(8)]
    hp = (0.01, (0.9, 0.999), 1e-8, 0.0)
    mine = _train(lambda ps: impl.AdamW(ps, lr=hp[0], eps=hp[2], weight_decay=0.0), init, grads)
    ref = _train(lambda ps: torch.optim.AdamW(ps, lr=hp[0], eps=hp[2], weight_decay=0.0, foreach=False), init, grads)
    assert_close(mine, ref, **TOL, what="梯度只有 1e-6 量级时（eps=1e-8）与 torch.optim.AdamW 对比",
                 section=EPS, module=_diag(impl),
                 run=lambda ns: _train(lambda ps: ns.AdamW(ps, lr=hp[0], eps=hp[2], weight_decay=0.0), init, grads))


@pytest.mark.parametrize("eps", [1e-3, 1.0], ids=lambda e: f"eps={e:g}")
def test_eps_argument_takes_effect(impl, eps):
    shapes = [(4,), (3,)]
    init, grads = _params(shapes, 9), _grads(shapes, 6, 9, 0.01)
    hp, lr2 = (0.01, (0.9, 0.999), eps, 0.0), 0.01
    run = _runner(init, grads, hp, lr2)
    assert_close(run(impl), _torch_adamw(init, grads, hp, lr2), **TOL,
                 what=f"eps={eps:g}（比梯度还大）时与 torch.optim.AdamW 对比——eps 有没有从 group 里读出来？",
                 section=EPS, module=_diag(impl), run=run)


# ---------------------------------------------------------------- 5. state_dict

@given(seeds, st.integers(1, 12), wds)
def test_state_dict_round_trip_continues_identically(impl, seed, first, wd):
    shapes = [(3, 2), (4,)]
    init, grads = _params(shapes, seed), _grads(shapes, first + 8, seed, 1.0)
    lr = 0.02

    def make(ns, params):
        groups, _ = _groups(params, lr, wd, lr * 2)
        return ns.AdamW(groups, lr=lr, betas=(0.8, 0.99), eps=1e-8, weight_decay=wd)

    def resumed(ns):
        params = [p.clone().requires_grad_(True) for p in init]
        opt = make(ns, params)
        for t, row in enumerate(grads):
            if t == first:  # 存盘（weights_only=True 读回）→ 新参数、新优化器 → 读进去，接着训
                buf = io.BytesIO()
                torch.save(opt.state_dict(), buf)
                buf.seek(0)
                sd = torch.load(buf, weights_only=True)
                params = [p.detach().clone().requires_grad_(True) for p in params]
                opt = make(ns, params)
                opt.load_state_dict(sd)
            for p, g in zip(params, row):
                p.grad = None if g is None else g.clone()
            opt.step()
        return torch.cat([p.detach().flatten() for p in params])

    straight = _train(lambda ps: make(impl, ps), init, grads)
    assert_close(resumed(impl), straight, atol=0.0, rtol=0.0,
                 what=f"第 {first} 步存下 state_dict、读进一个新的 AdamW 再训 8 步 vs 一口气训完（应逐位相同）"
                      "——m、v、步数都必须在 self.state[p] 里", section=STATE, module=_diag(impl), run=resumed)


def test_closure_and_invalid_hyperparameters(impl):
    # torch.optim 的约定：step(closure) 先调用 closure（重新算 loss 和梯度），并把 loss 返回
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = impl.AdamW([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss
    loss = opt.step(closure)
    require(isinstance(loss, torch.Tensor) and float(loss.detach()) == 5.0 and not torch.equal(p.detach(), torch.tensor([1.0, 2.0])),
            f"step(closure) 应调用 closure、用它算出的梯度更新参数，并返回它的 loss（5.0），实际返回 {loss!r}", ADAM)
    for kw in (dict(lr=-1.0), dict(betas=(1.0, 0.9)), dict(eps=-1e-8), dict(weight_decay=-0.1)):
        with pytest.raises(ValueError):
            impl.AdamW([p], **kw)
