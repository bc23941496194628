"""Batch script rendering (plugins/neoxflow/neox/launch.py, include/templates/*.sbatch) and the per-rank
NeoX launcher (include/cluster/neox_launch.py).

The rendered scripts are not only inspected: they are run by bash with stand-ins for ``srun`` (starts
every task locally with SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS set, like Slurm) and ``scontrol``, so
the tests see the environment every rank really gets, for 1, 2 and 16 nodes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import neox_launch
import pytest

from neoxflow.neox.config_files import PYTHIA_SIZES, render_config
from neoxflow.neox.launch import (
    LOCAL_TEMPLATE,
    PRODUCTION_TEMPLATE,
    LaunchError,
    LaunchSpec,
    launch_spec_for_run,
    parse_time_limit,
    render_batch_script,
    validate_launch_spec,
)
from neoxflow.neox.profile_loader import load_profile
from neoxflow.neox.run_config import build_run_config
from neoxflow.paths import REPO_ROOT

NEOX_LAUNCH = REPO_ROOT / "include" / "cluster" / "neox_launch.py"
MASTER_NODE_ADDR = "10.9.8.7"

FAKE_SRUN = r'''#!PYTHON
"""Stand-in for srun inside an allocation: run the command once per task with Slurm's task variables."""
import json, os, signal, subprocess, sys
args = sys.argv[1:]
opts = {}
while args and args[0].startswith("-"):
    key, _, value = args.pop(0).partition("=")
    opts[key] = value or True
with open(os.environ["FAKE_SRUN_RECORD"], "a") as f:
    f.write(json.dumps({"opts": opts, "command": args, "pid": os.getpid()}) + "\n")
ntasks, per_node = int(opts["--ntasks"]), int(opts["--ntasks-per-node"])
assert ntasks == int(opts["--nodes"]) * per_node
procs = []
for rank in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node),
               SLURM_NTASKS=str(ntasks), SLURM_NODEID=str(rank // per_node))
    procs.append(subprocess.Popen(args, env=env))
def forward(signum, frame):
    for p in procs:
        if p.poll() is None:
            p.send_signal(signum)
signal.signal(signal.SIGTERM, forward)
sys.exit(max(p.wait() for p in procs))
'''

FAKE_SCONTROL = r"""#!/bin/bash
# scontrol show hostnames LIST | scontrol show node -o NAME
if [[ $1 == show && $2 == hostnames ]]; then printf '%s\n' $FAKE_HOSTS; exit 0; fi
if [[ $1 == show && $2 == node ]]; then
  echo "NodeName=$4 Arch=x86_64 NodeAddr=FAKE_ADDR NodeHostName=$4"; exit 0
fi
exit 1
"""

FAKE_SCANCEL = r"""#!/bin/bash
# scancel --signal=SIG JOBID: signal the job's tasks (here: through the fake srun, which forwards)
echo "$*" >>"$FAKE_RECORD_DIR/scancel.log"
[[ $1 == --signal=* ]] || exit 1
pid=$(sed -n 's/.*"pid": \([0-9]*\).*/\1/p' "$FAKE_SRUN_RECORD" | tail -n 1)
kill -"${1#--signal=}" "$pid"
"""

FAKE_NEOX_ARGS = r'''
"""Minimal stand-in for GPT-NeoX's NeoXArgs: records what the launcher asked for."""
import json, os


class NeoXArgs:
    @classmethod
    def from_ymls(cls, paths_to_yml_files, overwrite_values=None):
        self = cls()
        self.paths, self.overwrite = paths_to_yml_files, overwrite_values
        self.user_script = overwrite_values["user_script"]
        return self

    def get_deepspeed_main_args(self):
        mega = json.dumps({"config": self.paths, "global_num_gpus": self.overwrite["global_num_gpus"]})
        return ["--master_addr", os.environ["MASTER_ADDR"], self.user_script,
                "--deepspeed_config", "DS-B64", "--megatron_config", mega]

    def print(self):
        print("-------------------- arguments --------------------", flush=True)
'''

FAKE_TRAIN = r'''
"""Stand-in for GPT-NeoX's train.py: writes what this rank received."""
import json, os, sys
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "FI_PROVIDER",
        "FI_EFA_USE_HUGE_PAGE", "NCCL_ASYNC_ERROR_HANDLING", "NCCL_DEBUG")
