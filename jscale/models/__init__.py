"""Model registry: `build(cfg)` returns the Flax module for `cfg.kind`."""

from __future__ import annotations

import flax.linen as nn

from jscale.config import ModelConfig
from jscale.models.lstm import LSTM
from jscale.models.transformer import Transformer


def build(cfg: ModelConfig) -> nn.Module:
    """The language model for this config: tokens (B, T) -> logits (B, T, V)."""
    if cfg.kind in ("transformer", "universal"):
        return Transformer(cfg)
    if cfg.kind == "lstm":
        return LSTM(cfg)
    raise ValueError(f"model.kind: no model registered for {cfg.kind!r}")
