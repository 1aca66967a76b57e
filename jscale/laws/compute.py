"""Compute-optimal allocation: IsoFLOP profiles (Chinchilla Approach 2), the envelope of learning curves (Approach 1),
Kaplan's compute frontier, and the extrapolation check."""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from jscale.laws.fitted import (PF_DAY, FittedLaw, LawFitError, _column, _columns, attach_bootstrap,
                                 ols_slope_interval)
from jscale.laws.kaplan import _fit_power_arrays


ISOFLOP_WINDOW = 2  # sizes on each side of a budget's lowest loss that its local parabola uses
BRACKET_SE = 1.0  # a bracketed minimum beats each neighbour by more than this many standard errors of the difference


def _cells(N, loss, budget, se=None) -> dict[float, dict[str, np.ndarray]]:
    """Per budget: its sizes, each size's mean loss over its rows (seeds), its row count, the spread of its rows and
    their own standard errors (0 where not given)."""
    out = {}
    se = np.zeros(len(N)) if se is None else np.asarray(se, float)
    for C in np.unique(budget):
        m = budget == C
        sizes, inverse = np.unique(N[m], return_inverse=True)
        k = np.bincount(inverse).astype(float)
        mean = np.bincount(inverse, loss[m]) / k
        sq = np.bincount(inverse, (loss[m] - mean[inverse]) ** 2)
        own = np.bincount(inverse, se[m] ** 2) / k
        out[float(C)] = {"N": sizes, "loss": mean, "k": k, "ss": sq, "own_var": own}
    return out


def _cell_noise(cells: dict) -> tuple[dict[float, np.ndarray], float, int]:
    """Each cell's standard error, and the pooled between-row variance relative to the loss with its degrees of
    freedom. A cell's error: the pooled row variance over its rows (seeds: more degrees of freedom than its own
    two), plus its rows' own standard errors (evaluation windows); with one row per cell and no standard errors,
    the residuals of a quadratic through each budget of four or more sizes stand in (pooled over budgets)."""
    ss = sum(float(np.sum(c["ss"] / c["loss"] ** 2)) for c in cells.values())
    df = int(sum(np.sum(c["k"] - 1) for c in cells.values()))
    if not df:  # one row per cell: the scatter about each budget's quadratic
        for c in cells.values():
            if len(c["N"]) >= 4:
                fit = np.polyval(np.polyfit(np.log(c["N"]), c["loss"], 2), np.log(c["N"]))
                ss += float(np.sum(((c["loss"] - fit) / c["loss"]) ** 2))
                df += len(c["N"]) - 3
    rel_var = ss / df if df else 0.0
    se = {C: np.sqrt(rel_var * c["loss"] ** 2 / c["k"] + c["own_var"] / c["k"]) for C, c in cells.items()}
    return se, rel_var, df


def _minimum(sizes: np.ndarray, mean_loss: np.ndarray, window: int, se: np.ndarray | None = None) -> dict:
    """One budget's minimum: a parabola in log N through the sizes nearest the lowest loss, its vertex, and whether
    it is bracketed (see isoflop_minima)."""
    i = int(np.argmin(mean_loss))
    lo, hi = max(0, i - window), min(len(sizes), i + window + 1)
    while hi - lo < 3:  # at an edge: widen to the 3 sizes a parabola needs
        lo, hi = (lo, hi + 1) if lo == 0 else (lo - 1, hi)
    logN, L = np.log(sizes[lo:hi]), mean_loss[lo:hi]
    c2, c1, c0 = np.polyfit(logN, L, 2)
    vertex = -c1 / (2 * c2) if c2 > 0 else np.nan
    shape = bool(0 < i < len(sizes) - 1 and c2 > 0 and logN[0] < vertex < logN[-1])
    margin = True
    if shape and se is not None:  # on each side a size of the fit must be worse than the minimum beyond the noise
        worse = lambda j: mean_loss[j] - mean_loss[i] > BRACKET_SE * math.hypot(se[j], se[i])  # noqa: E731
        margin = any(worse(j) for j in range(lo, i)) and any(worse(j) for j in range(i + 1, hi))
    bracketed = shape and margin
    log_n_star = vertex if bracketed else np.log(sizes[i])
    note = ("bracketed" if bracketed else "lowest loss at the smallest size" if i == 0 else
            "lowest loss at the largest size" if i == len(sizes) - 1 else
            "local parabola not convex" if not shape else "the minimum is within the noise of a neighbour")
    return {"N_opt": float(np.exp(log_n_star)),
            "loss_min": float(np.polyval([c2, c1, c0], log_n_star)) if bracketed else float(mean_loss[i]),
            "curvature": float(c2), "c1": float(c1), "c0": float(c0), "bracketed": bracketed,
            "sizes_fitted": int(hi - lo), "note": note, "vertex": float(vertex)}


