"""Reconciliation as a visible pipeline: load, match, validate, persist and book, report.

`import_statement` stores a statement file's lines (all or nothing; a line already known from
an earlier or overlapping file is skipped; a statement of another account than the bank's, or
one already imported under another bank code, is refused). `reconcile` loads every line not yet matched and
every expected movement not yet matched, runs the pure matcher, checks its result, then in one
database transaction stores the matches, books what each match confirms, and opens or closes
exceptions. Matches are keyed by what they match, so a re-run changes nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg

from gateways.snap.partners import list_partners
from ledger.records import AccountKind, Transfer, TransferCode, TransferFlags, derive_id
from settlement import books
from settlement.matching import (
    ExpectedMovement,
    LineException,
    Match,
    MatchKind,
    MatchRules,
    MovementKind,
    line_references,
    match,
)
from settlement.statements import (
    Direction,
    StatementError,
    StatementLine,
    check_account,
    read_statement,
    statement_file_bytes_max,
)

default_rules = MatchRules()
reconcile_lines_max = 2_000_000  # one run's working set; far above a day of a city's banks


@dataclass(frozen=True, slots=True)
class ImportResult:
    file_name: str
    file_sha256: str
    lines_in_file: int
    lines_new: int
    accounts: tuple[str, ...] = ()  # the accounts the statement's lines are on
    account_checked: bool = False  # False: no account of ours was configured for the bank


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    lines_considered: int
    movements_considered: int
    matches_new: int
    lines_matched: int
    exceptions_open: int
    exceptions_by_reason: tuple[tuple[str, int], ...]
    movements_missing: int
    transfers_booked: int


# ---------------------------------------------------------------------------- import


async def import_statement(
    connection: asyncpg.Connection,
    path: Path,
    bank: str,
    imported_by: str,
    *,
    expected_account: str | None = None,
    require_account: bool = False,
) -> ImportResult:
    """Parse the file, check it against what we know, then store its new lines. Any
    `StatementError` imports nothing.

    `expected_account` is our account at `bank`; without it, the source accounts of the SNAP
    partners registered with that bank code are. A statement for another account is refused.
    When neither names an account, the statement's account is taken unchecked
    (`account_checked` is False), or refused with `require_account`. A file, or a movement,
    already imported under another bank code is refused: it would count twice."""
    if path.stat().st_size > statement_file_bytes_max:
        raise StatementError(path.name, 1, f"file is larger than {statement_file_bytes_max} bytes")
    data = path.read_bytes()
    lines = read_statement(path.name, data, bank)
    digest = hashlib.sha256(data).hexdigest()
    accounts = tuple(sorted({line.account for line in lines}))
    async with connection.transaction():
        # one import at a time, so two files of one statement under two bank codes both see
        # the other
        await connection.execute(
            "select pg_advisory_xact_lock(hashtext('settlement-statement-import'))"
        )
        await refuse_other_bank(connection, path.name, bank, digest, lines)
        expected, configured_by = await expected_accounts(connection, bank, expected_account)
        if expected:
            check_account(lines, bank, expected, configured_by)
        elif require_account and lines:
            raise StatementError(
                path.name,
                1,
                f"no account of ours is configured for bank {bank} to check the statement's "
                f"account {', '.join(accounts)} against: give it (--account {bank}=ACCOUNT) "
                "or set the source account of the bank's SNAP partner",
            )
        await connection.execute(
            """insert into settlement_statement_files (file_sha256, bank, file_name, line_count, imported_by)
               values ($1, $2, $3, $4, $5) on conflict (file_sha256) do nothing""",
            digest,
            bank,
            path.name,
            len(lines),
            imported_by,
        )
        new = await store_lines(connection, lines, digest)
    return ImportResult(path.name, digest, len(lines), new, accounts, bool(expected))


async def expected_accounts(
    connection: asyncpg.Connection, bank: str, given: str | None
) -> tuple[frozenset[str], str]:
    """Our accounts at `bank`, and where that was said: the caller, or the SNAP partners."""
    if given:
        return frozenset((given,)), "as given"
    partners = [
        p for p in await list_partners(connection) if p.bank_code == bank and p.source_account_no
    ]
    names = ", ".join(p.partner_id for p in partners)
    return frozenset(p.source_account_no for p in partners), f"SNAP partner {names}"


async def refuse_other_bank(
    connection: asyncpg.Connection,
    file_name: str,
    bank: str,
    file_sha256: str,
    lines: Sequence[StatementLine],
) -> None:
    """A line's key includes its bank code, so the same statement under another bank code would
    be new lines: refuse the file, or its first movement already imported under another code."""
    earlier = await connection.fetchrow(
        "select bank, file_name, imported_by from settlement_statement_files "
        "where file_sha256 = $1",
        file_sha256,
    )
    if earlier is not None and earlier["bank"] != bank:
        raise StatementError(
            file_name,
            1,
            f"this file was already imported as bank {earlier['bank']} "
            f"(as {earlier['file_name']} by {earlier['imported_by']}), not {bank}",
        )
    if not lines:
        return
    others = await connection.fetch(
        "select distinct bank from settlement_statement_files where bank <> $1 order by bank",
        bank,
    )
    for other in (row["bank"] for row in others):
        found = await connection.fetchrow(
            """select k.ordinal, l.source_file, l.source_line
                 from unnest($1::text[]) with ordinality as k (line_key, ordinal)
                 join settlement_statement_lines l on l.line_key = k.line_key
                order by k.ordinal limit 1""",
            [replace(line, bank=other).key for line in lines],
        )
        if found is not None:
            line = lines[found["ordinal"] - 1]
            raise StatementError(
                file_name,
                line.source_line,
                f"this movement was already imported as bank {other} "
                f"({found['source_file']} line {found['source_line']}), not {bank}",
            )


async def store_lines(
    connection: asyncpg.Connection, lines: Sequence[StatementLine], file_sha256: str
) -> int:
    await connection.execute(
        "create temporary table if not exists settlement_incoming_lines "
        "(like settlement_statement_lines) on commit drop"
    )
    await connection.copy_records_to_table(
        "settlement_incoming_lines",
        records=[
            (
                line.key,
                line.bank,
                line.account,
                line.value_date,
                line.amount_rupiah,
                line.direction.value,
                line.reference,
                line.bank_reference,
                line.type_code,
                line.description,
                line.source_file,
                line.source_line,
                line.occurrence,
                file_sha256,
            )
            for line in lines
        ],
    )
    status = await connection.execute(
        "insert into settlement_statement_lines select * from settlement_incoming_lines "
        "on conflict (line_key) do nothing"
    )
    await connection.execute("drop table settlement_incoming_lines")
    return int(status.split()[-1])


# ---------------------------------------------------------------------------- expectations


async def expect_movements(
    connection: asyncpg.Connection, movements: Sequence[tuple[ExpectedMovement, uuid.UUID]]
) -> int:
    """Record movements the bank statement should show, each with the ledger account that
    holds the money until then. Idempotent by movement id."""
    if not movements:
        return 0
    status = await connection.execute(
        """insert into settlement_expected_movements
             (movement_id, kind, account, direction, amount_rupiah, value_date, reference,
              group_reference, holding_account_id)
           select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                $6::date[], $7::text[], $8::text[], $9::uuid[])
           on conflict (movement_id) do nothing""",
        [m.movement_id for m, _ in movements],
        [m.kind.value for m, _ in movements],
        [m.account for m, _ in movements],
        [m.direction.value for m, _ in movements],
        [m.amount_rupiah for m, _ in movements],
        [m.value_date for m, _ in movements],
        [m.reference for m, _ in movements],
        [m.group for m, _ in movements],
        [holding for _, holding in movements],
    )
    return int(status.split()[-1])


# ---------------------------------------------------------------------------- the pipeline


def line_from_row(row: asyncpg.Record) -> StatementLine:
    return StatementLine(
        row["bank"],
        row["account"],
        row["value_date"],
        row["amount_rupiah"],
        Direction(row["direction"]),
        row["reference"],
        row["bank_reference"],
        row["type_code"],
        row["description"],
        row["source_file"],
        row["source_line"],
        row["occurrence"],
    )


def movement_from_row(row: asyncpg.Record) -> ExpectedMovement:
    return ExpectedMovement(
        row["movement_id"],
        MovementKind(row["kind"]),
        row["account"],
        Direction(row["direction"]),
        row["amount_rupiah"],
        row["value_date"],
        row["reference"],
        row["group_reference"],
    )


@dataclass(frozen=True, slots=True)
class OpenWork:
    lines: list[StatementLine]
    movements: list[ExpectedMovement]
    line_rows: dict[str, asyncpg.Record]
    movement_rows: dict[str, asyncpg.Record]
    settled_lines: list[StatementLine]  # matched earlier, near the open lines' dates
    settled_movements: list[ExpectedMovement]  # matched earlier, named by an open line


async def load_open(connection: asyncpg.Connection, rules: MatchRules) -> OpenWork:
    """Lines neither matched nor written off; movements neither matched nor cancelled; and
    what earlier runs matched that an open line might repeat."""
    line_rows = await connection.fetch(
        """select l.* from settlement_statement_lines l
            where not exists (select 1 from settlement_match_lines m where m.line_key = l.line_key)
              and not exists (select 1 from settlement_exceptions e
                               where e.subject_kind = 'line' and e.subject_id = l.line_key
                                 and e.resolved_at is not null)"""
    )
    assert len(line_rows) <= reconcile_lines_max, "split the run"
    movement_rows = await connection.fetch(
        """select e.* from settlement_expected_movements e
            where not e.cancelled
              and not exists (select 1 from settlement_match_movements m where m.movement_id = e.movement_id)"""
    )
    lines = [line_from_row(row) for row in line_rows]
    settled_lines: list[StatementLine] = []
    settled_movements: list[ExpectedMovement] = []
    if lines:
        slack = dt.timedelta(days=rules.date_tolerance_days)
        settled_lines = [
            line_from_row(row)
            for row in await connection.fetch(
                """select l.* from settlement_statement_lines l join settlement_match_lines using (line_key)
                    where l.value_date between $1 and $2""",
                min(line.value_date for line in lines) - slack,
                max(line.value_date for line in lines) + slack,
            )
        ]
        references = sorted({reference for line in lines for reference in line_references(line)})
        settled_movements = [
            movement_from_row(row)
            for row in await connection.fetch(
                """select e.* from settlement_expected_movements e join settlement_match_movements using (movement_id)
                    where upper(regexp_replace(e.reference, '[^A-Za-z0-9]', '', 'g')) = any($1::text[])""",
                references,
            )
        ]
    return OpenWork(
        lines,
        [movement_from_row(row) for row in movement_rows],
        {row["line_key"]: row for row in line_rows},
        {row["movement_id"]: row for row in movement_rows},
        settled_lines,
        settled_movements,
    )


def match_id_of(found: Match) -> str:
    return hashlib.sha256(
        "|".join([*sorted(found.line_keys), "#", *sorted(found.movement_ids)]).encode()
    ).hexdigest()[:32]


async def reconcile(
    connection: asyncpg.Connection,
    rules: MatchRules = default_rules,
    *,
    now: dt.datetime,
    statement_through: dt.date | None = None,
) -> ReconcileReport:
    # Load (with fresh planner statistics: a statement import can double a table).
    await connection.execute(
        "analyze settlement_statement_lines, settlement_expected_movements, "
        "settlement_match_lines, settlement_match_movements, settlement_exceptions"
    )
    work = await load_open(connection, rules)
    lines, movements, line_rows, movement_rows = (
        work.lines,
        work.movements,
        work.line_rows,
        work.movement_rows,
    )
    # Match (pure).
    result = match(
        lines,
        movements,
        rules,
        settled_lines=work.settled_lines,
        settled_movements=work.settled_movements,
    )
    # Validate: every loaded line exactly once, every movement at most once.
    placed = [key for m in result.matches for key in m.line_keys] + [
        e.line_key for e in result.exceptions
    ]
    assert sorted(placed) == sorted(line.key for line in lines)
    used = [mid for m in result.matches for mid in m.movement_ids]
    assert len(used) == len(set(used))
    # Persist and book, in one transaction.
    async with connection.transaction():
        transfers = await confirm_matches(
            connection, result.matches, line_rows, movement_rows, "auto", now
        )
        await record_line_exceptions(connection, result.exceptions, line_rows)
        missing = await record_missing_movements(
            connection, result.unmatched_movement_ids, movement_rows, rules, statement_through
        )
    # Report.
    counts = await connection.fetch(
        """select reason, count(*) from settlement_exceptions where resolved_at is null
            group by reason order by reason"""
    )
    return ReconcileReport(
        lines_considered=len(lines),
        movements_considered=len(movements),
        matches_new=len(result.matches),
        lines_matched=len(placed) - len(result.exceptions),
        exceptions_open=sum(row["count"] for row in counts),
        exceptions_by_reason=tuple((row["reason"], row["count"]) for row in counts),
        movements_missing=missing,
        transfers_booked=transfers,
    )


async def confirm_matches(
    connection: asyncpg.Connection,
    matches: Sequence[Match],
    line_rows: dict[str, asyncpg.Record],
    movement_rows: dict[str, asyncpg.Record],
    matched_by: str,
    now: dt.datetime,
    note: str = "",
) -> int:
    """Store the matches and book what each confirms; returns the transfers booked."""
    if not matches:
        return 0
    ids = [match_id_of(m) for m in matches]
    await connection.execute(
        """insert into settlement_matches (match_id, kind, difference_rupiah, matched_by, note)
           select i, k, d, $4, $5 from unnest($1::text[], $2::text[], $3::bigint[]) as x(i, k, d)
           on conflict (match_id) do nothing""",
        ids,
        [m.kind.value for m in matches],
        [m.difference_rupiah for m in matches],
        matched_by,
        note,
    )
    await connection.execute(
        """insert into settlement_match_lines (line_key, match_id)
           select * from unnest($1::text[], $2::text[])""",
        [key for m in matches for key in m.line_keys],
        [mid for mid, m in zip(ids, matches) for _ in m.line_keys],
    )
    await connection.execute(
        """insert into settlement_match_movements (movement_id, match_id)
           select * from unnest($1::text[], $2::text[])""",
        [movement for m in matches for movement in m.movement_ids],
        [mid for mid, m in zip(ids, matches) for _ in m.movement_ids],
    )
    await connection.execute(
        """update settlement_exceptions set resolution = 'matched', resolved_by = $2,
                  resolved_at = $5, resolution_note = $3
            where resolved_at is null
              and ((subject_kind = 'line' and subject_id = any($1::text[]))
                or (subject_kind = 'movement' and subject_id = any($4::text[])))""",
        [key for m in matches for key in m.line_keys],
        matched_by,
        note or "matched",
        [movement for m in matches for movement in m.movement_ids],
        now,
    )
    transfers = await confirmation_transfers(connection, matches, ids, line_rows, movement_rows)
    await books.book(connection, transfers, now=now)
    return len(transfers)


async def confirmation_transfers(
    connection: asyncpg.Connection,
    matches: Sequence[Match],
    match_ids: Sequence[str],
    line_rows: dict[str, asyncpg.Record],
    movement_rows: dict[str, asyncpg.Record],
) -> list[Transfer]:
    bank_accounts: dict[tuple[str, str], uuid.UUID] = {}

    async def bank_account(bank: str, account_no: str) -> uuid.UUID:
        key = (bank, account_no)
        if key not in bank_accounts:
            bank_accounts[key] = await books.ensure_account(
                connection, AccountKind.bank_account, books.bank_account_owner(bank, account_no)
            )
        return bank_accounts[key]

    fee_expense = await books.ensure_account(connection, AccountKind.fee_expense, "bank-charges")
    suspense = await books.ensure_account(connection, AccountKind.suspense, "reconciliation")
    holds = await payout_holds(connection, [mid for m in matches for mid in m.movement_ids])
    transfers: list[Transfer] = []
    for match_id, found in zip(match_ids, matches):
        first_line = line_rows[found.line_keys[0]]
        ours = await bank_account(first_line["bank"], first_line["account"])
        for movement_id in found.movement_ids:
            row = movement_rows[movement_id]
            kind = MovementKind(row["kind"])
            amount = row["amount_rupiah"]
            reference = row["reference"][:100]
            if kind is MovementKind.collection:
                transfers.append(
                    Transfer(
                        derive_id("settlement-confirm", movement_id),
                        ours,
                        row["holding_account_id"],
                        amount,
                        books.SettlementCode.collection_settled,
                        bank_reference=reference,
                        metadata=books.metadata(match=match_id, movement=movement_id),
                    )
                )
            elif kind is MovementKind.payout:
                hold = holds.get(movement_id)
                if hold is not None and not hold[1]:
                    transfers.append(post_hold(hold[0], reference))
                transfers.append(
                    Transfer(
                        derive_id("settlement-confirm", movement_id),
                        row["holding_account_id"],
                        ours,
                        amount,
                        TransferCode.payout_settled,
                        bank_reference=reference,
                        metadata=books.metadata(match=match_id, movement=movement_id),
                    )
                )
            else:
                transfers.append(
                    Transfer(
                        derive_id("settlement-confirm", movement_id),
                        fee_expense,
                        ours,
                        amount,
                        TransferCode.bank_fee,
                        bank_reference=reference,
                        metadata=books.metadata(match=match_id, movement=movement_id),
                    )
                )
        if found.difference_rupiah != 0:
            # Statement minus books, as the statement sees it: more money in (or less out) than
            # expected lands in suspense for someone to explain.
            credit_side = (
                movement_rows[found.movement_ids[0]]["direction"] == Direction.credit.value
            )
            extra_in = found.difference_rupiah > 0 if credit_side else found.difference_rupiah < 0
            debit, credit = (ours, suspense) if extra_in else (suspense, ours)
            transfers.append(
                Transfer(
                    derive_id("settlement-difference", match_id),
                    debit,
                    credit,
                    abs(found.difference_rupiah),
                    books.SettlementCode.tolerance_difference,
                    metadata=books.metadata(match=match_id),
                )
            )
    return transfers


async def payout_holds(
    connection: asyncpg.Connection, movement_ids: list[str]
) -> dict[str, tuple[str, bool]]:
    """For payout movements: the batch's hold transfer and whether it is posted already."""
    rows = await connection.fetch(
        """select p.payout_id, b.batch_id,
                  exists (select 1 from ledger_transfers t
                           where t.pending_id = b.hold_transfer_id) as resolved
             from settlement_payouts p join settlement_batches b using (batch_id)
            where p.payout_id = any($1::text[])""",
        movement_ids,
    )
    return {row["payout_id"]: (row["batch_id"], row["resolved"]) for row in rows}


