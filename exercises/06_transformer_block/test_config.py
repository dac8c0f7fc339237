"""模块 06 的测试：MiniMindConfig 的每个字段都要真的送到它的使用者手里。

一个字段在半路丢了（例如建 RoPE 表时没传 rope_theta），模型照样能跑、照样能训练——只是跑的不是你以为的
那个配置。所以这里分两种检查：
1. 一类一类地查（对 MiniMindConfig 的**每一个**字段）：只改这一个字段建两个模型，必须看得出不同
   （形状、共享关系、RoPE 表、eval / train 下的 logits 至少有一样变了）；并且在这个非默认配置下，
   你的模型与参考实现（同一份权重）逐层一致；
2. 点名使用者：RoPE buffer 等于用这些参数直接调用 precompute_freqs_cis 的结果；每个 RMSNorm 的 eps；
   每层注意力的头数 / KV 头数 / q_norm；FFN 宽度；config 本身存在 self.config 上。

flash_attn 是例外：它只选计算路径（PyTorch 的融合核 F.scaled_dot_product_attention 还是手写的注意力），
数学上相同，**不应该**改变输出。所以对它检查的是“两条路径等价”，而不是“有变化”。
"""
from __future__ import annotations

import dataclasses
import math
import sys
import zlib

import pytest
import torch

from kata.config import MiniMindConfig
from kata.divergence import assert_close_with_report, copy_weights
from kata.impl import resolve
from kata.testing import assert_close, require

torch.set_num_threads(1)

MODULE = "06_transformer_block"
BLOCK = "teaching.md §2（MiniMindBlock：四个子模块都按 config 建）"
MODEL = "teaching.md §3（MiniMindModel：__init__ 里的 RoPE 表与各层）"
LM = "teaching.md §4（MiniMindForCausalLM）"

TOL = dict(atol=1e-5, rtol=1e-4)    # float32 小模型，融合核与手写路径的累加顺序不同，差几个 ulp
ROPE_TOL = dict(atol=1e-5, rtol=0)   # float32 的 cos/sin 表：位置 ≤ 64 时角度的舍入误差 < 1e-5
NORM_TOL = dict(atol=1e-5, rtol=1e-4)  # RMSNorm 在 float32 里算，与 float64 公式比
CHANGED = 1e-4                       # “看得出不同”：字段真的生效时 logits 的差别是 0.01–1 量级

# YaRN：原训练长度 16 < 表长 64，所以频率真的会被改；rope_theta 小一点，改动才在前几十个位置上看得见
YARN = {"original_max_position_embeddings": 16, "factor": 4.0, "beta_fast": 4.0, "beta_slow": 1.0}
BASE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=50,
            max_position_embeddings=64)

# 字段 → (非默认值, 基准配置里顺带要设的其它字段, 它的使用者是谁)
FIELD_CASES = {
    "hidden_size": (48, {}, "embed_tokens、每个子模块与 lm_head 的宽度"),
    "num_hidden_layers": (3, {}, "model.layers 的层数"),
    "num_attention_heads": (2, {}, "每层 self_attn 的头数（head_dim 与 RoPE 表的宽度跟着变）"),
    "num_key_value_heads": (1, {}, "每层 self_attn 的 KV 头数（k_proj / v_proj 的宽度）"),
    "vocab_size": (60, {}, "embed_tokens 与 lm_head 的行数"),
    "max_position_embeddings": (40, {}, "RoPE 表的长度（precompute_freqs_cis 的 end）"),
    "rms_norm_eps": (0.5, {}, "每个 RMSNorm 的 eps（两个块内 norm、model.norm、q_norm/k_norm）"),
    "rope_theta": (1e4, {}, "RoPE 表（precompute_freqs_cis 的 rope_base）"),
    "intermediate_size": (40, {}, "每层 mlp 的隐层宽度"),
    "dropout": (0.3, {}, "train() 下的 dropout：词嵌入之后、注意力输出、FFN 输出"),
    "tie_word_embeddings": (False, {}, "lm_head 与 embed_tokens 是否共享同一个 Parameter"),
    "qk_norm": (True, {}, "每层 self_attn 的 q_norm / k_norm"),
    "rope_scaling": (YARN, {"rope_theta": 100.0}, "RoPE 表（precompute_freqs_cis 的 rope_scaling，YaRN）"),
    "flash_attn": (False, {}, "注意力的计算路径（只换路径，不改结果）"),
}
EQUIVALENT_FIELDS = {"flash_attn"}   # 改了它，输出应当**不变**



