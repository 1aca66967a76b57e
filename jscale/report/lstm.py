"""LSTMs against Transformers, per parameter and per context position (Kaplan Fig. 7)."""

from __future__ import annotations

import numpy as np

from jscale import noise, plots, regime
from jscale.report.common import (Experiment, Section, fit_power, join_problems, log_binned, loglines, measured,
                                  rel_percent, series_style, tuning_problem, verdict)
from jscale.verdicts import Region


def _late_gain(grid_WxT: np.ndarray) -> float:
    """How much lower (percent) the loss is over the last quarter of the context than over positions T/8 to T/4."""
    per_position = grid_WxT.mean(axis=0)
    T = len(per_position)
    t = np.arange(1, T + 1)
    early = per_position[(t >= T / 8) & (t <= T / 4)].mean()
    return float(100 * (early - per_position[t > 3 * T / 4].mean()) / early)


def position_bins(T: int) -> list[tuple[int, int]]:
    """Log-spaced bins of context positions (1-based, inclusive): [1], [2, 3], [4, 7], ..., up to T."""
    out, lo = [], 1
    while lo <= T:
        out.append((lo, min(2 * lo - 1, T)))
        lo *= 2
    return out


def binned_paired_difference(tf_WxT: np.ndarray, other_WxT: np.ndarray, n_resamples: int, seed: int = 0
                             ) -> list[tuple[int, int, float, tuple[float, float] | None]]:
    """Per log-spaced position bin, the other model's loss above the Transformer's (percent) on the same windows,
    with a 95% interval from resampling windows (paired: both models keep the same windows)."""
    bins = position_bins(tf_WxT.shape[1])
    a_WxK = np.stack([tf_WxT[:, lo - 1:hi].mean(axis=1) for lo, hi in bins], axis=1).astype(float)
    b_WxK = np.stack([other_WxT[:, lo - 1:hi].mean(axis=1) for lo, hi in bins], axis=1).astype(float)
    above = lambda a_W, b_W: 100 * (b_W.mean() / a_W.mean() - 1)
    # Every bin resamples the same windows (one seed): the bins' intervals are one paired bootstrap.
    estimates = [noise.paired_windows(a_WxK[:, k], b_WxK[:, k], above, n_resamples, seed) for k in range(len(bins))]
    value_K = [e.value for e in estimates]
    intervals = [e.interval for e in estimates]
    return [(lo, hi, float(v), ci) for (lo, hi), v, ci in zip(bins, value_K, intervals)]


def point_grid(exp: Experiment, run) -> np.ndarray | None:
    """Per-window per-position test losses of a run's point: the mean over its seed replicas (same windows)."""
    ids = exp.runs.loc[exp.runs["point"] == run.point, "run_id"]
    grids = [exp.grids[r].astype(np.float32) for r in ids if r in exp.grids]
    if not grids or len({g.shape for g in grids}) > 1:
        return None
    return np.mean(grids, axis=0)


