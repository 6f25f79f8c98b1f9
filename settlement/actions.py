"""What finance staff do with exceptions. Each action is a ledger transfer (or a new payout
attempt) that records who, when and why, and closes the exception it answers.

Results are values (`ActionResult`), not exceptions: the pages show them to the person.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

import asyncpg

from gateways import four_eyes
from gateways.snap.client import PayoutState
from gateways.staff import Role as Role  # staff roles and members live in gateways.staff
from gateways.staff import StaffMember as Staff
from ledger.records import AccountKind, Transfer, derive_id
from settlement import books
from settlement.end_of_day import (
    EndOfDayConfig,
    PayoutPort,
    attempt_beneficiary,
    instruction_for,
    record_instructions,
    record_outcome,
)
from settlement.matching import Match, MatchKind
from settlement.reconciliation import confirm_matches
from settlement.statements import Direction

note_length_max = 500


class ActionResult(enum.StrEnum):
    done = "done"
    awaiting_approval = "awaiting_approval"  # a write-off above the limit: a second person
    not_found = "not_found"
    already_resolved = "already_resolved"
    not_allowed = "not_allowed"  # the role may not do this
    note_required = "note_required"  # every action says why
    wrong_kind = "wrong_kind"  # e.g. re-initiating something that is not a refused payout
    amounts_differ = "amounts_differ"  # a manual match must balance
    same_person = "same_person"  # the approver must not be the requester
    attempt_outstanding = "attempt_outstanding"  # another attempt may pay: no new one


def check_note(note: str) -> ActionResult | None:
    if not note.strip():
        return ActionResult.note_required
    return None


async def open_exception_row(
    connection: asyncpg.Connection, exception_id: str
) -> asyncpg.Record | ActionResult:
    row = await connection.fetchrow(
        "select * from settlement_exceptions where exception_id = $1 for update", exception_id
    )
    if row is None:
        return ActionResult.not_found
    if row["resolved_at"] is not None:
        return ActionResult.already_resolved
    return row


async def write_off(
    connection: asyncpg.Connection,
    exception_id: str,
    staff: Staff,
    note: str,
    *,
    now: dt.datetime,
) -> ActionResult:
    """Park an unexplained statement line in suspense (money in: bank account -> suspense;
    money out: suspense -> bank account). Above the write-off limit (`gateways.four_eyes`)
    the request waits, whoever made it,
    for a supervisor other than the requester, who approves with `approve_write_off`; a
    request already waiting is left as it is (the first requester stays on record)."""
    if staff.role is Role.auditor:
        return ActionResult.not_allowed
    if (problem := check_note(note)) is not None:
        return problem
    async with connection.transaction():
        row = await open_exception_row(connection, exception_id)
        if isinstance(row, ActionResult):
            return row
        if row["subject_kind"] != "line":
            return ActionResult.wrong_kind
        if row["write_off_requested_by"] is not None:
            return ActionResult.awaiting_approval
        if row["amount_rupiah"] > await four_eyes.limit_rupiah(
            connection, four_eyes.Limit.write_off
        ):
            await connection.execute(
                """update settlement_exceptions set write_off_requested_by = $2,
                          write_off_requested_note = $3 where exception_id = $1""",
                exception_id,
                staff.username,
                note[:note_length_max],
            )
            return ActionResult.awaiting_approval
        await book_write_off(connection, row, staff.username, staff.username, note, now)
    return ActionResult.done


async def approve_write_off(
    connection: asyncpg.Connection, exception_id: str, staff: Staff, *, now: dt.datetime
) -> ActionResult:
    if staff.role is not Role.supervisor:
        return ActionResult.not_allowed
    async with connection.transaction():
        row = await open_exception_row(connection, exception_id)
        if isinstance(row, ActionResult):
            return row
        if row["write_off_requested_by"] is None:
            return ActionResult.not_found
        if row["write_off_requested_by"] == staff.username:
            return ActionResult.same_person
        await book_write_off(
            connection,
            row,
            row["write_off_requested_by"],
            staff.username,
            row["write_off_requested_note"],
            now,
        )
    return ActionResult.done


async def book_write_off(
    connection: asyncpg.Connection,
    row: asyncpg.Record,
    requested_by: str,
    approved_by: str,
    note: str,
    now: dt.datetime,
) -> None:
    line = await connection.fetchrow(
        "select * from settlement_statement_lines where line_key = $1", row["subject_id"]
    )
    assert line is not None, row
    ours = await books.ensure_account(
        connection,
        AccountKind.bank_account,
        books.bank_account_owner(line["bank"], line["account"]),
    )
    suspense = await books.ensure_account(connection, AccountKind.suspense, "reconciliation")
    money_in = line["direction"] == Direction.credit.value
    transfer_id = derive_id("settlement-write-off", row["exception_id"])
    await books.book(
        connection,
        [
            Transfer(
                transfer_id,
                ours if money_in else suspense,
                suspense if money_in else ours,
                line["amount_rupiah"],
                books.SettlementCode.write_off,
                bank_reference=(line["bank_reference"] or line["reference"])[:100] or None,
                metadata=books.metadata(
                    exception=row["exception_id"],
                    reason=row["reason"],
                    requested_by=requested_by,
                    approved_by=approved_by,
                    note=note[:note_length_max],
                ),
            )
        ],
        now=now,
    )
    await connection.execute(
        """update settlement_exceptions set resolution = 'written_off', resolved_by = $2,
                  approved_by = $3, resolution_note = $4, resolution_transfer_id = $5, resolved_at = $6
            where exception_id = $1""",
        row["exception_id"],
        requested_by,
        approved_by,
        note[:note_length_max],
        transfer_id,
        now,
    )


@dataclass(frozen=True, slots=True)
class MatchPreview:
    """What a manual match would join, and why it cannot (`problem` None: it can)."""

    lines: list[asyncpg.Record]
    movements: list[asyncpg.Record]
    problem: ActionResult | None

    @property
    def lines_rupiah(self) -> int:
        return sum(int(r["amount_rupiah"]) for r in self.lines)

    @property
    def movements_rupiah(self) -> int:
        return sum(int(r["amount_rupiah"]) for r in self.movements)

    @property
    def difference_rupiah(self) -> int:
        """Lines minus movements: what stands between the two sides."""
        return self.lines_rupiah - self.movements_rupiah


async def preview_match(
    connection: asyncpg.Connection, line_keys: list[str], movement_ids: list[str]
) -> MatchPreview:
    """The lines (neither matched nor written off: a written-off line's money is in suspense
    already) and the open expected movements picked, checked as `manual_match` checks them.
    Inside a transaction, the rows are locked until it ends."""
    line_keys, movement_ids = sorted(set(line_keys)), sorted(set(movement_ids))  # "k1,k1"
    lines = await connection.fetch(
        """select l.* from settlement_statement_lines l where line_key = any($1::text[])
            and not exists (select 1 from settlement_match_lines m where m.line_key = l.line_key)
            and not exists (select 1 from settlement_exceptions e
                             where e.subject_kind = 'line' and e.subject_id = l.line_key
                               and e.resolved_at is not null)
            order by l.line_key for update""",
        line_keys,
    )
    movements = await connection.fetch(
        """select e.* from settlement_expected_movements e where movement_id = any($1::text[])
            and not e.cancelled
            and not exists (select 1 from settlement_match_movements m where m.movement_id = e.movement_id)
            order by e.movement_id for update""",
        movement_ids,
    )
    problem = None
    if not line_keys or not movement_ids:
        problem = ActionResult.not_found
    elif len(lines) != len(line_keys) or len(movements) != len(movement_ids):
        problem = ActionResult.already_resolved
    elif len({(r["direction"], r["account"]) for r in [*lines, *movements]}) != 1:
        problem = ActionResult.wrong_kind
    elif sum(r["amount_rupiah"] for r in lines) != sum(r["amount_rupiah"] for r in movements):
        problem = ActionResult.amounts_differ
    return MatchPreview(list(lines), list(movements), problem)


async def manual_match(
    connection: asyncpg.Connection,
    line_keys: list[str],
    movement_ids: list[str],
    staff: Staff,
    note: str,
    *,
    now: dt.datetime,
) -> ActionResult:
    """Match lines to expected movements by hand (amounts must agree exactly)."""
    if staff.role is Role.auditor:
        return ActionResult.not_allowed
    if (problem := check_note(note)) is not None:
        return problem
    async with connection.transaction():
        preview = await preview_match(connection, line_keys, movement_ids)
        if preview.problem is not None:
            return preview.problem
        keys = tuple(r["line_key"] for r in preview.lines)
        ids = tuple(r["movement_id"] for r in preview.movements)
        await confirm_matches(
            connection,
            [Match(MatchKind.one_to_one, keys, ids, 0)],
            {r["line_key"]: r for r in preview.lines},
            {r["movement_id"]: r for r in preview.movements},
            staff.username,
            now,
            note[:note_length_max],
        )
        await connection.execute(
            "update settlement_matches set kind = 'manual' where match_id = (select match_id from settlement_match_lines where line_key = $1)",
            keys[0],
        )
    return ActionResult.done


async def reinitiate_payout(
    connection: asyncpg.Connection,
    exception_id: str,
    staff: Staff,
    note: str,
    payer: PayoutPort,
    config: EndOfDayConfig,
    now: dt.datetime,
) -> ActionResult:
    """A refused payout, paid again as a new attempt (new partnerReferenceNo, same hold), after
    staff corrected whatever made the bank refuse (e.g. the party's account number)."""
    if staff.role is Role.auditor:
        return ActionResult.not_allowed
    if (problem := check_note(note)) is not None:
        return problem
    # One transaction holding the exception and the batch: two people pressing the button at
    # once (or on two exceptions of one batch) make one attempt, and the second is refused.
    async with connection.transaction():
        row = await open_exception_row(connection, exception_id)
        if isinstance(row, ActionResult):
            return row
        if row["reason"] not in ("payout_rejected", "no_beneficiary_account"):
            return ActionResult.wrong_kind
        batch = await connection.fetchrow(
            """select b.batch_id, b.net_rupiah, b.service_day, p.bank_code, p.account_no, p.name,
                      coalesce((select max(attempt) from settlement_payouts x where x.batch_id = b.batch_id), 0) as attempts,
                      exists (select 1 from settlement_payouts x
                               where x.batch_id = b.batch_id and x.state <> 'failed') as outstanding
                 from settlement_batches b left join settlement_parties p using (party_kind, party_id)
                where b.batch_id = coalesce((select batch_id from settlement_payouts where payout_id = $1), $1)
                  for update of b""",
            row["subject_id"],
        )
        if batch is None or batch["account_no"] is None:
            return ActionResult.not_found
        if batch["outstanding"]:
            # An attempt that was paid, is in flight or was exported may still move the money;
            # only when every earlier attempt was refused can a new reference be sent.
            return ActionResult.attempt_outstanding
        instruction = instruction_for(batch, batch["attempts"] + 1, config, now)
        await record_instructions(
            connection, [instruction], "unknown", staff.username, batch["service_day"], config
        )
        await connection.execute(
            """update settlement_exceptions set resolution = 'reinitiated', resolved_by = $2,
                      resolution_note = $3, resolved_at = $4 where exception_id = $1""",
            exception_id,
            staff.username,
            f"{note[:note_length_max]} (new attempt {instruction.payout_id})",
            now,
        )
    outcome = await payer.pay(instruction.payout)
    await record_outcome(connection, instruction, outcome, batch["service_day"], now)
    return ActionResult.done


async def ask_bank_again(
    connection: asyncpg.Connection,
    exception_id: str,
    staff: Staff,
    payer: PayoutPort,
    config: EndOfDayConfig,
    now: dt.datetime,
) -> ActionResult:
    """An unresolved payout: send the same attempt again (same partnerReferenceNo, so the bank
    books it at most once; the client asks its status first when the bank knows it)."""
    if staff.role is Role.auditor:
        return ActionResult.not_allowed
    row = await open_exception_row(connection, exception_id)
    if isinstance(row, ActionResult):
        return row
    if row["reason"] != "payout_unresolved":
        return ActionResult.wrong_kind
    attempt = await connection.fetchrow(
        f"""select x.attempt, x.instructed_at, b.batch_id, b.net_rupiah, b.service_day,
                   {attempt_beneficiary}
              from settlement_payouts x join settlement_batches b using (batch_id)
              left join settlement_parties p using (party_kind, party_id)
             where x.payout_id = $1""",
        row["subject_id"],
    )
    if attempt is None or attempt["account_no"] is None:
        return ActionResult.not_found
    instruction = instruction_for(attempt, attempt["attempt"], config, attempt["instructed_at"])
    outcome = await payer.pay(instruction.payout)
    answer = f"bank answered {outcome.state.value} {outcome.response_code}".strip()
    async with connection.transaction():
        if outcome.state is PayoutState.failed:  # now a refusal: staff may re-initiate
            await connection.execute(
                """update settlement_exceptions set reason = 'payout_rejected', detail = $2
                    where exception_id = $1""",
                exception_id,
                f"{outcome.response_code} {outcome.response_message}".strip(),
            )
        elif outcome.state in (PayoutState.succeeded, PayoutState.in_progress):
            await connection.execute(
                """update settlement_exceptions set resolution = 'confirmed', resolved_by = $2,
                          resolution_note = $3, resolved_at = $4 where exception_id = $1""",
                exception_id,
                staff.username,
                answer,
                now,
            )
        # record_outcome's own exception insert meets this row and leaves it as set above
        await record_outcome(connection, instruction, outcome, attempt["service_day"], now)
    return ActionResult.done


# ---------------------------------------------------------------------------- the day's close


@dataclass(frozen=True, slots=True)
class DayClose:
    service_day: dt.date
    statement_lines: int
    lines_matched: int
    lines_written_off: int
    lines_open: int
    exceptions_open: int
    unexplained_rupiah: int  # statement money with neither a match nor a staff decision
    bank_books_difference_rupiah: int  # statements' net movement minus our bank accounts' books

    @property
    def closed(self) -> bool:
        return (
            self.exceptions_open == 0
            and self.unexplained_rupiah == 0
            and self.bank_books_difference_rupiah == 0
        )


async def day_close(connection: asyncpg.Connection, day: dt.date) -> DayClose:
    row = await connection.fetchrow(
        """
        select count(*) as lines,
               count(*) filter (where m.line_key is not null) as matched,
               count(*) filter (where e.resolution = 'written_off') as written_off,
               coalesce(sum(case when l.direction = 'credit' then l.amount_rupiah else -l.amount_rupiah end)
                        filter (where m.line_key is null and e.resolution is distinct from 'written_off'), 0)
                   as unexplained
          from settlement_statement_lines l
          left join settlement_match_lines m using (line_key)
          left join settlement_exceptions e on e.subject_kind = 'line' and e.subject_id = l.line_key
         where l.value_date <= $1
        """,
        day,
    )
    exceptions_open = await connection.fetchval(
        "select count(*) from settlement_exceptions where resolved_at is null and service_day <= $1",
        day,
    )
    statements_net = await connection.fetchval(
        "select coalesce(sum(case when direction = 'credit' then amount_rupiah else -amount_rupiah end), 0) from settlement_statement_lines"
    )
    books_net = await connection.fetchval(
        """select coalesce(sum(debits_posted - credits_posted), 0) from ledger_accounts
            where kind = 'bank_account'
              and owner_reference in (select distinct bank || ':' || account from settlement_statement_lines)"""
    )
    lines_open = row["lines"] - row["matched"] - row["written_off"]
    return DayClose(
        day,
        row["lines"],
        row["matched"],
        row["written_off"],
        lines_open,
        exceptions_open,
        int(row["unexplained"]),
        int(statements_net) - int(books_net),
    )
