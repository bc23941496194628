"""A clone is all a user has: nothing tracked reaches outside the repository or names a developer's machine.

The project once read its tokenizer from a folder beside the checkout that only the developers' machines
(and CI) had, so `make demo` failed on every user's fresh clone while CI stayed green. These checks read
every tracked file; captured logs under tests/fixtures/ are exempt (they are evidence, kept as captured).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path, PurePosixPath

from tests.conftest import REPO, TOKENIZER

#: Paths of the machines this project was developed on, and the neighbour folder only they have. Spelled
#: in pieces so that this file does not match itself.
MACHINE_PATHS = re.compile(
    "|".join(
        [
            r"/" + r"work/",
            r"/" + r"root/",
            r"/home/[a-z_][a-z0-9_-]*/",
            r"/opt/" + r"(wheels|pypi)",
            r"\.\./" + r"shared\b",
            r"\bshared/" + r"(reference|tokenizers)\b",
            r"\bREPO(_ROOT)?\." + r"parent\b",
        ]
    )
)
#: A relative path that climbs: one or more "../" at the start of a token (not inside an absolute path).
CLIMB = re.compile(r"(?<![\w./-])((?:\.\./)+)")
EXEMPT = ("tests/fixtures/",)


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def tracked_text() -> dict[str, str]:
    texts = {}
    for rel in tracked_files():
        if rel.startswith(EXEMPT):
            continue
        data = (REPO / rel).read_bytes() if (REPO / rel).is_file() else b""
        if b"\0" in data[:8192]:
            continue  # binary
        texts[rel] = data.decode("utf-8", errors="replace")
    return texts


def machine_paths(text: str) -> list[str]:
    return [m.group(0) for m in MACHINE_PATHS.finditer(text)]


def climbs_out(rel: str, text: str) -> list[str]:
    """Relative paths in `text` that climb above the repository root from the file's own folder."""
    depth = len(PurePosixPath(rel).parent.parts)
    return [m.group(1) for m in CLIMB.finditer(text) if m.group(1).count("../") > depth]


def test_the_checks_catch_what_they_are_for():
    assert machine_paths("TOKENIZER = REPO." + "parent / 'shared'") == ["REPO." + "parent"]
    assert machine_paths("cp ../" + "shared/" + "tokenizers/x .") == ["../" + "shared"]
    assert machine_paths("see shared/" + "reference/neox.md") == ["shared/" + "reference"]
    assert machine_paths("log in /" + "work/demo-check/main/.state") == ["/" + "work/"]
    assert machine_paths("fsx: /fsx/checkpoints and /tmp/x and $HOME/.cache") == []
    assert climbs_out("docs/a.md", "see (../../elsewhere/x.md)") == ["../../"]
    assert climbs_out("docs/a.md", "see (../gpu_check/README.md) and /x/../etc") == []
    assert climbs_out("README.md", 'source: "../neighbour/file"') == ["../"]


def test_no_tracked_file_names_a_development_machine_path():
    found = {rel: hits for rel, text in tracked_text().items() if (hits := machine_paths(text))}
    assert found == {}, f"tracked files name paths only a development machine has: {found}"


def test_no_tracked_file_climbs_out_of_the_repository():
    texts = tracked_text()
    texts.pop("include/tokenizers/20B_tokenizer.json")  # a vocabulary: "../../" is a token there, not a path
    found = {rel: hits for rel, text in texts.items() if (hits := climbs_out(rel, text))}
    assert found == {}, f"relative paths that leave the repository: {found}"


def test_no_symlink_points_outside_the_repository():
    for rel in tracked_files():
        path = REPO / rel
        if path.is_symlink():
            assert path.resolve().is_relative_to(REPO), f"{rel} -> {path.resolve()} leaves the repository"


def test_the_tokenizer_is_the_one_its_readme_names():
    readme = (TOKENIZER.parent / "README.md").read_text()
    (noted,) = re.findall(r"sha256 \| `([0-9a-f]{64})`", readme)
    assert hashlib.sha256(TOKENIZER.read_bytes()).hexdigest() == noted
    assert f"{TOKENIZER.stat().st_size:,} bytes" in readme


def test_the_local_profile_reads_the_tokenizer_from_the_repository():
    from neoxflow.neox.profile_loader import load_profile

    assert Path(load_profile("local", env={}).tokenizer_source) == TOKENIZER
