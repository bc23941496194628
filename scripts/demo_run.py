"""The Python half of ``make demo``: trigger pythia_pretrain through the REST API, show progress, summarise.

Everything goes through the interfaces a user has: the REST API of the running services (trigger, task
states, XComs) and the run's files on the FSx folder (the training job's log, the checkpoints), plus the
S3 API (moto here) for the checkpoint copies. Formatting is pure (``format_*``) and kept apart from the
polling loop so what the demo prints is easy to change.

    demo_run.py --env .state/airflow/api.env --cluster-env .state/cluster/env.sh [--train-iters 200] ...

Exit status: 0 only when the DAG run succeeded.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

import airflow_rest  # noqa: E402

from neoxflow.neox.checkpoints import Expectation, complete_checkpoints, scan_local  # noqa: E402
from neoxflow.neox.logparse import TrainStep, parse_line  # noqa: E402

DAG_ID = "pythia_pretrain"
TRAIN_TASK = "train.train_slice"
SUMMARY_TASK = "data.data_summary"
PLAN_TASK = "prepare.plan"


# --- pure helpers ---------------------------------------------------------------------------------------
def read_shell_env(path: str | Path) -> dict[str, str]:
    """``export NAME=value`` lines of a sourced env file (values shell-quoted)."""
    values = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("export "):
            name, _, raw = line[len("export ") :].partition("=")
            values[name] = shlex.split(raw)[0] if raw else ""
    return values


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def format_task_change(elapsed: float, task_id: str, state: str | None, try_number: int | None) -> str:
    tries = f" (try {try_number})" if try_number and try_number > 1 else ""
    return f"[{clock(elapsed)}] {task_id:<22} {state or 'none'}{tries}"


def format_step(elapsed: float, step: TrainStep) -> str:
    loss = f"{step.lm_loss:.4f}" if step.lm_loss is not None else "?"
    speed = f" | {step.samples_per_sec:.1f} samples/s" if step.samples_per_sec is not None else ""
    return f"[{clock(elapsed)}]   training: iteration {step.iteration}/{step.total} | lm_loss {loss}{speed}"


def last_step(text: str) -> TrainStep | None:
    step = None
    for line in text.splitlines():
        event = parse_line(line)
        if isinstance(event, TrainStep):
            step = event
    return step


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def format_stage_table(tis: list[dict[str, Any]]) -> list[str]:
    """One line per task, in the order the tasks started (tasks that never ran last)."""

    def key(ti):
        start = parse_time(ti.get("start_date"))
        return (start is None, start.timestamp() if start else 0, ti["task_id"])

    lines = [f"  {'task':<24} {'state':<16} {'tries':>5} {'duration':>9}"]
    for ti in sorted(tis, key=key):
        duration = ti.get("duration")
        shown = f"{duration:8.1f}s" if isinstance(duration, int | float) else "        -"
        state, tries = ti.get("state") or "none", ti.get("try_number") or 0
        lines.append(f"  {ti['task_id']:<24} {state:<16} {tries:>5} {shown}")
    return lines


def dataset_numbers(summary: dict[str, Any], data_path: str) -> tuple[int | None, int | None, int]:
    """(documents, tokens) of the merged dataset NeoX trains on, and how many shard parts it has."""
    datasets = summary.get("datasets") or {}
    merged = datasets.get(data_path) or {}
    parts = sum(1 for name in datasets if name != data_path)
    return merged.get("documents"), merged.get("tokens"), parts


def s3_checkpoint_copies(keys: list[tuple[str, int]], run_name: str) -> dict[str, dict[str, Any]]:
    """tag -> {objects, bytes, verified} for keys under ``.../<run>/global_stepN/...``; ``verified``
    when the export manifest (written last, after checking every object) is there."""
    copies: dict[str, dict[str, Any]] = {}
    for key, size in keys:
        parts = key.split("/")
        for i, part in enumerate(parts[:-1]):
            if part.startswith("global_step") and i > 0 and parts[i - 1] == run_name:
                entry = copies.setdefault(part, {"objects": 0, "bytes": 0, "verified": False})
                entry["objects"] += 1
                entry["bytes"] += size
                if parts[-1] == "neoxflow-export.json":
                    entry["verified"] = True
                break
    return copies


def step_number(tag: str) -> int:
    digits = tag.removeprefix("global_step")
    return int(digits) if digits.isdigit() else -1


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# --- I/O ------------------------------------------------------------------------------------------------
@dataclass
class RunFiles:
    """Where the run's files are on the FSx folder (Airflow shares the machine with the local cluster)."""

    fsx: Path
    run_name: str

    @property
    def logs(self) -> Path:
        return self.fsx / "runs" / self.run_name / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.fsx / "checkpoints" / self.run_name

    def train_logs(self) -> list[Path]:
        def job_id(p: Path) -> int:
            tail = p.stem.rsplit("-", 1)[-1]
            return int(tail) if tail.isdigit() else -1

        return sorted(self.logs.glob(f"nxf-train-{self.run_name}-*.out"), key=job_id)

    def latest_step(self) -> TrainStep | None:
        logs = self.train_logs()
        for log in reversed(logs):
            step = last_step(log.read_text(errors="replace"))
            if step:
                return step
        return None

    def checkpoint_tags(self) -> list[tuple[str, int]]:
        if not self.checkpoints.is_dir():
            return []
        tags = []
        for d in self.checkpoints.glob("global_step*"):
            if d.is_dir():
                size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                tags.append((d.name, size))
        return sorted(tags, key=lambda t: step_number(t[0]))

    def complete_tags(self) -> set[str]:
        """Tags complete by the pipeline's own rule (the local profile's stand-in trainer)."""
        listing = scan_local(self.checkpoints)
        return {c.tag for c in complete_checkpoints(listing, Expectation.standin())}


