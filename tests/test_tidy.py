"""Rules over the source itself, so that a habit we grew out of cannot come back unseen.

The clock rule: business time comes from `ledger.clock` (injected), never from a direct read
of the wall clock, so the suite passes on any day and a replay is exact.

The layering rules: which package of ours may import which (the table in
docs/architecture.md), the one module that speaks PC/SC, and a fare core that does no I/O.

Public seams: no module reaches for another module's `_private` names; a piece two modules
share is given a public name in the module that owns it.

Short functions: none over `function_lines_max` lines but those listed, which may only shrink.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
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


# ------------------------------------------------------------------------------- layering

# What each package of ours may import besides itself. A dotted name allows that module or
# subpackage only: gateways may use the wire format and the fare core (pure, for re-rating),
# not the terminals' devices, journal or sync. Today gateways uses only the wire.
imports_allowed: dict[str, tuple[str, ...]] = {
    "card_reader": (),  # the card side stands alone
    "ledger": (),  # the books know nothing of cards, buses or banks
    "bus_terminals": ("card_reader",),
    # card_reader.tmac: the back office checks each card's own proof of its transactions
    # bus_terminals.packages: the fleet package format, signed by the back office
    "gateways": (
        "ledger",
        "bus_terminals.wire",
        "bus_terminals.packages",
        "bus_terminals.fare",
        "bus_terminals.qris",
        "card_reader.tmac",
    ),
    "settlement": ("ledger", "gateways"),
    "ksh": product_packages,  # the composition root wires everything together
}
# Modules held to less than their package.
module_imports_allowed: dict[str, tuple[str, ...]] = {
    # The message format both sides import: nothing of ours, so the back office can take it
    # without the terminals' code.
    "bus_terminals/wire.py": (),
    "bus_terminals/qris.py": (),  # the QR codec: the acquirer, the back office and the POS
    # The fleet package format, both sides' too: only the fare core, to check a feed.
    "bus_terminals/packages.py": ("bus_terminals.fare",),
}
# The fare core is pure: it imports only itself, and no module that does I/O or reads a clock.
fare_core = "bus_terminals/fare/"
fare_io_modules = frozenset(
    {"asyncio", "aiohttp", "asyncpg", "socket", "sqlite3", "subprocess", "urllib", "http"}
    | {"os", "time"}  # files and processes; the clock (decide takes the time as an argument)
)
# Reading the feed's files and the time-zone database: only `feed`, the core's one edge.
fare_file_modules = frozenset({"pathlib", "csv", "io", "zoneinfo", "importlib"})
fare_file_modules_allowed_in = ("bus_terminals/fare/feed.py",)
# The PC/SC driver is the one module that speaks to the reader library.
smartcard_allowed_in = ("card_reader/pcsc.py",)


def is_module_of_ours(dotted: str) -> bool:
    path = project_root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, dotted module) for every import anywhere in the module, lazy ones included;
    `from a import b` names `a.b` when b is a module of ours, else `a`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports are not used here"
            assert node.module is not None
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield node.lineno, submodule if is_module_of_ours(submodule) else node.module


def within(module: str, allowed: Iterable[str]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in allowed)


def imports_allowed_for(relative: str) -> tuple[str, ...]:
    """The modules of ours the module at `relative` may import, its own package's included."""
    if relative in module_imports_allowed:
        own = relative.removesuffix(".py").replace("/", ".")
        return (own, *module_imports_allowed[relative])
    if relative.startswith(fare_core):
        return ("bus_terminals.fare",)  # pure: the core imports only itself
    package = relative.split("/")[0]
    return (package, *imports_allowed[package])


def test_each_package_imports_only_the_packages_below_it() -> None:
    found = [
        f"{relative}:{line}: imports {module}"
        for relative, tree in product_sources()
        for line, module in imported_modules(tree)
        if module.split(".")[0] in product_packages
        and not within(module, imports_allowed_for(relative))
    ]
    assert not found, (
        "an import across the layers (see imports_allowed in tests/test_tidy.py and the table "
        "in docs/architecture.md):\n" + "\n".join(found)
    )


def test_only_the_pcsc_driver_imports_smartcard() -> None:
    found = [
        f"{relative}:{line}: imports {module}"
        for relative, tree in product_sources()
        for line, module in imported_modules(tree)
        if module.split(".")[0] == "smartcard" and relative not in smartcard_allowed_in
    ]
    assert not found, "go through card_reader.port / card_reader.pcsc:\n" + "\n".join(found)


