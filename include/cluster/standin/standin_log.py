"""GPT-NeoX's log lines, field for field, as the stand-in trainer prints them.

Why: the pipeline reads the trainer's log with the same parser in the local cluster and in production
(``neox/logparse.py``: progress, checkpoints, MFU), so the stand-in must print exactly what NeoX prints
(megatron/logging.py ``training_log``, ``evaluate_and_print_results``, DeepSpeed's ``[INFO]`` prefix).
Pure (no torch): tested directly.
"""

from __future__ import annotations

import math
from datetime import datetime


def human_readable_flops(num: float) -> str:
    """NeoX megatron/logging.py: 2.9TFLOPS, 286.9GFLOPS."""
    for unit in ["", "KFLOPS", "MFLOPS", "GFLOPS", "TFLOPS", "PFLOPS", "EFLOPS", "ZFLOPS"]:
        if abs(num) < 1000.0:
            return f"{num:3.1f}{unit}"
        num /= 1000.0
    return f"{num:.1f}Yi"


def flops_per_iteration(cfg: dict, vocab: int, batch: int, *, model: bool = False) -> float:
    """NeoX's estimate for one iteration of the whole job (megatron/logging.py): what the GPUs compute
    (``get_actual_flops``: x4 with activation recomputation), or with ``model`` the model's own FLOPs
    (``get_forward_backward_flops``: x3 always), the basis of MFU."""
    factor = 4 if cfg.get("checkpoint_activations") and not model else 3
    h, layers, s = cfg["hidden_size"], cfg["num_layers"], cfg["seq_length"]
    return 24 * factor * batch * s * layers * h**2 * (1.0 + s / (6.0 * h) + vocab / (16.0 * layers * h))


def format_train_line(
    *,
    iteration: int,
    train_iters: int,
    elapsed_ms: float,
    samples_per_sec: float,
    lr: float,
    flops_per_gpu: float,
    lm_loss: float,
    skipped: int,
    nans: int,
    utilisation: tuple[float, float] | None = None,
) -> str:
    """NeoX's training_log line, field for field (no 'loss scale': the stand-in trains in fp32);
    ``utilisation`` (MFU, HFU in percent) printed as NeoX does when ``peak_theoretical_tflops`` is set."""
    mfu_hfu = f" MFU: {utilisation[0]:.2f}% | HFU: {utilisation[1]:.2f}% |" if utilisation else ""
    return (
        f" samples/sec: {samples_per_sec:.3f} | iteration {iteration:8d}/{train_iters:8d} |"
        f" elapsed time per iteration (ms): {elapsed_ms:.1f} | learning rate: {lr:.3E} |"
        f" approx flops per GPU: {human_readable_flops(flops_per_gpu)} |{mfu_hfu} lm_loss: {lm_loss:.6E} |"
        f" number of skipped iterations: {skipped:3d} | number of nan iterations: {nans:3d} |"
    )


def format_validation_line(iteration: int, lm_loss: float) -> str:
    """NeoX's evaluate_and_print_results line (the loss and its perplexity, exp capped as NeoX does)."""
    ppl = math.exp(min(20.0, lm_loss))
    body = f" validation results at iteration {iteration} | lm_loss value: {lm_loss:.6E} | "
    return body + f"lm_loss_ppl value: {ppl:.6E} | "


def info_line(where: str, message: str) -> str:
    """DeepSpeed-style prefix, so the checkpoint lines read like NeoX's."""
    now = datetime.now()
    return f"[{now:%Y-%m-%d %H:%M:%S},{now.microsecond // 1000:03d}] [INFO] [{where}] {message}"
