"""模块 06 的测试：dropout 在哪里丢、什么时候丢。

minimind 的 dropout（config.dropout，默认 0）只在三个地方：
- 词嵌入之后：MiniMindModel.forward 里 `hidden_states = self.dropout(self.embed_tokens(input_ids))`；
- 注意力的输出：Attention 里 o_proj 之后的 resid_dropout（模块 03）；
- FFN 的输出：FeedForward 里 down_proj 之后的 dropout（模块 04）。
块的 forward、层与层之间、最后的 norm 与 lm_head 之间都**没有** dropout。

这里检查：train() 下这三处真的按 p 丢弃（并按 1/(1-p) 放大），别处没有多丢；eval() 下任何一层都没有随机性
（两次前向逐位相同，且等于 dropout=0 的同一个模型）；带 dropout 的模型贪心生成是确定的。
"""
from __future__ import annotations

import math

import torch

from kata.config import MiniMindConfig
from kata.divergence import copy_weights
from kata.impl import resolve
from kata.testing import assert_close, require

torch.set_num_threads(1)

MODULE = "06_transformer_block"
BLOCK = "teaching.md §2（MiniMindBlock）"
MODEL = "teaching.md §3（MiniMindModel：词嵌入之后的 dropout）"
GEN = "teaching.md §5.2（生成时切到 eval()）"
ATTN_DROPOUT = "exercises/03_attention/teaching.md §4.1（输出投影后面的 resid_dropout）"
FFN_DROPOUT = "exercises/04_feedforward/teaching.md §2.2（down_proj 输出上的 dropout）"

P = 0.5                                   # 丢弃概率：丢掉的比例应在 P ± 0.2 之内（512 个元素时约 9 个标准差）
EXACT = dict(atol=1e-6, rtol=1e-5)        # 同一个模型、同样的计算：几乎逐位相同
TOL = dict(atol=1e-5, rtol=1e-4)


def _cfg(dropout=P, **kw) -> MiniMindConfig:
    base = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
                max_position_embeddings=64, dropout=dropout)
    return MiniMindConfig(**{**base, **kw})


def _randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5)


def _rope(seq_len, head_dim, base=1e6):
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    ang = torch.arange(seq_len, dtype=torch.float64)[:, None] * inv
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def _x(b, s, hidden, seed):
    return torch.randn(b, s, hidden, generator=torch.Generator().manual_seed(seed))


def _ids(b, s, vocab, seed):
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(seed))


def _capture(model, names):
    """记下每个子模块**第一次**被调用时的第一个输入与输出（输出是 tuple 时取第一个）。"""
    seen, handles = {}, []
    for name in names:
        def hook(mod, args, kwargs, output, _name=name):
            first = args[0] if args else next(iter(kwargs.values()))
            out = output[0] if isinstance(output, tuple) else output
            seen.setdefault(_name, (len(seen), first.detach().clone(), out.detach().clone()))
        handles.append(model.get_submodule(name).register_forward_hook(hook, with_kwargs=True))
    return seen, handles


def _run_captured(model, names, fn):
    seen, handles = _capture(model, names)
    try:
        out = fn()
    finally:
        for h in handles:
            h.remove()
    return seen, out


def _zero_fraction(t) -> float:
    return float((t == 0).double().mean())


def _first_random_site(model, names, fn) -> str:
    """同一个输入前向两次：第一个“输入相同、输出不同”的子模块，或“输出相同、下一个的输入却不同”的缝隙。"""
    a, _ = _run_captured(model, names, fn)
    b, _ = _run_captured(model, names, fn)
    order = sorted((n for n in names if n in a and n in b), key=lambda n: a[n][0])
    prev = None
    for n in order:
        _, in_a, out_a = a[n]
        _, in_b, out_b = b[n]
        if not torch.equal(in_a, in_b):
            return (f"{n} 收到的输入两次不同：随机性发生在{'它之前、' + prev + ' 之后' if prev else '它之前'}"
                    "（不在任何子模块里，而在你的 forward 本身）")
        if not torch.equal(out_a, out_b):
            return f"{n} 的输入两次相同、输出却不同：随机性在 {n} 里面"
        prev = n
    return "所有子模块的输入输出两次都相同：随机性在最后一个子模块之后"


