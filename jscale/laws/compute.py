"""Compute-optimal allocation: IsoFLOP profiles (Chinchilla Approach 2), the envelope of learning curves (Approach 1),
Kaplan's compute frontier, and the extrapolation check."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from jscale.laws.fitted import PF_DAY, FittedLaw, LawFitError, _column, _columns, attach_bootstrap
from jscale.laws.kaplan import _fit_power_arrays


ISOFLOP_WINDOW = 2  # sizes on each side of a budget's lowest loss that its local parabola uses


def isoflop_minima(N, loss, budget, window: int = ISOFLOP_WINDOW) -> list[dict[str, float]]:
    """For each compute budget, its loss-optimal N*: a parabola in log N through the sizes nearest the lowest loss
    (up to `window` on each side; seeds at one size averaged), its vertex.

    A parabola through every size is biased once the sizes span more than about a decade and the minimum is near an
    edge; a local one is not. A budget is `bracketed` when its lowest loss has a higher-loss size on both sides and
    the local parabola is convex with its vertex inside the sizes it was fitted on; an unbracketed budget keeps the
    lowest-loss size as N* and is flagged (fit_isoflop leaves it out)."""
    cols = _columns(0, N=N, loss=loss, budget=budget)
    out = []
    for C in np.unique(cols["budget"]):
        m = cols["budget"] == C
        sizes, inverse = np.unique(cols["N"][m], return_inverse=True)
        if len(sizes) < 3:
            raise LawFitError(f"isoflop: budget C = {C:.3g} has {len(sizes)} distinct model sizes; "
                              f"a parabola needs at least 3")
        mean_loss = np.bincount(inverse, cols["loss"][m]) / np.bincount(inverse)
        i = int(np.argmin(mean_loss))
        lo, hi = max(0, i - window), min(len(sizes), i + window + 1)
        while hi - lo < 3:  # at an edge: widen to the 3 sizes a parabola needs
            lo, hi = (lo, hi + 1) if lo == 0 else (lo - 1, hi)
        logN, L = np.log(sizes[lo:hi]), mean_loss[lo:hi]
        c2, c1, c0 = np.polyfit(logN, L, 2)
        vertex = -c1 / (2 * c2) if c2 > 0 else np.nan
        bracketed = bool(0 < i < len(sizes) - 1 and c2 > 0 and logN[0] < vertex < logN[-1])
        log_n_star = vertex if bracketed else np.log(sizes[i])
        note = ("bracketed" if bracketed else "lowest loss at the smallest size" if i == 0 else
                "lowest loss at the largest size" if i == len(sizes) - 1 else "local parabola not convex")
        out.append({"C": float(C), "N_opt": float(np.exp(log_n_star)),
                    "loss_min": float(np.polyval([c2, c1, c0], log_n_star)) if bracketed else float(mean_loss[i]),
                    "curvature": float(c2), "c1": float(c1), "c0": float(c0), "bracketed": bracketed,
                    "sizes_fitted": int(hi - lo), "note": note})
    return out


def _allocation_law(C, N_opt) -> dict[str, float]:
    """N_opt = k_N C^a and D_opt = C / (6 N_opt) = k_D C^b, by least squares in log space."""
    if len(C) < 2:
        raise LawFitError(f"need at least 2 compute budgets to fit N_opt(C), got {len(C)}")
    a, log_k = np.polyfit(np.log(C), np.log(N_opt), 1)
    return {"a": float(a), "k_N": float(np.exp(log_k)), "b": float(1 - a), "k_D": float(np.exp(-log_k) / 6)}


def _bracketed_allocation(minima: list[dict]) -> dict[str, float]:
    kept = [m for m in minima if m["bracketed"]]
    if len(kept) < 2:
        raise LawFitError(f"isoflop: {len(kept)} of {len(minima)} budgets have a bracketed minimum (a size with "
                          f"higher loss on each side); train sizes on both sides of each budget's optimum")
    return _allocation_law(np.array([m["C"] for m in kept]), np.array([m["N_opt"] for m in kept]))


def fit_isoflop(N, loss, budget, n_bootstrap: int = 1000, seed: int = 0,
                convention: dict[str, str] | None = None, window: int = ISOFLOP_WINDOW) -> FittedLaw:
    """Chinchilla's Approach 2 on locally fitted, bracketed minima (unbracketed budgets are flagged in
    info["minima"] and left out). The bootstrap resamples runs within each budget; a resample in which a budget
    loses its bracketing counts as failed."""
    cols = _columns(0, N=N, loss=loss, budget=budget)
    minima = isoflop_minima(cols["N"], cols["loss"], cols["budget"], window)
    params = _bracketed_allocation(minima)
    kept = [m for m in minima if m["bracketed"]]
    C, n_opt = np.array([m["C"] for m in kept]), np.array([m["N_opt"] for m in kept])
    fitted = FittedLaw("isoflop", params, ("C",), dict(convention or {"N": "all", "C": "6ND"}),
                       n_points=len(cols["N"]), info={"minima": minima,
                                                      "left_out": [m["C"] for m in minima if not m["bracketed"]]})
    fitted.residuals = (np.log(n_opt) - np.log(fitted.predict(C=C))).tolist()
    kept_budgets = set(C.tolist())
    groups = [np.flatnonzero(cols["budget"] == c) for c in np.unique(cols["budget"]) if c in kept_budgets]
    rng = np.random.default_rng(seed)

    def fit_once(_):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        m = isoflop_minima(cols["N"][idx], cols["loss"][idx], cols["budget"][idx], window)
        if not all(x["bracketed"] for x in m):
            raise LawFitError("a resampled budget lost its bracketing")
        return _allocation_law(np.array([x["C"] for x in m]), np.array([x["N_opt"] for x in m]))

    attach_bootstrap(fitted, fit_once, len(cols["N"]), n_bootstrap, seed)
    return fitted


def lower_envelope(C, loss) -> np.ndarray:
    """Indices of the points on the lower envelope of loss against compute (each lower than all cheaper ones)."""
    order = np.argsort(C, kind="stable")
    keep, best = [], np.inf
    for i in order:
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.asarray(keep, dtype=np.int64)


def _curves(run, C, loss, N=None):
    cols = _columns(0, C=C, loss=loss, **({} if N is None else {"N": N}))
    run = np.asarray(run).reshape(-1)
    if len(run) != len(cols["C"]):
        raise LawFitError(f"mismatched lengths: run has {len(run)}, C has {len(cols['C'])}")
    return run, cols


MIN_FRONTIER_RUNS = 3


def _frontier_arrays(C, L, run=None):
    keep = lower_envelope(C, L)
    if len(keep) < 3:
        raise LawFitError(f"frontier: only {len(keep)} points on the compute frontier; need at least 3")
    if run is not None and len(np.unique(run[keep])) < MIN_FRONTIER_RUNS:
        raise LawFitError(f"frontier: the envelope is made of {len(np.unique(run[keep]))} run(s); a frontier "
                          f"needs points from at least {MIN_FRONTIER_RUNS} distinct runs (one run's learning curve "
                          f"is not a frontier)")
    return _fit_power_arrays(C[keep], L[keep], False)[0], keep


def fit_frontier(run, C, loss, n_bootstrap: int = 1000, seed: int = 0,
                 convention: dict[str, str] | None = None) -> FittedLaw:
    """L(C_min) = (C_c / C)^alpha_C on the lower envelope of all runs' learning curves (C in FLOPs; C_c is also
    reported in PF-days as Kaplan does). Bootstrap resamples whole runs."""
    run, cols = _curves(run, C, loss)
    C, L = cols["C"], cols["loss"]
    params, keep = _frontier_arrays(C, L, run)
    fitted = FittedLaw("frontier", params, ("X",), dict(convention or {"C": "exact"}), n_points=len(C),
                       derived={"C_c_pf_days": params["X_c"] / PF_DAY},
                       info={"envelope_C": C[keep].tolist(), "envelope_loss": L[keep].tolist(),
                             "envelope_runs": int(len(np.unique(run[keep])))})
    fitted.residuals = (np.log(L[keep]) - np.log(fitted.predict(X=C[keep]))).tolist()
    if n_bootstrap:
        runs = np.unique(run)
        members = [np.flatnonzero(run == r) for r in runs]

        def fit_once(idx):
            rows = np.concatenate([members[i] for i in idx])
            ids = np.concatenate([np.full(len(members[i]), k) for k, i in enumerate(idx)])
            p, _ = _frontier_arrays(C[rows], L[rows], ids)
            return {**p, "C_c_pf_days": p["X_c"] / PF_DAY}

        attach_bootstrap(fitted, fit_once, len(runs), n_bootstrap, seed)
    return fitted


def _envelope_arrays(run, N, C, L, n_budgets):
    """At log-spaced budgets, among the runs whose curves reach that compute (interpolated in log C), the one with
    the lowest loss gives N_opt(C). Budgets reached by fewer than two runs are skipped."""
    runs = np.unique(run)
    budgets = np.geomspace(C.min(), C.max(), n_budgets)
    best_loss = np.full(n_budgets, np.inf)
    best_n = np.zeros(n_budgets)
    n_candidates = np.zeros(n_budgets, dtype=np.int64)
    for r in runs:
        m = run == r
        order = np.argsort(C[m])
        c_r, l_r = C[m][order], L[m][order]
        covers = (budgets >= c_r[0]) & (budgets <= c_r[-1])
        curve = np.interp(np.log(budgets), np.log(c_r), l_r)
        better = covers & (curve < best_loss)
        best_loss[better], best_n[better] = curve[better], N[m][0]
        n_candidates += covers
    keep = n_candidates >= 2
    if keep.sum() < 2 or len(np.unique(best_n[keep])) < 2:
        raise LawFitError("envelope: fewer than two model sizes are ever compute-optimal where runs overlap; "
                          "add sizes or longer runs")
    return _allocation_law(budgets[keep], best_n[keep]), budgets[keep], best_n[keep]


def fit_envelope(run, N, C, loss, n_budgets: int = 25, n_bootstrap: int = 1000, seed: int = 0,
                 convention: dict[str, str] | None = None) -> FittedLaw:
    """Chinchilla's Approach 1 from learning curves (one row per eval: run id, N, C so far, loss)."""
    run, cols = _curves(run, C, loss, N)
    N, C, L = cols["N"], cols["C"], cols["loss"]
    params, budgets, best_n = _envelope_arrays(run, N, C, L, n_budgets)
    fitted = FittedLaw("envelope", params, ("C",), dict(convention or {"N": "all", "C": "6ND"}), n_points=len(C),
                       info={"budgets": budgets.tolist(), "N_opt": best_n.tolist()})
    fitted.residuals = (np.log(best_n) - np.log(fitted.predict(C=budgets))).tolist()
    if n_bootstrap:
        runs = np.unique(run)
        members = [np.flatnonzero(run == r) for r in runs]

        def fit_once(idx):
            rows = np.concatenate([members[i] for i in idx])
            # Resampled runs keep distinct ids so their curves stay separate.
            ids = np.concatenate([np.full(len(members[i]), k) for k, i in enumerate(idx)])
            return _envelope_arrays(ids, N[rows], C[rows], L[rows], n_budgets)[0]

        attach_bootstrap(fitted, fit_once, len(runs), n_bootstrap, seed)
    return fitted


def extrapolation_check(fit: Callable[[np.ndarray], FittedLaw], C: np.ndarray, inputs: dict[str, np.ndarray],
                        loss: np.ndarray, threshold: float) -> dict[str, Any]:
    """Fit on the runs with C < threshold (fit receives their row mask), predict the rest; report the errors.

    Returns the law, the relative errors of the held-out predictions and their mean absolute value.
    """
    C, loss = _column("C", C), _column("loss", loss)
    below = C < threshold
    if below.all() or not below.any():
        raise LawFitError(f"extrapolation: threshold {threshold:.3g} leaves no runs on one side "
                          f"(C spans {C.min():.3g} to {C.max():.3g})")
    law = fit(below)
    pred = law.predict(**{k: np.asarray(v)[~below] for k, v in inputs.items()})
    rel = pred / loss[~below] - 1
    return {"law": law, "relative_error": rel.tolist(), "mean_abs_relative_error": float(np.mean(np.abs(rel))),
            "n_fit": int(below.sum()), "n_held_out": int((~below).sum())}
