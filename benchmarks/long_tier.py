"""The long scale's smallest and largest size groups, timed whole: an earlier revision against this code, in one
process (`jscale run`'s default) and with `--workers 2`, alternating, each in fresh processes on empty sweep
directories with empty caches.

    python benchmarks/long_tier.py --before 92d5d46   # 2 rounds, 780 steps (a tenth of the long scale's 7,800)
    python benchmarks/long_tier.py --before 92d5d46 --before f07801b   # several earlier revisions, alternating
    python benchmarks/long_tier.py --smoke --steps 20   # what the tests run: one round, 8k-token evaluations, one
                                                        # run per group and one core a process (losses bitwise equal)
    python benchmarks/long_tier.py --before 92d5d46 --pairs 1 --steps 7800 --workers-only   # full length

The sweep is experiments/size.toml's long scale restricted to d_model 8 and 48 (N = 1.5k and 55k, two seeds each,
their learning-rate pilots and cooldown branches included), at --steps steps (3 cooldown branches below 2,000
steps, 1 below 600); an earlier revision (--before, checked out into a temporary git worktree and run with the same
Python environment) trains it from its own size.toml. Printed per configuration and round: wall time, the exact
training FLOPs of every run it trained (pilots and cooldown branches included) over that wall time, that rate
against the float32 matmul limit of this machine measured in the same invocation (a 2048 x 2048 dot, both cores,
the best of five readings of 20 dots; right before and right after each configuration's run, their mean: the
machine's speed drifts over minutes),
per-token time, the share of the wall that was not training steps or cooldown branches (from `jscale run`'s own time
line), and how far the final runs' validation losses lie from the first configuration's.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from first_run import checkout, cold_run

REPO = Path(__file__).resolve().parents[1]

MATMUL = r"""
import time, jax, jax.numpy as jnp
x = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
f = jax.jit(lambda a: a @ a)
f(x).block_until_ready()
best, n = 0.0, 20
for _ in range(5):  # the best of five readings: one reading right after start-up ran 20-30% low (2026-12-06)
    t = time.perf_counter()
    for _ in range(n): y = f(x)
    y.block_until_ready()
    best = max(best, 2 * 2048 ** 3 * n / (time.perf_counter() - t) / 1e9)
print(best)
"""


def cpu_model() -> str:
    """The CPU's model name: the share of the matmul limit a sweep reaches differs between machines."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "CPU"


def sweep_toml(steps: int, smoke: bool = False, code: Path = REPO) -> str:
    """code's size.toml with a [scale.bench]: the long scale's settings at d_model 8 and 48 and `steps` steps
    (fewer cooldown branches when the run is too short for the first to start after warmup)."""
    text = (code / "experiments" / "size.toml").read_text()
    return text + f"""
[scale.bench]                   # benchmarks/long_tier.py: the long scale's smallest and largest sizes
"train.steps" = {steps}
"train.anneal_branches" = {5 if steps >= 2000 else 3 if steps >= 600 else 1}
"train.eval_every" = {max(1, steps // 4)}
"train.checkpoint_every" = {max(1, steps // 2)}
"axis.0.values" = [2]
"axis.1.zip" = {{ "model.d_model" = [8, 48], "model.n_heads" = [1, 6] }}
""" + ('"data.eval_tokens" = 8192\n"data.curve_eval_windows" = 16\n' if smoke else "")


def trained(out: Path) -> dict:
    """Exact training FLOPs and tokens of every run in the sweep directory (pilots included) and of every cooldown
    branch (the steps from where it left its run to its horizon), and the final runs' losses by (d_model, seed): run
    ids hash the whole config, which an earlier revision may spell differently."""
    with sqlite3.connect(out / "results.sqlite") as c:
        flops, tokens = c.execute("SELECT SUM(step * batch_size * n_ctx * flops_per_token_exact), "
                                  "SUM(step * batch_size * n_ctx) FROM runs").fetchone()
        branch_flops, branch_tokens = c.execute(
            "SELECT SUM((a.horizon - a.start) * r.batch_size * r.n_ctx * r.flops_per_token_exact), "
            "SUM((a.horizon - a.start) * r.batch_size * r.n_ctx) FROM (SELECT DISTINCT run_id, horizon, start "
            "FROM anneals) a JOIN runs r USING (run_id)").fetchone()
        finals = {f"{d}/{seed}": loss for d, seed, loss in c.execute(
            "SELECT d_model, seed, final_val_loss FROM runs WHERE role = 'final'").fetchall()}
    return {"flops": flops + (branch_flops or 0), "tokens": tokens + (branch_tokens or 0),
            "branch_tokens": branch_tokens or 0, "finals": finals}


def time_line(stdout: str) -> str:
    """`jscale run`'s time line ('time: ...'), or '' when it printed none."""
    return next((ln for ln in stdout.splitlines() if ln.startswith("time: ")), "")


