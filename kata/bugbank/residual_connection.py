"""模块 05 的 bug bank：真实会写出来的错误残差连接。

每个错误实现都保留公开的构造签名和 ``norm`` / ``sublayer`` 两个属性（与参考实现相同），
只在 forward 里犯一个错。测试会把 ``norm`` 换成已知正确的 RMSNorm，所以这里的错误只关乎“怎么连”。
"""
from __future__ import annotations

from torch import nn

from kata.bugbank import Bug


class _Base(nn.Module):
    def __init__(self, dim: int, sublayer: nn.Module, eps: float = 1e-5):
        super().__init__()
        from solutions import RMSNorm  # 延迟导入：列出 bug 名字时不必加载参考实现

        self.norm = RMSNorm(dim, eps=eps)
        self.sublayer = sublayer


# ---------------------------------------------------------------- Pre-Norm 的错误

class PreIsPost(_Base):
    def forward(self, x):
        return self.norm(x + self.sublayer(x))


class PreResidualFromNormed(_Base):
    def forward(self, x):
        h = self.norm(x)
        return h + self.sublayer(h)


class PreNoResidual(_Base):
    def forward(self, x):
        return self.sublayer(self.norm(x))


class PreNormTwice(_Base):
    def forward(self, x):
        return self.norm(x + self.sublayer(self.norm(x)))


class PreNormOnBranchOutput(_Base):
    def forward(self, x):
        return x + self.norm(self.sublayer(x))


class PreDetachedResidual(_Base):
    def forward(self, x):
        return x.detach() + self.sublayer(self.norm(x))


class PreInplaceAdd(_Base):
    def forward(self, x):
        x += self.sublayer(self.norm(x))
        return x


# ---------------------------------------------------------------- Post-Norm 的错误

class PostIsPre(_Base):
    def forward(self, x):
        return x + self.sublayer(self.norm(x))


class PostNormBranchOnly(_Base):
    def forward(self, x):
        return x + self.norm(self.sublayer(x))


class PostNoResidual(_Base):
    def forward(self, x):
        return self.norm(self.sublayer(x))


class _FreshNorm(_Base):
    """forward 里现建一个 RMSNorm(dim)（weight 全 1、默认 eps），而不是用 self.norm：
    训练学到的 weight、构造时给的 eps 都用不上，而且这个 norm 不在 parameters() 里。"""

    def _fresh(self, x):
        from solutions import RMSNorm

        return RMSNorm(x.shape[-1]).to(x.dtype)(x)


class PreFreshNorm(_FreshNorm):
    def forward(self, x):
        return x + self.sublayer(self._fresh(x))


class PostFreshNorm(_FreshNorm):
    def forward(self, x):
        return self._fresh(x + self.sublayer(x))


BUGS = [
    Bug("pre_is_post", "Pre-Norm 写成了 Post-Norm：先相加再归一化 norm(x + sublayer(x))",
        {"PreNormResidual": PreIsPost}),
    Bug("pre_residual_from_normed", "加回去的是归一化之后的 norm(x) 而不是原始的 x：h = norm(x); h + sublayer(h)",
        {"PreNormResidual": PreResidualFromNormed}),
    Bug("pre_no_residual", "Pre-Norm 忘了残差：只返回 sublayer(norm(x))，没有加回 x",
        {"PreNormResidual": PreNoResidual}),
    Bug("pre_norm_twice", "归一化做了两次：子层前一次、相加之后又一次 norm(x + sublayer(norm(x)))",
        {"PreNormResidual": PreNormTwice}),
    Bug("pre_norm_on_branch_output", "norm 放到了子层的输出上：x + norm(sublayer(x))，子层吃到的是没归一化的 x",
        {"PreNormResidual": PreNormOnBranchOutput}),
    Bug("pre_detached_residual", "残差用了 x.detach()（或 x.data）：前向数值完全正确，但恒等通路的梯度被切断了",
        {"PreNormResidual": PreDetachedResidual}),
    Bug("pre_inplace_add", "原地相加 x += sublayer(norm(x))：调用者传进来的 x 被改掉了（需要梯度时反向还会报错）",
        {"PreNormResidual": PreInplaceAdd}),
    Bug("post_is_pre", "Post-Norm 写成了 Pre-Norm：x + sublayer(norm(x))，输出没有被归一化",
        {"PostNormResidual": PostIsPre}),
    Bug("post_norm_branch_only", "Post-Norm 只归一化了子层的输出：x + norm(sublayer(x))，相加之后的和没有被归一化",
        {"PostNormResidual": PostNormBranchOnly}),
    Bug("post_no_residual", "Post-Norm 忘了残差：norm(sublayer(x))，没有加回 x",
        {"PostNormResidual": PostNoResidual}),
    Bug("pre_fresh_norm_in_forward", "Pre-Norm 在 forward 里现建了一个 RMSNorm(dim) 而不是用 self.norm："
        "学到的 weight 和构造参数 eps 都用不上（这个 norm 也不在 parameters() 里，永远训练不到）",
        {"PreNormResidual": PreFreshNorm}),
    Bug("post_fresh_norm_in_forward", "Post-Norm 在 forward 里现建了一个 RMSNorm(dim) 而不是用 self.norm："
        "学到的 weight 和构造参数 eps 都用不上", {"PostNormResidual": PostFreshNorm}),
]
