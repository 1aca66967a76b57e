"""Compiled programs: a group's init, train steps and evaluation step, lowered and compiled ahead of time for its
shapes and mesh, shared by every group of the same shapes; and ensembles (members vmapped, or mapped one after
another inside one program).

The training program runs up to STEPS_PER_CALL steps of `train_step` per call (`multi_step`), as many as the
caller asks: a small model's step is a few milliseconds, and dispatching it from Python once per step cost a sizeable
share of it on a CPU, where the dispatch runs on the cores that compute. Measured on this project's 2-core CPU, one
core (2026-12-06, benchmarks/RESULTS.md): the long scale's d_model 48 and d_model 8 steps took about 15% less time
16 to a call than one to a call.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jscale import interrupts, sharding
from jscale.config import Config, eval_window_counts, shared_config
from jscale.models import build
from jscale.train.step import (eval_context, hparams_from_config, init_state, make_eval_step, make_optimizer,
                               make_train_step)


def stack_members(trees: list) -> Any:
    """Members' pytrees stacked on a new leading axis (on the host)."""
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
    train_steps: Callable  # (state, batches (K, ...), hparams, n) -> (state, metrics (K, ...)): steps 0..n-1
    batches_sh: Any  # the sharding of train_steps' batches: batch_sh's with a leading steps axis
    eval_step: Callable  # (params, windows (W, S)) -> losses (W, T), or (M, W, T) for an ensemble
    eval_chunk: int  # windows per eval_step call
    seconds: dict[str, float]  # {"compile": time spent lowering and compiling}


STEPS_PER_CALL = 16  # K: training steps one call of GroupSteps.train_steps can run

_STEPS_CACHE: dict[str, GroupSteps] = {}  # compiled steps by everything they depend on, shared by same-shape groups
_INIT_CACHE: dict[str, Callable] = {}  # one compiled single-member initialisation per model shape


def program_key(cfgs: list[Config], stacked: bool, devices=None, mode: str = "vmap") -> str:
    """What a group's compiled steps depend on, as compile_steps' cache key: the model, the batch and
    evaluation-chunk shapes, the mesh, the member count, the devices and the ensemble mode. Not the rest of the train
    and data settings (steps, schedules, evaluation and checkpoint intervals, the corpus): those reach the programs as
    data or stay on the host, so groups that differ only there share one compilation."""
    cfg = cfgs[0]
    shapes = {"model": _program_model(shared_config(cfg)["model"]), "parallel": cfg.parallel.__dict__,
              "batch_size": cfg.train.batch_size, "eval_chunk": _eval_chunk(cfg)}
    return json.dumps([shapes, len(cfgs), stacked, [str(x) for x in (devices or jax.devices())]],
                      sort_keys=True) + mode


def compiled(key: str) -> bool:
    """Whether this process holds the compiled steps of this program_key."""
    return key in _STEPS_CACHE


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


