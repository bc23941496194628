"""The Training view's pure parts (neoxflow/ui/story.py, page.py) and its routes' refusal of anonymous
callers (Airflow's own auth dependency, without services)."""

from __future__ import annotations

import re

import pytest

from neoxflow.ui import page, story

STEP = (
    "0:  samples/sec: {sps} | iteration {it:>8}/{total:>8} | elapsed time per iteration (ms): {ms} | "
    "learning rate: 9.9E-04 | approx flops per GPU: 13.2GFLOPS | MFU: 4.20% | HFU: 5.60% | "
    "lm_loss: {loss:E} | "
    "number of skipped iterations:   0 | number of nan iterations:   0 |"
)


def log(points, total=40, ms=500.0, sps=16.0):
    return "\n".join(STEP.format(sps=sps, it=i, total=total, ms=ms, loss=v) for i, v in points) + "\n"


PLAN = {
    "run_name": "r1",
    "profile": "local",
    "dry_run": False,
    "config": {
        "size": "14M",
        "train_iters": 40,
        "nodes": 2,
        "gpus_per_node": 4,
        "rendered": '{"seq_length": 128, "train_iters": 40}',
    },
    "data": {"fetch": {"script": "#!/bin/bash\necho fetch <b>\n"}},
    "train": {"script": "#!/bin/bash\nsrun python train.py\n"},
}


def src(**over):
    base = {
        "dag_run": {"dag_id": "pythia_pretrain", "run_id": "run-1", "state": "running", "conf": {}},
        "tasks": [
            {"task_id": story.TRAIN, "state": "deferred", "try_number": 1, "start": 100.0, "end": None}
        ],
        "tries": [],
        "xcom": {
            "prepare.plan:return_value": PLAN,
            f"{story.TRAIN}:slices": [
                {
                    "index": 1,
                    "job_id": "11",
                    "submitted_at": 1000.0,
                    "ended_at": 1600.0,
                    "resume_iteration": 0,
                    "reached": 25,
                    "planned_stop": 20,
                    "end": "time_limit",
                    "verdict": "incomplete",
                },
                {
                    "index": 2,
                    "job_id": "12",
                    "submitted_at": 1660.0,
                    "ended_at": None,
                    "resume_iteration": 20,
                },
            ],
            f"{story.TRAIN}:slurm_job": {
                "job_id": "12",
                "status": {"state": "RUNNING", "tasks": [{"nodes": "node[1-2]"}]},
            },
            f"{story.TRAIN}:checkpoints": [
                {
                    "tag": "global_step20",
                    "iteration": 20,
                    "path": "/fsx/c/global_step20",
                    "size_bytes": 2 << 20,
                }
            ],
        },
        "record": None,
        "report": None,
        "s3_checkpoints": None,
        "logs": {},
    }
    base.update(over)
    return base


def test_slices_in_order_with_nodes_gap_and_live_state():
    s = story.build_story(src(), now=1700.0)
    assert [r["job_id"] for r in s["slices"]] == ["11", "12"]
    first, second = s["slices"]
    assert first["duration_s"] == 600.0 and first["state"] == "incomplete" and first["gap_before_s"] is None
    assert second["gap_before_s"] == 60.0  # submitted 60 s after the first one ended
    assert second["state"] == "RUNNING" and second["nodes"] == "node[1-2]" and second["duration_s"] == 40.0
    assert first["nodes"] is None  # Slurm's node list is only recorded for the newest job
    # 640 s of jobs on 2 x 4 GPUs; the 60 s gap is not GPU time
    assert s["usage"]["gpus"] == 8 and s["usage"]["gpu_hours"] == pytest.approx(640 * 8 / 3600)
    assert s["usage"]["gaps_s"] == 60.0


def test_loss_from_all_slice_logs_resumed_iterations_take_the_later_value():
    logs = {
        "11": log([(10, 9.0), (20, 8.0), (25, 7.9)]),  # 25 logged but the slice resumed from 20
        "12": log([(25, 7.5), (30, 7.0)], ms=400.0),
    }
    s = story.build_story(src(logs=logs), now=1700.0)
    assert s["loss"]["points"] == [[10, 9.0], [20, 8.0], [25, 7.5], [30, 7.0]]
    assert s["loss"]["source"] == "job logs on FSx"
    thr = s["throughput"]
    assert thr["tokens_per_sec"] == pytest.approx(16.0 * 128)  # samples/s x the rendered seq_length
    assert thr["mfu_percent"] == pytest.approx(4.2)  # NeoX's own figure from the log, not recomputed
    assert s["eta_s"] == pytest.approx(10 * thr["iter_ms"] / 1000)  # 10 iterations left


def test_loss_falls_back_to_the_training_summary_when_logs_are_not_visible():
    summary = {"loss_curve": [[10, 9.0], [20, 8.5]], "throughput": {"iter_ms": 1000.0}, "status": "finished"}
    xcom = {**src()["xcom"], f"{story.TRAIN}:summary": summary}
    s = story.build_story(src(xcom=xcom), now=1700.0)
    assert s["loss"]["points"] == [[10, 9.0], [20, 8.5]] and s["loss"]["source"].startswith(
        "training summary"
    )
    assert s["eta_s"] == pytest.approx(20.0)


