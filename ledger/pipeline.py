"""Booking batches back to back on several connections, for throughput.

`create_transfers` books a batch in one transaction on one connection, and the two sides take
turns: the server inserts the rows (with their three indexes: about half its work), applies
the accounts' totals and commits while the client waits; the client decides the next batch
while the server waits. On two cores each side then idles a third of the time.

`TransferPipeline` keeps a batch's predecessors in flight. It decides batch N+1 on the books
as they will be once batch N commits (sequence numbers, totals after, chain hash), and streams
its rows in on a second connection while batch N still applies its totals and commits. Only
the end of each batch runs one at a time, in order:
1. batch N+1 ends its COPY only once batch N's COPY has returned, so N holds the chain head's
   lock (the totals trigger takes it first, migration 0008) and N+1's trigger waits on it
   until N has committed or rolled back;
2. N+1 moves the head on only if it is where N+1 was decided to follow: same chain hash, same
   state version (`HeadMoved` otherwise). If N did not commit, or anything else booked or
   closed an account in between, N+1 rolls back whole.

A batch that did not commit (a repeat of a booked id, a head that moved, a lost connection)
is booked again by `create_transfers`, once everything in flight has finished; the pipeline
then reads the head and the accounts afresh. The results are those `create_transfers` gives
for the same batches in the same order; every commit is as durable and as checked.

Batches with linked or two-phase transfers, batches that repeat an id still in flight and
batches that book nothing wait for the pipeline to empty, then go through `create_transfers`.
Accounts the pipeline has not loaded are read while batches are in flight (none of those
touches them, so their committed totals are the ones to decide on).
Concurrent callers are served in the order they call.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from ledger.batch_writer import (
    AccountCache,
    BatchHead,
    HeadMoved,
    RepeatFound,
    account_cache_entries_max,
    accounts_to_load,
    batch_settings,
    check_refused_are_new,
    copy_rows,
    encoded_rows,
    load_accounts,
    record_batch_row,
    widen_send_buffer,
)
from ledger.booking import BatchDecision, decide_batch, malformed_transfers_named
from ledger.chain import (
    TransferRowEncoder,
    batch_digest,
    copy_header,
    copy_trailer,
    next_chain_hash,
)
from ledger.records import Transfer, TransferOutcome, transfers_per_batch_max_default
from ledger.store import all_plain, create_transfers, cyclic_collector_paused


@dataclass(slots=True)
class _Head:
    """ledger_head as it will be once every batch in flight has committed."""

    batch_number: int
    next_sequence: int
    chain_hash: bytes
    state_version: int
    booked_at: datetime
    database_clock: datetime  # the database's clock when the head was read
    read_at_monotonic: float  # this process's monotonic clock then

    def clock(self) -> datetime:
        """The database's clock now, as the time elapsed since it was read tells it."""
        elapsed = time.monotonic() - self.read_at_monotonic
        return self.database_clock + timedelta(seconds=elapsed)


@dataclass(slots=True)
class _Planned:
    """A batch decided and put in flight."""

    batch: BatchHead
    decision: BatchDecision
    rows: bytes  # its ledger_transfers rows, encoded for COPY
    digest: bytes
    before: _Planned | None  # the batch in flight before it
    copied: asyncio.Event = field(default_factory=asyncio.Event)  # its COPY returned or failed
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # committed, or gave up


predecessor_wait_s = 2.0  # see `_rows_after`


class PredecessorStuck(Exception):
    """The batch before did not take the head in time (see `_rows_after`)."""


# Why a batch in flight did not commit, when booking it again is the answer. (A deadlock:
# another writer, holding the head, inserts an id this batch inserted before it waited for
# the head; PostgreSQL cancels one of the two.)
_retryable = (
    HeadMoved,
    RepeatFound,
    asyncpg.UniqueViolationError,
    asyncpg.DeadlockDetectedError,
    PredecessorStuck,
)


