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
from solutions import (Attention, FeedForward, MiniMindBlock, MiniMindForCausalLM, MiniMindModel, RMSNorm,
                       precompute_freqs_cis)


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



# ---------------------------------------------------------------------------------------------- config 没送到

def _rebuilt_block(attn=None, ffn=None, norms=None) -> type:
    """参考块，但把某个子模块按“少传了一个 config 字段”的方式重建。attn / ffn / norms 是 config → 子模块的函数。"""

    class Block(MiniMindBlock):
        def __init__(self, layer_id, config):
            super().__init__(layer_id, config)
            if attn is not None:
                self.self_attn = attn(config)
                if not config.flash_attn:
                    self.self_attn.flash = False
            if ffn is not None:
                self.mlp = ffn(config)
            if norms is not None:
                self.input_layernorm = norms(config)
                self.post_attention_layernorm = norms(config)

    return Block


def _table_model(*drop) -> type:
    """参考模型，但 RoPE 表是少传了参数的 precompute_freqs_cis 算出来的。"""

    class Model(MiniMindModel):
        def __init__(self, config):
            super().__init__(config)
            kw = dict(end=config.max_position_embeddings, rope_base=config.rope_theta, rope_scaling=config.rope_scaling)
            for k in drop:
                kw.pop(k)
            cos, sin = precompute_freqs_cis(config.head_dim, **kw)
            self.register_buffer("freqs_cos", cos, persistent=False)
            self.register_buffer("freqs_sin", sin, persistent=False)

    return Model


class NormEpsDroppedModel(MiniMindModel):
    def __init__(self, config):
        super().__init__(config)
        self.norm = RMSNorm(config.hidden_size)   # 忘了 eps=config.rms_norm_eps


# ---------------------------------------------------------------------------------------------- dropout

class EmbedDropoutAlwaysOnModel(MiniMindModel):
    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        # F.dropout 的 training 默认是 True：eval() 时也在丢弃
        self._embed_dropout = lambda h: F.dropout(h, p=self.config.dropout)
        return _model_forward(self, input_ids, attention_mask, past_key_values, use_cache)


class NoEmbedDropoutModel(MiniMindModel):
    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        self._embed_dropout = lambda h: h
        return _model_forward(self, input_ids, attention_mask, past_key_values, use_cache)


class DropoutAfterFinalNormModel(MiniMindModel):
    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False):
        self._embed_dropout = lambda h: h
        h, presents = _model_forward(self, input_ids, attention_mask, past_key_values, use_cache)
        return self.dropout(h), presents   # dropout 放在了 lm_head 前面，而不是词嵌入后面


def _model_forward(model, input_ids, attention_mask, past_key_values, use_cache):
    past_key_values = past_key_values or [None] * len(model.layers)
    start = past_key_values[0][0].shape[1] if past_key_values[0] is not None else 0
    h = model._embed_dropout(model.embed_tokens(input_ids))
    s = input_ids.shape[1]
    pe = (model.freqs_cos[start:start + s], model.freqs_sin[start:start + s])
    presents = []
    for layer, past in zip(model.layers, past_key_values):
        h, present = layer(h, pe, past_key_value=past, use_cache=use_cache, attention_mask=attention_mask)
        presents.append(present)
    return model.norm(h), (presents if use_cache else None)