# ---------------------------------------------------------------- 块

def test_block_eval_has_no_randomness(impl):
    cfg = _cfg()
    block = impl.MiniMindBlock(0, cfg)
    _randomize(block, 1)
    block.eval()
    x, pe = _x(2, 8, cfg.hidden_size, 1), _rope(8, cfg.head_dim)
    names = ["input_layernorm", "self_attn", "post_attention_layernorm", "mlp"]
    with torch.no_grad():
        a, b = block(x, pe)[0], block(x, pe)[0]
        if not torch.equal(a, b):
            where = _first_random_site(block, names, lambda: block(x, pe))
            require(False, f"config.dropout={P}、eval() 模式下，同一个输入过块两次，结果不同：eval 时不应有任何随机性。"
                           f"\n  {where}。\n  F.dropout(x, p) 的 training 参数默认是 True——用 nn.Dropout，"
                           "或者传 training=self.training", BLOCK)
        plain = impl.MiniMindBlock(0, _cfg(dropout=0.0))
        plain.load_state_dict(block.state_dict())
        plain.eval()
        want = plain(x, pe)[0]
    assert_close(a, want, **EXACT, what=f"eval() 下 dropout={P} 的块应与 dropout=0 的同一个块完全相同（eval 时 dropout 是恒等映射，"
                                        "也不做 1/(1-p) 缩放）", section=BLOCK)


def test_block_train_drops_only_attention_and_ffn_outputs(impl):
    cfg = _cfg()
    block = impl.MiniMindBlock(0, cfg)
    _randomize(block, 2)
    block.train()
    x, pe = _x(2, 8, cfg.hidden_size, 2), _rope(8, cfg.head_dim)
    names = ["input_layernorm", "self_attn", "post_attention_layernorm", "mlp"]
    torch.manual_seed(0)
    with torch.no_grad():
        seen, (out, _) = _run_captured(block, names, lambda: block(x, pe))
    require(set(seen) == set(names), f"train() 下块应调用 {names}，实际只调用了 {sorted(seen)}", BLOCK)
    _, ln1_in, ln1_out = seen["input_layernorm"]
    _, attn_in, a = seen["self_attn"]
    _, ln2_in, ln2_out = seen["post_attention_layernorm"]
    _, mlp_in, m = seen["mlp"]
    # 1. 块自己的 forward 里没有 dropout：数据流在 train() 下也严格是两个残差子层
    flow = [
        (ln1_in, x, "input_layernorm 的输入应是块的输入 x（块的入口不该有 dropout）"),
        (attn_in, ln1_out, "self_attn 的输入应是 input_layernorm(x)"),
        (ln2_in, x + a, "post_attention_layernorm 的输入应是 x + self_attn 的输出（残差相加处不该再有 dropout）"),
        (mlp_in, ln2_out, "mlp 的输入应是 post_attention_layernorm(h)"),
        (out, x + a + m, "块的输出应是 x + 注意力输出 + FFN 输出（块的出口不该再有 dropout）"),
    ]
    for got, want, what in flow:
        assert_close(got, want, **EXACT, what=f"train()、dropout={P} 时：{what}——minimind 的 dropout 只在注意力与 FFN "
                                              "的**内部输出**上，块的 forward 里没有 dropout", section=BLOCK)
    # 2. 注意力输出、FFN 输出上真的按 p 丢弃
    for name, got, inp, make, where in (
            ("self_attn", a, attn_in,
             lambda cls: cls(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, dropout=P,
                             qk_norm=cfg.qk_norm, eps=cfg.rms_norm_eps), ATTN_DROPOUT),
            ("mlp", m, mlp_in, lambda cls: cls(cfg.hidden_size, cfg.ffn_hidden_size, dropout=P), FFN_DROPOUT)):
        frac = _zero_fraction(got)
        if abs(frac - P) <= 0.2:
            continue
        sub = getattr(block, name)
        own = make(type(sub))   # 你的组件类，直接拿 dropout=P 构造：它自己会不会丢？
        own.load_state_dict(sub.state_dict())
        own.train()
        torch.manual_seed(0)
        with torch.no_grad():
            solo = own(inp, pe)[0] if name == "self_attn" else own(inp)
        if abs(_zero_fraction(solo) - P) <= 0.2:
            cause = (f"config.dropout 没有交给 {name}：直接用 dropout={P} 构造的 {type(sub).__name__} 会丢，块里的这个却不丢——"
                     + ("Attention(..., dropout=config.dropout, …)" if name == "self_attn"
                        else "FeedForward(hidden_size, intermediate_size, dropout=config.dropout)"))
            section = BLOCK
        else:
            cause = (f"你的 {type(sub).__name__} 即使用 dropout={P} 构造，train() 下输出也几乎没有被置零的元素"
                     f"（{_zero_fraction(solo):.0%}）：dropout 应在它的**输出**上")
            section = where
        require(False, f"train()、config.dropout={P} 时，{name} 的输出应有约 {P:.0%} 的元素被置零，实际 {frac:.0%}。\n  {cause}",
                section)
    # FFN：没被丢的元素应是 eval 输出的 1/(1-p) 倍（丢的是输出，不是中间的隐层）
    block.mlp.eval()
    with torch.no_grad():
        clean = block.mlp(mlp_in)
    block.mlp.train()
    kept = m != 0
    assert_close(m[kept], clean[kept] / (1 - P), **TOL,
                 what=f"train() 下 mlp 输出里没被丢弃的元素，应等于 eval 时的输出 ÷ (1-p)={1 - P:g}"
                      "（inverted dropout 作用在 down_proj 的输出上；丢在隐层上时对不上）", section=FFN_DROPOUT)


