"""`check_ledger`, the exports (bean-check must accept ours and agree), and `ksh ledger`."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import asyncpg

from ledger import (
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferFlags,
    account_balances,
    create_transfers,
    derive_id,
)
from ledger.audit import check_ledger
from ledger.chain import (
    batch_digest_format_1,
    chain_hash_genesis,
    next_chain_hash,
    transfer_columns,
)
from ledger.export import beancount_account_name, write_beancount, write_csv
from tests.ledger.books import bank, book_a_day, database_clock, open_books, purses, revenue

bin_folder = Path(sys.executable).parent
command_timeout_s = 120  # a command that hangs fails its test, saying which


def bean_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_folder / "bean-check", path], capture_output=True, text=True, timeout=command_timeout_s
    )


async def tamper(connection: asyncpg.Connection, sql: str) -> None:
    """Change the books behind the ledger's back, as someone with table access could."""
    await connection.execute("set session_replication_role = replica")  # skips triggers
    await connection.execute(sql)
    await connection.execute("set session_replication_role = origin")


async def test_check_finds_nothing_in_good_books(connection) -> None:
    await open_books(connection)
    await book_a_day(connection)
    assert await check_ledger(connection) == []


async def test_batches_of_the_first_digest_format_still_verify(connection) -> None:
    """Batches booked before the binary row encoding carry digest_format 1: the check
    verifies them by that format (here: today's batches rewritten as the first version
    would have hashed them), and still catches a changed transfer."""
    await open_books(connection)
    await book_a_day(connection)
    previous = chain_hash_genesis
    for batch in await connection.fetch(
        "select batch_number, first_sequence, last_sequence from ledger_batches"
        " order by batch_number"
    ):
        rows = await connection.fetch(
            f"select {', '.join(transfer_columns)} from ledger_transfers"
            " where sequence between $1 and $2 order by sequence",
            batch["first_sequence"],
            batch["last_sequence"],
        )
        digest = batch_digest_format_1(rows)
        previous = next_chain_hash(previous, digest)
        await tamper(
            connection,
            f"update ledger_batches set digest_format = 1, digest = '\\x{digest.hex()}',"
            f" chain_hash = '\\x{previous.hex()}' where batch_number = {batch['batch_number']}",
        )
    await tamper(connection, f"update ledger_head set chain_hash = '\\x{previous.hex()}'")
    assert await check_ledger(connection) == []
    await tamper(connection, "update ledger_transfers set card_number = 'c9' where sequence = 5")
    problems = await check_ledger(connection)
    assert [p.check for p in problems] == ["chain"], problems


async def test_check_finds_a_changed_amount(connection) -> None:
    await open_books(connection)
    await book_a_day(connection)
    await tamper(connection, "update ledger_transfers set amount = 3000 where sequence = 4")
    problems = await check_ledger(connection)
    checks = {problem.check for problem in problems}
    assert {"totals", "history", "chain"} <= checks, problems
    assert any(p.subject == "batch 2" for p in problems if p.check == "chain")


async def test_check_finds_changed_totals_and_a_deleted_transfer(connection) -> None:
    await open_books(connection)
    await book_a_day(connection)
    await tamper(connection, "update ledger_accounts set credits_posted = credits_posted + 1")
    await tamper(connection, "delete from ledger_transfers where sequence = 2")
    checks = {problem.check for problem in await check_ledger(connection)}
    assert {"totals", "zero_sum", "sequence", "chain"} <= checks


