"""The one renderer of the batch scripts neoxflow sends to the cluster (``include/templates``).

Every script the product submits (the data arrays, the merge, the training launch, the export) is a
template file filled here, with ONE placeholder syntax: ``@@NAME@@`` (capitals, digits, ``_``). The
syntax is chosen to be inert where the text travels: bash gives ``@@`` no meaning (unlike ``${NAME}``),
and Jinja neither (unlike ``{{NAME}}``): the SlurmOperator's ``script`` is a templated field, so a
placeholder left unfilled would otherwise be rendered to nothing by Airflow instead of failing here.

The renderer is strict both ways: a placeholder without a value, or a value the template does not use,
is an error naming them (template and code drifting apart). It only substitutes: each caller validates
its values first (:mod:`neoxflow.slurm.validate`) and ``shlex.quote``-s those the shell sees; the small
builders below do that quoting for the pieces every helper job's header shares.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path

from neoxflow.paths import TEMPLATES_DIR

__all__ = [
    "PLACEHOLDER",
    "container_launch",
    "fill_template",
    "load_template",
    "render_template",
    "sbatch_directives",
    "shell_exports",
]

PLACEHOLDER = re.compile(r"@@([A-Z][A-Z0-9_]*)@@")


def fill_template(text: str, values: Mapping[str, str], *, template: str = "template") -> str:
    """Replace every ``@@NAME@@`` in ``text``; every placeholder needs a value and every value a
    placeholder, else ``ValueError`` naming ``template`` and the names on each side."""
    used = set(PLACEHOLDER.findall(text))
    missing = sorted(used - values.keys())
    unused = sorted(values.keys() - used)
    if missing or unused:
        raise ValueError(
            f"{template}: placeholders without a value: {missing}; values without a placeholder: {unused}"
        )
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def load_template(name: str, templates_dir: Path | None = None) -> str:
    """A template's text by file name, from include/templates (or ``templates_dir``, for tests)."""
    return ((templates_dir or TEMPLATES_DIR) / name).read_text(encoding="utf-8")


def render_template(name: str, values: Mapping[str, str], *, templates_dir: Path | None = None) -> str:
    """The template file ``name`` filled with ``values`` (see :func:`fill_template`)."""
    return fill_template(load_template(name, templates_dir), values, template=name)


def sbatch_directives(options: Mapping[str, str]) -> str:
    """``#SBATCH --key=value`` lines for options already checked by ``check_sbatch_options``: a
    directive cannot be quoted, which is why its values must have matched their patterns."""
    return "\n".join(f"#SBATCH --{key}={value}" for key, value in options.items())


def shell_exports(env: Iterable[tuple[str, str]] | Mapping[str, str]) -> str:
    """``export NAME='value'`` lines, each value quoted (names were checked to be identifiers)."""
    pairs = env.items() if isinstance(env, Mapping) else env
    return "\n".join(f"export {name}={shlex.quote(str(value))}" for name, value in pairs)


def container_launch(image: str | None, container_mounts: str | None) -> str:
    """The quoted words a helper job puts before its interpreter: ``srun --container-image=...
    [--container-mounts=...]`` under pyxis, nothing without an image (the bash array stays empty)."""
    if not image:
        return ""
    words = ["srun", f"--container-image={image}"]
    if container_mounts:
        words.append(f"--container-mounts={container_mounts}")
    return " ".join(shlex.quote(word) for word in words)
