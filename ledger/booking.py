"""The pure step of booking a batch: given what the batch touches, decide every result.

No I/O and no clock here (TigerBeetle's shape: prefetch, then a deterministic commit step):
`decide_batch` takes the transfers, the accounts they touch, the transfers already booked
with the same ids, the pending transfers they post or void, the time and the next sequence
number, and returns each transfer's outcome plus the rows to write (each carrying both
accounts' totals after it, from which the database updates the accounts' running totals).
The store (`ledger.store`) does the loading before and the single write after.
"""

from __future__ import annotations

import contextlib
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ledger.chain import canonical_json
from ledger.records import (
    AccountFlags,
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferFlags,
    TransferOutcome,
    all_transfer_flags,
    amount_max,
    code_max,
    id_max,
    id_zero,
    metadata_length_max,
    reference_length_max,
    reference_number_max,
    resolve_flags,
    timeout_s_max,
    two_phase_flags,
)

R = CreateTransferResult
# Enum members read from the class cost ~90 ns each (a descriptor call); the hot paths use these.
_created = R.created
_exists = R.exists

# Indexes into an account's mutable state list.
FLAGS, CURRENCY, DEBITS_PENDING, DEBITS_POSTED, CREDITS_PENDING, CREDITS_POSTED = range(6)
# Plain ints: enum.IntFlag arithmetic costs a microsecond a time on the hot path.
_linked = int(TransferFlags.linked)
_pending = int(TransferFlags.pending)
_post = int(TransferFlags.post_pending)
_void = int(TransferFlags.void_pending)
_force = int(TransferFlags.force)
_no_flags = TransferFlags.none
_two_phase = int(two_phase_flags)
_all_flags = int(all_transfer_flags)
_resolve = int(resolve_flags)
_debits_limited = int(AccountFlags.debits_must_not_exceed_credits)
_credits_limited = int(AccountFlags.credits_must_not_exceed_debits)
_closed = int(AccountFlags.closed)


@dataclass(slots=True)
class PendingState:
    """A booked pending transfer and what has happened to it since."""

    transfer: Transfer  # resolved: accounts, amount and code filled in
    booked_at: datetime
    resolution: TransferFlags = TransferFlags.none  # post_pending or void_pending once resolved


@dataclass(frozen=True, slots=True)
class Existing:
    """A transfer already booked under an id the batch uses again."""

    transfer: Transfer
    sequence: int
    booked_at: datetime


@dataclass(slots=True)
class Entry:
    """A transfer this batch books, with the totals of both accounts after it."""

    transfer: Transfer
    debit_after: tuple[int, int, int, int]
    credit_after: tuple[int, int, int, int]
    over_limit: bool
    sequence: int = 0


@dataclass(slots=True)
class BatchDecision:
    transfers: list[Transfer]
    results: list[CreateTransferResult]  # one per transfer, in order
    made: list[Entry | None]  # the entry each created transfer became
    entries: list[Entry]  # in booking order, sequences assigned
    booked_here: dict[int, Entry]
    existing: dict[int, Existing]
    now: datetime

    def outcomes(self) -> list[TransferOutcome]:
        """One outcome per transfer. Made on request: the store asks for them while the
        server applies the batch, off the path the rows take to the server."""
        now, booked_here, existing = self.now, self.booked_here, self.existing
        outcomes = []
        for transfer, final, made_entry in zip(self.transfers, self.results, self.made):
            transfer_id = transfer.id
            if final is _created:
                assert made_entry is not None
                outcomes.append(
                    TransferOutcome(
                        transfer_id, final, made_entry.sequence, now, made_entry.over_limit
                    )
                )
            elif final is _exists:
                here = booked_here.get(transfer_id.int)
                if here is not None:
                    outcomes.append(TransferOutcome(transfer_id, final, here.sequence, now))
                else:
                    old = existing[transfer_id.int]
                    outcomes.append(
                        TransferOutcome(transfer_id, final, old.sequence, old.booked_at)
                    )
            else:
                outcomes.append(TransferOutcome(transfer_id, final))
        return outcomes


