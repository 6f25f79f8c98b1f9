"""Cash counters: a cashier takes cash for a card, and the card's reader writes it.

Trust the card, not the terminal: the counter does not credit the card on its own word. The cash
is booked as a pending top-up for the card, paid from the cashier's own drawer account (its
cash drawer → the card's pending top-up account), and the counter's reader (a registered
terminal) delivers it onto the card in a journalled card transaction exactly as a validator
delivers a virtual-account payment; the upload books the delivery (pending → purse) against
that pending top-up. So the card's purse equals the books, and a write that fails leaves the
top-up pending for the next terminal the card meets, neither lost nor paid twice.

A drawer is a `bank_clearing` account owned by `drawer:USERNAME`: cash the issuer holds but has
not banked. Closing a shift hands the counted cash to the cash office (another clearing account,
`cash-office`) and books any difference to suspense, so the drawer starts the next shift at 0.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime

import asyncpg

from gateways.terminal_api import books
from gateways.terminal_api.accounts import bank_clearing_account_id
from ledger.records import Account, AccountKind, Transfer, TransferCode, booked_results, derive_id

drawer_prefix = "drawer:"
cash_office_code = "cash-office"  # counted cash handed in, on its way to the bank
differences_owner = "counter-cash-differences"
differences_account_id = derive_id("suspense", differences_owner)
counted_rupiah_max = 10_000_000_000  # what a count of one drawer may say


def drawer_code(cashier: str) -> str:
    """The clearing code (and account owner) of a cashier's drawer."""
    return drawer_prefix + cashier


def drawer_account_id(cashier: str) -> uuid.UUID:
    return bank_clearing_account_id(drawer_code(cashier))


async def ensure_drawer(connection: asyncpg.Connection, cashier: str) -> uuid.UUID:
    """The cashier's drawer account, opened on first use."""
    drawer = drawer_account_id(cashier)
    await books.ensure_accounts(
        connection, [Account(drawer, AccountKind.bank_clearing, drawer_code(cashier))]
    )
    return drawer


@dataclass(frozen=True, slots=True)
class ShiftClose:
    cashier: str
    shift_id: str
    expected_rupiah: int  # the cash the books say is in the drawer
    counted_rupiah: int
    created: bool  # False: this shift was closed before (the first close's figures)

    @property
    def difference_rupiah(self) -> int:
        """Counted minus expected: negative is a shortage."""
        return self.counted_rupiah - self.expected_rupiah


async def drawer_rupiah(connection: asyncpg.Connection, cashier: str) -> int:
    """The cash the books say is in the cashier's drawer (debits of an asset account)."""
    drawer = drawer_account_id(cashier)
    held = (await books.balances(connection, [drawer])).get(drawer)
    return 0 if held is None else held.debits_posted - held.credits_posted


@dataclass(frozen=True, slots=True)
class DrawerMovement:
    """Cash into a cashier's drawer (a top-up taken for a card, ...) or out of it."""

    reference: str  # the top-up's id (the counter receipt), else the transfer's id
    card_number: str | None
    amount_rupiah: int  # into the drawer; negative: out of it
    kind: str  # the transfer code's name (`pending_top_up`: cash taken for a card)
    booked_at: datetime


@dataclass(frozen=True, slots=True)
class OpenShift:
    """A cashier's drawer since their last close, as the books have it."""

    cashier: str
    drawer_rupiah: int
    movements: tuple[DrawerMovement, ...]  # since the last close, oldest first
    last_closed: ShiftClose | None
    last_closed_at: datetime | None


open_shift_movements_max = 500


def _movement(drawer: uuid.UUID, row: asyncpg.Record) -> DrawerMovement:
    try:
        kind = TransferCode(row["code"]).name
    except ValueError:  # a code we do not name
        kind = str(row["code"])
    into = row["debit_account_id"] == drawer
    return DrawerMovement(
        row["bank_reference"] or str(row["id"]),
        row["card_number"],
        row["amount"] if into else -row["amount"],
        kind,
        row["booked_at"],
    )