def _diagnose(impl, run) -> dict:
    """失败时拿 bug bank 逐个比对（“你的输出与『…』一致”）所需的参数。被测的本身就是 bug bank 里的错误实现时
    （--bug-bank 自检）不做这一步：自检只需要证明测试会失败，而每次比对要把几十个错误实现各跑一遍。"""
    return {} if str(getattr(impl, "_impl", "")).startswith("bug:") else dict(module=MODULE, run=run)

def _cfg(**kw) -> MiniMindConfig:
    return MiniMindConfig(**{**BASE, **kw})


def _ids(b, s, vocab, seed):
    return torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(seed))


def _randomize_by_name(module: torch.nn.Module, seed: int) -> None:
    """按参数**名字**确定性地重设权重：两个配置不同的模型里同名、同形状的参数拿到同一份随机数。
    矩阵 ~ N(0, 1/fan_in)，向量（norm 的 weight）~ U(0.5, 1.5)。"""
    with torch.no_grad():
        for name, p in module.named_parameters():
            g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) / math.sqrt(p.shape[-1]))
            else:
                p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) + 0.5)


def _reference(cfg):
    return resolve(MODULE, "solutions").MiniMindForCausalLM(cfg)


def _pair(ns, cfg, seed, check=True):
    ref = _reference(cfg)
    _randomize_by_name(ref, seed)
    mine = ns.MiniMindForCausalLM(cfg)
    diff = copy_weights(mine, ref)
    if not check and (diff["missing"] or diff["unexpected"] or diff["shape"]):
        # 给 bug bank 比对用（kata.testing.matching_bugs）：形状对不上的错误实现只是“不一致”，
        # 不能让 pytest.fail 从比对里漏出来、顶替掉真正的失败信息
        raise ValueError(f"state_dict 不一致：{diff}")
    require(not (diff["missing"] or diff["unexpected"] or diff["shape"]),
            f"配置 {_show(cfg)} 下，模型的 state_dict 与 minimind 的命名/形状不一致：你多出来的键 {diff['missing']}，"
            f"你缺少的键 {diff['unexpected']}，形状不同 {diff['shape']}——某个 config 字段没有传到建子模块的地方", MODEL)
    mine.eval()
    ref.eval()
    return mine, ref


def _show(cfg) -> str:
    default = MiniMindConfig()
    changed = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
               if getattr(cfg, f.name) != getattr(default, f.name) and f.name not in BASE}
    return ", ".join(f"{k}={v!r}" for k, v in changed.items()) or "（只有小尺寸）"


# ---------------------------------------------------------------- 1. 一类一类地查：每个字段

IDS = _ids(2, 24, BASE["vocab_size"], 3)   # 所有配置共用的输入（词表只会变大，不会越界）
_CACHE: dict = {}


def _cached(key, compute):
    """同一个实现、同一个基准配置只算一次（每个字段的测试都要和它比）。"""
    if key not in _CACHE:
        _CACHE[key] = compute()
    return _CACHE[key]


def _built(impl, cfg):
    model = impl.MiniMindForCausalLM(cfg)
    _randomize_by_name(model, 7)
    return model


def _logits(model, train: bool):
    with torch.no_grad():
        model.train(train)
        if train:
            torch.manual_seed(1234)
        out = model(IDS).logits.detach()
        model.eval()
    return out


def _structure(model) -> dict:
    return dict(shapes={k: tuple(v.shape) for k, v in model.state_dict().items()},
                unique=sum(p.numel() for p in model.parameters()),   # parameters() 对共享的参数只数一次
                buffers={k: v.detach().clone() for k, v in model.named_buffers()})


def _differences(impl, base, alt) -> list[str]:
    """两个配置建出来的模型有哪些“看得见”的不同：state_dict 的形状、独立参数个数、RoPE 表、eval / train 下的 logits。
    （便宜的先比；基准模型对每个字段都一样，只建一次。）"""
    key = (impl._impl, repr(base))
    m0 = _cached(("model",) + key, lambda: _built(impl, base))
    m1 = _built(impl, alt)
    a, b = _cached(("structure",) + key, lambda: _structure(m0)), _structure(m1)
    out = []
    if a["shapes"] != b["shapes"]:
        out.append("state_dict 的形状")
    if a["unique"] != b["unique"]:
        out.append("独立参数的个数（共享关系）")
    if set(a["buffers"]) != set(b["buffers"]) or any(
            a["buffers"][k].shape != b["buffers"][k].shape
            or float((a["buffers"][k].double() - b["buffers"][k].double()).abs().max()) > CHANGED
            for k in a["buffers"] if k in b["buffers"]):
        out.append("RoPE 表（buffer）")
    if out:
        return out
    for train, what in ((False, "eval() 下的 logits"), (True, "train() 下（同一个随机种子）的 logits")):
        x, y = _cached(("logits", train) + key, lambda: _logits(m0, train)), _logits(m1, train)
        if x.shape != y.shape or float((x.double() - y.double()).abs().max()) > CHANGED:
            out.append(what)
    return out


