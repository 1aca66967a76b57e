"""The tokens a run reads: D-token training subsets, training batches as pure functions of (seed, step), and
evaluation windows spread over a held-out split (those found verbatim in the train split left out).

Everything here is a function of token arrays and integers, with no file or corpus behind it. Shape letters: B batch
rows, T positions.
"""

from __future__ import annotations

import functools

import numpy as np

from jscale import interrupts


DEDUP_MIN_TOKENS = 64  # evaluation windows at least this long are dropped when found verbatim in the train split


def subset_pieces(n_tokens: int, D: int, chunk: int, subset_seed: int) -> np.ndarray:
    """The pieces of the train split that make up a subset of D tokens, (n_pieces, 2) of (start, length).

    The split is cut into chunks of `chunk` tokens, shuffled by subset_seed; the subset is the first D tokens of
    the chunks in that order. So it is spread over the whole split, a pure function of (subset_seed, D), and
    nested: the pieces of a smaller D are a prefix of a larger D's. D = 0 is the whole split."""
    if D == 0 or D >= n_tokens:
        return np.array([[0, n_tokens]], np.int64)
    n_chunks = -(-n_tokens // chunk)
    order = np.random.default_rng([subset_seed, 0x5EB5E7]).permutation(n_chunks)
    starts = order.astype(np.int64) * chunk
    lengths = np.minimum(chunk, n_tokens - starts)
    used = np.searchsorted(np.cumsum(lengths), D) + 1  # chunks up to the one that reaches D
    starts, lengths = starts[:used], lengths[:used].copy()
    lengths[-1] -= lengths.sum() - D
    return np.stack([starts, lengths], axis=1)


@functools.lru_cache(maxsize=64)
def _pieces(n_tokens: int, D: int, chunk: int, subset_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """subset_pieces as (start of each piece in the split, where each piece starts in the subset)."""
    pieces = subset_pieces(n_tokens, D, chunk, subset_seed)
    offsets = np.concatenate([[0], np.cumsum(pieces[:, 1])[:-1]])
    return pieces[:, 0], offsets


def subset_tokens(tokens: np.ndarray, D: int, chunk: int = 4096, subset_seed: int = 0) -> np.ndarray:
    """The D tokens of a subset, in subset order (for tests and inspection; batches gather them lazily)."""
    pieces = subset_pieces(len(tokens), D, chunk, subset_seed)
    return np.concatenate([np.asarray(tokens[s:s + n]) for s, n in pieces])


def train_batch(tokens: np.ndarray, seed: int, step: int, batch_size: int, n_ctx: int, max_train_tokens: int = 0,
                consecutive: bool = False, subset_seed: int = 0, subset_chunk: int = 4096) -> np.ndarray:
    """Windows of n_ctx + 1 tokens, (batch_size, n_ctx + 1) int32: a pure function of (seed, step).

    They are read from the training subset (subset_pieces: max_train_tokens tokens in random chunks, all of the
    split when 0), taken as one sequence. Random windows; or, with consecutive=True (Transformer-XL), row b reads
    its own stream segment by segment: the stream starts at a random offset drawn from (seed, b) and step k reads
    its k-th segment (wrapping around at the end).
    """
    limit = len(tokens) if max_train_tokens == 0 else min(max_train_tokens, len(tokens))
    if consecutive:
        starts_B = (_stream_offsets(seed, batch_size, limit - n_ctx) + step * n_ctx) % (limit - n_ctx)
    else:
        starts_B = np.random.default_rng([seed, step]).integers(0, limit - n_ctx, size=batch_size)
    index_BxT = starts_B[:, None] + np.arange(n_ctx + 1)  # positions in the subset
    if limit < len(tokens):
        piece_starts, offsets = _pieces(len(tokens), limit, subset_chunk, subset_seed)
        piece_BxT = np.searchsorted(offsets, index_BxT, side="right") - 1
        index_BxT = piece_starts[piece_BxT] + (index_BxT - offsets[piece_BxT])
    return np.asarray(tokens[index_BxT], np.int32)


@functools.lru_cache(maxsize=64)
def _stream_offsets(seed: int, batch_size: int, span: int) -> np.ndarray:
    """Where each batch row's token stream starts: drawn from (seed, row), the same at every step."""
    offsets_B = np.array([np.random.default_rng([seed, b]).integers(0, span) for b in range(batch_size)])
    offsets_B.flags.writeable = False
    return offsets_B


_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so invertible modulo 2^64
_HASH_BASE_INV = np.uint64(pow(int(_HASH_BASE), -1, 2**64))


def window_hashes(tokens: np.ndarray, length: int, block: int = 1 << 22) -> np.ndarray:
    """A polynomial hash (modulo 2^64) of tokens[s:s + length] for every start s.

    With prefix sums S[i] = sum_{j<i} (t_j + 1) b^-j, the window at s hashes to b^(s+length-1) (S[s+length] - S[s])
    = sum_j (t_{s+j} + 1) b^(length-1-j): the same value wherever the window sits. Computed block by block, so the
    memory stays O(block) for a split of any size."""
    n = len(tokens) - length + 1
    out = np.empty(max(n, 0), np.uint64)
    with np.errstate(over="ignore"):
        base_pow_len = np.uint64(pow(int(_HASH_BASE), length - 1, 2**64))
        for lo in range(0, n, block):
            hi = min(n, lo + block)
            t = np.asarray(tokens[lo:hi + length - 1]).astype(np.uint64) + np.uint64(1)
            prefix = np.concatenate([[np.uint64(0)], np.cumsum(t * _powers(_HASH_BASE_INV, len(t)))])
            out[lo:hi] = (_powers(_HASH_BASE, hi - lo) * base_pow_len
                          * (prefix[length:length + hi - lo] - prefix[:hi - lo]))
    return out


_POWER_TABLES: dict[int, np.ndarray] = {}


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base^0, base^1, ..., base^(n-1) modulo 2^64 (read-only): every block of a hash pass uses the same ones, so the
    longest table made so far is kept and cut."""
    table = _POWER_TABLES.get(int(base))
    if table is None or len(table) < n:
        table = np.full(max(n, 1), base, np.uint64)
        table[0] = 1
        with np.errstate(over="ignore"):
            table = np.cumprod(table)
        table.flags.writeable = False
        _POWER_TABLES[int(base)] = table
    return table[:n]


def window_starts(tokens: np.ndarray, n_windows: int, n_ctx: int, context: int = 0,
                  exclude: np.ndarray | None = None) -> np.ndarray:
    """Starts of n_windows evaluation windows of context + n_ctx + 1 tokens, evenly spaced over the split.

    With exclude (the train split): twice as many evenly spaced candidates are drawn, those whose evaluated
    n_ctx + 1 tokens occur verbatim in exclude (licence headers, generated tables) are dropped, and n_windows are
    taken evenly from the rest. Fewer come back when fewer are left."""
    return window_starts_many([(tokens, n_windows, n_ctx, context)], exclude)[0]


def window_starts_many(requests: list[tuple[np.ndarray, int, int, int]], exclude: np.ndarray | None = None
                       ) -> list[np.ndarray]:
    """window_starts for several (tokens, n_windows, n_ctx, context) requests (every evaluation set of a run) with
    one pass over exclude per window length, instead of one per request: hashing a large train split is most of
    what choosing windows costs."""
    out: list[np.ndarray | None] = [None] * len(requests)
    by_length: dict[int, list[int]] = {}
    for i, (tokens, n_windows, n_ctx, context) in enumerate(requests):
        span = len(tokens) - context - n_ctx - 1
        if exclude is None:
            out[i] = np.linspace(0, span, n_windows).astype(np.int64)
        else:
            by_length.setdefault(n_ctx + 1, []).append(i)
    for length, indices in by_length.items():
        candidates, own = {}, {}
        for i in indices:
            tokens, n_windows, n_ctx, context = requests[i]
            span = len(tokens) - context - n_ctx - 1
            candidates[i] = np.unique(np.linspace(0, span, 2 * n_windows).astype(np.int64))
            own[i] = window_hashes(tokens[context:], length)[candidates[i]]
        wanted = np.unique(np.concatenate(list(own.values())))  # sorted: a search into the few, not a sort
        found = np.zeros(len(wanted), bool)
        # A train window can only match if the low bits of its hash are some wanted hash's: a table lookup rules out
        # nearly all of them before the (slower) binary search into wanted.
        low_bits = np.uint64((1 << 24) - 1)
        maybe = np.zeros(1 << 24, bool)
        maybe[(wanted & low_bits).astype(np.intp)] = True
        block = 1 << 22
        for lo in range(0, max(len(exclude) - length + 1, 0), block):
            train_hashes = window_hashes(exclude[lo:lo + block + length - 1], length)
            train_hashes = train_hashes[maybe[(train_hashes & low_bits).astype(np.intp)]]
            at = np.minimum(np.searchsorted(wanted, train_hashes), len(wanted) - 1)
            found[at[wanted[at] == train_hashes]] = True
            interrupts.check()
        for i in indices:
            n_windows = requests[i][1]
            kept = candidates[i][~found[np.searchsorted(wanted, own[i])]]
            out[i] = kept if len(kept) <= n_windows else kept[
                np.linspace(0, len(kept) - 1, n_windows).round().astype(np.int64)]
    return out


def eval_windows(tokens: np.ndarray, n_windows: int, n_ctx: int, context: int = 0) -> np.ndarray:
    """A fixed set of held-out windows, evenly spaced over a split: (n_windows, context + n_ctx + 1) int32.

    The last n_ctx + 1 tokens of each are evaluated; the `context` tokens before them fill a memory first."""
    starts_W = window_starts(tokens, n_windows, n_ctx, context)
    return np.asarray(tokens[starts_W[:, None] + np.arange(context + n_ctx + 1)], np.int32)
