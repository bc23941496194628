"""The run of record: what a ``run_name`` trains, written by its first plan, the start of every later one.

A Pythia run lives through dozens of DAG runs (time-limit slices, retries, continuations, people
re-triggering it). Each of them must train *the same model*: resuming a checkpoint on another dataset or
under another LR schedule gives a model nobody asked for, silently. So the first plan of a run writes a
record beside its checkpoint folder (``<checkpoint_dir>.record.json`` on FSx, next to the run's
``.lock``, outside the folder NeoX owns; a copy in S3), in two parts:

- ``fixed``: what defines the model that comes out: the rendered NeoX config less the keys that only
  decide *how* a slice runs (below), plus the model size and the dataset (its id, and the shard names,
  source, tokenizer and preprocessing options it is built from). Hashed; a later plan whose fixed
  part differs is refused, naming each field with the recorded and the new value, before anything is
  submitted.
- ``request``: the form values the run was planned with. A later plan (the scheduled continuation plans
  from the form's defaults) takes every field its form left blank from here, so it continues the run as
  itself; per-slice fields (nodes, GPUs per node, time limit, checkpoint interval) may be changed.

The record is created at most once: uploaded under a temporary name, then hard-linked to its final name,
which fails when the name exists (atomic on POSIX and on Lustre), so two first plans racing each other
end with one record, and the loser compares against it.

Pure: builders for the record and the shell commands; ``pipeline/record_tasks.py`` runs them.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neoxflow.slurm.validate import check_remote_path

RECORD_NAME = "run-record.json"  # its name in S3, under <prefix>/runs/<run>/
RECORD_SUFFIX = ".record.json"  # on FSx: <checkpoints>/<run>.record.json
VERSION = 1
#: Form fields kept in the record; a blank field of a later form takes the recorded value.
REQUEST_FIELDS = (
    "profile",
    "model_size",
    "shards",
    "shard_url_template",
    "train_iters",
    "checkpoint_interval",
    "nodes",
    "gpus_per_node",
    "time_limit",
)
#: NeoX config keys that decide how one slice runs, not what model comes out: the shape and batch split
#: (the global batch stays fixed), memory and kernel choices that leave the mathematics unchanged,
#: checkpoint and logging cadence, and the paths (the dataset is fixed by its own identity below).
PER_SLICE_KEYS = frozenset(
    {
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "checkpoint_activations",
        "checkpoint_num_layers",
        "partition_activations",
        "synchronize_each_layer",
        "attention_config",
        "scaled_upper_triang_masked_softmax_fusion",
        "scaled_masked_softmax_fusion",  # the plan fits the fused options to the image (neox/image.py)
        "rope_fusion",
        "bias_gelu_fusion",
        "checkpoint_factor",
        "extra_save_iters",
        "exit_interval",
        "eval_interval",
        "eval_iters",
        "log_interval",
        "steps_per_print",
        "wall_clock_breakdown",
        "peak_theoretical_tflops",
        "num_workers",
        "distributed_backend",
        "data_path",
        "vocab_file",
        "log_dir",
        "save",
        "load",
        "hostfile",
        "launcher",
        "deepspeed_slurm",
        "num_gpus",
        "global_num_gpus",
        "tensorboard_dir",
        "use_wandb",
        "wandb_project",
        "wandb_group",
    }
)


class RecordMismatch(ValueError):
    """A plan would change what the run of record trains; ``changes`` is [(field, recorded, new)]."""

    def __init__(self, run_name: str, changes: list[tuple[str, Any, Any]]):
        self.changes = changes
        listed = "; ".join(f"{field}: recorded {old!r}, now {new!r}" for field, old, new in changes)
        super().__init__(
            f"run {run_name!r} has a run of record and this plan would train another model ({listed}). "
            "Trigger it with the recorded values (or leave those fields blank), or choose a new run_name."
        )


@dataclass(frozen=True)
class RunRecord:
    run_name: str
    fixed: dict[str, Any]
    request: dict[str, Any]

    @property
    def fixed_hash(self) -> str:
        return hashlib.sha256(_canonical(self.fixed).encode()).hexdigest()[:16]

    def to_json(self) -> str:
        body = {
            "version": VERSION,
            "run_name": self.run_name,
            "fixed_hash": self.fixed_hash,
            "fixed": self.fixed,
            "request": self.request,
        }
        return json.dumps(body, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RunRecord:
        body = json.loads(text)
        if not isinstance(body, dict) or body.get("version") != VERSION:
            raise ValueError(f"run record: unknown format (version {body.get('version')!r})")
        record = cls(body["run_name"], body["fixed"], body["request"])
        if record.fixed_hash != body.get("fixed_hash"):
            raise ValueError("run record: its fixed part does not match its hash (edited by hand?)")
        return record


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def fixed_part(*, model_size: str, neox_config: Mapping[str, Any], dataset: Mapping[str, Any]) -> dict:
    """What defines the trained model: every config key not known to be per-slice, and the dataset (its
    id, and what it is built from: shards, source, tokenizer, preprocessing options)."""
    return {
        "model_size": model_size,
        "neox": {k: v for k, v in sorted(neox_config.items()) if k not in PER_SLICE_KEYS},
        "dataset": {k: v for k, v in sorted(dataset.items()) if k not in ("tokens_id", "train_indices")},
    }


def differences(recorded: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[tuple]:
    """Every leaf that differs, by dotted field name (``neox.train_iters``)."""
    changes: list[tuple[str, Any, Any]] = []
    for key in sorted(set(recorded) | set(new)):
        field = f"{prefix}{key}"
        old, cur = recorded.get(key), new.get(key)
        if isinstance(old, Mapping) and isinstance(cur, Mapping):
            changes += differences(old, cur, field + ".")
        elif _canonical(old) != _canonical(cur):
            changes.append((field, old, cur))
    return changes


def check_against(recorded: RunRecord, planned: RunRecord) -> None:
    """Refuse a plan whose fixed part differs from the record's."""
    changes = differences(recorded.fixed, planned.fixed)
    if changes:
        raise RecordMismatch(recorded.run_name, changes)


