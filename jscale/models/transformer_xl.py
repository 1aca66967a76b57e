"""Transformer-XL (Dai et al. 2019): segment-level recurrence with relative positional encoding.

Each layer caches its input hidden states of the previous segment (under stop-gradient) as a memory of mem_len
positions; keys and values are computed over [memory; current segment], queries over the current segment only.
Positions enter only through relative distances: with R the sinusoidal embedding of distance i - j,

    score(i, j) = (q_i + u) . k_j + (q_i + v) . (W_kR R_{i-j}),    scaled by 1 / sqrt(d_head),

with learned per-layer biases u and v (r_w_bias, r_r_bias) and the position key projection W_kR (r_net). Blocks
are pre-LayerNorm with GPT-2's names (ln_1, attn/c_attn, attn/c_proj, ln_2, mlp), so the rest of jscale treats the
parameters as it treats the Transformer's. Shape letters: B batch, T segment length (n_ctx), M memory length,
S = M + T keys, D d_model, H heads, K head dim, V vocabulary.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jscale.config import ModelConfig
from jscale.models.transformer import MLP, _dense, _layer_norm, compute_dtype


def relative_sinusoid(S: int, d_model: int) -> jax.Array:
    """Sinusoidal embeddings of the distances S-1, S-2, ..., 0 (descending, as Dai et al.): (S, d_model)."""
    distance_S = jnp.arange(S - 1, -1, -1, dtype=jnp.float32)
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model))
    angle_SxD2 = distance_S[:, None] * inv_freq[None]
    return jnp.concatenate([jnp.sin(angle_SxD2), jnp.cos(angle_SxD2)], axis=-1)[:, :d_model]


class RelativeAttention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, mem_BxMxD: jax.Array | None, deterministic: bool) -> jax.Array:
        cfg, dtype = self.cfg, compute_dtype(self.cfg)
        B, T, D = x_BxTxD.shape
        H, K = cfg.n_heads, cfg.d_head
        cat_BxSxD = x_BxTxD if mem_BxMxD is None else jnp.concatenate([mem_BxMxD.astype(x_BxTxD.dtype), x_BxTxD], 1)
        S = cat_BxSxD.shape[1]
        M = S - T
        # As Dai et al.: one fused projection over [memory; segment], queries kept for the segment only.
        qkv_BxSx3A = _dense(3 * cfg.d_attn_, "c_attn", dtype)(cat_BxSxD)
        q_BxTxHxK = qkv_BxSx3A[:, M:, :H * K].reshape(B, T, H, K)
        k_BxSxHxK = qkv_BxSx3A[..., H * K:2 * H * K].reshape(B, S, H, K)
        v_BxSxHxK = qkv_BxSx3A[..., 2 * H * K:].reshape(B, S, H, K)
        r_SxHxK = _dense(cfg.d_attn_, "r_net", dtype, use_bias=False)(
            relative_sinusoid(S, D).astype(dtype)).reshape(S, H, K)
        u_HxK = self.param("r_w_bias", nn.initializers.zeros, (H, K), jnp.float32).astype(dtype)
        v_HxK = self.param("r_r_bias", nn.initializers.zeros, (H, K), jnp.float32).astype(dtype)

        content_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK + u_HxK, k_BxSxHxK)
        # Position term against every distance, then each (query i, key j) picks distance M + i - j, which sits
        # at index T - 1 - i + j of R (descending distances). Future keys are masked below.
        by_distance_BxHxTxS = jnp.einsum("bthk,shk->bhts", q_BxTxHxK + v_HxK, r_SxHxK)
        i_T, j_S = jnp.arange(T), jnp.arange(S)
        index_TxS = jnp.clip(T - 1 - i_T[:, None] + j_S[None, :], 0, S - 1)
        position_BxHxTxS = jnp.take_along_axis(by_distance_BxHxTxS, index_TxS[None, None], axis=-1)
        scores = (content_BxHxTxS + position_BxHxTxS).astype(jnp.float32) / math.sqrt(K)
        visible_TxS = j_S[None, :] <= M + i_T[:, None]
        scores = jnp.where(visible_TxS[None, None], scores, -1e30)
        probs_BxHxTxS = jax.nn.softmax(scores, axis=-1).astype(dtype)
        out_BxTxHxK = jnp.einsum("bhts,bshk->bthk", probs_BxHxTxS, v_BxSxHxK)
        out_BxTxD = _dense(D, "c_proj", dtype, 0.02 / math.sqrt(2 * cfg.n_layer))(out_BxTxHxK.reshape(B, T, H * K))
        return nn.Dropout(cfg.dropout)(out_BxTxD, deterministic=deterministic)


class XLBlock(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD, mem_BxMxD, deterministic: bool):
        dtype = compute_dtype(self.cfg)
        ln_1 = _layer_norm("ln_1", dtype)
        # The memory holds the previous segment's layer inputs; normalise them as this segment's are.
        mem = None if mem_BxMxD is None else ln_1(mem_BxMxD.astype(dtype))
        x_BxTxD = x_BxTxD + RelativeAttention(self.cfg, name="attn")(ln_1(x_BxTxD), mem, deterministic)
        x_BxTxD = x_BxTxD + MLP(self.cfg, name="mlp")(_layer_norm("ln_2", dtype)(x_BxTxD), deterministic)
        return x_BxTxD


class TransformerXL(nn.Module):
    """(tokens (B, T), memory: one (B, M, D) array per layer or None) -> (logits (B, T, V), new memory).

    The new memory keeps the last mem_len positions of [memory; this segment's layer inputs], under
    stop-gradient; mem_len defaults to cfg.mem_len (evaluation may pass a longer one)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, memory=None, deterministic: bool = True, mem_len: int | None = None):
        cfg, dtype = self.cfg, compute_dtype(self.cfg)
        cfg.check_length(tokens_BxT.shape[1])  # a segment; the memory holds the context before it
        mem_len = cfg.mem_len if mem_len is None else mem_len
        wte = nn.Embed(cfg.vocab_size, cfg.d_model, name="wte", dtype=dtype, param_dtype=jnp.float32,
                       embedding_init=nn.initializers.normal(0.02))
        x_BxTxD = nn.Dropout(cfg.dropout)(wte(tokens_BxT), deterministic=deterministic)
        new_memory = []
        for i in range(cfg.n_layer):
            mem = None if memory is None else jax.lax.stop_gradient(memory[i])  # no gradient into the past
            if mem_len > 0:
                cat = x_BxTxD if mem is None else jnp.concatenate([mem.astype(x_BxTxD.dtype), x_BxTxD], axis=1)
                new_memory.append(jax.lax.stop_gradient(cat[:, -mem_len:]).astype(jnp.float32))
            x_BxTxD = XLBlock(cfg, name=f"h_{i}")(x_BxTxD, mem, deterministic)
        x_BxTxD = _layer_norm("ln_f", dtype)(x_BxTxD)
        if cfg.tie_embeddings:
            logits_BxTxV = wte.attend(x_BxTxD)
        else:
            logits_BxTxV = _dense(cfg.vocab_size, "lm_head", dtype, use_bias=False)(x_BxTxD)
        return logits_BxTxV.astype(jnp.float32), (tuple(new_memory) if mem_len > 0 else None)

    def initial_memory(self, batch_size: int, mem_len: int | None = None):
        """Zeros: the memory a stream's first training segment sees. These positions are not masked (shapes stay
        fixed under jit), so that first segment attends to keys made from zero states; every later segment sees
        real memory. Evaluation starts with no memory at all and fills it from the tokens before each window."""
        mem_len = self.cfg.mem_len if mem_len is None else mem_len
        if mem_len == 0:
            return None
        return tuple(jnp.zeros((batch_size, mem_len, self.cfg.d_model), jnp.float32) for _ in range(self.cfg.n_layer))
