"""SlurmOperator and SlurmJobSensor on the real local cluster, through real sshd, via dag.test().

dag.test() runs the deferrable path for real: the operator defers, the trigger runs inline (asyncssh to
the local sshd), and execute_complete maps the verdict.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import pytest

from neoxflow.hooks.slurm import AsyncSlurmSSHHook, HostKeyRefused, SlurmSSHHook, is_host_key_error
from tests.cluster.slurm_helpers import localcluster, run_dag, slurm, ti_states, unique_dir, wait_state

pytestmark = [pytest.mark.cluster]


def run_job(workdir, script, **conf):
    """One SlurmOperator task (DAG nxf_test_slurm_job) on the local cluster."""
    return run_dag("nxf_test_slurm_job", script=script, remote_dir=workdir, **conf)


def when_file_appears(path: Path, action, delay: float = 1.0) -> threading.Thread:
    """Run ``action`` in a thread once ``path`` exists (the job has started), after ``delay`` seconds."""

    def wait_then_act():
        end = time.monotonic() + 90
        while not path.exists() and time.monotonic() < end:
            time.sleep(0.2)
        time.sleep(delay)
        action()

    thread = threading.Thread(target=wait_then_act)
    thread.start()
    return thread


def task_log(capfd) -> str:
    """What the run printed so far: dag.test() sends task and trigger logs to stdout (structlog)."""
    out, err = capfd.readouterr()
    return out + err


@pytest.fixture
def workdir(cluster_env, airflow_db):
    return unique_dir(cluster_env["NEOXFLOW_FSX"])


def test_one_node_job_succeeds_and_streams_output(workdir, capfd):
    run = run_job(workdir, "#!/bin/bash\necho hello-from-$SLURMD_NODENAME\n")
    log = task_log(capfd)
    assert ti_states(run) == {"job": "success"}
    assert "hello-from-node" in log  # the job's stdout reached the task log
    scripts = list(Path(workdir).glob("nxf-job-*/job-*.sbatch"))
    assert len(scripts) == 1 and scripts[0].read_text().startswith("#!/bin/bash")


def test_two_node_job_runs_one_task_per_node(workdir, capfd):
    script = "#!/bin/bash\nsrun -l printenv SLURMD_NODENAME\n"
    run = run_job(workdir, script, sbatch_options={"nodes": 2, "ntasks-per-node": 1})
    log = task_log(capfd)
    assert ti_states(run) == {"job": "success"}
    assert "0: node1" in log and "1: node2" in log


def test_exit_code_3_fails_naming_it(workdir, capfd):
    run = run_job(workdir, "#!/bin/bash\necho about to fail\nexit 3\n")
    log = task_log(capfd)
    assert ti_states(run) == {"job": "failed"}
    assert "state FAILED, exit code 3" in log
    assert "application failure" in log
    assert "about to fail" in log  # last log lines in the failure message


def test_array_job_waits_for_all_tasks_and_names_the_failing_one(workdir, capfd):
    script = (
        '#!/bin/bash\nsleep 1\n[ "$SLURM_ARRAY_TASK_ID" = 2 ] && exit 5\necho task $SLURM_ARRAY_TASK_ID ok\n'
    )
    run = run_job(workdir, script, array="0-3%2")
    log = task_log(capfd)
    assert ti_states(run) == {"job": "failed"}
    assert "exit code 5" in log and "1/4 array tasks" in log
    outputs = sorted(p.name for p in Path(workdir).glob("nxf-job-*/slurm-*_*.out"))
    assert len(outputs) == 4  # every task ran before the verdict


def test_array_job_success(workdir):
    run = run_job(workdir, "#!/bin/bash\necho $SLURM_ARRAY_TASK_ID\n", array="0-2")
    assert ti_states(run) == {"job": "success"}


def test_node_fail_is_an_infrastructure_failure(workdir, capfd):
    marker = Path(workdir) / "started"
    thread = when_file_appears(
        marker, lambda: slurm("scontrol", "update", "nodename=node2", "state=down", "reason=neoxflow-test")
    )
    try:
        run = run_job(workdir, f"#!/bin/bash\ntouch {marker}\nsrun sleep 60\n", sbatch_options={"nodes": 2})
    finally:
        thread.join()
        slurm("scontrol", "update", "nodename=node2", "state=resume", check=False)
    log = task_log(capfd)
    assert ti_states(run) == {"job": "failed"}
    assert "state NODE_FAIL" in log and "infrastructure failure" in log


def test_requeued_job_is_followed_to_its_end(workdir):
    marker = Path(workdir) / "runs"
    script = (
        "#!/bin/bash\n"
        f"echo run $SLURM_RESTART_COUNT >> {marker}\n"
        'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then srun sleep 60; fi\n'
        "echo finished after restart\n"
    )

    def requeue():
        job = slurm("squeue", "-h", "-o", "%i", "-n", "requeue-me").split()[0]
        slurm("scontrol", "requeue", job)
        # Slurm holds a requeued batch job for 120 s (Reason=BeginTime) once its first run has ended; the
        # test is about following it to its end, not about waiting: release it then, as an admin would
        end = time.monotonic() + 60
        while "BeginTime" not in slurm("squeue", "-h", "-j", job, "-o", "%r") and time.monotonic() < end:
            time.sleep(0.5)
        slurm("scontrol", "update", f"jobid={job}", "StartTime=now")

    thread = when_file_appears(marker, requeue)
    try:
        run = run_job(workdir, script, job_name="requeue-me", sbatch_options={"nodes": 2, "requeue": True})
    finally:
        thread.join()
    assert ti_states(run) == {"job": "success"}
    assert marker.read_text().split("\n")[:2] == ["run", "run 1"]


def test_retry_reattaches_to_the_running_job(workdir):
    """A new try of the same task instance finds the live job by its deterministic name: one job only."""
    ledger = Path(workdir) / "ledger"
    script = f"#!/bin/bash\necho $SLURM_JOB_ID >> {ledger}\nsleep 25\n"  # outlives dag.test start-up
    hook = SlurmSSHHook("neoxflow_cluster")  # an earlier try's job, still running under the task's name
    job_dir = Path(workdir) / "reattach-me"
    hook.upload(script.encode(), f"{job_dir}/earlier.sbatch")
    earlier = hook.submit(
        f"{job_dir}/earlier.sbatch", job_name="reattach-me", output=f"{job_dir}/slurm-%j.out"
    )
    wait_state(earlier, {"RUNNING"})
    run = run_job(workdir, script, job_name="reattach-me")
    assert ti_states(run) == {"job": "success"}
    assert ledger.read_text().split() == [earlier]  # exactly one job ran
    (ti,) = run.get_task_instances()
    assert str(ti.xcom_pull(task_ids="job", key="job_id")) == earlier


def test_sensor_waits_for_a_job_from_elsewhere(workdir):
    hook = SlurmSSHHook("neoxflow_cluster")
    hook.upload(b"#!/bin/bash\nsleep 2\n", f"{workdir}/ext.sbatch")
    job = hook.submit(f"{workdir}/ext.sbatch", job_name="external", output=f"{workdir}/ext-%j.out")
    run = run_dag("nxf_test_slurm_sensor", job_id=job)
    assert ti_states(run) == {"wait": "success"}


WRONG_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def _connection_with_host_key(monkeypatch, cluster_env, tmp_path, host_key: str | None) -> str:
    """A copy of the cluster's connection with another pinned key, or none; HOME moved to an empty folder
    so that no ~/.ssh/known_hosts of this machine can vouch for the server."""
    conn = json.loads(cluster_env["AIRFLOW_CONN_NEOXFLOW_CLUSTER"])
    conn["extra"].pop("host_key", None)
    if host_key:
        conn["extra"]["host_key"] = host_key  # a well-formed ed25519 key that is not the server's
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_HOST_KEY_CHECK", json.dumps(conn))
    return "host_key_check"


@pytest.mark.parametrize("host_key", [WRONG_KEY, None], ids=["wrong key", "no key"])
def test_a_wrong_or_missing_host_key_is_refused_by_the_blocking_hook(
    monkeypatch, cluster_env, tmp_path, host_key
):
    conn_id = _connection_with_host_key(monkeypatch, cluster_env, tmp_path, host_key)
    with pytest.raises(HostKeyRefused, match="host_key") as refused:
        SlurmSSHHook(conn_id).run("true")
    expected = "BadHostKeyException" if host_key else "SSHException"  # paramiko's: wrong key, unknown host
    assert type(refused.value.__cause__).__name__ == expected and is_host_key_error(refused.value)


@pytest.mark.parametrize("host_key", [WRONG_KEY, None], ids=["wrong key", "no key"])
def test_a_wrong_or_missing_host_key_is_refused_by_the_trigger_hook_without_retrying(
    monkeypatch, cluster_env, tmp_path, host_key
):
    conn_id = _connection_with_host_key(monkeypatch, cluster_env, tmp_path, host_key)
    hook = AsyncSlurmSSHHook(conn_id, max_backoff=30.0)
    started = time.monotonic()
    with pytest.raises(Exception) as refused:
        asyncio.run(hook.run_with_retry("true", attempts=5))
    assert is_host_key_error(refused.value), repr(refused.value)
    assert time.monotonic() - started < 10, "a refused host key must not be retried with backoff"
    # the same hook on the real connection works: the refusal was the key, not the server
    assert asyncio.run(AsyncSlurmSSHHook("neoxflow_cluster").run("true"))[0] == 0


@pytest.mark.parametrize("service", ["sshd", "slurmctld"])
def test_watch_survives_service_restart(workdir, service, capfd, cluster_env):
    marker = Path(workdir) / "started"
    pid_file = Path(cluster_env["SLURM_CONF"]).parents[1] / "run" / f"{service}.pid"
    pid_before = pid_file.read_text()
    thread = when_file_appears(marker, lambda: localcluster("restart", service, "3"))
    try:
        run = run_job(workdir, f"#!/bin/bash\ntouch {marker}\nsleep 8\necho survived\n")
    finally:
        thread.join()
    log = task_log(capfd)
    assert ti_states(run) == {"job": "success"}
    assert "survived" in log
    assert pid_file.read_text() != pid_before  # the service really restarted while the job ran
    if service == "sshd":
        assert "retrying in" in log  # the dropped connection was seen and re-opened
