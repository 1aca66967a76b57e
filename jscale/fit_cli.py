"""`jscale fit`: turn a table of runs into a fitted law, a printed table with intervals, a JSON file and figures.

Inputs: a CSV file, a pandas DataFrame (`fit_table`), a `jscale run` sweep directory (its results.sqlite), or a
directory of `jscale train` runs (each with config.json and metrics.jsonl). Columns are found by name (N, D, C,
loss, run, budget, S, B, S_min) or common aliases, or named with --n-col etc. When D is missing it is C / (6 N),
Chinchilla's convention.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from jscale import laws
from jscale.laws import FittedLaw, LawFitError

LAWS = ("chinchilla", "kaplan-n", "kaplan-d", "kaplan-c", "kaplan-nd", "kaplan-ns", "frontier", "isoflop",
        "envelope")
ALIASES = {
    "N": ("N", "n", "params", "n_params", "parameters", "Model Size", "model_size"),
    "D": ("D", "tokens", "n_tokens", "Training Tokens", "data"),
    "C": ("C", "flops", "FLOPs", "Training FLOP", "compute"),
    "loss": ("loss", "Loss", "final_loss", "test_loss"),
    "run": ("run", "run_id", "name"),
    "budget": ("budget", "C_budget", "isoflop_budget"),
    "S": ("S", "steps", "step"),
    "B": ("B", "batch_tokens", "batch"),
    "S_min": ("S_min",),
}


def read_runs_dir(path: Path, n_convention: str, c_convention: str):
    """Final results and learning curves of `jscale train` run directories under path (or path itself)."""
    import pandas as pd

    from jscale import accounting, config
    from jscale.resolve import resolve

    dirs = [path] if (path / "metrics.jsonl").exists() else sorted(p.parent for p in path.glob("*/metrics.jsonl"))
    if not dirs:
        raise LawFitError(f"{path}: no jscale runs here (no metrics.jsonl in it or its subdirectories)")
    rows, curve_rows = [], []
    for d in dirs:
        cfg = resolve(config.from_dict(json.loads((d / "config.json").read_text())))
        acc = accounting.account(cfg.model)
        N = acc.N_total if n_convention == "all" else acc.N
        records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines() if line.strip()]
        if not records:
            continue
        for r in records:
            C = 6 * N * r["tokens"] if c_convention == "6ND" else r["flops_exact"]
            curve_rows.append({"run": d.name, "N": N, "D": r["tokens"], "C": C, "loss": r["test_loss"],
                               "S": r["step"], "B": cfg.train.batch_size * cfg.model.n_ctx})
        rows.append({**curve_rows[-1], "best_loss": min(r["test_loss"] for r in records)})
    return pd.DataFrame(rows), pd.DataFrame(curve_rows)


def read_sweep(path: Path, n_convention: str, c_convention: str, loss: str = "final"):
    """Final results and learning curves of a `jscale run` sweep directory (its results.sqlite).

    Diverged and unfinished runs are left out of the final results; their curves stay in (the frontier and the
    envelope use every point measured)."""
    from jscale import results

    tables = results.load(path)
    runs, curves = tables["runs"], tables["curves"]
    runs = runs[runs["role"].fillna("final") != "pilot"]  # tuning pilots select; they are not results
    curves = curves[curves["run_id"].isin(runs["run_id"])]
    n_col = "N_total" if n_convention == "all" else "N"
    done = runs[runs["status"] == "done"].copy()
    if done.empty:
        raise LawFitError(f"{path}: no finished runs to fit yet (see jscale status {path})")
    done["tokens_trained"] = done["steps"] * done["batch_size"] * done["n_ctx"]
    per_token = done["flops_per_token_exact"] if c_convention == "exact" else 6 * done[n_col]
    budgets = [json.loads(t).get("isoflop.budget") for t in done["tags"]]
    table = done.assign(run=done["run_id"], N=done[n_col], D=done["tokens_trained"],
                        C=done["tokens_trained"] * per_token,
                        loss=done["final_test_loss"] if loss == "final" else  # "best": early stopping on validation
                        results.test_at_best_validation(done, curves))
    if any(b is not None for b in budgets):
        table["budget"] = budgets
    per_token_curve = curves["flops_exact"] / curves["tokens"] if c_convention == "exact" else 6 * curves[n_col]
    curve_table = curves.assign(run=curves["run_id"], N=curves[n_col], D=curves["tokens"],
                                C=curves["tokens"] * per_token_curve, loss=curves["test_loss"])
    return table[["run", "N", "D", "C", "loss"] + (["budget"] if "budget" in table else [])], \
        curve_table[["run", "N", "D", "C", "loss", "step"]]


def sweep_regime(path: str | Path, law: str) -> tuple[str, bool]:
    """Whether a sweep's finished runs are in the regime the law is about (jscale.regime), as one line."""
    from jscale import regime, results

    tables = results.load(path)
    runs = tables["runs"]
    runs = runs[(runs["role"].fillna("final") != "pilot") & (runs["status"] == "done")]
    return regime.statement(regime.table(runs.copy(), tables["curves"], tables.get("anneals"), tables.get("blocks")),
                            law)


