"""The merged NeoX config as the stand-in trainer reads it, plus NeoX's LR schedule.

Why a separate module: these are pure functions of the config (no torch, no I/O beyond reading the config
and the tokenizer file), so they are tested directly and reused by the trainer and its checkpoints. Key
names and defaults follow NeoX's ``neox_arguments`` so one config file drives both NeoX on the GPU cluster
and this stand-in on the local one. Keys the stand-in has no use for (fp16, zero_optimization, ...) are
accepted and ignored: validating the full key set is the DAG's job before submission.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """The config cannot drive a run; the message names the file and the key."""


# NeoX defaults (megatron/neox_arguments/neox_args.py) for the keys the stand-in uses.
DEFAULTS = {
    "rotary_pct": 1.0,
    "rotary_emb_base": 10000,
    "gpt_j_residual": False,
    "no_weight_tying": False,
    "pos_emb": "learned",
    "norm": "layernorm",
    "layernorm_epsilon": 1.0e-5,
    "hidden_dropout": 0.1,
    "attention_dropout": 0.1,
    "gradient_accumulation_steps": 1,
    "lr_decay_style": "linear",
    "min_lr": 0.0,
    "warmup": 0.01,
    "checkpoint_factor": None,
    "extra_save_iters": None,
    "checkpoint_scale": "linear",
    "exit_interval": None,
    "log_interval": 100,
    "save": None,
    "load": None,
    "seed": 1234,
    "weight_decay": 0.01,
    "gradient_clipping": 1.0,
    "split": "969,30,1",
    "make_vocab_size_divisible_by": 128,
    "model_parallel_size": 1,
    "pipe_parallel_size": 0,
    "checkpoint_activations": False,
    "override_lr_scheduler": False,
    "use_checkpoint_lr_scheduler": False,
    "finetune": False,
    "eval_interval": 1000,
    "eval_iters": 100,
}

REQUIRED = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "seq_length",
    "train_micro_batch_size_per_gpu",
    "train_iters",
    "optimizer",
)


def load_config(path: str | os.PathLike) -> dict:
    """Read a strict-JSON merged config, fill NeoX defaults, and check what the stand-in needs."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not strict JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a JSON object")
    cfg = {**DEFAULTS, **raw}
    check_config(cfg, str(path))
    return cfg


def _need(cfg: dict, key: str, kind, where: str, positive: bool = False):
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where}: {key} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    if positive and value <= 0:
        raise ConfigError(f"{where}: {key} must be > 0, got {value!r}")
    return value


