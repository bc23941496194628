"""pythia_pretrain end to end with dag.test() on the local cluster: C4-format shards from the local HTTP
source -> moto S3 -> FSx folder -> tokens -> stand-in training across node1+node2 -> checkpoints."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from tests.cluster.slurm_helpers import REPO, ti_states

pytestmark = [pytest.mark.cluster]


def load_dag(dag_id: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pythia_pretrain_dag", REPO / "dags" / "pythia_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(d for d in vars(module).values() if getattr(d, "dag_id", None) == dag_id)


def trigger(**conf):
    return load_dag("pythia_pretrain").test(logical_date=datetime.now().astimezone(), run_conf=conf)


@pytest.fixture
def fresh_run(cluster_env, airflow_db):
    fsx = Path(cluster_env["NEOXFLOW_FSX"])
    name = f"t{datetime.now():%H%M%S}"
    yield name, fsx
    shutil.rmtree(fsx / "checkpoints" / name, ignore_errors=True)


def test_dry_run_renders_and_submits_nothing(fresh_run, capfd):
    name, fsx = fresh_run
    run = trigger(run_name=name, dry_run=True)
    out = capfd.readouterr().out
    states = ti_states(run)
    assert states["prepare.plan"] == "success"
    assert states["train.train_slice"] == "skipped" and states["data.fetch"] == "skipped"
    assert "DRY RUN" in out and "#SBATCH --array" in out and '"train_iters"' in out
    assert not (fsx / "runs" / name / "jobs").exists()


def test_form_refuses_shell_metacharacters_before_any_task(fresh_run):
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="run_name"):
        trigger(run_name="x; rm -rf /")


def test_bad_shards_fail_the_plan_naming_the_field(fresh_run, capfd):
    name, fsx = fresh_run
    run = trigger(run_name=name, shards="0-2000")
    out = capfd.readouterr().out
    states = ti_states(run)
    assert states["prepare.plan"] == "failed"
    assert states["prepare.lock"] == "upstream_failed"
    assert "shards:" in out and "2000" in out


def test_full_run_then_rerun_skips_done_stages(fresh_run, capfd):
    name, fsx = fresh_run
    run = trigger(run_name=name, train_iters=40, checkpoint_interval=20)
    states = ti_states(run)
    assert states["train.train_slice"] == "success", states
    ckpts = sorted(p.name for p in (fsx / "checkpoints" / name).glob("global_step*"))
    assert ckpts == ["global_step20", "global_step40"]
    assert (fsx / "checkpoints" / name / "latest").read_text().strip() == "global_step40"
    summary = json.loads(
        (Path(str(fsx)) / "data/c4_openwebtext/c4_openwebtext_text_document.summary.json").read_text()
    )
    assert summary
    capfd.readouterr()
    # the same run again: data validates (skipped), training already at train_iters (no-op)
    again = ti_states(trigger(run_name=name, train_iters=40, checkpoint_interval=20))
    assert again["data.fetch"] == "skipped" and again["data.tokenize"] == "skipped"
    assert again["train.train_slice"] == "skipped"
