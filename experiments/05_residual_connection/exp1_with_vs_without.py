"""实验 1：为什么需要残差连接？——同一个小语言模型，有残差 vs 没有残差，4 / 8 / 16 层。

有残差的那一组用的是**你写的 PreNormResidual**：每个 block 的注意力和 FFN 各包一层 x + F(N(x))；
没有残差的那一组是同样的 N、同样的 F、同样的初始化，只是写成 F(N(x))。测三样东西：
(a) 初始化时，每一层 token 表示两两之间的平均余弦相似度（接近 1 = 所有 token 长得一样，秩坍缩，Dong et al. 2021），
    以及每一层表示的均方根（信号有没有消失）；
(b) 初始化时每个 block 的梯度范数（一次前向 + 反向）；
(c) 在 TinyShakespeare 上的训练曲线。
完整模式还加一个对照：没有残差、但把 block 里的 Linear 换成方差保持的初始化 N(0, 1/fan_in)，看问题是不是只出在初始化上。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”
sys.path.insert(0, str(Path(__file__).resolve().parent))      # 同目录的 _residual_lm.py

import math  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402

from kata.experiment import STUCK_MARGIN, Experiment, UsageError, pad, run_status, unigram_baseline  # noqa: E402
from kata.plots import label, new_figure, plot_gradient_flow, plot_loss_curves  # noqa: E402
from _residual_lm import (ARM_NAMES, VANISHED_RMS, build_model, first_vanished_layer, impl_label,  # noqa: E402
                          init_probe, load_residual, moving_average)

COLLAPSE_GAP = 0.3    # 无残差最后一层的余弦相似度比有残差高出这么多，才算“明显坍缩”


def _sp(text: str) -> str:
    """以 ASCII 结尾的词后面补一个空格（“F(N(x)) 时”），汉字结尾不补。"""
    return text + (" " if text and text[-1].isascii() else "")


def _join(depths) -> str:
    return "、".join(map(str, depths))


def key(arm: str, depth: int) -> str:
    return f"{arm}/{depth}L"


def fmt(v, spec=".3f"):
    return format(v, spec) if v is not None and math.isfinite(v) else "—"


def last_finite(values):
    finite = [(i, v) for i, v in enumerate(values) if math.isfinite(v)]
    return finite[-1] if finite else (None, float("nan"))


def collapse_sentence(depth: int, probes: dict, arms: list, impl: str) -> tuple[str, bool]:
    """一个深度下 (a) 的结论句，以及“是否符合预期”（无残差的 token 表示明显更相似，或信号直接消失）。"""
    res = probes[("res", depth)]
    emb_cos, res_cos = res.cosine[0], res.cosine[-1]
    parts = [f"{depth} 层：嵌入层 token 之间的平均余弦相似度 {fmt(emb_cos, '.2f')}，"
             f"有残差时到最后一层是 {fmt(res_cos, '.2f')}"]
    ok = True
    for arm in arms:
        if arm == "res":
            continue
        p = probes[(arm, depth)]
        vanished = first_vanished_layer(p.rms)
        i_last, c_last = last_finite(p.cosine)
        if vanished is not None:
            parts.append(f"{_sp(ARM_NAMES[arm][0])}时，表示的均方根在第 {vanished} 层就掉到了 {VANISHED_RMS:g} 以下"
                         f"（信号消失；消失前的第 {i_last} 层，余弦相似度已经是 {fmt(c_last, '.2f')}）")
        else:
            parts.append(f"{_sp(ARM_NAMES[arm][0])}时是 {fmt(c_last, '.2f')}")
        if arm == "plain":
            collapsed = math.isfinite(c_last) and math.isfinite(res_cos) and c_last > res_cos + COLLAPSE_GAP
            ok = ok and (vanished is not None or collapsed)
    return "，".join(parts) + "。", ok


def grad_sentence(depths: list, grads: dict, arms: list) -> tuple[str, bool]:
    bits, ok = [], True
    for d in depths:
        g_res = grads[("res", d)]
        g_plain = grads[("plain", d)]
        m_res = statistics.fmean(g_res)
        zero = [i for i, g in enumerate(g_plain) if g == 0.0]
        text = f"{d} 层：有残差时各 block 梯度范数在 {min(g_res):.2g}–{max(g_res):.2g} 之间"
        if len(zero) == len(g_plain):
            text += "；无残差时所有 block 的梯度都恰好是 0（信号在前向里已经消失，反向什么也传不回来）"
        elif zero:
            text += f"；无残差时有 {len(zero)} 个 block 的梯度是 0"
        else:
            m_plain = statistics.fmean(g_plain)
            text += f"；无残差时平均 {m_plain:.2g}（是有残差时的 {m_plain / m_res:.2g} 倍）"
            if g_plain[-1] > 0:
                text += f"，第一个与最后一个 block 之比 {g_plain[0] / g_plain[-1]:.2g}"
        if "plain_varinit" in arms:
            gv = grads[("plain_varinit", d)]
            if gv[-1] > 0:
                text += f"；方差保持初始化时第一个与最后一个 block 之比 {gv[0] / gv[-1]:.2g}"
        bits.append(text)
        ratio = max(g_res) / min(g_res) if min(g_res) > 0 else float("inf")
        ok = ok and ratio < 10
    return "初始化时的梯度——" + "；".join(bits) + "。", ok


class WithVsWithout(Experiment):
    name = "exp1_with_vs_without"
    module = "05_residual_connection"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "它测的是有无残差时的秩坍缩、梯度流和能否训练起来，这是优化层面的现象，不依赖语料是不是真实英文"
    title = "实验 1：为什么需要残差连接？（有 / 没有残差，4 / 8 / 16 层）"
    description = (
        "同一个字符级小语言模型，每个 block 的注意力和 FFN 用你写的 PreNormResidual 包起来（有残差），\n"
        "或者写成 F(N(x))（没有残差，其余完全相同）。测量初始化时每层 token 表示的平均余弦相似度（秩坍缩）\n"
        "和每个 block 的梯度范数，再在 TinyShakespeare 上各训练一遍。对应 teaching.md §1。"
    )
    requires = ("PreNormResidual",)

    def add_arguments(self, parser):
        parser.add_argument("--depths", type=int, nargs="+", default=None, metavar="L",
                            help="比较哪些层数（默认 4 8 16）")
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 100，完整 300）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3，所有变体相同）")
        parser.add_argument("--varinit-arm", action="store_true",
                            help="快速模式也训练“无残差 + 方差保持初始化”这一组（完整模式默认就训练）")

    def run(self):
        from kata.tinylm import TinyLMConfig, layer_grad_norms, train_lm

        residual_cls, note = load_residual(self.impl)
        if note:
            self.note(note)
        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        depths = sorted(set(self.args.depths or self.by_mode(smoke=[2, 3], quick=[4, 16], full=[4, 8, 16])))
        if any(d < 1 for d in depths):
            raise UsageError("--depths 里的层数必须是正整数")
        steps = self.args.steps or self.by_mode(smoke=3, quick=100, full=240)
        dim = self.by_mode(smoke=32, quick=64, full=64)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        eval_every = max(1, steps // self.by_mode(smoke=1, quick=5, full=10))
        eval_iters = self.by_mode(smoke=2, quick=4, full=8)
        probe_batch = self.by_mode(smoke=2, quick=8, full=16)
        lr = self.args.lr
        arms = ["res", "plain", "plain_varinit"]           # 初始化时的测量：三组都做（很便宜）
        train_arms = ["res", "plain"] + (["plain_varinit"] if (self.mode == "full" or self.args.varinit_arm) else [])
        seed = self.seed
        self.config(depths=depths, steps=steps, lr=lr, warmup_steps=0, dim=dim, n_heads=4, batch_size=batch,
                    seq_len=seq_len, grad_clip=1.0, eval_every=eval_every, eval_iters=eval_iters, norm="rmsnorm",
                    arms={a: ARM_NAMES[a][1] for a in arms}, train_arms=train_arms, probe_batch=probe_batch,
                    vanished_rms=VANISHED_RMS, stuck_rule=f"final val loss > unigram baseline − {STUCK_MARGIN}",
                    threads=torch.get_num_threads())

        def cfg(d):
            return TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, dim=dim, n_layers=d, n_heads=4,
                                max_seq_len=seq_len, norm="rmsnorm", norm_position="pre")

        probes, grads, runs = {}, {}, {}
        printed = False
        for d in depths:
            for arm in arms:
                model, prov = build_model(cfg(d), self.impl, arm, seed, residual_cls, self.device)
                if not printed:
                    print("模型各部件的来源（你还没写完的部件来自参考实现）：")
                    for k, v in prov.items():
                        print(f"  {k} ← {v}")
                    print(f"“有残差”一组的每个子层都由{impl_label(self.impl)} 包起来；“无残差”一组用同样的 norm 和子层，只是不加回 x。")
                    printed = True
                self.record_provenance({f"tinylm[{key(arm, d)}]": prov})
                probes[(arm, d)] = init_probe(model, corpus, batch_size=probe_batch, seq_len=seq_len, seed=seed)
                grads[(arm, d)] = layer_grad_norms(model, corpus, seq_len=seq_len, batch_size=batch, seed=seed)
                if arm in train_arms:
                    res = train_lm(model, corpus, steps=steps, batch_size=batch, seq_len=seq_len, lr=lr,
                                   warmup_steps=0, grad_clip=1.0, eval_every=eval_every, eval_iters=eval_iters,
                                   seed=seed, device=self.device, progress=self.progress,
                                   desc=f"{ARM_NAMES[arm][1][:14]} {d}L")
                    runs[(arm, d)] = res.to_dict()
                    r = runs[(arm, d)]
                    st = run_status(r, unigram)
                    text = (f"发散于第 {r['diverged_at']} 步" if st == "diverged" else
                            f"val loss {r['final_val_loss']:.3f}" + ("（没学到上下文）" if st == "stuck" else ""))
                    print(f"  {pad(ARM_NAMES[arm][0], 24)} {d:>2} 层：{text}，{r['wall_time_s']:.1f} 秒")

        self._plots(depths, arms, train_arms, probes, grads, runs, unigram)

        rows = []
        for d in depths:
            for arm in arms:
                p, g, r = probes[(arm, d)], grads[(arm, d)], runs.get((arm, d))
                vanished = first_vanished_layer(p.rms)
                rows.append([
                    f"{ARM_NAMES[arm][0]} {d}L",
                    f"{fmt(p.cosine[0], '.2f')} → {fmt(last_finite(p.cosine)[1], '.2f')}",
                    "—" if vanished is None else f"第 {vanished} 层",
                    f"{g[0]:.2g} / {g[-1]:.2g}",
                    fmt(r["final_val_loss"]) if r else "（未训练）",
                    {"ok": "学到了", "stuck": "卡在字频水平", "diverged": "发散"}[run_status(r, unigram)] if r else "—",
                ])
        self.print_table(["变体", "余弦相似度 嵌入→最后一层", "信号消失于", "初始梯度 首/末 block",
                          "最终验证 loss", "状态"], rows,
                         title=f"只按字符频率猜的验证 loss = {unigram:.3f}；{steps} 步，学习率 {lr:g}，不加 warmup")

        text, verdict = self._conclusion(depths, arms, train_arms, probes, grads, runs, unigram, steps)
        self.conclude(text)
        return {
            "unigram_baseline_val_loss": unigram,
            "cosine_per_layer": {key(a, d): p.cosine for (a, d), p in probes.items()},
            "rms_per_layer": {key(a, d): p.rms for (a, d), p in probes.items()},
            "init_grad_norms": {key(a, d): g for (a, d), g in grads.items()},
            "runs": {key(a, d): r for (a, d), r in runs.items()},
            "status": {key(a, d): run_status(r, unigram) for (a, d), r in runs.items()},
            "verdict": verdict,
        }

    def _conclusion(self, depths, arms, train_arms, probes, grads, runs, unigram, steps):
        parts, verdict = [], {}
        col_ok = []
        for d in depths:
            s, ok = collapse_sentence(d, probes, arms, self.impl)
            parts.append(s)
            col_ok.append(ok)
        verdict["collapse_without_residual"] = all(col_ok)
        if all(col_ok):
            parts.append("没有残差时，每经过一层注意力，各位置的表示就被“平均”得更像一点（或者整个信号一起缩没了）；"
                         "有残差时，每一层只是在原来的表示上加一个小增量，token 之间的差别一直保留着。"
                         "这就是 Dong 等（2021）说的：去掉跳连（也没有 MLP）时，纯注意力网络里所有 token 的表示会随深度迅速变成同一个向量（token uniformity，输出坍缩到秩 1），跳连能阻止它。")
        else:
            parts.append("与预期不完全一致：至少在一个深度上，无残差的表示并没有比有残差时明显更相似、也没有消失。")
        g_text, g_ok = grad_sentence(depths, grads, arms)
        parts.append(g_text)
        verdict["residual_grads_balanced"] = g_ok
        if g_ok:
            parts.append("有残差时各 block 的梯度在同一个量级：恒等通路让梯度不必逐层连乘就能到达每一层（teaching.md §2.2）。")

        learned = {k: run_status(r, unigram) for k, r in runs.items()}
        res_ok = [d for d in depths if learned.get(("res", d)) == "ok"]
        plain_bad = [d for d in depths if learned.get(("plain", d)) in ("stuck", "diverged")]
        desc = "；".join(
            f"{d} 层 有残差 {fmt(runs[('res', d)]['final_val_loss'])} / 无残差 {fmt(runs[('plain', d)]['final_val_loss'])}"
            + (f" / 方差保持初始化 {fmt(runs[('plain_varinit', d)]['final_val_loss'])}" if ("plain_varinit", d) in runs else "")
            for d in depths)
        parts.append(f"训练 {steps} 步后的验证 loss（只按字符频率猜是 {unigram:.3f}）——{desc}。")
        verdict["res_learned_at"] = res_ok
        verdict["plain_stuck_at"] = plain_bad
        if len(res_ok) == len(depths) and len(plain_bad) == len(depths):
            parts.append("有残差时每个深度都学到了上下文；没有残差时每个深度都停在（或高于）只按字符频率猜的水平——"
                         "同样的模块、同样的初始化，只差一个“x +”。")
        elif len(res_ok) == len(depths) and plain_bad:
            parts.append(f"有残差时每个深度都学到了上下文；没有残差时在 {_join(plain_bad)} 层停在字频水平，"
                         "越深越难训练。")
        elif not plain_bad:
            parts.append("与预期不一致：没有残差的模型在这些深度上也学到了上下文。可以试试更深的 --depths，或者看看你的"
                         " PreNormResidual 是否通过了全部测试。")
        else:
            parts.append("有残差的模型并不是在每个深度都学到了上下文（见上表）；步数很少时这可能只是还没来得及，"
                         "试试完整模式或更大的 --steps。")
        vt = [d for d in depths if ("plain_varinit", d) in runs]
        if vt:
            stuck_v = [d for d in vt if learned.get(("plain_varinit", d)) in ("stuck", "diverged")]
            if stuck_v:
                ok_v = [d for d in vt if d not in stuck_v]
                some = ""
                if ok_v:
                    some = "".join(f"{d} 层时学到了一点（{runs[('plain_varinit', d)]['final_val_loss']:.3f}，"
                                   f"有残差是 {runs[('res', d)]['final_val_loss']:.3f}），" for d in ok_v)
                parts.append(f"对照：把无残差模型的初始化换成方差保持的 N(0, 1/fan_in) 后，信号不再消失，{some}"
                             f"但 {_join(stuck_v)} 层仍然停在字频水平——问题不只是“初始化太小”，"
                             "而是没有那条恒等通路。")
            else:
                parts.append("对照：换成方差保持初始化后，无残差模型也学到了上下文——在这个设置下，"
                             "无残差组的主要问题是初始化太小（信号一层层缩没），而不是别的。")
        if len(res_ok) >= 2:
            first, last = runs[("res", depths[0])]["final_val_loss"], runs[("res", depths[-1])]["final_val_loss"]
            if last > first + 0.02:
                parts.append(f"留意：有残差时 {depths[-1]} 层反而比 {depths[0]} 层的 loss 高（{last:.3f} vs {first:.3f}）——"
                             f"只训练 {steps} 步、学习率相同，更深的模型还没来得及发挥。"
                             "深度到底有没有用，是实验 2（exp2_depth_scaling）要回答的问题。")
        if self.mode == "quick":
            parts.append("快速模式只训练了前两组、每组 1 个种子；去掉 --quick 会训练更多步，并加上“无残差 + 方差保持初始化”这一组。")
        return "\n".join(parts), verdict

    def _plots(self, depths, arms, train_arms, probes, grads, runs, unigram):
        from matplotlib.lines import Line2D

        colors = {"res": "C0", "plain": "C3", "plain_varinit": "C1"}
        lstyle = {d: ls for d, ls in zip(depths, (":", "--", "-", "-."))}
        fig, axes = new_figure(1, 3, width=5.4, height=4.4)

        def style(arm, d):
            return {"color": colors[arm], "linestyle": lstyle.get(d, "-")}

        def name(arm, d):
            return (f"{ARM_NAMES[arm][0]} {d}L", f"{ARM_NAMES[arm][1]} {d}L")

        plot_gradient_flow({name(a, d): p.cosine for (a, d), p in probes.items()}, ax=axes[0, 0], log=False,
                           styles={name(a, d): style(a, d) for (a, d) in probes},
                           title=("初始化时 token 表示的平均余弦相似度", "Mean pairwise cosine similarity at init"),
                           xlabel=("层（0 = 词嵌入）", "layer (0 = embeddings)"),
                           ylabel=("余弦相似度（1 = 所有 token 一样）", "cosine similarity (1 = all tokens alike)"))
        for (arm, d), p in probes.items():  # 信号消失的地方画一个 ×
            v = first_vanished_layer(p.rms)
            i_last, c_last = last_finite(p.cosine)
            if v is not None and i_last is not None:
                axes[0, 0].plot([i_last], [c_last], marker="x", markersize=9, mew=2.2, color=colors[arm],
                                linestyle="none")
        axes[0, 0].set_ylim(-0.05, 1.05)
        plot_gradient_flow({name(a, d): g for (a, d), g in grads.items()}, ax=axes[0, 1],
                           styles={name(a, d): style(a, d) for (a, d) in grads},
                           title=("初始化时每个 block 的梯度范数", "Per-block gradient norm at init"),
                           xlabel=("block（0 = 最靠近输入）", "block (0 = nearest the input)"))
        curves, diverged = {}, {}
        for (arm, d), r in runs.items():
            window = max(1, len(r["train_losses"]) // 20)
            curves[name(arm, d)] = (r["train_steps"], moving_average(r["train_losses"], window))
            if r["diverged_at"] is not None:
                diverged[name(arm, d)] = r["diverged_at"]
        plot_loss_curves(curves, ax=axes[0, 2], styles={name(a, d): style(a, d) for (a, d) in runs},
                         diverged=diverged, references={("只按字符频率猜", "unigram baseline"): unigram},
                         title=("训练 loss（滑动平均）", "Training loss (moving average)"),
                         ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"))
        for ax in (axes[0, 0], axes[0, 1], axes[0, 2]):
            if ax.get_legend() is not None:
                ax.get_legend().remove()
        # 一个共用的图例：颜色 = 有没有残差，线型 = 层数
        handles = [Line2D([], [], color=colors[a], linewidth=2, label=label(ARM_NAMES[a])) for a in arms]
        handles += [Line2D([], [], color="gray", linestyle=lstyle.get(d, "-"), label=f"{d} layers") for d in depths]
        handles += [Line2D([], [], color="gray", marker="x", linestyle="none", markersize=8, mew=2,
                           label=label(("信号在此之后消失（RMS < 1e-6）", "signal vanishes after this layer (RMS < 1e-6)"))),
                    Line2D([], [], color="gray", linestyle=(0, (4, 3)), linewidth=1,
                           label=label(("只按字符频率猜", "unigram baseline")) + f" = {unigram:.3f}")]
        fig.legend(handles=handles, loc="lower center", ncol=4, fontsize="small", frameon=False,
                   bbox_to_anchor=(0.5, -0.02))
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        self.save_figure(fig, "init_and_training")


if __name__ == "__main__":
    sys.exit(WithVsWithout.main())
