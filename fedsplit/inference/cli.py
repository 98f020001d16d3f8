"""``fedsplit schedule`` and ``fedsplit scenario``: the scheduler's sub-commands.

Exit codes: 0 on success (an infeasible scenario is a successful answer: ``feasible: false`` with
reasons), 2 on bad input (one line on stderr naming the field, the bad value and what is allowed),
3 when ``--solver exact`` gives up on an instance too large for branch and bound.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace


from fedsplit.cli_errors import print_error
from fedsplit.cli_types import positive_seconds, seed_type
from fedsplit.inference.catalog import CatalogCosts, load_catalog
from fedsplit.inference.errors import ScenarioError
from fedsplit.inference.exact import SearchLimitReached
from fedsplit.inference.feasibility import infeasible_pairs
from fedsplit.inference.paper_scenario import PaperScenarioConfig, generate_paper_scenario
from fedsplit.inference.scenario import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, load_scenario, number_field, problem_to_dict
from fedsplit.inference.solve import AUTO_EXACT_MAX_VECTORS, EXACT_TIME_LIMIT_S, SOLVERS, solve
from fedsplit.output_paths import output_file

EXIT_BAD_INPUT = 2
EXIT_SEARCH_LIMIT = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``schedule`` and ``scenario`` sub-commands to the ``fedsplit`` parser."""
    schedule = subparsers.add_parser(
        "schedule",
        help="choose each terminal's model and split the uplink band and edge server",
        description="Jointly choose models and allocate bandwidth and edge compute for the terminals "
        "of a scenario file, minimising total latency under deadlines, energy budgets and the "
        "accuracy target.",
    )
    schedule.add_argument("--scenario", required=True, metavar="FILE.json", help="scenario file")
    schedule.add_argument(
        "--solver", default="auto", choices=SOLVERS,
        help="exact (branch and bound), fast (Lagrangian, certified gap), auto (exact when small), "
        "or a baseline (default: auto)",
    )
    schedule.add_argument("--json", action="store_true", help="print the result as JSON")
    schedule.add_argument("--seed", type=seed_type, default=0, help="seed of the random baseline")
    schedule.add_argument("--time-limit", type=positive_seconds, default=EXACT_TIME_LIMIT_S, metavar="S",
                          help=f"wall-clock limit of the exact search in seconds (default {EXACT_TIME_LIMIT_S:g}); "
                          "past it the command exits 3")
    schedule.set_defaults(func=run_schedule)

    scenario = subparsers.add_parser(
        "scenario",
        help="generate a scenario file following the paper's case study",
        description="Draw terminals uniformly in the cell around the base station (Deng et al. 2022, "
        "section III) and print the scenario JSON.",
    )
    scenario.add_argument("--terminals", type=int, required=True, help="number of terminals N")
    scenario.add_argument("--seed", type=seed_type, default=0, help="seed of positions, fading, CPU speeds")
    scenario.add_argument("--catalog", metavar="catalog.json", help="take the models from a training catalog")
    scenario.add_argument("--accuracy-target", type=float, help="chi, in [0, 1] (default 0.67)")
    scenario.add_argument("--bandwidth-hz", type=float, help="total uplink band B [Hz] (default 20e6)")
    scenario.add_argument("--edge-cycles-per-s", type=float, help="edge server F [cycles/s] (default 14e9)")
    scenario.add_argument("--deadline-s", type=float, help="per-terminal deadline [s] (default 0.5)")
    scenario.add_argument("--energy-budget-j", type=float, help="per-terminal energy budget [J] (default 0.05)")
    scenario.add_argument("--local-cycles-per-bit", type=float,
                          help="preprocessing cycles per input bit (default 5)")
    scenario.add_argument("--edge-cycles-per-bit", type=float,
                          help="edge cycles per input bit of the paper's models (default 100)")
    scenario.add_argument("--edge-cycles-per-flop", type=float,
                          help="edge cycles per catalog FLOP (default 1)")
    scenario.add_argument("--out", metavar="FILE.json", type=output_file, help="write to a file instead of stdout")
    scenario.set_defaults(func=run_scenario)


def _fail(command: str, error: ScenarioError) -> int:
    print_error(command, str(error))
    return EXIT_BAD_INPUT


