"""Figures for fitted laws. Each function returns a matplotlib Figure; none calls show().

Styled for black-and-white print: series differ by marker and line style as well as by shade, and every axis
says its unit and convention.
"""

from __future__ import annotations

import itertools

import numpy as np

from jscale.laws import FittedLaw

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
LINESTYLES = ("-", "--", "-.", ":")


def figure(ncols: int = 1, width: float = 5.2):
    """A row of ncols axes, each width x 4 inches."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 4.0), constrained_layout=True)
    return fig, axes


def _short(v: float, _=None) -> str:
    """1e5, 2e4, 1.5e4, 2.5: short tick labels, two significant digits at most (so 1.5e4, 2e4 and 2.5e4 stay
    three different labels)."""
    if 0.01 <= abs(v) < 1000:
        return f"{v:.3g}"
    mantissa, exp = f"{v:.1e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"


def tidy(fig):
    """Readable log axes: over a wide range, label the decades only; otherwise label 1-2-5
    steps (under ~2.5 decades). Minor tick labels are never drawn, so they cannot overlap."""
    import matplotlib.ticker as ticker

    for ax in fig.axes:
        for axis, scale, lim in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()), (ax.yaxis, ax.get_yscale(),
                                                                               ax.get_ylim())):
            if scale != "log":
                continue
            axis.set_minor_formatter(ticker.NullFormatter())
            if np.log10(lim[1] / lim[0]) < 2.5:
                axis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0) if np.log10(lim[1] / lim[0]) > 0.5
                                                         else (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)))
                axis.set_major_formatter(ticker.FuncFormatter(_short))
    return fig


def _shades(n: int):
    import matplotlib.pyplot as plt

    return [plt.cm.viridis(v) for v in np.linspace(0.0, 0.85, max(n, 1))]


def n_label(convention: str) -> str:
    """The axis label of N in a convention (all, non_embedding)."""
    return {"all": "parameters N (all, embeddings included)",
            "non_embedding": "parameters N (non-embedding)"}.get(convention, "parameters N")


def _n_label(law: FittedLaw) -> str:
    return n_label(law.convention.get("N", ""))


def _c_label(law: FittedLaw) -> str:
    conv = law.convention.get("C", "")
    return f"compute C (FLOPs, {conv})" if conv else "compute C (FLOPs)"


def loss_vs_variable(law: FittedLaw, X, loss, label: str | None = None):
    """Loss against N, D or C with a power law (with or without E) drawn through it."""
    fig, ax = figure()
    X, loss = np.asarray(X, float), np.asarray(loss, float)
    ax.loglog(X, loss, "o", mfc="none", color="k", label="runs")
    grid = np.geomspace(X.min() / 1.5, X.max() * 1.5, 200)
    p = law.params
    variable = law.info.get("variable", "X")  # the legend names the variable: (N_c/N)^alpha, not (X_c/X)^alpha
    text = (f"E + ({p['X_c']:.3g}/{variable})^{p['alpha']:.3f}, E = {p['E']:.3g}" if "E" in p
            else f"({p['X_c']:.3g}/{variable})^{p['alpha']:.3f}")
    ax.loglog(grid, law.predict(X=grid), "-", color="0.3", label=text)
    default = {"N": _n_label(law), "C": _c_label(law), "D": "tokens D"}.get(variable, variable)
    ax.set_xlabel(label or default)
    ax.set_ylabel("loss (nats/token)")
    ax.legend(frameon=False)
    return tidy(fig)


def loss_nd_curves(law: FittedLaw, N, D, loss):
    """L(N, D): loss against tokens D for each model size, with the fitted surface's curves (Chinchilla or
    Kaplan's eq. 1.5)."""
    fig, ax = figure()
    N, D, loss = (np.asarray(a, float) for a in (N, D, loss))
    sizes = np.unique(N)
    if len(sizes) > 8:  # bin into 8 log-spaced groups so the plot stays readable
        edges = np.geomspace(N.min(), N.max() * 1.0001, 9)
        groups = [(np.sqrt(lo * hi), (N >= lo) & (N < hi)) for lo, hi in zip(edges[:-1], edges[1:])]
    else:
        groups = [(n, N == n) for n in sizes]
    for (n, m), shade, marker, ls in zip(groups, _shades(len(groups)), itertools.cycle(MARKERS),
                                         itertools.cycle(LINESTYLES)):
        if not m.any():
            continue
        ax.loglog(D[m], loss[m], marker, mfc="none", color=shade, ms=4)
        grid = np.geomspace(D.min(), D.max(), 100)
        ax.loglog(grid, law.predict(N=np.full_like(grid, n), D=grid), ls, color=shade, label=f"N = {n:.2g}")
    ax.set_xlabel("tokens D")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(f"{law.law} fit: loss against data, one curve per model size", fontsize=9)
    ax.legend(frameon=False, fontsize=7)
    return tidy(fig)


