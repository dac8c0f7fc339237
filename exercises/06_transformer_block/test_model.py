"""模块 06 的测试（下）：MiniMindModel 与 MiniMindForCausalLM。

分层（每一层都能失败）：
1. 契约：state_dict 的键与 minimind 完全相同；RoPE 表是非持久 buffer；输出的字段与形状；
   参数量等于闭式公式，MiniMind2-small 配置下正好是 25,829,888（REFERENCES：minimind README）；
   权重共享是真的共享（同一块存储）；
2. 与参考实现对比（同一份权重）——不一致时逐层比对，点名第一个算错的子模块（layers.1.self_attn、norm…）；
3. 独立参考：损失 = 右移一位、忽略 -100 的平均交叉熵（float64 手算）；初始 loss ≈ ln(vocab)；
   最后一层之后的隐状态每个 token 的均方根 ≈ 1；
4. 性质：端到端因果；KV cache 逐 token 解码 ≡ 整段前向；左侧 padding 的 batch ≡ 逐条单独算；梯度到达每个参数；
5. 生成：带 cache 的贪心生成与不带 cache 的逐 token 相同，也与“每步整段前向取 argmax”相同；eos；top-k / top-p。
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import Phase, given, settings, strategies as st

from kata.config import MiniMindConfig
from kata.divergence import assert_close_with_report, compare_modules, copy_weights, fail_with_report
from kata.impl import resolve
from kata.testing import assert_close, require

# 这里的张量都很小：多线程只有同步开销，机器忙时一次前向能慢十几倍。单线程更快也更稳
torch.set_num_threads(1)

MODULE = "06_transformer_block"
MODEL = "teaching.md §3（MiniMindModel：嵌入、RoPE 表、逐层、最后的 norm）"
LM = "teaching.md §4（MiniMindForCausalLM：lm_head、权重共享、损失）"
CACHE = "teaching.md §5（KV cache 与生成）"
VERIFY = "teaching.md §6（如何验证）"

# 容差只在这里写一次，每个都有理由
TOL = dict(atol=1e-5, rtol=1e-4)     # float32 两层小模型：注意力的融合核与手写路径累加顺序不同，差几个 ulp
PAD_TOL = dict(atol=2e-5, rtol=1e-4)  # padding 走带掩码的路径，和无 padding 的快速路径比，误差略大
LOSS_TOL = dict(atol=1e-6, rtol=1e-6)  # 交叉熵是一个标量均值：float32 与 float64 手算只差舍入
MINIMIND2_SMALL_PARAMS = 25_829_888   # minimind README：MiniMind2-small 25.8M（hidden 512、8 层、权重共享）

VARIANTS = [  # (hidden, 头数, KV 头数, 层数)
    (32, 4, 2, 2),
    (32, 4, 4, 1),
    (48, 4, 1, 2),
    (32, 2, 2, 3),
]
seeds = st.integers(0, 2**31 - 1)
# 这些性质测试失败时不做 shrink（缩小反例）：每个失败的样例都要重建模型、做逐层比对和 bug 比对，
# 缩小几十次要花好几秒；而这里的反例本来就只是“某个随机种子 + 很小的形状”，缩小了也不会更好懂。
# （只覆盖 phases，样例个数仍由配置档决定：learner 6 个，ci 60 个。）
no_shrink = settings(phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])



def _diagnose(impl, run) -> dict:
    """失败时拿 bug bank 逐个比对（“你的输出与『…』一致”）所需的参数。被测的本身就是 bug bank 里的错误实现时
    （--bug-bank 自检）不做这一步：自检只需要证明测试会失败，而每次比对要把几十个错误实现各跑一遍。"""
    return {} if str(getattr(impl, "_impl", "")).startswith("bug:") else dict(module=MODULE, run=run)

def _cfg(hidden=32, heads=4, kv=2, layers=2, vocab=50, **kw) -> MiniMindConfig:
    return MiniMindConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=64, **kw)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """确定性地重设全部参数：矩阵 ~ N(0, 1/fan_in)，向量（norm 的 weight）~ U(0.5, 1.5)。
    词嵌入（与 lm_head 共享时也是它）按最后一维 hidden 缩放，logits 量级适中。"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5)


