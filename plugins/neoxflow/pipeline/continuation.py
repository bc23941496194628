"""Which runs of record the scheduled continuation carries on, and why it leaves the others alone.

``pythia_pretrain_continue`` is for runs whose DAG run ended before ``train_iters`` (Airflow was down, a
person stopped it, a failure used up its retries). Every tick it surveys the runs of record of a profile
(``<checkpoints>/<run>.record.json``) and triggers ``pythia_pretrain`` once for each run that is:

- unfinished: its ``latest`` checkpoint is before the recorded ``train_iters``;
- idle: no training job of the run is queued or running, and no live lease is held on its checkpoint
  folder (a DAG run is working on it: one continuation per run, never two at once);
- not waiting for a person: an application failure writes ``<checkpoints>/<run>.attention.json``; such
  a run is alerted once (the marker remembers it) and left alone until a person triggers it again.

The triggered DAG run plans from the record (its form fields are blank), so it continues the run as
itself. Its run id is ``continue__<run>__<latest iteration>``: the same run at the same progress maps to
the same id, so a tick that finds the previous tick's DAG run still queued adds nothing.

Pure: the decision and the shell commands; ``pipeline/attention_tasks.py`` runs them.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from neoxflow.pipeline.record import RECORD_SUFFIX
from neoxflow.slurm.validate import RUN_NAME, check_remote_path

ATTENTION_SUFFIX = ".attention.json"
_TAG = re.compile(r"global_step(\d+)")


@dataclass(frozen=True)
class RunState:
    """What the survey found for one run of record."""

    run_name: str
    train_iters: int
    latest_iteration: int | None  # from ``latest``; None before the first checkpoint
    active_job: str | None  # a queued or running training job of the run
    lease_holder: str | None  # who holds a live (unexpired) lease on the checkpoint folder
    attention: dict[str, Any] | None  # the application-failure marker, when there is one


@dataclass(frozen=True)
class Decision:
    action: str  # continue | finished | busy | needs_person
    reason: str


def decide(state: RunState) -> Decision:
    done = state.latest_iteration or 0
    if done >= state.train_iters:
        return Decision("finished", f"at {done}/{state.train_iters}: finished")
    if state.attention is not None:
        why = state.attention.get("reason") or "an application failure"
        return Decision("needs_person", f"waits for a person since {why}")
    if state.active_job:
        return Decision("busy", f"training job {state.active_job} is queued or running")
    if state.lease_holder:
        return Decision("busy", f"a DAG run holds its checkpoint folder ({state.lease_holder})")
    return Decision("continue", f"at {done}/{state.train_iters}, idle: continue")


def trigger_run_id(run_name: str, latest_iteration: int | None) -> str:
    return f"continue__{run_name}__at{latest_iteration or 0}"


def latest_iteration(text: str) -> int | None:
    """The iteration a ``latest`` file names (``global_step120`` -> 120), or None."""
    match = _TAG.fullmatch(text.strip())
    return int(match.group(1)) if match else None


def attention_path(checkpoint_dir: str) -> str:
    return check_remote_path(checkpoint_dir, "checkpoint_dir").rstrip("/") + ATTENTION_SUFFIX


def list_runs_command(checkpoints_dir: str) -> str:
    """Prints the name of every run with a record under ``checkpoints_dir``, one a line."""
    d = shlex.quote(check_remote_path(checkpoints_dir, "checkpoints_dir"))
    return (
        f'for f in {d}/*{RECORD_SUFFIX}; do [ -f "$f" ] || continue; '
        f'n=$(basename "$f"); printf "%s\\n" "${{n%{RECORD_SUFFIX}}}"; done'
    )


def run_names(output: str) -> list[str]:
    """The names ``list_runs_command`` printed that are run names (anything else is not ours)."""
    return sorted({line for line in output.splitlines() if RUN_NAME.fullmatch(line)})
