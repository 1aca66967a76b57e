"""`jscale report` on sweep directories whose results follow known laws: the fitted numbers and the computed
verdicts must recover them. (The notebooks run the report on real training runs.)"""

import importlib.util
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jscale import grid, report, results, sweep

TRAIN = {"batch_size": 4, "steps": 40, "warmup_steps": 4, "eval_every": 20, "checkpoint_every": 20}
W = 64  # evaluation windows of a synthetic run


def record(row, loss, per_position=None, step=None, se=0.001, windows=None, grid=None):
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
            "window_positions": grid, "status": "done" if step == row["steps"] else "running",
            "wall_time": 1.0, "tokens_per_s": 1.0}


def synthetic_sweep(directory, spec, loss_of, positions_of=None, converged=True, window_sd=0.05, curve_of=None,
                    anneal_of=None):
    """A sweep directory as `jscale run` leaves it: each run's final test loss is loss_of(run_row), scored on W
    windows that share their content (what each window holds) across runs, with a little per-run window noise;
    three evaluations, flat over the last 30% when converged (else still falling 10%), and a cooldown branch at half
    the run whose annealed loss is 0.2% above the run's when converged (else 5%)."""
    sw = sweep.expand(spec)
    grid.check_sweep_dir(sw, directory)
    rows = [sweep.run_row(r, "g") for r in sw.runs]
    rng = np.random.default_rng(0)
    content = rng.normal(0, window_sd, W)
    content -= content.mean()
    with results.ResultsDB(directory) as db:
        db.add_runs(rows)
        for r in rows:
            loss = loss_of(r)
            noise_w = rng.normal(0, window_sd / 4, W)
            windows = (loss * (1 + content + noise_w - noise_w.mean())).astype(np.float32)
            per_position = positions_of(r) if positions_of else np.full(r["n_ctx"], loss)
            grid_ = np.outer(1 + content, per_position).astype(np.float16) if positions_of else None
            S = r["steps"]
            curve = curve_of(r) if curve_of else [(S // 2, 1.05), ((7 * S) // 10, 1.002 if converged else 1.10)]
            for step, factor in curve:
                db.record_eval([record(r, loss * factor, per_position, step=step)])
            db.record_eval([record(r, loss, per_position, windows=windows, grid=grid_)])
            # cooldown branches: (horizon in steps, loss relative to the run's) from anneal_of, else one at half
            for horizon, factor in (anneal_of(r) if anneal_of else [(S // 2, 1.002 if converged else 1.05)]):
                branch = (windows * factor).astype(np.float32)
                db.record_anneal([{"run_id": r["run_id"], "horizon": horizon, "start": (4 * horizon) // 5,
                                   "tokens": horizon * r["batch_size"] * r["n_ctx"], "flops_exact": 1.0,
                                   "evals": {"validation": {"loss": float(branch.mean()), "se": 0.001,
                                                            "bits_per_byte": 1.0}},
                                   "per_window": {"validation": branch}}])
    return sw


def verdicts(directory, tmp_path, latency=False):
    import matplotlib.pyplot as plt

    sections = report.build_sections(directory, tmp_path / "out", latency=latency, n_bootstrap=100, baselines=False)
    plt.close("all")
    return {s.name: s for s in sections}


def outcomes(sec, word):
    """The outcomes of the section's verdicts whose claim contains word."""
    return [v.outcome for v in sec.decisions if word in v.claim]


SIZE = {"name": "size", "base": {"model": {"n_ctx": 32}, "train": TRAIN},
        "axis": [{"key": "model.n_layer", "values": [2, 4]},
                 {"zip": {"model.d_model": [32, 64, 128], "model.n_heads": [2, 4, 8]}}]}


@pytest.mark.parametrize("loss, converged, outcome", [
    (lambda r: (1e9 / r["N"]) ** 0.08, True, "supports"),
    (lambda r: (r["N"] / 1e3) ** 0.05, True, "contradicts"),  # loss rises with N
    (lambda r: (1e9 / r["N"]) ** 0.08, False, "inconclusive"),  # still improving: not converged
])
def test_size_verdicts_take_all_three_values(tmp_path, loss, converged, outcome):
    synthetic_sweep(tmp_path / "size", SIZE, loss, converged=converged)
    sec = verdicts(tmp_path / "size", tmp_path)["size"]
    assert outcomes(sec, "power of non-embedding N") == [outcome]
    if outcome == "supports":
        assert sec.numbers[0][1] == "0.080"
        assert outcomes(sec, "collapses the depths") == ["supports"]
    if outcome == "inconclusive":
        assert "not converged" in sec.decisions[0].reason


@pytest.mark.parametrize("loss, outcome", [
    (lambda r: (1e9 / r["N"]) ** 0.08, "supports"),  # one power law
    (lambda r: 1.5 + (2e4 / r["N"]) ** 0.5, "contradicts"),  # an irreducible term bends it: the exponent falls
])
def test_the_power_law_is_tested_against_a_bent_alternative(tmp_path, loss, outcome):
    synthetic_sweep(tmp_path / "size", SIZE, loss)
    sec = verdicts(tmp_path / "size", tmp_path)["size"]
    assert outcomes(sec, "one power law over the range") == [outcome], sec.verdicts
    assert "(direction only)" in next(v for v in sec.verdicts if "power of non-embedding N" in v)
    assert "interval from measurement" in next(v for v in sec.verdicts if "power of non-embedding N" in v)


def test_l_n_extrapolated_to_infinite_data_from_the_cooldown_branches(tmp_path):
    """Runs still improving (so L(N) is not decided on them) whose annealed horizons follow
    L(N, D) = L_inf(N) + B D^-0.5 with L_inf = (1e9/N)^0.08: the extrapolation recovers L_inf and its exponent."""
    L_inf = lambda r: (1e9 / r["N"]) ** 0.08
    tokens = lambda r, steps: steps * r["batch_size"] * r["n_ctx"]
    law = lambda r, steps: L_inf(r) + 20 / tokens(r, steps) ** 0.5
    S = TRAIN["steps"]
    anneal_of = lambda r: [(S // 2 ** k, law(r, S // 2 ** k) / law(r, S)) for k in (4, 3, 2, 1)]
    synthetic_sweep(tmp_path / "size", SIZE, lambda r: law(r, S), converged=False, anneal_of=anneal_of, window_sd=0.01)
    sec = verdicts(tmp_path / "size", tmp_path)["size"]
    assert outcomes(sec, "power of non-embedding N") == ["inconclusive"]  # not converged
    name, value, ci, _ = next(n for n in sec.numbers if n[0].startswith("alpha_N of L(N, D -> inf)"))
    assert float(value) == pytest.approx(0.08, abs=0.005)
    assert outcomes(sec, "L(N, D -> inf), extrapolated") == ["supports"], sec.verdicts
    rows = next(rows for h, rows in sec.tables if h[1].startswith("L_inf"))
    by_n = {int(r[0].replace(",", "")): float(r[1]) for r in rows}
    for n, v in by_n.items():
        assert v == pytest.approx((1e9 / n) ** 0.08, rel=0.02)


SHAPE = {"name": "shape", "base": {"model": {"n_ctx": 32}, "train": TRAIN},
         "axis": [{"generator": "shape_grid", "N": [1e5, 4e5], "aspect_ratio": 16, "d_head": 8,
                   "aspect_ratios": [4, 64], "ff_ratios": [1], "d_heads": [16]}]}


@pytest.mark.parametrize("excess, outcome", [(1.03, "supports"), (1.10, "contradicts"), (1.05, "inconclusive")])
def test_shape_spread_verdict_takes_all_three_values(tmp_path, excess, outcome):
    # Every shape on L(N) exactly, except the ff_ratio = 1 runs, above it by `excess`.
    loss = lambda r: (1e9 / r["N"]) ** 0.08 * (excess if r["d_ff"] == r["d_model"] else 1.0)
    synthetic_sweep(tmp_path / "shape", SHAPE, loss)
    sec = verdicts(tmp_path / "shape", tmp_path)["shape"]
    assert outcomes(sec, "shape") == [outcome], sec.verdicts
    if outcome == "supports":
        spreads = [n for n in sec.notes if n.startswith("Loss spread")]
        assert len(spreads) == 2 and all(" 3.0% " in n for n in spreads), spreads


LSTM = {"name": "lstm", "base": {"model": {"n_ctx": 128}, "train": TRAIN},
        "axis": [{"zip": {"model.kind": ["transformer", "lstm"], "model.n_layer": [2, 2]}},
                 {"generator": "sizes", "N_min": 2e4, "N_max": 2e5, "count": 3, "n_layer": 2, "d_head": 8}]}


@pytest.mark.parametrize("growth, converged, outcome", [(0.02, True, "supports"), (-0.02, True, "contradicts"),
                                                         (0.02, False, "inconclusive")])
def test_lstm_verdicts_take_all_three_values(tmp_path, growth, converged, outcome):
    t = np.arange(1, 129)

    def positions(r):  # Transformers improve over the whole context; LSTMs stop at token 20 (or do not, below)
        stop = 20 if growth > 0 else 10_000
        return 3.0 * (t if r["kind"] == "transformer" else np.minimum(t, stop)) ** -0.1

    def loss(r):
        base = (1e9 / r["N"]) ** 0.08
        return base if r["kind"] == "transformer" else base * (1.1 + growth * np.log10(r["N"] / 1e4))

    synthetic_sweep(tmp_path / "lstm", LSTM, loss, positions, converged=converged)
    sec = verdicts(tmp_path / "lstm", tmp_path)["lstm"]
    assert outcomes(sec, "deficit") == [outcome], sec.verdicts
    # Where both families improve alike over the context, the paired difference is zero, outside "> 0".
    assert outcomes(sec, "keep improving later") == [outcome]
    # The paired difference by log-spaced position bin, against the planted per-position curves: the window
    # content multiplies both models alike, so the ratio of bin means is the ratio of the planted curves.
    header, rows = next(tbl for tbl in sec.tables if tbl[0][0].startswith("position"))
    assert [r[0] for r in rows] == ["1", "2-3", "4-7", "8-15", "16-31", "32-63", "64-127", "128"]
    stop = 20 if growth > 0 else 10_000
    for row, (lo, hi) in zip(rows, [(1, 1), (2, 3), (4, 7), (8, 15), (16, 31), (32, 63), (64, 127), (128, 128)]):
        tt = t[lo - 1:hi]
        expect = 100 * (np.mean(np.minimum(tt, stop) ** -0.1) / np.mean(tt ** -0.1) - 1)
        assert float(row[1].rstrip("%")) == pytest.approx(expect, abs=0.02)


RECURRENT = {"name": "recurrent", "base": {"model": {"n_ctx": 32}, "train": TRAIN},
             "axis": [{"zip": {"model.kind": ["transformer"] * 5 + ["universal"] * 2,
                               "model.n_layer": [2] * 7, "model.reuse": [1] * 5 + [2, 2],
                               "model.d_model": [16, 32, 48, 64, 96, 32, 64]}}]}


@pytest.mark.parametrize("factor, converged, per_parameter, per_flop", [
    (0.97, True, "supports", "supports"),  # 3% better at equal N; reuse 2x doubles C, worth ~5% on L(C)
    (1.05, True, "contradicts", "supports"),
    (0.90, True, "supports", "contradicts"),  # so much better that it wins per FLOP too
    (0.97, False, "inconclusive", "inconclusive"),
])
def test_recurrent_verdicts_take_all_three_values(tmp_path, factor, converged, per_parameter, per_flop):
    loss = lambda r: (1e9 / r["N"]) ** 0.08 * (factor if r["kind"] == "universal" else 1.0)
    synthetic_sweep(tmp_path / "recurrent", RECURRENT, loss, converged=converged)
    sec = verdicts(tmp_path / "recurrent", tmp_path)["recurrent"]
    assert outcomes(sec, "better per parameter") == [per_parameter], sec.verdicts
    assert outcomes(sec, "worse per training FLOP") == [per_flop], sec.verdicts


DATA = {"name": "data", "base": {"model": {"n_ctx": 32}, "train": TRAIN},
        "axis": [{"zip": {"model.d_model": [16, 32, 64], "model.n_heads": [2, 2, 4]}},
                 {"generator": "data_sizes", "values": [3000, 10000, 30000, 100000]}]}


def stops_early(r):
    """A validation curve that reaches its best at 40% of the run, then rises at the next three evaluations."""
    S = r["steps"]
    return [(S // 5, 1.10), ((2 * S) // 5, 0.98), (S // 2, 0.99), ((3 * S) // 5, 0.995), ((4 * S) // 5, 0.998)]


@pytest.mark.parametrize("alpha_n, alpha_d, stops, outcome, quantitative", [
    (0.076, 0.103, True, "supports", "supports"),  # N^0.74
    (0.15, 0.08, True, "contradicts", "contradicts"),  # N^1.9
    (0.03, 0.103, True, "supports", "contradicts"),  # N^0.29: sub-linear, but far from Kaplan's 0.74
    (0.076, 0.103, False, "inconclusive", "inconclusive"),  # no run stopped early: not the data-limited corner
])
def test_data_verdict_takes_all_three_values(tmp_path, alpha_n, alpha_d, stops, outcome, quantitative):
    law = lambda r: ((1e7 / r["N"]) ** (alpha_n / alpha_d) + 1e4 / r["D"]) ** alpha_d
    synthetic_sweep(tmp_path / "data", DATA, law, converged=False, curve_of=stops_early if stops else None)
    sec = verdicts(tmp_path / "data", tmp_path)["data"]
    assert outcomes(sec, "sub-linearly") == [outcome], sec.verdicts
    assert outcomes(sec, "Kaplan's 0.74") == [quantitative], sec.verdicts
    header, rows = next(t for t in sec.tables if t[0][0] == "run" and "early stop" in t[0][3])
    assert all(row[3] == ("16" if stops else "did not stop") for row in rows)  # 40% of 40 steps


def test_data_section_stops_early_on_validation_not_test(tmp_path):
    """Test and validation disagree about the best step: the reported loss is test at the best validation step."""
    spec = {**DATA, "axis": [DATA["axis"][0], {"generator": "data_sizes", "values": [3000, 30000]}]}
    sw = synthetic_sweep(tmp_path / "data", spec, lambda r: 3.0)
    with results.ResultsDB(tmp_path / "data") as db:
        row = sweep.run_row(sw.runs[0], "g")
        rec = record(row, 2.5, step=20)
        rec["test_loss"] = 9.0  # the step validation picks has a bad test loss...
        db.record_eval([rec])
        rec = record(row, 3.0, step=28)
        rec["test_loss"], rec["val_loss"] = 1.0, 3.5  # ...and test's own best step is not picked
        db.record_eval([rec])
        db.mark([row["run_id"]], "done")
    exp = [e for e in report.find_experiments(tmp_path / "data")][0]
    runs = exp.runs.set_index("run_id")
    assert runs.loc[row["run_id"], "best_val_step"] == 20
    assert runs.loc[row["run_id"], "best_test_loss"] == 1.0  # (stored, never used for selection)
    best = results.test_at_best_validation(exp.runs, exp.curves)  # what the data section and `jscale fit` report
    assert best[exp.runs["run_id"] == row["run_id"]].item() == 9.0


COMPUTE = {"name": "compute", "base": {"model": {"n_ctx": 32}, "train": {**TRAIN, "steps": 200, "warmup_steps": 2}},
           "axis": [{"generator": "isoflop", "budgets": [3e10, 1e11, 3e11], "convention": "all", "min_steps": 5,
                     "sizes": {"N_min": 8e3, "N_max": 3e5, "count": 5, "aspect_ratio": 16, "d_head": 8}}]}


@pytest.mark.parametrize("E, overfit, outcome", [
    (0.0, False, "supports"),  # L = (C_c / C)^0.1 along every curve: one power law
    (3.0, False, "contradicts"),  # L = E + (C_c / C)^0.3 with E near the losses reached: the exponent flattens
    (0.0, True, "inconclusive"),  # curves rising before the end: not learning curves in their regime
])
def test_compute_frontier_verdict_takes_all_three_values(tmp_path, monkeypatch, E, overfit, outcome):
    from jscale.report import compute

    monkeypatch.setattr(compute, "xla_flops_per_token", lambda cfg: 1.0)  # the FLOP-count table is tested below
    exact = {}

    def law(N_total, tokens):  # the loss as a function of the exact training compute alone
        C = exact[N_total] * tokens
        return E + (1e11 / C) ** 0.3 if E else (1e16 / C) ** 0.1

    for run in sweep.expand(COMPUTE).runs:
        from jscale import accounting
        exact[accounting.account(run.cfg.model).N_total] = accounting.account(run.cfg.model).train_flops_exact
    fractions = (0.25, 0.4, 0.55, 0.7, 0.85)

    def curve(r):
        points = [(int(r["steps"] * f), law(r["N_total"], r["tokens"] * f) / law(r["N_total"], r["tokens"]))
                  for f in fractions]
        return points[:-1] + [(points[-1][0], 0.97)] if overfit else points

    synthetic_sweep(tmp_path / "compute", COMPUTE, lambda r: law(r["N_total"], r["tokens"]), curve_of=curve)
    sec = verdicts(tmp_path / "compute", tmp_path)["compute"]
    assert outcomes(sec, "one power law") == [outcome], sec.verdicts
    assert any("shown, not judged" in q for q, *_ in sec.numbers)


def test_compute_recovers_chinchillas_allocation_on_exact_flops_and_checks_flop_counts(tmp_path):
    spec = COMPUTE
    E, A, B, alpha, beta = 1.0, 50.0, 80.0, 0.3, 0.3  # a = beta / (alpha + beta) = 0.5
    law = lambda N, tokens: E + A / N ** alpha + B / tokens ** beta
    # Learning curves for the frontier and the envelope: the same law at earlier evaluations.
    curve = lambda r: [(int(r["steps"] * f), law(r["N_total"], r["tokens"] * f) / law(r["N_total"], r["tokens"]))
                       for f in (0.25, 0.5, 0.7)]
    synthetic_sweep(tmp_path / "compute", spec, lambda r: law(r["N_total"], r["tokens"]), curve_of=curve)
    sec = verdicts(tmp_path / "compute", tmp_path)["compute"]
    numbers = {q: (ours, ci) for q, ours, ci, _ in sec.numbers}
    assert float(numbers["N_opt ~ C^a, approach 3 (parametric) (N all parameters; shown, not judged)"][0]) == \
        pytest.approx(0.5, abs=0.01)
    assert float(numbers["N_opt ~ C^a, approach 2 (IsoFLOP) (N all parameters; shown, not judged)"][0]) == \
        pytest.approx(0.5, abs=0.15)
    # tokens per parameter at each bracketed IsoFLOP minimum, with D from the exact FLOPs per token
    tpp = [(q, ours) for q, (ours, _) in numbers.items() if q.startswith("IsoFLOP budget")]
    assert len(tpp) == 3 and all(float(ours.split(", ")[1]) > 0 for _, ours in tpp)
    assert any(q.startswith("alpha_C of the frontier") and "exact C" in q for q in numbers)
    assert any(q.startswith("alpha_C with C = 6ND instead") for q in numbers) or any(
        "With C = 6ND" in n for n in sec.notes)
    header, rows = [t for t in sec.tables if t[0][-1] == "XLA / exact"][0]
    # XLA's count of the compiled step is within a few percent of the exact count (dense attention adds a little).
    assert all(0.95 < float(row[-1]) < 1.3 for row in rows)
    assert any("XLA counts" in n for n in sec.notes)


EFFICIENCY = {"name": "efficiency", "base": {"model": {"n_ctx": 16, "n_layer": 1, "n_heads": 4}, "train": TRAIN},
              "axis": [{"key": "model.d_model", "values": [16, 32]}, {"key": "model.n_kv_heads", "values": [4, 1]}]}


@pytest.mark.parametrize("mqa_cost, outcome", [(0.003, "supports"), (0.03, "contradicts"), (0.01, "inconclusive")])
def test_efficiency_attention_verdict_takes_all_three_values(tmp_path, mqa_cost, outcome):
    loss = lambda r: (3.0 - 0.01 * r["d_model"]) * (1 + (mqa_cost if "KV=1" in r["name"] else 0.0))
    synthetic_sweep(tmp_path / "efficiency", EFFICIENCY, loss)
    sec = verdicts(tmp_path / "efficiency", tmp_path)["efficiency"]
    assert outcomes(sec, "multi-query attention loses no more than 1%") == [outcome] * 2, sec.verdicts


def test_report_writes_a_self_contained_page_and_a_markdown_summary(tmp_path, jscale_here):
    synthetic_sweep(tmp_path / "runs" / "efficiency", EFFICIENCY,
                    lambda r: 3.0 - 0.01 * r["d_model"] + (0.03 if "KV=1" in r["name"] else 0.0))
    out = tmp_path / "report"
    jscale_here("report", str(tmp_path / "runs"), "--out", str(out), "--bootstrap", "50", "--no-baselines", check=0)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 and 'src="figures/' not in page
    # rendered from report.md by a Markdown library: no markup leaks into the page as text
    text = re.sub(r"<[^>]+>", "", re.sub(r"<code>.*?</code>", "", page))
    assert "`" not in text and "**" not in text and "|---|" not in text and "![" not in text
    assert "<code>efficiency</code>" in page and "<strong>inconclusive</strong>" in page and "<table>" in page
    md = (out / "report.md").read_text()
    assert "| d_model 16: multi-query against multi-head attention (1 and 1 seeds) | loss +1.1%" in md  # 2.87 vs 2.84
    assert "multi-query attention loses no more than 1%" in md and "**inconclusive**" in md  # +1.06% ± noise
    assert "![efficiency pareto](figures/efficiency-pareto.png)" in md
    assert (out / "figures/efficiency-pareto.png").exists()
    assert (out / "efficiency-runs.csv").read_text().count("\n") == 5
    # the FLOP-accounting section (no sweep of its own): the smallest transformer's 6N, exact and XLA counts
    # at a glance: a table of contents and every verdict in one table at the top, linked to its section
    top = md.split("\n## ")[0]
    assert "Sections: [" in top and "(#section-efficiency)" in top and "Every verdict (" in top
    assert "| [efficiency](#section-efficiency) | d_model 16: multi-query attention loses no more than 1%" in top
    assert 'id="section-efficiency"' in page and "(quantitative)" in top
    flops = md.split("## FLOP accounting against the compiled step")[1]
    row = next(line for line in flops.splitlines() if line.startswith("| transformer |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    six_n, exact, xla = (float(cells[i].replace(",", "")) for i in (5, 6, 7))
    assert six_n == 6 * float(cells[4].replace(",", "")) and exact > six_n  # attention and unembedding added
    assert float(cells[8]) == pytest.approx(xla / six_n, abs=0.01) and float(cells[9]) == pytest.approx(xla / exact,
                                                                                                         abs=0.001)
    latencies = json.loads((out / "latency.json").read_text())
    assert len(latencies) == 4 and all(v["seconds_per_token"] > 0 for v in latencies.values())


def test_measurement_table_sets_each_run_beside_the_ngram_baselines(tmp_path, text_corpus):
    spec = {**SIZE, "base": {**SIZE["base"], "data": {"corpus": str(text_corpus), "eval_windows": 16,
                                                      "cache_dir": str(tmp_path / "cache")}}}
    # A tuned sweep: its pilot runs are in the database, finished, and must never be reported.
    tuned = {**spec, "tune": {"grid": {"train.lr": [1e-3, 2e-3]}}}
    sw = synthetic_sweep(tmp_path / "size", tuned, lambda r: (1e9 / r["N"]) ** 0.08)
    assert sum(r.role == "pilot" for r in sw.runs) == 12
    sec = report.build_sections(tmp_path / "size", tmp_path / "out", latency=False, n_bootstrap=50)[0]
    header, rows = [t for t in sec.tables if "tokens/param" in t[0]][0]
    assert header[-3:] == ["vs 2-gram", "vs 3-gram", "vs 5-gram"] and len(rows) == 6
    assert all(row[header.index("regime")] == "converged" for row in rows)
    assert all(row[header.index("annealed improvement per doubling (95% CI)")].startswith("0.20%") for row in rows)
    assert any(n.startswith("n-gram baselines") for n in sec.notes)
    assert not any(r[0].startswith("pilot") for r in rows)


def test_report_on_a_directory_without_sweeps_is_one_line(tmp_path, jscale_here):
    proc = jscale_here("report", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"jscale: error: {tmp_path}: no jscale sweep directories here (no results.sqlite "
                                   f"in it or its subdirectories)")


@pytest.mark.parametrize("loss, converged, outcome", [
    (lambda r: (1e9 / r["N"]) ** 0.08, True, "supports"),
    (lambda r: (r["N"] / 1e3) ** 0.05, True, "contradicts"),
    (lambda r: (1e9 / r["N"]) ** 0.08, False, "inconclusive"),
])
def test_a_sweep_without_its_own_section_gets_an_L_of_N_fit(tmp_path, loss, converged, outcome):
    spec = {"name": "quickstart", "base": {"model": {"n_ctx": 32}, "train": TRAIN},
            "axis": [{"generator": "sizes", "N_min": 5e3, "N_max": 2e5, "count": 5, "aspect_ratio": 16, "d_head": 8}]}
    synthetic_sweep(tmp_path / "qs", spec, loss, converged=converged)
    sec = verdicts(tmp_path / "qs", tmp_path)["quickstart"]
    assert [v.outcome for v in sec.decisions] == [outcome]
    if outcome == "supports":
        assert sec.numbers[0][1] == "0.080" and "loss_vs_N" in sec.figures


def test_tick_labels_keep_two_significant_digits():
    from jscale import plots

    assert [plots._short(v) for v in (1.5e4, 2e4, 2.5e4, 1e5, 3.0, 0.25)] == ["1.5e4", "2e4", "2.5e4", "1e5", "3",
                                                                                "0.25"]


def test_a_slim_copy_of_a_sweep_gives_the_same_report(tmp_path):
    """experiments/slim_results.py (what experiments/results/*/sweeps hold): per-position losses and claims dropped,
    no -wal/-shm beside the database, and the report's numbers unchanged."""
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("slim_results", REPO / "experiments" / "slim_results.py")
    slim = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(slim)
    synthetic_sweep(tmp_path / "runs" / "size", SIZE, lambda r: (1e9 / r["N"]) ** 0.08,
                    positions_of=lambda r: np.linspace(3.0, 2.0, r["n_ctx"]))
    assert slim.main([str(tmp_path / "runs"), str(tmp_path / "slim")]) == 0
    copy = tmp_path / "slim" / "size"
    assert sorted(p.name for p in copy.iterdir()) == ["results.sqlite", "sweep.json"]
    import sqlite3

    with sqlite3.connect(copy / "results.sqlite") as conn:
        assert conn.execute("SELECT count(*), count(positions) FROM windows").fetchone()[1] == 0
    with sqlite3.connect(tmp_path / "runs" / "size" / "results.sqlite") as conn:
        assert conn.execute("SELECT count(positions) FROM windows").fetchone()[0] > 0  # the original keeps them
    before, after = verdicts(tmp_path / "runs", tmp_path / "a"), verdicts(tmp_path / "slim", tmp_path / "b")
    assert [(v.claim, v.outcome, v.estimate) for v in before["size"].decisions] == \
        [(v.claim, v.outcome, v.estimate) for v in after["size"].decisions]
    assert before["size"].numbers == after["size"].numbers
    # --keep-positions keeps final runs' per-position losses (the LSTM analysis reads them), not pilots'
    with sqlite3.connect(tmp_path / "runs" / "size" / "results.sqlite") as conn:
        conn.execute("UPDATE runs SET role = 'pilot' WHERE run_id = (SELECT min(run_id) FROM windows)")
    assert slim.main([str(tmp_path / "runs"), str(tmp_path / "kept"), "--keep-positions", "size"]) == 0
    with sqlite3.connect(tmp_path / "kept" / "size" / "results.sqlite") as conn:
        kept = dict(conn.execute("SELECT r.role, count(w.positions) FROM windows w JOIN runs r USING (run_id) "
                                 "GROUP BY r.role").fetchall())
    assert kept["pilot"] == 0 and kept["final"] > 0
    (tmp_path / "empty").mkdir()
    assert slim.main([str(tmp_path / "empty"), str(tmp_path / "x")]) == 2  # no sweep there: one line, status 2


def test_the_summary_table_cuts_a_reason_at_its_first_clause():
    from jscale.report.page import _brief

    why = ("not in its regime: 16 of 16 runs not converged: the annealed validation loss still improves 9.05% to "
           "11.83% per doubling of tokens (the claim needs < 1%) at 1.07 to 14.3 tokens per parameter; interval "
           "from measurement 0.0269 to 0.0416")
    assert _brief(why).endswith("at 1.07 to 14.3 tokens per parameter ...")
    assert _brief("the interval straddles the claim's threshold") == "the interval straddles the claim's threshold"
    long = _brief("word " * 100)
    assert len(long) <= 224 and long.endswith("word ...")


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("google-chrome")) or not shutil.which("chromedriver")
                    or importlib.util.find_spec("selenium") is None,
                    reason="needs Chromium, chromedriver and selenium (experiments/check_report.py says how)")
def test_the_committed_report_reads_at_a_glance_in_a_real_browser(tmp_path):
    from conftest import REPO

    script = REPO / "experiments" / "check_report.py"
    report = REPO / "experiments" / "results" / "cpu" / "report.html"
    p = subprocess.run([sys.executable, str(script), str(report), "--png", str(tmp_path / "top.png")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "figures decoded" in p.stdout and (tmp_path / "top.png").stat().st_size > 10_000
    broken = tmp_path / "broken.html"  # a table-of-contents link to an anchor that is not there is caught
    broken.write_text(report.read_text().replace('id="section-size"', 'id="section-elsewhere"', 1))
    p = subprocess.run([sys.executable, str(script), str(broken)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "missing anchors: section-size" in p.stdout
