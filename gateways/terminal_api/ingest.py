"""Booking an upload batch: every committed card transaction reaches the ledger exactly once.

One batch is one database transaction, in this order:

1. lock the terminal row (batches of one terminal are serial), check status and signature
   over the raw body (once per batch), then the batch sequence: the next one is booked, an
   earlier one is a replay (same bytes: the stored acknowledgement again; other bytes:
   refused), a later one is out of order (refused). Only then parse.
2. classify each record against what this terminal already reported under its (terminal id,
   sequence): new, a status change (in doubt → committed | void), a repeat, or a conflict.
3. decide what to book: committed card transactions; in-doubt ones that another record's view
   of the card log confirms ("previous_*" fields: the card's last log entry before that tap).
4. book them as ledger transfers in one batch call. Transfer ids derive from (card number,
   card counter, leg), so a card transaction uploaded twice, or by two terminals, is booked
   once. The card is the authority for what it spent offline: taps book with `force`.
5. anomalies still book, to suspense where the card's claim cannot stand (the same counter
   with other content: a clone), and flag the card; clones go on the deny list.
6. card monitoring, set-based: shadow balance and counter per card, balance chain check.
7. keep the raw batch and the acknowledgement; advance the terminal's batch sequence.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from bus_terminals.wire import (
    RecordKind,
    RecordStatus,
    UploadBatch,
    UploadRecord,
    WireError,
    card_terminal_number,
    decode_batch,
    load_public_key,
    no_service_fare_detail,
    record_fields,
    signature_valid,
)
from gateways.terminal_api import books, registry
from gateways.terminal_api.registry import TerminalRole, TerminalRow, TerminalStatus
from ledger.records import (
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferFlags,
    booked_results,
    derive_id,
)
from ledger.store import cyclic_collector_paused

logger = logging.getLogger("ksh.terminals")

public_key_cache_max = 100_000


class UploadResult(enum.Enum):
    accepted = "accepted"
    exists = "exists"  # the same batch again: its stored acknowledgement
    unknown_terminal = "unknown_terminal"
    terminal_revoked = "terminal_revoked"
    signature_invalid = "signature_invalid"
    terminal_mismatch = "terminal_mismatch"
    malformed = "malformed"
    batch_conflict = "batch_conflict"  # an earlier batch sequence with other bytes
    batch_out_of_order = "batch_out_of_order"  # a later batch sequence: one is missing
    record_not_for_role = "record_not_for_role"


refusal_status: dict[UploadResult, int] = {
    UploadResult.unknown_terminal: 401,
    UploadResult.signature_invalid: 401,
    UploadResult.terminal_revoked: 403,
    UploadResult.terminal_mismatch: 400,
    UploadResult.malformed: 400,
    UploadResult.batch_conflict: 409,
    UploadResult.batch_out_of_order: 409,
    UploadResult.record_not_for_role: 422,
}


class RecordOutcome(enum.StrEnum):
    booked = "booked"
    held = "held"  # in doubt: waits for the card's log
    void = "void"
    denied = "denied"  # no card transaction
    anomaly = "anomaly"  # booked to suspense, card flagged


@dataclass(slots=True)
class UploadAnswer:
    result: UploadResult
    detail: str = ""
    acknowledgement: dict[str, Any] = field(default_factory=dict)
    records_by_outcome: Counter[str] = field(default_factory=Counter)
    flags_by_reason: Counter[str] = field(default_factory=Counter)
    # Fares booked that a validator charged in full for want of service in its feed, by
    # terminal (`wire.no_service_fare_detail`): the alarm for a stale fare feed.
    charged_without_service: Counter[str] = field(default_factory=Counter)


_keys: dict[str, Any] = {}


def _public_key(text: str) -> Any:
    key = _keys.get(text)
    if key is None:
        if len(_keys) >= public_key_cache_max:
            _keys.clear()
        key = _keys[text] = load_public_key(text)
    return key


upload_attempts_max = 3  # deadlock or serialization failure: retry the whole batch


async def ingest_upload(
    connection: asyncpg.Connection,
    header_terminal_id: str,
    signature: str,
    body: bytes,
    known_cards: KnownCards | None = None,
    *,
    now: datetime,
) -> UploadAnswer:
    """Check and book one upload batch (the caller gives a connection; we own the transaction)
    at business time `now`. `known_cards`: the process's memory of registered cards (none: look
    every card up)."""
    known_cards = KnownCards() if known_cards is None else known_cards
    for attempt in range(1, upload_attempts_max + 1):
        try:
            with cyclic_collector_paused():
                return await _ingest_once(
                    connection, header_terminal_id, signature, body, known_cards, now
                )
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
            if attempt == upload_attempts_max:
                raise
            logger.warning("upload of %s retried after a lock conflict", header_terminal_id)
    raise AssertionError("unreachable")


async def _ingest_once(
    connection: asyncpg.Connection,
    header_terminal_id: str,
    signature: str,
    body: bytes,
    known_cards: KnownCards,
    now: datetime,
) -> UploadAnswer:
    async with connection.transaction():
        terminal = await registry.terminal(connection, header_terminal_id, for_update=True)
        if terminal is None:
            return UploadAnswer(UploadResult.unknown_terminal, f"terminal {header_terminal_id!r}")
        if terminal.status != TerminalStatus.active:
            return UploadAnswer(UploadResult.terminal_revoked, f"terminal {terminal.terminal_id}")
        if not signature_valid(_public_key(terminal.public_key), body, signature):
            return UploadAnswer(UploadResult.signature_invalid, "signature does not match body")
        try:
            batch = decode_batch(body)
        except WireError as error:
            return UploadAnswer(UploadResult.malformed, str(error))
        if batch.terminal_id != terminal.terminal_id:
            return UploadAnswer(UploadResult.terminal_mismatch, "body names another terminal")
        digest = hashlib.sha256(body).digest()
        if batch.batch_sequence < terminal.next_batch_sequence:
            return await _replay(connection, terminal, batch.batch_sequence, digest)
        if batch.batch_sequence > terminal.next_batch_sequence:
            return UploadAnswer(
                UploadResult.batch_out_of_order,
                f"batch {batch.batch_sequence} arrived; expected {terminal.next_batch_sequence}",
                acknowledgement={"expected_batch_sequence": terminal.next_batch_sequence},
            )
        problem = _role_problem(terminal, batch)
        if problem:
            return UploadAnswer(UploadResult.record_not_for_role, problem)
        answer = await _book(connection, terminal, batch, body, signature, digest, known_cards, now)
        return answer


async def _replay(
    connection: asyncpg.Connection, terminal: TerminalRow, batch_sequence: int, digest: bytes
) -> UploadAnswer:
    row = await connection.fetchrow(
        "select body_sha256, acknowledgement from upload_batches "
        "where terminal_id = $1 and batch_sequence = $2",
        terminal.terminal_id,
        batch_sequence,
    )
    if row is None or bytes(row["body_sha256"]) != digest:
        return UploadAnswer(
            UploadResult.batch_conflict,
            f"batch {batch_sequence} was already accepted with other content",
        )
    return UploadAnswer(UploadResult.exists, acknowledgement=json.loads(row["acknowledgement"]))


_validator_kinds = frozenset({RecordKind.fare_debit, RecordKind.topup_credit, RecordKind.denied})
_pos_kinds = frozenset(
    {RecordKind.sale, RecordKind.refund, RecordKind.topup_credit, RecordKind.denied}
)


def _role_problem(terminal: TerminalRow, batch: UploadBatch) -> str:
    kinds = _validator_kinds if terminal.role == TerminalRole.validator else _pos_kinds
    for record in batch.records:
        if record.kind not in kinds:
            return f"record {record.sequence}: a {terminal.role} does not make {record.kind}"
        if terminal.role == TerminalRole.pos and record.merchant_id != terminal.merchant_id:
            return f"record {record.sequence}: merchant {record.merchant_id!r} is not this POS's"
    return ""


# ------------------------------------------------------------------------------- booking


@dataclass(frozen=True, slots=True)
class _Stored:
    """What the back office holds for a record: enough to book it later from a held state."""

    record: UploadRecord
    outcome: RecordOutcome


async def _book(
    connection: asyncpg.Connection,
    terminal: TerminalRow,
    batch: UploadBatch,
    body: bytes,
    signature: str,
    digest: bytes,
    known_cards: KnownCards,
    now: datetime,
) -> UploadAnswer:
    answer = UploadAnswer(UploadResult.accepted)
    records = batch.records
    previous = await _previous_reports(connection, terminal.terminal_id, records)

    new_records: list[tuple[UploadRecord, RecordOutcome]] = []
    changed: list[tuple[UploadRecord, RecordOutcome]] = []
    to_book: list[UploadRecord] = []
    held: list[UploadRecord] = []
    acknowledged: list[list[Any]] = []
    conflicts: list[tuple[str, str, str, int, int, str]] = []
    for record in records:
        stored = previous.get(record.sequence)
        if stored is not None:
            if stored.record == record:
                acknowledged.append([record.sequence, record.status.value])
                continue  # reported before: nothing new
            if stored.record.status != RecordStatus.in_doubt or stored.record != _with_status(
                record, RecordStatus.in_doubt
            ):
                # The terminal changed a record it reported before (not an in-doubt outcome):
                # keep the first report, flag it, and acknowledge so the terminal moves on.
                conflicts.append(
                    _flag(record, "record_conflict", f"reported before as {stored.record.status}")
                )
                acknowledged.append([record.sequence, record.status.value])
                continue
        acknowledged.append([record.sequence, record.status.value])
        target = changed if stored is not None else new_records
        if record.kind == RecordKind.denied:
            target.append((record, RecordOutcome.denied))
        elif record.status == RecordStatus.void:
            if stored is not None and stored.outcome == RecordOutcome.booked:
                # The log showed it booked already (another terminal saw it); the card wins.
                target.append((record, RecordOutcome.booked))
            else:
                target.append((record, RecordOutcome.void))
        elif record.status == RecordStatus.committed:
            if stored is not None and stored.outcome == RecordOutcome.booked:
                target.append((record, RecordOutcome.booked))
            else:
                to_book.append(record)
        else:
            held.append(record)

    card_numbers = sorted({record.card_number for record in records})
    await _ensure_cards(connection, card_numbers, known_cards)
    await _insert_flags(connection, conflicts, answer)

    # In-doubt transactions: settled by another report's view of the card log, either way.
    confirmed, voided, still_held = await _settle_in_doubt(connection, records, held)
    # In-doubt reports of this batch are new rows; earlier ones (any terminal) are updated.
    here = {(r.terminal_id, r.sequence) for r in held}
    settled_earlier: list[tuple[UploadRecord, RecordOutcome]] = []
    for record in still_held:
        if (record.terminal_id, record.sequence) in here:
            new_records.append((record, RecordOutcome.held))
    for record in voided:
        if (record.terminal_id, record.sequence) in here:
            new_records.append((record, RecordOutcome.void))
        else:
            settled_earlier.append((record, RecordOutcome.void))
    confirmed_here = [r for r in confirmed if (r.terminal_id, r.sequence) in here]
    confirmed_earlier = [r for r in confirmed if (r.terminal_id, r.sequence) not in here]

    booked_records = to_book + confirmed_here + confirmed_earlier
    for record in to_book:
        target = changed if record.sequence in previous else new_records
        target.append((record, RecordOutcome.booked))
    for record in confirmed_here:
        # Stored as the terminal reported it (in doubt), booked on the card log's word.
        new_records.append((_with_status(record, RecordStatus.in_doubt), RecordOutcome.booked))
    for record in confirmed_earlier:
        settled_earlier.append((record, RecordOutcome.booked))
    await _store_records(connection, batch.batch_sequence, new_records, changed)
    await _set_outcomes(connection, settled_earlier)
    await _monitor_cards(connection, booked_records, answer)
    await _take_top_ups(connection, booked_records, answer)
    _note_charged_without_service(booked_records, answer)
    for _, outcome in new_records + changed:
        answer.records_by_outcome[outcome.value] += 1
    answer.acknowledgement = {
        "batch_sequence": batch.batch_sequence,
        "result": UploadResult.accepted.value,
        "records": acknowledged,
    }
    await connection.execute(
        "insert into upload_batches (terminal_id, batch_sequence, body, signature, "
        "body_sha256, record_count, acknowledgement) values ($1, $2, $3, $4, $5, $6, $7)",
        terminal.terminal_id,
        batch.batch_sequence,
        body,
        signature,
        digest,
        len(batch.records),
        json.dumps(answer.acknowledgement),
    )
    await connection.execute(
        "update terminals set next_batch_sequence = $2 where terminal_id = $1",
        terminal.terminal_id,
        batch.batch_sequence + 1,
    )
    # The ledger comes last: its batch lock is then held only until this transaction commits.
    anomalies = await _book_transfers(connection, booked_records, answer, now)
    if anomalies:
        await _set_outcomes(connection, [(record, RecordOutcome.anomaly) for record in anomalies])
        answer.records_by_outcome[RecordOutcome.booked.value] -= len(anomalies)
        answer.records_by_outcome[RecordOutcome.anomaly.value] += len(anomalies)
    return answer


async def _set_outcomes(
    connection: asyncpg.Connection, settled: list[tuple[UploadRecord, RecordOutcome]]
) -> None:
    if settled:
        await connection.executemany(
            "update card_records set outcome = $3 where terminal_id = $1 and sequence = $2",
            [(r.terminal_id, r.sequence, outcome.value) for r, outcome in settled],
        )


def _with_status(record: UploadRecord, status: RecordStatus) -> UploadRecord:
    return record._replace(status=status)


_record_columns = (
    "terminal_id, sequence, kind, status, card_number, card_counter, amount_rupiah, "
    "topup_rupiah, pending_topup_id, balance_after_rupiah, time_ms, route, merchant_id, "
    "fare_detail, previous_counter, previous_terminal_number, previous_balance_rupiah"
)


def _record_from_row(row: asyncpg.Record) -> UploadRecord:
    values = list(row.values())[:17]
    values[2] = RecordKind(values[2])
    values[3] = RecordStatus(values[3])
    return UploadRecord(*values)


async def _previous_reports(
    connection: asyncpg.Connection, terminal_id: str, records: tuple[UploadRecord, ...]
) -> dict[int, _Stored]:
    sequences = {record.sequence for record in records}
    if not sequences:
        return {}
    lowest, highest = min(sequences), max(sequences)
    if highest - lowest < previous_range_spread_max * len(sequences):
        # A terminal numbers its records without gaps, so a batch is a short run: one range
        # scan of the key (usually empty: the records are new) beats a probe per sequence.
        rows = await connection.fetch(
            f"select {_record_columns}, outcome from card_records "
            "where terminal_id = $1 and sequence between $2 and $3",
            terminal_id,
            lowest,
            highest,
        )
    else:
        rows = await connection.fetch(
            f"select {_record_columns}, outcome from card_records "
            "where terminal_id = $1 and sequence = any($2::bigint[])",
            terminal_id,
            sorted(sequences),
        )
    return {
        row["sequence"]: _Stored(_record_from_row(row), RecordOutcome(row["outcome"]))
        for row in rows
        if row["sequence"] in sequences
    }


previous_range_spread_max = 2  # a batch's sequences spread over at most twice its size: a range


def _comma_joined(values: Iterable[int | str]) -> str:
    """Numbers or card numbers (digits: the wire checks) as one parameter the server splits
    with string_to_array. asyncpg encodes an array parameter element by element, with an
    abstract-class check on each: the balance check's six arrays of 4,000 took 11 ms a batch;
    one array of 4,000 card numbers takes 2.6 ms, joined 0.7 ms."""
    return ",".join(map(str, values))


known_cards_max = 2_000_000  # card numbers a back office process remembers (~150 MB)


@dataclass
class KnownCards:
    """Card numbers this process has seen in the cards table. A card is never removed, so an
    upload looks up only the others: most cards tap again and again. Filled only from what
    the database showed (committed), never from a registration that might still roll back;
    cleared when full."""

    numbers: set[str] = field(default_factory=set)

    def remember(self, card_numbers: Iterable[str]) -> None:
        if len(self.numbers) >= known_cards_max:
            self.numbers.clear()
        self.numbers.update(card_numbers)


async def _ensure_cards(
    connection: asyncpg.Connection, card_numbers: list[str], known_cards: KnownCards
) -> None:
    unknown = [number for number in card_numbers if number not in known_cards.numbers]
    if not unknown:
        return
    found = [
        row["card_number"]
        for row in await connection.fetch(
            "select card_number from cards where card_number = any(string_to_array($1, ','))",
            _comma_joined(unknown),
        )
    ]
    known_cards.remember(found)
    missing = sorted(set(unknown) - set(found))
    if missing:
        # A card issued offline (or before the back office heard of it) still gets its books.
        await registry.register_cards(connection, missing)


async def _settle_in_doubt(
    connection: asyncpg.Connection,
    records: tuple[UploadRecord, ...],
    held_here: list[UploadRecord],
) -> tuple[list[UploadRecord], list[UploadRecord], list[UploadRecord]]:
    """Return (confirmed, voided, still held) in-doubt transactions, from this batch or earlier.

    A tap's `previous_*` fields are the card's last log entry before it. An in-doubt (card, c,
    terminal T, balance after b) is confirmed when some tap saw (c, T, b) as the card's last
    entry, and is void when another committed transaction holds counter c, or some tap saw a
    different entry at c (the card never committed ours).
    """
    cards = {record.card_number for record in records}
    held_rows = await connection.fetch(
        f"select {_record_columns} from card_records "
        "where outcome = 'held' and card_number = any($1::text[])",
        sorted(cards),
    )
    candidates = {(r.terminal_id, r.sequence): r for r in map(_record_from_row, held_rows)}
    for record in held_here:
        candidates[(record.terminal_id, record.sequence)] = record
    if not candidates:
        return [], [], []
    candidate_cards = sorted({record.card_number for record in candidates.values()})
    evidence_rows = await connection.fetch(
        "select terminal_id, sequence, card_number, card_counter, status, previous_counter, "
        "previous_terminal_number, previous_balance_rupiah from card_records "
        "where card_number = any($1::text[])",
        candidate_cards,
    )
    # (card, counter) -> what the card's log said was there; (card, counter) -> committed claims
    seen_in_log: dict[tuple[str, int], tuple[str, int]] = {}
    committed_claims: dict[tuple[str, int], set[tuple[str, int]]] = {}
    evidence = [
        (
            row["terminal_id"],
            row["sequence"],
            row["card_number"],
            row["card_counter"],
            row["status"],
            row["previous_counter"],
            row["previous_terminal_number"],
            row["previous_balance_rupiah"],
        )
        for row in evidence_rows
    ]
    evidence += [
        (
            r.terminal_id,
            r.sequence,
            r.card_number,
            r.card_counter,
            r.status.value,
            r.previous_counter,
            r.previous_terminal_number,
            r.previous_balance_rupiah,
        )
        for r in records
    ]
    for (
        terminal_id,
        sequence,
        card,
        counter,
        status,
        prev_counter,
        prev_terminal,
        prev_balance,
    ) in evidence:
        if prev_counter:
            seen_in_log[(card, prev_counter)] = (prev_terminal, prev_balance)
        if status == "committed":
            committed_claims.setdefault((card, counter), set()).add((terminal_id, sequence))
    confirmed, voided, still_held = [], [], []
    for (terminal_id, sequence), record in candidates.items():
        key = (record.card_number, record.card_counter)
        log_entry = seen_in_log.get(key)
        others = committed_claims.get(key, set()) - {(terminal_id, sequence)}
        ours = (card_terminal_number(terminal_id), record.balance_after_rupiah)
        if log_entry == ours and not others:
            confirmed.append(_with_status(record, RecordStatus.committed))
        elif others or log_entry is not None:
            voided.append(_with_status(record, RecordStatus.void))
        else:
            still_held.append(record)
    return confirmed, voided, still_held


# ------------------------------------------------------------------------------- transfers


def card_transfer_id(card_number: str, card_counter: int, leg: str) -> uuid.UUID:
    """The ledger id of one leg of a card transaction: the same from whichever terminal.

    Equal to `derive_id("card-transaction", card_number, card_counter, leg)` (a test holds
    them together), computed from a hash state that has already taken the namespace: this
    runs once per tap at upload rates.
    """
    digest = _card_transaction_namespace.copy()
    number = card_number.encode()
    counter = str(card_counter).encode()
    digest.update(
        b"".join(
            (
                (len(number) + 1).to_bytes(4, "big"),
                b"s",
                number,
                (len(counter) + 1).to_bytes(4, "big"),
                b"i",
                counter,
                _encoded_leg(leg),
            )
        )
    )
    return uuid.UUID(bytes=digest.digest())


@functools.cache
def _encoded_leg(leg: str) -> bytes:
    name = b"s" + leg.encode()
    return len(name).to_bytes(4, "big") + name


def _namespace_state(namespace: str) -> Any:
    digest = hashlib.blake2b(digest_size=16, person=b"ksh-ledger-id")
    encoded = b"s" + namespace.encode()
    digest.update(len(encoded).to_bytes(4, "big") + encoded)
    return digest


_card_transaction_namespace = _namespace_state("card-transaction")


def _transfers_for(
    record: UploadRecord, fee_basis_points: int, credit_account: uuid.UUID
) -> list[Transfer]:
    purse = registry.purse_account_id(record.card_number)
    amount = record.amount_rupiah
    if not record.topup_rupiah and amount and record.kind == RecordKind.fare_debit:
        # The common case (a plain fare), built positionally: this runs once per tap.
        return [
            Transfer(
                card_transfer_id(record.card_number, record.card_counter, "fare"),
                purse,
                credit_account,
                amount,
                TransferCode.fare,
                TransferFlags.force,
                None,
                0,
                record.terminal_id,
                record.sequence,
                record.card_number,
                record.card_counter,
            )
        ]
    references = {
        "terminal_id": record.terminal_id,
        "terminal_sequence": record.sequence,
        "card_number": record.card_number,
        "card_counter": record.card_counter,
    }
    transfers = []
    if record.topup_rupiah:
        transfers.append(
            Transfer(
                card_transfer_id(record.card_number, record.card_counter, "top-up"),
                registry.pending_top_up_account_id(record.card_number),
                purse,
                record.topup_rupiah,
                TransferCode.top_up_delivery,
                TransferFlags.force,
                **references,  # type: ignore[arg-type]
            )
        )
    if amount and record.kind == RecordKind.fare_debit:
        transfers.append(
            Transfer(
                card_transfer_id(record.card_number, record.card_counter, "fare"),
                purse,
                credit_account,
                amount,
                TransferCode.fare,
                TransferFlags.force,
                **references,  # type: ignore[arg-type]
            )
        )
    elif amount and record.kind == RecordKind.sale:
        fee = amount * fee_basis_points // 10_000
        transfers.append(
            Transfer(
                card_transfer_id(record.card_number, record.card_counter, "sale"),
                purse,
                credit_account,
                amount,
                TransferCode.merchant_sale,
                TransferFlags.force | (TransferFlags.linked if fee else TransferFlags.none),
                **references,  # type: ignore[arg-type]
            )
        )
        if fee:
            transfers.append(
                Transfer(
                    card_transfer_id(record.card_number, record.card_counter, "fee"),
                    credit_account,
                    registry.fee_income_account_id,
                    fee,
                    TransferCode.merchant_fee,
                    TransferFlags.force,
                    **references,  # type: ignore[arg-type]
                )
            )
    elif amount and record.kind == RecordKind.refund:
        transfers.append(
            Transfer(
                card_transfer_id(record.card_number, record.card_counter, "refund"),
                credit_account,
                purse,
                amount,
                TransferCode.refund,
                TransferFlags.force,
                **references,  # type: ignore[arg-type]
            )
        )
    return transfers


_repeat_results = frozenset(
    result for result in CreateTransferResult if result.value.startswith("exists_with_different")
)


async def _book_transfers(
    connection: asyncpg.Connection,
    records: list[UploadRecord],
    answer: UploadAnswer,
    now: datetime,
) -> list[UploadRecord]:
    """Book the card transactions; return those that turned out to be anomalies (clones)."""
    if not records:
        return []
    accounts = await _credit_accounts(connection, records)
    planned: list[tuple[UploadRecord, list[Transfer]]] = []
    for record in records:
        credit_account, fee_basis_points = accounts[record.terminal_id]
        planned.append((record, _transfers_for(record, fee_basis_points, credit_account)))
    transfers = [transfer for _, legs in planned for transfer in legs]
    results = await books.create_transfers(connection, transfers, now=now)  # in order
    repeats: list[tuple[UploadRecord, list[Transfer]]] = []
    flags: list[tuple[str, str, str, int, int, str]] = []
    position = 0
    for record, legs in planned:
        leg_outcomes = results[position : position + len(legs)]
        position += len(legs)
        if any(o.result in _repeat_results for o in leg_outcomes):
            repeats.append((record, legs))
            flags.append(_flag(record, "counter_repeat", "same card counter, other content"))
            continue
        failed = [o for o in leg_outcomes if o.result not in booked_results]
        assert not failed, f"ledger refused a card transaction: {failed}"
        if any(o.over_limit for o in leg_outcomes if o.result == CreateTransferResult.created):
            flags.append(_flag(record, "purse_negative", "booked past the purse's balance"))
    if repeats:
        # The card claims a counter already booked with other content: a clone or tampering.
        # The ride or sale happened, so its payee is paid, but from suspense, not the purse.
        suspense_legs = []
        for record, legs in repeats:
            for leg in legs:
                debit = leg.debit_account_id
                credit = leg.credit_account_id
                if debit == registry.purse_account_id(record.card_number):
                    debit = registry.suspense_account_id
                if credit == registry.purse_account_id(record.card_number):
                    credit = registry.suspense_account_id
                suspense_legs.append(
                    Transfer(
                        derive_id("card-anomaly", record.terminal_id, record.sequence, str(leg.id)),
                        debit,
                        credit,
                        leg.amount,
                        TransferCode.suspense,
                        leg.flags,
                        terminal_id=record.terminal_id,
                        terminal_sequence=record.sequence,
                        card_number=record.card_number,
                        card_counter=record.card_counter,
                    )
                )
        suspense_results = await books.create_transfers(connection, suspense_legs, now=now)
        refused = [o for o in suspense_results if o.result not in booked_results]
        assert not refused, f"suspense booking refused: {refused}"
        await registry.deny_cards(
            connection, sorted({record.card_number for record, _ in repeats}), "counter_repeat"
        )
    await _insert_flags(connection, flags, answer)
    return [record for record, _ in repeats]


async def _credit_accounts(
    connection: asyncpg.Connection, records: list[UploadRecord]
) -> dict[str, tuple[uuid.UUID, int]]:
    """Per terminal of the records: where its money goes (revenue or payable) and the fee."""
    rows = await connection.fetch(
        "select t.terminal_id, o.revenue_account_id, m.payable_account_id, m.fee_basis_points "
        "from terminals t left join operators o using (operator_id) "
        "left join merchants m using (merchant_id) where t.terminal_id = any($1::text[])",
        sorted({record.terminal_id for record in records}),
    )
    accounts = {}
    for row in rows:
        if row["revenue_account_id"] is not None:
            accounts[row["terminal_id"]] = (row["revenue_account_id"], 0)
        else:
            accounts[row["terminal_id"]] = (row["payable_account_id"], row["fee_basis_points"])
    return accounts


def _flag(record: UploadRecord, reason: str, detail: str) -> tuple[str, str, str, int, int, str]:
    return (
        record.card_number,
        reason,
        record.terminal_id,
        record.sequence,
        record.card_counter,
        detail,
    )


async def _insert_flags(
    connection: asyncpg.Connection,
    flags: list[tuple[str, str, str, int, int, str]],
    answer: UploadAnswer,
) -> None:
    if not flags:
        return
    await connection.copy_records_to_table(
        "card_flags",
        columns=("card_number", "reason", "terminal_id", "sequence", "card_counter", "detail"),
        records=flags,
    )
    by_reason: dict[str, list[str]] = {}
    for flag in flags:
        answer.flags_by_reason[flag[1]] += 1
        by_reason.setdefault(flag[1], []).append(flag[0])
    for reason, cards in by_reason.items():
        logger.warning(
            "cards flagged",
            extra={
                "reason": reason,
                "count": len(cards),
                "card_numbers": cards[:flagged_cards_logged_max],
            },
        )


flagged_cards_logged_max = 20  # per reason and batch: the rest are in card_flags


# The card_records table holds every wire field under its wire name, plus where it came from.
_stored_columns = (*(name for name, _ in record_fields), "batch_sequence", "outcome")


async def _store_records(
    connection: asyncpg.Connection,
    batch_sequence: int,
    new_records: list[tuple[UploadRecord, RecordOutcome]],
    changed: list[tuple[UploadRecord, RecordOutcome]],
) -> None:
    if new_records:
        # Binary COPY: the cheapest way in for thousands of rows.
        await connection.copy_records_to_table(
            "card_records",
            columns=_stored_columns,
            records=[
                (*record, batch_sequence, outcome.value)  # (kind, status: str enums)
                for record, outcome in new_records
            ],
        )
    if changed:
        await connection.executemany(
            "update card_records set status = $3, outcome = $4 where terminal_id = $1 and sequence = $2",
            [
                (record.terminal_id, record.sequence, record.status.value, outcome.value)
                for record, outcome in changed
            ],
        )


async def _monitor_cards(
    connection: asyncpg.Connection, booked: list[UploadRecord], answer: UploadAnswer
) -> None:
    """The balance chain between adjacent counters (the shadow balance and counter of a card
    are read from its records when asked: no per-card row to update, so no lock to wait on)."""
    if not booked:
        return
    # Adjacent counters must chain: balance(c) = balance(c-1) - charged + credited. The batch
    # carries each booked record's own balance and change, so only its stored neighbours
    # (c - 1 and c + 1, booked by any terminal) are read: two index probes per record, kept
    # as probes by `offset 0` (joined instead, the planner hashed the whole card_records
    # table on every batch: a cost that grew with the table).
    rows = await connection.fetch(
        """
        with given as (
            select * from unnest(string_to_array($1, ','), string_to_array($2, ',')::bigint[],
                                 string_to_array($3, ',')::bigint[],
                                 string_to_array($4, ',')::bigint[])
                with ordinality as given(card, counter, balance, change, position)
        ), pairs as (
            -- the record of this batch (at `position`) does not follow its stored predecessor
            select given.card as card_number, given.counter as card_counter,
                   given.position, null as terminal_id, null::bigint as sequence,
                   earlier.balance_after_rupiah as before, given.balance as after, given.change
            from given cross join lateral (
                select balance_after_rupiah from card_records
                where card_number = given.card and card_counter = given.counter - 1
                    and outcome = 'booked' offset 0
            ) earlier
            union all
            -- the stored successor does not follow the record of this batch
            select given.card, later.card_counter, null, later.terminal_id, later.sequence,
                   given.balance, later.balance_after_rupiah, later.change
            from given cross join lateral (
                select card_counter, terminal_id, sequence, balance_after_rupiah,
                       topup_rupiah + case when kind = 'refund' then amount_rupiah
                                           else -amount_rupiah end as change
                from card_records
                where card_number = given.card and card_counter = given.counter + 1
                    and outcome = 'booked' offset 0
            ) later
        )
        select distinct card_number, card_counter, position, terminal_id, sequence,
               before, after, change
        from pairs where after != before + change
        """,
        _comma_joined(record.card_number for record in booked),
        _comma_joined(record.card_counter for record in booked),
        _comma_joined(record.balance_after_rupiah for record in booked),
        _comma_joined(_balance_change(record) for record in booked),
    )
    flags: dict[tuple[str, str, str, int, int, str], None] = {}  # one per broken pair
    for row in rows:
        if row["position"] is not None:  # the batch's own record
            record = booked[row["position"] - 1]
            terminal_id, sequence = record.terminal_id, record.sequence
        else:
            terminal_id, sequence = row["terminal_id"], row["sequence"]
        # A pair within this batch is found from both ends (its records are stored already).
        flags[
            (
                row["card_number"],
                "balance_mismatch",
                terminal_id,
                sequence,
                row["card_counter"],
                f"balance {row['before']} then {row['after']} after a change of {row['change']}",
            )
        ] = None
    if flags:
        await _insert_flags(connection, list(flags), answer)
        await registry.deny_cards(connection, sorted({f[0] for f in flags}), "balance_mismatch")


def _note_charged_without_service(booked: list[UploadRecord], answer: UploadAnswer) -> None:
    """A fare charged in full because the validator's feed has no service that day is booked
    like any other (the card paid it); its terminal runs a stale fare feed: raise the alarm."""
    stale = [
        record
        for record in booked
        if record.kind == RecordKind.fare_debit
        and record.fare_detail.startswith(no_service_fare_detail)
    ]
    for record in stale:
        answer.charged_without_service[record.terminal_id] += 1
    for terminal_id, count in answer.charged_without_service.items():
        logger.warning(
            "taps charged the full fare without fare service: the terminal's fare feed has "
            "run out, ship it a new one",
            extra={
                "reason": no_service_fare_detail,
                "terminal_id": terminal_id,
                "count": count,
                "first_time_ms": min(r.time_ms for r in stale if r.terminal_id == terminal_id),
            },
        )


def _balance_change(record: UploadRecord) -> int:
    """What a record did to the card's purse: credited top-up, less the fare or sale, or plus
    the refund (the same sum the chain check reads from stored neighbours)."""
    if record.kind == RecordKind.refund:
        return record.topup_rupiah + record.amount_rupiah
    return record.topup_rupiah - record.amount_rupiah


async def _take_top_ups(
    connection: asyncpg.Connection, booked: list[UploadRecord], answer: UploadAnswer
) -> None:
    taken = [record for record in booked if record.pending_topup_id]
    if not taken:
        return
    rows = await connection.fetch(
        "update pending_top_ups p set taken_terminal_id = t.terminal, taken_sequence = t.sequence, "
        "taken_card_counter = t.counter from unnest($1::text[], $2::text[], $3::bigint[], "
        "$4::bigint[], $5::text[]) as t(top_up, terminal, sequence, counter, card) "
        "where p.top_up_id = t.top_up and p.card_number = t.card "
        "and p.taken_terminal_id is null returning p.top_up_id",
        [record.pending_topup_id for record in taken],
        [record.terminal_id for record in taken],
        [record.sequence for record in taken],
        [record.card_counter for record in taken],
        [record.card_number for record in taken],
    )
    marked = {row["top_up_id"] for row in rows}
    flags = [
        _flag(record, "top_up_not_open", f"pending top-up {record.pending_topup_id} was not open")
        for record in taken
        if record.pending_topup_id not in marked
    ]
    await _insert_flags(connection, flags, answer)
