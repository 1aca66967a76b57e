"""Sweep specifications: a base config plus axes, expanded into runs and grouped into vmappable ensembles.

A sweep is a TOML file:

    name = "size"
    claim = "L(N) is a power law"          # optional: what the sweep tests
    [base.model]                            # any config keys (model, data, train)
    n_layer = 2
    [[axis]]                                # cartesian product over one key
    key = "train.seed"
    values = [0, 1]
    [[axis]]                                # zipped lists: one point per index
    zip = { "model.d_model" = [64, 128], "model.n_heads" = [2, 4] }
    [[axis]]                                # a generator (see GENERATORS)
    generator = "sizes"
    N_min = 1e4
    N_max = 1e6
    count = 5

A sweep may come in several sizes from one file. Each `[scale.NAME]` table maps dotted paths to the values that
NAME uses instead: `"train.steps" = 300` sets a base config key, `"axis.1.N_max" = 1e5` sets a field of the second
axis (counted from 0). `jscale run --scale NAME` picks one (default: cpu, when the file has scales):

    [scale.cpu]
    "train.steps" = 300
    "axis.0.count" = 4
    [scale.gpu]
    "train.steps" = 3000

`analysis` names the report section that reads the results (see jscale.report; default: the sweep's name).

Axes multiply in order. Generators: `sizes` (log-spaced N at a fixed aspect ratio), `shapes` (fixed N over aspect
ratios d_model/n_layer), `ff_ratios` (fixed N over d_ff/d_model), `heads` (head dimensions at each run's d_model),
`shape_grid` (Kaplan's Fig. 5: at each of several N, aspect ratio, d_ff/d_model and head dimension varied one at a
time around a reference shape; tags shape.N and shape.vary say which),
`isoflop` (for each budget C and size N the steps that spend C), `data_sizes` (data.max_train_tokens), `seeds`,
`learning_rates`, and `kaplan_lr` (sets each run's lr to Kaplan's LR(N) = 0.003239 - 0.0001395 ln N); they live in
jscale.generators.

Runs that share every array shape and step count form a group; a group trains as one vmapped ensemble. Only
the per-member hyperparameters (train.lr, warmup_steps, schedule, decay_fraction, final_lr_fraction, b1, b2,
eps, weight_decay, grad_clip, seed, data_seed, and data.max_train_tokens, subset_seed, subset_chunk) may differ
inside a group.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from jscale import accounting, config, tuning
from jscale.generators import GENERATORS, Point, _resolve
from jscale.config import MEMBER_KEYS, Config, ConfigError, shared_config  # noqa: F401 (re-exported)

@dataclasses.dataclass(frozen=True)
class Run:
    run_id: str  # a stable hash of the resolved config
    name: str  # readable: the axis values that made it
    cfg: Config
    tags: dict[str, Any]

    @property
    def role(self) -> str:
        """pilot (a tuning pilot's run: selection only, never reported) or final."""
        return "pilot" if "tune.point" in self.tags else "final"

    @property
    def awaits_tuning(self) -> bool:
        """A final run whose tuned keys are not chosen yet (its config holds the base values)."""
        return "tune.of" in self.tags and "tune.chosen" not in self.tags

    @property
    def group_key(self) -> str:
        return json.dumps(shared_config(self.cfg), sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Group:
    group_id: str
    runs: tuple[Run, ...]

    @property
    def cfg(self) -> Config:
        return self.runs[0].cfg


@dataclasses.dataclass(frozen=True)
class Sweep:
    name: str
    claim: str
    runs: tuple[Run, ...]
    source: str  # the spec file
    scale: str | None = None  # which [scale.NAME] table was applied
    analysis: str = ""  # the report section for its results
    tune: tuning.Tune | None = None  # a per-point pilot ([tune]); its final runs' tuned keys are set after it
    seeds: int = 1  # replicas of every point over train.seed (init and data order)
    device: str = ""  # the device a scale is sized for ([scale.NAME] device = "H100"): whose throughput estimates it
    budget_minutes: float = 0.0  # the scale's budget on that device; `jscale run` refuses more without --force
    merged: int = 0  # runs of the axes whose config another run already has (trained once; plan says so)

    def describe(self) -> dict[str, Any]:
        """What sweep.json records in the sweep directory."""
        return {"name": self.name, "claim": self.claim, "scale": self.scale, "analysis": self.analysis,
                "source": self.source, "runs": len(self.runs), "seeds": self.seeds,
                "tune": None if self.tune is None else dataclasses.asdict(self.tune)}

    def groups(self, max_members: int) -> list[Group]:
        return group_runs(self.runs, max_members)


def group_runs(runs, max_members: int) -> list[Group]:
    """Runs with equal shapes and steps, in chunks of at most max_members, in a stable order."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.group_key, []).append(run)
    groups = []
    for members in by_key.values():
        members = sorted(members, key=lambda r: r.run_id)
        for i in range(0, len(members), max_members):
            chunk = tuple(members[i:i + max_members])
            gid = hashlib.sha1(",".join(r.run_id for r in chunk).encode()).hexdigest()[:12]
            groups.append(Group(gid, chunk))
    return groups


# Short names of swept keys in run names; derived keys that would only repeat information are left out.
SHORT = {"model.n_layer": "L", "model.d_model": "D", "model.n_heads": "H", "model.d_ff": "F", "model.d_attn": "A",
         "train.lr": "lr", "train.seed": "seed", "data.max_train_tokens": "Dtok", "train.steps": "S",
         "isoflop.budget": "C", "shape.N": "N*", "model.kind": "", "model.n_kv_heads": "KV", "model.reuse": "reuse",
         "model.mem_len": "mem"}
HIDDEN_TAGS = {"shape.vary", "tune.of", "tune.point", "tune.chosen", "train.checkpoint_every", "train.eval_every",
               "train.eval_log_points", "train.warmup_steps", "model.d_attn", "model.d_ff"}


def _tag_text(key: str, value: Any) -> str:
    short = SHORT.get(key, key.split(".")[-1])
    text = f"{value:.3g}" if isinstance(value, float) else str(value)
    return f"{short}={text}" if short else text


def _hash_config(cfg: Config) -> str:
    return hashlib.sha1(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------
# Expansion.


def _flatten(base: dict, where: str) -> dict[str, Any]:
    flat = {}
    for section, table in base.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}.{section}: expected a table of config keys")
        for k, v in table.items():
            flat[f"{section}.{k}"] = v
    return flat


def _axis_points(axis: dict, index: int, run: dict[str, Any]) -> list[Point]:
    where = f"axis[{index}]"
    kinds = [k for k in ("key", "zip", "generator") if k in axis]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of key (with values), zip, or generator")
    if "key" in axis:
        vals = axis.get("values")
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}.values: expected a non-empty list for key {axis['key']!r}")
        _no_other_fields(axis, ("key", "values"), where)
        return [{axis["key"]: v} for v in vals]
    if "zip" in axis:
        _no_other_fields(axis, ("zip",), where)
        table = axis["zip"]
        if not isinstance(table, dict) or not table:
            raise ConfigError(f"{where}.zip: expected a table of key = [values]")
        lengths = {k: len(v) if isinstance(v, list) else -1 for k, v in table.items()}
        if len(set(lengths.values())) != 1 or -1 in lengths.values():
            raise ConfigError(f"{where}.zip: lists must have equal lengths, got "
                              f"{', '.join(f'{k}: {n}' for k, n in lengths.items())}")
        return [dict(zip(table, vals)) for vals in zip(*table.values())]
    gen = GENERATORS.get(axis["generator"])
    if gen is None:
        raise ConfigError(f"{where}.generator: {axis['generator']!r} is not one of {', '.join(GENERATORS)}")
    return gen(axis, run, where)


SWEEP_KEYS = ("name", "claim", "analysis", "base", "axis", "scale", "seeds", "tune")
SCALE_BUDGET_KEYS = ("device", "budget_minutes")  # in a [scale.NAME] table beside its overrides
REFERENCE_DEVICES = ("H100", "cpu")  # jscale.throughput.REFERENCE


def _no_other_fields(axis: dict, allowed: tuple[str, ...], where: str) -> None:
    extra = sorted(set(axis) - set(allowed))
    if extra:
        raise ConfigError(f"{where}.{extra[0]}: unknown field of this axis (it takes {', '.join(allowed)})")


def scales(spec: dict) -> list[str]:
    table = spec.get("scale", {})
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise ConfigError("scale: expected [scale.NAME] tables of \"path\" = value")
    return list(table)


def apply_scale(spec: dict, scale: str | None) -> tuple[dict, str | None]:
    """The spec with [scale.NAME]'s values put in place; with no NAME, cpu if the file has scales."""
    names = scales(spec)
    if scale is None:
        if not names:
            return spec, None
        scale = "cpu" if "cpu" in names else names[0]
    if scale not in names:
        raise ConfigError(f"--scale: {scale!r} is not a scale of this sweep "
                          f"({', '.join(names) if names else 'it defines no [scale.NAME] tables'})")
    base = {k: dict(v) if isinstance(v, dict) else v for k, v in spec.get("base", {}).items()}
    axes = [dict(a) if isinstance(a, dict) else a for a in spec.get("axis", [])]
    budget = {}
    for path, value in spec["scale"][scale].items():
        where = f'scale.{scale}."{path}"'
        parts = path.split(".")
        if path in SCALE_BUDGET_KEYS:
            budget[path] = value
        elif parts[0] == "axis":
            if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= len(axes):
                raise ConfigError(f"{where}: expected axis.I.FIELD with I from 0 to {len(axes) - 1}")
            if not isinstance(axes[int(parts[1])], dict):
                raise ConfigError(f"{where}: axis {parts[1]} is not a table")
            axes[int(parts[1])][parts[2]] = value
        elif len(parts) == 2 and parts[0] in config.SECTIONS:
            base.setdefault(parts[0], {})[parts[1]] = value
        else:
            raise ConfigError(f"{where}: expected section.key (one of {', '.join(config.SECTIONS)}), axis.I.FIELD, "
                              f"device or budget_minutes")
    if "budget_minutes" in budget and (isinstance(budget["budget_minutes"], bool) or
                                       not isinstance(budget["budget_minutes"], (int, float)) or
                                       budget["budget_minutes"] <= 0):
        raise ConfigError(f"scale.{scale}.budget_minutes: must be a positive number of minutes")
    if "device" in budget and budget["device"] not in REFERENCE_DEVICES:
        raise ConfigError(f"scale.{scale}.device: {budget['device']!r} has no reference throughput (known: "
                          f"{', '.join(REFERENCE_DEVICES)})")
    return {**spec, "base": base, "axis": axes, "_budget": budget}, scale


def expand(spec: dict, source: str = "<dict>", overrides: list[str] = (), scale: str | None = None) -> Sweep:
    """Expand a parsed sweep spec (at one of its scales) into validated runs (duplicates removed)."""
    unknown = set(spec) - set(SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown sweep key (expected {', '.join(SWEEP_KEYS)})"
                          f"{config.did_you_mean(sorted(unknown)[0], SWEEP_KEYS)}")
    spec, scale = apply_scale(spec, scale)
    base = config.apply_overrides(spec.get("base", {}), list(overrides))
    runs: list[tuple[dict[str, Any], dict[str, Any]]] = [(_flatten(base, "base"), {})]
    axes = spec.get("axis", [])
    if not isinstance(axes, list):
        raise ConfigError("axis: expected [[axis]] tables")
    for i, axis in enumerate(axes):
        if not isinstance(axis, dict):
            raise ConfigError(f"axis[{i}]: expected a table")
        runs = [({**flat, **point}, {**tags, **point}) for flat, tags in runs
                for point in _axis_points(axis, i, flat)]
    out, seen, merged = [], set(), 0
    seeds = spec.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"seeds: the number of seeds per point must be an integer >= 1, got {seeds!r}")
    if seeds > 1:  # every point replicated over train.seed (init and, with data_seed unset, data order)
        runs = [({**flat, "train.seed": flat.get("train.seed", 0) + s}, {**tags, "train.seed": flat.get(
            "train.seed", 0) + s}) for flat, tags in runs for s in range(seeds)]
    tune = tuning.parse(spec["tune"]) if "tune" in spec else None
    for key in tune.keys if tune is not None else ():
        if any(key in tags for _, tags in runs):
            raise ConfigError(f"tune.grid.{key}: also set by an [[axis]]; tune it or sweep it, not both")
    for flat, tags in runs:
        cfg = _resolve(flat, "sweep run " + (", ".join(f"{k}={v}" for k, v in tags.items()) or "base"))
        if tune is not None:
            tags = {**tags, "tune.of": tuning.point_of(cfg, tune)}
        run_id = _hash_config(cfg)  # a tuned run's id changes once its values are chosen (tuned_runs)
        if run_id in seen:
            merged += 1
            continue
        seen.add(run_id)
        name = " ".join(_tag_text(k, v) for k, v in tags.items() if k not in HIDDEN_TAGS) or "base"
        out.append(Run(run_id, name, cfg, tags))
    if not out:
        raise ConfigError("axis: the sweep expands to no runs")
    sized = config.pilot_sized(out[0].cfg.data)
    if sized and tune is None:
        raise ConfigError(f"data.{sized[0]}: sizes the final evaluations from a point's pilots; this sweep has no "
                          f"[tune] table (use data.eval_tokens / data.curve_eval_windows)")
    if tune is not None:
        out += pilot_runs(out, tune)
    name = str(spec.get("name", Path(source).stem))
    budget = spec.get("_budget", {})
    return Sweep(name=name, claim=str(spec.get("claim", "")), runs=tuple(out), source=source, scale=scale,
                 analysis=str(spec.get("analysis", name)), tune=tune, seeds=seeds, device=budget.get("device", ""),
                 budget_minutes=float(budget.get("budget_minutes", 0.0)), merged=merged)


def pilot_runs(finals: list[Run], tune: tuning.Tune, grid: dict[str, list] | None = None,
               fixed: dict[str, dict[str, float]] | None = None) -> list[Run]:
    """The pilot runs of every tuned point among these final runs: one per combination of the grid (default: the
    tune's), at the point's first seed. fixed: per point, values of keys the grid leaves out (an extension)."""
    grid = dict(tune.grid) if grid is None else grid
    firsts: dict[str, Run] = {}
    for r in sorted(finals, key=lambda r: (r.cfg.train.seed, r.run_id)):
        if "tune.of" in r.tags:
            firsts.setdefault(r.tags["tune.of"], r)
    out = []
    for point, first in firsts.items():
        for values in tuning.combinations(grid):
            values = {**(fixed or {}).get(point, {}), **values}
            cfg = tuning.pilot_config(first.cfg, tune, values)
            tags = {"tune.point": point, **values}
            name = f"pilot {first.name} " + " ".join(_tag_text(k, v) for k, v in values.items())
            out.append(Run(_hash_config(cfg), name, cfg, tags))
    return out


def tuned_runs(finals: list[Run], chosen: dict[str, dict[str, float]]) -> list[Run]:
    """The final runs of the points with a choice, with the chosen values put in (and their ids from them)."""
    out = []
    for r in finals:
        values = chosen.get(r.tags.get("tune.of"))
        if values is None:
            continue
        cfg = tuning.apply(r.cfg, values)
        name = r.name + " " + " ".join(_tag_text(k, v) for k, v in values.items() if k not in tuning.EVAL_SIZE_KEYS)
        out.append(Run(_hash_config(cfg), name, cfg, {**r.tags, **values, "tune.chosen": True}))
    return out


def load(path: str | Path, overrides: list[str] = (), scale: str | None = None) -> Sweep:
    return expand(config.read_toml(path, "sweep"), str(path), overrides, scale)


def run_row(run: Run, group_id: str) -> dict[str, Any]:
    """The runs-table row of a planned run."""
    m, t = run.cfg.model, run.cfg.train
    acc = accounting.account(m)
    return {"run_id": run.run_id, "name": run.name, "group_id": group_id, "config": json.dumps(run.cfg.to_dict()),
            "tags": json.dumps(run.tags), "kind": m.kind, "n_layer": m.n_layer, "d_model": m.d_model, "d_ff": m.d_ff_,
            "d_attn": m.d_attn_, "n_heads": m.n_heads, "n_ctx": m.n_ctx, "vocab_size": m.vocab_size, "N": acc.N,
            "N_total": acc.N_total, "flops_per_token_6N": acc.train_flops_6N,
            "flops_per_token_exact": acc.train_flops_exact, "D": run.cfg.data.max_train_tokens,
            "tokens": t.steps * t.batch_size * m.n_ctx, "steps": t.steps, "batch_size": t.batch_size, "seed": t.seed,
            "lr": t.lr, "role": run.role, "point": run.tags.get("tune.point") or tuning.point_id(run.cfg)}


def plan_table(sweep: Sweep, groups: list[Group]) -> str:
    """What `jscale plan` prints: every run with N, FLOPs and tokens, its group, and the totals."""
    lines = [f"sweep {sweep.name}" + (f" at scale {sweep.scale}" if sweep.scale else "") +
             f": {len(sweep.runs)} runs in {len(groups)} groups" +
             (f"  (claim: {sweep.claim})" if sweep.claim else "")]
    if sweep.merged:
        lines.append(f"note: {sweep.merged} run{'s' if sweep.merged > 1 else ''} of the axes repeat another run's "
                     f"config exactly and {'are' if sweep.merged > 1 else 'is'} trained once (merged)")
    lines.append(f"{'group':<13}{'run':<13}{'name':<44}{'N':>10}{'N_total':>10}{'steps':>7}{'tokens':>10}"
                 f"{'C (6ND)':>10}{'C exact':>10}")
    total_6n = total_exact = 0.0
    for g in groups:
        for run in g.runs:
            row = run_row(run, g.group_id)
            c6, ce = row["tokens"] * row["flops_per_token_6N"], row["tokens"] * row["flops_per_token_exact"]
            total_6n, total_exact = total_6n + c6, total_exact + ce
            lines.append(f"{g.group_id:<13}{run.run_id:<13}{run.name[:43]:<44}{row['N']:>10.3g}{row['N_total']:>10.3g}"
                         f"{row['steps']:>7}{row['tokens']:>10.3g}{c6:>10.3g}{ce:>10.3g}")
    sizes = sorted((len(g.runs) for g in groups), reverse=True)
    lines.append(f"ensembles: {len(groups)} groups of sizes {sizes}")
    eval_flops = sum(accounting.eval_cost(r.cfg)["flops"] for g in groups for r in g.runs)
    tuned = [r for r in sweep.runs if r.awaits_tuning]
    if tuned:
        lines.append(f"tuning: {len(tuned)} final runs take the values their pilots choose on validation loss "
                     f"(grid {', '.join(f'{k} {list(v)}' for k, v in sweep.tune.grid)}, pilots at "
                     f"{sweep.tune.fraction:g} of the steps)")
    lines.append(f"evaluation: {eval_flops:.3e} FLOPs over all runs ({100 * eval_flops / max(total_exact, 1):.0f}% of "
                 f"training)")
    sized = [(k, getattr(r.cfg.data, k)) for r in tuned[:1] for k in config.pilot_sized(r.cfg.data)]
    if sized:
        lines.append("evaluation: after the pilots, " + " and ".join(
            f"{'final' if k == 'eval_se' else 'curve'} evaluations are sized for a paired standard error of {v:g} nats"
            for k, v in sized) + " (data.eval_se, data.curve_eval_se; at most the windows counted above)")
    lines.append(f"estimated compute: {total_6n:.3e} FLOPs (6ND), {total_exact:.3e} FLOPs (exact) = "
                 f"{total_exact / accounting.PF_DAY:.3e} PF-days")
    return "\n".join(lines)
