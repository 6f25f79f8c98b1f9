"""Riders' complaints and disputes, answered within ten calendar days.

A complaint comes in at the counter, by phone, on the web or through the city's complaint app
(Lapor Hendi), about one card and, usually, some of its card transactions picked from the
card's history (`card_records`). It is due 10 calendar days after the day it was received
(in Semarang, by the business clock); one still open after its due day is overdue, listed
first and counted on `/metrics`.

    received -> investigating -> resolved_refund | resolved_no_refund | rejected
    received ------------------> (any of the three answers)

A refund gives back what the named card transactions paid: for each, a ledger transfer
(`TransferCode.correction`) from whoever was paid (the operator's revenue for a fare, the
merchant's payable for a sale; read from the tap's own ledger transfer) to the card's pending
top-up account, with an id derived from the complaint and the card counter; then one pending
top-up of the total, announced to the terminals and written to the card at its next tap. A
card transaction is never refunded for more than it paid, by one complaint or several (checked
under the card's lock). Above the refund limit (`gateways.four_eyes`) a refund waits for a
supervisor other than the person who asked (the write-off rule's four eyes).

Refusals a person can mend are `ComplaintError`s (one line, with a code); the outcome of
answering with a refund is a `Resolution`.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import statistics
import uuid
from dataclasses import dataclass

import asyncpg

from gateways import four_eyes
from gateways.staff import Role, StaffMember, record_action
from gateways.terminal_api import books, card_desk, registry
from gateways.terminal_api.accounts import card_transfer_id
from ledger.clock import jakarta
from ledger.records import Transfer, TransferCode, booked_results, derive_id

answer_days = 10  # the city's promise: every complaint answered within 10 calendar days
description_length_max = 2_000
note_length_max = 500
taps_per_complaint_max = 20
history_rows_max = 50  # the card's latest transactions offered to pick from
complaints_listed_max = 500


# Serialises refunds of one card: the refundable rest of a tap is read, then booked.
card_lock_namespace = 0x4350  # "CP"
staff_roles = (Role.clerk, Role.supervisor)  # take, investigate and answer complaints
refundable_kinds = ("fare_debit", "sale")
refund_top_up_prefix = "complaint-"
# The booked record of card counter t.card_counter of card $2 that paid someone (kinds $3).
paid_record_query = """select c.kind, c.amount_rupiah from card_records c
                        where c.card_number = $2 and c.card_counter = t.card_counter
                          and c.outcome = 'booked' and c.kind = any($3::text[])
                          and c.amount_rupiah > 0
                        order by c.terminal_id, c.sequence limit 1"""
# What a POS gave back at its counter of card counter t.card_counter of card $2: the card's
# LimitedCredit returns the debits of its last transaction that had any, so a booked refund
# record reverses the newest paying record before it (kinds $3).
pos_refund_query = """select sum(r.amount_rupiah) as rupiah from card_records r
                       where r.card_number = $2 and r.kind = 'refund' and r.outcome = 'booked'
                         and r.card_counter > t.card_counter
                         and not exists (
                             select 1 from card_records d
                              where d.card_number = $2 and d.outcome = 'booked'
                                and d.kind = any($3::text[]) and d.amount_rupiah > 0
                                and d.card_counter > t.card_counter
                                and d.card_counter < r.card_counter)"""


class Channel(enum.StrEnum):
    counter = "counter"
    phone = "phone"
    web = "web"
    lapor_hendi = "lapor_hendi"  # the city's complaint app


class State(enum.StrEnum):
    received = "received"
    investigating = "investigating"
    resolved_refund = "resolved_refund"
    resolved_no_refund = "resolved_no_refund"
    rejected = "rejected"


open_states = (State.received, State.investigating)


class Resolution(enum.StrEnum):
    done = "done"
    awaiting_approval = "awaiting_approval"  # above the limit: another supervisor approves


class ComplaintError(ValueError):
    """A change refused, said in one line; `code` names the kind of refusal."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class TapRef:
    """A card transaction as `card_records` keys it: the terminal's record."""

    terminal_id: str
    sequence: int


@dataclass(frozen=True, slots=True)
class ComplaintTap:
    terminal_id: str
    sequence: int
    card_counter: int
    kind: str
    amount_rupiah: int  # what it paid someone, so what a refund may give back (0: nothing)
    time_ms: int
    outcome: str


