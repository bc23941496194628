"""The Python tasks of pythia_pretrain (the DAG file only wires them). Each talks to the cluster over the
Slurm SSH hook or to S3 through the amazon provider; none moves training data itself.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shlex
from typing import Any

from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from neoxflow.data.shards import shard_stem
from neoxflow.hooks.slurm import SlurmSSHHook
from neoxflow.pipeline import continuation, lock, record
from neoxflow.pipeline.export_job import export_job
from neoxflow.pipeline.plan import (
    checkpoint_expectation,
    cluster_code_files,
    dataset_selection,
    manifest_texts,
    plan_choices_line,
    plan_run,
)

log = logging.getLogger(__name__)
DRY_RUN_MANIFEST_LINES = 8  # a dry run's log shows the head of each manifest, not 1025 lines
SSH_CONN_ID = "neoxflow_cluster"
AWS_CONN_ID = "aws_default"
q = shlex.quote


def make_plan(params: dict[str, Any], run_id: str = "") -> dict[str, Any]:
    """Validate the trigger form and render everything, starting from the run of record when the run has
    one (pipeline/record.py); a dry run logs every script and config and writes nothing.

    A run that waits for a person after an application failure (``<run>.attention.json``) is continued
    only by a person: the continuation's DAG runs (``continue__...``) stop here; any other trigger is a
    person's, and clears the mark."""
    from neoxflow.pipeline.request import RequestError

    form = dict(params)
    try:
        checkpoint_dir = checkpoint_dir_of(form)
        if not form.get("dry_run"):
            clear_attention(checkpoint_dir, by_person=not run_id.startswith("continue__"))
        recorded_at = record.record_path(checkpoint_dir)
        recorded = read_record(recorded_at)
        form = record.merge_form(form, recorded)
        plan = plan_run(form)
        planned = record.record_from_plan(plan, form)
        if recorded is not None:
            record.check_against(recorded, planned)
    except RequestError as err:
        raise AirflowFailException(f"invalid trigger form: {err}") from None
    except (ValueError, OSError) as err:
        raise AirflowFailException(str(err)) from None
    created = False
    if recorded is None and not plan["dry_run"]:
        created = create_record(planned, recorded_at)
    plan["record"] = {"path": recorded_at, "fixed_hash": planned.fixed_hash, "created": created}
    log.info(
        "Run of record %s (fixed part %s): %s",
        plan["run_name"],
        planned.fixed_hash,
        "created now" if created else "continued" if recorded is not None else "none yet (dry run)",
    )
    log.info(plan_choices_line(plan["config"]))
    if plan["dry_run"]:
        log.info(
            "DRY RUN of %s - nothing will be submitted. Rendered NeoX config (%s):\n%s",
            plan["run_name"],
            plan["config"]["path"],
            plan["config"]["rendered"],
        )
        log.info(
            "--- train: %s (%s)\n%s",
            plan["train"]["job_name"],
            plan["train"]["template"],
            plan["train"]["script"],
        )
        export = plan["export"]
        log.info(
            "--- export: %s/%s (shown for %s; at export time: %s)\n%s",
            export["remote_dir"],
            export["job_name"],
            ", ".join(export["tags"]),
            export["tags_at_export"],
            export["script"],
        )
        for step, job in plan["data"].items():
            if isinstance(job, dict) and "script" in job:
                log.info("--- %s: %s/%s\n%s", step, job["remote_dir"], job["job_name"], job["script"])
        for path, text in manifest_texts(plan).items():
            lines = text.splitlines()
            shown = "\n".join(lines[:DRY_RUN_MANIFEST_LINES])
            more = (
                f"\n... {len(lines) - DRY_RUN_MANIFEST_LINES} more"
                if len(lines) > DRY_RUN_MANIFEST_LINES
                else ""
            )
            log.info("--- manifest %s (%d lines)\n%s%s", path, len(lines), shown, more)
    log.info("%s", plan_summary(plan))
    return plan


