"""``fedsplit serve-sim``: schedule a scenario over a catalog, then serve each terminal's model.

Exit codes: 0 on success (the report says whether the schedule was feasible), 2 on bad input
(one line on stderr naming the field, the value and what is allowed), 3 when ``--solver exact``
gives up on an instance too large for it.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

from fedsplit.cli_errors import print_error
from fedsplit.inference.errors import ScenarioError
from fedsplit.output_paths import output_file

EXIT_BAD_INPUT = 2
EXIT_SEARCH_LIMIT = 3


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve-sim`` sub-command to the ``fedsplit`` parser."""
    from fedsplit.inference.solve import SOLVERS

    p = subparsers.add_parser(
        "serve-sim",
        help="schedule a scenario, then run each terminal's chosen model on held-out inputs",
        description="Schedule the scenario (as fedsplit schedule does), load every chosen model from its "
        "catalog run folder, classify the held-out test set resized to each model's resolution, and report "
        "realised against catalog accuracy and the latency the allocation promised against the one modelled "
        "from the served models.",
    )
    p.add_argument("--catalog", required=True, metavar="catalog.json", help="the catalog the scenario's models come from")
    p.add_argument("--scenario", required=True, metavar="FILE.json", help="scenario file (fedsplit scenario --catalog)")
    p.add_argument("--solver", default="auto", choices=SOLVERS, help="scheduler (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline and of drawn requests")
    p.add_argument("--requests", type=int, default=0,
                   help="held-out images per terminal, drawn with replacement (default 0: every one)")
    p.add_argument("--local-cycles-per-bit", type=float, default=5.0,
                   help="the constant the scenario was generated with (default 5)")
    p.add_argument("--edge-cycles-per-flop", type=float, default=1.0,
                   help="the constant the scenario was generated with (default 1)")
    p.add_argument("--latency-repeats", type=int, default=20, help="timed batch-1 CPU runs per served model (default 20)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", metavar="FILE.json", type=output_file, help="also write the JSON report to a file")
    p.set_defaults(func=run_serve_sim)


def terminal_devices(scenario_json: object) -> list[str] | None:
    """The optional ``device`` label of every terminal of a scenario's JSON value (None if any lacks one)."""
    terminals = scenario_json.get("terminals") if isinstance(scenario_json, dict) else None
    if not isinstance(terminals, list) or not all(isinstance(t, dict) and isinstance(t.get("device"), str) for t in terminals):
        return None
    return [t["device"] for t in terminals]


def run_serve_sim(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit serve-sim``."""
    from fedsplit.inference.catalog import CatalogCosts, read_catalog
    from fedsplit.inference.exact import SearchLimitReached
    from fedsplit.inference.scenario import (
        NON_NEGATIVE,
        POSITIVE,
        number_field,
        problem_from_dict,
        read_json_file,
    )
    from fedsplit.serving.serve_sim import serve
    from fedsplit.inference.solve import solve

    try:
        costs = CatalogCosts(
            number_field({"v": args.local_cycles_per_bit}, "v", "--local-cycles-per-bit", NON_NEGATIVE),
            number_field({"v": args.edge_cycles_per_flop}, "v", "--edge-cycles-per-flop", POSITIVE),
        )
        if args.latency_repeats < 1:
            raise ScenarioError("--latency-repeats", args.latency_repeats, "an integer >= 1")
        catalog = read_catalog(args.catalog)
        raw = read_json_file(args.scenario, "--scenario")
        problem = problem_from_dict(raw)
        try:
            schedule = solve(problem, args.solver, seed=args.seed)
        except SearchLimitReached as error:
            print_error("serve-sim", f"--solver exact: {error}; use --solver fast for this size")
            return EXIT_SEARCH_LIMIT
        report = serve(catalog, problem, schedule, costs=costs, devices=terminal_devices(raw),
                       requests=args.requests, seed=args.seed, latency_repeats=args.latency_repeats)
    except ScenarioError as error:
        print_error("serve-sim", str(error))
        return EXIT_BAD_INPUT
    result = report.to_dict()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
    print(json.dumps(result, indent=2) if args.json else report_text(result))
    return 0


def report_text(result: dict) -> str:
    """The report as text: a table of terminals, a line per model choice by device, key=value lines."""
    lines = [(f"{'terminal':>8} {'device':<16} {'model':<24} {'requests':>8} {'catalog_acc':>11} {'realised_acc':>12} "
              f"{'promised_ms':>11} {'modelled_ms':>11} {'cpu_ms':>7}")]
    for a in result["assignments"]:
        lines.append(
            f"{a['terminal']:>8} {a['device'] or '-':<16} {a['model']:<24} {a['requests']:>8} {a['catalog_accuracy']:>11.4f} "
            f"{a['realised_accuracy']:>12.4f} {1e3 * a['promised_latency_s']:>11.4g} {1e3 * a['modelled_latency_s']:>11.4g} "
            f"{1e3 * a['cpu_latency_s']:>7.3f}"
        )
    by_device: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for a in result["assignments"]:
        by_device[a["device"] or "-"][a["model"]] += 1
    for device, models in by_device.items():
        lines.append(f"device={device} " + " ".join(f"{m}={k}" for m, k in sorted(models.items())))
    lines.append(
        f"solver={result['solver']} feasible={str(result['feasible']).lower()} terminals={result['terminals']} "
        f"accuracy_target={result['accuracy_target']:.4f}"
    )
    lines.append(
        f"catalog_mean_accuracy={result['catalog_mean_accuracy']:.4f} realised_mean_accuracy={result['realised_mean_accuracy']:.4f} "
        f"accuracy_gap_pp={result['accuracy_gap_pp']:.3f} accuracy_stderr_pp={result['accuracy_stderr_pp']:.3f}"
    )
    lines.append(
        f"promised_total_latency_s={result['promised_total_latency_s']:.6g} modelled_total_latency_s={result['modelled_total_latency_s']:.6g} "
        f"max_latency_rel_diff={result['max_latency_rel_diff']:.3g}"
    )
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


__all__ = ["register", "report_text", "run_serve_sim", "terminal_devices"]
