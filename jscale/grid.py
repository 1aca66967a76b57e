"""Running a sweep: groups of runs trained as vmapped ensembles, results in SQLite, resumable after any crash.

`run_sweep` registers every run in `DIR/results.sqlite`, then trains each group not yet finished, resuming it
from its newest orbax checkpoint (`DIR/groups/GROUP/checkpoints`). Killing the process at any moment and running
the same command again ends with the results of an uninterrupted sweep: evaluations are committed before the
checkpoint that covers them, and evaluations past the newest checkpoint are deleted and redone.

Whether a backend trains a group faster as one vmapped ensemble or member by member is measured, once per sweep
directory and backend, and recorded in `DIR/ensemble.json` (so a resumed sweep groups its runs the same way).

Longer than 500 lines: the resumable loop, its tuning stages, shards and the ensemble measurement share one set of
group bookkeeping (claims, checkpoints, finished rows); the measurement is the next candidate to move out.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import time
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jscale import accounting, data, interrupts, noise, results, sweep as sweeps, tracking, train, tuning
from jscale.config import Config, DataConfig, eval_window_counts, pilot_sized
from jscale.errors import ConfigError, resource_error
from jscale.files import write_atomic
from jscale.hosts import agree
from jscale.progress import show_losses, timed

MAX_MEMBERS = 64


class DBSink:
    """Where train_loop writes a group's evaluations: the sweep's results database."""

    def __init__(self, db: results.ResultsDB, run_ids: list[str]):
        self.db, self.run_ids = db, run_ids

    def last_step(self) -> int:
        return self.db.last_step(self.run_ids)

    def resume(self, step: int) -> None:
        self.db.truncate(self.run_ids, step)

    def record(self, records: list[dict]) -> None:
        self.db.record_eval(records)

    def record_anneal(self, records: list[dict]) -> None:
        self.db.record_anneal(records)

    def finish(self) -> None:
        """The group's final checkpoint is written: its runs' final evaluations (recorded as running) are done."""
        self.db.finish(self.run_ids)

    def record_blocks(self, blocks: dict, n_ctx: int, context: int) -> None:
        self.db.record_blocks(blocks, n_ctx, context)


def device_memory_bytes() -> int:
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def members_that_fit(cfg: Config) -> int:
    """How many members of this shape fit in half the device's memory, by jscale.accounting's estimate."""
    bytes_per_act = 2 if jax.default_backend() in ("gpu", "tpu") and cfg.model.dtype != "float32" else 4
    mem = accounting.memory_estimate(cfg.model, cfg.train.batch_size, bytes_per_act)
    per_member = mem["params_and_optimizer"] + mem["activations"]
    return int(max(1, min(MAX_MEMBERS, 0.5 * device_memory_bytes() // per_member)))


_MEASURED_STEPS: dict[str, dict] = {}  # the measurement's jitted steps by model and batch shape


def _measured_steps(cfg: Config) -> dict:
    """One model's train step and its two ensemble forms, jitted once per model and batch shape in a process (a
    measurement repeated on the same shape, another member count included, compiles nothing new)."""
    from jscale.models import build

    key = train.member_shape_key(cfg)
    if key not in _MEASURED_STEPS:
        model, opt = build(cfg.model), train.make_optimizer(cfg.train)
        step = train.make_train_step(model)
        _MEASURED_STEPS[key] = {  # each as training runs it: several steps a call (train.multi_step)
            "single": jax.jit(train.multi_step(step), donate_argnums=0),
            **{mode: jax.jit(train.multi_step(train.ensemble(step, mode)), donate_argnums=0)
               for mode in train.ENSEMBLE_MODES},
            # the initialisation the sweep's groups of this shape will use (compiled once per shape, so the
            # measurement costs them no extra compile); a Transformer-XL's state holds a memory per batch row
            "init": train.single_init(model, opt, cfg)}
    return _MEASURED_STEPS[key]


def measure_vmap_speedup(cfg: Config, members: int, steps: int = 5, rounds: int = 2) -> dict:
    """Aggregate throughput of `members` models as one ensemble step, vmapped and mapped (train.ensemble),
    against one model's step, same shapes. speedup is the better mode's, named by "mode". Each is timed in `rounds`
    interleaved rounds and its fastest kept: one noisy reading (another process waking) once picked the slower mode."""
    fns = _measured_steps(cfg)
    hp = {k: np.asarray(v) for k, v in train.hparams_from_config(cfg.train).items()}
    B, T = cfg.train.batch_size, cfg.model.n_ctx

    # the steps split over the rounds and warmed up in the first only: about the cost of one round of `steps`
    per_round = max(1, -(-steps // max(1, rounds)))
    init = fns["init"]
    stacked_hp = jax.tree.map(lambda x: np.stack([x] * members), hp)
    stacked_init = lambda: jax.tree.map(jnp.asarray, train.stack_members([init(np.uint32(s)) for s in range(members)]))
    seconds: dict[str, list[float]] = {"single": [], **{mode: [] for mode in train.ENSEMBLE_MODES}}
    for r in range(max(1, rounds)):
        warmup = 2 if r == 0 else 0
        seconds["single"].append(train.seconds_per_step(fns["single"], init(np.uint32(0)),
                                                        jnp.zeros((B, T + 1), jnp.int32), hp, per_round, warmup))
        for mode in train.ENSEMBLE_MODES:
            seconds[mode].append(train.seconds_per_step(fns[mode], stacked_init(),
                                                        jnp.zeros((members, B, T + 1), jnp.int32), stacked_hp,
                                                        per_round, warmup))
    single = min(seconds["single"])
    result = {"members": members, "single_step_s": single}
    for mode in train.ENSEMBLE_MODES:
        result[f"{mode}_step_s"] = min(seconds[mode])
        result[f"{mode}_speedup"] = members * single / result[f"{mode}_step_s"]
    result["mode"] = max(train.ENSEMBLE_MODES, key=lambda m: result[f"{m}_speedup"])
    result["speedup"] = result[f"{result['mode']}_speedup"]
    return result


@contextlib.contextmanager
def directory_lock(out: Path):
    """An exclusive lock on the sweep directory, for the read-modify-write of its JSON files by concurrent jobs."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        f = open(out / ".lock", "a")
    except OSError as e:
        raise resource_error(e, out, "cannot write here") from None
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ConfigError(f"{path}: not valid JSON; fix or delete it") from None


