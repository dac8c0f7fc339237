"""监督微调（模块 10）：把 ``kata.train`` 预训练好的模型，用 kata.sft_data 的指令数据微调成会“回答”的模型。

    python -m kata sft --ckpt runs/train/model.pth                  默认：600 步，输出到 runs/sft/
    python -m kata sft --ckpt runs/train/model.pth --steps 20       冒烟
    python -m kata sft --ckpt … --mask all                          消融：loss 算在所有 token 上（不加掩码）
    python -m kata sft --ckpt … --from-scratch                      同样的结构，随机初始化（对照：预训练有没有用）
    python -m kata sft --ckpt … --resume runs/sft/resume.pth        精确续训（与不中断的那次逐位相同）
    torchrun --nproc_per_node=2 -m kata sft --ckpt …                DDP（CPU 上 gloo）：2 个进程各算全局批次的一半
    python -m kata chat --ckpt runs/sft/model.pth                   和微调后的模型聊天

训练器与 ``kata.train`` 相同（模块 09 的那一套）：tqdm 进度条（loss、学习率、每秒进 loss 的 token 数、ETA）；
每 --ckpt-every 步原子地写一次 resume.pth（模块 08 的 save_checkpoint）和 model.pth；--resume 精确续训；
Ctrl-C 存好两个文件再退出；torchrun 下只有 rank 0 打日志、评估、写文件。

用到的部件：你的模板与 SFTDataset（模块 10）、MiniMindForCausalLM（06）、AdamW / cosine_lr / train_step /
save_checkpoint / load_checkpoint（08）、setup_distributed / rank_batch / all_reduce_mean / cleanup_distributed（09）；
某个部件还没实现（NotImplementedError）时打印一行说明并改用参考实现（同 kata.train）。

分词器：kata.train 的字符级分词器没有特殊 token，也不认识指令数据里的中文等字符。这里把缺的字符和三个特殊 token
**追加**到词表末尾（旧 id 不变），嵌入矩阵相应加几行（旧行原样复制，新行按 N(0, 0.02) 初始化）——与 HF 的
``resize_token_embeddings`` 是同一个做法。BPE 分词器（``kata.train --tokenizer bpe``）本来就有特殊 token，原样使用。

labels 与 input_ids 对齐（模块 10 的约定，模型内部移位）；模块 08 的 train_step 逐位置算 loss，所以喂给它之前
把 labels 左移一位：y[:, t] = labels[:, t+1]。

批次：模块 09 的 rank_batch 按“全局步号”确定地取样（每个 epoch 按 seed 重新打乱），所以续训只需要知道步号，
而 N 个进程 × batch B 拼起来恰好是 1 个进程 × batch N·B 的那一批。

多进程时的 loss 权重：SFT 的批次里每个样本要算 loss 的 token 数不同（只有助手回复算）。每个进程的 train_step
算的是自己那一份的 token 平均；DDP 默认把各进程的梯度直接平均——token 少的进程，每个 token 的权重反而大
（minimind 的 trainer/train_full_sft.py 就是这样：每个进程的 res.loss 是自己那一份的 token 平均，DDP 再平均）。
这里给 DDP 装一个通信钩子（register_comm_hook），按各进程的 token 数加权求和，于是梯度等于整个全局批次的
token 平均：2 个进程 × batch B 与 1 个进程 × batch 2B 一致（只差浮点求和顺序）。日志里的 loss 也按 token 数
加权做 all_reduce。

评估：held-out 题目（与训练集的实例不重叠），贪心解码到 <|im_end|>，逐字比较答案（精确匹配），并记录回复是否在
<|im_end|> 处停下。只在 rank 0 上做，其余进程等它。

输出目录（默认 runs/sft/）：model.pth（普通 state_dict，minimind 的键名）、config.json、tokenizer.json、
resume.pth（续训用）、results.json。全部原子写入（先写临时文件再 os.replace：中途被打断也不会留下半个文件）。
Ctrl-C：rank 0 存好 resume.pth / model.pth，打印一行，退出码 130。
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from kata.config import MiniMindConfig
from kata.impl import REPO_ROOT, resolve

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
IGNORE = -100
INTERRUPTED = ("已中断：checkpoint 已保存到 {path}（用 --resume {path} 接着训练）；当前权重 {model} 可以直接用 "
               "python -m kata chat --ckpt {model} 试试。")
INTERRUPTED_DURING_SAVE = ("已中断：这一次存盘被打断了，{path} 仍是上一个完整的 checkpoint"
                           "（原子写入：没有半个文件；用 --resume {path} 从那里接着训练）。")


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
# 命令行
# ---------------------------------------------------------------------------------------------

EXAMPLES = """例子：
  python -m kata sft --ckpt runs/train/model.pth                       默认 600 步，输出到 runs/sft/
  python -m kata sft --ckpt runs/train/model.pth --steps 20            冒烟
  python -m kata sft --ckpt … --stop-after 200                         跑到第 200 步存盘退出（像 Ctrl-C）
  python -m kata sft --ckpt … --resume runs/sft/resume.pth             接着训练：与不中断的那次逐位相同
                                                                       （其余参数要与第一次相同）
  torchrun --nproc_per_node=2 -m kata sft --ckpt …                     2 个进程（CPU 上 gloo），每个进程算
                                                                       全局批次的一半：--batch-size 是每个进程的
  python -m kata chat --ckpt runs/sft/model.pth                        和微调后的模型聊天

