"""The report's learning-curve sections (sample efficiency, critical batch size) and the generalisation section,
on sweep directories whose curves follow known laws: each verdict takes each of its three values."""

import sqlite3

import numpy as np
import pytest

from test_report import outcomes, synthetic_sweep, verdicts

STEPS = 400
TRAIN = {"batch_size": 4, "steps": STEPS, "warmup_steps": 4, "eval_every": 20, "checkpoint_every": 20}
EVAL_STEPS = [20, 30, 45, 70, 100, 150, 220, 300, 360]


def curve(loss_at, overfit=False):
    """curve_of for synthetic_sweep: loss_at(step) at the evaluation steps, relative to the final loss; an
    overfitting run's curve dips 3% (5 standard errors over its windows) below its final loss on the way."""
    def of(r):
        final = loss_at(r, STEPS)
        points = [(s, loss_at(r, s) / final) for s in EVAL_STEPS]
        if overfit:
            points[-1] = (EVAL_STEPS[-1], 0.97)
        return points
    return of


SAMPLE = {"name": "sample_efficiency", "analysis": "sample_efficiency", "seeds": 2,
          "base": {"model": {"n_ctx": 32, "n_layer": 2}, "train": TRAIN},
          "axis": [{"zip": {"model.d_model": [16, 24, 32, 48, 64], "model.n_heads": [2, 2, 2, 2, 2]}}]}


@pytest.mark.parametrize("exponent, overfit, outcome", [(0.3, False, "supports"), (-0.1, False, "contradicts"),
                                                         (0.3, True, "inconclusive")])
def test_sample_efficiency_verdict_takes_all_three_values(tmp_path, exponent, overfit, outcome):
    # L(N, S) = 2 (1e4 / N)^exponent + 8 / S^0.5: bigger models lower at every step when exponent > 0.
    loss_at = lambda r, s: 2 * (1e4 / r["N"]) ** exponent + 8 / s ** 0.5
    synthetic_sweep(tmp_path / "se", SAMPLE, lambda r: loss_at(r, STEPS), curve_of=curve(loss_at, overfit))
    sec = verdicts(tmp_path / "se", tmp_path)["sample_efficiency"]
    assert outcomes(sec, "fewer steps") == [outcome], sec.verdicts
    if outcome == "inconclusive":
        assert "overfit" in sec.decisions[0].reason
    else:
        assert any(h[0] == "N" and h[1].startswith("steps to L") for h, _ in sec.tables)
    if outcome == "supports":  # the curves are Eq. 1.6's own form: its fit predicts the slope at every target
        assert outcomes(sec, "Eq. 1.6 predicts") == ["supports"], sec.verdicts
        assert any(h[1] == "measured d log S / d log N" for h, _ in sec.tables)


def test_eq_1_6s_prediction_of_the_sample_efficiency_slope_can_fail(tmp_path):
    """Curves whose step term grows with N (larger models start slower per step), which Eq. 1.6 cannot express:
    the measured slope is far from the one its fit predicts."""
    loss_at = lambda r, s: 2 * (1e4 / r["N"]) ** 0.3 + 8 / s ** 0.5 * (r["N"] / 1e4) ** 0.3
    synthetic_sweep(tmp_path / "se", SAMPLE, lambda r: loss_at(r, STEPS), curve_of=curve(loss_at, False))
    sec = verdicts(tmp_path / "se", tmp_path)["sample_efficiency"]
    assert outcomes(sec, "Eq. 1.6 predicts") == ["contradicts"], sec.verdicts


def batch_curve(scale, power):
    """Eq. 5.1's curves: at batch B (tokens) a run needs S = S_min(L) (1 + B_crit(L) / B) steps to reach L, with
    S_min(L) = (10 / (L - 2))^2 and B_crit(L) = scale L^power tokens (power < 0: B_crit grows as L falls; S falls
    with L for any power < 2, so each curve is one loss per step)."""
    def loss_at(r, s):
        B = r["batch_size"] * r["n_ctx"]
        L = np.linspace(2.05, 12, 20000)
        S = (10 / (L - 2)) ** 2 * (1 + scale * L ** power / B)
        return float(np.interp(s, S[::-1], L[::-1]))
    return loss_at


