"""kata.train / kata.generate：小配置跑通、输出文件、精确续训、Ctrl-C、torchrun 两个进程 = 单进程双倍批次、流式生成。

全部用 --impl solutions 和 tiny 配置；不断言任何时间。
"""
from __future__ import annotations

import bz2
import json
import lzma
import os
import socket
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from kata import train as kt
from kata.impl import REPO_ROOT, resolve

DATA = Path(os.environ.get("KATA_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
pytestmark = pytest.mark.skipif(not (DATA / "tinyshakespeare.txt").is_file(),
                                reason="需要 KATA_DATA_DIR 下的 tinyshakespeare.txt")

TINY = ["--preset", "tiny", "--impl", "solutions", "--hidden_size", "32", "--num_hidden_layers", "1",
        "--num_attention_heads", "2", "--num_key_value_heads", "1", "--batch-size", "4", "--seq-len", "16",
        "--quiet", "--threads", "1", "--eval-batches", "2"]


@pytest.fixture(autouse=True)
def _data_dir(monkeypatch):
    monkeypatch.setenv("KATA_DATA_DIR", str(DATA))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)


def _run(out: Path, *extra) -> int:
    return kt.main([*TINY, "--out", str(out), *extra])


def test_tiny_run_writes_a_plain_state_dict_with_minimind_keys(tmp_path, capsys):
    out = tmp_path / "run"
    code = _run(out, "--steps", "4", "--eval-every", "2", "--cloze-items", "5", "--sample-tokens", "8")
    text = capsys.readouterr().out
    assert code == 0, text
    for name in ("model.pth", "resume.pth", "config.json", "tokenizer.json", "results.json", "loss.png"):
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if "tmp" in p.name], "临时文件应已 os.replace 掉"
    sd = torch.load(out / "model.pth", weights_only=True)
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                "model.layers.0.mlp.gate_proj.weight", "model.layers.0.input_layernorm.weight", "model.norm.weight",
                "lm_head.weight"):
        assert key in sd, (key, sorted(sd)[:8])
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["params"] == sum(v.numel() for k, v in sd.items() if k != "model.embed_tokens.weight")
    assert set(res["final_val"]) >= {"loss", "bpb"} and res["final_val"]["loss"] > 0
    assert res["final_val"]["bpb"] == pytest.approx(res["final_val"]["loss"] / 0.6931471805599453, rel=1e-6)  # ASCII：1 字节/字符
    assert set(res["compressors_bpb"]) == {"zlib -9", "bz2 -9", "xz -9e"}
    assert res["cloze"]["n"] == 5 and res["cloze"]["chance"] == pytest.approx(0.2)
    assert set(res["samples"]) == {"0", "1", "2"}
    assert len(res["history"]["train_loss"]) == 4 and res["history"]["val_step"] == [2, 4]
    assert "bits per byte" in text and "xz -9e" in text