class TransferPipeline:
    """Books plain batches with up to `len(connections)` in flight (see the module's doc).

    The connections are the caller's, used only by the pipeline while it lives; two are
    enough on two cores. `create_transfers` may be called from many tasks at once. Batches
    are booked at the database's clock, or at `clock()` when given (as `now` is given to
    `ledger.create_transfers`; raised, like it, to the last batch's time).
    """

    def __init__(
        self,
        connections: Sequence[asyncpg.Connection],
        *,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        assert connections, "a pipeline needs at least one connection"
        self._clock = clock  # None: the database's clock
        self._free: asyncio.Queue[asyncpg.Connection] = asyncio.Queue()
        for connection in connections:
            self._free.put_nowait(connection)
        self._open_connections = len(connections)
        self._turn = asyncio.Lock()  # deciding (or booking alone): one caller at a time
        self._head: _Head | None = None  # None: read it again before the next batch
        self._cache = AccountCache(-1)
        self._in_flight: list[_Planned] = []
        self._bookings: set[asyncio.Future[list[TransferOutcome]]] = set()  # (kept alive)
        self._empty = asyncio.Event()
        self._empty.set()

    async def create_transfers(self, transfers: Sequence[Transfer]) -> list[TransferOutcome]:
        """As `ledger.create_transfers` (booked at the pipeline's clock)."""
        if isinstance(transfers, Transfer):  # a named tuple: it would iterate as its fields
            raise TypeError("create_transfers takes a sequence of transfers, not one transfer")
        transfers = list(transfers)
        if not transfers:
            return []
        with malformed_transfers_named(transfers):
            if len(transfers) > transfers_per_batch_max_default or not all_plain(transfers):
                return await self._book_alone(transfers)
        with cyclic_collector_paused(), malformed_transfers_named(transfers):
            async with self._turn:
                planned = None
                if not self._repeats_in_flight(transfers):
                    planned = await self._decide(transfers)
                if planned is None:
                    return await self._book_alone_holding_turn(transfers)
                try:
                    connection = await self._take()
                except BaseException:
                    self._forget()  # moved on for a batch that will not be booked
                    raise
                self._in_flight.append(planned)
                self._empty.clear()
                # Once in flight a batch runs to its end even if its caller is cancelled: the
                # batches after it were decided on it, and a COPY cut short would leave its
                # connection in a transaction. (As when a commit races a cancellation, the
                # caller does not know whether it was booked; sent again, it finds out.)
                booking = asyncio.ensure_future(self._book_in_flight(connection, planned))
                self._bookings.add(booking)
                booking.add_done_callback(self._bookings.discard)
            return await asyncio.shield(booking)

    async def _book_in_flight(
        self, connection: asyncpg.Connection, planned: _Planned
    ) -> list[TransferOutcome]:
        try:
            try:
                await self._book(connection, planned)
                return planned.decision.outcomes()
            except _retryable:
                # Not committed. Booked again now, after the batches before it and before
                # any after it is decided (those wait for the pipeline to empty), so callers
                # are still served in the order they called.
                if planned.before is not None:
                    await planned.before.finished.wait()
                return await create_transfers(
                    connection, planned.decision.transfers, now=self._now()
                )
        finally:
            planned.finished.set()
            # The batch after it keeps a reference to it; let that be all it keeps (else
            # every batch would keep the one before, rows and all, as long as the pipeline
            # is never empty).
            planned.before = None
            planned.rows = b""
            self._in_flight.remove(planned)
            if not self._in_flight:
                self._empty.set()
            self._give_back(connection)

    async def _take(self) -> asyncpg.Connection:
        if self._open_connections == 0:
            raise ConnectionError("every connection of the transfer pipeline is closed")
        return await self._free.get()

    def _give_back(self, connection: asyncpg.Connection) -> None:
        """A closed connection (lost) is not handed out again."""
        if connection.is_closed():
            self._open_connections -= 1
        else:
            self._free.put_nowait(connection)

    def _repeats_in_flight(self, transfers: list[Transfer]) -> bool:
        if not self._in_flight:
            return False
        ids = [transfer[0].int for transfer in transfers]
        return not all(
            planned.decision.booked_here.keys().isdisjoint(ids) for planned in self._in_flight
        )

    async def _decide(self, transfers: list[Transfer]) -> _Planned | None:
        """Decide the batch on the books as they will be once the batches in flight commit,
        and move the expected head past it. None when it books nothing: whether a refused
        transfer is a repeat needs the books as they are (it is then booked alone)."""
        while True:
            if self._head is None:
                await self._empty.wait()
                await self._sync()
            head, cache = self._head, self._cache
            wanted = accounts_to_load(transfers, {}, cache.states)
            if not wanted:
                break
            if len(cache.states) + len(wanted) > account_cache_entries_max:
                # Full: start afresh, but not while batches in flight were decided on it.
                await self._empty.wait()
                self._forget()
                continue
            # No batch in flight touches an account the pipeline has not loaded, so its
            # totals as committed are the ones to decide on. (Should another writer change
            # it meanwhile, the head will have moved, and this batch rolls back.)
            connection = await self._take()
            try:
                await load_accounts(connection, wanted, cache)
            finally:
                self._give_back(connection)
            if self._head is head and self._cache is cache:
                break
            # (A batch in flight failed meanwhile, and the pipeline forgot what it expected.)
        assert head is not None
        booked_at = max(self._now() or head.clock(), head.booked_at)
        batch = BatchHead(
            head.batch_number + 1,
            booked_at,
            head.chain_hash,
            head.state_version,
            TransferRowEncoder(head.batch_number + 1, booked_at),
        )
        try:
            # (Deciding moves the cached totals on as it goes: if it raises, say on a
            # malformed transfer, they would hold what was never booked.)
            decision = decide_batch(
                transfers, self._cache.states, {}, {}, booked_at, head.next_sequence
            )
            rows = b"".join(encoded_rows(decision.entries, batch.encoder))
        except BaseException:
            self._forget()
            raise
        if not decision.entries:
            return None  # (nothing moved: not the head, not the cached totals)
        digest = batch_digest([rows])
        head.batch_number += 1
        head.next_sequence += len(decision.entries)
        head.chain_hash = next_chain_hash(head.chain_hash, digest)
        head.state_version += 1
        self._cache.state_version = head.state_version
        head.booked_at = booked_at
        before = self._in_flight[-1] if self._in_flight else None
        return _Planned(batch, decision, rows, digest, before)

    def _now(self) -> datetime | None:
        return None if self._clock is None else self._clock()

    def _forget(self) -> None:
        """Drop what the pipeline expects (the head, the accounts): it may not come true."""
        self._head = None
        self._cache = AccountCache(-1)

    async def _sync(self) -> None:
        """Read the head (nothing is in flight); forget the accounts if anything else was
        booked or closed since the pipeline last read it."""
        connection = await self._take()
        try:
            row = await connection.fetchrow(
                "select batch_number, next_sequence, chain_hash, booked_at, state_version,"
                " clock_timestamp() as clock from ledger_head"
            )
        finally:
            self._give_back(connection)
        if self._cache.state_version != row["state_version"]:
            self._cache = AccountCache(row["state_version"])
        self._head = _Head(
            row["batch_number"],
            row["next_sequence"],
            row["chain_hash"],
            row["state_version"],
            row["booked_at"],
            row["clock"],
            time.monotonic(),
        )

    async def _book(self, connection: asyncpg.Connection, planned: _Planned) -> None:
        try:
            async with connection.transaction():
                await connection.execute(batch_settings)
                widen_send_buffer(connection)
                before = planned.before.copied if planned.before is not None else None
                await copy_rows(connection, _rows_after(planned.rows, before))
                planned.copied.set()  # it holds the head now: the next may end its COPY
                await check_refused_are_new(connection, [planned.decision])
                await record_batch_row(
                    connection,
                    planned.batch,
                    planned.decision.entries[0].sequence,
                    len(planned.decision.entries),
                    planned.digest,
                )
        except BaseException:
            self._forget()  # later batches were decided on this one
            raise
        finally:
            planned.copied.set()  # (failed: the next batch may end its COPY, and fail)

    async def _book_alone(self, transfers: list[Transfer]) -> list[TransferOutcome]:
        async with self._turn:
            return await self._book_alone_holding_turn(transfers)

    async def _book_alone_holding_turn(self, transfers: list[Transfer]) -> list[TransferOutcome]:
        """`create_transfers` once nothing is in flight; the pipeline reads the head again
        after it, and keeps the accounts it holds if that booked nothing (a batch of
        repeats, say a terminal sending an upload again: else the next batch would load
        thousands of accounts afresh). Every batch before it has committed or made the
        pipeline forget, so the accounts held are those of the state version expected."""
        await self._empty.wait()
        connection = await self._take()
        try:
            return await create_transfers(connection, transfers, now=self._now())
        finally:
            self._head = None  # `_sync` drops the accounts unless the state version held
            self._give_back(connection)


async def _rows_after(rows: bytes, after: asyncio.Event | None) -> AsyncIterator[bytes]:
    """The batch's COPY data, ended (the server then runs its triggers) only once the batch
    before it has returned from its COPY, i.e. holds the head's lock, or has failed.

    The wait is bounded. It is a wait the database cannot see: were another writer holding
    the head to insert an id of this batch's, it would wait on this batch, this batch on the
    one before, and that one on the head: a deadlock PostgreSQL would not detect. The batch
    before takes the head within milliseconds unless something holds it; after
    `predecessor_wait_s` this batch gives up its COPY (and its rows) and is booked again."""
    yield copy_header + rows + copy_trailer
    if after is not None:
        try:
            await asyncio.wait_for(after.wait(), predecessor_wait_s)
        except TimeoutError:
            raise PredecessorStuck from None
