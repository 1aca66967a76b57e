"""Exact parameter and FLOP accounting (Kaplan et al. 2020, Table 1), in both conventions.

- N: Kaplan's non-embedding parameters, 2 n_layer d_model (2 d_attn + d_ff): weight matrices of attention and
  feed-forward only (no embeddings, biases or layer norms).
- N_total: every parameter in the tree (Chinchilla's convention).
- Forward FLOPs per token per operation as in Table 1. Table 1's attention-mask term, 2 n_layer n_ctx d_attn, is the
  causal average (each query sees n_ctx / 2 keys on average, QK^T and AV 2 FLOPs per multiply-add each); a dense
  implementation that computes the full T x T score matrix, as XLA does, spends twice that.
- Training FLOPs per token: Kaplan's 6N, and the exact count 3 x forward (backward = 2 x forward) with attention and
  the de-embedding included (what MFU is measured against).
- Grouped-query attention (n_kv_heads G < n_heads H): the key and value projections shrink to G heads, so
  c_attn is d_model x (d_attn + 2 G d_head); the score and value matmuls keep all H query heads.
- Universal Transformer (blocks reused `reuse` times): N counts the unique parameters; N_compute = N x reuse is
  what each token passes through, so 6N in Kaplan's sense is 6 N_compute, and attention is paid once per pass.
- Transformer-XL (memory of M positions, segment T): keys and values span S = M + T positions, so the fused
  projection runs over S positions per T-token segment and the attention terms grow with M + T/2 (causal
  average) or M + T (dense); the position-key projection W_kR (d_model x d_attn per layer) is counted in N, the
  biases u and v with the biases. Its per-segment cost is charged per token as if the batch were one row (an
  upper bound: it is shared across rows).
- LSTM: 4 gates per layer, W_i (d_in x 4 d_model) and W_h (d_model x 4 d_model): N = 8 n_layer d_model^2 (with
  d_in = d_model), forward 2N per token plus the de-embedding; no positions, no attention.
"""

from __future__ import annotations

import dataclasses

from jscale.config import ModelConfig, eval_window_counts

PF_DAY = 8.64e19  # FLOPs in one petaflop/s-day


@dataclasses.dataclass(frozen=True)
class Accounting:
    params: dict[str, int]  # per operation, Table 1 rows plus biases/norms and an untied unembedding
    forward_flops: dict[str, float]  # per token per operation, causal-averaged attention
    N: int  # non-embedding parameters (Kaplan), unique ones for a Universal Transformer
    N_total: int  # all parameters (Chinchilla)
    N_compute: int  # non-embedding parameters each token passes through: N x reuse
    C_forward: float  # Kaplan's 2 N_compute + 2 depth n_ctx d_attn
    train_flops_6N: float  # Kaplan's 6N per token (6 N_compute)
    train_flops_exact: float  # 3 x every forward term, de-embedding included

    def train_flops(self, convention: str) -> float:
        return {"6N": self.train_flops_6N, "exact": self.train_flops_exact}[convention]


def account(cfg: ModelConfig, attention: str = "causal") -> Accounting:
    """Parameters and FLOPs per token of a model. attention='dense' counts the full T x T score matrix."""
    if cfg.kind == "lstm":
        return _account_lstm(cfg)
    if cfg.kind == "transformer_xl":
        return _account_xl(cfg, attention)
    if cfg.kind not in ("transformer", "universal"):
        raise ValueError(f"model.kind: no accounting for {cfg.kind!r}")
    L, D, A, F, T, V = cfg.n_layer, cfg.d_model, cfg.d_attn_, cfg.d_ff_, cfg.n_ctx, cfg.vocab_size
    QKV = A + 2 * cfg.n_kv_heads_ * cfg.d_head  # c_attn's output width: 3 d_attn without grouped-query attention
    r = cfg.reuse if cfg.kind == "universal" else 1
    params = {
        "embed": (V + T) * D,
        "attn_qkv": L * D * QKV,
        "attn_proj": L * A * D,
        "feed_forward": L * 2 * D * F,
        "unembed": 0 if cfg.tie_embeddings else D * V,
        # c_attn, c_proj, c_fc, mlp c_proj biases and two LayerNorms per block; the final LayerNorm.
        "biases_norms": L * (QKV + D + F + D + 4 * D) + 2 * D,
    }
    mask = {"causal": 2 * L * T * A, "dense": 4 * L * T * A}[attention]
    forward = {
        "embed": 4 * D,
        "attn_qkv": 2 * L * D * QKV * r,
        "attn_mask": mask * r,
        "attn_proj": 2 * L * A * D * r,
        "feed_forward": 2 * L * 2 * D * F * r,
        "de_embed": 2 * D * V,
    }
    N = params["attn_qkv"] + params["attn_proj"] + params["feed_forward"]
    return Accounting(
        params=params,
        forward_flops={k: float(v) for k, v in forward.items()},
        N=N,
        N_total=sum(params.values()),
        N_compute=N * r,
        C_forward=float(2 * N * r + 2 * L * r * T * A),
        train_flops_6N=float(6 * N * r),
        train_flops_exact=float(3 * sum(forward.values())),
    )


