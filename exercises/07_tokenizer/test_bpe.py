"""模块 07 的测试：字节级 BPE（train_bpe、BPETokenizer）。

分层（每一层都能失败）：
1. 契约：vocab 的 id 布局（特殊 token → 256 个字节 → 合并结果）、词表大小恰好、类型、坏输入报中文错；
2. 训练的精确结果：手算的小语料（第一条合并、平局规则），以及与测试里**另写的朴素训练器**逐条对比 merges
   （hypothesis 抽小语料 + TinyShakespeare 的一段）——在 --solutions 模式下靠它保持诚实；
3. 编码：按 rank 合并（与朴素编码器对比，和一个 rank / 最左 / 最长匹配给出不同答案的手工例子）、
   特殊 token 整体保留、合并不跨词、词表越大编码越短；
4. 解码：任意 Unicode 往返（hypothesis：emoji、汉字、组合字符、控制字符、空串）、先拼字节再解码、非法字节 → U+FFFD；
5. save → load 完全一致；
6. HF tokenizers 作为独立的 encode 参照：用你的 vocab + merges 搭出 HF 分词器，逐 id 相同；
   from_hf_json 读 HF 在本地训练、写出的 tokenizer.json，encode 与 HF 相同；压缩率接近 HF 同词表大小时的。
失败信息会告诉你：期望什么、你给了什么、与哪个常见错误一致、该读 teaching.md 的哪一节。
"""
from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache

import pytest
from hypothesis import given, settings, strategies as st

from kata.impl import REPO_ROOT, resolve
from kata.testing import require

MODULE = "07_tokenizer"
BYTES = "teaching.md §2.1（字节：256 个基本 token，没有 UNK）"
PRETOK = "teaching.md §2.2（预切分：合并不跨词）"
TRAIN = "teaching.md §2.3（训练：数 pair、合并、平局规则）"
ENCODE = "teaching.md §2.4（编码：按 rank 合并）"
DECODE = "teaching.md §2.5（解码：先拼字节，最后再按 UTF-8 解码）"
SPECIAL = "teaching.md §2.6（特殊 token）"
SAVE = "teaching.md §2.7（保存、读取、读 HF 的 tokenizer.json）"
VERIFY = "teaching.md §5（如何验证）"

MINIMIND_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
HF_REASON = "这条测试用 HF tokenizers 作独立参照，但没有安装它：pip install tokenizers（或 pip install -e '.[dev]'）"


def _heavy() -> bool:
    """CI 配置档（--hypothesis-profile=ci）跑大语料；学习者的默认配置档用小语料，几秒钟出结果。"""
    return settings().max_examples >= 30


# ---------------------------------------------------------------------------------------------
# 语料
# ---------------------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _shakespeare() -> str:
    """TinyShakespeare（KATA_DATA_DIR / 缓存）；找不到时用 kata 的合成英文语料（测试不联网）。"""
    from kata.data import DataError, load_corpus, synthetic_text

    try:
        return load_corpus("shakespeare", download=False).text
    except DataError:
        return synthetic_text(300_000)


@lru_cache(maxsize=None)
def _chinese() -> str:
    """仓库自带的中文讲义（中英混排、代码、标点）：一份真实的中文语料。"""
    parts = []
    for p in sorted((REPO_ROOT / "exercises").glob("0[1-4]_*/teaching.md")):
        parts.append(p.read_text(encoding="utf-8"))
    return "\n".join(parts)


MIXED = (
    "The quick brown fox jumps over the lazy dog. It's 2024; don't panic!\n"
    "我爱北京天安门，天安门上太阳升。分词器把文字切成 token。\n"
    "Emoji 🙂🚀 and café naïve coöperate\u0301.\tTabs\tand  double  spaces.\n\n"
)


# ---------------------------------------------------------------------------------------------
# 独立参考：测试自己写的预切分、朴素训练器、朴素编码器（故意和参考实现写得不一样）
# ---------------------------------------------------------------------------------------------

# 只对 ASCII 文本成立的 GPT-2 预切分（字母 = A-Za-z，数字 = 0-9）：用在纯 ASCII 的语料上
_ASCII_WORDS = re.compile(r"'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")


def _ascii_words(text: str) -> list[str]:
    assert all(ord(c) < 128 and c not in "\x1c\x1d\x1e\x1f" for c in text), "这个预切分只用于 ASCII 语料"
    return _ASCII_WORDS.findall(text)


def _cut_specials(text: str, specials) -> list[str]:
    if not specials:
        return [text]
    alt = "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True))
    return re.split(alt, text)