def choose_ensemble_size(sweep: sweeps.Sweep, out: Path, requested: int | None) -> tuple[int, dict]:
    """The ensemble size for this sweep directory and backend: as requested, else decided by measurement, once
    per directory and backend (under the directory lock, so concurrent jobs group the runs the same way)."""
    if requested is not None and requested < 1:
        raise ConfigError(f"--ensemble-size: must be >= 1, got {requested}")
    path = out / "ensemble.json"
    key = f"{jax.default_backend()}:{jax.devices()[0].device_kind}:{jax.device_count()}"
    if jax.process_index() != 0:  # process 0 decides (below); every process takes its number
        return agree(_measure_ensemble_size(sweep, requested)["members"]), {}
    with directory_lock(out):
        decisions = _read_json(path)
        held = decisions.get(key)
        if held is not None:
            if requested is not None and requested != held["members"]:
                raise ConfigError(f"--ensemble-size: {out} groups its runs {held['members']} to an ensemble "
                                  f"({path.name}); a different size would train runs again: give "
                                  f"--ensemble-size {held['members']}, or another --out")
            return agree(held["members"]), held
        decision = _measure_ensemble_size(sweep, requested)
        decisions[key] = decision
        write_atomic(path, json.dumps(decisions, indent=2))
    return agree(decision["members"]), decision


def default_mode() -> str:
    """How ensembles run when not measured: one after another inside one program on a CPU (measured faster
    there, benchmarks/RESULTS.md), vmapped on accelerators."""
    return "map" if jax.default_backend() == "cpu" else "vmap"


def _measure_ensemble_size(sweep: sweeps.Sweep, requested: int | None) -> dict:
    if requested is not None:
        return {"members": requested, "mode": default_mode(), "reason": "set by --ensemble-size"}
    # Measure on the group that costs the most to train (its exact FLOPs over all steps), where the choice matters
    # most, at the size memory allows (capped at 16 for the measurement). On a CPU the answer differs by shape
    # (benchmarks/RESULTS.md: two d_model 8 members ran faster mapped, two d_model 48 ones one by one).
    largest = max(sweep.groups(MAX_MEMBERS), key=lambda g: _group_gflops_per_step(g) * g.cfg.train.steps)
    cap = min(len(largest.runs), members_that_fit(largest.cfg))
    if cap < 2:
        decision = {"members": max(1, cap), "mode": default_mode(),
                    "reason": "groups of one run or memory for one member"}
    else:
        m = measure_vmap_speedup(largest.cfg, min(cap, 16))
        use_ensemble = m["speedup"] > 1.0
        decision = {"members": cap if use_ensemble else 1, "mode": m["mode"], "measured": m,
                    "reason": f"an ensemble of {m['members']} ({m['mode']}) measured {m['speedup']:.2f}x the "
                              f"sequential throughput"}
    return decision


