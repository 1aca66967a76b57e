"""Sweep axis generators: each turns an axis table (`generator = "sizes"`, ...) and one partially built run (a dict
of dotted config keys) into the points it expands into (dicts of dotted keys to set). See jscale.sweep for the file
format; GENERATORS names them.

- `sizes`: N_min to N_max, log-spaced, as shapes of an aspect ratio or widths at a fixed depth (d_model a multiple of
  d_head), each kept inside [N_min, N_max];
- `shapes`, `ff_ratios`, `heads`, `shape_grid`: shapes at a fixed N (Kaplan's Fig. 5);
- `isoflop`: for each budget C and size N the steps that spend C;
- `data_sizes`, `seeds`, `learning_rates`: lists of values; `kaplan_lr`: Kaplan's LR(N).
"""

from __future__ import annotations

import math
from typing import Any, Callable

from jscale import accounting, config
from jscale.config import Config, ConfigError
from jscale.resolve import resolve

Point = dict[str, Any]


def _need(spec: dict, key: str, where: str, kind=(int, float)):
    if key not in spec:
        raise ConfigError(f"{where}.{key}: missing")
    v = spec[key]
    if not isinstance(v, kind) or isinstance(v, bool):
        raise ConfigError(f"{where}.{key}: expected {getattr(kind, '__name__', 'a number')}, got {v!r}")
    return v


def shape_at_depth(N: float, n_layer: int, d_head: int, ff_ratio: float = 4) -> Point:
    """A Transformer of about N non-embedding parameters at a fixed depth: N = 2 n_layer d (2 d + ff_ratio d) with
    d = d_model = d_attn a multiple of d_head, and d_ff = ff_ratio d."""
    d_model = max(d_head, round(math.sqrt(N / (2 * n_layer * (2 + ff_ratio))) / d_head) * d_head)
    return {"model.n_layer": n_layer, "model.d_model": d_model, "model.n_heads": d_model // d_head,
            "model.d_ff": round(ff_ratio * d_model), "model.d_attn": d_model}


def shape_for(N: float, aspect_ratio: float, d_head: int) -> Point:
    """n_layer and d_model with 12 n_layer d_model^2 ~ N and d_model / n_layer ~ aspect_ratio (d_model a multiple
    of d_head, d_ff = 4 d_model, d_attn = d_model)."""
    d_model = max(d_head, round((N * aspect_ratio / 12) ** (1 / 3) / d_head) * d_head)
    n_layer = max(1, round(d_model / aspect_ratio))
    return shape_at_depth(N, n_layer, d_head)  # d_model re-fitted to the rounded depth, so N stays near its target


def width_for(N: float, n_layer: int, kind: str, d_head: int) -> Point:
    """d_model (a multiple of d_head) for N non-embedding parameters at a fixed depth: a Transformer's blocks as
    shape_at_depth, or LSTM layers of 8 d_model^2 each."""
    if kind != "lstm":
        return shape_at_depth(N, n_layer, d_head)
    d_model = max(d_head, round(math.sqrt(N / (8 * n_layer)) / d_head) * d_head)
    return {"model.n_layer": n_layer, "model.d_model": d_model}


def _sizes(spec, run, where):
    lo, hi = _need(spec, "N_min", where), _need(spec, "N_max", where)
    count = _need(spec, "count", where, int)
    if not 0 < lo <= hi or count < 1:
        raise ConfigError(f"{where}: need 0 < N_min <= N_max and count >= 1")
    ratio, d_head = spec.get("aspect_ratio", 32), spec.get("d_head", 16)
    Ns = [lo * (hi / lo) ** (i / max(count - 1, 1)) for i in range(count)]
    # An LSTM keeps its own model.n_layer and is sized by width; so is a Transformer when the axis gives n_layer.
    kind = run.get("model.kind", "transformer")
    n_layer = run.get("model.n_layer", config.ModelConfig.n_layer) if kind == "lstm" else spec.get("n_layer")
    if n_layer is not None:
        if not isinstance(n_layer, int) or n_layer < 1:
            raise ConfigError(f"{where}.n_layer: expected a positive integer, got {n_layer!r}")
        shapes = [width_for(n, n_layer, kind, d_head) for n in Ns]
    else:
        shapes = [shape_for(n, ratio, d_head) for n in Ns]
    return [_within(p, n, lo, hi, kind, d_head, n_layer is None, where) for p, n in zip(shapes, Ns)]


