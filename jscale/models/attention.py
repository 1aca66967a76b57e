"""Causal attention written out as einsums, with its backward pass written by hand.

What `model.attention = "auto"` runs on CPU. The maths is `jax.nn.dot_product_attention(..., is_causal=True)`'s;
what differs is the backward pass. Autodiff of the softmax and its mask makes XLA keep and re-read several
[B, H, T, T] tensors, and with 8-wide heads those tensors, not the matrix products, are what a small model's step
spends its time on. The hand-written backward is the one FlashAttention uses, from the saved probabilities P:

    dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = dS K / sqrt(K),  dK = dS^T Q / sqrt(K)

so a layer's backward reads P once and makes two [B, H, T, T] tensors (dP, dS). Measured on this project's 2-core CPU
(2026-12-06 UTC, benchmarks/RESULTS.md): jscale's train_step of a 2-layer d_model 48 model (six 8-wide heads, n_ctx
64, batch 32) 30.0 ms with XLA's attention, 18.8 ms with this one. Gradients agree with XLA's to float32 rounding
(tests/test_model.py), not bitwise, and at the learning rates a sweep picks the rounding grows: runs of the long
scale's sizes ended 0.003 to 0.02 nats from XLA's twins, about as far apart as two seeds.

Shape letters as in transformer.py: B batch, T query positions, S key positions, H query heads, G key/value heads,
K head dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _probabilities(q_BxHxTxK: jax.Array, k_BxHxSxK: jax.Array) -> jax.Array:
    """Causal softmax of the scaled scores, in float32: P, shape (B, H, T, S)."""
    T, K = q_BxHxTxK.shape[2], q_BxHxTxK.shape[3]
    scores_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK,
                                preferred_element_type=jnp.float32) * (1.0 / math.sqrt(K))
    causal_TxS = jnp.tril(jnp.ones((T, T), bool))
    scores_BxHxTxS = jnp.where(causal_TxS, scores_BxHxTxS, jnp.finfo(jnp.float32).min)
    # Any shift gives the same softmax; the row maximum (the diagonal is never masked) keeps exp finite.
    shifted_BxHxTxS = scores_BxHxTxS - scores_BxHxTxS.max(axis=-1, keepdims=True)
    e_BxHxTxS = jnp.exp(shifted_BxHxTxS)
    return e_BxHxTxS / e_BxHxTxS.sum(axis=-1, keepdims=True)


def _forward(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK):
    p_BxHxTxS = _probabilities(q_BxHxTxK, k_BxHxSxK)
    out_BxHxTxK = jnp.einsum("bhts,bhsk->bhtk", p_BxHxTxS.astype(v_BxHxSxK.dtype), v_BxHxSxK)
    return out_BxHxTxK, p_BxHxTxS


@jax.custom_vjp
def _causal_attention_heads_first(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK):
    return _forward(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK)[0]


def _attention_fwd(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK):
    out_BxHxTxK, p_BxHxTxS = _forward(q_BxHxTxK, k_BxHxSxK, v_BxHxSxK)
    return out_BxHxTxK, (q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, out_BxHxTxK, p_BxHxTxS)


def _over_queries(m_BxHxTxS: jax.Array, x_BxHxTxK: jax.Array) -> jax.Array:
    """sum_t m[t, s] x[t, k], shape (B, H, S, K), in float32: the backward's two products over the query axis.

    Made as the (K, S) product and transposed: XLA:CPU runs a contraction over both operands' leading axis fast when
    its result is narrow by wide (0.40 against 0.75 ms for these at B 32, H 6, T 64, K 8, one core, 2026-12-06), and
    the barrier keeps XLA from folding the transpose back into the product. Bitwise the same sums."""
    x_m_BxHxKxS = jnp.einsum("bhtk,bhts->bhks", x_BxHxTxK, m_BxHxTxS, preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(x_m_BxHxKxS).swapaxes(2, 3)


def _attention_bwd(saved, dout_BxHxTxK):
    q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, out_BxHxTxK, p_BxHxTxS = saved
    f32 = jnp.float32
    scale = 1.0 / math.sqrt(q_BxHxTxK.shape[-1])
    dv_BxHxSxK = _over_queries(p_BxHxTxS, dout_BxHxTxK)
    dp_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", dout_BxHxTxK, v_BxHxSxK, preferred_element_type=f32)
    # The softmax's Jacobian: dS = P * (dP - sum_s P dP), and sum_s P dP = sum_k dO O.
    row_BxHxTx1 = jnp.sum(dout_BxHxTxK.astype(f32) * out_BxHxTxK.astype(f32), axis=-1, keepdims=True)
    ds_BxHxTxS = p_BxHxTxS * (dp_BxHxTxS - row_BxHxTx1)
    # The scores' scale goes on the small products: on dS itself it made the d_model 48 step 26.7 ms, not 18.8.
    dq_BxHxTxK = scale * jnp.einsum("bhts,bhsk->bhtk", ds_BxHxTxS, k_BxHxSxK, preferred_element_type=f32)
    dk_BxHxSxK = scale * _over_queries(ds_BxHxTxS, q_BxHxTxK)
    return (dq_BxHxTxK.astype(q_BxHxTxK.dtype), dk_BxHxSxK.astype(k_BxHxSxK.dtype),
            dv_BxHxSxK.astype(v_BxHxSxK.dtype))


_causal_attention_heads_first.defvjp(_attention_fwd, _attention_bwd)


def causal_attention(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array) -> jax.Array:
    """Causal multi-head attention in `jax.nn.dot_product_attention`'s layout; returns (B, T, H, K).

    With G < H key/value heads (grouped-query attention), query head h reads key/value head h // (H / G), as in
    `jax.nn.dot_product_attention`; the repeat happens outside the hand-written part, so autodiff sums its gradient.
    """
    H, G = q_BxTxHxK.shape[2], k_BxTxGxK.shape[2]
    if G != H:
        k_BxTxGxK = jnp.repeat(k_BxTxGxK, H // G, axis=2)
        v_BxTxGxK = jnp.repeat(v_BxTxGxK, H // G, axis=2)
    heads_first = lambda x_BxTxHxK: x_BxTxHxK.transpose(0, 2, 1, 3)  # noqa: E731  (B, H, T, K), its own inverse
    return heads_first(_causal_attention_heads_first(heads_first(q_BxTxHxK), heads_first(k_BxTxGxK),
                                                     heads_first(v_BxTxGxK)))