@dataclass(frozen=True, slots=True)
class Event:
    at: dt.datetime
    username: str
    state: State
    note: str


@dataclass(frozen=True, slots=True)
class Complaint:
    complaint_id: int
    card_number: str
    channel: Channel
    description: str
    state: State
    received_at: dt.datetime
    received_by: str
    due_on: dt.date
    answered_at: dt.datetime | None
    answered_by: str | None
    answer: str | None
    refund_rupiah: int
    refund_top_up_id: str | None
    refund_requested_by: str | None
    refund_requested_rupiah: int | None
    approved_by: str | None
    taps: tuple[ComplaintTap, ...] = ()
    events: tuple[Event, ...] = ()

    def overdue(self, today: dt.date) -> bool:
        """Still open after its due day, or answered after it."""
        if self.answered_at is None:
            return today > self.due_on
        return local_day(self.answered_at) > self.due_on


def local_day(moment: dt.datetime) -> dt.date:
    return moment.astimezone(jakarta).date()


def due_on(received_at: dt.datetime) -> dt.date:
    return local_day(received_at) + dt.timedelta(days=answer_days)


def refund_top_up_id(complaint_id: int) -> str:
    return f"{refund_top_up_prefix}{complaint_id}"


def refund_transfer_id(complaint_id: int, card_counter: int) -> uuid.UUID:
    return derive_id("complaint-refund", complaint_id, card_counter)


def _text(value: str, field: str, length_max: int) -> str:
    text = value.strip()
    if not text or len(text) > length_max or not text.replace("\n", " ").isprintable():
        raise ComplaintError(f"{field} says it in 1 to {length_max} characters", "bad_field")
    return text


def _may_change(member: StaffMember) -> None:
    if member.role not in staff_roles:
        raise ComplaintError(
            f"{member.username} is {member.role.value}: only a clerk or supervisor may do this",
            "not_allowed",
        )


# ------------------------------------------------------------------------------ intake


async def add_complaint(
    connection: asyncpg.Connection,
    *,
    card_number: str,
    channel: str,
    description: str,
    taps: list[TapRef],
    received_by: str,
    now: dt.datetime,
) -> int:
    """Take a complaint about a card (and the card transactions it names); its id."""
    try:
        chosen = Channel(channel)
    except ValueError:
        choices = ", ".join(channel.value for channel in Channel)
        raise ComplaintError(f"channel is one of {choices}", "bad_field") from None
    text = _text(description, "description", description_length_max)
    if len(taps) > taps_per_complaint_max:
        raise ComplaintError(
            f"a complaint names at most {taps_per_complaint_max} taps", "bad_field"
        )
    async with connection.transaction():
        known = await connection.fetchval("select 1 from cards where card_number = $1", card_number)
        if known is None:
            raise ComplaintError(f"card {card_number} was never issued", "card_not_found")
        rows = await connection.fetch(
            "select terminal_id, sequence, card_counter "
            "from card_records where card_number = $1 and (terminal_id, sequence) in "
            "(select * from unnest($2::text[], $3::bigint[]))",
            card_number,
            [tap.terminal_id for tap in taps],
            [tap.sequence for tap in taps],
        )
        found = {(row["terminal_id"], row["sequence"]): row for row in rows}
        for tap in taps:
            if (tap.terminal_id, tap.sequence) not in found:
                raise ComplaintError(
                    f"card {card_number} has no transaction {tap.terminal_id}/{tap.sequence}",
                    "tap_not_found",
                )
        complaint_id = int(
            await connection.fetchval(
                "insert into complaints (card_number, channel, description, received_at, "
                "received_by, due_on) values ($1, $2, $3, $4, $5, $6) returning complaint_id",
                card_number,
                chosen.value,
                text,
                now,
                received_by,
                due_on(now),
            )
        )
        await connection.executemany(
            "insert into complaint_taps (complaint_id, terminal_id, sequence, card_counter) "
            "values ($1, $2, $3, $4) on conflict do nothing",
            [
                (complaint_id, row["terminal_id"], row["sequence"], row["card_counter"])
                for row in found.values()
            ],
        )
        await _event(connection, complaint_id, received_by, State.received, chosen.value, now)
    return complaint_id


async def _event(
    connection: asyncpg.Connection,
    complaint_id: int,
    username: str,
    state: State,
    note: str,
    now: dt.datetime,
) -> None:
    await connection.execute(
        "insert into complaint_events (complaint_id, at, username, state, note) "
        "values ($1, $2, $3, $4, $5)",
        complaint_id,
        now,
        username,
        state.value,
        note[:note_length_max],
    )


