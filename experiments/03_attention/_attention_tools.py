"""模块 03 几个实验共用的小工具：读出注意力权重、屏蔽某些头、统计每个头“在看哪里”、单线程默认值。

不是课程要你写的代码。核心技巧只有一个：tinylm 的每个注意力层把“softmax(q·kᵀ/√D)·v”交给
``block.self_attn.sdpa``（也就是你的 scaled_dot_product_attention）去算，我们临时把它换成一个包装函数，
在里面顺便记下注意力权重、或者把某个头的输出置零，用完再换回去。
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch

# 注意力权重 P 的读法：把 v 取成单位矩阵，P·I = P。用的仍然是你的 scaled_dot_product_attention。


def weights_from_sdpa(sdpa: Callable) -> Callable:
    """返回 fn(q, k) -> P [B, H, Sq, Sk]：调用 sdpa(q, k, I, is_causal=True)，I 是单位矩阵。"""
    def fn(q, k, scale=None):
        sk = k.size(-2)
        eye = torch.eye(sk, dtype=q.dtype, device=q.device).expand(q.size(0), q.size(1), sk, sk)
        return sdpa(q, k, eye, is_causal=True)
    return fn


def manual_weights(q, k, scale: float) -> torch.Tensor:
    """P = softmax(q·kᵀ·scale + 因果掩码)，float32。给 tinylm 自己的注意力路径（例如去掉 1/√D）用。"""
    sq, sk = q.size(-2), k.size(-2)
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    future = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq).logical_not()
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


@contextlib.contextmanager
def probe_attention(model, *, record: Optional[dict] = None, head_mask: Optional[torch.Tensor] = None,
                    weights_fn: Optional[Callable] = None):
    """临时包装 model 每一层的注意力计算。

    - record：给了就把每层的注意力权重 [B, H, S, S]（float32，已 detach）存进 record[层号]；
      权重用 weights_fn(q, k, scale) 计算，默认 manual_weights；
    - head_mask：[n_layers, n_heads] 的 0/1 张量，把对应头的输出（softmax·v 之后、o_proj 之前）乘上它。
    退出时恢复原来的函数。
    """
    saved = []
    try:
        for layer, block in enumerate(model.blocks):
            attn = block.self_attn
            saved.append((attn, attn.sdpa))
            attn.sdpa = _wrap(attn.sdpa, attn.scale, layer, record, head_mask, weights_fn)
        yield
    finally:
        for attn, orig in saved:
            attn.sdpa = orig


def _wrap(orig, scale, layer, record, head_mask, weights_fn):
    def wrapped(q, k, v, attn_mask=None, is_causal=False):
        if record is not None:
            with torch.no_grad():
                fn = weights_fn or manual_weights
                record[layer] = fn(q, k, scale).detach().float()
        if orig is not None:
            out = orig(q, k, v, attn_mask=attn_mask, is_causal=is_causal)
        else:  # tinylm 自己的路径（去掉 1/√D 等）：同样的数学，在这里重算
            probs = manual_weights(q, k, scale)
            out = probs.to(v.dtype) @ v
        if head_mask is not None:
            out = out * head_mask[layer].to(out.dtype)[None, :, None, None]
        return out
    return wrapped


def head_stats(P: torch.Tensor, min_query: int = 8) -> dict:
    """一个层的注意力权重 P [B, H, S, S] → 每个头的统计（各为长度 H 的列表）。

    - entropy：每行的熵（nats）在 query ≥ min_query 的行上平均；uniform_entropy 是同样这些行“均匀地看所有可见 key”的熵；
    - prev：分给前一个 token（j = i−1）的平均权重；self：分给自己（j = i）的；first：分给第 0 个 token 的；
    - distance：平均“往回看多远” Σ_j P_ij·(i−j)；max_weight：每行最大权重的平均。
    """
    B, H, S, _ = P.shape
    P = P.double()
    rows = torch.arange(S)
    use = rows >= min(min_query, S - 1)
    logp = torch.where(P > 0, P.clamp_min(1e-300).log(), torch.zeros_like(P))
    ent = -(P * logp).sum(-1)                                    # [B, H, S]
    uniform = torch.log(rows.double() + 1)                        # 第 i 行有 i+1 个可见 key
    dist = (P * (rows[:, None] - rows[None, :]).clamp_min(0).double()).sum(-1)
    prev = torch.zeros(B, H, S, dtype=torch.float64)
    prev[..., 1:] = P[..., rows[1:], rows[1:] - 1]
    diag = P[..., rows, rows]
    first = P[..., :, 0]
    mean = lambda t: t[..., use].mean(dim=(0, 2)).tolist()  # noqa: E731
    return {
        "entropy": mean(ent),
        "uniform_entropy": float(uniform[use].mean()),
        "prev": mean(prev),
        "self": mean(diag),
        "first": mean(first),
        "distance": mean(dist),
        "max_weight": mean(P.max(-1).values),
    }


def classify_head(stats: dict, h: int) -> str:
    """按统计给一个头起个名字（阈值写在这里，结论里照实引用）：某一类权重 ≥ 0.5；前一个 + 自己 ≥ 0.6 算“局部”；
    熵 ≥ 均匀熵的 80% 算“广泛”；其余“混合”。"""
    if stats["prev"][h] >= 0.5:
        return "前一个 token"
    if stats["self"][h] >= 0.5:
        return "自己"
    if stats["first"][h] >= 0.5:
        return "第一个 token"
    if stats["prev"][h] + stats["self"][h] >= 0.6:
        return "局部（自己+前一个）"
    if stats["entropy"][h] >= 0.8 * stats["uniform_entropy"]:
        return "广泛/近似均匀"
    return "混合"


CLASS_EN = {"前一个 token": "previous token", "自己": "self", "第一个 token": "first token", "局部（自己+前一个）": "local",
            "广泛/近似均匀": "broad/near-uniform", "混合": "mixed"}


def default_one_thread(exp) -> int:
    """没给 --threads 时用 1 个线程：dim=64 的小模型上，多线程的同步开销大于收益，
    机器上同时有别的任务时尤其如此（在一台繁忙的 2 核机器上实测单线程快数倍）。返回实际线程数。"""
    if getattr(exp.args, "threads", None) is None:
        torch.set_num_threads(1)
    return torch.get_num_threads()


def rope_tables(length: int, head_dim: int, base: float = 10000.0):
    """minimind 布局的 RoPE cos / sin 表 [length, head_dim]（实验里用来试跑 Attention，不依赖你的 precompute_freqs_cis）。"""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    ang = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([ang.cos(), ang.cos()], -1), torch.cat([ang.sin(), ang.sin()], -1)


def entropy_of_rows(P: torch.Tensor) -> torch.Tensor:
    """每行的熵（nats），P 的最后一维是分布。"""
    P = P.double()
    return -(P * torch.where(P > 0, P.clamp_min(1e-300).log(), torch.zeros_like(P))).sum(-1)


