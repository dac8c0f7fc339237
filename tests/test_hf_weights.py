"""kata.hf_weights + kata.generate：读 minimind 发布的权重（Hugging Face 文件夹与训练脚本的 .pth）。

没有网络：测试自己写出两种布局的文件（MiniMind2-small 的形状：hidden 512、8 层、8 / 2 个头、词表 6400），
再用 kata 的加载器读回来，比较 logits。safetensors 文件由这里手写的字节拼出来（不依赖 safetensors 包），
读取器另外用手算的字节串（struct.pack 的小端浮点、bf16 的位模式）检查；HF 的 tokenizer.json 也是手写的，
装了 tokenizers 时再用它确认这份文件 HF 自己也认。
"""
from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from kata import generate as kg
from kata import hf_weights as hw
from kata.config import MiniMindConfig
from kata.impl import REPO_ROOT, resolve

Model = resolve("06_transformer_block", "solutions").MiniMindForCausalLM

# ---------------------------------------------------------------------------------------------
# 手写的文件：safetensors、transformers 的 config.json、HF 的 ByteLevel-BPE tokenizer.json
# ---------------------------------------------------------------------------------------------

_ST_NAME = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}


def st_bytes(entries: dict, metadata=None, pad_to: int = 8) -> bytes:
    """entries：{名字: (dtype 名, shape, 原始字节)}，按给出的顺序放进数据区。"""
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, (dt, shape, raw) in entries.items():
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode("utf-8")
    h += b" " * (-len(h) % pad_to)                 # 规范允许用空格把头补齐到 8 字节
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def raw_le(t: torch.Tensor) -> bytes:
    """张量的小端字节（测试机是小端的；大端那条路径由 test_big_endian_hosts_swap_bytes 单独检查）。"""
    assert sys.byteorder == "little"
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def write_safetensors(path: Path, sd: dict, dtype=None) -> None:
    entries = {}
    for k, v in sd.items():
        v = v.to(dtype) if dtype is not None and v.is_floating_point() else v
        entries[k] = (_ST_NAME[v.dtype], v.shape, raw_le(v))
    path.write_bytes(st_bytes(entries, metadata={"format": "pt"}))


def hf_config(cfg: MiniMindConfig, torch_dtype: str = "float16") -> dict:
    """transformers 写 minimind（MiniMind2 版 model/model_minimind.py 的 MiniMindConfig）时 config.json 的样子。"""
    return {
        "architectures": ["MiniMindForCausalLM"],
        "auto_map": {"AutoConfig": "model_minimind.MiniMindConfig",
                     "AutoModelForCausalLM": "model_minimind.MiniMindForCausalLM"},
        "aux_loss_alpha": 0.1, "bos_token_id": 1, "eos_token_id": 2, "dropout": 0.0, "flash_attn": True,
        "hidden_act": "silu", "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings, "model_type": "minimind",
        "n_routed_experts": 4, "n_shared_experts": 1, "norm_topk_prob": True,
        "num_attention_heads": cfg.num_attention_heads, "num_experts_per_tok": 2,
        "num_hidden_layers": cfg.num_hidden_layers, "num_key_value_heads": cfg.num_key_value_heads,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "scoring_func": "softmax", "seq_aux": True,
        "tie_word_embeddings": cfg.tie_word_embeddings, "torch_dtype": torch_dtype,
        "transformers_version": "4.48.0", "use_moe": False, "vocab_size": cfg.vocab_size,
    }


def _byte_chars() -> dict[int, str]:
    """GPT-2 的“字节 → 看得见的字符”表，照规则重写一遍（不借用模块 07 的实现）。"""
    visible = [*range(33, 127), *range(161, 173), *range(174, 256)]
    out, n = {}, 0
    for b in range(256):
        if b in visible:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at")]


