"""模块 05：“不在 bug bank 里”的错误残差连接也必须被抓住，并且失败信息要点出概念。

这些实现故意不放进 kata/bugbank/residual_connection.py：它们模拟测试作者没有预料到的学习者错误。
每个文件都是一份完整的 residual.py（两个类都在），只有一处写错。
"""
from __future__ import annotations

import pytest

from kata.runner import run_tests

HEADER = """
import torch
import torch.nn.functional as F
from torch import nn

from exercises import RMSNorm


class _Wrap(nn.Module):
    def __init__(self, dim, sublayer, eps=1e-5):
        super().__init__()
        self.norm = RMSNorm(dim, eps=eps)
        self.sublayer = sublayer
"""

GOOD_PRE = """
class PreNormResidual(_Wrap):
    def forward(self, x):
        return x + self.sublayer(self.norm(x))
"""

GOOD_POST = """
class PostNormResidual(_Wrap):
    def forward(self, x):
        return self.norm(x + self.sublayer(x))
"""

HELD_OUT = {
    # 符号写反：减去了子层的输出
    "pre_subtracts_branch": """
class PreNormResidual(_Wrap):
    def forward(self, x):
        return x - self.sublayer(self.norm(x))
""" + GOOD_POST,
    # 把“残差”理解成了平均：(x + F(N(x))) / 2
    "pre_averages": """
class PreNormResidual(_Wrap):
    def forward(self, x):
        return 0.5 * (x + self.sublayer(self.norm(x)))
""" + GOOD_POST,
    # 用了 LayerNorm 而不是模块 01 的 RMSNorm（forward 本身是对的）
    "pre_uses_layernorm": """
class PreNormResidual(nn.Module):
    def __init__(self, dim, sublayer, eps=1e-5):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.sublayer = sublayer

    def forward(self, x):
        return x + self.sublayer(self.norm(x))
""" + GOOD_POST,
    # 没把 eps 传给 RMSNorm
    "post_drops_eps": GOOD_PRE + """
class PostNormResidual(nn.Module):
    def __init__(self, dim, sublayer, eps=1e-5):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.sublayer = sublayer

    def forward(self, x):
        return self.norm(x + self.sublayer(x))
""",
    # forward 里没有用 self.norm，而是手写了一个不带 weight 的归一化
    "post_ignores_self_norm": GOOD_PRE + """
class PostNormResidual(_Wrap):
    def forward(self, x):
        h = x + self.sublayer(x)
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)
""",
    # 归一化了输入 x 再加子层输出：norm(x) + F(x)
    "post_norm_on_input": GOOD_PRE + """
class PostNormResidual(_Wrap):
    def forward(self, x):
        return self.norm(x) + self.sublayer(x)
""",
}

CONCEPT_WORDS = ("PreNormResidual", "PostNormResidual", "Pre-Norm", "Post-Norm", "norm", "残差", "RMSNorm",
                 "恒等", "子层", "梯度", "归一化")


@pytest.mark.parametrize("name", sorted(HELD_OUT))
def test_held_out_wrong_residual_fails_with_a_concept(name, tmp_path):
    path = tmp_path / "residual.py"
    path.write_text(HEADER + HELD_OUT[name], encoding="utf-8")
    s = run_tests("05_residual_connection", str(path))
    assert s.total > 0, s.output[-2000:]
    assert s.failed > 0, f"错误实现 {name} 通过了模块 05 的全部测试"
    assert s.errors == 0, [o.message for o in s.outcomes if o.status == "error"]
    messages = [o.message for o in s.outcomes if o.status == "failed"]
    assert all(any(w in m for w in CONCEPT_WORDS) for m in messages), messages
    assert not any("Traceback" in o.detail for o in s.outcomes), "失败信息里不应该出现 traceback"


def test_held_out_correct_file_passes(tmp_path):
    # 对照：同样的文件头、两个类都写对时必须全部通过——上面的失败确实来自那一处错误
    path = tmp_path / "residual.py"
    path.write_text(HEADER + GOOD_PRE + GOOD_POST, encoding="utf-8")
    s = run_tests("05_residual_connection", str(path))
    bad = [(o.name, o.message) for o in s.outcomes if o.status != "passed"]
    assert s.total > 0 and not bad, bad[:5]
