"""Per-shape hyperparameter tuning: a pilot of a grid of values, trained as one ensemble per shape, picked on
validation loss and bracketed.

A sweep asks for it with a `[tune]` table:

    [tune]
    grid = { "train.lr" = [1e-3, 2e-3, 4e-3, 8e-3] }   # one or more keys (TUNABLE); the pilot trains their product
    fraction = 0.2                                     # of the final run's steps (its schedule compressed to fit)
    extend = true                                      # an optimum at the grid's edge: extend until bracketed

Every final run is a *point* (its config less the seeds and the tuned keys). For each point the pilot trains one
run per grid value at the point's first seed; they share every shape, so they train as one vmapped ensemble (a
batch-size grid trains one group per batch size, each at the tokens the final run would see). A pilot is never
shorter than max(fraction of the run, its warmup + MIN_PILOT_AFTER_WARMUP steps), and never longer than the run
(a pilot of 7 steps of a 35-step run cannot rank learning rates); short horizons favour large learning rates, so a
pilot as long as the run is the unbiased one.

The choice reads validation loss only (never test). While the best value of an extendable key sits on an edge of
the values trained, the grid grows by one geometric step beyond that edge, up to MAX_EXTENSIONS times; a value
whose pilot diverged bounds the optimum like any worse value. The learning rate is then the vertex of a parabola in
log(lr) through the best value and its two neighbours (clipped to them), and its margin (how much worse the better
neighbour is) is kept: a flat optimum is a noisy choice. An optimum still at an edge is flagged `bracketed = false`,
and the report refuses comparisons that rest on one. The grid, every pilot's loss, the choice, the vertex, the margin
and the flags are stored in the results database (`tuning` table) and shown by `jscale status` and the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from typing import Any

from jscale.config import Config, ConfigError
from jscale.noise import lr_vertex  # noqa: F401 (the choice's vertex rule, also used by the resampling)
from jscale.resolve import resolve

# Keys a pilot may tune: per-member hyperparameters (sweep.MEMBER_KEYS), so that a pilot is one ensemble; and the
# batch size, whose pilots form one group per batch size, each at the same tokens (apply).
TUNABLE = ("train.lr", "train.b1", "train.b2", "train.warmup_steps", "train.weight_decay", "train.decay_fraction",
           "train.final_lr_fraction", "train.batch_size")
PILOT_EVAL_SHARE = 4  # a pilot's final evaluation holds 1/4 of the windows of the final runs'
MIN_PILOT_AFTER_WARMUP = 50  # a pilot trains at least this many steps past its warmup (or the whole run)
MAX_EXTENSIONS = 4  # at most this many geometric steps beyond the first grid's edges
EXTENDABLE = ("train.lr", "train.warmup_steps", "train.batch_size")  # keys whose grid can grow geometrically


@dataclasses.dataclass(frozen=True)
class Tune:
    grid: tuple[tuple[str, tuple[float, ...]], ...]  # (key, sorted values)
    fraction: float = 0.2
    extend: bool = True

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.grid)


def parse(table: Any) -> Tune:
    """The sweep's [tune] table, validated (one line naming the key on any problem)."""
    if not isinstance(table, dict):
        raise ConfigError("tune: expected a table with grid = { \"train.lr\" = [...] }")
    unknown = sorted(set(table) - {"grid", "fraction", "extend"})
    if unknown:
        raise ConfigError(f"tune.{unknown[0]}: unknown field (expected grid, fraction, extend)")
    grid = table.get("grid")
    if not isinstance(grid, dict) or not grid:
        raise ConfigError("tune.grid: expected a table of key = [values], e.g. { \"train.lr\" = [1e-3, 3e-3] }")
    pairs = []
    for key, values in grid.items():
        if key not in TUNABLE:
            raise ConfigError(f"tune.grid.{key}: not tunable (one of {', '.join(TUNABLE)})")
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                   for v in values):
            raise ConfigError(f"tune.grid.{key}: expected a list of numbers")
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"tune.grid.{key}: every value must be a finite number, got {values}")
        if len(set(values)) < 2:
            raise ConfigError(f"tune.grid.{key}: a tuning grid needs at least 2 distinct values, got {values}")
        integer = key in ("train.warmup_steps", "train.batch_size")
        if integer and not all(float(v).is_integer() and v >= 1 for v in values):
            raise ConfigError(f"tune.grid.{key}: expected positive whole numbers, got {values}")
        pairs.append((key, tuple(sorted(set(int(v) if integer else float(v) for v in values)))))
    fraction = table.get("fraction", 0.2)
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
        raise ConfigError(f"tune.fraction: must be in (0, 1], got {fraction!r}")
    extend = table.get("extend", True)
    if not isinstance(extend, bool):
        raise ConfigError(f"tune.extend: expected true or false, got {extend!r}")
    return Tune(tuple(pairs), float(fraction), extend)


