"""The part every neoxflow notifier shares: context -> scrubbed :class:`Alert` -> one channel.

Each channel (SNS, Slack, SMTP) only implements :meth:`NeoxflowNotifier.deliver`. The alert is built once
per call from the Airflow callback context (:func:`make_alert`), and a delivery error is logged (scrubbed)
and swallowed: a Slack outage must not hide the SNS message that follows it in the callback list, and a
callback must not turn a clear task failure into a confusing callback error. ``raise_errors=True`` is for
tests and for callers that want to know.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from airflow.sdk import BaseNotifier

from neoxflow.notifiers.message import Alert, build_alert
from neoxflow.notifiers.scrub import scrub


def airflow_base_url() -> str | None:
    """Airflow's ``[api] base_url`` (None when unset: the builder then uses Airflow's localhost default)."""
    try:
        from airflow.sdk.configuration import conf

        return conf.get("api", "base_url", fallback=None)
    except Exception:  # noqa: BLE001 - a missing config must not stop an alert
        return None


def airflow_redact(text: str) -> str:
    """Mask values Airflow knows are secret (connection passwords, sensitive Variables seen so far)."""
    try:
        from airflow.sdk._shared.secrets_masker import redact

        masked = redact(text)
        return masked if isinstance(masked, str) else text
    except Exception:  # noqa: BLE001 - our own rules still apply
        return text


def _redacted(alert: Alert) -> Alert:
    return Alert(
        kind=alert.kind,
        subject=airflow_redact(alert.subject),
        text=airflow_redact(alert.text),
        fields={k: airflow_redact(v) for k, v in alert.fields.items()},
        log_lines=tuple(airflow_redact(line) for line in alert.log_lines),
        url=alert.url,
    )


def make_alert(
    kind: str,
    context: Mapping[str, Any] | None = None,
    *,
    base_url: str | None = None,
    known_secrets: Iterable[str] = (),
    **facts: Any,
) -> Alert:
    """:func:`build_alert` with the Airflow UI address from config and Airflow's secrets masker applied."""
    alert = build_alert(
        kind, context, base_url=base_url or airflow_base_url(), known_secrets=known_secrets, **facts
    )
    return _redacted(alert)


class NeoxflowNotifier(BaseNotifier):
    """Base of the neoxflow channels.

    :param kind: alert kind (``failure``, ``retry``, ``stall``, ``give_up``, ``deadline``, ``app_failure``...;
        templated).
    :param detail: one more line for the human (templated), e.g. "3 attempts, failed nodes n1, n2".
    :param base_url: Airflow UI address for the task link; ``[api] base_url`` when None.
    :param raise_errors: re-raise delivery errors after logging them (default: log only).
    """

    channel = "base"
    template_fields: Sequence[str] = ("kind", "detail")

    def __init__(
        self,
        *,
        kind: str = "failure",
        detail: str | None = None,
        base_url: str | None = None,
        raise_errors: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.kind = kind
        self.detail = detail
        self.base_url = base_url
        self.raise_errors = raise_errors

    def deliver(self, alert: Alert) -> str | None:
        """Send one rendered alert on this channel (blocking I/O). Raise on failure; return a status
        such as ``"skipped: no topic configured"`` when there was deliberately nothing to do."""
        raise NotImplementedError

    def alert_for(self, context: Mapping[str, Any]) -> Alert:
        return make_alert(self.kind, context, base_url=self.base_url, detail=self.detail)

    def notify(self, context: Any) -> None:
        self.deliver(self.alert_for(context))

    async def async_notify(self, context: Any) -> None:
        await asyncio.to_thread(self.notify, context)

    def safe_deliver(self, alert: Alert) -> str:
        """Deliver and report ``"sent"`` or ``"failed: <scrubbed reason>"``; raises only if raise_errors."""
        try:
            status = self.deliver(alert)
        except Exception as err:
            reason = airflow_redact(scrub(f"{type(err).__name__}: {err}"))
            self.log.error("neoxflow %s alert (%s) not delivered: %s", self.channel, alert.kind, reason)
            if self.raise_errors:
                raise
            return f"failed: {reason}"
        return status or "sent"

    def __call__(self, *args: Any) -> None:
        """Airflow's callback entry point: render templates, build the alert, deliver; never raises
        unless ``raise_errors`` (BaseNotifier would log the raw, unscrubbed error and re-raise)."""
        context = args[0] if len(args) == 1 else {"dag": args[0]}
        try:
            self._update_context(context)
            self.render_template_fields(context)
            alert = self.alert_for(context)
        except Exception as err:
            self.log.error("neoxflow %s alert could not be built: %s", self.channel, scrub(str(err)))
            if self.raise_errors:
                raise
            return
        self.safe_deliver(alert)


def deliver_all(alert: Alert, notifiers: Iterable[NeoxflowNotifier]) -> dict[str, str]:
    """Send ``alert`` on every channel; one failing channel does not stop the others.

    Returns ``{channel: "sent" | "skipped: ..." | "failed: ..."}`` (channel names made unique).
    """
    results: dict[str, str] = {}
    for notifier in notifiers:
        name = notifier.channel
        n = 2
        while name in results:
            name, n = f"{notifier.channel}#{n}", n + 1
        results[name] = notifier.safe_deliver(alert)
    return results
