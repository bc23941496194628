"""Every value the operator sends to a shell is quoted: proven by running the script it uploads in bash.

``check_env`` refuses control characters only, so a value may hold ``$(...)``, backquotes, ``;``, quotes
and globs: quoting is the defence, and these tests fail when it is removed.
"""

from __future__ import annotations

import subprocess

import pytest

from neoxflow.operators.slurm import SlurmOperator

HOSTILE = [
    "plain",
    "two words",
    "semi; touch {marker}",
    "$(touch {marker})",
    "`touch {marker}`",
    "quote ' inside",
    'double " quote and \\ backslash',
    "glob * ? [a]",
    "dollar $HOME and ${{PATH}}",
    "&& touch {marker} || true",
    "é unicode ✓",
]


def _operator(env: dict[str, str], script: str) -> SlurmOperator:
    return SlurmOperator(task_id="t", script=script, remote_dir="/fsx/jobs", env=env)


@pytest.mark.parametrize("template", HOSTILE)
def test_an_exported_value_reaches_the_job_byte_for_byte_and_runs_nothing(template, tmp_path):
    marker = tmp_path / "pwned"
    value = template.format(marker=marker)
    out = tmp_path / "value.txt"
    script = f'#!/bin/bash\n#SBATCH --nodes=1\nprintf %s "$NEOXFLOW_VALUE" > {out}\n'
    body = _operator({"NEOXFLOW_VALUE": value}, script)._script_bytes()
    result = subprocess.run(["bash", "-c", body.decode()], cwd=tmp_path, capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == value
    assert not marker.exists(), f"{value!r} ran a command"


def test_exports_come_after_the_sbatch_directives():
    body = _operator({"A": "1"}, "#!/bin/bash\n#SBATCH --nodes=2\n\n#SBATCH --time=1:00\necho hi\n")
    lines = body._script_bytes().decode().splitlines()
    assert lines.index("export A=1") > max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    assert lines.index("export A=1") < lines.index("echo hi")
