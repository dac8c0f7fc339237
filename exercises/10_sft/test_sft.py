"""模块 10 的测试：对话模板 apply_chat_template 与 SFT 数据集 SFTDataset。

分层（每一层都能失败）：
1. 模板：与手写的字符串逐字相同（单轮、多轮、有无系统提示、生成提示）；与测试里另写的渲染器一致、
   能被解析回原对话（hypothesis 抽对话）；坏输入报中文错误；
2. 数据集的契约：长度、形状、dtype、坏参数；input_ids = 模板编码后截断、用 <|endoftext|> 的 id 补齐；
3. 掩码：与一个手写的例子逐位相同；与测试里**另写的参照**一致——它在字符串上找助手回复的字符区间，
   再经字符级分词器映射到 token 位置（hypothesis 抽对话和 max_length）；labels 不移位；
4. 性质：截断在任何位置都只是把完整的 labels 截短；助手部分整个被截掉时没有任何 loss；padding 永远不进 loss；
   生成提示恰好停在训练时 loss 开始的地方；
5. 换一个真正的 BPE 分词器（模块 07 的参考实现）：被标记的 token 解码回来恰好是每个助手回复 + "<|im_end|>\\n"。
失败信息会告诉你：期望什么、你给了什么、与哪个常见错误一致、该读 teaching.md 的哪一节。
"""
from __future__ import annotations

import re
import warnings
from functools import lru_cache

import pytest
import torch
from hypothesis import assume, given, strategies as st

from kata.impl import load_side_file, resolve
from kata.testing import Contract, require
from kata.tokenizer import CharTokenizer

MODULE = "10_sft"
TEMPLATE = "teaching.md §2.1（模板：每条消息一个 <|im_start|>…<|im_end|>\\n）"
GEN = "teaching.md §2.2（生成提示）"
SUBSET = "teaching.md §2.3（本课支持的子集与中文报错）"
DATASET = "teaching.md §3.1（SFTDataset：编码、截断、补齐）"
MASK = "teaching.md §3.2（loss 掩码：minimind 的 generate_labels）"
TRUNC = "teaching.md §3.3（截断与 padding）"
SHIFT = "teaching.md §3.4（labels 不移位：模型自己移）"

EOT, IMS, IME = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIALS = (EOT, IMS, IME)
IGNORE = -100

KATA_CONTRACTS = (
    Contract("template", "apply_chat_template：<|im_start|>role\\n内容<|im_end|>\\n，生成提示，坏输入报错",
             ("test_template_*",)),
    Contract("dataset", "SFTDataset 的契约：长度、形状、dtype、编码、截断、用 <|endoftext|> 补齐",
             ("test_dataset_*",), after=("template",)),
    Contract("mask", "loss 掩码：只有助手回复（含 <|im_end|>\\n）等于 input_ids，其余 −100",
             ("test_mask_*", "test_labels_*", "test_matches_reference_solution"), after=("dataset",)),
    Contract("properties", "截断、padding、生成提示与掩码的衔接、BPE 分词器",
             ("test_truncat*", "test_padding_*", "test_generation_prompt_*", "test_bpe_*"), after=("mask",)),
)

# ---------------------------------------------------------------------------------------------
# 分词器：字符级（每个字符一个 token，特殊 token 排在字符之后）与模块 07 的参考 BPE
# ---------------------------------------------------------------------------------------------

CHARS = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n,.?!+-=:<|>_"
         "你好世界是的不一二三加等于多少请问答")
CHAR_TOK = CharTokenizer(CHARS, special_tokens=SPECIALS)
# 特殊 token 换个顺序：写死 id（0、1、2）的实现会在这里露馅
SHUFFLED_TOK = CharTokenizer(CHARS[::-1], special_tokens=(IME, EOT, IMS))


