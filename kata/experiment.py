"""实验基类（课程 README 的 ``experiment_base.Experiment``）：命令行、随机种子、设备、数据、
“你的组件还没实现”的一句话提示、结果 JSON（原子写入）、图、表格和**根据数据算出来的**结论。

写一个实验::

    class MyExperiment(Experiment):
        name = "exp1_gradient_vanishing"
        module = "01_normalization"
        title = "为什么需要归一化？"
        description = "……"
        requires = ("RMSNorm",)            # 这些组件必须来自 --impl 选中的实现
        # 用到语料的实验必须写明：拿不到 TinyShakespeare 时能否诚实地改用合成语料，以及为什么
        can_use_synthetic = True
        synthetic_reason = "它测的是梯度流，这是优化层面的现象，不依赖语料是不是真实英文"

        def add_arguments(self, parser):   # 可选：实验自己的参数
            parser.add_argument("--depth", type=int, default=None, help="层数")

        def run(self) -> dict:
            RMSNorm = self.component("RMSNorm")
            depth = self.by_mode(smoke=4, quick=16, full=32)
            ...
            self.save_figure(fig, "curves")
            self.print_table(["设置", "loss"], rows)
            self.conclude("……")              # 文字由本次的数字决定
            return {"metric": value}

    if __name__ == "__main__":
        sys.exit(MyExperiment.main())

脚本开头用三行把仓库根目录放进 sys.path，这样在仓库根目录和脚本所在文件夹里都能运行；紧接着第一个
导入本模块（在 import torch 之前），它会装好 Ctrl-C 的处理：导入途中按 Ctrl-C 也只打印“已中断。”::

    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import kata.experiment  # noqa: E402,F401

run() 里可用的工具：``self.mode``（smoke / quick / full）与 ``self.by_mode(...)``、``self.seeds(full=3)``、
``self.component(name)``、``self.load_corpus()``（--data-file / KATA_DATA_DIR / 缓存 / 下载；
``can_use_synthetic`` 时可退回合成语料并记录）、``self.config(**超参数)``、``self.save_metrics(dict)``、
``self.save_figure(fig, name)``、``self.print_table(表头, 行)``、``self.note(text)``、``self.conclude(text)``；
写结论用的 ``summarize`` / ``fmt_mean_std`` / ``compare_means`` / ``describe_gap`` / ``orders_of_magnitude`` /
``unigram_baseline``。

结果按（模式, 实现）分开存放，互不覆盖::

    experiments/NN/results/<实验名>/<模式>-<实现>.json       例如 quick-exercises.json、full-solutions.json
    experiments/NN/results/<实验名>/<模式>-<实现>_<图名>.png
    （实现标签：exercises / solutions / bug-<名字> / path-<文件名>-<路径的哈希>；--out-dir 换掉的是 results/）

同一（模式, 实现）再跑一次会替换上一次的结果，最后的打印会写明替换了哪个文件、那次是什么时候跑的。
全部文件在 run() 结束后才一起写出（临时文件名各不相同，再 os.replace）：中途出错或按 Ctrl-C，
磁盘上的旧结果原封不动，也不会留下临时文件。

``main(argv)`` 返回退出码：0 成功；1 数据拿不到或设备不可用；2 参数有问题（结果目录不可写、
--impl / --data-file 指向不存在或不能用的东西），或需要的组件还没实现（都只打印一句中文，不打印
traceback，也不开始计算）；130 被 Ctrl-C 中断（只打印“已中断。”一行）。
"""
from __future__ import annotations

import sys


def _interrupted_hook(exc_type, exc, tb, _previous=sys.excepthook):
    """脚本在 main() 之外（例如还在 import torch）被 Ctrl-C 打断：只打印一行，退出码 130，不打印 traceback。"""
    if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
        try:
            sys.stdout.flush()
        except Exception:
            pass
        try:
            sys.stderr.write("已中断。\n")
            sys.stderr.flush()
        finally:
            import os as _os

            _os._exit(130)  # 这时还没有任何结果文件，也没有临时文件要清理
    _previous(exc_type, exc, tb)


# 尽早装好（在下面导入 numpy / torch 之前）：实验脚本的第一条 kata 导入就是本模块。
# 只在没人自定义过 excepthook 时装（不干扰 IPython、pytest 之类自带处理的环境）。
if sys.excepthook is sys.__excepthook__:
    sys.excepthook = _interrupted_hook

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import datetime as _dt  # noqa: E402
import hashlib  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import unicodedata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Iterable, Optional, Sequence  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from kata import impl as kata_impl  # noqa: E402
from kata.curriculum import module_of_name  # noqa: E402

__all__ = [
    "Experiment", "ComponentNotImplemented", "UsageError", "IMPL_CHOICES", "DEVICE_CHOICES", "COMPONENT_PROBES",
    "pick_device", "seed_everything", "check_component", "not_implemented_sentence",
    "atomic_write_json", "atomic_write_bytes", "to_jsonable", "environment_info", "format_table", "pad",
    "summarize", "mean_std_curve", "fmt_mean_std", "STUCK_MARGIN", "run_status", "status_summary",
    "last_first_ratio", "compare_means", "describe_gap", "orders_of_magnitude", "unigram_baseline",
    "tidy_spacing", "SetupError", "impl_problem", "commit_files", "SMOKE_NOTICE", "INTERRUPTED", "impl_tag", "display_path", "load_experiment_class",
]

# 冒烟模式的结论一律以这句话开头（由 Experiment.conclude / _execute 统一加上，实验脚本不用自己写）
SMOKE_NOTICE = "（冒烟模式：步数极少、尺寸极小，下面的数字和结论都没有意义，只检查流程。）"
INTERRUPTED = "已中断。"  # 与 python -m kata 的一致

IMPL_CHOICES = ("exercises", "solutions")
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
MODES = ("smoke", "quick", "full")


# ---------------------------------------------------------------------------------------------
# “还没实现”
# ---------------------------------------------------------------------------------------------

class ComponentNotImplemented(NotImplementedError):
    """``--impl`` 选中的实现里，实验需要的某个组件还在抛 NotImplementedError（或在小输入上就出错）。

    ``str(exc)`` 是给学习者看的那一句中文。kata.tinylm 有一个同名异常，main() 对两者一视同仁。
    """

    def __init__(self, name: str, impl: str, sentence: str):
        super().__init__(sentence)
        self.name = name
        self.impl = impl
        self.sentence = sentence