BATCH = {"name": "critical_batch", "analysis": "critical_batch", "seeds": 2,
         "base": {"model": {"n_ctx": 32, "n_layer": 2, "d_model": 32, "n_heads": 2}, "train": TRAIN},
         "axis": [{"key": "train.batch_size", "values": [1, 2, 4, 8, 16, 32]}]}


@pytest.mark.parametrize("scale, power, overfit, outcome", [(300, -3.0, False, "supports"),
                                                             (30, 1.5, False, "contradicts"),
                                                             (300, -3.0, True, "inconclusive")])
def test_critical_batch_verdict_takes_all_three_values(tmp_path, scale, power, overfit, outcome):
    loss_at = batch_curve(scale, power)
    synthetic_sweep(tmp_path / "cb", BATCH, lambda r: loss_at(r, STEPS), curve_of=curve(loss_at, overfit))
    sec = verdicts(tmp_path / "cb", tmp_path)["critical_batch"]
    assert outcomes(sec, "critical batch size grows") == [outcome], sec.verdicts
    if outcome == "supports":  # B_crit recovered from the curves: 300 L^-3 tokens at each target
        header, rows = next(t for t in sec.tables if t[0][0] == "loss target")
        for row in rows:
            L, bcrit = float(row[0]), float(row[3].replace(",", ""))
            assert bcrit == pytest.approx(300 * L ** -3, rel=0.1)


@pytest.mark.parametrize("power, outcome", [(-4.8, "supports"), (-15.0, "contradicts"), (-1.0, "contradicts")])
def test_the_critical_batch_exponent_is_tested_against_kaplans_number(tmp_path, power, outcome):
    """B_crit = scale L^power planted: -4.8 is Kaplan's -1/alpha_B, inside the band; three times steeper and a
    fifth as steep are both outside it (a sign test would pass all three)."""
    scale = 300 * 2.5 ** (3 - power)  # B_crit of the same size mid-range (L ~ 2.5) whatever the power
    loss_at = batch_curve(scale, power)
    synthetic_sweep(tmp_path / "cb", BATCH, lambda r: loss_at(r, STEPS), curve_of=curve(loss_at, False))
    sec = verdicts(tmp_path / "cb", tmp_path)["critical_batch"]
    assert outcomes(sec, "Kaplan's -1/alpha_B") == [outcome], sec.verdicts
    assert outcomes(sec, "critical batch size grows") == ["supports"]
    assert "(direction only)" in next(v for v in sec.verdicts if "critical batch size grows" in v)


SIZES = {"name": "size", "base": {"model": {"n_ctx": 32}, "train": {**TRAIN, "steps": 40}},
         "axis": [{"zip": {"model.d_model": [16, 24, 32, 48, 64, 96], "model.n_heads": [2, 2, 2, 2, 2, 2]}}]}


@pytest.mark.parametrize("slope, outcome", [(1.0, "supports"), (2.0, "contradicts"), (1.25, "inconclusive")])
def test_generalisation_verdict_takes_all_three_values(tmp_path, slope, outcome):
    """Both of the built-in corpus's held-out distributions (prose and notes, each at most half one file), scored
    beside test at every evaluation; judged on the final evaluations only."""
    loss = lambda r: 3.0 * (1e4 / r["N"]) ** 0.2
    synthetic_sweep(tmp_path / "size", SIZES, loss)
    rng = np.random.default_rng(1)
    with sqlite3.connect(tmp_path / "size" / "results.sqlite") as c:
        rows = c.execute("SELECT run_id, step, loss, se FROM evals WHERE split = 'test'").fetchall()
        se = 0.02 if outcome == "inconclusive" else 0.002
        for other, offset in (("prose", 0.5), ("notes", 0.3)):
            # earlier evaluations off the line: the verdict must not read them
            c.executemany(f"INSERT INTO evals VALUES (?, ?, '{other}', ?, ?, ?, '[]')",
                          [(r, s, offset + slope * (loss - 2.5) + 2.5 + rng.normal(0, se) + (0 if s == 40 else 3.0),
                            se, 1.0) for r, s, loss, _ in rows])
    sec = verdicts(tmp_path / "size", tmp_path)["generalisation"]
    assert outcomes(sec, "slope near 1") == [outcome] * 2, sec.verdicts