def test_resume_continues_exactly(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(a, "--steps", "6", "--eval-every", "100", "--no-final-eval") == 0
    assert _run(b, "--steps", "6", "--eval-every", "100", "--no-final-eval", "--stop-after", "3") == 0
    ck = torch.load(b / "resume.pth", weights_only=True)
    assert ck["step"] == 3
    assert _run(b, "--steps", "6", "--eval-every", "100", "--no-final-eval", "--resume", str(b / "resume.pth")) == 0
    sa, sb = (torch.load(p / "model.pth", weights_only=True) for p in (a, b))
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"续训后 {k} 与不中断的那次不同"
    ha = json.loads((a / "results.json").read_text())["history"]["train_loss"]
    hb = json.loads((b / "results.json").read_text())["history"]["train_loss"]
    assert ha == hb


def test_ctrl_c_saves_a_checkpoint_and_returns_130(tmp_path, monkeypatch, capsys):
    real_call = kt.Parts.call
    seen = {"n": 0}

    def call(self, module, name, *a, **k):
        if name == "train_step":
            seen["n"] += 1
            if seen["n"] == 3:
                raise KeyboardInterrupt
        return real_call(self, module, name, *a, **k)

    monkeypatch.setattr(kt.Parts, "call", call)
    out = tmp_path / "run"
    assert _run(out, "--steps", "10", "--eval-every", "100", "--no-final-eval") == 130
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("已中断：checkpoint 已保存到"), printed[-3:]
    ck = torch.load(out / "resume.pth", weights_only=True)
    assert ck["step"] == 2, "两步完成、第三步被打断：checkpoint 记的是完成了的 2 步"
    assert (out / "model.pth").is_file()


def test_bad_arguments_exit_2_with_one_sentence(tmp_path, capsys):
    assert _run(tmp_path / "x", "--steps", "0") == 2
    assert "--steps 应为正整数" in capsys.readouterr().err



@pytest.mark.parametrize("module,argv,expected", [
    ("kata.train", ["--steps", "x"], "--steps 应为整数，收到 'x'"),
    ("kata.train", ["--preset", "huge"], "--preset 没有这个选项：'huge'"),
    ("kata.train", ["--bogus"], "不认识的参数：--bogus"),
    ("kata.chat", [], "缺少参数：--ckpt"),
    ("kata.chat", ["--ckpt", "m.pth", "--temperature", "hot"], "--temperature 应为数字"),
])
def test_argparse_errors_are_chinese(module, argv, expected, capsys):
    import importlib

    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and expected in err and "error:" not in err and "invalid" not in err, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equal_one_process_with_double_batch(tmp_path):
    common = [*TINY, "--steps", "4", "--eval-every", "100", "--no-final-eval"]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(KATA_DATA_DIR=str(DATA), MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "kata.train", *common, "--out", str(two)]
    r = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((two / "results.json").read_text())
    assert res["world_size"] == 2
    i = TINY.index("--batch-size")
    single = [*common[:i + 1], "8", *common[i + 2:]]
    one = tmp_path / "one"
    assert kt.main([*single, "--out", str(one)]) == 0
    s2, s1 = (torch.load(p / "model.pth", weights_only=True) for p in (two, one))
    for k in s1:
        assert torch.allclose(s1[k], s2[k], atol=1e-5, rtol=1e-4), f"{k}：2 进程 × batch 4 ≠ 1 进程 × batch 8"
    h2 = json.loads((two / "results.json").read_text())["history"]["train_loss"]
    h1 = json.loads((one / "results.json").read_text())["history"]["train_loss"]
    assert h2 == pytest.approx(h1, abs=1e-5), "rank 0 记下的 loss 应是全局平均（all-reduce 之后）"


def _tiny_model(vocab=11):
    from kata.config import MiniMindConfig

    torch.manual_seed(0)
    cfg = MiniMindConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         vocab_size=vocab, max_position_embeddings=256)
    return resolve("06_transformer_block", "solutions").MiniMindForCausalLM(cfg)


def test_streaming_with_kv_cache_equals_no_cache():
    from kata.data import CharTokenizer

    tok = CharTokenizer(list("abcdefghij "))
    model = _tiny_model()
    pieces = []
    a = kt.stream(model, tok, "abc", max_new_tokens=30, temperature=0, use_cache=True, on_text=pieces.append)
    b = kt.stream(model, tok, "abc", max_new_tokens=30, temperature=0, use_cache=False)
    assert a == b and "".join(pieces) == a and len(a) == 30
    c = kt.stream(model, tok, "abc", max_new_tokens=30, temperature=1.0, seed=1)
    d = kt.stream(model, tok, "abc", max_new_tokens=30, temperature=1.0, seed=1, use_cache=False)
    assert c == d, "同一个 seed：有无 KV cache 抽出的序列应相同"


def test_generate_cli_loads_half_precision_weights(tmp_path, capsys):
    from kata import generate as kg
    from kata.data import CharTokenizer

    model = _tiny_model()
    folder = tmp_path / "ck"
    folder.mkdir()
    torch.save({k: v.half() for k, v in model.state_dict().items()}, folder / "model.pth")   # minimind 存 fp16
    (folder / "config.json").write_text(json.dumps(model.config.to_dict()))
    (folder / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": list("abcdefghij ")}))
    assert kg.main(["--ckpt", str(folder / "model.pth"), "--prompt", "ab", "--max-new-tokens", "5",
                    "--temperature", "0", "--impl", "solutions"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ab") and len(out.strip()) == 7
    assert kg.main(["--ckpt", str(folder / "nope.pth")]) == 2


def test_compressor_bpb_is_eight_times_the_compression_ratio():
    data = (b"to be or not to be, that is the question. " * 50)
    got = kt.compressor_bpb(data)
    assert got["zlib -9"] == pytest.approx(8 * len(zlib.compress(data, 9)) / len(data))
    assert got["bz2 -9"] == pytest.approx(8 * len(bz2.compress(data, 9)) / len(data))
    assert got["xz -9e"] == pytest.approx(8 * len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)) / len(data))
    assert all(v < 8 for v in got.values())


def test_cloze_candidates_have_the_answer_first_and_equal_length():
    from kata.data import CharTokenizer

    text = "the king and the queen went to the river and the tower of the old town " * 20
    tok = CharTokenizer.from_text(text)
    model = _tiny_model(tok.vocab_size)
    cz = kt.cloze(model, tok, text, text, n_items=10, k=2, context=16, seed=0)
    assert cz["n"] == 10 and cz["chance"] == pytest.approx(1 / 3) and 0 <= cz["accuracy"] <= 1
    for ex in cz["examples"]:
        assert ex["candidates"][0] == ex["answer"] and len(set(map(len, ex["candidates"]))) == 1


def test_bpe_tokenizer_spec_round_trips_and_counts_bytes():
    text = "to be or not to be, that is the question — café " * 30
    parts = kt.Parts("solutions", lambda m: None)
    tok, spec = kt.build_tokenizer("bpe", text, 300, parts, lambda m: None)
    again = kt.tokenizer_from_spec(json.loads(json.dumps(spec)))
    ids = tok.encode(text)
    assert again.encode(text) == ids and again.decode(ids) == text
    tb = kt.token_bytes_of(tok, spec)
    assert int(tb[torch.tensor(ids)].sum()) == len(text.encode("utf-8")), "每个 token 的字节数加起来应等于文本的字节数"
    assert int(tb[0]) == len("<|endoftext|>".encode()) and len(ids) < len(text)


def test_stream_window_keeps_positions_inside_the_trained_length():
    from kata.config import MiniMindConfig
    from kata.data import CharTokenizer

    tok = CharTokenizer(list("abcdefghij "))
    torch.manual_seed(0)
    cfg = MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         vocab_size=11, max_position_embeddings=24)
    model = resolve("06_transformer_block", "solutions").MiniMindForCausalLM(cfg)
    for use_cache in (True, False):
        text = kt.stream(model, tok, "abc", max_new_tokens=60, temperature=1.0, window=24, use_cache=use_cache)
        assert len(text) == 60     # 超过 24 个位置也能继续生成：上下文被裁进窗口
    with pytest.raises(ValueError):    # 没有窗口时，超过 RoPE 表的长度就是错误
        model(torch.zeros(1, 30, dtype=torch.long))


