"""The train step, the schedule, vmapping, and the resumable single-run loop on real data."""

import json
import math
import os
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import jscale_cmd
from jscale import config, resolve, train
from jscale.train import programs
from jscale.config import ConfigError, TrainConfig
from jscale.models import build


def tiny(tmp_path, corpus="builtin:stdlib", **train_kw):
    t = {"batch_size": 8, "steps": 40, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10, "checkpoint_every": 20,
         **train_kw}
    return resolve.resolve(config.from_dict({"model": {"n_layer": 1, "d_model": 32, "n_heads": 2, "n_ctx": 32},
                             "data": {"corpus": corpus, "eval_windows": 8}, "train": t}))


def test_learning_rate_schedule_matches_the_formula():
    t = TrainConfig(lr=1e-3, warmup_steps=10, steps=110, final_lr_fraction=0.1)
    hp = train.hparams_from_config(t)
    for step in (0, 5, 10, 60, 110, 200):
        if step < 10:
            want = 1e-3 * step / 10
        else:
            progress = min((step - 10) / 100, 1.0)
            want = 1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        assert float(train.learning_rate(jnp.asarray(step), hp)) == pytest.approx(want, rel=1e-5)


def test_warmup_stable_decay_and_constant_schedules_match_the_formula():
    t = TrainConfig(lr=2e-3, warmup_steps=10, steps=110, schedule="wsd", decay_fraction=0.2, final_lr_fraction=0.1)
    hp = train.hparams_from_config(t)
    for step, want in ((5, 1e-3), (10, 2e-3), (88, 2e-3), (99, 2e-3 * (0.1 + 0.9 * 11 / 22)), (110, 2e-4)):
        assert float(train.learning_rate(jnp.asarray(step), hp)) == pytest.approx(want, rel=1e-5), step
    hp = train.hparams_from_config(TrainConfig(lr=2e-3, warmup_steps=10, steps=110, schedule="constant"))
    assert float(train.learning_rate(jnp.asarray(109), hp)) == pytest.approx(2e-3)


def test_warmup_in_tokens_or_per_parameter_sets_warmup_steps():
    from jscale import accounting

    model = {"n_layer": 2, "d_model": 32, "n_heads": 2, "n_ctx": 32}
    cfg = config.from_dict({"model": model, "train": {"batch_size": 8, "steps": 1000, "warmup_tokens": 2560}})
    assert resolve.resolve(cfg).train.warmup_steps == 10  # 2560 tokens / (8 x 32) per step
    cfg = config.from_dict({"model": model, "train": {"batch_size": 8, "steps": 2000, "warmup_per_param": 1.0}})
    n_total = accounting.account(resolve.resolve(cfg).model).N_total
    assert resolve.resolve(cfg).train.warmup_steps == round(n_total / 256) == 136  # Porian et al.: about N tokens
    cfg = config.from_dict({"model": model, "train": {"batch_size": 8, "steps": 1000, "warmup_per_param": 1.0}})
    assert resolve.resolve(cfg).train.warmup_steps == 100  # at most 10% of the run
    with pytest.raises(ConfigError, match="train.warmup_per_param: give warmup_tokens or warmup_per_param"):
        resolve.resolve(config.from_dict({"train": {"warmup_tokens": 10, "warmup_per_param": 1.0}}))
    with pytest.raises(ConfigError, match="train.schedule: 'linear' is not one of"):
        resolve.resolve(config.from_dict({"train": {"schedule": "linear"}}))