def isoflop_profiles(law: FittedLaw, N, loss, budget):
    """Loss against N at each compute budget, the fitted parabolas (in log N) and their minima."""
    fig, (ax, ax2) = figure(2)
    N, loss, budget = (np.asarray(a, float) for a in (N, loss, budget))
    minima = law.info["minima"]
    for mnm, shade, marker in zip(minima, _shades(len(minima)), itertools.cycle(MARKERS)):
        m = budget == mnm["C"]
        ax.semilogx(N[m], loss[m], marker, mfc="none", color=shade, label=f"C = {mnm['C']:.2g}")
        grid = np.geomspace(N[m].min(), N[m].max(), 100)
        ax.semilogx(grid, np.polyval([mnm["curvature"], mnm["c1"], mnm["c0"]], np.log(grid)), "-", color=shade)
        ax.semilogx([mnm["N_opt"]], [mnm["loss_min"]], "k*", ms=10)
    ax.set_xlabel(_n_label(law))
    ax.set_ylabel("final loss (nats/token)")
    ax.set_title("IsoFLOP profiles (stars: minima)", fontsize=9)
    ax.legend(frameon=False, fontsize=7)
    C = np.array([m["C"] for m in minima])
    ax2.loglog(C, [m["N_opt"] for m in minima], "k*", ms=9, label="profile minima")
    grid = np.geomspace(C.min(), C.max(), 50)
    ax2.loglog(grid, law.predict(C=grid), "k-", label=f"N_opt = {law.params['k_N']:.3g} C^{law.params['a']:.3f}")
    ax2.set_xlabel(_c_label(law))
    ax2.set_ylabel("compute-optimal N")
    ax2.legend(frameon=False, fontsize=8)
    return tidy(fig)


def compute_frontier(law: FittedLaw, run, C, loss):
    """Every run's learning curve (grey), their lower envelope (black) and its power-law fit."""
    fig, ax = figure()
    run, C, loss = np.asarray(run), np.asarray(C, float), np.asarray(loss, float)
    for r in np.unique(run):
        m = run == r
        order = np.argsort(C[m])
        ax.loglog(C[m][order], loss[m][order], "-", color="0.75", lw=0.8)
    ax.loglog(law.info["envelope_C"], law.info["envelope_loss"], "k.", label="frontier (lower envelope)")
    grid = np.geomspace(min(law.info["envelope_C"]), max(law.info["envelope_C"]), 100)
    ax.loglog(grid, law.predict(X=grid), "k--",
              label=f"L = (C_c/C)^{law.params['alpha']:.3f}, C_c = {law.derived['C_c_pf_days']:.3g} PF-days")
    ax.set_xlabel(_c_label(law))
    ax.set_ylabel("test loss (nats/token)")
    ax.legend(frameon=False, fontsize=8)
    return tidy(fig)


def compute_optimal(law: FittedLaw, C_range: tuple[float, float] | None = None):
    """N_opt(C) and D_opt(C) from a Chinchilla, IsoFLOP or envelope fit, with Kaplan's N ~ C^0.73 for reference."""
    fig, ax = figure()
    lo, hi = C_range or (1e17, 1e25)
    C = np.geomspace(lo, hi, 100)
    opt = law.compute_optimal(C)
    a = law.derived.get("a", law.params.get("a"))
    ax.loglog(C, opt["N"], "k-", label=f"N_opt ~ C^{a:.3f}")
    ax.loglog(C, opt["D"], "k--", label=f"D_opt ~ C^{1 - a:.3f}")
    kaplan = opt["N"][0] * (C / C[0]) ** 0.73
    ax.loglog(C, kaplan, ":", color="0.5", label="Kaplan: N_opt ~ C^0.73 (same start)")
    if "a" in law.intervals:
        ax.set_title(f"a = {a:.3f} (95% CI {law.intervals['a'][0]:.3f} to {law.intervals['a'][1]:.3f})", fontsize=9)
    ax.set_xlabel(_c_label(law))
    ax.set_ylabel("parameters N / tokens D")
    ax.legend(frameon=False, fontsize=8)
    return tidy(fig)


def residuals(law: FittedLaw, x=None, x_label: str = "point"):
    """Residuals log L - log prediction of a fit, against x (or the point index), with their histogram."""
    fig, (ax, ax2) = figure(2)
    r = np.asarray(law.residuals)
    x = np.arange(len(r)) if x is None else np.asarray(x, float)
    ax.plot(x, r, "ko", mfc="none", ms=4)
    ax.axhline(0, color="0.5", lw=0.8)
    if x_label != "point":
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("log L - log prediction")
    ax2.hist(r, bins=30, color="0.6", edgecolor="k")
    ax2.set_xlabel("residual")
    ax2.set_ylabel("count")
    ax2.set_title(f"{law.law}: RMS {np.sqrt(np.mean(r ** 2)):.3g}", fontsize=9)
    return tidy(fig)
