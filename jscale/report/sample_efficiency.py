"""Sample efficiency and L(N, S) (Kaplan Fig. 2 and 19, Eq. 1.6): larger models reach a given loss in fewer steps
and tokens. A claim about learning curves in the compute-limited regime, so every run is read along its validation
curve (evaluated every few dozen steps) and none may overfit."""

from __future__ import annotations

import numpy as np

from jscale import laws, plots
from jscale.report.common import (Experiment, Section, crossing_step, curve_bootstrap, curve_noise_correlation,
                                  interval_text, overfitting_problem, plot_curves, reachable_targets, series_style,
                                  units_note, validation_curves, verdict)
from jscale.verdicts import Region

KAPLAN_NS = {"alpha_N": 0.076, "alpha_S": 0.76}  # Eq. 1.6 on WebText2 (GPT-2 BPE tokens), Kaplan Table 3
# The slopes are 0.1 to 0.5 in size here and in Kaplan's curves: a prediction off by more than 0.1 misses by a
# third or more.
SLOPE_TOLERANCE = 0.1


def _eq16_slope(target: float, N: np.ndarray, p: dict[str, float]) -> float:
    """Eq. 1.6's d log S / d log N at a loss target, over these sizes: S = S_c (L - L_N)^(-1/alpha_S) with
    L_N = (N_c / N)^alpha_N, fitted in log-log (nan where a size cannot reach the target by Eq. 1.6)."""
    L_N = (p["N_c"] / N) ** p["alpha_N"]
    gap = target - L_N
    if np.any(gap <= 0):
        return float("nan")
    logS = np.log(p["S_c"]) - np.log(gap) / p["alpha_S"]
    return float(np.polyfit(np.log(N), logS, 1)[0])


def _slope_gap(picked, logN: np.ndarray, targets: np.ndarray, p: dict[str, float], N: np.ndarray) -> float:
    """The measured slope minus Eq. 1.6's, averaged over the targets where both exist."""
    gaps = [steps_slope(picked, logN, np.array([t])) - _eq16_slope(t, N, p) for t in targets]
    gaps = [g for g in gaps if np.isfinite(g)]
    return float(np.mean(gaps)) if gaps else float("nan")


def steps_slope(picked: list[list[tuple[np.ndarray, np.ndarray]]], logN: np.ndarray, targets: np.ndarray) -> float:
    """The mean over loss targets of d log(steps to reach the target) / d log N; the steps of a size are the
    geometric mean over its seed replicas."""
    slopes = []
    for target in targets:
        log_steps = np.array([np.mean([np.log(crossing_step(s, v, target)) for s, v in runs]) for runs in picked])
        ok = np.isfinite(log_steps)
        if ok.sum() >= 2:
            slopes.append(np.polyfit(logN[ok], log_steps[ok], 1)[0])
    return float(np.mean(slopes)) if slopes else float("nan")


