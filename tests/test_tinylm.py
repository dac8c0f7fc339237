"""kata.tinylm 的测试：配置校验、每个开关都能前向/反向、因果性、长度外推、发散记录、
训练能降 loss、实现切换（require / 退回参考实现 / provenance / 部件确实来自 impl）。

模型都很小（dim 32、2 层），整个文件在 2 核 CPU 上几秒内跑完。
"""
from __future__ import annotations

import math
import textwrap

import pytest
import torch

from kata import tinylm
from kata.data import load_corpus
from kata.tinylm import (
    COMPONENTS, ComponentNotImplemented, TinyLMConfig, TrainResult, build_tiny_lm, count_parameters, evaluate,
    layer_grad_norms, learning_rate, per_position_loss, train_lm,
)

SMALL = dict(dim=32, n_layers=2, n_heads=4, max_seq_len=16)
FAST = dict(batch_size=4, seq_len=16, progress=False, eval_iters=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # 这些模型很小，多线程没有好处；机器被别的进程占满时，2 个 OpenMP 线程互相等待反而慢好几倍
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus():
    return load_corpus("synthetic", size_mb=0.1)


@pytest.fixture(scope="module")
def vocab(corpus):
    return corpus.tokenizer.vocab_size


def _build(vocab, seed=0, impl="solutions", **overrides):
    cfg = TinyLMConfig(vocab_size=vocab, **{**SMALL, **overrides})
    return build_tiny_lm(cfg, impl=impl, seed=seed)


# ---------------------------------------------------------------- 配置

VARIANTS = [
    {},
    {"norm": "layernorm"}, {"norm": "none"},
    {"norm_position": "post"}, {"norm_position": "post", "final_norm": False}, {"final_norm": False},
    {"pos": "nope"}, {"pos": "learned"}, {"pos": "sinusoidal"}, {"pos": "alibi"},
    {"pos": "alibi", "n_heads": 2}, {"rope_base": 100.0},
    {"ffn": "relu"}, {"ffn": "gelu"}, {"ffn": "none"}, {"ffn_hidden": 24},
    {"residual": False}, {"residual": False, "norm_position": "post"},
    {"attn_scale": False}, {"dropout": 0.1}, {"tie_embeddings": False}, {"n_kv_heads": 2}, {"n_kv_heads": 1},
    {"norm_eps": 1e-6}, {"n_heads": 8, "n_kv_heads": 2, "pos": "alibi"},
]


@pytest.mark.parametrize("overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_every_option_builds_and_trains_one_step(overrides, corpus, vocab):
    model, provenance = _build(vocab, **overrides)
    assert isinstance(model.blocks, torch.nn.ModuleList) and len(model.blocks) == 2
    x, y = corpus.get_batch("train", 3, 16, generator=torch.Generator().manual_seed(0))
    logits, loss = model(x, y)
    assert logits.shape == (3, 16, vocab)
    assert math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert model.cfg.to_dict()["vocab_size"] == vocab
    assert all(v == "solutions" or v.startswith("tinylm") for v in provenance.values()), provenance


@pytest.mark.parametrize("field,value", [
    ("norm", "batchnorm"), ("norm_position", "middle"), ("pos", "rotary"), ("ffn", "swish"),
])
def test_invalid_choices_name_the_valid_options(field, value):
    with pytest.raises(ValueError) as info:
        TinyLMConfig(vocab_size=10, **{field: value})
    msg = str(info.value)
    assert field in msg and "只能是" in msg
    options = {"norm": tinylm.NORMS, "norm_position": tinylm.NORM_POSITIONS, "pos": tinylm.POSITIONS,
               "ffn": tinylm.FFNS}[field]
    assert all(repr(o) in msg for o in options)


@pytest.mark.parametrize("kwargs", [
    dict(dim=30, n_heads=4), dict(n_heads=4, n_kv_heads=3), dict(vocab_size=0), dict(dim=12, n_heads=4),
    dict(dropout=1.0), dict(residual="yes"), dict(ffn_hidden=0),
])
def test_invalid_numbers_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        TinyLMConfig(**{"vocab_size": 10, **kwargs})   # dim=12,n_heads=4 → head_dim 3，RoPE 需要偶数


def test_ffn_widths_and_parameter_matching():
    assert TinyLMConfig(vocab_size=10, dim=64).ffn_hidden_size == 176      # 16·ceil(170/16)
    assert TinyLMConfig(vocab_size=10, dim=128).ffn_hidden_size == 352
    assert TinyLMConfig(vocab_size=10, dim=64, ffn="relu").ffn_hidden_size == 264
    assert TinyLMConfig(vocab_size=10, dim=64, ffn="gelu", ffn_hidden=100).ffn_hidden_size == 100
    swiglu, _ = build_tiny_lm(TinyLMConfig(vocab_size=10, dim=64), impl="solutions")
    relu, _ = build_tiny_lm(TinyLMConfig(vocab_size=10, dim=64, ffn="relu"), impl="solutions")
    assert count_parameters(swiglu.blocks[0].mlp) == count_parameters(relu.blocks[0].mlp) == 3 * 64 * 176
    assert count_parameters(swiglu) == count_parameters(relu)


def test_tied_embeddings_count_once():
    tied, _ = build_tiny_lm(TinyLMConfig(vocab_size=50, dim=32), impl="solutions")
    untied, _ = build_tiny_lm(TinyLMConfig(vocab_size=50, dim=32, tie_embeddings=False), impl="solutions")
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert count_parameters(untied) - count_parameters(tied) == 50 * 32


def test_init_scales_residual_projections(vocab):
    model, _ = _build(vocab, dim=64, n_layers=8, max_seq_len=16)
    std = model.blocks[0].self_attn.o_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(16), rel=0.15)
    assert model.blocks[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.15)


# ---------------------------------------------------------------- 因果性与长度

@pytest.mark.parametrize("pos", tinylm.POSITIONS)
def test_future_tokens_do_not_change_earlier_logits(pos, vocab):
    model, _ = _build(vocab, pos=pos)
    model.eval()
    ids = torch.randint(vocab, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % vocab
    with torch.no_grad():
        a, _ = model(ids)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-4)


def test_learned_positions_cannot_go_past_max_seq_len(corpus, vocab):
    model, _ = _build(vocab, pos="learned")
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="learned"):
        evaluate(model, corpus, seq_len=32, batch_size=2, iters=1)