def post_hold(batch_id: str, reference: str) -> Transfer:
    """Post the batch's hold: the payable is really paid (into settlement in transit)."""
    return Transfer(
        derive_id("settlement-hold-post", batch_id),
        None,
        None,
        None,
        TransferCode.payout,
        flags=TransferFlags.post_pending,
        pending_id=books.hold_id_for(batch_id),
        bank_reference=reference,
        settlement_batch=batch_id,
    )


async def record_line_exceptions(
    connection: asyncpg.Connection,
    exceptions: Sequence[LineException],
    line_rows: dict[str, asyncpg.Record],
) -> None:
    if not exceptions:
        return
    await connection.execute(
        """insert into settlement_exceptions
             (exception_id, subject_kind, subject_id, reason, detail, amount_rupiah, service_day)
           select 'line:' || k, 'line', k, r, d, a, s
             from unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::date[]) as x(k, r, d, a, s)
           on conflict (subject_kind, subject_id) do update
              set reason = excluded.reason, detail = excluded.detail
            where settlement_exceptions.resolved_at is null""",
        [e.line_key for e in exceptions],
        [e.reason.value for e in exceptions],
        [e.detail[:500] for e in exceptions],
        [line_rows[e.line_key]["amount_rupiah"] for e in exceptions],
        [line_rows[e.line_key]["value_date"] for e in exceptions],
    )


