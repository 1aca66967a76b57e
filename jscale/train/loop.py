"""The training loop: one run (on one device or sharded over a mesh) or an ensemble of runs, resumable bitwise.

`train_loop` trains runs that share every shape from their newest checkpoint; each evaluation is committed to its
sink before the checkpoint that covers it, so a process killed at any moment resumes to the results of an
uninterrupted run. `train` is `jscale train`: one run in a run directory.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jscale import accounting, config, data, interrupts, results, sharding, tracking
from jscale.config import Config, ConfigError, TrainConfig, eval_window_counts
from jscale.errors import resource_error
from jscale.files import write_atomic
from jscale.hosts import agree, fetch
from jscale.models import has_memory
from jscale.progress import progress_bar, set_bar, show_losses, timed
from jscale.train.checkpoints import Checkpoints
from jscale.train.programs import STEPS_PER_CALL, GroupSteps, compile_steps, device_peak_flops, stack_members
from jscale.train.sinks import JsonlSink
from jscale.train.step import TrainState, eval_context, hparams_from_config, padded_chunks, summarize_eval


# A member whose evaluation loss exceeds this many times ln(vocabulary), the loss of a uniform guess, has diverged
# even if every value is finite (a loss of 139 nats at V = 256 once ended "done").
DIVERGED_LOSS_FACTOR = 10.0


def evaluate(steps: "GroupSteps", params, windows_WxS: np.ndarray, members: int) -> np.ndarray:
    """The loss at every position of every window for each member, (M, W, T): the windows in chunks of the
    compiled size (padding dropped)."""
    C = steps.eval_chunk
    return np.concatenate([fetch(steps.eval_step(params, sharding.put(chunk, steps.replicated)))
                           .reshape(members, C, -1)[:, :n] for chunk, n in padded_chunks(windows_WxS, C)], axis=1)


def prepare_eval_windows(cfg: Config, corpus: data.TokenizedCorpus) -> dict[str, int]:
    """How many final-evaluation windows each evaluation set of this run scores, with the windows chosen (and
    cached with the corpus) for all sets in one pass over the train split."""
    n_ctx, context = cfg.model.n_ctx, eval_context(cfg.model)
    n_final, _ = eval_window_counts(cfg.data, n_ctx)
    # sized from eval_tokens: each set at most what it holds without overlapping (a small extra set scores fewer
    # windows; validation and test keep theirs)
    counts = {split: n_final if cfg.data.eval_windows > 0 else min(n_final, corpus.window_capacity(n_ctx, context,
                                                                                                   split))
              for split in corpus.eval_sets}
    corpus.prepare_windows([(split, counts[split], n_ctx, context) for split in corpus.eval_sets])
    return counts


def train_loop(cfgs: list[Config], run_ids: list[str], corpus: data.TokenizedCorpus, checkpoint_dir: Path,
               sink, stacked: bool, on_step: Callable[[int], None] | None = None,
               log: Callable[[str], None] | None = None, stop_after: int | None = None,
               devices=None, compiled: GroupSteps | None = None,
               timings: dict[str, float] | None = None, mode: str = "vmap",
               on_resume: Callable[[int], None] | None = None, tracker=None,
               on_eval: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """Train runs that share every array shape and step count, from their newest checkpoint in checkpoint_dir.

    stacked=True trains them as one vmapped ensemble (params, optimizer states and hyperparameters stacked on a
    leading member axis, members spread over the mesh's ensemble axis); stacked=False trains cfgs[0] alone,
    sharded over the mesh of cfgs[0].parallel. Each evaluation goes to sink.record (on process 0 only) before the
    checkpoint that covers it is written, each cooldown branch to sink.record_anneal, and the evaluation windows'
    documents to sink.record_blocks where the sink has it (JsonlSink, grid.DBSink). Returns the last record of each
    run.

    compiled: the group's steps from compile_steps, if compiled ahead of time. timings: a dict that collects the
    seconds spent compiling, initialising, training, evaluating and checkpointing. tracker: a tracking.Tracker
    that also gets each evaluation's records (TensorBoard, W&B), on process 0. on_eval: called with them too
    (a progress bar shows the losses).
    """
    cfg, M = cfgs[0], len(cfgs)
    t, n_ctx = cfg.train, cfg.model.n_ctx
    steps = compiled if compiled is not None else compile_steps(cfgs, stacked, devices, mode, with_init=False)
    times = {} if timings is None else timings
    for key, value in steps.seconds.items():
        times[key] = times.get(key, 0.0) + value
    mesh, state_sh = steps.mesh, steps.state_sh
    host_hp = [{k: np.asarray(v) for k, v in hparams_from_config(c.train).items()} for c in cfgs]
    host_hp = stack_members(host_hp) if stacked else host_hp[0]
    hparams = {k: sharding.put(v, steps.hp_sharding) for k, v in host_hp.items()}

    writer = sink if jax.process_index() == 0 else None
    recorded = agree(writer.last_step() if writer is not None else 0)
    say = log or (lambda line: print(f"jscale: {line}", flush=True))
    checkpoints = Checkpoints(checkpoint_dir, t.keep_checkpoints)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), steps.abstract, state_sh)
    with timed(times, "checkpoint"):
        state, start = checkpoints.restore(target, recorded, say)
    if state is None:
        with timed(times, "compile"):  # nothing when compiled ahead of time
            steps.init.compile()
        with timed(times, "init"):
            state = jax.block_until_ready(steps.init(host_hp["seed"]))
            if cfg.model.init_from:  # a fresh start from given weights; the optimizer state starts fresh
                state = _start_from(state, cfg, M if stacked else None, state_sh)
    if writer is not None:
        writer.resume(start)
        if start == t.steps and hasattr(writer, "finish"):  # killed after its final checkpoint, before marking
            writer.finish()
    if on_resume is not None:  # a progress bar starts where the run resumes
        on_resume(start)
    tracker = tracker if writer is not None else None
    if tracker is not None:
        tracker.start(start)

    _, n_curve = eval_window_counts(cfg.data, n_ctx)
    explicit = cfg.data.eval_windows > 0
    with timed(times, "windows"):  # once per corpus, window count and context; then read from the cache
        counts = prepare_eval_windows(cfg, corpus)
    eval_sets = {split: corpus.eval_windows(counts[split], n_ctx, eval_context(cfg.model), split, strict=explicit)
                 for split in corpus.eval_sets}
    curve_subset = {split: results.curve_subset(len(w), n_curve)
                    for split, w in eval_sets.items()}  # what the evaluations before the last score
    if hasattr(writer, "record_blocks"):  # the document of each window: intervals resample documents (jscale.noise)
        writer.record_blocks({split: corpus.window_blocks(counts[split], n_ctx, eval_context(cfg.model), split,
                                                          strict=explicit) for split in eval_sets},
                             n_ctx, eval_context(cfg.model))
    consecutive = has_memory(cfg.model)  # Transformer-XL reads each batch row's stream segment by segment
    acc = accounting.account(cfg.model)
    tokens_per_step = t.batch_size * n_ctx
    peak = device_peak_flops()
    peak = None if peak is None else peak * mesh.size
    data_seeds = [c.train.seed if c.train.data_seed is None else c.train.data_seed for c in cfgs]
    subsets = [(c.data.max_train_tokens, c.data.subset_seed, c.data.subset_chunk) for c in cfgs]
    data_tokens = [d or len(corpus.train) for d, _, _ in subsets]  # D: the tokens each member may draw from

    last: list[dict] = []
    losses: list[tuple[jax.Array, int]] = []  # per train_steps call: its (K, ...) losses and how many are steps
    grad_norms: list[tuple[jax.Array, int]] = []
    diverged = np.zeros(M if stacked else 1, bool)  # members whose loss left any sensible range, for good
    max_loss = DIVERGED_LOSS_FACTOR * math.log(cfg.model.vocab_size)
    last_time, last_step = time.perf_counter(), start
    end = t.steps if stop_after is None else min(t.steps, stop_after)
    loop_start = time.perf_counter()
    eval_before, checkpoint_before = times.get("eval", 0.0), times.get("checkpoint", 0.0)
    anneal_before = times.get("anneal", 0.0)
    K = STEPS_PER_CALL

    def batches_from(first: int, n: int) -> jax.Array:
        """Every member's batches of steps first .. first + n - 1, a pure function of (its data seed, step), on a
        leading steps axis of K rows (train_steps reads the first n; the rest are zeros)."""
        host = np.zeros((K, *((M,) if stacked else ()), t.batch_size, n_ctx + 1), np.int32)
        for i, step in enumerate(range(first, first + n)):
            batches = [corpus.train_batch(s, step, t.batch_size, n_ctx, d, consecutive, subset_seed, chunk)
                       for s, (d, subset_seed, chunk) in zip(data_seeds, subsets)]
            host[i] = np.stack(batches) if stacked else batches[0]
        return sharding.put(host, steps.batches_sh)

    # Cooldown branches (train.anneal_branches): at the step where the run of each shorter horizon would start its
    # cooldown, a copy of the state anneals to that horizon and is scored on the final validation windows.
    branches = {start_k: horizon for horizon, start_k in t.anneal_horizons()}
    branch_hparams = {horizon: _with_horizon(host_hp, horizon, steps.hp_sharding) for horizon in branches.values()}
    # Training scalars for the trackers every logging.every steps (one transfer of the steps since the last point).
    log_every = cfg.logging.every if tracker is not None and tracker.active else 0
    log_from, log_time, log_step = 0, time.perf_counter(), start
    # The steps after which something happens on the host: each call of train_steps runs up to one of them.
    events = (set(t.eval_steps()) | set(branches) | {end}
              | (set(range(log_every, end + 1, log_every)) if log_every else set()))
    try:
        step = start
        while step < end:
            interrupts.check()  # a call's boundary: everything written so far is whole
            n = next(k for k in range(1, K + 1) if step + k in events or k == K)
            state, metrics = steps.train_steps(state, batches_from(step, n), hparams, np.int32(n))
            losses.append((metrics["loss"], n))
            grad_norms.append((metrics["grad_norm"], n))
            done = step + n
            if log_every and done % log_every == 0 and len(losses) > log_from:
                loss_m = _mean_over_steps(losses[log_from:])
                grad_m = _mean_over_steps(grad_norms[log_from:])
                lr_m = fetch(metrics["lr"][n - 1]).reshape(-1)
                now = time.perf_counter()
                per_s = (done - log_step) * tokens_per_step / max(now - log_time, 1e-9)
                tracker.record_train([{
                    "step": done, "train_loss": float(loss_m[i]), "grad_norm": float(grad_m[i]), "lr": float(lr_m[i]),
                    "tokens": done * tokens_per_step, "epochs": done * tokens_per_step / data_tokens[i],
                    "tokens_per_s": per_s,
                    "mfu": None if peak is None else M * per_s * acc.train_flops_exact / peak}
                    for i in range(len(run_ids))])
                log_from, log_time, log_step = len(losses), now, done
            if done in branches:
                interrupts.point("anneal")
                horizon = branches[done]
                jax.block_until_ready(state)  # the steps dispatched so far count as training
                anneal_start = time.perf_counter()
                params = _anneal(steps, state, done, horizon, branch_hparams[horizon], batches_from)
                # validation only: convergence and its extrapolation read it (a branch costs one set's evaluation)
                scored = {"validation": summarize_eval(evaluate(steps, params, eval_sets["validation"],
                                                                M if stacked else 1))}
                spent = time.perf_counter() - anneal_start
                times["anneal"] = times.get("anneal", 0.0) + spent
                last_time += spent  # tokens per second counts the run's own steps
                log_time += spent
                if writer is not None:
                    writer.record_anneal([_anneal_record(run_id, i, horizon, done, scored, tokens_per_step, acc,
                                                         corpus) for i, run_id in enumerate(run_ids)])
            if t.is_eval_step(done):
                interrupts.point("eval")
                jax.block_until_ready(state)  # the steps dispatched so far count as training, not evaluation
                eval_start = time.perf_counter()
                final = done == t.steps
                members = M if stacked else 1
                raw = {split: evaluate(steps, state.params, windows if final else windows[curve_subset[split]],
                                       members)
                       for split, windows in eval_sets.items()}
                evals = {split: summarize_eval(losses) for split, losses in raw.items()}
                train_loss = _mean_over_steps(losses)
                grad_norm = _mean_over_steps(grad_norms)
                # NaN/inf froze the member inside train_step; a finite loss far above a uniform guess (ln V) is
                # divergence too, and stays so.
                diverged |= ~fetch(state.alive).reshape(-1) | ~(evals["validation"]["loss"] < max_loss)
                lr = fetch(metrics["lr"][n - 1]).reshape(-1)
                now = time.perf_counter()
                tokens_per_s = (done - last_step) * tokens_per_step / (now - last_time)  # per member
                last = []
                for i, run_id in enumerate(run_ids):
                    tokens = done * tokens_per_step
                    last.append({
                        "run_id": run_id, "step": done, "tokens": tokens, "epochs": tokens / data_tokens[i],
                        "flops_6N": tokens * acc.train_flops_6N, "flops_exact": tokens * acc.train_flops_exact,
                        "train_loss": float(train_loss[i]),  # the mean over the steps since the last evaluation
                        "grad_norm": float(grad_norm[i]),  # before clipping, the mean over the same steps
                        "val_loss": float(evals["validation"]["loss"][i]),
                        "val_se": float(evals["validation"]["se"][i]),
                        "test_loss": float(evals["test"]["loss"][i]), "test_se": float(evals["test"]["se"][i]),
                        "test_bits_per_byte": float(evals["test"]["loss"][i]) / math.log(2)
                        / corpus.bytes_per_token("test"),
                        "evals": {split: {"loss": float(e["loss"][i]), "se": float(e["se"][i]),
                                          "bits_per_byte": float(e["loss"][i]) / math.log(2)
                                          / corpus.bytes_per_token(split),
                                          "per_position": e["per_position"][i].round(5).tolist()}
                                  for split, e in evals.items()},
                        # Each window's loss at the last evaluation, for bootstraps over windows and paired
                        # differences between runs (the same windows for every run of a corpus and context).
                        "per_window": {split: e["per_window"][i].astype(np.float32) for split, e in evals.items()}
                        if final else None,
                        # and, on the test split, each window's loss at each position (float16): paired
                        # per-position comparisons between runs with window-bootstrap intervals.
                        "window_positions": np.minimum(raw["test"][i], 6e4).astype(np.float16) if final else None,
                        "tokens_per_s": tokens_per_s,
                        "mfu": None if peak is None else M * tokens_per_s * acc.train_flops_exact / peak,
                        "lr": float(lr[i]), "status": "diverged" if diverged[i] else "done" if final else "running",
                        "wall_time": now - last_time,
                    })
                if writer is not None:
                    # A sink that can (grid.DBSink) marks a run done only once its final weights are written too:
                    # until then the final evaluation is committed as running, so a kill in between is redone.
                    deferred = final and hasattr(writer, "finish")
                    writer.record([{**r, "status": "running"} if deferred and r["status"] == "done" else r
                                   for r in last])
                if tracker is not None:
                    tracker.record(last)
                if log is not None:
                    log(_summary(last))
                if on_eval is not None:
                    on_eval(last)
                losses.clear()
                grad_norms.clear()
                last_time, last_step = time.perf_counter(), done
                log_from, log_time = 0, last_time  # evaluation time is not training time
                times["eval"] = times.get("eval", 0.0) + last_time - eval_start
                # Checkpoint only after the records it covers are committed (see resume above).
                if done % t.checkpoint_every == 0 or done == t.steps:
                    interrupts.point("checkpoint")
                    with timed(times, "checkpoint"):
                        checkpoints.save(done, state)
                if final and writer is not None and hasattr(writer, "finish"):
                    writer.finish()  # results and final weights both durable: now the runs are done
            if on_step is not None:
                on_step(n)
            if step == start:
                interrupts.point("train")
            step = done
        jax.block_until_ready(state)
    finally:
        checkpoints.close()
        if tracker is not None:
            tracker.close()
        times["train"] = times.get("train", 0.0) + (time.perf_counter() - loop_start) - (
            times.get("eval", 0.0) - eval_before) - (times.get("checkpoint", 0.0) - checkpoint_before) - (
            times.get("anneal", 0.0) - anneal_before)
    return last


def _with_horizon(host_hp: dict, horizon: int, hp_sharding) -> dict:
    """The hyperparameters of the run of `horizon` steps: the same, with total_steps set (every member)."""
    return {k: sharding.put(np.full_like(v, horizon) if k == "total_steps" else v, hp_sharding)
            for k, v in host_hp.items()}


_copy_state = jax.jit(lambda state: jax.tree.map(jnp.copy, state))  # the step donates its state: branch off a copy


def _anneal(steps: GroupSteps, state: TrainState, start: int, horizon: int, hparams: dict,
            batches_from: Callable[[int, int], jax.Array]) -> object:
    """The parameters of the run of `horizon` steps: a copy of the state at `start` (the stable phase both runs
    share) trained on through that run's cooldown, on the batches that run would draw."""
    branch = _copy_state(state)
    for step in range(start, horizon, STEPS_PER_CALL):
        interrupts.check()
        n = min(STEPS_PER_CALL, horizon - step)
        branch, _ = steps.train_steps(branch, batches_from(step, n), hparams, np.int32(n))
    return branch.params


def _mean_over_steps(calls: list[tuple[jax.Array, int]]) -> np.ndarray:
    """Each member's mean of a per-step metric over the steps of these train_steps calls ((K, ...) rows of which
    the first n are steps), in one transfer: shape (members,), (1,) for a single run."""
    rows = fetch(jnp.stack([m for m, _ in calls]))
    return np.concatenate([r[:n] for r, (_, n) in zip(rows, calls)]).reshape(sum(n for _, n in calls), -1).mean(0)


def _anneal_record(run_id: str, i: int, horizon: int, start: int, scored: dict, tokens_per_step: int, acc,
                   corpus) -> dict:
    """One member's cooldown branch: its horizon, where it left the run, and the scored sets' (validation's) loss,
    standard error and per-window losses (the final evaluation's windows, so horizons compare window by window)."""
    return {"run_id": run_id, "horizon": horizon, "start": start, "tokens": horizon * tokens_per_step,
            "flops_exact": horizon * tokens_per_step * acc.train_flops_exact,
            "evals": {split: {"loss": float(e["loss"][i]), "se": float(e["se"][i]),
                              "bits_per_byte": float(e["loss"][i]) / math.log(2) / corpus.bytes_per_token(split)}
                      for split, e in scored.items()},
            "per_window": {split: e["per_window"][i].astype(np.float32) for split, e in scored.items()}}


def _start_from(state: TrainState, cfg: Config, members: int | None, state_sh) -> TrainState:
    """The state with its parameters replaced by model.init_from's (stacked for every member of an ensemble)."""
    from jscale import hf_gpt2

    loaded = hf_gpt2.load_params(cfg.model.init_from, cfg.model)
    if jax.tree.structure(loaded) != jax.tree.structure(jax.tree.map(lambda x: 0, state.params)):
        raise ConfigError(f"model.init_from: {cfg.model.init_from} does not hold this model's parameters")
    if members is not None:
        loaded = jax.tree.map(lambda x: np.broadcast_to(x, (members, *x.shape)), loaded)
    return state.replace(params=jax.device_put(loaded, state_sh.params))


def _summary(records: list[dict]) -> str:
    r = records[0]
    mfu = "" if r["mfu"] is None else f" mfu {100 * r['mfu']:.1f}%"
    if len(records) == 1:
        return (f"step {r['step']:>7} | tokens {r['tokens']:.3g} | train {r['train_loss']:.4f} (mean) | "
                f"val {r['val_loss']:.4f} ± {r['val_se']:.4f} | test {r['test_loss']:.4f} nats "
                f"({r['test_bits_per_byte']:.3f} bpb) | "
                f"{r['tokens_per_s']:.3g} tok/s{mfu}")
    tests = [x["val_loss"] for x in records if x["status"] != "diverged"] or [float("nan")]
    diverged = sum(x["status"] == "diverged" for x in records)
    return (f"step {r['step']:>7} | {len(records)} members | val {min(tests):.4f}..{max(tests):.4f} nats | "
            f"{len(records) * r['tokens_per_s']:.3g} tok/s{mfu}" + (f" | {diverged} diverged" if diverged else ""))


def _check_run_dir(run_dir: Path, cfg: Config) -> None:
    """A run directory holds one config; refuse to resume it with another."""
    config_path = run_dir / "config.json"
    wanted = cfg.identity()
    if config_path.exists():
        try:
            held = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{config_path}: not valid JSON ({e}); it records which run this directory holds: "
                              f"restore it, or use another --out") from None
        if not isinstance(held, dict):
            raise ConfigError(f"{config_path}: not a jscale run config; restore it, or use another --out")
        for section, fields in wanted.items():
            for key, value in fields.items():
                if held.get(section, {}).get(key, config.NEUTRAL_LATER_KEYS.get(f"{section}.{key}")) != value:
                    raise ConfigError(f"{section}.{key}: {run_dir} holds a run with {section}.{key} = "
                                      f"{held.get(section, {}).get(key)!r}, not {value!r}; use another --out")
    else:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise resource_error(e, run_dir, "cannot create") from None
        write_atomic(config_path, json.dumps(cfg.to_dict(), indent=2))


