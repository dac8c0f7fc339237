"""kata 的预训练器：用**你的** MiniMind（模块 06）、分词器（07）、训练循环（08）和预训练接线（09）从零训练。

    python -m kata.train                                   默认预设 cpu（约 1M 参数，字符级 TinyShakespeare）
    python -m kata.train --preset tiny --steps 50          冒烟
    python -m kata.train --impl solutions                  全部用参考实现
    python -m kata.train --hidden_size 192 --num_hidden_layers 6     覆盖任何 MiniMindConfig 字段
    python -m kata.train --resume runs/train/resume.pth    精确续训
    torchrun --nproc_per_node=2 -m kata.train --steps 20   DDP（CPU 上 gloo）
    python -m kata.generate --ckpt runs/train/model.pth --prompt "ROMEO:"

某个部件还没实现（NotImplementedError）时打印一行说明并改用参考实现（同 quickstart）。
输出目录（默认 runs/train/）：model.pth（普通 state_dict，minimind 的键名）、config.json、tokenizer.json、
resume.pth（模块 08 的 save_checkpoint 格式）、results.json、loss.png。全部原子写入。
Ctrl-C：rank 0 存好 resume.pth / model.pth，打印一行，退出码 130。
"""
from __future__ import annotations

import argparse
import bz2
import dataclasses
import json
import lzma
import math
import os
import random
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from kata.config import MiniMindConfig
from kata.impl import REPO_ROOT, resolve

INTERRUPTED = "已中断：checkpoint 已保存到 {path}（用 --resume {path} 接着训练）。"
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# 预设：模型形状 + 训练超参数。MiniMindConfig 的任何字段都能在命令行覆盖（--hidden_size 256）。
PRESETS = {
    "tiny": dict(model=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
                 train=dict(steps=200, batch_size=16, seq_len=64, lr=3e-3, warmup=20, eval_every=100),
                 note="冒烟用：几十秒"),
    "cpu": dict(model=dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4),
                train=dict(steps=2000, batch_size=12, seq_len=64, lr=3e-3, warmup=100, eval_every=250),
                note="默认：约 0.86M 参数（nanoGPT 的 CPU 配方同尺寸：4 层、4 头、128 维、block 64、batch 12、2000 步）"),
    "minimind2-small": dict(model=dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                                       num_key_value_heads=2),
                            train=dict(steps=2000, batch_size=16, seq_len=256, lr=5e-4, warmup=100, eval_every=250),
                            note="MiniMind2-small 的形状（hidden 512、8 层、8/2 头）；词表随分词器。"
                                 "2 核 CPU 上每步约数秒，2000 步要几个小时——这个尺寸是为 GPU 准备的"),
}
TRAIN_DEFAULTS = dict(min_lr_ratio=0.1, grad_clip=1.0, eval_batches=50, ckpt_every=500, sample_tokens=200)


# ---------------------------------------------------------------------------------------------
# 部件：学习者的实现，没写完就退回参考实现（说一句话）
# ---------------------------------------------------------------------------------------------

class Parts:
    """按名字取部件；NotImplementedError 时换成参考实现并记下来。"""

    def __init__(self, impl: str, say):
        self.impl = impl
        self.say = say
        self.fallbacks: list[str] = []

    def get(self, module: str, name: str):
        return getattr(resolve(module, self.impl), name)

    def reference(self, module: str, name: str, why: BaseException):
        first = str(why).splitlines()[0] if str(why) else "NotImplementedError"
        if name not in self.fallbacks:
            self.fallbacks.append(name)
            self.say(f"你的 {name} 还没实现（{first}）：这次用参考实现 solutions/{module}/。")
        return getattr(resolve(module, "solutions"), name)

    def call(self, module: str, name: str, *args, **kwargs):
        """调用一次；还没实现就改用参考实现再调用。返回 (结果, 实际用的那个对象)。"""
        fn = self.get(module, name)
        if self.impl != "solutions":
            try:
                return fn(*args, **kwargs), fn
            except NotImplementedError as exc:
                fn = self.reference(module, name, exc)
        return fn(*args, **kwargs), fn


# ---------------------------------------------------------------------------------------------
# 分词器与数据
# ---------------------------------------------------------------------------------------------