async def record_missing_movements(
    connection: asyncpg.Connection,
    unmatched: Sequence[str],
    movement_rows: dict[str, asyncpg.Record],
    rules: MatchRules,
    statement_through: dt.date | None,
) -> int:
    """A movement the statements should have shown by now (statements run through
    `statement_through`, beyond the date tolerance) becomes an exception."""
    if statement_through is None:
        return 0
    late = [
        movement_rows[m]
        for m in unmatched
        if movement_rows[m]["value_date"] + dt.timedelta(days=rules.date_tolerance_days)
        <= statement_through
    ]
    if late:
        await connection.execute(
            """insert into settlement_exceptions
                 (exception_id, subject_kind, subject_id, reason, detail, amount_rupiah, service_day)
               select 'movement:' || m, 'movement', m, 'missing_from_statement', d, a, s
                 from unnest($1::text[], $2::text[], $3::bigint[], $4::date[]) as x(m, d, a, s)
               on conflict (subject_kind, subject_id) do nothing""",
            [row["movement_id"] for row in late],
            [
                f"{row['kind']} {row['reference']} not on statements through {statement_through}"
                for row in late
            ],
            [row["amount_rupiah"] for row in late],
            [row["value_date"] for row in late],
        )
    return len(late)


__all__ = [
    "ImportResult",
    "MatchKind",
    "ReconcileReport",
    "StatementError",
    "expect_movements",
    "import_statement",
    "reconcile",
]


