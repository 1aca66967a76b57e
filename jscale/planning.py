"""What `jscale plan` says about a sweep beyond its runs: whether a claim about converged models can be decided at
this scale, and how many times each run repeats its corpus.

Convergence is measured after training (cooldown branches, jscale.regime), but a plan can say in advance whether the
largest model will get there. The long tier on the built-in corpus measured the annealed validation loss improving
per doubling of tokens as about c / sqrt(tokens per parameter) (experiments/results/long: d_model 8 to 48 at depth 2,
n_ctx 64, byte tokens, 2026-12-05; c = DOUBLING_C): 4% at ~350 tokens per parameter, 1% only at ~6,000. On another
corpus, tokenizer or context the relation is an extrapolation, and the plan says so.

Runs of one size scatter about the relation: at ~8,050 tokens per parameter (size.toml's converged scale, d_model
8-16, two seeds; experiments/results/converged) the six runs improved 0.64% to 1.06% per doubling, 0.73x to 1.20x the
relation's 0.88% (their mean, 0.88%, t-interval 0.70 to 1.06, matches it), and two of the six did not pass 1%. So a
plan expects every run to pass only when SEED_SPREAD times the relation does: about 9,000 tokens per parameter.
"""

from __future__ import annotations

import math
from pathlib import Path

from jscale import accounting, data, regime
from jscale.sweep import Sweep

DOUBLING_C = 0.79  # improvement per doubling ~ DOUBLING_C / sqrt(tokens per parameter) (the long tier; see above)
SEED_SPREAD = 1.2  # the most a run exceeded the relation among six at ~8,000 tokens per parameter (see above)
CONVERGED_ANALYSES = ("size", "shape", "lstm", "recurrent", "efficiency")  # claims about converged models
MAX_EPOCHS = 4.0  # repeating data up to ~4 epochs costs little (Muennighoff et al. 2023); beyond, a claim about
# fresh-data scaling is a claim about repeated data


def expected_doubling(tokens_per_param: float) -> float:
    """The expected improvement of the annealed loss over the last doubling, from the measured relation."""
    return DOUBLING_C / math.sqrt(max(tokens_per_param, 1.0))


def tokens_per_param_needed(threshold: float = regime.CONVERGED_DOUBLING) -> float:
    """Tokens per parameter at which every run, not just the typical one, is expected below the threshold."""
    return (SEED_SPREAD * DOUBLING_C / threshold) ** 2


def train_tokens(d) -> int | None:
    """The train split's size in tokens without tokenizing: the token cache's count, a bin: file's size, or the
    bytes of a byte-tokenized file corpus; None when unknown before preparing."""
    try:
        if d.corpus.startswith("bin:"):
            path = Path(d.corpus[len("bin:"):]).expanduser() / "train.bin"
            return path.stat().st_size // {"uint8": 1, "uint16": 2, "uint32": 4}[d.bin_dtype]
        if d.tokenizer == "bytes" and not d.corpus.startswith(("tfds:", "hf:")):
            return data.corpus_from_config(d).split_bytes()["train"]
    except Exception:  # noqa: BLE001 (a plan states what it can; a broken corpus is the run's error to report)
        return None
    return None


def describe(sw: Sweep, groups, tokens_per_s: float | None = None) -> list[str]:
    """Lines for `jscale plan`: per claim about converged models, the largest final model's tokens per parameter,
    the expected improvement per doubling there, and what convergence would need; for every sweep, the epochs of
    its corpus each run sees, and one line when that repeats the corpus more than MAX_EPOCHS times."""
    lines = []
    finals = [r for g in groups for r in g.runs if r.role == "final"] or [r for g in groups for r in g.runs]
    if not finals:
        return lines
    analysis = sw.analysis or sw.name
    largest = max(finals, key=lambda r: accounting.account(r.cfg.model).N_total)
    t = largest.cfg.train
    tokens = t.steps * t.batch_size * largest.cfg.model.n_ctx
    n_total = accounting.account(largest.cfg.model).N_total
    tpp = tokens / n_total
    bytes_ = largest.cfg.data.tokenizer == "bytes" and largest.cfg.data.corpus == "builtin:stdlib" and \
        largest.cfg.model.n_ctx <= 128
    if analysis in CONVERGED_ANALYSES:
        need = tokens_per_param_needed()
        exp = expected_doubling(tpp)
        basis = ("" if bytes_ else
                 " (relation measured on the built-in corpus's bytes at n_ctx 64: an extrapolation here)")
        line = (f"convergence: the largest model (N_total {n_total:,}) sees {tpp:,.0f} tokens per parameter; its "
                f"annealed loss is expected to improve ~{100 * exp:.1f}% per doubling{basis}; the claim needs < "
                f"{100 * regime.CONVERGED_DOUBLING:g}%")
        if SEED_SPREAD * exp < regime.CONVERGED_DOUBLING:
            line += (f": expected to converge (every run: up to {SEED_SPREAD:g}x the relation, "
                     f"{100 * SEED_SPREAD * exp:.2f}%)")
        elif exp < regime.CONVERGED_DOUBLING:
            line += (f": borderline (runs scatter up to {SEED_SPREAD:g}x the relation, {100 * SEED_SPREAD * exp:.2f}%: "
                     f"some may not pass; ~{need:,.0f} tokens per parameter would)")
        else:
            more = need * n_total / tokens
            line += (f": NOT expected to converge (it would need ~{need:,.0f} tokens per parameter, {more:,.0f}x these "
                     f"runs' tokens")
            if tokens_per_s:
                line += f", ~{more * tokens / tokens_per_s / 3600:,.1f} device-hours for this run at the estimated rate"
            line += "); the report decides it on L(N, D -> inf) extrapolated from the cooldown branches"
            if not t.anneal_branches:
                line += ", which needs train.anneal_branches >= 3 (this sweep has none: it will stay inconclusive)"
        lines.append(line)
    corpus = train_tokens(largest.cfg.data)
    if corpus:
        worst = max(finals, key=lambda r: r.cfg.train.steps * r.cfg.train.batch_size * r.cfg.model.n_ctx /
                    (r.cfg.data.max_train_tokens or corpus))
        w = worst.cfg.train
        epochs = w.steps * w.batch_size * worst.cfg.model.n_ctx / (worst.cfg.data.max_train_tokens or corpus)
        lines.append(f"epochs: the most repeated run sees {epochs:.2g} epochs of its data ({corpus:,} train tokens"
                     f"{'' if not worst.cfg.data.max_train_tokens else ', a D-token subset'})")
        if epochs > MAX_EPOCHS and analysis != "data":  # (the data sweep repeats its subsets on purpose)
            lines.append(f"epochs: WARNING: {epochs:.1f} epochs is more than the {MAX_EPOCHS:g} a claim about "
                         f"fresh-data scaling allows; use a larger corpus (jscale corpus, bin:DIR) or fewer tokens")
    return lines

