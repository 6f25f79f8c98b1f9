"""The card's trip-state file: 48 bytes, versioned, checked; garbage is refused clearly."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bus_terminals.fare.model import CapSlot, TripState, TripStateError, blank_trip_state
from bus_terminals.fare.trip_state import (
    chain_delta_max,
    decode_trip_state,
    encode_trip_state,
    trip_state_bytes,
)

indices = st.one_of(st.just(-1), st.integers(0, 0xFFFE))
networks = st.one_of(st.just(-1), st.integers(0, 0xFE))
days_31_s = 31 * 86_400
amounts = st.integers(-(2**31), 2**31 - 1)


@st.composite
def trip_states(draw: st.DrawFn) -> TripState:
    last = draw(st.integers(0, 2**32 - 1))
    back = st.integers(0, min(last, 0xFFFE))
    chain_back = draw(st.integers(0, min(last, chain_delta_max - 1)))
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
        last_network_index=draw(networks),
        last_to_stop_index=draw(indices),
        chain_rule_index=draw(indices),
        chain_transfer_count=draw(st.integers(0, 15)),
        chain_departure_s=last - chain_back,
        chain_arrival_s=last - chain_back + draw(st.integers(0, 0xFFFE)),
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


def test_long_gaps_read_as_long_ago_instead_of_wrapping() -> None:
    last = 10**9
    state = blank_trip_state._replace(
        last_time_s=last, effective_start_s=last - 200_000, chain_departure_s=last - 2**25
    )
    decoded = decode_trip_state(encode_trip_state(state))
    assert decoded.effective_start_s < last - 2**31  # too old for any join or transfer
    assert decoded.chain_departure_s < last - 2**31
    assert decode_trip_state(encode_trip_state(decoded)) == decoded


@given(st.integers(days_31_s, 2**32 - 1), st.integers(0, days_31_s), st.integers(0, 0xFFFE))
def test_a_31_day_chain_anchor_is_kept_to_the_second(last: int, back: int, ride: int) -> None:
    """Fails on version 1, which kept the anchor in 16 bits (65,535 s at most)."""
    state = blank_trip_state._replace(
        last_time_s=last, chain_departure_s=last - back, chain_arrival_s=last - back + ride
    )
    decoded = decode_trip_state(encode_trip_state(state))
    assert (decoded.chain_departure_s, decoded.chain_arrival_s) == (last - back, last - back + ride)


def _version_1(state: TripState) -> bytes:
    """The version 1 layout, as cards written before version 2 hold it."""
    last = state.last_time_s
    body = struct.pack(
        "<BBBIHHHHHHHHiiH" + "HiB" * 2,
        1 << 4 | int(state.has_leg) | int(state.effective_network_mixed) << 1,
        state.tariff_tag | state.chain_transfer_count << 4,
        state.pass_index,
        last,
        *(min(last - t, 0xFFFF) for t in (state.effective_start_s, state.chain_departure_s)),
        min(last - state.chain_arrival_s, 0xFFFF),
        *(
            0xFFFF if i == -1 else i
            for i in (
                state.effective_from_stop_index,
                state.effective_group_index,
                state.last_network_index,
                state.last_to_stop_index,
                state.chain_rule_index,
            )
        ),
        state.effective_product_amount,
        state.effective_charged_amount,
        state.pass_last_day,
        *(value for slot in state.caps for value in slot),
    )
    return body + bytes((zlib.crc32(body) & 0xFF,))


@given(trip_states())
def test_version_1_states_are_still_read(state: TripState) -> None:
    last = state.last_time_s
    assume(all(last - t < 0xFFFF for t in (state.chain_departure_s, state.chain_arrival_s)))
    assume(state.chain_arrival_s <= last)
    decoded = decode_trip_state(_version_1(state))
    assert decoded == state
    assert decode_trip_state(encode_trip_state(decoded)) == state  # written back as version 2


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
    if data[0] >> 4 == 1:  # version 1 is read, then written as version 2: stable from there
        state = decode_trip_state(encode_trip_state(state))
        data = encode_trip_state(state)
    assert encode_trip_state(state) == data  # whatever decodes is exactly what we would write


def test_version_and_flags_are_checked() -> None:
    body = bytearray(encode_trip_state(blank_trip_state)[:-1])
    body[0] = 3 << 4
    with pytest.raises(TripStateError, match="version 3 is not 2"):
        decode_trip_state(bytes(body) + bytes((zlib.crc32(bytes(body)) & 0xFF,)))
    body[0] = 2 << 4 | 0x08
    with pytest.raises(TripStateError, match="unknown flags"):
        decode_trip_state(bytes(body) + bytes((zlib.crc32(bytes(body)) & 0xFF,)))
