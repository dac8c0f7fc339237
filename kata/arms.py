"""多种子对照实验的统一形状：变体（arm）× 种子 → 逐种子结果 → 均值 ± 标准差的表 → 逐种子配对的差 → 一句结论。

一个实验文件只需要写它的“科学”：有哪些变体（每个变体 = TinyLMConfig 上的几处改动）、测什么、
预期方向是什么。训练循环、表格和“差距是否超过种子间波动”的判断都在这里，写一次。

用法::

    arms = [Arm("rms", "RMSNorm", "RMSNorm", {"norm": "rmsnorm"}),
            Arm("none", "不归一化", "no norm", {"norm": "none"})]
    run_arms(self, corpus, arms, seeds, steps=300, batch=16, seq_len=64, lr=3e-3,
             base_cfg={"dim": 64, "n_layers": 4}, require=("RMSNorm",))
    self.print_table(*arms_table(arms))
    cmp = paired(arms[0].runs, arms[1].runs)          # d_s = none(s) − rms(s)
    self.conclude(describe_paired(cmp, "RMSNorm", "不归一化"))

配对：同一个种子的所有变体看到完全相同的 batch 顺序（``kata.tinylm.train_lm`` 的数据只由种子决定）、
相同的初始化种子，所以逐种子的差 d_s 去掉了“这一批数据恰好好学”这部分噪声。判断规则（写在一处，所有实验共用）：
**所有种子方向一致，且 |均值| > 2 × 标准误**（标准误 = 差的样本标准差 / √n）才算“超过种子间的波动”；
只有 1 个种子时不下判断。
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from kata.experiment import fmt_mean_std, pad, summarize, tidy_spacing


@dataclass
class Arm:
    """对照实验的一个变体。

    ``cfg``：在实验的 ``base_cfg`` 之上改动的 TinyLMConfig 字段；``build``（可选）：``build(seed) -> (model, provenance)``，
    变体不是一个 TinyLMConfig 能描述时（例如别的模型类）用它代替 cfg；``train_kwargs``：只对这个变体改的训练设置
    （例如只给一个变体加 warmup：``{"warmup_steps": 40}``）。``runs`` 由 run_arms 填：每个种子一条
    ``TrainResult.to_dict()`` 加上 ``seed``。
    """
    key: str
    zh: str
    en: str
    cfg: dict = field(default_factory=dict)
    build: Optional[Callable] = None
    train_kwargs: dict = field(default_factory=dict)
    tag: object = None              # 实验自己给这个变体的标识（例如 (层数, 位置)），run_arms 不看它
    runs: list = field(default_factory=list)
    n_params: Optional[int] = None

    @property
    def label(self) -> tuple[str, str]:
        return (self.zh, self.en)

    def finals(self, metric: str = "final_val_loss") -> list:
        return final_values(self.runs, metric)


def final_values(runs: Sequence[dict], metric: str = "final_val_loss") -> list:
    """每个种子的最终指标；发散的记为 nan（summarize 会单独数出来，不参与均值）。"""
    out = []
    for r in runs:
        v = r.get(metric)
        out.append(float("nan") if r.get("diverged_at") is not None or v is None else float(v))
    return out


def run_arms(exp, corpus, arms: Sequence[Arm], seeds: Sequence[int], *, steps: int, batch: int, seq_len: int,
             lr: float, base_cfg: Optional[dict] = None, require: Sequence[str] = (), eval_every: Optional[int] = None,
             eval_iters: int = 10, warmup_steps: int = 0, grad_clip: Optional[float] = 1.0,
             final_eval_iters: Optional[int] = None, train_kwargs: Optional[dict] = None,
             before_train: Optional[Callable] = None, after_train: Optional[Callable] = None,
             unigram: Optional[float] = None) -> None:
    """把每个变体在每个种子上各训练一次，结果追加到 ``arm.runs``。

    ``final_eval_iters``：训练结束后再用这么多个固定的验证 batch 评估一次，作为 ``final_val_loss``
    （训练中的曲线只用 eval_iters 个 batch 省时间；拿来比较的最后这个数用更多 batch，估计更准）。
    所有模型用同样的验证 batch。``before_train(arm, seed, model)``：初始化时就要测的量（返回的 dict 并入这一条记录）；
    ``after_train(arm, seed, model, run_dict)``：训练完的模型还要再测点什么时用（可以往 run_dict 里加字段）。
    ``unigram``：给了“只按字符频率猜”的基线 loss 时，停在这个水平的种子在进度行里标出来（规则见 kata.experiment.run_status）。
    """
    from kata.experiment import run_status
    from kata.tinylm import TinyLMConfig, build_tiny_lm, count_parameters, evaluate, train_lm

    base_cfg = dict(base_cfg or {})
    base_cfg.setdefault("max_seq_len", seq_len)
    eval_every = eval_every or max(1, steps // 10)
    printed = []   # 已经打印过的“部件来源”：和前一个变体相同就不再重复
    for arm in arms:
        for s in seeds:
            if arm.build is not None:
                model, prov = arm.build(s)
            else:
                cfg = TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, **{**base_cfg, **arm.cfg})
                model, prov = build_tiny_lm(cfg, impl=exp.impl, require=require, seed=s)
            model.to(exp.device)
            exp.record_provenance({f"tinylm[{arm.key}]": prov})
            if prov and prov not in printed:
                who = "各部件的来源" if not printed else f"[{arm.zh}] 各部件的来源"
                print(f"{who}：" + "，".join(f"{k} ← {v}" for k, v in prov.items()))
                printed.append(prov)
            arm.n_params = count_parameters(model)
            at_init = before_train(arm, s, model) if before_train is not None else None
            kw = dict(steps=steps, batch_size=batch, seq_len=seq_len, lr=lr, warmup_steps=warmup_steps,
                      grad_clip=grad_clip, eval_every=eval_every, eval_iters=eval_iters, seed=s, device=exp.device,
                      progress=exp.progress, desc=f"{arm.en} seed {s}")
            kw.update(train_kwargs or {})
            kw.update(arm.train_kwargs)
            res = train_lm(model, corpus, **kw)
            d = res.to_dict()
            d["seed"] = s
            d.update(at_init or {})
            if final_eval_iters and res.diverged_at is None:
                d["final_val_loss_curve"] = d["final_val_loss"]
                d["final_val_loss"] = evaluate(model, corpus, split="val", seq_len=seq_len, batch_size=batch,
                                               iters=final_eval_iters, device=exp.device)
                d["final_eval_iters"] = final_eval_iters
            if after_train is not None:
                after_train(arm, s, model, d)
            arm.runs.append(d)
            state = (f"发散于第 {res.diverged_at} 步" if res.diverged_at is not None
                     else f"val loss {d['final_val_loss']:.3f}")
            if unigram is not None and run_status(d, unigram) == "stuck":
                state += "（停在只按字符频率猜的水平）"
            print(f"  {pad(arm.zh, 28)} seed {s}: {state}，{res.tokens_per_sec:,.0f} tokens/s，{res.wall_time_s:.1f} 秒")


def arms_table(arms: Sequence[Arm], *, metric: str = "final_val_loss", what: str = "验证 loss",
               fmt: str = ".3f") -> tuple[list, list]:
    """(headers, rows)，可直接交给 ``Experiment.print_table``：变体、参数量、各种子的均值 ± 标准差。"""
    n = max((len(a.runs) for a in arms), default=0)
    headers = ["变体", "参数量", f"{what}（{n} 个种子）" if n > 1 else what]
    rows = [[a.zh, f"{a.n_params:,}" if a.n_params else "—", fmt_mean_std(a.finals(metric), fmt)] for a in arms]
    return headers, rows


def paired(a_runs: Sequence[dict], b_runs: Sequence[dict], metric: str = "final_val_loss") -> dict:
    """按种子配对：d_s = b(s) − a(s)，只用两边都有限（没有发散）的种子。

    返回各种子的差、均值、样本标准差、标准误，以及两个判断（种子少于 2 个时为 None）：
    ``same_sign``（所有种子方向一致）和 ``beyond_noise``（方向一致且 |均值| > 2·标准误）。
    """
    a = {r["seed"]: v for r, v in zip(a_runs, final_values(a_runs, metric))}
    seeds, diffs = [], []
    for r, vb in zip(b_runs, final_values(b_runs, metric)):
        va = a.get(r["seed"])
        if va is not None and math.isfinite(va) and math.isfinite(vb):
            seeds.append(r["seed"])
            diffs.append(vb - va)
    s = summarize(diffs)
    out = {"seeds": seeds, "diffs": diffs, "mean": s["mean"], "std": s["std"], "n": s["n"], "se": None,
           "same_sign": None, "beyond_2se": None, "beyond_noise": None}
    if s["n"] >= 2 and s["std"] is not None:
        se = s["std"] / math.sqrt(s["n"])
        out["se"] = se
        out["same_sign"] = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
        out["beyond_2se"] = abs(s["mean"]) > 2 * se
        out["beyond_noise"] = bool(out["same_sign"] and out["beyond_2se"])
    return out


def paired_row(name_a: str, name_b: str, p: dict, fmt: str = ".3f") -> list:
    """配对表的一行：比较、逐种子的差、均值 ± 标准差、是否超过波动。"""
    per_seed = "、".join(f"{d:+{fmt}}" for d in p["diffs"]) or "—"
    if p["n"] == 0:
        mean = "—"
    else:
        mean = f"{p['mean']:+{fmt}}" + (f" ± {p['std']:{fmt}}" if p["std"] is not None else "")
    verdict = {True: "超过波动", False: "在波动之内", None: "种子不够，无法判断"}[p["beyond_noise"]]
    return [f"{name_b} − {name_a}", per_seed, mean, verdict]


PAIRED_HEADERS = ["比较", "逐种子的差", "均值 ± 标准差", "判断"]


def describe_paired(p: dict, name_a: str, name_b: str, *, what: str = "验证 loss", lower_is_better: bool = True,
                    expected: Optional[str] = None, fmt: str = ".3f") -> str:
    """一句中文结论，完全由配对结果算出：name_b 比 name_a 高/低多少，是否超过种子间波动，与预期是否一致。

    ``expected``：'lower' / 'higher' / None —— 预期 name_b 的 what 更低还是更高（说明与预期相符还是相反）。
    """
    if p["n"] == 0:
        return tidy_spacing(f"{name_a} 与 {name_b} 没有两边都训练成功（没有发散）的种子，无法比较{what}。")
    d = p["mean"]
    word = "低" if d < 0 else "高"
    better = (d < 0) == lower_is_better
    head = tidy_spacing(f"{name_b} 的{what}比 {name_a} {word} {abs(d):{fmt}}"
                        f"（{'更好' if better else '更差'}；逐种子的差 " + "、".join(f"{x:+{fmt}}" for x in p["diffs"]) + "）")
    if p["beyond_noise"] is None:
        tail = "；只有 1 个可比的种子，无法判断这个差距是否超过随机波动（完整模式会跑多个种子）"
    elif p["beyond_noise"]:
        tail = f"；{p['n']} 个种子方向一致且 |均值| > 2 倍标准误（{p['se']:{fmt}}）：超过了种子间的波动，不像是偶然"
    else:
        why = "各种子方向不一致" if not p["same_sign"] else f"|均值| 没有超过 2 倍标准误（{p['se']:{fmt}}）"
        tail = f"；{why}：差距在种子间的波动之内，这次的数据既没有证实也没有否定两者的差别"
    text = head + tail + "。"
    if expected in ("lower", "higher") and p["beyond_noise"]:
        agrees = (d < 0) == (expected == "lower")
        text += "方向与预期一致。" if agrees else "方向与预期相反——如实记录，值得想想为什么。"
    return text
