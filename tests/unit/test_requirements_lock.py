"""requirements.lock agrees with requirements.txt, and is a complete hash-pinned lock with the CPU torch.

requirements.txt is the readable list of direct dependencies; requirements.lock is what scripts/bootstrap.sh
installs (`uv pip sync --require-hashes`), compiled from it by `make lock`. These checks read both files
only: they fail when requirements.txt is changed (a pin bumped, a dependency added or dropped) without
re-locking, when a lock entry has no sha256 hash, or when torch is not PyTorch's CPU build.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}\b")


def direct_requirements(path: Path = ROOT / "requirements.txt") -> dict[str, Requirement]:
    reqs = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            reqs[canonicalize_name(req.name)] = req
    return reqs


def parse_lock(text: str) -> dict[str, dict]:
    """name -> {version, hashes, via}: uv's requirements format, an entry per package, hashes on
    backslash-continued lines, then `# via` comment lines naming what required it."""
    entries: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if m := ENTRY.match(line):
            name = canonicalize_name(m.group(1))
            assert name not in entries, f"{name} is locked twice"
            current = entries[name] = {"version": m.group(2), "hashes": HASH.findall(line), "via": []}
        elif line.startswith((" ", "\t")) and current is not None:
            body = line.strip()
            if body.startswith("--hash="):
                assert HASH.fullmatch(body.rstrip(" \\")), f"not a sha256 hash line: {line!r}"
                current["hashes"].append(body.rstrip(" \\"))
            elif body.startswith("#"):
                via = re.sub(r"^via(\s+|$)", "", body.lstrip("#").strip())
                if via:
                    current["via"].append(via)
            elif body:
                raise AssertionError(f"unexpected line in the lock: {line!r}")
        elif line.strip() and not line.startswith("#"):
            raise AssertionError(f"not a pinned `name==version` entry: {line!r}")
    return entries


@pytest.fixture(scope="module")
def lock() -> dict[str, dict]:
    return parse_lock((ROOT / "requirements.lock").read_text())


def test_every_direct_dependency_is_locked_at_its_pinned_version(lock):
    for name, req in direct_requirements().items():
        assert name in lock, f"{name} is in requirements.txt but not in requirements.lock: run `make lock`"
        locked = Version(lock[name]["version"])
        assert req.specifier.contains(locked, prereleases=True), (
            f"requirements.txt wants {req}, requirements.lock has {name}=={locked}: run `make lock`"
        )
        (spec,) = req.specifier  # every direct dependency is pinned exactly
        assert spec.operator == "==", f"{req}: requirements.txt pins exact versions"
        assert locked.public == Version(spec.version).public, f"{name}: {locked} vs {spec.version}"


def test_the_lock_names_no_dropped_direct_dependency(lock):
    """What the lock says came from requirements.txt still is there (a dependency dropped from
    requirements.txt without re-locking would stay installed)."""
    direct = set(direct_requirements())
    from_requirements = {name for name, e in lock.items() if "-r requirements.txt" in e["via"]}
    assert from_requirements == direct, "requirements.lock is stale: run `make lock`"


def test_every_lock_entry_has_sha256_hashes(lock):
    assert len(lock) > 100, "requirements.lock looks truncated"
    unhashed = sorted(name for name, e in lock.items() if not e["hashes"])
    assert not unhashed, f"lock entries without --hash=sha256: {unhashed}"


def test_torch_is_the_cpu_build_without_cuda_packages(lock):
    pinned = direct_requirements()["torch"].specifier
    (spec,) = pinned
    assert lock["torch"]["version"] == f"{spec.version}+cpu", "torch must be PyTorch's CPU build (+cpu)"
    cuda = sorted(n for n in lock if n.startswith(("nvidia-", "cuda-")) or n == "triton")
    assert not cuda, f"the CUDA torch's packages are locked: {cuda}"
    # the CPU build's own dependencies are locked with it
    for dep in ("filelock", "sympy", "networkx", "jinja2", "fsspec", "typing-extensions"):
        assert dep in lock and any("torch" == v for v in lock[dep]["via"]), f"{dep} (torch's) not locked"


def test_the_lock_holds_no_path_or_index_of_this_machine():
    text = (ROOT / "requirements.lock").read_text()
    options = [line for line in text.splitlines() if line.startswith("-")]
    assert not options, f"the lock carries index/find-links options: {options}"
    assert not re.search(r"(?m)(file://|^\s*/|\s/(opt|tmp|home|root|work)/)", text)


def test_uv_itself_is_pinned_with_hashes():
    version = re.search(r"(?m)^UV_VERSION=(\S+)$", (ROOT / "scripts/bootstrap.sh").read_text()).group(1)
    tools = parse_lock((ROOT / "requirements-uv.lock").read_text())
    assert set(tools) == {"uv"} and tools["uv"]["version"] == version
    assert tools["uv"]["hashes"]


def test_parse_lock_reads_uv_output():
    text = (
        "# header\n"
        "a-b==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via -r requirements.txt\n"
        "c==2.0+cpu \\\n    --hash=sha256:" + "1" * 64 + " \\\n    --hash=sha256:" + "2" * 64 + "\n"
        "    # via\n    #   -r requirements.txt\n    #   a-b\n"
        "d==3\n    # via c\n"
    )
    got = parse_lock(text)
    zero = "--hash=sha256:" + "0" * 64
    assert got["a-b"] == {"version": "1.0", "hashes": [zero], "via": ["-r requirements.txt"]}
    assert got["c"]["version"] == "2.0+cpu" and len(got["c"]["hashes"]) == 2
    assert got["c"]["via"] == ["-r requirements.txt", "a-b"]
    assert got["d"] == {"version": "3", "hashes": [], "via": ["c"]}
