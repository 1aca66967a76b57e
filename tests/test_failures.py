"""Failing cleanly, with real processes and real files: signals at every phase, full and read-only disks, damaged
checkpoints, results databases and token caches, concurrent jobs. After each, a re-run must end bitwise where an
uninterrupted run ends. What is signalled, killed or run concurrently runs in its own process; the re-runs after it,
the reference runs and the re-runs after damaged files run `jscale.cli.main` in this process (jscale_here)."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import jscale_cmd, wait_for_training
from jscale import cli, grid, results, sweep

TRAIN = """
[model]
n_layer = 1
d_model = 16
n_heads = 2
n_ctx = 16
[data]
eval_windows = 8
[train]
batch_size = 8
steps = 12
eval_every = 2
checkpoint_every = 4
keep_checkpoints = 5
warmup_steps = 2
lr = 3e-3
"""

SWEEP = """
name = "tiny"
[base.model]
n_layer = 1
d_model = 16
n_heads = 2
n_ctx = 16
[base.data]
eval_windows = 8
[base.train]
batch_size = 8
steps = 8
eval_every = 2
checkpoint_every = 4
warmup_steps = 2
lr = 3e-3
[[axis]]
key = "train.seed"
values = [0, 1]
[[axis]]
key = "model.d_model"
values = [16, 32]
"""


def jscale(*args, env=None, check=None, **kw):
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run(jscale_cmd(*args), capture_output=True, text=True, env=full_env, timeout=300, **kw)
    if check is not None:
        assert p.returncode == check, (p.returncode, p.stdout[-2000:], p.stderr[-3000:])
    return p


def metrics(run_dir: Path) -> list[dict]:
    """A run's learning curve without its wall-clock fields."""
    drop = {"tokens_per_s", "mfu", "wall_time"}
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def curves(out: Path) -> list[tuple]:
    with sqlite3.connect(out / "results.sqlite") as c:
        return c.execute("SELECT run_id, step, train_loss, test_loss FROM curves ORDER BY run_id, step").fetchall()


@pytest.fixture(scope="module")
def train_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.toml"
    path.write_text(TRAIN)
    return path


