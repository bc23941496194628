"""Which try of a task instance owns a Slurm job, and whether a new try may adopt it.

Why a file beside the job, and not the metadata DB or the job's Slurm comment:

- the trigger's ``on_kill`` runs in the triggerer, which in Airflow 3 cannot read the metadata DB and is
  not told whether a person marked the task failed, marked it successful or cleared it. What it can do
  is run one command over its SSH connection. So the owner must live on the cluster;
- a small file ``<job dir>/owner-<job id>`` (key=value lines) is written under ``flock`` by the try that
  submits or adopts the job, and ``on_kill`` compares-and-cancels under the same lock in ONE remote
  command: it cancels only when the file names its own try, and then leaves a ``cancel_requested_at``
  mark. A claim refuses a job with that mark. The lock makes "a newer try adopted it" and "this stale
  trigger cancels it" mutually exclusive, whatever order they come in (a stale trigger whose id SQLite
  reused, a triggerer that acts late);
- a Slurm comment could hold the same token, but ``scontrol update`` gives no compare-and-set, and the
  comment is already the human-readable back-reference.

The token names the task instance AND its try (``try_number``): clearing a task starts a new try, so
the new try's claim takes the job away from the cleared try's trigger. A trigger serialised before this
module existed carries no token; it keeps the old behaviour (cancel).

A job found CANCELLED, or with the cancel mark (still COMPLETING after a scancel), is never adopted: the
new try waits until it has left the queue and then submits afresh, resuming from the latest complete
checkpoint. Without the mark, sacct's ``CANCELLED`` (an admin's scancel) says the same when accounting
answers.
"""

from __future__ import annotations

import enum
import posixpath
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from neoxflow.slurm.parse import JobStatus
from neoxflow.slurm.states import Outcome, normalise_state
from neoxflow.slurm.validate import check_job_id, check_remote_path

__all__ = [
    "Adoption",
    "CancelAnswer",
    "ClaimAnswer",
    "OwnerRecord",
    "adoption",
    "cancel_if_owner_command",
    "claim_command",
    "owner_path",
    "owner_token",
    "parse_cancel",
    "parse_claim",
    "parse_owner",
    "read_owner_command",
]

q = shlex.quote
_TOKEN_UNSAFE = re.compile(r"[^A-Za-z0-9_.:+@/-]+")
LOCK_WAIT_S = 20  # on_kill has 30 s in all (triggerer on_kill_timeout)


def owner_token(dag_id: str, run_id: str, task_id: str, map_index: int | None, try_number: int | None) -> str:
    """``dag/run/task/map/tryN``: one task instance's one try (a clear or a retry starts a new try)."""
    raw = f"{dag_id}/{run_id}/{task_id}/{-1 if map_index is None else map_index}/try{try_number or 0}"
    return _TOKEN_UNSAFE.sub("_", raw)[:400]


def owner_token_of(context: Mapping[str, Any]) -> str:
    """The owner token of the running try (from a task's context)."""
    ti = context["ti"]
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    return owner_token(
        ti.dag_id, str(run_id), ti.task_id, getattr(ti, "map_index", -1), getattr(ti, "try_number", 0)
    )


def owner_path(job_dir: str, job_id: str) -> str:
    return posixpath.join(check_remote_path(job_dir, "job_dir"), f"owner-{check_job_id(job_id)}")


def _check_token(token: str) -> str:
    if not token or _TOKEN_UNSAFE.search(token):
        raise ValueError(f"owner token {token!r} must be non-empty and use only [A-Za-z0-9_.:+@/-]")
    return token


def _locked(path: str, body: str) -> str:
    """``body`` under an exclusive flock on ``<path>.lock`` (plain when flock is missing: best effort)."""
    lock = q(path + ".lock")
    return (
        f"mkdir -p -- {q(posixpath.dirname(path))} && ( "
        f"if command -v flock >/dev/null 2>&1; then flock -w {LOCK_WAIT_S} 9 || exit 75; fi; {body} "
        f") 9>>{lock}"
    )


def _field(path: str, key: str) -> str:
    return f"$(sed -n 's/^{key}=//p' {q(path)} 2>/dev/null | head -n 1)"


def claim_command(path: str, job_id: str, token: str, now: int) -> str:
    """Make ``token`` the job's owner unless a cancel was requested; prints ``claimed`` or
    ``cancel-requested <by>``."""
    check_job_id(job_id)
    _check_token(token)
    tmp = q(f"{path}.tmp")
    body = (
        f"mark={_field(path, 'cancel_requested_at')}; by={_field(path, 'cancel_by')}; "
        f'if [ -n "$mark" ]; then echo "cancel-requested $by"; exit 0; fi; '
        f"printf '%s\\n' {q('job_id=' + job_id)} {q('owner=' + token)} {q(f'claimed_at={int(now)}')} "
        f"> {tmp} && mv -f {tmp} {q(path)} && echo claimed"
    )
    return _locked(path, body)


