"""python -m kata.sft / python -m kata.chat：在一个几秒钟就能造出来的小“预训练”checkpoint 上端到端地跑。"""
from __future__ import annotations

import io
import json
import os

import pytest
import torch

from kata.config import MiniMindConfig
from kata.impl import resolve

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nAll:\nSpeak, speak.\n"


def _pretrained(folder, seed=0):
    """kata.train 的输出格式：model.pth（state_dict）、config.json、字符级 tokenizer.json（没有特殊 token）。"""
    chars = sorted(set(TEXT))
    cfg = MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         vocab_size=len(chars), max_position_embeddings=256)
    torch.manual_seed(seed)
    model = resolve("06_transformer_block", "solutions").MiniMindForCausalLM(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "model.pth")
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    (folder / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": chars}), encoding="utf-8")
    return folder / "model.pth", model


SFT_ARGS = ["--steps", "4", "--n-train", "40", "--n-eval", "8", "--batch-size", "4", "--max-length", "96",
            "--quiet", "--impl", "solutions", "--threads", "1"]


def test_sft_extends_the_tokenizer_keeps_old_rows_and_writes_a_loadable_checkpoint(tmp_path, capsys):
    from kata import sft

    ckpt, base = _pretrained(tmp_path / "pre")
    out = tmp_path / "sft"
    assert sft.main(["--ckpt", str(ckpt), "--out", str(out), *SFT_ARGS]) == 0
    text = capsys.readouterr().out
    assert "held-out 精确匹配" in text and "微调前" in text and "停在<|im_end|>" in text
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert res["steps"] == 4 and len(res["history"]["loss"]) == 4
    assert set(res["after"]["accuracy"]) >= {"add", "copy", "all"} and 0 <= res["after"]["stop_rate"] <= 1
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["special_tokens"] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert spec["chars"][:len(sorted(set(TEXT)))] == sorted(set(TEXT)), "旧字符的 id 不能变"
    assert "加" in spec["chars"], "指令数据里的中文字符应被追加进词表"
    model, tok, cfg, _ = sft.load(out / "model.pth", "solutions")
    assert cfg.vocab_size == len(spec["chars"]) + 3 == tok.vocab_size
    sd = torch.load(out / "model.pth", weights_only=True)
    assert "model.embed_tokens.weight" in sd and "lm_head.weight" in sd, "minimind 的键名"
    # 从预训练模型保留下来的嵌入行：4 步、学习率 1e-3 的微调只能让它们移动一点点，不会是重新初始化的
    old = base.model.embed_tokens.weight.detach()
    new = sd["model.embed_tokens.weight"][: old.shape[0]]
    assert (new - old).abs().max() < 0.05, "旧的嵌入行应从预训练权重复制过来"


def test_sft_labels_fed_to_train_step_are_the_shifted_assistant_mask(tmp_path, monkeypatch):
    """kata.sft 把 SFTDataset 的 labels 左移一位交给模块 08 的 train_step；--mask all 时所有真实 token 都进 loss。"""
    from kata import sft

    ckpt, _ = _pretrained(tmp_path / "pre")
    seen = {}
    from kata import train as kt
    real_call = kt.Parts.call

    def spy(self, module, name, *args, **kw):
        if name == "train_step":
            x, y = args[1]
            seen.setdefault("batches", []).append((x.clone(), y.clone()))
        return real_call(self, module, name, *args, **kw)

    monkeypatch.setattr(kt.Parts, "call", spy)
    for mask in ("assistant", "all"):
        seen.clear()
        assert sft.main(["--ckpt", str(ckpt), "--out", str(tmp_path / mask), *SFT_ARGS, "--mask", mask,
                         "--no-eval-before", "--n-eval", "1"]) == 0
        spec = json.loads((tmp_path / mask / "tokenizer.json").read_text(encoding="utf-8"))
        from kata.tokenizer import CharTokenizer
        tok = CharTokenizer(spec["chars"], special_tokens=spec["special_tokens"])
        pad, im_end = tok.encode("<|endoftext|>")[0], tok.encode("<|im_end|>")[0]
        for x, y in seen["batches"]:
            real_tok = x != pad
            on = y != -100
            assert torch.equal(y[on], x[:, 1:][on[:, :-1]]) and not on[:, -1].any(), "y[:, t] 应是 x[:, t+1]"
            if mask == "assistant":
                assert (y == im_end).any(), "每个回复的 <|im_end|> 都要进 loss"
                assert on.sum() < real_tok.sum() / 2, "只有助手回复进 loss：应远少于一半的 token"
            else:
                assert torch.equal(on[:, :-1], real_tok[:, 1:]), "--mask all：每个真实 token 都进 loss，padding 不进"


def test_chat_streams_keeps_the_template_and_stops_at_im_end(tmp_path, monkeypatch):
    from kata import chat, sft

    ckpt, _ = _pretrained(tmp_path / "pre")
    out = tmp_path / "sft"
    assert sft.main(["--ckpt", str(ckpt), "--out", str(out), *SFT_ARGS, "--no-eval-before", "--n-eval", "1"]) == 0
    model, tok, _, _ = sft.load(out / "model.pth", "solutions")
    im_end = tok.encode("<|im_end|>")[0]
    prompts = []
    real_stream = __import__("kata.train", fromlist=["stream"]).stream

    def fake_stream(model, tok, prompt, *, max_new_tokens, eos_id=None, on_text=None, **kw):
        """第一轮回复 "4" 并停下；第二轮一直不停（测截断提示）。记录每一轮的提示。"""
        prompts.append(prompt)
        assert eos_id == im_end
        reply = "4<|im_end|>" if len(prompts) == 1 else "x" * max_new_tokens
        for ch in (["4", "<|im_end|>"] if len(prompts) == 1 else list(reply)):
            on_text(ch)
        return reply

    monkeypatch.setattr("kata.train.stream", fake_stream)
    stdout = io.StringIO()
    code = chat.main(["--ckpt", str(out / "model.pth"), "--impl", "solutions", "--system", "Be brief.",
                      "--max-new-tokens", "5"], stdin=io.StringIO("2+2=\n\nagain\n/reset\n/exit\nnever read\n"),
                     stdout=stdout)
    assert code == 0
    shown = stdout.getvalue()
    assert "助手：4\n助手：" in shown and "4<|im_end|>" not in shown, shown
    assert "还没有 <|im_end|>，截断" in shown and "对话已清空" in shown
    assert prompts[0] == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n"
    assert prompts[1] == prompts[0] + "4<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n", \
        "第二轮的提示应包含第一轮（模板不变、回复放回对话里）"
    assert len(prompts) == 2, "/exit 之后不再读"
    monkeypatch.setattr("kata.train.stream", real_stream)
    # 真的生成（不替换 stream）：能跑完，回复最多 max_new_tokens 个 token
    stdout = io.StringIO()
    assert chat.main(["--ckpt", str(out / "model.pth"), "--impl", "solutions", "--max-new-tokens", "3"],
                     stdin=io.StringIO("hi\n"), stdout=stdout) == 0
    assert stdout.getvalue().startswith("助手：")


def test_chat_refuses_a_checkpoint_without_chat_tokens(tmp_path, capsys):
    from kata import chat

    ckpt, _ = _pretrained(tmp_path / "pre")
    assert chat.main(["--ckpt", str(ckpt), "--impl", "solutions"], stdin=io.StringIO("hi\n"), stdout=io.StringIO()) == 2
    assert "还没做过 SFT" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 训练器：checkpoint、精确续训、Ctrl-C、参数（与 kata train 相同的保证）
# ---------------------------------------------------------------------------------------------

RUN = ["--steps", "6", "--n-train", "40", "--n-eval", "1", "--batch-size", "4", "--max-length", "96", "--quiet",
       "--impl", "solutions", "--threads", "1", "--no-eval-before", "--no-final-eval", "--ckpt-every", "100"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """同一份“预训练” checkpoint 上不中断地跑 6 步：续训的几个测试都拿它比。"""
    from kata import sft

    root = tmp_path_factory.mktemp("sft_resume")
    ckpt, _ = _pretrained(root / "pre")
    assert sft.main(["--ckpt", str(ckpt), "--out", str(root / "a"), *RUN]) == 0
    return ckpt, root / "a"


def _weights(folder):
    return torch.load(folder / "model.pth", weights_only=True)


def _losses(folder):
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))["history"]["loss"]


