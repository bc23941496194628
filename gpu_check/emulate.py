"""Run neoxflow's production training job on one machine without Slurm, and watch it as Airflow would.

Why this exists: the proof on a GPU (issue 7) must exercise what users run, not a copy of it. So the
config comes from ``build_run_config`` (the production ``aws`` profile with this machine's paths), the
batch script from ``render_batch_script`` with the production template ``train.sbatch``, and that script
itself is run by bash with Slurm's batch environment and two shims on PATH (gpu_check/slurm_shim: ``srun``
starts one task per GPU with Slurm's per-task variables, ``scontrol`` answers the rendezvous queries).
While it runs, the job log is read by byte offset into neoxflow's ``LogFollower`` and the save folder
is judged by the checkpoint completeness rule, poll by poll, like the deferrable watcher does.

Standard library plus neoxflow (``plugins/`` on sys.path) and PyYAML; no Airflow.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "plugins") not in sys.path:
    sys.path.insert(0, str(REPO / "plugins"))

import yaml  # noqa: E402

from neoxflow.neox.checkpoints import (  # noqa: E402
    Expectation,
    complete_checkpoints,
    partial_checkpoints,
    scan_local,
)
from neoxflow.neox.logstate import LogFollower  # noqa: E402
from neoxflow.neox.profile import Profile  # noqa: E402
from neoxflow.neox.profile_loader import parse_profile  # noqa: E402

SHIM_DIR = REPO / "gpu_check" / "slurm_shim"
#: The folder (dataset id) the staged data goes into, as the data DAG names a dataset by its content.
DATASET_ID = "gpu-check"
PRODUCTION_PROFILE = REPO / "include" / "configs" / "profiles" / "aws.yaml"
#: The C++ dataset helper NeoX compiles at start-up must be built by the system g++: the GPU image's
#: default CXX wrapper produced a helper that segfaulted (tests/fixtures/neox-run/README.md).
SYSTEM_CXX = "g++"


def gpu_profile(
    fsx_root: str,
    *,
    neox_dir: str,
    python: str,
    gpus: int,
    size: str,
    overrides: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    recompute: str = "auto",
    gpu_memory_gib: float | None = None,
    image_provides: tuple[str, ...] = (),
) -> Profile:
    """The production ``aws`` profile, with this machine's shape and paths, parsed by neoxflow itself.

    Only what must differ on a one-machine check is replaced: one node of ``gpus`` GPUs, the FSx root,
    the NeoX checkout, the interpreter, the model size and its overrides, and extra rank environment;
    what this machine's Python has (``image_provides``: no flash-attn, no NeoX fused kernels), its GPU's
    memory (``gpu_memory_gib``; None keeps the profile's) and the scenario's ``neox.recompute``.
    The template (``train.sbatch``), container settings, time limit and data/tokenizer layout stay.
    """
    data = yaml.safe_load(PRODUCTION_PROFILE.read_text(encoding="utf-8"))
    data = copy.deepcopy(data)
    data["name"] = "gpu-check"
    data["cluster"].update(
        nodes=1,
        gpus_per_node=gpus,
        partition="gpu",
        python=python,
        neox_dir=neox_dir,
        env={**(data["cluster"].get("env") or {}), **dict(env or {})},
        image_provides=list(image_provides),
    )
    if gpu_memory_gib is not None:
        data["cluster"]["gpu_memory_gib"] = gpu_memory_gib
    data["fsx"].update(root=fsx_root, visible_to_airflow=True)
    data["s3"]["bucket"] = "gpu-check-unused"
    data["neox"] = {"size": size, "overrides": dict(overrides), "recompute": recompute}
    return parse_profile(yaml.safe_dump(data, sort_keys=False), source=f"{PRODUCTION_PROFILE} (gpu-check)")


def stage_fsx(profile: Profile, *, data_prefix: str, tokenizer: str) -> None:
    """Lay out the 'FSx' tree as the data DAG would leave it: dataset, tokenizer, shipped cluster code."""
    target = Path(profile.data_path(DATASET_ID))
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in (".bin", ".idx"):
        shutil.copyfile(data_prefix + suffix, str(target) + suffix)
    Path(profile.tokenizer_path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tokenizer, profile.tokenizer_path)
    code = Path(profile.code_dir)
    if code.exists():
        shutil.rmtree(code)
    shutil.copytree(REPO / "include" / "cluster", code, ignore=shutil.ignore_patterns("__pycache__"))


def build_dataset_helper(neox_dir: str) -> subprocess.CompletedProcess:
    """Build megatron/data/helpers with the system g++ before any rank starts (NeoX then finds it built).

    NeoX's own start-up runs ``make -C megatron/data`` with whatever ``$CXX`` says; the profile also
    exports ``CXX=g++`` to every rank, so a rebuild there uses the same compiler.
    """
    return subprocess.run(
        ["make", "-C", os.path.join(neox_dir, "megatron", "data"), f"CXX={SYSTEM_CXX}"],
        capture_output=True,
        text=True,
        check=False,
    )


def batch_environment(job_id: int, job_name: str, ntasks: int, submit_dir: str) -> dict[str, str]:
    """What sbatch gives a batch script on a one-node allocation, with the Slurm shims first on PATH."""
    host = socket.gethostname().split(".")[0] or "localhost"
    env = dict(os.environ)
    env.update(
        PATH=f"{SHIM_DIR}{os.pathsep}{env.get('PATH', '')}",
        SLURM_JOB_ID=str(job_id),
        SLURM_JOBID=str(job_id),
        SLURM_JOB_NAME=job_name,
        SLURM_JOB_NODELIST=host,
        SLURM_NODELIST=host,
        SLURM_JOB_NUM_NODES="1",
        SLURM_NNODES="1",
        SLURM_NTASKS=str(ntasks),
        SLURM_NPROCS=str(ntasks),
        SLURM_NTASKS_PER_NODE=str(ntasks),
        SLURM_GPUS_PER_NODE=str(ntasks),
        SLURM_SUBMIT_DIR=submit_dir,
        SLURM_SUBMIT_HOST=host,
        SLURM_CLUSTER_NAME="gpu-check",
        SLURMD_NODENAME=host,
        # Slurm exposes the job's GPUs (--gpus-per-node) to the batch script and its steps
        CUDA_VISIBLE_DEVICES=",".join(str(i) for i in range(ntasks)),
        PYTHONUNBUFFERED="1",
    )
    # Slurm does not hand a batch job the submitter's task variables; make sure none leak in.
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_LOCALID"):
        env.pop(name, None)
    return env


@dataclasses.dataclass
class JobResult:
    """One batch job as the watcher saw it."""

    job_id: int
    exit_code: int | None
    timed_out: bool
    wall_s: float
    log_path: str
    follower: LogFollower
    polls: list[dict]
    listing: dict


def run_batch_job(
    script: str,
    *,
    job_id: int,
    job_name: str,
    ntasks: int,
    log_path: str,
    save_dir: str,
    expect: Expectation,
    timeout_s: float,
    poll_s: float = 2.0,
    echo: Callable[[str], None] = print,
) -> JobResult:
    """Run the rendered batch script like sbatch would and follow it like the watcher does.

    Output goes to ``log_path`` in append mode (``#SBATCH --output`` with ``--open-mode=append``). Each
    poll reads the new bytes of the log into a `LogFollower` and lists the save folder; a poll is
    recorded whenever the iteration or the set of complete checkpoints changed. On timeout the whole
    job (its process group) is killed and ``timed_out`` is set.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    submit_dir = str(Path(log_path).parent)
    env = batch_environment(job_id, job_name, ntasks, submit_dir)
    follower = LogFollower()
    polls: list[dict] = []
    start = time.monotonic()
    last_key = None
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            ["bash", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=submit_dir,
            env=env,
            start_new_session=True,
        )
    timed_out = False
    with open(log_path, "rb") as reader:

        def poll(final: bool = False) -> None:
            nonlocal last_key
            reader.seek(follower.offset + follower.pending)
            follower.feed(reader.read())
            if final:
                follower.flush()
            listing = scan_local(save_dir)
            complete = [c.iteration for c in complete_checkpoints(listing, expect)]
            partial = partial_checkpoints(listing, expect)
            state = follower.state
            key = (state.last_iteration, tuple(complete), tuple(partial))
            if key != last_key or final:
                last_key = key
                entry = {
                    "t_s": round(time.monotonic() - start, 1),
                    "iteration": state.last_iteration,
                    "total": state.total,
                    "complete": complete,
                    "partial": partial,
                    "resumed_from": state.resumed_from,
                    "final": final,
                }
                polls.append(entry)
                echo(f"watch: {json.dumps(entry)}")

        while proc.poll() is None:
            if time.monotonic() - start > timeout_s:
                timed_out = True
                echo(f"watch: job {job_id} ran past {timeout_s:.0f} s: killing it")
                _kill_group(proc)
                break
            poll()
            time.sleep(poll_s)
        proc.wait()
        poll(final=True)
    return JobResult(
        job_id=job_id,
        exit_code=proc.returncode,
        timed_out=timed_out,
        wall_s=round(time.monotonic() - start, 1),
        log_path=log_path,
        follower=follower,
        polls=polls,
        listing=scan_local(save_dir),
    )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
