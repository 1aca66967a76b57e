"""What every report section shares: the experiment as read from its results database, the section it fills, the
one verdict rule applied to it (jscale.verdicts), intervals from seeds and windows (jscale.noise), the measurement
table with each run's regime, and plotting styles."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from jscale import laws, noise, plots, regime, results, tuning
from jscale.errors import JscaleError
from jscale.verdicts import Region, Verdict, decide

# Kaplan et al. 2020 (and Hoffmann et al. 2022) numbers the sections compare against; reference/scaling.md.
KAPLAN = {"alpha_N": 0.076, "alpha_D": 0.095, "alpha_C_min": 0.050, "alpha_C_naive": 0.057, "nd_alpha_N": 0.076,
          "nd_alpha_D": 0.103, "overfit_exponent": 0.74, "a_kaplan": 0.73}
CHINCHILLA_A = {"approach 1 (envelope)": 0.50, "approach 2 (IsoFLOP)": 0.49, "approach 3 (parametric)": 0.46}
N_BOOTSTRAP = 1000


@dataclasses.dataclass
class Section:
    name: str
    title: str
    claim: str
    scale: str | None
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> matplotlib Figure
    numbers: list[tuple[str, str, str, str]] = dataclasses.field(default_factory=list)  # quantity, ours, CI, paper
    verdicts: list[str] = dataclasses.field(default_factory=list)
    decisions: list[Verdict] = dataclasses.field(default_factory=list)  # the verdicts as decided (tests read them)
    notes: list[str] = dataclasses.field(default_factory=list)
    tables: list[tuple[list[str], list[list[str]]]] = dataclasses.field(default_factory=list)  # header, rows


@dataclasses.dataclass
class Experiment:
    path: Path
    info: dict[str, Any]  # sweep.json
    runs: Any  # DataFrame of finished runs, with "loss" (final test loss) and config columns
    curves: Any
    positions: Any
    n_planned: int  # runs in the sweep, finished or not
    windows: dict = dataclasses.field(default_factory=dict)  # run_id -> test per-window losses (W,)
    grids: dict = dataclasses.field(default_factory=dict)  # run_id -> test per-window per-position losses (W, T)
    tuning: Any = None
    evals: Any = None  # one row per evaluation and evaluation set (run_id, step, split, loss, se, ...)
    blocks: dict = dataclasses.field(default_factory=dict)  # results.load's: (split, n_ctx, context, W) -> documents
    pilots: dict = dataclasses.field(default_factory=dict)  # tuned point -> (lrs, validation losses (G, W), blocks)
    anneals: Any = None  # results.load's cooldown branches (each run's final evaluation as its longest horizon)

    def window_blocks(self, n_ctx: int, n_windows: int, split: str = "test") -> np.ndarray | None:
        """The document of each of a set's windows (None: not recorded, as in older databases)."""
        return regime._blocks_for(self.blocks, n_ctx, n_windows, split)

    @property
    def name(self) -> str:
        return self.info.get("name", self.path.name)

def pd_errors() -> type[Exception]:
    import pandas as pd

    return pd.errors.DatabaseError

