"""Bridge from a software card to vsmartcard's `vpcd`, so pcscd shows it in "Virtual PCD".

vpcd listens on TCP (slot 0: port 35963, slot 1: 35964) and the card connects as a client.
Every message, both ways, is a 2-byte big-endian length followed by the payload. From vpcd, a
1-byte payload 00/01/02 is power off/on/reset (no answer) and 04 asks for the ATR; anything else
is a C-APDU answered by the R-APDU. A 1-byte payload with another value is a native DESFire
command (native-framing clients send `60`, `AF`, `C7`...), so it goes to the card: the control
values are told apart by value (reference/desfire.md §8.1).

Everything else goes to the card unchanged, including the PC/SC pseudo-APDU GET DATA UID
(`FF CA 00 00 00`) that a contactless reader would answer itself: the software card answers it,
so exchanges count the same in-process and through vpcd. "Removing the card" is closing the TCP
connection: vpcd then reports no card and pcscd ejects it.

Latency: vpcd writes each message in two `send` calls. With Nagle on its side and delayed ACK on
ours, every APDU would wait ~40 ms; TCP_NODELAY plus TCP_QUICKACK before and after each receive
brings an exchange to a fraction of a millisecond.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import socket
import threading
from dataclasses import dataclass
from typing import Protocol

from card_reader.emulator import CardPoweredOff

log = logging.getLogger(__name__)

vpcd_host_default = "127.0.0.1"
vpcd_port_default = 35963  # slot 0; slot n listens on 35963 + n
frame_length_bytes = 2
frame_payload_bytes_max = 0xFFFF  # what the 2-byte length can say
connect_timeout_ms = 1_000
reconnect_delay_ms = 100  # between attempts while vpcd is away
receive_slice_ms = 200  # how often a blocked receive checks for stop()

status_wrong_length = bytes.fromhex("6700")


class VpcdMessage(enum.Enum):
    power_off = 0x00
    power_on = 0x01
    reset = 0x02
    get_atr = 0x04
    apdu = -1  # any other payload (including 1-byte native DESFire commands)


control_by_value: dict[int, VpcdMessage] = {
    message.value: message for message in VpcdMessage if message is not VpcdMessage.apdu
}


def classify(payload: bytes) -> VpcdMessage:
    """What vpcd means by one payload."""
    if len(payload) == 1:
        return control_by_value.get(payload[0], VpcdMessage.apdu)
    return VpcdMessage.apdu


def encode_frame(payload: bytes) -> bytes:
    """Length-prefix one payload for the wire."""
    if len(payload) > frame_payload_bytes_max:
        raise ValueError(f"vpcd payload of {len(payload)} bytes exceeds {frame_payload_bytes_max}")
    return len(payload).to_bytes(frame_length_bytes, "big") + payload


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole payloads out.

    Any byte string is valid input (a length prefix says how much follows, up to 65535), so the
    decoder never fails; it only waits for more.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        payloads: list[bytes] = []
        while len(self._buffer) >= frame_length_bytes:
            length = int.from_bytes(self._buffer[:frame_length_bytes], "big")
            end = frame_length_bytes + length
            if len(self._buffer) < end:
                break
            payloads.append(bytes(self._buffer[frame_length_bytes:end]))
            del self._buffer[:end]
        return payloads

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer)


class VirtualCard(Protocol):
    """What the bridge needs from a software card (card_reader.emulator.EmulatedCard)."""

    @property
    def uid(self) -> bytes: ...

    def atr(self) -> bytes: ...

    def power_on(self) -> None: ...

    def power_off(self) -> None: ...

    def process(self, command: bytes) -> bytes:
        """The R-APDU; raises CardPoweredOff when the card lost power (tearing)."""
        ...


def answer(card: VirtualCard, payload: bytes) -> bytes | None:
    """The card side of one vpcd message: the bytes to send back, or None for no answer."""
    kind = classify(payload)
    if kind is VpcdMessage.power_off:
        card.power_off()
        return None
    if kind is VpcdMessage.power_on:
        card.power_on()
        return None
    if kind is VpcdMessage.reset:
        card.power_off()
        card.power_on()
        return None
    if kind is VpcdMessage.get_atr:
        return card.atr()
    if not payload:
        return status_wrong_length  # vpcd never sends one; a card could not answer it
    return card.process(payload)


def set_quickack(connection: socket.socket) -> None:
    """Ask Linux to ACK at once (the flag resets itself, hence before and after each receive)."""
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None:
        with contextlib.suppress(OSError):
            connection.setsockopt(socket.IPPROTO_TCP, quickack, 1)


@dataclass(frozen=True, slots=True)
class VpcdAddress:
    host: str = vpcd_host_default
    port: int = vpcd_port_default

    @classmethod
    def parse(cls, text: str) -> VpcdAddress:
        """`HOST:PORT`, `HOST` or `:PORT`."""
        host, separator, port_text = text.rpartition(":")
        if not separator:
            return cls(host=text or vpcd_host_default)
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"vpcd address {text!r}: port must be a number from 1 to 65535")
        return cls(host=host or vpcd_host_default, port=int(port_text))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class VpcdBridge:
    """Connects one card to vpcd and answers its messages until stopped.

    `serve()` blocks (the CLI); `start()` runs it in a daemon thread (tests, the benchmark).
    While vpcd is away the bridge retries every `reconnect_delay_ms`. `remove()` takes the card
    out of the field (closes the connection, powers the card off); `insert(card)` puts a card
    (the same or another) back.
    """

    def __init__(self, card: VirtualCard | None, address: VpcdAddress | None = None) -> None:
        self.address = address or VpcdAddress()
        self._card = card
        self._lock = threading.Lock()  # guards _card and _connection
        self._connection: socket.socket | None = None
        self._stop = threading.Event()
        self._card_changed = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()  # set while a card is connected to vpcd
        self.exchanges = 0  # messages answered since start, for tests and tearing hooks

    # ------------------------------------------------------------------ control

    @property
    def card(self) -> VirtualCard | None:
        return self._card

    def insert(self, card: VirtualCard) -> None:
        """Put a card in the field; a different card already there leaves it first."""
        with self._lock:
            previous, self._card = self._card, card
            if previous is not None and previous is not card:
                self._drop_connection_locked()
        if previous is not None and previous is not card:
            previous.power_off()
        self._card_changed.set()

    def remove(self) -> None:
        """Take the card away: drop the connection so pcscd sees an empty reader."""
        with self._lock:
            card, self._card = self._card, None
            self._drop_connection_locked()
        if card is not None:
            card.power_off()
        self._card_changed.set()

    def start(self) -> VpcdBridge:
        assert self._thread is None, "bridge already started"
        self._thread = threading.Thread(target=self.serve, name=f"vpcd-{self.address}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._card_changed.set()
        with self._lock:
            self._drop_connection_locked()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> VpcdBridge:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the loop

    def serve(self) -> None:
        """Connect, answer, reconnect when vpcd goes away; return once stop() is called."""
        while not self._stop.is_set():
            with self._lock:
                card = self._card
            if card is None:
                self._card_changed.wait(receive_slice_ms / 1000)
                self._card_changed.clear()
                continue
            connection = self._connect()
            if connection is None:
                self._stop.wait(reconnect_delay_ms / 1000)
                continue
            try:
                self._serve_connection(connection, card)
            finally:
                with self._lock:
                    if self._connection is connection:
                        self._drop_connection_locked()
                card.power_off()

    def _connect(self) -> socket.socket | None:
        try:
            connection = socket.create_connection(
                (self.address.host, self.address.port), timeout=connect_timeout_ms / 1000
            )
        except OSError as error:
            log.debug("vpcd at %s not reachable: %s", self.address, error)
            return None
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection.settimeout(receive_slice_ms / 1000)
        with self._lock:
            if self._stop.is_set() or self._card is None:
                connection.close()
                return None
            self._connection = connection
        self.connected.set()
        log.info("card connected to vpcd at %s", self.address)
        return connection

    def _serve_connection(self, connection: socket.socket, card: VirtualCard) -> None:
        decoder = FrameDecoder()
        while not self._stop.is_set() and self._connection is connection:
            set_quickack(connection)
            try:
                data = connection.recv(frame_length_bytes + frame_payload_bytes_max)
            except TimeoutError:
                continue
            except OSError:
                return  # dropped by remove()/stop(), or vpcd reset the connection
            set_quickack(connection)
            if not data:
                log.info("vpcd at %s closed the connection", self.address)
                return
            for payload in decoder.feed(data):
                try:
                    response = answer(card, payload)
                except CardPoweredOff:
                    # Torn (power lost mid-exchange): no answer, as a card pulled out of the
                    # field gives none. Out of the field it stays until inserted again.
                    log.info("card torn after %d exchanges", self.exchanges)
                    with self._lock:
                        if self._card is card:
                            self._card = None
                    return
                self.exchanges += 1
                if response is None:
                    continue
                try:
                    connection.sendall(encode_frame(response))
                except OSError:
                    return

    def _drop_connection_locked(self) -> None:
        connection, self._connection = self._connection, None
        self.connected.clear()
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
