"""Regime checks: is a finished run converged, still compute-limited, or overfitting? Convergence is measured.

A run's distance from convergence is how much its *annealed* loss still improves per doubling of its tokens. Under
warmup-stable-decay that is cheap to measure: the cooldown branches of `train.anneal_branches` are the annealed runs
of steps/2, steps/4, ... on the same stable phase (jscale.train), so for each run the validation loss annealed at
every horizon is known, on the same windows. From them, per run:

- `doubling`: the relative improvement of the annealed validation loss over the last doubling (horizon T/2 to T),
  with its 95% interval (the two horizons are scored on the same windows; windows are resampled by document);
- `log_slope`: the constant-learning-rate log-slope -d log L / d log tokens over the second half of the stable phase,
  read off the learning curve (before any cooldown);
- the regime: overfitting (the final validation loss above the run's best by more than RISE_SE standard errors),
  converged (the last doubling improved less than the claim's threshold, CONVERGED_DOUBLING by default),
  compute-limited (it improved more), or unmeasured (no cooldown branches: convergence was not measured, and a claim
  about converged models cannot be decided on the run).

The old reading, the improvement of the validation loss over the last 30% of a run, is kept as `late_improvement`
for the measurement table; it cannot decide convergence under WSD, whose cooldown alone is 2-7% of it at any length.
A claim about converged models asks `problem(...)` and gets a reason to stay inconclusive when its runs are not.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np

from jscale.noise import WindowBlocks

LATE_FRACTION = 0.3  # the share of training whose improvement is shown as late_improvement
CONVERGED_DOUBLING = 0.01  # the annealed loss improving less than this per doubling of tokens: converged
RISE_SE = 2.0  # final validation above the best by more than this many standard errors: overfitting

REGIMES = ("converged", "compute-limited", "overfitting", "unmeasured")


@dataclasses.dataclass(frozen=True)
class Convergence:
    tokens: tuple[float, ...]  # each annealed horizon, in training tokens (shortest first)
    losses: tuple[float, ...]  # the validation loss annealed at each horizon
    doubling: float  # relative improvement of the annealed loss from the horizon before the last to the last
    interval: tuple[float, float] | None  # its 95% interval, windows resampled by document

    def text(self) -> str:
        ci = "" if self.interval is None else f" ({100 * self.interval[0]:.2f} to {100 * self.interval[1]:.2f})"
        return f"{100 * self.doubling:.2f}%{ci}"


def convergence(tokens: np.ndarray, per_window: list[np.ndarray], blocks: np.ndarray | None = None,
                n_resamples: int = 1000, seed: int = 0) -> Convergence | None:
    """The annealed losses of one run at its horizons (tokens, shortest first; each horizon's per-window validation
    losses on the same windows) and the improvement over the last doubling with its interval. None with fewer than
    two horizons."""
    if len(tokens) < 2:
        return None
    order = np.argsort(tokens)
    tokens = np.asarray(tokens, float)[order]
    per_window = [np.asarray(per_window[i], float) for i in order]
    losses = tuple(float(w.mean()) for w in per_window)
    before, last = per_window[-2], per_window[-1]
    doubling = (losses[-2] - losses[-1]) / losses[-2]
    interval = None
    if len(before) == len(last) and len(last) > 1 and n_resamples:
        wb = WindowBlocks(blocks if blocks is not None and len(blocks) == len(last) else None, len(last))
        rng = np.random.default_rng(seed)
        means = wb.means(wb.sums(np.stack([before, last])), wb.draw(rng, n_resamples))
        draws = (means[:, 0] - means[:, 1]) / means[:, 0]
        interval = (float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975)))
    return Convergence(tuple(tokens.tolist()), losses, float(doubling), interval)


def stable_log_slope(steps: np.ndarray, val: np.ndarray, warmup: int, stable_end: int) -> float:
    """-d log L / d log step by least squares over the evaluations in the second half of the stable phase (after
    warmup, before the cooldown); nan with fewer than 3 there."""
    steps, val = np.asarray(steps, float), np.asarray(val, float)
    lo = warmup + (stable_end - warmup) / 2
    m = (steps >= lo) & (steps <= stable_end) & np.isfinite(val) & (val > 0)
    if m.sum() < 3:
        return math.nan
    return float(-np.polyfit(np.log(steps[m]), np.log(val[m]), 1)[0])


@dataclasses.dataclass(frozen=True)
class Regime:
    tokens_per_param: float
    epochs: float
    late_improvement: float  # relative fall of validation loss over the last 30% of training (shown, not judged)
    regime: str  # one of REGIMES
    doubling: float = math.nan  # the annealed loss's improvement over the last doubling of tokens
    doubling_lo: float = math.nan
    doubling_hi: float = math.nan
    log_slope: float = math.nan  # constant-learning-rate log-slope over the stable phase
    annealed: str = ""  # JSON: [[tokens, annealed validation loss], ...] per horizon


def classify(steps: np.ndarray, val_loss: np.ndarray, val_se: np.ndarray, tokens: float, N_total: float,
             D: float, conv: Convergence | None = None, threshold: float = CONVERGED_DOUBLING,
             log_slope: float = math.nan) -> Regime:
    """A run's regime from its validation curve (evaluations at `steps`, the last one final) and its cooldown
    branches' convergence (None: not measured)."""
    steps, val = np.asarray(steps, float), np.asarray(val_loss, float)
    se = np.nan_to_num(np.asarray(val_se, float))
    order = np.argsort(steps)
    steps, val, se = steps[order], val[order], se[order]
    at = int(np.argmin(np.abs(steps - (1 - LATE_FRACTION) * steps[-1])))
    improvement = float((val[at] - val[-1]) / val[at]) if at < len(val) - 1 else float("nan")
    rising = val[-1] > val.min() + RISE_SE * se[-1] and np.argmin(val) < len(val) - 1
    if rising:
        regime = "overfitting"
    elif conv is None:
        regime = "unmeasured"
    elif conv.doubling < threshold:
        regime = "converged"
    else:
        regime = "compute-limited"
    lo, hi = (math.nan, math.nan) if conv is None or conv.interval is None else conv.interval
    return Regime(tokens / N_total, tokens / D if D else float("nan"), improvement, regime,
                  math.nan if conv is None else conv.doubling, lo, hi, log_slope,
                  "" if conv is None else json.dumps([[t, round(x, 6)] for t, x in zip(conv.tokens, conv.losses)]))


