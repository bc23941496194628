"""Benchmark: peak memory of merge_datasets.py (and validate_dataset.py) vs the number of parts.

One command (``make bench-merge``):

    .venv/bin/python bench/bench_merge_memory.py [--docs-per-part 1000] [--cluster-dir include/cluster]

The target (the 1024-shard C4 merge): with parts of a fixed size, the merge's peak RSS at 1024 parts is
within 10% (or 20 MB) of its peak at 40 parts. The bench builds 1024 identical parts of ``--docs-per-part``
one-item documents (1 to 100 tokens, uint16) in a temporary folder, then runs, each as its own process
given its parts through ``--prefixes-from-manifest``:

  A. merge 40 parts;  B. merge 1024 parts;  C. merge 40 parts of 1024/40 times the documents (as many
  documents as B, rounded down: B-C is the growth per part alone, C-A the growth per document alone);
  D. merge B's and C's outputs (2 parts, about twice B's documents);
  validate A's, B's and D's outputs (with ``--vocab-size``, the full token scan), and B's output together
  with its 1024 parts (the merge job's validation). Validation works in chunks (``mmidx.CHUNK_ITEMS``
  index entries, ``validate_dataset.SCAN_CHUNK`` tokens): its peak rises until a dataset fills one chunk
  (A is smaller than one, B is not), then stays flat (B vs D).

Peak RSS is the child's ``ru_maxrss`` from ``wait4``, taken by a small wrapper process started afresh for
each run: a child's ``ru_maxrss`` includes the RSS of the process that spawned it (the kernel carries it
over exec), so measuring from this numpy-importing process would floor every figure at its own size, and
``RUSAGE_CHILDREN`` is a running maximum over all children. ``python -c "import numpy"`` is measured the
same way as the floor every run pays. MB here is 2**20 bytes. ``--cluster-dir`` points at another copy of
the scripts (e.g. an older commit's, to compare).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "include" / "cluster"
MB = 1 << 20
FEW, MANY = 40, 1024
VOCAB = 50277

# Runs argv[3:] with stdout/stderr to the files argv[1], argv[2]; prints rc, peak RSS (KiB) and wall time.
WRAPPER = r"""
import json, os, subprocess, sys, time
t = time.perf_counter()
with open(sys.argv[1], "wb") as out, open(sys.argv[2], "wb") as err:
    child = subprocess.Popen(sys.argv[3:], stdout=out, stderr=err)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
print(json.dumps({"rc": child.returncode, "maxrss_kb": usage.ru_maxrss, "wall_s": time.perf_counter() - t}))
"""


def measure(argv: list[str], work: Path, label: str) -> dict:
    """Run ``argv`` as a child of a fresh small wrapper; returns its rc, peak RSS, wall time, stdout."""
    out, err = work / f"{label}.out", work / f"{label}.err"
    res = subprocess.run(
        [sys.executable, "-S", "-c", WRAPPER, str(out), str(err), *argv],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(res.stdout)
    result["stdout"] = out.read_text()
    if result["rc"] != 0:
        raise SystemExit(f"{label}: {' '.join(argv)} exited {result['rc']}:\n{err.read_text()[-3000:]}")
    result["peak_mb"] = result["maxrss_kb"] * 1024 / MB
    return result


def build_part(prefix: Path, docs: int) -> None:
    """One part written by this checkout's writer (``mmidx_dataset``): ``docs`` one-item documents of
    1..100 tokens. The parts are input data, the same bytes whichever copy of the scripts is measured."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import mmidx_dataset, numpy as np\n"
        "n = int(sys.argv[3]); sizes = (np.arange(n) * 37 % 100 + 1).astype(np.int64)\n"
        "tokens = (np.arange(int(sizes.sum())) % 50000).astype(np.uint16)\n"
        "with mmidx_dataset.DatasetWriter(sys.argv[2], np.uint16) as w:\n"
        "    w.add_documents(tokens, sizes)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(CLUSTER), str(prefix), str(docs)], check=True)


def build_parts(folder: Path, count: int, docs: int) -> tuple[Path, int, int]:
    """``count`` copies of one part, listed by a tokenize manifest (name, input, output prefix) as the
    tokenize job's are; returns the manifest and one part's .bin and .idx sizes."""
    folder.mkdir(parents=True)
    template = folder / "template_text_document"
    build_part(template, docs)
    sizes = (Path(f"{template}.bin").stat().st_size, Path(f"{template}.idx").stat().st_size)
    lines = []
    for i in range(count):
        stem = folder / f"part-{i:05d}"
        for ext in (".bin", ".idx"):
            shutil.copyfile(f"{template}{ext}", f"{stem}_text_document{ext}")
        lines.append(f"part-{i:05d}.json.gz\t/raw/part-{i:05d}.json.gz\t{stem}\n")
    manifest = folder / "manifest.tsv"
    manifest.write_text("".join(lines))
    return manifest, *sizes