def _assert_same_run(a, b):
    """逐位相同：同样的运算、同样的顺序、单线程；续训恢复的是 float32 原样的权重、AdamW 的矩与步数、
    随机数状态，而第 k 步的批次只由 (seed, k) 决定（模块 09 的 rank_batch）——没有任何一位该不同。"""
    sa, sb = _weights(a), _weights(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"续训后 {k} 与不中断的那次不同（最大差 {(sa[k] - sb[k]).abs().max():.3g}）"
    assert _losses(a) == _losses(b), "续训后每一步的 loss 应与不中断的那次逐位相同"


def test_stop_after_then_resume_equals_the_uninterrupted_run(uninterrupted, tmp_path):
    from kata import sft

    ckpt, a = uninterrupted
    b = tmp_path / "b"
    assert sft.main(["--ckpt", str(ckpt), "--out", str(b), *RUN, "--stop-after", "3"]) == 0
    ck = torch.load(b / "resume.pth", weights_only=True)
    assert ck["step"] == 3 and ck["kind"] == "kata.sft" and set(ck) >= {"model", "optimizer", "rng"}
    assert not (b / "results.json").exists(), "--stop-after 停下时还没有结果"
    half = _weights(b)
    assert any(not torch.equal(half[k], v) for k, v in _weights(a).items()), "第 3 步的权重不该已经等于第 6 步的"
    assert sft.main(["--ckpt", str(ckpt), "--out", str(b), *RUN, "--resume", str(b / "resume.pth")]) == 0
    _assert_same_run(a, b)
    res = json.loads((b / "results.json").read_text(encoding="utf-8"))
    assert res["start_step"] == 3 and res["steps"] == 6 and len(res["history"]["loss"]) == 6


def test_periodic_checkpoints_are_written_every_n_steps(tmp_path, monkeypatch):
    from kata import sft
    from kata import train as kt

    ckpt, _ = _pretrained(tmp_path / "pre")
    steps_saved = []
    real_call = kt.Parts.call

    def spy(self, module, name, *args, **kw):
        if name == "save_checkpoint":
            steps_saved.append(args[3])
        return real_call(self, module, name, *args, **kw)

    monkeypatch.setattr(kt.Parts, "call", spy)
    args = [a if a != "100" else "2" for a in RUN]            # --ckpt-every 2
    assert sft.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "run"), *args, "--steps", "5"]) == 0
    assert steps_saved == [2, 4, 5], "每 --ckpt-every 步存一次，结束时再存一次"
    assert torch.load(tmp_path / "run" / "resume.pth", weights_only=True)["step"] == 5
    assert not [p.name for p in (tmp_path / "run").iterdir() if "tmp" in p.name], "临时文件应已 os.replace 掉"


