"""模块 09：“不在 bug bank 里”的错误实现也必须被抓住，并且失败信息要点出概念。

每个错误都是对参考实现 solutions/09_pretrain/pretrain.py 的一处文本替换（模拟测试作者没预料到的学习者写法），
只跑与它相关的那部分测试（-k），免得为每个错误都启动两个进程。
"""
from __future__ import annotations

import pytest

from kata.impl import REPO_ROOT
from kata.runner import run_tests

SOURCE = (REPO_ROOT / "solutions" / "09_pretrain" / "pretrain.py").read_text(encoding="utf-8")

HELD_OUT = {
    # 样本之间重叠一个 token（步长 seq_len − 1）：每个样本都“多看”了一个，总数也不对
    "overlapping_windows": ("start = index * self.seq_len\n", "start = index * max(self.seq_len - 1, 1)\n",
                            "test_dataset_"),
    # 长度用了 N // seq_len：最后几个 token 被扔掉，padding 永远不会出现
    "drops_the_tail": ("return math.ceil((self.ids.numel() - 1) / self.seq_len)",
                       "return max((self.ids.numel() - 1) // self.seq_len, 1)", "test_dataset_"),
    # rank 交错取样（rank r 拿 r, r + W, …）：各 rank 拼起来不等于单进程的批次
    "interleaved_ranks": ("first = step * global_size + rank * batch_size\n    positions = range(first, first + batch_size)",
                          "first = step * global_size + rank\n    positions = range(first, first + global_size, world_size)",
                          "test_rank_batch_"),
    # 每个 epoch 用同一种打乱（种子里没有 epoch）
    "same_shuffle_every_epoch": ("manual_seed(seed * 1_000_003 + epoch)", "manual_seed(seed * 1_000_003)",
                                 "test_rank_batch_"),
    # 评估的分母用了 样本数 × seq_len（把 padding 位置也数进去了）
    "eval_counts_padding": ("n_tokens += float(keep.sum())", "n_tokens += float(keep.numel())", "test_evaluate_"),
    # bpb 用 log2(e) 乘错了方向：nll · ln 2
    "bpb_times_ln2": ('"bpb": nll_sum / math.log(2) / max(n_bytes, 1.0)', '"bpb": nll_sum * math.log(2) / max(n_bytes, 1.0)',
                      "test_evaluate_"),
    # 单进程时也去初始化进程组（RANK 没设也照样 init）
    "init_without_torchrun": ('if "RANK" not in os.environ:\n        return 0, 1, ("cuda" if torch.cuda.is_available() else "cpu")',
                              'if "RANK" not in os.environ:\n        dist.init_process_group("gloo", rank=0, world_size=1)\n'
                              '        return 0, 1, ("cuda" if torch.cuda.is_available() else "cpu")',
                              "test_setup_single"),
    # 直接把 model(x) 当 logits：kata train 的 TinyLM 返回 (logits, loss)、MiniMindForCausalLM 返回带 .logits 的对象
    "logits_not_unwrapped": ("logits = _logits_of(model(x)).float()", "logits = model(x).float()", "test_evaluate_"),
    # 忽略 batch_size：整个验证集一次塞进模型
    "eval_ignores_batch_size": ("for start in range(0, len(mine), batch_size):\n            xs, ys = zip(*(dataset[i] for i in mine[start:start + batch_size]))",
                                "for start in range(0, len(mine), len(mine)):\n            xs, ys = zip(*(dataset[i] for i in mine))",
                                "test_evaluate_"),
    # 训练前没有 net.train()：刚评估完（eval 模式）的模型在 dropout 关着的状态下训练
    "pretrain_without_train_mode": ("    net.train()\n", "", "test_pretrain_trains_in_train_mode"),
    # 直接 torch.save 到 ckpt_path：写到一半被打断，旧的 checkpoint 也没了
    "checkpoint_written_in_place": ("_atomic_save(model.state_dict(), Path(ckpt_path))",
                                    "Path(ckpt_path).parent.mkdir(parents=True, exist_ok=True)\n"
                                    "        torch.save(model.state_dict(), ckpt_path)", "test_pretrain_interrupted"),
    # 没有任何要预测的 token 时用 max(n, 1) 兜底：静悄悄地报 loss 0
    "empty_eval_reports_zero": ('    if n_tokens == 0:\n        raise ValueError("评估集里没有任何要预测的 token（labels 全是 −100）")\n'
                                '    return {"loss": nll_sum / n_tokens',
                                '    return {"loss": nll_sum / max(n_tokens, 1.0)', "test_evaluate_without_any"),
}

CONCEPT_WORDS = ("label", "右移", "样本", "padding", "−100", "rank", "批次", "epoch", "seed", "bpb", "nll", "token",
                 "字节", "init_process_group", "单进程", "torchrun", "logits",
                 "batch_size", "train 模式", "checkpoint")


@pytest.mark.parametrize("name", sorted(HELD_OUT))
def test_held_out_wrong_pretrain_fails_with_a_concept(name, tmp_path):
    old, new, selector = HELD_OUT[name]
    assert SOURCE.count(old) == 1, f"solutions/09_pretrain/pretrain.py 变了，更新 {name} 的替换文本"
    path = tmp_path / "pretrain.py"
    path.write_text(SOURCE.replace(old, new), encoding="utf-8")
    s = run_tests("09_pretrain", str(path), extra_args=("-k", selector))
    assert s.failed > 0, f"错误实现 {name} 通过了模块 09 的测试（{selector}*）：{s.output[-1500:]}"
    assert s.errors == 0, s.output[-1500:]
    messages = [o.message for o in s.outcomes if o.status == "failed"]
    assert all(any(w in m for w in CONCEPT_WORDS) for m in messages), messages
