"""The other model kinds: grouped-query attention, the Universal (parameter-reuse) Transformer and the LSTM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale import accounting, config, train
from jscale.config import ConfigError, ModelConfig
from jscale.models import build

KINDS = {
    "gqa": dict(kind="transformer", n_layer=2, d_model=32, n_heads=4, n_kv_heads=2),
    "mqa": dict(kind="transformer", n_layer=2, d_model=32, n_heads=4, n_kv_heads=1),
    "universal": dict(kind="universal", n_layer=2, d_model=32, n_heads=4, reuse=3),
    "lstm": dict(kind="lstm", n_layer=2, d_model=32),
    "lstm_untied": dict(kind="lstm", n_layer=1, d_model=24, tie_embeddings=False),
}


def _init(cfg):
    model = build(cfg)
    return model, model.init(jax.random.key(0), jnp.zeros((1, cfg.n_ctx), jnp.int32))["params"]


@pytest.mark.parametrize("name", KINDS)
def test_causal_and_counted(name):
    cfg = ModelConfig(n_ctx=16, vocab_size=64, **KINDS[name])
    model, params = _init(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 64)
    a, b = model.apply({"params": params}, tokens), model.apply({"params": params}, changed)
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert not np.allclose(a[:, 7:], b[:, 7:])
    acc = accounting.account(cfg)
    assert acc.N_total == sum(x.size for x in jax.tree.leaves(params))
    names = lambda path: [str(getattr(k, "key", "")) for k in path]
    weights = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                  if names(path)[-1] in ("kernel", "wh") and names(path)[0].startswith(("h_", "lstm_")))
    assert acc.N == weights


def test_grouped_query_attention_equals_multi_head_with_repeated_kv_heads():
    """GQA with G key/value heads is multi-head attention whose K/V projections repeat each group's head."""
    H, G, K, D = 4, 2, 8, 32
    gqa_cfg = ModelConfig(n_layer=1, d_model=D, n_heads=H, n_kv_heads=G, n_ctx=16, vocab_size=64)
    mha_cfg = ModelConfig(n_layer=1, d_model=D, n_heads=H, n_ctx=16, vocab_size=64)
    gqa, p = _init(gqa_cfg)
    w, bias = p["h_0"]["attn"]["c_attn"]["kernel"], p["h_0"]["attn"]["c_attn"]["bias"]

    def expand(x):  # (..., (H + 2G) K) -> (..., 3 H K), query head h reads key/value head h // (H / G)
        q, k, v = x[..., :H * K], x[..., H * K:(H + G) * K], x[..., (H + G) * K:]
        rep = lambda a: jnp.repeat(a.reshape(*a.shape[:-1], G, K), H // G, axis=-2).reshape(*a.shape[:-1], H * K)
        return jnp.concatenate([q, rep(k), rep(v)], axis=-1)

    p_mha = jax.tree.map(lambda x: x, p)
    p_mha["h_0"]["attn"]["c_attn"] = {"kernel": expand(w), "bias": expand(bias)}
    tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, 64)
    np.testing.assert_allclose(gqa.apply({"params": p}, tokens), build(mha_cfg).apply({"params": p_mha}, tokens),
                               rtol=1e-5, atol=1e-5)
    acc, full = accounting.account(gqa_cfg), accounting.account(mha_cfg)
    assert full.params["attn_qkv"] - acc.params["attn_qkv"] == 2 * (H - G) * K * D
    assert acc.forward_flops["attn_mask"] == full.forward_flops["attn_mask"]  # scores still use every query head


def _numpy_lstm(params, tokens, n_layer):
    """A step-by-step NumPy LSTM: the independent reference for the scanned, hoisted implementation."""
    sig = lambda z: 1 / (1 + np.exp(-z))
    emb = np.asarray(params["wte"]["embedding"], np.float64)
    x = emb[np.asarray(tokens)]
    for i in range(n_layer):
        layer = params[f"lstm_{i}"]
        wi, bi = np.asarray(layer["wi"]["kernel"], np.float64), np.asarray(layer["wi"]["bias"], np.float64)
        wh = np.asarray(layer["wh"], np.float64)
        H = wh.shape[0]
        h, c = np.zeros((x.shape[0], H)), np.zeros((x.shape[0], H))
        out = []
        for t in range(x.shape[1]):
            z = x[:, t] @ wi + bi + h @ wh
            i_, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
            c = sig(f) * c + sig(i_) * np.tanh(g)
            h = sig(o) * np.tanh(c)
            out.append(h)
        x = np.stack(out, axis=1)
    return x @ emb.T


