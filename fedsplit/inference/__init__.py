"""Edge-inference scheduling: choose each terminal's model and split the uplink and edge server.

The system model and defaults follow the case study of Deng et al. (2022), section III; see
:mod:`fedsplit.inference.system_model` and :mod:`fedsplit.inference.paper_scenario`.

Public API
----------
Problem, ModelSpec, TerminalSpec
    The instance (terminals, models, shared band ``B`` [Hz] and edge server ``F`` [cycles/s]).
solve(problem, solver="auto")
    Exact branch and bound, the fast Lagrangian solver with certified gap, or a baseline.
solve_exact, solve_fast, run_baseline, BASELINES, SOLVERS
allocate(problem, models)
    Optimal bandwidth/compute for fixed models (convex; KKT prices).
reference_allocation
    General-purpose SLSQP solve of the same allocation, for cross-checks.
pair_table, pair_reason, infeasible_pairs
    Which (terminal, model) pairs are feasible on their own and why not.
Schedule
    A result: models, allocation, totals, certified gap, reasons.
load_scenario, problem_from_dict, problem_to_dict, ScenarioError
    Scenario files and their validation.
generate_paper_scenario, PaperScenarioConfig, PaperModels
    Random scenarios of the paper's case study.
load_catalog, models_from_catalog, CatalogCosts
    Models from a training run's ``catalog.json``.
"""

from fedsplit.inference.allocation import Allocation, allocate
from fedsplit.inference.baselines import BASELINES, run_baseline
from fedsplit.inference.catalog import CatalogCosts, load_catalog, models_from_catalog
from fedsplit.inference.errors import ScenarioError
from fedsplit.inference.exact import solve_exact
from fedsplit.inference.feasibility import PairStatus, infeasible_pairs, pair_reason, pair_table
from fedsplit.inference.lagrangian import solve_fast
from fedsplit.inference.paper_scenario import PaperModels, PaperScenarioConfig, generate_paper_scenario
from fedsplit.inference.reference import reference_allocation
from fedsplit.inference.scenario import load_scenario, problem_from_dict, problem_to_dict
from fedsplit.inference.schedule import Schedule
from fedsplit.inference.solve import SOLVERS, solve
from fedsplit.inference.system_model import ModelSpec, Problem, TerminalSpec

__all__ = [
    "Allocation",
    "BASELINES",
    "CatalogCosts",
    "ModelSpec",
    "PairStatus",
    "PaperModels",
    "PaperScenarioConfig",
    "Problem",
    "SOLVERS",
    "ScenarioError",
    "Schedule",
    "TerminalSpec",
    "allocate",
    "generate_paper_scenario",
    "infeasible_pairs",
    "load_catalog",
    "load_scenario",
    "models_from_catalog",
    "pair_reason",
    "pair_table",
    "problem_from_dict",
    "problem_to_dict",
    "reference_allocation",
    "run_baseline",
    "solve",
    "solve_exact",
    "solve_fast",
]
