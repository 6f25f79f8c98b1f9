"""The PC/SC driver: `ReaderPort` over pcscd, through pyscard's thin `smartcard.scard` layer.

This is the only module that imports `smartcard`. It speaks to pcscd directly with
SCardTransmit (no observers, no per-call object churn) because it sits on the tap path.

Recovery: any PC/SC failure that means "the reader or pcscd went away" drops the context and
the card handle and raises `ReaderError`; the next call establishes a new context, finds the
reader again by the name or substring it was opened with, and carries on. A card that left
mid-exchange raises `CardError`; the next `wait_for_card` connects to whatever card comes next.
Both errors carry the reader name, the card UID when known and this card session's transcript.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import NoReturn

from smartcard import scard

from card_reader.port import CardError, ReaderError, hex_transcript

transcript_exchanges_max = 24  # the last exchanges with this card (a whole tap), for errors
status_wait_slice_ms = 250  # a blocking wait returns this often, so Ctrl-C gets through
# A loaded machine under libfaketime (CI's date runs) has been seen to need more than 10 s.
pcscd_start_timeout_ms = 30_000
pcscd_log = Path("/tmp/ksh-pcscd.log")  # what the pcscd we start says, kept for the next error
get_uid_command = bytes.fromhex("FFCA000000")  # PC/SC part 3 GET DATA: the card's UID

# pcscd or the reader is gone: drop everything, re-establish on the next call.
reader_failures = frozenset(
    {
        scard.SCARD_E_NO_SERVICE,
        scard.SCARD_E_SERVICE_STOPPED,
        scard.SCARD_E_INVALID_HANDLE,
        scard.SCARD_E_READER_UNAVAILABLE,
        scard.SCARD_E_UNKNOWN_READER,
        scard.SCARD_E_NO_READERS_AVAILABLE,
        scard.SCARD_F_COMM_ERROR,
    }
)
# Every other failure is the card's: gone, reset under us, mute, or not transacted.


class CardEvent(enum.Enum):
    inserted = "inserted"
    removed = "removed"


def describe(result: int) -> str:
    try:
        text = str(scard.SCardGetErrorMessage(result)).strip().rstrip(".")
    except Exception:  # pragma: no cover - pyscard never fails here in practice
        text = "unknown error"
    return f"{text} (0x{result & 0xFFFFFFFF:08X})"


def list_reader_names() -> tuple[str, ...]:
    """The readers pcscd knows now; ReaderError if pcscd cannot be reached."""
    context = establish_context("")
    try:
        return reader_names_in(context)
    finally:
        scard.SCardReleaseContext(context)


def reader_card_presence() -> tuple[tuple[str, bool], ...]:
    """Each reader pcscd knows, and whether a card is in it."""
    context = establish_context("")
    try:
        names = reader_names_in(context)
        if not names:
            return ()
        result, states = scard.SCardGetStatusChange(
            context, 0, [(name, scard.SCARD_STATE_UNAWARE) for name in names]
        )
        if result != scard.SCARD_S_SUCCESS:
            raise ReaderError(f"cannot read reader states: {describe(result)}", reader_name="")
        return tuple(
            (str(name), bool(state & scard.SCARD_STATE_PRESENT)) for name, state, _ in states
        )
    finally:
        scard.SCardReleaseContext(context)


def establish_context(reader_name: str) -> int:
    result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if result != scard.SCARD_S_SUCCESS:
        raise ReaderError(
            f"cannot reach pcscd: {describe(result)}; is pcscd running?", reader_name=reader_name
        )
    return int(context)


def reader_names_in(context: int) -> tuple[str, ...]:
    result, names = scard.SCardListReaders(context, [])
    if result in (scard.SCARD_E_NO_READERS_AVAILABLE, scard.SCARD_E_READER_UNAVAILABLE):
        return ()
    if result != scard.SCARD_S_SUCCESS:
        raise ReaderError(f"cannot list readers: {describe(result)}", reader_name="")
    return tuple(str(name) for name in names)


def pick_reader_name(names: tuple[str, ...], wanted: str) -> str:
    """The reader called `wanted`, or the only one whose name contains it (case-insensitive).

    An empty `wanted` picks the only reader there is.
    """
    if wanted in names:
        return wanted
    matching = [name for name in names if wanted.casefold() in name.casefold()]
    if len(matching) == 1:
        return matching[0]
    known = ", ".join(repr(name) for name in names) or "none"
    if not matching:
        raise ReaderError(f"no reader matches {wanted!r} (readers: {known})", reader_name=wanted)
    raise ReaderError(
        f"{len(matching)} readers match {wanted!r}, name one exactly (readers: {known})",
        reader_name=wanted,
    )


class PcscReader:
    """One PC/SC reader as a `ReaderPort`. Not thread-safe: one reader, one thread.

    `wanted` is the reader's name or a unique part of it ("" = the only reader). The reader is
    looked up at once (ReaderError if missing or ambiguous) and again after any reader failure.
    """

    def __init__(self, wanted: str = "") -> None:
        self._wanted = wanted
        self._name = wanted
        self._context: int | None = None
        self._card: int | None = None
        self._protocol = scard.SCARD_PCI_T1
        self._atr = b""
        self._card_uid: bytes | None = None
        self._transcript: collections.deque[tuple[bytes, bytes]] = collections.deque(
            maxlen=transcript_exchanges_max
        )
        self._ensure_context()

    # ------------------------------------------------------------------ ReaderPort

    @property
    def name(self) -> str:
        return self._name

    @property
    def card_uid(self) -> bytes | None:
        """The connected card's UID, once protocol code has asked for it (GET DATA UID): the
        driver notes the answer rather than spend an exchange of its own on every tap."""
        return self._card_uid

    def card_present(self) -> bool:
        return bool(self._reader_state(0, scard.SCARD_STATE_UNAWARE)[0] & scard.SCARD_STATE_PRESENT)

    def wait_for_card(self, timeout_ms: int) -> bool:
        if self._card is not None and self._card_still_there():
            return True
        deadline = time.monotonic() + timeout_ms / 1000
        state, _ = self._reader_state(0, scard.SCARD_STATE_UNAWARE)
        while True:
            if state & scard.SCARD_STATE_PRESENT and not state & scard.SCARD_STATE_MUTE:
                # A card that left again, or that will not connect, is retried only after the
                # next change (or slice), never in a busy loop.
                with contextlib.suppress(CardError):
                    self._connect()
                    return True
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return False
            state, _ = self._reader_state(min(remaining_ms, status_wait_slice_ms), state)

    def wait_for_removal(self, timeout_ms: int) -> bool:
        deadline = time.monotonic() + timeout_ms / 1000
        state, _ = self._reader_state(0, scard.SCARD_STATE_UNAWARE)
        while True:
            if not state & scard.SCARD_STATE_PRESENT:
                self._drop_card(scard.SCARD_LEAVE_CARD)
                return True
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return False
            state, _ = self._reader_state(min(remaining_ms, status_wait_slice_ms), state)

    def atr(self) -> bytes:
        if self._card is not None:
            return self._atr
        return self._reader_state(0, scard.SCARD_STATE_UNAWARE)[1]

    def transmit(self, command: bytes) -> bytes:
        if self._card is None:
            self._connect()
        assert self._card is not None
        result, response = scard.SCardTransmit(self._card, self._protocol, list(command))
        if result != scard.SCARD_S_SUCCESS:
            self._transcript.append((command, b""))
            self._fail(f"transmit failed: {describe(result)}", result)
        answer = bytes(response)
        self._transcript.append((command, answer))
        if command == get_uid_command and answer[-2:] == b"\x90\x00" and len(answer) > 2:
            self._card_uid = answer[:-2]
        if not answer:
            # vpcd reports a card that left mid-exchange as an empty answer. (One byte is a
            # valid answer: a native DESFire status with no data.)
            error = self._card_error("the card gave no answer (removed mid-exchange?)")
            self._drop_card(scard.SCARD_LEAVE_CARD)
            raise error
        return answer

    # ------------------------------------------------------------------ events, lifetime

    def next_event(self, timeout_ms: int) -> CardEvent | None:
        """Block until a card arrives or leaves (relative to now); None on timeout.

        The reader does not connect to an arriving card; call `wait_for_card` for that.
        """
        deadline = time.monotonic() + timeout_ms / 1000
        state, _ = self._reader_state(0, scard.SCARD_STATE_UNAWARE)
        present = bool(state & scard.SCARD_STATE_PRESENT)
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                return None
            state, _ = self._reader_state(min(remaining_ms, status_wait_slice_ms), state)
            now_present = bool(state & scard.SCARD_STATE_PRESENT)
            if now_present != present:
                if not now_present:
                    self._drop_card(scard.SCARD_LEAVE_CARD)
                return CardEvent.inserted if now_present else CardEvent.removed

    def transcript_hex(self) -> tuple[tuple[str, str], ...]:
        return hex_transcript(self._transcript)

    def close(self) -> None:
        # Leave the card as it is: resetting a card that has just left the field (vpcd) wedges
        # pcscd's view of the slot, and the next application selects afresh anyway.
        self._drop_context()

    def __enter__(self) -> PcscReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _ensure_context(self) -> int:
        if self._context is None:
            context = establish_context(self._name)
            try:
                self._name = pick_reader_name(reader_names_in(context), self._wanted)
            except ReaderError:
                scard.SCardReleaseContext(context)
                raise
            self._context = context
        return self._context

    def _reader_state(self, timeout_ms: int, known_state: int) -> tuple[int, bytes]:
        """(event state, ATR) of our reader, after waiting up to timeout_ms for a change."""
        context = self._ensure_context()
        result, states = scard.SCardGetStatusChange(
            context, timeout_ms, [(self._name, known_state)]
        )
        if result == scard.SCARD_E_TIMEOUT:
            return known_state, b""
        if result != scard.SCARD_S_SUCCESS:
            self._fail(f"reader status failed: {describe(result)}", result)
        _, state, atr = states[0]
        if state & (scard.SCARD_STATE_UNKNOWN | scard.SCARD_STATE_UNAVAILABLE):
            self._drop_context()
            raise self._reader_error("the reader is gone (unplugged, or pcscd lost it)")
        return int(state), bytes(atr)

    def _connect(self) -> None:
        context = self._ensure_context()
        result, card, protocol = scard.SCardConnect(
            context,
            self._name,
            scard.SCARD_SHARE_SHARED,
            scard.SCARD_PROTOCOL_T0 | scard.SCARD_PROTOCOL_T1,
        )
        if result != scard.SCARD_S_SUCCESS:
            self._fail(f"cannot connect to the card: {describe(result)}", result)
        self._card = int(card)
        self._protocol = (
            scard.SCARD_PCI_T0 if protocol == scard.SCARD_PROTOCOL_T0 else scard.SCARD_PCI_T1
        )
        self._transcript.clear()
        self._card_uid = None
        result, _, _, _, atr = scard.SCardStatus(self._card)
        if result != scard.SCARD_S_SUCCESS:
            self._fail(f"cannot read the card status: {describe(result)}", result)
        self._atr = bytes(atr)

    def _card_still_there(self) -> bool:
        assert self._card is not None
        result, _, _, _, _ = scard.SCardStatus(self._card)
        if result == scard.SCARD_S_SUCCESS:  # a removed or reset card fails here
            return True
        self._drop_card(scard.SCARD_LEAVE_CARD)
        if result in reader_failures:
            self._drop_context()
        return False

    def _fail(self, message: str, result: int) -> NoReturn:
        """Raise the error a PC/SC result means, after dropping what it invalidated."""
        if result in reader_failures:
            error: ReaderError | CardError = self._reader_error(message)
            self._drop_card(scard.SCARD_LEAVE_CARD)
            self._drop_context()
            raise error
        error = self._card_error(message)
        self._drop_card(scard.SCARD_LEAVE_CARD)
        raise error

    def _reader_error(self, message: str) -> ReaderError:
        return ReaderError(
            message,
            reader_name=self._name,
            card_uid=self._card_uid,
            transcript=self.transcript_hex(),
        )

    def _card_error(self, message: str) -> CardError:
        return CardError(
            message,
            reader_name=self._name,
            card_uid=self._card_uid,
            transcript=self.transcript_hex(),
        )

    def _drop_card(self, disposition: int) -> None:
        card, self._card = self._card, None
        if card is not None:
            scard.SCardDisconnect(card, disposition)

    def _drop_context(self) -> None:
        self._drop_card(scard.SCARD_LEAVE_CARD)
        context, self._context = self._context, None
        if context is not None:
            scard.SCardReleaseContext(context)


# ---------------------------------------------------------------------------- pcscd


def reader_names_if_reachable() -> tuple[str, ...] | None:
    """The readers, or None when pcscd does not answer (not running, or just exiting)."""
    try:
        return list_reader_names()
    except ReaderError:
        return None


def start_pcscd_if_needed(reader_substring: str = "Virtual PCD") -> subprocess.Popen[bytes] | None:
    """Make sure pcscd answers and shows a reader whose name contains `reader_substring`.

    Starts pcscd in the foreground (as our child) when it does not answer and we are root, and
    returns that child so the caller can stop it; None if pcscd was already there. Raises
    ReaderError when pcscd cannot be started or the reader does not appear in time.
    """
    started: subprocess.Popen[bytes] | None = None
    deadline = time.monotonic() + pcscd_start_timeout_ms / 1000
    while time.monotonic() < deadline:
        names = reader_names_if_reachable()
        if names is not None and any(reader_substring in name for name in names):
            return started
        if names is None and (started is None or started.poll() is not None):
            # Not answering, and not started by us (or ours exited because an old pcscd was
            # still cleaning up): start one.
            pcscd = shutil.which("pcscd") or "/usr/sbin/pcscd"
            if os.geteuid() != 0 or not Path(pcscd).exists():
                raise ReaderError(
                    "pcscd is not running and cannot be started here (needs root and pcscd)",
                    reader_name=reader_substring,
                )
            # In a session of its own: a Ctrl-C meant for us must not stop it under our clean-up
            # (we stop it ourselves, with stop_pcscd).
            # Its messages go to a file, for the error below to quote.
            with pcscd_log.open("wb") as log:
                started = subprocess.Popen(
                    [pcscd, "--foreground"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        time.sleep(0.1)
    seen = reader_names_if_reachable()
    if started is not None:
        stop_pcscd(started)
    said = pcscd_log.read_text(errors="replace")[-600:].strip() if started is not None else ""
    raise ReaderError(
        f"pcscd shows no such reader after {pcscd_start_timeout_ms / 1000:g} s (readers: "
        f"{'pcscd not answering' if seen is None else list(seen)}"
        + (f"; the pcscd we started said: {said}" if said else "")
        + ")",
        reader_name=reader_substring,
    )


def stop_pcscd(started: subprocess.Popen[bytes]) -> None:
    started.terminate()
    try:
        started.wait(timeout=10)
    except subprocess.TimeoutExpired:
        started.kill()
        started.wait()
