"""The CPU stand-in for GPT-NeoX (include/cluster/standin/standin_*.py): NeoX's inputs in, NeoX's outputs out.

Pure parts are checked against the real NeoX run in tests/fixtures/neox-run (LR schedule, log line, FLOPs
estimate); the trainer itself runs as real subprocesses on a tiny dataset tokenized with the real 20B
tokenizer: one rank, two gloo ranks, resume, exit_interval, signals. A 2-layer hidden-64 model keeps each run
a few seconds. Where slicing a run depends on it, the stand-in keeps GPT-NeoX's semantics (no save on a
signal, exit_interval as a modulus without the post-training save, the sample index sized by train_iters),
so a test passing here cannot hide work that real NeoX loses.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mmidx_dataset
import numpy as np
import pytest
import standin_checkpoint as ck
import standin_config as sc
import standin_dist as sd
import standin_log as sl
import standin_train as st
import torch
from standin_data import SampleStream, split_bounds
from standin_model import GPTNeoX, ModelShape, cross_entropy
from standin_optim import AdamW

from tests.conftest import TOKENIZER

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "include" / "cluster" / "standin" / "standin_train.py"
#: the cluster gets the stand-in flat beside include/cluster (standin_data reads with mmidx_dataset)
CLUSTER_CODE = REPO / "include" / "cluster"
FIXTURES = REPO / "tests" / "fixtures" / "neox-run"
VALID = re.compile(
    r"^ validation results at iteration (\d+) \| lm_loss value: (\S+) \| lm_loss_ppl value: \S+ \| $", re.M
)
LINE = re.compile(r"iteration\s+(\d+)/\s*(\d+) \|.*learning rate: (\S+) \|.*lm_loss: (\S+) \|")

SUBJECTS = ["the old farmer", "a young girl", "my brother", "the teacher", "our neighbour", "the small dog"]
VERBS = ["walked to", "looked at", "painted", "cleaned", "talked about", "visited"]
OBJECTS = ["the river", "the red house", "a quiet garden", "the market", "the school", "a big tree"]
TIMES = ["in the morning", "after lunch", "every Sunday", "before dinner", "at night", "yesterday"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """400 short documents of plain English sentences, tokenized like NeoX's preprocess_data (+EOD)."""
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(TOKENIZER))
    rng = np.random.default_rng(0)
    prefix = str(tmp_path_factory.mktemp("data") / "demo_text_document")
    with mmidx_dataset.DatasetWriter(prefix, np.uint16) as writer:
        for _ in range(400):
            sentences = [
                f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                f"{rng.choice(TIMES)}."
                for _ in range(int(rng.integers(1, 5)))
            ]
            writer.add_document(tok.encode(" ".join(sentences)).ids + [0])
    return prefix


def make_config(tmp: Path, data: str, name: str = "run.json", **overrides) -> Path:
    cfg = {
        "num_layers": 2,
        "hidden_size": 64,
        "num_attention_heads": 4,
        "seq_length": 32,
        "max_position_embeddings": 32,
        "pos_emb": "rotary",
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "gpt_j_residual": True,
        "no_weight_tying": True,
        "norm": "layernorm",
        "hidden_dropout": 0,
        "attention_dropout": 0,
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "train_iters": 20,
        "lr_decay_iters": 100,
        "lr_decay_style": "cosine",
        "warmup": 0.01,
        "optimizer": {"type": "Adam", "params": {"lr": 0.003, "betas": [0.9, 0.95], "eps": 1.0e-8}},
        "min_lr": 0.0003,
        "weight_decay": 0.1,
        "gradient_clipping": 1.0,
        "checkpoint_factor": 10,
        "log_interval": 5,
        "seed": 1234,
        "save": str(tmp / "ckpt"),
        "load": str(tmp / "ckpt"),
        "data_path": data,
        "vocab_file": str(TOKENIZER),
        "fp16": {"enabled": True},
        "zero_optimization": {"stage": 1},
    }
    cfg.update(overrides)
    path = tmp / name
    path.write_text(json.dumps(cfg, indent=1))
    return path


def run_env(**extra) -> dict:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "MASTER_"))
    }
    env.pop("LOCAL_RANK", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CLUSTER_CODE), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def train(config: Path, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=run_env(**env),
    )


