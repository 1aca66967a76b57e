"""Scaling-law fitting: Kaplan's power laws, Chinchilla's parametric fit, IsoFLOP and envelope approaches, the
compute frontier, critical batch size, and percentile-bootstrap intervals for every fitted and derived number.

All fits run in float64 NumPy/SciPy. Every fit returns a `FittedLaw`: its parameters, 95% bootstrap intervals,
residuals, the conventions it was fitted in (N: "non_embedding" or "all"; C: "6ND" or "exact"), `predict(...)` and a
JSON round trip. Bad input raises `LawFitError` naming the column or value; a fit in which no start converges raises
rather than returning a garbage optimum.

Formulas (see Kaplan et al. 2020 eq. 1.1-1.6, Hoffmann et al. 2022 eq. 2-4, Besiroglu et al. 2024):
- power:      L = (X_c / X)^alpha                      (X = N, D or C)
- power+E:    L = E + (X_c / X)^alpha
- kaplan-nd:  L = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D
- kaplan-ns:  L = (N_c / N)^alpha_N + (S_c / S_min)^alpha_S
- chinchilla: L = E + A / N^alpha + B / D^beta, fitted by Huber (delta 1e-3) on log L against
              LSE(log A - alpha log N, log B - beta log D, log E), L-BFGS from a 4,500-point grid, best kept.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jscale.config import JscaleError

PF_DAY = 8.64e19


def _least_squares(*args, **kwargs):
    """scipy.optimize.least_squares, imported when a fit first runs: scipy.optimize takes most of a second to
    import, and every jscale command (training ones too) builds the `fit` command's parser from this module."""
    from scipy import optimize

    return optimize.least_squares(*args, **kwargs)


class LawFitError(JscaleError):
    pass


# ---------------------------------------------------------------------------------------------------------------
# Input checks.


# Beyond these a value is not a measurement of a training run (a loss in nats of 1e300, N = 1e300): refused.
PLAUSIBLE_MAX = {"loss": 100.0, "loss_target": 100.0}
PLAUSIBLE_MAX_DEFAULT = 1e40


def _column(name: str, values: Any, positive: bool = True) -> np.ndarray:
    raw = np.asarray(values, dtype=object).reshape(-1)
    try:
        x = raw.astype(np.float64)
    except (TypeError, ValueError):
        i = next(i for i, v in enumerate(raw) if not _is_number(v))
        raise LawFitError(f"{name}: row {i} is {raw[i]!r}, not a number") from None
    bad = ~np.isfinite(x)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LawFitError(f"{name}: row {i} is {x[i]:g} (NaN or inf); {int(bad.sum())} such rows")
    if positive and (x <= 0).any():
        i = int(np.flatnonzero(x <= 0)[0])
        raise LawFitError(f"{name}: row {i} is {x[i]:g}; every value must be positive")
    limit = PLAUSIBLE_MAX.get(name, PLAUSIBLE_MAX_DEFAULT)
    if (np.abs(x) > limit).any():
        i = int(np.flatnonzero(np.abs(x) > limit)[0])
        raise LawFitError(f"{name}: row {i} is {x[i]:g}, beyond any training run (at most {limit:g})")
    return x


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


def _columns(n_params: int, **cols) -> dict[str, np.ndarray]:
    out = {k: _column(k, v) for k, v in cols.items()}
    lengths = {k: len(v) for k, v in out.items()}
    if len(set(lengths.values())) > 1:
        raise LawFitError(f"mismatched lengths: {', '.join(f'{k} has {n}' for k, n in lengths.items())}")
    n = next(iter(lengths.values()))
    if n <= n_params:
        raise LawFitError(f"{n} points cannot determine {n_params} parameters; need at least {n_params + 1}")
    if n_params:  # a law of a variable that never varies cannot be fitted, however many rows repeat it
        for k, v in out.items():
            if not k.startswith("loss") and len(np.unique(v)) < 2:
                raise LawFitError(f"{k}: every row has the same value ({v[0]:g}); the law's parameters cannot be "
                                  f"identified")
    return out


# ---------------------------------------------------------------------------------------------------------------
# The fitted-law object.