def hf_tokenizer_json() -> dict:
    """minimind 的 model/tokenizer.json 的结构：3 个特殊 token（0、1、2），256 个字节，然后是合并结果。"""
    bc = _byte_chars()
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for b in range(256):
        vocab[bc[b]] = 3 + b
    for a, b in MERGES:
        vocab[a + b] = len(vocab)
    added = [{"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(SPECIALS)]
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": [list(m) for m in MERGES]}}


TOKENIZER_CONFIG = {"add_bos_token": False, "add_eos_token": False, "bos_token": "<|im_start|>",
                    "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                    "model_max_length": 32768, "tokenizer_class": "PreTrainedTokenizerFast"}
TOK_VOCAB = 3 + 256 + len(MERGES)


def write_tokenizer(folder: Path, config: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(hf_tokenizer_json(), ensure_ascii=False), encoding="utf-8")
    if config:
        (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG), encoding="utf-8")


def small_config(**kw) -> MiniMindConfig:
    base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                vocab_size=TOK_VOCAB + 5, max_position_embeddings=64, intermediate_size=96)
    base.update(kw)
    return MiniMindConfig(**base)


def make_model(cfg: MiniMindConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = Model(cfg).eval()
    with torch.no_grad():                  # 随机的 norm 权重：读错 / 漏读 norm 会改变 logits
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m


def hf_state_dict(model) -> dict:
    """save_pretrained 的做法：绑定的 lm_head 不重复存（MiniMind2-small 的 model.safetensors 只有 embed_tokens）。"""
    sd = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight")
    return sd


def write_hf_folder(folder: Path, model, dtype=torch.float16, sd=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / "model.safetensors", hf_state_dict(model) if sd is None else sd, dtype)
    name = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}[dtype]
    (folder / "config.json").write_text(json.dumps(hf_config(model.config, name)), encoding="utf-8")
    write_tokenizer(folder)
    return folder


def rounded(model, dtype) -> torch.nn.Module:
    """同一个模型，权重先舍入到 dtype 再回到 float32：半精度文件读回来应与它一模一样。"""
    m = Model(model.config).eval()
    m.load_state_dict({k: v.to(dtype).float() for k, v in model.state_dict().items()})
    return m


IDS = torch.tensor([[1, 3 + ord("t"), 3 + ord("h"), 259, 262, 5, 100, 40]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def quiet(_msg):
    pass


# ---------------------------------------------------------------------------------------------
# 1. safetensors 读取器：手算的字节串
# ---------------------------------------------------------------------------------------------

def test_reader_decodes_hand_built_bytes():
    f32 = struct.pack("<4f", 1.5, -2.0, 0.1, 3e38)
    f16 = struct.pack("<3e", 1.0, -0.5, 65504.0)
    bf16 = struct.pack("<4H", 0x3F80, 0xC000, 0x3E20, 0x7F80)      # 1.0、-2.0、0.15625、+inf 的 bf16 位模式
    i64 = struct.pack("<2q", -3, 2**40)
    data = st_bytes({"b": ("BF16", [2, 2], bf16), "a": ("F32", [2, 2], f32), "h": ("F16", [3], f16),
                     "i": ("I64", [2], i64), "empty": ("F16", [0, 4], b"")}, metadata={"format": "pt"})
    got = hw.parse_safetensors(data)
    assert set(got) == {"a", "b", "h", "i", "empty"}, "__metadata__ 不是张量，不该出现在结果里"
    assert got["a"].dtype == torch.float32 and got["a"].shape == (2, 2)
    assert got["a"].flatten().tolist() == list(struct.unpack("<4f", f32))
    assert got["h"].dtype == torch.float16 and got["h"].tolist() == [1.0, -0.5, 65504.0]
    assert got["b"].dtype == torch.bfloat16 and got["b"].float().flatten().tolist() == [1.0, -2.0, 0.15625, math.inf]
    assert got["i"].tolist() == [-3, 2**40]
    assert got["empty"].shape == (0, 4) and got["empty"].dtype == torch.float16


def test_reader_decodes_every_supported_dtype():
    cases = {"F64": ("<2d", [1e-300, -2.5], torch.float64), "I32": ("<2i", [-7, 2**30], torch.int32),
             "I16": ("<2h", [-300, 300], torch.int16), "I8": ("<2b", [-5, 7], torch.int8),
             "U8": ("<2B", [200, 1], torch.uint8), "BOOL": ("<2?", [True, False], torch.bool)}
    data = st_bytes({k: (k, [2], struct.pack(fmt, *vals)) for k, (fmt, vals, _) in cases.items()})
    got = hw.parse_safetensors(data)
    for k, (_, vals, dtype) in cases.items():
        assert got[k].dtype == dtype and got[k].tolist() == vals, (k, got[k])
    assert set(hw.SAFETENSORS_DTYPES) == set(cases) | {"F32", "F16", "BF16", "I64"}


def test_reader_uses_offsets_not_file_order():
    """data_offsets 说了算：头里的顺序与数据区里的顺序不同也要读对。"""
    x, y = struct.pack("<2f", 1.0, 2.0), struct.pack("<2f", 3.0, 4.0)
    header = {"y": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]},
              "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    h = json.dumps(header).encode()
    got = hw.parse_safetensors(struct.pack("<Q", len(h)) + h + x + y)
    assert got["x"].tolist() == [1.0, 2.0] and got["y"].tolist() == [3.0, 4.0]


def test_big_endian_hosts_swap_bytes():
    raw = struct.pack("<3e", 1.0, -2.5, 0.25)
    big = b"".join(raw[i:i + 2][::-1] for i in range(0, len(raw), 2))      # 大端机器上“本机顺序”的字节
    assert hw._decode(raw, torch.float16, 2, [3]).tolist() == [1.0, -2.5, 0.25]
    assert hw._decode(raw, torch.float16, 2, [3], little_endian_host=False).tolist() != [1.0, -2.5, 0.25]
    swapped = hw._decode(big, torch.float16, 2, [3], little_endian_host=False)
    # 在小端机器上模拟：把“大端主机”的结果按本机顺序解释前，先确认它就是原来的小端字节倒过来
    assert swapped.view(torch.uint8).numpy().tobytes() == raw


def test_reader_matches_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="safetensors 没装：这条交叉检查跳过（kata 不依赖它；开发依赖：pip install -e '.[dev]'）")
    sd = {"w": torch.randn(3, 5), "h": torch.randn(4).half(), "b": torch.randn(2, 2).bfloat16()}
    st.save_file(sd, str(tmp_path / "x.safetensors"))
    got = hw.read_safetensors(tmp_path / "x.safetensors")
    assert all(torch.equal(got[k], v) and got[k].dtype == v.dtype for k, v in sd.items())


def _valid() -> bytes:
    return st_bytes({"w": ("F32", [2], struct.pack("<2f", 1.0, 2.0)), "v": ("F16", [2], struct.pack("<2e", 1.0, 2.0))})


def _with_header(header) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + b"\0" * 16


BAD = {
    "空文件": (b"", "连开头 8 字节"),
    "不到 8 字节": (b"\x05\0\0", "连开头 8 字节"),
    "7 字节": (b"\x05" * 7, "连开头 8 字节"),
    "头长度多说了 1 字节": (struct.pack("<Q", 3) + b"{}", "被截断"),
    "只有头长度 0": (struct.pack("<Q", 0), "不是合法的 UTF-8 JSON"),
    "截断（少了数据）": (_valid()[:-3], "超出了数据区"),
    "截断（少了头）": (_valid()[:20], "被截断"),
    "头长度是乱码": (b"\xff" * 8 + b"{}", "被截断"),
    "头不是 JSON": (struct.pack("<Q", 4) + b"{no}", "不是合法的 UTF-8 JSON"),
    "头不是 UTF-8": (struct.pack("<Q", 2) + b"\xff\xfe", "不是合法的 UTF-8 JSON"),
    "头是列表": (struct.pack("<Q", 2) + b"[]", "应是一个对象"),
    "缺 data_offsets": (_with_header({"w": {"dtype": "F32", "shape": [1]}}), "dtype、shape、data_offsets"),
    "描述不是对象": (_with_header({"w": [1, 2]}), "dtype、shape、data_offsets"),
    "不认识的 dtype": (_with_header({"w": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}), "'F8_E4M3' 不认识"),
    "shape 有负数": (_with_header({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}), "shape 应是非负整数"),
    "shape 不是列表": (_with_header({"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}), "shape 应是非负整数"),
    "shape 有 bool": (_with_header({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}), "shape 应是非负整数"),
    "offsets 只有一个数": (_with_header({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}), "两个整数"),
    "offsets 不是整数": (_with_header({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}}), "两个整数"),
    "offsets 越界": (_with_header({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}), "超出了数据区"),
    "offsets 起点为负": (_with_header({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}), "超出了数据区"),
    "offsets 起点为 -1": (_with_header({"w": {"dtype": "I8", "shape": [1], "data_offsets": [-1, 0]}}), "超出了数据区"),
    "offsets 倒过来": (_with_header({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}}), "超出了数据区"),
    "字节数与形状不符": (_with_header({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}), "应占 12 字节"),
    "两个张量重叠": (_with_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                              "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}), "重叠"),
    "Git LFS 指针": (b"version https://git-lfs.github.com/spec/v1\noid sha256:83bf\nsize 51659776\n", "git lfs"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_corrupt_safetensors_give_a_chinese_error_naming_the_cause(case):
    data, expect = BAD[case]
    with pytest.raises(hw.WeightsFormatError, match=expect):
        hw.parse_safetensors(data, "model.safetensors")


def test_read_safetensors_takes_str_paths_and_says_when_it_cannot_read(tmp_path):
    (tmp_path / "a.safetensors").write_bytes(_valid())
    assert hw.read_safetensors(str(tmp_path / "a.safetensors"))["v"].tolist() == [1.0, 2.0]
    with pytest.raises(hw.WeightsFormatError, match="读不了"):
        hw.read_safetensors(tmp_path / "missing.safetensors")


def test_reader_accepts_any_bytes_like():
    for data in (bytearray(_valid()), memoryview(_valid())):
        assert hw.parse_safetensors(data)["w"].tolist() == [1.0, 2.0]


def test_adjacent_tensors_are_not_an_overlap():
    got = hw.parse_safetensors(_with_header({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                             "v": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}))
    assert got["w"].shape == got["v"].shape == (2,)


# ---------------------------------------------------------------------------------------------
# 2. 配置：transformers 的 config.json → MiniMindConfig；.pth 的形状 → MiniMindConfig
# ---------------------------------------------------------------------------------------------

def test_every_hf_config_field_arrives():
    """每个字段都用非默认值：漏映射哪一个，这里就对不上。"""
    cfg = MiniMindConfig(hidden_size=96, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=3,
                         vocab_size=777, max_position_embeddings=1234, rms_norm_eps=3e-6, rope_theta=5e4,
                         intermediate_size=200, dropout=0.25, tie_word_embeddings=False, flash_attn=False)
    got = hw.config_from_hf(hf_config(cfg) | {"dropout": 0.25, "flash_attn": False})
    assert got == cfg


def test_hf_config_defaults_follow_minimind():
    d = {"model_type": "minimind", "intermediate_size": None, "architectures": ["MiniMindForCausalLM"]}
    got = hw.config_from_hf(d)
    assert got == MiniMindConfig() and got.ffn_hidden_size == 1408 and got.qk_norm is False
    assert hw.config_from_hf(d, qk_norm=True).qk_norm is True
    assert hw.config_from_hf(d | {"head_dim": 64}) == MiniMindConfig(), "head_dim 64 × 默认 8 个头 = 默认 hidden 512"
    yarn = hw.config_from_hf(d | {"inference_rope_scaling": True})
    assert yarn.rope_scaling == {"beta_fast": 32, "beta_slow": 1, "factor": 16, "original_max_position_embeddings": 2048,
                                 "attention_factor": 1.0, "type": "yarn"}, "应与 minimind 的 MiniMindConfig 里的 YaRN 设置相同"
    given = {"type": "yarn", "factor": 4, "original_max_position_embeddings": 1024}
    assert hw.config_from_hf(d | {"rope_scaling": given, "inference_rope_scaling": True}).rope_scaling == given


def test_qwen3_export_of_minimind3():
    d = {"model_type": "qwen3", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
         "head_dim": 16, "attention_bias": False, "use_sliding_window": False, "sliding_window": None,
         "max_window_layers": 8, "rope_parameters": None}
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # qwen3 的这些字段取中性值时是已知的：不该有“不认识”的警告
        got = hw.config_from_hf(d)
    assert got.qk_norm is True and got.tie_word_embeddings is False
    assert hw.config_from_hf(d | {"tie_word_embeddings": True}).tie_word_embeddings is True
    with pytest.raises(hw.WeightsFormatError, match="attention_bias"):
        hw.config_from_hf(d | {"attention_bias": True})
    with pytest.raises(hw.WeightsFormatError, match="rope_scaling"):
        hw.config_from_hf(d | {"rope_scaling": {"rope_type": "yarn", "factor": 4}})


@pytest.mark.parametrize("change, expect", [
    ({"model_type": "llama"}, "model_type"),
    ({"use_moe": True}, "MoE"),
    ({"hidden_act": "gelu"}, "silu"),
    ({"head_dim": 32}, "head_dim"),
    ({"rope_scaling": {"type": "linear", "factor": 2}}, "YaRN"),
    ({"num_attention_heads": 5}, "整除"),
    ({"num_attention_heads": 0, "num_key_value_heads": 0}, "配置不成立"),
])
def test_bad_hf_configs_are_refused(change, expect):
    d = hf_config(small_config()) | change
    with pytest.raises(hw.WeightsFormatError, match=expect):
        hw.config_from_hf(d)
    with pytest.raises(hw.WeightsFormatError, match="JSON 对象"):
        hw.config_from_hf([1])


def test_unknown_hf_fields_warn_and_bookkeeping_is_silent(recwarn):
    hw.config_from_hf(hf_config(small_config()))
    assert not recwarn.list, f"记账字段不该触发警告：{[str(w.message) for w in recwarn.list]}"
    with pytest.warns(UserWarning, match="some_new_field"):
        hw.config_from_hf(hf_config(small_config()) | {"some_new_field": 1})


def test_infer_config_needs_the_head_count():
    cfg = small_config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)   # k_proj 32 行
    sd = hw.normalize_state_dict(make_model(cfg).state_dict())
    got, notes = hw.infer_config(sd, num_attention_heads=4)
    assert got == replace(cfg, max_position_embeddings=32768) and any("给定的 4" in n for n in notes)
    default, notes = hw.infer_config(sd)                      # 默认 8 个头：head_dim 8，KV 头 4
    assert (default.num_attention_heads, default.num_key_value_heads) == (8, 4) and any("默认的 8" in n for n in notes)
    assert any("rms_norm_eps" in n and "1e-05" in n for n in notes)
    assert hw.infer_config(sd, num_attention_heads=4, rms_norm_eps=1e-6)[0].rms_norm_eps == 1e-6
    for bad in (3, 0, -4):
        with pytest.raises(hw.WeightsFormatError, match=f"分不成 {bad} 个头"):
            hw.infer_config(sd, num_attention_heads=bad)
    with pytest.raises(hw.WeightsFormatError, match="k_proj"):
        hw.infer_config(sd, num_attention_heads=1)           # head_dim 64，k_proj 的 32 行不够一个头


def test_infer_config_reads_qk_norm_layout():
    cfg = small_config(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, qk_norm=True, rms_norm_eps=1e-6)
    sd = hw.normalize_state_dict(make_model(cfg).state_dict())
    got, notes = hw.infer_config(sd)
    assert any("q_norm" in n and "head_dim=16" in n for n in notes), notes
    assert got == replace(cfg, max_position_embeddings=32768), "有 q_norm 时 head_dim 就是它的长度，头数由此算出；eps 默认 minimind-3 的 1e-6"
    with pytest.raises(hw.WeightsFormatError, match="矛盾"):
        hw.infer_config(sd, num_attention_heads=8)


@pytest.mark.parametrize("mutate, expect", [
    (lambda sd: [sd.pop("model.embed_tokens.weight"), sd.pop("lm_head.weight")], "embed_tokens"),
    (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("model.layers.1.")], "连续"),
    (lambda sd: sd.pop("model.layers.0.mlp.gate_proj.weight"), "gate_proj"),
    (lambda sd: sd.update({"model.layers.0.mlp.experts.0.up_proj.weight": torch.zeros(1)}), "MoE"),
    (lambda sd: sd.update({"model.layers.0.self_attn.q_proj.weight": torch.zeros(32, 64)}), "要求两者相等"),
])
def test_infer_config_refuses_what_is_not_a_minimind_model(mutate, expect):
    sd = hw.normalize_state_dict(make_model(small_config(num_hidden_layers=3)).state_dict())
    mutate(sd)
    with pytest.raises(hw.WeightsFormatError, match=expect):
        hw.infer_config(sd)


def test_normalize_state_dict():
    t = torch.randn(3).half()
    sd = hw.normalize_state_dict({"model": {"module._orig_mod.a": t, "n": torch.tensor([1, 2])}, "optimizer": {}})
    assert set(sd) == {"a", "n"} and sd["a"].dtype == torch.float32 and torch.equal(sd["a"], t.float())
    assert sd["n"].dtype == torch.int64
    for bad in ({}, [1], {"a": 1.0}):
        with pytest.raises(hw.WeightsFormatError, match="state_dict"):
            hw.normalize_state_dict(bad)


# ---------------------------------------------------------------------------------------------
# 3. 整条路：写出文件 → load → logits 与原模型相同
# ---------------------------------------------------------------------------------------------

def test_hf_folder_fp32_gives_the_original_logits(tmp_path):
    model = make_model(small_config())
    folder = write_hf_folder(tmp_path / "MiniMind2-small", model, torch.float32)
    got = kg.load(folder, "solutions", say=quiet)
    assert got.checkpoint.kind == "hf" and got.config == model.config
    assert torch.equal(logits(got.model), logits(model))
    assert (got.bos, got.eos) == ("<|im_start|>", "<|im_end|>")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_converts_exactly(tmp_path, dtype):
    model = make_model(small_config())
    got = kg.load(write_hf_folder(tmp_path / "hf", model, dtype), "solutions", say=quiet)
    for k, v in got.model.state_dict().items():
        assert v.dtype == torch.float32, f"{k} 应转成 float32，实际 {v.dtype}"
        assert torch.equal(v, model.state_dict()[k].to(dtype).float()), f"{k}：半精度 → float32 应是精确的"
    assert torch.equal(logits(got.model), logits(rounded(model, dtype)))
    assert not torch.equal(logits(got.model), logits(model)), "舍入过的权重与原权重应有差别（否则这条测试说明不了什么）"


def test_tied_embeddings(tmp_path):
    model = make_model(small_config())
    sd = dict(model.state_dict())
    # 只有 lm_head（有的导出工具留下的是它）：embed_tokens 用同一个矩阵
    only_head = {k: v for k, v in sd.items() if k != "model.embed_tokens.weight"}
    got = kg.load(write_hf_folder(tmp_path / "a", model, torch.float32, only_head), "solutions", say=quiet)
    assert torch.equal(got.model.model.embed_tokens.weight, model.lm_head.weight)
    assert torch.equal(logits(got.model), logits(model))
    # 配置说绑定，文件里却是两个不同的矩阵：报错，而不是悄悄用其中一个
    two = dict(sd) | {"lm_head.weight": sd["lm_head.weight"] + 1}
    with pytest.raises(ValueError, match="tie_word_embeddings=true"):
        kg.load(write_hf_folder(tmp_path / "b", model, torch.float32, two), "solutions", say=quiet)


def test_untied_embeddings(tmp_path):
    model = make_model(small_config(tie_word_embeddings=False))
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)
    got = kg.load(write_hf_folder(tmp_path / "a", model, torch.float32), "solutions", say=quiet)
    assert got.config.tie_word_embeddings is False and torch.equal(logits(got.model), logits(model))
    only_emb = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    with pytest.raises(ValueError, match="tie_word_embeddings=false"):
        kg.load(write_hf_folder(tmp_path / "b", model, torch.float32, only_emb), "solutions", say=quiet)


def test_pytorch_model_bin_folder(tmp_path):
    """convert_model.py 用 safe_serialization=False 导出的 HF 文件夹里是 pytorch_model.bin。"""
    model = make_model(small_config())
    folder = tmp_path / "hf"
    folder.mkdir()
    torch.save({k: v.half() for k, v in model.state_dict().items()}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps(hf_config(model.config)))
    write_tokenizer(folder)
    got = kg.load(folder, "solutions", say=quiet)
    assert torch.equal(logits(got.model), logits(rounded(model, torch.float16)))


def _minimind_pth(path: Path, model) -> Path:
    """minimind 训练脚本的存法（trainer/trainer_utils.py）：{k: v.half()}，绑定的两个键都在。"""
    torch.save({k: v.half().cpu() for k, v in model.state_dict().items()}, path)
    return path


def test_minimind2_small_pth_at_real_shapes(tmp_path):
    """full_sft_512.pth 的形状（MiniMind2-small，25,829,888 个参数），配置全部从形状推出。"""
    torch.manual_seed(0)
    model = Model(MiniMindConfig(max_position_embeddings=64)).eval()
    assert sum(p.numel() for p in model.parameters()) == 25_829_888
    pth = _minimind_pth(tmp_path / "full_sft_512.pth", model)
    write_tokenizer(tmp_path / "model")
    said = []
    got = kg.load(pth, "solutions", tokenizer=tmp_path / "model", say=said.append)
    assert got.checkpoint.kind == "minimind-pth"
    want = MiniMindConfig(intermediate_size=1408)
    assert got.config == want, f"从形状推出的配置应是 MiniMind2-small：期望 {want}，实际 {got.config}"
    assert any("注意力头数" in s for s in said), "头数是假设的：要告诉用户"
    ids = IDS[:, :4]
    ref = rounded(model, torch.float16)
    assert torch.equal(logits(got.model, ids), logits(ref, ids))


def test_minimind2_small_hf_folder_at_real_shapes(tmp_path):
    torch.manual_seed(1)
    model = Model(MiniMindConfig(max_position_embeddings=64, intermediate_size=1408)).eval()
    folder = write_hf_folder(tmp_path / "MiniMind2-small", model, torch.float16)
    data = (folder / "model.safetensors").read_bytes()
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
    assert sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__") == 25_829_888, \
        "绑定的 lm_head 不重复存：文件里的参数数应是 25,829,888（同 HF 上的 MiniMind2-small）"
    got = kg.load(folder, "solutions", say=quiet)
    assert got.config == model.config
    ids = IDS[:, :4]
    assert torch.equal(logits(got.model, ids), logits(rounded(model, torch.float16), ids))


def test_minimind3_style_pth_with_qk_norm(tmp_path):
    cfg = small_config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, qk_norm=True, rms_norm_eps=1e-6)
    model = make_model(cfg)
    pth = _minimind_pth(tmp_path / "full_sft_768.pth", model)
    write_tokenizer(tmp_path)
    got = kg.load(pth, "solutions", say=quiet)        # 同目录有 tokenizer.json：不用 --tokenizer
    assert got.config == replace(cfg, max_position_embeddings=32768)
    assert torch.equal(logits(got.model), logits(rounded(model, torch.float16)))


def test_untied_pth_is_recognised_from_the_weights(tmp_path):
    model = make_model(small_config(tie_word_embeddings=False))
    pth = _minimind_pth(tmp_path / "pretrain_512.pth", model)
    write_tokenizer(tmp_path)
    got = kg.load(pth, "solutions", say=quiet)
    assert got.config.tie_word_embeddings is False, "embed_tokens 与 lm_head 不同：不绑定"
    assert torch.equal(logits(got.model), logits(rounded(model, torch.float16)))


def test_flags_for_a_bare_pth_arrive(tmp_path):
    """--num-attention-heads / --rms-norm-eps 只对旁边没有 config.json 的 .pth 有用：它们必须真的生效。"""
    cfg = small_config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-3)
    model = make_model(cfg)
    pth = _minimind_pth(tmp_path / "full_sft_512.pth", model)
    write_tokenizer(tmp_path)
    got = kg.load(pth, "solutions", num_attention_heads=4, rms_norm_eps=1e-3, say=quiet)
    assert got.config == replace(cfg, max_position_embeddings=32768)
    assert torch.equal(logits(got.model), logits(rounded(model, torch.float16)))
    default = kg.load(pth, "solutions", num_attention_heads=4, say=quiet)
    assert default.config.rms_norm_eps == 1e-5 and not torch.equal(logits(default.model), logits(got.model))


