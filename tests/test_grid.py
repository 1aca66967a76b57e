"""The experiment grid: vmapped ensembles, divergence, the results database, crash-proof resume, shards."""

import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import time

import numpy as np
import pytest

from conftest import jscale_cmd, wait_for_training
from jscale import grid, results, sweep

BASE = {"model": {"n_layer": 1, "d_model": 32, "n_heads": 2, "n_ctx": 32}, "data": {"eval_windows": 8},
        "train": {"batch_size": 8, "steps": 40, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10,
                  "checkpoint_every": 20}}

SWEEP_TOML = """
name = "tiny"
[base.model]
n_layer = 1
d_model = 32
n_heads = 2
n_ctx = 32
[base.data]
eval_windows = 8
[base.train]
batch_size = 8
steps = {steps}
lr = 3e-3
warmup_steps = 5
eval_every = 10
checkpoint_every = 20
[[axis]]
key = "train.seed"
values = [0, 1]
[[axis]]
key = "model.d_model"
values = [16, 32]
"""


def make(*axes):
    return sweep.expand({"name": "t", "base": BASE, "axis": list(axes)})


def curves(out):
    with sqlite3.connect(out / "results.sqlite") as c:
        return c.execute("SELECT run_id, step, train_loss, test_loss FROM curves ORDER BY run_id, step").fetchall()


MEMBERS = make({"zip": {"train.seed": [0, 1, 2, 3], "train.lr": [1e-3, 3e-3, 3e-3, 2e-3],
                        "data.max_train_tokens": [3000, 0, 3000, 0]}})


@pytest.fixture(scope="module")
def members_one_by_one(tmp_path_factory):
    """MEMBERS trained one run at a time (the reference of both ensemble modes)."""
    out = tmp_path_factory.mktemp("loop")
    grid.run_sweep(MEMBERS, out, ensemble_size=1, progress=False)
    return curves(out)


@pytest.mark.parametrize("mode", ["vmap", "map"])
def test_ensemble_matches_members_trained_one_by_one(tmp_path, mode, members_one_by_one):
    summary = grid.run_sweep(MEMBERS, tmp_path / "vmap", ensemble_size=8, progress=False, ensemble_mode=mode)
    assert summary["groups"] == 1  # seeds, learning rates and D all vary inside one ensemble
    a, b = curves(tmp_path / "vmap"), members_one_by_one
    assert [r[:2] for r in a] == [r[:2] for r in b] and len(a) == 4 * 4
    np.testing.assert_allclose([r[2:] for r in a], [r[2:] for r in b], rtol=2e-5)
    # Members differ: different seeds, learning rates and data limits give different curves.
    finals = results.load(tmp_path / "vmap")["runs"]["final_test_loss"]
    assert finals.nunique() == 4


def test_a_diverging_member_is_frozen_and_the_others_are_unaffected(tmp_path):
    # (three members each, so that both sweeps train on one compiled step)
    healthy = make({"zip": {"train.seed": [0, 1, 2], "train.lr": [3e-3, 3e-3, 2e-3]}})
    with_bad = make({"zip": {"train.seed": [0, 1, 2], "train.lr": [3e-3, 3e-3, 1e6]}})
    grid.run_sweep(healthy, tmp_path / "healthy", ensemble_size=4, progress=False)
    grid.run_sweep(with_bad, tmp_path / "bad", ensemble_size=4, progress=False)
    runs = results.load(tmp_path / "bad")["runs"].set_index("name")
    assert runs.loc["seed=2 lr=1e+06", "status"] == "diverged"
    assert (runs.drop("seed=2 lr=1e+06")["status"] == "done").all()
    ok = {r[0]: r for r in curves(tmp_path / "healthy")}
    compared = 0
    for run_id, *rest in curves(tmp_path / "bad"):
        if run_id in ok:
            np.testing.assert_allclose(rest, [x for x in curves(tmp_path / "healthy")
                                              if x[0] == run_id and x[1] == rest[0]][0][1:], rtol=2e-5)
            compared += 1
    assert compared == 2 * 4  # the two healthy members' four evaluations
    text = grid.status_table(tmp_path / "bad")
    assert "diverged  1" in text and "done      2" in text


