"""Efficiency: which smaller model matches a bigger one (loss against latency and parameters, over every
experiment's runs)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from jscale import noise, plots, regime
from jscale.report.common import Experiment, Section, join_problems, series_style, tuning_problem, verdict
from jscale.verdicts import Region


def efficiency_section(exps: list[Experiment], sec: Section, out: Path, latency: bool,
                       n_bootstrap: int = 0) -> None:
    """Loss against generation latency (batch 1, per token) and against parameters, over every run of every
    experiment; the Pareto fronts; grouped-query and multi-query attention."""
    import pandas as pd

    frames = []
    for e in exps:
        r = e.runs.copy()
        r["experiment"] = e.name
        frames.append(r)
    runs = pd.concat(frames, ignore_index=True)
    runs["model_key"] = [json.dumps(c["model"], sort_keys=True) for c in runs["config_"]]
    if latency:
        lat = _latencies(runs, out)
        runs["latency_ms"] = [1e3 * lat[k]["seconds_per_token"] for k in runs["model_key"]]
        runs["cache_kb"] = [lat[k]["cache_bytes"] / 1024 for k in runs["model_key"]]
        device = next(iter(lat.values()))["device"] if lat else "?"
    else:
        runs["latency_ms"], runs["cache_kb"], device = np.nan, np.nan, "?"
    runs["label"] = [_kind_label(r) for r in runs.itertuples()]
    fig, (ax_n, ax_t) = plots.figure(2)
    kinds = sorted(runs["label"].unique())
    for i, kind in enumerate(kinds):
        g = runs[runs["label"] == kind]
        st = series_style(i)
        ax_n.loglog(g["N_total"], g["loss"], marker=st["marker"], linestyle="none", color=st["color"],
                    mfc=st["mfc"], ms=5, label=kind)
        if latency:
            ax_t.loglog(g["latency_ms"], g["loss"], marker=st["marker"], linestyle="none", color=st["color"],
                        mfc=st["mfc"], ms=5, label=kind)
    front_n = _pareto(runs["N_total"].to_numpy(), runs["loss"].to_numpy())
    ax_n.plot(runs["N_total"].to_numpy()[front_n], runs["loss"].to_numpy()[front_n], "k-", lw=1, drawstyle="steps-post",
              label="Pareto front")
    ax_n.set_xlabel(plots.n_label("all")), ax_n.set_ylabel("test loss (nats/token)")
    ax_n.legend(frameon=False, fontsize=6)
    if latency:
        front_t = _pareto(runs["latency_ms"].to_numpy(), runs["loss"].to_numpy())
        ax_t.plot(runs["latency_ms"].to_numpy()[front_t], runs["loss"].to_numpy()[front_t], "k-", lw=1,
                  drawstyle="steps-post", label="Pareto front")
        ax_t.set_xlabel(f"generation latency (ms/token, batch 1, {device})")
        ax_t.set_ylabel("test loss (nats/token)")
        ax_t.legend(frameon=False, fontsize=6)
        rows = [[r.experiment, r.label, r.name, f"{r.N_total:,}", f"{r.latency_ms:.3f}", f"{r.cache_kb:.1f}",
                 f"{r.loss:.4f}"] for r in runs.iloc[front_t].sort_values("latency_ms").itertuples()]
        sec.tables.append((["experiment", "kind", "run", "N (all)", "ms/token", "decode state (KiB)", "loss"], rows))
    sec.figures["pareto"] = plots.tidy(fig)
    sec.notes.append("Runs of different experiments differ in context length and tokens trained; the 'matches' "
                     "verdict compares only runs with the same context and tokens trained, none of them data-limited.")
    # Which smaller model matches a bigger one: among comparable runs (same context, same tokens, none limited to
    # a dataset smaller than what it trained on), the largest N ratio at no worse loss.
    best = None
    unlimited = runs[(runs["D"] == 0) | (runs["D"] >= runs["tokens_trained"])]
    for _, g in unlimited.groupby(["n_ctx", "tokens_trained"]):
        for big in g.itertuples():
            small = g[(g["loss"] <= big.loss) & (g["N_total"] < big.N_total)]
            if len(small):
                s = small.loc[small["N_total"].idxmin()]
                ratio = big.N_total / s.N_total
                if best is None or ratio > best[0]:
                    best = (ratio, s, big)
    windows = {r: w for e in exps for r, w in e.windows.items()}

    eff = next((e for e in exps if e.name == "efficiency"), None)
    eff_runs = runs[runs["experiment"] == "efficiency"]
    # the seed variance pooled over every point of the efficiency sweep (more degrees of freedom than one pair's)
    eff_points = [np.stack([windows[i] for i in g["run_id"]]) for _, g in eff_runs.groupby("point")
                  if all(i in windows for i in g["run_id"])]
    sizes = {len(p[0]) for p in eff_points}
    W = sizes.pop() if len(sizes) == 1 else None
    blocks = eff.window_blocks(int(eff_runs["n_ctx"].iloc[0]), W) if eff is not None and W else None
    pooled = noise.pooled_seed_variance(eff_points, blocks) if W else None

    def seeds_paired(a_ids: list[str], b_ids: list[str]) -> noise.Estimate | None:
        """A's loss above B's, percent: windows paired and resampled by document, seed effects from the seed
        variance pooled over the sweep."""
        a, b = [windows.get(i) for i in a_ids], [windows.get(i) for i in b_ids]
        if any(x is None for x in a + b) or len({len(x) for x in a + b}) != 1:
            return None
        same = W is not None and len(a[0]) == W
        return noise.paired_difference(np.stack(a), np.stack(b), n_resamples=1000, blocks=blocks if same else None,
                                       pooled=pooled if same else None)

    def paired(a_id, b_id) -> noise.Estimate | None:
        a, b = windows.get(a_id), windows.get(b_id)
        if a is None or b is None or len(a) != len(b):
            return None
        return noise.paired_difference(a[None], b[None], n_resamples=1000)

    if best:
        ratio, s, big = best
        speed = (f", and decodes in {s.latency_ms:.3f} against {big.latency_ms:.3f} ms/token"
                 if latency else "")
        diff = paired(s.run_id, big.run_id)
        # A search over pairs picks the smaller model that did no worse, so this is reported, not decided: a
        # verdict on a pair chosen for its result would be biased towards "matches".
        small_name = s["name"]  # s is a row (Series), big a namedtuple
        sec.numbers.append((f"{s.label} '{small_name}' ({s.experiment}, N = {s.N_total:,}) against {big.label} "
                            f"'{big.name}' ({big.experiment}, N = {big.N_total:,}, {ratio:.1f}x the parameters): "
                            f"loss difference (windows paired){speed}", f"{100 * (s.loss / big.loss - 1):+.2f}%",
                            "-" if diff is None or diff.interval is None else
                            f"{diff.interval[0]:+.2f}% to {diff.interval[1]:+.2f}%", "-"))
    gqa = runs[(runs["experiment"] == "efficiency") & (runs["kind"] == "transformer")]
    problem = regime.problem(gqa) if len(gqa) else None  # attention quality is a claim about converged models
    if eff is not None and len(gqa):
        problem = join_problems(problem, tuning_problem(eff, gqa))
    for d_model, g in gqa.groupby("d_model"):
        mha = g[g["n_kv_heads"] == g["n_heads"]]
        if mha.empty:
            continue
        m = mha.iloc[0]
        for _, point in g[g["n_kv_heads"] < g["n_heads"]].sort_values("n_kv_heads").groupby("point", sort=False):
            r = point.iloc[0]
            what = "multi-query" if r.n_kv_heads == 1 else f"grouped-query ({r.n_kv_heads} KV heads)"
            lat_text = (f", latency {100 * (r.latency_ms / m.latency_ms - 1):+.0f}%, decode state "
                        f"{r.cache_kb:.1f} against {m.cache_kb:.1f} KiB" if latency else "")
            loss_r, loss_m = point["loss"].mean(), mha["loss"].mean()
            sec.numbers.append((f"d_model {d_model}: {what} against multi-head attention ({len(point)} and "
                                f"{len(mha)} seeds)", f"loss {100 * (loss_r / loss_m - 1):+.1f}%, parameters "
                                f"{100 * (r.N_total / m.N_total - 1):+.0f}%{lat_text}", "-", "-"))
            verdict(sec, f"d_model {d_model}: {what} attention loses no more than 1% against multi-head (loss "
                         f"difference, percent; seeds and windows resampled, windows paired)",
                    seeds_paired(list(point["run_id"]), list(mha["run_id"])), Region.below(1.0, "< 1% worse"),
                    problem, estimate=100 * (loss_r / loss_m - 1))
    if latency:
        fastest = runs.loc[runs["latency_ms"].idxmin()]
        best_loss = runs.loc[runs["loss"].idxmin()]
        sec.notes.append(f"Lowest loss: {best_loss.label} '{best_loss['name']}' ({best_loss.loss:.4f} nats, "
                            f"{best_loss.latency_ms:.3f} ms/token); fastest: {fastest.label} '{fastest['name']}' "
                            f"({fastest.latency_ms:.3f} ms/token, {fastest.loss:.4f} nats), on {device}.")


def _kind_label(r) -> str:
    if r.kind == "lstm":
        return f"LSTM {r.n_layer}L"
    if r.kind == "universal":
        return f"Universal x{r.reuse}"
    if r.kind == "transformer_xl":
        return "Transformer-XL"
    if r.n_kv_heads == 1 and r.n_heads > 1:
        return "Transformer, MQA"
    if r.n_kv_heads < r.n_heads:
        return "Transformer, GQA"
    return "Transformer"


def _pareto(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats on both cost and loss, by increasing cost."""
    order = np.lexsort((loss, cost))
    front, best = [], np.inf
    for i in order:
        if loss[i] < best:
            front.append(i)
            best = loss[i]
    return np.array(front, int)


def _latencies(runs, out: Path) -> dict[str, dict]:
    """Per-token latency of every distinct model, cached in out/latency.json per device."""
    import jax

    from jscale import config, generate

    path = out / "latency.json"
    device = jax.devices()[0].device_kind
    cache = json.loads(path.read_text()) if path.exists() else {}
    found = {}
    for key in dict.fromkeys(runs["model_key"]):
        h = hashlib.sha1(f"{device}|{key}".encode()).hexdigest()[:16]
        if h not in cache:
            cfg = config.from_dict({"model": json.loads(key)}).model
            cache[h] = generate.latency_per_token(cfg)
        found[key] = cache[h]
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache, indent=1, sort_keys=True))
    return found


ANALYSIS = "efficiency"  # the sweep's `analysis` (sweep.json) this section reads
TITLE = "Efficiency: which smaller model matches a bigger one"
POSITION = 90  # order in the report
READS_ALL = True  # analyse(experiments, section, out, latency, n_bootstrap) reads every experiment's runs
analyse = efficiency_section
