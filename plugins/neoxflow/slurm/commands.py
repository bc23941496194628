"""Shell command lines for the Slurm client tools. Pure functions: validated input, quoted output.

Every builder validates its arguments (:mod:`neoxflow.slurm.validate`) and quotes each one with
:func:`shlex.quote`, so a value can never become shell syntax. Scripts are never built here: they are
uploaded as files and only their path appears on a command line.
"""

from __future__ import annotations

import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

from neoxflow.slurm.parse import SACCT_FORMAT
from neoxflow.slurm.validate import (
    UnsafeValueError,
    check_job_id,
    check_job_name,
    check_nodelist,
    check_partition,
    check_remote_path,
    check_sbatch_option,
)

q = shlex.quote

SQUEUE_FORMAT = "%i|%T|%r|%N"
# Section markers of the one-command probe. The log chunk is always the last section, so its bytes
# can hold anything (including these markers) without confusing the parser.
MARK = "@@neoxflow-probe@@"


def sbatch_command(
    script_path: str,
    *,
    job_name: str,
    comment: str | None = None,
    output: str | None = None,
    workdir: str | None = None,
    options: Mapping[str, object] | None = None,
) -> str:
    """``sbatch --parsable`` for an uploaded script.

    ``options`` are sbatch long options without dashes ({"nodes": 2, "exclusive": True}); only an
    allow-list is accepted (so no ``--wrap``). ``--no-requeue`` is the default: neoxflow decides resumes
    itself, from a checkpoint, instead of letting Slurm rerun a script from the top.
    """
    args = ["sbatch", "--parsable", f"--job-name={check_job_name(job_name)}"]
    if comment is not None:
        if not comment.isprintable() or len(comment) > 512 or "'" in comment:
            raise UnsafeValueError("comment", comment, "must be one printable line of at most 512 characters")
        args.append(f"--comment={comment}")
    if output is not None:
        args.append(f"--output={check_remote_path(output, 'output')}")
    if workdir is not None:
        args.append(f"--chdir={check_remote_path(workdir, 'workdir')}")
    opts = dict(options or {})
    if "requeue" not in opts and "no-requeue" not in opts:
        opts["no-requeue"] = True
    for name, value in opts.items():
        if value is False or value is None and name not in ("exclusive", "requeue", "no-requeue", "hold"):
            continue
        name, value = check_sbatch_option(name, value)
        args.append(f"--{name}" if value is None else f"--{name}={value}")
    args.append(check_remote_path(script_path, "script_path"))
    return " ".join(q(a) for a in args)


def squeue_by_id(job_id: str) -> str:
    return f"squeue -h -r -j {q(check_job_id(job_id))} -o {q(SQUEUE_FORMAT)}"


def squeue_by_name(job_name: str) -> str:
    """Active jobs of this user with this exact name (how a retry finds the job it already submitted)."""
    return f"squeue -h -r --me -n {q(check_job_name(job_name))} -o {q(SQUEUE_FORMAT)}"


def scontrol_show_job(job_id: str) -> str:
    return f"scontrol show job -o {q(check_job_id(job_id))}"


def sacct_job(job_id: str, start_day: str) -> str:
    """History of a job. ``--starttime`` matters: without it sacct only looks since midnight."""
    if not (len(start_day) == 10 and start_day[4] == "-" and start_day.replace("-", "").isdigit()):
        raise UnsafeValueError("start_day", start_day, "must be YYYY-MM-DD")
    return (
        f"sacct -j {q(check_job_id(job_id))} -n --parsable2 --starttime={q(start_day)} "
        f"--format={q(SACCT_FORMAT)}"
    )


def scancel_command(job_id: str, signal: str | None = None, batch_only: bool = False) -> str:
    args = ["scancel"]
    if signal is not None:
        name, value = check_sbatch_option("signal", signal)
        args.append(f"--signal={value}")
    if batch_only:
        args.append("--batch")
    args.append(check_job_id(job_id))
    return " ".join(q(a) for a in args)


def log_chunk_command(path: str, offset: int, max_bytes: int) -> str:
    """Bytes [offset, offset+max_bytes) of a file; nothing if it does not exist yet."""
    if offset < 0 or max_bytes <= 0:
        raise ValueError("offset must be >= 0 and max_bytes > 0")
    p = q(check_remote_path(path, "log_path"))
    return f"if [ -f {p} ]; then tail -c +{offset + 1} {p} | head -c {max_bytes}; fi"


def tail_lines_command(path: str, lines: int = 40) -> str:
    return f"tail -n {int(lines)} {q(check_remote_path(path, 'log_path'))} 2>/dev/null || true"


#: node states that cannot run a job (``sinfo -t``): the nodes a resume excludes, and not a spare
UNHEALTHY_NODE_STATES = "down,drain,fail,no_respond"


def hostnames_command(nodelist: str) -> str:
    """One node name per line for a Slurm node list such as ``node[1-3]``."""
    return f"scontrol show hostnames {q(check_nodelist(nodelist))}"


def node_names_command(partition: str | None = None, *, unhealthy: bool = False) -> str:
    """The names of the nodes (of ``partition``, or all), one per line; only the unhealthy ones with
    ``unhealthy`` (:data:`UNHEALTHY_NODE_STATES`)."""
    args = ["sinfo", "-h", "-N", "-o", "%N"]
    if partition:
        args += ["-p", check_partition(partition)]
    if unhealthy:
        args += ["-t", UNHEALTHY_NODE_STATES]
    return " ".join(q(a) for a in args)


