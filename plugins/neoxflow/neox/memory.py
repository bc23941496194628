"""Memory per GPU of one NeoX run, and the activation-recompute choice it decides (issue 21).

Why this exists: activation recomputation (``checkpoint_activations``) trades a second forward pass for
memory. Pythia's configs turn it on for every size from 70M up, which on one H200 cost 1.34x in tokens/s
for 160M although the run fitted without it. The plan therefore estimates the memory per GPU with and
without recomputation and turns it (with ``partition_activations`` and ``synchronize_each_layer``, which
only serve it) off when the estimate fits the profile's ``cluster.gpu_memory_gib`` with a stated margin.
Recomputation does not change the mathematics of training, only memory and time.

The estimate (bytes per GPU, ``psi`` = parameters per GPU = parameters / (model x pipe parallel)):

* parameters ``P = 12 L h^2 + 13 L h + V h (x2 untied) + 2 h`` (GPT-NeoX layer: QKV, dense, 4h MLP, two
  layer norms; embedding, untied output layer, final norm); ``V`` is the vocabulary padded to
  ``make_vocab_size_divisible_by`` x model parallel (50277 tokens of the 20B tokenizer -> 50304).
* model states, DeepSpeed's accounting (ZeRO paper, Rajbhandari et al. 2020): 16-bit weights ``2 psi`` and
  gradients ``2 psi``, fp32 master weights and Adam moments ``12 psi``; ZeRO 1 shards the 12, ZeRO 2 also
  the gradients, ZeRO 3 everything over the data-parallel ranks. bf16 adds DeepSpeed's fp32 gradient
  accumulation (``4 psi``, sharded). fp32 training: ``4 + 4 + 8`` bytes, sharded the same way. ZeRO 1/2
  with ``contiguous_gradients`` allocate ``reduce_bucket_size`` 16-bit elements at every backward, twice
  with ``overlap_comm`` (DeepSpeed's ``ipg_buffer``: 2 GB at Pythia's 5e8).
* activations of one layer for one micro batch (Korthikanti et al. 2022, "Reducing Activation Recomputation
  in Large Transformer Models", 16-bit): ``s b h (10 + 24/t) + c a s^2 b / t`` bytes (``t`` = model
  parallel), ``c`` = 5 (scores, dropout mask, dropout output) with attention dropout and 2 (the softmax
  output only: torch's dropout at p = 0 returns its input) without; flash attention keeps no scores
  (``c`` = 0). fp32 doubles everything.
* the logits: the pipeline engine keeps the 16-bit output (``2`` bytes an element of ``s b V / t``), NeoX's
  cross entropy saves an fp32 softmax (``4``), and its backward makes the 16-bit gradient (``2``): 8 bytes
  at the start of the backward pass.
* without recomputation, the peak is model states + buffers + every layer's activations + the logits;
  with full recomputation (``checkpoint_num_layers`` 1), each layer keeps only its input (``2 s b h``,
  divided by ``t`` with ``partition_activations``), and the peak adds the larger of the logits and one
  layer recomputed for its backward (its activations twice: saved tensors and their gradients) beside
  the kept 16-bit logits.
* pipeline parallel (> 1 stage): a stage holds its ``L / pp`` layers for up to ``pp`` micro batches in
  flight (1F1B), and the estimate counts the logits on it too (conservative).

It fits when the estimate is at most ``1 - MEMORY_MARGIN`` of the GPU's memory: the rest is left for the
estimate's error, the CUDA context, cuBLAS/NCCL workspaces and the caching allocator's fragmentation.
When it does not fit at the derived micro batch, the largest smaller micro batch that divides the per-rank
batch (same global batch, more accumulation steps) and still holds ``MIN_MICRO_TOKENS`` tokens is tried
without recomputation; only when none fits does recomputation stay on. On one H200 (gpu_check, 2026-12-03)
the estimate was 0.4 % to 4 % above torch's ``max_memory_allocated`` for 160M and 410M, with and without
recomputation (tests/unit/test_gpu_fixtures.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

#: the share of the GPU's memory the estimate may not use (workspaces, fragmentation, estimate error)
MEMORY_MARGIN = 0.15
#: the GPT-NeoX-20B tokenizer every profile uses (NeoX pads it to make_vocab_size_divisible_by)
TOKENIZER_VOCAB = 50277
#: values of the profile key ``neox.recompute``
RECOMPUTE_MODES = ("auto", "on", "off")
#: the NeoX keys the choice sets: the two partners only serve recomputation
RECOMPUTE_KEYS = ("checkpoint_activations", "partition_activations", "synchronize_each_layer")
GIB = 1024**3
#: the smallest micro batch (in tokens) the plan trades recomputation for: below it the GEMMs get small
#: enough that recomputing at the larger micro batch may be the faster of the two
MIN_MICRO_TOKENS = 8192


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, by part (``activations_*`` for the whole micro batch over the GPU's layers)."""

    parameters: int  # the whole model's parameter count
    model_states: int
    buffers: int
    activations_full: int  # every layer's activations kept (no recomputation) plus the logits
    activations_recompute: int  # layer inputs kept, one layer recomputed, plus the logits

    @property
    def without_recompute(self) -> int:
        return self.model_states + self.buffers + self.activations_full

    @property
    def with_recompute(self) -> int:
        return self.model_states + self.buffers + self.activations_recompute


