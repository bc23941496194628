"""Render the Slurm job that exports complete checkpoints FSx -> S3 (and optionally prunes FSx).

The job runs ``include/cluster/export_checkpoints.py`` on one node (next to FSx, so the bytes never pass
through Airflow). Which tags it exports is decided here, on the Airflow side, by the completeness rule
(:func:`export_tags` over a ckpt_listing.py listing), so a partial checkpoint is never even named; the
script re-checks the basics and writes a manifest object per tag only after verifying every object.

Safety as in :mod:`neoxflow.data.render`: every value that enters the script is checked against an
allow-list first (:mod:`neoxflow.slurm.validate` and the patterns below) and shlex-quoted where the shell
sees it. Pure: :func:`render_export_job` returns the script text; uploading and ``sbatch`` belong to the
Slurm layer (:class:`~neoxflow.operators.slurm.SlurmOperator`).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from neoxflow.data.render import fill_template, load_template
from neoxflow.neox.checkpoints import Expectation, complete_checkpoints
from neoxflow.slurm.validate import (
    UnsafeValueError,
    check_env,
    check_job_name,
    check_remote_path,
    check_sbatch_option,
)

__all__ = [
    "EXPORT_TEMPLATE",
    "MANIFEST_NAME",
    "ExportSpec",
    "export_tags",
    "parse_export_result",
    "render_export_job",
]

EXPORT_TEMPLATE = "export_checkpoints.sbatch"
MANIFEST_NAME = "neoxflow-export.json"  # the marker of a verified copy (export_checkpoints.py)
RESULT_PREFIX = "NEOXFLOW_RESULT "

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,127}")
_TAG = re.compile(r"global_step[0-9]{1,12}")
_IMAGE = re.compile(r"[A-Za-z0-9/][A-Za-z0-9_./:#@+-]{0,511}")
_MOUNTS = re.compile(r"/[A-Za-z0-9_./:,+-]{0,1023}")
_PYTHON = re.compile(r"[A-Za-z0-9_./+-]{1,512}")
_EXTRA_SBATCH = ("partition", "time", "mem", "account", "qos", "reservation", "constraint", "exclude")
MAX_TAGS = 10_000


def export_prefix(s3_prefix: str) -> str:
    """The key prefix a run's checkpoints are exported under: ``<the profile's s3 prefix>/checkpoints``."""
    return posixpath.join(s3_prefix.strip("/"), "checkpoints")  # an empty prefix: "checkpoints"


def run_checkpoints_s3_uri(bucket: str, s3_prefix: str, run: str) -> str:
    """Where the export puts a run's checkpoints: ``s3://<bucket>/<prefix>/checkpoints/<run>``."""
    return f"s3://{bucket}/{export_prefix(s3_prefix)}/{run}"


def checkpoint_s3_uri(bucket: str, s3_prefix: str, run: str, tag: str) -> str:
    """Where the export puts one checkpoint: ``s3://<bucket>/<prefix>/checkpoints/<run>/<tag>``."""
    return f"{run_checkpoints_s3_uri(bucket, s3_prefix, run)}/{tag}"


