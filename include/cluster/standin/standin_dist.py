"""The stand-in trainer's rank layout: torch's variables, else Slurm's (one rank per Slurm task).

GPT-NeoX gets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT from the batch script; the stand-in
accepts those and falls back to what srun sets, so it also runs under a bare ``srun``. Pure (no torch):
tested directly.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    """Where this rank sits in the job and where rank 0 listens."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int


def first_host(nodelist: str) -> str:
    """First host of a Slurm hostlist: "node[1-2]" -> "node1", "gpu[07,09-10],cpu1" -> "gpu07"."""
    nodelist = nodelist.strip()
    m = re.match(r"^([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not m or not nodelist:
        raise ValueError(f"SLURM_JOB_NODELIST {nodelist!r} is not a Slurm hostlist")
    prefix, ranges = m.group(1), m.group(2)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except OSError:
        return False
    return True


def dist_env(environ: dict | None = None, resolves=_resolves) -> DistEnv:
    """Rank layout from torch's variables, falling back to Slurm's (one rank per Slurm task).

    Without MASTER_ADDR the first node of the allocation hosts rank 0. Slurm node names need not be
    host names (the local cluster's node1/node2 are one machine, NodeAddr 127.0.0.1), so a name that does
    not resolve falls back to SLURM_LAUNCH_NODE_IPADDR, the address srun was started from.
    """
    env = os.environ if environ is None else environ

    def pick(*names: str, default: str | None = None) -> str | None:
        for name in names:
            if env.get(name, "") != "":
                return env[name]
        return default

    world = int(pick("WORLD_SIZE", "SLURM_NTASKS", default="1"))
    rank = int(pick("RANK", "SLURM_PROCID", default="0"))
    local = int(pick("LOCAL_RANK", "SLURM_LOCALID", default="0"))
    addr = pick("MASTER_ADDR")
    if addr is None:
        nodelist = pick("SLURM_JOB_NODELIST", "SLURM_NODELIST")
        addr = first_host(nodelist) if nodelist else "127.0.0.1"
        if nodelist and not resolves(addr):
            addr = pick("SLURM_LAUNCH_NODE_IPADDR", default=addr)
    port = pick("MASTER_PORT")
    if port is None:
        job = pick("SLURM_JOB_ID", default="0")
        port = str(29500 + int(job) % 10000) if job.isdigit() else "29500"
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    return DistEnv(rank, world, local, addr, int(port))
