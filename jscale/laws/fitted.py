"""The fitted-law object (`FittedLaw`: parameters, intervals, conventions, `predict`, a JSON round trip), the
laws' formulas, the input checks every fit shares, and percentile-bootstrap intervals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from jscale.errors import JscaleError


PF_DAY = 8.64e19


def _least_squares(*args, **kwargs):
    """scipy.optimize.least_squares, imported when a fit first runs: scipy.optimize takes most of a second to
    import, and every jscale command (training ones too) builds the `fit` command's parser from this module."""
    from scipy import optimize

    return optimize.least_squares(*args, **kwargs)


class LawFitError(JscaleError):
    pass


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
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    arrays = {k: np.asarray(v) for k, v in samples.items()}
    # An interval from a few successful resamples of many is not an interval: below MIN_SUCCESS_SHARE none is
    # given (the point estimate stands, and the share is reported).
    ok = n_resamples - failed >= MIN_SUCCESS_SHARE * n_resamples
    intervals = {k: tuple(float(x) for x in np.percentile(v, q)) for k, v in arrays.items()} if ok else {}
    arrays["_failed"] = np.asarray([failed])
    return intervals, arrays


MIN_BOOTSTRAP_UNITS = 5  # fewer resampling units give a point estimate only (verdicts.MIN_POINTS)
MIN_SUCCESS_SHARE = 0.9  # an interval needs at least this share of its resampled fits to succeed


def distinct_points(*columns) -> int:
    """How many distinct points (rows of the given columns) a table holds: seed replicas of one size are one point,
    as the report counts them, so `jscale fit` and `jscale report` agree on when a fit gets an interval."""
    return len({tuple(row) for row in zip(*(np.asarray(c).tolist() for c in columns))})


def attach_bootstrap(fitted: "FittedLaw", fit_once: Callable[[np.ndarray], dict[str, float]], n_units: int,
                     n_resamples: int, seed: int, n_points: int | None = None) -> None:
    """Intervals on a fitted law, with the number of resamples and of failed ones in info["bootstrap"]; with fewer
    than MIN_BOOTSTRAP_UNITS units (or distinct points, n_points), no intervals and a note saying so."""
    if not n_resamples:
        return
    if min(n_units, n_units if n_points is None else n_points) < MIN_BOOTSTRAP_UNITS:
        what = (f"{n_units} units to resample" if n_points is None or n_units <= n_points
                else f"{n_points} distinct points")
        fitted.info["bootstrap"] = {"resamples": 0, "failed": 0,
                                    "note": f"{what}, fewer than {MIN_BOOTSTRAP_UNITS}: point estimate only"}
        return
    fitted.intervals, arrays = bootstrap(fit_once, n_units, n_resamples, seed)
    failed = int(arrays["_failed"][0])
    fitted.info["bootstrap"] = {"resamples": n_resamples, "failed": failed,
                                "succeeded_share": round(1 - failed / n_resamples, 4)}
    if not fitted.intervals:
        fitted.info["bootstrap"]["note"] = (f"{n_resamples - failed} of {n_resamples} resampled fits succeeded, "
                                            f"fewer than {100 * MIN_SUCCESS_SHARE:.0f}%: point estimate only")


def ols_slope_interval(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """The t-interval of the slope of y on x by least squares, from the residuals (n - 2 degrees of freedom): how
    far the points' scatter about the line leaves the slope. None with fewer than 3 points."""
    from scipy import stats

    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n < 3:
        return None
    X = x - x.mean()
    slope = float(np.sum(X * (y - y.mean())) / np.sum(X ** 2))
    resid = y - y.mean() - slope * X
    se = float(np.sqrt(np.sum(resid ** 2) / (n - 2) / np.sum(X ** 2)))
    t = float(stats.t.ppf((1 + level) / 2, n - 2))
    return slope - t * se, slope + t * se