def _non_embedding(point: Point, kind: str) -> float:
    d, L = point["model.d_model"], point["model.n_layer"]
    return 8 * L * d * d if kind == "lstm" else 2 * L * d * (2 * point["model.d_attn"] + point["model.d_ff"])


def _within(point: Point, target: float, lo: float, hi: float, kind: str, d_head: int, free_depth: bool,
            where: str) -> Point:
    """A shape whose width rounding (d_model a multiple of d_head) put N outside [N_min, N_max] moves to the shape
    nearest its target N inside: a width one or two d_head steps away (and a layer more or less where the axis does
    not fix the depth); when none lands inside, the range is too narrow for the step: one line."""
    if lo <= _non_embedding(point, kind) <= hi:
        return point
    L0, d0 = point["model.n_layer"], point["model.d_model"]
    candidates = []
    for L in ([L0 - 1, L0, L0 + 1] if free_depth else [L0]):
        for d in range(max(d_head, d0 - 2 * d_head), d0 + 3 * d_head, d_head):
            if L < 1:
                continue
            p = {**point, "model.n_layer": L, "model.d_model": d}
            if kind != "lstm":
                ratio = point["model.d_ff"] / d0
                p.update({"model.n_heads": d // d_head, "model.d_ff": round(ratio * d), "model.d_attn": d})
            n = _non_embedding(p, kind)
            if lo <= n <= hi:
                candidates.append((abs(math.log(n / target)), L != L0, d, p))
    if not candidates:
        raise ConfigError(f"{where}: no width (a multiple of d_head = {d_head}) at {L0} layers gives N in "
                          f"[{lo:g}, {hi:g}] (the nearest: {_non_embedding(point, kind):g}); widen the range or set "
                          f"a smaller d_head")
    return min(candidates, key=lambda c: c[:3])[3]


def _shape_grid(spec, run, where):
    """Kaplan's Fig. 5 at each N in spec["N"]: a reference shape (aspect_ratio, d_ff = 4 d_model, d_head), then
    the aspect ratio, d_ff/d_model and the head dimension varied one at a time. Each point is tagged with its
    target N ("shape.N") so the report can compare runs made for the same N."""
    Ns = spec.get("N")
    if not isinstance(Ns, list) or not Ns or not all(isinstance(n, (int, float)) and n > 0 for n in Ns):
        raise ConfigError(f"{where}.N: expected a list of positive parameter counts")
    ratio, d_head = spec.get("aspect_ratio", 16), spec.get("d_head", 16)
    out = []
    for N in Ns:
        ref = shape_for(N, ratio, d_head)
        variants = [("reference", ref)]
        variants += [("aspect_ratio", shape_for(N, r, d_head)) for r in spec.get("aspect_ratios", [])]
        variants += [("ff_ratio", shape_at_depth(N, ref["model.n_layer"], d_head, r))
                     for r in spec.get("ff_ratios", [])]
        for h in spec.get("d_heads", []):
            if ref["model.d_attn"] % h == 0:
                variants.append(("d_head", {**ref, "model.n_heads": ref["model.d_attn"] // h}))
        # A variant equal to the reference is dropped as a duplicate run; the reference serves every panel.
        out += [{**v, "shape.N": float(N), "shape.vary": vary} for vary, v in variants]
    return out


def _shapes(spec, run, where):
    N = _need(spec, "N", where)
    ratios = spec.get("aspect_ratios")
    if not isinstance(ratios, list) or not ratios:
        raise ConfigError(f"{where}.aspect_ratios: expected a list of d_model/n_layer values")
    return [shape_for(N, r, spec.get("d_head", 16)) for r in ratios]


def _ff_ratios(spec, run, where):
    N, n_layer = _need(spec, "N", where), _need(spec, "n_layer", where, int)
    d_head = spec.get("d_head", 16)
    return [shape_at_depth(N, n_layer, d_head, r) for r in spec.get("ratios", [1, 2, 4, 8, 16])]


def _heads(spec, run, where):
    d_model = run.get("model.d_model", config.ModelConfig.d_model)
    d_attn = run.get("model.d_attn") or d_model
    out = []
    for h in spec.get("d_heads", [8, 16, 32, 64]):
        if d_attn % h == 0:
            out.append({"model.n_heads": d_attn // h})
    if not out:
        raise ConfigError(f"{where}.d_heads: none divides d_attn = {d_attn}")
    return out


def _isoflop(spec, run, where):
    budgets = spec.get("budgets")
    if not isinstance(budgets, list) or not budgets:
        raise ConfigError(f"{where}.budgets: expected a list of compute budgets in FLOPs")
    sizes = spec.get("sizes")
    if not isinstance(sizes, dict):
        raise ConfigError(f"{where}.sizes: expected a table like {{N_min = 1e4, N_max = 1e6, count = 5}}")
    convention = spec.get("convention", "all")
    if convention not in ("all", "non_embedding", "exact"):
        raise ConfigError(f"{where}.convention: {convention!r} is not one of all, non_embedding, exact")
    min_steps, evals = spec.get("min_steps", 20), spec.get("evals", 4)
    base = _resolve(run, where)
    tokens_per_step = base.train.batch_size * base.model.n_ctx
    out = []
    for C in budgets:
        for shape in _sizes(sizes, run, f"{where}.sizes"):
            cfg = _resolve({**run, **shape}, where)
            acc = accounting.account(cfg.model)
            # FLOPs per training token: 6 N_total or 6 N (C = 6ND), or the exact count (attention and unembedding in)
            per_token = {"all": 6 * acc.N_total, "non_embedding": 6 * acc.N, "exact": acc.train_flops_exact}[convention]
            steps = round(C / (per_token * tokens_per_step))
            if steps < min_steps:
                continue  # this size cannot spend the budget in a meaningful run
            out.append({**shape, "train.steps": steps,
                        "train.warmup_steps": min(base.train.warmup_steps, max(1, steps // 10)),  # at most 10%
                        "train.eval_every": max(1, steps // evals),
                        "train.checkpoint_every": max(1, steps // evals) * evals,
                        "isoflop.budget": float(C)})
    if not out:
        raise ConfigError(f"{where}: every (budget, size) pair gives fewer than {min_steps} steps")
    return out


def _values(key):
    def gen(spec, run, where):
        vals = spec.get("values")
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}.values: expected a non-empty list")
        return [{key: int(v) if key.endswith(("max_train_tokens", "seed")) else v} for v in vals]

    return gen


def _kaplan_lr(spec, run, where):
    cfg = _resolve(run, where)
    N = accounting.account(cfg.model).N
    return [{"train.lr": 0.003239 - 0.0001395 * math.log(N)}]


GENERATORS: dict[str, Callable] = {
    "sizes": _sizes, "shapes": _shapes, "ff_ratios": _ff_ratios, "heads": _heads, "shape_grid": _shape_grid,
    "isoflop": _isoflop,
    "data_sizes": _values("data.max_train_tokens"), "seeds": _values("train.seed"),
    "learning_rates": _values("train.lr"), "kaplan_lr": _kaplan_lr,
}


def _nest(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    nested: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        if k.split(".")[0] not in config.SECTIONS:
            continue  # bookkeeping tags such as isoflop.budget, not config keys
        section, _, key = k.partition(".")
        nested.setdefault(section, {})[key] = v
    return nested


def _resolve(flat: dict[str, Any], where: str) -> Config:
    try:
        return resolve(config.from_dict(_nest(flat)))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
