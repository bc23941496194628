"""Start GPT-NeoX's ``train.py`` for ONE rank exactly as ``deepy.py`` would, inside the training container.

Why this exists: ``deepy.py`` either starts DeepSpeed's ssh/pdsh runner (needs a hostfile and ssh between
nodes) or, with ``launcher: slurm``, its own inner ``srun`` that cannot carry pyxis ``--container-*`` flags
(and container images usually lack the srun binary). neoxflow's batch script
(include/templates/train.sbatch) therefore starts one Slurm task per GPU inside the container itself, and
each task runs this file, which does deepy's remaining work for its own rank:

1. RANK / LOCAL_RANK / WORLD_SIZE come from the environment (the batch script maps SLURM_PROCID /
   SLURM_LOCALID / SLURM_NTASKS; this file maps them too when run under a plain ``srun``); MASTER_ADDR and
   MASTER_PORT must be set.
2. ``NeoXArgs.from_ymls([config], overwrite_values={"user_script": "train.py", "global_num_gpus": WORLD})``
   (deepy's ``consume_deepy_args`` does the same, but takes the GPU count from a hostfile or the local
   node; across nodes it must be the world size, or the batch rule is computed for one node).
3. ``get_deepspeed_main_args()`` builds the runner argv; what follows the user script is exactly what the
   DeepSpeed launcher hands to every rank: ``--deepspeed_config <b64> --megatron_config <b64>``.
4. ``exec python -u train.py --local_rank=N ...`` in the NeoX checkout: the same process (pid), so Slurm's
   signals reach the trainer directly.

Before any of that, the image is checked for what the rendered config uses (issue 21): flash-attn when
``attention_config`` names flash, NeoX's compiled softmax/rope kernels when a ``*_fusion`` option needs them.
The plan rendered these from the profile's ``cluster.image_provides``; an image that lacks one fails here at
once with the reason (exit 3), instead of NeoX failing minutes later or compiling kernels on every rank.

Runs on the cluster: standard library only, NeoX imported from ``--neox-dir``. No neoxflow/airflow imports.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Mapping

#: (variable set for NeoX, Slurm variable it comes from)
RANK_VARIABLES = (("RANK", "SLURM_PROCID"), ("LOCAL_RANK", "SLURM_LOCALID"), ("WORLD_SIZE", "SLURM_NTASKS"))


#: NeoX options that load its compiled kernels (megatron/initialize.py), and the modules NeoX then imports
#: (megatron/fused_kernels/__init__.py: load_fused_kernels imports all three)
FUSED_KERNEL_KEYS = (
    "scaled_upper_triang_masked_softmax_fusion",
    "scaled_masked_softmax_fusion",
    "rope_fusion",
)
FUSED_KERNEL_MODULES = (
    "scaled_upper_triang_masked_softmax_cuda",
    "scaled_masked_softmax_cuda",
    "fused_rotary_positional_embedding",
)


def image_requirements(config: Mapping) -> list[str]:
    """What the rendered config needs from the image: 'flash_attn' and/or 'fused_kernels'."""
    needs = []
    attention = config.get("attention_config") or []
    try:
        kinds = [str(kind) for entry in attention for kind in entry[0]]
    except (TypeError, IndexError, KeyError):
        kinds = []
    if any("flash" in kind for kind in kinds):
        needs.append("flash_attn")
    if any(config.get(key) for key in FUSED_KERNEL_KEYS):
        needs.append("fused_kernels")
    return needs


def missing_from_image(
    config: Mapping, neox_dir: str, find_spec: Callable[[str], object] = importlib.util.find_spec
) -> list[str]:
    """One message per requirement the image does not meet (empty: all there). Fused kernels count when
    importable or built ahead of time in NeoX's build folder (``fused_kernels_build_path`` or
    ``megatron/fused_kernels/build``, where docker/neox.Dockerfile builds them)."""
    problems = []
    for need in image_requirements(config):
        if need == "flash_attn" and find_spec("flash_attn") is None:
            problems.append(
                "attention_config asks for flash attention but the image has no flash_attn module "
                "(list only what the image has in the profile's cluster.image_provides: the plan then "
                "renders global attention)"
            )
        if need == "fused_kernels":
            build = config.get("fused_kernels_build_path") or os.path.join(
                neox_dir, "megatron", "fused_kernels", "build"
            )
            absent = [
                name
                for name in FUSED_KERNEL_MODULES
                if find_spec(name) is None and not glob.glob(os.path.join(build, name + "*.so"))
            ]
            if absent:
                keys = ", ".join(key for key in FUSED_KERNEL_KEYS if config.get(key))
                problems.append(
                    f"{keys} need NeoX's fused kernels but the image has not built {', '.join(absent)} "
                    f"(neither importable nor in {build}; remove fused_kernels from cluster.image_provides, "
                    "or build them as docker/neox.Dockerfile does)"
                )
    return problems


class LaunchEnvError(RuntimeError):
    """The rank's environment does not describe a distributed job (names the missing variables)."""


