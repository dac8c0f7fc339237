"""模块 01 的 bug bank：真实会写出来的错误 RMSNorm。"""
from __future__ import annotations

import torch
from torch import nn

from kata.bugbank import Bug


class _Base(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _finish(self, normed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.weight.type_as(x) * normed.type_as(x)


class EpsOutsideSqrt(_Base):
    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return self._finish(xf / (xf.pow(2).mean(-1, keepdim=True).sqrt() + self.eps), x)


class NoEps(_Base):
    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return self._finish(xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True)), x)


class SubtractsMean(_Base):
    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        xc = xf - xf.mean(-1, keepdim=True)
        return self._finish(xc * torch.rsqrt(xc.pow(2).mean(-1, keepdim=True) + self.eps), x)


class GlobalRms(_Base):
    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return self._finish(xf * torch.rsqrt(xf.pow(2).mean() + self.eps), x)


class FirstAxis(_Base):
    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return self._finish(xf * torch.rsqrt(xf.pow(2).mean(0, keepdim=True) + self.eps), x)


class NoWeight(_Base):
    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)


class NoFloat32(_Base):
    def forward(self, x):
        return self.weight.type_as(x) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class KeepsFloat32(_Base):
    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps))


class Float64Downcast(_Base):
    def forward(self, x):
        xf = x.float()  # minimind 的原话；float64 输入会被降成 float32
        return self._finish(xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps), x)


class SumInsteadOfMean(_Base):
    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return self._finish(xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + self.eps), x)


class MultipliesByRms(_Base):
    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return self._finish(xf * torch.sqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps), x)


class UnbiasedStd(_Base):
    def forward(self, x):
        xf = x.to(torch.promote_types(x.dtype, torch.float32))
        return self._finish(xf / torch.sqrt(xf.var(-1, keepdim=True) + self.eps), x)


BUGS = [
    Bug("eps_outside_sqrt", "eps 放在了 sqrt 外面：x / (sqrt(mean(x²)) + eps)", {"RMSNorm": EpsOutsideSqrt}),
    Bug("no_eps", "忘了 eps：全零输入会除以 0 得到 NaN", {"RMSNorm": NoEps}),
    Bug("subtracts_mean", "先减了均值——这是 LayerNorm，不是 RMSNorm", {"RMSNorm": SubtractsMean}),
    Bug("global_rms", "mean 没有指定 dim：对整个张量求了一个均方根，而不是每个 token 各自求", {"RMSNorm": GlobalRms}),
    Bug("first_axis", "沿第 0 维（batch）求均值，而不是最后一维（特征维）", {"RMSNorm": FirstAxis}),
    Bug("no_weight", "忘了乘可学习的逐通道权重 weight", {"RMSNorm": NoWeight}),
    Bug("no_float32", "没有先转 float32：在 float16 里算 x² 会溢出（> 65504 变成 inf）", {"RMSNorm": NoFloat32}),
    Bug("keeps_float32", "最后没有转回输入的 dtype：float16 进、float32 出", {"RMSNorm": KeepsFloat32}),
    Bug("float64_downcast", "用了 x.float()：float64 输入也被降到 float32 计算（精度只剩 ~1e-7，gradcheck 过不了）；"
        "本课要求“至少 float32”：x.to(torch.promote_types(x.dtype, torch.float32))", {"RMSNorm": Float64Downcast}),
    Bug("sum_instead_of_mean", "用了 sum 而不是 mean：结果整体小了 sqrt(dim) 倍", {"RMSNorm": SumInsteadOfMean}),
    Bug("multiplies_by_rms", "乘以 RMS 而不是除以 RMS（sqrt 与 rsqrt 搞反了）", {"RMSNorm": MultipliesByRms}),
    Bug("unbiased_std", "用 x.var()/x.std() 代替均方根：既减了均值又用了 N-1 的无偏估计", {"RMSNorm": UnbiasedStd}),
]
