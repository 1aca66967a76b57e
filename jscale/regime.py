"""Regime checks: is a finished run converged, still compute-limited, or overfitting?

For each run, from its learning curve (validation loss only):
- tokens per parameter (N_total) and epochs over its data;
- the relative improvement of validation loss over the last 30% of training (from the evaluation nearest 70% of the
  run to the last);
- overfitting: the final validation loss is above the run's best by more than two standard errors (validation
  rising); converged: it improved less than 1% over the last 30%; otherwise compute-limited.
A claim about converged models asks `problem(...)` and gets a reason to stay inconclusive when its runs are not.
"""

from __future__ import annotations

import dataclasses

import numpy as np

LATE_FRACTION = 0.3  # the share of training whose improvement decides convergence
CONVERGED_IMPROVEMENT = 0.01  # validation improving less than this over the late share: converged
RISE_SE = 2.0  # final validation above the best by more than this many standard errors: overfitting

REGIMES = ("converged", "compute-limited", "overfitting")


@dataclasses.dataclass(frozen=True)
class Regime:
    tokens_per_param: float
    epochs: float
    late_improvement: float  # relative fall of validation loss over the last 30% of training
    regime: str  # one of REGIMES


def classify(steps: np.ndarray, val_loss: np.ndarray, val_se: np.ndarray, tokens: float, N_total: float,
             D: float) -> Regime:
    """A run's regime from its validation curve (evaluations at `steps`, the last one final)."""
    steps, val = np.asarray(steps, float), np.asarray(val_loss, float)
    se = np.nan_to_num(np.asarray(val_se, float))
    order = np.argsort(steps)
    steps, val, se = steps[order], val[order], se[order]
    at = int(np.argmin(np.abs(steps - (1 - LATE_FRACTION) * steps[-1])))
    improvement = float((val[at] - val[-1]) / val[at]) if at < len(val) - 1 else float("nan")
    rising = val[-1] > val.min() + RISE_SE * se[-1] and np.argmin(val) < len(val) - 1
    if rising:
        regime = "overfitting"
    elif np.isfinite(improvement) and improvement < CONVERGED_IMPROVEMENT:
        regime = "converged"
    else:
        regime = "compute-limited"
    return Regime(tokens / N_total, tokens / D if D else float("nan"), improvement, regime)


def table(runs, curves):
    """Each run of a runs table (from results.load) with its regime columns added."""
    runs = runs.copy()
    found = []
    for r in runs.itertuples():
        c = curves[curves["run_id"] == r.run_id]
        if "val_curve" in c:  # the same windows at every evaluation (results.load)
            c = c.assign(val_loss=c["val_curve"], val_se=c["val_curve_se"])
        if "val_loss" not in c or c["val_loss"].isna().all():  # written before validation was recorded
            found.append(Regime(np.nan, np.nan, np.nan, "unknown"))
            continue
        tokens = float(r.steps * r.batch_size * r.n_ctx)
        D = float(r.D) if r.D else float("nan")
        found.append(classify(c["step"].to_numpy(), c["val_loss"].to_numpy(), c["val_se"].to_numpy(), tokens,
                              float(r.N_total), D if np.isfinite(D) else 0.0))
    for field in ("tokens_per_param", "epochs", "late_improvement", "regime"):
        runs[field] = [getattr(x, field) for x in found]
    return runs


def problem(runs, need: str = "converged") -> str | None:
    """Why these runs (with regime columns) are not in the regime a claim needs, or None when they all are.
    need: converged (the claim is about the limit of training), or not-overfitting."""
    if need == "converged":
        bad = runs[runs["regime"] != "converged"]
    else:
        bad = runs[runs["regime"] == "overfitting"]
    if not len(bad):
        return None
    improving = bad["late_improvement"].to_numpy(float)
    what = ("runs not converged at this scale" if need == "converged" else "runs overfitting")
    falling = (f"validation still falling up to {100 * np.nanmax(improving):.1f}% over the last 30%; "
               if np.isfinite(improving).any() else "")
    return (f"{len(bad)} of {len(runs)} {what} ({falling}{np.nanmin(bad['tokens_per_param']):.3g} to "
            f"{np.nanmax(bad['tokens_per_param']):.3g} tokens per parameter)")


# What regime each law's claim is about, for `jscale fit` on a sweep: converged models, or learning curves.
LAW_REGIME = {"kaplan-n": "converged", "kaplan-d": "converged", "kaplan-nd": "not-overfitting",
              "chinchilla": "converged", "isoflop": "converged", "kaplan-c": "not-overfitting",
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
