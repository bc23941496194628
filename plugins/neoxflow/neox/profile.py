"""A pipeline profile as the DAG uses it: cluster shape and launch settings, storage, data, NeoX overrides.

The types only; ``neox/profile_loader.py`` reads a profile file into them (and names every problem with
its line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from neoxflow.slurm.validate import check_run_name

#: What a profile name may be (a file name under include/configs/profiles/); run names follow
#: slurm/validate.py RUN_NAME, the one run-name rule.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


#: Profile keys under ``cluster:`` that become sbatch options of every job (validated as sbatch values).
SCHEDULING_KEYS = ("account", "qos", "reservation", "constraint")


@dataclass(frozen=True)
class ClusterSpec:
    """Shape and launch settings of the Slurm cluster a profile targets (checked again by launch.py)."""

    nodes: int
    gpus_per_node: int
    partition: str | None
    time_limit: str
    stop_before_limit_s: int
    template: str
    python: str
    container_image: str | None = None
    container_mounts: tuple[str, ...] = ()
    neox_dir: str | None = None
    master_port: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    # after a node failure with no spare, resume on fewer nodes (another world size: another sum order)
    shrink_on_node_failure: bool = False
    # one GPU's peak dense TFLOPS at the training precision: NeoX's peak_theoretical_tflops, for its MFU
    gpu_peak_tflops: float | None = None
    # one GPU's memory (GiB): the plan's recompute choice compares its estimate to it (neox/memory.py)
    gpu_memory_gib: float | None = None
    # what the training image has (neox/image.py: flash_attn, fused_kernels); None: not stated
    image_provides: tuple[str, ...] | None = None
    # where and on whose budget every job of the profile runs (most production clusters require an account)
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None

    def scheduling(self) -> dict[str, str]:
        """The sbatch options every job of the profile carries (data, training, export): the partition
        and the ``SCHEDULING_KEYS`` that are set."""
        keys = ("partition", *SCHEDULING_KEYS)
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}


@dataclass(frozen=True)
class RunPaths:
    """Where one run lives on the cluster's file system (all absolute)."""

    run_name: str
    checkpoint_dir: str  # NeoX save == load
    run_dir: str  # rendered configs, job logs, NeoX's own log_dir
    log_dir: str  # Slurm job logs: <log_dir>/<job_name>-<job_id>.out
    neox_log_dir: str  # NeoX log_dir (per-host stdout/stderr copies)
    config_dir: str  # rendered configs, one file per content hash

    def config_file(self, digest: str) -> str:
        """Rendered config path for a content hash: versioned, so a changed config never overwrites."""
        return f"{self.config_dir}/neox-{digest[:16]}.json"


@dataclass(frozen=True)
class Profile:
    """A pipeline profile (``include/configs/profiles/<name>.yaml``): cluster, storage, data, NeoX overrides.

    ``raw`` keeps the whole parsed file (after ``${VAR}`` expansion) for sections other modules own.
    """

    name: str
    source: str
    cluster: ClusterSpec
    fsx_root: str
    fsx_visible_to_airflow: bool
    data_dir: str
    checkpoints_dir: str
    runs_dir: str
    code_dir: str
    dataset: str
    tokenizer_source: str
    tokenizer_sha256: str | None  # what the tokenizer file must be: part of a dataset's identity
    tokenizer_path: str
    s3_bucket: str
    s3_prefix: str
    default_size: str
    neox_overrides: dict[str, Any]
    raw: dict[str, Any]
    shard_url_template: str | None = None  # data.url_template: where the shards come from (None: allenai/c4)
    data_parallelism: int = 8  # data.parallelism: array tasks of a data step running at once
    export_keep_last: int = 0  # export.keep_last: prune FSx to the newest N exported checkpoints (0: never)
    data_repository: dict[str, Any] | None = None  # fsx.data_repository (typed by _ProfileReader)
    recompute: str = "auto"  # neox.recompute: auto (by memory), on, off (neox/memory.py)

    def data_path(self, dataset_id: str) -> str:
        """NeoX ``data_path`` of one dataset (the prefix, without ``.bin``/``.idx``):
        ``<data_dir>/<dataset folder>/<dataset_id>/<dataset name>``. A dataset is named by what it is built
        from, so it is never rebuilt in place, and NeoX's index-map caches beside it never go stale."""
        folder, _, name = self.dataset.rpartition("/")
        return "/".join(p for p in (self.data_dir, folder, dataset_id, name) if p)

    def run_paths(self, run_name: str) -> RunPaths:
        check_run_name(run_name, "run name")  # the one run-name rule (slurm/validate.py): it names folders
        run_dir = f"{self.runs_dir}/{run_name}"
        return RunPaths(
            run_name=run_name,
            checkpoint_dir=f"{self.checkpoints_dir}/{run_name}",
            run_dir=run_dir,
            log_dir=f"{run_dir}/logs",
            neox_log_dir=f"{run_dir}/neox_logs",
            config_dir=f"{run_dir}/configs",
        )
