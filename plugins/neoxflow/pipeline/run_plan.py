"""The run plan every task and operator reads: built once by ``prepare.plan``, carried in XCom.

Before this module each task rebuilt what it needed from the raw form (``parse_request`` ->
``load_profile`` -> ``run_config``), on every ``execute`` and every deferral's ``execute_complete``, and
two of them typed the training job's name by hand: a drift between those spellings would have made
"a training job of this run is active" miss without an error. Now the plan task decides once and the
others read the decisions:

- ``request``: the validated form (:class:`RunRequest`), not the raw one;
- ``fixed`` (:class:`FixedPart`): what defines the model and its data, the same for every slice of the
  run: the run's name, its profile (name and content hash), model size, ``train_iters``, the dataset's
  identity, the shipped code, where everything lives (:class:`RunLayout`), the job names
  (``slurm/naming.py``) and which trainer writes the checkpoints (stand-in or NeoX, decided here once);
- ``slice`` (:class:`SlicePart`): how a slice runs as planned: its shape, batch split, time limit, the
  first slice's planned stop, and what a complete checkpoint holds at that shape. A node failure may
  re-shape a later slice (``PretrainTrainOperator``); the fixed part never changes.

Large lists (per-shard manifests) stay behind hashed file pointers (``plan["manifests"]``), so the XCom
stays a few KB whatever the selection. The XCom keeps the keys the UI and the planned Slurm operators
read (``layout``, ``dataset``, ``config``, ``data``, ``train``, ``export`` ...) at its top level;
:meth:`RunPlan.to_dict` and :meth:`RunPlan.from_dict` are the only code that knows where the typed
parts live in it.

Plans of an earlier release (a run resumed across an upgrade, its ``prepare.plan`` XCom written before
``schema`` existed) are REFUSED with a message naming their version: they carry the raw form and no
decisions, and guessing those decisions again is exactly what this module removes. Clearing
``prepare.plan`` (or triggering the run again: the run of record keeps it the same run) re-plans it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neoxflow.neox.checkpoints import Expectation
from neoxflow.pipeline.request import RunRequest
from neoxflow.slurm import naming

#: The version of the plan's XCom layout; plans without one are an earlier release's (schema 1).
PLAN_SCHEMA = 2


class PlanSchemaError(ValueError):
    """A plan in XCom that this release cannot read (another schema version)."""


@dataclass(frozen=True)
class RunLayout:
    """Where everything of one run lives on the cluster."""

    fsx_root: str
    code_dir: str
    raw_dir: str
    tokens_dir: str
    data_path: str
    tokenizer_fsx: str
    checkpoint_dir: str
    run_dir: str
    jobs_dir: str
    lock_dir: str
    manifest_dir: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class JobNames:
    """The Slurm job names of a run that later tasks look jobs up by (``slurm/naming.py``)."""

    train: str
    export: str

    @classmethod
    def for_run(cls, run_name: str) -> JobNames:
        return cls(train=naming.train_job_name(run_name), export=naming.run_job_name("export", run_name))


def profile_digest(raw: Mapping[str, Any]) -> str:
    """A profile's content hash (its parsed values, after ``${VAR}`` expansion)."""
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def checkpoint_expectation(standin: bool, config: Mapping[str, Any], world_size: int) -> Expectation:
    """What a complete checkpoint of the run holds (resume, export and report judge checkpoints by it).

    ``standin`` is the plan's decision (the profile's launch template is the local stand-in trainer);
    the rest follows the NeoX config and the job's world size, so a re-shaped slice asks again with its
    own. Built by the plan too, so a config whose layout the rule does not cover (ZeRO stage 3) is refused
    before anything runs rather than when the first resume asks."""
    if standin:
        return Expectation.standin()
    try:
        return Expectation.from_neox_config(config, world_size)
    except ValueError as err:
        raise ValueError(f"checkpoint layout: {err}") from None


@dataclass(frozen=True)
class FixedPart:
    """What defines the model and its data: the same for every slice and every DAG run of the run."""

    run_name: str
    profile: str
    profile_sha256: str
    model_size: str
    train_iters: int
    #: tokens per sample (tokens/s in the watch's progress)
    seq_length: int | None
    code_hash: str
    dataset: dict[str, Any]
    layout: RunLayout
    #: the cluster's interpreter on the login node (listing, validation)
    python: str
    s3_bucket: str
    s3_prefix: str
    jobs: JobNames
    #: the checkpoints are the local stand-in trainer's, not NeoX's (decided at plan time, once)
    standin: bool


