"""A DAG run's story, from what the pipeline recorded: pure, no Airflow, no I/O.

The input is one mapping (``sources.gather`` builds it inside the api-server):

- ``dag_run``: ``dag_id``, ``run_id``, ``state``, ``start``/``end`` (epoch seconds or None), ``conf``;
- ``tasks``: the run's task instances now, ``task_id``, ``state``, ``try_number``, ``start``, ``end``;
- ``tries``: the ended earlier tries (Airflow's task instance history), same fields;
- ``xcom``: ``{"<task_id>:<key>": value}`` of the run's XComs (``prepare.plan:return_value``, and
  ``train.train_slice:`` ``slices``/``summary``/``slurm_job``/``checkpoints``/``lock_lost``, ``report:...``);
- ``record``: the run of record (S3 ``run-record.json``) or None;
- ``report``: the report's ``summary.json`` (S3) or None (the ``report`` XCom is used then);
- ``s3_checkpoints``: checkpoint tags with a verified copy in S3, or None when S3 was not read;
- ``logs``: the slices' job logs ``{job_id: text}`` read from FSx, or {} when Airflow does not see FSx.

The output is JSON-ready (numbers, strings, lists, dicts) and says where each figure comes from, so the
page never guesses: a figure nobody recorded is None and shows as "not recorded".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from neoxflow.neox.logparse import parse_text
from neoxflow.neox.logstate import LogState
from neoxflow.neox.progress import compute_progress
from neoxflow.slurm.naming import train_job_name

TRAIN = "train.train_slice"
#: a slice that started more than this after the previous one ended shows a gap (seconds)
GAP_MIN_S = 1.0
_STAMP = re.compile(r"neoxflow: job \d+ started=\S+ \S+ nodes=(\S+)")
#: tries whose end fired an alert to every configured channel (dags/pythia_pretrain.py default_args)
ALERTING_STATES = {"failed": "failure", "up_for_retry": "retry"}


def _x(src: Mapping[str, Any], task_id: str, key: str = "return_value") -> Any:
    return (src.get("xcom") or {}).get(f"{task_id}:{key}")


def _num(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if out == out and out not in (float("inf"), float("-inf")) else None


def scripts_of(plan: Any, path: str = "") -> list[dict[str, str]]:
    """Every rendered script in the plan (``{"name": <where in the plan>, "text": ...}``), for a dry run."""
    found: list[dict[str, str]] = []
    if isinstance(plan, Mapping):
        if isinstance(plan.get("script"), str):
            found.append({"name": path or "script", "text": plan["script"]})
        for key, value in plan.items():
            if key != "script":
                found.extend(scripts_of(value, f"{path}.{key}" if path else str(key)))
    elif isinstance(plan, list):
        for i, value in enumerate(plan):
            found.extend(scripts_of(value, f"{path}[{i}]"))
    return found


def dry_run_texts(plan: Mapping[str, Any]) -> list[dict[str, str]]:
    """What a dry run rendered: every script of the plan, then the NeoX config."""
    texts = scripts_of(plan)
    rendered = (plan.get("config") or {}).get("rendered")
    if isinstance(rendered, str):
        texts.append({"name": "NeoX config", "text": rendered})
    return texts


def job_log_path(plan: Mapping[str, Any], job_id: str) -> str | None:
    """A training job's log on FSx: ``<run_dir>/logs/<job name>-<job id>.out`` (neox/launch.py), the job
    name the run's training job's (``slurm/naming.train_job_name``, as the operator submits it)."""
    run_dir = (plan.get("layout") or {}).get("run_dir")
    if not run_dir or not plan.get("run_name"):
        return None
    job_name = train_job_name(plan["run_name"])
    return f"{run_dir}/logs/{job_name}-{job_id}.out"


def verified_tags(keys: Iterable[str]) -> list[str]:
    """Checkpoint tags with an export manifest (written last, after every object was checked) among S3
    keys ``.../<tag>/neoxflow-export.json``."""
    tags = set()
    for key in keys:
        parts = key.split("/")
        if len(parts) >= 2 and parts[-1] == "neoxflow-export.json" and parts[-2].startswith("global_step"):
            tags.add(parts[-2])
    return sorted(tags)


def _nodes_by_job(slurm_job: Any) -> dict[str, str]:
    if not isinstance(slurm_job, Mapping):
        return {}
    tasks = (slurm_job.get("status") or {}).get("tasks") or []
    nodes = ",".join(sorted({t.get("nodes") for t in tasks if t.get("nodes")}))
    return {str(slurm_job.get("job_id")): nodes} if nodes else {}


def logged_nodes(text: str) -> str | None:
    """The node list the batch script stamped on its first line (``neoxflow: job N ... nodes=...``)."""
    for line in text[:4096].splitlines():
        m = _STAMP.search(line)
        if m:
            return m.group(1)
    return None


def slice_timeline(
    slices: Iterable[Mapping[str, Any]],
    slurm_job: Any = None,
    now: float | None = None,
    logs: Mapping[str, str] | None = None,
):
    """The slices in submission order with their gaps: the idle time between one slice's end and the
    next one's submission (a slice without a recorded end leaves the gap unknown)."""
    nodes = _nodes_by_job(slurm_job)
    for job_id, text in (logs or {}).items():
        stamped = logged_nodes(text)
        if stamped:
            nodes.setdefault(str(job_id), stamped)
    state = (slurm_job or {}).get("status") or {} if isinstance(slurm_job, Mapping) else {}
    rows = []
    previous_end: float | None = None
    for entry in sorted(slices or [], key=lambda e: e.get("index") or 0):
        start, end = _num(entry.get("submitted_at")), _num(entry.get("ended_at"))
        job_id = str(entry.get("job_id"))
        if end is None:
            live = state.get("state") if str((slurm_job or {}).get("job_id")) == job_id else None
            status = live or "running"
        else:
            status = entry.get("verdict") or entry.get("end") or "ended"
        gap = start - previous_end if start is not None and previous_end is not None else None
        rows.append(
            {
                "index": entry.get("index"),
                "job_id": job_id,
                "nodes": entry.get("nodes") or nodes.get(job_id) or None,
                "start": start,
                "end": end,
                "duration_s": (end if end is not None else now) - start
                if start is not None and (end is not None or now is not None)
                else None,
                "state": status,
                "end_reason": entry.get("end"),
                "resume_iteration": entry.get("resume_iteration"),
                "planned_stop": entry.get("planned_stop"),
                "reached": entry.get("reached"),
                "gap_before_s": gap if gap is not None and gap >= GAP_MIN_S else None,
            }
        )
        previous_end = end
    return rows


