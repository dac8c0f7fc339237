"""“不在 bug bank 里”的错误实现也必须被抓住，并且失败信息要点出概念。

这些实现故意不放进 kata/bugbank：它们模拟一个测试作者没有预料到的学习者错误。
"""
from __future__ import annotations

import textwrap

import pytest

from kata.runner import run_tests

HEADER = """
import torch
from torch import nn

class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

def _hi(x):
    return x.to(torch.promote_types(x.dtype, torch.float32))
"""

HELD_OUT_RMSNORM = {
    # 用最大绝对值归一化（L∞），不是均方根
    "max_abs": "    def forward(self, x):\n        h = _hi(x)\n        return (self.weight * h / (h.abs().amax(-1, keepdim=True) + self.eps)).type_as(x)\n",
    # 先乘权重再归一化：权重的作用被归一化抵消了一部分
    "weight_before_norm": "    def forward(self, x):\n        h = self.weight.to(_hi(x).dtype) * _hi(x)\n        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)\n",
    # eps 写死成 1e-6，忽略构造参数
    "hardcoded_eps": "    def forward(self, x):\n        h = _hi(x)\n        return (self.weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x)\n",
    # 均方根用了绝对值的均值（mean |x|），不是平方的均值再开方
    "mean_abs": "    def forward(self, x):\n        h = _hi(x)\n        return (self.weight * h / (h.abs().mean(-1, keepdim=True) + self.eps)).type_as(x)\n",
    # 原地修改输入张量
    "in_place": "    def forward(self, x):\n        x.mul_(torch.rsqrt(_hi(x).pow(2).mean(-1, keepdim=True) + self.eps).type_as(x))\n        return self.weight.type_as(x) * x\n",
    # 用 .data 断开计算图（前向数值对，梯度错）
    "detached": "    def forward(self, x):\n        h = _hi(x)\n        r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps).detach()\n        return (self.weight * h * r).type_as(x)\n",
}

CONCEPT_WORDS = ("RMSNorm", "eps", "均方根", "gradcheck", "梯度", "对比", "输入", "尺度", "weight", "token")


@pytest.mark.parametrize("name", sorted(HELD_OUT_RMSNORM))
def test_held_out_wrong_rmsnorm_fails_with_a_concept(name, tmp_path):
    path = tmp_path / "rmsnorm.py"
    path.write_text(HEADER + HELD_OUT_RMSNORM[name], encoding="utf-8")
    s = run_tests("01_normalization", str(path))
    assert s.failed > 0, f"错误实现 {name} 通过了模块 01 的全部测试"
    assert s.errors == 0
    messages = [o.message for o in s.outcomes if o.status == "failed"]
    assert all(any(w in m for w in CONCEPT_WORDS) for m in messages), messages
    assert not any("Traceback" in o.detail for o in s.outcomes), "失败信息里不应该出现 traceback"
