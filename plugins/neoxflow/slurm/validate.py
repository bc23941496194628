"""Validation of every value neoxflow puts on a remote shell line.

Values reach the cluster from the trigger form (user input), profiles and DAG code. Each one is checked
against a strict allow-list here, BEFORE anything is sent, and is still shlex-quoted by the command
builders afterwards (defence in depth). A refused value raises :class:`UnsafeValueError` naming the field,
so the person who typed it knows what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = [
    "HELPER_JOB_SBATCH",
    "PARTITION",
    "UnsafeValueError",
    "check_absolute_path",
    "check_container",
    "check_env",
    "check_int_in",
    "check_job_id",
    "check_job_name",
    "check_job_sbatch",
    "check_nodelist",
    "check_partition",
    "check_python",
    "check_remote_path",
    "check_run_name",
    "check_sbatch_option",
    "is_s3_bucket_name",
]


class UnsafeValueError(ValueError):
    """A value that must not reach a remote shell (or that Slurm would misread)."""

    def __init__(self, field: str, value: object, why: str):
        self.field = field
        self.value = value
        super().__init__(f"{field}: {why} (got {value!r})")


#: A run's name: the one pattern for the trigger form, the run's folders and the job names built from it
#: (``nxf-<step>-<run>``). Lower case only, at most 63 characters: it names folders on FSx, S3 keys and
#: Slurm jobs, and a continuation finds runs by listing folders that match it.
RUN_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")
#: A Slurm partition (or account) name: also the shape the training launch accepts for both.
PARTITION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# Absolute or relative POSIX path made of ordinary file-name characters. No "..": a run folder name
# from the trigger form must not climb out of the FSx root it is placed under.
_PATH = re.compile(r"[A-Za-z0-9_./%+=,@-]{1,1024}")
_JOB_ID = re.compile(r"[0-9]{1,12}(_[0-9]{1,7})?")
_NODELIST = re.compile(r"[A-Za-z0-9_.,\[\]-]{1,1024}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# sbatch long options we accept from callers, with the shape of their value. Anything else is refused:
# an allow-list is the only way to keep `--wrap=...` and friends out.
_SBATCH_OPTIONS: dict[str, re.Pattern[str] | None] = {
    "nodes": re.compile(r"[0-9]{1,5}(-[0-9]{1,5})?"),
    "ntasks": re.compile(r"[0-9]{1,6}"),
    "ntasks-per-node": re.compile(r"[0-9]{1,4}"),
    "cpus-per-task": re.compile(r"[0-9]{1,4}"),
    "gpus-per-node": re.compile(r"([A-Za-z0-9_-]{1,32}:)?[0-9]{1,3}"),
    "mem": re.compile(r"[0-9]{1,9}[KMGT]?"),
    "time": re.compile(r"([0-9]{1,4}-)?[0-9]{1,4}(:[0-9]{2}){0,2}"),
    "partition": PARTITION,
    "account": re.compile(r"[A-Za-z0-9_.-]{1,64}"),
    "qos": re.compile(r"[A-Za-z0-9_.-]{1,64}"),
    "reservation": re.compile(r"[A-Za-z0-9_.-]{1,64}"),
    "constraint": re.compile(r"[A-Za-z0-9_&|]{1,128}"),
    "exclude": _NODELIST,
    "nodelist": _NODELIST,
    "array": re.compile(r"[0-9]{1,7}(-[0-9]{1,7})?(:[0-9]{1,7})?(,[0-9]{1,7}(-[0-9]{1,7})?)*(%[0-9]{1,5})?"),
    "signal": re.compile(r"(B:|R:)?[A-Z0-9]{1,8}(@[0-9]{1,6})?"),
    "dependency": re.compile(r"(after|afterok|afterany|afternotok|singleton)(:[0-9_]+)*"),
    "exclusive": None,
    "requeue": None,
    "no-requeue": None,
    "hold": None,
}
#: The sbatch options a profile may set on a helper job (data arrays, export): where it runs, for how long,
#: with how much memory; never its shape (nodes, tasks, CPUs: its template and spec decide those).
HELPER_JOB_SBATCH = ("partition", "time", "mem", "account", "qos", "reservation", "constraint", "exclude")
_IMAGE = re.compile(r"[A-Za-z0-9/][A-Za-z0-9_./:#@+-]{0,511}")  # registry ref or a .sqsh path
_MOUNTS = re.compile(r"/[A-Za-z0-9_./:,+-]{0,1023}")
_PYTHON = re.compile(r"[A-Za-z0-9_./+-]{1,512}")


def _check(field: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str):
        raise UnsafeValueError(field, value, f"must be a string ({what})")
    if not pattern.fullmatch(value):
        raise UnsafeValueError(field, value, f"must be {what}")
    return value


def check_job_name(value: object, field: str = "job_name") -> str:
    return _check(field, value, _JOB_NAME, "1-128 of A-Z a-z 0-9 _ . + - starting with a letter or digit")


def check_run_name(value: object, field: str = "run_name") -> str:
    return _check(field, value, RUN_NAME, "1-63 of a-z 0-9 - starting with a letter or digit")


def check_partition(value: object, field: str = "partition") -> str:
    return _check(field, value, PARTITION, "a Slurm partition name (A-Z a-z 0-9 _ . -)")


def check_job_id(value: object, field: str = "job_id") -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return _check(field, value, _JOB_ID, "a numeric Slurm job id (optionally ARRAYID_TASK)")


def check_nodelist(value: object, field: str = "nodelist") -> str:
    return _check(field, value, _NODELIST, "a Slurm node list such as node[1-2],gpu7")


def is_s3_bucket_name(value: object) -> bool:
    """An S3 bucket name (3-63 of a-z 0-9 . -, no ``..``): the one rule for the data steps' buckets and
    the export's; each caller raises its own error, naming its own field."""
    return isinstance(value, str) and bool(_S3_BUCKET.fullmatch(value)) and ".." not in value