def check_sweep_dir(sweep: sweeps.Sweep, out: Path, log: bool = True) -> None:
    """One sweep, at one scale, per directory: its sweep.json names them, and the report reads it."""
    path = out / "sweep.json"
    held = _read_json(path)
    if held and (held.get("name"), held.get("scale")) != (sweep.name, sweep.scale):
        raise ConfigError(f"{out}: holds sweep {held.get('name')!r} at scale {held.get('scale')!r}, not "
                          f"{sweep.name!r} at scale {sweep.scale!r}; give another --out")
    if log:
        log_session(sweep, out)


def log_session(sweep: sweeps.Sweep, out: Path) -> None:
    """Append which devices trained the sweep to sweep.json (for the report), under the directory lock so that
    concurrent jobs keep every entry."""
    if jax.process_index() != 0:
        return
    dev = jax.devices()[0]
    session = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "device": dev.device_kind, "backend": jax.default_backend(), "devices": jax.device_count(),
               "processes": jax.process_count(), "jax": jax.__version__, "pid": os.getpid()}
    if jax.default_backend() == "cpu" and hasattr(os, "sched_getaffinity"):  # the cores it ran on: XLA:CPU's sums
        session["cpus"] = sorted(os.sched_getaffinity(0))                   # split over as many threads
    with directory_lock(out):
        # The description follows the sweep as run now (a seed added, say); the sessions accumulate.
        held = {**sweep.describe(), "sessions": (_read_json(out / "sweep.json") or {}).get("sessions", []) + [session]}
        write_atomic(out / "sweep.json", json.dumps(held, indent=2))


def _group_gflops_per_step(g: sweeps.Group) -> float:
    return len(g.runs) * accounting.step_flops(g.cfg) / 1e9


def parse_shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard: expected i/n such as 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard: need 0 <= i < n, got {text!r}")
    return i, n


def shard_of(group_id: str, n: int) -> int:
    """Groups are dealt to --shard jobs by a stable hash, so every job agrees without talking."""
    return zlib.crc32(group_id.encode()) % n


