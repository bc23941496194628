"""The run of record and the checkpoint-folder lease, as the DAG's tasks use them.

``prepare.plan`` reads or creates the run's record (``pipeline/record.py`` says what it holds and why);
``prepare.lock`` and ``release_lock`` take and free the lease that keeps two DAG runs from training into
one checkpoint folder (``pipeline/lock.py``), and the continuation frees a lease whose DAG run has
ended without freeing it. The pure parts live in those modules; these functions run them over SSH.
"""

from __future__ import annotations

import logging

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from neoxflow.pipeline import connections, lock, record
from neoxflow.pipeline.run_plan import RunPlan

log = logging.getLogger(__name__)


def read_record(path: str) -> record.RunRecord | None:
    _, out, _ = connections.slurm_hook().run(record.read_command(path))
    text = out.decode("utf-8", "replace")
    if not text.strip():
        return None
    try:
        return record.RunRecord.from_json(text)
    except (ValueError, KeyError) as err:
        raise ValueError(f"{path}: {err}") from None


def create_record(planned: record.RunRecord, path: str) -> bool:
    """Write the record on FSx unless a racing first plan did (then hold this plan to that one). True
    when this plan created it. ``ship_code`` copies it to S3 (where the bucket is made sure of)."""
    import uuid

    hook = connections.slurm_hook()
    staged = f"{path}.new.{uuid.uuid4().hex[:8]}"
    hook.upload(planned.to_json().encode(), staged)
    _, out, _ = hook.run(record.create_command(staged, path))
    if out.decode().strip() != "created":
        winner = read_record(path)
        if winner is None:
            raise RuntimeError(f"{path}: the run record was neither created nor found")
        try:
            record.check_against(winner, planned)
        except record.RecordMismatch as err:
            raise AirflowFailException(str(err)) from None
        return False
    return True


def acquire_lock(
    plan: dict, dag_id: str, run_id: str, scheduled: bool, lease_s: int = lock.DEFAULT_LEASE_S
) -> str:
    """Take the run's checkpoint-folder lease (see neoxflow.pipeline.lock); the training watch renews it.

    Returns the owner token (XCom) that the train task renews with and release_lock frees with.
    """
    run = RunPlan.from_dict(plan)
    if run.dry_run:
        raise AirflowSkipException("dry run")
    owner = lock.owner_token(dag_id, run_id)
    lock_dir = run.layout.lock_dir
    status, out, _ = connections.slurm_hook().run(lock.acquire_command(lock_dir, owner, lease_s), check=False)
    answer = lock.parse_acquire(status, out.decode())
    if answer.state == "taken-over":
        log.warning(
            "Checkpoint folder lock %s: taken over from %s, whose lease ran out at %s",
            lock_dir,
            answer.holder,
            _when(answer.until),
        )
    if answer.acquired:
        log.info("Checkpoint folder lock %s: %s (owner %s, lease %ss)", lock_dir, answer.text, owner, lease_s)
        return owner
    log.info("Checkpoint folder lock %s: held by %s until %s", lock_dir, answer.holder, _when(answer.until))
    message = (
        f"run {run.run_name!r} is being trained by {answer.holder} (lock {lock_dir}, lease until "
        f"{_when(answer.until)}); two runs never train into one checkpoint folder"
    )
    if scheduled:
        raise AirflowSkipException(message)
    raise AirflowFailException(message)


def _when(epoch: int | None) -> str:
    import datetime as dt

    if epoch is None:
        return "?"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def release_lock(plan: dict | None, owner: str | None) -> None:
    """Free the lease if this run still holds it (a lease taken over after expiry is someone else's)."""
    if not plan or not owner:
        return
    run = RunPlan.from_dict(plan)
    if run.dry_run:
        return
    lock_dir = run.layout.lock_dir
    status, out, _ = connections.slurm_hook().run(lock.release_command(lock_dir, owner), check=False)
    answer = lock.parse_release(status, out.decode())
    if answer.state == "not-ours":
        log.warning("Checkpoint folder lock %s: not released, %s holds it now", lock_dir, answer.holder)
    else:
        log.info("Checkpoint folder lock %s: %s", lock_dir, answer.text)


def dag_run_state(dag_id: str, run_id: str) -> str:
    """The state of a DAG run, asked through the running task's Task SDK (tasks have no database).

    The SDK answers with its generated ``DagRunState`` enum, whose ``str()`` is ``"DagRunState.FAILED"``,
    not ``"failed"``: the value is what is compared."""
    from airflow.sdk import get_current_context

    state = get_current_context()["ti"].get_dagrun_state(dag_id, run_id)
    return str(getattr(state, "value", state))


def live_lease(lock_dir: str, holder: str | None) -> str | None:
    """The lease's holder, unless it is a DAG run that has ended: then the lease is freed here, for it.

    A DAG run frees its lease in ``release_lock`` (trigger rule all_done), but a person marking the whole
    DAG run failed ends it without that task, and the lease would block the run's continuation until it
    expires (hours). The release is the lock's own compare-and-swap on that holder: a run that took the
    lease meanwhile keeps it. Unknown DAG runs (or a state that cannot be read) keep their lease."""
    if holder is None or (dag_run := lock.owner_dag_run(holder)) is None:
        return holder
    try:
        state = dag_run_state(*dag_run)
    except Exception as err:  # no such DAG run, or no task context: leave the lease to expire
        log.info("Lease of %s kept: the state of DAG run %s is unknown (%s)", lock_dir, dag_run, err)
        return holder
    if state not in ("success", "failed"):
        return holder
    status, out, _ = connections.slurm_hook().run(lock.release_command(lock_dir, holder), check=False)
    answer = lock.parse_release(status, out.decode())
    log.warning("Lease of %s held by DAG run %s, which has %s: %s", lock_dir, dag_run[1], state, answer.text)
    return None if answer.state in ("released", "not-held") else answer.holder
