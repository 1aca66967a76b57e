"""Compute: the frontier, compute-optimal size and FLOP counts (Kaplan Fig. 14, Chinchilla approaches 1-3)."""

from __future__ import annotations

import numpy as np

from jscale import laws, plots, regime
from jscale.report.common import (CHINCHILLA_A, KAPLAN, Experiment, Section, law_estimate, series_style,
                                  tuning_problem, units_note, verdict)
from jscale.verdicts import Region


def xla_flops_per_token(cfg_dict: dict) -> float:
    """FLOPs per token of the train step as XLA's cost analysis counts them, on the lowered HLO (no compile:
    on the CPU it is 20x faster and within 1% of the compiled step's count; the compiled one when the lowered
    count is unavailable)."""
    import jax
    import jax.numpy as jnp

    from jscale import config, train
    from jscale.models import build
    from jscale.resolve import resolve

    cfg = resolve(config.from_dict(cfg_dict))
    model, opt = build(cfg.model), train.make_optimizer(cfg.train)
    step = jax.jit(train.make_train_step(model))
    state = jax.eval_shape(lambda: train.init_state(model, opt, cfg.model.n_ctx, jnp.uint32(0),
                                                    cfg.train.batch_size))  # (a Transformer-XL's memory per row)
    hp = {k: jnp.asarray(v) for k, v in train.hparams_from_config(cfg.train).items()}
    batch = jax.ShapeDtypeStruct((cfg.train.batch_size, cfg.model.n_ctx + 1), jnp.int32)
    lowered = step.lower(state, batch, hp)
    cost = lowered.cost_analysis()
    if not cost or "flops" not in cost:
        cost = lowered.compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / (cfg.train.batch_size * cfg.model.n_ctx)


def after_warmup(curves, runs):
    """Learning-curve points past each run's learning-rate peak and its first 10% (Kaplan fits after warmup)."""
    cfg = runs.set_index("run_id")["config_"]
    warm = curves["run_id"].map(lambda r: max(cfg[r]["train"]["warmup_steps"], 0.1 * cfg[r]["train"]["steps"]))
    return curves[curves["step"] > warm]


def exponent_drift(C: np.ndarray, L: np.ndarray) -> float:
    """How much the frontier's local exponent changes across its range, relative to its mean: a parabola in
    (log C, log L) fitted to the lower envelope, (slope at the largest C - slope at the smallest) / |mean slope|.
    0 for a pure power law; an irreducible loss being approached makes it strongly positive."""
    keep = laws.lower_envelope(C, L)
    if len(keep) < 4:
        return float("nan")
    x, y = np.log(C[keep]), np.log(L[keep])
    c2, c1, _ = np.polyfit(x, y, 2)
    slope = lambda at: 2 * c2 * at + c1
    mean = np.polyfit(x, y, 1)[0]
    return float((slope(x.max()) - slope(x.min())) / abs(mean)) if mean else float("nan")


def drift_estimate(run: np.ndarray, C: np.ndarray, L: np.ndarray, n_bootstrap: int, seed: int = 0):
    """exponent_drift with an interval from resampling whole runs (each a learning curve, evaluation noise in it)."""
    from jscale import noise

    value = exponent_drift(C, L)
    runs = np.unique(run)
    if not n_bootstrap:
        return noise.Estimate(value, None, 0, 0, len(runs))
    by_run = [np.flatnonzero(run == r) for r in runs]

    def draw(rng: np.random.Generator) -> float:
        idx = np.concatenate([by_run[i] for i in rng.integers(0, len(runs), len(runs))])
        return exponent_drift(C[idx], L[idx])

    return noise.percentile_estimate(value, draw, n_bootstrap, len(runs), seed, min_share=0.0)


def tokens_per_param_at(C: float, n_opt: float, runs) -> float:
    """D / N at an IsoFLOP optimum: D = C / (exact training FLOPs per token at N_opt, interpolated in log-log
    between the runs' sizes), N = N_opt counting every parameter."""
    order = np.argsort(runs["N_total"].to_numpy(float))
    logN = np.log(runs["N_total"].to_numpy(float)[order])
    log_per_token = np.log(runs["flops_per_token_exact"].to_numpy(float)[order])
    per_token = float(np.exp(np.interp(np.log(n_opt), logN, log_per_token)))
    return C / per_token / n_opt


def tpp_interval(C: float, minimum: dict, runs) -> str:
    """A 95% interval for tokens per parameter at one budget's optimum, from the IsoFLOP fit's interval of N_opt
    there (every cell redrawn from its noise; laws.fit_isoflop). Tokens per parameter fall as N_opt grows."""
    ci = minimum.get("N_opt_interval")
    if ci is None:
        return "-"
    lo, hi = sorted(tokens_per_param_at(C, n, runs) for n in ci)
    return f"{lo:.3g} to {hi:.3g} (cells redrawn from their noise)"