def _keep_tokenizer(cfg: Config, run_dir: Path) -> None:
    """A run directory keeps the tokenizer it trained with (tokenizer.json), so that a copy of the run exports and
    samples without the corpus (a BPE trained on it is not trained again)."""
    from jscale.data.tokenizers import hf_tokenizer_json

    path = run_dir / "tokenizer.json"
    if path.exists() or cfg.data.corpus.startswith("bin:"):
        return
    text = hf_tokenizer_json(data.make_tokenizer(cfg.data))
    if text is not None:
        write_atomic(path, text)


def check_runnable(cfg: Config) -> None:
    """What only the running backend (or a file) can tell, checked before anything compiles."""
    m = cfg.model
    if m.init_from:
        from jscale import hf_gpt2

        hf_gpt2.load_params(m.init_from, m)  # names and shapes against this config, before any work
    if m.kind == "lstm" and m.lstm_impl == "cudnn" and jax.default_backend() != "gpu":
        raise ConfigError(f"model.lstm_impl: cudnn needs a GPU (this backend is {jax.default_backend()}); use scan")


def check_intervals(t: TrainConfig) -> None:
    if t.checkpoint_every % t.eval_every:
        raise ConfigError(f"train.checkpoint_every: {t.checkpoint_every} must be a multiple of "
                          f"train.eval_every = {t.eval_every}, so a resumed run logs the same curve")