def aws_client(cluster_env: dict[str, str], service: str = "s3"):
    """A boto3 client for the local cluster's AWS stand-in, from its Airflow connection (moto endpoint)."""
    import boto3

    conn = json.loads(cluster_env["AIRFLOW_CONN_AWS_DEFAULT"])
    extra = conn.get("extra") or {}
    return boto3.client(
        service,
        endpoint_url=extra.get("endpoint_url"),
        region_name=extra.get("region_name", "us-east-1"),
        aws_access_key_id=conn.get("login"),
        aws_secret_access_key=conn.get("password"),
    )


def list_s3(cluster_env: dict[str, str], bucket: str, prefix: str) -> list[tuple[str, int]]:
    client = aws_client(cluster_env)
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
    return keys


def watch(api, run_id: str, files: RunFiles, timeout: float, poll: float, out=print) -> dict[str, Any]:
    """Print task state changes and training progress until the run ends; return the final run."""
    t0 = time.monotonic()
    seen: dict[str, tuple[str | None, int | None]] = {}
    last_iter = None
    saved: set[str] = set()
    while True:
        elapsed = time.monotonic() - t0
        run = api.dag_run(DAG_ID, run_id)
        for ti in sorted(api.task_instances(DAG_ID, run_id), key=lambda t: t.get("start_date") or "~"):
            now = (ti.get("state"), ti.get("try_number"))
            if seen.get(ti["task_id"]) != now and now[0] is not None:
                out(format_task_change(elapsed, ti["task_id"], *now))
            seen[ti["task_id"]] = now
        step = files.latest_step()
        if step and step.iteration != last_iter:
            out(format_step(elapsed, step))
            last_iter = step.iteration
        for tag, _ in files.checkpoint_tags():
            if tag not in saved:
                saved.add(tag)
                out(f"[{clock(elapsed)}]   checkpoint {tag} written on FSx")
        if run["state"] in airflow_rest.TERMINAL_RUN_STATES:
            return run
        if elapsed > timeout:
            raise TimeoutError(f"run {run_id} still {run['state']} after {timeout:.0f}s")
        time.sleep(poll)


