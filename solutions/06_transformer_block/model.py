"""MiniMind 整模型参考实现（对应 minimind model/model_minimind.py 的 MiniMindModel / MiniMindForCausalLM）。

    input_ids ─ embed_tokens ─ layers[0] … layers[L-1] ─ norm ─ lm_head ─ logits
                                   ↑ 每层共用同一段 RoPE 表 (cos, sin)，从 cache 长度处切起

与 minimind 的差别（都写在 exercises/06_transformer_block/code_guide.md 里）：
- 不依赖 transformers：输出是下面这个小 dataclass，而不是 CausalLMOutputWithPast；
- 没有 MoE，所以 MiniMindModel.forward 只返回 (hidden_states, presents)，没有 aux_loss；
- 没有 logits_to_keep 参数（generate 里自己取最后一个位置）；
- generate 用 temperature=0 表示贪心（minimind 用 do_sample=False）。
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kata.config import MiniMindConfig
from solutions import MiniMindBlock, RMSNorm, precompute_freqs_cis


@dataclass
class CausalLMOutput:
    """MiniMindForCausalLM.forward 的返回值（对应 transformers 的 CausalLMOutputWithPast）。"""

    logits: torch.Tensor                     # [B, S, vocab]
    loss: Optional[torch.Tensor] = None      # 给了 labels 才有：右移一位之后的平均交叉熵
    past_key_values: Optional[list] = None   # use_cache=True 时：每层一个 (k, v)
    hidden_states: Optional[torch.Tensor] = None  # 最后一个 norm 之后、lm_head 之前的 [B, S, hidden]


class MiniMindModel(nn.Module):
    """词嵌入 + L 个 MiniMindBlock + 最后的 RMSNorm。输出隐状态，不含 lm_head。"""

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList([MiniMindBlock(i, config) for i in range(config.num_hidden_layers)])
        # Pre-Norm 的残差流从来没被归一化过，最后一层之后必须再归一化一次，lm_head 才拿到尺度稳定的输入
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # RoPE 表只算一次，所有层共用。persistent=False：它能由 config 重新算出来，不进 state_dict，
        # 所以 checkpoint 里没有它，换 max_position_embeddings / rope_scaling 加载同一份权重也不冲突
        cos, sin = precompute_freqs_cis(config.head_dim, end=config.max_position_embeddings,
                                        rope_base=config.rope_theta, rope_scaling=config.rope_scaling)
        self.register_buffer("freqs_cos", cos, persistent=False)
        self.register_buffer("freqs_sin", sin, persistent=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                past_key_values: Optional[list] = None, use_cache: bool = False):
        """input_ids [B, S] → (hidden_states [B, S, hidden], presents)。

        past_key_values：上一次返回的 presents（每层一个 (k, v)，各 [B, S_past, KVH, head_dim]），或 None。
        attention_mask：[B, S_past + S]，1 = 真实 token，0 = padding；原样交给每一层的注意力。
        presents：use_cache=True 时是每层一个 (k, v) 的列表（含 S_past + S 个位置），否则为 None。
        """
        batch_size, seq_length = input_ids.shape
        past_key_values = past_key_values or [None] * len(self.layers)
        # cache 里已经有 start_pos 个位置：新 token 的位置是 start_pos … start_pos + S - 1
        start_pos = past_key_values[0][0].shape[1] if past_key_values[0] is not None else 0
        if start_pos + seq_length > self.freqs_cos.shape[0]:
            raise ValueError(
                f"序列位置 {start_pos}…{start_pos + seq_length - 1} 超出了 RoPE 表的长度 "
                f"max_position_embeddings={self.freqs_cos.shape[0]}"
            )
        hidden_states = self.dropout(self.embed_tokens(input_ids))
        position_embeddings = (self.freqs_cos[start_pos:start_pos + seq_length],
                               self.freqs_sin[start_pos:start_pos + seq_length])
        presents = []
        for layer, past_key_value in zip(self.layers, past_key_values):
            hidden_states, present = layer(hidden_states, position_embeddings, past_key_value=past_key_value,
                                           use_cache=use_cache, attention_mask=attention_mask)
            presents.append(present)
        hidden_states = self.norm(hidden_states)
        return hidden_states, (presents if use_cache else None)


class MiniMindForCausalLM(nn.Module):
    """MiniMindModel + lm_head（默认与 embed_tokens 共享权重）+ 损失 + 生成。"""

    def __init__(self, config: Optional[MiniMindConfig] = None):
        super().__init__()
        self.config = config or MiniMindConfig()
        self.model = MiniMindModel(self.config)
        self.lm_head = nn.Linear(self.config.hidden_size, self.config.vocab_size, bias=False)
        if self.config.tie_word_embeddings:
            # 与 minimind 同一个方向：词嵌入拿 lm_head 的权重（nn.Linear 的初始化，量级约 1/√hidden）。
            # 反过来让 lm_head 用 nn.Embedding 的 N(0, 1) 初始化，初始 logits 会大 √hidden 倍左右。
            self.model.embed_tokens.weight = self.lm_head.weight

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, past_key_values: Optional[list] = None,
                use_cache: bool = False) -> CausalLMOutput:
        hidden_states, presents = self.model(input_ids, attention_mask=attention_mask,
                                             past_key_values=past_key_values, use_cache=use_cache)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            # 位置 t 的 logits 预测第 t+1 个 token：logits 去掉最后一个位置，labels 去掉第一个位置。
            # labels 为 -100 的位置（padding、不想学的提示词）不计入平均
            shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))
            shift_labels = labels[:, 1:].reshape(-1)
            loss = F.cross_entropy(shift_logits.float(), shift_labels, ignore_index=-100)
        return CausalLMOutput(logits=logits, loss=loss, past_key_values=presents, hidden_states=hidden_states)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id: Optional[int] = None,
                 use_cache: bool = True) -> torch.Tensor:
        """自回归生成，返回 [B, S + n]（开头是原样的 input_ids，n ≤ max_new_tokens）。

        temperature ≤ 0 表示贪心（每步取 argmax）；否则 logits / temperature 之后，先按 top_k（0 = 不限）、
        再按 top_p（1.0 = 不限）截断，再按概率抽样（torch.multinomial，用全局随机数）。
        给了 eos_token_id：已经生成过 eos 的序列之后一律补 eos，所有序列都结束就提前停止。
        use_cache=True：第一步把整段提示词过一遍并拿到 KV cache，之后每步只喂最后一个新 token。
        """
        was_training = self.training
        self.eval()
        try:
            ids = input_ids
            finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
            past = None
            for _ in range(max_new_tokens):
                # 有 cache 时只喂 cache 里还没有的那部分（第一步是整段提示词，之后是 1 个 token）
                step_ids = ids if past is None else ids[:, past[0][0].shape[1]:]
                out = self(step_ids, past_key_values=past, use_cache=use_cache)
                next_token = _pick_next_token(out.logits[:, -1, :].float(), temperature, top_k, top_p)
                if eos_token_id is not None:
                    next_token = torch.where(finished, torch.full_like(next_token, eos_token_id), next_token)
                ids = torch.cat([ids, next_token[:, None]], dim=1)
                past = out.past_key_values if use_cache else None
                if eos_token_id is not None:
                    finished |= next_token == eos_token_id
                    if bool(finished.all()):
                        break
            return ids
        finally:
            self.train(was_training)


def _pick_next_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """logits [B, V] → 下一个 token [B]。"""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        # nucleus：按概率从大到小累加，保留“累计概率第一次达到 top_p”为止的最小集合（第一个 token 永远保留）
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = probs.cumsum(dim=-1) - probs      # 排在它前面的 token 的累计概率
        drop_sorted = before >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(-1)
