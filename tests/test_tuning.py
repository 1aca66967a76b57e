"""Per-shape tuning: real pilots that find a planted optimum, grids extended until the optimum is bracketed (or
flagged), the vertex of a parabola in log(lr), pilots never too short, only validation loss read, and seeds that
train as members of one ensemble."""

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
    # half the run would be 30 steps; a pilot is at least its warmup (5) + 50 steps
    assert len(pilots) == 3 and {r.cfg.train.steps for r in pilots} == {55}
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
    pilot_losses = {v["train.lr"]: loss for v, loss in json.loads(t.losses)}
    assert min(pilot_losses, key=lambda lr: pilot_losses[lr] or float("inf")) == 3e-3
    vertex = tuning.lr_vertex([1e-5, 3e-3, 30.0], [pilot_losses[lr] or float("inf") for lr in (1e-5, 3e-3, 30.0)])
    chosen = json.loads(t.chosen)["train.lr"]
    assert chosen == pytest.approx(vertex) and 1e-5 < chosen < 30.0 and t.bracketed == 1 and t.extended == 0
    assert t.margin > 0 and "vertex" in t.note
    finals = tables["runs"][tables["runs"].role == "final"]
    assert sorted(finals.seed) == [0, 1] and set(finals.lr) == {chosen} and set(finals.status) == {"done"}
    assert finals.point.nunique() == 1  # seed replicas of one point
    assert finals.group_id.nunique() == 1  # trained as one ensemble
    assert "tuned point" in grid.status_table(tmp_path / "s")
    # A re-run trains nothing and chooses the same.
    again = grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    assert again["trained_groups"] == 0


def _planted_record(row, val, test, lr):
    """A finished run's final evaluation with every row a real one has (evaluation sets, per-window losses)."""
    import numpy as np

    evals = {split: {"loss": loss, "se": 0.01, "bits_per_byte": 1.0, "per_position": [loss]}
             for split, loss in (("validation", val), ("test", test))}
    return {"run_id": row["run_id"], "step": row["steps"], "tokens": row["tokens"], "epochs": 0.1, "flops_6N": 1.0,
            "flops_exact": 1.0, "train_loss": val, "val_loss": val, "val_se": 0.01, "test_loss": test,
            "test_se": 0.01, "test_bits_per_byte": 1.0, "lr": lr, "evals": evals,
            "per_window": {"validation": np.full(8, val, np.float32), "test": np.full(8, test, np.float32)},
            "status": "done", "wall_time": 1.0, "tokens_per_s": 1.0}


def _planted_pilots(db, runs, loss_of_lr):
    """Record these pilot runs as finished with a planted validation loss (nothing trains them)."""
    rows = [sweep.run_row(r, "planted") for r in runs]
    db.add_runs(rows)
    for r in rows:
        lr = json.loads(r["config"])["train"]["lr"]
        db.record_eval([_planted_record(r, loss_of_lr(lr), 1.0, lr)])


def test_a_grid_extends_until_the_optimum_is_bracketed_then_takes_the_parabolas_vertex(tmp_path):
    """A planted loss, a parabola in log(lr) with its minimum at 4.5e-3: the grid [1e-3, 2e-3] must extend twice
    (4e-3 is still the top edge, 8e-3 is worse), and the vertex through 2e-3, 4e-3, 8e-3 is the planted optimum."""
    import math

    planted = lambda lr: 2.0 + math.log(lr / 4.5e-3) ** 2
    spec = {"name": "t", "base": BASE, "tune": {"grid": {"train.lr": [1e-3, 2e-3]}, "fraction": 0.5}}
    sw = sweep.expand(spec)
    finals = [r for r in sw.runs if r.role == "final"]
    with results.ResultsDB(tmp_path / "s") as db:
        _planted_pilots(db, [r for r in sw.runs if r.role == "pilot"], planted)
        lrs = [1e-3, 2e-3]
        for _ in range(3):  # every extension the rule could ask for, planted ahead (its values to the last bit)
            lrs.append(lrs[-1] * lrs[-1] / lrs[-2])
            _planted_pilots(db, sweep.pilot_runs(finals, sw.tune, {"train.lr": [lrs[-1]]}, {}), planted)
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    t = results.load(tmp_path / "s")["tuning"].iloc[0]
    assert json.loads(t.grid)["train.lr"] == [1e-3, 2e-3, pytest.approx(4e-3), pytest.approx(8e-3)]
    assert t.rounds == 2 and t.bracketed == 1
    assert json.loads(t.chosen)["train.lr"] == pytest.approx(4.5e-3, rel=1e-9)
    assert t.margin == pytest.approx((planted(8e-3) - planted(4e-3)) / planted(4e-3))


def test_an_optimum_still_at_the_edge_after_every_extension_is_flagged(tmp_path):
    spec = {"name": "t", "base": BASE, "tune": {"grid": {"train.lr": [1e-4, 2e-4]}, "fraction": 0.5}}
    sw = sweep.expand(spec)
    finals = [r for r in sw.runs if r.role == "final"]
    falling = lambda lr: 3.0 - lr  # always better higher up
    lrs = [1e-4, 2e-4]
    with results.ResultsDB(tmp_path / "s") as db:
        _planted_pilots(db, [r for r in sw.runs if r.role == "pilot"], falling)
        for _ in range(tuning.MAX_EXTENSIONS):
            lrs.append(lrs[-1] * lrs[-1] / lrs[-2])  # the extension rule's next value, to the last bit
            _planted_pilots(db, sweep.pilot_runs(finals, sw.tune, {"train.lr": [lrs[-1]]}, {}), falling)
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    t = results.load(tmp_path / "s")["tuning"].iloc[0]
    assert json.loads(t.grid)["train.lr"] == lrs  # the fifth value is never asked for
    assert json.loads(t.chosen)["train.lr"] == lrs[-1]
    assert t.rounds == tuning.MAX_EXTENSIONS and t.bracketed == 0 and "edge" in t.note


