"""和你微调过的模型聊天（模块 10）：python -m kata.chat --ckpt runs/sft/model.pth

从标准输入一行一行读你的话（终端里就是交互式对话；也可以用管道喂进去），每一轮：
把整段对话（可选的系统提示 + 之前的每一轮 + 这句话）用模块 10 的 apply_chat_template 套上模板、加生成提示，
流式打印模型的回复，生成到 <|im_end|> 就停；回复再放回对话里，下一轮接着用。

命令：/reset 清空对话，/exit（或 Ctrl-D）退出。对话太长、放不进 max_position_embeddings 时，从最早的一轮开始丢。
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch


def build_parser() -> argparse.ArgumentParser:
    from kata.experiment import _chinese_parser

    p = _chinese_parser(prog="python -m kata chat", description="和微调过的模型聊天（流式，停在 <|im_end|>）。",
                        allow_abbrev=False)
    p.add_argument("--ckpt", required=True, help="kata.sft 写的 model.pth（同目录有 config.json 与 tokenizer.json）")
    p.add_argument("--impl", default="exercises", choices=("exercises", "solutions"))
    p.add_argument("--system", default=None, help="系统提示（默认没有）")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = 贪心（默认）")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    return p


def _fit(messages, template, tok, limit: int):
    """从最早的一轮（系统提示之后）开始丢，直到提示放得下；返回 (messages, 丢掉了几条)。"""
    dropped = 0
    start = 1 if messages and messages[0]["role"] == "system" else 0
    while len(tok.encode(template(messages, add_generation_prompt=True))) > limit and len(messages) > start + 1:
        del messages[start]
        dropped += 1
    return messages, dropped


def main(argv: Optional[Sequence[str]] = None, stdin=None, stdout=None) -> int:
    from kata.sft import answer, has_specials, load, sft_parts

    args = build_parser().parse_args(argv)
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    err = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if args.max_new_tokens < 1:
        err(f"--max-new-tokens 应为正整数，实际 {args.max_new_tokens}")
        return 2
    try:
        model, tok, config, _ = load(args.ckpt, args.impl, args.device, err)
    except (FileNotFoundError, ValueError) as exc:
        err(str(exc))
        return 2
    if not has_specials(tok):
        err(f"{args.ckpt} 的分词器没有 <|im_start|> / <|im_end|>：它还没做过 SFT。先运行 python -m kata.sft --ckpt {args.ckpt}")
        return 2
    template, _ = sft_parts(args.impl, err)
    interactive = stdin.isatty()
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    limit = max(1, config.max_position_embeddings - args.max_new_tokens)
    if interactive:
        print("和你的模型聊天：输入一句话回车；/reset 清空对话，/exit 或 Ctrl-D 退出。", file=stdout, flush=True)
    turn = 0
    while True:
        if interactive:
            stdout.write("你：")
            stdout.flush()
        line = stdin.readline()
        if not line:
            break
        text = line.rstrip("\n")
        if text.strip() == "/exit":
            break
        if text.strip() == "/reset":
            messages = list(system)
            print("（对话已清空）", file=stdout, flush=True)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        try:
            template(messages)
        except (TypeError, ValueError) as exc:
            messages.pop()
            print(f"（这句话不能用：{exc}）", file=stdout, flush=True)
            continue
        try:
            messages, dropped = _fit(messages, template, tok, limit)
        except ValueError as exc:          # 分词器不认识这句话里的字符
            messages.pop()
            print(f"（模型的分词器不认识这句话里的字符：{exc}）", file=stdout, flush=True)
            continue
        if dropped:
            print(f"（对话太长，丢掉了最早的 {dropped} 条消息）", file=stdout, flush=True)
        stdout.write("助手：")
        stdout.flush()
        reply, stopped = answer(model, tok, template, messages, max_new_tokens=args.max_new_tokens,
                                device=args.device, temperature=args.temperature, seed=args.seed + turn,
                                on_text=lambda s: (stdout.write(s), stdout.flush()))
        stdout.write("\n" if stopped else f"\n（到了 {args.max_new_tokens} 个 token 还没有 <|im_end|>，截断）\n")
        stdout.flush()
        messages.append({"role": "assistant", "content": reply})
        turn += 1
    return 0


if __name__ == "__main__":
    try:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        sys.exit(main())
    except KeyboardInterrupt:
        print("\n已中断。", flush=True)
        sys.exit(130)
