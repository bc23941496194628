"""Stand-in for GPT-NeoX's train.py on the CPU-only local Slurm cluster: same inputs, same outputs.

    python standin_train.py --config merged.json          # one process per Slurm task (srun)

Why it exists: the embedded cluster and the demo have no GPUs, DeepSpeed or containers, yet everything
around training (launch template, log watcher, checkpoint sensor, export, resume) must be exercised for
real. So this script reads the merged NeoX config and the ``.bin/.idx`` data, trains a real GPT-NeoX
architecture model (standin_model) data-parallel over torch.distributed/gloo with one rank per task, and
writes NeoX's log lines, resume lines and checkpoint layout. Rank 0 alone logs and saves.

Contract with the rest of the pipeline:
- ranks from RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, else SLURM_PROCID/SLURM_NTASKS/
  SLURM_LOCALID and the first host of SLURM_JOB_NODELIST; one process when neither is set;
- resume from ``load/latest`` restores iteration, model, optimizer, LR schedule and data position, so a
  resumed run logs exactly the losses an uninterrupted run logs;
- GPT-NeoX's semantics wherever slicing a run depends on them (GPT-NeoX ea7aefd8, megatron/training.py
  ``train``/``pretrain``, megatron/data/data_utils.py), so that tests passing here do not hide work that
  real NeoX would lose:
  - ``exit_interval``: checked at every iteration, after that iteration's save and evaluation; when
    ``iteration % exit_interval == 0`` every rank passes a barrier and the job exits 0 WITHOUT the
    post-training code (no end-of-training save): stopping at an iteration that is not a save iteration
    loses the work since the last save, exactly as on GPUs;
  - no signal handler: SIGUSR1/SIGTERM kill the ranks (default action) and nothing is saved. The batch
    script's USR1 trap is the safety net, as in production;
  - the sample index is sized by ``train_iters x train_batch_size`` (standin_data), so another
    ``train_iters`` means another data order;
  - ``lr_decay_iters`` (default ``train_iters``) drives the LR schedule;
- exit 0 after the final checkpoint at ``train_iters`` or at ``exit_interval``; a config or data problem
  exits 2 naming the key or file; a ``latest`` that names an incomplete checkpoint exits 1 (never a
  silent restart from 0).

Environment knobs: STANDIN_NUM_THREADS (torch threads per rank, default 1: ranks share few cores),
STANDIN_DIST_TIMEOUT (seconds a rank waits for the others in a collective, default 600).
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

from standin_dist import DistEnv, dist_env
from standin_log import flops_per_iteration, format_train_line, format_validation_line, info_line

# --- pure helpers (no torch), tested directly -------------------------------------------------------------


def should_save(iteration: int, cfg: dict) -> bool:
    """NeoX: every checkpoint_factor iterations and at each of extra_save_iters."""
    factor = cfg.get("checkpoint_factor")
    return bool(factor and iteration % factor == 0) or iteration in (cfg.get("extra_save_iters") or [])


def exits_at(iteration: int, cfg: dict) -> bool:
    """NeoX's exit_interval test (megatron/training.py, train): a modulus, not a count of iterations.

    A run resumed at R with exit_interval E stops at the first multiple of E above R, not after E more
    iterations; ``exit_interval = S`` therefore stops any run resumed below S exactly at S.
    """
    interval = cfg.get("exit_interval")
    return bool(interval) and iteration % interval == 0


def keep_default_signal_actions() -> None:
    """SIGUSR1/SIGTERM keep (or get back) their default action: the process dies and saves nothing.

    Why: GPT-NeoX installs no handler for them, so a stand-in that saved on the signal would make a
    slice end look loss-free on the local cluster while real NeoX loses everything since the last save.
    """
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def clip_gradients(grads: list, max_norm: float) -> float:
    """Global-norm clipping like torch's clip_grad_norm_, without rescaling when nothing is clipped.

    torch multiplies every gradient by min(1, max/norm) unconditionally (to avoid a device sync); on a CPU
    that is a pass over the whole 50k-vocabulary model per step for a factor of exactly 1.0.
    """
    import torch

    norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0))
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        torch._foreach_mul_(grads, coef)
    return norm


def keep_freed_memory() -> None:
    """Ask glibc to reuse freed large blocks instead of returning them to the OS after every step.

    Why: each step allocates tens of MB (logits over the 50k vocabulary and their gradients); by default
    glibc maps and unmaps such blocks every time, and the page faults cost ~20% of a tiny model's step.
    mallopt(M_MMAP_THRESHOLD=-3 / M_TRIM_THRESHOLD=-1, 1 GiB) keeps them in the heap. No-op off glibc.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)
        libc.mallopt(-1, 1 << 30)
    except (OSError, AttributeError):
        pass