def build_tokenizer(kind: str, text: str, vocab_size: int, parts: Parts, say):
    if kind == "char":
        from kata.data import CharTokenizer

        tok = CharTokenizer.from_text(text)
        return tok, {"type": "char", "chars": tok.chars}
    t0 = time.perf_counter()
    (vocab, merges), _ = parts.call("07_tokenizer", "train_bpe", text, vocab_size, SPECIAL_TOKENS)
    cls = parts.get("07_tokenizer", "BPETokenizer") if "train_bpe" not in parts.fallbacks else \
        resolve("07_tokenizer", "solutions").BPETokenizer
    try:
        tok = cls(vocab, merges, SPECIAL_TOKENS)
        tok.encode("a")
    except NotImplementedError as exc:
        tok = parts.reference("07_tokenizer", "BPETokenizer", exc)(vocab, merges, SPECIAL_TOKENS)
    say(f"BPE 分词器：词表 {len(vocab)}，训练用了 {time.perf_counter() - t0:.1f} 秒")
    spec = {"type": "bpe", "vocab": {str(i): b.hex() for i, b in vocab.items()},
            "merges": [[a.hex(), b.hex()] for a, b in merges], "special_tokens": list(SPECIAL_TOKENS)}
    return tok, spec


def tokenizer_from_spec(spec: dict):
    """tokenizer.json（kata train / kata sft 写的）→ 分词器。字符级的 SFT 检查点带着 special_tokens（排在字符后面）。"""
    if spec["type"] == "char":
        from kata.tokenizer import CharTokenizer

        return CharTokenizer(spec["chars"], special_tokens=spec.get("special_tokens") or ())
    vocab = {int(i): bytes.fromhex(h) for i, h in spec["vocab"].items()}
    merges = [(bytes.fromhex(a), bytes.fromhex(b)) for a, b in spec["merges"]]
    return resolve("07_tokenizer", "solutions").BPETokenizer(vocab, merges, spec["special_tokens"])


def token_bytes_of(tok, spec: dict) -> torch.Tensor:
    """每个 token 解码成 UTF-8 的字节数（bpb 的分母）。"""
    if spec["type"] == "char":
        return torch.tensor([len(c.encode("utf-8")) for c in spec["chars"]])
    n = max(int(i) for i in spec["vocab"]) + 1
    tb = torch.zeros(n, dtype=torch.long)
    for i, h in spec["vocab"].items():
        tb[int(i)] = len(h) // 2
    return tb


