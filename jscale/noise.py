"""Intervals that cover: every noise a measured point carries, and the points' scatter about a fitted law.

A measured point (a model size, a shape, a family) is k seed replicas, each scored on the same W evaluation windows.
Its loss is the mean over seeds of the mean over windows. What makes it differ from the point's true loss:

- **Windows.** Which text was drawn. Windows of one document are correlated (lag-1 correlation 0.39 on the built-in
  corpus, so block standard errors are 2-3x the i.i.d. ones): a resample draws whole *documents* (`blocks`, the
  document each window comes from) with replacement, the same draw for every point, so comparisons stay paired.
- **Seeds.** Initialisation and data order. With k = 2-3 replicas a percentile bootstrap over seeds keeps only
  (k - 1) / k of their variance and knows nothing of its own uncertainty; instead the between-seed variance
  (relative to the loss) is pooled over the points, with sum(k - 1) degrees of freedom, and each resample draws a
  variance from its scaled chi-square and a normal seed effect per point: a Student-t predictive with the pooled
  degrees of freedom. Points with one seed take the pooled variance; with no replicas at all there is no seed
  component and the Estimate says so.
- **Tuning.** The learning rate was chosen on noisy pilots. `lr_penalties` redraws the pilot's choice on resampled
  pilot windows; a point trained at lr* while the optimum is at lr_opt is worse by a (log lr* - log lr_opt)^2 (the
  pilot parabola's curvature), so each resample subtracts the penalty of its own choice: the true tuned loss is at
  most the measured one.
- **Scatter about a law.** A fit through points (alpha_N, the IsoFLOP exponent) also misses by how far the points
  lie off the law (shape, depth, schedule): `ols_interval`, a t-interval from the residuals of the fit in log space.
  An Estimate of a fit carries both the measurement interval and the scatter interval, and its `interval` is the
  wider of the two.

Fewer than verdicts.MIN_POINTS points give no interval; failed resamples are counted, and an interval from fewer
than `min_share` successful resamples is refused (the estimate stays). tests/test_noise.py checks on planted truth
(correlated windows, seed variance, scatter about a known law, noisy learning-rate choice) that the 95% intervals of
alpha_N, a paired difference and the IsoFLOP exponent cover the truth.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from jscale.laws.fitted import ols_slope_interval
from jscale.verdicts import MIN_POINTS

LEVEL = 0.95
MIN_SHARE = 0.9  # an interval needs at least this share of its resamples to succeed


@dataclasses.dataclass(frozen=True)
class Estimate:
    value: float
    interval: tuple[float, float] | None  # None: too few points, or too many resamples failed
    resamples: int
    failed: int
    n_points: int
    components: dict[str, tuple[float, float]] = dataclasses.field(default_factory=dict)  # what the interval holds
    note: str = ""  # e.g. "one seed per point: seed noise not measured"

    def text(self, fmt: str = ".3f") -> str:
        ci = "no interval" if self.interval is None else f"{self.interval[0]:{fmt}} to {self.interval[1]:{fmt}}"
        failed = f", {self.failed} of {self.resamples} resamples failed" if self.failed else ""
        return f"{self.value:{fmt}} ({ci}{failed})"

    def components_text(self, fmt: str = ".3g") -> str:
        """The intervals the reported one was taken from: "measurement 0.02 to 0.03; scatter 0.01 to 0.05"."""
        parts = [f"{k} {lo:{fmt}} to {hi:{fmt}}" for k, (lo, hi) in self.components.items()]
        return "; ".join(parts + ([self.note] if self.note else []))


def point_losses(losses_SxW: list[np.ndarray]) -> np.ndarray:
    """Each point's loss: the mean over its seeds of the mean over windows."""
    return np.array([np.mean(x) for x in losses_SxW])


# ---------------------------------------------------------------------------------------------------------------
# The parts of a resample.


