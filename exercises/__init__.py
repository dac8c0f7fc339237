"""学习者的实现。`from exercises import RMSNorm` 会按需加载 exercises/01_normalization/rmsnorm.py。

后面的模块用同样的方式组合前面的模块（你的 Block 用的是你自己的 RMSNorm）。
"""
from kata.impl import side_dir as _side_dir, side_getattr as _side_getattr


def __getattr__(name):
    return _side_getattr("exercises", name)


def __dir__():
    return _side_dir("exercises")