def _ids(b, s, vocab, seed):
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(seed))


def _pair(ns, cfg, seed, check=True):
    """(你的模型, 参考模型)，权重相同（取自参考模型的随机权重）。"""
    ref = resolve(MODULE, "solutions").MiniMindForCausalLM(cfg)
    _randomize(ref, seed)
    mine = ns.MiniMindForCausalLM(cfg)
    diff = copy_weights(mine, ref)
    if not check and (diff["missing"] or diff["unexpected"] or diff["shape"]):
        # 给 bug bank 比对用（kata.testing.matching_bugs）：形状对不上的错误实现只是“不一致”，
        # 不能让 pytest.fail 从比对里漏出来、顶替掉真正的失败信息
        raise ValueError(f"state_dict 不一致：{diff}")
    require(not (diff["missing"] or diff["unexpected"] or diff["shape"]),
            f"模型的 state_dict 与 minimind 的命名/形状不一致：你多出来的键 {diff['missing']}，"
            f"你缺少的键 {diff['unexpected']}，形状不同 {diff['shape']}", MODEL)
    mine.eval()
    ref.eval()
    return mine, ref


def _logits_runner(cfg, seed, ids, **kw):
    def run(ns):
        with torch.no_grad():
            return _pair(ns, cfg, seed, check=False)[0](ids, **kw).logits
    return run


def _expected_keys(cfg) -> set:
    keys = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        keys |= {p + f"self_attn.{w}_proj.weight" for w in "qkvo"}
        keys |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        keys |= {p + f"mlp.{w}_proj.weight" for w in ("gate", "up", "down")}
        if cfg.qk_norm:
            keys |= {p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"}
    return keys


def expected_parameter_count(cfg: MiniMindConfig) -> int:
    """闭式公式（与实现无关）：嵌入 V·h；每层 q、o 各 h·h，k、v 各 h·(KVH·head_dim)，FFN 3·h·f，两个 norm 2h；
    最后的 norm h；不共享时 lm_head 再加 V·h。"""
    h, v, f = cfg.hidden_size, cfg.vocab_size, cfg.ffn_hidden_size
    kv = cfg.num_key_value_heads * cfg.head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h + (2 * cfg.head_dim if cfg.qk_norm else 0)
    return v * h + cfg.num_hidden_layers * per_layer + h + (0 if cfg.tie_word_embeddings else v * h)


@contextlib.contextmanager
def _skip_weight_init():
    """暂时让 nn.Linear / nn.Embedding 不做随机初始化（权重是未初始化的内存，只能用来数参数）。"""
    saved = torch.nn.Linear.reset_parameters, torch.nn.Embedding.reset_parameters
    torch.nn.Linear.reset_parameters = torch.nn.Embedding.reset_parameters = lambda self: None
    try:
        yield
    finally:
        torch.nn.Linear.reset_parameters, torch.nn.Embedding.reset_parameters = saved


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())   # parameters() 对共享的参数只数一次


# ---------------------------------------------------------------- 1. 契约

def test_state_dict_keys_match_minimind(impl):
    cfg = _cfg(layers=2)
    model = impl.MiniMindForCausalLM(cfg)
    model(_ids(1, 4, cfg.vocab_size, 0))
    keys, expected = set(model.state_dict()), _expected_keys(cfg)
    require(keys == expected,
            f"state_dict 的键与 minimind 不一致：缺少 {sorted(expected - keys)}，多出 {sorted(keys - expected)}"
            "（RoPE 表应当是 persistent=False 的 buffer，不进 state_dict）", MODEL)
    for name in ("model", "lm_head"):
        require(isinstance(getattr(model, name, None), torch.nn.Module), f"MiniMindForCausalLM 应该有子模块 {name}", LM)
    for name in ("embed_tokens", "layers", "norm"):
        require(isinstance(getattr(model.model, name, None), torch.nn.Module), f"MiniMindModel 应该有子模块 {name}", MODEL)
    require(isinstance(model.model.layers, torch.nn.ModuleList) and len(model.model.layers) == cfg.num_hidden_layers,
            f"model.layers 应是长度为 num_hidden_layers={cfg.num_hidden_layers} 的 nn.ModuleList", MODEL)
    require(all(getattr(layer, "layer_id", None) == i for i, layer in enumerate(model.model.layers)),
            "第 i 层应当是 MiniMindBlock(i, config)（layer_id 依次为 0, 1, …）", MODEL)