_id_fields = ("id", "debit_account_id", "credit_account_id", "pending_id")
_int_fields = ("amount", "code", "flags", "timeout_s", "terminal_sequence", "card_counter")
# Fields that may be None (besides the text fields, which always may).
_optional_fields = frozenset(
    {
        "amount",
        "pending_id",
        "debit_account_id",
        "credit_account_id",
        "terminal_sequence",
        "card_counter",
    }
)
_text_fields = ("terminal_id", "card_number", "bank_reference", "settlement_batch", "metadata")


def type_problem(transfers: Sequence[Transfer]) -> str | None:
    """The first field of a type no check expects (an id that is not a `uuid.UUID`, an
    amount that is not an `int`, ...), said plainly; None if there is none. Results cover
    values; these are a caller's bugs, found only when something raised on them."""
    for index, transfer in enumerate(transfers):
        if not isinstance(transfer, Transfer):
            return f"transfer {index} is a {type(transfer).__name__}, not a ledger.Transfer"
        for names, kind, wanted in (
            (_id_fields, uuid.UUID, "a uuid.UUID"),
            (_int_fields, int, "an int"),
            (_text_fields, str, "a str"),
        ):
            for name in names:
                value = getattr(transfer, name)
                if value is None and (name in _optional_fields or kind is str):
                    continue
                if not isinstance(value, kind):
                    return f"transfer {index}: {name} must be {wanted}, not {value!r}"
    return None


@contextlib.contextmanager
def malformed_transfers_named(transfers: Sequence[Transfer]) -> Iterator[None]:
    """An error raised deep in deciding or encoding on a field of the wrong type (an
    AttributeError, a struct.error, ...) becomes a TypeError naming the transfer and field.
    Nothing is booked either way."""
    try:
        yield
    except (TypeError, AttributeError, AssertionError, struct.error) as error:
        problem = type_problem(transfers)
        if problem is None:
            raise
        raise TypeError(problem) from error


def validate(transfer: Transfer) -> CreateTransferResult | None:
    """Checks on the transfer alone, in the fixed order of `CreateTransferResult`."""
    transfer_id = transfer.id
    assert isinstance(transfer_id, uuid.UUID), "transfer ids are uuid.UUID"
    if transfer_id == id_zero:
        return R.id_must_not_be_zero
    if transfer_id == id_max:
        return R.id_must_not_be_max
    flags = int(transfer.flags)
    if flags & ~_all_flags:
        return R.reserved_flag
    two_phase = flags & _two_phase
    if two_phase and two_phase not in (_pending, _post, _void):
        return R.flags_are_mutually_exclusive
    resolving = bool(two_phase & _resolve)
    if resolving and flags & _force:
        return R.flags_are_mutually_exclusive
    debit, credit = transfer.debit_account_id, transfer.credit_account_id
    if not resolving:
        if debit is None or debit == id_zero:
            return R.debit_account_id_must_not_be_zero
        if credit is None or credit == id_zero:
            return R.credit_account_id_must_not_be_zero
    if debit is not None and debit == credit:
        return R.accounts_must_be_different
    pending_id = transfer.pending_id
    if resolving:
        if pending_id is None or pending_id == id_zero:
            return R.pending_id_must_not_be_zero
        if pending_id == transfer_id:
            return R.pending_id_must_be_different
    elif pending_id is not None:
        return R.pending_id_must_be_zero
    if transfer.timeout_s and not flags & _pending:
        return R.timeout_reserved_for_pending_transfer
    if transfer.timeout_s < 0:
        return R.timeout_must_not_be_negative
    if transfer.timeout_s > timeout_s_max:
        return R.timeout_too_large
    amount = transfer.amount
    if amount is None:
        if not resolving:
            return R.amount_must_be_positive
    elif amount <= 0:
        return R.amount_must_be_positive
    elif amount > amount_max:
        return R.amount_too_large
    if transfer.code <= 0 and not (resolving and transfer.code == 0):
        return R.code_must_be_positive
    if transfer.code > code_max:
        return R.code_too_large
    return references_problem(transfer)