@dataclass(frozen=True)
class RecomputeChoice:
    """What the plan chose for ``RECOMPUTE_KEYS`` and why (shown by the plan and the dry run)."""

    mode: str  # the profile's neox.recompute
    recompute: bool
    reason: str
    estimate_gib: dict[str, float] | None = None  # without / with recomputation, capacity, usable
    set_keys: dict[str, bool] | None = None  # what the choice merged into the config (None: nothing)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _precision_bytes(cfg: Mapping[str, Any]) -> tuple[int, bool]:
    """(bytes of one weight/activation element, bf16?) as NeoX reads the precision."""
    precision = cfg.get("precision")
    fp16 = cfg.get("fp16")
    bf16 = cfg.get("bf16")
    if precision == "bfloat16" or (isinstance(bf16, Mapping) and bf16.get("enabled")):
        return 2, True
    if precision == "fp16" or (isinstance(fp16, Mapping) and fp16.get("enabled", True) and fp16):
        return 2, False
    return 4, False


def _uses_flash(cfg: Mapping[str, Any]) -> bool:
    attention = cfg.get("attention_config") or []
    try:
        kinds = {kind for entry in attention for kind in entry[0]}
    except (TypeError, IndexError):
        return False
    return bool(kinds) and all("flash" in str(kind) for kind in kinds)


