"""Per-shape tuning: real pilots that find a planted optimum, flag an edge optimum after extending once, read only
validation loss, and seeds that train as members of one ensemble."""

import json
import sqlite3

import pytest

from jscale import grid, results, sweep, tuning
from jscale.config import ConfigError

BASE = {"model": {"n_layer": 1, "d_model": 16, "n_heads": 2, "n_ctx": 16}, "data": {"eval_windows": 8},
        "train": {"batch_size": 8, "steps": 60, "lr": 1e-3, "warmup_steps": 5, "eval_every": 30,
                  "checkpoint_every": 30, "b2": 0.99}}


def test_pilot_finds_the_planted_optimum_and_seeds_train_as_one_ensemble(tmp_path, monkeypatch):
    # The planted optimum: 1e-5 barely moves in 30 steps, 30 overshoots on every step; 3e-3 is clearly best.
    spec = {"name": "t", "base": BASE, "seeds": 2, "axis": [{"key": "model.d_model", "values": [16]}],
            "tune": {"grid": {"train.lr": [1e-5, 3e-3, 30.0]}, "fraction": 0.5}}
    sw = sweep.expand(spec)
    pilots = [r for r in sw.runs if r.role == "pilot"]
    assert len(pilots) == 3 and {r.cfg.train.steps for r in pilots} == {30}
    assert {r.cfg.train.seed for r in pilots} == {0}  # the point's first seed
    assert len(sw.groups(8)) == 2  # the pilots are one ensemble; the two seeds of the final run another
    # Selection reads validation loss only: a test split that is never read cannot change it.
    read = []
    original = results.ResultsDB.pilot_results

    def spy(self, ids):
        read.append(ids)
        return original(self, ids)

    monkeypatch.setattr(results.ResultsDB, "pilot_results", spy)
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    assert read
    tables = results.load(tmp_path / "s")
    t = tables["tuning"].iloc[0]
    assert json.loads(t.chosen) == {"train.lr": 3e-3} and t.bracketed == 1 and t.extended == 0
    finals = tables["runs"][tables["runs"].role == "final"]
    assert sorted(finals.seed) == [0, 1] and set(finals.lr) == {3e-3} and set(finals.status) == {"done"}
    assert finals.point.nunique() == 1  # seed replicas of one point
    assert finals.group_id.nunique() == 1  # trained as one ensemble
    assert "tuned point" in grid.status_table(tmp_path / "s")
    # A re-run trains nothing and chooses the same.
    again = grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    assert again["trained_groups"] == 0


def test_optimum_at_the_edge_is_extended_once_then_flagged(tmp_path):
    spec = {"name": "t", "base": BASE, "tune": {"grid": {"train.lr": [1e-5, 3e-5]}, "fraction": 0.5}}
    grid.run_sweep(sweep.expand(spec), tmp_path / "s", ensemble_size=8, progress=False)
    t = results.load(tmp_path / "s")["tuning"].iloc[0]
    assert json.loads(t.grid) == {"train.lr": [1e-5, 3e-5, pytest.approx(9e-5)]}  # one geometric step beyond
    assert json.loads(t.chosen)["train.lr"] == pytest.approx(9e-5)
    assert t.extended == 1 and t.bracketed == 0 and "edge" in t.note


def test_choice_and_extension_rules():
    grid_ = {"train.lr": [1e-3, 2e-3, 4e-3], "train.b2": [0.95, 0.99]}
    losses = [({"train.lr": lr, "train.b2": b2}, 2.0 + abs(lr - 2e-3) * 100 + (b2 == 0.95) * 0.1)
              for lr in grid_["train.lr"] for b2 in grid_["train.b2"]]
    c = tuning.choose(grid_, losses)
    assert c.chosen == {"train.lr": 2e-3, "train.b2": 0.99}
    assert c.bracketed == {"train.lr": True, "train.b2": False}
    assert tuning.extension(grid_, c) == {}  # b2 cannot grow geometrically: flagged, not extended
    edge = tuning.choose(grid_, [(v, 1.0 if v["train.lr"] == 4e-3 else 2.0) for v, _ in losses])
    assert tuning.extension(grid_, edge) == {"train.lr": [pytest.approx(8e-3)]}
    with pytest.raises(ConfigError, match="every pilot run diverged"):
        tuning.choose(grid_, [(v, float("inf")) for v, _ in losses])


