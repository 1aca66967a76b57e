"""Wall-time estimates for a sweep from this device's measured training throughput.

The first estimate on a device trains a few probe models for some steps (seconds on a CPU) and caches what it
measured in `CACHE/throughput-v4.json` under the device's name; later estimates read the cache. A step of a group is
modelled as `overhead + FLOPs / rate`, fitted per model family (Transformers, LSTMs) to the probes, and
`jscale plan` corrects it with the sweep's own shapes timed on this device (`with_shapes`: the smallest, median and
largest; each other shape takes the correction of the nearest in FLOPs); evaluation costs a third of a training
step's FLOPs per token; each distinct shape pays the mean compile time measured (persistent-cache hits make re-runs
cheaper than this says). Not counted: pilots added when a tuning grid is extended, and other jobs on the machine.

On a CPU the measurements are cached per number of cores the process may use. `jscale plan --workers N` estimates
`jscale run --workers N` from one worker's table (measured by `jscale plan` processes pinned to each worker's share
of the cores, side by side), dealing the groups to the workers as they claim them (estimate_workers). For the long
scale's d_model 8 and 48 groups (benchmarks/long_tier.py at full length) it read 5.9-6.5 min where the run took
8.0-8.4 min on this project's 2-core AMD VM (2026-12-06): the pilots a grid's extension added (4 of 12 there), the
data preparing and the workers' start-up, and what a step costs beyond the timed loop (making its batches on the
host, the results) are not in it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from jscale import accounting, cpuload
from jscale.config import Config, DataConfig, ModelConfig, TrainConfig

# (kind, n_layer, d_model, n_ctx, batch) per backend: small and large enough to separate overhead from rate.
PROBES = {
    "cpu": [("transformer", 2, 32, 64, 16), ("transformer", 2, 128, 64, 16), ("lstm", 2, 64, 64, 16)],
    "gpu": [("transformer", 2, 128, 256, 32), ("transformer", 8, 512, 512, 32), ("lstm", 2, 512, 256, 32)],
}
PROBES["tpu"] = PROBES["gpu"]
# A step time is read over at least `steps` steps and about MIN_TIMED_S seconds (at most MAX_TIMED_STEPS steps), not
# eight steps (0.04-0.2 s for the long scale's models). The machine drifts as well: plans of one sweep minutes apart
# read 9.5-11.1 min with it (benchmarks/RESULTS.md, 2026-12-06).
MIN_TIMED_S, MAX_TIMED_STEPS = 1.0, 256
FAMILY = {"transformer": "transformer", "universal": "transformer", "transformer_xl": "transformer",
          "lstm": "lstm"}


def device_key(cores: int | None = None) -> str:
    """The throughput cache's key for this device; on a CPU with the number of cores a process may use (this one's,
    or `cores`: a `jscale run --workers` worker's share), which its step times depend on."""
    import jax

    key = f"{jax.default_backend()}:{jax.devices()[0].device_kind}"
    if jax.default_backend() == "cpu":
        n = cpuload.cores() if cores is None else cores
        key += f" ({n} core{'s' if n > 1 else ''})"
    return key


def _cache_path() -> Path:
    from jscale.data import cache_root

    # v4: step times measured as training runs them, up to 16 steps a call (train.multi_step, 2026-12-06); those
    # cached before it (v3: one step a call, with models/dense.py's CPU weight gradients; v2: with models/attention.py's
    # CPU attention; throughput.json: before it) were longer for narrow models and are not read.
    return cache_root(DataConfig()) / "throughput-v4.json"


