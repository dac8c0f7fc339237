"""kata.experiment 与 kata.plots 的自检：命令行、原子写入的结果 JSON、“还没实现”的一句话、
设备选择、画图函数，以及结论确实由数字决定（数字反过来，措辞也反过来）。"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from kata import data as kata_data
from kata import experiment as kx
from kata import plots
from kata.experiment import Experiment
from kata.impl import REPO_ROOT

EXP_DIR = REPO_ROOT / "experiments" / "01_normalization"
EXP1 = EXP_DIR / "exp1_gradient_vanishing.py"
REQUIRED_KEYS = {
    "experiment", "module", "mode", "status", "config", "seed", "seeds", "impl", "provenance", "dataset",
    "metrics", "conclusion", "figures", "wall_time_s", "cpu_time_s", "versions",
}
STUB = '''
import torch
from torch import nn

class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        raise NotImplementedError("还没实现：RMSNorm.forward")
'''


def load_script(path: Path):
    """按路径导入一个实验脚本（文件名以数字开头的目录不能直接 import）。"""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_exp_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def exp1():
    return load_script(EXP1)


def result_file(out_dir: Path, exp: str = "exp_tiny", stem: str = "quick-exercises") -> Path:
    """结果按（模式, 实现）分开：<out_dir>/<实验名>/<模式>-<实现>.json。"""
    return Path(out_dir) / exp / f"{stem}.json"


def _env():
    env = dict(os.environ)
    env.pop("KATA_IMPL", None)
    env["PYTHONPATH"] = ""
    return env


# ---------------------------------------------------------------------------------------------
# 一个很小的实验：结论由参数 --better 决定方向
# ---------------------------------------------------------------------------------------------

class TinyExperiment(Experiment):
    name = "exp_tiny"
    module = "01_normalization"
    title = "小实验"
    description = "只用于测试实验框架。"

    def add_arguments(self, parser):
        parser.add_argument("--better", choices=("a", "b"), default="b", help="哪一组更好")

    def run(self):
        seeds = self.seeds(full=3, quick=1, smoke=1)
        a = [1.00 + 0.01 * i for i in range(len(seeds))]
        b = [x + (-0.5 if self.args.better == "b" else 0.5) for x in a]
        self.config(groups=2)
        self.print_table(["组", "loss"], [["A", kx.fmt_mean_std(a)], ["B", kx.fmt_mean_std(b)]])
        self.conclude(kx.describe_gap(a, b, "A", "B"))
        return {"a": a, "b": b, "nan_value": float("nan")}


class NeedsStubbedComponent(Experiment):
    name = "exp_needs_component"
    module = "01_normalization"
    title = "需要组件的小实验"
    requires = ("RMSNorm",)

    def run(self):
        raise AssertionError("组件是桩的时候不应该跑到 run()")


class RaisesTinyLMError(Experiment):
    name = "exp_tinylm_error"
    module = "01_normalization"
    title = "模拟 tinylm 抛出 ComponentNotImplemented"

    def run(self):
        class ComponentNotImplemented(RuntimeError):  # 与 kata.tinylm 的同名异常同形
            pass

        raise ComponentNotImplemented("exercises/01_normalization/rmsnorm.py 里的 RMSNorm 还没实现：先让测试通过。\n第二行")


class HasNumberOptions(Experiment):
    name = "exp_numbers"
    module = "01_normalization"
    title = "有数值选项的小实验"

    def add_arguments(self, parser):
        parser.add_argument("--steps", type=int, default=None, help="步数")
        parser.add_argument("--lr", type=float, default=1e-3, help="学习率")
        parser.add_argument("--depths", type=int, nargs="+", default=None, help="层数")
        parser.add_argument("--warmup", type=int, default=None, help="warmup 步数（可以是 0）")
        parser.add_argument("--heads", type=int, default=4, help="头数")
        parser.add_argument("--dim", type=int, default=64, help="宽度")

    def run(self):
        from kata.tinylm import TinyLMConfig

        TinyLMConfig(vocab_size=10, dim=self.args.dim, n_layers=1, n_heads=self.args.heads, max_seq_len=8)
        self.conclude("ok")
        return {"steps": self.args.steps}


class NeedsData(Experiment):
    name = "exp_needs_data"
    module = "01_normalization"
    title = "需要数据的小实验"

    def run(self):
        corpus = self.load_corpus()
        self.conclude("数据来源：" + corpus.source)
        return {"n": len(corpus.text)}


class NeedsDataWithFallback(NeedsData):
    name = "exp_needs_data_fallback"
    can_use_synthetic = True


# ---------------------------------------------------------------------------------------------
# 命令行与帮助
# ---------------------------------------------------------------------------------------------

def test_help_is_chinese_and_lists_common_options(capsys):
    with pytest.raises(SystemExit) as exc:
        TinyExperiment.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for needle in ("用法", "快速模式", "--quick", "--smoke", "CI 用", "--impl", "{exercises,solutions}",
                   "--seed", "--device", "--data-file", "--out-dir", "本实验的选项", "--better", "显示这段帮助"):
        assert needle in out, f"--help 里应有 {needle!r}：\n{out}"


def test_impl_accepts_documented_choices_bug_and_paths(tmp_path):
    assert kx._impl_arg("exercises") == "exercises"
    assert kx._impl_arg("solutions") == "solutions"
    assert kx._impl_arg("bug:no_eps") == "bug:no_eps"
    f = tmp_path / "rmsnorm.py"
    f.write_text(STUB)
    assert kx._impl_arg(str(f)) == str(f.resolve())
    assert kx.impl_problem(str(f.resolve()), ["01_normalization"]) is None
    assert "不存在" in kx.impl_problem("./nope.py", ["01_normalization"])
    assert "exercises、solutions" in kx.impl_problem("nonsense-impl", ["01_normalization"])


# ---------------------------------------------------------------------------------------------
# 结果 JSON
# ---------------------------------------------------------------------------------------------

def test_json_has_required_keys_and_is_strict(tmp_path, capsys):
    assert TinyExperiment.main(["--quick", "--seed", "7", "--out-dir", str(tmp_path)]) == 0
    path = result_file(tmp_path)
    text = path.read_text(encoding="utf-8")
    rec = json.loads(text, parse_constant=lambda c: pytest.fail(f"JSON 里不应有 {c}"))
    assert REQUIRED_KEYS <= set(rec), REQUIRED_KEYS - set(rec)
    assert rec["mode"] == "quick" and rec["seed"] == 7 and rec["seeds"] == [7]
    assert rec["impl"] == "exercises"
    assert rec["config"]["quick"] is True and rec["config"]["experiment"] == {"groups": 2}
    assert rec["metrics"]["nan_value"] is None          # NaN 写成 null
    assert set(rec["versions"]) >= {"python", "torch", "numpy", "platform", "device"}
    assert rec["conclusion"] and "B 的验证 loss 比 A 低" in rec["conclusion"]
    assert rec["tables"][0]["headers"] == ["组", "loss"]
    assert [p.name for p in path.parent.iterdir()] == ["quick-exercises.json"]   # 没有留下临时文件
    out = capsys.readouterr().out
    assert "结论" in out and str(path) in out     # tmp_path 不在当前目录下：打印绝对路径


def test_full_mode_runs_several_seeds(tmp_path):
    before = torch.get_num_threads()
    assert TinyExperiment.main(["--seed", "3", "--threads", "1", "--out-dir", str(tmp_path)]) == 0
    assert torch.get_num_threads() == before   # 线程数在进程内调用后还原
    rec = json.loads(result_file(tmp_path, stem="full-exercises").read_text(encoding="utf-8"))
    assert rec["mode"] == "full" and rec["seeds"] == [3, 4, 5]
    assert rec["versions"]["torch_threads"] == 1 and rec["command"][-1] == str(tmp_path)
    assert "超过了种子间的波动" in rec["conclusion"]


def test_json_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    kx.atomic_write_json(path, {"v": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(kx.os, "replace", boom)
    with pytest.raises(OSError):
        kx.atomic_write_json(path, {"v": 2})
    assert json.loads(path.read_text()) == {"v": 1}       # 旧文件完好
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # 临时文件已删除


def test_to_jsonable_handles_tensors_numpy_and_nonfinite():
    obj = {"t": torch.tensor([1.0, float("inf")]), "n": np.float32(2.5), "a": np.arange(3), "p": Path("x"),
           "s": torch.tensor(3.0), "tup": (1, float("nan"))}
    assert kx.to_jsonable(obj) == {"t": [1.0, None], "n": 2.5, "a": [0, 1, 2], "p": "x", "s": 3.0,
                                   "tup": [1, None]}


# ---------------------------------------------------------------------------------------------
# “还没实现” → 一句中文、退出码 2、没有 traceback
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def stub_file(tmp_path):
    f = tmp_path / "stub_rmsnorm.py"
    f.write_text(STUB)
    return f


def test_stub_component_exits_2_with_one_sentence(stub_file, tmp_path, capsys):
    code = NeedsStubbedComponent.main(["--impl", str(stub_file), "--smoke", "--out-dir", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "还没有实现" in err and "--impl solutions" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_stub_sentence_for_exercises_names_the_file():
    s = kx.not_implemented_sentence("RMSNorm", "exercises")
    assert "exercises/01_normalization/rmsnorm.py" in s and "--impl solutions" in s and "\n" not in s


def test_tinylm_style_error_is_one_line_exit_2(tmp_path, capsys):
    assert RaisesTinyLMError.main(["--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "还没实现" in err and "Traceback" not in err


def test_exp1_script_from_its_own_folder_with_stub_impl_exits_2_without_traceback(stub_file, tmp_path):
    """真正的命令行：在脚本自己的文件夹里运行（验证开头的 sys.path 引导），学习者的组件还是桩。"""
    proc = subprocess.run(
        [sys.executable, EXP1.name, "--impl", str(stub_file), "--smoke", "--out-dir", str(tmp_path / "out")],
        cwd=EXP1.parent, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "RMSNorm" in err, err
    assert proc.stdout == ""                      # 只有那一句话，没有别的输出
    assert not (tmp_path / "out").exists()


def test_broken_component_also_gives_one_sentence(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text(STUB.replace('raise NotImplementedError("还没实现：RMSNorm.forward")', "return x.view(-1, 5)"))
    with pytest.raises(kx.ComponentNotImplemented) as exc:
        kx.check_component("RMSNorm", str(f))
    assert "出错" in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------------------------------------
# 数据
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def offline(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("KATA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("KATA_DATA_DIR", raising=False)
    monkeypatch.setattr(kata_data, "SHAKESPEARE_URL", f"http://127.0.0.1:{port}/input.txt")


def test_data_unavailable_exits_1_with_message(offline, tmp_path, capsys):
    assert NeedsData.main(["--out-dir", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "KATA_DATA_DIR" in err and "Traceback" not in err


def test_synthetic_fallback_is_recorded(offline, tmp_path):
    assert NeedsDataWithFallback.main(["--out-dir", str(tmp_path)]) == 0
    rec = json.loads(result_file(tmp_path, "exp_needs_data_fallback", "full-exercises").read_text(encoding="utf-8"))
    assert rec["dataset"]["fell_back_to_synthetic"] is True and rec["dataset"]["name"] == "synthetic"
    assert "合成语料" in rec["conclusion"]


def test_data_file_is_honoured(tmp_path, monkeypatch):
    real = os.environ.get("KATA_DATA_DIR")
    f = Path(real) / kata_data.SHAKESPEARE_FILE if real else None
    if f is None or not f.is_file():
        pytest.skip("需要 KATA_DATA_DIR 指向放着 tinyshakespeare.txt 的目录")
    monkeypatch.delenv("KATA_DATA_DIR")
    assert NeedsData.main(["--data-file", str(f), "--out-dir", str(tmp_path)]) == 0
    rec = json.loads(result_file(tmp_path, "exp_needs_data", "full-exercises").read_text(encoding="utf-8"))
    assert rec["dataset"]["source"] == "data_file" and rec["dataset"]["sha256"] == kata_data.SHAKESPEARE_SHA256


# ---------------------------------------------------------------------------------------------
# 设备
# ---------------------------------------------------------------------------------------------

def test_device_auto_picks_cpu_here():
    if torch.cuda.is_available() or kx._mps_available():
        pytest.skip("这台机器有加速器")
    assert kx.pick_device("auto") == "cpu"
    assert kx.pick_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="CUDA"):
        kx.pick_device("cuda")


@pytest.mark.parametrize("argv, flag", [
    (["--steps", "0"], "--steps"), (["--steps", "-5"], "--steps"), (["--lr", "-1"], "--lr"),
    (["--lr", "nan"], "--lr"), (["--depths", "4", "0"], "--depths"), (["--warmup", "-1"], "--warmup"),
])
def test_nonpositive_numbers_are_usage_errors(argv, flag, tmp_path, capsys):
    """--steps 0 不能被当成“没给”而悄悄跑默认步数；--lr -1 不能变成 PyTorch 的英文 traceback。"""
    with pytest.raises(SystemExit) as info:
        HasNumberOptions.main(argv + ["--smoke", "--out-dir", str(tmp_path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} 必须是" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir()), "参数错误时不应写出任何结果文件"


def test_zero_is_fine_where_it_makes_sense(tmp_path):
    assert HasNumberOptions.main(["--warmup", "0", "--smoke", "--out-dir", str(tmp_path)]) == 0


def test_impossible_model_shape_is_one_sentence(tmp_path, capsys):
    assert HasNumberOptions.main(["--dim", "30", "--heads", "4", "--smoke", "--out-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "这组参数搭不出模型" in err and "dim（30）" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_unavailable_device_exits_1(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("这台机器有 CUDA")
    assert TinyExperiment.main(["--device", "cuda", "--out-dir", str(tmp_path)]) == 1
    assert "CUDA" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 结论由数字算出
# ---------------------------------------------------------------------------------------------

def test_flipped_metrics_flip_the_conclusion(tmp_path):
    TinyExperiment.main(["--quick", "--better", "b", "--out-dir", str(tmp_path / "b")])
    TinyExperiment.main(["--quick", "--better", "a", "--out-dir", str(tmp_path / "a")])
    cb = json.loads(result_file(tmp_path / "b").read_text(encoding="utf-8"))["conclusion"]
    ca = json.loads(result_file(tmp_path / "a").read_text(encoding="utf-8"))["conclusion"]
    assert "低" in cb and "更好" in cb
    assert "高" in ca and "更差" in ca
    assert "只跑了 1 个种子" in ca


def test_describe_gap_compares_with_seed_spread():
    a = [1.00, 1.02, 0.98]
    assert "没有超过种子间的波动" in kx.describe_gap(a, [1.01, 1.03, 0.99], "A", "B")
    assert "超过了种子间的波动" in kx.describe_gap(a, [1.50, 1.52, 1.48], "A", "B")
    assert "几乎相同" in kx.describe_gap(a, a, "A", "B", tie=1e-9)
    assert "发散" in kx.describe_gap(a, [float("nan")], "A", "B")
    s = kx.summarize([1.0, float("inf"), 3.0])
    assert s["mean"] == 2.0 and s["n"] == 2 and s["n_nonfinite"] == 1
    assert kx.orders_of_magnitude(1e-3) == pytest.approx(3) and math.isinf(kx.orders_of_magnitude(0))


def test_exp1_conclusion_follows_the_numbers(exp1):
    good_no = {"log10_ratio_mean": -11.0}
    good_rms = {"log10_ratio_mean": -0.2}
    text, ok = exp1.scenario_sentence("vanish", good_no, good_rms, "你的 RMSNorm")
    assert ok and "梯度消失" in text and "同一个量级" in text
    text, ok = exp1.scenario_sentence("explode", {"log10_ratio_mean": 5.0}, good_rms, "你的 RMSNorm")
    assert ok and "梯度爆炸" in text
    text, ok = exp1.scenario_sentence("vanish", good_no, {"log10_ratio_mean": -10.5}, "你的 RMSNorm")
    assert not ok and "与预期不符" in text
    text, ok = exp1.scenario_sentence("vanish", {"log10_ratio_mean": -0.3}, good_rms, "你的 RMSNorm")
    assert not ok and "没有出现明显的梯度消失" in text


def test_exp1_smoke_writes_json_and_pngs(tmp_path, capsys):
    mod = load_script(EXP1)
    assert mod.GradientVanishing.main(["--impl", "solutions", "--smoke", "--out-dir", str(tmp_path)]) == 0
    path = result_file(tmp_path, "exp1_gradient_vanishing", "smoke-solutions")
    rec = json.loads(path.read_text(encoding="utf-8"))
    assert REQUIRED_KEYS <= set(rec)
    assert rec["provenance"]["RMSNorm"]["impl"] == "solutions"
    assert len(rec["figures"]) == 2 and all((path.parent / f).is_file() for f in rec["figures"])
    assert all(f.startswith("smoke-solutions_") and f.endswith(".png") for f in rec["figures"])
    assert rec["conclusion"].startswith(kx.SMOKE_NOTICE)


# ---------------------------------------------------------------------------------------------
# 画图
# ---------------------------------------------------------------------------------------------

def _png_ok(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_functions_return_figures_and_save_pngs(tmp_path):
    from matplotlib.figure import Figure

    exp = TinyExperiment()
    exp.args = exp.build_parser().parse_args(["--out-dir", str(tmp_path)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 画图不应产生任何警告（包括缺字形、对数轴上的非正值）
        figs = {
            "attn": plots.plot_attention_heatmap(torch.softmax(torch.randn(6, 6), -1), tokens=list("abcdef")),
            "attn_heads": plots.plot_attention_heatmap(torch.softmax(torch.randn(3, 5, 5), -1)),
            "acts": plots.plot_activation_distribution({"a": torch.randn(1000), "b": np.r_[np.random.randn(500), np.nan]}),
            "grads": plots.plot_gradient_flow({"no norm": [1e-9, 0.0, float("nan"), 1.0], "rms": [1, 1, 1, 1]}),
            "loss": plots.plot_loss_curves(
                {"a": ([0, 10, 20], [4.0, 3.0, 2.5]),
                 "b": ([0, 10, 20], [4.0, 3.5, 3.2], [0.1, 0.1, 0.2]),
                 "c": {"steps": [0, 10, 20], "mean": [4.0, float("nan"), float("nan")]}},
                diverged={"c": 10}),
            "zh": plots.plot_gradient_flow({("中文", "english"): [1, 2]}, title="中文标题 title"),
        }
        for name, fig in figs.items():
            assert isinstance(fig, Figure), name
            path = exp.save_figure(fig, name)
            assert path == tmp_path / "exp_tiny" / f"full-exercises_{name}.png"
    exp.write_pending()
    for name in figs:
        assert _png_ok(tmp_path / "exp_tiny" / f"full-exercises_{name}.png"), name
    assert not [p for p in (tmp_path / "exp_tiny").iterdir() if p.name.startswith(".")]


def test_plot_on_given_axes_returns_its_figure():
    fig, axes = plots.new_figure(1, 2)
    out = plots.plot_loss_curves({"a": ([0, 1], [2.0, 1.0])}, ax=axes[0, 1])
    assert out is fig
    matplotlib.pyplot.close(fig)


def test_labels_never_draw_missing_cjk_glyphs(monkeypatch):
    monkeypatch.setattr(plots, "has_cjk_font", lambda: False)
    assert plots.label(("中文", "English")) == "English"
    assert plots.label("梯度 gradient") == "gradient"
    assert plots.label("plain") == "plain"
    monkeypatch.setattr(plots, "has_cjk_font", lambda: True)
    assert plots.label(("中文", "English")) == "中文"


def test_format_table_aligns_cjk():
    text = kx.format_table(["设置", "x"], [["无归一化", 1.23456], ["RMSNorm", float("nan")]])
    head, sep, row1, row2 = text.splitlines()
    assert "1.235" in row1 and row2.endswith("nan")
    start = kx._width(head.split("x")[0])                 # 第二列在每一行都从同一显示宽度开始
    assert kx._width(row1.split("1.235")[0]) == start == kx._width(row2.split("nan")[0])


# ---------------------------------------------------------------------------------------------
# 实验 2、3 的结论函数：喂进去相反的数字，措辞必须跟着反过来（不训练模型，很快）
# ---------------------------------------------------------------------------------------------

def _run(final, steps=(10, 20), losses=None, diverged_at=None):
    losses = list(losses) if losses is not None else [final + 0.3, final]
    return {"final_val_loss": final if diverged_at is None else float("nan"), "diverged_at": diverged_at,
            "val_steps": list(steps), "val_losses": losses}


def test_exp2_conclusion_follows_the_numbers():
    exp2 = load_script(EXP_DIR / "exp2_norm_comparison.py")
    names = exp2.variant_names("exercises")
    fast = {"layernorm": {"median_ms": 1.0}, "rmsnorm": {"median_ms": 0.8}, "shape": [2, 3, 4], "repeats": 5}
    slow = {"layernorm": {"median_ms": 1.0}, "rmsnorm": {"median_ms": 3.0}, "shape": [2, 3, 4], "repeats": 5}
    expected = {"none": [_run(2.9 + 0.01 * i, losses=[3.4, 2.9]) for i in range(3)],
                "layernorm": [_run(2.15 + 0.01 * i, losses=[2.6, 2.15]) for i in range(3)],
                "rmsnorm": [_run(2.14 + 0.01 * i, losses=[2.6, 2.14]) for i in range(3)]}
    text, verdict = exp2.write_conclusion(expected, fast, names, 3, 100, 3e-3, unigram=3.35)
    assert verdict["ln_vs_rms"] == "comparable" and "相当" in text and "一致" in text
    assert verdict["none_vs_norm"] == "no-norm worse" and "明显更慢" in text
    assert "快了 20%" in text and "7%–64%" in text

    flipped = {"none": [_run(2.10 + 0.01 * i) for i in range(3)],
               "layernorm": [_run(2.15 + 0.01 * i) for i in range(3)],
               "rmsnorm": [_run(2.60 + 0.01 * i) for i in range(3)]}
    text, verdict = exp2.write_conclusion(flipped, slow, names, 3, 100, 3e-3, unigram=3.35)
    assert verdict["ln_vs_rms"] == "differ" and "不一致" in text
    assert verdict["none_vs_norm"] == "no-norm not worse" and "与预期不一致" in text
    assert "3.0 倍" in text and "方向相反" in text and "融合" in text

    diverged = dict(expected, none=[_run(0, diverged_at=7) for _ in range(3)])
    text, verdict = exp2.write_conclusion(diverged, fast, names, 3, 100, 3e-3, unigram=3.35)
    assert "3/3 个种子上发散" in text and "第 7, 7, 7 步" in text and verdict["none_vs_norm"] == "no-norm diverged"


def test_exp3_conclusion_follows_the_numbers():
    exp3 = load_script(EXP_DIR / "exp3_prenorm_vs_postnorm.py")
    flat = [[0.5, 0.5, 0.5]]
    rising = [[0.1, 0.5, 2.0]]
    rms = {(6, "pre"): 0.02, (6, "post"): 1.0, (12, "pre"): 0.02, (12, "post"): 1.0}

    def runs(post12):
        return {(6, "pre"): [_run(2.3)], (6, "post"): [_run(2.3)], (12, "pre"): [_run(2.4)], (12, "post"): [post12]}

    grads = {(6, "pre"): flat, (6, "post"): rising, (12, "pre"): flat, (12, "post"): rising}
    text, v = exp3.write_conclusion(grads, runs(_run(3.34)), [6, 12], 3.35, 1e-2, 100, 1, {}, rms)
    assert v["init"]["post_larger_near_output"] and "与 Xiong 等（2020）的分析一致" in text
    assert v["train"]["12L"] == "post worse" and v["train"]["6L"] == "similar"
    assert "卡在只按字符频率猜的水平" in text and "层数越多越明显" in text

    grads = {k: flat for k in grads}
    text, v = exp3.write_conclusion(grads, runs(_run(0, diverged_at=4)), [6, 12], 3.35, 1e-2, 100, 1, {}, rms)
    assert not v["init"]["post_larger_near_output"] and "没有出现" in text
    assert "发散（第 4 步）" in text

    text, v = exp3.write_conclusion(grads, runs(_run(2.4)), [6, 12], 3.35, 1e-2, 100, 1,
                                    {(12, "post"): [_run(2.4)]}, rms)
    assert v["post_worse_at_depths"] == [] and "与预期不一致" in text
    assert v["warmup_rescues_post"] is True


def test_mean_std_curve_ignores_divergence_and_uses_longest_steps():
    from kata.experiment import mean_std_curve
    runs = [
        {"val_steps": [0, 10, 20], "val_losses": [4.0, 3.0, 2.0]},
        {"val_steps": [0, 10, 20], "val_losses": [4.2, 3.4, float("nan")]},   # 第 20 步发散
        {"val_steps": [0, 10], "val_losses": [3.8, 3.2]},                      # 更早停下
    ]
    steps, mean, std = mean_std_curve(runs)
    assert steps == [0, 10, 20]
    assert mean == pytest.approx([4.0, 3.2, 2.0])
    assert std[0] == pytest.approx(0.2) and std[1] == pytest.approx(0.2)
    assert std[2] == 0.0                                                       # 只剩一个有限值
    steps, mean, std = mean_std_curve([{"val_steps": [5], "val_losses": [float("inf")]}])
    assert steps == [5] and math.isnan(mean[0]) and std == [0.0]


def test_run_status_and_summary():
    ok = {"diverged_at": None, "final_val_loss": 2.0}
    stuck = {"diverged_at": None, "final_val_loss": 3.30}
    nan = {"diverged_at": None, "final_val_loss": float("nan")}
    div = {"diverged_at": 17, "final_val_loss": float("nan")}
    assert [kx.run_status(r, 3.347) for r in (ok, stuck, nan, div)] == ["ok", "stuck", "stuck", "diverged"]
    assert kx.run_status({"diverged_at": None, "final_val_loss": 3.347 - kx.STUCK_MARGIN - 0.01}, 3.347) == "ok"
    assert kx.status_summary([ok, ok], 3.347) == ""
    text = kx.status_summary([ok, stuck, div], 3.347)
    assert "1/3 个种子发散（第 17 步）" in text and "1/3 个种子卡在只按字符频率猜的水平" in text
    assert kx.last_first_ratio([2.0, 1.0, 6.0]) == 3.0 and math.isnan(kx.last_first_ratio([0.0, 1.0]))


def test_position_curve_averages_runs_then_bins():
    xs, ys = plots.position_curve([[1.0, 3.0, 5.0, 7.0], [3.0, 5.0, 7.0, 9.0]], bins=2)
    assert xs == [0.5, 2.5] and ys == [3.0, 7.0]          # 平均 [2,4,6,8]，每 2 个位置一格
    xs, ys = plots.position_curve([[1.0, 2.0, 3.0]], bins=64)
    assert xs == [0.0, 1.0, 2.0] and ys == [1.0, 2.0, 3.0]  # 比格数短：不合并