def test_char_tokenizer_spec_keeps_special_tokens():
    """SFT 检查点的 tokenizer.json（字符级 + 特殊 token）读回来时特殊 token 还在，kata generate / chat 用的是同一个。"""
    spec = {"type": "char", "chars": list("ab\n"), "special_tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}
    tok = kt.tokenizer_from_spec(spec)
    ids = tok.encode("a<|im_end|>b")
    assert ids == [0, 5, 1] and tok.decode(ids) == "a<|im_end|>b"
    assert kt.tokenizer_from_spec({"type": "char", "chars": list("ab")}).encode("ba") == [1, 0]


def test_tinystories_subset_from_the_data_dir_trains_and_is_recorded(tmp_path, monkeypatch, capsys):
    """--data tinystories --size-mb N 读 KATA_DATA_DIR 里的 tinystories_<N>mb.txt（离线，不下载）；结果记下用的是哪份数据。"""
    from kata.data import STORY_SEPARATOR

    stories = [f"Once upon a time, a little {animal} named {name} found a {thing}. "
               f"{name} was happy and shared the {thing} with a friend.\n"
               for animal in ("cat", "dog", "bird", "fox") for name in ("Lily", "Tom", "Sue")
               for thing in ("ball", "red box", "big tree")]
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "tinystories_0.01mb.txt").write_text(STORY_SEPARATOR.join(stories * 3) + STORY_SEPARATOR,
                                                    encoding="utf-8")
    monkeypatch.setenv("KATA_DATA_DIR", str(folder))
    monkeypatch.setenv("KATA_OFFLINE", "1")
    out = tmp_path / "run"
    code = _run(out, "--data", "tinystories", "--size-mb", "0.01", "--steps", "3", "--eval-every", "3",
                "--cloze-items", "3", "--sample-tokens", "4")
    text = capsys.readouterr().out
    assert code == 0, text
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert "tinystories" in json.dumps(res["data"]).lower(), res["data"]
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert "Shakespeare" not in json.dumps(res["data"]), res["data"]
    assert "L" in json.dumps(spec, ensure_ascii=False) and res["final_val"]["loss"] > 0

    # 数据目录里没有这个大小的子集：一句中文说明怎么提供，不下载、不训练
    code = _run(tmp_path / "run2", "--data", "tinystories", "--size-mb", "0.02", "--steps", "1")
    text = capsys.readouterr().out
    assert code == 2 and "拿不到训练数据" in text and not (tmp_path / "run2" / "model.pth").exists(), text


def test_compressor_verdict_says_where_the_model_lands():
    comp = {"zlib -9": 3.19, "bz2 -9": 2.635, "xz -9e": 2.947}
    assert "都好" in kt._compressor_verdict(2.387, comp) and "0.248" in kt._compressor_verdict(2.387, comp)
    mid = kt._compressor_verdict(2.8, comp)
    assert "xz -9e、zlib -9 好" in mid and "还不如 bz2 -9" in mid, mid
    assert "还不如最弱的 zlib -9" in kt._compressor_verdict(4.5, comp)