def _component_file(name: str, impl: str) -> str:
    try:
        m, fname = module_of_name(name)
    except AttributeError:
        return "对应的练习文件"
    if impl in IMPL_CHOICES:
        return f"{impl}/{m.key}/{fname}"
    if impl.startswith("bug:"):
        return f"bug bank 条目 {impl[4:]}"
    return impl


def not_implemented_sentence(name: str, impl: str, detail: str = "") -> str:
    """学习者看到的那一句话（不换行）。"""
    where = _component_file(name, impl)
    try:
        module_key = module_of_name(name)[0].key
    except AttributeError:
        module_key = "对应模块"
    if impl == "exercises":
        if detail:
            return (f"你的 {name}（{where}）在一个很小的输入上就出错了（{detail}）："
                    f"先让 pytest exercises/{module_key} 通过，或者加上 --impl solutions 先用参考实现运行这个实验。")
        return (f"你的 {name} 还没有实现（{where} 仍在抛出 NotImplementedError）："
                f"先完成它并让 pytest exercises/{module_key} 通过，或者加上 --impl solutions 先用参考实现运行这个实验。")
    state = f"在一个很小的输入上出错（{detail}）" if detail else "还没有实现（仍在抛出 NotImplementedError）"
    return f"--impl {impl} 里的 {name}（{where}）{state}：换一个完整的实现，或者用 --impl solutions 运行这个实验。"


def _probe_rmsnorm(cls):
    cls(8)(torch.randn(2, 3, 8))


def _probe_feedforward(cls):
    cls(16, hidden_dim=32)(torch.randn(2, 3, 16))


def _probe_sdpa(fn):
    q = torch.randn(1, 2, 3, 4)
    fn(q, q, q, is_causal=True)


def _probe_repeat_kv(fn):
    fn(torch.randn(1, 3, 2, 4), 2)


def _probe_freqs(fn):
    fn(8, end=4)


def _probe_rotate_half(fn):
    fn(torch.randn(2, 3, 8))


def _probe_sinusoidal(fn):
    fn(4, 8)


def _probe_apply_rope(fn):
    fn(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4), torch.ones(2, 4), torch.zeros(2, 4))


# 名字 → 用一个很小的输入调用一次的函数。没有列出的名字只检查能否导入。
COMPONENT_PROBES: dict[str, Callable[[Any], None]] = {
    "RMSNorm": _probe_rmsnorm,
    "FeedForward": _probe_feedforward,
    "scaled_dot_product_attention": _probe_sdpa,
    "repeat_kv": _probe_repeat_kv,
    "precompute_freqs_cis": _probe_freqs,
    "rotate_half": _probe_rotate_half,
    "sinusoidal_position_encoding": _probe_sinusoidal,
    "apply_rotary_pos_emb": _probe_apply_rope,
}


def check_component(name: str, impl: str):
    """取出组件并用一个很小的输入试一次；还没实现 → ComponentNotImplemented。返回组件本身。"""
    obj = kata_impl.component(name, impl)
    probe = COMPONENT_PROBES.get(name)
    if probe is not None:
        try:
            # 试跑会消耗全局随机数：放进 fork_rng，别让“检查过一次组件”改变实验的随机序列
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                probe(obj)
        except NotImplementedError as exc:
            raise ComponentNotImplemented(name, impl, not_implemented_sentence(name, impl)) from exc
        except Exception as exc:  # 学习者的实现在小输入上就报错：同样给一句话，不要 traceback
            detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip(": ")
            raise ComponentNotImplemented(name, impl, not_implemented_sentence(name, impl, detail)) from exc
    return obj


def _is_not_implemented(exc: BaseException) -> bool:
    return isinstance(exc, NotImplementedError) or any(
        c.__name__ == "ComponentNotImplemented" for c in type(exc).__mro__
    )


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


# ---------------------------------------------------------------------------------------------
# 设备、种子、环境
# ---------------------------------------------------------------------------------------------

def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def pick_device(requested: str = "auto") -> str:
    """``auto`` 依次选 cuda → mps → cpu；显式指定但不可用时抛 ValueError（中文说明）。"""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if _mps_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda：这台机器上 PyTorch 找不到可用的 CUDA GPU，改用 --device auto 或 cpu")
    if requested == "mps" and not _mps_available():
        raise ValueError("--device mps：这台机器上 PyTorch 的 MPS（Apple GPU）不可用，改用 --device auto 或 cpu")
    if requested not in DEVICE_CHOICES:
        raise ValueError(f"未知的设备 {requested!r}；可选：{', '.join(DEVICE_CHOICES)}")
    return requested


def seed_everything(seed: int) -> None:
    """同时固定 Python、numpy、torch（含 CUDA）的随机种子。"""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def environment_info(device: str) -> dict:
    import matplotlib

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------------------------------------
# JSON（原子写入）
# ---------------------------------------------------------------------------------------------

def to_jsonable(obj):
    """把张量、numpy、dataclass、Path 等转成 JSON 能存的东西；NaN / inf 写成 null（严格 JSON 没有它们）。"""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist() if obj.ndim else obj.item())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.device):
        return str(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    return str(obj)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """先写同一文件夹里的临时文件，再 os.replace：读者要么看到旧文件，要么看到完整的新文件。"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: Path, obj) -> Path:
    text = json.dumps(to_jsonable(obj), ensure_ascii=False, indent=2, allow_nan=False)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"))


def _json_bytes(obj) -> bytes:
    return (json.dumps(to_jsonable(obj), ensure_ascii=False, indent=2, allow_nan=False) + "\n").encode("utf-8")


@contextlib.contextmanager
def _sigint_deferred():
    """这一小段里收到的 Ctrl-C 等它结束后再抛出（只在主线程里有效）：几个文件要么都换成新的，要么都不换。"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        if got:
            raise KeyboardInterrupt


def commit_files(files: dict) -> None:
    """一次写出几个文件 {路径: 字节}：先全部写进各自的临时文件（名字带随机后缀，并发的运行互不干扰），
    再一个接一个 os.replace。任何失败或 Ctrl-C 都会删掉临时文件，已有的旧文件保持原样。"""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(6)}"
            temps.append((tmp, path))
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        with _sigint_deferred():
            for tmp, path in temps:
                os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise


