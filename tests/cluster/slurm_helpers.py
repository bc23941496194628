"""Helpers for tests that run against the local Slurm cluster."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def slurm(*args: str, check: bool = True) -> str:
    """Run a Slurm client command locally (same cluster the SSH connection reaches)."""
    result = subprocess.run(list(args), capture_output=True, text=True, env={**os.environ}, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{args} failed: {result.stderr}")
    return result.stdout


def job_state(job_id: str) -> str:
    out = slurm("scontrol", "show", "job", "-o", job_id, check=False)
    for part in out.split():
        if part.startswith("JobState="):
            return part.split("=", 1)[1]
    return ""


def wait_state(job_id: str, states: set[str], timeout: float = 60) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        state = job_state(job_id)
        if state in states:
            return state
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} never reached {states} (last {job_state(job_id)!r})")


def localcluster(*args: str) -> None:
    subprocess.run(
        [str(REPO / "scripts/localcluster.sh"), *args], check=True, capture_output=True, timeout=120
    )


def unique_dir(fsx: str) -> str:
    path = Path(fsx) / "test-jobs" / uuid.uuid4().hex[:10]
    path.mkdir(parents=True)
    return str(path)


def load_test_dag(dag_id: str):
    """A DAG from tests/dags (imported from its bundle file, as dag.test() needs)."""
    import importlib.util

    path = REPO / "tests" / "dags" / "neoxflow_test_dags.py"
    spec = importlib.util.spec_from_file_location("neoxflow_test_dags", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(d for d in vars(module).values() if getattr(d, "dag_id", None) == dag_id)


def run_dag(dag_id: str, **conf):
    """dag.test() with a unique logical date per call (each run gets its own job names)."""
    return load_test_dag(dag_id).test(logical_date=datetime.now().astimezone(), run_conf=conf)


def ti_states(dagrun) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dagrun.get_task_instances()}
