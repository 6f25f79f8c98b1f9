"""Ledger throughput: durable fare batches on a hot revenue account vs a raw COPY ceiling.

Books N transfers (default 1,000,000) among 100,000 card purses (each with the
debits-must-not-exceed-credits limit), every one crediting the same operator revenue account,
in batches of 8,190, through `ledger.create_transfers` (synchronous_commit on). In the same
run it measures the raw ceiling: COPY of the very rows the ledger stores (one per transfer,
carrying both postings and the balances after), encoded by the ledger's own binary row
encoder, into a bare table with no index, trigger or check, same batches, same durable
commits. For reference it also measures the same rows encoded by asyncpg from tuples (the
ceiling this benchmark used before the ledger encoded its own rows, slower than the ledger's
encoder) and two narrow posting rows per transfer. Uses DATABASE_URL or the embedded server,
in a scratch database it drops.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any

transfers_default = 1_000_000
cards_default = 100_000
fare_rupiah = 3_500
unknown_totals = (0, 0, 0, 0)  # the raw copies compute no balances
top_up_rupiah = 2_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--transfers", type=int, default=transfers_default, help="transfers to book"
    )
    parser.add_argument("--cards", type=int, default=cards_default, help="card purse accounts")
    parser.add_argument("--batch", type=int, default=8190, help="transfers per batch")
    parser.add_argument("--seed", type=int, default=1, help="seed for picking cards")


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    from ledger.database import server_url

    if arguments.transfers <= 0 or arguments.cards <= 0 or not 0 < arguments.batch <= 8190:
        raise ValueError("--transfers and --cards must be positive, --batch 1..8190")
    with server_url() as url:
        return asyncio.run(_run(url, arguments))


def _database_url(server: str, database: str) -> str:
    base, _, query = server.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.partition("/")[0]
    return f"{scheme}://{authority}/{database}" + (f"?{query}" if query else "")


async def _run(server: str, arguments: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    name = f"ksh_bench_ledger_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'create database "{name}"')
        connection = await asyncpg.connect(_database_url(server, name))
        try:
            return await _measure(connection, arguments)
        finally:
            await connection.close()
    finally:
        await admin.execute(f'drop database if exists "{name}" with (force)')
        await admin.close()


async def _measure(connection: Any, arguments: argparse.Namespace) -> dict[str, Any]:
    from ksh.schema import migrate_all
    from ledger import (
        Account,
        AccountFlags,
        AccountKind,
        CreateAccountResult,
        CreateTransferResult,
        Transfer,
        TransferCode,
        create_accounts,
        create_transfers,
    )
    from ledger.chain import TransferRowEncoder, copy_header, copy_trailer, transfer_columns

    await migrate_all(connection)
    await connection.execute("set synchronous_commit to on")
    cards = [uuid.UUID(int=(1 << 64) + n) for n in range(arguments.cards)]
    revenue, bank = uuid.UUID(int=1), uuid.UUID(int=2)
    accounts = [
        Account(revenue, AccountKind.operator_revenue, "operator"),
        Account(bank, AccountKind.bank_clearing, "bank"),
    ] + [
        Account(
            card, AccountKind.card_purse, f"card-{n}", AccountFlags.debits_must_not_exceed_credits
        )
        for n, card in enumerate(cards)
    ]
    for start in range(0, len(accounts), 8190):
        results = await create_accounts(connection, accounts[start : start + 8190])
        assert set(results) == {CreateAccountResult.created}
    top_ups = [
        Transfer(uuid.UUID(int=(2 << 64) + n), bank, card, top_up_rupiah, TransferCode.top_up)
        for n, card in enumerate(cards)
    ]
    for start in range(0, len(top_ups), arguments.batch):
        await create_transfers(connection, top_ups[start : start + arguments.batch])

    # The raw ceiling: the same transfers' rows COPYed into bare tables (no index, trigger,
    # check, lookup or balance), built from the same Transfer records, same batches, same
    # durable commits. Batches alternate between the ledger and the raw copies so that both
    # see the same load on a shared machine.
    await connection.execute(
        "create table bench_raw (like ledger_transfers excluding constraints excluding indexes)"
    )
    await connection.execute(
        "create table bench_raw_tuples"
        " (like ledger_transfers excluding constraints excluding indexes)"
    )
    await connection.execute(
        "create table bench_raw_postings (transfer_id uuid, account_id uuid, amount bigint)"
    )
    picker = random.Random(arguments.seed)
    batch_count = -(-arguments.transfers // arguments.batch)
    ledger_seconds = raw_seconds = raw_tuples_seconds = two_postings_seconds = 0.0
    created = 0
    sequence = 0
    started = datetime.now(UTC)
    for batch_index in range(batch_count):
        first = batch_index * arguments.batch
        size = min(arguments.batch, arguments.transfers - first)
        batch = [
            Transfer(
                uuid.UUID(int=(3 << 64) + first + n),
                cards[picker.randrange(arguments.cards)],
                revenue,
                fare_rupiah,
                TransferCode.fare,
            )
            for n in range(size)
        ]
        began = time.perf_counter()
        outcomes = await create_transfers(connection, batch)
        ledger_seconds += time.perf_counter() - began
        created += sum(outcome.result is CreateTransferResult.created for outcome in outcomes)

        began = time.perf_counter()
        encoder = TransferRowEncoder(batch_index, datetime.now(UTC))
        encoded = [copy_header]
        for transfer in batch:
            sequence += 1
            encoded.append(encoder.row(sequence, transfer, unknown_totals, unknown_totals))
        encoded.append(copy_trailer)
        async with connection.transaction():
            await connection.copy_to_table(
                # (a memoryview: asyncpg would take bytes for a file name)
                "bench_raw",
                source=memoryview(b"".join(encoded)),
                columns=transfer_columns,
                format="binary",
            )
        raw_seconds += time.perf_counter() - began

        began = time.perf_counter()
        booked_at = datetime.now(UTC)
        rows = []
        for offset, transfer in enumerate(batch, start=sequence - len(batch) + 1):
            rows.append(
                (
                    offset,
                    transfer.id,
                    batch_index,
                    booked_at,
                    transfer.debit_account_id,
                    transfer.credit_account_id,
                    transfer.amount,
                    transfer.code,
                    int(transfer.flags),
                    transfer.pending_id,
                    transfer.timeout_s,
                    transfer.terminal_id,
                    transfer.terminal_sequence,
                    transfer.card_number,
                    transfer.card_counter,
                    transfer.bank_reference,
                    transfer.settlement_batch,
                    transfer.metadata,
                    *unknown_totals,
                    *unknown_totals,
                )
            )
        async with connection.transaction():
            await connection.copy_records_to_table(
                "bench_raw_tuples", records=rows, columns=transfer_columns
            )
        raw_tuples_seconds += time.perf_counter() - began

        began = time.perf_counter()
        postings = []
        for transfer in batch:
            assert transfer.amount is not None
            postings.append((transfer.id, transfer.debit_account_id, -transfer.amount))
            postings.append((transfer.id, transfer.credit_account_id, transfer.amount))
        async with connection.transaction():
            await connection.copy_records_to_table("bench_raw_postings", records=postings)
        two_postings_seconds += time.perf_counter() - began

    assert created == arguments.transfers, f"only {created} booked"
    revenue_credits = await connection.fetchval(
        "select credits_posted from ledger_accounts where id = $1", revenue
    )
    assert revenue_credits == fare_rupiah * arguments.transfers

    transfers_per_s = arguments.transfers / ledger_seconds
    raw_per_s = arguments.transfers / raw_seconds
    raw_tuples_per_s = arguments.transfers / raw_tuples_seconds
    return {
        "benchmark": "ledger",
        "transfers": arguments.transfers,
        "cards": arguments.cards,
        "batch": arguments.batch,
        "hot_accounts": 1,
        "synchronous_commit": await connection.fetchval("show synchronous_commit"),
        "transfers_per_s": round(transfers_per_s),
        "raw_copy_transfers_per_s": round(raw_per_s),
        "ratio": round(transfers_per_s / raw_per_s, 3),
        "raw_copy_driver_encoded_transfers_per_s": round(raw_tuples_per_s),
        "ratio_to_driver_encoded": round(transfers_per_s / raw_tuples_per_s, 3),
        "raw_copy_two_postings_transfers_per_s": round(arguments.transfers / two_postings_seconds),
        "raw_copy_method": "the ledger's own rows (one per transfer, 26 columns) built from the"
        " same Transfer records by the ledger's binary row encoder and COPYed durably into a"
        " bare table; driver_encoded: the same rows as tuples encoded by asyncpg; two_postings:"
        " two (transfer, account, signed amount) rows per transfer",
        "ledger_seconds": round(ledger_seconds, 3),
        "raw_copy_seconds": round(raw_seconds, 3),
        "raw_copy_driver_encoded_seconds": round(raw_tuples_seconds, 3),
        "started_at": started.isoformat(),
    }
