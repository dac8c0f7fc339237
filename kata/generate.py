"""从 checkpoint 流式生成（KV cache）：python -m kata.generate --ckpt runs/train/model.pth --prompt "ROMEO:"

--ckpt 可以是 kata.train 写的 model.pth（普通 state_dict，minimind 的键名）或 resume.pth（模块 08 的格式），
同目录下要有 config.json 与 tokenizer.json（kata.train 会写）。半精度（fp16 / bf16）的 state_dict
（minimind 的 trainer 就这样存）会先转成 float32。模型代码用你的 MiniMindForCausalLM（--impl solutions 用参考实现）。
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from kata.config import MiniMindConfig


def load_model(ckpt, impl: str = "exercises", device: str = "cpu"):
    """(model, tokenizer, config)。state_dict 用 torch.load(weights_only=True) 读。"""
    from kata.impl import resolve
    from kata.train import tokenizer_from_spec

    ckpt = Path(ckpt)
    if not ckpt.is_file():
        raise FileNotFoundError(f"找不到 checkpoint：{ckpt}")
    folder = ckpt.parent
    for need in ("config.json", "tokenizer.json"):
        if not (folder / need).is_file():
            raise FileNotFoundError(f"{folder} 里没有 {need}（kata.train 会把它和 model.pth 写在一起）")
    config = MiniMindConfig(**json.loads((folder / "config.json").read_text(encoding="utf-8")))
    tok = tokenizer_from_spec(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")))
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]                                   # resume 文件
    sd = {k.removeprefix("module."): (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    cls = resolve("06_transformer_block", impl).MiniMindForCausalLM
    try:
        model = cls(config)
    except NotImplementedError as exc:
        print(f"你的 MiniMindForCausalLM 还没实现（{str(exc).splitlines()[0]}）：这次用参考实现。", file=sys.stderr)
        model = resolve("06_transformer_block", "solutions").MiniMindForCausalLM(config)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "model.embed_tokens.weight")]
    if missing or unexpected:
        raise ValueError(f"checkpoint 的键与模型对不上：缺少 {missing[:5]}，多出 {unexpected[:5]}")
    return model.to(device).eval(), tok, config


def main(argv: Optional[Sequence[str]] = None) -> int:
    from kata.train import stream

    p = argparse.ArgumentParser(prog="python -m kata.generate", description="从 checkpoint 流式生成文本（KV cache）。")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="不用 KV cache（每步把整段序列重算一遍，慢）")
    p.add_argument("--window", type=int, default=None,
                   help="上下文窗口（默认取训练时的 seq_len，见同目录的 train.json；0 = 不裁）")
    p.add_argument("--impl", default="exercises", choices=("exercises", "solutions"))
    args = p.parse_args(argv)
    try:
        model, tok, _ = load_model(args.ckpt, args.impl)
    except (FileNotFoundError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    sys.stdout.write(args.prompt)
    t0 = time.perf_counter()
    train_json = Path(args.ckpt).parent / "train.json"
    window = json.loads(train_json.read_text(encoding="utf-8")).get("seq_len") if train_json.is_file() else None
    if args.window is not None:
        window = args.window or None
    text = stream(model, tok, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache, window=window,
                  on_text=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    dt = time.perf_counter() - t0
    print(f"\n（{len(tok.encode(text)) if text else 0} 个 token，{dt:.2f} 秒）", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\n已中断。", flush=True)
        sys.exit(130)