def test_results_load_and_fit_from_a_sweep(tmp_path, jscale_here):
    sw = make({"key": "model.d_model", "values": [16, 32, 48]}, {"key": "model.n_heads", "values": [1]})
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=1, progress=False)
    tables = results.load(tmp_path / "s")
    runs, curves_df, positions = tables["runs"], tables["curves"], tables["positions"]
    assert len(runs) == 3 and (runs["status"] == "done").all()
    assert sorted(runs["N"]) == [12 * 16 ** 2, 12 * 32 ** 2, 12 * 48 ** 2]
    assert len(curves_df) == 12 and set(curves_df.columns) >= {"run_id", "step", "tokens", "flops_6N", "test_loss"}
    assert len(positions) == 12 * 32 and positions["position"].max() == 32
    r = jscale_here("fit", str(tmp_path / "s"), "--law", "kaplan-n", "--n-convention", "non_embedding",
                    "--bootstrap", "10", "--out", str(tmp_path / "f.json"), check=0)
    assert "power fit on 3 points (N: non_embedding" in r.stdout
    jscale_here("fit", str(tmp_path / "s"), "--law", "frontier", "--bootstrap", "0", "--out", str(tmp_path / "g.json"),
                check=0)


def test_a_sweep_resumed_mid_group_compiles_no_initialisation(tmp_path, monkeypatch):
    """Stopped (as by Ctrl-C) after its group's first checkpoint, then run again as a new process would (nothing
    compiled): the resumed group restores its checkpoint, so its init is never compiled."""
    from jscale import interrupts
    from jscale.train import programs

    sw = make({"key": "model.d_model", "values": [16]}, {"key": "model.n_heads", "values": [1]})
    [group] = sweep.group_runs(sw.runs, 1)

    def stop_after_the_first_checkpoint():  # called before the group and before each call of its train steps
        if grid._has_checkpoint(tmp_path / "s", group):
            raise interrupts.Interrupted(signal.SIGINT)

    monkeypatch.setattr(interrupts, "check", stop_after_the_first_checkpoint)
    with pytest.raises(interrupts.Interrupted):
        grid.run_sweep(sw, tmp_path / "s", ensemble_size=1, progress=False)
    assert grid._has_checkpoint(tmp_path / "s", group)  # (so a sweep compiling it ahead leaves out its init)
    assert set(results.load(tmp_path / "s")["runs"]["status"]) == {"running"}
    assert not grid._has_checkpoint(tmp_path / "elsewhere", group)
    monkeypatch.setattr(interrupts, "check", lambda: None)
    monkeypatch.setattr(programs, "_STEPS_CACHE", {})
    monkeypatch.setattr(programs, "_INIT_CACHE", {})
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=1, progress=False)
    assert set(results.load(tmp_path / "s")["runs"]["status"]) == {"done"}
    assert [steps.init.compiled for steps in programs._STEPS_CACHE.values()] == [False] and not programs._INIT_CACHE


def test_the_next_new_shape_compiles_in_the_background_past_a_group_another_job_holds(tmp_path, monkeypatch):
    """Two groups of one shape, then one of another; the second is held by another job (as the other worker of
    --workers holds it): the new shape still compiles in the background thread while the first group trains, not on
    the main thread when its group comes."""
    import threading

    from jscale import train
    from jscale.train import programs

    sw = make({"zip": {"model.d_model": [16, 16, 24], "train.seed": [0, 1, 0]}})
    groups = sweep.group_runs(sw.runs, 1)
    assert [g.cfg.model.d_model for g in groups] == [16, 16, 24]
    compiles, real_compile, real_claim = [], train.compile_steps, results.ResultsDB.claim

    def compile_steps(cfgs, *args, **kwargs):
        compiles.append((cfgs[0].model.d_model, threading.current_thread().name))
        return real_compile(cfgs, *args, **kwargs)

    monkeypatch.setattr(train, "compile_steps", compile_steps)
    monkeypatch.setattr(results.ResultsDB, "claim", lambda db, group_id: group_id != groups[1].group_id
                        and real_claim(db, group_id))
    monkeypatch.setattr(programs, "_STEPS_CACHE", {})
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=1, progress=False)
    first_24 = next(name for d, name in compiles if d == 24)
    assert first_24.startswith("jscale-compile"), compiles
    runs = results.load(tmp_path / "s")["runs"]
    assert sorted(runs[runs["status"] == "done"]["d_model"]) == [16, 24]  # the held group is left to its job


