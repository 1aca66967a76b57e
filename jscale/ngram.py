"""n-gram baselines: interpolated Witten-Bell models of order 1 to 5, counted on the train split and scored on
the same evaluation windows as the models, so a model's loss can be set beside a bigram's or a 5-gram's.

Like the models, an n-gram sees only the window: position t is predicted from the min(n - 1, t) tokens before it.
Witten-Bell: P_n(w | h) = (c(h w) + T(h) P_{n-1}(w | h')) / (c(h) + T(h)), T(h) the number of distinct tokens seen
after h, h' the history less its oldest token; an unseen history backs off to P_{n-1}; P_0 is uniform over the
vocabulary. Counts are of hashed token tuples (64-bit polynomial hashes; a collision is vanishingly rare at these
corpus sizes). Scores are cached beside the token files, keyed by the windows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from jscale import interrupts

MAX_ORDER = 5
_BASE = np.uint64(0x100000001B3)  # odd


def _hashes(tokens: np.ndarray, length: int, offset: int, count: int) -> np.ndarray:
    """Hash of tokens[i + offset : i + offset + length] for i in range(count)."""
    h = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        for m in range(length):
            h = h * _BASE + (np.asarray(tokens[offset + m:offset + m + count]).astype(np.uint64) + np.uint64(1))
    return h


class _Table:
    """Sorted unique keys and their counts, for lookups."""

    def __init__(self, keys: np.ndarray, counts: np.ndarray | None = None):
        if counts is None:
            keys, counts = np.unique(keys, return_counts=True)
        self.keys, self.counts = keys, counts

    def get(self, queries: np.ndarray) -> np.ndarray:
        i = np.clip(np.searchsorted(self.keys, queries), 0, max(len(self.keys) - 1, 0))
        found = (self.keys[i] == queries) if len(self.keys) else np.zeros(len(queries), bool)
        return np.where(found, self.counts[i] if len(self.keys) else 0, 0)


def _order_tables(train: np.ndarray, n: int) -> tuple[_Table, _Table, _Table]:
    """For order n (history of n - 1 tokens): c(h w), c(h) and T(h)."""
    count = len(train) - n + 1
    with np.errstate(over="ignore"):
        h = _hashes(train, n - 1, 0, count)
        hw = h * _BASE + (np.asarray(train[n - 1:n - 1 + count]).astype(np.uint64) + np.uint64(1))
    hw_keys, first, hw_counts = np.unique(hw, return_index=True, return_counts=True)
    t_table = _Table(h[first])  # each distinct (h, w) counted once under its h: T(h)
    return _Table(hw_keys, hw_counts), _Table(h), t_table


def scores(train: np.ndarray, windows_WxS: np.ndarray, vocab_size: int, max_order: int = MAX_ORDER,
           per_window: bool = False) -> dict[int, float]:
    """Mean loss (nats/token) of each order's model on the last S - 1 positions of each window (per_window: each
    window's mean loss, (W,), instead of the mean)."""
    W, S = windows_WxS.shape
    targets = windows_WxS[:, 1:].astype(np.uint64)  # (W, T)
    T = S - 1
    t_index = np.broadcast_to(np.arange(T), (W, T))  # tokens of history available at each target: t
    prob = np.full((W, T), 1.0 / vocab_size)
    out = {}
    for n in range(1, max_order + 1):
        interrupts.check()
        c_hw, c_h, t_h = _order_tables(train, n)
        usable = t_index >= n - 1  # enough history inside the window for this order
        with np.errstate(over="ignore"):
            hist = np.zeros((W, T), np.uint64)
            for m in range(n - 1, 0, -1):  # history tokens from oldest (t - n + 1) to newest (t - 1), as hashed
                col = np.clip(np.arange(T) + 1 - m, 0, S - 1)  # position of the token m before the target
                hist = hist * _BASE + (windows_WxS[:, col].astype(np.uint64) + np.uint64(1))
            hw = hist * _BASE + (targets + np.uint64(1))
        flat_h, flat_hw = hist.ravel(), hw.ravel()
        ch = c_h.get(flat_h).reshape(W, T).astype(float) if n > 1 else np.full((W, T), float(len(train)))
        chw = c_hw.get(flat_hw).reshape(W, T).astype(float)
        th = t_h.get(flat_h).reshape(W, T).astype(float) if n > 1 else np.full((W, T), float(len(c_hw.keys)))
        seen = (ch > 0) & usable
        new = np.where(seen, (chw + th * prob) / np.maximum(ch + th, 1), prob)
        prob = new
        out[n] = -np.log(prob).mean(axis=1) if per_window else float(-np.log(prob).mean())
    return out


def cached_scores(corpus, split: str, n_windows: int, n_ctx: int) -> dict[int, float]:
    """scores() for a tokenized corpus's evaluation windows of one split, cached in its cache folder."""
    path = None if corpus.path is None else Path(corpus.path) / f"ngram-{split}-{n_windows}-{n_ctx}.json"
    if path is not None and path.exists():
        try:
            return {int(k): v for k, v in json.loads(path.read_text()).items()}
        except (OSError, ValueError):
            pass
    windows = corpus.eval_windows(n_windows, n_ctx, 0, split)
    found = scores(corpus.train, windows, corpus.meta["vocab_size"])
    if path is not None:
        try:
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(found))
            os.replace(tmp, path)
        except OSError:
            pass
    return found
