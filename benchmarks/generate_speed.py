"""生成速度：KV cache vs 不用 cache，256 个新 token（目标：≥ 5×）。不进测试，只打印数字。

    python benchmarks/generate_speed.py [--impl solutions] [--new-tokens 256] [--hidden 128 --layers 4]

两种方式都走 kata.train.stream（与 python -m kata.generate 同一条路径），贪心解码，先确认两者生成的 token 相同。
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from kata.config import MiniMindConfig  # noqa: E402
from kata.data import CharTokenizer  # noqa: E402
from kata.impl import resolve  # noqa: E402
from kata.train import stream  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--impl", default="solutions", choices=("exercises", "solutions"))
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = CharTokenizer([chr(c) for c in range(32, 127)] + ["\n"])
    cfg = MiniMindConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, vocab_size=tok.vocab_size, max_position_embeddings=2048)
    torch.manual_seed(0)
    model = resolve("06_transformer_block", args.impl).MiniMindForCausalLM(cfg).eval()
    prompt = "ROMEO:\nWhat light"
    times = {}
    texts = {}
    for use_cache in (True, False):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.process_time()
            texts[use_cache] = stream(model, tok, prompt, max_new_tokens=args.new_tokens, temperature=0,
                                      use_cache=use_cache)
            best = min(best, time.process_time() - t0)
        times[use_cache] = best
    same = texts[True] == texts[False]
    n = args.new_tokens
    print(f"模型 {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M 参数（hidden {args.hidden}、{args.layers} 层），"
          f"提示 {len(prompt)} 个 token，生成 {n} 个，{args.threads} 线程；CPU 时间取 {args.repeats} 次里最好的一次")
    print(f"  KV cache    {times[True]:.3f} s CPU  {n / times[True]:8.1f} tokens/s")
    print(f"  不用 cache   {times[False]:.3f} s CPU  {n / times[False]:8.1f} tokens/s")
    print(f"  加速 {times[False] / times[True]:.1f}×（目标 ≥ 5×）；两种方式生成的文本{'相同' if same else '不同！'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
