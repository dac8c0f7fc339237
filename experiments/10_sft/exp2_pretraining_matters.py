"""实验 2：预训练有没有用？——从预训练好的底座做 SFT vs 从随机初始化做 SFT，SFT 步数相同。

每个种子 s：先用种子 s 在 TinyShakespeare 上预训练一个很小的字符级 MiniMind（你的模块 06 + 08），词表按
kata.sft.extend_for_chat 加上指令数据的字符与特殊 token；然后两个变体做**完全相同**的 SFT（你的 SFTDataset、
同样的题、同样的 batch 顺序、同样的步数和学习率）：

- pretrained：从这个底座出发；
- scratch：同样的结构和词表，用种子 s 随机初始化（``python -m kata sft --from-scratch`` 的做法）。

为什么每个种子各预训练一次（而不是共用一个底座）：这里被比较的正是“有没有预训练”，预训练本身的随机性
（初始化、batch 顺序）应该算进种子间的波动里；按种子配对后再看差。

量什么：held-out 逐任务精确匹配（微调前 / 后）、停在 <|im_end|> 的比例、答案 token 的平均负对数似然（连续指标，
精确匹配还很低时也看得出差别）、SFT 的 loss 曲线；按种子配对的差，以及“预训练的那个用多少步就追上了
从零训练的最终 loss”。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402

import _sft_tools as T  # noqa: E402
from kata import sft_data as D  # noqa: E402
from kata.arms import PAIRED_HEADERS, describe_paired, paired, paired_row  # noqa: E402
from kata.experiment import fmt_mean_std, pad  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

ARMS = (("pretrained", "预训练底座", "pretrained"), ("scratch", "随机初始化", "from scratch"))
SMOOTH = 20   # 比较 loss 曲线时的滑动平均窗口（步）


def smooth(xs, w=SMOOTH):
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out


class PretrainingMatters(T.SFTExperiment):
    name = "exp2_pretraining_matters"
    module = "10_sft"
    title = "实验 2：预训练有没有用——预训练底座 vs 随机初始化，SFT 步数相同（你的模型与 SFTDataset）"
    description = "每个种子各预训练一个底座；两个变体做完全相同的 SFT，按种子配对比较精确匹配与答案 NLL。"
    can_use_synthetic = True
    synthetic_reason = ("问题是“先学过续写文字的模型是不是更容易学会回答”；合成英文也是需要学的语言，"
                        "预训练在它上面同样能学到字符统计，只是数字不能和 TinyShakespeare 上的直接比较")

    def add_arguments(self, parser):
        parser.add_argument("--pretrain-steps", type=int, default=None, help="每个底座的预训练步数（默认：快速 200，完整 600）")
        parser.add_argument("--sft-steps", type=int, default=None, help="SFT 步数，两个变体相同（默认：快速 200，完整 500）")
        parser.add_argument("--lr", type=float, default=3e-3, help="SFT 学习率（默认 3e-3，两个变体相同）")
        parser.add_argument("--n-train", type=int, default=2000, help="训练题数（默认 2000）")
        parser.add_argument("--n-eval", type=int, default=None, help="held-out 题数（默认：快速 48，完整 96）")

    def run(self):
        k = T.kit(self)
        corpus = self.load_corpus()
        a = self.args
        pre_steps = a.pretrain_steps or self.by_mode(smoke=6, quick=200, full=600)
        sft_steps = a.sft_steps or self.by_mode(smoke=6, quick=200, full=500)
        n_eval = a.n_eval or self.by_mode(smoke=8, quick=48, full=96)
        dim, layers = self.by_mode(smoke=(32, 1), quick=(64, 2), full=(64, 2))
        batch, max_len = self.by_mode(smoke=(4, 96), quick=(16, 96), full=(16, 96))
        seeds = self.seeds(full=3, quick=3, smoke=1)
        self.config(pretrain_steps=pre_steps, sft_steps=sft_steps, lr=a.lr, n_train=a.n_train, n_eval=n_eval,
                    hidden_size=dim, num_hidden_layers=layers, batch_size=batch, max_length=max_len,
                    pretrain_shared="每个种子各预训练一个底座（预训练的随机性算进种子间波动）", smooth_window=SMOOTH)
        train = D.make_examples(a.n_train, "train", self.seed)
        held = D.make_examples(n_eval, "held_out", self.seed)
        convs = [e.messages() for e in train]
        held_convs = [e.messages() for e in held]

        def measure(model):
            return {"eval": T.exact_match(model, base.tok, k, held, self.device),
                    "answer_nll": T.span_nll(model, base.tok, k, held_convs, max_length=max_len, device=self.device)}

        def measure_nll(model):
            return T.span_nll(model, base.tok, k, held_convs, max_length=max_len, device=self.device)

        runs = {key: [] for key, *_ in ARMS}
        bases = []
        for s in seeds:
            base = T.pretrain(self, k, corpus, seed=s, dim=dim, layers=layers, steps=pre_steps, batch=16, seq_len=64,
                              lr=3e-3, max_len=128, desc=f"pretrain seed {s}")
            bases.append({"seed": s, "val_loss": base.pretrain_val_loss, "seconds": base.seconds})
            print(f"种子 {s}：预训练 {pre_steps} 步，验证 loss {base.pretrain_val_loss:.3f}（词表 {base.config.vocab_size}）")
            _, get = T.labels_getter(k, base.tok, convs, max_len, "assistant")
            for key, zh, en in ARMS:
                model = T.fresh_model(k, base, pretrained=(key == "pretrained"), seed=s, device=self.device)
                r = {"seed": s, "vocab_size": base.config.vocab_size, "before": measure(model)}
                try:
                    r["losses"], r["curve"] = self._sft_with_checkpoints(k, model, get, len(convs), sft_steps, batch,
                                                                         a.lr, s, lambda: measure_nll(model), f"{en} seed {s}")
                except FloatingPointError as exc:
                    self.note(f"[{zh}] 种子 {s} 的 SFT 发散：{exc}")
                    r["diverged"] = str(exc)
                    runs[key].append(r)
                    continue
                r.update(measure(model))
                r["accuracy_all"] = r["eval"]["accuracy"]["all"]
                r["stop_rate"] = r["eval"]["stop_rate"]
                r["final_loss"] = T.mean(r["losses"][-SMOOTH:])
                runs[key].append(r)
                print(f"  {pad(zh, 12)} seed {s}: 精确匹配 {r['accuracy_all']:.0%}，停在 <|im_end|> {r['stop_rate']:.0%}，"
                      f"答案 NLL {r['answer_nll']:.3f}，最后 {SMOOTH} 步 loss {r['final_loss']:.3f}")

        ok = {key: [r for r in rs if "eval" in r] for key, rs in runs.items()}
        if not all(ok.values()):
            self.conclude("至少有一个变体的所有种子都发散了，没法比较；试试更小的 --lr。")
            return {"runs": runs, "bases": bases}
        cmp = {m: paired(ok["pretrained"], ok["scratch"], metric=m)
               for m in ("answer_nll", "accuracy_all", "stop_rate", "final_loss")}
        catch = self._catch_up(ok)
        gaps = self._gap_curve(ok)
        self._tables(ok, cmp, catch, len(seeds))
        self.print_table(["SFT 步数", "预训练底座", "随机初始化"] + PAIRED_HEADERS[1:],
                         [[g["step"], fmt_mean_std(g["pretrained"]), fmt_mean_std(g["scratch"])]
                          + paired_row("预训练底座", "随机初始化", g["paired"])[1:] for g in gaps],
                         title="held-out 答案 NLL 随 SFT 步数的变化（差 = 随机初始化 − 预训练底座）")
        self._plot(ok, gaps)
        self.conclude(self._conclusion(ok, cmp, catch, gaps, sft_steps, len(seeds)))
        return {"runs": runs, "bases": bases, "paired": cmp, "catch_up": catch, "gap_curve": gaps}

    def _sft_with_checkpoints(self, k, model, get, n, steps, batch, lr, seed, nll, desc):
        """与 T.sft_run 完全相同的训练（同样的 batch 顺序、学习率曲线），只是在几个检查点上量一次 held-out 答案 NLL。"""
        from tqdm import tqdm

        order = list(T.batches_random(n, batch, steps, seed))
        opt = T.new_optimizer(k, model, lr)
        marks = sorted({max(1, steps * f // 10) for f in (1, 2, 4, 6, 8, 10)})
        losses, curve, prev = [], [], 0
        bar = tqdm(total=steps, desc=desc, disable=None if self.progress else True, leave=False, unit="step")
        try:
            for c in marks:
                losses += T.sft_steps(self, k, model, get, order[prev:c], opt=opt, lr=lr, total_steps=steps, start=prev,
                                      warmup=max(1, steps // 20), device=self.device, bar=bar)
                curve.append({"step": c, "answer_nll": nll()})
                prev = c
        finally:
            bar.close()
        return losses, curve

    def _gap_curve(self, ok):
        """每个检查点上按种子配对的差（随机初始化 − 预训练底座）的答案 NLL。"""
        out = []
        for i, pt in enumerate(ok["pretrained"][0]["curve"]):
            a = [{"seed": r["seed"], "v": r["curve"][i]["answer_nll"]} for r in ok["pretrained"]]
            b = [{"seed": r["seed"], "v": r["curve"][i]["answer_nll"]} for r in ok["scratch"]]
            out.append({"step": pt["step"], "pretrained": [x["v"] for x in a], "scratch": [x["v"] for x in b],
                        "paired": paired(a, b, metric="v")})
        return out

    def _catch_up(self, ok):
        """每个种子：预训练的变体（滑动平均后的）SFT loss 第一次不高于从零训练的最终 loss 是在第几步。"""
        out = []
        scratch = {r["seed"]: r for r in ok["scratch"]}
        for r in ok["pretrained"]:
            other = scratch.get(r["seed"])
            if other is None:
                continue
            target = other["final_loss"]
            sm = smooth(r["losses"])
            w = min(SMOOTH, len(sm))
            step = next((i + 1 for i, v in enumerate(sm) if i + 1 >= w and v <= target), None)
            out.append({"seed": r["seed"], "scratch_final_loss": target, "step": step, "of": len(r["losses"])})
        return out

    def _tables(self, ok, cmp, catch, n_seeds):
        per = f"（{n_seeds} 个种子的均值）" if n_seeds > 1 else ""
        rows = []
        tasks = [t for t in D.TASKS if t in ok["pretrained"][0]["eval"]["accuracy"]] + ["all"]
        for t in tasks:
            row = [t]
            for key, *_ in ARMS:
                row += [f"{T.mean([r['before']['eval']['accuracy'][t] for r in ok[key]]):.0%}",
                        f"{T.mean([r['eval']['accuracy'][t] for r in ok[key]]):.0%}"]
            rows.append(row)
        row = ["停在 <|im_end|>"]
        for key, *_ in ARMS:
            row += [f"{T.mean([r['before']['eval']['stop_rate'] for r in ok[key]]):.0%}",
                    f"{T.mean([r['eval']['stop_rate'] for r in ok[key]]):.0%}"]
        rows.append(row)
        heads = ["任务"]
        for _, zh, _ in ARMS:
            heads += [f"{zh}：微调前", f"{zh}：微调后"]
        self.print_table(heads, rows, title=f"held-out 精确匹配{per}")
        rows = [[zh, fmt_mean_std([r["before"]["answer_nll"] for r in ok[key]]), fmt_mean_std([r["answer_nll"] for r in ok[key]]),
                 fmt_mean_std([r["accuracy_all"] for r in ok[key]], ".1%"), fmt_mean_std([r["final_loss"] for r in ok[key]])]
                for key, zh, _ in ARMS]
        self.print_table(["变体", "答案 NLL 微调前", "答案 NLL 微调后", "精确匹配（全部）", f"SFT 最后 {SMOOTH} 步 loss"], rows,
                         title="均值 ± 标准差（按种子）")
        names = {"answer_nll": "答案 NLL", "accuracy_all": "精确匹配", "stop_rate": "停下比例", "final_loss": "SFT loss"}
        self.print_table(["指标"] + PAIRED_HEADERS, [[names[m]] + paired_row("预训练底座", "随机初始化", c, ".3f")
                                                    for m, c in cmp.items()], title="按种子配对的差（随机初始化 − 预训练底座）")
        if catch:
            print("预训练底座追上“随机初始化的最终 SFT loss”所用的步数：" + "，".join(
                f"种子 {c['seed']}：{c['step'] if c['step'] else '没追上'} / {c['of']}" for c in catch))

    def _conclusion(self, ok, cmp, catch, gaps, steps, n_seeds):
        m = lambda key, f: T.mean([f(r) for r in ok[key]])  # noqa: E731
        parts = [f"同样 {steps} 步 SFT：预训练底座的 held-out 精确匹配 {m('pretrained', lambda r: r['accuracy_all']):.1%}、"
                 f"答案 NLL {m('pretrained', lambda r: r['answer_nll']):.3f}；随机初始化 {m('scratch', lambda r: r['accuracy_all']):.1%}、"
                 f"{m('scratch', lambda r: r['answer_nll']):.3f}。"]
        parts.append(describe_paired(cmp["answer_nll"], "预训练底座", "随机初始化", what="答案 NLL", expected="higher"))
        acc = cmp["accuracy_all"]
        if acc["n"] and abs(acc["mean"]) < 0.02:
            hit = {key: [t for t in D.TASKS if m(key, lambda r: r["eval"]["accuracy"].get(t, 0.0)) > 0] for key, *_ in ARMS}
            parts.append("精确匹配几乎一样（配对差 {:+.1%}）。答对过的任务：预训练底座 {}，随机初始化 {}；".format(
                acc["mean"], "、".join(hit["pretrained"]) or "没有", "、".join(hit["scratch"]) or "没有")
                + "这么小的模型、这么短的 SFT，逐字答对还轮不到预训练来区分"
                + ("，差别体现在答案 token 的概率上。" if cmp["answer_nll"]["beyond_noise"] else "。"))
        else:
            parts.append(describe_paired(acc, "预训练底座", "随机初始化", what="精确匹配", lower_is_better=False,
                                         expected="lower", fmt=".3f"))
        steps_hit = [c["step"] for c in catch if c["step"]]
        if catch and len(steps_hit) == len(catch):
            parts.append(f"看 loss 曲线：预训练底座平均在第 {T.mean(steps_hit):.0f} 步（共 {steps} 步）就达到了随机初始化训练到最后的 loss。")
        elif catch:
            parts.append(f"看 loss 曲线：{len(catch) - len(steps_hit)}/{len(catch)} 个种子的预训练底座到最后也没达到随机初始化的最终 loss"
                         "——这与预期相反，如实记录。")
        ahead = [g for g in gaps if g["paired"]["beyond_noise"] and g["paired"]["mean"] > 0]
        if len(gaps) > 1 and n_seeds > 1:
            g0, g1 = gaps[0], gaps[-1]
            walk = "、".join(f"第 {g['step']} 步 {g['paired']['mean']:+.3f}" for g in gaps)
            parts.append(f"答案 NLL 的配对差（随机初始化 − 预训练底座）随 SFT 步数的变化：{walk}。")
            if ahead and not gaps[-1]["paired"]["beyond_noise"]:
                parts.append(f"预训练底座的领先在第 {'、'.join(str(g['step']) for g in ahead)} 步超过了种子间的波动，到第 {g1['step']} 步"
                             "已经在波动之内：在这些只要格式和简单规则的任务上，预训练让 SFT 起步更快，随机初始化多练一会儿就追上了。")
            elif ahead:
                parts.append(f"预训练底座的领先在第 {'、'.join(str(g['step']) for g in ahead)} 步超过了种子间的波动。")
            else:
                parts.append("没有哪个检查点上的差距超过种子间的波动：这个设置下没有测到预训练的好处。")
        first_pre = m("pretrained", lambda r: r["before"]["answer_nll"])
        first_scr = m("scratch", lambda r: r["before"]["answer_nll"])
        ln_v = math.log(ok["pretrained"][0]["vocab_size"])
        parts.append(f"微调之前，预训练底座给答案 token 的 NLL 是 {first_pre:.2f}，随机初始化是 {first_scr:.2f}"
                     f"（均匀乱猜是 ln(词表 {ok['pretrained'][0]['vocab_size']}) = {ln_v:.2f}）。")
        if first_pre < first_scr - 0.1:
            parts.append("预训练带来的是“会写字”（字符的统计、空格和换行），SFT 在这上面只需要再学格式和任务。")
        elif cmp["answer_nll"]["beyond_noise"] and cmp["answer_nll"]["mean"] > 0:
            parts.append("两者微调前都还不会写答案（答案里的数字、中文字符在莎士比亚里很少见或根本没有，追加的新行是随机的），"
                         "所以预训练的好处不是“本来就会答”，而是同样的 SFT 步数里学得更快。")
        return "".join(parts)

    def _plot(self, ok, gaps):
        import numpy as np

        fig, axes = new_figure(1, 3, width=5.2, height=4.2)
        ax = axes[0, 0]
        for key, zh, en in ARMS:
            curves = np.array([smooth(r["losses"]) for r in ok[key]])
            mu, sd = curves.mean(0), curves.std(0)
            xs = np.arange(1, curves.shape[1] + 1)
            ax.plot(xs, mu, label=label((zh, en)))
            ax.fill_between(xs, mu - sd, mu + sd, alpha=0.2)
        ax.set_xlabel(label(("SFT 步数", "SFT step")))
        ax.set_ylabel(label((f"SFT loss（助手 token，{SMOOTH} 步滑动平均）", f"SFT loss ({SMOOTH}-step avg)")))
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        ax = axes[0, 1]
        xs = [g["step"] for g in gaps]
        for key, zh, en in ARMS:
            ys = np.array([g[key] for g in gaps])
            ax.errorbar(xs, ys.mean(1), yerr=ys.std(1), marker="o", capsize=3, label=label((zh, en)))
        ax.set_xlabel(label(("SFT 步数", "SFT step")))
        ax.set_ylabel(label(("held-out 答案 NLL（nats/token）", "held-out answer NLL")))
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
        ax = axes[0, 2]
        tasks = [t for t in D.TASKS if t in ok["pretrained"][0]["eval"]["accuracy"]] + ["all"]
        xs = np.arange(len(tasks))
        w = 0.38
        for i, (key, zh, en) in enumerate(ARMS):
            ys = [T.mean([r["eval"]["accuracy"][t] for r in ok[key]]) for t in tasks]
            ax.bar(xs + (i - 0.5) * w, ys, w, label=label((zh, en)))
        ax.set_xticks(xs)
        ax.set_xticklabels(tasks, rotation=40, ha="right", fontsize="small")
        ax.set_ylabel(label(("held-out 精确匹配（微调后）", "held-out exact match (after SFT)")))
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "pretraining")


if __name__ == "__main__":
    sys.exit(PretrainingMatters.main())
