"""Wall-time estimates for a sweep from this device's measured training throughput.

The first estimate on a device trains a few probe models for some steps (seconds on a CPU) and caches what it
measured in `CACHE/throughput-v4.json` under the device's name; later estimates read the cache. A step of a group is
modelled as `overhead + FLOPs / rate`, fitted per model family (Transformers, LSTMs) to the probes, and
`jscale plan` corrects it with the sweep's own shapes timed on this device (`with_shapes`: the smallest, median and
largest; each other shape takes the correction of the nearest in FLOPs); evaluation costs a third of a training
step's FLOPs per token; each distinct shape pays the mean compile time measured (persistent-cache hits make re-runs
cheaper than this says). Not counted: pilots added when a tuning grid is extended, and other jobs on the machine.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
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
FAMILY = {"transformer": "transformer", "universal": "transformer", "transformer_xl": "transformer",
          "lstm": "lstm"}


def device_key() -> str:
    import jax

    return f"{jax.default_backend()}:{jax.devices()[0].device_kind}"


def _cache_path() -> Path:
    from jscale.data import cache_root

    # v4: step times measured as training runs them, up to 16 steps a call (train.multi_step, 2026-12-06); those
    # cached before it (v3: one step a call, with models/dense.py's CPU weight gradients; v2: with models/attention.py's
    # CPU attention; throughput.json: before it) were longer for narrow models and are not read.
    return cache_root(DataConfig()) / "throughput-v4.json"


def measure(steps: int = 8) -> dict:
    """Train each probe of this backend for some steps; seconds per step, FLOPs per step and compile seconds."""
    import jax

    rows = []
    for kind, n_layer, d_model, n_ctx, batch in PROBES.get(jax.default_backend(), PROBES["cpu"]):
        cfg = Config(model=ModelConfig(kind=kind, n_layer=n_layer, d_model=d_model, n_heads=max(1, d_model // 32)
                                       if kind != "lstm" else ModelConfig.n_heads, n_ctx=n_ctx),
                     train=TrainConfig(batch_size=batch, steps=steps + 2, warmup_steps=1))
        rows.append({"kind": kind, "n_layer": n_layer, "d_model": d_model, "n_ctx": n_ctx, "batch": batch,
                     **_time_steps(cfg, steps)})
    return {"date": datetime.date.today().isoformat(), "probes": rows}


def _time_steps(cfg: Config, steps: int) -> dict[str, float]:
    """One member of this config: compile seconds, then seconds per training step, and its FLOPs per step."""
    from jscale import sharding, train

    t0 = time.perf_counter()
    compiled = train.compile_steps([cfg], stacked=False)
    compile_s = time.perf_counter() - t0
    state = compiled.init(np.uint32(0))
    hp = {k: sharding.put(np.asarray(v), compiled.hp_sharding)
          for k, v in train.hparams_from_config(cfg.train).items()}
    batch = np.zeros((cfg.train.batch_size, cfg.model.n_ctx + 1), np.int32)
    seconds = train.seconds_per_step(compiled.train_steps, state, batch, hp, steps,
                                     batches_sharding=compiled.batches_sh)
    return {"flops_per_step": accounting.step_flops(cfg), "seconds_per_step": seconds, "compile_s": compile_s}


def with_shapes(measured: dict, groups, log=print, steps: int = 8) -> dict:
    """The throughput table plus the step time of up to three of these groups' own shapes (the smallest, median
    and largest by FLOPs per step), measured on this device once and cached beside the probes; the table returned
    holds only this sweep's timed shapes, so other sweeps' cached ones do not correct its estimate. Why: the probes'
    FLOP model misses what FLOPs do not show, such as attention over 8-wide heads, which took 61% of a d_model 48
    step on a 2-core CPU (benchmarks/RESULTS.md, 2026-12-05) and made the estimate of a sweep of such models 2.8x
    short."""
    from jscale.train import member_shape_key

    shapes = {}
    for g in groups:
        shapes.setdefault(member_shape_key(g.cfg), g.cfg)
    by_flops = sorted(shapes.items(), key=lambda kv: accounting.step_flops(kv[1]))
    picks = {by_flops[i][0]: by_flops[i][1] for i in {0, len(by_flops) // 2, len(by_flops) - 1}} if by_flops else {}
    known = dict(measured.get("shapes", {}))
    todo = {k: c for k, c in picks.items() if k not in known}
    if todo:
        log(f"(timing {len(todo)} of this sweep's model shapes on this device, for the estimate; cached in "
            f"{_cache_path()})")
        import jax

        cache_on = jax.config.jax_enable_compilation_cache
        jax.config.update("jax_enable_compilation_cache", False)  # a first run's compile time, not a cache hit
        try:
            for key, cfg in todo.items():
                short = dataclasses.replace(cfg.train, steps=steps + 2, warmup_steps=1, warmup_tokens=0,
                                            warmup_per_param=0.0, anneal_branches=0)
                others = cpuload.Others()
                known[key] = _time_steps(dataclasses.replace(cfg, train=short), steps)
                known[key]["others_share"] = others.share()  # a shape timed on a busy CPU reads slow
        finally:
            jax.config.update("jax_enable_compilation_cache", cache_on)
        _store(device_key(), {**measured, "shapes": known})
    return {**measured, "shapes": {k: known[k] for k in picks}}


def table(measure_if_missing: bool = True, log=print) -> dict | None:
    """This device's probe measurements: from the cache, else measured now (and cached)."""
    path = _cache_path()
    try:
        cached = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cached = {}
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
        tmp = path.with_name(path.name + ".tmp")
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


