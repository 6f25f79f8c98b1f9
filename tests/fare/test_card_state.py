"""The card's trip-state file: 48 bytes, versioned, checked; garbage is refused clearly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus_terminals.fare.card_state import card_state_bytes, decode_card_state, encode_card_state
from bus_terminals.fare.model import CapSlot, CardState, CardStateError, blank_card_state

indices = st.one_of(st.just(-1), st.integers(0, 0xFFFE))
amounts = st.integers(-(2**31), 2**31 - 1)


@st.composite
def card_states(draw: st.DrawFn) -> CardState:
    last = draw(st.integers(0, 2**32 - 1))
    back = st.integers(0, min(last, 0xFFFF))
    return CardState(
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


@given(card_states())
def test_round_trip(state: CardState) -> None:
    data = encode_card_state(state)
    assert len(data) == card_state_bytes == 48
    assert decode_card_state(data) == state


def test_blank_state_round_trips_with_empty_cap_slots() -> None:
    data = encode_card_state(blank_card_state)
    decoded = decode_card_state(data)
    assert decoded == blank_card_state._replace(caps=(CapSlot(0, 0, 0), CapSlot(0, 0, 0)))
    assert decode_card_state(data, cap_slots_used=0) == blank_card_state


def test_long_gaps_saturate_instead_of_wrapping() -> None:
    state = blank_card_state._replace(last_time_s=10**9, effective_start_s=10**9 - 200_000)
    assert decode_card_state(encode_card_state(state)).effective_start_s == 10**9 - 0xFFFF


def test_garbage_is_refused_with_a_clear_error() -> None:
    good = encode_card_state(blank_card_state)
    with pytest.raises(CardStateError, match="is 47 bytes, expected 48"):
        decode_card_state(good[:-1])
    flipped = bytes([good[0], good[1] ^ 0x01, *good[2:]])
    with pytest.raises(CardStateError, match="check byte is wrong"):
        decode_card_state(flipped)
    with pytest.raises(CardStateError, match="check byte is wrong"):
        decode_card_state(bytes(48))
    with pytest.raises(CardStateError, match="check byte is wrong"):
        decode_card_state(b"\xff" * 48)


@given(st.binary(min_size=48, max_size=48))
def test_random_bytes_decode_or_raise_card_state_error(data: bytes) -> None:
    try:
        state = decode_card_state(data)
    except CardStateError:
        return
    assert encode_card_state(state) == data  # whatever decodes is exactly what we would write


def test_version_and_flags_are_checked() -> None:
    import zlib

    body = bytearray(encode_card_state(blank_card_state)[:-1])
    body[0] = 2 << 4
    with pytest.raises(CardStateError, match="version 2 is not 1"):
        decode_card_state(bytes(body) + bytes((zlib.crc32(bytes(body)) & 0xFF,)))
    body[0] = 1 << 4 | 0x08
    with pytest.raises(CardStateError, match="unknown flags"):
        decode_card_state(bytes(body) + bytes((zlib.crc32(bytes(body)) & 0xFF,)))
