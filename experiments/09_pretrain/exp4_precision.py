"""实验 4：float32 vs bfloat16 autocast（CPU）——快了多少？loss 变了没有？

同一个模型（你的 MiniMindForCausalLM，kata train 默认预设 cpu 的形状：hidden 128、4 层、4/4 头，batch 12、seq 64），
同一份初始化、同样的批次，训练两次：
  float32：普通训练；
  bfloat16：前向包在 torch.autocast("cpu", dtype=torch.bfloat16) 里（参数、梯度、AdamW 的状态仍是 float32，
            logits 转回 float32 再算 loss——混合精度；bf16 的指数范围和 float32 一样，不需要 GradScaler）。

两次训练**交替推进**：fp32 走 W 步、bf16 走 W 步（下一轮先 bf16 再 fp32），每个窗口单独计时。机器被别的任务占用时，
负载同时落在相邻的两个窗口上，所以报告的是**逐对窗口速度之比的中位数**，而不是两次总时间之比。
另外在几个不同宽度上只测速度（同样交替计时），看 bf16 的收益和矩阵大小的关系。

报告：tokens/s（墙钟与 CPU 时间两种口径，窗口中位数）、bf16/fp32 之比；最终 held-out loss 按种子配对的差，
以及它是否超过种子间的波动；/proc/cpuinfo 里和 bf16 有关的指令集标志（avx512_bf16、AMX……）。
很多没有这些指令的 CPU 上 bf16 反而更慢：autocast 每一步都要把 float32 权重转成 bf16，算子也没有硬件加速。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402

from _batch_precision_tools import (AutocastLM, Stopwatch, TrainRun, build_model, cpu_info, has_native_bf16,  # noqa: E402
                                    held_out_loss, model_config, resolve_pieces)
from kata.arms import describe_paired, paired  # noqa: E402
from kata.experiment import Experiment, fmt_mean_std, summarize  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

PRECISIONS = ("fp32", "bf16")
PREC_ZH = {"fp32": "float32", "bf16": "bfloat16 autocast"}


def quantile(values, q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def speed_summary(windows: list) -> dict:
    """交替计时的窗口 → 每种精度 tokens/s 的中位数（墙钟 / CPU 时间）与逐对之比 bf16/fp32 的中位数和四分位数。

    windows：[{"pair", "precision", "tokens", "wall", "cpu", "warmup"}]；warmup 的那一对不计（第一次分配内存、建缓存）。
    """
    use = [w for w in windows if not w["warmup"]]
    out = {}
    for clock in ("wall", "cpu"):
        rate = {p: [w["tokens"] / w[clock] for w in use if w["precision"] == p and w[clock] > 0] for p in PRECISIONS}
        by_pair: dict = {}
        for w in use:
            if w[clock] > 0:
                by_pair.setdefault(w["pair"], {})[w["precision"]] = w["tokens"] / w[clock]
        ratios = [d["bf16"] / d["fp32"] for d in by_pair.values() if len(d) == 2]
        out[clock] = {"median_tokens_per_s": {p: statistics.median(rate[p]) if rate[p] else float("nan") for p in PRECISIONS},
                      "pair_ratios": ratios, "n_pairs": len(ratios),
                      "ratio_median": statistics.median(ratios) if ratios else float("nan"),
                      "ratio_q25": quantile(ratios, 0.25), "ratio_q75": quantile(ratios, 0.75)}
    return out


def speed_verdict(s: dict) -> str:
    """'faster' | 'slower' | 'unclear'：逐对之比的四分位数整个在 1 的哪一边。"""
    if s["n_pairs"] < 2:
        return "unclear"
    if s["ratio_q25"] > 1.0:
        return "faster"
    if s["ratio_q75"] < 1.0:
        return "slower"
    return "unclear"


class Precision(Experiment):
    name = "exp4_precision"
    module = "09_pretrain"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = ("速度与语料无关；loss 的比较看的是两种数值精度在同样数据上训练的差别，"
                        "这是数值层面的现象，不依赖语料是不是真实英文")
    title = "实验 4：float32 vs bfloat16 autocast（CPU）——tokens/s 与最终 loss"
    description = ("用你的 MiniMindForCausalLM 和训练部件，同一初始化、同样的批次，float32 与 bf16 autocast 各训练一次，\n"
                   "交替计时；报告 tokens/s（窗口中位数、逐对之比）、按种子配对的最终 held-out loss 差，以及 CPU 的 bf16 指令集标志。")
    default_threads = 1

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="每次训练的步数（默认：快速 100，完整 300）")
        parser.add_argument("--window", type=int, default=None, help="每个计时窗口的步数（默认：快速 10，完整 15）")
        parser.add_argument("--widths", type=int, nargs="+", default=None, metavar="H",
                            help="只测速度的其他宽度 hidden_size（默认 64 256；4 层、4 头，batch 与主实验相同）")
        parser.add_argument("--lr", type=float, default=None, help="峰值学习率（默认 3e-3，同 kata train 的 cpu 预设）")

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

        if self.device != "cpu":
            self.note(f"这个实验测的是 CPU 上的 autocast：模型放在 CPU 上运行（--device 选到的是 {self.device}）。")
        cpu = cpu_info()
        native = has_native_bf16(cpu)
        flags_on = [f for f, v in cpu.get("flags", {}).items() if v]
        print(f"CPU：{cpu['model']}；PyTorch 的 CPU 指令集级别 {cpu['torch_cpu_capability']}；"
              + (f"相关标志：{' '.join(flags_on) or '（一个也没有）'}" if cpu.get("flags_found") else "读不到 /proc/cpuinfo 的标志")
              + f"；线程数 {torch.get_num_threads()}")

        corpus = self.load_corpus()
        preset = PRESETS["cpu"]
        T = preset["train"]["seq_len"]
        B = preset["train"]["batch_size"] if not self.smoke else 4
        lr = self.args.lr or preset["train"]["lr"]
        shape = dict(preset["model"]) if not self.smoke else dict(hidden_size=32, num_hidden_layers=1,
                                                                   num_attention_heads=2, num_key_value_heads=1)
        steps = self.args.steps or self.by_mode(smoke=4, quick=100, full=300)
        window = self.args.window or self.by_mode(smoke=1, quick=10, full=15)
        widths = self.args.widths or self.by_mode(smoke=[16], quick=[64, 256], full=[64, 256])
        widths = [h for h in widths if h != shape["hidden_size"]]
        sweep_pairs = self.by_mode(smoke=2, quick=3, full=6)
        seeds = self.seeds(full=3, quick=2, smoke=1)
        warmup = max(1, round(0.05 * steps))
        final_seqs = self.by_mode(smoke=8, quick=512, full=512)
        cfg = model_config(corpus.tokenizer.vocab_size, T, **shape)
        self.config(model=cfg.to_dict(), steps=steps, batch_size=B, seq_len=T, lr=lr, warmup_steps=warmup,
                    min_lr_ratio=0.1, weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0, window_steps=window,
                    sweep_widths=widths, sweep_pairs=sweep_pairs, final_eval_seqs=final_seqs, threads=torch.get_num_threads(),
                    autocast='torch.autocast("cpu", dtype=torch.bfloat16) around the forward; logits.float() before the loss',
                    eval_precision="float32 for both (the bf16 model is also evaluated under autocast)")
        Dataset = pieces.PretrainDataset
        train_ds, val_ds = Dataset(corpus.train_ids, T), Dataset(corpus.val_ids, T)

        # 1) 同一份权重上一次前向：bf16 的舍入让 loss 差多少（每一步梯度里的“数值噪声”有多大）
        probe_model = build_model(pieces, cfg, seeds[0]).eval()
        x, y = pieces.rank_batch(val_ds, 0, B, 0, 1, 0)
        with torch.no_grad():
            l32 = torch.nn.functional.cross_entropy(probe_model(x).logits.float().flatten(0, 1), y.flatten())
            with torch.autocast("cpu", dtype=torch.bfloat16):
                lg16 = probe_model(x).logits
            l16 = torch.nn.functional.cross_entropy(lg16.float().flatten(0, 1), y.flatten())
            logit_diff = float((lg16.float() - probe_model(x).logits.float()).abs().max())
        init_probe = {"loss_fp32": float(l32), "loss_bf16": float(l16), "abs_diff": abs(float(l16 - l32)),
                      "logits_max_abs_diff": logit_diff, "logits_dtype_under_autocast": str(lg16.dtype)}
        print(f"初始化时同一批数据、同一份权重：loss fp32 {float(l32):.5f}，bf16 {float(l16):.5f}（差 {init_probe['abs_diff']:.1e}），"
              f"logits 最大差 {logit_diff:.1e}（autocast 下 logits 的 dtype：{lg16.dtype}）")
        del probe_model

        # 2) 主实验：每个种子 fp32 与 bf16 交替训练
        n_params = None
        runs = {p: [] for p in PRECISIONS}
        windows = []
        for s in seeds:
            m32, m16 = build_model(pieces, cfg, s), build_model(pieces, cfg, s)
            same_init = all(torch.equal(a, b) for a, b in zip(m32.state_dict().values(), m16.state_dict().values()))
            n_params = sum(p.numel() for p in m32.parameters())
            tr = {"fp32": TrainRun(pieces, m32, train_ds, val_ds, steps=steps, batch=B, lr=lr, warmup=warmup, seed=s),
                  "bf16": TrainRun(pieces, m16, train_ds, val_ds, steps=steps, batch=B, lr=lr, warmup=warmup, seed=s,
                                   net=AutocastLM(m16))}
            windows += self._interleave(tr, window, B * T, tag={"seed": s, "hidden": cfg.hidden_size},
                                        desc=f"seed {s}")
            for p in PRECISIONS:
                r = tr[p]
                ev32 = held_out_loss(pieces, r.model, val_ds, final_seqs) if r.diverged_at is None else float("nan")
                rec = {"seed": s, "precision": p, "final_val_loss": ev32, "diverged_at": r.diverged_at,
                       "train_losses": r.losses, "same_init_as_other_precision": same_init}
                if p == "bf16":
                    rec["final_val_loss_bf16_inference"] = r.evaluate(final_seqs)
                runs[p].append(rec)
            print(f"  seed {s}: held-out loss fp32 {runs['fp32'][-1]['final_val_loss']:.4f}，"
                  f"bf16 {runs['bf16'][-1]['final_val_loss']:.4f}（bf16 推理时 {runs['bf16'][-1]['final_val_loss_bf16_inference']:.4f}）")
        main_speed = speed_summary([w for w in windows if w["hidden"] == cfg.hidden_size])

        # 3) 其他宽度只测速度
        sweep = {cfg.hidden_size: main_speed}
        sweep_n_params = {cfg.hidden_size: n_params}
        for h in widths:
            heads = 4 if h % 4 == 0 and h >= 16 else 2
            c = model_config(corpus.tokenizer.vocab_size, T, **{**shape, "hidden_size": h, "num_attention_heads": heads,
                                                               "num_key_value_heads": heads})
            m32, m16 = build_model(pieces, c, seeds[0]), build_model(pieces, c, seeds[0])
            sweep_n_params[h] = sum(p.numel() for p in m32.parameters())
            n = (sweep_pairs + 1) * window   # 多出来的一对是 warm-up
            tr = {"fp32": TrainRun(pieces, m32, train_ds, val_ds, steps=n, batch=B, lr=lr, warmup=1, seed=seeds[0]),
                  "bf16": TrainRun(pieces, m16, train_ds, val_ds, steps=n, batch=B, lr=lr, warmup=1, seed=seeds[0],
                                   net=AutocastLM(m16))}
            w = self._interleave(tr, window, B * T, tag={"seed": seeds[0], "hidden": h}, desc=f"hidden {h}")
            windows += w
            sweep[h] = speed_summary(w)

        pl = paired(runs["fp32"], runs["bf16"])   # d_s = bf16(s) − fp32(s)
        self._tables(runs, sweep, sweep_n_params, pl, seeds, cfg)
        self._plot(runs, sweep, windows, cfg)
        self.conclude(self._conclusion(runs, sweep, pl, cpu, native, init_probe, cfg, len(seeds)))
        return {"cpu": cpu, "native_bf16": native, "init_probe": init_probe, "runs": runs, "windows": windows,
                "speed": {str(h): v for h, v in sweep.items()}, "n_params": {str(h): v for h, v in sweep_n_params.items()},
                "speed_verdict": {str(h): {c: speed_verdict(v[c]) for c in ("wall", "cpu")} for h, v in sweep.items()},
                "paired_loss_diff_bf16_minus_fp32": pl,
                "final_val_loss": {p: summarize([r["final_val_loss"] for r in runs[p]]) for p in PRECISIONS}}

    # ------------------------------------------------------------------------------------------
    def _interleave(self, tr: dict, window: int, tokens_per_step: int, tag: dict, desc: str) -> list:
        """两次训练交替推进，每个窗口计时；第 0 对标为 warm-up。顺序 ABBA：偶数对先 fp32，奇数对先 bf16。"""
        from tqdm import tqdm

        out = []
        total = sum(r.steps for r in tr.values())
        bar = tqdm(total=total, desc=desc, disable=None if self.progress else True, leave=False, dynamic_ncols=True,
                   unit="step")
        pair = 0
        try:
            while not all(r.done for r in tr.values()):
                order = PRECISIONS if pair % 2 == 0 else PRECISIONS[::-1]
                for p in order:
                    r = tr[p]
                    if r.done:
                        continue
                    with Stopwatch() as sw:
                        n = r.advance(window)
                    bar.update(n)
                    if n == window:   # 不完整的最后一个窗口（或发散）不计时
                        out.append({**tag, "pair": (tag["seed"], tag["hidden"], pair), "precision": p,
                                    "tokens": n * tokens_per_step, "wall": sw.wall, "cpu": sw.cpu, "warmup": pair == 0})
                pair += 1
        finally:
            bar.close()
        return out

    # ------------------------------------------------------------------------------------------
    def _tables(self, runs, sweep, sweep_n_params, pl, seeds, cfg):
        rows = []
        for h in sorted(sweep):
            s = sweep[h]
            row = [h, f"{sweep_n_params[h]:,}"]
            for clock in ("wall", "cpu"):
                m = s[clock]["median_tokens_per_s"]
                row += [f"{m['fp32']:,.0f}", f"{m['bf16']:,.0f}",
                        f"{s[clock]['ratio_median']:.2f}（{s[clock]['ratio_q25']:.2f}–{s[clock]['ratio_q75']:.2f}）"]
            row.append(s["cpu"]["n_pairs"])
            rows.append(row)
        self.print_table(["hidden", "参数量", "fp32 tok/s（墙钟）", "bf16 tok/s（墙钟）", "bf16/fp32（墙钟，四分位）",
                          "fp32 tok/s（CPU）", "bf16 tok/s（CPU）", "bf16/fp32（CPU，四分位）", "窗口对数"], rows,
                         title=f"训练速度（每个窗口的中位数；逐对之比的中位数与四分位数；hidden {cfg.hidden_size} 是主实验，"
                               f"其余只测速度；{torch.get_num_threads()} 个线程）")
        rows = []
        for i, s in enumerate(seeds):
            a, b = runs["fp32"][i], runs["bf16"][i]
            rows.append([s, f"{a['final_val_loss']:.4f}", f"{b['final_val_loss']:.4f}",
                         f"{b['final_val_loss'] - a['final_val_loss']:+.4f}", f"{b['final_val_loss_bf16_inference']:.4f}"])
        rows.append(["均值 ± 标准差", fmt_mean_std([r["final_val_loss"] for r in runs["fp32"]], ".4f"),
                     fmt_mean_std([r["final_val_loss"] for r in runs["bf16"]], ".4f"),
                     (f"{pl['mean']:+.4f}" + (f" ± {pl['std']:.4f}" if pl["std"] is not None else "")) if pl["n"] else "—",
                     fmt_mean_std([r["final_val_loss_bf16_inference"] for r in runs["bf16"]], ".4f")])
        self.print_table(["种子", "fp32：held-out loss", "bf16 训练：held-out loss", "差（bf16 − fp32）", "bf16 训练、bf16 推理"],
                         rows, title="最终 held-out loss（nats/字符；两个模型都用 float32 评估，最后一列是 bf16 模型在 autocast 下评估）")

    # ------------------------------------------------------------------------------------------
    def _conclusion(self, runs, sweep, pl, cpu, native, init_probe, cfg, n_seeds) -> str:
        parts = []
        flags_on = [f for f, v in cpu.get("flags", {}).items() if v]
        if native is None:
            hw = "读不到这台机器的 CPU 指令集标志（不是 Linux，或没有 /proc/cpuinfo）"
        elif native:
            hw = "这颗 CPU 有 bf16 的硬件指令（" + "、".join(f for f in flags_on if f in ("avx512_bf16", "amx_bf16", "amx_tile", "bf16")) + "）"
        else:
            hw = "这颗 CPU 没有 bf16 的硬件指令（没有 avx512_bf16 / AMX，ARM 上没有 bf16）"
        main = sweep[cfg.hidden_size]
        r_wall, r_cpu = main["wall"]["ratio_median"], main["cpu"]["ratio_median"]
        v = speed_verdict(main["cpu"])
        word = {"faster": "更快", "slower": "更慢", "unclear": "没有一致的快慢"}[v]
        parts.append(f"{hw}。主实验（hidden {cfg.hidden_size}）里 bf16 autocast 的训练速度是 float32 的 {r_cpu:.2f} 倍（按 CPU 时间，"
                     f"逐对窗口之比的四分位数 {main['cpu']['ratio_q25']:.2f}–{main['cpu']['ratio_q75']:.2f}；按墙钟时间 {r_wall:.2f} 倍）"
                     f"——{word}。")
        others = []
        for h in sorted(sweep):
            s = sweep[h]["cpu"]
            others.append(f"hidden {h}：{s['ratio_median']:.2f}×")
        if len(sweep) > 1:
            rs = [(h, sweep[h]["cpu"]["ratio_median"]) for h in sorted(sweep)]
            parts.append("不同宽度的 bf16/fp32 速度比（CPU 时间）：" + "，".join(others) + "。")
            if all(b[1] > a[1] for a, b in zip(rs, rs[1:])):
                parts.append("模型越宽，bf16 越划算。一个可能的原因（这里没有单独测）：autocast 每一步都要把 float32 权重转换成 bf16，"
                             "这笔开销与矩阵乘的计算量之比在小矩阵上最大；矩阵变大后，bf16 矩阵乘本身省下的时间才占上风。")
            elif all(b[1] < a[1] for a, b in zip(rs, rs[1:])):
                parts.append("这次模型越宽，bf16 反而越不划算——与“大矩阵更能吃到 bf16 的好处”的预期相反，如实记录。")
        if native is False and v == "slower":
            parts.append("没有 bf16 硬件指令时，bf16 矩阵乘要用 float32 指令模拟、再加上类型转换，变慢是意料之中的：在这样的 CPU 上训练就用 float32。")
        elif native and v == "slower":
            parts.append("虽然 CPU 支持 bf16，这么小的模型上类型转换和调度的开销仍然比省下的计算多。")
        parts.append(f"单次前向的舍入误差：初始化时同一批数据上 loss 差 {init_probe['abs_diff']:.1e}、logits 最多差 {init_probe['logits_max_abs_diff']:.1e}"
                     "（bf16 的有效位只有 8 个二进制位，相对舍入误差最多约 2⁻⁸ ≈ 4e-3；float32 是 24 位）。")
        div = [f"{PREC_ZH[p]} 种子 {r['seed']} 发散于第 {r['diverged_at']} 步" for p in PRECISIONS for r in runs[p]
               if r["diverged_at"] is not None]
        if div:
            parts.append("发散（loss 或梯度不再有限）：" + "；".join(div) + "。")
        parts.append(describe_paired(pl, "float32", "bfloat16 autocast", what="最终 held-out loss", fmt=".4f"))
        seed_std = summarize([r["final_val_loss"] for r in runs["fp32"]])["std"]
        if pl["n"] and seed_std:
            parts.append(f"对照：float32 本身在种子之间的标准差是 {seed_std:.4f}，配对差的均值是它的 {abs(pl['mean']) / seed_std:.2f} 倍。")
        inf = [r["final_val_loss_bf16_inference"] - r["final_val_loss"] for r in runs["bf16"]
               if math.isfinite(r.get("final_val_loss_bf16_inference", float("nan"))) and math.isfinite(r["final_val_loss"])]
        if inf:
            parts.append(f"同一个 bf16 训练的模型，用 bf16 推理比用 float32 推理的 held-out loss 平均差 {statistics.fmean(inf):+.5f}。")
        parts.append("速度只在这台机器、这个线程数上成立（见 JSON 里的 cpu 与 versions）；机器忙时墙钟时间被拉长，"
                     "所以看逐对之比和 CPU 时间，而不是单个 tokens/s。minimind 的 trainer/train_pretrain.py 默认 --dtype bfloat16，"
                     "但只在 GPU 上打开 autocast，在 CPU 上 autocast_ctx 是 nullcontext（也就是 float32）；"
                     "CPU 上要不要用 bf16，取决于上面这个比值。")
        if n_seeds == 1:
            parts.append("只有 1 个种子：loss 的差别无法与随机波动区分（完整模式跑 3 个种子）。")
        return "\n".join(parts)

    # ------------------------------------------------------------------------------------------
    def _plot(self, runs, sweep, windows, cfg):
        fig, axes = new_figure(1, 3, width=5.2, height=4.2)
        ax = axes[0, 0]
        for p, color in zip(PRECISIONS, ("C0", "C3")):
            for i, r in enumerate(runs[p]):
                ls = r["train_losses"]
                k = 10
                smooth = [statistics.fmean(ls[max(0, j - k + 1):j + 1]) for j in range(len(ls))]
                ax.plot(range(len(ls)), smooth, color=color, alpha=0.8, linewidth=1.0,
                        label=label((PREC_ZH[p], PREC_ZH[p])) if i == 0 else None)
        ax.set_xlabel(label(("更新次数", "step")))
        ax.set_ylabel(label(("训练 loss（10 步滑动平均）", "train loss (10-step moving avg)")))
        ax.set_title(label(("训练曲线（每个种子一条）", "training curves (one per seed)")))
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)

        ax = axes[0, 1]
        use = [w for w in windows if w["hidden"] == cfg.hidden_size and not w["warmup"]]
        for p, color in zip(PRECISIONS, ("C0", "C3")):
            pts = [w["tokens"] / w["cpu"] for w in use if w["precision"] == p and w["cpu"] > 0]
            ptw = [w["tokens"] / w["wall"] for w in use if w["precision"] == p and w["wall"] > 0]
            ax.plot(range(len(pts)), pts, "o-", color=color, markersize=3,
                    label=label((f"{PREC_ZH[p]}（CPU 时间）", f"{p} (CPU time)")))
            ax.plot(range(len(ptw)), ptw, "x:", color=color, markersize=3, alpha=0.6,
                    label=label((f"{PREC_ZH[p]}（墙钟）", f"{p} (wall)")))
        ax.set_xlabel(label(("计时窗口（按时间顺序）", "timed window (in order)")))
        ax.set_ylabel("tokens/s")
        ax.set_title(label((f"主实验每个窗口的速度（hidden {cfg.hidden_size}）", f"per-window speed (hidden {cfg.hidden_size})")))
        ax.legend(fontsize="x-small")
        ax.grid(True, alpha=0.3)

        ax = axes[0, 2]
        hs = sorted(sweep)
        for clock, style in (("cpu", "o-"), ("wall", "x:")):
            ax.plot(hs, [sweep[h][clock]["ratio_median"] for h in hs], style,
                    label=label((f"bf16/fp32（{'CPU 时间' if clock == 'cpu' else '墙钟'}）", f"bf16/fp32 ({clock})")))
            ax.fill_between(hs, [sweep[h][clock]["ratio_q25"] for h in hs], [sweep[h][clock]["ratio_q75"] for h in hs],
                            alpha=0.15)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden_size")
        ax.set_ylabel(label(("速度比（>1 = bf16 更快）", "speed ratio (>1 = bf16 faster)")))
        ax.set_title(label(("bf16/fp32 速度比 vs 宽度", "bf16/fp32 speed ratio vs width")))
        ax.legend(fontsize="x-small")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "precision")


if __name__ == "__main__":
    sys.exit(Precision.main())
