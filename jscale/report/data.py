"""Data: L(N, D) and overfitting (Kaplan Fig. 9, Eq. 1.5)."""

from __future__ import annotations

import numpy as np

from jscale import laws, plots, results
from jscale.report.common import (PATIENCE, Experiment, Section, interval_text, law_estimate, series_style,
                                  stopping_step, units_note, validation_curves, verdict)
from jscale.verdicts import Region


def data_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """L(N, D) with early stopping on validation (Kaplan Eq. 1.5) and the overfitting bound."""
    runs = exp.runs[exp.runs["D"] > 0].copy()
    # Early stopping reads validation: each run's test loss at its best validation step (test is only reported).
    runs["best"] = results.test_at_best_validation(runs, exp.curves)
    curves = validation_curves(exp, runs["run_id"])
    runs["stop_step"] = [stopping_step(*curves[r][:2]) if r in curves else np.nan for r in runs["run_id"]]
    stopped = runs[np.isfinite(runs["stop_step"])]
    fit_runs = stopped if len(stopped) >= 4 else runs
    rows = [[r.name, f"{r.N:,}", f"{r.D:.2g}", f"{r.stop_step:,.0f}" if np.isfinite(r.stop_step) else "did not stop",
             f"{r.stop_step * r.batch_size * r.n_ctx / r.D:.2g}" if np.isfinite(r.stop_step) else "-", f"{r.best:.4f}"]
            for r in runs.sort_values(["N", "D"]).itertuples()]
    sec.tables.append((["run", "N", "D (tokens)", f"early stop (validation up {PATIENCE} evaluations in a row)",
                        "epochs at the stop", "test loss there"], rows))
    fit = laws.fit_kaplan_nd(fit_runs["N"], fit_runs["D"], fit_runs["best"], n_bootstrap=n_bootstrap,
                             convention={"N": "non_embedding"})
    p = fit.params
    for key, paper in (("alpha_N", "0.076"), ("alpha_D", "0.103"), ("N_c", "6.4e13"), ("D_c", "1.8e13")):
        fmt = ".3f" if key.startswith("alpha") else ".3g"
        sec.numbers.append((f"{key} of L(N, D), test loss at the best validation step", f"{p[key]:{fmt}}",
                            interval_text(fit, key, fmt), paper + " (WebText2, BPE)"))
    exponent = p["alpha_N"] / p["alpha_D"]
    est = law_estimate(fit, "overfit_exponent")
    sec.numbers.append(("overfitting bound: D needed grows as N^(alpha_N / alpha_D)", f"{exponent:.2f}",
                        est.text(".2f").split("(", 1)[1].rstrip(")"), "0.74 (WebText2, BPE)"))
    d_2pct = lambda N: p["D_c"] * (N / p["N_c"]) ** exponent / (1.02 ** (1 / p["alpha_D"]) - 1)
    Ns = np.sort(runs["N"].unique())
    sec.numbers.append(("tokens that keep overfitting under 2% (Eq. 1.5 fitted here), at the sizes run",
                        ", ".join(f"N = {n:.2g}: D = {d_2pct(n):.2g}" for n in Ns), "-", "-"))
    sec.notes.append(units_note(runs) + " (Kaplan's 5e3 N^0.74 token bound is one of these constants).")
    problem = None if len(stopped) >= 4 else (f"{len(stopped)} of {len(runs)} runs stopped early (validation "
                                               f"rising); Eq. 1.5 needs the data-limited corner")
    verdict(sec, "The data needed to avoid overfitting grows sub-linearly with N (alpha_N / alpha_D < 1; Kaplan "
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
        st = series_style(i)
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


ANALYSIS = "data"  # the sweep's `analysis` (sweep.json) this section reads
TITLE = "Data: L(N, D) and overfitting"
POSITION = 60  # order in the report
analyse = data_section