def training_share(stdout: str) -> float | None:
    """The share of the wall time in training steps and cooldown branches, from `jscale run`'s time line (with
    `--workers`, of the workers' seconds: the wall time times the number of workers)."""
    line = time_line(stdout)
    wall = re.match(r"time: ([0-9.]+) s(?:, \d+ workers \(([0-9.]+) worker-seconds\))?", line)
    parts = {label: float(sec) for label, sec in re.findall(r"(training steps|cooldown branches) ([0-9.]+) s", line)}
    return sum(parts.values()) / float(wall.group(2) or wall.group(1)) if wall and parts else None


def run(toml: Path, out: Path, workers: int, cache: Path, code: Path, smoke: bool = False) -> tuple[float, str]:
    """Wall seconds and stdout of one `jscale run` of the bench scale, as a user's first run (first_run.cold_run);
    not --quiet, for the time line (progress bars go to stderr). smoke: one run per group, and one process on one
    core, as each worker trains: no ensemble measurement, and the final losses must be bitwise the workers'."""
    output: list[str] = []
    flags = ["--workers", str(workers)] if workers > 1 else []
    if smoke:
        flags += ["--ensemble-size", "1"] + ([] if workers > 1 else ["--cpus", str(min(os.sched_getaffinity(0)))])
    wall = cold_run(["run", str(toml), "--scale", "bench", "--out", str(out), *flags], cache, code, output=output)
    return wall, output[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", action="append", default=[],
                    help="also time the sweep with the code at this git revision (one process); may be repeated")
    ap.add_argument("--pairs", type=int, default=2, help="alternating rounds (every configuration once each)")
    ap.add_argument("--steps", type=int, default=780, help="training steps of each final run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workers-only", action="store_true",
                    help="time this code with --workers only, not also in one process (a full-length round is long)")
    ap.add_argument("--smoke", action="store_true", help="one round, small evaluations, no matmul measurement, one "
                                                         "run per group, one core a process (for the tests)")
    args = ap.parse_args(argv)
    def matmul_limit() -> float | None:
        return None if args.smoke else float(subprocess.run([sys.executable, "-c", MATMUL], check=True,
                                                            capture_output=True, text=True).stdout)

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as trees:
        tmp = Path(tmp)
        codes = [(rev, trees.enter_context(checkout(rev, tmp / f"before-{i}"))) for i, rev in enumerate(args.before)]
        codes.append(("now", REPO))
        tomls = {}
        for i, (label, code) in enumerate(codes):  # each revision trains the bench scale of its own size.toml
            tomls[label] = tmp / f"size-{i}.toml"
            tomls[label].write_text(sweep_toml(args.steps, args.smoke, code))
        configs = [(label, code, 1) for label, code in codes if not (args.workers_only and label == "now")]
        configs.append(("now", REPO, args.workers))
        rows = []
        for pair in range(1 if args.smoke else args.pairs):
            for label, code, w in (configs if pair % 2 == 0 else configs[::-1]):
                name = label if w == 1 else f"{label} --workers {w}"
                tag = f"p{pair}-{label}-w{w}".replace("/", "_")
                before = matmul_limit()
                wall, stdout = run(tomls[label], tmp / tag, w, tmp / f"cache-{tag}", code, args.smoke)
                limits = None if args.smoke else (before, matmul_limit())
                rows.append({"pair": pair, "configuration": name, "wall": wall, "limits": limits,
                             "training_share": training_share(stdout), **trained(tmp / tag)})
                print(f"round {pair}: {name} {wall:.1f} s; {time_line(stdout) or '(no time line)'}", file=sys.stderr,
                      flush=True)
        load = os.getloadavg()[0]
    print(f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, {datetime.date.today().isoformat()}, load "
          f"after {load:.1f}; of the matmul limit: of the mean of a float32 2048x2048 dot's best GFLOP/s (both cores) "
          "measured right before and after each run")
    first = rows[0]["configuration"]
    print("| round | configuration | wall (s) | tokens trained | exact training FLOPs/s | of the matmul limit | "
          f"us/token | not training | final losses against {first}'s |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = {r["pair"]: r["finals"] for r in rows if r["configuration"] == first}
    for r in rows:
        rate = r["flops"] / r["wall"]
        ref = base[r["pair"]]
        if r["configuration"] == first:
            same = "-"
        elif r["finals"] == ref:
            same = "identical"
        else:
            same = "max |difference| " + (f"{max(abs(v - ref[k]) for k, v in r['finals'].items()):.4f}"
                                          if r["finals"].keys() == ref.keys() else "- (different runs)")
        share = "-" if r["limits"] is None else (f"{100 * rate / 1e9 / (sum(r['limits']) / 2):.1f}% "
                                                 f"({r['limits'][0]:.0f} and {r['limits'][1]:.0f} GFLOP/s)")
        other = "-" if r["training_share"] is None else f"{100 * (1 - r['training_share']):.0f}%"
        print(f"| {r['pair']} | {r['configuration']} | {r['wall']:.1f} | {r['tokens']:,} | {rate / 1e9:.2f} G | "
              f"{share} | {1e6 * r['wall'] / r['tokens']:.2f} | {other} | {same} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
