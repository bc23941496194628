#!/usr/bin/env python3
"""The GPU proof: real GPT-NeoX trained through neoxflow's config, launch template and watcher.

Run by gpu_check/run_check.sh on a machine with GPUs (see gpu_check/README.md). Each scenario:

1. renders the run's config with ``build_run_config`` (production ``aws`` profile, this machine's
   paths) and refuses to start on any config error, checking that PyYAML reads it as JSON does;
2. asks the checkpoint rule what a (re)launch must do with ``latest`` (``resume_plan``) and applies it;
3. renders the batch script with ``render_batch_script`` (template ``train.sbatch``) and runs it with
   Slurm's batch environment and the srun/scontrol shims (emulate.py), following the live log with
   ``LogFollower`` and judging the save folder poll by poll with the completeness rule;
4. decides the verdict with ``training_verdict`` (and ``analyse_run`` on the whole log: they must
   agree) and checks what the scenario promises: a fresh start, a resume from ``latest`` that continues
   the iteration count, every rank present, the checkpoints complete.
5. ``tiny-slices`` (issue 17, item 10) also plans slices with ``plan_slice_for_config`` (the operator's
   ``exit_interval``), checks the planned stop (``exited_at``, verdict ``slice_end``), and compares the
   sliced run's lm_loss at every logged iteration with two uninterrupted runs' (``compare_losses``) and
   their checkpoints' tensors (``compare_checkpoints``).

Artefacts (logs, listings, parsed progress, rendered config and script; text only) go to
``<out>/<scenario>.tar.gz``; they become the fixtures under tests/fixtures/gpu-runs/.
Exit status: 0 when every scenario held all its promises, 1 otherwise (the reasons are printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import emulate  # noqa: E402
import yaml  # noqa: E402

from neoxflow.neox.checkpoints import Expectation, complete_checkpoints, resume_plan, scan_local  # noqa: E402
from neoxflow.neox.config_files import config_hash, merge_config, render_config  # noqa: E402
from neoxflow.neox.launch import launch_spec_for_run, render_batch_script  # noqa: E402
from neoxflow.neox.logparse import clean_line, parse_text  # noqa: E402
from neoxflow.neox.logstate import LogState  # noqa: E402
from neoxflow.neox.memory import estimate_memory  # noqa: E402
from neoxflow.neox.progress import compute_progress, summary_line  # noqa: E402
from neoxflow.neox.report import analyse_run  # noqa: E402
from neoxflow.neox.run_config import build_run_config  # noqa: E402
from neoxflow.neox.slices import SliceTimes, exited_at, plan_slice_for_config  # noqa: E402
from neoxflow.neox.verdict import training_verdict  # noqa: E402

#: A tiny Pythia-architecture model (the shape of tests/fixtures/neox-run/tiny-config.json) on the
#: 14M size file: pipeline engine on (pipe_parallel_size 1, as Pythia) so the end-of-training crash
#: (exit 1 after the final checkpoint) is exercised; ZeRO-1 so optimizer shards per rank are checked.
TINY_OVERRIDES: dict[str, Any] = {
    "num_layers": 2,
    "hidden_size": 128,
    "num_attention_heads": 4,
    "seq_length": 256,
    "max_position_embeddings": 256,
    "norm": "layernorm",
    "attention_config": [[["global"], 2]],  # no flash-attn in the image
    "scaled_upper_triang_masked_softmax_fusion": False,  # no NeoX fused kernels in the image
    "pipe_parallel_size": 1,
    "model_parallel_size": 1,
    "zero_optimization": {"stage": 1},
    "train_batch_size": 16,
    "train_micro_batch_size_per_gpu": 8,
    "lr_decay_iters": 80,  # same schedule in both legs: the resume continues it
    "checkpoint_factor": 20,
    "extra_save_iters": None,
    "log_interval": 5,
    "steps_per_print": 5,
    "eval_interval": 100000,
    "eval_iters": 2,
    "split": "969,30,1",
    "seed": 1234,
    "num_workers": 1,
    "use_wandb": False,
}

#: The shipped 160M size file, changed only where this machine requires it (no flash-attn, no NeoX fused
#: kernels), where one GPU requires it (global batch 32 = micro batch cap 32 x 1: the 1024-sequence
#: Pythia batch would take ~20 s an iteration), and in length (50 iterations, one save at the end).
PYTHIA_160M_OVERRIDES: dict[str, Any] = {
    "attention_config": [[["global"], 12]],
    "scaled_upper_triang_masked_softmax_fusion": False,
    "train_batch_size": 32,
    "checkpoint_factor": 50,
    "extra_save_iters": None,
    "use_wandb": False,
}


#: Issue 21's comparison: the shipped size file at global batch 32 on one GPU (micro batch cap 32 x 1),
#: 50 iterations, one save at the end. Nothing about attention or fusion: the plan fits them to the image.
RECOMPUTE_OVERRIDES: dict[str, Any] = {
    "train_batch_size": 32,
    "checkpoint_factor": 50,
    "extra_save_iters": None,
    "use_wandb": False,
}
#: sitecustomize.py printing torch's peak allocated memory at exit (put on the ranks' PYTHONPATH)
PEAK_MEMORY_DIR = Path(__file__).resolve().parent / "peak_memory"
_PEAK = re.compile(r"gpu_check: max_memory_allocated (\d+) bytes")


#: The pace the slice planner is given in ``tiny-slices`` (not a measurement: fixed numbers, so that the
#: budgets below decide the stop). With the default 5 % slack, stopping after iteration S (resumed at R,
#: k saves) is expected at 1.05 x (10 + (S - R) x 1.0 + k x 2.0) s: 56.7 s for S = 40 (saves 20, 40),
#: 79.8 s for S = 60. A 70 s budget therefore stops slice 1 at 40, as a time limit would on a cluster.
SLICE_TIMES = SliceTimes(
    seconds_per_iteration=1.0, seconds_per_save=2.0, startup_s=10.0, source="gpu_check fixed pace"
)


@dataclass(frozen=True)
class Leg:
    """One launch of a scenario: its train_iters and what it must show."""

    name: str
    train_iters: int
    resumed_from: int  # 0 = fresh start
    complete: tuple[int, ...]  # the complete checkpoints expected after it
    timeout_s: float
    #: the run this leg belongs to (its own run name and save folder); legs of one run share them
    run: str = ""
    #: a slice of the run: its config gets plan_slice_for_config's overrides for this budget (seconds
    #: between the job's start and its USR1 stop signal), the operator's slice planning
    slice_budget_s: float | None = None
    #: where that plan must stop the slice (None: at train_iters, no exit_interval)
    stop_at: int | None = None
    #: the profile's neox.recompute for this leg (None: the scenario's)
    recompute: str | None = None

    @property
    def end(self) -> int:
        """The last iteration this leg must train and log."""
        return self.stop_at or self.train_iters


@dataclass(frozen=True)
class LossCheck:
    """Compare lm_loss at every logged iteration: two uninterrupted runs (their difference is the noise)
    and a run made of slices (each leg's log, in order), which must match the first within the noise."""

    first: str
    second: str
    sliced: tuple[str, ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    size: str
    gpus: int
    overrides: dict[str, Any]
    legs: tuple[Leg, ...]
    loss_check: LossCheck | None = None
    #: the profile's neox.recompute (issue 21): "on" keeps the size file's recomputation as shipped
    recompute: str = "auto"
    #: two legs to compare (as shipped, memory-aware): tokens/s, MFU, lm_loss, peak memory vs estimate
    compare: tuple[str, str] | None = None


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            "tiny-1gpu",
            "14M",
            1,
            TINY_OVERRIDES,
            (Leg("fresh", 60, 0, (20, 40, 60), 420), Leg("resume", 80, 60, (20, 40, 60, 80), 300)),
        ),
        Scenario(
            "tiny-2rank",
            "14M",
            2,
            TINY_OVERRIDES,
            (Leg("fresh", 60, 0, (20, 40, 60), 420), Leg("resume", 80, 60, (20, 40, 60, 80), 300)),
        ),
        Scenario(
            "pythia-160m",
            "160M",
            1,
            PYTHIA_160M_OVERRIDES,
            (Leg("fresh", 50, 0, (50,), 420),),
            recompute="on",
        ),
        # issue 21: the size file as shipped (recomputation on) against the plan's memory-aware choice for
        # this GPU, same global batch and data, each in its own save folder; attention and fusion are
        # rendered by the plan from what this machine's Python has (neither flash-attn nor fused kernels)
        *(
            Scenario(
                f"recompute-{size.lower()}",
                size,
                1,
                RECOMPUTE_OVERRIDES,
                (
                    Leg("shipped", 50, 0, (50,), 540, run="shipped", recompute="on"),
                    Leg("memory-aware", 50, 0, (50,), 540, run="memory", recompute="auto"),
                ),
                compare=("shipped", "memory-aware"),
            )
            for size in ("160M", "410M")
        ),
        # issue 17, item 10: the slice stop on real NeoX. Two uninterrupted runs to 80 (fresh save folders)
        # measure the run-to-run noise; the same request in two slices (stopped at 40 by the planner's
        # exit_interval, then resumed from `latest` with the same train_iters) must match them.
        Scenario(
            "tiny-slices",
            "14M",
            1,
            TINY_OVERRIDES,
            (
                Leg("uninterrupted-a", 80, 0, (20, 40, 60, 80), 240, run="a"),
                Leg("uninterrupted-b", 80, 0, (20, 40, 60, 80), 240, run="b"),
                Leg("slice1", 80, 0, (20, 40), 240, run="c", slice_budget_s=70.0, stop_at=40),
                Leg("slice2", 80, 40, (20, 40, 60, 80), 240, run="c", slice_budget_s=3600.0),
            ),
            LossCheck("uninterrupted-a", "uninterrupted-b", ("slice1", "slice2")),
        ),
    )
}


