"""Command builders: validated, quoted, and refusing injection before anything is sent."""

import shlex

import pytest

from neoxflow.slurm import commands
from neoxflow.slurm.naming import job_comment, job_name
from neoxflow.slurm.validate import UnsafeValueError, check_env, check_remote_path


def test_sbatch_command_defaults_to_no_requeue_and_quotes():
    cmd = commands.sbatch_command(
        "/fsx/neoxflow/jobs/x/job-abc.sbatch",
        job_name="nxf-train-1a2b",
        output="/fsx/j/slurm-%j.out",
        options={"nodes": 2, "time": "01:00:00", "exclusive": True},
    )
    argv = shlex.split(cmd)
    assert argv[:3] == ["sbatch", "--parsable", "--job-name=nxf-train-1a2b"]
    assert "--no-requeue" in argv and "--nodes=2" in argv and "--exclusive" in argv
    assert argv[-1] == "/fsx/neoxflow/jobs/x/job-abc.sbatch"


@pytest.mark.parametrize(
    "name",
    ["x;rm -rf /", "a b", "--wrap=id", "x\ny", "$(id)", "`id`", "", "-n", "a'b"],
)
def test_job_name_injection_refused(name):
    with pytest.raises(UnsafeValueError) as err:
        commands.sbatch_command("/a/b.sbatch", job_name=name)
    assert "job_name" in str(err.value)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("wrap", "id"),
        ("partition", "gpu --wrap=id"),
        ("partition", "gpu;id"),
        ("time", "1:00:00\n#SBATCH --wrap"),
        ("exclude", "node1 --uid=0"),
        ("nodes", "2$(id)"),
        ("exclusive", "yes"),
        ("export", "ALL"),
    ],
)
def test_sbatch_option_injection_refused(option, value):
    with pytest.raises(UnsafeValueError):
        commands.sbatch_command("/a/b.sbatch", job_name="ok", options={option: value})


@pytest.mark.parametrize("path", ["/a/../etc/passwd", "-rf", "/a/b c", "/a/$HOME", "/a;b", "/a\nb", ""])
def test_paths_refused(path):
    with pytest.raises(UnsafeValueError):
        check_remote_path(path)


def test_env_values_may_hold_spaces_but_not_newlines():
    assert check_env({"A": "x y", "B": 3}) == {"A": "x y", "B": "3"}
    with pytest.raises(UnsafeValueError, match="control characters"):
        check_env({"A": "x\nexport B=1"})
    with pytest.raises(UnsafeValueError, match="identifier"):
        check_env({"A;B": "x"})


def test_log_chunk_reads_from_offset():
    cmd = commands.log_chunk_command("/fsx/l/slurm-1.out", 0, 10)
    assert "tail -c +1 /fsx/l/slurm-1.out | head -c 10" in cmd
    with pytest.raises(ValueError):
        commands.log_chunk_command("/fsx/l/x", -1, 10)


def test_scancel_and_sacct():
    assert commands.scancel_command("12") == "scancel 12"
    assert commands.scancel_command("12_3") == "scancel 12_3"
    with pytest.raises(UnsafeValueError):
        commands.scancel_command("12; reboot")
    with pytest.raises(UnsafeValueError):
        commands.sacct_job("12", "yesterday")


def test_job_name_is_deterministic_and_distinct():
    a = job_name("pythia", "manual__2026-11-27T10:00:00+00:00", "train.submit")
    assert a == job_name("pythia", "manual__2026-11-27T10:00:00+00:00", "train.submit")
    assert a != job_name("pythia", "manual__2026-11-27T10:00:01+00:00", "train.submit")
    assert a != job_name("pythia", "manual__2026-11-27T10:00:00+00:00", "train.submit", map_index=1)
    assert a.startswith("nxf-submit-")
    commands.sbatch_command("/a/b.sbatch", job_name=a, comment=job_comment("d", "r:+x", "t"))