def train_here(config: Path) -> str:
    """Run one rank in this process (no start-up cost); returns what rank 0 printed."""
    threads = torch.get_num_threads()
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            assert st.Trainer(sc.load_config(config), str(config), sd.dist_env({})).run() == 0
    finally:
        torch.set_num_threads(threads)
    return buf.getvalue()


@pytest.fixture
def spawned():
    """Processes a test starts; any still running at teardown (a failed assertion) are killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def start_ranks(config: Path, spawned: list, world: int = 2) -> list[subprocess.Popen]:
    port = str(free_port())
    ranks = [
        subprocess.Popen(
            [sys.executable, str(TRAIN), "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=run_env(
                RANK=str(r),
                WORLD_SIZE=str(world),
                LOCAL_RANK=str(r),
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=port,
            ),
        )
        for r in range(world)
    ]
    spawned.extend(ranks)
    return ranks


def logged(stdout: str) -> dict[int, tuple[str, str]]:
    """iteration -> (learning rate, lm_loss) as printed."""
    return {int(m.group(1)): (m.group(3), m.group(4)) for m in LINE.finditer(stdout)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- pure parts against the real NeoX run ------------------------------------------------------------------


def _real_lines(name: str) -> list[str]:
    return [ln for ln in (FIXTURES / name).read_text().splitlines() if ln.startswith(" samples/sec:")]


def test_lr_schedule_reproduces_the_real_runs():
    real = json.loads((FIXTURES / "tiny-config.json").read_text())
    real["lr_decay_iters"] = 80
    sched = sc.AnnealingLR.from_config(real)
    seen = 0
    for name in ("run1.log", "run2.log"):
        for line in _real_lines(name):
            m = LINE.search(line)
            assert f"{sched.lr_at(int(m.group(1))):.3E}" == m.group(3), line
            seen += 1
    assert seen == 16
    assert sched.lr_at(0) == 0.0  # warmup starts from zero, as NeoX's first step does


def test_train_line_is_neox_format_field_for_field():
    real = _real_lines("run1.log")[1]  # iteration 10
    ours = sl.format_train_line(
        iteration=10,
        train_iters=60,
        elapsed_ms=22.5,
        samples_per_sec=354.862,
        lr=9.704e-4,
        flops_per_gpu=2.9e12,
        lm_loss=9.809254,
        skipped=0,
        nans=0,
    )
    assert ours == real.replace(" loss scale: 4096.0 |", "")


def test_mfu_and_hfu_follow_neoxs_formulas_and_parse_back():
    """With peak_theoretical_tflops set NeoX prints MFU (model FLOPs: x3, recomputation not counted) and
    HFU (what ran: x4 with recomputation) after its flops field; the stand-in prints the same fields."""
    from neoxflow.neox.logparse import parse_line

    cfg = {**json.loads((FIXTURES / "tiny-config.json").read_text()), "checkpoint_activations": True}
    hardware, model = sl.flops_per_iteration(cfg, 50304, 8), sl.flops_per_iteration(cfg, 50304, 8, model=True)
    assert hardware / model == pytest.approx(4 / 3)
    line = sl.format_train_line(
        iteration=10, train_iters=60, elapsed_ms=22.5, samples_per_sec=354.862, lr=9.704e-4,
        flops_per_gpu=2.9e12, lm_loss=9.809254, skipped=0, nans=0, utilisation=(7.5, 10.0),
    )  # fmt: skip
    assert "approx flops per GPU: 2.9TFLOPS | MFU: 7.50% | HFU: 10.00% | lm_loss:" in line
    step = parse_line(line)
    assert (step.mfu, step.hfu, step.tflops) == (7.5, 10.0, pytest.approx(2.9))


def test_flops_estimate_matches_neox():
    real = json.loads((FIXTURES / "tiny-config.json").read_text())
    flops = sl.flops_per_iteration(real, 50304, 8)
    for line in _real_lines("run1.log")[1:]:
        ms = float(re.search(r"per iteration \(ms\): (\S+)", line).group(1))
        reported = re.search(r"approx flops per GPU: (\S+)TFLOPS", line)
        if reported:  # ms is rounded to 0.1, so allow the last digit to differ by one
            assert abs(flops / (ms / 1000.0) / 1e12 - float(reported.group(1))) <= 0.15, line
    assert sl.human_readable_flops(286.9e9) == "286.9GFLOPS"


def test_padded_vocab_from_the_real_tokenizer():
    assert sc.tokenizer_vocab_size(TOKENIZER) == 50277
    assert (
        sc.padded_vocab_size(
            {"vocab_file": str(TOKENIZER), "make_vocab_size_divisible_by": 128, "model_parallel_size": 1}
        )
        == 50304
    )


def test_rank_layout_from_torch_or_slurm_variables():
    assert sd.dist_env({}) == sd.DistEnv(0, 1, 0, "127.0.0.1", 29500)
    slurm = {
        "SLURM_PROCID": "3",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_JOB_ID": "42",
    }
    assert sd.dist_env(slurm, resolves=lambda h: True) == sd.DistEnv(3, 4, 1, "node1", 29542)
    local = {**slurm, "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1"}  # node names that are not host names
    assert sd.dist_env(local, resolves=lambda h: False).master_addr == "127.0.0.1"
    torchrun = {
        **slurm,
        "RANK": "1",
        "WORLD_SIZE": "2",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "7",
    }
    assert sd.dist_env(torchrun) == sd.DistEnv(1, 2, 0, "h", 7)
    assert sd.first_host("gpu[07,09-10],cpu1") == "gpu07"
    assert sd.first_host("node2,node1") == "node2"
    with pytest.raises(ValueError, match="outside world size"):
        sd.dist_env({"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train_iters": None}, "train_iters must be int"),
        ({"optimizer": {"type": "Adam", "params": {"lr": 0.001, "eps": "1e-08"}}}, "optimizer.params.eps"),
        ({"hidden_size": 66}, "not divisible by num_attention_heads"),
        ({"pos_emb": "learned"}, "pos_emb"),
        ({"data_path": None}, "neither data_path nor train_data_paths"),
        ({"extra_save_iters": [5, "x"]}, "extra_save_iters"),
    ],
)
def test_config_errors_name_the_key(tmp_path, change, message):
    path = make_config(tmp_path, "/nowhere/data", **change)
    with pytest.raises(sc.ConfigError, match=re.escape(message)):
        sc.load_config(path)
    (tmp_path / "bad.json").write_text('{"num_layers": 2,}')
    with pytest.raises(sc.ConfigError, match="bad.json: not strict JSON: line 1"):
        sc.load_config(tmp_path / "bad.json")


def test_batch_rule(tmp_path):
    cfg = sc.load_config(make_config(tmp_path, "/d", train_batch_size=4, gradient_accumulation_steps=2))
    assert sc.train_batch_size(cfg, 1) == 4
    with pytest.raises(sc.ConfigError, match="train_batch_size 4 != .* world size 2 = 8"):
        sc.train_batch_size(cfg, 2)


# --- data order ---------------------------------------------------------------------------------------------


def test_split_bounds_like_neox():
    assert split_bounds("969,30,1", 1000) == [0, 969, 999, 1000]
    assert split_bounds("969,30,1", 400)[1] == 388


def test_sample_stream_covers_each_epoch_once_and_is_deterministic(dataset):
    stream = SampleStream([dataset], seq_length=32, seed=7, num_samples=100000)
    reader = mmidx_dataset.DatasetReader(dataset)
    train_docs = np.concatenate([reader[i] for i in range(388)]).astype(np.int64)
    epoch0 = stream.stream_tokens(0, stream.tokens_per_epoch)
    assert stream.tokens_per_epoch == len(train_docs)
    assert np.array_equal(np.sort(epoch0), np.sort(train_docs))  # every training token once
    assert not np.array_equal(epoch0, train_docs)  # ...in a shuffled document order
    epoch1 = stream.stream_tokens(stream.tokens_per_epoch, stream.tokens_per_epoch)
    assert not np.array_equal(epoch0, epoch1)  # each epoch has its own order
    s = stream.sample(5)
    assert s.shape == (33,) and s.dtype == np.int64
    again = SampleStream([dataset], seq_length=32, seed=7, num_samples=100000)
    crossing = 2 * stream.block + 3  # a sample index past two epochs' worth
    assert np.array_equal(again.batch(crossing, 4), stream.batch(crossing, 4))
    assert not np.array_equal(
        SampleStream([dataset], 32, seed=8, num_samples=100000).batch(0, 4), stream.batch(0, 4)
    )
    firsts = [stream.sample(g)[0] for g in range(stream.block)]
    assert len(set(map(int, firsts))) > 10  # samples are visited out of stream order


def test_sample_order_depends_on_train_iters_like_neoxs_index(dataset):
    """NeoX sizes and names its index by train_iters x train_batch_size: another size, another order.

    The stand-in must do the same, or a pipeline that changed train_iters per slice would pass its golden
    run here and train on another data order on GPUs.
    """
    run = SampleStream([dataset], 32, seed=7, num_samples=40)
    longer = SampleStream([dataset], 32, seed=7, num_samples=80)
    assert not np.array_equal(run.batch(0, 8), longer.batch(0, 8))
    assert np.array_equal(run.batch(20, 8), SampleStream([dataset], 32, seed=7, num_samples=40).batch(20, 8))
    assert run.index_name() == f"{dataset}_train_indexmap_40ns_32sl_7s"
    with pytest.raises(IndexError, match="outside the index of 40 samples"):
        run.sample(40)


# --- model ---------------------------------------------------------------------------------------------


def test_fused_cross_entropy_equals_torchs():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 300, generator=gen) * 4
    targets = torch.randint(0, 300, (12,), generator=gen)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    (cross_entropy(a * 2.0, targets) * 3).backward()
    (torch.nn.functional.cross_entropy(b * 2.0, targets) * 3).backward()
    assert torch.allclose(cross_entropy(logits, targets), torch.nn.functional.cross_entropy(logits, targets))
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_model_is_causal_and_shaped_like_neox():
    shape = ModelShape(
        num_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        padded_vocab_size=256,
        max_position_embeddings=16,
        rotary_pct=0.25,
        gpt_j_residual=True,
        no_weight_tying=True,
    )
    assert shape.rotary_ndims == 2
    torch.manual_seed(0)
    model = GPTNeoX(shape).eval()
    names = dict(model.named_parameters())
    assert names["layers.0.attention.query_key_value.weight"].shape == (96, 32)
    assert names["layers.1.mlp.dense_h_to_4h.weight"].shape == (128, 32)
    assert names["embed_out.weight"].data_ptr() != names["embed_in.weight"].data_ptr()
    tokens = torch.randint(0, 256, (2, 10))
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 256
    with torch.no_grad():
        out, out2 = model(tokens), model(changed)
    assert out.shape == (2, 10, 256)
    assert torch.allclose(out[:, :6], out2[:, :6], atol=1e-6)  # a later token never changes an earlier logit
    assert not torch.allclose(out[:, 6:], out2[:, 6:])
    tied = GPTNeoX(ModelShape(1, 32, 4, 256, 16, no_weight_tying=False))
    assert tied.embed_out.weight is tied.embed_in.weight
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 16"):
        model(torch.zeros(1, 17, dtype=torch.long))


# --- optimizer ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_adamw_matches_the_textbook_update(fused):
    """Against torch's AdamW formula in float64: decoupled decay, bias corrections, per-group decay and lr."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(40, 3, generator=gen), torch.randn(5, generator=gen)]
    params = [p.clone() for p in start]
    opt = AdamW(
        [{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:], "weight_decay": 0.0}],
        lr=0.01,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=fused,
    )
    ref = [p.double() for p in start]
    m = [torch.zeros_like(p) for p in ref]
    v = [torch.zeros_like(p) for p in ref]
    for t in range(1, 6):
        lr = 0.01 * t
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        for k, wd in enumerate((0.1, 0.0)):
            g = grads[k].double()
            ref[k] *= 1 - lr * wd
            m[k] = 0.9 * m[k] + 0.1 * g
            v[k] = 0.95 * v[k] + 0.05 * g * g
            ref[k] -= lr / (1 - 0.9**t) * m[k] / ((v[k] / (1 - 0.95**t)).sqrt() + 1e-8)
    for p, r in zip(params, ref, strict=True):
        assert torch.allclose(p.double(), r, atol=1e-5, rtol=0)
    assert not torch.allclose(params[0], start[0], atol=1e-3)  # it really moved
    restored = AdamW(
        [{"params": [p.clone() for p in params[:1]]}, {"params": [p.clone() for p in params[1:]]}],
        lr=0.0,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=fused,
    )
    restored.load_state_dict(opt.state_dict())
    assert restored.step_count == 5 and torch.equal(restored.exp_avg_sq[0], opt.exp_avg_sq[0])
    with pytest.raises(ValueError, match="this model needs 1 AdamW tensors"):
        AdamW([{"params": params[:1]}], lr=0.0, betas=(0.9, 0.95), eps=1e-8).load_state_dict(opt.state_dict())


