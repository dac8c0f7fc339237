"""模块 09 实验 1、2 共用的小工具：取你的部件、搭 MiniMind、用你的训练循环训练、拟合幂律。

被研究的是**你的代码**：
- 模型 = 你在模块 06 写的 ``MiniMindForCausalLM``（里面是你的 RMSNorm / RoPE / 注意力 / FeedForward）；
- 优化器与一步更新 = 你在模块 08 写的 ``AdamW``、``train_step``（实验 2 还用 ``cosine_lr``）；
- 数据与评估 = 你在本模块写的 ``PretrainDataset``、``rank_batch``、``evaluate``。

某个部件还在抛 NotImplementedError 时（还没写完），这里换成参考实现、打印一行说明，并记进结果 JSON 的
``provenance``（同 ``python -m kata train``）；部件写了但在很小的输入上就出错时，不替换，只打印一句话并以退出码 2 结束
（用参考实现会掩盖你的 bug）。
"""
from __future__ import annotations

import math
import time
from typing import Callable, Optional, Sequence

import torch
from tqdm import tqdm

from kata import impl as kata_impl
from kata.config import MiniMindConfig
from kata.experiment import ComponentNotImplemented, Experiment, not_implemented_sentence

HEAD_DIM = 16          # 所有尺寸都用 16 维的头：宽度变了，头数跟着变（MiniMind2-small 是 64 维 × 8 头）
ROPE_THETA = 1e4       # 序列只有 64：用 1e4 而不是 minimind 为 32k 长度准备的 1e6


# ---------------------------------------------------------------------------------------------
# 部件：你的实现；还没写完的换成参考实现
# ---------------------------------------------------------------------------------------------

def _tiny_config(vocab: int = 8) -> MiniMindConfig:
    return MiniMindConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          vocab_size=vocab, max_position_embeddings=8, rope_theta=ROPE_THETA)


def _probe_model(cls) -> None:
    out = cls(_tiny_config())(torch.zeros(1, 4, dtype=torch.long))
    logits = getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (1, 4, 8):
        raise TypeError(f"forward 应返回带 logits [1, 4, 8] 的对象，实际 {type(out).__name__}"
                        f"{'' if logits is None else ' logits ' + str(tuple(logits.shape))}")


def _probe_adamw(cls) -> None:
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)
    cls([p], lr=0.1, betas=(0.9, 0.95), weight_decay=0.1).step()


def _probe_train_step(fn) -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5))
    x = torch.tensor([[0, 1, 2]])
    fn(model, (x, x), torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=1.0, lr=0.1)


def _probe_cosine(fn) -> None:
    fn(1, 10, 0.1, 2, 0.01)


def _probe_dataset(cls) -> None:
    cls(torch.arange(10), 4)[0]


def _ref_dataset(ids, seq_len):
    return kata_impl.resolve("09_pretrain", "solutions").PretrainDataset(ids, seq_len)


def _probe_rank_batch(fn) -> None:
    fn(_ref_dataset(torch.arange(20), 4), 0, 2, 0, 1, 0)


def _probe_evaluate(fn) -> None:
    model = torch.nn.Sequential(torch.nn.Embedding(20, 4), torch.nn.Linear(4, 20))
    fn(model, _ref_dataset(torch.arange(20), 4), batch_size=2, max_batches=1)


# 名字 → (模块, 试跑函数)
PIECES = {
    "MiniMindForCausalLM": ("06_transformer_block", _probe_model),
    "AdamW": ("08_training_loop", _probe_adamw),
    "train_step": ("08_training_loop", _probe_train_step),
    "cosine_lr": ("08_training_loop", _probe_cosine),
    "PretrainDataset": ("09_pretrain", _probe_dataset),
    "rank_batch": ("09_pretrain", _probe_rank_batch),
    "evaluate": ("09_pretrain", _probe_evaluate),
}


