"""实验 3：batch 大小——同样多的 token，batch 翻倍什么时候不再让步数减半？

同一个模型（你的 MiniMindForCausalLM，kata train 的 tiny 预设：hidden 64、2 层），同样的 token 预算，
只改 batch 大小 B（每步的序列数）。预算固定，所以 B 翻倍 = 更新次数减半。学习率随 B 缩放：

  sqrt 规则：lr(B) = lr₀·√(B/B₀)    —— 本实验的主规则。对 Adam 这类按 √v 归一化步长的优化器，
              Malladi et al. 2022（On the SDEs and Scaling Rules for Adaptive Gradient Algorithms）推出的就是平方根；
  linear 规则：lr(B) = lr₀·B/B₀     —— Goyal et al. 2017（Accurate, Large Minibatch SGD）给 SGD 的线性规则，作为对照。

两条规则在 B = B₀ 时相同（那一组只训练一次）。所有 batch 大小用同一个 token 数、同一个种子时看到**同一批样本、
同样的顺序**（你的 rank_batch 决定），只是分组不同。学习率是 warmup（5%）+ 余弦衰减到 10%，铺满每次训练的预算；
预算（token 数）对所有 B 相同，所以在同一个 token 数上，每次训练都处在调度的同一位置（只是峰值按规则不同）。

报告：
1. 每个 B 在预算用完时的 held-out loss（多个种子，均值 ± 标准差）；
2. 达到几个目标 loss 各要多少步 / 多少 token（held-out 曲线上插值）；
3. McCandlish et al. 2018（An Empirical Model of Large-Batch Training）的步数–样本数关系
   S(B) = S_min·(1 + B_crit/B)、E(B) = E_min·(1 + B/B_crit)：由测到的 (B, E) 拟合出临界 batch B_crit——
   B 远小于它时翻倍 batch 几乎让步数减半（不多花样本）；远大于它时翻倍只多花样本、几乎不省步数。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402
import statistics  # noqa: E402

import numpy as np  # noqa: E402

from _batch_precision_tools import TrainRun, build_model, model_config, resolve_pieces  # noqa: E402
from kata.arms import paired  # noqa: E402
from kata.experiment import STUCK_MARGIN, Experiment, fmt_mean_std, summarize, unigram_baseline  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

RULES = ("sqrt", "linear")
RULE_ZH = {"sqrt": "√ 规则", "linear": "线性规则"}
EVAL_RATIO = 2 ** (1 / 3)  # 评估点按步数几何分布：每 3 个点步数翻一倍
SPEEDUP_THRESHOLD = 1.5   # 翻倍 batch 后步数只少到 1/1.5 以下 → “不再减半”（McCandlish 模型里这恰是 B_crit/2 → B_crit 那次翻倍）


def lr_for(rule: str, batch: int, base_batch: int, base_lr: float) -> float:
    power = 0.5 if rule == "sqrt" else 1.0
    return base_lr * (batch / base_batch) ** power


def eval_points(steps: int, ratio: float = None) -> list:
    """在哪些步数之后评估：1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, …（按 ratio 几何增长）直到 steps。

    几何间隔让“容易的目标”（训练早期就达到）在小 batch、步数多的训练里也有足够细的插值，
    又不至于在几百步的训练里评估几百次。
    """
    ratio = ratio or EVAL_RATIO
    pts, x = set(), 1.0
    while x < steps:
        pts.add(int(round(x)))
        x *= ratio
    pts.add(steps)
    return sorted(p for p in pts if 1 <= p <= steps)


def crossing(tokens: list, losses: list, target: float):
    """held-out 曲线第一次降到 target 以下时用了多少 token（相邻两个评估点之间线性插值）；没降到 → None。"""
    for i, (t, l) in enumerate(zip(tokens, losses)):
        if not math.isfinite(l):
            return None
        if l <= target:
            if i == 0:
                return float(t)
            t0, l0 = tokens[i - 1], losses[i - 1]
            return float(t0 + (t - t0) * (l0 - target) / (l0 - l)) if l0 != l else float(t)
    return None


def fit_mccandlish(batches: list, examples: list) -> dict:
    """E(B) = E_min + S_min·B（等价于 S = S_min·(1 + B_crit/B)）的加权最小二乘（按相对误差加权）。

    返回 S_min（步）、E_min（样本）与 B_crit = E_min / S_min（序列）；S_min ≤ 0 表示在测过的范围里
    步数一直按比例减少（临界 batch 比测过的最大 B 还大），E_min ≤ 0 表示拟合没有意义。
    """
    keep = [(x, y) for x, y in zip(batches, examples) if y > 0]   # 0 = 初始化时就已经在目标之下：不含信息
    b = np.asarray([x for x, _ in keep], dtype=float)
    e = np.asarray([y for _, y in keep], dtype=float)
    if len(b) < 3:
        return {"ok": False, "reason": f"只有 {len(b)} 个 batch 大小达到了目标，至少要 3 个才能拟合"}
    slope, intercept = np.polyfit(b, e, 1, w=1.0 / e)
    pred = intercept + slope * b
    r2 = 1 - float(((e - pred) ** 2).sum() / max(((e - e.mean()) ** 2).sum(), 1e-30))
    out = {"S_min": float(slope), "E_min": float(intercept), "r2": r2, "ok": False, "reason": "", "n_batches": len(b),
           "batches": [int(x) for x in b]}
    if slope <= 0:
        out["reason"] = "拟合出的 S_min ≤ 0：在测过的范围里样本数没有随 B 增加，临界 batch 比测过的最大 B 还大"
        out["beyond_range"] = True
    elif intercept <= 0:
        out["reason"] = "拟合出的 E_min ≤ 0：数据不符合 McCandlish 的形式（小 B 端反而更费样本），不报告 B_crit"
    else:
        out["ok"] = True
        out["B_crit"] = float(intercept / slope)
    return out


class BatchSize(Experiment):
    name = "exp3_batch_size"
    module = "09_pretrain"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = ("它测的是同样 token 预算下 batch 大小与更新次数的权衡，这是优化层面的现象；"
                        "但临界 batch 的具体数值取决于数据的梯度噪声，换了语料数值会变")
    title = "实验 3：batch 大小——同样多的 token，batch 翻倍什么时候不再让步数减半？"
    description = ("用你的 MiniMindForCausalLM、AdamW、cosine_lr、train_step、rank_batch、evaluate，在同样的 token 预算下\n"
                   "扫 batch 大小（学习率按 √ 规则缩放，完整模式另有线性规则对照），报告最终 held-out loss、\n"
                   "达到目标 loss 的步数，以及拟合出的临界 batch（McCandlish et al. 2018）。")
    default_threads = 1

    def add_arguments(self, parser):
        parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, metavar="B",
                            help="要比较的 batch 大小（每步的序列数，默认：快速 4 8 16 32 64，完整 4 8 16 32 64 128）")
        parser.add_argument("--rules", choices=("sqrt", "linear", "both"), default=None,
                            help="学习率随 batch 的缩放规则（默认：快速 sqrt，完整 both）")
        parser.add_argument("--base-batch", type=int, default=16, help="学习率的参照 batch B₀（默认 16，同 kata train 的 tiny 预设）")
        parser.add_argument("--base-lr", type=float, default=3e-3, help="B₀ 时的峰值学习率 lr₀（默认 3e-3，同 tiny 预设）")
        parser.add_argument("--tokens", type=int, default=None,
                            help="每次训练的 token 预算（默认：快速 131072，完整 196608；会向上取整到 max(B)·seq_len 的倍数）")
        parser.add_argument("--seq-len", type=int, default=64, help="序列长度（默认 64）")

    def execute(self):
        if self.args is not None:   # 先试跑你的部件：哪个有错，输出就只有那一句话
            self.pieces = resolve_pieces(self.impl)
        return super().execute()

    # ------------------------------------------------------------------------------------------
    def run(self):
        pieces = getattr(self, "pieces", None) or resolve_pieces(self.impl)
        self.record_provenance({"pieces": pieces.provenance, "fallbacks": pieces.fallbacks})
        if pieces.fallbacks:
            self.note("注意：这次有部件用的是参考实现（你的还没实现）：" + "、".join(pieces.fallbacks)
                      + "；结果 JSON 的 provenance 里逐个记着来源。")
        from kata.train import PRESETS

        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        T = self.args.seq_len
        batches = sorted(set(self.args.batch_sizes or self.by_mode(smoke=[2, 4, 8], quick=[4, 8, 16, 32, 64],
                                                                   full=[4, 8, 16, 32, 64, 128])))
        rules = {"sqrt": ["sqrt"], "linear": ["linear"], "both": ["sqrt", "linear"]}[
            self.args.rules or self.by_mode(smoke="both", quick="sqrt", full="both")]
        B0, lr0 = self.args.base_batch, self.args.base_lr
        grain = max(batches) * T
        budget = self.args.tokens or self.by_mode(smoke=1024, quick=131072, full=196608)
        budget = grain * math.ceil(budget / grain)
        eval_seqs = self.by_mode(smoke=8, quick=128, full=128)        # 中途评估：held-out 前 128 段（8192 个字符）
        final_seqs = self.by_mode(smoke=8, quick=512, full=512)       # 最后一次：前 512 段（32768 个字符）
        seeds = self.seeds(full=3, quick=2, smoke=1)
        shape = dict(PRESETS["tiny"]["model"]) if not self.smoke else dict(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
        cfg = model_config(corpus.tokenizer.vocab_size, T, **shape)
        warmup_frac = 0.05
        self.config(model=cfg.to_dict(), batch_sizes=batches, rules=rules, base_batch=B0, base_lr=lr0,
                    token_budget=budget, seq_len=T, eval_steps=f"0 and round({EVAL_RATIO:.4f}^k) up to the last step (geometric)", eval_seqs=eval_seqs,
                    final_eval_seqs=final_seqs, warmup_frac=warmup_frac, min_lr_ratio=0.1, weight_decay=0.1,
                    betas=(0.9, 0.95), grad_clip=1.0, speedup_threshold=SPEEDUP_THRESHOLD,
                    lr_rule={"sqrt": "lr0*sqrt(B/B0)", "linear": "lr0*B/B0"},
                    schedule="warmup 5% of steps + cosine to 10% over each run's budget; same token budget for every B, "
                             "so the schedule is aligned in tokens")

        Dataset = pieces.PretrainDataset
        train_ds, val_ds = Dataset(corpus.train_ids, T), Dataset(corpus.val_ids, T)
        n_params = sum(p.numel() for p in build_model(pieces, cfg, 0).parameters())
        print(f"模型：MiniMindForCausalLM（hidden {cfg.hidden_size}、{cfg.num_hidden_layers} 层、{n_params:,} 个参数）；"
              f"每次训练 {budget:,} 个 token（seq {T}）；batch {batches}；规则 {rules}（B₀ = {B0}，lr₀ = {lr0:g}）；"
              f"{len(seeds)} 个种子")

        runs: dict = {}   # (rule, B) -> [每个种子的记录]
        for rule in rules:
            for B in batches:
                if rule == "linear" and "sqrt" in rules and B == B0:
                    runs[(rule, B)] = runs[("sqrt", B)]   # 两条规则在 B₀ 处完全相同：不重复训练
                    continue
                runs[(rule, B)] = [self._train_one(pieces, cfg, train_ds, val_ds, rule, B, lr_for(rule, B, B0, lr0),
                                                   budget, T, eval_seqs, final_seqs, s, warmup_frac)
                                   for s in seeds]

        analysis = {rule: self._analyse(runs, rule, batches, T) for rule in rules}
        self._tables(runs, analysis, rules, batches, T, unigram, seeds)
        self._plot(runs, analysis, rules, batches, T, unigram)
        self.conclude(self._conclusion(runs, analysis, rules, batches, B0, T, unigram, len(seeds)))
        return {"runs": {f"{rule},B={B}": v for (rule, B), v in runs.items()}, "analysis": analysis,
                "final_val_loss": {f"{rule},B={B}": summarize([r["final_val_loss"] for r in v])
                                   for (rule, B), v in runs.items()},
                "unigram_baseline_val_loss": unigram, "n_params": n_params, "token_budget": budget}

    # ------------------------------------------------------------------------------------------
    def _train_one(self, pieces, cfg, train_ds, val_ds, rule, B, lr, budget, T, eval_seqs,
                   final_seqs, seed, warmup_frac) -> dict:
        steps = budget // (B * T)
        warmup = max(1, round(warmup_frac * steps))
        model = build_model(pieces, cfg, seed).to(self.device)
        run = TrainRun(pieces, model, train_ds, val_ds, steps=steps, batch=B, lr=lr, warmup=warmup, seed=seed)
        curve_tokens, curve_loss = [0], [run.evaluate(eval_seqs)]
        from tqdm import tqdm
        bar = tqdm(total=steps, desc=f"{rule} B={B} seed {seed}", disable=None if self.progress else True,
                   leave=False, dynamic_ncols=True, unit="step")
        try:
            for point in eval_points(steps):
                bar.update(run.advance(point - run.step))
                if run.diverged_at is not None:
                    break
                curve_tokens.append(run.step * B * T)
                curve_loss.append(run.evaluate(eval_seqs))
                bar.set_postfix(val=f"{curve_loss[-1]:.3f}", refresh=False)
        finally:
            bar.close()
        final = run.evaluate(final_seqs)   # 拿来比较的最终 loss 用更多的 held-out 样本（更准）；曲线上的点都用同样的 eval_seqs 段
        state = f"发散于第 {run.diverged_at} 步" if run.diverged_at is not None else f"held-out loss {final:.3f}"
        print(f"  {RULE_ZH[rule]} B={B:<4d} lr={lr:.2e} {steps:5d} 步 seed {seed}: {state}")
        return {"seed": seed, "batch": B, "rule": rule, "lr": lr, "steps": steps, "warmup": warmup,
                "final_val_loss": final, "diverged_at": run.diverged_at, "curve_tokens": curve_tokens,
                "curve_val_loss": curve_loss, "train_losses": run.losses}

    # ------------------------------------------------------------------------------------------
    def _analyse(self, runs, rule, batches, T) -> dict:
        """目标 loss、每个 B 达到它的步数 / token 数、翻倍带来的步数加速比，以及 McCandlish 拟合。"""
        mean_curve = {}
        for B in batches:
            rs = [r for r in runs[(rule, B)] if r["diverged_at"] is None]
            if rs:
                mean_curve[B] = (rs[0]["curve_tokens"], [statistics.fmean(c) for c in zip(*(r["curve_val_loss"] for r in rs))])
        if not mean_curve:
            return {"targets": [], "note": "所有 batch 大小都发散了"}
        best_of = {B: min(l for l in c[1] if math.isfinite(l)) for B, c in mean_curve.items()}
        per_run_best = [min(l for l in r["curve_val_loss"] if math.isfinite(l)) for B in mean_curve
                        for r in runs[(rule, B)] if r["diverged_at"] is None]
        hi = max(per_run_best) + 0.01                # 每个没发散的训练（每个 B、每个种子）都达到的最难目标
        lo = min(best_of.values()) + 0.05            # 只有最好的几个 B 达到
        levels = [hi] + ([(hi + lo) / 2, lo] if lo < hi - 0.04 else [])
        start = min(c[1][0] for c in mean_curve.values())
        levels = [lv for lv in levels if lv < start]   # 初始化时就已经在目标之下的“目标”不含信息
        if not levels:
            return {"targets": [], "best_loss_on_mean_curve": {str(B): v for B, v in best_of.items()},
                    "note": "没有一次训练的 held-out loss 比初始化时低多少，定不出目标"}
        targets = []
        for level in levels:
            rows = {}
            for B in batches:
                per_seed = []
                for r in runs[(rule, B)]:
                    tok = crossing(r["curve_tokens"], r["curve_val_loss"], level) if r["diverged_at"] is None else None
                    per_seed.append(tok)
                reached = [t for t in per_seed if t is not None]
                all_reached = len(reached) == len(per_seed) and reached
                mean_tok = statistics.fmean(reached) if all_reached else None
                rows[B] = {"tokens_per_seed": per_seed, "reached_all_seeds": bool(all_reached),
                           "tokens": mean_tok, "steps": mean_tok / (B * T) if mean_tok is not None else None,
                           "steps_std": (statistics.stdev([t / (B * T) for t in reached]) if all_reached and len(reached) > 1
                                         else None)}
            ok = [B for B in batches if rows[B]["tokens"] is not None]
            speedups = []
            for a, b in zip(batches, batches[1:]):
                if b == 2 * a and rows[a]["steps"] and rows[b]["steps"]:
                    speedups.append({"from": a, "to": b, "speedup": rows[a]["steps"] / rows[b]["steps"]})
            first_slow = next((s for s in speedups if s["speedup"] < SPEEDUP_THRESHOLD), None)
            fit = fit_mccandlish(ok, [rows[B]["tokens"] / T for B in ok])
            targets.append({"loss": level, "by_batch": {str(B): rows[B] for B in batches}, "speedups": speedups,
                            "first_doubling_below_threshold": first_slow, "fit": fit, "batches_reaching": ok})
        return {"targets": targets, "best_loss_on_mean_curve": {str(B): v for B, v in best_of.items()}}

    # ------------------------------------------------------------------------------------------
    def _tables(self, runs, analysis, rules, batches, T, unigram, seeds):
        headers = ["B（序列）", "每步 token", "步数"] + [f"{RULE_ZH[r]}：lr → held-out loss" for r in rules]
        rows = []
        for B in batches:
            row = [B, B * T, runs[(rules[0], B)][0]["steps"]]
            for rule in rules:
                rs = runs[(rule, B)]
                div = [r["diverged_at"] for r in rs if r["diverged_at"] is not None]
                cell = f"{rs[0]['lr']:.2e} → " + fmt_mean_std([r["final_val_loss"] for r in rs])
                row.append(cell + (f"（{len(div)} 个种子发散）" if div else ""))
            rows.append(row)
        self.print_table(headers, rows, title=f"同样 {runs[(rules[0], batches[0])][0]['steps'] * batches[0] * T:,} 个 token 之后的 "
                         f"held-out loss（nats/字符，{len(seeds)} 个种子，均值 ± 标准差；只按字符频率猜 = {unigram:.3f}）")
        for rule in rules:
            a = analysis[rule]
            if not a["targets"]:
                continue
            headers = ["目标 loss"] + [f"B={B}" for B in batches] + ["拟合 B_crit"]
            rows = []
            for t in a["targets"]:
                row = [f"{t['loss']:.3f}"]
                for B in batches:
                    r = t["by_batch"][str(B)]
                    row.append(f"{r['steps']:.0f} 步" if r["steps"] is not None else "未达到")
                f = t["fit"]
                row.append(f"{f['B_crit']:.1f} 序列" if f["ok"] else ("> 最大 B" if f.get("beyond_range") else "—"))
                rows.append(row)
            self.print_table(headers, rows, title=f"{RULE_ZH[rule]}：达到目标 held-out loss 所需的步数（种子平均；held-out 曲线上插值）")

    # ------------------------------------------------------------------------------------------
    def _conclusion(self, runs, analysis, rules, batches, B0, T, unigram, n_seeds) -> str:
        parts = []
        main = rules[0]
        finals = {B: [r["final_val_loss"] for r in runs[(main, B)]] for B in batches}
        means = {B: summarize(v)["mean"] for B, v in finals.items()}
        finite = {B: m for B, m in means.items() if math.isfinite(m)}
        if not finite:
            return "所有 batch 大小都发散了，这次没有可以比较的数字。"
        stuck = [B for B in batches if any(r["diverged_at"] is None and r["final_val_loss"] > unigram - STUCK_MARGIN
                                           for r in runs[(main, B)])]
        if stuck:
            parts.append(f"注意：B = {stuck} 有种子的最终 loss 不低于只按字符频率猜的水平（{unigram:.3f}），这些训练没有学到上下文——"
                         "学习率可能太大（或预算太小）；下面涉及它们的比较意义有限。")
        best_B = min(finite, key=finite.get)
        worst_B = max(finite, key=finite.get)
        parts.append(f"同样的 token 预算下（{RULE_ZH[main]}），最终 held-out loss 最低的是 B={best_B}（{finite[best_B]:.3f}），"
                     f"最高的是 B={worst_B}（{finite[worst_B]:.3f}），相差 {finite[worst_B] - finite[best_B]:.3f}。")
        # 相邻 batch 之间是否超过种子波动（按种子配对：同一种子看到同样的样本）
        gaps = []
        for a, b in zip(batches, batches[1:]):
            p = paired(runs[(main, a)], runs[(main, b)])
            if p["n"]:
                gaps.append((a, b, p))
        if n_seeds > 1 and gaps:
            txt = "；".join(f"B {a}→{b}：{p['mean']:+.3f}" + ("（超过种子波动）" if p["beyond_noise"] else "（在波动之内）")
                           for a, b, p in gaps)
            parts.append(f"相邻两档逐种子配对的差（大 B − 小 B）：{txt}。")
        if best_B == batches[0]:
            parts.append("在这个预算下 batch 越小越好：同样的 token，小 batch 换来更多次更新，这比每步梯度更嘈杂的代价更值。")
        elif best_B == batches[-1]:
            parts.append("在这个预算下 batch 越大越好——与“同样 token 数、小 batch 更新次数多”的直觉相反；可能是小 batch 的学习率"
                         "（按规则缩小后）太小了。")
        else:
            parts.append(f"loss 在 B={best_B} 附近最低：更小的 batch 更新次数多但每步噪声大，更大的 batch 每步准但步数太少。")
        # 目标 loss 与临界 batch
        a = analysis[main]
        if a["targets"]:
            t0 = a["targets"][0]
            ups = t0["speedups"]
            if ups:
                parts.append(f"达到目标 {t0['loss']:.3f}（每个 B 都达到的最难目标）：每次 batch 翻倍，步数缩短为原来的 "
                             + "、".join(f"1/{u['speedup']:.2f}（{u['from']}→{u['to']}）" for u in ups)
                             + "（理想是 1/2）。")
            fs = t0["first_doubling_below_threshold"]
            if fs is not None:
                parts.append(f"第一次翻倍只换来不到 {SPEEDUP_THRESHOLD:g}× 的步数减少是 B {fs['from']}→{fs['to']}"
                             f"（{fs['speedup']:.2f}×，多花了 {2 / fs['speedup'] - 1:.0%} 的 token）：从这里起，翻倍 batch 不再让步数减半。")
            elif ups:
                parts.append(f"测过的每次翻倍都让步数减少了至少 {SPEEDUP_THRESHOLD:g}×：在这个目标上还没有碰到收益递减的点。")
            fits = [(t["loss"], t["fit"]) for t in a["targets"]]
            ok = [(l, f) for l, f in fits if f["ok"]]
            for l, f in fits:
                if f["ok"]:
                    parts.append(f"按 McCandlish 的 E(B) = E_min + S_min·B 拟合（目标 {l:.3f}，用了达到它的 {f['n_batches']} 个 B）："
                                 f"S_min ≈ {f['S_min']:.0f} 步、E_min ≈ {f['E_min']:.0f} 个序列，临界 batch B_crit = E_min/S_min ≈ "
                                 f"{f['B_crit']:.1f} 个序列（{f['B_crit'] * T:,.0f} 个 token），R² = {f['r2']:.2f}。")
                else:
                    parts.append(f"目标 {l:.3f}：{f['reason']}。")
                if l == t0["loss"] and f["ok"] and fs is not None:
                    bc, a0 = f["B_crit"], fs["from"]
                    agree = bc / 4 < a0 < bc
                    parts.append(f"在这个模型里，1.5× 恰好是 B_crit/2 → B_crit（{bc / 2:.1f} → {bc:.1f}）那次翻倍的加速比；实测第一次低于 1.5× 的翻倍"
                                 f"（{a0}→{2 * a0}）" + ("与拟合的 B_crit 吻合。" if agree else "与拟合的 B_crit 对不上——两种读法都受插值和种子波动影响，如实记录。"))
                if l == t0["loss"] and f["ok"]:
                    bc = f["B_crit"]
                    lo_b, hi_b = batches[0], batches[-1]
                    parts.append(f"照这个拟合：B={lo_b} 要 S_min 的 {1 + bc / lo_b:.2f} 倍步数、E_min 的 {1 + lo_b / bc:.2f} 倍 token；"
                                 f"B={hi_b} 要 S_min 的 {1 + bc / hi_b:.2f} 倍步数、却要 E_min 的 {1 + hi_b / bc:.2f} 倍 token"
                                 "——B 远小于 B_crit 时省 token、费步数，远大于时省步数、费 token；B = B_crit 时两者都是最少值的 2 倍。")
            if len(ok) >= 2:
                increasing = all(f2["B_crit"] >= f1["B_crit"] for (_, f1), (_, f2) in zip(ok, ok[1:]))
                trend = "、".join(f"{f['B_crit']:.1f}（loss {l:.3f}）" for l, f in ok)
                if increasing and ok[-1][1]["B_crit"] > ok[0][1]["B_crit"]:
                    parts.append(f"目标越低，临界 batch 越大：{trend}——与 McCandlish et al. 2018 的观察一致"
                                 "（训练越往后，梯度里的“信号”越小、噪声占比越大，需要更大的 batch 才能把噪声平均掉）。")
                else:
                    parts.append(f"不同目标的临界 batch：{trend}——没有看到 McCandlish et al. 2018 报告的“目标越低、B_crit 越大”，"
                                 "这个小预算下几个目标靠得很近、插值误差不小，如实记录。")
        # 两条规则
        if len(rules) == 2:
            better = {"sqrt": 0, "linear": 0}
            detail = []
            for B in batches:
                if B == B0:
                    continue
                p = paired(runs[("sqrt", B)], runs[("linear", B)])   # d = linear − sqrt
                if not p["n"]:
                    continue
                if p["beyond_noise"]:
                    better["sqrt" if p["mean"] > 0 else "linear"] += 1
                detail.append(f"B={B}：{p['mean']:+.3f}" + ("*" if p["beyond_noise"] else ""))
            div_lin = sorted({r["batch"] for B in batches for r in runs[("linear", B)] if r["diverged_at"] is not None})
            parts.append("线性规则 − √ 规则的 held-out loss（逐种子配对，* = 超过种子波动）：" + "、".join(detail) + "。")
            if div_lin:
                parts.append(f"线性规则在 B = {div_lin} 时发散（学习率被放大得太多）。")
            if better["sqrt"] > better["linear"]:
                parts.append(f"√ 规则在 {better['sqrt']} 个 batch 大小上明显更好（线性规则 {better['linear']} 个）：与 Malladi et al. 2022 的结论一致"
                             "——他们用随机微分方程近似推出，对 Adam，batch 乘 κ 时学习率乘 √κ 才保持同样的训练动态"
                             "（论文里 β 与 eps 也随之调整，这里没有调）；线性规则是 Goyal et al. 2017 给 SGD 的。")
            elif better["linear"] > better["sqrt"] and not stuck:
                parts.append(f"这次线性规则在 {better['linear']} 个 batch 大小上明显更好（√ 规则 {better['sqrt']} 个），与 Malladi et al. 2022 "
                             "对 Adam 的预期相反——可能是 lr₀ 本身偏小，线性规则在大 B 时的更大学习率正好补上；如实记录。")
            elif better["linear"] > better["sqrt"]:
                parts.append(f"这次线性规则在 {better['linear']} 个 batch 大小上更好，但 √ 规则有训练停在字频水平（见上面的注意），这个比较说明不了规则本身。")
            else:
                parts.append("两条规则之间没有系统性的、超过种子波动的差别。")
            lin_wins = [B for B in batches if B != B0 and (p := paired(runs[("sqrt", B)], runs[("linear", B)]))["n"]
                        and p["beyond_noise"] and p["mean"] < 0]
            if lin_wins and better["sqrt"] > better["linear"]:
                parts.append("例外：在 B = " + "、".join(str(B) for B in lin_wins) + " 线性规则更好（它给的学习率更大："
                             + "、".join(f"{runs[('linear', B)][0]['lr']:.1e} vs {runs[('sqrt', B)][0]['lr']:.1e}" for B in lin_wins)
                             + "），说明在那里 √ 规则外推出的学习率偏小——两条规则都只是从 lr₀ 外推，真正的最佳学习率要在每个 B 上扫出来"
                               "（McCandlish et al. 2018 的 B_crit 也是在每个 B 调好学习率之后定义的）。")
        elif n_seeds > 1:
            parts.append("快速模式只跑了 √ 规则；完整模式另跑线性规则作对照。")
        if n_seeds == 1:
            parts.append("只有 1 个种子：上面的差距无法与随机波动区分（完整模式跑 3 个种子）。")
        parts.append(f"注意：这里的 B_crit 属于这个 {T} 字符上下文、约 {runs[(main, batches[0])][0]['steps'] * batches[0] * T // 1000}k token 预算的小模型；"
                     "McCandlish et al. 2018 强调它随训练进度（loss 越低越大）和任务而变，不是一个固定常数。")
        return "\n".join(parts)

    # ------------------------------------------------------------------------------------------
    def _plot(self, runs, analysis, rules, batches, T, unigram):
        fig, axes = new_figure(1, 3, width=5.2, height=4.2)
        ax = axes[0, 0]
        for rule, style in zip(rules, ("o-", "s--")):
            ms = [summarize([r["final_val_loss"] for r in runs[(rule, B)]]) for B in batches]
            ys = [m["mean"] for m in ms]
            es = [m["std"] or 0.0 for m in ms]
            ax.errorbar(batches, ys, yerr=es, fmt=style, capsize=3, label=label((RULE_ZH[rule], f"{rule} rule")))
        ax.set_xscale("log", base=2)
        ax.set_xlabel(label(("batch 大小（序列）", "batch size (sequences)")))
        ax.set_ylabel(label(("最终 held-out loss", "final held-out loss")))
        ax.set_title(label(("同样 token 数之后的 loss", "loss after the same number of tokens")))
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)

        ax = axes[0, 1]
        main = rules[0]
        for i, B in enumerate(batches):
            rs = [r for r in runs[(main, B)] if r["diverged_at"] is None]
            if not rs:
                continue
            mean = [statistics.fmean(c) for c in zip(*(r["curve_val_loss"] for r in rs))]
            ax.plot([t / 1000 for t in rs[0]["curve_tokens"]], mean, "-", color=f"C{i}", label=f"B={B}")
        for t in analysis[main].get("targets", []):
            ax.axhline(t["loss"], color="gray", linestyle=":", linewidth=0.8)
        ax.axhline(unigram, color="black", linestyle="--", linewidth=0.8, alpha=0.5)
        ax.set_xlabel(label(("训练过的 token（千）", "tokens seen (k)")))
        ax.set_ylabel(label(("held-out loss", "held-out loss")))
        ax.set_title(label((f"held-out loss 曲线（{RULE_ZH[main]}；点线 = 目标）", f"held-out curves ({main}; dotted = targets)")))
        ax.set_ylim(top=min(unigram + 0.6, ax.get_ylim()[1]))
        ax.legend(fontsize="x-small")
        ax.grid(True, alpha=0.3)

        ax = axes[0, 2]
        for j, t in enumerate(analysis[main].get("targets", [])):
            pts = [(B, t["by_batch"][str(B)]["steps"]) for B in batches if t["by_batch"][str(B)]["steps"]]
            if not pts:
                continue
            bs, ss = zip(*pts)
            ax.plot(bs, ss, "o", color=f"C{j}", label=label((f"目标 {t['loss']:.3f}", f"target {t['loss']:.3f}")))
            ax.plot(bs, [ss[0] * bs[0] / b for b in bs], ":", color=f"C{j}", alpha=0.6)   # 完美缩放：步数 ∝ 1/B
            f = t["fit"]
            if f["ok"]:
                grid = np.geomspace(min(bs), max(bs), 50)
                ax.plot(grid, f["S_min"] * (1 + f["B_crit"] / grid), "-", color=f"C{j}", alpha=0.8)
                ax.axvline(f["B_crit"], color=f"C{j}", linestyle="--", alpha=0.4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(label(("batch 大小（序列）", "batch size (sequences)")))
        ax.set_ylabel(label(("达到目标的步数", "steps to target")))
        ax.set_title(label(("步数 vs batch（点线 = 完美缩放，实线 = 拟合，竖线 = B_crit）",
                            "steps vs batch (dotted = perfect, solid = fit, dashed = B_crit)")), fontsize="small")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
        ax.grid(True, alpha=0.3, which="both")
        fig.tight_layout()
        self.save_figure(fig, "batch_size")


if __name__ == "__main__":
    sys.exit(BatchSize.main())
