"""模块 09 实验 3（batch 大小）与实验 4（float32 vs bfloat16）共用的小工具。

被研究的是**你的代码**：
- 模型是你在模块 06 写的 MiniMindForCausalLM（里面是你在 01–04 写的部件）；
- 优化器、学习率调度、训练步是你在模块 08 写的 AdamW、cosine_lr、train_step；
- 数据切分、取批次、held-out 评估是你在本模块写的 PretrainDataset、rank_batch、evaluate。
某个部件还在抛 NotImplementedError 时，换成参考实现（solutions/）并打印一行说明——和 ``python -m kata train``
的做法一样；结果 JSON 的 provenance 里逐个写明每个部件来自哪里。部件在很小的输入上就报别的错时，
只打印一句中文（退出码 2），不打印 traceback。
"""
from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from kata import impl as kata_impl
from kata.config import MiniMindConfig
from kata.experiment import ComponentNotImplemented, display_path, not_implemented_sentence

# (模块, 名字)：本文件的实验用到的学习者部件，按这个顺序试跑
PIECES = (
    ("06_transformer_block", "MiniMindForCausalLM"),
    ("08_training_loop", "AdamW"),
    ("08_training_loop", "cosine_lr"),
    ("08_training_loop", "train_step"),
    ("09_pretrain", "PretrainDataset"),
    ("09_pretrain", "rank_batch"),
    ("09_pretrain", "evaluate"),
)
TEST_DIRS = {"06_transformer_block": "exercises/06_transformer_block", "08_training_loop": "exercises/08_training_loop",
             "09_pretrain": "exercises/09_pretrain"}


def _tiny_config(vocab: int = 11) -> MiniMindConfig:
    return MiniMindConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=vocab, max_position_embeddings=16)


def _probe(name: str, ns, ref) -> None:
    """在很小的输入上用一次这个部件；其余部件用参考实现（只检查这一个）。"""
    if name == "MiniMindForCausalLM":
        out = ns.MiniMindForCausalLM(_tiny_config())(torch.zeros(1, 4, dtype=torch.long))
        if not isinstance(getattr(out, "logits", None), torch.Tensor):
            raise TypeError("forward 的返回值没有 logits 张量")
    elif name == "AdamW":
        p = nn.Parameter(torch.ones(3))
        p.grad = torch.ones(3)
        ns.AdamW([p], lr=0.1, betas=(0.9, 0.95), weight_decay=0.1).step()
    elif name == "cosine_lr":
        float(ns.cosine_lr(1, 10, 0.1, 2, 0.01))
    elif name == "train_step":
        model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5))
        x = torch.tensor([[0, 1, 2, 3]])
        ns.train_step(model, (x, x), torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=1.0, lr=0.1)
    elif name == "PretrainDataset":
        ds = ns.PretrainDataset(torch.arange(10), 4)
        len(ds)
        ds[0]
    elif name == "rank_batch":
        ns.rank_batch(ref.PretrainDataset(torch.arange(20), 4), 0, 2, 0, 1, 0)
    elif name == "evaluate":
        model = nn.Sequential(nn.Embedding(11, 4), nn.Linear(4, 11))
        res = ns.evaluate(model, ref.PretrainDataset(torch.arange(11), 4), batch_size=2, max_batches=1)
        float(res["loss"])


@dataclass
class Pieces:
    """按 --impl 取到的部件（还没实现的已换成参考实现）。"""

    impl: str
    objs: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    fallbacks: list = field(default_factory=list)

    def __getattr__(self, name):
        objs = self.__dict__.get("objs", {})
        if name in objs:
            return objs[name]
        raise AttributeError(name)


def _side_for(module: str, impl: str, own_module: str) -> str:
    """bug:<名字> 只替换本模块（09）的部件；别的模块用参考实现（bug bank 是按模块分的）。"""
    if impl.startswith("bug:") and module != own_module:
        return "solutions"
    return impl