class BlockDropoutInEval(MiniMindBlock):
    def forward(self, hidden_states, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        a, present = _attn(self, self.input_layernorm(hidden_states), position_embeddings, past_key_value,
                           use_cache, attention_mask)
        h = hidden_states + F.dropout(a, p=self.self_attn.resid_dropout.p)   # 没传 training：eval 时也丢
        return h + self.mlp(self.post_attention_layernorm(h)), present


class FreshNormInForwardBlock(MiniMindBlock):
    def forward(self, hidden_states, position_embeddings, past_key_value=None, use_cache=False, attention_mask=None):
        norm = RMSNorm(hidden_states.shape[-1])   # 每次新建一个 weight 全 1 的 norm：学到的 input_layernorm.weight 没用上
        a, present = _attn(self, norm(hidden_states), position_embeddings, past_key_value, use_cache, attention_mask)
        h = hidden_states + a
        return h + self.mlp(self.post_attention_layernorm(h)), present


# ---------------------------------------------------------------------------------------------- generate

def _pick(logits, temperature, top_k, top_p, *, use_temperature=True, k_cmp="lt", keep_boundary=True):
    if temperature <= 0:
        return logits.argmax(dim=-1)
    if use_temperature:
        logits = logits / temperature
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth if k_cmp == "lt" else logits <= kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(dim=-1)
        drop_sorted = (cum - probs >= top_p) if keep_boundary else (cum > top_p)
        drop_sorted[:, 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted), float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(-1)


def _generating_lm(*, switch_to_eval=True, restore="previous", pad_finished=True, stop_early=True,
                   eos_check="is_not_none", **pick) -> type:
    """参考 LM，但 generate 按给定的方式写错一处。"""

    class LM(MiniMindForCausalLM):
        @torch.no_grad()
        def generate(self, input_ids, max_new_tokens=32, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=None,
                     use_cache=True):
            was_training = self.training
            if switch_to_eval:
                self.eval()
            has_eos = (eos_token_id is not None) if eos_check == "is_not_none" else bool(eos_token_id)
            ids, past = input_ids, None
            finished = torch.zeros(ids.shape[0], dtype=torch.bool)
            for _ in range(max_new_tokens):
                step_ids = ids if past is None else ids[:, past[0][0].shape[1]:]
                out = self(step_ids, past_key_values=past, use_cache=use_cache)
                nxt = _pick(out.logits[:, -1, :].float(), temperature, top_k, top_p, **pick)
                if has_eos and pad_finished:
                    nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                ids = torch.cat([ids, nxt[:, None]], dim=1)
                past = out.past_key_values if use_cache else None
                if has_eos:
                    finished |= nxt == eos_token_id
                    if stop_early and bool(finished.all()):
                        break
            if restore == "previous":
                self.train(was_training)
            elif restore == "always_train":
                self.train()
            return ids

    return LM

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
    # ---- config 字段没送到使用者（teaching.md §2.1、§3.1）
    Bug("rope_theta_dropped", "rope_theta 没有传到 RoPE 表：precompute_freqs_cis 用了默认的 rope_base=1e6",
        _family(model_cls=_table_model("rope_base"))),
    Bug("rope_scaling_dropped", "rope_scaling（YaRN）没有传到 RoPE 表：precompute_freqs_cis 没拿到 rope_scaling",
        _family(model_cls=_table_model("rope_scaling"))),
    Bug("max_positions_dropped", "max_position_embeddings 没有传给 precompute_freqs_cis 的 end：RoPE 表总是默认的 32768 行",
        _family(model_cls=_table_model("end"))),
    Bug("norm_eps_dropped", "RMSNorm 没有拿到 config.rms_norm_eps（两个块内 norm 和 model.norm 都用了默认的 1e-5）",
        _family(block_cls=_rebuilt_block(norms=lambda c: RMSNorm(c.hidden_size)), model_cls=NormEpsDroppedModel)),
    Bug("attention_eps_dropped", "Attention 没有拿到 eps=config.rms_norm_eps：qk_norm 的 q_norm / k_norm 用了默认的 1e-5",
        _family(block_cls=_rebuilt_block(attn=lambda c: Attention(
            c.hidden_size, c.num_attention_heads, c.num_key_value_heads, dropout=c.dropout, qk_norm=c.qk_norm)))),
    Bug("kv_heads_dropped", "Attention 没有拿到 num_key_value_heads：每层都成了 KV 头与 query 头一样多的 MHA",
        _family(block_cls=_rebuilt_block(attn=lambda c: Attention(
            c.hidden_size, c.num_attention_heads, dropout=c.dropout, qk_norm=c.qk_norm, eps=c.rms_norm_eps)))),
    Bug("qk_norm_dropped", "Attention 没有拿到 qk_norm：config.qk_norm=True 时也没有 q_norm / k_norm",
        _family(block_cls=_rebuilt_block(attn=lambda c: Attention(
            c.hidden_size, c.num_attention_heads, c.num_key_value_heads, dropout=c.dropout, eps=c.rms_norm_eps)))),
    Bug("intermediate_size_dropped", "FeedForward 没有拿到 intermediate_size：总是按 8h/3 取整的默认宽度",
        _family(block_cls=_rebuilt_block(ffn=lambda c: FeedForward(c.hidden_size, dropout=c.dropout)))),
    Bug("block_dropout_not_passed", "config.dropout 没有交给 self_attn 和 mlp：train() 时注意力输出与 FFN 输出都不丢弃",
        _family(block_cls=_rebuilt_block(
            attn=lambda c: Attention(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, qk_norm=c.qk_norm,
                                     eps=c.rms_norm_eps),
            ffn=lambda c: FeedForward(c.hidden_size, c.intermediate_size)))),
    # ---- dropout 的位置与时机（teaching.md §3.1）
    Bug("embed_dropout_ignores_eval", "词嵌入之后用了 F.dropout(h, p) 却没传 training=self.training：eval() 时也在随机丢弃",
        _family(model_cls=EmbedDropoutAlwaysOnModel)),
    Bug("no_embed_dropout", "词嵌入之后没有 dropout（minimind：self.dropout(self.embed_tokens(input_ids))）",
        _family(model_cls=NoEmbedDropoutModel)),
    Bug("dropout_after_final_norm", "dropout 放错了地方：放在最后的 norm 之后、lm_head 之前，而不是词嵌入之后",
        _family(model_cls=DropoutAfterFinalNormModel)),
    Bug("block_dropout_in_eval", "块在注意力输出上又用了 F.dropout 且没传 training：eval() 时块也在随机丢弃",
        _family(block_cls=BlockDropoutInEval)),
    Bug("fresh_norm_in_forward", "在 forward 里新建了一个 RMSNorm 来归一化，而不是用块自己的 input_layernorm：学到的 weight 从没用上",
        _family(block_cls=FreshNormInForwardBlock)),
    # ---- generate 的参数（teaching.md §5.2）
    Bug("generate_without_eval", "generate 没有切到 eval()：带 dropout 的模型生成时还在随机丢弃，贪心生成也不确定",
        _family(lm_cls=_generating_lm(switch_to_eval=False))),
    Bug("generate_always_train_after", "generate 结束时一律 self.train()，而不是恢复调用前的模式（eval 进、train 出）",
        _family(lm_cls=_generating_lm(restore="always_train"))),
    Bug("temperature_ignored", "抽样时忘了除以 temperature：分布总是 softmax(logits)",
        _family(lm_cls=_generating_lm(use_temperature=False))),
    Bug("top_k_keeps_one_too_few", "top-k 截断时用了 logits <= 第 k 大的值：第 k 个也被丢掉，只剩 k-1 个",
        _family(lm_cls=_generating_lm(k_cmp="le"))),
    Bug("top_p_drops_boundary", "top-p 把累计概率 > p 的都丢了（没有右移一位）：让累计概率越过 p 的那个边界 token 也被丢掉",
        _family(lm_cls=_generating_lm(keep_boundary=False))),
    Bug("sampling_after_eos", "已经生成 eos 的行没有补 eos，还在继续抽样",
        _family(lm_cls=_generating_lm(pad_finished=False))),
    Bug("eos_zero_is_falsy", "用 `if eos_token_id:` 判断有没有 eos：eos_token_id=0 时被当成没有 eos",
        _family(lm_cls=_generating_lm(eos_check="truthy"))),
    Bug("no_early_stop", "所有行都生成过 eos 之后没有提前停止，一直补 eos 到 max_new_tokens",
        _family(lm_cls=_generating_lm(stop_early=False))),
]