def test_rope_tables_are_non_persistent_buffers(impl):
    cfg = _cfg()
    model = impl.MiniMindModel(cfg)
    model(_ids(1, 3, cfg.vocab_size, 0))
    buffers = dict(model.named_buffers())
    require("freqs_cos" in buffers and "freqs_sin" in buffers,
            f"MiniMindModel 应该用 register_buffer 登记 freqs_cos / freqs_sin，实际 buffer：{sorted(buffers)}", MODEL)
    shape = (cfg.max_position_embeddings, cfg.head_dim)
    for name in ("freqs_cos", "freqs_sin"):
        require(tuple(buffers[name].shape) == shape,
                f"{name} 期望形状 {shape}（max_position_embeddings × head_dim），实际 {tuple(buffers[name].shape)}", MODEL)
        require(name not in model.state_dict(), f"{name} 不应出现在 state_dict 里：register_buffer(..., persistent=False)",
                MODEL)
    # 独立参考：float64 的 cos(m·θ_i)，θ_i = rope_theta^(-2i/D)，half-split 布局（前后两半相同）
    inv = cfg.rope_theta ** (-torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
    ang = torch.arange(cfg.max_position_embeddings, dtype=torch.float64)[:, None] * inv
    ang = torch.cat([ang, ang], dim=-1)
    assert_close(buffers["freqs_cos"].double(), ang.cos(), atol=1e-5, rtol=0, check_dtype=False,
                 what="freqs_cos 应为 precompute_freqs_cis(head_dim, max_position_embeddings, rope_theta) 的 cos 表",
                 section=MODEL)
    assert_close(buffers["freqs_sin"].double(), ang.sin(), atol=1e-5, rtol=0, check_dtype=False,
                 what="freqs_sin 应为 precompute_freqs_cis(head_dim, max_position_embeddings, rope_theta) 的 sin 表",
                 section=MODEL)


def test_parameter_count_minimind2_small(impl):
    cfg = MiniMindConfig()   # MiniMind2-small：hidden 512、8 层、8/2 头、词表 6400、权重共享
    with _skip_weight_init():   # 只数参数：2580 万个参数的随机初始化要近一秒，这里用不上
        model = impl.MiniMindForCausalLM(cfg)
    n = _count(model)
    require(expected_parameter_count(cfg) == MINIMIND2_SMALL_PARAMS, "（测试自检）闭式公式与 25,829,888 不一致", VERIFY)
    hint = ""
    if n == MINIMIND2_SMALL_PARAMS + cfg.vocab_size * cfg.hidden_size:
        hint = f"——正好多了 vocab×hidden = {cfg.vocab_size * cfg.hidden_size:,}：lm_head 没有和 embed_tokens 共享权重"
    require(n == MINIMIND2_SMALL_PARAMS,
            f"MiniMind2-small 配置（MiniMindConfig() 的默认值）的参数量应为 {MINIMIND2_SMALL_PARAMS:,}，实际 {n:,}{hint}", LM)


@pytest.mark.parametrize("kw", [
    dict(tie_word_embeddings=True),
    dict(tie_word_embeddings=False),
    dict(hidden=48, heads=4, kv=1, layers=3),
    dict(intermediate_size=40),
    dict(qk_norm=True),
], ids=["tied", "untied", "mqa_3layers", "intermediate_size", "qk_norm"])
def test_parameter_count_matches_closed_form(impl, kw):
    cfg = _cfg(**kw)
    model = impl.MiniMindForCausalLM(cfg)
    n, want = _count(model), expected_parameter_count(cfg)
    require(n == want, f"参数量应为 {want:,}（闭式公式：V·h + L·(2h² + 2h·KVH·d + 3h·f + 2h) + h"
                       f"{'' if cfg.tie_word_embeddings else ' + V·h（不共享）'}），实际 {n:,}；配置 {kw}", LM)


def test_tied_embeddings_share_storage(impl):
    model = impl.MiniMindForCausalLM(_cfg(tie_word_embeddings=True))
    emb, head = model.model.embed_tokens.weight, model.lm_head.weight
    require(emb.data_ptr() == head.data_ptr() and emb.shape == head.shape,
            "tie_word_embeddings=True 时 lm_head.weight 与 model.embed_tokens.weight 应当是同一个 Parameter"
            "（共享存储，而不是数值相同的两份拷贝）：self.model.embed_tokens.weight = self.lm_head.weight", LM)
    with torch.no_grad():
        head[3, 0] += 1.0
    require(bool(emb[3, 0] == head[3, 0]), "改了 lm_head.weight，embed_tokens.weight 没跟着变：两者不是同一块存储", LM)
    untied = impl.MiniMindForCausalLM(_cfg(tie_word_embeddings=False))
    require(untied.model.embed_tokens.weight.data_ptr() != untied.lm_head.weight.data_ptr(),
            "tie_word_embeddings=False 时两者应当是各自独立的矩阵", LM)


def test_forward_output_contract(impl):
    cfg = _cfg()
    model = impl.MiniMindForCausalLM(cfg)
    ids = _ids(2, 6, cfg.vocab_size, 1)
    out = model(ids)
    for field in ("logits", "loss", "past_key_values"):
        require(hasattr(out, field), f"forward 的返回值应有字段 {field}（用写好的 CausalLMOutput）", LM)
    require(isinstance(out.logits, torch.Tensor) and tuple(out.logits.shape) == (2, 6, cfg.vocab_size),
            f"logits 期望形状 (2, 6, {cfg.vocab_size})，实际 {getattr(out.logits, 'shape', out.logits)}", LM)
    require(out.loss is None, "没有给 labels 时 loss 应为 None", LM)
    pkv = out.past_key_values
    require(pkv is None or all(p is None for p in pkv), "use_cache=False 时 past_key_values 应为 None", CACHE)
    out = model(ids, use_cache=True)
    pkv = out.past_key_values
    shape = (2, 6, cfg.num_key_value_heads, cfg.head_dim)
    ok = isinstance(pkv, (list, tuple)) and len(pkv) == cfg.num_hidden_layers and all(
        isinstance(p, tuple) and len(p) == 2 and all(tuple(t.shape) == shape for t in p) for p in pkv)
    require(ok, f"use_cache=True 时 past_key_values 应为每层一个 (k, v) 的列表（{cfg.num_hidden_layers} 层，"
                f"k、v 各 {shape}）", CACHE)
    hidden, presents = impl.MiniMindModel(cfg)(ids)
    require(isinstance(hidden, torch.Tensor) and tuple(hidden.shape) == (2, 6, cfg.hidden_size),
            f"MiniMindModel.forward 应返回 (hidden_states [2, 6, {cfg.hidden_size}], presents)", MODEL)


# ---------------------------------------------------------------- 2. 与参考实现对比（逐层比对）

@no_shrink
@given(seeds, st.sampled_from(VARIANTS), st.integers(1, 3), st.integers(1, 10))
def test_model_matches_reference_layer_by_layer(impl, seed, variant, b, s):
    hidden, heads, kv, layers = variant
    cfg = _cfg(hidden, heads, kv, layers)
    mine, ref = _pair(impl, cfg, seed)
    ids = _ids(b, s, cfg.vocab_size, seed)
    with torch.no_grad():
        out, expected = mine(ids).logits, ref(ids).logits
    assert_close_with_report(
        out, expected, mine=mine, reference=ref, probe=lambda m: m(ids).logits, **TOL,
        what=f"logits 与参考实现对比（同一份权重；hidden={hidden}，{layers} 层，{heads}/{kv} 头，ids 形状 {tuple(ids.shape)}）",
        section=MODEL, **_diagnose(impl, _logits_runner(cfg, seed, ids)))


# ---------------------------------------------------------------- 3. 独立参考

def _shifted_ce_float64(logits, labels):
    """独立参考：logits[:, t] 预测 labels[:, t+1]；-100 不计入。float64 的 log_softmax + gather。"""
    logp = torch.log_softmax(logits.detach().double()[:, :-1], dim=-1)
    target = labels[:, 1:]
    keep = target != -100
    picked = logp.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)
    return -(picked[keep]).mean()