def test_vmapped_train_step_matches_each_member_alone():
    """Hyperparameters are data: one compiled step trains members with different lr, decay and seed."""
    cfg = config.ModelConfig(n_layer=1, d_model=16, n_heads=2, n_ctx=8, vocab_size=32, dropout=0.1)
    model, opt = build(cfg), train.make_optimizer(TrainConfig())
    step = train.make_train_step(model, dropout=True)
    members = [TrainConfig(lr=1e-2, seed=0, weight_decay=0.0, b2=0.95, schedule="wsd"),
               TrainConfig(lr=1e-3, seed=1, weight_decay=0.1, b2=0.99, b1=0.8)]
    states = [train.init_state(model, opt, 8, jnp.uint32(t.seed)) for t in members]
    hps = [train.hparams_from_config(t) for t in members]
    batches = [jax.random.randint(jax.random.key(i), (4, 9), 0, 32) for i in range(2)]
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
    new_stacked, metrics = jax.jit(jax.vmap(step))(stack(states), jnp.stack(batches), stack(hps))
    for i in range(2):
        alone, m = jax.jit(step)(states[i], batches[i], hps[i])
        assert float(metrics["loss"][i]) == pytest.approx(float(m["loss"]), rel=1e-6)
        for a, b in zip(jax.tree.leaves(alone.params), jax.tree.leaves(new_stacked.params)):
            np.testing.assert_allclose(a, b[i], rtol=1e-5, atol=1e-7)
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])


