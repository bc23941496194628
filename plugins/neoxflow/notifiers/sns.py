"""Alerts to Amazon SNS (the default channel): through the amazon provider's SnsHook.

Subscribers (e-mail, SQS, Lambda, a pager) are managed on the topic, outside Airflow. The alert kind, dag
and task travel as message attributes so that subscription filter policies can route, e.g., only
``app_failure`` and ``give_up`` to the pager.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from neoxflow.notifiers.base import NeoxflowNotifier
from neoxflow.notifiers.message import Alert

TOPIC_ENV = "NEOXFLOW_ALERT_SNS_TOPIC_ARN"
TOPIC_VARIABLE = "neoxflow_alert_sns_topic_arn"


def default_topic_arn() -> str | None:
    """The deployment's alert topic: env ``NEOXFLOW_ALERT_SNS_TOPIC_ARN``, else Variable
    ``neoxflow_alert_sns_topic_arn``; None when neither is set."""
    arn = os.environ.get(TOPIC_ENV)
    if arn:
        return arn
    try:
        from airflow.sdk import Variable

        return Variable.get(TOPIC_VARIABLE, default=None) or None
    except Exception:  # noqa: BLE001 - no Variable backend reachable: treated as "not configured"
        return None


def message_attributes(alert: Alert) -> dict[str, str]:
    """Flat string attributes for SNS filter policies (SnsHook picks the DataType from the value)."""
    attributes = {"neoxflow_kind": alert.kind}
    for label, name in (("dag", "dag_id"), ("task", "task_id"), ("slurm job", "job_id")):
        if alert.fields.get(label):
            attributes[name] = alert.fields[label][:256]
    return attributes


class NeoxflowSnsNotifier(NeoxflowNotifier):
    """Publish the alert to an SNS topic.

    :param target_arn: topic (or endpoint) ARN, templated; :func:`default_topic_arn` when None. With no
        topic at all the alert is skipped with a warning, not an error: SNS is optional in a lab.
    :param aws_conn_id: AWS connection (``aws_default``), templated.
    :param region_name: AWS region; the connection's when None.
    """

    channel = "sns"
    template_fields: Sequence[str] = (*NeoxflowNotifier.template_fields, "target_arn", "aws_conn_id")

    def __init__(
        self,
        *,
        target_arn: str | None = None,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.target_arn = target_arn
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name

    def deliver(self, alert: Alert) -> str | None:
        from airflow.providers.amazon.aws.hooks.sns import SnsHook

        arn = self.target_arn or default_topic_arn()
        if not arn:
            self.log.warning(
                "No SNS topic for neoxflow alerts (set %s or Variable %s): alert %r not sent",
                TOPIC_ENV,
                TOPIC_VARIABLE,
                alert.subject,
            )
            return "skipped: no SNS topic configured"
        hook = SnsHook(aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        response = hook.publish_to_target(
            target_arn=arn,
            message=alert.text,
            subject=alert.subject,
            message_attributes=message_attributes(alert),
        )
        self.log.info(
            "neoxflow %s alert published to SNS (message %s)", alert.kind, response.get("MessageId")
        )
        return None