@pytest.mark.parametrize("table, message", [
    ({"grid": {"train.lr": [1e-3]}}, "tune.grid.train.lr: a tuning grid needs at least 2 distinct values"),
    ({"grid": {"train.batch_size": [8, 16.5]}}, "tune.grid.train.batch_size: expected positive whole numbers"),
    ({"grid": {"model.d_model": [8, 16]}}, "tune.grid.model.d_model: not tunable"),
    ({"grid": {"train.lr": [1e-3, 2e-3]}, "fraction": 0}, "tune.fraction: must be in"),
    ({"grid": {"train.lr": [1e-3, 2e-3]}, "folds": 2}, "tune.folds: unknown field"),
])
def test_bad_tuning_tables_are_one_line_errors(table, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        sweep.expand({"name": "t", "base": BASE, "tune": table})


def test_seed_count_and_tuned_axes_are_checked():
    with pytest.raises(ConfigError, match="seeds: the number of seeds per point must be an integer >= 1"):
        sweep.expand({"name": "t", "base": BASE, "seeds": 0})
    with pytest.raises(ConfigError, match="tune.grid.train.lr: also set by an"):
        sweep.expand({"name": "t", "base": BASE, "axis": [{"key": "train.lr", "values": [1e-3, 2e-3]}],
                      "tune": {"grid": {"train.lr": [1e-3, 2e-3]}}})


def test_selection_reads_validation_never_test(tmp_path):
    """Pilots whose validation and test losses disagree: the choice follows validation. (Were selection to read
    test, lr = 1e-5 would be chosen.)"""
    spec = {"name": "t", "base": BASE, "tune": {"grid": {"train.lr": [1e-5, 3e-3, 30.0]}, "fraction": 0.5}}
    sw = sweep.expand(spec)
    rows = [sweep.run_row(r, "g") for r in sw.runs if r.role == "pilot"]
    with results.ResultsDB(tmp_path / "s") as db:
        db.add_runs(rows)
        for r in rows:
            lr = json.loads(r["config"])["train"]["lr"]
            val, test = {1e-5: (3.0, 1.0), 3e-3: (2.0, 2.5), 30.0: (4.0, 4.0)}[lr]
            tokens = r["tokens"]
            db.record_eval([{"run_id": r["run_id"], "step": r["steps"], "tokens": tokens, "epochs": 0.1,
                             "flops_6N": 1.0, "flops_exact": 1.0, "train_loss": val, "val_loss": val, "val_se": 0.01,
                             "test_loss": test, "test_se": 0.01, "test_bits_per_byte": 1.0, "lr": lr, "evals": {},
                             "per_window": None, "status": "done", "wall_time": 1.0, "tokens_per_s": 1.0}])
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    with sqlite3.connect(tmp_path / "s" / "results.sqlite") as c:
        chosen = json.loads(c.execute("SELECT chosen FROM tuning").fetchone()[0])
    assert chosen == {"train.lr": 3e-3}


def test_a_batch_size_grid_compares_batch_sizes_at_equal_tokens(tmp_path):
    spec = {"name": "t", "base": BASE, "tune": {"grid": {"train.batch_size": [4, 8, 16]}, "fraction": 0.5}}
    sw = sweep.expand(spec)
    pilots = [r for r in sw.runs if r.role == "pilot"]
    tokens = {r.cfg.train.batch_size: r.cfg.train.batch_size * r.cfg.train.steps for r in pilots}
    assert tokens == {4: 240, 8: 240, 16: 240}  # 60 steps x 8 sequences x 0.5, at every batch size
    assert len(sw.groups(8)) == 4  # one group per batch size, and the final run's
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    t = results.load(tmp_path / "s")
    chosen = json.loads(t["tuning"].iloc[0].chosen)["train.batch_size"]
    final = t["runs"][t["runs"].role == "final"].iloc[0]
    assert final.batch_size == chosen and final.steps * final.batch_size == 60 * 8  # the final run's tokens kept
