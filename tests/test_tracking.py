"""TensorBoard event files and W&B (offline) runs written by real training, read back independently."""

import json
import struct
import subprocess
import sys
import time

import pytest

from jscale import config, resolve, train


def tiny(**logging):
    return resolve.resolve(config.from_dict({"model": {"n_layer": 1, "d_model": 32, "n_heads": 2, "n_ctx": 32},
                             "data": {"eval_windows": 8},
                             "train": {"batch_size": 8, "steps": 40, "lr": 3e-3, "warmup_steps": 5,
                                       "eval_every": 10, "checkpoint_every": 20},
                             "logging": logging}))


def read_scalars(tb_dir) -> dict[str, dict[int, float]]:
    """Every scalar in a directory's event files, as {tag: {step: value}}, read with a TFRecord parser written
    here and tensorboardX's Event protobuf. A later event at the same step replaces an earlier one, as TensorBoard
    shows it; purge events (a resumed run) drop what came at or after their step."""
    from tensorboardX.proto import event_pb2

    out: dict[str, dict[int, float]] = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        raw, at = path.read_bytes(), 0
        while at < len(raw):
            (length,) = struct.unpack("<Q", raw[at:at + 8])
            event = event_pb2.Event.FromString(raw[at + 12:at + 12 + length])
            at += 12 + length + 4
            if event.session_log.status == event.session_log.START:  # purge_step: TensorBoard drops later steps
                for tag in out:
                    out[tag] = {s: v for s, v in out[tag].items() if s < event.step}
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def test_tensorboard_logs_every_evaluation_and_a_resume_leaves_no_duplicates(tmp_path):
    cfg = tiny()
    train.train(cfg, tmp_path / "run", progress=False, stop_after=30)  # checkpoint at 20, logged 10..30
    train.train(cfg, tmp_path / "run", progress=False)  # resumes from step 20
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20, 30, 40]
    # one event file per start, even when both start within the same second (tensorboardX names files by second)
    assert len(list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))) == 2
    tb = read_scalars(tmp_path / "run" / "tb")
    assert {"train/loss_interval_mean", "train/grad_norm_interval_mean", "train/lr", "perf/tokens_per_s",
            "validation/loss", "validation/loss_se", "test/bits_per_byte"} <= set(tb)
    assert "perf/mfu" not in tb  # no known peak for a CPU: not logged as zero
    for tag, key in [("validation/loss", "val_loss"), ("train/loss_interval_mean", "train_loss"),
                     ("train/lr", "lr"), ("train/grad_norm_interval_mean", "grad_norm")]:
        assert tb[tag] == {r["step"]: pytest.approx(r[key], rel=1e-6) for r in records}, tag
    assert all(r["grad_norm"] > 0 for r in records)
    # training scalars every logging.every = 10 steps too, here at the same steps as the evaluations
    assert set(tb["train/loss"]) == {10, 20, 30, 40} and all(v > 0 for v in tb["train/grad_norm"].values())


def test_training_scalars_every_few_steps_are_means_of_the_steps_between(tmp_path):
    """logging.every = 4 with evaluations every 10: train/loss at 4, 8, 12, ... is the mean of the per-step losses
    since the previous point (checked against metrics.jsonl's interval means, which cover 10 steps: the weighted
    means of the points inside an evaluation interval reproduce it), and a resume rewinds them too."""
    cfg = tiny(every=5)
    train.train(cfg, tmp_path / "run", progress=False)
    tb = read_scalars(tmp_path / "run" / "tb")
    assert sorted(tb["train/loss"]) == list(range(5, 41, 5))
    assert {"train/grad_norm", "train/lr", "train/tokens", "perf/tokens_per_s"} <= set(tb)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # two points of 5 steps per evaluation interval of 10
        mean = (tb["train/loss"][r["step"] - 5] + tb["train/loss"][r["step"]]) / 2
        assert mean == pytest.approx(r["train_loss"], rel=1e-5)
        assert tb["train/tokens"][r["step"]] == r["tokens"]
    with pytest.raises(config.ConfigError, match="logging.every: must be >= 0"):
        tiny(every=-1)


def test_tracked_config_and_run_names(tmp_path):
    from jscale import accounting, tracking

    cfg = tiny()
    conf = tracking.tracked_config(cfg)
    acc = accounting.account(cfg.model)
    assert conf["N"] == acc.N and conf["N_total"] == acc.N_total and conf["model"]["d_model"] == 32
    assert conf["tokens_per_param"] == pytest.approx(40 * 8 * 32 / acc.N_total)
    assert conf["flops_per_token_exact"] == acc.train_flops_exact
    assert tracking.tb_folder("L=2 D=40 H=5 seed=0", "abc123") == "L=2 D=40 H=5 seed=0 [abc123]"
    assert tracking.tb_folder("pilot a/b lr=0.001", "x") == "pilot a b lr=0.001 [x]"
    # W&B ids: one per run directory and attempt; a resume continues its own, a fresh start gets a new one
    first = tracking._wandb_id(tmp_path / "a" / "wandb-ids" / "run", 0)
    assert tracking._wandb_id(tmp_path / "a" / "wandb-ids" / "run", 20) == first  # resumed
    assert tracking._wandb_id(tmp_path / "b" / "wandb-ids" / "run", 0) != first  # same run, another directory
    again = tracking._wandb_id(tmp_path / "a" / "wandb-ids" / "run", 0)  # started over in the same directory
    assert again != first and tracking._wandb_id(tmp_path / "a" / "wandb-ids" / "run", 10) == again


