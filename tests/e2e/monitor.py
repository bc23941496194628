"""Watch one pipeline run from the outside while it runs: its Slurm training jobs and its checkpoints.

The end-to-end tests assert the run's safety properties on what the cluster shows, not on what Airflow
says about itself: a background thread polls ``squeue`` for jobs named ``nxf-train-<run>`` (accounting
is off on the local cluster, so ``sacct`` cannot be asked afterwards) and judges the checkpoint folder
with the pipeline's own completeness rule, so the tests can check

- at most one training job of the run was active at any moment,
- which jobs ever existed (with the job logs on FSx as a second witness),
- no checkpoint that was once complete is gone at the end (unless a verified S3 copy exists).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from neoxflow.neox.checkpoints import Expectation, complete_checkpoints, scan_local, tag_iteration

#: squeue states in which a job may still run training (COMPLETING: its processes are being reaped)
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "SUSPENDED", "REQUEUED", "RESIZING", "SIGNALING"}


def squeue_jobs(job_name: str) -> list[tuple[str, str, str]]:
    """(job id, state, nodes) of the jobs with this name that Slurm still shows."""
    result = subprocess.run(
        ["squeue", "-h", "-n", job_name, "-o", "%i|%T|%N"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ},
    )
    if result.returncode != 0:
        raise RuntimeError(f"squeue failed: {result.stderr.strip()}")
    rows = []
    for line in result.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def complete_tags(checkpoint_dir: Path) -> set[str]:
    listing = scan_local(checkpoint_dir)
    return {c.tag for c in complete_checkpoints(listing, Expectation.standin())}


@dataclass
class JobSighting:
    states: list[str] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    #: complete checkpoints when the job was first seen: what a resume must start from
    complete_when_seen: set[str] = field(default_factory=set)
    #: wall clock (time.time()) of the first and the last poll that saw the job in squeue
    first_seen: float = 0.0
    last_seen: float = 0.0


class RunMonitor:
    """Poll squeue and the checkpoint folder every ``interval`` s in a thread (use as a context manager)."""

    def __init__(self, fsx: Path, run_name: str, interval: float = 0.5):
        self.job_name = f"nxf-train-{run_name}"[:128]
        self.checkpoint_dir = Path(fsx) / "checkpoints" / run_name
        self.interval = interval
        self.jobs: dict[str, JobSighting] = {}
        self.max_active = 0
        self.active_overlaps: list[list[str]] = []
        self.ever_complete: set[str] = set()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"monitor-{run_name}", daemon=True)

    def __enter__(self) -> RunMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.poll()  # one last look after the run ended

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception as err:  # noqa: BLE001 - a transient squeue error must not kill the monitor
                self.errors.append(repr(err))
            self._stop.wait(self.interval)

    def poll(self) -> None:
        complete = complete_tags(self.checkpoint_dir)  # first: a new job's snapshot must be fresh
        self.ever_complete |= complete
        active = []
        for job_id, state, nodes in squeue_jobs(self.job_name):
            sighting = self.jobs.get(job_id)
            if sighting is None:
                sighting = self.jobs[job_id] = JobSighting(
                    complete_when_seen=set(self.ever_complete), first_seen=time.time()
                )
            sighting.last_seen = time.time()
            if not sighting.states or sighting.states[-1] != state:
                sighting.states.append(state)
            if nodes and state == "RUNNING":
                sighting.nodes.add(nodes)
            if state in ACTIVE_STATES:
                active.append(job_id)
        if len(active) > 1:
            self.active_overlaps.append(active)
        self.max_active = max(self.max_active, len(active))

    def running_job(self) -> str | None:
        """A RUNNING job of the run that the polling thread has sighted already (so ``jobs[id]`` holds
        what was complete when it appeared); None until then."""
        for job_id, state, _ in squeue_jobs(self.job_name):
            if state == "RUNNING" and job_id in self.jobs:
                return job_id
        return None


def logged_job_ids(fsx: Path, run_name: str) -> set[str]:
    """Job ids from the training job logs <fsx>/runs/<run>/logs/nxf-train-<run>-<jobid>.out."""
    prefix = f"nxf-train-{run_name}-"
    logs = (Path(fsx) / "runs" / run_name / "logs").glob(f"{prefix}*.out")
    return {p.name[len(prefix) : -len(".out")] for p in logs}


def lost_checkpoints(monitor: RunMonitor, verified_s3_tags: set[str]) -> set[str]:
    """Checkpoints once complete that are neither complete on FSx now nor verified on S3."""
    return monitor.ever_complete - complete_tags(monitor.checkpoint_dir) - verified_s3_tags


def highest(tags: set[str]) -> int:
    return max((tag_iteration(t) for t in tags), default=0)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    """Poll ``predicate`` until it returns something truthy; fail the test naming ``what``."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
