"""Exact parameter and FLOP accounting (Kaplan et al. 2020, Table 1), in both conventions.

- N: Kaplan's non-embedding parameters, 2 n_layer d_model (2 d_attn + d_ff): weight matrices of attention and
  feed-forward only (no embeddings, biases or layer norms).
- N_total: every parameter in the tree (Chinchilla's convention).
- Forward FLOPs per token per operation as in Table 1. Table 1's attention-mask term, 2 n_layer n_ctx d_attn, is the
  causal average (each query sees n_ctx / 2 keys on average, QK^T and AV 2 FLOPs per multiply-add each); a dense
  implementation that computes the full T x T score matrix, as XLA does, spends twice that.
- Training FLOPs per token: Kaplan's 6N, and the exact count 3 x forward (backward = 2 x forward) with attention and
  the de-embedding included (what MFU is measured against).
"""

from __future__ import annotations

import dataclasses

from jscale.config import ModelConfig

PF_DAY = 8.64e19  # FLOPs in one petaflop/s-day


@dataclasses.dataclass(frozen=True)
class Accounting:
    params: dict[str, int]  # per operation, Table 1 rows plus biases/norms and an untied unembedding
    forward_flops: dict[str, float]  # per token per operation, causal-averaged attention
    N: int  # non-embedding parameters (Kaplan)
    N_total: int  # all parameters (Chinchilla)
    C_forward: float  # Kaplan's 2N + 2 n_layer n_ctx d_attn
    train_flops_6N: float  # Kaplan's 6N per token
    train_flops_exact: float  # 3 x every forward term, de-embedding included

    def train_flops(self, convention: str) -> float:
        return {"6N": self.train_flops_6N, "exact": self.train_flops_exact}[convention]


def account(cfg: ModelConfig, attention: str = "causal") -> Accounting:
    """Parameters and FLOPs per token of a model. attention='dense' counts the full T x T score matrix."""
    if cfg.kind != "transformer":
        raise ValueError(f"model.kind: no accounting for {cfg.kind!r}")
    L, D, A, F, T, V = cfg.n_layer, cfg.d_model, cfg.d_attn_, cfg.d_ff_, cfg.n_ctx, cfg.vocab_size
    params = {
        "embed": (V + T) * D,
        "attn_qkv": L * D * 3 * A,
        "attn_proj": L * A * D,
        "feed_forward": L * 2 * D * F,
        "unembed": 0 if cfg.tie_embeddings else D * V,
        # c_attn, c_proj, c_fc, mlp c_proj biases and two LayerNorms per block; the final LayerNorm.
        "biases_norms": L * (3 * A + D + F + D + 4 * D) + 2 * D,
    }
    mask = {"causal": 2 * L * T * A, "dense": 4 * L * T * A}[attention]
    forward = {
        "embed": 4 * D,
        "attn_qkv": 2 * L * D * 3 * A,
        "attn_mask": mask,
        "attn_proj": 2 * L * A * D,
        "feed_forward": 2 * L * 2 * D * F,
        "de_embed": 2 * D * V,
    }
    N = params["attn_qkv"] + params["attn_proj"] + params["feed_forward"]
    return Accounting(
        params=params,
        forward_flops={k: float(v) for k, v in forward.items()},
        N=N,
        N_total=sum(params.values()),
        C_forward=float(2 * N + 2 * L * T * A),
        train_flops_6N=float(6 * N),
        train_flops_exact=float(3 * sum(forward.values())),
    )


def memory_estimate(cfg: ModelConfig, batch_size: int, bytes_per_activation: int) -> dict[str, float]:
    """Bytes for parameters + AdamW state + gradients (float32), and for activations kept for the backward pass.

    Activations follow Korthikanti et al. 2022 (no recomputation): per layer s*b*d*(34 + 5*h*s/d) bytes at 16 bits,
    scaled to the compute dtype, plus the float32 logits. An estimate, not a measurement.
    """
    acc = account(cfg)
    T, D, H = cfg.n_ctx, cfg.d_model, cfg.n_heads
    per_layer = T * batch_size * D * (34 + 5 * H * T / D) * bytes_per_activation / 2
    logits = batch_size * T * cfg.vocab_size * 4
    return {"params_and_optimizer": 16.0 * acc.N_total, "activations": cfg.n_layer * per_layer + logits}
