"""Generalisation to another distribution (Kaplan Fig. 8): the loss on text no model trained on (the built-in
corpus's English `prose` set) against the loss on held-out text of the training distribution (test), over every
run and checkpoint of every experiment. Kaplan found it depends on the training loss alone, with a roughly constant
offset: a line of slope near 1. No sweep of its own; the section appears when runs scored an extra evaluation set."""

from __future__ import annotations

import numpy as np

from jscale import noise, plots
from jscale.report.common import Experiment, Section, series_style, verdict
from jscale.verdicts import Region

CLAIM = ("the loss on another distribution follows the loss on the training distribution along a line of slope "
         "near 1 (a constant offset), across sizes and checkpoints (Fig. 8)")
SLOPE_REGION = Region(0.8, 1.25, "0.8 to 1.25")


def paired_points(exps: list[Experiment], other: str) -> dict[str, np.ndarray]:
    """Every evaluation of a reported run at which both test and `other` were scored: arrays run (index of the
    run), test loss, its SE, other loss, its SE, experiment index."""
    rows = []
    for k, e in enumerate(exps):
        if e.evals is None or not len(e.evals) or not len(e.runs):
            continue
        ev = e.evals[e.evals["run_id"].isin(e.runs["run_id"])]
        both = ev[ev["split"] == "test"].merge(ev[ev["split"] == other], on=["run_id", "step"],
                                               suffixes=("_test", "_other"))
        for r in both.itertuples():
            rows.append((f"{k}:{r.run_id}", r.loss_test, r.se_test, r.loss_other, r.se_other, k))
    if not rows:
        return {}
    run, lt, st, lo, so, exp = zip(*rows)
    ids = {r: i for i, r in enumerate(dict.fromkeys(run))}
    return {"run": np.array([ids[r] for r in run]), "test": np.array(lt, float), "test_se": np.nan_to_num(st),
            "other": np.array(lo, float), "other_se": np.nan_to_num(so), "experiment": np.array(exp)}


def has_other_set(exps: list[Experiment], other: str = "prose") -> bool:
    return any(e.evals is not None and len(e.evals) and (e.evals["split"] == other).any() for e in exps)


def slope_estimate(p: dict[str, np.ndarray], n_resamples: int, seed: int = 0) -> noise.Estimate:
    """The slope of L_other against L_test, with an interval from resampling runs (all their checkpoints) and
    drawing every loss again from its standard error over windows."""
    value = float(np.polyfit(p["test"], p["other"], 1)[0])
    n_runs = int(p["run"].max()) + 1
    if not n_resamples:
        return noise.Estimate(value, None, 0, 0, n_runs)
    by_run = [np.flatnonzero(p["run"] == i) for i in range(n_runs)]

    def draw(rng: np.random.Generator) -> float:
        idx = np.concatenate([by_run[i] for i in rng.integers(0, n_runs, n_runs)])
        x = p["test"][idx] + rng.normal(0, 1, len(idx)) * p["test_se"][idx]
        y = p["other"][idx] + rng.normal(0, 1, len(idx)) * p["other_se"][idx]
        if np.ptp(x) <= 0:
            raise ValueError("one test loss in the resample: no slope")
        return np.polyfit(x, y, 1)[0]

    return noise.percentile_estimate(value, draw, n_resamples, n_runs, seed, min_share=0.0)


def generalisation_section(exps: list[Experiment], sec: Section, out, latency: bool, n_bootstrap: int = 1000,
                           other: str = "prose") -> None:
    p = paired_points(exps, other)
    if not p:
        sec.notes.append(f"No run scored both test and {other}.")
        return
    slope = slope_estimate(p, n_bootstrap)
    offset = p["other"] - p["test"]
    sec.numbers.append((f"slope of L_{other} against L_test (runs and evaluation noise resampled)", f"{slope.value:.3f}",
                        slope.text().split("(", 1)[1].rstrip(")"), "~1 (a constant offset; Fig. 8)"))
    sec.numbers.append((f"offset L_{other} - L_test, median over {len(offset)} evaluations",
                        f"{np.median(offset):+.3f} nats", f"{np.quantile(offset, 0.1):+.3f} to "
                        f"{np.quantile(offset, 0.9):+.3f} (10th-90th percentile)", "-"))
    fig, ax = plots.figure(1)
    for k in np.unique(p["experiment"]):
        st = series_style(int(k))
        m = p["experiment"] == k
        ax.plot(p["test"][m], p["other"][m], marker=st["marker"], linestyle="none", color=st["color"],
                mfc=st["mfc"], ms=3, label=exps[int(k)].name)
    x = np.linspace(p["test"].min(), p["test"].max(), 10)
    ax.plot(x, np.polyval(np.polyfit(p["test"], p["other"], 1), x), color="k", lw=1)
    ax.set_xlabel("test loss, training distribution (nats/token)")
    ax.set_ylabel(f"{other} loss (nats/token)")
    ax.legend(frameon=False, fontsize=7)
    sec.figures["generalisation"] = plots.tidy(fig)
    verdict(sec, f"The {other} loss follows the test loss along a line of slope near 1 (0.8 to 1.25; runs and "
                 f"checkpoints of every experiment; Kaplan Fig. 8)", slope, SLOPE_REGION, None)


ANALYSIS = "generalisation"
TITLE = "Generalisation to another distribution"
POSITION = 80  # order in the report
READS_ALL = True  # analyse(experiments, section, out, latency, n_bootstrap) reads every experiment's runs
AUTO = has_other_set  # no sweep of its own: added when this is true of the experiments
analyse = generalisation_section
