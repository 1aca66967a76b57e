"""The benchmark scripts run end to end (tiny sizes, on the CPU) so that they cannot rot before a GPU runs them,
and `jscale plan`'s wall-time estimate follows the work it is given."""

import json
import math
import shutil
import subprocess
import sys

import pytest

from conftest import REPO
from jscale import accounting, sweep, throughput


def test_gpu_benchmark_smoke_runs_every_section(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# existing results\n")
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke", "--results", str(results)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# existing results\n")  # appended, nothing lost
    assert "failed:" not in text and "skipped: the" not in text, text
    sections = text.split("\n### ")[1:]
    assert len(sections) == 6
    for section in sections:  # every section produced a table with at least one measured row
        rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("|---")]
        assert len(rows) >= 2, section
    probes = sections[-1]
    experiments = {p.stem for p in (REPO / "experiments").glob("*.toml")} - {"train_small"}
    assert all(f"| {name} |" in probes for name in experiments), probes


MEASURED = {"date": "2026-11-28", "probes": [
    {"kind": "transformer", "flops_per_step": 1e8, "seconds_per_step": 0.01, "compile_s": 5.0},
    {"kind": "transformer", "flops_per_step": 1e9, "seconds_per_step": 0.04, "compile_s": 5.0},
    {"kind": "lstm", "flops_per_step": 1e8, "seconds_per_step": 0.02, "compile_s": 3.0}]}


def test_the_estimate_follows_the_work(repo):
    spec = {"name": "s", "base": {"model": {"n_ctx": 64}, "data": {"eval_windows": 64, "curve_eval_windows": 0},
                                  "train": {"batch_size": 32, "steps": 500, "warmup_steps": 30, "eval_every": 100,
                                            "checkpoint_every": 100}},
            "axis": [{"generator": "sizes", "N_min": 5e3, "N_max": 2e5, "count": 4, "aspect_ratio": 16, "d_head": 16}]}
    sw = sweep.expand(spec)
    twice = sweep.expand(spec, overrides=["train.steps=1000"])
    a = throughput.estimate(sw.groups(1), MEASURED)
    b = throughput.estimate(twice.groups(1), MEASURED)
    assert b["train"] == pytest.approx(2 * a["train"]) and b["eval"] == pytest.approx(2 * a["eval"])
    assert b["compile"] == a["compile"] == pytest.approx(len(sw.groups(1)) * 13 / 3)
    # overhead 6.67 ms and 30 GFLOP/s from the two Transformer probes, by hand:
    g = sw.groups(1)[0]
    from jscale import accounting

    flops = g.cfg.train.batch_size * g.cfg.model.n_ctx * accounting.account(g.cfg.model).train_flops_exact
    one = throughput.estimate([g], MEASURED)["train"]
    assert one == pytest.approx(g.cfg.train.steps * (0.01 - 1e8 / 3e10 + flops / 3e10), rel=1e-6)


def test_plan_measures_once_then_reads_the_cache(tmp_path, monkeypatch, jscale_here):
    monkeypatch.setitem(throughput.PROBES, "cpu", [("transformer", 1, 16, 16, 2), ("lstm", 1, 16, 16, 2)])
    monkeypatch.setenv("JSCALE_CACHE", str(tmp_path))
    measured = throughput.table(log=lambda line: None)
    assert [r["kind"] for r in measured["probes"]] == ["transformer", "lstm"]
    assert all(r["seconds_per_step"] > 0 and r["flops_per_step"] > 0 for r in measured["probes"])
    cached = json.loads((tmp_path / "throughput-v4.json").read_text())
    assert cached[throughput.device_key()] == measured
    monkeypatch.setattr(throughput, "measure", lambda: pytest.fail("measured again"))
    assert throughput.table() == measured
    p = jscale_here("plan", str(REPO / "experiments" / "quickstart.toml"), check=0)  # measuring again would fail
    assert "estimated wall time on cpu" in p.stdout and "measuring" not in p.stdout
    assert "timing 3 of this sweep's model shapes" in p.stdout  # its own shapes, once
    timed = json.loads((tmp_path / "throughput-v4.json").read_text())[throughput.device_key()]["shapes"]
    assert len(timed) == 3 and all(r["seconds_per_step"] > 0 and r["compile_s"] > 0 for r in timed.values())
    again = jscale_here("plan", str(REPO / "experiments" / "quickstart.toml"), check=0)
    estimate = lambda out: next(line for line in out.splitlines()  # (less what other processes take of the CPU now)
                                if line.startswith("estimated wall time")).split("; other processes are using")[0]
    assert "(timing " not in again.stdout and estimate(again.stdout) == estimate(p.stdout)


