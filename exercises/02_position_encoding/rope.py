"""练习 02：位置编码——RoPE（旋转位置编码，含 YaRN 外推）与正弦位置编码。

把下面四个函数补完，直到 `pytest exercises/02_position_encoding` 全部通过。
建议顺序：precompute_freqs_cis → rotate_half → apply_rotary_pos_emb → sinusoidal_position_encoding，
YaRN（rope_scaling）那一段可以最后再写。背景知识在 exercises/02_position_encoding/teaching.md §2–§5。

记号：D = head_dim（每个注意力头的维度，必须是偶数），h = D / 2（一共 h 对维度）。
布局是 **half-split**（前后两半）：第 i 维与第 i + h 维组成一对做二维旋转——与 minimind、HF LLaMA 相同，
而不是 RoFormer 论文里相邻的 (2i, 2i+1)。
"""
from __future__ import annotations

import math  # noqa: F401  （YaRN 那一段会用到 math.log / math.floor / math.ceil / math.pi）
from typing import Optional

import torch


def precompute_freqs_cis(dim: int, end: int = 32 * 1024, rope_base: float = 1e6,
                         rope_scaling: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """预先算好位置 0, 1, …, end−1 的 cos 表和 sin 表。

    公式（i = 0 … h−1，m = 0 … end−1）::

        θ_i        = rope_base ^ (−2i / dim)            第 i 对维度的角频率（i=0 最快，i=h−1 最慢）
        angle[m,i] = m · θ_i                            位置 m 上第 i 对要转的角度
        cos 表     = [cos(angle), cos(angle)]           沿最后一维拼两遍 → [end, dim]
        sin 表     = [sin(angle), sin(angle)]

    拼两遍是因为 half-split：第 i 维和第 i + h 维用同一个角度，所以表的前半与后半完全相同。

    rope_scaling（YaRN，键名和默认值与 minimind 相同，为 None 时跳过这一段）::

        L = original_max_position_embeddings (2048)   s = factor (16)
        β_fast = beta_fast (32)   β_slow = beta_slow (1)   attention_factor (1.0)

    只有 end > L 时才改频率（没超过原训练长度就不需要外推）：
    1. “在 L 个位置里转 b 圈”的那一对的编号：i(b) = dim · ln(L / (2π·b)) / (2 · ln rope_base)；
    2. low = max(floor(i(β_fast)), 0)，high = min(ceil(i(β_slow)), h − 1)——两个截断都不能省：
       L 小时 i(β_fast) 是负数，rope_base 或 dim 小时 i(β_slow) 会超过最后一对 h − 1（测试专门检查这两种设置）；
    3. 斜坡 γ_i = clamp((i − low) / max(high − low, 0.001), 0, 1)；
    4. θ'_i = θ_i · ((1 − γ_i) + γ_i / s)——高频（γ=0）不动，低频（γ=1）除以 s，中间线性过渡。
    attention_factor 与 minimind 一样直接乘到 cos 表和 sin 表上。字典里没写的键用括号里的默认值；
    每个键都要真的读进来（测试会用非默认的 beta_fast、beta_slow、factor、L、attention_factor）。
    这一段的原理见 teaching.md §5.4。

    返回：(cos, sin)，各 [end, dim]，float32。

    提示：
    - `torch.arange(0, dim, 2)[: dim // 2].float() / dim` 就是 2i/dim；
    - `torch.outer(positions, freqs)` 一步得到 [end, h] 的角度表；位置从 **0** 开始；
    - `torch.cat([a, a], dim=-1)` 把 [end, h] 拼成 [end, dim]（不是 repeat_interleave！）；
    - 还卡住？运行 `python -m kata hint 02`，每次多给一条提示。
    """
    raise NotImplementedError(
        "还没实现：exercises/02_position_encoding/rope.py · precompute_freqs_cis — 先读 teaching.md §2.4"
    )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """把最后一维切成前后两半 x = [x1, x2]（各 D/2 维），返回 [−x2, x1]。

    形状：x 为 [..., D]，输出与 x 同形状、同 dtype。

    为什么是它：对每一对 (a, b) = (x[i], x[i + D/2])，二维旋转 θ 角是
    (a, b) → (a·cos θ − b·sin θ,  b·cos θ + a·sin θ)，
    正好等于 x·cos + rotate_half(x)·sin 在第 i 维和第 i + D/2 维上的值。

    提示：
    - 负号在 **x2** 上，放在前面；
    - `torch.cat((..., ...), dim=-1)`；`half = x.shape[-1] // 2`。
    """
    raise NotImplementedError(
        "还没实现：exercises/02_position_encoding/rope.py · rotate_half — 先读 teaching.md §2.3"
    )


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         unsqueeze_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """把旋转位置编码施加到 q 和 k 上（v 不旋转）。

    公式::

        q' = q · cos + rotate_half(q) · sin
        k' = k · cos + rotate_half(k) · sin

    形状：q [B, S, H, D]，k [B, S, KVH, D]（KVH 可以比 H 少，GQA），
    cos / sin [S, D]（调用者已经切好这 S 个位置，例如 freqs_cos[start_pos : start_pos + S]）。
    cos.unsqueeze(unsqueeze_dim) 之后要能和 q 广播：默认 unsqueeze_dim=1 → [S, 1, D]，对所有头广播；
    如果 q 是 [B, H, S, D] 布局，调用者会传 unsqueeze_dim=0 → [1, S, D]。

    返回：(q', k')，形状与 q、k 相同，**dtype 也与 q、k 相同**（cos / sin 是 float32，
    bfloat16 的 q 乘上去会变成 float32，记得转回去）。

    提示：
    - 不要原地修改 q、k（不要 `q *= cos`）；
    - 旋转之后 ⟨q'_m, k'_n⟩ 只依赖 m − n，测试会检查这一点。
    """
    raise NotImplementedError(
        "还没实现：exercises/02_position_encoding/rope.py · apply_rotary_pos_emb — 先读 teaching.md §2.4"
    )


def sinusoidal_position_encoding(max_len: int, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani 等（2017）§3.5 的正弦位置编码：一张 [max_len, dim] 的表，加到词向量上（绝对位置）。

    公式（pos = 0 … max_len−1，i = 0 … ⌈dim/2⌉−1）::

        PE[pos, 2i]     = sin(pos / base^(2i / dim))
        PE[pos, 2i + 1] = cos(pos / base^(2i / dim))

    偶数维放 sin、奇数维放 cos（与论文一样**交错**排列，和 RoPE 的 half-split 不同）。
    dim 可以是奇数：那时最后一维（第 dim−1 维，编号是偶数）放第 (dim−1)/2 对的 sin，没有与它配对的 cos
    ——一共 ⌈dim/2⌉ 个频率，sin 占 ⌈dim/2⌉ 列、cos 只占 ⌊dim/2⌋ 列。base 是公式里的 10000，可以改。

    返回：[max_len, dim]，float32。

    提示：
    - 先算 [max_len, ⌈dim/2⌉] 的角度表，再用 `pe[:, 0::2] = …`、`pe[:, 1::2] = …` 填进一张零表
      （dim 为奇数时 `pe[:, 1::2]` 只有 ⌊dim/2⌋ 列：cos 只取角度表的前 dim // 2 列）；
    - 位置可达几千：在 float64 里算角度再转 float32，结果更准；
    - 这是本模块实验 2 里“正弦绝对位置”那个变体用的表。
    """
    raise NotImplementedError(
        "还没实现：exercises/02_position_encoding/rope.py · sinusoidal_position_encoding — 先读 teaching.md §4.1"
    )
