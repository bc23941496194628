"""Render the Slurm job that exports complete checkpoints FSx -> S3 (and optionally prunes FSx).

The job runs ``include/cluster/export_checkpoints.py`` on one node (next to FSx, so the bytes never pass
through Airflow). Which tags it exports is decided here, on the Airflow side, by the completeness rule
(:func:`export_tags` over a ckpt_listing.py listing), so a partial checkpoint is never even named; the
script re-checks the basics and writes a manifest object per tag only after verifying every object.

Safety as in :mod:`neoxflow.data.render`: every value that enters the script is checked against an
allow-list first (:mod:`neoxflow.slurm.validate` and the patterns below) and shlex-quoted where the shell
sees it; :mod:`neoxflow.slurm.template` fills the template. Pure: :func:`render_export_job` returns the
script text; uploading and ``sbatch`` belong to the Slurm layer
(:class:`~neoxflow.operators.slurm.SlurmOperator`).
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from neoxflow.neox.checkpoint_listing import new_complete_checkpoints
from neoxflow.neox.checkpoints import Expectation
from neoxflow.slurm.template import container_launch, render_template, sbatch_directives, shell_exports
from neoxflow.slurm.validate import (
    HELPER_JOB_SBATCH,
    UnsafeValueError,
    check_absolute_path,
    check_container,
    check_env,
    check_int_in,
    check_job_name,
    check_job_sbatch,
    check_python,
    is_s3_bucket_name,
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

_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,127}")
_TAG = re.compile(r"global_step[0-9]{1,12}")
MAX_TAGS = 10_000


def export_prefix(s3_prefix: str) -> str:
    """The key prefix a run's checkpoints are exported under: ``<the profile's s3 prefix>/checkpoints``."""
    return posixpath.join(s3_prefix.strip("/"), "checkpoints")  # an empty prefix: "checkpoints"


def run_checkpoints_s3_uri(bucket: str, s3_prefix: str, run: str) -> str:
    """Where the export puts a run's checkpoints: ``s3://<bucket>/<prefix>/checkpoints/<run>``."""
    return f"s3://{bucket}/{export_prefix(s3_prefix)}/{run}"


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
            check_absolute_path(getattr(self, name), name)
        if not is_s3_bucket_name(self.bucket):
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
        check_int_in(self.keep_last, "keep_last", 0, 1_000_000)
        check_int_in(self.cpus, "cpus", 1, 256)
        check_int_in(self.part_size, "part_size", 5 * 1024 * 1024, 5 * 1024**3)
        check_python(self.python)
        check_container(self.image, self.container_mounts)
        check_job_sbatch(self.sbatch, HELPER_JOB_SBATCH, "an export")
        check_env(self.env, "env")
        return self


def export_tags(listing: Mapping, expect: Expectation, after_iteration: int | None = None) -> tuple[str, ...]:
    """The complete tags of a ckpt_listing.py listing (newer than ``after_iteration``), oldest first."""
    return tuple(c.tag for c in new_complete_checkpoints(listing, expect, after_iteration))


def render_export_job(spec: ExportSpec, *, templates_dir: Path | None = None) -> str:
    """The batch script text for ``spec`` (validated; raises :class:`UnsafeValueError` naming the field)."""
    spec = spec.checked()
    q = shlex.quote
    values = {
        "JOB_NAME": spec.job_name,
        "LOG_DIR": spec.log_dir.rstrip("/") or "/",
        "CPUS": str(spec.cpus),
        "SBATCH_EXTRA": sbatch_directives(spec.sbatch),
        "SCRIPTS_DIR": q(spec.scripts_dir),
        "PYTHON": q(spec.python),
        "LAUNCH": container_launch(spec.image, spec.container_mounts),
        "EXPORTS": shell_exports(check_env(spec.env)),
        "SAVE_DIR": q(spec.save_dir),
        "DEST": q(spec.dest),
        "TAG_ARGS": " ".join(f"--tag {q(tag)}" for tag in spec.tags),
        "KEEP_LAST": str(spec.keep_last),
        "PART_SIZE": str(spec.part_size),
    }
    return render_template(EXPORT_TEMPLATE, values, templates_dir=templates_dir)


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