def test_ctrl_c_mid_run_leaves_loadable_checkpoints_that_resume_exactly(uninterrupted, tmp_path, monkeypatch,
                                                                          capsys):
    from kata import sft
    from kata import train as kt

    ckpt, a = uninterrupted
    real_call = kt.Parts.call
    calls = {"n": 0}

    def interrupt_fourth_step(self, module, name, *args, **kw):
        if name == "train_step":
            calls["n"] += 1
            if calls["n"] == 4:
                raise KeyboardInterrupt
        return real_call(self, module, name, *args, **kw)

    monkeypatch.setattr(kt.Parts, "call", interrupt_fourth_step)
    b = tmp_path / "b"
    assert sft.main(["--ckpt", str(ckpt), "--out", str(b), *RUN]) == 130
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("已中断：checkpoint 已保存到") and "--resume" in printed[-1], printed[-3:]
    ck = torch.load(b / "resume.pth", weights_only=True)
    assert ck["step"] == 3, "三步完成、第四步被打断：checkpoint 记的是完成了的 3 步"
    assert all(torch.equal(v, ck["model"][k]) for k, v in _weights(b).items()), "model.pth 应是同一时刻的权重"
    monkeypatch.setattr(kt.Parts, "call", real_call)
    assert sft.main(["--ckpt", str(ckpt), "--out", str(b), *RUN, "--resume", str(b / "resume.pth")]) == 0
    _assert_same_run(a, b)


