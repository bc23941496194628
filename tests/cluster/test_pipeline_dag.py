"""pythia_pretrain end to end with dag.test() on the local cluster: C4-format shards from the local HTTP
source -> moto S3 -> FSx folder -> tokens -> stand-in training across node1+node2 -> checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from tests.cluster.slurm_helpers import REPO, ti_states
from tests.conftest import load_cluster_env

sys.path.insert(0, str(REPO / "scripts"))

import demo_run  # noqa: E402

pytestmark = [pytest.mark.cluster]


def load_dag(dag_id: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pythia_pretrain_dag", REPO / "dags" / "pythia_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(d for d in vars(module).values() if getattr(d, "dag_id", None) == dag_id)


def plan_of(run) -> dict:
    """The plan the run's prepare.plan task returned (what the UI shows)."""
    (plan_ti,) = [ti for ti in run.get_task_instances() if ti.task_id == "prepare.plan"]
    return plan_ti.xcom_pull(task_ids="prepare.plan")


def trigger(**conf):
    return load_dag("pythia_pretrain").test(logical_date=datetime.now().astimezone(), run_conf=conf)


@pytest.fixture
def fresh_run(cluster_env, airflow_db, monkeypatch):
    # Slurm polled every 2 s (as in the e2e services) and a retry after 1 s: the production defaults (10 s,
    # 60 s) only add minutes of waiting. The DAG file is loaded afresh by each trigger, so these apply.
    monkeypatch.setenv("NEOXFLOW_POLL_INTERVAL", "2")
    monkeypatch.setenv("NEOXFLOW_RETRY_DELAY_S", "1")
    fsx = Path(cluster_env["NEOXFLOW_FSX"])
    name = f"t{datetime.now():%H%M%S}"
    yield name, fsx
    target = fsx / "checkpoints" / name
    if target.is_file():
        target.unlink()
    shutil.rmtree(target, ignore_errors=True)
    (fsx / "checkpoints" / f"{name}.record.json").unlink(missing_ok=True)


def test_dry_run_renders_and_submits_nothing(fresh_run):
    name, fsx = fresh_run
    run = trigger(run_name=name, dry_run=True)
    states = ti_states(run)
    assert states["prepare.plan"] == "success"
    assert states["train.train_slice"] == "skipped" and states["data.fetch"] == "skipped"
    (plan_ti,) = [ti for ti in run.get_task_instances() if ti.task_id == "prepare.plan"]
    plan = plan_ti.xcom_pull(task_ids="prepare.plan")  # what the UI shows (and the task log prints)
    assert plan["dry_run"] is True
    assert "#SBATCH --array=0-4%2" in plan["data"]["fetch"]["script"]
    assert '"train_iters"' in plan["config"]["rendered"]
    assert not (fsx / "runs" / name / "jobs").exists()  # nothing reached the cluster


def test_form_refuses_shell_metacharacters_before_any_task(fresh_run):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="run_name"):
        trigger(run_name="x; rm -rf /")


def test_bad_shards_fail_the_plan_naming_the_field(fresh_run, capfd):
    name, fsx = fresh_run
    # the form's pattern passes every number up to 1024 (a count: "the first 1024 shards"); a range that
    # ends at shard 1024 is the plan's to refuse (0-2000 is refused by the Param itself: test_request.py)
    run = trigger(run_name=name, shards="0-1024")
    out = capfd.readouterr().out
    states = ti_states(run)
    assert states["prepare.plan"] == "failed"
    assert states["prepare.lock"] == "upstream_failed"
    assert states["report"] == "skipped"  # nothing ran: no failing report (and no retry wait)
    assert "shards:" in out and "0-1024" in out and "outside 0..1023" in out