def check_remote_path(value: object, field: str = "path") -> str:
    path = _check(field, value, _PATH, "a path of A-Z a-z 0-9 _ . / % + = , @ - characters")
    if path.startswith("-"):
        raise UnsafeValueError(field, value, "must not start with '-' (it would be read as an option)")
    if ".." in path.split("/"):
        raise UnsafeValueError(field, value, "must not contain '..'")
    return path


def check_sbatch_option(name: object, value: object) -> tuple[str, str | None]:
    """Check one sbatch long option (name without dashes) and its value; flags take ``None``/True."""
    if not isinstance(name, str) or name not in _SBATCH_OPTIONS:
        allowed = ", ".join(sorted(_SBATCH_OPTIONS))
        raise UnsafeValueError("sbatch option", name, f"is not an allowed sbatch option (allowed: {allowed})")
    pattern = _SBATCH_OPTIONS[name]
    if pattern is None:
        if value not in (None, True):
            raise UnsafeValueError(f"sbatch --{name}", value, "is a flag and takes no value")
        return name, None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return name, _check(f"sbatch --{name}", value, pattern, f"a valid --{name} value")


def check_env(env: Mapping[str, object], field: str = "env") -> dict[str, str]:
    """Environment for a job: names are identifiers, values printable single-line text.

    Values are still quoted when they reach a shell; refusing control characters keeps a newline from
    ending an ``export`` line early and NUL from truncating it.
    """
    checked: dict[str, str] = {}
    for name, value in env.items():
        _check(f"{field} name", name, _ENV_NAME, "an identifier (A-Z a-z 0-9 _)")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise UnsafeValueError(f"{field}[{name}]", value, "must be a string or number")
        text = str(value)
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise UnsafeValueError(
                f"{field}[{name}]", value, "must not contain control characters or newlines"
            )
        if len(text) > 4096:
            raise UnsafeValueError(f"{field}[{name}]", value[:40], "is longer than 4096 characters")
        checked[name] = text
    return checked


def check_absolute_path(value: object, field: str) -> str:
    """A remote absolute path with no ``%``: Slurm expands ``%`` in ``--output``, so a folder holding
    one would put the logs somewhere else."""
    path = check_remote_path(value, field)
    if not path.startswith("/"):
        raise UnsafeValueError(field, value, "must be an absolute path")
    if "%" in path:
        raise UnsafeValueError(field, value, "must not contain '%' (Slurm expands it in --output)")
    return path


def check_int_in(value: object, field: str, low: int, high: int) -> int:
    """An int (not a bool) in ``low..high``: it reaches a script as digits only."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UnsafeValueError(field, value, f"must be an integer in {low}..{high}")
    return value


def check_python(value: object, field: str = "python") -> str:
    """The interpreter a helper job runs: a path or bare name, never something read as an option."""
    if not isinstance(value, str) or not _PYTHON.fullmatch(value) or value.startswith("-"):
        raise UnsafeValueError(field, value, "must be an interpreter path or name (A-Z a-z 0-9 _ . / + -)")
    return value


def check_container(image: object, container_mounts: object) -> None:
    """A helper job's pyxis image (registry reference or .sqsh path) and mounts (``/fsx:/fsx[,...]``);
    mounts without an image would be silently ignored, so they are refused."""
    if image is not None and (not isinstance(image, str) or not _IMAGE.fullmatch(image)):
        raise UnsafeValueError("image", image, "must be an image reference or .sqsh path")
    if container_mounts is not None:
        if image is None:
            raise UnsafeValueError("container_mounts", container_mounts, "needs an image")
        if not isinstance(container_mounts, str) or not _MOUNTS.fullmatch(container_mounts):
            raise UnsafeValueError("container_mounts", container_mounts, "must look like /fsx:/fsx[,...]")


def check_job_sbatch(options: Mapping[str, object], allowed: tuple[str, ...], job: str) -> None:
    """A helper job's extra sbatch options: each one of ``allowed`` (``job`` names who asks, for the
    message) and with a value of its option's shape."""
    for key, value in options.items():
        if key not in allowed:
            raise UnsafeValueError("sbatch", key, f"is not one of the options {job} may set {allowed}")
        check_sbatch_option(key, value)