@dataclass(frozen=True)
class SlicePart:
    """How a slice of the run runs, as planned: shape, batch split, limits, the first slice's stop."""

    nodes: int
    gpus_per_node: int
    #: the form's time limit per slice (None: the profile's)
    time_limit: str | None
    micro_batch: int | None
    gradient_accumulation: int | None
    #: where the first slice stops as planned without measured times (None: at train_iters)
    stop_iteration: int | None
    #: what a complete checkpoint holds at this shape (``Expectation`` fields)
    expectation: dict[str, Any]

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class RunPlan:
    """The whole plan of one DAG run: typed parts, and the rendered documents (scripts, config, manifests'
    pointers) that the UI shows and the planned Slurm operators submit."""

    request: RunRequest
    fixed: FixedPart
    slice: SlicePart
    dry_run: bool
    documents: Mapping[str, Any]

    @property
    def run_name(self) -> str:
        return self.fixed.run_name

    @property
    def layout(self) -> RunLayout:
        return self.fixed.layout

    def expectation(self) -> Expectation:
        """A complete checkpoint of the planned shape, as decided at plan time."""
        return Expectation(**self.slice.expectation)

    def expectation_at(self, nodes: int) -> Expectation:
        """A complete checkpoint of a slice on ``nodes`` nodes: the planned one at the planned shape; a
        re-shaped slice (a node failure) shards its checkpoint for its own world size, by the same rule
        and the same trainer."""
        if nodes == self.slice.nodes:
            return self.expectation()
        config = json.loads(self.documents["config"]["rendered"])
        return checkpoint_expectation(self.fixed.standin, config, nodes * self.slice.gpus_per_node)

    def to_dict(self) -> dict[str, Any]:
        fixed = self.fixed
        return {
            **self.documents,
            "schema": PLAN_SCHEMA,
            # the request's shard list is the dataset's (same train indices): carried once, in "dataset"
            "request": {k: v for k, v in self.request.to_dict().items() if k != "shards"},
            "run_name": fixed.run_name,
            "profile": fixed.profile,
            "code_hash": fixed.code_hash,
            "layout": fixed.layout.to_dict(),
            "dataset": fixed.dataset,
            "s3": {"bucket": fixed.s3_bucket, "prefix": fixed.s3_prefix},
            "dry_run": self.dry_run,
            "fixed": {
                "profile_sha256": fixed.profile_sha256,
                "model_size": fixed.model_size,
                "train_iters": fixed.train_iters,
                "seq_length": fixed.seq_length,
                "python": fixed.python,
                "jobs": dataclasses.asdict(fixed.jobs),
                "standin": fixed.standin,
            },
            "slice": dataclasses.asdict(self.slice),
        }

    @classmethod
    def from_dict(cls, plan: Mapping[str, Any]) -> RunPlan:
        """The plan the plan task returned (its XCom); refuses another release's (see the module)."""
        schema = plan.get("schema", 1) if isinstance(plan, Mapping) else None
        if schema != PLAN_SCHEMA:
            raise PlanSchemaError(
                f"the run plan in XCom has schema version {schema!r}, this release reads version "
                f"{PLAN_SCHEMA}: it was planned by another release of neoxflow. Clear prepare.plan (or "
                "trigger the run again) to plan it anew; the run of record keeps it the same run."
            )
        fixed, typed = plan["fixed"], ("fixed", "slice", "request", "schema")
        return cls(
            request=RunRequest.from_dict({**plan["request"], "shards": plan["dataset"]["shards"]}),
            fixed=FixedPart(
                run_name=plan["run_name"],
                profile=plan["profile"],
                profile_sha256=fixed["profile_sha256"],
                model_size=fixed["model_size"],
                train_iters=int(fixed["train_iters"]),
                seq_length=fixed["seq_length"],
                code_hash=plan["code_hash"],
                dataset=dict(plan["dataset"]),
                layout=RunLayout(**plan["layout"]),
                python=fixed["python"],
                s3_bucket=plan["s3"]["bucket"],
                s3_prefix=plan["s3"]["prefix"],
                jobs=JobNames(**fixed["jobs"]),
                standin=bool(fixed["standin"]),
            ),
            slice=SlicePart(**plan["slice"]),
            dry_run=bool(plan["dry_run"]),
            documents={k: v for k, v in plan.items() if k not in typed},
        )

    def load_profile(self):
        """The run's profile, for the settings the plan does not carry (cluster, slices hints, export).

        The one place a task or operator loads it after the plan; the plan recorded its content hash, and
        a profile edited since is named in a warning (the plan's decisions stay as they were made)."""
        import logging

        from neoxflow.neox.profile_loader import load_profile

        profile = load_profile(self.fixed.profile)
        if profile_digest(profile.raw) != self.fixed.profile_sha256:
            logging.getLogger(__name__).warning(
                "Profile %s changed since run %s was planned (content %s, planned with %s): its new "
                "cluster settings apply to this task; the plan's decisions do not change",
                self.fixed.profile,
                self.run_name,
                profile_digest(profile.raw),
                self.fixed.profile_sha256,
            )
        return profile
