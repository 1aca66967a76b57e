"""`jscale report DIR`: the experiments' results as one self-contained HTML page and a Markdown summary.

DIR is a sweep directory of `jscale run`, or a directory of them (experiments/README.md runs each experiment
into DIR/NAME). Each sweep's `analysis` (written to its sweep.json) picks the section that reads it; every
section has its figures, the fitted numbers with 95% intervals beside Kaplan's (or Chinchilla's) published ones
(with their units), a measurement table (each run's regime: tokens per parameter, epochs, late validation
improvement, converged / compute-limited / overfitting, and its loss against n-gram baselines on the same windows),
and verdicts decided by jscale.verdicts' one rule: supports, contradicts or inconclusive, from an interval that
includes seed and evaluation-window noise (jscale.noise), and inconclusive whenever the runs are not in the regime
the claim is about. Pilot runs of a tuning grid are never reported.

Output, in --out (default DIR/report): report.html (figures embedded as PNG data), report.md (figures linked),
figures/*.png, NAME-runs.csv (one row per run: shape, N, compute, losses), latency.json (the efficiency section's
measurements, reused on the next report from the same device).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import io
import json
import sqlite3
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jscale import laws, noise, plots, regime, results, tuning
from jscale.config import JscaleError
from jscale.verdicts import Region, Verdict, decide

# Kaplan et al. 2020 (and Hoffmann et al. 2022) numbers the sections compare against; reference/scaling.md.
KAPLAN = {"alpha_N": 0.076, "alpha_D": 0.095, "alpha_C_min": 0.050, "alpha_C_naive": 0.057, "nd_alpha_N": 0.076,
          "nd_alpha_D": 0.103, "overfit_exponent": 0.74, "a_kaplan": 0.73}
CHINCHILLA_A = {"approach 1 (envelope)": 0.50, "approach 2 (IsoFLOP)": 0.49, "approach 3 (parametric)": 0.46}
ORDER = ("size", "shape", "lstm", "recurrent", "compute", "data", "efficiency")
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

    @property
    def name(self) -> str:
        return self.info.get("name", self.path.name)


# ---------------------------------------------------------------------------------------------------------------
# Reading.


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
        done = regime.table(done, tables["curves"])
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
                              tables["tuning"]))
    return sorted(out, key=lambda e: (ORDER.index(e.info.get("analysis")) if e.info.get("analysis") in ORDER
                                      else len(ORDER), e.name))


# ---------------------------------------------------------------------------------------------------------------
# Small helpers shared by the sections.


def _ci(fitted: laws.FittedLaw, key: str, fmt: str = ".3f") -> str:
    lo_hi = fitted.intervals.get(key)
    return f"{lo_hi[0]:{fmt}} to {lo_hi[1]:{fmt}}" if lo_hi else "-"


def _in(fitted: laws.FittedLaw, key: str, value: float) -> bool:
    lo_hi = fitted.intervals.get(key)
    return bool(lo_hi) and lo_hi[0] <= value <= lo_hi[1]


def _power(X, loss, variable="N", bootstrap: int = N_BOOTSTRAP) -> laws.FittedLaw:
    return laws.fit_power(np.asarray(X, float), np.asarray(loss, float), variable=variable, n_bootstrap=bootstrap)


def _points(exp: Experiment, runs) -> tuple[Any, list[np.ndarray]]:
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


def _decide(sec: Section, claim: str, est: noise.Estimate | None, region: Region, regime_problem: str | None,
            estimate: float | None = None, interval=None, n_points: int | None = None) -> Verdict:
    """One verdict by the one rule, recorded in the section."""
    if est is not None:
        v = decide(claim, est.value, est.interval, region, est.n_points, est.failed, est.resamples, regime_problem)
    else:
        v = decide(claim, estimate, interval, region, n_points, regime_problem=regime_problem)
    sec.decisions.append(v)
    sec.verdicts.append(v.sentence())
    return v


def _law_estimate(fit: laws.FittedLaw, key: str) -> noise.Estimate:
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
    header = ["run", "N", "seed", "tokens/param", "epochs", "val improvement, last 30%", "regime",
              "test loss ± SE"] + ([f"vs {n}-gram" for n in (2, 3, 5)] if baselines else [])
    rows = []
    for r in runs.itertuples():
        se = r.final_test_se if r.final_test_se is not None and np.isfinite(r.final_test_se) else float("nan")
        row = [r.name, f"{r.N:,}", f"{r.seed}", f"{r.tokens_per_param:.3g}",
               "-" if not np.isfinite(r.epochs) else f"{r.epochs:.3g}", f"{100 * r.late_improvement:.2f}%",
               r.regime, f"{r.loss:.4f} ± {se:.4f}"]
        if baselines:
            row += [f"{100 * (r.loss / baselines[n] - 1):+.1f}%" for n in (2, 3, 5)]
        rows.append(row)
    sec.tables.append((header, rows))
    counts = runs["regime"].value_counts().to_dict()
    sec.notes.append("Regimes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) +
                     f" (converged: validation improved < {100 * regime.CONVERGED_IMPROVEMENT:.0f}% over the last "
                     f"{100 * regime.LATE_FRACTION:.0f}%; overfitting: validation rose > {regime.RISE_SE:g} SE "
                     f"above its best).")
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


def _rel(loss, predicted) -> np.ndarray:
    """Loss above a prediction, in percent."""
    return 100.0 * (np.asarray(loss, float) / np.asarray(predicted, float) - 1.0)


def _style(i: int) -> dict[str, Any]:
    """Series i: marker, line style and grey level, distinguishable in black-and-white print."""
    greys = ("0.0", "0.45", "0.25", "0.6", "0.1", "0.35", "0.5")
    return {"marker": plots.MARKERS[i % len(plots.MARKERS)], "linestyle": plots.LINESTYLES[i % len(plots.LINESTYLES)],
            "color": greys[i % len(greys)], "mfc": "none" if i % 2 else greys[i % len(greys)]}


def _loglines(ax, x, y, label, i, fit_x=None, fit_y=None):
    st = _style(i)
    order = np.argsort(x)
    ax.plot(np.asarray(x)[order], np.asarray(y)[order], marker=st["marker"], linestyle="none", color=st["color"],
            mfc=st["mfc"], label=label)
    if fit_x is not None:
        ax.plot(fit_x, fit_y, linestyle=st["linestyle"], color=st["color"], lw=1)


# ---------------------------------------------------------------------------------------------------------------
# Sections.


def _units_note(runs) -> str:
    """Kaplan's constants are in WebText2 GPT-2-BPE tokens: say so when these runs count other tokens."""
    toks = {c["data"].get("tokenizer", "bytes") for c in runs["config_"]}
    return ("published values are per GPT-2 BPE token of WebText2; these runs count "
            f"{'bytes' if toks == {'bytes'} else ', '.join(sorted(toks)) + ' tokens'} of another corpus, so the "
            f"numbers are not comparable and no verdict compares them")


