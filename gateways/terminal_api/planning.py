"""Planning an accepted upload batch: what to store, what to book, what to flag. Pure.

The writer (`gateways.terminal_api.ingest`) loads what a batch needs, calls these functions,
and writes what they return, as the ledger's store calls `booking.decide_batch`. Nothing here
touches the database, the clock or the network, so the rules are tested on their own
(`tests/terminals/test_planning.py`, with Hypothesis):

1. `classify`: each record against what its terminal already reported under its (terminal id,
   sequence): new, a status change (in doubt → committed | void), a repeat, or a conflict.
2. `settle_in_doubt`: an in-doubt card transaction (from this batch or held from earlier, any
   terminal) is confirmed when some report saw it as the card's last log entry before a later
   tap, void when another committed transaction holds its counter or the log showed another
   entry there, and otherwise still held.
3. `plan_batch`: the rows to store or update, the card transactions to book, the flags and
   the acknowledgement.
4. `card_transfers`: the ledger transfers of each booked card transaction; their ids derive
   from (card number, card counter, leg), so a transaction uploaded twice, or by two
   terminals, is booked once. The card is the authority for what it spent offline: `force`.
5. `judge_booking`: from the ledger's answers, the clones (a counter already booked with
   other content), whose money moves through suspense instead of the purse, and the flags.
"""

from __future__ import annotations

import enum
import uuid
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bus_terminals.wire import (
    RecordStatus,
    UploadBatch,
    UploadKind,
    UploadRecord,
    card_log_fields,
    card_terminal_number,
    no_service_fare_detail,
)
from card_reader import tmac
from gateways.terminal_api.accounts import (
    card_transfer_id,
    fee_income_account_id,
    pending_top_up_account_id,
    purse_account_id,
    suspense_account_id,
)
from ledger.records import (
    CreateTransferResult,
    Transfer,
    TransferCode,
    TransferFlags,
    TransferOutcome,
    booked_results,
    derive_id,
)


class UploadResult(enum.Enum):
    accepted = "accepted"
    exists = "exists"  # the same batch again: its stored acknowledgement
    unknown_terminal = "unknown_terminal"
    terminal_revoked = "terminal_revoked"
    terminal_suspended = "terminal_suspended"  # too many records quarantined, or by staff
    signature_invalid = "signature_invalid"
    terminal_mismatch = "terminal_mismatch"
    malformed = "malformed"
    batch_conflict = "batch_conflict"  # an earlier batch sequence with other bytes
    batch_out_of_order = "batch_out_of_order"  # a later batch sequence: one is missing


refusal_status: dict[UploadResult, int] = {
    UploadResult.unknown_terminal: 401,
    UploadResult.signature_invalid: 401,
    UploadResult.terminal_revoked: 403,
    UploadResult.terminal_suspended: 403,
    UploadResult.terminal_mismatch: 400,
    UploadResult.malformed: 400,
    UploadResult.batch_conflict: 409,
    UploadResult.batch_out_of_order: 409,
}


class RecordOutcome(enum.StrEnum):
    booked = "booked"
    held = "held"  # in doubt: waits for the card's log
    void = "void"
    denied = "denied"  # no card transaction
    anomaly = "anomaly"  # booked to suspense, card flagged
    quarantined = "quarantined"  # not the terminal's to report: its money in suspense


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
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)
    # Whose records this batch quarantined: its own terminal's, and another's earlier in-doubt
    # report the card's log confirmed (`after_chip_block`); each is checked for suspension.
    quarantined_terminals: set[str] = field(default_factory=set)


class StoredReport(NamedTuple):
    """What the back office holds for a record: enough to book it later from a held state."""

    record: UploadRecord
    outcome: RecordOutcome


class Placed(NamedTuple):
    """A record and the outcome it is stored with."""

    record: UploadRecord
    outcome: RecordOutcome


class CardFlag(NamedTuple):
    """One row of `card_flags`, in its column order (so it is COPYed as it is)."""

    card_number: str
    reason: str
    terminal_id: str
    sequence: int
    card_counter: int
    detail: str

    @classmethod
    def of(cls, record: UploadRecord, reason: str, detail: str) -> CardFlag:
        return cls(
            record.card_number,
            reason,
            record.terminal_id,
            record.sequence,
            record.card_counter,
            detail,
        )


