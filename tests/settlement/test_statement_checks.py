"""Statements are checked, not trusted: each refusal through `import_statement` on a real
database (and some through `ksh reconcile import`) says what is wrong, names the file and line,
and imports nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from gateways.snap.partners import Partner, save_partner
from ksh.cli import main
from settlement.reconciliation import StatementError, import_statement
from tests.settlement.conftest import client_secret, public_pem

ours = "1350012345678"  # our account at BNI (009)
csv_head = "account,value_date,direction,amount,reference,bank_reference,type,description\n"


def mt940(account: str = ours, closing: str = "C261123IDR1150000,00", movements: str = "") -> str:
    return (
        f":20:STMT20261123\n:25:{account}\n:28C:00001/001\n:60F:C261123IDR1000000,00\n"
        ":61:2611231123C150000,00NTRFVA8800100001//BNK0001\n:86:VA PAYMENT 8800100001\n"
        f"{movements}:62F:{closing}\n"
    )


def write(folder: Path, name: str, text: str | bytes) -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


@pytest.fixture
async def connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


async def stored(connection: asyncpg.Connection) -> tuple[int, int]:
    files = await connection.fetchval("select count(*) from settlement_statement_files")
    lines = await connection.fetchval("select count(*) from settlement_statement_lines")
    return files, lines


async def refused(
    connection: asyncpg.Connection,
    path: Path,
    bank: str = "009",
    expected_account: str | None = None,
    require_account: bool = False,
) -> str:
    """The error of importing `path`, having checked it changed nothing."""
    before = await stored(connection)
    with pytest.raises(StatementError) as caught:
        await import_statement(
            connection,
            path,
            bank,
            "clerk.ani",
            expected_account=expected_account,
            require_account=require_account,
        )
    assert await stored(connection) == before
    return str(caught.value)


async def test_unbalanced_mt940_says_the_difference(
    connection: asyncpg.Connection, tmp_path: Path
) -> None:
    path = write(tmp_path, "bni.sta", mt940(closing="C261123IDR1149000,00"))
    assert await refused(connection, path) == (
        "bni.sta:7: closing balance :62F: Rp 1.149.000 is not the opening balance "
        "Rp 1.000.000 plus the movements Rp 150.000 = Rp 1.150.000: a difference of Rp 1.000"
    )


async def test_statement_of_another_account_is_refused(
    connection: asyncpg.Connection, tmp_path: Path, own_private_pem: bytes
) -> None:
    path = write(tmp_path, "bni.sta", mt940(account="0112233445"))
    assert await refused(connection, path, expected_account=ours) == (
        f"bni.sta:5: the statement is for account 0112233445, not bank 009's account {ours} "
        "(as given)"
    )
    # Without an account given, the SNAP partner of that bank code says which is ours.
    await save_partner(
        connection,
        Partner(
            partner_id="BNI-KSH",
            name="BNI",
            client_secret=client_secret,
            public_key_pem=public_pem(own_private_pem).decode(),
            channel_id="95221",
            company_code="88001",
            bank_code="009",
            source_account_no=ours,
        ),
    )
    assert await refused(connection, path) == (
        f"bni.sta:5: the statement is for account 0112233445, not bank 009's account {ours} "
        "(SNAP partner BNI-KSH)"
    )
    right = await import_statement(connection, write(tmp_path, "ok.sta", mt940()), "009", "ani")
    assert (right.lines_new, right.accounts, right.account_checked) == (1, (ours,), True)


async def test_unconfigured_account_is_taken_unchecked_or_refused_on_request(
    connection: asyncpg.Connection, tmp_path: Path
) -> None:
    path = write(tmp_path, "bni.sta", mt940(account="0112233445"))
    assert await refused(connection, path, require_account=True) == (
        "bni.sta:1: no account of ours is configured for bank 009 to check the statement's "
        "account 0112233445 against: give it (--account 009=ACCOUNT) or set the source "
        "account of the bank's SNAP partner"
    )
    taken = await import_statement(connection, path, "009", "ani")
    assert (taken.lines_new, taken.accounts, taken.account_checked) == (1, ("0112233445",), False)


async def test_truncated_files_import_nothing(
    connection: asyncpg.Connection, tmp_path: Path
) -> None:
    no_closing = write(tmp_path, "bni.sta", mt940().rsplit(":62F:", 1)[0])
    assert await refused(connection, no_closing) == (
        "bni.sta:6: truncated: the statement starting at line 1 has no closing balance :62F: "
        "(the file ends at line 6)"
    )
    cut_row = write(
        tmp_path,
        "bni.csv",
        csv_head + f"{ours},2026-11-23,C,150000,VA1,B1,NTRF,VA PAYMENT 1\n{ours},2026-11-23,C,25",
    )
    assert await refused(connection, cut_row) == (
        "bni.csv:3: truncated: the last line has no line end (the file looks cut off)"
    )


async def test_impossible_date_names_line_and_field(
    connection: asyncpg.Connection, tmp_path: Path
) -> None:
    path = write(tmp_path, "bni.sta", mt940().replace(":61:2611231123", ":61:2602300230"))
    assert await refused(connection, path) == (
        "bni.sta:5: :61: value date '260230' is not a date (YYMMDD)"
    )
    csv_path = write(tmp_path, "bni.csv", csv_head + f"{ours},2026-02-30,C,100,VA1,B1,NTRF,x\n")
    assert await refused(connection, csv_path) == (
        "bni.csv:2: value_date '2026-02-30' is not a date (YYYY-MM-DD)"
    )


async def test_same_statement_under_another_bank_code_is_refused(
    connection: asyncpg.Connection, tmp_path: Path
) -> None:
    path = write(tmp_path, "bni.sta", mt940())
    first = await import_statement(connection, path, "009", "clerk.ani")
    assert first.lines_new == 1
    assert await refused(connection, path, bank="014") == (
        "bni.sta:1: this file was already imported as bank 009 (as bni.sta by clerk.ani), not 014"
    )
    # The same statement in other bytes (as the bank's portal sends it again: CRLF) is known
    # by its movements.
    again = write(tmp_path, "bni-again.sta", mt940().replace("\n", "\r\n").encode())
    assert await refused(connection, again, bank="014") == (
        "bni-again.sta:5: this movement was already imported as bank 009 (bni.sta line 5), not 014"
    )
    assert (await import_statement(connection, again, "009", "clerk.ani")).lines_new == 0


async def test_spreadsheet_csv_with_byte_order_mark_is_read(
    connection: asyncpg.Connection, tmp_path: Path
) -> None:
    rows = csv_head + f'{ours},2026-11-23,C,"150.000,00",VA8800100001,B1,NTRF,VA PAYMENT\n'
    path = write(tmp_path, "bni.csv", b"\xef\xbb\xbf" + rows.replace("\n", "\r\n").encode())
    result = await import_statement(connection, path, "009", "ani", expected_account=ours)
    assert (result.lines_new, result.account_checked) == (1, True)
    row = await connection.fetchrow("select * from settlement_statement_lines")
    assert (row["account"], row["amount_rupiah"], row["source_line"]) == (ours, 150_000, 2)


async def test_amount_beyond_the_ledger_is_an_error(
    connection: asyncpg.Connection, tmp_path: Path
) -> None:
    path = write(
        tmp_path,
        "bni.csv",
        csv_head
        + f"{ours},2026-11-23,C,100,VA1,B1,NTRF,fine\n"
        + f"{ours},2026-11-23,C,9223372036854775808,VA2,B2,NTRF,too much\n",
    )
    assert await refused(connection, path) == (
        "bni.csv:3: amount '9223372036854775808' is more than the ledger can hold "
        "(Rp 9.223.372.036.854.775.807)"
    )


# ---------------------------------------------------------------------------- the command


async def test_reconcile_import_command_refuses_and_imports_nothing(
    database_url: str,
    connection: asyncpg.Connection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)

    async def run(*argv: str) -> tuple[int, str]:
        code = await asyncio.to_thread(main, ["reconcile", "import", *argv])
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    unbalanced = write(tmp_path, "bni.sta", mt940(closing="C261123IDR1149000,00"))
    code, said = await run("--bank", "009", "--account", ours, str(unbalanced))
    assert code == 2
    assert "bni.sta:7: closing balance :62F: Rp 1.149.000" in said
    assert "a difference of Rp 1.000 (nothing imported from bni.sta)" in said

    other = write(tmp_path, "bri.sta", mt940(account="0112233445"))
    code, said = await run("--bank", "009", "--account", f"009={ours}", str(other))
    assert code == 2
    assert (
        f"bri.sta:5: the statement is for account 0112233445, not bank 009's account {ours}" in said
    )

    good = write(tmp_path, "good.sta", mt940())
    code, said = await run("--bank", "009", str(good))  # nothing says which account is ours
    assert code == 2
    assert "bank 009 to check the statement's account 1350012345678 against" in said
    assert await stored(connection) == (0, 0)

    code, said = await run(
        "--bank", "009", "--account", "014=0112233445", "--account", f"009={ours}", str(good)
    )
    assert (code, said) == (0, f"good.sta: 1 lines, 1 new on account {ours}\n")
    code, said = await run("--bank", "014", "--account", ours, str(good))
    assert code == 2
    assert "good.sta:1: this file was already imported as bank 009" in said
    assert await stored(connection) == (1, 1)

    code, said = await run("--bank", "009", "--account", "=1", str(good))
    assert (code, "--account takes BANK=ACCOUNT or ACCOUNT, not '=1'" in said) == (2, True)