def check_config(cfg: dict, where: str = "config") -> None:
    """Raise ConfigError naming the first key that makes the config unusable."""
    for key in REQUIRED:
        if key not in cfg:
            raise ConfigError(f"{where}: required key {key} is missing")
    for key in (
        "num_layers",
        "hidden_size",
        "num_attention_heads",
        "seq_length",
        "train_micro_batch_size_per_gpu",
        "gradient_accumulation_steps",
        "train_iters",
        "log_interval",
    ):
        _need(cfg, key, int, where, positive=True)
    if cfg["hidden_size"] % cfg["num_attention_heads"]:
        raise ConfigError(
            f"{where}: hidden_size {cfg['hidden_size']} is not divisible by "
            f"num_attention_heads {cfg['num_attention_heads']}"
        )
    if cfg.get("max_position_embeddings") is None:
        cfg["max_position_embeddings"] = cfg["seq_length"]
    if _need(cfg, "max_position_embeddings", int, where, positive=True) < cfg["seq_length"]:
        raise ConfigError(
            f"{where}: max_position_embeddings {cfg['max_position_embeddings']} < "
            f"seq_length {cfg['seq_length']}"
        )
    if cfg.get("lr_decay_iters") is None:
        cfg["lr_decay_iters"] = cfg["train_iters"]
    _need(cfg, "lr_decay_iters", int, where, positive=True)
    if cfg["pos_emb"] != "rotary":
        raise ConfigError(
            f"{where}: pos_emb {cfg['pos_emb']!r} is not supported by the stand-in (use 'rotary')"
        )
    if cfg["norm"] != "layernorm":
        raise ConfigError(f"{where}: norm {cfg['norm']!r} is not supported by the stand-in (use 'layernorm')")
    if cfg["model_parallel_size"] != 1 or (cfg["pipe_parallel_size"] or 0) > 1:
        raise ConfigError(
            f"{where}: model_parallel_size {cfg['model_parallel_size']} / pipe_parallel_size "
            f"{cfg['pipe_parallel_size']}: the stand-in is data parallel only (use 1)"
        )
    if cfg["lr_decay_style"] not in ("linear", "cosine", "exponential", "constant"):
        raise ConfigError(
            f"{where}: lr_decay_style {cfg['lr_decay_style']!r} is not linear, cosine, "
            "exponential or constant"
        )
    opt = cfg["optimizer"]
    if not isinstance(opt, dict) or not isinstance(opt.get("params"), dict):
        raise ConfigError(f"{where}: optimizer must be an object with 'type' and 'params'")
    if str(opt.get("type", "")).lower() not in ("adam", "adamw"):
        raise ConfigError(f"{where}: optimizer.type {opt.get('type')!r} is not supported (Adam or AdamW)")
    params = opt["params"]
    for key in ("lr", "eps"):
        if key in params and (isinstance(params[key], bool) or not isinstance(params[key], (int, float))):
            raise ConfigError(
                f"{where}: optimizer.params.{key} must be a number, got {params[key]!r} "
                "(write exponents with a dot, e.g. 1.0e-8)"
            )
    if "lr" not in params:
        raise ConfigError(f"{where}: optimizer.params.lr is missing")
    betas = params.get("betas", [0.9, 0.999])
    if not (isinstance(betas, list) and len(betas) == 2):
        raise ConfigError(f"{where}: optimizer.params.betas must be a list of two numbers, got {betas!r}")
    if not data_paths(cfg):
        raise ConfigError(f"{where}: neither data_path nor train_data_paths is set")
    for key in ("eval_interval", "eval_iters"):
        if cfg.get(key) is not None and (
            not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 0
        ):
            raise ConfigError(f"{where}: {key} must be a non-negative integer, got {cfg[key]!r}")
    if cfg.get("checkpoint_factor") is not None:
        _need(cfg, "checkpoint_factor", int, where, positive=True)
    if cfg["checkpoint_scale"] != "linear":
        raise ConfigError(
            f"{where}: checkpoint_scale {cfg['checkpoint_scale']!r} is not supported by the stand-in "
            "(use 'linear')"
        )
    if cfg.get("exit_interval") is not None:
        _need(cfg, "exit_interval", int, where, positive=True)
    extra = cfg.get("extra_save_iters") or []
    if not isinstance(extra, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in extra):
        raise ConfigError(f"{where}: extra_save_iters must be a list of integers, got {extra!r}")
    if "train_batch_size" in cfg and cfg["train_batch_size"] is not None:
        _need(cfg, "train_batch_size", int, where, positive=True)


def data_paths(cfg: dict) -> list[str]:
    """Training data prefixes: ``train_data_paths`` if given, else ``[data_path]``."""
    paths = cfg.get("train_data_paths")
    if paths:
        return [str(p) for p in paths]
    return [str(cfg["data_path"])] if cfg.get("data_path") else []


def tokenizer_vocab_size(vocab_file: str | os.PathLike) -> int:
    """Vocabulary size of an HF tokenizer JSON: highest id among the BPE vocab and added tokens, plus 1."""
    path = Path(vocab_file)
    try:
        tok = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"vocab_file {path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"vocab_file {path}: not a tokenizer JSON ({exc})") from None
    ids = list((tok.get("model") or {}).get("vocab", {}).values())
    ids += [t["id"] for t in tok.get("added_tokens", [])]
    if not ids:
        raise ConfigError(f"vocab_file {path}: no vocabulary found under model.vocab / added_tokens")
    return max(ids) + 1


