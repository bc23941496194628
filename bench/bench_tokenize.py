"""Benchmark: our include/cluster/preprocess_data.py vs plain HF ``encode_batch`` vs NeoX's script.

One command, same C4-format input, same cores, same run:

    .venv/bin/python bench/bench_tokenize.py [--docs N] [--workers 2] [--repeat 3] [--startup] \
        [--distinct] [--neox PATH-TO-GPT-NEOX --neox-python PY]

Prints tokens/s, MB/s (UTF-8 bytes of the text fields) and peak RSS (process tree) for each tool, the
ratios against NeoX (when ``--neox`` is given) and against plain HF ``Tokenizer.encode_batch`` (always),
and whether the ``.bin``/``.idx`` outputs are byte-identical. Wall time includes each tool's start-up.
With ``--repeat N`` the tools run N times, interleaved (ours, HF, NeoX, ours, ...), and the median wall
time of each is reported: a shared VM's run-to-run spread (±20% here) is larger than one run shows.
With ``--startup`` each tool also runs on the input's first document alone, and the ratios are printed
again without that start-up: NeoX's script spends seconds importing its stack, so the ratio on a short
input overstates what a long shard gets. With ``--distinct`` no paragraph repeats (see
:func:`make_input`).
The input is generated from prose found on this machine (``/usr/share/doc``; synthetic words if
absent) shaped like allenai/c4 lines (``text``, ``timestamp``, ``url``), ~10% non-ASCII documents.
"""

from __future__ import annotations

import argparse
import filecmp
import functools
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "include" / "cluster"
DEFAULT_TOKENIZER = REPO / "include" / "tokenizers" / "20B_tokenizer.json"

sys.path.insert(0, str(CLUSTER))
import mmidx_dataset  # noqa: E402

# Plain HF encode_batch baseline: the simplest correct script a user would write (same output format).
HF_BASELINE = r"""
import json, sys
sys.path.insert(0, sys.argv[4])
import mmidx, mmidx_dataset, numpy as np
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[2])
eod = tok.token_to_id("<|endoftext|>")
w = mmidx_dataset.DatasetWriter(sys.argv[3], mmidx.best_fitting_dtype(tok.get_vocab_size()))
def flush(batch):
    for enc in tok.encode_batch(batch):
        w.add_document(enc.ids + [eod])
batch = []
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        text = json.loads(line)["text"]
        if text:
            batch.append(text)
        if len(batch) == 1000:
            flush(batch); batch = []
flush(batch)
w.close()
"""


def _paragraphs() -> list[str]:
    paras: list[str] = []
    root = Path("/usr/share/doc")
    for path in sorted(root.glob("*/*"))[:4000] if root.is_dir() else []:
        try:
            if path.suffix == ".gz":
                text = gzip.open(path, "rt", errors="ignore").read()
            elif path.is_file() and path.stat().st_size < 500_000:
                text = path.read_text(errors="ignore")
            else:
                continue
        except OSError:
            continue
        for p in text.split("\n\n"):
            p = p.strip()
            letters = sum(c.isalpha() or c == " " for c in p)
            if len(p) > 80 and letters > 0.8 * len(p):  # prose-like
                paras.append(p)
    if len(paras) < 1000:  # no docs on this machine: synthetic words
        rng = random.Random(1)
        words = [
            "".join(rng.choice("etaoinshrdlucmfwypvbgkqjxz") for _ in range(rng.randint(1, 9)))
            for _ in range(5000)
        ]
        paras = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) + "." for _ in range(20000)]
    return paras


_NON_ASCII = ["café", "naïve", "“quoted”", "it’s", "—", "東京都", "Привет мир", "👩‍👩‍👧", "½ €5"]