CONFIG_FIELDS = sorted(f.name for f in dataclasses.fields(MiniMindConfig))


@pytest.mark.parametrize("field", CONFIG_FIELDS)
def test_changing_one_config_field_changes_the_model(impl, field):
    impl.MiniMindForCausalLM(_cfg())
    # （测试自检）MiniMindConfig 多了一个字段，FIELD_CASES 就必须写清它的使用者是谁、用什么值证明它生效
    assert field in FIELD_CASES and set(FIELD_CASES) <= set(CONFIG_FIELDS), \
        f"FIELD_CASES 与 MiniMindConfig 的字段不一致：{sorted(set(CONFIG_FIELDS) ^ set(FIELD_CASES))}"
    value, extra, consumer = FIELD_CASES[field]
    base = _cfg(**extra)
    alt = dataclasses.replace(base, **{field: value})
    diffs = _differences(impl, base, alt)
    before, after = getattr(base, field), value
    if field in EQUIVALENT_FIELDS:
        changed = [d for d in diffs if "logits" in d]
        require(not changed, f"config.{field} 从 {before!r} 改成 {after!r} 之后，{'、'.join(changed)} 变了："
                             f"{field} 只选择注意力的计算路径（融合核 F.scaled_dot_product_attention 还是手写路径），"
                             "两条路径在数学上相同，不应该改变输出——手写路径与快速路径不一致", BLOCK)
        return
    require(bool(diffs), f"config.{field} 从 {before!r} 改成 {after!r}，模型却没有任何可观察的变化（state_dict 的形状、"
                         f"共享关系、RoPE 表、eval 与 train 下的 logits 全都一样）：{field} 没有传到它的使用者——"
                         f"{consumer}", BLOCK if field in ("qk_norm", "intermediate_size", "num_key_value_heads",
                                                            "dropout") else MODEL)


@pytest.mark.parametrize("field", sorted(FIELD_CASES))
def test_non_default_config_matches_reference(impl, field):
    value, extra, consumer = FIELD_CASES[field]
    base = _cfg(**extra)
    cfg = dataclasses.replace(base, **{field: value})
    ids = IDS
    # 先修这一条：默认取值下就已经与参考实现不同时，逐层比对请看 test_model.py——这里只查“改了这个字段之后”

    def base_matches():
        base_mine, base_ref = _pair(impl, base, 11)
        with torch.no_grad():
            return torch.allclose(base_mine(ids).logits, base_ref(ids).logits, **TOL)

    base_ok = _cached(("base_matches", impl._impl, repr(base)), base_matches)
    require(base_ok, f"在 config.{field} 还是 {getattr(base, field)!r}（其余字段也相同）时，你的模型就已经与参考实现不同："
                     "先修 test_model.py::test_model_matches_reference_layer_by_layer（那里有逐层比对），"
                     f"这个测试只检查把 {field} 改成 {value!r} 之后的差别", MODEL)
    mine, ref = _pair(impl, cfg, 11)
    with torch.no_grad():
        got, want = mine(ids).logits, ref(ids).logits

    def run(ns):
        m, _ = _pair(ns, cfg, 11, check=False)
        with torch.no_grad():
            return m(ids).logits

    assert_close_with_report(
        got, want, mine=mine, reference=ref, probe=lambda m: m(ids).logits, **TOL,
        what=f"非默认配置 {_show(cfg)} 下的 logits 与参考实现对比（同一份权重；config.{field} 应送到：{consumer}。"
             f"逐层比对点名某个子模块时，先看建它的时候 config.{field} 有没有传进去）",
        section=MODEL, **_diagnose(impl, run))


# ---------------------------------------------------------------- 2. 点名使用者：RoPE 表

