"""模块 10 三个实验共用的小工具：取你的部件、预训练一个很小的字符级 MiniMind、用你的 SFTDataset 做 SFT、评估。

被研究的是**你在本模块写的** ``apply_chat_template`` 与 ``SFTDataset``（来自 --impl；还没写完时实验只打印一句话、
退出码 2）。模型是你在模块 06 写的 ``MiniMindForCausalLM``，训练用你在模块 08 写的 ``AdamW`` / ``cosine_lr`` /
``train_step``——这几样还没写完时退回参考实现，结果 JSON 的 provenance 里写明（同 ``python -m kata sft``）。

流程与命令行一致（``python -m kata train`` → ``python -m kata sft``）：

1. 预训练：字符级 TinyShakespeare，几百步（这里是实验内置的“迷你版 kata train”，不写 checkpoint）；
2. ``kata.sft.extend_for_chat``：把指令数据里的新字符和三个特殊 token **追加**到词表末尾，嵌入矩阵加行；
3. SFT：``SFTDataset``（你的）给出 (input_ids, labels)；labels 左移一位交给模块 08 的 train_step
   （与 kata.sft 相同）；``--mask all`` 的对照用 ``kata.sft._all_token_labels``（padding 之外每个 token 都进 loss）；
4. 评估：``kata.sft.evaluate_tasks``（held-out 题目，贪心解码到 <|im_end|>，逐字精确匹配）和
   teacher forcing 下答案 token 的平均负对数似然（连续的指标：精确匹配还是 0 的时候它也能看出进步）。
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from tqdm import tqdm

from kata import impl as kata_impl
from kata import sft_data as D
from kata.config import MiniMindConfig
from kata.experiment import ComponentNotImplemented, Experiment, not_implemented_sentence

MODULE = "10_sft"
IGNORE = -100
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


# ---------------------------------------------------------------------------------------------
# 部件
# ---------------------------------------------------------------------------------------------

@dataclass
class Kit:
    template: Callable
    Dataset: type
    Model: type
    AdamW: type
    cosine_lr: Callable
    train_step: Callable
    impl: str
    sources: dict = field(default_factory=dict)     # 部件名 → 实际用的实现（exercises / solutions / …）


def _files(ns, exp) -> list:
    return [exp._display_path(__import__("pathlib").Path(f)) if not str(f).startswith("bug:") else f for f in ns._files]


def _probe_10(ns) -> None:
    from kata.tokenizer import CharTokenizer

    tok = CharTokenizer(sorted(set("ab\nsystemuserassistant")), special_tokens=SPECIALS)
    conv = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    text = ns.apply_chat_template(conv, add_generation_prompt=False)
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template 应返回 str，实际 {type(text).__name__}")
    x, y = ns.SFTDataset([conv], tok, 16)[0]
    if tuple(x.shape) != (16,) or tuple(y.shape) != (16,):
        raise ValueError(f"SFTDataset[0] 应返回两个长 16 的张量，实际 {tuple(x.shape)} / {tuple(y.shape)}")


def _probe_06(Model) -> None:
    cfg = MiniMindConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         vocab_size=8, max_position_embeddings=8)
    with torch.random.fork_rng(devices=[]):
        Model(cfg)(torch.zeros(1, 3, dtype=torch.long))


def _probe_08(ns) -> None:
    with torch.random.fork_rng(devices=[]):
        p = torch.nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        ns.AdamW([p], lr=1e-3).step()
        ns.cosine_lr(1, 10, 1.0, 1, 0.1)
        model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5))
        x = torch.tensor([[0, 1, 2]])
        ns.train_step(model, (x, x), torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=1.0, lr=0.1)


def check_module_10(impl: str) -> None:
    """本模块的 apply_chat_template / SFTDataset 在一个很小的例子上试一次；不行就抛 ComponentNotImplemented（一句话）。"""
    ns10 = kata_impl.resolve(MODULE, impl)
    try:
        _probe_10(ns10)
    except NotImplementedError as exc:
        name = "SFTDataset" if "SFTDataset" in str(exc) else "apply_chat_template"
        raise ComponentNotImplemented(name, impl, not_implemented_sentence(name, impl)) from exc
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip(": ")
        raise ComponentNotImplemented("SFTDataset", impl, not_implemented_sentence("SFTDataset", impl, detail)) from exc


class SFTExperiment(Experiment):
    """本模块实验的基类：先检查参数（validate）和你的模板 / SFTDataset，再开始打印——不行时输出只有那一句话。"""

    module = MODULE

    def validate(self) -> None:
        """子类检查自己的参数；有问题抛 kata.experiment.UsageError（一句话，退出码 1）。"""

    def execute(self) -> dict:
        if self.args is not None:
            self.preflight()
            self.validate()
            check_module_10(self.impl)
        return super().execute()


def kit(exp: Experiment) -> Kit:
    """本模块的模板与数据集必须来自 --impl（还没写完 → ComponentNotImplemented，一句话）；06、08 没写完就退回参考实现。"""
    impl = exp.impl
    check_module_10(impl)
    ns10 = kata_impl.resolve(MODULE, impl)
    sources = {"apply_chat_template": impl, "SFTDataset": impl}
    prov = {MODULE: {"impl": impl, "files": _files(ns10, exp)}}

    def with_fallback(module, probe, get, what):
        if impl.startswith("bug:"):   # bug bank 的条目只替换模块 10 的部件；其余模块用参考实现
            ref = kata_impl.resolve(module, "solutions")
            prov[module] = {"impl": "solutions", "files": _files(ref, exp), "reason": f"{impl} 只替换模块 10 的部件"}
            return ref, "solutions"
        try:
            ns = kata_impl.resolve(module, impl)
            probe(get(ns))
            prov[module] = {"impl": impl, "files": _files(ns, exp)}
            return ns, impl
        except (NotImplementedError, ComponentNotImplemented) as exc:
            first = str(exc).splitlines()[0] if str(exc) else "NotImplementedError"
            exp.note(f"你的{what}还没写完（{first}）：这次用参考实现 solutions/{module}/。")
        except (kata_impl.ImplLoadError, ValueError, LookupError, AttributeError) as exc:  # 例如 --impl bug:…、单个文件
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            exp.note(f"--impl {impl} 里没有可用的{what}（{first}）：这次用参考实现 solutions/{module}/。")
        ref = kata_impl.resolve(module, "solutions")
        prov[module] = {"impl": "solutions", "files": _files(ref, exp), "fallback_from": impl, "reason": first}
        return ref, "solutions"

    ns06, src06 = with_fallback("06_transformer_block", _probe_06, lambda ns: ns.MiniMindForCausalLM,
                                " MiniMindForCausalLM（模块 06）")
    ns08, src08 = with_fallback("08_training_loop", _probe_08, lambda ns: ns, "训练循环部件（模块 08 的 AdamW / cosine_lr / train_step）")
    sources.update({"MiniMindForCausalLM": src06, "AdamW": src08, "cosine_lr": src08, "train_step": src08})
    exp.record_provenance({"sft_parts": prov, "sources": sources})
    return Kit(ns10.apply_chat_template, ns10.SFTDataset, ns06.MiniMindForCausalLM, ns08.AdamW, ns08.cosine_lr,
               ns08.train_step, impl, sources)


# ---------------------------------------------------------------------------------------------
# 预训练（迷你版 kata train）
# ---------------------------------------------------------------------------------------------

@dataclass
class Base:
    """预训练好的底座：模型与词表都已经按 extend_for_chat 扩好（可以直接做 SFT）。"""
    state: dict                 # 扩好词表之后的 state_dict（每个变体从它复制一份）
    config: MiniMindConfig
    tok: object
    spec: dict
    pretrain_val_loss: float
    pretrain_losses: list
    pretrain_steps: int
    seconds: float


def model_config(vocab_size: int, dim: int, layers: int, max_len: int) -> MiniMindConfig:
    heads = 4
    return MiniMindConfig(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=2, vocab_size=vocab_size, max_position_embeddings=max_len)


def sft_alphabet() -> str:
    """聊天模板的角色名、全部题目模板的字符、可打印 ASCII（同 kata.sft 给字符级词表追加的那些）。"""
    return "systemuserassistant\n" + D.alphabet() + "".join(chr(c) for c in range(32, 127))


@torch.no_grad()
def _val_loss(model, corpus, seq_len, batch, iters, device) -> float:
    gen = torch.Generator().manual_seed(4321)
    was = model.training
    model.eval()
    tot = 0.0
    for _ in range(iters):
        x, y = corpus.get_batch("val", batch, seq_len, generator=gen, device=device)
        logits = model(x).logits
        tot += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1)))
    model.train(was)
    return tot / iters


def pretrain(exp, k: Kit, corpus, *, seed: int, dim: int, layers: int, steps: int, batch: int, seq_len: int,
             lr: float, max_len: int, desc: str = "预训练") -> Base:
    """在 corpus 上用 k 的部件训练 steps 步，再用 kata.sft.extend_for_chat 给词表加上指令数据的字符与特殊 token。"""
    import time

    from kata.sft import extend_for_chat

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    chars = corpus.tokenizer.chars
    config = model_config(len(chars), dim, layers, max_len)
    model = k.Model(config).to(exp.device)
    opt = k.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    gen = torch.Generator().manual_seed(10_000 + seed)
    warm = max(1, steps // 10)
    losses = []
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=None if exp.progress else True, leave=False, unit="step")
    for step in range(steps):
        x, y = corpus.get_batch("train", batch, seq_len, generator=gen, device=exp.device)
        out = k.train_step(model, (x, y), opt, max_grad_norm=1.0, lr=k.cosine_lr(step, steps, lr, warm, lr * 0.1))
        losses.append(float(out["loss"]))
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix_str(f"loss {losses[-1]:.3f}", refresh=False)
    bar.close()
    val = _val_loss(model, corpus, seq_len, batch, 8, exp.device)
    spec = {"type": "char", "chars": list(chars)}
    from kata.tokenizer import CharTokenizer

    tok = CharTokenizer(chars)
    quiet = lambda m: None  # noqa: E731  （追加了几个字符由下面的 note 说一次）
    model, tok, config, spec = extend_for_chat(model, tok, config, spec, sft_alphabet(), k.impl if k.sources[
        "MiniMindForCausalLM"] == k.impl else "solutions", quiet)
    state = {n: v.detach().clone() for n, v in model.state_dict().items()}
    return Base(state, config, tok, spec, val, losses, steps, time.perf_counter() - t0)


def fresh_model(k: Kit, base: Base, *, pretrained: bool, seed: int, device):
    """pretrained=True：底座的一份拷贝；False：同样的结构与词表，按 seed 随机初始化（--from-scratch 的做法）。"""
    torch.manual_seed(seed)
    model = k.Model(base.config)
    if pretrained:
        model.load_state_dict(base.state)
    return model.to(device)


# ---------------------------------------------------------------------------------------------
# SFT
# ---------------------------------------------------------------------------------------------

def labels_getter(k: Kit, tok, conversations, max_length: int, mask: str):
    """(dataset, get)：get(i) -> (input_ids, labels)。mask="assistant" 用你的 SFTDataset 的 labels（minimind 的规则），
    "all" 用 kata.sft._all_token_labels（每个真实 token 都进 loss，padding 除外）。"""
    from kata.sft import _all_token_labels

    ds = k.Dataset(conversations, tok, max_length)
    if mask == "all":
        return ds, _all_token_labels(ds, conversations, k.template, tok, max_length)
    if mask != "assistant":
        raise ValueError(f"mask 应为 'assistant' 或 'all'，实际 {mask!r}")
    return ds, ds.__getitem__


def shifted(labels: torch.Tensor) -> torch.Tensor:
    """SFTDataset 的 labels 与 input_ids 对齐（模型内部移位）；模块 08 的 train_step 逐位置算 loss：y[:, t] = labels[:, t+1]。"""
    y = torch.full_like(labels, IGNORE)
    y[:, :-1] = labels[:, 1:]
    return y


def batches_random(n: int, batch: int, steps: int, seed: int):
    rng = random.Random(f"sft-order:{seed}")
    for _ in range(steps):
        yield [rng.randrange(n) for _ in range(batch)]


def batches_epochs(n: int, batch: int, epochs: int, seed: int):
    """按 epoch 走：每个 epoch 把全部 n 条打乱后切成 batch（最后一个不满的也用上）。"""
    rng = random.Random(f"sft-epochs:{seed}")
    for _ in range(epochs):
        order = list(range(n))
        rng.shuffle(order)
        yield [order[i:i + batch] for i in range(0, n, batch)]


def sft_steps(exp, k: Kit, model, get, batches: Sequence[list], *, opt, lr: float, total_steps: int, start: int,
              warmup: int, device, bar=None) -> list:
    """对 batches 里的每个下标列表做一次更新；返回每步的 loss。发散（非有限 loss）时抛 FloatingPointError。"""
    losses = []
    model.train()
    for j, idx in enumerate(batches):
        xs, ys = zip(*(get(i) for i in idx))
        x = torch.stack(xs).to(device)
        y = shifted(torch.stack(ys)).to(device)
        step = start + j
        out = k.train_step(model, (x, y), opt, max_grad_norm=1.0,
                           lr=k.cosine_lr(step, total_steps, lr, min(warmup, total_steps), lr * 0.1))
        loss = float(out["loss"])
        if not math.isfinite(loss):
            raise FloatingPointError(f"第 {step} 步 loss = {loss}")
        losses.append(loss)
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix_str(f"loss {loss:.3f}", refresh=False)
    return losses


def new_optimizer(k: Kit, model, lr: float):
    return k.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)


def sft_run(exp, k: Kit, model, get, n: int, *, steps: int, batch: int, lr: float, seed: int, desc: str) -> list:
    """随机抽 batch 训练 steps 步（kata.sft 的做法），返回每步 loss。"""
    opt = new_optimizer(k, model, lr)
    bar = tqdm(total=steps, desc=desc, disable=None if exp.progress else True, leave=False, unit="step")
    try:
        return sft_steps(exp, k, model, get, list(batches_random(n, batch, steps, seed)), opt=opt, lr=lr,
                         total_steps=steps, start=0, warmup=max(1, steps // 20), device=exp.device, bar=bar)
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# 评估
# ---------------------------------------------------------------------------------------------

def exact_match(model, tok, k: Kit, examples, device, max_new_tokens: int = 16) -> dict:
    """kata.sft.evaluate_tasks：每个任务的精确匹配、停在 <|im_end|> 的比例、前 16 个样例。"""
    from kata.sft import evaluate_tasks

    return evaluate_tasks(model, tok, k.template, examples, device=device, max_new_tokens=max_new_tokens)


@torch.no_grad()
def span_nll(model, tok, k: Kit, conversations, *, max_length: int, device, which: str = "assistant",
             batch: int = 32) -> float:
    """teacher forcing 下，一类 token 的平均负对数似然（nats/token）。

    which="assistant"：你的 SFTDataset 标出的 token（助手回复 + 它的 <|im_end|>\\n）；
    which="user"：user 消息的内容（不含角色头与 <|im_end|>），用模板渲染出的字符位置找出来。
    """
    ds = k.Dataset(conversations, tok, max_length)
    xs, ms = [], []
    for i, conv in enumerate(conversations):
        x, lab = ds[i]
        if which == "assistant":
            m = lab != IGNORE
        else:
            m = torch.zeros_like(x, dtype=torch.bool)
            for lo, hi in user_spans(k, tok, conv):
                m[lo:min(hi, max_length)] = True
        xs.append(x)
        ms.append(m)
    was = model.training
    model.eval()
    tot, cnt = 0.0, 0
    for s in range(0, len(xs), batch):
        x = torch.stack(xs[s:s + batch]).to(device)
        m = torch.stack(ms[s:s + batch]).to(device)
        logp = model(x).logits[:, :-1].float().log_softmax(-1)
        nll = -logp.gather(-1, x[:, 1:, None])[..., 0]
        mm = m[:, 1:]
        tot += float(nll[mm].sum())
        cnt += int(mm.sum())
    model.train(was)
    return tot / max(cnt, 1)


def user_spans(k: Kit, tok, conv) -> list:
    """user 消息内容在 token 序列里的 [起, 止)：逐条消息渲染模板前缀来定位（字符级分词器：一字一 token，特殊 token 一个）。"""
    spans = []
    for j, m in enumerate(conv):
        if m["role"] != "user":
            continue
        prefix = k.template(conv[:j]) if j else ""
        head = len(tok.encode(prefix + "<|im_start|>user\n"))
        spans.append((head, head + len(tok.encode(m["content"]))))
    return spans


def acc_rows(before: Optional[dict], after: dict, tasks=D.TASKS) -> list:
    rows = []
    for t in [t for t in tasks if t in after["accuracy"]] + ["all"]:
        rows.append([t, f"{before['accuracy'][t]:.0%}" if before else "—", f"{after['accuracy'][t]:.0%}"])
    rows.append(["停在 <|im_end|>", f"{before['stop_rate']:.0%}" if before else "—", f"{after['stop_rate']:.0%}"])
    return rows


def mean(xs) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(xs) / len(xs) if xs else float("nan")


# ---------------------------------------------------------------------------------------------
# 用户那一轮：模型会不会替用户说话
# ---------------------------------------------------------------------------------------------

_SLOT = {"a": r"\d{1,2}", "b": r"\d{1,2}", "n": r"\d{1,3}", "c": r"[a-z]", "w": r"[a-z]+", "t": r"[a-z]+ [a-z]+ [a-z]+"}


def _question_regex():
    import re

    pats = []
    for per_lang in D.TEMPLATES.values():
        for templates in per_lang.values():
            for t in templates:
                parts = re.split(r"\{([abcnwt])\}", t)
                pats.append("".join(_SLOT[p] if i % 2 else re.escape(p) for i, p in enumerate(parts)))
    return re.compile("^(?:" + "|".join(pats) + ")$")


QUESTION = _question_regex()


def is_task_question(text: str) -> bool:
    """text 是不是一道格式正确的题（逐字符合 kata.sft_data 的某个问法模板，数字 / 单词槽位随便填）。"""
    return bool(QUESTION.match(text))


def write_user_turn(model, tok, prefix: str, *, temperature: float, seed: int, device, max_new_tokens: int = 48):
    """从 ``<|im_start|>user\\n`` + prefix 接着生成，到 <|im_end|> 停。返回 (写出的文字, 是否自己用 <|im_end|> 结束了这一轮)。"""
    from kata.train import stream

    im_end = tok.encode("<|im_end|>")[0]
    out = stream(model, tok, "<|im_start|>user\n" + prefix, max_new_tokens=max_new_tokens, temperature=temperature,
                 seed=seed, device=device, eos_id=im_end)
    closed = out.endswith("<|im_end|>")
    return (out[: -len("<|im_end|>")] if closed else out), closed


def user_turn_probe(model, tok, held, *, n_free: int, seed: int, device) -> dict:
    """两种问法：

    - free：只给 ``<|im_start|>user\\n``，按温度 0.8 采样 n_free 次——模型自己“编”一道题吗？
    - mid：给出 held-out 题目的前一半（``<|im_start|>user\\nWhat is 4``），贪心续写——它会把题补完整并用 <|im_end|> 收尾吗？

    well_formed = 生成的（或补全后的）用户消息逐字符合某个题目模板。
    """
    free = []
    for i in range(n_free):
        text, closed = write_user_turn(model, tok, "", temperature=0.8, seed=seed * 1000 + i, device=device)
        free.append({"text": text, "closed": closed, "well_formed": closed and is_task_question(text)})
    mid = []
    for e in held:
        cut = max(1, len(e.prompt) // 2)
        text, closed = write_user_turn(model, tok, e.prompt[:cut], temperature=0.0, seed=0, device=device)
        full = e.prompt[:cut] + text
        mid.append({"prefix": e.prompt[:cut], "completion": text, "closed": closed,
                    "well_formed": closed and is_task_question(full), "exact": closed and full == e.prompt,
                    "empty": closed and not text.strip()})
    rate = lambda rows, key: sum(r[key] for r in rows) / max(len(rows), 1)  # noqa: E731
    return {"free_closed": rate(free, "closed"), "free_well_formed": rate(free, "well_formed"),
            "mid_closed": rate(mid, "closed"), "mid_well_formed": rate(mid, "well_formed"),
            "mid_exact": rate(mid, "exact"), "mid_empty": rate(mid, "empty"), "free_samples": free[:6], "mid_samples": mid[:6]}
