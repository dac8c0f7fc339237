"""模块 04：“不在 bug bank 里”的错误 FeedForward 也必须被抓住，并且失败信息要点出概念。

这些实现故意不放进 kata/bugbank/feedforward.py：它们模拟一个测试作者没有预料到的学习者错误。
"""
from __future__ import annotations

import pytest

from kata.runner import run_tests

HEADER = """
import math
import torch
import torch.nn.functional as F
from torch import nn

class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim=None, multiple_of=64, dropout=0.0):
        super().__init__()
        if hidden_dim is None:
            hidden_dim = WIDTH
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

"""
RIGHT_WIDTH = "multiple_of * math.ceil(int(8 * dim / 3) / multiple_of)"
RIGHT_FORWARD = ("    def forward(self, x):\n"
                 "        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))\n")

HELD_OUT_FFN = {
    # 门控激活用了 tanh（另一种“软开关”）
    "tanh_gate": (RIGHT_WIDTH, "    def forward(self, x):\n"
                  "        return self.dropout(self.down_proj(torch.tanh(self.gate_proj(x)) * self.up_proj(x)))\n"),
    # 两个分支都过了 SiLU
    "silu_on_both": (RIGHT_WIDTH, "    def forward(self, x):\n"
                     "        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * F.silu(self.up_proj(x))))\n"),
    # 宽度先 ceil 再取整（少了 int() 截断）：多数 dim 看不出来，multiple_of 小时就露馅
    "width_without_int": ("multiple_of * math.ceil(8 * dim / 3 / multiple_of)", RIGHT_FORWARD),
    # 门控分支被 detach：前向数值全对，梯度断了
    "detached_gate": (RIGHT_WIDTH, "    def forward(self, x):\n"
                      "        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)).detach() * self.up_proj(x)))\n"),
    # “归一化”了隐层：除以 sqrt(hidden)
    "scaled_hidden": (RIGHT_WIDTH, "    def forward(self, x):\n"
                      "        h = F.silu(self.gate_proj(x)) * self.up_proj(x)\n"
                      "        return self.dropout(self.down_proj(h / math.sqrt(h.shape[-1])))\n"),
    # 用了近似的 SiLU：x·sigmoid(1.702x)（那其实是 GELU 的 sigmoid 近似）
    "approx_gelu_gate": (RIGHT_WIDTH, "    def forward(self, x):\n"
                         "        g = self.gate_proj(x)\n"
                         "        return self.dropout(self.down_proj(g * torch.sigmoid(1.702 * g) * self.up_proj(x)))\n"),
    # dropout 做在了输入 x 上（进投影之前），而不是 down_proj 的输出上
    "dropout_on_input": (RIGHT_WIDTH, "    def forward(self, x):\n"
                         "        x = self.dropout(x)\n"
                         "        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))\n"),
    # dropout 只做在 gate 分支上
    "dropout_on_gate_branch": (RIGHT_WIDTH, "    def forward(self, x):\n"
                               "        return self.down_proj(self.dropout(F.silu(self.gate_proj(x))) * self.up_proj(x))\n"),
}

CONCEPT_WORDS = ("FeedForward", "SwiGLU", "SiLU", "silu", "gate", "up", "宽度", "hidden", "bias", "gradcheck",
                 "梯度", "对比", "dropout", "输入", "激活", "token")


@pytest.mark.parametrize("name", sorted(HELD_OUT_FFN))
def test_held_out_wrong_feedforward_fails_with_a_concept(name, tmp_path):
    width, forward = HELD_OUT_FFN[name]
    path = tmp_path / "feedforward.py"
    path.write_text(HEADER.replace("WIDTH", width) + forward, encoding="utf-8")
    s = run_tests("04_feedforward", str(path))
    assert s.failed > 0, f"错误实现 {name} 通过了模块 04 的全部测试"
    assert s.errors == 0
    messages = [o.message for o in s.outcomes if o.status == "failed"]
    assert all(any(w in m for w in CONCEPT_WORDS) for m in messages), messages
    assert not any("Traceback" in o.detail for o in s.outcomes), "失败信息里不应该出现 traceback"
