"""kata 的数据：TinyShakespeare（默认语料）、TinyStories 子集、确定性的合成语料，以及字符级分词与取 batch。

查找顺序（TinyShakespeare）：``data_file`` 参数 → ``$KATA_DATA_DIR/tinyshakespeare.txt`` →
缓存目录（``$KATA_CACHE_DIR``，默认 ``~/.cache/minimind-kata``）→ 下载到缓存目录。
每个找到的文件都会做 sha256 校验；校验不过的文件绝不会被悄悄使用。
设置 ``KATA_OFFLINE=1`` 时从不联网（本地找不到就直接报“拿不到数据”，由调用者决定是否改用合成语料）。

常用入口::

    from kata.data import load_corpus, get_experiment_data
    corpus = load_corpus("shakespeare")            # Corpus：text / tokenizer / get_batch / info
    text = get_experiment_data("tinystories", size_mb=10)

命令行::

    python -m kata.data --check                    # 只报告找到了什么，不下载
    python -m kata.data --download-all             # 下载并校验 TinyShakespeare 与 TinyStories 子集
"""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import secrets
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Optional, Union

import torch
from tqdm import tqdm

__all__ = [
    "SHAKESPEARE_URL", "SHAKESPEARE_FILE", "SHAKESPEARE_SHA256", "SHAKESPEARE_BYTES",
    "TINYSTORIES_URL", "TINYSTORIES_FILE", "STORY_SEPARATOR", "CORPUS_NAMES", "SOURCES",
    "DataError", "DataUnavailableError", "OFFLINE_ENV",
    "cache_dir", "data_dir", "offline", "check_data_file", "shakespeare_available", "download", "find_or_download_shakespeare", "fetch_tinystories",
    "synthetic_text", "CharTokenizer", "Corpus", "load_corpus", "get_experiment_data", "main",
]

# ---------------------------------------------------------------------------------------------
# 常量
# ---------------------------------------------------------------------------------------------

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_FILE = "tinyshakespeare.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_BYTES = 1_115_394

# TinyStories 官方发布（Hugging Face hub 上的 roneneldan/TinyStories）；故事之间用 <|endoftext|> 分隔。
TINYSTORIES_FILE = "TinyStoriesV2-GPT4-train.txt"
TINYSTORIES_URL = f"https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/{TINYSTORIES_FILE}"
STORY_SEPARATOR = "<|endoftext|>"

CORPUS_NAMES = ("shakespeare", "tinystories", "synthetic")
SOURCES = ("data_file", "KATA_DATA_DIR", "cache", "download", "generated")

DEFAULT_TINYSTORIES_MB = 10
MB = 1024 * 1024  # size_mb 按 MiB 计：10 → 10 × 1024 × 1024 字节
_CHUNK = 64 * 1024
_DISPLAY = {"shakespeare": "TinyShakespeare", "tinystories": "TinyStories 子集", "synthetic": "合成语料"}


class DataError(RuntimeError):
    """数据问题：下载失败、校验和不符、文件缺失或损坏。"""


class DataUnavailableError(DataError):
    """本地找不到数据，也没能下载（通常是离线）。消息里写明如何手动提供数据；``reason`` 是一句话原因。"""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# 目录
# ---------------------------------------------------------------------------------------------

OFFLINE_ENV = "KATA_OFFLINE"


