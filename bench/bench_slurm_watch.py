"""How fast does a task notice that its Slurm job ended, and what does watching cost?

One command (`make bench` or `.venv/bin/python bench/bench_slurm_watch.py`) on the local cluster:

- neoxflow: SlurmJobTrigger (asyncssh, one reused connection, one probe command per poll);
- baseline: what people do today, a blocking SSH command running ``sbatch --wait`` (SSHOperator style).

For each of N short jobs, the job's last act writes a high-resolution timestamp; the notice latency is
the time from that stamp to the watcher's verdict. Also reported: SSH connections opened per poll and
the worker slots held while the job runs (a deferred trigger is a coroutine in the triggerer: 0 slots;
``sbatch --wait`` blocks a worker process for the job's whole life: 1). Printed as ratios vs baseline.
Targets (issue 2): latency <= poll interval + 2 s; <= 0.1 new SSH connections per poll; 0 slots.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))


def load_env() -> None:
    env_file = REPO / ".state" / "cluster" / "env.sh"
    if not env_file.exists():
        sys.exit("local cluster is not up: run `make cluster-up` first")
    import shlex

    for line in env_file.read_text().splitlines():
        if line.startswith("export "):
            name, _, raw = line[7:].partition("=")
            os.environ[name] = shlex.split(raw)[0] if raw else ""


SCRIPT = "#!/bin/bash\nsleep {sleep}\ndate +%s.%N > {stamp}\n"


def submit(hook, workdir: Path, i: int, sleep: float) -> tuple[str, Path]:
    stamp = workdir / f"end-{i}"
    path = f"{workdir}/job-{i}.sbatch"
    hook.upload(SCRIPT.format(sleep=sleep, stamp=stamp).encode(), path)
    job = hook.submit(path, job_name=f"bench-{i}", output=f"{workdir}/slurm-%j.out")
    return job, stamp


async def watch_with_trigger(job: str, poll: float) -> tuple[float, int, int]:
    from neoxflow.triggers.slurm_job import SlurmJobTrigger

    trigger = SlurmJobTrigger(
        ssh_conn_id="neoxflow_cluster", job_id=job, start_day=time.strftime("%Y-%m-%d"), poll_interval=poll
    )
    event = await trigger.run().__anext__()
    noticed = time.time()
    assert event.payload["status"]["outcome"] == "success", event.payload
    return noticed, event.payload["polls"], event.payload["connections"]


def watch_with_sbatch_wait(hook, workdir: Path, i: int, sleep: float) -> float:
    """Baseline: one blocking SSH command, `sbatch --wait`, returns when the job ends."""
    stamp = workdir / f"end-{i}"
    path = f"{workdir}/job-{i}.sbatch"
    hook.upload(SCRIPT.format(sleep=sleep, stamp=stamp).encode(), path)
    from airflow.providers.ssh.hooks.ssh import SSHHook

    ssh = SSHHook(ssh_conn_id="neoxflow_cluster")  # SSHOperator opens its own connection per task
    client = ssh.get_conn()
    try:
        status, _, err = ssh.exec_ssh_client_command(
            client,
            f"sbatch --wait --job-name=bench-wait-{i} --output={workdir}/wait-%j.out {path}",
            get_pty=False,
            environment=None,
            timeout=600,
        )
    finally:
        client.close()
    assert status == 0, err
    return time.time()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--poll", type=float, default=2.0)
    parser.add_argument("--sleep", type=float, default=20.0, help="seconds each job runs")
    args = parser.parse_args()
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    load_env()
    from concurrent.futures import ThreadPoolExecutor

    from neoxflow.hooks.slurm import SlurmSSHHook

    hook = SlurmSSHHook("neoxflow_cluster")
    workdir = Path(os.environ["NEOXFLOW_FSX"]) / "bench" / uuid.uuid4().hex[:8]
    workdir.mkdir(parents=True)

    # neoxflow: all jobs watched at once by triggers in one event loop, as the triggerer does
    submitted = [submit(hook, workdir, i, args.sleep) for i in range(args.jobs)]

    async def watch_all():
        return await asyncio.gather(*(watch_with_trigger(job, args.poll) for job, _ in submitted))

    results = asyncio.run(watch_all())
    ours = [
        noticed - float(stamp.read_text())
        for (noticed, _, _), (_, stamp) in zip(results, submitted, strict=True)
    ]
    polls = sum(p for _, p, _ in results)
    conns = sum(c for _, _, c in results)

    # baseline: one blocking `sbatch --wait` per job, each in its own worker (thread here)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        ends = list(
            pool.map(lambda i: watch_with_sbatch_wait(hook, workdir, 1000 + i, args.sleep), range(args.jobs))
        )
    base = [noticed - float((workdir / f"end-{1000 + i}").read_text()) for i, noticed in enumerate(ends)]

    med_ours, med_base = statistics.median(ours), statistics.median(base)
    per_poll = conns / polls
    print(
        f"{args.jobs} jobs of {args.sleep:.0f} s watched at once; poll interval {args.poll:.1f} s; "
        "local Slurm over SSH"
    )
    print(f"{'':34}{'neoxflow trigger':>18}{'sbatch --wait':>16}{'ratio':>8}")
    print(f"{'notice latency, median (s)':34}{med_ours:>18.2f}{med_base:>16.2f}{med_ours / med_base:>8.2f}")
    print(f"{'notice latency, max (s)':34}{max(ours):>18.2f}{max(base):>16.2f}{max(ours) / max(base):>8.2f}")
    print(f"{'polls':34}{polls:>18d}{'-':>16}")
    print(f"{'SSH connections opened':34}{conns:>18d}{args.jobs:>16d}{conns / args.jobs:>8.2f}")
    print(f"{'new SSH connections per poll':34}{per_poll:>18.3f}{'-':>16}")
    print(f"{'worker slots held while running':34}{0:>18d}{args.jobs:>16d}{0:>8.2f}")
    ok = med_ours <= args.poll + 2 and per_poll <= 0.1
    print(
        f"targets: latency <= poll + 2 s: {med_ours <= args.poll + 2}; <= 0.1 new connections per poll: "
        f"{per_poll <= 0.1}; 0 worker slots while deferred: True"
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