class LogEvidence(NamedTuple):
    """What one report says of a card's log: its own transaction, and the card's last log
    entry before it (`previous_*`; counter 0: none). `proven`: the report is a committed card
    transaction whose own Transaction MAC verified (the card, not the terminal, vouches that
    the tap happened); for a card issued with a UID only such reports settle an in-doubt one."""

    terminal_id: str
    sequence: int
    card_number: str
    card_counter: int
    status: str
    previous_counter: int
    previous_terminal_number: int
    previous_balance_rupiah: int
    proven: bool = False

    @classmethod
    def of(cls, record: UploadRecord, *, proven: bool = False) -> LogEvidence:
        return cls(
            record.terminal_id,
            record.sequence,
            record.card_number,
            record.card_counter,
            record.status.value,
            record.previous_counter,
            record.previous_terminal_number,
            record.previous_balance_rupiah,
            proven,
        )


class RoleRule(NamedTuple):
    """What a terminal may report: the record kinds of its role, and (a point of sale) whose
    sales they are."""

    kinds: frozenset[UploadKind]
    merchant_id: str | None  # a POS's merchant; None for a validator

    def problem(self, record: UploadRecord) -> str:
        if record.kind not in self.kinds:
            return f"a {record.kind} from a terminal that does not make them"
        if self.merchant_id is not None and record.merchant_id != self.merchant_id:
            return f"merchant {record.merchant_id!r} is not this POS's ({self.merchant_id})"
        return ""


class Quarantined(NamedTuple):
    """A record the back office does not believe as its terminal reported it. Stored, shown
    to staff, and acknowledged so the terminal's later records flow; what the card paid is
    booked from its purse to suspense (the card did pay), never to the terminal's party."""

    record: UploadRecord
    reason: str
    detail: str


class ChipBlocks(NamedTuple):
    """A card's blocks on its chip, as the back office took them: the card counters of its
    block records, and the card's newest counter each time an issuing desk unblocked it
    (`registry.chip_unblock_action`: the desk writes no record, so the card's next transaction
    is later)."""

    block_counters: tuple[int, ...]
    unblock_counters: tuple[int, ...]
    # A desk unblock recorded before unblocks named the card's counter: it lifts every block.
    unblocked_without_counter: bool = False


# The card transactions a blocked chip refuses at every honest terminal (`bus_terminals.
# terminal`): money out, and money in (a hostile terminal holding the credit key could deliver
# the rider's pending top-up to a stolen card: held apart, the top-up stays the rider's).
_refused_by_a_blocked_chip = frozenset(
    {UploadKind.fare_debit, UploadKind.sale, UploadKind.topup_credit, UploadKind.refund}
)


def standing_block(blocks: ChipBlocks, counter: int) -> int | None:
    """The counter of the chip block a card transaction at `counter` comes after with no desk
    unblock between, or None. The card's counters say it, not any terminal's clock. At the
    block's own counter too: the counter is the terminal's to write in the record, and a block
    moves no money, so no ledger clash would show a fare reusing it."""
    if blocks.unblocked_without_counter:
        return None
    before = [block for block in blocks.block_counters if block <= counter]
    if not before:
        return None
    block = max(before)
    if any(block <= unblock < counter for unblock in blocks.unblock_counters):
        return None
    return block


def after_chip_block(record: UploadRecord, blocks: ChipBlocks) -> int | None:
    """`standing_block` of a fare, sale, top-up or refund (what a blocked chip refuses at
    honest terminals)."""
    if record.kind not in _refused_by_a_blocked_chip:
        return None
    return standing_block(blocks, record.card_counter)


def taken_from_blocked_chip(
    record: UploadRecord, chip_blocks: Mapping[str, ChipBlocks]
) -> Quarantined | None:
    """A committed card transaction the card made after its chip block with no desk unblock
    between: the terminal ignored the chip (or wrote it active again with the debit key), so
    its party is not paid (nor a pending top-up taken) until staff decide."""
    blocks = chip_blocks.get(record.card_number)
    if blocks is None or (block := after_chip_block(record, blocks)) is None:
        return None
    if record.previous_counter > block:
        # The card had made a transaction since its block: this terminal found it active
        # (someone wrote it so). Held apart all the same, but no mark against the terminal, or
        # a card written active could get honest buses suspended one ride at a time.
        detail = (
            f"the card was blocked on its chip at counter {block}, and active again since its "
            f"counter {record.previous_counter} with no desk unblock"
        )
        return Quarantined(record, "after_chip_block_again", detail)
    detail = (
        f"the card was blocked on its chip at counter {block} and no desk unblocked it "
        "since: this terminal wrote a transaction on a blocked card, or found it written active"
    )
    return Quarantined(record, "after_chip_block", detail)


class CardProof(NamedTuple):
    """How to check a card's own proof of its transactions: its UID as registered at issuance,
    and its Transaction MAC keys to try (diversified from the back office's masters, current
    version first; none when the back office holds no TMAC master)."""

    uid: bytes
    keys: tuple[bytes, ...]