SEED_KEYS = ("train.seed", "train.data_seed")


def point_id(cfg: Config, also: tuple[str, ...] = ()) -> str:
    """What seed replicas share: the config's hash with the seeds (and the keys `also` names) left out."""
    d = cfg.identity()
    for key in SEED_KEYS + also:
        section, name = key.split(".")
        d[section].pop(name, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def point_of(cfg: Config, tune: Tune) -> str:
    """The point a final run belongs to: its config's hash less the seeds and the tuned keys."""
    return point_id(cfg, tune.keys)


def pilot_steps(t, fraction: float) -> int:
    """A pilot's length: the fraction of the run, at least its warmup + MIN_PILOT_AFTER_WARMUP steps, at most the
    run."""
    return min(t.steps, max(2, round(fraction * t.steps), t.warmup_steps + MIN_PILOT_AFTER_WARMUP))


def pilot_config(cfg: Config, tune: Tune, values: dict[str, float]) -> Config:
    """A pilot run: the point's config with these values, over pilot_steps of its steps (one evaluation, at the
    end; the run's warmup; no cooldown branches)."""
    t = apply(cfg, values).train
    # the length is the point's (at its own batch size), in tokens, so a batch-size grid compares at equal tokens
    tokens = pilot_steps(cfg.train, tune.fraction) * cfg.train.batch_size
    steps = min(t.steps, max(2, round(tokens / t.batch_size)))
    train = dataclasses.replace(t, steps=steps, eval_every=steps, eval_log_points=0, checkpoint_every=steps,
                                warmup_steps=min(t.warmup_steps, steps // 2), anneal_branches=0)
    # A pilot's one evaluation is a quarter of the final runs' size: the pilots of a point are scored on the same
    # windows, so their differences (what the choice reads) are far less noisy than each loss's standard error.
    d = cfg.data
    d = (dataclasses.replace(d, eval_windows=max(1, d.eval_windows // PILOT_EVAL_SHARE)) if d.eval_windows else
         dataclasses.replace(d, eval_tokens=max(1, d.eval_tokens // PILOT_EVAL_SHARE)))
    return resolve(dataclasses.replace(cfg, train=train, data=d))


EVAL_SIZE_KEYS = ("data.eval_tokens", "data.eval_windows", "data.curve_eval_windows")  # set after the pilots
# from data.eval_se / data.curve_eval_se (grid), not tuned on a grid


def apply(cfg: Config, values: dict[str, float]) -> Config:
    """cfg with tuned values put in. A different batch size keeps the run's tokens (and its warmup's and evaluation
    interval's tokens) fixed by rescaling the step counts, so batch sizes are compared at equal data. The evaluation
    sizes chosen after the pilots (EVAL_SIZE_KEYS) go into the data config."""
    t, d = cfg.train, cfg.data
    for key, value in values.items():
        if key in EVAL_SIZE_KEYS:
            d = dataclasses.replace(d, **{key.split(".")[1]: int(value)})
        elif key == "train.batch_size" and value != t.batch_size:
            scale = t.batch_size / value
            eval_every = max(1, round(t.eval_every * scale))
            steps = max(eval_every, round(t.steps * scale))
            t = dataclasses.replace(t, batch_size=int(value), steps=steps, eval_every=eval_every,
                                    checkpoint_every=eval_every * max(1, round(t.checkpoint_every / t.eval_every)),
                                    warmup_steps=min(round(t.warmup_steps * scale), steps))
        else:
            t = dataclasses.replace(t, **{key.split(".")[1]: int(value) if key == "train.batch_size" else value})
    return resolve(dataclasses.replace(cfg, train=t, data=d))


def values_text(values: dict[str, float]) -> str:
    """Tuned values as people read them: "lr = 0.002, b2 = 0.99"."""
    return ", ".join(f"{k.split('.')[-1]} = {v:,}" if k in EVAL_SIZE_KEYS else f"{k.split('.')[-1]} = {v:g}"
                     for k, v in values.items())


def pilots_text(losses: list) -> str:
    """A tuning row's pilots and their validation losses (None: diverged), as stored in the tuning table."""
    return "; ".join(f"{values_text(v)}: {'diverged' if loss is None else f'{loss:.4f}'}" for v, loss in losses)


def combinations(grid: dict[str, list]) -> list[dict[str, float]]:
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


@dataclasses.dataclass(frozen=True)
class Choice:
    chosen: dict[str, float]  # the values the final runs take (the learning rate: the parabola's vertex)
    bracketed: dict[str, bool]  # per key: the optimum is strictly inside the key's values
    losses: list[tuple[dict[str, float], float]]  # every pilot: its values and final validation loss (inf: diverged)
    best: dict[str, float] = dataclasses.field(default_factory=dict)  # the pilot with the lowest loss
    margin: float = math.nan  # relative: how much worse the better neighbour of the best learning rate is


def choose(grid: dict[str, list], losses: list[tuple[dict[str, float], float]]) -> Choice:
    """The values with the lowest validation loss, for each key whether that optimum is bracketed (neither the
    smallest nor the largest value of the key that the pilot trained), and for a bracketed learning rate the vertex
    of the parabola in log(lr) through it and its two neighbours (the other keys at their best values)."""
    finite = [(v, loss) for v, loss in losses if math.isfinite(loss)]
    if not finite:
        raise ConfigError("tune: every pilot run diverged; lower the learning rates of tune.grid")
    best, best_loss = min(finite, key=lambda x: (x[1], json.dumps(x[0], sort_keys=True)))
    bracketed = {}
    for key, values in grid.items():
        values = sorted(values)
        i = values.index(best[key])
        bracketed[key] = 0 < i < len(values) - 1
    chosen, margin = dict(best), math.nan
    if "train.lr" in grid and bracketed["train.lr"]:
        line = {v["train.lr"]: loss for v, loss in losses
                if all(v[k] == best[k] for k in grid if k != "train.lr")}  # the learning rates at the best others
        lrs = sorted(line)
        i = lrs.index(best["train.lr"])
        lower, upper = line[lrs[i - 1]], line[lrs[i + 1]]
        margin = (min(lower, upper) - best_loss) / best_loss
        chosen["train.lr"] = lr_vertex(lrs[i - 1:i + 2], [lower, best_loss, upper])
    return Choice(chosen, bracketed, losses, dict(best), margin)


def extension(grid: dict[str, list], choice: Choice) -> dict[str, list]:
    """One more value beyond each edge the optimum sits on, for the keys that can grow (a geometric step, the
    ratio of the two edge values); {} when there is nothing to extend (grid.py calls it until then, at most
    MAX_EXTENSIONS times)."""
    out = {}
    for key, values in grid.items():
        if choice.bracketed[key] or key not in EXTENDABLE:
            continue
        values = sorted(values)
        at_low = (choice.best or choice.chosen)[key] == values[0]
        edge, inner = (values[0], values[1]) if at_low else (values[-1], values[-2])
        if edge <= 0 or inner <= 0:
            continue
        new = edge * edge / inner
        new = max(1, round(new)) if key in ("train.warmup_steps", "train.batch_size") else new
        if new not in values:
            out[key] = [new]
    return out
