"""Batched L-BFGS in NumPy: minimise many independent small problems at once.

Scaling-law fits solve the same 2-5 parameter problem thousands of times (4,500 starts, 4,000 bootstrap
resamples). One SciPy call per problem spends most of its time in Python overhead; here every iteration
evaluates all problems still running in one vectorised call. Each problem keeps its own curvature history, its own
Armijo backtracking line search and its own stopping test, so the result for one problem does not depend on the
others in the batch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# fg(x (B, P), rows (B,) int) -> (f (B,), grad (B, P)); `rows` says which problems of the full batch x holds.
ObjectiveFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def minimize(fg: ObjectiveFn, x0: np.ndarray, max_iter: int = 1000, history: int = 10, ftol: float = 1e-13,
             gtol: float = 1e-12, max_backtracks: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise B problems from x0 (B, P). Returns (x (B, P), f (B,), converged (B,) bool).

    A problem stops when a step lowers f by no more than ftol * max(|f|, tiny) or its gradient's largest entry
    falls below gtol; one whose line search fails to find any decrease stops where it is, as converged (it sits at
    a kink or at numerical precision), unless its f is not finite.
    """
    x = np.array(x0, dtype=np.float64)
    B, P = x.shape
    all_rows = np.arange(B)
    f, g = fg(x, all_rows)
    S = np.zeros((history, B, P))
    Y = np.zeros((history, B, P))
    rho = np.zeros((history, B))
    n_pairs = np.zeros(B, dtype=np.int64)  # curvature pairs stored per problem (ring buffer slot = count % history)
    active = np.isfinite(f)
    converged = np.zeros(B, dtype=bool)
    for _ in range(max_iter):
        rows = np.flatnonzero(active)
        if len(rows) == 0:
            break
        d = -_two_loop(g[rows], S[:, rows], Y[:, rows], rho[:, rows], n_pairs[rows], history)
        slope = np.einsum("bp,bp->b", d, g[rows])
        bad = ~(slope < 0)  # not a descent direction: fall back to steepest descent
        d[bad] = -g[rows][bad]
        slope[bad] = -np.einsum("bp,bp->b", g[rows][bad], g[rows][bad])
        # First step of a problem without history: scale to a unit move, as SciPy does.
        t = np.where(n_pairs[rows] == 0, 1.0 / np.maximum(np.linalg.norm(d, axis=1), 1e-300), 1.0)
        f_new, g_new, x_new = f[rows].copy(), g[rows].copy(), x[rows].copy()
        pending = np.ones(len(rows), dtype=bool)
        for _ in range(max_backtracks):
            p = np.flatnonzero(pending)
            if len(p) == 0:
                break
            trial = x[rows[p]] + t[p, None] * d[p]
            ft, gt = fg(trial, rows[p])
            ok = np.isfinite(ft) & (ft <= f[rows[p]] + 1e-4 * t[p] * slope[p])
            f_new[p[ok]], g_new[p[ok]], x_new[p[ok]] = ft[ok], gt[ok], trial[ok]
            pending[p[ok]] = False
            t[p[~ok]] *= 0.5
        stuck = pending  # no decrease found along d: done
        s, y = x_new - x[rows], g_new - g[rows]
        sy = np.einsum("bp,bp->b", s, y)
        store = ~stuck & (sy > 1e-300)
        slot = n_pairs[rows] % history
        S[slot[store], rows[store]] = s[store]
        Y[slot[store], rows[store]] = y[store]
        rho[slot[store], rows[store]] = 1.0 / sy[store]
        n_pairs[rows[store]] += 1
        decrease = f[rows] - f_new
        small_step = decrease <= ftol * np.maximum(np.abs(f_new), 1e-300)
        small_grad = np.max(np.abs(g_new), axis=1) <= gtol
        x[rows], f[rows], g[rows] = x_new, f_new, g_new
        done = stuck | small_step | small_grad
        converged[rows[done]] = np.isfinite(f[rows[done]])
        active[rows[done]] = False
    return x, f, converged


def _two_loop(g, S, Y, rho, n_pairs, history):
    """The L-BFGS two-loop recursion for a batch; problems with fewer pairs skip the missing ones."""
    q = g.copy()
    B = len(g)
    newest = n_pairs - 1
    alphas = np.zeros((history, B))
    for j in range(history):  # newest pair first
        k = newest - j
        valid = k >= 0
        slot = np.where(valid, k % history, 0)
        s, y, r = S[slot, np.arange(B)], Y[slot, np.arange(B)], rho[slot, np.arange(B)]
        a = np.where(valid, r * np.einsum("bp,bp->b", s, q), 0.0)
        q -= a[:, None] * y
        alphas[j] = a
    # Initial Hessian scale gamma = s.y / y.y of the newest pair.
    slot = np.where(newest >= 0, newest % history, 0)
    s, y = S[slot, np.arange(B)], Y[slot, np.arange(B)]
    yy = np.einsum("bp,bp->b", y, y)
    gamma = np.where((newest >= 0) & (yy > 0), np.einsum("bp,bp->b", s, y) / np.where(yy > 0, yy, 1), 1.0)
    r_vec = gamma[:, None] * q
    for j in reversed(range(history)):  # oldest pair first
        k = newest - j
        valid = k >= 0
        slot = np.where(valid, k % history, 0)
        s, y, r = S[slot, np.arange(B)], Y[slot, np.arange(B)], rho[slot, np.arange(B)]
        beta = np.where(valid, r * np.einsum("bp,bp->b", y, r_vec), 0.0)
        r_vec += (alphas[j] - beta)[:, None] * s
    return r_vec