def resolve_pieces(impl: str, own_module: str = "09_pretrain", say=print) -> Pieces:
    """逐个取部件并试跑：NotImplementedError → 换参考实现并说一句；别的错误 → ComponentNotImplemented（一句中文）。"""
    pieces = Pieces(impl)
    cache: dict = {}
    for module, name in PIECES:
        ref = kata_impl.resolve(module, "solutions")
        side = _side_for(module, impl, own_module)
        try:
            ns = cache.get((module, side)) or kata_impl.resolve(module, side)
        except kata_impl.ImplLoadError as exc:
            if side in kata_impl.SIDES or side.startswith("bug:"):
                raise
            ns = ref   # 外部实现的目录里没有这个模块的文件：用参考实现
            say(f"--impl {impl} 里没有 {module} 的文件（{str(exc).splitlines()[0]}）：{name} 改用参考实现 solutions/{module}/。")
            pieces.fallbacks.append(name)
            pieces.provenance[name] = {"impl": "solutions", "fallback": True,
                                       "reason": str(exc).splitlines()[0]}
            pieces.objs[name] = getattr(ref, name)
            continue
        cache[(module, side)] = ns
        obj = getattr(ns, name)
        if side != "solutions":
            try:
                with torch.random.fork_rng(devices=[]):
                    _probe(name, ns, ref)
            except NotImplementedError as exc:
                if module == own_module:   # 被研究的是本模块的部件：它还没写就没有“你的代码”可做实验
                    raise ComponentNotImplemented(name, impl, not_implemented_sentence(name, impl)) from exc
                first = str(exc).splitlines()[0] if str(exc) else "NotImplementedError"
                who = "你的" if side == "exercises" else f"--impl {impl} 的"
                say(f"{who} {name} 还没实现（{first}）：这次改用参考实现 solutions/{module}/。")
                obj = getattr(ref, name)
                pieces.fallbacks.append(name)
                pieces.provenance[name] = {"impl": "solutions", "fallback": True, "reason": first}
                pieces.objs[name] = obj
                continue
            except Exception as exc:  # noqa: BLE001 学习者的部件在小输入上就出错：一句话，不要 traceback
                detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip(": ")
                who = "你的" if side == "exercises" else f"--impl {impl} 的"
                raise ComponentNotImplemented(name, impl, (
                    f"{who} {name}（{module}）在一个很小的输入上就出错了（{detail}）：先让 pytest {TEST_DIRS[module]} 通过，"
                    "或者加上 --impl solutions 先用参考实现运行这个实验。")) from exc
        pieces.objs[name] = obj
        files = [f for f in ns._files if not str(f).startswith("bug:")]
        pieces.provenance[name] = {"impl": side, "fallback": False,
                                   "files": [display_path(f) for f in files] or list(ns._files)}
    return pieces


def model_config(vocab: int, seq_len: int, **shape) -> MiniMindConfig:
    """MiniMindConfig：形状来自 kata train 的预设（shape），RoPE 表只算到 seq_len。"""
    return MiniMindConfig(vocab_size=vocab, max_position_embeddings=seq_len, **shape)


