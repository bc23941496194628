"""A compact GPT-NeoX (Pythia) architecture in plain PyTorch, for the CPU stand-in trainer.

Why not NeoX itself: the local cluster has no GPU, DeepSpeed or fused kernels, yet the pipeline must train
a model of the same shape from the same config keys. Why not transformers' GPTNeoXForCausalLM: it is not in
the cluster's pinned environment, and this file is small enough to read in one sitting.

What matches NeoX (megatron/model/transformer.py, gpt2_model.py):
- fused ``query_key_value`` projection laid out per head as ``[q | k | v]`` (heads x 3*head_dim);
- rotary embeddings on the first ``rotary_pct`` of each head's dims (``rotary_emb_base``), rotate-half form;
- ``gpt_j_residual``: ``x + attn(ln1(x)) + mlp(ln2(x))``; otherwise the sequential pre-LN block;
- LayerNorm (eps ``layernorm_epsilon``), 4h GELU MLP, a final LayerNorm and an untied ``embed_out``
  (tied to ``embed_in`` when ``no_weight_tying`` is false, NeoX's default);
- NeoX's ``small_init`` for weights and ``wang_init`` for the two output projections of every layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelShape:
    """The config values that determine the network (NeoX key names)."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int
    padded_vocab_size: int
    max_position_embeddings: int
    rotary_pct: float = 1.0
    rotary_emb_base: int = 10000
    gpt_j_residual: bool = False
    no_weight_tying: bool = False
    layernorm_epsilon: float = 1.0e-5
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if not 0.0 <= self.rotary_pct <= 1.0:
            raise ValueError(f"rotary_pct {self.rotary_pct} must be within [0, 1]")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rotary_ndims(self) -> int:
        """NeoX: int(head_dim * rotary_pct), rounded down to an even count (rotate-half needs pairs)."""
        return int(self.head_dim * self.rotary_pct) // 2 * 2


def rotary_tables(shape: ModelShape, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq, rotary_ndims] exactly as NeoX's RotaryEmbedding builds them (float32)."""
    dim = shape.rotary_ndims
    inv_freq = 1.0 / (shape.rotary_emb_base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    t = torch.arange(seq_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, ndims: int) -> torch.Tensor:
    """Rotate the first ``ndims`` dims of ``x`` [batch, heads, seq, head_dim]; pass the rest through."""
    if ndims == 0:
        return x
    rot, rest = x[..., :ndims], x[..., ndims:]
    return torch.cat((rot * cos + _rotate_half(rot) * sin, rest), dim=-1)


class Attention(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.query_key_value = nn.Linear(shape.hidden_size, 3 * shape.hidden_size)
        self.dense = nn.Linear(shape.hidden_size, shape.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        heads, hd = self.shape.num_attention_heads, self.shape.head_dim
        qkv = self.query_key_value(x).view(b, s, heads, 3 * hd).transpose(1, 2)
        q, k, v = qkv.split(hd, dim=-1)
        q = apply_rotary(q, cos, sin, self.shape.rotary_ndims)
        k = apply_rotary(k, cos, sin, self.shape.rotary_ndims)
        p = self.shape.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.dense(out.transpose(1, 2).reshape(b, s, heads * hd))


class MLP(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(shape.hidden_size, 4 * shape.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * shape.hidden_size, shape.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(F.gelu(self.dense_h_to_4h(x)))


class Layer(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.gpt_j_residual = shape.gpt_j_residual
        self.input_layernorm = nn.LayerNorm(shape.hidden_size, eps=shape.layernorm_epsilon)
        self.post_attention_layernorm = nn.LayerNorm(shape.hidden_size, eps=shape.layernorm_epsilon)
        self.attention = Attention(shape)
        self.mlp = MLP(shape)
        self.dropout = nn.Dropout(shape.hidden_dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.gpt_j_residual:
            attn = self.attention(self.input_layernorm(x), cos, sin)
            mlp = self.mlp(self.post_attention_layernorm(x))
            return x + self.dropout(attn + mlp)
        x = x + self.dropout(self.attention(self.input_layernorm(x), cos, sin))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class GPTNeoX(nn.Module):
    """Token ids [batch, seq] -> logits [batch, seq, padded_vocab_size]."""

    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        self.embed_in = nn.Embedding(shape.padded_vocab_size, shape.hidden_size)
        self.emb_dropout = nn.Dropout(shape.hidden_dropout)
        self.layers = nn.ModuleList(Layer(shape) for _ in range(shape.num_layers))
        self.final_layer_norm = nn.LayerNorm(shape.hidden_size, eps=shape.layernorm_epsilon)
        self.embed_out = nn.Linear(shape.hidden_size, shape.padded_vocab_size, bias=False)
        cos, sin = rotary_tables(shape, shape.max_position_embeddings)
        self.register_buffer("rotary_cos", cos, persistent=False)
        self.register_buffer("rotary_sin", sin, persistent=False)
        self.reset_parameters()
        if not shape.no_weight_tying:
            self.embed_out.weight = self.embed_in.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """NeoX init: small_init N(0, sqrt(2/(5h))) everywhere, wang_init 2/(L*sqrt(h)) on outputs."""
        h, layers = self.shape.hidden_size, max(self.shape.num_layers, 1)
        small, wang = math.sqrt(2.0 / (5.0 * h)), 2.0 / (layers * math.sqrt(h))
        for name, p in self.named_parameters():
            if "layernorm" in name or "layer_norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith("attention.dense.weight") or name.endswith("dense_4h_to_h.weight"):
                p.normal_(0.0, wang)
            else:
                p.normal_(0.0, small)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        if s > self.shape.max_position_embeddings:
            raise ValueError(
                f"sequence of {s} tokens exceeds max_position_embeddings {self.shape.max_position_embeddings}"
            )
        cos, sin = self.rotary_cos[:s], self.rotary_sin[:s]
        x = self.emb_dropout(self.embed_in(tokens))
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.embed_out(self.final_layer_norm(x))


class _CrossEntropy(torch.autograd.Function):
    """Mean token cross-entropy with a single exp pass over the logits.

    Why: with NeoX's 50304-entry vocabulary the loss dominates a tiny model's step on CPU. Autograd's
    log_softmax + nll_loss writes a log-probability copy, zero-fills a gradient buffer and runs a second
    exp pass in the backward. Here the forward keeps exp(logits - max) and the row sums; the backward
    scales them into softmax / N in place and subtracts 1/N at the targets. Same values as F.cross_entropy.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        peak = logits.amax(dim=-1, keepdim=True)
        e = (logits - peak).exp_()
        total = e.sum(dim=-1, keepdim=True)
        picked = logits.gather(-1, targets.unsqueeze(-1))
        ctx.save_for_backward(e, total, targets)
        return (peak + total.log() - picked).mean()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        e, total, targets = ctx.saved_tensors
        scale = grad_out / targets.numel()
        grad = e.mul_(scale / total)  # e is not needed again: it becomes the gradient
        grad.scatter_add_(-1, targets.unsqueeze(-1), (-scale).expand(targets.numel(), 1).contiguous())
        return grad, None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` [N, V] against ``targets`` [N] (see _CrossEntropy)."""
    return _CrossEntropy.apply(logits, targets)


def no_weight_decay(name: str) -> bool:
    """NeoX exempts biases and norms from weight decay (get_params_for_weight_decay_optimization)."""
    return name.endswith("bias") or "layernorm" in name or "layer_norm" in name
