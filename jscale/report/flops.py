"""FLOP accounting against the compiled step, for every model kind in the report: Kaplan's C = 6N per token (N
non-embedding), jscale's exact count (attention and the unembedding included; jscale.accounting) and XLA's cost
analysis of the lowered train step. No sweep of its own: one model of each kind, the smallest of the report's."""

from __future__ import annotations

from pathlib import Path

from jscale.report.common import Experiment, Section
from jscale.report.compute import xla_flops_per_token

CLAIM = "C = 6N per token against the train step as compiled, for every model kind (Kaplan Sec. 2.1)"


def has_runs(exps: list[Experiment]) -> bool:
    return any(len(e.runs) for e in exps)


def flops_section(exps: list[Experiment], sec: Section, out: Path, latency: bool, n_bootstrap: int = 0) -> None:
    if not latency:
        sec.notes.append("Not measured (report written without measurements on this device, --no-latency).")
        return
    seen = {}
    for e in exps:
        for r in e.runs.sort_values("N").itertuples():
            key = (r.kind, r.reuse if r.kind == "universal" else 1, r.mem_len if r.kind == "transformer_xl" else 0)
            seen.setdefault(key, r)
    rows = []
    for (kind, reuse, mem), r in sorted(seen.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[1].N)):
        xla = xla_flops_per_token(r.config_)
        label = kind + (f" (reuse {reuse})" if reuse > 1 else "") + (f" (memory {mem})" if mem else "")
        rows.append([label, f"{r.n_layer}", f"{r.d_model}", f"{r.n_ctx}", f"{r.N:,}", f"{6 * r.N:,.0f}",
                     f"{r.flops_per_token_exact:,.0f}", f"{xla:,.0f}", f"{xla / (6 * r.N):.2f}",
                     f"{xla / r.flops_per_token_exact:.3f}"])
    sec.tables.append((["kind", "n_layer", "d_model", "n_ctx", "N", "6N", "exact count", "XLA", "XLA / 6N",
                        "XLA / exact"], rows))
    sec.notes.append("Per training token. XLA's count is the cost analysis of the lowered train step (forward, "
                     "backward and the AdamW update); 6N leaves out attention over the context and the "
                     "unembedding, which weigh heavily in small models, and a Universal Transformer's reuse.")


ANALYSIS = "flops"
TITLE = "FLOP accounting against the compiled step, every model kind"
POSITION = 85  # order in the report
READS_ALL = True  # analyse(experiments, section, out, latency, n_bootstrap) reads every experiment's runs
AUTO = has_runs  # no sweep of its own
analyse = flops_section
