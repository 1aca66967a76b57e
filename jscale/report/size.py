"""Loss against model size, with and without embeddings (Kaplan Fig. 1 right, Fig. 6)."""

from __future__ import annotations

import numpy as np

from jscale import noise, plots, regime
from jscale.report.common import (Experiment, KAPLAN, Section, fit_power, loglines, measured, power_estimate,
                                  rel_percent, units_note, verdict)
from jscale.verdicts import Region

DRIFT_TOLERANCE = 0.5  # one power law: its local exponent changes by less than half its mean across the range


def _curvature_drift(logN: np.ndarray):
    """The bent alternative: log L = c0 - alpha log N + gamma (log N)^2 (an irreducible term, or any bend, curves
    the log-log line). The statistic is the change of the local exponent -d log L / d log N across the measured
    range, relative to its mean: 0 for a power law."""
    def drift(loss: np.ndarray) -> float:
        gamma, slope, _ = np.polyfit(logN, np.log(loss), 2)
        local = lambda x: -(slope + 2 * gamma * x)  # noqa: E731
        mean = -np.polyfit(logN, np.log(loss), 1)[0]
        return float((local(logN.max()) - local(logN.min())) / mean) if mean > 0 else float("nan")

    return drift


def size_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """L(N), with and without embeddings (Kaplan Fig. 1 right and Fig. 6)."""
    runs = exp.runs
    deep = runs[runs["n_layer"] >= 2]
    m = measured(exp, deep, n_bootstrap)
    points, losses = m.points, m.losses
    alpha = power_estimate(points, losses, "N", n_bootstrap, m)
    problem = regime.problem(deep)
    tokens = sorted(set(deep["tokens_trained"]))
    at = (f"at {tokens[0]:.3g} tokens" if len(tokens) == 1 else
          f"at {tokens[0]:.3g} to {tokens[-1]:.3g} tokens")  # the estimand: L(N) at the runs' training length
    converged = problem is None
    if alpha.value <= 0:  # loss does not fall with N: nothing to draw a law through, but a verdict to give
        verdict(sec, "Loss falls as a power of non-embedding N (alpha_N > 0; Kaplan Fig. 1)", alpha,
                Region.above(0.0).sign(), problem)
        return
    fit_n = fit_power(points["N"], points["loss"], bootstrap=0)
    fit_total = fit_power(points["N_total"], points["loss"], bootstrap=0)
    logN, logNt = np.log(points["N"].to_numpy(float)), np.log(points["N_total"].to_numpy(float))

    def rms_gap(loss):  # RMS scatter about one power law: all parameters minus non-embedding, in percent points
        rms = lambda x: np.sqrt(np.mean(np.square(np.log(loss) - np.polyval(np.polyfit(x, np.log(loss), 1), x))))
        return 100 * (rms(logNt) - rms(logN))

    collapse = m.bootstrap(rms_gap, n_bootstrap)
    rms_n = 100 * np.sqrt(np.mean(np.square(fit_n.residuals)))
    rms_total = 100 * np.sqrt(np.mean(np.square(fit_total.residuals)))
    name = "alpha_N" if converged else f"the exponent of L(N) {at} (not converged: not alpha_N)"
    sec.numbers.append((f"{name}, L = (N_c/N)^alpha (non-embedding N, 2+ layers; the wider of the measurement "
                        f"interval and the points' scatter)", f"{alpha.value:.3f}",
                        alpha.text().split("(", 1)[1].rstrip(")") + (f"; {alpha.components_text()}"
                                                                     if alpha.components else ""),
                        f"{KAPLAN['alpha_N']} (WebText2, BPE: scale-free, so comparable in kind, but corpus-specific)"))
    sec.numbers.append(("N_c", f"{fit_n.params['X_c']:.3g}", "-", "8.8e13 (WebText2, BPE)"))
    sec.numbers.append(("RMS scatter about one power law, non-embedding N (2+ layers)", f"{rms_n:.2f}%", "-",
                        "one trend"))
    sec.numbers.append(("RMS scatter about one power law, all parameters (2+ layers)", f"{rms_total:.2f}%", "-",
                        "separate by depth"))
    sec.notes.append(units_note(runs))
    one = runs[runs["n_layer"] == 1]
    fig, (ax_total, ax_n) = plots.figure(2)
    grid_total = np.geomspace(runs["N_total"].min() / 1.3, runs["N_total"].max() * 1.3, 100)
    grid_n = np.geomspace(runs["N"].min() / 1.3, runs["N"].max() * 1.3, 100)
    for i, (depth, g) in enumerate(sorted(runs.groupby("n_layer"))):
        loglines(ax_total, g["N_total"], g["loss"], f"{depth} layer{'s' if depth > 1 else ''}", i)
        loglines(ax_n, g["N"], g["loss"], f"{depth} layer{'s' if depth > 1 else ''}", i)
    ax_n.plot(grid_n, fit_n.predict(X=grid_n), "k-", lw=1,
              label=f"(N_c/N)^{fit_n.params['alpha']:.3f}, 2+ layers")
    ax_total.plot(grid_total, fit_total.predict(X=grid_total), "k:", lw=1, label="one power law, 2+ layers")
    for ax, conv, title in ((ax_total, "all", "with embeddings"), (ax_n, "non_embedding", "without embeddings")):
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel(plots.n_label(conv)), ax.set_ylabel("test loss (nats/token)")
        ax.set_title(f"Fig. 6 {title}", fontsize=9)
        ax.legend(frameon=False, fontsize=7)
    sec.figures["loss_vs_N"] = plots.tidy(fig)
    verdict(sec, "Loss falls as a power of non-embedding N (alpha_N > 0; Kaplan Fig. 1)", alpha,
            Region.above(0.0).sign(), problem)
    if len(points) >= 4:
        drift = m.bootstrap(_curvature_drift(np.log(points["N"].to_numpy(float))), n_bootstrap)
        sec.numbers.append(("change of L(N)'s local exponent across the range of N, relative to its mean (a bent "
                            "alternative, log L quadratic in log N; 0: one power law)", f"{drift.value:+.2f}",
                            drift.text("+.2f").split("(", 1)[1].rstrip(")"), "0 (Kaplan: one power law over 6 "
                                                                             "decades of N)"))
        verdict(sec, "L(N) is one power law over the range measured: its local exponent changes by less than half "
                     "its mean across it (against a bent alternative such as L = E + (N_c/N)^alpha)", drift,
                Region.near(0.0, DRIFT_TOLERANCE, f"within ±{DRIFT_TOLERANCE}"), problem)
    verdict(sec, "Leaving out embeddings collapses the depths onto one trend (RMS scatter about one law with all "
                 "parameters minus without, percent points; Kaplan Fig. 6)", collapse, Region.above(0.0), problem)
    extrapolated_law(exp, deep, sec, n_bootstrap)
    if len(one):
        off = rel_percent(one["loss"], fit_n.predict(X=one["N"].to_numpy()))
        sec.numbers.append(("1-layer models: mean loss above the 2+ layer trend", f"{off.mean():+.1f}%", "-",
                            "1-layer models fall off the trend"))


