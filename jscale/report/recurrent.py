"""Recurrent Transformers: reuse over depth and memory over time, per parameter and per FLOP (Kaplan Fig. 17)."""

from __future__ import annotations

import numpy as np

from jscale import plots, regime
from jscale.report.common import (Experiment, Section, fit_power, join_problems, loglines, measured, tuning_problem,
                                  verdict)
from jscale.verdicts import Region


def recurrent_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """Universal Transformers (reuse over depth) and Transformer-XL (memory over time) against the standard
    Transformer, per parameter and per FLOP (Kaplan Fig. 17)."""
    m = measured(exp, exp.runs, n_bootstrap)
    points = m.points
    runs = points
    runs["family"] = [("standard Transformer" if k == "transformer" else
                       f"Universal, reuse {r}x" if k == "universal" else f"Transformer-XL, memory {m}")
                      for k, r, m in zip(runs["kind"], runs["reuse"], runs["mem_len"])]
    std_mask = (runs["kind"] == "transformer").to_numpy()
    std = runs[std_mask]
    fit_n = fit_power(std["N"], std["loss"], bootstrap=0)
    fit_c = fit_power(std["C_exact"], std["loss"], variable="C", bootstrap=0)
    sec.numbers.append(("standard Transformers: alpha_N", f"{fit_n.params['alpha']:.3f}", "-",
                        "0.076 (WebText2, BPE)"))
    problem = join_problems(regime.problem(exp.runs), tuning_problem(exp, exp.runs))
    fig, (ax_n, ax_c) = plots.figure(2)
    families = sorted(runs["family"].unique(), key=lambda f: (not f.startswith("standard"), len(f), f))
    gn = np.geomspace(runs["N"].min() / 1.3, runs["N"].max() * 1.3, 100)
    gc = np.geomspace(runs["C_exact"].min() / 1.3, runs["C_exact"].max() * 1.3, 100)
    logN, logC = np.log(runs["N"].to_numpy(float)), np.log(runs["C_exact"].to_numpy(float))
    for i, fam in enumerate(families):
        g = runs[runs["family"] == fam]
        is_std = fam.startswith("standard")
        loglines(ax_n, g["N"], g["loss"], fam, i, *((gn, fit_n.predict(X=gn)) if is_std else (None, None)))
        loglines(ax_c, g["C_exact"], g["loss"], fam, i, *((gc, fit_c.predict(X=gc)) if is_std else (None, None)))
        if is_std:
            continue
        fam_mask = (runs["family"] == fam).to_numpy()

        def offset(x):  # mean loss of the family above the standard Transformers' trend in x, percent
            def stat(loss):
                coef = np.polyfit(x[std_mask], np.log(loss[std_mask]), 1)
                return float(100 * np.mean(np.log(loss[fam_mask]) - np.polyval(coef, x[fam_mask])))
            return stat

        per_n = m.bootstrap(offset(logN), n_bootstrap, min_points=3)
        per_c = m.bootstrap(offset(logC), n_bootstrap, min_points=3)
        sec.numbers.append((f"{fam}: loss vs a standard Transformer of equal N / equal training FLOPs (exact)",
                            f"{per_n.value:+.1f}% / {per_c.value:+.1f}%",
                            f"{per_n.text('+.1f')} / {per_c.text('+.1f')}",
                            "slightly better / slightly worse" if fam.startswith("Universal") else "-"))
        if fam.startswith("Universal"):
            verdict(sec, f"{fam} is better per parameter than a standard Transformer (loss above the standard "
                         f"L(N) trend, percent; Kaplan Fig. 17)", per_n, Region.below(0.0), problem)
            verdict(sec, f"{fam} is worse per training FLOP (loss above the standard L(C) trend, percent)", per_c,
                    Region.above(0.0), problem)
    for ax, xlabel in ((ax_n, "parameters N (non-embedding, unique)"),
                       (ax_c, "training compute C (FLOPs, exact count incl. attention)")):
        ax.set_xscale("log"), ax.set_yscale("log")
        ax.set_xlabel(xlabel), ax.set_ylabel("test loss (nats/token)")
        ax.legend(frameon=False, fontsize=7)
    ax_n.set_title("per parameter (line: standard Transformers' L(N))", fontsize=9)
    ax_c.set_title("per FLOP (line: standard Transformers' L(C))", fontsize=9)
    sec.figures["recurrent"] = plots.tidy(fig)


ANALYSIS = "recurrent"  # the sweep's `analysis` (sweep.json) this section reads
TITLE = "Recurrent Transformers: reuse over depth and memory over time"
POSITION = 40  # order in the report
analyse = recurrent_section