def loss_points(logs: Mapping[str, str], slices: list[dict[str, Any]], summary: Any):
    """(points, source): every logged iteration's lm_loss across the slices' logs in slice order (a
    resumed slice's re-logged iteration wins), else the training summary's curve (downsampled by the
    watch past 1000 points)."""
    texts = [logs[s["job_id"]] for s in slices if s["job_id"] in (logs or {})]
    if texts:
        state = LogState.from_events(ev for text in texts for ev in parse_text(text))
        curve = state.loss_curve()
        if curve:
            return [[i, v] for i, v in curve], "job logs on FSx", state
    curve = (summary or {}).get("loss_curve") if isinstance(summary, Mapping) else None
    if curve:
        return [[int(i), float(v)] for i, v in curve if _num(v) is not None], "training summary (XCom)", None
    return [], None, None


def gpus_of(plan: Any) -> int | None:
    """GPUs of one slice: the plan's rendered config's nodes x GPUs per node."""
    config = (plan or {}).get("config") if isinstance(plan, Mapping) else None
    if isinstance(config, Mapping) and config.get("nodes") and config.get("gpus_per_node"):
        return int(config["nodes"]) * int(config["gpus_per_node"])
    return None


def seq_length_of(plan: Any) -> int | None:
    """The rendered NeoX config's seq_length (tokens/s = samples/s x seq_length)."""
    config = (plan or {}).get("config") if isinstance(plan, Mapping) else None
    try:
        value = json.loads((config or {}).get("rendered") or "{}").get("seq_length")
    except (TypeError, ValueError, AttributeError):
        return None
    return int(value) if value else None