def estimate(groups, measured: dict) -> dict[str, float]:
    """Seconds to train, evaluate and compile these groups (sweep.Group), from the probe measurements."""
    from jscale.train import member_shape_key

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
    train_s = eval_s = 0.0
    shapes = set()
    for g in groups:
        c, members = g.cfg, len(g.runs)
        overhead, rate = fits[FAMILY[c.model.kind]]
        one_flops = accounting.step_flops(c)
        modelled = overhead + one_flops / rate
        if member_shape_key(c) in timed:
            ratio = timed[member_shape_key(c)]["seconds_per_step"] / modelled
        else:
            ratio = min(ratios, key=lambda lr: abs(lr[0] - math.log(one_flops)))[1] if ratios else 1.0
        step_s = ratio * (overhead + members * one_flops / rate)  # one member: the timed step itself
        train_s += (c.train.steps + c.train.branch_steps()) * step_s  # cooldowns too
        cost = accounting.eval_cost(c)
        eval_s += cost["evaluations"] * overhead + members * cost["flops"] / rate
        shapes.add((json.dumps(c.model.__dict__, sort_keys=True), members, c.train.batch_size))
    compile_s = compile_per_shape * len(shapes)
    return {"train": train_s, "eval": eval_s, "compile": compile_s, "total": train_s + eval_s + compile_s}


def tokens_per_s(groups, measured: dict) -> float | None:
    """The estimated training rate (tokens per second, one member) of the largest model among these groups."""
    if not groups:
        return None
    g = max(groups, key=lambda g: accounting.account(g.cfg.model).N_total)
    one = type(g)(g.group_id, g.runs[:1])
    seconds = estimate([one], measured)["train"]
    t = g.cfg.train
    return (t.steps + t.branch_steps()) * t.batch_size * g.cfg.model.n_ctx / seconds if seconds else None


def describe(groups, measured: dict, budget_minutes: float = 0.0) -> str:
    e = estimate(groups, measured)
    fmt = lambda s: f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"
    where = measured.get("device", device_key())
    compile_text = f", compile {fmt(e['compile'])}" if any(r["compile_s"] for r in measured["probes"]) else \
        ", compile not included (not measured there)"
    budget = ""
    if budget_minutes:
        over = e["total"] / 60 > budget_minutes
        budget = (f"; the scale's budget is {budget_minutes:g} min"
                  + (": OVER it, `jscale run` refuses without --force" if over else ": within it"))
    load = ""
    if "device" not in measured:  # this machine's own measurements: say when it was, or is, shared
        timed = [r.get("others_share") or 0.0 for r in measured.get("shapes", {}).values()]
        if timed and max(timed) >= cpuload.NOTE_SHARE:
            load += f"; its shapes were timed while other processes used up to {100 * max(timed):.0f}% of the cores"
        busy = cpuload.note(cpuload.now(), "a run started now takes longer than this", now=True)
        load += f"; {busy}" if busy else ""
    return (f"estimated wall time on {where}: {fmt(e['total'])} (train {fmt(e['train'])}, eval "
            f"{fmt(e['eval'])}{compile_text}), from throughput measured {measured['date']}{budget}{load}")
