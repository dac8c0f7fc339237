"""参考实现。`from solutions import RMSNorm` 会按需加载 solutions/01_normalization/rmsnorm.py。

后面的模块用同样的方式组合前面的模块（参考 Block 用参考 RMSNorm）。
"""
from kata.impl import side_dir as _side_dir, side_getattr as _side_getattr


def __getattr__(name):
    return _side_getattr("solutions", name)


def __dir__():
    return _side_dir("solutions")