def isoflop_minima(N, loss, budget, window: int = ISOFLOP_WINDOW, se=None) -> list[dict[str, float]]:
    """For each compute budget, its loss-optimal N*: a parabola in log N through the sizes nearest the lowest loss
    (up to `window` on each side; seeds at one size averaged), its vertex.

    A parabola through every size is biased once the sizes span more than about a decade and the minimum is near an
    edge; a local one is not. A budget is `bracketed` when its lowest loss has, on each side among the sizes of its
    local fit, a size worse by more than BRACKET_SE standard errors of the difference (the seeds' spread, the rows'
    own standard errors `se`, or the scatter about the budgets' quadratics; see _cell_noise), and the local parabola
    is convex with its vertex inside the sizes it was fitted on. An unbracketed budget keeps the lowest-loss size as
    N* and is flagged (fit_isoflop leaves it out)."""
    cols = _columns(0, N=N, loss=loss, budget=budget)
    cells = _cells(cols["N"], cols["loss"], cols["budget"], se)
    noise, _, df = _cell_noise(cells)
    out = []
    for C, c in cells.items():
        if len(c["N"]) < 3:
            raise LawFitError(f"isoflop: budget C = {C:.3g} has {len(c['N'])} distinct model sizes; "
                              f"a parabola needs at least 3")
        m = _minimum(c["N"], c["loss"], window, noise[C] if df or se is not None else None)
        out.append({"C": C, **m, "loss_se": [float(x) for x in noise[C]]})
    return out


BUDGET_TOLERANCE = 0.1  # C values within 10% of a group's smallest are one IsoFLOP budget (exact FLOPs differ a little)


def group_budgets(C, tolerance: float = BUDGET_TOLERANCE) -> np.ndarray:
    """Each row's IsoFLOP budget from its compute: sorted C values within `tolerance` of their group's smallest are
    one budget (runs sized to one budget in exact FLOPs differ by their rounding to whole steps), named by the
    group's geometric mean."""
    C = _column("C", C)
    order = np.argsort(C)
    out = np.empty(len(C))
    start = 0
    for i in range(1, len(C) + 1):
        if i == len(C) or C[order[i]] > C[order[start]] * (1 + tolerance):
            group = order[start:i]
            out[group] = float(np.exp(np.mean(np.log(C[group]))))
            start = i
    return out


def _allocation_law(C, N_opt, D_opt=None, six_nd: bool = True) -> dict[str, float]:
    """N_opt = k_N C^a by least squares in log space; D_opt = k_D C^b: under C = 6ND, b = 1 - a and k_D = 1 / (6 k_N);
    otherwise from the tokens at each minimum (D_opt), where known."""
    if len(C) < 2:
        raise LawFitError(f"need at least 2 compute budgets to fit N_opt(C), got {len(C)}")
    a, log_k = np.polyfit(np.log(C), np.log(N_opt), 1)
    out = {"a": float(a), "k_N": float(np.exp(log_k))}
    if six_nd:
        out.update(b=float(1 - a), k_D=float(np.exp(-log_k) / 6))
    elif D_opt is not None:
        b, log_kd = np.polyfit(np.log(C), np.log(D_opt), 1)
        out.update(b=float(b), k_D=float(np.exp(log_kd)))
    return out


def _d_at(C: float, n_star: float, N, D, budget) -> float:
    """The tokens at N* of a budget: log D interpolated in log N between the budget's sizes."""
    m = budget == C
    order = np.argsort(N[m])
    return float(np.exp(np.interp(np.log(n_star), np.log(N[m][order]), np.log(D[m][order]))))


