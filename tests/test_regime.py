"""Regime checks on real runs built to be each case, and n-gram baselines against a direct count."""

import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from jscale import grid, ngram, regime, results, sweep

TRAIN = {"batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "eval_every": 20, "schedule": "wsd", "anneal_branches": 1}


def test_runs_built_to_be_each_regime_are_flagged_so(tmp_path, text_corpus, xla_optimized):
    """Convergence is measured by a cooldown branch at half the run. A model trained long enough on text of random
    words from a 27-word list (whose loss cannot fall below the entropy of the word choice) passes the gate: its
    annealed loss no longer improves over its last doubling. A slow rate on the built-in corpus still improves and
    does not; a run on 3,000 tokens for 41 epochs overfits."""
    wide = {"model": {"n_layer": 1, "d_model": 32, "n_heads": 2, "n_ctx": 32}, "data": {"eval_windows": 32},
            "train": {**TRAIN, "steps": 240, "checkpoint_every": 240}}
    spec = {"name": "r", "base": wide,
            "axis": [{"zip": {"data.max_train_tokens": [0, 3000], "train.lr": [3e-4, 1e-2]}}]}
    grid.run_sweep(sweep.expand(spec), tmp_path / "a", ensemble_size=8, progress=False)
    long = {**wide, "data": {"eval_windows": 64, "corpus": str(text_corpus)},
            "train": {**TRAIN, "lr": 0.01, "steps": 2400, "eval_every": 200, "checkpoint_every": 2400}}
    grid.run_sweep(sweep.expand({"name": "r", "base": long}), tmp_path / "a", ensemble_size=8, progress=False)
    t = results.load(tmp_path / "a")
    horizons = t["anneals"].groupby("run_id")["horizon"].agg(lambda h: sorted(set(h)))
    assert sorted(map(tuple, horizons)) == [(120, 240), (120, 240), (1200, 2400)]  # the branch and the run itself
    assert set(t["anneals"]["split"]) == {"validation"}
    r = regime.table(t["runs"], t["curves"], t["anneals"], t["blocks"]).set_index("D")
    flags = dict(zip(zip(r.index, r["lr"], r["steps"]), r["regime"]))
    assert flags == {(0, 3e-4, 240): "compute-limited", (3000, 1e-2, 240): "overfitting",
                     (0, 1e-2, 2400): "converged"}
    slow, plateau = r[r["lr"] == 3e-4].iloc[0], r[r["steps"] == 2400].iloc[0]
    assert slow["doubling"] > 0.05 and slow["doubling_lo"] > regime.CONVERGED_DOUBLING  # surely improving
    assert plateau["doubling"] < regime.CONVERGED_DOUBLING and plateau["doubling_lo"] < plateau["doubling_hi"]
    assert len(json.loads(plateau["annealed"])) == 2 and np.isfinite(slow["log_slope"]) and slow["log_slope"] > 0
    limited = r.loc[3000]
    assert limited["epochs"] == 240 * 16 * 32 / 3000 and limited["tokens_per_param"] > 1
    assert "still improves" in regime.problem(r.reset_index())
    assert regime.problem(r[r["regime"] == "converged"].reset_index()) is None
    # a claim that asks for less than the measured improvement keeps the gate shut
    assert "the claim needs < 0.01%" in regime.problem(r[r["regime"] == "converged"].reset_index(), threshold=1e-4)
    # without branches the same runs are unmeasured: no claim about converged models can be decided on them
    unmeasured = regime.table(t["runs"], t["curves"]).set_index("D")
    assert set(unmeasured["regime"]) == {"unmeasured", "overfitting"}
    assert "convergence was not measured" in regime.problem(unmeasured.reset_index())


def test_classify_reads_the_annealed_doubling_and_a_rise_beyond_noise():
    steps = np.arange(1, 11) * 10
    falling = 3.0 - 0.1 * np.arange(10)
    rising = np.r_[3.0 - 0.1 * np.arange(7), [2.5, 2.6, 2.7]]
    se = np.full(10, 0.01)
    still, flat = regime.Convergence((5e5, 1e6), (2.2, 2.1), 0.045, None), \
        regime.Convergence((5e5, 1e6), (2.10, 2.098), 0.001, None)
    assert regime.classify(steps, falling, se, 1e6, 1e5, 0, still).regime == "compute-limited"
    assert regime.classify(steps, falling, se, 1e6, 1e5, 0, flat).regime == "converged"
    assert regime.classify(steps, falling, se, 1e6, 1e5, 0, None).regime == "unmeasured"
    assert regime.classify(steps, rising, se, 1e6, 1e5, 1e5, flat).regime == "overfitting"
    noisy = regime.classify(steps, rising, np.full(10, 0.2), 1e6, 1e5, 1e5, flat)  # the rise is within 2 SE
    assert noisy.regime == "converged"
    assert regime.classify(steps, falling, se, 1e6, 1e5, 2e5).epochs == 5.0
    # the doubling's interval: the two horizons on the same windows, resampled by document
    rng = np.random.default_rng(0)
    text = np.repeat(rng.normal(0, 0.3, 20), 10)  # 20 documents of 10 windows
    before, last = 2.2 + text + rng.normal(0, 0.01, 200), 2.1 + text + rng.normal(0, 0.01, 200)
    conv = regime.convergence(np.array([5e5, 1e6]), [before, last], np.repeat(np.arange(20), 10))
    assert conv.doubling == pytest.approx((before.mean() - last.mean()) / before.mean())
    assert conv.interval[0] < conv.doubling < conv.interval[1] and conv.interval[1] - conv.interval[0] < 0.05


def _witten_bell_directly(train, windows, vocab, order):
    """The same model, counted with dicts over tuples, with the model's context convention: the prediction of
    row[t + 1] sees row[0..t], t + 1 tokens, so order n (n - 1 tokens of history) is used from t = n - 2 on."""
    tr = list(map(int, train))
    count, ctx, types = Counter(), Counter(), defaultdict(set)
    for n in range(1, order + 1):
        for i in range(n - 1, len(tr)):
            h = tuple(tr[i - n + 1:i])
            count[h, tr[i]] += 1
            ctx[h] += 1
            types[h].add(tr[i])
    total = n_pos = 0
    for row in map(lambda r: list(map(int, r)), windows):
        for t in range(len(row) - 1):
            p = 1 / vocab
            for n in range(1, order + 1):
                h = tuple(row[t + 2 - n:t + 1])
                if t + 1 < n - 1 or ctx[h] == 0:  # fewer than n - 1 tokens before the target
                    continue
                p = (count[h, row[t + 1]] + len(types[h]) * p) / (ctx[h] + len(types[h]))
            total, n_pos = total - math.log(p), n_pos + 1
    return total / n_pos


@pytest.mark.parametrize("offset", [0, 3000], ids=["dense bigrams", "hashed bigrams"])
def test_ngram_baselines_match_a_direct_count(offset):
    """offset: token ids start there (a vocabulary too large for the dense bigram table takes the hashed path)."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 8, 4000).astype(np.uint16)
    for i in range(2, len(train)):  # some structure for the higher orders to find
        if rng.random() < 0.6:
            train[i] = (train[i - 1] + train[i - 2]) % 8
    windows = np.stack([train[100:117], train[2000:2017], rng.integers(0, 8, 17).astype(np.uint16)])
    train, windows, vocab = train + offset, windows + offset, 8 + offset
    if offset:  # too large for the dense table: order 2 is hashed
        assert (int(train.max()) + 2) ** 2 > ngram._DENSE_BIGRAMS
    found = ngram.scores(train, windows, vocab_size=vocab)
    for order in (1, 2, 3, 5):
        assert abs(found[order] - _witten_bell_directly(train, windows, vocab, order)) < 1e-9, order
    assert found[5] < found[3] < math.log(vocab)


@pytest.mark.parametrize("converged, expect", [(True, "are in that regime"), (False, "NOT in that regime")])
def test_fit_says_whether_a_sweeps_runs_are_in_the_laws_regime(tmp_path, converged, expect, jscale_here):
    from test_report import SIZE, synthetic_sweep

    synthetic_sweep(tmp_path / "size", SIZE, lambda r: (1e9 / r["N"]) ** 0.08, converged=converged)
    r = jscale_here("fit", str(tmp_path / "size"), "--law", "kaplan-n", "--bootstrap", "20", check=0)
    line = next(x for x in r.stdout.splitlines() if x.startswith("regime:"))
    assert "kaplan-n is about converged runs" in line and expect in line
    fit = json.loads((tmp_path / "size" / "fit-kaplan-n.json").read_text())
    assert fit["info"]["regime"]["in_regime"] is converged


def test_a_final_evaluation_on_more_windows_is_compared_on_the_curves_windows(tmp_path):
    """Evaluations before the last score a subset of the final one's windows. A final loss on all windows that
    is higher only because the other windows hold harder text must not read as validation rising (overfitting),
    nor move the best step: the final value is recomputed on the subset from the stored per-window losses."""
    from test_report import TRAIN, record

    spec = {"name": "size", "base": {"model": {"n_ctx": 32}, "data": {"curve_eval_windows": 16},
                                     "train": TRAIN}, "axis": [{"key": "model.d_model", "values": [32]}]}
    sw = sweep.expand(spec)
    grid.check_sweep_dir(sw, tmp_path)
    row = sweep.run_row(sw.runs[0], "g")
    subset = results.curve_subset(64, 16)
    windows = np.full(64, 3.3, np.float32)
    windows[subset] = 2.9  # the curve's windows are easier text than the rest
    with results.ResultsDB(tmp_path) as db:
        db.add_runs([row])
        for step, loss in ((10, 3.2), (20, 3.0), (30, 2.95)):
            db.record_eval([record(row, loss, step=step)])
        db.record_eval([record(row, float(windows.mean()), windows=windows)])  # step 40, all 64 windows
    tables = results.load(tmp_path)
    curve = tables["curves"].set_index("step")
    assert curve.loc[40, "val_loss"] == pytest.approx(windows.mean())
    assert curve.loc[40, "val_curve"] == pytest.approx(2.9)
    runs = regime.table(tables["runs"], tables["curves"])
    assert runs["regime"].item() != "overfitting"
    assert tables["runs"]["best_val_step"].item() == 40


def test_check_extrapolation_compares_a_longer_run_with_the_shorter_ones_floor_on_the_same_windows(tmp_path):
    """experiments/check_extrapolation.py on two real tiny sweeps of one shape and seed, 96 and 192 steps, three
    cooldown branches each: the longer run's final checkpoint, scored again on the shorter sweep's windows (the
    same count, so the same windows), gives exactly its stored final validation loss; the shorter run's L_inf is
    below its own longest annealed loss; the difference comes with an interval that contains it."""
    import subprocess
    import sys

    from conftest import REPO

    def sweep_at(steps, name):
        spec = {"name": "size", "base": {"model": {"n_layer": 1, "d_model": 16, "n_heads": 2, "n_ctx": 16},
                                         "data": {"eval_windows": 64, "curve_eval_windows": 16},
                                         "train": {**TRAIN, "steps": steps, "anneal_branches": 3,
                                                   "eval_every": steps // 4, "checkpoint_every": steps // 4}},
                "axis": [{"key": "model.d_model", "values": [16]}]}
        grid.run_sweep(sweep.expand(spec), tmp_path / name, progress=False)
        return tmp_path / name

    short, longer = sweep_at(96, "short"), sweep_at(192, "longer")
    p = subprocess.run([sys.executable, str(REPO / "experiments" / "check_extrapolation.py"), str(longer), str(short),
                        "--resamples", "50", "--out", str(tmp_path / "rows.json")],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert p.returncode == 0, p.stderr[-3000:]
    [row] = json.loads((tmp_path / "rows.json").read_text())
    stored = results.load(longer)["runs"].set_index("role").loc["final"]
    assert row["converged_loss"] == pytest.approx(float(stored.final_val_loss), abs=1e-6)
    assert row["long_L_inf"] < row["long_loss"] and row["tokens"] == 2 * row["long_tokens"]
    lo, hi = row["minus_L_inf_interval"]
    assert lo <= row["minus_L_inf"] <= hi and "d_model 16 seed 0" in p.stdout
