"""The training watch on the real local cluster: the CPU stand-in trainer across node1 and node2.

Each test renders the real batch script (include/templates/train_local.sbatch via neoxflow.neox.launch)
for the ``local`` profile with a tiny model, and runs NeoXTrainOperator through dag.test(): the operator
submits over SSH, defers, and NeoXTrainingTrigger follows the job, its log and its save folder (the
real ckpt_listing.py over SSH). Checkpoints come back as Asset events in the metadata DB.

"Killed while writing a checkpoint" is real: a sitecustomize.py put on the ranks' PYTHONPATH makes the
save of one tag hang after its model file is written and before configs/ appears (the stand-in writes
configs/ last, as NeoX does); the watch sees no new log line, reports the stall, and the operator
cancels the job. The half-written folder stays on disk and must never be reported.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from neoxflow.neox.checkpoints import Expectation, resume_plan, scan_local
from neoxflow.neox.export import ExportSpec, export_tags, parse_export_result, render_export_job
from neoxflow.neox.launch import launch_spec_for_run, render_batch_script
from neoxflow.neox.logparse import TrainStep, parse_text
from neoxflow.neox.profile_loader import load_profile
from neoxflow.neox.run_config import build_run_config
from neoxflow.pipeline.plan import cluster_code_files
from tests.cluster.slurm_helpers import REPO, job_state, ti_states
from tests.conftest import TOKENIZER

pytestmark = [pytest.mark.cluster]

CODE = REPO / "include" / "cluster"
LISTING = str(CODE / "ckpt_listing.py")
PY = str(REPO / ".venv" / "bin" / "python")
DAGS = REPO / "tests" / "dags" / "neoxflow_training_test_dags.py"
OVERRIDES = {
    "train_iters": 20,
    "lr_decay_iters": 20,
    "checkpoint_factor": 5,
    "log_interval": 1,
    "seq_length": 32,  # the 50k-vocab output layer dominates a step on one CPU: keep it short
    "max_position_embeddings": 32,
}

DATASET_ID = "training-test"  # the folder of the small dataset the fixture writes
HANG_SITECUSTOMIZE = '''
"""Test hook: make the stand-in's save of one tag hang between its model file and configs/."""
import os
import time

_TAG = os.environ.get("NEOXFLOW_TEST_HANG_SAVE")
if _TAG:
    _replace = os.replace

    def _hanging_replace(src, dst, *args, **kwargs):
        src = os.fspath(src)
        if os.path.basename(src) == "configs.tmp" and os.path.basename(os.path.dirname(src)) == _TAG:
            time.sleep(3600)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _hanging_replace
