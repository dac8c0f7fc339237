"""读 minimind 发布的权重：Hugging Face 文件夹（config.json + model.safetensors）与 minimind 训练脚本存的 .pth。

kata 的 checkpoint 与 minimind 的权重用的是同一套键名（model.embed_tokens.weight、
model.layers.0.self_attn.q_proj.weight、lm_head.weight……，见 minimind 的 model/model_minimind.py），
所以“读别人的权重”只剩三件事：

1. **safetensors**（Hugging Face 的权重格式）：8 字节小端整数 N，N 字节的 JSON 头
   （每个张量的 dtype、shape、data_offsets），然后是所有张量的原始小端字节。格式很简单，
   这里手写一个读取器（``read_safetensors``），不依赖 safetensors 包；
2. **配置**：HF 文件夹的 config.json 是 transformers 的 ``MiniMindConfig(PretrainedConfig)`` 存的，
   多了 architectures、auto_map、torch_dtype、transformers_version 这类记账字段，
   ``config_from_hf`` 把它映射到 kata.MiniMindConfig；minimind 训练脚本存的 ``full_sft_512.pth``
   旁边没有配置，``infer_config`` 从张量形状推出来（只有注意力头数推不出，要给，默认 8）；
3. **数值**：minimind 把权重存成 fp16（训练脚本）或 fp16 / bf16（HF 文件），这里一律转成 float32
   （fp16、bf16 → fp32 是精确的，不丢任何一位）。

所有 .pth 都用 ``torch.load(weights_only=True)`` 读：只还原张量和基本类型，不执行文件里的代码。
"""
from __future__ import annotations

import json
import math
import re
import struct
import sys
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Mapping, Optional

import torch

from kata.config import MiniMindConfig

__all__ = [
    "WeightsFormatError", "SAFETENSORS_DTYPES", "parse_safetensors", "read_safetensors",
    "config_from_hf", "infer_config", "normalize_state_dict", "tie_embeddings", "read_tokenizer_file",
    "Checkpoint", "open_checkpoint", "MINIMIND_YARN",
]


class WeightsFormatError(ValueError):
    """权重 / 配置文件读不了：说清楚期望什么、实际是什么。"""


# ---------------------------------------------------------------------------------------------
# 1. safetensors
# ---------------------------------------------------------------------------------------------

# safetensors 的 dtype 名 → (torch dtype, 每个元素的字节数)
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8), "F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8), "I32": (torch.int32, 4), "I16": (torch.int16, 2), "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1), "BOOL": (torch.bool, 1),
}
_LFS_POINTER = b"version https://git-lfs"


def _decode(raw: bytes, dtype: torch.dtype, itemsize: int, shape: list[int],
            little_endian_host: bool = sys.byteorder == "little") -> torch.Tensor:
    """一段小端字节 → 张量（复制一份：张量不与文件缓冲区共享内存，对齐也不成问题）。"""
    if not raw:
        return torch.empty(shape, dtype=dtype)
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    if not little_endian_host and itemsize > 1:     # 大端机器：每个元素的字节倒过来
        t = t.view(-1, itemsize).flip(1).reshape(-1)
    return t.view(dtype).reshape(shape)


