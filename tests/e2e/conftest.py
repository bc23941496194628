"""End-to-end fixtures: real Airflow services (scripts/airflow_services.sh) on the local cluster.

The services get their own home (.state/airflow-e2e: a new PostgreSQL database each session, on the
private server the script starts for that home) and port (18794, NEOXFLOW_E2E_API_PORT), so a running
`make demo` is left alone. They run highly available, as a deployment would: two schedulers and two
triggerers (NEOXFLOW_E2E_SCHEDULERS, NEOXFLOW_E2E_TRIGGERERS), so every test also runs on two of each and
the fault tests can kill one. They are started once per session and stopped at the end. Tests talk to
them only through the REST API, the UI and the cluster's own tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))

import airflow_rest  # noqa: E402
import demo_run  # noqa: E402

DAG_ID = "pythia_pretrain"
SERVICES = REPO / "scripts" / "airflow_services.sh"
E2E_HOME = REPO / ".state" / "airflow-e2e"
SHOTS = REPO / ".state" / "e2e-screenshots"


@dataclass
class Services:
    """The running services: the REST client, and the script that started them (for fault injection)."""

    api: airflow_rest.AirflowAPI
    env: dict[str, str]
    home: Path

    def script(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(SERVICES), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"airflow_services.sh {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result


@pytest.fixture(scope="session")
def services(cluster_env) -> Services:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env["NEOXFLOW_AIRFLOW_HOME"] = str(E2E_HOME)
    env["NEOXFLOW_API_PORT"] = os.environ.get("NEOXFLOW_E2E_API_PORT", "18794")
    env["NEOXFLOW_UNPAUSE"] = DAG_ID
    env["NEOXFLOW_SCHEDULERS"] = os.environ.get("NEOXFLOW_E2E_SCHEDULERS", "2")
    env["NEOXFLOW_TRIGGERERS"] = os.environ.get("NEOXFLOW_E2E_TRIGGERERS", "2")
    down = [str(SERVICES), "down"]
    subprocess.run(down, env=env, capture_output=True, timeout=180)  # leftovers of an aborted session
    shutil.rmtree(E2E_HOME, ignore_errors=True)
    t0 = time.monotonic()
    up = subprocess.run([str(SERVICES), "up"], env=env, capture_output=True, text=True, timeout=420)
    if up.returncode != 0:
        subprocess.run(down, env=env, capture_output=True, timeout=180)
        pytest.fail(f"airflow_services.sh up failed (exit {up.returncode}):\n{up.stderr[-4000:]}")
    print(f"\n[e2e] services up in {time.monotonic() - t0:.0f}s")
    try:
        yield Services(airflow_rest.from_env_file(E2E_HOME / "api.env"), env, E2E_HOME)
    finally:
        subprocess.run(down, env=env, capture_output=True, timeout=180)
        # components their supervisor started again (an Airflow crash, not a fault a test injected): said
        # in the session's output so a flaky Airflow shows in CI's log
        crashes = E2E_HOME / "logs" / "services" / "crashes.log"
        if crashes.exists():
            print(f"\n[e2e] components that exited by themselves and were restarted:\n{crashes.read_text()}")


@pytest.fixture
def api(services) -> airflow_rest.AirflowAPI:
    return services.api


@pytest.fixture
def fsx(cluster_env) -> Path:
    return Path(cluster_env["NEOXFLOW_FSX"])


def _unique_name(request, suffix: str = "") -> str:
    tag = request.node.name.removeprefix("test_").replace("_", "-")[:20].strip("-")
    return f"e2e-{tag}-{time.strftime('%H%M%S')}{suffix}"


def remove_run(name: str, fsx: Path, cluster_env: dict[str, str]) -> None:
    """Cancel the run's jobs, remove its FSx folders, record and S3 copies."""
    scancel = ["scancel", f"--name=nxf-train-{name}"]
    subprocess.run(scancel, capture_output=True, timeout=30, env={**os.environ})
    for path in (fsx / "checkpoints" / name, fsx / "runs" / name):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(fsx / "checkpoints" / f"{name}.lock", ignore_errors=True)
    for suffix in (".record.json", ".attention.json"):  # else the continuation would carry it on later
        (fsx / "checkpoints" / f"{name}{suffix}").unlink(missing_ok=True)
    _delete_s3_copies(cluster_env, name)


