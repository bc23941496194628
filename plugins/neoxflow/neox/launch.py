"""Render the Slurm batch script that trains one run as ONE distributed job.

Why this exists: the seed recipe ran ``srun python deepy.py train.py cfg`` on every task, so each node
started its own single-node DeepSpeed job, and deepy's Slurm launcher (one ``srun`` it builds itself) cannot
carry pyxis ``--container-*`` flags. Here the batch script starts one Slurm task per GPU across all nodes,
each inside the container, with RANK/LOCAL_RANK/WORLD_SIZE from SLURM_PROCID/SLURM_LOCALID/SLURM_NTASKS and
MASTER_ADDR/MASTER_PORT from the allocation; ``include/cluster/neox_launch.py`` then does for its rank what
deepy.py would have done (see that file). The local cluster uses the same shape with the CPU stand-in.

Safety: every value that reaches the script is checked against a strict pattern first (a partition, a
path, an image name, a node list, an env value can never carry a newline, a quote, ``;``, ``$`` or a
leading ``-``), and values placed in shell code are also ``shlex.quote``-d. ``#SBATCH`` lines cannot be
quoted, which is why their values must match the patterns. The templates are filled by the one renderer,
:mod:`neoxflow.slurm.template` (``@@NAME@@``; a placeholder without a value, or a value the template does
not use, is an error: template drift).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from neoxflow.neox.config_errors import ConfigError, ConfigValidationError
from neoxflow.neox.profile import Profile
from neoxflow.neox.run_config import RunConfig
from neoxflow.paths import TEMPLATES_DIR as TEMPLATE_DIR
from neoxflow.slurm.template import fill_template, shell_exports
from neoxflow.slurm.validate import PARTITION, UnsafeValueError, check_sbatch_option

PRODUCTION_TEMPLATE = "train.sbatch"
LOCAL_TEMPLATE = "train_local.sbatch"

#: Script each template runs on every rank (file name inside the shipped include/cluster folder).
LAUNCHERS = {PRODUCTION_TEMPLATE: "neox_launch.py", LOCAL_TEMPLATE: "standin_train.py"}

_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_COMMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:=/,+-]{0,199}$")
_PATH = re.compile(r"^/[A-Za-z0-9._+/-]*$")
_PROGRAM = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
_IMAGE_REF = re.compile(
    r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*(?::[0-9]{1,5})?#)?[a-z0-9][a-z0-9._/-]*"
    r"(?::[A-Za-z0-9][A-Za-z0-9._-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
_MOUNT_FLAGS = re.compile(r"^[a-z]+(?:\+[a-z]+)*$")
_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:\[[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*\])?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ENV_VALUE = re.compile(r"^[A-Za-z0-9._/:,=+@%^-]*$")
_RESERVED_ENV = {"RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PATH", "LD_PRELOAD"}
_TIME = (
    re.compile(r"^(?P<m>\d+)$"),
    re.compile(r"^(?P<m>\d+):(?P<s>\d{1,2})$"),
    re.compile(r"^(?P<h>\d+):(?P<m>\d{1,2}):(?P<s>\d{1,2})$"),
    re.compile(r"^(?P<d>\d+)-(?P<h>\d{1,2})(?::(?P<m>\d{1,2})(?::(?P<s>\d{1,2}))?)?$"),
)

MAX_SIGNAL_SECONDS = 65535  # Slurm's --signal=...@time limit


class LaunchError(ConfigValidationError):
    """A launch spec that must not be rendered; ``errors`` names each field and why."""

    def __init__(self, errors: list[ConfigError]):
        super().__init__(errors, "launch spec")


@dataclass(frozen=True)
class LaunchSpec:
    """Everything the batch script needs. Build it with :func:`launch_spec_for_run` or directly.

    :param job_name: Slurm job name (also the log file name: ``<log_dir>/<job_name>-<jobid>.out``).
    :param tasks_per_node: ranks per node: GPUs per node in production, 1 on the local cluster.
    :param time_limit: Slurm ``--time`` (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``).
    :param stop_before_limit_s: USR1 this many seconds before the limit starts the clean stop.
    :param launcher: the script every rank runs (neox_launch.py / standin_train.py on the cluster).
    :param python: interpreter on the cluster (inside the container in production).
    :param neox_dir: the GPT-NeoX checkout inside the image (production only).
    :param master_port: fixed rendezvous port; None derives it from the job id (20000 + id % 20000).
    :param exclude_nodes: nodes to avoid (auto-resume after a node failure).
    :param env: extra environment for every rank (names and values strictly checked).
    """

    job_name: str
    nodes: int
    tasks_per_node: int
    time_limit: str
    log_dir: str
    config_path: str
    launcher: str
    python: str = "python"
    stop_before_limit_s: int = 300
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None
    comment: str | None = None
    container_image: str | None = None
    container_mounts: tuple[str, ...] = ()
    neox_dir: str | None = None
    master_port: int | None = None
    exclude_nodes: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def total_tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    def job_log_path(self, job_id: int | str) -> str:
        """The per-job log the watcher reads (``srun -l`` output of every rank, plus our own lines)."""
        return f"{self.log_dir}/{self.job_name}-{job_id}.out"


def parse_time_limit(text: str) -> int:
    """Seconds in a Slurm time limit string; ``ValueError`` for anything else (including 0)."""
    for pattern in _TIME:
        match = pattern.fullmatch(text or "")
        if match:
            parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
            seconds = (
                parts.get("d", 0) * 86400
                + parts.get("h", 0) * 3600
                + parts.get("m", 0) * 60
                + parts.get("s", 0)
            )
            if seconds <= 0:
                break
            return seconds
    raise ValueError(f"{text!r} is not a Slurm time limit (MM, MM:SS, HH:MM:SS or D-HH[:MM[:SS]])")


def _check_path(errors: list[ConfigError], key: str, value: object, suffix: str | None = None) -> None:
    if not isinstance(value, str) or not _PATH.fullmatch(value):
        errors.append(ConfigError(key, f"{value!r} must be an absolute path of letters, digits and ._+-/"))
    elif "//" in value or any(part in (".", "..") for part in value.split("/")[1:]):
        errors.append(ConfigError(key, f"{value!r} must not contain '//', '.' or '..' components"))
    elif suffix and not value.endswith(suffix):
        errors.append(ConfigError(key, f"{value!r} must end in {suffix}"))


def validate_launch_spec(spec: LaunchSpec, template: str = PRODUCTION_TEMPLATE) -> list[ConfigError]:
    """Every problem with ``spec`` for ``template`` (each names the field and why); empty when renderable."""
    errors: list[ConfigError] = []
    add = errors.append
    if not isinstance(spec.job_name, str) or not _JOB_NAME.fullmatch(spec.job_name):
        add(ConfigError("job_name", f"{spec.job_name!r} must match {_JOB_NAME.pattern}"))
    for key, value, top in (("nodes", spec.nodes, 100000), ("tasks_per_node", spec.tasks_per_node, 256)):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            add(ConfigError(key, f"must be an integer from 1 to {top}, got {value!r}"))
    limit = None
    try:
        limit = parse_time_limit(spec.time_limit)
    except (TypeError, ValueError) as exc:
        add(ConfigError("time_limit", str(exc)))
    stop = spec.stop_before_limit_s
    if not isinstance(stop, int) or isinstance(stop, bool) or not 1 <= stop <= MAX_SIGNAL_SECONDS:
        add(
            ConfigError(
                "stop_before_limit_s", f"must be an integer from 1 to {MAX_SIGNAL_SECONDS}, got {stop!r}"
            )
        )
    elif limit is not None and stop >= limit:
        add(ConfigError("stop_before_limit_s", f"{stop} s is not shorter than the time limit ({limit} s)"))
    _check_path(errors, "log_dir", spec.log_dir)
    _check_path(errors, "config_path", spec.config_path, ".json")
    _check_path(errors, "launcher", spec.launcher, ".py")
    if not isinstance(spec.python, str) or not (
        _PATH.fullmatch(spec.python) or _PROGRAM.fullmatch(spec.python)
    ):
        add(ConfigError("python", f"{spec.python!r} must be an absolute path or a program name like python3"))
    elif spec.python.startswith("/"):
        _check_path(errors, "python", spec.python)
    for key, value, pattern in (
        ("partition", spec.partition, PARTITION),
        ("account", spec.account, PARTITION),
        ("comment", spec.comment, _COMMENT),
    ):
        if value is not None and (not isinstance(value, str) or not pattern.fullmatch(value)):
            add(ConfigError(key, f"{value!r} must match {pattern.pattern}"))
    for key in ("qos", "reservation", "constraint"):
        value = getattr(spec, key)
        if value is not None:
            try:
                check_sbatch_option(key, value)
            except UnsafeValueError as err:
                add(ConfigError(key, str(err)))
    for i, node in enumerate(spec.exclude_nodes):
        if not isinstance(node, str) or not _NODE.fullmatch(node):
            add(ConfigError(f"exclude_nodes[{i}]", f"{node!r} is not a node name or host list like gpu[1-3]"))
    if spec.master_port is not None and (
        not isinstance(spec.master_port, int)
        or isinstance(spec.master_port, bool)
        or not 1024 <= spec.master_port <= 65535
    ):
        add(ConfigError("master_port", f"must be an integer from 1024 to 65535, got {spec.master_port!r}"))
    for name, value in dict(spec.env).items():
        if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
            add(ConfigError(f"env.{name}", "is not a valid environment variable name"))
        elif name in _RESERVED_ENV or name.startswith("SLURM_"):
            add(ConfigError(f"env.{name}", "is set by the launch itself and cannot be overridden"))
        elif not isinstance(value, str) or not _ENV_VALUE.fullmatch(value):
            add(ConfigError(f"env.{name}", f"{value!r} may only hold letters, digits and ._/:,=+@%^-"))

    if template == PRODUCTION_TEMPLATE:
        image = spec.container_image
        if not image:
            add(ConfigError("container_image", "is required for the production template (pyxis/enroot)"))
        elif image.startswith("/"):
            _check_path(errors, "container_image", image)
        elif not _IMAGE_REF.fullmatch(image):
            add(
                ConfigError(
                    "container_image", f"{image!r} is neither an absolute .sqsh path nor an image name"
                )
            )
        if not spec.neox_dir:
            add(
                ConfigError(
                    "neox_dir", "is required: the GPT-NeoX checkout inside the image (holds train.py)"
                )
            )
        else:
            _check_path(errors, "neox_dir", spec.neox_dir)
        for i, mount in enumerate(spec.container_mounts):
            errors.extend(_mount_errors(f"container_mounts[{i}]", mount))
    elif template == LOCAL_TEMPLATE:
        if spec.container_image or spec.container_mounts:
            add(ConfigError("container_image", "the local template runs without a container; leave it unset"))
    return errors


def _mount_errors(key: str, mount: object) -> list[ConfigError]:
    if not isinstance(mount, str):
        return [ConfigError(key, f"{mount!r} must be a string SRC:DST[:FLAGS]")]
    parts = mount.split(":")
    if len(parts) not in (2, 3):
        return [ConfigError(key, f"{mount!r} must look like SRC:DST or SRC:DST:FLAGS")]
    errors: list[ConfigError] = []
    _check_path(errors, f"{key}.source", parts[0])
    _check_path(errors, f"{key}.target", parts[1])
    if len(parts) == 3 and not _MOUNT_FLAGS.fullmatch(parts[2]):
        errors.append(ConfigError(f"{key}.flags", f"{parts[2]!r} must be mount flags like ro or rw"))
    return errors


def template_path(template: str) -> Path:
    """A template by file name (``train.sbatch`` or ``train_local.sbatch``) from include/templates."""
    if template not in LAUNCHERS:
        raise ValueError(f"unknown template {template!r}; choose one of {', '.join(LAUNCHERS)}")
    return TEMPLATE_DIR / template


def render_batch_script(spec: LaunchSpec, template: str = PRODUCTION_TEMPLATE) -> str:
    """The batch script for ``spec``; raises :class:`LaunchError` listing every invalid field."""
    errors = validate_launch_spec(spec, template)
    if errors:
        raise LaunchError(errors)
    q = shlex.quote
    sbatch_options = []
    if spec.partition:
        sbatch_options.append(f"#SBATCH --partition={spec.partition}")
    if spec.account:
        sbatch_options.append(f"#SBATCH --account={spec.account}")
    for key in ("qos", "reservation", "constraint"):
        if getattr(spec, key):
            sbatch_options.append(f"#SBATCH --{key}={getattr(spec, key)}")
    if spec.comment:
        sbatch_options.append(f"#SBATCH --comment={spec.comment}")
    if spec.exclude_nodes:
        sbatch_options.append(f"#SBATCH --exclude={','.join(spec.exclude_nodes)}")
    env_exports = shell_exports(sorted(dict(spec.env).items()))
    values = {
        "JOB_NAME": spec.job_name,
        "NODES": str(spec.nodes),
        "TASKS_PER_NODE": str(spec.tasks_per_node),
        "TOTAL_TASKS": str(spec.total_tasks),
        "TIME_LIMIT": spec.time_limit,
        "STOP_BEFORE_S": str(spec.stop_before_limit_s),
        # wait for an in-flight checkpoint for at most 2/3 of the warning, leaving time for the exit
        "DRAIN_S": str(max(0, spec.stop_before_limit_s * 2 // 3)),
        "LOG_DIR": spec.log_dir,
        "SBATCH_OPTIONS": "\n".join(sbatch_options)
        if sbatch_options
        else "# (no partition/account/exclude options)",
        "JOB_LOG_PREFIX_Q": q(f"{spec.log_dir}/{spec.job_name}-"),
        "MASTER_PORT": str(spec.master_port) if spec.master_port else "$((20000 + SLURM_JOB_ID % 20000))",
        "ENV_EXPORTS": env_exports or "# (none)",
        "CONFIG_Q": q(spec.config_path),
        "LAUNCHER_Q": q(spec.launcher),
        "PYTHON_Q": q(spec.python),
    }
    if template == PRODUCTION_TEMPLATE:
        container = [f"--container-image={spec.container_image}"]
        if spec.container_mounts:
            container.append(f"--container-mounts={','.join(spec.container_mounts)}")
        container.append(f"--container-workdir={spec.neox_dir}")
        values["GPUS_PER_NODE"] = str(spec.tasks_per_node)
        values["CONTAINER_ARGS"] = " ".join(q(arg) for arg in container)
        values["NEOX_DIR_Q"] = q(spec.neox_dir or "")
    return fill_template(template_path(template).read_text(encoding="utf-8"), values, template=template)


def launch_spec_for_run(
    profile: Profile,
    run: RunConfig,
    *,
    job_name: str,
    code_dir: str | None = None,
    time_limit: str | None = None,
    exclude_nodes: tuple[str, ...] = (),
    comment: str | None = None,
) -> tuple[LaunchSpec, str]:
    """The spec (and template name) for training ``run`` on ``profile``'s cluster.

    ``code_dir`` is where include/cluster was shipped on the cluster (default ``profile.code_dir``);
    the launcher is ``<code_dir>/neox_launch.py`` in production and ``<code_dir>/standin_train.py``
    locally. ``time_limit`` overrides the profile's (one training slice). Render with
    ``render_batch_script(spec, template)``.
    """
    cluster = profile.cluster
    template = cluster.template
    if template not in LAUNCHERS:
        raise LaunchError(
            [ConfigError("cluster.template", f"{template!r} is not one of {', '.join(LAUNCHERS)}")]
        )
    code = code_dir or profile.code_dir
    spec = LaunchSpec(
        job_name=job_name,
        nodes=run.nodes,
        tasks_per_node=run.gpus_per_node,
        time_limit=time_limit or cluster.time_limit,
        stop_before_limit_s=cluster.stop_before_limit_s,
        log_dir=run.paths.log_dir,
        config_path=run.config_path,
        launcher=f"{code.rstrip('/')}/{LAUNCHERS[template]}",
        python=cluster.python,
        partition=cluster.partition,
        account=cluster.account,
        qos=cluster.qos,
        reservation=cluster.reservation,
        constraint=cluster.constraint,
        comment=comment,
        container_image=cluster.container_image,
        container_mounts=tuple(cluster.container_mounts),
        neox_dir=cluster.neox_dir,
        master_port=cluster.master_port,
        exclude_nodes=tuple(exclude_nodes),
        env=dict(cluster.env),
    )
    return spec, template