@dataclass
class Findings:
    """What a leg showed and which of its promises failed (empty ``failures`` = all held)."""

    facts: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def expect(self, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(message)


_GLOBAL_GPUS = re.compile(r"global_num_gpus \.+ (\d+)")
_LAUNCH_RANK = re.compile(r"neox_launch: rank (\d+)/(\d+)")


def ranks_in_log(text: str) -> dict[str, Any]:
    """The job's shape as its log shows it: srun task labels, neox_launch rank lines, NeoX's GPU count."""
    labels, launched, world = set(), set(), set()
    for raw in text.splitlines():
        rank, line = clean_line(raw)
        if rank is not None and raw.lstrip()[:1].isdigit():
            labels.add(rank)
        m = _LAUNCH_RANK.search(line)
        if m:
            launched.add(int(m.group(1)))
            world.add(int(m.group(2)))
        m = _GLOBAL_GPUS.search(line)
        if m:
            world.add(int(m.group(1)))
    return {"srun_labels": sorted(labels), "launched_ranks": sorted(launched), "world_sizes": sorted(world)}


def judge_leg(
    leg: Leg, scenario: Scenario, result: emulate.JobResult, expect: Expectation, cfg: dict
) -> Findings:
    """Apply the verdict and the scenario's promises to one finished job.

    A leg with ``stop_at`` is a slice told to stop there (exit_interval): its verdict must be the planned
    stop (``slice_end``: exit 0, NeoX's exit line at that iteration, the checkpoint there complete) and
    nothing past it may be logged or saved."""
    f = Findings()
    state = result.follower.state
    text = Path(result.log_path).read_text(encoding="utf-8", errors="replace")
    complete = [c.iteration for c in complete_checkpoints(result.listing, expect)]
    exited = exited_at(text)
    verdict = training_verdict(
        state, leg.train_iters, result.exit_code, complete, planned_stop=leg.stop_at, exited_at=exited
    )
    analysis = analyse_run(
        text,
        result.listing,
        expect,
        train_iters=leg.train_iters,
        exit_code=result.exit_code,
        seq_length=cfg.get("seq_length"),
    )
    progress = compute_progress(
        state,
        train_iters=leg.train_iters,
        seq_length=cfg.get("seq_length"),
        last_checkpoint=max(complete or [0]),
    )
    steps = [s.iteration for s in state.steps]
    later = state.steps[1:]  # the first interval after a start includes warm-up
    f.facts.update(
        exit_code=result.exit_code,
        timed_out=result.timed_out,
        wall_s=result.wall_s,
        verdict={"status": verdict.status, "reason": verdict.reason},
        analyse_run_verdict=analysis["verdict"]["status"],
        resumed_from=state.resumed_from,
        latest_missing=state.latest_missing,
        logged_iterations=steps,
        committed_lines=list(state.committed),
        complete_checkpoints=complete,
        progress=summary_line(progress),
        tflops_per_gpu_median_after_warmup=_median([s.tflops for s in later]),
        samples_per_sec_median_after_warmup=_median([s.samples_per_sec for s in later]),
        iter_ms_median_after_warmup=_median([s.elapsed_ms for s in later]),
        final_lm_loss=state.steps[-1].lm_loss if state.steps else None,
        shape=ranks_in_log(text),
    )
    if leg.stop_at is not None:
        f.facts.update(
            planned_stop=leg.stop_at, exited_at=exited, saved_tags=sorted(result.listing.get("tags", {}))
        )
    f.expect(not result.timed_out, f"the job ran past {leg.timeout_s:.0f} s and was killed")
    want = "slice_end" if leg.stop_at is not None else "finished"
    f.expect(verdict.status == want, f"verdict is {verdict.status}: {verdict.reason}")
    if leg.stop_at is None:  # analyse_run judges a whole run: it knows no planned stop
        f.expect(
            analysis["verdict"]["status"] == verdict.status,
            f"analyse_run says {analysis['verdict']['status']} but the live watcher says {verdict.status}",
        )
    else:
        f.expect(result.exit_code == 0, f"a planned stop exits 0 on every rank, got {result.exit_code}")
        f.expect(exited == leg.stop_at, f"NeoX printed its exit at iteration {exited}, not {leg.stop_at}")
        f.expect(
            not steps or max(steps) <= leg.stop_at, f"iterations past the stop {leg.stop_at} logged: {steps}"
        )
        later = [t for t in result.listing.get("tags", {}) if _tag_iteration(t) > leg.stop_at]
        f.expect(not later, f"checkpoints past the stop {leg.stop_at} in the save folder: {later}")
        f.expect(
            result.listing.get("latest") == f"global_step{leg.stop_at}",
            f"latest is {result.listing.get('latest')!r} after the stop at {leg.stop_at}",
        )
    f.expect(steps and steps[-1] == leg.end, f"last logged iteration {steps[-1:]} != {leg.end}")
    f.expect(
        set(leg.complete) <= set(complete),
        f"complete checkpoints {complete} lack {sorted(set(leg.complete) - set(complete))}",
    )
    if leg.resumed_from:
        f.expect(
            state.resumed_from == leg.resumed_from,
            f"NeoX resumed from {state.resumed_from}, not from latest = global_step{leg.resumed_from}",
        )
        f.expect(not state.latest_missing, "NeoX did not find `latest` on a resume")
        f.expect(
            bool(steps) and steps[0] > leg.resumed_from,
            f"first logged iteration {steps[:1]} does not continue",
        )
    else:
        f.expect(state.resumed_from in (None, 0), f"fresh start resumed from {state.resumed_from}")
        f.expect(state.latest_missing, "fresh start did not report a missing `latest`")
    shape = f.facts["shape"]
    ranks = list(range(scenario.gpus))
    f.expect(
        shape["launched_ranks"] == ranks, f"neox_launch started ranks {shape['launched_ranks']}, not {ranks}"
    )
    f.expect(shape["world_sizes"] == [scenario.gpus], f"world sizes in the log {shape['world_sizes']}")
    f.expect(shape["srun_labels"] == ranks, f"srun task labels {shape['srun_labels']}, not {ranks}")
    f.expect(expect.data_parallel == scenario.gpus, f"checkpoint rule expects dp {expect.data_parallel}")
    return f


def _tag_iteration(tag: str) -> int:
    m = re.fullmatch(r"global_step(\d+)", tag)
    return int(m.group(1)) if m else -1


def loss_curves(texts: dict[str, str], check: LossCheck) -> dict[str, list[tuple[int, float]]]:
    """lm_loss per logged iteration (neoxflow's parser) of the two uninterrupted runs and the sliced one.

    The sliced run's curve is its slices' curves in order; a slice must log only iterations after the
    previous slice's last one (a re-logged iteration would mean recomputed work)."""
    curves = {
        name: LogState.from_events(parse_text(texts[name])).loss_curve()
        for name in (check.first, check.second)
    }
    sliced: list[tuple[int, float]] = []
    for name in check.sliced:
        part = LogState.from_events(parse_text(texts[name])).loss_curve()
        if sliced and part and part[0][0] <= sliced[-1][0]:
            raise ValueError(
                f"{name} logs iteration {part[0][0]} again (the previous slice reached {sliced[-1][0]})"
            )
        sliced.extend(part)
    curves["sliced"] = sliced
    return curves


def compare_losses(texts: dict[str, str], check: LossCheck) -> dict[str, Any]:
    """The noise (max |first - second|), the sliced run's difference from the first (and the second) and
    the verdict: the sliced run passes when max |sliced - first| <= noise (bit-identical when noise is 0)."""
    result: dict[str, Any] = {"first": check.first, "second": check.second, "sliced": list(check.sliced)}
    try:
        curves = loss_curves(texts, check)
    except ValueError as err:
        return {**result, "failures": [str(err)]}
    first, second, sliced = curves[check.first], curves[check.second], curves["sliced"]
    iterations = [i for i, _ in first]
    failures = []
    if not iterations:
        failures.append(f"{check.first} logged no lm_loss")
    for name, curve in ((check.second, second), ("the sliced run", sliced)):
        if [i for i, _ in curve] != iterations:
            failures.append(
                f"{name} logged lm_loss at {[i for i, _ in curve]}, {check.first} at {iterations}"
            )
    if failures:
        return {**result, "iterations": iterations, "failures": failures}

    def max_diff(a, b):
        return max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True))

    noise, diff, diff_second = max_diff(first, second), max_diff(sliced, first), max_diff(sliced, second)
    if diff > noise:
        failures.append(
            f"the sliced run's lm_loss differs from {check.first} by up to {diff:.3e}, more than the "
            f"run-to-run noise {noise:.3e} ({check.first} vs {check.second})"
        )
    return {
        **result,
        "iterations": iterations,
        "lm_loss": {
            check.first: [x for _, x in first],
            check.second: [x for _, x in second],
            "sliced": [x for _, x in sliced],
        },
        "noise_max_abs": noise,
        "bit_identical_uninterrupted": noise == 0.0,
        "sliced_vs_first_max_abs": diff,
        "sliced_vs_second_max_abs": diff_second,
        "bit_identical_sliced": diff == 0.0,
        "passed": not failures,
        "failures": failures,
    }


