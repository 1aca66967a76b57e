"""Chinchilla's parametric fit (Hoffmann et al. 2022 Approach 3, as Besiroglu et al. 2024 replicate it): Huber on
log L against LSE(log A - alpha log N, log B - beta log D, log E), L-BFGS from a 4,500-point grid, best kept."""

from __future__ import annotations

import itertools
import math

import numpy as np

from jscale.laws.fitted import (MIN_BOOTSTRAP_UNITS, MIN_SUCCESS_SHARE, FittedLaw, LawFitError, _columns,
                                 distinct_points)


CHINCHILLA_GRID = {  # Hoffmann et al.'s initialisation grid: 5 x 5 x 5 x 6 x 6 = 4,500 starts
    "alpha": (0.0, 0.5, 1.0, 1.5, 2.0), "beta": (0.0, 0.5, 1.0, 1.5, 2.0), "e": (-1.0, -0.5, 0.0, 0.5, 1.0),
    "a": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0), "b": (0.0, 5.0, 10.0, 15.0, 20.0, 25.0),
}


_THETA = ("a", "b", "e", "alpha", "beta")  # the optimisation variables: log A, log B, log E, alpha, beta


def chinchilla_grid() -> np.ndarray:
    g = CHINCHILLA_GRID
    return np.array([[a, b, e, al, be] for al, be, e, a, b in itertools.product(
        g["alpha"], g["beta"], g["e"], g["a"], g["b"])])


def _objective_and_grad(theta_Bx5, logN, logD, logL, delta, weights_Bxn=None):
    """Huber objective and its exact gradient for B parameter vectors, each with its own point weights (B, n; None:
    every point once).

    Written out by hand (no scipy.special.logsumexp/huber), in place where a (B, n) temporary can be reused: this is
    the inner loop of every polish, bootstrap refit and grid pass; tests check it against SciPy's formulation and
    finite differences."""
    a, b, e, alpha, beta = (theta_Bx5[:, i:i + 1] for i in range(5))
    x0 = alpha * logN
    np.subtract(a, x0, out=x0)  # t0 = a - alpha log N
    x1 = beta * logD
    np.subtract(b, x1, out=x1)  # t1 = b - beta log D
    m = np.maximum(x0, x1)
    np.maximum(m, e, out=m)
    x0 -= m
    np.exp(x0, out=x0)  # x_i = exp(t_i - m): the softmax's terms, (B, n)
    x1 -= m
    np.exp(x1, out=x1)
    x2 = np.exp(e - m)
    total = x0 + x1
    total += x2
    r = np.log(total)
    np.subtract(logL, m, out=m)
    np.subtract(m, r, out=r)  # r = log L - LSE(t0, t1, e), (B, n)
    abs_r = np.abs(r)
    h = np.where(abs_r <= delta, 0.5 * r * r, delta * (abs_r - 0.5 * delta))
    dh = np.clip(r, -delta, delta, out=r)  # d huber / dr
    np.negative(dh, out=dh)
    if weights_Bxn is not None:
        dh *= weights_Bxn
        h *= weights_Bxn
    dh /= total  # d huber / d LSE, over the softmax's sum
    grad = np.empty((len(theta_Bx5), 5))
    for i, x, log_x in ((0, x0, logN), (1, x1, logD), (2, x2, None)):
        np.multiply(dh, x, out=total)
        grad[:, i] = total.sum(1)
        if log_x is not None:  # d/d alpha and d/d beta
            total *= log_x
            grad[:, i + 3] = -total.sum(1)
    return h.sum(1), grad


def chinchilla_objective(theta_Sx5: np.ndarray, logN: np.ndarray, logD: np.ndarray, logL: np.ndarray,
                         delta: float = 1e-3, weights: np.ndarray | None = None) -> np.ndarray:
    """The summed Huber loss for many parameter vectors at once: theta (S, 5) -> (S,)."""
    weights_1xn = None if weights is None else np.asarray(weights, np.float64).reshape(1, -1)
    return _objective_and_grad(theta_Sx5, logN, logD, logL, delta, weights_1xn)[0]