# ------------------------------------------------------------------------------ steps


async def _open_row(connection: asyncpg.Connection, complaint_id: int) -> asyncpg.Record:
    """The complaint, locked until the transaction ends; a `ComplaintError` if it is answered."""
    row = await connection.fetchrow(
        "select * from complaints where complaint_id = $1 for update", complaint_id
    )
    if row is None:
        raise ComplaintError(f"no complaint {complaint_id}", "not_found")
    if row["state"] not in open_states:
        raise ComplaintError(
            f"complaint {complaint_id} was answered already ({row['state']})", "already_answered"
        )
    return row


async def investigate(
    connection: asyncpg.Connection,
    complaint_id: int,
    member: StaffMember,
    note: str,
    *,
    now: dt.datetime,
) -> None:
    _may_change(member)
    text = _text(note, "note", note_length_max)
    async with connection.transaction():
        row = await _open_row(connection, complaint_id)
        if row["state"] != State.received:
            raise ComplaintError(f"complaint {complaint_id} is being investigated", "wrong_state")
        await connection.execute(
            "update complaints set state = 'investigating' where complaint_id = $1", complaint_id
        )
        await _event(connection, complaint_id, member.username, State.investigating, text, now)


async def reject(
    connection: asyncpg.Connection,
    complaint_id: int,
    member: StaffMember,
    answer: str,
    *,
    now: dt.datetime,
) -> None:
    await _answer_without_money(connection, complaint_id, member, answer, State.rejected, now)


async def resolve(
    connection: asyncpg.Connection,
    complaint_id: int,
    member: StaffMember,
    answer: str,
    *,
    refund_rupiah: int,
    now: dt.datetime,
) -> Resolution:
    """Answer a complaint: with no refund, or with `refund_rupiah` given back from the named
    card transactions (booked now, or, above the limit, once another supervisor approves)."""
    if refund_rupiah == 0:
        await _answer_without_money(
            connection, complaint_id, member, answer, State.resolved_no_refund, now
        )
        return Resolution.done
    _may_change(member)
    text = _text(answer, "answer", note_length_max)
    if refund_rupiah < 0:
        raise ComplaintError("a refund is a positive amount of rupiah", "bad_field")
    async with connection.transaction():
        row = await _open_row(connection, complaint_id)
        if row["refund_requested_by"] is not None:
            raise ComplaintError(
                f"a refund of complaint {complaint_id} is waiting for approval", "awaiting_approval"
            )
        await _refundable_shares(connection, row, refund_rupiah)  # refuses an over-refund now
        if refund_rupiah > await four_eyes.limit_rupiah(connection, four_eyes.Limit.refund):
            await connection.execute(
                "update complaints set refund_requested_by = $2, refund_requested_rupiah = $3, "
                "refund_requested_note = $4 where complaint_id = $1",
                complaint_id,
                member.username,
                refund_rupiah,
                text,
            )
            await _event(
                connection,
                complaint_id,
                member.username,
                State(row["state"]),
                f"refund of Rp {refund_rupiah:,} asked, waiting for a supervisor: {text}",
                now,
            )
            return Resolution.awaiting_approval
        await _book_refund(connection, member, row, refund_rupiah, member.username, None, text, now)
    return Resolution.done


async def approve_refund(
    connection: asyncpg.Connection, complaint_id: int, member: StaffMember, *, now: dt.datetime
) -> None:
    """A supervisor other than the person who asked books a refund above the limit."""
    if member.role is not Role.supervisor:
        raise ComplaintError("only a supervisor approves a refund", "not_allowed")
    async with connection.transaction():
        row = await _open_row(connection, complaint_id)
        requested_by = row["refund_requested_by"]
        if requested_by is None:
            raise ComplaintError(f"complaint {complaint_id} has no refund to approve", "not_found")
        if requested_by == member.username:
            raise ComplaintError("the approver must be someone other than the asker", "same_person")
        await _book_refund(
            connection,
            member,
            row,
            int(row["refund_requested_rupiah"]),
            requested_by,
            member.username,
            str(row["refund_requested_note"]),
            now,
        )


