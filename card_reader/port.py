"""The reader port: the one narrow interface between card protocol code and hardware.

Protocol code (DESFire, the KSH application) sees only `ReaderPort`. Implementations: the PC/SC
driver (`card_reader.pcsc`, the only module importing `smartcard`) and the in-process emulator
reader. Two error kinds: the reader failed, or the card failed (gone, mute, protocol broken).
Both carry the reader name, the card UID when known, and the APDU transcript in hex.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable


def hex_transcript(exchanges: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """Raw (command, response) exchanges as the errors carry them. Readers keep raw bytes and
    format only when an error is raised: a tap makes a dozen exchanges and rarely fails."""
    return tuple((command.hex().upper(), response.hex().upper()) for command, response in exchanges)


class ReaderPortError(Exception):
    """Base of the two failure kinds. `transcript` holds (command hex, response hex) pairs."""

    def __init__(
        self,
        message: str,
        *,
        reader_name: str,
        card_uid: bytes | None = None,
        transcript: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.message = message  # without the reader, card and transcript
        self.reader_name = reader_name
        self.card_uid = card_uid
        self.transcript = transcript
        uid = card_uid.hex().upper() if card_uid else "unknown"
        exchanges = "; ".join(f"> {command} < {response}" for command, response in transcript)
        detail = f" [{exchanges}]" if exchanges else ""
        super().__init__(f"{message} (reader {reader_name!r}, card {uid}){detail}")


class ReaderError(ReaderPortError):
    """The reader itself failed: unplugged, pcscd gone, no such reader."""


class CardError(ReaderPortError):
    """The card failed: removed mid-exchange, mute, or answered outside the protocol."""


@runtime_checkable
class ReaderPort(Protocol):
    """What protocol code needs from a reader. Blocking calls; timeouts in milliseconds."""

    @property
    def name(self) -> str: ...

    def card_present(self) -> bool: ...

    def wait_for_card(self, timeout_ms: int) -> bool:
        """Block until a card is present (and connected); False on timeout."""
        ...

    def wait_for_removal(self, timeout_ms: int) -> bool:
        """Block until the card is gone; False on timeout."""
        ...

    def atr(self) -> bytes: ...

    def transmit(self, command: bytes) -> bytes:
        """Send one C-APDU, return the whole R-APDU (data and status word)."""
        ...