def proof_problem(record: UploadRecord, proof: CardProof) -> tuple[str, str] | None:
    """(reason, detail) when a committed card transaction of a card issued with a Transaction
    MAC does not carry the card's own proof of it; None when it does. The card, not the
    terminal, says what it committed (`card_reader.tmac`)."""
    if not record.tmac_value:
        return "tmac_missing", "the card's Transaction MAC is missing"
    if not proof.keys:
        return "tmac_unverifiable", "the back office holds no Transaction MAC master key"
    transaction = tmac.CardTransaction.of_log_fields(*card_log_fields(record))
    value = bytes.fromhex(record.tmac_value)
    for key in proof.keys:
        if tmac.verify(key, proof.uid, record.tmac_counter, value, transaction):
            return None
    return "tmac_invalid", f"the card did not MAC this (counter {record.tmac_counter})"


class PendingTopUp(NamedTuple):
    """A top-up the back office announced (paid for, booked to the card's pending top-up
    account), as loaded and locked for a batch that claims to have delivered it."""

    top_up_id: str
    card_number: str
    amount_rupiah: int
    taken: bool  # some terminal already delivered it


class CreditAccount(NamedTuple):
    """Where a terminal's card money goes (operator revenue or merchant payable), and the fee."""

    account_id: uuid.UUID
    fee_basis_points: int


def with_status(record: UploadRecord, status: RecordStatus) -> UploadRecord:
    return record._replace(status=status)


# ------------------------------------------------------------------------------ classify


@dataclass(slots=True)
class Classified:
    """Each record of a batch against what its terminal reported before."""

    acknowledged: list[list[Any]] = field(default_factory=list)  # [sequence, status] per record
    conflicts: list[CardFlag] = field(default_factory=list)
    new_records: list[Placed] = field(default_factory=list)
    changed: list[Placed] = field(default_factory=list)  # stored before: status and outcome
    to_book: list[UploadRecord] = field(default_factory=list)  # committed, not booked yet
    held: list[UploadRecord] = field(default_factory=list)  # in doubt, new
    reported_before: set[int] = field(default_factory=set)  # sequences stored, now changed
    quarantined: list[Quarantined] = field(default_factory=list)  # new, stored as quarantined


def classify(
    records: Sequence[UploadRecord],
    previous: Mapping[int, StoredReport],
    rule: RoleRule,
    issued_cards: Container[str],
    proofs: Mapping[str, CardProof],
) -> Classified:
    """`issued_cards`: the batch's card numbers the back office issued (a card it never issued
    is quarantined: its transactions prove nothing, and nothing is booked for them). `proofs`:
    of those, the cards issued with a Transaction MAC: a new committed transaction of theirs
    that the card's own MAC does not prove is quarantined, and nothing about the card changes
    (the terminal made it up or altered it)."""
    found = Classified()
    for record in records:
        stored = previous.get(record.sequence)
        found.acknowledged.append([record.sequence, record.status.value])
        if stored is not None:
            if stored.record == record:
                continue  # reported before: nothing new
            if stored.record.status != RecordStatus.in_doubt or stored.record != with_status(
                record, RecordStatus.in_doubt
            ):
                # The terminal changed a record it reported before (not an in-doubt outcome):
                # keep the first report, flag it, and acknowledge so the terminal moves on.
                detail = f"reported before as {stored.record.status}"
                found.conflicts.append(CardFlag.of(record, "record_conflict", detail))
                continue
            if stored.outcome == RecordOutcome.quarantined:
                continue  # held apart until staff release or write it off: a new status waits
        if stored is None and record.card_number not in issued_cards:
            detail = f"card {record.card_number} was never issued"
            found.quarantined.append(Quarantined(record, "unknown_card", detail))
            found.new_records.append(Placed(record, RecordOutcome.quarantined))
            continue
        booked_before = stored is not None and stored.outcome == RecordOutcome.booked
        proof = proofs.get(record.card_number)
        if (
            proof is not None
            and record.status == RecordStatus.committed
            and record.kind != UploadKind.denied
            and not booked_before
            and (unproven := proof_problem(record, proof)) is not None
        ):
            role_problem = rule.problem(record) if stored is None else ""
            if unproven[0] == "tmac_missing" and not role_problem:
                # An honest terminal that lost the card's answer settles it from the card's log
                # at the next tap, without the MAC: it waits like any in-doubt transaction, and
                # the card's log (in later taps, which carry their own MACs) settles it.
                if stored is None:
                    found.held.append(with_status(record, RecordStatus.in_doubt))
                continue  # an earlier in-doubt report of it stays held
            if role_problem:  # unproven and not the terminal's to report: held apart, no money
                unproven = (unproven[0], f"{unproven[1]}; {role_problem}")
            if stored is None:
                found.quarantined.append(Quarantined(record, *unproven))
                found.new_records.append(Placed(record, RecordOutcome.quarantined))
            continue  # an unproven change to an earlier report changes nothing
        if stored is None and (problem := rule.problem(record)):
            # Refusing the batch would block every later record of this terminal; the card
            # paid, so its money reaches the books (suspense) and staff see the record.
            found.quarantined.append(Quarantined(record, "record_not_for_role", problem))
            found.new_records.append(Placed(record, RecordOutcome.quarantined))
            continue
        if stored is not None:
            found.reported_before.add(record.sequence)
        target = found.changed if stored is not None else found.new_records
        if record.kind == UploadKind.denied:
            target.append(Placed(record, RecordOutcome.denied))
        elif record.status == RecordStatus.void:
            # Booked already (another terminal saw it in the card's log): the card wins.
            target.append(
                Placed(record, RecordOutcome.booked if booked_before else RecordOutcome.void)
            )
        elif record.status == RecordStatus.committed:
            if booked_before:
                target.append(Placed(record, RecordOutcome.booked))
            else:
                found.to_book.append(record)
        else:
            found.held.append(record)
    return found


