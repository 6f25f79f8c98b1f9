"""The Transaction MAC: the session key vectors (§5), the TMI layout of our choice rebuilt by
hand and MACed without our crypto module, the software card's TransactionMAC file (counter,
commit answer, abort and power loss), and `verify` as the back office will call it."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

from card_reader import crypto, ksh_card, tmac
from card_reader.apdu import Status
from card_reader.desfire import Desfire, DesfireError, TransactionMac
from card_reader.desfire_files import AccessRights, CommMode, free_access, no_access
from card_reader.emulator import (
    Application,
    EmulatedCard,
    EmulatedReader,
    TransactionMacFile,
    ValueFile,
)
from card_reader.keys import KeyRole, diversify_card_key
from card_reader.ksh_card import KshCard, LogRecord, PurseOperation, RecordKind, Refusal
from card_reader.port import CardError

from .ksh_cards import issue_time, personalised_card, profile, store
from .scripted import fixed_random

h = bytes.fromhex
trip = bytes(range(48))
debit_keys = store.view(KeyRole.DEBIT)
read_keys = store.view(KeyRole.READ)


def independent_tmv(key: bytes, uid: bytes, counter: int, tmi: bytes) -> bytes:
    """MF2DLHX0 §10.3.2 written out with `cryptography` alone: SV, CMAC, even-numbered bytes."""

    def aes_cmac(mac_key: bytes, message: bytes) -> bytes:
        mac = CMAC(algorithms.AES(mac_key))
        mac.update(message)
        return mac.finalize()

    session_vector = h("5A00010080") + counter.to_bytes(4, "little") + uid
    full = aes_cmac(aes_cmac(key, session_vector), tmi)
    return bytes(full[index] for index in range(1, 16, 2))


def card_tmac_key(uid: bytes) -> bytes:
    """How the back office gets a card's key: its TMAC master, diversified with the UID."""
    return tmac.card_key(store.master_key(KeyRole.TMAC).key, uid)


def test_the_card_key_is_the_tmac_master_diversified_like_every_ksh_key() -> None:
    uid = h("04112233445566")
    master = store.master_key(KeyRole.TMAC)
    by_hand = crypto.diversify_an10922(master.key, uid + h("4B5348") + b"KSH")
    assert card_tmac_key(uid) == by_hand
    assert diversify_card_key(master, uid, ksh_card.ksh_application_id).key == by_hand
    # ...and the card holds exactly that key in file 5.
    card, _ = personalised_card()
    mac_file = card.applications[ksh_card.ksh_application_id].files[5]
    assert isinstance(mac_file, TransactionMacFile) and mac_file.key == by_hand
    assert mac_file.key_version == master.version
    assert KeyRole.TMAC not in store.view(KeyRole.DEBIT, KeyRole.CREDIT).roles


def test_the_transaction_from_upload_fields_is_the_one_from_the_log_record() -> None:
    debit = LogRecord(7, RecordKind.DEBIT, 3_500, 6_500, 0xDEADBEEF, issue_time)
    credit = LogRecord(8, RecordKind.CREDIT, 20_000, 26_500, 12, issue_time + 1)
    assert tmac.CardTransaction.of_log_fields(7, 2, 3_500, 6_500, 0xDEADBEEF, issue_time) == (
        tmac.CardTransaction.of(debit)
    )
    assert tmac.CardTransaction.of_log_fields(
        8, 3, 20_000, 26_500, 12, issue_time + 1
    ) == tmac.CardTransaction.of(credit)


# ---------------------------------------------------------------------------- session key


@pytest.mark.parametrize(
    ("key", "uid", "counter_before", "mac_key", "encryption_key"),
    [  # reference/desfire.md §5 (PM3 TestTransSessionKeys); the card reports counter_before + 1
        (
            "66A8CB93269DC9BC2885B7A91B9C697B",
            "04010203040506",
            8,
            "7C1AD2D9C5C08154A0A4914B401A6598",
            "119B902A07B18A865B8E1B0060594784",
        ),
        (
            "0123456789ABCDEFFEDCBA9876543210",
            "04A1B2C3D4E5F6",
            0x12345678,
            "8F76D21BAE6765845188BCF9159BE0EC",
            "6F701DC037A5F0757A7FF667055F4B25",
        ),
    ],
)
def test_session_keys_pm3_vectors(
    key: str, uid: str, counter_before: int, mac_key: str, encryption_key: str
) -> None:
    reported = counter_before + 1
    assert tmac.session_mac_key(h(key), h(uid), reported) == h(mac_key)
    assert tmac.session_encryption_key(h(key), h(uid), reported) == h(encryption_key)