def _blocks_for(blocks: dict, n_ctx: int, n_windows: int, split: str = "validation") -> np.ndarray | None:
    """The recorded documents of a set's windows (results.load's "blocks"), matched by split, context and count."""
    return next((b for (s, c, _, n), b in (blocks or {}).items() if s == split and c == n_ctx and n == n_windows),
                None)


def table(runs, curves, anneals=None, blocks: dict | None = None, threshold: float = CONVERGED_DOUBLING):
    """Each run of a runs table (from results.load) with its regime columns added. anneals and blocks: results.load's
    tables of cooldown branches and window documents (without them, convergence is unmeasured)."""
    runs = runs.copy()
    found = []
    branch_runs = set() if anneals is None or not len(anneals) else set(anneals["run_id"])
    for r in runs.itertuples():
        c = curves[curves["run_id"] == r.run_id]
        if "val_curve" in c:  # the same windows at every evaluation (results.load)
            c = c.assign(val_loss=c["val_curve"], val_se=c["val_curve_se"])
        if "val_loss" not in c or c["val_loss"].isna().all():  # written before validation was recorded
            found.append(Regime(np.nan, np.nan, np.nan, "unknown"))
            continue
        tokens = float(r.steps * r.batch_size * r.n_ctx)
        D = float(r.D) if r.D else float("nan")
        recorded = getattr(r, "epochs", None)  # the loop's own count, for runs on the whole train split (D = 0)
        if not np.isfinite(D) and recorded is not None and np.isfinite(recorded) and recorded > 0:
            D = tokens / float(recorded)
        t = json.loads(r.config)["train"] if hasattr(r, "config") and isinstance(r.config, str) else {}
        conv = None
        if r.run_id in branch_runs:
            a = anneals[(anneals["run_id"] == r.run_id) & (anneals["split"] == "validation")]
            if len(a) >= 2:
                W = len(a["losses"].iloc[-1])
                conv = convergence(a["tokens"].to_numpy(float), list(a["losses"]),
                                   _blocks_for(blocks, int(r.n_ctx), W))
        slope = math.nan
        if t.get("schedule") in ("wsd", "constant"):
            stable_end = t["steps"] * (1 - t.get("decay_fraction", 0.2)) if t["schedule"] == "wsd" else t["steps"]
            slope = stable_log_slope(c["step"].to_numpy(), c["val_loss"].to_numpy(), t.get("warmup_steps", 0),
                                     stable_end)
        found.append(classify(c["step"].to_numpy(), c["val_loss"].to_numpy(), c["val_se"].to_numpy(), tokens,
                              float(r.N_total), D if np.isfinite(D) else 0.0, conv, threshold, slope))
    for field in dataclasses.fields(Regime):
        runs[field.name] = [getattr(x, field.name) for x in found]
    return runs


