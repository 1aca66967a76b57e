"""Cached decoding reproduces each model's own forward pass, position by position."""

import jax
import numpy as np
import pytest

from jscale import generate
from jscale.config import ModelConfig
from jscale.models import build

CASES = {
    "multi-head": dict(kind="transformer", n_layer=2, d_model=32, n_heads=4),
    "grouped-query": dict(kind="transformer", n_layer=2, d_model=32, n_heads=4, n_kv_heads=2),
    "multi-query, untied": dict(kind="transformer", n_layer=1, d_model=32, n_heads=4, n_kv_heads=1,
                                tie_embeddings=False),
    "universal x3": dict(kind="universal", n_layer=1, reuse=3, d_model=32, n_heads=4),
    "lstm": dict(kind="lstm", n_layer=2, d_model=32),
}


@pytest.mark.parametrize("name", CASES)
def test_decoding_one_token_at_a_time_matches_the_full_forward_pass(name):
    cfg = ModelConfig(n_ctx=12, dtype="float32", **CASES[name])
    params = generate.init_params(cfg, seed=1)
    tokens = jax.random.randint(jax.random.key(2), (12,), 0, 256)
    full_TxV = jax.jit(build(cfg).apply)({"params": params}, tokens[None])[0]
    init, step = generate.decoder(cfg)
    step = jax.jit(step)
    cache, rows = init(params), []
    for t in range(12):
        logits_V, cache = step(params, cache, tokens[t], t)
        rows.append(logits_V)
    np.testing.assert_allclose(np.stack(rows), full_TxV, atol=2e-5)


def test_transformer_xl_decodes_with_its_memory():
    """After a prefix fills the memory, feeding one token at a time equals one pass over the next segment."""
    cfg = ModelConfig(kind="transformer_xl", n_layer=1, d_model=16, n_heads=2, n_ctx=4, mem_len=8, dtype="float32")
    model = build(cfg)
    apply = jax.jit(model.apply, static_argnames="mem_len")
    params = generate.init_params(cfg, seed=1)
    tokens = jax.random.randint(jax.random.key(3), (8,), 0, 256)
    _, memory = apply({"params": params}, tokens[None, :4], None, mem_len=8)
    segment_TxV = apply({"params": params}, tokens[None, 4:], memory, mem_len=8)[0][0]
    _, step = generate.decoder(cfg)
    step = jax.jit(step)  # the memory grows by one position per token: one compile per step
    rows = []
    for t in range(4, 8):
        logits_V, memory = step(params, memory, tokens[t], t)
        rows.append(logits_V)
    np.testing.assert_allclose(np.stack(rows), segment_TxV, atol=2e-5)


def test_latency_and_decoding_state():
    mha = ModelConfig(n_layer=2, d_model=32, n_heads=4, n_ctx=16, dtype="float32")
    mqa = ModelConfig(n_layer=2, d_model=32, n_heads=4, n_kv_heads=1, n_ctx=16, dtype="float32")
    # K and V, 2 layers, 16 positions, G heads of 8 dims, 4 bytes: multi-query keeps a quarter of it.
    assert generate.cache_bytes(mha) == 2 * 2 * 16 * 4 * 8 * 4
    assert generate.cache_bytes(mqa) == generate.cache_bytes(mha) // 4
    lat = generate.latency_per_token(mha, repeats=2)
    assert lat["seconds_per_token"] > 0 and lat["tokens"] == 16 and lat["device"] == jax.devices()[0].device_kind
