"""Which NeoX checkpoints are complete, and what `latest` must say before a resume.

NeoX (DeepSpeed underneath) writes checkpoint files in place, rank by rank, and rank 0 writes
``latest`` before the other ranks finish; a job killed mid-save leaves a tag folder that looks
plausible and a ``latest`` pointing at it. Loading it crashes the next attempt or, worse, resumes
from garbage. So a checkpoint is judged by its files, never by ``latest`` (neox.md "Checkpoints"):

- the tag folder ``global_stepN`` exists and ``configs/`` inside it holds at least one file
  (NeoX writes it last, after the final barrier);
- ``mp_rank_XX_model_states.pt`` exists for every model rank;
- with ZeRO stage >= 1 (or bf16, whose optimizer shards the same way) one optimizer shard
  ``[bf16_]zero_pp_rank_{dp}_mp_rank_{XX}_optim_states.pt`` exists for every data-parallel rank
  and every model rank;
- under the pipeline engine (``pipe_parallel_size >= 1``) the per-layer files
  ``layer_{i:02d}-model_{tp:02d}-model_states.pt`` exist for every tensor-parallel rank.

Under the pipeline engine DeepSpeed's "model rank" spans pipeline stages x tensor ranks, so the
model-state and optimizer files count ``pipe x model_parallel`` model ranks; layer files are named
by the tensor rank only. An expected file of 0 bytes counts as missing (a save that has just begun).

The input is the listing printed by include/cluster/ckpt_listing.py (one SSH call for the whole
folder); `scan_local` builds the same listing for a folder on this machine.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from neoxflow.neox.precision import neox_precision
from neoxflow.paths import CLUSTER_CODE

__all__ = [
    "Checkpoint",
    "Expectation",
    "ResumePlan",
    "check_tag",
    "complete_checkpoints",
    "latest_complete",
    "partial_checkpoints",
    "resume_latest_file_content",
    "resume_plan",
    "scan_local",
    "tag_iteration",
]

LISTING_FORMAT = 1
#: Precision as written by NeoX (``bfloat16``) or DeepSpeed (``bf16``) -> the name the layout rule uses.
PRECISION_SPELLINGS = {"fp16": "fp16", "fp32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}
_TAG = re.compile(r"^global_step(\d+)$")
_LAYER = re.compile(r"^layer_(\d+)-model_(\d+)-model_states\.pt$")


def tag_iteration(tag: str) -> int:
    """``global_step60`` -> 60; anything else is not a NeoX tag and is named in the error."""
    m = _TAG.match(tag)
    if not m:
        raise ValueError(f"checkpoint tag {tag!r} is not of the form global_stepN")
    return int(m.group(1))


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint: its iteration, tag, full path, and total bytes (for export checks)."""

    iteration: int
    tag: str
    path: str
    size_bytes: int = 0


