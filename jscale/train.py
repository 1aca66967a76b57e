"""The training step, evaluation and the single-run training loop with resumable checkpoints.

`make_train_step(model)` returns one pure function `train_step(state, batch, hparams)`. Everything that
may differ between members of an ensemble (learning rate, schedule lengths, weight decay, clipping, seed) lives in
`hparams`, a dict of arrays, so the same function serves a single run under `jax.jit` and many runs under
`jax.vmap` without recompiling per value. Shape letters: B batch, T positions, V vocabulary, W eval windows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jscale import accounting, config, data, interrupts, results, sharding, tracking
from jscale.config import Config, ConfigError, ResourceError, TrainConfig, eval_window_counts, resource_error
from jscale.models import build, has_memory
from jscale.sweep import shared_config

Hparams = dict[str, jax.Array]

# A member whose evaluation loss exceeds this many times ln(vocabulary), the loss of a uniform guess, has diverged
# even if every value is finite (a loss of 139 nats at V = 256 once ended "done").
DIVERGED_LOSS_FACTOR = 10.0


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


def evaluate(steps: "GroupSteps", params, windows_WxS: np.ndarray, members: int) -> np.ndarray:
    """The loss at every position of every window for each member, (M, W, T): the windows in chunks of the
    compiled size (padding dropped)."""
    C = steps.eval_chunk
    return np.concatenate([_fetch(steps.eval_step(params, sharding.put(chunk, steps.replicated)))
                           .reshape(members, C, -1)[:, :n] for chunk, n in padded_chunks(windows_WxS, C)], axis=1)


def summarize_eval(losses_MxWxT: np.ndarray) -> dict[str, np.ndarray]:
    """Per member: mean loss, its standard error over windows, per-position and per-window means."""
    per_window_MxW = losses_MxWxT.mean(axis=2)
    W = per_window_MxW.shape[1]
    se = per_window_MxW.std(axis=1, ddof=1) / np.sqrt(W) if W > 1 else np.full(len(per_window_MxW), np.nan)
    return {"loss": per_window_MxW.mean(axis=1), "se": se, "per_position": losses_MxWxT.mean(axis=1),
            "per_window": per_window_MxW}


def seconds_per_step(step_fn, state, batch, hparams, steps: int = 10, warmup: int = 2) -> float:
    """Wall-clock seconds of one call of a jitted (state, batch, hparams) -> (state, metrics) step, after
    compilation and warmup (for benchmarks and the grid's vmap-or-loop measurement)."""
    for _ in range(warmup):
        state, m = step_fn(state, batch, hparams)
    jax.block_until_ready(m["loss"])
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step_fn(state, batch, hparams)
    jax.block_until_ready(m["loss"])
    return (time.perf_counter() - t0) / steps


# Dense 16-bit peak FLOP/s by device kind, for MFU. CPUs have no entry: MFU is not reported there.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5p": 459e12, "TPU v6": 918e12}


def device_peak_flops(device: jax.Device | None = None) -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    return next((peak for name, peak in PEAK_FLOPS.items() if name.lower() in kind.lower()), None)


# ---------------------------------------------------------------------------------------------------------------
# The training loop: one run (on one device or sharded over a mesh) or a vmapped ensemble of runs, resumable.


def _checkpoint_manager(directory: Path, keep: int):
    import orbax.checkpoint as ocp

    try:
        return ocp.CheckpointManager(directory.resolve(), options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True))
    except OSError as e:
        raise resource_error(e, directory, "cannot create the checkpoint directory") from None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise resource_error(e, path, "cannot write") from None


# Messages by which orbax/TensorStore report what is the disk's fault rather than a bug.
_DISK_FAULTS = ("RESOURCE_EXHAUSTED", "No space left", "Read-only file system", "Permission denied",
                "Disk quota exceeded", "database or disk is full")


def state_checksum(state) -> str | None:
    """SHA-256 of every leaf's bytes, to catch a checkpoint whose files were damaged after it was written (orbax
    reads garbled array bytes without complaint). None where the state is not all on this host."""
    if jax.process_count() > 1:
        return None
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        h.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return h.hexdigest()


# After a failed checkpoint write, orbax's and TensorStore's threads go on printing tracebacks ("Event loop is
# closed") until the process ends. From then on fd 2 goes to /dev/null and the real stderr is kept here, so the CLI
# can print its one line there and leave at once (cli.main).
REAL_STDERR_FD: int | None = None


