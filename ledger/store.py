"""Booking and reading the ledger in PostgreSQL (asyncpg).

A batch of transfers is booked in one transaction, in three steps:
1. prefetch: lock the chain head (the one row every booking batch locks first, so batches
   apply one at a time and the hash chain has one order), then load the batch's accounts
   (those this connection does not hold from earlier batches: its copy is valid while
   `ledger_head.state_version` is unchanged, i.e. nobody else booked or closed anything)
   and, for batches with two-phase or linked transfers, the transfers already booked under
   the batch's ids and the holds it posts or voids;
2. decide: `ledger.booking.decide_batch`, pure Python, computes every result and the rows,
   each carrying both accounts' totals after it;
3. write: one binary COPY of the new transfer rows (`ledger.chain` encodes them, and the
   same bytes are hashed for the chain); at its end a trigger sets each touched account's
   totals to those of its last posting in the batch (one UPDATE: a hot account is written
   once per batch, however many transfers touch it; the outcomes and digest are made
   meanwhile); one batch row with its hash and the head moved on; then a durable commit
   (synchronous_commit on). At commit the database checks that the account changes balance
   and match the transfers (see migrations/0001 and 0005).

Plain batches (no two-phase or linked transfer: fares, sales, top-ups) skip the lookup of
their ids and are decided as if none were booked before, in parts whose rows stream to the
server while the next part is decided. A repeat shows itself either as a unique violation on
`ledger_transfers.id` (it was to be booked again) or, for the few transfers refused on the
state of the books, by a lookup of just those ids; then the transaction rolls back whole and
the batch is booked again the careful way, knowing its repeats. Results are the same.

The writing pieces this module shares with `ledger.pipeline` (session settings, the account
cache, COPY rows, the repeat check, the batch row) are in `ledger.batch_writer`.

Why one lock for the whole ledger rather than row locks in id order: a batch of 8,190
transfers touches thousands of accounts; row locks taken by concurrent batches would have
to be taken in one global order and would still serialise on every hot account (operator
revenue is in every fare batch). One lock costs nothing extra, makes deadlocks impossible,
gives the hash chain its order, and lets the decide step trust the totals it loaded. Batches
are big, so the lock is held for few, long, efficient transactions.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from ledger.batch_writer import (
    AccountCache,
    BatchHead,
    RepeatFound,
    account_cache_entries_max,
    accounts_to_load,
    batch_settings,
    check_refused_are_new,
    copy_rows,
    durable_commit,
    encoded_rows,
    load_accounts,
    record_batch_row,
    widen_send_buffer,
)
from ledger.booking import (
    BatchDecision,
    Existing,
    PendingState,
    decide_batch,
    malformed_transfers_named,
)
from ledger.chain import (
    TransferRowEncoder,
    batch_digest,
    copy_header,
    copy_trailer,
    transfer_columns,
)
from ledger.records import (
    Account,
    AccountFlags,
    AccountKind,
    AccountStatementLine,
    Balances,
    BookedAccount,
    BookedTransfer,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferFlags,
    TransferOutcome,
    accounts_per_batch_max,
    derive_id,
    id_max,
    id_zero,
    owner_reference_length_max,
    resolve_flags,
    transfers_per_batch_max_default,
)

_select_transfer_columns = ", ".join(transfer_columns)
_not_plain = int(~TransferFlags.force)  # any flag but force: linked or two-phase
_no_flags = TransferFlags.none
statement_lines_max = 10_000


# ---------------------------------------------------------------------------- accounts


_account_kinds = frozenset(AccountKind)


def _validate_account(account: Account) -> CreateAccountResult | None:
    assert isinstance(account.id, uuid.UUID), "account ids are uuid.UUID"
    if account.id == id_zero:
        return CreateAccountResult.id_must_not_be_zero
    if account.id == id_max:
        return CreateAccountResult.id_must_not_be_max
    both = AccountFlags.debits_must_not_exceed_credits | AccountFlags.credits_must_not_exceed_debits
    if account.flags & both == both:
        return CreateAccountResult.flags_are_mutually_exclusive
    if account.kind not in _account_kinds:  # (stored, it would break every read and export)
        return CreateAccountResult.kind_must_be_an_account_kind
    currency = account.currency
    if len(currency) != 3 or not (currency.isascii() and currency.isalpha() and currency.isupper()):
        return CreateAccountResult.currency_must_be_three_letters
    if len(account.owner_reference) > owner_reference_length_max:
        return CreateAccountResult.owner_reference_too_long
    return None


def _compare_account(account: Account, booked: Account) -> CreateAccountResult:
    if account.kind != booked.kind:
        return CreateAccountResult.exists_with_different_kind
    if account.flags != booked.flags:
        return CreateAccountResult.exists_with_different_flags
    if account.currency != booked.currency:
        return CreateAccountResult.exists_with_different_currency
    if account.owner_reference != booked.owner_reference:
        return CreateAccountResult.exists_with_different_owner_reference
    return CreateAccountResult.exists


def _account_from_row(row: Any) -> Account:
    return Account(
        id=row["id"],
        kind=AccountKind(row["kind"]),
        owner_reference=row["owner_reference"],
        flags=AccountFlags(row["flags"]),
        currency=row["currency"],
    )


async def create_accounts(
    connection: asyncpg.Connection, accounts: Sequence[Account]
) -> list[CreateAccountResult]:
    """Open accounts (all totals zero). A repeat with the same fields answers `exists`."""
    if len(accounts) > accounts_per_batch_max:
        return [CreateAccountResult.batch_too_large] * len(accounts)
    results: list[CreateAccountResult | None] = [_validate_account(a) for a in accounts]
    first: dict[uuid.UUID, Account] = {}
    for index, account in enumerate(accounts):
        if results[index] is None and account.id not in first:
            first[account.id] = account
    async with connection.transaction():
        inserted = await connection.fetch(
            """
            insert into ledger_accounts (id, kind, currency, owner_reference, flags, created_at)
            select id, kind, currency, owner_reference, flags, clock_timestamp()
              from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int[])
                   as a(id, kind, currency, owner_reference, flags)
            order by id
            on conflict (id) do nothing
            returning id
            """,
            list(first),
            [str(a.kind) for a in first.values()],
            [a.currency for a in first.values()],
            [a.owner_reference for a in first.values()],
            [int(a.flags) for a in first.values()],
        )
        created = {row["id"] for row in inserted}
        others = [account_id for account_id in first if account_id not in created]
        stored = {
            row["id"]: _account_from_row(row)
            for row in await connection.fetch(
                "select * from ledger_accounts where id = any($1::uuid[])", others
            )
        }
    answered: set[uuid.UUID] = set()
    for index, account in enumerate(accounts):
        if results[index] is not None:
            continue
        if account.id in created and account.id not in answered:
            results[index] = CreateAccountResult.created
            answered.add(account.id)
        else:
            booked = stored.get(account.id) or first[account.id]
            results[index] = _compare_account(account, booked)
    return [result for result in results if result is not None]


def _balances(row: Any, prefix: str = "", suffix: str = "") -> Balances:
    return Balances(
        row[prefix + "debits_pending" + suffix],
        row[prefix + "debits_posted" + suffix],
        row[prefix + "credits_pending" + suffix],
        row[prefix + "credits_posted" + suffix],
    )


async def lookup_accounts(
    connection: asyncpg.Connection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, BookedAccount]:
    rows = await connection.fetch(
        "select * from ledger_accounts where id = any($1::uuid[])", list(ids)
    )
    return {
        row["id"]: BookedAccount(_account_from_row(row), row["created_at"], _balances(row))
        for row in rows
    }


async def find_accounts(
    connection: asyncpg.Connection,
    *,
    kind: AccountKind | None = None,
    owner: str | None = None,
    owner_contains: str | None = None,
    limit: int = 1000,
) -> list[BookedAccount]:
    """Accounts by kind and owner reference (exactly `owner`, or containing `owner_contains`,
    ignoring case), ordered by kind, owner and creation; at most `limit`."""
    rows = await connection.fetch(
        """select * from ledger_accounts
            where ($1::text is null or kind = $1)
              and ($2::text is null or owner_reference = $2)
              and ($3::text is null or strpos(lower(owner_reference), lower($3)) > 0)
            order by kind, owner_reference, created_at, id
            limit $4""",
        None if kind is None else kind.value,
        owner,
        owner_contains,
        limit,
    )
    return [
        BookedAccount(_account_from_row(row), row["created_at"], _balances(row)) for row in rows
    ]


async def lock_head(connection: asyncpg.Connection) -> None:
    """Take the ledger's head lock until the caller's transaction ends: no batch books
    meanwhile, so balances read after it stay true until the caller's own booking (a
    read-then-book, such as moving a whole balance and closing the account)."""
    assert connection.is_in_transaction(), "the lock lasts as long as the caller's transaction"
    await connection.execute("update ledger_head set state_version = state_version + 1")


async def close_account(connection: asyncpg.Connection, account_id: uuid.UUID) -> bool:
    """Mark an account closed: later transfers touching it are refused (voids still pass)."""
    async with connection.transaction():
        await lock_head(connection)  # no batch is deciding on the old flags meanwhile
        status = await connection.execute(
            "update ledger_accounts set flags = flags | $2 where id = $1",
            account_id,
            int(AccountFlags.closed),
        )
    return bool(status.endswith(" 1"))


# ---------------------------------------------------------------------------- transfers

_account_caches: weakref.WeakKeyDictionary[asyncpg.Connection, AccountCache] = (
    weakref.WeakKeyDictionary()
)


def _transfer_from_row(row: Any) -> Transfer:
    return Transfer(
        id=row["id"],
        debit_account_id=row["debit_account_id"],
        credit_account_id=row["credit_account_id"],
        amount=row["amount"],
        code=row["code"],
        flags=TransferFlags(row["flags"]),
        pending_id=row["pending_id"],
        timeout_s=row["timeout_s"],
        terminal_id=row["terminal_id"],
        terminal_sequence=row["terminal_sequence"],
        card_number=row["card_number"],
        card_counter=row["card_counter"],
        bank_reference=row["bank_reference"],
        settlement_batch=row["settlement_batch"],
        metadata=row["metadata"],
    )


def _booked_from_row(row: Any) -> BookedTransfer:
    return BookedTransfer(
        transfer=_transfer_from_row(row),
        sequence=row["sequence"],
        batch_number=row["batch_number"],
        booked_at=row["booked_at"],
        debit_balances_after=_balances(row, "debit_", "_after"),
        credit_balances_after=_balances(row, "credit_", "_after"),
    )


async def lookup_transfers(
    connection: asyncpg.Connection, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, BookedTransfer]:
    rows = await connection.fetch(
        f"select {_select_transfer_columns} from ledger_transfers where id = any($1::uuid[])",
        list(ids),
    )
    return {row["id"]: _booked_from_row(row) for row in rows}


async def create_transfers(
    connection: asyncpg.Connection,
    transfers: Sequence[Transfer],
    *,
    now: datetime | None = None,
    transfers_per_batch_max: int = transfers_per_batch_max_default,
) -> list[TransferOutcome]:
    """Book a batch; one outcome per transfer, in order. See `CreateTransferResult`.

    `now` is the booking time (default: the database clock); booking times never go back,
    so an earlier `now` is raised to the last batch's time. The whole batch commits in one
    transaction; if it raises (I/O), nothing of it is booked and it can be retried as is.
    Called inside a transaction of the caller's, it books within it (a savepoint) and holds
    the ledger's head lock until the caller commits: keep such transactions short.
    """
    assert transfers_per_batch_max > 0
    if isinstance(transfers, Transfer):  # a named tuple: it would iterate as its fields
        raise TypeError("create_transfers takes a sequence of transfers, not one transfer")
    if len(transfers) > transfers_per_batch_max:
        return [
            TransferOutcome(transfer.id, CreateTransferResult.batch_too_large)
            for transfer in transfers
        ]
    if not transfers:
        return []
    transfers = list(transfers)
    in_callers_transaction = connection.is_in_transaction()
    attempt = 1
    with cyclic_collector_paused(), malformed_transfers_named(transfers):
        while True:
            try:
                return await _book_checking_repeats(connection, transfers, now)
            except asyncpg.DeadlockDetectedError:
                # Only with a `TransferPipeline` writing too: its batch inserted an id this
                # batch inserts, and waits for the head this one holds. PostgreSQL cancelled
                # this one; nothing of it is booked. Again, once the other has gone on (not
                # within the caller's transaction, which still holds the head).
                if in_callers_transaction or attempt == deadlock_attempts:
                    raise
                attempt += 1


deadlock_attempts = 3


_collector_pauses = 0  # callers inside `cyclic_collector_paused` (tasks of one event loop)
_collector_was_enabled = False


@contextlib.contextmanager
def cyclic_collector_paused() -> Iterator[None]:
    """A batch allocates tens of thousands of tuples and records, so Python's cyclic garbage
    collector would run dozens of times per batch and walk every live object (the account
    cache too) several times: a fifth of the client's time. Nothing a batch makes forms a
    reference cycle; the collector is paused while it is booked and runs again after.
    The back office's upload ingest pauses it the same way around a whole upload batch.
    Concurrent callers (tasks of one event loop, e.g. a `TransferPipeline`'s) share one
    pause: the collector runs again when the last of them is done, not in the middle of
    another's batch."""
    global _collector_pauses, _collector_was_enabled
    if _collector_pauses == 0:
        _collector_was_enabled = gc.isenabled()
        gc.disable()
    _collector_pauses += 1
    try:
        yield
    finally:
        _collector_pauses -= 1
        if _collector_pauses == 0 and _collector_was_enabled:
            gc.enable()


def all_plain(transfers: Sequence[Transfer]) -> bool:
    """No linked or two-phase transfer (`force` is fine): a batch for the fast path."""
    for transfer in transfers:
        flags = transfer.flags
        if flags is not _no_flags and int(flags) & _not_plain:  # (int(): ~130 ns)
            return False
    return True


async def _book_checking_repeats(
    connection: asyncpg.Connection, transfers: list[Transfer], now: datetime | None
) -> list[TransferOutcome]:
    if all_plain(transfers):
        # Plain transfers (the bulk: fares, sales) are booked as if none of their ids were
        # booked before; the unique index on the id says otherwise (a repeat: rare), and
        # then the batch, rolled back whole, is booked again knowing the repeats.
        try:
            return await _book(connection, transfers, now, optimistic=True)
        except RepeatFound:
            pass
        except asyncpg.UniqueViolationError as error:
            if error.constraint_name != "ledger_transfers_id":
                raise
    return await _book(connection, transfers, now, optimistic=False)


async def _book(
    connection: asyncpg.Connection,
    transfers: list[Transfer],
    now: datetime | None,
    *,
    optimistic: bool,
) -> list[TransferOutcome]:
    # The accounts this connection loaded before, valid while no one else changed any
    # (ledger_head.state_version). Taken out while in use: if anything below raises, it is
    # simply dropped. Not used inside a caller's transaction, which might still roll back.
    # Nor on a pool's connection proxy: one per `acquire`, and no weak reference to key on.
    in_callers_transaction = connection.is_in_transaction()
    cacheable = not in_callers_transaction and not isinstance(
        connection, asyncpg.pool.PoolConnectionProxy
    )
    cache = _account_caches.pop(connection, None) if cacheable else None
    async with connection.transaction():
        await connection.execute(durable_commit if in_callers_transaction else batch_settings)
        head = await connection.fetchrow(
            "select batch_number, next_sequence, chain_hash, booked_at, state_version,"
            " clock_timestamp() as clock from ledger_head for update"
        )
        if cache is None or cache.state_version != head["state_version"]:
            cache = AccountCache(head["state_version"])
        booked_at = max(now or head["clock"], head["booked_at"])
        batch = BatchHead(
            head["batch_number"] + 1,
            booked_at,
            head["chain_hash"],
            head["state_version"],
            TransferRowEncoder(head["batch_number"] + 1, booked_at),
        )
        next_sequence = head["next_sequence"]
        if optimistic:
            accounts = await _prefetch_accounts(connection, transfers, {}, cache)
            outcomes, booked = await _book_plain(
                connection, transfers, accounts, batch, next_sequence
            )
        else:
            existing, pendings = await _prefetch_transfers(connection, transfers)
            accounts = await _prefetch_accounts(connection, transfers, pendings, cache)
            decision = decide_batch(
                transfers, accounts, existing, pendings, booked_at, next_sequence
            )
            booked = bool(decision.entries)
            if booked:
                encoded = b"".join(encoded_rows(decision.entries, batch.encoder))
                await copy_rows(connection, _chunks(copy_header, encoded, copy_trailer))
                await record_batch_row(
                    connection, batch, next_sequence, len(decision.entries), batch_digest([encoded])
                )
            outcomes = decision.outcomes()
        if booked:
            cache.state_version += 1
    if cacheable:
        _account_caches[connection] = cache
    return outcomes


async def _prefetch_existing(
    connection: asyncpg.Connection, transfers: list[Transfer]
) -> dict[int, Existing]:
    """The transfers already booked under the batch's ids."""
    rows = await connection.fetch(
        f"select {_select_transfer_columns}"
        " from ledger_transfers join unnest($1::uuid[]) as wanted (id) using (id)",
        [transfer.id for transfer in transfers],
    )
    return {
        row["id"].int: Existing(_transfer_from_row(row), row["sequence"], row["booked_at"])
        for row in rows
    }


async def _prefetch_transfers(
    connection: asyncpg.Connection, transfers: list[Transfer]
) -> tuple[dict[int, Existing], dict[int, PendingState]]:
    existing = await _prefetch_existing(connection, transfers)
    pending_ids = list(
        {
            transfer.pending_id
            for transfer in transfers
            if transfer.flags & resolve_flags and transfer.pending_id is not None
        }
    )
    pendings: dict[int, PendingState] = {}
    if pending_ids:
        for row in await connection.fetch(
            f"select {_select_transfer_columns} from ledger_transfers where id = any($1::uuid[])",
            pending_ids,
        ):
            pendings[row["id"].int] = PendingState(_transfer_from_row(row), row["booked_at"])
        for row in await connection.fetch(
            "select pending_id, flags from ledger_transfers where pending_id = any($1::uuid[])",
            pending_ids,
        ):
            pending = pendings[row["pending_id"].int]
            pending.resolution = TransferFlags(row["flags"]) & resolve_flags
    return existing, pendings


async def _prefetch_accounts(
    connection: asyncpg.Connection,
    transfers: list[Transfer],
    pendings: dict[int, PendingState],
    cache: AccountCache,
) -> dict[int, list]:
    """Load into `cache` the accounts the batch names that it does not hold yet; return the
    cache's states (decide looks up only what it needs)."""
    wanted = accounts_to_load(transfers, pendings, cache.states)
    if len(cache.states) + len(wanted) > account_cache_entries_max:
        # Full: start afresh, and load every account the batch names (emptied after the
        # wanted ones were worked out, the cache lost some it needs: not found, they read).
        cache.states.clear()
        wanted = accounts_to_load(transfers, pendings, cache.states)
    if wanted:
        await load_accounts(connection, wanted, cache)
    return cache.states


# A plain batch is decided in parts of this many transfers; each part's rows go to the server
# (asyncpg sends COPY data every 512 KiB, ~2,000 rows) while the next part is decided.
plain_part_transfers = 1024


async def _chunks(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _book_plain(
    connection: asyncpg.Connection,
    transfers: list[Transfer],
    accounts: dict[int, list],
    batch: BatchHead,
    next_sequence: int,
) -> tuple[list[TransferOutcome], bool]:
    """Decide a plain batch part by part while COPY streams the rows decided so far (the
    client decides while the server inserts); while the server finishes the COPY (and, in
    its trigger, the accounts' totals), make the outcomes and the digest; then write the
    batch row. Decided as if no id were booked before: a repeat makes the COPY raise."""
    decisions: list[BatchDecision] = []
    parts: list[bytes] = []  # each part's encoded rows, in sequence order
    row_count = 0
    all_sent = asyncio.Event()  # every row handed to the COPY (or the COPY ended early)

    async def decided_rows() -> AsyncIterator[bytes]:
        nonlocal row_count
        yield copy_header
        for start in range(0, len(transfers), plain_part_transfers):
            part = transfers[start : start + plain_part_transfers]
            decision = decide_batch(
                part, accounts, {}, {}, batch.booked_at, next_sequence + row_count
            )
            decisions.append(decision)
            encoded = b"".join(encoded_rows(decision.entries, batch.encoder))
            parts.append(encoded)
            row_count += len(decision.entries)
            yield encoded
        all_sent.set()
        yield copy_trailer

    widen_send_buffer(connection)
    copying = asyncio.ensure_future(copy_rows(connection, decided_rows()))
    copying.add_done_callback(lambda _: all_sent.set())
    try:
        await all_sent.wait()
        # The server is still inserting the last rows and applying the accounts' totals:
        # meanwhile, the outcomes and the digest.
        outcomes = [outcome for decision in decisions for outcome in decision.outcomes()]
        digest = batch_digest(parts)
        await copying
    except BaseException:
        if not copying.done():
            # Cancelled (or failed) while the COPY runs: end it (asyncpg then sends CopyFail
            # and reads the server's answer) before the transaction rolls back on this
            # connection; otherwise the rollback would find the connection busy.
            copying.cancel()
            await asyncio.wait({copying})
        raise
    await check_refused_are_new(connection, decisions)
    if row_count:
        await record_batch_row(connection, batch, next_sequence, row_count, digest)
    return outcomes, bool(row_count)


async def expire_pending_transfers(
    connection: asyncpg.Connection,
    *,
    now: datetime | None = None,
    transfers_per_batch_max: int = transfers_per_batch_max_default,
) -> list[TransferOutcome]:
    """Void the pending transfers whose timeout has passed (one batch of at most the limit;
    call again while it returns a full batch). Run it periodically, e.g. before end of day.

    Each void has code `expiry` and the id `derive_id("ledger-expiry", pending id)`, so
    running this twice, or from two processes, books each expiry once.
    """
    if now is None:
        now = await connection.fetchval(
            "select greatest(clock_timestamp(), booked_at) from ledger_head"
        )
    rows = await connection.fetch(
        """
        select t.id from ledger_transfers t
         where t.flags & 2 <> 0 and t.timeout_s > 0  -- 2: pending (ledger_transfers_expiring)
           and t.booked_at + t.timeout_s * interval '1 second' <= $1
           and not exists (select 1 from ledger_transfers r where r.pending_id = t.id)
         order by t.sequence
         limit $2
        """,
        now,
        transfers_per_batch_max,
    )
    voids = [
        Transfer(
            id=expiry_transfer_id(row["id"]),
            debit_account_id=None,
            credit_account_id=None,
            amount=None,
            code=TransferCode.expiry,
            flags=TransferFlags.void_pending,
            pending_id=row["id"],
        )
        for row in rows
    ]
    if not voids:
        return []
    return await create_transfers(connection, voids, now=now)


@dataclass(frozen=True, slots=True)
class ExpirySweep:
    """What `expire_due_holds` did: holds voided now, voids booked already (by another sweep
    meanwhile), and voids refused (say, the hold was posted meanwhile) by result, in the order
    results are checked."""

    voided: int
    already: int
    refused: tuple[tuple[CreateTransferResult, int], ...]

    @classmethod
    def of(cls, results: Counter[CreateTransferResult]) -> ExpirySweep:
        ok = (CreateTransferResult.created, CreateTransferResult.exists)
        refused = tuple((r, results[r]) for r in CreateTransferResult if r not in ok and results[r])
        return cls(results[ok[0]], results[ok[1]], refused)


async def expire_due_holds(
    connection: asyncpg.Connection, *, now: datetime | None = None
) -> ExpirySweep:
    """`expire_pending_transfers` until every hold past its timeout is voided."""
    results: Counter[CreateTransferResult] = Counter()
    while True:
        outcomes = await expire_pending_transfers(connection, now=now)
        results.update(outcome.result for outcome in outcomes)
        voided = sum(outcome.result is CreateTransferResult.created for outcome in outcomes)
        # A full batch may leave more behind; one that voided nothing would only repeat.
        if len(outcomes) < transfers_per_batch_max_default or not voided:
            return ExpirySweep.of(results)


def expiry_transfer_id(pending_id: uuid.UUID) -> uuid.UUID:
    return derive_id("ledger-expiry", pending_id.bytes)


# ---------------------------------------------------------------------------- balances


async def account_balances(
    connection: asyncpg.Connection, account_id: uuid.UUID, *, at: datetime | None = None
) -> Balances | None:
    """The account's totals now (`at` None), or as they were after the last transfer booked
    at or before `at` (zero before its first). None when the account does not exist."""
    if at is None:
        row = await connection.fetchrow("select * from ledger_accounts where id = $1", account_id)
        return None if row is None else _balances(row)
    if not await connection.fetchval(
        "select exists (select 1 from ledger_accounts where id = $1)", account_id
    ):
        return None
    row = await connection.fetchrow(
        """
        select * from (
            (select sequence, debit_debits_pending_after as debits_pending,
                    debit_debits_posted_after as debits_posted,
                    debit_credits_pending_after as credits_pending,
                    debit_credits_posted_after as credits_posted
               from ledger_transfers where debit_account_id = $1 and booked_at <= $2
              order by sequence desc limit 1)
            union all
            (select sequence, credit_debits_pending_after, credit_debits_posted_after,
                    credit_credits_pending_after, credit_credits_posted_after
               from ledger_transfers where credit_account_id = $1 and booked_at <= $2
              order by sequence desc limit 1)
        ) latest order by sequence desc limit 1
        """,
        account_id,
        at,
    )
    return Balances() if row is None else _balances(row)


async def account_statement(
    connection: asyncpg.Connection,
    account_id: uuid.UUID,
    *,
    after_sequence: int = 0,
    limit: int = 1000,
) -> list[AccountStatementLine]:
    """The account's transfers after `after_sequence`, oldest first, with its totals after
    each; page by passing the last line's sequence."""
    assert 0 < limit <= statement_lines_max
    rows = await connection.fetch(
        """
        select * from (
            (select sequence, booked_at, id, code, flags, amount, 'debit' as side,
                    credit_account_id as other_account_id,
                    debit_debits_pending_after as debits_pending,
                    debit_debits_posted_after as debits_posted,
                    debit_credits_pending_after as credits_pending,
                    debit_credits_posted_after as credits_posted
               from ledger_transfers where debit_account_id = $1 and sequence > $2
              order by sequence limit $3)
            union all
            (select sequence, booked_at, id, code, flags, amount, 'credit', debit_account_id,
                    credit_debits_pending_after, credit_debits_posted_after,
                    credit_credits_pending_after, credit_credits_posted_after
               from ledger_transfers where credit_account_id = $1 and sequence > $2
              order by sequence limit $3)
        ) lines order by sequence limit $3
        """,
        account_id,
        after_sequence,
        limit,
    )
    return [
        AccountStatementLine(
            sequence=row["sequence"],
            booked_at=row["booked_at"],
            transfer_id=row["id"],
            code=row["code"],
            flags=TransferFlags(row["flags"]),
            amount=row["amount"],
            side=row["side"],
            other_account_id=row["other_account_id"],
            balances_after=_balances(row),
        )
        for row in rows
    ]
