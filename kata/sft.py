"""监督微调（模块 10）：把 ``kata.train`` 预训练好的模型，用 kata.sft_data 的指令数据微调成会“回答”的模型。

    python -m kata.sft --ckpt runs/train/model.pth                 默认：600 步，输出到 runs/sft/
    python -m kata.sft --ckpt runs/train/model.pth --steps 20      冒烟
    python -m kata.sft --ckpt … --mask all                          消融：loss 算在所有 token 上（不加掩码）
    python -m kata.sft --ckpt … --from-scratch                      同样的结构，随机初始化（对照：预训练有没有用）
    python -m kata.chat --ckpt runs/sft/model.pth                   和微调后的模型聊天

用到的部件：你的模板与 SFTDataset（模块 10）、MiniMindForCausalLM（06）、AdamW / cosine_lr / train_step（08）；
某个部件还没实现（NotImplementedError）时打印一行说明并改用参考实现（同 kata.train）。

分词器：kata.train 的字符级分词器没有特殊 token，也不认识指令数据里的中文等字符。这里把缺的字符和三个特殊 token
**追加**到词表末尾（旧 id 不变），嵌入矩阵相应加几行（旧行原样复制，新行按 N(0, 0.02) 初始化）——与 HF 的
``resize_token_embeddings`` 是同一个做法。BPE 分词器（``kata.train --tokenizer bpe``）本来就有特殊 token，原样使用。

labels 与 input_ids 对齐（模块 10 的约定，模型内部移位）；模块 08 的 train_step 逐位置算 loss，所以喂给它之前
把 labels 左移一位：y[:, t] = labels[:, t+1]。评估：held-out 题目（与训练集的实例不重叠），贪心解码到 <|im_end|>，
逐字比较答案（精确匹配），并记录回复是否在 <|im_end|> 处停下。

输出目录（默认 runs/sft/）：model.pth（普通 state_dict，minimind 的键名）、config.json、tokenizer.json、results.json。
全部原子写入。Ctrl-C：存好 model.pth，打印一行，退出码 130。
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from kata.config import MiniMindConfig
from kata.impl import REPO_ROOT, resolve

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
IGNORE = -100
INTERRUPTED = "已中断：当前的权重已保存到 {path}（可以直接用 python -m kata.chat --ckpt {path} 试试）。"


# ---------------------------------------------------------------------------------------------
# 模型与分词器
# ---------------------------------------------------------------------------------------------

def has_specials(tok) -> bool:
    try:
        return all(len(tok.encode(s)) == 1 for s in SPECIAL_TOKENS)
    except (ValueError, KeyError):
        return False


def load(ckpt, impl: str = "exercises", device: str = "cpu", say=print):
    """(model, tokenizer, config, tokenizer_spec)：kata.train / kata.sft 写的 model.pth 与同目录的 config.json、tokenizer.json。"""
    from kata.generate import load_model

    ckpt = Path(ckpt)
    model, tok, config = load_model(ckpt, impl, device)   # 分词器由 kata.train.tokenizer_from_spec 建（含特殊 token）
    spec = json.loads((ckpt.parent / "tokenizer.json").read_text(encoding="utf-8"))
    return model, tok, config, spec


def _model_class(impl: str, say):
    cls = resolve("06_transformer_block", impl).MiniMindForCausalLM
    try:
        cls(MiniMindConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                           vocab_size=4, max_position_embeddings=4))(torch.zeros(1, 2, dtype=torch.long))
        return cls
    except NotImplementedError:
        # kata.generate.load_model 读 checkpoint 时已经说过一次“还没实现、改用参考实现”了
        return resolve("06_transformer_block", "solutions").MiniMindForCausalLM


def extend_for_chat(model, tok, config: MiniMindConfig, spec: dict, text: str, impl: str, say):
    """字符级分词器：把 text 里缺的字符和三个特殊 token 追加到词表末尾，嵌入矩阵加行（旧行不变）。"""
    if spec.get("type") != "char":
        if not has_specials(tok):
            raise ValueError("这个分词器没有 <|im_start|> / <|im_end|> / <|endoftext|>：用 kata.train --tokenizer bpe 训练的"
                             "模型，或字符级模型")
        return model, tok, config, spec
    chars = list(spec["chars"])
    specials = list(spec.get("special_tokens") or [])
    new_chars = sorted(set(text) - set(chars))
    if not new_chars and specials == list(SPECIAL_TOKENS):
        return model, tok, config, spec
    if specials:
        raise ValueError(f"分词器已经有特殊 token，却缺少字符 {new_chars[:10]}：无法在特殊 token 之前追加字符")
    from kata.tokenizer import CharTokenizer

    new_spec = {**spec, "chars": chars + new_chars, "special_tokens": list(SPECIAL_TOKENS)}
    new_tok = CharTokenizer(new_spec["chars"], special_tokens=SPECIAL_TOKENS)
    old_v = model.model.embed_tokens.weight.shape[0]
    new_v = max(config.vocab_size, new_tok.vocab_size)
    new_config = MiniMindConfig(**{**config.to_dict(), "vocab_size": new_v})
    new_model = _model_class(impl, say)(new_config)
    sd = model.state_dict()
    with torch.no_grad():
        for k, v in new_model.state_dict().items():
            if k in sd and sd[k].shape == v.shape:
                v.copy_(sd[k])
            elif k in sd and v.shape[0] == new_v and sd[k].shape[0] == old_v:   # 嵌入 / lm_head：旧行复制，新行随机
                v.normal_(0.0, 0.02)
                v[:old_v].copy_(sd[k])
    say(f"字符级分词器：追加 {len(new_chars)} 个新字符和 3 个特殊 token，词表 {old_v} → {new_v}（旧 id 不变）")
    return new_model.to(next(model.parameters()).device), new_tok, new_config, new_spec


# ---------------------------------------------------------------------------------------------
# 部件：模块 10 的模板与数据集（没写完就用参考实现）
# ---------------------------------------------------------------------------------------------

def sft_parts(impl: str, say):
    """(apply_chat_template, SFTDataset)，先在一个小例子上试一遍：桩会在这里抛 NotImplementedError。"""
    from kata.tokenizer import CharTokenizer

    probe_tok = CharTokenizer(sorted(set("ab\nsystemuserassistant")), special_tokens=SPECIAL_TOKENS)
    probe = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    ns = resolve("10_sft", impl)
    template, dataset = ns.apply_chat_template, ns.SFTDataset
    try:
        template(probe, add_generation_prompt=True)
    except NotImplementedError as exc:
        say(f"你的 apply_chat_template 还没实现（{str(exc).splitlines()[0]}）：这次用参考实现 solutions/10_sft/。")
        template = resolve("10_sft", "solutions").apply_chat_template
    try:
        dataset([probe], probe_tok, 8)[0]
    except NotImplementedError as exc:
        say(f"你的 SFTDataset 还没实现（{str(exc).splitlines()[0]}）：这次用参考实现 solutions/10_sft/。")
        dataset = resolve("10_sft", "solutions").SFTDataset
    return template, dataset


# ---------------------------------------------------------------------------------------------
# 评估：held-out 题目上的精确匹配
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def answer(model, tok, template, messages, *, max_new_tokens: int = 24, device="cpu", on_text=None,
           temperature: float = 0.0, seed: int = 0) -> tuple[str, bool]:
    """按模板提问，生成到 <|im_end|>（或 max_new_tokens）。返回 (回复, 是否在 <|im_end|> 处停下)。"""
    from kata.train import stream

    im_end = tok.encode("<|im_end|>")[0]
    prompt = template(messages, add_generation_prompt=True)
    n_prompt = len(tok.encode(prompt))
    max_pos = getattr(model.config, "max_position_embeddings", 1 << 30)
    budget = max(1, min(max_new_tokens, max_pos - n_prompt))
    stopped = {"yes": False}

    def eos_aware(piece):
        piece = piece.replace("<|im_end|>", "")      # 停止符本身不显示
        if on_text is not None and piece:
            on_text(piece)

    reply = stream(model, tok, prompt, max_new_tokens=budget, temperature=temperature, seed=seed, device=device,
                   on_text=eos_aware, eos_id=im_end)
    if reply.endswith("<|im_end|>"):
        stopped["yes"] = True
        reply = reply[: -len("<|im_end|>")]
    return reply, stopped["yes"]


def evaluate_tasks(model, tok, template, examples, *, device="cpu", max_new_tokens: int = 24) -> dict:
    from kata.sft_data import accuracy_by_task

    replies, stops = [], []
    for e in examples:
        r, s = answer(model, tok, template, e.messages(with_answer=False), max_new_tokens=max_new_tokens, device=device)
        replies.append(r)
        stops.append(s)
    acc = accuracy_by_task(examples, replies)
    return {"accuracy": acc, "stop_rate": sum(stops) / max(len(stops), 1),
            "samples": [{"task": e.task, "prompt": e.prompt, "answer": e.answer, "reply": r, "stopped": s}
                        for e, r, s in list(zip(examples, replies, stops))[:16]]}


# ---------------------------------------------------------------------------------------------
# 训练
# ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m kata.sft", description="监督微调（模块 10）：用指令数据微调预训练好的模型。")
    p.add_argument("--ckpt", required=True, help="kata.train 写的 model.pth（同目录要有 config.json 与 tokenizer.json）")
    p.add_argument("--out", default=str(REPO_ROOT / "runs" / "sft"), help="输出目录")
    p.add_argument("--impl", default="exercises", choices=("exercises", "solutions"))
    p.add_argument("--data-file", default=None, help="minimind 格式的 SFT jsonl（默认：kata.sft_data 生成的指令数据）")
    p.add_argument("--n-train", type=int, default=4000, help="生成多少道训练题")
    p.add_argument("--n-eval", type=int, default=80, help="held-out 评估题数（各任务平均分）")
    p.add_argument("--langs", default="en,zh", help="题目语言：en、zh 或 en,zh")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--mask", default="assistant", choices=("assistant", "all"),
                   help="assistant：只在助手回复上算 loss（minimind）；all：所有真实 token 都算（消融）")
    p.add_argument("--from-scratch", action="store_true", help="不用预训练权重：同样的结构随机初始化（对照）")
    p.add_argument("--no-eval-before", action="store_true", help="跳过微调前的评估")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quiet", action="store_true", help="不显示进度条")
    return p


def _atomic_text(path: Path, text: str) -> None:
    from kata.experiment import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def _atomic_torch_save(obj, path: Path) -> None:
    import io

    from kata.experiment import atomic_write_bytes

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _all_token_labels(ds, conversations, template, tok, max_length):
    """--mask all：每个真实 token 都进 loss（padding 仍是 −100）。"""
    def get(i):
        x, _ = ds[i]
        n = min(len(tok.encode(template(conversations[i]))), max_length)
        y = x.clone()
        y[n:] = IGNORE
        return x, y
    return get


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    say = lambda m: print(m, flush=True)  # noqa: E731
    for name in ("steps", "batch_size", "max_length", "n_train"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} 应为正整数，实际 {getattr(args, name)}", file=sys.stderr)
            return 2
    langs = tuple(x.strip() for x in args.langs.split(",") if x.strip())
    from kata import sft_data as D

    if not langs or any(x not in D.LANGS for x in langs):
        print(f"--langs 应取自 {D.LANGS}（逗号分隔），实际 {args.langs!r}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    torch.manual_seed(args.seed)
    try:
        model, tok, config, spec = load(args.ckpt, args.impl, args.device, say)
    except (FileNotFoundError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    template, Dataset = sft_parts(args.impl, say)

    held = D.make_examples(args.n_eval, "held_out", args.seed, langs=langs)
    if args.data_file:
        try:
            conversations = D.read_sft_jsonl(args.data_file)
        except D.SFTDataError as exc:
            print(str(exc), file=sys.stderr)
            return 2
    else:
        conversations = [e.messages() for e in D.make_examples(args.n_train, "train", args.seed, langs=langs)]
    all_text = "".join(m["content"] for c in conversations for m in c) + "".join(e.prompt + e.answer for e in held)
    # 模板里的角色名、sft_data 的全部字符、可打印 ASCII：聊天时用户敲的英文和符号也都认识
    all_text += "systemuserassistant\n" + D.alphabet() + "".join(chr(c) for c in range(32, 127))
    try:
        model, tok, config, spec = extend_for_chat(model, tok, config, spec, all_text, args.impl, say)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.from_scratch:
        torch.manual_seed(args.seed)
        model = _model_class(args.impl, say)(config).to(args.device)
        say("--from-scratch：随机初始化（结构、词表与预训练模型相同）")
    try:
        ds = Dataset(conversations, tok, args.max_length)
    except (TypeError, ValueError) as exc:
        print(f"数据不能用：{exc}", file=sys.stderr)
        return 2
    get = _all_token_labels(ds, conversations, template, tok, args.max_length) if args.mask == "all" else ds.__getitem__

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.pth"
    n_params = sum(p.numel() for p in model.parameters())
    say(f"SFT：{len(conversations)} 段对话，held-out {len(held)} 题；模型 {n_params / 1e6:.2f}M 参数，词表 {config.vocab_size}；"
        f"{args.steps} 步 × batch {args.batch_size} × max_length {args.max_length}，loss 掩码 {args.mask}")

    before = None
    if not args.no_eval_before:
        before = evaluate_tasks(model, tok, template, held, device=args.device)
        say(f"微调前：held-out 精确匹配 {before['accuracy']['all']:.1%}，在 <|im_end|> 处停下的比例 {before['stop_rate']:.1%}")

    def save():
        _atomic_text(out / "config.json", json.dumps(config.to_dict(), ensure_ascii=False, indent=2))
        _atomic_text(out / "tokenizer.json", json.dumps(spec, ensure_ascii=False))
        _atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, model_path)

    m08 = resolve("08_training_loop", args.impl)
    ref08 = resolve("08_training_loop", "solutions")
    AdamW, lr_fn, train_step = m08.AdamW, m08.cosine_lr, m08.train_step
    try:
        probe = torch.zeros(2, requires_grad=True)
        probe.grad = torch.ones(2)
        AdamW([probe], lr=1e-3).step()
        lr_fn(0, 10, 1.0, 1, 0.1)
    except NotImplementedError as exc:
        say(f"你的模块 08 还没写完（{str(exc).splitlines()[0]}）：这次用参考实现的 AdamW / cosine_lr / train_step。")
        AdamW, lr_fn, train_step = ref08.AdamW, ref08.cosine_lr, ref08.train_step
    opt = AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng = random.Random(f"sft:{args.seed}")
    history = {"step": [], "loss": []}
    bar = None
    if not args.quiet:
        from tqdm import tqdm
        bar = tqdm(total=args.steps, unit="step", dynamic_ncols=True, file=sys.stdout)
    t0, tokens, completed = time.perf_counter(), 0, 0
    model.train()
    try:
        for step in range(args.steps):
            idx = [rng.randrange(len(ds)) for _ in range(args.batch_size)]
            xs, ys = zip(*(get(i) for i in idx))
            x = torch.stack(xs).to(args.device)
            labels = torch.stack(ys).to(args.device)
            y = torch.full_like(labels, IGNORE)
            y[:, :-1] = labels[:, 1:]                   # 模型内部移位的等价写法：位置 t 预测第 t+1 个 token
            lr = lr_fn(step, args.steps, args.lr, min(args.warmup, args.steps), args.lr * 0.1)
            try:
                res = train_step(model, (x, y), opt, max_grad_norm=args.grad_clip, lr=lr)
            except NotImplementedError as exc:
                say(f"你的 train_step 还没实现（{str(exc).splitlines()[0]}）：这次用参考实现。")
                train_step = ref08.train_step
                opt.zero_grad(set_to_none=True)
                res = train_step(model, (x, y), opt, max_grad_norm=args.grad_clip, lr=lr)
            loss = float(res["loss"])
            if not math.isfinite(loss):
                say(f"第 {step} 步 loss = {loss}：训练发散了（--lr 太大？），停止。")
                save()
                return 1
            tokens += int((y != IGNORE).sum())
            history["step"].append(step)
            history["loss"].append(loss)
            completed = step + 1
            if bar is not None:
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {rate:,.0f} 训练 tok/s", refresh=False)
                bar.update(1)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        save()
        print(INTERRUPTED.format(path=model_path), flush=True)
        return 130
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    save()
    after = evaluate_tasks(model, tok, template, held, device=args.device)
    results = {"ckpt": str(args.ckpt), "impl": args.impl, "mask": args.mask, "from_scratch": args.from_scratch,
               "steps": completed, "batch_size": args.batch_size, "max_length": args.max_length, "lr": args.lr,
               "seed": args.seed, "n_train": len(conversations), "n_eval": len(held), "langs": list(langs),
               "params": n_params, "train_seconds": wall, "loss_tokens_per_second": tokens / max(wall, 1e-9),
               "history": history, "before": before, "after": after, "config": config.to_dict()}
    from kata.experiment import atomic_write_json, to_jsonable

    atomic_write_json(out / "results.json", to_jsonable(results))
    print(f"\n微调完成：{completed} 步，{wall:.0f} 秒；最后 20 步平均 loss {sum(history['loss'][-20:]) / len(history['loss'][-20:]):.4f}")
    print("held-out 精确匹配（每个任务）：")
    tasks = [t for t in D.TASKS if t in after["accuracy"]] + ["all"]
    print(f"  {'任务':<12} {'微调前':>8} {'微调后':>8}")
    for t in tasks:
        b = f"{before['accuracy'][t]:.0%}" if before else "—"
        print(f"  {t:<12} {b:>8} {after['accuracy'][t]:>8.0%}")
    b_stop = f"{before['stop_rate']:.0%}" if before else "—"
    print(f"  {'停在<|im_end|>':<12} {b_stop:>8} {after['stop_rate']:>8.0%}")
    s = after["samples"][0]
    print(f"例子：{s['prompt']!r} → {s['reply']!r}（标准答案 {s['answer']!r}）")
    print(f"结果：{out / 'results.json'}；权重：{model_path}（聊天：python -m kata.chat --ckpt {model_path}）")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("已中断。", flush=True)
        sys.exit(130)