def run_sweep(sweep: sweeps.Sweep, out: str | Path, ensemble_size: int | None = None,
              shard: tuple[int, int] = (0, 1), progress: bool = True, stop_after: int | None = None,
              background_compile: bool = True, timings: dict[str, float] | None = None,
              ensemble_mode: str | None = None, wait_for_others: bool = False) -> dict:
    """Train every unfinished group of the sweep that belongs to this shard. Returns a summary.

    ensemble_mode: vmap or map (train.ensemble); default: as measured for this directory and backend.
    background_compile: compile the next group's steps while one trains. timings: a dict that collects seconds
    spent on data, compile (all of it, overlapped or not), compile_wait (what the sweep waited for), init, train,
    eval and checkpoint. wait_for_others: a worker of `jscale run --workers` (jscale.workers): wait for pilots that
    another job is training (taking them over if it dies) instead of leaving the point's final runs to it."""
    out = Path(out)
    for run in sweep.runs:
        train.check_intervals(run.cfg.train)
        train.check_runnable(run.cfg)
        data.check_sizes(run.cfg.data, run.cfg.model.n_ctx, train.eval_context(run.cfg.model))
    if ensemble_size is not None and ensemble_size < 1:  # checked before anything is written
        raise ConfigError(f"--ensemble-size: must be >= 1, got {ensemble_size}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file, not a sweep directory")
    check_sweep_dir(sweep, out, log=False)
    leader = jax.process_index() == 0
    # A damaged or locked database is refused here, before anything else in the directory is written.
    db = results.ResultsDB(out) if leader else None
    log_session(sweep, out)
    with timed(timings, "measure"):  # the ensemble-speed measurement of a new directory
        members, decision = choose_ensemble_size(sweep, out, ensemble_size)
    mode = ensemble_mode or decision.get("mode", "vmap" if decision else default_mode())  # older dirs: vmap
    ready = [r for r in sweep.runs if not r.awaits_tuning]
    awaiting = [r for r in sweep.runs if r.awaits_tuning]
    if awaiting and jax.process_count() > 1:
        raise ConfigError("tune: pilots are not supported on multi-process runs yet; run the sweep on one host")
    groups = sweeps.group_runs(ready, members)
    if leader:
        db.add_runs(sweeps.run_row(r, g.group_id) for g in groups for r in g.runs)
    todo = _unfinished([g for g in groups if shard_of(g.group_id, shard[1]) == shard[0]], db)

    bar = None
    if progress and leader:
        from tqdm.auto import tqdm

        # Progress is counted in FLOPs (exact count), so the ETA holds when later groups are bigger.
        total = sum(_group_gflops_per_step(g) * g.cfg.train.steps for g in todo)
        bar = tqdm(total=total, unit="GFLOP", unit_scale=False, dynamic_ncols=True, desc=sweep.name,
                   bar_format="{l_bar}{bar}| {percentage:.0f}% [{elapsed}<{remaining}]")
        bar.write(f"{len(sweep.runs)} runs, {len(groups)} groups (ensembles of up to {members}, {mode}: "
                  f"{decision.get('reason', '')}); {len(todo)} groups to train on shard {shard[0]}/{shard[1]}"
                  + (f"; {len(awaiting)} final runs wait for their pilots" if awaiting else ""))
    corpora: dict[str, data.TokenizedCorpus] = {}
    counts = {"trained": 0, "busy": 0}
    # While one group trains, the steps of the next shape this process has not compiled compile in a background
    # thread (ahead of time), so a sweep of many shapes waits for a compile only at its start. It looks past the
    # next group: with --workers, the other worker may claim that one, and the shape after it still comes.
    compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jscale-compile")
    ahead: dict[str, concurrent.futures.Future] = {}  # by train.program_key

    def program_key(g: sweeps.Group) -> str:
        return train.program_key([r.cfg for r in g.runs], len(g.runs) > 1, None, mode)

    def train_groups(todo: list[sweeps.Group]) -> bool:
        """Train these groups in order; False when stop_after ended it early."""
        keys = [program_key(g) for g in todo]

        def compile_ahead(i: int) -> None:
            if not background_compile or any(not f.done() for f in ahead.values()):
                return  # one background compile at a time
            j = next((j for j in range(i, len(todo)) if keys[j] not in ahead and not train.compiled(keys[j])), None)
            if j is not None:
                g = todo[j]
                # (a group that will resume from its checkpoint never initialises: its init is left out)
                ahead[keys[j]] = compiler.submit(train.compile_steps, [r.cfg for r in g.runs], len(g.runs) > 1,
                                                 None, mode, with_init=not _has_checkpoint(out, g))

        for i, g in enumerate(todo):
            interrupts.check()
            if stop_after is not None and counts["trained"] >= stop_after:
                return False
            # Another job on this directory may be training this group now: leave it to that job.
            if leader and jax.process_count() == 1:
                if not db.claim(g.group_id):
                    counts["busy"] += 1
                    if bar is not None:
                        bar.write(f"group {g.group_id}: being trained by another job on {out}; skipped")
                    continue
                statuses = db.status(r.run_id for r in g.runs)
                if all(statuses.get(r.run_id) in ("done", "diverged") for r in g.runs):
                    db.release(g.group_id)  # another job finished it after this one made its list
                    continue
            try:
                future = ahead.pop(keys[i], None)
                # compile time the sweep waited for (a background compile overlaps training)
                with timed(timings, "compile_wait"):
                    # the background compile of this shape, if any (its errors are raised here), then a cache hit
                    # (its init compiled now if this group needs it and it was left out)
                    ahead_s = future.result().seconds["compile"] if future is not None else 0.0
                    steps = train.compile_steps([r.cfg for r in g.runs], len(g.runs) > 1, None, mode,
                                                with_init=not _has_checkpoint(out, g))
                    steps = dataclasses.replace(steps, seconds={"compile": ahead_s + steps.seconds["compile"]})
                compile_ahead(i + 1)
                _train_group(g, out, db, corpora, bar, steps, timings)
            finally:
                if leader and jax.process_count() == 1:
                    db.release(g.group_id)
            counts["trained"] += 1
        return True

    def add_to_bar(more: list[sweeps.Group]) -> None:
        if bar is not None and more:
            bar.total = bar.total + sum(_group_gflops_per_step(g) * g.cfg.train.steps for g in more)
            bar.refresh()

    tuned_groups, left = 0, ""
    try:
        if train_groups(todo) and awaiting:
            # Choose every point's values from its pilots (whichever shard trained them: the choice is the same from
            # the same pilots), then train the final runs. They are grouped over all points, so they wait until
            # every point is chosen; the job that completes the tuning trains all of them (claims keep a re-run of
            # another shard from training a group twice), and a job that cannot says what it left.
            points = sorted({r.tags["tune.of"] for r in awaiting})
            choices = _tune_points(points, lambda point: _tune_point(
                sweep, point, awaiting, db, members, train_groups, add_to_bar, bar,
                groups if wait_for_others else None, timings), db, wait_for_others, timings)
            chosen = {point: c for point, c in choices.items() if c is not None}
            waiting = [point for point, c in choices.items() if c is None]
            if waiting:
                left = (f"{len(waiting)} of {len(points)} tuned points wait for pilots another job is training, so "
                        f"the {len(awaiting)} final runs are not planned yet: re-run this command when it is done")
            else:
                chosen = _common_eval_sizes(chosen, bar)
                finals = sweeps.tuned_runs(awaiting, chosen)
                final_groups = sweeps.group_runs(finals, members)
                db.add_runs(sweeps.run_row(r, g.group_id) for g in final_groups for r in g.runs)
                more = _unfinished(final_groups, db)
                add_to_bar(more)
                tuned_groups = len(final_groups)
                train_groups(more)
                busy = _unfinished(final_groups, db)
                if busy:
                    left = (f"{len(busy)} final groups are being trained by another job (or stopped unfinished): "
                            f"re-run this command to check")
        if not left and shard[1] > 1 and leader:
            others = _unfinished([g for g in groups if shard_of(g.group_id, shard[1]) != shard[0]], db)
            if others:
                left = (f"{len(others)} groups of the other shards are not finished: their jobs (--shard i/{shard[1]}) "
                        f"are still running or must be run")
    finally:
        compiler.shutdown(wait=False, cancel_futures=True)
        if bar is not None:
            bar.close()
        if db is not None:
            db.close()
    return {"runs": len(sweep.runs), "groups": len(groups) + tuned_groups, "trained_groups": counts["trained"],
            "members": members, "busy_groups": counts["busy"], "left": left}


