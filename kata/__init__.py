"""minimind-kata 的小工具包：实现切换、配置、数据、实验运行器、绘图、进度命令行。

常用入口::

    from kata import MiniMindConfig, resolve, component
    python -m kata status | check 01 | hint 01 | quickstart
    python -m kata.data --download-all
"""
from kata.config import MiniMindConfig
from kata.impl import component, resolve

__all__ = ["MiniMindConfig", "component", "resolve"]