@dataclass(frozen=True)
class Expectation:
    """What a complete checkpoint of this run must contain; built from the run's merged config.

    :param model_parallel: NeoX ``model_parallel_size`` (tensor parallel ranks).
    :param pipe_parallel: NeoX ``pipe_parallel_size``; 0 = no pipeline engine (no layer files),
        >= 1 = pipeline engine (NeoX's default for Pythia, even with one stage).
    :param data_parallel: world_size / (max(pipe, 1) x model_parallel).
    :param zero_stage: ``zero_optimization.stage``; >= 1 means optimizer shards per dp rank.
    :param precision: ``fp16``, ``bf16`` or ``fp32``; bf16 shards its optimizer like ZeRO. NeoX's own
        spelling ``bfloat16`` (its ``precision`` field) is taken as ``bf16``, DeepSpeed's (the
        ``bf16_`` file prefix).
    :param num_layers: when given (pipeline engine only), the exact layer-file indices are required
        (GPT2ModelPipe layout: 0 embedding, 2..L+1 transformer layers, L+3 final norm, L+4 output
        layer when ``no_weight_tying``); when None, every tensor rank must have the same non-empty set.
    :param no_weight_tying: NeoX ``no_weight_tying`` (an untied output layer has its own file).
    """

    model_parallel: int = 1
    pipe_parallel: int = 0
    data_parallel: int = 1
    zero_stage: int = 0
    precision: str = "fp32"
    num_layers: int | None = None
    no_weight_tying: bool = False

    def __post_init__(self) -> None:
        for name in ("model_parallel", "data_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expectation.{name} must be >= 1, got {getattr(self, name)}")
        if self.pipe_parallel < 0:
            raise ValueError(f"Expectation.pipe_parallel must be >= 0, got {self.pipe_parallel}")
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(
                f"Expectation.zero_stage {self.zero_stage} is not covered by the completeness rule "
                "(stage 3 shards model states per dp rank; NeoX does not support it with pipelines)"
            )
        if self.precision not in PRECISION_SPELLINGS:
            raise ValueError(
                f"Expectation.precision must be fp16, bf16 (or bfloat16) or fp32, got {self.precision!r}"
            )
        object.__setattr__(self, "precision", PRECISION_SPELLINGS[self.precision])

    @classmethod
    def standin(cls) -> Expectation:
        """The local stand-in trainer: mp_rank_00_model_states.pt + configs/, no shards, no layers."""
        return cls()

    @classmethod
    def from_neox_config(cls, config: Mapping, world_size: int) -> Expectation:
        """From a merged NeoX config and the job's total rank count (nodes x GPUs per node)."""
        mp = int(config.get("model_parallel_size", 1) or 1)
        pp = int(config.get("pipe_parallel_size", 0) or 0)
        per_replica = max(pp, 1) * mp
        if world_size < per_replica or world_size % per_replica:
            raise ValueError(
                f"world_size {world_size} is not a multiple of pipe_parallel_size x model_parallel_size "
                f"= {per_replica}"
            )
        zero = config.get("zero_optimization") or {}
        stage = int(zero.get("stage", 0) or 0) if isinstance(zero, Mapping) else 0
        precision = neox_precision(config)  # as NeoX derives it; raises on a conflict
        num_layers = config.get("num_layers")
        return cls(
            model_parallel=mp,
            pipe_parallel=pp,
            data_parallel=world_size // per_replica,
            zero_stage=stage,
            precision=precision,
            num_layers=int(num_layers) if num_layers is not None else None,
            no_weight_tying=bool(config.get("no_weight_tying", False)),
        )

    @property
    def model_ranks(self) -> int:
        """DeepSpeed's model-parallel world: pipeline stages x tensor ranks under the pipeline engine."""
        return self.model_parallel * (self.pipe_parallel if self.pipe_parallel >= 1 else 1)

    @property
    def optimizer_shards(self) -> bool:
        return self.zero_stage >= 1 or self.precision == "bf16"

    def layer_indices(self) -> list[int] | None:
        """Exact layer-file indices, when they can be derived (pipeline engine and num_layers known)."""
        if self.pipe_parallel < 1 or self.num_layers is None:
            return None
        n = self.num_layers
        indices = [0, *range(2, n + 2), n + 3]
        if self.no_weight_tying:
            indices.append(n + 4)
        return indices


# ------------------------------------------------------------------------------------------- the rule
def check_tag(entry: Mapping, expect: Expectation) -> list[str]:
    """What this tag folder lacks to be complete (empty list = complete), in words for the task log.

    ``entry`` is one value of the listing's ``tags`` map: ``{"dirs": [...], "files": {rel: [size, mtime]}}``.
    """
    files: Mapping = entry.get("files") or {}
    dirs = set(entry.get("dirs") or [])

    def present(name: str) -> bool:
        info = files.get(name)
        return info is not None and int(info[0]) > 0

    missing: list[str] = []
    config_files = [f for f in files if f.startswith("configs/")]
    if "configs" not in dirs and not config_files:
        missing.append("configs/ (written last: the save did not finish)")
    elif not config_files:
        missing.append("a file in configs/ (configs/ is empty: the save did not finish)")
    for m in range(expect.model_ranks):
        name = f"mp_rank_{m:02d}_model_states.pt"
        if not present(name):
            missing.append(name)
    if expect.optimizer_shards:
        for dp in range(expect.data_parallel):
            for m in range(expect.model_ranks):
                name = f"zero_pp_rank_{dp}_mp_rank_{m:02d}_optim_states.pt"
                if not (present(name) or present("bf16_" + name)):
                    missing.append(name)
    if expect.pipe_parallel >= 1:
        missing.extend(_missing_layers(files, expect, present))
    return missing


def _missing_layers(files: Mapping, expect: Expectation, present) -> list[str]:
    found: dict[int, set[int]] = {tp: set() for tp in range(expect.model_parallel)}
    for name in files:
        m = _LAYER.match(name)
        if m and present(name):
            found.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    wanted = expect.layer_indices()
    if wanted is None:
        union = set().union(*found.values())
        if not union:
            return ["layer_XX-model_XX-model_states.pt (no layer files at all)"]
        wanted = sorted(union)
    return [
        f"layer_{i:02d}-model_{tp:02d}-model_states.pt"
        for tp in range(expect.model_parallel)
        for i in wanted
        if i not in found.get(tp, set())
    ]