out = {"argv": sys.argv, "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in keys}}
with open(os.path.join(os.environ["FAKE_RECORD_DIR"], "rank-%s.json" % os.environ["RANK"]), "w") as f:
    json.dump(out, f)
'''


@pytest.fixture
def fake_cluster(tmp_path: Path):
    """PATH with fake srun/scontrol, a fake NeoX checkout, and a folder the ranks report into."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN.replace("PYTHON", sys.executable))
    (bin_dir / "scontrol").write_text(FAKE_SCONTROL.replace("FAKE_ADDR", MASTER_NODE_ADDR))
    (bin_dir / "scancel").write_text(FAKE_SCANCEL)
    for tool in ("srun", "scontrol", "scancel"):
        (bin_dir / tool).chmod(0o755)
    neox = tmp_path / "gpt-neox"
    (neox / "megatron" / "neox_arguments").mkdir(parents=True)
    (neox / "megatron" / "__init__.py").write_text("")
    (neox / "megatron" / "neox_arguments" / "__init__.py").write_text(FAKE_NEOX_ARGS)
    (neox / "train.py").write_text(FAKE_TRAIN)
    records = tmp_path / "records"
    records.mkdir()
    (tmp_path / "logs").mkdir()
    config = tmp_path / "neox-abc.json"
    config.write_text("{}\n")
    return {"bin": bin_dir, "neox": neox, "records": records, "root": tmp_path, "config": config}


def production_spec(root: Path, nodes: int, gpus: int = 8, **changes) -> LaunchSpec:
    spec = LaunchSpec(
        job_name="neoxflow-train-r1",
        nodes=nodes,
        tasks_per_node=gpus,
        time_limit="04:00:00",
        stop_before_limit_s=600,
        log_dir=f"{root}/logs",
        config_path=f"{root}/neox-abc.json",
        launcher=str(NEOX_LAUNCH),
        python=sys.executable,
        partition="gpu",
        container_image="/fsx/apps/gpt-neox.sqsh",
        container_mounts=("/fsx:/fsx", f"{root}:{root}"),
        neox_dir=f"{root}/gpt-neox",
        env={"NCCL_DEBUG": "WARN"},
    )
    return replace(spec, **changes)


def run_script(
    script: str, fake: dict, nodes: int, job_id: int = 4242, timeout: float = 120
) -> subprocess.CompletedProcess:
    path = fake["root"] / "job.sbatch"
    path.write_text(script)
    env = dict(
        os.environ,
        PATH=f"{fake['bin']}:{os.environ['PATH']}",
        SLURM_JOB_ID=str(job_id),
        SLURM_JOB_NODELIST=f"gpu[1-{nodes}]" if nodes > 1 else "gpu1",
        FAKE_HOSTS=" ".join(f"gpu{i}" for i in range(1, nodes + 1)),
        FAKE_SRUN_RECORD=str(fake["root"] / "srun.jsonl"),
        FAKE_RECORD_DIR=str(fake["records"]),
    )
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=timeout)


def sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH ")]


# --- rendering --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [1, 2, 16])
def test_production_script_requests_one_job_of_n_nodes_by_8_gpus(nodes: int, tmp_path: Path) -> None:
    script = render_batch_script(production_spec(tmp_path, nodes), PRODUCTION_TEMPLATE)
    assert sbatch_lines(script) == [
        "#SBATCH --job-name=neoxflow-train-r1",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=8",
        "#SBATCH --gpus-per-node=8",
        "#SBATCH --exclusive",
        "#SBATCH --wait-all-nodes=1",
        "#SBATCH --time=04:00:00",
        "#SBATCH --signal=B:USR1@600",
        "#SBATCH --no-requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={tmp_path}/logs/neoxflow-train-r1-%j.out",
        "#SBATCH --partition=gpu",
    ]
    srun = [line for line in script.splitlines() if line.startswith("srun ")]
    assert srun == [
        f"srun -l --kill-on-bad-exit=1 --nodes={nodes} --ntasks={nodes * 8} --ntasks-per-node=8 \\"
    ]
    assert "--container-image=/fsx/apps/gpt-neox.sqsh" in script
    assert f"--container-mounts=/fsx:/fsx,{tmp_path}:{tmp_path}" in script
    assert "export FI_PROVIDER=efa\n" in script and "export FI_EFA_USE_HUGE_PAGE=0\n" in script
    assert "export NCCL_ASYNC_ERROR_HANDLING=1\n" in script and "export NCCL_DEBUG=WARN\n" in script
    assert "deepy.py" not in script.split("set -uo pipefail")[1], "no per-node deepy launch"
    assert "{{" not in script
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)  # valid bash


def test_local_script_has_no_gpus_or_container(tmp_path: Path) -> None:
    spec = production_spec(
        tmp_path, 2, gpus=1, container_image=None, container_mounts=(), neox_dir=None, partition="debug",
        launcher=f"{tmp_path}/code/standin_train.py", time_limit="00:30:00", stop_before_limit_s=60,
    )  # fmt: skip
    script = render_batch_script(spec, LOCAL_TEMPLATE)
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "--gpus-per-node" not in script and "--container" not in script and "FI_PROVIDER" not in script
    assert (
        f"{sys.executable} -u {tmp_path}/code/standin_train.py --config {tmp_path}/neox-abc.json &" in script
    )
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_spec_from_profile_and_run_config(tmp_path: Path) -> None:
    aws = load_profile("aws", env={})
    run = build_run_config(
        "1.4B", aws, "r1", nodes=16, gpus_per_node=8, check_vocab_file=False, dataset_id="t"
    )
    spec, template = launch_spec_for_run(
        aws, run, job_name="neoxflow-train-r1", code_dir="/fsx/neoxflow/code/abc"
    )
    assert template == PRODUCTION_TEMPLATE
    assert (spec.nodes, spec.tasks_per_node, spec.total_tasks) == (16, 8, 128)
    assert spec.launcher == "/fsx/neoxflow/code/abc/neox_launch.py" and spec.config_path == run.config_path
    assert spec.job_log_path(77) == "/fsx/neoxflow/runs/r1/logs/neoxflow-train-r1-77.out"
    script = render_batch_script(spec, template)
    assert "#SBATCH --nodes=16" in script and "--ntasks=128" in script
    assert f"--config {run.config_path} &" in script and "--neox-dir /workspace/gpt-neox" in script

    local = load_profile("local", env={"NEOXFLOW_FSX": str(tmp_path / "fsx")})
    run = build_run_config("14M", local, "demo", check_vocab_file=False, dataset_id="t")
    spec, template = launch_spec_for_run(local, run, job_name="neoxflow-train-demo", time_limit="00:10:00")
    assert template == LOCAL_TEMPLATE and spec.launcher == f"{tmp_path}/fsx/code/standin_train.py"
    script = render_batch_script(spec, template)
    assert "#SBATCH --time=00:10:00" in script and "export GLOO_SOCKET_IFNAME=lo" in script


# --- the rendered script, run ----------------------------------------------------------------------------


@pytest.mark.parametrize("nodes", [1, 2, pytest.param(16, marks=pytest.mark.slow)])
def test_every_gpu_gets_one_consistent_rank(nodes: int, fake_cluster: dict) -> None:
    root = fake_cluster["root"]
    result = run_script(
        render_batch_script(production_spec(root, nodes), PRODUCTION_TEMPLATE), fake_cluster, nodes
    )
    assert result.returncode == 0, result.stderr
    world = nodes * 8
    ranks = [json.loads(p.read_text()) for p in sorted(fake_cluster["records"].glob("rank-*.json"))]
    assert sorted(int(r["env"]["RANK"]) for r in ranks) == list(range(world))
    for r in ranks:
        env, rank = r["env"], int(r["env"]["RANK"])
        assert env["WORLD_SIZE"] == str(world) and env["LOCAL_RANK"] == str(rank % 8)
        assert env["MASTER_ADDR"] == MASTER_NODE_ADDR and env["MASTER_PORT"] == str(20000 + 4242 % 20000)
        assert (
            env["FI_PROVIDER"] == "efa"
            and env["NCCL_ASYNC_ERROR_HANDLING"] == "1"
            and env["NCCL_DEBUG"] == "WARN"
        )
        # what deepy would hand each rank: train.py in the NeoX checkout with both encoded configs
        assert r["cwd"] == str(fake_cluster["neox"])
        argv = r["argv"]
        assert argv[:2] == ["train.py", f"--local_rank={rank % 8}"]
        assert argv[2:5] == ["--deepspeed_config", "DS-B64", "--megatron_config"]
        mega = json.loads(argv[5])
        assert mega == {"config": [str(fake_cluster["config"])], "global_num_gpus": world}
    srun_calls = [json.loads(line) for line in (root / "srun.jsonl").read_text().splitlines()]
    assert len(srun_calls) == 1, "one job step spanning all nodes"
    assert srun_calls[0]["opts"]["--container-image"] == "/fsx/apps/gpt-neox.sqsh"
    assert srun_calls[0]["opts"]["--container-workdir"] == str(fake_cluster["neox"])
    assert "-l" in srun_calls[0]["opts"]
    assert "-------------------- arguments" in result.stdout  # rank 0 prints NeoX's argument table
    assert "training step ended with exit code 0" in result.stdout


def test_fixed_master_port_and_failing_rank_exit_code(fake_cluster: dict) -> None:
    root = fake_cluster["root"]
    (fake_cluster["neox"] / "train.py").write_text(
        FAKE_TRAIN + "\nsys.exit(3 if os.environ['RANK'] == '1' else 0)\n"
    )
    spec = production_spec(root, 1, gpus=2, master_port=29500)
    result = run_script(render_batch_script(spec, PRODUCTION_TEMPLATE), fake_cluster, 1)
    assert result.returncode == 3 and "training step ended with exit code 3" in result.stdout
    env = json.loads((fake_cluster["records"] / "rank-0.json").read_text())["env"]
    assert env["MASTER_PORT"] == "29500"


STANDIN_SLOW_CHECKPOINT = r'''
"""Fake trainer: rank 0 starts a checkpoint, takes a while to commit it, then idles until SIGTERM."""
import os, signal, sys, time
record = os.environ["FAKE_RECORD_DIR"]
def on_term(signum, frame):
    with open(os.path.join(record, "term-%s" % os.environ["RANK"]), "w") as f:
        f.write(repr(time.time()))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
if os.environ["RANK"] == "0":
    print("[Rank 0] [Torch] Checkpoint global_step10 is about to be saved!", flush=True)
    time.sleep(3)
    with open(os.path.join(record, "ready"), "w") as f:
        f.write(repr(time.time()))
    print("[Torch] Checkpoint global_step10 is ready now!", flush=True)
while True:
    time.sleep(0.1)
'''


def test_usr1_before_time_limit_waits_for_the_checkpoint_then_stops_cleanly(fake_cluster: dict) -> None:
    root = fake_cluster["root"]
    trainer = root / "standin_train.py"
    trainer.write_text(STANDIN_SLOW_CHECKPOINT)
    spec = production_spec(
        root, 2, gpus=1, container_image=None, container_mounts=(), neox_dir=None,
        launcher=str(trainer), time_limit="00:10:00", stop_before_limit_s=30,
    )  # fmt: skip
    script_path = root / "job.sbatch"
    script_path.write_text(render_batch_script(spec, LOCAL_TEMPLATE))
    log_path = Path(spec.job_log_path(99))
    env = dict(
        os.environ, PATH=f"{fake_cluster['bin']}:{os.environ['PATH']}", SLURM_JOB_ID="99",
        SLURM_JOB_NODELIST="node[1-2]", FAKE_HOSTS="node1 node2", FAKE_SRUN_RECORD=str(root / "srun.jsonl"),
        FAKE_RECORD_DIR=str(fake_cluster["records"]),
    )  # fmt: skip
    with open(log_path, "w") as log:  # sbatch would point stdout there (--output)
        proc = subprocess.Popen(["bash", str(script_path)], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 30
        while "about to be saved" not in log_path.read_text():
            assert time.time() < deadline and proc.poll() is None, log_path.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@30 does
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_path.read_text()
    ready = float((fake_cluster["records"] / "ready").read_text())
    terms = [float((fake_cluster["records"] / f"term-{r}").read_text()) for r in (0, 1)]
    assert min(terms) >= ready, "ranks were stopped before the checkpoint was committed"
    assert "stopping the training step" in text and "NEOXFLOW slice_end reason=time_limit step_exit=0" in text
    # the ranks are signalled through Slurm (srun would kill the step on its own SIGTERM)
    assert (fake_cluster["records"] / "scancel.log").read_text() == "--signal=TERM 99\n"


# --- validation and injection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("job_name", "train; rm -rf /"),
        ("job_name", "x\n#SBATCH --wrap=id"),
        ("job_name", "--wrap=id"),
        ("partition", "gpu --wrap=id"),
        ("partition", "gpu\n"),
        ("account", "a$(id)"),
        ("comment", "x y"),
        ("time_limit", "04:00:00\n#SBATCH --uid=0"),
        ("time_limit", "forever"),
        ("time_limit", "0"),
        ("log_dir", "/fsx/logs dir"),
        ("log_dir", "/fsx/$(reboot)"),
        ("log_dir", "relative/logs"),
        ("log_dir", "/fsx/../etc"),
        ("log_dir", "/fsx/%j"),
        ("config_path", "/fsx/cfg.json;id"),
        ("config_path", "/fsx/cfg.yml"),
        ("launcher", "/fsx/x.py`id`"),
        ("python", "-c"),
        ("python", "python; id"),
        ("container_image", "nvcr.io#nvidia/pytorch:23.12 --container-mounts=/:/host"),
        ("container_image", "img'quote"),
        ("container_mounts", ("/fsx:/fsx,/etc:/host",)),
        ("container_mounts", ("/fsx",)),
        ("container_mounts", ("/fsx:/fsx:ro;id",)),
        ("neox_dir", "/work space"),
        ("exclude_nodes", ("node1 --wrap=id",)),
        ("exclude_nodes", ("node[1-2];x",)),
        ("master_port", 80),
        ("stop_before_limit_s", 14400),
        ("stop_before_limit_s", 0),
        ("nodes", 0),
        ("tasks_per_node", True),
        ("env", {"NCCL_DEBUG": "INFO\nexport X=1"}),
        ("env", {"A": "$(id)"}),
        ("env", {"BAD-NAME": "1"}),
        ("env", {"RANK": "3"}),
        ("env", {"SLURM_PROCID": "0"}),
    ],
)
def test_unsafe_values_are_refused_naming_the_field(field: str, value, tmp_path: Path) -> None:
    spec = replace(production_spec(tmp_path, 2), **{field: value})
    with pytest.raises(LaunchError) as info:
        render_batch_script(spec, PRODUCTION_TEMPLATE)
    assert any(e.key.split("[")[0].split(".")[0] == field for e in info.value.errors), info.value.errors


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    spec = production_spec(tmp_path, 2, partition="a b", job_name="x;y", container_image=None, neox_dir=None)
    keys = {e.key for e in validate_launch_spec(spec, PRODUCTION_TEMPLATE)}
    assert keys == {"partition", "job_name", "container_image", "neox_dir"}


def test_values_with_safe_but_special_characters_are_quoted(tmp_path: Path) -> None:
    spec = production_spec(tmp_path, 1, env={"NCCL_SOCKET_IFNAME": "^docker,lo", "X": ""})
    script = render_batch_script(spec, PRODUCTION_TEMPLATE)
    assert "export NCCL_SOCKET_IFNAME='^docker,lo'\n" in script and "export X=''\n" in script


def test_local_template_refuses_a_container(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="container_image"):
        render_batch_script(production_spec(tmp_path, 2, gpus=1), LOCAL_TEMPLATE)


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("90", 5400),
        ("30:15", 1815),
        ("04:00:00", 14400),
        ("2-00", 172800),
        ("1-02:03", 93780),
        ("1-0:0:5", 86405),
    ],
)
def test_parse_time_limit(text: str, seconds: int) -> None:
    assert parse_time_limit(text) == seconds


# --- neox_launch.py ---------------------------------------------------------------------------------------


def test_rank_environment_maps_slurm_variables() -> None:
    env = neox_launch.rank_environment(
        {
            "SLURM_PROCID": "9",
            "SLURM_LOCALID": "1",
            "SLURM_NTASKS": "16",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "1234",
        }
    )
    assert env == {
        "RANK": "9",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "16",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "1234",
    }


@pytest.mark.parametrize(
    "environ,message",
    [
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"}, "MASTER_ADDR"),
        (
            {"LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            r"RANK \(or SLURM_PROCID\)",
        ),
        (
            {"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            "inconsistent",
        ),
        (
            {"RANK": "x", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            "integers",
        ),
    ],
)
def test_rank_environment_refuses_incomplete_or_inconsistent(environ: dict, message: str) -> None:
    with pytest.raises(neox_launch.LaunchEnvError, match=message):
        neox_launch.rank_environment(environ)


def test_launcher_reports_missing_checkout(tmp_path: Path) -> None:
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="h", MASTER_PORT="1234")
    result = subprocess.run(
        [sys.executable, str(NEOX_LAUNCH), "--neox-dir", str(tmp_path), "--config", str(tmp_path / "c.json")],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "train.py not found" in result.stderr


@pytest.mark.skipif(
    not os.environ.get("NEOXFLOW_NEOX_CHECKOUT"), reason="set NEOXFLOW_NEOX_CHECKOUT to a GPT-NeoX tree"
)
def test_real_neoxargs_accepts_every_rendered_size(monkeypatch, tmp_path: Path) -> None:
    """Against GPT-NeoX's own NeoXArgs (its type, value and batch checks), DeepSpeed & co. stubbed out.

    Run with ``NEOXFLOW_NEOX_CHECKOUT=/path/to/gpt-neox`` (a checkout kept outside the repository).
    """
    import importlib.abc
    import importlib.machinery
    from unittest import mock

    stubbed = ("pkg_resources", "deepspeed", "transformers", "sentencepiece", "wandb", "comet_ml", "tiktoken")

    class Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            return (
                importlib.machinery.ModuleSpec(name, self, is_package=True)
                if name.split(".")[0] in stubbed
                else None
            )

        def create_module(self, spec):
            module = mock.MagicMock(name=spec.name, __path__=[], __spec__=spec)
            module.DLTS_HOSTFILE = "/nonexistent/hostfile"
            return module

        def exec_module(self, module):
            pass

    before = set(sys.modules)
    try:
        _check_real_neoxargs(monkeypatch, tmp_path, Stubs())
    finally:  # never leave stub modules (or NeoX's megatron) behind for other tests
        for name in set(sys.modules) - before:
            del sys.modules[name]


def _check_real_neoxargs(monkeypatch, tmp_path: Path, stubs) -> None:
    monkeypatch.setattr(sys, "meta_path", [stubs, *sys.meta_path])
    monkeypatch.syspath_prepend(os.environ["NEOXFLOW_NEOX_CHECKOUT"])
    import packaging.version

    arguments = pytest.importorskip("megatron.neox_arguments.arguments")
    monkeypatch.setattr(arguments, "packaging", packaging)
    monkeypatch.setattr(arguments, "version", lambda name: {"flash-attn": "2.5.5"}.get(name, "0.16.5"))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    aws = load_profile("aws", env={})
    for nodes in (1, 2, 16):
        monkeypatch.setenv("WORLD_SIZE", str(nodes * 8))
        for size in PYTHIA_SIZES:
            run = build_run_config(
                size, aws, "r", nodes=nodes, gpus_per_node=8, check_vocab_file=False, dataset_id="t"
            )
            path = tmp_path / f"{size}-{nodes}.json"
            path.write_text(render_config({**run.config, "log_dir": None}))
            argv, _ = neox_launch.train_arguments(arguments.NeoXArgs, str(path), nodes * 8)
            args = arguments.NeoXArgs.consume_neox_args(input_args=argv)  # what train.py does on each rank
            assert args.global_num_gpus == nodes * 8 and args.train_batch_size == 1024
            assert isinstance(args.optimizer["params"]["eps"], float)
            assert path.name in args.config_files  # NeoX saves it into each checkpoint's configs/


# --- neox_launch.py: the image has what the config uses (issue 21) -----------------------------------------


def test_image_requirements_follow_the_rendered_config() -> None:
    aws = load_profile("aws", env={})
    run = build_run_config("160M", aws, "r", check_vocab_file=False, dataset_id="t")
    assert neox_launch.image_requirements(run.config) == ["flash_attn", "fused_kernels"]
    bare = replace(aws, cluster=replace(aws.cluster, image_provides=()))
    run = build_run_config("160M", bare, "r", check_vocab_file=False, dataset_id="t")
    assert neox_launch.image_requirements(run.config) == []


def test_missing_from_image_names_each_absent_piece(tmp_path: Path) -> None:
    config = {"attention_config": [[["flash"], 2]], "scaled_upper_triang_masked_softmax_fusion": True}
    problems = neox_launch.missing_from_image(config, str(tmp_path), find_spec=lambda name: None)
    assert len(problems) == 2
    assert "no flash_attn module" in problems[0]
    assert "scaled_upper_triang_masked_softmax_cuda, scaled_masked_softmax_cuda" in problems[1]
    # kernels built ahead of time in NeoX's build folder (as the Dockerfile does) and flash-attn importable
    build = tmp_path / "megatron" / "fused_kernels" / "build"
    build.mkdir(parents=True)
    for name in neox_launch.FUSED_KERNEL_MODULES:
        (build / f"{name}.so").write_bytes(b"")
    present = neox_launch.missing_from_image(config, str(tmp_path), find_spec=lambda name: object())
    assert present == []
    only_flash = neox_launch.missing_from_image(config, str(tmp_path), find_spec=lambda name: None)
    assert len(only_flash) == 1 and "flash_attn" in only_flash[0]


def test_launcher_fails_at_once_when_the_image_lacks_flash_attn(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("raise SystemExit('must not start')\n")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"attention_config": [[["flash"], 2]]}))
    env = dict(os.environ, RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="h", MASTER_PORT="1234")
    result = subprocess.run(
        [sys.executable, str(NEOX_LAUNCH), "--neox-dir", str(tmp_path), "--config", str(config)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 3
    assert "the image lacks what the config uses: attention_config asks for flash attention" in result.stderr