@lru_cache(maxsize=64)
def _naive_train(text: str, vocab_size: int, specials=(), words_of=_ascii_words):
    """每一轮把所有 pair 从头数一遍；词用 bytes 的元组表示；max 的键 (次数, pair) 同时体现平局规则。

    结果与被测实现无关，所以缓存起来（--bug-bank 时每个错误实现都要和它比一次）。
    """
    vocab = [s.encode() for s in specials] + [bytes([b]) for b in range(256)]
    words: Counter = Counter()
    for chunk in _cut_specials(text, specials):
        for w in words_of(chunk):
            words[tuple(bytes([b]) for b in w.encode("utf-8"))] += 1
    merges = []
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for w, f in words.items():
            for p in zip(w, w[1:]):
                pairs[p] += f
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        if best[0] + best[1] not in vocab:
            vocab.append(best[0] + best[1])
        merged: Counter = Counter()
        for w, f in words.items():
            out, i = [], 0
            while i < len(w):
                if w[i:i + 2] == best:
                    out.append(best[0] + best[1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += f
        words = merged
    return dict(enumerate(vocab)), merges


def _naive_encode(text: str, vocab, merges, specials=(), words_of=_ascii_words) -> list[int]:
    """把 merges 按顺序一条一条作用在每个词上（与“每次挑 rank 最小的 pair”等价，但写法完全不同）。"""
    special_ids = {s: min(i for i, t in vocab.items() if t == s.encode()) for s in specials}
    id_of: dict = {}
    for i in sorted(vocab):
        if i not in special_ids.values():
            id_of.setdefault(vocab[i], i)
    out = []
    pieces = re.split("(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")",
                      text) if specials else [text]
    for k, piece in enumerate(pieces):
        if k % 2:
            out.append(special_ids[piece])
            continue
        for w in words_of(piece):
            parts = [bytes([b]) for b in w.encode("utf-8")]
            for x, y in merges:
                i, nxt = 0, []
                while i < len(parts):
                    if i + 1 < len(parts) and parts[i] == x and parts[i + 1] == y:
                        nxt.append(x + y)
                        i += 2
                    else:
                        nxt.append(parts[i])
                        i += 1
                parts = nxt
            out.extend(id_of[p] for p in parts)
    return out


def _hf_words(text: str) -> list[str]:
    """HF tokenizers 的 ByteLevel 预切分（独立实现）：把它的“可见字符”映射回原文。"""
    from tokenizers import pre_tokenizers

    inv = {ch: b for b, ch in _byte_chars().items()}
    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)
    return [bytes(inv[c] for c in s).decode("utf-8") for s, _ in pieces]


@lru_cache(maxsize=None)
def _byte_chars() -> dict:
    """GPT-2 的字节 → 可见字符表（测试自己写一份）。"""
    visible = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 172 or 174 <= b <= 255]
    table = {b: chr(b) for b in visible}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table


