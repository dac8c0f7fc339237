"""模块 06 的测试：generate 的每个参数都做了 docstring 说的事。

这里的模型是你自己的 MiniMindForCausalLM，但它的 forward 被换成了一个“logits 由测试指定”的替身：
下一个 token 的 logits 只取决于当前最后一个 token（一张 [V, V] 的表）。于是测试知道每一步**精确**的
分布，可以直接检查 generate 做了什么：
- temperature：抽样分布是 softmax(logits / T)；T ≤ 0 是贪心；T 很小时几乎总是 argmax；
- top_k：只在概率最大的 k 个里抽（k ≥ 词表大小时等于不限）；
- top_p：只在“按概率从大到小累加、第一次达到 p”的最小集合里抽——含让累计概率越过 p 的那个边界 token；
  顺序是 温度 → top_k → top_p（top_p 用的是 top_k 截断并重新归一化之后的概率）；
- eos_token_id：一行生成 eos 之后只补 eos；所有行都结束就停；eos_token_id=0 也是合法的 eos；
- 生成时是 eval() 模式，结束后恢复原来的模式；use_cache=True 时第一步喂整段、之后每步只喂 1 个新 token。

抽样频率怎么判：一次 generate 抽 N=2000 行（每行一个独立样本），用 χ² 统计量与期望分布比较。
随机种子是固定的（结果每次都一样，不会时红时绿）；上限取得很宽，正确实现偶然超出的概率小于百万分之一，
而每一种常见错误（忽略温度、top-p 少留一个……）的 χ² 都比上限大几十倍。
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from kata.config import MiniMindConfig
from kata.testing import require

torch.set_num_threads(1)

SAMPLE = "teaching.md §5.2（怎么选下一个 token：温度、top-k、top-p、eos、eval 模式）"
GEN = "teaching.md §5.1（自回归生成与 KV cache）"
N = 2000           # 每次抽样的行数（= 样本数）
SEED = 20240601    # 固定的随机种子：抽样结果可复现
FAR = -1e4         # “不可能”的 logit：softmax 之后在 float32 里正好是 0（不用 -inf，免得 -inf - -inf 出 NaN）


class Controlled:
    """你的 MiniMindForCausalLM，forward 换成“按最后一个 token 查表”的替身，并记下每次调用。"""

    def __init__(self, impl, table: torch.Tensor, layers: int = 2):
        vocab = table.shape[0]
        cfg = MiniMindConfig(hidden_size=8, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                             vocab_size=vocab, max_position_embeddings=64)
        self.model = model = impl.MiniMindForCausalLM(cfg)
        self.table = table.float()
        self.calls = []   # (input_ids 的形状, cache 里已有的位置数, 调用时 model.training)

        def forward(input_ids, attention_mask=None, labels=None, past_key_values=None, use_cache=False, **kw):
            b, s = input_ids.shape
            past = 0
            if past_key_values is not None and len(past_key_values) and past_key_values[0] is not None:
                past = past_key_values[0][0].shape[1]
            self.calls.append(((b, s), past, model.training))
            presents = None
            if use_cache:
                presents = [(torch.zeros(b, past + s, 1, 1), torch.zeros(b, past + s, 1, 1)) for _ in range(layers)]
            return SimpleNamespace(logits=self.table[input_ids], loss=None, past_key_values=presents,
                                   hidden_states=None)

        model.forward = forward   # nn.Module.__call__ 调的就是实例上的 forward

    def generate(self, prompt, **kw):
        self.calls.clear()
        error = ""
        try:
            out = self.model.generate(prompt, **kw)
        except NotImplementedError:
            raise
        except Exception as exc:   # 例如所有 logits 都被设成了 -inf，torch.multinomial 报“invalid distribution”
            text = str(exc).strip()
            error = f"{type(exc).__name__}: {(text.splitlines() or [''])[0]}"
            if "multinomial" in text or "probability" in text:
                error += "——所有 token 都被截掉了？top_k / top_p 至少要留下概率最大的那个"
        # 在 except 之外失败：信息里不会出现“During handling of the above exception”
        require(not error, f"generate({', '.join(f'{k}={v!r}' for k, v in kw.items())}) 抛出了异常 {error}", SAMPLE)
        require(bool(self.calls), "generate 应该在每一步用 self(ids, past_key_values=…, use_cache=…)（也就是 forward）"
                                  "拿 logits；测试替换了 forward，你的 generate 却一次也没有调用它"
                                  "（是不是直接调了 self.model 和 self.lm_head？）", GEN)
        require(isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == prompt.shape[0]
                and out.shape[1] >= prompt.shape[1] and torch.equal(out[:, :prompt.shape[1]], prompt),
                f"generate 应返回 [B, S + n] 的张量，开头是原样的 input_ids；实际 "
                f"{tuple(out.shape) if isinstance(out, torch.Tensor) else out!r}", GEN)
        return out


def _one_step_table(logits: list[float]) -> torch.Tensor:
    """词表大小 V = len(logits)；任何 token 之后，下一个 token 的 logits 都是同一个向量。"""
    row = torch.tensor(logits, dtype=torch.float32)
    return row.expand(len(logits), -1).clone()


def _sample_counts(impl, logits, **kw) -> torch.Tensor:
    """N 行各抽 1 个 token，返回每个 token 被抽到的次数 [V]。"""
    lm = Controlled(impl, _one_step_table(logits))
    torch.manual_seed(SEED)
    out = lm.generate(torch.zeros(N, 1, dtype=torch.long), max_new_tokens=1, **kw)
    require(out.shape == (N, 2), f"max_new_tokens=1、没有 eos 时应返回 [{N}, 2]，实际 {tuple(out.shape)}", GEN)
    return torch.bincount(out[:, 1], minlength=len(logits))


def _chi2(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, float]:
    """(χ², 上限)。期望概率为 0 的 token 一旦出现，χ² 记为无穷大。"""
    n = float(counts.sum())
    if bool(((probs == 0) & (counts > 0)).any()):
        return math.inf, 0.0
    keep = probs > 0
    e = n * probs[keep]
    chi2 = float(((counts[keep].double() - e) ** 2 / e).sum())
    dof = int(keep.sum()) - 1
    return chi2, dof + 10 * math.sqrt(2 * dof) + 15   # 自由度 1–7 时，正确实现超出它的概率 < 1e-7


def _fmt(v) -> str:
    return "[" + ", ".join(f"{float(x):.3f}" for x in v) + "]"


def _check_distribution(counts, want, what, alternatives=()):
    """counts 是否像是从 want 抽出来的；不像时说清期望 vs 实际，并指出它像哪个常见错误。"""
    chi2, limit = _chi2(counts, want)
    if chi2 <= limit:
        return
    freq = counts.double() / counts.sum()
    lines = [f"{what}：抽样频率与期望分布不符（{N} 个样本，随机种子固定）",
             f"  期望概率 {_fmt(want)}", f"  实际频率 {_fmt(freq)}"]
    unexpected = [i for i in range(len(want)) if want[i] == 0 and counts[i] > 0]
    if unexpected:
        lines.append(f"  抽到了本应被截掉的 token {unexpected}（期望概率为 0）")
    else:
        lines.append(f"  χ² = {chi2:.0f}，远超上限 {limit:.0f}（正确实现超出它的概率小于百万分之一）")
    for name, probs in alternatives:
        c2, lim = _chi2(counts, probs)
        if c2 <= lim:
            lines.append(f"  你的频率与『{name}』一致（那时的概率 {_fmt(probs)}）")
            break
    require(False, "\n".join(lines), SAMPLE)


def _softmax(logits, t=1.0):
    return torch.softmax(torch.tensor(logits, dtype=torch.float64) / t, dim=-1)


def _keep(probs, kept):
    """只留 kept 里的 token 并重新归一化。"""
    mask = torch.zeros_like(probs, dtype=torch.bool)
    mask[list(kept)] = True
    p = torch.where(mask, probs, torch.zeros_like(probs))
    return p / p.sum()


def _top_k_set(probs, k):
    return set(torch.argsort(probs, descending=True)[:k].tolist())


def _top_p_set(probs, p):
    """按概率从大到小累加，第一次达到 p 为止的最小集合（含越过 p 的那个边界 token）。"""
    order = torch.argsort(probs, descending=True).tolist()
    kept, mass = [], 0.0
    for i in order:
        kept.append(i)
        mass += float(probs[i])
        if mass >= p:
            break
    return set(kept)


LOGITS = [0.0, 2.0, -3.0, 1.0, -1.0]   # argmax 是 token 1；顺序故意打乱，“前 k 个下标”≠“最大的 k 个”


# ---------------------------------------------------------------- temperature

@pytest.mark.parametrize("t", [0.5, 2.0])
def test_temperature_divides_logits_before_softmax(impl, t):
    counts = _sample_counts(impl, LOGITS, temperature=t)
    _check_distribution(counts, _softmax(LOGITS, t), f"temperature={t} 时应从 softmax(logits / {t}) 抽样", alternatives=[
        ("temperature 被忽略了：从 softmax(logits) 抽样", _softmax(LOGITS)),
        (f"logits 乘了 temperature 而不是除以它：softmax(logits · {t})", _softmax(LOGITS, 1 / t)),
    ])


@pytest.mark.parametrize("t", [0.0, -1.0, 0.02])
def test_zero_or_tiny_temperature_picks_the_argmax(impl, t):
    counts = _sample_counts(impl, LOGITS, temperature=t)
    argmax = max(range(len(LOGITS)), key=lambda i: LOGITS[i])
    rule = "temperature ≤ 0 表示贪心：每一行都取 argmax（不抽样，也不能除以 0）" if t <= 0 else \
        f"temperature={t} 把 logits 放大 {1 / t:.0f} 倍，分布几乎全部集中在 argmax 上"
    require(int(counts[argmax]) == N, f"{rule}；argmax 是 token {argmax}，实际 {N} 行的结果分布 {counts.tolist()}"
                                      + ("——temperature 被忽略了？" if 0 < t else ""), SAMPLE)


# ---------------------------------------------------------------- top_k

@pytest.mark.parametrize("k", [1, 3])
def test_top_k_keeps_exactly_the_k_most_likely(impl, k):
    probs = _softmax(LOGITS)
    counts = _sample_counts(impl, LOGITS, top_k=k)
    _check_distribution(counts, _keep(probs, _top_k_set(probs, k)),
                        f"top_k={k} 时只在概率最大的 {k} 个 token {sorted(_top_k_set(probs, k))} 里抽（按原比例重新归一化）",
                        alternatives=[
                            (f"只留了 {k - 1} 个（比较时用了 <= 而不是 <？）", _keep(probs, _top_k_set(probs, k - 1)))
                            if k > 1 else ("top_k 被忽略了", probs),
                            (f"留了 {k + 1} 个", _keep(probs, _top_k_set(probs, k + 1))),
                            ("top_k 被忽略了", probs),
                            (f"留的是下标最小的 {k} 个，而不是概率最大的 {k} 个", _keep(probs, range(k))),
                        ])


@pytest.mark.parametrize("k", [0, 5, 50])
def test_top_k_zero_or_at_least_vocab_means_no_limit(impl, k):
    counts = _sample_counts(impl, LOGITS, top_k=k)
    _check_distribution(counts, _softmax(LOGITS), f"top_k={k}（词表大小 5；0 = 不限，≥ 词表大小也等于不限，不能报错）"
                                                  "时应从完整的 softmax(logits) 抽样")


# ---------------------------------------------------------------- top_p

P = [0.05, 0.5, 0.15, 0.3]            # 从大到小：token 1 (0.5) → 3 (0.3) → 2 (0.15) → 0 (0.05)
P_LOGITS = [math.log(p) for p in P]   # 累计概率：0.5, 0.8, 0.95, 1.0


@pytest.mark.parametrize("p", [0.45, 0.7, 0.9, 0.97])
def test_top_p_keeps_the_smallest_set_reaching_p(impl, p):
    probs = torch.tensor(P, dtype=torch.float64)
    kept = _top_p_set(probs, p)
    order = torch.argsort(probs, descending=True).tolist()
    n = len(kept)
    counts = _sample_counts(impl, P_LOGITS, top_p=p)
    _check_distribution(counts, _keep(probs, kept),
                        f"top_p={p}：按概率从大到小 {[round(P[i], 2) for i in order]} 累加，第一次达到 {p} 时的最小集合是 "
                        f"token {sorted(kept)}（含让累计概率越过 {p} 的那个边界 token）", alternatives=[
                            ("少留了一个：把让累计概率越过 p 的边界 token 也丢掉了（cumsum > p 的都丢，没有右移一位）",
                             _keep(probs, order[:max(n - 1, 1)])),
                            ("多留了一个", _keep(probs, order[:n + 1])),
                            ("top_p 被忽略了", probs),
                        ])


def test_top_p_uses_probabilities_after_temperature(impl):
    t, p = 2.0, 0.75
    scaled = _softmax(P_LOGITS, t)          # ≈ [0.12, 0.38, 0.21, 0.29]：累计 0.38, 0.67, 0.88
    kept = _top_p_set(scaled, p)             # {1, 3, 2}
    wrong = _top_p_set(torch.tensor(P, dtype=torch.float64), p)   # 在温度之前截断：{1, 3}
    counts = _sample_counts(impl, P_LOGITS, temperature=t, top_p=p)
    _check_distribution(counts, _keep(scaled, kept),
                        f"temperature={t}、top_p={p}：先除以温度，再按 softmax(logits / T) 的累计概率截断，"
                        f"应保留 token {sorted(kept)}", alternatives=[
                            ("top_p 在除以温度之前就截断了", _keep(scaled, wrong)),
                            ("temperature 被忽略了", _keep(torch.tensor(P, dtype=torch.float64), wrong)),
                        ])


def test_top_p_applies_after_top_k_on_renormalised_probabilities(impl):
    k, p = 3, 0.82
    probs = torch.tensor(P, dtype=torch.float64)
    after_k = _keep(probs, _top_k_set(probs, k))    # [0, .526, .158, .316]：累计 0.526, 0.842
    kept = _top_p_set(after_k, p)                   # {1, 3}
    counts = _sample_counts(impl, P_LOGITS, top_k=k, top_p=p)
    _check_distribution(counts, _keep(probs, kept),
                        f"top_k={k}、top_p={p}：先按 top_k 截断（重新归一化后累计 0.526, 0.842），再按 top_p 截断，"
                        f"应保留 token {sorted(kept)}", alternatives=[
                            ("top_p 用的是 top_k 截断之前的概率（累计 0.5, 0.8, 0.95）",
                             _keep(probs, _top_p_set(probs, p) & _top_k_set(probs, k))),
                            ("top_p 被忽略了", after_k),
                        ])


# ---------------------------------------------------------------- eos

def _chain(eos: int) -> torch.Tensor:
    """确定的马尔可夫链（V = 6）：1→2→3→eos，4→eos，eos→5，5→5（token 名字按 eos 平移）。
    eos 之后接的是 5：一行结束后如果还在“抽样”，会抽出 5 而不是 eos。"""
    shift = lambda t: (t + eos) % 6   # noqa: E731  eos=0 时就是原样
    table = torch.full((6, 6), FAR)
    for a, b in ((1, 2), (2, 3), (3, 0), (4, 0), (0, 5), (5, 5)):
        table[shift(a), shift(b)] = 0.0
    return table


def _rows(eos: int, rows):
    return torch.tensor([[(t + eos) % 6 for t in r] for r in rows])


PROMPTS = [[5, 1], [5, 4], [4, 2]]   # 第 0 行第 3 步生成 eos，第 1 行第 1 步，第 2 行第 2 步


@pytest.mark.parametrize("eos", [0, 2], ids=["eos0", "eos2"])
@pytest.mark.parametrize("mode", [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.7, top_k=2, top_p=0.9),
                                  dict(temperature=0.0, use_cache=False)], ids=["greedy", "sample", "topk_topp", "no_cache"])
def test_finished_rows_are_padded_with_eos_and_generation_stops(impl, eos, mode):
    lm = Controlled(impl, _chain(eos))
    torch.manual_seed(SEED)
    out = lm.generate(_rows(eos, PROMPTS), max_new_tokens=8, eos_token_id=eos, **mode)
    want = _rows(eos, [[5, 1, 2, 3, 0], [5, 4, 0, 0, 0], [4, 2, 3, 0, 0]])
    if out.shape == want.shape and torch.equal(out, want):
        return
    why = ""
    if out.shape[1] > want.shape[1]:
        rest = out[:, want.shape[1]:]
        if bool((rest == eos).all()) and torch.equal(out[:, :want.shape[1]], want):
            why = "所有行都已经生成过 eos，应当提前停止，而不是一直补 eos 到 max_new_tokens"
        elif eos == 0 and out.shape[1] == 2 + 8:
            why = ("eos_token_id=0 时完全没有停：0 也是合法的 eos——判断要写 `eos_token_id is not None`，"
                   "不能写 `if eos_token_id:`（0 为假）")
        else:
            why = "有一行生成 eos 之后还在继续抽样（eos 后面接出了别的 token）"
    elif out.shape == want.shape:
        why = "已经生成过 eos 的行之后应一律补 eos，不能再抽样（例如 torch.where(finished, eos, next_token)）"
    require(False, f"eos_token_id={eos}：三行分别在第 3、1、2 步生成 eos，期望输出\n  {want.tolist()}\n"
                   f"  实际\n  {out.tolist()}" + (f"\n  {why}" if why else ""), SAMPLE)


def test_without_eos_generation_runs_to_max_new_tokens(impl):
    lm = Controlled(impl, _chain(0))
    out = lm.generate(_rows(0, PROMPTS), max_new_tokens=6, temperature=0.0)
    want = torch.tensor([[5, 1, 2, 3, 0, 5, 5, 5], [5, 4, 0, 5, 5, 5, 5, 5], [4, 2, 3, 0, 5, 5, 5, 5]])
    require(out.shape == want.shape and torch.equal(out, want),
            f"没有给 eos_token_id 时，token 0 只是普通 token：应生成满 max_new_tokens=6 个，期望 {want.tolist()}，"
            f"实际 {out.tolist()}", SAMPLE)


# ---------------------------------------------------------------- 模式与 cache 的调用方式

@pytest.mark.parametrize("was_training", [True, False], ids=["from_train", "from_eval"])
def test_generate_runs_in_eval_and_restores_the_mode(impl, was_training):
    lm = Controlled(impl, _chain(0))
    lm.model.train(was_training)
    lm.generate(_rows(0, PROMPTS), max_new_tokens=3, temperature=0.0)
    during = {training for _, _, training in lm.calls}
    require(during == {False}, "generate 的每一步都应在 eval() 模式下前向（关掉 dropout），实际调用 forward 时 "
                               f"model.training = {sorted(during)}", SAMPLE)
    require(lm.model.training == was_training,
            f"generate 之前模型是 {'train' if was_training else 'eval'} 模式，之后应恢复成同样的模式，"
            f"实际是 {'train' if lm.model.training else 'eval'}（先记下 was_training = self.training，最后 self.train(was_training)）",
            SAMPLE)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "no_cache"])
def test_generate_feeds_the_model_as_documented(impl, use_cache):
    lm = Controlled(impl, _chain(0))
    prompt = _rows(0, PROMPTS)
    lm.generate(prompt, max_new_tokens=4, temperature=0.0, use_cache=use_cache)
    b, s = prompt.shape
    if use_cache:
        want = [((b, s), 0)] + [((b, 1), s + i) for i in range(3)]
        rule = "use_cache=True：第一步喂整段提示词，之后每步只喂最新的 1 个 token，并带上一步的 past_key_values"
    else:
        want = [((b, s + i), 0) for i in range(4)]
        rule = "use_cache=False：每一步都喂到目前为止的整段序列，不带 cache"
    got = [(shape, past) for shape, past, _ in lm.calls]
    require(got == want, f"{rule}。期望每次调用 forward 的 (input_ids 形状, cache 长度) = {want}，实际 {got}", GEN)
