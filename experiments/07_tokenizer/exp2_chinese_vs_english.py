"""实验 2：同一个算法，英文训练 vs 中文训练——为什么 minimind 要训练自己的分词器。

用你的 train_bpe 在三份语料上各训练一个同样大小的词表：英文（TinyShakespeare）、中文（本仓库自带的中文讲义，
exercises/*/*.md——一份随代码发布的真实中文语料）、两者混合。再在英文和中文的验证部分（各自最后 10%）上量：
每个 token 几个字符、每个汉字要几个 token（UTF-8 里一个常用汉字是 3 个字节）。
"""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # 让脚本从任何目录都能 import kata
import kata.experiment  # noqa: E402,F401  最先导入：装好 Ctrl-C 的处理
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bpe_tools import BPEExperiment, HANZI, chinese_docs, cpu_seconds, load_bpe, sha256  # noqa: E402
from kata.plots import label, new_figure  # noqa: E402

EXAMPLE = "分词器把文字切成 token，模型只认识 id。"


class ChineseVsEnglish(BPEExperiment):
    name = "exp2_chinese_vs_english"
    module = "07_tokenizer"
    title = "实验 2：英文训练的分词器 vs 中文训练的分词器——字符/token 与每个汉字的 token 数"
    description = (
        "用你的 train_bpe 分别在英文、中文、中英混合语料上训练同样大小的词表，\n"
        "量它们在英文和中文验证文本上的压缩率，看英文分词器怎样把汉字拆成字节。对应 teaching.md §2.1 与 §4.3。"
    )
    requires = ("train_bpe", "BPETokenizer")
    can_use_synthetic = False
    synthetic_reason = "英文一侧要用真实的英文文本；合成语料的词汇太少，英文分词器的压缩率会被夸大"

    def run(self) -> dict:
        train_bpe, Tok = load_bpe(self)
        en = self.load_corpus().text
        zh, files = chinese_docs()
        print(f"中文语料：{len(files)} 个文档（exercises/*/*.md），{len(zh):,} 个字符，"
              f"其中汉字 {sum(len(m) for m in HANZI.findall(zh)):,} 个")
        if self.smoke:
            en, zh = en[:20_000], zh[:20_000]
        en_cut, zh_cut = int(len(en) * 0.9), int(len(zh) * 0.9)
        train = {"英文": en[:en_cut], "中文": zh[:zh_cut], "混合": en[:en_cut] + "\n" + zh[:zh_cut]}
        val = {"英文": en[en_cut:], "中文": zh[zh_cut:]}
        hanzi_runs = HANZI.findall(val["中文"])
        n_hanzi = sum(len(r) for r in hanzi_runs)
        sizes = self.by_mode(smoke=(300,), quick=(1024,), full=(1024, 6400))
        self.config(vocab_sizes=sizes, chinese_files=files, chinese_sha256=sha256(zh), n_hanzi_val=n_hanzi,
                    split="每份语料前 90% 训练、后 10% 验证")
        self.dataset = {**(self.dataset or {}), "chinese_docs": {"files": len(files), "n_chars": len(zh), "sha256": sha256(zh)}}

        results, rows, examples = {}, [], []
        for v in sizes:
            for name, text in train.items():
                (vocab, merges), secs = cpu_seconds(train_bpe, text, v)
                tok = Tok(vocab, merges)
                r = {"train_cpu_s": secs, "merges": len(merges)}
                for vname, vtext in val.items():
                    ids = tok.encode(vtext)
                    r[f"chars_per_token_{vname}"] = len(vtext) / len(ids)
                r["tokens_per_hanzi"] = sum(len(tok.encode(run)) for run in hanzi_runs) / max(n_hanzi, 1)
                r["hanzi_merges"] = sum(1 for x, y in merges if HANZI.fullmatch((x + y).decode("utf-8", "replace")))
                results[f"{name}@{v}"] = r
                rows.append([f"{name}训练", v, f"{r['chars_per_token_英文']:.2f}", f"{r['chars_per_token_中文']:.2f}",
                             f"{r['tokens_per_hanzi']:.2f}", r["hanzi_merges"]])
                pieces = [tok.decode([i]) for i in tok.encode(EXAMPLE)]
                examples.append(f"  {name}训练（{v}）：{len(pieces)} 个 token │ " + " │ ".join(repr(p)[1:-1] for p in pieces))
        self.print_table(["分词器", "词表", "英文 字符/token", "中文 字符/token", "每个汉字的 token 数", "整汉字 token 数"], rows,
                         title=f"验证集：英文 {len(val['英文']):,} 字符，中文 {len(val['中文']):,} 字符（其中汉字 {n_hanzi:,} 个）")
        print(f"\n同一句话“{EXAMPLE}”的切法（� 是半个汉字的字节，单独解码时显示成 U+FFFD）：")
        for line in examples:
            print(line)
        self._plot(results, sizes)
        self._conclude(results, sizes)
        return {"results": results, "examples": examples}

    def _plot(self, results, sizes):
        fig, axes = new_figure(1, 2, width=6.0, height=3.8)
        axes = list(getattr(axes, "flat", axes))
        names = [("英文", "EN-trained"), ("中文", "ZH-trained"), ("混合", "mixed")]
        v = sizes[-1]
        xs = range(len(names))
        w = 0.38
        axes[0].bar([x - w / 2 for x in xs], [results[f"{n}@{v}"]["chars_per_token_英文"] for n, _ in names], w,
                    label=label(("英文验证集", "EN val")))
        axes[0].bar([x + w / 2 for x in xs], [results[f"{n}@{v}"]["chars_per_token_中文"] for n, _ in names], w,
                    label=label(("中文验证集", "ZH val")))
        axes[0].set_ylabel(label(("字符 / token", "chars per token")))
        axes[0].legend()
        axes[1].bar(list(xs), [results[f"{n}@{v}"]["tokens_per_hanzi"] for n, _ in names], 0.6, color="tab:red")
        axes[1].axhline(3.0, ls="--", color="gray")
        axes[1].set_ylabel(label(("每个汉字的 token 数（虚线 = 3 个字节）", "tokens per hanzi (dashed = 3 bytes)")))
        for ax in axes:
            ax.set_xticks(list(xs))
            ax.set_xticklabels([label(n) for n in names])
            ax.set_title(label((f"词表 {v}", f"vocab {v}")))
            ax.grid(alpha=0.3, axis="y")
        self.save_figure(fig, "compression")

    def _conclude(self, results, sizes):
        parts = []
        for v in sizes:
            en, zh, mix = results[f"英文@{v}"], results[f"中文@{v}"], results[f"混合@{v}"]
            ratio = zh["chars_per_token_中文"] / en["chars_per_token_中文"]
            parts.append(
                f"词表 {v}：英文训练的分词器在中文上每个汉字要 {en['tokens_per_hanzi']:.2f} 个 token"
                + ("（几乎就是 3 个 UTF-8 字节：它没学到任何汉字的合并）" if en["tokens_per_hanzi"] > 2.8 else "")
                + f"，中文训练的只要 {zh['tokens_per_hanzi']:.2f} 个；同一段中文，中文分词器的 token 数是英文分词器的 "
                f"{1 / ratio:.0%}。反过来在英文上，英文分词器 {en['chars_per_token_英文']:.2f} 字符/token，"
                f"中文分词器 {zh['chars_per_token_英文']:.2f}。混合训练的两边都在中间（英文 {mix['chars_per_token_英文']:.2f}、"
                f"中文 {mix['chars_per_token_中文']:.2f}）：词表是有限的，分给哪种语言的合并多，哪种语言就压得短。")
        en, zh = results[f"英文@{sizes[-1]}"], results[f"中文@{sizes[-1]}"]
        if en["tokens_per_hanzi"] > zh["tokens_per_hanzi"]:
            parts.append("这就是 minimind 在中文语料上训练自己的 6400 词表的原因：同样长的上下文窗口，装下的中文多得多。")
        else:
            parts.append("这次英文分词器切中文并不比中文分词器差——与预期不符，检查你的 train_bpe 或中文语料。")
        self.conclude("".join(parts))


if __name__ == "__main__":
    sys.exit(ChineseVsEnglish.main())
