"""The shipped Pythia configs against both upstreams (issue 18, item 3).

Two upstreams disagree: GPT-NeoX's ``configs/pythia/*.yml`` and the Pythia repository's
``models/*/pythia-*.yml``. Each ``include/configs/pythia/<size>.json`` follows the upstream that
``include/configs/pythia/UPSTREAM.md`` names for it. Every key where it differs from EITHER upstream must be
a row of the one table in README.md's section "Pythia configs and their upstreams". The README table is
the single source of truth: this test parses it; it holds no list of allowed differences of its own.

The table's value cells are checked where they state values: ``absent`` (the key is not in the file), one
backticked JSON literal (for every key and size of the row), or one item per key separated by `` / ``.
Any other cell is prose and only read by people. A row must describe a real difference for each of its
sizes, unless all three of its value cells are checked statements (a change that made a file match both
upstreams). The upstream values are test data: ``tests/fixtures/pythia-upstream/<size>.json`` (see the
README there for the repositories, commits and how they were read).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from neoxflow.neox.checkpoints import Expectation
from neoxflow.neox.config_files import PYTHIA_SIZES, load_size_config
from neoxflow.neox.profile_loader import load_profile
from neoxflow.neox.run_config import build_run_config
from neoxflow.paths import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "pythia-upstream"
README = REPO / "README.md"
UPSTREAM_MD = CONFIG_DIR / "pythia" / "UPSTREAM.md"
SECTION = "## Pythia configs and their upstreams"
HEADER = ("size(s)", "key", "neoxflow", "GPT-NeoX configs/pythia", "Pythia models/", "why")
#: the three value columns of the README table, in order
SOURCES = ("shipped", "gpt_neox", "pythia")
#: repository named in UPSTREAM.md -> fixture section
REPOSITORIES = {"EleutherAI/gpt-neox": "gpt_neox", "EleutherAI/pythia": "pythia"}


class _Absent:
    def __repr__(self) -> str:
        return "absent"


ABSENT: Any = _Absent()


# --- reading the data -------------------------------------------------------------------------------------


def fixture(size: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{size}.json").read_text())


def configs(size: str) -> dict[str, dict[str, Any]]:
    """The shipped file and both upstreams' values, by source name."""
    data = fixture(size)
    return {
        "shipped": load_size_config(size),
        "gpt_neox": data["gpt_neox"]["values"],
        "pythia": data["pythia"]["values"],
    }


def leaves(cfg: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of every value that is not a non-empty dict (lists are values)."""
    out: set[str] = set()
    for key, value in cfg.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out |= leaves(value, dotted)
        else:
            out.add(dotted)
    return out


def lookup(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return ABSENT
        node = node[part]
    return node


def canon(value: Any) -> str:
    """Type-strict comparison form (``1`` != ``1.0`` != ``true``)."""
    return "absent" if value is ABSENT else json.dumps(value, sort_keys=True)


def differs(cfgs: dict[str, dict[str, Any]], key: str) -> bool:
    return len({canon(lookup(cfgs[s], key)) for s in SOURCES}) > 1


def markdown_table(text: str) -> list[list[str]]:
    """The first table in ``text``: rows of cells (header included, separator dropped)."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not all(set(c) <= {"-", ":"} for c in cells):
            rows.append(cells)
    return rows


def section(text: str, heading: str) -> str:
    assert text.count(f"\n{heading}\n") == 1, f"README.md needs exactly one section {heading!r}"
    return text.split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]


_LITERAL = re.compile(r"^`([^`]+)`$")


def parse_cell(text: str, n_keys: int) -> list[Any] | None:
    """Expected values, one per key, or None for a prose cell."""
    items = text.split(" / ")
    if len(items) == 1:
        items = items * n_keys
    if len(items) != n_keys:
        return None
    values = []
    for item in items:
        if item == "absent":
            values.append(ABSENT)
            continue
        match = _LITERAL.match(item)
        if not match:
            return None
        try:
            values.append(json.loads(match.group(1)))
        except json.JSONDecodeError:
            return None
    return values


