"""实验 1：loss 只算在助手的回复上（minimind 的规则）vs 整段对话每个 token 都算。

先在 TinyShakespeare 上预训练一个很小的字符级 MiniMind（你的模块 06），再从**同一个底座**出发各做一次 SFT
（同样的题目、同样的 batch 顺序、同样的步数），唯一的差别是 labels：

- assistant：你的 SFTDataset 给的 labels——只有 ``<|im_start|>assistant\\n`` 之后到 ``<|im_end|>\\n``（含）的 token 进 loss；
- all：padding 之外的每个 token 都进 loss（kata.sft 的 ``--mask all``；系统 / 用户消息、角色头也算）。

量什么：held-out 题目的逐任务精确匹配（微调前 vs 两种微调后）、回复停在 <|im_end|> 的比例、答案 token 的平均
负对数似然；以及**模型拿用户那一轮怎么办**：用户消息内容的负对数似然（它学会“预测用户会问什么”了吗）、
只给 ``<|im_start|>user\\n`` 时它会不会自己编出一道格式正确的题、给半道题时会不会替用户把题补完并收尾。
对应 teaching.md 里讲 loss 掩码的那一节。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
sys.path.insert(0, str(Path(__file__).resolve().parent))
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import _sft_tools as T  # noqa: E402
from kata import sft_data as D  # noqa: E402
from kata.arms import describe_paired, paired  # noqa: E402
from kata.experiment import fmt_mean_std, pad  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

ARMS = (("assistant", "只算助手回复（minimind）", "assistant only"), ("all", "每个 token 都算", "all tokens"))


class LossMask(T.SFTExperiment):
    name = "exp1_loss_mask"
    module = "10_sft"
    title = "实验 1：SFT 的 loss 掩码——只算助手回复 vs 整段对话都算（你的 SFTDataset）"
    description = ("同一个预训练底座、同样的数据和步数，只改 labels：比较 held-out 精确匹配、停在 <|im_end|> 的比例，"
                   "以及模型学没学会“替用户说话”。")
    can_use_synthetic = True
    synthetic_reason = ("预训练语料只提供一个“会续写文字”的底座；这里比较的是 SFT 时 loss 掩码的影响，"
                        "底座换成合成英文，两种掩码之间的对比仍然成立")

    def add_arguments(self, parser):
        parser.add_argument("--pretrain-steps", type=int, default=None, help="预训练步数（默认：快速 300，完整 600）")
        parser.add_argument("--sft-steps", type=int, default=None, help="SFT 步数（默认：快速 300，完整 600）")
        parser.add_argument("--lr", type=float, default=3e-3, help="SFT 学习率（默认 3e-3）")
        parser.add_argument("--n-train", type=int, default=2000, help="训练题数（默认 2000）")
        parser.add_argument("--n-eval", type=int, default=None, help="held-out 题数（默认：快速 48，完整 96）")

    def run(self):
        k = T.kit(self)
        corpus = self.load_corpus()
        a = self.args
        pre_steps = a.pretrain_steps or self.by_mode(smoke=8, quick=300, full=600)
        sft_steps = a.sft_steps or self.by_mode(smoke=6, quick=300, full=600)
        n_eval = a.n_eval or self.by_mode(smoke=8, quick=48, full=96)
        dim, layers = self.by_mode(smoke=(32, 1), quick=(64, 2), full=(64, 2))
        batch, max_len, n_free = self.by_mode(smoke=(4, 96), quick=(16, 96), full=(16, 96)) + (
            self.by_mode(smoke=4, quick=24, full=48),)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        self.config(pretrain_steps=pre_steps, sft_steps=sft_steps, lr=a.lr, n_train=a.n_train, n_eval=n_eval,
                    hidden_size=dim, num_hidden_layers=layers, batch_size=batch, max_length=max_len,
                    pretrain_shared="一个底座（--seed），所有变体和种子都从它出发", free_samples=n_free)

        base = T.pretrain(self, k, corpus, seed=self.seed, dim=dim, layers=layers, steps=pre_steps, batch=16,
                          seq_len=64, lr=3e-3, max_len=128)
        print(f"预训练：{pre_steps} 步，验证 loss {base.pretrain_val_loss:.3f}（{base.seconds:.0f} 秒）；"
              f"词表追加指令数据的字符与特殊 token 后共 {base.config.vocab_size}")
        train = D.make_examples(a.n_train, "train", self.seed)
        held = D.make_examples(n_eval, "held_out", self.seed)
        convs = [e.messages() for e in train]
        held_convs = [e.messages() for e in held]

        def measure(model, seed):
            return {"eval": T.exact_match(model, base.tok, k, held, self.device),
                    "answer_nll": T.span_nll(model, base.tok, k, held_convs, max_length=max_len, device=self.device),
                    "user_nll": T.span_nll(model, base.tok, k, held_convs, max_length=max_len, device=self.device,
                                           which="user"),
                    "user_nll_en": T.span_nll(model, base.tok, k, [e.messages() for e in held if e.lang == "en"],
                                              max_length=max_len, device=self.device, which="user"),
                    "user_turn": T.user_turn_probe(model, base.tok, held, n_free=n_free, seed=seed, device=self.device)}

        before = measure(T.fresh_model(k, base, pretrained=True, seed=self.seed, device=self.device), self.seed)
        runs = {key: [] for key, *_ in ARMS}
        for s in seeds:
            for key, zh, en in ARMS:
                model = T.fresh_model(k, base, pretrained=True, seed=s, device=self.device)
                _, get = T.labels_getter(k, base.tok, convs, max_len, key)
                try:
                    losses = T.sft_run(self, k, model, get, len(convs), steps=sft_steps, batch=batch, lr=a.lr,
                                       seed=s, desc=f"{en} seed {s}")
                except FloatingPointError as exc:
                    self.note(f"[{zh}] 种子 {s} 发散：{exc}")
                    runs[key].append({"seed": s, "diverged": str(exc)})
                    continue
                r = measure(model, s)
                r.update(seed=s, losses=losses)
                runs[key].append(r)
                ev = r["eval"]
                print(f"  {pad(zh, 24)} seed {s}: 精确匹配 {ev['accuracy']['all']:.0%}，停在 <|im_end|> "
                      f"{ev['stop_rate']:.0%}，答案 NLL {r['answer_nll']:.3f}，用户消息 NLL {r['user_nll']:.3f}")

        ok = {key: [r for r in rs if "eval" in r] for key, rs in runs.items()}
        if not all(ok.values()):
            self.conclude("至少有一种掩码的所有种子都发散了，没法比较；试试更小的 --lr。")
            return {"before": before, "runs": runs}
        self._tables(before, ok, len(seeds))
        self._plot(before, ok)
        self.conclude(self._conclusion(before, ok, len(seeds)))
        summary = {key: {"accuracy_all": [r["eval"]["accuracy"]["all"] for r in rs],
                         "stop_rate": [r["eval"]["stop_rate"] for r in rs],
                         "answer_nll": [r["answer_nll"] for r in rs], "user_nll": [r["user_nll"] for r in rs],
                         "free_well_formed": [r["user_turn"]["free_well_formed"] for r in rs],
                         "mid_well_formed": [r["user_turn"]["mid_well_formed"] for r in rs]} for key, rs in ok.items()}
        return {"before": before, "runs": runs, "summary": summary, "pretrain_val_loss": base.pretrain_val_loss,
                "pretrain_losses": base.pretrain_losses}

    # ---- 表格 --------------------------------------------------------------------------------

    def _tables(self, before, ok, n_seeds):
        per = f"（{n_seeds} 个种子的均值）" if n_seeds > 1 else ""
        rows = []
        for t in [t for t in D.TASKS if t in before["eval"]["accuracy"]] + ["all"]:
            rows.append([t, f"{before['eval']['accuracy'][t]:.0%}"] +
                        [f"{T.mean([r['eval']['accuracy'][t] for r in ok[key]]):.0%}" for key, *_ in ARMS])
        rows.append(["停在 <|im_end|>", f"{before['eval']['stop_rate']:.0%}"] +
                    [f"{T.mean([r['eval']['stop_rate'] for r in ok[key]]):.0%}" for key, *_ in ARMS])
        self.print_table(["任务", "微调前（底座套模板）"] + [f"微调后：{zh}" for _, zh, _ in ARMS], rows,
                         title=f"held-out 精确匹配{per}")

        def cell(key, f, fmt=".3f"):
            return fmt_mean_std([f(r) for r in ok[key]], fmt)

        rows = [["答案 token 的 NLL（nats）", f"{before['answer_nll']:.3f}"] + [cell(k, lambda r: r["answer_nll"]) for k, *_ in ARMS],
                ["用户消息的 NLL（nats，全部）", f"{before['user_nll']:.3f}"] + [cell(k, lambda r: r["user_nll"]) for k, *_ in ARMS],
                ["用户消息的 NLL（nats，只看英文题）", f"{before['user_nll_en']:.3f}"] + [cell(k, lambda r: r["user_nll_en"]) for k, *_ in ARMS],
                ["只给 user 头：自己编出一道格式正确的题", f"{before['user_turn']['free_well_formed']:.0%}"] +
                [cell(k, lambda r: r["user_turn"]["free_well_formed"], ".0%") for k, *_ in ARMS],
                ["给半道题：替用户补完整并收尾", f"{before['user_turn']['mid_well_formed']:.0%}"] +
                [cell(k, lambda r: r["user_turn"]["mid_well_formed"], ".0%") for k, *_ in ARMS],
                ["给半道题：用 <|im_end|> 结束用户这一轮", f"{before['user_turn']['mid_closed']:.0%}"] +
                [cell(k, lambda r: r["user_turn"]["mid_closed"], ".0%") for k, *_ in ARMS],
                ["给半道题：什么也不补、直接 <|im_end|>", f"{before['user_turn']['mid_empty']:.0%}"] +
                [cell(k, lambda r: r["user_turn"]["mid_empty"], ".0%") for k, *_ in ARMS]]
        self.print_table(["指标", "微调前"] + [zh for _, zh, _ in ARMS], rows, title="模型拿用户那一轮怎么办")
        for key, zh, _ in ARMS:
            r = ok[key][0]
            free = "；".join(repr(x["text"][:40]) for x in r["user_turn"]["free_samples"][:3])
            mid = "；".join(f"{x['prefix']!r} → {x['completion'][:30]!r}" for x in r["user_turn"]["mid_samples"][:3])
            print(f"[{zh}] 只给 user 头时写出的：{free}\n[{zh}] 给半道题时补的：{mid}")

    # ---- 结论 --------------------------------------------------------------------------------

    def _conclusion(self, before, ok, n_seeds):
        A, L = ok["assistant"], ok["all"]
        m = lambda rs, f: T.mean([f(r) for r in rs])  # noqa: E731
        acc_a, acc_l = m(A, lambda r: r["eval"]["accuracy"]["all"]), m(L, lambda r: r["eval"]["accuracy"]["all"])
        stop_a, stop_l = m(A, lambda r: r["eval"]["stop_rate"]), m(L, lambda r: r["eval"]["stop_rate"])
        un_a, un_l, un_0 = m(A, lambda r: r["user_nll"]), m(L, lambda r: r["user_nll"]), before["user_nll"]
        fw_a, fw_l = m(A, lambda r: r["user_turn"]["free_well_formed"]), m(L, lambda r: r["user_turn"]["free_well_formed"])
        mw_a, mw_l = m(A, lambda r: r["user_turn"]["mid_well_formed"]), m(L, lambda r: r["user_turn"]["mid_well_formed"])
        parts = [f"微调前，底座套上模板后 held-out 精确匹配 {before['eval']['accuracy']['all']:.0%}、停在 <|im_end|> 的比例 "
                 f"{before['eval']['stop_rate']:.0%}；两种掩码微调后分别是 {acc_a:.0%} / {stop_a:.0%}（只算助手回复）和 "
                 f"{acc_l:.0%} / {stop_l:.0%}（每个 token 都算）。"]
        d_acc = acc_l - acc_a
        if abs(d_acc) < 0.03:
            parts.append("在“答对了没有”上两种掩码几乎没有差别——回复里的 token 两边都在训练，差别在别处。")
        else:
            parts.append(f"精确匹配上{'每个 token 都算' if d_acc > 0 else '只算助手回复'}高 {abs(d_acc):.0%}。")
        if n_seeds > 1:
            cmp = paired(A, L, metric="answer_nll")
            parts.append("答案 token 的 NLL：" + describe_paired(cmp, "只算助手回复", "每个 token 都算", what="答案 NLL"))
        else:
            parts.append(f"答案 token 的 NLL：{m(A, lambda r: r['answer_nll']):.3f}（只算助手回复）vs "
                         f"{m(L, lambda r: r['answer_nll']):.3f}（每个 token 都算），只有 1 个种子，不判断是否超过波动。")
        if un_l < un_a - 0.1:
            parts.append(f"用户那一轮的差别很明显：每个 token 都算的模型把用户消息的 NLL 从 {un_0:.2f} 降到 {un_l:.2f} nats/token，"
                         f"只算助手回复的模型是 {un_a:.2f}" + ("（比微调前还高：它只被要求写回答，用户的字反而更陌生了）" if un_a > un_0 + 0.1 else "")
                         + "——前者花了一部分容量去学“用户会问什么”，后者从来没在用户的字上被要求过。")
        else:
            parts.append(f"用户消息的 NLL 两者相近（{un_a:.2f} vs {un_l:.2f}），与预期（整段都算的模型会学会预测用户的话）不符。")
        if fw_l > fw_a or mw_l > mw_a:
            parts.append(f"生成也看得出来：只给 <|im_start|>user 时，每个 token 都算的模型有 {fw_l:.0%} 的采样自己编出一道格式正确的题"
                         f"（只算助手回复：{fw_a:.0%}）；给半道题时，它替用户补完并收尾的比例是 {mw_l:.0%}（只算助手回复：{mw_a:.0%}）。"
                         "也就是说它学会了替用户说话；只在回复上算 loss（minimind 的做法）的模型没有学这件事。")
        else:
            parts.append(f"生成上没看出差别：自己编题 {fw_l:.0%} vs {fw_a:.0%}，补完半道题 {mw_l:.0%} vs {mw_a:.0%}。")
        me_a = m(A, lambda r: r["user_turn"]["mid_empty"])
        if me_a >= 0.3:
            parts.append(f"只算助手回复的模型拿到半道题时，{me_a:.0%} 的情况下什么也不补、直接输出 <|im_end|>：它学到的是"
                         "“在模板里写一小段就收尾”，而不是“用户的话该怎么说”。")
        return "".join(parts)

    # ---- 图 ----------------------------------------------------------------------------------

    def _plot(self, before, ok):
        import numpy as np

        fig, axes = new_figure(1, 2, width=6.0, height=4.2)
        ax = axes[0, 0]
        tasks = [t for t in D.TASKS if t in before["eval"]["accuracy"]] + ["all"]
        xs = np.arange(len(tasks))
        series = [(("微调前", "before"), [before["eval"]["accuracy"][t] for t in tasks])]
        for key, zh, en in ARMS:
            series.append(((zh, en), [T.mean([r["eval"]["accuracy"][t] for r in ok[key]]) for t in tasks]))
        w = 0.8 / len(series)
        for i, (name, ys) in enumerate(series):
            ax.bar(xs + (i - (len(series) - 1) / 2) * w, ys, w, label=label(name))
        ax.set_xticks(xs)
        ax.set_xticklabels(tasks, rotation=40, ha="right", fontsize="small")
        ax.set_ylabel(label(("held-out 精确匹配", "held-out exact match")))
        ax.set_ylim(0, 1)
        ax.legend(fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
        ax = axes[0, 1]
        names = [("答案 NLL", "answer NLL"), ("用户消息 NLL", "user-turn NLL")]
        vals = [[before["answer_nll"], before["user_nll"]]] + [
            [T.mean([r["answer_nll"] for r in ok[key]]), T.mean([r["user_nll"] for r in ok[key]])] for key, *_ in ARMS]
        xs = np.arange(len(names))
        labels = [("微调前", "before")] + [(zh, en) for _, zh, en in ARMS]
        w = 0.8 / len(vals)
        for i, (lab, ys) in enumerate(zip(labels, vals)):
            ax.bar(xs + (i - (len(vals) - 1) / 2) * w, ys, w, label=label(lab))
        ax.set_xticks(xs)
        ax.set_xticklabels([label(n) for n in names])
        ax.set_ylabel(label(("nats / token（teacher forcing，held-out）", "nats/token (held-out)")))
        ax.legend(fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "mask")


if __name__ == "__main__":
    sys.exit(LossMask.main())