class WindowBlocks:
    """Resampling windows by the document (block) they come from: a resample draws as many blocks as there are,
    with replacement, and every window of a drawn block. blocks=None: each window is its own block (i.i.d.)."""

    def __init__(self, blocks: np.ndarray | None, n_windows: int):
        blocks = np.arange(n_windows) if blocks is None else np.asarray(blocks)
        if len(blocks) != n_windows:
            raise ValueError(f"{len(blocks)} block ids for {n_windows} windows")
        _, self.codes = np.unique(blocks, return_inverse=True)
        self.n = int(self.codes.max()) + 1 if n_windows else 0
        self.counts = np.bincount(self.codes, minlength=self.n).astype(float)

    def sums(self, x_PxW: np.ndarray) -> np.ndarray:
        """Per-block sums of each row, (P, n_blocks)."""
        x = np.atleast_2d(x_PxW)
        out = np.zeros((len(x), self.n))
        for p in range(len(x)):
            out[p] = np.bincount(self.codes, weights=x[p], minlength=self.n)
        return out

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(0, self.n, (n, self.n))

    def means(self, sums_PxB: np.ndarray, draws_NxB: np.ndarray) -> np.ndarray:
        """Each row's mean over the windows of each resample's blocks, (N, P)."""
        total = self.counts[draws_NxB].sum(axis=1)  # windows per resample, (N,)
        return np.stack([sums_PxB[:, d].sum(axis=1) for d in draws_NxB]) / total[:, None]

    def standard_error(self, x_W: np.ndarray) -> float:
        """The standard error of a mean over these windows with blocks resampled (analytic, for one run)."""
        sums = self.sums(x_W)[0]
        mean = x_W.mean()
        resid = sums - mean * self.counts  # each block's deviation
        return float(np.sqrt(self.n / max(self.n - 1, 1) * np.sum(resid ** 2)) / self.counts.sum())


def pooled_seed_variance(losses: Sequence[np.ndarray], blocks: np.ndarray | None = None) -> tuple[float, int]:
    """The between-seed variance of a point's loss relative to its mean, pooled over the points with replicas, and
    its degrees of freedom, sum(k - 1). (nan, 0) when no point has two seeds.

    Each seed's mean over the windows also carries that seed's own per-window idiosyncrasies (the seed x window
    interaction), which the window resampling of the seed-averaged losses already counts; their share, the block
    variance of each seed's deviation from the seed mean, is taken out here so that it is not counted twice."""
    ss, df = 0.0, 0
    for x in losses:
        x = np.atleast_2d(np.asarray(x, float))
        k = len(x)
        if k < 2:
            continue
        wb = WindowBlocks(blocks, x.shape[1])
        dev = x - x.mean(axis=0)
        interaction = k / (k - 1) * np.mean([wb.standard_error(d) ** 2 for d in dev])
        between = np.var(x.mean(axis=1), ddof=1)
        ss += max(between - interaction, 0.0) / x.mean() ** 2 * (k - 1)
        df += k - 1
    return (ss / df if df else math.nan), df


def seed_effects(rng: np.random.Generator, n: int, values: np.ndarray, seeds: np.ndarray, pooled: tuple[float, int]
                 ) -> np.ndarray:
    """n draws of each point's seed effect on its mean loss, (n, P): a variance from the pooled estimate's scaled
    chi-square (its own uncertainty), then a normal effect of that variance over the point's k seeds."""
    var, df = pooled
    if not df or not np.isfinite(var):
        return np.zeros((n, len(values)))
    scale = df / rng.chisquare(df, n)  # (n,): the t-distribution's mixing
    sd = np.sqrt(var * scale[:, None] / np.asarray(seeds, float)[None, :]) * np.asarray(values)[None, :]
    return rng.normal(size=(n, len(values))) * sd


def lr_penalties(pilot_losses_GxW: np.ndarray, lrs: Sequence[float], trained_lr: float, blocks: np.ndarray | None,
                 n: int, rng: np.random.Generator) -> np.ndarray | None:
    """n draws of how much worse a point is than at its best learning rate, from its pilots (G learning rates, each
    scored on the same W validation windows): the vertex of the pilot parabola on resampled windows is where the
    optimum may be, and the penalty is the pilot parabola's curvature times (log trained_lr - log vertex)^2. None
    where the pilots do not bracket an optimum (no parabola to read)."""
    order = np.argsort(lrs)
    lrs = np.asarray(lrs, float)[order]
    x = np.asarray(pilot_losses_GxW, float)[order]
    means = x.mean(axis=1)
    best = int(np.argmin(means))
    if not 0 < best < len(lrs) - 1 or not np.all(np.isfinite(means[best - 1:best + 2])):
        return None
    logs = np.log(lrs)
    curvature = _curvature(logs[best - 1:best + 2], means[best - 1:best + 2])
    if curvature <= 0:
        return None
    wb = WindowBlocks(blocks, x.shape[1])
    resampled = wb.means(wb.sums(x), wb.draw(rng, n))  # (n, G)
    out = np.empty(n)
    for i, m in enumerate(resampled):
        b = int(np.argmin(m))
        b = min(max(b, 1), len(lrs) - 2)  # a resample whose best is an edge reads the parabola next to it
        v = math.log(lr_vertex(list(lrs[b - 1:b + 2]), list(m[b - 1:b + 2])))
        out[i] = curvature * (math.log(trained_lr) - v) ** 2
    return out