@lru_cache(maxsize=None)
def _bpe():
    """模块 07 的参考 BPE（测试只拿它当一个真实的分词器，与你的模块 07 无关）。"""
    bpe = load_side_file("solutions", "07_tokenizer", "bpe.py")
    corpus = "".join(
        f"{IMS}system\nyou are a helper{IME}\n{IMS}user\nwhat is {a} plus {b}? 请问{a}加{b}等于多少{IME}\n"
        f"{IMS}assistant\nthe answer is {a + b}. 答：{a + b}{IME}\n" for a in range(12) for b in range(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vocab, merges = bpe.train_bpe(corpus, 330, SPECIALS)
    return bpe.BPETokenizer(vocab, merges, SPECIALS)


# ---------------------------------------------------------------------------------------------
# 独立参照：测试自己写的渲染器、解析器、“字符串上找区间 → 映射到 token”的掩码
# ---------------------------------------------------------------------------------------------

def _ref_template(conv, gen=False):
    """另一种写法：消息之间用 "\\n" 连接，再补最后一个 "\\n"。"""
    body = "\n".join(IMS + m["role"] + "\n" + m["content"] + IME for m in conv)
    return body + "\n" + (IMS + "assistant\n" if gen else "")


def _parse(text):
    """把模板字符串解析回 [(role, content), …]，解析不了返回 None。"""
    if not text.endswith(IME + "\n"):
        return None
    out = []
    for chunk in text.split(IMS)[1:]:
        m = re.fullmatch(r"(system|user|assistant)\n(.*)" + re.escape(IME) + r"\n", chunk, flags=re.S)
        if m is None:
            return None
        out.append((m.group(1), m.group(2)))
    return out if text.startswith(IMS) else None


def _char_units(text):
    """字符级分词器眼里的 token：特殊 token 整体一个，其余每个字符一个；返回 [(起始字符位置, 片段), …]。"""
    units, i = [], 0
    while i < len(text):
        special = next((s for s in SPECIALS if text.startswith(s, i)), None)
        piece = special or text[i]
        units.append((i, piece))
        i += len(piece)
    return units


def _ref_labels(conv, tok, max_length):
    """在字符串上找每个助手回复的字符区间 [头之后, <|im_end|>\\n 之后)，再按字符级 token 映射成 labels。"""
    text = _ref_template(conv)
    spans = []
    for m in re.finditer(re.escape(IMS + "assistant\n"), text):
        end = text.index(IME + "\n", m.end()) + len(IME + "\n")
        spans.append((m.end(), end))
    ids, labels = [], []
    for pos, piece in _char_units(text):
        tid = tok.encode(piece)[0]
        ids.append(tid)
        labels.append(tid if any(a <= pos < b for a, b in spans) else IGNORE)
    pad = tok.encode(EOT)[0]
    ids, labels = ids[:max_length], labels[:max_length]
    n = max_length - len(ids)
    return ids + [pad] * n, labels + [IGNORE] * n


# ---------------------------------------------------------------------------------------------
# 诊断：与 bug bank 里哪个常见错误一致；把掩码画出来
# ---------------------------------------------------------------------------------------------

def _matching_bugs(run, actual, expected):
    from kata.bugbank import bugs_for

    hits = []
    for bug in bugs_for(MODULE):
        try:
            out = run(resolve(MODULE, f"bug:{bug.name}"))
        except Exception:
            continue
        if out == actual and out != expected:
            hits.append(bug.description)
    return hits


def _final_example() -> bool:
    """hypothesis 缩小反例时会把失败的例子重跑很多遍：只在最后展示的那一遍（或不在 hypothesis 里时）做诊断。"""
    try:
        from hypothesis.control import current_build_context

        return bool(current_build_context().is_final)
    except Exception:  # 不在 hypothesis 的测试里
        return True


def _bug_note(run, actual, expected):
    if not _final_example():
        return ""
    hits = _matching_bugs(run, actual, expected)
    return ("\n  你的输出与" + "、".join(f"『{h}』" for h in hits) + "这个常见错误一致。") if hits else ""


def _show(tok, ids, labels):
    """把进入 loss 的 token 用 ⟦…⟧ 括起来，padding 写成 ·。"""
    pad = tok.encode(EOT)[0]
    out, inside = [], False
    ids, labels = list(ids), list(labels)
    while ids and ids[-1] == pad and labels[-1] == IGNORE:
        ids.pop(), labels.pop()
    for t, lab in zip(ids, labels):
        on = lab != IGNORE
        if on and not inside:
            out.append("⟦")
        if not on and inside:
            out.append("⟧")
        inside = on
        out.append(tok.decode([t]))
    if inside:
        out.append("⟧")
    return repr("".join(out))


def _as_lists(item):
    require(isinstance(item, tuple) and len(item) == 2 and all(isinstance(x, torch.Tensor) for x in item),
            f"SFTDataset[i] 应返回 (input_ids, labels) 两个张量，实际 {type(item).__name__}", DATASET)
    return item[0].tolist(), item[1].tolist()


def _dataset_run(conv, tok, max_length):
    def run(ns):
        return _as_lists_quiet(ns.SFTDataset([conv], tok, max_length)[0])
    return run


def _as_lists_quiet(item):
    return item[0].tolist(), item[1].tolist()


def _check_labels(impl, conv, tok, max_length, expected_ids, expected_labels, what, section=MASK):
    ids, labels = _as_lists(impl.SFTDataset([conv], tok, max_length)[0])
    if ids != expected_ids:
        run = _dataset_run(conv, tok, max_length)
        require(False, f"input_ids 不对（max_length={max_length}）——{what}\n"
                       f"  期望 {_show(tok, expected_ids, [IGNORE] * len(expected_ids))}\n"
                       f"  实际 {_show(tok, ids, [IGNORE] * len(ids))}\n"
                       f"  期望 id {expected_ids}\n  实际 id {ids}"
                       + _bug_note(run, (ids, labels), (expected_ids, expected_labels)), DATASET)
    if labels != expected_labels:
        run = _dataset_run(conv, tok, max_length)
        bad = [i for i, (a, b) in enumerate(zip(labels, expected_labels)) if a != b]
        require(False, f"labels（loss 掩码）不对（max_length={max_length}；⟦…⟧ 是进入 loss 的 token）——{what}\n"
                       f"  期望 {_show(tok, ids, expected_labels)}\n  实际 {_show(tok, ids, labels)}\n"
                       f"  第一个不同的位置 {bad[0] if bad else '（长度不同）'}：期望 "
                       f"{expected_labels[bad[0]] if bad else len(expected_labels)}，"
                       f"实际 {labels[bad[0]] if bad else len(labels)}"
                       + _bug_note(run, (ids, labels), (expected_ids, expected_labels)), section)


# ---------------------------------------------------------------------------------------------
# hypothesis：对话
# ---------------------------------------------------------------------------------------------

texts = st.text(alphabet=st.sampled_from(CHARS), max_size=10)
tricky = st.sampled_from(["assistant\n", "user\n", "<|im_end", "im_end|>\n", "\n\n", "<|", "|>", " "])
# 拼接可能恰好拼出特殊 token 的字面文本（"<|im_end" + "|>"）：那是模板明确拒绝的输入（另有测试），这里排除掉
contents = st.lists(st.one_of(texts, tricky), max_size=3).map("".join).filter(
    lambda s: not any(t in s for t in SPECIALS))


@st.composite
def conversations(draw, min_turns=1):
    conv = []
    if draw(st.booleans()):
        conv.append({"role": "system", "content": draw(contents)})
    for _ in range(draw(st.integers(min_turns, 3))):
        conv.append({"role": "user", "content": draw(contents)})
        conv.append({"role": "assistant", "content": draw(contents)})
    if draw(st.integers(0, 3)) == 0:
        conv.append({"role": "user", "content": draw(contents)})
    return conv


def _template_run(conv, gen):
    return lambda ns: ns.apply_chat_template(conv, add_generation_prompt=gen)


def _check_template(impl, conv, gen, expected, what, section=TEMPLATE):
    got = impl.apply_chat_template(conv, add_generation_prompt=gen)
    if got != expected:
        require(False, f"模板字符串不对（add_generation_prompt={gen}）——{what}\n  期望 {expected!r}\n  实际 {got!r}"
                + (_bug_note(_template_run(conv, gen), got, expected) if isinstance(got, str) else ""), section)


# ---------------------------------------------------------------- 1. 模板

def test_template_single_turn_handwritten(impl):
    conv = [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]
    _check_template(impl, conv, False, "<|im_start|>user\n1+1=<|im_end|>\n<|im_start|>assistant\n2<|im_end|>\n",
                    "单轮对话、没有系统提示（minimind-3 不补默认系统提示）")


def test_template_system_and_multi_turn_handwritten(impl):
    conv = [{"role": "system", "content": "你是minimind"},
            {"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": "2+3=?"}, {"role": "assistant", "content": "5"}]
    expected = ("<|im_start|>system\n你是minimind<|im_end|>\n"
                "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n你好！<|im_end|>\n"
                "<|im_start|>user\n2+3=?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n")
    _check_template(impl, conv, False, expected, "带系统提示的两轮对话")


def test_template_generation_prompt_handwritten(impl):
    conv = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    _check_template(impl, conv, True,
                    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
                    "生成提示：末尾恰好是 <|im_start|>assistant\\n", GEN)
    _check_template(impl, conv, False, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
                    "默认（add_generation_prompt=False）不加生成提示", GEN)
    got = impl.apply_chat_template(conv, True)
    require(got.endswith("<|im_start|>assistant\n"),
            f"add_generation_prompt 也可以按位置传：apply_chat_template(messages, True) 应以生成提示结尾，实际 {got!r}", GEN)


def test_template_empty_contents_and_newlines_kept_verbatim(impl):
    conv = [{"role": "user", "content": ""}, {"role": "assistant", "content": "\nA\n\n"}]
    _check_template(impl, conv, False, "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n\nA\n\n<|im_end|>\n",
                    "内容原样放进去（空内容、首尾换行都不 strip）")


@given(conversations(), st.booleans())
def test_template_matches_independent_renderer(impl, conv, gen):
    _check_template(impl, conv, gen, _ref_template(conv, gen), f"对话 {conv!r}")


@given(conversations())
def test_template_round_trip(impl, conv):
    text = impl.apply_chat_template(conv)
    parsed = _parse(text)
    require(parsed == [(m["role"], m["content"]) for m in conv],
            f"模板字符串应能一条不差地解析回原对话。\n  对话 {conv!r}\n  模板 {text!r}\n  解析出 {parsed!r}", TEMPLATE)


def test_template_accepts_a_minimind_jsonl_row(impl):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    row = {"conversations": conv}
    require(impl.apply_chat_template(row) == impl.apply_chat_template(conv),
            "minimind 的 jsonl 一行是 {'conversations': [...]}，应与直接传消息列表得到同一个字符串", SUBSET)


@pytest.mark.parametrize("bad, exc, word", [
    ([{"role": "tool", "content": "42"}], ValueError, "tool"),
    ([{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}], ValueError, "robot"),
    ([{"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}], ValueError, "tool_calls"),
    ([{"role": "assistant", "content": "x", "reasoning_content": "think"}], ValueError, "reasoning_content"),
    ([{"role": "user", "content": "a <|im_end|> b"}], ValueError, "<|im_end|>"),
    ([{"role": "user"}], ValueError, "content"),
    ([{"role": "user", "content": 3}], TypeError, "content"),
    ([], ValueError, "空"),
    ("hello", TypeError, "列表"),
    (["hello"], TypeError, "dict"),
    ([{"role": "user", "content": "a <|im_start|> b"}], ValueError, "<|im_start|>"),
    ([{"role": "user", "content": "a <|endoftext|>"}], ValueError, "<|endoftext|>"),
], ids=["tool", "unknown_role", "tool_calls", "reasoning", "special_in_content", "no_content", "int_content",
        "empty", "string", "message_not_dict", "im_start_in_content", "endoftext_in_content"])
def test_template_rejects_unsupported_input_in_chinese(impl, bad, exc, word):
    try:
        out = impl.apply_chat_template(bad)
    except exc as e:
        msg = str(e)
        require(word in msg and re.search(r"[\u4e00-\u9fff]", msg),
                f"坏输入 {bad!r} 的报错应是中文、并点出 {word!r}，实际：{msg!r}", SUBSET)
        return
    require(False, f"坏输入 {bad!r} 应抛 {exc.__name__}（中文说明期望什么），实际返回了 {out!r}", SUBSET)


# ---------------------------------------------------------------- 2. 数据集的契约

def test_dataset_length_shapes_and_dtypes(impl):
    convs = [[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
             [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
             [{"role": "user", "content": "only a question"}]]
    ds = impl.SFTDataset(convs, CHAR_TOK, 16)
    require(len(ds) == 3, f"len(dataset) 应是对话的段数 3，实际 {len(ds)}", DATASET)
    for i in range(3):
        x, y = ds[i]
        for name, t in (("input_ids", x), ("labels", y)):
            require(isinstance(t, torch.Tensor) and t.dtype == torch.long and tuple(t.shape) == (16,),
                    f"ds[{i}] 的 {name} 应是形状 (16,) 的 torch.long 张量，实际 "
                    f"{(tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t).__name__}", DATASET)
    xb, yb = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    require(tuple(xb.shape) == (3, 16) and tuple(yb.shape) == (3, 16),
            f"DataLoader 应能把样本叠成 [3, 16]，实际 {tuple(xb.shape)}、{tuple(yb.shape)}", DATASET)


@pytest.mark.parametrize("max_length", [0, -3, 2.5, True, "16"], ids=repr)
def test_dataset_rejects_bad_max_length(impl, max_length):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    with pytest.raises((ValueError, TypeError)) as info:
        impl.SFTDataset([conv], CHAR_TOK, max_length)
    require(re.search(r"[\u4e00-\u9fff]", str(info.value)) and "max_length" in str(info.value),
            f"max_length={max_length!r} 的报错应是中文并点名 max_length，实际：{info.value}", DATASET)


def test_dataset_rejects_tokenizer_without_special_tokens_and_bad_conversations(impl):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    plain = CharTokenizer(CHARS)
    with pytest.raises(ValueError) as info:
        impl.SFTDataset([conv], plain, 16)
    require("<|" in str(info.value), f"分词器不认识特殊 token 时应报错并点出是哪一个，实际：{info.value}", DATASET)
    for missing in SPECIALS:
        partial = CharTokenizer(CHARS, special_tokens=[t for t in SPECIALS if t != missing])
        with pytest.raises(ValueError) as info:
            impl.SFTDataset([conv], partial, 16)
        require(missing in str(info.value),
                f"分词器缺 {missing} 时应报错并点出它（三个特殊 token 每个都要检查），实际：{info.value}", DATASET)
    with pytest.raises((ValueError, TypeError)):
        impl.SFTDataset([[{"role": "tool", "content": "x"}]], CHAR_TOK, 16)
    for bad in ("hello", {"role": "user", "content": "x"}):
        with pytest.raises(TypeError):
            impl.SFTDataset(bad, CHAR_TOK, 16)
    with pytest.raises(TypeError):
        impl.SFTDataset([conv], object(), 16)


def test_dataset_from_a_one_shot_iterable_is_not_silently_empty(impl):
    """生成器（比如逐行读 jsonl 的 (json.loads(l) for l in f)）只能遍历一次：先遍历检查、再 list() 就只剩空列表。"""
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    try:
        ds = impl.SFTDataset((c for c in [conv, conv]), CHAR_TOK, 16)
    except (TypeError, ValueError) as exc:
        require(re.search(r"[\u4e00-\u9fff]", str(exc)),
                f"不接受生成器可以，但报错应是中文、说清期望一个对话的列表，实际：{exc}", DATASET)
        return
    require(len(ds) == 2,
            f"传入一个生成器（2 段对话）：要么报错（期望对话的列表），要么数据集里就该有这 2 段；实际 len(dataset) = {len(ds)}。"
            "常见原因：先遍历一遍做检查、再 list(conversations)——生成器已经被耗尽，得到一个静悄悄的空数据集", DATASET)


@given(conversations(), st.integers(1, 120))
def test_dataset_input_ids_are_the_encoded_template_truncated_then_padded(impl, conv, max_length):
    full = CHAR_TOK.encode(impl.apply_chat_template(conv))
    n = min(len(full), max_length)
    expected = full[:n] + [CHAR_TOK.encode(EOT)[0]] * (max_length - n)
    ids, _ = _as_lists(impl.SFTDataset([conv], CHAR_TOK, max_length)[0])
    require(ids == expected,
            f"input_ids 应是 encode(模板) 从右边截到 max_length={max_length}，不够长时用 <|endoftext|> 的 id "
            f"({CHAR_TOK.encode(EOT)[0]}) 补齐。\n  期望 {expected}\n  实际 {ids}"
            + _bug_note(_dataset_run(conv, CHAR_TOK, max_length), (ids, _), (expected, None)), TRUNC)


def test_dataset_pads_with_this_tokenizers_endoftext_id(impl):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    exp_ids, exp_labels = _ref_labels(conv, SHUFFLED_TOK, 40)
    _check_labels(impl, conv, SHUFFLED_TOK, 40, exp_ids, exp_labels,
                  "特殊 token 的 id 换了顺序的分词器（<|endoftext|> 的 id 是 "
                  f"{SHUFFLED_TOK.encode(EOT)[0]}）：id 要向分词器要，不能写死 0/1/2", TRUNC)


# ---------------------------------------------------------------- 3. 掩码

def test_mask_handwritten_example(impl):
    conv = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    e = CHAR_TOK.encode
    ids = e("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n")
    require(len(ids) == 25, "（测试自检）字符级编码应有 25 个 token", MASK)
    pad = e(EOT)[0]
    expected_labels = [IGNORE] * 21 + e("yo") + e(IME) + e("\n") + [IGNORE] * 3
    _check_labels(impl, conv, CHAR_TOK, 28, ids + [pad] * 3, expected_labels,
                  "手算的例子：只有 'yo<|im_end|>\\n' 这 4 个 token 进 loss（角色头 <|im_start|>assistant\\n 不进）")


def test_mask_multi_turn_with_system_handwritten(impl):
    conv = [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": "r"}, {"role": "assistant", "content": "bc"}]
    text = _ref_template(conv)
    ids, labels = _ref_labels(conv, CHAR_TOK, len(CHAR_TOK.encode(text)))
    marked = _show(CHAR_TOK, ids, labels)
    require(marked == repr("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
                           "⟦a<|im_end|>\n⟧<|im_start|>user\nr<|im_end|>\n<|im_start|>assistant\n⟦bc<|im_end|>\n⟧"),
            f"（测试自检）参照掩码画出来是 {marked}", MASK)
    _check_labels(impl, conv, CHAR_TOK, len(ids), ids, labels,
                  "多轮 + 系统提示：每一个助手回复都进 loss（不只最后一个），系统提示和用户的话都不进")


def test_mask_conversation_opening_with_the_assistant(impl):
    conv = [{"role": "assistant", "content": "hi!"}, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    ids, labels = _ref_labels(conv, CHAR_TOK, len(CHAR_TOK.encode(_ref_template(conv))))
    _check_labels(impl, conv, CHAR_TOK, len(ids), ids, labels,
                  "对话以助手的话开头（助手先打招呼）：位置 0 就是 <|im_start|>assistant\\n，这条回复也进 loss"
                  "（从第 0 个 token 开始找角色头，不要假定前面一定有用户的话）")


@given(conversations(), st.integers(1, 120))
def test_mask_matches_string_span_reference(impl, conv, max_length):
    ids, labels = _ref_labels(conv, CHAR_TOK, max_length)
    _check_labels(impl, conv, CHAR_TOK, max_length, ids, labels, f"对话 {conv!r}")


@given(conversations())
def test_labels_are_not_shifted(impl, conv):
    ids, labels = _as_lists(impl.SFTDataset([conv], CHAR_TOK, 200)[0])
    bad = [i for i, lab in enumerate(labels) if lab != IGNORE and lab != ids[i]]
    require(not bad, f"labels 里不是 −100 的位置应等于同一位置的 input_ids（不移位，模型 forward 里自己移一位），"
                     f"位置 {bad[:5]} 不等：labels {[labels[i] for i in bad[:5]]} vs input_ids {[ids[i] for i in bad[:5]]}"
            + _bug_note(_dataset_run(conv, CHAR_TOK, 200), (ids, labels), _ref_labels(conv, CHAR_TOK, 200)), SHIFT)


@given(conversations(min_turns=1))
def test_matches_reference_solution(impl, conv):
    ref = resolve(MODULE, "solutions")
    exp_ids, exp_labels = _as_lists(ref.SFTDataset([conv], CHAR_TOK, 90)[0])
    _check_labels(impl, conv, CHAR_TOK, 90, exp_ids, exp_labels, f"与参考实现对比，对话 {conv!r}")


# ---------------------------------------------------------------- 4. 性质

@given(conversations(min_turns=1))
def test_truncation_at_any_point_only_cuts_the_full_labels(impl, conv):
    full_len = len(CHAR_TOK.encode(_ref_template(conv)))
    full_ids, full_labels = _as_lists(impl.SFTDataset([conv], CHAR_TOK, full_len)[0])
    for L in range(1, full_len + 1):
        ids, labels = _as_lists(impl.SFTDataset([conv], CHAR_TOK, L)[0])
        if ids != full_ids[:L] or labels != full_labels[:L]:
            exp = _ref_labels(conv, CHAR_TOK, L)
            require(False, f"截断：截到 max_length={L}（完整长度 {full_len}）时，input_ids 与 labels 应正好是完整结果的前 {L} 个：\n"
                           f"  期望 {_show(CHAR_TOK, full_ids[:L], full_labels[:L])}\n"
                           f"  实际 {_show(CHAR_TOK, ids, labels)}"
                    + _bug_note(_dataset_run(conv, CHAR_TOK, L), (ids, labels), exp), TRUNC)


def test_truncated_away_assistant_part_gives_no_loss(impl):
    conv = [{"role": "system", "content": "long system prompt " * 2}, {"role": "user", "content": "question?"},
            {"role": "assistant", "content": "answer"}]
    head = CHAR_TOK.encode(_ref_template(conv[:2], gen=True))
    for L in range(1, len(head) + 1):  # 截断点落在助手回复的第一个 token 之前（含正好截在角色头末尾）
        _, labels = _as_lists(impl.SFTDataset([conv], CHAR_TOK, L)[0])
        require(all(lab == IGNORE for lab in labels),
                f"max_length={L} 时助手回复整个被截掉了，这条样本不应有任何 loss（labels 全是 −100），实际 "
                f"{_show(CHAR_TOK, CHAR_TOK.encode(_ref_template(conv))[:L], labels)}", TRUNC)
    _, labels = _as_lists(impl.SFTDataset([conv], CHAR_TOK, len(head) + 1)[0])
    require(labels[-1] == CHAR_TOK.encode("a")[0] and labels.count(IGNORE) == len(head),
            f"再多留一个 token，回复的第一个字 'a' 就该进 loss（被截断的回复也训练它留下的部分），实际最后一个 label {labels[-1]}",
            TRUNC)
    no_reply = [{"role": "user", "content": "hello"}]
    _, labels = _as_lists(impl.SFTDataset([no_reply], CHAR_TOK, 30)[0])
    require(all(lab == IGNORE for lab in labels), "没有助手回复的对话：labels 应全是 −100", MASK)


@given(conversations(), st.integers(0, 40))
def test_padding_never_in_the_loss(impl, conv, extra):
    n = len(CHAR_TOK.encode(_ref_template(conv)))
    ids, labels = _as_lists(impl.SFTDataset([conv], CHAR_TOK, n + extra)[0])
    pad = CHAR_TOK.encode(EOT)[0]
    require(ids[n:] == [pad] * extra and labels[n:] == [IGNORE] * extra,
            f"模板编码后 {n} 个 token，max_length={n + extra}：后面 {extra} 个位置是 padding，input_ids 应是 {pad}"
            f"（<|endoftext|>），labels 应是 −100。实际 input_ids {ids[n:]}、labels {labels[n:]}"
            + _bug_note(_dataset_run(conv, CHAR_TOK, n + extra), (ids, labels), _ref_labels(conv, CHAR_TOK, n + extra)),
            TRUNC)


@given(conversations(min_turns=1))
def test_generation_prompt_ends_where_the_loss_begins(impl, conv):
    last = max(i for i, m in enumerate(conv) if m["role"] == "assistant")
    prompt = impl.apply_chat_template(conv[:last], add_generation_prompt=True)
    full = impl.apply_chat_template(conv[:last + 1])
    reply = conv[last]["content"] + IME + "\n"
    require(full == prompt + reply,
            f"推理时的提示 + 回复 + '<|im_end|>\\n' 应正好等于训练时的模板（模型才会在见过的格式上接着写）。\n"
            f"  提示 {prompt!r}\n  训练 {full!r}", GEN)
    ids, labels = _as_lists(impl.SFTDataset([conv[:last + 1]], CHAR_TOK, len(CHAR_TOK.encode(full)))[0])
    start = len(CHAR_TOK.encode(prompt))
    require(all(lab == IGNORE for lab in labels[start - 1:start]) and labels[start:] == ids[start:],
            f"最后一个助手回复的 loss 应从生成提示之后的第一个 token（位置 {start}）开始、一直到结尾：\n"
            f"  实际 {_show(CHAR_TOK, ids, labels)}", MASK)


# ---------------------------------------------------------------- 5. 真实的 BPE 分词器

bpe_contents = st.lists(st.sampled_from(["what", " is", " 3", " plus", " 4", "?", "答：", "7", ".", " the",
                                         " answer", "请问", "多少", "hi", " "]), max_size=6).map("".join)


@given(st.lists(st.tuples(bpe_contents, bpe_contents), min_size=1, max_size=3), st.booleans())
def test_bpe_marked_tokens_decode_to_exactly_the_replies(impl, turns, system):
    tok = _bpe()
    conv = ([{"role": "system", "content": "you are a helper"}] if system else [])
    for q, a in turns:
        conv += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    n = len(tok.encode(_ref_template(conv)))
    ids, labels = _as_lists(impl.SFTDataset([conv], tok, n + 3)[0])
    runs, cur = [], None
    for t, lab in zip(ids, labels):
        if lab != IGNORE:
            cur = (cur or []) + [t]
        elif cur is not None:
            runs.append(tok.decode(cur))
            cur = None
    if cur is not None:
        runs.append(tok.decode(cur))
    expected = [a + IME + "\n" for _, a in turns]
    require(runs == expected,
            f"用 BPE 分词器（'assistant' 是一个 token，id 与字符级不同）：进 loss 的 token 连成的片段解码出来，应恰好是"
            f"每个助手回复 + '<|im_end|>\\n'。\n  期望 {expected!r}\n  实际 {runs!r}\n"
            "  （角色头 <|im_start|>assistant\\n 要用分词器编码出来的 token 串去找，不能按字符数或写死的 id 找）", MASK)
