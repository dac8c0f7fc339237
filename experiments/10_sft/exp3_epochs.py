"""实验 3：在一小份指令数据上反复训练多个 epoch——训练集 vs held-out 的精确匹配，找出“背下来”的那一刻。

先预训练一个很小的字符级 MiniMind（一个底座，所有种子共用），再用你的 SFTDataset 在**很少的**几十道题上
一个 epoch 接一个 epoch 地训练（每个 epoch 把这几十道题打乱走一遍）。每个 epoch 结束后评估：

- 训练集那几十道题本身的精确匹配（模型背下来了吗）；
- held-out 题（实例从没在训练集里出现过）的精确匹配（它学会任务了吗）；
- 两边答案 token 的平均负对数似然（NLL）。

“背下来的点”由数据算出：训练集精确匹配第一次 ≥ --memorised（默认 90%）的 epoch；“开始过拟合的点”：
held-out 答案 NLL 最低的那个 epoch（之后训练集还在变好、held-out 却变差）。minimind 的 SFT 数据有几十万到上百万条，
通常只训 1–2 个 epoch；这个实验说明为什么数据少时反复训练换来的是记忆，而不是本事。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import _sft_tools as T  # noqa: E402
from kata import sft_data as D  # noqa: E402
from kata.experiment import fmt_mean_std  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402


class Epochs(T.SFTExperiment):
    name = "exp3_epochs"
    module = "10_sft"
    title = "实验 3：小数据上反复训练——训练集 vs held-out 的精确匹配，什么时候开始死记（你的 SFTDataset）"
    description = "几十道题训练很多个 epoch，每个 epoch 评估训练集与 held-out；背下来的点与过拟合的点都由数据算出。"
    can_use_synthetic = True
    synthetic_reason = ("预训练只提供一个底座；这里看的是 SFT 数据很少时训练集与 held-out 的分叉，"
                        "换成合成英文的底座，这个分叉同样会出现")

    def add_arguments(self, parser):
        parser.add_argument("--pretrain-steps", type=int, default=None, help="预训练步数（默认：快速 300，完整 600）")
        parser.add_argument("--n-small", type=int, default=None, help="小训练集的题数（默认：快速 48，完整 64）")
        parser.add_argument("--epochs", type=int, default=None, help="epoch 数（默认：快速 30，完整 40）")
        parser.add_argument("--batch-size", type=int, default=8, help="batch 大小（默认 8）")
        parser.add_argument("--lr", type=float, default=3e-3, help="SFT 学习率（默认 3e-3，余弦衰减到 10%%）")
        parser.add_argument("--n-eval", type=int, default=None, help="held-out 题数（默认：快速 48，完整 64）")
        parser.add_argument("--memorised", type=float, default=0.9,
                            help="训练集精确匹配达到多少算“背下来了”（0–1，默认 0.9）")

    def validate(self):
        if self.args.memorised > 1:
            from kata.experiment import UsageError

            raise UsageError(f"--memorised 是比例，应在 0 到 1 之间，收到的是 {self.args.memorised}")

    def run(self):
        k = T.kit(self)
        corpus = self.load_corpus()
        a = self.args
        pre_steps = a.pretrain_steps or self.by_mode(smoke=6, quick=300, full=600)
        n_small = a.n_small or self.by_mode(smoke=8, quick=48, full=64)
        epochs = a.epochs or self.by_mode(smoke=2, quick=30, full=40)
        n_eval = a.n_eval or self.by_mode(smoke=8, quick=48, full=64)
        dim, layers = self.by_mode(smoke=(32, 1), quick=(64, 2), full=(64, 2))
        batch, max_len = a.batch_size, 96
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps_per_epoch = -(-n_small // batch)
        total = epochs * steps_per_epoch
        self.config(pretrain_steps=pre_steps, n_small=n_small, epochs=epochs, batch_size=batch, lr=a.lr,
                    n_eval=n_eval, hidden_size=dim, num_hidden_layers=layers, max_length=max_len,
                    steps_per_epoch=steps_per_epoch, total_steps=total, memorised=a.memorised,
                    pretrain_shared="一个底座（--seed），所有种子都从它出发；种子改变的是小训练集的抽样和 batch 顺序")

        base = T.pretrain(self, k, corpus, seed=self.seed, dim=dim, layers=layers, steps=pre_steps, batch=16,
                          seq_len=64, lr=3e-3, max_len=128)
        print(f"预训练：{pre_steps} 步，验证 loss {base.pretrain_val_loss:.3f}；之后每个种子在 {n_small} 道题上训练 "
              f"{epochs} 个 epoch（每个 epoch {steps_per_epoch} 步，共 {total} 步）")
        held = D.make_examples(n_eval, "held_out", self.seed)
        held_convs = [e.messages() for e in held]

        runs = []
        for s in seeds:
            small = D.make_examples(n_small, "train", 1000 + s)   # 每个种子一份不同的小训练集
            convs = [e.messages() for e in small]
            model = T.fresh_model(k, base, pretrained=True, seed=s, device=self.device)
            _, get = T.labels_getter(k, base.tok, convs, max_len, "assistant")
            opt = T.new_optimizer(k, model, a.lr)

            def measure(epoch, losses):
                tr = T.exact_match(model, base.tok, k, small, self.device)
                ho = T.exact_match(model, base.tok, k, held, self.device)
                return {"epoch": epoch, "train_acc": tr["accuracy"]["all"], "held_acc": ho["accuracy"]["all"],
                        "train_nll": T.span_nll(model, base.tok, k, convs, max_length=max_len, device=self.device),
                        "held_nll": T.span_nll(model, base.tok, k, held_convs, max_length=max_len, device=self.device),
                        "train_by_task": tr["accuracy"], "held_by_task": ho["accuracy"],
                        "train_stop": tr["stop_rate"], "held_stop": ho["stop_rate"],
                        "sft_loss": T.mean(losses) if losses else None}

            curve = [measure(0, [])]
            diverged = None
            step = 0
            for ep, batches in enumerate(T.batches_epochs(n_small, batch, epochs, s), start=1):
                try:
                    losses = T.sft_steps(self, k, model, get, batches, opt=opt, lr=a.lr, total_steps=total, start=step,
                                         warmup=max(1, total // 20), device=self.device)
                except FloatingPointError as exc:
                    diverged = f"epoch {ep}：{exc}"
                    self.note(f"种子 {s} 发散：{diverged}")
                    break
                step += len(batches)
                curve.append(measure(ep, losses))
                c = curve[-1]
                if ep == 1 or ep % 5 == 0 or ep == epochs:
                    print(f"  seed {s} epoch {ep:>3}: 训练集精确匹配 {c['train_acc']:.0%}，held-out {c['held_acc']:.0%}；"
                          f"答案 NLL 训练 {c['train_nll']:.3f} / held-out {c['held_nll']:.3f}")
            runs.append({"seed": s, "curve": curve, "diverged": diverged,
                         "small_set": [{"task": e.task, "prompt": e.prompt, "answer": e.answer} for e in small[:8]],
                         **self._points(curve, a.memorised)})

        self._tables(runs, a.memorised)
        self._plot(runs, a.memorised)
        self.conclude(self._conclusion(runs, a.memorised, n_small, steps_per_epoch))
        return {"runs": runs}

    @staticmethod
    def _points(curve, thr):
        mem = next((c["epoch"] for c in curve if c["epoch"] > 0 and c["train_acc"] >= thr), None)
        trained = [c for c in curve if c["epoch"] > 0]
        best = min(trained, key=lambda c: c["held_nll"]) if trained else curve[0]
        best_acc = max(trained, key=lambda c: (c["held_acc"], -c["epoch"])) if trained else curve[0]
        return {"memorised_epoch": mem, "best_held_nll_epoch": best["epoch"], "best_held_nll": best["held_nll"],
                "best_held_acc_epoch": best_acc["epoch"], "best_held_acc": best_acc["held_acc"]}

    def _tables(self, runs, thr):
        r = runs[0]
        c0, c1 = r["curve"][0], r["curve"][-1]
        tasks = [t for t in D.TASKS if t in c1["held_by_task"]] + ["all"]
        rows = [[t, f"{c0['train_by_task'].get(t, 0):.0%}", f"{c1['train_by_task'].get(t, 0):.0%}",
                 f"{c0['held_by_task'].get(t, 0):.0%}", f"{c1['held_by_task'].get(t, 0):.0%}"] for t in tasks]
        rows.append(["停在 <|im_end|>", f"{c0['train_stop']:.0%}", f"{c1['train_stop']:.0%}", f"{c0['held_stop']:.0%}",
                     f"{c1['held_stop']:.0%}"])
        self.print_table(["任务", "训练集：微调前", f"训练集：第 {c1['epoch']} 个 epoch 后", "held-out：微调前",
                          f"held-out：第 {c1['epoch']} 个 epoch 后"], rows, title=f"精确匹配（种子 {r['seed']}）")
        marks = sorted({0, 1, 2, 5, 10, 20, 30, c1["epoch"]} & {c["epoch"] for c in r["curve"]})
        rows = []
        for e in marks:
            cs = [run["curve"][e] for run in runs if len(run["curve"]) > e]
            rows.append([e, fmt_mean_std([c["train_acc"] for c in cs], ".0%"), fmt_mean_std([c["held_acc"] for c in cs], ".0%"),
                         fmt_mean_std([c["train_nll"] for c in cs]), fmt_mean_std([c["held_nll"] for c in cs])])
        self.print_table(["epoch", "训练集精确匹配", "held-out 精确匹配", "训练集答案 NLL", "held-out 答案 NLL"], rows,
                         title=f"按 epoch（{len(runs)} 个种子的均值 ± 标准差）" if len(runs) > 1 else "按 epoch")
        self.print_table(["种子", f"背下来（训练集 ≥ {thr:.0%}）的 epoch", "held-out NLL 最低的 epoch", "held-out 精确匹配最高的 epoch"],
                         [[x["seed"], x["memorised_epoch"] or "没到", f"{x['best_held_nll_epoch']}（{x['best_held_nll']:.3f}）",
                           f"{x['best_held_acc_epoch']}（{x['best_held_acc']:.0%}）"] for x in runs])

    def _conclusion(self, runs, thr, n_small, spe):
        last = [r["curve"][-1] for r in runs]
        tr, ho = T.mean([c["train_acc"] for c in last]), T.mean([c["held_acc"] for c in last])
        ep = last[0]["epoch"]
        parts = [f"在 {n_small} 道题上训练 {ep} 个 epoch（每个 epoch {spe} 步）后，训练集精确匹配 {tr:.0%}，held-out {ho:.0%}"
                 f"（{len(runs)} 个种子的均值）。"]
        mems = [r["memorised_epoch"] for r in runs]
        if all(m is not None for m in mems):
            parts.append(f"训练集第一次达到 {thr:.0%} 是在第 {'、'.join(map(str, mems))} 个 epoch——这就是“背下来”的点；"
                         f"同一时刻 held-out 只有 {T.mean([r['curve'][m]['held_acc'] for r, m in zip(runs, mems)]):.0%}。")
        elif any(m is not None for m in mems):
            parts.append(f"只有 {sum(m is not None for m in mems)}/{len(mems)} 个种子的训练集达到了 {thr:.0%}"
                         f"（epoch：{'、'.join(str(m) if m else '没到' for m in mems)}）。")
        else:
            parts.append(f"训练集精确匹配一直没达到 {thr:.0%}：这么多 epoch 还没把 {n_small} 道题背下来"
                         "（加 --epochs 或调大 --lr 再试）。")
        best = [r["best_held_nll_epoch"] for r in runs]
        rises = [r["curve"][-1]["held_nll"] - r["best_held_nll"] for r in runs]
        if all(b < ep for b in best) and T.mean(rises) > 0.05:
            parts.append(f"held-out 的答案 NLL 在第 {'、'.join(map(str, best))} 个 epoch 最低，之后回升了平均 {T.mean(rises):.2f} nats，"
                         f"而训练集的 NLL 一路降到 {T.mean([c['train_nll'] for c in last]):.3f}：从这里开始，多训练的每个 epoch "
                         "换来的是对这几十道题的记忆，不是对任务的掌握——过拟合。")
        else:
            parts.append(f"held-out 的答案 NLL 没有明显回升（最低点在第 {'、'.join(map(str, best))} 个 epoch，最后比最低点高 "
                         f"{T.mean(rises):.2f} nats）：这次没看到典型的过拟合拐点。")
        best_acc = [r["best_held_acc_epoch"] for r in runs]
        peak = T.mean([r["best_held_acc"] for r in runs])
        if peak > ho + 0.02:
            parts.append(f"held-out 的精确匹配最高是在第 {'、'.join(map(str, best_acc))} 个 epoch（平均 {peak:.0%}），"
                         f"最后只剩 {ho:.0%}：背题的那些 epoch 没有帮上新题，held-out 反而回落了。")
        gap = tr - ho
        parts.append(f"最后训练集与 held-out 的精确匹配相差 {gap:.0%}" +
                     ("：模型能复述见过的答案，却答不出同一任务的新实例。" if gap >= 0.3 else "。"))
        return "".join(parts)

    def _plot(self, runs, thr):
        fig, axes = new_figure(1, 2, width=6.0, height=4.2)
        ax = axes[0, 0]
        for i, r in enumerate(runs):
            es = [c["epoch"] for c in r["curve"]]
            kw = {"label": label(("训练集", "train"))} if i == 0 else {}
            ax.plot(es, [c["train_acc"] for c in r["curve"]], color="C0", alpha=0.8, **kw)
            kw = {"label": label(("held-out", "held-out"))} if i == 0 else {}
            ax.plot(es, [c["held_acc"] for c in r["curve"]], color="C1", alpha=0.8, **kw)
            if r["memorised_epoch"]:
                ax.axvline(r["memorised_epoch"], color="C0", linestyle=":", linewidth=1)
        ax.axhline(thr, color="k", linestyle="--", linewidth=0.8)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label(("精确匹配（点线 = 背下来的 epoch）", "exact match (dotted = memorised)")))
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        ax = axes[0, 1]
        for i, r in enumerate(runs):
            es = [c["epoch"] for c in r["curve"]]
            kw = {"label": label(("训练集", "train"))} if i == 0 else {}
            ax.plot(es, [c["train_nll"] for c in r["curve"]], color="C0", alpha=0.8, **kw)
            kw = {"label": label(("held-out", "held-out"))} if i == 0 else {}
            ax.plot(es, [c["held_nll"] for c in r["curve"]], color="C1", alpha=0.8, **kw)
            ax.axvline(r["best_held_nll_epoch"], color="C1", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label(("答案 token 的 NLL（点线 = held-out 最低）", "answer NLL (dotted = best held-out)")))
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "epochs")


if __name__ == "__main__":
    sys.exit(Epochs.main())