def impl_tag(impl: str) -> str:
    """结果文件名里的实现标签（只含字母、数字、_ . -）：exercises / solutions / bug-<名字> /
    path-<文件名>-<完整路径的哈希前 8 位>（同名的两个文件不会互相覆盖）。"""
    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._-") or "x"

    if impl in IMPL_CHOICES:
        return impl
    if impl.startswith("bug:"):
        return "bug-" + safe(impl[4:])
    p = Path(impl).expanduser()
    digest = hashlib.sha256(str(p.resolve()).encode("utf-8")).hexdigest()[:8]
    return f"path-{safe(p.stem)[:40]}-{digest}"


def display_path(path) -> str:
    """打印给人看的路径：在当前目录之下就写相对路径（从运行命令的地方能直接打开），否则写绝对路径。"""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _repo_relative(path) -> str:
    """写进 JSON 的路径：仓库里的文件用相对仓库根目录的路径（换台机器也一样），其余写绝对路径。"""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(kata_impl.REPO_ROOT))
    except ValueError:
        return str(path)


def load_experiment_class(script) -> type:
    """按路径导入一个实验脚本，返回其中定义的 Experiment 子类（脚本里只应定义一个）。"""
    import importlib.util

    script = Path(script).resolve()
    modname = f"_kata_experiment_{script.parent.name}_{script.stem}"
    mod = sys.modules.get(modname)
    if mod is None or getattr(mod, "__file__", None) != str(script):
        spec = importlib.util.spec_from_file_location(modname, script)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        spec.loader.exec_module(mod)
    found = [obj for obj in vars(mod).values() if isinstance(obj, type) and issubclass(obj, Experiment)
             and obj is not Experiment and obj.__module__ == modname]
    if len(found) != 1:
        raise LookupError(f"{script} 里应恰好定义一个 Experiment 子类，实际 {len(found)} 个")
    return found[0]


# ---------------------------------------------------------------------------------------------
# 表格
# ---------------------------------------------------------------------------------------------

def _width(s: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def pad(text: str, width: int) -> str:
    """按显示宽度（汉字算两格）右侧补空格。"""
    return text + " " * max(0, width - _width(text))


def _cell(v) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        return f"{v:.4g}"
    return "—" if v is None else str(v)


def format_table(headers: Sequence, rows: Iterable[Sequence]) -> str:
    """等宽对齐的小表格（汉字按两格宽计算）。"""
    head = [_cell(h) for h in headers]
    body = [[_cell(v) for v in row] for row in rows]
    widths = [max([_width(head[i])] + [_width(r[i]) for r in body if i < len(r)]) for i in range(len(head))]

    def line(cells):
        return "  ".join(c + " " * (w - _width(c)) for c, w in zip(cells, widths)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep] + [line(r) for r in body])


# ---------------------------------------------------------------------------------------------
# 结论用的小工具：结论里的每个形容词都要来自这里算出的数
# ---------------------------------------------------------------------------------------------

def summarize(values: Sequence[float]) -> dict:
    """均值、样本标准差（n≥2 时）和个数；非有限值（发散）单独计数，不参与均值。"""
    vals = [float(v) for v in values if v is not None]
    finite = [v for v in vals if math.isfinite(v)]
    mean = statistics.fmean(finite) if finite else float("nan")
    std = statistics.stdev(finite) if len(finite) >= 2 else None
    return {"mean": mean, "std": std, "n": len(finite), "n_nonfinite": len(vals) - len(finite),
            "values": vals}


def mean_std_curve(runs: Sequence[dict]) -> tuple[list, list, list]:
    """几个种子的训练记录 → (steps, mean, std)：每个评估点上验证 loss 的均值与样本标准差。

    每条记录要有 ``val_steps`` 和 ``val_losses``（kata.tinylm.TrainResult 的字段）。发散后的非有限值不参与；
    某一点只有一个有限值时 std 记 0。steps 取最长的那条记录。
    """
    steps = list(max((r["val_steps"] for r in runs), key=len))
    mean, std = [], []
    for i in range(len(steps)):
        vals = [r["val_losses"][i] for r in runs if i < len(r["val_losses"]) and math.isfinite(r["val_losses"][i])]
        mean.append(statistics.fmean(vals) if vals else float("nan"))
        std.append(statistics.stdev(vals) if len(vals) >= 2 else 0.0)
    return steps, mean, std


def fmt_mean_std(values: Sequence[float], fmt: str = ".3f") -> str:
    s = summarize(values)
    if s["n"] == 0:
        return "发散（没有有限值）"
    text = f"{s['mean']:{fmt}}" + (f" ± {s['std']:{fmt}}" if s["std"] is not None else "")
    if s["n_nonfinite"]:
        text += f"（另有 {s['n_nonfinite']} 次发散）"
    return text


def compare_means(a: Sequence[float], b: Sequence[float]) -> dict:
    """比较两组（各若干种子的）数：diff = mean(b) − mean(a)；spread = std(a) + std(b)。

    ``exceeds_spread``：|diff| 是否大于 spread（两条 ±1 std 的带不重叠）；有一组少于 2 个种子时为 None
    （没法估计随机波动）。
    """
    sa, sb = summarize(a), summarize(b)
    diff = sb["mean"] - sa["mean"]
    if sa["std"] is None or sb["std"] is None:
        spread, exceeds = None, None
    else:
        spread = sa["std"] + sb["std"]
        exceeds = bool(abs(diff) > spread)
    return {"mean_a": sa["mean"], "mean_b": sb["mean"], "std_a": sa["std"], "std_b": sb["std"],
            "n_a": sa["n"], "n_b": sb["n"], "diff": diff, "spread": spread, "exceeds_spread": exceeds}


_HAN = "\u4e00-\u9fff"


def tidy_spacing(text: str) -> str:
    """中英文混排的空格：汉字与字母/数字之间留一个空格，两个汉字之间不留。"""
    import re

    text = re.sub(f"([{_HAN}])[ ]+(?=[{_HAN}])", r"\1", text)
    text = re.sub(f"([{_HAN}])(?=[A-Za-z0-9])", r"\1 ", text)
    return re.sub(f"([A-Za-z0-9])(?=[{_HAN}])", r"\1 ", text)


