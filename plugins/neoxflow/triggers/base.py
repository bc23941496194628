"""The one poll loop of neoxflow's triggers: probe, judge, wait; a failed probe is not a verdict.

The Slurm job watch, the training watch, the checkpoint wait and the FSx task wait all do the same
thing in the triggerer: ask something over the network, decide from the answer whether to fire an
event, otherwise sleep and ask again. What they share lives here, once:

- the loop itself, and that the trigger's connection (its hook) is opened once and closed at the end;
- a probe that raises (SSH down, a timeout) is retried with :func:`neoxflow.backoff.jittered_backoff`,
  and only after ``unreachable_timeout`` of failures in a row becomes an ``error`` event; a refused
  host key is an ``error`` at once (retrying cannot fix it);
- how long an answer has been "unknown" (:meth:`PollingTrigger._unknown_for`), for the subclass to
  judge against its own limit.

A subclass supplies only what differs: ``_hook`` (its connection), ``_probe`` (one round trip, never
blocking the event loop), ``_judge`` (the verdict: an event payload, None to wait, or :data:`AGAIN` to
ask again at once) and ``_error_event``. It names the constructor arguments it serialises in
``SERIALIZED``, so ``serialize()`` and ``__init__`` cannot drift apart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from neoxflow.backoff import jittered_backoff
from neoxflow.hooks.slurm import is_host_key_error

__all__ = ["AGAIN", "PollingTrigger"]

#: what ``_judge`` returns to poll again without sleeping (more of the log is waiting)
AGAIN: Any = object()


class PollingTrigger(BaseTrigger):
    """Poll until ``_judge`` has a verdict; see the module docstring for what subclasses supply."""

    #: the constructor's keyword arguments, as attributes of the same name: what ``serialize`` returns
    SERIALIZED: ClassVar[tuple[str, ...]] = ()
    poll_interval: float = 10.0
    #: failing probes for this long (seconds) end in an ``error`` event; None: never
    unreachable_timeout: float | None = 3600.0

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {name: getattr(self, name) for name in self.SERIALIZED},
        )

    # -- what a subclass supplies ----------------------------------------------------------------------
    def _hook(self) -> Any:
        """The connection the probes use, opened lazily by the hook and closed after the loop."""
        raise NotImplementedError

    def _begin(self) -> None:
        """Reset what one ``run`` remembers between polls (logs read, timers)."""

    async def _probe(self, hook: Any) -> Any:
        """One round trip; raises when the other side could not be asked."""
        raise NotImplementedError

    async def _judge(self, hook: Any, answer: Any) -> dict[str, Any] | None:
        """The event payload when the answer decides, None to sleep ``poll_interval``, or `AGAIN`."""
        raise NotImplementedError

    def _error_event(self, message: str) -> dict[str, Any]:
        return {"event": "error", "message": message}

    def _unreachable_message(self, err: BaseException) -> str:
        return f"cluster unreachable for {self.unreachable_timeout:.0f}s: {err}"

    def _subject(self) -> str:
        """What the probe asks about, for the log lines of failed polls."""
        return type(self).__name__

    async def _fire(self, hook: Any, payload: dict[str, Any]) -> TriggerEvent:
        """The event for a verdict (the training watch moves its bulky state to a file first)."""
        return TriggerEvent(payload)

    async def _close(self, hook: Any) -> None:
        await hook.close()

    # -- the loop --------------------------------------------------------------------------------------
    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = self._hook()
        self._unknown_since, self._unknown_polls = None, 0
        self._begin()
        failures = 0
        failing_since: float | None = None
        try:
            while True:
                try:
                    answer = await self._probe(hook)
                except Exception as err:
                    if is_host_key_error(err):
                        yield await self._fire(hook, self._error_event(f"SSH host key rejected: {err}"))
                        return
                    failures += 1
                    failing_since = failing_since or time.monotonic()
                    timeout = self.unreachable_timeout
                    if timeout is not None and time.monotonic() - failing_since > timeout:
                        yield await self._fire(hook, self._error_event(self._unreachable_message(err)))
                        return
                    wait = jittered_backoff(self.poll_interval, failures)
                    self.log.warning(
                        "Poll of %s failed (%s: %s); retrying in %.1fs",
                        self._subject(),
                        type(err).__name__,
                        err,
                        wait,
                    )
                    await asyncio.sleep(wait)
                    continue
                failures, failing_since = 0, None
                verdict = await self._judge(hook, answer)
                if verdict is AGAIN:
                    continue
                if verdict is not None:
                    yield await self._fire(hook, verdict)
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            await self._close(hook)

    # -- helpers for _judge ----------------------------------------------------------------------------
    _unknown_since: float | None = None
    _unknown_polls: int = 0

    def _unknown_for(self, unknown: bool) -> tuple[int, float] | None:
        """Track answers that say nothing: ``(answers in a row, seconds since the first)`` while they
        last, None (and the count reset) at the first answer that knows."""
        if not unknown:
            self._unknown_since, self._unknown_polls = None, 0
            return None
        self._unknown_since = self._unknown_since or time.monotonic()
        self._unknown_polls += 1
        return self._unknown_polls, time.monotonic() - self._unknown_since