async def expect_collections(
    connection: asyncpg.Connection,
    start: dt.datetime,
    end: dt.datetime,
    value_date: dt.date,
    collection_accounts: dict[str, str],
    default_account: str,
) -> int:
    """Every virtual-account payment booked in [start, end) (bank clearing -> pending top-up,
    code `pending_top_up`) is money the bank owes us: expect it on our collection account at
    that bank, under the payment's bank reference (the paymentRequestId). Set-based. Cash
    taken at a counter (a cashier's drawer, `drawer:USER`: `gateways.terminal_api.counter`) is
    in the drawer, not at a bank."""
    status = await connection.execute(
        """insert into settlement_expected_movements
             (movement_id, kind, account, direction, amount_rupiah, value_date, reference,
              group_reference, holding_account_id)
           select 'C' || t.id::text, 'collection',
                  coalesce(($5::jsonb) ->> a.owner_reference, $6), 'credit', t.amount, $3,
                  coalesce(nullif(regexp_replace(t.bank_reference, '^snap:[^:]*:', ''), ''), t.id::text), '', t.debit_account_id
             from ledger_transfers t join ledger_accounts a on a.id = t.debit_account_id
            where t.code = $4 and a.kind = 'bank_clearing'
              and a.owner_reference not like 'drawer:%'
              and t.booked_at >= $1 and t.booked_at < $2 and t.flags & (2 | 8) = 0
           on conflict (movement_id) do nothing""",
        start,
        end,
        value_date,
        int(TransferCode.pending_top_up),
        json.dumps(collection_accounts),
        default_account,
    )
    return int(status.split()[-1])


