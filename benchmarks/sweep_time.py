"""Where a small sweep's wall time goes, with and without the compile-time savings, measured side by side.

    python benchmarks/sweep_time.py            # 4 sizes x 300 steps, three configurations, each in a fresh process
    python benchmarks/sweep_time.py --before d16bad8   # and the same sweep with the code of an earlier commit

Configurations (each trains the same sweep into a new directory, in its own process, one after another):
- "no cache, compile in line": the persistent XLA cache off and each group compiled when it is reached (what every
  sweep paid before jscale 0.1's compile work; the shared single-member initialisation is not switchable);
- "cache, background compile, first run": the CLI's defaults on an empty cache;
- "same sweep again": the defaults on the warm cache left by the previous run (a re-run, a resume, or a repeat
  of the same shapes).
--before REV adds a row for the same sweep trained by the code at git revision REV (checked out into a temporary
worktree), wall time only: that code has no timings.
Breakdown columns come from `grid.run_sweep(timings=...)`: data (tokenizing or opening the corpus), compile (all
compile time, overlapped with training or not), compile waited (what the sweep waited for), init, train, eval,
checkpoint; wall is the whole run_sweep call, imports excluded.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

SWEEP = {
    "name": "timing",
    "base": {"model": {"n_layer": 2, "n_ctx": 64}, "data": {"eval_windows": 64},
             "train": {"batch_size": 16, "steps": 300, "lr": 3e-3, "warmup_steps": 20, "eval_every": 100,
                       "checkpoint_every": 100}},
    "axis": [{"zip": {"model.d_model": [32, 48, 64, 96], "model.n_heads": [2, 3, 4, 6]}}],
}

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
from jscale import cli
cli.enable_compilation_cache()
from jscale import grid, sweep
spec, out, background = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
timings = {}
t1 = time.perf_counter()
grid.run_sweep(sweep.expand(spec), out, ensemble_size=1, progress=False, background_compile=background,
               timings=timings)
timings["wall"] = time.perf_counter() - t1
timings["imports"] = t1 - t0
print(json.dumps(timings))
"""

COLUMNS = ("wall", "data", "compile", "compile_wait", "init", "train", "eval", "checkpoint")


def run(spec: dict, out: str, background: bool, cache_dir: str | None) -> dict:
    env = {**os.environ}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    if cache_dir is None:
        env["JSCALE_XLA_CACHE"] = "off"
    else:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env.pop("JSCALE_XLA_CACHE", None)
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec), out, "1" if background else "0"],
                       capture_output=True, text=True, env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


INIT_CHILD = r"""
import json, sys, time
import jax, jax.numpy as jnp
from jscale import config, resolve, train
from jscale.models import build
d = 32 if sys.argv[1] == "1" else 128
cfg = resolve.load(None, [f"model.d_model={d}", "model.n_layer=4", "model.n_heads=4", "model.n_ctx=128"])
model, opt = build(cfg.model), train.make_optimizer(cfg.train)
init = lambda s: train.init_state(model, opt, 128, s, cfg.train.batch_size)
out = {}
for name, fn, shape in (("vmapped", jax.vmap(init), (4,)), ("single", init, ())):
    t0 = time.perf_counter()
    jax.jit(fn).lower(jax.ShapeDtypeStruct(shape, jnp.uint32)).compile()
    out[name] = time.perf_counter() - t0
print(json.dumps(out))
"""


def init_compile(smoke: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    p = subprocess.run([sys.executable, "-c", INIT_CHILD, "1" if smoke else "0"], capture_output=True, text=True,
                       env=env, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


BEFORE_CHILD = r"""
import json, sys, time
from jscale import grid, sweep
spec, out = json.loads(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
grid.run_sweep(sweep.expand(spec), out, ensemble_size=1, progress=False)
print(json.dumps({"wall": time.perf_counter() - t0}))
"""


def run_before(rev: str, spec: dict, tmp: str) -> dict:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tree = os.path.join(tmp, "before")
    subprocess.run(["git", "-C", repo, "worktree", "add", "--detach", tree, rev], check=True, capture_output=True)
    try:
        env = {**os.environ, "PYTHONPATH": tree}
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        p = subprocess.run([sys.executable, "-c", BEFORE_CHILD, json.dumps(spec), os.path.join(tmp, "z")],
                           capture_output=True, text=True, env=env, check=True, cwd=tree)
        return json.loads(p.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["git", "-C", repo, "worktree", "remove", "--force", tree], capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", help="also time the same sweep with the code at this git revision (wall only)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes and 4 steps (for the tests)")
    args = ap.parse_args()
    spec = json.loads(json.dumps(SWEEP))
    spec["base"]["train"]["steps"] = 4 if args.smoke else args.steps
    if args.smoke:
        spec["base"]["train"].update(eval_every=2, checkpoint_every=2, warmup_steps=1)
        spec["base"]["data"]["eval_windows"] = 4
        spec["axis"] = [{"zip": {"model.d_model": [16, 32], "model.n_heads": [2, 2]}}]
    import jax

    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "xla")
        rows = [("no cache, compile in line", run(spec, os.path.join(tmp, "a"), False, None)),
                ("cache, background compile, first run", run(spec, os.path.join(tmp, "b"), True, cache)),
                ("same sweep again (warm cache)", run(spec, os.path.join(tmp, "c"), True, cache))]
        init = init_compile(smoke=args.smoke)
        if args.before:
            rows.insert(0, (f"code at {args.before} (wall only)", run_before(args.before, spec, tmp)))
    from jscale import sweep, throughput

    groups = sweep.expand(spec).groups(1)
    measured = throughput.table(log=lambda line: None)
    n = len(spec["axis"][0]["zip"]["model.d_model"])
    print(f"{datetime.date.today().isoformat()}, {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"jax {jax.__version__}, {os.cpu_count()} CPUs; {n} sizes x {spec['base']['train']['steps']} steps")
    print("| configuration | " + " | ".join(f"{c} (s)" for c in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, t in rows:
        print(f"| {name} | " + " | ".join("-" if c not in t else f"{t[c]:.1f}" for c in COLUMNS) + " |")
    print(f"\n`jscale plan`'s estimate for this sweep: {throughput.describe(groups, measured)}")
    print("\nInitialisation compile of a 4-member ensemble (d_model 128, 4 layers, n_ctx 128), cold cache:")
    print(f"vmapped init over the members {init['vmapped']:.2f} s; the shared single-member init "
          f"{init['single']:.2f} s (compiled once per model shape, whatever the ensemble size)")


if __name__ == "__main__":
    main()
