"""模块 06 的测试（上）：MiniMindBlock。

分层（每一层都能失败）：
1. 契约：子模块名字、state_dict 的键、返回 (out, present) 与形状；
2. 结构：子模块的调用顺序与数据流是 Pre-Norm；输出等于用它**自己的**子模块按公式算出来的结果；
   把两个子层的输出投影清零，块就是恒等映射；
3. 与参考实现对比（同一份权重，hypothesis 抽配置、形状和权重）——不一致时做逐层比对，点名第一个算错的子模块；
4. 性质：因果（改未来的输入，过去的输出不变）、KV cache ≡ 整段前向、梯度到达每个参数。

你的块用的是你自己的 RMSNorm / Attention / FeedForward（模块 01、03、04）。它们有问题时，
失败信息会指向那个模块；RoPE 的 (cos, sin) 在这里由测试自己用 float64 公式算好传进去。
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import Phase, given, settings, strategies as st

from kata.config import MiniMindConfig
from kata.divergence import assert_close_with_report, copy_weights
from kata.impl import resolve
from kata.testing import assert_close, require

# 这里的张量都很小（hidden ≤ 48）：多线程只有同步开销，机器忙时一次前向能慢十几倍。单线程更快也更稳
torch.set_num_threads(1)

MODULE = "06_transformer_block"
BLOCK = "teaching.md §2（MiniMindBlock：两个 Pre-Norm 残差子层）"
VERIFY = "teaching.md §6（如何验证）"

# 容差只在这里写一次，每个都有理由
TOL = dict(atol=1e-5, rtol=1e-4)          # float32，注意力可能走融合核或手写路径，累加顺序不同会差几个 ulp
EXACT = dict(atol=1e-6, rtol=1e-6)         # 同一个模型、同样的计算，只是分两次算：应当几乎逐位相同
VARIANTS = [  # (hidden, 头数, KV 头数, qk_norm)
    (32, 4, 2, False),
    (32, 4, 4, False),
    (48, 4, 1, False),
    (32, 2, 1, True),
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

def _cfg(hidden=32, heads=4, kv=2, qk_norm=False, **kw) -> MiniMindConfig:
    return MiniMindConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=heads,
                          num_key_value_heads=kv, vocab_size=50, max_position_embeddings=64, qk_norm=qk_norm, **kw)


def _rope(seq_len: int, head_dim: int, start: int = 0, base: float = 1e6):
    """独立的 RoPE 表（float64 公式，half-split 布局）：第 i 对维度的角度 m·base^(-2i/D)。"""
    inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(start, start + seq_len, dtype=torch.float64)[:, None] * inv
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """确定性地重设全部参数：矩阵 ~ N(0, 1/fan_in)，向量（norm 的 weight）~ U(0.5, 1.5)——不是全 1，
    这样“忘了乘 weight”“两个 norm 用混了”都看得出来。"""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5)


def _x(b, s, hidden, seed):
    return torch.randn(b, s, hidden, generator=torch.Generator().manual_seed(seed))


def _pair(ns, cfg, seed, layer_id=0, check=True):
    """(你的块, 参考块)，权重相同（取自参考块的随机权重）。"""
    ref = resolve(MODULE, "solutions").MiniMindBlock(layer_id, cfg)
    _randomize(ref, seed)
    mine = ns.MiniMindBlock(layer_id, cfg)
    diff = copy_weights(mine, ref)
    if not check and (diff["missing"] or diff["unexpected"] or diff["shape"]):
        # 给 bug bank 比对用（kata.testing.matching_bugs）：形状对不上的错误实现只是“不一致”，
        # 不能让 pytest.fail 从比对里漏出来、顶替掉真正的失败信息
        raise ValueError(f"state_dict 不一致：{diff}")
    require(not (diff["missing"] or diff["unexpected"] or diff["shape"]),
            f"块的参数与 minimind 的命名/形状不一致：你多出来的键 {diff['missing']}，你缺少的键 {diff['unexpected']}，"
            f"形状不同 {diff['shape']}", BLOCK)
    return mine, ref


def _block_runner(x, pe, cfg, seed, **kw):
    def run(ns):
        mine, _ = _pair(ns, cfg, seed, check=False)
        return mine(x, pe, **kw)[0]
    return run


def _expected_block_keys(cfg) -> set:
    keys = {f"self_attn.{p}_proj.weight" for p in "qkvo"}
    keys |= {"input_layernorm.weight", "post_attention_layernorm.weight"}
    keys |= {f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")}
    if cfg.qk_norm:
        keys |= {"self_attn.q_norm.weight", "self_attn.k_norm.weight"}
    return keys


# ---------------------------------------------------------------- 1. 契约

def test_block_submodules_and_state_dict_keys(impl):
    cfg = _cfg()
    block = impl.MiniMindBlock(3, cfg)
    x = _x(2, 5, cfg.hidden_size, 0)
    out = block(x, _rope(5, cfg.head_dim))
    require(isinstance(out, tuple) and len(out) == 2,
            f"forward 应返回 (hidden_states, present) 两个值，实际返回 {type(out).__name__}"
            + (f"（长度 {len(out)}）" if isinstance(out, tuple) else ""), BLOCK)
    for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
        require(isinstance(getattr(block, name, None), torch.nn.Module),
                f"MiniMindBlock 应该有子模块 {name}（minimind 的名字，state_dict 的键由它决定）", BLOCK)
    require(getattr(block, "layer_id", None) == 3, "MiniMindBlock(layer_id, config) 应该把 layer_id 存成 self.layer_id",
            BLOCK)
    keys, expected = set(block.state_dict()), _expected_block_keys(cfg)
    require(keys == expected, f"块的 state_dict 键与 minimind 不一致：缺少 {sorted(expected - keys)}，"
                              f"多出 {sorted(keys - expected)}", BLOCK)
    ffn = block.mlp.gate_proj.weight.shape[0]
    require(ffn == cfg.ffn_hidden_size,
            f"mlp 的隐层宽度应为 {cfg.ffn_hidden_size}（int(8·{cfg.hidden_size}/3) 向上取整到 64 的倍数），实际 {ffn}",
            BLOCK)


def test_block_uses_config_eps_and_heads(impl):
    cfg = _cfg(hidden=48, heads=4, kv=1, rms_norm_eps=1e-3)
    block = impl.MiniMindBlock(0, cfg)
    block(_x(1, 3, 48, 1), _rope(3, cfg.head_dim))
    for name in ("input_layernorm", "post_attention_layernorm"):
        require(getattr(getattr(block, name), "eps", None) == 1e-3,
                f"{name} 的 eps 应取自 config.rms_norm_eps（1e-3），实际 {getattr(getattr(block, name), 'eps', None)}",
                BLOCK)
    k_rows = block.self_attn.k_proj.weight.shape[0]
    require(k_rows == cfg.num_key_value_heads * cfg.head_dim,
            f"k_proj 的输出维度应为 num_key_value_heads·head_dim = {cfg.num_key_value_heads * cfg.head_dim}"
            f"（GQA），实际 {k_rows}：Attention 要拿到 config.num_key_value_heads", BLOCK)


@pytest.mark.parametrize("use_cache", [False, True], ids=["no_cache", "cache"])
def test_block_output_shape_and_present(impl, use_cache):
    cfg = _cfg()
    block = impl.MiniMindBlock(0, cfg)
    x = _x(2, 6, cfg.hidden_size, 2)
    out, present = block(x, _rope(6, cfg.head_dim), use_cache=use_cache)
    require(isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 6, cfg.hidden_size),
            f"期望输出形状 (2, 6, {cfg.hidden_size})，实际 {tuple(out.shape) if isinstance(out, torch.Tensor) else out}",
            BLOCK)
    if not use_cache:
        require(present is None, "use_cache=False 时 present 应为 None（self_attn 返回什么就交出什么）", BLOCK)
        return
    shape = (2, 6, cfg.num_key_value_heads, cfg.head_dim)
    ok = isinstance(present, tuple) and len(present) == 2 and all(
        isinstance(t, torch.Tensor) and tuple(t.shape) == shape for t in present)
    require(ok, f"use_cache=True 时 present 应为 (k, v)，各 {shape}；实际 "
                f"{[tuple(t.shape) for t in present] if isinstance(present, tuple) else present!r}"
                "——把 self_attn 返回的 present 原样交出去", BLOCK)


# ---------------------------------------------------------------- 2. 结构

def test_block_is_pre_norm_by_call_order_and_dataflow(impl):
    cfg = _cfg()
    block = impl.MiniMindBlock(0, cfg)
    _randomize(block, 3)
    seen, handles = {}, []
    for name in ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"):
        def hook(mod, args, kwargs, output, _name=name):
            first = args[0] if args else next(iter(kwargs.values()))
            seen.setdefault(_name, (len(seen), first.detach().clone(),
                                    (output[0] if isinstance(output, tuple) else output).detach().clone()))
        handles.append(getattr(block, name).register_forward_hook(hook, with_kwargs=True))
    x = _x(2, 5, cfg.hidden_size, 4)
    x_before = x.clone()
    try:
        out, _ = block(x, _rope(5, cfg.head_dim))
    finally:
        for h in handles:
            h.remove()
    order = [n for n, _ in sorted(seen.items(), key=lambda kv: kv[1][0])]
    expected = ["input_layernorm", "self_attn", "post_attention_layernorm", "mlp"]
    require(order == expected, f"子模块的调用顺序应为 {' → '.join(expected)}（Pre-Norm：先归一化、再进子层），"
                               f"实际 {' → '.join(order)}", BLOCK)
    require(torch.equal(x, x_before), "forward 原地修改了输入张量 hidden_states（`+=`？）：调用者手里的 x 被改掉了",
            BLOCK)
    _, ln1_in, ln1_out = seen["input_layernorm"]
    _, attn_in, attn_out = seen["self_attn"]
    _, ln2_in, ln2_out = seen["post_attention_layernorm"]
    _, mlp_in, mlp_out = seen["mlp"]
    checks = [
        (ln1_in, x, "input_layernorm 的输入应是块的输入 x"),
        (attn_in, ln1_out, "self_attn 的输入应是 input_layernorm(x)（不是 x 本身）"),
        (ln2_in, x + attn_out, "post_attention_layernorm 的输入应是 h = x + self_attn(…)（残差加回的是没有归一化的 x）"),
        (mlp_in, ln2_out, "mlp 的输入应是 post_attention_layernorm(h)"),
        (out, x + attn_out + mlp_out, "块的输出应是 h + mlp(…) = x + 注意力输出 + FFN 输出"),
    ]
    for got, want, msg in checks:
        assert_close(got, want, **EXACT, what=msg, section=BLOCK)


@no_shrink
@given(seeds, st.sampled_from(VARIANTS), st.integers(1, 3), st.integers(1, 7))
def test_block_equals_formula_of_its_own_submodules(impl, seed, variant, b, s):
    hidden, heads, kv, qk = variant
    cfg = _cfg(hidden, heads, kv, qk)
    block = impl.MiniMindBlock(0, cfg)
    _randomize(block, seed)
    x, pe = _x(b, s, hidden, seed), _rope(s, cfg.head_dim)
    out, _ = block(x, pe)
    with torch.no_grad():
        a, _ = block.self_attn(block.input_layernorm(x), pe)
        h = x + a
        expected = h + block.mlp(block.post_attention_layernorm(h))
    assert_close(out.detach(), expected, **EXACT,
                 what="块的输出应等于 x + a + mlp(post_attention_layernorm(x + a))，a = self_attn(input_layernorm(x))"
                      "（用你自己的子模块按公式算）", section=BLOCK,
                 **_diagnose(impl, lambda ns: _block_runner(x, pe, cfg, seed)(ns).detach()))


def test_zeroed_sublayers_make_the_block_identity(impl):
    cfg = _cfg()
    block = impl.MiniMindBlock(0, cfg)
    _randomize(block, 5)
    x, pe = _x(2, 6, cfg.hidden_size, 5), _rope(6, cfg.head_dim)
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
        out, _ = block(x, pe)
    assert_close(out, x, atol=1e-7, rtol=0,
                 what="把 self_attn.o_proj 与 mlp.down_proj 清零（两个子层都输出 0）后，块应当是恒等映射 out = x"
                      "（得到 norm(x) 说明残差加回的是归一化后的 x）", section=BLOCK)
    _randomize(block, 6)
    with torch.no_grad():
        block.mlp.down_proj.weight.zero_()
        out, _ = block(x, pe)
        a, _ = block.self_attn(block.input_layernorm(x), pe)
    assert_close(out, x + a, **EXACT, what="只把 mlp.down_proj 清零后，块应当等于 x + self_attn(input_layernorm(x))",
                 section=BLOCK)


# ---------------------------------------------------------------- 3. 与参考实现对比

@no_shrink
@given(seeds, st.sampled_from(VARIANTS), st.integers(1, 3), st.integers(1, 8))
def test_block_matches_reference_solution(impl, seed, variant, b, s):
    hidden, heads, kv, qk = variant
    cfg = _cfg(hidden, heads, kv, qk)
    mine, ref = _pair(impl, cfg, seed)
    x, pe = _x(b, s, hidden, seed), _rope(s, cfg.head_dim)
    with torch.no_grad():
        out = mine(x, pe)[0]
        expected = ref(x, pe)[0]
    assert_close_with_report(
        out, expected, mine=mine, reference=ref, probe=lambda m: m(x, pe)[0], **TOL,
        what=f"与参考实现对比（同一份权重；hidden={hidden}，{heads} 个头 / {kv} 个 KV 头，"
             f"qk_norm={qk}，x 形状 {tuple(x.shape)}）",
        section=BLOCK, **_diagnose(impl, _block_runner(x, pe, cfg, seed)))


# ---------------------------------------------------------------- 4. 性质

@no_shrink
@given(seeds, st.sampled_from(VARIANTS[:3]), st.integers(2, 8))
def test_block_is_causal(impl, seed, variant, s):
    hidden, heads, kv, qk = variant
    cfg = _cfg(hidden, heads, kv, qk)
    block = impl.MiniMindBlock(0, cfg)
    _randomize(block, seed)
    t = 1 + seed % (s - 1)                      # 从位置 t 起改掉“未来”
    x, pe = _x(2, s, hidden, seed), _rope(s, cfg.head_dim)
    x2 = x.clone()
    x2[:, t:] = _x(2, s - t, hidden, seed + 1)
    with torch.no_grad():
        a, b = block(x, pe)[0], block(x2, pe)[0]
    assert_close(b[:, :t], a[:, :t], **EXACT,
                 what=f"把位置 {t} 及以后的输入换掉之后，位置 0…{t - 1} 的输出（因果：过去看不到未来）",
                 section=BLOCK, **_diagnose(impl, lambda ns: _block_runner(x2, pe, cfg, seed)(ns)[:, :t].detach()))


@pytest.mark.parametrize("prefix", [1, 4], ids=["prefix1", "prefix4"])
def test_block_kv_cache_matches_full_forward(impl, prefix):
    cfg = _cfg()
    mine, ref = _pair(impl, cfg, seed=11)
    s = 7
    x = _x(2, s, cfg.hidden_size, 11)
    with torch.no_grad():
        full, _ = mine(x, _rope(s, cfg.head_dim))
        first, present = mine(x[:, :prefix], _rope(prefix, cfg.head_dim), use_cache=True)
        outs = [first]
        for t in range(prefix, s):
            step, present = mine(x[:, t:t + 1], _rope(1, cfg.head_dim, start=t), past_key_value=present,
                                 use_cache=True)
            outs.append(step)
    assert_close(torch.cat(outs, dim=1), full, **TOL,
                 what=f"先用 KV cache 算前 {prefix} 个位置、再逐个 token 解码，应当与整段一次前向的结果相同",
                 section=BLOCK)


def test_block_gradients_reach_every_parameter(impl):
    cfg = _cfg()
    block = impl.MiniMindBlock(0, cfg)
    _randomize(block, 7)
    x = _x(2, 5, cfg.hidden_size, 7).requires_grad_(True)
    out, _ = block(x, _rope(5, cfg.head_dim))
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    missing = [n for n, p in block.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
               or float(p.grad.abs().sum()) == 0.0]
    require(not missing, f"反向传播之后这些参数没有（有限的、非零的）梯度：{missing}——计算图在某处断了"
                         "（.detach()、.data、torch.no_grad，或者这个子模块根本没被用上）", BLOCK)
    require(x.grad is not None and bool(torch.isfinite(x.grad).all()), "输入 x 没有拿到有限的梯度", BLOCK)
