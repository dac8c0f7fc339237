"""模块 08 四个实验共用的小工具：取你的训练循环部件、用它们训练 kata 的小语言模型。

模型本身（RMSNorm / RoPE / 注意力 / FeedForward）来自 kata.tinylm（优先用你在 01–04 写的部件，
没写完的退回参考实现，provenance 里写明）；**被研究的是你在本模块写的** cross_entropy、AdamW、
cosine_lr、clip_grad_norm、train_step、save_checkpoint / load_checkpoint：它们来自 --impl。
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from kata import impl as kata_impl
from kata.experiment import ComponentNotImplemented, Experiment, not_implemented_sentence
from kata.tinylm import TinyLMConfig, build_tiny_lm, evaluate

MODULE = "08_training_loop"


def _probe(ns, name: str) -> None:
    """在很小的输入上试一次某个部件；还没实现时抛 NotImplementedError。"""
    if name == "cross_entropy":
        ns.cross_entropy(torch.randn(2, 3, 5), torch.tensor([[0, 1, -100], [2, 3, 4]]))
    elif name == "AdamW":
        p = torch.nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        ns.AdamW([p], lr=0.1).step()
    elif name == "cosine_lr":
        ns.cosine_lr(1, 10, 0.1, warmup_steps=2, min_lr=0.01)
    elif name == "minimind_lr":
        ns.minimind_lr(1, 10, 0.1)
    elif name == "clip_grad_norm":
        p = torch.nn.Parameter(torch.ones(2))
        p.grad = torch.ones(2)
        ns.clip_grad_norm([p], 1.0)
    elif name == "train_step":
        model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.Linear(4, 5))
        x = torch.tensor([[0, 1, 2]])
        ns.train_step(model, (x, x), torch.optim.SGD(model.parameters(), lr=0.1), max_grad_norm=1.0)
    elif name in ("save_checkpoint", "load_checkpoint"):
        model = torch.nn.Linear(2, 2)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with tempfile.TemporaryDirectory() as tmp:
            ns.save_checkpoint(Path(tmp) / "ck.pth", model, opt, 1)
            ns.load_checkpoint(Path(tmp) / "ck.pth", model, opt)


def pieces(exp, names) -> object:
    """按 --impl 取本模块的部件并逐个试跑；哪个还没实现，就用一句中文说是哪个文件（ComponentNotImplemented）。"""
    ns = kata_impl.resolve(MODULE, exp.impl)
    for name in names:
        state = (torch.get_rng_state(),)
        try:
            _probe(ns, name)
        except NotImplementedError as exc:
            raise ComponentNotImplemented(name, exp.impl, not_implemented_sentence(name, exp.impl)) from exc
        except Exception as exc:
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip(": ")
            raise ComponentNotImplemented(name, exp.impl, not_implemented_sentence(name, exp.impl, detail)) from exc
        finally:
            torch.set_rng_state(state[0])
    exp.record_provenance({MODULE: {"impl": exp.impl, "files": [exp._display_path(Path(f)) for f in ns._files
                                                               if not str(f).startswith("bug:")] or ns._files}})
    return ns


class TrainingExperiment(Experiment):
    """本模块实验的基类：先试跑 needs 里的部件，再开始打印——还没实现时，输出只有那一句话（退出码 2）。"""

    needs: tuple = ()

    def execute(self) -> dict:
        if self.args is not None and self.needs:
            pieces(self, self.needs)
        return super().execute()


def tiny_model(exp, corpus, *, dim: int, layers: int, seq_len: int, seed: int, **cfg_kw):
    """kata 的小语言模型（minimind 结构的缩小版），部件优先取学习者 01–04 的实现。"""
    cfg = TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, dim=dim, n_layers=layers, n_heads=4,
                       max_seq_len=seq_len, **cfg_kw)
    model, provenance = build_tiny_lm(cfg, impl=exp.impl, seed=seed)
    exp.record_provenance({"tiny_lm": provenance})
    return model.to(exp.device)


@dataclass
class Run:
    steps: list = field(default_factory=list)        # 第几次更新（从 0 数）
    losses: list = field(default_factory=list)       # 这次更新所用 batch 的 loss（accum 时是各 micro-batch 的平均）
    grad_norms: list = field(default_factory=list)   # 裁剪前的全局梯度范数（记录时）
    lrs: list = field(default_factory=list)
    diverged_at: Optional[int] = None
    val_loss: float = float("nan")

    def to_dict(self) -> dict:
        return {"steps": self.steps, "losses": self.losses, "grad_norms": self.grad_norms, "lrs": self.lrs,
                "diverged_at": self.diverged_at, "val_loss": self.val_loss}


def train(ns, model, corpus, optimizer, *, steps: int, batch: int, seq_len: int, lr_at: Callable[[int], float],
          accum: int = 1, max_grad_norm: Optional[float] = None, record_norm: bool = False, seed: int = 0,
          start: int = 0, generator: Optional[torch.Generator] = None, run: Optional[Run] = None,
          eval_iters: int = 8, progress: bool = True, desc: str = "", device="cpu") -> Run:
    """用学习者的 train_step 训练 steps 次更新（每次 accum 个大小 batch 的 micro-batch）。

    - 数据来自 generator（没给就用 seed 新建一个）：同一个 seed 的变体看到完全相同的数据；
    - record_norm：没有裁剪时也用 max_grad_norm=inf 记下全局梯度范数（系数是 1，不改梯度）；
    - loss 或梯度范数不再有限时停下，diverged_at = 那次更新的序号（发散是结果，不是崩溃）；
    - 结束时（没发散）在验证集上评估 eval_iters 个固定 batch。
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    run = run or Run()
    clip = max_grad_norm if max_grad_norm is not None else (math.inf if record_norm else None)
    model.train()
    bar = tqdm(total=steps, desc=desc or None, disable=None if progress else True, leave=False, dynamic_ncols=True,
               unit="step")
    try:
        for step in range(start, start + steps):
            lr = lr_at(step)
            micro_losses, out = [], {}
            for micro in range(accum):
                x, y = corpus.get_batch("train", batch, seq_len, generator=gen, device=device)
                out = ns.train_step(model, (x, y), optimizer, accum_steps=accum, micro_step=micro,
                                    max_grad_norm=clip, lr=lr)
                micro_losses.append(out["loss"])
            loss = sum(micro_losses) / accum
            norm = out.get("grad_norm")
            run.steps.append(step)
            run.losses.append(loss)
            run.lrs.append(lr)
            if clip is not None:
                run.grad_norms.append(norm)
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=None, refresh=False)
            if not math.isfinite(loss) or (norm is not None and not math.isfinite(norm)) or not _finite(model):
                run.diverged_at = step
                break
    finally:
        bar.close()
    if run.diverged_at is None:
        run.val_loss = evaluate(model, corpus, split="val", seq_len=seq_len, batch_size=batch, iters=eval_iters)
    return run


def _finite(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().cpu() for p in model.parameters()])
