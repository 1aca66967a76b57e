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
    assert transformer.attention_implementation(CFG, jnp.float32) == "einsum"  # CPU
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert transformer.attention_implementation(CFG, jnp.bfloat16) == "cudnn"  # head dim 8
    assert transformer.attention_implementation(CFG, jnp.float32) == "xla"  # cuDNN needs 16-bit
    odd = ModelConfig(d_model=36, n_heads=3)  # head dim 12, not a multiple of 8
    assert transformer.attention_implementation(odd, jnp.bfloat16) == "xla"
    assert transformer.compute_dtype(CFG) == jnp.bfloat16
    assert transformer.attention_implementation(ModelConfig(attention="xla"), jnp.bfloat16) == "xla"


def _numpy_causal_attention(q, k, v):
    """float64 NumPy, (B, T, H, K) in and out, G <= H key/value heads shared by consecutive query heads."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    H, G, T = q.shape[2], k.shape[2], q.shape[1]
    k, v = np.repeat(k, H // G, axis=2), np.repeat(v, H // G, axis=2)
    scores = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
    scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhts,bshk->bthk", p, v)


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (3, 1)])
def test_einsum_attention_matches_numpy_and_xlas_gradients(heads, kv_heads):
    """The hand-written backward of models/attention.py against autodiff of jax.nn.dot_product_attention, and its
    forward against float64 NumPy, with scores large enough that the softmax is far from uniform."""
    from jscale.models.attention import causal_attention

    q, k, v = (3.0 * jax.random.normal(jax.random.key(i), (2, 12, h, 8))
               for i, h in enumerate((heads, kv_heads, kv_heads)))
    np.testing.assert_allclose(causal_attention(q, k, v), _numpy_causal_attention(q, k, v), rtol=1e-5, atol=1e-5)
    weights = jax.random.normal(jax.random.key(7), (2, 12, heads, 8))

    def loss(attend):
        return lambda q, k, v: jnp.sum(jnp.sin(attend(q, k, v)) * weights)

    xla = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation="xla")  # noqa: E731
    ours = jax.jit(jax.grad(loss(causal_attention), argnums=(0, 1, 2)))(q, k, v)
    reference = jax.jit(jax.grad(loss(xla), argnums=(0, 1, 2)))(q, k, v)
    for got, want in zip(ours, reference):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Over a stacked ensemble (grid's vmap), member by member the same.
    stacked = jax.vmap(jax.grad(loss(causal_attention)))(jnp.stack([q, 2 * q]), jnp.stack([k, k]), jnp.stack([v, v]))
    np.testing.assert_allclose(stacked[1], jax.grad(loss(causal_attention))(2 * q, k, v), rtol=1e-5, atol=1e-6)


def test_einsum_and_xla_attention_give_the_same_model():
    """The whole model's loss gradient with model.attention = einsum (CPU's auto) and = xla."""
    tokens = jax.random.randint(jax.random.key(1), (2, CFG.n_ctx), 0, CFG.vocab_size)
    grads = []
    for attention in ("einsum", "xla"):
        model, params = _init(ModelConfig(**{**CFG.__dict__, "attention": attention}))
        loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, tokens))[..., 0])  # noqa: E731
        grads.append(jax.jit(jax.grad(loss))(params))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), *grads)


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


@pytest.mark.parametrize("d_in, d_out", [(12, 3), (3, 12)])
def test_dense_backward_matches_float64_numpy(d_in, d_out):
    """models/dense.py's product (CPU Dense layers): its value and its gradients against float64 NumPy (dX = dY W^T,
    dW = X^T dY over every token), both ways round (the weight gradient is made transposed when D > F), over a
    stacked ensemble member by member, and in bfloat16 with the gradient in the kernel's dtype."""
    from jscale.models.dense import dense_dot_general

    x = jax.random.normal(jax.random.key(0), (2, 5, d_in))
    w = jax.random.normal(jax.random.key(1), (d_in, d_out))
    dims = (((2,), (0,)), ((), ()))
    weights = jax.random.normal(jax.random.key(2), (2, 5, d_out))
    loss = lambda x, w: jnp.sum(dense_dot_general(x, w, dims) * weights)  # noqa: E731
    x64, w64, g64 = (np.asarray(a, np.float64) for a in (x, w, weights))
    np.testing.assert_allclose(dense_dot_general(x, w, dims), x64 @ w64, rtol=1e-5, atol=1e-5)
    dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, w)
    np.testing.assert_allclose(dx, g64 @ w64.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, x64.reshape(-1, d_in).T @ g64.reshape(-1, d_out), rtol=1e-5, atol=1e-5)
    stacked = jax.jit(jax.vmap(jax.grad(loss, argnums=1)))(jnp.stack([x, 2 * x]), jnp.stack([w, w]))
    np.testing.assert_allclose(stacked[1], 2 * dw, rtol=1e-5, atol=1e-5)
    bf16 = jax.grad(loss, argnums=1)(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(bf16.astype(np.float32), dw, rtol=0.05, atol=0.1)
    # Any other contraction is lax.dot_general's, unchanged.
    over_tokens = (((0,), (0,)), ((), ()))
    np.testing.assert_array_equal(dense_dot_general(x[0], weights[0], over_tokens),
                                  jax.lax.dot_general(x[0], weights[0], over_tokens))


@pytest.mark.parametrize("kind, tie, dense_per_layer, dense_outside", [("transformer", True, 4, 0),
                                                                      ("lstm", False, 1, 1)])
def test_cpu_dense_layers_give_autodiffs_gradients(monkeypatch, kind, tie, dense_per_layer, dense_outside):
    """The whole model's loss gradient with the CPU Dense product and with flax's own (as on other backends): a
    Transformer's four Dense layers a block, an LSTM's input projections and its untied output layer."""
    tokens = jax.random.randint(jax.random.key(1), (2, CFG.n_ctx), 0, CFG.vocab_size)
    cfg = ModelConfig(**{**CFG.__dict__, "kind": kind, "tie_embeddings": tie, "attention": "einsum",
                         "dtype": "float32"})
    attention = CFG.n_layer if kind == "transformer" else 0  # the einsum attention's own custom_vjp, one a block
    grads = []
    for backend in ("cpu", "gpu"):
        monkeypatch.setattr(transformer.jax, "default_backend", lambda b=backend: b)
        model = build(cfg)
        params = model.init(jax.random.key(0), jnp.zeros((1, CFG.n_ctx), jnp.int32))["params"]
        loss = lambda p: jnp.mean(jax.nn.log_softmax(model.apply({"params": p}, tokens))[..., 0])  # noqa: E731
        dense = dense_per_layer * CFG.n_layer + dense_outside if backend == "cpu" else 0
        assert str(jax.make_jaxpr(loss)(params)).count("custom_vjp_call") == attention + dense
        grads.append(jax.jit(jax.grad(loss))(params))
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), *grads)