def tensor_digests(checkpoint_dir: str) -> dict[str, dict[str, str]]:
    """sha256 of the tensors of each ``*.pt`` file of one checkpoint tag (model layers; the optimizer state
    with the fp32 master weights and Adam moments; the model-states file with the RNG and scheduler
    state), per file and per entry (key path two levels deep), walked in a fixed order with their key
    paths; other values (paths, args) are left out. Needs torch (and deepspeed, whose objects the files
    pickle)."""
    import hashlib

    import torch  # noqa: PLC0415 - only on the GPU machine

    def walk(obj, path, found, seen=()):
        if id(obj) in seen or len(seen) > 32:  # a cycle, or deeper than any checkpoint nests
            return
        seen = (*seen, id(obj))
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            entry = "/".join(path.split("/")[:3]) or "/"
            h = found.setdefault(entry, hashlib.sha256())
            h.update(f"{path}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, dict):
            for key in sorted(obj, key=str):
                walk(obj[key], f"{path}/{key}", found, seen)
        elif isinstance(obj, (list, tuple)):
            for i, item in enumerate(obj):
                walk(item, f"{path}/{i}", found, seen)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            walk(vars(obj), f"{path}/.{type(obj).__name__}", found, seen)

    digests = {}
    for file in sorted(Path(checkpoint_dir).glob("*.pt")):
        found: dict[str, Any] = {}
        walk(torch.load(file, map_location="cpu", weights_only=False), "", found)
        digests[file.name] = {entry: h.hexdigest() for entry, h in sorted(found.items())}
    return digests


def _is_weight_file(name: str) -> bool:
    """Model layers and ZeRO optimizer shards: the trained state itself (not RNG, scheduler, counters)."""
    return name.startswith("layer_") or name.endswith("_optim_states.pt")


def _differing(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]]) -> list[str]:
    entries = {(f, e) for f, d in a.items() for e in d} | {(f, e) for f, d in b.items() for e in d}
    return sorted(f"{f}:{e}" for f, e in entries if a.get(f, {}).get(e) != b.get(f, {}).get(e))


