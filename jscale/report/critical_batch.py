"""The critical batch size (Kaplan Sec. 5.1, Fig. 18, Eq. 5.1): one model trained at several batch sizes (each
with its own tuned learning rate); for each loss target the steps S and tokens E each batch size needed lie on
(S / S_min - 1)(E / E_min - 1) = 1, and B_crit = E_min / S_min grows as the loss falls, B_crit(L) = B_* / L^(1/alpha_B).
Learning curves in the compute-limited regime: no run may overfit."""

from __future__ import annotations

import numpy as np

from jscale import laws, plots
from jscale.report.common import (Experiment, Section, crossing_step, curve_bootstrap, curve_noise_correlation,
                                  overfitting_problem, plot_curves, reachable_targets, series_style, validation_curves,
                                  verdict)
from jscale.verdicts import Region

KAPLAN_B = {"B_star": 2e8, "alpha_B": 0.21}  # tokens, WebText2 GPT-2 BPE (Kaplan Eq. 5.3)


def crossings(picked, batch_tokens: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, ...]:
    """(S, E, target) for every batch size that reaches each target: the steps (geometric mean over seeds) and
    tokens it took."""
    S, E, T = [], [], []
    for runs, b in zip(picked, batch_tokens):
        for t in targets:
            s = np.exp(np.mean([np.log(crossing_step(st, v, t)) for st, v in runs]))
            if np.isfinite(s):
                S.append(s), E.append(s * b), T.append(t)
    return np.array(S), np.array(E), np.array(T)


def bcrit_slope(picked, batch_tokens: np.ndarray, targets: np.ndarray) -> float:
    """d log B_crit / d log L over the targets (negative: B_crit grows as the loss falls); NaN where Eq. 5.1
    cannot be fitted."""
    try:
        S, E, T = crossings(picked, batch_tokens, targets)
        rows = laws.critical_batch_rows(S, E, T, T)
    except laws.LawFitError:
        return float("nan")
    if len(rows) < 2:
        return float("nan")
    return float(np.polyfit(np.log([r[0] for r in rows]), np.log([r[3] for r in rows]), 1)[0])


def overlapping_batches(batches: list, groups: list[list[str]], curves: dict, warmup: dict[str, float]
                        ) -> tuple[list, list, np.ndarray]:
    """The most batch sizes, adjacent in size, whose evaluated validation curves share a range of losses after
    their warmups, and 5 loss targets in it. (A large batch's few steps may never reach the loss a small batch has
    passed at its first evaluation after warmup; such a batch size is left out, and the section says so.) Targets
    lie after warmup because the learning rate is still rising there, and a small batch spends more steps in it."""
    for k in range(len(batches), 2, -1):
        for start in range(len(batches) - k + 1):
            chosen = groups[start:start + k]
            targets = reachable_targets({r: curves[r][:2] for g in chosen for r in g}, count=5, after=warmup)
            if len(targets):
                return batches[start:start + k], chosen, targets
    return batches, groups, np.array([])


