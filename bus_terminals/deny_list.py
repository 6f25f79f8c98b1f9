"""The deny list held on a terminal: millions of card numbers, looked up in microseconds.

A sorted `array('Q')` of card numbers (as unsigned 64-bit integers: 19 decimal digits fit) and
`bisect`: 8 bytes a card (5 million cards: 40 MB; a `set` of ints needs ~6 times that), and a
lookup is ~23 comparisons in C. Additions and lifts arrive in small deltas from the back office
and are merged in one pass; a full list arrives as the binary form `to_bytes` makes (little-endian u64,
sorted), which loads with one `frombytes`.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable
from pathlib import Path

from card_reader.durable import replace_file

card_number_value_max = 2**64 - 1


def card_number_value(card_number: str) -> int:
    value = int(card_number)
    assert 0 <= value <= card_number_value_max, card_number
    return value


class DenyList:
    def __init__(self, card_numbers: Iterable[int] = (), version: int = 0) -> None:
        self.values = array("Q", sorted(set(card_numbers)))
        self.version = version

    def __len__(self) -> int:
        return len(self.values)

    def __contains__(self, card_number: str) -> bool:
        value = card_number_value(card_number)
        index = bisect.bisect_left(self.values, value)
        return index < len(self.values) and self.values[index] == value

    def add(self, card_numbers: Iterable[str], version: int) -> None:
        """Merge a delta (usually a handful of cards) and move to `version`."""
        additions = sorted({card_number_value(number) for number in card_numbers})
        if additions and len(additions) * 64 < len(self.values):
            # A few cards into millions: insert in place (no copy of the list).
            for value in additions:
                index = bisect.bisect_left(self.values, value)
                if index == len(self.values) or self.values[index] != value:
                    self.values.insert(index, value)
        elif additions:
            self.values = array("Q", sorted(set(self.values).union(additions)))
        self.version = max(self.version, version)

    def remove(self, card_numbers: Iterable[str]) -> None:
        """Take off cards whose entries staff lifted (a handful at a time; absent ones are
        fine). The version moves with the `add` of the same download."""
        for value in sorted({card_number_value(number) for number in card_numbers}):
            index = bisect.bisect_left(self.values, value)
            if index < len(self.values) and self.values[index] == value:
                del self.values[index]

    def to_bytes(self) -> bytes:
        return self.values.tobytes() if _little_endian() else _swapped(self.values).tobytes()

    @classmethod
    def from_bytes(cls, raw: bytes, version: int) -> DenyList:
        if len(raw) % 8:
            raise ValueError(f"deny list of {len(raw)} bytes is not a whole number of entries")
        values = array("Q")
        values.frombytes(raw)
        if not _little_endian():
            values = _swapped(values)
        if any(values[index] >= values[index + 1] for index in range(len(values) - 1)):
            raise ValueError("deny list is not strictly sorted")
        deny_list = cls(version=version)
        deny_list.values = values
        return deny_list

    def save(self, path: Path) -> None:
        # Durable and atomic: a power cut leaves the old list or the new one.
        replace_file(path, self.version.to_bytes(8, "little") + self.to_bytes())

    @classmethod
    def load(cls, path: Path) -> DenyList:
        if not path.exists():
            return cls()
        raw = path.read_bytes()
        if len(raw) < 8:
            raise ValueError(f"{path}: a deny list of {len(raw)} bytes has no version")
        return cls.from_bytes(raw[8:], int.from_bytes(raw[:8], "little"))


def _little_endian() -> bool:
    import sys

    return sys.byteorder == "little"


def _swapped(values: array[int]) -> array[int]:
    copy = array("Q", values)
    copy.byteswap()
    return copy