def read_wandb_history(path, kinds: list | None = None) -> dict[int, dict[str, float]]:
    """The history rows of a W&B offline run file, {step: {key: value}}, read with a LevelDB-log reader written
    here (the file is W&B's 7-byte header, then 32 KiB blocks of records) and W&B's Record protobuf. kinds, if
    given, collects every record's type."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    at, pending, rows = 7, b"", {}
    while at + 7 <= len(raw):
        if 32768 - at % 32768 < 7:  # a block's trailer too short for a header is padding
            at += 32768 - at % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[at:at + 7])
        pending, at = pending + raw[at + 7:at + 7 + length], at + 7 + length
        if kind in (1, 4):  # a FULL record or the LAST fragment of one
            record = wandb_internal_pb2.Record.FromString(pending)
            pending = b""
            if kinds is not None:
                kinds.append(record.WhichOneof("record_type"))
            if record.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                rows[int(items["_step"])] = items
    return rows


def test_wandb_offline_logs_one_run_with_the_same_values(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = tiny(wandb=True, wandb_mode="offline", tensorboard=False)
    train.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "tb").exists()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # W&B's service process writes the file; on a loaded machine its last records can land after finish() returns
    # (seen once in CI: no history rows yet), so read until every step is there or half a minute has passed.
    deadline = time.monotonic() + 30
    while True:
        kinds: list = []
        history = read_wandb_history(next(runs[0].glob("run-*.wandb")), kinds)
        if len(history) >= len(records) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(history) == [r["step"] for r in records] == [10, 20, 30, 40], kinds
    for r in records:
        row = history[r["step"]]
        assert row["validation/loss"] == pytest.approx(r["val_loss"], rel=1e-9)
        assert row["train/loss_interval_mean"] == pytest.approx(r["train_loss"], rel=1e-9)
        assert row["test/bits_per_byte"] == pytest.approx(r["evals"]["test"]["bits_per_byte"], rel=1e-9)


def test_wandb_mode_is_validated_with_the_key_named():
    with pytest.raises(config.ConfigError, match="logging.wandb_mode"):
        tiny(wandb=True, wandb_mode="sometimes")


def test_a_sweep_logs_each_member_of_a_vmapped_group_as_its_own_run(tmp_path):
    import sqlite3

    from jscale import grid, sweep

    base = {"model": {"n_layer": 1, "d_model": 32, "n_heads": 2, "n_ctx": 32}, "data": {"eval_windows": 8},
            "train": {"batch_size": 8, "steps": 20, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10,
                      "checkpoint_every": 20}}
    sw = sweep.expand({"name": "t", "base": base, "axis": [{"key": "train.lr", "values": [1e-3, 3e-3]}]})
    assert grid.run_sweep(sw, tmp_path / "out", ensemble_size=2, progress=False)["groups"] == 1
    with sqlite3.connect(tmp_path / "out" / "results.sqlite") as c:
        rows = c.execute("SELECT run_id, step, val_loss FROM curves").fetchall()
        names = dict(c.execute("SELECT run_id, name FROM runs").fetchall())
    assert len({r for r, _, _ in rows}) == 2
    for run_id, step, val_loss in rows:  # TensorBoard's run is named as W&B's: "lr=0.001 [RUN_ID]"
        folder = tmp_path / "out" / "tb" / f"{names[run_id]} [{run_id}]"
        assert read_scalars(folder)["validation/loss"][step] == pytest.approx(val_loss)


def test_a_writer_that_fails_to_close_leaves_no_other_writer_open(tmp_path, monkeypatch):
    """A full disk fails tensorboardX's flush inside close(): the writers after it are still closed (their event
    files complete and readable), none stays registered, and the first failure is what the caller sees."""
    from jscale import tracking

    tracker = tracking.Tracker(config.LoggingConfig(tensorboard=True), ["a", "b"], ["a", "b"],
                               [tmp_path / "a", tmp_path / "b"], [{}, {}])
    tracker.start(0)
    tracker._log([{"validation/loss": 2.0}, {"validation/loss": 3.0}], [1, 1])
    first, second = tracker._tb

    def full_disk():
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(first, "close", full_disk)
    with pytest.raises(OSError, match="No space left"):
        tracker.close()
    assert not tracker.active
    assert read_scalars(tmp_path / "b") == {"validation/loss": {1: 3.0}}  # closed: flushed to its file
    second.close()  # (a second close of a closed writer is harmless)


def test_tensorboard_writer_does_not_import_torch():
    """tensorboardX imports torch when it is installed (seconds a process); jscale's writer leaves it out, and a torch
    the user imports afterwards still imports."""
    code = ("import importlib.util, sys\nfrom jscale import tracking\ntracking._summary_writer()\n"
            "assert 'tensorboardX' in sys.modules and 'torch' not in sys.modules, sorted(sys.modules)\n"
            "if importlib.util.find_spec('torch'):\n"
            "    import torch\n    assert torch.zeros(1).numpy().tolist() == [0.0]\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