def _account_xl(cfg: ModelConfig, attention: str) -> Accounting:
    L, D, A, F, T, V, M = cfg.n_layer, cfg.d_model, cfg.d_attn_, cfg.d_ff_, cfg.n_ctx, cfg.vocab_size, cfg.mem_len
    params = {
        "embed": V * D,  # no absolute positions
        "attn_qkv": L * D * 3 * A,
        "attn_proj": L * A * D,
        "position_keys": L * D * A,  # W_kR
        "feed_forward": L * 2 * D * F,
        "unembed": 0 if cfg.tie_embeddings else D * V,
        "biases_norms": L * (3 * A + D + F + D + 4 * D + 2 * A) + 2 * D,  # ... + u and v
    }
    keys = {"causal": M + T / 2, "dense": M + T}[attention]  # keys seen per query
    span = (M + T) / T  # projections over [memory; segment] per segment token
    forward = {
        "embed": 0,
        "attn_qkv": 2 * L * D * 3 * A * span,
        "position_keys": 2 * L * D * A * span,
        "attn_mask": 2 * L * 3 * keys * A,  # content scores, position scores and the weighted sum of values
        "attn_proj": 2 * L * A * D,
        "feed_forward": 2 * L * 2 * D * F,
        "de_embed": 2 * D * V,
    }
    N = params["attn_qkv"] + params["attn_proj"] + params["position_keys"] + params["feed_forward"]
    return Accounting(params=params, forward_flops={k: float(v) for k, v in forward.items()}, N=N,
                      N_total=sum(params.values()), N_compute=N,
                      C_forward=float(2 * N + 2 * L * (M + T / 2) * 2 * A),
                      train_flops_6N=float(6 * N), train_flops_exact=float(3 * sum(forward.values())))


def _account_lstm(cfg: ModelConfig) -> Accounting:
    L, D, V = cfg.n_layer, cfg.d_model, cfg.vocab_size
    params = {"embed": V * D, "lstm_input": L * D * 4 * D, "lstm_recurrent": L * D * 4 * D,
              "unembed": 0 if cfg.tie_embeddings else D * V, "biases_norms": L * 4 * D}
    N = params["lstm_input"] + params["lstm_recurrent"]
    forward = {"lstm_input": 2 * params["lstm_input"], "lstm_recurrent": 2 * params["lstm_recurrent"],
               "de_embed": 2 * D * V}
    return Accounting(params=params, forward_flops={k: float(v) for k, v in forward.items()}, N=N,
                      N_total=sum(params.values()), N_compute=N, C_forward=float(2 * N),
                      train_flops_6N=float(6 * N), train_flops_exact=float(3 * sum(forward.values())))


def memory_estimate(cfg: ModelConfig, batch_size: int, bytes_per_activation: int) -> dict[str, float]:
    """Bytes for parameters + AdamW state + gradients (float32), and for activations kept for the backward pass.

    Activations follow Korthikanti et al. 2022 (no recomputation): per layer s*b*d*(34 + 5*h*s/d) bytes at 16 bits,
    scaled to the compute dtype, plus the float32 logits. An estimate, not a measurement.
    """
    acc = account(cfg)
    T, D, H = cfg.n_ctx, cfg.d_model, cfg.n_heads
    if cfg.kind == "lstm":  # 4 gates, c and h per position and layer
        per_layer = T * batch_size * D * 6 * bytes_per_activation
    else:
        per_layer = T * batch_size * D * (34 + 5 * H * T / D) * bytes_per_activation / 2
    logits = batch_size * T * cfg.vocab_size * 4
    return {"params_and_optimizer": 16.0 * acc.N_total, "activations": cfg.depth * per_layer + logits}


def step_flops(cfg) -> float:
    """Exact training FLOPs of one run's step (one member of an ensemble): its batch's tokens times the exact
    training FLOPs per token."""
    return cfg.train.batch_size * cfg.model.n_ctx * account(cfg.model).train_flops_exact


def eval_sets(cfg) -> int:
    """How many sets each evaluation scores: validation and test, and the extra sets (the built-in corpus's prose and
    notes, or data.extra_eval's)."""
    d = cfg.data
    if d.corpus == "builtin:stdlib":
        return 4
    return 2 + len([x for x in d.extra_eval.split(",") if x.strip()])


def eval_cost(cfg) -> dict[str, float]:
    """Tokens and forward FLOPs that one run's evaluations cost: the intermediate evaluations score
    curve_eval_windows windows per set, the final one all of them (config.eval_window_counts)."""
    m, t = cfg.model, cfg.train
    final, curve = eval_window_counts(cfg.data, m.n_ctx)
    evals = len(t.eval_steps())
    # each cooldown branch scores the validation set's final windows
    windows = eval_sets(cfg) * (final + curve * max(evals - 1, 0)) + t.anneal_branches * final
    tokens = windows * m.n_ctx
    flops = tokens * account(m).train_flops_exact / 3  # a forward pass is a third of a training step's FLOPs
    return {"windows_final": final, "windows_curve": curve, "sets": eval_sets(cfg), "evaluations": evals,
            "tokens": tokens, "flops": flops}
