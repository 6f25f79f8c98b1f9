"""`ksh bench NAME --json`: the benchmarks, each printing one JSON object.

Each benchmark lives in `ksh.benchmarks.<name>` and exposes `add_arguments(parser)` and
`run(arguments) -> dict`. Figures are measured side by side in one run, never asserted in tests.
"""

from __future__ import annotations

import argparse
import importlib
import json
from typing import Any

from ksh.cli import UserError

benchmark_names: tuple[str, ...] = ("tap", "fare", "ledger", "ingest", "settle")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench", help="run a benchmark and print its figures as JSON", description=__doc__
    )
    names = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in benchmark_names:
        module = importlib.import_module(f"ksh.benchmarks.{name}")
        sub = names.add_parser(name, help=(module.__doc__ or "").strip().splitlines()[0])
        sub.add_argument(
            "--json", action="store_true", help="compact one-line JSON (default: indented)"
        )
        module.add_arguments(sub)
        bound_sizes(sub)
        sub.set_defaults(handler=run_benchmark, benchmark_module=module)


def bound_sizes(parser: argparse.ArgumentParser) -> None:
    """Every size of a benchmark (an integer option but the seed) from 1 to ten times its
    default (at least 1,000): a typo of a few zeros is refused, not run for hours."""
    from ksh import argtypes

    for action in parser._actions:
        if action.type is int and action.dest != "seed" and isinstance(action.default, int):
            limit = max(10 * action.default, 1_000)
            action.type = argtypes.integer(1, limit)
            action.help = f"{action.help or action.dest.replace('_', ' ')}, 1 to {limit:,}"


def run_benchmark(arguments: argparse.Namespace) -> int:
    try:
        figures = arguments.benchmark_module.run(arguments)
    except (OSError, ValueError) as error:
        raise UserError(str(error)) from error
    print(json.dumps(figures, indent=None if arguments.json else 2, sort_keys=True))
    return 0
