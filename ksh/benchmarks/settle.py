"""End of day plus reconciliation: 1,000,000 taps, 5,000 merchants' sales, 50,000 statement lines.

Setup (timed apart, `setup_seconds`): a scratch database with cards topped up through virtual
accounts (bank clearing -> pending top-up -> purse), N fare taps to the operator and sales
(with their per-sale fees) to M merchants, booked through `ledger.create_transfers`.
Measured (`seconds`): the set-based close of every payable into batches with their fee and
hold transfers, the bulk-transfer export (payout attempts and expected movements recorded),
then importing a CSV statement that shows every collection and every payout (about 50,000
lines) and reconciling it (matching, booking each confirmation). Uses DATABASE_URL or the
embedded server, in a scratch database it drops.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

from ksh import signals
from ksh.signals import stop_on_signals

taps_default = 1_000_000
merchants_default = 5_000
collections_default = 45_000  # plus one payout line per batch: ~50,000 statement lines
cards_default = 20_000
sales_per_merchant = 20
fare_rupiah = 3_500
sale_rupiah = 5_000
sale_fee_rupiah = 50
top_up_rupiah = 150_000
bank_code = "009"
our_account = "1350012345678"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taps", type=int, default=taps_default, help="fare taps booked")
    parser.add_argument(
        "--merchants", type=int, default=merchants_default, help="merchants with sales"
    )
    parser.add_argument(
        "--collections",
        type=int,
        default=collections_default,
        help="VA top-ups (statement credit lines)",
    )
    parser.add_argument("--cards", type=int, default=cards_default, help="card purses")


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    from ledger.database import server_url

    if min(arguments.taps, arguments.merchants, arguments.collections, arguments.cards) <= 0:
        raise ValueError("every count must be positive")
    # SIGINT or SIGTERM (even SIGINT inherited ignored) cancels the run; the scratch database
    # and the embedded server are cleaned up on the way out.
    with stop_on_signals() as stop, server_url() as url:
        stop.check()
        return signals.run(_run(url, arguments), stop)


async def _run(server: str, arguments: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    from ksh.database import scratch_database

    async with scratch_database(server, "ksh_bench_settle") as (_, url):
        connection = await asyncpg.connect(url)
        try:
            return await _measure(connection, arguments)
        finally:
            await connection.close()


async def _setup(connection: Any, arguments: argparse.Namespace, booked_at: dt.datetime) -> int:
    from ledger import store
    from ledger.records import Account, AccountKind, Transfer, TransferCode, derive_id

    def account(kind: AccountKind, owner: str) -> Account:
        return Account(derive_id("bench-settle", kind.value, owner), kind, owner)

    clearing = account(AccountKind.bank_clearing, bank_code)
    pending = account(AccountKind.pending_top_up, "bench")
    revenue = account(AccountKind.operator_revenue, "trans-semarang")
    fees = account(AccountKind.fee_income, "merchant-fees")
    purses = [account(AccountKind.card_purse, f"60135{n:011d}") for n in range(arguments.cards)]
    payables = [
        account(AccountKind.merchant_payable, f"M{n:05d}") for n in range(arguments.merchants)
    ]
    everything = [clearing, pending, revenue, fees, *purses, *payables]
    for start in range(0, len(everything), 8190):
        await store.create_accounts(connection, everything[start : start + 8190])

    transfers: list[Transfer] = []
    for n in range(arguments.collections):
        purse = purses[n % len(purses)]
        request_id = f"PR{n:012d}"
        transfers.append(
            Transfer(
                derive_id("bench-va", n),
                clearing.id,
                pending.id,
                top_up_rupiah,
                TransferCode.pending_top_up,
                bank_reference=f"snap:BANK:{request_id}",
            )
        )
        transfers.append(
            Transfer(
                derive_id("bench-delivery", n),
                pending.id,
                purse.id,
                top_up_rupiah,
                TransferCode.top_up_delivery,
            )
        )
    for n in range(arguments.taps):
        transfers.append(
            Transfer(
                derive_id("bench-tap", n),
                purses[n % len(purses)].id,
                revenue.id,
                fare_rupiah,
                TransferCode.fare,
                flags=_force(),
            )
        )
    for merchant_number, payable in enumerate(payables):
        for k in range(sales_per_merchant):
            n = merchant_number * sales_per_merchant + k
            transfers.append(
                Transfer(
                    derive_id("bench-sale", n),
                    purses[n % len(purses)].id,
                    payable.id,
                    sale_rupiah,
                    TransferCode.merchant_sale,
                    flags=_force(),
                )
            )
            transfers.append(
                Transfer(
                    derive_id("bench-sale-fee", n),
                    payable.id,
                    fees.id,
                    sale_fee_rupiah,
                    TransferCode.merchant_fee,
                )
            )
    for start in range(0, len(transfers), 8190):
        outcomes = await store.create_transfers(
            connection, transfers[start : start + 8190], now=booked_at
        )
        assert all(o.result.value in ("created", "exists") for o in outcomes), outcomes[:3]
    return len(transfers)


def _force() -> Any:
    from ledger.records import TransferFlags

    return TransferFlags.force  # the card already committed the tap: never refused


async def _measure(connection: Any, arguments: argparse.Namespace) -> dict[str, Any]:
    from settlement import end_of_day, reconciliation
    from settlement.statements import Direction, StatementLine, write_csv

    day = dt.date(2026, 11, 23)
    config = end_of_day.EndOfDayConfig(source_bank=bank_code, source_account_no=our_account)
    booked_at = dt.datetime.combine(day, dt.time(12, 0), tzinfo=end_of_day.jakarta)
    started = time.perf_counter()
    transfers_booked = await _setup(connection, arguments, booked_at)
    setup_seconds = time.perf_counter() - started
    parties = [
        ("merchant", f"M{n:05d}", f"Toko {n}", "", f"88{n:08d}") for n in range(arguments.merchants)
    ]
    parties.append(("operator", "trans-semarang", "BLU UPTD Trans Semarang", "", "1350099990001"))
    await end_of_day.register_parties(connection, parties)
    now = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(3, 0), tzinfo=end_of_day.jakarta)

    phases: dict[str, float] = {}
    mark = time.perf_counter()
    batches = await end_of_day.close_day(connection, day, config, now=now)
    phases["close_seconds"] = time.perf_counter() - mark
    mark = time.perf_counter()
    bulk = await end_of_day.export_bulk_csv(connection, day, config, "bench", now)
    phases["export_seconds"] = time.perf_counter() - mark

    # The bank's statement: every collection, and every payout of the bulk file (not timed).
    lines = [
        StatementLine(
            bank_code,
            our_account,
            day,
            top_up_rupiah,
            Direction.credit,
            f"PR{n:012d}",
            f"VA{n:010d}",
            "NTRF",
            f"VA PAYMENT PR{n:012d}",
            "bench.csv",
            n + 2,
        )
        for n in range(arguments.collections)
    ]
    for number, row in enumerate(bulk.splitlines()[1:], start=len(lines) + 2):
        reference, _, _, beneficiary, _, amount, _ = row.split(",", 6)
        lines.append(
            StatementLine(
                bank_code,
                our_account,
                day + dt.timedelta(days=1),
                int(amount),
                Direction.debit,
                reference,
                f"TF{number:010d}",
                "NTRF",
                f"TRANSFER KE {beneficiary} {reference}",
                "bench.csv",
                number,
            )
        )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.csv"
        path.write_text(write_csv(lines))
        mark = time.perf_counter()
        imported = await reconciliation.import_statement(connection, path, bank_code, "bench")
        phases["import_seconds"] = time.perf_counter() - mark
    mark = time.perf_counter()
    start = dt.datetime.combine(day, dt.time(0), tzinfo=end_of_day.jakarta)
    expected = await reconciliation.expect_collections(
        connection,
        start,
        end_of_day.cutoff_at(day, config),
        day,
        {bank_code: our_account},
        our_account,
    )
    report = await reconciliation.reconcile(
        connection, now=now, statement_through=day + dt.timedelta(days=1)
    )
    phases["reconcile_seconds"] = time.perf_counter() - mark
    assert report.lines_matched == len(lines), report
    assert report.exceptions_open == 0, report
    seconds = sum(phases.values())
    return {
        "benchmark": "settle",
        "seconds": round(seconds, 3),
        **{key: round(value, 3) for key, value in phases.items()},
        "setup_seconds": round(setup_seconds, 3),
        "setup_transfers_booked": transfers_booked,
        "taps": arguments.taps,
        "merchants": arguments.merchants,
        "batches": len(batches),
        "statement_lines": imported.lines_in_file,
        "collections_expected": expected,
        "lines_matched": report.lines_matched,
        "confirmation_transfers_booked": report.transfers_booked,
        "exceptions_open": report.exceptions_open,
        "statement_lines_per_second": round(
            len(lines) / (phases["import_seconds"] + phases["reconcile_seconds"]), 1
        ),
        "target_seconds": 30,
    }