@pytest.mark.parametrize("target", ["resume.pth", "model.pth"])
def test_ctrl_c_while_writing_a_checkpoint_leaves_no_half_written_file(tmp_path, monkeypatch, capsys, target):
    """第 2 步的 checkpoint 完整写好之后，每次往 target 写都写到一半就被 Ctrl-C 打断（第 4 步的存盘、中断处理里的
    存盘）：target 应仍是第 2 步那个完整的文件，没有半个文件、没有临时文件。直接往目标文件里写就会留下坏文件。"""
    from kata import sft

    ckpt, _ = _pretrained(tmp_path / "pre")
    real_save = torch.save
    calls = {"n": 0}

    def half_written(obj, f, *args, **kw):
        is_resume = "optimizer" in obj                    # resume.pth 的内容带优化器状态；model.pth 只是 state_dict
        if is_resume != (target == "resume.pth"):
            return real_save(obj, f, *args, **kw)
        calls["n"] += 1
        if calls["n"] == 1:                               # 第 2 步：完整写好
            return real_save(obj, f, *args, **kw)
        if isinstance(f, (str, os.PathLike)):
            f = open(f, "wb")
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", half_written)
    out = tmp_path / "run"
    args = [a if a != "100" else "2" for a in RUN]            # --ckpt-every 2
    assert sft.main(["--ckpt", str(ckpt), "--out", str(out), *args]) == 130
    assert calls["n"] == 3, "第 2 步、第 4 步、中断处理各写一次"
    printed = capsys.readouterr().out.strip().splitlines()
    assert "存盘被打断" in printed[-1] and "上一个完整的 checkpoint" in printed[-1], printed[-2:]
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.pth", "resume.pth", "tokenizer.json"]
    ck = torch.load(out / "resume.pth", weights_only=True)
    sd = torch.load(out / "model.pth", weights_only=True)
    if target == "resume.pth":
        assert ck["step"] == 2 and all(torch.equal(v, ck["model"][k]) for k, v in sd.items())
    else:
        assert ck["step"] == 4 and sd.keys() == ck["model"].keys()
        assert not all(torch.equal(v, ck["model"][k]) for k, v in sd.items()), "model.pth 应仍是第 2 步的权重"
    assert sft.main(["--ckpt", str(ckpt), "--out", str(out), *RUN, "--resume", str(out / "resume.pth")]) == 0


