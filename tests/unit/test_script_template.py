"""The one renderer of every batch script (plugins/neoxflow/slurm/template.py, include/templates/*).

Template and code must not drift apart silently: a placeholder without a value, or a value no
placeholder takes, fails the render naming it, for every template the product renders.
"""

from __future__ import annotations

import re

import pytest

from neoxflow.paths import TEMPLATES_DIR
from neoxflow.slurm.template import PLACEHOLDER, fill_template, load_template, render_template


def test_fill_template_detects_drift() -> None:
    assert fill_template("a @@X@@ b", {"X": "1"}) == "a 1 b"
    with pytest.raises(ValueError, match=r"without a value: \['Y'\]"):
        fill_template("@@X@@ @@Y@@", {"X": "1"})
    with pytest.raises(ValueError, match=r"without a placeholder: \['Z'\]"):
        fill_template("@@X@@", {"X": "1", "Z": "2"})


def test_a_template_with_a_missing_or_unknown_placeholder_fails_naming_it(tmp_path) -> None:
    (tmp_path / "job.sbatch").write_text("#!/bin/bash\n#SBATCH --job-name=@@JOB_NAME@@\necho @@UNKNOWN@@\n")
    with pytest.raises(ValueError, match=r"job\.sbatch: placeholders without a value: \['UNKNOWN'\]"):
        render_template("job.sbatch", {"JOB_NAME": "a"}, templates_dir=tmp_path)
    with pytest.raises(ValueError, match=r"job\.sbatch: .*values without a placeholder: \['EXTRA'\]"):
        render_template("job.sbatch", {"JOB_NAME": "a", "UNKNOWN": "b", "EXTRA": "c"}, templates_dir=tmp_path)
    assert render_template("job.sbatch", {"JOB_NAME": "a", "UNKNOWN": "b"}, templates_dir=tmp_path) == (
        "#!/bin/bash\n#SBATCH --job-name=a\necho b\n"
    )


def test_a_literal_at_sign_next_to_a_placeholder_stays() -> None:
    # train.sbatch: --signal=B:USR1@<seconds>
    assert fill_template("--signal=B:USR1@@@S@@", {"S": "300"}) == "--signal=B:USR1@300"


def test_a_value_is_not_filled_again() -> None:
    # substitution is one pass: a value that looks like a placeholder reaches the script as it is
    assert fill_template("@@A@@ @@B@@", {"A": "@@B@@", "B": "b"}) == "@@B@@ b"


@pytest.mark.parametrize("path", sorted(TEMPLATES_DIR.iterdir()), ids=lambda p: p.name)
def test_every_template_uses_the_one_placeholder_syntax(path) -> None:
    text = load_template(path.name)
    assert PLACEHOLDER.search(text), f"{path.name} has no @@NAME@@ placeholder"
    assert not re.search(r"\{\{\s*[A-Za-z_]+\s*\}\}", text), (
        f"{path.name} still has a {{{{NAME}}}} placeholder"
    )
