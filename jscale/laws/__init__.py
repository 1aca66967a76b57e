"""Scaling-law fitting: Kaplan's power laws, Chinchilla's parametric fit, IsoFLOP and envelope approaches, the
compute frontier, critical batch size, and percentile-bootstrap intervals for every fitted and derived number.

All fits run in float64 NumPy/SciPy. Every fit returns a `FittedLaw`: its parameters, 95% bootstrap intervals,
residuals, the conventions it was fitted in (N: "non_embedding" or "all"; C: "6ND" or "exact"), `predict(...)` and a
JSON round trip. Bad input raises `LawFitError` naming the column or value; a fit in which no start converges raises
rather than returning a garbage optimum.

Formulas (see Kaplan et al. 2020 eq. 1.1-1.6, Hoffmann et al. 2022 eq. 2-4, Besiroglu et al. 2024):
- power:      L = (X_c / X)^alpha                      (X = N, D or C)
- power+E:    L = E + (X_c / X)^alpha
- kaplan-nd:  L = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D
- kaplan-ns:  L = (N_c / N)^alpha_N + (S_c / S_min)^alpha_S
- chinchilla: L = E + A / N^alpha + B / D^beta, fitted by Huber (delta 1e-3) on log L against
              LSE(log A - alpha log N, log B - beta log D, log E), L-BFGS from a 4,500-point grid, best kept.

One module per family: `fitted` (FittedLaw, the formulas, input checks, bootstrap), `kaplan` (power laws, L(N, D),
L(N, S_min), critical batch), `chinchilla` (Approach 3), `compute` (IsoFLOP, envelope, frontier, extrapolation).
Every name below is importable from `jscale.laws` itself.
"""

from jscale.laws import chinchilla, compute, fitted, kaplan  # noqa: F401 (the submodules, for patching in tests)
from jscale.laws.fitted import (FittedLaw, LawFitError, MIN_BOOTSTRAP_UNITS, PF_DAY, PLAUSIBLE_MAX,
                                PLAUSIBLE_MAX_DEFAULT, attach_bootstrap, bootstrap, ols_slope_interval)  # noqa: F401
# The formulas and the objective, private but reached as laws._NAME by the tests that plant a known law.
from jscale.laws.fitted import _chinchilla, _column, _kaplan_nd, _kaplan_ns, _power, _power_e  # noqa: F401
from jscale.laws.kaplan import (c_min, critical_batch_rows, fit_critical_batch, fit_kaplan_nd, fit_kaplan_ns,
                                fit_power, s_min)  # noqa: F401
from jscale.laws.chinchilla import (CHINCHILLA_GRID, chinchilla_derived, chinchilla_grid, chinchilla_objective,
                                    fit_chinchilla)  # noqa: F401
from jscale.laws.chinchilla import _minimize_batch, _objective_and_grad  # noqa: F401
from jscale.laws.compute import (BUDGET_TOLERANCE, ISOFLOP_WINDOW, MIN_FRONTIER_RUNS, extrapolation_check,
                                 fit_envelope, fit_frontier, fit_isoflop, group_budgets, isoflop_minima,
                                 lower_envelope)  # noqa: F401

__all__ = [
    'PF_DAY', 'LawFitError', 'PLAUSIBLE_MAX', 'PLAUSIBLE_MAX_DEFAULT', 'FittedLaw', 'bootstrap',
    'MIN_BOOTSTRAP_UNITS', 'attach_bootstrap', 'fit_power', 'fit_kaplan_nd', 's_min', 'c_min', 'fit_kaplan_ns',
    'critical_batch_rows', 'fit_critical_batch', 'CHINCHILLA_GRID', 'chinchilla_grid', 'chinchilla_objective',
    'chinchilla_derived', 'fit_chinchilla', 'ISOFLOP_WINDOW', 'isoflop_minima', 'fit_isoflop', 'lower_envelope',
    'MIN_FRONTIER_RUNS', 'fit_frontier', 'fit_envelope', 'extrapolation_check', 'group_budgets', 'BUDGET_TOLERANCE'
]
