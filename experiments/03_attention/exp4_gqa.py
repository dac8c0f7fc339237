"""实验 4：MHA vs GQA vs MQA——参数、KV cache 每个 token 占多少字节、验证 loss、带 cache 的解码速度。

A. 8 个 query 头，KV 头 8（MHA）/ 2（GQA，MiniMind2 的比例）/ 1（MQA），在 TinyShakespeare 上训练，比较参数量与验证 loss。
B. 把训练好的权重装进**你的 Attention**（名字与形状和 tinylm 的注意力层一样），搭成一个带 KV cache 的解码器：
   先检查它一次性前向的 logits 与 tinylm 一致、先 prefill 再逐 token 解码的 logits 与一次性前向一致；
   再测 KV cache 每个 token 的字节数（公式算的 vs 从 present 张量量出来的）和带 cache 的解码速度（中位数）。
C. MiniMind2 尺寸（dim 512、8 个 query 头、head_dim 64）的单层解码一步：上下文很长时，KV 头数对耗时的影响。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：它装好 Ctrl-C 的处理，import torch 途中按 Ctrl-C 也只打印“已中断”
sys.path.insert(0, str(Path(__file__).resolve().parent))

import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

from _attention_tools import default_one_thread, rope_tables  # noqa: E402
from kata.arms import Arm, run_arms  # noqa: E402
from kata.experiment import (ComponentNotImplemented, Experiment, check_component, compare_means, mean_std_curve,  # noqa: E402
                             describe_gap, fmt_mean_std, not_implemented_sentence, summarize)
from kata.plots import label, new_figure, plot_loss_curves  # noqa: E402

AINSLIE = ("Ainslie et al. 2023（GQA）Table 1，T5-XXL：MHA 每个样本推理 1.51 s、平均分 47.2；MQA 0.24 s、46.6；"
           "GQA-8 0.28 s、47.1")
# 公开配置算出来的数（不是测量）：2（k 和 v）× 层数 × KV 头数 × head_dim × 2 字节（bf16）
MINIMIND = {"MiniMind2-small（8 层，8 个 query 头 / 2 个 KV 头，head_dim 64）": (8, 2, 64, 8),
            "minimind-3（8 层，8 个 query 头 / 4 个 KV 头，head_dim 96）": (8, 4, 96, 8)}


def kv_bytes_per_token(n_layers: int, kv_heads: int, head_dim: int, bytes_per_el: int) -> int:
    return 2 * n_layers * kv_heads * head_dim * bytes_per_el


def check_attention(impl: str):
    """用一个很小的输入试跑 --impl 的 Attention；还没实现（或它用到的 RoPE / RMSNorm 还没实现）时给一句话。"""
    from kata.impl import component

    Attention = component("Attention", impl)
    cos, sin = rope_tables(3, 4)
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            out, present = Attention(8, 2, n_kv_heads=1)(torch.randn(1, 3, 8), (cos, sin), use_cache=True)
        if tuple(out.shape) != (1, 3, 8) or present is None:
            raise ValueError("输出形状或 present 不对")
    except NotImplementedError as exc:
        msg = str(exc)
        if "03_attention" not in msg and "还没实现" in msg:  # 是 Attention 用到的 RMSNorm / RoPE 还没实现
            where = msg.split("·")[0].replace("还没实现：", "").strip()
            who = "你的 Attention" if impl == "exercises" else f"--impl {impl} 里的 Attention"
            sentence = (f"{who} 用到的组件还没实现（{where} 仍在抛出 NotImplementedError）：先完成它，"
                        "或者加上 --impl solutions 先用参考实现运行这个实验。")
        else:
            sentence = not_implemented_sentence("Attention", impl)
        raise ComponentNotImplemented("Attention", impl, sentence) from exc
    except Exception as exc:
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise ComponentNotImplemented("Attention", impl, not_implemented_sentence("Attention", impl, detail)) from exc
    return Attention


class CachedLM(nn.Module):
    """tinylm 的词嵌入、RMSNorm、FFN、lm_head 原样复用，只把每层的注意力换成你的 Attention（带 KV cache）。"""

    def __init__(self, tiny, Attention):
        super().__init__()
        cfg = tiny.cfg
        self.tiny = tiny
        self.attn = nn.ModuleList()
        for block in tiny.blocks:
            a = Attention(cfg.dim, cfg.n_heads, n_kv_heads=cfg.kv_heads)
            a.load_state_dict(block.self_attn.state_dict())  # q_proj k_proj v_proj o_proj：名字和形状都一样
            self.attn.append(a)
        self.eval()

    @torch.no_grad()
    def forward(self, ids, past=None):
        tiny = self.tiny
        start = 0 if past is None else past[0][0].size(1)
        end = start + ids.size(1)
        _, (cos, sin), _ = tiny._positions(end, ids.device)  # tinylm 的 RoPE 表（按需加长）
        cos, sin = cos[start:end], sin[start:end]
        x = tiny.embed_tokens(ids)
        presents = []
        for i, block in enumerate(tiny.blocks):
            h, present = self.attn[i](block.input_layernorm(x), (cos, sin),
                                      past_key_value=None if past is None else past[i], use_cache=True)
            x = x + h
            x = x + block.mlp(block.post_attention_layernorm(x))
            presents.append(present)
        return tiny.lm_head(tiny.norm(x)), presents


def cache_checks(tiny, cached, ids) -> dict:
    """一次性前向 vs tinylm；prefill 一半 + 逐 token 解码 vs 一次性前向。返回最大绝对误差。"""
    tiny.eval()
    with torch.no_grad():
        ref = tiny(ids)[0]
    full, _ = cached(ids)
    half = ids.size(1) // 2
    logits, past = cached(ids[:, :half])
    steps = [logits]
    for t in range(half, ids.size(1)):
        logits, past = cached(ids[:, t:t + 1], past)
        steps.append(logits)
    decoded = torch.cat(steps, dim=1)
    return {"full_vs_tinylm": float((full - ref).abs().max()), "decode_vs_full": float((decoded - full).abs().max())}


def measure_cache_bytes(cached, prompt, n_new: int) -> dict:
    logits, past = cached(prompt)
    tok = logits[:, -1:].argmax(-1)
    for _ in range(n_new):
        logits, past = cached(tok, past)
        tok = logits[:, -1:].argmax(-1)
    total_tokens = prompt.size(1) + n_new
    nbytes = sum(t.numel() * t.element_size() for layer in past for t in layer)
    return {"tokens": total_tokens, "bytes": nbytes, "bytes_per_token": nbytes / total_tokens / prompt.size(0),
            "shape_k": list(past[0][0].shape)}


def decode_speed(cached, prompt, n_new: int, repeats: int, use_cache: bool = True) -> dict:
    """贪心解码 n_new 个 token 的速度（tokens/s），repeats 次取中位数。use_cache=False 时每步重算整个前缀。"""
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        if use_cache:
            logits, past = cached(prompt)
            tok = logits[:, -1:].argmax(-1)
            for _ in range(n_new):
                logits, past = cached(tok, past)
                tok = logits[:, -1:].argmax(-1)
        else:
            seq = prompt
            for _ in range(n_new):
                logits, _ = cached(seq)
                seq = torch.cat([seq, logits[:, -1:].argmax(-1)], dim=1)
        rates.append(n_new * prompt.size(0) / (time.perf_counter() - t0))
    return {"median_tokens_per_s": statistics.median(rates), "samples": rates}


@torch.no_grad()
def big_decode_step(Attention, kv_heads: int, context: int, repeats: int, dim: int = 512, n_heads: int = 8) -> dict:
    """MiniMind2 尺寸的一层注意力，cache 里已有 context 个位置，再解码 1 个 token 的耗时（毫秒，中位数）。"""
    hd = dim // n_heads
    attn = Attention(dim, n_heads, n_kv_heads=kv_heads).eval()
    past = (torch.randn(1, context, kv_heads, hd), torch.randn(1, context, kv_heads, hd))
    cos, sin = rope_tables(context + 1, hd)
    cos, sin = cos[context:], sin[context:]
    x = torch.randn(1, 1, dim)
    for _ in range(2):
        attn(x, (cos, sin), past_key_value=past, use_cache=True)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        attn(x, (cos, sin), past_key_value=past, use_cache=True)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "samples_ms": times,
            "cache_bytes_fp32": 2 * context * kv_heads * hd * 4}


def fmt_bytes(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def finals(runs):
    return [r["final_val_loss"] if r["diverged_at"] is None else float("nan") for r in runs]


def write_conclusion(variants, results, n_params, bytes_info, checks, speed, nocache, big, n_seeds, steps, cfg_info):
    parts, verdict = [], {}
    mha = variants[0]["key"]
    L, hd = cfg_info["n_layers"], cfg_info["head_dim"]
    comp = {v["key"]: kv_bytes_per_token(L, v["kv"], hd, 4) for v in variants}
    parts.append(f"A. 参数量：" + "，".join(f"{v['name']} {n_params[v['key']]:,}" for v in variants)
                 + f"——KV 头少了，k_proj、v_proj 变窄（每层从 {2 * cfg_info['dim'] * cfg_info['dim']:,} 个参数降到 "
                 + "、".join(f"{2 * cfg_info['dim'] * v['kv'] * hd:,}" for v in variants[1:]) + "）。")
    multi = n_seeds > 1
    for v in variants[1:]:
        parts.append("  " + describe_gap(finals(results[mha]), finals(results[v["key"]]), variants[0]["name"], v["name"],
                                         spread_note=multi))
        verdict[f"val_loss_{v['key']}_vs_mha"] = compare_means(finals(results[mha]), finals(results[v["key"]]))
    means = {v["key"]: summarize(finals(results[v["key"]]))["mean"] for v in variants}
    if all(math.isfinite(m) for m in means.values()):
        order = sorted(variants, key=lambda v: means[v["key"]])
        spread = max(means.values()) - min(means.values())
        verdict["val_loss_order"] = [v["key"] for v in order]
        if spread < 0.01:
            parts.append(f"三者的验证 loss 相差不到 0.01：在这个小模型上，少用 KV 头几乎不损失质量。作为对照，{AINSLIE}。")
        elif [v["key"] for v in order] == [v["key"] for v in variants]:
            parts.append(f"验证 loss 的顺序是 MHA < GQA < MQA（KV 头越少越差），与 {AINSLIE} 的方向一致：GQA 介于两者之间。")
        else:
            parts.append("验证 loss 从低到高：" + " < ".join(v["name"] for v in order)
                         + f"，与“KV 头越少越差”（{AINSLIE}）的预期顺序不同；差距最大 {spread:.3f}，"
                         + ("小于种子间的典型波动，属于噪声。" if multi else "只有 1 个种子，很可能只是噪声。"))

    ok = all(c["full_vs_tinylm"] < 1e-4 and c["decode_vs_full"] < 1e-4 for c in checks.values())
    verdict["cache_checks_ok"] = ok
    worst = max(max(c.values()) for c in checks.values())
    parts.append(f"B. 把训练好的权重装进你的 Attention：一次性前向与 tinylm、以及“先 prefill 一半再逐 token 解码”与一次性前向，"
                 f"logits 的最大差 {worst:.1e}" + ("——你的 KV cache 是对的。" if ok else "——太大了！KV cache 的实现有问题，回去跑 pytest exercises/03_attention。"))
    rows = []
    for v in variants:
        b = bytes_info[v["key"]]
        rows.append(f"{v['name']} 公式 {comp[v['key']]} 字节 / 实测 {b['bytes_per_token']:.0f} 字节")
    match = all(abs(bytes_info[v["key"]]["bytes_per_token"] - comp[v["key"]]) < 1 for v in variants)
    verdict["kv_bytes_match_formula"] = match
    parts.append("KV cache 每个 token（float32）：" + "；".join(rows) + "。" +
                 ("实测与公式 2 × 层数 × KV 头数 × head_dim × 4 字节完全一致：cache 里存的是 repeat_kv 之前的 KV 头。"
                  if match else "实测与公式对不上：present 里存的可能是 repeat_kv 之后的张量（n_heads 个头）。"))
    ratio = {v["key"]: comp[mha] / comp[v["key"]] for v in variants}
    parts.append("按公式，" + "、".join(f"{v['name']} 的 cache 是 MHA 的 1/{ratio[v['key']]:.0f}" for v in variants[1:]) + "。"
                 + "真实模型里这个账更重要（bf16，公开配置算出）：" + "；".join(
                     f"{name} 每个 token {kv_bytes_per_token(l, kv, d, 2) / 1024:.0f} KiB（若用 MHA {kv_bytes_per_token(l, h, d, 2) / 1024:.0f} KiB）"
                     for name, (l, kv, d, h) in MINIMIND.items()) + "。")
    sp = {k: s["median_tokens_per_s"] for k, s in speed.items()}
    parts.append("带 cache 的解码速度（中位数）：" + "，".join(f"{v['name']} {sp[v['key']]:,.0f} tokens/s" for v in variants)
                 + f"；不带 cache（每步重算整个前缀）的 MHA：{nocache['median_tokens_per_s']:,.0f} tokens/s"
                 + (f"，cache 快了 {sp[mha] / nocache['median_tokens_per_s']:.1f} 倍。" if sp[mha] > nocache["median_tokens_per_s"]
                    else "，这次 cache 并没有更快（序列太短、模型太小，Python 调用开销占了大头）。"))
    spread = max(sp.values()) / min(sp.values())
    verdict["decode_speed_spread"] = spread
    if spread < 1.15:
        parts.append(f"三者的解码速度相差不到 15%：这个模型太小（dim {cfg_info['dim']}），每步的时间几乎全花在 Python 和小矩阵乘法的调用开销上，"
                     f"读 KV cache 的那点内存流量无足轻重。{AINSLIE}——那是大模型在加速器上、内存带宽成为瓶颈时的数字。")
    else:
        fastest = max(sp, key=sp.get)
        parts.append(f"解码速度最快的是 {next(v['name'] for v in variants if v['key'] == fastest)}，最快/最慢 = {spread:.2f}。"
                     f"作为对照，{AINSLIE}。")
    ctx, short = big["context"], big["short_context"]
    runs = big["runs"]
    kvs = sorted(runs, key=lambda k: -int(k))
    grow = {k: runs[k]["median_ms"] - runs[k]["short_median_ms"] for k in kvs}
    verdict["big_step_ms"] = {k: runs[k]["median_ms"] for k in kvs}
    verdict["big_step_growth_ms"] = grow
    parts.append(f"C. MiniMind2 尺寸的一层（dim 512，8 个 query 头）解码一步，上下文 {short} → {ctx}：" + "；".join(
        f"KV 头 {k}：{runs[k]['short_median_ms']:.2f} → {runs[k]['median_ms']:.2f} ms（cache {fmt_bytes(runs[k]['cache_bytes_fp32'])}）"
        for k in kvs) + "。上下文变长多出来的时间，就是读（和复制）KV cache 的代价。")
    copies = big["repeat_kv_copies"]
    if grow[kvs[0]] <= 0:
        parts.append("这次上下文变长几乎没有增加耗时（机器太忙或上下文不够长），看不出 KV 头数的影响；试试更大的 --context。")
    else:
        rel = {k: grow[k] / grow[kvs[0]] for k in kvs[1:]}
        verdict["big_step_growth_relative_to_mha"] = rel
        parts.append("相对 MHA，随上下文增长的那部分耗时：" + "，".join(f"KV 头 {k} 是 {rel[k]:.2f} 倍" for k in kvs[1:]) + "。")
        for k in kvs[1:]:
            if copies[k] and rel[k] > 0.7:
                parts.append(f"KV 头 {k}：cache 小了 {int(kvs[0]) // int(k)} 倍，这一步却没快多少——你的 repeat_kv 在这里真正复制了内存"
                             "（输出不和输入共享存储），每一步都把 cache 复制回 8 个头，省下的读取又花在了复制上。")
            elif not copies[k] and rel[k] < 0.7:
                parts.append(f"KV 头 {k}：repeat_kv 的 expand + reshape 得到的是一个不拷贝的视图（复制出来的那一维步长为 0），"
                             "没有多余的复制，省下的内存流量直接变成了速度。")
            elif rel[k] < 0.7:
                parts.append(f"KV 头 {k}：虽然 repeat_kv 复制了内存，随上下文增长的耗时仍然降到了 MHA 的 {rel[k]:.2f} 倍。")
        parts.append("要让所有 GQA 配置都把省下的带宽变成速度，需要能直接读共享 KV 头、不做复制的内核"
                     "（例如 F.scaled_dot_product_attention 的 enable_gqa=True、FlashAttention）；省显存这一点则无论如何都成立。")
    if not multi:
        parts.append("这次只跑了 1 个种子，A 部分的 loss 差距是否超过随机波动无法判断；完整模式（不加 --quick）会跑 3 个种子。")
    return "\n".join(parts), verdict


class GQAExperiment(Experiment):
    name = "exp4_gqa"
    module = "03_attention"
    can_use_synthetic = True  # 拿不到 TinyShakespeare 时可以改用合成语料
    synthetic_reason = "主要结论（KV cache 的字节数、解码速度、cache 与一次性前向一致）与语料无关；验证 loss 只是三种注意力之间的相对比较"
    title = "实验 4：MHA vs GQA vs MQA（参数、KV cache 字节数、验证 loss、带 cache 的解码速度）"
    description = (
        "8 个 query 头、KV 头 8 / 2 / 1 的小模型在 TinyShakespeare 上训练；再把权重装进你的 Attention，\n"
        "用 KV cache 解码，量 cache 的字节数和解码速度；最后在 MiniMind2 尺寸上测长上下文时解码一步的耗时。对应 teaching.md §3.3。"
    )
    requires = ("scaled_dot_product_attention", "repeat_kv")

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="训练步数（默认：快速 200，完整 300）")
        parser.add_argument("--layers", type=int, default=2, help="层数（默认 2）")
        parser.add_argument("--lr", type=float, default=3e-3, help="学习率（默认 3e-3）")
        parser.add_argument("--context", type=int, default=None, help="C 部分的上下文长度（默认：快速 1024，完整 2048）")

    def execute(self):
        # 在打印标题之前先试跑 Attention：还没实现时只输出那一句话（顺序：先注意力函数、repeat_kv，再 Attention）
        if self.args is None:
            self.args = self.build_parser().parse_args([])
        for name in self.requires:
            check_component(name, self.impl)
        self._attention_cls = check_attention(self.impl)
        return super().execute()

    def run(self):
        threads = default_one_thread(self)
        Attention = getattr(self, "_attention_cls", None) or check_attention(self.impl)
        self.record_provenance({"Attention": self._provenance_of("Attention", Attention)})
        corpus = self.load_corpus()
        seeds = self.seeds(full=3, quick=1, smoke=1)
        steps = self.args.steps or self.by_mode(smoke=3, quick=200, full=300)
        batch, seq_len = self.by_mode(smoke=(4, 32), quick=(16, 64), full=(16, 64))
        dim, layers, heads = self.by_mode(smoke=(32, 2, 8), quick=(64, self.args.layers, 8), full=(64, self.args.layers, 8))
        kv_list = (heads, 2, 1)
        variants = [{"key": f"kv{kv}", "kv": kv,
                     "name": {heads: "MHA", 1: "MQA"}.get(kv, f"GQA（{kv} 个 KV 头）"),
                     "name_en": {heads: "MHA", 1: "MQA"}.get(kv, f"GQA ({kv} KV heads)")} for kv in kv_list]
        n_new = self.by_mode(smoke=8, quick=64, full=128)
        prompt_len = self.by_mode(smoke=8, quick=16, full=16)
        repeats = self.by_mode(smoke=1, quick=3, full=5)
        context = self.args.context or self.by_mode(smoke=64, quick=1024, full=2048)
        self.config(steps=steps, lr=self.args.lr, dim=dim, n_layers=layers, n_heads=heads, kv_heads=list(kv_list),
                    batch_size=batch, seq_len=seq_len, decode={"prompt": prompt_len, "new_tokens": n_new, "batch": 1,
                                                               "repeats": repeats, "greedy": True},
                    big_step={"dim": 512, "n_heads": 8, "head_dim": 64, "context": context}, threads=threads)

        arms = [Arm(v["key"], v["name"], v["name_en"], {"n_kv_heads": v["kv"]}) for v in variants]
        models = {}

        def keep_first_seed(arm, seed, model, run):
            if seed == seeds[0]:
                models[arm.key] = model

        run_arms(self, corpus, arms, seeds, steps=steps, batch=batch, seq_len=seq_len, lr=self.args.lr,
                 base_cfg={"dim": dim, "n_layers": layers, "n_heads": heads},
                 require=("scaled_dot_product_attention", "repeat_kv"),
                 eval_iters=self.by_mode(smoke=2, quick=8, full=10), after_train=keep_first_seed)
        results = {a.key: a.runs for a in arms}
        n_params = {a.key: a.n_params for a in arms}

        # B：装进你的 Attention，用 KV cache 解码（在 CPU 上测，与训练设备无关）
        gen = torch.Generator().manual_seed(7)
        ids, _ = corpus.get_batch("val", 2, seq_len, generator=gen)
        prompt = ids[:1, :prompt_len]
        checks, bytes_info = {}, {}
        cfg_info = {"n_layers": layers, "head_dim": dim // heads, "dim": dim}
        for v in variants:
            tiny = models[v["key"]].to("cpu")
            cached = CachedLM(tiny, Attention)
            checks[v["key"]] = cache_checks(tiny, cached, ids)
            bytes_info[v["key"]] = measure_cache_bytes(cached, prompt, n_new)
        # 交替测速：每一轮依次测每个变体，减少机器负载变化带来的偏差
        samples = {v["key"]: [] for v in variants}
        cached_models = {v["key"]: CachedLM(models[v["key"]], Attention) for v in variants}
        for _ in range(repeats):
            for v in variants:
                samples[v["key"]] += decode_speed(cached_models[v["key"]], prompt, n_new, 1)["samples"]
        speed = {k: {"median_tokens_per_s": statistics.median(s), "samples": s} for k, s in samples.items()}
        nocache = decode_speed(cached_models[variants[0]["key"]], prompt, n_new, repeats, use_cache=False)

        # C：MiniMind2 尺寸的一层，短 / 长上下文各测一次（交替测，取中位数）
        short = 16
        big_runs = {str(kv): {"samples_ms": [], "short_samples_ms": []} for kv in (8, 2, 1)}
        for _ in range(self.by_mode(smoke=1, quick=3, full=5)):
            for kv in (8, 2, 1):
                n_rep = self.by_mode(smoke=2, quick=10, full=20)
                long_r = big_decode_step(Attention, kv, context, repeats=n_rep)
                short_r = big_decode_step(Attention, kv, short, repeats=n_rep)
                big_runs[str(kv)]["samples_ms"] += long_r["samples_ms"]
                big_runs[str(kv)]["short_samples_ms"] += short_r["samples_ms"]
                big_runs[str(kv)]["cache_bytes_fp32"] = long_r["cache_bytes_fp32"]
        for r in big_runs.values():
            r["median_ms"] = statistics.median(r["samples_ms"])
            r["short_median_ms"] = statistics.median(r["short_samples_ms"])
        rk = self.component("repeat_kv")
        copies = {}
        for kv in (8, 2, 1):  # 你的 repeat_kv 是真的复制了内存，还是返回了一个视图？
            x = torch.randn(1, 4, kv, 64)
            y = rk(x, 8 // kv)
            copies[str(kv)] = y.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        big = {"context": context, "short_context": short, "runs": big_runs, "repeat_kv_copies": copies}

        rows = []
        for v in variants:
            k = v["key"]
            rows.append([v["name"], v["kv"], f"{n_params[k]:,}", fmt_mean_std(finals(results[k])),
                         kv_bytes_per_token(layers, v["kv"], dim // heads, 4), f"{bytes_info[k]['bytes_per_token']:.0f}",
                         f"{speed[k]['median_tokens_per_s']:,.0f}", f"{max(checks[k].values()):.1e}"])
        self.print_table(["变体", "KV 头", "参数量", f"验证 loss（{len(seeds)} 个种子）", "KV 字节/token（公式）",
                          "KV 字节/token（实测）", "带 cache 解码 tokens/s", "cache vs 一次性前向 最大差"], rows,
                         title=f"dim={dim}，{layers} 层，{heads} 个 query 头，float32；解码：prompt {prompt_len}、生成 {n_new} 个、batch 1")
        self.print_table(["KV 头", f"上下文 {short}（ms）", f"上下文 {context}（ms）", "多出来的（ms）", f"cache（上下文 {context}，float32）"],
                         [[kv, f"{big_runs[str(kv)]['short_median_ms']:.2f}", f"{big_runs[str(kv)]['median_ms']:.2f}",
                           f"{big_runs[str(kv)]['median_ms'] - big_runs[str(kv)]['short_median_ms']:.2f}",
                           fmt_bytes(big_runs[str(kv)]['cache_bytes_fp32'])] for kv in (8, 2, 1)],
                         title=f"C. 你的 Attention，dim 512、8 个 query 头，cache 里已有若干位置时解码 1 个 token（中位数）")
        self._plot(variants, results, bytes_info, speed, big, layers, dim // heads, seeds)
        text, verdict = write_conclusion(variants, results, n_params, bytes_info, checks, speed, nocache, big,
                                         len(seeds), steps, cfg_info)
        self.conclude(text)
        return {"runs": results, "n_params": n_params, "cache_checks": checks, "kv_bytes": bytes_info,
                "kv_bytes_formula": {v["key"]: kv_bytes_per_token(layers, v["kv"], dim // heads, 4) for v in variants},
                "decode_speed": speed, "decode_speed_no_cache_mha": nocache, "big_decode_step": big, "verdict": verdict,
                "minimind_kv_bytes_per_token_bf16": {n: kv_bytes_per_token(l, kv, d, 2) for n, (l, kv, d, _) in MINIMIND.items()},
                "final_val_loss": {k: summarize(finals(r)) for k, r in results.items()}}

    def _plot(self, variants, results, bytes_info, speed, big, layers, hd, seeds):
        fig, axes = new_figure(1, 3, width=4.8, height=3.9)
        curves = {}
        for v in variants:
            rs = results[v["key"]]
            steps, mean, std = mean_std_curve(rs)
            curves[(v["name"], v["name_en"])] = (steps, mean, std) if len(rs) > 1 else (steps, mean)
        plot_loss_curves(curves, ax=axes[0, 0], title=("A. 验证 loss", "A. Validation loss"),
                         ylabel=("交叉熵（nats/字符）", "cross-entropy (nats/char)"))
        ax = axes[0, 1]
        names = [v["name_en"] for v in variants]
        xs = range(len(variants))
        ax.bar([x - 0.2 for x in xs], [kv_bytes_per_token(layers, v["kv"], hd, 4) for v in variants], width=0.4,
               label=label(("公式", "formula")))
        ax.bar([x + 0.2 for x in xs], [bytes_info[v["key"]]["bytes_per_token"] for v in variants], width=0.4,
               label=label(("实测", "measured")))
        ax.set_xticks(list(xs), names)
        ax.set_title(label(("B. KV cache 字节 / token", "B. KV-cache bytes per token")))
        ax.legend(fontsize="small")
        ax.grid(True, axis="y", alpha=0.3)
        ax = axes[0, 2]
        kvs = ["8", "2", "1"]
        ax.bar([x - 0.2 for x in range(3)], [big["runs"][k]["short_median_ms"] for k in kvs], width=0.4,
               label=f"context {big['short_context']}")
        ax.bar([x + 0.2 for x in range(3)], [big["runs"][k]["median_ms"] for k in kvs], width=0.4,
               label=f"context {big['context']}")
        ax.legend(fontsize="small")
        ax.set_xticks(range(3), [f"KV heads {k}" for k in kvs])
        ax.set_ylabel("ms")
        ax.set_title(label(("C. 解码一步（dim 512）", "C. One decode step (dim 512)")))
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        self.save_figure(fig, "gqa")


if __name__ == "__main__":
    sys.exit(GQAExperiment.main())
