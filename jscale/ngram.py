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
_DENSE_BIGRAMS = 2 ** 22  # vocabularies up to ~2,000 tokens count bigrams in a dense table
_BASE = np.uint64(0x100000001B3)  # odd


def _index_into(queries: np.ndarray, keys: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Number of distinct queries, each query's index among them, and each key's (-1: not asked about). A hash
    table (pandas'), not a sort: the keys are train positions, millions of them."""
    import pandas as pd

    distinct, query_index = np.unique(queries, return_inverse=True)
    return len(distinct), query_index.reshape(queries.shape), pd.Index(distinct).get_indexer(keys)


def scores(train: np.ndarray, windows_WxS: np.ndarray, vocab_size: int, max_order: int = MAX_ORDER,
           per_window: bool = False) -> dict[int, float]:
    """Mean loss (nats/token) of each order's model on the last S - 1 positions of each window (per_window: each
    window's mean loss, (W,), instead of the mean).

    Only the histories and n-grams the windows ask about are counted: each order is one pass over train positions,
    with no sort of the train split (order 2 of a small vocabulary: one dense table of every bigram's count). The
    positions passed over shrink with the order: an order-n history is an order-(n-1) n-gram, so only positions
    whose order-(n-1) n-gram was asked about can start one."""
    import pandas as pd

    W, S = windows_WxS.shape
    T = S - 1
    tokens = np.asarray(train)
    as_hashed = lambda x: np.asarray(x).astype(np.uint64) + np.uint64(1)  # noqa: E731 (0 is the empty history)
    # Target t (0-based) is window[t + 1]; a model sees window[0..t] before it: t + 1 tokens of history, so order n
    # (n - 1 tokens of history) is usable from t = n - 2 on, as it would be for the model on the same window.
    t_index = np.broadcast_to(np.arange(1, T + 1), (W, T))  # tokens of history available at each target
    prob = np.full((W, T), 1.0 / vocab_size)
    # Hashes put the oldest token at the highest power of _BASE: a history grows by an older token in the windows
    # (+ token * _BASE^(n-2)) and by a newer one at a train position (hash * _BASE + token).
    query_hist = np.zeros((W, T), np.uint64)  # hash of each target's history of n - 1 tokens
    weight = np.uint64(1)
    pair_base = max(int(tokens.max(initial=0)), int(windows_WxS.max(initial=0))) + 2  # above every hashed token:
    # (history, token) pairs as one integer
    dense_bigrams = pair_base ** 2 <= _DENSE_BIGRAMS

    # Order 1 (the empty history) from the token counts.
    counts = np.bincount(tokens, minlength=pair_base)
    distinct = np.count_nonzero(counts)
    prob = (counts[windows_WxS[:, 1:]] + distinct * prob) / max(len(tokens) + distinct, 1)
    out = {1: -np.log(prob).mean(axis=1) if per_window else float(-np.log(prob).mean())}
    if not dense_bigrams:  # (else order 2 counts every bigram in a table and starts the positions, below)
        asked = np.zeros(pair_base, bool)
        asked[windows_WxS[:, 1:]] = True
        start = np.flatnonzero(asked[tokens])  # train positions that may start a history asked about, (P,)
        start_hist = as_hashed(tokens[start])  # hash of the n - 1 tokens from each, (P,)
    for n in range(2, max_order + 1):
        interrupts.check()
        usable = t_index >= n - 1  # enough history inside the window for this order
        with np.errstate(over="ignore"):
            oldest = np.clip(np.arange(T) + 2 - n, 0, S - 1)  # window position of the token n - 1 before target t
            query_hist = query_hist + as_hashed(windows_WxS[:, oldest]) * weight
            weight = weight * _BASE
            query_hw = query_hist * _BASE + as_hashed(windows_WxS[:, 1:])
        ch, chw, th = np.zeros((W, T)), np.zeros((W, T)), np.zeros((W, T))
        if n == 2 and dense_bigrams:  # a small vocabulary's bigrams: one table of counts
            code = tokens[:-1].astype(np.int64) * pair_base + tokens[1:]  # each train bigram as one integer
            table = np.bincount(code, minlength=pair_base ** 2).reshape(pair_base, pair_base)
            h, w = windows_WxS[:, :-1][usable].astype(np.int64), windows_WxS[:, 1:][usable].astype(np.int64)
            ch[usable], chw[usable], th[usable] = table.sum(1)[h], table[h, w], np.count_nonzero(table, axis=1)[h]
            asked = np.zeros(pair_base ** 2, bool)
            asked[h * pair_base + w] = True
            start = np.flatnonzero(asked[code])  # positions whose bigram was asked about start the next histories
            with np.errstate(over="ignore"):
                start_hist = as_hashed(tokens[start]) * _BASE + as_hashed(tokens[start + 1])
        else:
            with np.errstate(over="ignore"):
                fits = start + n <= len(tokens)  # the n-gram lies inside the train split
                start, start_hist = start[fits], start_hist[fits]
                start_next = as_hashed(tokens[start + n - 1])
                start_hw = start_hist * _BASE + start_next
            n_hist, hist_q, hist_at = _index_into(query_hist[usable], start_hist)
            has_hist = hist_at >= 0
            c_h = np.bincount(hist_at[has_hist], minlength=n_hist)
            pairs = hist_at[has_hist].astype(np.int64) * pair_base + start_next[has_hist].astype(np.int64)
            t_h = np.bincount(pd.unique(pairs) // pair_base, minlength=n_hist)  # distinct tokens after h: T(h)
            n_hw, hw_q, hw_at = _index_into(query_hw[usable], start_hw[has_hist])
            c_hw = np.bincount(hw_at[hw_at >= 0], minlength=n_hw)
            ch[usable], chw[usable], th[usable] = c_h[hist_q], c_hw[hw_q], t_h[hist_q]
            asked = np.flatnonzero(has_hist)[hw_at >= 0]  # positions whose n-gram was asked about start the next
            start, start_hist = start[asked], start_hw[asked]  # histories
        seen = (ch > 0) & usable
        prob = np.where(seen, (chw + th * prob) / np.maximum(ch + th, 1), prob)
        out[n] = -np.log(prob).mean(axis=1) if per_window else float(-np.log(prob).mean())
    return out


def cached_scores(corpus, split: str, n_windows: int, n_ctx: int) -> dict[int, float]:
    """scores() for a tokenized corpus's evaluation windows of one split, cached in its cache folder."""
    # (v2: each order uses the full history the model sees; scores cached by the earlier code are not reused)
    path = None if corpus.path is None else Path(corpus.path) / f"ngram-v2-{split}-{n_windows}-{n_ctx}.json"
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
