"""课程表即数据（rustlings 式）：模块、文件、公开名字、实验与提示都在这一个列表里。

`kata status / check / hint`、实现切换（kata.impl）、自检测试（tests/）都只读这里，
新增一个模块 = 在 MODULES 里加一项 + 放好 exercises/ solutions/ experiments/ 三个目录。
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Module:
    key: str                          # 目录名，例如 "01_normalization"
    title: str                        # 中文标题
    question: str                     # 核心问题
    tier: int
    files: dict[str, tuple[str, ...]]  # 练习文件名 -> 该文件导出的公开名字
    experiments: tuple[str, ...] = ()
    quickstart: tuple[tuple[str, ...], ...] = ()   # (实验脚本, 参数...)：kata quickstart 跑哪些
    hints: tuple[str, ...] = ()
    minutes: int = 60

    @property
    def number(self) -> str:
        return self.key.split("_", 1)[0]

    @property
    def public_names(self) -> tuple[str, ...]:
        return tuple(n for names in self.files.values() for n in names)


MODULES: tuple[Module, ...] = (
    Module(
        key="01_normalization",
        title="归一化 Normalization",
        question="为什么需要归一化？为什么是 RMSNorm？Pre-LN 还是 Post-LN？",
        tier=1,
        files={"rmsnorm.py": ("RMSNorm",)},
        experiments=(
            "exp1_gradient_vanishing.py",
            "exp2_norm_comparison.py",
            "exp3_prenorm_vs_postnorm.py",
        ),
        quickstart=(("exp1_gradient_vanishing.py",),),
        hints=(
            "RMSNorm 只做一件事：把最后一维的“均方根”缩放到 1，再乘上可学习的逐通道权重 weight。"
            "它不减均值、没有 bias。先读 teaching.md §2。",
            "均方根 = sqrt(mean(x², dim=-1, keepdim=True) + eps)。注意 eps 在 sqrt 里面，"
            "mean 沿最后一维（dim=-1），并且 keepdim=True 才能广播回 [..., dim]。",
            "torch.rsqrt(v) 就是 1/sqrt(v)。低精度输入（float16/bfloat16）要先升到 float32 再算"
            "（`x.to(torch.promote_types(x.dtype, torch.float32))`，float64 保持 float64），"
            "算完再 .type_as(x) 转回去——否则 float16 的 x² 会溢出（最大 65504）。",
            "参考骨架：`h = x.to(torch.promote_types(x.dtype, torch.float32))`，"
            "`normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)`，"
            "然后 `return self.weight.type_as(x) * normed.type_as(x)`（输出 dtype 必须与输入相同）。如果测试仍然失败，读失败信息里"
            "『你的输出与……一致』那一句，它指出了你踩中的常见错误。",
        ),
        minutes=60,
    ),
    Module(
        key="02_position_encoding",
        title="位置编码 Position Encoding",
        question="为什么选择 RoPE？如何实现长度外推？",
        tier=1,
        files={"rope.py": ("precompute_freqs_cis", "rotate_half", "apply_rotary_pos_emb",
                           "sinusoidal_position_encoding")},
        experiments=(
            "exp1_rope_basics.py",
            "exp2_rope_vs_absolute.py",
            "exp3_multi_frequency.py",
            "exp4_length_extrapolation.py",
        ),
        quickstart=(("exp2_rope_vs_absolute.py", "--quick"),),
        hints=(
            "RoPE 只做一件事：把 q、k 的每一对维度（第 i 维与第 i+D/2 维）按 m·θ_i 转一个角度，θ_i = rope_base^(−2i/D)。"
            "先写 precompute_freqs_cis：它只是一张 cos 表和一张 sin 表。读 teaching.md §2.2–§2.4。",
            "precompute_freqs_cis：freqs = 1/(rope_base ** (torch.arange(0, dim, 2)[:dim//2].float()/dim))；"
            "angles = torch.outer(torch.arange(end).float(), freqs)；cos = torch.cat([angles.cos(), angles.cos()], -1)，sin 同理。"
            "位置从 0 开始；表是拼两遍（half-split），不是 repeat_interleave。",
            "rotate_half(x)：h = x.shape[-1]//2，返回 torch.cat((-x[..., h:], x[..., :h]), -1)。apply_rotary_pos_emb："
            "cos = cos.unsqueeze(unsqueeze_dim)，q' = q*cos + rotate_half(q)*sin，k 同理，最后 .to(q.dtype) / .to(k.dtype)。"
            "正弦编码：pe[:, 0::2] = sin(pos·ω)、pe[:, 1::2] = cos(pos·ω)，ω_i = base^(−2i/dim)。",
            "YaRN：只有 rope_scaling 不为 None 且 end > original_max_position_embeddings 时才改 freqs。"
            "inv = lambda b: dim*math.log(L/(b*2*math.pi))/(2*math.log(rope_base))；low = max(math.floor(inv(beta_fast)), 0)；"
            "high = min(math.ceil(inv(beta_slow)), dim//2-1)；ramp = ((torch.arange(dim//2).float()-low)/max(high-low, 0.001)).clamp(0, 1)；"
            "freqs = freqs*(1-ramp+ramp/factor)；cos、sin 最后都乘 attention_factor。仍失败就读失败信息里『你的输出与……一致』那一句。",
        ),
        minutes=90,
    ),
    Module(
        key="03_attention",
        title="注意力 Attention",
        question="QKV 的直觉是什么？为什么需要多头？",
        tier=1,
        files={"attention.py": ("scaled_dot_product_attention", "repeat_kv", "Attention")},
        experiments=(
            "exp1_attention_basics.py",
            "exp2_why_scale.py",
            "exp3_multihead.py",
            "exp4_gqa.py",
        ),
        hints=(
            "先写 scaled_dot_product_attention：scores = q @ k.transpose(-2, -1) / √D（D = q.size(-1)），softmax 沿最后一维"
            "（key 轴），再乘 v。屏蔽用 masked_fill(~allowed, float('-inf'))，必须在 softmax 之前。先读 teaching.md §2。",
            "因果掩码对齐到最后一个 query：allowed = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device).tril(Sk - Sq)；"
            "有 attn_mask 时再 allowed & attn_mask。softmax 前把分数转成至少 float32（torch.promote_types(scores.dtype, torch.float32)），"
            "乘 v 前转回 v.dtype。整行都被屏蔽的 query：先把这一行的分数换成 0，softmax 后再把这一行清零（teaching.md §2.4）。",
            "repeat_kv：n_rep == 1 直接返回；否则 x[:, :, :, None, :].expand(B, S, KVH, n_rep, D).reshape(B, S, KVH * n_rep, D)"
            "（交错，等于 torch.repeat_interleave(x, n_rep, dim=2)）。Attention.__init__：head_dim = dim // n_heads，"
            "n_kv_heads 默认 n_heads，不能整除时抛 ValueError；q_proj/k_proj/v_proj/o_proj 都 bias=False，k/v 输出 n_kv_heads*head_dim；"
            "qk_norm 时 q_norm = k_norm = RMSNorm(head_dim, eps)；resid_dropout = nn.Dropout(dropout)。读 teaching.md §3、§4.1。",
            "forward 骨架：q = q_proj(x).view(B, S, H, D)，k、v 用 view(B, S, KVH, D)；qk_norm 时先 q_norm/k_norm；"
            "q, k = apply_rotary_pos_emb(q, k, cos, sin)；有 past 就 k = torch.cat([past[0], k], dim=1)（v 同理）；"
            "present = (k, v) if use_cache else None；q = q.transpose(1, 2)，k = repeat_kv(k, n_rep).transpose(1, 2)（v 同理）；"
            "mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]；"
            "out = scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=True).transpose(1, 2).reshape(B, S, -1)；"
            "return resid_dropout(o_proj(out)), present。仍失败时读失败信息里『你的输出与……一致』那一句。",
        ),
        minutes=120,
    ),
    Module(
        key="04_feedforward",
        title="前馈网络 FeedForward",
        question="FFN 存储了什么知识？为什么需要扩张？",
        tier=1,
        files={"feedforward.py": ("FeedForward",)},
        experiments=(
            "exp1_ffn_role.py",
            "exp2_activation_comparison.py",
            "exp3_expansion_ratio.py",
            "exp4_key_value_memory.py",
        ),
        hints=(
            "FeedForward 就三个没有 bias 的线性层：gate_proj、up_proj（dim → hidden）和 down_proj（hidden → dim），"
            "forward 是 down_proj(silu(gate_proj(x)) * up_proj(x))，最后过 dropout。先读 teaching.md §2.1–§2.2。",
            "默认宽度：hidden = int(8 * dim / 3)，再向上取整到 multiple_of 的倍数："
            "multiple_of * ((hidden + multiple_of - 1) // multiple_of)（dim=512 → 1408）。显式给了 hidden_dim 就原样照用，"
            "不要再取整。读 teaching.md §2.3。",
            "SiLU 只作用在 gate 分支上（F.silu(g)），up 分支不过激活；先逐元素相乘（*），再 down_proj。"
            "self.dropout = nn.Dropout(dropout)，作用在 down_proj 的输出上。仍失败时读失败信息里『你的输出与……一致』那一句。",
        ),
        minutes=60,
    ),
    Module(
        key="05_residual_connection",
        title="残差连接 Residual Connection",
        question="为什么需要残差连接？如何稳定梯度流？",
        tier=2,
        files={"residual.py": ("PreNormResidual", "PostNormResidual")},
        experiments=("exp1_with_vs_without.py", "exp2_depth_scaling.py"),
        quickstart=(("exp1_with_vs_without.py", "--quick"),),
        hints=(
            "PreNormResidual.forward 只有一行：return x + self.sublayer(self.norm(x))——只有送进子层的那一份被归一化，"
            "加回去的是原始的 x。先读 teaching.md §2.1。",
            "PostNormResidual.forward 也只有一行：return self.norm(x + self.sublayer(x))——子层吃没归一化的 x，"
            "相加之后再归一化。读 teaching.md §3.1、§3.4。",
            "一定要通过 self.norm 和 self.sublayer 调用（测试会把它们换掉来检查顺序），每个只调用一次；"
            "写 x + …，不要写 x += …，也不要 detach。测试不需要模块 01：它们会把 self.norm 换成已知正确的 RMSNorm。",
        ),
        minutes=60,
    ),
    Module(
        key="06_transformer_block",
        title="Transformer Block",
        question="如何编排组件顺序？为什么是这个顺序？",
        tier=2,
        files={"block.py": ("MiniMindBlock",),
               "model.py": ("MiniMindModel", "MiniMindForCausalLM")},
        experiments=("exp1_block_order.py", "exp2_component_ablation.py"),
        hints=(
            "先写块（block.py）。__init__ 按 config 建四个子模块：input_layernorm、self_attn、post_attention_layernorm、mlp；"
            "forward 就两行：h = x + self_attn(input_layernorm(x))，out = h + mlp(post_attention_layernorm(h))。先读 teaching.md §2。",
            "参数从 config 取：Attention(config.hidden_size, config.num_attention_heads, config.num_key_value_heads, "
            "dropout=config.dropout, qk_norm=config.qk_norm, eps=config.rms_norm_eps)；"
            "FeedForward(config.hidden_size, config.intermediate_size, dropout=config.dropout)。"
            "self_attn 返回 (out, present)，把 present 原样作为第二个返回值交出去；不要写 x += …（会改掉调用者的 x）。",
            "MiniMindModel：__init__ 建 embed_tokens、dropout、layers（第 i 个是 MiniMindBlock(i, config)）、norm；"
            "cos, sin = precompute_freqs_cis(config.head_dim, end=config.max_position_embeddings, rope_base=config.rope_theta, "
            "rope_scaling=config.rope_scaling)，register_buffer(..., persistent=False)。forward：start_pos = past_key_values[0][0].shape[1]"
            "（没有 cache 时 0），RoPE 表切 [start_pos:start_pos+S]，第 i 层拿第 i 层的 cache，最后 self.norm。",
            "MiniMindForCausalLM：self.model、self.lm_head = nn.Linear(h, V, bias=False)，共享时 "
            "self.model.embed_tokens.weight = self.lm_head.weight（方向别反）。forward：logits = lm_head(hidden)；"
            "loss = F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), labels[:, 1:].reshape(-1), ignore_index=-100)。",
            "generate 骨架：was = self.training; self.eval(); ids, past = input_ids, None；循环 max_new_tokens 次："
            "step = ids if past is None else ids[:, -1:]；out = self(step, past_key_values=past, use_cache=use_cache)；"
            "logits = out.logits[:, -1].float()；temperature<=0 取 argmax，否则 /T、top-k、top-p、multinomial；"
            "处理 eos；ids = cat；past = out.past_key_values if use_cache else None；最后 self.train(was)。"
            "测试失败时先读“逐层比对”那几行：它点名第一个算错的子模块。",
        ),
        minutes=90,
    ),
    Module(
        key="07_tokenizer",
        title="分词器 Tokenizer（byte-level BPE）",
        question="为什么是 byte-level BPE？词表大小换来了什么？",
        tier=3,
        files={"bpe.py": ("train_bpe", "BPETokenizer")},
        experiments=(
            "exp1_vocab_size.py",
            "exp2_chinese_vs_english.py",
            "exp3_training_speed.py",
        ),
        hints=(
            "先写 train_bpe 的最直白版本：vocab = {特殊 token…} + {k+b: bytes([b])}；用特殊 token 把文本切开，"
            "每段 split_words 切词，Counter 数词频，每个词变成单字节 bytes 的元组；然后循环：数所有相邻 pair（乘词频），"
            "best = max(pairs, key=lambda p: (pairs[p], p))——这一行同时写好了“次数最多、平局选字典序更大”。读 teaching.md §2.3。",
            "合并：在每个词里从左往右扫，遇到 (左, 右) 就换成 左+右、跳过两格；merges.append(best)；左+右 不在词表里才新增 id。"
            "循环条件是 len(vocab) < vocab_size（不是合并了多少次）。",
            "BPETokenizer.__init__：建 bytes → id（跳过特殊 token 的 id）和 rank = {(左 id, 右 id): (第几条, 合并后的 id)}。"
            "encode：特殊 token 先用 re.split('(' + '|'.join(map(re.escape, 按长度从长到短)) + ')') 整体切出来；"
            "每个词从单字节开始，反复找 rank 最小的相邻 pair 合并，直到没有可合并的。读 teaching.md §2.4、§2.6。",
            "decode：b''.join(vocab[i] for i in ids).decode('utf-8', errors='replace')——先拼字节、最后解码（teaching.md §2.5）。"
            "save/load：bytes 用 .hex() 存进 JSON，先写临时文件再 os.replace；from_hf_json：inv = {ch: b for b, ch in bytes_to_unicode().items()}，"
            "每个 token 字符串映射回 bytes，id 用文件里的，added_tokens 就是 special_tokens（teaching.md §2.7）。",
            "测试全绿了但 TinyShakespeare 上训练很慢？读 teaching.md §3：只更新含有被合并 pair 的那些词，"
            "pair 的次数用一个字典增量维护，最大值用堆（heapq）取。仍失败时读失败信息里『你的输出与……一致』那一句。",
        ),
        minutes=90,
    ),
    Module(
        key="08_training_loop",
        title="训练循环 Training Loop",
        question="交叉熵、AdamW、学习率调度、梯度裁剪、梯度累积、断点续训——每一步为什么这样写？",
        tier=3,
        files={"loss.py": ("cross_entropy",), "optim.py": ("AdamW",),
               "schedule.py": ("cosine_lr", "minimind_lr"), "clip.py": ("clip_grad_norm",),
               "step.py": ("train_step", "save_checkpoint", "load_checkpoint")},
        experiments=(
            "exp1_lr_and_warmup.py",
            "exp2_adamw_vs_adam_l2.py",
            "exp3_clipping.py",
            "exp4_accumulation_and_resume.py",
        ),
        hints=(
            "按文件顺序做：loss.py → optim.py → schedule.py → clip.py → step.py，每写完一个就跑它自己的测试"
            "（pytest exercises/08_training_loop/test_loss.py）。交叉熵 = logsumexp(x) − x[y]，logsumexp 先减每行最大值；"
            "被 ignore_index 标记的位置不进分子也不进分母，全部被忽略时返回 0。读 teaching.md §2.1–§2.2。",
            "AdamW.step：状态放在 self.state[p]（step、exp_avg、exp_avg_sq），t 先加一再用；"
            "p.mul_(1 − lr·wd) 直接缩参数（不要把 wd·p 加进梯度）；m.lerp_(g, 1−β1)；v.mul_(β2).addcmul_(g, g, value=1−β2)；"
            "denom = (v.sqrt() / math.sqrt(1−β2**t)).add_(eps)；p.addcdiv_(m, denom, value=−lr/(1−β1**t))。"
            "lr、betas、eps、weight_decay 每一步都从 group 里读。读 teaching.md §3.2–§3.4。",
            "cosine_lr：step < warmup → max_lr·(step+1)/warmup；step ≥ total → min_lr；其余 min + ½(1+cos πp)(max−min)。"
            "minimind_lr 照抄 lr·(0.1 + 0.45·(1 + cos(π·step/total)))。clip_grad_norm：先 list(parameters)，"
            "total = vector_norm(stack([vector_norm(g) for g in grads]))，coef = clamp(max_norm/(total+1e-6), max=1)，"
            "每个梯度乘 coef，返回 total。读 teaching.md §4 与 §5.1。",
            "train_step：loss = cross_entropy(logits, labels)；(loss / accum_steps).backward()；只在 micro_step == accum_steps−1 时"
            "设 lr → 裁剪 → optimizer.step() → zero_grad(set_to_none=True)。save_checkpoint：dict(model=…, optimizer=…, step=…, "
            "rng={torch, numpy（数组换成张量）, python}, **extra)，tempfile.mkstemp(dir=同目录) + torch.save + os.replace；"
            "load_checkpoint：torch.load(…, weights_only=True)，再恢复模型、优化器和三个随机数状态。读 teaching.md §6.1、§7.1–§7.2。",
        ),
        minutes=120,
    ),
    Module(
        key="09_pretrain",
        title="预训练 Pretrain",
        question="在 CPU（和多个进程）上从零预训练你自己的 MiniMind",
        tier=3,
        files={"pretrain.py": ("PretrainDataset", "evaluate", "setup_distributed", "cleanup_distributed",
                               "rank_batch", "all_reduce_mean", "pretrain")},
        experiments=(
            "exp1_scaling.py",
            "exp2_depth_vs_width.py",
            "exp3_batch_size.py",
            "exp4_precision.py",
        ),
        hints=(
            "先写 PretrainDataset：第 i 个样本取 ids[i*T : i*T + T + 1]，x = 前 T 个，y = 后 T 个（右移一位）；"
            "len = ceil((N − 1) / T)；最后一个样本不满时 x 补 pad_id、y 补 −100。读 teaching.md §2.1–§2.2。",
            "rank_batch：G = batch_size * world_size；位置 p 从 step*G + rank*batch_size 开始连续 batch_size 个；"
            "epoch, within = divmod(p, len(dataset))，perm = torch.randperm(len(dataset), generator=torch.Generator()"
            ".manual_seed(seed * 1_000_003 + epoch))，样本 = dataset[int(perm[within])]，最后 torch.stack。读 teaching.md §4.2。",
            "evaluate：rank, world = _world()；只评估下标 range(rank, n, world)；累加 F.cross_entropy(..., reduction='sum', "
            "ignore_index=-100)、非 −100 的个数、token_bytes[y[keep]].sum()（None 时等于个数）；"
            "_all_reduce_sum 之后 loss = nll / tokens，bpb = nll / math.log(2) / bytes；前后 model.eval() / model.train(was)。读 teaching.md §3.1–§3.2。",
            "setup_distributed：'RANK' not in os.environ → (0, 1, 'cuda' if torch.cuda.is_available() else 'cpu')；否则读 RANK、"
            "WORLD_SIZE、LOCAL_RANK，CUDA 时 nccl + torch.cuda.set_device(local_rank) + f'cuda:{local_rank}'，否则 gloo + 'cpu'，"
            "dist.init_process_group(backend=…, rank=…, world_size=…)。cleanup：dist.is_initialized() 时 destroy_process_group()。读 teaching.md §4.1。",
            "pretrain：world > 1 时 net = DistributedDataParallel(model)；每步 rank_batch → F.cross_entropy(logits.reshape(-1, V).float(), "
            "y.reshape(-1), ignore_index=-100) → zero_grad → backward（不要除以 world_size）→ step → losses.append(all_reduce_mean(loss.detach()))；"
            "最后只在 rank == 0 时 _atomic_save(model.state_dict(), Path(ckpt_path))。读 teaching.md §4.3–§4.4、§5。",
        ),
        minutes=120,
    ),
    Module(
        key="10_sft",
        title="监督微调 SFT",
        question="从续写到回答：对话模板、loss 掩码，和自己的模型聊天",
        tier=3,
        files={"sft.py": ("apply_chat_template", "SFTDataset")},
        experiments=(
            "exp1_loss_mask.py",
            "exp2_pretraining_matters.py",
            "exp3_epochs.py",
        ),
        hints=(
            "先写 apply_chat_template：每条消息渲染成 f\"<|im_start|>{role}\\n{content}<|im_end|>\\n\"，按顺序拼起来；"
            "add_generation_prompt=True 时末尾再加 ASSISTANT_HEADER（\"<|im_start|>assistant\\n\"）。没有系统提示就不加，"
            "内容原样放（不 strip）。用给好的 _checked_messages(messages) 拿 [(role, content), …]。读 teaching.md §2.1–§2.2。",
            "SFTDataset.__init__：max_length 不是 ≥ 1 的整数就 ValueError；每段对话先 _checked_messages 检查；"
            "pad_id = _single_id(tokenizer, ENDOFTEXT)；bos_id = tokenizer.encode(ASSISTANT_HEADER)、"
            "eos_id = tokenizer.encode(TURN_END)——都是 token 列表，不要写死 id。读 teaching.md §3.1。",
            "generate_labels（minimind 的规则）：i 从 0 扫到末尾；input_ids[i:i+len(bos)] == bos 时 start = end = i+len(bos)，"
            "end 往后走到 input_ids[end:end+len(eos)] == eos 或末尾；labels[start:min(end+len(eos), n)] = input_ids[同一段]；"
            "i 跳到那里。其余是 −100。labels 不移位（模型自己移）。读 teaching.md §3.2、§3.4。",
            "__getitem__：ids = tokenizer.encode(apply_chat_template(对话))[:max_length]；labels = generate_labels(ids)；"
            "然后 input_ids 补 pad_id、labels 补 −100 到 max_length，都转成 torch.long。先算掩码再补齐，padding 就永远不进 loss。"
            "仍失败时读失败信息里用 ⟦…⟧ 画出来的掩码和『你的输出与……一致』那一句。读 teaching.md §3.3。",
        ),
        minutes=90,
    ),
)


def get_module(ref: str) -> Module:
    """按编号（"01"、"1"）或目录名（"01_normalization"）找模块；找不到给出中文错误。"""
    ref = str(ref).strip().rstrip("/").split("/")[-1]
    for m in MODULES:
        if ref in (m.key, m.number) or (ref.isdigit() and int(ref) == int(m.number)):
            return m
    valid = "、".join(m.key for m in MODULES)
    raise ValueError(f"没有这个模块：{ref!r}。可用的模块：{valid}（也可以只写编号，如 01）")


def module_of_name(name: str) -> tuple[Module, str]:
    """公开名字（如 "RMSNorm"）属于哪个模块的哪个文件。"""
    for m in MODULES:
        for fname, names in m.files.items():
            if name in names:
                return m, fname
    raise AttributeError(name)
