"""tinylm：所有消融实验共用的小语言模型（字符级因果 LM）与训练器。

用法::

    from kata.data import load_corpus
    from kata.tinylm import TinyLMConfig, build_tiny_lm, train_lm, evaluate

    corpus = load_corpus("shakespeare")
    cfg = TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, norm="layernorm")
    model, provenance = build_tiny_lm(cfg, impl="exercises", require=("RMSNorm",))
    result = train_lm(model, corpus, steps=300)

要点：

1. **被研究的部件来自学习者的代码。** RMSNorm（模块 01）、RoPE 的 ``precompute_freqs_cis`` /
   ``apply_rotary_pos_emb`` 与 ``sinusoidal_position_encoding``（模块 02）、
   ``scaled_dot_product_attention`` / ``repeat_kv``（模块 03）、``FeedForward``（模块 04）
   都经由实现切换（kata.impl）取自 ``impl``。某个部件还没实现（在一个小输入上试跑一次，
   抛 NotImplementedError）时退回参考实现，``provenance`` 里写明每个部件从哪来；
   写在 ``require`` 里的部件必须来自 ``impl``，否则抛 ComponentNotImplemented。
   模块 03 的 ``Attention`` 类不在这里用：tinylm 把注意力拆成“投影 + RoPE + repeat_kv +
   scaled_dot_product_attention”，这样才能把 ALiBi、去掉 1/√d 这些消融插进去；
   ``Attention`` 类（KV cache、padding）由模块 03 自己的测试检验。
2. **只用于消融的部件写在这里**：LayerNorm（torch.nn.LayerNorm）、不归一化（Identity）、
   可学习绝对位置 / 正弦位置（加到词向量上；正弦表乘 SINUSOIDAL_SCALE，缩到与词向量初始化同量级）、ALiBi（Press et al. 2022 的线性偏置）、
   ReLU / GELU MLP、去掉残差、去掉 1/√d。ALiBi 与去掉 1/√d 需要改注意力分数，
   走 tinylm 自己的注意力路径（provenance 里会写 'attention': 'tinylm …'）。
3. **块的结构**（norm_position / residual 两个开关，f 是注意力或 FFN）::

       pre  + 残差：   x = x + f(norm(x))        （minimind、GPT-2 以后的做法）
       post + 残差：   x = norm(x + f(x))        （原始 Transformer）
       pre  无残差：   x = f(norm(x))
       post 无残差：   x = norm(f(x))

   final_norm=True 时最后一个块之后还有一个 norm（minimind 的 ``model.norm``）。
4. **初始化** 同 nanoGPT（minimind-3 经 transformers 的 post_init 也是 N(0, 0.02)；MiniMind2 用 PyTorch 默认初始化）：
   Linear 与 Embedding 的权重 ~ N(0, 0.02)，
   每个残差分支的输出投影（o_proj、down_proj）~ N(0, 0.02/√(2·n_layers))——
   2·n_layers 个分支相加，方差不随深度增长（GPT-2 论文 §2.3）。RMSNorm / LayerNorm 保持 1 / 0。
5. **可以比训练时更长**：rope / nope / sinusoidal / alibi 的位置表按需加长（长度外推实验要用）；
   learned 的位置表只有 max_seq_len 行，超过时抛 ValueError（实验把它记成结果）。
6. **发散是结果而不是崩溃**：loss 变成 NaN / inf 时停止训练，返回的 TrainResult 里 ``diverged_at``
   记下是第几步。

“第 s 步”一律指“已经做了 s 次参数更新”：train_losses[i] 是更新 train_steps[i] 次之后那个 batch 的
loss，val 同理；diverged_at = s 表示做完 s 次更新后 loss（或梯度）不再有限。
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from kata import impl as kata_impl
from kata.curriculum import get_module

__all__ = [
    "NORMS", "NORM_POSITIONS", "POSITIONS", "FFNS", "COMPONENTS", "SWIGLU_MULTIPLE_OF",
    "TinyLMConfig", "TinyLMConfigError", "ComponentNotImplemented", "TinyLM", "build_tiny_lm", "count_parameters",
    "alibi_slopes", "learning_rate", "TrainResult", "train_lm", "evaluate", "per_position_loss",
    "layer_grad_norms",
]

NORMS = ("rmsnorm", "layernorm", "none")
NORM_POSITIONS = ("pre", "post")
POSITIONS = ("rope", "nope", "learned", "sinusoidal", "alibi")
FFNS = ("swiglu", "relu", "gelu", "none")
# SwiGLU 默认宽度用 FeedForward 的规则 multiple_of·ceil(int(8·dim/3)/multiple_of)，但 multiple_of 取 16
# 而不是 minimind 的 64：dim=64 时 64 的倍数会把 170 抬到 192（+13%），16 只抬到 176。
SWIGLU_MULTIPLE_OF = 16
INIT_STD = 0.02
# 正弦位置表乘上这个数后，每维均方根 = INIT_STD，与词向量、learned 位置的初始量级相同（见 TinyLM._sinusoidal_table）
SINUSOIDAL_SCALE = INIT_STD / math.sqrt(0.5)


# ============================================================================================
# 配置
# ============================================================================================

class TinyLMConfigError(ValueError):
    """TinyLMConfig 的参数不合法或互相矛盾（例如 dim 不能被 n_heads 整除）。

    实验脚本把它当成命令行参数错误：只打印这一句，不打印 traceback。
    """


def _check_choice(name: str, value, options: tuple) -> None:
    if value not in options:
        raise TinyLMConfigError(f"TinyLMConfig.{name} 只能是 {' / '.join(repr(o) for o in options)} 之一，实际 {value!r}")


def _check_positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TinyLMConfigError(f"TinyLMConfig.{name} 应为正整数，实际 {value!r}")


@dataclass
class TinyLMConfig:
    """小语言模型的全部开关。默认值 = minimind 的结构缩小版（RMSNorm、Pre-LN、RoPE、SwiGLU、权重共享）。"""

    vocab_size: int
    dim: int = 64
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: Optional[int] = None      # None = 与 n_heads 相同（标准多头）；更小就是 GQA
    max_seq_len: int = 64                 # 训练长度；只有 pos='learned' 把它当硬上限
    norm: str = "rmsnorm"                 # 'rmsnorm' | 'layernorm' | 'none'
    norm_position: str = "pre"            # 'pre' | 'post'
    final_norm: bool = True
    pos: str = "rope"                     # 'rope' | 'nope' | 'learned' | 'sinusoidal' | 'alibi'
    rope_base: float = 10000.0            # 短序列上用 1e4；minimind 训练 32k 长度用 1e6
    ffn: str = "swiglu"                   # 'swiglu' | 'relu' | 'gelu' | 'none'
    ffn_hidden: Optional[int] = None      # FFN 隐层宽度；None 见 ffn_hidden_size
    residual: bool = True
    attn_scale: bool = True               # False = 注意力分数不除以 √head_dim
    dropout: float = 0.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("n_kv_heads", self.n_kv_heads, allow_none=True)
        _check_positive_int("ffn_hidden", self.ffn_hidden, allow_none=True)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        _check_choice("pos", self.pos, POSITIONS)
        _check_choice("ffn", self.ffn, FFNS)
        for name in ("final_norm", "residual", "attn_scale", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise TinyLMConfigError(f"TinyLMConfig.{name} 应为 True 或 False，实际 {getattr(self, name)!r}")
        if self.dim % self.n_heads != 0:
            raise TinyLMConfigError(f"TinyLMConfig：dim（{self.dim}）必须能被 n_heads（{self.n_heads}）整除")
        if self.n_heads % self.kv_heads != 0:
            raise TinyLMConfigError(
                f"TinyLMConfig：n_heads（{self.n_heads}）必须能被 n_kv_heads（{self.kv_heads}）整除"
                "（GQA 里每组 query 头共享一个 KV 头）"
            )
        if self.pos == "rope" and self.head_dim % 2 != 0:
            raise TinyLMConfigError(f"TinyLMConfig：RoPE 把维度两两配对旋转，head_dim（{self.head_dim}）必须是偶数")
        if not 0.0 <= self.dropout < 1.0:
            raise TinyLMConfigError(f"TinyLMConfig.dropout 应在 [0, 1) 之间，实际 {self.dropout!r}")
        if not self.norm_eps > 0:
            raise TinyLMConfigError(f"TinyLMConfig.norm_eps 应为正数，实际 {self.norm_eps!r}")
        if not self.rope_base > 1:
            raise TinyLMConfigError(f"TinyLMConfig.rope_base 应大于 1，实际 {self.rope_base!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_size(self) -> int:
        """FFN 隐层宽度。

        - 显式给了 ffn_hidden：照用（任何 ffn 类型）；
        - swiglu：FeedForward 的默认规则，multiple_of=16（dim 64 → 176，128 → 352）；
        - relu / gelu：让两矩阵 MLP 与默认 SwiGLU 参数一样多：2·d·h_mlp = 3·d·h_swiglu，
          即 h_mlp = 1.5·h_swiglu（dim 64 → 264）——只比激活函数，不比参数量（Shazeer 2020 同样控制参数量）。
        """
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        swiglu = SWIGLU_MULTIPLE_OF * math.ceil(int(8 * self.dim / 3) / SWIGLU_MULTIPLE_OF)
        return swiglu if self.ffn in ("swiglu", "none") else (3 * swiglu) // 2

    def to_dict(self) -> dict:
        return asdict(self)


# ============================================================================================
# 部件：从实现切换里取，试跑一次，不行就退回参考实现
# ============================================================================================

class ComponentNotImplemented(RuntimeError):
    """``require`` 里的部件无法从 ``impl`` 取得（没实现 / 文件不存在 / 运行出错）。消息是一句中文。"""

    def __init__(self, message: str, component: str = "", impl: str = ""):
        super().__init__(message)
        self.component = component
        self.impl = impl


def _probe_rmsnorm(ns) -> None:
    out = ns.RMSNorm(8)(torch.randn(2, 3, 8))
    _expect_shape(out, (2, 3, 8))


def _probe_rope(ns) -> None:
    cos, sin = ns.precompute_freqs_cis(8, end=4, rope_base=10000.0)
    _expect_shape(cos, (4, 8))
    _expect_shape(sin, (4, 8))
    q, k = ns.apply_rotary_pos_emb(torch.randn(1, 4, 2, 8), torch.randn(1, 4, 1, 8), cos, sin)
    _expect_shape(q, (1, 4, 2, 8))
    _expect_shape(k, (1, 4, 1, 8))


def _probe_sinusoidal(ns) -> None:
    _expect_shape(ns.sinusoidal_position_encoding(4, 8), (4, 8))


def _probe_sdpa(ns) -> None:
    q, k, v = torch.randn(3, 1, 2, 3, 4).unbind(0)
    _expect_shape(ns.scaled_dot_product_attention(q, k, v, is_causal=True), (1, 2, 3, 4))


def _probe_repeat_kv(ns) -> None:
    _expect_shape(ns.repeat_kv(torch.randn(1, 3, 2, 4), 2), (1, 3, 4, 4))


def _probe_feedforward(ns) -> None:
    _expect_shape(ns.FeedForward(8, hidden_dim=16)(torch.randn(2, 3, 8)), (2, 3, 8))


def _expect_shape(t, shape) -> None:
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise _ProbeShapeError(f"输出形状应为 {shape}，实际 {got}")
    if not torch.isfinite(t).all():
        raise _ProbeShapeError("输出里有 NaN / inf")


class _ProbeShapeError(Exception):
    pass


@dataclass(frozen=True)
class _Component:
    module: str                 # 课程模块目录
    names: tuple[str, ...]      # 这个部件用到的公开名字
    probe: Callable


# 键 = provenance / require 里用的名字
COMPONENTS: dict[str, _Component] = {
    "RMSNorm": _Component("01_normalization", ("RMSNorm",), _probe_rmsnorm),
    "rope": _Component("02_position_encoding", ("precompute_freqs_cis", "apply_rotary_pos_emb"), _probe_rope),
    "sinusoidal_position_encoding": _Component(
        "02_position_encoding", ("sinusoidal_position_encoding",), _probe_sinusoidal),
    "scaled_dot_product_attention": _Component(
        "03_attention", ("scaled_dot_product_attention",), _probe_sdpa),
    "repeat_kv": _Component("03_attention", ("repeat_kv",), _probe_repeat_kv),
    "FeedForward": _Component("04_feedforward", ("FeedForward",), _probe_feedforward),
}
# require 里也可以写公开名字本身
_ALIASES = {"precompute_freqs_cis": "rope", "apply_rotary_pos_emb": "rope", "rotate_half": "rope"}


@dataclass(frozen=True)
class _Probe:
    ok: bool
    objects: dict            # 公开名字 -> 对象（ok 时）
    reason: str = ""         # 不 ok 时的短原因：'未实现' / '文件不存在' / '出错: …'
    detail: str = ""         # 给 ComponentNotImplemented 的完整说明


_PROBE_CACHE: dict[tuple[str, str], _Probe] = {}


def _impl_key(impl: str) -> str:
    if impl in kata_impl.SIDES or impl.startswith("bug:"):
        return impl
    return str(Path(impl).expanduser().resolve())


def _probe(key: str, impl: str) -> _Probe:
    """从 impl 取部件 key，并在小输入上试跑一次（每个进程每个 (impl, 部件) 只试一次）。"""
    cache_key = (_impl_key(impl), key)
    if cache_key in _PROBE_CACHE:
        return _PROBE_CACHE[cache_key]
    comp = COMPONENTS[key]
    try:
        ns = kata_impl.resolve(comp.module, impl)
        objects = {n: getattr(ns, n) for n in comp.names}
    except kata_impl.ImplLoadError as exc:
        if "找不到实现文件" in str(exc):
            reason = "文件不存在"
        elif "没有定义" in str(exc):
            reason = "没有定义 " + " / ".join(comp.names)
        else:
            reason = "无法导入"
        result = _Probe(False, {}, reason, str(exc))
    except Exception as exc:  # 例如 bug:<名字> 不属于这个模块
        result = _Probe(False, {}, "不可用", f"{type(exc).__name__}: {exc}")
    else:
        # 试跑会新建 nn.Linear 等，会消耗全局随机数：放进 fork_rng，别让“第一次构建”与之后的构建不同
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            try:
                comp.probe(SimpleNamespace(**objects))
            except NotImplementedError as exc:
                result = _Probe(False, {}, "未实现", str(exc))
            except Exception as exc:
                result = _Probe(False, {}, f"出错: {type(exc).__name__}", f"{type(exc).__name__}: {exc}")
            else:
                result = _Probe(True, objects)
    _PROBE_CACHE[cache_key] = result
    return result


def _not_available_message(key: str, impl: str, probe: _Probe) -> str:
    comp = COMPONENTS[key]
    fname = next(f for f, names in get_module(comp.module).files.items() if comp.names[0] in names)
    what = " / ".join(comp.names)
    if impl in kata_impl.SIDES:
        where = f"{impl}/{comp.module}/{fname}"
        fix = f"`pytest {impl}/{comp.module}`"
    else:
        where = impl
        fix = f"`pytest exercises/{comp.module} --impl {impl}`"
    tail = f"先让 {fix} 通过，或者加 `--impl solutions` 用参考实现跑这个实验。"
    if probe.reason == "未实现":
        return f"{where} 里的 {what} 还没实现：{tail}"
    if probe.reason == "文件不存在":
        return f"{where} 还不存在（{what} 应该写在这个文件里）：{tail}"
    return f"{where} 里的 {what} 还不能用（{probe.detail.splitlines()[0] if probe.detail else probe.reason}）：{tail}"


def _take(key: str, impl: str, required: set, provenance: dict) -> SimpleNamespace:
    """取部件：优先 impl，不行且没被 require 就退回 solutions；在 provenance 里记下来源。"""
    probe = _probe(key, impl)
    if probe.ok:
        provenance[key] = impl
        return SimpleNamespace(**probe.objects)
    if key in required or impl == "solutions":
        raise ComponentNotImplemented(_not_available_message(key, impl, probe), key, impl)
    fallback = _probe(key, "solutions")
    if not fallback.ok:
        raise ComponentNotImplemented(_not_available_message(key, "solutions", fallback), key, "solutions")
    provenance[key] = f"solutions ({impl} {probe.reason})"
    return SimpleNamespace(**fallback.objects)


def _normalize_require(require: Sequence[str]) -> set:
    if isinstance(require, str):
        require = (require,)
    keys = set()
    for name in require:
        key = _ALIASES.get(name, name)
        if key not in COMPONENTS:
            valid = "、".join([*COMPONENTS, *_ALIASES])
            raise ValueError(f"require 里的 {name!r} 不是 tinylm 的部件；可选：{valid}")
        keys.add(key)
    return keys


# ============================================================================================
# 只用于消融的部件
# ============================================================================================

def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi 每个头的斜率（Press et al. 2022 §3）：n 是 2 的幂时为 2^(-8/n), 2^(-16/n), …, 2^(-8)。

    n 不是 2 的幂时：先取最近的 2 的幂 m 的 m 个斜率，再从 2m 的斜率里隔一个取，补足剩下的头（论文代码的做法）。
    """
    def geometric(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = geometric(n_heads)
    else:
        m = 2 ** math.floor(math.log2(n_heads))
        slopes = geometric(m) + geometric(2 * m)[0::2][: n_heads - m]
    return torch.tensor(slopes, dtype=torch.float32)


class MLP(nn.Module):
    """普通两层 FFN：down(act(up(x)))，用于和 SwiGLU 对比（没有 bias，与 FeedForward 一致）。"""

    def __init__(self, dim: int, hidden_dim: int, activation: str, dropout: float = 0.0):
        super().__init__()
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(self.act(self.up_proj(x))))