def test_lstm_matches_a_numpy_reference():
    cfg = ModelConfig(kind="lstm", n_layer=2, d_model=16, n_ctx=12, vocab_size=40)
    model, params = _init(cfg)
    tokens = jax.random.randint(jax.random.key(3), (3, 12), 0, 40)
    np.testing.assert_allclose(model.apply({"params": params}, tokens), _numpy_lstm(params, tokens, 2),
                               rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(params["lstm_0"]["wi"]["bias"])[16:32] == 1.0)  # forget-gate bias starts at 1


def test_universal_transformer_reuses_its_blocks():
    base = dict(n_layer=2, d_model=32, n_heads=4, n_ctx=16, vocab_size=64)
    u = ModelConfig(kind="universal", reuse=4, **base)
    model, params = _init(u)
    assert sorted(k for k in params if k.startswith("h_")) == ["h_0", "h_1"]  # unique blocks only
    tokens = jax.random.randint(jax.random.key(4), (2, 16), 0, 64)
    once = build(ModelConfig(kind="universal", reuse=1, **base)).apply({"params": params}, tokens)
    four = model.apply({"params": params}, tokens)
    no_step = build(ModelConfig(kind="universal", reuse=4, step_embedding=False, **base)).apply({"params": params},
                                                                                               tokens)
    assert not np.allclose(once, four) and not np.allclose(four, no_step)
    # reuse = 1 is exactly the standard Transformer with the same parameters.
    np.testing.assert_array_equal(once, build(ModelConfig(**base)).apply({"params": params}, tokens))
    acc = accounting.account(u)
    assert acc.N == accounting.account(ModelConfig(**base)).N and acc.N_compute == 4 * acc.N
    assert acc.train_flops_6N == 6 * 4 * acc.N
    assert acc.forward_flops["attn_mask"] == 4 * 2 * 2 * 16 * 32


@pytest.mark.parametrize("name", ["universal", "lstm", "mqa"])
def test_each_kind_learns_and_resumes_exactly(tmp_path, name):
    model = {k: v for k, v in KINDS[name].items()}
    raw = {"model": {**model, "n_ctx": 32}, "data": {"eval_windows": 8},
           "train": {"batch_size": 8, "steps": 60, "lr": 5e-3, "warmup_steps": 5, "eval_every": 20,
                     "checkpoint_every": 20}}
    cfg = config.from_dict(raw).resolve()
    straight = train.train(cfg, tmp_path / "straight", progress=False)
    assert straight["test_loss"] < 3.6  # ln 256 = 5.55 for a uniform guess over bytes
    train.train(cfg, tmp_path / "resumed", progress=False, stop_after=30)
    resumed = train.train(cfg, tmp_path / "resumed", progress=False)
    assert resumed["test_loss"] == straight["test_loss"]
    assert resumed["test_loss_per_position"] == straight["test_loss_per_position"]


@pytest.mark.parametrize("overrides, message", [
    (["model.kind=universal", "model.reuse=0"], "model.reuse: must be >= 1, got 0"),
    (["model.reuse=2"], "model.reuse: only a universal model reuses its blocks"),
    (["model.n_heads=4", "model.n_kv_heads=3"], "model.n_kv_heads: n_heads = 4 is not divisible by n_kv_heads = 3"),
    (["model.n_kv_heads=0"], "model.n_kv_heads: must be positive, got 0"),
    (["model.kind=transformer_xl"], "model.kind: 'transformer_xl' is not one of transformer, universal, lstm"),
])
def test_architecture_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.load(None, overrides)


def test_lstm_ignores_attention_shape_checks():
    cfg = config.load(None, ["model.kind=lstm", "model.d_model=100", "model.n_heads=3"])
    assert accounting.account(cfg.model).N == 8 * 2 * 100 ** 2
