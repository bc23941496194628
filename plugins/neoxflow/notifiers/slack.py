"""Alerts to a Slack incoming webhook, with the standard library only (the Slack provider is not installed).

The webhook URL is a bearer credential, so it lives in an Airflow connection, never in DAG code:

* ``password`` = the full URL (``https://hooks.slack.com/services/T../B../...``), or
* ``password`` (or extra ``webhook_token``) = the ``T../B../...`` part, joined to ``host``
  (default ``https://hooks.slack.com/services``), or
* extra ``webhook_url`` = the full URL.

It never appears in a log line or an error message (urllib's errors do not carry the URL; ours do not).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from neoxflow.notifiers.base import NeoxflowNotifier
from neoxflow.notifiers.message import Alert

DEFAULT_HOST = "https://hooks.slack.com/services"
SECTION_LIMIT = 2900  # Slack: 3000 characters per section text
FIELD_LIMIT = 1900  # Slack: 2000 characters per field, 10 fields per section


def webhook_url(
    conn_id: str, password: str | None, host: str | None, schema: str | None, extra: Mapping[str, Any]
) -> str:
    """The webhook URL described by a connection's parts (see module doc); errors name the connection."""
    if password and password.startswith(("https://", "http://")):
        url = password
    elif extra.get("webhook_url"):
        url = str(extra["webhook_url"])
    else:
        token = password or extra.get("webhook_token")
        if not token:
            raise ValueError(
                f"connection {conn_id!r}: no Slack webhook (set password to the webhook URL or token, "
                "or extra webhook_url)"
            )
        base = host or DEFAULT_HOST
        if "://" not in base:
            base = f"{schema if schema in ('http', 'https') else 'https'}://{base}"
        url = f"{base.rstrip('/')}/{str(token).lstrip('/')}"
    if urlsplit(url).scheme not in ("https", "http"):
        raise ValueError(f"connection {conn_id!r}: the Slack webhook must be an http(s) URL")
    return url


def _escape(text: str) -> str:
    """Slack mrkdwn control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def slack_payload(alert: Alert) -> dict[str, Any]:
    """Block Kit message: headline, facts as fields, the link, the log tail in a code block.

    ``text`` is the plain fallback shown in notifications.
    """
    fields = {k: v for k, v in alert.fields.items() if k != "link"}
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_escape(alert.subject)}*"}}
    ]
    items = [
        {"type": "mrkdwn", "text": _clip(f"*{_escape(label)}*\n{_escape(value)}", FIELD_LIMIT)}
        for label, value in fields.items()
    ]
    for start in range(0, len(items), 10):
        blocks.append({"type": "section", "fields": items[start : start + 10]})
    if alert.url:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": f"<{alert.url}|Open the task in Airflow>"}}
        )
    if alert.log_lines:
        tail = _escape("\n".join(alert.log_lines)).replace("```", "'''")
        if len(tail) > SECTION_LIMIT - 8:
            tail = "..." + tail[-(SECTION_LIMIT - 11) :]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"```{tail}```"}})
    return {"text": alert.subject, "blocks": blocks}


def post_json(url: str, payload: Mapping[str, Any], timeout: float) -> None:
    """POST ``payload``; raise with the HTTP status and the start of the answer (never the URL)."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json; charset=utf-8", "User-Agent": "neoxflow-alerts"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked
            response.read()
    except urllib.error.HTTPError as err:
        body = err.read(300).decode("utf-8", "replace")
        raise RuntimeError(f"Slack webhook answered HTTP {err.code}: {body}") from None
    except urllib.error.URLError as err:
        raise RuntimeError(f"Slack webhook unreachable: {err.reason}") from None


class NeoxflowSlackNotifier(NeoxflowNotifier):
    """Post the alert to a Slack incoming webhook.

    :param slack_conn_id: connection holding the webhook (see module doc), templated.
    :param timeout: seconds for the HTTP request.
    """

    channel = "slack"
    template_fields: Sequence[str] = (*NeoxflowNotifier.template_fields, "slack_conn_id")

    def __init__(self, *, slack_conn_id: str = "slack_default", timeout: float = 10.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.slack_conn_id = slack_conn_id
        self.timeout = timeout

    def _url(self) -> str:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(self.slack_conn_id)
        return webhook_url(self.slack_conn_id, conn.password, conn.host, conn.schema, conn.extra_dejson)

    def deliver(self, alert: Alert) -> str | None:
        post_json(self._url(), slack_payload(alert), self.timeout)
        self.log.info("neoxflow %s alert posted to Slack (connection %s)", alert.kind, self.slack_conn_id)
        return None