ROPE_CASES = {
    "rope_theta_1e4": dict(rope_theta=1e4),
    "yarn": dict(rope_theta=100.0, rope_scaling=YARN),
    "yarn_default_theta": dict(rope_scaling={"original_max_position_embeddings": 16, "factor": 8.0}),
    "yarn_attention_factor": dict(rope_theta=1e4, rope_scaling={**YARN, "attention_factor": 1.25}),
    "max_position_embeddings_40": dict(max_position_embeddings=40),
    "head_dim_16": dict(num_attention_heads=2),
}


def _table_source(model):
    """学习者的模型文件里 import 进来的 precompute_freqs_cis（你自己的模块 02），没有就返回 None。"""
    fn = getattr(sys.modules.get(type(model).__module__), "precompute_freqs_cis", None)
    return fn if callable(fn) else None


@pytest.mark.parametrize("case", sorted(ROPE_CASES))
def test_rope_buffers_follow_config(impl, case):
    cfg = _cfg(**ROPE_CASES[case])
    model = impl.MiniMindModel(cfg)
    buffers = dict(model.named_buffers())
    require("freqs_cos" in buffers and "freqs_sin" in buffers,
            f"MiniMindModel 应该用 register_buffer 登记 freqs_cos / freqs_sin，实际 buffer：{sorted(buffers)}", MODEL)
    cos, sin = buffers["freqs_cos"], buffers["freqs_sin"]
    reference = resolve("02_position_encoding", "solutions").precompute_freqs_cis
    args = dict(end=cfg.max_position_embeddings, rope_base=cfg.rope_theta, rope_scaling=cfg.rope_scaling)
    want_cos, want_sin = reference(cfg.head_dim, **args)
    call = (f"precompute_freqs_cis(head_dim={cfg.head_dim}, end={cfg.max_position_embeddings}, "
            f"rope_base={cfg.rope_theta:g}, rope_scaling={cfg.rope_scaling!r})")

    def same(table, other):
        return table.shape == other.shape and bool(torch.allclose(table.double(), other.double(), **ROPE_TOL))

    if same(cos, want_cos) and same(sin, want_sin):
        return
    # 找出丢掉的是哪个参数：用“少传一个参数”的调用一一比对
    candidates = []
    if cfg.rope_theta != 1e6:
        candidates.append((dict(args, rope_base=1e6), f"rope_theta 没有传到 RoPE 表：模型的 cos 表等于 rope_base=1e6"
                           f"（默认值）时的表，而 config.rope_theta={cfg.rope_theta:g}"))
    if cfg.rope_theta != 1e4:
        candidates.append((dict(args, rope_base=1e4), f"RoPE 表用的是 rope_base=1e4（写死了 10000？），"
                           f"而 config.rope_theta={cfg.rope_theta:g}"))
    if cfg.rope_scaling is not None:
        candidates.append((dict(args, rope_scaling=None), "rope_scaling（YaRN）没有传到 RoPE 表：模型的表等于 "
                           f"rope_scaling=None 时的表，而 config.rope_scaling={cfg.rope_scaling!r}"))
        if cfg.rope_theta != 1e6:
            candidates.append((dict(args, rope_scaling=None, rope_base=1e6),
                               "rope_theta 和 rope_scaling 都没有传到 RoPE 表：模型的表等于 precompute_freqs_cis 全用默认值时的表"))
    cause = ""
    for kw, why in candidates:
        c, s = reference(cfg.head_dim, **kw)
        if same(cos, c) and same(sin, s):
            cause = why
            break
    if not cause and cos.shape[0] != cfg.max_position_embeddings:
        cause = (f"RoPE 表的长度应为 config.max_position_embeddings={cfg.max_position_embeddings}，实际 {cos.shape[0]}"
                 "：max_position_embeddings 没有传给 precompute_freqs_cis 的 end")
    if not cause and cos.dim() == 2 and cos.shape[-1] != cfg.head_dim:
        cause = (f"RoPE 表的宽度应为 head_dim = hidden_size / num_attention_heads = {cfg.head_dim}，实际 "
                 f"{cos.shape[-1]}（RoPE 转的是每个头的 q、k）")
    own = _table_source(model)
    if not cause and own is not None and own is not reference:
        try:
            oc, os_ = own(cfg.head_dim, **args)
        except Exception:   # 学习者自己的函数出错：就不拿它当诊断
            oc = os_ = None
        if oc is not None and same(cos, oc) and same(sin, os_):
            cause = ("你的模型按 config 调用了你自己的 precompute_freqs_cis，参数都对；但这个函数的结果与参考不同——"
                     "问题在模块 02，先让 pytest exercises/02_position_encoding 通过")
    if cause:
        require(False, f"{cause}。\n  期望 freqs_cos / freqs_sin = {call}", MODEL)
    assert_close(cos.double(), want_cos.double(), **ROPE_TOL, check_dtype=False,
                 what=f"freqs_cos 应等于 {call} 的 cos 表", section=MODEL)
    assert_close(sin.double(), want_sin.double(), **ROPE_TOL, check_dtype=False,
                 what=f"freqs_sin 应等于 {call} 的 sin 表", section=MODEL)


