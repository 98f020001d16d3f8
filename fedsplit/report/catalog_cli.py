"""``fedsplit catalog build`` and ``fedsplit catalog show``: measure members, print a catalog.

Exit codes: 0 on success, 2 on bad input (one line on stderr naming the run folder, or the
catalog entry and field that the schema refuses).
"""

from __future__ import annotations

import argparse

from fedsplit.cli_errors import print_error
from fedsplit.inference.errors import ScenarioError
from fedsplit.output_paths import output_file

EXIT_BAD_INPUT = 2


def cmd_build(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit catalog build``."""
    from fedsplit.report.catalog import write_catalog

    try:
        catalog = write_catalog(args.runs, args.out, args.bits_per_value, args.latency_repeats)
    except (FileNotFoundError, ValueError) as exc:
        print_error("catalog build", str(exc))
        return EXIT_BAD_INPUT
    for m in catalog["models"]:
        print(f"model={m['name']} kind={m['kind']} accuracy={m['accuracy']:.4f} flops={m['flops']} "
              f"input_bits={m['input_bits']} params={m['params']} cpu_latency_ms={1e3 * m['cpu_latency_s']:.3f}")
    print(f"wrote {args.out}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """Handler of ``fedsplit catalog show``."""
    from fedsplit.inference.catalog import read_catalog
    from fedsplit.report.catalog import catalog_tables
    from fedsplit.report.console import table_console

    try:
        catalog = read_catalog(args.catalog)
    except ScenarioError as exc:
        print_error("catalog show", str(exc))
        return EXIT_BAD_INPUT
    console = table_console(args.width)
    title = f"{args.catalog}: {len(catalog['models'])} models ({catalog.get('dataset', '?')}; CPU: {catalog.get('host', '?')})"
    for table in catalog_tables(catalog, title):
        console.print(table)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``catalog build`` and ``catalog show`` to the ``fedsplit`` command."""
    catalog = subparsers.add_parser(
        "catalog",
        help="measure trained models into catalog.json, or print one",
        description="The model catalog handed to the inference scheduler (schema: "
        "fedsplit/inference/catalog.schema.json).",
    )
    actions = catalog.add_subparsers(dest="catalog_command", metavar="ACTION")
    actions.required = True
    build = actions.add_parser(
        "build",
        help="measure member folders into catalog.json",
        description="Measure finished run folders and derived members (accuracy on the held-out test set "
        "at each model's resolution, inference FLOPs, input bits, parameters, median batch-1 CPU latency "
        "here, modelled latency and energy on every device profile) and write catalog.json.",
    )
    build.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of fedsplit simulate, or derived members")
    build.add_argument("--out", default="catalog.json", type=output_file, help="output file (default: catalog.json)")
    build.add_argument("--bits-per-value", type=int, default=8, help="bits per input value a terminal uploads (default 8)")
    build.add_argument("--latency-repeats", type=int, default=50,
                       help="timed batch-1 CPU runs per model; the median is kept (default 50)")
    build.set_defaults(func=cmd_build)
    show = actions.add_parser("show", help="print a catalog as tables",
                              description="Validate a catalog against the shipped schema and print it.")
    show.add_argument("catalog", metavar="FILE", help="catalog.json")
    show.add_argument("--width", type=int, default=0, help="console width in characters (default: the terminal's; off a terminal, as wide as the tables)")
    show.set_defaults(func=cmd_show)


__all__ = ["cmd_build", "cmd_show", "register"]