def alerts_of(tasks: Iterable[Mapping[str, Any]], tries: Iterable[Mapping[str, Any]], xcom: Mapping) -> list:
    """Alerts the run raised: each failed or retried try (the DAG's failure/retry callbacks send one to
    every channel) and the training watch's lease losses. Delivery itself is not recorded here."""
    out = []
    for t in [*(tries or []), *(tasks or [])]:
        kind = ALERTING_STATES.get(t.get("state") or "")
        if kind:
            out.append(
                {"kind": kind, "task_id": t["task_id"], "try": t.get("try_number"), "at": t.get("end")}
            )
    lost = xcom.get(f"{TRAIN}:lock_lost")
    if lost:
        out.append({"kind": "lock_lost", "task_id": TRAIN, "try": None, "at": None, "detail": lost})
    return sorted(out, key=lambda a: (a["at"] is None, a["at"] or 0))


def checkpoints_of(src: Mapping[str, Any], summary: Any, report: Any) -> list[dict[str, Any]]:
    """The run's complete checkpoints with their FSx and S3 state."""
    fsx: dict[str, dict[str, Any]] = {}
    for c in _x(src, TRAIN, "checkpoints") or []:
        fsx[c["tag"]] = c
    for c in (summary or {}).get("checkpoints") or [] if isinstance(summary, Mapping) else []:
        fsx.setdefault(c["tag"], c)
    in_report = set((report or {}).get("checkpoints") or []) if isinstance(report, Mapping) else set()
    s3 = src.get("s3_checkpoints")
    if s3 is None and isinstance(report, Mapping):
        s3 = report.get("checkpoints_in_s3")
    tags = set(fsx) | in_report | set(s3 or [])
    rows = []
    for tag in tags:
        c = fsx.get(tag, {})
        iteration = c.get("iteration")
        if iteration is None and tag.startswith("global_step") and tag[11:].isdigit():
            iteration = int(tag[11:])
        rows.append(
            {
                "tag": tag,
                "iteration": iteration,
                "path": c.get("path"),
                "size_bytes": c.get("size_bytes"),
                "fsx": "complete" if tag in fsx or tag in in_report else "not listed",
                "s3": None if s3 is None else ("verified" if tag in set(s3) else "not exported"),
            }
        )
    return sorted(rows, key=lambda r: (r["iteration"] is None, r["iteration"] or 0, r["tag"]))