class Parts:
    """按 --impl 取部件：``parts.AdamW``、``parts.train_step`` …；``parts.source[name]`` 记着每个部件实际来自哪里。"""

    def __init__(self, exp: Experiment, names: Sequence[str]):
        self.impl = exp.impl
        self.own_module = exp.module      # --impl bug:<名字> 只替换本模块（09）的部件，其余用参考实现
        self.source: dict = {}
        self.fallbacks: list[str] = []
        for name in names:
            setattr(self, name, self._take(name))
        exp.record_provenance({"parts": self.source})

    def _take(self, name: str):
        module, probe = PIECES[name]
        if self.impl.startswith("bug:") and module != self.own_module:
            self.source[name] = {"module": module, "impl": "solutions",
                                 "reason": f"{self.impl} 只替换 {self.own_module} 的部件"}
            return getattr(kata_impl.resolve(module, "solutions"), name)
        try:
            obj = getattr(kata_impl.resolve(module, self.impl), name)
        except Exception as exc:  # bug:<名字> 不属于这个模块，或 --impl 的路径里没有这个模块的文件：这个部件用参考实现
            if not (self.impl.startswith("bug:") or isinstance(exc, (kata_impl.ImplLoadError, AttributeError))):
                raise
            self.source[name] = {"module": module, "impl": "solutions", "fallback_from": self.impl,
                                 "reason": str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}
            if not self.impl.startswith("bug:"):
                print(f"--impl {self.impl} 里没有可用的 {name}（{module}）：这个部件用参考实现。")
                self.fallbacks.append(name)
            return getattr(kata_impl.resolve(module, "solutions"), name)
        if self.impl == "solutions":
            self.source[name] = {"module": module, "impl": "solutions"}
            return obj
        try:
            with torch.random.fork_rng(devices=[]):      # 试跑不能改变实验的随机序列
                probe(obj)
        except NotImplementedError as exc:
            if module == self.own_module:   # 被研究的是本模块的部件：它还没写就没有“你的代码”可做实验
                raise ComponentNotImplemented(name, self.impl, not_implemented_sentence(name, self.impl)) from exc
            first = str(exc).splitlines()[0] if str(exc) else "NotImplementedError"
            print(f"你的 {name} 还没实现（{first}）：这次用参考实现 solutions/{module}/，"
                  f"结果 JSON 的 provenance 里记着。")
            self.fallbacks.append(name)
            self.source[name] = {"module": module, "impl": "solutions", "fallback_from": self.impl,
                                 "reason": "NotImplementedError"}
            return getattr(kata_impl.resolve(module, "solutions"), name)
        except Exception as exc:  # 写了但有 bug：不替换（替换会掩盖它），一句话退出
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip(": ")
            raise ComponentNotImplemented(name, self.impl, not_implemented_sentence(name, self.impl, detail)) from exc
        self.source[name] = {"module": module, "impl": self.impl,
                             "description": kata_impl.describe(self.impl)}
        return obj

    def describe(self) -> str:
        if self.impl == "solutions":
            return "全部是参考实现（--impl solutions）"
        mine = [n for n, src in self.source.items() if src["impl"] != "solutions"]
        ref = [n for n in self.source if n not in mine]
        who = "你的" if self.impl == "exercises" else f"来自 --impl {self.impl} 的"
        text = (who + "：" + "、".join(mine)) if mine else f"{who}部件一个都用不上"
        if ref:
            text += "；用参考实现的：" + "、".join(ref)
        return text


# ---------------------------------------------------------------------------------------------
# 模型：MiniMind 的形状，缩小
# ---------------------------------------------------------------------------------------------