@pytest.mark.parametrize("case", ["labels_are_inputs", "random_labels_with_ignore"])
def test_loss_is_shifted_cross_entropy_with_ignore_index(impl, case):
    cfg = _cfg()
    mine, _ = _pair(impl, cfg, 21)
    ids = _ids(3, 9, cfg.vocab_size, 21)
    labels = ids.clone() if case == "labels_are_inputs" else _ids(3, 9, cfg.vocab_size, 22)
    if case == "random_labels_with_ignore":
        labels[0, :4] = -100          # 例如“提示词部分不计 loss”
        labels[2, 5:] = -100          # 例如右侧 padding
    with torch.no_grad():
        out = mine(ids, labels=labels)
    require(isinstance(out.loss, torch.Tensor) and out.loss.dim() == 0,
            f"给了 labels 时 loss 应是一个标量张量，实际 {out.loss!r}", LM)
    expected = _shifted_ce_float64(out.logits, labels)
    unshifted = F.cross_entropy(out.logits.double().reshape(-1, cfg.vocab_size), labels.reshape(-1), ignore_index=-100)
    hint = "（你的 loss 等于没有右移时的交叉熵：logits 要去掉最后一个位置，labels 要去掉第一个位置）" \
        if abs(float(out.loss) - float(unshifted)) < 1e-5 else ""
    assert_close(out.loss.double(), expected, **LOSS_TOL, check_dtype=False,
                 what=f"loss 应为右移一位、忽略 -100 的平均交叉熵（float64 手算）{hint}", section=LM)


