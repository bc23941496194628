"""Render the data pipeline's Slurm array scripts (fetch, stage, tokenize) from a validated spec.

Each data step is one Slurm job array over the lines of a manifest: with A array tasks (``--array=0-(A-1)%P``,
P at a time), task i takes lines i, i+A, i+2A, ... (``include/templates/each_manifest_line.sh``). A is the
number of lines, or the cluster's ``MaxArraySize`` when the selection has more lines (Slurm's default is
1001: all 1025 lines of C4 plus the tokenizer need the stride); the submit sizes it, the script follows.

The per-shard values (URLs, keys, paths) never enter the script: they go into the manifest, a file named
by the hash of its content (``<manifest_dir>/<sha256>.tsv``, shipped once, shared by every job that lists
the same lines), which the cluster-side scripts read themselves. The few values that do enter the script
come from the spec below; each one is checked against an allow-list (``neoxflow.slurm.validate``) and,
where the shell sees it, shlex-quoted too.

Pure: :func:`render_fetch_array` and friends return the texts; shipping the manifest, uploading the script
and running ``sbatch`` is the pipeline's and the Slurm layer's job.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from neoxflow.data.shards import ManifestEntry, TokenizeEntry, format_manifest
from neoxflow.slurm.template import (
    container_launch,
    render_template,
    sbatch_directives,
    shell_exports,
)
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
)

MAX_ARRAY_SIZE = 100_000
#: Slurm's default ``MaxArraySize`` (indices 0..1000): what a plan assumes; the submit reads the cluster's.
SLURM_DEFAULT_MAX_ARRAY_SIZE = 1001

EACH_LINE_TEMPLATE = "each_manifest_line.sh"  # the loop over a task's manifest lines, shared by the steps
#: The data steps accept the helper-job options and ``--nodelist`` too (as they did before the two lists
#: were one); the export job does not take ``--nodelist``.
_DATA_STEP_SBATCH = (*HELPER_JOB_SBATCH, "nodelist")
_TOKENIZE_FLAGS = {"--ftfy": None, "--log-interval": re.compile(r"[0-9]{1,9}")}


@dataclass(frozen=True)
class ArraySpec:
    """Where and how an array job runs; every field is validated by :meth:`checked`.

    :param job_name: Slurm job name (deterministic, so the Slurm layer can re-attach after a retry).
    :param job_dir: absolute folder on the cluster holding the script and (by default) its logs.
    :param manifest_dir: absolute folder on the cluster holding manifests, each named by its content's hash.
    :param scripts_dir: absolute folder on the cluster holding ``include/cluster`` (fetch_to_s3.py ...).
    :param python: interpreter on the nodes (or in the container), absolute path or a bare name.
    :param parallelism: array tasks running at once (the ``%P`` of ``--array``).
    :param image: container image; when set, each task runs under ``srun --container-image`` (pyxis).
    :param container_mounts: pyxis ``--container-mounts`` value, e.g. ``/fsx:/fsx``.
    :param sbatch: extra sbatch options (partition, time, mem, account, qos, ...), allow-listed.
    :param env: exported before the task runs (e.g. ``AWS_ENDPOINT_URL`` for moto); never credentials.
    :param log_dir: folder for ``%x-%A_%a.out`` logs; defaults to ``job_dir`` (it must exist).
    """

    job_name: str
    job_dir: str
    scripts_dir: str
    manifest_dir: str
    python: str = "python3"
    parallelism: int = 4
    cpus_per_task: int = 1
    image: str | None = None
    container_mounts: str | None = None
    sbatch: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    log_dir: str | None = None

    def checked(self) -> ArraySpec:
        check_job_name(self.job_name, "job_name")
        for name in ("job_dir", "scripts_dir", "manifest_dir"):
            check_absolute_path(getattr(self, name), name)
        if self.log_dir is not None:
            check_absolute_path(self.log_dir, "log_dir")
        check_python(self.python)
        check_int_in(self.parallelism, "parallelism", 1, 10_000)
        check_int_in(self.cpus_per_task, "cpus_per_task", 1, 4096)
        check_container(self.image, self.container_mounts)
        check_job_sbatch(self.sbatch, _DATA_STEP_SBATCH, "a data step")
        check_env(self.env, "env")
        return self


@dataclass(frozen=True)
class RenderedArray:
    """A rendered array job: the batch script (for ``job_dir``) and the manifest it reads, which must be
    at ``manifest_path`` before the job starts."""

    script_name: str
    script: str
    manifest: str
    manifest_path: str
    lines: int
    array_tasks: int
    job_dir: str

    @property
    def manifest_sha256(self) -> str:
        return manifest_digest(self.manifest)

    @property
    def script_path(self) -> str:
        return f"{self.job_dir.rstrip('/')}/{self.script_name}"


def manifest_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def manifest_path(manifest_dir: str, text: str) -> str:
    """Where a manifest lives: named by its content, so a path names one list for good."""
    return f"{manifest_dir.rstrip('/')}/{manifest_digest(text)}.tsv"


def array_directive(size: int, parallelism: int) -> str:
    """``0-(size-1)%P``, P capped at the array size."""
    check_int_in(size, "array size", 1, MAX_ARRAY_SIZE)
    return f"0-{size - 1}%{min(parallelism, size)}"


def array_tasks(lines: int, max_array_size: int) -> int:
    """How many array tasks cover ``lines`` manifest lines on a cluster whose ``MaxArraySize`` is given:
    one per line up to the limit (task ids 0..limit-1), the stride covering the rest."""
    check_int_in(lines, "manifest lines", 1, MAX_ARRAY_SIZE)
    check_int_in(max_array_size, "max_array_size", 1, MAX_ARRAY_SIZE)
    return min(lines, max_array_size)


def _check_entries(entries: Sequence[ManifestEntry | TokenizeEntry]) -> None:
    if not entries:
        raise UnsafeValueError("entries", entries, "an array job needs at least one manifest entry")
    for number, entry in enumerate(entries, start=1):
        for name, value in vars(entry).items():
            if not isinstance(value, str) or not value or any(c in value for c in "\t\r\n\x00"):
                raise UnsafeValueError(
                    f"manifest entry {number} {name}", value, "must be non-empty, no tab/newline"
                )


def _common_values(spec: ArraySpec, step: str, lines: int, tasks: int, manifest: str) -> dict[str, str]:
    return {
        "JOB_NAME": spec.job_name,
        "ARRAY": array_directive(tasks, spec.parallelism),
        "LOG_DIR": (spec.log_dir or spec.job_dir).rstrip("/") or "/",
        "CPUS": str(spec.cpus_per_task),
        "SBATCH_EXTRA": sbatch_directives(spec.sbatch),
        "SCRIPTS_DIR": shlex.quote(spec.scripts_dir),
        "PYTHON": shlex.quote(spec.python),
        "LAUNCH": container_launch(spec.image, spec.container_mounts),
        "EXPORTS": shell_exports(check_env(spec.env)),
        "MANIFEST": shlex.quote(manifest),
        "MANIFEST_LINES": str(lines),
        "EACH_LINE": render_template(EACH_LINE_TEMPLATE, {"STEP": step}).rstrip("\n"),
    }


def _render(
    template_name: str,
    step: str,
    spec: ArraySpec,
    entries: Sequence[ManifestEntry | TokenizeEntry],
    extra_values: Mapping[str, str],
    templates_dir: Path | None,
    max_array_size: int,
) -> RenderedArray:
    spec = spec.checked()
    _check_entries(entries)
    manifest = format_manifest(entries)
    path = manifest_path(spec.manifest_dir, manifest)
    tasks = array_tasks(len(entries), max_array_size)
    values = {**_common_values(spec, step, len(entries), tasks, path), **extra_values}
    script = render_template(template_name, values, templates_dir=templates_dir)
    return RenderedArray(
        script_name=f"{step}_array.sbatch",
        script=script,
        manifest=manifest,
        manifest_path=path,
        lines=len(entries),
        array_tasks=tasks,
        job_dir=spec.job_dir,
    )


def render_fetch_array(
    spec: ArraySpec,
    entries: Sequence[ManifestEntry],
    *,
    part_size: int = 64 * 1024 * 1024,
    retries: int = 5,
    templates_dir: Path | None = None,
    max_array_size: int = SLURM_DEFAULT_MAX_ARRAY_SIZE,
) -> RenderedArray:
    """Array job running ``fetch_to_s3.py`` on each entry (HTTP/S3/file source -> S3)."""
    check_int_in(part_size, "part_size", 1, 5 * 1024**3)
    check_int_in(retries, "retries", 0, 100)
    extra = {"PART_SIZE": str(part_size), "RETRIES": str(retries)}
    return _render("fetch_array.sbatch", "fetch", spec, entries, extra, templates_dir, max_array_size)


def render_stage_array(
    spec: ArraySpec,
    entries: Sequence[ManifestEntry],
    *,
    templates_dir: Path | None = None,
    max_array_size: int = SLURM_DEFAULT_MAX_ARRAY_SIZE,
) -> RenderedArray:
    """Array job running ``stage_to_fsx.py`` on each entry (S3 -> FSx, verified, atomic)."""
    return _render("stage_array.sbatch", "stage", spec, entries, {}, templates_dir, max_array_size)


def render_tokenize_array(
    spec: ArraySpec,
    entries: Sequence[TokenizeEntry],
    *,
    vocab_file: str,
    workers: int | None = None,
    skip_existing: bool = True,
    extra_flags: Mapping[str, str | None] | None = None,
    templates_dir: Path | None = None,
    max_array_size: int = SLURM_DEFAULT_MAX_ARRAY_SIZE,
) -> RenderedArray:
    """Array job running NeoX-compatible ``preprocess_data.py`` on each staged shard.

    ``workers`` defaults to ``spec.cpus_per_task``. ``extra_flags`` may hold ``--ftfy`` (no value) and
    ``--log-interval N``. With ``skip_existing`` a task whose ``.bin`` and ``.idx`` already exist exits 0.
    """
    check_absolute_path(vocab_file, "vocab_file")
    workers = spec.cpus_per_task if workers is None else workers
    check_int_in(workers, "workers", 1, 4096)
    flags: list[str] = []
    for flag, value in (extra_flags or {}).items():
        if flag not in _TOKENIZE_FLAGS:
            raise UnsafeValueError("extra_flags", flag, f"is not one of {sorted(_TOKENIZE_FLAGS)}")
        pattern = _TOKENIZE_FLAGS[flag]
        flags.append(flag)
        if pattern is None:
            if value not in (None, True):
                raise UnsafeValueError(f"extra_flags {flag}", value, "is a flag and takes no value")
            continue
        text = str(value)
        if not pattern.fullmatch(text):
            raise UnsafeValueError(f"extra_flags {flag}", value, "has an invalid value")
        flags.append(text)
    extra = {
        "VOCAB_FILE": shlex.quote(vocab_file),
        "WORKERS": str(workers),
        "SKIP_EXISTING": "1" if skip_existing else "0",
        "EXTRA_FLAGS": " ".join(shlex.quote(f) for f in flags),
    }
    return _render("tokenize_array.sbatch", "tokenize", spec, entries, extra, templates_dir, max_array_size)