def test_generalisation_needs_two_distributions_of_at_most_half_one_file(tmp_path):
    loss = lambda r: 3.0 * (1e4 / r["N"]) ** 0.2
    synthetic_sweep(tmp_path / "size", SIZES, loss)
    with sqlite3.connect(tmp_path / "size" / "results.sqlite") as c:
        rows = c.execute("SELECT run_id, step, loss, se FROM evals WHERE split = 'test'").fetchall()
        c.executemany("INSERT INTO evals VALUES (?, ?, 'prose', ?, ?, ?, '[]')",
                      [(r, s, loss + 0.5, 0.002, 1.0) for r, s, loss, _ in rows])
    sec = verdicts(tmp_path / "size", tmp_path)["generalisation"]
    assert outcomes(sec, "slope near 1") == ["inconclusive"]
    assert "the claim needs two" in sec.decisions[0].reason


def test_a_batch_size_whose_curve_shares_no_losses_with_the_others_is_left_out():
    from jscale.report.critical_batch import overlapping_batches

    steps = np.array([10.0, 20, 40, 80])
    curves = {"b1": (steps, np.array([3.0, 2.6, 2.3, 2.1])), "b2": (steps, np.array([3.1, 2.7, 2.4, 2.2])),
              "b3": (steps, np.array([3.2, 2.8, 2.5, 2.3])), "b4": (steps, np.array([5.0, 4.0, 3.6, 3.4]))}
    batches, groups, targets = overlapping_batches([1, 2, 4, 8], [["b1"], ["b2"], ["b3"], ["b4"]], curves, {})
    assert batches == [1, 2, 4] and groups == [["b1"], ["b2"], ["b3"]]
    assert len(targets) == 5 and targets.min() > 2.3 and targets.max() < 3.0  # within every kept curve's range
    _, _, none = overlapping_batches([1, 8], [["b1"], ["b4"]], curves, {})
    assert len(none) == 0
    # Targets start after warmup: b1 warms up for 15 steps, so its curve counts from step 20 (loss 2.6).
    _, _, after = overlapping_batches([1, 2, 4], [["b1"], ["b2"], ["b3"]], curves, {"b1": 15})
    assert after.max() < 2.6 and after.min() > 2.3


DATA_CURVES = {"name": "data", "base": {"model": {"n_ctx": 32}, "train": TRAIN},
               "axis": [{"zip": {"model.d_model": [16, 32, 64], "model.n_heads": [2, 2, 4]}},
                        {"generator": "data_sizes", "values": [3000, 10000, 30000, 100000]}]}
DATA_EVALS = [6, 10, 16, 24, 32, 48, 64, 80, 96, 128, 160, 200, 240, 280, 320, 360]