def summary_lines(api, run: dict[str, Any], files: RunFiles, cluster_env: dict[str, str]) -> list[str]:
    run_id = run["dag_run_id"]
    tis = api.task_instances(DAG_ID, run_id)
    lines = ["", f"=== pythia_pretrain run {run_id}: {run['state'].upper()} ===", "", "Stage timings:"]
    lines += format_stage_table(tis)
    start, end = parse_time(run.get("start_date")), parse_time(run.get("end_date"))
    if start and end:
        lines.append(f"  {'whole run':<24} {'':<16} {'':>5} {(end - start).total_seconds():8.1f}s")
    plan = _xcom(api, run_id, PLAN_TASK) or {}
    data = _xcom(api, run_id, SUMMARY_TASK)
    lines.append("")
    if isinstance(data, dict) and plan:
        docs, tokens, parts = dataset_numbers(data, plan["layout"]["data_path"])
        lines.append(
            f"Dataset: {docs} documents, {tokens} tokens in {plan['layout']['data_path']}.{{bin,idx}} "
            f"(merged from {parts} tokenized C4 shards)"
        )
    else:
        lines.append("Dataset: no data_summary XCom (the data stages did not finish)")
    step = files.latest_step()
    if step:
        loss = f"{step.lm_loss:.4f}" if step.lm_loss is not None else "?"
        lines.append(f"Training: iteration {step.iteration}/{step.total}, final lm_loss {loss}")
    history = _xcom(api, run_id, TRAIN_TASK, key="resume_history") or {}
    for n, attempt in enumerate(history.get("attempts") or [], 1):
        lines.append(
            f"  try {n}: job {attempt.get('job_id')} ended {attempt.get('state')} ({attempt.get('outcome')})"
            + (f", failed nodes {attempt['failed_nodes']}" if attempt.get("failed_nodes") else "")
            + " -> resumed from the latest complete checkpoint"
        )
    jobs = [p.name for p in files.train_logs()]
    lines.append(f"Training jobs: {', '.join(jobs) or 'none'} (logs in {files.logs})")
    tags = files.checkpoint_tags()
    latest = files.checkpoints / "latest"
    lines.append("")
    lines.append(f"Checkpoints on FSx ({files.checkpoints}):")
    complete = files.complete_tags()
    for tag, size in tags:
        mark = "complete" if tag in complete else "partial (never loaded)"
        lines.append(f"  {tag:<18} {human_bytes(size):>10}  {mark}")
    if latest.exists():
        lines.append(f"  latest -> {latest.read_text().strip()}")
    if not tags:
        lines.append("  none")
    if plan:
        bucket, prefix = plan["s3"]["bucket"], plan["s3"]["prefix"]
        try:
            keys = list_s3(cluster_env, bucket, prefix.strip("/") + "/")
            copies = s3_checkpoint_copies(keys, files.run_name)
        except Exception as err:  # noqa: BLE001 - the summary reports it rather than failing the demo
            copies, problem = {}, f" (listing failed: {err})"
        else:
            problem = ""
        lines.append(f"S3 copies (s3://{bucket}/{prefix.strip('/')}/.../{files.run_name}/){problem}:")
        for tag in sorted(copies, key=step_number):
            c = copies[tag]
            mark = "verified (manifest)" if c["verified"] else "no manifest yet"
            lines.append(f"  {tag:<18} {c['objects']:>3} objects {human_bytes(c['bytes']):>10}  {mark}")
        if not copies:
            lines.append("  none")
    report = files.checkpoints / "report"
    if report.is_dir():
        lines.append("")
        lines.append(f"Report: {', '.join(str(p) for p in sorted(report.iterdir()))}")
        if plan:
            base = (
                f"s3://{plan['s3']['bucket']}/{plan['s3']['prefix'].strip('/')}/runs/{files.run_name}/report/"
            )
            lines.append(f"        and {base}")
    lines += [
        "",
        f"Airflow UI: {api.url}  (user {api.user}, password {api.password}",
        f"            from {api.password_file})",
        f"Run in the UI: {api.url}/dags/{DAG_ID}/runs/{run_id}",
    ]
    return lines


def _xcom(api, run_id: str, task_id: str, key: str = "return_value") -> Any:
    try:
        return api.xcom(DAG_ID, run_id, task_id, key=key)
    except airflow_rest.ApiError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True, help="api.env written by scripts/airflow_services.sh up")
    parser.add_argument("--cluster-env", required=True, help=".state/cluster/env.sh")
    parser.add_argument("--run-name", default=f"demo-{datetime.now():%Y%m%d-%H%M%S}")
    parser.add_argument("--train-iters", type=int, default=200)
    parser.add_argument("--checkpoint-interval", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=1200, help="seconds to wait for the run")
    parser.add_argument("--poll", type=float, default=2.0)
    args = parser.parse_args(argv)

    cluster_env = read_shell_env(args.cluster_env)
    api = airflow_rest.from_env_file(args.env)
    files = RunFiles(Path(cluster_env["NEOXFLOW_FSX"]), args.run_name)
    conf = {
        "profile": "local",
        "run_name": args.run_name,
        "train_iters": args.train_iters,
        "checkpoint_interval": args.checkpoint_interval,
    }
    api.set_paused(DAG_ID, False)
    run = api.trigger(DAG_ID, conf)
    print(f"Triggered {DAG_ID} run {run['dag_run_id']} via POST {api.url}/api/v2/dags/{DAG_ID}/dagRuns")
    print(f"  conf {json.dumps(conf)}")
    try:
        run = watch(api, run["dag_run_id"], files, args.timeout, args.poll)
    except TimeoutError as err:
        print(f"demo: {err}", file=sys.stderr)
        run = api.dag_run(DAG_ID, run["dag_run_id"])
    for line in summary_lines(api, run, files, cluster_env):
        print(line)
    failed = failed_tasks(api.task_instances(DAG_ID, run["dag_run_id"]))
    if run["state"] == "success" and failed:
        print(f"\nThe run is marked success, but these tasks failed: {', '.join(failed)}")
    return 0 if run["state"] == "success" and not failed else 1


def failed_tasks(tis: list[dict[str, Any]]) -> list[str]:
    """Tasks that failed: a run can end 'success' through an all_done cleanup task while one failed."""
    return sorted(ti["task_id"] for ti in tis if ti.get("state") in ("failed", "upstream_failed"))


if __name__ == "__main__":
    sys.exit(main())