@dataclasses.dataclass
class FittedLaw:
    law: str  # power | power+E | kaplan-nd | kaplan-ns | chinchilla | isoflop | envelope | frontier | critical-batch
    params: dict[str, float]
    variables: tuple[str, ...]  # the inputs predict() takes, e.g. ("N", "D")
    convention: dict[str, str] = dataclasses.field(default_factory=dict)  # {"N": "all", "C": "6ND"}
    derived: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. Chinchilla's a, b, G
    intervals: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # 95% percentile bootstrap
    residuals: list[float] = dataclasses.field(default_factory=list)  # log L - log prediction, per point
    objective: float = float("nan")
    n_points: int = 0
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def predict(self, **inputs) -> np.ndarray:
        missing = [v for v in self.variables if v not in inputs]
        if missing:
            raise LawFitError(f"predict: {self.law} needs {', '.join(self.variables)}; missing {', '.join(missing)}")
        arrays = {k: np.asarray(inputs[k], np.float64) for k in self.variables}
        return _FORMULAS[self.law](self.params, **arrays)

    def compute_optimal(self, C) -> dict[str, np.ndarray]:
        """N_opt(C) and D_opt(C) for C = 6 N D (Chinchilla, IsoFLOP and envelope fits)."""
        C = np.asarray(C, np.float64)
        if self.law == "chinchilla":
            G, a, b = self.derived["G"], self.derived["a"], self.derived["b"]
            return {"N": G * (C / 6) ** a, "D": (C / 6) ** b / G}
        if self.law in ("isoflop", "envelope"):
            N = self.params["k_N"] * C ** self.params["a"]
            return {"N": N, "D": C / (6 * N)}
        raise LawFitError(f"compute_optimal: {self.law} does not give N_opt(C)")

    def terms(self) -> dict[str, str]:
        """Parameter names in the law's own terms where they differ from the generic ones: a power law in N has
        Kaplan's N_c and alpha_N, in D D_c and alpha_D, in C C_c and alpha_C."""
        variable = self.info.get("variable") or ("C" if self.law == "frontier" else None)
        if variable and self.law in ("power", "power+E", "frontier"):
            return {"X_c": f"{variable}_c", "alpha": f"alpha_{variable}"}
        return {}

    def named(self) -> dict[str, float]:
        """Parameters and derived quantities under the law's own names."""
        t = self.terms()
        return {t.get(k, k): v for k, v in {**self.params, **self.derived}.items()}

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["variables"] = list(self.variables)
        d["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        d["named"] = self.named()  # what to quote: the same values under the law's names (N_c, alpha_N)
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "FittedLaw":
        d = json.loads(text)
        d.pop("named", None)
        d["variables"] = tuple(d["variables"])
        d["intervals"] = {k: tuple(v) for k, v in d["intervals"].items()}
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "FittedLaw":
        return cls.from_json(Path(path).read_text())

    def table(self) -> str:
        """Parameters and derived quantities with their intervals, one per line."""
        rows, terms = [], self.terms()
        for name, value in {**self.params, **self.derived}.items():
            lo_hi = self.intervals.get(name)
            ci = f"  [{lo_hi[0]:.4g}, {lo_hi[1]:.4g}]" if lo_hi else ""
            rows.append(f"  {terms.get(name, name):<12} {value:>12.5g}{ci}")
        conv = ", ".join(f"{k}: {v}" for k, v in self.convention.items())
        head = f"{self.law} fit on {self.n_points} points" + (f" ({conv})" if conv else "")
        boot = self.info.get("bootstrap")
        tail = []
        if boot:
            tail = [f"  bootstrap: {boot['note']}" if "note" in boot else
                    f"  bootstrap: {boot['resamples']} resamples, {boot['failed']} failed (left out of the intervals)"]
        for m in self.info.get("minima", []):
            if not m.get("bracketed", True):
                tail.append(f"  budget C = {m['C']:.3g}: minimum not bracketed ({m['note']}); left out of the fit")
        return "\n".join([head, f"  {'parameter':<12} {'value':>12}  95% bootstrap interval", *rows, *tail])


def _power(p, X):
    return (p["X_c"] / X) ** p["alpha"]


def _power_e(p, X):
    return p["E"] + (p["X_c"] / X) ** p["alpha"]


def _kaplan_nd(p, N, D):
    return ((p["N_c"] / N) ** (p["alpha_N"] / p["alpha_D"]) + p["D_c"] / D) ** p["alpha_D"]


def _kaplan_ns(p, N, S_min):
    return (p["N_c"] / N) ** p["alpha_N"] + (p["S_c"] / S_min) ** p["alpha_S"]


def _chinchilla(p, N, D):
    return p["E"] + p["A"] / N ** p["alpha"] + p["B"] / D ** p["beta"]


def _n_opt(p, C):
    return p["k_N"] * C ** p["a"]


def _b_crit(p, L):
    return p["B_star"] / L ** (1 / p["alpha_B"])


_FORMULAS: dict[str, Callable] = {
    "power": _power, "power+E": _power_e, "frontier": _power, "kaplan-nd": _kaplan_nd, "kaplan-ns": _kaplan_ns,
    "chinchilla": _chinchilla, "isoflop": _n_opt, "envelope": _n_opt, "critical-batch": _b_crit,
}


# ---------------------------------------------------------------------------------------------------------------
# Bootstrap.


def _progress(iterable, what: str):
    """A progress bar where someone watches (a terminal or a notebook) and the loop is long enough to wait on."""
    import sys

    watched = "ipykernel" in sys.modules or sys.stderr.isatty()
    if not watched or len(iterable) < 200:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=what, unit="fit", leave=False)