def prepare_data(sweep: sweeps.Sweep) -> None:
    """Tokenize every corpus the sweep's runs read and choose their evaluation windows, once, into the caches
    (what the first group of each corpus would do): `jscale run --workers` calls it before its workers start, so
    they do not each do it at once."""
    corpora: dict[str, data.TokenizedCorpus] = {}
    done = set()
    for run in sweep.runs:
        corpus = _corpus(run.cfg.data, corpora)
        windows = (id(corpus), run.cfg.model.n_ctx, train.eval_context(run.cfg.model))  # (corpora keeps it alive)
        if windows not in done:
            interrupts.check()
            train.prepare_eval_windows(run.cfg, corpus)
            done.add(windows)


def _corpus(cfg: DataConfig, corpora: dict, timings: dict | None = None) -> data.TokenizedCorpus:
    """The tokenized corpus of this data config, prepared once per sweep (corpora: what is prepared so far)."""
    key = json.dumps(cfg.__dict__, sort_keys=True)
    if key not in corpora:
        with timed(timings, "data"):
            corpora[key] = data.prepare(cfg)
    return corpora[key]


def _unfinished(groups: list[sweeps.Group], db) -> list[sweeps.Group]:
    """The groups with a run not yet done or diverged (all processes agree: process 0 reads and tells)."""
    finished = set()
    if db is not None:
        statuses = db.status(r.run_id for g in groups for r in g.runs)
        finished = {rid for rid, s in statuses.items() if s in ("done", "diverged")}
        for g in groups:  # a finished group counts only with all its rows; else it is trained again from there
            if all(r.run_id in finished for r in g.runs):
                kept = db.complete_until([r.run_id for r in g.runs], g.cfg.train.eval_steps())
                if kept < g.cfg.train.steps:
                    print(f"jscale: group {g.group_id}: its results after step {kept} are missing from "
                          f"{db.path}; training again from the checkpoint before them to rebuild them", flush=True)
                    db.truncate([r.run_id for r in g.runs], kept)
                    finished -= {r.run_id for r in g.runs}
    flags = np.array([all(r.run_id in finished for r in g.runs) for g in groups], bool)
    if jax.process_count() > 1:  # every process must agree on which groups to train
        from jax.experimental import multihost_utils

        flags = multihost_utils.broadcast_one_to_all(flags)
    return [g for g, f in zip(groups, flags) if not f]