def _tags(listing: Mapping) -> Mapping:
    fmt = listing.get("format")
    if fmt != LISTING_FORMAT:
        raise ValueError(
            f"checkpoint listing format {fmt!r} is not {LISTING_FORMAT} (ckpt_listing.py version?)"
        )
    return listing.get("tags") or {}


def _checkpoint(save_dir: str, tag: str, entry: Mapping) -> Checkpoint:
    size = sum(int(info[0]) for info in (entry.get("files") or {}).values())
    return Checkpoint(tag_iteration(tag), tag, f"{save_dir.rstrip('/')}/{tag}", size)


def complete_checkpoints(listing: Mapping, expect: Expectation) -> list[Checkpoint]:
    """Every complete checkpoint in the listing, oldest first. Partial ones are never returned."""
    save_dir = str(listing.get("save_dir", ""))
    out = [
        _checkpoint(save_dir, tag, entry)
        for tag, entry in _tags(listing).items()
        if _TAG.match(tag) and not check_tag(entry, expect)
    ]
    return sorted(out, key=lambda c: c.iteration)


def partial_checkpoints(listing: Mapping, expect: Expectation) -> dict[str, list[str]]:
    """Tag -> what it lacks, for every incomplete tag (to log why a folder is ignored)."""
    out = {}
    for tag, entry in _tags(listing).items():
        if _TAG.match(tag):
            missing = check_tag(entry, expect)
            if missing:
                out[tag] = missing
    return dict(sorted(out.items(), key=lambda kv: tag_iteration(kv[0])))


def latest_complete(listing: Mapping, expect: Expectation) -> Checkpoint | None:
    """The newest complete checkpoint, or None when there is none (a fresh start)."""
    found = complete_checkpoints(listing, expect)
    return found[-1] if found else None


# ------------------------------------------------------------------------------------------- resuming
def resume_latest_file_content(tag: str) -> str:
    """What ``latest`` must hold to resume from ``tag``: the bare tag, as NeoX writes it (no newline)."""
    tag_iteration(tag)
    return tag


@dataclass(frozen=True)
class ResumePlan:
    """The decision before a (re)launch: resume always uses the newest complete checkpoint.

    ``action``: ``keep`` (``latest`` already names it), ``write`` (write `content` to ``latest``:
    it is missing, or names a partial or older tag), ``remove`` (no complete checkpoint but a
    ``latest`` exists: NeoX would load whatever it names; delete it so training starts at 0),
    ``none`` (nothing to resume and no ``latest``: a fresh start).
    """

    action: str
    checkpoint: Checkpoint | None
    current_latest: str | None
    reason: str

    @property
    def content(self) -> str | None:
        return resume_latest_file_content(self.checkpoint.tag) if self.checkpoint else None

    @property
    def iteration(self) -> int:
        """The iteration training will continue from (0 for a fresh start)."""
        return self.checkpoint.iteration if self.checkpoint else 0


def resume_plan(listing: Mapping, expect: Expectation) -> ResumePlan:
    """Compare ``latest`` with the newest complete checkpoint and say what to do about it."""
    best = latest_complete(listing, expect)
    current = listing.get("latest") or None
    if best is None:
        if current is None:
            return ResumePlan("none", None, None, "no complete checkpoint and no latest: fresh start")
        return ResumePlan(
            "remove",
            None,
            current,
            f"latest names {current!r} but no checkpoint is complete: remove latest, start at iteration 0",
        )
    if current == best.tag:
        return ResumePlan("keep", best, current, f"latest already names {best.tag}, the newest complete one")
    if current is None:
        why = "latest is missing"
    elif _TAG.match(current) and current in _tags(listing):
        missing = check_tag(_tags(listing)[current], expect)
        why = (
            f"latest names {current}, which is incomplete (missing {', '.join(missing[:3])})"
            if missing
            else f"latest names {current}, older than the newest complete one"
        )
    else:
        why = f"latest names {current!r}, which is not in the save folder"
    return ResumePlan("write", best, current, f"{why}: rewrite latest to {best.tag}")


# ------------------------------------------------------------------------------------------ local scan
def scan_local(save_dir: str | os.PathLike, min_iteration: int = 0) -> dict:
    """The ckpt_listing.py listing of a folder on this machine (tests, the GPU proof, a local cluster).

    Runs the very script shipped to the cluster (include/cluster/ckpt_listing.py, standard library only),
    loaded from its file: it lives outside the plugin package, so one scanner serves both sides.
    """
    return _listing_script().build_listing(os.fspath(save_dir), min_iteration)


def _listing_script():
    import importlib.util
    import sys

    name = "neoxflow_ckpt_listing"
    if name not in sys.modules:
        path = CLUSTER_CODE / "ckpt_listing.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]