# --- checkpoints ------------------------------------------------------------------------------------------


def test_partial_checkpoint_never_gets_latest(tmp_path, monkeypatch):
    cfg_path = tmp_path / "run.json"
    cfg_path.write_text("{}")
    ck.save_checkpoint(tmp_path / "save", 10, {"iteration": 10}, cfg_path, log=lambda m: None)
    assert (tmp_path / "save" / "latest").read_text() == "global_step10"
    # the save of step 20 dies after the model states were written (the configs step fails)
    real_replace = os.replace

    def crash_on_configs(src, dst):
        if Path(dst).name == "configs":
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(ck.os, "replace", crash_on_configs)
    with pytest.raises(OSError, match="disk full"):
        ck.save_checkpoint(tmp_path / "save", 20, {"iteration": 20}, cfg_path, log=lambda m: None)
    monkeypatch.undo()
    assert (tmp_path / "save" / "global_step20" / ck.MODEL_STATES).is_file()
    assert not (tmp_path / "save" / "global_step20" / "configs").exists()
    assert not ck.is_complete(tmp_path / "save" / "global_step20")
    assert (tmp_path / "save" / "latest").read_text() == "global_step10"
    tag, state = ck.load_checkpoint(tmp_path / "save")
    assert (tag, state["iteration"]) == ("global_step10", 10)
    assert not (tmp_path / "save" / "latest.tmp").exists()
    # a retried save of 20 replaces the partial folder and commits it
    ck.save_checkpoint(tmp_path / "save", 20, {"iteration": 20}, cfg_path, log=lambda m: None)
    assert ck.load_checkpoint(tmp_path / "save")[0] == "global_step20"
    # a hand-edited latest naming a partial folder is refused, not silently restarted from 0
    (tmp_path / "save" / "global_step30").mkdir()
    ck.write_latest(tmp_path / "save", "global_step30")
    with pytest.raises(ck.CheckpointError, match="global_step30 is missing or incomplete"):
        ck.load_checkpoint(tmp_path / "save")


