"""The GPT-2 Transformer: causality, GPT-2's parameter layout, attention and dtype choices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale.config import ModelConfig
from jscale.models import build
from jscale.models import transformer

CFG = ModelConfig(n_layer=2, d_model=32, n_heads=4, n_ctx=16, vocab_size=64)


def _init(cfg):
    """(The models' functions run compiled whole in these tests: op by op, every primitive compiles at every shape.)"""
    model = build(cfg)
    return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, cfg.n_ctx), jnp.int32))["params"]


@pytest.mark.parametrize("tie", [True, False])
def test_changing_token_t_leaves_earlier_logits_unchanged(tie):
    cfg = ModelConfig(**{**CFG.__dict__, "tie_embeddings": tie})
    model, params = _init(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, cfg.n_ctx), 0, cfg.vocab_size)
    t = 9
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % cfg.vocab_size)
    apply = jax.jit(model.apply)
    a, b = apply({"params": params}, tokens), apply({"params": params}, changed)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert not np.allclose(a[:, t:], b[:, t:])


def test_parameter_tree_is_gpt2s_layout():
    cfg = ModelConfig(n_layer=2, d_model=32, n_heads=4, n_ctx=16, vocab_size=64, d_ff=48, d_attn=24,
                      tie_embeddings=False)
    _, params = _init(cfg)
    shapes = jax.tree_util.tree_map(lambda x: x.shape, params)
    assert shapes["wte"] == {"embedding": (64, 32)}
    assert shapes["wpe"] == {"embedding": (16, 32)}
    assert shapes["h_1"]["attn"]["c_attn"] == {"kernel": (32, 72), "bias": (72,)}  # GPT-2 Conv1D: (in, out)
    assert shapes["h_1"]["attn"]["c_proj"] == {"kernel": (24, 32), "bias": (32,)}
    assert shapes["h_0"]["mlp"]["c_fc"] == {"kernel": (32, 48), "bias": (48,)}
    assert shapes["h_0"]["mlp"]["c_proj"] == {"kernel": (48, 32), "bias": (32,)}
    assert shapes["h_0"]["ln_1"] == shapes["h_0"]["ln_2"] == shapes["ln_f"] == {"scale": (32,), "bias": (32,)}
    assert shapes["lm_head"] == {"kernel": (32, 64)}
    assert set(params) == {"wte", "wpe", "h_0", "h_1", "ln_f", "lm_head"}
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_tied_logits_are_the_token_embedding_transposed():
    model, params = _init(CFG)
    tokens = jnp.arange(CFG.n_ctx)[None] % CFG.vocab_size
    # Recompute the last step by hand: final LayerNorm output times wte^T.
    logits, inter = jax.jit(lambda p, x: model.apply(p, x, capture_intermediates=True))({"params": params}, tokens)
    h = inter["intermediates"]["ln_f"]["__call__"][0]
    np.testing.assert_allclose(logits, h @ params["wte"]["embedding"].T, rtol=1e-5, atol=1e-5)


def test_attention_implementation_choice(monkeypatch):
    assert transformer.attention_implementation(CFG, jnp.float32) == "xla"  # CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert transformer.attention_implementation(CFG, jnp.bfloat16) == "cudnn"  # head dim 8
    assert transformer.attention_implementation(CFG, jnp.float32) == "xla"  # cuDNN needs 16-bit
    odd = ModelConfig(d_model=36, n_heads=3)  # head dim 12, not a multiple of 8
    assert transformer.attention_implementation(odd, jnp.bfloat16) == "xla"
    assert transformer.compute_dtype(CFG) == jnp.bfloat16
    assert transformer.attention_implementation(ModelConfig(attention="xla"), jnp.bfloat16) == "xla"


def test_bfloat16_compute_keeps_float32_params_and_logits():
    cfg = ModelConfig(**{**CFG.__dict__, "dtype": "bfloat16"})
    model, params = _init(cfg)
    logits = jax.jit(model.apply)({"params": params}, jnp.zeros((1, 8), jnp.int32))
    assert logits.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    f32 = jax.jit(build(CFG).apply)({"params": params}, jnp.zeros((1, 8), jnp.int32))
    np.testing.assert_allclose(logits, f32, atol=0.1)


def test_dropout_is_active_only_when_not_deterministic():
    cfg = ModelConfig(**{**CFG.__dict__, "dropout": 0.5})
    model, params = _init(cfg)
    tokens = jnp.zeros((1, 8), jnp.int32)
    apply = jax.jit(model.apply, static_argnames="deterministic")
    det = apply({"params": params}, tokens)
    np.testing.assert_array_equal(det, apply({"params": params}, tokens))
    drop = apply({"params": params}, tokens, deterministic=False, rngs={"dropout": jax.random.key(0)})
    assert not np.allclose(det, drop)
