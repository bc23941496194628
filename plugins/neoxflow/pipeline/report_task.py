"""After training: export the complete checkpoints to S3, and write the run's report.

``export.plan_export`` renders the export job for every complete checkpoint it finds (with the plan's own
``export_job``); ``report`` gathers data, training, resumes and checkpoints into the run's summary,
beside the checkpoints on FSx and in S3. Both judge checkpoints by the plan's expectation.
"""

from __future__ import annotations

import json
import logging
import posixpath
from typing import Any

from airflow.sdk.exceptions import AirflowSkipException

from neoxflow.pipeline import connections
from neoxflow.pipeline.export_job import export_job
from neoxflow.pipeline.resume_task import checkpoint_listing
from neoxflow.pipeline.run_plan import RunPlan

log = logging.getLogger(__name__)


def plan_export(plan: dict[str, Any]) -> dict[str, Any]:
    """The export job for every complete checkpoint of the run (the cluster script skips verified ones):
    the plan's own ``export_job``, which rendered it for the run's last checkpoint at plan time."""
    from neoxflow.neox.export import export_tags

    run = RunPlan.from_dict(plan)
    if run.dry_run:
        raise AirflowSkipException("dry run")
    tags = export_tags(checkpoint_listing(run), run.expectation())
    if not tags:
        raise AirflowSkipException("no complete checkpoint to export")
    job = export_job(plan, run.load_profile(), tags)
    log.info("Exporting %d checkpoint(s) to %s", len(tags), job["s3_prefix"])
    return job


def report(plan: dict[str, Any] | None, ti) -> dict[str, Any]:
    """The run's summary: data, training (loss curve PNG), resumes, checkpoints and their S3 copies.

    Written beside the checkpoints on FSx and to S3; returned as XCom for the UI and the demo.
    """
    from neoxflow.neox.checkpoints import complete_checkpoints
    from neoxflow.neox.report import loss_curve_png, summary_json

    if not plan:  # the form or the profile was refused: nothing ran, nothing to report (no retry wait)
        raise AirflowSkipException("no plan: the run stopped before anything was submitted")
    run = RunPlan.from_dict(plan)
    if run.dry_run:
        raise AirflowSkipException("dry run")
    data = ti.xcom_pull(task_ids="data.data_summary") or {}
    train = ti.xcom_pull(task_ids="train.train_slice", key="summary") or {}
    history = ti.xcom_pull(task_ids="train.train_slice", key="resume_history") or {}
    export_plan = ti.xcom_pull(task_ids="export.plan_export") or {}
    exported: list[str] = []
    if export_plan:
        export_bucket, _, key_prefix = export_plan["s3_prefix"][len("s3://") :].partition("/")
        keys = connections.s3_hook().list_keys(bucket_name=export_bucket, prefix=key_prefix) or []
        exported = sorted(
            {k[len(key_prefix) :].split("/", 1)[0] for k in keys if k.endswith("neoxflow-export.json")}
        )
    merged = (data.get("datasets") or {}).get(run.layout.data_path) or {}
    listing = checkpoint_listing(run)
    complete = [c.tag for c in complete_checkpoints(listing, run.expectation())]
    summary = {
        "run_name": run.run_name,
        "model_size": run.fixed.model_size,
        "train_iters": run.fixed.train_iters,
        # the merged dataset's own entry (the top-level totals also count the per-shard parts)
        "data": {k: merged.get(k) for k in ("documents", "tokens")},
        "training": train,
        "resumes": history,
        "checkpoints": complete,
        "checkpoints_in_s3": exported,
    }
    hook = connections.slurm_hook()
    report_dir = posixpath.join(run.layout.checkpoint_dir, "report")  # beside the checkpoints
    text = summary_json(summary)
    hook.upload(text.encode(), posixpath.join(report_dir, "summary.json"))
    png = None
    curve = train.get("loss_curve") or []
    if curve:
        png = loss_curve_png([tuple(p) for p in curve])
        hook.upload(png, posixpath.join(report_dir, "loss_curve.png"))
    s3, bucket = connections.s3_hook(), run.fixed.s3_bucket
    base = posixpath.join(run.fixed.s3_prefix.strip("/"), "runs", run.run_name, "report")
    s3.load_bytes(text.encode(), key=f"{base}/summary.json", bucket_name=bucket, replace=True)
    if png:
        s3.load_bytes(png, key=f"{base}/loss_curve.png", bucket_name=bucket, replace=True)
    log.info(
        "Run summary (also in %s and s3://%s/%s/): %s",
        report_dir,
        bucket,
        base,
        json.dumps({k: v for k, v in summary.items() if k != "training"}),
    )
    return summary
