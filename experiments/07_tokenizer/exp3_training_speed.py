"""实验 3：BPE 训练为什么要“增量计数”？——朴素重数 vs 你的 train_bpe vs HF tokenizers。

朴素写法每合并一次就把所有词的所有 pair 从头数一遍：一次合并的代价 ∝ 语料里不同词的总长度，
M 次合并就是 M 倍。增量写法只改含有被合并 pair 的那些词，再用堆取最大值：大部分合并只碰到很少几个词。
这里固定合并次数、让语料变大，画出三者的 CPU 时间；最后（如果来得及）用你的 train_bpe 在整个 TinyShakespeare 上
训练 minimind 的 6400 词表，与 HF tokenizers（minimind 训练分词器用的库，Rust 写的）比一比。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：装好 Ctrl-C 的处理
sys.path.insert(0, str(Path(__file__).resolve().parent))

import math  # noqa: E402

from _bpe_tools import BPEExperiment, SPECIALS, cpu_seconds, load_bpe, naive_train_bpe  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402


def _hf_train(text: str, vocab_size: int, specials=()):
    """HF tokenizers 按 minimind trainer/train_tokenizer.py 的设置训练（没装 tokenizers 时返回 None）。"""
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        return None
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def linear_fit(xs, ys) -> tuple[float, float]:
    """最小二乘直线 y ≈ a + b·x，返回 (a, b)。"""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0
    return my - b * mx, b


def slope(xs, ys) -> float:
    """log-log 最小二乘斜率：时间 ∝ 语料大小^slope。"""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-6)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    den = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / den if den else float("nan")


class TrainingSpeed(BPEExperiment):
    name = "exp3_training_speed"
    module = "07_tokenizer"
    title = "实验 3：BPE 训练速度——朴素重数 vs 你的 train_bpe vs HF tokenizers"
    description = (
        "固定合并次数，语料从几万字符增长到几十万字符，量三种训练方式的 CPU 时间（log-log 图），\n"
        "并检查你的 merges 与朴素写法逐条相同；最后在整个 TinyShakespeare 上训练 6400 词表。对应 teaching.md §3。"
    )
    requires = ("train_bpe", "BPETokenizer")
    can_use_synthetic = True
    synthetic_reason = "它比较的是算法的时间复杂度；合成语料的不同词更少，所有方法都会更快，但增长的趋势仍然可比"

    def add_arguments(self, parser):
        parser.add_argument("--merges", type=int, default=None, help="每次训练合并多少次（默认：快速 150，完整 300）")

    def run(self) -> dict:
        train_bpe, _ = load_bpe(self)
        text = self.load_corpus().text
        n_merges = self.args.merges or self.by_mode(smoke=10, quick=150, full=300)
        sizes = self.by_mode(smoke=(5_000, 10_000), quick=(25_000, 50_000, 100_000, 200_000),
                             full=(25_000, 50_000, 100_000, 200_000, 400_000))
        self.config(merges=n_merges, corpus_sizes=sizes)
        rows, timing = [], {"naive": [], "yours": [], "hf": []}
        same = True
        for n in sizes:
            part = text[:n]
            naive, t_naive = cpu_seconds(naive_train_bpe, part, 256 + n_merges)
            (_, mine), t_mine = cpu_seconds(train_bpe, part, 256 + n_merges)
            hf, t_hf = cpu_seconds(_hf_train, part, 256 + n_merges)
            same = same and list(mine) == naive
            timing["naive"].append(t_naive)
            timing["yours"].append(t_mine)
            timing["hf"].append(t_hf if hf is not None else None)
            rows.append([f"{n:,}", f"{t_naive:.2f}", f"{t_mine:.2f}", f"{t_hf:.2f}" if hf is not None else "（未安装）",
                         f"{t_naive / max(t_mine, 1e-6):.1f}×", "相同" if list(mine) == naive else "不同！"])
        self.print_table(["语料字符数", "朴素 CPU 秒", "你的 CPU 秒", "HF CPU 秒", "朴素/你的", "merges 与朴素写法"], rows,
                         title=f"每次训练 {n_merges} 次合并（CPU 时间：HF 是多线程的，算的是所有线程的总和）")
        fits = {k: slope(sizes, v) for k, v in timing.items() if all(t is not None for t in v)}

        # 固定语料、让合并次数增长：朴素写法的时间 ∝ 合并次数，增量写法几乎只剩一次性的准备工作
        base_n = sizes[-2] if len(sizes) > 1 else sizes[-1]
        merge_counts = self.by_mode(smoke=(5, 10), quick=(50, 100, 200, 400), full=(50, 100, 200, 400, 800))
        by_m = {"naive": [], "yours": []}
        rows = []
        for m in merge_counts:
            _, t_naive = cpu_seconds(naive_train_bpe, text[:base_n], 256 + m)
            _, t_mine = cpu_seconds(train_bpe, text[:base_n], 256 + m)
            by_m["naive"].append(t_naive)
            by_m["yours"].append(t_mine)
            rows.append([m, f"{t_naive:.2f}", f"{t_mine:.2f}", f"{t_naive / max(t_mine, 1e-6):.1f}×"])
        self.print_table(["合并次数", "朴素 CPU 秒", "你的 CPU 秒", "朴素/你的"], rows,
                         title=f"语料固定为前 {base_n:,} 个字符，改变合并次数")
        line = {k: linear_fit(merge_counts, v) for k, v in by_m.items()}  # 时间 ≈ 准备 + 每次合并 × M

        # 整个 TinyShakespeare 上的 6400 词表：先用上面的直线外推，太慢就不跑
        head = {}
        setup, per_merge = line["yours"]
        guess = (max(setup, 0.0) + per_merge * (6400 - 259)) * len(text) / base_n
        budget = self.by_mode(smoke=0, quick=40, full=120)
        if guess <= budget:
            (vocab, merges), t_full = cpu_seconds(train_bpe, text, 6400, special_tokens=SPECIALS)
            hf, t_hf_full = cpu_seconds(_hf_train, text, 6400, SPECIALS)
            head = {"yours_cpu_s": t_full, "hf_cpu_s": t_hf_full if hf is not None else None, "merges": len(merges)}
            self.note(f"整个 TinyShakespeare（{len(text):,} 字符）训练 6400 词表：你的 train_bpe {t_full:.2f} CPU 秒"
                      + (f"，HF tokenizers {t_hf_full:.2f} CPU 秒（比值 {t_full / max(t_hf_full, 1e-6):.1f}）。" if hf is not None else "。"))
        elif not self.smoke:
            self.note(f"按上面的直线外推，你的 train_bpe 在整个 TinyShakespeare 上训练 6400 词表要约 {guess:.0f} CPU 秒"
                      f"（超过本模式的 {budget} 秒预算），这次没有跑。读 teaching.md §3，改成增量计数之后再试。")
        self._plot(sizes, timing, n_merges, merge_counts, by_m, base_n)
        self._conclude(sizes, timing, fits, same, n_merges, merge_counts, by_m, line)
        return {"timing_cpu_s": timing, "corpus_sizes": sizes, "loglog_slopes": fits, "merges_match_naive": same,
                "by_merges": {"corpus_chars": base_n, "merges": merge_counts, "cpu_s": by_m,
                              "fit_setup_and_per_merge_s": line},
                "full_shakespeare_6400": head}

    def _plot(self, sizes, timing, n_merges, merge_counts, by_m, base_n):
        fig, axes = new_figure(1, 2, width=6.0, height=4.2)
        ax, ax2 = axes[0][0], axes[0][1]
        names = {"naive": ("朴素：每轮重数", "naive recount"), "yours": ("你的 train_bpe", "your train_bpe"),
                 "hf": ("HF tokenizers", "HF tokenizers")}
        for k, name in names.items():
            if all(t is not None for t in timing[k]):
                ax.plot(sizes, timing[k], "o-", label=label(name))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label(("语料字符数", "corpus characters")))
        ax.set_ylabel(label((f"{n_merges} 次合并的 CPU 秒", f"CPU seconds for {n_merges} merges")))
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        for k, name in (("naive", ("朴素：每轮重数", "naive recount")), ("yours", ("你的 train_bpe", "your train_bpe"))):
            ax2.plot(merge_counts, by_m[k], "o-", label=label(name))
        ax2.set_xlabel(label((f"合并次数（语料 {base_n:,} 字符）", f"merges (corpus {base_n:,} chars)")))
        ax2.set_ylabel(label(("CPU 秒", "CPU seconds")))
        ax2.grid(alpha=0.3)
        ax2.legend()
        self.save_figure(fig, "speed")

    def _conclude(self, sizes, timing, fits, same, n_merges, merge_counts, by_m, line):
        tn, tm = timing["naive"][-1], timing["yours"][-1]
        parts = [f"在 {sizes[-1]:,} 个字符上做 {n_merges} 次合并：朴素写法 {tn:.2f} CPU 秒，你的 train_bpe {tm:.2f} 秒"]
        if tm < tn / 3:
            parts.append(f"，快 {tn / max(tm, 1e-6):.0f} 倍——增量计数起作用了。")
        elif tm < tn:
            parts.append("，快一些但不多：你的写法可能仍在每一轮重数大部分 pair（teaching.md §3）。")
        else:
            parts.append("，并不比朴素写法快：看起来你用的就是每轮重数的写法（能通过测试，但大语料上会很慢，teaching.md §3）。")
        if "naive" in fits and "yours" in fits:
            parts.append(f"随语料增大，时间大约按 语料^{fits['naive']:.2f}（朴素）和 语料^{fits['yours']:.2f}（你的）增长。")
        (_, pn), (sy, py) = line["naive"], line["yours"]
        parts.append(f"固定语料、合并次数从 {merge_counts[0]} 加到 {merge_counts[-1]}：朴素写法每多一次合并多花 "
                     f"{pn * 1000:.1f} 毫秒，你的多花 {py * 1000:.2f} 毫秒"
                     + (f"（只有朴素的 {py / pn:.0%}）；你的时间主要花在一次性的预切分和初始计数上（约 {max(sy, 0):.2f} 秒）。"
                        if pn > 0 and py < pn / 3 else "，差不多——你的每次合并仍在做和朴素写法同样多的工作。"))
        if "hf" in fits:
            parts.append(f"HF tokenizers 在最大的语料上用 {timing['hf'][-1]:.2f} CPU 秒。")
        parts.append("你的 merges 与朴素写法逐条相同。" if same else
                     "注意：你的 merges 与朴素写法不同——先让 pytest exercises/07_tokenizer 通过。")
        self.conclude("".join(parts))


if __name__ == "__main__":
    sys.exit(TrainingSpeed.main())