TUNED = {"name": "s", "seeds": 2, "tune": {"grid": {"train.lr": [1e-3, 3e-3]}, "fraction": 0.5},
         "base": {"model": {"n_ctx": 64}, "data": {"eval_windows": 64, "curve_eval_windows": 0},
                  "train": {"batch_size": 32, "steps": 400, "warmup_steps": 30, "eval_every": 100,
                            "checkpoint_every": 100}},
         "axis": [{"zip": {"model.d_model": [16, 64], "model.n_heads": [1, 4]}}]}


def test_the_workers_estimate_deals_groups_as_the_workers_claim_them(repo):
    """`jscale plan --workers N`: each group, in the sweep's order, goes to the worker free soonest, the tuned final
    runs start when the last pilot ends, and a worker pays a shape's compile once. Checked against the one-process
    estimate of each group, dealt by hand."""
    sw = sweep.expand(TUNED)
    groups = sw.groups(1)
    pilots = [g for g in groups if not any(r.awaits_tuning for r in g.runs)]
    finals = [g for g in groups if any(r.awaits_tuning for r in g.runs)]
    assert len(pilots) == 4 and len(finals) == 4  # two points: 2 learning rates and 2 seeds each
    k = 13 / 3  # MEASURED's compile time a shape
    cost = {g.group_id: sum(throughput.estimate([g], MEASURED)[part] for part in ("train", "eval")) for g in groups}
    by = lambda stage, d: [cost[g.group_id] for g in stage if g.cfg.model.d_model == d]
    # the sweep's order (group_runs'), which the hand dealing below follows
    assert [g.cfg.model.d_model for g in pilots] == [64, 64, 16, 16]
    assert [g.cfg.model.d_model for g in finals] == [16, 16, 64, 64]
    p16, p64, f16, f64 = by(pilots, 16)[0], by(pilots, 64)[0], by(finals, 16)[0], by(finals, 64)[0]
    # two workers: each takes a d_model 64 pilot (compiling it), then a d_model 16 one (compiling that)
    pilots_end = 2 * k + p16 + p64
    # then a d_model 16 final each and a d_model 64 one each: both shapes compiled already
    finals_end = pilots_end + f16 + f64
    two = throughput.estimate_workers(groups, MEASURED, 2)
    assert two["total"] == pytest.approx(finals_end)
    assert two["compile"] == pytest.approx(4 * k)  # each worker compiles both shapes
    one = throughput.estimate(groups, MEASURED)
    assert two["train"] + two["eval"] == pytest.approx(one["train"] + one["eval"])  # the same work, dealt out
    # one worker is one process: the same seconds as the one-process estimate
    assert throughput.estimate_workers(groups, MEASURED, 1)["total"] == pytest.approx(one["total"])
    # as many workers as groups in a stage: each stage takes its longest group; workers 0 and 1 trained d_model 64
    # pilots and get d_model 16 finals, 2 and 3 the other way round: every worker compiles a shape in each stage
    four = throughput.estimate_workers(groups, MEASURED, 4)
    assert four["total"] == pytest.approx(2 * k + max(p16, p64) + max(f16, f64))
    assert four["compile"] == pytest.approx(8 * k)