def encode(tok, text: str) -> torch.Tensor:
    if hasattr(tok, "encode_tensor"):
        return tok.encode_tensor(text)
    return torch.tensor(tok.encode(text), dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# 评估：压缩器、完形填空、样本
# ---------------------------------------------------------------------------------------------

def compressor_bpb(data: bytes) -> dict:
    """Python 自带压缩器在最强设置下的 bits per byte。"""
    n = max(len(data), 1)
    return {"zlib -9": 8 * len(zlib.compress(data, 9)) / n,
            "bz2 -9": 8 * len(bz2.compress(data, 9)) / n,
            "xz -9e": 8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / n}


@torch.no_grad()
def _logprob_of(model, ids: list[int], n_last: int, device) -> float:
    x = torch.tensor([ids], device=device)
    logits = _logits(model(x))[0, :-1].float().log_softmax(-1)
    tgt = x[0, 1:]
    lp = logits.gather(-1, tgt[:, None])[:, 0]
    return float(lp[-n_last:].sum())


def cloze(model, tok, train_text: str, val_text: str, *, n_items: int = 200, k: int = 4, context: int = 64,
          seed: int = 0, device="cpu") -> dict:
    """从 held-out 文本里挖掉一个词，模型按对数似然在真词和 k 个同长度的干扰词（来自训练文本的词表）之间选。"""
    rng = random.Random(seed)
    by_len: dict[int, list[str]] = {}
    for w in sorted(set(re.findall(r"[A-Za-z]{3,}", train_text))):
        by_len.setdefault(len(w), []).append(w)
    spots = [m for m in re.finditer(r"(?<=[ \n])[A-Za-z]{3,}", val_text) if m.start() >= context
             and len(by_len.get(len(m.group()), [])) > k]
    rng.shuffle(spots)
    was = model.training
    model.eval()
    correct = 0
    items = []
    for m in spots[:n_items]:
        word = m.group()
        ctx = val_text[m.start() - context:m.start()]
        pool = [w for w in by_len[len(word)] if w != word]
        cands = [word] + rng.sample(pool, k)
        scores = []
        ctx_ids = tok.encode(ctx)
        for c in cands:
            c_ids = tok.encode(ctx + c)
            n_new = max(len(c_ids) - len(ctx_ids), 1) if c_ids[:len(ctx_ids)] == ctx_ids else len(tok.encode(c))
            scores.append(_logprob_of(model, c_ids, n_new, device))
        ok = max(range(len(cands)), key=lambda i: scores[i]) == 0
        correct += ok
        if len(items) < 5:
            items.append({"context": ctx[-40:], "answer": word, "candidates": cands, "correct": bool(ok)})
    model.train(was)
    n = min(n_items, len(spots))
    return {"n": n, "k": k, "accuracy": correct / max(n, 1), "chance": 1 / (k + 1), "examples": items}


def _logits(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    return out.logits


def _pick(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, gen: torch.Generator) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = (probs.cumsum(-1) - probs) >= top_p
        drop[0] = False
        logits[order[drop]] = float("-inf")
    return int(torch.multinomial(logits.softmax(-1), 1, generator=gen))


@torch.no_grad()
def stream(model, tok, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 0,
           top_p: float = 1.0, seed: int = 0, use_cache: bool = True, device="cpu", on_text=None,
           eos_id: Optional[int] = None, window: Optional[int] = None) -> str:
    """逐 token 生成；use_cache=True 时第一步喂整段提示词，之后每步只喂 1 个新 token（KV cache）。

    on_text(新增的文字) 在每个 token 之后被调用（流式打印）。返回生成的文字（不含提示词）。
    window：模型训练时的序列长度。RoPE 没见过更远的位置，所以上下文满了以后只保留最近 window//2 个 token、
    清空 cache 重新喂一遍（同 nanoGPT 把上下文裁到 block_size）；None = 不裁。
    """
    was = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    ids = tok.encode(prompt) if prompt else [0]
    prompt_len = len(ids)
    max_pos = getattr(getattr(model, "config", None), "max_position_embeddings", 1 << 30)
    past, shown = None, ""
    try:
        for _ in range(max_new_tokens):
            if window is None and len(ids) >= max_pos:
                break
            if window is not None and past is not None and past[0][0].shape[1] + 1 > window:
                past = None                                 # 上下文满了：从最近的一半重新开始
            if use_cache and past is not None:
                out = model(torch.tensor([ids[-1:]], device=device), past_key_values=past, use_cache=True)
            else:
                ctx = ids if window is None else ids[-(window // 2 if use_cache and len(ids) > window else window):]
                out = model(torch.tensor([ctx], device=device), use_cache=use_cache)
            past = out.past_key_values if use_cache else None
            nxt = _pick(_logits(out)[0, -1], temperature, top_k, top_p, gen)
            ids.append(nxt)
            if eos_id is not None and nxt == eos_id:
                break
            if on_text is not None:
                text = tok.decode(ids[prompt_len:])
                if text.startswith(shown) and not text.endswith("\ufffd"):   # 多字节字符还没凑齐时先不打印
                    on_text(text[len(shown):])
                    shown = text
        text = tok.decode(ids[prompt_len:])
        if on_text is not None and text.startswith(shown) and len(text) > len(shown):
            on_text(text[len(shown):])
        return text
    finally:
        model.train(was)


# ---------------------------------------------------------------------------------------------
# 命令行
# ---------------------------------------------------------------------------------------------

def _config_fields():
    for f in dataclasses.fields(MiniMindConfig):
        if f.name in ("rope_scaling",):
            continue
        yield f


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y"):
        return True
    if v.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"应为 true/false，实际 {v!r}")


def build_parser() -> argparse.ArgumentParser:
    from kata.experiment import _chinese_parser

    p = _chinese_parser(prog="python -m kata train", description="从零预训练你自己的 MiniMind（模块 09）。",
                        allow_abbrev=False, epilog="预设：\n" + "\n".join(f"  {k}: {v['note']}" for k, v in PRESETS.items()))
    p.add_argument("--impl", default="exercises", choices=("exercises", "solutions"),
                   help="用谁的代码（默认你的；没写完的部件自动用参考实现）")
    p.add_argument("--preset", default="cpu", choices=tuple(PRESETS))
    p.add_argument("--data", default="shakespeare", choices=("shakespeare", "tinystories"))
    p.add_argument("--size-mb", type=float, default=None, help="TinyStories 子集大小（MiB）")
    p.add_argument("--data-file", default=None)
    p.add_argument("--tokenizer", default="char", choices=("char", "bpe"))
    p.add_argument("--bpe-vocab", type=int, default=512, help="--tokenizer bpe 时的词表大小")
    for name in ("steps", "batch_size", "seq_len", "warmup", "eval_every", "eval_batches", "ckpt_every",
                 "sample_tokens"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None)
    for name in ("lr", "min_lr_ratio", "grad_clip"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=float, default=None)
    p.add_argument("--out", default=str(REPO_ROOT / "runs" / "train"), help="输出目录")
    p.add_argument("--resume", default=None, help="从这个 resume.pth 接着训练")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    p.add_argument("--threads", type=int, default=None, help="torch 线程数（默认：CPU 核数 / 进程数）")
    p.add_argument("--stop-after", type=int, default=None,
                   help="训练到第 N 步就存盘退出（像 Ctrl-C 一样，之后用 --resume 接着训练；学习率按 --steps 排）")
    p.add_argument("--cloze-items", type=int, default=200, help="完形填空的题数")
    p.add_argument("--no-final-eval", action="store_true", help="跳过结尾的完整评估（压缩器、完形填空、样本）")
    p.add_argument("--quiet", action="store_true", help="不显示进度条")
    g = p.add_argument_group("MiniMindConfig 字段（覆盖预设）")
    for f in _config_fields():
        typ = {"int": int, "float": float, "bool": _bool}.get(type(f.default).__name__, int)
        if f.name == "intermediate_size":
            typ = int
        g.add_argument(f"--{f.name}", type=typ, default=None)
    return p


def _settings(args) -> tuple[dict, dict]:
    preset = PRESETS[args.preset]
    model_kw = dict(preset["model"])
    for f in _config_fields():
        v = getattr(args, f.name)
        if v is not None:
            model_kw[f.name] = v
    train = {**TRAIN_DEFAULTS, **preset["train"]}
    for k in list(train):
        v = getattr(args, k, None)
        if v is not None:
            train[k] = v
    for k in ("steps", "batch_size", "seq_len", "eval_every", "ckpt_every"):
        if train[k] < 1:
            raise ValueError(f"--{k.replace('_', '-')} 应为正整数，实际 {train[k]}")
    train["warmup"] = min(max(train["warmup"], 0), train["steps"])   # 步数很少时 warmup 不能比总步数长
    return model_kw, train


def _device(requested: str, dist_device: str) -> str:
    if requested == "auto":
        if dist_device != "cpu":
            return dist_device
        return "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu"
    return requested


def _atomic_torch_save(obj, path: Path) -> None:
    import io

    from kata.experiment import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _plot(history: dict, path: Path, title: str) -> None:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kata.experiment import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["step"], history["train_loss"], lw=0.8, alpha=0.7, label="train")
    if history["val_step"]:
        ax.plot(history["val_step"], history["val_loss"], "o-", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model_kw, train = _settings(args)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return run_distributed(args.impl, lambda parts, rank, world, dist_device, say:
                           _train(args, model_kw, train, parts, rank, world, dist_device, say))


def run_distributed(impl: str, job: Callable[..., int]) -> int:
    """kata train 与 kata sft 共用的外壳：建进程组（你的 09 setup_distributed；单进程时 world = 1），
    ``job(parts, rank, world, dist_device, say)`` 返回退出码，最后拆掉进程组。``say`` 只在 rank 0 打印。"""
    # 进程组建立之前还不知道自己是不是 rank 0：先看 torchrun 设的 RANK
    main_guess = os.environ.get("RANK", "0") == "0"
    say = (lambda m: print(m, flush=True)) if main_guess else (lambda m: None)
    parts = Parts(impl, say)
    (rank, world, dist_device), _ = parts.call("09_pretrain", "setup_distributed")
    code = 0
    try:
        code = job(parts, rank, world, dist_device, say if rank == 0 else (lambda m: None))
        if world > 1 and code != 130:
            # rank 0 最后还要在验证集上评估、写文件；其余 rank 先在这里等它，再一起拆掉进程组——
            # 一个 rank 先 destroy_process_group 而另一个还在用 gloo 时，先走的那个偶尔会 abort（机器忙时 CI 里见过）。
            # Ctrl-C（130）时不等：别的 rank 可能已经不在了。
            import torch.distributed as dist
            if dist.is_available() and dist.is_initialized():
                dist.barrier()
    finally:
        parts.say = lambda m: None
        try:
            parts.call("09_pretrain", "cleanup_distributed")
        except Exception:  # noqa: BLE001
            pass
    if world > 1:
        # torchrun 下的每个 rank：结果已经原子写完、进程组已拆掉。直接结束进程，跳过解释器的收尾——
        # gloo 的后台线程在 C++ 静态对象析构时偶尔触发 std::terminate（CI 里见过 “terminate called without an
        # active exception”，torchrun 于是把整次运行报成失败）。
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _train(args, model_kw, train, parts, rank, world, dist_device, say) -> int:
    from torch.nn.parallel import DistributedDataParallel

    from kata.data import load_corpus
    from kata.experiment import atomic_write_json, environment_info, to_jsonable

    main_proc = rank == 0
    device = _device(args.device, dist_device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    out = Path(args.out)
    from kata.data import DataError

    try:
        corpus = load_corpus(args.data, size_mb=args.size_mb, data_file=args.data_file)
    except (DataError, ValueError, OSError) as exc:
        say(f"拿不到训练数据：{str(exc).splitlines()[0]}（设置 KATA_DATA_DIR 指向放着 tinyshakespeare.txt 的文件夹，或传 --data-file）")
        return 2
    text = corpus.text
    n_train_chars = int(len(text) * 0.9)          # 前 90% 训练、后 10% 验证（同 nanoGPT）
    train_text, val_text = text[:n_train_chars], text[n_train_chars:]
    tok, tok_spec = build_tokenizer(args.tokenizer, train_text if args.tokenizer == "bpe" else text,
                                    args.bpe_vocab, parts, say)
    train_ids, val_ids = encode(tok, train_text), encode(tok, val_text)
    token_bytes = token_bytes_of(tok, tok_spec)
    vocab = int(token_bytes.numel())
    model_kw.setdefault("vocab_size", vocab)
    if model_kw["vocab_size"] < vocab:
        say(f"--vocab_size {model_kw['vocab_size']} 小于分词器的词表 {vocab}：改用 {vocab}")
        model_kw["vocab_size"] = vocab
    model_kw.setdefault("max_position_embeddings", max(train["seq_len"], 2048))
    config = MiniMindConfig(**model_kw)

    torch.manual_seed(args.seed)
    model_cls = parts.get("06_transformer_block", "MiniMindForCausalLM")
    try:
        model = model_cls(config)
        model(torch.zeros(1, 2, dtype=torch.long))
    except NotImplementedError as exc:
        torch.manual_seed(args.seed)
        model = parts.reference("06_transformer_block", "MiniMindForCausalLM", exc)(config)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())

    (train_ds, _) = parts.call("09_pretrain", "PretrainDataset", train_ids, train["seq_len"])
    ds_cls = type(train_ds)
    val_ds = ds_cls(val_ids, train["seq_len"])
    AdamW = parts.get("08_training_loop", "AdamW")
    try:                                   # 先在一个小参数上试一步：桩可能在 __init__ 或 step 里才抛
        probe = torch.zeros(2, requires_grad=True)
        probe.grad = torch.ones(2)
        AdamW([probe], lr=1e-3).step()
    except NotImplementedError as exc:
        AdamW = parts.reference("08_training_loop", "AdamW", exc)
    opt = AdamW(model.parameters(), lr=train["lr"], betas=(0.9, 0.95), weight_decay=0.1)
    net = DistributedDataParallel(model) if world > 1 else model

    steps, B, T = train["steps"], train["batch_size"], train["seq_len"]
    start = 0
    history = {"step": [], "train_loss": [], "lr": [], "val_step": [], "val_loss": [], "val_bpb": [],
               "val_time": []}   # val_time：到这次评估为止的训练时间（秒，不含评估和采样本身）
    resume_path, model_path = out / "resume.pth", out / "model.pth"
    if args.resume:
        ckpt, _ = parts.call("08_training_loop", "load_checkpoint", args.resume, model, opt)
        start = int(ckpt["step"])
        history = json.loads(ckpt.get("history", json.dumps(history)))
        say(f"从 {args.resume} 的第 {start} 步接着训练")
    if main_proc:
        _atomic_write_text(out / "config.json", json.dumps(config.to_dict(), ensure_ascii=False, indent=2))
        _atomic_write_text(out / "tokenizer.json", json.dumps(tok_spec, ensure_ascii=False))
        _atomic_write_text(out / "train.json", json.dumps({"seq_len": T, **train, "preset": args.preset}))
    say(f"模型 {n_params / 1e6:.2f}M 参数（{_shape(config)}），{corpus.name} {len(text):,} 字符 → "
        f"{len(train_ids):,} / {len(val_ids):,} 个 token（训练 / 验证），{args.tokenizer} 分词，词表 {vocab}；"
        f"{world} 个进程 × batch {B} × seq {T}，{steps} 步，设备 {device}，{torch.get_num_threads()} 线程")

    def save(step_done: int) -> None:
        if not main_proc:
            return
        hist = json.dumps(history)
        parts.call("08_training_loop", "save_checkpoint", resume_path, model, opt, step_done, history=hist,
                   config=json.dumps(config.to_dict()))
        _atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, model_path)

    def run_eval(max_batches):
        res, _ = parts.call("09_pretrain", "evaluate", model, val_ds, batch_size=32, token_bytes=token_bytes,
                            max_batches=max_batches)
        return res

    lr_fn = parts.get("08_training_loop", "cosine_lr")
    min_lr = train["lr"] * train["min_lr_ratio"]
    bar = None
    if main_proc and not args.quiet:
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=start, unit="step", dynamic_ncols=True, file=sys.stdout)
    t0 = time.perf_counter()
    tokens_seen = 0
    eval_seconds = 0.0
    completed = start
    try:
        for step in range(start, steps):
            try:
                lr = lr_fn(step, steps, train["lr"], train["warmup"], min_lr)
            except NotImplementedError as exc:
                lr_fn = parts.reference("08_training_loop", "cosine_lr", exc)
                lr = lr_fn(step, steps, train["lr"], train["warmup"], min_lr)
            (x, y), _ = parts.call("09_pretrain", "rank_batch", train_ds, step, B, rank, world, args.seed)
            x, y = x.to(device), y.to(device)
            res, _ = parts.call("08_training_loop", "train_step", net, (x, y), opt, max_grad_norm=train["grad_clip"],
                                lr=lr)
            loss, _ = parts.call("09_pretrain", "all_reduce_mean", res["loss"])
            if not math.isfinite(loss):
                say(f"第 {step} 步 loss = {loss}：训练发散了（学习率太大？），停止。")
                save(step)
                return 1
            tokens_seen += B * T * world
            history["step"].append(step)
            history["train_loss"].append(loss)
            history["lr"].append(lr)
            completed = step + 1
            if bar is not None:
                rate = tokens_seen / max(time.perf_counter() - t0 - eval_seconds, 1e-9)
                bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {rate:,.0f} tok/s", refresh=False)
                bar.update(1)
            done = step + 1
            if done % train["eval_every"] == 0 or done == steps:
                t_ev = time.perf_counter()
                history["val_time"].append(t_ev - t0 - eval_seconds)
                ev = run_eval(train["eval_batches"])
                history["val_step"].append(done)
                history["val_loss"].append(ev["loss"])
                history["val_bpb"].append(ev["bpb"])
                if main_proc:
                    sample = stream(model, tok, "\n", max_new_tokens=min(80, train["sample_tokens"]), seed=0,
                                    device=device, window=T).replace("\n", " ⏎ ")
                    msg = f"第 {done} 步：val loss {ev['loss']:.4f}，bpb {ev['bpb']:.3f} ｜ 样本：{sample[:80]}"
                    (bar.write(msg) if bar is not None else say(msg))
                eval_seconds += time.perf_counter() - t_ev
            if done % train["ckpt_every"] == 0 and done != steps:
                save(done)
            if args.stop_after is not None and done >= args.stop_after and done != steps:
                if bar is not None:
                    bar.close()
                save(done)
                say(f"按 --stop-after 在第 {done} 步停下：checkpoint 在 {resume_path}（用 --resume {resume_path} 接着训练）。")
                return 0
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        try:
            save(completed)
        except BaseException:  # noqa: BLE001
            pass
        if main_proc:
            print(INTERRUPTED.format(path=resume_path), flush=True)
        return 130
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    train_seconds = wall - eval_seconds
    save(steps)
    final = run_eval(None)              # 所有进程都要参加（evaluate 里有 all_reduce），之后只有 rank 0 往下走
    if not main_proc:
        return 0
    results = {"config": config.to_dict(), "train": train, "preset": args.preset, "impl": args.impl,
               "fallbacks": parts.fallbacks, "tokenizer": args.tokenizer, "vocab": vocab, "params": n_params,
               "world_size": world, "data": corpus.info(), "seed": args.seed, "wall_seconds": wall,
               "train_seconds": train_seconds, "tokens_per_second": tokens_seen / max(train_seconds, 1e-9), "resumed_from": args.resume, "start_step": start,
               "final_val": final, "history": history, "environment": environment_info(device)}
    print(f"\n训练完成：{steps - start} 步，{wall:.0f} 秒（其中训练 {train_seconds:.0f} 秒），"
          f"{results['tokens_per_second']:,.0f} tokens/s")
    print(f"held-out（整个验证集 {final['tokens']:,} 个 token、{final['bytes']:,} 字节）：loss {final['loss']:.4f}，"
          f"bits per byte {final['bpb']:.3f}")
    if not args.no_final_eval:
        comp = compressor_bpb(val_text.encode("utf-8"))
        results["compressors_bpb"] = comp
        rows = [("你的模型", final["bpb"])] + list(comp.items())
        print("同一段 held-out 字节上的 bits per byte（越低越好）：")
        for name, v in sorted(rows, key=lambda r: r[1]):
            print(f"  {name:<10} {v:.3f}")
        print(f"→ {_compressor_verdict(final['bpb'], comp)}")
        cz = cloze(model, tok, train_text, val_text, n_items=args.cloze_items, seed=args.seed, device=device)
        results["cloze"] = cz
        print(f"完形填空（held-out 里挖掉一个词，在真词和 {cz['k']} 个同长度的干扰词里按对数似然选）："
              f"{cz['n']} 题，准确率 {cz['accuracy']:.1%}，随机猜 {cz['chance']:.1%}")
        samples = {}
        for s in (0, 1, 2):
            samples[str(s)] = stream(model, tok, "ROMEO:" if args.data == "shakespeare" else "Once upon a time",
                                     max_new_tokens=train["sample_tokens"], seed=s, device=device, window=T)
        results["samples"] = samples
        print("样本（seed 0）：\n" + samples["0"])
    _plot(history, out / "loss.png", f"kata train · {args.preset} · {n_params / 1e6:.2f}M params")
    atomic_write_json(out / "results.json", to_jsonable(results))
    print(f"结果：{out / 'results.json'}、{out / 'loss.png'}；权重：{model_path}（生成："
          f"python -m kata.generate --ckpt {model_path} --prompt \"ROMEO:\"）")
    return 0


def _compressor_verdict(bpb: float, comp: dict) -> str:
    """模型的 bpb 落在通用压缩器之间的哪里（一句话，由数字算出）。"""
    beaten = sorted((n for n, v in comp.items() if bpb < v), key=comp.get)
    worse = sorted((n for n, v in comp.items() if bpb >= v), key=comp.get)
    if not worse:
        best = beaten[0]
        return (f"你的模型比这 {len(comp)} 个压缩器都好：比最好的 {best}（{comp[best]:.3f}）"
                f"每字节还少 {comp[best] - bpb:.3f} bit。")
    if not beaten:
        return f"你的模型还不如最弱的 {worse[-1]}（{comp[worse[-1]]:.3f}）：它还没学到多少（多训练几步，或检查 loss 是否在降）。"
    return (f"你的模型比 {'、'.join(beaten)} 好，但还不如 {'、'.join(worse)}"
            f"（{worse[0]} 是 {comp[worse[0]]:.3f}）。")


def _shape(c: MiniMindConfig) -> str:
    return (f"hidden {c.hidden_size}、{c.num_hidden_layers} 层、{c.num_attention_heads}/{c.num_key_value_heads} 头、"
            f"FFN {c.ffn_hidden_size}")


def _atomic_write_text(path: Path, text: str) -> None:
    from kata.experiment import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("已中断。", flush=True)
        sys.exit(130)
