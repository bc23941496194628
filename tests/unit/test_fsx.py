"""FSx data repository task mode (neoxflow.data.fsx, hooks.fsx, triggers.fsx, operators.fsx).

moto 5.2.5 implements FSx file systems but not data repository tasks (HTTP 500 NotImplementedError), so
these tests extend an in-process moto server with the two calls, as a small fake backend patched onto
moto's FSx response class. The calls go through the real amazon provider ``AwsBaseHook`` with an Airflow
connection whose ``endpoint_url`` points at that server, and through botocore's real serialisation.
"""

from __future__ import annotations

import json

import pytest

from neoxflow.data.fsx import (
    CANCELLED,
    FAILED,
    IMPORT_TASK_TYPE,
    RUNNING,
    SUCCESS,
    UNKNOWN,
    DraTaskState,
    FsxTaskError,
    classify_task,
    client_token,
    import_task_request,
    repository_paths,
)
from neoxflow.hooks.fsx import FsxDataRepository
from neoxflow.triggers.fsx import FsxImportTaskTrigger
from tests.fakes.fsx_dra import serve_fsx_dra

FS_ID = "fs-0123456789abcdef0"

# ------------------------------------------------------------------------------------------- pure parts


def test_paths_are_made_relative_to_the_mount():
    assert repository_paths(["/fsx/data/c4", "/fsx/tokenizers/", "/fsx/data/c4"]) == ["data/c4", "tokenizers"]
    assert repository_paths(["/mnt/lustre/x"], mount_point="/mnt/lustre/") == ["x"]


@pytest.mark.parametrize(
    ("paths", "fragment"),
    [
        (["data/c4"], "must be an absolute path"),
        (["/scratch/c4"], "not under the FSx mount point /fsx"),
        (["/fsxother/c4"], "not under the FSx mount point /fsx"),
        (["/fsx/../etc"], "not under the FSx mount point"),
        (["/fsx/a b"], "holds characters"),
        ([], "no paths given"),
        ([f"/fsx/p{i}" for i in range(101)], "at most 100"),
    ],
)
def test_bad_paths_are_refused(paths, fragment):
    with pytest.raises(FsxTaskError, match=fragment):
        repository_paths(paths)


def test_import_request_shape_and_validation():
    token = client_token("pythia_pretrain", "manual__2026-11-27", "stage")
    request = import_task_request(FS_ID, ["/fsx/data/c4"], token=token, tags={"run": "r1"})
    assert request == {
        "Type": IMPORT_TASK_TYPE,
        "FileSystemId": FS_ID,
        "Paths": ["data/c4"],
        "Report": {"Enabled": False},
        "ClientRequestToken": token,
        "Tags": [{"Key": "run", "Value": "r1"}],
    }
    with_report = import_task_request(FS_ID, ["/fsx/d"], token=token, report_path="s3://bucket/reports")
    assert with_report["Report"] == {
        "Enabled": True,
        "Path": "s3://bucket/reports",
        "Format": "REPORT_CSV_20191124",
        "Scope": "FAILED_FILES_ONLY",
    }
    with pytest.raises(FsxTaskError, match="file_system_id"):
        import_task_request("fs-x; reboot", ["/fsx/d"], token=token)
    with pytest.raises(FsxTaskError, match="client token"):
        import_task_request(FS_ID, ["/fsx/d"], token="has space")
    with pytest.raises(FsxTaskError, match="report_path"):
        import_task_request(FS_ID, ["/fsx/d"], token=token, report_path="/local")


def test_client_token_is_deterministic_and_valid():
    a = client_token("dag", "run-1", "stage")
    assert a == client_token("dag", "run-1", "stage")
    assert a != client_token("dag", "run-2", "stage")
    assert a != client_token("dag", "run-1stage")  # parts are separated, not concatenated
    assert len(a) <= 63 and a.replace("-", "").isalnum()