def plan_summary(plan: dict[str, Any]) -> str:
    """The plan in one line for the task log (the plan task does not log its return value: a screen of
    dict; the whole plan is its XCom and the Training view shows it)."""
    cfg = plan["config"]
    return (
        f"Plan of {plan['run_name']}: Pythia {cfg['size']} on {cfg['nodes']} node(s) x {cfg['gpus_per_node']}"
        f" GPU(s), train_iters {cfg['train_iters']}, config {cfg['hash']} ({cfg['path']}), "
        f"{len(plan['manifests'])} manifest(s), S3 s3://{plan['s3']['bucket']}/{plan['s3']['prefix']}"
        f"{', DRY RUN' if plan['dry_run'] else ''}; the whole plan is the task's XCom"
    )


def _hook() -> SlurmSSHHook:
    return SlurmSSHHook(SSH_CONN_ID)


def checkpoint_dir_of(form: dict[str, Any]) -> str:
    """Where the run's checkpoints (and so its record) live: the form's run name in its profile."""
    from neoxflow.neox.profile_loader import load_profile
    from neoxflow.pipeline.request import parse_request

    request = parse_request(form)
    return load_profile(request.profile).run_paths(request.run_name).checkpoint_dir


def clear_attention(checkpoint_dir: str, *, by_person: bool) -> None:
    path = continuation.attention_path(checkpoint_dir)
    _, out, _ = _hook().run(f"if [ -f {q(path)} ]; then cat {q(path)}; fi")
    if not out.strip():
        return
    if not by_person:
        raise AirflowFailException(
            f"{path}: the run waits for a person ({out.decode()[:300]}); the continuation leaves it alone"
        )
    _hook().run(f"rm -f {q(path)}")
    log.warning("Triggered by a person: cleared %s (%s)", path, out.decode().strip()[:300])


def mark_attention(plan: dict[str, Any] | None, ti) -> str | None:
    """After training: a job that ended in an application failure marks its run for a person
    (``<run>.attention.json``), so the continuation does not resubmit it blindly every tick."""
    from neoxflow.operators.slurm import STATE_KEY

    if not plan or plan["dry_run"]:
        raise AirflowSkipException("nothing trained")
    job = ti.xcom_pull(task_ids="train.train_slice", key=STATE_KEY) or {}
    outcome = (job.get("status") or {}).get("outcome")
    if outcome != "app_failure":
        raise AirflowSkipException(f"training outcome {outcome or 'none'}: nothing for a person")
    path = continuation.attention_path(plan["layout"]["checkpoint_dir"])
    mark = {
        "reason": f"job {job.get('job_id')} failed in the application at {ti.run_id}",
        "job_id": job.get("job_id"),
        "run_id": ti.run_id,
        "alerted": False,
    }
    _hook().upload(json.dumps(mark).encode(), path)
    log.warning("Run %s waits for a person: %s", plan["run_name"], path)
    return path


