"""The other model kinds: grouped-query attention, the Universal (parameter-reuse) Transformer and the LSTM."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jscale import accounting, config, resolve, train
from jscale.config import ConfigError, ModelConfig
from jscale.models import build

KINDS = {
    "gqa": dict(kind="transformer", n_layer=2, d_model=32, n_heads=4, n_kv_heads=2),
    "mqa": dict(kind="transformer", n_layer=2, d_model=32, n_heads=4, n_kv_heads=1),
    "universal": dict(kind="universal", n_layer=2, d_model=32, n_heads=4, reuse=3),
    "lstm": dict(kind="lstm", n_layer=2, d_model=32),
    "lstm_untied": dict(kind="lstm", n_layer=1, d_model=24, tie_embeddings=False),
    "transformer_xl": dict(kind="transformer_xl", n_layer=2, d_model=32, n_heads=4, mem_len=16),
    "transformer_xl_no_memory": dict(kind="transformer_xl", n_layer=2, d_model=32, n_heads=4, mem_len=0),
}


# The models' functions run jitted in these tests (one XLA compilation) rather than op by op, which compiles every
# primitive at every new shape: the same numbers, in a fraction of the suite's time.


def _logits(model, params, tokens, memory=None):
    out = jax.jit(model.apply)({"params": params}, tokens, memory) if model.cfg.kind == "transformer_xl" else \
        jax.jit(model.apply)({"params": params}, tokens)
    return out[0] if isinstance(out, tuple) else out


def _init(cfg):
    model = build(cfg)
    return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, cfg.n_ctx), jnp.int32))["params"]


@pytest.mark.parametrize("name", KINDS)
def test_causal_and_counted(name):
    cfg = ModelConfig(n_ctx=16, vocab_size=64, **KINDS[name])
    model, params = _init(cfg)
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 64)
    changed = tokens.at[:, 7].set((tokens[:, 7] + 1) % 64)
    a, b = _logits(model, params, tokens), _logits(model, params, changed)
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert not np.allclose(a[:, 7:], b[:, 7:])
    acc = accounting.account(cfg)
    assert acc.N_total == sum(x.size for x in jax.tree.leaves(params))
    names = lambda path: [str(getattr(k, "key", "")) for k in path]
    weights = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                  if names(path)[-1] in ("kernel", "wh") and names(path)[0].startswith(("h_", "lstm_")))
    # (Transformer-XL's position-key projection r_net is a kernel of each block: counted in N.)
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
    np.testing.assert_allclose(jax.jit(gqa.apply)({"params": p}, tokens),
                               jax.jit(build(mha_cfg).apply)({"params": p_mha}, tokens), rtol=1e-5, atol=1e-5)
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
    np.testing.assert_allclose(jax.jit(model.apply)({"params": params}, tokens), _numpy_lstm(params, tokens, 2),
                               rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(params["lstm_0"]["wi"]["bias"])[16:32] == 1.0)  # forget-gate bias starts at 1


def test_cudnn_packing_runs_the_same_lstm_in_jaxs_reference():
    """cuDNN's path needs a GPU; its weight packing is checked here through jax.experimental.rnn.lstm_ref, which
    reads the same flat layout."""
    from jax.experimental import rnn

    from jscale.models.lstm import cudnn_weights

    cfg = ModelConfig(kind="lstm", n_layer=2, d_model=16, n_ctx=12, vocab_size=40)
    model, params = _init(cfg)
    tokens = jax.random.randint(jax.random.key(7), (3, 12), 0, 40)
    _, inter = jax.jit(lambda p, x: model.apply(p, x, capture_intermediates=True))({"params": params}, tokens)
    ours = inter["intermediates"]["lstm_1"]["__call__"][0]
    x = params["wte"]["embedding"][tokens]
    w_ih, w_hh, b_ih, b_hh = rnn.unpack_lstm_weights(cudnn_weights(params, 2), 16, 16, 2, False)
    zeros = jnp.zeros((2, 3, 16))
    ref, _, _ = rnn.lstm_ref(x, zeros, zeros, w_ih, w_hh, b_ih, b_hh, jnp.full((3,), 12, jnp.int32), 16, 16, 2, 0.0,
                             False)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="model.lstm_impl: cuDNN's LSTM path has no dropout"):
        resolve.load(None, ["model.kind=lstm", "model.lstm_impl=cudnn", "model.dropout=0.1"])


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


@pytest.mark.parametrize("name", ["universal", "lstm", "mqa", "transformer_xl"])
def test_each_kind_learns_and_resumes_exactly(tmp_path, name):
    """Resume includes Transformer-XL's memory: it is part of the checkpointed train state."""
    model = {**KINDS[name], "n_layer": 1}  # (one block: what is checkpointed and resumed does not need more)
    if name == "universal":
        model.update(reuse=2)
    if name == "transformer_xl":
        model.update(mem_len=32, eval_mem_len=64)  # evaluation fills a longer memory from 64 preceding tokens
    raw = {"model": {**model, "n_ctx": 32}, "data": {"eval_windows": 8},
           "train": {"batch_size": 8, "steps": 60, "lr": 5e-3, "warmup_steps": 5, "eval_every": 20,
                     "checkpoint_every": 20}}
    cfg = resolve.resolve(config.from_dict(raw))
    straight = train.train(cfg, tmp_path / "straight", progress=False)
    assert straight["test_loss"] < 3.75  # ln 256 = 5.55 for a uniform guess over bytes
    train.train(cfg, tmp_path / "resumed", progress=False, stop_after=30)
    resumed = train.train(cfg, tmp_path / "resumed", progress=False)
    assert resumed["test_loss"] == straight["test_loss"]
    assert resumed["evals"]["test"]["per_position"] == straight["evals"]["test"]["per_position"]