# ---------------------------------------------------------------- 整模型

def _lm_pair(impl, seed, dropout=P):
    """(dropout 为给定值的你的模型, dropout=0 的你的模型)，权重相同。"""
    ref = resolve(MODULE, "solutions").MiniMindForCausalLM(_cfg(dropout))
    _randomize(ref, seed)
    model = impl.MiniMindForCausalLM(_cfg(dropout))
    plain = impl.MiniMindForCausalLM(_cfg(0.0))
    for m in (model, plain):
        diff = copy_weights(m, ref)
        require(not (diff["missing"] or diff["unexpected"] or diff["shape"]),
                f"模型的 state_dict 与 minimind 的命名/形状不一致：多出 {diff['missing']}，缺少 {diff['unexpected']}，"
                f"形状不同 {diff['shape']}", MODEL)
    return model, plain


def _model_sites(cfg):
    return ["model.embed_tokens", *[f"model.layers.{i}" for i in range(cfg.num_hidden_layers)], "model.norm", "lm_head"]


def test_model_eval_has_no_randomness(impl):
    cfg = _cfg()
    model, plain = _lm_pair(impl, 3)
    model.eval()
    plain.eval()
    ids = _ids(2, 8, cfg.vocab_size, 3)
    with torch.no_grad():
        a, b = model(ids, labels=ids), model(ids, labels=ids)
        if not torch.equal(a.logits, b.logits):
            where = _first_random_site(model, _model_sites(cfg), lambda: model(ids))
            hint = "\n  F.dropout(x, p) 的 training 参数默认是 True：用 nn.Dropout，或者传 training=self.training"
            if "model.layers.0 收到的输入两次不同" in where:
                hint = ("\n  这正是词嵌入之后的 dropout：F.dropout(h, p) 没有传 training=self.training。"
                        "用 self.dropout = nn.Dropout(config.dropout)，forward 里 self.dropout(self.embed_tokens(ids))")
            require(False, f"config.dropout={P}、eval() 模式下，同一个输入前向两次，logits 不同：eval 时不应有任何随机性。"
                           f"\n  {where}。{hint}", MODEL)
        want = plain(ids, labels=ids)
    assert_close(a.logits, want.logits, **EXACT, what=f"eval() 下 dropout={P} 的模型应与 dropout=0 的同一个模型完全相同"
                                                      "（eval 时 dropout 是恒等映射）", section=MODEL)
    require(bool(a.loss == b.loss), "eval() 下两次算出的 loss 应完全相同", MODEL)


