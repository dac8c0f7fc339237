"""实验 1：缩放定律——模型大一点好，还是多看一些数据好？

用**你的** MiniMindForCausalLM（模块 06）搭 6–7 个 MiniMind 形状的模型（hidden 8…64、1…4 层，非嵌入参数相差约 100 倍），
用你的 PretrainDataset / rank_batch（本模块）、AdamW / train_step（模块 08）在字符级 TinyShakespeare 上训练，
一路在同一段验证集上用你的 evaluate 记录 loss。每个尺寸只训练一次（每个种子；小模型便宜，训练得更久，最多看两遍训练集），学习率 warmup 之后保持不变——
这样任何一个中途的评估点都是“只训练到这里”的一次合法运行，同一组训练就给出两种切法：

1. **固定 token 数**：所有尺寸在同一个 token 数 D 上的 loss vs 参数量 N，对数坐标下最小二乘拟合幂律 L ∝ N^(−α)；
2. **固定计算量**：C ≈ 6·N·D（N = 非嵌入参数，Kaplan et al. 2020 的约定，理由见下），每个 C 上各尺寸的 loss
   （在各自的曲线上插值到 D = C / 6N），抛物线拟合（Hoffmann et al. 2022 的 IsoFLOP 做法）找出最省的 N，
   算出最优的 tokens / 参数，与 Hoffmann et al. 2022 的 ≈ 20 和 Kaplan et al. 2020 放在一起。

为什么 N 用非嵌入参数：字符级词表只有 65 个，嵌入表（与 lm_head 共享）在最小的模型里占总参数的 ~22%，在最大的里 ~2%；
查表本身不花 FLOPs。Kaplan et al. 2020 用非嵌入参数得到跨深度/宽度更干净的幂律，C ≈ 6NBS 里的 N 也是它；
Hoffmann et al. 2022 数的是全部参数——所以 tokens/参数两种数法都报。lm_head 的矩阵乘（2·h·V / token）
和注意力打分（2·n_layer·n_ctx·d / token）6N 都没算：它们占多少，脚本算出来写在表里。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

from _pretrain_tools import (Parts, attention_flops_share, build_model, interp_loglinear, loglog_fit,  # noqa: E402
                             param_counts, parabola_vertex, shape_config, train_model)
from kata.experiment import Experiment, fmt_mean_std, summarize  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

# (hidden, 层数)：宽和深一起长，头维固定 16（头数 = hidden / 16）
SIZES = {
    "smoke": [(16, 1), (16, 2), (24, 2)],
    "quick": [(8, 1), (16, 1), (16, 2), (24, 2), (32, 2), (48, 3)],
    "full": [(8, 1), (16, 1), (16, 2), (24, 2), (32, 2), (48, 3), (64, 4)],
}
# 最大的模型训练多少步（= 固定 token 数的那一点）；小模型便宜，多训练一些，让“固定计算量”的切片两边都有点
FIX_STEPS = {"smoke": 8, "quick": 320, "full": 640}
EXTRA = 1.25          # 每小一号，步数 ×1.25（不超过 MAX_EPOCHS 遍训练集）
MAX_EPOCHS = 2        # 几千参数的模型记不住 100 万个字符，看第二遍和看新数据差别不大；结论里写明看了几遍
BATCH, SEQ = 16, 64
KAPLAN_ALPHA_N = 0.076        # Kaplan et al. 2020 式 (1.1)：L(N) = (N_c / N)^0.076（非嵌入参数，训练到收敛）
KAPLAN_ALPHA_C = 0.050        # 式 (1.3)：沿计算最优前沿 L(C_min) ∝ C_min^(−0.050)
KAPLAN_N_EXP = 0.73           # §6.1：N_opt ∝ C^0.73
CHINCHILLA_N_EXP = (0.46, 0.50)   # Hoffmann et al. 2022 表 2：N_opt ∝ C^a，三种方法 a = 0.50 / 0.49 / 0.46
CHINCHILLA_TPP = 20.0         # Hoffmann et al. 2022：计算最优 ≈ 20 tokens / 参数
MINIMIND2_SMALL = 25_829_888  # MiniMind2-small 的参数量（共享嵌入）


def _fmt_n(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


class Scaling(Experiment):
    name = "exp1_scaling"
    module = "09_pretrain"
    can_use_synthetic = False
    synthetic_reason = "缩放指数和最优 tokens/参数是语料本身的性质（多难预测、有多少可学的结构），合成语料上的数字与真实文本无关"
    title = "实验 1：缩放定律——固定 token 数与固定计算量下的 loss vs 参数量（你的 MiniMind）"
    description = (
        "6–7 个 MiniMind 形状的模型（你的 MiniMindForCausalLM），用你的 PretrainDataset / rank_batch / AdamW / train_step\n"
        "训练、你的 evaluate 评估：固定 token 数时 loss vs 参数量的幂律拟合（完整模式 3 个种子：指数的 均值 ± 标准差），\n"
        "固定计算量 C ≈ 6ND 时的最优模型大小与 tokens/参数，与 Kaplan et al. 2020、Hoffmann et al. 2022 对照。"
    )

    def add_arguments(self, parser):
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3，warmup 之后不变，所有尺寸相同）")
        parser.add_argument("--fix-steps", type=int, default=None,
                            help="最大的模型训练的步数 = 固定 token 数的那一点（默认：快速 320，完整 640）")

    def run(self):
        t_cpu0 = time.process_time()
        parts = Parts(self, ("MiniMindForCausalLM", "AdamW", "train_step", "PretrainDataset", "rank_batch", "evaluate"))
        corpus = self.load_corpus()
        vocab = corpus.tokenizer.vocab_size
        train_ds = parts.PretrainDataset(corpus.train_ids, SEQ)
        val_ds = parts.PretrainDataset(corpus.val_ids, SEQ)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        sizes = SIZES[self.mode]
        fix_steps = self.args.fix_steps or FIX_STEPS[self.mode]
        epoch_steps = len(train_ds) // BATCH
        steps = [min(MAX_EPOCHS * epoch_steps, round(fix_steps * EXTRA ** (len(sizes) - 1 - i))) for i in range(len(sizes))]
        fix_steps = min(fix_steps, min(steps))
        warmup = self.by_mode(smoke=2, quick=20, full=30)
        lr = self.args.lr
        eval_batches = self.by_mode(smoke=1, quick=4, full=6)
        n_eval = self.by_mode(smoke=3, quick=10, full=12)
        grid = sorted({max(1, round(math.exp(math.log(max(2 * warmup, 2)) + k * (math.log(max(steps)) - math.log(max(2 * warmup, 2))) / (n_eval - 1))))
                       for k in range(n_eval)} | {fix_steps})
        min_steps_for_slices = self.by_mode(smoke=1, quick=2 * warmup, full=2 * warmup)
        cfgs = [shape_config(h, L, vocab, SEQ) for h, L in sizes]

        def lr_at(step):
            return lr * min(1.0, (step + 1) / warmup)

        self.config(sizes=[c.to_dict() for c in cfgs], steps_per_size=steps, fixed_token_steps=fix_steps, batch_size=BATCH,
                    seq_len=SEQ, lr=lr, schedule=f"linear warmup {warmup} steps, then constant (no decay)",
                    optimizer="AdamW(betas=(0.9, 0.95), weight_decay=0.1), grad clip 1.0", eval_steps=grid,
                    eval_samples=eval_batches * 64, flops="C = 6 · N_non_embedding · D (Kaplan et al. 2020)",
                    epoch_steps=epoch_steps)
        print(f"部件：{parts.describe()}。")
        print(f"{len(sizes)} 个尺寸 × {len(seeds)} 个种子；batch {BATCH} × 序列 {SEQ}，学习率 {lr:g}（warmup {warmup} 步后不变）；"
              f"最大的模型训练 {steps[-1]} 步，最小的 {steps[0]} 步（一个 epoch = {epoch_steps} 步）；"
              f"6N 的 N = 非嵌入参数（Kaplan et al. 2020 的约定）。")

        runs = {i: [] for i in range(len(sizes))}
        counts = {}
        for s in seeds:
            for i, (cfg, n_steps) in enumerate(zip(cfgs, steps)):
                model = build_model(parts, cfg, s, self.device)
                counts[i] = param_counts(model)
                rec = train_model(parts, model, train_ds, val_ds, steps=n_steps, batch=BATCH, lr_at=lr_at,
                                  eval_steps=grid, seed=s, eval_batches=eval_batches, device=self.device,
                                  progress=self.progress, desc=f"h{cfg.hidden_size}×L{cfg.num_hidden_layers} seed {s}")
                rec["seed"] = s
                runs[i].append(rec)
                state = (f"发散于第 {rec['diverged_at']} 步" if rec["diverged_at"] is not None
                         else f"val loss {rec['final_val_loss']:.3f}")
                print(f"  hidden {cfg.hidden_size:>3} × {cfg.num_hidden_layers} 层（非嵌入 {_fmt_n(counts[i]['non_embedding'])}）"
                      f" seed {s}: {n_steps} 步，{state}，{rec['tokens_per_cpu_sec']:,.0f} tokens/CPU 秒")

        tokens_per_step = BATCH * SEQ
        D_fix = fix_steps * tokens_per_step
        N = [counts[i]["non_embedding"] for i in range(len(sizes))]
        N_tot = [counts[i]["total"] for i in range(len(sizes))]
        att = [attention_flops_share(c, n, SEQ) for c, n in zip(cfgs, N)]
        head = [2 * c.hidden_size * c.vocab_size / (2 * n) for c, n in zip(cfgs, N)]

        # ---- 1) 固定 token 数 ------------------------------------------------------------------
        def loss_at(rec, step):
            if rec["diverged_at"] is not None or step not in rec["eval_steps"]:
                return float("nan")
            return rec["val_loss"][rec["eval_steps"].index(step)]

        fixed = {i: [loss_at(r, fix_steps) for r in runs[i]] for i in runs}
        fits = []
        for k, s in enumerate(seeds):
            ys = [fixed[i][k] for i in runs]
            pts = [(n, y) for n, y in zip(N, ys) if math.isfinite(y)]
            fits.append(loglog_fit([p[0] for p in pts], [p[1] for p in pts]))
        mean_fixed = [summarize(fixed[i])["mean"] for i in runs]
        ok = [(n, y) for n, y in zip(N, mean_fixed) if math.isfinite(y)]
        fit_mean = loglog_fit([p[0] for p in ok], [p[1] for p in ok])
        alphas = [-f["slope"] for f in fits if math.isfinite(f["slope"])]
        local = [-(math.log(mean_fixed[i + 1]) - math.log(mean_fixed[i])) / (math.log(N[i + 1]) - math.log(N[i]))
                 for i in range(len(N) - 1)]

        rows = []
        for i, cfg in enumerate(cfgs):
            rows.append([f"{cfg.hidden_size} × {cfg.num_hidden_layers}", f"{N[i]:,}", f"{N_tot[i]:,}",
                         f"{steps[i]}", f"{D_fix / N[i]:.1f}", fmt_mean_std(fixed[i]),
                         f"{100 * att[i]:.0f}% / {100 * head[i]:.0f}%",
                         f"{statistics.median(r['tokens_per_cpu_sec'] for r in runs[i]):,.0f}"])
        self.print_table(["hidden × 层", "非嵌入参数 N", "全部参数", "训练步数", f"D/N（D = {D_fix:,}）",
                          f"固定 D 时的验证 loss（{len(seeds)} 个种子）", "6N 漏掉的：注意力 / lm_head", "tokens/CPU 秒"],
                         rows, title=f"固定 token 数 D = {D_fix:,}（{fix_steps} 步 × {tokens_per_step}）")

        # ---- 2) 固定计算量 ---------------------------------------------------------------------
        def curve(rec, n):
            """(C 列表, loss 列表)：只用 ≥ min_steps_for_slices 步的评估点（更早的还在 warmup 里）。"""
            if rec["diverged_at"] is not None:
                return [], []
            pts = [(6 * n * st * tokens_per_step, l) for st, l in zip(rec["eval_steps"], rec["val_loss"])
                   if st >= min_steps_for_slices]
            return [p[0] for p in pts], [p[1] for p in pts]

        def mean_curve(i):
            rs = [r for r in runs[i] if r["diverged_at"] is None]
            if not rs:
                return [], []
            cs, _ = curve(rs[0], N[i])
            ls = [statistics.fmean(curve(r, N[i])[1][j] for r in rs) for j in range(len(cs))]
            return cs, ls

        curves_mean = {i: mean_curve(i) for i in runs}
        lo = min(c[0][0] for c in curves_mean.values() if c[0])
        hi = max(c[0][-1] for c in curves_mean.values() if c[0])
        fine = [math.exp(math.log(lo) + k * (math.log(hi) - math.log(lo)) / 59) for k in range(60)]

        def available(curves, C):
            return [(i, interp_loglinear(curves[i][0], curves[i][1], C)) for i in curves
                    if curves[i][0] and math.isfinite(interp_loglinear(curves[i][0], curves[i][1], C))]

        frontier = []
        for C in fine:
            av = available(curves_mean, C)
            if len(av) >= 2:
                i_best, l_best = min(av, key=lambda t: t[1])
                frontier.append((C, l_best, i_best))
        fit_front = loglog_fit([f[0] for f in frontier], [f[1] for f in frontier])

        three = [C for C in fine if len(available(curves_mean, C)) >= 3]
        slices_C = []
        if three:
            a, b = math.log(three[0]), math.log(three[-1])
            n_sl = self.by_mode(smoke=2, quick=5, full=6)
            slices_C = [math.exp(a + k * (b - a) / max(n_sl - 1, 1)) for k in range(n_sl)]

        def iso(curves, C):
            av = available(curves, C)
            xs = [math.log(N[i]) for i, _ in av]
            ys = [l for _, l in av]
            v = parabola_vertex(xs, ys)
            n_opt = math.exp(v["vertex"]) if math.isfinite(v["vertex"]) else float("nan")
            best_i = min(av, key=lambda t: t[1])[0] if av else None
            # 没有落在范围内时，最好的已训练尺寸若在边上，至少给出一个界：最优 N ≤（或 ≥）它
            bound = None
            if not v["bracketed"] and best_i is not None and len(av) >= 2:
                tpp_best = C / (6 * N[best_i] ** 2)
                if best_i == av[0][0]:
                    bound = (">=", tpp_best)      # 最优的 N 比最小的还小 → tokens/参数 ≥ 这个数
                elif best_i == av[-1][0]:
                    bound = ("<=", tpp_best)
            return {"C": C, "sizes": [i for i, _ in av], "losses": ys, "bracketed": v["bracketed"], "n_opt": n_opt,
                    "coef": v["coef"], "best_sampled": best_i, "bound": bound,
                    "tokens_per_param": C / (6 * n_opt * n_opt) if v["bracketed"] else float("nan"),
                    "tokens_per_total_param": (C / (6 * n_opt)) / _total_of(n_opt) if v["bracketed"] else float("nan")}

        def _total_of(n):   # 非嵌入 → 全部参数：在这族尺寸上按 ln 插值
            return math.exp(interp_loglinear(N, [math.log(t) for t in N_tot], min(max(n, N[0]), N[-1])))

        iso_mean = [iso(curves_mean, C) for C in slices_C]
        iso_seed = []
        for k, s in enumerate(seeds):
            cs = {i: curve(runs[i][k], N[i]) for i in runs}
            iso_seed.append([iso(cs, C) for C in slices_C])
        br = [x for x in iso_mean if x["bracketed"]]
        n_exp = loglog_fit([x["C"] for x in br], [x["n_opt"] for x in br]) if len(br) >= 3 else None
        n_exp_seed = []
        for sl in iso_seed:
            b2 = [x for x in sl if x["bracketed"]]
            if len(b2) >= 3:
                n_exp_seed.append(loglog_fit([x["C"] for x in b2], [x["n_opt"] for x in b2])["slope"])

        rows = []
        for j, x in enumerate(iso_mean):
            per_seed = [sl[j]["tokens_per_param"] for sl in iso_seed]
            fin = [v for v in per_seed if math.isfinite(v)]
            rows.append([f"{x['C']:.2e}", "、".join(f"{cfgs[i].hidden_size}×{cfgs[i].num_hidden_layers}" for i in x["sizes"]),
                         f"{cfgs[x['best_sampled']].hidden_size}×{cfgs[x['best_sampled']].num_hidden_layers}",
                         _fmt_n(x["n_opt"]) if x["bracketed"] else "不在范围内",
                         f"{x['tokens_per_param']:.1f}" if x["bracketed"] else
                         (f"{'≥' if x['bound'][0] == '>=' else '≤'} {x['bound'][1]:.1f}" if x["bound"] else "—"),
                         f"{x['tokens_per_total_param']:.1f}" if x["bracketed"] else "—",
                         (fmt_mean_std(fin, ".1f") + (f"（{len(fin)}/{len(per_seed)} 个种子找到）" if len(fin) < len(per_seed) else ""))
                         if fin else "—"])
        if rows:
            self.print_table(["计算量 C（FLOPs）", "参与的尺寸", "最好的已训练尺寸", "抛物线最优 N", "D/N（非嵌入）",
                              "D/N（全部参数）", f"D/N 逐种子（{len(seeds)} 个）"], rows,
                             title="固定计算量（IsoFLOP 切片，C = 6·N·D）：每个 C 上哪个大小最省")

        self._plot(cfgs, N, runs, fixed, fit_mean, curves_mean, frontier, iso_mean, D_fix, seeds)
        cpu = time.process_time() - t_cpu0
        text, verdict = self._conclusion(cfgs, N, N_tot, fixed, fits, fit_mean, alphas, local, frontier, fit_front,
                                         iso_mean, iso_seed, n_exp, n_exp_seed, att, head, D_fix, seeds, steps,
                                         epoch_steps, parts)
        self.conclude(text)
        return {"n_non_embedding": N, "n_total": N_tot, "steps": steps, "fixed_tokens": D_fix,
                "fixed_token_val_loss": {f"{c.hidden_size}x{c.num_hidden_layers}": fixed[i] for i, c in enumerate(cfgs)},
                "power_law_per_seed": fits, "power_law_on_mean": fit_mean, "alpha_N": summarize(alphas),
                "local_slopes": local, "frontier": [{"C": c, "loss": l, "size": i} for c, l, i in frontier],
                "frontier_fit": fit_front, "isoflop_on_mean": iso_mean, "isoflop_per_seed": iso_seed,
                "n_opt_exponent_on_mean": n_exp, "n_opt_exponent_per_seed": n_exp_seed,
                "attention_flops_share_of_6N": att, "lm_head_flops_share_of_6N": head,
                "runs": {f"{c.hidden_size}x{c.num_hidden_layers}": runs[i] for i, c in enumerate(cfgs)},
                "verdict": verdict, "process_cpu_seconds_in_run": cpu, "parts": parts.source}

    # ------------------------------------------------------------------------------------------
    def _conclusion(self, cfgs, N, N_tot, fixed, fits, fit_mean, alphas, local, frontier, fit_front, iso_mean,
                    iso_seed, n_exp, n_exp_seed, att, head, D_fix, seeds, steps, epoch_steps, parts):
        parts_txt, verdict = [], {}
        m = [summarize(fixed[i])["mean"] for i in range(len(N))]
        span = N[-1] / N[0]
        a_s = summarize(alphas)
        a_txt = (f"α = {a_s['mean']:.3f} ± {a_s['std']:.3f}（{a_s['n']} 个种子各拟合一次，均值 ± 标准差）"
                 if a_s["n"] > 1 and a_s["std"] is not None else
                 f"α = {-fit_mean['slope']:.3f}（1 个种子；回归的标准误 ±{fit_mean['slope_se']:.3f}，跨种子的不确定度要完整模式）")
        parts_txt.append(
            f"固定 token 数（D = {D_fix:,} 个字符）：非嵌入参数从 {_fmt_n(N[0])} 到 {_fmt_n(N[-1])}（{span:.0f} 倍），"
            f"验证 loss 从 {m[0]:.3f} 降到 {m[-1]:.3f}。对数坐标最小二乘 L ∝ N^(−α)：{a_txt}，R² = {fit_mean['r2']:.3f}。")
        verdict["alpha_N"] = a_s
        verdict["r2"] = fit_mean["r2"]
        k = len(N) // 2
        lower_fit = loglog_fit(N[:k + 1], m[:k + 1])
        upper_fit = loglog_fit(N[len(N) - 1 - k:], m[len(N) - 1 - k:])
        a_lo, a_hi = -lower_fit["slope"], -upper_fit["slope"]
        verdict["alpha_smaller_half"], verdict["alpha_larger_half"] = a_lo, a_hi
        flattening = len(N) >= 4 and a_hi < 0.6 * a_lo
        steepening = len(N) >= 4 and a_hi > 1.5 * a_lo
        verdict["flattening"] = flattening
        loc = "、".join(f"{x:.3f}" for x in local)
        halves = (f"小的一半尺寸上 α = {a_lo:.3f}，大的一半上 α = {a_hi:.3f}"
                  f"（相邻两个尺寸之间的局部斜率依次是 {loc}）")
        if flattening:
            parts_txt.append(
                f"但这条线在弯：{halves}——越大的模型在这个 D 上收益越小。一个可能的原因是 D 固定时大模型看不到足够的数据"
                f"（最大的模型每个参数只见过 {D_fix / N[-1]:.1f} 个字符），曲线在往“数据不够”的平台弯；单一幂律只是粗略的描述。")
        elif steepening:
            parts_txt.append(f"这条线越往大越陡：{halves}。最小的几个模型也许小到连字符的基本统计都学不全，单一幂律只是粗略的描述。")
        elif fit_mean["r2"] >= 0.97:
            parts_txt.append(f"{halves}：两半的斜率相差不大，在这个范围里一条幂律描述得不错"
                             f"（虽然最大的模型每个参数只见过 {D_fix / N[-1]:.1f} 个字符）。")
        else:
            parts_txt.append(f"{halves}；R² 不高：单一幂律描述得不好。")
        ratio = (a_s["mean"] if a_s["n"] else -fit_mean["slope"]) / KAPLAN_ALPHA_N
        parts_txt.append(
            f"Kaplan et al. 2020 的 α_N ≈ {KAPLAN_ALPHA_N}（训练到收敛、BPE token、非嵌入参数约 10^3 到 10^9）；这里的 α 是它的 {ratio:.1f} 倍——"
            "我们的 loss 没有扣掉不可约的部分（文本本身的熵），又是在固定、很小的 D 上量的，这两个数不是同一件事，量级对照而已。")

        if frontier:
            parts_txt.append(
                f"沿计算最优前沿（每个 C 上所有尺寸里最低的 loss，C 从 {frontier[0][0]:.1e} 到 {frontier[-1][0]:.1e}）："
                f"L ∝ C^{fit_front['slope']:.3f}，R² = {fit_front['r2']:.3f}（Kaplan et al. 2020：C^−{KAPLAN_ALPHA_C}）。")
            verdict["alpha_C"] = -fit_front["slope"]
        br = [x for x in iso_mean if x["bracketed"]]
        verdict["isoflop_bracketed"] = f"{len(br)}/{len(iso_mean)}"
        lower = [x["bound"][1] for x in iso_mean if x["bound"] and x["bound"][0] == ">="]
        upper = [x["bound"][1] for x in iso_mean if x["bound"] and x["bound"][0] == "<="]
        verdict["tokens_per_param_bounds"] = {"at_least": lower, "at_most": upper}
        bound_txt = ""
        if lower or upper:
            bits = []
            if lower:
                bits.append(f"{len(lower)} 个切片里最小的那个尺寸就是最好的（最优点还要更小），只能说 tokens/参数 ≥ "
                            + "、".join(f"{v:.0f}" for v in lower))
            if upper:
                bits.append(f"{len(upper)} 个切片里最大的那个尺寸最好，只能说 tokens/参数 ≤ " + "、".join(f"{v:.0f}" for v in upper))
            bound_txt = "其余切片只给出界：" + "；".join(bits) + "。"
        if br:
            tpp = [x["tokens_per_param"] for x in br]
            tpt = [x["tokens_per_total_param"] for x in br]
            seed_tpp = [x["tokens_per_param"] for sl in iso_seed for x in sl if x["bracketed"]]
            verdict["tokens_per_param"] = {"min": min(tpp), "max": max(tpp), "median": statistics.median(tpp),
                                           "per_total_param_median": statistics.median(tpt),
                                           "per_seed_pooled": summarize(seed_tpp)}
            med = statistics.median(tpp)
            parts_txt.append(
                f"固定计算量：{len(iso_mean)} 个 IsoFLOP 切片里有 {len(br)} 个的抛物线最低点落在已训练的尺寸之间；"
                f"那里最优的 tokens/参数是 " + "、".join(f"{v:.0f}" for v in tpp) + f"（中位数 {med:.1f}；按全部参数数是 "
                f"{statistics.median(tpt):.1f}）" + (f"，逐种子（切片与种子合在一起）{fmt_mean_std(seed_tpp, '.1f')}"
                                                     if len(seeds) > 1 and len(seed_tpp) > 1 else "") + "。" + bound_txt)
            fac = med / CHINCHILLA_TPP
            if 0.5 <= fac <= 2:
                rel = f"与 Hoffmann et al. 2022 的 ≈ {CHINCHILLA_TPP:.0f} 在 2 倍以内"
            else:
                rel = f"是 Hoffmann et al. 2022 的 ≈ {CHINCHILLA_TPP:.0f} 的 {fac:.1f} 倍"
            consistent = all(v > CHINCHILLA_TPP for v in tpp + lower) if fac > 2 else (
                all(v < CHINCHILLA_TPP for v in tpp + upper) if fac < 0.5 else None)
            extra = ""
            if consistent is True:
                extra = ("，所有能定下来的数和界都在同一侧：在这个尺度、这个设置下，计算最优的模型"
                         + ("比 “20 tokens/参数” 更小、看更多数据" if fac > 2 else "比 “20 tokens/参数” 更大、看更少数据"))
            parts_txt.append(f"这{rel}{extra}。")
            if n_exp is not None:
                e_seed = summarize(n_exp_seed)
                e_txt = f"{n_exp['slope']:.2f}" + (f"（逐种子 {fmt_mean_std(n_exp_seed, '.2f')}）" if e_seed["n"] > 1 else "")
                parts_txt.append(
                    f"最优 N 随 C 增长：N_opt ∝ C^{e_txt}（Kaplan et al. 2020：0.73，即多出来的计算大多给模型；"
                    f"Hoffmann et al. 2022 表 2：0.46–0.50，模型和数据各一半）。只有 {len(br)} 个切片、C 只跨 "
                    f"{math.log10(br[-1]['C'] / br[0]['C']):.1f} 个数量级，这个指数很粗。")
                verdict["n_opt_exponent"] = n_exp["slope"]
            else:
                parts_txt.append(f"落在范围内的切片只有 {len(br)} 个，不够拟合 N_opt ∝ C^a 的指数"
                                 "（Kaplan et al. 2020：a ≈ 0.73；Hoffmann et al. 2022 表 2：0.46–0.50）。")
        elif not iso_mean:
            parts_txt.append("固定计算量：没有哪个计算量同时被至少 3 个尺寸的训练曲线覆盖，做不了 IsoFLOP 切片；"
                             "需要更长的训练（完整模式）。")
        else:
            parts_txt.append(
                f"固定计算量：{len(iso_mean)} 个 IsoFLOP 切片里没有一个的抛物线最低点落在已训练的尺寸之间，"
                "这次的数据定不出最优的 tokens/参数。" + bound_txt + "需要更宽的尺寸范围或更长的训练。")
        # 能说明多少
        caveats = [f"最大的模型（{_fmt_n(N_tot[-1])} 个参数）是 MiniMind2-small（{MINIMIND2_SMALL / 1e6:.1f}M）的 1/{MINIMIND2_SMALL / N_tot[-1]:.0f}",
                   f"尺寸只跨 {math.log10(span):.1f} 个数量级",
                   f"6N 漏掉的注意力 FLOPs 在最小的模型上是 6N 的 {100 * att[0]:.0f}%、最大的 {100 * att[-1]:.0f}%，"
                   f"共享的 lm_head 矩阵乘又是 {100 * head[0]:.0f}% / {100 * head[-1]:.0f}%（Kaplan 的 6N 在 d_model 远大于 n_ctx/12 时才准）",
                   "一个字符 token 的信息量远少于一个 BPE token，tokens/参数不能直接对比",
                   "学习率没有按尺寸调、也没有退火（中途的评估点才能当作合法的运行）"]
        epochs = max(steps) / epoch_steps
        if epochs >= 1:
            caveats.append(f"最小的模型把训练集看了 {epochs:.1f} 遍（缩放定律的论文假设数据不重复）")
        if len(seeds) > 1 and a_s["n"] > 1:
            gaps = [m[i] - m[i + 1] for i in range(len(m) - 1)]
            noise = statistics.fmean(summarize(fixed[i])["std"] or 0 for i in range(len(N)))
            caveats.append(f"种子间的 loss 标准差平均 {noise:.3f}，相邻尺寸的差距最小 {min(gaps):.3f}")
        shape_seen = fit_mean["r2"] >= 0.9 and m[-1] < m[0] and bool(br)
        verdict["shape_seen"] = shape_seen
        if shape_seen:
            so = ("所以这些数字能说明的是：缩放定律的“形状”——固定数据时 loss 随 N 近似幂律下降、固定计算量时存在一个最省的大小——"
                  "在几万参数的模型上也看得见；")
        elif fit_mean["r2"] >= 0.9 and m[-1] < m[0]:
            so = "所以这些数字只看到了一半：固定数据时 loss 随 N 近似幂律下降，但固定计算量时的最优大小这次没有定出来；"
        else:
            so = "所以这次连缩放的形状都没有看清楚（幂律拟合得不好），上面的数只能当作记录；"
        parts_txt.append("能说明多少：" + "；".join(caveats) + "。" + so +
                         "它们不能用来推算大模型该用多少数据——Hoffmann et al. 2022 的 ≈ 20 来自 400 多次运行、"
                         "7000 万到 160 亿参数、50 亿到 5000 亿 token。")
        if parts.fallbacks:
            parts_txt.append("（这次换成参考实现的部件：" + "、".join(parts.fallbacks) + "。）")
        return "\n".join(parts_txt), verdict

    # ------------------------------------------------------------------------------------------
    def _plot(self, cfgs, N, runs, fixed, fit_mean, curves_mean, frontier, iso_mean, D_fix, seeds):
        import numpy as np

        fig, axes = new_figure(2, 2, width=6.0, height=4.6)
        colors = [f"C{i}" for i in range(len(cfgs))]
        ax = axes[0, 0]
        for i in range(len(cfgs)):
            ys = [y for y in fixed[i] if math.isfinite(y)]
            ax.scatter([N[i]] * len(ys), ys, color=colors[i], s=18, alpha=0.6)
        m = [summarize(fixed[i])["mean"] for i in range(len(cfgs))]
        ax.plot(N, m, "k.", ms=10)
        if math.isfinite(fit_mean["slope"]):
            xs = np.geomspace(N[0], N[-1], 50)
            ax.plot(xs, np.exp(fit_mean["intercept"]) * xs ** fit_mean["slope"], "k--", lw=1,
                    label=f"L ∝ N^{fit_mean['slope']:.3f}")
            ax.legend(fontsize="small")
        ax.set_xscale("log")
        ax.set_xlabel(label(("非嵌入参数 N", "non-embedding params N")))
        ax.set_ylabel(label(("验证 loss（nats/字符）", "val loss (nats/char)")))
        ax.set_title(label((f"固定 token 数 D = {D_fix:,}", f"fixed tokens D = {D_fix:,}")))
        ax.grid(True, which="both", alpha=0.3)

        ax = axes[0, 1]
        for i, cfg in enumerate(cfgs):
            cs, ls = curves_mean[i]
            ax.plot(cs, ls, color=colors[i], lw=1.2, label=f"{cfg.hidden_size}×{cfg.num_hidden_layers}")
        if frontier:
            ax.plot([f[0] for f in frontier], [f[1] for f in frontier], "k:", lw=2,
                    label=label(("前沿", "frontier")))
        for x in iso_mean:
            ax.axvline(x["C"], color="gray", lw=0.5, alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel(label(("计算量 C = 6ND（FLOPs）", "compute C = 6ND (FLOPs)")))
        ax.set_ylabel(label(("验证 loss", "val loss")))
        ax.set_title(label(("loss vs 计算量（竖线 = IsoFLOP 切片）", "loss vs compute (lines = IsoFLOP slices)")))
        ax.legend(fontsize="x-small", ncol=2)
        ax.grid(True, which="both", alpha=0.3)

        ax = axes[1, 0]
        for j, x in enumerate(iso_mean):
            ns = [N[i] for i in x["sizes"]]
            ax.plot(ns, x["losses"], "o", color=f"C{j}", ms=4, label=f"C={x['C']:.1e}")
            if x["coef"]:
                xs = np.linspace(math.log(min(ns)), math.log(max(ns)), 40)
                ax.plot(np.exp(xs), np.polyval(x["coef"], xs), "-", color=f"C{j}", lw=0.8)
            if x["bracketed"]:
                ax.plot([x["n_opt"]], [np.polyval(x["coef"], math.log(x["n_opt"]))], "*", color=f"C{j}", ms=11,
                        markeredgecolor="k")
        ax.set_xscale("log")
        ax.set_xlabel(label(("非嵌入参数 N", "non-embedding params N")))
        ax.set_ylabel(label(("验证 loss", "val loss")))
        ax.set_title(label(("IsoFLOP：同一个 C，哪个大小最好（★ = 抛物线最低点）", "IsoFLOP slices (★ = parabola minimum)")))
        if iso_mean:
            ax.legend(fontsize="x-small")
        ax.grid(True, which="both", alpha=0.3)

        ax = axes[1, 1]
        br = [x for x in iso_mean if x["bracketed"]]
        if br:
            ax.plot([x["C"] for x in br], [x["tokens_per_param"] for x in br], "o-", label=label(("本实验（非嵌入 N）", "this run (non-emb N)")))
            ax.plot([x["C"] for x in br], [x["tokens_per_total_param"] for x in br], "s--", ms=4,
                    label=label(("本实验（全部参数）", "this run (total N)")))
        ax.axhline(CHINCHILLA_TPP, color="k", ls=":", label="Hoffmann et al. 2022 ≈ 20")
        ax.set_xscale("log")
        ax.set_xlabel(label(("计算量 C（FLOPs）", "compute C (FLOPs)")))
        ax.set_ylabel(label(("最优 D / N", "optimal tokens per param")))
        ax.set_title(label(("计算最优的 tokens / 参数", "compute-optimal tokens per parameter")))
        if not br:
            ax.text(0.5, 0.5, label(("没有切片找到范围内的最优点", "no slice bracketed an optimum")),
                    transform=ax.transAxes, ha="center", fontsize=9)
        ax.legend(fontsize="x-small")
        ax.grid(True, which="both", alpha=0.3)
        from matplotlib.ticker import NullFormatter
        for a in axes.flat:              # x 是对数轴：次刻度标签会挤成一团，只留主刻度的数字（y 用线性轴，范围不到一个数量级）
            a.xaxis.set_minor_formatter(NullFormatter())
        fig.tight_layout()
        self.save_figure(fig, "scaling")


if __name__ == "__main__":
    sys.exit(Scaling.main())
