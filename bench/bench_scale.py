"""Scale benchmark: all 1024 C4 shards through the data pipeline on a stock Slurm (issue 19).

    make bench-scale                                        # 1024 shards x 5 documents, then reports
    .venv/bin/python bench/bench_scale.py --shards 8        # a small run
    .venv/bin/python bench/bench_scale.py --report-only bench/results/scale-<date>.json [--nodes 32 ...]

One real run of ``pythia_pretrain`` in real Airflow services (their own home .state/airflow-bench, API
port 18795, brought up and down by this script) on the local cluster, as Slurm is configured (its
``MaxArraySize``, read from ``scontrol show config``, is not changed here): fetch, stage, tokenize and
merge+validate ``--shards`` tiny C4-format shards (``--docs`` documents each) served by an HTTP source
of the benchmark's own (.state/bench-scale/), then 20 iterations of the stand-in trainer. Afterwards a
4-shard run of the same request, whose Airflow task-instance count must equal the large run's: nothing
maps per shard. Then, with the services down, a calibration: the same cluster-side scripts the array
tasks run (fetch_to_s3.py, stage_to_fsx.py, preprocess_data.py with one worker, merge_datasets.py +
validate_dataset.py) on one C4-like shard (``--calib-docs`` documents of bench_tokenize's distinct
paragraphs, gzip'd), because a 2 KB shard measures start-up, not throughput.

Isolation: the FSx data folder is the run's own (``NEOXFLOW_DATA_DIR=data-bench-scale-<stamp>``,
removed afterwards), so every shard is staged and tokenized afresh; shard names the cluster's own C4
source serves (0-3) are copied from it byte for byte, so the S3 objects other runs share under those
names are left as they are (fetch finds them and skips); the S3 objects of the other shard names are
the benchmark's and are removed before the run (so fetch moves them) and after it.

It prints, per stage (plan, fetch, stage, tokenize, merge_validate): the Airflow task's wall time, the
Slurm jobs and array tasks it used (from Slurm's jobcomp log), the lines done, bytes or tokens, the
per-worker throughput and the fixed cost of one array task (its slot time minus its work); the dataset's
documents and tokens; the task-instance counts; and the extrapolation to real C4 on ``--nodes`` x
``--cpus-per-node`` CPUs (bench/scale.py: the model and the numbers that feed it). Default: 16 nodes of
96 vCPUs (e.g. c7i.24xlarge), Slurm's MaxArraySize as measured, a 10 Gbit/s internet link for the fetch
(``--link-gbit``: the fetch is bounded by the link, not the CPUs), no FSx cap (``--fsx-mb-s``).

A main run still going after ``--timeout`` seconds is stopped (marked failed, its Slurm jobs cancelled)
and reported as far as it got: each array stage's lines done, its pace and the span all lines would take
at that pace; no extrapolation then.

The raw measurements are saved to bench/results/scale-<date>.json (ignored by git, as the goodput
timeline is); ``--report-only`` prints the report again from one, with other cluster options if given.

The last line is exactly ``SCALE shards=<n> stages_ok=<yes|no> max_array_size=<n> slurm_jobs=<n>
array_tasks=<n> airflow_tasks=<n>(same as 4 shards: yes|no) wall_s=<n> extrapolated_hours=<n>``:
slurm_jobs counts every job the DAG run submitted (an array is one job), array_tasks the array tasks
of fetch, stage and tokenize, wall_s the data pipeline (prepare.plan's start to data.data_summary's end).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(REPO / "scripts"), str(REPO / "include" / "cluster")]
sys.path.append(str(REPO / "scripts" / "localcluster"))  # c4_fixture: local-only, never shipped

import airflow_rest  # noqa: E402
import demo_run  # noqa: E402

from bench.scale import (  # noqa: E402
    ARRAY_STAGES,
    MB,
    REAL_C4,
    Cluster,
    JobRecord,
    Rates,
    StageMeasure,
    extrapolate,
    human_s,
    linear_rate,
    parse_jobcomp,
    parse_results,
    parse_tokenize_done,
    projected_span_s,
    slurm_use,
)

DAG_ID = "pythia_pretrain"
STATE = REPO / ".state"
CLUSTER_STATE = Path(os.environ.get("NEOXFLOW_STATE", STATE / "cluster"))
BENCH_STATE = STATE / "bench-scale"
AIRFLOW_HOME = STATE / "airflow-bench"
API_PORT = os.environ.get("NEOXFLOW_BENCH_API_PORT", "18795")
SERVICES = REPO / "scripts" / "airflow_services.sh"
RESULTS = REPO / "bench" / "results"
PY = REPO / ".venv" / "bin" / "python"
CLUSTER_CODE = REPO / "include" / "cluster"
#: the local-only stand-ins for the outside world (C4 fixture, HTTP source): never shipped to a cluster
LOCAL_CODE = REPO / "scripts" / "localcluster"
TOKENIZER = REPO / "include" / "tokenizers" / "20B_tokenizer.json"
#: The Airflow task of each measured stage.
STAGE_TASKS = {
    "plan": "prepare.plan",
    "fetch": "data.fetch",
    "stage": "data.stage",
    "tokenize": "data.tokenize",
    "merge_validate": "data.merge_validate",
}
DATA_OK_TASKS = (*STAGE_TASKS.values(), "data.data_summary")
#: Slurm job name of each stage (``nxf-<step>-<run name>``, plan.py and tasks.py)
JOB_STEPS = {"fetch": "fetch", "stage": "stage", "tokenize": "tokenize", "merge_validate": "merge"}
OTHER_JOBS = ("train", "export")
FIXTURE_SEED = 19
_TOKENIZE_LINE = re.compile(r"^shard (\S+): (tokenizing|.*skipped)$", re.M)


def log(message: str) -> None:
    print(f"[bench-scale {datetime.now():%H:%M:%S}] {message}", flush=True)


def job_name(step: str, run_name: str) -> str:
    return f"nxf-{step}-{run_name}"[:128]


# --- the cluster ----------------------------------------------------------------------------------------
def cluster_env() -> dict[str, str]:
    path = CLUSTER_STATE / "env.sh"
    if not path.exists():
        sys.exit(f"{path} missing: start the local cluster first (make cluster-up)")
    return demo_run.read_shell_env(path)


def max_array_size(env: dict[str, str]) -> int | None:
    out = subprocess.run(
        ["scontrol", "show", "config"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    for line in out.stdout.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value.strip())
    return None


def preflight(env: dict[str, str], lines: int, limit: int | None) -> None:
    """Submit (held) and cancel an array of the size the data steps will ask for: a controller that
    refuses it would fail the run's fetch. Slurm 22.05 keeps enforcing the MaxArraySize it started with
    after ``scontrol reconfigure`` while ``scontrol show config`` shows the new value."""
    tasks = min(lines, limit or 1001)
    cmd = ["sbatch", "--parsable", "--hold", f"--array=0-{tasks - 1}", "--job-name=bench-scale-preflight"]
    cmd += ["--output=/dev/null", "--wrap", "true"]
    out = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    job = out.stdout.strip().split(";")[0]
    if out.returncode != 0 or not job.isdigit():
        sys.exit(
            f"the controller refuses an array of {tasks} tasks (--array=0-{tasks - 1}: "
            f"{(out.stderr or out.stdout).strip()}) although scontrol show config says MaxArraySize={limit}: "
            "it still enforces an older limit (a reconfigure does not change it on Slurm 22.05); restart "
            "slurmctld (scripts/localcluster.sh restart slurmctld) and run the benchmark again"
        )
    subprocess.run(["scancel", job], env={**os.environ, **env}, capture_output=True, timeout=60)
    log(f"preflight: the controller accepts an array of {tasks} tasks")


def jobcomp_path() -> Path:
    conf = (CLUSTER_STATE / "etc" / "slurm.conf").read_text()
    match = re.search(r"^JobCompLoc=(\S+)", conf, re.M)
    if not match or "JobCompType=jobcomp/filetxt" not in conf:
        sys.exit("the local cluster logs no job completions (JobCompType=jobcomp/filetxt): make cluster-up")
    return Path(match.group(1))


# --- the C4 source --------------------------------------------------------------------------------------
def build_fixture(shards: int, docs: int) -> tuple[Path, list[int], list[int]]:
    """The benchmark's C4 folder: ``shards`` train shards of ``docs`` documents, except the names the
    cluster's own source serves, copied from it. Returns the folder, each shard's documents and bytes."""
    import c4_fixture

    cluster_source = CLUSTER_STATE / "c4-source"
    copied = {p.name: p for p in sorted(cluster_source.glob("c4-train.*-of-01024.json.gz")) if p.is_file()}
    marker = cluster_source / ".neoxflow-ready"
    key = json.dumps(
        {
            "shards": shards,
            "docs": docs,
            "seed": FIXTURE_SEED,
            "fixture": _sha(LOCAL_CODE / "c4_fixture.py"),
            "cluster_source": marker.read_text() if marker.exists() else None,
        },
        sort_keys=True,
    )
    folder = BENCH_STATE / f"c4-{shards}x{docs}"
    ready = folder / ".bench-ready"
    if not (ready.exists() and ready.read_text() == key):
        log(f"building the C4 source: {shards} shards x {docs} documents in {folder}")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for index in range(shards):
            name = c4_fixture.shard_name("train", index)
            if name in copied:
                shutil.copyfile(copied[name], folder / name)
            else:
                seed = c4_fixture._shard_seed(FIXTURE_SEED, "train", index)
                c4_fixture.write_shard(str(folder / name), seed=seed, docs=docs)
        ready.write_text(key)
    documents, sizes = [], []
    import gzip

    for index in range(shards):
        path = folder / c4_fixture.shard_name("train", index)
        with gzip.open(path, "rb") as f:
            documents.append(sum(1 for _ in f))
        sizes.append(path.stat().st_size)
    return folder, documents, sizes


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class Source:
    """scripts/localcluster/http_source.py serving the benchmark's folder on a free port (started here)."""

    def __init__(self, folder: Path):
        port_file = BENCH_STATE / "source.port"
        port_file.unlink(missing_ok=True)
        self.log_file = open(BENCH_STATE / "source.log", "ab")  # noqa: SIM115 - closed in stop()
        cmd = [str(PY), str(LOCAL_CODE / "http_source.py"), "--dir", str(folder), "--port", "0"]
        self.proc = subprocess.Popen(
            [*cmd, "--port-file", str(port_file)],
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for _ in range(200):
            if port_file.exists() and port_file.read_text().strip().isdigit():
                break
            if self.proc.poll() is not None:
                sys.exit(f"the C4 source exited ({BENCH_STATE / 'source.log'})")
            time.sleep(0.1)
        else:
            self.stop()
            sys.exit("the C4 source did not start")
        self.port = int(port_file.read_text().strip())
        self.url_template = f"http://127.0.0.1:{self.port}/{{name}}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log_file.close()


# --- S3 (moto) ------------------------------------------------------------------------------------------
def profile():
    from neoxflow.neox.profile_loader import load_profile

    return load_profile("local")


def bench_s3_keys(shards: int, url_template: str, copied_names: set[str]) -> list[tuple[str, str]]:
    """(bucket, key) of the shard objects that are the benchmark's: those not served by the cluster."""
    from neoxflow.data.shards import ShardSelection, build_manifest

    prof = profile()
    selection = ShardSelection.parse(f"0-{shards - 1}", url_template=url_template)
    prefix = prof.s3_prefix.strip("/")
    entries = build_manifest(selection, s3_bucket=prof.s3_bucket, s3_prefix=f"{prefix}/c4/en", fsx_dir="/x")
    out = []
    for entry in entries:
        if entry.name not in copied_names:
            bucket, _, key = entry.s3_uri.removeprefix("s3://").partition("/")
            out.append((bucket, key))
    return out


def delete_keys(env: dict[str, str], keys: list[tuple[str, str]]) -> int:
    s3 = demo_run.aws_client(env)
    deleted = 0
    by_bucket: dict[str, list[str]] = {}
    for bucket, key in keys:
        by_bucket.setdefault(bucket, []).append(key)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket, names in by_bucket.items():
        if bucket not in existing:
            continue
        for i in range(0, len(names), 1000):
            chunk = [{"Key": k} for k in names[i : i + 1000]]
            answer = s3.delete_objects(Bucket=bucket, Delete={"Objects": chunk, "Quiet": True})
            deleted += len(chunk) - len(answer.get("Errors", []))
    return deleted


def remove_run(env: dict[str, str], name: str) -> None:
    """The run's jobs cancelled, its FSx folders, record and S3 copies removed (as the e2e tests do)."""
    fsx = Path(env["NEOXFLOW_FSX"])
    for step in (*JOB_STEPS.values(), *OTHER_JOBS):
        subprocess.run(
            ["scancel", f"--name={job_name(step, name)}"], env={**os.environ, **env}, capture_output=True
        )
    for path in (fsx / "checkpoints" / name, fsx / "runs" / name, fsx / "checkpoints" / f"{name}.lock"):
        shutil.rmtree(path, ignore_errors=True)
    for suffix in (".record.json", ".attention.json"):
        (fsx / "checkpoints" / f"{name}{suffix}").unlink(missing_ok=True)
    try:
        s3 = demo_run.aws_client(env)
        bucket = profile().s3_bucket
        keys = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys += [o["Key"] for o in page.get("Contents", []) if f"/{name}/" in f"/{o['Key']}"]
        delete_keys(env, [(bucket, k) for k in keys])
    except Exception as err:  # noqa: BLE001 - cleanup must not hide the benchmark's result
        log(f"could not remove the S3 copies of {name}: {err}")


# --- Airflow --------------------------------------------------------------------------------------------
class Services:
    """scripts/airflow_services.sh with the benchmark's own home and port."""

    def __init__(self, data_dir: str):
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        self.env.update(
            NEOXFLOW_AIRFLOW_HOME=str(AIRFLOW_HOME),
            NEOXFLOW_API_PORT=API_PORT,
            NEOXFLOW_UNPAUSE=DAG_ID,
            NEOXFLOW_SCHEDULERS="1",
            NEOXFLOW_TRIGGERERS="1",
            NEOXFLOW_DATA_DIR=data_dir,
        )

    def script(self, command: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SERVICES), command], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def up(self) -> airflow_rest.AirflowAPI:
        self.script("down", 180)  # leftovers of an aborted benchmark
        shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)  # a new, empty database
        t0 = time.monotonic()
        result = self.script("up", 600)
        if result.returncode != 0:
            self.down()
            sys.exit(f"airflow_services.sh up failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
        log(f"Airflow services up in {time.monotonic() - t0:.0f}s ({AIRFLOW_HOME}, port {API_PORT})")
        return airflow_rest.from_env_file(AIRFLOW_HOME / "api.env")

    def down(self) -> None:
        result = self.script("down", 300)
        if result.returncode != 0:
            log(f"airflow_services.sh down failed: {result.stderr[-2000:]}")


def all_task_instances(api: airflow_rest.AirflowAPI, run_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    base = f"/api/v2/dags/{DAG_ID}/dagRuns/{airflow_rest.q(run_id)}/taskInstances"
    while True:
        page = api.call("GET", f"{base}?limit=100&offset={len(out)}")
        out += page["task_instances"]
        if not page["task_instances"] or len(out) >= page.get("total_entries", len(out)):
            return out


def xcom(api: airflow_rest.AirflowAPI, run_id: str, task_id: str) -> Any:
    try:
        return api.xcom(DAG_ID, run_id, task_id)
    except airflow_rest.ApiError:
        return None


def conf_for(run_name: str, shards: int, url_template: str) -> dict[str, Any]:
    return {
        "profile": "local",
        "run_name": run_name,
        "shards": "all" if shards == 1024 else f"0-{shards - 1}",
        "shard_url_template": url_template,
        "train_iters": 20,
        "checkpoint_interval": 20,
    }


def watch(api, run_id: str, jobs_dir: Path | None, run_name: str, timeout: float, poll: float) -> dict:
    """Print task changes and array progress until the run ends or ``timeout``; return the last run."""
    t0 = time.monotonic()
    seen: dict[str, str | None] = {}
    last_progress = 0.0
    while True:
        run = api.dag_run(DAG_ID, run_id)
        elapsed = time.monotonic() - t0
        for ti in sorted(all_task_instances(api, run_id), key=lambda t: t.get("start_date") or "~"):
            if ti.get("state") and seen.get(ti["task_id"]) != ti["state"]:
                log(f"[{elapsed:6.0f}s] {ti['task_id']:<24} {ti['state']}")
                seen[ti["task_id"]] = ti["state"]
        if run["state"] in airflow_rest.TERMINAL_RUN_STATES:
            return run
        if elapsed - last_progress >= 60 and jobs_dir is not None:
            last_progress = elapsed
            counts = [
                f"{step} {len(glob.glob(str(jobs_dir / job_name(step, run_name) / '*.out')))}"
                for step in ARRAY_STAGES
            ]
            log(f"[{elapsed:6.0f}s] array task logs so far: {', '.join(counts)}")
        if elapsed > timeout:
            return run
        time.sleep(poll)


def stop_run(api, run_id: str, env: dict[str, str], run_name: str) -> None:
    try:
        api.call("PATCH", f"/api/v2/dags/{DAG_ID}/dagRuns/{airflow_rest.q(run_id)}", {"state": "failed"})
    except airflow_rest.ApiError as err:
        log(f"could not mark {run_id} failed: {err}")
    for step in (*JOB_STEPS.values(), *OTHER_JOBS):
        subprocess.run(
            ["scancel", f"--name={job_name(step, run_name)}"], env={**os.environ, **env}, capture_output=True
        )


# --- what a run left --------------------------------------------------------------------------------------
def stage_logs(jobs_dir: str, name: str) -> str:
    parts = []
    for path in sorted(glob.glob(os.path.join(jobs_dir, name, "*.out"))):
        parts.append(Path(path).read_text(errors="replace"))
    return "\n".join(parts)


def collect(api, run_id: str, run_name: str, env: dict[str, str], timed_out: bool) -> dict[str, Any]:
    """Everything the report needs about one run, JSON-serialisable."""
    run = api.dag_run(DAG_ID, run_id)
    tis = all_task_instances(api, run_id)
    plan = xcom(api, run_id, "prepare.plan") or {}
    names = {job_name(s, run_name) for s in (*JOB_STEPS.values(), *OTHER_JOBS)}
    records = parse_jobcomp(jobcomp_path().read_text(errors="replace"), names)
    stages: dict[str, Any] = {}
    jobs_dir = (plan.get("layout") or {}).get("jobs_dir")
    for stage, step in JOB_STEPS.items():
        planned = (plan.get("data") or {}).get(step) or {}
        entry: dict[str, Any] = {
            "job_name": job_name(step, run_name),
            "lines": planned.get("array_lines"),
            "parallelism": planned.get("array_parallelism"),
        }
        if jobs_dir and stage in ARRAY_STAGES:
            text = stage_logs(jobs_dir, entry["job_name"])
            entry["log_files"] = len(glob.glob(os.path.join(jobs_dir, entry["job_name"], "*.out")))
            if stage == "tokenize":
                entry["work"] = parse_tokenize_done(text)
                entry["line_states"] = [m.group(2) for m in _TOKENIZE_LINE.finditer(text)]
            else:
                entry["work"] = [
                    {k: r.get(k) for k in ("name", "status", "bytes", "seconds")} for r in parse_results(text)
                ]
        stages[stage] = entry
    summary = xcom(api, run_id, "data.data_summary")
    data_path = (plan.get("layout") or {}).get("data_path")
    if not isinstance(summary, dict) and data_path and Path(data_path + ".summary.json").exists():
        summary = json.loads(Path(data_path + ".summary.json").read_text())
    merged = ((summary or {}).get("datasets") or {}).get(data_path) or {}
    return {
        "run_id": run_id,
        "run_name": run_name,
        "state": run["state"],
        "timed_out": timed_out,
        "start": run.get("start_date"),
        "end": run.get("end_date"),
        "task_instances": [
            {k: ti.get(k) for k in ("task_id", "map_index", "state", "try_number", "start_date", "end_date")}
            | {"duration": ti.get("duration")}
            for ti in tis
        ],
        "jobs": [r.to_dict() for r in records],
        "failures": failures(api, run_id, tis),
        "stages": stages,
        "summary": {
            "ok": (summary or {}).get("ok"),
            "shard_datasets": max(0, len((summary or {}).get("datasets") or {}) - (1 if merged else 0)),
            "documents": merged.get("documents"),
            "tokens": merged.get("tokens"),
            "bin_bytes": merged.get("bin_bytes"),
            "errors": (summary or {}).get("errors") or [],
        }
        if summary
        else None,
        "data_path": data_path,
    }


_EXCEPTION_LINE = re.compile(r"^[A-Z][A-Za-z0-9_.]*: \S")


def failures(api, run_id: str, tis: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Why each failed task failed: the exception lines of its last try's log."""
    out: dict[str, list[str]] = {}
    for ti in tis:
        if ti.get("state") != "failed":
            continue
        try:
            lines = api.task_log(DAG_ID, run_id, ti["task_id"], int(ti.get("try_number") or 1))
        except airflow_rest.ApiError as err:
            lines = [f"(no log: {err})"]
        out[ti["task_id"]] = [line for line in lines if _EXCEPTION_LINE.match(line)][-2:]
    return out


# --- calibration ----------------------------------------------------------------------------------------
def _script(args: list[str], env: dict[str, str], timeout: float = 900) -> tuple[float, str]:
    t0 = time.monotonic()
    result = subprocess.run(
        [str(PY), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.monotonic() - t0
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return seconds, result.stdout + result.stderr


def calibration_shard(path: Path, docs: int) -> None:
    """A C4-like shard: bench_tokenize's distinct paragraphs (the C4 fixture's sentences come from a
    small vocabulary, which the tokenizer's cache makes unrealistically fast), gzip'd."""
    import gzip

    from bench.bench_tokenize import make_input

    plain = path.with_suffix(".plain.jsonl")
    make_input(plain, docs, seed=FIXTURE_SEED, distinct=True)
    with open(plain, "rb") as src, gzip.GzipFile(path, "wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    plain.unlink()


def calibrate(
    docs: int, source: Source, folder: Path, env: dict[str, str], work: Path, repeats: int = 3
) -> dict[str, Any]:
    """Per-worker rates with the scripts the array tasks run, each the median of ``repeats``: fetch and
    stage of one C4-like shard of ``docs`` documents (the movers' own clocks); tokenize (one worker) and
    merge+validate timed whole at two sizes, so that their fixed start-up cancels out."""
    big, small = f"calib-{docs}.json.gz", f"calib-{max(1, docs // 8)}.json.gz"
    for name, n in ((big, docs), (small, max(1, docs // 8))):
        if not (folder / name).exists():
            calibration_shard(folder / name, n)
    prof = profile()
    dest = f"s3://{prof.s3_bucket}/{prof.s3_prefix.strip('/')}/bench-scale/{big}"
    bucket, _, key = dest.removeprefix("s3://").partition("/")
    aws = {
        "AWS_ENDPOINT_URL": json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])["extra"]["endpoint_url"],
        "AWS_ACCESS_KEY_ID": "localcluster",
        "AWS_SECRET_ACCESS_KEY": "localcluster",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fetches, stages, tokenizes, merges = [], [], [], []
    try:
        for i in range(repeats):
            delete_keys(env, [(bucket, key)])  # else fetch finds it and skips
            fetch_cmd = [
                str(CLUSTER_CODE / "fetch_to_s3.py"),
                "--source",
                source.url_template.format(name=big),
            ]
            _, out = _script([*fetch_cmd, "--dest", dest], aws)
            fetches.append(parse_results(out)[-1])
            staged = work / f"stage-{i}" / big
            _, out = _script(
                [str(CLUSTER_CODE / "stage_to_fsx.py"), "--source", dest, "--dest", str(staged)], aws
            )
            stages.append(parse_results(out)[-1])
    finally:
        delete_keys(env, [(bucket, key)])
    shard = str(work / "stage-0" / big)
    shutil.copyfile(folder / small, work / small)
    for i in range(repeats):
        timed = []
        for name in (small, big):
            prefix = work / f"tok-{i}" / name.removesuffix(".json.gz")
            seconds, out = _script(
                [
                    str(CLUSTER_CODE / "preprocess_data.py"),
                    *("--input", shard if name == big else str(work / small)),
                    *("--output-prefix", str(prefix), "--vocab-file", str(TOKENIZER)),
                    *("--tokenizer-type", "HFTokenizer", "--jsonl-keys", "text", "--append-eod"),
                    *("--dataset-impl", "mmap", "--workers", "1"),
                ],
                {},
            )
            timed.append((parse_tokenize_done(out)[-1]["tokens"], seconds))
        rate, fixed = linear_rate(*timed)
        tokenizes.append({"small": timed[0], "large": timed[1], "rate": rate, "fixed_s": fixed})
        dataset = f"{work / f'tok-{i}' / big.removesuffix('.json.gz')}_text_document"
        timed = []
        for copies in (1, 16):
            merged = work / f"merged-{i}-{copies}"
            inputs = [dataset] * copies
            merge_cmd = [str(CLUSTER_CODE / "merge_datasets.py"), "--output-prefix", str(merged), *inputs]
            t_merge, _ = _script(merge_cmd, {})
            t_validate, _ = _script([str(CLUSTER_CODE / "validate_dataset.py"), str(merged), *inputs], {})
            size = sum(Path(f"{merged}{ext}").stat().st_size for ext in (".bin", ".idx"))
            timed.append((size, t_merge + t_validate))
        rate, fixed = linear_rate(*timed)
        merges.append({"small": timed[0], "large": timed[1], "rate": rate / MB, "fixed_s": fixed})
    shutil.rmtree(work, ignore_errors=True)

    def median_of(runs: list[dict[str, Any]], field: str) -> float:
        return statistics.median(r[field] for r in runs)

    return {
        "docs": docs,
        "repeats": repeats,
        "gzip_bytes": (folder / big).stat().st_size,
        "fetch": {"bytes": fetches[0]["bytes"], "seconds": median_of(fetches, "seconds")},
        "stage": {"bytes": stages[0]["bytes"], "seconds": median_of(stages, "seconds")},
        "tokenize": {
            "tokens": tokenizes[0]["large"][0],
            "rate": median_of(tokenizes, "rate"),
            "fixed_s": median_of(tokenizes, "fixed_s"),
            "runs": tokenizes,
        },
        "merge": merges,
        "merge_mb_s": median_of(merges, "rate"),
        "merge_fixed_s": median_of(merges, "fixed_s"),
    }


# --- the benchmark --------------------------------------------------------------------------------------
def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    env = cluster_env()
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    limit = max_array_size(env)
    log(f"Slurm MaxArraySize {limit} (scontrol show config)")
    preflight(env, args.shards + 1, limit)  # the shards and the tokenizer: fetch's and stage's lines
    BENCH_STATE.mkdir(parents=True, exist_ok=True)
    folder, documents, sizes = build_fixture(args.shards, args.docs)
    cluster_names = {p.name for p in (CLUSTER_STATE / "c4-source").glob("c4-train.*.json.gz")}
    stamp = datetime.now().strftime("%m%d-%H%M%S")
    data_dir = f"data-bench-scale-{stamp}"
    fsx = Path(env["NEOXFLOW_FSX"])
    git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    record: dict[str, Any] = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "git": git.stdout.strip(),
        "shards": args.shards,
        "docs": args.docs,
        "max_array_size": limit,
        "reference_shards": args.reference_shards,
        "fixture": {
            "documents": sum(documents),
            "gzip_bytes": sum(sizes),
            "copied_from_cluster_source": sorted(
                n for n in cluster_names if n in {_name(i) for i in range(args.shards)}
            ),
        },
        "nproc": os.cpu_count(),
    }
    source = Source(folder)
    services = Services(data_dir)
    own_keys = bench_s3_keys(args.shards, source.url_template, cluster_names)
    names: list[str] = []
    try:
        removed = delete_keys(env, own_keys)
        log(f"C4 source on port {source.port}; {removed} old S3 objects of the benchmark's shards removed")
        api = services.up()
        api.set_paused(DAG_ID, False)
        runs = [("main", args.shards, f"bench-scale-{args.shards}-{stamp}")]
        if args.reference_shards:
            runs.append(("reference", args.reference_shards, f"bench-scale-ref-{stamp}"))
        for role, shards, run_name in runs:
            names.append(run_name)
            conf = conf_for(run_name, shards, source.url_template)
            run = api.trigger(DAG_ID, conf)
            log(f"triggered the {role} run {run['dag_run_id']}: {json.dumps(conf)}")
            jobs_dir = fsx / "runs" / run_name / "jobs"
            timeout = args.timeout if role == "main" else 900
            final = watch(api, run["dag_run_id"], jobs_dir, run_name, timeout, args.poll)
            timed_out = final["state"] not in airflow_rest.TERMINAL_RUN_STATES
            if timed_out:
                log(f"the {role} run is still {final['state']} after {timeout:.0f}s: stopping it")
            record[role] = collect(api, run["dag_run_id"], run_name, env, timed_out)
            if timed_out:
                stop_run(api, run["dag_run_id"], env, run_name)
                break
            log(f"the {role} run ended: {final['state']}")
    finally:
        services.down()
        try:
            if args.calib_docs and "main" in record:
                log(f"calibration on one shard of {args.calib_docs} documents (services down)")
                try:
                    work = BENCH_STATE / "calibration"
                    record["calibration"] = calibrate(args.calib_docs, source, folder, env, work)
                except (RuntimeError, ValueError, IndexError, subprocess.TimeoutExpired) as err:
                    log(f"calibration failed: {err}")
        finally:
            source.stop()
            for name in names:
                remove_run(env, name)
            shutil.rmtree(fsx / data_dir, ignore_errors=True)
            delete_keys(env, own_keys)
    return record


def _name(index: int) -> str:
    return f"c4-train.{index:05d}-of-01024.json.gz"


# --- the report -----------------------------------------------------------------------------------------
def _t(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def ti_by_id(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {ti["task_id"]: ti for ti in run["task_instances"] if ti.get("map_index") in (None, -1)}


def records_of(run: dict[str, Any], name: str) -> list[JobRecord]:
    return [JobRecord.from_dict(d) for d in run["jobs"] if d["name"] == name]


def measures(run: dict[str, Any]) -> dict[str, StageMeasure]:
    out = {}
    for stage in ARRAY_STAGES:
        info = run["stages"][stage]
        work = info.get("work") or []
        if stage == "tokenize":
            units = sum(w["tokens"] for w in work)
            lines = len(info.get("line_states") or [])
        else:
            units = sum(w.get("bytes") or 0 for w in work if w.get("status") in ("fetched", "staged"))
            lines = len(work)
        out[stage] = StageMeasure(
            name=stage,
            slurm=slurm_use(records_of(run, info["job_name"])),
            slots=int(info.get("parallelism") or 1),
            lines=lines,
            work_units=units,
            work_s=sum(float(w.get("seconds") or 0) for w in work),
        )
    return out


def data_wall_s(run: dict[str, Any]) -> float | None:
    """prepare.plan's start to data.data_summary's end, when the data pipeline got that far."""
    tis = ti_by_id(run)
    summary = tis.get("data.data_summary") or {}
    start = _t((tis.get("prepare.plan") or {}).get("start_date"))
    end = _t(summary.get("end_date"))
    return (end - start).total_seconds() if start and end and summary.get("state") == "success" else None


def stages_ok(run: dict[str, Any], expected_documents: int) -> tuple[bool, list[str]]:
    """Every data task succeeded, every manifest line was done by a COMPLETED array task, the merged
    dataset validated with every shard and holds the documents the source served."""
    problems = []
    tis = ti_by_id(run)
    for task in DATA_OK_TASKS:
        state = (tis.get(task) or {}).get("state")
        if state != "success":
            problems.append(f"{task} {state}")
    for stage, m in measures(run).items():
        planned = run["stages"][stage].get("lines")
        if planned is None or m.lines != planned:
            problems.append(f"{stage}: {m.lines} of {planned} manifest lines done")
        if not m.slurm.all_completed:
            problems.append(f"{stage}: Slurm states {m.slurm.states}")
    merge = slurm_use(records_of(run, run["stages"]["merge_validate"]["job_name"]))
    if not merge.all_completed:
        problems.append(f"merge_validate: Slurm states {merge.states}")
    summary = run.get("summary") or {}
    if not summary.get("ok"):
        problems.append(f"dataset summary not ok: {summary.get('errors')}")
    shards = run["stages"]["tokenize"].get("lines")
    if summary.get("shard_datasets") != shards:
        problems.append(f"{summary.get('shard_datasets')} shard datasets validated, {shards} expected")
    if summary.get("documents") != expected_documents:
        problems.append(f"{summary.get('documents')} documents merged, {expected_documents} served")
    return not problems, problems


def calib_rates(calib: dict[str, Any]) -> dict[str, float]:
    """Per-worker rates of a calibration: bytes/s for fetch and stage, tokens/s for tokenize."""
    tok = calib["tokenize"]
    return {
        "fetch": calib["fetch"]["bytes"] / calib["fetch"]["seconds"],
        "stage": calib["stage"]["bytes"] / calib["stage"]["seconds"],
        "tokenize": tok.get("rate") or tok["tokens"] / tok["seconds"],
    }


def rates_from(record: dict[str, Any], ms: dict[str, StageMeasure]) -> tuple[Rates, str]:
    """The model's inputs: per-worker rates from the calibration (else the run's, start-up dominated);
    from the run, each line's fixed cost (its wall minus its units at that rate), Slurm's dispatch gap
    per task, merge's fixed part and Airflow's time around the stages."""
    run = record["main"]
    merge = slurm_use(records_of(run, run["stages"]["merge_validate"]["job_name"]))
    wall = data_wall_s(run) or 0.0
    airflow_s = max(0.0, wall - sum(m.slurm.span_s for m in ms.values()) - merge.span_s)
    calib = record.get("calibration")
    per_worker = calib_rates(calib) if calib else {}
    common = {
        "line_overhead_s": {stage: m.line_overhead_at(per_worker.get(stage)) for stage, m in ms.items()},
        "task_overhead_s": {stage: m.dispatch_gap_s for stage, m in ms.items()},
        "airflow_s": airflow_s,
    }
    bin_bytes = (run.get("summary") or {}).get("bin_bytes") or 0
    if calib:
        rates = Rates(
            fetch_mb_s=per_worker["fetch"] / MB,
            stage_mb_s=per_worker["stage"] / MB,
            tokens_per_s=per_worker["tokenize"],
            merge_mb_s=calib["merge_mb_s"],
            merge_fixed_s=max(0.0, merge.span_s - bin_bytes / MB / calib["merge_mb_s"]),
            **common,
        )
        return rates, f"the calibration ({calib['docs']} documents, median of {calib.get('repeats', 1)})"
    merge_s = max(merge.span_s, 1.0)
    rates = Rates(
        fetch_mb_s=(ms["fetch"].rate or 0) / MB,
        stage_mb_s=(ms["stage"].rate or 0) / MB,
        tokens_per_s=ms["tokenize"].rate or 0,
        merge_mb_s=max(bin_bytes / MB / merge_s, 1e-9),
        **common,
    )
    return rates, "the run's tiny shards (start-up dominated: pessimistic)"


def _units(stage: str, value: float) -> str:
    return f"{value:,.0f} tokens" if stage == "tokenize" else f"{value / MB:,.2f} MiB"


def _rate(stage: str, value: float | None) -> str:
    if not value:
        return "-"
    return f"{value:,.0f} tokens/s" if stage == "tokenize" else f"{value / MB:,.2f} MiB/s"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def report(record: dict[str, Any], cluster: Cluster, out=print) -> str:
    """Print the report of a recorded benchmark; return the SCALE line (printed last)."""
    run = record.get("main")
    if not run:
        raise SystemExit("the record holds no run")
    tis = ti_by_id(run)
    ms = measures(run)
    fixture = record["fixture"]
    copied = fixture.get("copied_from_cluster_source") or []
    served = f"{record['shards']} shards x {record['docs']} documents"
    if copied:
        served += f" ({len(copied)} copied from the cluster's own source)"
    start, end = _t(run.get("start")), _t(run.get("end"))
    whole = (end - start).total_seconds() if start and end else None
    wall = data_wall_s(run)
    partial = " - TIMED OUT, partial" if run.get("timed_out") else ""
    out("")
    out(f"=== scale run {run['run_name']}: {served}, Slurm MaxArraySize {record['max_array_size']} ===")
    out(
        f"DAG run {run['state']}{partial}; git {record.get('git', '?')[:12]}, {record.get('nproc')} CPU cores"
    )
    if wall is not None:
        out(f"data pipeline wall {wall:.1f} s (prepare.plan's start -> data.data_summary's end)")
    if whole is not None:
        out(f"whole DAG run {whole:.1f} s (with 20 iterations of the stand-in trainer, export and report)")
    out("")
    out(
        f"{'stage':<14} {'airflow s':>9} {'state':<8} {'jobs':>4} {'arr.tasks':>9} {'lines':>5} "
        f"{'span s':>7} {'wall s/task':>11} {'work s/task':>11} {'fixed s/task':>12}  moved / made"
    )
    for stage, task in STAGE_TASKS.items():
        ti = tis.get(task) or {}
        cols = f"{stage:<14} {_num(ti.get('duration'), '.1f'):>9} {ti.get('state') or '-':<8}"
        if stage in ms:
            m = ms[stage]
            cols += (
                f" {m.slurm.jobs:>4} {m.slurm.array_tasks:>9} {m.lines:>5} {m.slurm.span_s:>7.0f} "
                f"{m.slurm.mean_wall_s:>11.2f} {m.work_per_task_s:>11.3f} {m.overhead_per_task_s:>12.2f}  "
                f"{_units(stage, m.work_units)}"
            )
        elif stage == "merge_validate":
            merge = slurm_use(records_of(run, run["stages"][stage]["job_name"]))
            merged = ((run.get("summary") or {}).get("bin_bytes") or 0) / MB
            cols += (
                f" {merge.jobs:>4} {'-':>9} {run['stages']['tokenize'].get('lines') or '-':>5} "
                f"{merge.span_s:>7.0f} {merge.mean_wall_s:>11.2f} {'':>11} {'':>12}  {merged:,.2f} MiB merged"
            )
        out(cols)
    for step in OTHER_JOBS:
        use = slurm_use(records_of(run, job_name(step, run["run_name"])))
        if use.records:
            out(f"{step:<14} {'':>9} {'':<8} {use.jobs:>4} {'-':>9} {'':>5} {use.span_s:>7.0f}")
    for stage, step in JOB_STEPS.items():  # a stage that needed several jobs (a retry): each one
        records = records_of(run, job_name(step, run["run_name"]))
        jobs = sorted({r.job for r in records})
        for job in jobs if len(jobs) > 1 else []:
            use = slurm_use([r for r in records if r.job == job])
            out(
                f"  {stage} job {job}: {use.array_tasks} array tasks, {use.states}, span {use.span_s:.0f} s, "
                f"task walls {use.task_wall_s:.0f} s"
            )
    for task, lines in (run.get("failures") or {}).items():
        out(f"  {task} failed: {' | '.join(lines) or '(no exception in its log)'}")
    out("  span: the first array task's start to the last one's end (Slurm's jobcomp log, whole seconds);")
    out("  fixed s/task: span x tasks at a time / tasks - work per task: a task's cost beyond its shard")
    for stage, m in ms.items():
        planned = run["stages"][stage].get("lines")
        line = (
            f"  {stage}: {m.slots} at a time; per line {m.line_overhead_s:.2f} s of start-up (task wall - "
            f"work), per task {m.dispatch_gap_s:.2f} s of Slurm dispatch (slot time - task wall)"
        )
        if run.get("timed_out") and planned and m.lines < planned:
            projected = projected_span_s(m.slurm.span_s, m.lines, planned)
            line += f"; {m.lines}/{planned} lines done -> all at this pace: {human_s(projected or 0)}"
        out(line)
    summary = run.get("summary") or {}
    out("")
    if summary:
        out(
            f"dataset: {summary.get('documents')} documents, {summary.get('tokens')} tokens merged from "
            f"{summary.get('shard_datasets')} shard datasets (validated: {summary.get('ok')}); the source "
            f"served {fixture['documents']} documents, {fixture['gzip_bytes'] / MB:.2f} MiB of gzip"
        )
    jobs_total = len({JobRecord.from_dict(d).job for d in run["jobs"]})
    array_tasks = sum(m.slurm.array_tasks for m in ms.values())
    out(f"Slurm: {jobs_total} jobs for the DAG run, {array_tasks} array tasks (fetch + stage + tokenize)")
    ti_count = len(run["task_instances"])
    ref = record.get("reference")
    # every task instance of a DAG run exists from its start: the counts compare whatever the runs' ends
    same = ref is not None and len(ref["task_instances"]) == ti_count
    mapped = sum(1 for ti in run["task_instances"] if ti.get("map_index") not in (None, -1))
    ref_text = f"{len(ref['task_instances'])} ({ref['state']})" if ref else "not run"
    ref_shards = record.get("reference_shards") or 4
    out(
        f"Airflow task instances: {ti_count} ({mapped} mapped); the {ref_shards}-shard run: {ref_text} "
        f"-> same: {'yes' if same else 'no'}"
    )
    ok, problems = stages_ok(run, fixture["documents"])
    out(f"stages ok: {'yes' if ok else 'no'}" + (f" ({'; '.join(problems)})" if problems else ""))

    calib = record.get("calibration")
    c_rates: dict[str, float] = calib_rates(calib) if calib else {}
    out("")
    if calib:
        head = (
            f"calibration: a C4-like shard of {calib['docs']} documents, {calib['gzip_bytes'] / MB:.2f} MiB, "
            f"median of {calib.get('repeats', 1)}"
        )
    else:
        head = "calibration: none"
    out(f"per-worker throughput  {'the run (tiny shards)':>22}  {head}")
    for stage, m in ms.items():
        out(f"  {stage:<20} {_rate(stage, m.rate):>22}  {_rate(stage, c_rates.get(stage))}")
    if calib:
        out(
            f"  {'merge_validate':<20} {'-':>22}  {calib['merge_mb_s']:,.1f} MiB/s of merged output "
            f"(fixed {calib['merge_fixed_s']:.2f} s)"
        )
        if "fixed_s" in calib["tokenize"]:
            out(
                f"  (tokenize and merge timed whole at two sizes; tokenize's fixed start-up per process "
                f"{calib['tokenize']['fixed_s']:.2f} s)"
            )

    real = None
    if not ok:
        out("\nno extrapolation: the data stages did not all run to the end")
    else:
        rates, source = rates_from(record, ms)
        try:
            real = extrapolate(REAL_C4, cluster, rates)
        except ValueError as err:
            out(f"\nno extrapolation: {err}")
    if real:
        print_extrapolation(real, rates, source, cluster, out)
    hours = f"{real['total'] / 3600:.2f}" if real else "nan"
    line = (
        f"SCALE shards={record['shards']} stages_ok={'yes' if ok else 'no'} "
        f"max_array_size={record['max_array_size']} slurm_jobs={jobs_total} array_tasks={array_tasks} "
        f"airflow_tasks={ti_count}(same as 4 shards: {'yes' if same else 'no'}) "
        f"wall_s={_num(wall, '.0f') if wall is not None else 'nan'} extrapolated_hours={hours}"
    )
    out(line)
    return line


def print_extrapolation(real: dict[str, float], rates: Rates, source: str, cluster: Cluster, out) -> None:
    c4 = REAL_C4
    link_gbit = cluster.link_mb_s * MB * 8 / 1e9
    out("")
    out(
        f"extrapolation to real C4 en train ({c4.shards} shards, {c4.documents / 1e6:.1f}M documents, "
        f"{c4.tokens / 1e9:.0f}B tokens, {c4.gzip_bytes / 1e9:.0f} GB of gzip) on {cluster.nodes} nodes x "
        f"{cluster.cpus_per_node} CPUs:"
    )
    out(
        f"  {cluster.slots} array tasks at a time (one CPU each), MaxArraySize {cluster.max_array_size}, "
        f"internet link {link_gbit:g} Gbit/s; rates from {source};"
    )
    out(
        "  per-line start-up, per-task dispatch, merge's fixed part and Airflow's time as measured in the run"
    )
    shard_mb = c4.gzip_bytes / c4.shards / MB

    def over(stage: str) -> str:
        line = rates.line_overhead_s.get(stage, 0.0)
        task = rates.task_overhead_s.get(stage, 0.0)
        return f"+ {line:.2f} s/line + {task:.2f} s/task"

    rows = [
        (
            "fetch",
            f"{shard_mb:.0f} MiB/shard at {rates.fetch_mb_s:.1f} MiB/s {over('fetch')}; "
            f"the link alone: {human_s(c4.gzip_bytes / MB / cluster.link_mb_s)}",
        ),
        (
            "stage",
            f"{shard_mb:.0f} MiB/shard at {rates.stage_mb_s:.1f} MiB/s {over('stage')}"
            + (f"; FSx cap {cluster.storage_mb_s:.0f} MiB/s" if cluster.storage_mb_s else ""),
        ),
        (
            "tokenize",
            f"{c4.tokens / c4.shards / 1e6:.0f}M tokens/shard at {rates.tokens_per_s / 1e6:.2f}M "
            f"tokens/s per worker {over('tokenize')}",
        ),
        (
            "merge_validate",
            f"{c4.merged_bytes / 1e9:.0f} GB merged at {rates.merge_mb_s:.0f} MiB/s "
            f"(one process) + {rates.merge_fixed_s:.1f} s fixed",
        ),
        ("airflow", "plan, lock, ship_code, submits and polls, as measured"),
        ("total", ""),
    ]
    for stage, how in rows:
        out(f"  {stage:<15} {human_s(real[stage]):>10}  {how}".rstrip())
    per_task = -(-(c4.shards + 1) // min(c4.shards + 1, cluster.max_array_size))
    if per_task > 1:
        out(
            f"  note: MaxArraySize {cluster.max_array_size} < {c4.shards + 1} manifest lines: an array task "
            f"takes up to {per_task} shards, so with enough CPUs an array stage lasts {per_task} shards' time"
        )
    product_p = aws_parallelism()
    if product_p and product_p < cluster.slots:
        at_p = extrapolate(c4, Cluster(**{**cluster.__dict__, "parallelism": product_p}), rates)
        out(
            f"  at the aws profile's array parallelism today (%{product_p}: its data.parallelism is unset): "
            f"{human_s(at_p['total'])}, tokenize alone {human_s(at_p['tokenize'])}"
        )


def aws_parallelism() -> int | None:
    """The ``%P`` the aws profile's data arrays get (its data.parallelism; 8 when unset)."""
    try:
        from neoxflow.neox.profile_loader import load_profile

        prof = load_profile("aws")
    except Exception:  # noqa: BLE001 - only a remark in the report
        return None
    value = getattr(prof, "data_parallelism", None)
    return int(value or (prof.raw.get("data") or {}).get("parallelism") or 8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1024, help="C4 train shards 0..N-1 (1024: all)")
    parser.add_argument("--docs", type=int, default=5, help="documents per shard of the benchmark's source")
    parser.add_argument(
        "--reference-shards", type=int, default=4, help="the task-count reference run (0: none)"
    )
    parser.add_argument(
        "--calib-docs", type=int, default=20000, help="calibration shard's documents (0: none)"
    )
    parser.add_argument("--timeout", type=float, default=9000, help="seconds the main run may take")
    parser.add_argument("--poll", type=float, default=15, help="seconds between looks at the run")
    parser.add_argument("--report-only", type=Path, metavar="FILE", help="report on a saved run; run nothing")
    model = parser.add_argument_group("extrapolation")
    model.add_argument("--nodes", type=int, default=16, help="CPU nodes (default 16)")
    model.add_argument("--cpus-per-node", type=int, default=96, help="vCPUs per node (default 96)")
    model.add_argument("--link-gbit", type=float, default=10.0, help="internet link of the fetch (Gbit/s)")
    model.add_argument("--fsx-mb-s", type=float, default=None, help="FSx aggregate MiB/s (default: no cap)")
    model.add_argument(
        "--parallelism", type=int, default=None, help="array tasks at once (default: all CPUs)"
    )
    model.add_argument("--max-array-size", type=int, default=None, help="default: the measured cluster's")
    args = parser.parse_args(argv)
    if args.report_only:
        record = json.loads(args.report_only.read_text())
    else:
        if not 1 <= args.shards <= 1024 or args.docs < 1:
            parser.error("--shards must be 1..1024 and --docs positive")
        record = run_benchmark(args)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"scale-{datetime.now():%Y%m%d-%H%M%S}.json"
        path.write_text(json.dumps(record, indent=1))
        log(f"measurements saved to {path}")
    cluster = Cluster(
        nodes=args.nodes,
        cpus_per_node=args.cpus_per_node,
        max_array_size=args.max_array_size or record.get("max_array_size") or 1001,
        parallelism=args.parallelism,
        link_mb_s=args.link_gbit * 1e9 / 8 / MB,
        storage_mb_s=args.fsx_mb_s,
    )
    line = report(record, cluster)
    return 0 if " stages_ok=yes " in line else 1


if __name__ == "__main__":
    raise SystemExit(main())