def stopping_curves(mode):
    """Validation curves on L(N, S) = (1e9/N)^0.08 + (50/S)^0.5 (Eq. 1.6) until a run has seen its D tokens once;
    at the next evaluation a run that stops ('slow': barely below the evaluation before, so it stops later than
    Eq. 5.7's bound; 'dip': half-way down to L(N, inf), so it stops sooner than the bound), then validation rises
    at every later evaluation. 'few': only the smallest D stops (slow); the rest follow the law."""
    law = lambda r, s: (1e9 / r["N"]) ** 0.08 + (50 / s) ** 0.5

    def losses(r):
        s_D = r["D"] / (r["batch_size"] * r["n_ctx"])  # the step at which the data starts to repeat
        steps = DATA_EVALS + [r["steps"]]
        stop = next((i for i, s in enumerate(steps[:-4]) if s > s_D), None)
        if stop is None or (mode == "few" and r["D"] > 3000):
            return [(s, law(r, s)) for s in steps]
        at_stop = (law(r, steps[stop - 1]) * 0.999 if mode in ("slow", "few")
                   else (1e9 / r["N"]) ** 0.08 + 0.5 * (50 / steps[stop]) ** 0.5)
        return ([(s, law(r, s)) for s in steps[:stop]] + [(steps[stop], at_stop)]
                + [(s, at_stop * (1 + 0.01 * j)) for j, s in enumerate(steps[stop + 1:], 1)])

    return (lambda r: losses(r)[-1][1]), (lambda r: [(s, v / losses(r)[-1][1]) for s, v in losses(r)[:-1]])


@pytest.mark.parametrize("mode", ["slow", "dip", "few"])
def test_stopping_step_against_eq_5_7_is_shown_not_judged(tmp_path, mode):
    """The ratio is measured (here on planted curves, one of them a dip no real run can make: a repeated-data curve
    cannot fall below the fresh-data curve it starts on), but no verdict is given: on real runs it exceeds 1 by
    construction, so no region of it can fail."""
    final, curve_of = stopping_curves(mode)
    synthetic_sweep(tmp_path / "data", DATA_CURVES, final, curve_of=curve_of)
    sec = verdicts(tmp_path / "data", tmp_path)["data"]
    assert outcomes(sec, "Eq. 5.7") == [], sec.verdicts
    assert any("shown, not judged" in n and "Eq. 5.7" in n for n in sec.notes)
    ratio = next(n for n in sec.numbers if n[0].startswith("Eq. 5.7"))
    if mode == "dip":  # the bound is S_c / (gap / 2)^(1 / 0.5) = 4 x the stopping step
        assert float(ratio[1]) == pytest.approx(0.25, rel=0.1)
    if mode == "slow":  # stopped one evaluation after the law's point: 24/16, 80/64, 240/200
        assert float(ratio[1]) == pytest.approx((1.5 * 1.25 * 1.2) ** (1 / 3), rel=0.1)


def test_evaluation_error_shared_by_every_evaluation_cancels_between_curves_on_the_same_windows():
    """curve_bootstrap's rho: with rho = 1 the redrawn error is one shift shared by every evaluation, which moves two
    identical curves' crossings together (their ratio stays 1); independent errors (rho = 0) do not. And
    window_correlation is the mean correlation between runs' per-window losses."""
    from types import SimpleNamespace

    from jscale.report.common import crossing_step, curve_bootstrap, window_correlation

    steps = np.arange(1.0, 201.0)
    curve = (steps, 3.0 * steps ** -0.1, np.full(200, 0.02))
    curves = {"a": curve, "b": curve}
    log_ratio = lambda picked: np.log(crossing_step(*picked[0][0], 2.0) / crossing_step(*picked[1][0], 2.0))
    shared = curve_bootstrap([["a"], ["b"]], curves, log_ratio, 200, rho=1.0)
    independent = curve_bootstrap([["a"], ["b"]], curves, log_ratio, 200, rho=0.0)
    assert shared.value == 0.0 and shared.interval == pytest.approx((0.0, 0.0), abs=1e-9)
    assert independent.interval[1] - independent.interval[0] > 0.1

    rng = np.random.default_rng(0)
    content = rng.normal(0, 1, 500)
    windows = {r: 3 + content + rng.normal(0, s, 500) for r, s in (("x", 0.3), ("y", 0.5), ("z", 1.0))}
    C = np.corrcoef(np.stack(list(windows.values())))
    expect = (C[0, 1] + C[0, 2] + C[1, 2]) / 3
    assert window_correlation(SimpleNamespace(windows=windows), ["x", "y", "z"]) == pytest.approx(expect)
    assert window_correlation(SimpleNamespace(windows=windows), ["x"]) == 0.0
