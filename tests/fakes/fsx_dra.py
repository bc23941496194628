"""A stand-in for the FSx data repository task API, which moto lacks (HTTP 500 NotImplementedError in
moto 5.2.5): the two calls are patched onto moto's FSx response class in an in-process moto server,
so requests still go through the amazon provider's ``AwsBaseHook`` and botocore's real serialisation.

:class:`FakeDraBackend` keeps the tasks. Each describe advances a task one lifecycle step
(PENDING -> EXECUTING -> SUCCEEDED), or to FAILED when a path contains 'broken'. Like AWS, a repeated
ClientRequestToken returns the task created first, and a second task on a file system with one running
is refused (DataRepositoryTaskExecuting). An optional ``importer`` does what the association would do
when the task succeeds: make the S3 objects appear as files under the imported paths.
"""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from collections.abc import Callable, Iterator


class DraError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class FakeDraBackend:
    def __init__(self, importer: Callable[[dict], None] | None = None):
        self.tasks: dict[str, dict] = {}
        self.by_token: dict[str, str] = {}
        self.creates = 0
        self.importer = importer

    def create(self, params: dict) -> dict:
        self.creates += 1
        token = params.get("ClientRequestToken")
        if token in self.by_token:
            return self.tasks[self.by_token[token]]
        if any(
            t["Lifecycle"] in ("PENDING", "EXECUTING") and t["FileSystemId"] == params["FileSystemId"]
            for t in self.tasks.values()
        ):
            raise DraError("DataRepositoryTaskExecuting", "another task is running")
        task_id = f"task-{uuid.uuid4().hex[:17]}"
        self.tasks[task_id] = {
            "TaskId": task_id,
            "Lifecycle": "PENDING",
            "Type": params["Type"],
            "FileSystemId": params["FileSystemId"],
            "Paths": params.get("Paths", []),
            "Report": params["Report"],
            "CreationTime": 0,
        }
        if token:
            self.by_token[token] = task_id
        return self.tasks[task_id]

    def describe(self, params: dict) -> list[dict]:
        found = []
        for task_id in params.get("TaskIds", []):
            task = self.tasks.get(task_id)
            if task is None:
                raise DraError("DataRepositoryTaskNotFound", f"{task_id} not found")
            if task["Lifecycle"] == "PENDING":
                task["Lifecycle"] = "EXECUTING"
            elif task["Lifecycle"] == "EXECUTING":
                if any("broken" in p for p in task["Paths"]):
                    task["Lifecycle"] = "FAILED"
                    task["FailureDetails"] = {"Message": "could not import broken/"}
                else:
                    count = self.importer(task) if self.importer else len(task["Paths"])
                    task["Lifecycle"] = "SUCCEEDED"
                    task["Status"] = {"TotalCount": count, "SucceededCount": count, "FailedCount": 0}
            found.append(task)
        return found

    def fail(self, task_id: str, message: str) -> None:
        """Make a task end FAILED (as if the file system had refused it)."""
        self.tasks[task_id].update(Lifecycle="FAILED", FailureDetails={"Message": message})


@contextlib.contextmanager
def serve_fsx_dra(monkeypatch, conn_id: str, importer: Callable[[dict], None] | None = None) -> Iterator:
    """An in-process moto server whose FSx API gains the data repository task calls, and an Airflow
    AWS connection ``conn_id`` pointing at it. Yields the :class:`FakeDraBackend`."""
    from moto.core.exceptions import JsonRESTError
    from moto.fsx.responses import FSxResponse
    from moto.server import ThreadedMotoServer

    backend = FakeDraBackend(importer)

    def _answer(fn):
        def handler(self):
            try:
                return json.dumps(fn(json.loads(self.body)))
            except DraError as exc:
                raise JsonRESTError(exc.code, str(exc)) from None  # moto turns it into an HTTP 400 AWS error

        return handler

    create = _answer(lambda p: {"DataRepositoryTask": backend.create(p)})
    describe = _answer(lambda p: {"DataRepositoryTasks": backend.describe(p)})
    monkeypatch.setattr(FSxResponse, "create_data_repository_task", create, raising=False)
    monkeypatch.setattr(FSxResponse, "describe_data_repository_tasks", describe, raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    conn = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": f"http://127.0.0.1:{port}", "region_name": "us-east-1"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
    try:
        yield backend
    finally:
        server.stop()