def with_batch_blocks(
    chip_blocks: Mapping[str, ChipBlocks], records: Sequence[UploadRecord]
) -> Mapping[str, ChipBlocks]:
    """`chip_blocks` with the committed block records of this batch added (a block and a tap
    after it may travel in one batch)."""
    blocks = [
        r for r in records if r.kind == UploadKind.block and r.status == RecordStatus.committed
    ]
    if not blocks:
        return chip_blocks
    merged = dict(chip_blocks)
    for record in blocks:
        known = merged.get(record.card_number, ChipBlocks((), ()))
        merged[record.card_number] = known._replace(
            block_counters=(*known.block_counters, record.card_counter)
        )
    return merged


# ------------------------------------------------------------------------- in doubt


@dataclass(slots=True)
class InDoubt:
    confirmed: list[UploadRecord] = field(default_factory=list)  # as committed
    voided: list[UploadRecord] = field(default_factory=list)  # as void
    still_held: list[UploadRecord] = field(default_factory=list)


def in_doubt_candidates(
    held_earlier: Iterable[UploadRecord], held_here: Iterable[UploadRecord]
) -> dict[tuple[str, int], UploadRecord]:
    """Every in-doubt report to settle, by (terminal id, sequence); this batch's last."""
    candidates = {(r.terminal_id, r.sequence): r for r in held_earlier}
    for record in held_here:
        candidates[(record.terminal_id, record.sequence)] = record
    return candidates


def settle_in_doubt(
    candidates: Mapping[tuple[str, int], UploadRecord],
    evidence: Iterable[LogEvidence],
    proving_cards: Container[str] = (),
) -> InDoubt:
    """An in-doubt (card, counter c, terminal T, balance after b) is confirmed when some report
    saw (c, T, b) as the card's last entry and no other committed transaction claims c; void
    when another does, or when a report saw a different entry at c (the card never committed
    ours); otherwise still held. For `proving_cards` (issued with a UID: their transactions
    carry the card's Transaction MAC) only `proven` reports count: a terminal's unproven word
    neither books an in-doubt transaction nor voids one."""
    seen_in_log: dict[tuple[str, int], tuple[int, int]] = {}
    committed_claims: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for report in evidence:
        if not report.proven and report.card_number in proving_cards:
            continue
        if report.previous_counter:
            seen_in_log[(report.card_number, report.previous_counter)] = (
                report.previous_terminal_number,
                report.previous_balance_rupiah,
            )
        if report.status == RecordStatus.committed.value:
            committed_claims.setdefault((report.card_number, report.card_counter), set()).add(
                (report.terminal_id, report.sequence)
            )
    settled = InDoubt()
    for (terminal_id, sequence), record in candidates.items():
        key = (record.card_number, record.card_counter)
        log_entry = seen_in_log.get(key)
        others = committed_claims.get(key, set()) - {(terminal_id, sequence)}
        ours = (card_terminal_number(terminal_id), record.balance_after_rupiah)
        if log_entry == ours and not others:
            settled.confirmed.append(with_status(record, RecordStatus.committed))
        elif others or log_entry is not None:
            settled.voided.append(with_status(record, RecordStatus.void))
        else:
            settled.still_held.append(record)
    return settled


# ------------------------------------------------------------------------------ the plan