def test_session_key_refuses_what_cannot_be_a_counter_key_or_uid() -> None:
    key, uid = bytes(16), h("04010203040506")
    for counter in (0, tmac.counter_max + 1):
        with pytest.raises(ValueError, match="counter"):
            tmac.session_mac_key(key, uid, counter)
    with pytest.raises(ValueError, match="UID"):
        tmac.session_mac_key(key, uid[:4], 1)
    with pytest.raises(ValueError, match="key"):
        tmac.session_mac_key(key[:8], uid, 1)


# ---------------------------------------------------------------------------- TMI


def test_tmi_blocks_follow_the_desfire_light_layout() -> None:
    # Debit 3,500 from file 2: DC ‖ 02 ‖ AC0D0000 ‖ 10 zero bytes.
    assert tmac.command_input(0xDC, h("02AC0D0000")) == h("DC02AC0D0000") + bytes(10)
    # WriteRecord of 24 bytes to file 4: 3B 04 000000 180000, 8 zeros, the record, 8 zeros.
    record = bytes(range(1, 25))
    plain = h("04000000180000") + record
    assert tmac.command_input(0x3B, plain) == h("3B04000000180000") + bytes(8) + record + bytes(8)
    # Not covered by our choice: the trip state write and every read.
    assert tmac.command_input(0x3D, h("03000000300000") + trip) == b""
    assert tmac.command_input(0xBD, h("01000000200000"), bytes(32)) == b""
    assert tmac.command_input(0x6C, h("02"), h("10270000")) == b""


def test_rebuilt_tmi_of_a_debit_by_hand() -> None:
    record = LogRecord(1, RecordKind.DEBIT, 3_500, 6_500, 77, issue_time + 60)
    transaction = tmac.CardTransaction.of(record)
    assert transaction == tmac.CardTransaction(PurseOperation.DEBIT, 3_500, record.to_bytes())
    assert tmac.transaction_input(transaction) == (
        h("DC02AC0D0000") + bytes(10) + h("3B04000000180000") + bytes(8) + record.to_bytes()
    ) + bytes(8)
    # A free transfer sends no Debit; issue and block records neither: only the record.
    for no_value in (
        dataclasses.replace(record, amount_rupiah=0),
        dataclasses.replace(record, kind=RecordKind.BLOCK, amount_rupiah=0),
        LogRecord(0, RecordKind.ISSUE, 5_000, 5_000, 0, issue_time),
    ):
        rebuilt = tmac.transaction_input(tmac.CardTransaction.of(no_value))
        assert rebuilt == h("3B04000000180000") + bytes(8) + no_value.to_bytes() + bytes(8)
    credit = dataclasses.replace(record, kind=RecordKind.CREDIT, balance_after_rupiah=13_500)
    assert tmac.transaction_input(tmac.CardTransaction.of(credit))[:16] == (
        h("0C02AC0D0000") + bytes(10)
    )


# ---------------------------------------------------------------------------- the card and verify


def test_a_debit_tap_returns_the_cards_tmac_and_the_back_office_verifies_it() -> None:
    card, reader = personalised_card(10_000)
    session = KshCard(reader, debit_keys)
    session.read_state()
    after = session.debit(3_500, trip, terminal_id=77, time_unix_seconds=issue_time + 60)
    assert not isinstance(after, Refusal)
    mac = after.transaction_mac
    assert mac is not None and mac.counter == 2  # the issue record was MACed transaction 1
    key = card_tmac_key(card.uid)
    tmi = (
        h("DC02AC0D0000")
        + bytes(10)
        + h("3B04000000180000")
        + bytes(8)
        + after.last_record.to_bytes()
        + bytes(8)
    )
    assert mac.value == independent_tmv(key, card.uid, 2, tmi)
    transaction = tmac.CardTransaction.of(after.last_record)
    assert tmac.verify(key, card.uid, mac.counter, mac.value, transaction)
    # Reading the TransactionMAC file (free, no key) gives the same 12 bytes.
    desfire = Desfire(reader)
    desfire.select_application(ksh_card.ksh_application_id)
    content = desfire.read_data(ksh_card.transaction_mac_file, 0, 12, CommMode.MAC)
    assert TransactionMac.from_bytes(content) == mac