def padded_vocab_size(cfg: dict) -> int:
    """NeoX pads the vocab to a multiple of make_vocab_size_divisible_by x model_parallel_size."""
    if cfg.get("padded_vocab_size"):
        return int(cfg["padded_vocab_size"])
    if not cfg.get("vocab_file"):
        raise ConfigError("vocab_file is not set (needed for the padded vocabulary size)")
    size = tokenizer_vocab_size(cfg["vocab_file"])
    multiple = int(cfg["make_vocab_size_divisible_by"]) * int(cfg["model_parallel_size"])
    return -(-size // multiple) * multiple


def train_batch_size(cfg: dict, dp_world_size: int) -> int:
    """NeoX's batch rule; a configured train_batch_size that disagrees is an error."""
    tbs = cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * dp_world_size
    given = cfg.get("train_batch_size")
    if given is not None and given != tbs:
        raise ConfigError(
            f"train_batch_size {given} != train_micro_batch_size_per_gpu "
            f"{cfg['train_micro_batch_size_per_gpu']} x gradient_accumulation_steps "
            f"{cfg['gradient_accumulation_steps']} x data parallel "
            f"world size {dp_world_size} = {tbs}"
        )
    return tbs


@dataclass
class AnnealingLR:
    """NeoX's megatron/learning_rates.py AnnealingLR: linear warmup, then decay to min_lr.

    ``num_iters`` counts scheduler steps; the optimizer step of iteration i uses ``lr_at(i - 1)`` and
    the log line of iteration i shows ``lr_at(i)``, as in NeoX (the scheduler steps after the optimizer).
    """

    start_lr: float
    warmup_iter: float
    end_iter: int
    decay_style: str
    min_lr: float
    num_iters: int = 0

    @classmethod
    def from_config(cls, cfg: dict) -> AnnealingLR:
        end = int(cfg["lr_decay_iters"])
        return cls(
            start_lr=float(cfg["optimizer"]["params"]["lr"]),
            warmup_iter=float(cfg["warmup"]) * end,
            end_iter=end,
            decay_style=cfg["lr_decay_style"],
            min_lr=float(cfg["min_lr"]),
        )

    def lr_at(self, num_iters: int) -> float:
        if self.warmup_iter > 0 and num_iters <= self.warmup_iter:
            return self.start_lr * num_iters / self.warmup_iter
        n = num_iters - self.warmup_iter
        if self.decay_style == "linear":
            lr = self.start_lr * (self.end_iter - n) / self.end_iter
        elif self.decay_style == "cosine":
            end = self.end_iter - self.warmup_iter
            lr = self.min_lr + (self.start_lr - self.min_lr) / 2.0 * (math.cos(math.pi * n / end) + 1)
        elif self.decay_style == "exponential":
            lr = self.start_lr * math.exp(-0.693 * n / self.end_iter)
        else:
            lr = self.start_lr
        return max(lr, self.min_lr)

    def state_dict(self) -> dict:
        return {
            "start_lr": self.start_lr,
            "warmup_iter": self.warmup_iter,
            "num_iters": self.num_iters,
            "decay_style": self.decay_style,
            "end_iter": self.end_iter,
            "min_lr": self.min_lr,
        }

    def load_state_dict(self, sd: dict, *, override: bool = False, use_checkpoint: bool = False) -> list[str]:
        """Restore ``num_iters``; NeoX's rule for the rest: values must match unless told otherwise.

        Returns NeoX's " > using checkpoint value ..." messages for the log.
        """
        messages = []
        for name, label in (
            ("start_lr", "learning rate"),
            ("min_lr", "minimum learning rate"),
            ("warmup_iter", "warmup iterations"),
            ("end_iter", "total number of iterations"),
            ("decay_style", "decay style"),
        ):
            mine, theirs = getattr(self, name), sd[name]
            if override:
                continue
            if not use_checkpoint and mine != theirs:
                raise ConfigError(
                    f"AnnealingLR: config value {mine!r} and checkpoint value {theirs!r} for {label} do not "
                    "match (set override_lr_scheduler or use_checkpoint_lr_scheduler, or restore the config)"
                )
            setattr(self, name, theirs)
            messages.append(f" > using checkpoint value {theirs} for {label}")
        self.num_iters = int(sd["num_iters"])
        return messages
