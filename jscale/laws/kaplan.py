"""Kaplan et al.'s laws: single-variable power laws (eq. 1.1-1.3, with or without an irreducible term), L(N, D) (eq.
1.5), L(N, S_min) (eq. 1.6) and the critical batch size (eq. 5.1-5.3, Fig. 18)."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import numpy as np

from jscale.laws.fitted import (FittedLaw, LawFitError, _columns, _least_squares, _kaplan_nd, _kaplan_ns,
                                 attach_bootstrap, distinct_points)


def _fit_power_arrays(X: np.ndarray, L: np.ndarray, irreducible: bool, start: dict[str, float] | None = None
                      ) -> tuple[dict[str, float], float]:
    """start (irreducible only): one warm start instead of the grid, for bootstrap refits."""
    logX, logL = np.log(X), np.log(L)
    if len(np.unique(X)) < (3 if irreducible else 2):
        raise LawFitError(f"power law: {len(np.unique(X))} distinct values of the variable cannot determine it")
    if not irreducible:
        # log L = alpha log X_c - alpha log X: ordinary least squares, exact.
        slope, intercept = np.polyfit(logX, logL, 1)
        alpha = -slope
        if alpha <= 0:
            raise LawFitError(f"power law: loss does not fall with the variable (fitted slope {slope:.3g})")
        return {"X_c": float(np.exp(intercept / alpha)), "alpha": float(alpha)}, float(
            np.sum((logL - intercept - slope * logX) ** 2))

    def residual(theta):
        E, log_Xc, alpha = theta
        return np.log(E + np.exp(alpha * (log_Xc - logX))) - logL

    if start is None:
        starts = []
        for alpha0, frac in itertools.product((0.05, 0.2, 0.5, 1.0), (0.0, 0.5, 0.9)):
            E0 = frac * L.min()
            # Start X_c so the power term matches the mean loss above E0.
            starts.append([E0, np.mean(logX + np.log(np.maximum(L - E0, 1e-12)) / alpha0), alpha0])
    else:
        starts = [[min(start["E"], 0.999 * L.min()), np.log(start["X_c"]), start["alpha"]]]
    best = None
    for x0 in starts:
        try:
            res = _least_squares(residual, x0, bounds=([0, -np.inf, 1e-6], [L.min(), np.inf, 10]), method="trf")
        except ValueError:
            continue
        if res.success and (best is None or res.cost < best.cost):
            best = res
    if best is None:
        raise LawFitError("power law with irreducible term: no start converged")
    E, log_Xc, alpha = best.x
    return {"E": float(E), "X_c": float(np.exp(log_Xc)), "alpha": float(alpha)}, float(2 * best.cost)


def fit_power(X, loss, variable: str = "N", irreducible: bool = False, n_bootstrap: int = 1000, seed: int = 0,
              convention: dict[str, str] | None = None) -> FittedLaw:
    """L = (X_c / X)^alpha, or E + (X_c / X)^alpha when irreducible; least squares on log L."""
    cols = _columns(3 if irreducible else 2, **{variable: X, "loss": loss})
    X, L = cols[variable], cols["loss"]
    params, obj = _fit_power_arrays(X, L, irreducible)
    law = "power+E" if irreducible else "power"
    fitted = FittedLaw(law=law, params=params, variables=("X",), convention=dict(convention or {}),
                       objective=obj, n_points=len(L), info={"variable": variable})
    fitted.residuals = (np.log(L) - np.log(fitted.predict(X=X))).tolist()
    start = params if irreducible else None
    attach_bootstrap(fitted, lambda i: _fit_power_arrays(X[i], L[i], irreducible, start)[0], len(L), n_bootstrap,
                     seed, n_points=distinct_points(X))
    return fitted


def _least_squares_log(formula, starts: Sequence[Sequence[float]], logL: np.ndarray,
                       transform: Callable[[np.ndarray], dict[str, float]], what: str, warm=None):
    """Least squares on log L from several starts; the best converged start whose predictions are all finite.
    warm: a solution to start from alone (a bootstrap resample starts at the full data's fit), the starts only if
    it does not converge."""
    if warm is not None:
        try:
            return _least_squares_log(formula, [warm], logL, transform, what)
        except LawFitError:
            pass
    def residual(theta):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            r = np.log(formula(transform(theta))) - logL
        return np.where(np.isfinite(r), r, 1e3)

    def finite(theta):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return np.all(np.isfinite(np.log(formula(transform(theta)))))

    best = None
    for x0 in starts:
        res = _least_squares(residual, x0, method="lm", max_nfev=2000)
        if res.success and finite(res.x) and (best is None or res.cost < best.cost):
            best = res
    if best is None:
        raise LawFitError(f"{what}: no start converged")
    return transform(best.x), float(2 * best.cost)


def _kaplan_nd_arrays(N, D, L, start: dict[str, float] | None = None):
    starts = [(np.log(1e13), np.log(1e13), aN, aD) for aN in (0.05, 0.1, 0.3) for aD in (0.05, 0.1, 0.3)]
    def tr(t):
        with np.errstate(over="ignore"):  # a resample's N_c or D_c beyond float range is inf, which callers drop
            return {"N_c": float(np.exp(t[0])), "D_c": float(np.exp(t[1])), "alpha_N": float(t[2]),
                    "alpha_D": float(t[3])}

    warm = None if start is None else (np.log(start["N_c"]), np.log(start["D_c"]), start["alpha_N"], start["alpha_D"])
    return _least_squares_log(lambda p: _kaplan_nd(p, N, D), starts, np.log(L), tr, "kaplan-nd", warm)


def _fit_log_law(law: str, fit_arrays: Callable, variables: dict[str, Any], loss, n_params: int,
                 n_bootstrap: int, seed: int, convention: dict[str, str] | None,
                 start: dict[str, float] | None = None) -> FittedLaw:
    """Fit a law of several variables by least squares on log L (fit_arrays(*variables, L, start=None) -> (params,
    objective)), with residuals and percentile-bootstrap intervals over resampled points (each resample starts
    from the full data's fit). start: a solution to try first (the fixed starts only if it does not converge)."""
    cols = _columns(n_params, **variables, loss=loss)
    X, L = [cols[k] for k in variables], cols["loss"]
    params, obj = fit_arrays(*X, L, start=start)
    fitted = FittedLaw(law, params, tuple(variables), dict(convention or {}), objective=obj, n_points=len(L))
    fitted.residuals = (np.log(L) - np.log(fitted.predict(**{k: cols[k] for k in variables}))).tolist()
    attach_bootstrap(fitted, lambda i: fit_arrays(*(x[i] for x in X), L[i], start=params)[0], len(L), n_bootstrap,
                     seed, n_points=distinct_points(*X))
    return fitted


def fit_kaplan_nd(N, D, loss, n_bootstrap: int = 1000, seed: int = 0,
                  convention: dict[str, str] | None = None) -> FittedLaw:
    """Kaplan's eq. 1.5, L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D. Derived: overfit_exponent =
    alpha_N / alpha_D, the power of N that the data must grow by to keep overfitting fixed (with its interval)."""
    def with_ratio(*arrays, start=None):
        params, obj = _kaplan_nd_arrays(*arrays, start=start)
        return {**params, "overfit_exponent": params["alpha_N"] / params["alpha_D"]}, obj

    fitted = _fit_log_law("kaplan-nd", with_ratio, {"N": N, "D": D}, loss, 4, n_bootstrap, seed, convention)
    fitted.derived["overfit_exponent"] = fitted.params.pop("overfit_exponent")
    return fitted


def s_min(S, B, B_crit):
    """Kaplan eq. 5.4: the steps the same loss would take at a batch far above the critical one."""
    return np.asarray(S, np.float64) / (1 + np.asarray(B_crit, np.float64) / np.asarray(B, np.float64))


def c_min(C, B, B_crit):
    """Kaplan eq. 5.5: the compute the same loss would take at a batch far below the critical one."""
    return np.asarray(C, np.float64) / (1 + np.asarray(B, np.float64) / np.asarray(B_crit, np.float64))


def _kaplan_ns_arrays(N, S, L, start: dict[str, float] | None = None):
    starts = [(np.log(1e13), aN, np.log(2e3), aS) for aN in (0.05, 0.1, 0.3) for aS in (0.3, 0.8, 1.5)]
    tr = lambda t: {"N_c": float(np.exp(t[0])), "alpha_N": float(t[1]), "S_c": float(np.exp(t[2])),
                    "alpha_S": float(t[3])}
    warm = None if start is None else (np.log(start["N_c"]), start["alpha_N"], np.log(start["S_c"]), start["alpha_S"])
    return _least_squares_log(lambda p: _kaplan_ns(p, N, S), starts, np.log(L), tr, "kaplan-ns", warm)


def fit_kaplan_ns(N, S_min, loss, n_bootstrap: int = 1000, seed: int = 0,
                  convention: dict[str, str] | None = None, start: dict[str, float] | None = None) -> FittedLaw:
    """L(N, S_min) = (N_c/N)^alpha_N + (S_c/S_min)^alpha_S; pass S_min = s_min(S, B, B_crit(L)). start: a
    solution to try first (a refit on resampled curves starts from the full data's)."""
    return _fit_log_law("kaplan-ns", _kaplan_ns_arrays, {"N": N, "S_min": S_min}, loss, 4, n_bootstrap, seed,
                        convention, start)


def critical_batch_rows(S, E, target, L_target) -> list[tuple[float, float, float, float]]:
    """Per loss target, (L, S_min, E_min, B_crit): (S/S_min - 1)(E/E_min - 1) = 1 fitted to the batch sizes' S and E,
    B_crit = E_min / S_min."""
    S, E, target, L_target = map(np.asarray, (S, E, target, L_target))
    rows = []
    for t in np.unique(target):
        m = target == t
        s, e = S[m], E[m]
        if len(s) < 3:
            raise LawFitError(f"critical batch: loss target {t:g} has {len(s)} batch sizes; need at least 3")

        # E = E_min (1 + 1 / (S / S_min - 1)), needs S_min < min(S); solved in log space.
        def residual(theta):
            smin, emin = np.exp(theta)
            ratio = np.maximum(s / smin - 1, 1e-12)
            return np.log(emin * (1 + 1 / ratio)) - np.log(e)

        x0 = [np.log(0.5 * s.min()), np.log(0.5 * e.min())]
        res = _least_squares(residual, x0, bounds=([-np.inf, -np.inf], [np.log(s.min()), np.inf]))
        if not res.success:
            raise LawFitError(f"critical batch: the S-E hyperbola did not converge at loss target {t:g}")
        smin, emin = np.exp(res.x)
        rows.append((float(L_target[m][0]), smin, emin, emin / smin))
    return rows


def _critical_batch_arrays(S, E, target, L_target):
    """Per loss target, fit (S/S_min - 1)(E/E_min - 1) = 1, then B_crit = E_min / S_min = B_* / L^(1/alpha_B)."""
    rows = critical_batch_rows(S, E, target, L_target)
    Ls, smins, emins, bcrit = map(np.asarray, zip(*rows))
    if len(Ls) < 2:
        raise LawFitError("critical batch: need at least 2 loss targets to fit B_crit(L)")
    slope, intercept = np.polyfit(np.log(Ls), np.log(bcrit), 1)  # log B_crit = log B_* - (1/alpha_B) log L
    if slope >= 0:
        raise LawFitError(f"critical batch: B_crit does not fall with loss (slope {slope:.3g})")
    return {"B_star": float(np.exp(intercept)), "alpha_B": float(-1 / slope)}, rows


def fit_critical_batch(steps, tokens_processed, loss_target, n_bootstrap: int = 1000, seed: int = 0) -> FittedLaw:
    """From batch-size scans: for each loss target, the steps S and tokens E = B S each batch size needed."""
    cols = _columns(2, S=steps, E=tokens_processed, loss_target=loss_target)
    S, E, target = cols["S"], cols["E"], cols["loss_target"]
    params, rows = _critical_batch_arrays(S, E, target, target)
    fitted = FittedLaw("critical-batch", params, ("L",), n_points=len(S),
                       info={"per_target": [dict(zip(("loss", "S_min", "E_min", "B_crit"), r)) for r in rows]})
    Ls, bcrit = np.array([r[0] for r in rows]), np.array([r[3] for r in rows])
    fitted.residuals = (np.log(bcrit) - np.log(fitted.predict(L=Ls))).tolist()
    attach_bootstrap(fitted, lambda i: _critical_batch_arrays(S[i], E[i], target[i], target[i])[0], len(S),
                     n_bootstrap, seed)
    return fitted
