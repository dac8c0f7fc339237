"""python -m kata.sft / python -m kata.chat：在一个几秒钟就能造出来的小“预训练”checkpoint 上端到端地跑。"""
from __future__ import annotations

import io
import json

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
    ref = resolve("08_training_loop", "solutions")

    def spy(model, batch, opt, **kw):
        seen.setdefault("batches", []).append((batch[0].clone(), batch[1].clone()))
        return ref.train_step(model, batch, opt, **kw)

    real = sft.resolve

    def fake_resolve(module, impl=None):
        ns = real(module, impl)
        if module == "08_training_loop":
            ns.train_step = spy
        return ns

    monkeypatch.setattr(sft, "resolve", fake_resolve)
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


@pytest.mark.parametrize("argv, words", [
    (["--steps", "0"], "--steps"), (["--langs", "fr"], "--langs"), (["--ckpt-missing"], None),
])
def test_sft_bad_arguments(tmp_path, capsys, argv, words):
    from kata import sft

    ckpt, _ = _pretrained(tmp_path / "pre")
    if words is None:
        assert sft.main(["--ckpt", str(tmp_path / "nope.pth")]) == 2
        assert "找不到" in capsys.readouterr().err
        return
    assert sft.main(["--ckpt", str(ckpt), *argv]) == 2
    assert words in capsys.readouterr().err
