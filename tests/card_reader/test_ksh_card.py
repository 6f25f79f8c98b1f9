"""The KSH application on the software card: personalise, read, debit, credit, block, refusals,
key versions, the log, and tearing at every exchange of a debit."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from card_reader import ksh_card
from card_reader.apdu import Framing
from card_reader.desfire import Desfire, DesfireError
from card_reader.desfire_files import FileType
from card_reader.emulator import EmulatedCard, EmulatedReader, TransactionMacFile
from card_reader.keys import KeyRole, KeyStore, demo_key_store
from card_reader.ksh_card import (
    CardStatus,
    InDoubtOutcome,
    KshCard,
    KshCardError,
    LayoutError,
    LogRecord,
    Profile,
    RecordKind,
    Refusal,
    log_record_layout,
    settle_in_doubt,
)
from card_reader.port import CardError

from .ksh_cards import issue_time, personalised_card, profile, store
from .scripted import ScriptedReader

trip = bytes(range(48))
debit_keys = store.view(KeyRole.DEBIT)
credit_keys = store.view(KeyRole.CREDIT)
read_keys = store.view(KeyRole.READ)


def test_personalised_card_reads_back_what_was_issued() -> None:
    card, reader = personalised_card(12_345)
    state = KshCard(reader, read_keys).read_state()
    assert state.uid == card.uid
    assert state.profile == profile()
    assert state.balance_rupiah == 12_345
    assert state.trip_state == bytes(ksh_card.trip_state_bytes)
    assert state.last_record == LogRecord(0, RecordKind.ISSUE, 12_345, 12_345, 0, issue_time)
    assert state.key_version == 1


def test_personalisation_locks_the_card() -> None:
    _card, reader = personalised_card()
    desfire = Desfire(reader)
    with pytest.raises(DesfireError) as raised:  # the factory PICC key no longer opens it
        desfire.authenticate_ev2_first(0, bytes(16))
    assert raised.value.status == 0xAE
    with pytest.raises(DesfireError) as raised:  # nobody can add applications without the key
        desfire.create_application(0x010203, 0x0F, 1)
    assert raised.value.status == 0xAE
    desfire.select_application(ksh_card.ksh_application_id)
    with pytest.raises(DesfireError) as raised:
        desfire.authenticate_ev2_first(2, bytes(16))
    assert raised.value.status == 0xAE


def test_only_blank_cards_are_personalised() -> None:
    card, reader = personalised_card()
    before = copy.deepcopy(card.to_dict())
    with pytest.raises(DesfireError) as raised:
        ksh_card.personalise(
            reader, store.view(*KeyRole), profile(), terminal_id=0, time_unix_seconds=0
        )
    assert raised.value.status == 0xAE  # the factory PICC key is gone
    assert card.to_dict() == before


def test_debit_commits_purse_trip_state_and_log_together() -> None:
    card, reader = personalised_card(10_000)
    session = KshCard(reader, debit_keys)
    before = session.read_state()
    after = session.debit(3_500, trip, terminal_id=77, time_unix_seconds=issue_time + 60)
    assert not isinstance(after, Refusal)
    assert after.balance_rupiah == 6_500
    assert after.last_record == LogRecord(1, RecordKind.DEBIT, 3_500, 6_500, 77, issue_time + 60)
    reader.insert(card)
    again = KshCard(reader, read_keys).read_state()
    assert again == after
    assert before.counter + 1 == again.counter


def test_credit_then_cap_and_role_checks() -> None:
    card, reader = personalised_card(1_990_000)
    session = KshCard(reader, credit_keys)
    session.read_state()
    assert (
        session.credit(10_001, terminal_id=5, time_unix_seconds=1) is Refusal.BALANCE_CAP_EXCEEDED
    )
    after = session.credit(10_000, terminal_id=5, time_unix_seconds=1)
    assert not isinstance(after, Refusal)
    assert after.balance_rupiah == ksh_card.balance_max_rupiah
    assert session.debit(1, trip, terminal_id=5, time_unix_seconds=1) is Refusal.ROLE_NOT_HELD
    reader.insert(card)
    assert KshCard(reader, read_keys).read_state().balance_rupiah == 2_000_000


def test_debit_key_cannot_credit_even_when_asked_directly() -> None:
    card, reader = personalised_card(100)
    session = KshCard(reader, debit_keys)
    state = session.read_state()
    with pytest.raises(DesfireError) as raised:
        session.desfire.credit(ksh_card.purse_file, 1_000, ksh_card.comm_mode)
    assert raised.value.status == 0x9D
    reader.insert(card)
    assert KshCard(reader, read_keys).read_state().balance_rupiah == state.balance_rupiah


def test_insufficient_balance_is_a_refusal_and_sends_nothing() -> None:
    _card, reader = personalised_card(1_000)
    session = KshCard(reader, debit_keys)
    session.read_state()
    exchanges = reader.exchanges
    assert (
        session.debit(1_001, trip, terminal_id=1, time_unix_seconds=1)
        is Refusal.INSUFFICIENT_BALANCE
    )
    assert reader.exchanges == exchanges


def test_block_then_every_debit_is_refused() -> None:
    card, reader = personalised_card()
    session = KshCard(reader, debit_keys)
    session.read_state()
    blocked = session.block(terminal_id=9, time_unix_seconds=2)
    assert not isinstance(blocked, Refusal)
    assert blocked.profile.status is CardStatus.BLOCKED
    assert blocked.last_record.kind is RecordKind.BLOCK
    reader.insert(card)
    session = KshCard(reader, debit_keys)
    assert session.read_state().profile.status is CardStatus.BLOCKED
    assert session.debit(1, trip, terminal_id=1, time_unix_seconds=3) is Refusal.CARD_BLOCKED
    assert session.block(terminal_id=1, time_unix_seconds=3) is Refusal.ALREADY_BLOCKED


def test_a_tap_is_twelve_exchanges_or_fewer() -> None:
    _card, reader = personalised_card()
    session = KshCard(reader, debit_keys)
    start = reader.exchanges
    session.read_state()
    assert reader.exchanges - start == 8  # UID, select, 2 auth, profile, purse, trip, last record
    session.debit(100, trip, terminal_id=1, time_unix_seconds=1)
    assert reader.exchanges - start == 12  # debit, trip state, record, commit


def test_the_log_keeps_the_newest_fifteen_with_consecutive_counters() -> None:
    _card, reader = personalised_card(100_000)
    session = KshCard(reader, debit_keys)
    session.read_state()
    for tap in range(20):
        session.debit(10, trip, terminal_id=3, time_unix_seconds=issue_time + tap)
    log = session.read_log()
    assert len(log) == ksh_card.log_records_kept
    assert [record.counter for record in log] == list(range(6, 21))
    assert log[-1].balance_after_rupiah == 100_000 - 200


def test_settle_in_doubt_from_the_log() -> None:
    first = LogRecord(5, RecordKind.DEBIT, 10, 90, 1, 100)
    second = LogRecord(6, RecordKind.DEBIT, 10, 80, 1, 200)
    other = LogRecord(6, RecordKind.DEBIT, 20, 70, 2, 300)
    assert settle_in_doubt([first, second], second) is InDoubtOutcome.COMMITTED
    assert settle_in_doubt([first, other], second) is InDoubtOutcome.NOT_COMMITTED
    assert settle_in_doubt([first], second) is InDoubtOutcome.NOT_COMMITTED
    assert settle_in_doubt([second], first) is InDoubtOutcome.UNKNOWN


@pytest.mark.parametrize("before_processing", [False, True])
def test_tearing_at_every_exchange_of_a_debit(before_processing: bool) -> None:
    """Pull the card at each exchange of a tap: afterwards it holds the old state or the new one
    entirely, and its log says which."""
    card, reader = personalised_card(10_000)
    pristine = card.to_dict()
    exchanges_per_tap = 12
    outcomes = set()
    for tear_at in range(1, exchanges_per_tap + 2):
        card = EmulatedCard.from_dict(copy.deepcopy(pristine))
        reader = EmulatedReader()
        reader.insert(card)
        session = KshCard(reader, debit_keys)
        card.fail_after_exchanges(tear_at, before_processing=before_processing)
        intended: LogRecord | None = None
        try:
            session.read_state()
            plan = session.plan_debit(2_500, trip, terminal_id=8, time_unix_seconds=issue_time + 9)
            assert not isinstance(plan, Refusal)
            intended = plan.record
            session.perform(plan)
            torn = False
        except CardError:
            torn = True
        card.fail_after_exchanges(None)
        reader.insert(card)
        after = KshCard(reader, read_keys).read_state()
        new_state = after.balance_rupiah == 7_500
        # The Transaction MAC counter moves with the commit and nothing else (issue was 1).
        mac_file = card.applications[ksh_card.ksh_application_id].files[5]
        assert isinstance(mac_file, TransactionMacFile)
        assert mac_file.counter == (2 if new_state else 1) and not mac_file.pending_input
        if new_state:
            assert after.trip_state == trip
            assert after.last_record == intended
        else:
            assert after.balance_rupiah == 10_000
            assert after.trip_state == bytes(48)
            assert after.last_record.kind is RecordKind.ISSUE
        if intended is not None:
            verdict = settle_in_doubt([after.last_record], intended)
            assert verdict is (
                InDoubtOutcome.COMMITTED if new_state else InDoubtOutcome.NOT_COMMITTED
            )
        outcomes.add((tear_at, torn, new_state))
    # The commit is exchange 12: tearing there after processing commits, before processing not.
    assert (12, True, not before_processing) in outcomes
    assert (13, False, True) in outcomes
    assert all(not new for at, _, new in outcomes if at < 12)


def test_previous_key_version_is_accepted_and_older_is_not() -> None:
    old_store = demo_key_store("rollover")
    card, reader = personalised_card(5_000, keys=old_store)
    rolled = demo_key_store("rollover")
    rolled.roll_over(KeyRole.DEBIT)
    session = KshCard(reader, rolled.view(KeyRole.DEBIT))
    state = session.read_state()  # card still on version 1, terminal current is 2
    assert state.key_version == 1
    assert not isinstance(session.debit(100, trip, terminal_id=1, time_unix_seconds=1), Refusal)
    rolled.roll_over(KeyRole.DEBIT)  # now 3 current, 2 previous: version 1 is out
    reader.insert(card)
    with pytest.raises(KshCardError, match="key version 1 on the card is not accepted"):
        KshCard(reader, rolled.view(KeyRole.DEBIT)).read_state()


def test_wrong_keys_and_foreign_cards_are_card_errors() -> None:
    _card, reader = personalised_card()
    with pytest.raises(KshCardError, match="does not match ours"):
        KshCard(reader, KeyStore.generate().view(KeyRole.DEBIT)).read_state()
    blank = EmulatedCard()
    reader.insert(blank)
    with pytest.raises(KshCardError, match="not a KSH card"):
        KshCard(reader, debit_keys).read_state()


@pytest.mark.parametrize("answer", ["0401020304059000", "9000", "0401020304050691AE", ""])
def test_a_uid_that_cannot_be_a_card_uid_is_a_card_error(answer: str) -> None:
    reader = ScriptedReader([("FFCA000000", answer)])
    with pytest.raises(CardError, match="did not give a card UID"):
        KshCard(reader, debit_keys).read_state()
    reader.assert_done()


def test_damaged_profile_is_reported_with_the_field() -> None:
    raw = bytearray(profile().to_bytes())
    raw[9] = 42  # rider category
    with pytest.raises(LayoutError, match=r"profile.rider_category = 42"):
        Profile.from_bytes(bytes(raw))
    raw = bytearray(LogRecord(1, RecordKind.DEBIT, 1, 1, 1, 1).to_bytes())
    raw[22] = 1
    with pytest.raises(LayoutError, match="reserved"):
        LogRecord.from_bytes(bytes(raw))
    with pytest.raises(LayoutError, match="length"):
        LogRecord.from_bytes(b"\x00")


def test_layouts_round_trip() -> None:
    record = LogRecord(2**32 - 1, RecordKind.CREDIT, 2_000_000, 2_000_000, 2**32 - 1, 2**32 - 1)
    assert LogRecord.from_bytes(record.to_bytes()) == record
    assert Profile.from_bytes(profile().to_bytes()) == profile()


def test_credit_and_debit_views_in_one_tap_use_non_first_authentication() -> None:
    card, reader = personalised_card(1_000)
    session = KshCard(reader, store.view(KeyRole.DEBIT, KeyRole.CREDIT))
    session.read_state()
    topped = session.credit(5_000, terminal_id=4, time_unix_seconds=10)
    assert not isinstance(topped, Refusal)
    paid = session.debit(3_000, trip, terminal_id=4, time_unix_seconds=11)
    assert not isinstance(paid, Refusal)
    assert (paid.balance_rupiah, paid.counter) == (3_000, 2)
    reader.insert(card)
    assert KshCard(reader, read_keys).read_state() == paid


def test_native_framing_tap() -> None:
    card, reader = personalised_card(9_000)
    session = KshCard(reader, debit_keys, framing=Framing.NATIVE)
    session.read_state()
    after = session.debit(4_000, trip, terminal_id=2, time_unix_seconds=3)
    assert not isinstance(after, Refusal)
    reader.insert(card)
    assert KshCard(reader, read_keys).read_state().balance_rupiah == 5_000


def test_access_rights_as_documented() -> None:
    """Free reads of profile, trip state and log; the purse needs a key; the credit key cannot
    touch trip state; the read key can change nothing."""
    card, reader = personalised_card(9_000)
    anonymous = Desfire(reader)
    anonymous.select_application(ksh_card.ksh_application_id)
    assert (
        Profile.from_bytes(anonymous.read_data(ksh_card.profile_file, 0, 32, ksh_card.comm_mode))
        == profile()
    )
    assert anonymous.get_value(ksh_card.purse_file, ksh_card.comm_mode) == 9_000  # free GetValue
    with pytest.raises(DesfireError) as raised:
        anonymous.debit(ksh_card.purse_file, 1, ksh_card.comm_mode)
    assert raised.value.status == 0xAE
    for keys, file_number, write in [
        (credit_keys, ksh_card.trip_state_file, True),
        (read_keys, ksh_card.profile_file, True),
        (read_keys, ksh_card.log_file, False),
    ]:
        session = KshCard(reader, keys)
        session.read_state()
        with pytest.raises(DesfireError) as raised:
            if write:
                session.desfire.write_data(file_number, 0, b"\x01", ksh_card.comm_mode)
            else:
                session.desfire.write_record(file_number, 0, b"\x01", ksh_card.comm_mode)
        assert raised.value.status == 0x9D
    reader.insert(card)
    assert KshCard(reader, read_keys).read_state().counter == 0


def test_file_and_key_settings_need_the_personalisation_key() -> None:
    """The KSH application's key settings leave "free directory list access" off."""
    _card, reader = personalised_card()
    session = KshCard(reader, debit_keys)
    session.read_state()
    with pytest.raises(DesfireError) as raised:
        session.desfire.get_file_settings(ksh_card.purse_file)
    assert raised.value.status == 0xAE
    desfire = Desfire(reader)
    desfire.select_application(ksh_card.ksh_application_id)
    with pytest.raises(DesfireError) as raised:
        desfire.get_file_ids()
    assert raised.value.status == 0xAE
    key = store.view(KeyRole.PERSONALISATION).card_key(
        KeyRole.PERSONALISATION, ksh_card.read_uid(reader), ksh_card.ksh_application_id
    )
    desfire.select_application(ksh_card.ksh_application_id)
    desfire.authenticate_ev2_first(0, key.key)
    settings = desfire.get_file_settings(ksh_card.purse_file)
    assert (settings.lower_limit, settings.upper_limit) == (0, ksh_card.balance_max_rupiah)
    assert desfire.get_file_ids() == [1, 2, 3, 4, 5]
    mac_file = desfire.get_file_settings(ksh_card.transaction_mac_file)
    assert mac_file.file_type is FileType.TRANSACTION_MAC
    assert mac_file.access == ksh_card.transaction_mac_access
    assert mac_file.transaction_mac_key_version == store.current_versions[KeyRole.TMAC]


