"""`TransferPipeline` with batches big enough to overlap for real: the same results and books
as one connection booking the same batches one after the other; another writer and an
account closed while batches are in flight; a caller cancelled mid-flight."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from ledger import (
    Account,
    AccountFlags,
    AccountKind,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferOutcome,
    TransferPipeline,
    close_account,
    create_accounts,
    create_transfers,
)
from ledger.audit import check_ledger
from tests.conftest import fresh_database
from tests.waiting import wait_until_async

R = CreateTransferResult
cards = [uuid.UUID(int=(0xCA7D << 64) + n) for n in range(300)]
revenue, bank = uuid.UUID(int=0xAE), uuid.UUID(int=0xBA)
fare = 3_500


async def open_books(connection: asyncpg.Connection) -> None:
    accounts = [
        Account(revenue, AccountKind.operator_revenue, "operator"),
        Account(bank, AccountKind.bank_clearing, "bank"),
    ] + [
        Account(
            card, AccountKind.card_purse, f"card-{n}", AccountFlags.debits_must_not_exceed_credits
        )
        for n, card in enumerate(cards)
    ]
    assert set(await create_accounts(connection, accounts)) == {CreateAccountResult.created}
    # Top-ups of 30..70 fares, against about 53 fares a card: some run out (exceeds_credits).
    picker = random.Random(7)
    top_ups = [
        Transfer(uuid.UUID(int=(0x70 << 64) + n), bank, card, picker.randrange(30, 71) * fare, 1)
        for n, card in enumerate(cards)
    ]
    top_ups = [t for t in top_ups if t.amount]
    outcomes = await create_transfers(connection, top_ups)
    assert {o.result for o in outcomes} == {R.created}


def fare_batches(
    count: int, size: int, seed: int, repeating: Sequence[int] = ()
) -> list[list[Transfer]]:
    """Fares on random cards. The batches numbered in `repeating` also repeat some fares of
    the batch just before (still in flight then), exactly or with another amount."""
    picker = random.Random(seed)
    batches: list[list[Transfer]] = []
    serial = 0
    for number in range(count):
        batch = []
        for _ in range(size):
            if number in repeating and picker.random() < 0.02:
                earlier = picker.choice(batches[-1])
                batch.append(earlier if picker.random() < 0.5 else earlier._replace(amount=1))
                continue
            serial += 1
            card = picker.choice(cards)
            batch.append(
                Transfer(
                    uuid.UUID(int=(seed << 64) + serial), card, revenue, fare, TransferCode.fare
                )
            )
        batches.append(batch)
    return batches


@pytest.fixture
async def second_database(postgres_server_url: str, migrated_template: str) -> AsyncIterator[str]:
    async with fresh_database(postgres_server_url, migrated_template) as url:
        yield url


async def pipeline_on(
    url: str, count: int = 2
) -> tuple[TransferPipeline, list[asyncpg.Connection]]:
    connections = [await asyncpg.connect(url) for _ in range(count)]
    return TransferPipeline(connections), connections


async def send_at_once(
    pipeline: TransferPipeline, batches: Sequence[list[Transfer]]
) -> list[list[TransferOutcome]]:
    calls = [asyncio.ensure_future(pipeline.create_transfers(batch)) for batch in batches]
    return list(await asyncio.gather(*calls))


async def a_copy_waits_for_a_lock(connection: asyncpg.Connection) -> bool:
    """Whether a pipelined batch's COPY waits for a lock (its trigger, for the head)."""
    return bool(
        await connection.fetchval(
            # (a transaction sees one snapshot of the statistics unless told otherwise)
            "select pg_stat_clear_snapshot(), exists (select 1 from pg_stat_activity"
            " where datname = current_database() and wait_event_type = 'Lock'"
            " and query like 'COPY%')",
            column=1,
        )
    )


async def copies_with_all_their_rows(connection: asyncpg.Connection, rows: int) -> int:
    """How many COPYs into the books have taken in all `rows` of their batch (their rows are
    in the table, and in its unique index, for the other writers to run into)."""
    return await connection.fetchval(
        "select pg_stat_clear_snapshot(), count(*) from pg_stat_progress_copy"
        " where datname = current_database() and tuples_processed = $1",
        rows,
        column=1,
    )


async def totals(connection: asyncpg.Connection) -> dict[uuid.UUID, tuple[int, ...]]:
    rows = await connection.fetch(
        "select id, debits_pending, debits_posted, credits_pending, credits_posted"
        " from ledger_accounts"
    )
    return {row[0]: tuple(row[1:]) for row in rows}


