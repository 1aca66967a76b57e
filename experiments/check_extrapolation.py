"""Does L(N, D -> inf), extrapolated per run from cooldown branches, predict what training longer reaches?

    python experiments/check_extrapolation.py runs/converged/size [experiments/results/long/sweeps/size] [--out F]

The first sweep (with checkpoints: size.toml at scale `converged`) trains d_model 8, 12 and 16 for ~8,000 tokens per
parameter; the second (the committed long tier, slim) trained the same shapes for 16M tokens and extrapolated each
run's annealed losses to infinite tokens (jscale.regime.extrapolate, L = L_inf + B D^-beta). For every final run of
the first with a twin in the second (same d_model and seed), this scores its final checkpoint on the second's
validation windows (the same text) and prints, beside each run's measured improvement over its last doubling and
the relation jscale.planning uses to size the gpu tiers (DOUBLING_C / sqrt(tokens per parameter)):
  converged - L_inf, with a 95% interval over documents resampled jointly for both (so the comparison is paired).
L_inf is a floor: a converged run should lie above it by what its remaining doublings would still bring.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from jscale import data, planning, regime, results, trained
from jscale.noise import WindowBlocks


def per_window_losses(sweep_dir: str, run_id: str, n_windows: int, n_ctx: int) -> np.ndarray:
    """A run's final checkpoint scored on the n_windows-window validation set of its corpus, (W,)."""
    model = trained.load(sweep_dir, run_id)
    windows = data.prepare(model.cfg.data).eval_windows(n_windows, n_ctx, 0, "validation", strict=True)
    return trained.window_losses(model, windows).mean(axis=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("converged")
    ap.add_argument("long", nargs="?", default="experiments/results/long/sweeps/size")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    conv, long_ = results.load(args.converged), results.load(args.long)
    conv_runs = conv["runs"][conv["runs"].role == "final"]
    regimes = regime.table(conv_runs, conv["curves"], conv["anneals"], conv["blocks"]).set_index("run_id")
    long_runs = long_["runs"][long_["runs"].role == "final"]
    anneals = long_["anneals"][long_["anneals"].split == "validation"]
    rows = []
    for r in conv_runs.sort_values(["d_model", "seed"]).itertuples():
        twin = long_runs[(long_runs.d_model == r.d_model) & (long_runs.seed == r.seed)]
        g = regimes.loc[r.run_id]
        row = {"run": r.name, "d_model": int(r.d_model), "seed": int(r.seed), "tokens": int(r.tokens),
               "tokens_per_param": r.tokens / r.N_total, "doubling": float(g.doubling),
               "doubling_interval": [float(g.doubling_lo), float(g.doubling_hi)],
               "relation": planning.expected_doubling(r.tokens / r.N_total), "regime": g.regime}
        if len(twin):
            a = anneals[anneals.run_id == twin.run_id.iloc[0]].sort_values("tokens")
            tokens, horizons = a["tokens"].to_numpy(float), np.stack(list(a["losses"])).astype(float)
            W, n_ctx = horizons.shape[1], int(twin.n_ctx.iloc[0])
            mine = per_window_losses(args.converged, r.run_id, W, n_ctx)
            wb = WindowBlocks(long_["blocks"].get(("validation", n_ctx, 0, W)), W)
            draws = wb.draw(np.random.default_rng(0), args.resamples)
            h, m = wb.means(wb.sums(horizons), draws), wb.means(wb.sums(mine[None].astype(float)), draws)[:, 0]
            diffs = []
            for i in range(len(draws)):
                try:
                    diffs.append(m[i] - regime.extrapolate(tokens, h[i])[0])
                except ValueError:
                    pass
            l_inf = regime.extrapolate(tokens, horizons.mean(axis=1))[0]
            row.update({"long_tokens": float(tokens[-1]), "long_loss": float(horizons[-1].mean()), "long_L_inf": l_inf,
                        "converged_loss": float(mine.mean()), "minus_L_inf": float(mine.mean() - l_inf),
                        "minus_L_inf_interval": [float(x) for x in np.percentile(diffs, [2.5, 97.5])]})
        rows.append(row)
        text = (f"d_model {row['d_model']} seed {row['seed']}: {row['tokens_per_param']:,.0f} tokens per parameter, "
                f"last doubling {100 * row['doubling']:.2f}% ({100 * row['doubling_interval'][0]:.2f} to "
                f"{100 * row['doubling_interval'][1]:.2f}), relation {100 * row['relation']:.2f}%, {row['regime']}")
        if "long_L_inf" in row:
            lo, hi = row["minus_L_inf_interval"]
            text += (f"; on the long tier's {W:,} windows {row['converged_loss']:.4f} against its run's "
                     f"{row['long_loss']:.4f} at {row['long_tokens']:.3g} tokens and L_inf {row['long_L_inf']:.4f}: "
                     f"{row['minus_L_inf']:+.4f} ({lo:+.4f} to {hi:+.4f})")
        print(text, flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