def test_loading_errors_name_what_was_expected(tmp_path):
    model = make_model(small_config())
    pth = _minimind_pth(tmp_path / "full_sft_512.pth", model)
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        kg.load(pth, "solutions", say=quiet)
    with pytest.raises(FileNotFoundError, match="找不到分词器"):
        kg.load(pth, "solutions", tokenizer=tmp_path / "nope", say=quiet)
    with pytest.raises(FileNotFoundError, match="没有 config.json"):
        kg.load(tmp_path, "solutions", say=quiet)
    with pytest.raises(FileNotFoundError, match="找不到 checkpoint"):
        kg.load(tmp_path / "missing.pth", "solutions", say=quiet)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="后缀"):
        kg.load(tmp_path / "notes.txt", "solutions", say=quiet)
    # 截断的 .pth（下载到一半）
    broken = tmp_path / "broken" / "full_sft_512.pth"
    broken.parent.mkdir()
    broken.write_bytes(pth.read_bytes()[:1000])
    with pytest.raises(ValueError, match="文件不完整"):
        kg.load(broken, "solutions", tokenizer=tmp_path, say=quiet)
    lfs = tmp_path / "lfs" / "pretrain_512.pth"
    lfs.parent.mkdir()
    lfs.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    with pytest.raises(ValueError, match="git lfs"):
        kg.load(lfs, "solutions", tokenizer=tmp_path, say=quiet)
    # 头数给错：q_proj 分不成这么多头
    write_tokenizer(tmp_path / "tok")
    with pytest.raises(ValueError, match="分不成 3 个头"):
        kg.load(pth, "solutions", tokenizer=tmp_path / "tok", num_attention_heads=3, say=quiet)


