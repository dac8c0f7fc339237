"""实验 1：块的组装顺序——Pre-Norm vs Post-Norm vs 不归一化（8 层，同一个学习率，不加 warmup）。

三个变体都是**你写的 MiniMindForCausalLM**（exercises/06_transformer_block/model.py，里面是你的块、
你的 RMSNorm / Attention / FeedForward），同一份初始化、同样的数据；只改块的 forward 里那几行的顺序：

  Pre-Norm（MiniMind）：h = x + attn(norm₁(x))；out = h + mlp(norm₂(h))
  Post-Norm（原始 Transformer）：h = norm₁(x + attn(x))；out = norm₂(h + mlp(h))
  不归一化：h = x + attn(x)；out = h + mlp(h)（两个块内 norm 和最后的 norm 都换成恒等映射）

记录三样东西：
1. 初始化时每一层输出（残差流）的均方根——Pre-Norm 的残差流随深度增长，Post-Norm 每层都被拉回 1；
2. 初始化时每个块全部参数的梯度范数（一次前向 + 反向）；
3. 训练曲线；loss 变成 NaN/inf 记为发散（连同步数），停在“只按字符频率猜”的水平记为“卡住”。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”

import math  # noqa: E402
import statistics  # noqa: E402
import types  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from kata.config import MiniMindConfig  # noqa: E402
from kata.impl import describe  # noqa: E402
from kata.experiment import (STUCK_MARGIN, ComponentNotImplemented, Experiment, compare_means,  # noqa: E402
                             describe_gap, fmt_mean_std, last_first_ratio, mean_std_curve, run_status,
                             status_summary, summarize, unigram_baseline)
from kata.plots import new_figure, plot_gradient_flow, plot_loss_curves  # noqa: E402
from kata.arms import Arm, run_arms  # noqa: E402

VARIANTS = ("pre", "post", "none")
NAMES = {"pre": ("Pre-Norm（MiniMind）", "Pre-Norm (MiniMind)"), "post": ("Post-Norm", "Post-Norm"),
         "none": ("不归一化", "no norm")}


# ---------------------------------------------------------------------------------------------
# 用学习者的 MiniMindForCausalLM 搭三个变体
# ---------------------------------------------------------------------------------------------

def _post_norm_forward(self, hidden_states, position_embeddings, past_key_value=None, use_cache=False,
                       attention_mask=None):
    """Post-Norm：先加残差再归一化（用这个块自己的子模块）。"""
    a, present = self.self_attn(hidden_states, position_embeddings, past_key_value=past_key_value,
                                use_cache=use_cache, attention_mask=attention_mask)
    h = self.input_layernorm(hidden_states + a)
    return self.post_attention_layernorm(h + self.mlp(h)), present


def make_variant(lm: nn.Module, variant: str) -> nn.Module:
    """就地把学习者的 MiniMindForCausalLM 改成某个变体（参数名、初始化都不变）。"""
    if variant == "post":
        for layer in lm.model.layers:
            layer.forward = types.MethodType(_post_norm_forward, layer)
    elif variant == "none":
        for layer in lm.model.layers:
            layer.input_layernorm = nn.Identity()
            layer.post_attention_layernorm = nn.Identity()
        lm.model.norm = nn.Identity()
    return lm


class CharLM(nn.Module):
    """把 MiniMindForCausalLM 包成 kata.tinylm 训练器要的接口：forward(x, targets) -> (logits, loss)。

    targets 已经是“下一个字符”（corpus.get_batch 给的 y），所以这里直接算交叉熵，不再右移。
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.blocks = lm.model.layers   # layer_grad_norms / 逐层梯度用

    def forward(self, input_ids, targets=None):
        logits = self.lm(input_ids).logits
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def build_learner_lm(impl: str, cfg: MiniMindConfig, seed: int) -> nn.Module:
    """用 --impl 的 MiniMindForCausalLM 建模型并试跑一次；还没实现 → ComponentNotImplemented（一句中文）。"""
    from kata.impl import component

    cls = component("MiniMindForCausalLM", impl)
    torch.manual_seed(seed)
    try:
        lm = cls(cfg)
        with torch.no_grad():
            out = lm(torch.zeros(1, 4, dtype=torch.long))
        if not isinstance(getattr(out, "logits", None), torch.Tensor):
            raise TypeError("forward 的返回值没有 logits 张量")
    except NotImplementedError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "NotImplementedError"
        who = "你的" if impl == "exercises" else f"--impl {impl} 的"
        raise ComponentNotImplemented("MiniMindForCausalLM", impl, (
            f"{who} MiniMindForCausalLM 还不能运行（{first}）：先让 pytest exercises/06_transformer_block 全部通过"
            "（它用的是你自己的模块 01–04），或者加上 --impl solutions 先用参考实现运行这个实验。")) from exc
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise ComponentNotImplemented("MiniMindForCausalLM", impl, (
            f"MiniMindForCausalLM（--impl {impl}）在一个很小的输入上就出错了（{detail}）："
            "先让 pytest exercises/06_transformer_block 通过，或者加上 --impl solutions 先用参考实现运行这个实验。")) from exc
    return lm


