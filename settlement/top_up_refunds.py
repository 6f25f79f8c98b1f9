"""Money that cannot reach its card goes back: pending top-ups no card took within a setting
(`top_up_expiry_days`, default 90) are given back to whoever paid them.

1. **Withdraw**: it leaves the terminals' list (`pending_top_ups.withdrawn_at`), and waits
   `withdrawal_wait_default` (3 days, as a lost card's balance does) for a terminal that
   downloaded it before to deliver it: such a delivery is taken and booked as usual.
2. **Expire** (`expire_top_ups`, one transaction per top-up, or the caller's, with every due
   `pending_top_ups` row locked first, in the order a batch delivering them locks them, before
   the ledger: an upload, a replacement's move and the expiry never wait crosswise): still not
   taken, it is taken by `expired_taker` and booked
   pending top-up -> refund payable. A terminal that delivers it afterwards gets no money for
   it: the ingest finds it taken, books the card's credit from suspense and quarantines the
   record as `top_up_not_delivered` for staff (`planning.judge_top_ups`). The pending account
   pays once.
3. **Pay back.** A VA payment whose bank named the payer's account (`top_up_payers`) is paid
   back there by a SNAP transfer through the same bank (`pay_refunds`): its partnerReferenceNo
   is derived from the top-up and written (state `sending`) before anything is sent; a repeat
   or an unanswered send is resolved by the bank's status, never by paying under another
   reference. When the bank moved the money: refund payable -> settlement in transit, and the
   statement's debit line is expected (reconciliation books it against our bank account, as a
   settlement payout). A refusal, or a top-up with no account (cash, staff refunds, card
   replacements), is put on the refund-due list: a clerk pays it at the counter and marks it
   (`mark_paid_in_cash`: refund payable -> that clerk's cash drawer). Above the service's refund
   limit (`gateways.four_eyes`, the complaints' limit) a supervisor approves it first
   (`approve_cash_refund`), and pays it out only if someone else approved it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Protocol

import asyncpg

from gateways import four_eyes
from gateways.snap.client import Payout, PayoutOutcome, PayoutState
from gateways.staff import Role, StaffMember
from gateways.terminal_api import counter, registry
from ledger.clock import jakarta
from ledger.records import AccountKind, Transfer, TransferCode, derive_id
from settlement import books
from settlement.matching import ExpectedMovement, MovementKind
from settlement.reconciliation import expect_movements
from settlement.statements import Direction

expiry_default = dt.timedelta(days=90)  # setting `top_up_expiry_days`
withdrawal_wait_default = dt.timedelta(days=3)  # setting `top_up_withdrawal_wait_days`
# Who "took" an expired top-up (`pending_top_ups.taken_terminal_id`): no terminal is sent it,
# and a late delivery is refused as a second one.
expired_taker = "expired"
note_length_max = 500


class RefundError(Exception):
    """A refusal of a refund-due step (unknown top-up, not due, bad note): one line."""


class PayoutPort(Protocol):
    async def pay(self, payout: Payout) -> PayoutOutcome: ...


@dataclass(frozen=True, slots=True)
class Refund:
    top_up_id: str
    card_number: str
    amount_rupiah: int
    state: str  # sending | paid | due | paid_cash
    partner_reference_no: str | None
    expired_at: dt.datetime
    detail: str
    paid_at: dt.datetime | None = None
    paid_by: str | None = None
    note: str = ""
    approved_by: str | None = None  # above the refund limit: the supervisor who approved

    def needs_approval(self, limit_rupiah: int) -> bool:
        """Due, above the limit and not yet approved: no one pays it out yet."""
        return self.state == "due" and self.amount_rupiah > limit_rupiah and not self.approved_by


_columns = (
    "top_up_id, card_number, amount_rupiah, state, partner_reference_no, expired_at, detail, "
    "paid_at, paid_by, note, approved_by"
)


def refund_payable_owner() -> str:
    return "top-ups"


def partner_reference_for(top_up_id: str) -> str:
    """The refund's partnerReferenceNo: stable, so a repeat reaches the bank as the same
    transfer (32 hex characters; the bank echoes it on the statement)."""
    return "TUR" + derive_id("top-up-refund", top_up_id).hex[:29].upper()


async def expire_top_ups(
    connection: asyncpg.Connection,
    *,
    now: dt.datetime,
    older_than: dt.timedelta,
    who: str,
    wait: dt.timedelta = withdrawal_wait_default,
) -> list[Refund]:
    """Withdraw every pending top-up paid before `now - older_than` that no card took, and
    expire those withdrawn `wait` ago and still not taken; returns the refunds made (a second
    run finds nothing: they are taken)."""
    await connection.execute(
        "update pending_top_ups set withdrawn_at = $2 where top_up_id in (select top_up_id "
        "from pending_top_ups where taken_terminal_id is null and withdrawn_at is null "
        "and created_at <= $1 order by top_up_id for update)",
        now - older_than,
        now,
    )
    # In a caller's transaction (`ksh cards expire-top-ups`) the ledger is held from the first
    # booking on: every due row is locked before it, in top-up id order, as uploads lock them.
    await connection.execute(
        "select 1 from pending_top_ups where taken_terminal_id is null and withdrawn_at <= $1 "
        "order by top_up_id for update",
        now - wait,
    )
    due = await connection.fetch(
        "select top_up_id from pending_top_ups where taken_terminal_id is null "
        "and withdrawn_at <= $1 order by created_at, top_up_id",
        now - wait,
    )
    refunds = []
    for row in due:
        refund = await _expire_one(connection, row["top_up_id"], now, who)
        if refund is not None:
            refunds.append(refund)
    return refunds


async def _expire_one(
    connection: asyncpg.Connection, top_up_id: str, now: dt.datetime, who: str
) -> Refund | None:
    async with connection.transaction():
        row = await connection.fetchrow(
            "select p.card_number, p.amount_rupiah, a.account_no from pending_top_ups p "
            "left join top_up_payers a using (top_up_id) "
            "where p.top_up_id = $1 and p.taken_terminal_id is null for update of p",
            top_up_id,
        )
        if row is None:
            return None  # a terminal delivered it meanwhile
        payable = await books.ensure_account(
            connection, AccountKind.refund_payable, refund_payable_owner()
        )
        await books.book(
            connection,
            [
                Transfer(
                    derive_id("top-up-expiry", top_up_id),
                    registry.pending_top_up_account_id(row["card_number"]),
                    payable,
                    row["amount_rupiah"],
                    TransferCode.top_up_expiry,
                    card_number=row["card_number"],
                    bank_reference=top_up_id,
                    metadata=books.metadata(expired_by=who),
                )
            ],
            now=now,
        )
        await connection.execute(
            "update pending_top_ups set taken_terminal_id = $2 where top_up_id = $1",
            top_up_id,
            expired_taker,
        )
        to_bank = row["account_no"] is not None
        found = await connection.fetchrow(
            "insert into top_up_refunds (top_up_id, card_number, amount_rupiah, state, "
            "partner_reference_no, expired_at, expired_by, detail) "
            f"values ($1, $2, $3, $4, $5, $6, $7, $8) returning {_columns}",
            top_up_id,
            row["card_number"],
            row["amount_rupiah"],
            "sending" if to_bank else "due",
            partner_reference_for(top_up_id) if to_bank else None,
            now,
            who,
            "" if to_bank else "the bank named no account of the payer",
        )
        return Refund(*found.values())


async def pay_refunds(
    connection: asyncpg.Connection,
    payer: PayoutPort,
    *,
    partner_id: str,
    source_account_no: str,
    now: dt.datetime,
) -> list[Refund]:
    """Send (or ask again about) every refund of a VA payment made through `partner_id` still
    `sending`; returns them as they stand after. Intrabank: the payer paid at this bank."""
    rows = await connection.fetch(
        "select r.top_up_id, r.amount_rupiah, r.partner_reference_no, r.expired_at, "
        "a.account_no, a.name from top_up_refunds r join top_up_payers a using (top_up_id) "
        "where r.state = 'sending' and a.partner_id = $1 order by r.top_up_id",
        partner_id,
    )
    settled = []
    for row in rows:
        payout = Payout(
            partner_reference_no=row["partner_reference_no"],
            source_account_no=source_account_no,
            beneficiary_account_no=row["account_no"],
            amount_rupiah=row["amount_rupiah"],
            # The same body on every attempt: the bank compares a repeat with the first.
            transaction_date=row["expired_at"],
            beneficiary_account_name=row["name"],
            remark=f"KSH top-up refund {row['top_up_id']}"[:50],
        )
        outcome = await payer.pay(payout)
        settled.append(await _record_outcome(connection, row["top_up_id"], payout, outcome, now))
    return settled


async def _record_outcome(
    connection: asyncpg.Connection,
    top_up_id: str,
    payout: Payout,
    outcome: PayoutOutcome,
    now: dt.datetime,
) -> Refund:
    async with connection.transaction():
        if outcome.state is PayoutState.succeeded:
            in_transit = await books.ensure_account(
                connection, AccountKind.settlement_in_transit, "payouts"
            )
            await books.book(
                connection,
                [
                    _from_payable(
                        derive_id("top-up-refund-paid", top_up_id),
                        in_transit,
                        payout.amount_rupiah,
                        payout.partner_reference_no,
                        top_up_id,
                    )
                ],
                now=now,
            )
            await expect_movements(
                connection,
                [
                    (
                        ExpectedMovement(
                            payout.partner_reference_no,
                            MovementKind.payout,
                            payout.source_account_no,
                            Direction.debit,
                            payout.amount_rupiah,
                            now.astimezone(jakarta).date(),
                            payout.partner_reference_no,
                        ),
                        in_transit,
                    )
                ],
            )
            state, detail = "paid", outcome.bank_reference_no
        elif outcome.state is PayoutState.failed:
            state = "due"
            detail = f"the bank refused: {outcome.response_code} {outcome.response_message}"
        else:  # no final answer: the next run asks the bank again, same reference
            state, detail = "sending", f"no final answer yet: {outcome.response_message}"
        found = await connection.fetchrow(
            "update top_up_refunds set state = $2::text, detail = $3, "
            "paid_at = case when $2::text = 'paid' then $4::timestamptz end where top_up_id = $1 "
            f"returning {_columns}",
            top_up_id,
            state,
            detail[:200].strip(),
            now,
        )
        return Refund(*found.values())


def _from_payable(
    transfer_id: uuid.UUID, credit: uuid.UUID, rupiah: int, reference: str, top_up_id: str
) -> Transfer:
    return Transfer(
        transfer_id,
        books.account_id(AccountKind.refund_payable, refund_payable_owner()),
        credit,
        rupiah,
        TransferCode.payout,
        bank_reference=reference,
        metadata=books.metadata(top_up=top_up_id),
    )


async def refunds_due(connection: asyncpg.Connection, *, everything: bool = False) -> list[Refund]:
    """The refund-due list (oldest first); with `everything`, every refund made."""
    rows = await connection.fetch(
        f"select {_columns} from top_up_refunds "
        "where $1 or state in ('due', 'sending') order by expired_at, top_up_id",
        everything,
    )
    return [Refund(*row.values()) for row in rows]


async def _due_row(connection: asyncpg.Connection, top_up_id: str) -> asyncpg.Record:
    row = await connection.fetchrow(
        f"select {_columns} from top_up_refunds where top_up_id = $1 for update", top_up_id
    )
    if row is None:
        raise RefundError(f"no refund of top-up {top_up_id}")
    if row["state"] != "due":
        raise RefundError(f"the refund of top-up {top_up_id} is {row['state']}, not due")
    return row


async def approve_cash_refund(
    connection: asyncpg.Connection, top_up_id: str, member: StaffMember, *, now: dt.datetime
) -> Refund:
    """A supervisor approves a due refund above the limit for the counter to pay out (by
    someone else). Their repeat answers as before; another supervisor's is refused (the log
    would name them as an approver they are not)."""
    if member.role is not Role.supervisor:
        raise RefundError("only a supervisor approves a refund above the limit")
    async with connection.transaction():
        row = await _due_row(connection, top_up_id)
        if row["approved_by"] not in (None, member.username):
            raise RefundError(
                f"the refund of top-up {top_up_id} is approved by {row['approved_by']} already"
            )
        if row["approved_by"] is None:
            row = await connection.fetchrow(
                "update top_up_refunds set approved_by = $2, approved_at = $3 "
                f"where top_up_id = $1 returning {_columns}",
                top_up_id,
                member.username,
                now,
            )
        return Refund(*row.values())


async def mark_paid_in_cash(
    connection: asyncpg.Connection,
    top_up_id: str,
    *,
    who: str,
    note: str,
    now: dt.datetime,
) -> Refund:
    """A clerk paid a due refund at the counter from their drawer: refund payable -> the
    drawer of `who`, so that the close of their shift expects that much less cash. Above the
    refund limit (`gateways.four_eyes`), only once a supervisor other than `who` approved it."""
    note = note.strip()
    if not note or len(note) > note_length_max or not note.isprintable():
        raise RefundError(f"a note says how it was paid, in 1 to {note_length_max} characters")
    async with connection.transaction():
        row = await _due_row(connection, top_up_id)
        limit_rupiah = await four_eyes.limit_rupiah(connection, four_eyes.Limit.refund)
        if Refund(*row.values()).needs_approval(limit_rupiah):
            raise RefundError(
                f"the refund of top-up {top_up_id} (Rp {row['amount_rupiah']:,}) is above the "
                f"Rp {limit_rupiah:,} limit: a supervisor approves it first "
                f"(ksh cards refund-approve {top_up_id}), and someone else pays it out"
            )
        if row["approved_by"] == who:
            raise RefundError(
                f"{who} approved the refund of top-up {top_up_id}: someone else pays it out"
            )
        cash = await counter.ensure_drawer(connection, who)
        await books.book(
            connection,
            [
                _from_payable(
                    derive_id("top-up-refund-cash", top_up_id),
                    cash,
                    row["amount_rupiah"],
                    top_up_id,
                    top_up_id,
                )
            ],
            now=now,
        )
        found = await connection.fetchrow(
            "update top_up_refunds set state = 'paid_cash', paid_at = $2, paid_by = $3, "
            f"note = $4 where top_up_id = $1 returning {_columns}",
            top_up_id,
            now,
            who,
            note,
        )
        return Refund(*found.values())
