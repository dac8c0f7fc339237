"""模块 06 的 bug bank：真实会写出来的错误 Block / 整模型。

每个错误都建在参考实现之上（子类，只改出错的那几行）。块的错误要连同整模型一起替换：
参考的 MiniMindModel 在 __init__ 里用的是参考的 MiniMindBlock，所以这里用 ``_family`` 生成
“用错误块搭起来的” MiniMindModel 和 MiniMindForCausalLM，三个公开名字一起覆盖。
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kata.bugbank import Bug
from solutions import Attention, MiniMindBlock, MiniMindForCausalLM, MiniMindModel


def _family(block_cls=MiniMindBlock, model_cls=MiniMindModel, lm_cls=MiniMindForCausalLM) -> dict:
    """返回 {公开名字: 类}：用 block_cls 搭 MiniMindModel，再用它搭 MiniMindForCausalLM。"""

    class Model(model_cls):
        def __init__(self, config):
            super().__init__(config)
            if block_cls is not MiniMindBlock:
                self.layers = nn.ModuleList([block_cls(i, config) for i in range(config.num_hidden_layers)])

    class LM(lm_cls):
        def __init__(self, config=None):
            super().__init__(config)
            if model_cls is not MiniMindModel or block_cls is not MiniMindBlock:
                self.model = Model(self.config)
                if self.config.tie_word_embeddings:
                    self.model.embed_tokens.weight = self.lm_head.weight

    Model.__name__ = Model.__qualname__ = "MiniMindModel"
    LM.__name__ = LM.__qualname__ = "MiniMindForCausalLM"
    return {"MiniMindBlock": block_cls, "MiniMindModel": Model, "MiniMindForCausalLM": LM}


def _attn(block, x, pe, past, use_cache, mask):
    return block.self_attn(x, pe, past_key_value=past, use_cache=use_cache, attention_mask=mask)


# ---------------------------------------------------------------------------------------------- 块

class PostNormBlock(MiniMindBlock):
    def forward(self, hidden_states, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        a, present = _attn(self, hidden_states, position_embeddings, past_key_value, use_cache, attention_mask)
        h = self.input_layernorm(hidden_states + a)
        return self.post_attention_layernorm(h + self.mlp(h)), present


class ResidualFromNormed(MiniMindBlock):
    def forward(self, hidden_states, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        normed = self.input_layernorm(hidden_states)
        a, present = _attn(self, normed, position_embeddings, past_key_value, use_cache, attention_mask)
        h = normed + a
        normed2 = self.post_attention_layernorm(h)
        return normed2 + self.mlp(normed2), present


class ParallelBlock(MiniMindBlock):
    def forward(self, hidden_states, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        a, present = _attn(self, self.input_layernorm(hidden_states), position_embeddings, past_key_value,
                           use_cache, attention_mask)
        return hidden_states + a + self.mlp(self.post_attention_layernorm(hidden_states)), present


class SharedNormBlock(MiniMindBlock):
    def forward(self, hidden_states, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        a, present = _attn(self, self.input_layernorm(hidden_states), position_embeddings, past_key_value,
                           use_cache, attention_mask)
        h = hidden_states + a
        return h + self.mlp(self.input_layernorm(h)), present


class NonCausalAttention(Attention):
    """把 padding 掩码当作唯一的 attn_mask 交给 F.scaled_dot_product_attention，因果掩码就丢了。"""

    def forward(self, x, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        from solutions import apply_rotary_pos_emb, repeat_kv

        bsz, seq_len, _ = x.shape
        q = self.q_proj(x).view(bsz, seq_len, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary_pos_emb(q, k, *position_embeddings)
        if past_key_value is not None:
            k = torch.cat([past_key_value[0], k], dim=1)
            v = torch.cat([past_key_value[1], v], dim=1)
        present = (k, v) if use_cache else None
        q = q.transpose(1, 2)
        k = repeat_kv(k, self.n_rep).transpose(1, 2)
        v = repeat_kv(v, self.n_rep).transpose(1, 2)
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(bsz, seq_len, -1)
        return self.resid_dropout(self.o_proj(out)), present


class NonCausalBlock(MiniMindBlock):
    def __init__(self, layer_id, config):
        super().__init__(layer_id, config)
        state = self.self_attn.state_dict()
        self.self_attn = NonCausalAttention(config.hidden_size, config.num_attention_heads,
                                            config.num_key_value_heads, dropout=config.dropout,
                                            qk_norm=config.qk_norm, eps=config.rms_norm_eps)
        self.self_attn.load_state_dict(state)


# ---------------------------------------------------------------------------------------------- 整模型

class NoFinalNormModel(MiniMindModel):
    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        past_key_values = past_key_values or [None] * len(self.layers)
        start = past_key_values[0][0].shape[1] if past_key_values[0] is not None else 0
        h = self.dropout(self.embed_tokens(input_ids))
        pe = (self.freqs_cos[start:start + input_ids.shape[1]], self.freqs_sin[start:start + input_ids.shape[1]])
        presents = []
        for layer, past in zip(self.layers, past_key_values):
            h, present = layer(h, pe, past_key_value=past, use_cache=use_cache, attention_mask=attention_mask)
            presents.append(present)
        return h, (presents if use_cache else None)


class RopeNotOffsetModel(MiniMindModel):
    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        past_key_values = past_key_values or [None] * len(self.layers)
        h = self.dropout(self.embed_tokens(input_ids))
        seq_len = input_ids.shape[1]
        pe = (self.freqs_cos[:seq_len], self.freqs_sin[:seq_len])   # 忘了从 cache 长度处切
        presents = []
        for layer, past in zip(self.layers, past_key_values):
            h, present = layer(h, pe, past_key_value=past, use_cache=use_cache, attention_mask=attention_mask)
            presents.append(present)
        return self.norm(h), (presents if use_cache else None)


class OneCacheForAllLayersModel(MiniMindModel):
    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        start = past_key_values[0][0].shape[1] if past_key_values else 0
        h = self.dropout(self.embed_tokens(input_ids))
        pe = (self.freqs_cos[start:start + input_ids.shape[1]], self.freqs_sin[start:start + input_ids.shape[1]])
        presents = []
        for layer in self.layers:
            past = past_key_values[0] if past_key_values else None   # 每一层都拿了第 0 层的 cache
            h, present = layer(h, pe, past_key_value=past, use_cache=use_cache, attention_mask=attention_mask)
            presents.append(present)
        return self.norm(h), (presents if use_cache else None)


class IgnoresPaddingMaskModel(MiniMindModel):
    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        return super().forward(input_ids, attention_mask=None, past_key_values=past_key_values, use_cache=use_cache)


class UntiedLM(MiniMindForCausalLM):
    def __init__(self, config=None):
        super().__init__(config)
        # 忘了权重共享：词嵌入和 lm_head 是两个独立的矩阵
        self.model.embed_tokens.weight = nn.Parameter(self.model.embed_tokens.weight.detach().clone())


class TiedWrongDirectionLM(MiniMindForCausalLM):
    def __init__(self, config=None):
        super().__init__(config)
        if self.config.tie_word_embeddings:
            embed = nn.Embedding(self.config.vocab_size, self.config.hidden_size)   # N(0, 1) 初始化
            self.model.embed_tokens.weight = embed.weight
            self.lm_head.weight = self.model.embed_tokens.weight


class LabelsNotShiftedLM(MiniMindForCausalLM):
    def forward(self, input_ids, attention_mask=None, labels=None, past_key_values=None, use_cache=False):
        out = super().forward(input_ids, attention_mask=attention_mask, labels=None,
                              past_key_values=past_key_values, use_cache=use_cache)
        if labels is not None:
            out.loss = F.cross_entropy(out.logits.float().reshape(-1, out.logits.size(-1)), labels.reshape(-1),
                                       ignore_index=-100)
        return out


BUGS = [
    Bug("post_norm_block", "块写成了 Post-Norm：norm(x + attn(x))，而 MiniMind 是 Pre-Norm：x + attn(norm(x))",
        _family(block_cls=PostNormBlock)),
    Bug("residual_from_normed", "残差加回的是归一化之后的 x：norm(x) + attn(norm(x))，恒等高速公路被 norm 挡住了",
        _family(block_cls=ResidualFromNormed)),
    Bug("parallel_block", "FFN 读的是块的输入 x 而不是加过注意力的 h（写成了 GPT-J 式的并行块）",
        _family(block_cls=ParallelBlock)),
    Bug("shared_norm", "两个子层共用了 input_layernorm，post_attention_layernorm 没有用上",
        _family(block_cls=SharedNormBlock)),
    Bug("causal_mask_lost", "模型路径上丢了因果掩码（只把 padding 掩码交给注意力、没有 is_causal）：每个位置都能看到未来",
        _family(block_cls=NonCausalBlock)),
    Bug("no_final_norm", "漏了最后一层之后的 norm（model.norm）：lm_head 拿到的是没有归一化的残差流",
        _family(model_cls=NoFinalNormModel)),
    Bug("rope_not_offset", "RoPE 的位置没有加上 cache 长度：解码时新 token 总被当成第 0 个位置",
        _family(model_cls=RopeNotOffsetModel)),
    Bug("one_cache_for_all_layers", "每一层都拿了第 0 层的 KV cache（past_key_values[0]），而不是各自那一层的",
        _family(model_cls=OneCacheForAllLayersModel)),
    Bug("padding_mask_dropped", "模型没有把 attention_mask 交给各层：真实 token 会注意到 padding",
        _family(model_cls=IgnoresPaddingMaskModel)),
    Bug("untied_lm_head", "忘了权重共享：lm_head 和 embed_tokens 是两个独立的矩阵（参数多了 vocab×hidden）",
        _family(lm_cls=UntiedLM)),
    Bug("tied_wrong_direction", "权重共享的方向反了：共享矩阵用的是 nn.Embedding 的 N(0,1) 初始化，"
        "初始 logits 大约放大 √hidden 倍，初始 loss 远高于 ln(vocab)", _family(lm_cls=TiedWrongDirectionLM)),
    Bug("labels_not_shifted", "labels 没有右移一位：位置 t 的 logits 被拿去预测第 t 个 token（它自己）",
        _family(lm_cls=LabelsNotShiftedLM)),
]