@pytest.mark.parametrize("members", [None, 2])
def test_several_steps_a_call_split_any_way_give_the_same_bits_as_the_steps(members):
    """train.multi_step runs the first n of K batches through train_step inside one program (what the loop calls).
    However the steps are split into calls, the bits are the same (a resumed run and a cooldown branch split them
    differently from the run they must equal); against one step a call, the same to float32 rounding (XLA compiles
    the step inside the loop on its own); rows n.. of the metrics stay zero."""
    cfg = config.ModelConfig(n_layer=1, d_model=16, n_heads=2, n_ctx=8, vocab_size=32)
    model, opt = build(cfg), train.make_optimizer(TrainConfig())
    step = train.make_train_step(model)
    K, n = train.STEPS_PER_CALL, 5
    init = lambda seed: train.init_state(model, opt, 8, jnp.uint32(seed))
    hp = train.hparams_from_config(TrainConfig(lr=1e-2, warmup_steps=2))
    batch_shape = (4, 9) if members is None else (members, 4, 9)
    if members is not None:  # an ensemble, members mapped one after another (the CPU mode)
        step = train.ensemble(step, "map")
        hp = jax.tree.map(lambda x: jnp.stack([x] * members), hp)
        init = lambda seed: jax.tree.map(lambda *a: jnp.stack(a), *(train.init_state(model, opt, 8, jnp.uint32(s))
                                                                      for s in range(members)))
    batches = jax.random.randint(jax.random.key(3), (K, *batch_shape), 0, 32)
    steps = jax.jit(train.multi_step(step))
    at_once, metrics = steps(init(0), batches, hp, np.int32(n))
    split, _ = steps(init(0), batches, hp, np.int32(2))
    split, rest = steps(split, jnp.concatenate([batches[2:], batches[:2]]), hp, np.int32(n - 2))
    for a, b in zip(jax.tree.leaves(at_once), jax.tree.leaves(split)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(metrics["loss"][2:n], rest["loss"][:n - 2])
    assert not np.any(np.asarray(metrics["loss"][n:])) and int(at_once.step.reshape(-1)[0]) == n
    one, losses = init(0), []
    for i in range(n):
        one, m = jax.jit(step)(one, batches[i], hp)
        losses.append(m["loss"])
    # (Adam divides by the gradient's size, so a near-zero gradient's rounding moves its weight by up to ~1e-5 here;
    # a skipped or reordered step moves weights by ~lr = 1e-2)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(at_once.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.stack(losses), metrics["loss"][:n], rtol=1e-6)


def test_loss_falls_on_the_builtin_corpus(tmp_path):
    cfg = tiny(tmp_path, steps=300, eval_every=100, checkpoint_every=300)
    final = train.train(cfg, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [100, 200, 300]
    # A uniform guess over bytes costs ln 256 = 5.55 nats; a tiny model learns Python's byte statistics fast.
    assert final["test_loss"] < 3.0
    assert records[0]["test_loss"] > final["test_loss"]
    assert final["test_bits_per_byte"] == pytest.approx(final["test_loss"] / math.log(2))  # byte tokens
    assert len(final["evals"]["test"]["per_position"]) == 32
    # Later positions have more context, so they are predicted better than the first.
    assert np.mean(final["evals"]["test"]["per_position"][-8:]) < final["evals"]["test"]["per_position"][0]
    assert final["mfu"] is None  # no known peak for a CPU
    assert final["flops_6N"] == 300 * 8 * 32 * 6 * 12 * 32 ** 2


def test_runs_that_differ_only_in_schedule_intervals_or_corpus_share_one_compilation(tmp_path, text_corpus):
    a = tiny(tmp_path)
    b = tiny(tmp_path, corpus=str(text_corpus), steps=80, lr=1e-3, warmup_steps=9, eval_every=20, checkpoint_every=40,
             schedule="wsd")
    first, second = train.compile_steps([a], stacked=False), train.compile_steps([b], stacked=False)
    assert second.train_steps is first.train_steps and second.eval_step is first.eval_step
    assert second.seconds["compile"] == 0.0
    # What the programs do depend on keeps them apart: the model, the batch, the evaluation chunk, the mesh.
    key = lambda cfg, members=1: programs.program_key([cfg] * members, members > 1, None)
    other_model = resolve.resolve(config.from_dict({**a.to_dict(), "model": {**a.to_dict()["model"], "d_model": 16}}))
    fewer_windows = resolve.resolve(config.from_dict({**a.to_dict(),
                                                      "data": {**a.to_dict()["data"], "eval_windows": 4}}))
    other_mesh = resolve.resolve(config.from_dict({**a.to_dict(), "parallel": {"data": 1}}))
    for other in (other_model, tiny(tmp_path, batch_size=4), fewer_windows, other_mesh):
        assert key(other) != key(a)
    assert key(a, members=2) != key(a)
    # The weights a run starts from are read on the host: another init_from shares the programs.
    from_weights = config.from_dict({**a.to_dict(), "model": {**a.to_dict()["model"], "init_from": "hf:gpt2"}})
    assert key(from_weights) == key(a)


def _losses(run_dir):
    return [(r["step"], r["train_loss"], r["test_loss"], r["evals"]["test"]["per_position"])
            for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_resumed_run_equals_uninterrupted_run_bitwise(tmp_path, capfd, monkeypatch):
    cfg = tiny(tmp_path, eval_log_points=5)  # and evaluations at 5 log-spaced steps: 40^(i/4) = 1, 3, 6, 16, 40
    assert cfg.train.eval_steps() == [1, 3, 6, 10, 16, 20, 30, 40]
    train.train(cfg, tmp_path / "straight", progress=False)
    train.train(cfg, tmp_path / "resumed", progress=False, stop_after=30)  # checkpoint at 20, logged 30
    assert [r[0] for r in _losses(tmp_path / "resumed")] == [1, 3, 6, 10, 16, 20, 30]
    capfd.readouterr()
    # As in a new process: nothing compiled yet. The resume reads a checkpoint, so it never compiles the init.
    monkeypatch.setattr(programs, "_STEPS_CACHE", {})
    monkeypatch.setattr(programs, "_INIT_CACHE", {})
    train.train(cfg, tmp_path / "resumed", progress=True)
    bar = capfd.readouterr().err
    assert "20/40" in bar and "40/40" in bar and " 0/40" not in bar  # the bar resumes where the run does
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    assert [steps.init.compiled for steps in programs._STEPS_CACHE.values()] == [False] and not programs._INIT_CACHE
    train.train(cfg, tmp_path / "fresh", progress=False, stop_after=10)  # a fresh start does
    assert [steps.init.compiled for steps in programs._STEPS_CACHE.values()] == [True]


def test_run_killed_by_sigkill_resumes_to_the_same_curve(tmp_path, jscale_here):
    """A real process, killed with SIGKILL right after its first checkpoint (step 50 of 200), then the same command
    again (in this process, as the uninterrupted run)."""
    cfg_path = tmp_path / "tiny.toml"
    cfg_path.write_text('[model]\nn_layer = 1\nd_model = 32\nn_heads = 2\nn_ctx = 32\n'
                        '[data]\neval_windows = 8\n'
                        '[train]\nbatch_size = 8\nsteps = 200\nlr = 3e-3\nwarmup_steps = 5\neval_every = 10\n'
                        'checkpoint_every = 50\n')
    args = ("train", str(cfg_path), "--quiet", "--out", str(tmp_path / "killed"))
    proc = subprocess.Popen(jscale_cmd(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.isdigit() for p in checkpoints.glob("*")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    steps_at_kill = [r[0] for r in _losses(tmp_path / "killed")]
    assert steps_at_kill and steps_at_kill[-1] < 200  # it really died part-way
    jscale_here(*args, check=0)
    jscale_here("train", str(cfg_path), "--quiet", "--out", str(tmp_path / "straight"), check=0)
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "straight")


def test_a_run_directory_refuses_a_different_config(tmp_path):
    train.train(tiny(tmp_path, steps=10, checkpoint_every=10), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"train.lr: .* holds a run with train.lr = 0.003, not 0.001"):
        train.train(tiny(tmp_path, steps=10, checkpoint_every=10, lr=1e-3), tmp_path / "run", progress=False)


def test_checkpoint_interval_must_be_a_multiple_of_eval_interval(tmp_path):
    with pytest.raises(ConfigError, match="train.checkpoint_every: 15 must be a multiple of train.eval_every"):
        train.train(tiny(tmp_path, checkpoint_every=15), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_cooldown_branch_is_the_shorter_run_and_resumes_bitwise(tmp_path):
    """train.anneal_branches: the branch of horizon H off a WSD run's stable phase is, bitwise, the WSD run of H
    steps trained on its own (same batches and learning rate at every step); a run stopped after its first branch
    and resumed records the same branches as one trained straight through."""
    kw = dict(schedule="wsd", decay_fraction=0.25, warmup_steps=2)
    cfg = tiny(tmp_path, anneal_branches=2, **kw)
    assert cfg.train.anneal_horizons() == [(10, 7), (20, 15)] and cfg.train.branch_steps() == 8
    train.train(cfg, tmp_path / "long", progress=False)
    anneals = {a["horizon"]: a for a in train.JsonlSink(tmp_path / "long" / "metrics.jsonl").anneals()}
    assert sorted(anneals) == [10, 20] and [anneals[h]["start"] for h in (10, 20)] == [7, 15]
    for horizon in (10, 20):
        short = tiny(tmp_path, steps=horizon, eval_every=horizon, checkpoint_every=horizon, **kw)
        record = train.train(short, tmp_path / f"short{horizon}", progress=False)
        branch = anneals[horizon]
        assert branch["evals"]["validation"]["loss"] == record["val_loss"]  # bitwise
        assert list(branch["evals"]) == ["validation"]  # what convergence reads; test is for reporting
        per_window = np.round(record["per_window"]["validation"].astype(float), 5).tolist()
        assert branch["per_window"]["validation"] == per_window
    assert anneals[20]["evals"]["validation"]["loss"] < anneals[10]["evals"]["validation"]["loss"]
    # stopped at step 18 (after the branch at 15, before the checkpoint at 20): resumed from step 0's start, the
    # branch at 15 is redone, not recorded twice
    train.train(cfg, tmp_path / "resumed", progress=False, stop_after=18)
    train.train(cfg, tmp_path / "resumed", progress=False)
    again = train.JsonlSink(tmp_path / "resumed" / "metrics.jsonl").anneals()
    assert [a["horizon"] for a in again] == [10, 20]
    assert again == list(anneals.values())
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "long")


def test_cooldown_branches_are_refused_where_they_cannot_be_taken():
    with pytest.raises(ConfigError, match="train.anneal_branches: cooldown branches need train.schedule"):
        resolve.resolve(config.from_dict({"train": {"anneal_branches": 1}}))
    with pytest.raises(ConfigError, match="inside the warmup"):
        resolve.resolve(config.from_dict({"train": {"anneal_branches": 3, "schedule": "wsd", "steps": 400,
                                                    "warmup_steps": 41}}))
    # a branch starting where the warmup ends is WSD with no stable phase: allowed (400 / 8 = 50 steps, from 40)
    resolve.resolve(config.from_dict({"train": {"anneal_branches": 3, "schedule": "wsd", "steps": 400,
                                                "warmup_steps": 40}}))
