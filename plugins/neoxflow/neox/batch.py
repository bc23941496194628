"""Batch arithmetic of GPT-NeoX: the data-parallel size of a cluster shape and the batch split over it.

Batch policy (decided here, documented for the DAG): ``train_batch_size`` is the *global* batch (Pythia:
1024 sequences) and is what defines the training; ``train_micro_batch_size_per_gpu`` in a size file is
the largest micro batch known to fit in GPU memory. For a cluster shape, :func:`derive_batch` keeps the
global batch, uses the largest micro batch <= that cap which divides the per-rank batch, and derives
``gradient_accumulation_steps``; a global batch that the data-parallel size does not divide is an error
(never silently a different batch). NeoX's rule then holds: ``train_batch_size == micro x GAS x dp`` with
``dp = nodes x gpus_per_node / (pipe_parallel_size x model_parallel_size)`` (sizes < 1 count as 1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neoxflow.neox.config_errors import ConfigError


def is_integer(value: Any) -> bool:
    """An int that is not a bool: YAML and JSON ``true`` is never a size or a count."""
    return isinstance(value, int) and not isinstance(value, bool)


def parallel_sizes(cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(pipe, model) parallel sizes as NeoX uses them for dp: values < 1 (NeoX's pipe 0) count as 1."""
    pipe = cfg.get("pipe_parallel_size", 0)
    model = cfg.get("model_parallel_size", 1)
    pipe = pipe if is_integer(pipe) and pipe >= 1 else 1
    model = model if is_integer(model) and model >= 1 else 1
    return pipe, model


def _shape_errors(nodes: Any, gpus_per_node: Any) -> list[ConfigError]:
    errors = []
    if not is_integer(nodes) or nodes < 1:
        errors.append(ConfigError("nodes", f"must be a positive integer, got {nodes!r}"))
    if not is_integer(gpus_per_node) or gpus_per_node < 1:
        errors.append(ConfigError("gpus_per_node", f"must be a positive integer, got {gpus_per_node!r}"))
    return errors


def data_parallel_size(
    cfg: Mapping[str, Any], nodes: int, gpus_per_node: int
) -> tuple[int | None, list[ConfigError]]:
    """``dp = nodes x gpus_per_node / (pipe x model parallel)``, or None plus the error when not whole."""
    errors = _shape_errors(nodes, gpus_per_node)
    if errors:
        return None, errors
    pipe, model = parallel_sizes(cfg)
    world = nodes * gpus_per_node
    if world % (pipe * model):
        return None, [
            ConfigError(
                "model_parallel_size",
                f"{nodes} nodes x {gpus_per_node} GPUs = {world} ranks is not divisible by "
                f"pipe_parallel_size x model_parallel_size = {pipe} x {model}: the data-parallel size "
                "must be a whole number",
            )
        ]
    return world // (pipe * model), []


def derive_batch(
    cfg: Mapping[str, Any], nodes: int, gpus_per_node: int
) -> tuple[dict[str, Any], list[ConfigError]]:
    """Fit micro batch and gradient accumulation to the cluster shape, keeping the global batch.

    Returns a new config and errors. Without ``train_batch_size`` the config is returned unchanged (NeoX
    then derives the global batch from micro x GAS x dp). See the module docstring for the policy.
    """
    out = dict(cfg)
    dp, errors = data_parallel_size(cfg, nodes, gpus_per_node)
    if dp is None:
        return out, errors
    total = cfg.get("train_batch_size")
    if total is None:
        return out, []
    cap = cfg.get("train_micro_batch_size_per_gpu")
    if not is_integer(total) or total < 1:
        return out, [ConfigError("train_batch_size", f"must be a positive integer, got {total!r}")]
    if not is_integer(cap) or cap < 1:
        return out, [
            ConfigError(
                "train_micro_batch_size_per_gpu", f"must be a positive integer (the cap), got {cap!r}"
            )
        ]
    if total % dp:
        return out, [
            ConfigError(
                "train_batch_size",
                f"global batch {total} is not divisible by the data-parallel size {dp} "
                f"({nodes} nodes x {gpus_per_node} GPUs / (pipe x model parallel)); choose a node count "
                "whose data-parallel size divides it, or change train_batch_size",
            )
        ]
    per_rank = total // dp
    micro = max(m for m in range(1, min(cap, per_rank) + 1) if per_rank % m == 0)
    out["train_micro_batch_size_per_gpu"] = micro
    out["gradient_accumulation_steps"] = per_rank // micro
    return out, []