def test_rope_theta_table_matches_float64_formula(impl):
    """独立参考（不经过任何 precompute_freqs_cis）：rope_theta=1e4 时 cos(m·θ_i)，θ_i = 1e4^(-2i/d)，half-split。"""
    cfg = _cfg(rope_theta=1e4)
    model = impl.MiniMindModel(cfg)
    d = cfg.head_dim
    inv = cfg.rope_theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(cfg.max_position_embeddings, dtype=torch.float64)[:, None] * inv
    ang = torch.cat([ang, ang], dim=-1)
    for name, want in (("freqs_cos", ang.cos()), ("freqs_sin", ang.sin())):
        got = dict(model.named_buffers()).get(name)
        require(isinstance(got, torch.Tensor), f"MiniMindModel 应该有 buffer {name}", MODEL)
        hint = ""
        if got.shape == want.shape:
            wrong = torch.arange(cfg.max_position_embeddings, dtype=torch.float64)[:, None] * \
                (1e6 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d))
            wrong = torch.cat([wrong, wrong], dim=-1)
            wrong = wrong.cos() if name == "freqs_cos" else wrong.sin()
            if torch.allclose(got.double(), wrong, **ROPE_TOL):
                hint = "（你的表等于 rope_base=1e6 时的表：rope_theta 没有传到 RoPE 表）"
        assert_close(got.double(), want, **ROPE_TOL, check_dtype=False,
                     what=f"config.rope_theta=1e4 时 {name} 应为 float64 公式 cos/sin(m·1e4^(-2i/{d})){hint}",
                     section=MODEL)


# ---------------------------------------------------------------- 2. 点名使用者：eps、头数、宽度、flash_attn

def _norms(model) -> dict:
    """模型里每一个应当用 config.rms_norm_eps 的 RMSNorm：{名字: (模块, 维度)}。"""
    out = {}
    for name, mod in model.named_modules():
        last = name.rsplit(".", 1)[-1]
        if name == "model.norm" or last in ("input_layernorm", "post_attention_layernorm", "q_norm", "k_norm"):
            if isinstance(mod, torch.nn.Module) and isinstance(getattr(mod, "weight", None), torch.Tensor):
                out[name] = (mod, mod.weight.shape[-1])
    return out


def test_every_rmsnorm_uses_config_eps(impl):
    eps = 0.1
    cfg = _cfg(rms_norm_eps=eps, qk_norm=True)
    model = impl.MiniMindForCausalLM(cfg)
    _randomize_by_name(model, 5)
    norms = _norms(model)
    expected = {"model.norm"} | {f"model.layers.{i}.{n}" for i in range(cfg.num_hidden_layers)
                                 for n in ("input_layernorm", "post_attention_layernorm",
                                           "self_attn.q_norm", "self_attn.k_norm")}
    require(expected <= set(norms), f"找不到这些 RMSNorm（qk_norm=True 时每层还有 self_attn.q_norm / k_norm）："
                                    f"{sorted(expected - set(norms))}", BLOCK)
    g = torch.Generator().manual_seed(5)
    for name in sorted(expected):
        mod, dim = norms[name]
        x = 0.05 * torch.randn(3, dim, generator=g)   # mean(x²) ≈ 0.0025，远小于 eps=0.1：eps 用错一眼可见
        with torch.no_grad():
            got = mod(x).double()
        w = mod.weight.detach().double()
        want = x.double() / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + eps) * w
        if got.shape == want.shape and torch.allclose(got, want, **NORM_TOL):
            continue
        default = x.double() / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * w
        owner = "Attention(..., eps=config.rms_norm_eps) 再交给 q_norm / k_norm" if name.endswith(("q_norm", "k_norm")) \
            else "RMSNorm(hidden_size, eps=config.rms_norm_eps)"
        if got.shape == default.shape and torch.allclose(got, default, **NORM_TOL):
            require(False, f"{name} 没有拿到 config.rms_norm_eps={eps:g}：它的输出等于 eps=1e-5（默认值）时的 RMSNorm。"
                           f"建它的时候要传 eps：{owner}", BLOCK if "layers" in name else MODEL)
        assert_close(got, want, **NORM_TOL, check_dtype=False,
                     what=f"{name} 应是 eps={eps:g} 的 RMSNorm：x / sqrt(mean(x²) + eps) · weight（x 很小，eps 起主要作用）",
                     section=BLOCK if "layers" in name else MODEL)