def fit_isoflop(N, loss, budget, n_bootstrap: int = 1000, seed: int = 0,
                convention: dict[str, str] | None = None, window: int = ISOFLOP_WINDOW, D=None,
                se=None) -> FittedLaw:
    """Chinchilla's Approach 2 on locally fitted, bracketed minima (unbracketed budgets are flagged in
    info["minima"] and left out). D: each row's training tokens (needed for b and k_D unless C = 6ND). se: each
    row's own standard error (its evaluation windows), used with the seeds' spread as each cell's noise.

    Intervals: every (budget, size) cell is kept in every resample (sizes are never dropped): each cell's mean loss
    is drawn again from its noise (the pooled seed variance with its chi-square uncertainty, and the rows' own
    standard errors), and each budget's vertex refitted (clipped to its sizes). That is the measurement interval of
    a; the scatter interval is the t-interval of the minima about the line in log space (three or more budgets).
    intervals["a"] is the wider; both are in info["components"]."""
    cols = _columns(0, N=N, loss=loss, budget=budget)
    conv = dict(convention or {"N": "all", "C": "6ND"})
    six_nd = conv.get("C", "6ND") == "6ND"
    D_col = None if D is None else _column("D", D)
    minima = isoflop_minima(cols["N"], cols["loss"], cols["budget"], window, se)
    kept = [m for m in minima if m["bracketed"]]
    if len(kept) < 2:
        raise LawFitError(f"isoflop: {len(kept)} of {len(minima)} budgets have a bracketed minimum (a size with "
                          f"higher loss on each side, beyond the noise); train sizes on both sides of each budget's "
                          f"optimum")
    C, n_opt = np.array([m["C"] for m in kept]), np.array([m["N_opt"] for m in kept])
    d_opt = None if D_col is None else np.array([_d_at(c, n, cols["N"], D_col, cols["budget"])
                                                 for c, n in zip(C, n_opt)])
    params = _allocation_law(C, n_opt, d_opt, six_nd)
    fitted = FittedLaw("isoflop", params, ("C",), conv, n_points=len(cols["N"]),
                       info={"minima": minima, "left_out": [m["C"] for m in minima if not m["bracketed"]]})
    if not six_nd and d_opt is None:
        fitted.info["note"] = "C is not 6ND and no tokens were given: b and k_D are not derived"
    fitted.residuals = (np.log(n_opt) - np.log(fitted.predict(C=C))).tolist()
    if not n_bootstrap:
        return fitted
    cells = _cells(cols["N"], cols["loss"], cols["budget"], se)
    noise, rel_var, df = _cell_noise(cells)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    n_draws = []
    for _ in range(n_bootstrap):
        scale = df / rng.chisquare(df) if df else 1.0  # the pooled variance's own uncertainty (t-like)
        C_r, n_r = [], []
        for Cb in C:
            c = cells[float(Cb)]
            loss_r = c["loss"] + rng.normal(size=len(c["N"])) * np.sqrt(
                scale * rel_var * c["loss"] ** 2 / c["k"] + c["own_var"] / c["k"])
            m = _minimum(c["N"], loss_r, window)
            v = m["vertex"] if np.isfinite(m["vertex"]) else math.log(m["N_opt"])
            C_r.append(Cb)
            n_r.append(math.exp(min(max(v, math.log(c["N"][0])), math.log(c["N"][-1]))))
        d_r = None if d_opt is None else np.array([_d_at(x, n, cols["N"], D_col, cols["budget"])
                                                   for x, n in zip(C_r, n_r)])
        for k, v in _allocation_law(np.array(C_r), np.array(n_r), d_r, six_nd).items():
            draws.setdefault(k, []).append(v)
        n_draws.append(n_r)
    q = (2.5, 97.5)
    for m, (lo, hi) in zip(kept, np.percentile(np.array(n_draws), q, axis=0).T):
        m["N_opt_interval"] = (float(lo), float(hi))  # each bracketed minimum's own measurement interval
    intervals = {k: tuple(float(x) for x in np.percentile(v, q)) for k, v in draws.items()}
    components = {"a": {"measurement": intervals["a"]}}
    scatter = ols_slope_interval(np.log(C), np.log(n_opt))
    if scatter is not None:
        components["a"]["scatter"] = scatter
        intervals["a"] = max(components["a"].values(), key=lambda ci: ci[1] - ci[0])
    fitted.intervals = intervals
    fitted.info["components"] = components
    fitted.info["bootstrap"] = {"resamples": n_bootstrap, "failed": 0, "succeeded_share": 1.0,
                                "unit": "cells redrawn from their noise (sizes kept)", "noise_df": df}
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


def _resampled_runs(run: np.ndarray):
    """(number of runs, resample): resample(idx) gives the rows of the runs drawn (whole learning curves) and a fresh
    id per draw, so a run drawn twice stays two separate curves."""
    runs = np.unique(run)
    members = [np.flatnonzero(run == r) for r in runs]

    def resample(idx):
        rows = np.concatenate([members[i] for i in idx])
        ids = np.concatenate([np.full(len(members[i]), k) for k, i in enumerate(idx)])
        return rows, ids

    return len(runs), resample


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
        n_runs, resample = _resampled_runs(run)

        def fit_once(idx):
            rows, ids = resample(idx)
            p, _ = _frontier_arrays(C[rows], L[rows], ids)
            return {**p, "C_c_pf_days": p["X_c"] / PF_DAY}

        attach_bootstrap(fitted, fit_once, n_runs, n_bootstrap, seed)
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
        n_runs, resample = _resampled_runs(run)

        def fit_once(idx):
            rows, ids = resample(idx)
            return _envelope_arrays(ids, N[rows], C[rows], L[rows], n_budgets)[0]

        attach_bootstrap(fitted, fit_once, n_runs, n_bootstrap, seed)
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