def test_model_train_drops_embeddings_and_nowhere_else(impl):
    cfg = _cfg()
    model, _ = _lm_pair(impl, 4)
    model.train()
    ids = _ids(2, 8, cfg.vocab_size, 4)
    names = _model_sites(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        seen, _ = _run_captured(model, names, lambda: model(ids))
    require(set(seen) == set(names), f"前向应依次调用 {names}，实际只调用了 {sorted(seen)}", MODEL)
    _, _, emb = seen["model.embed_tokens"]
    _, h0, _ = seen["model.layers.0"]
    problems = []
    # 别处不该再有 dropout：层与层之间、最后的 norm 前后、lm_head 之前
    chain = [(f"model.layers.{i}", f"model.layers.{i + 1}") for i in range(cfg.num_hidden_layers - 1)]
    chain += [(f"model.layers.{cfg.num_hidden_layers - 1}", "model.norm"), ("model.norm", "lm_head")]
    for src, dst in chain:
        got, want = seen[dst][1], seen[src][2]
        if got.shape != want.shape or not torch.allclose(got, want, **EXACT):
            zeros = _zero_fraction(got) - _zero_fraction(want)
            problems.append(f"{dst} 的输入不等于 {src} 的输出（多了 {zeros:.0%} 的零）：两者之间多了一次 dropout")
    if torch.equal(h0, emb):
        problems.append("layers.0 收到的正是没丢弃过的词向量：词嵌入之后少了 dropout（minimind："
                        "hidden_states = self.dropout(self.embed_tokens(input_ids))）")
    elif abs(_zero_fraction(h0) - P) > 0.2:
        problems.append(f"layers.0 的输入（词嵌入之后的 dropout）应有约 {P:.0%} 的元素被置零，实际 {_zero_fraction(h0):.0%}")
    require(not problems, f"train()、config.dropout={P} 时，dropout 应只在词嵌入之后（以及注意力、FFN 的内部输出上）：\n  "
                          + "\n  ".join(problems), MODEL)
    kept = h0 != 0
    assert_close(h0[kept], emb[kept] / (1 - P), **TOL,
                 what=f"layers.0 的输入里没被丢弃的元素应等于词向量 ÷ (1-p)={1 - P:g}（inverted dropout）", section=MODEL)


def test_dropout_zero_means_train_equals_eval(impl):
    cfg = _cfg(0.0)
    model, _ = _lm_pair(impl, 5, dropout=0.0)
    ids = _ids(2, 8, cfg.vocab_size, 5)
    with torch.no_grad():
        model.eval()
        want = model(ids).logits
        model.train()
        torch.manual_seed(0)
        got = model(ids).logits
    assert_close(got, want, **TOL, what="config.dropout=0 时，train() 与 eval() 的 logits 应相同：dropout 的概率要取自 "
                                        "config.dropout，不能写死", section=MODEL)


def test_greedy_generation_is_deterministic_with_dropout(impl):
    cfg = _cfg()
    model, _ = _lm_pair(impl, 6)
    prompt = _ids(2, 3, cfg.vocab_size, 6)
    model.train()
    torch.manual_seed(1)
    first = model.generate(prompt, max_new_tokens=6, temperature=0.0)
    require(model.training, "generate 之前模型是 train 模式，之后应恢复 train 模式", GEN)
    torch.manual_seed(2)
    second = model.generate(prompt, max_new_tokens=6, temperature=0.0)
    model.eval()
    ids = prompt
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    for got, name in ((first, "第一次"), (second, "第二次")):
        require(isinstance(got, torch.Tensor) and got.shape == ids.shape and torch.equal(got, ids),
                f"config.dropout={P} 的模型在 train() 模式下调用贪心生成（temperature=0），{name}的结果应等于 eval() 下"
                f"“每步整段前向取 argmax”：期望 {ids.tolist()}，实际 {got.tolist() if isinstance(got, torch.Tensor) else got}"
                "——generate 里要先 self.eval()（关掉 dropout），结束后再恢复原来的模式", GEN)
    model.eval()
    model.generate(prompt, max_new_tokens=2, temperature=0.0)
    require(not model.training, "generate 之前模型是 eval 模式，之后应仍是 eval 模式（恢复调用前的模式，而不是一律 train()）",
            GEN)