def _sp(text: str) -> str:
    """中英文混排：以 ASCII 字符结尾的词后面补一个空格（“LayerNorm 的”“验证 loss 比”），汉字结尾不补。"""
    return text + (" " if text and text[-1].isascii() else "")


def describe_gap(a: Sequence[float], b: Sequence[float], name_a: str, name_b: str, *,
                 what: str = "验证 loss", lower_is_better: bool = True, fmt: str = ".3f",
                 tie: float = 0.0, spread_note: bool = True) -> str:
    """一句中文：name_b 的 what 比 name_a 高/低多少，这个差距是否超过种子间波动。

    ``tie``：|差| ≤ tie 时直接说“几乎相同”。``spread_note=False`` 时只有 1 个种子就不附“无法判断”那半句
    （调用者自己统一说明一次）。
    """
    c = compare_means(a, b)
    w = _sp(what)
    if not (math.isfinite(c["mean_a"]) and math.isfinite(c["mean_b"])):
        return f"{name_a} 或 {name_b} 的{what}不是有限值（发散），无法比较两者的差距。"
    d = c["diff"]
    if abs(d) <= tie:
        head = f"{name_b} 与 {_sp(name_a)}的{w}几乎相同（{c['mean_b']:{fmt}} vs {c['mean_a']:{fmt}}）"
    else:
        word = "低" if d < 0 else "高"
        better = (d < 0) == lower_is_better
        head = (f"{_sp(name_b)}的{w}比 {name_a} {word} {abs(d):{fmt}}（{c['mean_b']:{fmt}} vs {c['mean_a']:{fmt}}，"
                f"{'更好' if better else '更差'}）")
    head = tidy_spacing(head)
    if c["exceeds_spread"] is None:
        if not spread_note:
            return head + "。"
        tail = "；只跑了 1 个种子，无法判断这个差距是否超过随机波动（完整模式会跑多个种子）"
    elif c["exceeds_spread"]:
        tail = f"；差距超过了种子间的波动（两者标准差之和 {c['spread']:{fmt}}），不像是偶然"
    else:
        tail = f"；差距没有超过种子间的波动（两者标准差之和 {c['spread']:{fmt}}），可以认为两者相当"
    return head + tail + "。"


def unigram_baseline(corpus) -> float:
    """只按字符频率猜（不看上下文）的模型在验证集上的交叉熵（nats/字符），频率取自训练集。

    语言模型的 loss 停在这个值附近，说明它只学到了“哪个字符常见”，还没用上前文。
    """
    n = corpus.tokenizer.vocab_size
    p = torch.bincount(corpus.train_ids, minlength=n).double() + 1.0  # 加一平滑：验证集里可能有训练集没见过的字符
    p = p / p.sum()
    q = torch.bincount(corpus.val_ids, minlength=n).double()
    return float(-(q * p.log()).sum() / q.sum())


STUCK_MARGIN = 0.05  # 最终验证 loss 高于（只按字符频率猜的 loss − 这个值）→ 算“卡在字频水平”，没学到上下文


def run_status(run: dict, unigram: float) -> str:
    """一次训练（kata.tinylm.TrainResult 的 dict）的结局：'diverged' | 'stuck' | 'ok'。"""
    if run["diverged_at"] is not None:
        return "diverged"
    if not math.isfinite(run["final_val_loss"]) or run["final_val_loss"] > unigram - STUCK_MARGIN:
        return "stuck"
    return "ok"


def status_summary(runs: Sequence[dict], unigram: float) -> str:
    """“a/n 个种子发散（第 … 步），b/n 个种子卡在只按字符频率猜的水平”；全部正常时返回空字符串。"""
    st = [run_status(r, unigram) for r in runs]
    bits = []
    if st.count("diverged"):
        steps = "、".join(str(r["diverged_at"]) for r in runs if r["diverged_at"] is not None)
        bits.append(f"{st.count('diverged')}/{len(st)} 个种子发散（第 {steps} 步）")
    if st.count("stuck"):
        bits.append(f"{st.count('stuck')}/{len(st)} 个种子卡在只按字符频率猜的水平")
    return "，".join(bits)


def last_first_ratio(values: Sequence[float]) -> float:
    """最后一个 / 第一个（例如最后一层与第一层的梯度范数之比）；第一个不是正数时为 nan。"""
    return values[-1] / values[0] if values and values[0] > 0 else float("nan")


def orders_of_magnitude(ratio: float) -> float:
    """|log10(ratio)|：两个正数相差几个数量级（非有限或非正 → inf）。"""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0:
        return float("inf")
    return abs(math.log10(ratio))


# ---------------------------------------------------------------------------------------------
# 命令行参数的类型
# ---------------------------------------------------------------------------------------------

def _impl_arg(value: str) -> str:
    """存在的路径换成绝对路径（JSON 里记下的是哪个文件）；其余原样返回，由 Experiment._check_impl 给出一句话的说明。"""
    if value in IMPL_CHOICES or value.startswith("bug:"):
        return value
    p = Path(value).expanduser()
    if p.exists():
        return str(p.resolve())
    return value


def _looks_like_path(value: str) -> bool:
    return any(sep in value for sep in ("/", "\\", os.sep)) or value.endswith(".py") or value.startswith(("~", "."))


def impl_problem(impl: str, modules: Sequence[str]) -> Optional[str]:
    """--impl 的值有问题时返回一句中文（否则 None）。modules：实验用到的模块（用来列出可用的 bug 名字）。"""
    if impl in IMPL_CHOICES:
        return None
    if impl.startswith("bug:"):
        from kata.bugbank import bugs_for

        name = impl[4:]
        available = {m: [b.name for b in bugs_for(m)] for m in modules}
        if any(name in names for names in available.values()):
            return None
        listing = "；".join(f"{m}：{'、'.join(names) if names else '（这个模块还没有 bug bank）'}"
                           for m, names in available.items())
        return f"--impl bug:{name}：bug bank 里没有叫 {name!r} 的错误实现；这个实验能用的有（{listing}）。"
    p = Path(impl).expanduser()
    if p.exists():
        return None
    if _looks_like_path(impl):
        return (f"--impl 指定的文件 {impl} 不存在（按当前目录解析为 {Path.cwd() / p}）：检查路径拼写，"
                f"或者用 --impl exercises / --impl solutions。")
    return (f"--impl 只能是 exercises、solutions、bug:<名字>，或者一个存在的 .py 文件/文件夹的路径；"
            f"收到的 {impl!r} 都不是（当前目录下也没有叫这个名字的文件）。")


