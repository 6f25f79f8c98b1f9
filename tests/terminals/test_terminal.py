"""The tap flow on emulated KSH cards, no back office: a card pulled at every exchange is
charged once after the rider taps again; a tap much later is a new ride; deny list; pending
top-ups delivered once, also when another terminal already put them on the card."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus_terminals.fare.feed import load_feed
from bus_terminals.journal import Journal, JournalState
from bus_terminals.sync import SyncState
from bus_terminals.terminal import Feedback, Reason, Terminal, Verdict
from bus_terminals.validator import fare_decider
from bus_terminals.wire import UploadKind
from card_reader.deck import make_ksh_deck
from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.keys import KeyRole, demo_key_store
from card_reader.ksh_card import KshCard

store = demo_key_store()
keys = store.view(KeyRole.DEBIT, KeyRole.CREDIT)
decide = fare_decider(load_feed(), "K1")
seven_am_ms = 1_795_478_400_000  # 2026-11-24 07:00 WIB
fare = 3_500


def balance(card: EmulatedCard) -> int:
    reader = EmulatedReader("inspection")
    reader.insert(card)
    value = KshCard(reader, store.view(KeyRole.READ)).read_state().balance_rupiah
    reader.remove()
    return value


def tap(
    terminal: Terminal, card: EmulatedCard, time_ms: int, pull_at: int | None = None
) -> Feedback:
    reader = EmulatedReader("validator")
    reader.insert(card)
    if pull_at is not None:
        card.fail_after_exchanges(pull_at)
    try:
        return terminal.tap(KshCard(reader, keys), time_ms, decide)
    finally:
        card.fail_after_exchanges(None)
        reader.remove()


def terminal_at(folder: Path, name: str = "V1", state: SyncState | None = None) -> Terminal:
    return Terminal(name, Journal(folder / f"{name}.db", name), state or SyncState(), route="K1")


def test_a_card_pulled_at_any_exchange_pays_once_after_tapping_again(tmp_path: Path) -> None:
    exchanges = 0
    pulled_outcomes = set()
    for pull_at in range(1, 40):
        card = make_ksh_deck(store, [20_000], seed=f"pull-{pull_at}")[0]
        terminal = terminal_at(tmp_path, f"V{pull_at}")
        first = tap(terminal, card, seven_am_ms, pull_at)
        if first.verdict == Verdict.accepted:
            exchanges = pull_at  # the whole tap fitted in fewer exchanges
            break
        pulled_outcomes.add(first.reason)
        again = tap(terminal, card, seven_am_ms + 5_000)
        assert again.verdict == Verdict.accepted, (pull_at, first, again)
        assert balance(card) == 20_000 - fare, (pull_at, first, again)
        states = [(r.kind, state) for r, state in terminal.journal.records()]
        committed = [
            s for kind, s in states if kind == UploadKind.fare_debit and s == JournalState.committed
        ]
        assert len(committed) == 1, states
        assert all(state != JournalState.in_doubt for _, state in states)
    assert exchanges > 5
    assert pulled_outcomes == {Reason.card_unreadable, Reason.card_removed}
    assert any(
        reason == Reason.already_paid
        for reason in [tap_result_reason(tmp_path, pull_at) for pull_at in range(1, exchanges)]
    )


def tap_result_reason(folder: Path, pull_at: int) -> Reason:
    card = make_ksh_deck(store, [20_000], seed=f"reason-{pull_at}")[0]
    terminal = terminal_at(folder, f"R{pull_at}")
    tap(terminal, card, seven_am_ms, pull_at)
    return tap(terminal, card, seven_am_ms + 5_000).reason


def test_a_committed_torn_tap_does_not_make_a_later_ride_free(tmp_path: Path) -> None:
    for pull_at in range(1, 40):
        card = make_ksh_deck(store, [20_000], seed=f"later-{pull_at}")[0]
        terminal = terminal_at(tmp_path, f"L{pull_at}")
        first = tap(terminal, card, seven_am_ms, pull_at)
        if first.verdict == Verdict.tap_again and balance(card) == 20_000 - fare:
            break  # torn after the card committed
    else:
        pytest.fail("no exchange tears after the commit")
    evening = tap(terminal, card, seven_am_ms + 10 * 3_600_000)
    assert evening.verdict == Verdict.accepted
    assert evening.reason == Reason.none
    assert balance(card) == 20_000 - 2 * fare


def test_deny_list_and_balance(tmp_path: Path) -> None:
    cards = make_ksh_deck(store, [20_000, 1_000], seed="deny")
    state = SyncState()
    state.deny_list.add(["6032900000000001"], version=1)
    terminal = terminal_at(tmp_path, state=state)
    denied = tap(terminal, cards[0], seven_am_ms)
    assert (denied.verdict, denied.reason) == (Verdict.denied, Reason.card_denied)
    poor = tap(terminal, cards[1], seven_am_ms)
    assert (poor.verdict, poor.reason) == (Verdict.denied, Reason.insufficient_balance)
    assert balance(cards[0]) == 20_000
    assert [r.kind for r, _ in terminal.journal.records()] == [UploadKind.denied] * 2


def test_pending_top_up_is_delivered_once_across_terminals(tmp_path: Path) -> None:
    card = make_ksh_deck(store, [1_000], seed="top-up")[0]
    paid_ms = seven_am_ms - 3_600_000
    state_a, state_b = SyncState(), SyncState()
    for state in (state_a, state_b):  # both buses downloaded the same pending top-up
        state.pending_top_ups["6032900000000001"] = [("VA-1", 50_000, paid_ms)]
    bus_a = terminal_at(tmp_path, "A", state_a)
    bus_b = terminal_at(tmp_path, "B", state_b)
    first = tap(bus_a, card, seven_am_ms)
    assert (first.verdict, first.top_up_rupiah) == (Verdict.accepted, 50_000)
    second = tap(bus_b, card, seven_am_ms + 3_600_000)
    assert (second.verdict, second.top_up_rupiah) == (Verdict.accepted, 0)
    third = tap(bus_a, card, seven_am_ms + 7_200_000)
    assert third.top_up_rupiah == 0
    charged = first.amount_rupiah + second.amount_rupiah + third.amount_rupiah
    assert charged >= fare
    assert balance(card) == 1_000 + 50_000 - charged


def test_upload_records_carry_the_cards_transaction_mac(tmp_path: Path) -> None:
    """Each card transaction the card answered is uploaded with its TMC and TMV, which the back
    office verifies with the card's key (top-up and fare each their own); a denied tap and a
    tap whose commit answer was lost carry none, and the next one shows the count."""
    from bus_terminals.wire import card_log_fields
    from card_reader import tmac

    card, poor = make_ksh_deck(store, [1_000, 0], seed="tmac")
    state = SyncState()
    state.pending_top_ups["6032900000000001"] = [("VA-9", 50_000, seven_am_ms - 60_000)]
    terminal = terminal_at(tmp_path, state=state)
    assert tap(terminal, card, seven_am_ms).verdict == Verdict.accepted
    assert tap(terminal, poor, seven_am_ms + 1_000).verdict == Verdict.denied
    torn = tap(terminal, card, seven_am_ms + 14_400_000, pull_at=12)  # the commit: answer lost
    assert torn.reason == Reason.card_removed
    assert tap(terminal, card, seven_am_ms + 28_800_000).verdict == Verdict.accepted
    key = tmac.card_key(store.master_key(KeyRole.TMAC).key, card.uid)
    proofs = []
    for record in terminal.journal.records_to_upload():
        if record.kind == UploadKind.denied or record.tmac_counter == 0:
            proofs.append((record.kind, record.status.value, None))
            continue
        transaction = tmac.CardTransaction.of_log_fields(*card_log_fields(record))
        mac = bytes.fromhex(record.tmac_value)
        assert tmac.verify(key, card.uid, record.tmac_counter, mac, transaction), record
        assert record.tmac_counter == record.card_counter + 1  # the issue record was the first
        proofs.append((record.kind, record.status.value, record.tmac_counter))
    assert proofs == [
        (UploadKind.topup_credit, "committed", 2),
        (UploadKind.fare_debit, "committed", 3),
        (UploadKind.denied, "committed", None),
        (UploadKind.fare_debit, "committed", None),  # settled from the card's log at the next tap
        (UploadKind.fare_debit, "committed", 5),  # ...whose counter shows number 4 happened
    ]


class PowerCut(BaseException):
    """The validator loses power: nothing after this line of the tap runs."""


def test_power_cut_between_journal_and_card_or_card_and_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cut after the journal wrote the intent, before the card was asked to commit.
    card = make_ksh_deck(store, [20_000], seed="cut-before")[0]
    terminal = terminal_at(tmp_path, "C1")

    def cut(*_: object) -> None:
        raise PowerCut

    with monkeypatch.context() as patch:
        patch.setattr(KshCard, "perform", cut)
        with pytest.raises(PowerCut):
            tap(terminal, card, seven_am_ms)
    terminal.journal.close()
    terminal = terminal_at(tmp_path, "C1")  # reboot: the intent is now in doubt
    assert [state for _, state in terminal.journal.records()] == [JournalState.in_doubt]
    again = tap(terminal, card, seven_am_ms + 5_000)
    assert (again.verdict, again.reason) == (Verdict.accepted, Reason.none)
    assert [state for _, state in terminal.journal.records()] == [
        JournalState.void,
        JournalState.committed,
    ]
    assert balance(card) == 20_000 - fare

    # Cut after the card committed, before the journal heard.
    card = make_ksh_deck(store, [20_000], seed="cut-after")[0]
    terminal = terminal_at(tmp_path, "C2")
    with monkeypatch.context() as patch:
        patch.setattr(Journal, "commit", cut)
        with pytest.raises(PowerCut):
            tap(terminal, card, seven_am_ms)
    terminal.journal.close()
    terminal = terminal_at(tmp_path, "C2")
    again = tap(terminal, card, seven_am_ms + 5_000)
    assert (again.verdict, again.reason) == (Verdict.accepted, Reason.already_paid)
    assert [state for _, state in terminal.journal.records()] == [JournalState.committed]
    assert balance(card) == 20_000 - fare
