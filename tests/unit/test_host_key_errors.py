"""Which SSH failures are host key refusals: told by the SSH libraries' own exception classes, so that a
banner, authentication or network error never gets the host-key help (nor escapes the trigger's retries).
The refusals themselves are proven against the local cluster's sshd in tests/cluster/test_slurm_operator.py.
"""

from __future__ import annotations

import asyncssh
import paramiko
import pytest

from neoxflow.hooks.slurm import HOST_KEY_HELP, HostKeyRefused, SlurmSSHHook, is_host_key_error


class _FailingSSHHook:
    def __init__(self, error: Exception):
        self.error = error

    def get_conn(self):
        raise self.error

    def exec_ssh_client_command(self, *args, **kwargs):  # never reached: the connection fails first
        raise AssertionError("ran a command without a connection")


def _connect_with(error: Exception) -> Exception:
    hook = SlurmSSHHook("unused")
    hook.__dict__["ssh_hook"] = _FailingSSHHook(error)  # the provider hook, failing as paramiko does
    with pytest.raises(Exception) as raised:
        hook.run("true")
    return raised.value


def test_a_wrong_host_key_is_refused_with_the_help():
    got, expected = paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)
    wrong = paramiko.BadHostKeyException("[h]:22", got, expected)
    refused = _connect_with(wrong)
    assert isinstance(refused, HostKeyRefused) and HOST_KEY_HELP in str(refused)
    assert refused.__cause__ is wrong


def test_an_unknown_host_is_refused_with_the_help():
    unknown = paramiko.SSHException("Server '[127.0.0.1]:12222' not found in known_hosts")
    refused = _connect_with(unknown)
    assert isinstance(refused, HostKeyRefused) and HOST_KEY_HELP in str(refused)


@pytest.mark.parametrize(
    "error",
    [
        paramiko.SSHException("Error reading SSH protocol banner"),
        paramiko.AuthenticationException("Authentication failed."),
        paramiko.SSHException("host key check skipped for a banner"),  # words alone do not make it one
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=["banner", "auth", "words", "refused"],
)
def test_other_connection_errors_pass_through_without_the_help(error):
    raised = _connect_with(error)
    assert raised is error and not is_host_key_error(raised)


def test_the_trigger_side_classes():
    assert is_host_key_error(asyncssh.HostKeyNotVerifiable("Host key is not trusted for host h"))
    assert is_host_key_error(HostKeyRefused("x"))
    assert not is_host_key_error(asyncssh.ConnectionLost("Connection lost"))
    assert not is_host_key_error(asyncssh.PermissionDenied("Permission denied for user root"))
    assert not is_host_key_error(OSError("host key words in an OSError"))