@dataclass(slots=True)
class Plan:
    """What the writer does for an accepted batch, in its order."""

    conflicts: list[CardFlag]
    new_records: list[Placed]  # COPYed into card_records
    changed: list[Placed]  # this terminal's earlier reports: new status and outcome
    settled_earlier: list[Placed]  # held reports (any terminal) the card's log settled
    booked: list[UploadRecord]  # card transactions to book, committed
    quarantined: list[Quarantined]  # stored apart; committed ones' money to suspense
    top_ups_taken: list[UploadRecord]  # booked records that delivered an open pending top-up
    top_ups_refused: dict[tuple[str, int], str]  # (terminal, sequence) -> why: from suspense
    block_flags: list[CardFlag]  # cards blocked on the chip that the back office did not ask for
    acknowledgement: dict[str, Any]
    records_by_outcome: Counter[str]
    charged_without_service: Counter[str]  # fares charged in full for want of service


# The `fare_detail` of a tap a terminal refused because the card's chip says it is blocked
# (`bus_terminals.terminal.Reason.card_blocked`).
card_blocked_detail = "card_blocked"


def plan_batch(
    batch: UploadBatch,
    classified: Classified,
    settled: InDoubt,
    pending_top_ups: Mapping[str, PendingTopUp],
    chip_blocks: Mapping[str, int | None] | None = None,
    blocked_chips: Mapping[str, ChipBlocks] | None = None,
) -> Plan:
    """`chip_blocks`: of the cards the batch's block records name, those the back office asked
    to block on the chip, and whether it still does (`judge_blocks`). `blocked_chips`: of the
    batch's cards, those blocked on their chip before this batch (`ChipBlocks`); with the
    blocks this batch books, a fare or sale about to be booked that the card made after such
    a block with no desk unblock between (committed now, or an in-doubt report the card's log
    confirms) is quarantined `after_chip_block` instead (`taken_from_blocked_chip`)."""
    here = {(record.terminal_id, record.sequence) for record in classified.held}
    new_records = list(classified.new_records)
    changed = list(classified.changed)
    settled_earlier: list[Placed] = []
    for record in settled.still_held:
        if (record.terminal_id, record.sequence) in here:
            new_records.append(Placed(record, RecordOutcome.held))
    for record in settled.voided:
        target = new_records if (record.terminal_id, record.sequence) in here else settled_earlier
        target.append(Placed(record, RecordOutcome.void))
    after_block = _after_blocks(classified, settled, chip_blocks or {}, blocked_chips or {})
    reported_now = {(r.terminal_id, r.sequence) for r in classified.to_book}
    to_book = [r for r in classified.to_book if (r.terminal_id, r.sequence) not in after_block]
    # A held report the terminal now reports committed is booked once, as reported now; the
    # same row confirmed from the card's log too would book (and take its top-up) twice.
    confirmed = [
        r
        for r in settled.confirmed
        if (r.terminal_id, r.sequence) not in after_block
        and (r.terminal_id, r.sequence) not in reported_now
    ]
    for key, apart in after_block.items():
        if key in here:  # reported in doubt in this batch: stored as reported
            stored = with_status(apart.record, RecordStatus.in_doubt)
            new_records.append(Placed(stored, RecordOutcome.quarantined))
        elif key in reported_now:  # committed now (updating its in-doubt report, if any)
            target = changed if key[1] in classified.reported_before else new_records
            target.append(Placed(apart.record, RecordOutcome.quarantined))
        else:  # an earlier report, of this terminal or another, the card's log confirmed
            settled_earlier.append(Placed(apart.record, RecordOutcome.quarantined))
    confirmed_here = [r for r in confirmed if (r.terminal_id, r.sequence) in here]
    confirmed_earlier = [r for r in confirmed if (r.terminal_id, r.sequence) not in here]
    for record in to_book:
        # A committed report of a transaction this terminal once reported in doubt updates
        # that row; any other is new.
        target = changed if record.sequence in classified.reported_before else new_records
        target.append(Placed(record, RecordOutcome.booked))
    for record in confirmed_here:
        # Stored as the terminal reported it (in doubt), booked on the card log's word.
        new_records.append(Placed(with_status(record, RecordStatus.in_doubt), RecordOutcome.booked))
    settled_earlier += [Placed(record, RecordOutcome.booked) for record in confirmed_earlier]
    booked = to_book + confirmed_here + confirmed_earlier
    taken, refused = judge_top_ups(booked, pending_top_ups)
    denied = [placed.record for placed in new_records if placed.outcome == RecordOutcome.denied]
    unrequested, block_flags = judge_blocks(booked, denied, chip_blocks or {})
    quarantined = (
        classified.quarantined
        + [
            Quarantined(
                record, "top_up_not_delivered", refused[(record.terminal_id, record.sequence)]
            )
            for record in booked
            if (record.terminal_id, record.sequence) in refused
        ]
        + unrequested
        + list(after_block.values())
    )
    records_by_outcome = Counter(placed.outcome.value for placed in new_records + changed)
    return Plan(
        conflicts=classified.conflicts,
        new_records=new_records,
        changed=changed,
        settled_earlier=settled_earlier,
        booked=booked,
        quarantined=quarantined,
        top_ups_taken=taken,
        top_ups_refused=refused,
        block_flags=block_flags,
        acknowledgement={
            "batch_sequence": batch.batch_sequence,
            "result": UploadResult.accepted.value,
            "records": classified.acknowledged,
        },
        records_by_outcome=records_by_outcome,
        charged_without_service=Counter(
            record.terminal_id
            for record in booked
            if record.kind == UploadKind.fare_debit
            and record.fare_detail.startswith(no_service_fare_detail)
        ),
    )