def _pilot_losses(db, runs: list[sweeps.Run], keys) -> list[tuple[dict, float]] | None:
    """Each pilot's values and final validation loss (inf if it diverged); None while any is unfinished."""
    rows = db.pilot_results([r.run_id for r in runs])
    out = []
    for r in runs:
        status, loss = rows.get(r.run_id, ("pending", None))
        if status not in ("done", "diverged"):
            return None
        out.append(({k: r.tags[k] for k in keys}, float("inf") if status == "diverged" or loss is None
                    else float(loss)))
    return out


def _tune_points(points: list[str], tune_one, db, concurrent: bool, timings: dict | None) -> dict[str, dict | None]:
    """Each point's choice, by tune_one(point) (None where pilots another job trains are unfinished).

    concurrent (a worker of `jscale run --workers`): each point is tuned by one worker at a time (a claim on
    "tune:POINT"), and a worker goes on to the points no one else holds before it waits. Extending a point's grid
    trains one pilot at a time, so a worker waiting for another's extension would leave its core idle while another
    point could be extended. The choice does not depend on who makes it: the same pilots give the same values, so a
    worker that comes back to a point another worker tuned chooses it again from the finished pilots."""
    chosen: dict[str, dict | None] = {}
    pending = list(points)
    while pending:
        for point in list(pending):
            if concurrent and not db.claim(f"tune:{point}"):
                continue  # another worker is tuning it: tune another, come back to this one
            try:
                chosen[point] = tune_one(point)
            finally:
                if concurrent:
                    db.release(f"tune:{point}")
            pending.remove(point)
        if pending:  # every point left is being tuned by another worker
            _wait_a_poll(timings)
    return {point: chosen[point] for point in points}


def _tune_point(sweep: sweeps.Sweep, point: str, awaiting: list[sweeps.Run], db, members: int, train_groups,
                add_to_bar, bar, wait_in: list[sweeps.Group] | None = None,
                timings: dict | None = None) -> dict | None:
    """Choose a point's tuned values from its pilots (extending the grid while the optimum is at an edge),
    record the choice, and return it; None while pilots trained by another job are unfinished, unless wait_in
    (the sweep's groups) is given: then wait for them, training any whose job died."""
    tune = sweep.tune
    say = (lambda line: bar.write(line)) if bar is not None else (lambda line: None)
    finals = [r for r in awaiting if r.tags["tune.of"] == point]
    grid = {k: list(v) for k, v in tune.grid}
    pilots = [r for r in sweep.runs if r.tags.get("tune.point") == point]
    losses = _pilot_losses(db, pilots, tune.keys)
    if losses is None and wait_in is not None:
        ids = {r.run_id for r in pilots}
        losses = _wait_for_pilots(db, pilots, tune.keys, [g for g in wait_in if ids & {r.run_id for r in g.runs}],
                                  train_groups, timings)
    if losses is None:
        say(f"point {point}: its pilots are not all finished (another job trains them); re-run to train its "
            f"final runs")
        return None
    choice = tuning.choose(grid, losses)
    rounds = 0
    while tune.extend and rounds < tuning.MAX_EXTENSIONS:
        more = tuning.extension(grid, choice)
        if not more:
            break
        # the optimum sits on an edge: one more value beyond it, with the other keys at their best values
        rounds += 1
        fixed = {point: {k: v for k, v in choice.best.items() if k not in more}}
        extra = sweeps.pilot_runs(finals, tune, more, fixed)
        extra_groups = sweeps.group_runs(extra, members)
        db.add_runs(sweeps.run_row(r, g.group_id) for g in extra_groups for r in g.runs)
        say(f"point {point}: best {tuning.values_text(choice.best)} is at the edge of the grid; extending it by "
            f"{tuning.values_text({k: v[0] for k, v in more.items()})}")
        todo = _unfinished(extra_groups, db)
        add_to_bar(todo)
        train_groups(todo)
        extra_losses = _pilot_losses(db, extra, tune.keys)
        if extra_losses is None and wait_in is not None:
            extra_losses = _wait_for_pilots(db, extra, tune.keys, extra_groups, train_groups, timings)
        if extra_losses is None:
            return None
        for key, values in more.items():
            grid[key] = sorted(grid[key] + values)
        losses = losses + extra_losses
        choice = tuning.choose(grid, losses)
    flags = [k for k, ok in choice.bracketed.items() if not ok]
    note = ("bracketed" if not flags else
            f"optimum at the edge of {', '.join(flags)}" + (f" after extending {rounds} times" if rounds else ""))
    if math.isfinite(choice.margin):
        note += (f"; lr {choice.chosen['train.lr']:.3g} at the vertex of the parabola in log(lr) through the best "
                 f"three; margin {100 * choice.margin:.2f}%")
    sizes, sizes_note = _eval_sizes(db, point, finals[0].cfg, say)
    chosen = {**choice.chosen, **sizes}
    db.record_tuning(point, list(tune.keys), grid, choice.losses, chosen, not flags, rounds > 0, note + sizes_note,
                     choice.margin, rounds)
    say(f"point {point}: chose {tuning.values_text(choice.chosen)} on validation loss ({note})")
    return chosen