def test_rekey_moves_a_card_to_the_current_versions() -> None:
    keys = demo_key_store("rekey")
    card, reader = personalised_card(5_000, keys=keys)
    keys.roll_over(KeyRole.DEBIT)
    keys.roll_over(KeyRole.PERSONALISATION)
    assert ksh_card.rekey(reader, keys.view(*KeyRole)) == {
        KeyRole.READ: 1,
        KeyRole.DEBIT: 2,
        KeyRole.CREDIT: 1,
        KeyRole.PERSONALISATION: 2,
    }
    keys.roll_over(KeyRole.DEBIT)  # now 3 current, 2 previous: the re-keyed card is still in
    reader.insert(card)
    session = KshCard(reader, keys.view(KeyRole.DEBIT))
    assert session.read_state().key_version == 2
    reader.insert(card)
    assert ksh_card.rekey(reader, keys.view(*KeyRole))[KeyRole.DEBIT] == 3
    reader.insert(card)
    assert KshCard(reader, keys.view(KeyRole.DEBIT)).read_state().key_version == 3
    reader.insert(card)
    assert ksh_card.rekey(reader, keys.view(*KeyRole))[KeyRole.DEBIT] == 3  # nothing to do


@given(
    st.tuples(
        st.integers(min_value=-1, max_value=2**32),
        st.sampled_from([*RecordKind, 0, 9]),
        *(st.integers(min_value=-1, max_value=2**32) for _ in range(4)),
    )
)
def test_the_fast_log_record_codec_is_the_field_table(numbers) -> None:
    """`Layout.encode_fields` (struct) gives the bytes, or the error naming the field, of the
    field-by-field `encode`: the back office rebuilds every uploaded log record with it."""
    names = ("counter", "kind", "amount_rupiah", "balance_after_rupiah", "terminal_id",
             "time_unix_seconds")  # fmt: skip
    try:
        expected: bytes | str = log_record_layout.encode(dict(zip(names, numbers)))
    except LayoutError as error:
        expected = str(error)
    try:
        fast: bytes | str = log_record_layout.encode_fields(*numbers)
    except LayoutError as error:
        fast = str(error)
    assert fast == expected


