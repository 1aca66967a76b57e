"""Regime checks on real runs built to be each case, and n-gram baselines against a direct count."""

import json
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from jscale import grid, ngram, regime, results, sweep

TRAIN = {"batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "eval_every": 20, "schedule": "constant"}


def test_runs_built_to_be_each_regime_are_flagged_so(tmp_path, xla_optimized):
    wide = {"model": {"n_layer": 1, "d_model": 32, "n_heads": 2, "n_ctx": 32}, "data": {"eval_windows": 32},
            "train": {**TRAIN, "steps": 240, "checkpoint_every": 240}}
    # A slow learning rate is still falling fast (compute-limited); 3,000 tokens for 240 steps of 512 is 41 epochs
    # (overfitting); a model of width 8 at a high rate plateaus (converged).
    spec = {"name": "r", "base": wide,
            "axis": [{"zip": {"data.max_train_tokens": [0, 3000], "train.lr": [3e-4, 1e-2]}}]}
    grid.run_sweep(sweep.expand(spec), tmp_path / "a", ensemble_size=8, progress=False)
    narrow = {**wide, "model": {"n_layer": 1, "d_model": 8, "n_heads": 1, "n_ctx": 32},
              "train": {**TRAIN, "lr": 0.1, "steps": 400, "checkpoint_every": 400}}
    grid.run_sweep(sweep.expand({"name": "r", "base": narrow}), tmp_path / "a", ensemble_size=8, progress=False)
    t = results.load(tmp_path / "a")
    r = regime.table(t["runs"], t["curves"]).set_index("D")
    flags = dict(zip(zip(r.index, r["lr"]), r["regime"]))
    assert flags == {(0, 3e-4): "compute-limited", (3000, 1e-2): "overfitting", (0, 0.1): "converged"}
    limited = r.loc[3000]
    assert limited["epochs"] == 240 * 16 * 32 / 3000 and limited["tokens_per_param"] > 1
    assert "not converged at this scale" in regime.problem(r.reset_index())
    assert regime.problem(r[r["regime"] == "converged"].reset_index()) is None


def test_classify_reads_the_late_improvement_and_a_rise_beyond_noise():
    steps = np.arange(1, 11) * 10
    falling = 3.0 - 0.1 * np.arange(10)
    flat = np.r_[3.0 - 0.1 * np.arange(7), [2.40, 2.398, 2.397]]
    rising = np.r_[3.0 - 0.1 * np.arange(7), [2.5, 2.6, 2.7]]
    se = np.full(10, 0.01)
    assert regime.classify(steps, falling, se, 1e6, 1e5, 0).regime == "compute-limited"
    assert regime.classify(steps, flat, se, 1e6, 1e5, 0).regime == "converged"
    assert regime.classify(steps, rising, se, 1e6, 1e5, 1e5).regime == "overfitting"
    noisy = regime.classify(steps, rising, np.full(10, 0.2), 1e6, 1e5, 1e5)  # the rise is within 2 SE
    assert noisy.regime != "overfitting"
    assert regime.classify(steps, flat, se, 1e6, 1e5, 2e5).epochs == 5.0


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
    assert curve.loc[40, "val_loss"] == pytest.approx(windows.mean()) and curve.loc[40, "val_curve"] == pytest.approx(2.9)
    runs = regime.table(tables["runs"], tables["curves"])
    assert runs["regime"].item() != "overfitting"
    assert tables["runs"]["best_val_step"].item() == 40
