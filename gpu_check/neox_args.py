#!/usr/bin/env python3
"""Does GPT-NeoX accept what neoxflow renders? Every Pythia size at every shape, through NeoX's own checks.

For each size and each shape (nodes x GPUs per node: 1x1, 1x8, 2x8, 4x8, 16x8) this renders the run's
config the way the pipeline does (``build_run_config`` on the production ``aws`` profile), then, where
neoxflow accepts the shape, hands the file to NeoX's ``NeoXArgs.from_ymls`` with the world size, as
``include/cluster/neox_launch.py`` does on every rank (NeoX's type and value checks, its batch derivation).
No GPU is needed: NeoX's checks run on the CPU.

CI has no NeoX checkout, so the verdicts are recorded with each rendered config's hash into
``tests/fixtures/neox-args/verdicts.json``; ``tests/unit/test_neox_args_record.py`` fails when a rendered
config no longer matches its recorded hash (re-run this) or when NeoX refused a config neoxflow accepts.

    NEOX_CHECKOUT=<gpt-neox> NEOX_PYTHON=<python with NeoX's deps> NEOX_COMMIT=<its commit> \\
        .venv/bin/python gpu_check/neox_args.py [--out tests/fixtures/neox-args/verdicts.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "plugins"))

from neoxflow.neox.config_files import PYTHIA_SIZES  # noqa: E402
from neoxflow.neox.profile_loader import load_profile  # noqa: E402
from neoxflow.neox.run_config import build_run_config  # noqa: E402

SHAPES = ((1, 1), (1, 8), (2, 8), (4, 8), (16, 8))
RUN_NAME = "neox-args-check"
DATASET_ID = "0" * 16
OUT = REPO / "tests" / "fixtures" / "neox-args" / "verdicts.json"
#: NeoX reads flash-attn's installed version to pick its kernel for ``attention_config`` "flash"; the
#: checks need nothing else of it. The image's (docker/neox.Dockerfile) is declared, not installed (it
#: needs CUDA to build).
FLASH_ATTN_VERSION = "2.5.5"

#: Runs inside NeoX's environment: argv = world sizes and config paths, pairwise; prints one JSON verdict
#: per config. ``from_ymls`` is what deepy/neox_launch call; its errors are NeoX's refusals.
DRIVER = """
import json, sys
from megatron.neox_arguments import NeoXArgs
pairs = sys.argv[1:]
for world, path in zip(pairs[::2], pairs[1::2]):
    try:
        extra = {"user_script": "train.py", "global_num_gpus": int(world)}
        args = NeoXArgs.from_ymls([path], overwrite_values=extra)
        args.get_deepspeed_main_args()
        verdict = {"neox": "ok", "train_batch_size": args.train_batch_size,
                   "gradient_accumulation_steps": args.gradient_accumulation_steps}
    except BaseException as exc:  # NeoX refuses with asserts, ValueError, SystemExit...
        verdict = {"neox": "refused", "why": f"{type(exc).__name__}: {exc}"[:300]}
    print(json.dumps(verdict), flush=True)
"""


def rendered_configs(profile=None):
    """(size, shape label, RunConfig) for every size and shape, rendered as the pipeline renders them."""
    profile = profile or load_profile("aws", env={})
    for size in PYTHIA_SIZES:
        for nodes, gpus in SHAPES:
            cfg = build_run_config(
                size, profile, RUN_NAME, nodes=nodes, gpus_per_node=gpus, check_vocab_file=False,
                dataset_id=DATASET_ID,
            )  # fmt: skip
            yield size, f"{nodes}x{gpus}", cfg


def record() -> dict:
    checkout, python = os.environ["NEOX_CHECKOUT"], os.environ["NEOX_PYTHON"]
    entries, pending = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for size, shape, cfg in rendered_configs():
            entry = {"config_sha256": cfg.config_hash}
            if cfg.ok:
                path = Path(tmp) / f"{size}-{shape}.json"
                path.write_text(cfg.rendered)
                pending.append((size, shape, cfg.nodes * cfg.gpus_per_node, path))
            else:
                entry["neoxflow"] = "refused: " + "; ".join(f"{e.key}: {e.message}" for e in cfg.errors)[:300]
            entries.setdefault(size, {})[shape] = entry
        argv = [str(x) for _, _, world, path in pending for x in (world, path)]
        declared = Path(tmp) / "site" / f"flash_attn-{FLASH_ATTN_VERSION}.dist-info"
        declared.mkdir(parents=True)
        declared.joinpath("METADATA").write_text(
            f"Metadata-Version: 2.1\nName: flash-attn\nVersion: {FLASH_ATTN_VERSION}\n"
        )
        run = subprocess.run(
            [python, "-c", DRIVER, *argv], cwd=checkout, capture_output=True, text=True, check=False,
            env={**os.environ, "PYTHONPATH": f"{checkout}:{declared.parent}"},
        )  # fmt: skip
        verdicts = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
        if len(verdicts) != len(pending):
            raise SystemExit(
                f"NeoX's checks answered {len(verdicts)} of {len(pending)}:\n{run.stderr[-3000:]}"
            )
        for (size, shape, _, _), verdict in zip(pending, verdicts, strict=True):
            entries[size][shape].update({"neoxflow": "accepted", **verdict})
    return {
        "neox_commit": os.environ["NEOX_COMMIT"],
        "flash_attn_declared": FLASH_ATTN_VERSION,
        "profile": "aws",
        "shapes": [f"{n}x{g}" for n, g in SHAPES],
        "sizes": entries,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    result = record()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    refused = [
        (s, sh) for s, by in result["sizes"].items() for sh, e in by.items() if e.get("neox") == "refused"
    ]
    print(f"wrote {args.out}; NeoX refused {len(refused)} config(s) neoxflow accepted: {refused}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