def shape_config(hidden: int, layers: int, vocab: int, seq_len: int) -> MiniMindConfig:
    """MiniMind 式的配置：头维 16、query 头 : KV 头 = 4 : 1（MiniMind2-small 是 8 : 2），
    FFN 宽度按 minimind 的规则 int(8h/3) 向上取整到 64 的倍数，词嵌入与 lm_head 共享。"""
    heads = max(1, hidden // HEAD_DIM)
    kv = max(1, heads // 4)
    while heads % kv:
        kv -= 1
    return MiniMindConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=kv, vocab_size=vocab, max_position_embeddings=seq_len,
                          rope_theta=ROPE_THETA)


def build_model(parts: Parts, cfg: MiniMindConfig, seed: int, device: str):
    torch.manual_seed(seed)
    return parts.MiniMindForCausalLM(cfg).to(device)


def param_counts(model) -> dict:
    """total（共享的权重只算一次）、embedding（词嵌入表；与 lm_head 共享时就是那一份）、non_embedding = 其余。"""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    emb = model.model.embed_tokens.weight.numel()
    return {"total": total, "embedding": emb, "non_embedding": total - emb}


def attention_flops_share(cfg: MiniMindConfig, n_non_embedding: int, seq_len: int) -> float:
    """6N 漏掉的注意力“打分 + 加权求和”的 FLOPs 占 6N 的比例：Kaplan et al. 2020 表 1 的前向
    2·n_layer·n_ctx·d_attn（每个 token），与 2N 相比。n_ctx 取训练的序列长度。"""
    return (cfg.num_hidden_layers * seq_len * cfg.hidden_size) / n_non_embedding


# ---------------------------------------------------------------------------------------------
# 训练：你的 rank_batch → 你的 train_step（你的 AdamW）→ 你的 evaluate
# ---------------------------------------------------------------------------------------------

def train_model(parts: Parts, model, train_ds, val_ds, *, steps: int, batch: int, lr_at: Callable[[int], float],
                eval_steps: Sequence[int], seed: int, eval_batch: int = 64, eval_batches: int = 6,
                final_eval_batches: Optional[int] = None, grad_clip: float = 1.0, weight_decay: float = 0.1,
                device: str = "cpu", progress: bool = True, desc: str = "") -> dict:
    """训练 steps 次更新，在 eval_steps（第几次更新之后）评估验证集，返回一条记录。

    - 第 s 步的 batch = rank_batch(train_ds, s, batch, rank=0, world_size=1, seed)：只由种子决定，
      同一个种子的所有模型看到完全相同的数据（配对比较的前提）；
    - 评估用验证集最前面的 eval_batches × eval_batch 个样本（所有模型、所有时刻都是同一批，比较时噪声相消）；
      final_eval_batches 给了时，最后一步再用这么多个 batch 评估一次，记为 final_val_loss；
    - loss 不再有限时停下，diverged_at = 那一步（发散是结果，不是崩溃）。
    """
    opt = parts.AdamW(model.parameters(), lr=lr_at(0), betas=(0.9, 0.95), weight_decay=weight_decay)
    seq_len = train_ds.seq_len if hasattr(train_ds, "seq_len") else None
    wanted = sorted({s for s in eval_steps if 0 < s <= steps} | {steps})
    rec = {"steps": steps, "eval_steps": [], "val_loss": [], "val_bpb": [], "train_loss": [], "diverged_at": None,
           "final_val_loss": float("nan"), "final_val_bpb": float("nan")}
    train_time = train_cpu = 0.0
    cpu0 = time.process_time()
    model.train()
    bar = tqdm(total=steps, desc=desc or None, disable=None if progress else True, leave=False, dynamic_ncols=True,
               unit="step")
    tokens_per_step = None
    try:
        for step in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            x, y = parts.rank_batch(train_ds, step, batch, 0, 1, seed)
            x, y = x.to(device), y.to(device)
            tokens_per_step = int((y != -100).sum())
            out = parts.train_step(model, (x, y), opt, max_grad_norm=grad_clip, lr=lr_at(step))
            loss = float(out["loss"])
            train_time += time.perf_counter() - t0
            train_cpu += time.process_time() - c0
            rec["train_loss"].append(loss)
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if not math.isfinite(loss):
                rec["diverged_at"] = step
                break
            if step + 1 in wanted:
                ev = parts.evaluate(model, val_ds, batch_size=eval_batch, max_batches=eval_batches)
                rec["eval_steps"].append(step + 1)
                rec["val_loss"].append(float(ev["loss"]))
                rec["val_bpb"].append(float(ev["bpb"]))
    finally:
        bar.close()
    if rec["diverged_at"] is None:
        if final_eval_batches:
            ev = parts.evaluate(model, val_ds, batch_size=eval_batch, max_batches=final_eval_batches)
            rec["final_val_loss"], rec["final_val_bpb"] = float(ev["loss"]), float(ev["bpb"])
        else:
            rec["final_val_loss"], rec["final_val_bpb"] = rec["val_loss"][-1], rec["val_bpb"][-1]
    rec["tokens_per_step"] = tokens_per_step
    rec["eval_tokens"] = [s * (tokens_per_step or 0) for s in rec["eval_steps"]]
    rec["train_seconds"] = train_time
    rec["train_cpu_seconds"] = train_cpu          # 机器被别的进程占着时，墙钟时间会被拉长，CPU 时间不会
    rec["tokens_per_cpu_sec"] = len(rec["train_loss"]) * (tokens_per_step or 0) / max(train_cpu, 1e-9)
    rec["cpu_seconds"] = time.process_time() - cpu0
    rec["tokens_per_sec"] = len(rec["train_loss"]) * (tokens_per_step or 0) / max(train_time, 1e-9)
    rec["seq_len"] = seq_len
    return rec


# ---------------------------------------------------------------------------------------------
# 拟合
# ---------------------------------------------------------------------------------------------

def loglog_fit(x: Sequence[float], y: Sequence[float]) -> dict:
    """最小二乘拟合 ln y = c + k·ln x（即 y = e^c · x^k）。返回斜率 k、截距 c、k 的标准误、R²、各点残差（ln 单位）。"""
    import numpy as np

    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    n = len(lx)
    if n < 2:
        return {"slope": float("nan"), "intercept": float("nan"), "slope_se": float("nan"), "r2": float("nan"),
                "residuals": [], "n": n}
    A = np.vstack([lx, np.ones(n)]).T
    (k, c), *_ = np.linalg.lstsq(A, ly, rcond=None)
    res = ly - (k * lx + c)
    ss_res, ss_tot = float((res ** 2).sum()), float(((ly - ly.mean()) ** 2).sum())
    se = math.sqrt(ss_res / (n - 2) / float(((lx - lx.mean()) ** 2).sum())) if n > 2 else float("nan")
    return {"slope": float(k), "intercept": float(c), "slope_se": se,
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"), "residuals": res.tolist(), "n": n}


def parabola_vertex(x: Sequence[float], y: Sequence[float]) -> dict:
    """y ≈ p2·x² + p1·x + p0 的最小二乘拟合；开口向上且顶点落在 x 的范围内时 bracketed = True。"""
    import numpy as np

    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return {"vertex": float("nan"), "bracketed": False, "p2": float("nan"), "coef": []}
    p2, p1, p0 = np.polyfit(x, y, 2)
    vertex = -p1 / (2 * p2) if p2 != 0 else float("nan")
    ok = bool(p2 > 0 and x.min() <= vertex <= x.max())
    return {"vertex": float(vertex), "bracketed": ok, "p2": float(p2), "coef": [float(p2), float(p1), float(p0)]}


def interp_loglinear(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """在 ln x 上线性插值（x 在 xs 的范围之外时返回 nan，不外推）。"""
    if not xs or x < xs[0] or x > xs[-1]:
        return float("nan")
    lx = math.log(x)
    for i in range(len(xs) - 1):
        a, b = xs[i], xs[i + 1]
        if a <= x <= b:
            if b == a:
                return ys[i]
            t = (lx - math.log(a)) / (math.log(b) - math.log(a))
            return ys[i] + t * (ys[i + 1] - ys[i])
    return ys[-1]
