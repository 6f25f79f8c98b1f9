"""DESFire transactions with the software card through the real stack:
pyscard → pcscd → vpcd → bridge → EmulatedCard, beside the same card in-process.

The card gets a small purse application in-process (the KSH application's own layout and tests
live with it); these tests are about what the real PC/SC path adds: the same answers, and a card
pulled away mid-transaction giving CardError with the transcript while keeping only what was
committed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from card_reader.apdu import Framing
from card_reader.desfire import Desfire
from card_reader.desfire_files import AccessRights, CommMode
from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.pcsc import PcscReader
from card_reader.port import CardError, ReaderPort
from card_reader.vpcd import VpcdBridge

card_timeout_ms = 5_000
purse_aid = 0x4B5348
debit_key_number = 1
debit_key = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
purse_file, trip_file, log_file = 1, 2, 3
opening_balance_rupiah = 50_000
fare_rupiah = 3_500
debit_exchanges = 8  # select, auth (2), get value, debit, write trip, write record, commit


def personalised_card() -> EmulatedCard:
    """A card with a purse application: value, backup trip state, cyclic log; key 1 debits."""
    card = EmulatedCard(bytes.fromhex("04C0FFEE123456"))
    reader = EmulatedReader()
    reader.insert(card)
    desfire = Desfire(reader, card_uid=card.uid)
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.create_application(purse_aid, 0x0F, 2)
    desfire.select_application(purse_aid)
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.change_key(debit_key_number, debit_key, 1, old_key=bytes(16))
    access = AccessRights(read=1, write=1, read_write=1, change=0)
    desfire.create_value_file(
        purse_file,
        CommMode.FULL,
        access,
        0,
        2_000_000,
        opening_balance_rupiah,
        limited_credit_enabled=False,
        free_get_value=False,
    )
    desfire.create_backup_data_file(trip_file, CommMode.FULL, access, 16)
    desfire.create_cyclic_record_file(log_file, CommMode.FULL, access, 16, 6)
    reader.remove()
    return card


def debit(reader: ReaderPort, card_uid: bytes, counter: int) -> int:
    """One complete debit; returns the balance before it."""
    desfire = Desfire(reader, card_uid=card_uid)
    desfire.select_application(purse_aid)
    desfire.authenticate_ev2_first(debit_key_number, debit_key)
    balance_rupiah = desfire.get_value(purse_file, CommMode.FULL)
    desfire.debit(purse_file, fare_rupiah, CommMode.FULL)
    desfire.write_data(trip_file, 0, counter.to_bytes(16, "big"), CommMode.FULL)
    desfire.write_record(log_file, 0, counter.to_bytes(16, "big"), CommMode.FULL)
    desfire.commit_transaction()
    return balance_rupiah


def state_of(card: EmulatedCard) -> tuple[int, bytes, bytes]:
    """(balance, trip state, newest log record), read in-process."""
    reader = EmulatedReader()
    reader.insert(card)
    desfire = Desfire(reader, card_uid=card.uid)
    desfire.select_application(purse_aid)
    desfire.authenticate_ev2_first(debit_key_number, debit_key)
    balance = desfire.get_value(purse_file, CommMode.FULL)
    trip = desfire.read_data(trip_file, 0, 16, CommMode.FULL)
    try:
        newest = desfire.read_records(log_file, 0, 1, CommMode.FULL)
    except CardError:
        newest = b""  # an empty log answers an error
    reader.remove()
    return balance, trip, newest


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


def test_debits_through_pcscd_match_the_in_process_card(
    bridge: VpcdBridge, reader: PcscReader
) -> None:
    card = personalised_card()
    twin = EmulatedCard.from_dict(card.to_dict())
    bridge.insert(card)
    assert reader.wait_for_card(card_timeout_ms)
    assert reader.card_uid == card.uid
    in_process = EmulatedReader()
    in_process.insert(twin)
    for counter in range(1, 4):
        assert debit(reader, card.uid, counter) == debit(in_process, twin.uid, counter)
    bridge.remove()
    assert reader.wait_for_removal(card_timeout_ms)
    in_process.remove()
    assert state_of(card) == state_of(twin)
    assert state_of(card) == (
        opening_balance_rupiah - 3 * fare_rupiah,
        (3).to_bytes(16, "big"),
        (3).to_bytes(16, "big"),
    )


@pytest.mark.parametrize(
    ("torn_exchange", "before_processing", "committed"),
    [
        (5, False, False),  # the debit reached the card, then the card left
        (8, True, False),  # the card left as the commit arrived
        (8, False, True),  # the commit took effect; only its answer was lost
    ],
)
def test_card_pulled_mid_transaction_keeps_only_committed_state(
    bridge: VpcdBridge,
    reader: PcscReader,
    torn_exchange: int,
    before_processing: bool,
    committed: bool,
) -> None:
    card = personalised_card()
    bridge.insert(card)
    assert reader.wait_for_card(card_timeout_ms)
    debit(reader, card.uid, 1)
    before = state_of_connected(card)
    card.fail_after_exchanges(torn_exchange, before_processing=before_processing)
    with pytest.raises(CardError) as caught:
        debit(reader, card.uid, 2)
    error = caught.value
    assert error.card_uid == card.uid
    assert error.reader_name == reader.name
    assert len(error.transcript) >= torn_exchange - 1
    assert error.transcript[-1][1] == ""  # the exchange that got no answer
    assert reader.wait_for_removal(card_timeout_ms)
    assert bridge.card is None  # torn: out of the field until someone taps again
    if committed:
        assert state_of(card) == (
            before[0] - fare_rupiah,
            (2).to_bytes(16, "big"),
            (2).to_bytes(16, "big"),
        )
    else:
        assert state_of(card) == before
    bridge.insert(card)  # the next tap works normally
    assert reader.wait_for_card(card_timeout_ms)
    debit(reader, card.uid, 3)


def state_of_connected(card: EmulatedCard) -> tuple[int, bytes, bytes]:
    """The card's committed state, read from a copy so the connected card is not disturbed."""
    return state_of(EmulatedCard.from_dict(card.to_dict()))


def test_native_framing_one_byte_commands_pass_through_vpcd(
    bridge: VpcdBridge, reader: PcscReader
) -> None:
    """A 1-byte native command (GetVersion `60`, then `AF`) arrives at the bridge exactly like a
    vpcd control message; the bridge tells them apart by value."""
    card = personalised_card()
    bridge.insert(card)
    assert reader.wait_for_card(card_timeout_ms)
    native = Desfire(reader, framing=Framing.NATIVE)
    version = native.get_version()
    assert version.uid == card.uid
    assert reader.transcript_hex()[-3][0] == "60"
    wrapped = Desfire(reader)
    assert wrapped.get_version() == version
    assert native.get_application_ids() == [purse_aid]