class _ChineseHelpFormatter(argparse.RawDescriptionHelpFormatter):
    def add_usage(self, usage, actions, groups, prefix=None):
        return super().add_usage(usage, actions, groups, prefix="用法：" if prefix is None else prefix)


# argparse 自己的报错是英文的：按这张表翻成中文（第一条整句匹配的生效；都不匹配就原样显示）
ARGPARSE_ZH = (
    (r"the following arguments are required: (.*)", r"缺少参数：\1"),
    (r"argument (\S+): invalid int value: (.*)", r"\1 应为整数，收到 \2"),
    (r"argument (\S+): invalid float value: (.*)", r"\1 应为数字，收到 \2"),
    (r"argument (\S+): invalid choice: (\S+) \(choose from (.*)\)", r"\1 没有这个选项：\2（可选：\3）"),
    (r"invalid choice: (\S+) \(choose from (.*)\)", r"没有这个选项：\1（可选：\2）"),
    (r"unrecognized arguments: (.*)", r"不认识的参数：\1"),
    (r"argument (\S+): expected one argument", r"\1 后面需要一个值"),
    (r"argument (\S+): (.*)", r"参数 \1：\2"),
)


def translate_argparse_message(message: str) -> str:
    import re

    for pattern, repl in ARGPARSE_ZH:
        if re.fullmatch(pattern, message):
            return re.sub(pattern, repl, message)
    return message


class _ChineseArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        message = translate_argparse_message(message)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}：参数错误：{message}（用 --help 查看全部参数）\n")


def _chinese_parser(**kw) -> argparse.ArgumentParser:
    parser = _ChineseArgumentParser(formatter_class=_ChineseHelpFormatter, add_help=False, **kw)
    parser._positionals.title = "位置参数"
    parser._optionals.title = "选项"
    parser.add_argument("-h", "--help", action="help", help="显示这段帮助并退出")
    return parser


# ---------------------------------------------------------------------------------------------
# Experiment
# ---------------------------------------------------------------------------------------------