async def _answer_without_money(
    connection: asyncpg.Connection,
    complaint_id: int,
    member: StaffMember,
    answer: str,
    state: State,
    now: dt.datetime,
) -> None:
    _may_change(member)
    text = _text(answer, "answer", note_length_max)
    async with connection.transaction():
        await _open_row(connection, complaint_id)
        await connection.execute(
            "update complaints set state = $2, answered_at = $3, answered_by = $4, answer = $5, "
            "refund_requested_by = null, refund_requested_rupiah = null "
            "where complaint_id = $1",
            complaint_id,
            state.value,
            now,
            member.username,
            text,
        )
        await _event(connection, complaint_id, member.username, state, text, now)


# ------------------------------------------------------------------------------ refunds


@dataclass(frozen=True, slots=True)
class _Share:
    """The part of a refund taken back from one card transaction."""

    card_counter: int
    kind: str
    amount_rupiah: int


@dataclass(frozen=True, slots=True)
class _Refundable:
    """A named card transaction that paid someone: what it may still give back."""

    card_counter: int
    kind: str
    left_rupiah: int


async def _refundable(
    connection: asyncpg.Connection, complaint_id: int, card_number: str
) -> list[_Refundable]:
    """The named card transactions that paid someone, oldest first, each with what it paid
    less what any complaint, or the POS on the card itself, gave back of it already. What each
    paid is read now, by card counter, from whichever terminal's record of it was booked (one
    named while in doubt may have been settled since)."""
    taps = await connection.fetch(
        f"""select t.card_counter, paid.kind,
                   paid.amount_rupiah - coalesce(back.rupiah, 0) - coalesce(at_pos.rupiah, 0)
                   as left_rupiah
              from (select distinct card_counter from complaint_taps
                     where complaint_id = $1) t
              join lateral ({paid_record_query}) paid on true
              left join lateral (select sum(r.amount_rupiah) as rupiah from complaint_refunds r
                                  where r.card_number = $2 and r.card_counter = t.card_counter)
                        back on true
              left join lateral ({pos_refund_query}) at_pos on true
             order by t.card_counter""",
        complaint_id,
        card_number,
        list(refundable_kinds),
    )
    return [
        _Refundable(int(tap["card_counter"]), str(tap["kind"]), int(tap["left_rupiah"]))
        for tap in taps
    ]


async def refundable_rupiah(connection: asyncpg.Connection, complaint: Complaint) -> int:
    """The most a refund of `complaint` may give back now."""
    found = await _refundable(connection, complaint.complaint_id, complaint.card_number)
    return sum(max(0, tap.left_rupiah) for tap in found)


async def _refundable_shares(
    connection: asyncpg.Connection, row: asyncpg.Record, refund_rupiah: int
) -> list[_Share]:
    """`refund_rupiah` spread over the named card transactions, oldest first, each up to what
    it has left to give back; a `ComplaintError` if they hold less. Takes the card's lock for
    the rest of the transaction."""
    card_number = row["card_number"]
    await connection.execute(
        "select pg_advisory_xact_lock($1, hashtext($2))", card_lock_namespace, card_number
    )
    shares: list[_Share] = []
    left = refund_rupiah
    for tap in await _refundable(connection, int(row["complaint_id"]), card_number):
        part = min(left, tap.left_rupiah)
        if part > 0:
            shares.append(_Share(tap.card_counter, tap.kind, part))
            left -= part
    if left > 0:
        most = refund_rupiah - left
        raise ComplaintError(
            f"the taps complaint {row['complaint_id']} names can give back at most "
            f"Rp {most:,}, not Rp {refund_rupiah:,}",
            "over_refund",
        )
    return shares