def test_sweep_killed_at_random_points_ends_with_the_uninterrupted_results(tmp_path, jscale_here):
    """Real processes, SIGKILLed at random moments, then the same command until it finishes (the uninterrupted
    sweep and the re-runs after the kills run in this process)."""
    spec = tmp_path / "tiny.toml"
    spec.write_text(SWEEP_TOML.format(steps=60))
    args = lambda out: ("run", str(spec), "--out", str(out), "--quiet", "--ensemble-size", "2")
    cmd = lambda out: jscale_cmd(*args(out))
    rng = random.Random(0)
    kills = 0
    for _ in range(2):
        proc = subprocess.Popen(cmd(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 5.0))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1
    jscale_here(*args(tmp_path / "straight"), check=0)
    jscale_here(*args(tmp_path / "killed"), check=0)
    assert curves(tmp_path / "killed") == curves(tmp_path / "straight")  # bitwise, on CPU
    with sqlite3.connect(tmp_path / "killed" / "results.sqlite") as c:
        assert c.execute("SELECT DISTINCT status FROM runs").fetchall() == [("done",)]
    # A finished sweep trains nothing when run again.
    assert "0 trained now" in jscale_here(*args(tmp_path / "killed"), check=0).stdout


def test_shards_split_the_groups_between_jobs_sharing_one_directory(tmp_path, jscale_here):
    spec = tmp_path / "tiny.toml"
    spec.write_text(SWEEP_TOML.format(steps=20))
    out = tmp_path / "shared"
    procs = [subprocess.Popen(jscale_cmd("run", str(spec), "--out", str(out), "--quiet", "--ensemble-size", "2",
                                         "--shard", f"{i}/2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trained = sorted(int(o[0].split(" trained now")[0].split()[-1]) for o in outs)
    assert sum(trained) == 2  # two groups (d_model 16 and 32), each trained by exactly one job
    runs = results.load(out)["runs"]
    assert len(runs) == 4 and (runs["status"] == "done").all()
    r = jscale_here("run", str(spec), "--out", str(out), "--shard", "2/2")
    assert r.returncode == 2 and "--shard: need 0 <= i < n" in r.stderr


def test_ensemble_size_is_measured_once_per_backend_and_kept(tmp_path):
    sw = make({"key": "train.seed", "values": [0, 1, 2]})
    members, decision = grid.choose_ensemble_size(sw, tmp_path, None)
    assert decision["measured"]["members"] == 3 and decision["measured"]["speedup"] > 0
    assert members in (1, 3)
    again, _ = grid.choose_ensemble_size(sw, tmp_path, None)
    assert again == members  # read back from ensemble.json, not re-measured
    assert (tmp_path / "ensemble.json").exists()


def test_the_ensemble_measurement_runs_on_the_group_that_costs_most_to_train(tmp_path, monkeypatch):
    """Three cheap d_model 8 runs and two d_model 64 ones: the measurement times the wide pair (its choice decides
    most of the sweep's time), not the group with the most runs."""
    seen = []

    def measured(cfg, members, steps=5, rounds=2):
        seen.append((cfg.model.d_model, members))
        return {"members": members, "mode": "map", "speedup": 1.5}

    monkeypatch.setattr(grid, "measure_vmap_speedup", measured)
    sw = sweep.expand({"name": "t", "base": BASE, "axis": [
        {"zip": {"model.d_model": [8, 8, 8, 64, 64], "model.n_heads": [1, 1, 1, 4, 4],
                 "train.seed": [0, 1, 2, 0, 1]}}]})
    assert sorted(len(g.runs) for g in sw.groups(grid.MAX_MEMBERS)) == [2, 3]
    members, decision = grid.choose_ensemble_size(sw, tmp_path, None)
    assert seen == [(64, 2)] and members == 2 and decision["mode"] == "map"


def test_status_shows_a_claimed_group_as_running_before_its_first_evaluation(tmp_path):
    sw = make({"key": "train.seed", "values": [0, 1]})
    groups = sw.groups(8)
    with results.ResultsDB(tmp_path / "s") as db:
        db.add_runs(sweep.run_row(r, g.group_id) for g in groups for r in g.runs)
        assert db.claim(groups[0].group_id)  # this (live) process is training it
    assert set(results.load(tmp_path / "s")["runs"]["status"]) == {"running"}
    assert "running   2" in grid.status_table(tmp_path / "s")
    with results.ResultsDB(tmp_path / "s") as db:
        db.release(groups[0].group_id)
    assert set(results.load(tmp_path / "s")["runs"]["status"]) == {"pending"}


def test_the_ensemble_measurement_runs_on_a_transformer_xl():
    """A Transformer-XL's state holds a memory per batch row: the measurement must build it for the batch."""
    from jscale import config, resolve

    cfg = resolve.resolve(config.from_dict({"model": {"kind": "transformer_xl", "n_layer": 1, "d_model": 16,
                                                      "n_heads": 2, "n_ctx": 16, "mem_len": 16},
                            "train": {"batch_size": 4, "steps": 10, "warmup_steps": 1}}))
    m = grid.measure_vmap_speedup(cfg, members=2, steps=1)
    assert m["speedup"] > 0 and m["mode"] in ("vmap", "map")


def test_the_ensemble_measurement_keeps_each_modes_fastest_of_interleaved_rounds(monkeypatch):
    """One slow reading (another process waking during the vmapped step's timing) must not pick the slower mode:
    each of single, vmap and map is timed in two interleaved rounds and its fastest kept."""
    from jscale import config, resolve, train

    cfg = resolve.resolve(config.from_dict({"model": {"n_layer": 1, "d_model": 16, "n_heads": 2, "n_ctx": 16},
                                            "train": {"batch_size": 4, "steps": 10, "warmup_steps": 1}}))
    order = ["single", *train.ENSEMBLE_MODES]
    readings = {"single": [1.0, 1.0], "vmap": [5.0, 1.2], "map": [1.5, 1.5]}  # vmap's first reading disturbed
    calls = []

    def scripted(fn, state, batch, hparams, steps, warmup):
        mode = order[len(calls) % len(order)]
        calls.append(mode)
        return readings[mode][(len(calls) - 1) // len(order)]  # this mode's reading of the current round

    monkeypatch.setattr(train, "seconds_per_step", scripted)
    m = grid.measure_vmap_speedup(cfg, members=2, steps=1)
    assert calls == order * 2
    assert m["mode"] == "vmap" and m["vmap_step_s"] == 1.2 and m["speedup"] == pytest.approx(2 * 1.0 / 1.2)


TUNED_TOML = SWEEP_TOML.replace('[[axis]]\nkey = "train.seed"\nvalues = [0, 1]\n', "").replace(
    'name = "tiny"', 'name = "tiny"\nseeds = 2') + (
    '[tune]\ngrid = {{ "train.lr" = [1e-3, 3e-3, 1e-2] }}\nextend = true\n')


def sweep_rows(out):
    with sqlite3.connect(out / "results.sqlite") as c:
        return (c.execute("SELECT run_id, status, role, lr, final_val_loss, final_test_loss FROM runs "
                          "ORDER BY run_id").fetchall(),
                c.execute("SELECT point, grid, chosen FROM tuning ORDER BY point").fetchall())


def test_workers_share_a_tuned_sweep_and_train_exactly_what_one_process_trains(tmp_path, jscale_here):
    """`jscale run --workers 2`: two processes claim groups, wait for each other's pilots (the grid extended past
    an edge included) and share the final runs; every curve, choice and final loss is bitwise that of one process."""
    spec = tmp_path / "tuned.toml"
    spec.write_text(TUNED_TOML.format(steps=8))
    # each worker runs on its own core, so the reference is one process on one core (XLA:CPU splits a product's
    # sums over as many threads as the process has cores)
    core = str(min(os.sched_getaffinity(0)))
    one = subprocess.run(jscale_cmd("run", str(spec), "--out", str(tmp_path / "one"), "--ensemble-size", "1",
                                    "--cpus", core), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    # the run summary says where the time went: each part with its share, and what is left
    line = next(x for x in one.stdout.splitlines() if x.startswith("time: "))
    seconds = [float(m) for m in re.findall(r" ([0-9.]+) s \(", line)]
    assert "training steps" in line and "evaluations" in line and line.split(", ")[-1].startswith("other ")
    assert sum(seconds) == pytest.approx(float(line.split()[1]), abs=0.05 * len(seconds))
    two = jscale_here("run", str(spec), "--out", str(tmp_path / "two"), "--workers", "2", check=0)
    assert "left:" not in one.stdout + two.stdout and "done:" in two.stdout
    # the workers' time line: their parts in worker-seconds (2 x the wall), start-up and finishing included
    line = next(x for x in two.stdout.splitlines() if x.startswith("time: "))
    wall, capacity = map(float, re.match(r"time: ([0-9.]+) s, 2 workers \(([0-9.]+) worker-seconds\): ", line).groups())
    assert capacity == pytest.approx(2 * wall, abs=0.11)
    seconds = [float(m) for m in re.findall(r" ([0-9.]+) s \(", line)]
    assert "training steps" in line and "starting the workers" in line and line.split(", ")[-1].startswith("other ")
    assert sum(seconds) == pytest.approx(capacity, abs=0.05 * len(seconds))
    runs, tuning = sweep_rows(tmp_path / "two")
    assert {r[1] for r in runs} == {"done"} and sum(r[2] == "final" for r in runs) == 4
    assert (runs, tuning) == sweep_rows(tmp_path / "one")
    assert curves(tmp_path / "two") == curves(tmp_path / "one")
    import json

    sessions = json.loads((tmp_path / "two" / "sweep.json").read_text())["sessions"]
    assert len({s["pid"] for s in sessions}) == 2  # both workers worked on the directory
    assert json.loads((tmp_path / "one" / "sweep.json").read_text())["sessions"][0]["cpus"] == [int(core)]
    if len(os.sched_getaffinity(0)) >= 2:  # each on a core of its own
        assert sorted(len(s["cpus"]) for s in sessions) == [1, 1] and sessions[0]["cpus"] != sessions[1]["cpus"]
    for bad, message in ((["--workers", "0"], "--workers: must be >= 1"),
                         (["--workers", "2", "--shard", "0/2"], "cannot be combined with --shard"),
                         (["--cpus", "0,x"], "--cpus: a comma-separated list of CPU core numbers"),
                         (["--cpus", "4096"], "--cpus: [4096] not among this process's cores")):
        r = jscale_here("run", str(spec), "--out", str(tmp_path / "bad"), *bad)
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_workers_get_equal_disjoint_shares_of_the_cores():
    from jscale import cpuload

    assert cpuload.cpu_shares(2, [0, 1]) == [[0], [1]]
    assert cpuload.cpu_shares(2, [0, 1, 2, 3, 5]) == [[0, 1], [2, 3]]  # equal shares: as many threads each
    assert cpuload.cpu_shares(3, [0, 1]) is None  # fewer cores than workers: not pinned
    assert cpuload.cpu_shares(1, [4, 7]) == [[4, 7]]


def test_a_worker_tunes_the_points_no_one_else_holds_before_it_waits(tmp_path, monkeypatch):
    """Extending a grid trains one pilot at a time: a worker whose point another worker is tuning (a live process
    holds "tune:POINT" in the real database) tunes the next point first, and comes back once that process is gone;
    the time it then waits is counted. One process tunes the points in order and claims nothing."""
    db = results.ResultsDB(tmp_path)
    holder = subprocess.Popen(["sleep", "60"])  # another worker, tuning point "a"
    try:
        started = results.process_started(holder.pid)
        with db.conn:
            db.conn.execute("INSERT INTO claims VALUES ('tune:a', ?, ?, ?, ?)",
                            (socket.gethostname(), holder.pid, time.time(), started))
        order, timings = [], {}

        def tune_one(point):
            order.append(point)
            held = db.conn.execute("SELECT pid FROM claims WHERE group_id = ?", (f"tune:{point}",)).fetchone()
            assert held == (os.getpid(),)  # tuned under this process's claim
            if point == "b":  # the other worker finishes "a" while this one tunes "b"... a poll later
                holder.kill()
                holder.wait()
            return {"train.lr": 0.1 if point == "a" else 0.2}

        monkeypatch.setattr(grid, "WAIT_POLL_S", 0.01)
        assert grid._tune_points(["a", "b", "c"], tune_one, db, True, timings) == {
            "a": {"train.lr": 0.1}, "b": {"train.lr": 0.2}, "c": {"train.lr": 0.2}}
        assert order == ["b", "c", "a"]
        assert db.conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0  # every claim released
        order.clear()
        assert grid._tune_points(["c", "a"], lambda p: order.append(p), db, False, None) == {"c": None, "a": None}
        assert order == ["c", "a"]
    finally:
        holder.kill()
        holder.wait()
        db.close()


def test_a_signal_to_the_workers_parent_stops_every_worker_and_the_rerun_finishes_bitwise(tmp_path, jscale_here):
    spec = tmp_path / "tiny.toml"
    spec.write_text(SWEEP_TOML.format(steps=200))  # the signal comes past the first checkpoint (step 20)
    subprocess.run(jscale_cmd("run", str(spec), "--out", str(tmp_path / "one"), "--quiet", "--ensemble-size", "1",
                              "--cpus", str(min(os.sched_getaffinity(0)))), check=True)  # as one worker trains
    out = tmp_path / "two"
    p = subprocess.Popen(jscale_cmd("run", str(spec), "--out", str(out), "--quiet", "--workers", "2"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # until a worker has evaluated past its first checkpoint (step 20): the rerun resumes a run from a checkpoint
    wait_for_training(p, out, timeout=300, min_step=30)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("jscale: interrupted (SIGTERM)")
    with sqlite3.connect(out / "results.sqlite") as c:  # no worker is left holding a group
        assert c.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
        unfinished = {g for g, in c.execute("SELECT group_id FROM runs WHERE status != 'done'")}
    assert any(x.name.isdigit() for g in unfinished for x in (out / "groups" / g / "checkpoints").glob("*")), unfinished
    jscale_here("run", str(spec), "--out", str(out), "--quiet", "--workers", "2", check=0)
    assert curves(out) == curves(tmp_path / "one")