def _power_estimate(points, losses, variable: str, n_bootstrap: int) -> noise.Estimate:
    return noise.hierarchical_bootstrap(losses, noise.log_slope(points[variable].to_numpy(float)), n_bootstrap)


def size_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """L(N), with and without embeddings (Kaplan Fig. 1 right and Fig. 6)."""
    runs = exp.runs
    deep = runs[runs["n_layer"] >= 2]
    points, losses = _points(exp, deep)
    alpha = _power_estimate(points, losses, "N", n_bootstrap)
    problem = regime.problem(deep)
    if alpha.value <= 0:  # loss does not fall with N: nothing to draw a law through, but a verdict to give
        _decide(sec, "Loss falls as a power of non-embedding N (alpha_N > 0; Kaplan Fig. 1)", alpha,
                Region.above(0.0), problem)
        return
    fit_n = _power(points["N"], points["loss"], bootstrap=0)
    fit_total = _power(points["N_total"], points["loss"], bootstrap=0)
    logN, logNt = np.log(points["N"].to_numpy(float)), np.log(points["N_total"].to_numpy(float))

    def rms_gap(loss):  # RMS scatter about one power law: all parameters minus non-embedding, in percent points
        rms = lambda x: np.sqrt(np.mean(np.square(np.log(loss) - np.polyval(np.polyfit(x, np.log(loss), 1), x))))
        return 100 * (rms(logNt) - rms(logN))

    collapse = noise.hierarchical_bootstrap(losses, rms_gap, n_bootstrap)
    rms_n = 100 * np.sqrt(np.mean(np.square(fit_n.residuals)))
    rms_total = 100 * np.sqrt(np.mean(np.square(fit_total.residuals)))
    sec.numbers.append(("alpha_N, L = (N_c/N)^alpha_N (non-embedding N, 2+ layers; seeds and windows resampled)",
                        f"{alpha.value:.3f}", alpha.text().split("(", 1)[1].rstrip(")"),
                        f"{KAPLAN['alpha_N']} (WebText2, BPE)"))
    sec.numbers.append(("N_c", f"{fit_n.params['X_c']:.3g}", "-", "8.8e13 (WebText2, BPE)"))
    sec.numbers.append(("RMS scatter about one power law, non-embedding N (2+ layers)", f"{rms_n:.2f}%", "-",
                        "one trend"))
    sec.numbers.append(("RMS scatter about one power law, all parameters (2+ layers)", f"{rms_total:.2f}%", "-",
                        "separate by depth"))
    sec.notes.append(_units_note(runs))
    one = runs[runs["n_layer"] == 1]
    fig, (ax_total, ax_n) = plots.figure(2)
    grid_total = np.geomspace(runs["N_total"].min() / 1.3, runs["N_total"].max() * 1.3, 100)
    grid_n = np.geomspace(runs["N"].min() / 1.3, runs["N"].max() * 1.3, 100)
    for i, (depth, g) in enumerate(sorted(runs.groupby("n_layer"))):
        _loglines(ax_total, g["N_total"], g["loss"], f"{depth} layer{'s' if depth > 1 else ''}", i)
        _loglines(ax_n, g["N"], g["loss"], f"{depth} layer{'s' if depth > 1 else ''}", i)
    ax_n.plot(grid_n, fit_n.predict(X=grid_n), "k-", lw=1,
              label=f"(N_c/N)^{fit_n.params['alpha']:.3f}, 2+ layers")
    ax_total.plot(grid_total, fit_total.predict(X=grid_total), "k:", lw=1, label="one power law, 2+ layers")
    for ax, conv, title in ((ax_total, "all", "with embeddings"), (ax_n, "non_embedding", "without embeddings")):
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel(plots.n_label(conv)), ax.set_ylabel("test loss (nats/token)")
        ax.set_title(f"Fig. 6 {title}", fontsize=9)
        ax.legend(frameon=False, fontsize=7)
    sec.figures["loss_vs_N"] = plots.tidy(fig)
    _decide(sec, "Loss falls as a power of non-embedding N (alpha_N > 0; Kaplan Fig. 1)", alpha, Region.above(0.0),
            problem)
    _decide(sec, "Leaving out embeddings collapses the depths onto one trend (RMS scatter about one law with all "
                 "parameters minus without, percent points; Kaplan Fig. 6)", collapse, Region.above(0.0), problem)
    if len(one):
        off = _rel(one["loss"], fit_n.predict(X=one["N"].to_numpy()))
        sec.numbers.append(("1-layer models: mean loss above the 2+ layer trend", f"{off.mean():+.1f}%", "-",
                            "1-layer models fall off the trend"))


def shape_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """Loss against shape at fixed N, measured against the L(N) fit over all runs (Kaplan Fig. 5)."""
    points, losses = _points(exp, exp.runs)
    runs = points  # one row per shape (seeds pooled)
    fit = _power(runs["N"], runs["loss"], bootstrap=0)
    runs["excess"] = _rel(runs["loss"], fit.predict(X=runs["N"].to_numpy()))
    runs["target_N"] = [t.get("shape.N", n) for t, n in zip(runs["tags_"], runs["N"])]
    runs["vary"] = [t.get("shape.vary", "") for t in runs["tags_"]]
    runs["aspect"] = runs["d_model"] / runs["n_layer"]
    runs["ff_ratio"] = runs["d_ff"] / runs["d_model"]
    runs["d_head"] = runs["d_attn"] / runs["n_heads"]
    sec.numbers.append(("alpha_N of the L(N) fit over all shapes", f"{fit.params['alpha']:.3f}", "-",
                        "0.076 (WebText2, BPE)"))
    panels = (("aspect_ratio", "aspect", "aspect ratio d_model / n_layer", "+1-2% over 10-200; 40x within ~3%"),
              ("ff_ratio", "ff_ratio", "feed-forward ratio d_ff / d_model", "+0.5% at 1-2, +4.5% at 10"),
              ("d_head", "d_head", "head dimension d_attn / n_heads", "within 0.5-2% over 10-200"))
    fig, axes = plots.figure(3, width=4.4)
    spreads = {}
    for ax, (vary, col, label, paper) in zip(axes, panels, strict=True):
        panel_spread = []
        for i, (N, g) in enumerate(sorted(runs.groupby("target_N"))):
            g = g[g["vary"].isin(["reference", vary])].sort_values(col)
            if len(g) < 2:
                continue
            st = _style(i)
            ax.plot(g[col], g["excess"], marker=st["marker"], linestyle=st["linestyle"], color=st["color"],
                    mfc=st["mfc"], label=f"N ~ {N:.0e}")
            panel_spread.append(g["excess"].max() - g["excess"].min())
        ax.set_xscale("log", base=2)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xlabel(label)
        ax.set_ylabel("loss above the L(N) fit (%)")
        ax.legend(frameon=False, fontsize=7)
        if panel_spread:
            spreads[vary] = max(panel_spread)
            sec.numbers.append((f"largest loss spread when varying {label}", f"{spreads[vary]:.1f}%", "-", paper))
    sec.figures["shape"] = plots.tidy(fig)
    for N, g in sorted(runs.groupby("target_N")):
        spread = g["excess"].max() - g["excess"].min()
        worst = g.loc[g["excess"].idxmax()]
        sec.notes.append(
            f"Loss spread across {len(g)} shapes at N ~ {N:.0e}: {spread:.1f}% (highest: n_layer {worst.n_layer}, "
            f"d_model {worst.d_model}, d_ff {worst.d_ff}, {worst.n_heads} heads).")
    ok = ((runs["aspect"] >= 4) & (runs["aspect"] <= 64) & (runs["ff_ratio"] >= 1) & (runs["ff_ratio"] <= 4)).to_numpy()
    logN, target = np.log(runs["N"].to_numpy(float)), runs["target_N"].to_numpy()

    def largest_spread(loss):  # the widest spread (percent) of loss above one L(N) fit, among shapes at one N
        excess = 100 * (np.log(loss) - np.polyval(np.polyfit(logN, np.log(loss), 1), logN))
        spreads = [np.ptp(excess[ok & (target == t)]) for t in np.unique(target[ok]) if (ok & (target == t)).sum() > 1]
        return max(spreads) if spreads else float("nan")

    if ok.sum() >= 2:
        spread = noise.hierarchical_bootstrap(losses, largest_spread, n_bootstrap)
        _decide(sec, "At fixed N, shape (aspect ratio 4-64, d_ff/d_model 1-4) moves loss by at most a few percent "
                     "(largest spread at one N, percent; Kaplan Fig. 5)", spread, Region.below(5.0, "< 5%"),
                regime.problem(exp.runs))


