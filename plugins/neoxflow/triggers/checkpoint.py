"""Wait in the triggerer for a COMPLETE NeoX checkpoint newer than a given iteration.

One asyncssh connection per trigger; each poll is ONE remote command, ``python3 ckpt_listing.py SAVE
--min-iteration K`` (include/cluster/ckpt_listing.py, shipped to the cluster), whose JSON listing is
judged here by the completeness rule of :mod:`neoxflow.neox.checkpoints`: a folder that a killed save
left half written is never reported. The listing helpers below are shared with the training watch
(:mod:`neoxflow.triggers.training`).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Mapping
from typing import Any

from neoxflow.hooks.slurm import AsyncSlurmSSHHook
from neoxflow.neox.checkpoints import Checkpoint, Expectation, complete_checkpoints, partial_checkpoints
from neoxflow.slurm.validate import UnsafeValueError, check_remote_path
from neoxflow.triggers.base import PollingTrigger

__all__ = [
    "CheckpointTrigger",
    "ListingError",
    "checkpoint_to_dict",
    "expectation_from_dict",
    "expectation_to_dict",
    "listing_command",
    "new_complete_checkpoints",
    "parse_listing",
]


class ListingError(RuntimeError):
    """ckpt_listing.py failed or printed something that is not its JSON listing."""


# --------------------------------------------------------------------------------------------- pure parts
def listing_command(python: str, script: str, save_dir: str, min_iteration: int = 0) -> str:
    """The remote command line that prints the JSON listing of ``save_dir`` (validated, quoted)."""
    if isinstance(min_iteration, bool) or not isinstance(min_iteration, int) or min_iteration < 0:
        raise UnsafeValueError("min_iteration", min_iteration, "must be an integer >= 0")
    args = [
        check_remote_path(python, "listing_python"),
        check_remote_path(script, "listing_script"),
        check_remote_path(save_dir, "save_dir"),
        f"--min-iteration={min_iteration}",
    ]
    for name, value in zip(("listing_python", "listing_script", "save_dir"), args, strict=False):
        if value.startswith("-"):
            raise UnsafeValueError(name, value, "must not start with '-'")
    return " ".join(shlex.quote(a) for a in args)


def parse_listing(status: int, stdout: bytes, stderr: bytes = b"") -> dict:
    """The listing dict from the command's answer; `ListingError` naming what went wrong otherwise."""
    text = stdout.decode("utf-8", "replace").strip()
    if status != 0:
        err = stderr.decode("utf-8", "replace").strip()[-500:]
        raise ListingError(f"ckpt_listing.py exited {status}: {err or text[-500:] or 'no output'}")
    try:
        listing = json.loads(text.splitlines()[-1] if text else "")
    except (json.JSONDecodeError, IndexError) as err:
        raise ListingError(f"ckpt_listing.py printed no JSON listing ({err}): {text[:300]!r}") from err
    if not isinstance(listing, dict):
        raise ListingError(f"ckpt_listing.py printed {type(listing).__name__}, not a JSON object")
    return listing


def expectation_to_dict(expect: Expectation) -> dict[str, Any]:
    return dataclasses.asdict(expect)


def expectation_from_dict(data: Mapping[str, Any] | None) -> Expectation:
    """An `Expectation` from its dict (None = the stand-in trainer's layout); unknown keys are named."""
    if data is None:
        return Expectation.standin()
    if isinstance(data, Expectation):
        return data
    known = {f.name for f in dataclasses.fields(Expectation)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"expectation: unknown key(s) {unknown}; known: {sorted(known)}")
    return Expectation(**dict(data))


def checkpoint_to_dict(ckpt: Checkpoint) -> dict[str, Any]:
    return {"iteration": ckpt.iteration, "tag": ckpt.tag, "path": ckpt.path, "size_bytes": ckpt.size_bytes}


def new_complete_checkpoints(
    listing: Mapping, expect: Expectation, after_iteration: int | None
) -> list[Checkpoint]:
    """Complete checkpoints newer than ``after_iteration`` (None = all), oldest first."""
    floor = -1 if after_iteration is None else after_iteration
    return [c for c in complete_checkpoints(listing, expect) if c.iteration > floor]


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
