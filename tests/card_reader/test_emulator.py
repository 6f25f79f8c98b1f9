"""Behaviour of the software card: identity, framings, chaining, sessions, transactions, power
loss, saving, and bad input (random and mutated APDUs: a clear status, no crash, no change)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from card_reader.apdu import Framing, Status
from card_reader.deck import make_ksh_deck
from card_reader.desfire import Desfire, DesfireError
from card_reader.desfire_files import AccessRights, CommMode
from card_reader.emulator import (
    CardPoweredOff,
    EmulatedCard,
    EmulatedReader,
    load_deck,
    save_deck,
)
from card_reader.keys import KeyRole
from card_reader.ksh_card import KshCard, Refusal
from card_reader.port import CardError, ReaderPort

from .ksh_cards import personalised_card, store

h = bytes.fromhex
aid = 0x112233


def powered_card() -> EmulatedCard:
    card = EmulatedCard(h("04010203040506"))
    card.power_on()
    return card


def test_identity_atr_select_and_get_data() -> None:
    card = powered_card()
    assert card.atr() == h("3B8180018080")
    assert card.process(h("00A4040007D276000085010000")) == h("9000")
    assert card.process(h("00A4040007D2760000850100")) == h("9000")  # without Le
    assert card.process(h("00A4040007A0000000031010")) == h("6A82")
    assert card.process(h("FFCA000000")) == h("04010203040506") + h("9000")


def test_get_version_in_three_frames_in_both_framings() -> None:
    card = powered_card()
    iso = [
        card.process(h("9060000000")),
        card.process(h("90AF000000")),
        card.process(h("90AF000000")),
    ]
    native = [card.process(h("60")), card.process(h("AF")), card.process(h("AF"))]
    assert [frame[:-2] for frame in iso] == [frame[1:] for frame in native]
    assert [frame[-2:] for frame in iso] == [h("91AF"), h("91AF"), h("9100")]
    assert [frame[0] for frame in native] == [0xAF, 0xAF, 0x00]
    assert iso[2][:7] == card.uid
    assert card.process(h("AF")) == h("CA")  # nothing left to fetch


def test_emulator_reader_implements_the_port() -> None:
    reader = EmulatedReader()
    assert isinstance(reader, ReaderPort)
    assert not reader.card_present()
    assert not reader.wait_for_card(1)
    with pytest.raises(CardError, match="no card"):
        reader.transmit(h("9060000000"))
    card = EmulatedCard()
    reader.insert(card)
    assert reader.card_present() and reader.atr() == card.atr()
    reader.remove()
    assert reader.wait_for_removal(1)
    assert not card.powered


def blank_with_application(
    framing: Framing, frame_bytes_max: int = 255
) -> tuple[EmulatedCard, Desfire]:
    card = EmulatedCard()
    reader = EmulatedReader()
    reader.insert(card)
    desfire = Desfire(reader, framing=framing, frame_data_bytes_max=frame_bytes_max)
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.create_application(aid, 0x0F, 2)
    desfire.select_application(aid)
    desfire.authenticate_ev2_first(0, bytes(16))
    access = AccessRights(0, 0, 0, 0)
    desfire.create_backup_data_file(1, CommMode.FULL, access, 200)
    desfire.create_value_file(
        2, CommMode.MAC, access, -100, 1_000, 0, limited_credit_enabled=True, free_get_value=False
    )
    desfire.create_cyclic_record_file(3, CommMode.PLAIN, access, 16, 3)
    desfire.create_std_data_file(4, CommMode.MAC, access, 8)
    return card, desfire


@pytest.mark.parametrize("framing", [Framing.ISO_WRAPPED, Framing.NATIVE])
@pytest.mark.parametrize("generation", ["ev1", "ev2"])
def test_long_reads_and_writes_chain_both_ways(framing: Framing, generation: str) -> None:
    card, desfire = blank_with_application(framing, frame_bytes_max=48)
    if generation == "ev1":
        desfire.authenticate_aes(0, bytes(16))
    data = bytes(range(200))
    desfire.write_data(1, 0, data, CommMode.FULL)
    desfire.commit_transaction()
    before = len(desfire.transcript)
    assert desfire.read_data(1, 0, 0, CommMode.FULL) == data
    read_frames = list(desfire.transcript)[before:]
    assert len(read_frames) > 1  # the answer came in several AF frames
    assert bytes(card.applications[aid].files[1].data) == data  # type: ignore[union-attr]


@pytest.mark.parametrize("framing", [Framing.ISO_WRAPPED, Framing.NATIVE])
def test_free_access_writes_chain_without_authentication(framing: Framing) -> None:
    card, desfire = blank_with_application(framing, frame_bytes_max=48)
    free = AccessRights(read=0xE, write=0xE, read_write=0xE, change=0)
    desfire.create_std_data_file(5, CommMode.MAC, free, 100)
    desfire.select_application(aid)  # no session: free access is plain
    data = bytes(range(100))
    desfire.write_data(5, 0, data, CommMode.PLAIN)  # 107 bytes: three frames
    assert desfire.read_data(5, 0, 0, CommMode.PLAIN) == data
    assert bytes(card.applications[aid].files[5].data) == data  # type: ignore[union-attr]


def test_wrong_mac_gives_integrity_error_and_ends_the_session() -> None:
    card, desfire = blank_with_application(Framing.ISO_WRAPPED)
    desfire.credit(2, 10, CommMode.MAC)
    payload = bytearray(desfire._protect(0x0C, b"\x02", (5).to_bytes(4, "little"), CommMode.MAC))
    payload[-1] ^= 0xFF
    status, data = desfire.exchange(0x0C, bytes(payload))
    assert (status, data) == (Status.INTEGRITY_ERROR, b"")
    desfire.authentication = None
    desfire.commit_transaction()  # nothing staged survived the failure: committing does nothing
    with pytest.raises(DesfireError) as raised:
        desfire.get_value(2, CommMode.MAC)  # and the session is gone
    assert raised.value.status == Status.AUTHENTICATION_ERROR
    assert card.applications[aid].files[2].value == 0  # type: ignore[union-attr]


def test_value_limits_commit_abort_and_limited_credit() -> None:
    card, desfire = blank_with_application(Framing.ISO_WRAPPED)
    with pytest.raises(DesfireError) as raised:
        desfire.credit(2, 1_001, CommMode.MAC)
    assert raised.value.status == Status.BOUNDARY_ERROR
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.credit(2, 500, CommMode.MAC)
    assert desfire.get_value(2, CommMode.MAC) == 0  # reads show committed data
    desfire.abort_transaction()
    desfire.credit(2, 500, CommMode.MAC)
    desfire.debit(2, 600, CommMode.MAC)  # the lower limit is -100
    desfire.commit_transaction()
    assert desfire.get_value(2, CommMode.MAC) == -100
    desfire.limited_credit(2, 600, CommMode.MAC)  # the last transaction debited 600
    desfire.commit_transaction()
    with pytest.raises(DesfireError) as raised:
        desfire.limited_credit(2, 1, CommMode.MAC)  # used up
    assert raised.value.status == Status.BOUNDARY_ERROR
    assert card.applications[aid].files[2].value == 500  # type: ignore[union-attr]


def test_file_settings_and_key_versions() -> None:
    _, desfire = blank_with_application(Framing.NATIVE)
    settings_ = desfire.get_file_settings(3)
    assert (settings_.record_size, settings_.records_max, settings_.records_current) == (16, 3, 0)
    assert desfire.get_file_settings(2).lower_limit == -100
    desfire.change_key(1, bytes(range(16)), 7, old_key=bytes(16))
    assert desfire.get_key_version(1) == 7
    with pytest.raises(DesfireError) as raised:
        desfire.get_file_settings(9)
    assert raised.value.status == Status.FILE_NOT_FOUND


def test_format_picc_needs_the_master_key_and_removes_applications() -> None:
    card, desfire = blank_with_application(Framing.ISO_WRAPPED)
    desfire.select_application(0)
    with pytest.raises(DesfireError) as raised:
        desfire.format_picc()
    assert raised.value.status == Status.AUTHENTICATION_ERROR
    desfire.authenticate_ev2_first(0, bytes(16))
    assert desfire.get_application_ids() == [aid]
    desfire.format_picc()
    assert card.applications == {}


@pytest.mark.parametrize("before_processing", [False, True])
def test_power_loss_on_commit(before_processing: bool) -> None:
    card, desfire = blank_with_application(Framing.ISO_WRAPPED)
    desfire.credit(2, 77, CommMode.MAC)
    desfire.write_record(3, 0, b"r" * 16, CommMode.PLAIN)
    card.fail_after_exchanges(1, before_processing=before_processing)
    with pytest.raises(CardError, match="lost power"):
        desfire.commit_transaction()
    assert not card.powered
    with pytest.raises(CardPoweredOff):
        card.process(h("9060000000"))
    files = card.applications[aid].files
    expected = 0 if before_processing else 77
    assert files[2].value == expected  # type: ignore[union-attr]
    assert len(files[3].records) == (0 if before_processing else 1)  # type: ignore[union-attr]
    assert not card.applications[aid].has_pending()


def test_deck_round_trip(tmp_path: Path) -> None:
    cards = make_ksh_deck(store, [0, 15_000, 2_000_000], seed="test")
    path = tmp_path / "deck.json"
    save_deck(cards, path)
    assert (path.stat().st_mode & 0o777) == 0o600  # a deck holds its cards' keys
    loaded = load_deck(path)
    assert [card.to_dict() for card in loaded] == [card.to_dict() for card in cards]
    reader = EmulatedReader()
    reader.insert(loaded[1])
    session = KshCard(reader, store.view(KeyRole.DEBIT))
    assert session.read_state().balance_rupiah == 15_000
    assert not isinstance(
        session.debit(3_500, bytes(48), terminal_id=1, time_unix_seconds=1), Refusal
    )
    assert make_ksh_deck(store, [5], seed="test")[0].uid == cards[0].uid  # reproducible
    damaged = json.loads(path.read_text())
    damaged["cards"][1]["uid"] = "0401"
    path.write_text(json.dumps(damaged))
    with pytest.raises(ValueError, match="card 1 is damaged"):
        load_deck(path)
    del damaged["cards"][0]["applications"][0]["keys"]
    path.write_text(json.dumps(damaged))
    with pytest.raises(ValueError, match="card 0 is damaged"):
        load_deck(path)
    for breakage in (
        lambda card: card["picc"]["keys"][0].update(key="00" * 15),  # not an AES-128 key
        lambda card: card["picc"]["keys"][0].update(version=256),
        lambda card: card["applications"][0]["files"]["2"].update(value=2_000_001),
        lambda card: card["applications"][0]["files"]["4"]["records"].append("00"),
        lambda card: card["applications"][0]["files"].update(
            {"32": card["applications"][0]["files"]["1"]}
        ),
    ):
        damaged = json.loads(json.dumps({"format": "ksh-card-deck", "version": 1}))
        damaged["cards"] = [card.to_dict() for card in cards]
        breakage(damaged["cards"][2])
        path.write_text(json.dumps(damaged))
        with pytest.raises(ValueError, match="card 2 is damaged"):
            load_deck(path)
    path.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a version 1 KSH card deck"):
        load_deck(path)


# ---------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def locked_card() -> dict[str, object]:
    card, _ = personalised_card()
    return card.to_dict()


def replay_card(saved: dict[str, object]) -> EmulatedCard:
    card = EmulatedCard.from_dict(copy.deepcopy(saved))  # type: ignore[arg-type]
    card.power_on()
    return card


card_commands = sorted(EmulatedCard._handlers)  # every command the card knows
# The same without those that end or replace the session (select, authenticate).
session_commands = [code for code in card_commands if code not in (0x5A, 0xAA, 0x71, 0x77)]

valid_status_words = {bytes((0x91, status)) for status in Status} | {
    h(sw) for sw in ("9000", "6700", "6A82", "6B00", "6D00", "6E00")
}


def assert_clear_answer(answer: bytes, native: bool) -> None:
    assert answer, "the card always answers"
    if native:
        assert answer[0] in set(Status) or answer[-2:] in valid_status_words
    else:
        assert answer[-2:] in valid_status_words


@settings(max_examples=300, deadline=None)
@given(commands=st.lists(st.binary(min_size=0, max_size=80), min_size=1, max_size=8))
def test_random_apdus_get_a_clear_status_and_change_nothing(
    locked_card: dict[str, object], commands: list[bytes]
) -> None:
    card = replay_card(locked_card)
    for command in commands:
        assert_clear_answer(
            card.process(command), native=command[:1] not in (b"\x90", b"\x00", b"\xff")
        )
    assert card.to_dict() == locked_card


@settings(max_examples=300, deadline=None)
@given(
    code=st.sampled_from([*card_commands, 0xAF]),
    data=st.binary(max_size=60),
    iso=st.booleans(),
)
def test_well_framed_commands_with_random_data_change_nothing(
    locked_card: dict[str, object], code: int, data: bytes, iso: bool
) -> None:
    card = replay_card(locked_card)
    card.process(h("905A0000034B534800"))  # select the KSH application
    command = (
        (bytes((0x90, code, 0, 0, len(data))) + data + b"\x00")
        if iso and data
        else bytes((0x90, code, 0, 0, 0))
        if iso
        else bytes((code,)) + data
    )
    assert_clear_answer(card.process(command), native=not iso)
    assert card.to_dict() == locked_card


class MutatingReader:
    """Wraps a reader and alters the n-th command on its way to the card."""

    def __init__(self, inner: EmulatedReader, index: int, mutate) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.index = index
        self.mutate = mutate
        self.sent = 0
        self.name = inner.name

    def transmit(self, command: bytes) -> bytes:
        self.sent += 1
        if self.sent == self.index:
            command = self.mutate(command)
        return self.inner.transmit(command)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(1, 12),
    position=st.integers(0, 200),
    kind=st.sampled_from(["flip", "truncate", "extend", "replace"]),
    noise=st.binary(min_size=1, max_size=8),
)
def test_mutated_tap_leaves_old_or_new_state_entirely(
    locked_card: dict[str, object], index: int, position: int, kind: str, noise: bytes
) -> None:
    def mutate(command: bytes) -> bytes:
        at = position % len(command)
        if kind == "flip":
            return command[:at] + bytes((command[at] ^ noise[0] or 1,)) + command[at + 1 :]
        if kind == "truncate":
            return command[:at]
        if kind == "extend":
            return command + noise
        return noise

    card = EmulatedCard.from_dict(copy.deepcopy(locked_card))  # type: ignore[arg-type]
    inner = EmulatedReader()
    inner.insert(card)
    session = KshCard(MutatingReader(inner, index, mutate), store.view(KeyRole.DEBIT))  # type: ignore[arg-type]
    try:
        session.read_state()
        session.debit(1_000, b"\x07" * 48, terminal_id=3, time_unix_seconds=5)
    except CardError:
        pass
    inner.insert(card)
    after = KshCard(inner, store.view(KeyRole.READ)).read_state()
    if after.balance_rupiah == 50_000:
        assert after.trip_state == bytes(48)
        assert after.counter == 0
    else:
        assert (after.balance_rupiah, after.trip_state, after.counter) == (49_000, b"\x07" * 48, 1)


@settings(max_examples=400, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(session_commands),
            st.binary(max_size=8),  # header: short, as real headers are
            st.binary(max_size=40),
            st.sampled_from(list(CommMode)),
        ),
        min_size=1,
        max_size=6,
    ),
    generation=st.sampled_from(["ev1", "ev2"]),
)
def test_random_commands_with_valid_secure_messaging_get_a_clear_status(
    steps: list[tuple[int, bytes, bytes, CommMode]], generation: str
) -> None:
    """Inside an authenticated session, with MACs and cryptograms that verify: whatever the
    content, the card answers with a status (and never crashes)."""
    card = EmulatedCard(h("04010203040506"))
    reader = EmulatedReader()
    reader.insert(card)
    desfire = Desfire(reader)
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.create_application(aid, 0x0F, 2)
    desfire.select_application(aid)
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.create_value_file(
        2,
        CommMode.MAC,
        AccessRights(0, 0, 0, 0),
        -5,
        5,
        0,
        limited_credit_enabled=True,
        free_get_value=False,
    )
    desfire.create_cyclic_record_file(3, CommMode.FULL, AccessRights(0, 0, 0, 0), 4, 2)
    for code, header, data, mode in steps:
        if desfire.authentication is None:
            if generation == "ev2":
                desfire.authenticate_ev2_first(0, bytes(16))
            else:
                desfire.authenticate_aes(0, bytes(16))
        payload = desfire._protect(code, header, data, mode)
        answer = reader.transmit(wrap(code, payload))
        assert answer[-2:] in valid_status_words
        desfire.authentication = None  # the reader cannot know how the card took it


def wrap(code: int, payload: bytes) -> bytes:
    from card_reader.apdu import wrap_command

    return wrap_command(code, payload[:250], Framing.ISO_WRAPPED)


@pytest.mark.parametrize("generation", ["ev1", "ev2"])
def test_short_and_empty_bodies_with_valid_secure_messaging(generation: str) -> None:
    """Every command code, every mode, headers of 0..8 bytes (zeros or 0xFF), no data: the
    needles a random search misses. The card must answer each with a status."""
    card = EmulatedCard(h("04010203040506"))
    reader = EmulatedReader()
    reader.insert(card)
    desfire = Desfire(reader)
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.create_application(aid, 0x0F, 2)
    desfire.select_application(aid)
    authenticate = (
        desfire.authenticate_ev2_first if generation == "ev2" else desfire.authenticate_aes
    )
    for code in session_commands:
        for mode in CommMode:
            for header in [bytes(n) for n in range(9)] + [b"\xff" * n for n in range(1, 9)]:
                authenticate(0, bytes(16))
                payload = desfire._protect(code, header, b"", mode)
                answer = reader.transmit(wrap(code, payload))
                assert answer[-2:] in valid_status_words, (hex(code), mode, header.hex())
                desfire.authentication = None
