"""The story as one HTML page: tables, and an inline SVG loss chart whose points show their iteration and
loss on hover (SVG ``<title>`` and CSS, no JavaScript build, no external asset). Pure: every recorded
string goes through ``html.escape``."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from neoxflow.neox.progress import format_duration

NOT_RECORDED = "not recorded"
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:16px;color:#1a202c;background:#fff}
h1{font-size:1.3rem;margin:0 0 4px} h2{font-size:1.05rem;margin:20px 0 6px;border-bottom:1px solid #e2e8f0}
table{border-collapse:collapse;font-size:.85rem} td,th{padding:3px 10px;border-bottom:1px solid #edf2f7;
text-align:left;vertical-align:top} th{background:#f7fafc} .k{color:#4a5568}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #e2e8f0;border-radius:6px;padding:6px 12px}
.card b{display:block;font-size:1.1rem} .state{padding:1px 8px;border-radius:9px;background:#edf2f7}
.success,.finished,.verified,.complete{background:#c6f6d5} .failed,.failure{background:#fed7d7}
.running,.deferred,.queued{background:#bee3f8} .gap{color:#b7791f} .muted{color:#718096}
svg .pt{fill:#2b6cb0;opacity:.55} svg .pt:hover{r:6;opacity:1;fill:#c53030}
svg text{font-size:11px;fill:#4a5568}
pre{background:#f7fafc;padding:8px;overflow:auto;max-height:420px;font-size:.8rem}
"""


def e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(epoch: float | None) -> str:
    if epoch is None:
        return NOT_RECORDED
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def dur(seconds: float | None) -> str:
    return NOT_RECORDED if seconds is None else format_duration(seconds)


