"""Where the Training view reads a DAG run's records, inside the api-server: Airflow's metadata DB (the
DAG run, its task instances and their earlier tries, its XComs), S3 through the amazon provider with the
pipeline's own connection (the run of record, the report's ``summary.json``, the checkpoint copies), and
the slices' job logs on FSx only where the run's profile says Airflow sees FSx. Each outside read that
fails is named in ``problems`` and leaves its part empty; nothing read here is a secret (no connection,
variable or config value is put in the story).
"""

from __future__ import annotations

import json
import logging
import posixpath
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neoxflow.pipeline.connections import AWS_CONN_ID
from neoxflow.ui.story import TRAIN, job_log_path, verified_tags

log = logging.getLogger(__name__)
#: the newest part of a slice's job log that is read for the loss curve
MAX_LOG_BYTES = 32 << 20


def _epoch(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _ti_row(ti: Any) -> dict[str, Any]:
    return {
        "task_id": ti.task_id,
        "state": str(ti.state.value if hasattr(ti.state, "value") else ti.state) if ti.state else None,
        "try_number": ti.try_number,
        "start": _epoch(ti.start_date),
        "end": _epoch(ti.end_date),
    }


def find_dag_run(session: Session, dag_id: str, run_id: str):
    from airflow.models.dagrun import DagRun

    return session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))


def recent_runs(session: Session, dag_ids: list[str], limit: int = 50) -> list[dict[str, Any]]:
    """The newest DAG runs of the given DAGs, with the run name their form gave."""
    from airflow.models.dagrun import DagRun

    rows = session.scalars(
        select(DagRun).where(DagRun.dag_id.in_(dag_ids)).order_by(DagRun.id.desc()).limit(limit)
    )
    return [
        {
            "dag_id": r.dag_id,
            "run_id": r.run_id,
            "state": str(r.state.value if hasattr(r.state, "value") else r.state),
            "start": _epoch(r.start_date),
            "end": _epoch(r.end_date),
            "run_name": (r.conf or {}).get("run_name"),
            "dry_run": bool((r.conf or {}).get("dry_run")),
        }
        for r in rows
    ]


def runs_of_record(session: Session, dag_id: str, run_name: str | None, limit: int = 500) -> list:
    """The DAG runs that trained ``run_name``: triggered with it in their form, or by the continuation
    (run id ``continue__<run>__at<iteration>``), newest first."""
    if not run_name:
        return []
    prefix = f"continue__{run_name}__at"
    return [
        r
        for r in recent_runs(session, [dag_id], limit=limit)
        if r["run_name"] == run_name or r["run_id"].startswith(prefix)
    ]


def read_db(session: Session, dag_run: Any) -> dict[str, Any]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.models.xcom import XComModel

    dag_id, run_id = dag_run.dag_id, dag_run.run_id
    tis = session.scalars(
        select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
    )
    tries = session.scalars(
        select(TaskInstanceHistory).where(
            TaskInstanceHistory.dag_id == dag_id, TaskInstanceHistory.run_id == run_id
        )
    )
    xcom = {}
    for row in session.scalars(
        select(XComModel).where(
            XComModel.dag_id == dag_id, XComModel.run_id == run_id, XComModel.map_index == -1
        )
    ):
        xcom[f"{row.task_id}:{row.key}"] = XComModel.deserialize_value(row)
    state = dag_run.state
    return {
        "dag_run": {
            "dag_id": dag_id,
            "run_id": run_id,
            "state": str(state.value if hasattr(state, "value") else state),
            "start": _epoch(dag_run.start_date),
            "end": _epoch(dag_run.end_date),
            "conf": dict(dag_run.conf or {}),
        },
        "tasks": [_ti_row(t) for t in tis],
        "tries": [_ti_row(t) for t in tries],
        "xcom": xcom,
    }


def read_s3(plan: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The run of record, the report's summary and the verified checkpoint copies, from the plan's
    bucket and prefix (``<prefix>/runs/<run>/run-record.json``, ``.../report/summary.json``,
    ``<prefix>/checkpoints/<run>/<tag>/neoxflow-export.json``)."""
    out: dict[str, Any] = {"record": None, "report": None, "s3_checkpoints": None}
    try:
        from airflow.providers.amazon.aws.hooks.s3 import S3Hook

        from neoxflow.pipeline.record import RECORD_NAME

        s3 = S3Hook(aws_conn_id=AWS_CONN_ID)
        bucket, prefix, run = plan["s3"]["bucket"], plan["s3"]["prefix"].strip("/"), plan["run_name"]
        runs = posixpath.join(prefix, "runs", run)
        for name, key in (("record", f"{runs}/{RECORD_NAME}"), ("report", f"{runs}/report/summary.json")):
            if s3.check_for_key(key, bucket_name=bucket):
                out[name] = json.loads(s3.read_key(key, bucket_name=bucket))
        keys = s3.list_keys(bucket_name=bucket, prefix=posixpath.join(prefix, "checkpoints", run) + "/") or []
        out["s3_checkpoints"] = verified_tags(keys)
    except Exception as err:  # noqa: BLE001 - the page says what it could not read and shows the rest
        problems.append(f"S3 not read: {type(err).__name__}: {str(err)[:200]}")
    return out


def read_logs(plan: dict[str, Any], slices: list, problems: list[str]) -> dict[str, str]:
    """The slices' job logs ``{job_id: text}`` when the run's profile says Airflow sees FSx; {} else."""
    try:
        from neoxflow.neox.profile_loader import load_profile

        if not load_profile(plan["profile"]).fsx_visible_to_airflow:
            return {}
    except Exception as err:  # noqa: BLE001
        problems.append(f"profile not loaded: {type(err).__name__}: {str(err)[:200]}")
        return {}
    logs = {}
    for entry in slices or []:
        job_id = str(entry.get("job_id"))
        path = job_log_path(plan, job_id)
        if path is None:
            continue
        try:
            with Path(path).open("rb") as f:
                f.seek(max(Path(path).stat().st_size - MAX_LOG_BYTES, 0))
                logs[job_id] = f.read().decode("utf-8", "replace")
        except OSError as err:
            problems.append(f"log of job {job_id} not read: {err.strerror or err}")
    return logs


def gather(session: Session, dag_run: Any, *, outside: bool = True) -> dict[str, Any]:
    """Everything ``story.build_story`` reads, for one DAG run; ``outside=False`` skips S3 and FSx."""
    src = read_db(session, dag_run)
    problems: list[str] = []
    plan = src["xcom"].get("prepare.plan:return_value")
    src.update(record=None, report=None, s3_checkpoints=None, logs={})
    if outside and isinstance(plan, dict) and not plan.get("dry_run"):
        src.update(read_s3(plan, problems))
        src["logs"] = read_logs(plan, src["xcom"].get(f"{TRAIN}:slices") or [], problems)
    src["problems"] = problems
    return src