@dataclass(frozen=True)
class Row:
    line: int  # 1-based row number in the table, for messages
    sizes: tuple[str, ...]
    keys: tuple[str, ...]
    cells: dict[str, str]  # source -> cell text
    why: str

    def covers(self, size: str, key: str) -> bool:
        return size in self.sizes and any(key == k or key.startswith(k + ".") for k in self.keys)

    def stated(self, source: str) -> list[Any] | None:
        return parse_cell(self.cells[source], len(self.keys))


def readme_rows() -> list[Row]:
    rows = markdown_table(section(README.read_text(), SECTION))
    assert tuple(rows[0]) == HEADER, f"README table header is {rows[0]}, want {list(HEADER)}"
    out = []
    for number, cells in enumerate(rows[1:], start=1):
        assert len(cells) == len(HEADER), f"README table row {number} has {len(cells)} cells: {cells}"
        size_cell, key_cell, *values, why = cells
        sizes = PYTHIA_SIZES if size_cell == "all" else tuple(size_cell.split(", "))
        assert set(sizes) <= set(PYTHIA_SIZES), f"row {number}: unknown size in {size_cell!r}"
        keys = tuple(re.findall(r"`([^`]+)`", key_cell))
        assert keys and ", ".join(f"`{k}`" for k in keys) == key_cell, f"row {number}: key cell {key_cell!r}"
        assert why, f"row {number} gives no reason"
        out.append(Row(number, sizes, keys, dict(zip(SOURCES, values, strict=True)), why))
    return out


def followed_upstreams() -> dict[str, str]:
    """UPSTREAM.md: size -> fixture section of the upstream its file follows (checked against the fixture)."""
    out = {}
    for cells in markdown_table(UPSTREAM_MD.read_text())[1:]:
        file_cell, repo, path_cell, commit_cell = cells
        size = file_cell.strip("`").removesuffix(".json")
        source = REPOSITORIES[repo]
        data = fixture(size)[source]
        assert (data["repository"], data["path"], data["commit"]) == (
            repo,
            path_cell.strip("`"),
            commit_cell.strip("`"),
        ), f"UPSTREAM.md's row for {size} does not name the fixture's upstream file"
        out[size] = source
    return out


ROWS = readme_rows()


# --- the fixtures are what the upstream files say --------------------------------------------------------


def _normalise(text: str) -> dict[str, Any]:
    """Read an upstream file as NeoX does (PyYAML FullLoader; top-level ``-`` and ``_`` alike)."""
    return {k.replace("-", "_"): v for k, v in yaml.load(text, Loader=yaml.FullLoader).items()}


@pytest.mark.parametrize("size", PYTHIA_SIZES)
def test_fixture_names_both_upstream_files(size: str) -> None:
    data = fixture(size)
    assert data["size"] == size
    neox, pythia = data["gpt_neox"], data["pythia"]
    assert neox["repository"] == "EleutherAI/gpt-neox" and neox["path"] == (
        f"configs/pythia/{size.replace('.', '-')}.yml"
    )
    assert pythia["repository"] == "EleutherAI/pythia" and pythia["path"] == (
        f"models/{size}/pythia-{size.lower()}.yml"
    )
    for source in (neox, pythia):
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"])
        assert not [k for k in source["values"] if "-" in k], "keys are normalised to underscores"
    assert ("parse_error" in pythia) == (size == "12B"), "only the Pythia 12B file fails to parse"


def test_pythia_12b_upstream_does_not_parse_and_the_values_differ_from_it_by_one_comma() -> None:
    pythia = fixture("12B")["pythia"]
    raw = (FIXTURES / pythia["raw"]).read_text()
    with pytest.raises(yaml.YAMLError, match="expected ',' or '}'"):
        yaml.load(raw, Loader=yaml.FullLoader)
    lines = raw.split("\n")
    line = pythia["repair"]["line"]
    assert lines[line - 1].strip() == '"attention-config": [[["flash"], 36]]', "the line without its comma"
    lines[line - 1] += pythia["repair"]["append"]
    assert _normalise("\n".join(lines)) == pythia["values"]


