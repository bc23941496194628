"""Keep trigger events small: Airflow's triggerer logs every event it fires, whole
(``Trigger fired event ... TriggerEvent<{...}>``), into the task log.

- A Slurm status in an event (:func:`event_status`) lists at most ``MAX_EVENT_TASKS`` array tasks, those
  that decided the outcome first, with the count of every state: a 1024-task data array no longer puts a
  thousand task dicts into the log (the summary line already says ``k/n array tasks ...``).
- The training watch's bulky state travels in a file beside the job's log. Its event used to carry its
  whole state: the recent NeoX intervals,
the loss curve, the job record, the checkpoints so far and the last 40 log lines - a screen of dict per
checkpoint. Now the trigger writes that part (``BULKY``) as JSON to ``<log path>.event.json`` on the
cluster, over the SSH connection it already holds, and the event keeps a pointer (``state``: path, size,
the log offset it belongs to) and the small facts (kind, job id, offset, the progress line, new
checkpoints). The worker reads the file back when it resumes (:func:`restore_event`).

If the file cannot be written, the event carries everything as before (a long log line beats a lost
state); if it cannot be read back, or it belongs to another event (another offset), the task fails
retryably rather than judging a run on half its state.
"""

from __future__ import annotations

import base64
import gzip
import json
import shlex
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "BULKY",
    "EventStateError",
    "event_status",
    "offload_event",
    "restore_event",
    "state_path",
    "write_command",
]

#: the payload keys that go to the file
BULKY = ("watch", "carry", "tail")
#: base64 characters of state in one write command, at most
MAX_COMMAND_DATA = 100_000
#: array tasks listed in an event's status, at most
MAX_EVENT_TASKS = 8


def event_status(status: Any) -> dict[str, Any]:
    """``status.to_dict()`` (a `JobStatus`), with a big array's task list cut to the tasks that decided
    its outcome (then the others), ``MAX_EVENT_TASKS`` at most, and ``tasks_total``/``tasks_by_state``."""
    data = status.to_dict()
    tasks = data["tasks"]
    if len(tasks) <= MAX_EVENT_TASKS:
        return data
    by_state: dict[str, int] = {}
    for task in tasks:
        by_state[task["state"]] = by_state.get(task["state"], 0) + 1
    deciding = {t.job_id for t in status.tasks if t.outcome == status.outcome}
    ordered = [t for t in tasks if t["job_id"] in deciding] + [
        t for t in tasks if t["job_id"] not in deciding
    ]
    return {**data, "tasks": ordered[:MAX_EVENT_TASKS], "tasks_total": len(tasks), "tasks_by_state": by_state}


class EventStateError(RuntimeError):
    """The event's state file could not be read back, or it belongs to another event."""


def state_path(log_path: str) -> str:
    return f"{log_path}.event.json"


def write_command(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (a temporary file, then rename), gzip'd and base64'd into
    the command itself (no stdin needed); ValueError when the command would not fit into one argument
    (Linux takes 128 kB per argument, and sshd runs the command as ``sh -c <command>``)."""
    encoded = base64.b64encode(gzip.compress(data, mtime=0)).decode()
    if len(encoded) > MAX_COMMAND_DATA:
        raise ValueError(f"{len(data)} bytes of state do not fit into one command")
    tmp = shlex.quote(f"{path}.tmp.") + "$$"  # one per shell: two triggerers may write at once (HA)
    return (
        f"printf %s {shlex.quote(encoded)} | base64 -d | gzip -dc > {tmp} && mv -f {tmp} {shlex.quote(path)}"
    )


async def offload_event(hook: Any, log_path: str | None, payload: dict[str, Any], log: Any) -> dict[str, Any]:
    """The payload with its ``BULKY`` part moved to the state file (unchanged when that fails)."""
    bulky = {key: payload[key] for key in BULKY if key in payload}
    if not log_path or not bulky:
        return payload
    path = state_path(log_path)
    offset = payload.get("log_offset")
    data = json.dumps({"log_offset": offset, **bulky}, separators=(",", ":")).encode()
    try:
        status, _, err = await hook.run(write_command(path, data))
    except Exception as error:  # the event still goes out, whole (too big, or the SSH command failed)
        status, err = -1, str(error).encode()
    if status != 0:
        log.warning(
            "Could not write %s (%s): the event carries its state", path, err.decode("utf-8", "replace")
        )
        return payload
    small = {key: value for key, value in payload.items() if key not in bulky}
    small["state"] = {"path": path, "bytes": len(data), "log_offset": offset}
    return small


def restore_event(event: Mapping[str, Any], read_file: Callable[[str], bytes]) -> dict[str, Any]:
    """The event with its ``BULKY`` part read back from the state file it points to (as is without one)."""
    pointer = event.get("state")
    if not isinstance(pointer, Mapping) or "path" not in pointer:
        return dict(event)
    try:
        saved = json.loads(read_file(pointer["path"]))
    except Exception as err:
        raise EventStateError(f"could not read the watch state {pointer['path']}: {err}") from err
    if saved.get("log_offset") != pointer.get("log_offset"):
        raise EventStateError(
            f"{pointer['path']} holds the state at log offset {saved.get('log_offset')}, "
            f"the event is at {pointer.get('log_offset')}"
        )
    restored = {key: value for key, value in event.items() if key != "state"}
    restored.update({key: saved[key] for key in BULKY if key in saved})
    return restored