'''


def load_dag(dag_id: str):
    spec = importlib.util.spec_from_file_location("neoxflow_training_test_dags", DAGS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(d for d in vars(module).values() if getattr(d, "dag_id", None) == dag_id)


def run_dag(dag_id: str, **conf):
    return load_dag(dag_id).test(logical_date=datetime.now().astimezone(), run_conf=conf)


def the_ti(dagrun):
    (ti,) = dagrun.get_task_instances()
    return ti


@pytest.fixture(scope="module")
def fsx_root(cluster_env) -> Path:
    """A private FSx root: tokenizer, a small tokenized dataset and the shipped code (the stand-in flat beside
    include/cluster, as prepare.ship_code places it) where the local profile expects them."""
    import mmidx_dataset
    import tokenizers

    root = Path(cluster_env["NEOXFLOW_FSX"]) / "test-training" / uuid.uuid4().hex[:8]
    profile = load_profile("local", env={**os.environ, "NEOXFLOW_FSX": str(root)})
    Path(profile.tokenizer_path).parent.mkdir(parents=True)
    shutil.copy(TOKENIZER, profile.tokenizer_path)
    Path(profile.code_dir).mkdir(parents=True)
    for name, data in cluster_code_files(profile).items():
        (Path(profile.code_dir) / name).write_bytes(data)
    tok = tokenizers.Tokenizer.from_file(str(TOKENIZER))
    rng = np.random.default_rng(0)
    words = "the old farmer walked to the river every morning and a young girl painted the red house".split()
    Path(profile.data_path(DATASET_ID)).parent.mkdir(parents=True)
    with mmidx_dataset.DatasetWriter(profile.data_path(DATASET_ID), np.uint16) as writer:
        for _ in range(600):
            text = " ".join(rng.choice(words, size=int(rng.integers(20, 60))))
            writer.add_document(tok.encode(text).ids + [0])
    return root


@dataclasses.dataclass
class Run:
    script: str
    save_dir: str
    remote_dir: str
    name: str

    def conf(self) -> dict:
        return {
            "script": self.script,
            "remote_dir": self.remote_dir,
            "save_dir": self.save_dir,
            "listing_script": LISTING,
            "listing_python": PY,
            "run_name": self.name,
        }


def make_run(root: Path, name: str, env: dict | None = None) -> Run:
    """The rendered 2-node batch script of a 20-iteration run (checkpoint every 5) and its folders."""
    profile = load_profile("local", env={**os.environ, "NEOXFLOW_FSX": str(root)})
    run = build_run_config("14M", profile, name, overrides=OVERRIDES, dataset_id=DATASET_ID)
    assert run.ok, run.errors
    Path(run.config_path).parent.mkdir(parents=True, exist_ok=True)
    Path(run.config_path).write_text(run.rendered)
    for folder in (run.paths.log_dir, run.paths.neox_log_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    spec, template = launch_spec_for_run(
        profile, run, job_name=f"train-{name}", code_dir=profile.code_dir, time_limit="00:05:00"
    )
    if env:
        spec = dataclasses.replace(spec, env={**spec.env, **env})
    assert spec.nodes == 2
    return Run(render_batch_script(spec, template), run.paths.checkpoint_dir, str(root / "jobs"), name)


def job_log(ti) -> str:
    return Path(ti.xcom_pull(task_ids=ti.task_id, key="slurm_job")["log_path"]).read_text()


def asset_events(dagrun) -> list[tuple[str, str, dict]]:
    from airflow.models.asset import AssetEvent
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(AssetEvent).filter(AssetEvent.source_run_id == dagrun.run_id).all()
        return sorted(
            ((e.asset.name, e.asset.uri, dict(e.extra or {})) for e in rows), key=lambda r: r[2]["iteration"]
        )


def test_two_node_run_reports_each_complete_checkpoint_as_an_asset_event(fsx_root, airflow_db, capfd):
    run = make_run(fsx_root, "full")
    dagrun = run_dag("nxf_test_train", **run.conf())
    out = capfd.readouterr().out
    assert ti_states(dagrun) == {"train": "success"}, out[-3000:]
    ti = the_ti(dagrun)
    result = ti.xcom_pull(task_ids="train")
    assert result["more_to_do"] is False and result["iteration"] == 20 and result["last_checkpoint"] == 20
    assert [c["iteration"] for c in result["checkpoints"]] == [5, 10, 15, 20]
    log = job_log(ti)
    assert "nodes=node[1-2] ranks=2" in log  # ONE job across both nodes
    # the watch re-deferred at checkpoints while the job ran (not only at the end)
    assert "Checkpoint global_step5 is complete" in out or "Checkpoint global_step10 is complete" in out
    assert "iteration 20/20 (100.0%)" in out  # progress lines in the task log
    events = asset_events(dagrun)
    assert [e[2]["iteration"] for e in events] == [5, 10, 15, 20]
    assert events[-1][0] == "neoxflow/full/global_step20"
    assert events[-1][1] == f"file://{run.save_dir}/global_step20"
    assert events[-1][2]["path"] == f"{run.save_dir}/global_step20"
    summary = ti.xcom_pull(task_ids="train", key="summary")
    assert summary["status"] == "finished" and summary["iterations"]["last_checkpoint"] == 20
    assert [p[0] for p in summary["loss_curve"]] == list(range(1, 21))

    # the sensor on the same folder: the newest complete checkpoint past 10, with its own asset event
    sensed = run_dag(
        "nxf_test_checkpoint_sensor",
        save_dir=run.save_dir,
        listing_script=LISTING,
        listing_python=PY,
        after_iteration=10,
        run_name="full",
    )
    assert ti_states(sensed) == {"wait": "success"}
    assert the_ti(sensed).xcom_pull(task_ids="wait")["iteration"] == 20
    assert [e[2]["iteration"] for e in asset_events(sensed)] == [20]
    # nothing past 20 arrives: the sensor's stall window fails it
    stalled = run_dag(
        "nxf_test_checkpoint_sensor",
        save_dir=run.save_dir,
        listing_script=LISTING,
        listing_python=PY,
        after_iteration=20,
        run_name="full",
    )
    assert ti_states(stalled) == {"wait": "failed"}
    assert "no new complete checkpoint" in capfd.readouterr().out


@pytest.fixture(scope="module")
def resumed_run(fsx_root, airflow_db):
    """A run whose save of global_step10 hangs (stall -> cancelled), then resumed to the end."""
    hooks = fsx_root / "hang-hook"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(HANG_SITECUSTOMIZE)
    killed = make_run(
        fsx_root, "resume", env={"PYTHONPATH": str(hooks), "NEOXFLOW_TEST_HANG_SAVE": "global_step10"}
    )
    first = run_dag("nxf_test_train", **killed.conf())
    after_kill = scan_local(killed.save_dir)
    second = run_dag("nxf_test_train", **make_run(fsx_root, "resume").conf())
    return killed, first, after_kill, second


def test_a_checkpoint_being_written_when_the_job_dies_is_never_reported(resumed_run, capfd):
    run, first, listing, _ = resumed_run
    assert ti_states(first) == {"train": "failed"}
    ti = the_ti(first)
    record = ti.xcom_pull(task_ids="train", key="slurm_job")
    assert "training stalled" in record["stalled"]
    assert job_state(str(record["job_id"])) in ("CANCELLED", "")  # the operator cancelled it
    assert [c["iteration"] for c in ti.xcom_pull(task_ids="train", key="checkpoints")] == [5]
    # the half-written folder is there (model states, no configs/) and nothing reported it
    partial = listing["tags"]["global_step10"]
    assert "mp_rank_00_model_states.pt" in partial["files"] and "configs" not in partial["dirs"]
    plan = resume_plan(listing, Expectation.standin())
    assert (plan.action, plan.iteration) == ("keep", 5)  # latest still names the last complete one


def test_resume_continues_the_iteration_count_and_the_loss_curve(resumed_run):
    run, first, _, second = resumed_run
    assert ti_states(second) == {"train": "success"}
    ti = the_ti(second)
    result = ti.xcom_pull(task_ids="train")
    assert result["resumed_from"] == 5 and result["more_to_do"] is False
    assert [c["iteration"] for c in result["checkpoints"]] == [10, 15, 20]
    log = job_log(ti)
    assert "Loading checkpoint and starting from iteration 5" in log
    steps = [e.iteration for e in parse_text(log) if isinstance(e, TrainStep)]
    assert steps == list(range(6, 21))  # continues at 6, nothing trained twice
    # the first attempt's curve up to the checkpoint and the second's after it meet without a gap
    first_log = job_log(the_ti(first))
    before = [e.iteration for e in parse_text(first_log) if isinstance(e, TrainStep)]
    assert before[:5] == [1, 2, 3, 4, 5]
    assert [e[2]["iteration"] for e in asset_events(second)] == [10, 15, 20]


def s3_client(cluster_env):
    import botocore.session

    conn = json.loads(cluster_env["AIRFLOW_CONN_AWS_DEFAULT"])
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=conn["extra"]["endpoint_url"],
        region_name="us-east-1",
        aws_access_key_id=conn["login"],
        aws_secret_access_key=conn["password"],
    )


def export(run: Run, root: Path, bucket: str, tags, keep_last: int) -> tuple[str, dict]:
    spec = ExportSpec(
        job_name=f"export-{run.name}",
        log_dir=str(root / "jobs"),
        scripts_dir=str(CODE),
        save_dir=run.save_dir,
        bucket=bucket,
        prefix="neoxflow/checkpoints",
        run=run.name,
        tags=tuple(tags),
        keep_last=keep_last,
        python=PY,
    )
    dagrun = run_dag("nxf_test_export", script=render_export_job(spec), remote_dir=str(root / "jobs"))
    job_id = the_ti(dagrun).xcom_pull(task_ids="export", key="job_id")
    (log_path,) = (root / "jobs").glob(f"*/slurm-{job_id}.out")
    out = log_path.read_text()
    assert ti_states(dagrun) == {"export": "success"}, out
    return out, parse_export_result(out)


def test_export_to_s3_is_verified_idempotent_and_pruning_keeps_what_has_no_copy(
    resumed_run, fsx_root, cluster_env
):
    run = resumed_run[0]
    save = Path(run.save_dir)
    s3 = s3_client(cluster_env)
    bucket = f"nxf-test-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    complete = export_tags(scan_local(save), Expectation.standin())
    assert complete == ("global_step5", "global_step10", "global_step15", "global_step20")
    # export 10, 15, 20 (not 5) and keep 1: 5 has no copy in S3 and must stay; 10 and 15 go
    _, result = export(
        run, fsx_root, bucket, ["global_step10", "global_step15", "global_step20"], keep_last=1
    )
    assert result["exported"] == ["global_step10", "global_step15", "global_step20"]
    assert result["pruned"] == ["global_step10", "global_step15"]
    assert "global_step5" in result["kept_unverified"]
    assert sorted(p.name for p in save.glob("global_step*")) == ["global_step20", "global_step5"]
    manifest = json.loads(
        s3.get_object(Bucket=bucket, Key="neoxflow/checkpoints/resume/global_step15/neoxflow-export.json")[
            "Body"
        ].read()
    )
    assert "mp_rank_00_model_states.pt" in manifest["files"]
    assert any(name.startswith("configs/") for name in manifest["files"])
    head = s3.head_object(
        Bucket=bucket, Key="neoxflow/checkpoints/resume/global_step15/mp_rank_00_model_states.pt"
    )
    assert head["Metadata"]["sha256"] == manifest["files"]["mp_rank_00_model_states.pt"]["sha256"]
    # again, now with 5: 20 is skipped (verified copy, no bytes sent), 5 is exported and then pruned
    _, again = export(run, fsx_root, bucket, ["global_step5", "global_step20"], keep_last=1)
    assert again["skipped"] == ["global_step20"] and again["exported"] == ["global_step5"]
    assert again["pruned"] == ["global_step5"]
    assert sorted(p.name for p in save.glob("global_step*")) == ["global_step20"]