def test_hf_folder_errors(tmp_path):
    model = make_model(small_config())
    folder = write_hf_folder(tmp_path / "hf", model)
    with pytest.raises(ValueError, match="--num-attention-heads"):
        kg.load(folder, "solutions", num_attention_heads=8, say=quiet)       # 有 config.json 时不该悄悄忽略
    with pytest.raises(ValueError, match="--rms-norm-eps"):
        kg.load(folder, "solutions", rms_norm_eps=1e-6, say=quiet)
    conf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(conf | {"intermediate_size": 128}))
    with pytest.raises(ValueError, match="形状.*gate_proj"):
        kg.load(folder, "solutions", say=quiet)                              # config.json 与权重不是同一个模型
    (folder / "config.json").write_text(json.dumps(conf))
    (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-10])
    with pytest.raises(ValueError, match="截断"):
        kg.load(folder, "solutions", say=quiet)
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="分片"):
        kg.load(folder, "solutions", say=quiet)
    small_tok = tmp_path / "hf2"
    write_hf_folder(small_tok, make_model(small_config(vocab_size=100)))
    with pytest.raises(ValueError, match="不配套"):
        kg.load(small_tok, "solutions", say=quiet)
    (small_tok / "config.json").write_text(json.dumps({"hidden_size": 64, "what": 1}))
    with pytest.raises(ValueError, match="不认识的字段"):
        kg.load(small_tok, "solutions", say=quiet)
    (small_tok / "tokenizer.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="不是认识的分词器"):
        hw.read_tokenizer_file(small_tok)


def test_unreadable_json_files_are_named(tmp_path):
    folder = write_hf_folder(tmp_path / "hf", make_model(small_config()))
    conf = (folder / "config.json").read_text()
    for text, expect in (("{oops", "读不了 .*config.json"), ("[1, 2]", "应是一个 JSON 对象")):
        (folder / "config.json").write_text(text)
        with pytest.raises(ValueError, match=expect):
            kg.load(folder, "solutions", say=quiet)
    (folder / "config.json").write_text(conf)
    (folder / "tokenizer_config.json").write_text("{oops")
    with pytest.raises(ValueError, match="读不了 .*tokenizer_config.json"):
        kg.load(folder, "solutions", say=quiet)
    (folder / "tokenizer.json").write_text("{oops")
    with pytest.raises(ValueError, match="读不了分词器"):
        kg.load(folder, "solutions", say=quiet)


def test_pth_files_are_read_with_weights_only(tmp_path, monkeypatch):
    """torch < 2.6 的 torch.load 默认会执行 pickle 里的任意代码：kata 每次都明确要 weights_only=True。"""
    model = make_model(small_config())
    pth = _minimind_pth(tmp_path / "full_sft_512.pth", model)
    write_tokenizer(tmp_path)
    calls, real = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k) or real(*a, **k))
    kg.load(pth, "solutions", say=quiet)
    assert calls and all(k.get("weights_only") is True for k in calls), calls
    evil = tmp_path / "evil" / "model.pth"
    evil.parent.mkdir()
    real_save = torch.save
    real_save({"w": torch.zeros(1), "x": Path("/etc")}, evil)       # 不是纯张量的 pickle：weights_only 拒绝
    with pytest.raises(ValueError, match="weights_only"):
        kg.load(evil, "solutions", tokenizer=tmp_path, say=quiet)


