"""离线的指令数据（模块 10）：确定性生成、答案可以逐字验证的小任务，以及 minimind SFT jsonl 的读写。

为什么自己造数据：这些机器不联网，minimind 的 SFT 语料（``sft_t2t_mini.jsonl`` 等，几百 MB）也不适合在笔记本上练手。
这里的每个任务都有唯一正确的答案，所以“微调前 / 微调后答对了多少”可以用**精确匹配**来量，不需要人来打分。

任务（``TASKS``；每个都有英文和中文两种问法，每种语言两个模板）：

| 任务 | 实例 | 例子（英文） | 答案 |
|---|---|---|---|
| add | 两个 0–99 的整数 | What is 12 plus 7? | 19 |
| sub | a ≥ b，都在 0–99 | What is 12 minus 7? | 5 |
| reverse | 一个单词（WORDS） | Reverse the word: apple | elppa |
| upper | 一个单词 | Write apple in capital letters. | APPLE |
| count | 单词 + 一个字母 | How many times does the letter p appear in apple? | 2 |
| next_letter | a–y 中的一个字母 | What letter comes after c? | d |
| next_number | 0–998 | What number comes after 41? | 42 |
| copy | 三个单词 | Repeat exactly: red sun box | red sun box |

**按实例划分 train / held-out**：一个实例（例如 add 的 (12, 7)、reverse 的 "apple"）由它的任务名和内容的 sha256 决定落在哪一边
（约 20% 在 held-out），与随机种子、模板、语言都无关——held-out 里的题目在训练集里一次都没出现过（换个问法也没有）。
``make_examples(n, split, seed)`` 在给定的一边里按种子确定地抽 n 个例子：同样的参数永远得到同样的列表。

minimind 的 SFT jsonl：一行一个 JSON 对象 ``{"conversations": [{"role": "user", "content": "…"}, {"role": "assistant", …}]}``
（minimind-3 的行里还可能有 ``reasoning_content`` / ``tools`` / ``tool_calls`` 字段，空值时忽略）。``read_sft_jsonl`` 读它，
``write_sft_jsonl`` 写它（先写临时文件再 os.replace，不会留下写了一半的文件）。
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

__all__ = ["TASKS", "LANGS", "WORDS", "Example", "make_examples", "split_of", "check_answer", "accuracy_by_task",
           "read_sft_jsonl", "write_sft_jsonl", "alphabet", "SFTDataError"]

TASKS = ("add", "sub", "reverse", "upper", "count", "next_letter", "next_number", "copy")
LANGS = ("en", "zh")
SPLITS = ("train", "held_out")
HELD_OUT_PERCENT = 20

# 短的英文小写单词（3–6 个字母）。reverse / upper / count / copy 都从这里取。
WORDS = tuple("""
apple arm baby bag ball bank bed bell bird boat body bone book box boy bread cake car cat chair city
cloud coat cow cup day desk dog door dress duck egg eye face farm fish flag floor fox frog game girl
goat gold hand hat head hill horse house ice jam key king lamp leg lion lip map milk moon mouse nest
nose oil pen pig pin queen rain ring river road rock roof room rose salt sea seed sheep ship shoe sky
snow sock song star stone sun table tail tea tent tiger toe tree van wall water whale wind wing wolf
yard zoo
""".split())

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "add": {"en": ("What is {a} plus {b}?", "Add {a} and {b}."),
            "zh": ("{a}加{b}等于多少？", "计算{a}+{b}。")},
    "sub": {"en": ("What is {a} minus {b}?", "Subtract {b} from {a}."),
            "zh": ("{a}减{b}等于多少？", "计算{a}-{b}。")},
    "reverse": {"en": ("Reverse the word: {w}", "Write {w} backwards."),
                "zh": ("把单词倒过来写：{w}", "倒序写出{w}。")},
    "upper": {"en": ("Write {w} in capital letters.", "Uppercase: {w}"),
              "zh": ("把{w}写成大写字母。", "大写：{w}")},
    "count": {"en": ("How many times does the letter {c} appear in {w}?", "Count the letter {c} in {w}."),
              "zh": ("单词{w}里有几个字母{c}？", "数一数{w}中字母{c}的个数。")},
    "next_letter": {"en": ("What letter comes after {c}?", "Next letter after {c}:"),
                    "zh": ("字母{c}的下一个字母是什么？", "{c}后面的字母是？")},
    "next_number": {"en": ("What number comes after {n}?", "Next number after {n}:"),
                    "zh": ("{n}的下一个数是几？", "{n}后面的数是？")},
    "copy": {"en": ("Repeat exactly: {t}", "Copy this: {t}"),
             "zh": ("原样重复：{t}", "照抄：{t}")},
}


class SFTDataError(ValueError):
    """参数或文件内容不对：一句中文说明期望什么。"""


@dataclass(frozen=True)
class Example:
    """一道题：task、lang（"en"/"zh"）、prompt（用户的话）、answer（唯一正确的回复）、key（实例，决定 split）。"""
    task: str
    lang: str
    prompt: str
    answer: str
    key: str

    def messages(self, with_answer: bool = True, system: str | None = None) -> list[dict]:
        msgs = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": self.prompt})
        if with_answer:
            msgs.append({"role": "assistant", "content": self.answer})
        return msgs


def split_of(task: str, key: str) -> str:
    """实例落在哪一边：只由 (task, key) 的 sha256 决定，约 20% 是 held_out。"""
    h = int.from_bytes(hashlib.sha256(f"{task}:{key}".encode("utf-8")).digest()[:8], "big")
    return "held_out" if h % 100 < HELD_OUT_PERCENT else "train"


def _instance(task: str, rng: random.Random) -> tuple[str, dict, str]:
    """抽一个实例：返回 (key, 模板参数, 答案)。"""
    if task == "add":
        a, b = rng.randrange(100), rng.randrange(100)
        return f"{a},{b}", {"a": a, "b": b}, str(a + b)
    if task == "sub":
        a, b = rng.randrange(100), rng.randrange(100)
        a, b = max(a, b), min(a, b)
        return f"{a},{b}", {"a": a, "b": b}, str(a - b)
    if task in ("reverse", "upper"):
        w = rng.choice(WORDS)
        return w, {"w": w}, (w[::-1] if task == "reverse" else w.upper())
    if task == "count":
        w = rng.choice(WORDS)
        # 多数时候问单词里有的字母，偶尔问一个没有的（答案 0）
        c = rng.choice(w) if rng.random() < 0.8 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        return f"{w},{c}", {"w": w, "c": c}, str(w.count(c))
    if task == "next_letter":
        c = chr(ord("a") + rng.randrange(25))
        return c, {"c": c}, chr(ord(c) + 1)
    if task == "next_number":
        n = rng.randrange(999)
        return str(n), {"n": n}, str(n + 1)
    if task == "copy":
        t = " ".join(rng.choice(WORDS) for _ in range(3))
        return t, {"t": t}, t
    raise SFTDataError(f"没有这个任务：{task!r}（可用：{', '.join(TASKS)}）")


def make_examples(n: int, split: str = "train", seed: int = 0, *, tasks: Sequence[str] = TASKS,
                  langs: Sequence[str] = LANGS) -> list[Example]:
    """在 split（"train" 或 "held_out"）里确定地抽 n 道题；任务按 tasks 轮流，语言、模板、实例由 seed 决定。"""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SFTDataError(f"n 应为 ≥ 0 的整数，实际 {n!r}")
    if split not in SPLITS:
        raise SFTDataError(f"split 应为 {' 或 '.join(SPLITS)}，实际 {split!r}")
    tasks, langs = tuple(tasks), tuple(langs)
    bad = [t for t in tasks if t not in TASKS] + [lang for lang in langs if lang not in LANGS]
    if not tasks or not langs or bad:
        raise SFTDataError(f"tasks 应取自 {TASKS}、langs 应取自 {LANGS}，且都不能为空；不认识的：{bad}")
    rng = random.Random(f"sft_data:{seed}:{split}")
    out = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        for _ in range(10_000):   # 拒绝采样：抽到另一边的实例就重抽（约 20% / 80% 的接受率）
            key, params, answer = _instance(task, rng)
            if split_of(task, key) == split:
                break
        else:  # pragma: no cover - 只有实例空间全落在一边时才会发生
            raise SFTDataError(f"任务 {task} 在 {split} 里抽不到实例")
        lang = rng.choice(langs)
        prompt = rng.choice(TEMPLATES[task][lang]).format(**params)
        out.append(Example(task, lang, prompt, answer, key))
    return out


def alphabet(examples: Iterable[Example] | None = None) -> str:
    """这些题（默认：全部模板、字母、数字）用到的所有字符，排好序；给字符级分词器用。"""
    chars = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 \n")
    if examples is None:
        for per_lang in TEMPLATES.values():
            for templates in per_lang.values():
                for t in templates:
                    chars |= set(t.replace("{a}", "").replace("{b}", "").replace("{w}", "").replace("{c}", "")
                                 .replace("{n}", "").replace("{t}", ""))
    else:
        for e in examples:
            chars |= set(e.prompt) | set(e.answer)
    return "".join(sorted(chars))


def check_answer(example: Example, reply: str) -> bool:
    """精确匹配：去掉首尾空白后与标准答案逐字相同。"""
    return reply.strip() == example.answer


def accuracy_by_task(examples: Sequence[Example], replies: Sequence[str]) -> dict[str, float]:
    """每个任务的精确匹配准确率（0–1），外加 "all"。"""
    if len(examples) != len(replies):
        raise SFTDataError(f"examples 有 {len(examples)} 个，replies 有 {len(replies)} 个：应一一对应")
    hits: dict[str, list[int]] = {}
    for e, r in zip(examples, replies):
        ok = int(check_answer(e, r))
        hits.setdefault(e.task, []).append(ok)
        hits.setdefault("all", []).append(ok)
    return {k: sum(v) / len(v) for k, v in hits.items()}


# ---------------------------------------------------------------------------------------------
# minimind 的 SFT jsonl
# ---------------------------------------------------------------------------------------------

_OPTIONAL_KEYS = ("reasoning_content", "tools", "tool_calls")


def read_sft_jsonl(path, *, limit: int | None = None) -> list[list[dict]]:
    """读 minimind 格式的 SFT jsonl：返回对话的列表，每段对话是 [{"role", "content"}, …]。

    空行跳过；``reasoning_content`` / ``tools`` / ``tool_calls`` 为空（null、""、[]）时丢掉，非空时原样保留
    （模块 10 的 apply_chat_template 会用中文报错说不支持）。坏行报 SFTDataError，指出第几行、缺什么。
    """
    p = Path(path)
    if not p.is_file():
        raise SFTDataError(f"找不到 SFT 数据文件：{p}" + ("（这是一个目录）" if p.is_dir() else ""))
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise SFTDataError(f"limit 应为 ≥ 0 的整数或 None，实际 {limit!r}")
    out: list[list[dict]] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SFTDataError(f"{p} 第 {lineno} 行不是合法的 JSON：{exc.msg}（第 {exc.colno} 列）") from None
            conv = row.get("conversations") if isinstance(row, dict) else None
            if not isinstance(conv, list) or not conv:
                raise SFTDataError(f"{p} 第 {lineno} 行应是 {{\"conversations\": [{{\"role\": …, \"content\": …}}, …]}}，"
                                   f"实际 {line.strip()[:80]!r}")
            msgs = []
            for k, m in enumerate(conv):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise SFTDataError(f"{p} 第 {lineno} 行的第 {k} 条消息应有字符串的 role 和 content，实际 {m!r}")
                msg = {"role": m["role"], "content": m["content"]}
                msg.update({key: m[key] for key in _OPTIONAL_KEYS if m.get(key)})
                msgs.append(msg)
            out.append(msgs)
    return out


def write_sft_jsonl(path, conversations: Iterable[Sequence[dict]]) -> Path:
    """把对话写成 minimind 格式的 jsonl（UTF-8、不转义中文）；先写临时文件再 os.replace。"""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for conv in conversations:
                f.write(json.dumps({"conversations": [dict(m) for m in conv]}, ensure_ascii=False) + "\n")
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p