def problem(runs, need: str = "converged", threshold: float = CONVERGED_DOUBLING) -> str | None:
    """Why these runs (with regime columns) are not in the regime a claim needs, or None when they all are.
    need: converged (the claim is about the limit of training: every run's annealed loss improves by less than
    `threshold` per doubling of tokens), or not-overfitting."""
    if need != "converged":
        bad = runs[runs["regime"] == "overfitting"]
        if not len(bad):
            return None
        return (f"{len(bad)} of {len(runs)} runs overfitting ({np.nanmin(bad['tokens_per_param']):.3g} to "
                f"{np.nanmax(bad['tokens_per_param']):.3g} tokens per parameter)")
    overfit = runs["regime"] == "overfitting"
    unmeasured = runs["doubling"].isna() & ~overfit if "doubling" in runs else ~overfit
    improving = runs["doubling"].to_numpy(float) >= threshold if "doubling" in runs else np.zeros(len(runs), bool)
    reasons = []
    if unmeasured.any():
        reasons.append(f"{int(unmeasured.sum())} of {len(runs)} runs without cooldown branches, so their "
                       f"convergence was not measured (train.anneal_branches)")
    if improving.any():
        d = runs["doubling"].to_numpy(float)[improving]
        reasons.append(f"{int(improving.sum())} of {len(runs)} runs not converged: the annealed validation loss still "
                       f"improves {100 * d.min():.2f}% to {100 * d.max():.2f}% per doubling of tokens (the claim needs "
                       f"< {100 * threshold:g}%) at {np.nanmin(runs['tokens_per_param'][improving]):.3g} to "
                       f"{np.nanmax(runs['tokens_per_param'][improving]):.3g} tokens per parameter")
    if overfit.any():
        reasons.append(f"{int(overfit.sum())} of {len(runs)} runs overfitting")
    return "; ".join(reasons) or None


# What regime each law's claim is about, for `jscale fit` on a sweep: converged models, or learning curves.
# (IsoFLOP runs are each annealed to their own budget: compute-limited by design, and not to overfit.)
LAW_REGIME = {"kaplan-n": "converged", "kaplan-d": "converged", "kaplan-nd": "not-overfitting",
              "chinchilla": "converged", "isoflop": "not-overfitting", "kaplan-c": "not-overfitting",
              "frontier": "not-overfitting", "envelope": "not-overfitting", "kaplan-ns": "not-overfitting"}