@pytest.fixture(scope="module")
def reference_run_dir(train_toml, tmp_path_factory) -> Path:
    """A run trained start to end without interruption (tests that damage a finished run copy it)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    assert cli.main(["train", str(train_toml), "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def reference_run(reference_run_dir) -> list[dict]:
    return metrics(reference_run_dir)


@pytest.fixture(scope="module")
def sweep_toml(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sweepcfg") / "tiny_sweep.toml"
    path.write_text(SWEEP)
    return path


@pytest.fixture(scope="module")
def reference_sweep_dir(sweep_toml, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("refsweep") / "sweep"
    assert cli.main(["run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2"]) == 0
    return out


@pytest.fixture(scope="module")
def reference_sweep(reference_sweep_dir) -> list[tuple]:
    return curves(reference_sweep_dir)


# Compiling, evaluating, writing a checkpoint, and training (a double Ctrl-C there; SIGTERM is sent at a checkpoint
# here and in the sweep test below, a single Ctrl-C during training from outside in the sweep test).
@pytest.mark.parametrize("point, signame", [("compile:SIGINT:0.3", "SIGINT"), ("eval:SIGINT:0.01", "SIGINT"),
                                            ("checkpoint:SIGTERM:0.01", "SIGTERM"), ("train:SIGINT:0:2", "SIGINT")])
def test_a_signal_during_training_stops_cleanly_and_resumes_bitwise(train_toml, reference_run, tmp_path, point,
                                                                    signame, jscale_here):
    out = tmp_path / "run"
    p = jscale("train", str(train_toml), "--out", str(out), "--quiet", env={"JSCALE_SIGNAL_AT": point})
    signum = getattr(signal, signame)
    assert p.returncode == 128 + signum, (p.returncode, p.stderr[-3000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and signame in lines[0] and "re-run the same command" in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not list((out / "checkpoints").glob("*tmp*"))  # no half-written checkpoint left behind
    jscale_here("train", str(train_toml), "--out", str(out), "--quiet", check=0)
    assert metrics(out) == reference_run


def test_ctrl_c_at_start_up_is_one_line(train_toml, tmp_path):
    """A Ctrl-C while the command is still importing JAX and reading its config: no traceback either."""
    proc = subprocess.Popen(jscale_cmd("train", str(train_toml), "--out", str(tmp_path / "run"), "--quiet"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # inside main, importing JAX
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode in (130, 0), err  # 0 only if it had already finished
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err


def test_ctrl_c_from_outside_during_a_sweep_stops_at_a_step_and_resumes_bitwise(sweep_toml, reference_sweep,
                                                                               tmp_path, jscale_here):
    out = tmp_path / "sweep"
    proc = subprocess.Popen(jscale_cmd("run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_training(proc, out, timeout=240)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "re-run the same command" in err
    jscale_here("run", str(sweep_toml), "--out", str(out), "--quiet", check=0)
    assert curves(out) == reference_sweep


def test_a_sigterm_during_a_sweeps_checkpoint_stops_cleanly_and_resumes_bitwise(sweep_toml, reference_sweep,
                                                                                tmp_path, jscale_here):
    out = tmp_path / "sweep"
    p = jscale("run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2",
               env={"JSCALE_SIGNAL_AT": "checkpoint:SIGTERM:0.01"})
    assert p.returncode == 143 and len(p.stderr.strip().splitlines()) == 1, p.stderr[-3000:]
    jscale_here("run", str(sweep_toml), "--out", str(out), "--quiet", check=0)
    assert curves(out) == reference_sweep


def _garble(path: Path, n: int = 256) -> None:
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - n // 2)
    for i in range(start, min(len(data), start + n)):
        data[i] ^= 0xA5
    path.write_bytes(bytes(data))


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["garbled bytes", "metadata deleted", "step emptied"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(train_toml, reference_run_dir, reference_run, tmp_path,
                                                            damage, jscale_here):
    out = tmp_path / "run"
    shutil.copytree(reference_run_dir, out)
    latest = out / "checkpoints" / "12"
    if damage == "garbled bytes":
        _garble(_largest_file(latest))
    elif damage == "metadata deleted":
        for p in latest.rglob("*metadata*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    else:
        shutil.rmtree(latest)
        latest.mkdir()
    # The run is finished, but its newest checkpoint is what a re-run restores: it must notice the damage.
    with open(out / "metrics.jsonl") as f:
        kept = [line for line in f if json.loads(line)["step"] <= 8]
    (out / "metrics.jsonl").write_text("".join(kept))  # as if killed before step 12 was logged
    p = jscale_here("train", str(train_toml), "--out", str(out), "--quiet", check=0)
    assert "damaged" in p.stdout + p.stderr or "missing from the results" in p.stdout + p.stderr
    assert metrics(out) == reference_run


def test_deleted_metrics_are_redone_not_skipped(train_toml, reference_run_dir, reference_run, tmp_path, jscale_here):
    out = tmp_path / "run"
    shutil.copytree(reference_run_dir, out)
    (out / "metrics.jsonl").unlink()
    jscale_here("train", str(train_toml), "--out", str(out), "--quiet", check=0)
    assert metrics(out) == reference_run


def test_done_means_final_results_and_final_weights(sweep_toml, reference_sweep, tmp_path, jscale_here):
    """Killed at the final checkpoint (the only one), after the final evaluations were committed: the runs are not
    done, and a re-run writes the final weights (they were marked done with no final checkpoint, so jscale eval and
    export loaded an earlier step or none)."""
    toml = tmp_path / "final_only.toml"
    toml.write_text(sweep_toml.read_text().replace("checkpoint_every = 4", "checkpoint_every = 8"))
    out = tmp_path / "sweep"
    p = jscale("run", str(toml), "--out", str(out), "--quiet", "--ensemble-size", "2",
               env={"JSCALE_SIGNAL_AT": "checkpoint:SIGKILL:0"})
    assert p.returncode == -signal.SIGKILL
    with sqlite3.connect(out / "results.sqlite") as c:
        statuses = dict(c.execute("SELECT run_id, status FROM runs").fetchall())
        recorded = c.execute("SELECT MAX(step) FROM curves").fetchone()[0]
    assert recorded == 8 and "done" not in statuses.values()  # evaluated at the end, but not done
    jscale_here("run", str(toml), "--out", str(out), "--quiet", "--ensemble-size", "2", check=0)
    # (another checkpoint interval is another run id: the losses are the reference's, bitwise)
    assert sorted(c[1:] for c in curves(out)) == sorted(c[1:] for c in reference_sweep)
    finals = list(out.glob("groups/*/checkpoints/8"))
    assert len(finals) == 2 and all(any(d.iterdir()) for d in finals)
    with sqlite3.connect(out / "results.sqlite") as c:
        assert {s for (s,) in c.execute("SELECT status FROM runs")} == {"done"}


def test_a_stale_claim_whose_pid_was_reused_is_taken_over(sweep_toml, reference_sweep, tmp_path, jscale_here):
    """Claims left by a killed job whose pid now belongs to a live process (here: this one, with another start
    time): the groups are trained, not skipped forever with exit status 0."""
    sw = sweep.load(sweep_toml)
    out = tmp_path / "sweep"
    grid.check_sweep_dir(sw, out)
    with results.ResultsDB(out) as db:
        groups = sw.groups(2)
        db.add_runs(sweep.run_row(r, g.group_id) for g in groups for r in g.runs)
        db.conn.executemany("INSERT INTO claims (group_id, host, pid, heartbeat, started) VALUES (?, ?, ?, ?, ?)",
                            [(g.group_id, __import__("socket").gethostname(), os.getpid(), time.time(), "1")
                             for g in groups])
        db.conn.commit()
    p = jscale_here("run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2", check=0)
    assert "2 trained now" in p.stdout
    assert curves(out) == reference_sweep


def test_a_damaged_middle_record_of_the_metrics_is_rebuilt_not_dropped(train_toml, reference_run_dir, reference_run,
                                                                       tmp_path, jscale_here):
    out = tmp_path / "run"
    shutil.copytree(reference_run_dir, out)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[2] = lines[2][:40] + "\x00garbled" + lines[2][60:]  # record 3 of 6 (step 6)
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    p = jscale_here("train", str(train_toml), "--out", str(out), "--quiet", check=0)
    assert "record 3 of 6 is damaged" in p.stdout
    assert metrics(out) == reference_run  # every record there, the damaged one written again bitwise


def test_an_emptied_newest_checkpoint_falls_back_to_the_intact_one_before_it(tmp_path, jscale_here):
    """A run stopped at step 10 of 12 (checkpoints every 2 steps, 3 kept), its newest checkpoint's directory
    emptied: the resume says so, falls back to step 8, and ends where an uninterrupted run ends (the earlier
    checkpoints were once deleted too, the history cut to one record and the run ended with no error line)."""
    from jscale import resolve, train

    cfg_path = tmp_path / "every2.toml"
    cfg_path.write_text(TRAIN.replace("checkpoint_every = 4", "checkpoint_every = 2").replace(
        "keep_checkpoints = 5", "keep_checkpoints = 3"))
    cfg = resolve.load(cfg_path)
    train.train(cfg, tmp_path / "run", progress=False, stop_after=10)
    newest = tmp_path / "run" / "checkpoints" / "10"
    shutil.rmtree(newest)
    newest.mkdir()
    p = jscale_here("train", str(cfg_path), "--out", str(tmp_path / "run"), "--quiet", check=0)
    assert "checkpoints/10 is damaged" in p.stdout and "falling back to step 8" in p.stdout
    jscale_here("train", str(cfg_path), "--out", str(tmp_path / "straight"), "--quiet", check=0)
    assert metrics(tmp_path / "run") == metrics(tmp_path / "straight")


@pytest.mark.parametrize("damage", ["deleted", "emptied"])
def test_a_lost_results_database_is_rebuilt_from_the_sweep(sweep_toml, reference_sweep_dir, reference_sweep, tmp_path,
                                                           damage, jscale_here):
    out = tmp_path / "sweep"
    shutil.copytree(reference_sweep_dir, out)
    db = out / "results.sqlite"
    for side in out.glob("results.sqlite-*"):
        side.unlink()
    db.unlink() if damage == "deleted" else db.write_bytes(b"")
    if damage == "deleted":  # status says what is missing and how to get it back, in one line
        p = jscale_here("status", str(out), check=2)
        assert len(p.stderr.strip().splitlines()) == 1 and "results.sqlite" in p.stderr
    jscale_here("run", str(sweep_toml), "--out", str(out), "--quiet", check=0)
    assert curves(out) == reference_sweep
    text = jscale_here("status", str(out), check=0).stdout
    assert "done      4" in text and "100.0% done" in text


@pytest.mark.parametrize("table", ["curves", "evals", "windows"])
def test_a_finished_runs_deleted_rows_are_rebuilt(sweep_toml, reference_sweep_dir, reference_sweep, tmp_path, table,
                                                  jscale_here):
    """One finished run's rows of one table deleted: the run is not counted done with them missing (it was: exit 0,
    '0 trained now', status 100%); its group is trained again from the checkpoint before the gap, bitwise."""
    out = tmp_path / "sweep"
    shutil.copytree(reference_sweep_dir, out)
    with sqlite3.connect(out / "results.sqlite") as c:
        run_id = c.execute("SELECT run_id FROM runs ORDER BY run_id LIMIT 1").fetchone()[0]
        c.execute(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))
    p = jscale_here("run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2", check=0)
    assert "are missing from" in p.stdout and "1 trained now" in p.stdout
    assert curves(out) == reference_sweep
    with sqlite3.connect(out / "results.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM windows WHERE run_id = ?", (run_id,)).fetchone()[0] >= 2


def test_shards_of_a_tuned_sweep_add_up_to_the_whole_sweep_or_say_what_is_left(tmp_path, jscale_here):
    """Two --shard jobs, one after the other, on a sweep with pilots: the first cannot choose the points whose
    pilots the second trains, and says so (and status does not say 100%); the second chooses every point and trains
    every final run. (Both used to exit 0 with 7 of 10 runs trained and status at 100% done.)"""
    toml = tmp_path / "tuned.toml"
    base = SWEEP[SWEEP.index("[base.model]"):SWEEP.index("[[axis]]")]
    toml.write_text('name = "tiny"\nseeds = 2\n' + base + '[[axis]]\nkey = "model.d_model"\nvalues = [16, 32]\n'
                    '[tune]\ngrid = { "train.lr" = [1e-3, 3e-3, 1e-2] }\nextend = false\n')
    sw = sweep.load(toml)
    assert sum(r.role == "pilot" for r in sw.runs) == 6 and sum(r.role == "final" for r in sw.runs) == 4
    out = tmp_path / "sweep"
    first = jscale_here("run", str(toml), "--out", str(out), "--quiet", "--ensemble-size", "3", "--shard", "0/2",
                        check=0)
    assert "left:" in first.stdout and "tuned points wait for pilots" in first.stdout
    assert "of what is planned" in jscale_here("status", str(out), check=0).stdout
    second = jscale_here("run", str(toml), "--out", str(out), "--quiet", "--ensemble-size", "3", "--shard", "1/2",
                         check=0)
    assert "left:" not in second.stdout
    with sqlite3.connect(out / "results.sqlite") as c:
        finals = c.execute("SELECT status FROM runs WHERE role = 'final'").fetchall()
    assert len(finals) == 4 and {s for (s,) in finals} == {"done"}
    assert "100.0% done)" in jscale_here("status", str(out), check=0).stdout


def test_a_damaged_token_cache_is_rebuilt(train_toml, reference_run, tmp_path, jscale_here):
    cache = tmp_path / "cache"
    env = {"JSCALE_CACHE": str(cache)}
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(25):
        (corpus / f"f{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j}\n" for j in range(400)))
    args = ("train", str(train_toml), f"data.corpus={corpus}", "--quiet")
    jscale_here(*args, "--out", str(tmp_path / "a"), env=env, check=0)
    token_file = next(cache.rglob("train.bin"))
    _garble(token_file)
    p = jscale_here(*args, "--out", str(tmp_path / "b"), env=env, check=0)
    assert "damaged" in p.stderr and "rebuilding" in p.stderr
    assert metrics(tmp_path / "b") == metrics(tmp_path / "a")
    token_file.write_bytes(token_file.read_bytes()[:100])  # cut short
    jscale_here(*args, "--out", str(tmp_path / "c"), env=env, check=0)
    assert metrics(tmp_path / "c") == metrics(tmp_path / "a")


def test_a_finite_but_exploded_loss_is_diverged_and_listed(tmp_path):
    base = {"model": {"n_layer": 1, "d_model": 16, "n_heads": 2, "n_ctx": 16}, "data": {"eval_windows": 8},
            "train": {"batch_size": 8, "steps": 8, "eval_every": 4, "checkpoint_every": 4, "warmup_steps": 0,
                      "grad_clip": 0.0}}
    sw = sweep.expand({"name": "t", "base": base, "axis": [{"zip": {"train.seed": [0, 1],
                                                                     "train.lr": [3e-3, 300.0]}}]})
    grid.run_sweep(sw, tmp_path / "s", ensemble_size=2, progress=False)
    runs = results.load(tmp_path / "s")["runs"].set_index("lr")
    assert runs.loc[3e-3, "status"] == "done" and runs.loc[300.0, "status"] == "diverged"
    table = grid.status_table(tmp_path / "s")
    assert "diverged  1" in table and sum(" diverged " in line for line in table.splitlines()[6:]) == 1


def test_concurrent_jobs_train_every_group_once_and_keep_every_session(sweep_toml, reference_sweep, tmp_path,
                                                                      jscale_here):
    out = tmp_path / "sweep"
    # (The ensemble size is given, so no job spends its time measuring: the first job to hold the directory lock
    # records it in ensemble.json and the others read it back, as they would a measured one; the measurement itself
    # is test_grid's subject.)
    jobs = [subprocess.Popen(jscale_cmd("run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2",
                                        *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for extra in (["--shard", "0/2"], ["--shard", "1/2"], [])]
    outputs = [job.communicate(timeout=300) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    trained = sum(int(stdout.split(" trained now")[0].rsplit(",", 1)[1]) for stdout, _ in outputs)
    decision = json.loads((out / "ensemble.json").read_text())
    groups = len(sweep.load(sweep_toml).groups(next(iter(decision.values()))["members"]))
    assert trained == groups  # no group trained twice
    assert len(json.loads((out / "sweep.json").read_text())["sessions"]) == 3
    jscale_here("run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2",
                check=0)  # finishes whatever a job skipped
    assert sorted(curves(out)) == sorted(reference_sweep) or len(curves(out)) == len(reference_sweep)


# Full and read-only disks: a small tmpfs, mounted for the test (needs root, as on CI's machines).

@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root; this machine does not allow it")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk: Path, leave_bytes: int) -> Path:
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


@pytest.mark.parametrize("leave_kb", [32, 600])
def test_a_full_disk_is_one_line_and_a_rerun_after_freeing_space_resumes_bitwise(sweep_toml, reference_sweep,
                                                                                 small_disk, leave_kb, jscale_here):
    out = small_disk / "sweep"
    filler = _fill(small_disk, leave_kb * 1024)
    p = jscale("run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2")
    assert p.returncode == 1, (p.returncode, p.stderr[-3000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jscale: error: "), p.stderr[-3000:]
    assert "space" in lines[0] or "full" in lines[0], lines[0]
    filler.unlink()
    jscale_here("run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2", check=0)
    assert curves(out) == reference_sweep


def test_an_export_onto_a_full_disk_is_one_line_and_leaves_nothing(reference_run_dir, small_disk, jscale_here):
    """(It was a 20-line SafetensorError traceback.)"""
    filler = _fill(small_disk, 16 * 1024)
    p = jscale("export", str(reference_run_dir), "--to", "hf", str(small_disk / "exported"))
    assert p.returncode == 1, (p.returncode, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the export" in lines[0] and "exported" in lines[0], p.stderr[-2000:]
    assert not list(small_disk.glob("*exported*"))
    filler.unlink()


def test_an_os_error_without_a_file_name_says_what_failed_not_a_placeholder():
    import errno

    from jscale.errors import resource_error

    text = str(resource_error(OSError(errno.ENOSPC, "No space left on device")))
    assert "?" not in text and "no space left on device" in text and "free space" in text


def test_a_read_only_directory_is_one_line_and_status_still_reads_it(sweep_toml, reference_sweep, small_disk,
                                                                    jscale_here):
    out = small_disk / "sweep"
    jscale_here("run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2", "train.steps=4", check=0)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    # In its own process, as the full-disk run: a write that fails inside orbax ends the process (cli.main).
    p = jscale("run", str(sweep_toml), "--out", str(out), "--quiet", "--ensemble-size", "2")
    assert p.returncode == 1 and len(p.stderr.strip().splitlines()) == 1, p.stderr[-3000:]
    assert "read-only" in p.stderr.lower() or "readonly" in p.stderr.lower()
    assert jscale_here("status", str(out), check=0).stdout.count("done") >= 1


def test_a_closed_pipe_ends_quietly(tmp_path):
    big = tmp_path / "big.toml"  # a plan of 3,000 runs: far more than a pipe buffers, so the pipe does break
    big.write_text(SWEEP.replace("values = [0, 1]", f"values = {list(range(1000))}"))
    p = subprocess.run(" ".join(jscale_cmd("plan", str(big))) + " | head -c 10", shell=True,
                       capture_output=True, text=True, timeout=120)
    assert p.stderr == "" and len(p.stdout) == 10