def test_verify_refuses_every_change() -> None:
    card, reader = personalised_card(10_000)
    session = KshCard(reader, debit_keys)
    session.read_state()
    after = session.debit(3_500, trip, terminal_id=77, time_unix_seconds=issue_time + 60)
    assert not isinstance(after, Refusal) and after.transaction_mac is not None
    key, uid = card_tmac_key(card.uid), card.uid
    counter, value = after.transaction_mac.counter, after.transaction_mac.value
    record = after.last_record
    genuine = tmac.CardTransaction.of(record)
    assert tmac.verify(key, uid, counter, value, genuine)
    altered_records = [
        dataclasses.replace(record, amount_rupiah=350),
        dataclasses.replace(record, balance_after_rupiah=9_999),
        dataclasses.replace(record, terminal_id=78),
        dataclasses.replace(record, time_unix_seconds=record.time_unix_seconds + 1),
        dataclasses.replace(record, counter=2),
        dataclasses.replace(record, kind=RecordKind.CREDIT),
    ]
    for altered in altered_records:
        assert not tmac.verify(key, uid, counter, value, tmac.CardTransaction.of(altered))
    assert not tmac.verify(key, uid, counter, value, dataclasses.replace(genuine, amount_rupiah=1))
    assert not tmac.verify(key, uid, counter + 1, value, genuine)
    assert not tmac.verify(key, uid, 0, value, genuine)
    assert not tmac.verify(key, uid, counter, value[:7], genuine)
    assert not tmac.verify(key, uid, counter, bytes(8), genuine)
    assert not tmac.verify(key, h("04112233445567"), counter, value, genuine)
    other_master = diversify_card_key(store.master_key(KeyRole.CREDIT), uid, 0x48534B).key
    assert not tmac.verify(other_master, uid, counter, value, genuine)


def test_every_card_transaction_is_one_counter_and_top_up_and_fare_each_have_their_own() -> None:
    card, reader = personalised_card(1_000)
    session = KshCard(reader, store.view(KeyRole.DEBIT, KeyRole.CREDIT))
    session.read_state()
    key = card_tmac_key(card.uid)
    states = [
        session.credit(5_000, terminal_id=5, time_unix_seconds=issue_time + 1),
        session.debit(0, trip, terminal_id=5, time_unix_seconds=issue_time + 2),  # transfer
        session.debit(2_000, trip, terminal_id=5, time_unix_seconds=issue_time + 3),
        session.block(terminal_id=5, time_unix_seconds=issue_time + 4),
    ]
    for number, state in enumerate(states, start=2):
        assert not isinstance(state, Refusal) and state.transaction_mac is not None
        assert state.transaction_mac.counter == number == state.counter + 1
        transaction = tmac.CardTransaction.of(state.last_record)
        assert tmac.verify(key, card.uid, number, state.transaction_mac.value, transaction)


def test_abort_and_power_loss_discard_the_tmi_and_keep_the_counter() -> None:
    card, reader = personalised_card(10_000)
    mac_file = card.applications[ksh_card.ksh_application_id].files[5]
    assert isinstance(mac_file, TransactionMacFile) and mac_file.counter == 1
    issued = mac_file.content()
    session = KshCard(reader, debit_keys)
    session.read_state()
    desfire = session.desfire
    desfire.debit(ksh_card.purse_file, 100, CommMode.MAC)
    assert len(mac_file.pending_input) == 16
    desfire.abort_transaction()
    assert not mac_file.pending_input and mac_file.content() == issued
    desfire.debit(ksh_card.purse_file, 100, CommMode.MAC)
    card.fail_after_exchanges(1, before_processing=True)
    with pytest.raises(CardError):
        desfire.commit_transaction(transaction_mac=True)
    assert not mac_file.pending_input and mac_file.content() == issued
    # A commit with nothing covered (the trip state alone) commits without a new counter.
    card.fail_after_exchanges(None)
    reader.insert(card)
    session = KshCard(reader, debit_keys)
    session.read_state()
    session.desfire.write_data(ksh_card.trip_state_file, 0, trip, CommMode.MAC)
    answer = session.desfire.commit_transaction(transaction_mac=True)
    assert answer == TransactionMac.from_bytes(issued)
    assert KshCard(reader, read_keys).read_state().trip_state == trip


