"""Alerts by e-mail, through the smtp provider's SmtpHook and an Airflow SMTP connection.

Host, port, login and TLS settings live in the connection (extras ``disable_tls`` / ``disable_ssl`` /
``from_email`` as the provider defines them). The body is simple HTML: the facts as a table, the link, the
log tail in ``<pre>``; everything is HTML-escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from neoxflow.notifiers.base import NeoxflowNotifier
from neoxflow.notifiers.message import KINDS, Alert

DEFAULT_FROM = "neoxflow@localhost"


def email_html(alert: Alert) -> str:
    rows = "".join(
        f"<tr><th align='left'>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
        for label, value in alert.fields.items()
        if label != "link"
    )
    parts = [
        f"<p><b>{html.escape(alert.subject)}</b><br>{html.escape(KINDS.get(alert.kind, alert.kind))}</p>",
        f"<table>{rows}</table>",
    ]
    if alert.url:
        parts.append(f'<p><a href="{html.escape(alert.url, quote=True)}">Open the task in Airflow</a></p>')
    if alert.log_lines:
        tail = html.escape("\n".join(alert.log_lines))
        parts.append(f"<p>last {len(alert.log_lines)} log lines:</p><pre>{tail}</pre>")
    return "<html><body>" + "".join(parts) + "</body></html>"


class NeoxflowSmtpNotifier(NeoxflowNotifier):
    """E-mail the alert.

    :param to: recipient(s), a list or a comma/semicolon separated string (templated).
    :param smtp_conn_id: SMTP connection (templated).
    :param from_email: sender; the connection's ``from_email`` extra, else ``neoxflow@localhost``.
    """

    channel = "smtp"
    template_fields: Sequence[str] = (*NeoxflowNotifier.template_fields, "to", "from_email", "smtp_conn_id")

    def __init__(
        self,
        *,
        to: str | Iterable[str],
        smtp_conn_id: str = "smtp_default",
        from_email: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not to:
            raise ValueError("NeoxflowSmtpNotifier: 'to' is empty")
        self.to = to if isinstance(to, str) else list(to)
        self.smtp_conn_id = smtp_conn_id
        self.from_email = from_email

    def deliver(self, alert: Alert) -> str | None:
        from airflow.providers.smtp.hooks.smtp import SmtpHook

        with SmtpHook(smtp_conn_id=self.smtp_conn_id) as hook:
            hook.send_email_smtp(
                to=self.to,
                from_email=self.from_email or hook.from_email or DEFAULT_FROM,
                subject=alert.subject,
                html_content=email_html(alert),
                custom_headers={"X-Neoxflow-Alert": alert.kind},
            )
        self.log.info("neoxflow %s alert e-mailed to %s", alert.kind, self.to)
        return None