def test_attention_and_ffn_follow_config_in_every_layer(impl):
    cfg = _cfg(hidden_size=48, num_attention_heads=4, num_key_value_heads=1, num_hidden_layers=3,
               intermediate_size=72, qk_norm=True)
    model = impl.MiniMindForCausalLM(cfg)
    require(getattr(model, "config", None) is cfg, "MiniMindForCausalLM 应该把传进来的 config 存成 self.config", LM)
    require(getattr(model.model, "config", None) is cfg, "MiniMindModel 应该把传进来的 config 存成 self.config", MODEL)
    d, kv = cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    layers = model.model.layers
    require(len(layers) == cfg.num_hidden_layers,
            f"num_hidden_layers={cfg.num_hidden_layers}，model.layers 却有 {len(layers)} 层", MODEL)
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        checks = [
            (tuple(attn.q_proj.weight.shape), (cfg.num_attention_heads * d, cfg.hidden_size),
             f"num_attention_heads·head_dim × hidden = {cfg.num_attention_heads}·{d} × {cfg.hidden_size}"),
            (tuple(attn.k_proj.weight.shape), (kv, cfg.hidden_size),
             f"num_key_value_heads·head_dim × hidden = {cfg.num_key_value_heads}·{d} × {cfg.hidden_size}"
             "（GQA：Attention 要拿到 config.num_key_value_heads）"),
            (tuple(attn.v_proj.weight.shape), (kv, cfg.hidden_size), "与 k_proj 相同"),
            (tuple(mlp.gate_proj.weight.shape), (cfg.intermediate_size, cfg.hidden_size),
             f"intermediate_size × hidden = {cfg.intermediate_size} × {cfg.hidden_size}"
             "（FeedForward 要拿到 config.intermediate_size）"),
            (tuple(mlp.down_proj.weight.shape), (cfg.hidden_size, cfg.intermediate_size),
             f"hidden × intermediate_size = {cfg.hidden_size} × {cfg.intermediate_size}"),
        ]
        for got, want, why in checks:
            require(got == want, f"layers.{i} 的权重形状应为 {want}（{why}），实际 {got}", BLOCK)
        for name in ("q_norm", "k_norm"):
            norm = getattr(attn, name, None)
            require(isinstance(norm, torch.nn.Module) and tuple(norm.weight.shape) == (d,),
                    f"config.qk_norm=True 时 layers.{i}.self_attn 应该有 {name}（RMSNorm(head_dim={d})）："
                    "Attention 要拿到 config.qk_norm", BLOCK)


def test_flash_attn_switch_keeps_outputs_identical(impl):
    """flash_attn=False 只把注意力换到手写路径：无 padding、左侧 padding、KV cache 解码，结果都应与 True 时相同。"""
    on, off = _cfg(flash_attn=True), _cfg(flash_attn=False)
    fast, _ = _pair(impl, on, 13)
    slow = impl.MiniMindForCausalLM(off)
    copy_weights(slow, fast)
    slow.eval()
    for i, layer in enumerate(slow.model.layers):
        if hasattr(layer.self_attn, "flash"):   # 有快速路径开关的注意力（如参考实现）：开关要真的关上
            require(layer.self_attn.flash is False,
                    f"config.flash_attn=False，layers.{i}.self_attn.flash 却是 {layer.self_attn.flash!r}："
                    "与 minimind 一样，flash_attn=False 时要关掉注意力的快速路径", BLOCK)
    ids = _ids(2, 9, on.vocab_size, 13)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        runs = {
            "整段前向": lambda m: m(ids).logits,
            "左侧 padding（attention_mask）": lambda m: m(ids, attention_mask=mask).logits[1, 3:],
            "KV cache 解码最后一个 token": lambda m: m(ids[:, -1:], use_cache=True,
                                                   past_key_values=m(ids[:, :-1], use_cache=True).past_key_values).logits,
        }
        for what, run in runs.items():
            assert_close(run(slow), run(fast), **TOL,
                         what=f"{what}：config.flash_attn=False 与 True 的 logits 应相同（只换计算路径，数学上不变）",
                         section=BLOCK)