def bootstrap(fit_once: Callable[[np.ndarray], dict[str, float]], n_units: int, n_resamples: int, seed: int,
              level: float = 0.95) -> tuple[dict[str, tuple[float, float]], dict[str, np.ndarray]]:
    """Percentile intervals: refit on n_resamples resamples (with replacement) of n_units units.

    fit_once(indices) returns the quantities to interval; a resample whose fit fails or gives a non-finite value
    is left out and counted (arrays["_failed"]; attach_bootstrap reports it with the intervals).
    """
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    failed = 0
    for _ in _progress(range(n_resamples), "bootstrap"):
        idx = rng.integers(0, n_units, n_units)
        try:
            out = fit_once(idx)
        except (LawFitError, np.linalg.LinAlgError, FloatingPointError, ValueError, ArithmeticError):
            failed += 1
            continue
        if not all(np.isfinite(v) and np.isreal(v) for v in out.values()):  # one bad resample must not poison
            failed += 1
            continue
        for k, v in out.items():
            samples.setdefault(k, []).append(v)
    if not samples:
        raise LawFitError(f"bootstrap: all {n_resamples} resampled fits failed")
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    arrays = {k: np.asarray(v) for k, v in samples.items()}
    intervals = {k: tuple(float(x) for x in np.percentile(v, q)) for k, v in arrays.items()}
    arrays["_failed"] = np.asarray([failed])
    return intervals, arrays


MIN_BOOTSTRAP_UNITS = 5  # fewer resampling units give a point estimate only (verdicts.MIN_POINTS)


def attach_bootstrap(fitted: "FittedLaw", fit_once: Callable[[np.ndarray], dict[str, float]], n_units: int,
                     n_resamples: int, seed: int) -> None:
    """Intervals on a fitted law, with the number of resamples and of failed ones in info["bootstrap"]; with fewer
    than MIN_BOOTSTRAP_UNITS units, no intervals and a note saying so."""
    if not n_resamples:
        return
    if n_units < MIN_BOOTSTRAP_UNITS:
        fitted.info["bootstrap"] = {"resamples": 0, "failed": 0,
                                    "note": f"{n_units} units to resample, fewer than {MIN_BOOTSTRAP_UNITS}: "
                                            f"point estimate only"}
        return
    fitted.intervals, arrays = bootstrap(fit_once, n_units, n_resamples, seed)
    fitted.info["bootstrap"] = {"resamples": n_resamples, "failed": int(arrays["_failed"][0])}


# ---------------------------------------------------------------------------------------------------------------
# Single-variable power laws (Kaplan eq. 1.1-1.3), with or without an irreducible term.


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
                     seed)
    return fitted


# ---------------------------------------------------------------------------------------------------------------
# Kaplan's two-variable laws: L(N, D) (eq. 1.5) and L(N, S_min) (eq. 1.6), least squares on log L.


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
    tr = lambda t: {"N_c": float(np.exp(t[0])), "D_c": float(np.exp(t[1])), "alpha_N": float(t[2]),
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
                     seed)
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


# ---------------------------------------------------------------------------------------------------------------
# Chinchilla's parametric fit (Approach 3).

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
            x, f, converged, best = wide, f_wide, conv_wide, i
    params = _chinchilla_params(x[best])
    if params["alpha"] <= 0 or params["beta"] <= 0:
        raise LawFitError(f"chinchilla: fitted alpha = {params['alpha']:.3g}, beta = {params['beta']:.3g}; an "
                          f"exponent <= 0 means loss does not fall with N or D in these runs: the data cannot "
                          f"identify the law")
    fitted = FittedLaw("chinchilla", params, ("N", "D"), dict(convention or {"N": "all", "C": "6ND"}),
                       derived=chinchilla_derived(params), objective=float(f[best]), n_points=len(logL),
                       info={"delta": delta, "starts_polished": len(starts), "starts_converged": int(converged.sum())})
    fitted.residuals = (logL - np.log(fitted.predict(N=cols["N"], D=cols["D"]))).tolist()
    if n_bootstrap and len(logL) < MIN_BOOTSTRAP_UNITS:
        fitted.info["bootstrap"] = {"resamples": 0, "failed": 0, "note": "fewer than 5 points: point estimate only"}
    elif n_bootstrap:
        fitted.intervals, failed = _chinchilla_bootstrap(logN, logD, logL, delta, x[best], n_bootstrap, seed)
        fitted.info["bootstrap"] = {"resamples": n_bootstrap, "failed": failed}
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
    if len(x) == 0:
        raise LawFitError("chinchilla bootstrap: no resample converged")
    p = {"E": np.exp(x[:, 2]), "A": np.exp(x[:, 0]), "B": np.exp(x[:, 1]), "alpha": x[:, 3], "beta": x[:, 4]}
    with np.errstate(over="ignore", invalid="ignore"):
        samples = {**p, **chinchilla_derived(p)}
    finite = np.all([np.isfinite(v) for v in samples.values()], axis=0)
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    intervals = {k: tuple(float(v) for v in np.percentile(s[finite], q)) for k, s in samples.items()}
    return intervals, int(n_resamples - finite.sum())


# ---------------------------------------------------------------------------------------------------------------
# Approach 2 (IsoFLOP profiles) and Approach 1 (envelope of learning curves).


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


# ---------------------------------------------------------------------------------------------------------------
# Extrapolation check.


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