def rank_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT for this process, checked for consistency.

    Values already in ``environ`` win; missing rank variables are taken from their Slurm counterparts.
    """
    env: dict[str, str] = {}
    missing = []
    for name, slurm_name in RANK_VARIABLES:
        value = environ.get(name) or environ.get(slurm_name)
        if value is None:
            missing.append(f"{name} (or {slurm_name})")
        else:
            env[name] = value
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if environ.get(name):
            env[name] = environ[name]
        else:
            missing.append(name)
    if missing:
        raise LaunchEnvError(f"not set: {', '.join(missing)}")
    try:
        rank, local_rank, world = (int(env[n]) for n in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        port = int(env["MASTER_PORT"])
    except ValueError as exc:
        raise LaunchEnvError(f"rank variables must be integers: {exc}") from None
    if not (world >= 1 and 0 <= rank < world and 0 <= local_rank <= rank and 0 < port < 65536):
        raise LaunchEnvError(
            f"inconsistent: RANK={rank} LOCAL_RANK={local_rank} WORLD_SIZE={world} MASTER_PORT={port}"
        )
    return env


def train_arguments(neox_args_cls, config_path: str, world_size: int):
    """(argv after train.py, the NeoXArgs object) for ``config_path``, as deepy would build them."""
    neox_args = neox_args_cls.from_ymls(
        paths_to_yml_files=[config_path],
        overwrite_values={"user_script": "train.py", "global_num_gpus": world_size},
    )
    runner_argv = neox_args.get_deepspeed_main_args()
    position = runner_argv.index(neox_args.user_script)
    return runner_argv[position + 1 :], neox_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neox-dir", required=True, help="GPT-NeoX checkout (holds train.py and megatron/)")
    parser.add_argument("--config", required=True, help="the rendered, merged NeoX config (strict JSON)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the train.py command instead of running it"
    )
    args = parser.parse_args(argv)

    try:
        env = rank_environment(os.environ)
    except LaunchEnvError as exc:
        print(f"neox_launch: {exc}", file=sys.stderr)
        return 2
    os.environ.update(env)
    neox_dir = os.path.abspath(args.neox_dir)
    config = os.path.abspath(args.config)
    if not os.path.isfile(os.path.join(neox_dir, "train.py")):
        print(
            f"neox_launch: {neox_dir}/train.py not found (--neox-dir must be a GPT-NeoX checkout)",
            file=sys.stderr,
        )
        return 2
    if not os.path.isfile(config):
        print(f"neox_launch: config {config} not found", file=sys.stderr)
        return 2
    try:
        with open(config, encoding="utf-8") as handle:
            rendered = json.load(handle)  # neoxflow renders strict JSON (which PyYAML reads the same)
    except (OSError, ValueError) as exc:
        print(f"neox_launch: cannot read config {config}: {exc}", file=sys.stderr)
        return 2
    problems = missing_from_image(rendered, neox_dir)
    if problems:
        for problem in problems:
            print(f"neox_launch: the image lacks what the config uses: {problem}", file=sys.stderr)
        return 3
    os.chdir(neox_dir)
    sys.path.insert(0, neox_dir)
    from megatron.neox_arguments import NeoXArgs  # importable only from the NeoX checkout

    rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
    train_argv, neox_args = train_arguments(NeoXArgs, config, world)
    if rank == 0:
        neox_args.print()
    command = [sys.executable, "-u", "train.py", f"--local_rank={env['LOCAL_RANK']}", *train_argv]
    print(
        f"neox_launch: rank {rank}/{world} local {env['LOCAL_RANK']} "
        f"master {env['MASTER_ADDR']}:{env['MASTER_PORT']} -> train.py ({neox_dir})",
        flush=True,
    )
    if args.dry_run:
        print(" ".join(command))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