def test_per_position_loss_averages_to_the_batch_loss(corpus, vocab):
    """逐位置的交叉熵取平均 = 同一批片段上的整体 loss；batch 怎么切不影响结果；片段由 seed 决定。"""
    model, _ = _build(vocab, pos="rope")
    curve = per_position_loss(model, corpus, seq_len=16, n_seqs=6, batch_size=6, seed=5)
    assert len(curve) == 16 and all(c > 0 for c in curve)
    x, y = corpus.get_batch("val", 6, 16, generator=torch.Generator().manual_seed(5))
    model.eval()
    with torch.no_grad():
        _, loss = model(x, y)
    assert sum(curve) / 16 == pytest.approx(float(loss), rel=1e-5)
    again = per_position_loss(model, corpus, seq_len=16, n_seqs=6, batch_size=6, seed=5)
    assert again == curve
    other = per_position_loss(model, corpus, seq_len=16, n_seqs=6, batch_size=6, seed=6)
    assert other != curve


@pytest.mark.parametrize("pos", ["rope", "nope", "sinusoidal", "alibi"])
def test_longer_than_training_eval_works(pos, corpus, vocab):
    model, _ = _build(vocab, pos=pos)
    loss = evaluate(model, corpus, seq_len=48, batch_size=2, iters=2)       # 3× max_seq_len
    assert math.isfinite(loss)
    # 长序列前 16 个位置的 logits 与只喂 16 个 token 时相同（位置表加长后前面的位置不变）
    model.eval()
    ids = torch.randint(vocab, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        long_logits, _ = model(ids)
        short_logits, _ = model(ids[:, :16])
    torch.testing.assert_close(long_logits[:, :16], short_logits, atol=1e-5, rtol=1e-5)


def test_alibi_slopes_follow_press_et_al():
    torch.testing.assert_close(tinylm.alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    torch.testing.assert_close(tinylm.alibi_slopes(4), torch.tensor([2.0 ** -(2 * (i + 1)) for i in range(4)]))
    six = tinylm.alibi_slopes(6)   # 非 2 的幂：4 个头的斜率 + 8 个头斜率里隔一个取的 2 个
    torch.testing.assert_close(six, torch.tensor([0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]))


# ---------------------------------------------------------------- 训练

def test_training_lowers_the_loss(corpus, vocab):
    model, _ = _build(vocab, seed=0)
    result = train_lm(model, corpus, steps=60, lr=3e-3, batch_size=8, seq_len=16, progress=False, eval_iters=4)
    assert isinstance(result, TrainResult)
    assert result.diverged_at is None and not result.diverged
    assert result.train_steps == list(range(60)) and len(result.train_losses) == 60
    first = result.train_losses[0]
    assert first == pytest.approx(math.log(vocab), abs=0.3)                 # 初始化时接近均匀分布
    assert result.final_val_loss < first - 0.7, (first, result.final_val_loss)
    assert result.val_steps == [60] and result.tokens_per_sec > 0 and result.wall_time_s > 0
    d = result.to_dict()
    assert set(d) >= {"train_steps", "train_losses", "val_steps", "val_losses", "final_val_loss", "diverged_at",
                      "tokens_per_sec", "wall_time_s", "grad_norms"}


def test_same_seed_same_run(corpus, vocab):
    runs = []
    for _ in range(2):
        model, _ = _build(vocab, seed=3)
        runs.append(train_lm(model, corpus, steps=5, seed=7, **FAST).train_losses)
    assert runs[0] == runs[1]


def test_divergence_is_recorded_not_raised(corpus, vocab):
    model, _ = _build(vocab)
    original = model.forward
    calls = {"n": 0}

    def forward(input_ids, targets=None):
        logits, loss = original(input_ids, targets)
        if model.training:               # 只数训练步（评估也会调用 forward）
            calls["n"] += 1
            if calls["n"] > 3:
                loss = loss * float("nan")
        return logits, loss

    model.forward = forward
    result = train_lm(model, corpus, steps=20, eval_every=2, **FAST)
    assert result.diverged_at == 3
    assert len(result.train_losses) == 3 and all(math.isfinite(v) for v in result.train_losses)
    assert result.val_steps == [2]
    assert math.isnan(result.final_val_loss)


def test_huge_learning_rate_never_raises(corpus, vocab):
    model, _ = _build(vocab, norm="none", residual=True)
    result = train_lm(model, corpus, steps=8, lr=1e4, grad_clip=None, **FAST)
    assert result.diverged_at is None or 0 <= result.diverged_at < 8
    assert result.diverged_at is not None or math.isfinite(result.final_val_loss)


def test_eval_every_grad_norms_and_schedule(corpus, vocab):
    model, _ = _build(vocab)
    result = train_lm(model, corpus, steps=6, eval_every=3, record_grad_norms=True, warmup_steps=2, **FAST)
    assert result.val_steps == [3, 6] and len(result.val_losses) == 2
    assert len(result.grad_norms) == 2 and all(len(layer) == 6 for layer in result.grad_norms)
    assert all(v > 0 and math.isfinite(v) for layer in result.grad_norms for v in layer)
    assert learning_rate(0, 10, 1.0, warmup_steps=2) == pytest.approx(0.5)
    assert learning_rate(2, 10, 1.0, warmup_steps=2) == pytest.approx(1.0)
    assert learning_rate(10, 10, 1.0, warmup_steps=2, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_layer_grad_norms_at_init(corpus, vocab):
    model, _ = _build(vocab, norm_position="post", n_layers=3)
    norms = layer_grad_norms(model, corpus, seq_len=16, batch_size=4, seed=0)
    assert len(norms) == 3 and all(v > 0 and math.isfinite(v) for v in norms)
    assert all(p.grad is None for p in model.parameters())
    assert norms == layer_grad_norms(model, corpus, seq_len=16, batch_size=4, seed=0)


# ---------------------------------------------------------------- 实现切换

STUB_RMSNORM = '''
import torch
from torch import nn

class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        raise NotImplementedError("还没实现：RMSNorm.forward")
'''

WORKING_RMSNORM = '''
import torch
from torch import nn

class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
'''

COUNTING_ATTENTION = '''
from solutions import Attention, repeat_kv as _repeat_kv, scaled_dot_product_attention as _sdpa

CALLS = {"sdpa": 0, "repeat_kv": 0}

def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    CALLS["sdpa"] += 1
    return _sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal)

def repeat_kv(x, n_rep):
    CALLS["repeat_kv"] += 1
    return _repeat_kv(x, n_rep)
'''


def _write(path, text):
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_required_component_that_is_a_stub_raises(tmp_path):
    stub = _write(tmp_path / "rmsnorm.py", STUB_RMSNORM)
    cfg = TinyLMConfig(vocab_size=20, **SMALL)
    with pytest.raises(ComponentNotImplemented) as info:
        build_tiny_lm(cfg, impl=str(stub), require=("RMSNorm",))
    err = info.value
    assert isinstance(err, RuntimeError) and err.component == "RMSNorm"
    msg = str(err)
    assert "RMSNorm" in msg and "还没实现" in msg and "--impl solutions" in msg and str(stub) in msg
    assert "\n" not in msg


def test_stub_falls_back_silently_when_not_required(tmp_path):
    stub = _write(tmp_path / "rmsnorm.py", STUB_RMSNORM)
    model, provenance = build_tiny_lm(TinyLMConfig(vocab_size=20, **SMALL), impl=str(stub))
    assert provenance["RMSNorm"] == f"solutions ({stub} 未实现)"
    # 同一个文件里没有模块 02–04 的名字：也都退回参考实现
    for key in ("rope", "scaled_dot_product_attention", "repeat_kv", "FeedForward"):
        assert provenance[key].startswith("solutions ("), provenance
    x = torch.zeros(1, 4, dtype=torch.long)
    assert math.isfinite(model(x, x)[1].item())


def test_required_component_from_missing_side_file_raises(tmp_path):
    with pytest.raises(ComponentNotImplemented, match="FeedForward"):
        build_tiny_lm(TinyLMConfig(vocab_size=20, **SMALL), impl=str(tmp_path), require=("FeedForward",))
    with pytest.raises(ValueError, match="不是 tinylm 的部件"):
        build_tiny_lm(TinyLMConfig(vocab_size=20, **SMALL), impl="solutions", require=("Softmax",))


def test_working_component_is_really_used(tmp_path):
    _write(tmp_path / "rmsnorm.py", WORKING_RMSNORM)
    _write(tmp_path / "attention.py", COUNTING_ATTENTION)
    cfg = TinyLMConfig(vocab_size=20, **{**SMALL, "n_kv_heads": 2})
    model, provenance = build_tiny_lm(cfg, impl=str(tmp_path),
                                      require=("RMSNorm", "scaled_dot_product_attention", "repeat_kv"))
    assert provenance["RMSNorm"] == str(tmp_path)
    assert provenance["scaled_dot_product_attention"] == provenance["repeat_kv"] == str(tmp_path)
    assert provenance["rope"].startswith("solutions (") and provenance["FeedForward"].startswith("solutions (")
    assert type(model.blocks[0].input_layernorm).__module__.startswith("kata_external")
    calls = model.blocks[0].self_attn.sdpa.__globals__["CALLS"]   # 计数器在 tmp_path/attention.py 里
    before = dict(calls)
    model(torch.zeros(2, 8, dtype=torch.long))
    assert calls["sdpa"] - before["sdpa"] == 2            # 每层一次
    assert calls["repeat_kv"] - before["repeat_kv"] == 4  # 每层 k、v 各一次


def test_solutions_provenance_is_solutions_everywhere(vocab):
    _, provenance = build_tiny_lm(TinyLMConfig(vocab_size=vocab, **SMALL), impl="solutions")
    assert set(provenance) == {"RMSNorm", "rope", "scaled_dot_product_attention", "repeat_kv", "FeedForward"}
    assert set(provenance.values()) == {"solutions"}
    _, provenance = build_tiny_lm(TinyLMConfig(vocab_size=vocab, **{**SMALL, "pos": "sinusoidal"}), impl="solutions")
    assert provenance["sinusoidal_position_encoding"] == "solutions"
    _, provenance = build_tiny_lm(TinyLMConfig(vocab_size=vocab, **{**SMALL, "pos": "alibi", "norm": "layernorm"}),
                                  impl="solutions")
    assert provenance["attention"].startswith("tinylm") and provenance["LayerNorm"].startswith("tinylm")
    assert "scaled_dot_product_attention" not in provenance
    assert set(COMPONENTS) >= {"RMSNorm", "rope", "FeedForward"}


def test_probe_does_not_disturb_the_global_rng(vocab, monkeypatch):
    monkeypatch.setattr(tinylm, "_PROBE_CACHE", {})
    weights = []
    for _ in range(2):   # 第一次会试跑各部件，第二次用缓存：初始化必须一样
        torch.manual_seed(11)
        model, _ = build_tiny_lm(TinyLMConfig(vocab_size=vocab, **SMALL), impl="solutions")
        weights.append(model.blocks[0].self_attn.q_proj.weight.detach().clone())
    torch.testing.assert_close(weights[0], weights[1], atol=0, rtol=0)