def offline() -> bool:
    """设置了 ``KATA_OFFLINE=1``（或 true / yes）：只用本地文件，从不下载。"""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    """缓存目录：``$KATA_CACHE_DIR``，未设置时为 ``~/.cache/minimind-kata``。"""
    env = os.environ.get("KATA_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minimind-kata"


def data_dir() -> Optional[Path]:
    """``$KATA_DATA_DIR``（未设置时为 None）。

    相对路径按当前目录解析；若当前目录下不存在而相对仓库根目录存在，则用后者——
    这样 ``KATA_DATA_DIR=data``（仓库根目录下的 data/）在 experiments/NN/ 里运行脚本时也能用。
    """
    env = os.environ.get("KATA_DATA_DIR")
    if not env:
        return None
    p = Path(env).expanduser()
    if not p.is_absolute() and not p.exists():
        from_root = Path(__file__).resolve().parent.parent / p
        if from_root.exists():
            return from_root.resolve()
    return p


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _temp_path_for(dest: Path, kind: str = "part") -> Path:
    # 临时文件和目标在同一文件夹，os.replace 才是原子的；随机后缀让并发的下载互不干扰
    return dest.parent / f".{dest.name}.{kind}-{secrets.token_hex(6)}"


def _atomic_write_bytes(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path_for(dest, "tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# 下载
# ---------------------------------------------------------------------------------------------

def download(
    url: str,
    dest: Union[str, os.PathLike],
    *,
    sha256: Optional[str] = None,
    max_bytes: Optional[int] = None,
    timeout: float = 30,
    progress: bool = True,
) -> Path:
    """把 ``url`` 下载到 ``dest``，要么完整且校验通过地出现在 ``dest``，要么什么都不留下。

    先流式写入同一文件夹里的临时文件 ``.{name}.part-<随机>``，核对 Content-Length、
    （可选）sha256，然后 ``os.replace`` 到位。``max_bytes`` 只取前 N 个字节
    （发送 ``Range: bytes=0-{N-1}``；服务器回 206 或忽略 Range 回 200 都可以）。
    任何失败都删除临时文件并抛出 DataError（Ctrl-C 同样清理，但原样抛出 KeyboardInterrupt）。
    """
    dest = Path(dest)
    if max_bytes is not None and (isinstance(max_bytes, bool) or int(max_bytes) <= 0):
        raise ValueError(f"max_bytes 应为正整数，实际为 {max_bytes!r}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_path_for(dest)
        fout = open(tmp, "xb")
    except OSError as exc:
        raise DataError(f"无法在 {dest.parent} 里创建下载文件：{exc}") from exc

    try:
        with fout:
            got_sha, expected_len, received = _stream_to_file(
                url, fout, max_bytes=max_bytes, timeout=timeout, progress=progress, name=dest.name
            )
        if expected_len is not None and received != expected_len:
            raise DataError(
                f"下载不完整（连接提前断开）：{url}\n"
                f"  期望 {expected_len} 字节（Content-Length），实际收到 {received} 字节"
            )
        if sha256 is not None and got_sha != sha256.lower():
            raise DataError(
                f"下载的文件校验和不符：{url}\n"
                f"  期望 sha256 {sha256.lower()}\n"
                f"  实际 sha256 {got_sha}（{received} 字节）"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _stream_to_file(url, fout, *, max_bytes, timeout, progress, name):
    """返回 (sha256, 期望字节数或 None, 实际字节数)。网络层的错误都换成 DataError。"""
    headers = {"User-Agent": "minimind-kata"}
    if max_bytes is not None:
        headers["Range"] = f"bytes=0-{int(max_bytes) - 1}"
    request = urllib.request.Request(url, headers=headers)
    h = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status = resp.status
            if status not in (200, 206):
                raise DataError(f"下载失败：{url}\n  期望 HTTP 200 或 206，实际 HTTP {status}")
            length = resp.headers.get("Content-Length")
            expected = int(length) if length is not None and length.strip().isdigit() else None
            limit = None
            if max_bytes is not None:
                limit = int(max_bytes)
                if expected is not None:
                    expected = min(expected, limit)
            with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=name, disable=not progress, leave=False) as bar:
                while True:
                    want = _CHUNK if limit is None else min(_CHUNK, limit - received)
                    if want <= 0:
                        break
                    chunk = resp.read(want)
                    if not chunk:
                        break
                    fout.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except DataError:
        raise
    except urllib.error.HTTPError as exc:
        exc.close()
        raise DataError(
            f"下载失败：服务器返回 HTTP {exc.code} {exc.reason}\n  URL：{url}\n"
            f"  期望 HTTP 200（或 206），实际 HTTP {exc.code}"
        ) from exc
    except urllib.error.URLError as exc:
        raise DataError(f"无法连接 {url}：{exc.reason}（可能没有网络）") from exc
    except (http.client.HTTPException, OSError) as exc:
        raise DataError(
            f"下载 {url} 时出错：{type(exc).__name__}: {exc}\n  已收到 {received} 字节"
        ) from exc
    return h.hexdigest(), expected, received


# ---------------------------------------------------------------------------------------------
# TinyShakespeare
# ---------------------------------------------------------------------------------------------

def _check_hash(path: Path, expected: str, what: str) -> None:
    got = _sha256_file(path)
    if got != expected:
        raise DataError(
            f"{what}的 sha256 不对，拒绝使用：{path}\n"
            f"  期望 sha256 {expected}\n"
            f"  实际 sha256 {got}（{path.stat().st_size} 字节）\n"
            f"它不是 {SHAKESPEARE_FILE} 的原版文件（{SHAKESPEARE_BYTES:,} 字节）。请换成正确的文件，或删掉它。"
        )


def _shakespeare_unavailable(reason: str, url: str) -> DataUnavailableError:
    cache = cache_dir()
    return DataUnavailableError(reason=reason, message=
        f"无法获得 TinyShakespeare（{SHAKESPEARE_FILE}）：本地没有找到，也没能下载。\n"
        f"原因：{reason}\n"
        f"任选一种方式提供数据：\n"
        f"  1. 在能上网的机器上下载\n"
        f"       {url}\n"
        f"     保存为 {cache / SHAKESPEARE_FILE}（之后自动找到），或存到任意位置再用 2 或 3\n"
        f"  2. 运行实验时传入 --data-file PATH（PATH 指向那个 {SHAKESPEARE_FILE}）\n"
        f"  3. 设置环境变量 KATA_DATA_DIR，指向放着 {SHAKESPEARE_FILE} 的文件夹，例如\n"
        f"       export KATA_DATA_DIR=$HOME/kata-data\n"
        f"  4. 联网时运行 python -m kata.data --download-all，一次准备好所有数据\n"
        f"  文件应为 {SHAKESPEARE_BYTES:,} 字节，sha256 {SHAKESPEARE_SHA256}\n"
        f"Could not get TinyShakespeare ({SHAKESPEARE_FILE}): not found locally, and it could not be downloaded.\n"
        f"Set KATA_DATA_DIR to a folder that holds {SHAKESPEARE_FILE}, or pass --data-file PATH to the "
        f"experiment, or download {url} manually into {cache}, "
        f"or run `python -m kata.data --download-all` while online."
    )


def _locate_shakespeare(data_file=None, *, download: bool = True, url: Optional[str] = None,
                        progress: bool = True) -> tuple[Path, str]:
    """返回 (路径, 来源)；来源是 SOURCES 之一。"""
    url = url or SHAKESPEARE_URL
    expected = SHAKESPEARE_SHA256  # 每次调用时读取模块常量（测试会替换它）
    if data_file is not None:
        p = check_data_file(data_file)
        _check_hash(p, expected, "--data-file 指定的文件")
        return p, "data_file"

    looked = []
    ddir = data_dir()
    if ddir is not None:
        p = ddir / SHAKESPEARE_FILE
        if p.is_file():
            _check_hash(p, expected, "KATA_DATA_DIR 里的文件")
            return p, "KATA_DATA_DIR"
        looked.append(f"KATA_DATA_DIR={ddir} 里没有 {SHAKESPEARE_FILE}")
    else:
        looked.append("没有设置 KATA_DATA_DIR")

    cached = cache_dir() / SHAKESPEARE_FILE
    if cached.is_file():
        got = _sha256_file(cached)
        if got == expected:
            return cached, "cache"
        print(f"缓存文件 {cached} 已损坏（sha256 {got}，期望 {expected}），已删除，重新下载。",
              file=sys.stderr)
        cached.unlink(missing_ok=True)
    looked.append(f"缓存 {cached} 不存在")

    if not download:
        raise _shakespeare_unavailable("；".join(looked) + "；且 download=False（不下载）", url)
    if offline():
        raise _shakespeare_unavailable("；".join(looked) + f"；且设置了 {OFFLINE_ENV}=1（不下载）", url)
    try:
        _download_url(url, cached, sha256=expected, progress=progress)
    except DataError as exc:
        raise _shakespeare_unavailable("；".join(looked) + f"；下载失败：{exc}", url) from exc
    return cached, "download"


def check_data_file(data_file, *, expected_name: Optional[str] = SHAKESPEARE_FILE) -> Path:
    """``--data-file`` 的值 → 一个存在、可读的普通文件的路径；否则抛出 DataError（只有一句话）。

    指向文件夹时：文件夹里有 ``expected_name`` 就用它，否则报“这是一个文件夹”。
    """
    p = Path(data_file).expanduser()
    want = expected_name or "语料文本文件"
    if not p.exists():
        raise DataError(f"--data-file 指定的 {p} 不存在：检查路径拼写（相对路径按当前目录 {Path.cwd()} 解析）。")
    if p.is_dir():
        if expected_name and (p / expected_name).is_file():
            p = p / expected_name
        else:
            inside = f"（里面也没有 {expected_name}）" if expected_name else ""
            raise DataError(f"--data-file 指向的 {p} 是一个文件夹，不是文件{inside}：请指向 {want} 本身，"
                            f"或者把放着它的文件夹设为 KATA_DATA_DIR。")
    if not p.is_file():
        raise DataError(f"--data-file 指向的 {p} 存在，但不是普通文件（可能是设备、管道或套接字）：请指向 {want} 本身。")
    if not os.access(p, os.R_OK):
        raise DataError(f"--data-file 指向的 {p} 存在，但当前用户没有读取权限：用 chmod u+r 加上读权限，或换一个文件。")
    try:
        with open(p, "rb"):
            pass
    except OSError as exc:
        raise DataError(f"--data-file 指向的 {p} 存在，但打不开（{exc.strerror or exc}）：换一个文件。") from None
    return p


def shakespeare_available() -> bool:
    """本地（KATA_DATA_DIR 或缓存）有没有校验正确的 TinyShakespeare——不联网、不下载、不删文件。"""
    ddir = data_dir()
    for p in ([ddir / SHAKESPEARE_FILE] if ddir is not None else []) + [cache_dir() / SHAKESPEARE_FILE]:
        try:
            if p.is_file() and _sha256_file(p) == SHAKESPEARE_SHA256:
                return True
        except OSError:
            pass
    return False


def find_or_download_shakespeare(data_file=None, *, download: bool = True,
                                 url: Optional[str] = None) -> Path:
    """找到（必要时下载）并校验 tinyshakespeare.txt，返回路径。

    顺序：``data_file`` → ``$KATA_DATA_DIR`` → 缓存 → 下载到缓存。``url`` 默认为 SHAKESPEARE_URL。
    sha256 不对的 data_file / KATA_DATA_DIR 文件 → DataError；损坏的缓存 → 删除后重新下载；
    既找不到又下载不了 → DataUnavailableError（消息里写明怎么手动提供）。
    """
    return _locate_shakespeare(data_file, download=download, url=url)[0]


# ---------------------------------------------------------------------------------------------
# TinyStories 子集
# ---------------------------------------------------------------------------------------------

def _size_tag(size_mb) -> str:
    if isinstance(size_mb, bool) or not isinstance(size_mb, (int, float)) or not size_mb > 0:
        raise ValueError(f"size_mb 应为正数（单位 MB），实际为 {size_mb!r}")
    return f"{size_mb:g}"


def _tinystories_names(size_mb) -> tuple[str, str]:
    tag = _size_tag(size_mb)
    return f"tinystories_{tag}mb.txt", f"tinystories_{tag}mb.json"


def _read_sidecar(path: Path) -> Optional[dict]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
        return meta if isinstance(meta, dict) and isinstance(meta.get("sha256"), str) else None
    except (OSError, ValueError):
        return None


def _tinystories_unavailable(reason: str, url: str, size_mb) -> DataUnavailableError:
    fname, _ = _tinystories_names(size_mb)
    return DataUnavailableError(reason=reason, message=
        f"无法获得 TinyStories 的 {size_mb:g}MB 子集（{fname}）：本地没有找到，也没能下载。\n"
        f"原因：{reason}\n"
        f"任选一种方式提供数据：\n"
        f"  1. 设置环境变量 KATA_DATA_DIR，指向包含 {fname} 的文件夹\n"
        f"  2. 运行实验时传入 --data-file PATH（PATH 指向一个 TinyStories 文本文件）\n"
        f"  3. 联网时运行 python -m kata.data --download-all --tinystories-mb {size_mb:g}\n"
        f"     （只下载官方文件 {url} 的前 {size_mb:g}MB）\n"
        f"Could not get the {size_mb:g} MB TinyStories subset ({fname}). Set KATA_DATA_DIR to a folder "
        f"that holds {fname}, or pass --data-file PATH to the experiment, or run "
        f"`python -m kata.data --download-all --tinystories-mb {size_mb:g}` while online."
    )


def _cut_at_last_story(raw: bytes, complete: bool) -> bytes:
    """只保留完整的故事：截到最后一个分隔符（含）为止；若已拿到整个文件则全部保留。"""
    if complete:
        return raw
    sep = STORY_SEPARATOR.encode()
    idx = raw.rfind(sep)
    if idx < 0:
        raise DataError(f"收到的 {len(raw)} 字节里没有任何 {STORY_SEPARATOR}，无法切出完整的故事")
    return raw[: idx + len(sep)]


def _locate_tinystories(size_mb=DEFAULT_TINYSTORIES_MB, *, url: Optional[str] = None,
                        download: bool = True, progress: bool = True) -> tuple[Path, str]:
    url = url or TINYSTORIES_URL
    fname, sname = _tinystories_names(size_mb)
    looked = []

    ddir = data_dir()
    if ddir is not None:
        p = ddir / fname
        if p.is_file():
            meta = _read_sidecar(ddir / sname)
            if meta is not None:
                got = _sha256_file(p)
                if got != meta["sha256"]:
                    raise DataError(
                        f"KATA_DATA_DIR 里的文件与它的说明文件 {sname} 不符，拒绝使用：{p}\n"
                        f"  期望 sha256 {meta['sha256']}\n  实际 sha256 {got}"
                    )
            return p, "KATA_DATA_DIR"
        looked.append(f"KATA_DATA_DIR={ddir} 里没有 {fname}")
    else:
        looked.append("没有设置 KATA_DATA_DIR")

    cdir = cache_dir()
    cached, sidecar = cdir / fname, cdir / sname
    if cached.is_file():
        meta = _read_sidecar(sidecar)
        got = _sha256_file(cached)
        if meta is not None and got == meta["sha256"]:
            return cached, "cache"
        print(f"缓存文件 {cached} 与说明文件 {sname} 不符或缺少说明文件，已删除，重新下载。",
              file=sys.stderr)
        cached.unlink(missing_ok=True)
        sidecar.unlink(missing_ok=True)
    looked.append(f"缓存 {cached} 不存在")

    if not download:
        raise _tinystories_unavailable("；".join(looked) + "；且 download=False（不下载）", url, size_mb)
    if offline():
        raise _tinystories_unavailable("；".join(looked) + f"；且设置了 {OFFLINE_ENV}=1（不下载）", url, size_mb)

    max_bytes = int(size_mb * MB)
    raw_path = _temp_path_for(cached, "raw")
    try:
        _download_url(url, raw_path, max_bytes=max_bytes, progress=progress)
        raw = raw_path.read_bytes()
        text_bytes = _cut_at_last_story(raw, complete=len(raw) < max_bytes)
        try:
            text_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"下载的 TinyStories 片段不是合法的 UTF-8：{exc}") from exc
    except DataError as exc:
        raise _tinystories_unavailable("；".join(looked) + f"；下载失败：{exc}", url, size_mb) from exc
    finally:
        raw_path.unlink(missing_ok=True)

    _atomic_write_bytes(cached, text_bytes)
    meta = {
        "url": url,
        "bytes_requested": max_bytes,
        "bytes_received": len(raw),
        "bytes_saved": len(text_bytes),
        "n_stories": text_bytes.count(STORY_SEPARATOR.encode()),
        "sha256": hashlib.sha256(text_bytes).hexdigest(),
    }
    _atomic_write_bytes(sidecar, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode())
    return cached, "download"


def fetch_tinystories(size_mb=DEFAULT_TINYSTORIES_MB, *, url: Optional[str] = None,
                      download: bool = True) -> Path:
    """TinyStories 官方训练文件的前 ``size_mb`` MB（MiB），截在最后一个 <|endoftext|> 处。

    找的顺序：``$KATA_DATA_DIR/tinystories_{size_mb}mb.txt`` → 缓存（用旁边的 .json 说明文件里的
    sha256 校验）→ 用 HTTP Range 请求下载到缓存。``url`` 默认为 TINYSTORIES_URL。
    """
    return _locate_tinystories(size_mb, url=url, download=download)[0]


# ---------------------------------------------------------------------------------------------
# 合成语料
# ---------------------------------------------------------------------------------------------

_NAMES = ["ALICE", "BORIS", "CLARA", "DORIAN", "EDMUND", "FIONA", "GRETA", "HECTOR",
          "IMOGEN", "JASPER", "KATE", "LUCIUS", "MIRANDA", "NESTOR", "OLIVIA", "PERCY"]
_NOUNS = ["king", "queen", "sword", "crown", "river", "tower", "horse", "letter", "garden",
          "ship", "storm", "heart", "friend", "enemy", "lamp", "song", "door", "field",
          "owl", "apple", "oath", "island", "army", "moon"]
_ADJS = ["old", "bright", "dark", "gentle", "proud", "silent", "golden", "bitter", "young",
         "noble", "cold", "wild", "honest", "empty", "ancient", "idle"]
_VERBS = [("love", "loves"), ("fear", "fears"), ("carry", "carries"), ("watch", "watches"),
          ("keep", "keeps"), ("seek", "seeks"), ("hold", "holds"), ("know", "knows"),
          ("see", "sees"), ("bring", "brings"), ("praise", "praises"), ("break", "breaks"),
          ("follow", "follows"), ("guard", "guards")]
_PRONOUNS = [("I", False), ("you", False), ("we", False), ("they", False), ("he", True), ("she", True)]
_POSSESSIVES = ["my", "your", "his", "her", "our", "their"]
_PLACES = ["in the garden", "at dawn", "before the night", "by the river", "in the tower",
           "with a heavy heart", "for the crown", "under the moon"]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(rng: random.Random) -> str:
    noun = rng.choice(_NOUNS)
    r = rng.random()
    if r < 0.4:
        return f"the {rng.choice(_ADJS)} {noun}"
    if r < 0.6:
        return f"the {noun}"
    if r < 0.8:
        return f"{rng.choice(_POSSESSIVES)} {noun}"
    adj = rng.choice(_ADJS)
    return f"{_article(adj)} {adj} {noun}"


def _subject(rng: random.Random, cast: list[str]) -> tuple[str, bool]:
    """返回 (主语, 是否第三人称单数)。"""
    r = rng.random()
    if r < 0.45:
        return rng.choice(_PRONOUNS)
    if r < 0.6:
        return rng.choice(cast).capitalize(), True
    return _noun_phrase(rng), True


def _sentence(rng: random.Random, cast: list[str]) -> str:
    r = rng.random()
    if r < 0.55:  # 陈述句：主语 谓语（与主语一致） 宾语 [状语] .
        subj, third = _subject(rng, cast)
        verb = rng.choice(_VERBS)[1 if third else 0]
        s = f"{subj} {verb} {_noun_phrase(rng)}"
        if rng.random() < 0.35:
            s += " " + rng.choice(_PLACES)
        s += "."
    elif r < 0.7:  # 一般疑问句：do/does 与主语一致，动词用原形
        subj, third = _subject(rng, cast)
        s = f"{'does' if third else 'do'} {subj} {rng.choice(_VERBS)[0]} {_noun_phrase(rng)}?"
    elif r < 0.8:  # 特殊疑问句
        s = f"why {rng.choice(['do you', 'do they', 'does the ' + rng.choice(_NOUNS)])} " \
            f"{rng.choice(_VERBS)[0]} {_noun_phrase(rng)}?"
    elif r < 0.9:  # 感叹句
        adj, noun = rng.choice(_ADJS), rng.choice(_NOUNS)
        s = rng.choice([f"O {adj} {noun}!", f"what {_article(adj)} {adj} {noun}!",
                        f"alas, the {noun} is {adj}!"])
    else:  # 并列的系表句
        s = f"the {rng.choice(_NOUNS)} is {rng.choice(_ADJS)}, and the {rng.choice(_NOUNS)} is " \
            f"{rng.choice(_ADJS)}."
    return s  # 句首大写由调用者决定（称呼对方时句首不大写）


@lru_cache(maxsize=8)
def synthetic_text(n_chars: int = 1_000_000, seed: int = 0) -> str:
    """确定性的英文式合成语料（离线时的后备；每台机器上逐字相同），长度恰好为 ``n_chars``。

    只用 ``random.Random(seed)``（不用 torch/numpy 的随机数），词表 ≤ 60 个字符。文法::

        text     := scene*
        scene    := turn{4..10}                 # 每场 2–3 个角色，按固定顺序轮流说话
        turn     := NAME ":\\n" [Addr ", "] sentence{1..3} "\\n\\n"
        Addr     := 上一个说话者的名字（首字母大写），出现概率 0.3
        sentence := Subj Verb Obj [Place] "."                  # 主谓一致：he/she/名词/人名 → loves
                  | ("Do"|"Does") Subj verb Obj "?"              # do/does 与主语一致
                  | "Why" ("do you"|"do they"|"does the" Noun) verb Obj "?"
                  | "O" Adj Noun "!" | "What" ("a"|"an") Adj Noun "!" | "Alas, the" Noun "is" Adj "!"
                  | "The" Noun "is" Adj ", and the" Noun "is" Adj "."
        Subj     := 代词 | 本场角色名 | NP
        NP       := "the" [Adj] Noun | Poss Noun | ("a"|"an") Adj Noun    # a/an 取决于元音

    于是有三种尺度的结构：拼写（词内字母）、文法（一致、冠词、句末标点）和长程结构
    （本场角色名反复出现、轮流说话、称呼上一个说话者）。
    """
    if isinstance(n_chars, bool) or not isinstance(n_chars, int) or n_chars < 0:
        raise ValueError(f"n_chars 应为非负整数，实际为 {n_chars!r}")
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < n_chars:
        cast = rng.sample(_NAMES, rng.choice([2, 2, 3]))
        previous = None
        for turn in range(rng.randint(4, 10)):
            speaker = cast[turn % len(cast)]
            sentences = [_sentence(rng, cast) for _ in range(rng.randint(1, 3))]
            address = previous is not None and rng.random() < 0.3
            sentences = [s[0].upper() + s[1:] for s in sentences]
            if address:
                first = sentences[0]
                if not (first.startswith("I ") or first.startswith("O ") or first.split()[0].upper() in _NAMES):
                    first = first[0].lower() + first[1:]
                sentences[0] = f"{previous.capitalize()}, {first}"
            chunk = f"{speaker}:\n{' '.join(sentences)}\n\n"
            parts.append(chunk)
            total += len(chunk)
            previous = speaker
    return "".join(parts)[:n_chars]


# ---------------------------------------------------------------------------------------------
# 字符级分词
# ---------------------------------------------------------------------------------------------

# 字符级分词器与 07 的 BPETokenizer 同一套接口（encode / decode / save / load / vocab_size），住在 kata.tokenizer；
# 这里重新导出，老代码 `from kata.data import CharTokenizer` 照常可用。
from kata.tokenizer import CharTokenizer  # noqa: E402


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Corpus:
    """一份语料及其来源；tokenizer / train_ids / val_ids 在第一次用到时才构建。"""

    name: str
    text: str
    source: str
    path: Optional[str]
    sha256: str
    fell_back_to_synthetic: bool = False

    def __repr__(self) -> str:
        return (f"Corpus(name={self.name!r}, source={self.source!r}, path={self.path!r}, "
                f"n_chars={len(self.text)}, fell_back_to_synthetic={self.fell_back_to_synthetic})")

    @cached_property
    def tokenizer(self) -> CharTokenizer:
        return CharTokenizer.from_text(self.text)

    @cached_property
    def _ids(self) -> torch.Tensor:
        return self.tokenizer.encode_tensor(self.text)

    @property
    def _n_train(self) -> int:
        return int(len(self._ids) * 0.9)  # 前 90% 训练、后 10% 验证（同 nanoGPT）

    @cached_property
    def train_ids(self) -> torch.Tensor:
        return self._ids[: self._n_train]

    @cached_property
    def val_ids(self) -> torch.Tensor:
        return self._ids[self._n_train:]

    def get_batch(self, split: str, batch_size: int, seq_len: int,
                  generator: Optional[torch.Generator] = None, device="cpu"):
        """随机取 batch_size 段长 seq_len 的片段：x [B, T]，y 为 x 右移一位（int64）。"""
        if split not in ("train", "val"):
            raise ValueError(f"split 应为 'train' 或 'val'，实际为 {split!r}")
        for arg, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg} 应为正整数，实际为 {value!r}")
        data = self.train_ids if split == "train" else self.val_ids
        if seq_len >= len(data):
            raise ValueError(
                f"seq_len 应小于 {split} 部分的长度 {len(data)}（要多留一个字符作 y），实际 seq_len={seq_len}"
            )
        starts = torch.randint(len(data) - seq_len, (batch_size,), generator=generator)
        idx = starts[:, None] + torch.arange(seq_len)
        x, y = data[idx], data[idx + 1]
        if torch.device(device).type != "cpu":
            x, y = x.to(device), y.to(device)
        return x, y

    def info(self) -> dict:
        """写进实验 JSON 的数据说明。"""
        return {
            "name": self.name,
            "source": self.source,
            "path": self.path,
            "sha256": self.sha256,
            "n_chars": len(self.text),
            "vocab_size": self.tokenizer.vocab_size,
            "fell_back_to_synthetic": self.fell_back_to_synthetic,
        }


def _corpus_from_file(name: str, path: Path, source: str) -> Corpus:
    raw = path.read_bytes()  # 按字节读再解码：不做换行符转换，sha256 与文件一致
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} 不是合法的 UTF-8 文本：{exc}") from exc
    return Corpus(name=name, text=text, source=source, path=str(path),
                  sha256=hashlib.sha256(raw).hexdigest())


def _synthetic_corpus(n_chars: int = 1_000_000, *, fell_back: bool = False) -> Corpus:
    text = synthetic_text(n_chars)
    return Corpus(name="synthetic", text=text, source="generated", path=None,
                  sha256=_sha256_text(text), fell_back_to_synthetic=fell_back)


def load_corpus(name: str = "shakespeare", *, size_mb=None, data_file=None,
                allow_synthetic: bool = False, download: bool = True) -> Corpus:
    """按名字取语料：'shakespeare'（默认）、'tinystories'（size_mb 默认 10）或 'synthetic'。

    拿不到真实数据时：``allow_synthetic=True`` → 打印提示并返回合成语料
    （``fell_back_to_synthetic=True``）；否则抛出 DataUnavailableError。
    'synthetic' 的 size_mb 表示要生成多少 MB（MiB）字符，默认 1,000,000 个字符。
    """
    if name not in CORPUS_NAMES:
        raise ValueError(f"未知的语料名 {name!r}；可选：{', '.join(CORPUS_NAMES)}")
    if name == "synthetic":
        if data_file is not None:
            raise ValueError("合成语料是生成的，不接受 data_file")
        if size_mb is None:
            return _synthetic_corpus()
        _size_tag(size_mb)  # 校验
        return _synthetic_corpus(int(size_mb * MB))
    if name == "shakespeare" and size_mb is not None:
        raise ValueError("size_mb 只用于 'tinystories' 和 'synthetic'；TinyShakespeare 总是整个文件")
    try:
        if name == "shakespeare":
            path, source = _locate_shakespeare(data_file, download=download)
        elif data_file is not None:
            path, source = check_data_file(data_file, expected_name=None), "data_file"
        else:
            path, source = _locate_tinystories(size_mb or DEFAULT_TINYSTORIES_MB, download=download)
    except DataUnavailableError as exc:
        if not allow_synthetic:
            raise
        print(f"没有找到 {_DISPLAY[name]}，也无法下载：本次实验改用合成语料 synthetic"
              f"（结果与真实语料不能直接比较，实验记录里会标明 fell_back_to_synthetic）。\n"
              f"想用真实数据：设置 KATA_DATA_DIR，或传 --data-file PATH，或联网运行 "
              f"python -m kata.data --download-all。\n原因：{exc.reason}",
              file=sys.stderr)
        return _synthetic_corpus(fell_back=True)
    return _corpus_from_file(name, path, source)


def get_experiment_data(name: str, size_mb=None, **kw) -> str:
    """课程 README 里的接口：返回语料文本（= ``load_corpus(name, size_mb=size_mb, **kw).text``）。"""
    return load_corpus(name, size_mb=size_mb, **kw).text


# ---------------------------------------------------------------------------------------------
# 命令行
# ---------------------------------------------------------------------------------------------

def _describe(path: Path, source: str) -> str:
    return f"{path}（来源 {source}，{path.stat().st_size:,} 字节）"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kata.data",
        description="准备 / 检查 kata 的实验数据（TinyShakespeare 与 TinyStories 子集）。不带参数等同于 --check。",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--download-all", action="store_true",
                      help="下载并校验 TinyShakespeare 和 TinyStories 子集（已有的直接校验，不重复下载）")
    mode.add_argument("--check", action="store_true", help="只报告找到了哪些数据，不下载")
    parser.add_argument("--tinystories-mb", type=float, default=DEFAULT_TINYSTORIES_MB,
                        help=f"TinyStories 子集大小，单位 MB（默认 {DEFAULT_TINYSTORIES_MB}）")
    parser.add_argument("--data-file", default=None, help="用这个 tinyshakespeare.txt，而不是去找/下载")
    args = parser.parse_args(argv)
    size_mb = args.tinystories_mb
    if not size_mb > 0:
        parser.error("--tinystories-mb 应为正数")
    if float(size_mb).is_integer():
        size_mb = int(size_mb)
    fetch = bool(args.download_all)

    ddir = data_dir()
    print(f"缓存目录（KATA_CACHE_DIR）：{cache_dir()}")
    print(f"数据目录（KATA_DATA_DIR）：{ddir if ddir is not None else '未设置'}")
    ok = True
    try:
        path, source = _locate_shakespeare(args.data_file, download=fetch)
        print(f"TinyShakespeare：{_describe(path, source)}，sha256 正确")
    except DataUnavailableError as exc:
        ok = False
        if fetch:
            print(str(exc), file=sys.stderr)
        else:
            print("TinyShakespeare：未找到（默认语料；运行 python -m kata.data --download-all，"
                  "或设置 KATA_DATA_DIR）")
    except DataError as exc:
        ok = False
        print(str(exc), file=sys.stderr)

    label = f"TinyStories {size_mb:g}MB 子集"
    try:
        path, source = _locate_tinystories(size_mb, download=fetch)
        print(f"{label}：{_describe(path, source)}")
    except DataUnavailableError as exc:
        if fetch:
            ok = False
            print(str(exc), file=sys.stderr)
        else:  # --check 时 TinyStories 是可选的，不影响退出码
            print(f"{label}：未找到（可选；联网运行 python -m kata.data --download-all "
                  f"--tinystories-mb {size_mb:g} 下载）")
    except DataError as exc:
        ok = False
        print(str(exc), file=sys.stderr)
    return 0 if ok else 1


_download_url = download  # 内部别名：几个函数有名为 download 的布尔参数，会遮住同名函数

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\n已中断。" if sys.stderr.isatty() else "已中断。", file=sys.stderr)
        sys.exit(130)