async def test_beancount_export_passes_bean_check_with_our_balances(connection, tmp_path) -> None:
    await open_books(connection)
    await book_a_day(connection)
    path = tmp_path / "books.beancount"
    with path.open("w") as out:
        await write_beancount(connection, out)
    checked = bean_check(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    from beancount import loader
    from beancount.core import realization

    entries, errors, _ = loader.load_file(str(path))
    assert errors == []
    tree = realization.realize(entries)
    for account_id, kind in (
        (purses[0], "card_purse"),
        (bank, "bank_clearing"),
        (revenue, "operator_revenue"),
    ):
        ours = await account_balances(connection, account_id)
        assert ours is not None
        node = realization.get(tree, beancount_account_name(kind, account_id))
        theirs = node.balance.get_currency_units("IDR").number
        assert theirs == ours.debits_posted - ours.credits_posted

    # bean-check is a real check: a balance that disagrees fails it.
    await tamper(
        connection,
        f"update ledger_accounts set debits_posted = debits_posted + 5 where id = '{bank}'",
    )
    with path.open("w") as out:
        await write_beancount(connection, out)
    checked = bean_check(path)
    assert checked.returncode != 0


async def test_csv_export_has_every_transfer(connection, tmp_path) -> None:
    await open_books(connection)
    await book_a_day(connection)
    path = tmp_path / "books.csv"
    with path.open("w", newline="") as out:
        await write_csv(connection, out)
    rows = list(csv.DictReader(path.open()))
    assert [int(row["sequence"]) for row in rows] == list(range(1, 13))
    assert rows[4]["card_number"] == "c1"
    assert sum(int(row["amount"]) for row in rows if row["code"] == "1") == 7_000


def ksh(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [bin_folder / "ksh", "ledger", *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=command_timeout_s,
    )


async def test_command_line(connection, database_url, tmp_path) -> None:
    """`ksh ledger expire` voids at the database's clock: the day is booked the day before it,
    so that the hold booked after it is long expired on any day the test runs."""
    await open_books(connection)
    start = await database_clock(connection) - timedelta(days=1)
    await book_a_day(connection, start)
    checked = ksh(database_url, "check")
    assert checked.returncode == 0, checked.stderr
    between_batches = (start + timedelta(hours=1, minutes=30)).isoformat()
    balance = ksh(database_url, "balance", str(purses[0]), "--at", between_batches)
    assert balance.returncode == 0, balance.stderr
    assert "credit_balance    46500" in balance.stdout
    now = ksh(database_url, "balance", str(purses[0]))
    assert "credit_balance    71500" in now.stdout
    out = tmp_path / "export.beancount"
    assert ksh(database_url, "export", "--format", "beancount", "--out", str(out)).returncode == 0
    assert "balance Liabilities:CardPurse:" in out.read_text()
    hold = Transfer(
        derive_id("cli", "hold"),
        bank,
        purses[1],
        1_000,
        TransferCode.pending_top_up,
        TransferFlags.pending,
        timeout_s=60,
    )
    long_expired = start + timedelta(hours=3)
    [booked] = await create_transfers(connection, [hold], now=long_expired)
    assert booked.result is CreateTransferResult.created
    expired = ksh(database_url, "expire")
    assert expired.returncode == 0, expired.stderr
    assert expired.stdout.strip() == "ledger expire: 1 hold(s) voided"
    assert ksh(database_url, "expire").stdout.strip() == "ledger expire: 0 hold(s) voided"
    assert ksh(database_url, "check").returncode == 0
    bad = ksh(database_url, "balance", "not-a-uuid")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    await tamper(connection, "update ledger_transfers set amount = amount + 1 where sequence = 1")
    failed = ksh(database_url, "check")
    assert failed.returncode == 1
    assert "chain: batch 1" in failed.stdout


def test_expire_reports_each_kind_of_refused_void(capsys) -> None:
    """Refused voids of more than one kind are each reported, in the order results are
    checked (results are not sortable), and `ksh ledger expire` exits 1."""
    from collections import Counter

    from ksh.commands.ledger import report_expiry
    from ledger import ExpirySweep

    R = CreateTransferResult
    posted, voided = R.pending_transfer_already_posted, R.pending_transfer_already_voided
    results = Counter({voided: 1, R.created: 2, posted: 3, R.exists: 4})
    sweep = ExpirySweep.of(results)
    assert sweep == ExpirySweep(voided=2, already=4, refused=((posted, 3), (voided, 1)))
    assert report_expiry(sweep) == 1
    printed = capsys.readouterr()
    assert printed.out.strip() == "ledger expire: 2 hold(s) voided, 4 already"
    assert printed.err.splitlines() == [
        f"ledger expire: 3 void(s) refused: {posted}",
        f"ledger expire: 1 void(s) refused: {voided}",
    ]
    assert report_expiry(ExpirySweep.of(Counter({R.created: 1}))) == 0