async def expect_qris_settlements(
    connection: asyncpg.Connection,
    start: dt.datetime,
    end: dt.datetime,
    collection_accounts: dict[str, str],
    default_account: str,
) -> int:
    """Every QRIS payment booked in [start, end) is money its acquirer owes us, net of the MDR
    it keeps: expect it on our account at that bank (by the acquirer's bank code in
    `collection_accounts`), grouped under the settlement reference of the calendar day it was
    paid in Semarang, as the acquirer pays each calendar day in one credit
    (`gateways.snap.qris.settlement_reference`): a payment after midnight but before the
    service day's cut-off is in the next day's credit, and expected on that day."""
    from gateways.snap.qris import clearing_account_id, settlement_reference

    rows = await connection.fetch(
        """select o.order_id, o.partner_id, o.reference_no, o.amount_rupiah - o.mdr_rupiah as net,
                  (o.paid_at at time zone 'Asia/Jakarta')::date as paid_day, p.bank_code
             from qris_orders o join snap_partners p on p.partner_id = o.partner_id
            where o.state = 'paid' and o.paid_at >= $1 and o.paid_at < $2""",
        start,
        end,
    )
    movements = [
        (
            ExpectedMovement(
                f"Q{row['order_id']}",
                MovementKind.collection,
                collection_accounts.get(row["bank_code"], default_account),
                Direction.credit,
                row["net"],
                row["paid_day"],
                row["reference_no"],
                settlement_reference(row["paid_day"]),
            ),
            clearing_account_id(row["partner_id"]),
        )
        for row in rows
        if row["net"] > 0
    ]
    return await expect_movements(connection, movements)
