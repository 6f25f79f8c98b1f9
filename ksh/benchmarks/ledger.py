"""Ledger throughput: durable fare batches on a hot revenue account vs a raw COPY ceiling.

Books N transfers (default 1,000,000) among 100,000 card purses (each with the
debits-must-not-exceed-credits limit), every one crediting the same operator revenue account,
in batches of 8,190, through `ledger.TransferPipeline` on two connections (synchronous_commit
on), keeping as many batches submitted as it has connections plus one. In the same run, in
alternating blocks so that all see the same load on a shared machine, it measures the raw
ceiling: COPY of the very rows the ledger stores (one per transfer, carrying both postings and
the balances after), encoded by the ledger's own binary row encoder, into a bare table with no
index, trigger or check, same batches, same durable commits, the same two connections each
with a batch in flight while the next is encoded; and the same into a table with the ledger's
indexes but no trigger, check or balance (what the bookkeeping costs beyond storing rows).
Then, for reference, it books as many other fares one batch at a time through
`ledger.create_transfers` on one connection. Uses DATABASE_URL or the embedded server, in a
scratch database it drops; `ksh ledger check` finds nothing wrong with the books after.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import random
import time
import uuid
from typing import Any

from ksh import signals
from ksh.signals import stop_on_signals
from ledger.clock import system_clock

transfers_default = 1_000_000
cards_default = 100_000
fare_rupiah = 3_500
unknown_totals = (0, 0, 0, 0)  # the raw copies compute no balances
top_up_rupiah = 2_000_000
depth = 2  # the pipeline's connections: one batch applying its totals, one streaming in
# The pipeline and the raw copies take turns this many times. Each turn starts and ends with
# nothing in flight, which a running service never does: with 10 turns of 12 batches the
# ledger and the raw copies both measured about 8% lower than with 5 (same ratio).
blocks = 5


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
    # SIGINT or SIGTERM (even SIGINT inherited ignored) cancels the run; the scratch database
    # and the embedded server are cleaned up on the way out.
    with stop_on_signals() as stop, server_url() as url:
        stop.check()
        return signals.run(_run(url, arguments), stop)


async def _run(server: str, arguments: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    from ksh.database import scratch_database

    async with scratch_database(server, "ksh_bench_ledger") as (_, url):
        connection = await asyncpg.connect(url)
        connections = [await asyncpg.connect(url) for _ in range(depth)]
        try:
            return await _measure(connection, connections, arguments)
        finally:
            for each in (connection, *connections):
                await each.close()


async def _top_up(
    book: Any, cards: list[uuid.UUID], bank: uuid.UUID, first_id: int, batch: int
) -> None:
    from ledger import CreateTransferResult, Transfer, TransferCode

    top_ups = [
        Transfer(uuid.UUID(int=first_id + n), bank, card, top_up_rupiah // 2, TransferCode.top_up)
        for n, card in enumerate(cards)
    ]
    for start in range(0, len(top_ups), batch):
        outcomes = await book(top_ups[start : start + batch])
        assert {outcome.result for outcome in outcomes} == {CreateTransferResult.created}


async def _measure(
    connection: Any, connections: list[Any], arguments: argparse.Namespace
) -> dict[str, Any]:
    from ledger import (
        Account,
        AccountFlags,
        AccountKind,
        CreateAccountResult,
        CreateTransferResult,
        Transfer,
        TransferCode,
        TransferPipeline,
        check_ledger,
        create_accounts,
        create_transfers,
    )

    for each in (connection, *connections):  # durable commits, whatever the server's default
        await each.execute("set synchronous_commit to on")
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
    # Every card topped up twice, half each time: through the pipeline before it is timed,
    # then through the one connection before that is timed, so that each holds every card's
    # account when its timing starts (a writer reloads the accounts after another booked).
    pipeline = TransferPipeline(connections)
    await _top_up(pipeline.create_transfers, cards, bank, 10 << 64, arguments.batch)

    # The raw ceiling: the same transfers' rows COPYed into a bare table (no index, trigger,
    # check, lookup or balance), built from the same Transfer records, same batches, same
    # durable commits, on as many connections as the pipeline. The two scratch tables are
    # not vacuumed: autovacuum, woken by their million rows each, took a core from the timed
    # blocks that followed (the ledger measured 89,000/s with it, 105,000/s without).
    await connection.execute(
        "create table bench_raw (like ledger_transfers excluding constraints excluding indexes)"
        " with (autovacuum_enabled = false)"
    )
    # And what the ledger's own indexes cost, without its balances, checks or chain: the
    # same rows into a table with ledger_transfers' indexes and nothing else.
    await connection.execute(
        "create table bench_raw_indexed"
        " (like ledger_transfers excluding constraints including indexes)"
        " with (autovacuum_enabled = false)"
    )
    picker = random.Random(arguments.seed)
    batch_count = -(-arguments.transfers // arguments.batch)

    def fares(first_id: int, size: int) -> list[Transfer]:
        return [
            Transfer(
                uuid.UUID(int=first_id + n),
                cards[picker.randrange(arguments.cards)],
                revenue,
                fare_rupiah,
                TransferCode.fare,
            )
            for n in range(size)
        ]

    sizes = [
        min(arguments.batch, arguments.transfers - b * arguments.batch) for b in range(batch_count)
    ]
    pipelined = [fares((3 << 64) + b * arguments.batch, size) for b, size in enumerate(sizes)]
    alone = [fares((4 << 64) + b * arguments.batch, size) for b, size in enumerate(sizes)]
    # Two million prebuilt transfers are the benchmark's input, not the ledger's work: keep
    # the cyclic collector from walking them again and again (a real service holds a batch).
    gc.collect()
    gc.freeze()
    # The pipeline and the raw copies alternate in blocks so that both see the same load on
    # a shared machine; then the same number of other fares, one batch at a time.
    block = -(-batch_count // blocks)  # (rounded up: at most `blocks` turns)
    ledger_seconds = raw_seconds = raw_indexed_seconds = 0.0
    # Where the pipeline's CPU goes: this process, and the two backends when the server runs
    # on this machine (their times are in /proc).
    backends = [await each.fetchval("select pg_backend_pid()") for each in connections]
    client_cpu_s = 0.0
    backends_cpu_s: float | None = 0.0
    created = created_alone = 0
    started = system_clock.now()
    for first in range(0, batch_count, block):
        began, cpu_began, backends_began = time.perf_counter(), time.process_time(), _cpu(backends)
        for outcomes in await _book_pipelined(pipeline, pipelined[first : first + block], depth):
            created += sum(outcome.result is CreateTransferResult.created for outcome in outcomes)
        ledger_seconds += time.perf_counter() - began
        client_cpu_s += time.process_time() - cpu_began
        backends_ended = _cpu(backends)
        if backends_cpu_s is not None and backends_began is not None and backends_ended is not None:
            backends_cpu_s += backends_ended - backends_began
        else:
            backends_cpu_s = None

        began = time.perf_counter()
        await _copy_raw(connections, "bench_raw", pipelined[first : first + block], first)
        raw_seconds += time.perf_counter() - began

        began = time.perf_counter()
        await _copy_raw(connections, "bench_raw_indexed", pipelined[first : first + block], first)
        raw_indexed_seconds += time.perf_counter() - began

    await _top_up(
        functools.partial(create_transfers, connection), cards, bank, 11 << 64, arguments.batch
    )
    began = time.perf_counter()
    for batch in alone:
        outcomes = await create_transfers(connection, batch)
        created_alone += sum(outcome.result is CreateTransferResult.created for outcome in outcomes)
    alone_seconds = time.perf_counter() - began
    gc.unfreeze()  # (the benchmarks of one `ksh bench` run share a process)

    assert created == created_alone == arguments.transfers, f"only {created} booked"
    revenue_credits = await connection.fetchval(
        "select credits_posted from ledger_accounts where id = $1", revenue
    )
    assert revenue_credits == fare_rupiah * 2 * arguments.transfers
    ledger_problems = await check_ledger(connection)
    assert not ledger_problems, ledger_problems[:3]

    transfers_per_s = arguments.transfers / ledger_seconds
    raw_per_s = arguments.transfers / raw_seconds
    raw_indexed_per_s = arguments.transfers / raw_indexed_seconds
    alone_per_s = arguments.transfers / alone_seconds
    return {
        "benchmark": "ledger",
        "transfers": arguments.transfers,
        "cards": arguments.cards,
        "batch": arguments.batch,
        "connections": depth,
        "hot_accounts": 1,
        "synchronous_commit": await connections[0].fetchval("show synchronous_commit"),
        "transfers_per_s": round(transfers_per_s),
        "raw_copy_transfers_per_s": round(raw_per_s),
        "ratio": round(transfers_per_s / raw_per_s, 3),
        "raw_copy_indexed_transfers_per_s": round(raw_indexed_per_s),
        "ratio_to_indexed": round(transfers_per_s / raw_indexed_per_s, 3),
        "one_connection_transfers_per_s": round(alone_per_s),
        "pipeline_gain": round(transfers_per_s / alone_per_s, 3),
        "raw_copy_method": "the ledger's own rows (one per transfer, 26 columns) built from the"
        " same Transfer records by the ledger's binary row encoder and COPYed durably into a"
        " bare table, a batch in flight on each connection while the next is encoded; indexed:"
        " the same into a table with ledger_transfers' indexes (no trigger, check or balance)",
        "ledger_seconds": round(ledger_seconds, 3),
        # per batch of the pipeline: wall time, this process's CPU, the two backends' CPU
        "pipeline_ms_per_batch": round(ledger_seconds / batch_count * 1000, 1),
        "client_cpu_ms_per_batch": round(client_cpu_s / batch_count * 1000, 1),
        "backends_cpu_ms_per_batch": None
        if backends_cpu_s is None
        else round(backends_cpu_s / batch_count * 1000, 1),
        "raw_copy_seconds": round(raw_seconds, 3),
        "raw_copy_indexed_seconds": round(raw_indexed_seconds, 3),
        "one_connection_seconds": round(alone_seconds, 3),
        "started_at": started.isoformat(),
    }


async def _book_pipelined(pipeline: Any, batches: list[list[Any]], depth: int) -> list[list[Any]]:
    """Book the batches through the pipeline, keeping `depth + 1` submitted (one being
    decided while `depth` are in flight), as concurrent callers would."""
    submitted: list[asyncio.Task[list[Any]]] = []
    for batch in batches:
        if len(submitted) - sum(task.done() for task in submitted) > depth:
            await asyncio.wait(
                [task for task in submitted if not task.done()],
                return_when=asyncio.FIRST_COMPLETED,
            )
        submitted.append(asyncio.create_task(pipeline.create_transfers(batch)))
    return list(await asyncio.gather(*submitted))


async def _copy_raw(
    connections: list[Any], table: str, batches: list[list[Any]], first_batch: int
) -> None:
    """COPY each batch's rows into `table` in its own durable transaction, one batch in
    flight per connection while the next is encoded."""
    from ledger.chain import TransferRowEncoder, copy_header, copy_trailer, transfer_columns

    free: asyncio.Queue[Any] = asyncio.Queue()
    for connection in connections:
        free.put_nowait(connection)

    async def copy(connection: Any, data: bytes) -> None:
        try:
            async with connection.transaction():
                await connection.copy_to_table(
                    # (a memoryview: asyncpg would take bytes for a file name)
                    table,
                    source=memoryview(data),
                    columns=transfer_columns,
                    format="binary",
                )
        finally:
            free.put_nowait(connection)

    copies = []
    sequence = first_batch * len(batches[0]) if batches else 0
    for number, batch in enumerate(batches, start=first_batch):
        encoder = TransferRowEncoder(number, system_clock.now())
        encoded = [copy_header]
        for transfer in batch:
            sequence += 1
            encoded.append(encoder.row(sequence, transfer, unknown_totals, unknown_totals))
        encoded.append(copy_trailer)
        data = b"".join(encoded)
        connection = await free.get()
        copies.append(asyncio.create_task(copy(connection, data)))
    await asyncio.gather(*copies)


def _cpu(pids: list[int]) -> float | None:
    """The processes' CPU seconds (user and system), or None if they are not on this machine."""
    total = 0.0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as stat:
                command, rest = stat.read().split(" ", 1)[1].rsplit(")", 1)
            if command != "(postgres":  # (a process of this machine with a remote one's pid)
                return None
            fields = rest.split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):  # gone, or not Linux's /proc format
        return None
    return total
