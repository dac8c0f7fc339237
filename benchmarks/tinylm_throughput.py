"""tinylm 训练吞吐 vs 一个同尺寸的普通 nanoGPT 式模型（CONVENTIONS §6：tokens/s 应在 1.5× 以内）。

    python benchmarks/tinylm_throughput.py            # 默认：dim 128、4 层、4 头、seq 64、batch 16
    python benchmarks/tinylm_throughput.py --steps 30 --repeats 3

(a) 用 kata.tinylm 从 solutions/ 搭的默认小模型（RMSNorm、RoPE、SwiGLU、手写注意力），用 train_lm 训练；
(b) 本文件里写的 nanoGPT 式模型（LayerNorm、可学习位置、GELU MLP、F.scaled_dot_product_attention），
    用一个最朴素的训练循环（同样的 AdamW、梯度裁剪、取 batch）。
两者交替运行 repeats 次（机器忙时两边受到的干扰相近），各取 tokens/s 的中位数，打印比值 (b)/(a)。
数据用确定性的合成语料（不需要下载）；线程数保持 torch 的默认值。
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kata.data import load_corpus  # noqa: E402
from kata.tinylm import TinyLMConfig, build_tiny_lm, count_parameters, train_lm  # noqa: E402


class NanoGPTBlock(nn.Module):
    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln_1 = nn.LayerNorm(dim, bias=False)
        self.c_attn = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_proj = nn.Linear(dim, dim, bias=False)
        self.ln_2 = nn.LayerNorm(dim, bias=False)
        self.c_fc = nn.Linear(dim, 4 * dim, bias=False)
        self.mlp_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        bsz, seq_len, dim = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(dim, dim=2)
        q, k, v = (t.view(bsz, seq_len, self.n_heads, dim // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(bsz, seq_len, dim))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, vocab_size: int, dim: int, n_layers: int, n_heads: int, block_size: int):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, dim)
        self.wpe = nn.Embedding(block_size, dim)
        self.blocks = nn.ModuleList([NanoGPTBlock(dim, n_heads) for _ in range(n_layers)])
        self.ln_f = nn.LayerNorm(dim, bias=False)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe.weight[: idx.size(1)]
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def nanogpt_tokens_per_sec(model, corpus, steps, batch_size, seq_len, seed) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y = corpus.get_batch("train", batch_size, seq_len, generator=generator)
        loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return steps * batch_size * seq_len / (time.perf_counter() - t0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=30, help="每次计时的训练步数")
    parser.add_argument("--warmup", type=int, default=5, help="计时前先跑的步数")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads 的值（默认不改，用 torch 的默认线程数）")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    corpus = load_corpus("synthetic")
    vocab = corpus.tokenizer.vocab_size
    torch.manual_seed(0)
    cfg = TinyLMConfig(vocab_size=vocab, dim=args.dim, n_layers=args.n_layers, n_heads=args.n_heads,
                       max_seq_len=args.seq_len)
    tiny, provenance = build_tiny_lm(cfg, impl="solutions")
    nano = NanoGPT(vocab, args.dim, args.n_layers, args.n_heads, args.seq_len)
    print(f"torch {torch.__version__}，线程数 {torch.get_num_threads()}，"
          f"dim {args.dim}，{args.n_layers} 层，{args.n_heads} 头，seq {args.seq_len}，batch {args.batch_size}")
    print(f"(a) tinylm（solutions）参数量 {count_parameters(tiny):,}；(b) nanoGPT 式参数量 {count_parameters(nano):,}")

    common = dict(batch_size=args.batch_size, seq_len=args.seq_len)
    train_lm(tiny, corpus, steps=args.warmup, progress=False, eval_iters=1, **common)
    nanogpt_tokens_per_sec(nano, corpus, args.warmup, seed=0, **common)

    tiny_tps, nano_tps = [], []
    for r in range(args.repeats):
        res = train_lm(tiny, corpus, steps=args.steps, progress=False, eval_iters=1, seed=r, **common)
        tiny_tps.append(res.tokens_per_sec)
        nano_tps.append(nanogpt_tokens_per_sec(nano, corpus, args.steps, seed=r, **common))
        print(f"  第 {r + 1} 轮：tinylm {tiny_tps[-1]:,.0f} tokens/s，nanoGPT {nano_tps[-1]:,.0f} tokens/s")

    a, b = statistics.median(tiny_tps), statistics.median(nano_tps)
    ratio = b / a
    print(f"中位数：(a) tinylm {a:,.0f} tokens/s；(b) nanoGPT 式 {b:,.0f} tokens/s；"
          f"nanoGPT / tinylm = {ratio:.2f}×（预算 ≤ 1.5×：{'达标' if ratio <= 1.5 else '超出'}）")
    return 0 if math.isfinite(ratio) else 1


if __name__ == "__main__":
    sys.exit(main())
