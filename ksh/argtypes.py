"""Argument types the commands share, so a bad value is refused where it is read, in one line
that names the option (argparse adds `argument --port:`), before any work starts.

Each is a plain callable for `add_argument(type=...)`; the factories (`integer`, `fraction`)
state their limits, which the message repeats.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

port_max = 65_535


def integer(low: int, high: int | None = None, unit: str = "") -> Callable[[str], int]:
    """A whole number from `low` to `high` (no upper limit when None)."""
    suffix = f" {unit}" if unit else ""
    limits = (
        f"from {low:,} to {high:,}{suffix}" if high is not None else f"at least {low:,}{suffix}"
    )

    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value:,} is outside the limits: {limits}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its own messages
    return parse


def fraction(text: str) -> float:
    """A rate per event: at least 0 and below 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a rate from 0 to below 1")
    return value


def seconds(text: str) -> float:
    """A positive duration in seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError(f"{text} is not a duration above 0 and up to 86400 s")
    return value


port = integer(1, port_max)
rupiah = integer(0, 2_000_000_000, "rupiah")


def folder(text: str) -> Path:
    """A folder that exists or can be made: not an existing file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


def new_file(text: str) -> Path:
    """A file to write: not a folder, and in a folder that exists."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no folder {path.parent}")
    return path


def existing_file(text: str) -> Path:
    """A file to read: it exists and is a file."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def http_urls(text: str) -> str:
    """One URL, or several separated by commas (hosts of one service): each http(s)://HOST."""
    from urllib.parse import urlsplit

    for url in text.split(","):
        parts = urlsplit(url.strip())
        try:
            parts.port  # noqa: B018 (a port out of range or not a number raises here)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{url!r}: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise argparse.ArgumentTypeError(f"{url!r} is not an http:// or https:// URL")
    return text


def terminal_id(text: str) -> str:
    """A terminal id as the back office registers it (and safe as the name of its folder)."""
    from bus_terminals.wire import terminal_id_check

    problem = terminal_id_check(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r} {problem}")
    return text


def reference(text: str) -> str:
    """An operator, merchant, top-up or receipt id as the back office keeps it: printable, 1 to
    64 characters (`bus_terminals.wire.reference_check`)."""
    from bus_terminals.wire import reference_check

    problem = reference_check(text)
    if problem:
        raise argparse.ArgumentTypeError(f"{text!r}: {problem}")
    return text


def secret(variable: str, prompt: str) -> str:
    """A password or passphrase: from the environment variable, else typed at the terminal;
    with neither (a script, a pipe) a one-line error naming the variable, not a hang or an
    end-of-file traceback."""
    import getpass
    import os
    import sys

    from ksh.cli import UserError

    value = os.environ.get(variable)
    if value:
        return value
    if not sys.stdin.isatty():
        raise UserError(f"no {prompt}: set {variable} or run in a terminal")
    try:
        return getpass.getpass(f"{prompt}: ")
    except EOFError:
        raise UserError(f"no {prompt}: set {variable} or type it at the prompt") from None