def test_extra_or_missing_keys_are_refused(tmp_path):
    model = make_model(small_config())
    sd = hf_state_dict(model)
    sd.pop("model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ValueError, match="缺少.*up_proj"):
        kg.load(write_hf_folder(tmp_path / "a", model, torch.float32, sd), "solutions", say=quiet)
    sd = hf_state_dict(model) | {"model.layers.0.self_attn.o_proj.bias": torch.zeros(64)}
    with pytest.raises(ValueError, match="多出.*o_proj.bias"):
        kg.load(write_hf_folder(tmp_path / "b", model, torch.float32, sd), "solutions", say=quiet)
    sd = hf_state_dict(model) | {"model.layers.0.self_attn.q_norm.weight": torch.ones(8)}
    with pytest.raises(ValueError, match="缺少.*k_norm"):
        # 有 q_norm 就按 QK-norm 的结构建模型（minimind 的 config 里没有这一项）：只有一半的 norm 是坏文件
        kg.load(write_hf_folder(tmp_path / "c", model, torch.float32, sd), "solutions", say=quiet)


def test_kata_checkpoint_folder_still_loads(tmp_path):
    model = make_model(small_config(vocab_size=11))
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "model.pth")
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    (folder / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": list("abcdefghij ")}))
    for ckpt in (folder, folder / "model.pth"):
        got = kg.load(ckpt, "solutions", say=quiet)
        assert got.checkpoint.kind == "kata" and got.bos is None
        assert torch.equal(logits(got.model, torch.tensor([[1, 2, 3]])), logits(model, torch.tensor([[1, 2, 3]])))
    (folder / "config.json").write_text(json.dumps(model.config.to_dict() | {"num_attention_heads": 5}))
    with pytest.raises(ValueError, match="配置不成立"):
        kg.load(folder, "solutions", say=quiet)
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="kata.train 会把它"):
        kg.load(folder, "solutions", say=quiet)


