"""实验 4：FFN 是键值记忆吗？——在一个训练好的小模型上，照 Geva 等（2021）的思路看几个神经元。

把 FFN 写成 y = Σ_i m_i · v_i：
- 第 i 个“键”是 gate_proj / up_proj 的第 i 行，系数 m_i = silu(gate(x))_i · up(x)_i 表示输入与这个键有多匹配；
- 第 i 个“值”是 down_proj 的第 i 列 v_i（一个 dim 维向量），m_i 越大，它被加进残差流的量越多。
做法（玩具尺度）：
1. 用你的 FeedForward 训练一个 4 层字符级语言模型（TinyShakespeare）；
2. 用 forward hook 挂在每层 mlp.down_proj 上，读出验证文本每个位置的系数 m（down_proj 的输入）；
3. 键：每个神经元取系数最大的 k 个位置（“触发上下文”）；
4. 值：把 v_i 乘上最后一个 RMSNorm 的权重，再乘词表矩阵（lm_head），看它最推高哪些字符；
5. 统计每一层：触发上下文是否共享“当前字符”（浅层模式）、是否共享“下一个字符”，
   以及值向量最推高的字符是否就是触发上下文后面真正出现的字符（与把值向量随机打乱配对时比）。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”
sys.path.insert(0, str(Path(__file__).resolve().parent))

import statistics  # noqa: E402

import torch  # noqa: E402

from kata.experiment import Experiment, UsageError, unigram_baseline  # noqa: E402
from kata.plots import label, new_figure, plot_activation_distribution  # noqa: E402

GEVA = ("Geva 等 2021（Transformer Feed-Forward Layers Are Key-Value Memories，EMNLP）：键与输入里的文本模式相关，"
        "低层多是浅层模式、高层更偏语义；值在词表上诱导出的分布，把概率集中在紧跟这些模式之后的词上，在高层尤其明显")


def show_char(c: str) -> str:
    return {"\n": "⏎", " ": "␣", "\t": "⇥"}.get(c, c)


def show_context(text: str) -> str:
    return text.replace("\n", "⏎")


@torch.no_grad()
def collect_coefficients(model, corpus, *, n_seqs: int, seq_len: int, batch: int, device) -> dict:
    """在验证集上跑模型，用 forward pre-hook 读出每层 mlp.down_proj 的输入（FFN 的系数 m）。

    返回 x [N, S]（输入字符）、y [N, S]（下一个字符）、coeffs：每层一个 [N·S, H] 的张量。
    文本取自验证集上等间距、互不重叠的 N 段，每个位置只出现一次。
    """
    blocks = [b for b in model.blocks if getattr(b, "mlp", None) is not None]
    store = {i: [] for i in range(len(blocks))}
    handles = []
    for i, b in enumerate(blocks):
        down = getattr(b.mlp, "down_proj", None)
        if down is None:
            raise UsageError("实验 4 需要 FeedForward 有名为 down_proj 的 nn.Linear（与 minimind 的 FeedForward 同名：gate_proj / up_proj / down_proj）。")

        def hook(module, inputs, i=i):
            store[i].append(inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).cpu())
        handles.append(down.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    # 验证集上等间距、互不重叠的 n_seqs 段（随机取段会有重叠，同一个位置被数两次，统计就偏了）
    val = corpus.val_ids
    stride = max(seq_len + 1, (len(val) - seq_len - 1) // n_seqs)
    n_seqs = min(n_seqs, (len(val) - seq_len - 1) // stride + 1)
    starts = torch.arange(n_seqs) * stride
    idx = starts[:, None] + torch.arange(seq_len)
    X, Y = val[idx], val[idx + 1]
    try:
        for b in range(0, n_seqs, batch):
            model(X[b:b + batch].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if any(not v for v in store.values()):
        raise UsageError("实验 4 没有读到 down_proj 的输入：你的 FeedForward.forward 需要调用 self.down_proj(...)"
                         "（而不是直接用它的 weight），forward hook 才能挂上。")
    return {"x": X, "y": Y, "coeffs": [torch.cat(store[i]) for i in range(len(blocks))]}


@torch.no_grad()
def value_logits(model, layer: int) -> torch.Tensor:
    """每个值向量 v_i（down_proj.weight 的第 i 列）直接投到词表上的 logits：[H, V]。

    残差流最后要经过 model.norm（RMSNorm，逐通道乘 weight）再进 lm_head；这里把 weight 乘上去，
    忽略归一化的整体缩放（它不改变哪个字符排第一）。
    """
    W_down = model.blocks[layer].mlp.down_proj.weight.detach().float()          # [d, H]
    gamma = getattr(model.norm, "weight", None)
    V = W_down * (gamma.detach().float()[:, None] if isinstance(gamma, torch.Tensor) else 1.0)
    return (model.lm_head.weight.detach().float() @ V).T                          # [H, V]


def layer_stats(coeffs: torch.Tensor, x: torch.Tensor, y: torch.Tensor, vlog: torch.Tensor, k: int,
                n_shuffles: int, rng: torch.Generator) -> dict:
    """一层的统计（每个神经元取系数最大的 k 个位置）。"""
    H = coeffs.shape[1]
    cur, nxt = x.reshape(-1), y.reshape(-1)
    top_vals, top_idx = coeffs.topk(k, dim=0)                 # [k, H]
    cur_top, nxt_top = cur[top_idx], nxt[top_idx]             # [k, H]

    def mode_share(t):  # 每列里出现最多的那个字符占了几成
        return torch.tensor([torch.bincount(t[:, i]).max().item() / k for i in range(t.shape[1])])

    same_cur, same_next = mode_share(cur_top), mode_share(nxt_top)
    # 随机的 k 个位置作基线：同一个字符本来就常见（空格、e……）
    rand_idx = torch.randint(0, cur.numel(), (k, H), generator=rng)
    base_cur, base_next = mode_share(cur[rand_idx]), mode_share(nxt[rand_idx])

    top_pred = vlog.argmax(dim=1)                              # [H]：每个值向量最推高的字符
    agree = (nxt_top == top_pred[None, :]).float().mean(0)     # [H]
    ranks = (vlog[torch.arange(H)[None, :].expand(k, H), :] > vlog.gather(1, nxt_top.T).T[..., None]).sum(-1) + 1
    shuf_agree, shuf_rank = [], []
    for _ in range(n_shuffles):
        perm = torch.randperm(H, generator=rng)
        p = top_pred[perm]
        shuf_agree.append((nxt_top == p[None, :]).float().mean().item())
        vl = vlog[perm]
        r = (vl[torch.arange(H)[None, :].expand(k, H), :] > vl.gather(1, nxt_top.T).T[..., None]).sum(-1) + 1
        shuf_rank.append(r.float().mean().item())
    return {
        "same_current_char": same_cur.mean().item(), "same_current_char_random": base_cur.mean().item(),
        "same_next_char": same_next.mean().item(), "same_next_char_random": base_next.mean().item(),
        "value_agreement": agree.mean().item(), "value_agreement_shuffled": statistics.fmean(shuf_agree),
        "value_rank": ranks.float().mean().item(), "value_rank_shuffled": statistics.fmean(shuf_rank),
        "per_neuron_agreement": agree, "per_neuron_top_mean": top_vals.mean(0), "top_idx": top_idx,
        "frac_negative": (coeffs < 0).float().mean().item(),
    }


class KeyValueMemory(Experiment):
    name = "exp4_key_value_memory"
    module = "04_feedforward"
    can_use_synthetic = False  # 拿不到 TinyShakespeare 时不改用合成语料
    synthetic_reason = "它要看 FFN 神经元在真实英文里被什么上下文触发、推高哪些字符（Geva 等 2021），这正是关于语料内容的结论"
    title = "实验 4：FFN 是键值记忆吗？（Geva 等 2021 的方法，玩具尺度）"
    description = (
        "训练一个用你的 FeedForward 的小模型，用 forward hook 读出 FFN 的系数，看几个神经元的触发上下文（键）\n"
        "和它们的值向量推高的字符（值），并逐层统计。对应 teaching.md §4。"
    )
    requires = ("FeedForward",)

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 300，完整 1500）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3）")
        parser.add_argument("--top-k", type=int, default=None, help="每个神经元取几个触发上下文（默认：快速 10，完整 20）")

    def run(self):
        from kata.tinylm import TinyLMConfig, build_tiny_lm, train_lm

        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        steps = self.args.steps or self.by_mode(smoke=4, quick=300, full=1500)
        dim, layers = self.by_mode(smoke=(32, 2), quick=(64, 4), full=(64, 4))
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(32, 64), full=(32, 64))
        n_seqs = self.by_mode(smoke=16, quick=128, full=256)
        k = self.args.top_k or self.by_mode(smoke=4, quick=10, full=20)
        n_show = self.by_mode(smoke=2, quick=4, full=5)
        lr_ = self.args.lr
        self.config(steps=steps, lr=lr_, dim=dim, n_layers=layers, n_heads=4, batch_size=batch,
                    seq_len=seq_len, analysis_sequences=n_seqs, top_k=k, warmup_steps=0, grad_clip=1.0)

        cfg = TinyLMConfig(vocab_size=corpus.tokenizer.vocab_size, dim=dim, n_layers=layers, n_heads=4,
                           max_seq_len=seq_len, ffn="swiglu")
        model, prov = build_tiny_lm(cfg, impl=self.impl, require=("FeedForward",), seed=self.seed)
        model.to(self.device)
        self.record_provenance({"tinylm": prov})
        print("部件来源：" + "，".join(f"{key} ← {val}" for key, val in prov.items()))
        res = train_lm(model, corpus, steps=steps, batch_size=batch, seq_len=seq_len, lr=lr_, grad_clip=1.0,
                       eval_every=max(1, steps // 5), eval_iters=self.by_mode(smoke=2, quick=8, full=16),
                       seed=self.seed, device=self.device, progress=self.progress, desc="train")
        if res.diverged_at is not None:
            self.conclude(f"训练在第 {res.diverged_at} 步发散（loss 变成 NaN/inf），没有可以分析的模型；试试更小的 --lr。")
            return {"train": res.to_dict(), "status": "diverged"}
        print(f"训练完成：{steps} 步，验证 loss {res.final_val_loss:.3f}（只按字符频率猜是 {unigram:.3f}），"
              f"{res.wall_time_s:.0f} 秒")

        data = collect_coefficients(model, corpus, n_seqs=n_seqs, seq_len=seq_len, batch=batch, device=self.device)
        x, y = data["x"], data["y"]
        N = x.numel()
        dec = corpus.tokenizer.decode
        rng = torch.Generator().manual_seed(self.seed + 7)
        per_layer, examples = [], []
        for layer, coeffs in enumerate(data["coeffs"]):
            vlog = value_logits(model, layer)
            st = layer_stats(coeffs, x, y, vlog, k=min(k, N), n_shuffles=20, rng=rng)
            per_layer.append(st)
            # 展示：本层一致率最高的神经元（挑过的！）+ 一个随机神经元（没挑过）
            agree, top_mean = st["per_neuron_agreement"], st["per_neuron_top_mean"]
            best = int(torch.argmax(agree * 1000 + top_mean / (top_mean.abs().max() + 1e-9)))
            rand = int(torch.randint(0, coeffs.shape[1] - 1, (1,), generator=rng))
            rand += int(rand >= best)  # 随机挑一个“不是 best”的神经元
            for which, i in (("本层值-键一致率最高（挑选过的例子）", best), ("随机挑的一个神经元", rand)):
                ctxs = []
                for pos in st["top_idx"][:n_show, i].tolist():
                    n, t = divmod(pos, seq_len)
                    start = max(0, t - 24)
                    ctx = dec(x[n, start:t].tolist())
                    ctxs.append({"context": ctx, "current": dec([int(x[n, t])]), "next": dec([int(y[n, t])]),
                                 "coefficient": float(coeffs[pos, i])})
                top_chars = vlog[i].topk(5).indices.tolist()
                examples.append({"layer": layer, "neuron": i, "why": which, "agreement": float(agree[i]),
                                 "triggers": ctxs, "value_top_chars": [dec([c]) for c in top_chars]})

        self._print_examples(examples, k)
        rows = []
        for layer, st in enumerate(per_layer):
            rows.append([layer, f"{st['same_current_char']:.0%}（{st['same_current_char_random']:.0%}）",
                         f"{st['same_next_char']:.0%}（{st['same_next_char_random']:.0%}）",
                         f"{st['value_agreement']:.0%}（{st['value_agreement_shuffled']:.0%}）",
                         f"{st['value_rank']:.1f}（{st['value_rank_shuffled']:.1f}）", f"{st['frac_negative']:.0%}"])
        self.print_table(["层", "触发上下文的当前字符相同（随机位置）", "下一个字符相同（随机位置）",
                          "值的第 1 名 = 真实下一个字符（值随机配对）", "真实下一个字符在值分布里的名次（随机配对）",
                          "系数为负的比例"], rows,
                         title=f"逐层统计：每层 {data['coeffs'][0].shape[1]} 个神经元，每个取系数最大的 {k} 个位置"
                               f"（共 {N:,} 个验证位置，词表 {corpus.tokenizer.vocab_size} 个字符）")
        self._plot(per_layer, data["coeffs"])
        text, verdict = self._conclusion(per_layer, res.final_val_loss, unigram)
        self.conclude(text)
        clean = [{kk: vv for kk, vv in st.items() if not isinstance(vv, torch.Tensor)} for st in per_layer]
        return {"train": res.to_dict(), "per_layer": clean, "examples": examples, "verdict": verdict,
                "analysis_positions": N, "unigram_baseline_val_loss": unigram}

    def _print_examples(self, examples, k):
        print(f"\n几个神经元（键 = 系数最大的触发上下文，【】里是当前字符，→ 后是真实的下一个字符；"
              f"值 = 值向量最推高的 5 个字符）。␣ 是空格，⏎ 是换行。")
        for ex in examples:
            print(f"\n第 {ex['layer']} 层 · 神经元 {ex['neuron']}（{ex['why']}；前 {k} 个触发位置里，"
                  f"值的第 1 名恰好是下一个字符的占 {ex['agreement']:.0%}）")
            for t in ex["triggers"]:
                print(f"   …{show_context(t['context']):>24}【{show_char(t['current'])}】→ {show_char(t['next'])}"
                      f"   m = {t['coefficient']:.2f}")
            print("   值推高：" + "  ".join(show_char(c) for c in ex["value_top_chars"]))

    def _conclusion(self, per_layer, val_loss, unigram):
        parts, verdict = [], {}
        L = len(per_layer)
        if val_loss > unigram - 0.2:
            parts.append(f"注意：模型只训练到验证 loss {val_loss:.3f}（只按字符频率猜是 {unigram:.3f}），还没学到多少上下文，"
                         "下面的统计参考意义有限；去掉 --quick 或加大 --steps。")
        cur = [s["same_current_char"] for s in per_layer]
        cur_base = statistics.fmean(s["same_current_char_random"] for s in per_layer)
        agree = [s["value_agreement"] for s in per_layer]
        shuf = [s["value_agreement_shuffled"] for s in per_layer]
        verdict.update(same_current_char=cur, value_agreement=agree, value_agreement_shuffled=shuf)

        # 1) 键：模式可辨认吗？浅层是否更“浅”？
        parts.append(f"键：每层神经元的触发上下文里，当前字符相同的比例是 "
                     + "、".join(f"第 {i} 层 {c:.0%}" for i, c in enumerate(cur))
                     + f"（随机位置只有约 {cur_base:.0%}）。")
        if min(cur) > 2 * cur_base:
            parts.append("每一层的神经元都明显只被少数几种输入触发——键确实在“检测模式”。")
        else:
            parts.append(f"并不是每一层都明显高于随机位置的 {cur_base:.0%}：有的层的键不是靠“当前是哪个字符”来触发的，"
                         "它们看的是更长的上下文（去例子里看看它们的触发上下文有什么共同点）。")
        if L >= 2 and cur[0] > cur[-1] + 0.05:
            verdict["shallow_low_layers"] = True
            parts.append(f"最低层的触发上下文比最高层更常共享同一个当前字符（{cur[0]:.0%} vs {cur[-1]:.0%}）：低层的键更多地只看"
                         "眼前这个字符（最“浅”的模式），高层的键看的是更长的上下文。这与 Geva 等的观察（低层浅、高层更偏语义）方向一致。")
        else:
            verdict["shallow_low_layers"] = False
            parts.append("本次没有看到“低层的键更浅”这个层间趋势（最低层与最高层的当前字符共享比例差不到 5 个百分点或方向相反）；"
                         "字符级、4 层的小模型里，“浅”和“语义”本来就不容易分开。")
        # 2) 值：是否预测触发上下文之后的字符？
        ratio = [a / s if s > 0 else float("inf") for a, s in zip(agree, shuf)]
        verdict["agreement_over_shuffled"] = ratio
        parts.append("值：值向量最推高的字符恰好是触发上下文之后真实字符的比例 "
                     + "、".join(f"第 {i} 层 {a:.0%}（随机配对 {s:.0%}）" for i, (a, s) in enumerate(zip(agree, shuf))) + "。")
        above = [i for i, (a, s) in enumerate(zip(agree, shuf)) if a > 1.5 * s and a - s > 0.03]
        verdict["layers_where_values_predict_next"] = above
        if above:
            parts.append(f"在第 {'、'.join(map(str, above))} 层，值向量明显比随机配对更常“说中”下一个字符——"
                         "键认出一个模式，值就把“这个模式之后通常出现的字符”推高：这就是一条键值记忆。")
        else:
            parts.append("本次没有一层的值向量明显比随机配对更常说中下一个字符；直接把值投到词表上，忽略了后面各层的加工，"
                         "对低层尤其不准。")
        if L >= 2:
            rises = agree[-1] > agree[0] + 0.03
            rises_ratio = ratio[-1] > 1.2 * ratio[0]
            verdict["agreement_rises_with_depth"] = rises
            verdict["agreement_ratio_rises_with_depth"] = rises_ratio
            ratios = "、".join(f"第 {i} 层 {r:.1f}×" for i, r in enumerate(ratio))
            if rises:
                parts.append("一致率在最高层比最低层高，方向与 Geva 等（高层的值更贴近紧随其后的词）一致。")
            elif rises_ratio:
                parts.append(f"按绝对比例，最高层（{agree[-1]:.0%}）没有比最低层（{agree[0]:.0%}）高出 3 个百分点以上；"
                             f"但相对随机配对的倍数（{ratios}）在最高层更大。"
                             "与 Geva 等“高层尤其明显”的观察只算部分一致。")
            else:
                parts.append(f"一致率没有随层数上升（相对随机配对的倍数：{ratios}），与 Geva 等“高层尤其明显”的观察不一致；"
                             "小模型、字符级的结果不必与大模型相同。")
            nxt = [s["same_next_char"] for s in per_layer]
            verdict["same_next_char"] = nxt
            parts.append("另外，触发上下文之后的字符相同的比例是 " + "、".join(f"{v:.0%}" for v in nxt)
                         + f"（随机位置约 {statistics.fmean(s['same_next_char_random'] for s in per_layer):.0%}）："
                         + ("各层都明显高于随机，说明键检测到的模式本身就预示着接下来的字符。"
                            if min(nxt) > 1.5 * max(s["same_next_char_random"] for s in per_layer) else
                            "并不是每层都明显高于随机。"))
        parts.append("对照：" + GEVA + "。")
        return "\n".join(parts), verdict

    def _plot(self, per_layer, coeffs):
        fig, axes = new_figure(1, 3, width=5.2, height=4.2)
        L = len(per_layer)
        xs = list(range(L))
        ax = axes[0, 0]
        w = 0.2
        ax.bar([i - 1.5 * w for i in xs], [s["same_current_char"] for s in per_layer], w,
               label=label(("当前字符相同", "same current char")))
        ax.bar([i - 0.5 * w for i in xs], [s["same_current_char_random"] for s in per_layer], w, alpha=0.5,
               label=label(("（随机位置）", "(random positions)")))
        ax.bar([i + 0.5 * w for i in xs], [s["same_next_char"] for s in per_layer], w,
               label=label(("下一个字符相同", "same next char")))
        ax.bar([i + 1.5 * w for i in xs], [s["same_next_char_random"] for s in per_layer], w, alpha=0.5,
               label=label(("（随机位置）", "(random positions)")))
        ax.set_xticks(xs)
        ax.set_xlabel(label(("层", "layer")))
        ax.set_title(label(("键：触发上下文有多“像”", "Keys: how alike are the top triggers")))
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        ax = axes[0, 1]
        ax.bar([i - 0.2 for i in xs], [s["value_agreement"] for s in per_layer], 0.4,
               label=label(("值的第 1 名 = 下一个字符", "value top-1 = next char")))
        ax.bar([i + 0.2 for i in xs], [s["value_agreement_shuffled"] for s in per_layer], 0.4, alpha=0.5,
               label=label(("值随机配对", "values shuffled")))
        ax.set_xticks(xs)
        ax.set_xlabel(label(("层", "layer")))
        ax.set_title(label(("值：是否预测触发之后的字符", "Values: do they predict what follows")))
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        plot_activation_distribution({(f"第 {i} 层", f"layer {i}"): c.flatten()[:200_000] for i, c in enumerate(coeffs)},
                                     ax=axes[0, 2], log_y=True,
                                     title=("FFN 系数 m = silu(g)·u 的分布", "FFN coefficients m = silu(g)·u"),
                                     xlabel=("系数", "coefficient"))
        self.save_figure(fig, "layers")


if __name__ == "__main__":
    sys.exit(KeyValueMemory.main())
