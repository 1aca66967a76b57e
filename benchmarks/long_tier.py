"""The long scale's smallest and largest size groups, trained by one process (`jscale run`'s default) and by
`jscale run --workers 2`, alternating, each in fresh processes on empty sweep directories with empty caches.

    python benchmarks/workers.py                  # 2 pairs, 780 steps (a tenth of the long scale's 7,800)
    python benchmarks/workers.py --smoke --steps 40   # what the tests run: one pair, 8k-token evaluations

The sweep is experiments/size.toml's long scale restricted to d_model 8 and 48 (N = 1.5k and 55k, two seeds each,
their learning-rate pilots and cooldown branches included), at --steps steps (3 cooldown branches below 2,000
steps, 1 below 600). Printed per configuration: wall time,
the exact training FLOPs of every run it trained (pilots included) over that wall time, that rate against the
float32 matmul limit of this machine measured in the same invocation (a 2048 x 2048 dot, both cores), per-token
time, and whether the final runs' losses equal those of the other configuration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from first_run import cold_run

REPO = Path(__file__).resolve().parents[1]

MATMUL = r"""
import time, jax, jax.numpy as jnp
x = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
f = jax.jit(lambda a: a @ a)
f(x).block_until_ready()
t = time.perf_counter(); n = 20
for _ in range(n): y = f(x)
y.block_until_ready()
print(2 * 2048 ** 3 * n / (time.perf_counter() - t) / 1e9)
"""


def sweep_toml(steps: int, smoke: bool = False) -> str:
    """size.toml with a [scale.bench]: the long scale's settings at d_model 8 and 48 and `steps` steps (fewer
    cooldown branches when the run is too short for the first to start after warmup)."""
    text = (REPO / "experiments" / "size.toml").read_text()
    return text + f"""
[scale.bench]                   # benchmarks/workers.py: the long scale's smallest and largest sizes
"train.steps" = {steps}
"train.anneal_branches" = {5 if steps >= 2000 else 3 if steps >= 600 else 1}
"train.eval_every" = {max(1, steps // 4)}
"train.checkpoint_every" = {max(1, steps // 2)}
"axis.0.values" = [2]
"axis.1.zip" = {{ "model.d_model" = [8, 48], "model.n_heads" = [1, 6] }}
""" + ('"data.eval_tokens" = 8192\n"data.curve_eval_windows" = 16\n' if smoke else "")


def trained(out: Path) -> dict:
    """Exact training FLOPs and tokens of every run in the sweep directory, and the final runs' losses."""
    with sqlite3.connect(out / "results.sqlite") as c:
        flops, tokens = c.execute("SELECT SUM(step * batch_size * n_ctx * flops_per_token_exact), "
                                  "SUM(step * batch_size * n_ctx) FROM runs").fetchone()
        finals = dict(c.execute("SELECT run_id, final_val_loss FROM runs WHERE role = 'final'").fetchall())
    return {"flops": flops, "tokens": tokens, "finals": finals}


def run(toml: Path, out: Path, workers: int, cache: Path) -> float:
    """Wall seconds of one `jscale run` of the bench scale, as a user's first run (first_run.cold_run)."""
    return cold_run(["run", str(toml), "--scale", "bench", "--out", str(out), "--quiet",
                     *(["--workers", str(workers)] if workers > 1 else [])], cache)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2, help="alternating (one process, two workers) pairs")
    ap.add_argument("--steps", type=int, default=780, help="training steps of each final run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="one pair, small evaluations, no matmul measurement (for "
                                                         "the tests)")
    args = ap.parse_args(argv)
    limit = None if args.smoke else float(subprocess.run([sys.executable, "-c", MATMUL], check=True,
                                                         capture_output=True, text=True).stdout)
    with tempfile.TemporaryDirectory() as tmp:
        toml = Path(tmp) / "size.toml"
        toml.write_text(sweep_toml(args.steps, args.smoke))
        rows = []
        for pair in range(1 if args.smoke else args.pairs):
            order = (1, args.workers) if pair % 2 == 0 else (args.workers, 1)
            for w in order:
                out = Path(tmp) / f"p{pair}-w{w}"
                wall = run(toml, out, w, Path(tmp) / f"cache-p{pair}-w{w}")
                rows.append({"pair": pair, "workers": w, "wall": wall, **trained(out)})
        load = os.getloadavg()[0]
    print(f"{platform.machine()} CPU, {os.cpu_count()} cores, {datetime.date.today().isoformat()}, load after "
          f"{load:.1f}" + ("" if limit is None else f"; float32 2048x2048 matmul: {limit:.0f} GFLOP/s"))
    print("| pair | configuration | wall (s) | tokens trained | exact training FLOPs/s | of the matmul limit | "
          "us/token | final losses as one process |")
    print("|---|---|---|---|---|---|---|---|")
    base = {r["pair"]: r["finals"] for r in rows if r["workers"] == 1}
    for r in rows:
        rate = r["flops"] / r["wall"]
        same = "-" if r["workers"] == 1 else ("identical" if r["finals"] == base[r["pair"]] else "differ")
        share = "-" if limit is None else f"{100 * rate / 1e9 / limit:.1f}%"
        name = "one process" if r["workers"] == 1 else f"--workers {r['workers']}"
        print(f"| {r['pair']} | {name} | {r['wall']:.1f} | {r['tokens']:,} | {rate / 1e9:.2f} G | {share} | "
              f"{1e6 * r['wall'] / r['tokens']:.2f} | {same} |")
    print(json.dumps([{k: v for k, v in r.items() if k != "finals"} for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
