"""Talking to a Slurm login node over SSH: a sync hook for operators, an async one for triggers.

Connection logic only. Command lines come from :mod:`neoxflow.slurm.commands` (pure, validated,
quoted); answers are parsed by :mod:`neoxflow.slurm.parse`. Scripts travel by SFTP into a file and are
never interpolated into a shell line. Host keys are checked (the SSH provider's default): the
connection's ``host_key`` extra pins the key.
"""

from __future__ import annotations

import asyncio
import posixpath
import uuid
from collections.abc import Mapping
from functools import cached_property
from typing import Any

from airflow.providers.ssh.hooks.ssh import SSHHook, SSHHookAsync

from neoxflow.backoff import MAX_BACKOFF_S, jittered_backoff
from neoxflow.slurm import commands
from neoxflow.slurm.commands import ProbeRequest, split_probe_output
from neoxflow.slurm.parse import (
    JobStatus,
    TaskState,
    parse_config_value,
    parse_sacct,
    parse_sbatch_parsable,
    parse_squeue,
)
from neoxflow.slurm.status import status_from_probe
from neoxflow.slurm.validate import check_remote_path


class SlurmCommandError(RuntimeError):
    """A Slurm client command failed on the login node."""

    def __init__(self, command: str, status: int, stderr: str):
        self.status = status
        self.stderr = stderr
        super().__init__(
            f"`{command.split(' ', 1)[0]}` failed with exit status {status}: {stderr.strip()[:500]}"
        )


HOST_KEY_HELP = (
    "The SSH host key of the cluster is not known or does not match. Put the login node's public host key "
    "in the connection's `host_key` extra (e.g. from `ssh-keyscan -t ed25519 HOST | cut -d' ' -f2-`) "
    "after checking its fingerprint; do not turn off host key checking."
)


class SlurmSSHHook:
    """Blocking Slurm client for operators (runs in a worker)."""

    def __init__(self, ssh_conn_id: str, cmd_timeout: float = 60.0):
        self.ssh_conn_id = ssh_conn_id
        self.cmd_timeout = cmd_timeout
        self._client = None

    @cached_property
    def ssh_hook(self) -> SSHHook:
        return SSHHook(ssh_conn_id=self.ssh_conn_id, cmd_timeout=self.cmd_timeout)

    def _conn(self):
        if (
            self._client is None
            or not self._client.get_transport()
            or not self._client.get_transport().is_active()
        ):
            try:
                self._client = self.ssh_hook.get_conn()
            except Exception as err:
                if is_host_key_error(err) or _paramiko_missing_host_key(err):
                    raise HostKeyRefused(f"{err}. {HOST_KEY_HELP}") from err
                raise  # a banner, auth or network error is not a host key problem
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run(
        self, command: str, *, check: bool = True, timeout: float | None = None
    ) -> tuple[int, bytes, bytes]:
        status, out, err = self.ssh_hook.exec_ssh_client_command(
            self._conn(), command, get_pty=False, environment=None, timeout=timeout or self.cmd_timeout
        )
        if check and status != 0:
            raise SlurmCommandError(command, status, err.decode("utf-8", "replace"))
        return status, out, err

    def upload(self, content: bytes, remote_path: str, mode: int = 0o644) -> None:
        """Write a file atomically: a temporary name in the same folder, then rename."""
        remote_path = check_remote_path(remote_path, "remote_path")
        self.run(commands.mkdir_command(posixpath.dirname(remote_path) or "."))
        tmp = f"{remote_path}.tmp.{uuid.uuid4().hex[:8]}"
        sftp = self._conn().open_sftp()
        try:
            with sftp.open(tmp, "wb") as handle:
                handle.write(content)
            sftp.chmod(tmp, mode)
            sftp.posix_rename(tmp, remote_path)
        finally:
            sftp.close()

    def read_file(self, remote_path: str) -> bytes:
        sftp = self._conn().open_sftp()
        try:
            with sftp.open(check_remote_path(remote_path, "remote_path"), "rb") as handle:
                return handle.read()
        finally:
            sftp.close()

    def submit(self, script_path: str, **sbatch_kwargs: Any) -> str:
        _, out, _ = self.run(commands.sbatch_command(script_path, **sbatch_kwargs))
        return parse_sbatch_parsable(out.decode("utf-8", "replace"))

    def jobs_named(self, job_name: str) -> list[TaskState]:
        """This user's jobs squeue still lists under exactly this name, with their states."""
        _, out, _ = self.run(commands.squeue_by_name(job_name))
        return parse_squeue(out.decode("utf-8", "replace"))

    def active_jobs_named(self, job_name: str) -> list[str]:
        """Ids of this user's queued/running jobs with exactly this name."""
        _, out, _ = self.run(commands.squeue_by_name(job_name))
        ids = []
        for row in parse_squeue(out.decode("utf-8", "replace")):
            base = row.job_id.split("_", 1)[0]
            if base not in ids and not row.outcome.final:
                ids.append(base)
        return ids

    def probe(
        self,
        request: ProbeRequest,
        expected_tasks: list[str] | None = None,
        finished: Mapping[str, TaskState] | None = None,
    ) -> tuple[JobStatus, bytes]:
        _, out, _ = self.run(request.command(), check=False)
        answer = split_probe_output(out)
        return status_from_probe(request.job_id, answer, expected_tasks, finished), answer.log_chunk

    def cancel(self, job_id: str) -> None:
        self.run(commands.scancel_command(job_id))

    def max_array_size(self) -> int | None:
        """The cluster's ``MaxArraySize`` (array task ids run 0..value-1); None when it cannot be read."""
        status, out, _ = self.run(commands.show_config_command(), check=False)
        value = parse_config_value(out.decode("utf-8", "replace"), "MaxArraySize") if status == 0 else None
        return int(value) if value and value.isdigit() and int(value) > 0 else None

    def accounting_states(self, job_id: str, start_day: str) -> dict[str, str]:
        """sacct's state word per job/array task (``CANCELLED by 0``...); {} when accounting is off or
        does not answer (then it simply adds nothing to a decision)."""
        status, out, _ = self.run(commands.sacct_job(job_id, start_day), check=False)
        if status != 0:
            return {}
        return {row.job_id: row.state for row in parse_sacct(out.decode("utf-8", "replace"))}

    def tail(self, path: str, lines: int = 40) -> str:
        _, out, _ = self.run(commands.tail_lines_command(path, lines), check=False)
        return out.decode("utf-8", "replace")