def run_schedule(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit schedule``."""
    try:
        problem = load_scenario(args.scenario)
    except ScenarioError as error:
        return _fail("schedule", error)
    vectors = problem.n_models ** problem.n_terminals
    if args.solver == "exact" and vectors > AUTO_EXACT_MAX_VECTORS:
        print(f"fedsplit schedule: exact search over up to {problem.n_models}^{problem.n_terminals} model choices; "
              f"it gives up after {args.time_limit:g} s (--time-limit). --solver fast answers in "
              "milliseconds with a certified gap", file=sys.stderr, flush=True)
    try:
        schedule = solve(problem, args.solver, seed=args.seed, time_limit_s=args.time_limit)
    except SearchLimitReached as error:
        print_error("schedule", f"--solver exact: {error}; use --solver fast for this size (or a larger --time-limit)")
        return EXIT_SEARCH_LIMIT
    result = schedule.to_dict(problem)
    result["infeasible_pairs"] = [
        {"terminal": i, "model": problem.model_names[m], "reason": reason}
        for i, m, reason in infeasible_pairs(problem)
    ]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(_as_text(result))
    return 0


def _as_text(result: dict) -> str:
    def fmt(x: float | None, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    lines = [
        f"solver={result['solver']} feasible={str(result['feasible']).lower()} "
        f"total_latency_s={fmt(result['total_latency_s'], '.6g')} "
        f"total_energy_j={fmt(result['total_energy_j'], '.6g')} "
        f"accuracy={fmt(result['accuracy'], '.4f')} target={result['accuracy_target']:.4f} "
        f"gap={fmt(result['gap'], '.3g')} solve_s={result['solve_s']:.3g}"
    ]
    lines += [f"reason: {r}" for r in result["reasons"]]
    if result["assignments"]:
        lines.append(f"{'terminal':>8}  {'model':<20} {'bandwidth_hz':>13} {'edge_cycles/s':>13} "
                     f"{'latency_s':>10} {'energy_j':>10}")
        for a in result["assignments"]:
            lines.append(
                f"{a['terminal']:>8}  {a['model']:<20} {fmt(a['bandwidth_hz'], '13.6g')} "
                f"{fmt(a['edge_cycles_per_s'], '13.6g')} {fmt(a['latency_s'], '10.4g')} "
                f"{fmt(a['energy_j'], '10.4g')}"
            )
    for p in result.get("infeasible_pairs", []):
        lines.append(f"infeasible pair: {p['reason']}")
    return "\n".join(lines)


def run_scenario(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit scenario``."""
    try:
        config, models = _scenario_config(args)
        if args.terminals < 1:
            raise ScenarioError("--terminals", args.terminals, "an integer >= 1")
        problem = generate_paper_scenario(args.terminals, args.seed, config, models)
    except ScenarioError as error:
        return _fail("scenario", error)
    text = json.dumps(problem_to_dict(problem), indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    else:
        print(text)
    return 0


def _scenario_config(args: argparse.Namespace):
    config = PaperScenarioConfig()
    overrides = {
        "accuracy_target": ("--accuracy-target", UNIT_INTERVAL),
        "bandwidth_hz": ("--bandwidth-hz", POSITIVE),
        "edge_cycles_per_s": ("--edge-cycles-per-s", POSITIVE),
        "deadline_s": ("--deadline-s", POSITIVE),
        "energy_budget_j": ("--energy-budget-j", POSITIVE),
    }
    changes = {}
    for field, (option, check) in overrides.items():
        value = getattr(args, field)
        if value is not None:
            changes[field] = number_field({"v": value}, "v", option, check)
    config = replace(config, **changes)
    model_changes = {}
    for field, option, check in (
        ("local_cycles_per_bit", "--local-cycles-per-bit", NON_NEGATIVE),
        ("edge_cycles_per_bit", "--edge-cycles-per-bit", POSITIVE),
    ):
        value = getattr(args, field)
        if value is not None:
            model_changes[field] = number_field({"v": value}, "v", option, check)
    if model_changes:
        config = config.with_models(**model_changes)
    models = None
    if args.catalog:
        costs = CatalogCosts(
            local_cycles_per_bit=args.local_cycles_per_bit if args.local_cycles_per_bit is not None else 5.0,
            edge_cycles_per_flop=args.edge_cycles_per_flop if args.edge_cycles_per_flop is not None else 1.0,
        )
        models = load_catalog(args.catalog, costs)
    elif args.edge_cycles_per_flop is not None:
        raise ScenarioError("--edge-cycles-per-flop", args.edge_cycles_per_flop, "to be used with --catalog")
    return config, models


def main(argv: list[str] | None = None) -> int:
    """Run the two sub-commands standalone (``python -m fedsplit.inference.cli``)."""
    parser = argparse.ArgumentParser(prog="fedsplit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["register", "run_schedule", "run_scenario", "main"]
