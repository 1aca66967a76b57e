"""`jscale report DIR`: the experiments' results as one self-contained HTML page and a Markdown summary.

DIR is a sweep directory of `jscale run`, or a directory of them (experiments/README.md runs each experiment
into DIR/NAME). Each sweep's `analysis` (written to its sweep.json) picks the section that reads it; every
section has its figures, the fitted numbers with 95% intervals beside Kaplan's (or Chinchilla's) published ones
(with their units), a measurement table (each run's regime: tokens per parameter, epochs, late validation
improvement, converged / compute-limited / overfitting, and its loss against n-gram baselines on the same windows),
and verdicts decided by jscale.verdicts' one rule: supports, contradicts or inconclusive, from an interval that
includes seed and evaluation-window noise (jscale.noise), and inconclusive whenever the runs are not in the regime
the claim is about. Pilot runs of a tuning grid are never reported.

Output, in --out (default DIR/report): report.html (figures embedded as PNG data), report.md (figures linked),
figures/*.png, NAME-runs.csv (one row per run: shape, N, compute, losses), latency.json (the efficiency section's
measurements, reused on the next report from the same device).

The package: `common` holds what every section shares (reading, the verdict rule, intervals, regimes, the measurement
table); `page` writes the files; every other module is one section, found here by its ANALYSIS name and placed by
its POSITION, so adding an experiment's analysis is adding one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from jscale import laws
from jscale.report.common import (N_BOOTSTRAP, Experiment, Section, corpus_baselines, find_experiments,
                                  measurement_table)
from jscale.report.page import write_report

__all__ = ["SECTIONS", "build_sections", "find_experiments", "sections_of", "write_report"]

NOT_SECTIONS = ("common", "page", "generic")


def _section_modules() -> dict[str, ModuleType]:
    """Every section module of this package by the analysis it reads, in report order."""
    found = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)
             if m.name not in NOT_SECTIONS]
    return {m.ANALYSIS: m for m in sorted(found, key=lambda m: m.POSITION)}


SECTIONS: dict[str, ModuleType] = _section_modules()


def build_sections(root: Path, out: Path, latency: bool = True, n_bootstrap: int = N_BOOTSTRAP,
                   baselines: bool = True) -> list[Section]:
    return sections_of(find_experiments(Path(root)), Path(out), latency, n_bootstrap, baselines)


def _position(e: Experiment) -> tuple:
    module = SECTIONS.get(e.info.get("analysis", e.name))
    return (module.POSITION if module else 1000, e.name)


def sections_of(exps: list[Experiment], out: Path, latency: bool, n_bootstrap: int,
                baselines: bool = True) -> list[Section]:
    """One section per experiment, in the sections' order (a sweep without a section of its own gets the generic
    one)."""
    from jscale.report import generic

    sections = []
    exps = sorted(exps, key=_position)
    for e in exps:
        module = SECTIONS.get(e.info.get("analysis", e.name))
        sec = Section(e.name, module.TITLE if module else f"Sweep '{e.name}'", e.info.get("claim", ""),
                      e.info.get("scale"))
        sec.notes.append(f"{len(e.runs)} of {e.n_planned} runs finished; unfinished and diverged runs are left out.")
        devices = sorted({f"{s['device']} ({s['backend']}, jax {s['jax']})" for s in e.info.get("sessions", [])})
        days = sorted({s["date"][:10] for s in e.info.get("sessions", [])})
        if devices:
            sec.notes.append(f"Trained with `jscale run` on {', '.join(devices)}, "
                             f"{' to '.join(dict.fromkeys([days[0], days[-1]]))}.")
        if getattr(module, "READS_ALL", False):
            module.analyse(exps, sec, out, latency, n_bootstrap)
        elif len(e.runs) == 0:
            sec.notes.append("No finished runs yet.")
        else:
            try:
                (module or generic).analyse(e, sec, n_bootstrap)
            except laws.LawFitError as err:
                sec.notes.append(f"Not enough finished runs to fit: {err}")
            measurement_table(e, sec, corpus_baselines(e) if baselines else None)
        sections.append((_position(e), sec))
    for module in SECTIONS.values():  # sections with no sweep of their own, read off the others' runs
        auto = getattr(module, "AUTO", None)
        if auto is not None and module.ANALYSIS not in {e.info.get("analysis", e.name) for e in exps} and auto(exps):
            sec = Section(module.ANALYSIS, module.TITLE, module.CLAIM, exps[0].info.get("scale") if exps else None)
            module.analyse(exps, sec, out, latency, n_bootstrap)
            sections.append(((module.POSITION, module.ANALYSIS), sec))
    return [sec for _, sec in sorted(sections, key=lambda x: x[0])]