def find_experiments(root: Path) -> list[Experiment]:
    dirs = [root] if (root / results.DB_NAME).exists() else sorted(
        p.parent for p in root.glob(f"*/{results.DB_NAME}"))
    if not dirs:
        raise JscaleError(f"{root}: no jscale sweep directories here (no {results.DB_NAME} in it or its "
                          f"subdirectories)")
    out = []
    for d in dirs:
        info_path = d / "sweep.json"
        try:
            info = json.loads(info_path.read_text()) if info_path.exists() else {"name": d.name, "analysis": d.name}
        except json.JSONDecodeError as e:
            raise JscaleError(f"{info_path}: not valid JSON ({e})") from None
        try:
            tables = results.load(d)
        except (sqlite3.DatabaseError, pd_errors()) as e:
            raise JscaleError(f"{d / results.DB_NAME}: not a readable jscale results database ({e})") from None
        runs = tables["runs"]
        runs = runs[runs["role"].fillna("final") != "pilot"]  # a tuning pilot selects; it is never reported
        done = runs[runs["status"] == "done"].copy()
        done["loss"] = done["final_test_loss"]
        done["point"] = [p if isinstance(p, str) and p else r for p, r in zip(done["point"], done["run_id"])]
        done = regime.table(done, tables["curves"], tables.get("anneals"), tables.get("blocks"))
        done["tags_"] = [json.loads(t) for t in done["tags"]]
        done["config_"] = [json.loads(c) for c in done["config"]]
        done["reuse"] = [c["model"].get("reuse", 1) for c in done["config_"]]
        done["mem_len"] = [c["model"].get("mem_len", 0) for c in done["config_"]]
        done["n_kv_heads"] = [c["model"].get("n_kv_heads") or c["model"]["n_heads"] for c in done["config_"]]
        done["tokens_trained"] = done["steps"] * done["batch_size"] * done["n_ctx"]
        done["C_6N"] = 6.0 * done["N"] * done["tokens_trained"]
        done["C_exact"] = done["flops_per_token_exact"] * done["tokens_trained"]
        test = tables["windows"][tables["windows"]["split"] == "test"]
        windows = dict(zip(test["run_id"], test["losses"]))
        grids = {r: g for r, g in zip(test["run_id"], test.get("positions", [None] * len(test))) if g is not None}
        out.append(Experiment(d, info, done, tables["curves"], tables["positions"], len(runs), windows, grids,
                              tables["tuning"], tables["evals"], tables.get("blocks", {}),
                              _pilot_windows(tables), tables.get("anneals")))
    return sorted(out, key=lambda e: e.name)  # jscale.report puts them in its sections' order

def _pilot_windows(tables) -> dict:
    """Per tuned point whose grid is the learning rate alone: its pilots' learning rates, their per-window validation
    losses (G, W) and the windows' documents, for the learning-rate choice's noise (noise.lr_penalties)."""
    runs, windows = tables["runs"], tables["windows"]
    pilots = runs[(runs["role"] == "pilot") & (runs["status"] == "done")]
    val = windows[windows["split"] == "validation"].set_index("run_id")["losses"]
    out = {}
    for t in tables["tuning"].itertuples():
        if json.loads(t.keys) != ["train.lr"]:
            continue
        g = pilots[pilots["point"] == t.point]
        have = [(float(r.lr), val[r.run_id], int(r.n_ctx)) for r in g.itertuples() if r.run_id in val.index]
        if len(have) < 3 or len({len(w) for _, w, _ in have}) != 1:
            continue
        lrs, losses = [h[0] for h in have], np.stack([np.asarray(h[1], float) for h in have])
        out[t.point] = (lrs, losses, regime._blocks_for(tables.get("blocks", {}), have[0][2], losses.shape[1],
                                                        "validation"))
    return out


@dataclasses.dataclass
class Measured:
    """Points as measured, with everything their intervals need (noise.hierarchical_bootstrap)."""
    points: Any  # one row per point (points_of)
    losses: list[np.ndarray]  # per point, (seeds, windows) test losses
    blocks: np.ndarray | None  # each window's document
    penalties: list[np.ndarray | None]  # per point, the learning-rate choice's penalty draws

    def bootstrap(self, statistic, n_bootstrap: int, scatter=None, min_points: int = noise.MIN_POINTS,
                  seed: int = 0) -> noise.Estimate:
        return noise.hierarchical_bootstrap(self.losses, statistic, n_bootstrap, seed=seed, min_points=min_points,
                                            blocks=self.blocks, penalties=self.penalties, scatter=scatter)


def measured(exp: Experiment, runs, n_bootstrap: int, seed: int = 0) -> Measured:
    """The runs as points (seed replicas pooled) with their windows' documents and, per tuned point, the draws of
    the learning-rate choice's penalty from its pilots."""
    points, losses = points_of(exp, runs)
    W = losses[0].shape[1] if losses else 0
    blocks = exp.window_blocks(int(points["n_ctx"].iloc[0]), W) if len(points) and W > 1 else None
    rng = np.random.default_rng(seed + 1)
    penalties = []
    for p in points.itertuples():
        pilot = exp.pilots.get(p.tags_.get("tune.of")) if isinstance(p.tags_, dict) else None
        penalties.append(None if pilot is None or not n_bootstrap else
                         noise.lr_penalties(pilot[1], pilot[0], float(p.lr), pilot[2], n_bootstrap, rng))
    return Measured(points, losses, blocks, penalties)


