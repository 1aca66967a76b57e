"""Every bad input is one line on stderr naming the key or file, a known exit status, and nothing written.

One table of cases across config files, overrides, sweep files, CLI arguments, data sources, results directories
and fit inputs. Each runs `jscale.cli.main` in this process (conftest's jscale_here: the console script's code
path, without a JAX start-up per case) in a work directory, and checks: the exit status; exactly one line on stderr
(at the file descriptor, so nothing printed by C++ or a library slips past); the key or file named in it; and the
work directory unchanged byte for byte.
"""

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest


TINY = """
[model]
n_layer = 1
d_model = 16
n_heads = 2
n_ctx = 16
[data]
eval_windows = 4
[train]
batch_size = 4
steps = 4
eval_every = 2
checkpoint_every = 2
warmup_steps = 1
"""

SWEEP = """
name = "tiny"
[base.model]
n_layer = 1
d_model = 16
n_heads = 2
n_ctx = 16
[base.data]
eval_windows = 4
[base.train]
batch_size = 4
steps = 4
eval_every = 2
checkpoint_every = 2
warmup_steps = 1
[[axis]]
key = "train.seed"
values = [0, 1]
"""

RUNS_CSV = "N,D,loss\n" + "".join(f"{n},{d},{2 + 1e3 / n ** 0.3 + 1e3 / d ** 0.3:.4f}\n"
                                   for n in (1e6, 3e6, 1e7) for d in (1e8, 3e8, 1e9))