def lr_vertex(lrs: Sequence[float], losses: Sequence[float]) -> float:
    """The learning rate at the vertex of the parabola in log(lr) through three points whose middle one is lowest
    (clipped to the outer two); the middle one where a neighbour diverged (infinite loss) or the three are not
    convex. (jscale.tuning's choice, and its resampling here.)"""
    if not all(math.isfinite(x) for x in losses):
        return lrs[1]
    x = [math.log(v) for v in lrs]
    # divided differences: L = c0 + c1 (x - x0) + c2 (x - x0)(x - x1)
    d01, d12 = (losses[1] - losses[0]) / (x[1] - x[0]), (losses[2] - losses[1]) / (x[2] - x[1])
    c2 = (d12 - d01) / (x[2] - x[0])
    if c2 <= 0:  # not convex (a tie): the lowest point
        return lrs[1]
    vertex = (x[0] + x[1]) / 2 - d01 / (2 * c2)
    return float(math.exp(min(max(vertex, x[0]), x[2])))


def _curvature(x: np.ndarray, y: np.ndarray) -> float:
    """The quadratic coefficient of the parabola through three points."""
    d01, d12 = (y[1] - y[0]) / (x[1] - x[0]), (y[2] - y[1]) / (x[2] - x[1])
    return float((d12 - d01) / (x[2] - x[0]))


# ---------------------------------------------------------------------------------------------------------------
# Estimates.


def replicates(losses: Sequence[np.ndarray], n: int, rng: np.random.Generator, blocks: np.ndarray | None = None,
               pooled: tuple[float, int] | None = None, penalties: Sequence[np.ndarray | None] | None = None
               ) -> np.ndarray:
    """n resampled copies of every point's loss, (n, P): windows drawn by block (one draw for all points), a seed
    effect per point (pooled variance, t-like), minus a learning-rate penalty per point where given."""
    losses = [np.atleast_2d(np.asarray(x, float)) for x in losses]
    W = {x.shape[1] for x in losses}
    if len(W) != 1:
        raise ValueError(f"points scored on different windows (W = {sorted(W)}); bootstrap them separately")
    W = W.pop()
    values = point_losses(losses)
    wb = WindowBlocks(blocks, W)
    sums = wb.sums(np.stack([x.mean(axis=0) for x in losses]))  # each point's seed-mean per window, by block
    out = np.empty((n, len(losses)))
    for lo in range(0, n, 256):  # in chunks: (chunk, P, blocks) stays small
        k = min(256, n - lo)
        out[lo:lo + k] = wb.means(sums, wb.draw(rng, k))
    pooled = pooled_seed_variance(losses, blocks) if pooled is None else pooled
    out += seed_effects(rng, n, values, np.array([len(x) for x in losses]), pooled)
    for p, pen in enumerate(penalties or []):
        if pen is not None:
            out[:, p] -= np.asarray(pen)[:n]
    return out


def seed_note(losses: Sequence[np.ndarray], pooled: tuple[float, int] | None = None) -> str:
    _, df = pooled_seed_variance(losses) if pooled is None else pooled
    return "" if df else "one seed per point: seed noise not measured"


def hierarchical_bootstrap(losses: list[np.ndarray], statistic: Callable[[np.ndarray], float],
                           n_resamples: int = 1000, seed: int = 0, level: float = LEVEL,
                           min_points: int = MIN_POINTS, blocks: np.ndarray | None = None,
                           pooled: tuple[float, int] | None = None,
                           penalties: Sequence[np.ndarray | None] | None = None,
                           scatter: Callable[[np.ndarray], tuple[float, float] | None] | None = None) -> Estimate:
    """statistic(point losses) with its interval: the measurement interval from `replicates` (windows by block,
    seeds pooled, learning-rate penalties), and where `scatter` is given (a fit through the points) the wider of
    that and scatter(point losses), the interval from the points' residuals about the fit.

    losses: per point, an array (seeds, windows) of per-window losses; every point is scored on the same windows
    (same W, same order). blocks: the document of each window (None: windows independent)."""
    losses = [np.atleast_2d(np.asarray(x, float)) for x in losses]
    values = point_losses(losses)
    value = float(statistic(values))
    if len(losses) < min_points or n_resamples == 0:
        return Estimate(value, None, 0, 0, len(losses))
    rng = np.random.default_rng(seed)
    reps = replicates(losses, n_resamples, rng, blocks, pooled, penalties)
    measured = _percentiles(value, (statistic(r) for r in reps), n_resamples, len(losses), level)
    return with_scatter(measured, None if scatter is None else scatter(values), seed_note(losses, pooled))