# ---------------------------------------------------------------------------------------------
# 4. 分词器：模块 07 的 from_hf_json（你的没写完时用参考实现）
# ---------------------------------------------------------------------------------------------

def test_hand_written_tokenizer_json_is_one_hf_accepts():
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers 没装（开发依赖：pip install -e '.[dev]'）")
    hf = tokenizers.Tokenizer.from_str(json.dumps(hf_tokenizer_json()))
    text = "<|im_start|>the cat sat on the mat, ok?"
    ref = resolve("07_tokenizer", "solutions").BPETokenizer
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        write_tokenizer(Path(d))
        ours = ref.from_hf_json(Path(d) / "tokenizer.json")
    assert ours.encode(text) == hf.encode(text).ids
    assert 261 in hf.encode(" the").ids, "合并 Ġt + he 应生效（否则这份手写文件没测到 merges）"


def test_tokenizer_falls_back_to_the_reference_when_yours_is_unfinished(tmp_path):
    stub = tmp_path / "impl"
    stub.mkdir()
    (stub / "bpe.py").write_text(
        "def train_bpe(*a, **k):\n    raise NotImplementedError('还没实现：train_bpe')\n"
        "class BPETokenizer:\n    @classmethod\n    def from_hf_json(cls, path):\n"
        "        raise NotImplementedError('还没实现：from_hf_json')\n", encoding="utf-8")
    write_tokenizer(tmp_path / "tok")
    said = []
    tok, specials = kg.load_tokenizer(tmp_path / "tok", str(stub), say=said.append)
    assert said and "from_hf_json" in said[0] and "参考实现" in said[0]
    assert tok.encode("<|im_start|> the") == [1, 261] and specials == {"bos": "<|im_start|>", "eos": "<|im_end|>", "added": 3}
    said.clear()
    kg.load_tokenizer(tmp_path / "tok" / "tokenizer.json", "solutions", say=said.append)
    assert not said
    # from_hf_json 写完了、encode 还是桩：也要换成参考实现（否则生成到一半才崩）
    half = tmp_path / "half"
    half.mkdir()
    (half / "bpe.py").write_text(
        "def train_bpe(*a, **k):\n    raise NotImplementedError('还没实现：train_bpe')\n"
        "class BPETokenizer:\n    @classmethod\n    def from_hf_json(cls, path):\n        return cls()\n"
        "    def encode(self, text):\n        raise NotImplementedError('还没实现：encode')\n"
        "    def decode(self, ids):\n        raise NotImplementedError('还没实现：decode')\n", encoding="utf-8")
    tok, _ = kg.load_tokenizer(tmp_path / "tok", str(half), say=said.append)
    assert said and "encode" in said[0] and tok.encode("<|im_start|> the") == [1, 261]


