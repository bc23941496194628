"""The FSx API calls of the data repository task mode: start an import task, describe it.

There is no FSx hook in the amazon provider, so this uses ``AwsBaseHook(client_type="fsx")`` (its
connection handling: region, credentials, the ``endpoint_url`` extra tests point at a fake). Requests
and answers are built and read by the pure :mod:`neoxflow.data.fsx`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

from neoxflow.data.fsx import UNKNOWN, DraTaskState, FsxTaskError, classify_task

#: create_data_repository_task errors worth another try of the task (the others are the request's fault)
_RETRYABLE_CODES = {
    "DataRepositoryTaskExecuting",
    "ThrottlingException",
    "ServiceLimitExceeded",
    "InternalServerError",
}


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