def critical_batch_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    runs = exp.runs.copy()
    runs["B_tokens"] = runs["batch_size"] * runs["n_ctx"]
    batches = sorted(runs["B_tokens"].unique())
    groups = [list(runs.loc[runs["B_tokens"] == b, "run_id"]) for b in batches]
    curves = validation_curves(exp, runs["run_id"])
    if len(batches) < 3 or any(r not in curves for g in groups for r in g):
        sec.notes.append("Needs learning curves at 3 or more batch sizes.")
        return
    warmup = {r: cfg["train"]["warmup_steps"] for r, cfg in zip(runs["run_id"], runs["config_"])}
    batches, groups, targets = overlapping_batches(batches, groups, curves, warmup)
    if not len(targets):
        sec.notes.append("No validation loss is reached within the evaluated curves of 3 or more batch sizes.")
        return
    left_out = sorted(set(runs["B_tokens"]) - set(batches))
    if left_out:
        sec.notes.append(f"Left out: batch size{'s' if len(left_out) > 1 else ''} of "
                         f"{', '.join(f'{x:,.0f}' for x in left_out)} tokens, whose validation curves share no "
                         f"range of losses after warmup with the others' evaluated curves.")
    b = np.asarray(batches, float)
    try:
        fit = laws.fit_critical_batch(*crossings([[curves[r][:2] for r in g] for g in groups], b, targets),
                                      n_bootstrap=0)
    except laws.LawFitError as e:
        sec.notes.append(f"B_crit(L) not fitted: {e}")
        fit = None
    rho = curve_noise_correlation(exp, sec, runs["run_id"])
    slope = curve_bootstrap(groups, curves, lambda picked: bcrit_slope(picked, b, targets), n_bootstrap, rho=rho)
    if fit is not None:
        rows = [[f"{r['loss']:.3f}", f"{r['S_min']:,.0f}", f"{r['E_min']:.3g}", f"{r['B_crit']:,.0f}"]
                for r in fit.info["per_target"]]
        sec.tables.append((["loss target", "S_min (steps)", "E_min (tokens)", "B_crit (tokens)"], rows))
        sec.numbers.append(("alpha_B of B_crit(L) = B_* / L^(1/alpha_B)", f"{fit.params['alpha_B']:.3f}", "-",
                            f"{KAPLAN_B['alpha_B']} (WebText2, BPE tokens: not comparable)"))
    sec.numbers.append(("d log B_crit / d log L (seeds and evaluation noise resampled)", f"{slope.value:.2f}",
                        slope.text(".2f").split("(", 1)[1].rstrip(")"), f"-1/alpha_B = {-1 / KAPLAN_B['alpha_B']:.1f}"))

    fig, (ax_c, ax_se) = plots.figure(2)
    plot_curves(ax_c, groups, curves, list(batches), [f"B = {bt:,.0f} tokens" for bt in batches])
    ax_c.legend(frameon=False, fontsize=7)
    for k, t in enumerate(targets):
        st = series_style(k)
        S = np.array([np.exp(np.mean([np.log(crossing_step(*curves[r][:2], t)) for r in g])) for g in groups])
        ax_se.plot(S, S * b, marker=st["marker"], color=st["color"], mfc=st["mfc"], linestyle=st["linestyle"],
                   label=f"L = {t:.3f}")
    ax_se.set_xscale("log"), ax_se.set_yscale("log")
    ax_se.set_xlabel("steps S"), ax_se.set_ylabel("tokens E")
    ax_se.legend(frameon=False, fontsize=7)
    sec.figures["critical_batch"] = plots.tidy(fig)
    verdict(sec, "The critical batch size grows as the loss falls (d log B_crit / d log L < 0; Kaplan Fig. 18)",
            slope, Region.below(0.0).sign(), overfitting_problem(runs))
    # The exponent is scale-free (a constant factor on the loss, nats per byte against nats per BPE token, leaves it
    # unchanged), so Kaplan's number is testable in kind. Its value depends on the data and the tokenizer; the band
    # is a factor of 1.5 either way (-7.2 to -3.2), which still excludes no dependence (0) and one twice as steep.
    paper = -1 / KAPLAN_B["alpha_B"]
    verdict(sec, f"d log B_crit / d log L is Kaplan's -1/alpha_B = {paper:.1f} within a factor of 1.5 (Fig. 18, "
                 f"Eq. 5.3)", slope, Region(paper * 1.5, paper / 1.5, f"between {paper * 1.5:.1f} and "
                                                               f"{paper / 1.5:.1f}"), overfitting_problem(runs))


ANALYSIS = "critical_batch"  # the sweep's `analysis` (sweep.json) this section reads
TITLE = "The critical batch size against the loss"
POSITION = 55  # order in the report
analyse = critical_batch_section