def read_table(path: str | Path, n_convention: str = "all", c_convention: str = "exact"):
    """(runs, curves) DataFrames from a CSV file, a sweep directory or a directory of single runs. A CSV's rows
    serve as both."""
    import pandas as pd

    path = Path(path)
    if path.is_dir() and (path / "results.sqlite").exists():
        return read_sweep(path, n_convention, c_convention)
    if path.is_dir():
        return read_runs_dir(path, n_convention, c_convention)
    if not path.is_file():
        raise LawFitError(f"{path}: no such file or directory")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise LawFitError(f"{path}: not a readable CSV table ({str(e).splitlines()[0]})") from None
    return df, df


def _find(df, key: str, explicit: str | None, required: bool = True) -> str | None:
    if explicit:
        if explicit not in df.columns:
            raise LawFitError(f"column {explicit!r} (given for {key}) is not in the table; columns: "
                              f"{', '.join(map(str, df.columns))}")
        return explicit
    for name in ALIASES[key]:
        if name in df.columns:
            return name
    if required:
        raise LawFitError(f"no column for {key} (looked for {', '.join(ALIASES[key])}); name it with "
                          f"--{key.lower().replace('_', '-')}-col")
    return None


def _column(df, key: str, cols: dict[str, str | None], required: bool = True) -> np.ndarray | None:
    name = _find(df, key, cols.get(key), required)
    return None if name is None else df[name].to_numpy()


def _tokens(df, cols) -> np.ndarray:
    D = _column(df, "D", cols, required=False)
    if D is not None:
        return D
    N, C = _column(df, "N", cols), _column(df, "C", cols, required=False)
    if C is None:
        raise LawFitError("no column for D (tokens) and no C to derive it from (D = C / 6N)")
    return laws._column("C", C) / (6 * laws._column("N", N))


def _budgets(df, cols) -> np.ndarray:
    """IsoFLOP budgets: a budget column, or C grouped within laws.BUDGET_TOLERANCE (runs sized to one budget in
    exact FLOPs differ a little); C values that do not fall into budgets of 3 or more sizes ask for the column."""
    b = _column(df, "budget", cols, required=False)
    if b is not None:
        return b
    budgets = laws.group_budgets(_column(df, "C", cols))
    N = laws._column("N", _column(df, "N", cols))
    sizes = {c: len(np.unique(N[budgets == c])) for c in np.unique(budgets)}
    small = [c for c, k in sizes.items() if k < 3]
    if small:
        raise LawFitError(f"isoflop: C falls into {len(sizes)} groups within {100 * laws.BUDGET_TOLERANCE:.0f}% of "
                          f"each other, {len(small)} of them with fewer than 3 model sizes "
                          f"({int(np.isin(budgets, small).sum())} "
                          f"rows): not an IsoFLOP table as it is; give each run's budget as a column (--budget-col)")
    return budgets


