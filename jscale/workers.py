"""`jscale run --workers N`: N processes on one machine train one sweep side by side.

Why: a CPU sweep's models are narrow (d_model 8 to 48 in the long scale), and one XLA:CPU process does not keep two
cores busy with them; two steps side by side did 1.2x (d_model 48) to 1.8x (d_model 8) the steps per second of one
on this project's 2-core machine, and two workers took 0.87-0.93x the wall time of one process on a tenth of the
long scale's size sweep, cold caches included (benchmarks/RESULTS.md, 2026-12-05).

How: the workers are ordinary `jscale run` jobs on the same sweep directory, which concurrent jobs could always
share: each claims a group before training it (`results.ResultsDB.claim`), so no group trains twice, and a worker
waits for pilots another worker trains (taking them over if that worker dies) instead of leaving a point's final
runs to it, so the final runs are shared too. Tuned points are claimed too, so that two workers extend two points'
learning-rate grids at once (one pilot at a time each) instead of one waiting for the other. The parent trains
nothing: it starts the workers in their own session (a Ctrl-C reaches them once, forwarded), shows one progress bar
read from the results database, and reports where the workers' time went (each worker's parts, summed).

Each worker runs on its own share of the cores (`cpuload.cpu_shares`, `jscale run --cpus`): two workers each spreading
their steps over both cores of a 2-core machine slowed each other down (two d_model 48 steps at once: 35 ms each
unpinned, 27.5 ms each pinned; a tenth of the long scale's size sweep: 87-92 s pinned against 95-105 s, four
alternating pairs, warm caches; this project's 2-core CPU, 2026-12-06).

Results do not depend on which worker trained a group: every group runs the same compiled program on the same
batches (a pure function of seed and step) with as many threads. They are bitwise those of one process on as many
cores (`jscale run --cpus 0` for a worker of a 2-core machine), and numerically, not bitwise, those of one process
on every core: XLA:CPU splits a matrix product's sums over the threads it has.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jscale import cpuload, files, interrupts, progress, results
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


def run(child_args: list[str], out: Path, workers: int, progress: bool = True,
        timings: list[dict] | None = None) -> int:
    """Start `workers` processes of `jscale run CHILD_ARGS --worker` and wait for them. Returns the exit status of
    the first worker that failed (0 if none did); a signal received here is forwarded to every worker, which stops
    at its next step boundary, and then raised as `interrupts.Interrupted`. timings: a list that receives each
    worker's time line (write_timings) once all have exited."""
    cmd = [sys.executable, "-m", "jscale", "run", *child_args, "--worker", "--quiet"]
    with tempfile.TemporaryDirectory(prefix="jscale-workers-") as tmp:
        paths = [Path(tmp) / f"worker-{i}.json" for i in range(workers)]
        status = _run(cmd, paths, out, workers, progress)
        if timings is not None:
            timings += [json.loads(f.read_text()) for f in paths if f.is_file()]
    return status


def pin(cpus: str) -> None:
    """`jscale run --cpus 0,1`: this process (and every thread it starts later) runs on these cores only. Called
    before JAX starts: XLA:CPU sizes its thread pool by them."""
    try:
        chosen = {int(c) for c in cpus.split(",")}
    except ValueError:
        raise ConfigError(f"--cpus: a comma-separated list of CPU core numbers, got {cpus!r}") from None
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("--cpus: this platform cannot pin a process to cores")
    allowed = os.sched_getaffinity(0)
    if not chosen <= allowed:
        raise ConfigError(f"--cpus: {sorted(chosen - allowed)} not among this process's cores {sorted(allowed)}")
    os.sched_setaffinity(0, chosen)


def _run(cmd: list[str], timing_paths: list[Path], out: Path, workers: int, progress: bool) -> int:
    # Each worker on its own cores: two workers that each spread their steps over both cores of a 2-core machine
    # slow each other down (d_model 48: 35 ms a step each, against 27.5 pinned; benchmarks/RESULTS.md, 2026-12-06).
    shares = cpuload.cpu_shares(workers) or [None] * workers
    procs = [subprocess.Popen([*cmd, "--timings-out", str(f), *(["--cpus", ",".join(map(str, c))] if c else [])],
                              start_new_session=True) for f, c in zip(timing_paths, shares)]
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


def write_timings(path: Path, started: float, timings: dict[str, float]) -> None:
    """A worker's time line for its parent: when it started and ended (epoch seconds) and its parts
    (grid.run_sweep's timings)."""
    files.write_atomic(path, json.dumps({"started": started, "ended": time.time(), "timings": timings}))


def describe_timings(lines: list[dict], workers: int, started: float, prepared: float, ended: float,
                     wall: float) -> str:
    """Where the workers' time went, in worker-seconds (workers x the wall time, what the cores could have
    trained): each worker's parts summed (progress.TIMING_PARTS), what the parent did before they started (the corpus
    and evaluation windows, every worker slot waiting), the workers' start-up (Python and JAX) and the time a worker
    sat finished while another still trained."""
    parts: dict[str, float] = {}
    for line in lines:
        for key, seconds in line["timings"].items():
            parts[key] = parts.get(key, 0.0) + seconds
    parts["before"] = workers * (prepared - started)
    parts["startup"] = sum(line["started"] - prepared for line in lines)
    parts["finished"] = sum(ended - line["ended"] for line in lines)
    capacity = workers * wall
    labels = (*progress.TIMING_PARTS, ("before", "preparing data before the workers started"),
              ("startup", "starting the workers"), ("finished", "a worker done while another trained"))
    return (f"time: {wall:.1f} s, {workers} workers ({capacity:.1f} worker-seconds): "
            + progress.describe_parts(parts, capacity, labels))


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