def multi_step(step_fn: Callable, K: int = STEPS_PER_CALL) -> Callable:
    """(state, batches (K, ...), hparams, n) -> (state after n steps, metrics (K, ...)): step_fn applied to the
    first n <= K batches in turn, inside one program (a loop with n as data, so one compilation serves every
    count). Rows n.. of the metrics are zeros. The bits do not depend on how steps are split into calls (so a
    resumed run and a cooldown branch equal the run they continue); against n calls of step_fn they agree to float32
    rounding, not always bitwise: XLA compiles the loop's body on its own."""

    def train_steps(state, batches, hparams, n):
        def one(i, carry):
            state, metrics = carry
            state, m = step_fn(state, jax.lax.dynamic_index_in_dim(batches, i, keepdims=False), hparams)
            return state, jax.tree.map(lambda rows, v: jax.lax.dynamic_update_index_in_dim(rows, v, i, 0), metrics, m)

        shapes = jax.eval_shape(step_fn, state, batches[0], hparams)[1]
        metrics = jax.tree.map(lambda v: jnp.zeros((K,) + v.shape, v.dtype), shapes)
        return jax.lax.fori_loop(0, n, one, (state, metrics))

    return train_steps


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
    """Lower and compile init, train_steps (multi_step of train_step) and eval_step for runs of these shapes (ahead
    of time, no arrays); groups of the same shapes share one compilation. mode: how an ensemble runs its members
    (see `ensemble`); members spread over several devices always vmap. with_init=False leaves init to compile on
    its first call (a group that resumes from a checkpoint never makes it)."""
    cache_key = program_key(cfgs, stacked, devices, mode)
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
                sharding.put, stack_members([jax.device_get(single(seed)) for seed in seeds_M]), state_sh)
    else:  # a single run on several devices is initialised sharded, where it lives (FSDP, tensor parallelism)
        def compile_init():
            sharded_init = jax.jit(init, out_shardings=state_sh).lower(hp_abstract["seed"]).compile()
            return lambda seed: sharded_init(sharding.put(np.asarray(seed), hp_sharding))
    compiled_init = LazyInit(compile_init)
    if with_init:
        compiled_init.compile()
    K = STEPS_PER_CALL
    batches_sh = sharding.steps_sharding(batch_sh)
    compiled_steps = jax.jit(
        multi_step(step_fn, K), in_shardings=(state_sh, batches_sh, {k: hp_sharding for k in host_hp}, replicated),
        out_shardings=(state_sh, replicated), donate_argnums=0,
    ).lower(state_abstract, jax.ShapeDtypeStruct((K, *batch_shape), jnp.int32, sharding=batches_sh), hp_abstract,
            jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated)).compile()
    compiled_eval = jax.jit(
        eval_fn, in_shardings=(state_sh.params, replicated), out_shardings=replicated,
    ).lower(state_abstract.params, jax.ShapeDtypeStruct((chunk, window), jnp.int32, sharding=replicated)).compile()
    steps = GroupSteps(mesh, abstract, state_sh, batch_sh, hp_sharding, replicated, compiled_init, compiled_steps,
                       batches_sh, compiled_eval, chunk, {"compile": time.perf_counter() - t0})
    _STEPS_CACHE[cache_key] = steps
    return steps


def seconds_per_step(steps_fn, state, batch, hparams, steps: int = 10, warmup: int = 2,
                     batches_sharding=None) -> float:
    """Wall-clock seconds per training step of a jitted `multi_step` program (state, batches, hparams, n) ->
    (state, metrics), run as training runs it (up to STEPS_PER_CALL steps a call) on `batch` (one step's, repeated),
    after compilation and `warmup` steps (for benchmarks, `jscale plan`'s throughput and the grid's ensemble
    measurement). batches_sharding: where the K batches go (GroupSteps.batches_sh for a compiled group)."""
    K = STEPS_PER_CALL
    host = np.ascontiguousarray(np.broadcast_to(np.asarray(batch), (K, *np.shape(batch))))
    batches = jnp.asarray(host) if batches_sharding is None else sharding.put(host, batches_sharding)

    def run(n_steps: int):
        nonlocal state
        m = None
        while n_steps > 0:
            n = min(K, n_steps)
            state, m = steps_fn(state, batches, hparams, np.int32(n))
            n_steps -= n
        return m

    if warmup:
        run(warmup)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    m = run(steps)
    jax.block_until_ready(m["loss"])
    return (time.perf_counter() - t0) / steps


# Dense 16-bit peak FLOP/s by device kind, for MFU. CPUs have no entry: MFU is not reported there.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5p": 459e12, "TPU v6": 918e12}


def device_peak_flops(device: jax.Device | None = None) -> float | None:
    kind = (device or jax.devices()[0]).device_kind
    return next((peak for name, peak in PEAK_FLOPS.items() if name.lower() in kind.lower()), None)
