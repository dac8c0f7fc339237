"""实现切换（kata.impl）与 conftest 的 --solutions / --impl / KATA_IMPL。"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kata import impl as kimpl
from kata.config import MiniMindConfig
from kata.curriculum import get_module, module_of_name


def test_resolve_sides_load_different_files():
    ex = kimpl.resolve("01_normalization", "exercises")
    sol = kimpl.resolve("01_normalization", "solutions")
    assert ex.RMSNorm is not sol.RMSNorm
    assert ex._files[0].endswith("exercises/01_normalization/rmsnorm.py")
    assert sol._files[0].endswith("solutions/01_normalization/rmsnorm.py")
    # 同一文件只加载一次：类的身份稳定
    assert kimpl.resolve("01", "solutions").RMSNorm is sol.RMSNorm


def test_package_reexports_are_lazy_and_per_side():
    import exercises
    import solutions

    assert solutions.RMSNorm is kimpl.resolve("01", "solutions").RMSNorm
    assert exercises.RMSNorm is kimpl.resolve("01", "exercises").RMSNorm
    assert "RMSNorm" in dir(solutions)
    with pytest.raises(AttributeError):
        exercises.NoSuchThing  # noqa: B018


def test_resolve_path_file_and_dir(tmp_path):
    code = "import torch\nclass RMSNorm(torch.nn.Module):\n    def __init__(self, dim, eps=1e-5):\n        super().__init__()\n        self.tag = 'mine'\n"
    (tmp_path / "rmsnorm.py").write_text(code, encoding="utf-8")
    by_dir = kimpl.resolve("01", str(tmp_path))
    by_file = kimpl.resolve("01", str(tmp_path / "rmsnorm.py"))
    assert by_dir.RMSNorm(4).tag == "mine" and by_file.RMSNorm(4).tag == "mine"


def test_resolve_bug_overlays_solutions():
    ns = kimpl.resolve("01", "bug:no_weight")
    norm = ns.RMSNorm(4)
    with torch.no_grad():
        norm.weight.fill_(3.0)
    out = norm(torch.ones(1, 4))
    assert torch.allclose(out, torch.ones(1, 4))  # 错误实现忽略了 weight


@pytest.mark.parametrize("bad", ["nonsense_impl", "bug:not_a_bug"])
def test_bad_impl_values_raise_clear_errors(bad):
    with pytest.raises((kimpl.ImplLoadError, ValueError), match="bug bank|路径|不是"):
        kimpl.resolve("01", bad)


def test_syntax_error_in_learner_file_is_reported_in_chinese(tmp_path):
    (tmp_path / "rmsnorm.py").write_text("def oops(:\n", encoding="utf-8")
    with pytest.raises(kimpl.ImplLoadError, match="无法导入.*SyntaxError"):
        kimpl.resolve("01", str(tmp_path))


def test_missing_public_name_is_reported(tmp_path):
    (tmp_path / "rmsnorm.py").write_text("x = 1\n", encoding="utf-8")
    with pytest.raises(kimpl.ImplLoadError, match="没有定义 RMSNorm"):
        kimpl.resolve("01", str(tmp_path))


def test_curriculum_lookup():
    assert get_module("1").key == get_module("01_normalization").key == "01_normalization"
    assert module_of_name("RMSNorm")[0].key == "01_normalization"
    with pytest.raises(ValueError, match="没有这个模块"):
        get_module("42")


def test_config_defaults_match_minimind2_small():
    cfg = MiniMindConfig()
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (512, 8, 8, 2)
    assert cfg.head_dim == 64 and cfg.ffn_hidden_size == 1408 and cfg.vocab_size == 6400
    assert cfg.rope_theta == 1e6 and cfg.rms_norm_eps == 1e-5 and cfg.tie_word_embeddings
    with pytest.raises(ValueError, match="整除"):
        MiniMindConfig(num_attention_heads=8, num_key_value_heads=3)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_solutions_switch_reaches_the_tests(how, tmp_path):
    # 同一个测试文件：不带开关测桩（失败），带 --solutions 或 KATA_IMPL=solutions 测参考实现（通过）
    env = dict(os.environ)
    env.pop("KATA_IMPL", None)
    args = [sys.executable, "-m", "pytest", "exercises/01_normalization", "-p", "no:cacheprovider",
            "-k", "test_output_shape"]
    if how == "flag":
        args.append("--solutions")
    else:
        env["KATA_IMPL"] = "solutions"
    proc = subprocess.run(args, cwd=kimpl.REPO_ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "4 passed" in proc.stdout, proc.stdout[-1500:]
    assert "参考实现" in proc.stdout  # 报告头写明了被测实现


def test_infinite_loop_ends_with_a_readable_timeout(tmp_path):
    (tmp_path / "rmsnorm.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class RMSNorm(nn.Module):\n"
        "    def __init__(self, dim, eps=1e-5):\n"
        "        super().__init__()\n        self.eps = eps\n        self.weight = nn.Parameter(torch.ones(dim))\n\n"
        "    def forward(self, x):\n        while True:\n            pass\n",
        encoding="utf-8",
    )
    env = dict(os.environ)
    env.pop("KATA_IMPL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "exercises/01_normalization", f"--impl={tmp_path}", "-q",
         "-p", "no:cacheprovider", "-o", "timeout=2", "-k", "test_eps_is_stored"],
        cwd=kimpl.REPO_ROOT, capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 1 and "超时：这个测试运行超过了 2 秒" in proc.stdout, proc.stdout[-1500:]