def show_config_command() -> str:
    """The controller's configuration (``Key = value`` lines): limits such as ``MaxArraySize``."""
    return "scontrol show config"


def mkdir_command(path: str) -> str:
    return f"mkdir -p -- {q(check_remote_path(path, 'path'))}"


@dataclass(frozen=True)
class TaskLogsRequest:
    """Read on in an array's per-task output files, in the probe's one command: file ``prefix + N +
    suffix`` of task N from its own byte offset, ``max_bytes`` in ALL (a 1001-task array reads no more
    per poll than one job), in the order given (the caller rotates it, so no task starves the others).

    Each file's bytes follow a line ``\n<MARK><nonce> task N``; the nonce is new for every request, so
    a job that prints a marker cannot forge a section (:func:`split_task_logs`).
    """

    prefix: str
    suffix: str
    offsets: tuple[tuple[int, int], ...]  # (task index, byte offset to read from)
    max_bytes: int = 256 * 1024
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))

    def command(self) -> str:
        check_remote_path(f"{self.prefix}0{self.suffix}", "array log")
        if self.max_bytes <= 0 or any(i < 0 or o < 0 for i, o in self.offsets):
            raise ValueError("task indices and offsets must be >= 0, max_bytes > 0")
        tasks = " ".join(f"{int(i)}:{int(o)}" for i, o in self.offsets)
        mark = q(f"{MARK}{self.nonce} task")
        return (
            f"p={q(self.prefix)}; s={q(self.suffix)}; r={int(self.max_bytes)}; "
            f'for t in {tasks}; do i=${{t%%:*}}; o=${{t#*:}}; f="$p$i$s"; [ -f "$f" ] || continue; '
            'n=$(( $(stat -c %s -- "$f" 2>/dev/null || echo 0) - o )); [ "$n" -gt 0 ] || continue; '
            '[ "$n" -le "$r" ] || n=$r; [ "$n" -gt 0 ] || break; '
            f"printf '\\n%s %s\\n' {mark} \"$i\"; "
            'tail -c +$((o + 1)) -- "$f" | head -c "$n"; r=$((r - n)); done'
        )


def split_task_logs(section: bytes, nonce: str) -> dict[int, bytes]:
    """The bytes read from each task's file, by task index, from a probe's log section."""
    chunks: dict[int, bytes] = {}
    for part in section.split(f"\n{MARK}{nonce} task ".encode())[1:]:
        head, _, data = part.partition(b"\n")
        if head.strip().isdigit():
            chunks[int(head)] = data
    return chunks


@dataclass(frozen=True)
class ProbeRequest:
    """What one poll asks the cluster, in ONE ssh exec (one round trip per poll).

    The job's output is read in the last section: one file (``log_path``, from ``log_offset``) or an
    array's per-task files (``task_logs``).
    """

    job_id: str
    start_day: str
    log_path: str | None = None
    log_offset: int = 0
    max_log_bytes: int = 256 * 1024
    use_sacct: bool = True
    task_logs: TaskLogsRequest | None = None

    def command(self) -> str:
        sections = [
            ("squeue", squeue_by_id(self.job_id)),
            ("scontrol", scontrol_show_job(self.job_id)),
        ]
        if self.use_sacct:
            sections.append(("sacct", sacct_job(self.job_id, self.start_day)))
        parts = [f'echo {q(f"{MARK} {name}")}; {cmd} 2>&1; echo "{MARK} rc $?"' for name, cmd in sections]
        if self.log_path:
            parts.append(
                f"echo {q(f'{MARK} log')}; "
                + log_chunk_command(self.log_path, self.log_offset, self.max_log_bytes)
            )
        elif self.task_logs is not None:
            parts.append(f"echo {q(f'{MARK} log')}; " + self.task_logs.command())
        return "; ".join(parts)


@dataclass(frozen=True)
class ProbeAnswer:
    """The sections of a probe's output. A section is None when its command failed."""

    squeue: str | None
    scontrol: str | None
    sacct: str | None
    log_chunk: bytes
    errors: dict[str, str]


_NOT_FOUND_MARKERS = ("Invalid job id specified", "Invalid job id")


def split_probe_output(stdout: bytes) -> ProbeAnswer:
    """Cut a probe's stdout into sections and decide which of them answered.

    squeue and scontrol exit non-zero for a job that left the controller's memory ("Invalid job id"):
    that IS an answer (no rows). Any other failure (controller down, timeout) is no answer.
    """
    marker = MARK.encode()
    texts: dict[str, str | None] = {"squeue": None, "scontrol": None, "sacct": None}
    errors: dict[str, str] = {}
    log_chunk = b""
    log_head = stdout.find(marker + b" log\n")
    head = stdout if log_head < 0 else stdout[:log_head]
    if log_head >= 0:
        log_chunk = stdout[log_head + len(marker) + 5 :]
    current: str | None = None
    body: list[str] = []
    for line in head.decode("utf-8", "replace").splitlines():
        if line.startswith(MARK + " rc ") and current:
            rc = line[len(MARK) + 4 :].strip()
            text = "\n".join(body)
            if rc == "0":
                texts[current] = text
            elif current in ("squeue", "scontrol") and any(m in text for m in _NOT_FOUND_MARKERS):
                texts[current] = ""
            else:
                errors[current] = f"rc {rc}: {text.strip()[:300]}"
            current, body = None, []
        elif line.startswith(MARK + " "):
            current, body = line[len(MARK) + 1 :].strip(), []
        elif current:
            body.append(line)
    return ProbeAnswer(texts["squeue"], texts["scontrol"], texts["sacct"], log_chunk, errors)