输出（--out，默认 runs/sft/）：model.pth、config.json、tokenizer.json、resume.pth、results.json，全部原子写入。
Ctrl-C 随时可以按：resume.pth 与 model.pth 存好后退出（退出码 130）。"""


def build_parser() -> argparse.ArgumentParser:
    from kata.experiment import _chinese_parser

    p = _chinese_parser(prog="python -m kata sft", allow_abbrev=False, epilog=EXAMPLES,
                        description="监督微调（模块 10）：用指令数据把预训练好的模型微调成会回答问题的模型。")
    p.add_argument("--ckpt", metavar="PATH", required=True,
                   help="kata train 写的 model.pth（同目录要有 config.json 与 tokenizer.json）")
    p.add_argument("--out", metavar="DIR", default=str(REPO_ROOT / "runs" / "sft"), help="输出目录（默认 runs/sft/）")
    p.add_argument("--impl", default="exercises", choices=("exercises", "solutions"),
                   help="用谁的代码（默认你的；没写完的部件自动用参考实现）")
    g = p.add_argument_group("数据")
    g.add_argument("--data-file", metavar="PATH", default=None, help="minimind 格式的 SFT jsonl（默认：kata.sft_data 生成的指令数据）")
    g.add_argument("--n-train", type=int, metavar="N", default=4000, help="生成多少道训练题（默认 4000）")
    g.add_argument("--n-eval", type=int, metavar="N", default=80, help="held-out 评估题数（各任务平均分；默认 80）")
    g.add_argument("--langs", metavar="LANGS", default="en,zh", help="题目语言：en、zh 或 en,zh（默认）")
    g.add_argument("--max-length", type=int, metavar="N", default=128, help="每段对话截断 / 补齐到多少个 token（默认 128）")
    g = p.add_argument_group("训练")
    g.add_argument("--steps", type=int, metavar="N", default=600, help="总步数（默认 600；学习率按它排）")
    g.add_argument("--batch-size", type=int, metavar="N", default=16,
                   help="每个进程每步的对话数（默认 16；torchrun 下全局批次 = 它 × 进程数）")
    g.add_argument("--lr", type=float, metavar="X", default=1e-3, help="峰值学习率（默认 1e-3；余弦退火到它的 1/10）")
    g.add_argument("--warmup", type=int, metavar="N", default=30, help="线性 warmup 的步数（默认 30）")
    g.add_argument("--grad-clip", type=float, metavar="X", default=1.0, help="梯度范数裁剪的上限（默认 1.0）")
    g.add_argument("--mask", default="assistant", choices=("assistant", "all"),
                   help="assistant：只在助手回复上算 loss（minimind 的做法，默认）；all：所有真实 token 都算（消融）")
    g.add_argument("--from-scratch", action="store_true", help="不用预训练权重：同样的结构随机初始化（对照）")
    g.add_argument("--seed", type=int, metavar="N", default=0, help="随机种子：数据、取样顺序、新嵌入行（默认 0）")
    g = p.add_argument_group("检查点与续训")
    g.add_argument("--ckpt-every", type=int, metavar="N", default=200, help="每多少步原子地写一次 resume.pth 与 model.pth（默认 200）")
    g.add_argument("--resume", metavar="PATH", default=None,
                   help="从 kata sft 写的 resume.pth 接着训练（其余参数与第一次相同，结果与不中断的那次逐位相同）")
    g.add_argument("--stop-after", type=int, metavar="N", default=None,
                   help="训练到第 N 步就存盘退出（像 Ctrl-C 一样，之后用 --resume 接着训练；学习率仍按 --steps 排）")
    g = p.add_argument_group("评估与运行")
    g.add_argument("--no-eval-before", action="store_true", help="跳过微调前的评估")
    g.add_argument("--no-final-eval", action="store_true", help="跳过微调后的评估（results.json 里 after 为 null）")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="计算设备（默认 auto：torchrun + CUDA 时每个进程一张卡，否则 CPU / MPS）")
    g.add_argument("--threads", type=int, metavar="N", default=None, help="torch 线程数（默认：CPU 核数 / 进程数）")
    g.add_argument("--quiet", action="store_true", help="不显示进度条")
    return p


def _atomic_text(path: Path, text: str) -> None:
    from kata.experiment import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))


def _atomic_torch_save(obj, path: Path) -> None:
    """先 torch.save 到内存，再原子地写进 path（临时文件 + os.replace）：被打断时 path 上仍是旧的完整文件。"""
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


class _Shifted(torch.utils.data.Dataset):
    """SFTDataset 的样本 (input_ids, labels) → (x, y)，y[t] = labels[t+1]：模块 08 的 train_step 与模块 09 的
    rank_batch 都按“逐位置对齐”的 (x, y) 工作（位置 t 预测第 t+1 个 token；最后一个位置没有下一个，−100）。"""

    def __init__(self, get, n: int):
        self.get, self.n = get, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        x, labels = self.get(i)
        y = torch.full_like(labels, IGNORE)
        y[:-1] = labels[1:]
        return x, y


def _token_weighted_allreduce(state: dict, bucket):
    """DDP 的通信钩子：梯度先乘本进程的权重 n_r / N（n_r = 本进程这一步进 loss 的 token 数，N = 全局的），
    再 all-reduce 求和。train_step 算的是本进程的 token 平均，于是和 = 全局批次的 token 平均的梯度。
    （DDP 默认的钩子是乘 1 / world_size：每个进程一样重，不管它有多少个 token。）"""
    import torch.distributed as dist

    buf = bucket.buffer()
    buf.mul_(state["weight"])
    return dist.all_reduce(buf, async_op=True).get_future().then(lambda fut: fut.value()[0])


# 续训时要与保存时相同、否则“续训 = 没中断过”就不成立的设置（不同时打印一句提醒，不报错：改 --steps 续训是合理的）
RESUME_SETTINGS = ("steps", "lr", "warmup", "grad_clip", "mask", "seed", "n_train", "n_eval", "langs", "data_file",
                   "max_length", "from_scratch", "global_batch")


def _check_args(args) -> Optional[str]:
    """参数的问题（中文一句话），没问题时 None。进程组建立之前检查：每个 rank 都会同样地退出。"""
    for name in ("steps", "batch_size", "max_length", "n_train", "n_eval", "ckpt_every"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} 应为正整数，实际 {getattr(args, name)}"
    if args.stop_after is not None and args.stop_after < 1:
        return f"--stop-after 应为正整数（训练到第几步停下），实际 {args.stop_after}"
    if not (math.isfinite(args.lr) and args.lr > 0):
        return f"--lr 应为正数，实际 {args.lr}"
    if args.warmup < 0:
        return f"--warmup 应 ≥ 0，实际 {args.warmup}"
    if not (math.isfinite(args.grad_clip) and args.grad_clip > 0):
        return f"--grad-clip 应为正数（梯度范数的上限），实际 {args.grad_clip}"
    if args.threads is not None and args.threads < 1:
        return f"--threads 应为正整数，实际 {args.threads}"
    if not Path(args.ckpt).is_file():
        return f"找不到 --ckpt 指定的 checkpoint：{args.ckpt}（先运行 python -m kata train，它会写 runs/train/model.pth）"
    if args.resume is not None and not Path(args.resume).is_file():
        return f"找不到 --resume 指定的文件：{args.resume}（kata sft 把它写在 --out 目录里，名字是 resume.pth）"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:            # --help（0）或参数错误（2，中文说明已经打印）
        return exc.code if isinstance(exc.code, int) else 2
    problem = _check_args(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    langs = tuple(x.strip() for x in args.langs.split(",") if x.strip())
    from kata import sft_data as D

    if not langs or any(x not in D.LANGS for x in langs):
        print(f"--langs 应取自 {D.LANGS}（逗号分隔），实际 {args.langs!r}", file=sys.stderr)
        return 2
    from kata.train import run_distributed

    return run_distributed(args.impl, lambda parts, rank, world, dist_device, say:
                           _sft(args, langs, parts, rank, world, dist_device, say))


def _sft(args, langs, parts, rank, world, dist_device, say) -> int:
    from kata import sft_data as D
    from kata.train import _device

    main_proc = rank == 0
    device = _device(args.device, dist_device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(args.seed)
    try:
        import contextlib
        import io

        # kata.generate.load_model 的“还没实现、改用参考实现”直接打印到 stderr：只让 rank 0 说
        quiet = contextlib.nullcontext() if main_proc else contextlib.redirect_stderr(io.StringIO())
        with quiet:
            model, tok, config, spec = load(args.ckpt, args.impl, device, say)
    except (FileNotFoundError, ValueError) as exc:
        if main_proc:
            print(str(exc), file=sys.stderr)
        return 2
    template, Dataset = sft_parts(args.impl, say)

    held = D.make_examples(args.n_eval, "held_out", args.seed, langs=langs)
    if args.data_file:
        try:
            conversations = D.read_sft_jsonl(args.data_file)
        except D.SFTDataError as exc:
            if main_proc:
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
        if main_proc:
            print(str(exc), file=sys.stderr)
        return 2
    if args.from_scratch:
        torch.manual_seed(args.seed)
        model = _model_class(args.impl, say)(config).to(device)
        say("--from-scratch：随机初始化（结构、词表与预训练模型相同）")
    try:
        ds = Dataset(conversations, tok, args.max_length)
    except (TypeError, ValueError) as exc:
        if main_proc:
            print(f"数据不能用：{exc}", file=sys.stderr)
        return 2
    get = _all_token_labels(ds, conversations, template, tok, args.max_length) if args.mask == "all" else ds.__getitem__
    train_ds = _Shifted(get, len(ds))

    steps, B = args.steps, args.batch_size
    settings = {"steps": steps, "lr": args.lr, "warmup": args.warmup, "grad_clip": args.grad_clip, "mask": args.mask,
                "seed": args.seed, "n_train": args.n_train, "n_eval": args.n_eval, "langs": list(langs),
                "data_file": args.data_file, "max_length": args.max_length, "from_scratch": args.from_scratch,
                "global_batch": B * world}
    out = Path(args.out)
    resume_path, model_path = out / "resume.pth", out / "model.pth"

    AdamW = parts.get("08_training_loop", "AdamW")
    try:                                   # 先在一个小参数上试一步：桩可能在 __init__ 或 step 里才抛
        probe = torch.zeros(2, requires_grad=True)
        probe.grad = torch.ones(2)
        AdamW([probe], lr=1e-3).step()
    except NotImplementedError as exc:
        AdamW = parts.reference("08_training_loop", "AdamW", exc)
    opt = AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)

    start, before = 0, None
    history = {"step": [], "loss": [], "lr": []}
    if args.resume:
        problem = _resume_problem(args.resume, spec, config)
        if problem:
            if main_proc:
                print(problem, file=sys.stderr)
            return 2
        ckpt, _ = parts.call("08_training_loop", "load_checkpoint", args.resume, model, opt)
        start = int(ckpt["step"])
        history = json.loads(ckpt["history"])
        before = json.loads(ckpt["before"])
        saved = json.loads(ckpt["settings"])
        changed = [f"--{k.replace('_', '-')} {saved.get(k)!r} → {settings[k]!r}" for k in RESUME_SETTINGS
                   if saved.get(k) != settings[k]]
        say(f"从 {args.resume} 的第 {start} 步接着训练")
        if changed:
            say("注意：这些设置与保存时不同（" + "；".join(changed) + "）：续训的结果不再等于一次不中断的运行。")
        if start >= steps:
            say(f"{args.resume} 已经训练到第 {start} 步（--steps {steps}）：没有要训练的了"
                + ("。" if args.no_final_eval else "，只做最后的评估。"))

    n_params = sum(p.numel() for p in model.parameters())
    say(f"SFT：{len(conversations)} 段对话，held-out {len(held)} 题；模型 {n_params / 1e6:.2f}M 参数，词表 {config.vocab_size}；"
        f"{steps} 步 × {world} 个进程 × batch {B} × max_length {args.max_length}，loss 掩码 {args.mask}，"
        f"设备 {device}，{torch.get_num_threads()} 线程")

    if main_proc and not args.resume and not args.no_eval_before:
        before = evaluate_tasks(model, tok, template, held, device=device)
        say(f"微调前：held-out 精确匹配 {before['accuracy']['all']:.1%}，在 <|im_end|> 处停下的比例 {before['stop_rate']:.1%}")
    weight = {"weight": 1.0 / world}
    net = model
    if world > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.barrier()                    # 等 rank 0 做完微调前的评估
        net = DistributedDataParallel(model)
        net.register_comm_hook(weight, _token_weighted_allreduce)

    def save(step_done: int) -> None:
        if not main_proc:
            return
        out.mkdir(parents=True, exist_ok=True)
        _atomic_text(out / "config.json", json.dumps(config.to_dict(), ensure_ascii=False, indent=2))
        _atomic_text(out / "tokenizer.json", json.dumps(spec, ensure_ascii=False))
        parts.call("08_training_loop", "save_checkpoint", resume_path, model, opt, step_done, kind="kata.sft",
                   history=json.dumps(history), before=json.dumps(before), settings=json.dumps(settings),
                   tokenizer=json.dumps(spec, sort_keys=True), config=json.dumps(config.to_dict(), sort_keys=True))
        _atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, model_path)

    lr_fn = parts.get("08_training_loop", "cosine_lr")
    warmup, min_lr = min(args.warmup, steps), args.lr * 0.1
    bar = None
    if main_proc and not args.quiet:
        from tqdm import tqdm
        bar = tqdm(total=steps, initial=min(start, steps), unit="step", dynamic_ncols=True, file=sys.stdout)
        parts.say = lambda m: bar.write(m, file=sys.stdout)    # 训练中的“改用参考实现”不打断进度条
    t0, tokens, completed = time.perf_counter(), 0, start
    model.train()
    try:
        for step in range(start, steps):
            try:
                lr = lr_fn(step, steps, args.lr, warmup, min_lr)
            except NotImplementedError as exc:
                lr_fn = parts.reference("08_training_loop", "cosine_lr", exc)
                lr = lr_fn(step, steps, args.lr, warmup, min_lr)
            (x, y), _ = parts.call("09_pretrain", "rank_batch", train_ds, step, B, rank, world, args.seed)
            x, y = x.to(device), y.to(device)
            n_mine = int((y != IGNORE).sum())
            n_all = n_mine
            if world > 1:
                n_all, _ = parts.call("09_pretrain", "all_reduce_mean", float(n_mine))
                n_all = round(n_all * world)
                weight["weight"] = n_mine / n_all if n_all else 0.0
            res, _ = parts.call("08_training_loop", "train_step", net, (x, y), opt, max_grad_norm=args.grad_clip,
                                lr=lr)
            loss = float(res["loss"])
            if world > 1:                 # 全局批次的 token 平均：Σ_r loss_r·n_r / N
                total, _ = parts.call("09_pretrain", "all_reduce_mean", loss * n_mine)
                loss = total * world / n_all if n_all else 0.0
            if not math.isfinite(loss):
                say(f"第 {step} 步 loss = {loss}：训练发散了（--lr 太大？），停止。")
                save(step)
                return 1
            tokens += n_all
            history["step"].append(step)
            history["loss"].append(loss)
            history["lr"].append(lr)
            completed = step + 1
            if bar is not None:
                rate = tokens / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {rate:,.0f} 训练 tok/s", refresh=False)
                bar.update(1)
            done = step + 1
            if done % args.ckpt_every == 0 and done != steps:
                save(done)
            if args.stop_after is not None and done >= args.stop_after and done != steps:
                if bar is not None:
                    bar.close()
                save(done)
                say(f"按 --stop-after 在第 {done} 步停下：checkpoint 在 {resume_path}"
                    f"（用 --resume {resume_path} 接着训练）。")
                return 0
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        try:
            save(completed)
            saved = True
        except BaseException:  # noqa: BLE001  存盘时又被打断：磁盘上仍是上一个完整的 checkpoint（原子写入）
            saved = False
        if main_proc:
            if saved:
                print(INTERRUPTED.format(path=resume_path, model=model_path), flush=True)
            elif resume_path.is_file():
                print(INTERRUPTED_DURING_SAVE.format(path=resume_path), flush=True)
            else:
                print("已中断：还没有存下任何 checkpoint（存盘时被打断）。", flush=True)
        return 130
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    save(completed)
    if not main_proc:
        return 0
    after = None if args.no_final_eval else evaluate_tasks(model, tok, template, held, device=device)
    results = {"ckpt": str(args.ckpt), "impl": args.impl, "mask": args.mask, "from_scratch": args.from_scratch,
               "steps": completed, "batch_size": B, "world_size": world, "global_batch": B * world,
               "max_length": args.max_length, "lr": args.lr, "seed": args.seed, "n_train": len(conversations),
               "n_eval": len(held), "langs": list(langs), "params": n_params, "fallbacks": parts.fallbacks,
               "resumed_from": args.resume, "start_step": start, "train_seconds": wall,
               "loss_tokens_per_second": tokens / max(wall, 1e-9), "history": history, "before": before,
               "after": after, "config": config.to_dict()}
    from kata.experiment import atomic_write_json, to_jsonable

    atomic_write_json(out / "results.json", to_jsonable(results))
    last = history["loss"][-20:]
    mean_last = f"{sum(last) / len(last):.4f}" if last else "—"
    print(f"\n微调完成：{completed - start} 步（共 {completed} 步），{wall:.0f} 秒；最后 20 步平均 loss {mean_last}")
    if after is not None:
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
    print(f"结果：{out / 'results.json'}；权重：{model_path}（聊天：python -m kata chat --ckpt {model_path}）")
    return 0


def _resume_problem(path, spec: dict, config: MiniMindConfig) -> Optional[str]:
    """--resume 的文件能不能接着这一次训练；不能时返回中文的一句话。"""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        return f"--resume {path} 读不出来（{str(exc).splitlines()[0][:120]}）：它不是完整的 checkpoint 文件"
    if not isinstance(ck, dict) or ck.get("kind") != "kata.sft":
        return (f"--resume {path} 不是 kata sft 写的 resume.pth（kata train 的 resume.pth 请交给 kata train --resume；"
                f"kata sft 从预训练权重开始时用 --ckpt）")
    if ck.get("tokenizer") != json.dumps(spec, sort_keys=True) or \
            ck.get("config") != json.dumps(config.to_dict(), sort_keys=True):
        saved_v = json.loads(ck.get("config", "{}")).get("vocab_size")
        return (f"--resume {path} 的词表或模型结构与这次不同（保存时词表 {saved_v}，这次 {config.vocab_size}）："
                "续训时 --ckpt、--data-file、--n-train、--n-eval、--langs、--seed 要与第一次相同")
    return None


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("已中断。", flush=True)
        sys.exit(130)