class Experiment:
    """所有实验的基类。子类设置类属性，实现 ``run()``，可选地实现 ``add_arguments(parser)``。"""

    name: str = ""                       # 例如 "exp1_gradient_vanishing"（也是结果文件名）
    module: str = ""                     # 例如 "01_normalization"
    title: str = ""                      # 中文标题
    description: str = ""                # 中文说明（显示在 --help 里）
    requires: tuple[str, ...] = ()       # 必须来自 --impl 的组件名，例如 ("RMSNorm",)
    # 拿不到 TinyShakespeare 时可否退回确定性的合成语料，以及为什么（用到语料的实验都要写明这一句理由，
    # 退回时打印并记进 JSON；不能退回时，拿不到数据的报错里也会说明原因）
    can_use_synthetic: bool = False
    synthetic_reason: str = ""
    script_path: Optional[str] = None    # 结果目录定位用；默认是定义子类的那个文件
    # 不传 --threads 时 PyTorch 用几个 CPU 线程。None = PyTorch 的默认（物理核数）。
    # 这些实验的模型都很小，多线程的同步开销常常大于收益；机器上还有别的进程在跑时，
    # 多个线程抢同一个核会慢好几倍（2 核机器上实测 exp1 --quick：单线程 18 秒，双线程 54 秒）。
    default_threads: Optional[int] = 1

    def __init__(self, args: Optional[argparse.Namespace] = None):
        self.args = args
        self.metrics: dict = {}
        self.conclusion: Optional[str] = None
        self.figures: list[str] = []          # 打印用的路径（相对当前目录或绝对）
        self._pending_figures: dict = {}       # 文件名 → PNG 字节：run() 结束后与 JSON 一起写出
        self.tables: list[dict] = []
        self.provenance: dict = {}
        self.dataset: Optional[dict] = None
        self.exp_config: dict = {}
        self.seeds_used: list[int] = []
        self.notes: list[str] = []
        self.device: str = "cpu"
        self.json_path: Optional[Path] = None
        self._t0 = time.perf_counter()

    # ---- 子类的钩子 ------------------------------------------------------------------------

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """子类在这里加自己的命令行参数。"""

    def run(self) -> dict:
        raise NotImplementedError("Experiment 子类必须实现 run()")

    # ---- 命令行 ----------------------------------------------------------------------------

    @classmethod
    def script_file(cls) -> Path:
        """定义这个实验的脚本文件（结果目录就在它旁边）。"""
        if cls.script_path:
            return Path(cls.script_path).resolve()
        try:
            return Path(inspect.getfile(cls)).resolve()
        except (TypeError, OSError):  # 例如按路径加载、没有登记到 sys.modules 的脚本
            main = sys.modules.get("__main__")
            return Path(getattr(main, "__file__", None) or Path.cwd() / f"{cls.name}.py").resolve()

    @classmethod
    def default_out_dir(cls) -> Path:
        return cls.script_file().parent / "results"

    def build_parser(self) -> argparse.ArgumentParser:
        prog = self.script_file().name
        desc = self.title + ("\n\n" + self.description if self.description else "")
        parser = _chinese_parser(
            prog=prog, description=desc,
            epilog=f"结果（JSON 与 PNG）默认写入 {display_path(self.default_out_dir() / self.name)}/"
                   "<模式>-<实现>.json（例如 quick-exercises.json；不同模式、不同实现的结果互不覆盖）。"
                   "脚本最后打印一张小表和一段根据本次数据算出来的中文结论。",
        )
        g = parser.add_argument_group("通用选项")
        mode = g.add_mutually_exclusive_group()
        mode.add_argument("--quick", action="store_true",
                          help="快速模式：只为看清趋势，普通笔记本 CPU 上 2 分钟以内（不加就是完整模式，10 分钟以内）")
        mode.add_argument("--smoke", action="store_true",
                          help="冒烟模式（CI 用）：只跑几步、用很小的尺寸，检查脚本能从头跑到尾并写出 JSON；数字没有意义")
        g.add_argument("--impl", type=_impl_arg, default="exercises", metavar="{exercises,solutions}",
                       help="用谁的组件：exercises = 你的实现（默认），solutions = 参考实现"
                            "（高级：也可以是 bug:<名字> 或某个 .py 文件的路径）")
        g.add_argument("--seed", type=int, default=0, help="随机种子（默认 0；多种子实验从它开始连续取）")
        g.add_argument("--n-seeds", type=int, default=None, metavar="N",
                       help="跑几个种子（默认：完整模式 ≥3，快速模式 1）")
        g.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                       help="计算设备：auto（默认）依次选 cuda → mps → cpu")
        g.add_argument("--data-file", default=None, metavar="PATH",
                       help="直接使用这个 tinyshakespeare.txt（否则按 KATA_DATA_DIR → 缓存 → 下载的顺序找）")
        g.add_argument("--out-dir", default=None, metavar="DIR",
                       help="结果目录（默认是脚本旁边的 results/，与当前目录无关；结果写在它下面的 <实验名>/ 里）")
        g.add_argument("--threads", type=int, default=None, metavar="N",
                       help=f"PyTorch 在 CPU 上用几个线程（默认 {self.default_threads or 'PyTorch 自己决定'}："
                            "模型很小，多线程的同步开销常常大于收益，机器忙时更是如此；核多又空闲时可以试试更大的 N）")
        g.add_argument("--no-progress", action="store_true", help="不显示进度条")
        own = parser.add_argument_group("本实验的选项")
        self.add_arguments(own)
        if not own._group_actions:
            parser._action_groups.remove(own)
        return parser

    @classmethod
    def main(cls, argv: Optional[Sequence[str]] = None) -> int:
        """解析命令行并运行；返回退出码（脚本里写 ``sys.exit(MyExperiment.main())``）。"""
        exp = cls()
        parser = exp.build_parser()
        exp.args = parser.parse_args(argv)
        exp._command = [cls.script_file().name] + list(sys.argv[1:] if argv is None else argv)
        if exp.args.n_seeds is not None and exp.args.n_seeds < 1:
            parser.error("--n-seeds 至少为 1")
        problem = exp._check_own_numbers(parser)
        if problem:
            parser.error(problem)
        try:
            exp.execute()
        except KeyboardInterrupt:
            _print_interrupted()
            return 130
        except kata_impl.ImplLoadError as exc:
            print(_one_line(exc), file=sys.stderr)
            return 2
        except Exception as exc:
            from kata.data import DataError, DataUnavailableError

            if _is_not_implemented(exc):
                print(exp._not_implemented_message(exc), file=sys.stderr)
                return 2
            if isinstance(exc, DataError):
                print(str(exc), file=sys.stderr)
                if isinstance(exc, DataUnavailableError) and not exp.can_use_synthetic:
                    why = exp.synthetic_reason.rstrip("。") if exp.synthetic_reason else "它的结论依赖真实语料"
                    print(f"这个实验不改用合成语料：{why}。", file=sys.stderr)
                return 1
            if isinstance(exc, UsageError):
                print(str(exc), file=sys.stderr)
                return exc.exit_code
            from kata.tinylm import TinyLMConfigError

            if isinstance(exc, TinyLMConfigError):
                print(f"这组参数搭不出模型：{exc}。检查 --dim / --heads / --layers 等选项（--help 里有默认值）。",
                      file=sys.stderr)
                return 1
            raise
        return 0

    # 本实验自己的数值选项（步数、层数、学习率、宽度……）都必须是正数；这里列出的可以是 0
    nonnegative_args: tuple[str, ...] = ("warmup",)

    def _check_own_numbers(self, parser: argparse.ArgumentParser) -> Optional[str]:
        """“本实验的选项”里的 int / float 参数：必须是有限的正数（nonnegative_args 里的允许 0）。

        不检查的话，--steps 0 会被当成“没给”而悄悄跑默认步数，--lr -1 会变成 PyTorch 的英文报错。
        """
        for group in parser._action_groups:
            if group.title != "本实验的选项":
                continue
            for action in group._group_actions:
                if action.type not in (int, float):
                    continue
                value = getattr(self.args, action.dest, None)
                values = value if isinstance(value, (list, tuple)) else [value]
                allow_zero = action.dest in self.nonnegative_args
                for v in values:
                    if v is None:
                        continue
                    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
                        flag = action.option_strings[-1]
                        need = "非负数（可以是 0）" if allow_zero else "正数"
                        return f"{flag} 必须是{need}，收到的是 {v}"
        return None

    def _not_implemented_message(self, exc: BaseException) -> str:
        sentence = getattr(exc, "sentence", None) or str(exc)
        if type(exc) is NotImplementedError or not sentence:
            # 运行途中冒出来的裸 NotImplementedError：多半是某个学习者组件还没写完
            name = self.requires[0] if self.requires else "组件"
            return _one_line(not_implemented_sentence(name, self.impl)) + (f"（{_one_line(exc)}）" if str(exc) else "")
        return _one_line(sentence)

    # ---- 运行 ------------------------------------------------------------------------------

    def execute(self) -> dict:
        """检查组件 → 固定种子 → run() → 写 JSON。返回写入 JSON 的记录。"""
        if self.args is None:
            self.args = self.build_parser().parse_args([])
        self.preflight()
        try:
            self.device = pick_device(self.args.device)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        threads = getattr(self.args, "threads", None)
        if threads is None:
            threads = 1 if self.smoke else self.default_threads  # 冒烟模式（CI）总是单线程：在繁忙的机器上更快也更稳
        if threads is not None and threads < 1:
            raise UsageError("--threads 至少为 1")
        previous_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:  # 在同一个进程里被调用（测试、notebook）时，结束后把线程数还原
            return self._execute()
        finally:
            torch.set_num_threads(previous_threads)

    def _execute(self) -> dict:
        started = _dt.datetime.now().astimezone()
        self._t0 = time.perf_counter()
        cpu0 = time.process_time()
        for name in self.requires:  # 先检查组件：还没实现时只输出那一句话
            obj = _checked_component(name, self.impl)
            self.record_provenance({name: self._provenance_of(name, obj)})
        print(f"== {self.title or self.name} ==")
        print(f"模式：{self.mode_label}｜实现：{kata_impl.describe(self.impl)}｜设备：{self.device}｜种子：{self.seed}")
        seed_everything(self.seed)
        returned = self.run()
        if returned:
            self.save_metrics(returned)
        if self.smoke and not self.conclusion:  # 没写结论的实验在冒烟模式下也要有那句“数字没有意义”
            self.conclude("")
        wall = time.perf_counter() - self._t0
        record = {
            "experiment": self.name,
            "module": self.module,
            "title": self.title,
            "mode": self.mode,
            "status": "ok",
            "config": {**{k: v for k, v in vars(self.args).items()}, "experiment": self.exp_config},
            "seed": self.seed,
            "seeds": self.seeds_used or [self.seed],
            "impl": self.impl,
            "impl_description": kata_impl.describe(self.impl),
            "provenance": self.provenance,
            "dataset": self.dataset,
            "metrics": self.metrics,
            "tables": self.tables,
            "conclusion": self.conclusion,
            "notes": self.notes,
            "figures": list(self._pending_figures),   # 与本 JSON 同一文件夹里的 PNG 文件名
            "wall_time_s": round(wall, 3),
            # 本进程用掉的 CPU 时间：机器很忙时 wall time 会被拉长，CPU 时间更接近“空闲机器上要多久”
            "cpu_time_s": round(time.process_time() - cpu0, 3),
            "started_at": started.isoformat(timespec="seconds"),
            "finished_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "versions": environment_info(self.device),
            "command": getattr(self, "_command", None),
        }
        json_path = self.result_json()
        replaced = _describe_previous(json_path)
        files = {json_path.parent / name: data for name, data in self._pending_figures.items()}
        files[json_path] = _json_bytes(record)  # JSON 最后换上：它指向的 PNG 已经就位
        commit_files(files)
        self.json_path = json_path
        print(f"\n结果已写入 {display_path(json_path)}（用时 {wall:.1f} 秒）")
        if replaced:
            print(f"它替换了之前同一模式、同一实现的结果（{replaced}）；其他模式或实现的结果不受影响。")
        for fig in self.figures:
            print(f"图：{fig}")
        return record

    # ---- 运行时的属性 ----------------------------------------------------------------------

    @property
    def mode(self) -> str:
        if self.args is not None and getattr(self.args, "smoke", False):
            return "smoke"
        if self.args is not None and getattr(self.args, "quick", False):
            return "quick"
        return "full"

    @property
    def mode_label(self) -> str:
        return {"smoke": "冒烟（CI 用，数字没有意义）", "quick": "快速", "full": "完整"}[self.mode]

    @property
    def quick(self) -> bool:
        return self.mode == "quick"

    @property
    def smoke(self) -> bool:
        return self.mode == "smoke"

    @property
    def impl(self) -> str:
        return getattr(self.args, "impl", None) or "exercises"

    @property
    def seed(self) -> int:
        return int(getattr(self.args, "seed", 0) or 0)

    @property
    def progress(self) -> bool:
        return not getattr(self.args, "no_progress", False) and not self.smoke

    @property
    def out_dir(self) -> Path:
        """结果的根目录（默认脚本旁边的 results/；--out-dir 换掉的就是它）。"""
        d = getattr(self.args, "out_dir", None)
        return Path(d).expanduser().resolve() if d else self.default_out_dir()

    @property
    def result_dir(self) -> Path:
        """本实验的结果文件夹：<out_dir>/<实验名>/。"""
        return self.out_dir / self.name

    @property
    def result_stem(self) -> str:
        """<模式>-<实现标签>，例如 quick-exercises、full-bug-no_eps。"""
        return f"{self.mode}-{impl_tag(self.impl)}"

    def result_json(self) -> Path:
        return self.result_dir / f"{self.result_stem}.json"

    # ---- 开始计算之前的检查：参数有问题时一句话、退出码 2、什么都不写 ----------------------

    def preflight(self) -> None:
        """检查结果目录可写、--impl 与 --data-file 可用；有问题抛出 SetupError（一句中文）。"""
        problem = self._output_problem() or self._impl_problem() or self._data_file_problem()
        if problem:
            raise SetupError(problem)

    def _output_problem(self) -> Optional[str]:
        root, target = self.out_dir, self.result_dir
        given = getattr(self.args, "out_dir", None)
        p = target
        while not p.exists() and p.parent != p:
            p = p.parent
        if not p.is_dir():
            if p == root and given:
                return f"--out-dir 指向的 {display_path(root)} 是一个文件，不是文件夹：换一个文件夹，或者先把这个文件移走。"
            return (f"结果要写进 {display_path(target)}，但路径上的 {display_path(p)} 是一个文件，不是文件夹："
                    f"把它移走，或者用 --out-dir 换一个文件夹。")
        if not _can_write_in(p):
            hint = "换一个可写的文件夹" if given else "用 --out-dir 指定一个可写的文件夹"
            return f"结果文件夹 {display_path(p)} 不可写（没有写权限或是只读的文件系统），结果没法保存：{hint}。"
        return None

    def _impl_problem(self) -> Optional[str]:
        modules: list[str] = []
        for name in self.requires:
            try:
                key = module_of_name(name)[0].key
            except AttributeError:
                continue
            if key not in modules:
                modules.append(key)
        if not modules and self.module:
            modules = [self.module]
        return impl_problem(self.impl, modules)

    def _data_file_problem(self) -> Optional[str]:
        data_file = getattr(self.args, "data_file", None)
        if data_file is None:
            return None
        from kata.data import DataError, check_data_file

        try:
            check_data_file(data_file)
        except DataError as exc:
            return _one_line(exc)
        return None

    def by_mode(self, *, smoke, quick, full):
        """按模式取值：``depth = self.by_mode(smoke=4, quick=16, full=32)``。"""
        return {"smoke": smoke, "quick": quick, "full": full}[self.mode]

    def seeds(self, *, full: int = 3, quick: int = 1, smoke: int = 1) -> list[int]:
        """本次要跑的种子列表（--seed 起连续取；--n-seeds 可覆盖个数），并记进 JSON。"""
        n = self.args.n_seeds if getattr(self.args, "n_seeds", None) else self.by_mode(smoke=smoke, quick=quick, full=full)
        self.seeds_used = [self.seed + i for i in range(n)]
        return list(self.seeds_used)

    # ---- 辅助：组件、数据、记录 ------------------------------------------------------------

    def _provenance_of(self, name: str, obj) -> dict:
        try:
            ns = kata_impl.resolve(module_of_name(name)[0], self.impl)
            files = list(ns._files)
        except Exception:
            files = []
        return {"impl": self.impl, "description": kata_impl.describe(self.impl), "files": [
            _repo_relative(Path(f)) if not str(f).startswith("bug:") else f for f in files]}

    def component(self, name: str):
        """按 --impl 取一个组件（并记录来源）；还没实现时抛 ComponentNotImplemented。"""
        obj = _checked_component(name, self.impl)
        self.record_provenance({name: self._provenance_of(name, obj)})
        return obj

    def record_provenance(self, prov: dict) -> None:
        self.provenance.update(to_jsonable(prov))

    def config(self, **kw) -> None:
        """记录本实验实际用到的超参数（写进 JSON 的 config.experiment）。"""
        self.exp_config.update(to_jsonable(kw))

    def load_corpus(self, name: str = "shakespeare"):
        """按 --data-file / KATA_DATA_DIR / 缓存 / 下载的顺序取语料；允许时退回合成语料并记录下来。"""
        from kata.data import load_corpus

        corpus = load_corpus(name, data_file=self.args.data_file, allow_synthetic=self.can_use_synthetic)
        self.dataset = corpus.info()
        if corpus.fell_back_to_synthetic:
            why = self.synthetic_reason.rstrip("。")
            note = ("注意：本次没有找到 TinyShakespeare，改用确定性的合成语料" + (f"（这个实验可以这样做：{why}）" if why else "")
                    + "；数字与真实语料上的结果不能直接比较（JSON 里 dataset.fell_back_to_synthetic = true）。")
            print(note)
            self.notes.append(note)
            self.dataset["fallback_notice"] = note
            self.dataset["synthetic_reason"] = self.synthetic_reason
        else:
            print(f"数据：{corpus.name}（来源 {corpus.source}，{len(corpus.text):,} 个字符，sha256 {corpus.sha256[:12]}…）")
        return corpus

    def save_metrics(self, metrics: dict) -> None:
        self.metrics.update(to_jsonable(metrics))

    def save_figure(self, fig, name: str) -> Path:
        """把图渲染成 PNG 并关闭它；文件 <结果文件夹>/<模式>-<实现>_<name>.png 在实验结束时与 JSON 一起写出。

        返回它将来的路径。中途出错或被 Ctrl-C 打断时，旧的图不会被换掉一半。
        """
        import io

        import matplotlib.pyplot as plt

        if name.startswith(self.name + "_"):
            name = name[len(self.name) + 1:]
        path = self.result_dir / f"{self.result_stem}_{name}.png"
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        finally:
            plt.close(fig)
        self._pending_figures[path.name] = buf.getvalue()
        shown = display_path(path)
        if shown not in self.figures:
            self.figures.append(shown)
        return path

    def write_pending(self) -> None:
        """（测试与 notebook 用）不等实验结束，立即写出已渲染的图。"""
        commit_files({self.result_dir / n: data for n, data in self._pending_figures.items()})

    def print_table(self, headers: Sequence, rows: Sequence[Sequence], title: Optional[str] = None) -> None:
        rows = [list(r) for r in rows]
        print()
        if title:
            print(title)
        print(format_table(headers, rows))
        self.tables.append({"title": title, "headers": [_cell(h) for h in headers],
                            "rows": [[_cell(v) for v in r] for r in rows]})

    def note(self, text: str) -> None:
        """一条附注：打印并记进 JSON，也会附在结论后面。"""
        print(text)
        self.notes.append(text)

    def conclude(self, text: str) -> None:
        """打印结论（应由本次的数字决定措辞）并记进 JSON。"""
        extra = [n for n in self.notes if n not in text]
        full = tidy_spacing(text.strip()) + ("\n" + "\n".join(extra) if extra else "")
        if self.smoke:
            full = (SMOKE_NOTICE + "\n" + full).strip()
        self.conclusion = full
        print("\n结论：")
        print(full)

    @staticmethod
    def _display_path(path: Path) -> str:
        return display_path(path)