def _causal_attention_with_bias(q, k, v, scale: float, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """tinylm 自己的注意力：给 ALiBi（浮点偏置）和“去掉 1/√d”用。bias 已经含有因果掩码的 -inf。"""
    scores = (q @ k.transpose(-2, -1)) * scale
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # softmax 至少在 float32 里做
    if bias is not None:
        scores = scores + bias
    else:
        seq_len = q.size(-2)
        future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1).to(v.dtype) @ v


# ============================================================================================
# 模型
# ============================================================================================

class CausalSelfAttention(nn.Module):
    """投影（名字同 minimind：q_proj k_proj v_proj o_proj）+ RoPE + repeat_kv + 注意力。

    标准路径调用 impl 的 apply_rotary_pos_emb、repeat_kv、scaled_dot_product_attention(is_causal=True)；
    ALiBi / 去掉 1/√d 走 _causal_attention_with_bias。注意力概率上没有 dropout（scaled_dot_product_attention
    没有这个参数），dropout 只加在输出投影之后。
    """

    def __init__(self, cfg: TinyLMConfig, parts: SimpleNamespace):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.kv_heads
        self.n_rep = cfg.n_heads // cfg.kv_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        self.scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.attn_scale else 1.0
        self.apply_rotary_pos_emb = parts.apply_rotary_pos_emb
        self.repeat_kv = parts.repeat_kv
        self.sdpa = parts.scaled_dot_product_attention  # None = 走 tinylm 自己的路径

    def forward(self, x, rope=None, bias=None):
        bsz, seq_len, _ = x.shape
        q = self.q_proj(x).view(bsz, seq_len, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(bsz, seq_len, self.n_kv_heads, self.head_dim)
        if rope is not None:
            q, k = self.apply_rotary_pos_emb(q, k, *rope)
        q = q.transpose(1, 2)
        k = self.repeat_kv(k, self.n_rep).transpose(1, 2)
        v = self.repeat_kv(v, self.n_rep).transpose(1, 2)
        if self.sdpa is not None:
            out = self.sdpa(q, k, v, is_causal=True)
        else:
            out = _causal_attention_with_bias(q, k, v, self.scale, bias)
        out = out.transpose(1, 2).reshape(bsz, seq_len, -1)
        return self.resid_dropout(self.o_proj(out))


class TinyBlock(nn.Module):
    """一个 Transformer 块，子模块名同 minimind 的 MiniMindBlock：input_layernorm self_attn post_attention_layernorm mlp。

    ffn='none' 时没有 FFN 子层（mlp 与 post_attention_layernorm 为 None）。
    """

    def __init__(self, layer_id: int, cfg: TinyLMConfig, parts: SimpleNamespace):
        super().__init__()
        self.layer_id = layer_id
        self.post_norm = cfg.norm_position == "post"
        self.residual = cfg.residual
        self.input_layernorm = parts.make_norm()
        self.self_attn = CausalSelfAttention(cfg, parts)
        self.post_attention_layernorm = parts.make_norm() if cfg.ffn != "none" else None
        self.mlp = parts.make_ffn() if cfg.ffn != "none" else None

    def _sublayer(self, x, norm, f):
        if self.post_norm:
            return norm(x + f(x)) if self.residual else norm(f(x))
        return x + f(norm(x)) if self.residual else f(norm(x))

    def forward(self, x, rope=None, bias=None):
        x = self._sublayer(x, self.input_layernorm, lambda h: self.self_attn(h, rope, bias))
        if self.mlp is not None:
            x = self._sublayer(x, self.post_attention_layernorm, self.mlp)
        return x


class TinyLM(nn.Module):
    """词嵌入 → (位置) → blocks → (final norm) → lm_head。forward(input_ids, targets=None) -> (logits, loss)。"""

    def __init__(self, cfg: TinyLMConfig, parts: SimpleNamespace, provenance: dict):
        super().__init__()
        self.cfg = cfg
        self.provenance = dict(provenance)
        self._parts = parts
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.dim) if cfg.pos == "learned" else None
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([TinyBlock(i, cfg, parts) for i in range(cfg.n_layers)])
        self.norm = parts.make_norm() if cfg.final_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            # 输入词向量与输出投影共用一个矩阵（minimind 同样如此，issue #414）：小模型里省下 V·d 个参数
            self.embed_tokens.weight = self.lm_head.weight

        # 位置表是非持久 buffer（不进 state_dict，同 minimind 的 freqs_cos / freqs_sin），不够长时按需加长
        if cfg.pos == "rope":
            cos, sin = self._rope_tables(cfg.max_seq_len)
            self.register_buffer("freqs_cos", cos, persistent=False)
            self.register_buffer("freqs_sin", sin, persistent=False)
        elif cfg.pos == "sinusoidal":
            self.register_buffer("pos_table", self._sinusoidal_table(cfg.max_seq_len), persistent=False)
        elif cfg.pos == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_heads), persistent=False)
        self._init_weights()

    # ---- 初始化
    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        residual_std = INIT_STD / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=residual_std)

    # ---- 位置
    def _rope_tables(self, length: int):
        cos, sin = self._parts.precompute_freqs_cis(self.cfg.head_dim, end=length, rope_base=self.cfg.rope_base)
        return cos.float(), sin.float()

    def _sinusoidal_table(self, length: int) -> torch.Tensor:
        # 正弦表每一维的均方根是 √0.5 ≈ 0.71，而词向量按 N(0, 0.02) 初始化：直接相加，位置会把词义淹没
        # （TinyShakespeare 300 步实测 val 2.97，learned 2.54）。原始 Transformer / fairseq 把词向量乘 √d
        # 到方差≈1，与正弦表同量级；这里反过来把正弦表缩到与词向量（以及 learned 位置的初始化）同量级。
        table = self._parts.sinusoidal_position_encoding(length, self.cfg.dim).float()
        return table * SINUSOIDAL_SCALE

    @staticmethod
    def _grown(length: int, have: int) -> int:
        return max(length, 2 * have)  # 翻倍增长：逐步加长的外推实验不必每次重算

    def _positions(self, seq_len: int, device):
        """返回 (要加到词向量上的位置, RoPE 的 (cos, sin), ALiBi 偏置)，不用的为 None。"""
        pos = self.cfg.pos
        if pos == "learned":
            if seq_len > self.cfg.max_seq_len:
                raise ValueError(
                    f"可学习的绝对位置编码只有 max_seq_len={self.cfg.max_seq_len} 个位置，"
                    f"无法处理长度 {seq_len} 的序列：learned 位置不能外推到训练长度之外"
                )
            return self.pos_embed.weight[:seq_len], None, None
        if pos == "sinusoidal":
            if self.pos_table.size(0) < seq_len:
                self.pos_table = self._sinusoidal_table(self._grown(seq_len, self.pos_table.size(0))).to(device)
            return self.pos_table[:seq_len], None, None
        if pos == "rope":
            if self.freqs_cos.size(0) < seq_len:
                cos, sin = self._rope_tables(self._grown(seq_len, self.freqs_cos.size(0)))
                self.freqs_cos, self.freqs_sin = cos.to(device), sin.to(device)
            return None, (self.freqs_cos[:seq_len], self.freqs_sin[:seq_len]), None
        if pos == "alibi":
            # bias[h, i, j] = −slope_h · (i − j)（j ≤ i），未来位置为 −inf：越远的 key 罚得越多
            idx = torch.arange(seq_len, device=device)
            distance = (idx[None, :] - idx[:, None]).float()         # j − i
            bias = self.alibi_slopes[:, None, None] * distance        # [H, S, S]
            return None, None, bias.masked_fill(distance > 0, float("-inf"))
        return None, None, None  # nope：不加任何位置信息，只靠因果掩码

    def forward(self, input_ids: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """input_ids [B, S] → logits [B, S, V]；给了 targets（[B, S]，下一个 token）就同时返回平均交叉熵。"""
        seq_len = input_ids.size(1)
        added, rope, bias = self._positions(seq_len, input_ids.device)
        x = self.embed_tokens(input_ids)
        if added is not None:
            x = x + added
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, rope, bias)
        logits = self.lm_head(self.norm(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """参数个数；共享的权重（tie_embeddings）只算一次。"""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def build_tiny_lm(cfg: TinyLMConfig, impl: Optional[str] = "exercises", require: Sequence[str] = (),
                  seed: Optional[int] = None) -> tuple[TinyLM, dict]:
    """用 impl 的部件搭一个 TinyLM，返回 (model, provenance)。

    impl：'exercises'（学习者的代码，默认）| 'solutions' | 'bug:<名字>' | 实现文件或目录的路径；None = kata.impl 的默认。
    require：必须来自 impl 的部件（COMPONENTS 的键，或 precompute_freqs_cis 这类公开名字），
    做不到就抛 ComponentNotImplemented。不管这个配置是否用到它都会检查，实验里每个变体都一致地失败或成功。
    seed：给了就先 torch.manual_seed(seed)，让初始化可复现。
    provenance：{部件: 来源}，例如 {'RMSNorm': 'exercises', 'rope': 'solutions (exercises 未实现)'}；
    tinylm 自己实现的消融部件记为 'tinylm（…）'。
    """
    if not isinstance(cfg, TinyLMConfig):
        raise TypeError(f"build_tiny_lm 需要 TinyLMConfig，实际 {type(cfg).__name__}")
    impl = impl or kata_impl.default_impl()
    required = _normalize_require(require)
    for key in sorted(required, key=list(COMPONENTS).index):  # 先检查 require，失败就不往下搭
        _take(key, impl, required, {})
    provenance: dict = {}

    parts = SimpleNamespace(apply_rotary_pos_emb=None, precompute_freqs_cis=None, sinusoidal_position_encoding=None,
                            scaled_dot_product_attention=None, repeat_kv=None)
    if cfg.norm == "rmsnorm":
        rms = _take("RMSNorm", impl, required, provenance).RMSNorm
        parts.make_norm = lambda: rms(cfg.dim, eps=cfg.norm_eps)
    elif cfg.norm == "layernorm":
        provenance["LayerNorm"] = "tinylm（torch.nn.LayerNorm）"
        parts.make_norm = lambda: nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
    else:
        provenance["norm"] = "tinylm（不归一化：nn.Identity）"
        parts.make_norm = nn.Identity

    if cfg.pos == "rope":
        rope = _take("rope", impl, required, provenance)
        parts.precompute_freqs_cis, parts.apply_rotary_pos_emb = rope.precompute_freqs_cis, rope.apply_rotary_pos_emb
    elif cfg.pos == "sinusoidal":
        sin_ns = _take("sinusoidal_position_encoding", impl, required, provenance)
        parts.sinusoidal_position_encoding = sin_ns.sinusoidal_position_encoding
    elif cfg.pos == "learned":
        provenance["learned_position"] = "tinylm（nn.Embedding(max_seq_len, dim)）"
    elif cfg.pos == "nope":
        provenance["NoPE"] = "tinylm（不加位置编码）"
    else:
        provenance["ALiBi"] = "tinylm（Press et al. 2022 的线性偏置）"

    parts.repeat_kv = _take("repeat_kv", impl, required, provenance).repeat_kv
    if cfg.pos == "alibi":
        provenance["attention"] = "tinylm（ALiBi 要加浮点偏置，不经过 scaled_dot_product_attention）"
    elif not cfg.attn_scale:
        provenance["attention"] = "tinylm（去掉 1/√d，不经过 scaled_dot_product_attention）"
    else:
        parts.scaled_dot_product_attention = _take(
            "scaled_dot_product_attention", impl, required, provenance).scaled_dot_product_attention

    hidden = cfg.ffn_hidden_size
    if cfg.ffn == "swiglu":
        ffn_cls = _take("FeedForward", impl, required, provenance).FeedForward
        parts.make_ffn = lambda: ffn_cls(cfg.dim, hidden_dim=hidden, multiple_of=SWIGLU_MULTIPLE_OF,
                                         dropout=cfg.dropout)
    elif cfg.ffn in ("relu", "gelu"):
        provenance["MLP"] = f"tinylm（{cfg.ffn.upper()} MLP，hidden={hidden}）"
        parts.make_ffn = lambda: MLP(cfg.dim, hidden, cfg.ffn, cfg.dropout)
    else:
        provenance["FFN"] = "tinylm（没有 FFN 子层）"
        parts.make_ffn = None

    if seed is not None:
        torch.manual_seed(seed)
    model = TinyLM(cfg, parts, provenance)
    return model, dict(provenance)


# ============================================================================================
# 训练与评估
# ============================================================================================

def learning_rate(step: int, steps: int, lr: float, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> float:
    """第 step 次更新（从 0 数）用的学习率：线性 warmup 到 lr，再余弦衰减到 lr·min_lr_ratio。"""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    min_lr = lr * min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


@dataclass
class TrainResult:
    train_steps: list
    train_losses: list
    val_steps: list
    val_losses: list
    final_val_loss: float               # 发散时为 nan
    diverged_at: Optional[int]          # None = 没有发散
    tokens_per_sec: float               # 只算训练（不含评估）的时间
    wall_time_s: float                  # 含评估
    grad_norms: Optional[list] = None   # record_grad_norms 时：grad_norms[层][i] 对应 train_steps[i]

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    def to_dict(self) -> dict:
        """原样转成 dict（发散时 final_val_loss 是 float('nan')，json.dump 会写成 NaN）。"""
        return asdict(self)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _block_grad_norms(model: nn.Module) -> list:
    norms = []
    for block in model.blocks:
        grads = [p.grad.detach().float() for p in block.parameters() if p.grad is not None]
        norms.append(math.sqrt(sum(float(g.pow(2).sum()) for g in grads)) if grads else 0.0)
    return norms


@torch.no_grad()
def evaluate(model: nn.Module, corpus, *, split: str = "val", seq_len: int, batch_size: int = 16, iters: int = 10,
             seed: int = 1234, device=None) -> float:
    """在 split 上取 iters 个固定（seed 决定）的 batch，返回平均交叉熵。

    seq_len 可以比训练时长（learned 位置除外，那会抛 ValueError）。device=None 时用模型所在的设备。
    """
    device = _model_device(model) if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    try:
        total = 0.0
        for _ in range(iters):
            x, y = corpus.get_batch(split, batch_size, seq_len, generator=generator, device=device)
            _, loss = model(x, y)
            total += float(loss)
        return total / iters
    finally:
        model.train(was_training)


@torch.no_grad()
def per_position_loss(model: nn.Module, corpus, *, seq_len: int, n_seqs: int, batch_size: int = 16, seed: int = 1234,
                      split: str = "val", device=None) -> list:
    """在 split 上取 n_seqs 段长 seq_len 的固定片段（seed 决定），返回每个位置的平均交叉熵（长 seq_len 的列表）。

    同样的 seed 和 seq_len → 完全相同的片段：比较位置编码时，变体之间的差别只来自模型本身。
    """
    device = _model_device(model) if device is None else torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    total = torch.zeros(seq_len, dtype=torch.float64)
    done = 0
    try:
        while done < n_seqs:
            b = min(batch_size, n_seqs - done)
            x, y = corpus.get_batch(split, b, seq_len, generator=generator, device=device)
            logits, _ = model(x)
            ce = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")
            total += ce.view(b, seq_len).double().sum(0).cpu()
            done += b
    finally:
        model.train(was_training)
    return (total / n_seqs).tolist()


def layer_grad_norms(model: nn.Module, corpus, *, seq_len: int, batch_size: int, seed: int = 0,
                     split: str = "train") -> list:
    """在当前权重上（例如刚初始化时）做一次前向 + 反向，返回每个 block 全部参数梯度的 L2 范数。

    Pre-LN vs Post-LN 实验用它复现 Xiong et al. 2020 的观察：初始化时 Post-LN 靠近输出的层梯度大。
    之后会清掉梯度，不影响接下来的训练。
    """
    device = _model_device(model)
    generator = torch.Generator().manual_seed(seed)
    x, y = corpus.get_batch(split, batch_size, seq_len, generator=generator, device=device)
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    norms = _block_grad_norms(model)
    model.zero_grad(set_to_none=True)
    return norms


def train_lm(model: nn.Module, corpus, *, steps: int, batch_size: int = 16, seq_len: int = 64, lr: float = 3e-3,
             warmup_steps: int = 0, min_lr_ratio: float = 0.1, weight_decay: float = 0.0,
             grad_clip: Optional[float] = 1.0, eval_every: Optional[int] = None, eval_iters: int = 10,
             seed: int = 0, device="cpu", progress: bool = True, desc: str = "",
             record_grad_norms: bool = False) -> TrainResult:
    """AdamW 训练 steps 步，返回 TrainResult。loss 或梯度变成 NaN / inf 时停下并记录 diverged_at（不抛异常）。

    - batch 由 seed 决定（独立的 torch.Generator），同一 seed 的两个变体看到完全相同的数据；
    - 学习率：warmup_steps 步线性升温，然后余弦衰减到 lr·min_lr_ratio（见 learning_rate）；
    - weight_decay 只作用于矩阵（≥2 维的参数），不作用于 norm 的 weight（nanoGPT 的做法）；
    - AdamW 的 betas=(0.9, 0.99)：nanoGPT 在字符级 shakespeare 上的设置（每步 token 少，β2 稍小更稳）；
    - eval_every：每隔多少步在 val 上评估一次；最后总会评估一次（除非已经发散）。
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps 应为非负整数，实际 {steps!r}")
    device = torch.device(device)
    model.to(device)
    was_training = model.training
    model.train()

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(seed)
    blocks = getattr(model, "blocks", [])

    train_steps, train_losses, val_steps, val_losses = [], [], [], []
    grad_norms = [[] for _ in blocks] if record_grad_norms else None
    diverged_at = None
    train_time = 0.0
    t_start = time.perf_counter()

    def run_eval(step: int) -> None:
        val_steps.append(step)
        val_losses.append(evaluate(model, corpus, split="val", seq_len=seq_len, batch_size=batch_size,
                                   iters=eval_iters, device=device))

    bar = tqdm(total=steps, desc=desc or None, disable=None if progress else True, dynamic_ncols=True, leave=False)
    try:
        for step in range(steps):
            t0 = time.perf_counter()
            current_lr = learning_rate(step, steps, lr, warmup_steps, min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            x, y = corpus.get_batch("train", batch_size, seq_len, generator=generator, device=device)
            _, loss = model(x, y)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                diverged_at = step
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            train_steps.append(step)
            train_losses.append(loss_value)
            if record_grad_norms:
                for layer, norm in enumerate(_block_grad_norms(model)):
                    grad_norms[layer].append(norm)
            if grad_clip is not None:
                total_norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
                if not math.isfinite(total_norm):
                    diverged_at = step  # 梯度已经是 NaN / inf：这一步更新会把权重变成 NaN
                    break
            optimizer.step()
            train_time += time.perf_counter() - t0
            bar.update(1)
            if step % 10 == 0 or step == steps - 1:
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
            if eval_every and (step + 1) % eval_every == 0 and step + 1 < steps:
                run_eval(step + 1)
        if diverged_at is None:
            run_eval(steps)
    finally:
        bar.close()
        model.train(was_training)

    tokens = len(train_steps) * batch_size * seq_len
    return TrainResult(
        train_steps=train_steps,
        train_losses=train_losses,
        val_steps=val_steps,
        val_losses=val_losses,
        final_val_loss=float("nan") if diverged_at is not None else val_losses[-1],
        diverged_at=diverged_at,
        tokens_per_sec=tokens / train_time if train_time > 0 else 0.0,
        wall_time_s=time.perf_counter() - t_start,
        grad_norms=grad_norms,
    )