def tuning_problem(exp: Experiment, runs) -> str | None:
    """Why a comparison or an IsoFLOP minimum cannot rest on these runs' tuning: points whose learning-rate optimum
    stayed at the edge of its grid (the comparison would measure the grid, not the models). None when all are
    bracketed (or untuned)."""
    if exp.tuning is None or not len(exp.tuning):
        return None
    edge = set(exp.tuning.loc[exp.tuning["bracketed"] == 0, "point"])
    hit = [r for r in runs.itertuples() if isinstance(r.tags_, dict) and r.tags_.get("tune.of") in edge]
    if not hit:
        return None
    names = sorted({r.name.split(" seed=")[0] for r in hit})
    return (f"the learning rate of {len(names)} point(s) stayed at the edge of its grid after extending "
            f"({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})")


def join_problems(*problems: str | None) -> str | None:
    found = [p for p in problems if p]
    return "; ".join(found) or None


def interval_text(fitted: laws.FittedLaw, key: str, fmt: str = ".3f") -> str:
    lo_hi = fitted.intervals.get(key)
    return f"{lo_hi[0]:{fmt}} to {lo_hi[1]:{fmt}}" if lo_hi else "-"

def in_interval(fitted: laws.FittedLaw, key: str, value: float) -> bool:
    lo_hi = fitted.intervals.get(key)
    return bool(lo_hi) and lo_hi[0] <= value <= lo_hi[1]

def fit_power(X, loss, variable="N", bootstrap: int = N_BOOTSTRAP) -> laws.FittedLaw:
    return laws.fit_power(np.asarray(X, float), np.asarray(loss, float), variable=variable, n_bootstrap=bootstrap)

def points_of(exp: Experiment, runs) -> tuple[Any, list[np.ndarray]]:
    """The runs as measured points (seed replicas of one config pooled): a table with one row per point (the
    first replica's columns, its mean loss, its seed count) and per point an array (seeds, windows) of per-window
    test losses for noise.hierarchical_bootstrap; without stored windows (older results) each replica's final
    loss stands in, (seeds, 1), and only seed noise is in the interval."""
    rows, losses = [], []
    ids = list(runs["run_id"])
    have_windows = all(r in exp.windows for r in ids) and len({len(exp.windows[r]) for r in ids}) == 1
    for _, g in runs.groupby("point", sort=False):
        first = g.iloc[0].copy()
        if have_windows:
            arr = np.stack([exp.windows[r] for r in g["run_id"]]).astype(float)
        else:
            arr = g["loss"].to_numpy(float)[:, None]
        first["loss"], first["seeds"] = float(arr.mean()), len(g)
        rows.append(first)
        losses.append(arr)
    import pandas as pd

    return pd.DataFrame(rows).reset_index(drop=True), losses

def verdict(sec: Section, claim: str, est: noise.Estimate | None, region: Region, regime_problem: str | None,
            estimate: float | None = None, interval=None, n_points: int | None = None) -> Verdict:
    """One verdict by the one rule, recorded in the section with its region's kind (quantitative or direction
    only) and, where the interval was taken from several, their components."""
    if est is not None:
        v = decide(claim, est.value, est.interval, region, est.n_points, est.failed, est.resamples, regime_problem)
        if est.components or est.note:
            v = dataclasses.replace(v, reason=f"{v.reason}; interval from {est.components_text()}")
    else:
        v = decide(claim, estimate, interval, region, n_points, regime_problem=regime_problem)
    sec.decisions.append(v)
    sec.verdicts.append(v.sentence())
    return v

def law_estimate(fit: laws.FittedLaw, key: str) -> noise.Estimate:
    """A fitted law's parameter as an Estimate (its bootstrap over points or runs)."""
    value = fit.params.get(key, fit.derived.get(key))
    boot = fit.info.get("bootstrap", {})
    return noise.Estimate(float(value), fit.intervals.get(key), boot.get("resamples", 0), boot.get("failed", 0),
                          fit.n_points)

