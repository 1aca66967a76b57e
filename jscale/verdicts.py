"""Verdicts: every claim the report tests is decided here, by one rule, as supports, contradicts or inconclusive.

A claim is a *region* for an effect (an exponent near a published value, a difference above zero, a spread under a
threshold). With the effect's interval [lo, hi]:
- supports: the interval lies inside the region;
- contradicts: the interval lies outside it (no overlap);
- inconclusive: the interval straddles the region's edge, there is no interval (fewer than MIN_POINTS points,
  or too many failed bootstrap resamples), or the runs are not in the regime the claim is about.
So an effect counts only when its interval excludes the threshold, and no verdict can contradict its own interval.
"""

from __future__ import annotations

import dataclasses
import math

OUTCOMES = ("supports", "contradicts", "inconclusive")
MIN_POINTS = 5  # fewer points than this give a point estimate only, never an interval
MAX_FAILED_SHARE = 0.1  # an interval from a bootstrap whose resamples failed more often than this is not used


@dataclasses.dataclass(frozen=True)
class Region:
    """Where the effect must lie for the claim to hold: lo < effect < hi (either end may be infinite)."""

    lo: float = -math.inf
    hi: float = math.inf
    text: str = ""  # how the report states it, e.g. "> 0" or "within 0.02 of 0.076"
    direction_only: bool = False  # a sign, where the paper gives no scale-free number to test: said so in the report

    def __post_init__(self):
        if not self.lo < self.hi:
            raise ValueError(f"an empty region ({self.lo}, {self.hi})")

    @property
    def kind(self) -> str:
        """How much the region can say: quantitative, or direction only."""
        return "direction only" if self.direction_only else "quantitative"

    def sign(self) -> "Region":
        """This region, labelled as testing a direction only."""
        return dataclasses.replace(self, direction_only=True, text=f"{self.text} (direction only)")

    @classmethod
    def above(cls, threshold: float, text: str = "") -> "Region":
        return cls(threshold, math.inf, text or f"> {threshold:g}")

    @classmethod
    def below(cls, threshold: float, text: str = "") -> "Region":
        return cls(-math.inf, threshold, text or f"< {threshold:g}")

    @classmethod
    def near(cls, value: float, margin: float, text: str = "") -> "Region":
        return cls(value - margin, value + margin, text or f"within {margin:g} of {value:g}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    claim: str
    outcome: str  # one of OUTCOMES
    estimate: float | None
    interval: tuple[float, float] | None
    region: Region
    reason: str  # why this outcome: the rule's reading, or what kept it inconclusive

    def sentence(self) -> str:
        est = "" if self.estimate is None else f"{self.estimate:.4g}"
        ci = "no interval" if self.interval is None else f"95% CI {self.interval[0]:.4g} to {self.interval[1]:.4g}"
        return (f"{self.claim}: **{self.outcome}** (estimate {est or '-'}, {ci}; the claim needs "
                f"{self.region.text}; {self.reason}).")


def decide(claim: str, estimate: float | None, interval: tuple[float, float] | None, region: Region,
           n_points: int | None = None, failed: int = 0, resamples: int = 0,
           regime_problem: str | None = None) -> Verdict:
    """The one rule. regime_problem: why the runs are not in the regime the claim is about (None when they are)."""
    def verdict(outcome: str, reason: str, ci=interval) -> Verdict:
        return Verdict(claim, outcome, estimate, ci, region, reason)

    if regime_problem:
        return verdict("inconclusive", f"not in its regime: {regime_problem}")
    if n_points is not None and n_points < MIN_POINTS:
        return verdict("inconclusive", f"{n_points} points, fewer than {MIN_POINTS}: a point estimate only", None)
    if interval is None or not all(math.isfinite(x) for x in interval):
        return verdict("inconclusive", "no finite interval", None)
    if resamples and failed > MAX_FAILED_SHARE * resamples:
        return verdict("inconclusive", f"{failed} of {resamples} bootstrap resamples failed")
    lo, hi = sorted(interval)
    if region.lo < lo and hi < region.hi:
        return verdict("supports", "the interval lies inside the claimed region", (lo, hi))
    if hi <= region.lo or lo >= region.hi:
        return verdict("contradicts", "the interval lies outside the claimed region", (lo, hi))
    return verdict("inconclusive", "the interval straddles the claim's threshold", (lo, hi))
