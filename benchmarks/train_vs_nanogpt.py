"""`kata train`（参考实现）与一个 nanoGPT 式基线，在同一台机器、同样线程、同一份字符级 TinyShakespeare 上各训练一次。

    python benchmarks/train_vs_nanogpt.py [--steps 2000] [--threads 2] [--eval-every 250]

基线（本仓库自己写的 GPT-2 块）：LayerNorm、可学习的位置嵌入、GELU MLP（4×）、融合注意力（F.scaled_dot_product_attention）、
词嵌入与输出层共享；nanoGPT 的 CPU 配方：4 层、4 头、128 维、block 64、batch 12、AdamW(β2 = 0.99, wd 0.1)、
lr 1e-3 余弦到 1e-4、warmup 100、无 dropout、梯度裁剪 1.0。
kata：python -m kata.train 的默认预设 cpu（同尺寸：4 层、4 头、128 维、block 64、batch 12），--impl solutions。
两边都在**整个**验证集（后 10%，不重叠的 64 字符块）上评估，评估时间不计入训练时间。
公开的参照：nanoGPT 的 README 说这个配方在 CPU 上约 3 分钟到 val ≈ 1.88。
只打印数字，不进测试。
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

TARGET = 1.8857


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab, d=128, layers=4, heads=4, block=64):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.wte.weight = self.head.weight
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith(("proj.weight", "out.weight")):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    @staticmethod
    def _init(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x))


@torch.no_grad()
def full_val_loss(model, val, block=64, batch=64):
    model.eval()
    n = (len(val) - 1) // block
    x = val[: n * block].view(n, block)
    y = val[1: n * block + 1].view(n, block)
    tot = 0.0
    for i in range(0, n, batch):
        logits = model(x[i:i + batch])
        tot += float(F.cross_entropy(logits.reshape(-1, logits.size(-1)), y[i:i + batch].reshape(-1), reduction="sum"))
    model.train()
    return tot / (n * block)


def run_baseline(corpus, steps, eval_every, seed):
    torch.manual_seed(seed)
    train, val = corpus.train_ids, corpus.val_ids
    model = GPT(corpus.tokenizer.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.1)
    g = torch.Generator().manual_seed(seed)
    curve, t_train = [], 0.0
    for it in range(steps):
        lr = 1e-3 * (it + 1) / 100 if it < 100 else 1e-4 + 0.5 * (1 + math.cos(math.pi * (it - 100) / (steps - 100))) * 9e-4
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        ix = torch.randint(len(train) - 64, (12,), generator=g)
        x = torch.stack([train[i:i + 64] for i in ix])
        y = torch.stack([train[i + 1:i + 65] for i in ix])
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        t_train += time.perf_counter() - t0
        if (it + 1) % eval_every == 0 or it + 1 == steps:
            curve.append((it + 1, t_train, full_val_loss(model, val)))
            print(f"  nanoGPT 式基线 第 {it + 1} 步：val {curve[-1][2]:.4f}，训练 {t_train:.0f} s", flush=True)
    return {"curve": curve, "train_seconds": t_train, "tokens_per_second": steps * 12 * 64 / t_train,
            "params": sum(p.numel() for p in model.parameters())}


def run_kata(steps, eval_every, seed, threads):
    from kata import train as kt

    out = Path(tempfile.mkdtemp(prefix="kata_bench_"))
    code = kt.main(["--impl", "solutions", "--preset", "cpu", "--steps", str(steps), "--eval-every", str(eval_every),
                    "--eval-batches", "100000", "--out", str(out), "--seed", str(seed), "--threads", str(threads),
                    "--no-final-eval", "--quiet", "--sample-tokens", "1", "--ckpt-every", "100000"])
    if code != 0:
        raise SystemExit(f"kata train 失败（退出码 {code}）")
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    h = res["history"]
    curve = list(zip(h["val_step"], h["val_time"], h["val_loss"]))
    for s, t, v in curve:
        print(f"  kata train 第 {s} 步：val {v:.4f}，训练 {t:.0f} s")
    return {"curve": curve, "train_seconds": res["train_seconds"], "tokens_per_second": res["tokens_per_second"],
            "params": res["params"]}


def time_to(curve, target):
    prev = None
    for s, t, v in curve:
        if v <= target:
            if prev is None:
                return t
            ps, pt, pv = prev      # 在两次评估之间按 loss 线性插值
            return pt + (t - pt) * (pv - target) / max(pv - v, 1e-12)
        prev = (s, t, v)
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from kata.data import load_corpus

    corpus = load_corpus("shakespeare")
    print(f"基线（{args.steps} 步）：")
    base = run_baseline(corpus, args.steps, args.eval_every, args.seed)
    print(f"kata train（{args.steps} 步）：")
    kata = run_kata(args.steps, args.eval_every, args.seed, args.threads)
    print(f"\n{'':16}{'参数':>10}{'tokens/s':>12}{'最终 val':>10}{f'到 {TARGET} 的时间':>16}")
    for name, r in (("nanoGPT 式基线", base), ("kata train", kata)):
        t = time_to(r["curve"], TARGET)
        print(f"{name:<14}{r['params']:>12,}{r['tokens_per_second']:>12,.0f}{r['curve'][-1][2]:>10.4f}"
              f"{(f'{t:.0f} s' if t is not None else '没到'):>16}")
    tb, tk = time_to(base["curve"], TARGET), time_to(kata["curve"], TARGET)
    ratio = kata["tokens_per_second"] / base["tokens_per_second"]
    print(f"每步吞吐：kata / 基线 = {ratio:.2f}（目标 ≥ 1）")
    if tb is not None and tk is not None:
        print(f"到 val {TARGET} 的训练时间：kata / 基线 = {tk / tb:.2f}（目标 ≤ 0.4）")
    else:
        print(f"到 val {TARGET}：{'基线没到' if tb is None else ''}{'kata 没到' if tk is None else ''}（步数太少？）")
    return 0


if __name__ == "__main__":
    sys.exit(main())
