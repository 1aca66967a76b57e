"""Intervals that include the noise of a measurement: a hierarchical bootstrap over seeds and evaluation windows.

A measured point (a model size, a shape, a family) is k seed replicas, each scored on the same W evaluation
windows. Its loss is the mean over seeds of the mean over windows. One bootstrap resample draws the windows (once,
shared by every run scored on them, so comparisons between runs stay paired window by window) and, within each
point, its seeds, both with replacement; then recomputes every point's loss and the statistic (a fit's exponent, a
difference). Seed noise and evaluation-window noise are both in the spread; a fit over points adds the scatter of
the points themselves. Fewer than verdicts.MIN_POINTS points give no interval; failed resamples are counted and
reported, never dropped silently.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from jscale.verdicts import MIN_POINTS


@dataclasses.dataclass(frozen=True)
class Estimate:
    value: float
    interval: tuple[float, float] | None  # None: too few points, or the resamples failed
    resamples: int
    failed: int
    n_points: int

    def text(self, fmt: str = ".3f") -> str:
        ci = "no interval" if self.interval is None else f"{self.interval[0]:{fmt}} to {self.interval[1]:{fmt}}"
        failed = f", {self.failed} of {self.resamples} resamples failed" if self.failed else ""
        return f"{self.value:{fmt}} ({ci}{failed})"


def point_losses(losses_SxW: list[np.ndarray]) -> np.ndarray:
    """Each point's loss: the mean over its seeds of the mean over windows."""
    return np.array([np.mean(x) for x in losses_SxW])


def hierarchical_bootstrap(losses: list[np.ndarray], statistic: Callable[[np.ndarray], float],
                           n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                           min_points: int = MIN_POINTS) -> Estimate:
    """statistic(point losses) with a percentile interval from resampling seeds and windows.

    losses: per point, an array (seeds, windows) of per-window losses; every point is scored on the same windows
    (same W, same order). A point with one seed contributes window noise only."""
    losses = [np.atleast_2d(np.asarray(x, float)) for x in losses]
    W = {x.shape[1] for x in losses}
    if len(W) != 1:
        raise ValueError(f"points scored on different windows (W = {sorted(W)}); bootstrap them separately")
    W = W.pop()
    value = float(statistic(point_losses(losses)))
    if len(losses) < min_points or n_resamples == 0:
        return Estimate(value, None, 0, 0, len(losses))

    def draw(rng: np.random.Generator) -> float:
        windows = rng.integers(0, W, W)
        return statistic(np.array([x[rng.integers(0, len(x), len(x))][:, windows].mean() for x in losses]))

    return percentile_estimate(value, draw, n_resamples, len(losses), seed, level)


def percentile_estimate(value: float, draw: Callable[[np.random.Generator], float], n_resamples: int,
                        n_points: int, seed: int = 0, level: float = 0.95, min_share: float = 0.5,
                        errors: tuple[type[BaseException], ...] = ()) -> Estimate:
    """value with a percentile interval over n_resamples calls of draw(rng). A draw that raises (a statistic that
    cannot be computed on that resample: ValueError, ArithmeticError, LinAlgError or one of `errors`) or is not
    finite is counted as failed; fewer than min_share of the resamples succeeding gives no interval."""
    rng = np.random.default_rng(seed)
    draws, failed = [], 0
    for _ in range(n_resamples):
        try:
            v = float(draw(rng))
        except (ValueError, ArithmeticError, np.linalg.LinAlgError, *errors):
            v = float("nan")
        if np.isfinite(v):
            draws.append(v)
        else:
            failed += 1
    if not draws or len(draws) < min_share * n_resamples:
        return Estimate(value, None, n_resamples, failed, n_points)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return Estimate(value, (float(lo), float(hi)), n_resamples, failed, n_points)


def paired_difference(a_SxW: np.ndarray, b_SxW: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                      relative: bool = True, level: float = 0.95) -> Estimate:
    """Loss of A minus loss of B (relative to B, in percent, by default), scored on the same windows: windows are
    resampled jointly (pairing cancels what the windows contain), seeds within each side."""
    a, b = np.atleast_2d(a_SxW), np.atleast_2d(b_SxW)
    stat = (lambda la, lb: 100 * (la / lb - 1)) if relative else (lambda la, lb: la - lb)
    value = float(stat(a.mean(), b.mean()))
    W = a.shape[1]
    if not n_resamples:
        return Estimate(value, None, 0, 0, W)

    def draw(rng: np.random.Generator) -> float:
        w = rng.integers(0, W, W)
        la = a[rng.integers(0, len(a), len(a))][:, w].mean()
        lb = b[rng.integers(0, len(b), len(b))][:, w].mean()
        return stat(la, lb)

    return percentile_estimate(value, draw, n_resamples, W, seed, level)


def paired_windows(a_WxT: np.ndarray, b_WxT: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], float],
                   n_resamples: int, seed: int = 0, level: float = 0.95) -> Estimate:
    """statistic(a, b) of two runs scored on the same windows (rows), windows resampled jointly (paired)."""
    value = float(statistic(a_WxT, b_WxT))
    W = len(a_WxT)
    if not n_resamples:
        return Estimate(value, None, 0, 0, 2)

    def draw(rng: np.random.Generator) -> float:
        w = rng.integers(0, W, W)
        return statistic(a_WxT[w], b_WxT[w])

    return percentile_estimate(value, draw, n_resamples, W, seed, level)


def log_slope(x: np.ndarray) -> Callable[[np.ndarray], float]:
    """The statistic of a pure power law L = (x_c / x)^alpha fitted by least squares in log space: alpha."""
    logx = np.log(np.asarray(x, float))

    def alpha(loss: np.ndarray) -> float:
        return float(-np.polyfit(logx, np.log(loss), 1)[0])

    return alpha
