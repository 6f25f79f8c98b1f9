"""Entry point of the `ksh` command.

Each subcommand lives in `ksh.commands.<name>` and exposes `register(subparsers)`, which adds
its parser and sets `handler` (a function taking the parsed arguments and returning an exit
code). Handlers import domain code lazily, so `ksh --help` stays fast.

Errors a user can cause are raised as `UserError`: one line on stderr, exit status 2, no
traceback.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
import typing
from collections.abc import Sequence
from typing import Any

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
    "counter",
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
exit_broken_pipe = 141  # what a shell reports for a process ended by SIGPIPE (128 + 13)


class UserError(Exception):
    """A mistake the user can fix (bad argument, missing file, unreachable reader)."""


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Every option's help says its default (`none` when it has no value), unless it already
    does, is required, or is a flag; never the value of a secret's (a token taken from the
    environment would be printed)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or action.required
            or "default" in text.lower()
            or isinstance(default, bool)
            or default is argparse.SUPPRESS
            or action.nargs == 0
        ):
            return action.help
        if default is None or default in ([], ""):
            said = "none"
        elif any(word in action.dest for word in ("token", "secret", "password", "passphrase")):
            said = "from the environment"
        else:
            said = "%(default)s"
        return f"{text} (default: {said})" if text else f"default: {said}"

    def _format_action(self, action: argparse.Action) -> str:
        if not action.help and action.option_strings and action.nargs != 0:
            action = copy.copy(action)  # an option given no help still says its default
            action.help = self._get_help_string(action) or None
        return super()._format_action(action)


class RawDescriptionDefaultsHelpFormatter(
    argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter
):
    pass


class Parser(argparse.ArgumentParser):
    """`ksh`'s parsers (each subcommand's too: add_subparsers makes them of this class): help
    with defaults, and a usage mistake in one line, `ksh COMMAND: error: ...`, exit 2."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        formatter = kwargs.get("formatter_class", argparse.HelpFormatter)
        if formatter is argparse.RawDescriptionHelpFormatter:
            kwargs["formatter_class"] = RawDescriptionDefaultsHelpFormatter
        elif formatter is argparse.HelpFormatter:
            kwargs["formatter_class"] = DefaultsHelpFormatter
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> typing.NoReturn:
        self.exit(exit_usage, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; or, when `argv` starts with a command's name, a parser of that
    command alone (the others' modules are not imported: a mistake is reported sooner)."""
    parser = Parser(
        prog="ksh",
        description="Kartu Semarang Hebat: card, fares, ledger, terminals, banks and settlement.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    first = next(iter(argv or ()), "").replace("-", "_")
    for name in (first,) if first in command_modules else command_modules:
        importlib.import_module(f"ksh.commands.{name}").register(subparsers)
    return parser


def innermost(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> Any:
    """The parser of the (sub)command `arguments` were parsed for."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = getattr(arguments, action.dest, None)
            if chosen in action.choices:
                return innermost(action.choices[chosen], arguments)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`ksh ... | head -1`): stop quietly, as other Unix tools do.
        # Python's own flush of stdout at exit would fail again: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exit_broken_pipe


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    try:
        arguments, extras = parser.parse_known_args(argv)
        if extras:  # named by the command they were given to, not by `ksh` itself
            innermost(parser, arguments).error(f"unrecognized arguments: {' '.join(extras)}")
    except SystemExit as stop:  # a usage error (its line is printed): a status, as below
        if not stop.code:
            raise  # --help: printed, done
        return int(stop.code)
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