def with_scatter(measured: Estimate, scatter: tuple[float, float] | None, note: str = "") -> Estimate:
    """The Estimate whose interval is the wider of the measurement interval and the scatter interval, both kept."""
    components = {} if measured.interval is None else {"measurement": measured.interval}
    if scatter is not None and all(np.isfinite(scatter)):
        components["scatter"] = (float(scatter[0]), float(scatter[1]))
    interval = measured.interval
    if measured.interval is not None and "scatter" in components:
        interval = max(components.values(), key=lambda c: c[1] - c[0])
    return dataclasses.replace(measured, interval=interval, components=components, note=note or measured.note)


def ols_interval(x: np.ndarray, y: np.ndarray, level: float = LEVEL) -> tuple[float, float] | None:
    """The t-interval of the slope of y on x by least squares, from the residuals (jscale.laws' own)."""
    return ols_slope_interval(x, y, level)


def power_law_scatter(x: np.ndarray, level: float = LEVEL) -> Callable[[np.ndarray], tuple[float, float] | None]:
    """The scatter interval of alpha in L = (x_c / x)^alpha, from the points' residuals in log space."""
    logx = np.log(np.asarray(x, float))

    def interval(loss: np.ndarray) -> tuple[float, float] | None:
        ci = ols_interval(logx, np.log(loss), level)
        return None if ci is None else (-ci[1], -ci[0])

    return interval


def _percentiles(value: float, draws, n_resamples: int, n_points: int, level: float = LEVEL,
                 min_share: float = MIN_SHARE) -> Estimate:
    kept, failed = [], 0
    for d in draws:
        try:
            v = float(d)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError):
            v = math.nan
        if np.isfinite(v):
            kept.append(v)
        else:
            failed += 1
    if not kept or len(kept) < min_share * n_resamples:
        return Estimate(value, None, n_resamples, failed, n_points)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(kept, [alpha, 1 - alpha])
    return Estimate(value, (float(lo), float(hi)), n_resamples, failed, n_points)


def percentile_estimate(value: float, draw: Callable[[np.random.Generator], float], n_resamples: int,
                        n_points: int, seed: int = 0, level: float = LEVEL, min_share: float = MIN_SHARE,
                        errors: tuple[type[BaseException], ...] = ()) -> Estimate:
    """value with a percentile interval over n_resamples calls of draw(rng). A draw that raises (a statistic that
    cannot be computed on that resample: ValueError, ArithmeticError, LinAlgError or one of `errors`) or is not
    finite is counted as failed; fewer than min_share of the resamples succeeding gives no interval."""
    rng = np.random.default_rng(seed)

    def draws():
        for _ in range(n_resamples):
            try:
                yield draw(rng)
            except (ValueError, ArithmeticError, np.linalg.LinAlgError, *errors):
                yield math.nan

    return _percentiles(value, draws(), n_resamples, n_points, level, min_share)


def paired_difference(a_SxW: np.ndarray, b_SxW: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                      relative: bool = True, level: float = LEVEL, blocks: np.ndarray | None = None,
                      pooled: tuple[float, int] | None = None,
                      penalties: tuple[np.ndarray | None, np.ndarray | None] | None = None) -> Estimate:
    """Loss of A minus loss of B (relative to B, in percent, by default), scored on the same windows: windows are
    resampled jointly by block (pairing cancels what the windows contain), seed effects drawn per side from the
    pooled seed variance (of these two points, or `pooled` from the whole experiment), learning-rate penalties
    per side where given."""
    a, b = np.atleast_2d(a_SxW).astype(float), np.atleast_2d(b_SxW).astype(float)
    stat = (lambda la, lb: 100 * (la / lb - 1)) if relative else (lambda la, lb: la - lb)
    value = float(stat(a.mean(), b.mean()))
    W = a.shape[1]  # (a comparison, not a fit: its "points" are the windows, as the verdict rule counts them)
    if not n_resamples:
        return Estimate(value, None, 0, 0, W)
    rng = np.random.default_rng(seed)
    reps = replicates([a, b], n_resamples, rng, blocks, pooled, penalties)
    out = _percentiles(value, stat(reps[:, 0], reps[:, 1]), n_resamples, W, level)
    return dataclasses.replace(out, components={} if out.interval is None else {"measurement": out.interval},
                               note=seed_note([a, b], pooled))