def build_story(src: Mapping[str, Any], *, now: float) -> dict[str, Any]:
    run = src.get("dag_run") or {}
    plan = _x(src, "prepare.plan")
    plan = plan if isinstance(plan, Mapping) else {}
    config = plan.get("config") or {}
    record = src.get("record")
    report = src.get("report") or _x(src, "report")
    summary = _x(src, TRAIN, "summary")
    if not summary and isinstance(report, Mapping):
        summary = report.get("training")
    summary = summary if isinstance(summary, Mapping) else {}
    conf = run.get("conf") or {}
    dry_run = bool(plan.get("dry_run", conf.get("dry_run")))

    logs = src.get("logs") or {}
    slices = slice_timeline(_x(src, TRAIN, "slices") or [], _x(src, TRAIN, "slurm_job"), now, logs)
    points, loss_source, log_state = loss_points(logs, slices, summary)
    train_iters = config.get("train_iters") or (summary.get("iterations") or {}).get("train_iters")
    train_iters = int(train_iters or conf.get("train_iters") or 0) or None

    thr = dict(summary.get("throughput") or {})
    eta = None
    if log_state is not None and log_state.steps:
        progress = compute_progress(log_state, train_iters=train_iters, seq_length=seq_length_of(plan))
        thr = {
            "samples_per_sec": progress.samples_per_sec,
            "tokens_per_sec": progress.tokens_per_sec,
            "tflops_per_gpu": progress.tflops,
            "mfu_percent": progress.mfu,
            "iter_ms": progress.iter_ms,
            "basis": "median over the last logged intervals (job logs)",
        }
        eta = progress.eta_seconds
    last_iteration = points[-1][0] if points else None
    reached = last_iteration is not None and train_iters is not None and last_iteration >= train_iters
    if reached:
        eta = 0.0
    elif run.get("state") in ("success", "failed"):
        eta = None  # the DAG run ended short of train_iters: a continuation goes on, at its own pace
    elif eta is None and last_iteration is not None and train_iters and thr.get("iter_ms"):
        eta = (train_iters - last_iteration) * float(thr["iter_ms"]) / 1000.0
    tflops = _num(thr.get("tflops_per_gpu"))
    # NeoX's own MFU (peak_theoretical_tflops from the profile's cluster.gpu_peak_tflops): not recomputed here
    mfu = _num(thr.get("mfu_percent"))

    gpus = gpus_of(plan)
    # each job from its submission to its end (any time queued counts: an upper bound of its allocation)
    busy = [s["duration_s"] for s in slices if s["duration_s"] is not None]
    job_seconds = sum(busy) if busy else None
    gaps = [s["gap_before_s"] for s in slices if s["gap_before_s"] is not None]
    effective = None  # the unique iterations logged at the median pace: no start-up, save or recomputation
    if log_state is not None and log_state.steps and thr.get("iter_ms"):
        iterations = len({p[0] for p in points})
        steps = sorted({s.iteration for s in log_state.steps})
        interval = (steps[1] - steps[0]) if len(steps) > 1 else 1
        effective = iterations * interval * float(thr["iter_ms"]) / 1000.0
    elif points and thr.get("iter_ms") and last_iteration is not None:
        effective = last_iteration * float(thr["iter_ms"]) / 1000.0

    tasks = {t["task_id"]: t for t in src.get("tasks") or []}
    return {
        "run": {
            "dag_id": run.get("dag_id"),
            "run_id": run.get("run_id"),
            "run_name": plan.get("run_name") or conf.get("run_name"),
            "state": run.get("state"),
            "start": run.get("start"),
            "end": run.get("end"),
            "dry_run": dry_run,
            "model_size": ((plan or {}).get("config") or {}).get("size")
            if isinstance(plan, Mapping)
            else None,
            "train_iters": train_iters,
            "profile": plan.get("profile") or conf.get("profile"),
            "train_state": (tasks.get(TRAIN) or {}).get("state"),
            "verdict": summary.get("status"),
            "reason": summary.get("reason"),
        },
        "record": {
            "exists": isinstance(record, Mapping),
            "fixed_hash": (record or {}).get("fixed_hash") if isinstance(record, Mapping) else None,
            "request": (record or {}).get("request") if isinstance(record, Mapping) else None,
        },
        "slices": slices,
        "loss": {"points": points, "source": loss_source, "last_iteration": last_iteration},
        "throughput": {
            "tokens_per_sec": _num(thr.get("tokens_per_sec")),
            "samples_per_sec": _num(thr.get("samples_per_sec")),
            "tflops_per_gpu": tflops,
            "iter_ms": _num(thr.get("iter_ms")),
            "mfu_percent": mfu,
            "basis": thr.get("basis"),
        },
        "eta_s": eta,
        "checkpoints": checkpoints_of(src, summary, report),
        "alerts": alerts_of(src.get("tasks") or [], src.get("tries") or [], src.get("xcom") or {}),
        "usage": {
            "gpus": gpus,
            "job_seconds": job_seconds,
            "gpu_hours": job_seconds * gpus / 3600.0 if job_seconds is not None and gpus else None,
            "effective_training_s": effective,
            "gaps_s": sum(gaps) if gaps else 0.0,
        },
        "report": {"in_s3": src.get("report") is not None, "available": isinstance(report, Mapping)},
        "scripts": dry_run_texts(plan) if dry_run else [],
        "problems": list(src.get("problems") or []),
        "tasks": [
            {k: t.get(k) for k in ("task_id", "state", "try_number", "start", "end")}
            for t in sorted(
                src.get("tasks") or [], key=lambda t: (t.get("start") is None, t.get("start") or 0)
            )
        ],
    }
