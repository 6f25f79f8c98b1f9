"""The card's trip-state file: `TripState` <-> 48 bytes.

Layout, version 2 (little-endian; indices are 0xFFFF when absent, the network index 0xFF; times
are UTC epoch seconds, earlier times kept as deltas back from `last_time_s`):

| offset | size | field |
|---|---|---|
| 0 | 1 | version (high nibble) · flags (bit 0 has_leg, bit 1 effective_network_mixed) |
| 1 | 1 | tariff_tag (low nibble) · chain_transfer_count (high nibble, saturates at 15) |
| 2 | 1 | pass_index (0 = none) |
| 3 | 4 | last_time_s (u32) |
| 7 | 2 | last_time_s - effective_start_s (u16) |
| 9 | 3 | last_time_s - chain_departure_s (u24) |
| 12 | 2 | chain_arrival_s - chain_departure_s (u16, the chain's first leg's ride) |
| 14 | 2 | effective_from_stop_index |
| 16 | 2 | effective_group_index |
| 18 | 1 | last_network_index (u8: a feed has at most 254 networks) |
| 19 | 2 | last_to_stop_index |
| 21 | 2 | chain_rule_index |
| 23 | 4 | effective_product_amount (i32, minor units) |
| 27 | 4 | effective_charged_amount (i32) |
| 31 | 2 | pass_last_day (u16, local days since 1970-01-01) |
| 33 | 7 | cap slot 0: period_day u16, paid_amount i32, paid_rides u8 |
| 40 | 7 | cap slot 1 |
| 47 | 1 | check: CRC-32 of bytes 0..46, low byte |

A delta back that does not fit (the largest value) reads as "long ago" (`last_time_s - 2**32`),
so an anchor too old for the card is too old for every rule: the duration-limit anchor
(`chain_departure_s`) reaches 2**24 - 1 s (194 days; `duration_limit` is at most 2**24 - 2 s), the
effective leg's start 0xFFFF s (joins need less). A first leg riding longer than 0xFFFF s keeps
an earlier arrival than it had (a transfer measured from it is judged stricter, never looser).

Version 1 (three 16-bit deltas back from `last_time_s`, the largest read as "long ago"; a
16-bit network index) is still read, so cards written before the change keep their pass, caps and
trip; it is written back as version 2.
"""

from __future__ import annotations

import struct
import zlib

from bus_terminals.fare.model import CapSlot, TripState, TripStateError, no_index

trip_state_bytes = 48
trip_state_version = 2
card_cap_slots = 2
#: The longest duration_limit the card can judge (one less than the saturated delta).
chain_delta_max = 2**24 - 1
_caps_format = "HiB" * card_cap_slots
_layout = struct.Struct("<BBBIHHBHHHBHHiiH" + _caps_format)
_layout_v1 = struct.Struct("<BBBIHHHHHHHHiiH" + _caps_format)
_short_max = 0xFFFF
_long_ago_s = 2**32
_index_none = 0xFFFF
_network_none = 0xFF
_flag_has_leg = 0x01
_flag_network_mixed = 0x02
_flags_known = _flag_has_leg | _flag_network_mixed

assert _layout.size + 1 == trip_state_bytes == _layout_v1.size + 1


def _index(value: int, none: int = _index_none) -> int:
    assert -1 <= value < none, value
    return none if value == no_index else value


def _delta(later_s: int, earlier_s: int, most: int) -> int:
    return min(max(later_s - earlier_s, 0), most)


def _back(last: int, delta: int, most: int) -> int:
    return last - _long_ago_s if delta == most else last - delta


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
    chain_back = _delta(last, state.chain_departure_s, chain_delta_max)
    body = _layout.pack(
        trip_state_version << 4 | flags,
        (state.tariff_tag & 0x0F) | min(state.chain_transfer_count, 15) << 4,
        state.pass_index,
        last,
        _delta(last, state.effective_start_s, _short_max),
        chain_back & 0xFFFF,
        chain_back >> 16,
        _delta(state.chain_arrival_s, _back(last, chain_back, chain_delta_max), _short_max),
        _index(state.effective_from_stop_index),
        _index(state.effective_group_index),
        _index(state.last_network_index, _network_none),
        _index(state.last_to_stop_index),
        _index(state.chain_rule_index),
        state.effective_product_amount,
        state.effective_charged_amount,
        state.pass_last_day,
        *caps,
    )
    return body + bytes((zlib.crc32(body) & 0xFF,))


def _from_index(value: int, none: int = _index_none) -> int:
    return no_index if value == none else value


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
    version, flags = body[0] >> 4, body[0] & 0x0F
    if version not in (1, trip_state_version):
        raise TripStateError(f"trip state version {version} is not {trip_state_version}")
    if flags & ~_flags_known:
        raise TripStateError(f"trip state has unknown flags {flags:#x}")
    if version == 1:
        values = _layout_v1.unpack(body)
        last = values[3]
        start = _back(last, values[4], _short_max)
        departure = _back(last, values[5], _short_max)
        arrival = _back(last, values[6], _short_max)
        network = _from_index(values[9])
        if network >= _network_none:
            raise TripStateError(f"trip state network index {network} is over {_network_none - 1}")
        rest = values[7:9], values[10:]
    else:
        values = _layout.unpack(body)
        last = values[3]
        start = _back(last, values[4], _short_max)
        departure = _back(last, values[5] | values[6] << 16, chain_delta_max)
        arrival = departure + values[7]
        network = _from_index(values[10], _network_none)
        rest = values[8:10], values[11:]
    (from_stop, group), (to_stop, rule, product, charged, pass_last_day, *cap_values) = rest
    caps = tuple(
        CapSlot(*cap_values[3 * slot : 3 * slot + 3])
        for slot in range(min(cap_slots_used, card_cap_slots))
    )
    return TripState(
        tariff_tag=values[1] & 0x0F,
        has_leg=bool(flags & _flag_has_leg),
        last_time_s=last,
        effective_start_s=start,
        effective_from_stop_index=_from_index(from_stop),
        effective_network_mixed=bool(flags & _flag_network_mixed),
        effective_group_index=_from_index(group),
        effective_product_amount=product,
        effective_charged_amount=charged,
        last_network_index=network,
        last_to_stop_index=_from_index(to_stop),
        chain_rule_index=_from_index(rule),
        chain_transfer_count=values[1] >> 4,
        chain_departure_s=departure,
        chain_arrival_s=arrival,
        pass_index=values[2],
        pass_last_day=pass_last_day,
        caps=caps,
    )