def references_problem(transfer: Transfer) -> CreateTransferResult | None:
    """The last checks of `validate`: the references and metadata, in the results' order."""
    texts = (
        transfer.terminal_id,
        transfer.card_number,
        transfer.bank_reference,
        transfer.settlement_batch,
    )
    for text in texts:  # (loops: generator expressions cost more, once per tap uploaded)
        if text is not None and len(text) > reference_length_max:
            return R.reference_too_long
    for text in texts:
        if text is not None and not _storable_text(text):
            return R.reference_must_be_text
    for number in (transfer.terminal_sequence, transfer.card_counter):
        if number is not None and not 0 <= number <= reference_number_max:
            return R.reference_out_of_range
    if transfer.metadata is not None:
        if len(transfer.metadata) > metadata_length_max:
            return R.metadata_too_long
        if not _json_for_jsonb(transfer.metadata):
            return R.metadata_must_be_json
    return None


def _storable_text(text: str) -> bool:
    """PostgreSQL text holds UTF-8 without NUL: no NUL, no lone surrogate (not encodable)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


metadata_stored_length_max = 4 * metadata_length_max


def _json_for_jsonb(text: str) -> bool:
    """Whether PostgreSQL's jsonb takes `text` and gives back what the chain hashed
    (`ledger.chain.canonical_json` says what that excludes)."""
    try:
        canonical = canonical_json(text)
    except ValueError:
        return False
    # Numbers are kept written out (1e1000 is 1,001 digits): bound what is stored, not only
    # what was sent.
    return len(canonical) <= metadata_stored_length_max


def _same_metadata(given: str | None, booked: str | None) -> bool:
    """Metadata comes back from jsonb reformatted: compare the canonical forms."""
    if given is None or booked is None:
        return given is booked
    return given == booked or canonical_json(given) == canonical_json(booked)


def compare_with_booked(transfer: Transfer, booked: Transfer) -> CreateTransferResult:
    """`exists` when the repeat says what was booked; otherwise the first field that differs.
    Fields a post or void may leave out (accounts, amount, code) are compared only if given.
    """
    if transfer.flags != booked.flags:
        return R.exists_with_different_flags
    if transfer.pending_id != booked.pending_id:
        return R.exists_with_different_pending_id
    if transfer.timeout_s != booked.timeout_s:
        return R.exists_with_different_timeout
    debit = transfer.debit_account_id
    if debit is not None and debit != booked.debit_account_id:
        return R.exists_with_different_debit_account_id
    credit = transfer.credit_account_id
    if credit is not None and credit != booked.credit_account_id:
        return R.exists_with_different_credit_account_id
    if transfer.amount is not None and transfer.amount != booked.amount:
        return R.exists_with_different_amount
    if transfer.code != 0 and transfer.code != booked.code:
        return R.exists_with_different_code
    if (
        transfer.terminal_id != booked.terminal_id
        or transfer.terminal_sequence != booked.terminal_sequence
        or transfer.card_number != booked.card_number
        or transfer.card_counter != booked.card_counter
        or transfer.bank_reference != booked.bank_reference
        or transfer.settlement_batch != booked.settlement_batch
    ):
        return R.exists_with_different_references
    if not _same_metadata(transfer.metadata, booked.metadata):
        return R.exists_with_different_metadata
    return R.exists


def _expired(pending: PendingState, now: datetime) -> bool:
    timeout_s = pending.transfer.timeout_s
    return timeout_s > 0 and now >= pending.booked_at + timedelta(seconds=timeout_s)


def decide_batch(
    transfers: list[Transfer],
    accounts: dict[int, list],
    existing: dict[int, Existing],
    pendings: dict[int, PendingState],
    now: datetime,
    next_sequence: int,
) -> BatchDecision:
    """Decide a batch. Every map is keyed by the id's integer (`uuid.int`: hashing a UUID
    object costs a Python call). `accounts` maps id -> [flags, currency, debits_pending,
    debits_posted, credits_pending, credits_posted] and is updated in place to the totals
    after the batch. `pendings` gains the holds this batch creates and the resolutions it makes.

    A batch of plain transfers may be decided in consecutive parts (the store streams each
    part's rows while deciding the next), with `next_sequence` moved on by the rows before.
    """
    count = len(transfers)
    results: list[CreateTransferResult | None] = [None] * count
    made: list[Entry | None] = [None] * count  # the entry a created transfer became
    entries: list[Entry | None] = []  # in order; None where a failed chain was undone
    booked_here: dict[int, Entry] = {}
    chain_start: int | None = None
    # Undo log of the open chain: (account state, its four totals before), entries index,
    # ids booked, pending resolutions made.
    undo_accounts: list[tuple[list, tuple[int, int, int, int]]] = []
    undo_entries_from = 0
    undo_pending_resolved: list[PendingState] = []
    undo_pending_created: list[int] = []
    chain_failed_at: int | None = None
    # A batch that ends inside a chain: that whole chain fails without being looked at.
    open_chain_from = count
    while open_chain_from > 0 and int(transfers[open_chain_from - 1].flags) & _linked:
        open_chain_from -= 1
    if open_chain_from < count:
        results[count - 1] = R.linked_event_chain_open
        for index in range(open_chain_from, count - 1):
            results[index] = R.linked_event_failed

    for index in range(open_chain_from):
        transfer = transfers[index]
        transfer_flags = transfer.flags
        flags = 0 if transfer_flags is _no_flags else int(transfer_flags)  # int(): ~130 ns
        if chain_start is None and not flags & ~_force:
            # The common case, a plain transfer outside any chain: the fast path.
            results[index] = _decide_plain(
                transfer, flags, accounts, existing, booked_here, entries, made, index
            )
            continue
        linked = bool(flags & _linked)
        if chain_start is None and linked:
            chain_start = index
            undo_accounts = []
            undo_entries_from = len(entries)
            undo_pending_resolved = []
            undo_pending_created = []
            chain_failed_at = None
        if chain_failed_at is not None:
            results[index] = R.linked_event_failed
        else:
            result = _decide_one(
                transfer,
                accounts,
                existing,
                pendings,
                booked_here,
                now,
                entries,
                made,
                index,
                undo_accounts if chain_start is not None else None,
                undo_pending_resolved,
                undo_pending_created,
            )
            results[index] = result
            if chain_start is not None and result is not R.created and result is not R.exists:
                chain_failed_at = index
        if chain_start is not None and not linked:
            if chain_failed_at is not None:
                _undo_chain(
                    undo_accounts,
                    entries,
                    undo_entries_from,
                    booked_here,
                    pendings,
                    undo_pending_resolved,
                    undo_pending_created,
                )
                for member in range(chain_start, index + 1):
                    made[member] = None
                    if member != chain_failed_at:
                        results[member] = R.linked_event_failed
            chain_start = None
            chain_failed_at = None

    booked_entries = [entry for entry in entries if entry is not None]
    sequence = next_sequence
    for entry in booked_entries:
        entry.sequence = sequence
        sequence += 1
    assert all(result is not None for result in results)
    return BatchDecision(
        transfers,
        results,  # type: ignore[arg-type]  # no None left (asserted)
        made,
        booked_entries,
        booked_here,
        existing,
        now,
    )


_id_max_int = id_max.int


def _decide_plain(
    transfer: Transfer,
    flags: int,
    accounts: dict[int, list],
    existing: dict[int, Existing],
    booked_here: dict[int, Entry],
    entries: list[Entry | None],
    made: list[Entry | None],
    index: int,
) -> CreateTransferResult:
    """`_decide_one` for a plain transfer (no two-phase flag, not linked; maybe `force`):
    the same checks in the same order, written flat because it runs for nearly every
    transfer (the fields are unpacked at once: fifteen attribute reads cost more). The model
    test drives both paths."""
    (
        id_uuid,
        debit_uuid,
        credit_uuid,
        amount,
        code,
        _,
        pending_id,
        timeout_s,
        terminal_id,
        terminal_sequence,
        card_number,
        card_counter,
        bank_reference,
        settlement_batch,
        metadata,
    ) = transfer
    transfer_id = id_uuid.int
    if transfer_id == 0:
        return R.id_must_not_be_zero
    if transfer_id == _id_max_int:
        return R.id_must_not_be_max
    if debit_uuid is None or debit_uuid.int == 0:
        return R.debit_account_id_must_not_be_zero
    if credit_uuid is None or credit_uuid.int == 0:
        return R.credit_account_id_must_not_be_zero
    debit_id, credit_id = debit_uuid.int, credit_uuid.int
    if debit_id == credit_id:
        return R.accounts_must_be_different
    if pending_id is not None:
        return R.pending_id_must_be_zero
    if timeout_s:
        return R.timeout_reserved_for_pending_transfer
    if amount is None or amount <= 0:
        return R.amount_must_be_positive
    if amount > amount_max:
        return R.amount_too_large
    if code <= 0:
        return R.code_must_be_positive
    if code > code_max:
        return R.code_too_large
    if (
        terminal_id is not None
        or card_number is not None
        or terminal_sequence is not None
        or card_counter is not None
        or bank_reference is not None
        or settlement_batch is not None
        or metadata is not None
    ):
        invalid = references_problem(transfer)  # the rest of `validate` was checked above
        if invalid is not None:
            return invalid
    if booked_here:
        here = booked_here.get(transfer_id)
        if here is not None:
            return compare_with_booked(transfer, here.transfer)
    if existing:
        old = existing.get(transfer_id)
        if old is not None:
            return compare_with_booked(transfer, old.transfer)

    debit = accounts.get(debit_id)
    if debit is None:
        return R.debit_account_not_found
    credit = accounts.get(credit_id)
    if credit is None:
        return R.credit_account_not_found
    debit_flags, debit_currency, d_pending, d_posted, d_credits_pending, d_credits_posted = debit
    credit_flags, credit_currency, c_debits_pending, c_debits_posted, c_pending, c_posted = credit
    if debit_currency != credit_currency:
        return R.accounts_must_have_the_same_currency
    if debit_flags & _closed:
        return R.debit_account_closed
    if credit_flags & _closed:
        return R.credit_account_closed
    d_posted += amount
    c_posted += amount
    if d_posted > amount_max or d_pending + d_posted > amount_max:
        return R.overflows_debits
    if c_posted > amount_max or c_pending + c_posted > amount_max:
        return R.overflows_credits
    over_limit = False
    if debit_flags & _debits_limited and d_pending + d_posted > d_credits_posted:
        if not flags & _force:
            return R.exceeds_credits
        over_limit = True
    if credit_flags & _credits_limited and c_pending + c_posted > c_debits_posted:
        if not flags & _force:
            return R.exceeds_debits
        over_limit = True
    debit[3] = d_posted
    credit[5] = c_posted
    entry = Entry(
        transfer,
        (d_pending, d_posted, d_credits_pending, d_credits_posted),
        (c_debits_pending, c_debits_posted, c_pending, c_posted),
        over_limit,
    )
    entries.append(entry)
    booked_here[transfer_id] = entry
    made[index] = entry
    return _created


def _undo_chain(
    undo_accounts: list[tuple[list, tuple[int, int, int, int]]],
    entries: list[Entry | None],
    entries_from: int,
    booked_here: dict[int, Entry],
    pendings: dict[int, PendingState],
    pending_resolved: list[PendingState],
    pending_created: list[int],
) -> None:
    for state, totals in reversed(undo_accounts):
        state[DEBITS_PENDING], state[DEBITS_POSTED] = totals[0], totals[1]
        state[CREDITS_PENDING], state[CREDITS_POSTED] = totals[2], totals[3]
    for position in range(entries_from, len(entries)):
        entry = entries[position]
        if entry is not None:
            booked_here.pop(entry.transfer.id.int, None)
            entries[position] = None
    for pending in pending_resolved:
        pending.resolution = TransferFlags.none
    for pending_id in pending_created:
        pendings.pop(pending_id, None)


def _decide_one(
    transfer: Transfer,
    accounts: dict[int, list],
    existing: dict[int, Existing],
    pendings: dict[int, PendingState],
    booked_here: dict[int, Entry],
    now: datetime,
    entries: list[Entry | None],
    made: list[Entry | None],
    index: int,
    undo_accounts: list[tuple[list, tuple[int, int, int, int]]] | None,
    undo_pending_resolved: list[PendingState],
    undo_pending_created: list[int],
) -> CreateTransferResult:
    invalid = validate(transfer)
    if invalid is not None:
        return invalid
    here = booked_here.get(transfer.id.int)
    if here is not None:
        return compare_with_booked(transfer, here.transfer)
    old = existing.get(transfer.id.int)
    if old is not None:
        return compare_with_booked(transfer, old.transfer)

    flags = int(transfer.flags)
    pending: PendingState | None = None
    if flags & _resolve:
        assert transfer.pending_id is not None
        pending = pendings.get(transfer.pending_id.int)
        if pending is None:
            return R.pending_transfer_not_found
        held = pending.transfer
        if not int(held.flags) & _pending:
            return R.pending_transfer_not_pending
        debit_id = transfer.debit_account_id or held.debit_account_id
        credit_id = transfer.credit_account_id or held.credit_account_id
        assert debit_id is not None and credit_id is not None
        if debit_id != held.debit_account_id:
            return R.pending_transfer_has_different_debit_account_id
        if credit_id != held.credit_account_id:
            return R.pending_transfer_has_different_credit_account_id
        if (
            transfer.code != 0
            and transfer.code != held.code
            and transfer.code != TransferCode.expiry
        ):
            return R.pending_transfer_has_different_code
        assert held.amount is not None
        amount = held.amount if transfer.amount is None else transfer.amount
        if amount > held.amount:
            return R.exceeds_pending_transfer_amount
        if flags & _void and amount != held.amount:
            return R.pending_transfer_has_different_amount
        if int(pending.resolution) & _post:
            return R.pending_transfer_already_posted
        if int(pending.resolution) & _void:
            return R.pending_transfer_already_voided
        expiry_void = bool(flags & _void) and transfer.code == TransferCode.expiry
        if _expired(pending, now) and not expiry_void:
            return R.pending_transfer_expired
        code = transfer.code or held.code
    else:
        debit_id = transfer.debit_account_id
        credit_id = transfer.credit_account_id
        assert debit_id is not None and credit_id is not None
        assert transfer.amount is not None
        amount = transfer.amount
        code = transfer.code

    debit = accounts.get(debit_id.int)
    if debit is None:
        return R.debit_account_not_found
    credit = accounts.get(credit_id.int)
    if credit is None:
        return R.credit_account_not_found
    if debit[CURRENCY] != credit[CURRENCY]:
        return R.accounts_must_have_the_same_currency
    if not flags & _void:
        if debit[FLAGS] & _closed:
            return R.debit_account_closed
        if credit[FLAGS] & _closed:
            return R.credit_account_closed

    # The totals after, before any limit check.
    d_pending, d_posted = debit[DEBITS_PENDING], debit[DEBITS_POSTED]
    c_pending, c_posted = credit[CREDITS_PENDING], credit[CREDITS_POSTED]
    if pending is not None:
        held_amount = pending.transfer.amount
        assert held_amount is not None
        d_pending -= held_amount
        c_pending -= held_amount
        if flags & _post:
            d_posted += amount
            c_posted += amount
    elif flags & _pending:
        d_pending += amount
        c_pending += amount
    else:
        d_posted += amount
        c_posted += amount
    if d_pending > amount_max or d_posted > amount_max or d_pending + d_posted > amount_max:
        return R.overflows_debits
    if c_pending > amount_max or c_posted > amount_max or c_pending + c_posted > amount_max:
        return R.overflows_credits
    over_limit = False
    if pending is None:  # posting or voiding a hold never raises what was already held
        if debit[FLAGS] & _debits_limited and d_pending + d_posted > debit[CREDITS_POSTED]:
            if not flags & _force:
                return R.exceeds_credits
            over_limit = True
        if credit[FLAGS] & _credits_limited and c_pending + c_posted > credit[DEBITS_POSTED]:
            if not flags & _force:
                return R.exceeds_debits
            over_limit = True

    # Apply.
    if undo_accounts is not None:
        for state in (debit, credit):
            undo_accounts.append((state, (state[2], state[3], state[4], state[5])))
    debit[DEBITS_PENDING], debit[DEBITS_POSTED] = d_pending, d_posted
    credit[CREDITS_PENDING], credit[CREDITS_POSTED] = c_pending, c_posted
    if pending is not None or transfer.amount is None or transfer.code != code:
        transfer = transfer._replace(
            debit_account_id=debit_id, credit_account_id=credit_id, amount=amount, code=code
        )
    entry = Entry(
        transfer,
        (debit[2], debit[3], debit[4], debit[5]),
        (credit[2], credit[3], credit[4], credit[5]),
        over_limit,
    )
    entries.append(entry)
    booked_here[transfer.id.int] = entry
    made[index] = entry
    if pending is not None:
        pending.resolution = transfer.flags & resolve_flags
        undo_pending_resolved.append(pending)
    elif flags & _pending:
        pendings[transfer.id.int] = PendingState(transfer, now)
        undo_pending_created.append(transfer.id.int)
    return R.created