def merge_form(form: Mapping[str, Any], recorded: RunRecord | None) -> dict[str, Any]:
    """The form, with each blank field taken from the record: a later plan continues the run as itself."""
    merged = dict(form)
    if recorded is None:
        return merged
    for name in REQUEST_FIELDS:
        if merged.get(name) in (None, "") and recorded.request.get(name) not in (None, ""):
            merged[name] = recorded.request[name]
    return merged


# --- where it lives, and the commands that read and create it ---------------------------------------------
def record_path(checkpoint_dir: str) -> str:
    return check_remote_path(checkpoint_dir, "checkpoint_dir").rstrip("/") + RECORD_SUFFIX


def read_command(path: str) -> str:
    """Prints the record, or nothing (exit 0) when there is none yet."""
    p = shlex.quote(check_remote_path(path, "record"))
    return f"if [ -f {p} ]; then cat {p}; fi"


def create_command(staged: str, path: str) -> str:
    """Link the uploaded record to its name unless one exists: prints ``created`` or ``exists``."""
    s = shlex.quote(check_remote_path(staged, "staged record"))
    p = shlex.quote(check_remote_path(path, "record"))
    return f"if ln {s} {p} 2>/dev/null; then echo created; else echo exists; fi; rm -f {s}"


def record_from_plan(plan: Mapping[str, Any], form: Mapping[str, Any]) -> RunRecord:
    """The record this plan would write: its fixed part, and the form values it was planned with (the
    effective ones where the profile filled a blank: a continuation must not pick up a changed default)."""
    import yaml  # NeoX reads its config with PyYAML: compare what it will see

    from neoxflow.pipeline.plan import dataset_selection

    cfg = plan["config"]
    neox = yaml.safe_load(cfg["rendered"])
    # the record names every shard (the plan carries the compact selection only: it stays small)
    dataset = {**plan["dataset"], "shards": dataset_selection(plan["dataset"]).names()}
    request = {
        "profile": plan["profile"],
        "model_size": cfg["size"],
        "shards": plan["dataset"]["shards"],
        "shard_url_template": form.get("shard_url_template") or None,
        "train_iters": neox.get("train_iters"),
        "checkpoint_interval": neox.get("checkpoint_factor"),
        "nodes": cfg["nodes"],
        "gpus_per_node": cfg["gpus_per_node"],
        "time_limit": form.get("time_limit") or None,
    }
    fixed = fixed_part(model_size=cfg["size"], neox_config=neox, dataset=dataset)
    return RunRecord(plan["run_name"], fixed, request)
