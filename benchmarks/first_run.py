"""A first `jscale run` with every cache empty, this code against an earlier revision, in alternating pairs.

    python benchmarks/first_run.py --before 5aab461 --pairs 3

Each run trains the same small sweep (4 GPTs of 2 layers, d_model 32/48/64/96 or the first --sizes of them, 300 steps,
the built-in corpus) in a fresh process on a new directory with a new JSCALE_CACHE (no compiled programs, token files,
evaluation windows or throughput probes from before), as a user's first run does; the earlier revision is checked out
into a temporary git worktree and run with the same Python environment. Prints each run's wall time and the ratio of
the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SWEEP = """name = "first-run"
[base.model]
n_layer = 2
n_ctx = 64
[base.data]
eval_windows = 64
[base.train]
batch_size = 16
steps = {steps}
lr = 3e-3
warmup_steps = {warmup}
eval_every = {every}
checkpoint_every = {every}
[[axis]]
zip = {{ "model.d_model" = {d_models}, "model.n_heads" = {n_heads} }}
"""


def cold_run(args: list[str], cache: Path, code: Path = REPO, output: list[str] | None = None) -> float:
    """Wall seconds of one `jscale ARGS` in a fresh process with every cache empty (compiled programs, token files,
    evaluation windows, throughput probes: a new JSCALE_CACHE), as a user's first run; code: the checkout whose
    jscale runs (PYTHONPATH and cwd); output: a list its stdout is appended to (else dropped).
    benchmarks/long_tier.py times its runs with it too."""
    env = {**os.environ, "PYTHONPATH": str(code), "JSCALE_CACHE": str(cache)}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "jscale.cli", *args], check=True, env=env, cwd=code, text=True,
                       stdout=subprocess.DEVNULL if output is None else subprocess.PIPE)
    wall = time.perf_counter() - t0
    if output is not None:
        output.append(p.stdout)
    return wall


@contextlib.contextmanager
def checkout(rev: str, path: Path):
    """The code at git revision rev, checked out into a temporary worktree at path (removed afterwards)."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                       check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True, help="the earlier git revision")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="training steps per run (the tests run a few)")
    ap.add_argument("--sizes", type=int, default=4, choices=range(1, 5),
                    help="the first this many of the four sizes (the tests run two)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with checkout(args.before, tmp / "before") as tree:
            toml = tmp / "sweep.toml"
            toml.write_text(SWEEP.format(steps=args.steps, every=max(1, args.steps // 3),
                                         warmup=min(20, args.steps // 3), d_models=[32, 48, 64, 96][:args.sizes],
                                         n_heads=[2, 3, 4, 6][:args.sizes]))
            walls = {"before": [], "now": []}
            for pair in range(args.pairs):
                order = ("before", "now") if pair % 2 == 0 else ("now", "before")
                for which in order:
                    code = tree if which == "before" else REPO
                    tag = f"{which}-{pair}"
                    walls[which].append(cold_run(["run", str(toml), "--out", str(tmp / tag), "--quiet"],
                                                 tmp / f"cache-{tag}", code))
                    print(f"pair {pair}: {which} {walls[which][-1]:.1f} s", flush=True)
    before, now = statistics.median(walls["before"]), statistics.median(walls["now"])
    print(f"{datetime.date.today().isoformat()}, {os.cpu_count()} cores, load after {os.getloadavg()[0]:.1f}: first "
          f"run with empty caches, median of {args.pairs}: {args.before} {before:.1f} s, now {now:.1f} s "
          f"({now / before:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
