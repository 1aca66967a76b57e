"""`jscale report` on sweep directories whose results follow known laws: the fitted numbers and the computed
verdicts must recover them. (The notebooks run the report on real training runs.)"""

import json
import subprocess

import numpy as np
import pytest

from conftest import jscale_cmd
from jscale import grid, report, results, sweep

TRAIN = {"batch_size": 4, "steps": 40, "warmup_steps": 4, "eval_every": 20, "checkpoint_every": 20}


def synthetic_sweep(directory, spec, loss_of, positions_of=None):
    """A sweep directory as `jscale run` leaves it, with each run's final test loss set to loss_of(run_row)."""
    sw = sweep.expand(spec)
    grid.check_sweep_dir(sw, directory)
    rows = [sweep.run_row(r, "g") for r in sw.runs]
    with results.ResultsDB(directory) as db:
        db.add_runs(rows)
        for r in rows:
            loss = loss_of(r)
            n_ctx = r["n_ctx"]
            per_position = positions_of(r) if positions_of else np.full(n_ctx, loss)
            db.record_eval([record(r, loss, per_position)])
    return sw


def record(row, loss, per_position=None, step=None, se=0.001, windows=None):
    """An evaluation record as train_loop writes it, with every evaluation set at this loss."""
    step = row["steps"] if step is None else step
    tokens = step * row["batch_size"] * row["n_ctx"]
    per_position = np.full(row["n_ctx"], loss) if per_position is None else per_position
    evals = {s: {"loss": loss, "se": se, "bits_per_byte": loss / np.log(2),
                 "per_position": list(map(float, per_position))} for s in ("validation", "test")}
    return {"run_id": row["run_id"], "step": step, "tokens": tokens, "epochs": 0.1,
            "flops_6N": 6 * row["N"] * tokens, "flops_exact": row["flops_per_token_exact"] * tokens,
            "train_loss": loss, "val_loss": loss, "val_se": se, "test_loss": loss, "test_se": se,
            "test_bits_per_byte": loss / np.log(2), "evals": evals, "lr": 1e-3,
            "per_window": None if windows is None else {"validation": windows, "test": windows},
            "status": "done" if step == row["steps"] else "running", "wall_time": 1.0, "tokens_per_s": 1.0}


def verdicts(directory, tmp_path, latency=False):
    sections = report.build_sections(directory, tmp_path / "out", latency=latency, n_bootstrap=50)
    return {s.name: s for s in sections}


def test_size_recovers_alpha_and_finds_that_depths_collapse_without_embeddings(tmp_path):
    spec = {"name": "size", "base": {"model": {"n_ctx": 32}, "train": TRAIN},
            "axis": [{"key": "model.n_layer", "values": [2, 4]},
                     {"zip": {"model.d_model": [32, 64, 128], "model.n_heads": [2, 4, 8]}}]}
    synthetic_sweep(tmp_path / "size", spec, lambda r: (1e9 / r["N"]) ** 0.08)
    sec = verdicts(tmp_path / "size", tmp_path)["size"]
    assert "alpha_N = 0.080" in " ".join(sec.verdicts)
    assert "collapses the depths onto one trend" in " ".join(sec.verdicts)
    assert sec.numbers[0][1] == "0.080"


def test_shape_spread_is_the_known_excess(tmp_path):
    spec = {"name": "shape", "base": {"model": {"n_ctx": 32}, "train": TRAIN},
            "axis": [{"generator": "shape_grid", "N": [1e5, 4e5], "aspect_ratio": 16, "d_head": 8,
                      "aspect_ratios": [4, 64], "ff_ratios": [1], "d_heads": [16]}]}
    # Every shape on L(N) exactly, except the ff_ratio = 1 runs, 3% above it.
    loss = lambda r: (1e9 / r["N"]) ** 0.08 * (1.03 if r["d_ff"] == r["d_model"] else 1.0)
    synthetic_sweep(tmp_path / "shape", spec, loss)
    sec = verdicts(tmp_path / "shape", tmp_path)["shape"]
    spreads = [v for v in sec.verdicts if v.startswith("Loss spread")]
    assert len(spreads) == 2 and all(" 3.0% " in v for v in spreads), spreads
    assert "supports Kaplan's 'a few percent'" in sec.verdicts[-1]
    assert sec.figures["shape"] is not None


def test_lstm_plateau_and_growing_gap(tmp_path):
    spec = {"name": "lstm", "base": {"model": {"n_ctx": 128}, "train": TRAIN},
            "axis": [{"zip": {"model.kind": ["transformer", "lstm"], "model.n_layer": [2, 2]}},
                     {"generator": "sizes", "N_min": 2e4, "N_max": 2e5, "count": 3, "n_layer": 2, "d_head": 8}]}
    t = np.arange(1, 129)

    def positions(r):  # Transformers improve over the whole context; LSTMs stop at token 20
        return 3.0 * (t if r["kind"] == "transformer" else np.minimum(t, 20)) ** -0.1

    def loss(r):
        base = (1e9 / r["N"]) ** 0.08
        return base if r["kind"] == "transformer" else base * (1 + 0.02 * np.log10(r["N"] / 1e4))

    synthetic_sweep(tmp_path / "lstm", spec, loss, positions)
    text = " ".join(verdicts(tmp_path / "lstm", tmp_path)["lstm"].verdicts)
    assert "supports Kaplan's 'LSTMs plateau early, Transformers keep improving'" in text
    assert "the LSTM's deficit grows with N" in text


