"""Loss against model size, with and without embeddings (Kaplan Fig. 1 right, Fig. 6)."""

from __future__ import annotations

import numpy as np

from jscale import noise, plots, regime
from jscale.report.common import (Experiment, KAPLAN, Section, fit_power, loglines, points_of, power_estimate,
                                  rel_percent, units_note, verdict)
from jscale.verdicts import Region


def size_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """L(N), with and without embeddings (Kaplan Fig. 1 right and Fig. 6)."""
    runs = exp.runs
    deep = runs[runs["n_layer"] >= 2]
    points, losses = points_of(exp, deep)
    alpha = power_estimate(points, losses, "N", n_bootstrap)
    problem = regime.problem(deep)
    if alpha.value <= 0:  # loss does not fall with N: nothing to draw a law through, but a verdict to give
        verdict(sec, "Loss falls as a power of non-embedding N (alpha_N > 0; Kaplan Fig. 1)", alpha,
                Region.above(0.0), problem)
        return
    fit_n = fit_power(points["N"], points["loss"], bootstrap=0)
    fit_total = fit_power(points["N_total"], points["loss"], bootstrap=0)
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
    verdict(sec, "Loss falls as a power of non-embedding N (alpha_N > 0; Kaplan Fig. 1)", alpha, Region.above(0.0),
            problem)
    verdict(sec, "Leaving out embeddings collapses the depths onto one trend (RMS scatter about one law with all "
                 "parameters minus without, percent points; Kaplan Fig. 6)", collapse, Region.above(0.0), problem)
    if len(one):
        off = rel_percent(one["loss"], fit_n.predict(X=one["N"].to_numpy()))
        sec.numbers.append(("1-layer models: mean loss above the 2+ layer trend", f"{off.mean():+.1f}%", "-",
                            "1-layer models fall off the trend"))


ANALYSIS = "size"  # the sweep's `analysis` (sweep.json) this section reads
TITLE = "Loss against model size, with and without embeddings"
POSITION = 10  # order in the report
analyse = size_section