@dataclass(frozen=True)
class ExportSpec:
    """One export job; every field is validated by :meth:`checked`.

    :param job_name: Slurm job name (deterministic per run and slice, for re-attaching).
    :param log_dir: absolute folder for ``%x-%j.out`` (the SlurmOperator's ``--output`` overrides it).
    :param scripts_dir: absolute folder on the cluster holding include/cluster (export_checkpoints.py).
    :param save_dir: the run's NeoX save folder on FSx.
    :param bucket, prefix, run: objects go to ``s3://bucket/prefix/run/global_stepN/...``.
    :param tags: the COMPLETE tags to export (from :func:`export_tags`).
    :param keep_last: prune FSx to the newest N complete checkpoints (0 = never prune).
    :param python: interpreter on the node (or in the container) with botocore/boto3.
    :param part_size: multipart part size in bytes (>= 5 MiB, S3's minimum part).
    :param image, container_mounts: run under pyxis (``srun --container-image``) when set.
    :param sbatch: extra sbatch options (partition, time, mem, ...), allow-listed.
    :param env: exported before the script runs (e.g. ``AWS_ENDPOINT_URL``); never credentials.
    """

    job_name: str
    log_dir: str
    scripts_dir: str
    save_dir: str
    bucket: str
    prefix: str
    run: str
    tags: tuple[str, ...]
    keep_last: int = 0
    python: str = "python3"
    cpus: int = 1
    part_size: int = 64 * 1024 * 1024
    image: str | None = None
    container_mounts: str | None = None
    sbatch: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return f"s3://{self.bucket}/{self.prefix.strip('/')}/{self.run}"

    def checked(self) -> ExportSpec:
        check_job_name(self.job_name, "job_name")
        for name in ("log_dir", "scripts_dir", "save_dir"):
            _absolute(getattr(self, name), name)
        if not isinstance(self.bucket, str) or not _BUCKET.fullmatch(self.bucket) or ".." in self.bucket:
            raise UnsafeValueError("bucket", self.bucket, "must be an S3 bucket name (a-z 0-9 . -, 3-63)")
        parts = self.prefix.strip("/").split("/") if isinstance(self.prefix, str) else [None]
        if not all(isinstance(p, str) and _KEY_PART.fullmatch(p) for p in parts):
            raise UnsafeValueError(
                "prefix", self.prefix, "must be key parts of A-Z a-z 0-9 . _ = + - joined by /"
            )
        if not isinstance(self.run, str) or not _KEY_PART.fullmatch(self.run):
            raise UnsafeValueError("run", self.run, "must be one key part (A-Z a-z 0-9 . _ = + -)")
        if not self.tags:
            raise UnsafeValueError("tags", self.tags, "an export job needs at least one complete tag")
        if len(self.tags) > MAX_TAGS:
            raise UnsafeValueError("tags", len(self.tags), f"more than {MAX_TAGS} tags in one job")
        for i, tag in enumerate(self.tags):
            if not isinstance(tag, str) or not _TAG.fullmatch(tag):
                raise UnsafeValueError(f"tags[{i}]", tag, "must be a NeoX tag like global_step1000")
        _int_in(self.keep_last, "keep_last", 0, 1_000_000)
        _int_in(self.cpus, "cpus", 1, 256)
        _int_in(self.part_size, "part_size", 5 * 1024 * 1024, 5 * 1024**3)
        if (
            not isinstance(self.python, str)
            or not _PYTHON.fullmatch(self.python)
            or self.python.startswith("-")
        ):
            raise UnsafeValueError("python", self.python, "must be an interpreter path or name")
        if self.image is not None and not _IMAGE.fullmatch(self.image):
            raise UnsafeValueError("image", self.image, "must be an image reference or .sqsh path")
        if self.container_mounts is not None:
            if self.image is None:
                raise UnsafeValueError("container_mounts", self.container_mounts, "needs an image")
            if not _MOUNTS.fullmatch(self.container_mounts):
                raise UnsafeValueError("container_mounts", self.container_mounts, "must look like /fsx:/fsx")
        for key, value in self.sbatch.items():
            if key not in _EXTRA_SBATCH:
                raise UnsafeValueError(
                    "sbatch", key, f"is not one of the options an export may set {_EXTRA_SBATCH}"
                )
            check_sbatch_option(key, value)
        check_env(self.env, "env")
        return self


def _absolute(value: object, name: str) -> str:
    path = check_remote_path(value, name)
    if not path.startswith("/"):
        raise UnsafeValueError(name, value, "must be an absolute path")
    if "%" in path:
        raise UnsafeValueError(name, value, "must not contain '%' (Slurm expands it in --output)")
    return path


def _int_in(value: object, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UnsafeValueError(name, value, f"must be an integer in {low}..{high}")
    return value


def export_tags(listing: Mapping, expect: Expectation, after_iteration: int | None = None) -> tuple[str, ...]:
    """The complete tags of a ckpt_listing.py listing (newer than ``after_iteration``), oldest first."""
    floor = -1 if after_iteration is None else after_iteration
    return tuple(c.tag for c in complete_checkpoints(listing, expect) if c.iteration > floor)


def render_export_job(spec: ExportSpec, *, templates_dir: Path | None = None) -> str:
    """The batch script text for ``spec`` (validated; raises :class:`UnsafeValueError` naming the field)."""
    spec = spec.checked()
    q = shlex.quote
    launch: list[str] = []
    if spec.image:
        launch = ["srun", f"--container-image={spec.image}"]
        if spec.container_mounts:
            launch.append(f"--container-mounts={spec.container_mounts}")
    values = {
        "JOB_NAME": spec.job_name,
        "LOG_DIR": spec.log_dir.rstrip("/") or "/",
        "CPUS": str(spec.cpus),
        "SBATCH_EXTRA": "\n".join(f"#SBATCH --{k}={v}" for k, v in spec.sbatch.items()),
        "SCRIPTS_DIR": q(spec.scripts_dir),
        "PYTHON": q(spec.python),
        "LAUNCH": " ".join(q(word) for word in launch),
        "EXPORTS": "\n".join(f"export {k}={q(v)}" for k, v in check_env(spec.env).items()),
        "SAVE_DIR": q(spec.save_dir),
        "DEST": q(spec.dest),
        "TAG_ARGS": " ".join(f"--tag {q(tag)}" for tag in spec.tags),
        "KEEP_LAST": str(spec.keep_last),
        "PART_SIZE": str(spec.part_size),
    }
    return fill_template(load_template(EXPORT_TEMPLATE, templates_dir), values, template=EXPORT_TEMPLATE)


def parse_export_result(output: str) -> dict:
    """The ``NEOXFLOW_RESULT {json}`` line export_checkpoints.py printed (the last one wins)."""
    found = None
    for line in output.splitlines():
        if line.startswith(RESULT_PREFIX):
            found = line[len(RESULT_PREFIX) :]
    if found is None:
        raise ValueError("no NEOXFLOW_RESULT line in the export job's output")
    result = json.loads(found)
    if not isinstance(result, dict):
        raise ValueError("NEOXFLOW_RESULT is not a JSON object")
    return result