def _late_gain(grid_WxT: np.ndarray) -> float:
    """How much lower (percent) the loss is over the last quarter of the context than over positions T/8 to T/4."""
    per_position = grid_WxT.mean(axis=0)
    T = len(per_position)
    t = np.arange(1, T + 1)
    early = per_position[(t >= T / 8) & (t <= T / 4)].mean()
    return float(100 * (early - per_position[t > 3 * T / 4].mean()) / early)


def _paired_windows(a_WxT: np.ndarray, b_WxT: np.ndarray, statistic, n_resamples: int, seed: int = 0
                    ) -> noise.Estimate:
    """statistic(a, b) of two runs scored on the same windows, windows resampled jointly (paired)."""
    value = float(statistic(a_WxT, b_WxT))
    if not n_resamples:
        return noise.Estimate(value, None, 0, 0, 2)
    rng = np.random.default_rng(seed)
    W = len(a_WxT)
    draws = [statistic(a_WxT[w], b_WxT[w]) for w in (rng.integers(0, W, W) for _ in range(n_resamples))]
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return noise.Estimate(value, (float(lo), float(hi)), n_resamples, 0, W)


def lstm_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """LSTMs against Transformers: loss against N and against context position (Kaplan Fig. 7)."""
    points, losses = _points(exp, exp.runs)
    runs = points
    runs["family"] = [("Transformer" if k == "transformer" else f"LSTM, {n} layer{'s' if n > 1 else ''}")
                      for k, n in zip(runs["kind"], runs["n_layer"])]
    tf_mask = (runs["kind"] == "transformer").to_numpy()
    tf = runs[tf_mask]
    fit_tf = _power(tf["N"], tf["loss"], bootstrap=0)
    problem = regime.problem(exp.runs)
    fig, (ax, ax_pos) = plots.figure(2)
    families = sorted(runs["family"].unique(), key=lambda f: (f != "Transformer", f))
    grid = np.geomspace(runs["N"].min() / 1.3, runs["N"].max() * 1.3, 100)
    logN = np.log(runs["N"].to_numpy(float))
    for i, fam in enumerate(families):
        g = runs[runs["family"] == fam]
        if fam == "Transformer":
            _loglines(ax, g["N"], g["loss"], fam, i, grid, fit_tf.predict(X=grid))
            continue
        if len(g) >= 2:
            fit = _power(g["N"], g["loss"], bootstrap=0)
            _loglines(ax, g["N"], g["loss"], fam, i, grid, fit.predict(X=grid))
        else:
            _loglines(ax, g["N"], g["loss"], fam, i)
        gap = _rel(g["loss"], fit_tf.predict(X=g["N"].to_numpy()))
        order = np.argsort(g["N"].to_numpy())
        sec.numbers.append((f"{fam}: loss above the Transformer L(N) fit, smallest to largest N",
                            " -> ".join(f"{x:+.1f}%" for x in gap[order]), "-", "gap grows with N"))
        if len(g) >= 2:
            fam_mask = (runs["family"] == fam).to_numpy()
            small, large = np.flatnonzero(fam_mask)[np.argsort(logN[fam_mask])[[0, -1]]]

            def growth(loss, small=small, large=large):  # gap at the largest N minus gap at the smallest, percent
                coef = np.polyfit(logN[tf_mask], np.log(loss[tf_mask]), 1)
                gap_at = lambda k: 100 * (np.log(loss[k]) - np.polyval(coef, logN[k]))
                return gap_at(large) - gap_at(small)

            _decide(sec, f"{fam}: the LSTM's deficit against the Transformer trend grows with N (percent points; "
                         f"Kaplan Fig. 7)", noise.hierarchical_bootstrap(losses, growth, n_bootstrap, min_points=3),
                    Region.above(0.0), problem)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel(plots.n_label("non_embedding")), ax.set_ylabel("test loss (nats/token)")
    ax.legend(frameon=False, fontsize=7)
    ax.set_title("total loss against N", fontsize=9)
    # Per-position loss of each family's largest model, in log-spaced position bins. Late-context gain: how much
    # lower the loss is over the last quarter of the context than over positions T/8 to T/4. Kaplan's LSTMs
    # plateau after < 100 tokens (gain ~ 0 there); Transformers keep improving.
    largest = {}
    for i, fam in enumerate(families):
        g = exp.runs[[("Transformer" if k == "transformer" else f"LSTM, {n} layer{'s' if n > 1 else ''}") == fam
                      for k, n in zip(exp.runs["kind"], exp.runs["n_layer"])]]
        best = g.loc[g["N"].idxmax()]
        largest[fam] = best
        pos = exp.positions[(exp.positions["run_id"] == best.run_id) & (exp.positions["step"] == best.step)]
        if pos.empty:
            continue
        t, loss = _binned(pos["position"].to_numpy(), pos["loss"].to_numpy())
        st = _style(i)
        ax_pos.plot(t, loss, marker=st["marker"], linestyle=st["linestyle"], color=st["color"], mfc=st["mfc"],
                    ms=4, label=f"{fam}, N = {best.N:.2g}")
    ax_pos.set_xscale("log")
    ax_pos.set_xlabel("position in the context (tokens)")
    ax_pos.set_ylabel("test loss at that position (nats/token)")
    ax_pos.set_title("loss per context position, largest model of each family", fontsize=9)
    ax_pos.legend(frameon=False, fontsize=7)
    sec.figures["lstm"] = plots.tidy(fig)
    tf_run = largest.get("Transformer")
    for fam, r in largest.items():
        if fam == "Transformer" or tf_run is None:
            continue
        a, b = exp.grids.get(tf_run.run_id), exp.grids.get(r.run_id)
        if a is None or b is None or a.shape != b.shape:
            sec.notes.append(f"{fam}: no per-window per-position losses stored for a paired comparison.")
            continue
        T = a.shape[1]
        gain = _paired_windows(a, b, lambda x, y: _late_gain(x) - _late_gain(y), n_bootstrap)
        sec.numbers.append((f"late-context gain (positions {T // 8}-{T // 4} to the last quarter), Transformer "
                            f"minus {fam}, largest models", f"{gain.value:+.2f} points",
                            "-" if gain.interval is None else f"{gain.interval[0]:+.2f} to {gain.interval[1]:+.2f}",
                            "> 0: LSTMs plateau, Transformers keep improving"))
        _decide(sec, f"Transformers keep improving later in the context than the {fam} (late-context gain, "
                     f"Transformer minus LSTM, percent points, windows paired; Kaplan Fig. 7)", gain,
                Region.above(0.0), problem)
        early = _paired_windows(b, a, lambda x, y: 100 * (x[:, :max(1, T // 16)].mean() / y[:, :max(1, T // 16)].mean()
                                                          - 1), n_bootstrap)
        _decide(sec, f"On the first {max(1, T // 16)} positions the {fam} matches the Transformer (loss difference "
                     f"within 5%, windows paired)", early, Region.near(0.0, 5.0, "within ±5%"), problem)


def _binned(t, loss, n_bins: int = 12):
    """Mean loss in log-spaced position bins (per-position losses of few windows are noisy)."""
    edges = np.unique(np.round(np.geomspace(1, t.max() + 1, n_bins + 1)).astype(int))
    centers, means = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (t >= lo) & (t < hi)
        if m.any():
            centers.append(np.exp(np.log(t[m]).mean()))
            means.append(loss[m].mean())
    return np.array(centers), np.array(means)


def recurrent_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """Universal Transformers (reuse over depth) and Transformer-XL (memory over time) against the standard
    Transformer, per parameter and per FLOP (Kaplan Fig. 17)."""
    points, losses = _points(exp, exp.runs)
    runs = points
    runs["family"] = [("standard Transformer" if k == "transformer" else
                       f"Universal, reuse {r}x" if k == "universal" else f"Transformer-XL, memory {m}")
                      for k, r, m in zip(runs["kind"], runs["reuse"], runs["mem_len"])]
    std_mask = (runs["kind"] == "transformer").to_numpy()
    std = runs[std_mask]
    fit_n = _power(std["N"], std["loss"], bootstrap=0)
    fit_c = _power(std["C_exact"], std["loss"], variable="C", bootstrap=0)
    sec.numbers.append(("standard Transformers: alpha_N", f"{fit_n.params['alpha']:.3f}", "-",
                        "0.076 (WebText2, BPE)"))
    problem = regime.problem(exp.runs)
    fig, (ax_n, ax_c) = plots.figure(2)
    families = sorted(runs["family"].unique(), key=lambda f: (not f.startswith("standard"), len(f), f))
    gn = np.geomspace(runs["N"].min() / 1.3, runs["N"].max() * 1.3, 100)
    gc = np.geomspace(runs["C_exact"].min() / 1.3, runs["C_exact"].max() * 1.3, 100)
    logN, logC = np.log(runs["N"].to_numpy(float)), np.log(runs["C_exact"].to_numpy(float))
    for i, fam in enumerate(families):
        g = runs[runs["family"] == fam]
        is_std = fam.startswith("standard")
        _loglines(ax_n, g["N"], g["loss"], fam, i, *((gn, fit_n.predict(X=gn)) if is_std else (None, None)))
        _loglines(ax_c, g["C_exact"], g["loss"], fam, i, *((gc, fit_c.predict(X=gc)) if is_std else (None, None)))
        if is_std:
            continue
        fam_mask = (runs["family"] == fam).to_numpy()

        def offset(x):  # mean loss of the family above the standard Transformers' trend in x, percent
            def stat(loss):
                coef = np.polyfit(x[std_mask], np.log(loss[std_mask]), 1)
                return float(100 * np.mean(np.log(loss[fam_mask]) - np.polyval(coef, x[fam_mask])))
            return stat

        per_n = noise.hierarchical_bootstrap(losses, offset(logN), n_bootstrap, min_points=3)
        per_c = noise.hierarchical_bootstrap(losses, offset(logC), n_bootstrap, min_points=3)
        sec.numbers.append((f"{fam}: loss vs a standard Transformer of equal N / equal training FLOPs (exact)",
                            f"{per_n.value:+.1f}% / {per_c.value:+.1f}%", f"{per_n.text('+.1f')} / {per_c.text('+.1f')}",
                            "slightly better / slightly worse" if fam.startswith("Universal") else "-"))
        if fam.startswith("Universal"):
            _decide(sec, f"{fam} is better per parameter than a standard Transformer (loss above the standard "
                         f"L(N) trend, percent; Kaplan Fig. 17)", per_n, Region.below(0.0), problem)
            _decide(sec, f"{fam} is worse per training FLOP (loss above the standard L(C) trend, percent)", per_c,
                    Region.above(0.0), problem)
    for ax, xlabel in ((ax_n, "parameters N (non-embedding, unique)"),
                       (ax_c, "training compute C (FLOPs, exact count incl. attention)")):
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel(xlabel), ax.set_ylabel("test loss (nats/token)")
        ax.legend(frameon=False, fontsize=7)
    ax_n.set_title("per parameter (line: standard Transformers' L(N))", fontsize=9)
    ax_c.set_title("per FLOP (line: standard Transformers' L(C))", fontsize=9)
    sec.figures["recurrent"] = plots.tidy(fig)


def xla_flops_per_token(cfg_dict: dict) -> float:
    """FLOPs per token of the train step as XLA's cost analysis counts them, on the lowered HLO (no compile:
    on the CPU it is 20x faster and within 1% of the compiled step's count; the compiled one when the lowered
    count is unavailable)."""
    import jax
    import jax.numpy as jnp

    from jscale import config, train
    from jscale.models import build

    cfg = config.from_dict(cfg_dict).resolve()
    model, opt = build(cfg.model), train.make_optimizer(cfg.train)
    step = jax.jit(train.make_train_step(model))
    state = jax.eval_shape(lambda: train.init_state(model, opt, cfg.model.n_ctx, jnp.uint32(0)))
    hp = {k: jnp.asarray(v) for k, v in train.hparams_from_config(cfg.train).items()}
    batch = jax.ShapeDtypeStruct((cfg.train.batch_size, cfg.model.n_ctx + 1), jnp.int32)
    lowered = step.lower(state, batch, hp)
    cost = lowered.cost_analysis()
    if not cost or "flops" not in cost:
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / (cfg.train.batch_size * cfg.model.n_ctx)


def after_warmup(curves, runs):
    """Learning-curve points past each run's learning-rate peak and its first 10% (Kaplan fits after warmup)."""
    cfg = runs.set_index("run_id")["config_"]
    warm = curves["run_id"].map(lambda r: max(cfg[r]["train"]["warmup_steps"], 0.1 * cfg[r]["train"]["steps"]))
    return curves[curves["step"] > warm]


def compute_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """The compute frontier L(C) (Kaplan), Chinchilla's approaches 1-3, and 6ND against XLA's count. Every fit in
    compute uses the exact training FLOPs (attention and the unembedding included); 6N D is shown beside it."""
    runs, curves = exp.runs, exp.curves
    curves = after_warmup(curves[curves["run_id"].isin(runs["run_id"])], runs)
    C_exact = curves["flops_exact"].to_numpy(float)
    C_6N = 6.0 * curves["N"].to_numpy(float) * curves["tokens"].to_numpy(float)
    frontier = laws.fit_frontier(curves["run_id"].to_numpy(), C_exact, curves["test_loss"].to_numpy(),
                                 n_bootstrap=n_bootstrap, convention={"N": "non_embedding", "C": "exact"})
    alpha = _law_estimate(frontier, "alpha")
    sec.numbers.append(("alpha_C of the frontier L = (C_c/C)^alpha_C (exact C, after warmup; runs resampled)",
                        f"{alpha.value:.3f}", alpha.text().split("(", 1)[1].rstrip(")"),
                        f"{KAPLAN['alpha_C_min']} (C_min), {KAPLAN['alpha_C_naive']} (naive L(C)); WebText2, BPE"))
    sec.notes.append(f"The frontier's envelope holds points of {frontier.info['envelope_runs']} runs; warmup and "
                     f"the first 10% of each run are left out.")
    try:
        f6 = laws.fit_frontier(curves["run_id"].to_numpy(), C_6N, curves["test_loss"].to_numpy(), n_bootstrap=0)
        sec.numbers.append(("alpha_C with C = 6ND instead (N non-embedding), for comparison",
                            f"{f6.params['alpha']:.3f}", "-", "-"))
    except laws.LawFitError as err:
        sec.notes.append(f"With C = 6ND the frontier cannot be fitted: {err}")
    sec.notes.append(_units_note(runs))
    # Chinchilla's three approaches, N counting every parameter, exact C.
    fits = {}

    def attempt(name, fit):  # an approach the data cannot support is noted; the others still report
        try:
            fits[name] = fit()
        except laws.LawFitError as err:
            sec.notes.append(f"Chinchilla's {name}: not fitted: {err}")

    attempt("approach 1 (envelope)", lambda: laws.fit_envelope(
        curves["run_id"].to_numpy(), curves["N_total"].to_numpy(), C_exact, curves["test_loss"].to_numpy(),
        n_bootstrap=n_bootstrap, convention={"N": "all", "C": "exact"}))
    budgets = np.array([t.get("isoflop.budget", np.nan) for t in runs["tags_"]], float)
    if np.isfinite(budgets).all():
        attempt("approach 2 (IsoFLOP)", lambda: laws.fit_isoflop(runs["N_total"], runs["loss"], budgets,
                                                                 n_bootstrap=n_bootstrap))
    for m in fits["approach 2 (IsoFLOP)"].info["minima"] if "approach 2 (IsoFLOP)" in fits else []:
        tpp = m["C"] / (6 * m["N_opt"] ** 2)
        sec.numbers.append((f"IsoFLOP budget {m['C']:.2g} FLOPs (6ND): N_opt, tokens per parameter at it",
                            f"{m['N_opt']:.3g}, {tpp:.3g}", "-",
                            "Chinchilla ~20 tokens/param" if m["bracketed"] else f"not bracketed: {m['note']}"))
    attempt("approach 3 (parametric)", lambda: laws.fit_chinchilla(runs["N_total"], runs["tokens_trained"],
                                                                   runs["loss"], n_bootstrap=n_bootstrap))
    for name, f in fits.items():
        est = _law_estimate(f, "a")
        sec.numbers.append((f"N_opt ~ C^a, {name} (N all parameters)", f"{est.value:.3f}",
                            est.text().split("(", 1)[1].rstrip(")"),
                            f"Chinchilla {CHINCHILLA_A[name]} (all parameters); Kaplan 0.73 (non-embedding)"))
        _decide(sec, f"Compute-optimal N grows as C^0.5, N and D in equal proportion (Chinchilla), {name}", est,
                Region.near(0.5, 0.1, "a within 0.1 of 0.5"), None)
    sec.figures["frontier"] = plots.compute_frontier(frontier, curves["run_id"].to_numpy(), C_exact,
                                                     curves["test_loss"].to_numpy())
    if "approach 2 (IsoFLOP)" in fits:
        sec.figures["isoflop"] = plots.isoflop_profiles(fits["approach 2 (IsoFLOP)"], runs["N_total"].to_numpy(),
                                                        runs["loss"].to_numpy(), budgets)
    fig, ax = plots.figure()
    Cgrid = np.geomspace(C_exact.min(), C_exact.max() * 100, 100)
    for i, (name, f) in enumerate(fits.items()):
        st = _style(i)
        a = f.derived.get("a", f.params.get("a"))
        ax.loglog(Cgrid, f.compute_optimal(Cgrid)["N"], linestyle=st["linestyle"], color=st["color"],
                  label=f"{name}: a = {a:.2f}")
    if fits:
        ref = next(iter(fits.values())).compute_optimal(Cgrid[:1])["N"][0]
        ax.loglog(Cgrid, ref * (Cgrid / Cgrid[0]) ** 0.73, color="0.7", lw=2, alpha=0.6, label="Kaplan's slope 0.73")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("compute-optimal N (all parameters)")
    ax.legend(frameon=False, fontsize=7)
    sec.figures["compute_optimal"] = plots.tidy(fig)
    # C = 6ND against XLA's count of the lowered train step, per distinct model.
    rows, ratios = [], []
    seen = {}
    for r in runs.itertuples():
        key = (r.n_layer, r.d_model, r.d_ff, r.n_heads, r.n_ctx, r.batch_size)
        if key not in seen:
            seen[key] = r
    for key, r in sorted(seen.items(), key=lambda kv: kv[1].N):
        xla = xla_flops_per_token(r.config_)
        ratios.append(xla / (6 * r.N))
        rows.append([f"{r.n_layer}", f"{r.d_model}", f"{r.N:,}", f"{r.N_total:,}", f"{6 * r.N:,.0f}",
                     f"{r.flops_per_token_exact:,.0f}", f"{xla:,.0f}", f"{xla / (6 * r.N):.2f}",
                     f"{xla / r.flops_per_token_exact:.3f}"])
    sec.tables.append((["n_layer", "d_model", "N", "N_total", "6N", "exact count", "XLA", "XLA / 6N",
                        "XLA / exact"], rows))
    sec.notes.append(f"XLA counts {min(ratios):.2f}x to {max(ratios):.2f}x the FLOPs of 6N per token at these "
                     f"sizes (attention and the unembedding, which 6N leaves out, weigh heavily in small models).")


def data_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """L(N, D) with early stopping on validation (Kaplan Eq. 1.5) and the overfitting bound."""
    runs = exp.runs[exp.runs["D"] > 0].copy()
    # Early stopping reads validation: each run's test loss at its best validation step (test is only reported).
    runs["best"] = results.test_at_best_validation(runs, exp.curves)
    stopped = runs[runs["regime"].isin(["overfitting", "converged"])]
    fit_runs = stopped if len(stopped) >= 4 else runs
    fit = laws.fit_kaplan_nd(fit_runs["N"], fit_runs["D"], fit_runs["best"], n_bootstrap=n_bootstrap,
                             convention={"N": "non_embedding"})
    p = fit.params
    for key, paper in (("alpha_N", "0.076"), ("alpha_D", "0.103"), ("N_c", "6.4e13"), ("D_c", "1.8e13")):
        fmt = ".3f" if key.startswith("alpha") else ".3g"
        sec.numbers.append((f"{key} of L(N, D), test loss at the best validation step", f"{p[key]:{fmt}}",
                            _ci(fit, key, fmt), paper + " (WebText2, BPE)"))
    exponent = p["alpha_N"] / p["alpha_D"]
    est = _law_estimate(fit, "overfit_exponent")
    sec.numbers.append(("overfitting bound: D needed grows as N^(alpha_N / alpha_D)", f"{exponent:.2f}",
                        est.text(".2f").split("(", 1)[1].rstrip(")"), "0.74 (WebText2, BPE)"))
    d_2pct = lambda N: p["D_c"] * (N / p["N_c"]) ** exponent / (1.02 ** (1 / p["alpha_D"]) - 1)
    Ns = np.sort(runs["N"].unique())
    sec.numbers.append(("tokens that keep overfitting under 2% (Eq. 1.5 fitted here), at the sizes run",
                        ", ".join(f"N = {n:.2g}: D = {d_2pct(n):.2g}" for n in Ns), "-", "-"))
    sec.notes.append(_units_note(runs) + " (Kaplan's 5e3 N^0.74 token bound is one of these constants).")
    problem = None if len(stopped) >= 4 else (f"{len(stopped)} of {len(runs)} runs stopped improving on "
                                               f"validation; Eq. 1.5 needs the data-limited corner")
    _decide(sec, "The data needed to avoid overfitting grows sub-linearly with N (alpha_N / alpha_D < 1; Kaplan "
                 "Eq. 1.5)", est, Region.below(1.0), problem)
    fig1 = plots.loss_nd_curves(fit, fit_runs["N"].to_numpy(), fit_runs["D"].to_numpy(), fit_runs["best"].to_numpy())
    fig1.axes[0].set_xlabel("dataset size D (tokens; random chunks, repeated as needed)")
    fig1.axes[0].set_ylabel("test loss at the best validation step (nats/token)")
    sec.figures["loss_vs_D"] = fig1
    # Kaplan Fig. 9 (right): overfitting L/L(N, inf) - 1 against N^(alpha_N/alpha_D) / D.
    fig, ax = plots.figure()
    L_inf = (p["N_c"] / runs["N"].to_numpy()) ** p["alpha_N"]
    x = runs["N"].to_numpy() ** exponent / runs["D"].to_numpy()
    for i, (N, g) in enumerate(sorted(runs.groupby("N"))):
        m = runs["N"].to_numpy() == N
        st = _style(i)
        ax.semilogx(x[m], 100 * (runs["best"].to_numpy()[m] / L_inf[m] - 1), marker=st["marker"],
                    linestyle="none", color=st["color"], mfc=st["mfc"], label=f"N = {N:.2g}")
    grid = np.geomspace(x.min(), x.max(), 100)
    ax.semilogx(grid, 100 * ((1 + grid * p["D_c"] / p["N_c"] ** exponent) ** p["alpha_D"] - 1), "k-", lw=1,
                label="Eq. 1.5 fit")
    ax.axhline(2, color="0.6", ls=":", lw=1, label="2% overfitting")
    ax.axhline(0, color="0.8", lw=0.8)
    ax.set_xlabel(f"N^{exponent:.2f} / D  (N non-embedding, D tokens)")
    ax.set_ylabel("best loss above L(N, D = inf) (%)")
    ax.legend(frameon=False, fontsize=7)
    sec.figures["overfitting"] = plots.tidy(fig)
    rms = 100 * np.sqrt(np.mean(np.square(fit.residuals)))
    sec.notes.append(f"Eq. 1.5 fits {len(fit_runs)} (N, D) runs with {rms:.1f}% RMS scatter.")


def efficiency_section(exps: list[Experiment], sec: Section, out: Path, latency: bool) -> None:
    """Loss against generation latency (batch 1, per token) and against parameters, over every run of every
    experiment; the Pareto fronts; grouped-query and multi-query attention."""
    import pandas as pd

    frames = []
    for e in exps:
        r = e.runs.copy()
        r["experiment"] = e.name
        frames.append(r)
    runs = pd.concat(frames, ignore_index=True)
    runs["model_key"] = [json.dumps(c["model"], sort_keys=True) for c in runs["config_"]]
    if latency:
        lat = _latencies(runs, out)
        runs["latency_ms"] = [1e3 * lat[k]["seconds_per_token"] for k in runs["model_key"]]
        runs["cache_kb"] = [lat[k]["cache_bytes"] / 1024 for k in runs["model_key"]]
        device = next(iter(lat.values()))["device"] if lat else "?"
    else:
        runs["latency_ms"], runs["cache_kb"], device = np.nan, np.nan, "?"
    runs["label"] = [_kind_label(r) for r in runs.itertuples()]
    fig, (ax_n, ax_t) = plots.figure(2)
    kinds = sorted(runs["label"].unique())
    for i, kind in enumerate(kinds):
        g = runs[runs["label"] == kind]
        st = _style(i)
        ax_n.loglog(g["N_total"], g["loss"], marker=st["marker"], linestyle="none", color=st["color"],
                    mfc=st["mfc"], ms=5, label=kind)
        if latency:
            ax_t.loglog(g["latency_ms"], g["loss"], marker=st["marker"], linestyle="none", color=st["color"],
                        mfc=st["mfc"], ms=5, label=kind)
    front_n = _pareto(runs["N_total"].to_numpy(), runs["loss"].to_numpy())
    ax_n.plot(runs["N_total"].to_numpy()[front_n], runs["loss"].to_numpy()[front_n], "k-", lw=1, drawstyle="steps-post",
              label="Pareto front")
    ax_n.set_xlabel(plots.n_label("all")), ax_n.set_ylabel("test loss (nats/token)")
    ax_n.legend(frameon=False, fontsize=6)
    if latency:
        front_t = _pareto(runs["latency_ms"].to_numpy(), runs["loss"].to_numpy())
        ax_t.plot(runs["latency_ms"].to_numpy()[front_t], runs["loss"].to_numpy()[front_t], "k-", lw=1,
                  drawstyle="steps-post", label="Pareto front")
        ax_t.set_xlabel(f"generation latency (ms/token, batch 1, {device})")
        ax_t.set_ylabel("test loss (nats/token)")
        ax_t.legend(frameon=False, fontsize=6)
        rows = [[r.experiment, r.label, r.name, f"{r.N_total:,}", f"{r.latency_ms:.3f}", f"{r.cache_kb:.1f}",
                 f"{r.loss:.4f}"] for r in runs.iloc[front_t].sort_values("latency_ms").itertuples()]
        sec.tables.append((["experiment", "kind", "run", "N (all)", "ms/token", "decode state (KiB)", "loss"], rows))
    sec.figures["pareto"] = plots.tidy(fig)
    sec.notes.append("Runs of different experiments differ in context length and tokens trained; the 'matches' "
                     "verdict compares only runs with the same context and tokens trained, none of them data-limited.")
    # Which smaller model matches a bigger one: among comparable runs (same context, same tokens, none limited to
    # a dataset smaller than what it trained on), the largest N ratio at no worse loss.
    best = None
    unlimited = runs[(runs["D"] == 0) | (runs["D"] >= runs["tokens_trained"])]
    for _, g in unlimited.groupby(["n_ctx", "tokens_trained"]):
        for big in g.itertuples():
            small = g[(g["loss"] <= big.loss) & (g["N_total"] < big.N_total)]
            if len(small):
                s = small.loc[small["N_total"].idxmin()]
                ratio = big.N_total / s.N_total
                if best is None or ratio > best[0]:
                    best = (ratio, s, big)
    windows = {r: w for e in exps for r, w in e.windows.items()}

    def paired(a_id, b_id) -> noise.Estimate | None:
        a, b = windows.get(a_id), windows.get(b_id)
        if a is None or b is None or len(a) != len(b):
            return None
        return noise.paired_difference(a[None], b[None], n_resamples=1000)

    if best:
        ratio, s, big = best
        speed = (f", and decodes in {s.latency_ms:.3f} against {big.latency_ms:.3f} ms/token"
                 if latency else "")
        diff = paired(s.run_id, big.run_id)
        # A search over pairs picks the smaller model that did no worse, so this is reported, not decided: a
        # verdict on a pair chosen for its result would be biased towards "matches".
        sec.numbers.append((f"{s.label} '{s['name']}' ({s.experiment}, N = {s.N_total:,}) against {big.label} "
                            f"'{big['name']}' ({big.experiment}, N = {big.N_total:,}, {ratio:.1f}x the parameters): "
                            f"loss difference (windows paired){speed}", f"{100 * (s.loss / big.loss - 1):+.2f}%",
                            "-" if diff is None or diff.interval is None else
                            f"{diff.interval[0]:+.2f}% to {diff.interval[1]:+.2f}%", "-"))
    gqa = runs[(runs["experiment"] == "efficiency") & (runs["kind"] == "transformer")]
    for d_model, g in gqa.groupby("d_model"):
        mha = g[g["n_kv_heads"] == g["n_heads"]]
        if mha.empty:
            continue
        m = mha.iloc[0]
        for r in g[g["n_kv_heads"] < g["n_heads"]].sort_values("n_kv_heads").itertuples():
            what = "multi-query" if r.n_kv_heads == 1 else f"grouped-query ({r.n_kv_heads} KV heads)"
            lat_text = (f", latency {100 * (r.latency_ms / m.latency_ms - 1):+.0f}%, decode state "
                        f"{r.cache_kb:.1f} against {m.cache_kb:.1f} KiB" if latency else "")
            sec.numbers.append((f"d_model {d_model}: {what} against multi-head attention",
                                f"loss {100 * (r.loss / m.loss - 1):+.1f}%, parameters "
                                f"{100 * (r.N_total / m.N_total - 1):+.0f}%{lat_text}", "-", "-"))
            _decide(sec, f"d_model {d_model}: {what} attention loses no more than 1% against multi-head (loss "
                         f"difference, percent, windows paired)", paired(r.run_id, m.run_id),
                    Region.below(1.0, "< 1% worse"), None, estimate=100 * (r.loss / m.loss - 1))
    if latency:
        fastest = runs.loc[runs["latency_ms"].idxmin()]
        best_loss = runs.loc[runs["loss"].idxmin()]
        sec.notes.append(f"Lowest loss: {best_loss.label} '{best_loss['name']}' ({best_loss.loss:.4f} nats, "
                            f"{best_loss.latency_ms:.3f} ms/token); fastest: {fastest.label} '{fastest['name']}' "
                            f"({fastest.latency_ms:.3f} ms/token, {fastest.loss:.4f} nats), on {device}.")


def _kind_label(r) -> str:
    if r.kind == "lstm":
        return f"LSTM {r.n_layer}L"
    if r.kind == "universal":
        return f"Universal x{r.reuse}"
    if r.kind == "transformer_xl":
        return "Transformer-XL"
    if r.n_kv_heads == 1 and r.n_heads > 1:
        return "Transformer, MQA"
    if r.n_kv_heads < r.n_heads:
        return "Transformer, GQA"
    return "Transformer"


def _pareto(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both cost and loss, by increasing cost."""
    order = np.lexsort((loss, cost))
    front, best = [], np.inf
    for i in order:
        if loss[i] < best:
            front.append(i)
            best = loss[i]
    return np.array(front, int)


def _latencies(runs, out: Path) -> dict[str, dict]:
    """Per-token latency of every distinct model, cached in out/latency.json per device."""
    import jax

    from jscale import config, generate

    path = out / "latency.json"
    device = jax.devices()[0].device_kind
    cache = json.loads(path.read_text()) if path.exists() else {}
    found = {}
    for key in dict.fromkeys(runs["model_key"]):
        h = hashlib.sha1(f"{device}|{key}".encode()).hexdigest()[:16]
        if h not in cache:
            cfg = config.from_dict({"model": json.loads(key)}).model
            cache[h] = generate.latency_per_token(cfg)
        found[key] = cache[h]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return found


def generic_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """Sweeps without a dedicated section (the quickstart): L(N) if N varies."""
    points, losses = _points(exp, exp.runs)
    if points["N"].nunique() < 3:
        sec.notes.append("Fewer than 3 model sizes: nothing to fit.")
        return
    alpha = _power_estimate(points, losses, "N", n_bootstrap)
    sec.numbers.append(("alpha_N, L = (N_c/N)^alpha_N (seeds and windows resampled)", f"{alpha.value:.3f}",
                        alpha.text().split("(", 1)[1].rstrip(")"), "0.076 (WebText2, BPE)"))
    if alpha.value > 0:
        fit = _power(points["N"], points["loss"], bootstrap=0)
        sec.figures["loss_vs_N"] = plots.loss_vs_variable(
            dataclasses.replace(fit, convention={"N": "non_embedding"}), points["N"], points["loss"])
    _decide(sec, f"Test loss falls as a power of N over N = {points['N'].min():,} to {points['N'].max():,} "
                 f"(alpha_N > 0)", alpha, Region.above(0.0), regime.problem(exp.runs))


SECTIONS: dict[str, tuple[str, Callable]] = {
    "size": ("Loss against model size, with and without embeddings", size_section),
    "shape": ("Model shape at fixed N", shape_section),
    "lstm": ("LSTMs against Transformers", lstm_section),
    "recurrent": ("Recurrent Transformers: reuse over depth and memory over time", recurrent_section),
    "compute": ("Compute: the frontier, compute-optimal size and FLOP counts", compute_section),
    "data": ("Data: L(N, D) and overfitting", data_section),
    "efficiency": ("Efficiency: which smaller model matches a bigger one", None),  # see _sections
}


# ---------------------------------------------------------------------------------------------------------------
# Writing.


def build_sections(root: Path, out: Path, latency: bool = True, n_bootstrap: int = N_BOOTSTRAP,
                   baselines: bool = True) -> list[Section]:
    return _sections(find_experiments(Path(root)), Path(out), latency, n_bootstrap, baselines)


def _sections(exps: list[Experiment], out: Path, latency: bool, n_bootstrap: int,
              baselines: bool = True) -> list[Section]:
    sections = []
    for e in exps:
        analysis = e.info.get("analysis", e.name)
        title, analyse = SECTIONS.get(analysis, (f"Sweep '{e.name}'", generic_section))
        sec = Section(e.name, title, e.info.get("claim", ""), e.info.get("scale"))
        sec.notes.append(f"{len(e.runs)} of {e.n_planned} runs finished; unfinished and diverged runs are left out.")
        devices = sorted({f"{s['device']} ({s['backend']}, jax {s['jax']})" for s in e.info.get("sessions", [])})
        days = sorted({s["date"][:10] for s in e.info.get("sessions", [])})
        if devices:
            sec.notes.append(f"Trained with `jscale run` on {', '.join(devices)}, {' to '.join(dict.fromkeys([days[0], days[-1]]))}.")
        if analysis == "efficiency":  # reads the runs of every experiment
            efficiency_section(exps, sec, out, latency)
        elif len(e.runs) == 0:
            sec.notes.append("No finished runs yet.")
        else:
            try:
                analyse(e, sec, n_bootstrap)
            except laws.LawFitError as err:
                sec.notes.append(f"Not enough finished runs to fit: {err}")
            measurement_table(e, sec, corpus_baselines(e) if baselines else None)
        sections.append(sec)
    return sections


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def write_report(root: str | Path, out: str | Path | None = None, latency: bool = True,
                 n_bootstrap: int = N_BOOTSTRAP, baselines: bool = True) -> dict[str, Path]:
    root = Path(root)
    out = Path(out) if out else root / "report"
    if n_bootstrap < 0:
        raise JscaleError(f"--bootstrap: must be >= 0, got {n_bootstrap}")
    if out.exists() and not out.is_dir():
        raise JscaleError(f"--out: {out} is a file, not a directory")
    exps = find_experiments(root)
    sections = _sections(exps, out, latency, n_bootstrap, baselines)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for e in exps:
        cols = ["run_id", "name", "kind", "n_layer", "d_model", "d_ff", "d_attn", "n_heads", "n_kv_heads", "reuse",
                "mem_len", "n_ctx", "N", "N_total", "D", "seed", "lr", "tokens_trained", "C_6N", "C_exact",
                "final_val_loss", "final_val_se", "final_test_loss", "final_test_se", "best_val_loss", "best_val_step",
                "tokens_per_param", "epochs", "late_improvement", "regime", "tokens_per_s"]
        e.runs[cols].to_csv(out / f"{e.name}-runs.csv", index=False)
    import jax

    stamp = (f"{datetime.date.today().isoformat()}, {jax.devices()[0].device_kind} ({jax.default_backend()}), "
             f"jax {jax.__version__}")
    md = [f"# jscale report: {root}", "", f"Written {stamp}. Figures, numbers and verdicts are computed from the "
          f"results databases by `jscale report`; nothing here is written by hand.", ""]
    pngs: dict[str, bytes] = {}
    for sec in sections:
        head = f"{sec.title} (`{sec.name}`" + (f", scale {sec.scale})" if sec.scale else ")")
        md += [f"## {head}", "", f"Claim tested: {sec.claim}", ""]
        if sec.verdicts:
            md += ["Verdicts:", ""] + [f"- {v}" for v in sec.verdicts] + [""]
        for name, fig in sec.figures.items():
            path = out / "figures" / f"{sec.name}-{name}.png"
            pngs[path.name] = _png(fig)
            path.write_bytes(pngs[path.name])
            md += [f"![{sec.name} {name}](figures/{path.name})", ""]
        if sec.numbers:
            md += _md_table(["quantity", "ours", "95% interval", "published"], sec.numbers)
        for header, rows in sec.tables:
            md += _md_table(header, rows)
        for note in sec.notes:
            md += [f"_{note}_", ""]
    text = "\n".join(md)
    (out / "report.md").write_text(text)
    (out / "report.html").write_text(markdown_page(text, pngs))
    return {"html": out / "report.html", "markdown": out / "report.md"}


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(header, rows) -> list[str]:
    return (["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows] + [""])


def markdown_page(text: str, pngs: dict[str, bytes]) -> str:
    """report.html: report.md rendered by a Markdown library (so no markup shows as literal text), with each
    figure embedded as PNG data so the page stands alone."""
    import markdown

    body = markdown.markdown(text, extensions=["tables", "sane_lists"], output_format="html")
    for name, png in pngs.items():
        body = body.replace(f'src="figures/{name}"', f'src="data:image/png;base64,{base64.b64encode(png).decode()}"')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}"
             "img{max-width:100%;display:block;margin:1em 0}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #999;padding:3px 8px;font-size:13px}em{color:#555}")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>jscale report</title><style>{style}</style>"
            f"</head><body>{body}</body></html>")


