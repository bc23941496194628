"""A Slurm job's output in the Airflow task log: complete lines, as they are written, bounded per poll.

Both watches (the plain job trigger of the data jobs and the training trigger) read the job's output file
by byte offset, one chunk per poll; a data stage's ARRAY job has one output file per task, each read by
its own offset, with one bound for all of them (:class:`ArrayLogStream`). This turns each chunk into
the lines to log: an unfinished last line waits for the next chunk (a chunk may end mid-line or
mid-character), and one poll logs at most
``max_lines`` lines and ``max_bytes`` bytes, so a job that prints a megabyte a second cannot flood the task
log or the triggerer (Airflow 3 carries every trigger log line over a socket). What does not fit is
replaced by one marker line naming how much was skipped and the file that holds it; the newest lines of
the chunk are always kept, they say where the job is now.

The worker uses the same stream (:func:`bounded_lines`) when it copies a finished deferral's output into
its own log: Airflow 3.3 opens a trigger's log file afresh (truncated) for each deferral of the same try,
so without that copy the output streamed before the last deferral would vanish from the task log.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_BYTES",
    "MAX_LINES",
    "ArrayLogStream",
    "LogStream",
    "array_log_pattern",
    "bounded_lines",
    "copy_segment",
    "job_log_files",
    "skipped_marker",
]

MAX_LINES = 200  # lines logged per poll, at most
MAX_BYTES = 64 * 1024  # bytes logged per poll, at most
MAX_LINE_CHARS = 2000  # a longer line (a config dump) is cut to this with a note
KEEP_NEWEST = 10  # of a chunk that does not fit, the newest lines are logged all the same
TAIL_LINES = 40  # lines kept for a failure message
MAX_LINE_BYTES = 1 << 20  # a longer line is dropped, not buffered (config dumps are long, not that long)


def skipped_marker(lines: int, size: int, path: str | None) -> str:
    where = f", see {path}" if path else ""
    return f"... {lines} lines ({size} bytes) skipped{where}"


def _cut(line: str) -> str:
    if len(line) <= MAX_LINE_CHARS:
        return line
    return f"{line[:MAX_LINE_CHARS]} ... [{len(line) - MAX_LINE_CHARS} more characters]"


def bounded_lines(
    lines: Sequence[str],
    path: str | None = None,
    max_lines: int = MAX_LINES,
    max_bytes: int = MAX_BYTES,
) -> list[str]:
    """The lines to log for one poll: all of them when they fit, else the oldest that fit, a
    ``... M lines skipped, see <path>`` marker, and the newest ``KEEP_NEWEST``."""
    lines = [_cut(line) for line in lines]
    size = sum(len(line.encode()) + 1 for line in lines)
    if len(lines) <= max_lines and size <= max_bytes:
        return lines
    newest = lines[-KEEP_NEWEST:] if max_lines > KEEP_NEWEST else []
    budget_lines = max_lines - len(newest) - 1
    budget_bytes = max_bytes - sum(len(line.encode()) + 1 for line in newest)
    head: list[str] = []
    used = 0
    for line in lines[: len(lines) - len(newest)]:
        cost = len(line.encode()) + 1
        if len(head) >= budget_lines or used + cost > budget_bytes:
            break
        head.append(line)
        used += cost
    skipped = lines[len(head) : len(lines) - len(newest)]
    skipped_bytes = sum(len(line.encode()) + 1 for line in skipped)
    return [*head, skipped_marker(len(skipped), skipped_bytes, path), *newest]


@dataclass
class LogStream:
    """Chunks of a job's output -> complete lines to log (bounded) and a tail for failure messages.

    The one place a job's output is cut into lines (the training watch parses the same lines, it does
    not split the chunk again). A chunk may end inside a line or inside a multi-byte UTF-8 character:
    lines are split on bytes and decoded whole (invalid bytes become U+FFFD), the unfinished last line
    waits for the next chunk. ``offset`` is the byte just past the last complete line, where a fresh
    stream starts after a re-deferral or a triggerer restart so nothing is lost or read twice (the next
    read starts at ``offset + pending``). A runaway line longer than ``max_line_bytes`` is dropped.
    """

    path: str | None = None
    max_lines: int = MAX_LINES
    max_bytes: int = MAX_BYTES
    offset: int = 0
    max_line_bytes: int = MAX_LINE_BYTES
    partial: bytes = b""
    discarding: bool = False  # inside a runaway line: drop bytes until its newline
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    @property
    def pending(self) -> int:
        """Bytes received but not yet a line (the unfinished last line)."""
        return len(self.partial)

    def feed(self, chunk: bytes) -> list[str]:
        """Every line this chunk completes (the unfinished last line waits for the next chunk)."""
        *complete, rest = (self.partial + chunk).split(b"\n")
        self.offset += sum(len(raw) + 1 for raw in complete)
        if self.discarding and complete:
            complete, self.discarding = complete[1:], False
        if len(rest) > self.max_line_bytes:
            self.offset += len(rest)
            rest, self.discarding = b"", True
        self.partial = rest
        return self._take(raw.decode("utf-8", "replace") for raw in complete)

    def flush(self) -> list[str]:
        """At the job's end: the unfinished last line too."""
        rest, self.partial = self.partial, b""
        self.offset += len(rest)
        keep = rest and not self.discarding
        self.discarding = False
        return self._take([rest.decode("utf-8", "replace")] if keep else [])

    def to_log(self, lines: Sequence[str]) -> list[str]:
        """What of one poll's lines goes to the task log (see :func:`bounded_lines`)."""
        return bounded_lines(lines, self.path, self.max_lines, self.max_bytes)

    def _take(self, lines: Iterable[str]) -> list[str]:
        lines = list(lines)
        self.tail.extend(lines)
        return lines