def test_a_commit_whose_answer_is_lost_still_counts_and_the_file_tells() -> None:
    """The terminal gets no TMV when the card leaves after committing; the TransactionMAC file
    (and the next transaction's counter) still show that transaction."""
    card, reader = personalised_card(10_000)
    session = KshCard(reader, debit_keys)
    session.read_state()
    plan = session.plan_debit(3_500, trip, terminal_id=9, time_unix_seconds=issue_time + 5)
    assert not isinstance(plan, Refusal)
    card.fail_after_exchanges(4)  # debit, trip state, record, then the commit is processed
    with pytest.raises(CardError):
        session.perform(plan)
    card.fail_after_exchanges(None)
    reader.insert(card)
    desfire = Desfire(reader)
    desfire.select_application(ksh_card.ksh_application_id)
    mac = TransactionMac.from_bytes(desfire.read_data(5, 0, 12, CommMode.MAC))
    assert mac.counter == 2
    key = card_tmac_key(card.uid)
    assert tmac.verify(key, card.uid, 2, mac.value, tmac.CardTransaction.of(plan.record))
    session = KshCard(reader, debit_keys)
    session.read_state()
    later = session.debit(100, trip, terminal_id=9, time_unix_seconds=issue_time + 6)
    assert not isinstance(later, Refusal) and later.transaction_mac is not None
    assert later.transaction_mac.counter == 3


def test_a_card_without_the_file_commits_without_tmac() -> None:
    card = EmulatedCard(h("04112233445566"))
    reader = EmulatedReader()
    reader.insert(card)
    legacy = dataclasses.replace(profile(), transaction_mac=False)
    issued = ksh_card.personalise(
        reader,
        store.view(*KeyRole),
        legacy,
        initial_balance_rupiah=5_000,
        terminal_id=0,
        time_unix_seconds=issue_time,
    )
    assert issued.transaction_mac is None
    assert 5 not in card.applications[ksh_card.ksh_application_id].files
    reader.insert(card)
    session = KshCard(reader, debit_keys)
    assert session.read_state().profile.transaction_mac is False
    after = session.debit(1_000, trip, terminal_id=1, time_unix_seconds=issue_time + 1)
    assert not isinstance(after, Refusal) and after.transaction_mac is None
    # Asking for a TMAC there is refused, and the refusal aborts the transaction.
    session.desfire.debit(ksh_card.purse_file, 1_000, CommMode.MAC)
    with pytest.raises(DesfireError) as refused:
        session.desfire.commit_transaction(transaction_mac=True)
    assert refused.value.status == Status.PERMISSION_DENIED
    reader.insert(card)
    assert KshCard(reader, read_keys).read_state().balance_rupiah == 4_000


