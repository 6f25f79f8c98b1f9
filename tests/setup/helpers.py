"""Running `ksh` as a user would in the setup tests, and a snapshot of everything a setup
command may change, to show that a refused one changed nothing."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.wire import public_key_text
from ksh.cli import main

staff_password = "correct horse battery"
# The tables a setup command writes (or must leave alone when it refuses).
books_tables = (
    "operators",
    "merchants",
    "terminals",
    "cards",
    "settlement_parties",
    "ledger_accounts",
    "ledger_transfers",
    "staff_actions",
)


@dataclass(frozen=True)
class Ran:
    status: int
    out: str
    err: str

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]


class Ksh:
    """`ksh ARGS...` through `ksh.cli.main` with DATABASE_URL set, in a thread (each command
    runs its own event loop); its exit status and what it printed."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    async def __call__(self, *argv: str) -> Ran:
        self.capsys.readouterr()
        status = await asyncio.to_thread(main, list(argv))
        captured = self.capsys.readouterr()
        return Ran(status, captured.out, captured.err)

    async def ok(self, *argv: str) -> Ran:
        ran = await self(*argv)
        assert ran.status == 0, (argv, ran)
        return ran


def assert_user_error(ran: Ran, command: str, fragment: str) -> None:
    """Exit 2 and one line, `ksh COMMAND: error: ...` naming the fragment; no traceback."""
    assert ran.status == 2, ran
    assert ran.err.count("\n") == 1, ran.err
    assert ran.err.startswith(f"ksh {command}: error: "), ran.err
    assert fragment in ran.err, ran.err


async def books_snapshot(database_url: str) -> dict[str, Any]:
    """Row counts of the setup tables and every account's totals."""
    connection = await asyncpg.connect(database_url)
    try:
        counts = {
            table: await connection.fetchval(f"select count(*) from {table}")
            for table in books_tables
        }
        totals = await connection.fetch(
            "select id, debits_posted, credits_posted from ledger_accounts order by id"
        )
        states = await connection.fetch(
            "select 'terminal ' || terminal_id || ' ' || status as s from terminals "
            "union all select 'operator ' || operator_id || ' ' || status from operators "
            "union all select 'merchant ' || merchant_id || ' ' || status from merchants "
            "order by s"
        )
        return {**counts, "totals": [tuple(row) for row in totals], "states": states}
    finally:
        await connection.close()


def new_public_key() -> str:
    return public_key_text(Ed25519PrivateKey.generate().public_key())


async def add_staff(ksh: Ksh, monkeypatch: pytest.MonkeyPatch) -> None:
    """budi the supervisor, ani the clerk, citra the auditor: as `ksh settle staff` adds them."""
    monkeypatch.setenv("KSH_STAFF_PASSWORD", staff_password)
    for username, role in (("budi", "supervisor"), ("ani", "clerk"), ("citra", "auditor")):
        await ksh.ok("settle", "staff", username, "--role", role)