def test_full_run_then_rerun_skips_done_stages(fresh_run, capfd):
    name, fsx = fresh_run
    run = trigger(run_name=name, train_iters=40, checkpoint_interval=20)
    states = ti_states(run)
    assert states["train.train_slice"] == "success", states
    ckpts = sorted(p.name for p in (fsx / "checkpoints" / name).glob("global_step*"))
    assert ckpts == ["global_step20", "global_step40"]
    assert (fsx / "checkpoints" / name / "latest").read_text().strip() == "global_step40"
    data_path = plan_of(run)["layout"]["data_path"]  # <fsx>/data/c4_openwebtext/<dataset id>/...
    assert data_path.startswith(str(fsx / "data/c4_openwebtext/"))
    data = json.loads(Path(data_path + ".summary.json").read_text())
    assert data["ok"] and data["documents"] > 0
    report = json.loads((fsx / "checkpoints" / name / "report" / "summary.json").read_text())
    merged = data["datasets"][data_path]
    assert report["data"] == {"documents": merged["documents"], "tokens": merged["tokens"]}
    assert report["checkpoints"] == ["global_step20", "global_step40"]
    assert report["checkpoints_in_s3"] == ["global_step20", "global_step40"]  # exported and verified
    assert report["training"]["final_loss"] < report["training"]["loss_curve"][0][1]  # it learned
    assert (fsx / "checkpoints" / name / "report" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    # the run of record, on FSx and in S3
    recorded = json.loads((fsx / "checkpoints" / f"{name}.record.json").read_text())
    assert recorded["request"]["train_iters"] == 40 and recorded["fixed"]["neox"]["train_iters"] == 40
    s3 = demo_run.aws_client(load_cluster_env())
    key = f"neoxflow/runs/{name}/run-record.json"
    assert json.loads(s3.get_object(Bucket="neoxflow-local", Key=key)["Body"].read()) == recorded
    capfd.readouterr()
    # the same run again from the form's defaults, as the scheduled continuation plans it: the record fills
    # the blanks (40 iterations, not the profile's 200); data validates (skipped), training is at
    # train_iters (no-op)
    rerun = trigger(run_name=name)
    again = ti_states(rerun)
    plan = plan_of(rerun)
    assert plan["config"]["train_iters"] == 40 and plan["record"]["fixed_hash"] == recorded["fixed_hash"]
    assert again["data.fetch"] == "skipped" and again["data.tokenize"] == "skipped"
    assert again["train.train_slice"] == "skipped"


def test_a_plan_that_would_change_the_recorded_model_is_refused(fresh_run, capfd):
    from neoxflow.pipeline import tasks

    name, fsx = fresh_run
    form = {"profile": "local", "run_name": name, "train_iters": 40, "checkpoint_interval": 20}
    first = tasks.make_plan(form)
    assert first["record"]["created"] is True
    assert (fsx / "checkpoints" / f"{name}.record.json").is_file()
    run = trigger(run_name=name, train_iters=60, checkpoint_interval=20)
    out = capfd.readouterr().out
    states = ti_states(run)
    assert states["prepare.plan"] == "failed" and states["prepare.lock"] == "upstream_failed"
    assert "neox.train_iters: recorded 40, now 60" in out
    assert not (fsx / "runs" / name / "jobs").exists()  # nothing was submitted


def _when(predicate, action, timeout=240):
    """Run ``action`` in a thread as soon as ``predicate()`` holds."""
    import threading
    import time

    def loop():
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                action()
                return
            time.sleep(0.3)

    thread = threading.Thread(target=loop)
    thread.start()
    return thread


def _train_jobs(fsx: Path, name: str) -> list[str]:
    return sorted(p.name for p in (fsx / "runs" / name / "logs").glob(f"nxf-train-{name}-*.out"))


def test_node_fail_resumes_from_latest_checkpoint_on_the_other_node(fresh_run, capfd):
    from tests.cluster.slurm_helpers import slurm

    name, fsx = fresh_run
    first_ckpt = fsx / "checkpoints" / name / "global_step20" / "configs"
    thread = _when(
        first_ckpt.exists,
        lambda: slurm("scontrol", "update", "nodename=node2", "state=down", "reason=neoxflow-test"),
    )
    try:
        run = trigger(run_name=name, train_iters=60, checkpoint_interval=20)
    finally:
        thread.join()
        slurm("scontrol", "update", "nodename=node2", "state=resume", check=False)
    assert ti_states(run)["train.train_slice"] == "success"
    (train_ti,) = [ti for ti in run.get_task_instances() if ti.task_id == "train.train_slice"]
    history = train_ti.xcom_pull(task_ids="train.train_slice", key="resume_history")
    assert [a["state"] for a in history["attempts"]] == ["NODE_FAIL"], history
    assert history["excluded"] == ["node2"]
    jobs = _train_jobs(fsx, name)
    assert len(jobs) == 2  # the failed slice and the resumed one, never two at once (same job name, serial)
    resumed_log = (fsx / "runs" / name / "logs" / jobs[-1]).read_text()
    assert "Loading checkpoint and starting from iteration" in resumed_log
    assert "starting from iteration 0" not in resumed_log
    assert (fsx / "checkpoints" / name / "latest").read_text().strip() == "global_step60"


def test_application_failure_is_not_resubmitted(fresh_run, capfd):
    name, fsx = fresh_run
    # the save folder's place is taken by a file: the trainer cannot write a checkpoint and exits non-zero
    ckpt = fsx / "checkpoints" / name
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_text("not a folder")
    run = trigger(run_name=name, train_iters=40, checkpoint_interval=20)
    out = capfd.readouterr().out
    assert ti_states(run)["train.train_slice"] == "failed"
    assert str(run.state) == "failed"  # the run itself says so, though report and release_lock ran
    assert "application failure" in out
    assert len(_train_jobs(fsx, name)) == 1  # no blind resubmit
    # a human is told: the SNS alert arrives in the queue subscribed to the topic
    alerts = _read_alerts(f"nxf-train-{name}")
    assert alerts, "no alert naming the training job arrived through SNS -> SQS"
    assert "train_slice" in alerts[0] and "FAILED" in alerts[0]


def _read_alerts(needle: str, timeout: float = 30) -> list[str]:
    import os
    import time

    import boto3

    sqs = boto3.client(
        "sqs",
        endpoint_url=os.environ["AIRFLOW_CONN_AWS_DEFAULT"].split('"endpoint_url": "')[1].split('"')[0],
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    found: list[str] = []
    end = time.monotonic() + timeout
    while not found and time.monotonic() < end:
        messages = sqs.receive_message(
            QueueUrl=os.environ["NEOXFLOW_ALERT_INBOX_URL"], MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", [])
        for message in messages:
            body = json.loads(message["Body"]).get("Message", "")
            if needle in body or needle.split("-", 2)[-1] in body:
                found.append(body)
    return found


def test_continuation_while_training_is_active_submits_nothing(fresh_run):
    """A second run of the same training (e.g. the scheduled continuation) is a no-op while its job runs."""
    from neoxflow.hooks.slurm import SlurmSSHHook
    from tests.cluster.slurm_helpers import slurm, wait_state

    name, fsx = fresh_run
    hook = SlurmSSHHook("neoxflow_cluster")
    job_dir = fsx / "runs" / name / "jobs" / "earlier"
    hook.upload(b"#!/bin/bash\nsleep 90\n", f"{job_dir}/train.sbatch")
    job = hook.submit(
        f"{job_dir}/train.sbatch", job_name=f"nxf-train-{name}", output=f"{job_dir}/slurm-%j.out"
    )
    try:
        wait_state(job, {"RUNNING"})
        run = trigger(run_name=name, train_iters=40, checkpoint_interval=20)
        states = ti_states(run)
        assert states["train.resume_point"] == "skipped" and states["train.train_slice"] == "skipped"
        live = slurm("squeue", "-h", "-n", f"nxf-train-{name}", "-o", "%i").split()
        assert live == [job]  # still exactly the one job
    finally:
        slurm("scancel", job, check=False)


def test_a_run_holding_the_lock_keeps_a_second_trigger_out(fresh_run, capfd):
    from neoxflow.hooks.slurm import SlurmSSHHook
    from neoxflow.pipeline import lock

    name, fsx = fresh_run
    lock_dir = str(fsx / "checkpoints" / f"{name}.lock")
    hook = SlurmSSHHook("neoxflow_cluster")
    status, out, _ = hook.run(lock.acquire_command(lock_dir, "pythia_pretrain:other_run", 600), check=False)
    assert status == 0 and out.decode().strip() == "acquired"
    run = trigger(run_name=name, train_iters=40, checkpoint_interval=20)
    out = capfd.readouterr().out
    states = ti_states(run)
    assert states["prepare.lock"] == "failed" and states["train.train_slice"] == "upstream_failed"
    assert "pythia_pretrain:other_run" in out
    hook.run(lock.release_command(lock_dir, "pythia_pretrain:other_run"))


def test_fsx_association_mode_imports_then_the_stage_job_only_verifies(fresh_run, monkeypatch, cluster_env):
    """DRA mode: after fetch, an IMPORT_METADATA_FROM_REPOSITORY task (FSx API stand-in, tests/fakes)
    makes the shards appear on FSx the way the association would; the stage job then copies nothing,
    verifies every shard's checksum against S3, and the data is tokenized from the imported files."""
    from tests.fakes.fsx_dra import serve_fsx_dra

    name, fsx = fresh_run
    data_dir = f"data-dra-{name}"  # a dataset of its own: the shared one would be skipped as valid
    raw = fsx / data_dir / "c4" / "raw"
    s3, imported = demo_run.aws_client(cluster_env), []

    def association_import(task: dict) -> int:
        assert task["Paths"] == [f"{data_dir}/c4/raw"], task["Paths"]
        raw.mkdir(parents=True, exist_ok=True)
        pages = s3.get_paginator("list_objects_v2").paginate(
            Bucket="neoxflow-local", Prefix="neoxflow/c4/en/"
        )
        for obj in (o for page in pages for o in page.get("Contents", [])):
            target = raw / obj["Key"].rsplit("/", 1)[1]
            target.with_suffix(".part").write_bytes(
                s3.get_object(Bucket="neoxflow-local", Key=obj["Key"])["Body"].read()
            )
            target.with_suffix(".part").rename(target)
            imported.append(target.name)
        return len(imported)

    monkeypatch.setenv("NEOXFLOW_DATA_DIR", data_dir)
    monkeypatch.setenv("NEOXFLOW_FSX_DRA_FILE_SYSTEM", "fs-0123456789abcdef0")
    monkeypatch.setenv("NEOXFLOW_FSX_DRA_CONN", "neox_fsx_dra")
    try:
        with serve_fsx_dra(monkeypatch, "neox_fsx_dra", association_import) as backend:
            run = load_dag("pythia_pretrain").test(
                logical_date=datetime.now().astimezone(),
                run_conf={"run_name": name, "shards": "0-1"},
                mark_success_pattern=r"(train|export)\..*",  # this test is about the data half
            )
        states = ti_states(run)
        assert _train_jobs(fsx, name) == []  # marked success, not run
        assert states["data.fsx_import"] == "success" and states["data.merge_validate"] == "success", states
        (task,) = backend.tasks.values()
        assert task["Lifecycle"] == "SUCCEEDED" and backend.creates == 1
        shards = ["c4-train.00000-of-01024.json.gz", "c4-train.00001-of-01024.json.gz"]
        assert set(shards) <= set(imported)
        stage_logs = "".join(
            p.read_text() for p in (fsx / "runs" / name / "jobs" / f"nxf-stage-{name}").glob("slurm-*.out")
        )
        for shard in shards:  # found in place and verified, not copied again
            assert f"{raw / shard} already staged (size and recomputed checksum match" in stage_logs, (
                stage_logs
            )
            assert (raw / f"{shard}.sha256").is_file()
        data_path = plan_of(run)["layout"]["data_path"]
        assert data_path.startswith(str(fsx / data_dir / "c4_openwebtext/"))
        summary = json.loads(Path(data_path + ".summary.json").read_text())
        assert summary["ok"] and summary["documents"] > 0
    finally:
        shutil.rmtree(fsx / data_dir, ignore_errors=True)


def test_the_continuation_carries_unfinished_idle_runs_and_alerts_a_failed_one_once(fresh_run):
    """The survey over real runs of record on the cluster's FSx: one idle, one finished, one whose folder
    a DAG run holds, one waiting for a person after an application failure."""
    from neoxflow.hooks.slurm import SlurmSSHHook
    from neoxflow.pipeline import attention_tasks, lock, tasks

    name, fsx = fresh_run
    runs = {kind: f"{name}-{kind}" for kind in ("idle", "done", "held", "failed")}
    ckpts = fsx / "checkpoints"
    hook = SlurmSSHHook("neoxflow_cluster")
    try:
        for run in runs.values():
            form = {"profile": "local", "run_name": run, "train_iters": 40, "checkpoint_interval": 20}
            assert tasks.make_plan(form)["record"]["created"]
        (ckpts / runs["done"]).mkdir()
        (ckpts / runs["done"] / "latest").write_text("global_step40")
        held = str(ckpts / f"{runs['held']}.lock")
        _, said, _ = hook.run(lock.acquire_command(held, "pythia_pretrain:other_run", 600))
        assert said.strip() == b"acquired"
        marker = ckpts / f"{runs['failed']}.attention.json"
        marker.write_text(json.dumps({"reason": "job 9 failed in the application", "job_id": "9"}))

        mine = [t for t in attention_tasks.survey_runs("local") if t["conf"]["run_name"].startswith(name)]
        assert mine == [
            {
                "trigger_run_id": f"continue__{runs['idle']}__at0",
                "conf": {"profile": "local", "run_name": runs["idle"]},
            }
        ]
        alerts = [a for a in _read_alerts(runs["failed"]) if runs["failed"] in a]
        assert alerts and "waits for a person" in alerts[0]
        assert json.loads(marker.read_text())["alerted"] is True
        attention_tasks.survey_runs("local")  # the next tick: still left alone, and no second alert
        assert [a for a in _read_alerts(runs["failed"], timeout=5) if runs["failed"] in a] == []
        # the continuation's own DAG run stops at the plan; a person's trigger clears the mark
        with pytest.raises(Exception, match="waits for a person"):
            tasks.make_plan({"profile": "local", "run_name": runs["failed"]}, "continue__x__at0")
        tasks.make_plan({"profile": "local", "run_name": runs["failed"]}, "manual__2026")
        assert not marker.exists()
    finally:
        for run in runs.values():
            shutil.rmtree(ckpts / run, ignore_errors=True)
            shutil.rmtree(ckpts / f"{run}.lock", ignore_errors=True)
            for suffix in (".record.json", ".attention.json"):
                (ckpts / f"{run}{suffix}").unlink(missing_ok=True)


@pytest.fixture
def array_limit_16(cluster_env):
    """The cluster with MaxArraySize=16 (array task ids 0..15), restored to Slurm's default afterwards."""
    up = [str(REPO / "scripts" / "localcluster.sh"), "up"]
    subprocess.run(up, check=True, capture_output=True, env={**os.environ, "NEOXFLOW_MAX_ARRAY_SIZE": "16"})
    try:
        yield
    finally:
        env = {k: v for k, v in os.environ.items() if k != "NEOXFLOW_MAX_ARRAY_SIZE"}
        subprocess.run(up, check=True, capture_output=True, env=env)


def test_a_selection_larger_than_max_array_size_runs_in_strided_arrays(
    fresh_run, monkeypatch, array_limit_16
):
    """40 shards on a cluster that takes arrays of at most 16 tasks (issue 19): sbatch refuses a 17-task
    array; the data steps submit 16 tasks that stride over the 41 (40 + tokenizer) manifest lines, and
    every shard is fetched, staged, tokenized, merged and validated, by the same Airflow tasks as 4 shards."""
    import c4_fixture
    from http_source import HttpSourceServer

    name, fsx = fresh_run
    refused = subprocess.run(
        ["sbatch", "--array=0-16", "--wrap=true"], capture_output=True, text=True, env=os.environ
    )
    assert refused.returncode != 0 and "array" in refused.stderr.lower(), refused
    data_dir = f"data-split-{name}"  # raw, tokens and manifests of its own
    source_dir = fsx / data_dir / "source"
    # the cluster source's seed and size: shards 0-3 are byte-identical to the S3 copies other tests made
    c4_fixture.generate(str(source_dir), train=40, docs=400, seed=1234)
    monkeypatch.setenv("NEOXFLOW_DATA_DIR", data_dir)
    server = HttpSourceServer(str(source_dir)).start()
    try:
        run = load_dag("pythia_pretrain").test(
            logical_date=datetime.now().astimezone(),
            run_conf={"run_name": name, "shards": "0-39", "shard_url_template": server.base_url + "{name}"},
            mark_success_pattern=r"(train|export)\..*",  # this test is about the data half
        )
        states = ti_states(run)
        for step in ("fetch", "stage", "tokenize", "merge_validate"):
            assert states[f"data.{step}"] == "success", states
        plan = plan_of(run)
        assert plan["data"]["fetch"]["array_lines"] == 41 and plan["data"]["tokenize"]["array_lines"] == 40
        jobs = fsx / "runs" / name / "jobs"
        for step, lines in (("fetch", 41), ("stage", 41), ("tokenize", 40)):
            logs = sorted((jobs / f"nxf-{step}-{name}").glob("slurm-*_*.out"))
            assert len(logs) == 16, f"{step}: {len(logs)} array tasks"  # ids 0..15, no more
            text = "".join(p.read_text() for p in logs)
            assert text.count(" of 16 (job ") == 16
            if step == "tokenize":
                assert text.count("shard c4-train.") == lines, text[-2000:]
        summary = json.loads(Path(plan["layout"]["data_path"] + ".summary.json").read_text())
        shards = [p for p in summary["datasets"] if p != plan["layout"]["data_path"]]
        assert summary["ok"] and len(shards) == 40
        assert summary["datasets"][plan["layout"]["data_path"]]["documents"] == 40 * 400
        assert len(states) == len(
            ti_states(trigger(run_name=f"{name}-d", dry_run=True))
        )  # as many tasks as 4
    finally:
        server.stop()
        shutil.rmtree(fsx / data_dir, ignore_errors=True)
