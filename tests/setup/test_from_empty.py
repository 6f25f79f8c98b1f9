"""From an empty database to a closed day with nothing but `ksh`, each command its own process
as an operator would type it: staff, an operator and a merchant, a validator and a POS with the
keys their devices made, where each is paid, cards issued (a deck of software cards booked as
it is made, and a card sold at a desk), and end of day for a day with no taps."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from ledger.clock import system_clock
from ledger.database import database_url_for

command_timeout_s = 120
why = ["--reason", "opening the network"]


@pytest.fixture
def empty_database_url(postgres_server_url: str) -> Iterator[str]:
    """A database with nothing in it, not even the schema."""
    name = f"ksh_empty_{uuid.uuid4().hex[:12]}"

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(postgres_server_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(admin(f'create database "{name}"'))
    try:
        yield database_url_for(postgres_server_url, name)
    finally:
        asyncio.run(admin(f'drop database if exists "{name}" with (force)'))


class Shell:
    def __init__(self, database_url: str, folder: Path) -> None:
        self.folder = folder
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "KSH_STAFF_PASSWORD": "correct horse battery",
            "KSH_KEYSTORE_PASSPHRASE": "issuer passphrase",
        }

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ksh", *argv],
            env=self.env,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=command_timeout_s,
            check=False,
        )

    def ok(self, *argv: str) -> str:
        done = self.run(*argv)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done.stdout


def test_from_an_empty_database_to_a_closed_day(empty_database_url: str, tmp_path: Path) -> None:
    ksh = Shell(empty_database_url, tmp_path)
    ksh.ok("settle", "staff", "budi", "--role", "supervisor")
    ksh.ok("settle", "staff", "ani", "--role", "clerk")

    ksh.ok("operator", "add", "--id", "trans-semarang", "--name", "BLU UPTD Trans Semarang",
           "--as", "budi", *why)  # fmt: skip
    ksh.ok("merchant", "add", "--id", "WARUNG-01", "--name", "Warung Bu Sri",
           "--fee-basis-points", "100", "--as", "budi", *why)  # fmt: skip

    # Each device makes its key; the supervisor registers what it printed.
    bus_key = ksh.ok("validator", "--terminal-id", "BUS-01", "--state", "bus", "--init").strip()
    (tmp_path / "bus.pub").write_text(bus_key + "\n")
    pos_key = ksh.ok("pos", "--terminal-id", "POS-01", "--state", "pos", "--init").strip()
    ksh.ok("terminal", "add", "--id", "BUS-01", "--public-key", "bus.pub", "--role", "validator",
           "--operator", "trans-semarang", "--as", "budi", *why)  # fmt: skip
    ksh.ok("terminal", "add", "--id", "POS-01", "--public-key", pos_key, "--role", "pos",
           "--merchant", "WARUNG-01", "--as", "budi", *why)  # fmt: skip

    ksh.ok("party", "set", "--operator", "trans-semarang", "--same-bank", "--account",
           "1350099990001", "--holder", "BLU UPTD Trans Semarang", "--as", "budi", *why)  # fmt: skip
    ksh.ok("party", "set", "--merchant", "WARUNG-01", "--bank", "113", "--account",
           "7700000001", "--holder", "Sri Wahyuni", "--as", "budi", *why)  # fmt: skip

    # Cards: a deck of software cards, issued in the books as it is made (all or none).
    ksh.ok("card", "keystore-new", "--out", "issuer.keys")
    deck = ["card", "deck-new", "--keystore", "issuer.keys", "--balance", "20000", "--register"]
    refused = ksh.run(*deck, "--out", "refused.json", "--cards", "2", "--as", "nobody", *why)
    assert refused.returncode == 2, refused
    assert refused.stderr.strip() == (
        "ksh card: error: no staff member 'nobody' (add one with ksh settle staff nobody "
        "--role ...)"
    )
    assert not (tmp_path / "refused.json").exists()
    assert not (tmp_path / "refused.json.new").exists()
    made = ksh.ok(*deck, "--out", "deck.json", "--cards", "3", "--as", "ani", *why)
    assert made.strip().endswith(
        "3 KSH cards with Rp 20,000 each, issued in the books as "
        "6032900000000001..6032900000000003 -> deck.json"
    ), made
    more = ksh.ok(*deck, "--out", "more.json", "--cards", "2", "--as", "ani", *why)
    assert "6032900000000004..6032900000000005" in more  # numbers go on, never reused
    ksh.ok("cards", "issue", "--number", "6032984000000001", "--opening-balance", "50000",
           "--as", "ani", "--reason", "sold at the Simpang Lima desk")  # fmt: skip

    balance = ksh.ok("ledger", "balance", "--owner", "card_purse:6032900000000002")
    assert "credit_balance    20000" in balance
    purses = [
        json.loads(line)
        for line in ksh.ok("ledger", "accounts", "--kind", "card_purse", "--json").splitlines()
    ]
    assert sorted((p["owner"], p["balance_rupiah"]) for p in purses) == [
        *((f"603290000000000{n}", 20_000) for n in range(1, 6)),
        ("6032984000000001", 50_000),
    ]
    parties = [json.loads(line) for line in ksh.ok("party", "list", "--json").splitlines()]
    assert {(p["party_id"], p["account_no"]) for p in parties} == {
        ("trans-semarang", "1350099990001"),
        ("WARUNG-01", "7700000001"),
    }
    terminals = ksh.ok("terminal", "list").splitlines()[1:]
    assert [line.split()[:4] for line in terminals] == [
        ["BUS-01", "validator", "operator", "trans-semarang"],
        ["POS-01", "pos", "merchant", "WARUNG-01"],
    ]

    # End of day for a day with no taps: nothing owed, no batch, and the day is closed.
    day = (system_clock.today() - dt.timedelta(days=1)).isoformat()
    never = ksh.run("settle", "status", "--day", day)
    assert (never.returncode, never.stdout.startswith(f"day {day} was never closed")) == (1, True)
    assert ksh.ok("settle", "close", "--day", day) == f"0 new batches for {day}\n"
    status = ksh.ok("settle", "status", "--day", day)
    assert "never closed" not in status
    assert status.endswith("\nclosed\n"), status
    assert "nothing differs" in ksh.ok("ledger", "check")
