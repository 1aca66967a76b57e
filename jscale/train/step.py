"""The training step and the evaluation step, as pure functions of explicit pytrees.

`make_train_step(model)` returns one pure function `train_step(state, batch, hparams)`. Everything that may differ
between members of an ensemble (learning rate, schedule lengths, weight decay, clipping, seed) lives in `hparams`, a
dict of arrays, so the same function serves a single run under `jax.jit` and many runs under `jax.vmap` (or
`lax.map`) without recompiling per value. Shape letters: B batch, T positions, V vocabulary, W eval windows.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jscale.config import TrainConfig
from jscale.models import has_memory


Hparams = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: optimizer steps taken
    alive: jax.Array  # bool scalar: False once the loss or gradient went NaN/inf; the state is then frozen
    memory: Any = None  # Transformer-XL: each layer's memory of the previous segment, (B, mem_len, D); else None


SCHEDULES = ("cosine", "wsd", "constant")


def hparams_from_config(t: TrainConfig) -> Hparams:
    """The per-run hyperparameters as arrays (stack these along axis 0 to vmap an ensemble)."""
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return {
        "lr": f32(t.lr), "warmup_steps": f32(t.warmup_steps), "total_steps": f32(t.steps),
        "final_lr_fraction": f32(t.final_lr_fraction), "weight_decay": f32(t.weight_decay),
        "grad_clip": f32(t.grad_clip), "seed": jnp.asarray(t.seed, jnp.uint32),
        "b1": f32(t.b1), "b2": f32(t.b2), "eps": f32(t.eps),
        "schedule": jnp.asarray(SCHEDULES.index(t.schedule), jnp.int32), "decay_fraction": f32(t.decay_fraction),
    }


def learning_rate(step: jax.Array, hp: Hparams) -> jax.Array:
    """Linear warmup from 0 to lr over warmup_steps, then down to lr * final_lr_fraction at total_steps:
    a cosine (schedule 0); or warmup-stable-decay (1): constant, then linear over the last decay_fraction of the
    steps; or constant (2)."""
    step = step.astype(jnp.float32)
    warmup = step / jnp.maximum(hp["warmup_steps"], 1.0)
    progress = jnp.clip((step - hp["warmup_steps"]) / jnp.maximum(hp["total_steps"] - hp["warmup_steps"], 1.0), 0, 1)
    floor = hp["final_lr_fraction"]
    cosine = floor + (1 - floor) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    decay_steps = jnp.maximum(hp["decay_fraction"] * hp["total_steps"], 1.0)
    cooldown = jnp.clip((hp["total_steps"] - step) / decay_steps, 0, 1)  # 1 until the decay starts, then to 0
    wsd = floor + (1 - floor) * cooldown
    after_warmup = jnp.select([hp["schedule"] == 0, hp["schedule"] == 1], [cosine, wsd], 1.0)
    return hp["lr"] * jnp.where(step < hp["warmup_steps"], warmup, after_warmup)


def make_optimizer(t: TrainConfig) -> optax.GradientTransformation:
    """Adam's moment estimates only; clipping, decoupled weight decay and the learning rate are applied in
    train_step from hparams, so they can vary across an ensemble (train_step uses b1 and b2 from hparams too:
    this transformation's own give the state's structure, which does not depend on them)."""
    return optax.scale_by_adam(b1=t.b1, b2=t.b2, eps=t.eps)


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, n_ctx: int, seed: jax.Array,
               batch_size: int = 1) -> TrainState:
    params = model.init(jax.random.key(seed), jnp.zeros((1, n_ctx), jnp.int32))["params"]
    memory = model.initial_memory(batch_size) if has_memory(model.cfg) else None
    return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32),
                      alive=jnp.ones((), bool), memory=memory)


def per_position_loss(model: nn.Module, params, windows_BxT1: jax.Array, dropout_key=None, memory=None,
                      mem_len: int | None = None) -> tuple[jax.Array, Any]:
    """Cross-entropy in nats of predicting windows[:, 1:] from windows[:, :-1], shape (B, T), and the model's new
    memory (Transformer-XL; None for the other kinds)."""
    inputs_BxT, targets_BxT = windows_BxT1[:, :-1], windows_BxT1[:, 1:]
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    deterministic = dropout_key is None
    if has_memory(model.cfg):
        logits_BxTxV, memory = model.apply({"params": params}, inputs_BxT, memory, deterministic=deterministic,
                                           mem_len=mem_len, rngs=rngs)
    else:
        logits_BxTxV = model.apply({"params": params}, inputs_BxT, deterministic=deterministic, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT), memory


def make_train_step(model: nn.Module, dropout: bool = False
                    ) -> Callable[[TrainState, jax.Array, Hparams], tuple[TrainState, dict[str, jax.Array]]]:
    def train_step(state: TrainState, batch_BxT1: jax.Array, hp: Hparams):
        key = jax.random.fold_in(jax.random.key(hp["seed"]), state.step) if dropout else None

        def loss_fn(p):
            losses_BxT, memory = per_position_loss(model, p, batch_BxT1, key, state.memory)
            return losses_BxT.mean(), memory

        (loss, memory), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        clip = jnp.where(hp["grad_clip"] > 0, jnp.minimum(1.0, hp["grad_clip"] / (grad_norm + 1e-6)), 1.0)
        grads = jax.tree.map(lambda g: g * clip, grads)
        adam = optax.scale_by_adam(b1=hp["b1"], b2=hp["b2"], eps=hp["eps"])  # the betas may differ between members
        adam_updates, opt_state = adam.update(grads, state.opt_state, state.params)
        lr = learning_rate(state.step, hp)
        # Decoupled weight decay (AdamW) on matrices only: not on biases or LayerNorm parameters.
        params = jax.tree.map(
            lambda p, u: p - lr * (u + (hp["weight_decay"] * p if p.ndim >= 2 else 0.0)),
            state.params, adam_updates)
        # A run whose loss or gradient is NaN/inf is marked diverged and frozen where it was; under vmap this is
        # per member, so the rest of an ensemble trains on unaffected.
        ok = state.alive & jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        new_state = TrainState(params=params, opt_state=opt_state, step=state.step + 1, alive=ok, memory=memory)
        new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state).replace(alive=ok)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": lr}

    return train_step


def eval_context(cfg) -> int:
    """Tokens before each evaluation window that fill a Transformer-XL's evaluation memory (whole segments)."""
    if not has_memory(cfg):
        return 0
    return -(-cfg.eval_mem_len_ // cfg.n_ctx) * cfg.n_ctx


def make_eval_step(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """eval_step(params, windows (W, C + T + 1)) -> the loss at each of the last T positions of each window, (W, T).

    For Transformer-XL the C = eval_context(cfg) tokens before them are fed first, segment by segment, to fill a
    memory of eval_mem_len positions; the other kinds have C = 0."""
    cfg = model.cfg
    T, C = cfg.n_ctx, eval_context(cfg)

    def eval_step(params, windows_WxS: jax.Array) -> jax.Array:
        memory = None
        for start in range(0, C, T):
            _, memory = per_position_loss(model, params, windows_WxS[:, start:start + T + 1], memory=memory,
                                          mem_len=cfg.eval_mem_len_)
        losses_WxT, _ = per_position_loss(model, params, windows_WxS[:, C:], memory=memory,
                                          mem_len=cfg.eval_mem_len_)
        return losses_WxT

    return eval_step


def padded_chunks(windows_WxS: np.ndarray, C: int):
    """The windows in chunks of C rows (a compiled size), the last chunk padded with copies of its first window:
    yields (chunk, how many of its rows are real)."""
    for i in range(0, len(windows_WxS), C):
        chunk = windows_WxS[i:i + C]
        n = len(chunk)
        yield (np.concatenate([chunk, np.repeat(chunk[:1], C - n, axis=0)]) if n < C else chunk), n


def summarize_eval(losses_MxWxT: np.ndarray) -> dict[str, np.ndarray]:
    """Per member: mean loss, its standard error over windows, per-position and per-window means."""
    per_window_MxW = losses_MxWxT.mean(axis=2)
    W = per_window_MxW.shape[1]
    se = per_window_MxW.std(axis=1, ddof=1) / np.sqrt(W) if W > 1 else np.full(len(per_window_MxW), np.nan)
    return {"loss": per_window_MxW.mean(axis=1), "se": se, "per_position": losses_MxWxT.mean(axis=1),
            "per_window": per_window_MxW}