async def _book_refund(
    connection: asyncpg.Connection,
    booked_by: StaffMember,
    row: asyncpg.Record,
    refund_rupiah: int,
    requested_by: str,
    approved_by: str | None,
    answer: str,
    now: dt.datetime,
) -> None:
    """Inside the caller's transaction, with the complaint locked and open."""
    complaint_id, card_number = int(row["complaint_id"]), str(row["card_number"])
    shares = await _refundable_shares(connection, row, refund_rupiah)
    top_up_id = refund_top_up_id(complaint_id)
    recipient = await card_desk.card_owed(connection, card_number)
    transfers = []
    for share in shares:
        leg = "fare" if share.kind == "fare_debit" else "sale"
        paid = await connection.fetchrow(
            "select credit_account_id from ledger_transfers where id = $1",
            card_transfer_id(card_number, share.card_counter, leg),
        )
        if paid is None:
            raise ComplaintError(
                f"card transaction {share.card_counter} of card {card_number} paid no one in "
                "the books: nothing to take back",
                "not_refundable",
            )
        transfers.append(
            Transfer(
                refund_transfer_id(complaint_id, share.card_counter),
                paid["credit_account_id"],
                registry.pending_top_up_account_id(recipient),
                share.amount_rupiah,
                TransferCode.correction,
                card_number=card_number,
                card_counter=share.card_counter,
                bank_reference=top_up_id,
                metadata=json.dumps(
                    {
                        "complaint": complaint_id,
                        "requested_by": requested_by,
                        "approved_by": approved_by or requested_by,
                    }
                    | ({} if recipient == card_number else {"to_card": recipient}),
                    sort_keys=True,
                ),
            )
        )
    outcomes = await books.create_transfers(connection, transfers, now=now)
    refused = [outcome for outcome in outcomes if outcome.result not in booked_results]
    assert not refused, refused
    await connection.executemany(
        "insert into complaint_refunds (complaint_id, card_number, card_counter, amount_rupiah, "
        "transfer_id) values ($1, $2, $3, $4, $5)",
        [
            (complaint_id, card_number, transfer.card_counter, transfer.amount, transfer.id)
            for transfer in transfers
        ],
    )
    await registry.add_pending_top_up(connection, top_up_id, recipient, refund_rupiah, now)
    await connection.execute(
        "update complaints set state = 'resolved_refund', answered_at = $2, answered_by = $3, "
        "answer = $4, refund_rupiah = $5, refund_top_up_id = $6, approved_by = $7 "
        "where complaint_id = $1",
        complaint_id,
        now,
        requested_by,
        answer,
        refund_rupiah,
        top_up_id,
        approved_by,
    )
    # Money moved by a person: on the staff actions log too, beside the admin API's top-ups.
    await record_action(
        connection,
        username=booked_by.username,
        role=booked_by.role.value,
        action="complaint_refund",
        subject=card_number,
        reason=answer,
        now=now,
        detail={
            "complaint": complaint_id,
            "amount_rupiah": refund_rupiah,
            "top_up_id": top_up_id,
            "requested_by": requested_by,
            "approved_by": approved_by,
        },
    )
    by = requested_by if approved_by is None else f"{requested_by}, approved by {approved_by}"
    where = "the card" if recipient == card_number else f"card {recipient}, its replacement,"
    await _event(
        connection,
        complaint_id,
        approved_by or requested_by,
        State.resolved_refund,
        f"Rp {refund_rupiah:,} to {where} at its next tap ({by}): {answer}",
        now,
    )


# ------------------------------------------------------------------------------ reading


def _complaint(
    row: asyncpg.Record, taps: tuple[ComplaintTap, ...] = (), events: tuple[Event, ...] = ()
) -> Complaint:
    return Complaint(
        int(row["complaint_id"]),
        row["card_number"],
        Channel(row["channel"]),
        row["description"],
        State(row["state"]),
        row["received_at"],
        row["received_by"],
        row["due_on"],
        row["answered_at"],
        row["answered_by"],
        row["answer"],
        int(row["refund_rupiah"]),
        row["refund_top_up_id"],
        row["refund_requested_by"],
        row["refund_requested_rupiah"],
        row["approved_by"],
        taps,
        events,
    )


async def complaints(
    connection: asyncpg.Connection,
    *,
    today: dt.date,
    open_only: bool = False,
    card_number: str | None = None,
    limit: int = complaints_listed_max,
) -> list[Complaint]:
    """Overdue first (oldest due first), then the other open ones by due day, then the
    answered ones, latest first."""
    rows = await connection.fetch(
        """select * from complaints
            where ($2::bool is false or answered_at is null)
              and ($3::text is null or card_number = $3)
            order by (answered_at is null and due_on < $1) desc, (answered_at is null) desc,
                     case when answered_at is null then due_on end, answered_at desc,
                     complaint_id
            limit $4""",
        today,
        open_only,
        card_number,
        limit,
    )
    return [_complaint(row) for row in rows]