def _common_eval_sizes(chosen: dict[str, dict], bar) -> dict[str, dict]:
    """Every point's final runs score the same windows (the most any point's pilots ask for), so the report's paired
    comparisons across points (one resample of documents for all) see the same text."""
    keys = {k for values in chosen.values() for k in values if k in tuning.EVAL_SIZE_KEYS}
    if not keys:
        return chosen
    most = {k: max(values[k] for values in chosen.values() if k in values) for k in keys}
    if bar is not None:
        bar.write(f"final evaluations of every point: {tuning.values_text(most)} (the most any point needs)")
    return {point: {**values, **most} for point, values in chosen.items()}


def _eval_sizes(db, point: str, cfg, say) -> tuple[dict[str, int], str]:
    """The final runs' evaluation sizes for data.eval_se / data.curve_eval_se: from the per-window differences
    between the point's two best pilots (scored on the same windows) and the documents those windows come from
    (noise.windows_for_se), at most what eval_tokens (eval_windows) and curve_eval_windows allow. Deterministic
    given the pilots, so a resumed sweep chooses the same."""
    d, n_ctx = cfg.data, cfg.model.n_ctx
    if not pilot_sized(d):
        return {}, ""
    n_final, n_curve = eval_window_counts(d, n_ctx)
    pilots = db.pilot_windows(point)
    if len(pilots) < 2 or len(pilots[0][1]) != len(pilots[1][1]):
        say(f"point {point}: fewer than two finished pilots with per-window losses: evaluations keep their "
            f"configured size")
        return {}, "; evaluations at their configured size (no two pilots to size them from)"
    diffs = pilots[1][1].astype(np.float64) - pilots[0][1]
    blocks = db.blocks("validation", n_ctx, train.eval_context(cfg.model), len(diffs))
    out, notes = {}, []
    if d.eval_se:
        size = noise.windows_for_se(diffs, blocks, d.eval_se, n_final)
        n_final = size.windows
        out["data.eval_windows" if d.eval_windows else "data.eval_tokens"] = (
            size.windows if d.eval_windows else size.windows * (n_ctx + 1))
        notes.append(f"final evaluations: {size.text(d.eval_se)}")
    if d.curve_eval_se:
        size = noise.windows_for_se(diffs, blocks, d.curve_eval_se, min(n_curve, n_final))
        out["data.curve_eval_windows"] = size.windows
        notes.append(f"curve evaluations: {size.text(d.curve_eval_se)}")
    for line in notes:
        say(f"point {point}: {line}")
    return out, "".join(f"; {line}" for line in notes)


WAIT_POLL_S = 2.0


def _wait_for_pilots(db, pilots: list[sweeps.Run], keys, pilot_groups: list[sweeps.Group], train_groups,
                     timings: dict | None = None) -> list:
    """The pilots' losses once every one is finished: another job trains them; a group whose job died (its claim
    gone stale) is taken over and trained here."""
    while True:
        losses = _pilot_losses(db, pilots, keys)
        if losses is not None:
            return losses
        train_groups(_unfinished(pilot_groups, db))  # skips groups a live job holds
        _wait_a_poll(timings)


def _wait_a_poll(timings: dict | None) -> None:
    """Wait one poll interval for another job's progress (interruptible), counted as waiting."""
    with timed(timings, "wait"):
        interrupts.check()
        time.sleep(WAIT_POLL_S)


def _checkpoint_dir(out: Path, g: sweeps.Group) -> Path:
    return out / "groups" / g.group_id / "checkpoints"


def _has_checkpoint(out: Path, g: sweeps.Group) -> bool:
    """Whether the group will likely resume rather than initialise (its checkpoints are checked when it does)."""
    d = _checkpoint_dir(out, g)
    return d.is_dir() and any(p.name.isdigit() for p in d.iterdir())