def paired_windows(a_WxT: np.ndarray, b_WxT: np.ndarray, statistic: Callable[[np.ndarray, np.ndarray], float],
                   n_resamples: int, seed: int = 0, level: float = LEVEL, blocks: np.ndarray | None = None
                   ) -> Estimate:
    """statistic(a, b) of two runs scored on the same windows (rows), windows resampled jointly by block."""
    value = float(statistic(a_WxT, b_WxT))
    W = len(a_WxT)
    if not n_resamples:
        return Estimate(value, None, 0, 0, W)
    wb = WindowBlocks(blocks, W)
    members = [np.flatnonzero(wb.codes == k) for k in range(wb.n)]

    def draw(rng: np.random.Generator) -> float:
        w = np.concatenate([members[k] for k in rng.integers(0, wb.n, wb.n)])
        return statistic(a_WxT[w], b_WxT[w])

    return percentile_estimate(value, draw, n_resamples, W, seed, level)


def log_slope(x: np.ndarray) -> Callable[[np.ndarray], float]:
    """The statistic of a pure power law L = (x_c / x)^alpha fitted by least squares in log space: alpha."""
    logx = np.log(np.asarray(x, float))

    def alpha(loss: np.ndarray) -> float:
        return float(-np.polyfit(logx, np.log(loss), 1)[0])

    return alpha


@dataclasses.dataclass(frozen=True)
class EvalSize:
    """How many windows an evaluation set needs for a standard error (jscale.config.DataConfig.eval_se)."""
    windows: int  # what to score (within [n_min, n_max])
    se: float  # the standard error of a paired difference predicted at that many windows (nats)
    floor: float  # what no number of windows of these documents gets below (the between-document part)
    rho: float  # the correlation of two windows' differences within one document
    sd: float  # the per-window spread of the differences
    attainable: bool  # the target is reachable within n_max

    def text(self, target: float) -> str:
        what = (f"{self.windows:,} windows give a paired standard error of {self.se:.2g} nats (target {target:.2g})"
                if self.attainable else f"a paired standard error of {target:.2g} nats is out of reach: "
                f"{self.windows:,} windows (the most allowed) give {self.se:.2g}")
        return (f"{what}; per-window spread {self.sd:.3g}, within-document correlation {self.rho:.2f}, "
                f"between-document floor {self.floor:.2g}")


def windows_for_se(diffs_W: np.ndarray, blocks_W: np.ndarray | None, target: float, n_max: int,
                   n_min: int = 64) -> EvalSize:
    """The windows an evaluation needs so that the mean of a paired difference (two runs scored on the same windows)
    has standard error `target`, from a sample of such differences (a point's pilots, scored on fewer windows).

    Windows of one document are correlated (intra-class correlation rho), so with n windows spread over B documents
    the variance of the mean is sd^2 (1 - rho) / n + sd^2 rho / min(n, B): more windows shrink only the first part.
    rho comes from the sample's design effect (its document-clustered variance against the i.i.d. one, with m0
    windows per document: deff = 1 + (m0 - 1) rho); B is the number of documents the sample drew from."""
    x = np.asarray(diffs_W, np.float64)
    W = len(x)
    if W < 2:
        raise ValueError("windows_for_se: needs at least two windows")
    sd = float(x.std(ddof=1))
    rho, B = 0.0, W
    if blocks_W is not None and len(blocks_W) == W:
        _, inv = np.unique(blocks_W, return_inverse=True)
        B = int(inv.max()) + 1
        if 1 < B < W and sd > 0:
            sums = np.bincount(inv, weights=x - x.mean())
            deff = float((sums ** 2).sum() * B / (B - 1)) / (sd ** 2 * W)
            rho = float(np.clip((deff - 1) / (W / B - 1), 0.0, 1.0))
    var = sd ** 2

    def se_at(n: int) -> float:
        return math.sqrt(var * (1 - rho) / n + var * rho / min(n, B))

    floor = math.sqrt(var * rho / B)
    lo, hi = max(1, n_min), max(1, n_max, n_min)
    if var == 0:
        n = lo
    elif var / target ** 2 <= B:  # fewer windows than documents: each window from its own document
        n = math.ceil(var / target ** 2)
    elif target > floor:
        n = math.ceil(var * (1 - rho) / (target ** 2 - floor ** 2))
    else:
        n = hi
    n = min(max(n, lo), hi)
    return EvalSize(n, se_at(n), floor, rho, sd, se_at(n) <= target * (1 + 1e-9))
