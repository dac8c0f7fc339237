"""从 checkpoint 流式生成（KV cache）：python -m kata generate --ckpt runs/train/model.pth --prompt "ROMEO:"

--ckpt 可以是三种东西（kata.hf_weights.open_checkpoint 判断是哪种）：
- kata train / sft 写的 model.pth（普通 state_dict，minimind 的键名）或 resume.pth（模块 08 的格式），
  同目录下有 config.json 与 tokenizer.json；
- Hugging Face 格式的文件夹：config.json（transformers 的 MiniMindConfig）+ model.safetensors + tokenizer.json，
  例如 git clone 下来的 MiniMind2-small：python -m kata generate --ckpt MiniMind2-small --prompt "你好"；
- minimind 训练脚本存的 .pth（如 full_sft_512.pth，fp16，旁边没有配置）：配置由张量形状推出，
  分词器用 --tokenizer 给（minimind 仓库的 model/ 文件夹）。
半精度（fp16 / bf16）的权重先精确地转成 float32。模型代码用你的 MiniMindForCausalLM（--impl solutions 用参考实现），
minimind 的 tokenizer.json 用你在模块 07 写的 BPETokenizer.from_hf_json 读。
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from kata.config import MiniMindConfig
from kata.hf_weights import Checkpoint, open_checkpoint, read_tokenizer_file

_EMB, _HEAD = "model.embed_tokens.weight", "lm_head.weight"


@dataclass
class Loaded:
    """load 的结果。bos / eos：minimind 分词器的 tokenizer_config.json 里写的（kata 自己的 checkpoint 没有）。"""
    model: torch.nn.Module
    tokenizer: object
    config: MiniMindConfig
    checkpoint: Checkpoint
    bos: Optional[str] = None
    eos: Optional[str] = None


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_tokenizer(path, impl: str = "exercises", say=_say):
    """(分词器, {"bos", "eos", "added"})（见 kata.hf_weights.read_tokenizer_file）：Hugging Face 的 tokenizer.json 用模块 07 的 BPETokenizer.from_hf_json
    （你的还没写完就用参考实现，并说一声），kata 的 tokenizer.json 用 kata.train.tokenizer_from_spec。"""
    from kata.impl import resolve
    from kata.train import tokenizer_from_spec

    kind, data, f, specials = read_tokenizer_file(path)
    if kind == "kata":
        return tokenizer_from_spec(data), specials
    if impl != "solutions":
        try:
            tok = resolve("07_tokenizer", impl).BPETokenizer.from_hf_json(f)
            tok.decode(tok.encode("试一下 ok"))          # 只写完了 from_hf_json、encode 还是桩：也算没写完
            return tok, specials
        except NotImplementedError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "NotImplementedError"
            say(f"你的 BPETokenizer 还读不了 Hugging Face 的 tokenizer.json（{first}）：这次用参考实现 solutions/07_tokenizer/。")
    return resolve("07_tokenizer", "solutions").BPETokenizer.from_hf_json(f), specials


def load(ckpt, impl: str = "exercises", device: str = "cpu", *, tokenizer=None,
         num_attention_heads: Optional[int] = None, rms_norm_eps: Optional[float] = None, say=_say) -> Loaded:
    """读任意一种 checkpoint（见 kata.hf_weights.open_checkpoint），建你的 MiniMindForCausalLM 并装上权重。

    权重一律 float32；键必须一一对上（多一个、少一个都报错）；tie_word_embeddings 时文件里只有
    embed_tokens 或只有 lm_head 都行（另一个用同一个矩阵）。
    """
    from kata.impl import resolve

    ck = open_checkpoint(ckpt, tokenizer=tokenizer, num_attention_heads=num_attention_heads, rms_norm_eps=rms_norm_eps)
    config = ck.config
    for note in ck.notes:
        say(f"（{note}）")
    if ck.tokenizer is None:
        if ck.kind == "kata":
            raise FileNotFoundError(f"{ck.weights.parent} 里没有 tokenizer.json（kata.train 会把它和 model.pth 写在一起）")
        raise FileNotFoundError(
            f"{ck.weights} 旁边没有 tokenizer.json：minimind 的权重要配 minimind 的分词器，"
            "加 --tokenizer PATH（minimind 仓库的 model/ 文件夹，或其中的 tokenizer.json）")
    tok, specials = load_tokenizer(ck.tokenizer, impl, say)
    if tok.vocab_size > config.vocab_size:
        raise ValueError(f"分词器 {ck.tokenizer} 有 {tok.vocab_size} 个 token，模型的词表只有 {config.vocab_size} 行："
                         "分词器与权重不配套（minimind 的权重要用 minimind 的 tokenizer.json）")
    added = specials.get("added")
    if ck.kind != "kata" and added is not None and (added > 3) != config.qk_norm:
        # 两代分词器的词表都是 6400：配错了不会报形状错误，只会生成乱码
        say(f"注意：分词器 {ck.tokenizer} 有 {added} 个特殊 token（{'minimind-3' if added > 3 else 'MiniMind2'} 的分词器），"
            f"权重却{'有' if config.qk_norm else '没有'} q_norm（{'minimind-3' if config.qk_norm else 'MiniMind2'} 的结构）。"
            "两代分词器的词表都是 6400 但切法不同，配错了只会生成乱码：MiniMind2 的权重请用 MiniMind2-Small 文件夹里的 "
            "tokenizer.json（或 minimind 仓库 2026-03 minimind-3 更新之前的 model/tokenizer.json）。")
    cls = resolve("06_transformer_block", impl).MiniMindForCausalLM
    try:
        model = cls(config)
    except NotImplementedError as exc:
        say(f"你的 MiniMindForCausalLM 还没实现（{str(exc).splitlines()[0]}）：这次用参考实现。")
        model = resolve("06_transformer_block", "solutions").MiniMindForCausalLM(config)
    sd = dict(ck.state_dict)
    if config.tie_word_embeddings:
        shared = sd.get(_EMB, sd.get(_HEAD))
        if shared is not None:
            sd.setdefault(_EMB, shared)
            sd.setdefault(_HEAD, shared)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        sizes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise ValueError(f"{ck.weights} 的张量形状与按配置建出的模型对不上：{sizes[:3] or str(exc)[:300]}"
                         "（配置与权重不是同一个模型？没有 config.json 时，头数用 --num-attention-heads 给）") from None
    if missing or unexpected:
        raise ValueError(f"checkpoint 的键与模型对不上：缺少 {missing[:5]}，多出 {unexpected[:5]}"
                         "（键名应与 minimind 的 model/model_minimind.py 相同）")
    return Loaded(model.to(device).eval(), tok, config, ck, specials.get("bos"), specials.get("eos"))


def load_model(ckpt, impl: str = "exercises", device: str = "cpu", **kwargs):
    """(model, tokenizer, config)。state_dict 用 torch.load(weights_only=True) 或手写的 safetensors 读取器读。"""
    got = load(ckpt, impl, device, **kwargs)
    return got.model, got.tokenizer, got.config


class _KnownTokensOnly(torch.nn.Module):
    """生成时只在分词器认识的 id 里挑：模型的词表可以比分词器大（多出来的行从没被训练到，也解码不出来）。"""

    def __init__(self, model: torch.nn.Module, n_known: int):
        super().__init__()
        self.inner, self.n_known, self.config = model, n_known, getattr(model, "config", None)

    def forward(self, *args, **kwargs):
        out = self.inner(*args, **kwargs)
        out.logits[..., self.n_known:] = float("-inf")
        return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    from kata.train import stream

    p = argparse.ArgumentParser(
        prog="python -m kata.generate", description="从 checkpoint 流式生成文本（KV cache）。",
        epilog="--ckpt 可以是：kata train 的 model.pth（或它所在的文件夹）；Hugging Face 格式的文件夹"
               "（config.json + model.safetensors，例如 git clone 下来的 MiniMind2-small）；"
               "minimind 训练脚本存的 .pth（例如 full_sft_512.pth，要加 --tokenizer）。")
    p.add_argument("--ckpt", required=True, help="checkpoint 文件或文件夹（见下）")
    p.add_argument("--tokenizer", default=None,
                   help="分词器：tokenizer.json 或放着它的文件夹（minimind 仓库的 model/）；默认用 checkpoint 旁边的")
    p.add_argument("--num-attention-heads", type=int, default=None,
                   help="只用于旁边没有 config.json 的 .pth：注意力头数（从形状看不出来；默认 8，MiniMind2 的值）")
    p.add_argument("--rms-norm-eps", type=float, default=None,
                   help="只用于旁边没有 config.json 的 .pth：RMSNorm 的 eps（默认 MiniMind2 的 1e-5；有 q_norm 时 1e-6）")
    p.add_argument("--prompt", default="")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="不用 KV cache（每步把整段序列重算一遍，慢）")
    p.add_argument("--no-bos", action="store_true",
                   help="minimind 的分词器：不在提示词前加 bos（默认加，同 minimind eval_llm.py 对预训练权重的做法）")
    p.add_argument("--window", type=int, default=None,
                   help="上下文窗口（默认取训练时的 seq_len，见同目录的 train.json；0 = 不裁）")
    p.add_argument("--impl", default="exercises", choices=("exercises", "solutions"))
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "mps"))
    args = p.parse_args(argv)
    try:
        got = load(args.ckpt, args.impl, args.device, tokenizer=args.tokenizer,
                   num_attention_heads=args.num_attention_heads, rms_norm_eps=args.rms_norm_eps)
    except (FileNotFoundError, ValueError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    model, tok = got.model, got.tokenizer
    if tok.vocab_size < got.config.vocab_size:
        _say(f"（模型的词表有 {got.config.vocab_size} 行，分词器只认识 {tok.vocab_size} 个 id：生成时只在后者里挑）")
        model = _KnownTokensOnly(model, tok.vocab_size)
    prompt, eos_id = args.prompt, None
    if got.bos and not args.no_bos:
        prompt = got.bos + prompt                          # minimind 的预训练文本都以 bos 开头
        _say(f"（提示词前加了 {got.bos}：minimind 的训练文本都以它开头；不要的话加 --no-bos）")
    if got.eos:
        ids = tok.encode(got.eos)
        eos_id = ids[0] if len(ids) == 1 else None         # 生成到 eos 就停
    sys.stdout.write(args.prompt)
    t0 = time.perf_counter()
    train_json = got.checkpoint.weights.parent / "train.json"
    window = json.loads(train_json.read_text(encoding="utf-8")).get("seq_len") if train_json.is_file() else None
    if args.window is not None:
        window = args.window or None
    text = stream(model, tok, prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                  top_k=args.top_k, top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache, window=window,
                  device=args.device, eos_id=eos_id, on_text=lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    dt = time.perf_counter() - t0
    print(f"\n（{len(tok.encode(text)) if text else 0} 个 token，{dt:.2f} 秒）", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\n已中断。", flush=True)
        sys.exit(130)