def _minimize_batch(starts_Bx5, logN, logD, logL, delta, weights_Bxn=None):
    """Run L-BFGS from every start at once (each row with its own point weights; None: every point once)."""
    from jscale import lbfgs

    fg = lambda x, rows: _objective_and_grad(x, logN, logD, logL, delta,
                                             None if weights_Bxn is None else weights_Bxn[rows])
    return lbfgs.minimize(fg, starts_Bx5)


STUCK_REPOLISH_STARTS = 32
_NAMES = ("A", "B", "E", "alpha", "beta")  # the optimisation variables' names as reported (log A, log B, log E, ...)


def _stuck(theta: np.ndarray, start: np.ndarray) -> list[str]:
    """The parameters that never moved from their start."""
    return [n for n, a, b in zip(_NAMES, theta, start) if abs(a - b) <= 1e-9]


def _chinchilla_params(theta) -> dict[str, float]:
    a, b, e, alpha, beta = map(float, theta)
    return {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}


def chinchilla_derived(p: dict[str, float]) -> dict[str, float]:
    """Compute-optimal allocation with C = 6ND: N_opt = G (C/6)^a, D_opt = G^-1 (C/6)^b."""
    s = p["alpha"] + p["beta"]
    return {"a": p["beta"] / s, "b": p["alpha"] / s,
            "G": (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / s)}


def fit_chinchilla(N, D, loss, delta: float = 1e-3, n_polish: int = 64, all_starts: bool = False,
                   n_bootstrap: int = 1000, seed: int = 0, convention: dict[str, str] | None = None) -> FittedLaw:
    """Hoffmann et al.'s fit: rank the 4,500 grid starts by objective in one vectorised pass, run L-BFGS (exact
    gradients, all at once) from the n_polish best, keep the best optimum. all_starts=True runs L-BFGS from every
    start, the published procedure; the tests and benchmark check both reach the same optimum."""
    cols = _columns(5, N=N, D=D, loss=loss)
    logN, logD, logL = np.log(cols["N"]), np.log(cols["D"]), np.log(cols["loss"])
    if np.ptp(logN + logD) < 0.05:  # along one IsoFLOP curve A/N^alpha and B/D^beta trade off freely
        raise LawFitError("N, D: every run has the same N x D (one compute budget); Chinchilla's five parameters "
                          "need runs at several budgets")
    starts = chinchilla_grid()
    if not all_starts:
        grid_values = chinchilla_objective(starts, logN, logD, logL, delta)
        starts = starts[np.argsort(grid_values, kind="stable")[:n_polish]]
    x, f, converged = _minimize_batch(starts, logN, logD, logL, delta)
    if not converged.any():
        raise LawFitError(f"chinchilla: none of the {len(starts)} starts converged")
    best = int(np.argmin(np.where(converged, f, np.inf)))
    if not all_starts and np.allclose(x[best], starts[best], rtol=0, atol=1e-6):
        # The optimum never left its grid start (a flat or stuck polish): check it against every start.
        wide, f_wide, conv_wide = _minimize_batch(chinchilla_grid(), logN, logD, logL, delta)
        i = int(np.argmin(np.where(conv_wide, f_wide, np.inf)))
        if conv_wide[i] and f_wide[i] < f[best]:
            x, f, converged, best, starts = wide, f_wide, conv_wide, i, chinchilla_grid()
    stuck = _stuck(x[best], starts[best])
    if stuck:
        # Some parameters never left their start while others moved (L-BFGS stopped on a flat direction): polish
        # again from around the optimum, and refuse an answer that still has a parameter at its start.
        rng = np.random.default_rng(0)
        again = x[best] + rng.normal(0, 0.5, (STUCK_REPOLISH_STARTS, 5))
        x2, f2, conv2 = _minimize_batch(again, logN, logD, logL, delta)
        i = int(np.argmin(np.where(conv2, f2, np.inf)))
        if conv2[i] and f2[i] <= f[best] and not _stuck(x2[i], again[i]):
            x, f, converged, best, stuck = x2, f2, conv2, i, []
    if stuck:
        raise LawFitError(f"chinchilla: {', '.join(stuck)} never left their starting values in the best fit (a "
                          f"stuck optimiser), and polishing again from around it did not free them; the data may not "
                          f"identify every parameter")
    params = _chinchilla_params(x[best])
    if params["alpha"] <= 0 or params["beta"] <= 0:
        raise LawFitError(f"chinchilla: fitted alpha = {params['alpha']:.3g}, beta = {params['beta']:.3g}; an "
                          f"exponent <= 0 means loss does not fall with N or D in these runs: the data cannot "
                          f"identify the law")
    fitted = FittedLaw("chinchilla", params, ("N", "D"), dict(convention or {"N": "all", "C": "6ND"}),
                       derived=chinchilla_derived(params), objective=float(f[best]), n_points=len(logL),
                       info={"delta": delta, "starts_polished": len(starts), "starts_converged": int(converged.sum())})
    fitted.residuals = (logL - np.log(fitted.predict(N=cols["N"], D=cols["D"]))).tolist()
    n_points = distinct_points(logN, logD)  # seed replicas of one (N, D) are one point, as the report counts
    if n_bootstrap and n_points < MIN_BOOTSTRAP_UNITS:
        fitted.info["bootstrap"] = {"resamples": 0, "failed": 0,
                                    "note": f"{n_points} distinct points, fewer than {MIN_BOOTSTRAP_UNITS}: point "
                                            f"estimate only"}
    elif n_bootstrap:
        fitted.intervals, failed = _chinchilla_bootstrap(logN, logD, logL, delta, x[best], n_bootstrap, seed)
        fitted.info["bootstrap"] = {"resamples": n_bootstrap, "failed": failed,
                                    "succeeded_share": round(1 - failed / n_bootstrap, 4)}
        if not fitted.intervals:
            fitted.info["bootstrap"]["note"] = (f"{n_bootstrap - failed} of {n_bootstrap} resampled fits succeeded, "
                                                f"fewer than {100 * MIN_SUCCESS_SHARE:.0f}%: point estimate only")
    return fitted