def _after_blocks(
    classified: Classified,
    settled: InDoubt,
    chip_blocks: Mapping[str, int | None],
    blocked_chips: Mapping[str, ChipBlocks],
) -> dict[tuple[str, int], Quarantined]:
    """The fares and sales about to be booked that were taken from a blocked chip, by
    (terminal, sequence): not booked, whichever way they came. Only blocks the back office
    asked for count: one it never asked for is the terminal's word (on a card issued without
    a Transaction MAC, not even the card's), held as `unrequested_block`, and must not hold
    the card's later honest fares apart."""
    candidates = [*classified.to_book, *settled.confirmed]
    blocks = with_batch_blocks(
        blocked_chips,
        [r for r in candidates if r.kind == UploadKind.block and r.card_number in chip_blocks],
    )
    after_block: dict[tuple[str, int], Quarantined] = {}
    for record in candidates if blocks else ():
        if (apart := taken_from_blocked_chip(record, blocks)) is not None:
            after_block[(record.terminal_id, record.sequence)] = apart
    return after_block


def judge_blocks(
    booked: Sequence[UploadRecord],
    denied: Sequence[UploadRecord],
    chip_blocks: Mapping[str, int | None],
) -> tuple[list[Quarantined], list[CardFlag]]:
    """A card blocked itself (its MAC proves it, so the record is taken and books nothing).
    `chip_blocks`: the cards the back office asked to block on the chip, None while it still
    does, else when staff lifted it (Unix ms). A block it never asked for was a terminal's own
    doing: the record is also listed as quarantined (`unrequested_block`: the terminal is
    flagged, and suspended past the limit), and the card is flagged `unrequested_block` for the
    desk to unblock. A block of a card whose block staff lifted flags the card only, whatever
    the terminal's clock says of when it was written: the card refuses itself everywhere until
    a desk unblocks it (unless the batch shows a later transaction: it was unblocked). A tap
    refused because the chip says blocked (`denied` records) of a card the back office does not
    ask to block flags the card the same way: a terminal may have blocked it and kept the
    record to itself."""
    quarantined: list[Quarantined] = []
    flags: list[CardFlag] = []
    blocks = [record for record in booked if record.kind == UploadKind.block]
    newest: dict[str, int] = {}  # per card, its newest transaction in the batch (blocks only)
    for record in booked if blocks else ():
        newest[record.card_number] = max(newest.get(record.card_number, 0), record.card_counter)
    for record in blocks:
        if record.card_number not in chip_blocks:
            detail = "the back office never asked to block it on the chip: unblock it at a desk"
            quarantined.append(Quarantined(record, "unrequested_block", detail))
        elif chip_blocks[record.card_number] is None:
            continue
        elif newest[record.card_number] > record.card_counter:
            continue  # the card made a transaction after it: a desk has unblocked it already
        else:
            detail = "blocked on the chip though staff lifted its block: unblock it at a desk"
        flags.append(CardFlag.of(record, "unrequested_block", detail))
    for record in denied:
        if record.fare_detail != card_blocked_detail:
            continue
        if record.card_number in chip_blocks and chip_blocks[record.card_number] is None:
            continue
        detail = (
            "the card says it is blocked, which the back office does not ask; its last "
            f"transaction before (counter {record.previous_counter}) was by terminal number "
            f"{record.previous_terminal_number}: unblock it at a desk"
        )
        flags.append(CardFlag.of(record, "unrequested_block", detail))
    return quarantined, flags