def measurement_table(exp: Experiment, sec: Section, baselines: dict[int, float] | None) -> None:
    """Each run's regime and noise, and its loss against the n-gram baselines on the same windows."""
    runs = exp.runs.sort_values(["N", "name"])
    if not len(runs):
        return
    header = ["run", "N", "seed", "tokens/param", "epochs", "val improvement, last 30%",
              "annealed improvement per doubling (95% CI)", "constant-LR log-slope", "regime",
              "test loss ± SE"] + ([f"vs {n}-gram" for n in (2, 3, 5)] if baselines else [])
    rows = []
    for r in runs.itertuples():
        se = r.final_test_se if r.final_test_se is not None and np.isfinite(r.final_test_se) else float("nan")
        doubling = "-" if not np.isfinite(r.doubling) else (
            f"{100 * r.doubling:.2f}%" + ("" if not np.isfinite(r.doubling_lo) else
                                          f" ({100 * r.doubling_lo:.2f} to {100 * r.doubling_hi:.2f})"))
        row = [r.name, f"{r.N:,}", f"{r.seed}", f"{r.tokens_per_param:.3g}",
               "-" if not np.isfinite(r.epochs) else f"{r.epochs:.3g}", f"{100 * r.late_improvement:.2f}%",
               doubling, "-" if not np.isfinite(r.log_slope) else f"{r.log_slope:.3f}",
               r.regime, f"{r.loss:.4f} ± {se:.4f}"]
        if baselines:
            row += [f"{100 * (r.loss / baselines[n] - 1):+.1f}%" for n in (2, 3, 5)]
        rows.append(row)
    sec.tables.append((header, rows))
    counts = runs["regime"].value_counts().to_dict()
    sec.notes.append("Regimes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) +
                     f" (converged: the annealed validation loss, measured by cooldown branches at half the run's "
                     f"tokens and at all of them, improved < {100 * regime.CONVERGED_DOUBLING:.0f}% over that "
                     f"doubling; unmeasured: no cooldown branches; overfitting: validation rose > "
                     f"{regime.RISE_SE:g} SE above its best). The improvement over the last "
                     f"{100 * regime.LATE_FRACTION:.0f}% is shown, not judged: under WSD it is mostly the cooldown.")
    if baselines:
        sec.notes.append("n-gram baselines (Witten-Bell, counted on the train split, scored on the same test "
                         "windows): " + ", ".join(f"{n}-gram {v:.3f}" for n, v in sorted(baselines.items())) +
                         " nats/token.")
    if exp.tuning is not None and len(exp.tuning):
        trows = []
        for t in exp.tuning.itertuples():
            trows.append([t.point, tuning.values_text(json.loads(t.chosen)), t.note,
                          tuning.pilots_text(json.loads(t.losses))])
        sec.tables.append((["tuned point", "chosen (validation)", "bracketing", "pilot validation losses"], trows))

def corpus_baselines(exp: Experiment) -> dict[int, float] | None:
    """n-gram baselines for the sweep's corpus and windows (when every run shares them), cached with the corpus."""
    from jscale import config, data, ngram

    cfgs = {json.dumps([c["data"], c["model"]["n_ctx"]], sort_keys=True) for c in exp.runs["config_"]}
    if len(cfgs) != 1:
        return None
    d, n_ctx = json.loads(cfgs.pop())
    d = config.DataConfig(**{k: v for k, v in d.items() if k in config.DataConfig.__dataclass_fields__})
    try:
        corpus = data.prepare(d)
        return ngram.cached_scores(corpus, "test", config.eval_window_counts(d, n_ctx)[0], n_ctx)
    except (JscaleError, OSError):
        return None

def rel_percent(loss, predicted) -> np.ndarray:
    """Loss above a prediction, in percent."""
    return 100.0 * (np.asarray(loss, float) / np.asarray(predicted, float) - 1.0)

def series_style(i: int) -> dict[str, Any]:
    """Series i: marker, line style and grey level, distinguishable in black-and-white print."""
    greys = ("0.0", "0.45", "0.25", "0.6", "0.1", "0.35", "0.5")
    return {"marker": plots.MARKERS[i % len(plots.MARKERS)], "linestyle": plots.LINESTYLES[i % len(plots.LINESTYLES)],
            "color": greys[i % len(greys)], "mfc": "none" if i % 2 else greys[i % len(greys)]}

def loglines(ax, x, y, label, i, fit_x=None, fit_y=None):
    st = series_style(i)
    order = np.argsort(x)
    ax.plot(np.asarray(x)[order], np.asarray(y)[order], marker=st["marker"], linestyle="none", color=st["color"],
            mfc=st["mfc"], label=label)
    if fit_x is not None:
        ax.plot(fit_x, fit_y, linestyle=st["linestyle"], color=st["color"], lw=1)

