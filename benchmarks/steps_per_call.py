"""Training steps one a call against several a call (train.multi_step, what the loop runs), alternating in one
process, on the long scale's smallest and largest Transformers (2 layers, n_ctx 64, batch 32, d_model 8 and 48).

    taskset -c 0 python benchmarks/steps_per_call.py   # one core, as `jscale run --workers` runs each worker
    python benchmarks/steps_per_call.py --smoke          # what the tests run: tiny, a few steps

Printed per model and form: the best and median of --rounds readings of milliseconds per step (each reading --steps
steps), exact training GFLOP/s at the best, and whether the two forms' parameters agree bitwise after the same
steps from the same state.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jscale import accounting, train
from jscale.config import ModelConfig, TrainConfig
from jscale.models import build


def run(program, one_a_call: bool, state, batches, hp, n_steps: int):
    """n_steps training steps on the K batches in turn: one a call, or up to K a call (train.multi_step)."""
    K = len(batches)
    if one_a_call:
        for i in range(n_steps):
            state, _ = program(state, batches[i % K], hp)
    else:
        for first in range(0, n_steps, K):
            state, _ = program(state, batches, hp, np.int32(min(K, n_steps - first)))
    return jax.block_until_ready(state)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=96, help="steps per reading (a multiple of 16 keeps calls full)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    shapes = [(8, 1, 2, 32, 64), (48, 6, 2, 32, 64)] if not args.smoke else [(16, 2, 1, 4, 16)]
    steps, rounds = (4, 2) if args.smoke else (args.steps, args.rounds)
    K = train.STEPS_PER_CALL
    print(f"{platform.machine()}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} "
          f"cores usable, jax {jax.__version__}, {datetime.date.today().isoformat()}")
    print("| model | form | best ms/step | median ms/step | exact GFLOP/s (best) |")
    print("|---|---|---|---|---|")
    for d, H, L, B, T in shapes:
        cfg = ModelConfig(n_layer=L, d_model=d, n_heads=H, n_ctx=T, vocab_size=256)
        model, opt = build(cfg), train.make_optimizer(TrainConfig())
        hp = train.hparams_from_config(TrainConfig())
        step = train.make_train_step(model)
        one = jax.jit(step, donate_argnums=0)
        several = jax.jit(train.multi_step(step), donate_argnums=0)
        init = jax.jit(train.init_state, static_argnums=(0, 1, 2, 4))
        batches = jax.random.randint(jax.random.key(0), (K, B, T + 1), 0, 256)
        programs = {"one a call": one, f"{K} a call": several}
        states = {form: init(model, opt, T, jnp.uint32(0), B) for form in programs}
        for form, program in programs.items():  # compile, and the same steps from the same state (bitwise check)
            states[form] = run(program, form == "one a call", states[form], batches, hp, K)
        same = all(np.array_equal(a, b) for a, b in zip(*(jax.tree.leaves(s.params) for s in states.values())))
        seconds = {form: [] for form in states}
        for r in range(rounds):
            for form in (list(states) if r % 2 == 0 else list(states)[::-1]):
                t0 = time.perf_counter()
                states[form] = run(programs[form], form == "one a call", states[form], batches, hp, steps)
                seconds[form].append((time.perf_counter() - t0) / steps)
        flops = B * T * accounting.account(cfg).train_flops_exact  # one step's exact training FLOPs
        for form, ts in seconds.items():
            ts = sorted(ts)
            print(f"| d_model {d} | {form} | {1e3 * ts[0]:.2f} | {1e3 * ts[len(ts) // 2]:.2f} | "
                  f"{flops / ts[0] / 1e9:.1f} |")
        print(f"(d_model {d}: parameters after {K} steps {'bitwise the same' if same else 'not bitwise the same'})")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