def fit_table(runs, curves=None, law: str = "chinchilla", columns: dict[str, str | None] | None = None,
              irreducible: bool = False, n_bootstrap: int = 1000, seed: int = 0, drop_highest: int = 0,
              convention: dict[str, str] | None = None, b_star: float | None = None, alpha_b: float | None = None
              ) -> tuple[FittedLaw, dict[str, Any]]:
    """Fit `law` to DataFrames of final results (runs) and learning curves (curves; defaults to runs).

    Returns the fitted law and the arrays its figures need.
    """
    if law not in LAWS:
        raise LawFitError(f"--law: {law!r} is not one of {', '.join(LAWS)}")
    cols = dict(columns or {})
    curves = runs if curves is None else curves
    if drop_highest and law in ("frontier", "envelope"):
        raise LawFitError(f"--drop-highest: the {law} law reads every point of every learning curve; dropping runs "
                          f"is not defined for it")
    if drop_highest:
        loss_name = _find(runs, "loss", cols.get("loss"))
        if drop_highest >= len(runs):
            raise LawFitError(f"--drop-highest: {drop_highest} would drop all {len(runs)} rows")
        runs = runs.sort_values(loss_name, kind="stable").iloc[:-drop_highest]
    conv = dict(convention or {})
    common = {"n_bootstrap": n_bootstrap, "seed": seed, "convention": conv}
    L = lambda df: _column(df, "loss", cols)
    if law == "chinchilla":
        N, D = _column(runs, "N", cols), _tokens(runs, cols)
        return laws.fit_chinchilla(N, D, L(runs), **common), {"N": N, "D": D, "loss": L(runs)}
    if law in ("kaplan-n", "kaplan-d", "kaplan-c"):
        key = law[-1].upper()
        X = _tokens(runs, cols) if key == "D" else _column(runs, key, cols)
        fitted = laws.fit_power(X, L(runs), variable=key, irreducible=irreducible, **common)
        return fitted, {"X": X, "loss": L(runs)}
    if law == "kaplan-nd":
        N, D = _column(runs, "N", cols), _tokens(runs, cols)
        return laws.fit_kaplan_nd(N, D, L(runs), **common), {"N": N, "D": D, "loss": L(runs)}
    if law == "kaplan-ns":
        N, loss = _column(runs, "N", cols), L(runs)
        S_min = _column(runs, "S_min", cols, required=False)
        if S_min is None:  # S_min = S / (1 + B_crit(L) / B) with B_crit(L) = B_star / L^(1 / alpha_B) as given
            if b_star is None or alpha_b is None:
                raise LawFitError("kaplan-ns: needs an S_min column, or --b-star and --alpha-b measured on these "
                                  "data (Kaplan's 2e8 and 0.21 are per WebText2 BPE token and do not transfer)")
            S, B = _column(runs, "S", cols), _column(runs, "B", cols)
            S_min = laws.s_min(S, B, b_star / laws._column("loss", loss) ** (1 / alpha_b))
        return laws.fit_kaplan_ns(N, S_min, loss, **common), {"N": N, "S_min": S_min, "loss": loss}
    if law == "isoflop":
        N, budget = _column(runs, "N", cols), _budgets(runs, cols)
        D = _column(runs, "D", cols, required=False)  # for b and k_D when C is not 6ND
        return laws.fit_isoflop(N, L(runs), budget, D=D, **common), {"N": N, "loss": L(runs), "budget": budget}
    run = _column(curves, "run", cols)
    C = _column(curves, "C", cols)
    if law == "frontier":
        return laws.fit_frontier(run, C, L(curves), **common), {"run": run, "C": C, "loss": L(curves)}
    N = _column(curves, "N", cols)
    return laws.fit_envelope(run, N, C, L(curves), **common), {"run": run, "N": N, "C": C, "loss": L(curves)}


