"""测试用的小工具：像助教一样说话的断言，以及“先修这一条”的契约分层。

失败信息包含：比较的是什么、期望 vs 实际（形状、dtype、最大误差及其位置、几个样本值——有效数字多到
能看出差别）、误差的量级是否正好是 float32 的精度（“你在某处降到了 float32”）、如果与 bug bank 里某个
常见错误的输出一致就点名它，最后指向 teaching.md 的对应章节。

契约分层（cascade）：怎样让“一个根本错误 → 十几个测试失败”读起来只有一个起点
-----------------------------------------------------------------------------------------
一个根本错误（例如 RoPE 的频率写错）会让所有用到它的测试一起失败，而后面那些测试的误差比例只会误导人。
每个模块可以把自己的测试按“契约”分层——一个契约 = 一条可以单独验证的保证，加上它依赖的更基础的契约::

    # exercises/NN_名字/test_xxx.py 的模块级（推荐写在测试文件里，与测试放在一起维护）
    from kata.testing import Contract

    KATA_CONTRACTS = (
        Contract("shape", "表的形状与布局", tests=("test_tables_shape_*",)),
        Contract("freqs", "频率 θ_i = base^(−2i/D)", tests=("test_frequencies_*",), after=("shape",)),
        Contract("apply", "旋转本身（给定正确的表）", tests=("test_apply_*",)),
        Contract("pipeline", "表 + 旋转 端到端", tests=("test_matches_*",), after=("freqs", "apply")),
    )

- ``tests`` 是测试函数名的通配（fnmatch；不含参数部分 ``[...]``）；
- ``after`` 列出它依赖的契约（写在它前面）；依赖是传递的；
- 没有列进任何契约的测试被当作“依赖全部契约”（最综合的那一层）。

有了它，pytest 的结尾和 ``python -m kata check`` 都会先给出最基础的那个失败契约（“先修这一条”），
把依赖它的失败归在它下面（“很可能是它连带的”）。一个目录下有多个测试文件时，各文件的 KATA_CONTRACTS 合并。
测试文件还没声明时，用下面 ``CONTRACTS`` 里为该模块登记的那一份（新模块请直接写在测试文件里）。
还没实现（NotImplementedError）的测试不参与分层：它们有自己的“还没实现的部分”小结。
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch

from kata.impl import describe, resolve


# ---------------------------------------------------------------------------------------------
# 契约分层（数据；分组逻辑在 kata.runner.cascade，CLI 与 pytest 小结共用）
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Contract:
    name: str                    # 机器可读的短名，在 after 里引用
    title: str                   # 一句中文：这个契约保证什么（出现在“先修这一条”后面）
    tests: tuple[str, ...]       # 测试函数名的 fnmatch 通配（不含参数部分）
    after: tuple[str, ...] = ()  # 依赖的更基础的契约（名字；必须写在本契约之前）


_ROPE_TABLE = ("test_tables_shape_dtype_and_half_split",)
# 测试文件还没有自己的 KATA_CONTRACTS 时用这里的（见模块文档）。新模块请直接写在测试文件里。
CONTRACTS: dict[str, tuple[Contract, ...]] = {
    "01_normalization": (
        Contract("init", "RMSNorm 的参数：weight 是全 1 的 nn.Parameter", ("test_weight_is_a_parameter_of_ones",)),
        Contract("shape", "输出形状与输入相同", ("test_output_shape",)),
        Contract("formula", "公式本身：x / sqrt(mean(x²) + eps) · weight，沿最后一维、不减均值",
                 ("test_eps_is_stored_and_used", "test_eps_inside_the_sqrt_float64", "test_does_not_subtract_the_mean",
                  "test_unit_weight_output_has_rms_one", "test_each_token_normalised_independently",
                  "test_weight_is_per_channel", "test_scale_invariant"),
                 after=("init", "shape")),
    ),
    "02_position_encoding": (
        Contract("table_shape", "precompute_freqs_cis 返回的 cos/sin 表：形状 [end, dim]、float32、half-split 布局",
                 _ROPE_TABLE),
        Contract("freqs", "precompute_freqs_cis 的数值：位置从 0 开始，频率 θ_i = rope_base^(−2i/dim)",
                 ("test_frequencies_follow_rope_base", "test_tables_match_formula", "test_position_zero_is_identity",
                  "test_defaults_match_minimind"), after=("table_shape",)),
        Contract("rotate_half", "rotate_half(x) = [−x2, x1]", ("test_rotate_half_definition",)),
        Contract("apply", "apply_rotary_pos_emb 本身（用测试给的正确表）：形状、不原地修改、旋转公式",
                 ("test_apply_shapes_gqa_and_no_in_place", "test_apply_alone_float64_with_sliced_tables",
                  "test_unsqueeze_dim_for_heads_first_layout"), after=("rotate_half",)),
        Contract("rope", "表 + 旋转连起来：与复数写法、参考实现一致，只依赖相对位置，dtype 不变",
                 ("test_matches_*", "test_dtype_preserved_and_values_right", "test_relative_position_property",
                  "test_rotation_preserves_each_pair_norm", "test_gradcheck_float64"), after=("freqs", "apply")),
        Contract("yarn", "YaRN：只在 end 超过 original_max_position_embeddings 时按 ramp 改频率",
                 ("test_yarn_*",), after=("freqs",)),
        Contract("sinusoidal", "正弦位置编码（与 RoPE 无关）", ("test_sinusoidal_*",)),
    ),
    # 03：Attention.forward 调用的是你自己的 scaled_dot_product_attention 和 repeat_kv，
    # 所以它们错了，Attention 的测试会跟着错；没列出的 Attention 测试依赖全部契约。
    "03_attention": (
        Contract("sdpa", "scaled_dot_product_attention 本身：除以 √D、softmax 沿 key 轴、因果掩码对齐到最后一个 query",
                 ("test_sdpa_*", "test_attention_weights_are_a_distribution_per_row",
                  "test_scores_are_scaled_by_one_over_sqrt_d")),
        Contract("repeat_kv", "repeat_kv：每个 KV 头交错复制 n_rep 份（0 0 1 1）", ("test_repeat_kv_*",)),
        Contract("init", "Attention 的参数名与形状（q_proj/k_proj/v_proj/o_proj），头数不能整除时报错",
                 ("test_attention_parameters_follow_minimind_names", "test_attention_rejects_impossible_head_counts")),
        Contract("shape", "Attention 的输出形状与 present（KV cache）", ("test_attention_output_shape_and_present",),
                 after=("init",)),
    ),
    "04_feedforward": (
        Contract("params", "三个没有 bias 的线性层 gate_proj / up_proj / down_proj，默认宽度 8·dim/3 向上取整到 multiple_of",
                 ("test_parameters_are_three_bias_free_projections", "test_default_width", "test_default_multiple_of_is_64",
                  "test_explicit_hidden_dim_is_used_as_given")),
        Contract("shape", "输出形状与输入相同，前面的维度都只是 batch", ("test_output_shape_any_leading_dims",
                                                                  "test_leading_dims_are_just_a_batch")),
        Contract("formula", "公式：down_proj(silu(gate_proj(x)) * up_proj(x))",
                 ("test_matches_*", "test_float64_formula_written_differently", "test_gate_activation_is_silu",
                  "test_zero_input_gives_zero_output", "test_output_is_linear_in_up_branch", "test_each_token_independent",
                  "test_gradcheck_float64"), after=("params", "shape")),
        Contract("dropout", "dropout 只作用在输出上，eval 时不起作用", ("test_dropout_*",), after=("formula",)),
    ),
    "05_residual_connection": (
        Contract("attrs", "有 norm 和 sublayer 两个属性", ("test_attributes_norm_and_sublayer",)),
        Contract("shape", "输出形状与输入相同", ("test_output_shape",)),
        Contract("formula", "Pre：x + sublayer(norm(x))；Post：norm(x + sublayer(x))",
                 ("test_float64_dtype_preserved_and_values_right", "test_matches_*", "test_pre_zero_sublayer_is_identity",
                  "test_post_zero_sublayer_is_just_the_norm", "test_post_output_is_normalised",
                  "test_pre_keeps_the_residual_stream_scale", "test_norm_and_sublayer_called_once_in_the_right_order",
                  "test_does_not_modify_the_input"), after=("attrs", "shape")),
        Contract("gradient", "梯度：Pre 的雅可比 = I + 支路，恒等通路把梯度带回去",
                 ("test_pre_jacobian_is_identity_plus_branch", "test_pre_identity_path_carries_the_gradient",
                  "test_post_jacobian_is_norm_times_identity_plus_branch", "test_gradcheck_float64"), after=("formula",)),
    ),
    # 06：块是模型的零件，模型的测试依赖块；配置、dropout、生成都依赖“模型本身算对了”。
    "06_transformer_block": (
        Contract("block_parts", "MiniMindBlock 的四个子模块、名字与形状",
                 ("test_block_submodules_and_state_dict_keys", "test_block_uses_config_eps_and_heads",
                  "test_block_output_shape_and_present")),
        Contract("block_math", "块的计算：h = x + attn(norm(x))，out = h + mlp(norm(h))；因果、KV cache、梯度",
                 ("test_block_is_pre_norm_by_call_order_and_dataflow", "test_block_equals_formula_of_its_own_submodules",
                  "test_zeroed_sublayers_make_the_block_identity", "test_block_matches_reference_solution",
                  "test_block_is_causal", "test_block_kv_cache_matches_full_forward",
                  "test_block_gradients_reach_every_parameter"), after=("block_parts",)),
        Contract("model_parts", "MiniMindForCausalLM 的结构：state_dict 键名、非持久的 RoPE 缓冲、参数量、权重共享、输出对象",
                 ("test_state_dict_keys_match_minimind", "test_rope_tables_are_non_persistent_buffers",
                  "test_parameter_count_*", "test_tied_embeddings_share_storage", "test_forward_output_contract"),
                 after=("block_parts",)),
        Contract("model_math", "整个模型算对了：逐层与参考一致、移位的交叉熵、因果、KV cache、padding",
                 ("test_model_matches_reference_layer_by_layer", "test_loss_*", "test_final_hidden_states_are_normalised",
                  "test_model_is_causal_end_to_end", "test_kv_cache_decoding_matches_full_forward",
                  "test_sequence_up_to_max_position_embeddings", "test_padded_batch_matches_single_sequences",
                  "test_gradients_reach_every_parameter"), after=("block_math", "model_parts")),
        Contract("config", "每个 config 字段都传到了用它的地方",
                 ("test_changing_one_config_field_changes_the_model", "test_non_default_config_matches_reference",
                  "test_rope_buffers_follow_config", "test_rope_theta_table_matches_float64_formula",
                  "test_every_rmsnorm_uses_config_eps", "test_attention_and_ffn_follow_config_in_every_layer",
                  "test_flash_attn_switch_keeps_outputs_identical"), after=("model_math",)),
        Contract("dropout", "dropout：train 时只在文档说的地方丢，eval 时处处确定",
                 ("test_block_eval_has_no_randomness", "test_block_train_drops_only_attention_and_ffn_outputs",
                  "test_model_eval_has_no_randomness", "test_model_train_drops_embeddings_and_nowhere_else",
                  "test_dropout_zero_means_train_equals_eval"), after=("model_math",)),
        Contract("generate", "generate：温度、top-k、top-p、eos 与模式切换都按文档",
                 ("test_greedy_generation_*", "test_temperature_*", "test_zero_or_tiny_temperature_picks_the_argmax",
                  "test_top_*", "test_finished_rows_are_padded_with_eos_and_generation_stops",
                  "test_without_eos_generation_runs_to_max_new_tokens", "test_generate_*"), after=("model_math",)),
    ),
    "07_tokenizer": (
        Contract("layout", "词表布局：特殊 token、256 个字节、合并，大小正好是要求的；坏输入报清楚的错",
                 ("test_vocab_layout_specials_then_bytes_then_merges", "test_vocab_size_is_exactly_what_was_asked",
                  "test_vocab_size_too_small_is_a_clear_error", "test_bad_*", "test_running_out_of_pairs_stops_with_a_warning")),
        Contract("train", "train_bpe：每次合并出现最多的相邻对，平局取字典序更大的，特殊 token 不参与",
                 ("test_first_merge_is_the_most_frequent_pair", "test_ties_go_to_the_lexicographically_greater_pair",
                  "test_merges_match_naive_reference*", "test_training_is_deterministic",
                  "test_special_tokens_do_not_take_part_in_training"), after=("layout",)),
        Contract("decode", "decode：先拼字节再按 UTF-8 解码，坏字节变 U+FFFD",
                 ("test_decode_joins_bytes_before_utf8", "test_decode_invalid_utf8_gives_replacement_char",
                  "test_decode_accepts_tensors"), after=("layout",)),
        Contract("encode", "encode：按合并的名次应用、不跨词、特殊 token 整体映射",
                 ("test_merges_are_applied_in_rank_order", "test_encode_matches_naive_encoder",
                  "test_special_tokens_map_to_their_ids", "test_longer_special_token_wins_when_one_is_a_prefix_of_another",
                  "test_merges_never_cross_word_boundaries", "test_encoding_gets_shorter_as_vocab_grows",
                  "test_decode_encode_round_trip"), after=("train", "decode")),
        Contract("files", "save / load 原样往返", ("test_save_*",), after=("layout",)),
        Contract("hf", "与 HF tokenizers 逐 id 一致（含读 minimind 的 tokenizer.json）",
                 ("test_encode_matches_hf_*", "test_from_hf_json_*", "test_compression_is_close_to_hf_at_the_same_vocab_size"),
                 after=("encode", "files")),
    ),
    # 08：四个零件互相独立；train_step 与检查点用到全部零件（同名的 test_matches_reference_solution 等没有分层）。
    "08_training_loop": (
        Contract("loss", "cross_entropy：数值稳定、忽略 ignore_index、只对非忽略位置求平均",
                 ("test_returns_a_scalar_of_at_least_float32", "test_low_precision_input_is_computed_in_float32", "test_matches_F_cross_entropy",
                  "test_huge_logits_do_not_overflow", "test_gradient_matches_*", "test_ignore_index_argument_is_used",
                  "test_ignored_positions_do_not_dilute_the_mean", "test_all_ignored_gives_zero_and_zero_gradient",
                  "test_mismatched_shapes_are_an_error_not_a_silent_answer")),
        Contract("optim", "AdamW：与 torch.optim.AdamW 逐步一致，权重衰减解耦，状态可保存",
                 ("test_is_a_torch_optimizer_with_param_groups", "test_matches_torch_adamw_step_for_step",
                  "test_lr_is_read_from_the_group_every_step", "test_each_beta_takes_effect", "test_zero_gradient_still_decays",
                  "test_not_the_same_as_adam_with_l2", "test_first_update_is_about_lr", "test_eps_*",
                  "test_state_dict_round_trip_continues_identically", "test_closure_and_invalid_hyperparameters")),
        Contract("schedule", "cosine_lr 与 minimind_lr 的公式与边界",
                 ("test_cosine_*", "test_no_warmup_starts_at_max_lr", "test_warmup_equal_to_total",
                  "test_monotone_in_each_phase_and_floored", "test_every_argument_takes_effect", "test_invalid_arguments_raise",
                  "test_minimind_lr_*")),
        Contract("clip", "clip_grad_norm：全局 L2 范数，与 torch 一致",
                 ("test_matches_torch_clip_grad_norm", "test_returns_the_norm_before_clipping", "test_no_op_below_threshold",
                  "test_clipped_global_norm_equals_max_norm", "test_global_not_per_parameter",
                  "test_accepts_a_generator_like_model_parameters", "test_single_tensor_and_missing_grads",
                  "test_non_finite_norm_is_reported", "test_invalid_max_norm_raises", "test_no_gradients_at_all")),
        Contract("step", "train_step 与检查点：累积等于大 batch，续训逐位一致",
                 ("test_one_step_matches_manual_reference", "test_accumulation_equals_one_big_batch",
                  "test_no_update_until_the_last_micro_step", "test_invalid_accumulation_arguments_raise",
                  "test_max_grad_norm_clips_before_the_update", "test_lr_argument_sets_every_param_group",
                  "test_checkpoint_*", "test_load_*", "test_interrupted_save_leaves_the_old_file_intact",
                  "test_missing_checkpoint_raises_file_not_found", "test_resume_is_bit_exact",
                  "test_failed_save_leaves_no_stray_files"), after=("loss", "optim", "schedule", "clip")),
    ),
    "09_pretrain": (
        Contract("dataset", "PretrainDataset：定长样本、标签右移一位、padding 记为 −100",
                 ("test_dataset_*",)),
        Contract("shard", "rank_batch：各 rank 的分片拼起来正好是单进程的 batch", ("test_rank_batch_*",)),
        Contract("evaluate", "evaluate：平均 loss 与 bits per byte", ("test_evaluate_*",)),
        Contract("distributed", "setup / cleanup_distributed 与 all_reduce_mean",
                 ("test_setup_*", "test_cleanup_without_process_group_is_a_no_op",
                  "test_all_reduce_mean_single_process_returns_the_value")),
        Contract("pretrain", "pretrain：单进程等于手写循环，双进程等于单进程跑全局 batch",
                 ("test_pretrain_single_process_equals_a_hand_written_sgd_loop",
                  "test_two_processes_equal_one_process_on_the_global_batch"),
                 after=("dataset", "shard", "evaluate", "distributed")),
    ),
    "10_sft": (
        Contract("template", "apply_chat_template：minimind 的 <|im_start|>role\n…<|im_end|>\n 格式", ("test_template_*",)),
        Contract("dataset", "SFTDataset 的形状、截断与 padding",
                 ("test_dataset_*",), after=("template",)),
        Contract("mask", "loss 掩码：只有助手回答（含 <|im_end|>\n）是标签，其余 −100",
                 ("test_mask_*", "test_labels_are_not_shifted", "test_matches_reference_solution",
                  "test_truncation_at_any_point_only_cuts_the_full_labels", "test_truncated_away_assistant_part_gives_no_loss",
                  "test_padding_never_in_the_loss", "test_generation_prompt_ends_where_the_loss_begins",
                  "test_bpe_marked_tokens_decode_to_exactly_the_replies"), after=("dataset",)),
    ),
}


def check_contracts(contracts, where: str = "KATA_CONTRACTS") -> tuple[Contract, ...]:
    """检查一份契约表：名字唯一、after 只引用写在前面的契约。返回 tuple；有错抛 ValueError（中文）。"""
    seen: set[str] = set()
    out = []
    for c in contracts:
        if not isinstance(c, Contract):
            raise ValueError(f"{where}：每一项都应是 kata.testing.Contract，实际 {type(c).__name__}")
        if c.name in seen:
            raise ValueError(f"{where}：契约名 {c.name!r} 重复了")
        unknown = [a for a in c.after if a not in seen]
        if unknown:
            raise ValueError(f"{where}：契约 {c.name!r} 的 after 引用了 {unknown}，它们必须是写在它前面的契约")
        if isinstance(c.tests, str):
            raise ValueError(f"{where}：契约 {c.name!r} 的 tests 应是元组（少了一个逗号？）")
        seen.add(c.name)
        out.append(c)
    return tuple(out)


def contract_info(test_name: str, contracts: tuple[Contract, ...]) -> dict:
    """一个测试在契约表里的位置：{"contract", "title", "rank", "deps"}（deps 是传递闭包）。

    没列进任何契约的测试：contract 为 ""，依赖全部契约。
    """
    import fnmatch

    base = test_name.split("[", 1)[0]
    closure: dict[str, list[str]] = {}
    for c in contracts:
        deps: list[str] = []
        for a in c.after:
            for d in [*closure[a], a]:
                if d not in deps:
                    deps.append(d)
        closure[c.name] = deps
    for rank, c in enumerate(contracts):
        if any(fnmatch.fnmatchcase(base, pat) for pat in c.tests):
            return {"contract": c.name, "title": c.title, "rank": rank, "deps": closure[c.name]}
    return {"contract": "", "title": "", "rank": len(contracts), "deps": [c.name for c in contracts]}


# ---------------------------------------------------------------------------------------------
# 数值比较与失败信息
# ---------------------------------------------------------------------------------------------

def _digits(a: float, e: float, lo: int = 6) -> int:
    """至少 lo 位有效数字；a 与 e 在 lo 位上看起来一样时，加到能看出差别为止（最多 17 位）。"""
    if a == e or not (math.isfinite(a) and math.isfinite(e)):
        return lo
    d = lo
    while d < 17 and f"{a:.{d}g}" == f"{e:.{d}g}":
        d += 1
    return max(lo, d)


def _fmt(t: torch.Tensor, n: int = 4, digits: int = 6) -> str:
    flat = t.detach().flatten()[:n].double().tolist()
    return "[" + ", ".join(f"{v:.{digits}g}" for v in flat) + (", …]" if t.numel() > n else "]")


def _close(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    return bool(torch.allclose(a.detach().double(), b.detach().double(), atol=atol, rtol=rtol, equal_nan=True))


FLOAT32_HINT = ("你的计算在某处降到了 float32（例如 x.float() 或 weight.float()）——"
                "本课要求 float64 输入保持 float64")


def _looks_like_rounding(a: torch.Tensor, e: torch.Tensor) -> bool:
    """误差像舍入噪声（逐元素的相对误差正负参半、均值≈0），而不是一个系统性的小错误。

    float32 的机器精度 ≈ 1.2e-7，几步运算累积起来在 1e-8 … 1e-5 之间；但“eps 少加了”这类真错误的
    相对误差也可能只有 1e-7 量级——区别在于它对同一行的每个元素都同号、同大小。
    """
    a, e = a.flatten(), e.flatten()
    keep = e.abs() > 1e-6 * float(e.abs().max())
    ratio = (a[keep] - e[keep]) / e[keep]
    ratio = ratio[ratio != 0]
    if ratio.numel() < 8:
        return False
    positive = float((ratio > 0).double().mean())
    return 0.2 <= positive <= 0.8 and abs(float(ratio.mean())) < 0.5 * float(ratio.std())


def float32_precision_note(actual: torch.Tensor, expected: torch.Tensor) -> str:
    """float64 对 float64、却差了 float32 量级（相对误差约 1e-7）时，返回一句解释；否则返回 ""。"""
    if actual.dtype != torch.float64 or expected.dtype != torch.float64 or actual.shape != expected.shape:
        return ""
    a, e = actual.detach(), expected.detach()
    if not (torch.isfinite(a).all() and torch.isfinite(e).all()):
        return ""
    scale = float(e.abs().max()) if e.numel() else 0.0
    if scale == 0.0:
        return ""
    rel = float((a - e).abs().max()) / scale
    a_is_f32 = bool(torch.equal(a, a.float().double()))
    e_is_f32 = bool(torch.equal(e, e.float().double()))
    if not (a_is_f32 and not e_is_f32 and rel <= 1e-4) and not (1e-9 <= rel <= 1e-5 and _looks_like_rounding(a, e)):
        return ""
    measured = f"相对误差 {rel:.2g}".replace("e-0", "e-")
    if a_is_f32 and not e_is_f32:
        measured += "，而且你的输出里每个数都恰好能用 float32 表示"
    return f"  误差约 1e-7 = float32 的精度（{measured}）：{FLOAT32_HINT}。"


def matching_bugs(module_key: str, run: Callable, actual: torch.Tensor, expected: torch.Tensor,
                  atol: float, rtol: float) -> list[str]:
    """bug bank 里哪些错误实现在同一输入上给出与 actual 一致、且与 expected 不一致的结果。

    诊断时错误实现自己发出的警告（例如 dtype 不匹配的 UserWarning）一律不外传：
    它们说的是 kata/bugbank/ 里的代码，不是学习者的。
    """
    from kata.bugbank import bugs_for

    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for bug in bugs_for(module_key):
            try:
                out = run(resolve(module_key, f"bug:{bug.name}"))
            except Exception:  # 某个错误实现在这个输入上直接报错：就不可能“一致”
                continue
            if isinstance(out, tuple):
                out = out[0]
            if not isinstance(out, torch.Tensor) or out.dtype != actual.dtype or not _close(out, actual, atol, rtol):
                continue
            if out.dtype == expected.dtype and _close(out, expected, atol, rtol):
                continue  # 这个错误在此输入上看不出来，不能拿它当诊断
            found.append(bug.description)
    return found


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    atol: float,
    rtol: float,
    what: str,
    section: str,
    module: Optional[str] = None,
    run: Optional[Callable] = None,
    check_dtype: bool = True,
) -> None:
    """断言 actual ≈ expected；失败时给出助教式的中文说明。

    what:    比较的是什么（“与 torch.nn.RMSNorm 对比”）；
    section: 去哪里读（“teaching.md §2”）；
    module + run: 提供时，失败信息会用 run(命名空间) 在 bug bank 的每个错误实现上重算一遍，
             找出与学习者输出一致的常见错误。

    打印的数字用足够多的有效数字（至少 6 位，看不出差别时一直加到能看出来）；float64 对 float64
    却差了 float32 量级时，直接说“你在某处降到了 float32”。
    """
    if not isinstance(actual, torch.Tensor):
        pytest.fail(f"{what}：期望得到 torch.Tensor，实际得到 {type(actual).__name__}。→ 见 {section}", pytrace=False)
    lines: list[str] = []
    if actual.shape != expected.shape:
        lines.append(f"{what}：期望形状 {tuple(expected.shape)}，实际 {tuple(actual.shape)}")
    elif check_dtype and actual.dtype != expected.dtype:
        lines.append(f"{what}：期望 dtype {expected.dtype}，实际 {actual.dtype}")
        if expected.dtype == torch.float64 and actual.dtype == torch.float32:
            lines.append(f"  {FLOAT32_HINT}。")
    elif not _close(actual, expected, atol, rtol):
        a, e = actual.detach().double(), expected.detach().double()
        if torch.isnan(a).any() and not torch.isnan(e).any():
            lines.append(f"{what}：你的输出里有 NaN（{int(torch.isnan(a).sum())} 个），期望里没有")
        elif torch.isinf(a).any() and not torch.isinf(e).any():
            lines.append(f"{what}：你的输出里有 inf（{int(torch.isinf(a).sum())} 个），期望里没有——是不是溢出了？")
        else:
            err = (a - e).abs().nan_to_num(nan=float("inf"))
            idx = int(err.flatten().argmax())
            pos = tuple(int(i) for i in torch.unravel_index(torch.tensor(idx), a.shape)) if a.dim() else ()
            ev, av = float(e.flatten()[idx]), float(a.flatten()[idx])
            d = _digits(av, ev)
            n = min(4, a.numel())
            d_rows = max([d] + [_digits(float(x), float(y)) for x, y in zip(a.flatten()[:n], e.flatten()[:n])])
            lines.append(
                f"{what}：数值不一致（容差 atol={atol:g}, rtol={rtol:g}）\n"
                f"  最大绝对误差 {float(err.flatten()[idx]):.3g}，位置 {pos}：期望 {ev:.{d}g}，"
                f"实际 {av:.{d}g}\n"
                f"  期望前几个值 {_fmt(e, digits=d_rows)}\n  实际前几个值 {_fmt(a, digits=d_rows)}"
            )
            note = float32_precision_note(actual, expected)
            if note:
                lines.append(note)
    if not lines:
        return
    if module is not None and run is not None:
        hits = matching_bugs(module, run, actual, expected, atol, rtol)
        if hits:
            lines.append("  你的输出与" + "、".join(f"『{h}』" for h in hits) + "这个常见错误一致。")
    lines.append(f"  → 见 {section}")
    pytest.fail("\n".join(lines), pytrace=False)


def require(cond: bool, message: str, section: str) -> None:
    """性质类断言：条件不成立就给出中文说明（不显示 traceback）。"""
    if not cond:
        pytest.fail(f"{message}\n  → 见 {section}", pytrace=False)


def _output_dtypes(fn: Callable, inputs: tuple) -> list[torch.dtype]:
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(*inputs)
    except NotImplementedError:
        raise
    except Exception:
        return []
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.dtype for o in outs if isinstance(o, torch.Tensor)]


def require_gradcheck(fn: Callable, inputs: tuple, section: str, *, who: str = "", atol: float = 1e-5,
                      fast_mode: bool = False) -> None:
    """float64 gradcheck（解析梯度 vs 中心差分）；不一致时给出中文说明，而不是 gradcheck 的长报错。

    NotImplementedError 原样抛出（桩的“还没实现”由 conftest 统一显示）；其余 RuntimeError
    （GradcheckError、对需要梯度的叶子张量原地修改……）都算失败，并附上报错的第一行。
    失败时列出常见原因：梯度被切断（.detach()、.data、原地修改），或计算降到了 float32。
    """
    try:
        ok = torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=atol, fast_mode=fast_mode)
        detail = ""
    except NotImplementedError:
        raise
    except RuntimeError as exc:
        text = str(exc).strip()
        first = text.splitlines()[0].rstrip(" ,.:;") if text else type(exc).__name__
        ok, detail = False, f"（PyTorch：{first}）"
    if ok:
        return
    prefix = f"{who}：" if who else ""
    low = [d for d in _output_dtypes(fn, inputs) if d != torch.float64]
    if low:
        detail += f"你的输出是 {low[0]}，不是 float64：{FLOAT32_HINT}（数值差分的步长 1e-6 在 float32 下全被舍入吃掉）。"
    require(False, f"{prefix}float64 gradcheck 失败——解析梯度与数值梯度不一致。{detail}\n"
                   "  常见原因：① forward 里有 .detach() 或 .data（梯度被切断）；② 原地修改（x += …）；"
                   "③ 计算在某处降到了 float32（x.float()、weight.float()、dtype=torch.float32 的中间张量）——"
                   "gradcheck 用 float64 做数值差分，float32 的舍入误差会让两种梯度对不上", section)


def impl_label(ns) -> str:
    return describe(ns._impl)