def cancel_if_owner_command(path: str, job_id: str, token: str, now: int) -> str:
    """scancel the job only if ``token`` owns it, marking the file first; prints ``cancelled``,
    ``not-owner <owner>`` or ``no-owner``. The scancel's own failure exits non-zero."""
    check_job_id(job_id)
    _check_token(token)
    tmp = q(f"{path}.tmp")
    body = (
        f"owner={_field(path, 'owner')}; "
        f"if [ ! -f {q(path)} ]; then echo no-owner; exit 0; fi; "
        f'if [ "$owner" != {q(token)} ]; then echo "not-owner $owner"; exit 0; fi; '
        f"{{ cat {q(path)}; printf '%s\\n' {q(f'cancel_requested_at={int(now)}')} "
        f"{q('cancel_by=' + token)}; }}"
        f" > {tmp} && mv -f {tmp} {q(path)} && scancel {q(job_id)} && echo cancelled"
    )
    return _locked(path, body)


def read_owner_command(path: str) -> str:
    return f"cat {q(check_remote_path(path, 'owner_path'))} 2>/dev/null || true"


@dataclass(frozen=True)
class OwnerRecord:
    """What the owner file says (an absent file is None)."""

    job_id: str | None
    owner: str | None
    cancel_requested_at: int | None = None
    cancel_by: str | None = None

    @property
    def cancel_requested(self) -> bool:
        return self.cancel_requested_at is not None


def parse_owner(text: str) -> OwnerRecord | None:
    if not text.strip():
        return None
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key.strip(), value.strip())
    mark = values.get("cancel_requested_at")
    return OwnerRecord(
        values.get("job_id"),
        values.get("owner"),
        int(mark) if mark and mark.isdigit() else None,
        values.get("cancel_by"),
    )


@dataclass(frozen=True)
class ClaimAnswer:
    claimed: bool
    cancel_by: str | None = None
    text: str = ""


def parse_claim(status: int, out: str) -> ClaimAnswer:
    """``claimed`` -> ours; ``cancel-requested`` -> never adopt; anything else is an error."""
    text = out.strip().splitlines()[-1] if out.strip() else ""
    if status == 0 and text == "claimed":
        return ClaimAnswer(True, text=text)
    if status == 0 and text.startswith("cancel-requested"):
        return ClaimAnswer(False, text.partition(" ")[2] or None, text)
    raise RuntimeError(f"claiming the Slurm job failed (exit {status}): {out.strip()[:300]!r}")


@dataclass(frozen=True)
class CancelAnswer:
    state: str  # cancelled | not-owner | no-owner | error
    owner: str | None = None
    text: str = ""


def parse_cancel(status: int, out: str, err: str = "") -> CancelAnswer:
    text = out.strip().splitlines()[-1] if out.strip() else ""
    if status == 0 and text == "cancelled":
        return CancelAnswer("cancelled", text=text)
    if status == 0 and text.startswith("not-owner"):
        return CancelAnswer("not-owner", text.partition(" ")[2] or None, text)
    if status == 0 and text == "no-owner":
        return CancelAnswer("no-owner", text=text)
    return CancelAnswer("error", text=f"exit {status}: {(err or out).strip()[:300]}")


class Adoption(enum.StrEnum):
    """What a new try does with the job of an earlier try (or found by the run's job name)."""

    ADOPT = "adopt"  # healthy and queued/running: follow it, never submit a second copy
    ADOPT_SUCCESS = "adopt_success"  # it COMPLETED: its result is the task's result
    WAIT_UNTIL_GONE = "wait_until_gone"  # cancelled but still leaving (COMPLETING): wait, then submit
    SUBMIT = "submit"  # it ended (or was cancelled and left): submit afresh from the latest checkpoint
    UNKNOWN = "unknown"  # nobody answered: ask again before deciding (never a second copy blindly)


def adoption(
    status: JobStatus, owner: OwnerRecord | None = None, accounting: Mapping[str, str] | None = None
) -> Adoption:
    """Decide from the job's merged status, its owner file and sacct's word (``{job_id: state}``).

    A cancelled job is never adopted: following it could only end in CANCELLED and fail the run; a
    cancel that was requested (the mark) or recorded (sacct) wins over a squeue that still says
    COMPLETING.
    """
    cancelled = (owner is not None and owner.cancel_requested) or any(
        normalise_state(state) == "CANCELLED" for state in (accounting or {}).values()
    )
    if status.outcome is Outcome.SUCCESS:
        return Adoption.ADOPT_SUCCESS
    if status.final:
        return Adoption.SUBMIT
    if status.outcome is Outcome.UNKNOWN:
        return Adoption.UNKNOWN
    if cancelled or any(normalise_state(t.state) == "CANCELLED" for t in status.tasks):
        return Adoption.WAIT_UNTIL_GONE
    return Adoption.ADOPT