# --- the trainer as a process -------------------------------------------------------------------------------


def test_command_line_exit_codes_name_the_problem(tmp_path, dataset, monkeypatch, capsys):
    monkeypatch.setattr(st, "keep_default_signal_actions", lambda: None)  # leave pytest's signal setup
    for key in ("RANK", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_PROCID"):
        monkeypatch.delenv(key, raising=False)
    bad = make_config(tmp_path, dataset, name="bad.json", seq_length=0)
    assert st.main(["--config", str(bad)]) == 2
    assert "seq_length must be > 0" in capsys.readouterr().err
    nodata = make_config(tmp_path, str(tmp_path / "missing_text_document"), name="nodata.json")
    assert st.main(["--config", str(nodata)]) == 2
    assert "missing_text_document.idx not found" in capsys.readouterr().err
    (tmp_path / "ckpt" / "global_step5").mkdir(parents=True)
    ck.write_latest(tmp_path / "ckpt", "global_step5")  # latest names a folder without its files
    dangling = make_config(tmp_path, dataset, name="dangling.json")
    threads = torch.get_num_threads()
    try:
        assert st.main(["--config", str(dangling)]) == 1
    finally:
        torch.set_num_threads(threads)
    assert "cannot resume" in capsys.readouterr().err and not (tmp_path / "ckpt" / "global_step10").exists()


def test_single_process_run_learns_and_writes_neox_layout(tmp_path, dataset):
    config = make_config(
        tmp_path,
        dataset,
        train_iters=100,
        checkpoint_factor=40,
        log_interval=10,
        eval_interval=50,
        eval_iters=4,
    )
    t0 = time.perf_counter()
    proc = train(config)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"Unable to find latest file at {tmp_path / 'ckpt' / 'latest'}" in out
    assert "Loading checkpoint and starting from iteration 0" in out
    assert "setting training data start iteration to 0" in out
    losses = {i: float(v[1]) for i, v in logged(out).items()}
    assert sorted(losses) == list(range(10, 101, 10))
    assert losses[10] > 8.0  # ~ln(50304) at the start: the model really predicts over the full vocab
    assert losses[100] < losses[10] - 5.0 and losses[100] < 2.5, losses
    valid = {int(m.group(1)): float(m.group(2)) for m in VALID.finditer(out)}
    assert sorted(valid) == [50, 100] and valid[100] < 4.0  # held-out documents: it generalises
    # NeoX prints exp of the exact loss; both are printed to 6 digits: compare as numbers, not strings
    ppl = re.search(r"validation results at iteration 100 .*?lm_loss_ppl value: (\S+) \|", out)
    assert ppl and math.isclose(float(ppl.group(1)), math.exp(valid[100]), rel_tol=1e-5), ppl
    for tag in ("global_step40", "global_step80", "global_step100"):  # factor 40 and the end of training
        assert (
            f"Checkpoint {tag} is about to be saved!" in out
            and f"[Torch] Checkpoint {tag} is ready now!" in out
        )
        assert ck.is_complete(tmp_path / "ckpt" / tag)
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step100"
    assert (tmp_path / "ckpt" / "global_step100" / "configs" / "run.json").read_bytes() == config.read_bytes()
    state = torch.load(tmp_path / "ckpt" / "global_step100" / ck.MODEL_STATES, weights_only=False)
    assert state["iteration"] == 100 and state["data_position"]["consumed_samples"] == 200
    assert state["lr_scheduler"]["num_iters"] == 100 and state["optimizer"]["step"] == 100
    assert state["module"]["embed_in.weight"].shape == (50304, 64)
    print(f"100 iterations in {wall:.1f}s wall including start-up")


def test_sliced_run_equals_the_uninterrupted_run_bit_for_bit(tmp_path, dataset):
    """The golden property: slices that stop with exit_interval at save iterations, each resumed from the
    checkpoint the previous one left, log exactly the losses, learning rates and validation results of one
    uninterrupted run, and end with identical weights, optimizer state and data position.

    Every slice keeps the run's train_iters (the sample index depends on it); only exit_interval and
    extra_save_iters change per slice, as plugins/neoxflow/neox/slices.py renders them. log_interval 1
    makes every iteration's lm_loss comparable (NeoX averages the loss over the interval since its
    last log line, which restarts on resume).
    """
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = {"train_iters": 20, "log_interval": 1, "eval_interval": 5, "eval_iters": 2}
    straight = make_config(tmp_path / "a", dataset, **common)
    slices = [  # stop at an extra save (7), at a natural save (10), then run to the end of training
        make_config(tmp_path / "b", dataset, name="s1.json", exit_interval=7, extra_save_iters=[7], **common),
        make_config(tmp_path / "b", dataset, name="s2.json", exit_interval=10, **common),
        make_config(tmp_path / "b", dataset, name="s3.json", **common),
    ]
    a = train_here(straight)
    out1 = train_here(slices[0])
    assert "exiting the program at iteration 7" in out1 and max(logged(out1)) == 7
    assert (tmp_path / "b" / "ckpt" / "latest").read_text() == "global_step7"
    out2 = train(slices[1])  # a resume through the real command line, in a fresh process
    assert out2.returncode == 0, out2.stderr[-3000:]
    assert "Loading checkpoint and starting from iteration 7" in out2.stdout
    assert "exiting the program at iteration 10" in out2.stdout
    out3 = train_here(slices[2])
    assert "Loading checkpoint and starting from iteration 10" in out3
    sliced = {**logged(out1), **logged(out2.stdout), **logged(out3)}
    assert sorted(sliced) == list(range(1, 21))
    assert sliced == logged(a)  # same learning rates and losses at every iteration, digit for digit
    assert VALID.findall(out1) + VALID.findall(out2.stdout) + VALID.findall(out3) == VALID.findall(a)
    assert len(VALID.findall(a)) == 4
    sa = torch.load(tmp_path / "a" / "ckpt" / "global_step20" / ck.MODEL_STATES, weights_only=False)
    sb = torch.load(tmp_path / "b" / "ckpt" / "global_step20" / ck.MODEL_STATES, weights_only=False)
    for name, tensor in sa["module"].items():
        assert torch.equal(tensor, sb["module"][name]), name
    for key in ("exp_avg", "exp_avg_sq"):
        assert all(torch.equal(x, y) for x, y in zip(sa["optimizer"][key], sb["optimizer"][key], strict=True))
    assert sa["optimizer"]["step"] == sb["optimizer"]["step"] == 20
    assert sa["data_position"] == sb["data_position"]


def test_a_planned_slice_end_recomputes_nothing(tmp_path, dataset):
    """slices.py end to end on the stand-in: the pace measured from slice 1's log plans slice 2, which
    stops exactly at the planned save iteration (exit 0, complete checkpoint, latest), and slice 3 picks up
    there: 0 iterations recomputed, and the losses are the uninterrupted run's."""
    from neoxflow.neox import slices

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = {"train_iters": 60, "log_interval": 1, "checkpoint_factor": 1000}
    a = logged(train_here(make_config(tmp_path / "a", dataset, **common)))
    run_cfg = sc.load_config(make_config(tmp_path / "b", dataset, name="run.json", **common))
    first = slices.plan_slice_for_config(
        run_cfg, resume_iteration=0, times=None, time_limit_s=600, stop_before_limit_s=60
    )
    assert first.kind == slices.RUN_TO_LIMIT  # no pace yet; here the slice is cut short by hand instead
    out1 = train_here(
        make_config(tmp_path / "b", dataset, name="s1.json", exit_interval=5, extra_save_iters=[5], **common)
    )
    times = slices.measure_slice(out1)
    assert times.seconds_per_iteration > 0 and times.seconds_per_save is not None
    # a time limit worth about 20 iterations after a zero start-up: the stop lands well inside the run
    limit = 60 + times.seconds_per_save * 1.05 + 20 * times.seconds_per_iteration * 1.05
    second = slices.plan_slice_for_config(
        run_cfg,
        resume_iteration=5,
        times=slices.SliceTimes(times.seconds_per_iteration, times.seconds_per_save, 0.0),
        time_limit_s=limit,
        stop_before_limit_s=60,
    )
    stop = second.stop_iteration
    assert second.kind == slices.STOP_AT and second.extra_save == stop and 20 <= stop <= 26
    out2 = train(
        make_config(tmp_path / "b", dataset, name="s2.json", **{**common, **second.config_overrides})
    )
    assert out2.returncode == 0, out2.stderr[-3000:]
    assert slices.exited_at(out2.stdout) == stop and max(logged(out2.stdout)) == stop
    assert (tmp_path / "b" / "ckpt" / "latest").read_text() == f"global_step{stop}"
    assert ck.is_complete(tmp_path / "b" / "ckpt" / f"global_step{stop}")
    out3 = train_here(make_config(tmp_path / "b", dataset, name="s3.json", **common))
    assert f"Loading checkpoint and starting from iteration {stop}" in out3
    sliced = [logged(out1), logged(out2.stdout), logged(out3)]
    assert sum(len(x) for x in sliced) == 60  # each iteration trained exactly once
    assert {k: v for x in sliced for k, v in x.items()} == a


def test_changing_train_iters_between_slices_changes_the_data_like_neox(tmp_path, dataset):
    """Why slices must not shorten train_iters: the resumed half trains on other samples (NeoX rebuilds
    its index maps for the new train_iters x train_batch_size), so its losses leave the golden curve."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = make_config(tmp_path / "a", dataset, train_iters=20, log_interval=1)
    a = logged(train_here(straight))
    short = logged(
        train_here(make_config(tmp_path / "b", dataset, name="s1.json", train_iters=10, log_interval=1))
    )
    rest = logged(
        train_here(make_config(tmp_path / "b", dataset, name="s2.json", train_iters=20, log_interval=1))
    )
    assert sorted(rest) == list(range(11, 21))
    assert all(short[i][1] != a[i][1] for i in range(1, 11))  # another index from the first sample on
    assert all(rest[i][1] != a[i][1] for i in range(11, 21))


def test_exit_interval_is_a_modulus_checked_after_the_save_and_skips_the_final_save(tmp_path, dataset):
    """NeoX's train(): at iteration % exit_interval == 0, after that iteration's save, exit 0 with no
    post-training save. So an exit_interval at a non-save iteration loses everything since the last save,
    and on a resumed run it counts from iteration 0, not from the resume point."""
    config = make_config(
        tmp_path, dataset, train_iters=40, checkpoint_factor=5, log_interval=1, exit_interval=7
    )
    out = train_here(config)
    assert max(logged(out)) == 7 and "exiting the program at iteration 7" in out
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step5"  # 6 and 7 are lost, as on NeoX
    assert not (tmp_path / "ckpt" / "global_step7").exists()
    out = train(config)  # resumed at 5: the first multiple of 7 above 5 is 7 again
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(logged(out.stdout)) == [6, 7]
    again = make_config(
        tmp_path,
        dataset,
        name="again.json",
        train_iters=40,
        checkpoint_factor=5,
        log_interval=1,
        exit_interval=6,
    )
    out = train_here(again)  # resumed at 5 with exit_interval 6: stops at 6, not at 5 + 6 = 11
    assert sorted(logged(out)) == [6] and (tmp_path / "ckpt" / "latest").read_text() == "global_step5"


def test_exit_interval_at_train_iters_exits_before_the_post_training_save(tmp_path, dataset):
    """NeoX checks exit_interval inside the loop, so exit_interval == train_iters skips the end-of-training
    save: slices.py never writes exit_interval for the last slice."""
    config = make_config(
        tmp_path, dataset, train_iters=8, checkpoint_factor=5, log_interval=1, exit_interval=8
    )
    out = train_here(config)
    assert "exiting the program at iteration 8" in out
    assert (tmp_path / "ckpt" / "latest").read_text() == "global_step5"


def test_two_gloo_ranks_equal_one_rank_with_the_same_global_batch(tmp_path, dataset, spawned):
    """2 ranks x micro 2 vs 1 rank x micro 2 x 2 accumulation steps: the same 4 samples per iteration."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one = make_config(
        tmp_path / "one",
        dataset,
        train_iters=10,
        train_micro_batch_size_per_gpu=2,
        gradient_accumulation_steps=2,
    )
    two = make_config(
        tmp_path / "two", dataset, train_iters=10, train_micro_batch_size_per_gpu=2, train_batch_size=4
    )
    ranks = start_ranks(two, spawned)
    single = train_here(one)
    outs = [p.communicate(timeout=120) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert "2 rank(s)" in outs[0][0] and "train_batch_size 4" in outs[0][0]
    assert logged(outs[1][0]) == {} and "ready now" not in outs[1][0]  # rank 1 neither logs nor saves
    dp, sp = logged(outs[0][0]), logged(single)
    assert sorted(dp) == sorted(sp) == [5, 10]
    for i in dp:  # same samples, averaged gradients: equal up to float summation order
        assert dp[i][0] == sp[i][0]
        assert float(dp[i][1]) == pytest.approx(float(sp[i][1]), rel=1e-5)
    assert (tmp_path / "two" / "ckpt" / "latest").read_text() == "global_step10"
    state = torch.load(tmp_path / "two" / "ckpt" / "global_step10" / ck.MODEL_STATES, weights_only=False)
    assert state["dp_world_size"] == 2 and state["data_position"]["consumed_samples"] == 40


def _until_iteration(proc: subprocess.Popen, iteration: int) -> list[str]:
    lines = []
    for line in proc.stdout:  # wait until training is under way
        lines.append(line)
        if f"iteration {iteration:8d}/" in line:
            return lines
    raise AssertionError(f"training ended before iteration {iteration}: {''.join(lines)[-2000:]}")


def _assert_nothing_saved(save: Path, lines: list[str], out: str) -> None:
    assert "ready now" not in "".join(lines) + out
    assert not (save / "latest").exists() and not list(save.glob("global_step*"))


def test_sigusr1_kills_the_trainer_without_a_save_like_neox(tmp_path, dataset, spawned):
    """GPT-NeoX has no signal handler, so USR1 kills it and saves nothing. The stand-in used to save on the
    signal and exit 0, which made a slice end look loss-free here while real NeoX lost the work; the
    batch script's trap (drain a save in progress, then TERM) is the safety net, not the trainer."""
    config = make_config(tmp_path, dataset, train_iters=100000, checkpoint_factor=None, log_interval=1)
    proc = subprocess.Popen(
        [sys.executable, str(TRAIN), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(),
    )
    spawned.append(proc)
    lines = _until_iteration(proc, 3)
    proc.send_signal(signal.SIGUSR1)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGUSR1
    _assert_nothing_saved(tmp_path / "ckpt", lines, rest)


def test_sigterm_to_every_rank_kills_the_job_without_a_save_like_neox(tmp_path, dataset, spawned):
    """scancel --signal=TERM reaches every rank: each dies of it and, as on NeoX, nothing is saved."""
    config = make_config(tmp_path, dataset, train_iters=100000, checkpoint_factor=None, log_interval=1)
    ranks = start_ranks(config, spawned)
    lines = _until_iteration(ranks[0], 3)
    for proc in ranks:
        proc.send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=60) for p in ranks]
    assert [p.returncode for p in ranks] == [-signal.SIGTERM, -signal.SIGTERM]
    _assert_nothing_saved(tmp_path / "ckpt", lines, outs[0][0])