def parse_safetensors(data: bytes, name: str = "safetensors 数据") -> dict[str, torch.Tensor]:
    """解析 safetensors 文件的全部字节，返回 {名字: 张量}（文件里的 dtype 原样保留）。

    结构：``[8 字节小端 u64：头长度 N][N 字节 UTF-8 JSON 头][数据区]``；JSON 头里每个张量是
    ``{"dtype": "F16", "shape": [6400, 512], "data_offsets": [起, 止]}``（相对数据区开头的字节偏移），
    可选的 ``"__metadata__"`` 是字符串到字符串的字典（这里不用）。任何一处对不上都抛 WeightsFormatError。
    """
    data = bytes(data)
    if data.startswith(_LFS_POINTER):
        raise WeightsFormatError(
            f"{name} 是 Git LFS 的指针文件（{len(data)} 字节的文本），不是真正的权重：clone 之前没装 git-lfs。"
            "运行 git lfs install，然后在仓库里 git lfs pull（或用 huggingface-cli download / modelscope download 重新下载）")
    if len(data) < 8:
        raise WeightsFormatError(f"{name} 只有 {len(data)} 字节，连开头 8 字节的头部长度都不够：文件是空的或下载不完整")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise WeightsFormatError(
            f"{name} 的开头说 JSON 头有 {n} 字节，但后面只剩 {len(data) - 8} 字节：文件被截断了（下载不完整？），"
            "或者它根本不是 safetensors 文件")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsFormatError(f"{name} 的 JSON 头（第 8–{8 + n} 字节）不是合法的 UTF-8 JSON：{exc}（文件已损坏）") from None
    if not isinstance(header, dict):
        raise WeightsFormatError(f"{name} 的 JSON 头应是一个对象 {{名字: 描述}}，实际是 {type(header).__name__}")
    buf = memoryview(data)[8 + n:]
    out: dict[str, torch.Tensor] = {}
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        where = f"{name} 里的张量 {key!r}"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            raise WeightsFormatError(f"{where} 的描述应有 dtype、shape、data_offsets 三项，实际 {info!r}")
        dt = info["dtype"]
        if dt not in SAFETENSORS_DTYPES:
            raise WeightsFormatError(f"{where} 的 dtype {dt!r} 不认识（支持 {', '.join(SAFETENSORS_DTYPES)}）")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in shape):
            raise WeightsFormatError(f"{where} 的 shape 应是非负整数的列表，实际 {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or any(isinstance(o, bool) or not isinstance(o, int) for o in offsets)):
            raise WeightsFormatError(f"{where} 的 data_offsets 应是 [起, 止] 两个整数，实际 {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= len(buf):
            raise WeightsFormatError(
                f"{where} 的 data_offsets {offsets} 超出了数据区（数据区只有 {len(buf)} 字节）：文件被截断或已损坏")
        torch_dtype, itemsize = SAFETENSORS_DTYPES[dt]
        need = math.prod(shape) * itemsize
        if end - begin != need:
            raise WeightsFormatError(
                f"{where}：{dt} × 形状 {shape} 应占 {need} 字节，data_offsets {offsets} 给的是 {end - begin} 字节")
        spans.append((begin, end, key))
        out[key] = _decode(buf[begin:end], torch_dtype, itemsize, shape)
    spans.sort()
    for (b0, e0, k0), (b1, e1, k1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise WeightsFormatError(f"{name} 里张量 {k0!r} [{b0}, {e0}) 与 {k1!r} [{b1}, {e1}) 的数据重叠：文件已损坏")
    return out


def read_safetensors(path) -> dict[str, torch.Tensor]:
    """读一个 .safetensors 文件（整个读进内存；MiniMind2-small 的 fp16 文件约 52 MB）。"""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsFormatError(f"读不了 {path}：{exc}") from exc
    return parse_safetensors(data, str(path))


# ---------------------------------------------------------------------------------------------
# 2. 配置
# ---------------------------------------------------------------------------------------------

# minimind 的 inference_rope_scaling=True 时用的 YaRN 设置（model/model_minimind.py 的 MiniMindConfig）
MINIMIND_YARN = {"beta_fast": 32, "beta_slow": 1, "factor": 16, "original_max_position_embeddings": 2048,
                 "attention_factor": 1.0, "type": "yarn"}

_KATA_FIELDS = {f.name for f in fields(MiniMindConfig)}
# 直接同名映射的字段（qk_norm 不在 minimind 的 config 里：看权重里有没有 q_norm）
_COPIED = _KATA_FIELDS - {"qk_norm", "rope_scaling"}
# transformers / minimind 的记账字段与生成参数：不影响前向计算
_BOOKKEEPING = {
    "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version", "model_type", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "return_dict", "output_attentions",
    "output_hidden_states", "torchscript", "initializer_range", "is_decoder", "is_encoder_decoder",
    "id2label", "label2id", "problem_type", "chunk_size_feed_forward", "tokenizer_class",
}
_MOE = {"num_experts_per_tok", "n_routed_experts", "n_shared_experts", "scoring_func", "aux_loss_alpha",
        "seq_aux", "norm_topk_prob", "num_experts", "moe_intermediate_size", "router_aux_loss_coef",
        "decoder_sparse_step", "mlp_only_layers", "output_router_logits"}
# 这些 qwen3 字段取默认值时与 minimind-3 的计算相同（minimind-3 的 scripts/convert_model.py 导出成 Qwen3 格式）
_QWEN3_NEUTRAL = {"attention_bias": False, "use_sliding_window": False, "attention_dropout": 0.0}
_QWEN3_IGNORED = {"sliding_window", "max_window_layers", "layer_types", "rope_parameters"}


def config_from_hf(hf: Mapping, *, qk_norm: Optional[bool] = None, source: str = "config.json") -> MiniMindConfig:
    """transformers 格式的 config.json（model_type "minimind"，或 minimind-3 导出的 "qwen3"）→ kata.MiniMindConfig。

    qk_norm：minimind 的 config 里没有这一项（MiniMind2 没有 q_norm / k_norm，minimind-3 一定有），
    由调用者看权重决定；None 时 minimind 取 False、qwen3 取 True。
    会改变计算却不支持的设置（MoE、非 silu 激活、head_dim ≠ hidden/heads、带 bias 的注意力……）直接报错；
    不认识的字段给一条警告后忽略。
    """
    if not isinstance(hf, Mapping):
        raise WeightsFormatError(f"{source} 应是一个 JSON 对象，实际 {type(hf).__name__}")
    mt = hf.get("model_type")
    if mt not in ("minimind", "qwen3"):
        raise WeightsFormatError(
            f"{source} 的 model_type 是 {mt!r}：这里只读 minimind 的模型（model_type \"minimind\"；"
            "minimind-3 的 scripts/convert_model.py 导出的 \"qwen3\" 也行）")
    if hf.get("use_moe"):
        raise WeightsFormatError(f"{source} 是 MoE 模型（use_moe: true，例如 MiniMind2-MoE）：kata 的 MiniMindForCausalLM "
                                 "只有稠密的 FeedForward，读不了专家层。请用 MiniMind2-small / MiniMind2 这样的稠密模型")
    act = hf.get("hidden_act", "silu")
    if act != "silu":
        raise WeightsFormatError(f"{source} 的 hidden_act 是 {act!r}：kata 的 FeedForward 是 SwiGLU，只支持 \"silu\"")
    kw = {k: hf[k] for k in _COPIED if k in hf}      # intermediate_size: null（MiniMind2）→ 按 int(8h/3) 向上取整到 64
    heads = kw.get("num_attention_heads", 8)
    hidden = kw.get("hidden_size", 512)
    if hf.get("head_dim") is not None and heads and hf["head_dim"] * heads != hidden:
        raise WeightsFormatError(
            f"{source} 的 head_dim={hf['head_dim']}，但 hidden_size / num_attention_heads = {hidden} / {heads}："
            "kata 的 Attention 要求 head_dim × 头数 = hidden_size")
    scaling = hf.get("rope_scaling")
    if scaling is None and hf.get("inference_rope_scaling"):
        scaling = dict(MINIMIND_YARN)         # minimind 的 MiniMindConfig 就是这样由开关生成 rope_scaling 的
    if scaling is not None:
        kind = scaling.get("type", scaling.get("rope_type")) if isinstance(scaling, Mapping) else None
        if mt != "minimind" or kind != "yarn":
            raise WeightsFormatError(f"{source} 的 rope_scaling {scaling!r}：只支持 minimind 的 YaRN 设置（type \"yarn\"）")
        kw["rope_scaling"] = dict(scaling)
    if mt == "qwen3":
        for k, neutral in _QWEN3_NEUTRAL.items():
            if hf.get(k, neutral) != neutral:
                raise WeightsFormatError(f"{source} 的 {k}={hf[k]!r}：kata 的模型只支持 {k}={neutral!r}")
        kw.setdefault("tie_word_embeddings", False)   # transformers 的 Qwen3Config 默认不绑定
    kw["qk_norm"] = (mt == "qwen3") if qk_norm is None else bool(qk_norm)
    handled = _COPIED | _BOOKKEEPING | _MOE | {"use_moe", "hidden_act", "head_dim", "rope_scaling", "inference_rope_scaling"}
    if mt == "qwen3":
        handled |= set(_QWEN3_NEUTRAL) | _QWEN3_IGNORED
    unknown = sorted(k for k in hf if k not in handled)
    if unknown:
        warnings.warn(f"{source} 里这些字段 kata 不认识，已忽略：{unknown}", stacklevel=2)
    try:
        return MiniMindConfig(**kw)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise WeightsFormatError(f"{source} 的配置不成立：{exc}") from None


def _layer_indices(sd: Mapping[str, torch.Tensor]) -> list[int]:
    return sorted({int(m.group(1)) for k in sd if (m := re.match(r"model\.layers\.(\d+)\.", k))})


def infer_config(sd: Mapping[str, torch.Tensor], *, num_attention_heads: Optional[int] = None,
                 rms_norm_eps: Optional[float] = None, source: str = "state_dict") -> tuple[MiniMindConfig, list[str]]:
    """从 state_dict 的形状推出 MiniMindConfig，返回 (config, 说明)；说明是几句中文，讲哪些是假设的。

    推得出的：词表与 hidden（embed_tokens [vocab, hidden]）、层数、FFN 宽度（gate_proj [inter, hidden]）、
    是否 QK-norm（有没有 q_norm）、是否绑定词嵌入（有没有单独的、不同的 lm_head）。
    推不出的：注意力头数（q_proj 是 [头数 × head_dim, hidden]，只知道乘积）——有 q_norm 时 head_dim 就是它的长度，
    否则用 num_attention_heads（默认 8：MiniMind2 与 minimind-3 都是 8 个 query 头），KV 头数再由 k_proj 算出；
    rms_norm_eps 也看不出来：默认 MiniMind2 的 1e-5，有 q_norm（minimind-3）时 1e-6；rope_theta 两版都是 1e6。
    """
    notes: list[str] = []
    emb = sd.get("model.embed_tokens.weight", sd.get("lm_head.weight"))
    if emb is None or emb.dim() != 2:
        raise WeightsFormatError(
            f"{source} 里没有 model.embed_tokens.weight（也没有 lm_head.weight）：它不像 minimind 的模型权重"
            f"（前几个键：{list(sd)[:5]}）")
    vocab, hidden = emb.shape
    layers = _layer_indices(sd)
    if not layers or layers != list(range(len(layers))):
        raise WeightsFormatError(f"{source} 的层编号应是 0、1、2…连续的，实际 {layers[:10]}")
    pre = "model.layers.0."
    if any(k.startswith(pre + "mlp.experts.") or k == pre + "mlp.gate.weight" for k in sd):
        raise WeightsFormatError(f"{source} 是 MoE 模型（有 mlp.experts.*，例如 full_sft_640_moe.pth）：kata 的模型只有稠密的 "
                                 "FeedForward，读不了专家层")
    try:
        q, k, gate = (sd[pre + n].shape for n in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.gate_proj.weight"))
    except KeyError as exc:
        raise WeightsFormatError(f"{source} 里缺少 {exc.args[0]}：不是 minimind 的模型权重") from None
    qk_norm = pre + "self_attn.q_norm.weight" in sd
    if qk_norm:
        head_dim = sd[pre + "self_attn.q_norm.weight"].shape[0]
        heads = q[0] // head_dim
        if num_attention_heads is not None and num_attention_heads != heads:
            raise WeightsFormatError(f"{source} 的 q_norm 说 head_dim={head_dim}，即 {heads} 个头；与给定的头数 "
                                     f"{num_attention_heads} 矛盾")
        notes.append(f"有 q_norm / k_norm（minimind-3 的结构）：head_dim={head_dim}，{heads} 个 query 头")
    else:
        heads = 8 if num_attention_heads is None else num_attention_heads
        if heads <= 0 or q[0] % heads:
            raise WeightsFormatError(f"q_proj 输出 {q[0]} 维，分不成 {heads} 个头：--num-attention-heads 给错了")
        head_dim = q[0] // heads
        notes.append(f"注意力头数从形状看不出来，用{'默认的 ' if num_attention_heads is None else '给定的 '}"
                     f"{heads}（MiniMind2 与 minimind-3 都是 8；别的模型用 --num-attention-heads 改）")
    if q[0] != hidden:
        raise WeightsFormatError(f"q_proj 的输出是 {q[0]} 维、hidden_size 是 {hidden}：kata 的 Attention 要求两者相等")
    if k[0] % head_dim:
        raise WeightsFormatError(f"k_proj 输出 {k[0]} 维，不是 head_dim={head_dim} 的整数倍：头数给错了")
    eps = rms_norm_eps if rms_norm_eps is not None else (1e-6 if qk_norm else 1e-5)
    if rms_norm_eps is None:
        notes.append(f"rms_norm_eps 从权重看不出来，用 {eps:g}（{'minimind-3' if qk_norm else 'MiniMind2'} 的值）")
    cfg = MiniMindConfig(hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=heads,
                         num_key_value_heads=k[0] // head_dim, vocab_size=vocab, intermediate_size=gate[0],
                         rms_norm_eps=eps, qk_norm=qk_norm,            # rope_theta：默认的 1e6，两版相同
                         tie_word_embeddings=tie_embeddings(sd, None, source))
    return cfg, notes


def tie_embeddings(sd: Mapping[str, torch.Tensor], tied: Optional[bool], source: str = "state_dict") -> bool:
    """词嵌入与 lm_head 是否绑定。tied=None：看权重（只有一个，或两个完全相等 → 绑定）。

    tied=True 而文件里的两个矩阵不同：说明配置和权重对不上，报错（不能悄悄用其中一个）。
    """
    e, h = sd.get("model.embed_tokens.weight"), sd.get("lm_head.weight")
    same = e is None or h is None or (e.shape == h.shape and torch.equal(e, h))
    if tied is None:
        return same
    if tied and not same:
        raise WeightsFormatError(f"{source}：配置说 tie_word_embeddings=true，但 model.embed_tokens.weight 与 "
                                 "lm_head.weight 是两个不同的矩阵")
    if not tied and (e is None or h is None):
        raise WeightsFormatError(f"{source}：配置说 tie_word_embeddings=false，但只有 "
                                 f"{'lm_head.weight' if e is None else 'model.embed_tokens.weight'}，另一个矩阵不在文件里")
    return tied


def normalize_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """torch.load / read_safetensors 的结果 → {键: float32 张量}。

    接受：普通 state_dict；模块 08 / minimind 的续训文件（{"model": state_dict, "optimizer": …}）；
    键带 ``module.``（DDP）或 ``_orig_mod.``（torch.compile）前缀的。浮点张量一律转成 float32。
    """
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]                                   # 续训文件
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsFormatError(f"{source} 应是一个 state_dict（{{键名: 张量}}），实际 {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise WeightsFormatError(f"{source} 应是一个 state_dict（{{键名: 张量}}），其中 {k!r} 对应的是 {type(v).__name__}")
        for prefix in ("module.", "_orig_mod."):
            k = k.removeprefix(prefix)
        out[k] = v.float() if v.is_floating_point() else v
    return out


# ---------------------------------------------------------------------------------------------
# 3. 分词器文件与整个 checkpoint 的定位
# ---------------------------------------------------------------------------------------------

def _token_text(t) -> Optional[str]:
    if isinstance(t, str):
        return t
    if isinstance(t, Mapping) and isinstance(t.get("content"), str):
        return t["content"]
    return None


def read_tokenizer_file(path) -> tuple[str, dict, Path, dict]:
    """path：tokenizer.json 或放着它的文件夹。返回 (kind, JSON, 文件路径, {"bos": …, "eos": …, "added": …})。

    kind："hf"（Hugging Face 的 tokenizer.json，minimind 的 model/tokenizer.json 就是）或
    "kata"（kata train / sft 写的 {"type": "char" | "bpe", …}）。bos / eos 来自同目录的
    tokenizer_config.json（minimind：bos <|im_start|>、eos <|im_end|>），没有就是 None；
    added：HF 文件里 added_tokens 的个数（只有 "hf" 才有这一项）。
    """
    p = Path(path)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"找不到分词器 {f}：--tokenizer 应是 tokenizer.json，或放着它的文件夹"
                                "（例如 minimind 仓库的 model/ 文件夹）")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsFormatError(f"读不了分词器 {f}：{exc}") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        kind = "hf"
    elif isinstance(data, dict) and data.get("type") in ("char", "bpe"):
        kind = "kata"
    else:
        raise WeightsFormatError(f"{f} 不是认识的分词器文件：应是 Hugging Face 的 tokenizer.json（有 \"model\"），"
                                 "或 kata train 写的 tokenizer.json（有 \"type\": \"char\" / \"bpe\"）")
    specials = {"bos": None, "eos": None}
    if kind == "hf":
        # 特殊 token 的个数区分 minimind 的两代分词器：MiniMind2 有 3 个，minimind-3 有 36 个（词表都是 6400）
        specials["added"] = len(data.get("added_tokens") or [])
    tc = f.parent / "tokenizer_config.json"
    if kind == "hf" and tc.is_file():
        try:
            conf = json.loads(tc.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeightsFormatError(f"读不了 {tc}：{exc}") from None
        if isinstance(conf, dict):
            specials.update(bos=_token_text(conf.get("bos_token")), eos=_token_text(conf.get("eos_token")))
    return kind, data, f, specials


@dataclass
class Checkpoint:
    """open_checkpoint 的结果：float32 的 state_dict、配置、分词器在哪、是哪种格式、做了哪些假设。"""
    state_dict: dict
    config: MiniMindConfig
    kind: str                          # "kata" | "hf" | "minimind-pth"
    weights: Path
    tokenizer: Optional[Path]          # None：文件旁边没有，要 --tokenizer
    notes: list                        # 从形状推配置时做了哪些假设（中文，给用户看）


_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def _load_weights(f: Path) -> dict[str, torch.Tensor]:
    if f.suffix == ".safetensors":
        return normalize_state_dict(read_safetensors(f), str(f))
    with open(f, "rb") as fh:
        head = fh.read(len(_LFS_POINTER))
    if head == _LFS_POINTER:
        raise WeightsFormatError(f"{f} 是 Git LFS 的指针文件，不是真正的权重：运行 git lfs install，然后 git lfs pull 重新下载")
    try:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:          # 截断的 zip、pickle 里有不允许的类型……：都说成“读不了”
        raise WeightsFormatError(f"{f} 不是 torch.save 存的 state_dict，或文件不完整（torch.load(weights_only=True) 失败："
                                 f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}）") from None
    return normalize_state_dict(obj, str(f))


def _read_json(f: Path) -> dict:
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WeightsFormatError(f"读不了 {f}：{exc}") from None
    if not isinstance(d, dict):
        raise WeightsFormatError(f"{f} 应是一个 JSON 对象，实际 {type(d).__name__}")
    return d


def _kata_config(d: dict, f: Path) -> MiniMindConfig:
    unknown = sorted(set(d) - _KATA_FIELDS)
    if unknown:
        raise WeightsFormatError(f"{f} 既不是 Hugging Face 的 config.json（没有 model_type），也不是 kata train 写的"
                                 f"（有不认识的字段 {unknown[:5]}）")
    try:
        return MiniMindConfig(**d)
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise WeightsFormatError(f"{f} 的配置不成立：{exc}") from None


def open_checkpoint(path, *, tokenizer=None, num_attention_heads: Optional[int] = None,
                    rms_norm_eps: Optional[float] = None) -> Checkpoint:
    """找出 path 是哪种 checkpoint，读权重（float32）和配置。

    - 文件夹 + config.json（有 model_type）+ model.safetensors（或 pytorch_model.bin）：Hugging Face 格式，
      例如 git clone 下来的 MiniMind2-small；分词器默认用同一文件夹的 tokenizer.json；
    - 文件夹或 model.pth + 同目录的 config.json（kata 的字段）：kata train / sft 写的；
    - 一个 .pth / .safetensors，旁边没有 config.json：minimind 训练脚本存的（如 full_sft_512.pth），配置由形状推出，
      分词器要用 tokenizer 参数给（minimind 仓库的 model/ 文件夹）。
    tokenizer：给了就用它（文件夹或 tokenizer.json），否则用权重旁边的 tokenizer.json（没有则为 None）。
    num_attention_heads / rms_norm_eps：只在配置要从形状推出时使用（有 config.json 时给了就报错，免得悄悄被忽略）。
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"找不到 checkpoint：{p}")
    if p.is_dir():
        folder = p
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} 里没有 config.json。--ckpt 应是：Hugging Face 格式的文件夹（config.json + model.safetensors，"
                "例如 MiniMind2-small）、kata train 的输出（config.json + model.pth），或直接给一个 .pth 文件"
                "（minimind 的 full_sft_512.pth 这种，再加 --tokenizer）")
        candidates = ("model.pth", *_HF_WEIGHTS) if "model_type" not in _read_json(folder / "config.json") \
            else (*_HF_WEIGHTS, "model.pth")
        weights = next((folder / n for n in candidates if (folder / n).is_file()), None)
        if weights is None:
            sharded = (folder / "model.safetensors.index.json").is_file()
            raise FileNotFoundError(
                f"{folder} 里有 config.json，但没有权重文件（期望 {' / '.join(candidates)} 之一）"
                + ("；分片的 safetensors（model.safetensors.index.json）还不支持" if sharded else ""))
    else:
        folder, weights = p.parent, p
        if p.suffix not in (".pth", ".pt", ".bin", ".safetensors"):
            raise WeightsFormatError(f"{p}：--ckpt 应是 .pth / .bin / .safetensors 文件或一个文件夹，实际后缀是 {p.suffix!r}")

    conf_file = folder / "config.json"
    conf = _read_json(conf_file) if conf_file.is_file() else None
    sd = _load_weights(weights)
    notes: list[str] = []
    given = {k: v for k, v in (("--num-attention-heads", num_attention_heads), ("--rms-norm-eps", rms_norm_eps)) if v is not None}
    if conf is not None and given:
        raise WeightsFormatError(f"{conf_file} 已经给出了配置，{' / '.join(given)} 只用于旁边没有 config.json 的 .pth"
                                 "（以 config.json 为准；要改就改它）")
    if conf is not None and "model_type" in conf:
        kind = "hf"
        config = config_from_hf(conf, qk_norm="model.layers.0.self_attn.q_norm.weight" in sd, source=str(conf_file))
        tie_embeddings(sd, config.tie_word_embeddings, str(weights))
    elif conf is not None:
        kind, config = "kata", _kata_config(conf, conf_file)
    else:
        kind = "minimind-pth"
        config, notes = infer_config(sd, num_attention_heads=num_attention_heads, rms_norm_eps=rms_norm_eps,
                                     source=str(weights))
    if tokenizer is not None:
        tok_path = Path(tokenizer)
    else:
        tok_path = folder / "tokenizer.json" if (folder / "tokenizer.json").is_file() else None
    return Checkpoint(sd, config, kind, weights, tok_path, notes)