def test_upstream_md_names_one_upstream_for_every_shipped_file() -> None:
    followed = followed_upstreams()
    assert sorted(followed) == sorted(PYTHIA_SIZES)
    shipped = sorted(p.stem for p in (CONFIG_DIR / "pythia").glob("*.json"))
    assert shipped == sorted(PYTHIA_SIZES), "a shipped file without an UPSTREAM.md row, or the reverse"


# --- the shipped files against the README table ----------------------------------------------------------


@pytest.mark.parametrize("size", PYTHIA_SIZES)
def test_every_difference_from_either_upstream_is_in_the_readme_table(size: str) -> None:
    cfgs = configs(size)
    followed = followed_upstreams()[size]
    unlisted = []
    for key in sorted(set().union(*(leaves(c) for c in cfgs.values()))):
        if differs(cfgs, key) and not any(row.covers(size, key) for row in ROWS):
            values = ", ".join(f"{s}={lookup(cfgs[s], key)!r}" for s in SOURCES)
            unlisted.append(f"{key}: {values}")
    assert not unlisted, (
        f"{size}: keys that differ from an upstream (the file follows {followed}) but are not in README's "
        f"table {SECTION!r}:\n  " + "\n  ".join(unlisted)
    )


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"row{r.line}-{'+'.join(r.keys)}")
def test_readme_table_row_is_true(row: Row) -> None:
    wrong = []
    for size in row.sizes:
        cfgs = configs(size)
        for source in SOURCES:
            stated = row.stated(source)
            if stated is None:
                continue
            for key, want in zip(row.keys, stated, strict=True):
                got = lookup(cfgs[source], key)
                if canon(got) != canon(want):
                    wrong.append(f"{size} {source} {key}: table says {want!r}, the file has {got!r}")
    assert not wrong, f"README table row {row.line} is wrong:\n  " + "\n  ".join(wrong)
    if all(row.stated(s) is not None for s in SOURCES):
        return  # a checked statement (also how a change that matches both upstreams is recorded)
    stale = [s for s in row.sizes if not any(differs(configs(s), k) for k in row.keys)]
    assert not stale, (
        f"README table row {row.line} ({', '.join(row.keys)}) describes no difference for {stale}"
    )


def test_readme_table_is_directly_above_measured() -> None:
    text = README.read_text()
    after = text.split(f"\n{SECTION}\n", 1)[1]
    assert after.split("\n## ", 1)[1].startswith("Measured\n")


# --- what the released models were trained with ----------------------------------------------------------


def test_1b_trains_in_bf16_as_pythia_1b_was_trained() -> None:
    cfg = load_size_config("1B")
    assert cfg["precision"] == "bfloat16" and cfg["bf16"] == {"enabled": True} and "fp16" not in cfg
    run = build_run_config(
        "1B",
        load_profile("aws", env={}),
        "pythia-1b",
        nodes=2,
        gpus_per_node=8,
        check_vocab_file=False,
        dataset_id="t",
    )
    assert run.errors == []
    assert run.config["precision"] == "bfloat16" and run.config["bf16"] == {"enabled": True}
    assert "fp16" not in json.loads(run.rendered)
    # the checkpoint rule then expects bf16's optimizer shards, one per data-parallel rank
    expect = Expectation.from_neox_config(run.config, 16)
    assert expect.precision == "bf16" and expect.optimizer_shards


@pytest.mark.parametrize("size", [s for s in PYTHIA_SIZES if s != "1B"])
def test_the_other_sizes_train_in_fp16_as_released(size: str) -> None:
    cfg = load_size_config(size)
    assert cfg["fp16"]["enabled"] is True and not {"precision", "bf16"} & cfg.keys()


@pytest.mark.parametrize("size", PYTHIA_SIZES)
def test_initialisation_is_what_the_released_model_used(size: str) -> None:
    cfg = load_size_config(size)
    if size in ("6.9B", "12B"):  # NeoX's defaults (normal, scaled_normal): their configs named none
        assert not {"init_method", "output_layer_init_method"} & cfg.keys()
    else:
        assert (cfg["init_method"], cfg["output_layer_init_method"]) == ("small_init", "wang_init")
