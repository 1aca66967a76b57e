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
table); `sections` finds the section modules and builds a report's sections; `page` writes the files; every other
module is one section, found here by its ANALYSIS name and placed by its POSITION, so adding an experiment's
analysis is adding one file.
"""

from __future__ import annotations

from jscale.report.common import find_experiments
from jscale.report.page import write_report
from jscale.report.sections import SECTIONS, build_sections, sections_of

__all__ = ["SECTIONS", "build_sections", "find_experiments", "sections_of", "write_report"]
