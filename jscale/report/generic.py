"""Sweeps without a dedicated section (the quickstart): L(N) if N varies."""

from __future__ import annotations

import dataclasses

from jscale import plots, regime
from jscale.report.common import Experiment, Section, fit_power, points_of, power_estimate, verdict
from jscale.verdicts import Region


def generic_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """Sweeps without a dedicated section (the quickstart): L(N) if N varies."""
    points, losses = points_of(exp, exp.runs)
    if points["N"].nunique() < 3:
        sec.notes.append("Fewer than 3 model sizes: nothing to fit.")
        return
    alpha = power_estimate(points, losses, "N", n_bootstrap)
    sec.numbers.append(("alpha_N, L = (N_c/N)^alpha_N (seeds and windows resampled)", f"{alpha.value:.3f}",
                        alpha.text().split("(", 1)[1].rstrip(")"), "0.076 (WebText2, BPE)"))
    if alpha.value > 0:
        fit = fit_power(points["N"], points["loss"], bootstrap=0)
        sec.figures["loss_vs_N"] = plots.loss_vs_variable(
            dataclasses.replace(fit, convention={"N": "non_embedding"}), points["N"], points["loss"])
    verdict(sec, f"Test loss falls as a power of N over N = {points['N'].min():,} to {points['N'].max():,} "
                 f"(alpha_N > 0)", alpha, Region.above(0.0), regime.problem(exp.runs))


analyse = generic_section