def _train_group(g: sweeps.Group, out: Path, db, corpora: dict, bar, steps: train.GroupSteps | None,
                 timings: dict | None) -> None:
    corpus = _corpus(g.cfg.data, corpora, timings)
    for r in g.runs:
        corpus.check_fits(r.cfg.model.n_ctx, r.cfg.data.max_train_tokens, train.eval_context(r.cfg.model),
                          r.cfg.data.eval_windows)
    ids = [r.run_id for r in g.runs]
    if bar is not None:
        bar.write(f"group {g.group_id}: {len(ids)} x {g.runs[0].name if len(ids) == 1 else 'members'} "
                  f"(n_layer {g.cfg.model.n_layer}, d_model {g.cfg.model.d_model}, {g.cfg.train.steps} steps)")
    start = bar.n if bar is not None else 0
    per_step = _group_gflops_per_step(g)
    train.train_loop([r.cfg for r in g.runs], ids, corpus, _checkpoint_dir(out, g),
                     None if db is None else DBSink(db, ids), stacked=len(g.runs) > 1,
                     on_step=None if bar is None else (lambda n: bar.update(min(n * per_step, bar.total - bar.n))),
                     log=None if bar is None else bar.write, compiled=steps, timings=timings,
                     on_resume=None if bar is None else (lambda start: bar.update(start * per_step)),
                     tracker=tracking.tracker_for_group([r.cfg for r in g.runs], ids, g.group_id, out,
                                                        [r.name for r in g.runs]),
                     on_eval=None if bar is None else (lambda records: show_losses(bar, records)))
    if bar is not None:  # a resumed group skipped its first steps
        bar.n = min(start + per_step * g.cfg.train.steps, bar.total)  # (float sums may pass the total by an ulp)
        bar.refresh()


def status_table(out: str | Path) -> str:
    """`jscale status`: runs by status and the compute spent and left."""
    tables = results.load(out)
    runs = tables["runs"]
    counts = runs["status"].value_counts().to_dict()
    tokens_done = runs["step"] * runs["batch_size"] * runs["n_ctx"]
    spent = float((tokens_done * runs["flops_per_token_6N"]).sum())
    total = float((runs["tokens"] * runs["flops_per_token_6N"]).sum())
    lines = [f"{out}: {len(runs)} runs"]
    for s in ("done", "running", "pending", "diverged"):
        lines.append(f"  {s:<9} {counts.get(s, 0)}")
    tuned = set(runs.loc[runs["role"] == "pilot", "point"]) if "role" in runs else set()
    unplanned = len(tuned - set(tables["tuning"]["point"]))
    lines.append(f"  compute spent {spent:.3e} FLOPs (6ND), left {total - spent:.3e} of {total:.3e} "
                 f"({100 * spent / total if total else 0:.1f}% done"
                 + (f" of what is planned: the final runs of {unplanned} tuned point{'s' if unplanned > 1 else ''} "
                    f"are not planned until their pilots choose)" if unplanned else ")"))
    for t in tables["tuning"].itertuples():
        chosen = json.loads(t.chosen)
        lines.append(f"  tuned point {t.point}: {tuning.values_text(chosen)} ({t.note}); pilot validation losses: "
                     f"{tuning.pilots_text(json.loads(t.losses))}")
    started = runs[(runs["step"] > 0) | runs["status"].isin(["done", "diverged"])].sort_values("N")
    if len(started):  # every run that has trained, diverged ones included (their loss shows as nan)
        lines.append(f"  {'run':<13}{'name':<40}{'N':>10}{'status':>10}{'step':>8}{'val loss':>11}"
                     f"{'test loss':>11}")
        for r in started.itertuples():
            val = float("nan") if r.final_val_loss is None else float(r.final_val_loss)
            loss = float("nan") if r.final_test_loss is None else float(r.final_test_loss)
            lines.append(f"  {r.run_id:<13}{r.name[:39]:<40}{r.N:>10.3g}{r.status:>10}{r.step:>8}{val:>11.4f}"
                         f"{loss:>11.4f}")
    return "\n".join(lines)


def init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-process run through jax.distributed. With no flags, JAX's own environment detection (SLURM,
    Open MPI, TPU pods, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) decides; with none of
    those it stays single-process."""
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and "JAX_NUM_PROCESSES" in os.environ:
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    cluster = any(k in os.environ for k in ("SLURM_JOB_ID", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"))
    if coordinator is None and not cluster:
        return
    # Cross-process collectives on CPU devices (tests, CPU clusters); no effect on GPU or TPU devices. Set before
    # the backend starts, so no JAX computation may run before this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
