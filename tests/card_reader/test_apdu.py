"""APDU codec, framings, chaining helpers and status words; parsers under random input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from card_reader.apdu import (
    ApduFormatError,
    CommandApdu,
    Framing,
    ResponseApdu,
    Status,
    split_frames,
    status_meanings,
    status_name,
    unwrap_command,
    unwrap_response,
    wrap_command,
    wrap_response,
)
from card_reader.ksh_card import LayoutError, LogRecord, Profile

h = bytes.fromhex


def test_status_table_is_complete_and_named() -> None:
    assert set(status_meanings) == set(Status)
    assert status_name(0x1E) == "INTEGRITY_ERROR"
    assert status_name(0x9D) == "PERMISSION_DENIED"
    assert status_name(0x42) == "UNKNOWN_STATUS_42"
    assert len(Status) == 22


def test_desfire_wrapping_matches_the_reference() -> None:
    assert wrap_command(0x71, h("0000"), Framing.ISO_WRAPPED) == h("9071000002000000")
    assert wrap_command(0x60, b"", Framing.ISO_WRAPPED) == h("9060000000")
    assert wrap_command(0x5A, h("16AE00"), Framing.NATIVE) == h("5A16AE00")
    assert unwrap_response(h("0102 91AF"), Framing.ISO_WRAPPED).code == 0xAF
    assert unwrap_response(h("00 0102"), Framing.NATIVE).data == h("0102")
    assert wrap_response(0x00, h("AB"), Framing.ISO_WRAPPED) == h("AB9100")
    frame, framing = unwrap_command(h("90AF000020") + bytes(32) + h("00"))
    assert (frame.code, len(frame.data), framing) == (0xAF, 32, Framing.ISO_WRAPPED)
    assert unwrap_command(h("AA00")) == (unwrap_command(h("AA00"))[0], Framing.NATIVE)


def test_parse_errors_name_the_field_the_value_and_the_raw_bytes() -> None:
    with pytest.raises(ApduFormatError, match=r"bad Lc 5: .*raw 9071000005000000"):
        CommandApdu.parse(h("9071000005000000"))
    with pytest.raises(ApduFormatError, match=r"bad P1 P2 '0100'.*raw 9071010000"):
        unwrap_command(h("9071010000"))
    with pytest.raises(ApduFormatError, match=r"bad SW1 '90'"):
        unwrap_response(h("9000"), Framing.ISO_WRAPPED)
    with pytest.raises(ApduFormatError, match="bad length 1"):
        ResponseApdu.parse(h("91"))


def test_split_frames() -> None:
    assert split_frames(b"", 5, 5) == [b""]
    assert split_frames(bytes(12), 5, 4) == [bytes(5), bytes(4), bytes(3)]


@given(st.binary(max_size=300))
def test_command_parser_never_crashes(raw: bytes) -> None:
    try:
        apdu = CommandApdu.parse(raw)
    except ApduFormatError as error:
        assert error.raw == raw
        return
    assert apdu.to_bytes() == raw


@given(st.binary(max_size=300), st.sampled_from(list(Framing)))
def test_response_and_frame_parsers_never_crash(raw: bytes, framing: Framing) -> None:
    try:
        frame = unwrap_response(raw, framing)
    except ApduFormatError as error:
        assert error.raw == raw
    else:
        assert wrap_response(frame.code, frame.data, framing) == raw
    try:
        unwrap_command(raw)
    except ApduFormatError as error:
        assert error.raw == raw


@given(st.binary(max_size=40))
def test_layout_decoders_never_crash(raw: bytes) -> None:
    for decode in (Profile.from_bytes, LogRecord.from_bytes):
        try:
            decoded = decode(raw)
        except LayoutError as error:
            assert error.field_name
        else:
            assert decoded.to_bytes() == raw