def make_input(path: Path, docs: int, seed: int = 0, distinct: bool = False) -> int:
    """Write ``docs`` C4-format JSON lines to ``path``; returns the UTF-8 bytes of the text fields.

    Paragraphs are drawn with replacement (package docs repeat licence texts too: ~30% of the bytes
    of 20k documents are paragraphs met before), or with ``distinct`` each distinct paragraph once,
    in random order, as in C4, which drops repeated three-sentence spans (the pool is reshuffled if
    it runs out: ~156k distinct paragraphs here, ~45k documents)."""
    rng = random.Random(seed)
    paras = _paragraphs()
    if distinct:
        pool = sorted(set(paras))
        rng.shuffle(pool)

        def each_once() -> Iterator[str]:
            while True:
                yield from pool
                rng.shuffle(pool)

        draw = each_once().__next__
    else:
        draw = functools.partial(rng.choice, paras)
    total = 0
    with open(path, "w", encoding="utf-8") as f:
        for i in range(docs):
            text = "\n".join(draw() for _ in range(rng.randint(1, 6)))
            if rng.random() < 0.1:
                words = text.split(" ")
                for _ in range(3):
                    words.insert(rng.randrange(len(words) + 1), rng.choice(_NON_ASCII))
                text = " ".join(words)
            total += len(text.encode("utf-8"))
            rec = {"text": text, "timestamp": "2019-04-25T12:57:54Z", "url": f"https://example.com/{i}"}
            f.write(json.dumps(rec) + "\n")
    return total