@contextlib.contextmanager
def cold_compiles():
    """Compiles inside read nothing from the persistent compilation cache (nor write to it). JAX decides whether a
    process uses the cache at its first compile and keeps that answer, so the flag alone changes nothing after one
    (the shapes' compile times read 2 s on a machine where a cold compile takes 10): reset_cache makes it decide
    again, on entry and on exit."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    cache_on = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    compilation_cache.reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", cache_on)
        compilation_cache.reset_cache()


def measure(steps: int = 8) -> dict:
    """Train each probe of this backend for some steps; seconds per step, FLOPs per step and compile seconds (a
    first run's: cold_compiles)."""
    import jax

    rows = []
    for kind, n_layer, d_model, n_ctx, batch in PROBES.get(jax.default_backend(), PROBES["cpu"]):
        cfg = Config(model=ModelConfig(kind=kind, n_layer=n_layer, d_model=d_model, n_heads=max(1, d_model // 32)
                                       if kind != "lstm" else ModelConfig.n_heads, n_ctx=n_ctx),
                     train=TrainConfig(batch_size=batch, steps=steps + 2, warmup_steps=1))
        with cold_compiles():
            rows.append({"kind": kind, "n_layer": n_layer, "d_model": d_model, "n_ctx": n_ctx, "batch": batch,
                         **_time_steps(cfg, steps)})
    return {"date": datetime.date.today().isoformat(), "probes": rows}


def _time_steps(cfg: Config, steps: int) -> dict[str, float]:
    """One member of this config: compile seconds, then seconds per training step, and its FLOPs per step."""
    from jscale import sharding, train

    t0 = time.perf_counter()
    compiled = train.compile_steps([cfg], stacked=False)
    compile_s = time.perf_counter() - t0
    hp = {k: sharding.put(np.asarray(v), compiled.hp_sharding)
          for k, v in train.hparams_from_config(cfg.train).items()}
    batch = np.zeros((cfg.train.batch_size, cfg.model.n_ctx + 1), np.int32)
    seconds = train.seconds_per_step(compiled.train_steps, compiled.init(np.uint32(0)), batch, hp, steps,
                                     batches_sharding=compiled.batches_sh)
    if seconds * steps < MIN_TIMED_S:  # a short reading moves with the clock: time about a second of steps
        more = min(MAX_TIMED_STEPS, math.ceil(MIN_TIMED_S / seconds))
        seconds = train.seconds_per_step(compiled.train_steps, compiled.init(np.uint32(0)), batch, hp, more,
                                         batches_sharding=compiled.batches_sh)
    return {"flops_per_step": accounting.step_flops(cfg), "seconds_per_step": seconds, "compile_s": compile_s}


def with_shapes(measured: dict, groups, log=print, steps: int = 8) -> dict:
    """The throughput table plus the step time of up to three of these groups' own shapes (the smallest, median
    and largest by FLOPs per step), measured on this device once and cached beside the probes; the table returned
    holds only this sweep's timed shapes, so other sweeps' cached ones do not correct its estimate. Why: the probes'
    FLOP model misses what FLOPs do not show, such as attention over 8-wide heads, which took 61% of a d_model 48
    step on a 2-core CPU (benchmarks/RESULTS.md, 2026-12-05) and made the estimate of a sweep of such models 2.8x
    short."""
    picks = _picks(groups)
    known = dict(measured.get("shapes", {}))
    todo = {k: c for k, c in picks.items() if k not in known}
    if todo:
        log(f"(timing {len(todo)} of this sweep's model shapes on this device, for the estimate; cached in "
            f"{_cache_path()})")
        with cold_compiles():  # a first run's compile time, not a cache hit
            for key, cfg in todo.items():
                short = dataclasses.replace(cfg.train, steps=steps + 2, warmup_steps=1, warmup_tokens=0,
                                            warmup_per_param=0.0, anneal_branches=0)
                others = cpuload.Others()
                known[key] = _time_steps(dataclasses.replace(cfg, train=short), steps)
                known[key]["others_share"] = others.share()  # a shape timed on a busy CPU reads slow
        _store(device_key(), {**measured, "shapes": known})
    return _this_sweeps({**measured, "shapes": known}, groups)


def _picks(groups) -> dict:
    """The shapes with_shapes times, by member_shape_key: the smallest, median and largest by FLOPs per step."""
    from jscale.train import member_shape_key

    shapes = {}
    for g in groups:
        shapes.setdefault(member_shape_key(g.cfg), g.cfg)
    by_flops = sorted(shapes.items(), key=lambda kv: accounting.step_flops(kv[1]))
    return {by_flops[i][0]: by_flops[i][1] for i in {0, len(by_flops) // 2, len(by_flops) - 1}} if by_flops else {}


def _this_sweeps(measured: dict, groups) -> dict:
    """The table with only these groups' timed shapes (_picks): other sweeps' cached ones do not correct the
    estimate."""
    return {**measured, "shapes": {k: measured["shapes"][k] for k in _picks(groups)}}


def complete(measured: dict | None, groups) -> bool:
    """Whether this table holds the probes and every shape of these groups with_shapes would time."""
    return measured is not None and set(_picks(groups)) <= set(measured.get("shapes", {}))


def table(measure_if_missing: bool = True, log=print, key: str | None = None) -> dict | None:
    """This device's probe measurements: from the cache, else measured now (and cached). key: another entry of the
    cache, read only (a worker's, which a process pinned to its cores measured)."""
    path = _cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cached = {}
    if key is not None:
        return cached.get(key)
    key = device_key()
    if key in cached or not measure_if_missing:
        return cached.get(key)
    log(f"(measuring this device's training throughput once, for wall-time estimates; cached in {path})")
    table = measure()
    _store(key, table)
    return table


def _read() -> dict:
    try:
        return json.loads(_cache_path().read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _store(key: str, table: dict) -> None:
    """Write this device's table into the cache (atomically; an estimate without a cache is still an estimate)."""
    path = _cache_path()
    cached = _read()
    cached[key] = table
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # (`plan --workers` times in several processes)
        tmp.write_text(json.dumps(cached, indent=2))
        tmp.replace(path)
    except OSError:
        pass


def _reference_h100() -> dict:
    """Throughput measured on one H100 (bf16, JAX 0.11.2, flax 0.12.10) by the session that took the performance
    anchors of shared/reference/scaling.md section 7, as probe rows (cuDNN attention where it was measured, as
    model.attention = "auto" picks it there). Compile time was not measured: estimates from it leave it out."""
    anchors = [("transformer", 4, 128, 512, 64, 4.0e6), ("transformer", 8, 512, 512, 128, 1.50e6),
               ("transformer", 12, 768, 1024, 32, 0.60e6), ("lstm", 2, 512, 256, 64, 0.51e6),
               ("lstm", 2, 1024, 256, 64, 0.30e6)]
    rows = []
    for kind, n_layer, d_model, n_ctx, batch, tokens_per_s in anchors:
        m = ModelConfig(kind=kind, n_layer=n_layer, d_model=d_model, n_ctx=n_ctx,
                        n_heads=max(1, d_model // 64) if kind != "lstm" else ModelConfig.n_heads)
        rows.append({"kind": kind, "n_layer": n_layer, "d_model": d_model, "n_ctx": n_ctx, "batch": batch,
                     "flops_per_step": batch * n_ctx * accounting.account(m).train_flops_exact,
                     "seconds_per_step": batch * n_ctx / tokens_per_s, "compile_s": 0.0})
    return {"date": "shared/reference/scaling.md section 7", "device": "gpu:NVIDIA H100", "probes": rows}


# Devices a scale can be sized for ([scale.NAME] device = ...) without being on them.
REFERENCE = {"H100": _reference_h100}


def for_device(device: str, log=print) -> dict:
    """The throughput table an estimate for `device` uses: a reference device's, or ("cpu", or none named) this
    device's own measurement."""
    if device in REFERENCE:
        return REFERENCE[device]()
    return table(log=log)


def check_budget(sweep, groups, force: bool, log=print) -> None:
    """Refuse (one line) a sweep whose estimated time on its scale's device exceeds the scale's budget, unless
    forced; a sweep without a budget passes."""
    from jscale.errors import ConfigError

    if not sweep.budget_minutes:
        return
    e = estimate(groups, for_device(sweep.device, log))
    minutes = e["total"] / 60
    if minutes > sweep.budget_minutes and not force:
        raise ConfigError(f"--scale {sweep.scale}: estimated {minutes:.1f} min on {sweep.device or device_key()}, "
                          f"over the scale's budget of {sweep.budget_minutes:g} min; shrink the sweep or pass --force")


def _fit(rows: list[dict]) -> tuple[float, float]:
    """(overhead seconds, FLOP/s) of step time = overhead + flops / rate, from one or more probes."""
    x = np.array([r["flops_per_step"] for r in rows], float)
    y = np.array([r["seconds_per_step"] for r in rows], float)
    if len(rows) == 1 or np.ptp(x) == 0:
        return 0.0, float(x.mean() / y.mean())
    slope, intercept = np.polyfit(x, y, 1)
    if slope <= 0:  # noise larger than the size effect: no overhead term
        return 0.0, float(x.sum() / y.sum())
    return max(0.0, float(intercept)), float(1 / slope)


def _model(measured: dict) -> dict:
    """What every group's estimate reads from a throughput table: the per-family step-time fits, this sweep's timed
    shapes, the measured/modelled ratio of each timed shape (by log FLOPs per step), and the compile time a shape
    costs."""
    fits = {}
    for family in ("transformer", "lstm"):
        rows = [r for r in measured["probes"] if FAMILY[r["kind"]] == family]
        fits[family] = _fit(rows or measured["probes"])
    timed = measured.get("shapes", {})  # this sweep's own shapes where with_shapes timed them
    compile_per_shape = float(np.mean([r["compile_s"] for r in (list(timed.values()) or measured["probes"])]))
    # measured / modelled step time of each timed shape: the nearest one (in FLOPs per step) corrects the model
    # for shapes not timed
    ratios = []
    for key, r in timed.items():
        model, batch = json.loads(key)
        overhead, rate = fits[FAMILY[model["kind"]]]
        ratios.append((math.log(r["flops_per_step"]), r["seconds_per_step"] / (overhead + r["flops_per_step"] / rate)))
    return {"fits": fits, "timed": timed, "ratios": ratios, "compile_per_shape": compile_per_shape}


def _group_seconds(g, model: dict) -> tuple[float, float, str]:
    """One group's (training seconds, evaluation seconds, the shape its compiled programs are keyed by)."""
    from jscale.train import member_shape_key

    c, members = g.cfg, len(g.runs)
    overhead, rate = model["fits"][FAMILY[c.model.kind]]
    one_flops = accounting.step_flops(c)
    modelled = overhead + one_flops / rate
    if member_shape_key(c) in model["timed"]:
        ratio = model["timed"][member_shape_key(c)]["seconds_per_step"] / modelled
    else:
        ratios = model["ratios"]
        ratio = min(ratios, key=lambda lr: abs(lr[0] - math.log(one_flops)))[1] if ratios else 1.0
    step_s = ratio * (overhead + members * one_flops / rate)  # one member: the timed step itself
    train_s = (c.train.steps + c.train.branch_steps()) * step_s  # cooldowns too
    cost = accounting.eval_cost(c)
    eval_s = cost["evaluations"] * overhead + members * cost["flops"] / rate
    return train_s, eval_s, json.dumps([c.model.__dict__, members, c.train.batch_size], sort_keys=True)


def estimate(groups, measured: dict) -> dict[str, float]:
    """Seconds to train, evaluate and compile these groups (sweep.Group), from the probe measurements."""
    model = _model(measured)
    costs = [_group_seconds(g, model) for g in groups]
    train_s, eval_s = sum(c[0] for c in costs), sum(c[1] for c in costs)
    compile_s = model["compile_per_shape"] * len({c[2] for c in costs})
    return {"train": train_s, "eval": eval_s, "compile": compile_s, "total": train_s + eval_s + compile_s}


def estimate_workers(groups, measured: dict, workers: int) -> dict[str, float]:
    """Seconds of `jscale run --workers N` on these groups, from one worker's throughput table (measured on its
    share of the cores). As the workers claim groups: in the sweep's order, each group goes to the worker free
    soonest; the tuned final runs start once every pilot has ended (their values come from all of them); a worker
    compiles each shape it trains once (workers do not share compiled programs). 'train', 'eval' and 'compile' are
    worker-seconds; 'total' the wall time."""
    model = _model(measured)
    shapes: list[set] = [set() for _ in range(workers)]
    parts = {"train": 0.0, "eval": 0.0, "compile": 0.0}
    wall = 0.0
    stages = ([g for g in groups if not any(r.awaits_tuning for r in g.runs)],
              [g for g in groups if any(r.awaits_tuning for r in g.runs)])
    for stage in stages:
        free_at = [wall] * workers
        for g in stage:
            train_s, eval_s, shape = _group_seconds(g, model)
            w = min(range(workers), key=lambda i: free_at[i])
            compile_s = 0.0 if shape in shapes[w] else model["compile_per_shape"]
            shapes[w].add(shape)
            free_at[w] += train_s + eval_s + compile_s
            parts["train"] += train_s
            parts["eval"] += eval_s
            parts["compile"] += compile_s
        wall = max(free_at)
    return {**parts, "total": wall}


def describe_workers(plan_args: list[str], groups, workers: int, log=print) -> str:
    """`jscale plan --workers N`'s estimate line, for `jscale run --workers N` on this machine. A worker's step times
    are measured by `jscale plan PLAN_ARGS --cpus SHARE` (XLA:CPU sizes its threads at start-up, so a process pinned
    to a worker's share of the cores), cached under that many cores (device_key), and read from the cache later."""
    import subprocess
    import sys

    import jax

    from jscale.errors import ConfigError, JscaleError

    if jax.default_backend() != "cpu":
        raise ConfigError(f"--workers: shares one machine's CPU cores; no estimate on {jax.default_backend()}")
    shares = cpuload.cpu_shares(workers)
    if shares is None:
        return (f"(no estimate for {workers} workers: this process may use {cpuload.cores()} cores, so they would "
                f"not each have their own)")
    key = device_key(len(shares[0]))
    if not complete(table(key=key), groups):
        log(f"(timing a worker's steps on its {len(shares[0])} core(s), once, in {workers} processes side by side "
            f"as the workers run; cached under {key!r})")
        # Every worker's share times the same steps at once: a worker's steps run slower while the others' cores
        # are busy (shared caches and memory, a lower clock). Each writes the same entry; any one of them will do.
        procs = [subprocess.Popen([sys.executable, "-m", "jscale", "plan", *plan_args, "--cpus",
                                   ",".join(map(str, share))], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for share in shares]
        errors = [p.communicate()[1] for p in procs]
        failed = [e for p, e in zip(procs, errors) if p.returncode != 0]
        if failed:
            last = (failed[0].strip().splitlines() or ["(no message)"])[-1]
            raise JscaleError(f"--workers: timing a worker's steps failed: {last}")
    measured = table(key=key)
    # (not with_shapes: what it timed here would be timed on this process's cores and stored under its key)
    if not complete(measured, groups):
        raise JscaleError(f"--workers: timing a worker's steps left its entry incomplete in {_cache_path()} (is it "
                          f"writable?)")
    return describe(groups, _this_sweeps(measured, groups), 0.0, workers=workers, cores_each=len(shares[0]))


def tokens_per_s(groups, measured: dict) -> float | None:
    """The estimated training rate (tokens per second, one member) of the largest model among these groups."""
    if not groups:
        return None
    g = max(groups, key=lambda g: accounting.account(g.cfg.model).N_total)
    one = type(g)(g.group_id, g.runs[:1])
    seconds = estimate([one], measured)["train"]
    t = g.cfg.train
    return (t.steps + t.branch_steps()) * t.batch_size * g.cfg.model.n_ctx / seconds if seconds else None


def describe(groups, measured: dict, budget_minutes: float = 0.0, workers: int = 1, cores_each: int = 0) -> str:
    """The estimate's line; with workers > 1, `measured` is one worker's table (measured on cores_each cores) and
    the parts in brackets are worker-seconds."""
    e = estimate(groups, measured) if workers == 1 else estimate_workers(groups, measured, workers)
    fmt = lambda s: f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"
    where = measured.get("device", device_key())
    if workers > 1:
        where += f" with {workers} workers of {cores_each} core{'s' if cores_each > 1 else ''} each"
    compile_text = f", compile {fmt(e['compile'])}" if any(r["compile_s"] for r in measured["probes"]) else \
        ", compile not included (not measured there)"
    budget = ""
    if budget_minutes:
        over = e["total"] / 60 > budget_minutes
        budget = (f"; the scale's budget is {budget_minutes:g} min"
                  + (": OVER it, `jscale run` refuses without --force" if over else ": within it"))
    load = ""
    if "device" not in measured:  # this machine's own measurements: say when it was, or is, shared
        # (a worker's steps are timed with the other workers' timing beside them on purpose: not other processes)
        timed = [r.get("others_share") or 0.0 for r in measured.get("shapes", {}).values()] if workers == 1 else []
        if timed and max(timed) >= cpuload.NOTE_SHARE:
            load += f"; its shapes were timed while other processes used up to {100 * max(timed):.0f}% of the cores"
        busy = cpuload.note(cpuload.now(), "a run started now takes longer than this", now=True)
        load += f"; {busy}" if busy else ""
    return (f"estimated wall time on {where}: {fmt(e['total'])} ({'worker-time: ' if workers > 1 else ''}"
            f"train {fmt(e['train'])}, eval "
            f"{fmt(e['eval'])}{compile_text}), from throughput measured {measured['date']}{budget}{load}")
