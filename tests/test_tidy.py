"""Rules over the source itself, so that a habit we grew out of cannot come back unseen.

The clock rule: business time comes from `ledger.clock` (injected), never from a direct read
of the wall clock, so the suite passes on any day and a replay is exact.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

project_root = Path(__file__).resolve().parent.parent
product_packages = ("card_reader", "bus_terminals", "ledger", "gateways", "settlement", "ksh")

# Where a direct read is the point, and why.
wall_clock_allowed = {
    "ledger/clock.py": "the one clock itself",
}
# SQL's own clock, allowed only where the ledger keeps its record time (a caller that passes no
# `now` books at the database's clock; booking times never go back) and for the schema's own
# bookkeeping of when a migration ran.
sql_clock_allowed = {
    "ledger/store.py": "the ledger's default booking time when no `now` is given",
    "ledger/pipeline.py": "reads the database's clock with the ledger's head",
    "ledger/database.py": "when each migration was applied (record time, never read back)",
}
# Durations for business (lockouts, token lifetimes) come from `Clock.monotonic()` so that
# tests can advance them; I/O deadlines on a reader or a socket may use the process's own.
monotonic_forbidden_in = ("gateways", "settlement")

wall_clock_calls = {
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("datetime", "today"),
    ("date", "today"),
    ("time", "time"),
    ("time", "time_ns"),
    ("time", "localtime"),
    ("time", "gmtime"),
}
sql_clock = re.compile(
    r"\b(now\(\)|clock_timestamp\(\)|statement_timestamp\(\)|transaction_timestamp\(\)"
    r"|current_timestamp|current_date|localtimestamp)",
    re.IGNORECASE,
)


def product_sources() -> Iterator[tuple[str, ast.Module]]:
    for package in product_packages:
        for path in sorted((project_root / package).rglob("*.py")):
            relative = path.relative_to(project_root).as_posix()
            yield relative, ast.parse(path.read_text(encoding="utf-8"), relative)


def called_name(node: ast.Call) -> tuple[str, str] | None:
    """('datetime', 'now') for datetime.now(), dt.datetime.now() and the like."""
    function = node.func
    if not isinstance(function, ast.Attribute):
        return None
    owner = function.value
    if isinstance(owner, ast.Attribute):
        return owner.attr, function.attr
    if isinstance(owner, ast.Name):
        return owner.id, function.attr
    return None


def test_business_time_comes_from_the_injected_clock() -> None:
    found = []
    for relative, tree in product_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = called_name(node)
                if name in wall_clock_calls and relative not in wall_clock_allowed:
                    found.append(f"{relative}:{node.lineno}: {'.'.join(name)}()")
                if (
                    name == ("time", "monotonic")
                    and relative.startswith(monotonic_forbidden_in)
                    and relative not in wall_clock_allowed
                ):
                    found.append(
                        f"{relative}:{node.lineno}: time.monotonic() (use Clock.monotonic)"
                    )
            elif (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and sql_clock.search(node.value)
                and relative not in sql_clock_allowed
            ):
                found.append(f"{relative}:{node.lineno}: SQL clock in {node.value[:60]!r}")
    assert not found, "read the clock through ledger.clock instead:\n" + "\n".join(found)


def test_the_rule_sees_what_it_forbids() -> None:
    """The checker itself: each form it must catch, caught."""
    source = """
import datetime as dt, time
from datetime import datetime, date
a = dt.datetime.now(dt.UTC); b = datetime.now(); c = date.today(); d = time.time()
e = dt.date.today(); f = time.time_ns(); g = "select now()"
"""
    tree = ast.parse(source)
    calls = [called_name(n) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert sum(name in wall_clock_calls for name in calls) == 6
    assert sql_clock.search("update x set at = now() where")
    assert sql_clock.search("default CURRENT_TIMESTAMP")
    assert not sql_clock.search("select known() from nowhere")