def compare_checkpoints(save_dirs: dict[str, str], check: LossCheck, tags: tuple[str, ...]) -> dict[str, Any]:
    """Tensor digests of the same checkpoint tags of the two uninterrupted runs and the sliced run (its
    last slice's save folder). A failure only when the model or optimizer tensors of the two uninterrupted
    runs agree bit for bit and the sliced run's do not (otherwise the runs are not bitwise reproducible
    and only the loss check counts); differences elsewhere (RNG, scheduler state) are recorded."""
    runs = {
        "first": save_dirs[check.first],
        "second": save_dirs[check.second],
        "sliced": save_dirs[check.sliced[-1]],
    }
    result: dict[str, Any] = {"tags": {}, "failures": []}
    for tag in tags:
        digests = {name: tensor_digests(str(Path(folder) / tag)) for name, folder in runs.items()}
        noise = _differing(digests["first"], digests["second"])
        sliced = _differing(digests["first"], digests["sliced"])
        weights = {name: {f: d for f, d in dg.items() if _is_weight_file(f)} for name, dg in digests.items()}
        weights_same = weights["first"] == weights["second"]
        result["tags"][tag] = {
            "files": {f: len(d) for f, d in digests["first"].items()},
            "file_digests": {name: {f: hashlib_of(d) for f, d in dg.items()} for name, dg in digests.items()},
            "uninterrupted_differ_in": noise,
            "sliced_differs_from_first_in": sliced,
            "weights_uninterrupted_identical": weights_same,
            "weights_sliced_identical": weights["sliced"] == weights["first"],
        }
        if weights_same and weights["sliced"] != weights["first"]:
            bad = [x for x in sliced if _is_weight_file(x.split(":", 1)[0])]
            result["failures"].append(f"{tag}: the sliced run's model/optimizer tensors differ in {bad}")
    return result