def test_unfinished_model_code_falls_back_to_the_reference(tmp_path, monkeypatch):
    """--impl 的模块 06 还没写完（构造时 NotImplementedError）：说一声，用参考实现跑。"""
    stub = tmp_path / "impl"
    stub.mkdir()
    nie = "    def __init__(self, *a, **k):\n        raise NotImplementedError('还没实现：{}')\n"
    (stub / "block.py").write_text("class MiniMindBlock:\n" + nie.format("MiniMindBlock"), encoding="utf-8")
    (stub / "model.py").write_text("class MiniMindModel:\n" + nie.format("MiniMindModel")
                                   + "class MiniMindForCausalLM:\n" + nie.format("MiniMindForCausalLM"), encoding="utf-8")
    model = make_model(small_config())
    folder = write_hf_folder(tmp_path / "hf", model, torch.float32)
    said = []
    got = kg.load(folder, "solutions", say=said.append)
    assert not said
    import kata.impl as ki

    real = ki.resolve            # “exercises” 的模块 06 换成上面的桩，其余照旧
    monkeypatch.setattr(ki, "resolve", lambda m, impl=None: real(
        m, str(stub) if (m, impl) == ("06_transformer_block", "exercises") else "solutions"))
    got = kg.load(folder, "exercises", say=said.append)
    assert any("MiniMindForCausalLM 还没实现" in s for s in said), said
    assert torch.equal(logits(got.model), logits(model))


def test_load_model_returns_model_tokenizer_config(tmp_path):
    model = make_model(small_config())
    m, tok, cfg = kg.load_model(write_hf_folder(tmp_path / "hf", model, torch.float32), "solutions", say=quiet)
    assert cfg == model.config and tok.encode("<|im_end|>") == [2] and torch.equal(logits(m), logits(model))


