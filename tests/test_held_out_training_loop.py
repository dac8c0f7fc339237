"""模块 08：“不在 bug bank 里”的错误训练循环部件也必须被抓住，并且失败信息要点出概念。

这些实现故意不放进 kata/bugbank/training_loop.py：它们模拟一个测试作者没有预料到的学习者错误。
每个错误实现 = 参考实现的五个文件 + 其中一个文件里的一处改动。
"""
from __future__ import annotations

import shutil

import pytest

from kata.impl import REPO_ROOT
from kata.runner import run_tests

SOL = REPO_ROOT / "solutions" / "08_training_loop"

# 名字 → (文件, 参考实现里的原文, 换成的错误写法, 只跑哪个测试文件)
HELD_OUT = {
    # 衰减放在了 Adam 更新之后：用的是已经更新过的参数（差 lr²·wd·更新量）
    "decay_after_update": ("optim.py", "                p.mul_(1 - lr * wd)                                   # 解耦：衰减不进 m、v\n",
                           "", "test_optim"),
    # 偏差修正的步数放在了优化器上，每个参数都加一次（两个参数时第一步 t 就是 2）
    "shared_step_counter": ("optim.py", '                t = state["step"].item()\n',
                            '                self.__dict__["_t"] = self.__dict__.get("_t", 0) + 1\n'
                            '                t = self.__dict__["_t"]\n', "test_optim"),
    # 被忽略的位置被当成了类别 0（clamp 到合法下标却忘了把它们从平均里去掉）
    "ignored_as_class_zero": ("loss.py", "    keep = t != ignore_index\n",
                              "    keep = t != ignore_index\n    t = torch.where(keep, t, torch.zeros_like(t))\n"
                              "    keep = torch.ones_like(keep)\n", "test_loss"),
    # 余弦的进度按 step/total_steps 算，没有减去 warmup
    "cosine_progress_ignores_warmup": ("schedule.py",
                                       "    progress = (step - warmup_steps) / (total_steps - warmup_steps)\n",
                                       "    progress = step / total_steps\n", "test_schedule"),
    # 全局范数写成了各参数范数之和（L1 而不是 L2）
    "norm_is_sum_of_norms": ("clip.py", "    total = torch.linalg.vector_norm(torch.stack(norms), 2)\n",
                             "    total = torch.stack(norms).sum()\n", "test_clip"),
    # 每个 micro-step 一开始就清梯度：累积的前 k−1 个 micro-batch 白算了
    "zero_grad_every_micro_step": ("step.py", "    input_ids, labels = batch\n",
                                   "    optimizer.zero_grad(set_to_none=True)\n    input_ids, labels = batch\n", "test_step"),
}

CONCEPT_WORDS = ("交叉熵", "F.cross_entropy", "ignore", "AdamW", "torch.optim", "衰减", "偏差修正", "学习率", "warmup",
                 "余弦", "min_lr", "cos", "裁剪", "范数", "clip", "累积", "micro", "accum", "续训", "checkpoint",
                 "梯度", "参数")


@pytest.mark.parametrize("name", sorted(HELD_OUT))
def test_held_out_wrong_training_loop_fails_with_a_concept(name, tmp_path):
    fname, right, wrong, only = HELD_OUT[name]
    impl_dir = tmp_path / "impl"
    shutil.copytree(SOL, impl_dir)
    src = (impl_dir / fname).read_text(encoding="utf-8")
    assert src.count(right) == 1, f"solutions/08_training_loop/{fname} 变了，更新 HELD_OUT[{name!r}]"
    (impl_dir / fname).write_text(src.replace(right, wrong), encoding="utf-8")
    s = run_tests("08_training_loop", str(impl_dir), extra_args=("-k", only))
    assert s.failed > 0, f"错误实现 {name} 通过了模块 08 的测试（{only}）"
    assert s.errors == 0, [o.message for o in s.outcomes if o.status == "error"]
    messages = [o.message for o in s.outcomes if o.status == "failed"]
    assert all(any(w in m for w in CONCEPT_WORDS) for m in messages), messages
    assert not any("Traceback" in o.detail for o in s.outcomes), "失败信息里不应该出现 traceback"
