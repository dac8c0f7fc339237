"""练习 06（下）：MiniMindModel 与 MiniMindForCausalLM——把块叠起来，变成一个能算 loss、能生成文字的语言模型。

把下面每个 `raise NotImplementedError` 换成你的实现，直到 `pytest exercises/06_transformer_block` 全部通过。
需要的背景知识在 exercises/06_transformer_block/teaching.md §3–§5。

    input_ids ─ embed_tokens ─ layers[0] … layers[L-1] ─ norm ─ lm_head ─ logits
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kata.config import MiniMindConfig
from exercises import MiniMindBlock, RMSNorm, precompute_freqs_cis


@dataclass
class CausalLMOutput:
    """MiniMindForCausalLM.forward 的返回值（已经写好了，直接用）。"""

    logits: torch.Tensor                     # [B, S, vocab]
    loss: Optional[torch.Tensor] = None      # 给了 labels 才有：右移一位之后的平均交叉熵
    past_key_values: Optional[list] = None   # use_cache=True 时：每层一个 (k, v)
    hidden_states: Optional[torch.Tensor] = None  # 最后一个 norm 之后、lm_head 之前的 [B, S, hidden]


class MiniMindModel(nn.Module):
    """词嵌入 + L 个 MiniMindBlock + 最后的 RMSNorm（minimind 的 MiniMindModel）。

    子模块 / buffer（名字是契约的一部分）：
    - `embed_tokens` = nn.Embedding(vocab_size, hidden_size)
    - `dropout`      = nn.Dropout(config.dropout)：用在词嵌入之后（与 minimind 相同）。nn.Dropout 在 train() 时按 p 丢弃
      并把留下的放大 1/(1-p)，在 eval() 时什么也不做；不要用不带 training=self.training 的 F.dropout
    - `layers`       = nn.ModuleList([MiniMindBlock(i, config) for i in range(num_hidden_layers)])
    - `norm`         = RMSNorm(hidden_size, eps=rms_norm_eps)
    - buffer `freqs_cos` / `freqs_sin` = precompute_freqs_cis(config.head_dim, end=max_position_embeddings,
      rope_base=rope_theta, rope_scaling=rope_scaling)，用 register_buffer(..., persistent=False) 登记

    提示：
    - 把 config 存成 self.config；
    - config 的每个字段都要送到它的使用者：rope_theta、rope_scaling、max_position_embeddings 都交给
      precompute_freqs_cis（漏掉一个，模型照样能跑，只是跑的不是这个配置——测试会逐个字段检查）；
    - persistent=False 让 RoPE 表不进 state_dict（它能由 config 重新算出来）；
    - 所有层共用同一张 RoPE 表：在 __init__ 里算一次，不要每层各算一张。
    """

    def __init__(self, config: MiniMindConfig):
        super().__init__()
        raise NotImplementedError(
            "还没实现：exercises/06_transformer_block/model.py · MiniMindModel.__init__ — 先读 teaching.md §3"
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                past_key_values: Optional[list] = None, use_cache: bool = False):
        """input_ids [B, S] → (hidden_states [B, S, hidden], presents)。

        - past_key_values：上一次返回的 presents（每层一个 (k, v)，各 [B, S_past, KVH, head_dim]），或 None；
        - attention_mask：[B, S_past + S]，1 = 真实 token，0 = padding，原样交给每一层；
        - presents：use_cache=True 时是每层一个 (k, v) 的列表，否则返回 None。

        步骤：
        1. start_pos = cache 里已有的位置数（没有 cache 时为 0）——从 past_key_values[0][0] 的形状读出来；
        2. hidden = self.dropout(self.embed_tokens(input_ids))——整个模型里只有这一处 dropout 写在 forward 里，
           层与层之间、最后的 norm 与 lm_head 之间都没有；
        3. position_embeddings = (freqs_cos[start_pos : start_pos+S], freqs_sin[start_pos : start_pos+S])；
        4. 逐层：hidden, present = layer(hidden, position_embeddings, past_key_value=第 i 层的 cache,
           use_cache=use_cache, attention_mask=attention_mask)，收集 present；
        5. 最后 hidden = self.norm(hidden)。
        """
        raise NotImplementedError(
            "还没实现：exercises/06_transformer_block/model.py · MiniMindModel.forward — 先读 teaching.md §3"
        )


class MiniMindForCausalLM(nn.Module):
    """MiniMindModel + lm_head + 损失 + 生成（minimind 的 MiniMindForCausalLM）。

    子模块：`model` = MiniMindModel(config)；`lm_head` = nn.Linear(hidden_size, vocab_size, bias=False)。
    config 为 None 时用 MiniMindConfig()（MiniMind2-small：25,829,888 个参数）。

    提示（__init__）：
    - 把 config 存成 self.config；
    - config.tie_word_embeddings 为 True 时，让两者共享**同一个** Parameter（不是拷贝数值）。
      方向与 minimind 相同：`self.model.embed_tokens.weight = self.lm_head.weight`——
      共享矩阵用 nn.Linear 的初始化（量级约 1/√hidden）；反过来会让 lm_head 用上 nn.Embedding 的 N(0,1)
      初始化，初始 loss 远高于 ln(vocab)。teaching.md §4 解释了原因。
    """

    def __init__(self, config: Optional[MiniMindConfig] = None):
        super().__init__()
        raise NotImplementedError(
            "还没实现：exercises/06_transformer_block/model.py · MiniMindForCausalLM.__init__ — 先读 teaching.md §4"
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, past_key_values: Optional[list] = None,
                use_cache: bool = False) -> CausalLMOutput:
        """返回 CausalLMOutput(logits, loss, past_key_values, hidden_states)。

        loss（只在给了 labels 时计算）：labels 和 input_ids 一样是 [B, S]，**不需要**调用者预先错位——
        位置 t 的 logits 预测的是第 t+1 个 token，所以在这里把 logits 去掉最后一个位置、labels 去掉第一个位置，
        再算平均交叉熵；labels 为 -100 的位置不计入（F.cross_entropy 的 ignore_index=-100）。
        提示：交叉熵在 float32 里算（logits.float()）。
        """
        raise NotImplementedError(
            "还没实现：exercises/06_transformer_block/model.py · MiniMindForCausalLM.forward — 先读 teaching.md §4"
        )

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int = 32, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, eos_token_id: Optional[int] = None,
                 use_cache: bool = True) -> torch.Tensor:
        """自回归生成，返回 [B, S + n]（开头是原样的 input_ids，0 ≤ n ≤ max_new_tokens）。

        每一步：
        1. 用 self(…)（也就是 forward）拿 logits：use_cache=True 时，第一步喂整段 input_ids（不带 cache），
           之后每步只喂最新的 1 个 token，连同上一步返回的 past_key_values；use_cache=False 时每步都喂
           到目前为止的整段序列，不带 cache；
        2. 取最后一个位置的 logits [B, vocab]（转成 float32）；
        3. 每一行各自选下一个 token：
           - temperature ≤ 0：贪心，取 argmax（不抽样，也不要除以 temperature）；
           - 否则严格按这个顺序：
             a. logits / temperature——抽样分布就是 softmax(logits / T)：T < 1 更尖，T → 0 几乎总是 argmax，T > 1 更平；
             b. top_k > 0：只保留最大的 top_k 个，其余设为 -inf；top_k = 0 或 ≥ vocab 时不截断（也不报错）；
             c. top_p < 1：把 b 之后的 softmax 概率从大到小排序、依次累加，保留“累计概率第一次 ≥ top_p”为止的
                **最小**集合——包括让累计概率越过 top_p 的那一个（边界 token），最大的那个永远保留；其余设为 -inf。
                例：概率 [0.5, 0.3, 0.15, 0.05]、top_p=0.7 → 保留前两个（0.5 < 0.7 ≤ 0.8）；
             d. torch.multinomial(softmax(logits), 1) 抽一个（按剩下的 token 重新归一化的概率）；
        4. 给了 eos_token_id（0 也是合法的 id：用 `eos_token_id is not None` 判断，不要写 `if eos_token_id:`）：
           某一行生成过 eos 之后，它后面一律补 eos_token_id、不再抽样；所有行都生成过 eos 就立刻停止
           （所以 n 可能小于 max_new_tokens）。没给 eos_token_id 时总是生成满 max_new_tokens 个。
        生成前切到 eval 模式（关掉 dropout，贪心生成因此是确定的），结束后恢复调用前的模式：
        调用前是 train 就回到 train，调用前是 eval 就还是 eval（先记下 was_training = self.training）。
        """
        raise NotImplementedError(
            "还没实现：exercises/06_transformer_block/model.py · MiniMindForCausalLM.generate — 先读 teaching.md §5"
        )
