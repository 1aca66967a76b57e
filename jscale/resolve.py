"""A parsed config made ready to run: the fields that follow from the tokenizer and the model (the vocabulary size,
warmup given in tokens or tokens per parameter), then every value validated.

`jscale.config` parses and checks values on its own; this layer sits above the data and accounting modules because
filling these fields needs them (a tokenizer file's size, a bin: corpus's meta.json, the model's parameter count).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from jscale import accounting
from jscale.config import (Config, ModelConfig, TrainConfig, apply_overrides, from_dict, read_toml,
                           validate)
from jscale.data.prepare import corpus_vocab
from jscale.errors import ConfigError


def resolve(cfg: Config) -> Config:
    """Fill derived fields (vocabulary size from the tokenizer, warmup steps) and validate."""
    vocab = corpus_vocab(cfg.data)
    if cfg.model.vocab_size not in (vocab, ModelConfig.vocab_size):  # set by hand to something else
        raise ConfigError(f"model.vocab_size: follows the tokenizer ({cfg.data.tokenizer}: {vocab}); "
                          f"{cfg.model.vocab_size} would be overwritten: leave it out"
                          + ("" if cfg.data.tokenizer == "bytes" else " or set data.vocab_size"))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))
    cfg = dataclasses.replace(cfg, train=_resolve_warmup(cfg))
    validate(cfg)
    return cfg


def load(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Load a TOML config (or the defaults when path is None), apply overrides, resolve and validate."""
    raw = {} if path is None else read_toml(path)
    return resolve(from_dict(apply_overrides(raw, list(overrides))))


WARMUP_CAP = 0.1  # warmup given in tokens or per parameter takes at most this share of the run's steps


def _resolve_warmup(cfg: Config) -> TrainConfig:
    """warmup_tokens or warmup_per_param (tokens per parameter of the whole model) turned into warmup_steps, at
    least one step and at most WARMUP_CAP of the run: Porian et al.'s N-token rule comes from runs near their
    compute-optimal length, and a short run warmed up for a quarter or half of its steps (as ours were) measures the
    warmup, not the model. Given with a non-default warmup_steps, they are refused."""
    t = cfg.train
    for key in ("warmup_tokens", "warmup_per_param"):  # checked before they are turned into steps (and zeroed)
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(t, key)}")
    if not (t.warmup_tokens or t.warmup_per_param):
        return t
    if t.warmup_tokens and t.warmup_per_param:
        raise ConfigError("train.warmup_per_param: give warmup_tokens or warmup_per_param, not both")
    key = "warmup_tokens" if t.warmup_tokens else "warmup_per_param"
    if t.warmup_steps not in (TrainConfig.warmup_steps, 0):
        raise ConfigError(f"train.{key}: sets train.warmup_steps; leave warmup_steps out")
    if t.warmup_tokens:
        tokens = t.warmup_tokens
    else:
        tokens = t.warmup_per_param * accounting.account(cfg.model).N_total
    steps = round(tokens / (t.batch_size * cfg.model.n_ctx))
    return dataclasses.replace(t, warmup_steps=int(max(1, min(steps, math.floor(WARMUP_CAP * t.steps)))),
                               warmup_tokens=0, warmup_per_param=0.0)
