"""Which channels an alert goes to: SNS always (topic from argument, env or Variable), Slack and e-mail
when configured. One list serves ``on_failure_callback=`` / ``on_retry_callback=`` (DAG or task level),
and :func:`send_alert` serves code that raises an alert itself (stall watchers, the resume policy).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from neoxflow.notifiers.base import NeoxflowNotifier, deliver_all, make_alert
from neoxflow.notifiers.slack import NeoxflowSlackNotifier
from neoxflow.notifiers.smtp import NeoxflowSmtpNotifier
from neoxflow.notifiers.sns import NeoxflowSnsNotifier


def configured_channels() -> dict[str, Any]:
    """The alert channels a deployment configures through the environment, for every DAG and alert:
    SNS always (topic from ``NEOXFLOW_ALERT_SNS_TOPIC_ARN`` or the Variable ``neoxflow_alert_sns_topic_arn``);
    Slack and e-mail when their connections are named (``NEOXFLOW_ALERT_SLACK_CONN``,
    ``NEOXFLOW_ALERT_SMTP_CONN`` + ``NEOXFLOW_ALERT_EMAIL_TO``)."""
    import os

    return {
        "slack_conn_id": os.environ.get("NEOXFLOW_ALERT_SLACK_CONN") or None,
        "smtp_conn_id": os.environ.get("NEOXFLOW_ALERT_SMTP_CONN") or None,
        "smtp_to": os.environ.get("NEOXFLOW_ALERT_EMAIL_TO") or None,
    }


def alert_notifiers(
    kind: str,
    *,
    sns_topic_arn: str | None = None,
    slack_conn_id: str | None = None,
    smtp_conn_id: str | None = None,
    smtp_to: str | Iterable[str] | None = None,
    aws_conn_id: str | None = "aws_default",
    detail: str | None = None,
    raise_errors: bool = False,
) -> list[NeoxflowNotifier]:
    """Notifiers for one alert kind, each delivering independently (a failed channel is logged).

    :param kind: ``failure``, ``retry``, ``stall``, ``give_up``, ``deadline``, ``app_failure``...
    :param sns_topic_arn: SNS topic; None -> env ``NEOXFLOW_ALERT_SNS_TOPIC_ARN`` or Variable
        ``neoxflow_alert_sns_topic_arn`` at send time (skipped with a warning if neither is set).
    :param slack_conn_id: Slack webhook connection; no Slack alert when None.
    :param smtp_conn_id: SMTP connection (``smtp_default`` when only ``smtp_to`` is given).
    :param smtp_to: e-mail recipients; no e-mail when None.
    """
    if smtp_conn_id and not smtp_to:
        raise ValueError(f"alert_notifiers: smtp_conn_id={smtp_conn_id!r} given without smtp_to recipients")
    common: dict[str, Any] = {"kind": kind, "detail": detail, "raise_errors": raise_errors}
    notifiers: list[NeoxflowNotifier] = [
        NeoxflowSnsNotifier(target_arn=sns_topic_arn, aws_conn_id=aws_conn_id, **common)
    ]
    if slack_conn_id:
        notifiers.append(NeoxflowSlackNotifier(slack_conn_id=slack_conn_id, **common))
    if smtp_to:
        notifiers.append(
            NeoxflowSmtpNotifier(to=smtp_to, smtp_conn_id=smtp_conn_id or "smtp_default", **common)
        )
    return notifiers


def send_alert(
    kind: str,
    context: Mapping[str, Any] | None = None,
    *,
    notifiers: Iterable[NeoxflowNotifier] | None = None,
    sns_topic_arn: str | None = None,
    slack_conn_id: str | None = None,
    smtp_conn_id: str | None = None,
    smtp_to: str | Iterable[str] | None = None,
    aws_conn_id: str | None = "aws_default",
    **facts: Any,
) -> dict[str, str]:
    """Build one alert and send it on every channel now; returns ``{channel: "sent" | "failed: ..."}``.

    Channels not given are the deployment's (:func:`configured_channels`): an alert raised in code (a
    stall, a give-up, a lost lock) reaches Slack and e-mail like the DAGs' callbacks do, not SNS alone.

    :param facts: explicit alert facts (detail, nodes, reason, job_id, log_lines, record...), see
        :func:`neoxflow.notifiers.message.build_alert`.
    """
    if notifiers is None:
        configured = configured_channels()
        slack_conn_id = slack_conn_id or configured["slack_conn_id"]
        if not smtp_to and configured["smtp_to"]:  # a connection without recipients sends nothing
            smtp_to, smtp_conn_id = configured["smtp_to"], smtp_conn_id or configured["smtp_conn_id"]
        notifiers = alert_notifiers(
            kind,
            sns_topic_arn=sns_topic_arn,
            slack_conn_id=slack_conn_id,
            smtp_conn_id=smtp_conn_id,
            smtp_to=smtp_to,
            aws_conn_id=aws_conn_id,
        )
    return deliver_all(make_alert(kind, context, **facts), notifiers)