def _hf_tokenizer(vocab, merges, specials):
    """用给定的 vocab + merges 搭一个 HF 的 ByteLevel BPE 分词器（minimind 的配置：add_prefix_space=False）。"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    show = lambda bs: "".join(_byte_chars()[b] for b in bs)  # noqa: E731
    special_ids = {i for i, t in vocab.items() if t in {s.encode() for s in specials}}
    hv: dict = {}
    for i in sorted(vocab):
        key = vocab[i].decode() if i in special_ids else show(vocab[i])
        hv.setdefault(key, i)
    hf = Tokenizer(models.BPE(vocab=hv, merges=[(show(x), show(y)) for x, y in merges]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(list(specials))
    return hf


# ---------------------------------------------------------------------------------------------
# 调用被测实现，比较，诊断
# ---------------------------------------------------------------------------------------------

_TRAINED: dict = {}


def _train(ns, text: str, vocab_size: int, specials=()):
    """训练结果按（实现, 语料, 大小, 特殊 token）缓存：同一个实现只训练一次。"""
    key = (ns._impl, hash(text), len(text), vocab_size, tuple(specials))
    if key not in _TRAINED:
        _TRAINED[key] = ns.train_bpe(text, vocab_size, special_tokens=tuple(specials))
    return _TRAINED[key]


def _tokenizer(ns, text: str, vocab_size: int, specials=()):
    vocab, merges = _train(ns, text, vocab_size, specials)
    return ns.BPETokenizer(vocab, merges, special_tokens=tuple(specials))


_DIAGNOSE = {"on": True}


@pytest.fixture(autouse=True, scope="module")
def _no_diagnosis_in_bug_bank_runs(request):
    """--bug-bank 自检时不做“与哪个常见错误一致”的比对：那是给学习者看的，自检只关心失败与否（省下大量时间）。"""
    _DIAGNOSE["on"] = not request.config.getoption("--bug-bank")
    yield
    _DIAGNOSE["on"] = True


def _final_example() -> bool:
    """在 hypothesis 里：只有最后重放的那个（缩小过的）反例才值得做比对；缩小途中的每一步都跳过。"""
    from hypothesis.control import current_build_context
    from hypothesis.errors import InvalidArgument

    try:
        return bool(current_build_context().is_final)
    except InvalidArgument:  # 不在 hypothesis 测试里
        return True


def _matching_bugs(run, actual, expected) -> list[str]:
    """bug bank 里哪些错误实现在同一输入上给出与 actual 相同、与 expected 不同的结果。"""
    from kata.bugbank import bugs_for

    if not _DIAGNOSE["on"] or not _final_example():
        return []
    found = []
    for bug in bugs_for(MODULE):
        try:
            out = run(resolve(MODULE, f"bug:{bug.name}"))
        except Exception:
            continue
        if out == actual and out != expected:
            found.append(bug.description)
    return found


def _show(seq, at: int, width: int = 4) -> str:
    lo = max(at - width, 0)
    part = list(seq[lo: at + width])
    return ("… " if lo else "") + repr(part)[1:-1] + (" …" if at + width < len(seq) else "")


def require_equal(actual, expected, *, what: str, section: str, run=None) -> None:
    """actual == expected（列表、字符串、字典）；否则说清楚第一处不同在哪里、像哪个常见错误。"""
    if actual == expected:
        return
    lines = []
    if isinstance(actual, (list, tuple, str)) and isinstance(expected, (list, tuple, str)):
        n = next((i for i, (a, e) in enumerate(zip(actual, expected)) if a != e), min(len(actual), len(expected)))
        lines.append(f"{what}：不一致。期望长度 {len(expected)}，实际 {len(actual)}；第一处不同在位置 {n}")
        lines.append(f"  期望 {_show(expected, n)}")
        lines.append(f"  实际 {_show(actual, n)}")
    else:
        lines.append(f"{what}：期望 {expected!r}，实际 {actual!r}")
    if run is not None:
        hits = _matching_bugs(run, actual, expected)
        if hits:
            lines.append("  你的输出与" + "、".join(f"『{h}』" for h in hits) + "这个常见错误一致。")
    pytest.fail("\n".join(lines) + f"\n  → 见 {section}", pytrace=False)


# ---------------------------------------------------------------------------------------------
# 1. 契约
# ---------------------------------------------------------------------------------------------

SMALL = "low lower lowest newer newest wider widest\n" * 3 + "the cat sat on the mat, the cat ate.\n" * 2


def test_vocab_layout_specials_then_bytes_then_merges(impl):
    vocab, merges = _train(impl, SMALL, 285, MINIMIND_SPECIALS)
    require(isinstance(vocab, dict) and isinstance(merges, list),
            f"train_bpe 应返回 (dict, list)，实际 ({type(vocab).__name__}, {type(merges).__name__})", TRAIN)
    require(all(isinstance(i, int) and isinstance(t, bytes) for i, t in vocab.items()),
            "vocab 应为 dict[int, bytes]：键是整数 id，值是 bytes（不是 str，也不是 int 元组）", BYTES)
    require(all(isinstance(m, tuple) and len(m) == 2 and all(isinstance(x, bytes) for x in m) for m in merges),
            f"merges 的每一项应为 (bytes, bytes)，实际例如 {merges[:2]!r}", TRAIN)
    got_specials = [vocab.get(i) for i in range(3)]
    require(got_specials == [s.encode() for s in MINIMIND_SPECIALS],
            f"ids 0、1、2 应该是特殊 token {MINIMIND_SPECIALS}（按给定顺序，值是 UTF-8 字节），实际 {got_specials}"
            "——特殊 token 排在最前，字节从 id 3 开始（minimind：<|endoftext|>=0、<|im_start|>=1、<|im_end|>=2）", SPECIAL)
    wrong = [(3 + b, vocab.get(3 + b)) for b in range(256) if vocab.get(3 + b) != bytes([b])]
    require(not wrong, f"有 3 个特殊 token 时，字节 b 的 id 应为 3 + b；实际例如 id {wrong[0][0]} → {wrong[0][1]!r}"
                       f"（期望 {bytes([wrong[0][0] - 3])!r}）" if wrong else "", BYTES)
    for r, (x, y) in enumerate(merges):
        require(vocab.get(259 + r) == x + y,
                f"第 {r} 条合并 {(x, y)!r} 的结果应该是 id {259 + r}（特殊 token 3 个 + 字节 256 个之后按顺序排），"
                f"实际 vocab[{259 + r}] = {vocab.get(259 + r)!r}", TRAIN)


@pytest.mark.parametrize("vocab_size, specials", [(256, ()), (257, ()), (290, ()), (300, MINIMIND_SPECIALS), (420, ("<|x|>",))],
                         ids=lambda v: str(v))
def test_vocab_size_is_exactly_what_was_asked(impl, vocab_size, specials):
    text = SMALL + _shakespeare()[:3000]
    vocab, _ = _train(impl, text, vocab_size, specials)
    require(sorted(vocab) == list(range(vocab_size)),
            f"train_bpe(…, vocab_size={vocab_size}, special_tokens={specials}) 应得到恰好 {vocab_size} 个、"
            f"编号 0…{vocab_size - 1} 的 token；实际 {len(vocab)} 个（最大 id {max(vocab) if vocab else None}）。"
            f"合并的条数 = vocab_size − 特殊 token 数 − 256", TRAIN)
    tok = impl.BPETokenizer(vocab, _train(impl, text, vocab_size, specials)[1], special_tokens=specials)
    require(tok.vocab_size == vocab_size, f"BPETokenizer.vocab_size 应为 {vocab_size}（embedding 表的行数），实际 {tok.vocab_size}",
            ENCODE)


def test_vocab_size_too_small_is_a_clear_error(impl):
    with pytest.raises(ValueError) as info:
        impl.train_bpe("hello", 258, special_tokens=MINIMIND_SPECIALS)
    require(bool(re.search(r"[\u4e00-\u9fff]", str(info.value))),
            f"vocab_size 放不下 3 个特殊 token + 256 个字节时应抛 ValueError 并用中文说明，实际信息：{info.value}", TRAIN)


def test_bad_inputs_are_clear_errors(impl):
    tok = _tokenizer(impl, SMALL, 270)
    with pytest.raises(TypeError):
        tok.encode(b"bytes are not text")
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size + 5])
    with pytest.raises(ValueError):
        tok.decode([-1])


def _chinese_error(exc_info) -> bool:
    return bool(re.search(r"[\u4e00-\u9fff]", str(exc_info.value)))


@pytest.mark.parametrize("call, exc, why", [
    (lambda ns: ns.train_bpe(b"bytes", 300), TypeError, "text 不是 str"),
    (lambda ns: ns.train_bpe("abc", 300.0), TypeError, "vocab_size 不是整数"),
    (lambda ns: ns.train_bpe("abc", 300, special_tokens="<|x|>"), TypeError, "special_tokens 是一个字符串而不是列表"),
    (lambda ns: ns.train_bpe("abc", 300, special_tokens=["<|x|>", "<|x|>"]), ValueError, "special_tokens 有重复"),
    (lambda ns: ns.train_bpe("abc", 300, special_tokens=["<|x|>", ""]), TypeError, "special_tokens 里有空字符串"),
    (lambda ns: ns.BPETokenizer({i: bytes([i]) for i in range(256)}, [], special_tokens=["<|x|>"]), ValueError,
     "特殊 token 不在 vocab 里"),
    (lambda ns: ns.BPETokenizer({i: bytes([i]) for i in range(255)}, []), ValueError, "vocab 缺少字节 255"),
    (lambda ns: ns.BPETokenizer({i: bytes([i]) for i in range(256)}, [(b"a", b"b")]), ValueError,
     "合并的结果 b'ab' 不在 vocab 里"),
], ids=["text", "vocab_size", "specials-str", "specials-dup", "specials-empty", "special-missing", "byte-missing", "merge-missing"])
def test_bad_arguments_are_clear_errors(impl, call, exc, why):
    with pytest.raises(exc) as info:
        call(impl)
    require(_chinese_error(info), f"{why}时应抛 {exc.__name__} 并用中文说明，实际信息：{info.value}", TRAIN)


def test_running_out_of_pairs_stops_with_a_warning(impl):
    import warnings

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        vocab, merges = impl.train_bpe("ab ab", 300)
    require(len(vocab) == 258 and merges == [(b"a", b"b"), (b" ", b"ab")],
            f"语料 'ab ab' 只能合并两次：应得到 258 个 token、merges [(a, b), (' ', ab)]，实际 {len(vocab)} 个、{merges}"
            "（没有 pair 可合并时就停下，不要死循环，也不要编造 token）", TRAIN)
    require(any(issubclass(w.category, UserWarning) and re.search(r"[\u4e00-\u9fff]", str(w.message)) for w in record),
            "停下时应该用 warnings.warn 说明词表比要求的小（中文）", TRAIN)


# ---------------------------------------------------------------------------------------------
# 2. 训练的精确结果
# ---------------------------------------------------------------------------------------------

def test_first_merge_is_the_most_frequent_pair(impl):
    # 词：'hug' ' hug' ' hug' ' pug' ' pun' ' bun' ' hugs'；(u, g) 出现 5 次，(h, u) 4 次，(' ', h) 3 次
    text = "hug hug hug pug pun bun hugs"
    run = lambda ns: ns.train_bpe(text, 259)[1]  # noqa: E731
    merges = run(impl)
    require_equal(merges[:1], [(b"u", b"g")], what=f"在 {text!r} 上学到的第一条合并（出现 5 次的 (u, g)）",
                  section=TRAIN, run=run)
    require_equal(merges, [(b"u", b"g"), (b"h", b"ug"), (b" ", b"hug")],
                  what="前三条合并：(u, g) 5 次，然后 (h, ug) 4 次，然后 (' ', hug) 3 次（每合并一次都要重新数 pair）", section=TRAIN, run=run)


@pytest.mark.parametrize("text, expected", [
    # 每个 pair 都只出现一次：比 (左, 右)，左边大的赢；左边相同再比右边
    ("ab cd", [(b"c", b"d"), (b"a", b"b"), (b" ", b"cd")]),
    ("ab ac", [(b"a", b"c"), (b"a", b"b"), (b" ", b"ac")]),
    ("zz yy xx", [(b"z", b"z"), (b"y", b"y"), (b"x", b"x")]),
], ids=["left-decides", "right-decides", "three-way-tie"])
def test_ties_go_to_the_lexicographically_greater_pair(impl, text, expected):
    run = lambda ns: ns.train_bpe(text, 256 + len(expected))[1]  # noqa: E731
    require_equal(run(impl), expected,
                  what=f"在 {text!r} 上（所有 pair 次数相同）学到的合并：平局时选字典序更大的 (左, 右) bytes 对", section=TRAIN,
                  run=run)


_alphabet = st.sampled_from(list("aabbcde  \n"))
small_corpora = st.lists(st.text(_alphabet, min_size=1, max_size=12), min_size=1, max_size=12).map(" ".join)


@pytest.mark.filterwarnings("ignore:train_bpe")  # 小语料可能合并到没有 pair 可合并为止：那是预期的，两边都停下
@given(small_corpora, st.integers(1, 30))
def test_merges_match_naive_reference(impl, text, n_merges):
    run = lambda ns: ns.train_bpe(text, 256 + n_merges)  # noqa: E731
    vocab, merges = run(impl)
    exp_vocab, exp_merges = _naive_train(text, 256 + n_merges)
    require_equal(list(merges), exp_merges,
                  what=f"在小语料 {text[:60]!r} 上学到的 merges，与测试里朴素训练器（每轮重数一遍）对比",
                  section=TRAIN, run=lambda ns: list(run(ns)[1]))
    require_equal({i: vocab[i] for i in sorted(vocab)}, exp_vocab, what="vocab（id → bytes）", section=TRAIN)


def test_merges_match_naive_reference_on_shakespeare(impl):
    n_chars, vocab_size = (200_000, 356) if _heavy() else (20_000, 300)
    text = _shakespeare()[:n_chars]
    specials = MINIMIND_SPECIALS
    # 每隔约 2000 个字符插入一个 <|endoftext|>：它必须被整体拿掉，不参与训练
    text = "<|endoftext|>".join(text[i:i + 2000] for i in range(0, len(text), 2000))
    vocab, merges = _train(impl, text, vocab_size, specials)
    exp_vocab, exp_merges = _naive_train(text, vocab_size, tuple(specials))
    require_equal(list(merges), exp_merges,
                  what=f"TinyShakespeare 前 {n_chars:,} 个字符（夹着 <|endoftext|>）上的 {len(exp_merges)} 条合并，"
                       "与朴素训练器对比", section=TRAIN,
                  run=lambda ns: list(_train(ns, text, vocab_size, specials)[1]))
    require_equal(vocab, exp_vocab, what="vocab（id → bytes）", section=TRAIN)


def test_merges_match_naive_reference_on_chinese(impl):
    pytest.importorskip("tokenizers", reason=HF_REASON)
    text, size = (_chinese()[:60_000], 330) if _heavy() else (_chinese()[:8_000], 300)
    vocab, merges = _train(impl, text, size)
    exp_vocab, exp_merges = _naive_train(text, size, words_of=_hf_words)
    require_equal(list(merges), exp_merges,
                  what="中文讲义上的合并（汉字是 3 个 UTF-8 字节：前几条合并多半在拼汉字），与朴素训练器对比",
                  section=BYTES, run=lambda ns: list(_train(ns, text, size)[1]))



def test_merges_match_naive_reference_at_unicode_class_edges(impl):
    # 字母、数字、标点各成一类：码位最大的字母（U+3134A）、数字（U+1FBF9）、全角数字、组合字符也要分对类
    pytest.importorskip("tokenizers", reason=HF_REASON)
    text = " ".join(["a\U0003134a", "1\U0001fbf9", "x\U0001fbf9", "１２", "e\u0301", "_a_", "中文。"] * 20)
    vocab, merges = _train(impl, text, 280)
    exp_vocab, exp_merges = _naive_train(text, 280, words_of=_hf_words)
    require_equal(list(merges), exp_merges,
                  what="在字母 / 数字 / 标点的边界字符上学到的合并（split_words 决定词的边界），与朴素训练器 + HF 预切分对比",
                  section=PRETOK, run=lambda ns: list(_train(ns, text, 280)[1]))

def test_training_is_deterministic(impl):
    text = _shakespeare()[:8000]
    a = impl.train_bpe(text, 320, special_tokens=MINIMIND_SPECIALS)
    b = impl.train_bpe(text, 320, special_tokens=MINIMIND_SPECIALS)
    require(a == b, "同样的语料、同样的参数训练两次，得到的 (vocab, merges) 应完全相同"
                    "（平局规则让结果唯一；别依赖 set / dict 的遍历顺序）", TRAIN)


def test_special_tokens_do_not_take_part_in_training(impl):
    text = ("<|im_start|>hi<|im_end|>" * 50) + " ok"
    vocab, merges = _train(impl, text, 262, MINIMIND_SPECIALS)
    leaked = [m for m in merges if any(c in (m[0] + m[1]) for c in (b"<", b"|", b">"))]
    require(not leaked, f"特殊 token 的字符不该参与训练（先按特殊 token 把文本切开，再训练其余部分），"
                        f"实际学到了 {leaked[:3]}", SPECIAL)


# ---------------------------------------------------------------------------------------------
# 3. 编码
# ---------------------------------------------------------------------------------------------

def test_merges_are_applied_in_rank_order(impl):
    # merges 的先后：(b,c) 最早，然后 (a,b)，然后 (bc,d)。"abcd" 按 rank：先 b+c → [a, bc, d] → bc+d → [a, bcd]。
    # 从左往右先合并能合并的 → [ab, c, d]；在词表里找最长前缀 → [ab, c, d]。
    vocab = {i: bytes([i]) for i in range(256)}
    merges = [(b"b", b"c"), (b"a", b"b"), (b"bc", b"d")]
    vocab.update({256: b"bc", 257: b"ab", 258: b"bcd"})
    run = lambda ns: ns.BPETokenizer(vocab, merges).encode("abcd")  # noqa: E731
    require_equal(run(impl), [ord("a"), 258],
                  what="merges = [(b,c), (a,b), (bc,d)] 时 encode('abcd')：应是 [a, bcd]（每次合并 rank 最小的 pair）",
                  section=ENCODE, run=run)


@given(st.text(st.sampled_from(list("the cat sat on a mat,.!?'s 12\n\t")), max_size=80))
def test_encode_matches_naive_encoder(impl, text):
    corpus = _shakespeare()[:20_000]
    tok = _tokenizer(impl, corpus, 420, MINIMIND_SPECIALS)
    vocab, merges = _train(impl, corpus, 420, MINIMIND_SPECIALS)
    text = text + "<|endoftext|>" + text[::-1]
    run = lambda ns: _tokenizer(ns, corpus, 420, MINIMIND_SPECIALS).encode(text)  # noqa: E731
    require_equal(tok.encode(text), _naive_encode(text, vocab, merges, MINIMIND_SPECIALS),
                  what=f"encode({text[:50]!r}…)，与测试里的朴素编码器（merges 按顺序逐条作用）对比",
                  section=ENCODE, run=run)


def test_special_tokens_map_to_their_ids(impl):
    tok = _tokenizer(impl, SMALL, 285, MINIMIND_SPECIALS)
    for i, s in enumerate(MINIMIND_SPECIALS):
        run = lambda ns, s=s: _tokenizer(ns, SMALL, 285, MINIMIND_SPECIALS).encode(s)  # noqa: E731
        require_equal(tok.encode(s), [i], what=f"encode({s!r}) 应该只有一个 id：{i}（特殊 token 整体匹配，不拆成字节）",
                      section=SPECIAL, run=run)
    text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|><|im_start|>x<|endoftext|>"
    ids = tok.encode(text)
    require([i for i in ids if i < 3] == [1, 2, 1, 1, 0],
            f"{text!r} 里的特殊 token 应依次编码成 1, 2, 1, 1, 0；实际编码里小于 3 的 id 是 {[i for i in ids if i < 3]}",
            SPECIAL)
    require(tok.decode(ids) == text, f"夹着特殊 token 的文本应能原样解码回来，实际 {tok.decode(ids)!r}", SPECIAL)



def test_longer_special_token_wins_when_one_is_a_prefix_of_another(impl):
    specials = ("<|im|>", "<|im|>_end")  # 一个是另一个的前缀：应先匹配长的
    vocab, merges = _train(impl, SMALL, 270, specials)
    tok = impl.BPETokenizer(vocab, merges, special_tokens=specials)
    run = lambda ns: ns.BPETokenizer(*_train(ns, SMALL, 270, specials), special_tokens=specials).encode("a<|im|>_end")  # noqa: E731
    require_equal(tok.encode("a<|im|>_end")[-1:], [1],
                  what="特殊 token ('<|im|>', '<|im|>_end') 时 encode('a<|im|>_end') 的最后一个 id：应是 1（整个 '<|im|>_end'）",
                  section=SPECIAL, run=lambda ns: run(ns)[-1:])

def test_merges_never_cross_word_boundaries(impl):
    text = _shakespeare()[:30_000]
    vocab, merges = _train(impl, text, 600)
    crossing = [t for i, t in vocab.items() if i >= 256 and len(_ascii_words(t.decode("latin-1"))) != 1]
    require(not crossing,
            f"每个合并出来的 token 都应该落在一个“词”的内部（词前最多带一个空格），实际有 {len(crossing)} 个跨过了词的边界，"
            f"例如 {crossing[:4]}——训练前要先用 split_words 预切分", PRETOK)
    tok = impl.BPETokenizer(vocab, merges)
    pieces = [tok.decode([i]) for i in tok.encode("Hello  world,\n\n  and you")]
    require("".join(pieces) == "Hello  world,\n\n  and you",
            f"空白也是文本的一部分：逐个解码的 token 拼起来应是原文，实际 {pieces}", PRETOK)


def test_encoding_gets_shorter_as_vocab_grows(impl):
    text = _shakespeare()[:10_000]
    sizes = (256, 300, 400, 600, 900)
    lengths = [len(_tokenizer(impl, text, v).encode(text)) for v in sizes]
    require(lengths[0] == len(text.encode()),
            f"vocab_size=256（没有合并）时，token 数应等于字节数 {len(text.encode())}，实际 {lengths[0]}", BYTES)
    require(all(a > b for a, b in zip(lengths, lengths[1:])),
            f"词表越大，训练语料编码后越短：vocab {sizes} → token 数 {lengths}（应严格递减）", ENCODE)


# ---------------------------------------------------------------------------------------------
# 4. 解码与往返
# ---------------------------------------------------------------------------------------------

any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
tricky = st.lists(st.sampled_from(["中文", "汉", "🙂", "👩‍👩‍👧", "e\u0301", "\x00", "\x1c", "\u2028", "  ", "\n\n", "\t", "ab",
                                   " the", "<|im_end|>", "<|endoftext|>", "'s", "１２３", "ｆｕｌｌ", "\ufeff", "\ufffd"]),
                  max_size=12).map("".join)


@given(st.one_of(any_text, tricky))
def test_decode_encode_round_trip(impl, text):
    tok = _tokenizer(impl, MIXED * 10 + _chinese()[:6000], 500, MINIMIND_SPECIALS)
    ids = tok.encode(text)
    run = lambda ns: _tokenizer(ns, MIXED * 10 + _chinese()[:6000], 500, MINIMIND_SPECIALS).decode(  # noqa: E731
        _tokenizer(ns, MIXED * 10 + _chinese()[:6000], 500, MINIMIND_SPECIALS).encode(text))
    require(all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids),
            f"encode 应返回 0…vocab_size−1 的整数 id，实际 {ids[:8]}", ENCODE)
    require_equal(tok.decode(ids), text, what=f"decode(encode({text!r}))（字节级 BPE 对任何字符串都能往返）",
                  section=DECODE, run=run)


def test_decode_joins_bytes_before_utf8(impl):
    tok = _tokenizer(impl, SMALL, 270)
    ni = "你".encode()  # 3 个字节：e4 bd a0
    ids = [b for b in ni]  # 没有特殊 token 时，字节 b 的 id 就是 b
    run = lambda ns: _tokenizer(ns, SMALL, 270).decode(ids)  # noqa: E731
    require_equal(tok.decode(ids), "你", what="decode([0xe4, 0xbd, 0xa0])：三个单字节 token 拼起来才是一个汉字",
                  section=DECODE, run=run)
    require_equal(tok.decode(tok.encode("你好，世界")), "你好，世界", what="decode(encode('你好，世界'))", section=DECODE)


@pytest.mark.parametrize("raw, expected", [
    (b"\xff", "\ufffd"), (b"a\x80b", "a\ufffdb"), (b"\xe4\xbd", "\ufffd"), (b"ok\xe4", "ok\ufffd"),
], ids=["0xff", "lone-continuation", "half-hanzi", "truncated-end"])
def test_decode_invalid_utf8_gives_replacement_char(impl, raw, expected):
    tok = _tokenizer(impl, SMALL, 270)
    ids = list(raw)
    run = lambda ns: _tokenizer(ns, SMALL, 270).decode(ids)  # noqa: E731
    try:
        got = tok.decode(ids)
    except UnicodeDecodeError:
        require(False, f"decode({ids}) 抛了 UnicodeDecodeError：模型生成的 id 序列可能停在半个汉字上，"
                       "decode 要用 errors='replace'，把非法字节变成 U+FFFD，而不是抛异常", DECODE)
    require_equal(got, expected, what=f"decode 字节 {raw!r}（非法 UTF-8 → U+FFFD）", section=DECODE, run=run)


# ---------------------------------------------------------------------------------------------
# 5. 保存与读取
# ---------------------------------------------------------------------------------------------

@given(st.one_of(any_text, tricky))
def test_save_then_load_is_identical(impl, tmp_path_factory, text):
    corpus = MIXED * 10 + _chinese()[:6000]
    tok = _tokenizer(impl, corpus, 450, MINIMIND_SPECIALS)
    folder = tmp_path_factory.mktemp("tok")
    path = folder / "tokenizer.json"
    tok.save(path)
    again = impl.BPETokenizer.load(path)
    require(sorted(p.name for p in folder.iterdir()) == ["tokenizer.json"],
            f"save 之后目录里应只有 tokenizer.json（临时文件要 os.replace 掉），实际 {sorted(p.name for p in folder.iterdir())}",
            SAVE)

    def run(ns):
        t = _tokenizer(ns, corpus, 450, MINIMIND_SPECIALS)
        p = tmp_path_factory.mktemp("bug") / "t.json"
        t.save(p)
        return ns.BPETokenizer.load(p).encode(text)

    require_equal(again.encode(text), tok.encode(text), what=f"save → load 之后 encode({text[:40]!r})", section=SAVE, run=run)
    require(again.vocab_size == tok.vocab_size, f"load 之后 vocab_size 应不变：{tok.vocab_size} → {again.vocab_size}", SAVE)
    require(again.special_tokens == list(MINIMIND_SPECIALS) or tuple(again.special_tokens) == MINIMIND_SPECIALS,
            f"load 之后 special_tokens 应不变，实际 {getattr(again, 'special_tokens', None)}", SAVE)
    require(again.decode(list(range(tok.vocab_size))) == tok.decode(list(range(tok.vocab_size))),
            "load 之后每个 id 对应的字节都应不变（含半个汉字那种不是合法 UTF-8 的 token：bytes 不能当文本存）", SAVE)


def test_save_creates_folders_and_load_rejects_other_files(impl, tmp_path):
    tok = _tokenizer(impl, SMALL, 270)
    path = tmp_path / "a" / "b" / "tok.json"
    tok.save(path)
    require(path.is_file(), "save 应该自己建好不存在的上级目录", SAVE)
    bad = tmp_path / "hf.json"
    bad.write_text('{"model": {"type": "BPE", "vocab": {}, "merges": []}}', encoding="utf-8")
    with pytest.raises(ValueError) as info:
        impl.BPETokenizer.load(bad)
    require(_chinese_error(info), f"load 一个不是 save 写出的文件时应抛 ValueError（中文说明），实际：{info.value}", SAVE)


def test_decode_accepts_tensors(impl):
    import torch

    tok = _tokenizer(impl, SMALL, 270)
    ids = tok.encode("the cat sat")
    require(tok.decode(torch.tensor(ids)) == "the cat sat",
            "decode 应该也接受一维的 torch 张量（模型生成的就是张量）：先 .tolist()", DECODE)


# ---------------------------------------------------------------------------------------------
# 6. HF tokenizers：独立的 encode 参照、from_hf_json、压缩率
# ---------------------------------------------------------------------------------------------

hf_text = st.lists(st.sampled_from([
    "Hello", " world", "the", " The", "don't", "I'M", "'s", "2024", " 3.14", "１２", "你好", "，", "中文分词", "🙂", "🚀🚀",
    " ", "  ", "   ", "\n", "\n\n", "\t", " \n ", "e\u0301", "café", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
    "user\n", "!?", "...", "_x_",
    "a\U0003134a", "1\U0001fbf9", "x\U0001fbf9",  # Unicode 14 里码位最大的字母、数字：字母 / 数字类的边界
]), max_size=20).map("".join)


@given(hf_text)
def test_encode_matches_hf_tokenizers_built_from_your_merges(impl, text):
    pytest.importorskip("tokenizers", reason=HF_REASON)
    corpus = MIXED * 10 + _chinese()[:8000]
    vocab, merges = _train(impl, corpus, 520, MINIMIND_SPECIALS)
    tok = impl.BPETokenizer(vocab, merges, special_tokens=MINIMIND_SPECIALS)
    hf = _hf_tokenizer(vocab, merges, MINIMIND_SPECIALS)
    run = lambda ns: _tokenizer(ns, corpus, 520, MINIMIND_SPECIALS).encode(text)  # noqa: E731
    require_equal(tok.encode(text), hf.encode(text).ids,
                  what=f"encode({text[:50]!r})，与用你的 vocab + merges 搭出来的 HF tokenizers（ByteLevel BPE）对比",
                  section=ENCODE, run=run)


def test_encode_matches_hf_on_shakespeare(impl):
    pytest.importorskip("tokenizers", reason=HF_REASON)
    text = _shakespeare() if _heavy() else _shakespeare()[:60_000]
    vocab_size = 1024 if _heavy() else 600
    vocab, merges = _train(impl, text, vocab_size, MINIMIND_SPECIALS)
    tok = impl.BPETokenizer(vocab, merges, special_tokens=MINIMIND_SPECIALS)
    hf = _hf_tokenizer(vocab, merges, MINIMIND_SPECIALS)
    require_equal(tok.encode(text), hf.encode(text).ids,
                  what=f"TinyShakespeare（{len(text):,} 个字符）的全部 id，与 HF tokenizers 用你的 merges 编码的结果对比",
                  section=ENCODE)


@lru_cache(maxsize=None)
def _hf_trained_json(folder: str, corpus: str, vocab_size: int) -> str:
    """让 HF tokenizers 在本地按 minimind 的设置训练一个 tokenizer.json（不联网）。"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=list(MINIMIND_SPECIALS) + ["<think>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([corpus], trainer=trainer)
    hf.decoder = decoders.ByteLevel()
    path = f"{folder}/tokenizer.json"
    hf.save(path)
    return path


