"""What an alert says: one pure builder shared by every channel (SNS, Slack, e-mail, deadline callback).

A human paged at night needs, in one message: which run and task, which Slurm job, what state and why,
on which nodes, the last log lines, and a link to open. :func:`build_alert` collects those facts from an
Airflow callback context (or explicit values), and every value and log line is scrubbed of secrets
(:mod:`neoxflow.notifiers.scrub`) before it is formatted.

Where the facts come from (all optional; missing ones are left out of the message):

* ``context["ti"]`` (or ``task_instance``): dag_id, task_id, run_id, try_number, map_index, and XCom:
  key ``"slurm_job"`` (the record :class:`neoxflow.operators.slurm.SlurmOperator` pushes:
  ``{"job_id", "status": {"summary", "state", "outcome", "tasks": [{"nodes", "reason", "exit_code"}]},
  "event", "tail"?}``) and key ``"job_id"``.
* ``context["exception"]``: its message; a ``record`` attribute (``SlurmJobFailed``) is preferred to XCom.
  The log tail is taken from ``record["tail"]`` or from the "last log lines:" block of that message.
* ``context["dag_run"]``: a DagRun object, or the dict the scheduler hands deadline callbacks
  (``{"dag_id", "dag_run_id", "state", "queued_at", ...}``); ``context["deadline"]["deadline_time"]``.
* explicit keyword arguments override all of the above.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from neoxflow.notifiers.scrub import scrub

DEFAULT_BASE_URL = "http://localhost:8080/"  # Airflow's own fallback for [api] base_url
MAX_LOG_LINES = 20
MAX_LINE_CHARS = 400
MAX_FIELD_CHARS = 1000
SUBJECT_LIMIT = 100  # SNS: ASCII, no newlines, at most 100 characters

# kind -> what happened, as the headline says it.
KINDS: dict[str, str] = {
    "failure": "task failed",
    "retry": "task failed, will retry",
    "stall": "stalled: no progress",
    "give_up": "auto-resume gave up",
    "needs_person": "waits for a person: the continuation leaves it alone",
    "lock_lost": "another run holds the checkpoint folder's lease",
    "deadline": "deadline missed",
    "app_failure": "application failure: needs a human, no automatic resubmit",
    "infra_failure": "infrastructure failure: safe to resume from the latest checkpoint",
    "held": "Slurm job held: a human must release or fix it",
    "test": "test alert",
}

_TAIL_MARKER = re.compile(r"\n\s*last log lines:\s*\n", re.I)


@dataclass(frozen=True)
class Alert:
    """A rendered, scrubbed alert. ``fields`` keeps label order; values are strings."""

    kind: str
    subject: str
    text: str
    fields: dict[str, str] = field(default_factory=dict)
    log_lines: tuple[str, ...] = ()
    url: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "text": self.text,
            "fields": dict(self.fields),
            "log_lines": list(self.log_lines),
            "url": self.url,
        }


def task_url(
    base_url: str | None,
    dag_id: str,
    run_id: str | None,
    task_id: str | None = None,
    map_index: int | None = None,
    try_number: int | None = None,
) -> str:
    """The Airflow 3 UI address of a task instance (same shape as ``TaskInstance.log_url``), or its run."""
    base = (base_url or DEFAULT_BASE_URL).rstrip("/")
    url = f"{base}/dags/{quote(dag_id, safe='')}"
    if run_id:
        url += f"/runs/{quote(run_id, safe='')}"
        if task_id:
            url += f"/tasks/{quote(task_id, safe='')}"
            if map_index is not None and map_index >= 0:
                url += f"/mapped/{map_index}"
            if try_number:
                url += f"?try_number={try_number}"
    return url


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _xcom(ti: Any, key: str) -> Any:
    """One XCom of the failing task itself; a callback must never fail because XCom is unreachable."""
    pull = getattr(ti, "xcom_pull", None)
    if pull is None:
        return None
    try:
        return pull(task_ids=_get(ti, "task_id"), key=key)
    except Exception:  # noqa: BLE001 - the alert matters more than this fact
        return None


def _unique(values: Iterable[Any]) -> list[str]:
    seen: list[str] = []
    for value in values:
        text = str(value).strip() if value is not None else ""
        if text and text not in seen:
            seen.append(text)
    return seen


def split_error(message: str) -> tuple[str, list[str]]:
    """Split a ``SlurmJobFailed`` message into its headline and its "last log lines:" block."""
    parts = _TAIL_MARKER.split(message, maxsplit=1)
    if len(parts) == 1:
        return message.strip(), []
    return parts[0].strip(), [line[4:] if line.startswith("    ") else line for line in parts[1].splitlines()]


def facts_from_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """Everything :func:`build_alert` can use, read from an Airflow callback context (see module doc)."""
    facts: dict[str, Any] = {}
    ti = context.get("ti") or context.get("task_instance")
    dag_run = context.get("dag_run")
    dag = context.get("dag")
    facts["dag_id"] = _get(ti, "dag_id") or _get(dag_run, "dag_id") or _get(dag, "dag_id")
    facts["run_id"] = (
        _get(ti, "run_id") or context.get("run_id") or _get(dag_run, "run_id") or _get(dag_run, "dag_run_id")
    )
    facts["task_id"] = _get(ti, "task_id")
    facts["map_index"] = _get(ti, "map_index")
    facts["try_number"] = _get(ti, "try_number")
    if dag_run is not None:
        state = _get(dag_run, "state")
        facts["run_state"] = getattr(state, "value", state)  # DagRunState enum or the JSON string
        facts["queued_at"] = _get(dag_run, "queued_at")
    deadline = context.get("deadline")
    if deadline:
        facts["deadline_time"] = _get(deadline, "deadline_time")

    exception = context.get("exception")
    record = getattr(exception, "record", None) if exception is not None else None
    if exception is not None:
        facts["error"] = str(exception) or type(exception).__name__
    if not isinstance(record, Mapping) and ti is not None:
        record = _xcom(ti, "slurm_job")
    if isinstance(record, Mapping):
        facts["record"] = record
    if ti is not None and not (isinstance(record, Mapping) and record.get("job_id")):
        facts["job_id"] = _xcom(ti, "job_id")
    return {k: v for k, v in facts.items() if v is not None}


def _slurm_facts(record: Mapping[str, Any]) -> dict[str, Any]:
    status = record.get("status") or {}
    tasks = [t for t in status.get("tasks") or [] if isinstance(t, Mapping)]
    return {
        "job_id": record.get("job_id") or status.get("job_id"),
        "state": status.get("state"),
        "outcome": status.get("outcome"),
        "summary": status.get("summary"),
        "reason": ", ".join(_unique(t.get("reason") for t in tasks)) or None,
        "nodes": ", ".join(_unique(t.get("nodes") for t in tasks)) or None,
        "exit_code": ", ".join(_unique(t.get("exit_code") for t in tasks)) or None,
        "event": record.get("event"),
        "log_lines": record.get("tail"),
    }


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _subject(kind: str, facts: Mapping[str, Any]) -> str:
    where = facts.get("dag_id") or "neoxflow"
    if facts.get("task_id"):
        where += f".{facts['task_id']}"
    parts = [f"[neoxflow] {kind.upper()}: {where}"]
    if facts.get("job_id"):
        parts.append(f"job {facts['job_id']}")
    if facts.get("state"):
        parts.append(str(facts["state"]))
    subject = " ".join(parts)
    subject = "".join(c if 32 <= ord(c) < 127 else "?" for c in subject)  # SNS wants printable ASCII
    return _clip(subject, SUBJECT_LIMIT)


_LABELS = (
    ("dag", "dag_id"),
    ("run", "run_id"),
    ("task", "task_id"),
    ("map index", "map_index"),
    ("try", "try_number"),
    ("slurm job", "job_id"),
    ("state", "state"),
    ("outcome", "outcome"),
    ("reason", "reason"),
    ("nodes", "nodes"),
    ("exit code", "exit_code"),
    ("summary", "summary"),
    ("run state", "run_state"),
    ("queued at", "queued_at"),
    ("deadline", "deadline_time"),
    ("detail", "detail"),
    ("error", "error"),
)


def build_alert(
    kind: str,
    context: Mapping[str, Any] | None = None,
    *,
    base_url: str | None = None,
    known_secrets: Iterable[str] = (),
    max_log_lines: int = MAX_LOG_LINES,
    **explicit: Any,
) -> Alert:
    """Build the scrubbed alert of ``kind`` from a callback context and/or explicit facts.

    :param kind: one of :data:`KINDS` (others are accepted and shown as given).
    :param context: an Airflow callback context or any mapping with the keys described in the module doc.
    :param base_url: the Airflow UI address ([api] base_url); Airflow's localhost default if None.
    :param known_secrets: literal values to mask wherever they appear, on top of the pattern rules.
    :param explicit: dag_id, run_id, task_id, map_index, try_number, job_id, state, outcome, reason, nodes,
        exit_code, summary, error, detail, log_lines, record (a ``slurm_job`` record), url; they win over
        values found in ``context``.
    """
    facts: dict[str, Any] = facts_from_context(context) if context else {}
    record = explicit.get("record") or facts.get("record")
    if isinstance(record, Mapping):
        facts.update({k: v for k, v in _slurm_facts(record).items() if v not in (None, "", [])})
    facts.update({k: v for k, v in explicit.items() if v is not None and k != "record"})

    raw_lines = facts.get("log_lines") or []
    log_lines = raw_lines.splitlines() if isinstance(raw_lines, str) else [str(x) for x in raw_lines]
    if facts.get("error"):
        headline, tail = split_error(str(facts["error"]))
        facts["error"] = headline
        log_lines = log_lines or tail

    secrets = tuple(known_secrets)
    clean = {k: scrub(str(v), secrets) for k, v in facts.items() if k not in ("record", "log_lines")}
    # scrubbed as one block so that multi-line secrets (PEM keys) are caught, then cut to size
    scrubbed_tail = scrub("\n".join(log_lines), secrets).split("\n") if log_lines else []
    lines = tuple(_clip(line, MAX_LINE_CHARS) for line in scrubbed_tail[-max_log_lines:])
    url = facts.get("url") or (
        task_url(
            base_url,
            str(facts["dag_id"]),
            facts.get("run_id"),
            facts.get("task_id"),
            facts.get("map_index"),
            facts.get("try_number"),
        )
        if facts.get("dag_id")
        else None
    )
    url = scrub(url, secrets) if url else None

    fields = {
        label: _clip(clean[key], MAX_FIELD_CHARS)
        for label, key in _LABELS
        if clean.get(key) not in (None, "") and not (key == "map_index" and clean[key] == "-1")
    }
    if url:
        fields["link"] = url
    headline = KINDS.get(kind, kind.replace("_", " "))
    outcome = clean.get("outcome")
    if kind in ("failure", "retry") and outcome in ("app_failure", "infra_failure", "held"):
        headline += f" ({KINDS[outcome]})"
    subject = _subject(kind, clean)
    width = max((len(label) for label in fields), default=0) + 1
    body = [f"{subject}", f"neoxflow: {headline}", ""]
    body += [f"{label + ':':<{width}} {value}" for label, value in fields.items()]
    if lines:
        body += ["", f"last {len(lines)} log lines:", *(f"  {line}" for line in lines)]
    return Alert(
        kind=kind, subject=subject, text="\n".join(body) + "\n", fields=fields, log_lines=lines, url=url
    )
