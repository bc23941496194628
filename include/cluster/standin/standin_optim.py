"""AdamW (decoupled weight decay) in torch foreach ops, for the stand-in trainer.

Why not torch.optim.AdamW: constructing any torch.optim optimizer imports torch._dynamo, ~3 s of CPU per
rank at start-up on this 2-core machine, paid again by every test run and every resumed job. The math here
is torch's AdamW (and DeepSpeed FusedAdam with adam_w_mode, what NeoX's "Adam" means):

    p <- p * (1 - lr * wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

The update runs in ATen's fused CPU kernel (``torch._fused_adamw_``, what ``AdamW(fused=True)`` calls;
~7x faster than separate foreach passes over a 50k-vocabulary model) and falls back to foreach ops where
that kernel is missing. It is deterministic on CPU, so a resumed run repeats an uninterrupted one bit for
bit.
"""

from __future__ import annotations

import math

import torch


class AdamW:
    """``param_groups`` like torch's (dicts with params, lr, weight_decay); state is per parameter."""

    def __init__(
        self, groups: list[dict], lr: float, betas: tuple[float, float], eps: float, fused: bool | None = None
    ) -> None:
        self.fused = hasattr(torch, "_fused_adamw_") if fused is None else fused
        self.param_groups = [
            {"params": list(g["params"]), "weight_decay": float(g.get("weight_decay", 0.0)), "lr": lr}
            for g in groups
        ]
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.step_count = 0
        params = [p for g in self.param_groups for p in g["params"]]
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        self._steps = [torch.zeros((), dtype=torch.float32) for _ in params]  # the fused kernel's counters

    def zero_grad(self) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        b1, b2 = self.betas
        bc1, bc2 = 1.0 - b1**self.step_count, 1.0 - b2**self.step_count
        first = 0
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if len(params) != len(g["params"]):
                raise RuntimeError("AdamW.step: every parameter needs a gradient (data parallel all-reduce)")
            n = len(params)
            m, v = self.exp_avg[first : first + n], self.exp_avg_sq[first : first + n]
            first += n
            grads = [p.grad for p in params]
            lr, wd = g["lr"], g["weight_decay"]
            if self.fused:
                steps = self._steps[first - n : first]
                for t in steps:
                    t.fill_(float(self.step_count))
                torch._fused_adamw_(
                    params,
                    grads,
                    m,
                    v,
                    [],
                    steps,
                    lr=lr,
                    beta1=b1,
                    beta2=b2,
                    weight_decay=wd,
                    eps=self.eps,
                    amsgrad=False,
                    maximize=False,
                )
                continue
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            torch._foreach_lerp_(m, grads, 1.0 - b1)
            torch._foreach_mul_(v, b2)
            torch._foreach_addcmul_(v, grads, grads, 1.0 - b2)
            denom = torch._foreach_sqrt(v)
            torch._foreach_div_(denom, math.sqrt(bc2))
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(params, m, denom, -lr / bc1)

    def state_dict(self) -> dict:
        return {
            "type": "AdamW",
            "step": self.step_count,
            "betas": self.betas,
            "eps": self.eps,
            "param_groups": [{"lr": g["lr"], "weight_decay": g["weight_decay"]} for g in self.param_groups],
            "exp_avg": [t.clone() for t in self.exp_avg],
            "exp_avg_sq": [t.clone() for t in self.exp_avg_sq],
        }

    def load_state_dict(self, sd: dict) -> None:
        """Restore moments and step; shapes must match the model (a different model is an error)."""
        if sd.get("type") != "AdamW" or len(sd["exp_avg"]) != len(self.exp_avg):
            raise ValueError(
                f"optimizer state holds {len(sd.get('exp_avg', []))} tensors of type {sd.get('type')!r}; "
                f"this model needs {len(self.exp_avg)} AdamW tensors"
            )
        for mine, theirs in zip(
            self.exp_avg + self.exp_avg_sq, sd["exp_avg"] + sd["exp_avg_sq"], strict=True
        ):
            if mine.shape != theirs.shape:
                raise ValueError(
                    f"optimizer state shape {tuple(theirs.shape)} != parameter {tuple(mine.shape)}"
                )
            mine.copy_(theirs)
        self.step_count = int(sd["step"])
        for g, saved in zip(self.param_groups, sd["param_groups"], strict=True):
            g["lr"] = saved["lr"]