def _write(root: Path, name: str, text: str | bytes) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A work directory holding good and bad inputs; the CLI runs with it as the current directory."""
    w = tmp_path / "work"
    w.mkdir()
    _write(w, "good.toml", TINY)
    _write(w, "bad_syntax.toml", "[model\nn_layer = 2\n")
    _write(w, "sweep.toml", SWEEP)
    _write(w, "sweep_unknown_key.toml", "bogus = 1\n" + SWEEP)
    _write(w, "sweep_unknown_axis_field.toml", SWEEP + "valuez = [2]\n")
    _write(w, "sweep_bad_generator.toml", SWEEP + '[[axis]]\ngenerator = "nope"\n')
    _write(w, "sweep_nan_lr.toml", SWEEP + '[[axis]]\ngenerator = "learning_rates"\nvalues = [1e-3, nan]\n')
    _write(w, "small/a.txt", "tiny corpus\n" * 4)  # 48 bytes: one file, one chunk
    _write(w, "sweep_zero_seeds.toml", "seeds = 0\n" + SWEEP)
    _write(w, "sweep_one_value_grid.toml", SWEEP + '[tune]\ngrid = { "train.lr" = [1e-3] }\n')
    _write(w, "sweep_nan_tune.toml", SWEEP + '[tune]\ngrid = { "train.lr" = [1e-3, nan] }\n')
    _write(w, "sweep_inf_tune.toml", SWEEP + '[tune]\ngrid = { "train.lr" = [1e-3, inf] }\n')
    _write(w, "a_file", "not a directory")
    _write(w, "run_garbled/config.json", "{not json")
    _write(w, "other_sweep/sweep.json", '{"name": "another", "scale": null}')
    _write(w, "garbled_sweep/sweep.json", "{{{")
    _write(w, "corrupt_db/results.sqlite", os.urandom(8192))
    _write(w, "corrupt_db/sweep.json", '{"name": "tiny", "scale": null}')
    _write(w, "empty_db/results.sqlite", b"")
    _write(w, "nan_lr.toml", TINY.replace("warmup_steps = 1", "warmup_steps = 1\nlr = nan"))
    with sqlite3.connect(w / "truncated_db.sqlite") as c:  # a real database, cut short
        c.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT)")
        c.executemany("INSERT INTO runs VALUES (?, ?)", [(f"run{i:05d}" * 8, "done") for i in range(3000)])
    data = (w / "truncated_db.sqlite").read_bytes()
    (w / "truncated_db.sqlite").unlink()
    _write(w, "truncated_db/results.sqlite", data[:len(data) // 2])
    _write(w, "truncated_db/sweep.json", '{"name": "tiny", "scale": null}')
    _write(w, "no_db/sweep.json", '{"name": "tiny", "scale": null}')
    _write(w, "runs.csv", RUNS_CSV)
    _write(w, "string.csv", RUNS_CSV.replace("1000000.0,", "abc,", 1))
    _write(w, "huge_loss.csv", RUNS_CSV + "2e6,2e8,1e300\n")
    _write(w, "huge_n.csv", RUNS_CSV + "1e300,2e8,2.5\n")
    _write(w, "identical.csv", "N,D,loss\n" + "1e6,1e8,3.0\n" * 12)
    _write(w, "one_budget.csv", "N,D,loss\n" + "".join(f"{n:g},{6e15 / n:g},{3 + n / 1e9:.4f}\n"
                                                       for n in (1e6, 2e6, 4e6, 8e6, 1.6e7, 3.2e7)))
    _write(w, "empty.csv", "")
    _write(w, "curves.csv", "run,C,loss\n" + "".join(f"r{i},{c:g},{5 / (c ** 0.05):.4f}\n"
                                                   for i in range(3) for c in (1e12, 1e13, 1e14)))
    monkeypatch.chdir(w)
    return w


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (SQLite's -wal/-shm side files aside) with a hash of its bytes."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


CASES = [
    # config files and overrides
    (["train", "good.toml", "model.d_modle=64"], 2, "model.d_modle"),
    # the measurement protocol's inputs
    (["run", "sweep_zero_seeds.toml", "--out", "s"], 2, "seeds"),
    (["run", "sweep_one_value_grid.toml", "--out", "s"], 2, "tune.grid.train.lr"),
    (["train", "good.toml", "data.corpus=small", "data.validation=missing_valid.txt"], 2, "data.validation"),
    (["train", "good.toml", "data.max_train_tokens=100000000"], 2, "data.max_train_tokens"),
    (["train", "good.toml", "data.validation_fraction=0.3", "data.test_fraction=0.3"], 2, "data.validation_fraction"),
    (["train", "good.toml", "data.extra_eval=prose"], 2, "data.extra_eval"),
    (["train", "good.toml", "train.schedule=linear"], 2, "train.schedule"),
    (["train", "good.toml", "data.eval_windows=-1"], 2, "data.eval_windows"),
    (["train", "good.toml", "data.eval_windows=10000000"], 2, "data.eval_windows"),
    (["train", "good.toml", "data.eval_se=0.003"], 2, "data.eval_se"),
    (["train", "missing.toml"], 2, "missing.toml"),
    (["train", "bad_syntax.toml"], 2, "bad_syntax.toml"),
    (["train", "good.toml", "train.lr=nan"], 2, "train.lr"),
    (["train", "good.toml", "train.lr=inf"], 2, "train.lr"),
    (["train", "nan_lr.toml"], 2, "train.lr"),
    (["train", "good.toml", "train.eps=-1"], 2, "train.eps"),
    (["train", "good.toml", "train.seed=-1"], 2, "train.seed"),
    (["train", "good.toml", "model.vocab_size=1000"], 2, "model.vocab_size"),
    (["train", "good.toml", "model.kind=transformer_xl", "model.n_kv_heads=1"], 2, "model.n_kv_heads"),
    (["train", "good.toml", "model.kind=lstm", "model.n_heads=8"], 2, "model.n_heads"),
    (["train", "good.toml", "data.vocab_size=1000"], 2, "data.vocab_size"),
    (["train", "good.toml", "data.tfds_data_dir=/tmp"], 2, "data.tfds_data_dir"),
    (["train", "good.toml", "train.checkpoint_every=3"], 2, "train.checkpoint_every"),
    (["train", "good.toml", "model.n_layer"], 2, "model.n_layer"),
    (["train", "good.toml", "--bogus"], 2, "--bogus"),
    (["train", "good.toml", "--out", "a_file"], 2, "a_file"),
    (["train", "good.toml", "--out", "run_garbled"], 2, "config.json"),
    (["info", "good.toml", "model.n_layer=0"], 2, "model.n_layer"),
    # data sources
    (["train", "good.toml", "data.corpus=small", "data.test_fraction=0.99"], 2, "data.test_fraction"),
    (["train", "good.toml", "data.corpus=small", "data.test_fraction=0.01"], 2, "data.test_fraction"),
    (["train", "good.toml", "data.corpus=nowhere/*.txt"], 2, "data.corpus"),
    (["train", "good.toml", "data.corpus=builtin:nope"], 2, "data.corpus"),
    (["train", "good.toml", "data.corpus=tfds:no_such_dataset_xyz"], 2, "data.corpus"),
    (["train", "good.toml", "data.corpus=tfds:tiny_shakespeare", "data.tfds_data_dir=small"], 2, "not prepared"),
    (["train", "good.toml", "data.corpus=hf:small", "data.text_column=content"], 2, "data.text_column"),
    (["train", "good.toml", "data.corpus=hf:nobody/no_such_dataset"], 2, "hf:nobody/no_such_dataset"),
    (["train", "good.toml", "data.hf_name=wikitext-2-raw-v1"], 2, "data.hf_name"),
    (["train", "good.toml", "data.tokenizer=gpt3"], 2, "data.tokenizer"),
    (["train", "good.toml", "train.warmup_tokens=-100"], 2, "train.warmup_tokens"),
    (["train", "good.toml", "train.warmup_per_param=-1"], 2, "train.warmup_per_param"),
    # sweep files and sweep CLI arguments
    (["run", "sweep_nan_tune.toml", "--out", "out"], 2, "tune.grid.train.lr"),
    (["run", "sweep_inf_tune.toml", "--out", "out"], 2, "tune.grid.train.lr"),
    (["run", "sweep.toml", "--out", "out", "--num-processes", "0"], 2, "--num-processes"),
    (["run", "sweep.toml", "--out", "out", "--process-id", "3"], 2, "--process-id"),
    (["run", "sweep.toml", "--out", "out", "--num-processes", "2", "--process-id", "2",
      "--coordinator", "localhost:1"], 2, "--process-id"),
    (["plan", "sweep.toml", "--ensemble-size", "-1"], 2, "--ensemble-size"),
    (["plan", "sweep.toml", "--workers", "0"], 2, "--workers"),
    (["plan", "sweep.toml", "--cpus", "0,x"], 2, "--cpus"),
    (["plan", "missing_sweep.toml"], 2, "missing_sweep.toml"),
    (["plan", "sweep_unknown_key.toml"], 2, "bogus"),
    (["plan", "sweep_unknown_axis_field.toml"], 2, "valuez"),
    (["plan", "sweep_bad_generator.toml"], 2, "generator"),
    (["run", "sweep_nan_lr.toml", "--out", "out"], 2, "train.lr"),
    (["run", "sweep.toml", "--out", "out", "--ensemble-size", "0"], 2, "--ensemble-size"),
    (["run", "sweep.toml", "--out", "out", "--shard", "3/2"], 2, "--shard"),
    (["run", "sweep.toml", "--out", "out", "--scale", "nope"], 2, "--scale"),
    (["run", "sweep.toml", "--out", "other_sweep"], 2, "other_sweep"),
    (["run", "sweep.toml", "--out", "garbled_sweep"], 2, "sweep.json"),
    (["run", "sweep.toml", "--out", "corrupt_db"], 2, "results.sqlite"),
    (["run", "sweep.toml", "--out", "a_file"], 2, "a_file"),
    (["run", "sweep.toml", "model.d_model=15", "--out", "out"], 2, "model.n_heads"),
    # results directories
    (["status", "corrupt_db"], 2, "results.sqlite"),
    (["status", "empty_db"], 2, "results.sqlite"),
    (["status", "truncated_db"], 2, "results.sqlite"),
    (["run", "sweep.toml", "--out", "truncated_db"], 2, "results.sqlite"),
    (["status", "no_db"], 2, "results.sqlite"),
    (["status", "nowhere"], 2, "nowhere"),
    (["report", "corrupt_db", "--no-latency"], 2, "results.sqlite"),
    # fit inputs
    (["fit", "missing.csv", "--law", "chinchilla"], 2, "missing.csv"),
    (["fit", "empty.csv", "--law", "chinchilla"], 2, "empty.csv"),
    (["fit", "string.csv", "--law", "chinchilla"], 2, "N: row"),
    (["fit", "huge_loss.csv", "--law", "chinchilla"], 2, "loss: row"),
    (["fit", "huge_n.csv", "--law", "kaplan-n"], 2, "N: row"),
    (["fit", "identical.csv", "--law", "chinchilla"], 2, "N:"),
    (["fit", "identical.csv", "--law", "kaplan-nd"], 2, "N:"),
    (["fit", "one_budget.csv", "--law", "chinchilla"], 2, "N, D"),
    (["fit", "runs.csv", "--law", "bogus"], 2, "--law"),
    (["fit", "runs.csv", "--law", "chinchilla", "--bootstrap", "-1"], 2, "--bootstrap"),
    (["fit", "runs.csv", "--law", "chinchilla", "--n-col", "params"], 2, "params"),
    (["fit", "runs.csv", "--law", "chinchilla", "--out", "small"], 2, "--out"),
    (["fit", "curves.csv", "--law", "envelope", "--drop-highest", "2"], 2, "--drop-highest"),
    (["fit", "curves.csv", "--law", "frontier", "--drop-highest", "2"], 2, "--drop-highest"),
    # using a trained model
    (["sample", "nowhere"], 2, "nowhere"),
    (["eval", "small", "--split", "validation"], 2, "not a run directory"),
    (["export", "nowhere", "--to", "onnx", "out_dir"], 2, "--to"),
    (["import", "hf", "nowhere"], 2, "nowhere"),
    (["import", "hf", "small"], 2, "config.json"),
    (["train", "good.toml", "model.init_from=weights.bin"], 2, "model.init_from"),
    (["train", "good.toml", "model.init_from=hf:small"], 2, "model.init_from"),
    # the command line itself
    ([], 2, "command"),
    (["bogus"], 2, "bogus"),
]


@pytest.mark.parametrize("argv, status, names", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_naming_it_and_writes_nothing(work, jscale_here, argv, status, names):
    before = snapshot(work)
    err = jscale_here(*argv, env={"JSCALE_OFFLINE": "1"}, check=status).stderr  # offline: no download attempts
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("jscale: error: ") and names in lines[0], lines[0]
    assert snapshot(work) == before


def test_the_bad_input_table_is_large(work):
    assert len(CASES) >= 40


def test_a_locked_database_is_one_line_with_status_1(work, jscale_here, monkeypatch):
    """A results database held by another writer: `jscale run` waits (JSCALE_DB_TIMEOUT seconds), then says so."""
    monkeypatch.setenv("JSCALE_DB_TIMEOUT", "1")
    (work / "locked").mkdir()
    holder = sqlite3.connect(work / "locked" / "results.sqlite", isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE x (y)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        before = snapshot(work)
        lines = jscale_here("run", "sweep.toml", "--out", "locked", "--quiet", check=1).stderr.strip().splitlines()
        assert len(lines) == 1 and "results.sqlite" in lines[0] and "locked" in lines[0], lines
        assert snapshot(work) == before
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_overrides_may_follow_the_options(work):
    from jscale import cli

    parser_args = cli._parse  # the README's order and the other one give the same overrides
    import argparse

    p = cli._Parser(prog="jscale")
    sub = p.add_subparsers(dest="command")
    t = sub.add_parser("train")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*")
    t.add_argument("--out")
    a = parser_args(p, ["train", "good.toml", "--out", "X", "model.d_model=64", "train.lr=1e-3"])
    b = parser_args(p, ["train", "good.toml", "model.d_model=64", "train.lr=1e-3", "--out", "X"])
    assert a.overrides == b.overrides == ["model.d_model=64", "train.lr=1e-3"] and a.out == b.out == "X"
    assert isinstance(a, argparse.Namespace)


def test_every_command_and_argument_has_help_text():
    """`jscale X --help` explains every argument, positional ones included."""
    import argparse

    from jscale import cli

    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helped = {choice.dest for choice in sub._choices_actions if choice.help}
    assert set(sub.choices) == helped, set(sub.choices) - helped
    missing = [f"{name} {action.dest}" for name, p in sub.choices.items() for action in p._actions
               if not isinstance(action, argparse._HelpAction) and not action.help]
    assert missing == []
