"""Which section reads which experiment: every section module of this package found by its ANALYSIS name and
placed by its POSITION, and the sections of a report built from the experiments found."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from jscale import laws
from jscale.report import generic
from jscale.report.common import (N_BOOTSTRAP, Experiment, Section, corpus_baselines, find_experiments,
                                  measurement_table)

NOT_SECTIONS = ("common", "page", "generic", "sections")


def _section_modules() -> dict[str, ModuleType]:
    """Every section module of this package by the analysis it reads, in report order."""
    package = Path(__file__).parent
    found = [importlib.import_module(f"jscale.report.{m.name}") for m in pkgutil.iter_modules([str(package)])
             if m.name not in NOT_SECTIONS]
    return {m.ANALYSIS: m for m in sorted(found, key=lambda m: m.POSITION)}


SECTIONS: dict[str, ModuleType] = _section_modules()


def build_sections(root: Path, out: Path, latency: bool = True, n_bootstrap: int = N_BOOTSTRAP,
                   baselines: bool = True) -> list[Section]:
    return sections_of(find_experiments(Path(root)), Path(out), latency, n_bootstrap, baselines)


def _position(e: Experiment) -> tuple:
    module = SECTIONS.get(e.info.get("analysis", e.name))
    return (module.POSITION if module else 0, e.name)  # the user's own sweeps first, then the built-in sections


def sections_of(exps: list[Experiment], out: Path, latency: bool, n_bootstrap: int,
                baselines: bool = True) -> list[Section]:
    """One section per experiment, in the sections' order (a sweep without a section of its own gets the generic
    one)."""
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
