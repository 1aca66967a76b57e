"""The one verdict rule and the hierarchical bootstrap: each outcome reachable, none contradicting its interval,
and intervals that cover a known truth at about the nominal rate."""

import math

import numpy as np
import pytest

from jscale import noise
from jscale.verdicts import Region, decide


@pytest.mark.parametrize("interval, outcome", [((0.5, 1.5), "supports"), ((-2.0, -0.5), "contradicts"),
                                               ((-0.5, 0.5), "inconclusive")])
def test_rule_takes_all_three_values_and_never_contradicts_its_interval(interval, outcome):
    v = decide("effect > 0", sum(interval) / 2, interval, Region.above(0.0), n_points=6)
    assert v.outcome == outcome
    lo, hi = interval
    if v.outcome == "supports":
        assert lo > 0
    if v.outcome == "contradicts":
        assert hi <= 0
    assert v.outcome in v.sentence()


def test_equivalence_regions_and_the_gates():
    near = Region.near(0.076, 0.02)
    assert decide("alpha", 0.08, (0.07, 0.09), near, n_points=8).outcome == "supports"
    assert decide("alpha", 0.2, (0.15, 0.25), near, n_points=8).outcome == "contradicts"
    assert decide("alpha", 0.09, (0.05, 0.12), near, n_points=8).outcome == "inconclusive"
    few = decide("alpha", 0.08, (0.07, 0.09), near, n_points=3)
    assert few.outcome == "inconclusive" and few.interval is None and "point estimate" in few.reason
    gated = decide("alpha", 0.08, (0.07, 0.09), near, n_points=8, regime_problem="not converged (2 tokens/param)")
    assert gated.outcome == "inconclusive" and "not converged" in gated.reason
    failing = decide("alpha", 0.08, (0.07, 0.09), near, n_points=8, failed=200, resamples=1000)
    assert failing.outcome == "inconclusive" and "200 of 1000" in failing.reason
    assert decide("alpha", 0.08, (math.nan, 0.09), near, n_points=8).outcome == "inconclusive"
    with pytest.raises(ValueError):
        Region(1.0, 1.0)


def _synthetic(rng, alpha, Ns, seeds, W, seed_sd, window_sd):
    """Per point an array (seeds, windows): the law, a seed offset per replica, and window effects shared by all
    runs (what the windows contain) plus per-run window noise."""
    shared = rng.normal(0, window_sd, W)
    return [(1e6 / N) ** alpha * (1 + rng.normal(0, seed_sd, (seeds, 1)) + shared
                                  + rng.normal(0, window_sd / 2, (seeds, W))) for N in Ns]


def test_hierarchical_bootstrap_covers_a_known_exponent_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    Ns = np.geomspace(1e4, 1e5, 6)
    covered, trials = 0, 60
    for t in range(trials):
        losses = _synthetic(rng, 0.08, Ns, seeds=3, W=64, seed_sd=0.01, window_sd=0.05)
        est = noise.hierarchical_bootstrap(losses, noise.log_slope(Ns), n_resamples=300, seed=t)
        covered += est.interval[0] <= 0.08 <= est.interval[1]
    assert 0.85 * trials <= covered <= trials  # nominal 95%: 57 of 60 expected


def test_few_points_give_no_interval_and_failures_are_counted():
    rng = np.random.default_rng(1)
    losses = _synthetic(rng, 0.08, [1e4, 1e5, 1e6], seeds=2, W=16, seed_sd=0.01, window_sd=0.05)
    est = noise.hierarchical_bootstrap(losses, noise.log_slope([1e4, 1e5, 1e6]), n_resamples=100)
    assert est.interval is None and est.n_points == 3
    Ns = np.geomspace(1e4, 1e5, 6)
    losses = _synthetic(rng, 0.08, Ns, seeds=2, W=16, seed_sd=0.01, window_sd=0.05)
    calls = {"n": 0}

    def flaky(loss):
        calls["n"] += 1
        return float("nan") if calls["n"] % 10 == 0 else noise.log_slope(Ns)(loss)

    est = noise.hierarchical_bootstrap(losses, flaky, n_resamples=200)
    assert est.failed == 20 and est.resamples == 200 and "20 of 200 resamples failed" in est.text()


def test_paired_difference_cancels_window_content():
    rng = np.random.default_rng(2)
    content = rng.normal(2.0, 0.5, 256)  # what each window holds dominates the loss
    a = content * 1.01 + rng.normal(0, 0.01, (2, 256))
    b = content + rng.normal(0, 0.01, (2, 256))
    est = noise.paired_difference(a, b, n_resamples=500)
    assert est.value == pytest.approx(1.0, abs=0.2) and est.interval[0] > 0  # a 1% effect, resolved
    unpaired = 100 * np.std([a[:, rng.integers(0, 256, 256)].mean() / b[:, rng.integers(0, 256, 256)].mean()
                             for _ in range(200)])
    assert unpaired > 3 * (est.interval[1] - est.interval[0]) / 4  # unpaired, the windows' noise swamps it