def test_choice_and_extension_rules():
    grid_ = {"train.lr": [1e-3, 2e-3, 4e-3], "train.b2": [0.95, 0.99]}
    losses = [({"train.lr": lr, "train.b2": b2}, 2.0 + abs(lr - 2e-3) * 100 + (b2 == 0.95) * 0.1)
              for lr in grid_["train.lr"] for b2 in grid_["train.b2"]]
    c = tuning.choose(grid_, losses)
    assert c.best == {"train.lr": 2e-3, "train.b2": 0.99}
    assert c.chosen == {"train.lr": pytest.approx(tuning.lr_vertex([1e-3, 2e-3, 4e-3], [2.1, 2.0, 2.2])),
                        "train.b2": 0.99}
    assert 1e-3 < c.chosen["train.lr"] < 2e-3 and c.margin == pytest.approx(0.1 / 2.0)  # the lower side is closer
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
            db.record_eval([_planted_record(r, val, test, lr)])
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    with sqlite3.connect(tmp_path / "s" / "results.sqlite") as c:
        chosen = json.loads(c.execute("SELECT chosen FROM tuning").fetchone()[0])
    assert chosen == {"train.lr": pytest.approx(tuning.lr_vertex([1e-5, 3e-3, 30.0], [3.0, 2.0, 4.0]))}
    assert 1e-4 < chosen["train.lr"] < 30.0  # around 3e-3, the best on validation; on test 1e-5 would be


def test_a_batch_size_grid_compares_batch_sizes_at_equal_tokens(tmp_path):
    spec = {"name": "t", "base": BASE, "tune": {"grid": {"train.batch_size": [4, 8, 16]}, "fraction": 0.5}}
    sw = sweep.expand(spec)
    pilots = [r for r in sw.runs if r.role == "pilot"]
    tokens = {r.cfg.train.batch_size: r.cfg.train.batch_size * r.cfg.train.steps for r in pilots}
    # 55 steps x 8 sequences (the point's warmup + 50 steps) at every batch size, to a whole step (440 / 16 = 27.5)
    assert tokens == {4: 440, 8: 440, 16: 448}
    assert len(sw.groups(8)) == 4  # one group per batch size, and the final run's
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    t = results.load(tmp_path / "s")
    chosen = json.loads(t["tuning"].iloc[0].chosen)["train.batch_size"]
    final = t["runs"][t["runs"].role == "final"].iloc[0]
    assert final.batch_size == chosen and final.steps * final.batch_size == 60 * 8  # the final run's tokens kept


def test_eval_se_sizes_the_final_evaluations_from_the_pilots_differences(tmp_path):
    """data.eval_se: after the pilots, the final runs score the windows that the standard error of a paired difference
    needs, computed from each point's two best pilots' per-window differences and their documents (recomputed here
    from the database), at most eval_tokens' worth; every point's final runs score the most any point needs (the
    report compares points on the same windows); curve evaluations likewise; a re-run chooses the same and trains
    nothing. Without a [tune] table the key is refused in one line."""
    import numpy as np

    from jscale import noise

    base = {**BASE, "data": {"eval_tokens": 512 * 17, "eval_se": 0.01, "curve_eval_se": 0.03}}
    spec = {"name": "t", "base": base, "seeds": 2, "axis": [{"key": "model.d_model", "values": [16, 24]}],
            "tune": {"grid": {"train.lr": [1e-3, 3e-3, 1e-2]}, "fraction": 0.5}}
    sw = sweep.expand(spec)
    assert "final evaluations are sized for a paired standard error of 0.01 nats" in sweep.plan_table(sw, sw.groups(8))
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    tables = results.load(tmp_path / "s")
    runs, windows = tables["runs"], tables["windows"]
    val = windows[windows.split == "validation"].set_index("run_id").losses
    blocks = tables["blocks"][("validation", 16, 0, 128)]
    needs = []
    for t in tables["tuning"].itertuples():
        pilots = runs[(runs.role == "pilot") & (runs.point == t.point)].sort_values(["final_val_loss", "run_id"])
        a, b = val[pilots.run_id.iloc[0]], val[pilots.run_id.iloc[1]]
        assert len(a) == 128  # a pilot scores a quarter of the final evaluation's windows
        final = noise.windows_for_se(b.astype(np.float64) - a, blocks, 0.01, 512)
        curve = noise.windows_for_se(b.astype(np.float64) - a, blocks, 0.03, final.windows)
        needs.append((final.windows, curve.windows))
        assert f"final evaluations: {final.windows:,} windows" in t.note
    n_final, n_curve = max(n for n, _ in needs), max(c for _, c in needs)
    assert 64 <= n_curve <= n_final <= 512
    for t in tables["tuning"].itertuples():  # what the point's final runs were trained with
        assert json.loads(t.chosen)["data.eval_tokens"] >= 64 * 17
    finals = runs[runs.role == "final"]
    assert len(finals) == 4 and set(finals.status) == {"done"}
    for rid, cfg in zip(finals.run_id, finals.config):
        assert len(val[rid]) == n_final and json.loads(cfg)["data"]["curve_eval_windows"] == n_curve
        assert json.loads(cfg)["data"]["eval_tokens"] == n_final * 17
    again = grid.run_sweep(sw, tmp_path / "s", ensemble_size=8, progress=False)
    assert again["trained_groups"] == 0
    with pytest.raises(ConfigError, match=r"^data.eval_se: sizes the final evaluations from a point's pilots"):
        sweep.expand({k: v for k, v in spec.items() if k != "tune"})
