"""Optional staging mode for an FSx for Lustre file system linked to S3 by a data repository association.

With a data repository association (DRA) the file system can list the bucket's objects itself: an
``IMPORT_METADATA_FROM_REPOSITORY`` data repository task makes new S3 objects appear as files under
the association's path, and Lustre loads their contents lazily on first read. That replaces the
``stage_to_fsx.py`` array job when the cluster has a DRA; the copy-based job stays the default because
it also works without one and verifies checksums.

This module holds the pure parts (request building, path mapping, idempotency token, status
classification). The two calls that touch AWS are :class:`neoxflow.hooks.fsx.FsxDataRepository`'s; an
operator (:mod:`neoxflow.operators.fsx`) starts the task on a worker (with a deterministic client token,
so a retry gets the same task), then defers to :class:`neoxflow.triggers.fsx.FsxImportTaskTrigger`,
which polls the hook in the triggerer without holding a worker slot.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

IMPORT_TASK_TYPE = "IMPORT_METADATA_FROM_REPOSITORY"
REPORT_FORMAT = "REPORT_CSV_20191124"
MAX_PATHS = 100  # the FSx API accepts at most 100 paths per task

RUNNING = "running"
SUCCESS = "success"
FAILED = "failed"
CANCELLED = "cancelled"
UNKNOWN = "unknown"

_LIFECYCLE = {
    "PENDING": RUNNING,
    "EXECUTING": RUNNING,
    "CANCELING": RUNNING,  # not final: the task may still finish or end CANCELED
    "SUCCEEDED": SUCCESS,
    "FAILED": FAILED,
    "CANCELED": CANCELLED,
}
_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_FS_ID = re.compile(r"fs-[0-9a-f]{8,17}")
_PATH_PART = re.compile(r"[A-Za-z0-9_.+=@,-]+")
# Errors worth trying again later (another task is running on the file system, throttling).


class FsxTaskError(RuntimeError):
    """Starting or following a data repository task failed; ``retryable`` says if a retry may help."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class DraTaskState:
    """What a data repository task is doing, reduced to what a pipeline decides on."""

    task_id: str
    lifecycle: str
    status: str
    message: str
    total: int | None = None
    succeeded: int | None = None
    failed: int | None = None

    @property
    def final(self) -> bool:
        return self.status in (SUCCESS, FAILED, CANCELLED)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable, for trigger events and XCom."""
        return {
            "task_id": self.task_id,
            "lifecycle": self.lifecycle,
            "status": self.status,
            "message": self.message,
            "total": self.total,
            "succeeded": self.succeeded,
            "failed": self.failed,
        }


def repository_paths(paths: Iterable[str], *, mount_point: str = "/fsx") -> list[str]:
    """Map absolute paths on the mount (``/fsx/data/c4``) to the relative paths FSx expects (``data/c4``).

    Refuses paths outside the mount, ``..`` and unusual characters, with a message naming the path.
    """
    mount = posixpath.normpath(mount_point)
    if not mount.startswith("/"):
        raise FsxTaskError(f"mount_point {mount_point!r} must be absolute")
    out: list[str] = []
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise FsxTaskError(f"path {path!r} must be an absolute path under {mount}")
        norm = posixpath.normpath(path)
        if ".." in path.split("/") or (norm != mount and not norm.startswith(mount.rstrip("/") + "/")):
            raise FsxTaskError(f"path {path!r} is not under the FSx mount point {mount}")
        rel = posixpath.relpath(norm, mount)
        if rel != "." and not all(_PATH_PART.fullmatch(part) for part in rel.split("/")):
            raise FsxTaskError(f"path {path!r} holds characters other than A-Z a-z 0-9 _ . + = @ , -")
        if rel not in out:
            out.append(rel)
    if not out:
        raise FsxTaskError("no paths given for the import task")
    if len(out) > MAX_PATHS:
        raise FsxTaskError(f"{len(out)} paths given; a data repository task takes at most {MAX_PATHS}")
    return out


def client_token(*parts: str) -> str:
    """A ClientRequestToken derived from e.g. (dag_id, run_id, task_id): a retried task that calls
    ``create_data_repository_task`` again gets the task already created instead of a second one."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"neoxflow-{digest[:40]}"


def import_task_request(
    file_system_id: str,
    paths: Iterable[str],
    *,
    token: str,
    mount_point: str = "/fsx",
    report_path: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments of ``fsx.create_data_repository_task`` for a metadata import (pure)."""
    if not isinstance(file_system_id, str) or not _FS_ID.fullmatch(file_system_id):
        raise FsxTaskError(f"file_system_id {file_system_id!r} is not an FSx id like fs-0123456789abcdef0")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise FsxTaskError(f"client token {token!r} must be 1-63 of A-Z a-z 0-9 _ . -")
    report: dict[str, Any] = {"Enabled": False}
    if report_path is not None:
        if not report_path.startswith("s3://"):
            raise FsxTaskError(f"report_path {report_path!r} must be an s3:// URI inside the association")
        report = {"Enabled": True, "Path": report_path, "Format": REPORT_FORMAT, "Scope": "FAILED_FILES_ONLY"}
    request: dict[str, Any] = {
        "Type": IMPORT_TASK_TYPE,
        "FileSystemId": file_system_id,
        "Paths": repository_paths(paths, mount_point=mount_point),
        "Report": report,
        "ClientRequestToken": token,
    }
    if tags:
        request["Tags"] = [{"Key": str(k), "Value": str(v)} for k, v in tags.items()]
    return request


def classify_task(task: Mapping[str, Any]) -> DraTaskState:
    """Reduce one ``DataRepositoryTasks`` item of a describe answer to a :class:`DraTaskState` (pure).

    A SUCCEEDED task that still reports failed files is treated as a failure: a partial import would
    leave the tokenizer with missing shards.
    """
    lifecycle = str(task.get("Lifecycle", "")).upper()
    status = _LIFECYCLE.get(lifecycle, UNKNOWN)
    counts = task.get("Status") or {}
    total, succeeded, failed = (counts.get(k) for k in ("TotalCount", "SucceededCount", "FailedCount"))
    reason = (task.get("FailureDetails") or {}).get("Message", "")
    task_id = str(task.get("TaskId", "?"))
    if status == SUCCESS and failed:
        status = FAILED
        reason = reason or f"{failed} of {total} files failed to import"
    if status == SUCCESS:
        message = f"import task {task_id} succeeded ({succeeded if succeeded is not None else '?'} files)"
    elif status == RUNNING:
        message = f"import task {task_id} is {lifecycle}"
    elif status == UNKNOWN:
        message = f"import task {task_id} has an unknown lifecycle {lifecycle or '(none)'}; asking again"
    else:
        message = f"import task {task_id} ended {lifecycle}" + (f": {reason}" if reason else "")
    return DraTaskState(task_id, lifecycle, status, message, total, succeeded, failed)
