"""Optional staging mode for an FSx for Lustre file system linked to S3 by a data repository association.

With a data repository association (DRA) the file system can list the bucket's objects itself: an
``IMPORT_METADATA_FROM_REPOSITORY`` data repository task makes new S3 objects appear as files under
the association's path, and Lustre loads their contents lazily on first read. That replaces the
``stage_to_fsx.py`` array job when the cluster has a DRA; the copy-based job stays the default because
it also works without one and verifies checksums.

There is no FSx hook in the amazon provider, so this uses ``AwsBaseHook(client_type="fsx")``. The pure
parts (request building, path mapping, idempotency token, status classification) are separate from the
two calls that touch AWS: an operator starts the task on a worker (with a deterministic client token,
so a retry gets the same task), then defers to :class:`FsxImportTaskTrigger`, which polls
:meth:`FsxDataRepository.describe` in the triggerer without holding a worker slot.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

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
_RETRYABLE_CODES = {
    "DataRepositoryTaskExecuting",
    "ThrottlingException",
    "ServiceLimitExceeded",
    "InternalServerError",
}


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


def _error_code(exc: BaseException) -> str:
    return str((getattr(exc, "response", None) or {}).get("Error", {}).get("Code", ""))


class FsxDataRepository:
    """The two AWS calls of the DRA mode, through the amazon provider's connection handling.

    :param aws_conn_id: Airflow AWS connection (its ``endpoint_url`` extra points tests at moto).
    :param region_name: overrides the connection's region.
    """

    def __init__(self, *, aws_conn_id: str | None = "aws_default", region_name: str | None = None):
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    @cached_property
    def hook(self):
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

        return AwsBaseHook(aws_conn_id=self.aws_conn_id, client_type="fsx", region_name=self.region_name)

    @property
    def client(self):
        return self.hook.conn

    def start_import(self, request: Mapping[str, Any]) -> str:
        """Create the task from :func:`import_task_request` output; return its TaskId."""
        from botocore.exceptions import ClientError

        try:
            answer = self.client.create_data_repository_task(**request)
        except ClientError as exc:
            code = _error_code(exc)
            raise FsxTaskError(
                f"create_data_repository_task on {request.get('FileSystemId')}: {code}: {exc}",
                retryable=code in _RETRYABLE_CODES,
            ) from None
        return str(answer["DataRepositoryTask"]["TaskId"])

    def describe(self, task_id: str) -> DraTaskState:
        """Current state of one task. An empty answer is UNKNOWN (ask again), never success."""
        from botocore.exceptions import ClientError

        try:
            answer = self.client.describe_data_repository_tasks(TaskIds=[task_id])
        except ClientError as exc:
            code = _error_code(exc)
            if code == "DataRepositoryTaskNotFound":
                raise FsxTaskError(f"data repository task {task_id} does not exist") from None
            return DraTaskState(task_id, "", UNKNOWN, f"describe {task_id} failed ({code}); asking again")
        tasks = [t for t in answer.get("DataRepositoryTasks", []) if t.get("TaskId") == task_id]
        if not tasks:
            return DraTaskState(task_id, "", UNKNOWN, f"describe {task_id} returned no task; asking again")
        return classify_task(tasks[0])


class FsxImportTaskTrigger(BaseTrigger):
    """Waits in the triggerer for a data repository task to end, holding no worker slot.

    Yields one event ``{"status": ..., "task_id": ..., "message": ..., ...}`` (see :class:`DraTaskState`)
    when the task is final, or ``status="unknown"`` after ``max_unknown`` answers in a row that were
    empty or failed - never a guessed success. The boto3 call runs in a thread (``asyncio.to_thread``)
    so the triggerer's event loop is never blocked; it is a short request, not a long poll.

    :param task_id: the data repository task id (``task-...``).
    :param aws_conn_id: Airflow AWS connection id.
    :param region_name: optional region override.
    :param poll_interval: seconds between describe calls.
    :param max_unknown: consecutive unknown answers before giving the decision back to the operator.
    """

    def __init__(
        self,
        *,
        task_id: str,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        poll_interval: float = 30.0,
        max_unknown: int = 10,
    ):
        super().__init__()
        self.task_id = task_id
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.poll_interval = poll_interval
        self.max_unknown = max_unknown

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "task_id": self.task_id,
                "aws_conn_id": self.aws_conn_id,
                "region_name": self.region_name,
                "poll_interval": self.poll_interval,
                "max_unknown": self.max_unknown,
            },
        )

    async def run(self):
        repo = FsxDataRepository(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        unknown = 0
        while True:
            try:
                state = await asyncio.to_thread(repo.describe, self.task_id)
            except FsxTaskError as exc:
                yield TriggerEvent({"status": FAILED, "task_id": self.task_id, "message": str(exc)})
                return
            except Exception as exc:  # noqa: BLE001 - a failed poll is not a verdict
                state = DraTaskState(self.task_id, "", UNKNOWN, f"describe {self.task_id} raised {exc!r}")
            if state.final:
                yield TriggerEvent(state.to_dict())
                return
            unknown = unknown + 1 if state.status == UNKNOWN else 0
            if unknown >= self.max_unknown:
                yield TriggerEvent(state.to_dict())
                return
            self.log.info("%s", state.message)
            await asyncio.sleep(self.poll_interval)
