"""Model registry: `build(cfg)` returns the Flax module for `cfg.kind`.

Every model maps tokens (B, T) to logits (B, T, V); Transformer-XL also takes and returns its memory
(`has_memory`)."""

from __future__ import annotations

import flax.linen as nn

from jscale.config import ModelConfig
from jscale.models.lstm import LSTM
from jscale.models.transformer import Transformer
from jscale.models.transformer_xl import TransformerXL


def build(cfg: ModelConfig) -> nn.Module:
    """The language model for this config: tokens (B, T) -> logits (B, T, V)."""
    if cfg.kind in ("transformer", "universal"):
        return Transformer(cfg)
    if cfg.kind == "lstm":
        return LSTM(cfg)
    if cfg.kind == "transformer_xl":
        return TransformerXL(cfg)
    raise ValueError(f"model.kind: no model registered for {cfg.kind!r}")


def has_memory(cfg: ModelConfig) -> bool:
    return cfg.kind == "transformer_xl"
