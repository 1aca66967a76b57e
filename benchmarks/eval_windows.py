"""Choosing evaluation windows on the built-in corpus, cold: one pass over the train split per evaluation set (the
release before) against one pass for all of a run's sets (TokenizedCorpus.prepare_windows), identical windows.

    python benchmarks/eval_windows.py [--n-ctx 64] [--windows 4616] [--repeats 3]

Prints the median seconds of each way over --repeats alternating rounds (the disk cache of windows is bypassed),
for the splits a run on the built-in corpus evaluates (validation, test, prose, notes).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from jscale import data
from jscale.config import DataConfig
from jscale.data import batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-ctx", type=int, default=64)
    ap.add_argument("--windows", type=int, default=4616)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tc = data.prepare(DataConfig())
    requests = [(tc.splits[s], min(args.windows, tc.window_capacity(args.n_ctx, 0, s)), args.n_ctx, 0)
                for s in tc.eval_sets]
    times = {"one pass per set": [], "one pass for all sets": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        before = [batches.window_starts_many([r], tc.train)[0] for r in requests]
        t1 = time.perf_counter()
        after = batches.window_starts_many(requests, tc.train)
        t2 = time.perf_counter()
        times["one pass per set"].append(t1 - t0)
        times["one pass for all sets"].append(t2 - t1)
        assert all(np.array_equal(a, b) for a, b in zip(before, after))
    print(f"{len(requests)} sets ({', '.join(tc.eval_sets)}), {len(tc.train):,} train tokens, n_ctx {args.n_ctx}: "
          + "; ".join(f"{k} {statistics.median(v):.1f} s" for k, v in times.items()) + " (median; identical windows)")


if __name__ == "__main__":
    main()
