"""测试用的工作进程（你不用改它）：test_pretrain.py 像 torchrun 一样启动两份，每份设好
RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT，然后跑被测实现的

    setup_distributed → pretrain（SGD，k 步）→ evaluate → cleanup_distributed

结果（参数、每步 loss、评估、进程组的 backend……）写进 --out 目录下的 result_<rank>.pt，由测试和单进程的
参考对比。任何异常（包括 NotImplementedError）都写进结果文件，由测试在主进程里原样报告。
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import torch
from torch import nn

V, D, SEQ = 11, 6, 5     # 词表、宽度、样本长度
N_TOKENS = 4 * SEQ * 6 + 1   # 24 个样本、没有 padding（每个进程的 token 数相同，DDP 的平均才等于全局平均）
BATCH, STEPS, LR = 2, 3, 0.5


class TinyLM(nn.Module):
    """词嵌入 → tanh → 线性头。位置之间没有交互，足够检验梯度同步。"""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed_tokens = nn.Embedding(V, D)
        self.lm_head = nn.Linear(D, V)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, input_ids):
        return self.lm_head(torch.tanh(self.embed_tokens(input_ids)))


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (N_TOKENS,), generator=torch.Generator().manual_seed(seed))


def val_tokens() -> torch.Tensor:
    # 33 个 token → 7 个样本（最后一个带 padding）：两个进程各评估奇偶下标，数目不等
    return torch.randint(0, V, (33,), generator=torch.Generator().manual_seed(7))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--impl", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    out = Path(args.out)
    result: dict = {"rank": rank}
    try:
        repo = Path(__file__).resolve().parents[2]
        sys.path.insert(0, str(repo))
        import torch.distributed as dist

        from kata.impl import resolve

        ns = resolve("09_pretrain", args.impl)
        got = ns.setup_distributed()
        result["setup"] = [got[0], got[1], str(got[2])]
        result["initialized"] = dist.is_initialized()
        result["backend"] = dist.get_backend() if dist.is_initialized() else None
        model = TinyLM()
        ds = ns.PretrainDataset(tokens(), SEQ)
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        ckpt = out / f"rank{rank}" / "ckpt.pth"
        losses = ns.pretrain(model, ds, opt, steps=STEPS, batch_size=BATCH, seed=3, ckpt_path=ckpt)
        result["losses"] = [float(v) for v in losses]
        result["params"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        result["ckpt_exists"] = ckpt.exists()
        ev = ns.evaluate(model, ns.PretrainDataset(val_tokens(), SEQ), batch_size=2)
        result["eval"] = {k: (ev[k] if k in ("tokens", "bytes") else float(ev[k])) for k in ("loss", "bpb", "tokens", "bytes")
                          if k in ev}
        result["mean_of_ranks"] = float(ns.all_reduce_mean(float(rank + 1)))
        ns.cleanup_distributed()
        result["initialized_after_cleanup"] = dist.is_initialized()
    except NotImplementedError as exc:
        result["not_implemented"] = str(exc)
    except BaseException as exc:  # noqa: BLE001 — 一切都报告给主进程
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc()[-3000:]
    tmp = out / f"result_{rank}.pt.tmp"
    torch.save(result, tmp)
    os.replace(tmp, out / f"result_{rank}.pt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
