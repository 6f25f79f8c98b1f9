"""DESFire file vocabulary shared by the reader side and the software card: file types,
communication modes and access rights (`reference/desfire.md` §4.1)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

free_access = 0xE  # access-rights nibble: no key needed
no_access = 0xF  # access-rights nibble: never


class CommMode(enum.IntEnum):
    PLAIN = 0x00
    MAC = 0x01
    FULL = 0x03


class FileType(enum.IntEnum):
    STANDARD_DATA = 0x00
    BACKUP_DATA = 0x01
    VALUE = 0x02
    LINEAR_RECORD = 0x03
    CYCLIC_RECORD = 0x04
    TRANSACTION_MAC = 0x05  # EV2: TMC ‖ TMV of the application's last transaction (§5)


@dataclass(frozen=True, slots=True)
class AccessRights:
    """Key numbers (0..13), 0xE free, 0xF never. Wire form: LE16 of R<<12 | W<<8 | RW<<4 | Chg."""

    read: int
    write: int
    read_write: int
    change: int

    def __post_init__(self) -> None:
        for name in ("read", "write", "read_write", "change"):
            assert 0 <= getattr(self, name) <= 0xF, name

    def to_bytes(self) -> bytes:
        value = self.read << 12 | self.write << 8 | self.read_write << 4 | self.change
        return value.to_bytes(2, "little")

    @classmethod
    def from_bytes(cls, raw: bytes) -> AccessRights:
        value = int.from_bytes(raw, "little")
        return cls(value >> 12 & 0xF, value >> 8 & 0xF, value >> 4 & 0xF, value & 0xF)