def test_a_tap_moves_the_card_to_the_current_key_unless_issued_before_keys_changed_themselves() -> (
    None
):
    keys = demo_key_store("move")
    card, reader = personalised_card(5_000, keys=keys)
    old_card = copy.deepcopy(card)
    # A card issued before 0xE9: its application keys change only under key 0.
    old_reader = EmulatedReader()
    old_reader.insert(old_card)
    desfire = Desfire(old_reader)
    desfire.select_application(ksh_card.ksh_application_id)
    master = keys.view(KeyRole.PERSONALISATION).card_key(
        KeyRole.PERSONALISATION, ksh_card.read_uid(old_reader), ksh_card.ksh_application_id
    )
    desfire.authenticate_ev2_first(0, master.key)
    assert desfire.get_key_settings() == ksh_card.application_key_settings_issued
    desfire.change_key_settings(ksh_card.application_key_settings)
    keys.roll_over(KeyRole.DEBIT)  # v2 current, v1 accepted
    for tapped, expected in ((reader, 2), (old_reader, None)):
        session = KshCard(tapped, keys.view(KeyRole.DEBIT))
        assert session.read_state().key_version == 1
        assert isinstance(
            session.debit(100, bytes(48), terminal_id=1, time_unix_seconds=1), ksh_card.CardState
        )
        assert session.move_to_current_key() == expected
    reader.insert(card)
    assert KshCard(reader, keys.view(KeyRole.DEBIT)).read_state().key_version == 2
    old_reader.insert(old_card)
    assert KshCard(old_reader, keys.view(KeyRole.DEBIT)).read_state().key_version == 1
    # The desk moves the old card under its application master key.
    old_reader.insert(old_card)
    assert ksh_card.rekey(old_reader, keys.view(*KeyRole))[KeyRole.DEBIT] == 2
    old_reader.insert(old_card)
    assert KshCard(old_reader, keys.view(KeyRole.DEBIT)).read_state().key_version == 2
