"""Wait in the triggerer for a COMPLETE NeoX checkpoint newer than a given iteration.

One asyncssh connection per trigger; each poll is ONE remote command, ``python3 ckpt_listing.py SAVE
--min-iteration K`` (include/cluster/ckpt_listing.py, shipped to the cluster), whose JSON listing is
judged here by the completeness rule of :mod:`neoxflow.neox.checkpoints`: a folder that a killed save
left half written is never reported. The command and the reading of its answer are
:mod:`neoxflow.neox.checkpoint_listing`'s, shared with every other caller; :func:`fetch_listing`, their
asynchronous use on a trigger's connection, is shared with the training watch
(:mod:`neoxflow.triggers.training`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from neoxflow.hooks.slurm import AsyncSlurmSSHHook
from neoxflow.neox.checkpoint_listing import (
    checkpoint_to_dict,
    expectation_from_dict,
    listing_command,
    new_complete_checkpoints,
    parse_listing,
)
from neoxflow.neox.checkpoints import partial_checkpoints
from neoxflow.triggers.base import PollingTrigger

__all__ = ["CheckpointTrigger", "fetch_listing"]


# ---------------------------------------------------------------------------------------- listing, async
async def fetch_listing(
    hook: AsyncSlurmSSHHook, python: str, script: str, save_dir: str, min_iteration: int = 0
) -> dict:
    """One remote command on the trigger's connection; the parsed listing."""
    status, out, err = await hook.run(listing_command(python, script, save_dir, min_iteration))
    return parse_listing(status, out, err)


# ------------------------------------------------------------------------------------------------ trigger
class CheckpointTrigger(PollingTrigger):
    """Yield ``{"event": "checkpoint", iteration, tag, path, size_bytes}`` for the newest complete
    checkpoint newer than ``after_iteration``; ``{"event": "stalled", reason}`` when nothing new arrived
    within ``stall_window`` seconds (if set); ``{"event": "error", message}`` when the listing keeps
    failing for ``unreachable_timeout`` or the host key is refused.

    :param save_dir: NeoX ``save`` folder on the cluster.
    :param listing_script: remote path of ckpt_listing.py (include/cluster shipped to the cluster).
    :param listing_python: interpreter on the login node that runs it.
    :param expectation: `Expectation` fields (what a complete checkpoint holds); None = stand-in layout.
    :param started_at: epoch seconds the stall window counts from (the sensor's first start).
    """

    SERIALIZED = (
        "ssh_conn_id",
        "save_dir",
        "listing_script",
        "listing_python",
        "after_iteration",
        "expectation",
        "poll_interval",
        "stall_window",
        "started_at",
        "unreachable_timeout",
    )

    def __init__(
        self,
        *,
        ssh_conn_id: str,
        save_dir: str,
        listing_script: str,
        listing_python: str = "python3",
        after_iteration: int | None = None,
        expectation: Mapping[str, Any] | None = None,
        poll_interval: float = 30.0,
        stall_window: float | None = None,
        started_at: float | None = None,
        unreachable_timeout: float = 3600.0,
    ):
        super().__init__()
        self.ssh_conn_id = ssh_conn_id
        self.save_dir = save_dir
        self.listing_script = listing_script
        self.listing_python = listing_python
        self.after_iteration = after_iteration
        self.expectation = dict(expectation) if expectation is not None else None
        self.poll_interval = poll_interval
        self.stall_window = stall_window
        self.started_at = started_at
        self.unreachable_timeout = unreachable_timeout

    def _hook(self) -> AsyncSlurmSSHHook:
        return AsyncSlurmSSHHook(self.ssh_conn_id)

    def _subject(self) -> str:
        return f"the listing of {self.save_dir}"

    def _unreachable_message(self, err: BaseException) -> str:
        return f"checkpoint listing failing: {err}"

    def _begin(self) -> None:
        self._expect = expectation_from_dict(self.expectation)
        self._last_change = self.started_at or time.time()
        self._partial: dict[str, list[str]] = {}

    async def _probe(self, hook: AsyncSlurmSSHHook) -> dict:
        floor = self.after_iteration
        min_iteration = 0 if floor is None else floor + 1
        return await fetch_listing(
            hook, self.listing_python, self.listing_script, self.save_dir, min_iteration
        )

    async def _judge(self, hook: AsyncSlurmSSHHook, answer: dict) -> dict[str, Any] | None:
        found = new_complete_checkpoints(answer, self._expect, self.after_iteration)
        if found:
            newest = found[-1]
            self.log.info("Complete checkpoint %s in %s", newest.tag, self.save_dir)
            return {"event": "checkpoint", **checkpoint_to_dict(newest)}
        partial = partial_checkpoints(answer, self._expect)
        if partial != self._partial:  # a folder appeared or grew: that is progress, and worth a line
            for tag, missing in partial.items():
                self.log.info("Ignoring incomplete %s (missing %s)", tag, ", ".join(missing[:3]))
            if self._partial or partial:
                self._last_change = time.time()
            self._partial = partial
        quiet = time.time() - self._last_change
        if self.stall_window and quiet > self.stall_window:
            reason = (
                f"no new complete checkpoint in {self.save_dir} after iteration "
                f"{self.after_iteration} for {quiet:.0f}s (stall window {self.stall_window:.0f}s)"
            )
            return {"event": "stalled", "reason": reason}
        return None