def judge_top_ups(
    booked: Sequence[UploadRecord], pending_top_ups: Mapping[str, PendingTopUp]
) -> tuple[list[UploadRecord], dict[tuple[str, int], str]]:
    """A credit a card received is booked from its pending top-up account only against an open
    top-up with the same id, card and amount, delivered once; any other credit the card got
    from a terminal (an invented or empty id, another amount, a second delivery) comes from
    suspense, and the record is quarantined for staff: the purse still equals the card, and
    the pending account never goes below what was paid into it."""
    taken: list[UploadRecord] = []
    refused: dict[tuple[str, int], str] = {}
    delivered: set[str] = set()
    for record in booked:
        if not record.topup_rupiah:
            continue
        key = (record.terminal_id, record.sequence)
        top_up = pending_top_ups.get(record.pending_topup_id)
        if not record.pending_topup_id:
            refused[key] = f"credit of Rp {record.topup_rupiah:,} with no top-up id"
        elif top_up is None:
            refused[key] = f"top-up {record.pending_topup_id} was never announced"
        elif top_up.card_number != record.card_number:
            refused[key] = f"top-up {top_up.top_up_id} is for card {top_up.card_number}"
        elif top_up.amount_rupiah != record.topup_rupiah:
            refused[key] = (
                f"top-up {top_up.top_up_id} is Rp {top_up.amount_rupiah:,}, "
                f"the card got Rp {record.topup_rupiah:,}"
            )
        elif top_up.taken or top_up.top_up_id in delivered:
            refused[key] = f"top-up {top_up.top_up_id} was delivered already"
        else:
            delivered.add(top_up.top_up_id)
            taken.append(record)
    return taken, refused


# ---------------------------------------------------------------------------- transfers


class CardTransfers(NamedTuple):
    """A booked card transaction and its ledger transfers (legs), in booking order; or a
    quarantined one's purse against suspense (`held_apart`)."""

    record: UploadRecord
    legs: list[Transfer]
    held_apart: bool = False


def card_transfers(plan: Plan, accounts: Mapping[str, CreditAccount]) -> list[CardTransfers]:
    """The ledger transfers of the plan's booked card transactions, then those of its
    quarantined ones (the card's purse against suspense)."""
    planned = []
    for record in plan.booked:
        account_id, fee_basis_points = accounts[record.terminal_id]
        refused = (record.terminal_id, record.sequence) in plan.top_ups_refused
        legs = transfers_for(record, fee_basis_points, account_id, top_up_from_suspense=refused)
        planned.append(CardTransfers(record, legs))
    for record, reason, _ in plan.quarantined:
        # A card never issued has no purse: nothing it claims is booked.
        whole = reason in card_paid_reasons and record.status == RecordStatus.committed
        if whole and balance_change(record):
            planned.append(CardTransfers(record, [quarantine_transfer(record)], held_apart=True))
    return planned


# Quarantined records the card did commit (its purse moved): that money goes to suspense
# (`quarantine_transfer`), unless the purse was closed (its balance moved to a new card).
card_paid_reasons = frozenset({"record_not_for_role", "after_chip_block", "after_chip_block_again"})
# Quarantined for what the terminal cannot have known: not counted toward its suspension.
not_the_terminals_doing = frozenset({"after_chip_block_again"})


def quarantine_transfer(record: UploadRecord) -> Transfer:
    """What the card's purse did in a quarantined card transaction, against suspense: the
    purse account keeps equal to the card, and no party is paid until staff decide."""
    change = balance_change(record)
    purse = purse_account_id(record.card_number)
    return Transfer(
        card_transfer_id(record.card_number, record.card_counter, "quarantine"),
        purse if change < 0 else suspense_account_id,
        suspense_account_id if change < 0 else purse,
        abs(change),
        TransferCode.suspense,
        TransferFlags.force,
        terminal_id=record.terminal_id,
        terminal_sequence=record.sequence,
        card_number=record.card_number,
        card_counter=record.card_counter,
    )


def transfers_for(
    record: UploadRecord,
    fee_basis_points: int,
    credit_account: uuid.UUID,
    *,
    top_up_from_suspense: bool = False,
) -> list[Transfer]:
    purse = purse_account_id(record.card_number)
    amount = record.amount_rupiah
    if not record.topup_rupiah and amount and record.kind == UploadKind.fare_debit:
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

    def leg(
        name: str,
        debit: uuid.UUID,
        credit: uuid.UUID,
        rupiah: int,
        code: TransferCode,
        flags: TransferFlags = TransferFlags.force,
    ) -> Transfer:
        return Transfer(
            card_transfer_id(record.card_number, record.card_counter, name),
            debit,
            credit,
            rupiah,
            code,
            flags,
            terminal_id=record.terminal_id,
            terminal_sequence=record.sequence,
            card_number=record.card_number,
            card_counter=record.card_counter,
        )

    transfers = []
    if record.topup_rupiah:
        source = (
            suspense_account_id
            if top_up_from_suspense
            else pending_top_up_account_id(record.card_number)
        )
        transfers.append(
            leg("top-up", source, purse, record.topup_rupiah, TransferCode.top_up_delivery)
        )
    if amount and record.kind == UploadKind.fare_debit:
        transfers.append(leg("fare", purse, credit_account, amount, TransferCode.fare))
    elif amount and record.kind == UploadKind.sale:
        fee = amount * fee_basis_points // 10_000
        linked = TransferFlags.linked if fee else TransferFlags.none
        transfers.append(
            leg(
                "sale",
                purse,
                credit_account,
                amount,
                TransferCode.merchant_sale,
                TransferFlags.force | linked,
            )
        )
        if fee:
            transfers.append(
                leg("fee", credit_account, fee_income_account_id, fee, TransferCode.merchant_fee)
            )
    elif amount and record.kind == UploadKind.refund:
        transfers.append(leg("refund", credit_account, purse, amount, TransferCode.refund))
    return transfers