def units_note(runs) -> str:
    """Kaplan's constants are in WebText2 GPT-2-BPE tokens: say so when these runs count other tokens."""
    toks = {c["data"].get("tokenizer", "bytes") for c in runs["config_"]}
    return ("published values are per GPT-2 BPE token of WebText2; these runs count "
            f"{'bytes' if toks == {'bytes'} else ', '.join(sorted(toks)) + ' tokens'} of another corpus, so the "
            f"numbers are not comparable and no verdict compares them")

def power_estimate(points, losses, variable: str, n_bootstrap: int, m: "Measured | None" = None) -> noise.Estimate:
    """alpha of L = (x_c / x)^alpha through the points: the wider of the measurement interval (windows by document,
    seeds pooled, the learning-rate choice) and the interval from the points' scatter about the law."""
    x = points[variable].to_numpy(float)
    if m is None:
        return noise.hierarchical_bootstrap(losses, noise.log_slope(x), n_bootstrap,
                                            scatter=noise.power_law_scatter(x))
    return m.bootstrap(noise.log_slope(x), n_bootstrap, scatter=noise.power_law_scatter(x))

def log_binned(t, loss, n_bins: int = 12):
    """Mean loss in log-spaced position bins (per-position losses of few windows are noisy)."""
    edges = np.unique(np.round(np.geomspace(1, t.max() + 1, n_bins + 1)).astype(int))
    centers, means = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (t >= lo) & (t < hi)
        if m.any():
            centers.append(np.exp(np.log(t[m]).mean()))
            means.append(loss[m].mean())
    return np.array(centers), np.array(means)

# ---------------------------------------------------------------------------------------------------------------
# Learning curves: when a run first reaches a loss, with the curve's own evaluation noise.


def crossing_step(steps: np.ndarray, losses: np.ndarray, target: float) -> float:
    """The first step at which a learning curve reaches `target`, interpolated in (log step, log loss) between the
    evaluations around it; NaN if it never does."""
    below = np.flatnonzero(losses <= target)
    if not len(below):
        return float("nan")
    i = below[0]
    if i == 0:
        return float(steps[0])
    x0, x1, y0, y1 = np.log(steps[i - 1]), np.log(steps[i]), np.log(losses[i - 1]), np.log(losses[i])
    return float(np.exp(x0 + (np.log(target) - y0) * (x1 - x0) / (y1 - y0))) if y1 != y0 else float(steps[i])


def reachable_targets(curves_by_run: dict[str, tuple[np.ndarray, np.ndarray]], count: int = 4,
                      margin: float = 0.01, after: dict[str, float] | None = None) -> np.ndarray:
    """count loss levels, log-spaced, that every run's validation curve crosses after its first evaluation (or its
    first evaluation at or after step after[run], e.g. its warmup's end): from just above the worst final loss up
    to just below the best such starting loss."""
    def start(run: str, steps: np.ndarray, val: np.ndarray) -> float:
        i = 0 if after is None else min(int(np.searchsorted(steps, after.get(run, 0))), len(val) - 1)
        return float(val[i])

    highest_final = max(v[-1] for _, v in curves_by_run.values())
    lowest_first = min(start(r, s, v) for r, (s, v) in curves_by_run.items())
    hi, lo = lowest_first * (1 - margin), highest_final * (1 + margin)
    if hi <= lo:
        return np.array([])
    return np.geomspace(hi, lo, count)


def validation_curves(exp: Experiment, run_ids) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """run_id -> (steps, validation loss, its standard error) of each evaluation, on the same windows at every
    evaluation (results.load's val_curve)."""
    c = exp.curves[exp.curves["run_id"].isin(list(run_ids))].sort_values(["run_id", "step"])
    val, se = ("val_curve", "val_curve_se") if "val_curve" in c else ("val_loss", "val_se")
    return {r: (g["step"].to_numpy(float), g[val].to_numpy(float), np.nan_to_num(g[se].to_numpy(float)))
            for r, g in c.groupby("run_id")}


def window_correlation(exp: Experiment, run_ids) -> float:
    """The mean correlation between runs' per-window test losses at their final evaluations (every run is scored
    on the same windows): how much of a loss's window noise is the windows themselves, shared by every run and
    evaluation. 0 when fewer than two runs stored their windows."""
    ids = [r for r in run_ids if r in exp.windows]
    if len(ids) < 2 or len({len(exp.windows[r]) for r in ids}) > 1:
        return 0.0
    C = np.corrcoef(np.stack([exp.windows[r] for r in ids]).astype(float))
    return float(np.clip(np.nanmean(C[np.triu_indices(len(ids), 1)]), 0.0, 1.0))