def sample_efficiency_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    runs = exp.runs.sort_values("N")
    sizes = sorted(runs["N"].unique())
    groups = [list(runs.loc[runs["N"] == n, "run_id"]) for n in sizes]
    curves = validation_curves(exp, runs["run_id"])
    if len(sizes) < 2 or any(r not in curves for g in groups for r in g):
        sec.notes.append("Needs learning curves of at least 2 sizes.")
        return
    # Targets are reached after every size's warmup: a loss crossed during a warmup measures the warmup's length.
    warmup = {r: cfg["train"]["warmup_steps"] for r, cfg in zip(runs["run_id"], runs["config_"])}
    targets = reachable_targets({r: curves[r][:2] for g in groups for r in g}, after=warmup)
    if not len(targets):
        sec.notes.append("No validation loss is reached by every run: the sizes' curves do not overlap.")
        return
    logN = np.log(np.asarray(sizes, float))
    rho = curve_noise_correlation(exp, sec, runs["run_id"])
    slope = curve_bootstrap(groups, curves, lambda picked: steps_slope(picked, logN, targets), n_bootstrap, rho=rho)
    B_tokens = float(runs["batch_size"].iloc[0] * runs["n_ctx"].iloc[0])
    header = ["N"] + [f"steps to L = {t:.3f}" for t in targets]
    rows = []
    for n, g in zip(sizes, groups):
        steps = [np.exp(np.mean([np.log(crossing_step(*curves[r][:2], t)) for r in g])) for t in targets]
        rows.append([f"{n:,}"] + [f"{s:,.0f} ({s * B_tokens:.3g} tokens)" for s in steps])
    sec.tables.append((header, rows))
    sec.numbers.append(("d log(steps to a fixed loss) / d log N, mean over the targets (seeds and evaluation noise "
                        "resampled)", f"{slope.value:.3f}", slope.text().split("(", 1)[1].rstrip(")"),
                        "negative (larger models learn faster; Fig. 2)"))

    # Kaplan's Eq. 1.6 on every curve point after warmup. With a fixed batch, S is the steps taken; Kaplan's S_min
    # (steps at B >> B_crit) would need the critical-batch experiment's B_crit(L).
    c = exp.curves[exp.curves["run_id"].isin(runs["run_id"])]
    warm = c["run_id"].map(runs.set_index("run_id")["config_"].map(
        lambda cfg: max(cfg["train"]["warmup_steps"], 0.1 * cfg["train"]["steps"])))
    c = c[c["step"] > warm]
    try:
        fit = laws.fit_kaplan_ns(c["N"].to_numpy(float), c["step"].to_numpy(float), c["val_loss"].to_numpy(float),
                                 n_bootstrap=min(n_bootstrap, 200))
        for key in ("alpha_N", "alpha_S"):
            sec.numbers.append((f"Eq. 1.6 {key} (S = steps at batch {B_tokens:,.0f} tokens; points resampled)",
                                f"{fit.params[key]:.3f}", interval_text(fit, key), f"{KAPLAN_NS[key]} (WebText2, BPE)"))
        sec.notes.append("Eq. 1.6 " + units_note(runs) + ".")
    except laws.LawFitError as e:
        sec.notes.append(f"Eq. 1.6 not fitted: {e}")
        fit = None
    if fit is not None:  # each target's slope beside Eq. 1.6's: d log S / d log N = -(alpha_N/alpha_S) L_N/(L - L_N)
        per_target = curve_bootstrap(groups, curves, lambda picked: _slope_gap(picked, logN, targets, fit.params,
                                                                               np.asarray(sizes, float)),
                                     n_bootstrap, rho=rho)
        rows = []
        for t in targets:
            measured = steps_slope([[curves[r][:2] for r in g] for g in groups], logN, np.array([t]))
            rows.append([f"{t:.3f}", f"{measured:.3f}", f"{_eq16_slope(t, np.asarray(sizes, float), fit.params):.3f}"])
        sec.tables.append((["loss target", "measured d log S / d log N", "Eq. 1.6's prediction"], rows))
        sec.numbers.append(("measured minus Eq. 1.6's d log S / d log N, mean over the targets (seeds and evaluation "
                            "noise resampled)", f"{per_target.value:+.3f}",
                            per_target.text("+.3f").split("(", 1)[1].rstrip(")"), "0 (Eq. 1.6 holds)"))
        verdict(sec, f"Eq. 1.6 predicts how much sooner larger models reach a loss: the measured slope is its "
                     f"prediction within {SLOPE_TOLERANCE} at the targets (mean difference)", per_target,
                Region.near(0.0, SLOPE_TOLERANCE, f"within ±{SLOPE_TOLERANCE}"), overfitting_problem(runs))

    fig, (ax_c, ax_s) = plots.figure(2)
    plot_curves(ax_c, groups, curves, [B_tokens] * len(groups), [f"N = {n:,}" for n in sizes])
    for t in targets:
        ax_c.axhline(t, color="0.8", lw=0.6)
    ax_c.legend(frameon=False, fontsize=7)
    for k, t in enumerate(targets):
        st = series_style(k)
        steps = [np.exp(np.mean([np.log(crossing_step(*curves[r][:2], t)) for r in g])) for g in groups]
        ax_s.plot(sizes, steps, marker=st["marker"], color=st["color"], mfc=st["mfc"], linestyle=st["linestyle"],
                  label=f"L = {t:.3f}")
    ax_s.set_xscale("log"), ax_s.set_yscale("log")
    ax_s.set_xlabel("non-embedding parameters N"), ax_s.set_ylabel("steps to reach L")
    ax_s.legend(frameon=False, fontsize=7)
    sec.figures["sample_efficiency"] = plots.tidy(fig)
    verdict(sec, "Larger models reach each fixed validation loss in fewer steps (slope of log steps against log N "
                 "< 0; Kaplan Fig. 2)", slope, Region.below(0.0).sign(), overfitting_problem(runs))


ANALYSIS = "sample_efficiency"  # the sweep's `analysis` (sweep.json) this section reads
TITLE = "Sample efficiency: steps and tokens to reach a loss, against N"
POSITION = 15  # order in the report
analyse = sample_efficiency_section