def array_log_pattern(output: str, job_id: str, job_name: str | None = None) -> str | None:
    """An array's per-task output file, with ``%a`` left for the task index: Slurm's ``--output``
    pattern with the array's job id (``%A``), the job name (``%x``) and ``%%`` filled in. None when the
    pattern names anything else (``%j``, ``%N``... differ per task and are not known here) or has no
    single ``%a``: such an array's output is not streamed."""
    out, i = [], 0
    while i < len(output):
        char = output[i]
        if char != "%":
            out.append(char)
            i += 1
            continue
        token = output[i + 1 : i + 2]
        if token == "A":
            out.append(job_id)
        elif token == "x" and job_name:
            out.append(job_name)
        elif token == "%":
            out.append("%%")
        elif token == "a":
            out.append("%a")
        else:
            return None
        i += 2
    pattern = "".join(out)
    if pattern.count("%a") != 1:
        return None
    return pattern.replace("%%", "%")


def job_log_files(output: str, job_id: str, job_name: str, array: bool) -> dict[str, str | None]:
    """Where a submitted job's output is streamed from: its file (``log_path``) or, for an array, one
    file per task (``array_log``, ``%a`` for the index; None when the pattern cannot be filled in)."""
    if array:
        return {"log_path": None, "array_log": array_log_pattern(output, job_id, job_name)}
    return {"log_path": output.replace("%j", job_id), "array_log": None}


