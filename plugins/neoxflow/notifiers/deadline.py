"""Deadline alerts (Airflow 3 ``DeadlineAlert``): "this run has taken longer than X".

The scheduler notices the missed deadline and queues the :class:`AsyncCallback`; the triggerer imports
:func:`deadline_callback` by its dotted path and awaits it with the kwargs stored in the DAG plus a small
``context`` (``{"dag_run": <DAGRunResponse as JSON>, "deadline": {"id", "deadline_time"}}``; 3.3 sends no
task instance). So the callback lives here, in the plugins package the triggerer can import, takes only
JSON-able kwargs, and sends the same alert as the task callbacks, each channel in a worker thread so the
triggerer's event loop is never blocked by boto3, smtplib or urllib.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

from neoxflow.notifiers.factory import send_alert


def _human(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    return "".join(parts) or f"{secs}s"


def run_deadline(
    interval: timedelta,
    *,
    sns_topic_arn: str | None = None,
    slack_conn_id: str | None = None,
    smtp_conn_id: str | None = None,
    smtp_to: str | Iterable[str] | None = None,
    aws_conn_id: str | None = "aws_default",
    name: str | None = None,
) -> DeadlineAlert:
    """A ``DeadlineAlert`` firing when a run is still going ``interval`` after it was queued.

    Pass it as ``DAG(deadline=...)``. Channels are those of :func:`alert_notifiers`.
    """
    if interval <= timedelta(0):
        raise ValueError(f"run_deadline: interval must be positive, got {interval}")
    kwargs: dict[str, Any] = {
        "kind": "deadline",
        "interval_s": interval.total_seconds(),
        "sns_topic_arn": sns_topic_arn,
        "slack_conn_id": slack_conn_id,
        "smtp_conn_id": smtp_conn_id,
        "smtp_to": smtp_to if smtp_to is None or isinstance(smtp_to, str) else list(smtp_to),
        "aws_conn_id": aws_conn_id,
    }
    return DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=interval,
        callback=AsyncCallback(deadline_callback, kwargs={k: v for k, v in kwargs.items() if v is not None}),
        name=name or f"neoxflow run time > {_human(interval.total_seconds())}",
    )


async def deadline_callback(
    *,
    kind: str = "deadline",
    interval_s: float | None = None,
    detail: str | None = None,
    context: Mapping[str, Any] | None = None,
    **channels: Any,
) -> dict[str, str]:
    """Send the deadline alert on every configured channel; returns ``{channel: status}`` (the trigger
    event's body, so the outcome is visible in the triggerer log and the callback record).

    :param channels: ``sns_topic_arn``, ``slack_conn_id``, ``smtp_conn_id``, ``smtp_to``, ``aws_conn_id``
        as :func:`run_deadline` recorded them; the deployment's channels complete them (:func:`send_alert`).
    """
    context = context or {}
    dag_run = context.get("dag_run") or {}
    if detail is None and interval_s is not None:
        state = dag_run.get("state") if isinstance(dag_run, Mapping) else None
        detail = f"run still {state or 'going'} {_human(interval_s)} after it was queued"
    # the SNS/Slack/SMTP clients block: off the triggerer's event loop
    return await asyncio.to_thread(send_alert, kind, context, detail=detail, **channels)
