"""模块 06：“不在 bug bank 里”的错误块 / 模型也必须被抓住，失败信息要点出概念，
并且逐层比对要点名**正确的**子模块。

这些实现故意不放进 kata/bugbank：它们模拟测试作者没有预料到的学习者错误。每个错误实现是一对文件
block.py + model.py：在参考实现的源码上改一两行（model.py 用的是同一目录下的 block.py）。
"""
from __future__ import annotations

import re

import pytest

from kata.impl import REPO_ROOT
from kata.runner import run_tests

SOL = REPO_ROOT / "solutions" / "06_transformer_block"

# model.py 里 `from solutions import MiniMindBlock, …` 换成“加载同一目录下的 block.py”
_LOCAL_BLOCK = '''from solutions import RMSNorm, precompute_freqs_cis
import importlib.util as _ilu
from pathlib import Path as _Path
_spec = _ilu.spec_from_file_location("held_out_block_" + str(abs(hash(__file__))), _Path(__file__).with_name("block.py"))
_block_module = _ilu.module_from_spec(_spec)
_spec.loader.exec_module(_block_module)
MiniMindBlock = _block_module.MiniMindBlock
'''


def _sources(block_edits=(), model_edits=()):
    block = (SOL / "block.py").read_text(encoding="utf-8")
    model = (SOL / "model.py").read_text(encoding="utf-8")
    model = model.replace("from solutions import MiniMindBlock, RMSNorm, precompute_freqs_cis\n", _LOCAL_BLOCK)
    for old, new in block_edits:
        assert old in block, old
        block = block.replace(old, new)
    for old, new in model_edits:
        assert old in model, old
        model = model.replace(old, new)
    return block, model


HELD_OUT = {
    # 残差被“平均”了：(x + attn) / 2——每一层都把残差流缩小一半
    "averaged_residual": dict(
        block_edits=[("hidden_states = residual + attn_out ", "hidden_states = (residual + attn_out) / 2 ")],
        expect="model.layers.0（MiniMindBlock）"),
    # FFN 前面忘了 post_attention_layernorm：h + mlp(h)
    "mlp_without_norm": dict(
        block_edits=[("self.mlp(self.post_attention_layernorm(hidden_states))", "self.mlp(hidden_states)")],
        expect="model.layers.0.post_attention_layernorm（RMSNorm），你的实现从头到尾没有调用它"),
    # 词向量乘了 √hidden（原始 Transformer / Gemma 的做法，minimind 没有）
    "embedding_scaled": dict(
        model_edits=[("hidden_states = self.dropout(self.embed_tokens(input_ids))",
                      "hidden_states = self.dropout(self.embed_tokens(input_ids)) * self.config.hidden_size ** 0.5")],
        expect="model（MiniMindModel）", arg="hidden_states"),
    # padding 掩码的 0/1 弄反了（以为 1 = padding）
    "mask_inverted": dict(
        model_edits=[("use_cache=use_cache, attention_mask=attention_mask)",
                      "use_cache=use_cache, attention_mask=None if attention_mask is None else 1 - attention_mask)")],
        expect="model（MiniMindModel）", arg="attention_mask", test="test_padded_batch_matches_single_sequences"),
    # RoPE 表没用 config.rope_theta（写死了 10000）
    "rope_theta_ignored": dict(
        model_edits=[("rope_base=config.rope_theta,", "rope_base=10000.0,")],
        expect="model（MiniMindModel）", arg="position_embeddings"),
    # 词嵌入之后的 dropout 写死了 p=0.1（没用 config.dropout）：dropout=0 的配置在 train() 下也在丢
    "embed_dropout_hardcoded": dict(
        model_edits=[("self.dropout = nn.Dropout(config.dropout)", "self.dropout = nn.Dropout(0.1)")]),
    # 残差相加处又加了一次 dropout（块的 forward 里不该有 dropout）
    "residual_dropout_in_block": dict(
        block_edits=[("hidden_states = residual + attn_out ",
                      "hidden_states = residual + torch.nn.functional.dropout(attn_out, 0.1, self.training) ")]),
    # 最后的 norm 没拿到 config.rms_norm_eps（只有这一个 norm）
    "final_norm_eps_default": dict(
        model_edits=[("self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)",
                      "self.norm = RMSNorm(config.hidden_size)")]),
    # 温度用错了：除以 T²
    "temperature_squared": dict(
        model_edits=[("logits = logits / temperature", "logits = logits / temperature ** 2")]),
    # 已结束的行补的是 0，而不是 eos_token_id
    "finished_rows_padded_with_zero": dict(
        model_edits=[("torch.full_like(next_token, eos_token_id)", "torch.zeros_like(next_token)")]),
    # loss 用了 sum 而不是 mean
    "loss_summed": dict(
        model_edits=[("ignore_index=-100)", "ignore_index=-100, reduction=\"sum\")")]),
}

CONCEPT_WORDS = ("块", "残差", "norm", "RoPE", "cache", "padding", "loss", "logits", "逐层比对", "参考实现",
                 "共享", "因果", "生成", "梯度", "参数", "均方根", "dropout", "eos", "temperature", "eps")


@pytest.mark.parametrize("name", sorted(HELD_OUT))
def test_held_out_wrong_block_or_model_fails_with_a_concept(name, tmp_path):
    spec = HELD_OUT[name]
    block, model = _sources(spec.get("block_edits", ()), spec.get("model_edits", ()))
    (tmp_path / "block.py").write_text(block, encoding="utf-8")
    (tmp_path / "model.py").write_text(model, encoding="utf-8")
    s = run_tests("06_transformer_block", str(tmp_path))
    assert s.failed > 0, f"错误实现 {name} 通过了模块 06 的全部测试"
    assert s.errors == 0, [o.name for o in s.outcomes if o.status == "error"]
    failed = [o for o in s.outcomes if o.status == "failed"]
    assert all(any(w in o.detail for w in CONCEPT_WORDS) for o in failed), [o.message for o in failed]
    assert not any("Traceback" in o.detail for o in s.outcomes), "失败信息里不应该出现 traceback"
    if "expect" in spec:
        test = spec.get("test", "test_model_matches_reference_layer_by_layer")
        reports = [o.detail for o in failed if o.name.startswith(test)]
        assert reports, f"{name}：{test} 应该失败；失败的是 {[o.name for o in failed]}"
        text = reports[0]
        assert "逐层比对" in text and spec["expect"] in text, text
        if "arg" in spec:
            assert re.search(r"不同的参数：[^）]*" + spec["arg"], text), text


def test_correct_sources_pass(tmp_path):
    """对照：同样的拼装方式、不做任何改动，应当全部通过（证明上面的失败来自改动本身）。"""
    block, model = _sources()
    (tmp_path / "block.py").write_text(block, encoding="utf-8")
    (tmp_path / "model.py").write_text(model, encoding="utf-8")
    s = run_tests("06_transformer_block", str(tmp_path))
    bad = [(o.name, o.message) for o in s.outcomes if o.status != "passed"]
    assert s.total > 0 and not bad, bad[:3]