def test_resume_refuses_checkpoints_it_cannot_continue(uninterrupted, tmp_path, capsys):
    from kata import sft

    ckpt, a = uninterrupted
    # kata train 的 resume.pth（没有 kind）
    torch.save({"model": {}, "optimizer": None, "step": 3}, tmp_path / "train_resume.pth")
    assert sft.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "x"), *RUN,
                     "--resume", str(tmp_path / "train_resume.pth")]) == 2
    assert "不是 kata sft 写的 resume.pth" in capsys.readouterr().err
    # 另一个预训练模型（别的字符表）→ 词表不同
    other = tmp_path / "other"
    other.mkdir()
    chars = sorted(set("xyz:\n "))
    cfg = MiniMindConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                         vocab_size=len(chars), max_position_embeddings=256)
    torch.save(resolve("06_transformer_block", "solutions").MiniMindForCausalLM(cfg).state_dict(), other / "model.pth")
    (other / "config.json").write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    (other / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": chars}), encoding="utf-8")
    assert sft.main(["--ckpt", str(other / "model.pth"), "--out", str(tmp_path / "y"), *RUN,
                     "--resume", str(a / "resume.pth")]) == 2
    err = capsys.readouterr().err
    assert "词表或模型结构与这次不同" in err and "--ckpt" in err, err
    # 半个文件
    (tmp_path / "half.pth").write_bytes(b"PK\x03\x04 half")
    assert sft.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "z"), *RUN, "--resume", str(tmp_path / "half.pth")]) == 2
    assert "读不出来" in capsys.readouterr().err


def test_resume_with_changed_settings_says_so(uninterrupted, tmp_path, capsys):
    from kata import sft

    ckpt, a = uninterrupted
    b = tmp_path / "b"
    assert sft.main(["--ckpt", str(ckpt), "--out", str(b), *RUN, "--stop-after", "5"]) == 0
    capsys.readouterr()
    assert sft.main(["--ckpt", str(ckpt), "--out", str(b), *RUN, "--lr", "2e-3", "--resume", str(b / "resume.pth")]) == 0
    text = capsys.readouterr().out
    assert "从" in text and "第 5 步接着训练" in text
    assert "--lr 0.001 → 0.002" in text and "不再等于一次不中断的运行" in text, text


@pytest.mark.parametrize("argv, words", [
    (["--steps", "0"], "--steps 应为正整数"),
    (["--langs", "fr"], "--langs"),
    (["--ckpt-missing"], None),
    (["--steps", "x"], "--steps 应为整数"),
    (["--lr", "abc"], "--lr 应为数字"),
    (["--mask", "none"], "--mask 没有这个选项"),
    (["--bogus"], "不认识的参数：--bogus"),
    (["--ckpt-every", "0"], "--ckpt-every 应为正整数"),
    (["--stop-after", "0"], "--stop-after 应为正整数"),
    (["--lr", "-1"], "--lr 应为正数"),
    (["--grad-clip", "0"], "--grad-clip 应为正数"),
    (["--warmup", "-1"], "--warmup 应 ≥ 0"),
    (["--n-eval", "0"], "--n-eval 应为正整数"),
    (["--resume", "nope.pth"], "找不到 --resume 指定的文件"),
    (["--no-ckpt"], "缺少参数：--ckpt"),
])
def test_sft_bad_arguments(tmp_path, capsys, argv, words):
    from kata import sft

    ckpt, _ = _pretrained(tmp_path / "pre")
    if argv == ["--ckpt-missing"]:
        assert sft.main(["--ckpt", str(tmp_path / "nope.pth")]) == 2
        assert "找不到" in capsys.readouterr().err
        return
    if argv == ["--no-ckpt"]:
        assert sft.main(["--steps", "3"]) == 2
    else:
        assert sft.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err
    assert words in err, err
    assert "invalid" not in err and "error:" not in err, "argparse 的英文报错应翻成中文：" + err
    assert not (tmp_path / "out").exists(), "参数错误时不该开始训练、写任何文件"


def test_help_describes_resume_checkpoints_and_torchrun(capsys):
    from kata import sft

    assert sft.main(["--help"]) == 0
    text = capsys.readouterr().out
    for words in ("--resume", "--ckpt-every", "--stop-after", "torchrun --nproc_per_node=2 -m kata sft",
                  "逐位相同", "原子写入", "Ctrl-C"):
        assert words in text, words