@contextlib.contextmanager
def _quiet_writer(*names: str):
    """Keep orbax's and TensorStore's own reports of a failed write (log records, and tracebacks that their
    threads print) off stderr while a checkpoint is written: a failure is reported in one line by
    Checkpoints.save. On success whatever they printed is passed through."""
    import logging
    import sys
    import tempfile

    global REAL_STDERR_FD
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    sys.stderr.flush()
    saved_fd = os.dup(2)
    captured = tempfile.TemporaryFile()
    os.dup2(captured.fileno(), 2)
    try:
        yield
    except BaseException:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        REAL_STDERR_FD = saved_fd
        raise
    else:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        captured.seek(0)
        text = captured.read()
        if text:
            os.write(2, text)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        captured.close()


class Checkpoints:
    """A run's (or a group's) orbax checkpoints with a checksum per step in checksums.json beside them.

    `restore` takes the newest step that is not ahead of what the results sink has recorded (a step whose
    evaluations were lost would leave a hole in the learning curve) and that reads back whole; a damaged or
    unusable step is deleted, with a line saying so, and the one before it tried, down to a fresh start."""

    def __init__(self, directory: Path, keep: int):
        self.directory = directory
        self.manager = _checkpoint_manager(directory, keep)
        self.sums_path = directory / "checksums.json"

    def _sums(self) -> dict[str, str]:
        try:
            return json.loads(self.sums_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def _delete(self, step: int) -> None:
        try:
            self.manager.delete(step)
        except Exception:  # noqa: BLE001 (a step directory too damaged for orbax: remove it by hand)
            shutil.rmtree(self.directory / str(step), ignore_errors=True)
        self.manager.reload()

    def restore(self, target, recorded: int, log: Callable[[str], None]) -> tuple[Any, int]:
        import orbax.checkpoint as ocp

        sums = self._sums()
        for step in sorted(self.manager.all_steps(), reverse=True):
            if step > recorded:
                log(f"checkpoint {self.directory / str(step)}: its evaluations after step {recorded} are missing "
                    f"from the results; training again from an earlier step to redo them")
                self._delete(step)
                continue
            try:
                state = self.manager.restore(step, args=ocp.args.StandardRestore(target))
                problem = None if sums.get(str(step)) in (None, state_checksum(state)) else "checksum mismatch"
            except Exception as e:  # noqa: BLE001 (any unreadable checkpoint: fall back to the one before)
                problem = " ".join(str(e).split())[:200] or type(e).__name__
            if problem is None:
                return state, step
            log(f"checkpoint {self.directory / str(step)} is damaged ({problem}); falling back to the one before")
            self._delete(step)
        return None, 0

    def save(self, step: int, state) -> None:
        import orbax.checkpoint as ocp

        try:
            with _quiet_writer("absl", "asyncio", "orbax"):  # a failed write is reported below, in one line
                self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
                self.manager.wait_until_finished()
            checksum = state_checksum(state)
            if checksum is not None and jax.process_index() == 0:
                sums = {k: v for k, v in self._sums().items() if int(k) in set(self.manager.all_steps())}
                write_atomic(self.sums_path, json.dumps({**sums, str(step): checksum}, indent=1))
        except (OSError, ValueError, RuntimeError) as e:
            text = " ".join(str(e).split())
            if isinstance(e, ResourceError) or not (isinstance(e, OSError) or any(f in text for f in _DISK_FAULTS)):
                raise
            for tmp in self.directory.glob("*tmp*"):  # orbax's half-written step, if any
                shutil.rmtree(tmp, ignore_errors=True)
            reason = next((f for f in _DISK_FAULTS if f in text), None) or (getattr(e, "strerror", None) or text)
            reason = "no space left on the device" if reason in ("RESOURCE_EXHAUSTED", "No space left") else reason
            raise ResourceError(f"{self.directory}: cannot write the checkpoint of step {step}: {reason.lower()}; "
                                f"free space and re-run to resume from the last whole checkpoint") from None

    def close(self) -> None:
        self.manager.close()


class JsonlSink:
    """A single run's evaluations, one JSON line each, in run_dir/metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return out

    def last_step(self) -> int:
        """The newest step whose evaluation is recorded (0 if none): no checkpoint past it can be resumed."""
        return max((r["step"] for r in self.records()), default=0)

    def resume(self, step: int) -> None:
        """Records past the checkpoint were logged by a run that died before its next checkpoint: redo them."""
        keep = [r for r in self.records() if r["step"] <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def record(self, records: list[dict]) -> None:
        try:
            with self.path.open("a") as f:
                for r in records:
                    windows = {k: np.round(v.astype(float), 5).tolist() for k, v in (r.get("per_window") or {}).items()}
                    f.write(json.dumps({**r, "per_window": windows or None, "window_positions": None}) + "\n")
        except OSError as e:
            raise resource_error(e, self.path, "cannot write") from None


def _fetch(x) -> np.ndarray:
    """A global array on every host (metrics of members spread over processes included)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


def _stack(trees: list) -> Any:
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


@dataclasses.dataclass
class GroupSteps:
    """A group's compiled functions and shardings: all that depends on its shapes and not on its data, so that it
    can be compiled ahead of time (jscale.grid compiles the next group's while one trains)."""

    mesh: Any
    abstract: Any  # the train state's shapes
    state_sh: Any
    batch_sh: Any
    hp_sharding: Any
    replicated: Any
    init: LazyInit  # host seeds (M,) or () -> state
    train_step: Callable  # (state, batch, hparams) -> (state, metrics)
    eval_step: Callable  # (params, windows (W, S)) -> losses (W, T), or (M, W, T) for an ensemble
    eval_chunk: int  # windows per eval_step call
    seconds: dict[str, float]  # {"compile": time spent lowering and compiling}


_STEPS_CACHE: dict[str, GroupSteps] = {}  # compiled steps by everything they depend on, shared by same-shape groups
_INIT_CACHE: dict[str, Callable] = {}  # one compiled single-member initialisation per model shape


def _shape_key(cfgs: list[Config], stacked: bool, devices) -> str:
    """What a group's compiled steps depend on: the model, the batch and evaluation-chunk shapes, the mesh, the
    member count and the devices. Not the rest of the train and data settings (steps, schedules, evaluation and
    checkpoint intervals, the corpus): those reach the programs as data or stay on the host, so groups that differ
    only there share one compilation."""
    cfg = cfgs[0]
    shapes = {"model": _program_model(shared_config(cfg)["model"]), "parallel": cfg.parallel.__dict__,
              "batch_size": cfg.train.batch_size, "eval_chunk": _eval_chunk(cfg)}
    return json.dumps([shapes, len(cfgs), stacked, [str(x) for x in (devices or jax.devices())]], sort_keys=True)


def _program_model(model: dict) -> dict:
    """The model settings a compiled program depends on: not the weights a run starts from (init_from is read on the
    host after initialising), so runs started from different weights share their programs."""
    return {k: v for k, v in model.items() if k != "init_from"}


def _eval_chunk(cfg: Config) -> int:
    """Windows per compiled evaluation call: a batch, or fewer when the curve's evaluations score fewer windows."""
    return min(cfg.train.batch_size, eval_window_counts(cfg.data, cfg.model.n_ctx)[1])


def member_shape_key(cfg: Config) -> str:
    """What one member's programs depend on, as a cache key: its model (less init_from) and batch size."""
    return json.dumps([_program_model(cfg.model.__dict__), cfg.train.batch_size], sort_keys=True)


def single_init(model, optimizer, cfg: Config) -> Callable:
    """One member's state from its seed, compiled once per model shape and shared by every ensemble size, group
    and single-device run: the random initialisers (one RNG kernel per parameter) are most of its compile time,
    and vmapping them over members only makes that compile longer."""
    key = member_shape_key(cfg)
    with _INIT_LOCK:  # the background compile thread and the training thread may ask for the same shape
        if key not in _INIT_CACHE:
            init = lambda seed: init_state(model, optimizer, cfg.model.n_ctx, seed, cfg.train.batch_size)
            _INIT_CACHE[key] = jax.jit(init).lower(jax.ShapeDtypeStruct((), jnp.uint32)).compile()
        return _INIT_CACHE[key]


_INIT_LOCK = threading.Lock()


class LazyInit:
    """A group's state initialisation, compiled on its first call or by `compile()` ahead of time: a group that
    resumes from a checkpoint never initialises, so it need not pay the compile (about as long as the train
    step's)."""

    def __init__(self, compile_init: Callable[[], Callable]):
        self._compile_init, self._init, self._lock = compile_init, None, threading.Lock()

    def compile(self) -> Callable:
        with self._lock:
            if self._init is None:
                self._init = self._compile_init()
            return self._init

    @property
    def compiled(self) -> bool:
        return self._init is not None

    def __call__(self, seeds):
        return self.compile()(seeds)


ENSEMBLE_MODES = ("vmap", "map")


def ensemble(fn: Callable, mode: str, in_axes=0) -> Callable:
    """fn over a leading member axis: "vmap" batches the members' operations together (one wide program; what an
    accelerator wants), "map" runs the members one after another inside one compiled program (lax.map: each
    member's matmuls keep their single-model shapes, which a CPU runs faster than the batched ones, and the
    per-member dispatch of a Python loop is gone). Both give the same results."""
    if mode == "vmap":
        return jax.vmap(fn, in_axes=in_axes)
    if mode != "map":
        raise ValueError(f"ensemble mode {mode!r} is not one of {ENSEMBLE_MODES}")
    axes = in_axes if isinstance(in_axes, tuple) else None

    def mapped(*args):
        if axes is None:
            return jax.lax.map(lambda xs: fn(*xs), args)
        shared = [a for a, ax in zip(args, axes) if ax is None]
        per_member = tuple(a for a, ax in zip(args, axes) if ax is not None)

        def one(xs):
            it, sh = iter(xs), iter(shared)
            return fn(*(next(sh) if ax is None else next(it) for ax in axes))

        return jax.lax.map(one, per_member)

    return mapped


def compile_steps(cfgs: list[Config], stacked: bool, devices=None, mode: str = "vmap",
                  with_init: bool = True) -> GroupSteps:
    """Lower and compile init, train_step and eval_step for runs of these shapes (ahead of time, no arrays);
    groups of the same shapes share one compilation. mode: how an ensemble runs its members (see `ensemble`);
    members spread over several devices always vmap. with_init=False leaves init to compile on its first call
    (a group that resumes from a checkpoint never makes it)."""
    cache_key = _shape_key(cfgs, stacked, devices) + mode
    if cache_key in _STEPS_CACHE:
        steps, t0 = _STEPS_CACHE[cache_key], time.perf_counter()
        if not with_init or steps.init.compiled:
            return dataclasses.replace(steps, seconds={"compile": 0.0})
        steps.init.compile()
        return dataclasses.replace(steps, seconds={"compile": time.perf_counter() - t0})
    interrupts.point("compile")
    t0 = time.perf_counter()
    cfg, M = cfgs[0], len(cfgs)
    if not stacked and M != 1:
        raise ValueError("train_loop: stacked=False trains exactly one run")
    t, n_ctx = cfg.train, cfg.model.n_ctx
    model, optimizer = build(cfg.model), make_optimizer(t)
    mesh = sharding.ensemble_mesh(cfg.parallel, M, devices) if stacked else sharding.make_mesh(cfg.parallel,
                                                                                                devices=devices)
    hp_sharding = sharding.member_sharding(mesh, M if stacked else None)
    host_hp = {k: np.asarray(v) for k, v in hparams_from_config(t).items()}
    hp_abstract = {k: jax.ShapeDtypeStruct((M,) * stacked + v.shape, v.dtype, sharding=hp_sharding)
                   for k, v in host_hp.items()}

    init = lambda seed: init_state(model, optimizer, n_ctx, seed, t.batch_size)
    init = jax.vmap(init) if stacked else init
    abstract = jax.eval_shape(init, hp_abstract["seed"])
    state_sh = sharding.state_shardings(abstract, mesh, stacked)
    step_fn = make_train_step(model, dropout=cfg.model.dropout > 0)
    eval_fn = make_eval_step(model)
    if stacked:
        mode = mode if mesh.size == 1 else "vmap"
        step_fn, eval_fn = ensemble(step_fn, mode), ensemble(eval_fn, mode, in_axes=(0, None))
    batch_shape = (M, t.batch_size, n_ctx + 1) if stacked else (t.batch_size, n_ctx + 1)
    batch_sh = sharding.batch_sharding(mesh, batch_shape, stacked)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    with_sh = lambda tree, sh: jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
    state_abstract = with_sh(abstract, state_sh)
    chunk = _eval_chunk(cfg)
    window = eval_context(cfg.model) + n_ctx + 1
    if stacked or mesh.size == 1:
        # members initialised one by one by the shared single-member init (compiled once per model shape), then
        # stacked in place; a single run on one device is one such member
        def compile_init():
            single = single_init(model, optimizer, cfg)
            if not stacked:
                return lambda seed: jax.device_put(single(np.asarray(seed, np.uint32)), state_sh)
            return lambda seeds_M: jax.tree.map(
                sharding.put, _stack([jax.device_get(single(seed)) for seed in seeds_M]), state_sh)
    else:  # a single run on several devices is initialised sharded, where it lives (FSDP, tensor parallelism)
        def compile_init():
            sharded_init = jax.jit(init, out_shardings=state_sh).lower(hp_abstract["seed"]).compile()
            return lambda seed: sharded_init(sharding.put(np.asarray(seed), hp_sharding))
    compiled_init = LazyInit(compile_init)
    if with_init:
        compiled_init.compile()
    compiled_step = jax.jit(
        step_fn, in_shardings=(state_sh, batch_sh, {k: hp_sharding for k in host_hp}),
        out_shardings=(state_sh, replicated), donate_argnums=0,
    ).lower(state_abstract, jax.ShapeDtypeStruct(batch_shape, jnp.int32, sharding=batch_sh), hp_abstract).compile()
    compiled_eval = jax.jit(
        eval_fn, in_shardings=(state_sh.params, replicated), out_shardings=replicated,
    ).lower(state_abstract.params, jax.ShapeDtypeStruct((chunk, window), jnp.int32, sharding=replicated)).compile()
    steps = GroupSteps(mesh, abstract, state_sh, batch_sh, hp_sharding, replicated, compiled_init, compiled_step,
                       compiled_eval, chunk, {"compile": time.perf_counter() - t0})
    _STEPS_CACHE[cache_key] = steps
    return steps


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def train_loop(cfgs: list[Config], run_ids: list[str], corpus: data.TokenizedCorpus, checkpoint_dir: Path,
               sink, stacked: bool, on_step: Callable[[int], None] | None = None,
               log: Callable[[str], None] | None = None, stop_after: int | None = None,
               devices=None, compiled: GroupSteps | None = None,
               timings: dict[str, float] | None = None, mode: str = "vmap",
               on_resume: Callable[[int], None] | None = None, tracker=None,
               on_eval: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Train runs that share every array shape and step count, from their newest checkpoint in checkpoint_dir.

    stacked=True trains them as one vmapped ensemble (params, optimizer states and hyperparameters stacked on a
    leading member axis, members spread over the mesh's ensemble axis); stacked=False trains cfgs[0] alone,
    sharded over the mesh of cfgs[0].parallel. Each evaluation goes to sink.record (on process 0 only) before the
    checkpoint that covers it is written. Returns the last record of each run.

    compiled: the group's steps from compile_steps, if compiled ahead of time. timings: a dict that collects the
    seconds spent compiling, initialising, training, evaluating and checkpointing. tracker: a tracking.Tracker
    that also gets each evaluation's records (TensorBoard, W&B), on process 0. on_eval: called with them too
    (a progress bar shows the losses).
    """
    cfg, M = cfgs[0], len(cfgs)
    t, n_ctx = cfg.train, cfg.model.n_ctx
    steps = compiled if compiled is not None else compile_steps(cfgs, stacked, devices, mode, with_init=False)
    times = {} if timings is None else timings
    for key, value in steps.seconds.items():
        times[key] = times.get(key, 0.0) + value
    mesh, state_sh, batch_sh = steps.mesh, steps.state_sh, steps.batch_sh
    host_hp = [{k: np.asarray(v) for k, v in hparams_from_config(c.train).items()} for c in cfgs]
    host_hp = _stack(host_hp) if stacked else host_hp[0]
    hparams = {k: sharding.put(v, steps.hp_sharding) for k, v in host_hp.items()}

    writer = sink if jax.process_index() == 0 else None
    recorded = _agree(writer.last_step() if writer is not None else 0)
    say = log or (lambda line: print(f"jscale: {line}", flush=True))
    checkpoints = Checkpoints(checkpoint_dir, t.keep_checkpoints)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), steps.abstract, state_sh)
    with _timed(times, "checkpoint"):
        state, start = checkpoints.restore(target, recorded, say)
    if state is None:
        with _timed(times, "compile"):  # nothing when compiled ahead of time
            steps.init.compile()
        with _timed(times, "init"):
            state = jax.block_until_ready(steps.init(host_hp["seed"]))
            if cfg.model.init_from:  # a fresh start from given weights; the optimizer state starts fresh
                state = _start_from(state, cfg, M if stacked else None, state_sh)
    if writer is not None:
        writer.resume(start)
    if on_resume is not None:  # a progress bar starts where the run resumes
        on_resume(start)
    tracker = tracker if writer is not None else None
    if tracker is not None:
        tracker.start(start)

    n_final, n_curve = eval_window_counts(cfg.data, n_ctx)
    explicit = cfg.data.eval_windows > 0
    if not explicit:  # sized from eval_tokens: at most what the held-out sets hold without overlapping
        n_final = min(n_final, corpus.window_capacity(n_ctx, eval_context(cfg.model)))
    eval_sets = {split: corpus.eval_windows(n_final, n_ctx, eval_context(cfg.model), split, strict=explicit)
                 for split in corpus.eval_sets}
    curve_subset = {split: results.curve_subset(len(w), n_curve)
                    for split, w in eval_sets.items()}  # what the evaluations before the last score
    consecutive = has_memory(cfg.model)  # Transformer-XL reads each batch row's stream segment by segment
    acc = accounting.account(cfg.model)
    tokens_per_step = t.batch_size * n_ctx
    peak = device_peak_flops()
    peak = None if peak is None else peak * mesh.size
    data_seeds = [c.train.seed if c.train.data_seed is None else c.train.data_seed for c in cfgs]
    subsets = [(c.data.max_train_tokens, c.data.subset_seed, c.data.subset_chunk) for c in cfgs]
    data_tokens = [d or len(corpus.train) for d, _, _ in subsets]  # D: the tokens each member may draw from

    last: list[dict] = []
    losses: list[jax.Array] = []
    grad_norms: list[jax.Array] = []
    diverged = np.zeros(M if stacked else 1, bool)  # members whose loss left any sensible range, for good
    max_loss = DIVERGED_LOSS_FACTOR * math.log(cfg.model.vocab_size)
    last_time, last_step = time.perf_counter(), start
    end = t.steps if stop_after is None else min(t.steps, stop_after)
    loop_start, eval_before, checkpoint_before = time.perf_counter(), times.get("eval", 0.0), times.get("checkpoint", 0.0)
    try:
        for step in range(start, end):
            interrupts.check()  # a step boundary: everything written so far is whole
            batches = [corpus.train_batch(s, step, t.batch_size, n_ctx, d, consecutive, subset_seed, chunk)
                       for s, (d, subset_seed, chunk) in zip(data_seeds, subsets)]
            batch = np.stack(batches) if stacked else batches[0]
            state, metrics = steps.train_step(state, sharding.put(batch, batch_sh), hparams)
            losses.append(metrics["loss"])
            grad_norms.append(metrics["grad_norm"])
            done = step + 1
            if t.is_eval_step(done):
                interrupts.point("eval")
                jax.block_until_ready(state)  # the steps dispatched so far count as training, not evaluation
                eval_start = time.perf_counter()
                final = done == t.steps
                members = M if stacked else 1
                raw = {split: evaluate(steps, state.params, windows if final else windows[curve_subset[split]],
                                       members)
                       for split, windows in eval_sets.items()}
                evals = {split: summarize_eval(losses) for split, losses in raw.items()}
                train_loss = _fetch(jnp.stack(losses)).reshape(len(losses), -1).mean(axis=0)  # one transfer
                grad_norm = _fetch(jnp.stack(grad_norms)).reshape(len(grad_norms), -1).mean(axis=0)
                # NaN/inf froze the member inside train_step; a finite loss far above a uniform guess (ln V) is
                # divergence too, and stays so.
                diverged |= ~_fetch(state.alive).reshape(-1) | ~(evals["validation"]["loss"] < max_loss)
                lr = _fetch(metrics["lr"]).reshape(-1)
                now = time.perf_counter()
                tokens_per_s = (done - last_step) * tokens_per_step / (now - last_time)  # per member
                last = []
                for i, run_id in enumerate(run_ids):
                    tokens = done * tokens_per_step
                    last.append({
                        "run_id": run_id, "step": done, "tokens": tokens, "epochs": tokens / data_tokens[i],
                        "flops_6N": tokens * acc.train_flops_6N, "flops_exact": tokens * acc.train_flops_exact,
                        "train_loss": float(train_loss[i]),  # the mean over the steps since the last evaluation
                        "grad_norm": float(grad_norm[i]),  # before clipping, the mean over the same steps
                        "val_loss": float(evals["validation"]["loss"][i]),
                        "val_se": float(evals["validation"]["se"][i]),
                        "test_loss": float(evals["test"]["loss"][i]), "test_se": float(evals["test"]["se"][i]),
                        "test_bits_per_byte": float(evals["test"]["loss"][i]) / math.log(2)
                        / corpus.bytes_per_token("test"),
                        "evals": {split: {"loss": float(e["loss"][i]), "se": float(e["se"][i]),
                                          "bits_per_byte": float(e["loss"][i]) / math.log(2)
                                          / corpus.bytes_per_token(split),
                                          "per_position": e["per_position"][i].round(5).tolist()}
                                  for split, e in evals.items()},
                        # Each window's loss at the last evaluation, for bootstraps over windows and paired
                        # differences between runs (the same windows for every run of a corpus and context).
                        "per_window": {split: e["per_window"][i].astype(np.float32) for split, e in evals.items()}
                        if final else None,
                        # and, on the test split, each window's loss at each position (float16): paired
                        # per-position comparisons between runs with window-bootstrap intervals.
                        "window_positions": np.minimum(raw["test"][i], 6e4).astype(np.float16) if final else None,
                        "tokens_per_s": tokens_per_s,
                        "mfu": None if peak is None else M * tokens_per_s * acc.train_flops_exact / peak,
                        "lr": float(lr[i]), "status": "diverged" if diverged[i] else "done" if final else "running",
                        "wall_time": now - last_time,
                    })
                if writer is not None:
                    writer.record(last)
                if tracker is not None:
                    tracker.record(last)
                if log is not None:
                    log(_summary(last))
                if on_eval is not None:
                    on_eval(last)
                losses.clear()
                grad_norms.clear()
                last_time, last_step = time.perf_counter(), done
                times["eval"] = times.get("eval", 0.0) + last_time - eval_start
                # Checkpoint only after the records it covers are committed (see resume above).
                if done % t.checkpoint_every == 0 or done == t.steps:
                    interrupts.point("checkpoint")
                    with _timed(times, "checkpoint"):
                        checkpoints.save(done, state)
            if on_step is not None:
                on_step(1)
            if step == start:
                interrupts.point("train")
        jax.block_until_ready(state)
    finally:
        checkpoints.close()
        if tracker is not None:
            tracker.close()
        times["train"] = times.get("train", 0.0) + (time.perf_counter() - loop_start) - (
            times.get("eval", 0.0) - eval_before) - (times.get("checkpoint", 0.0) - checkpoint_before)
    return last


def _start_from(state: TrainState, cfg: Config, members: int | None, state_sh) -> TrainState:
    """The state with its parameters replaced by model.init_from's (stacked for every member of an ensemble)."""
    from jscale import hf_gpt2

    loaded = hf_gpt2.load_params(cfg.model.init_from, cfg.model)
    if jax.tree.structure(loaded) != jax.tree.structure(jax.tree.map(lambda x: 0, state.params)):
        raise ConfigError(f"model.init_from: {cfg.model.init_from} does not hold this model's parameters")
    if members is not None:
        loaded = jax.tree.map(lambda x: np.broadcast_to(x, (members, *x.shape)), loaded)
    return state.replace(params=jax.device_put(loaded, state_sh.params))


def _agree(value: int) -> int:
    """Process 0's value on every process (multi-host runs must resume from the same step)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def _summary(records: list[dict]) -> str:
    r = records[0]
    mfu = "" if r["mfu"] is None else f" mfu {100 * r['mfu']:.1f}%"
    if len(records) == 1:
        return (f"step {r['step']:>7} | tokens {r['tokens']:.3g} | train {r['train_loss']:.4f} (mean) | "
                f"val {r['val_loss']:.4f} ± {r['val_se']:.4f} | test {r['test_loss']:.4f} nats "
                f"({r['test_bits_per_byte']:.3f} bpb) | "
                f"{r['tokens_per_s']:.3g} tok/s{mfu}")
    tests = [x["val_loss"] for x in records if x["status"] != "diverged"] or [float("nan")]
    diverged = sum(x["status"] == "diverged" for x in records)
    return (f"step {r['step']:>7} | {len(records)} members | val {min(tests):.4f}..{max(tests):.4f} nats | "
            f"{len(records) * r['tokens_per_s']:.3g} tok/s{mfu}" + (f" | {diverged} diverged" if diverged else ""))


def _check_run_dir(run_dir: Path, cfg: Config) -> None:
    """A run directory holds one config; refuse to resume it with another."""
    config_path = run_dir / "config.json"
    wanted = cfg.identity()
    if config_path.exists():
        try:
            held = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{config_path}: not valid JSON ({e}); it records which run this directory holds: "
                              f"restore it, or use another --out") from None
        if not isinstance(held, dict):
            raise ConfigError(f"{config_path}: not a jscale run config; restore it, or use another --out")
        for section, fields in wanted.items():
            for key, value in fields.items():
                if held.get(section, {}).get(key, config.NEUTRAL_LATER_KEYS.get(f"{section}.{key}")) != value:
                    raise ConfigError(f"{section}.{key}: {run_dir} holds a run with {section}.{key} = "
                                      f"{held.get(section, {}).get(key)!r}, not {value!r}; use another --out")
    else:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise resource_error(e, run_dir, "cannot create") from None
        write_atomic(config_path, json.dumps(cfg.to_dict(), indent=2))


def check_runnable(cfg: Config) -> None:
    """What only the running backend (or a file) can tell, checked before anything compiles."""
    m = cfg.model
    if m.init_from:
        from jscale import hf_gpt2

        hf_gpt2.load_params(m.init_from, m)  # names and shapes against this config, before any work
    if m.kind == "lstm" and m.lstm_impl == "cudnn" and jax.default_backend() != "gpu":
        raise ConfigError(f"model.lstm_impl: cudnn needs a GPU (this backend is {jax.default_backend()}); use scan")


def check_intervals(t: TrainConfig) -> None:
    if t.checkpoint_every % t.eval_every:
        raise ConfigError(f"train.checkpoint_every: {t.checkpoint_every} must be a multiple of "
                          f"train.eval_every = {t.eval_every}, so a resumed run logs the same curve")


def train(cfg: Config, run_dir: str | Path, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train one model as configured, resuming from run_dir's newest checkpoint. Returns the final record.

    stop_after: leave the loop after this many steps in total (for tests that simulate a crash).
    """
    run_dir = Path(run_dir)
    check_intervals(cfg.train)
    check_runnable(cfg)
    data.check_sizes(cfg.data, cfg.model.n_ctx, eval_context(cfg.model))  # before tokenizing anything
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out: {run_dir} is a file, not a run directory")
    corpus = data.prepare(cfg.data)
    corpus.check_fits(cfg.model.n_ctx, cfg.data.max_train_tokens, eval_context(cfg.model), cfg.data.eval_windows)
    _check_run_dir(run_dir, cfg)
    sink = JsonlSink(run_dir / "metrics.jsonl")
    recorded = sink.last_step()  # the checkpoint resumed from is the newest one not past the recorded steps
    on_disk = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    bar = _progress_bar(progress and jax.process_index() == 0, cfg.train.steps,
                        max([s for s in on_disk if s <= recorded], default=0))
    last = train_loop([cfg], ["run"], corpus, run_dir / "checkpoints", sink, stacked=False,
                      on_step=None if bar is None else bar.update, log=None if bar is None else bar.write,
                      stop_after=stop_after, on_resume=None if bar is None else lambda start: _set_bar(bar, start),
                      tracker=tracking.tracker_for_run(cfg, run_dir),
                      on_eval=None if bar is None else lambda records: show_losses(bar, records))
    if bar is not None:
        bar.close()
    if last:
        return last[0]
    records = sink.records()  # already finished: nothing was trained
    return records[-1] if records else {}


def show_losses(bar, records: list[dict]) -> None:
    """The progress bar's postfix: the latest validation loss (the best member's, for an ensemble) and the train
    loss, an interval mean."""
    best = min(records, key=lambda r: r["val_loss"] if math.isfinite(r["val_loss"]) else math.inf)
    bar.set_postfix_str(f"val {best['val_loss']:.4f} train(mean) {best['train_loss']:.4f}"
                        + (f" best of {len(records)}" if len(records) > 1 else ""))


def _set_bar(bar, n: int) -> None:
    if bar.n != n:  # a damaged checkpoint made the run resume earlier than the bar guessed
        bar.n = n
        bar.refresh()


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)