async def test_pipelined_batches_book_what_one_connection_books(
    database_url: str, second_database: str
) -> None:
    batches = fare_batches(count=8, size=2_000, seed=11, repeating=(2, 5))
    one = await asyncpg.connect(second_database)
    pipeline, connections = await pipeline_on(database_url)
    try:
        await open_books(one)
        await open_books(connections[0])
        alone = [await create_transfers(one, batch) for batch in batches]
        pipelined = await send_at_once(pipeline, batches)

        assert [[o.result for o in b] for b in pipelined] == [[o.result for o in b] for b in alone]
        assert [[o.sequence for o in b] for b in pipelined] == [
            [o.sequence for o in b] for b in alone
        ]
        results = {o.result for b in pipelined for o in b}
        assert {R.created, R.exists, R.exists_with_different_amount, R.exceeds_credits} <= results
        assert await totals(connections[0]) == await totals(one)
        assert await check_ledger(connections[0]) == []
    finally:
        for connection in (one, *connections):
            await connection.close()


async def test_another_writer_and_a_closed_account_while_batches_are_in_flight(
    database_url: str,
) -> None:
    pipeline, connections = await pipeline_on(database_url)
    other = await asyncpg.connect(database_url)
    try:
        await open_books(other)
        batches = fare_batches(count=6, size=2_000, seed=12)
        others = fare_batches(count=2, size=1_000, seed=13)

        async def other_writer() -> list[list[TransferOutcome]]:
            # books while the pipeline has batches in flight
            await wait_until_async(
                lambda: pipeline._in_flight,
                "the pipeline has a batch in flight",
                within_s=30,
                every_s=0.001,
            )
            booked = [await create_transfers(other, others[0])]
            await close_account(other, cards[0])
            booked.append(await create_transfers(other, others[1]))
            return booked

        pipelined, by_other = await asyncio.gather(send_at_once(pipeline, batches), other_writer())
        afterwards = await pipeline.create_transfers(
            [Transfer(uuid.uuid4(), cards[0], revenue, 1, TransferCode.fare)]
        )
        assert afterwards[0].result is R.debit_account_closed

        # Every batch booked whole, once: its created transfers are in the books exactly
        # once, with the sequences they were answered with; the books add up.
        answered = {
            o.id: o.sequence for b in [*pipelined, *by_other] for o in b if o.result is R.created
        }
        stored = dict(
            await other.fetch(
                "select id, sequence from ledger_transfers where id = any($1::uuid[])",
                list(answered),
            )
        )
        assert stored == answered
        assert await check_ledger(other) == []
    finally:
        for connection in (other, *connections):
            await connection.close()


async def test_a_caller_cancelled_while_its_batch_is_in_flight(database_url: str) -> None:
    """The batch runs to its end (the batches after it were decided on it); the caller,
    sending it again, learns it was booked; the pipeline goes on."""
    pipeline, connections = await pipeline_on(database_url)
    try:
        await open_books(connections[0])
        batches = fare_batches(count=4, size=3_000, seed=14)
        calls = [asyncio.ensure_future(pipeline.create_transfers(batch)) for batch in batches]
        await wait_until_async(
            lambda: len(pipeline._in_flight) >= 2,
            "the first two batches are in flight",
            within_s=30,
            every_s=0.001,
        )
        calls[1].cancel()
        done = await asyncio.gather(*calls, return_exceptions=True)
        assert isinstance(done[1], asyncio.CancelledError)
        again = await pipeline.create_transfers(batches[1])
        created_before = {o.id for o in again if o.result is R.exists}
        assert created_before and {o.result for o in again} <= {R.exists, R.exceeds_credits}
        assert await pipeline.create_transfers([]) == []
        later = await pipeline.create_transfers(fare_batches(count=1, size=100, seed=15)[0])
        assert {o.result for o in later} <= {R.created, R.exceeds_credits}
        assert await check_ledger(connections[0]) == []
    finally:
        for connection in connections:
            await connection.close()


async def test_the_same_fare_from_the_pipeline_and_another_writer_at_once(
    database_url: str,
) -> None:
    """The pipeline's batch inserts a fare, then waits for the head, which another writer
    holds while it inserts the same fare: a deadlock, which PostgreSQL breaks by cancelling
    one of them. The pipeline books its batch again; the fare is booked once."""
    pipeline, connections = await pipeline_on(database_url)
    other = await asyncpg.connect(database_url)
    try:
        await open_books(other)
        batch = fare_batches(count=1, size=500, seed=16)[0]
        async with other.transaction():
            await other.execute("select 1 from ledger_head for update")
            sending = asyncio.ensure_future(pipeline.create_transfers(batch))
            await wait_until_async(
                lambda: a_copy_waits_for_a_lock(other),
                "the pipeline's rows are in and its trigger waits for the head",
                within_s=30,
            )
            other_outcomes = await create_transfers(other, batch[:1])
        pipelined = await sending
        results = {other_outcomes[0].result, pipelined[0].result}
        assert results == {R.created, R.exists}
        assert (
            await other.fetchval("select count(*) from ledger_transfers where id = $1", batch[0].id)
            == 1
        )
        assert await check_ledger(other) == []
    finally:
        for connection in (other, *connections):
            await connection.close()