def edge_tuned_budgets(exp: Experiment, runs, budgets: np.ndarray) -> dict[float, str]:
    """Budgets whose lowest-loss size or a neighbour of it was tuned to the edge of its learning-rate grid: an
    IsoFLOP minimum there rests on the grid, not on the models (left out, with the reason)."""
    out = {}
    for C in np.unique(budgets):
        at = runs[np.isclose(budgets, C)]
        means = at.groupby("N_total")["loss"].mean().sort_index()
        i = int(np.argmin(means.to_numpy()))
        near = means.index[max(0, i - 1):i + 2]
        problem = tuning_problem(exp, at[at["N_total"].isin(near)])
        if problem:
            out[float(C)] = problem
    return out


def compute_section(exp: Experiment, sec: Section, n_bootstrap: int) -> None:
    """The compute frontier L(C) (Kaplan), Chinchilla's approaches 1-3, and 6ND against XLA's count. Every fit in
    compute uses the exact training FLOPs (attention and the unembedding included); 6N D is shown beside it."""
    runs, curves = exp.runs, exp.curves
    curves = after_warmup(curves[curves["run_id"].isin(runs["run_id"])], runs)
    C_exact = curves["flops_exact"].to_numpy(float)
    C_6N = 6.0 * curves["N"].to_numpy(float) * curves["tokens"].to_numpy(float)
    frontier = laws.fit_frontier(curves["run_id"].to_numpy(), C_exact, curves["test_loss"].to_numpy(),
                                 n_bootstrap=n_bootstrap, convention={"N": "non_embedding", "C": "exact"})
    alpha = law_estimate(frontier, "alpha")
    sec.numbers.append(("alpha_C of the frontier L = (C_c/C)^alpha_C (exact C, after warmup; runs resampled)",
                        f"{alpha.value:.3f}", alpha.text().split("(", 1)[1].rstrip(")"),
                        f"{KAPLAN['alpha_C_min']} (C_min), {KAPLAN['alpha_C_naive']} (naive L(C)); WebText2, BPE"))
    sec.notes.append(f"The frontier's envelope holds points of {frontier.info['envelope_runs']} runs; warmup and "
                     f"the first 10% of each run are left out.")
    try:
        f6 = laws.fit_frontier(curves["run_id"].to_numpy(), C_6N, curves["test_loss"].to_numpy(), n_bootstrap=0)
        sec.numbers.append(("alpha_C with C = 6ND instead (N non-embedding), for comparison",
                            f"{f6.params['alpha']:.3f}", "-", "-"))
    except laws.LawFitError as err:
        sec.notes.append(f"With C = 6ND the frontier cannot be fitted: {err}")
    sec.notes.append(units_note(runs))
    # Chinchilla's three approaches, N counting every parameter, exact C.
    fits = {}

    def attempt(name, fit):  # an approach the data cannot support is noted; the others still report
        try:
            fits[name] = fit()
        except laws.LawFitError as err:
            sec.notes.append(f"Chinchilla's {name}: not fitted: {err}")

    attempt("approach 1 (envelope)", lambda: laws.fit_envelope(
        curves["run_id"].to_numpy(), curves["N_total"].to_numpy(), C_exact, curves["test_loss"].to_numpy(),
        n_bootstrap=n_bootstrap, convention={"N": "all", "C": "exact"}))
    budgets = np.array([t.get("isoflop.budget", np.nan) for t in runs["tags_"]], float)
    edge = edge_tuned_budgets(exp, runs, budgets) if np.isfinite(budgets).all() else {}
    for C, why in edge.items():
        sec.notes.append(f"IsoFLOP budget {C:.2g} FLOPs left out: its minimum rests on {why}.")
    usable = np.isfinite(budgets) & ~np.isin(budgets, list(edge))
    if np.isfinite(budgets).all():
        at = runs[usable]
        se = at["final_test_se"].to_numpy(float)
        attempt("approach 2 (IsoFLOP)", lambda: laws.fit_isoflop(
            at["N_total"], at["loss"], budgets[usable], n_bootstrap=n_bootstrap, D=at["tokens_trained"],
            se=np.where(np.isfinite(se), se, 0.0), convention={"N": "all", "C": "exact"}))
    iso = fits.get("approach 2 (IsoFLOP)")
    for m in iso.info["minima"] if iso is not None else []:
        tpp = tokens_per_param_at(m["C"], m["N_opt"], runs)
        sec.numbers.append((f"IsoFLOP budget {m['C']:.2g} FLOPs: N_opt (all parameters), tokens per parameter there "
                            f"(D = C / the exact FLOPs per token at N_opt; bytes, not BPE tokens)",
                            f"{m['N_opt']:.3g}, {tpp:.3g}", tpp_interval(m["C"], m, runs) if m["bracketed"] else "-",
                            "Chinchilla ~20 BPE tokens/param (other units)" if m["bracketed"]
                            else f"not bracketed: {m['note']}"))
    if iso is not None:
        bracketed = sum(m["bracketed"] for m in iso.info["minima"])
        sec.notes.append(f"{bracketed} of {len(iso.info['minima'])} IsoFLOP budgets have a bracketed minimum (a size "
                         f"worse by more than a standard error on each side). The exponent a of N_opt ~ C^a below is "
                         f"shown, not judged: a few budgets cannot pin it down (Epoch needed 240 runs for +-0.02); its "
                         f"interval is the wider of the cells' noise and the minima's scatter about the line.")
    attempt("approach 3 (parametric)", lambda: laws.fit_chinchilla(runs["N_total"], runs["tokens_trained"],
                                                                   runs["loss"], n_bootstrap=n_bootstrap))
    for name, f in fits.items():
        est = law_estimate(f, "a")
        sec.numbers.append((f"N_opt ~ C^a, {name} (N all parameters; shown, not judged)", f"{est.value:.3f}",
                            est.text().split("(", 1)[1].rstrip(")"),
                            f"Chinchilla {CHINCHILLA_A[name]} (all parameters); Kaplan 0.73 (non-embedding)"))
    drift = drift_estimate(curves["run_id"].to_numpy(), C_exact, curves["test_loss"].to_numpy(float), n_bootstrap)
    sec.numbers.append(("change of the frontier's local exponent across its range, relative to its mean (0: one "
                        "power law; runs resampled)", f"{drift.value:+.2f}", drift.text("+.2f").split("(", 1)[1]
                        .rstrip(")"), "~0 over Kaplan's range"))
    verdict(sec, "The compute frontier is one power law L(C) over the range measured (its local exponent changes by "
                 "less than half its mean; exact C, after warmup)", drift, Region.near(0.0, 0.5, "within ±0.5"),
            regime.problem(runs, "not-overfitting"))
    sec.figures["frontier"] = plots.compute_frontier(frontier, curves["run_id"].to_numpy(), C_exact,
                                                     curves["test_loss"].to_numpy())
    if "approach 2 (IsoFLOP)" in fits:
        sec.figures["isoflop"] = plots.isoflop_profiles(fits["approach 2 (IsoFLOP)"], runs["N_total"].to_numpy(),
                                                        runs["loss"].to_numpy(), budgets)
    fig, ax = plots.figure()
    Cgrid = np.geomspace(C_exact.min(), C_exact.max() * 100, 100)
    for i, (name, f) in enumerate(fits.items()):
        st = series_style(i)
        a = f.derived.get("a", f.params.get("a"))
        ax.loglog(Cgrid, f.compute_optimal(Cgrid)["N"], linestyle=st["linestyle"], color=st["color"],
                  label=f"{name}: a = {a:.2f}")
    if fits:
        ref = next(iter(fits.values())).compute_optimal(Cgrid[:1])["N"][0]
        ax.loglog(Cgrid, ref * (Cgrid / Cgrid[0]) ** 0.73, color="0.7", lw=2, alpha=0.6, label="Kaplan's slope 0.73")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("compute-optimal N (all parameters)")
    ax.legend(frameon=False, fontsize=7)
    sec.figures["compute_optimal"] = plots.tidy(fig)
    # C = 6ND against XLA's count of the lowered train step, per distinct model.
    rows, ratios = [], []
    seen = {}
    for r in runs.itertuples():
        key = (r.n_layer, r.d_model, r.d_ff, r.n_heads, r.n_ctx, r.batch_size)
        if key not in seen:
            seen[key] = r
    for key, r in sorted(seen.items(), key=lambda kv: kv[1].N):
        xla = xla_flops_per_token(r.config_)
        ratios.append(xla / (6 * r.N))
        rows.append([f"{r.n_layer}", f"{r.d_model}", f"{r.N:,}", f"{r.N_total:,}", f"{6 * r.N:,.0f}",
                     f"{r.flops_per_token_exact:,.0f}", f"{xla:,.0f}", f"{xla / (6 * r.N):.2f}",
                     f"{xla / r.flops_per_token_exact:.3f}"])
    sec.tables.append((["n_layer", "d_model", "N", "N_total", "6N", "exact count", "XLA", "XLA / 6N",
                        "XLA / exact"], rows))
    sec.notes.append(f"XLA counts {min(ratios):.2f}x to {max(ratios):.2f}x the FLOPs of 6N per token at these "
                     f"sizes (attention and the unembedding, which 6N leaves out, weigh heavily in small models).")


ANALYSIS = "compute"  # the sweep's `analysis` (sweep.json) this section reads
TITLE = "Compute: the frontier, compute-optimal size and FLOP counts"
POSITION = 50  # order in the report
analyse = compute_section