def survey_runs(profile_name: str, channels: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The continuation's survey: a ``pythia_pretrain`` trigger for each unfinished, idle run of record of
    the profile (pipeline/continuation.py says which, and why the others are left alone)."""
    import time

    from neoxflow.neox.profile_loader import load_profile

    profile = load_profile(profile_name)
    hook = _hook()
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
            active_job=next(iter(hook.active_jobs_named(f"nxf-train-{name}"[:128])), None),
            lease_holder=_live_lease(ckpt + ".lock", lock.live_holder(holder.decode(), time.time())),
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


def dag_run_state(dag_id: str, run_id: str) -> str:
    """The state of a DAG run, asked through the running task's Task SDK (tasks have no database).

    The SDK answers with its generated ``DagRunState`` enum, whose ``str()`` is ``"DagRunState.FAILED"``,
    not ``"failed"``: the value is what is compared."""
    from airflow.sdk import get_current_context

    state = get_current_context()["ti"].get_dagrun_state(dag_id, run_id)
    return str(getattr(state, "value", state))


def _live_lease(lock_dir: str, holder: str | None) -> str | None:
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
    status, out, _ = _hook().run(lock.release_command(lock_dir, holder), check=False)
    answer = lock.parse_release(status, out.decode())
    log.warning("Lease of %s held by DAG run %s, which has %s: %s", lock_dir, dag_run[1], state, answer.text)
    return None if answer.state in ("released", "not-held") else answer.holder


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
    _hook().upload(json.dumps({**state.attention, "alerted": True}).encode(), path)


def read_record(path: str) -> record.RunRecord | None:
    _, out, _ = _hook().run(record.read_command(path))
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

    hook = _hook()
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
    plan: dict[str, Any], dag_id: str, run_id: str, scheduled: bool, lease_s: int = lock.DEFAULT_LEASE_S
) -> str:
    """Take the run's checkpoint-folder lease (see neoxflow.pipeline.lock); the training watch renews it.

    Returns the owner token (XCom) that the train task renews with and release_lock frees with.
    """
    if plan["dry_run"]:
        raise AirflowSkipException("dry run")
    owner = lock.owner_token(dag_id, run_id)
    lock_dir = plan["layout"]["lock_dir"]
    status, out, _ = _hook().run(lock.acquire_command(lock_dir, owner, lease_s), check=False)
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
        f"run {plan['run_name']!r} is being trained by {answer.holder} (lock {lock_dir}, lease until "
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


def release_lock(plan: dict[str, Any] | None, owner: str | None) -> None:
    """Free the lease if this run still holds it (a lease taken over after expiry is someone else's)."""
    if not plan or not owner or plan.get("dry_run"):
        return
    lock_dir = plan["layout"]["lock_dir"]
    status, out, _ = _hook().run(lock.release_command(lock_dir, owner), check=False)
    answer = lock.parse_release(status, out.decode())
    if answer.state == "not-ours":
        log.warning("Checkpoint folder lock %s: not released, %s holds it now", lock_dir, answer.holder)
    else:
        log.info("Checkpoint folder lock %s: %s", lock_dir, answer.text)


def ship_code(plan: dict[str, Any]) -> str:
    """Copy the profile's cluster code (include/cluster; the stand-in too locally) to <fsx>/code/<content
    hash>/ once; make sure the S3 bucket exists and holds the run of record."""
    from neoxflow.neox.profile_loader import load_profile

    if plan["dry_run"]:
        raise AirflowSkipException("dry run")
    hook = _hook()
    code_dir = plan["layout"]["code_dir"]
    marker = posixpath.join(code_dir, ".complete")
    status, _, _ = hook.run(f"test -f {q(marker)}", check=False)
    if status != 0:
        for name, data in cluster_code_files(load_profile(plan["profile"])).items():
            hook.upload(data, posixpath.join(code_dir, name), mode=0o755)
        hook.upload(plan["code_hash"].encode(), marker)
        log.info("Shipped cluster code to %s", code_dir)
    else:
        log.info("Cluster code %s already on the cluster", code_dir)
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3 = S3Hook(aws_conn_id=AWS_CONN_ID)
    if not s3.check_for_bucket(plan["s3"]["bucket"]):
        s3.create_bucket(bucket_name=plan["s3"]["bucket"])
        log.info("Created bucket %s", plan["s3"]["bucket"])
    ship_manifests(plan, hook, s3)
    # the run of record's durable copy, beside the run's report (FSx scratch can be lost; S3 is not)
    _, text, _ = hook.run(record.read_command(plan["record"]["path"]))
    if text.strip():
        key = posixpath.join(plan["s3"]["prefix"].strip("/"), "runs", plan["run_name"], record.RECORD_NAME)
        s3.load_bytes(text, key=key, bucket_name=plan["s3"]["bucket"], replace=True)
    return code_dir


def ship_manifests(plan: dict[str, Any], hook: Any, s3: Any) -> None:
    """Place the manifests the plan points to on FSx (where the data jobs read them) and in S3 (the
    durable copy). Each is named by its content's hash, so one that exists is the right one: skipped."""
    texts = manifest_texts(plan)
    prefix = posixpath.join(plan["s3"]["prefix"].strip("/"), "manifests")
    for path, text in texts.items():
        status, _, _ = hook.run(f"test -s {q(path)}", check=False)
        if status != 0:
            hook.upload(text.encode(), path)
            log.info("Shipped manifest %s (%d lines)", path, text.count("\n"))
        key = posixpath.join(prefix, posixpath.basename(path))
        if not s3.check_for_key(key, bucket_name=plan["s3"]["bucket"]):
            s3.load_string(text, key=key, bucket_name=plan["s3"]["bucket"])


def dataset_needs_work(plan: dict[str, Any]) -> bool:
    """short_circuit: False (skip fetch/stage/tokenize/merge) when the run's dataset is built.

    A dataset's folder is named by what it is built from (``plan.dataset_identity``) and its summary is
    written last, so a summary means it is done, and no summary means no run ever trained on it (training
    reads the summary first): that one is built. A dataset that has its summary but no longer validates,
    or was built from other shards than its name says, is never rebuilt in place (NeoX's index maps beside
    it would go stale): that needs a person.
    """
    if plan["dry_run"]:
        return False
    lay = plan["layout"]
    hook = _hook()
    summary = lay["data_path"] + ".summary.json"
    status, _, _ = hook.run(f"test -s {q(summary)}", check=False)
    if status != 0:
        log.info("Dataset %s needs building (dataset id %s)", lay["data_path"], plan["dataset"]["id"])
        return True
    cmd = f"{q(plan_python(plan))} {q(lay['code_dir'] + '/validate_dataset.py')} {q(lay['data_path'])}"
    status, out, err = hook.run(cmd, check=False)
    other = selection_mismatch(json.loads(hook.read_file(summary)), plan) if status == 0 else None
    if status != 0 or other:
        why = other or (err or out).decode().strip()[:300]
        raise AirflowFailException(
            f"dataset {lay['data_path']} was built but {why}. Datasets are never rebuilt in place; "
            "move its folder aside after checking no run trains on it, then trigger again."
        )
    log.info(
        "Dataset %s exists and validates (%s): data stages skipped",
        lay["data_path"],
        out.decode().strip()[:300],
    )
    return False


def selection_mismatch(summary: dict[str, Any], plan: dict[str, Any]) -> str | None:
    """Why the merged dataset described by ``summary`` was not built from the plan's shard selection,
    or None when it was. A run asking for other shards must not train on another selection's data."""
    lay = plan["layout"]
    built = {p for p in summary.get("datasets", {}) if p != lay["data_path"]}
    names = dataset_selection(plan["dataset"]).names()
    wanted = {posixpath.join(lay["tokens_dir"], f"{shard_stem(name)}_text_document") for name in names}
    if built == wanted:
        return None
    differences = []
    if wanted - built:
        differences.append("missing " + ", ".join(sorted(posixpath.basename(p) for p in wanted - built)))
    if built - wanted:
        differences.append("not selected " + ", ".join(sorted(posixpath.basename(p) for p in built - wanted)))
    return f"it was built from other shards ({'; '.join(differences)})"


def plan_python(plan: dict[str, Any]) -> str:
    from neoxflow.neox.profile_loader import load_profile

    return load_profile(plan["profile"]).cluster.python


def read_data_summary(plan: dict[str, Any]) -> dict[str, Any]:
    if plan["dry_run"]:
        raise AirflowSkipException("dry run")
    path = plan["layout"]["data_path"] + ".summary.json"
    summary = json.loads(_hook().read_file(path))
    log.info("Dataset: %s", json.dumps(summary)[:2000])
    return summary


def checkpoint_listing(plan: dict[str, Any]) -> dict[str, Any]:
    from neoxflow.neox.checkpoint_listing import listing_script_path, read_listing

    lay = plan["layout"]
    return read_listing(
        _hook(), plan_python(plan), listing_script_path(lay["code_dir"]), lay["checkpoint_dir"]
    )


def expectation(plan: dict[str, Any]):
    from neoxflow.neox.profile_loader import load_profile

    world_size = plan["config"]["nodes"] * plan["config"]["gpus_per_node"]
    cfg = json.loads(plan["config"]["rendered"])
    return checkpoint_expectation(load_profile(plan["profile"]), cfg, world_size)


def prepare_resume(
    plan: dict[str, Any], leave_timeout_s: float = 900.0, poll_s: float = 10.0
) -> dict[str, Any]:
    """Before a slice: no-op if this run's training job is active or the run is finished; otherwise point
    ``latest`` at the newest COMPLETE checkpoint (NeoX writes ``latest`` before the other ranks finish).

    A job that is COMPLETING, or whose owner file carries a cancel mark (a person stopped or cleared its
    task), is not active: it is leaving and will not train any more. Skipping for it would let a cleared
    run end "success" without training, and deciding while it still writes could read a half-written
    checkpoint. So wait (at most ``leave_timeout_s``, then fail so the retry asks again) until it has
    left the queue, then decide.
    """
    import time

    from neoxflow.neox.checkpoints import resume_plan
    from neoxflow.slurm import ownership
    from neoxflow.slurm.states import normalise_state

    if plan["dry_run"]:
        raise AirflowSkipException("dry run")
    hook = _hook()
    job_name = f"nxf-train-{plan['run_name']}"[:128]
    deadline = time.monotonic() + leave_timeout_s
    while True:
        rows = [row for row in hook.jobs_named(job_name) if not row.outcome.final]
        leaving, active = [], []
        for row in rows:
            job_id = row.job_id.split("_", 1)[0]
            cancelled = False
            if normalise_state(row.state) != "COMPLETING":  # a cancel the job has not acted on yet?
                path = ownership.owner_path(posixpath.join(plan["layout"]["jobs_dir"], job_name), job_id)
                _, out, _ = hook.run(ownership.read_owner_command(path), check=False)
                owner = ownership.parse_owner(out.decode("utf-8", "replace"))
                cancelled = owner is not None and owner.cancel_requested
            (leaving if cancelled or normalise_state(row.state) == "COMPLETING" else active).append(job_id)
        if active:
            raise AirflowSkipException(
                f"training job {active[0]} of run {plan['run_name']} is active: nothing to do"
            )
        if not leaving:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"training job {leaving[0]} of run {plan['run_name']} is still COMPLETING after "
                f"{leave_timeout_s:.0f}s: not deciding the resume point while it may still write"
            )
        log.info("Training job %s is COMPLETING (leaving): waiting before deciding", leaving[0])
        time.sleep(poll_s)
    listing = checkpoint_listing(plan)
    decision = resume_plan(listing, expectation(plan))
    target = int(plan["config"]["train_iters"])
    log.info("Resume: %s", decision.reason)
    save = plan["layout"]["checkpoint_dir"]
    if decision.action == "write":
        hook.upload(decision.content.encode(), posixpath.join(save, "latest"))
    elif decision.action == "remove":
        hook.run(f"rm -f {q(posixpath.join(save, 'latest'))}")
    if decision.iteration >= target:
        raise AirflowSkipException(
            f"run {plan['run_name']} already reached train_iters {target}: nothing to do"
        )
    return {"resume_from": decision.iteration, "train_iters": target, "action": decision.action}


def plan_export(plan: dict[str, Any]) -> dict[str, Any]:
    """The export job for every complete checkpoint of the run (the cluster script skips verified ones):
    the plan's own ``export_job``, which rendered it for the run's last checkpoint at plan time."""
    from neoxflow.neox.export import export_tags
    from neoxflow.neox.profile_loader import load_profile

    if plan["dry_run"]:
        raise AirflowSkipException("dry run")
    tags = export_tags(checkpoint_listing(plan), expectation(plan))
    if not tags:
        raise AirflowSkipException("no complete checkpoint to export")
    job = export_job(plan, load_profile(plan["profile"]), tags)
    log.info("Exporting %d checkpoint(s) to %s", len(tags), job["s3_prefix"])
    return job


def report(plan: dict[str, Any] | None, ti) -> dict[str, Any]:
    """The run's summary: data, training (loss curve PNG), resumes, checkpoints and their S3 copies.

    Written beside the checkpoints on FSx and to S3; returned as XCom for the UI and the demo.
    """
    from neoxflow.neox.report import loss_curve_png, summary_json

    if not plan:  # the form or the profile was refused: nothing ran, nothing to report (no retry wait)
        raise AirflowSkipException("no plan: the run stopped before anything was submitted")
    if plan["dry_run"]:
        raise AirflowSkipException("dry run")
    data = ti.xcom_pull(task_ids="data.data_summary") or {}
    train = ti.xcom_pull(task_ids="train.train_slice", key="summary") or {}
    history = ti.xcom_pull(task_ids="train.train_slice", key="resume_history") or {}
    export_plan = ti.xcom_pull(task_ids="export.plan_export") or {}
    exported: list[str] = []
    if export_plan:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        bucket, _, key_prefix = export_plan["s3_prefix"][len("s3://") :].partition("/")
        keys = S3Hook(aws_conn_id=AWS_CONN_ID).list_keys(bucket_name=bucket, prefix=key_prefix) or []
        exported = sorted(
            {k[len(key_prefix) :].split("/", 1)[0] for k in keys if k.endswith("neoxflow-export.json")}
        )
    merged = (data.get("datasets") or {}).get(plan["layout"]["data_path"]) or {}
    listing = checkpoint_listing(plan)
    from neoxflow.neox.checkpoints import complete_checkpoints

    complete = [c.tag for c in complete_checkpoints(listing, expectation(plan))]
    summary = {
        "run_name": plan["run_name"],
        "model_size": plan["config"]["size"],
        "train_iters": plan["config"]["train_iters"],
        # the merged dataset's own entry (the top-level totals also count the per-shard parts)
        "data": {k: merged.get(k) for k in ("documents", "tokens")},
        "training": train,
        "resumes": history,
        "checkpoints": complete,
        "checkpoints_in_s3": exported,
    }
    hook = _hook()
    report_dir = posixpath.join(plan["layout"]["checkpoint_dir"], "report")  # beside the checkpoints
    text = summary_json(summary)
    hook.upload(text.encode(), posixpath.join(report_dir, "summary.json"))
    png = None
    curve = train.get("loss_curve") or []
    if curve:
        png = loss_curve_png([tuple(p) for p in curve])
        hook.upload(png, posixpath.join(report_dir, "loss_curve.png"))
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    s3 = S3Hook(aws_conn_id=AWS_CONN_ID)
    base = posixpath.join(plan["s3"]["prefix"].strip("/"), "runs", plan["run_name"], "report")
    s3.load_bytes(text.encode(), key=f"{base}/summary.json", bucket_name=plan["s3"]["bucket"], replace=True)
    if png:
        s3.load_bytes(png, key=f"{base}/loss_curve.png", bucket_name=plan["s3"]["bucket"], replace=True)
    log.info(
        "Run summary (also in %s and s3://%s/%s/): %s",
        report_dir,
        plan["s3"]["bucket"],
        base,
        json.dumps({k: v for k, v in summary.items() if k != "training"}),
    )
    return summary