MAX_EXTRAPOLATION = 0.25  # L_inf at most this far below the longest annealed horizon's loss: the regime of the claim


def extrapolated_law(exp: Experiment, runs, sec: Section, n_bootstrap: int) -> None:
    """L(N, D -> inf): each run's validation loss extrapolated from its cooldown branches (L = L_inf + B D^-beta, an
    irreducible term included), then the power law in N through the points (seeds averaged). Its interval: windows
    resampled by document (every horizon of every run refitted on the same draw), seed effects from the pooled
    between-seed variance of L_inf, and the wider of that and the points' scatter about the law."""
    anneals = exp.anneals
    if anneals is None or not len(anneals):
        return
    ex = regime.extrapolated_losses(anneals, runs, exp.blocks, n_bootstrap)
    if not ex or not set(runs["run_id"]) <= set(ex):
        if ex:
            sec.notes.append(f"L(N, D -> inf) not extrapolated: {len(set(runs['run_id']) - set(ex))} runs have fewer "
                             f"than {regime.MIN_HORIZONS} annealed horizons or no fall to extrapolate.")
        return
    groups = [list(g["run_id"]) for _, g in runs.groupby("point", sort=False)]
    N = np.array([float(runs.loc[runs["run_id"] == g[0], "N"].iloc[0]) for g in groups])
    value = np.array([np.mean([ex[r][0] for r in g]) for g in groups])
    draws = np.stack([np.mean([ex[r][1] for r in g], axis=0) for g in groups], axis=1)  # (n, points)
    seeds = [np.array([ex[r][0] for r in g])[:, None] for g in groups]  # (k, 1) per point, for the pooled variance
    pooled = noise.pooled_seed_variance(seeds)
    rng = np.random.default_rng(7)
    if n_bootstrap:
        draws = draws + noise.seed_effects(rng, len(draws), value, np.array([len(g) for g in groups]), pooled)
    last = anneals[(anneals["split"] == "validation")].sort_values("tokens").groupby("run_id")["loss"].last()
    reach = max((last[r] - ex[r][0]) / last[r] for g in groups for r in g)
    alpha = noise.log_slope(N)
    reps = [alpha(d) for d in draws if np.all(np.isfinite(d)) and np.all(d > 0)]
    measured_ci = (tuple(np.quantile(reps, [0.025, 0.975])) if len(reps) >= noise.MIN_SHARE * n_bootstrap
                   and n_bootstrap else None)
    est = noise.with_scatter(noise.Estimate(alpha(value), measured_ci, n_bootstrap, n_bootstrap - len(reps), len(N)),
                             noise.power_law_scatter(N)(value) if len(N) >= 3 else None,
                             noise.seed_note(seeds, pooled))
    sec.numbers.append(("alpha_N of L(N, D -> inf) (validation loss extrapolated per run from its cooldown branches, "
                        "L = L_inf + B D^-beta; the wider of the measurement interval and the points' scatter)",
                        f"{est.value:.3f}", est.text().split("(", 1)[1].rstrip(")") +
                        (f"; {est.components_text()}" if est.components else ""),
                        f"{KAPLAN['alpha_N']} (WebText2, BPE: scale-free but corpus-specific)"))
    sec.tables.append((["N", "L_inf (validation, extrapolated)", "95% interval (windows)", "longest horizon's loss"],
                       [[f"{n:,.0f}", f"{v:.4f}",
                         "-" if not n_bootstrap else " to ".join(f"{x:.4f}" for x in np.nanquantile(draws[:, i],
                                                                                                  [0.025, 0.975])),
                         f"{np.mean([last[r] for r in groups[i]]):.4f}"] for i, (n, v) in enumerate(zip(N, value))]))
    # the figure: each run's annealed losses (validation) by horizon, and L_inf with its interval, against N
    fig, (ax_h, ax_n) = plots.figure(2)
    val = anneals[anneals["split"] == "validation"]
    shades = plots._shades(len(groups))
    for rank, i in enumerate(np.argsort(N)):  # shaded and listed by size
        for r in groups[i]:
            h = val[val["run_id"] == r].sort_values("tokens")
            ax_h.plot(h["tokens"], h["loss"], "o-", ms=3, lw=0.8, color=shades[rank],
                      label=f"N = {N[i]:,.0f}" if r == groups[i][0] else None)
        ax_h.axhline(value[i], color=shades[rank], lw=0.6, ls=":")
    ax_h.set_xscale("log"), ax_h.set_yscale("log")
    ax_h.set_xlabel("tokens D (each cooldown branch's horizon)")
    ax_h.set_ylabel("annealed validation loss (nats/token)")
    ax_h.set_title("cooldown branches; dotted: L_inf, extrapolated", fontsize=9)
    ax_h.legend(frameon=False, fontsize=7)
    lo_hi = (np.nanquantile(draws, [0.025, 0.975], axis=0) if n_bootstrap else np.vstack([value, value]))
    ax_n.errorbar(N, value, yerr=[value - lo_hi[0], lo_hi[1] - value], fmt="o", color="k", ms=4, capsize=2,
                  label="L(N, D -> inf) (95%: windows, seeds)")
    ax_n.plot(N, [np.mean([last[r] for r in g]) for g in groups], "s", mfc="none", color="0.5", ms=4,
              label="longest horizon's annealed loss")
    grid_n = np.geomspace(N.min() / 1.3, N.max() * 1.3, 100)
    fit = np.polyfit(np.log(N), np.log(value), 1)
    ax_n.plot(grid_n, np.exp(np.polyval(fit, np.log(grid_n))), "k-", lw=1,
              label=f"(N_c/N)^{est.value:.3f}")
    ax_n.set_xscale("log"), ax_n.set_yscale("log")
    ax_n.set_xlabel(plots.n_label("non_embedding")), ax_n.set_ylabel("validation loss (nats/token)")
    ax_n.set_title("L(N, D -> inf)", fontsize=9)
    ax_n.legend(frameon=False, fontsize=7)
    sec.figures["extrapolated"] = plots.tidy(fig)
    problem = (None if reach <= MAX_EXTRAPOLATION else
               f"the extrapolation reaches {100 * reach:.0f}% below the longest annealed horizon (at most "
               f"{100 * MAX_EXTRAPOLATION:.0f}%)")
    sec.notes.append(f"L(N, D -> inf) extrapolates at most {100 * reach:.1f}% below each run's longest annealed "
                     f"horizon; the claims on it need at most {100 * MAX_EXTRAPOLATION:.0f}%.")
    verdict(sec, "L(N, D -> inf), extrapolated from the cooldown branches, falls as a power of N (alpha_N > 0)", est,
            Region.above(0.0).sign(), problem)
    if len(N) >= 4:
        drift_of = _curvature_drift(np.log(N))
        reps = [drift_of(d) for d in draws if np.all(np.isfinite(d)) and np.all(d > 0)]
        ci = (tuple(np.quantile(reps, [0.025, 0.975])) if len(reps) >= noise.MIN_SHARE * n_bootstrap and n_bootstrap
              else None)
        drift = noise.Estimate(drift_of(value), ci, n_bootstrap, n_bootstrap - len(reps), len(N))
        verdict(sec, "L(N, D -> inf) is one power law over the range measured (its local exponent changes by less "
                     "than half its mean; against a bent alternative)", drift,
                Region.near(0.0, DRIFT_TOLERANCE, f"within ±{DRIFT_TOLERANCE}"), problem)


ANALYSIS = "size"  # the sweep's `analysis` (sweep.json) this section reads
TITLE = "Loss against model size, with and without embeddings"
POSITION = 10  # order in the report
analyse = size_section
