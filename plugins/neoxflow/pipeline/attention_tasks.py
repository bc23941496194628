"""The continuation's tasks: which runs of record to continue, and the mark that stops it for a person.

``pythia_pretrain_continue`` surveys the runs of a profile and triggers ``pythia_pretrain`` for each
unfinished, idle one (``pipeline/continuation.py`` decides); a run whose job failed in the application
is marked for a person (``<run>.attention.json``) so it is not resubmitted blindly every tick, and only a
person's trigger clears the mark.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shlex
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from neoxflow.pipeline import connections, continuation, lock, record
from neoxflow.pipeline.record_tasks import live_lease, read_record
from neoxflow.pipeline.run_plan import RunPlan
from neoxflow.slurm.naming import train_job_name

log = logging.getLogger(__name__)
q = shlex.quote


def clear_attention(checkpoint_dir: str, *, by_person: bool) -> None:
    path = continuation.attention_path(checkpoint_dir)
    _, out, _ = connections.slurm_hook().run(f"if [ -f {q(path)} ]; then cat {q(path)}; fi")
    if not out.strip():
        return
    if not by_person:
        raise AirflowFailException(
            f"{path}: the run waits for a person ({out.decode()[:300]}); the continuation leaves it alone"
        )
    connections.slurm_hook().run(f"rm -f {q(path)}")
    log.warning("Triggered by a person: cleared %s (%s)", path, out.decode().strip()[:300])


def mark_attention(plan: dict[str, Any] | None, ti) -> str | None:
    """After training: a job that ended in an application failure marks its run for a person
    (``<run>.attention.json``), so the continuation does not resubmit it blindly every tick."""
    from neoxflow.operators.slurm import STATE_KEY

    run = RunPlan.from_dict(plan) if plan else None
    if run is None or run.dry_run:
        raise AirflowSkipException("nothing trained")
    job = ti.xcom_pull(task_ids="train.train_slice", key=STATE_KEY) or {}
    outcome = (job.get("status") or {}).get("outcome")
    if outcome != "app_failure":
        raise AirflowSkipException(f"training outcome {outcome or 'none'}: nothing for a person")
    path = continuation.attention_path(run.layout.checkpoint_dir)
    mark = {
        "reason": f"job {job.get('job_id')} failed in the application at {ti.run_id}",
        "job_id": job.get("job_id"),
        "run_id": ti.run_id,
        "alerted": False,
    }
    connections.slurm_hook().upload(json.dumps(mark).encode(), path)
    log.warning("Run %s waits for a person: %s", run.run_name, path)
    return path


def survey_runs(profile_name: str, channels: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The continuation's survey: a ``pythia_pretrain`` trigger for each unfinished, idle run of record of
    the profile (pipeline/continuation.py says which, and why the others are left alone)."""
    import time

    from neoxflow.neox.profile_loader import load_profile

    profile = load_profile(profile_name)
    hook = connections.slurm_hook()
    _, out, _ = hook.run(continuation.list_runs_command(profile.checkpoints_dir))
    triggers = []
    for name in continuation.run_names(out.decode()):
        ckpt = profile.run_paths(name).checkpoint_dir
        recorded = read_record(record.record_path(ckpt))
        if recorded is None:
            continue
        _, latest, _ = hook.run(f"cat {q(posixpath.join(ckpt, 'latest'))} 2>/dev/null || true")
        _, holder, _ = hook.run(lock.state_command(ckpt + ".lock"))
        _, mark, _ = hook.run(f"cat {q(continuation.attention_path(ckpt))} 2>/dev/null || true")
        state = continuation.RunState(
            run_name=name,
            train_iters=int(recorded.request["train_iters"]),
            latest_iteration=continuation.latest_iteration(latest.decode()),
            active_job=next(iter(hook.active_jobs_named(train_job_name(name))), None),
            lease_holder=live_lease(ckpt + ".lock", lock.live_holder(holder.decode(), time.time())),
            attention=json.loads(mark) if mark.strip() else None,
        )
        decision = continuation.decide(state)
        log.info("Run %s: %s", name, decision.reason)
        if decision.action == "needs_person" and not state.attention.get("alerted"):
            _alert_once(continuation.attention_path(ckpt), state, decision, channels or {})
        if decision.action == "continue":
            triggers.append(
                {
                    "trigger_run_id": continuation.trigger_run_id(name, state.latest_iteration),
                    "conf": {"profile": profile_name, "run_name": name},
                }
            )
    log.info("Continuing %d run(s): %s", len(triggers), [t["conf"]["run_name"] for t in triggers])
    return triggers


def _alert_once(path: str, state, decision, channels: dict[str, Any]) -> None:
    from neoxflow.notifiers.factory import send_alert

    send_alert(
        "needs_person",
        None,
        detail=f"run {state.run_name} {decision.reason}; trigger it again once fixed",
        job_id=state.attention.get("job_id"),
        run_id=state.attention.get("run_id"),
        **{k: v for k, v in channels.items() if v},
    )
    connections.slurm_hook().upload(json.dumps({**state.attention, "alerted": True}).encode(), path)