def statement(runs, law: str) -> tuple[str, bool]:
    """One line for `jscale fit`: the runs' regimes and whether they are in the regime the law is about."""
    counts = runs["regime"].value_counts().to_dict()
    need = LAW_REGIME.get(law, "converged")
    why = problem(runs, need)
    head = (f"regime: {', '.join(f'{v} {k}' for k, v in sorted(counts.items()))} of {len(runs)} runs "
            f"({np.nanmin(runs['tokens_per_param']):.3g} to {np.nanmax(runs['tokens_per_param']):.3g} tokens per "
            f"parameter)")
    if why is None:
        return f"{head}; {law} is about {need} runs and these are in that regime", True
    return f"{head}; {law} is about {need} runs: NOT in that regime ({why}), so read this fit as a description " \
           f"of these runs, not as the law", False


# ---------------------------------------------------------------------------------------------------------------
# L(N, D -> inf) from the cooldown branches.

MIN_HORIZONS = 4  # an extrapolation with an irreducible term needs this many annealed horizons


def extrapolate(tokens: np.ndarray, losses: np.ndarray) -> tuple[float, float, float]:
    """L(D) = L_inf + B D^-beta through a run's annealed losses (least squares on the relative error): (L_inf, B,
    beta). Raises ValueError when the horizons cannot determine it (too few, or no fall to extrapolate)."""
    from scipy import optimize

    t, L = np.asarray(tokens, float), np.asarray(losses, float)
    if len(t) < MIN_HORIZONS:
        raise ValueError(f"{len(t)} horizons, fewer than {MIN_HORIZONS}")
    if not L[-1] < L[0]:
        raise ValueError("the annealed loss does not fall with tokens")
    x = np.log(t / t[-1])  # tokens relative to the longest horizon

    def resid(p):
        l_inf, log_b, beta = p
        return (l_inf + np.exp(log_b - beta * x)) / L - 1

    best = None
    for beta0 in (0.1, 0.3, 1.0):
        start = [0.8 * L[-1], np.log(0.2 * L[-1]), beta0]
        r = optimize.least_squares(resid, start, bounds=([0, -50, 1e-3], [L[-1], 50, 5]))
        if best is None or r.cost < best.cost:
            best = r
    l_inf, log_b, beta = best.x
    return float(l_inf), float(np.exp(log_b) * t[-1] ** beta), float(beta)


def extrapolated_losses(anneals, runs, blocks: dict | None, n_resamples: int, seed: int = 0):
    """Per run with MIN_HORIZONS or more annealed horizons: L_inf (its validation loss extrapolated to infinite
    tokens) and n_resamples draws of it with the windows resampled by document (one draw of documents shared by every
    horizon of every run, so the runs stay paired). Returns {run_id: (L_inf, draws)}; a draw that cannot be fitted
    is NaN."""
    out = {}
    val = anneals[anneals["split"] == "validation"]
    rng = np.random.default_rng(seed)
    by_run = {r: g.sort_values("tokens") for r, g in val.groupby("run_id") if len(g) >= MIN_HORIZONS}
    if not by_run:
        return out
    W = {len(g["losses"].iloc[0]) for g in by_run.values()}
    n_ctx = dict(zip(runs["run_id"], runs["n_ctx"]))
    W = W.pop() if len(W) == 1 else None
    first = next(iter(by_run))
    wb = WindowBlocks(_blocks_for(blocks, int(n_ctx.get(first, 0)), W) if W else None, W) if W else None
    draws = wb.draw(rng, n_resamples) if wb is not None and n_resamples else None
    for run_id, g in by_run.items():
        tokens, per_window = g["tokens"].to_numpy(float), np.stack(list(g["losses"])).astype(float)
        try:
            value = extrapolate(tokens, per_window.mean(axis=1))[0]
        except ValueError:
            continue
        reps = np.full(n_resamples, np.nan)
        if draws is not None:
            means = wb.means(wb.sums(per_window), draws)  # (n, horizons)
            for i, m in enumerate(means):
                try:
                    reps[i] = extrapolate(tokens, m)[0]
                except ValueError:
                    pass
        out[run_id] = (value, reps)
    return out