@pytest.mark.parametrize(
    ("task", "status", "final", "fragment"),
    [
        ({"TaskId": "t1", "Lifecycle": "PENDING"}, RUNNING, False, "is PENDING"),
        ({"TaskId": "t1", "Lifecycle": "EXECUTING"}, RUNNING, False, "is EXECUTING"),
        ({"TaskId": "t1", "Lifecycle": "CANCELING"}, RUNNING, False, "is CANCELING"),
        (
            {
                "TaskId": "t1",
                "Lifecycle": "SUCCEEDED",
                "Status": {"TotalCount": 4, "SucceededCount": 4, "FailedCount": 0},
            },
            SUCCESS,
            True,
            "4 files",
        ),
        (
            {
                "TaskId": "t1",
                "Lifecycle": "SUCCEEDED",
                "Status": {"TotalCount": 4, "SucceededCount": 3, "FailedCount": 1},
            },
            FAILED,
            True,
            "1 of 4 files",
        ),
        (
            {"TaskId": "t1", "Lifecycle": "FAILED", "FailureDetails": {"Message": "bucket gone"}},
            FAILED,
            True,
            "ended FAILED: bucket gone",
        ),
        ({"TaskId": "t1", "Lifecycle": "CANCELED"}, CANCELLED, True, "ended CANCELED"),
        ({"TaskId": "t1", "Lifecycle": "SOMETHING_NEW"}, UNKNOWN, False, "unknown lifecycle"),
        ({"TaskId": "t1"}, UNKNOWN, False, "unknown lifecycle"),
    ],
)
def test_classify_task(task, status, final, fragment):
    state = classify_task(task)
    assert (state.status, state.final) == (status, final)
    assert fragment in state.message
    assert json.loads(json.dumps(state.to_dict()))["status"] == status


# ------------------------------------------------------------------------------------------- moto + shim


@pytest.fixture
def fsx_server(monkeypatch):
    """An in-process moto server whose FSx responses gain the data repository task calls."""
    with serve_fsx_dra(monkeypatch, "neox_fsx_test") as backend:
        yield backend


def _repo() -> FsxDataRepository:
    return FsxDataRepository(aws_conn_id="neox_fsx_test")


def test_import_task_runs_to_success_through_the_aws_hook(fsx_server):
    repo = _repo()
    request = import_task_request(
        FS_ID, ["/fsx/data/c4", "/fsx/tokenizers"], token=client_token("d", "r", "t")
    )
    task_id = repo.start_import(request)
    assert fsx_server.tasks[task_id]["Paths"] == ["data/c4", "tokenizers"]
    assert fsx_server.tasks[task_id]["Type"] == "IMPORT_METADATA_FROM_REPOSITORY"
    seen = []
    for _ in range(5):
        state = repo.describe(task_id)
        seen.append(state.lifecycle)
        if state.final:
            break
    assert seen == ["EXECUTING", "SUCCEEDED"]
    assert state.status == SUCCESS and state.succeeded == 2


def test_retried_start_reuses_the_task_of_the_same_token(fsx_server):
    repo = _repo()
    request = import_task_request(FS_ID, ["/fsx/data"], token=client_token("d", "run-7", "stage"))
    first, second = repo.start_import(request), repo.start_import(request)
    assert first == second and len(fsx_server.tasks) == 1 and fsx_server.creates == 2


def test_failed_import_is_reported_with_its_reason(fsx_server):
    repo = _repo()
    task_id = repo.start_import(import_task_request(FS_ID, ["/fsx/broken"], token="tok-broken"))
    repo.describe(task_id)
    state = repo.describe(task_id)
    assert state.status == FAILED and state.final
    assert "could not import broken/" in state.message


def test_busy_file_system_is_a_retryable_error_and_unknown_tasks_are_refused(fsx_server):
    repo = _repo()
    repo.start_import(import_task_request(FS_ID, ["/fsx/a"], token="tok-a"))
    with pytest.raises(FsxTaskError) as info:
        repo.start_import(import_task_request(FS_ID, ["/fsx/b"], token="tok-b"))
    assert info.value.retryable and "DataRepositoryTaskExecuting" in str(info.value)
    with pytest.raises(FsxTaskError, match="does not exist"):
        repo.describe("task-00000000000000000")


# ------------------------------------------------------------------------------------------- trigger


def test_trigger_serialises_to_primitives_and_back():

    trigger = FsxImportTaskTrigger(
        task_id="task-1", aws_conn_id="c", region_name="eu-west-1", poll_interval=5
    )
    path, kwargs = trigger.serialize()
    assert path == "neoxflow.triggers.fsx.FsxImportTaskTrigger"
    assert json.loads(json.dumps(kwargs)) == kwargs
    again = FsxImportTaskTrigger(**kwargs)
    assert again.serialize() == (path, kwargs)