def chunk_items(cluster: Path) -> int | None:
    """mmidx.CHUNK_ITEMS of the scripts measured (None for a version without it)."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import mmidx; print(getattr(mmidx, 'CHUNK_ITEMS', 0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(cluster)], capture_output=True, text=True, check=True
    )
    return int(out.stdout) or None


def first_lines(manifest: Path, n: int, work: Path) -> Path:
    out = work / f"{manifest.parent.name}-first{n}.tsv"
    out.write_text("".join(manifest.read_text().splitlines(keepends=True)[:n]))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs-per-part", type=int, default=1000, help="documents in each part (default 1000)")
    p.add_argument("--cluster-dir", type=Path, default=CLUSTER, help="where merge/validate scripts are")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = p.parse_args(argv)
    cluster = args.cluster_dir.resolve()
    k = args.docs_per_part
    k_big = k * MANY // FEW
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-merge-"))
    try:
        small, part_bin, part_idx = build_parts(work / "small", MANY, k)
        big = build_parts(work / "big", FEW, k_big)[0]
        built = time.perf_counter() - started
        validate = [sys.executable, str(cluster / "validate_dataset.py")]

        def merge(name: str, manifest: Path) -> dict:
            argv = [sys.executable, str(cluster / "merge_datasets.py"), "--output-prefix", str(work / name)]
            return measure([*argv, "--prefixes-from-manifest", str(manifest)], work, name)

        pair = work / "pair.tsv"
        pair.write_text("".join(f"{x}\t{x}\t{work / x}\n" for x in ("B", "C")))
        for x in ("B", "C"):  # the merged outputs under the names the manifest gives them
            for ext in (".bin", ".idx"):
                (work / f"{x}_text_document{ext}").symlink_to(work / f"{x}{ext}")
        runs = {
            "numpy": measure([sys.executable, "-c", "import numpy"], work, "numpy"),
            "A": merge("A", first_lines(small, FEW, work)),
            "B": merge("B", small),
            "C": merge("C", big),
        }
        runs["D"] = merge("D", pair)
        docs = {"A": FEW * k, "B": MANY * k, "C": FEW * k_big, "D": MANY * k + FEW * k_big}
        for name in ("A", "B", "C", "D"):
            got = json.loads(runs[name]["stdout"])["documents"]
            assert got == docs[name], f"merge {name}: {got} documents, expected {docs[name]}"
        for name in ("A", "B", "D"):
            runs[f"v{name}"] = measure(
                [*validate, str(work / name), "--vocab-size", str(VOCAB)], work, f"v{name}"
            )
        runs["vBall"] = measure(
            [*validate, str(work / "B"), "--prefixes-from-manifest", str(small), "--vocab-size", str(VOCAB)],
            work,
            "vBall",
        )
        for name, n in (("vA", docs["A"]), ("vB", docs["B"]), ("vD", docs["D"]), ("vBall", 2 * docs["B"])):
            result = json.loads(runs[name]["stdout"])
            assert result["ok"] and result["documents"] == n, (name, result["documents"], n)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    peak = {name: r["peak_mb"] for name, r in runs.items()}
    print(f"scripts: {cluster}")
    print(
        f"parts: {k} one-item documents each (1-100 uint16 tokens; {part_bin:,d} B .bin + {part_idx:,d} B "
        f".idx); big parts: {k_big} documents; built in {built:.1f}s"
    )
    print(f"floor: python -c 'import numpy' peaks at {peak['numpy']:.1f} MB")
    rows = [
        ("A", f"merge {FEW} parts", docs["A"]),
        ("B", f"merge {MANY} parts", docs["B"]),
        ("C", f"merge {FEW} big parts", docs["C"]),
        ("D", "merge B and C (2 parts)", docs["D"]),
        ("vA", "validate merged A (+token scan)", docs["A"]),
        ("vB", "validate merged B (+token scan)", docs["B"]),
        ("vD", "validate merged D (+token scan)", docs["D"]),
        ("vBall", f"validate B + its {MANY} parts (+scan)", 2 * docs["B"]),
    ]
    for name, what, n in rows:
        r = runs[name]
        print(f"  {name:5s} {what:38s} {n:>10,d} docs  peak {r['peak_mb']:7.1f} MB  wall {r['wall_s']:5.2f}s")
    diff = peak["B"] - peak["A"]
    growth = 100 * diff / peak["A"]
    print(
        f"merge growth {FEW}->{MANY} parts of a fixed size: {diff:+.2f} MB ({growth:+.1f}%) = "
        f"{diff * MB / (MANY - FEW):+.0f} B/part = {diff * MB / (docs['B'] - docs['A']):+.2f} B/document "
        "(parts and documents grow together here)"
    )
    per_part = (peak["B"] - peak["C"]) * MB / (MANY - FEW)
    per_doc = (peak["C"] - peak["A"]) * MB / (docs["C"] - docs["A"])
    print(
        f"merge growth separated: per part {per_part:+.0f} B (B vs C: {docs['B']:,d} vs "
        f"{docs['C']:,d} documents), "
        f"per document {per_doc:+.3f} B (C vs A: same {FEW} parts)"
    )
    print(
        f"merge of 2 parts of ~{docs['B']:,d} documents (D) vs {FEW} small parts (A): "
        f"{peak['D'] - peak['A']:+.2f} MB"
    )
    vdiff = peak["vB"] - peak["vA"]
    vflat = peak["vD"] - peak["vB"]
    chunk = chunk_items(cluster)
    why = ""
    if chunk and docs["A"] < chunk <= docs["B"]:
        why = f": A is smaller than one check chunk of {chunk:,d} entries, B fills it"
    print(
        f"validate growth A->B: {vdiff:+.2f} MB ({100 * vdiff / peak['vA']:+.1f}%{why}); "
        f"B->D (about twice the documents): {vflat:+.2f} MB = "
        f"{vflat * MB / (docs['D'] - docs['B']):+.3f} B/document; with B's {MANY} parts too: "
        f"{peak['vBall'] - peak['vB']:+.2f} MB = {(peak['vBall'] - peak['vB']) * MB / MANY:+.0f} B/part"
    )
    print(f"total {time.perf_counter() - started:.1f}s")
    ok = growth <= 10 or diff <= 20
    print(
        f"MERGE_MEMORY peak_40={peak['A']:.1f}MB peak_1024={peak['B']:.1f}MB growth={growth:.1f}% "
        f"target=within 10% or 20MB: {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