def lstm_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """LSTMs against Transformers: loss against N and against context position (Kaplan Fig. 7)."""
    m = measured(exp, exp.runs, n_bootstrap)
    points = m.points
    runs = points
    runs["family"] = [("Transformer" if k == "transformer" else f"LSTM, {n} layer{'s' if n > 1 else ''}")
                      for k, n in zip(runs["kind"], runs["n_layer"])]
    tf_mask = (runs["kind"] == "transformer").to_numpy()
    tf = runs[tf_mask]
    fit_tf = fit_power(tf["N"], tf["loss"], bootstrap=0)
    problem = join_problems(regime.problem(exp.runs), tuning_problem(exp, exp.runs))
    fig, (ax, ax_pos) = plots.figure(2)
    families = sorted(runs["family"].unique(), key=lambda f: (f != "Transformer", f))
    grid = np.geomspace(runs["N"].min() / 1.3, runs["N"].max() * 1.3, 100)
    logN = np.log(runs["N"].to_numpy(float))
    for i, fam in enumerate(families):
        g = runs[runs["family"] == fam]
        if fam == "Transformer":
            loglines(ax, g["N"], g["loss"], fam, i, grid, fit_tf.predict(X=grid))
            continue
        if len(g) >= 2:
            fit = fit_power(g["N"], g["loss"], bootstrap=0)
            loglines(ax, g["N"], g["loss"], fam, i, grid, fit.predict(X=grid))
        else:
            loglines(ax, g["N"], g["loss"], fam, i)
        gap = rel_percent(g["loss"], fit_tf.predict(X=g["N"].to_numpy()))
        order = np.argsort(g["N"].to_numpy())
        sec.numbers.append((f"{fam}: loss above the Transformer L(N) fit, smallest to largest N",
                            " -> ".join(f"{x:+.1f}%" for x in gap[order]), "-", "gap grows with N"))
        if len(g) >= 2:
            fam_mask = (runs["family"] == fam).to_numpy()
            small, large = np.flatnonzero(fam_mask)[np.argsort(logN[fam_mask])[[0, -1]]]

            def growth(loss, small=small, large=large):  # gap at the largest N minus gap at the smallest, percent
                coef = np.polyfit(logN[tf_mask], np.log(loss[tf_mask]), 1)
                gap_at = lambda k: 100 * (np.log(loss[k]) - np.polyval(coef, logN[k]))
                return gap_at(large) - gap_at(small)

            verdict(sec, f"{fam}: the LSTM's deficit against the Transformer trend grows with N (percent points; "
                         f"Kaplan Fig. 7)", m.bootstrap(growth, n_bootstrap, min_points=3),
                    Region.above(0.0), problem)
    ax.set_xscale("log"), ax.set_yscale("log")
    ax.set_xlabel(plots.n_label("non_embedding")), ax.set_ylabel("test loss (nats/token)")
    ax.legend(frameon=False, fontsize=7)
    ax.set_title("total loss against N", fontsize=9)
    # Per-position loss of each family's largest model, in log-spaced position bins. Late-context gain: how much
    # lower the loss is over the last quarter of the context than over positions T/8 to T/4. Kaplan's LSTMs
    # plateau after < 100 tokens (gain ~ 0 there); Transformers keep improving.
    largest = {}
    for i, fam in enumerate(families):
        g = exp.runs[[("Transformer" if k == "transformer" else f"LSTM, {n} layer{'s' if n > 1 else ''}") == fam
                      for k, n in zip(exp.runs["kind"], exp.runs["n_layer"])]]
        best = g.loc[g["N"].idxmax()]
        largest[fam] = best
        pos = exp.positions[(exp.positions["run_id"] == best.run_id) & (exp.positions["step"] == best.step)]
        if pos.empty:
            continue
        t, loss = log_binned(pos["position"].to_numpy(), pos["loss"].to_numpy())
        st = series_style(i)
        ax_pos.plot(t, loss, marker=st["marker"], linestyle=st["linestyle"], color=st["color"], mfc=st["mfc"],
                    ms=4, label=f"{fam}, N = {best.N:.2g}")
    ax_pos.set_xscale("log")
    ax_pos.set_xlabel("position in the context (tokens)")
    ax_pos.set_ylabel("test loss at that position (nats/token)")
    ax_pos.set_title("loss per context position, largest model of each family", fontsize=9)
    ax_pos.legend(frameon=False, fontsize=7)
    sec.figures["lstm"] = plots.tidy(fig)
    tf_run = largest.get("Transformer")
    for fam, r in largest.items():
        if fam == "Transformer" or tf_run is None:
            continue
        a, b = point_grid(exp, tf_run), point_grid(exp, r)
        if a is None or b is None or a.shape != b.shape:
            sec.notes.append(f"{fam}: no per-window per-position losses stored for a paired comparison.")
            continue
        T = a.shape[1]
        rows = [[f"{lo}" if lo == hi else f"{lo}-{hi}", f"{v:+.2f}%",
                 "-" if ci is None else f"{ci[0]:+.2f} to {ci[1]:+.2f}"]
                for lo, hi, v, ci in binned_paired_difference(a, b, n_bootstrap)]
        sec.tables.append(([f"position (largest models, N {tf_run.N:.2g} and {r.N:.2g})",
                            f"{fam} above the Transformer, same windows (seeds averaged)", "95% interval (windows)"],
                           rows))
        blocks = exp.window_blocks(int(tf_run.n_ctx), len(a))  # windows resampled by document
        gain = noise.paired_windows(a, b, lambda x, y: _late_gain(x) - _late_gain(y), n_bootstrap, blocks=blocks)
        sec.numbers.append((f"late-context gain (positions {T // 8}-{T // 4} to the last quarter), Transformer "
                            f"minus {fam}, largest models", f"{gain.value:+.2f} points",
                            "-" if gain.interval is None else f"{gain.interval[0]:+.2f} to {gain.interval[1]:+.2f}",
                            "> 0: LSTMs plateau, Transformers keep improving"))
        verdict(sec, f"Transformers keep improving later in the context than the {fam} (late-context gain, "
                     f"Transformer minus LSTM, percent points, windows paired; Kaplan Fig. 7)", gain,
                Region.above(0.0), problem)
        first = max(1, T // 16)
        early = noise.paired_windows(b, a, lambda x, y: 100 * (x[:, :first].mean() / y[:, :first].mean() - 1),
                                     n_bootstrap, blocks=blocks)
        verdict(sec, f"On the first {max(1, T // 16)} positions the {fam} matches the Transformer (loss difference "
                     f"within 5%, windows paired)", early, Region.near(0.0, 5.0, "within ±5%"), problem)


ANALYSIS = "lstm"  # the sweep's `analysis` (sweep.json) this section reads
TITLE = "LSTMs against Transformers"
POSITION = 30  # order in the report
analyse = lstm_section