def build_model(pieces: Pieces, cfg: MiniMindConfig, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return pieces.MiniMindForCausalLM(cfg)


class AutocastLM(nn.Module):
    """前向在 torch.autocast("cpu", dtype=bfloat16) 里跑，logits 转回 float32 再交给 loss。

    这就是“混合精度”：参数、梯度、优化器状态仍是 float32（主权重），只有矩阵乘之类的算子在 bf16 里算；
    bf16 的指数位和 float32 一样多，所以不需要 float16 那样的 GradScaler（minimind 的 train_pretrain.py
    也只在 float16 时启用 GradScaler）。反向传播在 autocast 区域之外调用（PyTorch 文档的建议），
    每个算子的反向自动用它前向时的 dtype。
    """

    def __init__(self, lm: nn.Module, enabled: bool = True):
        super().__init__()
        self.lm = lm
        self.enabled = enabled

    def forward(self, input_ids):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if self.enabled else contextlib.nullcontext()
        with ctx:
            logits = self.lm(input_ids).logits
        return logits.float()


@dataclass
class TrainRun:
    """一次训练：你的 AdamW + cosine_lr + train_step，批次由你的 rank_batch 按 (种子, 步号) 确定。

    同一个种子、不同 batch 大小的两次训练，在同样的 token 数里看到的是**同一批样本、同样的顺序**
    （rank_batch 取打乱后序列的第 step·B … step·B + B − 1 个），只是分组不同。
    """

    pieces: Pieces
    model: nn.Module
    train_ds: object
    val_ds: object
    steps: int
    batch: int
    lr: float
    warmup: int
    seed: int
    grad_clip: float = 1.0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.95)
    net: Optional[nn.Module] = None   # 实际做前向的模块（bf16 时是 AutocastLM 包装）
    step: int = 0
    losses: list = field(default_factory=list)
    diverged_at: Optional[int] = None
    opt: object = None

    def __post_init__(self):
        self.net = self.net if self.net is not None else _LogitsOnly(self.model)
        self.device = next(self.model.parameters()).device   # 批次跟着模型走（--device cuda / mps 时）
        self.opt = self.pieces.AdamW(self.model.parameters(), lr=self.lr, betas=self.betas,
                                     weight_decay=self.weight_decay)

    @property
    def done(self) -> bool:
        return self.step >= self.steps or self.diverged_at is not None

    def advance(self, n: int) -> int:
        """再训练最多 n 步（发散或到头就停）；返回实际训练的步数。"""
        p = self.pieces
        did = 0
        self.model.train()
        while did < n and not self.done:
            lr = float(p.cosine_lr(self.step, self.steps, self.lr, self.warmup, self.lr * self.min_lr_ratio))
            x, y = p.rank_batch(self.train_ds, self.step, self.batch, 0, 1, self.seed)
            x, y = x.to(self.device), y.to(self.device)
            out = p.train_step(self.net, (x, y), self.opt, max_grad_norm=self.grad_clip, lr=lr)
            loss = float(out["loss"])
            gn = out.get("grad_norm")
            self.losses.append(loss)
            if not math.isfinite(loss) or (gn is not None and not math.isfinite(float(gn))):
                self.diverged_at = self.step
            self.step += 1
            did += 1
        return did

    def evaluate(self, n_seqs: int, batch_size: int = 64) -> float:
        """held-out 的前 n_seqs 个样本上的平均 loss（nats/字符），用你的 evaluate；所有运行用同一批样本。"""
        if self.diverged_at is not None:
            return float("nan")
        return held_out_loss(self.pieces, self.net, self.val_ds, n_seqs, batch_size)


def held_out_loss(pieces: Pieces, net: nn.Module, val_ds, n_seqs: int, batch_size: int = 64) -> float:
    """你的 evaluate 在 held-out 前 n_seqs 个样本上的平均 loss（nats/字符）。net 是 MiniMindForCausalLM 时先包一层。"""
    if not isinstance(net, (_LogitsOnly, AutocastLM)):
        net = _LogitsOnly(net)
    bs = min(batch_size, n_seqs)
    res = pieces.evaluate(net, val_ds, batch_size=bs, max_batches=max(1, n_seqs // bs))
    return float(res["loss"])


class _LogitsOnly(nn.Module):
    """MiniMindForCausalLM 返回一个带 .logits 的对象；train_step / evaluate 都接受它，这里只是统一成张量。"""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids).logits


# ---------------------------------------------------------------------------------------------
# CPU 信息（实验 4）
# ---------------------------------------------------------------------------------------------

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "bf16")   # 最后一个是 ARM（/proc/cpuinfo 的 Features）
OTHER_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "sve")


def cpu_info() -> dict:
    """CPU 型号与和 bf16 有关的指令集标志（Linux 读 /proc/cpuinfo；别的系统标为不可得）。"""
    info = {"model": platform.processor() or platform.machine(), "source": None, "flags": {},
            "torch_cpu_capability": None, "logical_cpus": os.cpu_count()}
    try:
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 旧版本 PyTorch 没有这个函数
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        info["source"] = "unavailable"
        return info
    flags: set = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and info["source"] is None:
            info["model"] = value.strip()
            info["source"] = "/proc/cpuinfo"
        if key in ("flags", "features") and not flags:
            flags = set(value.split())
    info["source"] = "/proc/cpuinfo"
    info["flags"] = {f: (f in flags) for f in BF16_FLAGS + OTHER_FLAGS}
    info["flags_found"] = bool(flags)
    return info


def has_native_bf16(info: dict) -> Optional[bool]:
    """这颗 CPU 有没有 bf16 的矩阵乘指令（x86 的 avx512_bf16 / AMX，ARM 的 bf16）；读不到标志时 None。"""
    if not info.get("flags_found"):
        return None
    return any(info["flags"].get(f) for f in BF16_FLAGS)


class Stopwatch:
    """同时记墙钟时间与本进程的 CPU 时间（机器被别的任务占用时，墙钟时间被拉长，CPU 时间受影响小得多）。"""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0
        return False