def padded_vocab(cfg: Mapping[str, Any], vocab: int = TOKENIZER_VOCAB) -> int:
    """NeoX's padded vocabulary: a multiple of make_vocab_size_divisible_by x model parallel."""
    multiple = int(cfg.get("make_vocab_size_divisible_by") or 128) * _int(cfg, "model_parallel_size", 1)
    return -(-vocab // multiple) * multiple


def _int(cfg: Mapping[str, Any], key: str, default: int) -> int:
    value = cfg.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else default


def parameter_count(cfg: Mapping[str, Any], vocab: int = TOKENIZER_VOCAB) -> int:
    """The model's parameters (12 L h^2 + 13 L h + embedding, untied output layer, final norm)."""
    layers, h = int(cfg["num_layers"]), int(cfg["hidden_size"])
    tied = not cfg.get("no_weight_tying", False)
    return 12 * layers * h * h + 13 * layers * h + padded_vocab(cfg, vocab) * h * (1 if tied else 2) + 2 * h


def estimate_memory(
    cfg: Mapping[str, Any], data_parallel: int, vocab: int = TOKENIZER_VOCAB
) -> MemoryEstimate:
    """Bytes per GPU of ``cfg`` (a merged NeoX config after the batch fit) at ``data_parallel`` ranks."""
    elem, bf16 = _precision_bytes(cfg)
    mp = _int(cfg, "model_parallel_size", 1)
    pp = _int(cfg, "pipe_parallel_size", 1)
    dp = max(1, data_parallel)
    params = parameter_count(cfg, vocab)
    psi = params / (mp * pp)

    zero = cfg.get("zero_optimization") or {}
    configured_stage = stage = int(zero.get("stage", 0) or 0)
    if elem == 2:
        weights, grads, optim = 2 * psi, 2 * psi, 12 * psi + (4 * psi if bf16 else 0)
        if bf16 and stage == 0:
            stage = 1  # DeepSpeed's BF16_Optimizer shards its fp32 state at stage 0
    else:
        weights, grads, optim = 4 * psi, 4 * psi, 8 * psi
    if stage >= 1:
        optim /= dp
    if stage >= 2:
        grads /= dp
    if stage >= 3:
        weights /= dp
    buffers = 0
    if configured_stage in (1, 2) and zero.get("contiguous_gradients"):  # the ZeRO optimizer's buckets
        copies = 2 if zero.get("overlap_comm") else 1
        buffers = copies * int(zero.get("reduce_bucket_size", 500_000_000)) * elem

    layers, h = int(cfg["num_layers"]), int(cfg["hidden_size"])
    heads, s = int(cfg["num_attention_heads"]), int(cfg["seq_length"])
    b = int(cfg.get("train_micro_batch_size_per_gpu") or 1)
    scale = elem / 2  # the byte counts below are for 16-bit
    if _uses_flash(cfg):
        scores = 0
    else:
        scores = 5 if (cfg.get("attention_dropout") or 0) > 0 else 2
    layer = scale * (s * b * h * (10 + 24 / mp) + scores * heads * s * s * b / mp)
    kept_input = scale * 2 * s * b * h / (mp if cfg.get("partition_activations") else 1)
    logits_elems = s * b * padded_vocab(cfg, vocab) / mp
    logits_peak = 8 * logits_elems
    logits_kept = 2 * logits_elems
    in_flight = pp if pp > 1 else 1
    stage_layers = layers / pp
    full = in_flight * stage_layers * layer + logits_peak
    recompute = in_flight * stage_layers * kept_input + max(logits_peak, logits_kept + 2 * layer)
    return MemoryEstimate(
        parameters=params,
        model_states=round(weights + grads + optim),
        buffers=buffers,
        activations_full=round(full),
        activations_recompute=round(recompute),
    )


def choose_recompute(
    cfg: Mapping[str, Any],
    *,
    mode: str,
    gpu_memory_gib: float | None,
    data_parallel: int | None,
    explicit: frozenset[str] | set[str] = frozenset(),
) -> RecomputeChoice:
    """Recompute or not, and why. ``explicit``: config keys a profile or run override set by name, which
    always win (the choice then only reports). ``mode`` 'on'/'off' forces; 'auto' compares the estimate to
    ``gpu_memory_gib`` (unknown memory or shape: the config's own setting stands)."""
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"neox.recompute must be one of {', '.join(RECOMPUTE_MODES)}, got {mode!r}")
    current = bool(cfg.get("checkpoint_activations"))
    overridden = sorted(set(RECOMPUTE_KEYS) & set(explicit))
    if overridden:
        return RecomputeChoice(
            mode, current, f"{', '.join(overridden)} set by an override: the plan leaves recomputation as set"
        )
    if mode in ("on", "off"):
        want = mode == "on"
        return RecomputeChoice(
            mode,
            want,
            f"forced {mode} by the profile's neox.recompute",
            set_keys=_keys(want, current),
        )
    if not gpu_memory_gib or data_parallel is None:
        why = "no cluster.gpu_memory_gib in the profile" if not gpu_memory_gib else "no valid cluster shape"
        return RecomputeChoice(mode, current, f"{why}: the size file's setting stands")
    est = estimate_memory(cfg, data_parallel)
    usable = gpu_memory_gib * (1 - MEMORY_MARGIN)
    gib = {
        "without_recompute": round(est.without_recompute / GIB, 2),
        "with_recompute": round(est.with_recompute / GIB, 2),
        "gpu_memory": float(gpu_memory_gib),
        "usable": round(usable, 2),
    }
    fits = est.without_recompute / GIB <= usable
    micro = cfg.get("train_micro_batch_size_per_gpu")
    head = (
        f"estimated {gib['without_recompute']} GiB per GPU without recomputation "
        f"({gib['with_recompute']} GiB with) at micro batch {micro}, against {usable:.1f} GiB usable "
        f"({gpu_memory_gib:g} GiB less {MEMORY_MARGIN:.0%} margin)"
    )
    if fits:
        return RecomputeChoice(mode, False, f"{head}: fits, recomputation off", gib, _keys(False, current))
    smaller = _smaller_micro_batch(cfg, data_parallel, usable)
    if smaller is not None:
        m, gas, bytes_ = smaller
        gib["without_recompute_smaller_micro"] = round(bytes_ / GIB, 2)
        keys = {**(_keys(False, current) or {}), "train_micro_batch_size_per_gpu": m}
        keys["gradient_accumulation_steps"] = gas
        return RecomputeChoice(
            mode,
            False,
            f"{head}: does not fit; at micro batch {m} x {gas} accumulation steps (same global batch) "
            f"{gib['without_recompute_smaller_micro']} GiB fits, recomputation off",
            gib,
            keys,
        )
    tail = "" if est.with_recompute / GIB <= usable else "; even with it the estimate does not fit"
    return RecomputeChoice(
        mode, True, f"{head}: does not fit, recomputation on{tail}", gib, _keys(True, current)
    )


def _smaller_micro_batch(
    cfg: Mapping[str, Any], data_parallel: int, usable_gib: float
) -> tuple[int, int, int] | None:
    """The largest smaller micro batch (dividing the per-rank batch, at least ``MIN_MICRO_TOKENS`` tokens)
    that fits without recomputation: (micro, accumulation steps, bytes), or None."""
    micro = cfg.get("train_micro_batch_size_per_gpu")
    gas = cfg.get("gradient_accumulation_steps") or 1
    if not isinstance(micro, int) or not isinstance(gas, int):
        return None
    per_rank = micro * gas
    seq = int(cfg["seq_length"])
    for m in range(micro - 1, 0, -1):
        if per_rank % m or m * seq < MIN_MICRO_TOKENS:
            continue
        trial = {**cfg, "train_micro_batch_size_per_gpu": m, "checkpoint_activations": False}
        need = estimate_memory(trial, data_parallel).without_recompute
        if need / GIB <= usable_gib:
            return m, per_rank // m, need
    return None


def _keys(recompute: bool, current: bool) -> dict[str, bool] | None:
    """The keys to merge (None: the config already says so, and stays byte for byte). Off clears the two
    partners too; on (when the config had it off) turns on recomputation only."""
    if recompute == current:
        return None
    return {"checkpoint_activations": True} if recompute else dict.fromkeys(RECOMPUTE_KEYS, False)