def figures(fitted: FittedLaw, arrays: dict[str, Any]) -> dict[str, Any]:
    """The figures that belong to a fit, by name."""
    from jscale import plots

    law = fitted.law
    figs: dict[str, Any] = {}
    if law in ("power", "power+E"):
        figs["loss"] = plots.loss_vs_variable(fitted, arrays["X"], arrays["loss"])
        figs["residuals"] = plots.residuals(fitted, arrays["X"], fitted.info.get("variable", "X"))
    elif law in ("chinchilla", "kaplan-nd"):
        figs["loss_nd"] = plots.loss_nd_curves(fitted, arrays["N"], arrays["D"], arrays["loss"])
        figs["residuals"] = plots.residuals(fitted, arrays["N"], "N")
        if law == "chinchilla":
            figs["compute_optimal"] = plots.compute_optimal(fitted)
    elif law == "isoflop":
        figs["isoflop"] = plots.isoflop_profiles(fitted, arrays["N"], arrays["loss"], arrays["budget"])
        figs["compute_optimal"] = plots.compute_optimal(fitted, (min(arrays["budget"]), 1e4 * max(arrays["budget"])))
    elif law == "frontier":
        figs["frontier"] = plots.compute_frontier(fitted, arrays["run"], arrays["C"], arrays["loss"])
        figs["residuals"] = plots.residuals(fitted)
    elif law == "envelope":
        figs["compute_optimal"] = plots.compute_optimal(fitted, (min(arrays["C"]), 1e4 * max(arrays["C"])))
    else:
        figs["residuals"] = plots.residuals(fitted)
    return figs


def _run(args) -> None:
    for flag, value in (("--bootstrap", args.bootstrap), ("--drop-highest", args.drop_highest)):
        if value < 0:
            raise LawFitError(f"{flag}: must be >= 0, got {value}")
    runs, curves = read_table(args.input, args.n_convention, args.c_convention)
    columns = {"N": args.n_col, "D": args.d_col, "C": args.c_col, "loss": args.loss_col, "run": args.run_col,
               "budget": args.budget_col}
    convention = {"N": args.n_convention, "C": args.c_convention if Path(args.input).is_dir() else "from the file"}
    fitted, arrays = fit_table(runs, curves, args.law, columns, irreducible=args.irreducible,
                               n_bootstrap=args.bootstrap, seed=args.seed, drop_highest=args.drop_highest,
                               convention=convention, b_star=args.b_star, alpha_b=args.alpha_b)
    print(fitted.table())
    if Path(args.input).is_dir() and (Path(args.input) / "results.sqlite").exists():
        line, ok = sweep_regime(args.input, args.law)
        print(line)
        fitted.info["regime"] = {"statement": line, "in_regime": ok}
    # By default the fit goes next to its input (inside a sweep or runs directory, beside a CSV file).
    source = Path(args.input)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / f"fit-{args.law}.json"
    if out.is_dir():
        raise LawFitError(f"--out: {out} is a directory; give a file name such as {out / f'fit-{args.law}.json'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LawFitError(f"--out: cannot create {out.parent}: {(e.strerror or str(e)).lower()}") from None
    fitted.save(out)
    print(f"wrote {out}")
    if args.plot:
        prefix = Path(args.plot)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        for name, fig in figures(fitted, arrays).items():
            path = prefix.parent / f"{prefix.name}-{name}.png"
            fig.savefig(path, dpi=130)
            print(f"wrote {path}")


def add_parser(sub) -> None:
    p = sub.add_parser("fit", help="fit a scaling law to a CSV table or a directory of runs")
    p.add_argument("input", help="CSV file, a jscale sweep directory, or a directory of jscale train runs")
    p.add_argument("--law", required=True, choices=LAWS, help="which law to fit: " + ", ".join(LAWS))
    p.add_argument("--irreducible", action="store_true", help="kaplan-n/d/c: add an irreducible loss E")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for intervals (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--drop-highest", type=int, default=0, help="drop the K rows of highest loss first "
                                                               "(Epoch's protocol drops 5)")
    p.add_argument("--n-convention", choices=("all", "non_embedding"), default="all",
                   help="what N counts (run directories; recorded with the fit)")
    p.add_argument("--c-convention", choices=("6ND", "exact"), default="exact",
                   help="compute of a jscale sweep or run: the exact training FLOPs (default) or 6ND")
    p.add_argument("--b-star", type=float, help="kaplan-ns without an S_min column: B_star of B_crit(L), measured")
    p.add_argument("--alpha-b", type=float, help="kaplan-ns without an S_min column: alpha_B of B_crit(L), measured")
    for key in ("n", "d", "c", "loss", "run", "budget"):
        p.add_argument(f"--{key}-col", help=f"name of the {key} column")
    p.add_argument("--out", help="JSON file for the fit (default fit-LAW.json)")
    p.add_argument("--plot", help="write figures as PREFIX-NAME.png")
    p.set_defaults(func=_run)
