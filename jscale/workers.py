"""`jscale run --workers N`: N processes on one machine train one sweep side by side.

Why: a CPU sweep's models are narrow (d_model 8 to 48 in the long scale), and one XLA:CPU process does not keep two
cores busy with them; two steps side by side did 1.2x (d_model 48) to 1.8x (d_model 8) the steps per second of one
on this project's 2-core machine, and two workers took 0.87-0.93x the wall time of one process on a tenth of the
long scale's size sweep, cold caches included (benchmarks/RESULTS.md, 2026-12-05).

How: the workers are ordinary `jscale run` jobs on the same sweep directory, which concurrent jobs could always
share: each claims a group before training it (`results.ResultsDB.claim`), so no group trains twice, and a worker
waits for pilots another worker trains (taking them over if that worker dies) instead of leaving a point's final
runs to it, so the final runs are shared too. The parent trains nothing: it starts the workers in their own session
(a Ctrl-C reaches them once, forwarded), shows one progress bar read from the results database, and reports.

Results do not depend on where a group trained: every group runs the same compiled program on the same batches
(a pure function of seed and step), whichever process holds it.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from jscale import interrupts, results
from jscale.errors import ConfigError, JscaleError

POLL_S = 2.0


def check(workers: int, shard: str | None, multi_host: bool) -> None:
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1, got {workers}")
    if workers > 1 and shard:
        raise ConfigError("--workers: cannot be combined with --shard (workers share the groups by claiming them)")
    if workers > 1 and multi_host:
        raise ConfigError("--workers: for one machine's CPU cores; a multi-host run uses --coordinator and "
                          "--num-processes")


def run(child_args: list[str], out: Path, workers: int, progress: bool = True) -> int:
    """Start `workers` processes of `jscale run CHILD_ARGS --worker` and wait for them. Returns the exit status of
    the first worker that failed (0 if none did); a signal received here is forwarded to every worker, which stops
    at its next step boundary, and then raised as `interrupts.Interrupted`."""
    cmd = [sys.executable, "-m", "jscale", "run", *child_args, "--worker", "--quiet"]
    procs = [subprocess.Popen(cmd, start_new_session=True) for _ in range(workers)]
    bar = _Bar(out, workers) if progress else None
    try:
        while any(p.poll() is None for p in procs):
            try:
                interrupts.check()
            except interrupts.Interrupted as e:
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(e.signum)
                for p in procs:
                    p.wait()
                raise
            if bar is not None:
                bar.update()
            time.sleep(POLL_S)
        if bar is not None:
            bar.update()
    finally:
        if bar is not None:
            bar.close()
        for p in procs:  # an unexpected error here must not leave workers behind
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait()
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    for i, rc in failed:
        print(f"jscale: worker {i} exited with status {rc} (its own error line is above)", file=sys.stderr)
    return failed[0][1] if failed else 0


def summary(out: Path) -> tuple[str, str]:
    """The 'done:' line and the 'left:' line (empty when nothing is left) for a sweep trained by workers."""
    with results.ResultsDB(out, readonly=True) as db:
        p = db.progress()
    done = f"done: {out} | {p['runs']} runs, {p['finished']} finished | jscale status {out}"
    left = []
    if p["finished"] < p["runs"]:
        left.append(f"{p['runs'] - p['finished']} runs are unfinished")
    if p["unplanned"]:
        left.append(f"the final runs of {p['unplanned']} tuned points are not planned yet")
    return done, ("; ".join(left) + ": re-run the same command to finish them") if left else ""


class _Bar:
    """One progress bar for all workers, in exact FLOPs, read from the results database (the total grows when
    tuned points plan their final runs)."""

    def __init__(self, out: Path, workers: int):
        from tqdm.auto import tqdm

        self.out, self.tqdm = out, None
        self.make = lambda: tqdm(total=1.0, unit="GFLOP", dynamic_ncols=True, desc=f"{out.name} ({workers} workers)",
                                 bar_format="{l_bar}{bar}| {percentage:.0f}% [{elapsed}<{remaining}]")

    def update(self) -> None:
        if not (self.out / results.DB_NAME).is_file():
            return
        try:
            with results.ResultsDB(self.out, readonly=True) as db:
                p = db.progress()
        except (JscaleError, sqlite3.Error):  # a worker is creating the database: read it next time
            return
        if self.tqdm is None:
            self.tqdm = self.make()
        self.tqdm.total = max(p["flops_total"], 1.0) / 1e9  # (not rounded: a tiny sweep's total would round to 0)
        self.tqdm.n = min(p["flops_done"], p["flops_total"]) / 1e9
        self.tqdm.refresh()

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()

