"""Checks of a merged GPT-NeoX config: every problem NeoX would hit at start-up, named by key and why.

Why this exists: a NeoX job fails minutes after it starts (after hours in the queue) on config defects
that are cheap to see beforehand: an unknown key (``gas``), a batch size that does not factor over the
GPUs, several runs saving into one checkpoint folder, a vocab file that is not there, or ``1e-08`` that
PyYAML (NeoX reads every config file with YAML 1.1) keeps as a *string*. The DAG refuses to submit while
:func:`validate_config` returns errors (``neox/run_config.py`` runs it on every run's config).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neoxflow.neox.batch import data_parallel_size, is_integer, parallel_sizes
from neoxflow.neox.config_errors import ConfigError
from neoxflow.neox.config_files import join_key
from neoxflow.neox.precision import precision_problems

#: Keys NeoX used to accept and now rejects, with what to write instead.
REMOVED_KEYS: dict[str, str] = {
    "gas": "removed in GPT-NeoX PR #1144 (NeoX now fails with TypeError); use gradient_accumulation_steps",
}

MAX_SEQ_LENGTH = 1 << 20

_EXPONENT_NUMBER_STRING = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _walk(value: Any, where: str):
    yield where, value
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, join_key(where, str(key)))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _walk(item, f"{where}[{i}]")


def validate_config(
    cfg: Mapping[str, Any],
    nodes: int,
    gpus_per_node: int,
    check_vocab_file: bool = True,
    run_name: str | None = None,
) -> list[ConfigError]:
    """Every problem NeoX would hit at start-up (or that would hurt the run), as :class:`ConfigError` s.

    Checks: unknown and removed keys (``gas``); the batch rule ``train_batch_size = micro x GAS x dp``
    with a whole, positive dp; heads and hidden size divisible by model parallel, hidden by heads;
    attention_config covering num_layers; seq_length sane; checkpoint_factor <= train_iters; numbers
    that are strings (``"1e-08"``); precision, fp16 and bf16 as NeoX derives them (neox/precision.py);
    ZeRO stage vs pipeline; save/load set, absolute, equal and (with ``run_name``) the per-run folder;
    data path set; vocab file absolute and readable
    (``check_vocab_file=False`` where the Airflow side cannot see the cluster's file system).
    """
    errors: list[ConfigError] = []
    add = errors.append

    for key in cfg:
        norm = str(key).replace("-", "_")
        if norm in REMOVED_KEYS:
            add(ConfigError(str(key), REMOVED_KEYS[norm]))
        elif norm not in KNOWN_KEYS:
            close = difflib.get_close_matches(norm, KNOWN_KEYS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            add(ConfigError(str(key), f"unknown GPT-NeoX key (NeoX fails with TypeError on it){hint}"))

    for where, value in _walk(dict(cfg), ""):
        if isinstance(value, str) and _EXPONENT_NUMBER_STRING.match(value.strip()):
            add(ConfigError(where, f"{value!r} is a string that looks like a number; write it as a number"))
        if isinstance(value, float) and not math.isfinite(value):
            add(ConfigError(where, f"{value!r} is not a finite number"))

    def positive_int(key: str, required: bool = True) -> int | None:
        value = cfg.get(key)
        if value is None:
            if required:
                add(ConfigError(key, "is required"))
            return None
        if not is_integer(value) or value < 1:
            add(ConfigError(key, f"must be a positive integer, got {value!r}"))
            return None
        return value

    layers = positive_int("num_layers")
    hidden = positive_int("hidden_size")
    heads = positive_int("num_attention_heads")
    seq = positive_int("seq_length")
    max_pos = positive_int("max_position_embeddings", required=False)
    train_iters = positive_int("train_iters")
    factor = positive_int("checkpoint_factor")
    positive_int("log_interval", required=False)
    micro = positive_int("train_micro_batch_size_per_gpu")
    gas = positive_int("gradient_accumulation_steps", required=False)
    total = positive_int("train_batch_size", required=False)

    for key in ("pipe_parallel_size", "model_parallel_size"):
        value = cfg.get(key)
        if value is not None and (not is_integer(value) or value < 0):
            add(ConfigError(key, f"must be a non-negative integer, got {value!r}"))
    pipe, model = parallel_sizes(cfg)

    dp, shape_errors = data_parallel_size(cfg, nodes, gpus_per_node)
    errors.extend(shape_errors)
    if dp is not None and micro is not None:
        steps = gas if gas is not None else 1
        if total is not None and total != micro * steps * dp:
            add(
                ConfigError(
                    "train_batch_size",
                    f"{total} != train_micro_batch_size_per_gpu x gradient_accumulation_steps x dp = "
                    f"{micro} x {steps} x {dp} = {micro * steps * dp} (dp = {nodes} nodes x {gpus_per_node} "
                    f"GPUs / (pipe {pipe} x model {model}))",
                )
            )

    if hidden is not None and heads is not None and hidden % heads:
        add(ConfigError("hidden_size", f"{hidden} is not divisible by num_attention_heads {heads}"))
    if heads is not None and heads % model:
        add(ConfigError("num_attention_heads", f"{heads} is not divisible by model_parallel_size {model}"))
    if hidden is not None and hidden % model:
        add(ConfigError("hidden_size", f"{hidden} is not divisible by model_parallel_size {model}"))

    attention = cfg.get("attention_config")
    if attention is not None and layers is not None:
        covered = _attention_layers(attention)
        if covered is None:
            add(ConfigError("attention_config", 'must look like [[["flash"], num_layers], ...]'))
        elif covered != layers:
            add(ConfigError("attention_config", f"covers {covered} layers but num_layers is {layers}"))

    if seq is not None:
        if seq > MAX_SEQ_LENGTH:
            add(ConfigError("seq_length", f"{seq} is larger than {MAX_SEQ_LENGTH}"))
        if max_pos is not None and seq > max_pos:
            add(ConfigError("seq_length", f"{seq} is larger than max_position_embeddings {max_pos}"))
    rotary_pct = cfg.get("rotary_pct")
    if rotary_pct is not None and (not _is_number(rotary_pct) or not 0 < rotary_pct <= 1):
        add(ConfigError("rotary_pct", f"must be a number in (0, 1], got {rotary_pct!r}"))

    if factor is not None and train_iters is not None and factor > train_iters:
        add(
            ConfigError(
                "checkpoint_factor",
                f"{factor} is larger than train_iters {train_iters}: no checkpoint before the end",
            )
        )

    lr = _get(cfg, "optimizer.params.lr")
    if lr is not None and (not _is_number(lr) or lr <= 0):
        add(ConfigError("optimizer.params.lr", f"must be a positive number, got {lr!r}"))
    eps = _get(cfg, "optimizer.params.eps")
    if eps is not None and (not _is_number(eps) or eps <= 0):
        add(ConfigError("optimizer.params.eps", f"must be a positive number, got {eps!r}"))

    errors.extend(ConfigError(key, why) for key, why in precision_problems(cfg))  # neox/precision.py

    stage = _get(cfg, "zero_optimization.stage")
    if stage is not None:
        if not is_integer(stage) or not 0 <= stage <= 3:
            add(ConfigError("zero_optimization.stage", f"must be 0, 1, 2 or 3, got {stage!r}"))
        elif stage >= 2 and pipe > 1:
            add(
                ConfigError(
                    "zero_optimization.stage", f"ZeRO stage {stage} does not work with pipeline parallelism"
                )
            )

    errors.extend(_path_errors(cfg, check_vocab_file, run_name))
    return errors


def _attention_layers(attention: Any) -> int | None:
    if not isinstance(attention, list):
        return None
    total = 0
    for entry in attention:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], list)
            or not all(isinstance(t, str) for t in entry[0])
            or not is_integer(entry[1])
            or entry[1] < 1
        ):
            return None
        total += entry[1]
    return total


def _path_errors(cfg: Mapping[str, Any], check_vocab_file: bool, run_name: str | None) -> list[ConfigError]:
    errors: list[ConfigError] = []
    save, load = cfg.get("save"), cfg.get("load")
    for key, value in (("save", save), ("load", load)):
        if not value:
            errors.append(ConfigError(key, "is required: the per-run checkpoint folder (resume reads it)"))
        elif not isinstance(value, str) or not value.startswith("/"):
            errors.append(ConfigError(key, f"must be an absolute path, got {value!r}"))
    if save and load and save != load:
        errors.append(
            ConfigError(
                "load", f"{load!r} differs from save {save!r}: a resumed slice would not continue this run"
            )
        )
    if isinstance(save, str) and run_name is not None and Path(save).name != run_name:
        errors.append(
            ConfigError(
                "save", f"{save!r} is not this run's folder (must end in /{run_name}); runs must not share it"
            )
        )

    if not cfg.get("data_path") and not cfg.get("train_data_paths"):
        errors.append(ConfigError("data_path", "is required (or train_data_paths)"))

    vocab = cfg.get("vocab_file")
    if cfg.get("tokenizer_type", "GPT2BPETokenizer") in ("HFTokenizer", "GPT2BPETokenizer") and not vocab:
        errors.append(
            ConfigError("vocab_file", f"is required for tokenizer_type {cfg.get('tokenizer_type')!r}")
        )
    elif vocab:
        if not isinstance(vocab, str) or not vocab.startswith("/"):
            errors.append(ConfigError("vocab_file", f"must be an absolute path, got {vocab!r}"))
        elif check_vocab_file:
            try:
                with open(vocab, "rb") as handle:
                    if not handle.read(1):
                        errors.append(ConfigError("vocab_file", f"{vocab} is empty"))
            except OSError as exc:
                errors.append(ConfigError("vocab_file", f"{vocab} is not readable: {exc.strerror or exc}"))
    return errors


#: Every top-level key GPT-NeoX accepts: the names (only) of the dataclass fields of the ``NeoXArgs*``
#: classes in megatron/neox_arguments/neox_args.py and deepspeed_args.py at GPT-NeoX commit ea7aefd8
#: (read with ast). Regenerate when the NeoX image moves to another commit.
KNOWN_KEYS_NEOX_COMMIT = "ea7aefd8"
KNOWN_KEYS: frozenset[str] = frozenset(
    """
account activation activation_checkpointing adlr_autoresume adlr_autoresume_interval allow_chopped amp
apply_query_key_layer_scaling attention_config attention_dropout attention_softmax_in_fp32 autotuning
autotuning_run base_shapes_file batch_size bf16 bias_dropout_fusion bias_gelu_fusion char_level_ppl
checkpoint checkpoint_activations checkpoint_factor checkpoint_in_cpu checkpoint_num_layers
checkpoint_scale checkpoint_validation_with_forward_pass clip_grad comet_experiment
comet_experiment_name comet_others comet_project comet_tags comet_workspace comment comms_logger
communication_data_type compression_training config_files contiguous_checkpointing coord_check
csv_monitor curriculum_learning curriculum_seqlen data_efficiency data_impl data_path data_types
dataset_impl deepscale deepscale_config deepspeed deepspeed_activation_checkpointing
deepspeed_extra_args deepspeed_mpi deepspeed_slurm dim_att distributed_backend do_test do_train
do_valid dpo_beta dpo_fp32 dpo_reference_free dump_state dynamic_loss_scale elasticity eod_mask_loss
eval_interval eval_iters eval_results_prefix eval_tasks exclude exit_interval expansion_factor
extra_save_iters ffn_dim finetune flops_profiler force_multi fp16 fp16_lm_cross_entropy fp32_allreduce
fp32_reinforce fused_kernels_build_path git_hash global_num_gpus gmlp_attn_dim gpt_j_residual
gpt_j_tied gradient_accumulation_steps gradient_clipping gradient_noise_scale_cpu_offload
gradient_noise_scale_n_batches gradient_predivide_factor head_size hidden_dropout hidden_size hostfile
hysteresis include init_method init_method_std intermediate_size is_pipe_parallel iteration
keep_last_n_checkpoints kl_div_beta kl_impl kto_beta kto_desirable_weight kto_fp32
kto_undesirable_weight launcher layernorm_epsilon layernorm_fusion lazy_mpu_init load local_rank
log_dir log_grad_norm log_grad_pct_zeros log_gradient_noise_scale log_interval log_optimizer_states
log_param_norm loss_scale loss_scale_window lr lr_decay_fraction lr_decay_iters lr_decay_style
make_vocab_size_divisible_by mamba_causal_conv_fusion mamba_inner_func_fusion
mamba_selective_fp32_params mamba_selective_scan_fusion mamba_use_bias_in_conv
mamba_use_bias_in_linears master_addr master_port max_position_embeddings maximum_tokens
memory_profiling memory_profiling_path merge_file min_lr min_scale mlp_multiple_of mmap_warmup
model_parallel_size moe_expert_interval moe_jitter_eps moe_lbl_in_fp32 moe_num_experts moe_router_type
moe_top_k mup_attn_temp mup_embedding_mult mup_init_scale mup_output_temp mup_rp_embedding_mult
mup_width_scale neg_test_data_paths neg_test_label_data_paths neg_train_data_paths
neg_train_label_data_paths neg_valid_data_paths neg_valid_label_data_paths no_load_optim no_load_rng
no_save_optim no_save_rng no_ssh_check no_weight_tying norm num_attention_heads num_gpus num_kv_heads
num_layers num_nodes num_samples num_unique_layers num_workers online_dataserver_ips
online_dataserver_ports onnx_safe opt_pos_emb_offset optimizer optimizer_type output_layer_init_method
output_layer_parallelism override_lr_scheduler pack_impl padded_vocab_size param_sharing_style
partition_activations peak_theoretical_tflops pipe_parallel_size pipe_partition_method pos_emb
pos_test_data_paths pos_test_label_data_paths pos_train_data_paths pos_train_label_data_paths
pos_valid_data_paths pos_valid_label_data_paths precision precompute_model_name prescale_gradients
profile profile_backward profile_step_start profile_step_stop prompt_end rank recompute
reinforce_leave_one_out return_logits rms_norm_epsilon rmsnorm_fusion rope_fusion rotary_emb_base
rotary_pct rotary_save_freqs_buffer rpe_max_distance rpe_num_buckets s3_chunk_size s3_path
sample_input_file sample_output_file save save_base_shapes scaled_masked_softmax_fusion
scaled_upper_triang_masked_softmax_fusion scalenorm_epsilon scheduler seed seq_length sequence_parallel
serve_model_weights short_seq_prob sliding_window_width soft_prompt_tuning sparse_attention
sparse_gradients sparsity_config split steps_per_print synchronize_each_layer te_columnparallel
te_fp8_amax_compute_algo te_fp8_amax_history_len te_fp8_format te_fp8_margin te_fp8_mha te_fp8_wgrad
te_layernorm_mlp te_mha te_rowparallel temperature tensorboard tensorboard_dir test_data_paths
test_data_weights test_label_data_paths test_reward_data_paths text_gen_type tokenizer_type top_k top_p
train_batch_size train_data_paths train_data_weights train_epochs train_impl train_iters
train_label_data_paths train_micro_batch_size_per_gpu train_reward_data_paths use_bias_in_attn_linear
use_bias_in_mlp use_bias_in_norms use_bnb_optimizer use_checkpoint_lr_scheduler use_comet
use_cpu_initialization use_flashattn_swiglu use_mup use_qk_layernorm use_shared_fs use_wandb
user_script valid_data_paths valid_data_weights valid_label_data_paths valid_reward_data_paths
vocab_file wall_clock_breakdown wandb wandb_group wandb_host wandb_init_all_ranks wandb_project
wandb_run_name wandb_team warmup weight_by_num_documents weight_decay weight_server_port
weighted_sampler_alpha world_size z_loss zero_allgather_bucket_size zero_contiguous_gradients
zero_optimization zero_reduce_bucket_size zero_reduce_scatter zero_stage
""".split()
)