def test_checkpoints_fsx_and_s3_state():
    report = {"checkpoints": ["global_step20", "global_step40"], "checkpoints_in_s3": ["global_step20"]}
    s = story.build_story(src(report=report, s3_checkpoints=["global_step20"]), now=1700.0)
    rows = {c["tag"]: c for c in s["checkpoints"]}
    assert list(rows) == ["global_step20", "global_step40"]
    assert rows["global_step20"]["s3"] == "verified" and rows["global_step40"]["s3"] == "not exported"
    assert rows["global_step40"]["fsx"] == "complete" and rows["global_step40"]["iteration"] == 40
    # S3 not read (no listing, no report): the page must not claim "not exported"
    unknown = story.build_story(src(), now=1700.0)
    assert unknown["checkpoints"][0]["s3"] is None


def test_nodes_of_every_slice_from_the_logs_stamped_first_line():
    logs = {
        "11": "neoxflow: job 11 started=2026-12-03 12:14:51 nodes=node[1-2] ranks=2 master=x:1\n"
        + log([(10, 9.0)]),
        "12": "neoxflow: job 12 started=2026-12-03 12:24:51 nodes=node[2-3] ranks=2 master=x:1\n",
    }
    s = story.build_story(src(logs=logs), now=1700.0)
    # the log's stamp for the earlier slice; Slurm's own record (slurm_job XCom) wins for the newest job
    assert [r["nodes"] for r in s["slices"]] == ["node[1-2]", "node[1-2]"]
    del logs["11"]
    xcom = {k: v for k, v in src()["xcom"].items() if not k.endswith(":slurm_job")}
    s = story.build_story(src(logs=logs, xcom=xcom), now=1700.0)
    assert [r["nodes"] for r in s["slices"]] == [None, "node[2-3]"]


def test_job_log_path_follows_the_launch_naming():
    plan = {**PLAN, "layout": {"run_dir": "/fsx/runs/r1"}}
    assert story.job_log_path(plan, "12") == "/fsx/runs/r1/logs/nxf-train-r1-12.out"
    assert story.job_log_path(PLAN, "12") is None  # no layout: no guess


def test_verified_tags_need_the_export_manifest():
    keys = [
        "p/checkpoints/r1/global_step20/mp_rank_00.pt",
        "p/checkpoints/r1/global_step20/neoxflow-export.json",
        "p/checkpoints/r1/global_step40/mp_rank_00.pt",
    ]
    assert story.verified_tags(keys) == ["global_step20"]


def test_alerts_from_failed_and_retried_tries_and_lost_leases():
    tries = [
        {"task_id": story.TRAIN, "state": "up_for_retry", "try_number": 1, "end": 50.0},
        {"task_id": "data.fetch", "state": "success", "try_number": 1, "end": 40.0},
    ]
    tasks = [{"task_id": "export.to_s3", "state": "failed", "try_number": 2, "end": 90.0}]
    xcom = {**src()["xcom"], f"{story.TRAIN}:lock_lost": {"holder": "other"}}
    s = story.build_story(src(tries=tries, tasks=tasks, xcom=xcom), now=1700.0)
    assert [(a["kind"], a["task_id"]) for a in s["alerts"]] == [
        ("retry", story.TRAIN),
        ("failure", "export.to_s3"),
        ("lock_lost", story.TRAIN),
    ]


def test_finished_run_has_no_eta_left_and_dry_run_shows_scripts():
    done = story.build_story(
        src(
            dag_run={"dag_id": "d", "run_id": "r", "state": "success", "conf": {}},
            logs={"11": log([(10, 9.0), (40, 6.0)])},
        ),
        now=1700.0,
    )
    assert done["eta_s"] == 0.0 and done["scripts"] == []
    dry = story.build_story(src(xcom={"prepare.plan:return_value": {**PLAN, "dry_run": True}}), now=0.0)
    assert dry["run"]["dry_run"] is True
    assert [t["name"] for t in dry["scripts"]] == ["data.fetch", "train", "NeoX config"]


def test_page_escapes_records_and_draws_every_point():
    logs = {"11": log([(10, 9.0), (20, 8.0)]), "12": log([(30, 7.0)])}
    s = story.build_story(src(logs=logs), now=1700.0)
    s["run"]["reason"] = "<script>alert(1)</script>"
    html = page.render_run(s, base="/neoxflow")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert len(re.findall(r'<circle class="pt"', html)) == 3
    assert '<span id="loss-count">3</span>' in html
    assert re.findall(r'data-iteration="(\d+)"', html) == ["10", "20", "30"]
    assert 'data-job-id="11"' in html and 'data-job-id="12"' in html and 'data-tag="global_step20"' in html
    dry = story.build_story(src(xcom={"prepare.plan:return_value": {**PLAN, "dry_run": True}}), now=0.0)
    text = page.render_run(dry)
    assert "echo fetch &lt;b&gt;" in text and "srun python train.py" in text


def test_routes_refuse_an_anonymous_caller():
    from fastapi.testclient import TestClient

    from neoxflow.ui.routes import app

    client = TestClient(app)
    for path in ("/runs?dag_id=pythia_pretrain", "/runs/pythia_pretrain/x", "/api/runs/pythia_pretrain/x"):
        response = client.get(path)
        assert response.status_code == 401, (path, response.status_code, response.text)


def test_index_links_each_run_with_its_id_quoted():
    runs = [
        {
            "dag_id": "pythia_pretrain",
            "run_id": "manual__2026-12-03T12:30:50+00:00",
            "state": "success",
            "run_name": "r<1>",
            "start": 0.0,
            "end": None,
        }
    ]
    html = page.render_index(runs, base="/neoxflow")
    assert 'href="/neoxflow/runs/pythia_pretrain/manual__2026-12-03T12%3A30%3A50%2B00%3A00"' in html
    assert "r&lt;1&gt;" in html
    assert "No run yet" in page.render_index([])
