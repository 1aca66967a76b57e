"""Model shape at fixed N (Kaplan Fig. 5)."""

from __future__ import annotations

import numpy as np

from jscale import plots, regime
from jscale.report.common import (Experiment, Section, fit_power, join_problems, measured, rel_percent, series_style,
                                  tuning_problem, verdict)
from jscale.verdicts import Region


def shape_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """Loss against shape at fixed N, measured against the L(N) fit over all runs (Kaplan Fig. 5)."""
    m = measured(exp, exp.runs, n_bootstrap)
    points = m.points
    runs = points  # one row per shape (seeds pooled)
    fit = fit_power(runs["N"], runs["loss"], bootstrap=0)
    runs["excess"] = rel_percent(runs["loss"], fit.predict(X=runs["N"].to_numpy()))
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
            st = series_style(i)
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
        spread = m.bootstrap(largest_spread, n_bootstrap)
        verdict(sec, "At fixed N, shape (aspect ratio 4-64, d_ff/d_model 1-4) moves loss by at most a few percent "
                     "(largest spread at one N, percent; Kaplan Fig. 5)", spread, Region.below(5.0, "< 5%"),
                join_problems(regime.problem(exp.runs), tuning_problem(exp, exp.runs)))


ANALYSIS = "shape"  # the sweep's `analysis` (sweep.json) this section reads
TITLE = "Model shape at fixed N"
POSITION = 20  # order in the report
analyse = shape_section