def test_plan_estimates_workers_from_one_workers_steps_timed_on_its_core(tmp_path, monkeypatch):
    """`jscale plan --workers 2` (a real process) starts `jscale plan --cpus 0`, which times on one core the shape
    the cache does not hold under the one-core key, and prints the workers' estimate from that entry."""
    from jscale import cpuload
    from jscale.train import member_shape_key

    if cpuload.cores() < 2:
        pytest.skip("two workers need two cores")
    spec = tmp_path / "tuned.toml"
    spec.write_text('name = "s"\nseeds = 2\n[tune]\ngrid = { "train.lr" = [1e-3, 3e-3] }\nfraction = 0.5\n'
                    '[base.model]\nn_ctx = 64\n[base.data]\neval_windows = 64\ncurve_eval_windows = 0\n'
                    '[base.train]\nbatch_size = 32\nsteps = 400\nwarmup_steps = 30\neval_every = 100\n'
                    'checkpoint_every = 100\n[[axis]]\n'
                    'zip = { "model.d_model" = [16, 64], "model.n_heads" = [1, 4] }\n')
    groups = sweep.load(str(spec)).groups(1)
    small, large = (member_shape_key(next(g for g in groups if g.cfg.model.d_model == d).cfg) for d in (16, 64))
    timed = {"flops_per_step": accounting.step_flops(groups[0].cfg), "seconds_per_step": 0.03, "compile_s": 6.0}
    # this process's table whole (so the one-process estimate measures nothing); one core's without the large shape
    cached = {throughput.device_key(): {**MEASURED, "shapes": {small: timed, large: {**timed, "compile_s": 7.0}}},
              throughput.device_key(1): {**MEASURED, "shapes": {small: timed}}}
    monkeypatch.setenv("JSCALE_CACHE", str(tmp_path))
    (tmp_path / "throughput-v4.json").write_text(json.dumps(cached))
    p = subprocess.run([sys.executable, "-m", "jscale", "plan", str(spec), "--workers", "2"], capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    after = json.loads((tmp_path / "throughput-v4.json").read_text())
    assert after[throughput.device_key()] == cached[throughput.device_key()]  # read, not measured again
    one_core = after[throughput.device_key(1)]
    assert one_core["shapes"][small] == timed and one_core["shapes"][large]["seconds_per_step"] > 0  # timed there
    line = next(ln for ln in p.stdout.splitlines() if "with 2 workers of 1 core each" in ln)
    e = throughput.estimate_workers(groups, one_core, 2)
    fmt = lambda s: f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"
    assert line.startswith(f"estimated wall time on {throughput.device_key()} with 2 workers of 1 core each: "
                           f"{fmt(e['total'])} (worker-time: train {fmt(e['train'])}, eval {fmt(e['eval'])}"), line


def test_the_sweeps_own_timed_shapes_correct_the_estimate(repo):
    """A timed shape's step takes its measured time; a shape not timed takes the model times the measured/modelled
    ratio of the timed shape nearest in FLOPs per step."""
    from jscale.train import member_shape_key

    spec = {"name": "s", "base": {"model": {"n_ctx": 64}, "data": {"eval_windows": 64, "curve_eval_windows": 0},
                                  "train": {"batch_size": 32, "steps": 500, "warmup_steps": 30, "eval_every": 100,
                                            "checkpoint_every": 100}},
            "axis": [{"key": "model.d_model", "values": [16, 32, 128]}, {"key": "model.n_heads", "values": [2]}]}
    groups = sweep.expand(spec).groups(1)
    small, middle, large = (throughput.estimate([g], MEASURED)["train"] for g in groups)
    flops = lambda g: g.cfg.train.batch_size * g.cfg.model.n_ctx * accounting.account(g.cfg.model).train_flops_exact
    timed = {member_shape_key(groups[0].cfg): {"flops_per_step": flops(groups[0]), "compile_s": 7.0,
                                                   "seconds_per_step": 3 * small / groups[0].cfg.train.steps},
             member_shape_key(groups[2].cfg): {"flops_per_step": flops(groups[2]), "compile_s": 9.0,
                                                   "seconds_per_step": 1.5 * large / groups[2].cfg.train.steps}}
    corrected = {**MEASURED, "shapes": timed}
    assert throughput.estimate(groups[:1], corrected)["train"] == pytest.approx(3 * small)
    assert throughput.estimate(groups[2:], corrected)["train"] == pytest.approx(1.5 * large)
    nearest = 3 if abs(math.log(flops(groups[1]) / flops(groups[0]))) < abs(math.log(flops(groups[1]) /
                                                                                   flops(groups[2]))) else 1.5
    assert throughput.estimate(groups[1:2], corrected)["train"] == pytest.approx(nearest * middle)
    assert throughput.estimate(groups, corrected)["compile"] == pytest.approx(3 * 8.0)  # the timed shapes' mean
    # with every shape of this sweep cached, nothing is timed, and another sweep's cached shape does not take part
    cached = {**timed, member_shape_key(groups[1].cfg): timed[member_shape_key(groups[0].cfg)],
              "another sweep's shape": {"flops_per_step": 1.0, "compile_s": 99.0, "seconds_per_step": 9.0}}
    table = throughput.with_shapes({**MEASURED, "shapes": cached}, groups, log=lambda line: pytest.fail(line))
    assert sorted(table["shapes"]) == sorted(member_shape_key(g.cfg) for g in groups)


TINY_SWEEP = """
name = "tiny"
[base.model]
n_layer = 1
n_heads = 2
n_ctx = 16
[base.data]
eval_windows = 8
[base.train]
batch_size = 8
steps = 8
eval_every = 4
checkpoint_every = 4
warmup_steps = 2
lr = 3e-3
[[axis]]
key = "model.d_model"
values = [16, 32]
"""


def test_gpu_experiments_stop_at_their_budget_resume_and_report(tmp_path):
    """benchmarks/gpu_experiments.py on the CPU: a budget too short for the sweep stops it (SIGTERM) and starts
    nothing after it; the next call resumes it, reports, appends its rows and exports report and slim databases."""
    sweep_file = tmp_path / "tiny.toml"
    sweep_file.write_text(TINY_SWEEP)
    results = tmp_path / "RESULTS.md"
    results.write_text("# existing results\n")
    script = [sys.executable, str(REPO / "benchmarks" / "gpu_experiments.py"), "--scale", "",
              "--runs", str(tmp_path / "runs"), "--report-out", str(tmp_path / "report"),
              "--results", str(results), "--bootstrap", "20", "--min-start-s", "1"]
    sweeps = ["--experiments", str(sweep_file), str(sweep_file)]  # the second start finds no budget left
    first = subprocess.run(script + sweeps + ["--budget-s", "2"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "| tiny | stopped at the budget (resumable: run again) |" in results.read_text()
    assert "| tiny | not started:" in results.read_text()
    second = subprocess.run(script + ["--experiments", str(sweep_file), "--budget-s", "300",
                                      "--export", str(tmp_path / "out")], capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# existing results\n") and "| tiny | finished |" in text and "| report | written |" in text
    assert (tmp_path / "out" / "report" / "report.md").is_file()
    assert (tmp_path / "out" / "sweeps" / "tiny" / "results.sqlite").is_file()
    from jscale import results as db

    runs = db.load(tmp_path / "out" / "sweeps" / "tiny")["runs"]
    assert len(runs) == 2 and set(runs["status"]) == {"done"}


def test_tokenizing_benchmark_smoke_writes_identical_token_files(tmp_path):
    results = tmp_path / "RESULTS.md"
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tokenizing.py"), "--smoke",
                        "--results", str(results)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    text = results.read_text()
    assert "token files identical: True" in text and "| batched, every core (write_token_files) |" in text


def test_long_tier_benchmark_smoke_trains_the_same_sweep_every_way(tmp_path):
    """An earlier revision (here HEAD, a worktree: this code in one process) and this code with --workers 2: the
    same runs, the time line read for the training share, losses compared by (d_model, seed). (--workers-only: this
    code in one process too would repeat HEAD's run; it was a third of the suite's longest test.)"""
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "long_tier.py"), "--smoke", "--steps", "20",
                        "--before", "HEAD", "--workers-only"], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    assert [r["configuration"] for r in rows] == ["HEAD", "now --workers 2"]
    assert rows[0]["tokens"] == rows[1]["tokens"] > 0
    # the cooldown branches' steps are counted with the runs' (each final run branches once at 20 steps)
    assert 0 < rows[0]["branch_tokens"] == rows[1]["branch_tokens"] < rows[0]["tokens"]
    assert all(0 < r["training_share"] < 1 for r in rows)  # --workers: of the workers' seconds
    # --smoke trains one run per group, one core a process, as each worker does: the same losses bitwise
    row = next(line for line in p.stdout.splitlines() if "| now --workers 2 |" in line)
    assert row.endswith("| identical |"), row


def test_steps_per_call_benchmark_smoke_times_both_forms():
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "steps_per_call.py"), "--smoke"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "| d_model 16 | one a call |" in p.stdout and "| d_model 16 | 16 a call |" in p.stdout
    assert "parameters after 16 steps" in p.stdout


def test_first_run_benchmark_smoke_runs_both_revisions(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "first_run.py"), "--before", "HEAD", "--pairs", "1",
                        "--steps", "6", "--sizes", "2"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "pair 0: before" in p.stdout and "pair 0: now" in p.stdout and "first run with empty caches" in p.stdout


def test_gpu_experiments_unpack_the_carried_corpus_and_refuse_a_different_one(tmp_path):
    """The pypi corpus travels to a lent device as corpora/pypi.tar.xz: unpacked when corpora/pypi is missing, each
    split checked against the manifest; an archive whose splits differ is refused and leaves nothing behind."""
    import hashlib
    import importlib.util
    import tarfile

    spec = importlib.util.spec_from_file_location("gpu_experiments", REPO / "benchmarks" / "gpu_experiments.py")
    gpu_experiments = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_experiments)
    made = tmp_path / "made" / "pypi"
    made.mkdir(parents=True)
    splits = {}
    for name, content in (("train.bin", b"def f():\n    return 1\n" * 50), ("val.bin", b"x = 2\n"),
                          ("test.bin", b"y = 3\n")):
        (made / name).write_bytes(content)
        splits[name] = {"file": name, "sha256": hashlib.sha256(content).hexdigest()}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"splits": splits}))
    archive = tmp_path / "pypi.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(made, arcname="pypi")
    corpus = tmp_path / "corpora" / "pypi"
    assert gpu_experiments.unpack_corpus(tmp_path / "none.tar.xz", corpus, manifest).startswith("no ")
    assert gpu_experiments.unpack_corpus(archive, corpus, manifest).startswith("unpacked")
    assert (corpus / "train.bin").read_bytes() == (made / "train.bin").read_bytes()
    assert gpu_experiments.unpack_corpus(archive, corpus, manifest).endswith("already there")
    shutil.rmtree(corpus)
    splits["val.bin"]["sha256"] = "0" * 64
    manifest.write_text(json.dumps({"splits": splits}))
    with pytest.raises(SystemExit, match="val.bin does not match"):
        gpu_experiments.unpack_corpus(archive, corpus, manifest)
    assert not corpus.exists()