def test_tokenizer_config_is_optional_and_accepts_added_token_dicts(tmp_path):
    write_tokenizer(tmp_path / "a", config=False)
    assert hw.read_tokenizer_file(tmp_path / "a")[3] == {"bos": None, "eos": None, "added": 3}
    write_tokenizer(tmp_path / "b")
    (tmp_path / "b" / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": {"content": "<|im_start|>", "lstrip": False}, "eos_token": "<|im_end|>"}))
    assert hw.read_tokenizer_file(tmp_path / "b")[3] == {"bos": "<|im_start|>", "eos": "<|im_end|>", "added": 3}


def test_a_tokenizer_of_the_other_minimind_generation_is_flagged(tmp_path):
    """MiniMind2 的分词器 3 个特殊 token，minimind-3 的 36 个，词表都是 6400：配错不会有形状错误，要明说。"""
    big = hf_tokenizer_json()
    for i in range(33):
        big["added_tokens"].append({"id": TOK_VOCAB + i, "content": f"<|extra_{i}|>", "special": True})
        big["model"]["vocab"][f"<|extra_{i}|>"] = TOK_VOCAB + i
    (tmp_path / "m3").mkdir()
    (tmp_path / "m3" / "tokenizer.json").write_text(json.dumps(big))
    write_tokenizer(tmp_path / "m2")
    v2 = _minimind_pth(tmp_path / "full_sft_512.pth", make_model(small_config(vocab_size=TOK_VOCAB + 40)))
    v3 = _minimind_pth(tmp_path / "full_sft_768.pth", make_model(small_config(
        vocab_size=TOK_VOCAB + 40, num_attention_heads=4, num_key_value_heads=2, qk_norm=True)))
    for pth, tok, flagged in ((v2, "m3", True), (v2, "m2", False), (v3, "m2", True), (v3, "m3", False)):
        said = []
        kg.load(pth, "solutions", tokenizer=tmp_path / tok, say=said.append)
        assert any("乱码" in s for s in said) == flagged, (pth.name, tok, said)
        if flagged:
            gen = "minimind-3" if tok == "m3" else "MiniMind2"
            assert any(f"（{gen} 的分词器）" in s for s in said), said


# ---------------------------------------------------------------------------------------------
# 5. 命令行：python -m kata generate
# ---------------------------------------------------------------------------------------------

def test_generate_main_adds_bos_and_stops_at_eos(tmp_path, monkeypatch, capsys):
    import kata.train as kt

    folder = write_hf_folder(tmp_path / "hf", make_model(small_config()))
    seen = {}

    def fake_stream(model, tok, prompt, **kw):
        seen.update(prompt=prompt, **kw)
        return ""

    monkeypatch.setattr(kt, "stream", fake_stream)
    assert kg.main(["--ckpt", str(folder), "--prompt", "the", "--impl", "solutions"]) == 0
    assert seen["prompt"] == "<|im_start|>the" and seen["eos_id"] == 2
    assert "<|im_start|>" in capsys.readouterr().err
    assert kg.main(["--ckpt", str(folder), "--prompt", "the", "--impl", "solutions", "--no-bos"]) == 0
    assert seen["prompt"] == "the" and seen["eos_id"] == 2


def test_generate_main_on_a_minimind_pth(tmp_path, capsys):
    model = make_model(small_config())
    (tmp_path / "out").mkdir()
    pth = _minimind_pth(tmp_path / "out" / "full_sft_512.pth", model)
    assert kg.main(["--ckpt", str(pth), "--prompt", "the", "--max-new-tokens", "3", "--impl", "solutions"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    write_tokenizer(tmp_path / "model")
    assert kg.main(["--ckpt", str(pth), "--tokenizer", str(tmp_path / "model"), "--prompt", "the cat",
                    "--max-new-tokens", "4", "--temperature", "0", "--impl", "solutions", "--no-bos"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("the cat") and "注意力头数" in out.err


def test_generate_only_samples_ids_the_tokenizer_knows(tmp_path, capsys):
    """模型词表 2000 行、分词器 265 个 id：多出来的行不能被抽到（否则解码时崩掉，或印出不存在的 token）。"""
    folder = write_hf_folder(tmp_path / "hf", make_model(small_config(vocab_size=2000)))
    assert kg.main(["--ckpt", str(folder), "--prompt", "the", "--max-new-tokens", "40", "--temperature", "2",
                    "--impl", "solutions", "--no-bos"]) == 0
    out = capsys.readouterr()
    assert "只在后者里挑" in out.err and out.out.startswith("the")


def test_generate_main_passes_the_shape_flags(tmp_path, capsys):
    model = make_model(small_config())
    pth = _minimind_pth(tmp_path / "full_sft_512.pth", model)
    write_tokenizer(tmp_path)
    base = ["--ckpt", str(pth), "--prompt", "the", "--max-new-tokens", "2", "--impl", "solutions"]
    assert kg.main(base + ["--num-attention-heads", "3"]) == 2
    assert "分不成 3 个头" in capsys.readouterr().err
    assert kg.main(base + ["--rms-norm-eps", "0.001"]) == 0
    assert "rms_norm_eps" not in capsys.readouterr().err, "给了 eps 就不该再说“eps 是假设的”"
    folder = write_hf_folder(tmp_path / "hf", model)
    assert kg.main(["--ckpt", str(folder), "--rms-norm-eps", "0.001", "--impl", "solutions"]) == 2
    assert "--rms-norm-eps" in capsys.readouterr().err


def test_generate_main_leaves_a_matching_vocabulary_alone(tmp_path, capsys):
    folder = write_hf_folder(tmp_path / "hf", make_model(small_config(vocab_size=TOK_VOCAB)))
    assert kg.main(["--ckpt", str(folder), "--prompt", "the", "--max-new-tokens", "3", "--impl", "solutions"]) == 0
    assert "只在后者里挑" not in capsys.readouterr().err
    with pytest.raises(SystemExit):
        kg.main(["--prompt", "the"])                    # --ckpt 是必需的


def test_python_m_kata_generate_on_a_hf_folder(tmp_path):
    """端到端：另起一个进程，python -m kata generate --ckpt <HF 文件夹> 打印提示词和续写。"""
    folder = write_hf_folder(tmp_path / "MiniMind2-small", make_model(small_config()), torch.bfloat16)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "kata", "generate", "--ckpt", str(folder), "--prompt", "the cat",
                        "--max-new-tokens", "8", "--temperature", "0", "--impl", "solutions"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the cat") and len(r.stdout.rstrip("\n")) > len("the cat"), r.stdout
    assert "个 token" in r.stderr