# --- training ---------------------------------------------------------------------------------------------


class Trainer:
    """One rank of the job. Build with a checked config; :meth:`run` returns the exit code."""

    def __init__(self, cfg: dict, config_path: str, env: DistEnv) -> None:
        import numpy as np  # noqa: F401 - fail early if the cluster env lacks it
        import standin_config as sc
        import torch
        from standin_data import SampleStream
        from standin_model import GPTNeoX, ModelShape, no_weight_decay
        from standin_optim import AdamW

        self.torch, self.cfg, self.config_path, self.env = torch, cfg, config_path, env
        torch.set_num_threads(int(os.environ.get("STANDIN_NUM_THREADS", "1")))
        self.batch = sc.train_batch_size(cfg, env.world_size)
        self.micro, self.gas = cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"]
        self.vocab = sc.padded_vocab_size(cfg)
        # NeoX sizes its indexes by the run (megatron/data/data_utils.py): train_iters x train_batch_size
        # training samples, (train_iters // eval_interval + 1) x eval_iters x train_batch_size validation ones
        self.stream = SampleStream(
            sc.data_paths(cfg),
            cfg["seq_length"],
            cfg["seed"],
            cfg["split"],
            num_samples=cfg["train_iters"] * self.batch,
        )
        self.valid, self.valid_note = None, None
        if cfg.get("eval_interval") and cfg.get("eval_iters"):
            valid_samples = (cfg["train_iters"] // cfg["eval_interval"] + 1) * cfg["eval_iters"] * self.batch
            try:
                self.valid = SampleStream(
                    sc.data_paths(cfg),
                    cfg["seq_length"],
                    cfg["seed"],
                    cfg["split"],
                    part=1,
                    num_samples=valid_samples,
                )
            except ValueError as exc:
                self.valid_note = f"standin_train: no evaluation: {exc}"
        torch.manual_seed(cfg["seed"])  # identical initial weights on every rank
        self.model = GPTNeoX(
            ModelShape(
                num_layers=cfg["num_layers"],
                hidden_size=cfg["hidden_size"],
                num_attention_heads=cfg["num_attention_heads"],
                padded_vocab_size=self.vocab,
                max_position_embeddings=cfg["max_position_embeddings"],
                rotary_pct=float(cfg["rotary_pct"]),
                rotary_emb_base=int(cfg["rotary_emb_base"]),
                gpt_j_residual=bool(cfg["gpt_j_residual"]),
                no_weight_tying=bool(cfg["no_weight_tying"]),
                layernorm_epsilon=float(cfg["layernorm_epsilon"]),
                hidden_dropout=float(cfg["hidden_dropout"]),
                attention_dropout=float(cfg["attention_dropout"]),
            )
        )
        self.params = list(self.model.parameters())
        named = list(self.model.named_parameters())
        decay = [p for n, p in named if not no_weight_decay(n)]
        plain = [p for n, p in named if no_weight_decay(n)]
        opt = cfg["optimizer"]["params"]
        groups = [
            {"params": decay, "weight_decay": float(cfg["weight_decay"])},
            {"params": plain, "weight_decay": 0.0},
        ]
        kwargs = {
            "lr": float(opt["lr"]),
            "betas": tuple(float(b) for b in opt.get("betas", (0.9, 0.999))),
            "eps": float(opt.get("eps", 1.0e-8)),
        }
        self.optimizer = AdamW(groups, **kwargs)
        self.scheduler = sc.AnnealingLR.from_config(cfg)
        self.iteration = 0
        self.consumed = 0
        self.flops = flops_per_iteration(cfg, self.vocab, self.batch)
        self.model_flops = flops_per_iteration(cfg, self.vocab, self.batch, model=True)
        self.peak_flops = float(cfg.get("peak_theoretical_tflops") or 0) * 1e12

    # rank 0 speaks for the job
    def log(self, message: str) -> None:
        if self.env.rank == 0:
            print(message, flush=True)

    def info(self, where: str, message: str) -> None:
        self.log(info_line(where, message))

    def resume(self) -> None:
        """NeoX's resume lines; restore everything that makes the continuation exact."""
        import standin_checkpoint as ck

        load = self.cfg.get("load")
        if load:
            found = ck.load_checkpoint(load)
            if found is None:
                self.info(
                    "standin_checkpoint.py:load_checkpoint",
                    f"Unable to find latest file at {Path(load) / ck.LATEST}, if trying to load latest "
                    "checkpoint please ensure this file exists or pass an explicit checkpoint tag when "
                    "loading a checkpoint.",
                )
                self.log("Unable to load checkpoint.")
            else:
                tag, state = found
                self.model.load_state_dict(state["module"])
                if not self.cfg.get("finetune"):
                    self.optimizer.load_state_dict(state["optimizer"])
                    for msg in self.scheduler.load_state_dict(
                        state["lr_scheduler"],
                        override=bool(self.cfg.get("override_lr_scheduler")),
                        use_checkpoint=bool(self.cfg.get("use_checkpoint_lr_scheduler")),
                    ):
                        self.log(msg)
                    self.iteration = int(state["iteration"])
                    self.consumed = int(state["data_position"]["consumed_samples"])
                self.log(f"  successfully loaded {Path(load) / tag / ck.MODEL_STATES}")
            self.log(f"Loading checkpoint and starting from iteration {self.iteration}")
        self.log(f"setting training data start iteration to {self.iteration}")

    def state(self) -> dict:
        import numpy as np

        torch = self.torch
        return {
            "module": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "iteration": self.iteration,
            "global_steps": self.iteration,
            "global_samples": self.consumed,
            "data_position": {
                "consumed_samples": self.consumed,
                "seed": self.cfg["seed"],
                "seq_length": self.cfg["seq_length"],
                "train_batch_size": self.batch,
            },
            "dp_world_size": self.env.world_size,
            "mp_world_size": 1,
            "skipped_steps": 0,
            "args": {**self.cfg, "padded_vocab_size": self.vocab},
            "torch_rng_state": torch.get_rng_state(),
            "np_rng_state": np.random.get_state(),
            "standin": True,
        }

    def save(self) -> None:
        import standin_checkpoint as ck

        if self.cfg.get("save") and self.env.rank == 0:
            ck.save_checkpoint(
                self.cfg["save"],
                self.iteration,
                self.state(),
                self.config_path,
                log=lambda m: self.info("standin_checkpoint.py:save_checkpoint", m),
            )

    def step(self) -> tuple[float, bool]:
        """One iteration (all micro-batches, gradient all-reduce, optimizer step).

        Returns (loss averaged over ranks, iteration was nan-skipped).
        """
        from standin_model import cross_entropy

        torch = self.torch
        torch.manual_seed(self.cfg["seed"] * 1009 + self.env.rank * 7919 + self.iteration)  # dropout
        self.model.train()
        lr = self.scheduler.lr_at(self.scheduler.num_iters)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad()
        total = 0.0
        for m in range(self.gas):
            first = self.consumed + m * self.env.world_size * self.micro + self.env.rank * self.micro
            tokens = torch.from_numpy(self.stream.batch(first, self.micro))
            logits = self.model(tokens[:, :-1])
            loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
            (loss / self.gas).backward()
            total += float(loss.detach())
        loss_value = total / self.gas
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        if self.env.world_size > 1:
            flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor([loss_value])])
            torch.distributed.all_reduce(flat)
            flat /= self.env.world_size
            offset = 0
            for p, g in zip(self.params, grads, strict=True):
                p.grad = flat[offset : offset + g.numel()].view_as(g)
                offset += g.numel()
            loss_value = float(flat[-1])
        nan = not math.isfinite(loss_value)
        if not nan:
            clip = self.cfg.get("gradient_clipping")
            if clip:
                clip_gradients([p.grad for p in self.params], float(clip))
            self.optimizer.step()
        self.scheduler.num_iters += 1
        self.iteration += 1
        self.consumed += self.batch
        return loss_value, nan

    def evaluate(self) -> None:
        """NeoX's periodic validation: eval_iters micro-batches per rank, loss averaged over the job.

        The samples of the k-th evaluation follow from k alone, so a resumed run evaluates on the same
        batches an uninterrupted one would.
        """
        from standin_model import cross_entropy

        torch, cfg = self.torch, self.cfg
        per_eval = cfg["eval_iters"] * self.micro * self.env.world_size
        base = (self.iteration // cfg["eval_interval"] - 1) * per_eval
        self.model.eval()
        total = 0.0
        with torch.no_grad():
            for k in range(cfg["eval_iters"]):
                first = base + k * self.micro * self.env.world_size + self.env.rank * self.micro
                tokens = torch.from_numpy(self.valid.batch(first, self.micro))
                logits = self.model(tokens[:, :-1])
                total += float(cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)))
        self.model.train()
        loss = torch.tensor([total / cfg["eval_iters"]])
        if self.env.world_size > 1:
            torch.distributed.all_reduce(loss)
            loss /= self.env.world_size
        self.log(format_validation_line(self.iteration, float(loss)))

    def run(self) -> int:
        cfg = self.cfg
        self.log(f" > number of parameters on model parallel rank 0: {sum(p.numel() for p in self.params)}")
        self.log(
            f"standin_train: {self.env.world_size} rank(s), master {self.env.master_addr}:"
            f"{self.env.master_port}, train_batch_size {self.batch}, padded vocab {self.vocab}, "
            f"torch threads {self.torch.get_num_threads()}"
        )
        self.log(f" > standin sample index {self.stream.index_name()} ({self.stream.num_samples} samples)")
        self.resume()
        if self.valid_note:
            self.log(self.valid_note)
        self.log("done with setups ...")
        self.log("training ...")
        losses, nans, last_log, since = [], 0, time.perf_counter(), 0
        saved_at = self.iteration if cfg.get("load") and self.iteration else None
        while self.iteration < cfg["train_iters"]:
            loss, nan = self.step()
            since += 1
            if nan:
                nans += 1
            else:
                losses.append(loss)
            if self.iteration % cfg["log_interval"] == 0:
                now = time.perf_counter()
                per_iter = (now - last_log) / since
                per_gpu = per_iter * self.env.world_size
                self.log(
                    format_train_line(
                        iteration=self.iteration,
                        train_iters=cfg["train_iters"],
                        elapsed_ms=per_iter * 1000.0,
                        samples_per_sec=self.batch / per_iter,
                        lr=self.scheduler.lr_at(self.scheduler.num_iters),
                        flops_per_gpu=self.flops / per_gpu,
                        lm_loss=sum(losses) / len(losses) if losses else float("nan"),
                        skipped=nans,
                        nans=nans,
                        utilisation=(
                            100 * self.model_flops / per_gpu / self.peak_flops,
                            100 * self.flops / per_gpu / self.peak_flops,
                        )
                        if self.peak_flops
                        else None,
                    )
                )
                losses, nans, last_log, since = [], 0, now, 0
            # NeoX's order (megatron/training.py, train): log, save, evaluate, then the exit_interval test
            if should_save(self.iteration, cfg):
                self.save()
                saved_at = self.iteration
            if self.valid is not None and self.iteration % cfg["eval_interval"] == 0:
                self.evaluate()
            if exits_at(self.iteration, cfg):
                if self.env.world_size > 1:
                    self.torch.distributed.barrier()
                self.log(
                    f"rank: {self.env.rank} | time: {datetime.now():%Y-%m-%d %H:%M:%S} | "
                    f"exiting the program at iteration {self.iteration}"
                )
                return 0  # like NeoX's sys.exit(): no post-training save
        if saved_at != self.iteration:
            self.save()  # NeoX's post-training save (pretrain): the end of training is always saved
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="merged NeoX config (strict JSON)")
    args = parser.parse_args(argv)
    keep_default_signal_actions()
    keep_freed_memory()
    import standin_config as sc

    try:
        cfg = sc.load_config(args.config)
        env = dist_env()
    except (sc.ConfigError, ValueError) as exc:
        print(f"standin_train: {exc}", file=sys.stderr, flush=True)
        return 2
    import torch.distributed as dist

    if env.world_size > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://{env.master_addr}:{env.master_port}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=int(os.environ.get("STANDIN_DIST_TIMEOUT", "600"))),
        )
    try:
        import mmidx
        import standin_checkpoint as ck

        try:
            trainer = Trainer(cfg, args.config, env)
        except (sc.ConfigError, FileNotFoundError, mmidx.CorruptDatasetError) as exc:
            print(f"standin_train: {exc}", file=sys.stderr, flush=True)
            return 2
        try:
            code = trainer.run()
        except ck.CheckpointError as exc:
            print(f"standin_train: cannot resume: {exc}", file=sys.stderr, flush=True)
            return 1
        if env.world_size > 1:
            dist.barrier()  # nobody leaves before rank 0 has committed the last checkpoint
        return code
    finally:
        if env.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
