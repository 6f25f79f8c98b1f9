"""A small set of books used by several tests: accounts, and a day of mixed transfers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from ledger import (
    Account,
    AccountFlags,
    AccountKind,
    CreateAccountResult,
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferFlags,
    create_accounts,
    create_transfers,
    derive_id,
)

day_start = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)
purses = tuple(derive_id("books-purse", n) for n in range(3))
bank = derive_id("books", "bank-clearing")
revenue = derive_id("books", "operator-revenue")
merchant = derive_id("books", "merchant")
fees = derive_id("books", "fee-income")
pending_top_ups = derive_id("books", "pending-top-ups")


async def database_clock(connection: asyncpg.Connection) -> datetime:
    """The database's now, the clock the ledger books and expires holds at when given none:
    a test books its transfers relative to it rather than at a fixed date, where a timeout
    must have passed (or not) by the time it runs."""
    return await connection.fetchval("select clock_timestamp()")


async def open_books(connection: asyncpg.Connection) -> None:
    accounts = [
        Account(
            purse, AccountKind.card_purse, f"card-{n}", AccountFlags.debits_must_not_exceed_credits
        )
        for n, purse in enumerate(purses)
    ] + [
        Account(bank, AccountKind.bank_clearing, "bank-jateng"),
        Account(revenue, AccountKind.operator_revenue, "trans-semarang"),
        Account(merchant, AccountKind.merchant_payable, "warung-1"),
        Account(fees, AccountKind.fee_income, "issuer"),
        Account(pending_top_ups, AccountKind.pending_top_up, "virtual-accounts"),
    ]
    assert set(await create_accounts(connection, accounts)) == {CreateAccountResult.created}


async def book_a_day(connection: asyncpg.Connection, start: datetime = day_start) -> None:
    """Top-ups, fares, a sale with its fee, a hold posted in part, a hold voided: a batch an
    hour from `start`."""

    def t(name: str, debit, credit, amount, code, **fields) -> Transfer:
        return Transfer(derive_id("books-transfer", name), debit, credit, amount, code, **fields)

    batches = [
        [
            t(f"top-up-{n}", bank, purse, 50_000, TransferCode.top_up)
            for n, purse in enumerate(purses)
        ],
        [
            t(
                "fare-0",
                purses[0],
                revenue,
                3_500,
                TransferCode.fare,
                card_number="c0",
                card_counter=1,
            ),
            t(
                "fare-1",
                purses[1],
                revenue,
                3_500,
                TransferCode.fare,
                card_number="c1",
                card_counter=1,
            ),
            t(
                "sale",
                purses[2],
                merchant,
                20_000,
                TransferCode.merchant_sale,
                flags=TransferFlags.linked,
            ),
            t(
                "sale-fee",
                merchant,
                fees,
                400,
                TransferCode.merchant_fee,
                metadata='{"rate": "2%"}',
            ),
            t(
                "hold",
                bank,
                pending_top_ups,
                30_000,
                TransferCode.pending_top_up,
                flags=TransferFlags.pending,
                bank_reference="VA-1",
            ),
            t(
                "hold-2",
                bank,
                pending_top_ups,
                10_000,
                TransferCode.pending_top_up,
                flags=TransferFlags.pending,
            ),
        ],
        [
            t(
                "post",
                None,
                None,
                25_000,
                0,
                flags=TransferFlags.post_pending,
                pending_id=derive_id("books-transfer", "hold"),
            ),
            t(
                "void",
                None,
                None,
                None,
                0,
                flags=TransferFlags.void_pending,
                pending_id=derive_id("books-transfer", "hold-2"),
            ),
            t("deliver", pending_top_ups, purses[0], 25_000, TransferCode.top_up_delivery),
        ],
    ]
    for hour, batch in enumerate(batches):
        outcomes = await create_transfers(connection, batch, now=start + timedelta(hours=hour))
        assert {o.result for o in outcomes} == {CreateTransferResult.created}, outcomes