class UsageError(RuntimeError):
    """参数或设备不可用：打印一句话，退出码 1。"""

    exit_code = 1


class SetupError(UsageError):
    """开始计算之前就能发现的问题（结果目录不可写、--impl / --data-file 不能用）：一句话，退出码 2。"""

    exit_code = 2


def _print_interrupted() -> None:
    # 终端里进度条可能停在行中间：先换行；不是终端（管道、日志、测试）时只有一行
    print("\n" + INTERRUPTED if sys.stderr.isatty() else INTERRUPTED, file=sys.stderr, flush=True)


def _can_write_in(folder: Path) -> bool:
    """真的在 folder 里建一个临时文件再删掉（root 用户、只读文件系统上 os.access 不可靠）。"""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        fd, name = tempfile.mkstemp(prefix=".kata-write-check-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return True


def _describe_previous(json_path: Path) -> str:
    """已有的结果文件 → “路径，某时运行”；没有时返回空字符串。"""
    if not json_path.is_file():
        return ""
    when = None
    try:
        when = json.loads(json_path.read_text(encoding="utf-8")).get("started_at")
    except (OSError, ValueError, AttributeError):
        pass
    if not when:
        with contextlib.suppress(OSError):
            when = _dt.datetime.fromtimestamp(json_path.stat().st_mtime).astimezone().isoformat(timespec="seconds")
    return f"{display_path(json_path)}，那次运行开始于 {when}" if when else display_path(json_path)


def _checked_component(name: str, impl: str):
    """check_component，但 bug:<名字> 不属于这个组件所在模块时给一句话（kata.impl 抛的是 ValueError）。"""
    try:
        return check_component(name, impl)
    except ValueError as exc:
        if impl.startswith("bug:"):
            raise SetupError(_one_line(exc) + f"（实验需要的 {name} 来自这个模块）") from None
        raise
