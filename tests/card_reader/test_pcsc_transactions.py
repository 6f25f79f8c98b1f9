"""KSH card transactions with the software card through the real stack:
pyscard → pcscd → vpcd → bridge → EmulatedCard, beside a twin of the same card in-process.

What the PC/SC path adds: the same answers and state; a card pulled away mid-transaction gives
CardError with the transcript while the card keeps only what was committed; a lost commit
answer is settled from the card's log on the next tap.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from card_reader.apdu import Framing
from card_reader.desfire import Desfire
from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.keys import KeyRole
from card_reader.ksh_card import (
    CardPlan,
    CardState,
    InDoubtOutcome,
    KshCard,
    ksh_application_id,
    read_uid,
    settle_in_doubt,
    trip_state_bytes,
)
from card_reader.pcsc import PcscReader
from card_reader.port import CardError, ReaderPort
from card_reader.vpcd import VpcdBridge
from tests.card_reader.ksh_cards import issue_time, personalised_card, store

card_timeout_ms = 5_000
fare_rupiah = 3_500
validator_keys = store.view(KeyRole.DEBIT)
terminal_id = 4_201


def trip_state(sequence: int) -> bytes:
    return sequence.to_bytes(4, "big").ljust(trip_state_bytes, b"\0")


def tap(reader: ReaderPort, sequence: int) -> CardState:
    """One validator tap: read the state, debit, write trip state and log record, commit."""
    card = KshCard(reader, validator_keys)
    card.read_state()
    result = card.debit(
        fare_rupiah,
        trip_state(sequence),
        terminal_id=terminal_id,
        time_unix_seconds=issue_time + sequence,
    )
    assert isinstance(result, CardState), result
    return result


def committed_state(card: EmulatedCard) -> CardState:
    """The card's committed state, read in-process from a copy (the original stays untouched)."""
    reader = EmulatedReader()
    reader.insert(EmulatedCard.from_dict(card.to_dict()))
    return KshCard(reader, validator_keys).read_state()


def fresh_card() -> EmulatedCard:
    card, reader = personalised_card(50_000)
    reader.remove()
    return card


@pytest.fixture
def bridge(pcsc_reader_name: str) -> Iterator[VpcdBridge]:
    bridge = VpcdBridge(None).start()
    yield bridge
    bridge.stop()


@pytest.fixture
def reader(pcsc_reader_name: str, bridge: VpcdBridge) -> Iterator[PcscReader]:
    with PcscReader(pcsc_reader_name) as reader:
        assert reader.wait_for_removal(card_timeout_ms)
        yield reader


def test_taps_through_pcscd_match_the_in_process_twin(
    bridge: VpcdBridge, reader: PcscReader
) -> None:
    card = fresh_card()
    twin = EmulatedCard.from_dict(card.to_dict())
    bridge.insert(card)
    assert reader.wait_for_card(card_timeout_ms)
    in_process = EmulatedReader()
    in_process.insert(twin)
    for sequence in range(1, 4):
        through_pcsc = tap(reader, sequence)
        assert through_pcsc == tap(in_process, sequence)
        assert reader.card_uid == card.uid  # learnt from the application's own GET DATA
    assert through_pcsc.balance_rupiah == 50_000 - 3 * fare_rupiah
    assert through_pcsc.trip_state == trip_state(3)
    bridge.remove()
    assert reader.wait_for_removal(card_timeout_ms)
    in_process.remove()
    assert card.to_dict() == twin.to_dict()


@pytest.mark.parametrize(
    ("torn_exchange_from_end", "before_processing", "committed"),
    [
        (4, False, False),  # the debit reached the card, then the card left
        (1, True, False),  # the card left as the commit arrived
        (1, False, True),  # the commit took effect; only its answer was lost
    ],
)
def test_card_pulled_mid_transaction_keeps_only_committed_state(
    bridge: VpcdBridge,
    reader: PcscReader,
    torn_exchange_from_end: int,
    before_processing: bool,
    committed: bool,
) -> None:
    card = fresh_card()
    bridge.insert(card)
    assert reader.wait_for_card(card_timeout_ms)
    tap(reader, 1)
    before = committed_state(card)
    exchanges_per_tap = count_exchanges_of_a_tap(card)
    card.fail_after_exchanges(
        exchanges_per_tap - torn_exchange_from_end + 1, before_processing=before_processing
    )
    validator = KshCard(reader, validator_keys)
    validator.read_state()
    plan = validator.plan_debit(
        fare_rupiah, trip_state(2), terminal_id=terminal_id, time_unix_seconds=issue_time + 2
    )
    assert isinstance(plan, CardPlan), plan
    with pytest.raises(CardError) as caught:
        validator.perform(plan)
    error = caught.value
    assert error.card_uid == card.uid
    assert error.reader_name == reader.name
    assert error.transcript
    assert error.transcript[-1][1] == ""  # the exchange that got no answer
    assert reader.wait_for_removal(card_timeout_ms)
    assert bridge.card is None  # torn: out of the field until it taps again
    after = committed_state(card)
    if committed:
        assert after.balance_rupiah == before.balance_rupiah - fare_rupiah
        assert after.trip_state == trip_state(2)
        assert after.last_record == plan.record
    else:
        assert after == before
    # The next tap, through the same reader, settles the in-doubt transaction from the log.
    bridge.insert(card)
    assert reader.wait_for_card(card_timeout_ms)
    next_tap = KshCard(reader, validator_keys)
    next_tap.read_state()
    outcome = settle_in_doubt(next_tap.read_log(), plan.record)
    assert outcome is (InDoubtOutcome.COMMITTED if committed else InDoubtOutcome.NOT_COMMITTED)


def count_exchanges_of_a_tap(card: EmulatedCard) -> int:
    """How many exchanges a whole tap takes, measured on an in-process copy of the card."""
    reader = EmulatedReader()
    reader.insert(EmulatedCard.from_dict(card.to_dict()))
    tap(reader, 99)
    return reader.exchanges


def test_native_framing_one_byte_commands_pass_through_vpcd(
    bridge: VpcdBridge, reader: PcscReader
) -> None:
    """A 1-byte native command (GetVersion `60`, then `AF`) arrives at the bridge exactly like a
    vpcd control message; the bridge tells them apart by value."""
    card = fresh_card()
    bridge.insert(card)
    assert reader.wait_for_card(card_timeout_ms)
    assert read_uid(reader) == card.uid
    native = Desfire(reader, framing=Framing.NATIVE)
    version = native.get_version()
    assert version.uid == card.uid
    assert reader.transcript_hex()[-3][0] == "60"
    assert Desfire(reader).get_version() == version
    native.select_application(ksh_application_id)  # 3-byte native frame
    assert tap(reader, 1).balance_rupiah == 50_000 - fare_rupiah