async def open_shift(connection: asyncpg.Connection, cashier: str) -> OpenShift:
    """The drawer's balance and what moved it since its last close (a close books the drawer
    to 0: the handover or a difference, codes `cash_handover`, `suspense`)."""
    drawer = drawer_account_id(cashier)
    rows = await connection.fetch(
        "select id, debit_account_id, bank_reference, card_number, amount, code, booked_at "
        "from ledger_transfers where $1 in (debit_account_id, credit_account_id) and "
        "sequence > coalesce((select max(sequence) from ledger_transfers where $1 in "
        "(debit_account_id, credit_account_id) and code = any($2::int[])), 0) "
        "order by sequence limit $3",
        drawer,
        [TransferCode.cash_handover, TransferCode.suspense],
        open_shift_movements_max,
    )
    last = await connection.fetchrow(
        "select shift_id, expected_rupiah, counted_rupiah, closed_at from counter_shifts "
        "where cashier = $1 order by closed_at desc, shift_id desc limit 1",
        cashier,
    )
    return OpenShift(
        cashier,
        await drawer_rupiah(connection, cashier),
        tuple(_movement(drawer, row) for row in rows),
        None
        if last is None
        else ShiftClose(
            cashier, last["shift_id"], last["expected_rupiah"], last["counted_rupiah"], False
        ),
        None if last is None else last["closed_at"],
    )


async def next_shift_id(connection: asyncpg.Connection, cashier: str, day: date) -> str:
    """A shift id not used yet by this cashier: the day and a number (`2026-12-01-2`)."""
    used = set(
        await connection.fetchval(
            "select coalesce(array_agg(shift_id), '{}') from counter_shifts where cashier = $1",
            cashier,
        )
    )
    number = 1
    while f"{day.isoformat()}-{number}" in used:
        number += 1
    return f"{day.isoformat()}-{number}"


async def close_shift(
    connection: asyncpg.Connection,
    cashier: str,
    shift_id: str,
    counted_rupiah: int,
    *,
    closed_by: str,
    now: datetime,
) -> ShiftClose:
    """Compare the counted cash with the books: the counted cash goes to the cash office, a
    shortage (or surplus) to suspense, for finance to explain. Idempotent on (cashier,
    shift_id): a repeat answers the first close and books nothing."""
    async with connection.transaction():
        await books.lock_ledger(connection)  # no top-up books into the drawer while we count
        row = await connection.fetchrow(
            "select expected_rupiah, counted_rupiah from counter_shifts "
            "where cashier = $1 and shift_id = $2",
            cashier,
            shift_id,
        )
        if row is not None:
            return ShiftClose(
                cashier, shift_id, row["expected_rupiah"], row["counted_rupiah"], False
            )
        expected = await drawer_rupiah(connection, cashier)
        drawer = drawer_account_id(cashier)
        office = bank_clearing_account_id(cash_office_code)
        await books.ensure_accounts(
            connection,
            [
                Account(drawer, AccountKind.bank_clearing, drawer_code(cashier)),
                Account(office, AccountKind.bank_clearing, cash_office_code),
                Account(differences_account_id, AccountKind.suspense, differences_owner),
            ],
        )

        def leg(name: str, debit: uuid.UUID, credit: uuid.UUID, amount: int, code: int) -> Transfer:
            transfer_id = derive_id("counter-shift", cashier, shift_id, name)
            return Transfer(transfer_id, debit, credit, amount, code)

        legs = []
        if counted_rupiah:
            legs.append(leg("counted", office, drawer, counted_rupiah, TransferCode.cash_handover))
        if expected > counted_rupiah:
            short = expected - counted_rupiah
            legs.append(leg("short", differences_account_id, drawer, short, TransferCode.suspense))
        elif counted_rupiah > expected:
            over = counted_rupiah - expected
            legs.append(leg("over", drawer, differences_account_id, over, TransferCode.suspense))
        outcomes = await books.create_transfers(connection, legs, now=now)
        assert all(o.result in booked_results for o in outcomes), outcomes
        await connection.execute(
            "insert into counter_shifts (cashier, shift_id, expected_rupiah, counted_rupiah, "
            "closed_by, closed_at) values ($1, $2, $3, $4, $5, $6)",
            cashier,
            shift_id,
            expected,
            counted_rupiah,
            closed_by,
            now,
        )
        return ShiftClose(cashier, shift_id, expected, counted_rupiah, True)
