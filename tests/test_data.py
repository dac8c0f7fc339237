"""kata.data 的测试：下载（对着本机 HTTP 服务器）、查找顺序、校验、TinyStories 子集、合成语料、分词与取 batch。

不联网：所有 URL 都指向 127.0.0.1 上的测试服务器或一个关闭的端口。
设置了 KATA_DATA_DIR（CI 指向放着真实 tinyshakespeare.txt 的文件夹）时，另测真实文件。
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from kata import data

REAL_DATA_DIR = os.environ.get("KATA_DATA_DIR")  # 在 autouse fixture 清掉它之前记下来
REPO_ROOT = Path(__file__).resolve().parent.parent

GOOD = b"minimind-kata test file\n" * 200
BAD = b"this is not the file you are looking for\n" * 50
FAKE_SHAKESPEARE = b"First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 300
SEP = data.STORY_SEPARATOR.encode()
STORIES = [
    (f"Once upon a time there was a little robot number {i}. "
     + "It liked to play in the sun. " * (1 + i % 7)
     + "The end.").encode()
    for i in range(400)
]
STORIES_FILE = b"".join(s + b"\n" + SEP + b"\n" for s in STORIES)
SMALL_STORIES_FILE = b"Tom had a red ball.\n" + SEP + b"\nSue had a blue cup."  # 整个文件，末尾没有分隔符


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------------------------------------
# 本机 HTTP 服务器
# ---------------------------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    routes = {  # 路径 → (内容, 是否支持 Range)
        "/good.txt": (GOOD, True),
        "/bad.txt": (BAD, True),
        "/shakespeare.txt": (FAKE_SHAKESPEARE, True),
        "/stories.txt": (STORIES_FILE, True),
        "/stories-norange.txt": (STORIES_FILE, False),
        "/stories-small.txt": (SMALL_STORIES_FILE, True),
    }

    def log_message(self, *args):  # 不往 stderr 打访问日志
        pass

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        if self.path == "/truncated.txt":  # 声称 1000+ 字节，只发一部分就断开
            self.send_response(200)
            self.send_header("Content-Length", str(len(GOOD) + 1000))
            self.end_headers()
            self.wfile.write(GOOD[:100])
            self.wfile.flush()
            self.close_connection = True
            return
        if self.path == "/error500":
            self.send_error(500, "boom")
            return
        if self.path not in self.routes:
            self.send_error(404)
            return
        body, honor_range = self.routes[self.path]
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if honor_range and m:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(body) - 1, len(body) - 1)
            part = body[start:end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(body)}")
        else:
            part = body
            self.send_response(200)
        self.send_header("Content-Length", str(len(part)))
        self.end_headers()
        self.wfile.write(part)


@pytest.fixture(scope="module")
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.requests = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


@pytest.fixture
def web(server):
    """每个测试开始时清空服务器的请求记录。"""
    server.requests.clear()
    return server


@pytest.fixture(scope="module")
def closed_url():
    """一个没人监听的端口：连接会被立即拒绝（模拟离线）。"""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch, closed_url):
    """每个测试：独立的缓存目录、没有 KATA_DATA_DIR、默认 URL 指向关闭的端口（绝不联网）。"""
    monkeypatch.setenv("KATA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KATA_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "SHAKESPEARE_URL", closed_url + "/input.txt")
    monkeypatch.setattr(data, "TINYSTORIES_URL", closed_url + "/stories.txt")


@pytest.fixture
def fake_shakespeare(monkeypatch, web):
    """把“官方” TinyShakespeare 换成测试服务器上的一个小文件（URL 与 sha256 都换）。"""
    monkeypatch.setattr(data, "SHAKESPEARE_URL", web.url + "/shakespeare.txt")
    monkeypatch.setattr(data, "SHAKESPEARE_SHA256", sha(FAKE_SHAKESPEARE))
    return web


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------------
# download()
# ---------------------------------------------------------------------------------------------

def test_download_success(tmp_path, web):
    dest = tmp_path / "dl" / "good.txt"
    out = data.download(web.url + "/good.txt", dest, sha256=sha(GOOD), progress=False)
    assert out == dest
    assert dest.read_bytes() == GOOD
    assert files_in(dest.parent) == ["good.txt"], "下载完成后不应留下临时文件"


def test_download_max_bytes_uses_range(tmp_path, web):
    dest = tmp_path / "dl" / "head.txt"
    data.download(web.url + "/good.txt", dest, max_bytes=10, progress=False)
    assert dest.read_bytes() == GOOD[:10]
    assert web.requests == [("/good.txt", "bytes=0-9")]


def test_download_max_bytes_when_server_ignores_range(tmp_path, web):
    dest = tmp_path / "dl" / "head.txt"
    data.download(web.url + "/stories-norange.txt", dest, max_bytes=100, progress=False)
    assert dest.read_bytes() == STORIES_FILE[:100]


@pytest.mark.parametrize(
    "path, sha256, words",
    [
        ("/bad.txt", sha(GOOD), [sha(GOOD), sha(BAD), "期望", "实际"]),
        ("/truncated.txt", None, [str(len(GOOD) + 1000), "100", "期望", "实际"]),
        ("/error500", None, ["500", "期望", "实际"]),
        ("/missing.txt", None, ["404"]),
        (None, None, ["无法连接"]),  # 关闭的端口
    ],
    ids=["checksum", "truncated", "http500", "http404", "connection-refused"],
)
def test_download_failure_leaves_nothing(tmp_path, web, closed_url, path, sha256, words):
    url = (web.url + path) if path else (closed_url + "/good.txt")
    dest = tmp_path / "dl" / "file.txt"
    with pytest.raises(data.DataError) as info:
        data.download(url, dest, sha256=sha256, progress=False)
    msg = str(info.value)
    assert url in msg
    for word in words:
        assert word in msg, f"错误消息里应有 {word!r}：{msg}"
    assert not dest.exists()
    assert files_in(dest.parent) == [], f"失败后不应留下任何文件（含临时文件）：{files_in(dest.parent)}"


def test_download_failure_keeps_existing_destination(tmp_path, web):
    dest = tmp_path / "file.txt"
    dest.write_bytes(b"old")
    with pytest.raises(data.DataError):
        data.download(web.url + "/bad.txt", dest, sha256=sha(GOOD), progress=False)
    assert dest.read_bytes() == b"old"
    assert files_in(tmp_path) == ["file.txt"]


def test_download_interrupted_cleans_up(tmp_path, web, monkeypatch):
    class InterruptingBar:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            raise KeyboardInterrupt

    monkeypatch.setattr(data, "tqdm", InterruptingBar)
    dest = tmp_path / "dl" / "good.txt"
    with pytest.raises(KeyboardInterrupt):
        data.download(web.url + "/good.txt", dest)
    assert files_in(dest.parent) == []


# ---------------------------------------------------------------------------------------------
# TinyShakespeare：查找顺序与校验
# ---------------------------------------------------------------------------------------------

def test_lookup_order(tmp_path, monkeypatch, fake_shakespeare):
    explicit = tmp_path / "explicit.txt"
    ddir = tmp_path / "datadir"
    ddir.mkdir()
    cache = data.cache_dir()
    cache.mkdir(parents=True)
    for p in (explicit, ddir / data.SHAKESPEARE_FILE, cache / data.SHAKESPEARE_FILE):
        p.write_bytes(FAKE_SHAKESPEARE)
    monkeypatch.setenv("KATA_DATA_DIR", str(ddir))

    c = data.load_corpus("shakespeare", data_file=explicit)
    assert (c.source, c.path) == ("data_file", str(explicit))

    c = data.load_corpus("shakespeare")
    assert (c.source, c.path) == ("KATA_DATA_DIR", str(ddir / data.SHAKESPEARE_FILE))

    (ddir / data.SHAKESPEARE_FILE).unlink()  # KATA_DATA_DIR 设了但里面没有文件 → 继续找缓存
    c = data.load_corpus("shakespeare")
    assert (c.source, c.path) == ("cache", str(cache / data.SHAKESPEARE_FILE))
    assert fake_shakespeare.requests == [], "本地找得到时不应下载"

    (cache / data.SHAKESPEARE_FILE).unlink()
    c = data.load_corpus("shakespeare")
    assert (c.source, c.path) == ("download", str(cache / data.SHAKESPEARE_FILE))
    assert [p for p, _ in fake_shakespeare.requests] == ["/shakespeare.txt"]
    assert c.text.encode() == FAKE_SHAKESPEARE
    assert c.sha256 == sha(FAKE_SHAKESPEARE)

    assert data.find_or_download_shakespeare() == cache / data.SHAKESPEARE_FILE  # 现在在缓存里
    assert len(fake_shakespeare.requests) == 1


def test_data_file_may_be_a_folder(tmp_path, fake_shakespeare):
    (tmp_path / data.SHAKESPEARE_FILE).write_bytes(FAKE_SHAKESPEARE)
    assert data.find_or_download_shakespeare(tmp_path) == tmp_path / data.SHAKESPEARE_FILE


@pytest.mark.parametrize("where", ["KATA_DATA_DIR", "data_file"])
def test_wrong_hash_file_is_refused(tmp_path, monkeypatch, fake_shakespeare, where):
    wrong = tmp_path / "wrong" / data.SHAKESPEARE_FILE
    wrong.parent.mkdir()
    wrong.write_bytes(BAD)
    cache = data.cache_dir()  # 缓存里有好文件也不能跳过坏文件
    cache.mkdir(parents=True)
    (cache / data.SHAKESPEARE_FILE).write_bytes(FAKE_SHAKESPEARE)
    kwargs = {}
    if where == "KATA_DATA_DIR":
        monkeypatch.setenv("KATA_DATA_DIR", str(wrong.parent))
    else:
        kwargs["data_file"] = wrong
    with pytest.raises(data.DataError) as info:
        data.load_corpus("shakespeare", allow_synthetic=True, **kwargs)
    assert not isinstance(info.value, data.DataUnavailableError), "错误的文件不应悄悄退回合成语料"
    msg = str(info.value)
    assert str(wrong) in msg and sha(BAD) in msg and sha(FAKE_SHAKESPEARE) in msg
    assert fake_shakespeare.requests == []


def test_missing_data_file_raises(tmp_path):
    with pytest.raises(data.DataError, match="data-file"):
        data.find_or_download_shakespeare(tmp_path / "nope.txt")


def test_data_file_that_is_not_a_readable_file_says_so_in_one_sentence(tmp_path, monkeypatch):
    """文件夹（里面没有 tinyshakespeare.txt）、管道、没有读权限：各一句话，说清楚是哪种情况。"""
    cases = {tmp_path: "是一个文件夹，不是文件（里面也没有 tinyshakespeare.txt）"}
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe")
        cases[tmp_path / "pipe"] = "存在，但不是普通文件"
    locked = tmp_path / "locked.txt"
    locked.write_bytes(FAKE_SHAKESPEARE)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == locked else real_access(p, mode, **kw))
    cases[locked] = "存在，但当前用户没有读取权限"
    for path, words in cases.items():
        with pytest.raises(data.DataError) as info:
            data.load_corpus("shakespeare", data_file=path, allow_synthetic=True)
        msg = str(info.value)
        assert words in msg and str(path) in msg and "\n" not in msg, msg
        assert not isinstance(info.value, data.DataUnavailableError), "坏的 --data-file 不应悄悄退回合成语料"
    with pytest.raises(data.DataError, match="是一个文件夹"):
        data.load_corpus("tinystories", data_file=tmp_path)


def test_offline_env_never_downloads(monkeypatch, fake_shakespeare):
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    assert data.offline()
    with pytest.raises(data.DataUnavailableError) as info:
        data.find_or_download_shakespeare()
    assert "KATA_OFFLINE=1" in str(info.value) and fake_shakespeare.requests == []
    with pytest.raises(data.DataUnavailableError, match="KATA_OFFLINE=1"):
        data.fetch_tinystories(0.01, url=fake_shakespeare.url + "/stories.txt")
    assert fake_shakespeare.requests == []
    c = data.load_corpus("shakespeare", allow_synthetic=True)
    assert c.fell_back_to_synthetic and fake_shakespeare.requests == []
    monkeypatch.setenv(data.OFFLINE_ENV, "0")
    assert not data.offline()
    assert data.load_corpus("shakespeare").source == "download"


def test_shakespeare_available_looks_only_locally(tmp_path, monkeypatch, fake_shakespeare):
    assert data.shakespeare_available() is False
    ddir = tmp_path / "dd"
    ddir.mkdir()
    (ddir / data.SHAKESPEARE_FILE).write_bytes(BAD)
    monkeypatch.setenv("KATA_DATA_DIR", str(ddir))
    assert data.shakespeare_available() is False, "sha256 不对的文件不算"
    (ddir / data.SHAKESPEARE_FILE).write_bytes(FAKE_SHAKESPEARE)
    assert data.shakespeare_available() is True
    assert fake_shakespeare.requests == []


def test_corrupt_cache_is_replaced(fake_shakespeare, capsys):
    cached = data.cache_dir() / data.SHAKESPEARE_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(FAKE_SHAKESPEARE[:-10])  # 截断了的缓存
    c = data.load_corpus("shakespeare")
    assert c.source == "download"
    assert cached.read_bytes() == FAKE_SHAKESPEARE
    assert len(fake_shakespeare.requests) == 1
    assert "损坏" in capsys.readouterr().err


def test_offline_raises_friendly_error(closed_url):
    with pytest.raises(data.DataUnavailableError) as info:
        data.load_corpus("shakespeare")
    msg = str(info.value)
    for word in ["KATA_DATA_DIR", "--data-file", "python -m kata.data --download-all",
                 closed_url + "/input.txt", data.SHAKESPEARE_SHA256, "Could not get"]:
        assert word in msg, f"离线提示里应有 {word!r}：\n{msg}"
    assert "shared" not in msg, "不要提示只在作者机器上存在的文件夹（../shared/data）"
    assert files_in(data.cache_dir()) == []


def test_download_false_never_touches_network(monkeypatch, fake_shakespeare):
    with pytest.raises(data.DataUnavailableError, match="download=False"):
        data.find_or_download_shakespeare(download=False)
    assert fake_shakespeare.requests == []


def test_wrong_download_is_not_kept(monkeypatch, web):
    monkeypatch.setattr(data, "SHAKESPEARE_URL", web.url + "/bad.txt")
    with pytest.raises(data.DataUnavailableError) as info:
        data.find_or_download_shakespeare()
    assert sha(BAD) in str(info.value)
    assert files_in(data.cache_dir()) == []


@pytest.mark.parametrize("name", ["shakespeare", "tinystories"])
def test_allow_synthetic_falls_back(name, capsys):
    c = data.load_corpus(name, allow_synthetic=True)
    assert c.name == "synthetic" and c.source == "generated" and c.path is None
    assert c.fell_back_to_synthetic is True
    assert c.info()["fell_back_to_synthetic"] is True
    assert c.text == data.synthetic_text()
    err = capsys.readouterr().err
    assert "也无法下载：本次实验改用合成语料 synthetic" in err
    with pytest.raises(data.DataUnavailableError):
        data.load_corpus(name, allow_synthetic=False)


def test_unknown_corpus_name():
    with pytest.raises(ValueError) as info:
        data.load_corpus("wikipedia")
    for name in data.CORPUS_NAMES:
        assert name in str(info.value)


def test_cache_dir_default(monkeypatch):
    monkeypatch.delenv("KATA_CACHE_DIR")
    assert data.cache_dir() == Path.home() / ".cache" / "minimind-kata"


# ---------------------------------------------------------------------------------------------
# TinyStories 子集
# ---------------------------------------------------------------------------------------------

SIZE_MB = 0.01  # 10,485 字节：比测试文件小得多，会切到中间


def test_tinystories_subset_cut_at_story_boundary(web):
    path = data.fetch_tinystories(SIZE_MB, url=web.url + "/stories.txt")
    limit = int(SIZE_MB * data.MB)
    assert path == data.cache_dir() / "tinystories_0.01mb.txt"
    saved = path.read_bytes()
    assert 0 < len(saved) <= limit
    assert STORIES_FILE.startswith(saved)
    assert saved.endswith(SEP), "应截在最后一个 <|endoftext|> 处"
    longest = max(len(s) for s in STORIES) + 2 * len(SEP)
    assert len(saved) > limit - longest, "应保留范围内所有完整的故事"
    stories = [s.strip() for s in saved.split(SEP) if s.strip()]
    assert stories == STORIES[: len(stories)], "每个故事都应完整"
    assert web.requests == [("/stories.txt", f"bytes=0-{limit - 1}")]

    meta = json.loads((data.cache_dir() / "tinystories_0.01mb.json").read_text())
    assert meta["url"] == web.url + "/stories.txt"
    assert meta["bytes_requested"] == limit
    assert meta["sha256"] == sha(saved)
    assert [p.name for p in data.cache_dir().iterdir() if p.name.startswith(".")] == []


def test_tinystories_server_without_range(web):
    path = data.fetch_tinystories(SIZE_MB, url=web.url + "/stories-norange.txt")
    saved = path.read_bytes()
    assert len(saved) <= int(SIZE_MB * data.MB) and saved.endswith(SEP) and STORIES_FILE.startswith(saved)


def test_tinystories_whole_small_file_is_kept(web):
    path = data.fetch_tinystories(SIZE_MB, url=web.url + "/stories-small.txt")
    assert path.read_bytes() == SMALL_STORIES_FILE


def test_tinystories_cache_checked_against_sidecar(web):
    url = web.url + "/stories.txt"
    path = data.fetch_tinystories(SIZE_MB, url=url)
    good = path.read_bytes()
    assert data.fetch_tinystories(SIZE_MB, url=url) == path
    assert len(web.requests) == 1, "缓存有效时不应再下载"
    path.write_bytes(good[:-5] + b"XXXXX")  # 改坏缓存
    assert data.fetch_tinystories(SIZE_MB, url=url) == path
    assert len(web.requests) == 2 and path.read_bytes() == good


def test_tinystories_found_in_data_dir(tmp_path, monkeypatch, web):
    (tmp_path / "tinystories_0.01mb.txt").write_bytes(SMALL_STORIES_FILE)
    monkeypatch.setenv("KATA_DATA_DIR", str(tmp_path))
    c = data.load_corpus("tinystories", size_mb=SIZE_MB)
    assert c.source == "KATA_DATA_DIR" and c.text.encode() == SMALL_STORIES_FILE
    assert web.requests == []


def test_tinystories_via_load_corpus_and_get_experiment_data(monkeypatch, web):
    monkeypatch.setattr(data, "TINYSTORIES_URL", web.url + "/stories.txt")
    c = data.load_corpus("tinystories", size_mb=SIZE_MB)
    assert (c.name, c.source) == ("tinystories", "download")
    assert data.get_experiment_data("tinystories", size_mb=SIZE_MB) == c.text
    assert len(web.requests) == 1


def test_tinystories_offline():
    with pytest.raises(data.DataUnavailableError) as info:
        data.fetch_tinystories(SIZE_MB)
    assert "KATA_DATA_DIR" in str(info.value) and "--data-file" in str(info.value)
    assert files_in(data.cache_dir()) == []


# ---------------------------------------------------------------------------------------------
# 合成语料
# ---------------------------------------------------------------------------------------------

def test_synthetic_is_deterministic():
    fresh = data.synthetic_text.__wrapped__  # 绕过 lru_cache，真的重新生成一次
    a = fresh(20_000, 0)
    assert a == fresh(20_000, 0)
    assert len(a) == 20_000
    assert fresh(5_000, 0) == a[:5_000]
    assert fresh(20_000, 1) != a


def test_synthetic_is_deterministic_across_processes():
    """另一个进程、不同的 PYTHONHASHSEED 也生成同样的文本（不依赖 set/dict 的哈希顺序）。"""
    code = ("import hashlib; from kata.data import synthetic_text; "
            "print(hashlib.sha256(synthetic_text(50_000, 3).encode()).hexdigest())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert out == sha(data.synthetic_text.__wrapped__(50_000, 3).encode())


def test_synthetic_has_learnable_structure():
    text = data.synthetic_text(100_000, seed=0)
    assert len(set(text)) <= 65
    assert re.match(r"[A-Z]+:\n", text), "应以 NAME:\\n 开头"
    speakers = Counter(re.findall(r"^([A-Z]+):$", text, flags=re.M))
    assert len(speakers) >= 5
    assert speakers.most_common(1)[0][1] >= 20, "说话者的名字应反复出现"
    turns = text.split("\n\n")[:-1]  # 最后一段可能被截断
    for turn in turns:
        name, _, speech = turn.partition(":\n")
        assert name in speakers and speech[-1] in ".!?", f"每段应是 NAME:\\n + 以标点结尾的句子：{turn!r}"
    # 主谓一致：he/she 后面不接动词原形
    assert re.search(r"\b[Hh]e (loves|fears|keeps)\b", text)
    assert not re.search(r"(?<!oes )\b[HhSs]he (love|fear|keep|carry|watch|see) ", text)


# ---------------------------------------------------------------------------------------------
# CharTokenizer
# ---------------------------------------------------------------------------------------------

def test_tokenizer_round_trip():
    text = "hello, world!\nHELLO"
    tok = data.CharTokenizer.from_text(text)
    assert tok.vocab_size == len(set(text))
    assert list(tok.stoi) == sorted(set(text))
    assert tok.itos[tok.stoi["w"]] == "w"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text
    assert tok.encode_tensor(text).tolist() == ids
    assert tok.encode_tensor(text).dtype == torch.int64


def test_tokenizer_unknown_char_and_id():
    tok = data.CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode_tensor("abz")
    with pytest.raises(ValueError, match="3"):
        tok.decode([0, 3])


# ---------------------------------------------------------------------------------------------
# Corpus / get_batch
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_corpus():
    return data.load_corpus("synthetic", size_mb=0.02)


def test_corpus_split_and_info(small_corpus):
    c = small_corpus
    n = len(c.text)
    assert len(c.train_ids) == int(0.9 * n) and len(c.val_ids) == n - int(0.9 * n)
    assert c.train_ids.dtype == torch.int64 and c.train_ids.ndim == 1
    assert c.tokenizer.decode(c.train_ids) + c.tokenizer.decode(c.val_ids) == c.text
    info = c.info()
    assert info["name"] == "synthetic" and info["source"] == "generated"
    assert info["sha256"] == sha(c.text.encode()) and info["n_chars"] == n
    assert info["vocab_size"] == c.tokenizer.vocab_size
    json.dumps(info)


@pytest.mark.parametrize("split", ["train", "val"])
def test_get_batch(small_corpus, split):
    c = small_corpus
    g = torch.Generator().manual_seed(0)
    x, y = c.get_batch(split, 4, 16, generator=g)
    assert x.shape == y.shape == (4, 16)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]), "y 应是 x 右移一位"
    part = c.text[: len(c.train_ids)] if split == "train" else c.text[len(c.train_ids):]
    for row_x, row_y in zip(x, y):
        assert c.tokenizer.decode(row_x) + c.tokenizer.decode(row_y[-1:]) in part


def test_get_batch_generator_reproducible(small_corpus):
    a = small_corpus.get_batch("train", 8, 32, generator=torch.Generator().manual_seed(1))
    b = small_corpus.get_batch("train", 8, 32, generator=torch.Generator().manual_seed(1))
    c = small_corpus.get_batch("train", 8, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize(
    "args",
    [("test", 4, 8), ("train", 0, 8), ("train", 4, 0), ("train", -1, 8), ("train", 4, 2.5),
     ("val", 4, "val_len")],
)
def test_get_batch_bad_args(small_corpus, args):
    split, b, t = args
    if t == "val_len":
        t = len(small_corpus.val_ids)
    with pytest.raises(ValueError, match="应"):
        small_corpus.get_batch(split, b, t)


# ---------------------------------------------------------------------------------------------
# 命令行
# ---------------------------------------------------------------------------------------------

def test_cli_check_and_download_all(monkeypatch, fake_shakespeare, capsys):
    monkeypatch.setattr(data, "TINYSTORIES_URL", fake_shakespeare.url + "/stories.txt")
    assert data.main(["--check"]) == 1  # 什么都没有
    assert "未找到" in capsys.readouterr().out
    assert fake_shakespeare.requests == []

    assert data.main(["--download-all", "--tinystories-mb", "0.01"]) == 0
    out = capsys.readouterr().out
    assert "来源 download" in out and "tinystories_0.01mb.txt" in out

    assert data.main(["--check", "--tinystories-mb", "0.01"]) == 0
    assert capsys.readouterr().out.count("来源 cache") == 2
    assert len(fake_shakespeare.requests) == 2


def test_cli_offline_exits_1_with_message(capsys):
    assert data.main(["--download-all", "--tinystories-mb", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "KATA_DATA_DIR" in err and "--data-file" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# 真实的 TinyShakespeare（只在设置了 KATA_DATA_DIR 时）
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(REAL_DATA_DIR is None, reason="没有设置 KATA_DATA_DIR（CI 会设置）")
def test_real_tinyshakespeare(monkeypatch):
    monkeypatch.setenv("KATA_DATA_DIR", REAL_DATA_DIR)
    c = data.load_corpus("shakespeare")
    assert c.source == "KATA_DATA_DIR"
    assert Path(c.path).name == "tinyshakespeare.txt"
    assert len(c.text.encode("utf-8")) == data.SHAKESPEARE_BYTES == 1_115_394
    assert c.sha256 == data.SHAKESPEARE_SHA256
    assert c.tokenizer.vocab_size == 65  # nanoGPT shakespeare_char 报告的词表大小
    assert len(c.train_ids) == 1_003_854 and len(c.val_ids) == 111_540  # 90% / 10%
    assert data.get_experiment_data("shakespeare") == c.text
