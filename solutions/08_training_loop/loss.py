"""交叉熵参考实现：数值稳定（log-sum-exp 减最大值）、支持 ignore_index。

对应 minimind model/model_minimind.py 里 MiniMindForCausalLM.forward 的
``F.cross_entropy(logits.view(-1, V), labels.view(-1), ignore_index=-100)``（模型内部先移位）。
这里把它拆开写，让学习者自己处理溢出与 padding。
"""
from __future__ import annotations

import torch


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """平均交叉熵（只对 targets != ignore_index 的位置取平均）。

    logits [..., V]，targets [...]（整数，与 logits 去掉最后一维的形状相同）。
    全部位置都被忽略时返回 0（梯度也全是 0），而不是 F.cross_entropy 给出的 nan：
    一个全是 padding 的 micro-batch 不该把整个累积步毒成 nan。
    计算至少在 float32 里做；float64 输入保持 float64。
    """
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() < 1:
        raise ValueError(f"logits 应该是形状 [..., V] 的浮点张量，实际 {type(logits).__name__}"
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else ''}")
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex():
        raise ValueError("targets 应该是整数张量（token id），实际 "
                         f"{targets.dtype if isinstance(targets, torch.Tensor) else type(targets).__name__}")
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets 的形状应等于 logits 去掉最后一维：期望 {tuple(logits.shape[:-1])}，"
                         f"实际 {tuple(targets.shape)}")
    vocab = logits.size(-1)
    x = logits.reshape(-1, vocab).to(torch.promote_types(logits.dtype, torch.float32))
    t = targets.reshape(-1).long()
    keep = t != ignore_index
    bad = keep & ((t < 0) | (t >= vocab))
    if bool(bad.any()):
        raise ValueError(f"targets 里有超出词表 [0, {vocab}) 的 id：{t[bad][:5].tolist()}"
                         f"（要忽略的位置应标成 ignore_index={ignore_index}）")
    # log softmax = x - logsumexp(x)；先减去每行最大值，exp 就不会溢出（最大的一项是 exp(0) = 1）
    m = x.max(dim=-1, keepdim=True).values.detach()
    lse = m.squeeze(-1) + torch.log(torch.exp(x - m).sum(dim=-1))
    safe_t = torch.where(keep, t, torch.zeros_like(t))          # 被忽略的位置随便取一个合法下标，再乘 0
    picked = x.gather(-1, safe_t.unsqueeze(-1)).squeeze(-1)
    nll = (lse - picked) * keep.to(x.dtype)
    return nll.sum() / keep.sum().clamp(min=1).to(x.dtype)