@pytest.fixture(scope="module")
def hf_json(tmp_path_factory):
    pytest.importorskip("tokenizers", reason=HF_REASON)
    from tokenizers import Tokenizer

    path = _hf_trained_json(str(tmp_path_factory.mktemp("hf")), MIXED * 10 + _chinese()[:20_000], 700)
    return path, Tokenizer.from_file(path)


@given(hf_text)
def test_from_hf_json_encodes_like_hf(impl, hf_json, text):
    path, hf = hf_json
    tok = impl.BPETokenizer.from_hf_json(path)
    run = lambda ns: ns.BPETokenizer.from_hf_json(path).encode(text)  # noqa: E731
    require_equal(tok.encode(text), hf.encode(text).ids,
                  what=f"from_hf_json 读 HF 训练的 tokenizer.json 后 encode({text[:50]!r})，与 HF 自己的 encode 对比",
                  section=SAVE, run=run)
    require_equal(tok.decode(hf.encode(text).ids), text, what="from_hf_json 之后 decode(HF 的 ids)", section=SAVE)


def test_from_hf_json_keeps_hf_ids(impl, hf_json):
    path, hf = hf_json
    tok = impl.BPETokenizer.from_hf_json(path)
    require(tok.vocab_size == hf.get_vocab_size(),
            f"vocab_size 应等于 HF 的 {hf.get_vocab_size()}，实际 {tok.vocab_size}", SAVE)
    for s in MINIMIND_SPECIALS + ("<think>",):
        require(tok.encode(s) == [hf.token_to_id(s)],
                f"特殊 token {s!r} 的 id 应与 tokenizer.json 里一样（{hf.token_to_id(s)}），实际 {tok.encode(s)}", SAVE)
    model = json.loads(open(path, encoding="utf-8").read())["model"]
    sample = sorted(model["vocab"].items(), key=lambda kv: kv[1])[300:310]
    for piece, i in sample:
        require(tok.decode([i]) == hf.decode([i]),
                f"id {i}（tokenizer.json 里写作 {piece!r}）应解码成 {hf.decode([i])!r}，实际 {tok.decode([i])!r}"
                "——vocab 里的字符串是 bytes_to_unicode 映射过的（'Ġ' 是空格），要映射回字节", SAVE)