def curve_noise_correlation(exp: Experiment, sec: Section, run_ids) -> float:
    """window_correlation for curve_bootstrap's rho, stated in the section's notes."""
    rho = window_correlation(exp, run_ids)
    sec.notes.append(f"Intervals redraw every evaluation from its standard error over windows with a correlation "
                     f"of {rho:.2f} between evaluations: the runs' per-window test losses correlate this much (every "
                     f"evaluation scores the same windows).")
    return rho


def curve_bootstrap(groups: list[list[str]], curves: dict, statistic, n_resamples: int, seed: int = 0,
                    rho: float = 0.0) -> noise.Estimate:
    """statistic(curves picked per group) -> float, with an interval from resampling each group's seed replicas
    (their spread about the group's mean curve scaled back to the full seed variance) and drawing every evaluation
    again from its standard error over windows (the two noises of a curve).
    groups: per point (a size, a batch size), the run ids of its seed replicas.

    rho: the correlation of evaluation errors. Every evaluation of every run scores the same windows, so most of
    an evaluation's error (which windows were drawn) is shared: each resample draws one error common to all
    evaluations (weight sqrt(rho)) and one of each evaluation's own (weight sqrt(1 - rho)). window_correlation
    measures rho between different runs, a lower bound for evaluations of one run; rho = 0 treats every
    evaluation's error as independent (wider intervals)."""
    value = float(statistic([[curves[r][:2] for r in g] for g in groups]))
    if not n_resamples or len(groups) < 2:
        return noise.Estimate(value, None, 0, 0, len(groups))
    shared, own = np.sqrt(rho), np.sqrt(1.0 - rho)

    def replica(g: list[str], i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A resampled replica (steps, loss, standard error), its deviation from the group's mean curve scaled by
        sqrt(k / (k - 1)): drawing k replicas from k keeps (k - 1) / k of the seed variance, which this restores."""
        steps, val, se = curves[g[i]][:3]
        if len(g) < 2 or any(len(curves[r][1]) != len(val) for r in g):
            return steps, val, se
        mean = np.mean([curves[r][1] for r in g], axis=0)
        return steps, mean + np.sqrt(len(g) / (len(g) - 1)) * (val - mean), se

    def draw(rng: np.random.Generator) -> float:
        common = rng.normal()
        picked = []
        for g in groups:
            chosen = [replica(g, i) for i in rng.integers(0, len(g), len(g))]
            picked.append([(steps, np.maximum(val + (shared * common + own * rng.normal(0, 1, len(val))) * se, 1e-6))
                           for steps, val, se in chosen])
        return statistic(picked)

    return noise.percentile_estimate(value, draw, n_resamples, len(groups), seed, min_share=0.9,
                                     errors=(laws.LawFitError,))


def overfitting_problem(runs) -> str | None:
    """For claims about learning curves (compute-limited training): none of the runs may be overfitting."""
    over = runs[runs["regime"] == "overfitting"]
    if len(over):
        return f"{len(over)} of {len(runs)} runs overfit (validation rose above its best), so their curves are not " \
               f"compute-limited"
    return None


PATIENCE = 3  # early stopping: validation risen at this many evaluations in a row


def stopping_step(steps: np.ndarray, val: np.ndarray, patience: int = PATIENCE) -> float:
    """Early stopping applied to a finished curve: the best validation step before the first run of `patience`
    consecutive evaluations above it; NaN when validation never rose that long."""
    best, since = 0, 0
    for i in range(1, len(val)):
        if val[i] < val[best]:
            best, since = i, 0
        else:
            since += 1
            if since >= patience:
                return float(steps[best])
    return float("nan")


def plot_curves(ax, groups: list[list[str]], curves: dict, tokens_per_step: list[float], labels: list[str]) -> None:
    """Each group's validation curves (seed replicas alike) against tokens seen, log-log, one label per group."""
    for i, (g, tokens, label) in enumerate(zip(groups, tokens_per_step, labels)):
        st = series_style(i)
        for j, r in enumerate(g):
            steps, val = curves[r][:2]
            ax.plot(steps * tokens, val, color=st["color"], linestyle=st["linestyle"], lw=1,
                    label=label if j == 0 else None)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel("tokens seen"), ax.set_ylabel("validation loss (nats/token)")