def test_the_fare_core_does_no_io() -> None:
    found = []
    for relative, tree in product_sources():
        if not relative.startswith(fare_core):
            continue
        for line, module in imported_modules(tree):
            top = module.split(".")[0]
            if top in fare_io_modules:
                found.append(f"{relative}:{line}: imports {module} (I/O or a clock)")
            if top in fare_file_modules and relative not in fare_file_modules_allowed_in:
                found.append(
                    f"{relative}:{line}: imports {module} (files: only feed.py reads them)"
                )
    assert not found, "the fare core decides; its callers do the I/O:\n" + "\n".join(found)


# --------------------------------------------------------------------------- public seams


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_reach_ins(tree: ast.Module) -> Iterator[str]:
    """`from x import _name`, and `module._name` on a module of ours bound by an import."""
    modules: set[str] = set()  # names bound to a module of ours, as written in the source
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] not in product_packages:
                continue
            for alias in node.names:
                if is_private(alias.name):
                    yield f"{node.lineno}: from {node.module} import {alias.name}"
                elif is_module_of_ours(f"{node.module}.{alias.name}"):
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in product_packages:
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and is_private(node.attr)
            and ast.unparse(node.value) in modules
        ):
            yield f"{node.lineno}: {ast.unparse(node)}"


def test_no_module_reaches_for_another_modules_private_names() -> None:
    found = [
        f"{relative}:{where}"
        for relative, tree in product_sources()
        for where in private_reach_ins(tree)
    ]
    assert not found, (
        "make the seam public (a name without the underscore, with a docstring) in the module "
        "that owns it, or move the shared piece to a module of its own:\n" + "\n".join(found)
    )


# ------------------------------------------------------------------------ short functions

function_lines_max = 100
# Functions longer than that today (path:qualified name -> lines). The list only shrinks: one
# that grows fails, and one split to `function_lines_max` or fewer (or gone) must leave it.
long_functions_allowed: dict[str, int] = {
    "ksh/benchmarks/ingest.py:_ingest_into": 230,
    "ksh/benchmarks/ledger.py:_measure": 163,
    "ksh/benchmarks/settle.py:_measure": 101,
    "ksh/commands/demo.py:run_day": 220,
    "ksh/commands/demo.py:run_shops": 104,
    "ledger/booking.py:_decide_one": 141,
    "ledger/booking.py:_decide_plain": 117,
    "ledger/booking.py:decide_batch": 109,
}


def function_lengths(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(qualified name, lines) of every function and method, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = prefix + node.name
            if not isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                yield name, node.end_lineno - node.lineno + 1
            yield from function_lengths(node, name + ".")
        else:
            yield from function_lengths(node, prefix)


def long_functions() -> dict[str, int]:
    lengths: dict[str, int] = {}
    for relative, tree in product_sources():
        for name, lines in function_lengths(tree):
            key = f"{relative}:{name}"
            lengths[key] = max(lines, lengths.get(key, 0))
    return {key: lines for key, lines in lengths.items() if lines > function_lines_max}


def test_functions_fit_on_a_screen_or_two() -> None:
    lengths = long_functions()
    found = []
    for key, lines in sorted(lengths.items()):
        listed = long_functions_allowed.get(key)
        if listed is None:
            found.append(
                f"{key}: {lines} lines, over {function_lines_max}: split it (one function per "
                "section comment), don't add it to long_functions_allowed"
            )
        elif lines > listed:
            found.append(f"{key}: grew from {listed} to {lines} lines: split it")
    for key in sorted(long_functions_allowed):
        if key not in lengths:
            found.append(
                f"{key}: now {function_lines_max} lines or fewer, or gone (split or renamed): "
                "remove it from long_functions_allowed"
            )
    assert not found, "\n".join(found)


def test_the_seam_and_length_rules_see_what_they_forbid() -> None:
    """The checkers themselves: each form they must catch, caught; their allowed forms not."""
    reach_ins = """
import ledger.store
from ledger import store as books
from ledger.store import _book, create_transfers
from gateways.backoffice import Problem
books._book(); ledger.store._chunks(); Problem._private; create_transfers.__name__
"""
    found = list(private_reach_ins(ast.parse(reach_ins)))
    assert [line.split(": ", 1)[1] for line in found] == [
        "from ledger.store import _book",
        "books._book",
        "ledger.store._chunks",
    ]
    nested = "class A:\n    def f(self):\n        def g():\n" + "            pass\n" * 3
    assert dict(function_lengths(ast.parse(nested))) == {"A.f": 5, "A.f.g": 4}
    assert within("bus_terminals.wire", ("bus_terminals.wire",))
    assert not within("bus_terminals.wirex", ("bus_terminals.wire",))
    assert not within("bus_terminals", ("bus_terminals.wire",))
