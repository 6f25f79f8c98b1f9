"""The card's trip-state file: `TripState` <-> 48 bytes.

Layout, version 1 (little-endian; indices are 0xFFFF when absent; times are UTC epoch seconds,
earlier times kept as 16-bit deltas back from `last_time_s`, saturating at 0xFFFF, which the
tariff limits make harmless: joins need < 0xFFFF s, duration limits are <= 0xFFFE s):

| offset | size | field |
|---|---|---|
| 0 | 1 | version (high nibble) · flags (bit 0 has_leg, bit 1 effective_network_mixed) |
| 1 | 1 | tariff_tag (low nibble) · chain_transfer_count (high nibble, saturates at 15) |
| 2 | 1 | pass_index (0 = none) |
| 3 | 4 | last_time_s (u32) |
| 7 | 2 | last_time_s - effective_start_s |
| 9 | 2 | last_time_s - chain_departure_s |
| 11 | 2 | last_time_s - chain_arrival_s |
| 13 | 2 | effective_from_stop_index |
| 15 | 2 | effective_group_index |
| 17 | 2 | last_network_index |
| 19 | 2 | last_to_stop_index |
| 21 | 2 | chain_rule_index |
| 23 | 4 | effective_product_amount (i32, minor units) |
| 27 | 4 | effective_charged_amount (i32) |
| 31 | 2 | pass_last_day (u16, local days since 1970-01-01) |
| 33 | 7 | cap slot 0: period_day u16, paid_amount i32, paid_rides u8 |
| 40 | 7 | cap slot 1 |
| 47 | 1 | check: CRC-32 of bytes 0..46, low byte |
"""

from __future__ import annotations

import struct
import zlib

from bus_terminals.fare.model import CapSlot, TripState, TripStateError, no_index

trip_state_bytes = 48
trip_state_version = 1
card_cap_slots = 2
_layout = struct.Struct("<BBBIHHHHHHHHiiH" + "HiB" * card_cap_slots)
_delta_max = 0xFFFF
_index_none = 0xFFFF
_flag_has_leg = 0x01
_flag_network_mixed = 0x02
_flags_known = _flag_has_leg | _flag_network_mixed

assert _layout.size + 1 == trip_state_bytes


def _index(value: int) -> int:
    assert -1 <= value < _index_none, value
    return _index_none if value == no_index else value


def _delta(later_s: int, earlier_s: int) -> int:
    return min(max(later_s - earlier_s, 0), _delta_max)


def encode_trip_state(state: TripState) -> bytes:
    """48 bytes for the card's trip-state file."""
    assert len(state.caps) <= card_cap_slots, "the card has two cap slots"
    assert 0 <= state.last_time_s < 2**32
    assert 0 <= state.pass_index <= 0xFF
    flags = (_flag_has_leg if state.has_leg else 0) | (
        _flag_network_mixed if state.effective_network_mixed else 0
    )
    caps: list[int] = []
    for slot in (*state.caps, *([CapSlot(0, 0, 0)] * (card_cap_slots - len(state.caps)))):
        caps += (slot.period_day, slot.paid_amount, min(slot.paid_rides, 0xFF))
    last = state.last_time_s
    body = _layout.pack(
        trip_state_version << 4 | flags,
        (state.tariff_tag & 0x0F) | min(state.chain_transfer_count, 15) << 4,
        state.pass_index,
        last,
        _delta(last, state.effective_start_s),
        _delta(last, state.chain_departure_s),
        _delta(last, state.chain_arrival_s),
        _index(state.effective_from_stop_index),
        _index(state.effective_group_index),
        _index(state.last_network_index),
        _index(state.last_to_stop_index),
        _index(state.chain_rule_index),
        state.effective_product_amount,
        state.effective_charged_amount,
        state.pass_last_day,
        *caps,
    )
    return body + bytes((zlib.crc32(body) & 0xFF,))


def _from_index(value: int) -> int:
    return no_index if value == _index_none else value


def decode_trip_state(data: bytes, cap_slots_used: int = card_cap_slots) -> TripState:
    """Read a trip-state file; raise `TripStateError` for anything that is not one we wrote.

    `cap_slots_used` is how many caps the tariff applies to this card (slots beyond it are
    dropped); it does not change what is accepted.
    """
    if len(data) != trip_state_bytes:
        raise TripStateError(f"trip state is {len(data)} bytes, expected {trip_state_bytes}")
    body = bytes(data[:-1])
    if zlib.crc32(body) & 0xFF != data[-1]:
        raise TripStateError(f"trip state check byte is wrong: {bytes(data).hex()}")
    values = _layout.unpack(body)
    version, flags = values[0] >> 4, values[0] & 0x0F
    if version != trip_state_version:
        raise TripStateError(f"trip state version {version} is not {trip_state_version}")
    if flags & ~_flags_known:
        raise TripStateError(f"trip state has unknown flags {flags:#x}")
    last = values[3]
    caps = tuple(
        CapSlot(values[15 + 3 * slot], values[16 + 3 * slot], values[17 + 3 * slot])
        for slot in range(min(cap_slots_used, card_cap_slots))
    )
    return TripState(
        tariff_tag=values[1] & 0x0F,
        has_leg=bool(flags & _flag_has_leg),
        last_time_s=last,
        effective_start_s=last - values[4],
        effective_from_stop_index=_from_index(values[7]),
        effective_network_mixed=bool(flags & _flag_network_mixed),
        effective_group_index=_from_index(values[8]),
        effective_product_amount=values[12],
        effective_charged_amount=values[13],
        last_network_index=_from_index(values[9]),
        last_to_stop_index=_from_index(values[10]),
        chain_rule_index=_from_index(values[11]),
        chain_transfer_count=values[1] >> 4,
        chain_departure_s=last - values[5],
        chain_arrival_s=last - values[6],
        pass_index=values[2],
        pass_last_day=values[14],
        caps=caps,
    )
