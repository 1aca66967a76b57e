"""GPT-2's decoder-only Transformer as a Flax linen module.

The parameter tree mirrors GPT-2's checkpoint layout one to one (wte, wpe, h_{i}/{ln_1, attn/{c_attn, c_proj}, ln_2,
mlp/{c_fc, c_proj}}, ln_f), with Dense kernels stored (in, out) like GPT-2's Conv1D weights, so weights can be
exported to other GPT-2 implementations without touching the model. Shape letters: B batch, T positions,
D d_model, A d_attn, H heads, G key/value heads (grouped-query attention; G = H is GPT-2), K head dim (A / H),
F d_ff, V vocabulary.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jscale.config import ModelConfig
from jscale.models.attention import causal_attention
from jscale.models import dense

LAYER_NORM_EPS = 1e-5  # GPT-2's


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    if cfg.dtype == "auto":
        return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
    return jnp.dtype(cfg.dtype)


def attention_implementation(cfg: ModelConfig, dtype: jnp.dtype) -> str:
    """cuDNN's fused attention where it applies (GPU, 16-bit, head dim a multiple of 8 up to 256); on CPU the
    einsums with a hand-written backward of attention.py (measured faster there); else XLA's."""
    if cfg.attention != "auto":
        return cfg.attention
    if jax.default_backend() == "cpu":
        return "einsum"
    cudnn_ok = (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
                and cfg.d_head % 8 == 0 and cfg.d_head <= 256)
    return "cudnn" if cudnn_ok else "xla"


def _dense(features: int, name: str, dtype, std: float = 0.02, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, name=name, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.normal(std), bias_init=nn.initializers.zeros,
                    dot_general=dense.for_backend())


def _layer_norm(name: str, dtype) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, name=name, dtype=dtype, param_dtype=jnp.float32)


class CausalSelfAttention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, deterministic: bool) -> jax.Array:
        cfg, dtype = self.cfg, compute_dtype(self.cfg)
        B, T, _ = x_BxTxD.shape
        H, G, K = cfg.n_heads, cfg.n_kv_heads_, cfg.d_head  # G key/value heads, each shared by H / G query heads
        # Fused projection, GPT-2's c_attn; with G = H its columns are [q | k | v] of d_attn each.
        qkv = _dense((H + 2 * G) * K, "c_attn", dtype)(x_BxTxD)
        q_BxTxHxK = qkv[..., :H * K].reshape(B, T, H, K)
        k_BxTxGxK = qkv[..., H * K:(H + G) * K].reshape(B, T, G, K)
        v_BxTxGxK = qkv[..., (H + G) * K:].reshape(B, T, G, K)
        implementation = attention_implementation(cfg, dtype)
        if implementation == "einsum":
            out_BxTxHxK = causal_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK)
        else:
            out_BxTxHxK = jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, is_causal=True,
                                                       implementation=implementation)
        # GPT-2 scales the residual projections' init by 1/sqrt(2 n_layer).
        out_BxTxD = _dense(cfg.d_model, "c_proj", dtype, 0.02 / math.sqrt(2 * cfg.n_layer))(
            out_BxTxHxK.reshape(B, T, H * K))
        return nn.Dropout(cfg.dropout)(out_BxTxD, deterministic=deterministic)


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, deterministic: bool) -> jax.Array:
        cfg, dtype = self.cfg, compute_dtype(self.cfg)
        h_BxTxF = nn.gelu(_dense(cfg.d_ff_, "c_fc", dtype)(x_BxTxD), approximate=True)  # GPT-2's tanh GELU
        out_BxTxD = _dense(cfg.d_model, "c_proj", dtype, 0.02 / math.sqrt(2 * cfg.n_layer))(h_BxTxF)
        return nn.Dropout(cfg.dropout)(out_BxTxD, deterministic=deterministic)


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, deterministic: bool) -> jax.Array:
        dtype = compute_dtype(self.cfg)
        x_BxTxD = x_BxTxD + CausalSelfAttention(self.cfg, name="attn")(_layer_norm("ln_1", dtype)(x_BxTxD),
                                                                       deterministic)
        x_BxTxD = x_BxTxD + MLP(self.cfg, name="mlp")(_layer_norm("ln_2", dtype)(x_BxTxD), deterministic)
        return x_BxTxD


def sinusoid(position, d_model: int) -> jax.Array:
    """The sinusoidal embedding of one position (Vaswani et al. 2017), shape (d_model,)."""
    i = jnp.arange(d_model // 2)
    angle = position / (10000.0 ** (2 * i / d_model))
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle), jnp.zeros(d_model % 2)])


# The step embedding is scaled to the token embeddings' size (initialised with std 0.02). At unit scale, as in
# Dehghani et al.'s coordinate embeddings, it drowns GPT-2's small embeddings: measured on the built-in corpus
# (2026-11-28, CPU), a 1-block, 4x-reused model at d_model 32 stayed at 3.11 nats after 150 steps, against 2.67
# without a step embedding and 2.70 with this scale.
STEP_EMBEDDING_SCALE = 0.02


def step_embedding(r: int, d_model: int) -> jax.Array:
    """What a Universal Transformer adds to the residual stream before pass r, shape (d_model,)."""
    return STEP_EMBEDDING_SCALE * sinusoid(r, d_model)


class Transformer(nn.Module):
    """tokens (B, T) int -> logits (B, T, V) float32. Serves model.kind "transformer" and "universal"."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT: jax.Array, deterministic: bool = True) -> jax.Array:
        cfg, dtype = self.cfg, compute_dtype(self.cfg)
        T = tokens_BxT.shape[1]
        cfg.check_length(T)
        wte = nn.Embed(cfg.vocab_size, cfg.d_model, name="wte", dtype=dtype, param_dtype=jnp.float32,
                       embedding_init=nn.initializers.normal(0.02))
        wpe = nn.Embed(cfg.n_ctx, cfg.d_model, name="wpe", dtype=dtype, param_dtype=jnp.float32,
                       embedding_init=nn.initializers.normal(0.01))
        x_BxTxD = wte(tokens_BxT) + wpe(jnp.arange(T))[None]
        x_BxTxD = nn.Dropout(cfg.dropout)(x_BxTxD, deterministic=deterministic)
        blocks = [Block(cfg, name=f"h_{i}") for i in range(cfg.n_layer)]
        # A Universal Transformer (Dehghani et al. 2018; Kaplan's "recurrent Transformer") applies the same
        # n_layer blocks `reuse` times, adding a (scaled) sinusoidal embedding of the repeat index before each pass.
        reuse = cfg.reuse if cfg.kind == "universal" else 1
        for r in range(reuse):
            if reuse > 1 and cfg.step_embedding:
                x_BxTxD = x_BxTxD + step_embedding(r, cfg.d_model).astype(dtype)
            for block in blocks:
                x_BxTxD = block(x_BxTxD, deterministic)
        x_BxTxD = _layer_norm("ln_f", dtype)(x_BxTxD)
        if cfg.tie_embeddings:
            logits_BxTxV = wte.attend(x_BxTxD)
        else:
            logits_BxTxV = _dense(cfg.vocab_size, "lm_head", dtype, use_bias=False)(x_BxTxD)
        return logits_BxTxV.astype(jnp.float32)
