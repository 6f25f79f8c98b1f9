"""`ksh settle` and `ksh reconcile` from the command line: bad input is one clear line, exit 2."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from gateways.snap.partners import Partner, save_partner
from ksh.cli import main
from tests.settlement.conftest import client_secret, public_pem


async def test_settle_and_reconcile_refuse_bad_input(
    database_url: str,
    tmp_path: Path,
    own_private_pem: bytes,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)

    def run(*argv: str) -> int:
        return main(list(argv))

    junk_key = tmp_path / "junk.pem"
    junk_key.write_text("not a key")
    pay = ["settle", "pay", "--day", "2026-11-23", "--partner", "BNI-01"]
    assert await asyncio.to_thread(run, *pay, "--key", str(junk_key)) == 2
    assert "cannot load our private key" in capsys.readouterr().err

    key = tmp_path / "ours.pem"
    key.write_bytes(own_private_pem)
    assert await asyncio.to_thread(run, *pay, "--key", str(key)) == 2
    assert "no partner BNI-01" in capsys.readouterr().err
    connection = await asyncpg.connect(database_url)
    try:
        await save_partner(
            connection,
            Partner(
                partner_id="BNI-01",
                name="BNI",
                client_secret=client_secret,
                public_key_pem=public_pem(own_private_pem).decode(),
                channel_id="95221",
                company_code="88001",
                base_url="http://127.0.0.1:9/snap",
            ),
        )
    finally:
        await connection.close()
    assert await asyncio.to_thread(run, *pay, "--key", str(key)) == 2
    assert "no --source-account" in capsys.readouterr().err

    broken = tmp_path / "broken.csv"
    broken.write_text(
        "account,value_date,direction,amount,reference,bank_reference,type,description\n"
        "1,2026-11-23,C,1e3,VA1,B1,NTRF,exponent\n"
    )
    assert await asyncio.to_thread(run, "reconcile", "import", "--bank", "009", str(broken)) == 2
    error = capsys.readouterr().err
    assert "broken.csv:2:" in error
    assert "nothing imported" in error
    # a day nobody closed is not reported closed, however quiet its statements
    assert await asyncio.to_thread(run, "settle", "status", "--day", "2026-11-23") == 1
    assert "day 2026-11-23 was never closed" in capsys.readouterr().out


async def test_exception_listing_says_how_many_it_leaves_out(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            """insert into settlement_exceptions
                 (exception_id, subject_kind, subject_id, reason, detail, amount_rupiah, service_day)
               select 'line:' || n, 'line', n::text, 'unknown_reference', '-', n, '2026-11-23'
                 from generate_series(1, 501) as n"""
        )
    finally:
        await connection.close()
    assert await asyncio.to_thread(main, ["reconcile", "exceptions"]) == 0
    out = capsys.readouterr().out
    assert out.count("unknown_reference") == 500
    assert out.endswith("501 open (the first 500 listed)\n")