@pytest.fixture
def run_name(request, fsx, cluster_env):
    """A unique run name; afterwards its jobs are cancelled and its FSx folders and S3 copies removed."""
    name = _unique_name(request)
    yield name
    remove_run(name, fsx, cluster_env)


@pytest.fixture
def reference_run_name(request, fsx, cluster_env):
    """A second unique run name (a reference run beside ``run_name``), removed the same way."""
    name = _unique_name(request, "-ref")
    yield name
    remove_run(name, fsx, cluster_env)


def _delete_s3_copies(cluster_env: dict[str, str], name: str) -> None:
    try:
        s3 = demo_run.aws_client(cluster_env)
        for bucket in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [o["Key"] for o in page.get("Contents", []) if f"/{name}/" in f"/{o['Key']}"]
                for key in keys:
                    s3.delete_object(Bucket=bucket, Key=key)
    except Exception as err:  # noqa: BLE001 - cleanup must not hide the test's own result
        print(f"[e2e] could not remove S3 copies of {name}: {err}")


def verified_s3_tags(cluster_env: dict[str, str], plan: dict, name: str) -> set[str]:
    """Checkpoint tags of the run with a verified copy (export manifest) in the plan's bucket."""
    bucket, prefix = plan["s3"]["bucket"], plan["s3"]["prefix"].strip("/")
    try:
        keys = demo_run.list_s3(cluster_env, bucket, prefix + "/")
    except Exception:  # noqa: BLE001 - no bucket yet: no copies
        return set()
    return {tag for tag, c in demo_run.s3_checkpoint_copies(keys, name).items() if c["verified"]}


def task_states(api, run_id: str) -> dict[str, str | None]:
    return {ti["task_id"]: ti["state"] for ti in api.task_instances(DAG_ID, run_id)}


def task_instance(api, run_id: str, task_id: str) -> dict:
    return next(ti for ti in api.task_instances(DAG_ID, run_id) if ti["task_id"] == task_id)


def train_trigger(api, run_id: str, task_id: str = "train.train_slice") -> tuple[int, int, datetime] | None:
    """(trigger id, triggerer job id, that job's start) of the deferred training task, once assigned."""
    ti = task_instance(api, run_id, task_id)
    trigger, job = ti.get("trigger") or {}, ti.get("triggerer_job") or {}
    if ti["state"] != "deferred" or not job.get("id") or job["id"] != trigger.get("triggerer_id"):
        return None
    return trigger["id"], job["id"], datetime.fromisoformat(job["start_date"].replace("Z", "+00:00"))


STALE_SUCCESS = "finished with state success, but the task instance's state attribute is"


def airflow_race_retries(run_id: str, task_id: str, scheduler_log: Path | None = None) -> int:
    """Tries of ``task_id`` that Airflow itself ended, not neoxflow: the scheduler (3.3.2) can process the
    worker's "success" from its exit after ``defer()`` only after the trigger has queued the task again,
    call it a state mismatch and mark the try for retry (apache/airflow#67287; the fix for a queued task
    is not in 3.3.2). The retry then adopts the Slurm job of the earlier try, which the tests check
    separately (one job). Counted from the scheduler's log: a mismatch for this task instance followed
    by its retry or failure, in the given log or else in each scheduler's (scheduler.log, scheduler-2.log)."""
    services = E2E_HOME / "logs" / "services"
    logs = [scheduler_log] if scheduler_log else sorted(services.glob("scheduler*.log"))
    ti = f"<TaskInstance: {DAG_ID}.{task_id} {run_id} ["
    ended = (f"task_id={task_id}, run_id={run_id},", "Marking task as ")
    count = 0
    for log in logs:
        pending = False  # the scheduler that logged the mismatch is the one that marks the retry
        for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
            if STALE_SUCCESS in line and ti in line:
                pending = True
            elif pending and all(part in line for part in ended):
                count, pending = count + 1, False
    return count