async def test_a_writer_holding_the_head_and_inserting_an_id_of_a_streaming_batch(
    database_url: str,
) -> None:
    """Another writer holds the head while batch N waits for it and batch N+1, its rows in,
    waits for N before ending its COPY; the writer then inserts one of N+1's ids and waits
    on N+1. PostgreSQL sees no deadlock (one wait is the pipeline's), so N+1 gives up after
    `predecessor_wait_s`; everything is then booked, each fare once."""
    pipeline, connections = await pipeline_on(database_url)
    other = await asyncpg.connect(database_url)
    watcher = await asyncpg.connect(database_url)
    try:
        await open_books(other)
        first, second = fare_batches(count=2, size=3_000, seed=17)

        async with other.transaction():
            await other.execute("select 1 from ledger_head for update")
            calls = [asyncio.ensure_future(pipeline.create_transfers(b)) for b in (first, second)]

            async def both_copies_hold_their_rows() -> bool:
                return (
                    len(pipeline._in_flight) == 2
                    and await a_copy_waits_for_a_lock(watcher)
                    and await copies_with_all_their_rows(watcher, len(second)) == 2
                )

            await wait_until_async(
                both_copies_hold_their_rows,
                "the first batch waits for the head and the second has all its rows in",
                within_s=30,
            )
            by_other = await asyncio.wait_for(create_transfers(other, second[:1]), 30)
        pipelined = await asyncio.wait_for(asyncio.gather(*calls), 30)

        assert by_other[0].result is R.created
        assert pipelined[1][0].result is R.exists
        assert pipelined[1][0].sequence == by_other[0].sequence
        assert (
            await other.fetchval(
                "select count(*) from ledger_transfers where id = $1", second[0].id
            )
            == 1
        )
        assert await check_ledger(other) == []
    finally:
        for connection in (other, watcher, *connections):
            await connection.close()


async def test_a_batch_that_fails_to_decide_leaves_no_trace_in_what_the_pipeline_expects(
    database_url: str,
) -> None:
    """A malformed transfer raising while its batch is decided must not leave the totals of
    the transfers decided before it in the pipeline's memory."""
    pipeline, connections = await pipeline_on(database_url)
    try:
        await open_books(connections[0])
        card = cards[0]
        available = await connections[0].fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1", card
        )
        spend_all = Transfer(uuid.uuid4(), card, revenue, available, TransferCode.fare)
        malformed = Transfer(uuid.uuid4(), card, revenue, 1, TransferCode.fare, terminal_id=5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await pipeline.create_transfers([spend_all, malformed])
        top_up = Transfer(uuid.uuid4(), bank, cards[1], 1, TransferCode.top_up)
        outcomes = await pipeline.create_transfers([spend_all, top_up])
        assert [o.result for o in outcomes] == [R.created, R.created]
        assert await check_ledger(connections[0]) == []
    finally:
        for connection in connections:
            await connection.close()


async def test_a_batch_that_books_nothing_keeps_the_accounts_the_pipeline_holds(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch the pipeline decides books nothing (every fare more than its card holds) goes
    to `create_transfers`, which books nothing either: the pipeline keeps its accounts rather
    than loading them all again for the next batch. When something else books meanwhile,
    it loads them afresh."""
    import ledger.pipeline

    loaded: list[int] = []
    load_accounts = ledger.pipeline.load_accounts

    async def counting(connection, wanted, cache):
        loaded.append(len(wanted))
        await load_accounts(connection, wanted, cache)

    monkeypatch.setattr(ledger.pipeline, "load_accounts", counting)
    pipeline, connections = await pipeline_on(database_url)
    try:
        await open_books(connections[0])
        first, second = fare_batches(count=2, size=1_000, seed=16)
        assert R.created in {o.result for o in await pipeline.create_transfers(first)}
        assert sum(loaded) > 100  # the cards the first batch names
        loaded.clear()
        too_dear = [t._replace(id=uuid.uuid4(), amount=10**9) for t in first[:300]]
        refused = await pipeline.create_transfers(too_dear)
        assert {o.result for o in refused} == {R.exceeds_credits}
        fresh = [t._replace(id=uuid.uuid4()) for t in first[:300]]
        assert R.created in {o.result for o in await pipeline.create_transfers(fresh)}
        assert loaded == []  # the same cards: held all along
        # Another writer books. The pipeline's next batch finds the head moved and is booked
        # again by `create_transfers`; the batch after it loads the same cards afresh.
        other = Transfer(uuid.uuid4(), bank, cards[0], fare, TransferCode.top_up)
        assert [o.result for o in await create_transfers(connections[1], [other])] == [R.created]
        assert R.created in {o.result for o in await pipeline.create_transfers(second)}
        loaded.clear()
        fresh = [t._replace(id=uuid.uuid4()) for t in first[:300]]
        assert R.created in {o.result for o in await pipeline.create_transfers(fresh)}
        assert sum(loaded) > 100
        assert await check_ledger(connections[0]) == []
    finally:
        for connection in connections:
            await connection.close()