# ------------------------------------------------------------------------ the ledger's word

_repeat_results = frozenset(
    result for result in CreateTransferResult if result.value.startswith("exists_with_different")
)


_closed_results = frozenset(
    {CreateTransferResult.debit_account_closed, CreateTransferResult.credit_account_closed}
)


@dataclass(slots=True)
class BookingVerdict:
    clones: list[UploadRecord]  # their counter was booked before with other content
    closed: list[UploadRecord]  # of a card whose purse is closed (its balance moved on)
    suspense: list[Transfer]  # their legs, with suspense in place of the purse
    flags: list[CardFlag]
    clones_apart: list[UploadRecord] = field(default_factory=list)  # clones, quarantined


def judge_booking(
    planned: Sequence[CardTransfers], outcomes: Sequence[TransferOutcome]
) -> BookingVerdict:
    """`outcomes`: the ledger's, one per leg in order. A card claiming a counter already booked
    with other content is a clone or tampered: the ride or sale happened, so its payee is paid,
    but from suspense, not the purse. So is a late tap of a card whose balance the service desk
    moved to a replacement (its purse closed): the balance is never paid twice, and what the
    old card still spent shows in suspense. A leg booked past the purse's balance flags the
    card."""
    verdict = BookingVerdict([], [], [], [])
    position = 0
    for record, legs, held_apart in planned:
        leg_outcomes = outcomes[position : position + len(legs)]
        position += len(legs)
        if held_apart:
            # Quarantined, and stays so, whatever the ledger said: its purse closed (the
            # balance moved to a new card), or the counter's quarantine booked before with
            # other content: a clone, flagged and its card denied like any other (what reached
            # suspense for it: `quarantine.purse_to_suspense`, nothing).
            if any(o.result in _repeat_results for o in leg_outcomes):
                verdict.clones_apart.append(record)
                verdict.flags.append(
                    CardFlag.of(record, "counter_repeat", "same card counter, other content")
                )
            continue
        if any(o.result in _repeat_results for o in leg_outcomes):
            verdict.clones.append(record)
            verdict.flags.append(
                CardFlag.of(record, "counter_repeat", "same card counter, other content")
            )
            verdict.suspense += suspense_legs(record, legs)
            continue
        failed = [o for o in leg_outcomes if o.result not in booked_results]
        if failed and any(o.result in _closed_results for o in failed):
            # Every leg of a card transaction touches the purse (a fee is linked to its sale),
            # so none of them was booked: all go through suspense instead.
            assert len(failed) == len(legs), f"part of a closed card's transaction booked: {failed}"
            verdict.closed.append(record)
            verdict.flags.append(
                CardFlag.of(record, "purse_closed", "a tap after the balance moved to a new card")
            )
            verdict.suspense += suspense_legs(record, legs)
            continue
        assert not failed, f"ledger refused a card transaction: {failed}"
        if any(o.over_limit for o in leg_outcomes if o.result == CreateTransferResult.created):
            verdict.flags.append(
                CardFlag.of(record, "purse_negative", "booked past the purse's balance")
            )
    assert position == len(outcomes), "one outcome per leg"
    return verdict


def suspense_legs(record: UploadRecord, legs: Sequence[Transfer]) -> list[Transfer]:
    """The legs with suspense in place of the card's purse; a leg that would then move money
    from suspense to suspense (a credit that came from suspense already) is left out."""
    purse = purse_account_id(record.card_number)
    substituted = [
        (
            leg,
            suspense_account_id if leg.debit_account_id == purse else leg.debit_account_id,
            suspense_account_id if leg.credit_account_id == purse else leg.credit_account_id,
        )
        for leg in legs
    ]
    return [
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
        for leg, debit, credit in substituted
        if debit != credit
    ]


def balance_change(record: UploadRecord) -> int:
    """What a record did to the card's purse: credited top-up, less the fare or sale, or plus
    the refund (the same sum the chain check reads from stored neighbours)."""
    if record.kind == UploadKind.refund:
        return record.topup_rupiah + record.amount_rupiah
    return record.topup_rupiah - record.amount_rupiah