class ArrayLogStream:
    """An array's per-task output files -> the lines to log, each ``[task N] ...``, bounded per poll
    across ALL files together, so a 1001-task array logs no more per poll than one job does.

    Each task's file has its own `LogStream` (its own byte offset and unfinished line). ``offsets``
    (task index -> end of its last complete line, as strings for JSON) travel in the trigger's state:
    a re-deferred or restarted watch reads each file on from there, repeating and skipping nothing.
    A task seen final whose file was read to its end is not asked about again (``drained``).
    """

    def __init__(
        self,
        pattern: str,
        tasks: Sequence[int],
        offsets: Mapping[str, int] | None = None,
        max_lines: int = MAX_LINES,
        max_bytes: int = MAX_BYTES,
    ):
        self.path = pattern
        self.prefix, self.suffix = pattern.split("%a")
        offsets = offsets or {}
        self.streams = {
            task: LogStream(self.file(task), offset=int(offsets.get(str(task), 0))) for task in tasks
        }
        self.max_lines, self.max_bytes = max_lines, max_bytes
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.drained: set[int] = set()
        self._turn = 0  # where the next read starts, so a chatty task cannot starve the others

    def file(self, task: int) -> str:
        return f"{self.prefix}{task}{self.suffix}"

    @property
    def offsets(self) -> dict[str, int]:
        return {str(task): stream.offset for task, stream in self.streams.items() if stream.offset}

    def reads(self) -> tuple[tuple[int, int], ...]:
        """``(task, offset to read from)`` for this poll, the not drained tasks, starting one further
        each poll."""
        tasks = [task for task in self.streams if task not in self.drained]
        if not tasks:
            return ()
        start = self._turn % len(tasks)
        self._turn += 1
        order = tasks[start:] + tasks[:start]
        return tuple((task, self.streams[task].offset + self.streams[task].pending) for task in order)

    def feed(self, chunks: Mapping[int, bytes]) -> list[str]:
        """The complete lines these chunks (by task index) bring, ``[task N] `` in front, by task."""
        lines: list[str] = []
        for task in sorted(chunks):
            if task in self.streams:
                lines += [f"[task {task}] {line}" for line in self.streams[task].feed(chunks[task])]
        self.tail.extend(lines)
        return lines

    def flush(self) -> list[str]:
        """At the array's end: every file's unfinished last line too."""
        lines = [f"[task {task}] {line}" for task, stream in self.streams.items() for line in stream.flush()]
        self.tail.extend(lines)
        return lines

    def to_log(self, lines: Sequence[str]) -> list[str]:
        """What of one poll's lines (of all tasks) goes to the task log (see :func:`bounded_lines`)."""
        return bounded_lines(lines, self.path, self.max_lines, self.max_bytes)


#: a finished deferral's output copied into the worker's log: at most this much of it
SEGMENT_MAX_BYTES = 1 << 20
SEGMENT_MAX_LINES = 1000


def copy_segment(run: Any, path: str, start: int, end: int, job_id: str, log: Any) -> int:
    """Copy the job's output bytes [start, end) - what one deferral's trigger streamed - into this
    (the worker's) task log, bounded like the stream; returns the number of lines read.

    Airflow 3.3 writes a trigger's log to ``<task log>.trigger.<triggerer id>.log`` and opens it afresh,
    truncated, for every new trigger of the same try, so each re-deferral (the training watch re-defers at
    every checkpoint) would wipe the output streamed so far; the worker's log is appended to.
    ``run`` is the sync hook's ``run(command, check=...)``. Never raises: the log is a courtesy.
    """
    from neoxflow.slurm.commands import log_chunk_command

    if not path or end <= start:
        return 0
    size = min(end - start, SEGMENT_MAX_BYTES)
    try:
        status, out, _ = run(log_chunk_command(path, end - size, size), check=False)
    except Exception as err:
        log.warning("Could not copy job %s's output %s [%d, %d): %s", job_id, path, start, end, err)
        return 0
    if status != 0:
        return 0
    lines = out.decode("utf-8", "replace").split("\n")
    if size < end - start:  # the oldest part did not fit: say so, start at a line boundary
        lines = [f"... earlier output ({end - start - size} bytes) skipped, see {path}", *lines[1:]]
    if lines and lines[-1] == "":
        lines.pop()
    log.info(
        "Job %s's output %s, bytes %d-%d, as the trigger streamed it (copied here: Airflow replaces a "
        "trigger's log at each deferral):",
        job_id,
        path,
        start,
        end,
    )
    for line in bounded_lines(lines, path, SEGMENT_MAX_LINES, SEGMENT_MAX_BYTES):
        log.info("[slurm %s] %s", job_id, line)
    return len(lines)