def test_from_hf_json_reads_old_merges_format_and_rejects_other_models(impl, hf_json, tmp_path):
    path, hf = hf_json
    data = json.loads(open(path, encoding="utf-8").read())
    data["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [data["pre_tokenizer"]]}
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    text = "Hello 你好 <|im_start|>user\n🙂  x a\U0003134a 1\U0001fbf9x"  # 后两个：码位最大的字母、数字
    got = impl.BPETokenizer.from_hf_json(old).encode(text)
    require(got == hf.encode(text).ids,
            "旧版 tokenizers 把 merges 写成 \"左 右\" 字符串（新版是 [左, 右]），pre_tokenizer 也可能包在 Sequence 里："
            f"两种都要认。encode({text!r}) 期望 {hf.encode(text).ids[:8]}…，实际 {got[:8]}…", SAVE)
    for bad_change, why in ((lambda d: d["model"].update(type="WordPiece"), "model.type 不是 BPE"),
                            (lambda d: d["pre_tokenizer"]["pretokenizers"][0].update(add_prefix_space=True),
                             "ByteLevel 设置了 add_prefix_space=true（minimind 是 false）")):
        broken = json.loads(json.dumps(data))
        bad_change(broken)
        p = tmp_path / "bad.json"
        p.write_text(json.dumps(broken, ensure_ascii=False), encoding="utf-8")
        with pytest.raises(ValueError) as info:
            impl.BPETokenizer.from_hf_json(p)
        require(_chinese_error(info), f"{why}：应抛 ValueError 并用中文说明，实际：{info.value}", SAVE)


@lru_cache(maxsize=None)
def _hf_chars_per_token(text: str, vocab_size: int) -> float:
    """HF tokenizers 在同一份语料上训练同样大小的词表，得到的 字符/token（与被测实现无关，缓存）。"""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator([text], trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return len(text) / len(hf.encode(text).ids)


def test_compression_is_close_to_hf_at_the_same_vocab_size(impl):
    pytest.importorskip("tokenizers", reason=HF_REASON)

    text = _shakespeare() if _heavy() else _shakespeare()[:30_000]
    rows = []
    for vocab_size in ((512, 1024, 4096) if _heavy() else (512, 1024)):
        tok = _tokenizer(impl, text, vocab_size)
        mine, theirs = len(text) / len(tok.encode(text)), _hf_chars_per_token(text, vocab_size)
        rows.append((vocab_size, mine, theirs))
    bad = [r for r in rows if abs(r[1] / r[2] - 1) > 0.02]
    table = "；".join(f"vocab {v}：你的 {m:.3f}，HF {t:.3f} 字符/token" for v, m, t in rows)
    require(not bad, f"同样的词表大小，压缩率应与 HF tokenizers 训练的相差不到 2%（平局规则不同只带来极小差别）：{table}", TRAIN)