@torch.no_grad()
def stream_rms_per_layer(model: CharLM, corpus, *, seq_len: int, batch_size: int, seed: int) -> list:
    """初始化时每个块输出（残差流）的均方根。"""
    seen, handles = [], []
    for block in model.blocks:
        handles.append(block.register_forward_hook(
            lambda mod, inp, out: seen.append(float((out[0] if isinstance(out, tuple) else out).float().pow(2).mean().sqrt()))))
    try:
        g = torch.Generator().manual_seed(seed)
        x, _ = corpus.get_batch("train", batch_size, seq_len, generator=g, device=next(model.parameters()).device)
        model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


# ---------------------------------------------------------------------------------------------
# 结论
# ---------------------------------------------------------------------------------------------

def sp(text: str) -> str:
    """中英文混排：以 ASCII 结尾的词后面补一个空格（“Post-Norm 没有”），汉字结尾不补（“不归一化没有”）。"""
    return text + (" " if text and text[-1].isascii() else "")


def join_mixed(a: str, b: str) -> str:
    """把两段中英文混排的文字接起来：接缝任一侧是 ASCII 字母或数字时补一个空格。"""
    return a + (" " if a and b and (a[-1].isascii() and a[-1].isalnum() or b[0].isascii() and b[0].isalnum()) else "") + b


def final_losses(runs: list) -> list:
    return [r["final_val_loss"] if r["diverged_at"] is None else float("nan") for r in runs]


def after_rms(runs: list) -> float:
    """训练后最后一层输出的均方根（各种子的均值；发散的不算）。"""
    vals = [r["stream_rms_after"][-1] for r in runs if r.get("stream_rms_after")]
    return statistics.fmean(vals) if vals else float("nan")


def how_worse(runs: list, pre_losses: list, losses: list, unigram: float) -> str:
    """一句话：这个变体比 Pre-Norm 差在哪里（发散 / 停在字频水平 / loss 更高）。"""
    summary = status_summary(runs, unigram)
    bits = [summary] if summary else []
    ok = [l for r, l in zip(runs, losses) if run_status(r, unigram) == "ok"]
    if ok and bits:
        c = compare_means(pre_losses, ok)
        same = c["exceeds_spread"] is False or (math.isfinite(c["diff"]) and abs(c["diff"]) <= 0.05)
        gap = "相当" if same else f"相差 {c['diff']:+.3f}"
        bits.append(f"训练正常的 {len(ok)} 个种子与 Pre-Norm {gap}")
    elif not bits:
        c = compare_means(pre_losses, losses)
        bits.append(f"验证 loss 高 {c['diff']:.3f}")
    return "，".join(bits)