@pytest.mark.parametrize("overrides, message", [
    (["model.kind=universal", "model.reuse=0"], "model.reuse: must be >= 1, got 0"),
    (["model.reuse=2"], "model.reuse: a transformer model does not use it \\(only universal\\)"),
    (["model.n_heads=4", "model.n_kv_heads=3"], "model.n_kv_heads: n_heads = 4 is not divisible by n_kv_heads = 3"),
    (["model.n_kv_heads=0"], "model.n_kv_heads: must be positive, got 0"),
    (["model.kind=transformer_xl", "model.mem_len=-1"], "model.mem_len: must be >= 0, got -1"),
    (["model.kind=transformer_xl", "model.eval_mem_len=-4"], "model.eval_mem_len: must be >= 0, got -4"),
    (["model.mem_len=8"], "model.mem_len: a transformer model does not use it \\(only transformer_xl\\)"),
    (["model.kind=xl"], "model.kind: 'xl' is not one of transformer, universal, lstm, transformer_xl"),
])
def test_architecture_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve.load(None, overrides)


def test_lstm_skips_attention_shape_checks_and_refuses_attention_keys():
    cfg = resolve.load(None, ["model.kind=lstm", "model.d_model=100"])  # 100 is not divisible by the default heads
    assert accounting.account(cfg.model).N == 8 * 2 * 100 ** 2
    with pytest.raises(ConfigError, match="model.n_heads: a lstm model does not use it"):
        resolve.load(None, ["model.kind=lstm", "model.d_model=100", "model.n_heads=3"])


XL = ModelConfig(kind="transformer_xl", n_layer=2, d_model=32, n_heads=4, n_ctx=8, vocab_size=64, mem_len=8)


def test_xl_two_segments_with_memory_equal_one_causal_pass():
    """Dai et al.: with mem_len = segment length, segment 2 after segment 1 gives the outputs of one causal pass
    over both segments with the same relative encoding."""
    model, params = _init(XL)
    apply = jax.jit(model.apply)
    tokens = jax.random.randint(jax.random.key(5), (2, 16), 0, 64)
    one_segment = build(ModelConfig(**{**XL.__dict__, "n_ctx": 16, "mem_len": 0}))
    one_pass, _ = jax.jit(one_segment.apply)({"params": params}, tokens)
    first, memory = apply({"params": params}, tokens[:, :8])
    second, _ = apply({"params": params}, tokens[:, 8:], memory)
    np.testing.assert_allclose(first, one_pass[:, :8], atol=1e-5)
    np.testing.assert_allclose(second, one_pass[:, 8:], atol=1e-5)
    assert [m.shape for m in memory] == [(2, 8, 32)] * 2
    # The memory matters: without it the second segment's outputs differ.
    alone, _ = apply({"params": params}, tokens[:, 8:])
    assert not np.allclose(alone, second, atol=1e-3)


