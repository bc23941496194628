"""Checkpoint Asset events that explain themselves (issue 20 item 5): iteration, the loss NeoX logged at
or before it, the job that wrote it, its size and its S3 copy (pending at emission, at the URI the export
will use)."""

from __future__ import annotations

from neoxflow.neox.checkpoint_assets import asset_extra
from neoxflow.neox.export import ExportSpec, export_prefix, run_checkpoints_s3_uri
from neoxflow.neox.logparse import TrainStep
from neoxflow.neox.watch_state import WatchState
from tests.unit.test_training_watch import (
    RECORD,
    FakeHook,
    alias_events,
    context,
    final_event,
    first_event,
    save_checkpoint,
    status,
    step_line,
    train_operator,
    training_trigger,
)

S3 = "s3://neoxflow-local/neoxflow/checkpoints/run1"


async def test_the_watch_gives_each_new_checkpoint_its_loss_and_job(tmp_path):
    log, save = tmp_path / "job.out", tmp_path / "save"

    def world(poll):
        if poll == 1:
            log.write_text(step_line(5, loss=6.0) + step_line(10, loss=5.5) + step_line(15, loss=5.0))
            save_checkpoint(save, 10)
            log.open("a").write("0: [Torch] Checkpoint global_step10 is ready now!\n")
        return status("RUNNING")

    event = await first_event(training_trigger(tmp_path), FakeHook(log, world))
    (ckpt,) = event["checkpoints"]
    # the loss at iteration 10 itself, not the newest (iteration 15) nor an older one
    assert (ckpt["iteration"], ckpt["loss"], ckpt["job_id"]) == (10, 5.5, "42")


def test_loss_at_is_the_last_logged_at_or_before_the_iteration():
    watch = WatchState()
    watch.absorb([TrainStep(iteration=i, total=100, lm_loss=10.0 - i / 10) for i in (10, 20, 30)])
    assert watch.loss_at(25) == 8.0 and watch.loss_at(30) == 7.0 and watch.loss_at(5) is None


def test_the_asset_extra_names_the_pending_s3_copy_or_none():
    ckpt = {
        "iteration": 10,
        "tag": "global_step10",
        "path": "/fsx/c/global_step10",
        "size_bytes": 9,
        "loss": 5.5,
    }
    extra = asset_extra(ckpt, "41", S3)
    assert extra == {
        "iteration": 10,
        "loss": 5.5,
        "job_id": "41",
        "size_bytes": 9,
        "path": "/fsx/c/global_step10",
        "s3": {"state": "pending", "uri": f"{S3}/global_step10"},
    }
    assert asset_extra({**ckpt, "job_id": "40"}, "41", None)["job_id"] == "40"  # the job that wrote it
    assert asset_extra(ckpt, "41", None)["s3"] == {"state": "none", "uri": None}


def test_the_emitted_events_carry_loss_job_size_and_s3(tmp_path):
    op = train_operator(s3_checkpoints=S3)
    ctx = context()
    event = final_event("FAILED", "1:0", [10, 20], [20])
    event["checkpoints"][0].update(loss=3.25, job_id="42")
    earlier = {
        "iteration": 10,
        "tag": "global_step10",
        "path": "/fsx/ckpt/run1/global_step10",
        "size_bytes": 9,
    }
    op.execute_complete(ctx, event, record=RECORD, checkpoints=[{**earlier, "loss": 4.5, "job_id": "40"}])
    extras = [e.extra for e in alias_events(ctx)]
    assert [(x["iteration"], x["loss"], x["job_id"], x["size_bytes"]) for x in extras] == [
        (10, 4.5, "40", 9),
        (20, 3.25, "42", 9),
    ]
    assert extras[1]["s3"] == {"state": "pending", "uri": f"{S3}/global_step20"}


def test_the_s3_uri_is_where_the_export_puts_the_checkpoint():
    spec = ExportSpec(
        job_name="nxf-export-run1",
        log_dir="/fsx/jobs",
        scripts_dir="/fsx/code",
        save_dir="/fsx/ckpt/run1",
        bucket="neoxflow-local",
        prefix=export_prefix("/neoxflow/"),
        run="run1",
        tags=("global_step10",),
    )
    assert (
        f"{run_checkpoints_s3_uri('neoxflow-local', '/neoxflow/', 'run1')}/global_step10"
        == f"{spec.dest}/global_step10"
    )
    assert f"{spec.dest}/global_step10" == f"{S3}/global_step10"
