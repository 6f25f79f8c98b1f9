"""Staff resolve the quarantine: release a record, or write it off, by a named supervisor.

A quarantined record (`planning.Quarantined`) may have left money in suspense (`held_rupiah`):
- a card transaction outside its terminal's role that the card committed, or a fare or sale
  it committed after its chip block with no desk unblock between (`after_chip_block`): what
  the card paid sits in suspense (positive), or what it received came from there (a refund:
  negative), as the ledger booked it (`planning.quarantine_transfer`; nothing when the card's
  purse was closed, its balance moved to a new card);
- a credit the card got with no open pending top-up behind it: suspense paid the card
  (negative);
- anything else (a card never issued, a transaction the card's MAC does not prove): nothing.

**Release** books the record as its terminal reported it, with suspense in place of the card's
purse (the card's purse already agrees with the card): a sale or fare to the terminal's party
(the merchant's payable less its fee, the operator's revenue), a refund from it. What is
released is then owed like any sale or fare, so the next end of day pays it. A credit nobody
paid for, or a record that left nothing in suspense, cannot be released: it is written off.

**Write-off** books what suspense holds for the record against the issuer's write-off account
(`accounts.quarantine_write_off_account_id`): no party is paid.

**Four eyes.** Money moves only when two supervisors agree: the first asks (the record's
state becomes `release_requested` or `write_off_requested`), a second runs the same action
and it is booked. A write-off that moves no money is done by one supervisor. Every step is a
`staff_actions` row; the record keeps who asked and who confirmed, when and why. Transfer ids
derive from the record and the action, so asking twice books once.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import NamedTuple

import asyncpg

from bus_terminals.wire import UploadRecord
from gateways import staff
from gateways.staff import Role, StaffMember
from gateways.terminal_api import books, ingest, passes
from gateways.terminal_api.accounts import (
    card_transfer_id,
    purse_account_id,
    quarantine_transfer_id,
    quarantine_write_off_account_id,
    quarantine_write_off_owner,
    suspense_account_id,
)
from gateways.terminal_api.planning import balance_change, card_paid_reasons, transfers_for
from ledger.records import Account, AccountKind, Transfer, TransferCode, booked_results


class Resolution(enum.StrEnum):
    release = "release"
    write_off = "write_off"


final_state = {Resolution.release: "released", Resolution.write_off: "written_off"}


class ResolveResult(enum.StrEnum):
    done = "done"
    awaiting_second = "awaiting_second"  # asked: a second supervisor confirms
    not_found = "not_found"
    already_resolved = "already_resolved"
    not_allowed = "not_allowed"  # only a supervisor
    note_required = "note_required"
    same_person = "same_person"  # the one who asked cannot confirm
    other_request_waiting = "other_request_waiting"  # asked for the other resolution
    cannot_release = "cannot_release"  # nothing to pay on: write it off


@dataclass(slots=True)
class Resolved:
    result: ResolveResult
    detail: str = ""
    rupiah: int = 0  # what moved (or would move) out of or into suspense
    requested_by: str = ""
    transfer_ids: list[str] = field(default_factory=list)


class EntryKey(NamedTuple):
    terminal_id: str
    sequence: int

    def __str__(self) -> str:
        return f"{self.terminal_id}/{self.sequence}"

    @classmethod
    def parse(cls, text: str) -> EntryKey:
        """`TERMINAL/SEQUENCE`, as `ksh quarantine list` shows it; ValueError otherwise."""
        terminal_id, slash, sequence = text.strip().rpartition("/")
        if not slash or not terminal_id or not sequence.isdigit() or len(sequence) > 18:
            raise ValueError(f"{text!r} is not TERMINAL/SEQUENCE (see ksh quarantine list)")
        return cls(terminal_id, int(sequence))


# ------------------------------------------------------------------------------ pure


def held_rupiah(record: UploadRecord, reason: str, from_purse: int) -> int:
    """What suspense holds for a quarantined record (what `planning.card_transfers` booked):
    positive when the card's money waits there, negative when suspense paid the card.
    `from_purse`: what the quarantine moved between the card's purse and suspense
    (`purse_to_suspense`)."""
    if reason in card_paid_reasons:
        return from_purse
    if reason == "top_up_not_delivered":
        return -record.topup_rupiah
    return 0


async def purse_to_suspense(connection: asyncpg.Connection, record: UploadRecord) -> int:
    """What the record's quarantine transfer moved from the card's purse to suspense (negative:
    the other way), as booked; 0 when none was (nothing moved, or the purse was closed, or the
    card counter's quarantine is another record's: a clone)."""
    row = await connection.fetchrow(
        "select amount, debit_account_id from ledger_transfers where id = $1 "
        "and terminal_id = $2 and terminal_sequence = $3",
        card_transfer_id(record.card_number, record.card_counter, "quarantine"),
        record.terminal_id,
        record.sequence,
    )
    if row is None:
        return 0
    return int(row["amount"]) * (
        1 if row["debit_account_id"] == purse_account_id(record.card_number) else -1
    )


def release_transfers(
    record: UploadRecord, reason: str, held: int, credit: ingest.CreditAccount
) -> list[Transfer] | str:
    """The record's legs as ingest would have booked them for its terminal's party, from
    suspense instead of the purse; or why it cannot be released."""
    if reason == "top_up_not_delivered":
        return "the card holds a credit nobody paid for: write it off"
    if held == 0 and reason in card_paid_reasons and balance_change(record) == 0:
        return []  # a ride the card paid nothing for (a pass's): released, nothing to book
    if held == 0:
        return "nothing of it is in suspense (the card did not prove it paid): write it off"
    if record.topup_rupiah:
        return "it carries a top-up no one announced: write it off"
    purse = purse_account_id(record.card_number)
    return [
        leg._replace(
            id=quarantine_transfer_id(record.terminal_id, record.sequence, "release", str(leg.id)),
            debit_account_id=suspense_account_id
            if leg.debit_account_id == purse
            else leg.debit_account_id,
            credit_account_id=suspense_account_id
            if leg.credit_account_id == purse
            else leg.credit_account_id,
        )
        for leg in transfers_for(record, credit.fee_basis_points, credit.account_id)
    ]


def write_off_transfers(record: UploadRecord, held: int) -> list[Transfer]:
    if held == 0:
        return []
    return [
        Transfer(
            quarantine_transfer_id(record.terminal_id, record.sequence, "write_off", "held"),
            suspense_account_id if held > 0 else quarantine_write_off_account_id,
            quarantine_write_off_account_id if held > 0 else suspense_account_id,
            abs(held),
            TransferCode.suspense,
            terminal_id=record.terminal_id,
            terminal_sequence=record.sequence,
            card_number=record.card_number,
            card_counter=record.card_counter,
        )
    ]


# ---------------------------------------------------------------------------- the action


async def resolve(
    connection: asyncpg.Connection,
    key: EntryKey,
    resolution: Resolution,
    member: StaffMember,
    note: str,
    *,
    now: dt.datetime,
) -> Resolved:
    """Ask for, or (a second supervisor) confirm, the release or write-off of one record."""
    if member.role is not Role.supervisor:
        return Resolved(ResolveResult.not_allowed, "only a supervisor resolves the quarantine")
    if staff.reason_problem(note) is not None:
        return Resolved(ResolveResult.note_required, str(staff.reason_problem(note)))
    note = note.strip()
    async with connection.transaction():
        row = await connection.fetchrow(
            f"select {ingest.record_columns}, q.reason, q.state, q.requested_by "
            "from quarantined_records q join card_records r using (terminal_id, sequence) "
            "where q.terminal_id = $1 and q.sequence = $2 for update of q",
            key.terminal_id,
            key.sequence,
        )
        if row is None:
            return Resolved(ResolveResult.not_found, f"no quarantined record {key}")
        if row["state"] in final_state.values():
            return Resolved(ResolveResult.already_resolved, f"{key} is {row['state']} already")
        record = ingest.record_from_row(row)
        held = held_rupiah(record, row["reason"], await purse_to_suspense(connection, record))
        transfers = await _transfers(connection, record, row["reason"], held, resolution)
        if isinstance(transfers, str):
            return Resolved(ResolveResult.cannot_release, transfers)
        rupiah = abs(held)
        asked = f"{resolution.value}_requested"
        if row["state"] not in ("open", asked):
            return Resolved(
                ResolveResult.other_request_waiting,
                f"{row['requested_by']} asked for {row['state'].removesuffix('_requested')}",
            )
        if row["state"] == "open" and transfers:
            await _ask(connection, key, asked, member, note, now)
            await _record(connection, member, f"request_quarantine_{resolution}", key, note, now)
            return Resolved(ResolveResult.awaiting_second, rupiah=rupiah)
        if row["requested_by"] == member.username:
            return Resolved(ResolveResult.same_person, "a second supervisor must confirm")
        requested_by = row["requested_by"] or member.username
        outcomes = await books.create_transfers(connection, transfers, now=now)
        refused = [o.result.value for o in outcomes if o.result not in booked_results]
        assert not refused, f"a quarantine {resolution} refused by the ledger: {refused}"
        if resolution is Resolution.release:  # as ingest would have: a pass it wrote is on
            flags = await passes.record_activations(connection, [record])
            if flags:
                await ingest.insert_card_flags(connection, flags)
        ids = [str(transfer.id) for transfer in transfers]
        await connection.execute(
            """update quarantined_records set state = $3, resolved_by = $4, approved_by = $5,
                      resolved_at = $6, resolution_note = $7, resolution_rupiah = $8,
                      resolution_transfer_ids = $9::uuid[]
                where terminal_id = $1 and sequence = $2""",
            key.terminal_id,
            key.sequence,
            final_state[resolution],
            requested_by,
            member.username,
            now,
            note,
            rupiah,
            ids,
        )
        await _record(connection, member, f"{resolution}_quarantine", key, note, now, rupiah)
    return Resolved(ResolveResult.done, rupiah=rupiah, requested_by=requested_by, transfer_ids=ids)


async def _transfers(
    connection: asyncpg.Connection,
    record: UploadRecord,
    reason: str,
    held: int,
    resolution: Resolution,
) -> list[Transfer] | str:
    if resolution is Resolution.write_off:
        await books.ensure_accounts(
            connection,
            [
                Account(
                    quarantine_write_off_account_id,
                    AccountKind.equity,
                    quarantine_write_off_owner,
                )
            ],
        )
        return write_off_transfers(record, held)
    credit = await ingest.credit_accounts(connection, [record])
    return release_transfers(record, reason, held, credit[record.terminal_id])


async def _ask(
    connection: asyncpg.Connection,
    key: EntryKey,
    state: str,
    member: StaffMember,
    note: str,
    now: dt.datetime,
) -> None:
    await connection.execute(
        """update quarantined_records set state = $3, requested_by = $4, requested_at = $5,
                  request_note = $6 where terminal_id = $1 and sequence = $2""",
        key.terminal_id,
        key.sequence,
        state,
        member.username,
        now,
        note,
    )


async def _record(
    connection: asyncpg.Connection,
    member: StaffMember,
    action: str,
    key: EntryKey,
    note: str,
    now: dt.datetime,
    rupiah: int | None = None,
) -> None:
    await staff.record_action(
        connection,
        username=member.username,
        role=member.role.value,
        action=action,
        subject=f"quarantine {key}",
        reason=note,
        now=now,
        detail={} if rupiah is None else {"rupiah": rupiah},
    )