def test_xl_no_gradient_reaches_the_memory():
    model, params = _init(XL)
    tokens = jax.random.randint(jax.random.key(6), (2, 17), 0, 64)
    _, memory = jax.jit(model.apply)({"params": params}, tokens[:, :8])
    loss = lambda p, mem: train.per_position_loss(model, p, tokens[:, 8:], memory=mem)[0].mean()
    g_params, g_memory = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, memory)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in g_memory)
    assert float(jnp.abs(g_params["h_0"]["attn"]["r_net"]["kernel"]).max()) > 0


def test_xl_without_memory_is_an_ordinary_causal_lm():
    cfg = ModelConfig(**{**XL.__dict__, "mem_len": 0})
    model, params = _init(cfg)
    logits, memory = model.apply({"params": params}, jnp.zeros((1, 8), jnp.int32))
    assert memory is None and logits.shape == (1, 8, 64)
    assert train.init_state(model, train.make_optimizer(config.TrainConfig()), 8, jnp.uint32(0), 4).memory is None
    acc = accounting.account(cfg)
    assert acc.forward_flops["attn_mask"] == 2 * 2 * 3 * (8 / 2) * 32  # keys seen: n_ctx / 2 on average
    longer = accounting.account(ModelConfig(**{**XL.__dict__, "mem_len": 24}))
    assert longer.forward_flops["attn_mask"] == 2 * 2 * 3 * (24 + 8 / 2) * 32  # grows with n_ctx x (n_ctx + M)
    assert longer.N == acc.N and acc.params["position_keys"] == 2 * 32 * 32


def test_xl_learns_what_only_the_previous_segment_holds():
    """Token streams made of random blocks of one segment, each repeated once: the second copy is predictable only
    from the memory. Transformer-XL learns it; the same model without memory stays at chance (ln 16)."""
    T, B, V, steps = 8, 16, 16, 300

    def streams(seed, n_blocks):
        blocks = np.random.default_rng(seed).integers(0, V, (B, n_blocks, T))
        return np.repeat(blocks, 2, axis=1).reshape(B, -1)

    def copy_loss(mem_len):
        cfg = ModelConfig(kind="transformer_xl", n_layer=1, d_model=32, n_heads=4, n_ctx=T, vocab_size=V,
                          mem_len=mem_len)  # (one layer: its attention reads the copy straight from the memory)
        model, opt = build(cfg), train.make_optimizer(config.TrainConfig())
        hp = train.hparams_from_config(config.TrainConfig(lr=6e-3, warmup_steps=10, steps=steps, weight_decay=0.0))
        state = train.init_state(model, opt, T, jnp.uint32(0), B)
        step = jax.jit(train.make_train_step(model))
        data = streams(0, steps // 2 + 1)
        for k in range(steps):  # consecutive segments of the same streams, memory carried in the state
            state, _ = step(state, jnp.asarray(data[:, k * T:k * T + T + 1]), hp)
        test = jnp.asarray(streams(1, 2))
        loss = jax.jit(lambda params, windows, memory: train.per_position_loss(model, params, windows, memory=memory))
        _, memory = loss(state.params, test[:, :T + 1], None)
        second, _ = loss(state.params, test[:, T:2 * T + 1], memory)
        return float(second[:, :-1].mean())  # the last target starts a new random block

    with_memory, without = copy_loss(T), copy_loss(0)
    assert without > 0.93 * np.log(V)
    assert with_memory < 0.45 * np.log(V)


def test_cudnn_lstm_without_a_gpu_is_a_one_line_error(tmp_path, repo, jscale_here):
    if jax.default_backend() == "gpu":
        pytest.skip("this machine has a GPU")
    r = jscale_here("train", str(repo / "experiments" / "train_small.toml"), "model.kind=lstm", "model.lstm_impl=cudnn",
                    "--out", str(tmp_path / "run"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == ("jscale: error: model.lstm_impl: cudnn needs a GPU (this backend is "
                                                 "cpu); use scan")
    assert not (tmp_path / "run").exists()
