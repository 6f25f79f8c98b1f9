"""The vpcd wire codec and the bridge's socket loop, against a stand-in vpcd on loopback.

The stand-in server speaks vpcd's side of the protocol (and, like vpcd, writes the length and
the payload in two separate sends), so these tests need neither pcscd nor the real driver.
"""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from card_reader.emulator import CardPoweredOff, CardPowerLost
from card_reader.vpcd import (
    FrameDecoder,
    VpcdAddress,
    VpcdBridge,
    VpcdMessage,
    answer,
    classify,
    encode_frame,
    frame_payload_bytes_max,
)

test_atr = bytes.fromhex("3B8180018080")
test_uid = bytes.fromhex("04A1B2C3D4E5F6")
get_uid_command = bytes.fromhex("FFCA000000")


class EchoCard:
    """Answers GET DATA UID as the emulator does, and any other command with its bytes reversed
    and `91 00`; records power changes."""

    def __init__(self) -> None:
        self.uid = test_uid
        self.powered = False
        self.power_changes: list[str] = []
        self.commands: list[bytes] = []
        self.tear_at_command: int | None = None

    def atr(self) -> bytes:
        return test_atr

    def power_on(self) -> None:
        self.powered = True
        self.power_changes.append("on")

    def power_off(self) -> None:
        self.powered = False
        self.power_changes.append("off")

    def process(self, command: bytes) -> bytes:
        self.commands.append(command)
        if self.tear_at_command == len(self.commands):
            raise CardPowerLost("torn")
        if command == get_uid_command:
            return self.uid + b"\x90\x00"
        return command[::-1] + b"\x91\x00"


def expected_answer(payload: bytes) -> bytes | None:
    kind = classify(payload)
    if kind in (VpcdMessage.power_off, VpcdMessage.power_on, VpcdMessage.reset):
        return None
    if kind is VpcdMessage.get_atr:
        return test_atr
    if not payload:
        return bytes.fromhex("6700")
    if payload == get_uid_command:
        return test_uid + b"\x90\x00"
    return payload[::-1] + b"\x91\x00"


# ---------------------------------------------------------------------------- codec


@given(st.lists(st.binary(max_size=300), max_size=8), st.data())
def test_frames_survive_any_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(payload) for payload in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    decoder = FrameDecoder()
    decoded: list[bytes] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        decoded += decoder.feed(wire[start:cut])
        start = cut
    assert decoded == payloads
    assert decoder.pending_bytes == 0


@given(st.binary(max_size=2000), st.integers(1, 64))
def test_decoder_takes_any_bytes_without_crashing(wire: bytes, chunk_bytes: int) -> None:
    decoder = FrameDecoder()
    decoded: list[bytes] = []
    for start in range(0, len(wire), chunk_bytes):
        decoded += decoder.feed(wire[start : start + chunk_bytes])
    consumed = sum(2 + len(payload) for payload in decoded)
    assert consumed + decoder.pending_bytes == len(wire)
    # Whatever was decoded re-encodes to exactly the bytes it came from.
    assert b"".join(encode_frame(payload) for payload in decoded) == wire[:consumed]


@given(st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=5), st.data())
def test_mutated_frames_never_crash_the_decoder(payloads: list[bytes], data: st.DataObject) -> None:
    wire = bytearray(b"".join(encode_frame(payload) for payload in payloads))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(wire) - 1))
        wire[position] = data.draw(st.integers(0, 255))
    decoder = FrameDecoder()
    decoded = decoder.feed(bytes(wire))
    assert sum(2 + len(payload) for payload in decoded) + decoder.pending_bytes == len(wire)


def test_encode_refuses_what_the_length_cannot_say() -> None:
    assert encode_frame(b"\x04") == b"\x00\x01\x04"
    assert len(encode_frame(bytes(frame_payload_bytes_max))) == 2 + frame_payload_bytes_max
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(bytes(frame_payload_bytes_max + 1))


def test_one_byte_messages_are_control_only_for_the_four_control_values() -> None:
    assert classify(b"\x00") is VpcdMessage.power_off
    assert classify(b"\x01") is VpcdMessage.power_on
    assert classify(b"\x02") is VpcdMessage.reset
    assert classify(b"\x04") is VpcdMessage.get_atr
    for native_command in (0x03, 0x60, 0xAF, 0x6A, 0x6F, 0x51, 0xC7, 0xA7, 0xFF):
        assert classify(bytes([native_command])) is VpcdMessage.apdu
    assert classify(b"\x00\x00") is VpcdMessage.apdu


