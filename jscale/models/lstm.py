"""An LSTM language model (Kaplan et al. 2020, Fig. 7, compared 1-, 2- and 4-layer LSTMs with Transformers).

Embedding, n_layer stacked LSTM layers of hidden size d_model, and a tied (or untied) unembedding. Each layer's input
projection x W_i + b for all T positions is one matmul outside the time loop; only h W_h stays inside the
`lax.scan` over time. Gate order (i, f, g, o); the forget-gate bias starts at 1. Shape letters: B batch,
T positions, D d_model (= hidden size), V vocabulary.

model.lstm_impl = "cudnn" runs the same parameters through cuDNN's fused LSTM (`jax.experimental.rnn`, GPU only):
`cudnn_weights` packs them into cuDNN's flat layout (tests check the packing against JAX's reference LSTM on the
CPU). Which is faster has not been measured on a GPU yet, so the default is the scan.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jscale.config import ModelConfig
from jscale.models import dense
from jscale.models.transformer import compute_dtype


# Unit-variance embeddings (Flax's and PyTorch's default), not GPT-2's 0.02: the LSTM has no LayerNorm to rescale
# its input, and with 0.02 a 2-layer LSTM (d_model 80, byte tokens, 250 steps of 16 x 128 tokens; 2026-11-28, CPU)
# stayed at 3.09 nats, against 2.75 with 0.1 and 2.05 with 1.0.
EMBED_STD = 1.0


def _forget_bias(key, shape, dtype=jnp.float32):
    H = shape[0] // 4
    return jnp.zeros(shape, dtype).at[H:2 * H].set(1.0)


class LSTMLayer(nn.Module):
    hidden: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        H = self.hidden
        # Hoisted input projection: one (B*T, D) x (D, 4H) matmul instead of T small ones.
        xi_BxTx4H = nn.Dense(4 * H, name="wi", dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=nn.initializers.normal(x_BxTxD.shape[-1] ** -0.5),
                             bias_init=_forget_bias, dot_general=dense.for_backend())(x_BxTxD)
        wh_Hx4H = self.param("wh", nn.initializers.orthogonal(), (H, 4 * H), jnp.float32).astype(self.dtype)
        B = x_BxTxD.shape[0]

        def step(carry, xi_Bx4H):
            h_BxH, c_BxH = carry
            gates = xi_Bx4H + h_BxH @ wh_Hx4H
            i, f, g, o = jnp.split(gates, 4, axis=-1)
            c_BxH = jax.nn.sigmoid(f) * c_BxH + jax.nn.sigmoid(i) * jnp.tanh(g)
            h_BxH = jax.nn.sigmoid(o) * jnp.tanh(c_BxH)
            return (h_BxH, c_BxH), h_BxH

        zeros = jnp.zeros((B, H), self.dtype)
        _, h_TxBxH = jax.lax.scan(step, (zeros, zeros), jnp.swapaxes(xi_BxTx4H, 0, 1))
        return jnp.swapaxes(h_TxBxH, 0, 1)


def cudnn_weights(params, n_layer: int) -> jax.Array:
    """Our LSTM parameters in cuDNN's flat layout: every layer's W_ih (4H, in) and W_hh (4H, H), then every
    layer's b_ih and b_hh (4H each; ours has one bias, so b_hh = 0). Same gate order (i, f, g, o)."""
    weights, biases = [], []
    for i in range(n_layer):
        layer = params[f"lstm_{i}"]
        weights += [layer["wi"]["kernel"].T.ravel(), layer["wh"].T.ravel()]
        biases += [layer["wi"]["bias"], jnp.zeros_like(layer["wi"]["bias"])]
    return jnp.concatenate(weights + biases)


def _cudnn_lstm(x_BxTxD: jax.Array, params, n_layer: int) -> jax.Array:
    from jax.experimental import rnn

    B, T, D = x_BxTxD.shape
    zeros = jnp.zeros((n_layer, B, D), x_BxTxD.dtype)
    y_BxTxD, _, _ = rnn.lstm(x_BxTxD, zeros, zeros, cudnn_weights(params, n_layer).astype(x_BxTxD.dtype),
                             jnp.full((B,), T, jnp.int32), D, D, n_layer, 0.0, False)
    return y_BxTxD


class LSTM(nn.Module):
    """tokens (B, T) int -> logits (B, T, V) float32."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg, dtype = self.cfg, compute_dtype(self.cfg)
        cfg.check_length(tokens_BxT.shape[1])
        wte = nn.Embed(cfg.vocab_size, cfg.d_model, name="wte", dtype=dtype, param_dtype=jnp.float32,
                       embedding_init=nn.initializers.normal(EMBED_STD))
        x_BxTxD = nn.Dropout(cfg.dropout)(wte(tokens_BxT), deterministic=deterministic)
        if cfg.lstm_impl == "cudnn" and not self.is_initializing():
            # The same parameters (created by the scan layers at init), run by cuDNN in one fused call.
            x_BxTxD = _cudnn_lstm(x_BxTxD, self.variables["params"], cfg.n_layer)
        else:
            for i in range(cfg.n_layer):
                x_BxTxD = LSTMLayer(cfg.d_model, dtype, name=f"lstm_{i}")(x_BxTxD)
                x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic)
        if cfg.tie_embeddings:
            logits_BxTxV = wte.attend(x_BxTxD)
        else:
            logits_BxTxV = nn.Dense(cfg.vocab_size, use_bias=False, name="lm_head", dtype=dtype,
                                    param_dtype=jnp.float32, kernel_init=nn.initializers.normal(0.02),
                                    dot_general=dense.for_backend())(x_BxTxD)
        return logits_BxTxV.astype(jnp.float32)