def write_conclusion(runs: dict, grads: dict, rms: dict, unigram: float, depth: int, lr: float, steps: int,
                     n_seeds: int) -> tuple[str, dict]:
    """由数字决定措辞的结论。runs[v] = 每个种子的 TrainResult dict（含训练后的逐层 RMS）。"""
    zh = {v: NAMES[v][0] for v in VARIANTS}
    multi = n_seeds > 1
    parts, verdict = [], {}

    # 1) 初始化时的残差流与梯度
    r = {v: statistics.fmean(last_first_ratio(x) for x in rms[v]) for v in VARIANTS}
    g = {v: statistics.fmean(last_first_ratio(x) for x in grads[v]) for v in VARIANTS}
    verdict["init_stream_rms_last_over_first"] = r
    verdict["init_grad_last_over_first"] = g
    parts.append(f"初始化时（{depth} 层）：最后一层与第一层输出的均方根之比——" +
                 "，".join(f"{zh[v]} {r[v]:.2f}" for v in VARIANTS) +
                 "；最后一个块与第一个块的梯度范数之比——" + "，".join(f"{zh[v]} {g[v]:.2f}" for v in VARIANTS) + "。")
    if r["pre"] > 1.5 and 0.67 < r["post"] < 1.5:
        parts.append("Pre-Norm 的残差流从来不经过 norm，每层都往上加一点，所以越深越大；Post-Norm 每个块的输出都被归一化，"
                     "各层尺度一样。这正是 Pre-Norm 需要最后那个 model.norm 的原因。")
    if g["post"] > 1.5 * g["pre"] and g["post"] > 1.2:
        parts.append("Post-Norm 的梯度集中在靠近输出的块（last/first 明显大于 Pre-Norm），"
                     "与 Xiong 等（2020）的分析一致：Post-LN 在初始化时靠近输出的参数梯度大，所以需要 warmup。")
    elif g["post"] <= g["pre"]:
        parts.append("Xiong 等（2020）预期 Post-Norm 在初始化时靠近输出的块梯度更大；本次测到的 last/first 并不比 Pre-Norm 大，"
                     "这个预期在这个小模型和 minimind 的初始化下没有出现。")

    # 2) 训练
    parts.append(f"训练（学习率 {lr:g}、不加 warmup、{steps} 步、{n_seeds} 个种子）：")
    loss = {v: final_losses(runs[v]) for v in VARIANTS}
    bad = {v: any(run_status(x, unigram) != "ok" for x in runs[v]) for v in VARIANTS}
    for v in VARIANTS:
        st = status_summary(runs[v], unigram)
        if st:
            parts.append(f"{zh[v]}：{st}。")
    for v in ("post", "none"):
        if summarize(loss[v])["n"] and summarize(loss["pre"])["n"]:
            parts.append(describe_gap(loss["pre"], loss[v], zh["pre"], zh[v], spread_note=multi))
    worse = {}
    for v in ("post", "none"):
        c = compare_means(loss["pre"], loss[v])
        worse[v] = (bad[v] and not bad["pre"]) or (
            math.isfinite(c["diff"]) and c["diff"] > 0.05 and c["exceeds_spread"] is not False)
    verdict["worse_than_pre"] = worse
    verdict["status"] = {v: [run_status(x, unigram) for x in runs[v]] for v in VARIANTS}
    if bad["pre"]:
        parts.append("注意：这一次连 Pre-Norm 都没有训练好（见上面的状态），三者的比较说明不了块的顺序；"
                     "步数可能太少，或者学习率对这个模型太大了（试试更多 --steps 或更小的 --lr）。")
    elif worse["post"] and worse["none"]:
        how = "；".join(join_mixed(zh[v], how_worse(runs[v], loss["pre"], loss[v], unigram)) for v in ("post", "none"))
        parts.append(f"同一个学习率、不加 warmup，只有 Pre-Norm 每个种子都训练正常：{how}。"
                     f"这就是 MiniMind（以及 GPT-2 之后几乎所有大模型）把 norm 放在子层前面、残差加回未归一化的 x 的原因——"
                     "恒等通路（残差流）上没有任何 norm，梯度不必逐层连乘就能流回每一层（Xiong 等 2020：Pre-LN 不需要 warmup）；"
                     "而每个子层读到的又总是归一化过的输入，同一个学习率对每一层都合适。")
    elif worse["post"] or worse["none"]:
        which = zh["post"] if worse["post"] else zh["none"]
        other = zh["none"] if worse["post"] else zh["post"]
        parts.append(f"{sp(which)}明显比 Pre-Norm 差，{sp(other)}没有明显更差。预期是两者都更差："
                     "在这个深度和学习率下，只有一半的预期出现了；试试更大的 --lr 或更深的 --depth 再看。")
    else:
        parts.append("与预期不一致：在这个学习率和步数下，Post-Norm 和不归一化都没有比 Pre-Norm 明显更差。"
                     "模型小、步数少时问题不一定暴露；试试更大的 --lr（例如 2e-2）或更深的 --depth。")
    if not bad["pre"]:
        before, after = statistics.fmean(x[-1] for x in rms["pre"]), after_rms(runs["pre"])
        verdict["pre_stream_rms"] = {"init": before, "after": after}
        if math.isfinite(after) and after > 1.5 * before:
            parts.append(f"训练之后，Pre-Norm 最后一层输出（进入 model.norm 之前的总线）的均方根从初始化时的 {before:.3g} "
                         f"长到了 {after:.3g}：总线上没有 norm，尺度只增不减；最后的 model.norm 把它拉回≈1 再交给 lm_head。")
    if not bad["pre"] and not worse["none"]:
        g_pre = statistics.fmean(statistics.fmean(x) for x in grads["pre"])
        g_none = statistics.fmean(statistics.fmean(x) for x in grads["none"])
        ratio = g_pre / g_none if g_none > 0 else float("nan")
        verdict["init_grad_pre_over_none"] = ratio
        text = "不归一化在这里没有更差。"
        if math.isfinite(ratio) and ratio > 3:
            text += (f"初始化时它各块的梯度只有 Pre-Norm 的 1/{ratio:.0f}（中图），但 AdamW 按每个参数梯度的大小归一化步长，"
                     "梯度整体偏小并不妨碍它学习。")
        text += ("8 层、几百步、float32 的小模型还暴露不出没有归一化的问题；模块 01 的实验 2 在别的设置下测过它，"
                 "也可以在这里试试更大的 --lr（例如 3e-2）或更深的 --depth（例如 16）。")
        parts.append(text)
    if not multi:
        parts.append("快速模式只跑了 1 个种子；去掉 --quick 会跑 3 个种子并给出 均值 ± 标准差。")
    return "\n".join(parts), verdict