async def complaint(connection: asyncpg.Connection, complaint_id: int) -> Complaint | None:
    """One complaint with its taps and its history."""
    row = await connection.fetchrow(
        "select * from complaints where complaint_id = $1", complaint_id
    )
    if row is None:
        return None
    taps = await connection.fetch(
        f"""select c.terminal_id, c.sequence, c.card_counter, c.kind,
                   coalesce(paid.amount_rupiah, 0), c.time_ms, c.outcome
              from complaint_taps t join card_records c using (terminal_id, sequence)
              left join lateral ({paid_record_query}) paid on true
             where t.complaint_id = $1 order by t.card_counter, t.terminal_id""",
        complaint_id,
        row["card_number"],
        list(refundable_kinds),
    )
    events = await connection.fetch(
        "select at, username, state, note from complaint_events where complaint_id = $1 "
        "order by event_id",
        complaint_id,
    )
    return _complaint(
        row,
        tuple(ComplaintTap(*tap) for tap in taps),
        tuple(Event(e["at"], e["username"], State(e["state"]), e["note"]) for e in events),
    )


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """One card transaction as the back office has it, for people to pick from or read."""

    terminal_id: str
    sequence: int
    kind: str
    card_counter: int
    amount_rupiah: int
    topup_rupiah: int
    balance_after_rupiah: int
    time_ms: int
    route: str
    merchant_id: str
    outcome: str


async def card_history(
    connection: asyncpg.Connection, card_number: str, limit: int = history_rows_max
) -> list[HistoryRecord]:
    """The card's latest transactions, newest first."""
    rows = await connection.fetch(
        """select terminal_id, sequence, kind, card_counter, amount_rupiah, topup_rupiah,
                  balance_after_rupiah, time_ms, route, merchant_id, outcome
             from card_records where card_number = $1
            order by card_counter desc, time_ms desc, terminal_id limit $2""",
        card_number,
        limit,
    )
    return [HistoryRecord(*row) for row in rows]


# ------------------------------------------------------------------------------ report


@dataclass(frozen=True, slots=True)
class MonthlyReport:
    """The complaints received in a month (in Semarang), as they stand on `as_of`."""

    month: str  # YYYY-MM
    as_of: dt.date
    received: int
    by_state: dict[str, int]
    by_channel: dict[str, int]
    answered: int
    median_days_to_answer: float | None
    overdue: int  # answered after the due day, or still open past it
    refunded_rupiah: int

    def as_json(self) -> dict[str, object]:
        return {
            "month": self.month,
            "as_of": self.as_of.isoformat(),
            "received": self.received,
            "by_state": self.by_state,
            "by_channel": self.by_channel,
            "answered": self.answered,
            "median_days_to_answer": self.median_days_to_answer,
            "overdue": self.overdue,
            "refunded_rupiah": self.refunded_rupiah,
        }


def month_start(text: str) -> dt.date:
    """`YYYY-MM` as the month's first day; ValueError otherwise."""
    try:
        return dt.datetime.strptime(text, "%Y-%m").date()
    except ValueError:
        raise ValueError(f"a month is YYYY-MM, not {text!r}") from None


async def monthly_report(
    connection: asyncpg.Connection, first_day: dt.date, *, today: dt.date
) -> MonthlyReport:
    next_month = (first_day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    start = dt.datetime.combine(first_day, dt.time(), jakarta)
    end = dt.datetime.combine(next_month, dt.time(), jakarta)
    rows = await connection.fetch(
        "select * from complaints where received_at >= $1 and received_at < $2",
        start,
        end,
    )
    found = [_complaint(row) for row in rows]
    days = [
        (local_day(c.answered_at) - local_day(c.received_at)).days
        for c in found
        if c.answered_at is not None
    ]
    return MonthlyReport(
        first_day.strftime("%Y-%m"),
        today,
        len(found),
        {state.value: sum(1 for c in found if c.state is state) for state in State},
        {channel.value: sum(1 for c in found if c.channel is channel) for channel in Channel},
        len(days),
        float(statistics.median(days)) if days else None,
        sum(1 for c in found if c.overdue(today)),
        sum(c.refund_rupiah for c in found),
    )


async def open_counts(connection: asyncpg.Connection, today: dt.date) -> tuple[dict[str, int], int]:
    """Open complaints by state, and how many of them are overdue (for `/metrics`)."""
    rows = await connection.fetch(
        "select state, count(*) as open, count(*) filter (where due_on < $1) as overdue "
        "from complaints where answered_at is null group by state",
        today,
    )
    by_state = {state.value: 0 for state in open_states}
    by_state.update({row["state"]: int(row["open"]) for row in rows})
    return by_state, sum(int(row["overdue"]) for row in rows)