def test_compute_recovers_chinchillas_allocation_and_checks_flop_counts(tmp_path):
    spec = {"name": "compute", "base": {"model": {"n_ctx": 32}, "train": {**TRAIN, "steps": 200, "warmup_steps": 2}},
            "axis": [{"generator": "isoflop", "budgets": [3e10, 1e11, 3e11], "convention": "all", "min_steps": 5,
                      "sizes": {"N_min": 8e3, "N_max": 3e5, "count": 5, "aspect_ratio": 16, "d_head": 8}}]}
    E, A, B, alpha, beta = 1.0, 50.0, 80.0, 0.3, 0.3  # a = beta / (alpha + beta) = 0.5
    sw = synthetic_sweep(tmp_path / "compute", spec,
                         lambda r: E + A / r["N_total"] ** alpha + B / r["tokens"] ** beta)
    # Learning curves for the frontier and the envelope: the same law at earlier evaluations.
    with results.ResultsDB(tmp_path / "compute") as db:
        for r in (sweep.run_row(run, "g") for run in sw.runs):
            for frac in (0.25, 0.5):
                tokens = int(r["tokens"] * frac)
                loss = E + A / r["N_total"] ** alpha + B / tokens ** beta
                db.conn.execute("INSERT INTO curves VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                (r["run_id"], int(r["steps"] * frac), tokens, 6 * r["N"] * tokens, 0.0, loss, loss, 0.0))
        db.conn.commit()
    sec = verdicts(tmp_path / "compute", tmp_path)["compute"]
    numbers = {q: (ours, ci) for q, ours, ci, _ in sec.numbers}
    assert float(numbers["N_opt ~ C^a, approach 3 (parametric)"][0]) == pytest.approx(0.5, abs=0.01)
    assert float(numbers["N_opt ~ C^a, approach 2 (IsoFLOP)"][0]) == pytest.approx(0.5, abs=0.15)
    header, rows = sec.tables[0]
    assert header[-2:] == ["XLA / 6N", "XLA / exact"]
    # XLA's count of the compiled step is within a few percent of the exact count (dense attention adds a little).
    assert all(0.95 < float(row[-1]) < 1.3 for row in rows)
    assert "XLA counts" in sec.verdicts[-1]


def test_report_writes_a_self_contained_page_and_a_markdown_summary(tmp_path):
    spec = {"name": "efficiency", "base": {"model": {"n_ctx": 16, "n_layer": 1, "n_heads": 4}, "train": TRAIN},
            "axis": [{"key": "model.d_model", "values": [16, 32]}, {"key": "model.n_kv_heads", "values": [4, 1]}]}
    synthetic_sweep(tmp_path / "runs" / "efficiency", spec,
                    lambda r: 3.0 - 0.01 * r["d_model"] + (0.03 if "KV=1" in r["name"] else 0.0))
    out = tmp_path / "report"
    proc = subprocess.run(jscale_cmd("report", str(tmp_path / "runs"), "--out", str(out), "--bootstrap", "50"),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 and 'src="figures/' not in page
    md = (out / "report.md").read_text()
    assert "d_model 16: multi-query against multi-head attention: loss +1.1%" in md  # 2.87 against 2.84
    assert "![efficiency pareto](figures/efficiency-pareto.png)" in md and (out / "figures/efficiency-pareto.png").exists()
    assert (out / "efficiency-runs.csv").read_text().count("\n") == 5
    latencies = json.loads((out / "latency.json").read_text())
    assert len(latencies) == 4 and all(v["seconds_per_token"] > 0 for v in latencies.values())


def test_report_on_a_directory_without_sweeps_is_one_line(tmp_path):
    proc = subprocess.run(jscale_cmd("report", str(tmp_path)), capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"jscale: error: {tmp_path}: no jscale sweep directories here (no results.sqlite "
                                   f"in it or its subdirectories)")


def test_a_sweep_without_its_own_section_gets_an_L_of_N_fit(tmp_path):
    spec = {"name": "quickstart", "base": {"model": {"n_ctx": 32}, "train": TRAIN},
            "axis": [{"generator": "sizes", "N_min": 5e3, "N_max": 2e5, "count": 4, "aspect_ratio": 16, "d_head": 8}]}
    synthetic_sweep(tmp_path / "qs", spec, lambda r: (1e9 / r["N"]) ** 0.08)
    sec = verdicts(tmp_path / "qs", tmp_path)["quickstart"]
    assert sec.verdicts[0].startswith("Test loss falls as N^-0.080")
    assert "loss_vs_N" in sec.figures