def hashlib_of(entries: dict[str, str]) -> str:
    """One digest for a file's entry digests (for the summary)."""
    import hashlib

    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def _median(values: list[float | None]) -> float | None:
    clean = sorted(v for v in values if v is not None and v == v)
    if not clean:
        return None
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def run_scenario(scenario: Scenario, args: argparse.Namespace, arts: Path, job_base: int) -> dict[str, Any]:
    """Every leg of ``scenario``; artefacts into ``arts``; returns the scenario summary."""
    root = Path(args.work) / scenario.name
    if root.exists():
        shutil.rmtree(root)
    fsx = root / "fsx"
    profile = emulate.gpu_profile(
        str(fsx),
        neox_dir=args.neox_dir,
        python=args.python,
        gpus=scenario.gpus,
        size=scenario.size,
        overrides=scenario.overrides,
        env={
            "CXX": emulate.SYSTEM_CXX,
            "NCCL_NVLS_ENABLE": "0",
            **({"PYTHONPATH": str(PEAK_MEMORY_DIR)} if scenario.compare else {}),
        },
        recompute=scenario.recompute,
        gpu_memory_gib=args.gpu_memory_gib,
    )
    emulate.stage_fsx(profile, data_prefix=args.data_prefix, tokenizer=args.tokenizer)
    summary: dict[str, Any] = {
        "scenario": scenario.name,
        "size": scenario.size,
        "gpus": scenario.gpus,
        "legs": [],
    }
    arts.mkdir(parents=True, exist_ok=True)
    texts: dict[str, str] = {}
    save_dirs: dict[str, str] = {}
    for k, leg in enumerate(scenario.legs):
        print(f"== {scenario.name} / {leg.name}: train_iters {leg.train_iters}", flush=True)
        run_name = f"gpucheck-{scenario.name}" + (f"-{leg.run}" if leg.run else "")
        leg_profile = dataclasses.replace(profile, recompute=leg.recompute or scenario.recompute)
        run = build_run_config(
            scenario.size,
            leg_profile,
            run_name,
            overrides={"train_iters": leg.train_iters},
            dataset_id=emulate.DATASET_ID,
        )
        leg_summary: dict[str, Any] = {"leg": leg.name, "train_iters": leg.train_iters}
        summary["legs"].append(leg_summary)
        if not run.ok:
            leg_summary["failures"] = [f"config error: {e}" for e in run.errors]
            print("\n".join(leg_summary["failures"]), flush=True)
            break
        slice_facts = None
        if leg.slice_budget_s is not None:
            run, slice_facts = _plan_slice(run, leg, profile.cluster.stop_before_limit_s)
            leg_summary["slice"] = slice_facts
            print(f"== {scenario.name} / {leg.name}: slice plan: {slice_facts['reason']}", flush=True)
        eps = yaml.safe_load(run.rendered).get("optimizer", {}).get("params", {}).get("eps")
        Path(run.config_path).parent.mkdir(parents=True, exist_ok=True)
        Path(run.config_path).write_text(run.rendered, encoding="utf-8")
        (arts / f"{leg.name}.config.json").write_text(run.rendered, encoding="utf-8")
        expect = Expectation.from_neox_config(run.config, scenario.gpus)

        plan = resume_plan(scan_local(run.paths.checkpoint_dir), expect)
        _apply_plan(plan, run.paths.checkpoint_dir)
        spec, template = launch_spec_for_run(profile, run, job_name=run_name, code_dir=profile.code_dir)
        script = render_batch_script(spec, template)
        script_path = Path(run.paths.run_dir) / f"{run_name}-{leg.name}.sbatch"
        script_path.write_text(script, encoding="utf-8")
        (arts / f"{leg.name}.sbatch").write_text(script, encoding="utf-8")

        job_id = job_base + k
        result = emulate.run_batch_job(
            str(script_path),
            job_id=job_id,
            job_name=run_name,
            ntasks=spec.total_tasks,
            log_path=spec.job_log_path(job_id),
            save_dir=run.paths.checkpoint_dir,
            expect=expect,
            timeout_s=leg.timeout_s,
        )
        findings = judge_leg(leg, scenario, result, expect, run.config)
        findings.expect(isinstance(eps, float), f"optimizer.params.eps reads as {eps!r} under PyYAML")
        want_plan = "keep" if leg.resumed_from else "none"
        findings.expect(
            plan.action == want_plan, f"resume plan before launch was {plan.action}, not {want_plan}"
        )
        if slice_facts is not None:
            findings.expect(
                slice_facts["stop_iteration"] == leg.end,
                f"the slice plan stops at {slice_facts['stop_iteration']}, not at {leg.end}",
            )
            findings.expect(
                run.config.get("exit_interval") == leg.stop_at,
                f"the slice's config has exit_interval {run.config.get('exit_interval')}, not {leg.stop_at}",
            )
        leg_summary.update(
            job_id=job_id,
            config_hash=run.config_hash,
            batch={
                "train_batch_size": run.config.get("train_batch_size"),
                "micro": run.config.get("train_micro_batch_size_per_gpu"),
                "gas": run.config.get("gradient_accumulation_steps"),
            },
            resume_plan={"action": plan.action, "iteration": plan.iteration, "reason": plan.reason},
            recompute=run.recompute.to_dict() if run.recompute else None,
            **findings.facts,
            failures=findings.failures,
        )
        shutil.copyfile(result.log_path, arts / f"{leg.name}.log")
        texts[leg.name] = Path(result.log_path).read_text(encoding="utf-8", errors="replace")
        if scenario.compare:
            leg_summary.update(memory_facts(texts[leg.name], run.config, scenario.gpus))
        save_dirs[leg.name] = run.paths.checkpoint_dir
        (arts / f"{leg.name}.listing.json").write_text(json.dumps(result.listing, indent=1) + "\n")
        watch = {
            "polls": result.polls,
            "state": result.follower.state.to_dict(),
            "follower": {"offset": result.follower.offset, "lines": result.follower.lines},
        }
        (arts / f"{leg.name}.watch.json").write_text(json.dumps(watch, indent=1) + "\n")
        status = "OK" if not findings.failures else "FAILED: " + "; ".join(findings.failures)
        print(
            f"== {scenario.name} / {leg.name}: {findings.facts['verdict']['reason']} -> {status}", flush=True
        )
        if result.timed_out or findings.facts["verdict"]["status"] not in ("finished", "slice_end"):
            break
    check = scenario.loss_check
    if check is not None:
        if all(name in texts for name in (check.first, check.second, *check.sliced)):
            summary["loss_comparison"] = compare_losses(texts, check)
        else:
            summary["loss_comparison"] = {"failures": ["not every run of the loss comparison ran"]}
        cmp = summary["loss_comparison"]
        if not cmp["failures"]:
            try:
                tensors = compare_checkpoints(save_dirs, check, ("global_step40", "global_step80"))
            except Exception as exc:  # evidence beyond the promise: record why it is missing
                tensors = {"error": f"{type(exc).__name__}: {exc}", "failures": []}
            summary["checkpoint_tensors"] = tensors
            cmp["failures"].extend(tensors["failures"])
            cmp["passed"] = not cmp["failures"]
            for tag, facts in tensors.get("tags", {}).items():
                print(
                    f"== {scenario.name}: {tag} model/optimizer tensors: uninterrupted runs identical "
                    f"{facts['weights_uninterrupted_identical']}, sliced run identical "
                    f"{facts['weights_sliced_identical']}; entries differing A/B "
                    f"{facts['uninterrupted_differ_in']}, A/sliced {facts['sliced_differs_from_first_in']}",
                    flush=True,
                )
        print(
            f"== {scenario.name}: lm_loss noise {cmp.get('noise_max_abs')}, sliced vs "
            f"{check.first} {cmp.get('sliced_vs_first_max_abs')} -> "
            + ("OK" if not cmp["failures"] else "FAILED: " + "; ".join(cmp["failures"])),
            flush=True,
        )
    if scenario.compare:
        summary["comparison"] = compare_legs(summary, texts, scenario.compare)
        print(f"== {scenario.name}: {json.dumps(summary['comparison'])}", flush=True)
    (arts / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def memory_facts(text: str, cfg: dict, gpus: int) -> dict[str, Any]:
    """The plan's memory estimate for the config this leg ran, beside torch's peak allocated memory (the
    sitecustomize line) and NeoX's own MFU (median after the first log interval)."""
    est = estimate_memory(cfg, data_parallel=gpus)
    chosen = est.with_recompute if cfg.get("checkpoint_activations") else est.without_recompute
    peaks = [int(v) for v in _PEAK.findall(text)]
    peak = max(peaks) if peaks else None
    mfu = [step.mfu for step in LogState.from_events(parse_text(text)).steps]
    return {
        "memory_estimate_bytes": chosen,
        "max_memory_allocated_bytes": peak,
        "estimate_over_measured": round(chosen / peak, 4) if peak else None,
        "neox_mfu_median_after_warmup": _median(mfu[1:]),
        "checkpoint_activations": bool(cfg.get("checkpoint_activations")),
    }


def compare_legs(summary: dict[str, Any], texts: dict[str, str], names: tuple[str, str]) -> dict[str, Any]:
    """Tokens/s of the two legs and their ratio, lm_loss at every iteration both logged and the largest
    difference, and each leg's estimate against its measured peak memory."""
    legs = {leg["leg"]: leg for leg in summary["legs"]}
    if not all(name in legs and name in texts for name in names):
        return {"failures": ["not every leg of the comparison ran"]}
    base, new = (legs[name] for name in names)
    curves = [dict(LogState.from_events(parse_text(texts[name])).loss_curve()) for name in names]
    common = sorted(set(curves[0]) & set(curves[1]))
    seq = 2048
    speed = [leg.get("samples_per_sec_median_after_warmup") for leg in (base, new)]
    return {
        "tokens_per_sec": [None if v is None else round(v * seq, 1) for v in speed],
        "speedup": round(speed[1] / speed[0], 4) if all(speed) else None,
        "mfu": [leg.get("neox_mfu_median_after_warmup") for leg in (base, new)],
        "lm_loss": {str(i): [curves[0][i], curves[1][i]] for i in common},
        "lm_loss_max_abs_diff": max((abs(curves[0][i] - curves[1][i]) for i in common), default=None),
        "estimate_over_measured": [leg.get("estimate_over_measured") for leg in (base, new)],
        "failures": [],
    }


def _plan_slice(run, leg: Leg, stop_before_limit_s: float):
    """The operator's slice config (PipelineOperator._prepare_submit): the plan of
    ``plan_slice_for_config`` for this leg's resume point and budget, merged over the run's config, rendered
    and hashed anew; ``train_iters`` unchanged. Returns the slice's RunConfig and the plan's facts."""
    plan = plan_slice_for_config(
        run.config,
        resume_iteration=leg.resumed_from,
        times=SLICE_TIMES,
        time_limit_s=leg.slice_budget_s + stop_before_limit_s,
        stop_before_limit_s=stop_before_limit_s,
    )
    merged = merge_config(run.config, plan.config_overrides)
    rendered = render_config(merged)
    slice_run = dataclasses.replace(run, config=merged, rendered=rendered, config_hash=config_hash(rendered))
    facts = {
        "kind": plan.kind,
        "resume_iteration": plan.resume_iteration,
        "stop_iteration": plan.stop_iteration,
        "extra_save": plan.extra_save,
        "config_overrides": plan.config_overrides,
        "time_limit_s": leg.slice_budget_s + stop_before_limit_s,
        "stop_before_limit_s": stop_before_limit_s,
        "deadline_s": plan.deadline_s,
        "expected_end_s": plan.expected_end_s,
        "times": dataclasses.asdict(SLICE_TIMES),
        "reason": plan.reason,
    }
    return slice_run, facts


def _apply_plan(plan, save_dir: str) -> None:
    """Do what the DAG does with a resume plan before a launch (write or remove ``latest``)."""
    latest = Path(save_dir) / "latest"
    if plan.action == "write":
        latest.write_text(plan.content or "", encoding="utf-8")
    elif plan.action == "remove":
        latest.unlink(missing_ok=True)


def machine_facts(neox_dir: str, sources: str | None) -> dict[str, Any]:
    facts: dict[str, Any] = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        facts["gpus"] = [line.strip() for line in out.splitlines() if line.strip()]
    except FileNotFoundError:
        facts["gpus"] = []
    facts["python"] = sys.version.split()[0]
    if sources and os.path.isfile(sources):
        facts["sources"] = json.loads(Path(sources).read_text())
    return facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="+", choices=sorted(SCENARIOS), help="what to run, in order")
    parser.add_argument("--neox-dir", required=True, help="GPT-NeoX checkout (holds train.py)")
    parser.add_argument("--data-prefix", required=True, help="tokenized dataset prefix (.bin/.idx)")
    parser.add_argument("--tokenizer", required=True, help="20B_tokenizer.json")
    parser.add_argument("--work", default="/tmp/neoxflow-gpu-check", help="scratch folder ('FSx')")
    parser.add_argument("--out", required=True, help="where <scenario>.tar.gz artefacts go")
    parser.add_argument("--python", default=sys.executable, help="interpreter the ranks run")
    parser.add_argument("--sources", default=None, help="JSON naming the NeoX/DeeperSpeed commits")
    args = parser.parse_args(argv)
    # The launch template accepts only plain absolute paths: reach the checkout through one under --work.
    Path(args.work).mkdir(parents=True, exist_ok=True)
    link = Path(args.work) / "gpt-neox"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(os.path.abspath(args.neox_dir), target_is_directory=True)
    args.neox_dir = str(link)

    build = emulate.build_dataset_helper(args.neox_dir)
    print(f"dataset helper built with {emulate.SYSTEM_CXX}: exit {build.returncode}", flush=True)
    if build.returncode != 0:
        print(build.stdout[-2000:] + build.stderr[-2000:], flush=True)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    facts = machine_facts(args.neox_dir, args.sources)
    print(f"machine: {json.dumps(facts)}", flush=True)
    # the plan's recompute choice compares its estimate to this GPU's memory (nvidia-smi's MiB as GiB)
    memory = re.search(r",\s*(\d+) MiB", facts["gpus"][0]) if facts.get("gpus") else None
    args.gpu_memory_gib = round(int(memory.group(1)) / 1024, 1) if memory else None
    failed = []
    for i, name in enumerate(args.scenarios):
        arts = Path(args.work) / "artefacts" / name
        if arts.exists():
            shutil.rmtree(arts)
        try:
            summary = run_scenario(SCENARIOS[name], args, arts, job_base=1000 * (i + 1))
        except Exception as exc:  # keep going: the next scenario's evidence is still worth having
            summary = {"scenario": name, "legs": [], "error": f"{type(exc).__name__}: {exc}"}
            arts.mkdir(parents=True, exist_ok=True)
            (arts / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            print(f"== {name}: crashed: {summary['error']}", flush=True)
        summary["machine"] = facts
        (arts / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        with tarfile.open(out / f"{name}.tar.gz", "w:gz") as tar:
            tar.add(arts, arcname=name)
        bad = (
            summary.get("error")
            or [x for leg in summary["legs"] for x in leg.get("failures", [])]
            or summary.get("loss_comparison", {}).get("failures")
        )
        if bad or not summary["legs"]:
            failed.append(name)
        print(f"== {name}: {'FAILED' if name in failed else 'all promises held'}", flush=True)
    print(
        f"gpu_check: {len(args.scenarios) - len(failed)}/{len(args.scenarios)} scenarios passed", flush=True
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
