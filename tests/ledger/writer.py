"""A writing process for the crash tests: books numbered batches of fares, saying when each
begins and ends. Run as `python -m tests.ledger.writer URL FIRST_BATCH BATCHES SIZE [pipelined]`."""

from __future__ import annotations

import asyncio
import sys
import uuid

import asyncpg

from ledger import (
    Account,
    AccountFlags,
    AccountKind,
    Transfer,
    TransferCode,
    TransferPipeline,
    create_accounts,
    create_transfers,
)

revenue = uuid.UUID(int=0x1)
bank = uuid.UUID(int=0x2)
purses_count = 1000
purses = tuple(uuid.UUID(int=(1 << 64) + n) for n in range(purses_count))
fare_rupiah = 3_500


def accounts() -> list[Account]:
    return [
        Account(revenue, AccountKind.operator_revenue, "operator"),
        Account(bank, AccountKind.bank_clearing, "bank"),
    ] + [
        Account(purse, AccountKind.card_purse, str(n), AccountFlags.debits_must_not_exceed_credits)
        for n, purse in enumerate(purses)
    ]


def top_ups() -> list[Transfer]:
    return [
        Transfer(uuid.UUID(int=(2 << 64) + n), bank, purse, 2_000_000, TransferCode.top_up)
        for n, purse in enumerate(purses)
    ]


def batch(number: int, size: int) -> list[Transfer]:
    return [
        Transfer(
            uuid.UUID(int=(3 << 96) + (number << 32) + n),
            purses[(number * size + n) % purses_count],
            revenue,
            fare_rupiah,
            TransferCode.fare,
        )
        for n in range(size)
    ]


async def main(url: str, first: int, batches: int, size: int, pipelined: bool) -> None:
    connection = await asyncpg.connect(url)
    await create_accounts(connection, accounts())
    await create_transfers(connection, top_ups())
    if pipelined:
        await book_pipelined(url, range(first, first + batches), size)
    else:
        for number in range(first, first + batches):
            print(f"begin {number}", flush=True)
            await create_transfers(connection, batch(number, size))
            print(f"done {number}", flush=True)
    await connection.close()


async def book_pipelined(url: str, numbers: range, size: int) -> None:
    """Every batch sent at once through a `TransferPipeline` on two connections: two in
    flight at a time, each said done as it returns (in order)."""
    connections = [await asyncpg.connect(url) for _ in range(2)]
    pipeline = TransferPipeline(connections)

    async def book(number: int) -> None:
        print(f"begin {number}", flush=True)
        await pipeline.create_transfers(batch(number, size))
        print(f"done {number}", flush=True)

    await asyncio.gather(*(book(number) for number in numbers))
    for connection in connections:
        await connection.close()


if __name__ == "__main__":
    url, first, batches, size, *mode = sys.argv[1:]
    asyncio.run(main(url, int(first), int(batches), int(size), mode == ["pipelined"]))