@given(st.binary(max_size=64))
def test_answer_to_any_message(payload: bytes) -> None:
    card = EchoCard()
    assert answer(card, payload) == expected_answer(payload)
    goes_to_card = classify(payload) is VpcdMessage.apdu and payload != b""
    assert card.commands == ([payload] if goes_to_card else [])


def test_power_messages_drive_the_card() -> None:
    card = EchoCard()
    for control in (b"\x01", b"\x00", b"\x02"):
        assert answer(card, control) is None
    assert card.power_changes == ["on", "off", "off", "on"]
    assert card.powered


def test_address_parsing() -> None:
    assert VpcdAddress.parse("127.0.0.1:35964") == VpcdAddress("127.0.0.1", 35964)
    assert VpcdAddress.parse(":35963") == VpcdAddress("127.0.0.1", 35963)
    assert VpcdAddress.parse("vpcd.local") == VpcdAddress("vpcd.local", 35963)
    assert str(VpcdAddress("::1", 1)) == "::1:1"
    for bad in ("host:", "host:port", "host:0", "host:70000"):
        with pytest.raises(ValueError, match="port"):
            VpcdAddress.parse(bad)


# ---------------------------------------------------------------------------- the socket loop


class StandInVpcd:
    """vpcd's side: listens, accepts one card at a time, sends framed messages in two writes."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(5)
        self.address = VpcdAddress("127.0.0.1", self.server.getsockname()[1])
        self.connection: socket.socket | None = None
        self.decoder = FrameDecoder()
        self.received: list[bytes] = []  # answers decoded but not yet taken

    def accept(self) -> None:
        self.connection, _ = self.server.accept()
        self.connection.settimeout(5)
        self.decoder = FrameDecoder()
        self.received = []

    def send(self, payload: bytes) -> None:
        assert self.connection is not None
        frame = encode_frame(payload)
        self.connection.sendall(frame[:2])
        self.connection.sendall(frame[2:])

    def receive(self) -> bytes:
        assert self.connection is not None
        while not self.received:  # (each recv waits at most the socket's 5 s timeout)
            data = self.connection.recv(4096)
            if not data:  # else this loop would spin for ever on a closed socket
                raise AssertionError("the bridge hung up before answering")
            self.received += self.decoder.feed(data)
        return self.received.pop(0)

    def exchange(self, payload: bytes) -> bytes:
        self.send(payload)
        return self.receive()

    def hang_up(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None

    def close(self) -> None:
        self.hang_up()
        self.server.close()


@pytest.fixture
def vpcd() -> Iterator[StandInVpcd]:
    server = StandInVpcd()
    yield server
    server.close()


def test_bridge_answers_vpcd_messages_in_order(vpcd: StandInVpcd) -> None:
    card = EchoCard()
    with VpcdBridge(card, vpcd.address):
        vpcd.accept()
        vpcd.send(b"\x01")  # power on: no answer
        assert vpcd.exchange(b"\x04") == test_atr
        assert vpcd.exchange(get_uid_command) == test_uid + b"\x90\x00"
        assert vpcd.exchange(b"\x60") == b"\x60\x91\x00"  # native GetVersion, 1 byte
        apdu = bytes.fromhex("905A00000301020300")
        assert vpcd.exchange(apdu) == apdu[::-1] + b"\x91\x00"
        # Two frames in one write are answered one by one.
        assert vpcd.connection is not None
        vpcd.connection.sendall(encode_frame(b"\x04") + encode_frame(b"\xaa\xbb"))
        assert vpcd.receive() == test_atr
        assert vpcd.receive() == b"\xbb\xaa\x91\x00"
    assert card.power_changes[0] == "on"
    assert not card.powered  # stopping the bridge takes the card out of the field


def test_bridge_reconnects_when_vpcd_comes_back(vpcd: StandInVpcd) -> None:
    card = EchoCard()
    with VpcdBridge(card, vpcd.address) as bridge:
        vpcd.accept()
        assert vpcd.exchange(b"\x04") == test_atr
        vpcd.hang_up()  # pcscd stopped, say
        vpcd.accept()  # and back: the bridge dials again by itself
        assert bridge.connected.wait(5)
        assert vpcd.exchange(b"\x04") == test_atr


def test_torn_card_leaves_the_field_until_inserted_again(vpcd: StandInVpcd) -> None:
    card = EchoCard()
    card.tear_at_command = 2
    with VpcdBridge(card, vpcd.address) as bridge:
        vpcd.accept()
        assert vpcd.exchange(b"\x11\x22") == b"\x22\x11\x91\x00"
        vpcd.send(b"\x33\x44")
        assert vpcd.connection is not None
        assert vpcd.connection.recv(16) == b""  # hung up without an answer
        assert bridge.card is None
        fresh = EchoCard()
        bridge.insert(fresh)
        vpcd.accept()
        assert vpcd.exchange(b"\x55\x66") == b"\x66\x55\x91\x00"
        assert fresh.commands == [b"\x55\x66"]


def test_remove_hangs_up_and_insert_dials_again(vpcd: StandInVpcd) -> None:
    card = EchoCard()
    with VpcdBridge(card, vpcd.address) as bridge:
        vpcd.accept()
        assert vpcd.exchange(b"\x04") == test_atr
        bridge.remove()
        assert vpcd.connection is not None
        assert vpcd.connection.recv(16) == b""
        assert not card.powered
        bridge.insert(card)
        vpcd.accept()
        assert vpcd.exchange(b"\x04") == test_atr


def test_garbage_from_vpcd_gets_framed_answers(vpcd: StandInVpcd) -> None:
    card = EchoCard()
    generator = random.Random(7)
    with VpcdBridge(card, vpcd.address):
        vpcd.accept()
        for _ in range(200):
            payload = bytes(
                generator.randrange(256) for _ in range(generator.choice((0, 1, 2, 5, 40)))
            )
            expected = expected_answer(payload)
            vpcd.send(payload)
            if expected is not None:
                assert vpcd.receive() == expected


def test_stop_returns_promptly_while_vpcd_is_away() -> None:
    # Nothing listens on this port: the bridge keeps retrying until stopped.
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    bridge = VpcdBridge(EchoCard(), VpcdAddress("127.0.0.1", port)).start()
    assert not bridge.connected.wait(0.3)
    stopper = threading.Thread(target=bridge.stop, daemon=True)
    stopper.start()
    stopper.join(timeout=3)
    assert not stopper.is_alive()


def test_inserting_another_card_swaps_them(vpcd: StandInVpcd) -> None:
    first, second = EchoCard(), EchoCard()
    second.uid = bytes.fromhex("04000000000002")
    with VpcdBridge(first, vpcd.address) as bridge:
        vpcd.accept()
        assert vpcd.exchange(get_uid_command) == test_uid + b"\x90\x00"
        bridge.insert(second)
        assert vpcd.connection is not None
        assert vpcd.connection.recv(16) == b""  # the first card left the field
        assert not first.powered
        vpcd.accept()
        vpcd.send(b"\x01")
        assert vpcd.exchange(get_uid_command) == second.uid + b"\x90\x00"


@given(
    st.lists(
        st.one_of(st.binary(min_size=1, max_size=80), st.sampled_from([b"\x00", b"\x02"])),
        max_size=12,
    ),
    st.data(),
)
def test_the_real_emulator_answers_any_message_vpcd_can_send(
    messages: list[bytes], data: st.DataObject
) -> None:
    """Random and mutated APDUs (and control messages) through the bridge's `answer`: the
    software card answers every APDU with at least a status while powered, and raises only
    CardPoweredOff (which the bridge turns into a card leaving the field) when it is not."""
    from card_reader.emulator import EmulatedCard

    card = EmulatedCard(test_uid)
    answer(card, b"\x01")
    valid = [
        bytes.fromhex(text)
        for text in ("9060000000", "90AF000000", "905A00000300000000", "00A4040007D276000085010000")
    ]
    for message in messages:
        if data.draw(st.booleans()):  # mutate a well-formed APDU instead
            base = bytearray(data.draw(st.sampled_from(valid)))
            base[data.draw(st.integers(0, len(base) - 1))] = data.draw(st.integers(0, 255))
            message = bytes(base)
        if classify(message) is VpcdMessage.apdu and not card.powered:
            with pytest.raises(CardPoweredOff):  # the bridge hangs up: a torn card
                answer(card, message)
            continue
        response = answer(card, message)
        if classify(message) is VpcdMessage.apdu:
            assert response is not None
            assert len(response) >= 1