def train(cfg: Config, run_dir: str | Path, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train one model as configured, resuming from run_dir's newest checkpoint. Returns the final record.

    stop_after: leave the loop after this many steps in total (for tests that simulate a crash).
    """
    run_dir = Path(run_dir)
    check_intervals(cfg.train)
    check_runnable(cfg)
    data.check_sizes(cfg.data, cfg.model.n_ctx, eval_context(cfg.model))  # before tokenizing anything
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out: {run_dir} is a file, not a run directory")
    corpus = data.prepare(cfg.data)
    corpus.check_fits(cfg.model.n_ctx, cfg.data.max_train_tokens, eval_context(cfg.model), cfg.data.eval_windows)
    _check_run_dir(run_dir, cfg)
    _keep_tokenizer(cfg, run_dir)
    sink = JsonlSink(run_dir / "metrics.jsonl")
    recorded = sink.last_step()  # the checkpoint resumed from is the newest one not past the recorded steps
    if sink.damaged:
        line, lines = sink.damaged
        print(f"jscale: {sink.path}: record {line} of {lines} is damaged; resuming from the newest checkpoint at or "
              f"before step {recorded} to write it and the ones after it again", flush=True)
    on_disk = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    bar = progress_bar(progress and jax.process_index() == 0, cfg.train.steps,
                        max([s for s in on_disk if s <= recorded], default=0))
    last = train_loop([cfg], ["run"], corpus, run_dir / "checkpoints", sink, stacked=False,
                      on_step=None if bar is None else bar.update, log=None if bar is None else bar.write,
                      stop_after=stop_after, on_resume=None if bar is None else lambda start: set_bar(bar, start),
                      tracker=tracking.tracker_for_run(cfg, run_dir),
                      on_eval=None if bar is None else lambda records: show_losses(bar, records))
    if bar is not None:
        bar.close()
    if last:
        return last[0]
    records = sink.records()  # already finished: nothing was trained
    return records[-1] if records else {}