def test_the_file_is_created_once_with_its_key_enciphered_and_travels_in_the_deck() -> None:
    card = EmulatedCard(h("04010203040506"))
    reader = EmulatedReader()
    reader.insert(card)
    desfire = Desfire(reader)
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.create_application(0x010203, 0x0F, 1)
    desfire.select_application(0x010203)
    access = AccessRights(free_access, no_access, no_access, 0)
    key = bytes(range(16))
    with pytest.raises(DesfireError) as refused:  # CommitReaderID (RW right) is not supported
        desfire.authenticate_ev2_first(0, bytes(16))
        desfire.create_transaction_mac_file(7, CommMode.MAC, AccessRights(0xE, 0xF, 0xE, 0), key, 1)
    assert refused.value.status == Status.PARAMETER_ERROR
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.create_transaction_mac_file(7, CommMode.MAC, access, key, 1)
    assert key.hex() not in "".join(c.hex() + r.hex() for c, r in desfire.transcript)
    with pytest.raises(DesfireError) as refused:
        desfire.create_transaction_mac_file(8, CommMode.MAC, access, key, 1)
    assert refused.value.status == Status.DUPLICATE_ERROR
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.create_value_file(
        1,
        CommMode.MAC,
        AccessRights(0, 0, 0, 0),
        0,
        100,
        0,
        limited_credit_enabled=False,
        free_get_value=False,
    )
    desfire.credit(1, 5, CommMode.MAC)
    mac = desfire.commit_transaction(transaction_mac=True)
    tmi = h("0C0105000000") + bytes(10)
    assert mac == TransactionMac(1, independent_tmv(key, card.uid, 1, tmi))
    saved = copy.deepcopy(card.to_dict())
    again = EmulatedCard.from_dict(saved)
    assert again.to_dict() == card.to_dict()
    mac_file = again.applications[0x010203].files[7]
    assert isinstance(mac_file, TransactionMacFile) and mac_file.key == key
    assert mac_file.content() == mac.to_bytes()
    assert key.hex().upper() not in repr(mac_file).upper()


def test_commit_with_tmac_transcript() -> None:
    """CommitTransaction with option 0x01 under EV2 secure messaging, exchange by exchange
    between our reader and the software card (fixed randoms), and the TMV it answers."""
    uid = h("04010203040506")
    key = bytes(range(16))
    card = EmulatedCard(
        uid, random_bytes=fixed_random("00112233445566778899AABBCCDDEEFF", "0A0B0C0D")
    )
    access = AccessRights(0, 0, 0, 0)
    card.applications[0x010203] = Application(
        0x010203,
        0x0F,
        [(bytes(16), 0)],
        {
            1: ValueFile(CommMode.MAC, access, 0, 1_000, 500, False, False),
            5: TransactionMacFile(
                CommMode.MAC, AccessRights(free_access, no_access, no_access, 0), key, 1, 5
            ),
        },
    )
    reader = EmulatedReader()
    reader.insert(card)
    desfire = Desfire(reader, random_bytes=fixed_random("FFEEDDCCBBAA99887766554433221100"))
    desfire.select_application(0x010203)
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.debit(1, 250, CommMode.MAC)
    mac = desfire.commit_transaction(transaction_mac=True)
    tmv = independent_tmv(key, uid, 6, h("DC01FA000000") + bytes(10))
    assert mac == TransactionMac(6, tmv)
    assert [(c.hex().upper(), r.hex().upper()) for c, r in desfire.transcript] == TRANSCRIPT
    assert TRANSCRIPT[-1][1][:24] == "06000000" + tmv.hex().upper()


TRANSCRIPT = [  # SelectApplication, AuthenticateEV2First (2), Debit 250, CommitTransaction(01)
    ("905A00000303020100", "9100"),
    ("9071000002000000", "C8A331FF8EDD3DB175E1545DBEFB760B91AF"),
    (
        "90AF000020C35234DF28C6D140F86692029D2F4020BA13E592BE870FB091FB3832C57BF5A500",
        "6AACD66EF01F02580681E6539B77E7AA838AD7293C2B0A34BB405B68F1B50FF79100",
    ),
    ("90DC00000D01FA00000083DF3AF48FFB313000", "0C1BB1514975DE3A9100"),
    # option 01 ‖ MACt; answer TMC 6 ‖ TMV ‖ MACt
    ("90C700000901210A76A2D78159BE00", "06000000EC1404C54D6CA17E159C756E59D09C619100"),
]


def test_commit_refuses_unknown_options() -> None:
    card, reader = personalised_card(10_000)
    session = KshCard(reader, debit_keys)
    session.read_state()
    session.desfire.debit(ksh_card.purse_file, 100, CommMode.MAC)
    with pytest.raises(DesfireError) as refused:
        session.desfire.command(0xC7, b"\x02")
    assert refused.value.status == Status.PARAMETER_ERROR
    reader.insert(card)
    assert KshCard(reader, read_keys).read_state().balance_rupiah == 10_000
