"""`ksh settle pay` says which batch it could not pay and exits 1; `ksh settle status` tells a
day never closed from one closed."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import asyncpg
import pytest

from gateways.snap import signature
from gateways.terminal_api import books, registry
from ledger.clock import system_clock
from ledger.records import Transfer, TransferCode
from tests.setup.helpers import Ksh, add_staff

why = ("--reason", "setting up the network")


async def book_a_fare(database_url: str, card: str, operator: str, rupiah: int) -> None:
    """A fare as the back office books an uploaded tap (uploads are tested elsewhere)."""
    connection = await asyncpg.connect(database_url)
    try:
        outcomes = await books.create_transfers(
            connection,
            [
                Transfer(
                    uuid.uuid4(),
                    registry.purse_account_id(card),
                    registry.operator_revenue_account_id(operator),
                    rupiah,
                    TransferCode.fare,
                    card_number=card,
                )
            ],
            now=system_clock.now(),
        )
        assert outcomes[0].result.name == "created", outcomes
    finally:
        await connection.close()


async def test_pay_says_which_batch_it_could_not_pay_and_status_which_day_was_closed(
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    ksh = Ksh(capsys)
    await add_staff(ksh, monkeypatch)
    await ksh.ok("operator", "add", "--id", "trans-semarang", "--as", "budi", *why)
    await ksh.ok(
        "cards", "issue", "--number", "6032984000000001", "--opening-balance", "50000",
        "--as", "ani", *why,
    )  # fmt: skip
    await book_a_fare(database_url, "6032984000000001", "trans-semarang", 3_500)
    # the service day of a fare booked now: its cut-off (02:00 next day) is still ahead
    day = system_clock.today().isoformat()
    closed = await ksh.ok("settle", "close", "--day", day)
    assert closed.out.endswith(f"1 new batches for {day}\n")

    ours = tmp_path / "ours.pem"
    ours.write_bytes(signature.private_key_pem(signature.generate_private_key()))
    banks = tmp_path / "bank.pem"
    banks.write_bytes(signature.public_key_pem(signature.generate_private_key().public_key()))
    await ksh.ok(
        "partner", "add", "--id", "BNI-01", "--client-secret", "a-secret-of-16-chars",
        "--public-key", str(banks), "--channel", "95221", "--company-code", "88001",
        "--base-url", "http://127.0.0.1:9/snap", "--source-account", "1350012345678",
    )  # fmt: skip
    pay = ("settle", "pay", "--day", day, "--partner", "BNI-01", "--key", str(ours))
    ran = await ksh(*pay)
    assert ran.status == 1, ran
    assert ran.out == "paid 0, refused 0, unresolved 0, no_account 1\n"
    (line,) = ran.err.splitlines()
    assert line.startswith(
        "ksh settle pay: no bank account for operator trans-semarang: exception opened (batch B"
    ), line
    assert line.endswith(", Rp 3,500) (set one: ksh party set)"), line
    again = await ksh(*pay)
    assert again.status == 1
    assert "no bank account for operator trans-semarang: exception still open" in again.err

    status = await ksh("settle", "status", "--day", day)
    assert status.status == 1
    assert "never closed" not in status.out
    assert "exceptions open 1" in status.out
    assert status.out.endswith("NOT closed\n")
    earlier = (dt.date.fromisoformat(day) - dt.timedelta(days=30)).isoformat()
    never = await ksh("settle", "status", "--day", earlier)
    assert never.status == 1
    assert never.out.startswith(f"day {earlier} was never closed")
