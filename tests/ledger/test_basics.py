"""Booking, idempotency, bad input, two-phase transfers and balances, case by case."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ledger import (
    Account,
    AccountFlags,
    AccountKind,
    Balances,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferFlags,
    account_balances,
    account_statement,
    close_account,
    create_accounts,
    create_transfers,
    derive_id,
    expire_pending_transfers,
    lookup_accounts,
    lookup_transfers,
)

R = CreateTransferResult
start = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
purse_id = derive_id("test-account", "purse")
other_purse_id = derive_id("test-account", "other purse")
bank_id = derive_id("test-account", "bank")
revenue_id = derive_id("test-account", "revenue")
limited = AccountFlags.debits_must_not_exceed_credits


def transfer(
    name: str, debit: uuid.UUID | None, credit: uuid.UUID | None, amount: int | None, **fields
) -> Transfer:
    resolving = fields.get("flags", TransferFlags.none) & (
        TransferFlags.post_pending | TransferFlags.void_pending
    )
    return Transfer(
        id=derive_id("test-transfer", name),
        debit_account_id=debit,
        credit_account_id=credit,
        amount=amount,
        code=fields.pop("code", 0 if resolving else TransferCode.fare),
        **fields,
    )


async def open_books(connection: asyncpg.Connection) -> None:
    results = await create_accounts(
        connection,
        [
            Account(purse_id, AccountKind.card_purse, "card-1", limited),
            Account(other_purse_id, AccountKind.card_purse, "card-2", limited),
            Account(bank_id, AccountKind.bank_clearing, "bank-mandiri"),
            Account(revenue_id, AccountKind.operator_revenue, "trans-semarang"),
        ],
    )
    assert results == [CreateAccountResult.created] * 4


async def results_of(connection, transfers, **options) -> list[CreateTransferResult]:
    return [outcome.result for outcome in await create_transfers(connection, transfers, **options)]


async def test_accounts_are_created_once_and_compared_on_repeat(connection) -> None:
    await open_books(connection)
    results = await create_accounts(
        connection,
        [
            Account(purse_id, AccountKind.card_purse, "card-1", limited),
            Account(purse_id, AccountKind.suspense, "card-1", limited),
            Account(bank_id, AccountKind.bank_clearing, "bank-bca"),
            Account(uuid.UUID(int=0), AccountKind.suspense),
            Account(
                derive_id("x"),
                AccountKind.suspense,
                flags=limited | AccountFlags.credits_must_not_exceed_debits,
            ),
            Account(derive_id("y"), AccountKind.suspense, currency="RUPIAH"),
            Account(derive_id("z"), "wallet", "w-1"),  # type: ignore[arg-type]
            Account(derive_id("w"), AccountKind.suspense, currency="idr"),
            Account(derive_id("v"), AccountKind.suspense, currency="ÏDR"),
            Account(derive_id("u"), "suspense", "u-1"),  # type: ignore[arg-type]
        ],
    )
    assert results == [
        CreateAccountResult.exists,
        CreateAccountResult.exists_with_different_kind,
        CreateAccountResult.exists_with_different_owner_reference,
        CreateAccountResult.id_must_not_be_zero,
        CreateAccountResult.flags_are_mutually_exclusive,
        CreateAccountResult.currency_must_be_three_letters,
        CreateAccountResult.kind_must_be_an_account_kind,
        CreateAccountResult.currency_must_be_three_letters,
        CreateAccountResult.currency_must_be_three_letters,
        CreateAccountResult.created,  # (a kind's name is the kind: a StrEnum)
    ]
    found = await lookup_accounts(connection, [purse_id, derive_id("x")])
    assert list(found) == [purse_id]
    assert found[purse_id].balances == Balances()


async def test_a_repeat_never_books_twice(connection) -> None:
    await open_books(connection)
    top_up = transfer("top-up", bank_id, purse_id, 50_000, code=TransferCode.top_up)
    fare = transfer("fare", purse_id, revenue_id, 3_500, card_number="6032", card_counter=7)
    first = await create_transfers(connection, [top_up, fare, fare], now=start)
    assert [o.result for o in first] == [R.created, R.created, R.exists]
    assert first[2].sequence == first[1].sequence == 2
    again = await create_transfers(
        connection,
        [
            fare,
            fare._replace(amount=3_600),
            fare._replace(card_counter=8),
        ],
        now=start + timedelta(seconds=1),
    )
    assert [o.result for o in again] == [
        R.exists,
        R.exists_with_different_amount,
        R.exists_with_different_references,
    ]
    assert again[0].sequence == 2
    assert again[0].booked_at == start
    purse = await account_balances(connection, purse_id)
    assert purse == Balances(0, 3_500, 0, 50_000)
    booked = await lookup_transfers(connection, [fare.id])
    assert booked[fare.id].transfer == fare
    assert booked[fare.id].debit_balances_after == Balances(0, 3_500, 0, 50_000)


async def test_bad_input_gets_precise_results_and_books_nothing(connection) -> None:
    await open_books(connection)
    unknown = derive_id("test-account", "unknown")
    cases = [
        (transfer("zero", bank_id, purse_id, 0), R.amount_must_be_positive),
        (transfer("negative", bank_id, purse_id, -5), R.amount_must_be_positive),
        (transfer("same", bank_id, bank_id, 5), R.accounts_must_be_different),
        (transfer("unknown-debit", unknown, purse_id, 5), R.debit_account_not_found),
        (transfer("unknown-credit", bank_id, unknown, 5), R.credit_account_not_found),
        (Transfer(uuid.UUID(int=0), bank_id, purse_id, 5, 1), R.id_must_not_be_zero),
        (Transfer(uuid.UUID(int=2**128 - 1), bank_id, purse_id, 5, 1), R.id_must_not_be_max),
        (transfer("no-debit", None, purse_id, 5), R.debit_account_id_must_not_be_zero),
        (
            transfer("zero-credit", bank_id, uuid.UUID(int=0), 5),
            R.credit_account_id_must_not_be_zero,
        ),
        (transfer("code", bank_id, purse_id, 5, code=0), R.code_must_be_positive),
        (transfer("huge", bank_id, purse_id, 2**63), R.amount_too_large),
        (transfer("overdraft", purse_id, revenue_id, 1), R.exceeds_credits),
        (
            transfer("timeout", bank_id, purse_id, 5, timeout_s=5),
            R.timeout_reserved_for_pending_transfer,
        ),
        (
            transfer(
                "flags",
                bank_id,
                purse_id,
                5,
                flags=TransferFlags.pending | TransferFlags.void_pending,
            ),
            R.flags_are_mutually_exclusive,
        ),
        (
            transfer(
                "post-unknown",
                None,
                None,
                None,
                flags=TransferFlags.post_pending,
                pending_id=unknown,
            ),
            R.pending_transfer_not_found,
        ),
        (
            transfer("post-nothing", None, None, None, flags=TransferFlags.post_pending),
            R.pending_id_must_not_be_zero,
        ),
        (transfer("ref", bank_id, purse_id, 5, terminal_id="t" * 101), R.reference_too_long),
        (transfer("nul", bank_id, purse_id, 5, card_number="60\x0032"), R.reference_must_be_text),
        (transfer("counter", bank_id, purse_id, 5, card_counter=-1), R.reference_out_of_range),
        (
            transfer("counter2", bank_id, purse_id, 5, terminal_sequence=2**63),
            R.reference_out_of_range,
        ),
        (transfer("code", bank_id, purse_id, 5, code=2**31), R.code_too_large),
        (transfer("code2", bank_id, purse_id, 5, code=2**34 + 7), R.code_too_large),
        (
            transfer(
                "long-hold", bank_id, purse_id, 5, flags=TransferFlags.pending, timeout_s=2**31
            ),
            R.timeout_too_large,
        ),
        (transfer("nan", bank_id, purse_id, 5, metadata='{"x": NaN}'), R.metadata_must_be_json),
        (
            transfer("e", bank_id, purse_id, 5, metadata="[1e99999999999999999999]"),
            R.metadata_must_be_json,
        ),
        (
            transfer("wide", bank_id, purse_id, 5, metadata="[" + "1e999," * 200 + "0]"),
            R.metadata_must_be_json,
        ),
        (transfer("reserved", bank_id, purse_id, 5, flags=TransferFlags(64)), R.reserved_flag),
    ]
    assert await results_of(connection, [case for case, _ in cases], now=start) == [
        expected for _, expected in cases
    ]
    oversized = [transfer(f"big-{n}", bank_id, purse_id, 1) for n in range(5)]
    assert (
        await results_of(connection, oversized, transfers_per_batch_max=4)
        == [R.batch_too_large] * 5
    )
    assert await connection.fetchval("select count(*) from ledger_transfers") == 0
    assert await connection.fetchval("select count(*) from ledger_batches") == 0
    for account_id in (purse_id, bank_id, revenue_id):
        assert await account_balances(connection, account_id) == Balances()


@pytest.mark.parametrize(
    ("malformed", "named"),
    [
        (lambda good: good._replace(id=str(good.id)), "transfer 1: id must be a uuid.UUID"),
        (lambda good: good._replace(debit_account_id=7), "transfer 1: debit_account_id"),
        (lambda good: good._replace(amount=5.0), "transfer 1: amount must be an int"),
        (lambda good: good._replace(amount="5"), "transfer 1: amount must be an int"),
        (lambda good: tuple(good), "transfer 1 is a tuple, not a ledger.Transfer"),
        (lambda good: good._replace(card_number=5), "transfer 1: card_number must be a str"),
        (lambda good: good._replace(metadata={"a": 1}), "transfer 1: metadata must be a str"),
        (lambda good: good._replace(card_counter="7"), "transfer 1: card_counter must be an int"),
    ],
)
async def test_a_field_of_the_wrong_type_is_a_type_error_naming_it(
    connection, database_url, malformed, named
) -> None:
    """A caller's bug, not a result: said plainly, on the plain path, the general path
    (linked) and the pipeline, and nothing is booked."""
    from ledger import TransferPipeline

    await open_books(connection)
    good = [transfer(f"fine-{n}", bank_id, purse_id, 5) for n in range(3)]
    plain = [good[0], malformed(good[1]), good[2]]
    linked = [plain[0]._replace(flags=TransferFlags.linked), *plain[1:]]
    other = await asyncpg.connect(database_url)
    pipeline = TransferPipeline([other])
    try:
        for book, batch in [
            (lambda batch: create_transfers(connection, batch), plain),
            (lambda batch: create_transfers(connection, batch), linked),
            (pipeline.create_transfers, plain),
        ]:
            with pytest.raises(TypeError, match=re.escape(named)):
                await book(batch)
        assert await connection.fetchval("select count(*) from ledger_transfers") == 0
        assert [o.result for o in await pipeline.create_transfers(good)] == [R.created] * 3
    finally:
        await other.close()


async def test_books_through_a_pool_connection(connection, database_url) -> None:
    """A connection from an asyncpg pool (a proxy, one per acquire) books like any other,
    outside a transaction too (the per-connection account cache is skipped)."""
    await open_books(connection)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    assert pool is not None
    try:
        for n in range(2):
            async with pool.acquire() as pooled:
                outcomes = await create_transfers(
                    pooled, [transfer(f"pooled-{n}", bank_id, purse_id, 5)]
                )
                assert [o.result for o in outcomes] == [R.created]
    finally:
        await pool.close()
    assert (await account_balances(connection, purse_id)).credits_posted == 10  # type: ignore[union-attr]


async def test_a_full_account_cache_starts_afresh_with_every_account_the_batch_names(
    connection, monkeypatch
) -> None:
    """A connection keeps the accounts it loaded, up to a limit; the batch that would pass it
    empties the cache and must then load every account it names, not only the new ones."""
    import ledger.store

    await open_books(connection)
    top_up = transfer("cache-top-up", bank_id, purse_id, 100)
    assert [o.result for o in await create_transfers(connection, [top_up])] == [R.created]
    monkeypatch.setattr(ledger.store, "account_cache_entries_max", 3)  # holds bank and purse
    fares = [
        transfer("cache-fare", purse_id, revenue_id, 5),  # revenue is new: 3 in the cache
        transfer("cache-other", bank_id, other_purse_id, 5),  # other purse: 4, too many
    ]
    for fare in fares:
        assert [o.result for o in await create_transfers(connection, [fare])] == [R.created]


async def test_force_books_past_the_limit_and_says_so(connection) -> None:
    await open_books(connection)
    tap = transfer("offline-tap", purse_id, revenue_id, 3_500, flags=TransferFlags.force)
    [outcome] = await create_transfers(connection, [tap], now=start)
    assert outcome.result is R.created
    assert outcome.over_limit
    assert (await account_balances(connection, purse_id)).credit_balance == -3_500


async def test_linked_group_books_all_or_none(connection) -> None:
    await open_books(connection)
    await create_transfers(connection, [transfer("top-up", bank_id, purse_id, 10_000)], now=start)
    sale = transfer("sale", purse_id, revenue_id, 6_000, flags=TransferFlags.linked)
    fee = transfer("fee", revenue_id, bank_id, 100, flags=TransferFlags.linked)
    second_sale = transfer("second-sale", purse_id, revenue_id, 6_000)  # fails: funds
    lone = transfer("lone", bank_id, other_purse_id, 700)
    results = await results_of(connection, [sale, fee, second_sale, lone], now=start)
    assert results == [R.linked_event_failed, R.linked_event_failed, R.exceeds_credits, R.created]
    assert (await account_balances(connection, purse_id)).credit_balance == 10_000
    fee_closed = transfer("fee", revenue_id, bank_id, 100)
    ok = await results_of(connection, [sale, fee_closed], now=start)
    assert ok == [R.created, R.created]
    assert await results_of(connection, [sale, fee_closed], now=start) == [R.exists, R.exists]
    chain_open = [transfer("open", bank_id, purse_id, 5, flags=TransferFlags.linked)]
    assert await results_of(connection, chain_open) == [R.linked_event_chain_open]
    assert (await account_balances(connection, purse_id)).credit_balance == 4_000


async def test_two_phase_hold_post_void_and_expiry(connection) -> None:
    await open_books(connection)
    pending = TransferFlags.pending
    hold = transfer(
        "hold",
        bank_id,
        purse_id,
        20_000,
        flags=pending,
        timeout_s=60,
        code=TransferCode.pending_top_up,
    )
    hold2 = transfer("hold2", bank_id, purse_id, 5_000, flags=pending)
    hold3 = transfer("hold3", bank_id, other_purse_id, 1_000, flags=pending, timeout_s=10)
    assert await results_of(connection, [hold, hold2, hold3], now=start) == [R.created] * 3
    assert await account_balances(connection, purse_id) == Balances(0, 0, 25_000, 0)
    post = transfer(
        "post", None, None, 15_000, flags=TransferFlags.post_pending, pending_id=hold.id, code=0
    )
    post_again = transfer(
        "post-again", None, None, None, flags=TransferFlags.post_pending, pending_id=hold.id
    )
    void2 = transfer(
        "void2", None, None, None, flags=TransferFlags.void_pending, pending_id=hold2.id
    )
    too_much = transfer(
        "too-much", None, None, 9_000, flags=TransferFlags.post_pending, pending_id=hold3.id
    )
    results = await results_of(
        connection, [post, post_again, void2, too_much], now=start + timedelta(seconds=5)
    )
    assert results == [
        R.created,
        R.pending_transfer_already_posted,
        R.created,
        R.exceeds_pending_transfer_amount,
    ]
    assert await account_balances(connection, purse_id) == Balances(0, 0, 0, 15_000)
    assert (await lookup_transfers(connection, [post.id]))[
        post.id
    ].transfer.code == TransferCode.pending_top_up
    late = transfer("late", None, None, None, flags=TransferFlags.post_pending, pending_id=hold3.id)
    assert await results_of(connection, [late], now=start + timedelta(seconds=11)) == [
        R.pending_transfer_expired
    ]
    expired = await expire_pending_transfers(connection, now=start + timedelta(seconds=12))
    assert [o.result for o in expired] == [R.created]
    assert await expire_pending_transfers(connection, now=start + timedelta(seconds=13)) == []
    assert await account_balances(connection, other_purse_id) == Balances()
    assert await account_balances(connection, bank_id) == Balances(0, 15_000, 0, 0)


async def test_balance_at_a_time_and_statement(connection) -> None:
    await open_books(connection)
    for minute in range(3):
        await create_transfers(
            connection,
            [transfer(f"top-up-{minute}", bank_id, purse_id, 1_000 * (minute + 1))],
            now=start + timedelta(minutes=minute),
        )
    at = start + timedelta(minutes=1, seconds=30)
    assert (await account_balances(connection, purse_id, at=at)).credit_balance == 3_000
    assert await account_balances(connection, purse_id, at=start - timedelta(days=1)) == Balances()
    assert await account_balances(connection, derive_id("nobody"), at=start) is None
    lines = await account_statement(connection, purse_id)
    assert [line.balances_after.credit_balance for line in lines] == [1_000, 3_000, 6_000]
    assert [line.side for line in lines] == ["credit"] * 3
    bank_lines = await account_statement(connection, bank_id, after_sequence=1)
    assert [line.balances_after.debit_balance for line in bank_lines] == [3_000, 6_000]


async def test_closed_account_refuses_transfers(connection) -> None:
    await open_books(connection)
    hold = transfer("hold", bank_id, purse_id, 500, flags=TransferFlags.pending)
    await create_transfers(connection, [hold], now=start)
    assert await close_account(connection, purse_id)
    void = transfer("void", None, None, None, flags=TransferFlags.void_pending, pending_id=hold.id)
    results = await results_of(connection, [transfer("after", bank_id, purse_id, 5), void])
    assert results == [R.credit_account_closed, R.created]


async def test_the_database_refuses_unbalanced_or_changed_books(connection) -> None:
    await open_books(connection)
    await create_transfers(connection, [transfer("top-up", bank_id, purse_id, 500)], now=start)
    with pytest.raises(asyncpg.CheckViolationError, match="do not balance"):
        await connection.execute(
            "update ledger_accounts set credits_posted = credits_posted + 1 where id = $1",
            purse_id,
        )
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
        await connection.execute("update ledger_transfers set amount = 1")
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
        await connection.execute("delete from ledger_transfers")
    # A transfer row whose totals after do not follow from the accounts' totals: refused.
    insert = """
        insert into ledger_transfers
        select 2, $1, 2, booked_at, debit_account_id, credit_account_id, 100, code, 0, null, 0,
               null, null, null, null, null, null, null,
               0, 600 + $2::bigint, 0, 0,  0, 0, 0, 600 - $2::bigint
          from ledger_transfers where sequence = 1"""
    for skew in (1, 7):
        with pytest.raises(asyncpg.CheckViolationError, match="do not balance"):
            await connection.execute(insert, derive_id("forged", skew), skew)
    assert await account_balances(connection, purse_id) == Balances(0, 0, 0, 500)


async def test_booking_inside_a_callers_transaction_commits_with_it(connection) -> None:
    await open_books(connection)
    top_up = transfer("in-transaction", bank_id, purse_id, 900, code=TransferCode.top_up)
    with pytest.raises(RuntimeError):
        async with connection.transaction():
            assert await results_of(connection, [top_up], now=start) == [R.created]
            raise RuntimeError("the caller changes its mind")
    assert await account_balances(connection, purse_id) == Balances()
    async with connection.transaction():
        assert await results_of(connection, [top_up], now=start) == [R.created]
        assert await connection.fetchval("show enable_hashjoin") == "on"
    assert (await account_balances(connection, purse_id)).credit_balance == 900
    assert await results_of(connection, [top_up]) == [R.exists]


async def test_repeats_in_a_batch_bigger_than_a_part(connection) -> None:
    """A plain batch is decided in parts while its rows stream to the server, as if no id
    were booked: repeats across parts and of earlier batches, booked again or refused on
    the state of the books, still get their `exists*` answer and nothing is booked twice."""
    from ledger.store import plain_part_transfers

    await open_books(connection)
    top_up = transfer("top-up", bank_id, purse_id, 100_000, code=TransferCode.top_up)
    booked = transfer("booked", purse_id, revenue_id, 10)
    assert await results_of(connection, [top_up, booked], now=start) == [R.created] * 2
    fares = [transfer(f"fare {n}", purse_id, revenue_id, 1) for n in range(plain_part_transfers)]
    fresh = transfer("fresh", bank_id, other_purse_id, 5)
    # Past the first part: a new transfer, a repeat of the first part's, and repeats of an
    # earlier batch's transfer, exact and with another amount.
    batch = [*fares, fresh, fares[0], booked, booked._replace(amount=11)]
    assert await results_of(connection, batch, now=start) == [
        *[R.created] * plain_part_transfers,
        R.created,
        R.exists,
        R.exists,
        R.exists_with_different_amount,
    ]
    left = 100_000 - 10 - plain_part_transfers
    big = transfer("big", purse_id, revenue_id, left - 100)
    # A repeat the balance alone would refuse: in a later part than the original, and
    # (below) in a later batch.
    fillers = [
        transfer(f"filler {n}", bank_id, other_purse_id, 1) for n in range(plain_part_transfers)
    ]
    batch = [big, *fillers[1:], transfer("new", purse_id, revenue_id, 1), big]
    assert await results_of(connection, batch, now=start) == [
        R.created,
        *[R.created] * (plain_part_transfers - 1),
        R.created,
        R.exists,
    ]
    assert await results_of(connection, [transfer("too big", purse_id, revenue_id, 100), big]) == [
        R.exceeds_credits,
        R.exists,
    ]
    assert await account_balances(connection, purse_id) == Balances(0, 99_901, 0, 100_000)
    other = Balances(0, 0, 0, 5 + plain_part_transfers - 1)
    assert await account_balances(connection, other_purse_id) == other
    count = await connection.fetchval("select count(*) from ledger_transfers")
    assert count == 4 + 2 * plain_part_transfers
