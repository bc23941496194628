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

Artefacts (logs, listings, parsed progress, rendered config and script; text only) go to
``<out>/<scenario>.tar.gz``; they become the fixtures under tests/fixtures/gpu-runs/.
Exit status: 0 when every scenario held all its promises, 1 otherwise (the reasons are printed).
"""

from __future__ import annotations

import argparse
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
from neoxflow.neox.config import build_run_config  # noqa: E402
from neoxflow.neox.launch import launch_spec_for_run, render_batch_script  # noqa: E402
from neoxflow.neox.logparse import clean_line, training_verdict  # noqa: E402
from neoxflow.neox.progress import compute_progress, summary_line  # noqa: E402
from neoxflow.neox.report import analyse_run  # noqa: E402

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


@dataclass(frozen=True)
class Leg:
    """One launch of a scenario: its train_iters and what it must show."""

    name: str
    train_iters: int
    resumed_from: int  # 0 = fresh start
    complete: tuple[int, ...]  # the complete checkpoints expected after it
    timeout_s: float


@dataclass(frozen=True)
class Scenario:
    name: str
    size: str
    gpus: int
    overrides: dict[str, Any]
    legs: tuple[Leg, ...]


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
        Scenario("pythia-160m", "160M", 1, PYTHIA_160M_OVERRIDES, (Leg("fresh", 50, 0, (50,), 420),)),
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
    """Apply the verdict and the scenario's promises to one finished job."""
    f = Findings()
    state = result.follower.state
    text = Path(result.log_path).read_text(encoding="utf-8", errors="replace")
    complete = [c.iteration for c in complete_checkpoints(result.listing, expect)]
    verdict = training_verdict(state, leg.train_iters, result.exit_code, complete)
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
    f.expect(not result.timed_out, f"the job ran past {leg.timeout_s:.0f} s and was killed")
    f.expect(verdict.finished, f"verdict is {verdict.status}: {verdict.reason}")
    f.expect(
        analysis["verdict"]["status"] == verdict.status,
        f"analyse_run says {analysis['verdict']['status']} but the live watcher says {verdict.status}",
    )
    f.expect(
        steps and steps[-1] == leg.train_iters, f"last logged iteration {steps[-1:]} != {leg.train_iters}"
    )
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
        env={"CXX": emulate.SYSTEM_CXX, "NCCL_NVLS_ENABLE": "0"},
    )
    emulate.stage_fsx(profile, data_prefix=args.data_prefix, tokenizer=args.tokenizer)
    run_name = f"gpucheck-{scenario.name}"
    summary: dict[str, Any] = {
        "scenario": scenario.name,
        "size": scenario.size,
        "gpus": scenario.gpus,
        "legs": [],
    }
    arts.mkdir(parents=True, exist_ok=True)
    for k, leg in enumerate(scenario.legs):
        print(f"== {scenario.name} / {leg.name}: train_iters {leg.train_iters}", flush=True)
        run = build_run_config(
            scenario.size,
            profile,
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
        leg_summary.update(
            job_id=job_id,
            config_hash=run.config_hash,
            batch={
                "train_batch_size": run.config.get("train_batch_size"),
                "micro": run.config.get("train_micro_batch_size_per_gpu"),
                "gas": run.config.get("gradient_accumulation_steps"),
            },
            resume_plan={"action": plan.action, "iteration": plan.iteration, "reason": plan.reason},
            **findings.facts,
            failures=findings.failures,
        )
        shutil.copyfile(result.log_path, arts / f"{leg.name}.log")
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
        if result.timed_out or not findings.facts["verdict"]["status"] == "finished":
            break
    (arts / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


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
        bad = summary.get("error") or [x for leg in summary["legs"] for x in leg.get("failures", [])]
        if bad or not summary["legs"]:
            failed.append(name)
        print(f"== {name}: {'FAILED' if name in failed else 'all promises held'}", flush=True)
    print(
        f"gpu_check: {len(args.scenarios) - len(failed)}/{len(args.scenarios)} scenarios passed", flush=True
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
