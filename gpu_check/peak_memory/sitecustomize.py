"""gpu_check only: print torch's peak allocated GPU memory when a training process exits.

Why: issue 21 holds neoxflow's memory estimate (plugins/neoxflow/neox/memory.py) to within 15% of
``torch.cuda.max_memory_allocated``. DeepSpeed logs that figure only with ``memory_breakdown``, which runs
``gc.collect()`` around every forward, backward and step and would slow the very throughput being measured.
Python imports ``sitecustomize`` at start-up from ``PYTHONPATH``; the recompute scenarios put this folder
there (gpu_check/check.py), so each rank prints one line at exit, after NeoX's final checkpoint. Nothing is
imported until exit, and nothing is printed by a process that never used CUDA.
"""

import atexit
import sys


def _report() -> None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return
    peak = torch.cuda.max_memory_allocated()
    reserved = torch.cuda.max_memory_reserved()
    print(
        f"gpu_check: max_memory_allocated {peak} bytes ({peak / 2**30:.2f} GiB), "
        f"max_memory_reserved {reserved} bytes ({reserved / 2**30:.2f} GiB), "
        f"device {torch.cuda.current_device()}",
        flush=True,
    )


atexit.register(_report)
