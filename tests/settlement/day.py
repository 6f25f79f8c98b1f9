"""A small service day booked straight into the ledger, as the back office would book it:
virtual-account top-ups (bank clearing -> pending top-up -> card purse), fares to the
operator's revenue, sales to merchants' payables. Shared by the settlement tests."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import asyncpg

from ledger import store
from ledger.records import Account, AccountKind, Transfer, TransferCode, derive_id
from settlement.end_of_day import jakarta

bank_code = "009"  # BNI, the card's co-branding bank
bank = bank_code
our_account = "1350012345678"
service_day = dt.date(2026, 11, 23)
# When the tests' back office and bank think it is: the evening of the service day, after its
# fares were booked (09:00) and before its cut-off, so the bank's statement is that day's.
closing_time = dt.datetime.combine(service_day, dt.time(22, 0), tzinfo=jakarta)
sale_fee_rupiah = 250  # 1 % of each 25,000 sale, booked with the sale as the back office does


def ledger_account(kind: AccountKind, owner: str) -> Account:
    return Account(derive_id("test-account", kind.value, owner), kind, owner)


@dataclass
class Day:
    collections: list[tuple[str, int]] = field(default_factory=list)  # (paymentRequestId, rupiah)
    sales: dict[str, int] = field(default_factory=dict)  # merchant -> rupiah
    fares_rupiah: int = 0
    booked_at: dt.datetime = field(
        default_factory=lambda: dt.datetime.combine(service_day, dt.time(9, 0), tzinfo=jakarta)
    )


async def book_day(connection: asyncpg.Connection, cards: int = 6, merchants: int = 3) -> Day:
    day = Day()
    clearing = ledger_account(AccountKind.bank_clearing, bank)
    pending = ledger_account(AccountKind.pending_top_up, "all")
    revenue = ledger_account(AccountKind.operator_revenue, "trans-semarang")
    purses = [ledger_account(AccountKind.card_purse, f"62000000{n:04d}") for n in range(cards)]
    payables = [ledger_account(AccountKind.merchant_payable, f"M{n:03d}") for n in range(merchants)]
    fee_income = ledger_account(AccountKind.fee_income, "merchant-fees")
    await store.create_accounts(
        connection, [clearing, pending, revenue, fee_income, *purses, *payables]
    )
    transfers: list[Transfer] = []
    for number, purse in enumerate(purses):
        request_id = f"VAPAY{number:08d}"
        amount = 100_000 + 10_000 * number
        day.collections.append((request_id, amount))
        transfers.append(
            Transfer(
                uuid.uuid4(),
                clearing.id,
                pending.id,
                amount,
                TransferCode.pending_top_up,
                bank_reference=request_id,
            )
        )
        transfers.append(
            Transfer(uuid.uuid4(), pending.id, purse.id, amount, TransferCode.top_up_delivery)
        )
        for _ in range(4):
            transfers.append(Transfer(uuid.uuid4(), purse.id, revenue.id, 3_500, TransferCode.fare))
            day.fares_rupiah += 3_500
        payable = payables[number % merchants]
        transfers.append(
            Transfer(uuid.uuid4(), purse.id, payable.id, 25_000, TransferCode.merchant_sale)
        )
        transfers.append(
            Transfer(
                uuid.uuid4(), payable.id, fee_income.id, sale_fee_rupiah, TransferCode.merchant_fee
            )
        )
        day.sales[payable.owner_reference] = day.sales.get(payable.owner_reference, 0) + 25_000
    outcomes = await store.create_transfers(connection, transfers, now=day.booked_at)
    assert all(o.result.value == "created" for o in outcomes), outcomes
    return day
