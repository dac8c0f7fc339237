"""实验 4：梯度累积 = 大 batch？中断再续训 = 没中断过？

前半：batch 4k 一次更新 vs 4 个大小 k 的 micro-batch 累积（同样的数据：大 batch 就是那 4 个 micro-batch 拼起来），
用你的 train_step、AdamW、cosine_lr、clip_grad_norm，画两条 loss 曲线并打印最大差。
后半：一次训练在中途 save_checkpoint，换一个全新的模型和优化器 load_checkpoint 接着训（模型带 dropout，
torch 随机数要恢复；数据发生器的状态放在 extra 里），画在不中断的曲线上，打印最大差（应为 0）；
再模拟 minimind 的做法——续训时权重被舍入成 fp16——看它离开原曲线多远。对应 teaching.md §6.1、§7。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import tempfile  # noqa: E402

import torch  # noqa: E402

from _train_tools import TrainingExperiment, flat_params, pieces, tiny_model, train  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

ACCUM = 4


class _Concat:
    """把 corpus.get_batch 换成“连取 ACCUM 个 micro-batch 再拼起来”：大 batch 与累积看到完全相同的样本。"""

    def __init__(self, corpus, parts):
        self.corpus, self.parts = corpus, parts

    def get_batch(self, split, batch_size, seq_len, generator=None, device="cpu"):
        xs, ys = zip(*(self.corpus.get_batch(split, batch_size // self.parts, seq_len, generator=generator, device=device)
                       for _ in range(self.parts)))
        return torch.cat(xs), torch.cat(ys)


class AccumulationAndResume(TrainingExperiment):
    name = "exp4_accumulation_and_resume"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "它检验梯度累积与断点续训在数值上是否等价，任何确定的语料都一样能检验"
    module = "08_training_loop"
    title = "实验 4：4 × 累积 vs 大 batch；中断续训 vs 不中断（你的 train_step 与 checkpoint）"
    description = "两组对照：曲线应当重合；打印逐步的最大差。"
    default_threads = 1
    needs = ("cross_entropy", "AdamW", "cosine_lr", "clip_grad_norm", "train_step", "save_checkpoint", "load_checkpoint")

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="更新次数（默认：快速 60，完整 200）")
        parser.add_argument("--micro-batch", type=int, default=8, help="micro-batch 大小 k（默认 8；大 batch 是 4k）")

    def run(self):
        ns = pieces(self, self.needs)
        corpus = self.load_corpus()
        steps = self.args.steps or self.by_mode(smoke=4, quick=60, full=200)
        k = self.args.micro_batch
        dim, layers = self.by_mode(smoke=(32, 1), quick=(64, 2), full=(64, 2))
        seq_len = self.by_mode(smoke=32, quick=64, full=64)
        lr, warmup = 1e-2, max(1, steps // 10)
        seed = self.seed
        self.config(steps=steps, micro_batch=k, accum_steps=ACCUM, big_batch=ACCUM * k, dim=dim, n_layers=layers,
                    seq_len=seq_len, lr=lr, warmup_steps=warmup, dropout_resume=0.1, dropout_accum=0.0, grad_clip=1.0)
        sched = lambda s: ns.cosine_lr(s, steps, lr, warmup_steps=warmup, min_lr=lr * 0.1)  # noqa: E731

        def fresh(model_seed, dropout=0.1):
            m = tiny_model(self, corpus, dim=dim, layers=layers, seq_len=seq_len, seed=model_seed, dropout=dropout)
            return m, ns.AdamW(m.parameters(), lr=lr, weight_decay=0.1)

        common = dict(batch=k, seq_len=seq_len, lr_at=sched, max_grad_norm=1.0, progress=self.progress,
                      device=self.device)

        # ---- 前半：累积 vs 大 batch（同样的初始权重、同样的样本；不用 dropout——大 batch 一次抽的掩码与分 4 次抽的不同）
        model, opt = fresh(seed, dropout=0.0)
        acc = train(ns, model, corpus, opt, steps=steps, accum=ACCUM, seed=seed, desc=f"{ACCUM}×{k} 累积", **common)
        model, opt = fresh(seed, dropout=0.0)
        big = train(ns, model, _Concat(corpus, ACCUM), opt, steps=steps, seed=seed, desc=f"batch {ACCUM * k}",
                    **dict(common, batch=ACCUM * k))
        n = min(len(acc.losses), len(big.losses))
        diffs = [abs(a - b) for a, b in zip(acc.losses[:n], big.losses[:n])]
        first_10 = max(diffs[:10]) if diffs else float("nan")
        acc_diff = max(diffs) if diffs else float("nan")

        # ---- 后半：不中断 vs 中断 + 续训（精确）vs 续训时权重被舍入成 fp16（minimind 式）
        half = steps // 2
        torch.manual_seed(seed)
        model, opt = fresh(seed)
        straight = train(ns, model, corpus, opt, steps=steps, accum=ACCUM, seed=seed, desc="不中断", **common)
        straight_params = flat_params(model)

        resumed = {}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "ck.pth"
            for mode in ("exact", "fp16"):
                torch.manual_seed(seed)
                model, opt = fresh(seed)
                gen = torch.Generator().manual_seed(seed)
                run = train(ns, model, corpus, opt, steps=half, accum=ACCUM, generator=gen, desc=f"{mode}：前半",
                            **common)
                ns.save_checkpoint(path, model, opt, half, data_rng=gen.get_state())
                torch.manual_seed(12345)                       # “进程重启”：随机数状态全变了
                model, opt = fresh(seed + 1000)                # 全新的模型（不同的初始权重）和优化器
                gen = torch.Generator().manual_seed(seed + 1000)
                ck = ns.load_checkpoint(path, model, opt)
                gen.set_state(ck["data_rng"])
                if mode == "fp16":                             # minimind 的 lm_checkpoint 把权重存成 fp16
                    with torch.no_grad():
                        for p in model.parameters():
                            p.copy_(p.half().float())
                run = train(ns, model, corpus, opt, steps=steps - ck["step"], start=ck["step"], accum=ACCUM,
                            generator=gen, run=run, desc=f"{mode}：续训", **common)
                resumed[mode] = (run, float((flat_params(model) - straight_params).abs().max()))

        def max_diff(run):
            m = min(len(run.losses), len(straight.losses))
            return max(abs(a - b) for a, b in zip(run.losses[:m], straight.losses[:m]))

        exact_diff, exact_w = max_diff(resumed["exact"][0]), resumed["exact"][1]
        fp16_diff, fp16_w = max_diff(resumed["fp16"][0]), resumed["fp16"][1]
        self.print_table(["对照", "逐步训练 loss 的最大差", "最终权重的最大差", "最终验证 loss"], [
            [f"{ACCUM}×{k} 累积 vs batch {ACCUM * k}", f"{acc_diff:.2e}（前 10 步 {first_10:.2e}）", "-",
             f"{acc.val_loss:.4f} vs {big.val_loss:.4f}"],
            [f"第 {half} 步中断 + 续训 vs 不中断", f"{exact_diff:.2e}", f"{exact_w:.2e}",
             f"{resumed['exact'][0].val_loss:.4f} vs {straight.val_loss:.4f}"],
            ["续训时权重舍入成 fp16（minimind 式）", f"{fp16_diff:.2e}", f"{fp16_w:.2e}",
             f"{resumed['fp16'][0].val_loss:.4f}"],
        ], title=f"{steps} 步，每步 {ACCUM} 个 micro-batch")
        self._plot(acc, big, straight, resumed, half, k)
        self.conclude(self._conclusion(acc_diff, first_10, exact_diff, exact_w, fp16_diff, half))
        return {"accumulated": acc.to_dict(), "big_batch": big.to_dict(), "straight": straight.to_dict(),
                "resumed_exact": resumed["exact"][0].to_dict(), "resumed_fp16": resumed["fp16"][0].to_dict(),
                "max_loss_diff": {"accum_vs_big": acc_diff, "accum_vs_big_first10": first_10,
                                  "resume_exact": exact_diff, "resume_fp16": fp16_diff},
                "max_weight_diff": {"resume_exact": exact_w, "resume_fp16": fp16_w}}

    def _conclusion(self, acc_diff, first_10, exact_diff, exact_w, fp16_diff, half):
        parts = []
        if acc_diff < 1e-3:
            parts.append(f"累积与大 batch 的两条 loss 曲线重合：逐步最大差 {acc_diff:.1e}（前 10 步 {first_10:.1e}），"
                         "只剩 float32 求和顺序带来的舍入误差。")
        else:
            parts.append(f"累积与大 batch 开头几乎重合（前 10 步最大差 {first_10:.1e}），整段最大差 {acc_diff:.1e}："
                         "float32 的舍入差在训练中被逐步放大，这是数值上的混沌，不是累积写错了"
                         "（写错时第一步就差很多）。" if first_10 < 1e-3 else
                         f"累积与大 batch 在前 10 步就差了 {first_10:.1e}：检查 train_step 是否把 loss 除以了 accum_steps。")
        if exact_diff == 0.0 and exact_w == 0.0:
            parts.append(f"第 {half} 步中断、读进全新的模型和优化器续训，loss 曲线和最终权重与不中断的那次**逐位相同**（最大差 0）。")
        else:
            parts.append(f"中断续训与不中断不一致：loss 最大差 {exact_diff:.1e}、权重最大差 {exact_w:.1e}——"
                         "检查 checkpoint 是否包含优化器状态、step、三个随机数发生器和数据位置（teaching.md §7.1）。")
        if fp16_diff > 0:
            parts.append(f"把续训时的权重舍入成 fp16（minimind 的 lm_checkpoint 就这样存）后，loss 曲线离开原曲线最多 {fp16_diff:.1e}"
                         + ("：单看一条曲线几乎看不出来，但它已经不是同一次训练了。" if fp16_diff < 1e-2 else
                            "：已经能在图上看出来了。"))
        else:
            parts.append("把续训时的权重舍入成 fp16 之后，这次的 loss 曲线竟然没有变化（权重恰好都能用 fp16 精确表示？）。")
        return "".join(parts)

    def _plot(self, acc, big, straight, resumed, half, k):
        fig, axes = new_figure(1, 2, width=6.0, height=4.2)
        ax = axes[0, 0]
        ax.plot(big.steps, big.losses, label=f"batch {ACCUM * k}", linewidth=2.5, alpha=0.5)
        ax.plot(acc.steps, acc.losses, "--", label=f"{ACCUM}×{k} accum", linewidth=1.0)
        ax.set_xlabel(label(("更新次数", "step")))
        ax.set_ylabel(label(("训练 loss", "train loss")))
        ax.set_title(label(("梯度累积 vs 大 batch", "accumulation vs big batch")))
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        ax = axes[0, 1]
        ax.plot(straight.steps, straight.losses, label=label(("不中断", "uninterrupted")), linewidth=2.5, alpha=0.5)
        r = resumed["exact"][0]
        ax.plot(r.steps[half:], r.losses[half:], "--", label=label(("续训（精确）", "resumed (exact)")), linewidth=1.0)
        r = resumed["fp16"][0]
        ax.plot(r.steps[half:], r.losses[half:], ":", label=label(("续训（fp16 权重）", "resumed (fp16 weights)")),
                linewidth=1.0)
        ax.axvline(half, color="k", linewidth=0.8, linestyle="--")
        ax.set_xlabel(label(("更新次数", "step")))
        ax.set_title(label((f"第 {half} 步中断并续训", f"interrupted at step {half} and resumed")))
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "curves")


if __name__ == "__main__":
    sys.exit(AccumulationAndResume.main())
