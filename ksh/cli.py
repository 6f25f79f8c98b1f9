"""Entry point of the `ksh` command.

Each subcommand lives in `ksh.commands.<name>` and exposes `register(subparsers)`, which adds
its parser and sets `handler` (a function taking the parsed arguments and returning an exit
code). Handlers import domain code lazily, so `ksh --help` stays fast.

Errors a user can cause are raised as `UserError`: one line on stderr, exit status 2, no
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Order is the order shown by `ksh --help`. A module listed here must exist.
command_modules: tuple[str, ...] = (
    "card",
    "fare",
    "ledger",
    "operator",
    "merchant",
    "terminal",
    "fleet",
    "party",
    "cards",
    "complaint",
    "deny",
    "validator",
    "pos",
    "serve",
    "partner",
    "bank_sim",
    "simulate",
    "settle",
    "reconcile",
    "quarantine",
    "demo",
    "bench",
    "db",
)

exit_usage = 2


class UserError(Exception):
    """A mistake the user can fix (bad argument, missing file, unreachable reader)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ksh",
        description="Kartu Semarang Hebat: card, fares, ledger, terminals, banks and settlement.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_modules:
        importlib.import_module(f"ksh.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    handler = getattr(arguments, "handler", None)
    if handler is None:
        parser.print_help()
        return exit_usage
    try:
        return int(handler(arguments) or 0)
    except UserError as error:
        print(f"ksh {arguments.command}: error: {error}", file=sys.stderr)
        return exit_usage
    except KeyboardInterrupt:
        print(f"ksh {arguments.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
