"""Exports: Beancount (bean-check accepts it; its balances equal ours) and CSV.

Beancount sees posted money only: a plain transfer or the post of a hold is a transaction
debiting one account (+amount) and crediting the other (-amount); holds (pending) and voids
move no posted money and are left out. Dates are the booking date in UTC. Every account gets
an `open` directive and, the day after the last transfer, a `balance` assertion carrying our
running total (posted debits minus posted credits), so bean-check proves the two agree.
"""

from __future__ import annotations

import csv
import uuid
from datetime import date, timedelta
from typing import TextIO

import asyncpg

from ledger.chain import transfer_columns
from ledger.records import AccountKind, TransferCode

cursor_rows_prefetch = 8190

# Beancount's five root types; the ledger's kinds under them.
beancount_root_of_kind: dict[AccountKind, str] = {
    AccountKind.card_purse: "Liabilities:CardPurse",
    AccountKind.pending_top_up: "Liabilities:PendingTopUp",
    AccountKind.bank_clearing: "Assets:BankClearing",
    AccountKind.operator_revenue: "Liabilities:OperatorRevenue",
    AccountKind.operator_payable: "Liabilities:OperatorPayable",
    AccountKind.merchant_payable: "Liabilities:MerchantPayable",
    AccountKind.fee_income: "Income:Fees",
    AccountKind.fee_expense: "Expenses:BankFees",
    AccountKind.settlement_in_transit: "Assets:SettlementInTransit",
    AccountKind.bank_account: "Assets:Bank",
    AccountKind.suspense: "Assets:Suspense",
    AccountKind.card_deposit: "Liabilities:CardDeposit",
    AccountKind.equity: "Equity:Ledger",
    AccountKind.refund_payable: "Liabilities:RefundPayable",
}
assert set(beancount_root_of_kind) == set(AccountKind)


def beancount_account_name(kind: str, account_id: uuid.UUID) -> str:
    # A component must start with a capital letter or digit: the id in upper-case hex.
    return f"{beancount_root_of_kind[AccountKind(kind)]}:{account_id.hex.upper()}"


def _code_name(code: int) -> str:
    try:
        return TransferCode(code).name
    except ValueError:
        return f"code {code}"


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def write_beancount(connection: asyncpg.Connection, out: TextIO) -> None:
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        accounts = await connection.fetch(
            "select id, kind, currency, owner_reference, created_at, debits_posted,"
            " credits_posted from ledger_accounts order by created_at, id"
        )
        names = {row["id"]: beancount_account_name(row["kind"], row["id"]) for row in accounts}
        first_day = await connection.fetchval(
            "select min(booked_at) at time zone 'UTC' from ledger_transfers"
        )
        open_day: date = first_day.date() if first_day else date(1970, 1, 1)
        out.write('option "title" "KSH ledger"\noption "operating_currency" "IDR"\n\n')
        for row in accounts:
            day = min(open_day, row["created_at"].date())
            out.write(f"{day.isoformat()} open {names[row['id']]} {row['currency']}\n")
            if row["owner_reference"]:
                out.write(f"  owner: {_quoted(row['owner_reference'])}\n")
        out.write("\n")
        currency = {row["id"]: row["currency"] for row in accounts}
        last_day = open_day
        async for row in connection.cursor(
            "select sequence, id, booked_at at time zone 'UTC' as booked_at, debit_account_id,"
            " credit_account_id, amount, code, flags, card_number, card_counter, terminal_id,"
            " terminal_sequence, bank_reference, settlement_batch from ledger_transfers"
            " where flags & 10 = 0 order by sequence",
            prefetch=cursor_rows_prefetch,
        ):
            day = row["booked_at"].date()
            last_day = max(last_day, day)
            unit = currency[row["debit_account_id"]]
            out.write(f"{day.isoformat()} * {_quoted(_code_name(row['code']))}\n")
            out.write(f'  transfer: "{row["id"]}"\n  sequence: {row["sequence"]}\n')
            for key in ("card_number", "terminal_id", "bank_reference", "settlement_batch"):
                if row[key] is not None:
                    out.write(f"  {key.replace('_', '-')}: {_quoted(str(row[key]))}\n")
            out.write(f"  {names[row['debit_account_id']]}  {row['amount']} {unit}\n")
            out.write(f"  {names[row['credit_account_id']]}  -{row['amount']} {unit}\n\n")
        check_day = last_day + timedelta(days=1)
        for row in accounts:
            balance = row["debits_posted"] - row["credits_posted"]
            out.write(
                f"{check_day.isoformat()} balance {names[row['id']]}  {balance} {row['currency']}\n"
            )


csv_columns: tuple[str, ...] = transfer_columns


async def write_csv(connection: asyncpg.Connection, out: TextIO) -> None:
    """Every booked transfer, one row each in booking order, with every stored column."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_columns)
    async with connection.transaction(isolation="repeatable_read", readonly=True):
        async for row in connection.cursor(
            f"select {', '.join(csv_columns)} from ledger_transfers order by sequence",
            prefetch=cursor_rows_prefetch,
        ):
            writer.writerow(
                [value.isoformat() if hasattr(value, "isoformat") else value for value in row]
            )