def test_loss_at_init_is_close_to_ln_vocab(impl):
    # 刚初始化的模型还什么都不知道：每个 token 的概率都≈1/V，交叉熵≈ln V。
    # MiniMind2 的初始化（共享矩阵来自 nn.Linear，量级 1/√hidden）下，实测比 ln V 高 0.0–0.3。
    losses = []
    for seed, (hidden, vocab) in enumerate([(32, 50), (64, 50), (32, 200)]):
        torch.manual_seed(seed)
        cfg = _cfg(hidden=hidden, heads=4, kv=2, vocab=vocab)
        model = impl.MiniMindForCausalLM(cfg)
        ids = _ids(4, 16, vocab, seed)
        with torch.no_grad():
            loss = float(model(ids, labels=ids).loss)
        losses.append((vocab, hidden, loss))
    bad = [(v, h, l) for v, h, l in losses if not abs(l - math.log(v)) < 0.5]
    if any(l < math.log(v) for v, h, l in bad):
        why = ("明显低于 ln V：一个还没训练的模型不可能比瞎猜还好——多半是 labels 没有右移，"
               "模型在“预测它自己正看着的 token”（输入的词向量经残差一路传到输出，这件事在初始化时就能做到几分）")
    else:
        why = ("远高于 ln V 通常是初始 logits 太大：共享权重的方向反了（lm_head 用上了 nn.Embedding 的 N(0,1) 初始化，"
               "logits 大约放大 √hidden 倍），或者块的结构让词向量直接冲到了输出")
    require(not bad, "刚初始化时的 loss 应当接近 ln(vocab)（差不到 0.5）："
            + "；".join(f"vocab={v}, hidden={h}: loss {l:.3f} vs ln V {math.log(v):.3f}" for v, h, l in bad)
            + "。" + why, LM)