def _chinchilla_bootstrap(logN, logD, logL, delta, theta_hat, n_resamples, seed, level: float = 0.95):
    """Percentile intervals from resamples of the points (as multinomial weights), all refitted at once, each
    warm-started at the full-data optimum."""
    n = len(logL)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (n_resamples, n))
    weights = np.zeros((n_resamples, n))
    np.add.at(weights, (np.arange(n_resamples)[:, None], idx), 1.0)
    x, f, converged = _minimize_batch(np.tile(theta_hat, (n_resamples, 1)), logN, logD, logL, delta, weights)
    ok = converged & np.isfinite(x).all(axis=1) & (x[:, 3] > 0) & (x[:, 4] > 0)  # impossible signs count as failed
    x = x[ok]
    if len(x) < MIN_SUCCESS_SHARE * n_resamples:  # too few refits succeeded for an interval: the estimate stands
        return {}, int(n_resamples - len(x))
    with np.errstate(over="ignore", invalid="ignore"):  # a wild resample overflows to inf and is dropped below
        p = {"E": np.exp(x[:, 2]), "A": np.exp(x[:, 0]), "B": np.exp(x[:, 1]), "alpha": x[:, 3], "beta": x[:, 4]}
        samples = {**p, **chinchilla_derived(p)}
    finite = np.all([np.isfinite(v) for v in samples.values()], axis=0)
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    intervals = {k: tuple(float(v) for v in np.percentile(s[finite], q)) for k, s in samples.items()}
    return intervals, int(n_resamples - finite.sum())
