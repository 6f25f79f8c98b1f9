"""Writing a decided batch of transfers: the pieces `ledger.store` and `ledger.pipeline` share.

Both book a batch the same way once it is decided: the session settings of a booking
transaction, the accounts a connection holds between batches and how missing ones are loaded,
the rows encoded for one binary COPY into ledger_transfers, the check that transfers refused
on the state of the books are not repeats, and the batch row that moves the chain head on
(only if it is still where the batch was decided to follow). `store` books one batch at a
time; `pipeline` keeps several in flight.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter, itemgetter

import asyncpg

from ledger.booking import BatchDecision, Entry, PendingState
from ledger.chain import TransferRowEncoder, digest_format, next_chain_hash, transfer_columns
from ledger.records import CreateTransferResult, Transfer

# Durable commits, said explicitly. A batch touches a few thousand of maybe millions of
# accounts: look each up by its primary key rather than hashing the whole table.
# (Only in a transaction of our own: a SET LOCAL made inside a caller's transaction would
# last until the caller commits and slow the caller's own joins.)
durable_commit = "set local synchronous_commit to on"
batch_settings = (
    f"{durable_commit}; set local enable_hashjoin to off; set local enable_mergejoin to off"
)

account_cache_entries_max = 1_000_000  # accounts a connection keeps in memory between batches


@dataclass(slots=True)
class AccountCache:
    """Accounts as of `state_version`: id.int -> [flags, currency, debits_pending,
    debits_posted, credits_pending, credits_posted]."""

    state_version: int
    states: dict[int, list] = field(default_factory=dict)


_debit_of, _credit_of, _int_of = itemgetter(1), itemgetter(2), attrgetter("int")


def accounts_to_load(
    transfers: list[Transfer], pendings: dict[int, PendingState], states: dict[int, list]
) -> dict[int, uuid.UUID]:
    """The accounts the batch names (its holds' accounts too) that `states` lacks."""
    try:
        # In C, with no Python frame per transfer: this ran at 0.7 µs a transfer as a loop.
        named = set(map(_int_of, map(_debit_of, transfers)))
        named.update(map(_int_of, map(_credit_of, transfers)))
    except AttributeError:  # a transfer without an account (refused when decided)
        named = {
            account.int
            for transfer in transfers
            for account in (transfer[1], transfer[2])
            if account is not None
        }
    for pending in pendings.values():
        for account_id in (pending.transfer.debit_account_id, pending.transfer.credit_account_id):
            if account_id is not None:
                named.add(account_id.int)
    return {account_id: uuid.UUID(int=account_id) for account_id in named.difference(states)}


async def load_accounts(
    connection: asyncpg.Connection, wanted: dict[int, uuid.UUID], cache: AccountCache
) -> None:
    """Add the `wanted` accounts, as the connection sees them now, to `cache` (which the
    caller has made room in: the cache holds at most `account_cache_entries_max`)."""
    states = cache.states
    rows = await connection.fetch(
        "select id, flags, currency, debits_pending, debits_posted, credits_pending,"
        " credits_posted from ledger_accounts join unnest($1::uuid[]) as wanted (id) using (id)",
        list(wanted.values()),
    )
    for row in rows:
        states[row[0].int] = list(row[1:])


@dataclass(frozen=True, slots=True)
class BatchHead:
    """Where a batch goes in the chain: its number, time, predecessor and encoder."""

    number: int
    booked_at: datetime
    previous_chain_hash: bytes
    state_version: int  # ledger_head's before this batch
    encoder: TransferRowEncoder


def encoded_rows(entries: Sequence[Entry], encoder: TransferRowEncoder) -> list[bytes]:
    """The ledger_transfers rows of booked entries, as binary COPY tuples (ledger.chain)."""
    row = encoder.row
    return [row(e.sequence, e.transfer, e.debit_after, e.credit_after) for e in entries]


async def copy_rows(connection: asyncpg.Connection, source: AsyncIterator[bytes]) -> None:
    """COPY binary rows (framed by `copy_header` and `copy_trailer`) into ledger_transfers."""
    await connection.copy_to_table(
        "ledger_transfers", source=source, columns=transfer_columns, format="binary"
    )


class RepeatFound(Exception):
    """A plain batch decided as new repeats a booked id: book it again knowing the repeats."""


# Results decided on the state of the books, which come after the idempotency checks: a
# transfer refused with one of these might be a repeat, whose answer is `exists*` instead.
_created = CreateTransferResult.created
_state_results = frozenset(
    tuple(CreateTransferResult)[
        tuple(CreateTransferResult).index(CreateTransferResult.exists) + 1 :
    ]
)


async def check_refused_are_new(
    connection: asyncpg.Connection, decisions: list[BatchDecision]
) -> None:
    """A plain batch decided as if none of its ids were booked: a repeat that was to be
    booked is refused by the unique index; one refused on the state of the books must be
    looked up (the rows just copied included). `RepeatFound` if any was booked before."""
    refused = [
        transfer.id
        for decision in decisions
        for transfer, result in zip(decision.transfers, decision.results)
        if result is not _created and result in _state_results  # (enum hashing is slow)
    ]
    if refused and await connection.fetchval(
        "select exists (select 1 from ledger_transfers where id = any($1::uuid[]))", refused
    ):
        raise RepeatFound


copy_send_buffer_bytes = 4 << 20  # room in the kernel for a whole batch's COPY data


def widen_send_buffer(connection: asyncpg.Connection) -> None:
    """asyncpg hands COPY data to the socket 512 KiB at a time and, when the socket does not
    take it all (the default send buffer is ~208 KiB), waits for the server to drain it: the
    client and the server then take turns instead of working at once. A send buffer that
    holds a batch lets the server insert one part while the client decides the next. (The
    kernel caps it at net.core.wmem_max; asyncpg has no public handle on its socket.)"""
    transport = getattr(connection, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < (
        copy_send_buffer_bytes
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, copy_send_buffer_bytes)


_record_batch = f"""
    with batch as (
        insert into ledger_batches (batch_number, first_sequence, last_sequence,
                                    transfer_count, booked_at, digest, chain_hash, digest_format)
        values ($1, $2, $3, $4, $5, $6, $7, {digest_format})
    )
    update ledger_head set batch_number = $1, next_sequence = $3 + 1, chain_hash = $7,
                           booked_at = $5, state_version = state_version + 1
     where chain_hash = $8 and state_version = $9
"""


class HeadMoved(Exception):
    """The chain head is not where the batch was decided to follow: another batch (or an
    account closed) came between. Nothing of the batch is booked; decide it again."""


async def record_batch_row(
    connection: asyncpg.Connection,
    batch: BatchHead,
    first_sequence: int,
    row_count: int,
    digest: bytes,
) -> None:
    """The batch row with its digest and chain hash, and the head moved on, provided it
    still is where the batch was decided (else `HeadMoved`)."""
    status = await connection.execute(
        _record_batch,
        batch.number,
        first_sequence,
        first_sequence + row_count - 1,
        row_count,
        batch.booked_at,
        digest,
        next_chain_hash(batch.previous_chain_hash, digest),
        batch.previous_chain_hash,
        batch.state_version,
    )
    if status != "UPDATE 1":
        raise HeadMoved