def num(value: float | None, fmt: str = ".3g", unit: str = "") -> str:
    return NOT_RECORDED if value is None else f"{value:{fmt}}{unit}"


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for mult in (1, 2, 5, 10):
        if (hi - lo) / (step * mult) <= n:
            step *= mult
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def loss_svg(points: Sequence[Sequence[float]], width: int = 900, height: int = 320) -> str:
    """The loss curve: a line through every point and one hoverable circle per point."""
    if not points:
        return '<p class="muted" id="loss-empty">No loss logged yet.</p>'
    left, right, top, bottom = 60, 15, 10, 35
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    w, h = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * h

    parts = [
        f'<svg id="loss-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="lm_loss by iteration">',
        f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="#fbfdff" stroke="#cbd5e0"/>',
    ]
    for t in _ticks(x0, x1):
        parts.append(
            f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{top}" y2="{top + h}" stroke="#edf2f7"/>'
            f'<text x="{sx(t):.1f}" y="{top + h + 15}" text-anchor="middle">{t:g}</text>'
        )
    for t in _ticks(y0, y1):
        parts.append(
            f'<line x1="{left}" x2="{left + w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#edf2f7"/>'
            f'<text x="{left - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{t:.4g}</text>'
        )
    parts.append(f'<text x="{left + w / 2}" y="{height - 4}" text-anchor="middle">iteration</text>')
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts.append(f'<polyline fill="none" stroke="#2b6cb0" stroke-width="1.5" points="{line}"/>')
    for x, y in points:
        parts.append(
            f'<circle class="pt" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" data-iteration="{x}" '
            f'data-loss="{y}"><title>iteration {x}: lm_loss {y:.5g}</title></circle>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(head: Sequence[str], rows: Sequence[str], table_id: str) -> str:
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    return f'<table id="{table_id}"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _state(value: Any) -> str:
    return f'<span class="state {e(value)}">{e(value) if value else NOT_RECORDED}</span>'


def render_run(story: Mapping[str, Any], *, base: str = "") -> str:
    run, thr, usage = story["run"], story["throughput"], story["usage"]
    title = f"Training: {run.get('run_name') or run.get('run_id')}"
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style>",
        "</head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="k">DAG <b>{e(run["dag_id"])}</b>, run <b id="run-id">{e(run["run_id"])}</b> '
        f"&middot; state {_state(run['state'])} &middot; training {_state(run.get('train_state'))}"
        f" &middot; started {when(run.get('start'))} &middot; ended {when(run.get('end'))}"
        f' &middot; <a href="{e(base)}/runs?dag_id={quote(str(run["dag_id"]))}">all runs</a></p>',
    ]
    if run.get("dry_run"):
        out.append("<p><b>Dry run</b>: nothing was submitted; the plan's rendered scripts are below.</p>")
    eta = story.get("eta_s")
    cards = [
        ("Model", f"{run.get('model_size') or NOT_RECORDED}, profile {run.get('profile') or '?'}"),
        ("Iteration", f"{story['loss']['last_iteration'] or 0} / {run.get('train_iters') or '?'}"),
        ("Verdict", run.get("verdict") or NOT_RECORDED),
        ("ETA", dur(eta)),
        ("Tokens/s", num(thr.get("tokens_per_sec"), ",.0f")),
        ("TFLOPS/GPU (NeoX: recomputation counted)", num(thr.get("tflops_per_gpu"), ".3g")),
        ("MFU (NeoX's, from the profile's GPU peak)", num(thr.get("mfu_percent"), ".3g", " %")),
        (
            "GPU-hours (jobs from submission)",
            num(usage.get("gpu_hours"), ".3g") + f" ({usage.get('gpus') or '?'} GPUs)",
        ),
        ("Effective training (unique iterations)", dur(usage.get("effective_training_s"))),
        ("Job time / gaps", f"{dur(usage.get('job_seconds'))} / {dur(usage.get('gaps_s'))}"),
    ]
    out.append('<div class="cards" id="cards">')
    out += [f'<div class="card"><span class="k">{e(k)}</span><b>{e(v)}</b></div>' for k, v in cards]
    out.append("</div>")
    if run.get("reason"):
        out.append(f'<p class="k">{e(run["reason"])}</p>')

    loss = story["loss"]
    source = e(loss["source"] or NOT_RECORDED)
    count = f'<span id="loss-count">{len(loss["points"])}</span>'
    out.append(f"<h2>Loss ({count} logged points, from {source})</h2>")
    out.append(loss_svg(loss["points"]))

    out.append("<h2>Slices (Slurm jobs)</h2>")
    rows = []
    for s in story["slices"]:
        gap = f'<span class="gap">{dur(s["gap_before_s"])}</span>' if s.get("gap_before_s") else ""
        rows.append(
            f'<tr data-job-id="{e(s["job_id"])}"><td>{e(s["index"])}</td>'
            f'<td class="job">{e(s["job_id"])}</td>'
            f"<td>{e(s.get('nodes') or NOT_RECORDED)}</td><td>{when(s.get('start'))}</td>"
            f"<td>{when(s.get('end'))}</td><td>{dur(s.get('duration_s'))}</td><td>{_state(s['state'])}</td>"
            f"<td>{e(s.get('resume_iteration'))} &rarr; {e(s.get('reached'))}"
            f" (planned {e(s.get('planned_stop'))})</td><td>{gap}</td></tr>"
        )
    head = ["#", "job id", "nodes", "submitted", "ended", "took", "state", "iterations", "gap before"]
    out.append(_table(head, rows, "slices") if rows else '<p class="muted">No training job yet.</p>')

    out.append("<h2>Checkpoints</h2>")
    rows = [
        f'<tr data-tag="{e(c["tag"])}"><td>{e(c["tag"])}</td><td>{e(c.get("iteration"))}</td>'
        f"<td>{_state(c['fsx'])}</td><td>{_state(c['s3'] or 'S3 not read')}</td>"
        f"<td>{num(None if c.get('size_bytes') is None else c['size_bytes'] / 2**20, ',.1f', ' MiB')}"
        "</td></tr>"
        for c in story["checkpoints"]
    ]
    head = ["tag", "iteration", "FSx", "S3", "size"]
    out.append(
        _table(head, rows, "checkpoints") if rows else '<p class="muted">No complete checkpoint yet.</p>'
    )

    out.append("<h2>Alerts raised</h2>")
    rows = [
        f"<tr><td>{_state(a['kind'])}</td><td>{e(a['task_id'])}</td><td>{e(a.get('try'))}</td>"
        f"<td>{when(a.get('at'))}</td></tr>"
        for a in story["alerts"]
    ]
    out.append(
        _table(["kind", "task", "try", "at"], rows, "alerts")
        if rows
        else '<p class="muted" id="alerts">None: no try failed or was retried, no lease was lost.</p>'
    )

    rec = story["record"]
    report = "in S3" if story["report"]["in_s3"] else ("XCom" if story["report"]["available"] else "not yet")
    out.append("<h2>Run of record and report</h2>")
    out.append(
        f"<p>Run of record in S3: <b>{'yes' if rec['exists'] else 'not found'}</b>"
        + (f" (fixed part {e((rec.get('fixed_hash') or '')[:16])})" if rec["exists"] else "")
        + f" &middot; report summary: <b>{report}</b>"
        + f" &middot; throughput basis: {e(thr.get('basis') or NOT_RECORDED)}</p>"
    )
    others = story.get("dag_runs_of_record") or []
    if len(others) > 1:
        out.append("<h2>DAG runs of this run of record</h2>")
        out.append(_runs_table(others, base))
    if story.get("scripts"):
        out.append("<h2>Rendered scripts (dry run)</h2>")
        for script in story["scripts"]:
            out.append(
                f"<details class='script' open><summary>{e(script['name'])}</summary>"
                f"<pre>{e(script['text'])}</pre></details>"
            )
    out.append("<h2>Tasks</h2>")
    rows = [
        f"<tr><td>{e(t['task_id'])}</td><td>{_state(t['state'])}</td><td>{e(t['try_number'])}</td>"
        f"<td>{when(t.get('start'))}</td><td>{when(t.get('end'))}</td></tr>"
        for t in story["tasks"]
    ]
    out.append(_table(["task", "state", "try", "start", "end"], rows, "tasks"))
    if story.get("problems"):
        out.append("<h2>Not read</h2><ul>" + "".join(f"<li>{e(p)}</li>" for p in story["problems"]) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out)


def _runs_table(runs: Sequence[Mapping[str, Any]], base: str) -> str:
    rows = [
        f'<tr><td><a href="{e(base)}/runs/{quote(r["dag_id"])}/{quote(r["run_id"], safe="")}">'
        f"{e(r.get('run_name') or r['run_id'])}</a></td><td>{e(r['dag_id'])}</td><td>{e(r['run_id'])}</td>"
        f"<td>{_state(r['state'])}</td><td>{'dry run' if r.get('dry_run') else ''}</td>"
        f"<td>{when(r.get('start'))}</td><td>{when(r.get('end'))}</td></tr>"
        for r in runs
    ]
    return _table(["run", "DAG", "DAG run", "state", "", "started", "ended"], rows, "runs")


def render_index(runs: Sequence[Mapping[str, Any]], *, base: str = "") -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Training runs</title><style>{CSS}</style>"
        "</head><body><h1>Training runs</h1>"
        + (_runs_table(runs, base) if runs else "<p class='muted'>No run yet.</p>")
        + "</body></html>"
    )