# ---------------------------------------------------------------------------------------------
# 实验
# ---------------------------------------------------------------------------------------------

class BlockOrder(Experiment):
    name = "exp1_block_order"
    module = "06_transformer_block"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "它测的是块内组装顺序对残差流尺度、梯度和训练稳定性的影响，这是优化层面的现象，不依赖语料是不是真实英文"
    title = "实验 1：块的组装顺序——Pre-Norm vs Post-Norm vs 不归一化（同一个学习率、不加 warmup）"
    description = (
        "用你写的 MiniMindForCausalLM（你的块、你的 RMSNorm / Attention / FeedForward）搭一个 8 层的字符级模型，\n"
        "只改块里 norm 与残差的顺序，比较初始化时逐层的残差流尺度与梯度，以及 TinyShakespeare 上的训练曲线。\n"
        "对应 teaching.md §1、§2。"
    )

    def execute(self):
        # 先试跑一次你的 MiniMindForCausalLM：还没实现时只输出那一句话，不打印别的
        with torch.random.fork_rng(devices=[]):
            build_learner_lm(self.impl, MiniMindConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                       num_key_value_heads=1, vocab_size=8,
                                                       max_position_embeddings=8), seed=0)
        return super().execute()

    def add_arguments(self, parser):
        parser.add_argument("--depth", type=int, default=8, help="层数（默认 8）")
        parser.add_argument("--lr", type=float, default=1e-2, help="学习率（默认 1e-2，三个变体相同，不加 warmup）")
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 150，完整 300）")

    def run(self):
        from kata.tinylm import layer_grad_norms

        corpus = self.load_corpus()
        unigram = unigram_baseline(corpus)
        seeds = self.seeds(full=3, quick=1, smoke=1)
        depth = self.by_mode(smoke=2, quick=self.args.depth, full=self.args.depth)
        steps = self.args.steps or self.by_mode(smoke=3, quick=150, full=300)
        hidden = self.by_mode(smoke=32, quick=64, full=64)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        eval_every = max(1, steps // self.by_mode(smoke=1, quick=6, full=10))
        eval_iters = self.by_mode(smoke=2, quick=5, full=10)
        lr = self.args.lr
        cfg = MiniMindConfig(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=corpus.tokenizer.vocab_size,
                             max_position_embeddings=seq_len, rope_theta=1e4)
        self.config(model=cfg.to_dict(), steps=steps, lr=lr, warmup_steps=0, grad_clip=1.0, batch_size=batch,
                    seq_len=seq_len, eval_every=eval_every, eval_iters=eval_iters, init="MiniMindForCausalLM 自己的初始化",
                    rope_theta_note="序列只有 64：用 1e4 而不是 minimind 训练 32k 长度时的 1e6",
                    stuck_rule=f"final val loss > unigram baseline − {STUCK_MARGIN}")
        print(f"模型：{describe(self.impl)}的 MiniMindForCausalLM，hidden {hidden}、{depth} 层、4/2 头、"
              f"词表 {cfg.vocab_size}；学习率 {lr:g}、不加 warmup、{steps} 步")

        grads = {v: [] for v in VARIANTS}
        rms = {v: [] for v in VARIANTS}

        def measure_at_init(arm, s, model):
            rms[arm.key].append(stream_rms_per_layer(model, corpus, seq_len=seq_len, batch_size=batch, seed=s))
            grads[arm.key].append(layer_grad_norms(model, corpus, seq_len=seq_len, batch_size=batch, seed=s))

        def measure_after(arm, s, model, r):
            if r["diverged_at"] is None:
                r["stream_rms_after"] = stream_rms_per_layer(model, corpus, seq_len=seq_len, batch_size=batch, seed=s)

        arms = [Arm(v, NAMES[v][0], NAMES[v][1],
                    build=lambda s, v=v: (CharLM(make_variant(build_learner_lm(self.impl, cfg, s), v)), {}))
                for v in VARIANTS]
        run_arms(self, corpus, arms, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=lr,
                 eval_every=eval_every, eval_iters=eval_iters, before_train=measure_at_init,
                 after_train=measure_after, unigram=unigram)
        runs = {a.key: a.runs for a in arms}
        n_params = {a.key: a.n_params for a in arms}

        self._plots(runs, grads, rms, seeds, unigram)
        rows = []
        for v in VARIANTS:
            rows.append([
                NAMES[v][0],
                f"{statistics.fmean(last_first_ratio(x) for x in rms[v]):.2f}",
                f"{statistics.fmean(last_first_ratio(x) for x in grads[v]):.2f}",
                f"{statistics.fmean(x[-1] for x in rms[v]):.3g} → {after_rms(runs[v]):.3g}",
                fmt_mean_std(final_losses(runs[v])),
                "、".join({"ok": "正常", "stuck": "停在字频水平", "diverged": "发散"}[run_status(x, unigram)]
                         for x in runs[v]),
            ])
        self.print_table(["块的顺序", "初始化残差流 RMS last/first", "初始化梯度 last/first", "最后一层 RMS 训练前→后",
                          f"最终验证 loss（{len(seeds)} 个种子）", "状态"], rows,
                         title="参数量：" + "，".join(f"{a.zh} {a.n_params:,}" for a in arms) + f"；只按字符频率猜的验证 loss = {unigram:.3f}")
        text, verdict = write_conclusion(runs, grads, rms, unigram, depth, lr, steps, len(seeds))
        self.conclude(text)
        return {"unigram_baseline_val_loss": unigram, "n_params": n_params, "runs": runs,
                "init_grad_norms": grads, "init_stream_rms": rms, "verdict": verdict,
                "stream_rms_after_training": {v: [r.get("stream_rms_after") for r in runs[v]] for v in VARIANTS},
                "final_val_loss": {v: summarize(final_losses(runs[v])) for v in VARIANTS}}

    def _plots(self, runs, grads, rms, seeds, unigram):
        colors = {"pre": "C0", "post": "C3", "none": "C7"}
        fig, axes = new_figure(1, 3, width=5.2, height=4.2)
        plot_gradient_flow({NAMES[v]: [statistics.fmean(c) for c in zip(*rms[v])] for v in VARIANTS}, ax=axes[0, 0],
                           styles={NAMES[v]: {"color": colors[v]} for v in VARIANTS},
                           title=("初始化时每层输出的均方根", "Residual-stream RMS at init"),
                           ylabel=("均方根", "RMS"), xlabel=("块（0 = 最靠近输入）", "block (0 = nearest the input)"))
        plot_gradient_flow({NAMES[v]: [statistics.fmean(c) for c in zip(*grads[v])] for v in VARIANTS}, ax=axes[0, 1],
                           styles={NAMES[v]: {"color": colors[v]} for v in VARIANTS},
                           title=("初始化时每个块的梯度范数", "Per-block gradient norm at init"),
                           xlabel=("块（0 = 最靠近输入）", "block (0 = nearest the input)"))
        curves, diverged = {}, {}
        for v in VARIANTS:
            rs = runs[v]
            steps, mean, std = mean_std_curve(rs)
            curves[NAMES[v]] = (steps, mean, std) if len(rs) > 1 else (steps, mean)
            divs = [r["diverged_at"] for r in rs if r["diverged_at"] is not None]
            if divs:
                diverged[NAMES[v]] = min(divs)
        plot_loss_curves(curves, ax=axes[0, 2], diverged=diverged,
                         styles={NAMES[v]: {"color": colors[v]} for v in VARIANTS},
                         references={("只按字符频率猜", "unigram baseline"): unigram},
                         title=(f"验证集 loss（{len(seeds)} 个种子）", f"Validation loss ({len(seeds)} seed(s))"),
                         ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"))
        self.save_figure(fig, "init_and_loss")


if __name__ == "__main__":
    sys.exit(BlockOrder.main())
