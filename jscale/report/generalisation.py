"""Generalisation to other distributions (Kaplan Fig. 8): the loss on text no model trained on (the built-in corpus's
English sets `prose` and `notes`) against the loss on held-out text of the training distribution (test). Kaplan found
it depends on the training loss alone, with a roughly constant offset: a line of slope near 1.

Judged per experiment on the final evaluations of the runs that did not overfit (not pooled over checkpoints and
experiments: early-training and overfitting evaluations carried the pooled slope), against each extra set that is
at most half one file, and only where an experiment has two such sets. No sweep of its own; the section appears
when runs scored an extra evaluation set."""

from __future__ import annotations

import numpy as np

from jscale import noise, plots
from jscale.report.common import Experiment, Section, series_style, verdict
from jscale.verdicts import Region

CLAIM = ("the loss on another distribution follows the loss on the training distribution along a line of slope "
         "near 1 (a constant offset), across sizes and checkpoints (Fig. 8)")
SLOPE_REGION = Region(0.8, 1.25, "0.8 to 1.25")
MAX_SHARE = 0.5  # a held-out distribution no more than half of which is one file


MIN_RUNS = 5  # final evaluations of at least this many runs per experiment for a slope


def final_points(e: Experiment, other: str) -> dict[str, np.ndarray]:
    """One point per run of an experiment: its final evaluation's test and `other` losses with their standard
    errors, for the runs that did not overfit (an overfitting run's test loss no longer tracks how well it models the
    training distribution). Arrays test, test_se, other, other_se (empty when the set was not scored)."""
    if e.evals is None or not len(e.evals) or not len(e.runs):
        return {}
    runs = e.runs[e.runs["regime"] != "overfitting"]
    final = dict(zip(runs["run_id"], runs["steps"]))
    ev = e.evals[e.evals["run_id"].isin(final) & (e.evals["step"] == e.evals["run_id"].map(final))]
    both = ev[ev["split"] == "test"].merge(ev[ev["split"] == other], on=["run_id", "step"], suffixes=("_t", "_o"))
    if not len(both):
        return {}
    return {"test": both["loss_t"].to_numpy(float), "test_se": np.nan_to_num(both["se_t"].to_numpy(float)),
            "other": both["loss_o"].to_numpy(float), "other_se": np.nan_to_num(both["se_o"].to_numpy(float))}


def other_sets(exps: list[Experiment]) -> list[str]:
    """The evaluation sets besides validation and test that any experiment scored."""
    found = set()
    for e in exps:
        if e.evals is not None and len(e.evals):
            found |= set(e.evals["split"]) - {"validation", "test"}
    return sorted(found)


def has_other_set(exps: list[Experiment]) -> bool:
    return bool(other_sets(exps))


def largest_file_share(e: Experiment, other: str) -> float | None:
    """How much of the evaluation set `other` its largest file is, from the experiment's token cache (None when the
    corpus cannot be opened here or its cache predates the count)."""
    from jscale import config, data
    from jscale.errors import JscaleError

    d = e.runs["config_"].iloc[0]["data"]
    try:
        corpus = data.prepare(config.DataConfig(**{k: v for k, v in d.items()
                                                   if k in config.DataConfig.__dataclass_fields__}))
    except (JscaleError, OSError):
        return None
    return corpus.meta.get(f"{other}_largest_file_share")


def slope_estimate(p: dict[str, np.ndarray], n_resamples: int, seed: int = 0) -> noise.Estimate:
    """The slope of L_other against L_test over the runs' final evaluations, with an interval from resampling runs
    and drawing every loss again from its standard error over windows."""
    value = float(np.polyfit(p["test"], p["other"], 1)[0])
    n_runs = len(p["test"])
    if not n_resamples or n_runs < MIN_RUNS:
        return noise.Estimate(value, None, 0, 0, n_runs)

    def draw(rng: np.random.Generator) -> float:
        idx = rng.integers(0, n_runs, n_runs)
        x = p["test"][idx] + rng.normal(0, 1, n_runs) * p["test_se"][idx]
        y = p["other"][idx] + rng.normal(0, 1, n_runs) * p["other_se"][idx]
        if np.ptp(x) <= 0:
            raise ValueError("one test loss in the resample: no slope")
        return np.polyfit(x, y, 1)[0]

    return noise.percentile_estimate(value, draw, n_resamples, n_runs, seed)


def generalisation_section(exps: list[Experiment], sec: Section, out, latency: bool, n_bootstrap: int = 1000) -> None:
    sets = other_sets(exps)
    shares = {(e.name, o): largest_file_share(e, o) for e in exps for o in sets}
    fig, ax = plots.figure(1)
    k = 0
    for e in exps:
        usable = [o for o in sets if shares[(e.name, o)] is not None and shares[(e.name, o)] <= MAX_SHARE]
        for other in sets:
            p = final_points(e, other)
            if not p:
                continue
            slope = slope_estimate(p, n_bootstrap)
            offset = p["other"] - p["test"]
            share = shares[(e.name, other)]
            sec.numbers.append((f"{e.name}: slope of L_{other} against L_test, final evaluations of {len(offset)} runs "
                                f"that did not overfit (runs and evaluation noise resampled)", f"{slope.value:.3f}",
                                slope.text().split("(", 1)[1].rstrip(")"), "~1 (a constant offset; Fig. 8)"))
            sec.numbers.append((f"{e.name}: offset L_{other} - L_test, median over those runs",
                                f"{np.median(offset):+.3f} nats", "-", "-"))
            problem = None
            if share is None:
                problem = f"the composition of {other} is unknown here (its largest file's share is not recorded)"
            elif share > MAX_SHARE:
                problem = f"{other} is {100 * share:.0f}% one file: one sample of text, not a distribution"
            elif len(usable) < 2:
                problem = (f"judged against {len(usable)} held-out distribution(s) of at most half one file; the "
                           f"claim needs two")
            verdict(sec, f"{e.name}: the {other} loss follows the test loss along a line of slope near 1 (0.8 to "
                         f"1.25; final evaluations of runs that did not overfit; Kaplan Fig. 8)", slope, SLOPE_REGION,
                    problem)
            st = series_style(k)
            k += 1
            ax.plot(p["test"], p["other"], marker=st["marker"], linestyle="none", color=st["color"], mfc=st["mfc"],
                    ms=4, label=f"{e.name}: {other}")
    if not k:
        sec.notes.append(f"No run scored test and another set ({', '.join(sets) or 'none'}) at its final evaluation.")
        return
    sec.notes.append("Held-out distributions and the share of their largest file: " + ", ".join(
        sorted({f"{o} ({'unknown' if v is None else f'{100 * v:.0f}%'})" for (_, o), v in shares.items()})) +
        f"; a set more than {100 * MAX_SHARE:.0f}% one file is not judged, and each experiment needs two sets.")
    ax.set_xlabel("final test loss, training distribution (nats/token)")
    ax.set_ylabel("final loss on the other distribution (nats/token)")
    ax.legend(frameon=False, fontsize=7)
    sec.figures["generalisation"] = plots.tidy(fig)


ANALYSIS = "generalisation"
TITLE = "Generalisation to another distribution"
POSITION = 80  # order in the report
READS_ALL = True  # analyse(experiments, section, out, latency, n_bootstrap) reads every experiment's runs
AUTO = has_other_set  # no sweep of its own: added when this is true of the experiments
analyse = generalisation_section
