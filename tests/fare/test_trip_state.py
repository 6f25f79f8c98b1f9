"""The card's trip-state file: 48 bytes, versioned, checked; garbage is refused clearly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus_terminals.fare.model import CapSlot, TripState, TripStateError, blank_trip_state
from bus_terminals.fare.trip_state import decode_trip_state, encode_trip_state, trip_state_bytes

indices = st.one_of(st.just(-1), st.integers(0, 0xFFFE))
amounts = st.integers(-(2**31), 2**31 - 1)


@st.composite
def trip_states(draw: st.DrawFn) -> TripState:
    last = draw(st.integers(0, 2**32 - 1))
    back = st.integers(0, min(last, 0xFFFF))
    return TripState(
        tariff_tag=draw(st.integers(0, 15)),
        has_leg=draw(st.booleans()),
        last_time_s=last,
        effective_start_s=last - draw(back),
        effective_from_stop_index=draw(indices),
        effective_network_mixed=draw(st.booleans()),
        effective_group_index=draw(indices),
        effective_product_amount=draw(amounts),
        effective_charged_amount=draw(amounts),
        last_network_index=draw(indices),
        last_to_stop_index=draw(indices),
        chain_rule_index=draw(indices),
        chain_transfer_count=draw(st.integers(0, 15)),
        chain_departure_s=last - draw(back),
        chain_arrival_s=last - draw(back),
        pass_index=draw(st.integers(0, 255)),
        pass_last_day=draw(st.integers(0, 0xFFFF)),
        caps=tuple(
            CapSlot(draw(st.integers(0, 0xFFFF)), draw(amounts), draw(st.integers(0, 255)))
            for _ in range(2)
        ),
    )


@given(trip_states())
def test_round_trip(state: TripState) -> None:
    data = encode_trip_state(state)
    assert len(data) == trip_state_bytes == 48
    assert decode_trip_state(data) == state


def test_blank_state_round_trips_with_empty_cap_slots() -> None:
    data = encode_trip_state(blank_trip_state)
    decoded = decode_trip_state(data)
    assert decoded == blank_trip_state._replace(caps=(CapSlot(0, 0, 0), CapSlot(0, 0, 0)))
    assert decode_trip_state(data, cap_slots_used=0) == blank_trip_state


def test_long_gaps_saturate_instead_of_wrapping() -> None:
    state = blank_trip_state._replace(last_time_s=10**9, effective_start_s=10**9 - 200_000)
    assert decode_trip_state(encode_trip_state(state)).effective_start_s == 10**9 - 0xFFFF


def test_garbage_is_refused_with_a_clear_error() -> None:
    good = encode_trip_state(blank_trip_state)
    with pytest.raises(TripStateError, match="is 47 bytes, expected 48"):
        decode_trip_state(good[:-1])
    flipped = bytes([good[0], good[1] ^ 0x01, *good[2:]])
    with pytest.raises(TripStateError, match="check byte is wrong"):
        decode_trip_state(flipped)
    with pytest.raises(TripStateError, match="check byte is wrong"):
        decode_trip_state(bytes(48))
    with pytest.raises(TripStateError, match="check byte is wrong"):
        decode_trip_state(b"\xff" * 48)


@given(st.binary(min_size=48, max_size=48))
def test_random_bytes_decode_or_raise_trip_state_error(data: bytes) -> None:
    try:
        state = decode_trip_state(data)
    except TripStateError:
        return
    assert encode_trip_state(state) == data  # whatever decodes is exactly what we would write


def test_version_and_flags_are_checked() -> None:
    import zlib

    body = bytearray(encode_trip_state(blank_trip_state)[:-1])
    body[0] = 2 << 4
    with pytest.raises(TripStateError, match="version 2 is not 1"):
        decode_trip_state(bytes(body) + bytes((zlib.crc32(bytes(body)) & 0xFF,)))
    body[0] = 1 << 4 | 0x08
    with pytest.raises(TripStateError, match="unknown flags"):
        decode_trip_state(bytes(body) + bytes((zlib.crc32(bytes(body)) & 0xFF,)))
