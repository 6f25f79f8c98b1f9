"""The terminal runtime shared by the validator and the point of sale: one card tap, start to end.

The flow is DESIGN.md's "A tap, step by step", on the KSH card application
(`card_reader.ksh_card.KshCard`):

1. read the card (profile, purse, trip state, its newest log record) in one session;
2. settle our in-doubt transactions of this card from its log (committed, or void);
3. deny list and card status; a card on the chip-block list (a staff block final for that
   card: lost, stolen, damaged) is blocked on the card itself, in a journalled card
   transaction of its own, so that terminals not yet synced refuse it too;
4. a pending top-up waiting for this card is credited first, as its own card transaction;
5. decide the charge (`Decide`: the fare core on a validator, the cashier's amount at a POS);
6. write-ahead: the journal holds each intended card transaction durably before the card
   commits it; then debit, trip state, log record and CommitTransaction (one card transaction);
7. the journal marks it committed, or in doubt if the card left before answering: the card's
   log settles that the next time the card taps here (or the back office settles it from the
   next tap anywhere, whose record carries the card's newest log entry);
8. `Feedback` for the display: accepted or denied, amount, balance, reason.

The KSH application logs one record per card transaction (one kind each), so a top-up and a
fare are two card transactions in the same tap, each journalled ahead, each atomic on the card.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from bus_terminals.journal import Journal, JournalFull
from bus_terminals.sync import SyncState
from bus_terminals.wire import (
    RecordStatus,
    UploadKind,
    UploadRecord,
    card_log_fields,
    card_terminal_number,
)
from card_reader.keys import KeyRole
from card_reader.ksh_card import (
    CardPlan,
    CardState,
    CardStatus,
    InDoubtOutcome,
    KshCard,
    LogRecord,
    Refusal,
    settle_in_doubt,
)
from card_reader.ksh_card import RecordKind as CardRecordKind
from card_reader.port import ReaderPortError

clock_skew_ms_max = 10 * 60_000  # terminal clocks against the back office's
retap_window_ms = 120_000  # a tap this soon after a torn one is the rider trying again


class Verdict(enum.Enum):
    accepted = "accepted"
    denied = "denied"
    tap_again = "tap_again"  # the card left before we knew the outcome, or could not be read


class Reason(enum.Enum):
    none = "none"
    card_denied = "card_denied"  # on the deny list
    card_blocked = "card_blocked"  # the card's own status says blocked
    card_expired = "card_expired"
    insufficient_balance = "insufficient_balance"
    no_fare = "no_fare"  # the fare core priced nothing (route unknown, outside service hours)
    purse_cap = "purse_cap"  # a credit would take the purse past the cap
    journal_full = "journal_full"  # offline too long: upload before more taps
    card_unreadable = "card_unreadable"
    card_removed = "card_removed"  # pulled during the transaction: outcome settled next tap
    already_paid = "already_paid"  # tapped again after a torn commit that did go through
    nothing_to_refund = "nothing_to_refund"
    # A counter's reader found no pending top-up it may write (none waiting, or past the cap).
    nothing_to_top_up = "nothing_to_top_up"
    role_not_held = "role_not_held"


@dataclass(frozen=True, slots=True)
class Feedback:
    """What the rider (or cashier) sees: one event for the display."""

    verdict: Verdict
    reason: Reason
    card_number: str
    amount_rupiah: int
    top_up_rupiah: int
    balance_rupiah: int
    detail: str = ""
    sequence: int = 0  # journal sequence of the (last) card transaction, 0 if none


@dataclass(frozen=True, slots=True)
class Charge:
    """What the decision step wants from this card (pure; no I/O)."""

    kind: UploadKind  # fare_debit, sale or refund
    amount_rupiah: int
    trip_state: bytes | None  # the new trip state to write (debits), None to keep it
    detail: str
    refusal: Reason = Reason.none


Decide = Callable[[CardState, int], Charge]  # (card state, time in ms) -> charge


_refusal_reasons = {
    Refusal.CARD_BLOCKED: Reason.card_blocked,
    Refusal.INSUFFICIENT_BALANCE: Reason.insufficient_balance,
    Refusal.BALANCE_CAP_EXCEEDED: Reason.purse_cap,
    Refusal.ALREADY_BLOCKED: Reason.card_blocked,
    Refusal.ROLE_NOT_HELD: Reason.role_not_held,
}


def intended_log_record(record: UploadRecord) -> LogRecord:
    """The log record the card writes if this journalled transaction commits (the same fields
    the back office rebuilds the card's Transaction MAC input from: `wire.card_log_fields`)."""
    fields = card_log_fields(record)
    return LogRecord(
        fields.counter,
        CardRecordKind(fields.kind),
        fields.amount_rupiah,
        fields.balance_after_rupiah,
        fields.terminal_number,
        fields.time_unix_seconds,
    )


deliveries_per_visit_max = 20  # a counter writes at most this many waiting top-ups at once


@dataclass(slots=True)
class Terminal:
    """One terminal: its id, journal and synced state. `tap` is the whole transaction."""

    terminal_id: str
    journal: Journal
    sync_state: SyncState
    route: str = ""
    merchant_id: str = ""
    taken_top_ups: set[str] = field(default_factory=set)

    @property
    def card_terminal_number(self) -> int:
        return card_terminal_number(self.terminal_id)

    def tap(self, card: KshCard, time_ms: int, decide: Decide) -> Feedback:
        opened = self._open(card, time_ms)
        if isinstance(opened, Feedback):
            return opened
        state, number, top_up_rupiah = opened
        charge = decide(state, time_ms)
        if charge.refusal != Reason.none:
            return self._deny(state, charge.refusal, time_ms, charge.detail, top_up_rupiah)
        if charge.kind == UploadKind.refund:
            if charge.amount_rupiah <= 0:
                return self._deny(
                    state, Reason.nothing_to_refund, time_ms, charge.detail, top_up_rupiah
                )
            plan_or_refusal = card.plan_credit(
                charge.amount_rupiah,
                terminal_id=self.card_terminal_number,
                time_unix_seconds=time_ms // 1000,
            )
        else:
            trip_state = charge.trip_state if charge.trip_state is not None else state.trip_state
            plan_or_refusal = card.plan_debit(
                charge.amount_rupiah,
                trip_state,
                terminal_id=self.card_terminal_number,
                time_unix_seconds=time_ms // 1000,
            )
        if isinstance(plan_or_refusal, Refusal):
            reason = _refusal_reasons[plan_or_refusal]
            return self._deny(state, reason, time_ms, charge.detail, top_up_rupiah)
        outcome = self._perform(
            card, plan_or_refusal, charge.kind, charge.amount_rupiah, 0, "", charge.detail, time_ms
        )
        if isinstance(outcome, Feedback):
            return outcome
        # After a key roll-over (the tap itself is done). Pulled away meanwhile: a key change is
        # atomic on the card, and its next tap tries again.
        with contextlib.suppress(ReaderPortError):
            card.move_to_current_key()
        return Feedback(
            Verdict.accepted,
            Reason.none,
            number,
            charge.amount_rupiah,
            top_up_rupiah,
            plan_or_refusal.record.balance_after_rupiah,
            charge.detail,
            outcome,
        )

    # ------------------------------------------------------------------ steps

    def deliver(self, card: KshCard, time_ms: int) -> Feedback:
        """A counter's reader: write the card's pending top-ups (the cash just taken for it,
        and any other waiting), each in a journalled card transaction; charge nothing. A
        failure part-way is shown as such: what was written is journalled, the rest waits."""
        delivered = 0
        for _ in range(deliveries_per_visit_max):
            opened = self._open(card, time_ms)
            if isinstance(opened, Feedback):
                return opened
            state, number, top_up_rupiah = opened
            if not top_up_rupiah:
                break
            delivered += top_up_rupiah
        if not delivered:
            return Feedback(
                Verdict.denied, Reason.nothing_to_top_up, number, 0, 0, state.balance_rupiah
            )
        return Feedback(Verdict.accepted, Reason.none, number, 0, delivered, state.balance_rupiah)

    def _open(self, card: KshCard, time_ms: int) -> Feedback | tuple[CardState, str, int]:
        """Every card transaction's start: read the card, settle our in-doubt ones, refuse a
        denied, blocked or expired card, and deliver its oldest pending top-up. Returns the
        card's state, number and the top-up delivered, or the feedback when it stops here."""
        try:
            state = card.read_state()
        except ReaderPortError as error:
            return Feedback(
                Verdict.tap_again, Reason.card_unreadable, "", 0, 0, 0, str(error)[:200]
            )
        number = str(state.profile.card_number)
        try:
            settled = self._settle_in_doubt(card, number, time_ms)
        except ReaderPortError as error:
            return Feedback(
                Verdict.tap_again, Reason.card_removed, number, 0, 0, 0, str(error)[:200]
            )
        if settled is not None:
            return settled  # tapped again after a torn commit that did go through
        refusal = self._refusal(state, number, time_ms)
        if refusal is Reason.card_denied and number in self.sync_state.chip_block_list:
            blocked = self._block(card, state, number, time_ms)
            if blocked is not None:
                return blocked
        if refusal is not None:
            return self._deny(state, refusal, time_ms, "")
        try:
            top_up = self._pending_top_up(number, card)
        except ReaderPortError as error:
            return Feedback(
                Verdict.tap_again, Reason.card_removed, number, 0, 0, 0, str(error)[:200]
            )
        if top_up is None:
            return state, number, 0
        top_up_id, amount = top_up
        plan = card.plan_credit(
            amount, terminal_id=self.card_terminal_number, time_unix_seconds=time_ms // 1000
        )
        if not isinstance(plan, CardPlan):
            return state, number, 0
        outcome = self._perform(
            card, plan, UploadKind.topup_credit, 0, amount, top_up_id, "", time_ms
        )
        if isinstance(outcome, Feedback):
            return outcome
        assert card.state is not None
        return card.state, number, amount

    def _block(self, card: KshCard, state: CardState, number: str, time_ms: int) -> Feedback | None:
        """Write "blocked" onto the card (its debit key writes the profile): one journalled card
        transaction, uploaded as a `block` record with the card's Transaction MAC. None when the
        card says blocked already, or this terminal holds no debit key: refused as denied."""
        plan = card.plan_block(
            terminal_id=self.card_terminal_number, time_unix_seconds=time_ms // 1000
        )
        if isinstance(plan, Refusal):
            return None
        outcome = self._perform(card, plan, UploadKind.block, 0, 0, "", "", time_ms)
        if isinstance(outcome, Feedback):
            return outcome  # the card left: the next tap settles it from the card's log
        return Feedback(
            Verdict.denied,
            Reason.card_blocked,
            number,
            0,
            0,
            state.balance_rupiah,
            "blocked on the card",
            outcome,
        )

    def _perform(
        self,
        card: KshCard,
        plan: CardPlan,
        kind: UploadKind,
        amount_rupiah: int,
        top_up_rupiah: int,
        top_up_id: str,
        detail: str,
        time_ms: int,
    ) -> int | Feedback:
        """Journal ahead, perform on the card, mark the outcome. Returns the journal sequence,
        or the feedback to show when the card transaction did not (or may not) happen."""
        state = card.state
        assert state is not None
        number = str(plan.card_number)
        previous = state.last_record
        try:
            intended = self.journal.intend(
                UploadRecord(
                    self.terminal_id,
                    0,
                    kind,
                    RecordStatus.in_doubt,
                    number,
                    plan.record.counter,
                    amount_rupiah,
                    top_up_rupiah,
                    top_up_id,
                    plan.record.balance_after_rupiah,
                    time_ms,
                    self.route,
                    self.merchant_id,
                    detail,
                    previous.counter,
                    previous.terminal_id,
                    previous.balance_after_rupiah,
                )
            )
        except JournalFull:
            return Feedback(Verdict.denied, Reason.journal_full, number, 0, 0, state.balance_rupiah)
        assert intended_log_record(intended) == plan.record, "journal and card disagree"
        if top_up_id:
            self.taken_top_ups.add(top_up_id)
        try:
            committed = card.perform(plan)
        except ReaderPortError as error:
            self.journal.mark_in_doubt(intended.sequence)  # no answer, so no Transaction MAC
            return Feedback(
                Verdict.tap_again,
                Reason.card_removed,
                number,
                amount_rupiah,
                top_up_rupiah,
                state.balance_rupiah,
                str(error)[:200],
                intended.sequence,
            )
        mac = committed.transaction_mac  # the card's proof, for the back office
        if mac is None:  # a card issued before Transaction MACs
            self.journal.commit(intended.sequence)
        else:
            self.journal.commit(intended.sequence, mac.counter, mac.value.hex())
        return intended.sequence

    def _settle_in_doubt(self, card: KshCard, number: str, time_ms: int) -> Feedback | None:
        """Settle our in-doubt transactions of this card from its log. If the newest one did
        commit, is the card's newest record and is recent, the rider is tapping again after
        the card left too soon: tell them it is paid (later, it is a new ride)."""
        in_doubt = self.journal.in_doubt_for_card(number)
        if not in_doubt:
            return None
        log = card.read_log()
        state = card.state
        assert state is not None
        feedback = None
        for record in in_doubt:
            outcome = settle_in_doubt(log, intended_log_record(record))
            if outcome == InDoubtOutcome.COMMITTED:
                self._commit_settled(card, record, state)
                if (
                    record.card_counter == state.counter
                    and record.kind not in (UploadKind.topup_credit, UploadKind.block)
                    and time_ms - record.time_ms <= retap_window_ms
                ):
                    feedback = Feedback(
                        Verdict.accepted,
                        Reason.already_paid,
                        number,
                        record.amount_rupiah,
                        record.topup_rupiah,
                        state.balance_rupiah,
                        record.fare_detail,
                        record.sequence,
                    )
            elif outcome == InDoubtOutcome.NOT_COMMITTED:
                self.journal.void(record.sequence)
            # UNKNOWN: older than the card's log keeps; the back office settles it.
        return feedback

    def _commit_settled(self, card: KshCard, record: UploadRecord, state: CardState) -> None:
        """An in-doubt transaction the card's log shows committed. A block is the card's last
        transaction (the card takes no other after it), so no later one will prove it to the
        back office: its Transaction MAC is read from the card's TransactionMAC file, which
        holds the last one (TMC = log counter + 1)."""
        mac = None
        if record.kind == UploadKind.block and record.card_counter == state.counter:
            mac = card.read_transaction_mac()
        if mac is not None and mac.counter == record.card_counter + 1:
            self.journal.commit(record.sequence, mac.counter, mac.value.hex())
        else:
            self.journal.commit(record.sequence)

    def _refusal(self, state: CardState, number: str, time_ms: int) -> Reason | None:
        if number in self.sync_state.deny_list:
            return Reason.card_denied
        if state.profile.status is CardStatus.BLOCKED:
            return Reason.card_blocked
        expiry_s = (state.profile.expiry_date.toordinal() - 719_163 + 1) * 86_400
        if time_ms // 1000 >= expiry_s:
            return Reason.card_expired
        return None

    def _pending_top_up(self, number: str, card: KshCard) -> tuple[str, int] | None:
        """The oldest pending top-up for this card that is not on it yet.

        Another terminal may have delivered it before the back office heard: the card's log
        tells, since a delivery is a credit of that amount at or after the payment. Each such
        credit accounts for one top-up, oldest first (clocks may differ by `clock_skew_ms_max`).
        """
        if KeyRole.CREDIT not in card.keys.roles:
            return None
        candidates = self.sync_state.top_ups_for(number)
        if not candidates:
            return None
        taken = self.taken_top_ups | self.journal.taken_top_up_ids(number)
        waiting = [c for c in candidates if c[0] not in taken]
        if not waiting:
            return None
        credits = [
            record
            for record in card.read_log()
            if record.kind is CardRecordKind.CREDIT
            and record.terminal_id != self.card_terminal_number
        ]
        for top_up_id, amount, paid_ms in sorted(waiting, key=lambda c: c[2]):
            delivered = next(
                (
                    record
                    for record in credits
                    if record.amount_rupiah == amount
                    and record.time_unix_seconds * 1000 >= paid_ms - clock_skew_ms_max
                ),
                None,
            )
            if delivered is None:
                return top_up_id, amount
            credits.remove(delivered)
        return None

    def _deny(
        self, state: CardState, reason: Reason, time_ms: int, detail: str, top_up_rupiah: int = 0
    ) -> Feedback:
        number = str(state.profile.card_number)
        previous = state.last_record
        try:
            record = self.journal.append_final(
                UploadRecord(
                    self.terminal_id,
                    0,
                    UploadKind.denied,
                    RecordStatus.committed,
                    number,
                    0,
                    0,
                    0,
                    "",
                    state.balance_rupiah,
                    time_ms,
                    self.route,
                    self.merchant_id,
                    reason.value,
                    previous.counter,
                    previous.terminal_id,
                    previous.balance_after_rupiah,
                )
            )
            sequence = record.sequence
        except JournalFull:
            sequence = 0
        return Feedback(
            Verdict.denied, reason, number, 0, top_up_rupiah, state.balance_rupiah, detail, sequence
        )
