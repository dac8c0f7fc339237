"""模块 05 两个实验共用的零件（不是实验脚本本身）。

做法：先用 kata.tinylm 搭一个普通的小语言模型（注意力、FFN、RMSNorm 来自你的实现，没写完的部件退回参考实现），
再把每个 block 拆开，用**你写的 PreNormResidual** 把注意力和 FFN 各包一层：

    有残差（res）：   x = x + F(N(x))          ← 你的 PreNormResidual
    无残差（plain）： x = F(N(x))              ← 同一个 N、同一个 F，只是不加回 x

两种模型的词嵌入、注意力、FFN、norm 和初始化完全相同（同一个种子搭出来的），唯一的差别就是那个 “x +”。
另有一个对照 plain_varinit：无残差，但把 block 里所有 Linear 重新初始化成方差保持的 N(0, 1/fan_in)，
用来排除“只是初始化太小”这个解释。
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from kata import impl as kata_impl
from kata.experiment import ComponentNotImplemented, not_implemented_sentence

ARMS = ("res", "plain", "plain_varinit")
ARM_NAMES = {
    "res": ("有残差 x + F(N(x))", "residual x + F(N(x))"),
    "plain": ("无残差 F(N(x))", "no residual F(N(x))"),
    "plain_varinit": ("无残差 + 方差保持初始化", "no residual, variance-preserving init"),
}
VANISHED_RMS = 1e-6   # 表示的均方根低于它就算“信号已经消失”（此时余弦相似度没有意义，记为 NaN）


class NoResidual(nn.Module):
    """对照组：和 PreNormResidual 一样的 norm 与子层，只是不加回 x。"""

    def __init__(self, dim: int, sublayer: nn.Module, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.Identity()  # 马上会换成 TinyLM 自己的那个 norm
        self.sublayer = sublayer

    def forward(self, x):
        return self.sublayer(self.norm(x))


class _AttentionSublayer(nn.Module):
    """把 tinylm 的注意力 attn(x, rope, bias) 变成只吃一个参数的子层 f(x)；位置信息由 block 在调用前放进来。"""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn
        self.rope = None
        self.bias = None

    def forward(self, h):
        return self.attn(h, self.rope, self.bias)


class WrappedBlock(nn.Module):
    """把 TinyBlock 的注意力与 FFN 各用 wrapper 包一层：x → wrap(attn)(x) → wrap(ffn)(·)。"""

    def __init__(self, block: nn.Module, wrapper_cls, dim: int, eps: float):
        super().__init__()
        adapter = _AttentionSublayer(block.self_attn)
        self.attn = wrapper_cls(dim, adapter, eps=eps)
        self.attn.norm = block.input_layernorm            # 用 TinyLM 搭好的 norm（你的 RMSNorm，或参考实现）
        self.ffn = wrapper_cls(dim, block.mlp, eps=eps)
        self.ffn.norm = block.post_attention_layernorm
        object.__setattr__(self, "_adapter", adapter)     # 不重复登记成子模块

    def forward(self, x, rope=None, bias=None):
        self._adapter.rope, self._adapter.bias = rope, bias
        return self.ffn(self.attn(x))


def load_residual(impl: str):
    """取 impl 的 PreNormResidual 并试跑一次（norm 换成参考 RMSNorm，所以不受模块 01 是否完成的影响）。

    返回 (类, 备注或 None)。还没实现 → ComponentNotImplemented（实验只打印一句中文）。
    数值和公式 x + F(N(x)) 对不上时不报错，只返回一条备注（实验会打印并写进 JSON）。
    """
    cls = kata_impl.component("PreNormResidual", impl)
    from solutions import RMSNorm as RefRMSNorm

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        lin = nn.Linear(8, 8)
        x = torch.randn(2, 3, 8)
        try:
            wrapper = cls(8, lin, eps=1e-5)
            wrapper.norm = RefRMSNorm(8, eps=1e-5)
            out = wrapper(x.clone())
        except NotImplementedError as exc:
            raise ComponentNotImplemented("PreNormResidual", impl, not_implemented_sentence("PreNormResidual", impl)) \
                from exc
        except Exception as exc:  # 在小输入上就出错：一句话，不要 traceback
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip(": ")
            raise ComponentNotImplemented(
                "PreNormResidual", impl, not_implemented_sentence("PreNormResidual", impl, detail)) from exc
        if not isinstance(out, torch.Tensor) or out.shape != x.shape or not torch.isfinite(out).all():
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ComponentNotImplemented("PreNormResidual", impl, not_implemented_sentence(
                "PreNormResidual", impl, f"输出应为形状 {tuple(x.shape)} 的有限张量，实际 {got}"))
        expected = x + lin(RefRMSNorm(8, eps=1e-5)(x))
        err = float((out - expected).abs().max())
    note = None
    if err > 1e-4:
        note = (f"注意：{kata_impl.describe(impl)}里的 PreNormResidual 和公式 x + F(N(x)) 对不上（最大误差 {err:.3g}），"
                "下面“有残差”那一组测的其实是你写出来的那个连接方式。先让 pytest exercises/05_residual_connection 通过，"
                "再重跑这个实验。")
    return cls, note


def variance_preserving_init(model: nn.Module, seed: int) -> None:
    """把每个 block 里的 Linear 权重重设为 N(0, 1/fan_in)：每一层大致保持输入的方差（LeCun 初始化）。"""
    g = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for block in model.blocks:
            for mod in block.modules():
                if isinstance(mod, nn.Linear):
                    mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) / math.sqrt(mod.in_features))


def build_model(cfg, impl: str, arm: str, seed: int, residual_cls, device="cpu"):
    """搭一个 TinyLM，再按 arm 换上有 / 无残差的 block。返回 (model, provenance)。"""
    from kata.tinylm import build_tiny_lm

    model, prov = build_tiny_lm(cfg, impl=impl, seed=seed)
    wrapper_cls = residual_cls if arm == "res" else NoResidual
    model.blocks = nn.ModuleList(WrappedBlock(b, wrapper_cls, cfg.dim, cfg.norm_eps) for b in model.blocks)
    if arm == "plain_varinit":
        variance_preserving_init(model, seed)
    prov = dict(prov)
    prov["residual"] = (f"{impl}（PreNormResidual）" if arm == "res"
                        else "无残差：实验脚本里的 NoResidual（F(N(x))）")
    return model.to(device), prov


@torch.no_grad()
def layer_representations(model: nn.Module, input_ids: torch.Tensor) -> list:
    """[嵌入, 第 1 个 block 的输出, …, 第 L 个 block 的输出]，每个 [B, S, D]。"""
    outs = []
    hooks = [b.register_forward_hook(lambda mod, inp, out: outs.append(out.detach())) for b in model.blocks]
    try:
        emb = model.embed_tokens(input_ids)
        model(input_ids)
    finally:
        for h in hooks:
            h.remove()
    return [emb.detach()] + outs


def mean_pairwise_cosine(h: torch.Tensor) -> float:
    """同一条序列里不同位置的 token 表示两两之间余弦相似度的平均（再对 batch 平均）。

    接近 1 = 所有 token 的表示几乎指向同一个方向（秩坍缩，Dong et al. 2021）。
    表示的均方根低于 VANISHED_RMS 时返回 NaN：信号已经消失，方向没有意义。
    """
    h = h.double()
    if float(h.pow(2).mean().sqrt()) < VANISHED_RMS:
        return float("nan")
    hn = F.normalize(h, dim=-1)
    sims = hn @ hn.transpose(-1, -2)                          # [B, S, S]
    s = sims.size(-1)
    off_diag = sims.sum((-1, -2)) - sims.diagonal(dim1=-2, dim2=-1).sum(-1)
    return float((off_diag / (s * (s - 1))).mean())


def rms(h: torch.Tensor) -> float:
    return float(h.double().pow(2).mean().sqrt())


def init_probe(model, corpus, *, batch_size: int, seq_len: int, seed: int) -> SimpleNamespace:
    """初始化时的逐层余弦相似度、逐层均方根。"""
    g = torch.Generator().manual_seed(seed)
    x, _ = corpus.get_batch("val", batch_size, seq_len, generator=g, device=next(model.parameters()).device)
    reps = layer_representations(model, x)
    return SimpleNamespace(cosine=[mean_pairwise_cosine(h) for h in reps], rms=[rms(h) for h in reps])


def first_vanished_layer(rms_values: list):
    """第一个均方根低于 VANISHED_RMS 的层号（0 = 嵌入），没有则 None。"""
    for i, v in enumerate(rms_values):
        if not math.isfinite(v) or v < VANISHED_RMS:
            return i
    return None


def moving_average(values, window: int) -> list:
    out, acc, total = [], [], 0.0
    for v in values:
        acc.append(v)
        total += v
        if len(acc) > window:
            total -= acc.pop(0)
        out.append(total / len(acc))
    return out


def impl_label(impl: str) -> str:
    """“由___包起来”里填的那几个字。"""
    if impl.startswith("bug:"):
        return f" bug bank 里的错误实现『{impl[4:]}』"
    return {"exercises": "你的 PreNormResidual", "solutions": "参考 PreNormResidual"}.get(
        impl, f"你指定的 PreNormResidual（{impl}）")