def test_final_hidden_states_are_normalised(impl):
    cfg = _cfg()
    model = impl.MiniMindModel(cfg)   # 新建的模型：最后一个 norm 的 weight 全是 1
    _randomize_matrices_only(model, 31)
    ids = _ids(2, 7, cfg.vocab_size, 31)
    with torch.no_grad():
        hidden, _ = model(ids)
    rms = hidden.double().pow(2).mean(-1).sqrt()
    assert_close(rms, torch.ones_like(rms), atol=1e-3, rtol=0, check_dtype=False,
                 what="MiniMindModel 的输出（最后一个 norm 之后、weight 全 1）每个 token 的均方根应≈1"
                      "——不是的话，最后的 self.norm 没有用上", section=MODEL)


def _randomize_matrices_only(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[-1]))


# ---------------------------------------------------------------- 4. 性质

def _fail_property(msg_what, got, want, tol, section, mine, ref, probe):
    assert_close_with_report(got, want, mine=mine, reference=ref, probe=probe, **tol, what=msg_what, section=section)


@no_shrink
@given(seeds, st.integers(2, 10))
def test_model_is_causal_end_to_end(impl, seed, s):
    cfg = _cfg()
    mine, ref = _pair(impl, cfg, seed)
    t = 1 + seed % (s - 1)
    ids = _ids(2, s, cfg.vocab_size, seed)
    ids2 = ids.clone()
    ids2[:, t:] = (ids[:, t:] + 1 + _ids(2, s - t, cfg.vocab_size - 1, seed + 1)) % cfg.vocab_size  # 每个都换掉
    with torch.no_grad():
        a, b = mine(ids).logits, mine(ids2).logits
    _fail_property(f"把第 {t} 个及以后的 token 换掉之后，位置 0…{t - 1} 的 logits（端到端因果：过去看不到未来）",
                   b[:, :t], a[:, :t], TOL, MODEL, mine, ref, lambda m: m(ids2).logits)


@pytest.mark.parametrize("prefix,layers", [(1, 2), (5, 2), (3, 1)], ids=["prefix1", "prefix5", "one_layer"])
def test_kv_cache_decoding_matches_full_forward(impl, prefix, layers):
    cfg = _cfg(layers=layers)   # 一层的模型：cache 长度要从第 0 层读（past_key_values[1] 不存在）
    mine, ref = _pair(impl, cfg, 41)
    ids = _ids(2, 9, cfg.vocab_size, 41)
    with torch.no_grad():
        full = mine(ids).logits
        out = mine(ids[:, :prefix], use_cache=True)
        pieces, past = [out.logits], out.past_key_values
        for t in range(prefix, ids.shape[1]):
            out = mine(ids[:, t:t + 1], past_key_values=past, use_cache=True)
            pieces.append(out.logits)
            past = out.past_key_values
    got = torch.cat(pieces, dim=1)
    require(isinstance(past, (list, tuple)) and past[0] is not None and past[0][0].shape[1] == ids.shape[1],
            f"逐 token 解码到最后，cache 里应有 {ids.shape[1]} 个位置：每一步都要把新的 k、v 拼到 cache 上", CACHE)

    def probe(m):  # 逐层比对：看最后一步（带 cache）哪里开始不同
        o = m(ids[:, :-1], use_cache=True)
        return m(ids[:, -1:], past_key_values=o.past_key_values, use_cache=True).logits

    _fail_property(f"先用 KV cache 算前 {prefix} 个 token、再逐个 token 解码，logits 应当与整段一次前向相同"
                   "（新 token 的 RoPE 位置要从 cache 长度处切起；每层用自己那一层的 cache）",
                   got, full, TOL, CACHE, mine, ref, probe)


