"""The training step, evaluation and the single-run training loop with resumable checkpoints.

`make_train_step(model, optimizer)` returns one pure function `train_step(state, batch, hparams)`. Everything that
may differ between members of an ensemble (learning rate, schedule lengths, weight decay, clipping, seed) lives in
`hparams`, a dict of arrays, so the same function serves a single run under `jax.jit` and many runs under
`jax.vmap` without recompiling per value. Shape letters: B batch, T positions, V vocabulary, W eval windows.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jscale import accounting, data
from jscale.config import Config, ConfigError, TrainConfig
from jscale.models import build
from jscale.models.transformer import compute_dtype

Hparams = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
    params: Any
    opt_state: Any
    step: jax.Array  # int32 scalar: optimizer steps taken


def hparams_from_config(t: TrainConfig) -> Hparams:
    """The per-run hyperparameters as arrays (stack these along axis 0 to vmap an ensemble)."""
    f32 = lambda v: jnp.asarray(v, jnp.float32)
    return {
        "lr": f32(t.lr), "warmup_steps": f32(t.warmup_steps), "total_steps": f32(t.steps),
        "final_lr_fraction": f32(t.final_lr_fraction), "weight_decay": f32(t.weight_decay),
        "grad_clip": f32(t.grad_clip), "seed": jnp.asarray(t.seed, jnp.uint32),
    }


def learning_rate(step: jax.Array, hp: Hparams) -> jax.Array:
    """Linear warmup from 0 to lr, then cosine decay to lr * final_lr_fraction at total_steps."""
    step = step.astype(jnp.float32)
    warmup = step / jnp.maximum(hp["warmup_steps"], 1.0)
    progress = jnp.clip((step - hp["warmup_steps"]) / jnp.maximum(hp["total_steps"] - hp["warmup_steps"], 1.0), 0, 1)
    floor = hp["final_lr_fraction"]
    cosine = floor + (1 - floor) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
    return hp["lr"] * jnp.where(step < hp["warmup_steps"], warmup, cosine)


def make_optimizer(t: TrainConfig) -> optax.GradientTransformation:
    """Adam's moment estimates only; clipping, decoupled weight decay and the learning rate are applied in
    train_step from hparams, so they can vary across an ensemble."""
    return optax.scale_by_adam(b1=t.b1, b2=t.b2, eps=t.eps)


def init_state(model: nn.Module, optimizer: optax.GradientTransformation, n_ctx: int, seed: jax.Array) -> TrainState:
    params = model.init(jax.random.key(seed), jnp.zeros((1, n_ctx), jnp.int32))["params"]
    return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))


def per_position_loss(model: nn.Module, params, windows_BxT1: jax.Array, dropout_key=None) -> jax.Array:
    """Cross-entropy in nats of predicting windows[:, 1:] from windows[:, :-1]; shape (B, T)."""
    inputs_BxT, targets_BxT = windows_BxT1[:, :-1], windows_BxT1[:, 1:]
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    logits_BxTxV = model.apply({"params": params}, inputs_BxT, deterministic=dropout_key is None, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, dropout: bool = False
                    ) -> Callable[[TrainState, jax.Array, Hparams], tuple[TrainState, dict[str, jax.Array]]]:
    def train_step(state: TrainState, batch_BxT1: jax.Array, hp: Hparams):
        key = jax.random.fold_in(jax.random.key(hp["seed"]), state.step) if dropout else None
        loss_fn = lambda p: per_position_loss(model, p, batch_BxT1, key).mean()
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        grad_norm = jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))
        clip = jnp.where(hp["grad_clip"] > 0, jnp.minimum(1.0, hp["grad_clip"] / (grad_norm + 1e-6)), 1.0)
        grads = jax.tree.map(lambda g: g * clip, grads)
        adam_updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        lr = learning_rate(state.step, hp)
        # Decoupled weight decay (AdamW) on matrices only: not on biases or LayerNorm parameters.
        params = jax.tree.map(
            lambda p, u: p - lr * (u + (hp["weight_decay"] * p if p.ndim >= 2 else 0.0)),
            state.params, adam_updates)
        new_state = TrainState(params=params, opt_state=opt_state, step=state.step + 1)
        return new_state, {"loss": loss, "grad_norm": grad_norm, "lr": lr}

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """eval_step(params, windows (W, T+1)) -> summed per-position loss (T,) over the windows."""

    def eval_step(params, windows_WxT1: jax.Array) -> jax.Array:
        return per_position_loss(model, params, windows_WxT1).sum(axis=0)

    return eval_step


def evaluate(eval_step, params, windows_WxT1: np.ndarray, batch_size: int) -> np.ndarray:
    """Mean held-out loss at every context position, (T,), over the fixed evaluation windows."""
    total_T = None
    for i in range(0, len(windows_WxT1), batch_size):
        s = eval_step(params, jnp.asarray(windows_WxT1[i:i + batch_size]))
        total_T = s if total_T is None else total_T + s
    return np.asarray(total_T, np.float64) / len(windows_WxT1)


# Dense 16-bit peak FLOP/s by device kind, for MFU. CPUs have no entry: MFU is not reported there.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5p": 459e12, "TPU v6": 918e12}


def device_peak_flops(device: jax.Device | None = None) -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    return next((peak for name, peak in PEAK_FLOPS.items() if name.lower() in kind.lower()), None)


# ---------------------------------------------------------------------------------------------------------------
# The single-run loop: run directory, metrics file, checkpoints, resume.


def _checkpoint_manager(run_dir: Path, keep: int):
    import orbax.checkpoint as ocp

    return ocp.CheckpointManager(run_dir.resolve() / "checkpoints", options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False))


def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if record["step"] <= up_to_step:
            records.append(record)
    return records


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _check_run_dir(run_dir: Path, cfg: Config) -> None:
    """A run directory holds one config; refuse to resume it with another."""
    config_path = run_dir / "config.json"
    wanted = cfg.to_dict()
    if config_path.exists():
        held = json.loads(config_path.read_text())
        for section, fields in wanted.items():
            for key, value in fields.items():
                if held.get(section, {}).get(key) != value:
                    raise ConfigError(f"{section}.{key}: {run_dir} holds a run with {section}.{key} = "
                                      f"{held.get(section, {}).get(key)!r}, not {value!r}; use another --out")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(config_path, json.dumps(wanted, indent=2))


def train(cfg: Config, run_dir: str | Path, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train one model as configured, resuming from run_dir's newest checkpoint. Returns the final record.

    stop_after: leave the loop after this many steps in total (for tests that simulate a crash).
    """
    run_dir = Path(run_dir)
    t = cfg.train
    corpus = data.prepare(cfg.data)
    corpus.check_fits(cfg.model.n_ctx, cfg.data.max_train_tokens, cfg.data.eval_windows)
    if t.checkpoint_every % t.eval_every:
        raise ConfigError(f"train.checkpoint_every: {t.checkpoint_every} must be a multiple of "
                          f"train.eval_every = {t.eval_every}, so a resumed run logs the same curve")
    _check_run_dir(run_dir, cfg)

    model = build(cfg.model)
    optimizer = make_optimizer(t)
    hparams = hparams_from_config(t)
    state = jax.jit(init_state, static_argnums=(0, 1, 2))(model, optimizer, cfg.model.n_ctx, hparams["seed"])
    train_step = jax.jit(make_train_step(model, optimizer, dropout=cfg.model.dropout > 0), donate_argnums=0)
    eval_step = jax.jit(make_eval_step(model))
    windows = corpus.eval_windows(cfg.data.eval_windows, cfg.model.n_ctx)

    acc = accounting.account(cfg.model)
    tokens_per_step = t.batch_size * cfg.model.n_ctx
    peak = device_peak_flops()
    data_seed = t.seed if t.data_seed is None else t.data_seed

    manager = _checkpoint_manager(run_dir, t.keep_checkpoints)
    metrics_path = run_dir / "metrics.jsonl"
    if manager.latest_step() is not None:
        import orbax.checkpoint as ocp

        state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(state))
    start = int(state.step)
    # Records past the checkpoint were logged by a run that died before its next checkpoint: they are redone.
    records = _read_metrics(metrics_path, start)
    _write_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in records))

    bar = _progress_bar(progress, t.steps, start)
    train_losses: list[jax.Array] = []
    last_time, last_step = time.perf_counter(), start
    end = t.steps if stop_after is None else min(t.steps, stop_after)
    record = records[-1] if records else None
    for step in range(start, end):
        batch = corpus.train_batch(data_seed, step, t.batch_size, cfg.model.n_ctx, cfg.data.max_train_tokens)
        state, step_metrics = train_step(state, jnp.asarray(batch), hparams)
        train_losses.append(step_metrics["loss"])
        done = step + 1
        if done % t.eval_every == 0 or done == t.steps:
            per_position = evaluate(eval_step, state.params, windows, t.batch_size)
            now = time.perf_counter()
            tokens_per_s = (done - last_step) * tokens_per_step / (now - last_time)
            test_loss = float(per_position.mean())
            record = {
                "step": done, "tokens": done * tokens_per_step,
                "flops_6N": done * tokens_per_step * acc.train_flops_6N,
                "flops_exact": done * tokens_per_step * acc.train_flops_exact,
                "train_loss": float(np.mean(jax.device_get(train_losses))),
                "test_loss": test_loss, "test_bits_per_byte": test_loss / math.log(2) / corpus.test_bytes_per_token,
                "tokens_per_s": tokens_per_s,
                "mfu": None if peak is None else tokens_per_s * acc.train_flops_exact / peak,
                "lr": float(step_metrics["lr"]), "test_loss_per_position": per_position.round(5).tolist(),
            }
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            _report(bar, record)
            train_losses.clear()
            last_time, last_step = time.perf_counter(), done
            # Checkpoint only after the record it covers is on disk (see the resume logic above).
            if done % t.checkpoint_every == 0 or done == t.steps:
                import orbax.checkpoint as ocp

                manager.save(done, args=ocp.args.StandardSave(state))
                manager.wait_until_finished()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    manager.close()
    return record


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


def _report(bar, record: dict) -> None:
    if bar is None:
        return
    mfu = "" if record["mfu"] is None else f" mfu {100 * record['mfu']:.1f}%"
    bar.write(f"step {record['step']:>7} | tokens {record['tokens']:.3g} | train {record['train_loss']:.4f} | "
              f"test {record['test_loss']:.4f} nats ({record['test_bits_per_byte']:.3f} bpb) | "
              f"{record['tokens_per_s']:.3g} tok/s{mfu}")
