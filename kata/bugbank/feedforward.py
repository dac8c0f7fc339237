"""模块 04 的 bug bank：真实会写出来的错误 FeedForward（SwiGLU）。"""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from kata.bugbank import Bug


def _default_width(dim: int, multiple_of: int) -> int:
    return multiple_of * math.ceil(int(8 * dim / 3) / multiple_of)


class _Base(nn.Module):
    """参数与参考实现相同；子类只改 forward 或宽度规则。"""

    bias = False

    def __init__(self, dim, hidden_dim=None, multiple_of=64, dropout=0.0):
        super().__init__()
        hidden_dim = self._width(dim, hidden_dim, multiple_of)
        self.hidden_dim = hidden_dim
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=self.bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=self.bias)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=self.bias)
        self.dropout = nn.Dropout(dropout)

    def _width(self, dim, hidden_dim, multiple_of):
        return _default_width(dim, multiple_of) if hidden_dim is None else hidden_dim

    def forward(self, x):
        return self.dropout(self.down_proj(self._mix(self.gate_proj(x), self.up_proj(x))))

    def _mix(self, g, u):
        return F.silu(g) * u


class GateUpSwapped(_Base):
    def _mix(self, g, u):
        return F.silu(u) * g


class SiluAfterProduct(_Base):
    def _mix(self, g, u):
        return F.silu(g * u)


class ReluGate(_Base):
    def _mix(self, g, u):
        return F.relu(g) * u


class GeluGate(_Base):
    def _mix(self, g, u):
        return F.gelu(g) * u


class SigmoidGate(_Base):
    def _mix(self, g, u):
        return g.sigmoid() * u


class NoGate(_Base):
    """普通两层 MLP：down(silu(up(x)))，gate_proj 建了却没用上。"""

    def forward(self, x):
        return self.dropout(self.down_proj(F.silu(self.up_proj(x))))


class AdditiveGate(_Base):
    def _mix(self, g, u):
        return F.silu(g) + u


class WithBias(_Base):
    bias = True


class WidthRoundedDown(_Base):
    def _width(self, dim, hidden_dim, multiple_of):
        return multiple_of * (int(8 * dim / 3) // multiple_of) if hidden_dim is None else hidden_dim


class WidthFourX(_Base):
    def _width(self, dim, hidden_dim, multiple_of):
        return multiple_of * math.ceil(4 * dim / multiple_of) if hidden_dim is None else hidden_dim


class HiddenDimIgnored(_Base):
    def _width(self, dim, hidden_dim, multiple_of):
        return _default_width(dim, multiple_of)


class DropoutAlways(_Base):
    """用了函数式 F.dropout 却没传 training=self.training：它的默认值是 True，eval 时也在丢。"""

    def __init__(self, dim, hidden_dim=None, multiple_of=64, dropout=0.0):
        super().__init__(dim, hidden_dim, multiple_of, dropout)
        self.p = dropout

    def forward(self, x):
        return F.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)), self.p)


class NoDropout(_Base):
    """建了 self.dropout 却没用上。"""

    def forward(self, x):
        return self.down_proj(self._mix(self.gate_proj(x), self.up_proj(x)))


class DropoutOnHidden(_Base):
    """dropout 放在了隐层上（down_proj 之前），输出上没有。"""

    def forward(self, x):
        return self.down_proj(self.dropout(self._mix(self.gate_proj(x), self.up_proj(x))))


class DropoutDefaultP(_Base):
    """nn.Dropout() 没传 dropout：默认 p=0.5。"""

    def __init__(self, dim, hidden_dim=None, multiple_of=64, dropout=0.0):
        super().__init__(dim, hidden_dim, multiple_of, dropout)
        self.dropout = nn.Dropout()


class MultipleOfIgnored(_Base):
    def _width(self, dim, hidden_dim, multiple_of):
        return _default_width(dim, 64) if hidden_dim is None else hidden_dim


BUGS = [
    Bug("gate_up_swapped", "gate 与 up 用反了：SiLU 作用在了 up_proj 的输出上——down(silu(up(x)) ⊙ gate(x))",
        {"FeedForward": GateUpSwapped}),
    Bug("silu_after_product", "SiLU 放在了乘积之后：down(silu(gate(x) ⊙ up(x)))，门控变成了普通激活",
        {"FeedForward": SiluAfterProduct}),
    Bug("relu_gate", "门控激活用了 ReLU 而不是 SiLU（这是 ReGLU）：负半轴被整段截成 0",
        {"FeedForward": ReluGate}),
    Bug("gelu_gate", "门控激活用了 GELU 而不是 SiLU（这是 GEGLU）", {"FeedForward": GeluGate}),
    Bug("sigmoid_gate", "门控激活用了 sigmoid 而不是 SiLU（这是最早的 GLU）：silu(g) = g·sigmoid(g)，少乘了 g",
        {"FeedForward": SigmoidGate}),
    Bug("no_gate", "没有门控：写成了普通两层 MLP down(silu(up(x)))，gate_proj 没用上",
        {"FeedForward": NoGate}),
    Bug("additive_gate", "门与值相加而不是逐元素相乘：down(silu(gate(x)) + up(x))",
        {"FeedForward": AdditiveGate}),
    Bug("with_bias", "线性层带了 bias：minimind 的三个投影都是 bias=False（零输入不再得到零输出）",
        {"FeedForward": WithBias}),
    Bug("width_rounded_down", "默认宽度向下取整了：512 得到 1344 而不是 1408（应该向上取整到 multiple_of 的倍数）",
        {"FeedForward": WidthRoundedDown}),
    Bug("width_4x", "默认宽度用了 4·dim（普通 MLP 的宽度），忘了 SwiGLU 要乘 2/3：512 得到 2048 而不是 1408",
        {"FeedForward": WidthFourX}),
    Bug("hidden_dim_ignored", "显式传入的 hidden_dim 被忽略了，总是用默认宽度", {"FeedForward": HiddenDimIgnored}),
    Bug("dropout_always", "用了 F.dropout(h, p) 却没传 training=self.training：eval 模式下也在随机丢弃",
        {"FeedForward": DropoutAlways}),
    Bug("no_dropout", "FeedForward 没有做 dropout（建了 self.dropout 却没用上）：dropout=p 在训练时不起作用",
        {"FeedForward": NoDropout}),
    Bug("dropout_on_hidden", "dropout 放在了隐层上：down(dropout(silu(gate(x)) ⊙ up(x)))；本课（与 minimind 一样）"
        "是 dropout(down(…))，放在 down_proj 的输出上", {"FeedForward": DropoutOnHidden}),
    Bug("dropout_default_p", "nn.Dropout() 没传构造参数 dropout：默认 p=0.5，dropout=0 时训练也在丢", {"FeedForward": DropoutDefaultP}),
    Bug("multiple_of_ignored", "默认宽度写死了 64 的倍数，忽略了构造参数 multiple_of", {"FeedForward": MultipleOfIgnored}),
]