class AsyncSlurmSSHHook:
    """Non-blocking Slurm client for triggers: ONE reused asyncssh connection, reconnected on failure
    with jittered exponential backoff. ``connections_opened`` counts handshakes (the benchmark reads it).

    The provider's hook pins the ``host_key`` extra as a ``host KEY`` known_hosts line; on a login node
    with a non-default SSH port that still matches, because asyncssh looks a host up again without its port
    when no ``[host]:port`` entry exists (``SSHKnownHosts.match``). A wrong key is refused all the same
    (tests/cluster/test_slurm_operator.py, against the local cluster's sshd on a non-default port).
    """

    def __init__(self, ssh_conn_id: str, *, cmd_timeout: float = 60.0, max_backoff: float = MAX_BACKOFF_S):
        self.ssh_conn_id = ssh_conn_id
        self.cmd_timeout = cmd_timeout
        self.max_backoff = max_backoff
        self._conn = None
        self.connections_opened = 0

    async def _connection(self):
        if self._conn is None:
            hook = SSHHookAsync(ssh_conn_id=self.ssh_conn_id)
            self._conn = await hook.get_conn()
            self.connections_opened += 1
        return self._conn

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def run(self, command: str) -> tuple[int, bytes, bytes]:
        """Run one command; on a connection error drop the connection so the next call reconnects."""
        conn = await self._connection()
        try:
            result = await asyncio.wait_for(conn.run(command, check=False, encoding=None), self.cmd_timeout)
        except BaseException:
            await self.close()
            raise
        return result.exit_status or 0, result.stdout or b"", result.stderr or b""

    async def run_with_retry(self, command: str, attempts: int = 5, log=None) -> tuple[int, bytes, bytes]:
        """Retry connection-level failures with jittered backoff (1 s, doubling); give up after
        ``attempts``. For one-shot commands (the cancel of ``on_kill``); the triggers' polls retry in
        their loop instead (:mod:`neoxflow.triggers.base`), with the same backoff."""
        for attempt in range(1, attempts + 1):
            try:
                return await self.run(command)
            except (TimeoutError, OSError, Exception) as err:  # asyncssh errors derive from Exception
                if attempt == attempts or is_host_key_error(err):
                    raise
                wait = jittered_backoff(1.0, attempt - 1, self.max_backoff)
                if log:
                    log.warning(
                        "SSH command failed (%s: %s); reconnecting in %.1fs", type(err).__name__, err, wait
                    )
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    async def probe(
        self,
        request: ProbeRequest,
        expected_tasks: list[str] | None = None,
        finished: Mapping[str, TaskState] | None = None,
    ) -> tuple[JobStatus, bytes]:
        _, out, _ = await self.run(request.command())
        answer = split_probe_output(out)
        return status_from_probe(request.job_id, answer, expected_tasks, finished), answer.log_chunk

    async def cancel(self, job_id: str) -> None:
        status, _, err = await self.run_with_retry(commands.scancel_command(job_id), attempts=3)
        if status != 0:
            raise SlurmCommandError("scancel", status, err.decode("utf-8", "replace"))

    async def tail(self, path: str, lines: int = 40) -> str:
        _, out, _ = await self.run(commands.tail_lines_command(path, lines))
        return out.decode("utf-8", "replace")


class HostKeyRefused(RuntimeError):
    """The cluster's SSH host key is not the pinned one, or none is pinned: never retried."""


def is_host_key_error(err: BaseException) -> bool:
    """A refused host key, by the SSH libraries' own classes: asyncssh's ``HostKeyNotVerifiable`` (wrong
    or missing key), paramiko's ``BadHostKeyException`` (wrong key) and ours."""
    import asyncssh
    import paramiko

    return isinstance(err, HostKeyRefused | asyncssh.HostKeyNotVerifiable | paramiko.BadHostKeyException)


def _paramiko_missing_host_key(err: BaseException) -> bool:
    """paramiko's ``RejectPolicy`` refuses an unknown host with a plain ``SSHException`` (it has no class
    of its own): its fixed wording is the only mark, checked narrowly here and nowhere else."""
    import paramiko

    return isinstance(err, paramiko.SSHException) and str(err).endswith("not found in known_hosts")