def timed(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> tuple[float, int]:
    """Run ``cmd``; return (wall seconds, peak RSS of its process tree in bytes). Raises on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, peak


def same_files(a: str, b: str) -> bool:
    return all(filecmp.cmp(f"{a}{ext}", f"{b}{ext}", shallow=False) for ext in (".bin", ".idx"))


def tool_commands(
    args, src: Path, work: Path, tag: str
) -> dict[str, tuple[list[str], dict | None, Path | None, str]]:
    """Each tool's command line on ``src``: (argv, env, cwd, output prefix of its text documents)."""
    ours, hf, neox = str(work / f"{tag}ours"), str(work / f"{tag}hf_text_document"), str(work / f"{tag}neox")
    commands: dict[str, tuple[list[str], dict | None, Path | None, str]] = {
        "ours": (
            [sys.executable, str(CLUSTER / "preprocess_data.py"), "--input", str(src), "--tokenizer-type",
             "HFTokenizer", "--vocab-file", args.tokenizer, "--append-eod", "--output-prefix", ours,
             "--dataset-impl", "mmap", "--workers", str(args.workers), "--log-interval", "1000000"],
            None, None, ours + "_text_document"),
        "hf_encode_batch": (
            [sys.executable, "-c", HF_BASELINE, str(src), args.tokenizer, hf, str(CLUSTER)],
            dict(os.environ, TOKENIZERS_PARALLELISM="true", RAYON_NUM_THREADS=str(args.workers)), None, hf),
    }  # fmt: skip
    if args.neox:
        commands["neox"] = (
            [args.neox_python, "tools/datasets/preprocess_data.py", "--input", str(src), "--tokenizer-type",
             "HFTokenizer", "--vocab-file", args.tokenizer, "--append-eod", "--output-prefix", neox,
             "--dataset-impl", "mmap", "--workers", str(args.workers), "--log-interval", "1000000"],
            None, Path(args.neox), neox + "_text_document")  # fmt: skip
    return commands


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=20000, help="documents to generate (default 20000)")
    p.add_argument("--input", help="use this .jsonl instead of generating one")
    p.add_argument(
        "--distinct",
        action="store_true",
        help="generate documents from distinct paragraphs (as in deduplicated C4; default: drawn with "
        "replacement, so some repeat)",
    )
    p.add_argument("--workers", type=int, default=2, help="--workers for our script and NeoX's")
    p.add_argument("--repeat", type=int, default=1, help="runs of each tool, interleaved; medians reported")
    p.add_argument("--tokenizer", default=str(DEFAULT_TOKENIZER))
    p.add_argument("--neox", help="a GPT-NeoX checkout: also run its tools/datasets/preprocess_data.py")
    p.add_argument("--neox-python", default=sys.executable, help="python with NeoX's deps (lm_dataformat..)")
    p.add_argument("--workdir", help="keep inputs/outputs here (default: a temporary folder)")
    p.add_argument(
        "--startup",
        action="store_true",
        help="also time each tool on the input's first document alone (its start-up) and print the "
        "ratios without it",
    )
    args = p.parse_args(argv)

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_tokenize_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.input:
        src = Path(args.input)
        text_bytes = sum(len(json.loads(line)["text"].encode()) for line in open(src, encoding="utf-8"))
    else:
        src = work / ("c4-bench-distinct.jsonl" if args.distinct else "c4-bench.jsonl")
        text_bytes = make_input(src, args.docs, distinct=args.distinct)
    print(f"input {src}: {text_bytes / 1e6:.1f} MB of text, cores {os.cpu_count()}, workers {args.workers}")

    commands = tool_commands(args, src, work, "")
    walls: dict[str, list[float]] = {name: [] for name in commands}
    peaks: dict[str, int] = {name: 0 for name in commands}
    startups: dict[str, list[float]] = {name: [] for name in commands}
    if args.startup:  # the same tools on the input's first document: their start-up cost
        one = work / "one-document.jsonl"
        with open(src, encoding="utf-8") as f:
            one.write_text(f.readline(), encoding="utf-8")
        startup_commands = tool_commands(args, one, work, "startup_")
    for _ in range(args.repeat):  # interleaved, so a slow spell of the machine hits every tool
        for name, (cmd, env, cwd, _prefix) in commands.items():
            wall, rss = timed(cmd, cwd=cwd, env=env)
            walls[name].append(wall)
            peaks[name] = max(peaks[name], rss)
            if args.startup:
                cmd1, env1, cwd1, _ = startup_commands[name]
                startups[name].append(timed(cmd1, cwd=cwd1, env=env1)[0])
    results = {name: (statistics.median(walls[name]), peaks[name], c[3]) for name, c in commands.items()}
    if args.repeat > 1:
        for name, ws in walls.items():
            print(f"{name:<16} wall s per run: {', '.join(f'{w:.2f}' for w in ws)}")
    tokens = mmidx_dataset.DatasetReader(results["ours"][2]).num_tokens
    print(f"{'tool':<16} {'wall s':>8} {'M tok/s':>8} {'MB/s':>7} {'peak RSS MB':>12}  output")
    for name, (wall, rss, prefix) in results.items():
        same = "reference" if name == "ours" else (
            "byte-identical" if same_files(prefix, results["ours"][2]) else "DIFFERENT")  # fmt: skip
        print(f"{name:<16} {wall:8.2f} {tokens / wall / 1e6:8.3f} {text_bytes / wall / 1e6:7.2f} "
              f"{rss / 2**20:12.0f}  {same}")  # fmt: skip
    for base in ("hf_encode_batch", "neox"):
        if base in results:
            runs = " (median wall times)" if args.repeat > 1 else ""
            print(f"speed-up ours vs {base}: {results[base][0] / results['ours'][0]:.2f}x{runs}")
    if args.startup:
        start = {name: statistics.median(ws) for name, ws in startups.items()}
        print("start-up (one document) median s: " + ", ".join(f"{n} {w:.2f}" for n, w in start.items()))
        ours_rest = results["ours"][0] - start["ours"]
        for base in ("hf_encode_batch", "neox"):
            if base in results and ours_rest > 0:
                rest = results[base][0] - start[base]
                print(f"speed-up ours vs {base} without start-up: {rest / ours_rest:.2f}x "
                      "(roughly what a long shard gets)")  # fmt: skip
    identical = all(same_files(r[2], results["ours"][2]) for r in results.values())
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