def test_sequence_up_to_max_position_embeddings(impl):
    cfg = MiniMindConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=50, max_position_embeddings=12)
    mine, ref = _pair(impl, cfg, 45)
    ids = _ids(2, 12, cfg.vocab_size, 45)
    with torch.no_grad():
        got, want = mine(ids).logits, ref(ids).logits     # 正好 max_position_embeddings 个位置：合法
        _fail_property("长度正好等于 max_position_embeddings（12）的序列应能正常前向（位置 0…11 都在 RoPE 表里）",
                       got, want, TOL, MODEL, mine, ref, lambda m: m(ids).logits)
        past = mine(ids[:, :11], use_cache=True).past_key_values
        step = mine(ids[:, 11:], past_key_values=past, use_cache=True).logits   # 用 cache 解码到最后一个位置
    _fail_property("带 cache 解码到第 max_position_embeddings 个位置（位置 11）也应合法，且等于整段前向",
                   step, want[:, -1:], TOL, CACHE, mine, ref, lambda m: m(ids).logits[:, -1:])
    longer = _ids(1, 13, cfg.vocab_size, 46)
    raised = None
    try:
        with torch.no_grad():
            mine(longer)
    except NotImplementedError:
        raise
    except Exception as exc:   # ValueError（参考实现）或 RoPE 表切短了之后的形状错误，都算“没有悄悄算下去”
        raised = exc
    require(raised is not None, "序列（13 个位置）超过 max_position_embeddings=12 时应报错：RoPE 表里没有位置 12，"
                                "不能悄悄算下去", MODEL)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_single_sequences(impl, side):
    cfg = _cfg()
    mine, ref = _pair(impl, cfg, 51)
    lengths, width, pad_id = [7, 3, 5], 7, 0
    seqs = [_ids(1, n, cfg.vocab_size, 51 + i)[0] for i, n in enumerate(lengths)]
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, sq in enumerate(seqs):
        sl = slice(width - len(sq), width) if side == "left" else slice(0, len(sq))
        ids[i, sl], mask[i, sl] = sq, 1
    with torch.no_grad():
        batched = mine(ids, attention_mask=mask).logits
        for i, sq in enumerate(seqs):
            single = mine(sq[None]).logits[0]
            sl = slice(width - len(sq), width) if side == "left" else slice(0, len(sq))
            _fail_property(f"{'左' if side == 'left' else '右'}侧 padding 的 batch 里第 {i} 条（长 {len(sq)}）真实 token 的 logits，"
                           "应与这条序列单独计算时相同（attention_mask 要交给每一层，padding 不能被注意到）",
                           batched[i, sl], single, PAD_TOL, CACHE if side == "left" else MODEL, mine, ref,
                           lambda m: m(ids, attention_mask=mask).logits)


def test_gradients_reach_every_parameter(impl):
    cfg = _cfg()
    mine, _ = _pair(impl, cfg, 61)
    mine.train()
    ids = _ids(2, 8, cfg.vocab_size, 61)
    out = mine(ids, labels=ids)
    out.loss.backward()
    missing = [n for n, p in mine.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or float(p.grad.abs().sum()) == 0.0]
    require(not missing, f"反向传播之后这些参数没有（有限的、非零的）梯度：{missing}——计算图在某处断了", LM)


# ---------------------------------------------------------------- 5. 生成

def _greedy_by_full_forward(model, ids, n):
    """独立参考：每一步都把整段序列过一遍，取最后一个位置的 argmax。"""
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    return ids


def _first_difference(a, b) -> str:
    if a.shape != b.shape:
        return f"形状不同：{tuple(a.shape)} vs {tuple(b.shape)}"
    diff = (a != b).nonzero()
    if not len(diff):
        return ""
    r, c = (int(v) for v in diff[0])
    return f"第 {r} 条序列的第 {c} 个位置：{int(a[r, c])} vs {int(b[r, c])}"


@pytest.mark.parametrize("seed", [71, 72])
def test_greedy_generation_with_cache_equals_without(impl, seed):
    cfg = _cfg()
    mine, ref = _pair(impl, cfg, seed)
    prompt = _ids(2, 4, cfg.vocab_size, seed)
    n = 10
    with_cache = mine.generate(prompt, max_new_tokens=n, temperature=0.0, use_cache=True)
    without = mine.generate(prompt, max_new_tokens=n, temperature=0.0, use_cache=False)
    manual = _greedy_by_full_forward(mine, prompt, n)
    for got, name in ((without, "use_cache=False"), (with_cache, "use_cache=True")):
        where = _first_difference(got, manual)
        if where:
            report = compare_modules(mine, ref, lambda m: m(
                manual[:, -1:], past_key_values=m(manual[:, :-1], use_cache=True).past_key_values,
                use_cache=True).logits, **TOL) if name == "use_cache=True" else None
            fail_with_report(f"贪心生成（temperature=0，{name}）应与“每一步整段前向、取 argmax”逐 token 相同；"
                             f"第一处不同在 {where}（你的 vs 参考做法）\n  → 见 {CACHE}", report)