async def _events(trigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


async def test_trigger_waits_for_the_task_to_end(fsx_server):

    task_id = _repo().start_import(import_task_request(FS_ID, ["/fsx/data"], token="tok-trig"))
    events = await _events(
        FsxImportTaskTrigger(task_id=task_id, aws_conn_id="neox_fsx_test", poll_interval=0)
    )
    assert len(events) == 1
    assert (
        events[0]["status"] == SUCCESS
        and events[0]["task_id"] == task_id
        and events[0]["lifecycle"] == "SUCCEEDED"
    )


async def test_trigger_reports_failure_and_missing_tasks(fsx_server):

    task_id = _repo().start_import(import_task_request(FS_ID, ["/fsx/broken"], token="tok-trig-broken"))
    events = await _events(
        FsxImportTaskTrigger(task_id=task_id, aws_conn_id="neox_fsx_test", poll_interval=0)
    )
    assert [e["status"] for e in events] == [FAILED] and "could not import broken/" in events[0]["message"]
    events = await _events(
        FsxImportTaskTrigger(task_id="task-missing", aws_conn_id="neox_fsx_test", poll_interval=0)
    )
    assert [e["status"] for e in events] == [FAILED] and "does not exist" in events[0]["message"]


async def test_trigger_gives_up_as_unknown_never_as_success(monkeypatch):
    """An endpoint that answers nothing useful: after max_unknown polls the event says unknown."""
    calls = []

    def describe(self, task_id):
        calls.append(task_id)
        return DraTaskState(task_id, "", UNKNOWN, "no answer")

    monkeypatch.setattr(FsxDataRepository, "describe", describe)
    trigger = FsxImportTaskTrigger(task_id="task-x", poll_interval=0, max_unknown=3)
    events = await _events(trigger)
    assert [e["status"] for e in events] == [UNKNOWN] and len(calls) == 3


# ----------------------------------------------------------------------------------- FsxImportOperator


class _Store(dict):
    """task_state_store's get/set, kept across tries like Airflow keeps it."""

    def set(self, key, value):
        self[key] = value


def _ti(try_number: int = 1):
    from types import SimpleNamespace

    return SimpleNamespace(
        dag_id="pythia_pretrain", run_id="manual__1", task_id="data.fsx_import", try_number=try_number
    )


def _spec() -> dict:
    return {
        "file_system_id": FS_ID,
        "paths": ["/fsx/data/c4/raw"],
        "mount_point": "/fsx",
        "repository_path": "s3://b/p/c4/en/",
        "aws_conn_id": "neox_fsx_test",
        "region_name": None,
        "poll_interval": 1,
    }


def test_operator_follows_the_task_of_an_earlier_try_instead_of_starting_another(fsx_server):
    from neoxflow.operators.fsx import STATE_KEY, FsxImportOperator

    op, store = FsxImportOperator(task_id="fsx_import"), _Store()
    first = op._task_to_follow(_repo(), _spec(), store, _ti(1))
    assert store[STATE_KEY] == first and fsx_server.creates == 1
    again = op._task_to_follow(_repo(), _spec(), store, _ti(2))  # retry while it runs (or after success)
    assert again == first and fsx_server.creates == 1


def test_operator_starts_a_new_task_when_the_recorded_one_failed(fsx_server):
    from neoxflow.operators.fsx import STATE_KEY, FsxImportOperator

    op, store = FsxImportOperator(task_id="fsx_import"), _Store()
    first = op._task_to_follow(_repo(), _spec(), store, _ti(1))
    fsx_server.fail(first, "file system busy")
    second = op._task_to_follow(_repo(), _spec(), store, _ti(2))
    assert second != first and store[STATE_KEY] == second
    assert fsx_server.tasks[second]["Lifecycle"] == "PENDING"


def test_operator_is_a_no_op_without_an_association_and_fails_on_a_failed_import():
    from airflow.sdk.exceptions import AirflowException

    from neoxflow.operators.fsx import FsxImportOperator

    class TI:
        def xcom_pull(self, task_ids):
            return {"profile": "local", "data": {"import": None}}

    op = FsxImportOperator(task_id="fsx_import")
    assert op.execute({"ti": TI()}) is None  # copy mode: nothing started, nothing deferred
    ok = {"status": SUCCESS, "task_id": "task-1", "message": "import task task-1 succeeded (4 files)"}
    assert op.execute_complete({}, ok) == ok
    with pytest.raises(AirflowException, match="ended FAILED: disk full"):
        op.execute_complete({}, {"status": FAILED, "message": "import task task-1 ended FAILED: disk full"})
