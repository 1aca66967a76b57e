"""A trained model: its config and parameters loaded from a run directory (or one member of a sweep), sampled
from and evaluated on any corpus or split. `jscale sample` and `jscale eval` are thin wrappers.

A run is `jscale train`'s directory (config.json, checkpoints/), or a sweep's directory with a run id or name
(results.sqlite, groups/GROUP/checkpoints/, where a vmapped group stores its members stacked on a leading axis).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import sqlite3
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jscale import config, data
from jscale.config import Config, ConfigError
from jscale.generate import make_next_token, make_sampler
from jscale.models import build
from jscale.resolve import resolve


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    cfg: Config
    params: Any  # the model's parameter tree (numpy/jax arrays)
    step: int  # the optimizer step of the checkpoint
    source: str  # what was loaded, for messages


def _restore_params(checkpoints: Path, step: int | None, what: str) -> tuple[Any, int]:
    """The params of checkpoint `step` (default the newest), read without building the training state."""
    import orbax.checkpoint as ocp

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # orbax warns that a read-only manager does not create directories
    try:
        steps = sorted(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()) if checkpoints.is_dir() else []
        if not steps:
            raise ConfigError(f"{what}: no checkpoint to load in {checkpoints} (train it first)")
        if step is None:
            step = steps[-1]
        elif step not in steps:
            raise ConfigError(f"--step: {what} has checkpoints at steps {', '.join(map(str, steps))}, not {step}")
        manager = ocp.CheckpointManager(checkpoints.resolve(), options=ocp.CheckpointManagerOptions(read_only=True))
        try:
            state = manager.restore(step, args=ocp.args.StandardRestore())
        except Exception as e:  # noqa: BLE001 (a damaged checkpoint: say which, in one line)
            raise ConfigError(f"{what}: checkpoint {checkpoints / str(step)} cannot be read "
                              f"({' '.join(str(e).split())[:160]})") from None
        finally:
            manager.close()
    finally:
        absl.setLevel(level)
    return state["params"], step


def load(run: str | Path, run_id: str | None = None, step: int | None = None) -> TrainedModel:
    """A run directory of `jscale train`, or a sweep directory and one of its runs (run_id: its id or name)."""
    run = Path(run)
    if (run / "results.sqlite").exists():
        return _load_sweep_member(run, run_id, step)
    if run_id is not None:
        raise ConfigError(f"--run: {run} is a single run's directory, not a sweep's (no results.sqlite)")
    config_path = run / "config.json"
    if not config_path.exists():
        raise ConfigError(f"{run}: not a run directory (no config.json) or a sweep directory (no results.sqlite)")
    try:
        cfg = resolve(config.from_dict(json.loads(config_path.read_text())))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config_path}: not valid JSON ({e})") from None
    params, step = _restore_params(run / "checkpoints", step, str(run))
    return TrainedModel(cfg, params, step, str(run))


def _load_sweep_member(out: Path, run_id: str | None, step: int | None) -> TrainedModel:
    with sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT run_id, name, group_id, config FROM runs ORDER BY rowid").fetchall()
    if run_id is None:
        raise ConfigError(f"--run: {out} is a sweep of {len(rows)} runs; name one by id or name "
                          f"(jscale status {out} lists them)")
    matches = [r for r in rows if run_id in (r[0], r[1])]
    if len(matches) != 1:
        raise ConfigError(f"--run: {'no' if not matches else 'more than one'} run of {out} has id or name "
                          f"{run_id!r}" + ("; use the run id" if matches else ""))
    rid, name, group_id, cfg_json = matches[0]
    members = [r[0] for r in rows if r[2] == group_id]  # the group's member order, as registered
    cfg = resolve(config.from_dict(json.loads(cfg_json)))
    params, step = _restore_params(out / "groups" / group_id / "checkpoints", step, f"{out} run {rid}")
    if len(members) > 1:  # a vmapped group: this member's slice of the stacked parameters
        i = members.index(rid)
        params = jax.tree.map(lambda x: np.asarray(x)[i], params)
    return TrainedModel(cfg, params, step, f"{out} run {name} ({rid})")


# ---------------------------------------------------------------------------------------------------------------
# Sampling.


def tokenizer_of(cfg: Config):
    """The tokenizer a run was trained with (a bin: corpus has none unless data.tokenizer is a file)."""
    d = cfg.data
    if d.corpus.startswith("bin:") and not d.tokenizer.startswith("file:"):
        raise ConfigError(f"data.tokenizer: the run trained on pre-tokenized {d.corpus} and has no tokenizer to "
                          f"encode a prompt with; train with data.tokenizer = \"file:PATH\"")
    return data.make_tokenizer(d)


def sample(model: TrainedModel, prompt: str, n_tokens: int = 200, temperature: float = 1.0, top_k: int = 0,
           seed: int = 0) -> str:
    """The text the model writes after `prompt` (an empty prompt starts a new document)."""
    cfg = model.cfg
    if n_tokens < 1:
        raise ConfigError(f"--tokens: must be at least 1, got {n_tokens}")
    if temperature < 0:
        raise ConfigError(f"--temperature: must be >= 0 (0 = greedy), got {temperature}")
    if not 0 <= top_k <= cfg.model.vocab_size:
        raise ConfigError(f"--top-k: must be in [0, {cfg.model.vocab_size}] (0 = no filter), got {top_k}")
    tokenizer = tokenizer_of(cfg)
    eot = data.end_of_text(tokenizer)  # an empty prompt starts a document: after the end of the one before
    prompt_ids = np.asarray([eot[1]] if not prompt and eot else tokenizer.encode(prompt or data.DOC_SEPARATOR),
                            np.int32)
    key, T = jax.random.key(seed), jnp.float32(temperature)
    n_ctx = cfg.model.n_ctx
    if cfg.model.kind not in ("transformer", "universal") or len(prompt_ids) + n_tokens <= n_ctx:
        new = make_sampler(cfg.model, len(prompt_ids), n_tokens, top_k)(model.params, jnp.asarray(prompt_ids), key, T)
        return tokenizer.decode(np.asarray(new))
    # Learned positions end at n_ctx: as nanoGPT does, each token past it is drawn on the last n_ctx tokens.
    ids = [int(i) for i in prompt_ids[-n_ctx:]]
    new: list[int] = []
    if len(ids) < n_ctx:  # the tokens that still fit the context: one cached pass
        key, sub = jax.random.split(key)
        fill = make_sampler(cfg.model, len(ids), n_ctx - len(ids), top_k)
        new += [int(i) for i in np.asarray(fill(model.params, jnp.asarray(ids, jnp.int32), sub, T))]
    next_token = make_next_token(cfg.model, n_ctx, top_k)
    while len(new) < n_tokens:
        key, sub = jax.random.split(key)
        new.append(int(next_token(model.params, jnp.asarray((ids + new)[-n_ctx:], jnp.int32), sub, T)))
    return tokenizer.decode(np.asarray(new))


# ---------------------------------------------------------------------------------------------------------------
# Evaluation on any corpus or split.


def eval_data_config(cfg: Config, corpus: str | None) -> config.DataConfig:
    """The run's data config, or another corpus read with the run's tokenizer (its own split rules)."""
    if corpus is None:
        return cfg.data
    defaults = config.DataConfig()
    d = dataclasses.replace(cfg.data, corpus=corpus, validation="", test="", extra_eval="", max_train_tokens=0,
                            bin_dtype=defaults.bin_dtype, tfds_data_dir="", hf_name="", text_column="")
    resolved = config.from_dict({"data": dataclasses.asdict(d), "model": {"vocab_size": cfg.model.vocab_size}})
    try:
        resolved = resolve(resolved)
    except ConfigError as e:
        raise ConfigError(f"--data: {corpus} cannot be read with this run's tokenizer ({e})") from None
    if resolved.model.vocab_size != cfg.model.vocab_size:
        raise ConfigError(f"--data: {corpus} has {resolved.model.vocab_size} token ids, the model "
                          f"{cfg.model.vocab_size}")
    return d


def tiled_windows(tokens: np.ndarray, n_ctx: int, context: int = 0) -> np.ndarray:
    """Windows of context + n_ctx + 1 tokens every n_ctx tokens: each token after a window's first context + 1 is
    predicted exactly once, (W, context + n_ctx + 1) int32."""
    starts = np.arange(0, len(tokens) - (context + n_ctx + 1) + 1, n_ctx)
    return np.asarray(tokens[starts[:, None] + np.arange(context + n_ctx + 1)], np.int32)


def evaluate(model: TrainedModel, corpus: str | None = None, split: str | None = None, windows: int = 0) -> dict:
    """Loss (nats per token) with its standard error over windows, bits per byte and per-position loss of the
    model on `split` of `corpus` (default: the run's own corpus).

    split: validation, test or an extra set (held-out windows, those found verbatim in train left out); "train";
    or "all", every token of the corpus (its splits one after another, tiled by windows): the default for another
    corpus (a file of yours is scored whole), "test" for the run's own. windows: how many (0 = as the run's final
    evaluation, or for "all" every window; for "all" N > 0 keeps N evenly spaced)."""
    from jscale.train import eval_context, summarize_eval

    cfg = model.cfg
    split = split or ("test" if corpus is None else "all")
    d = eval_data_config(cfg, corpus)
    n_ctx, context = cfg.model.n_ctx, eval_context(cfg.model)
    tokens = data.prepare(d)
    if split not in (*tokens.eval_sets, "train", "all"):
        raise ConfigError(f"--split: {d.corpus} has the evaluation sets {', '.join(tokens.eval_sets)} (and train, "
                          f"all), not {split!r}")
    if windows < 0:
        raise ConfigError(f"--windows: must be >= 0, got {windows}")
    parts = ("train", "validation", "test") if split == "all" else (split,)
    if split == "all":
        windows_WxS = np.concatenate([tiled_windows(np.asarray(tokens.splits[s]), n_ctx, context) for s in parts])
        if 0 < windows < len(windows_WxS):
            windows_WxS = windows_WxS[np.linspace(0, len(windows_WxS) - 1, windows).round().astype(np.int64)]
    elif split == "train":
        n = windows or config.eval_window_counts(d, n_ctx)[0]
        windows_WxS = data.eval_windows(tokens.train, n, n_ctx, context)
    else:
        n = windows or min(config.eval_window_counts(d, n_ctx)[0], tokens.window_capacity(n_ctx, context))
        windows_WxS = tokens.eval_windows(n, n_ctx, context, split, strict=windows > 0)
    if len(windows_WxS) == 0:
        raise ConfigError(f"--split: the {split} split of {d.corpus} is too short for one window of {n_ctx + 1}")
    bytes_per_token = (sum(tokens.meta[f"{s}_bytes"] for s in parts) /
                       max(sum(len(tokens.splits[s]) for s in parts), 1))
    summary = summarize_eval(window_losses(model, windows_WxS)[None])
    loss, se = float(summary["loss"][0]), float(summary["se"][0])
    return {"run": model.source, "step": model.step, "corpus": d.corpus, "split": split, "windows": len(windows_WxS),
            "loss": loss, "se": se, "bits_per_byte": loss / math.log(2) / bytes_per_token,
            "per_position": summary["per_position"][0].round(5).tolist()}


def window_losses(model: TrainedModel, windows_WxS: np.ndarray) -> np.ndarray:
    """The model's loss at every scored position of every window, (W, T)."""
    from jscale.train import make_eval_step, padded_chunks

    eval_step = jax.jit(make_eval_step(build(model.cfg.model)))
    return np.concatenate([np.asarray(eval_step(model.params, jnp.asarray(chunk, jnp.int32)))[:n]
                           for chunk, n in padded_chunks(windows_WxS, 16)])  # a fixed chunk size: one compile


def position_bins(per_position: list[float]) -> list[tuple[int, int, float]]:
    """Mean loss over log-spaced position bins [1], [2, 3], [4, 7], ... (1-based, inclusive)."""
    out, lo = [], 1
    while lo <= len(per_position):
        hi = min(2 * lo - 1, len(per_position))
        out.append((lo, hi, float(np.mean(per_position[lo - 1:hi]))))
        lo *= 2
    return out