def test_generate_contract(impl):
    cfg = _cfg()
    mine, _ = _pair(impl, cfg, 81)
    mine.train()
    prompt = _ids(2, 3, cfg.vocab_size, 81)
    prompt_copy = prompt.clone()
    out = mine.generate(prompt, max_new_tokens=5, temperature=0.0)
    require(isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 8) and out.dtype == torch.long,
            f"generate 应返回 [B, S + max_new_tokens] 的整数张量，期望 (2, 8) int64，实际 "
            f"{(tuple(out.shape), out.dtype) if isinstance(out, torch.Tensor) else out}", CACHE)
    require(torch.equal(out[:, :3], prompt_copy) and torch.equal(prompt, prompt_copy),
            "generate 的输出应以原样的 input_ids 开头（也不要原地改动 input_ids）", CACHE)
    require(mine.training, "generate 之后模型应回到调用前的 train 模式（生成时切 eval，结束后恢复）", CACHE)
    require(not out.requires_grad, "generate 不应该构建计算图（@torch.no_grad()）", CACHE)


def test_generate_stops_at_eos(impl):
    cfg = _cfg()
    mine, _ = _pair(impl, cfg, 91)
    prompt = _ids(1, 4, cfg.vocab_size, 91)
    greedy = _greedy_by_full_forward(mine, prompt, 6)[0, 4:]
    eos = int(greedy[2])
    k = int((greedy == eos).nonzero()[0])          # eos 第一次出现在第 k 个新 token
    out = mine.generate(prompt, max_new_tokens=6, temperature=0.0, eos_token_id=eos)
    require(tuple(out.shape) == (1, 4 + k + 1) and int(out[0, -1]) == eos,
            f"生成出 eos（id {eos}）之后应立即停止：期望长度 {4 + k + 1}、以 eos 结尾，实际 {tuple(out.shape)} "
            f"{out[0, 4:].tolist()}", CACHE)
    other = _ids(1, 4, cfg.vocab_size, 92)
    both = mine.generate(torch.cat([prompt, other]), max_new_tokens=6, temperature=0.0, eos_token_id=eos)
    if both.shape[1] == 10:   # 另一条没结束：已结束的那条之后只能补 eos
        require(bool((both[0, 4 + k:] == eos).all()),
                f"batch 里已经生成过 eos 的序列，之后应一律补 eos，实际 {both[0, 4:].tolist()}", CACHE)


def test_top_k_and_top_p_sampling(impl):
    cfg = _cfg()
    mine, _ = _pair(impl, cfg, 101)
    prompt = _ids(2, 4, cfg.vocab_size, 101)
    greedy = mine.generate(prompt, max_new_tokens=6, temperature=0.0)
    torch.manual_seed(0)
    k1 = mine.generate(prompt, max_new_tokens=6, temperature=1.0, top_k=1)
    where = _first_difference(k1, greedy)
    require(not where, f"top_k=1 的抽样只能选最大的那个 token，应与贪心相同；第一处不同在 {where}", CACHE)
    torch.manual_seed(0)
    p0 = mine.generate(prompt, max_new_tokens=6, temperature=1.0, top_p=1e-6)
    where = _first_difference(p0, greedy)
    require(not where, f"top_p 极小（1e-6）时只保留概率最大的 token，应与贪心相同；第一处不同在 {where}", CACHE)
    torch.manual_seed(1)
    sampled = mine.generate(prompt, max_new_tokens=8, temperature=1.5, top_k=3)
    with torch.no_grad():
        for t in range(4, sampled.shape[1]):
            top3 = mine(sampled[:, :t]).logits[:, -1].topk(3).indices
            ok = (top3 == sampled[:, t:t + 1]).any(-1)
            require(bool(ok.all()), f"top_k=3 时第 {t} 个位置抽到的 token {sampled[:, t].tolist()} 不在概率最大的 3 个 "
                                    f"{top3.tolist()} 里", CACHE)
