"""torchrun --nproc_per_node=2 -m kata sft：两个真的 gloo 进程 = 一个进程跑双倍批次（同 tests/test_train.py 对 kata train 的检查）。

SFT 比预训练多一个坑：每个进程那一份批次里进 loss 的 token 数不同（只有助手回复算）。DDP 默认把两个进程的梯度
直接平均，token 少的那一份每个 token 反而更重；kata sft 按 token 数加权（见 kata/sft.py 的文档），所以两个进程
与一个进程的全局批次一致。不加权时这里的权重差约 3e-3，远大于容差 1e-5。
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from kata.impl import REPO_ROOT, resolve
from tests.test_sft_cli import _pretrained

ARGS = ["--steps", "3", "--n-train", "40", "--n-eval", "2", "--max-length", "96", "--quiet", "--impl", "solutions",
        "--threads", "1", "--seed", "0"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_token_counts(out, steps=3, batch=2, world=2, seed=0):
    """每一步里两个进程各有多少个进 loss 的 token（与 kata sft 用同样的数据、模板、rank_batch）。"""
    from kata import sft
    from kata import sft_data as D
    from kata.train import tokenizer_from_spec

    tok = tokenizer_from_spec(json.loads((out / "tokenizer.json").read_text(encoding="utf-8")))
    conversations = [e.messages() for e in D.make_examples(40, "train", seed, langs=("en", "zh"))]
    ds = resolve("10_sft", "solutions").SFTDataset(conversations, tok, 96)
    shifted = sft._Shifted(ds.__getitem__, len(ds))
    rank_batch = resolve("09_pretrain", "solutions").rank_batch
    return [[int((rank_batch(shifted, s, batch, r, world, seed)[1] != -100).sum()) for r in range(world)]
            for s in range(steps)]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """同一份“预训练” checkpoint；一个进程 × batch 4 跑 3 步（两个测试都拿它比）。"""
    from kata import sft

    root = tmp_path_factory.mktemp("sft_ddp")
    ckpt, _ = _pretrained(root / "pre")
    assert sft.main(["--ckpt", str(ckpt), *ARGS, "--batch-size", "4", "--no-eval-before", "--out", str(root / "one")]) == 0
    return ckpt, root / "one"


@pytest.fixture(autouse=True)
def _no_torchrun_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)


def _torchrun(ckpt, out, *extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT), MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "kata", "sft", "--ckpt", str(ckpt), *ARGS, "--batch-size", "2",
           "--out", str(out), *extra]
    r = subprocess.run(cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def _assert_same_weights_and_losses(one, two):
    s1, s2 = (torch.load(p / "model.pth", weights_only=True) for p in (one, two))
    assert s1.keys() == s2.keys()
    for k in s1:
        close = bool(torch.allclose(s1[k], s2[k], atol=1e-5, rtol=1e-4))
        assert close, f"{k}：2 进程 × batch 2 ≠ 1 进程 × batch 4（最大差 {(s1[k] - s2[k]).abs().max():.3g}）"
    h1, h2 = (json.loads((p / "results.json").read_text(encoding="utf-8"))["history"]["loss"] for p in (one, two))
    assert h2 == pytest.approx(h1, abs=1e-5), "rank 0 记下的 loss 应是全局批次的 token 平均（加权 all-reduce 之后）"


def test_torchrun_two_processes_equal_one_process_with_double_batch(single, tmp_path):
    ckpt, one = single
    two = tmp_path / "two"
    r = _torchrun(ckpt, two)
    # 只有 rank 0 打日志、评估（微调前后各一次）
    assert r.stdout.count("SFT：") == 1 and r.stdout.count("微调完成") == 1 and r.stdout.count("微调前：") == 1, r.stdout
    assert "2 个进程 × batch 2" in r.stdout
    res = json.loads((two / "results.json").read_text(encoding="utf-8"))
    assert res["world_size"] == 2 and res["global_batch"] == 4 and res["after"] is not None
    ck = torch.load(two / "resume.pth", weights_only=True)
    assert ck["step"] == 3 and not any(k.startswith("module.") for k in ck["model"]), "存的是没包 DDP 的模型"
    counts = _rank_token_counts(two)
    assert any(a != b for a, b in counts), f"两个进程的 token 数每步都一样 {counts}：这个测试就查不出加权错误了"
    _assert_same_weights_and_losses(one, two)


def test_torchrun_checkpoint_resumes_in_one_process_with_the_same_global_batch(single, tmp_path):
    """rank 0 在第 2 步写的 resume.pth，一个进程 × batch 4 接着训练：批次只由 (seed, 步号, 全局批次) 决定，
    所以结果与一个进程从头跑的那次相同。"""
    from kata import sft

    ckpt, one = single
    mixed = tmp_path / "mixed"
    r = _torchrun(ckpt, mixed, "--stop-after", "2", "--no-eval-before")
    assert "按 --stop-after 在第 2 步停下" in r.stdout and not (mixed / "results.json").exists()
    assert torch.load(mixed / "resume.pth", weights_only=True)["step"] == 2
    assert sft.main(["--ckpt", str(ckpt), *ARGS, "--batch-size", "4", "--out", str(mixed),
                     "--resume", str(mixed / "resume.pth")]) == 0
    _assert_same_weights_and_losses(one, mixed)
