"""Generation one token at a time at batch 1, and its latency per token on the current device.

`make_sampler` continues a prompt (fed through the same cache) by sampling at a temperature, optionally from the
top k tokens; `jscale sample` uses it. Each kind decodes the way it would be served:
- transformer / universal: a key/value cache per applied block (for a Universal Transformer one per pass, since
  each pass sees different inputs), holding n_kv_heads heads per position, so grouped-query and multi-query
  attention shrink it by n_heads / n_kv_heads. `decode_step` is a functional mirror of models/transformer.py over
  the same parameter tree; a test checks it reproduces the module's logits at every position.
- lstm: the (h, c) state of every layer.
- transformer_xl: the model itself, fed segments of one token, with its memory (eval_mem_len positions).

Shape letters as in the models: H query heads, G key/value heads, K head dim, T n_ctx, D d_model, V vocabulary.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jscale.config import ModelConfig
from jscale.models import build
from jscale.models.transformer import LAYER_NORM_EPS, compute_dtype, step_embedding

Cache = Any  # a pytree: KV caches, LSTM states or Transformer-XL memory


def _layer_norm(p, x):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + LAYER_NORM_EPS) * p["scale"] + p["bias"]


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


def _transformer_block(cfg: ModelConfig, p, x_D, cache_k_TxGxK, cache_v_TxGxK, pos):
    H, G, K = cfg.n_heads, cfg.n_kv_heads_, cfg.d_head
    qkv = _dense(p["attn"]["c_attn"], _layer_norm(p["ln_1"], x_D))
    q_GxRxK = qkv[:H * K].reshape(G, H // G, K)  # query head h reads key/value head h // (H / G)
    cache_k_TxGxK = cache_k_TxGxK.at[pos].set(qkv[H * K:(H + G) * K].reshape(G, K).astype(cache_k_TxGxK.dtype))
    cache_v_TxGxK = cache_v_TxGxK.at[pos].set(qkv[(H + G) * K:].reshape(G, K).astype(cache_v_TxGxK.dtype))
    scores_GxRxT = jnp.einsum("grk,tgk->grt", q_GxRxK, cache_k_TxGxK) / math.sqrt(K)
    visible_T = jnp.arange(cache_k_TxGxK.shape[0]) <= pos
    scores_GxRxT = jnp.where(visible_T, scores_GxRxT.astype(jnp.float32), -jnp.inf)
    out_GxRxK = jnp.einsum("grt,tgk->grk", jax.nn.softmax(scores_GxRxT, axis=-1).astype(x_D.dtype), cache_v_TxGxK)
    x_D = x_D + _dense(p["attn"]["c_proj"], out_GxRxK.reshape(H * K))
    h_F = jax.nn.gelu(_dense(p["mlp"]["c_fc"], _layer_norm(p["ln_2"], x_D)), approximate=True)
    return x_D + _dense(p["mlp"]["c_proj"], h_F), cache_k_TxGxK, cache_v_TxGxK


def _transformer_decoder(cfg: ModelConfig):
    dtype = compute_dtype(cfg)
    reuse = cfg.reuse if cfg.kind == "universal" else 1
    shape = (reuse, cfg.n_layer, cfg.n_ctx, cfg.n_kv_heads_, cfg.d_head)

    def init(params) -> Cache:
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}

    def step(params, cache, token, pos):
        params = jax.tree.map(lambda a: a.astype(dtype), params)
        x_D = params["wte"]["embedding"][token] + params["wpe"]["embedding"][pos]
        ks, vs = cache["k"], cache["v"]
        for r in range(reuse):
            if reuse > 1 and cfg.step_embedding:
                x_D = x_D + step_embedding(r, cfg.d_model).astype(dtype)
            for i in range(cfg.n_layer):
                x_D, k, v = _transformer_block(cfg, params[f"h_{i}"], x_D, ks[r, i], vs[r, i], pos)
                ks, vs = ks.at[r, i].set(k), vs.at[r, i].set(v)
        x_D = _layer_norm(params["ln_f"], x_D)
        head_DxV = params["wte"]["embedding"].T if cfg.tie_embeddings else params["lm_head"]["kernel"]
        return (x_D @ head_DxV).astype(jnp.float32), {"k": ks, "v": vs}

    return init, step


def _lstm_decoder(cfg: ModelConfig):
    dtype = compute_dtype(cfg)

    def init(params) -> Cache:
        zeros = jnp.zeros((cfg.n_layer, cfg.d_model), dtype)
        return {"h": zeros, "c": zeros}

    def step(params, cache, token, pos):
        params = jax.tree.map(lambda a: a.astype(dtype), params)
        x_D = params["wte"]["embedding"][token]
        hs, cs = cache["h"], cache["c"]
        for i in range(cfg.n_layer):
            p = params[f"lstm_{i}"]
            gates = _dense(p["wi"], x_D) + hs[i] @ p["wh"]
            gi, gf, gg, go = jnp.split(gates, 4)
            c = jax.nn.sigmoid(gf) * cs[i] + jax.nn.sigmoid(gi) * jnp.tanh(gg)
            x_D = jax.nn.sigmoid(go) * jnp.tanh(c)
            hs, cs = hs.at[i].set(x_D), cs.at[i].set(c)
        head_DxV = params["wte"]["embedding"].T if cfg.tie_embeddings else params["lm_head"]["kernel"]
        return (x_D @ head_DxV).astype(jnp.float32), {"h": hs, "c": cs}

    return init, step


def _xl_decoder(cfg: ModelConfig):
    model = build(cfg)
    mem_len = cfg.eval_mem_len_

    def init(params) -> Cache:
        return model.initial_memory(1, mem_len)

    def step(params, memory, token, pos):
        logits_1x1xV, memory = model.apply({"params": params}, token.reshape(1, 1), memory, mem_len=mem_len)
        return logits_1x1xV[0, 0], memory

    return init, step


def decoder(cfg: ModelConfig) -> tuple[Callable[[Any], Cache], Callable]:
    """(init(params) -> cache, step(params, cache, token, position) -> (logits (V,), cache)) for this kind."""
    if cfg.kind in ("transformer", "universal"):
        return _transformer_decoder(cfg)
    if cfg.kind == "lstm":
        return _lstm_decoder(cfg)
    if cfg.kind == "transformer_xl":
        return _xl_decoder(cfg)
    raise ValueError(f"model.kind: no decoder for {cfg.kind!r}")


def cache_bytes(cfg: ModelConfig) -> int:
    """Bytes of decoding state at batch 1 (a full KV cache for the Transformers)."""
    init, _ = decoder(cfg)
    params = jax.eval_shape(lambda: init_params(cfg))
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(jax.eval_shape(init, params)))


def init_params(cfg: ModelConfig, seed: int = 0):
    tokens = jnp.zeros((1, cfg.n_ctx), jnp.int32)
    return jax.jit(build(cfg).init)(jax.random.key(seed), tokens)["params"]


def make_generate(cfg: ModelConfig, n_tokens: int) -> Callable:
    """generate(params, first_token) -> n_tokens greedily decoded tokens, positions 0 .. n_tokens - 1, in one
    jitted scan (so the timing is the model's, not Python's)."""
    if n_tokens > cfg.n_ctx and cfg.kind in ("transformer", "universal"):
        raise ValueError(f"n_tokens = {n_tokens} exceeds model.n_ctx = {cfg.n_ctx} (learned positions)")
    init, step = decoder(cfg)

    def generate(params, first_token):
        def body(carry, pos):
            cache, token = carry
            logits_V, cache = step(params, cache, token, pos)
            nxt = jnp.argmax(logits_V).astype(jnp.int32)
            return (cache, nxt), nxt

        _, tokens = jax.lax.scan(body, (init(params), first_token), jnp.arange(n_tokens))
        return tokens

    return jax.jit(generate)


def _filter_logits(logits_V: jax.Array, temperature: jax.Array, top_k: int) -> jax.Array:
    logits_V = logits_V / jnp.maximum(temperature, 1e-6)
    if top_k > 0:
        kth = jax.lax.top_k(logits_V, top_k)[0][-1]
        logits_V = jnp.where(logits_V < kth, -jnp.inf, logits_V)
    return logits_V


def _prefill(init, step, params, prompt_P):
    """The prompt fed through the cached decoder: (cache, each position's next-token logits (P, V))."""
    def feed(cache, token_pos):
        logits_V, cache = step(params, cache, *token_pos)
        return cache, logits_V

    return jax.lax.scan(feed, init(params), (prompt_P, jnp.arange(prompt_P.shape[0])))


def make_sampler(cfg: ModelConfig, n_prompt: int, n_new: int, top_k: int = 0) -> Callable:
    """sample(params, prompt (P,), key, temperature) -> n_new tokens: the prompt fed through the cached decoder
    (generate.decoder), then one token at a time; temperature 0 is greedy. One jitted function per shape."""
    init, step = decoder(cfg)

    def sample(params, prompt_P, key, temperature):
        cache, logits_PxV = _prefill(init, step, params, prompt_P)

        def body(carry, pos):
            cache, logits_V, key = carry
            key, sub = jax.random.split(key)
            drawn = jax.random.categorical(sub, _filter_logits(logits_V, temperature, top_k))
            token = jnp.where(temperature > 0, drawn, jnp.argmax(logits_V)).astype(jnp.int32)
            logits_V, cache = step(params, cache, token, pos)
            return (cache, logits_V, key), token

        _, new_N = jax.lax.scan(body, (cache, logits_PxV[-1], key), jnp.arange(n_prompt, n_prompt + n_new))
        return new_N

    return jax.jit(sample)


def make_next_token(cfg: ModelConfig, n_prompt: int, top_k: int = 0) -> Callable:
    """next(params, prompt (P,), key, temperature) -> one token drawn after the prompt: what sampling past the
    context does each step, on the last n_ctx tokens (nanoGPT's crop). One jitted function per shape."""
    init, step = decoder(cfg)

    def next_token(params, prompt_P, key, temperature):
        _, logits_PxV = _prefill(init, step, params, prompt_P)
        drawn = jax.random.categorical(key, _filter_logits(logits_PxV[-1], temperature, top_k))
        return jnp.where(temperature > 0, drawn, jnp.argmax(logits_PxV[-1])).astype(jnp.int32)

    return jax.jit(next_token)


def latency_per_token(cfg: ModelConfig, n_tokens: int | None = None, repeats: int = 5) -> dict[str, float]:
    """Seconds per generated token at batch 1 (median of `repeats` timed generations of n_tokens tokens, default
    the whole context, after one compiling run), and the decoding state's size. Latency does not depend on the
    parameters' values, so a fresh initialisation serves."""
    n_tokens = n_tokens or cfg.n_ctx
    params = init_params(cfg)
    generate = make_generate(cfg, n_tokens)
    first = jnp.array(0, jnp.int32)
    generate(params, first).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate(params, first).block_until_ready()
        times.append(time.perf_counter() - start)
    return {"seconds_per_token": float(np.median(times)) / n_tokens, "tokens": n_tokens,
            "cache_bytes": cache_bytes(cfg), "device": jax.devices()[0].device_kind}
