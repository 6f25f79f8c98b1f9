"""The PC/SC driver through the real stack: pyscard → pcscd → vpcd → the bridge → a card.

The card here is a stand-in that echoes; DESFire transactions through the same stack are in
test_pcsc_transactions.py. pcscd polls card presence, so tests wait with timeouts, never sleep.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from card_reader.pcsc import (
    CardEvent,
    PcscReader,
    pick_reader_name,
    start_pcscd_if_needed,
    stop_pcscd,
)
from card_reader.port import CardError, ReaderError, ReaderPort
from card_reader.vpcd import VpcdBridge
from tests.card_reader.test_vpcd_framing import EchoCard, test_atr, test_uid
from tests.conftest import unavailable

card_timeout_ms = 5_000


@pytest.fixture
def bridge(pcsc_reader_name: str) -> Iterator[VpcdBridge]:
    """A bridge to vpcd slot 0 with no card in it yet."""
    bridge = VpcdBridge(None).start()
    yield bridge
    bridge.stop()


@pytest.fixture
def reader(pcsc_reader_name: str, bridge: VpcdBridge) -> Iterator[PcscReader]:
    with PcscReader(pcsc_reader_name) as reader:
        assert reader.wait_for_removal(card_timeout_ms)  # what an earlier test left
        yield reader


def insert(bridge: VpcdBridge, reader: PcscReader, card: EchoCard | None = None) -> EchoCard:
    card = card or EchoCard()
    bridge.insert(card)
    assert reader.wait_for_card(card_timeout_ms)
    return card


def test_pick_reader_name_by_exact_name_or_unique_substring() -> None:
    names = ("ACS ACR122U PICC Interface 00 00", "Virtual PCD 00 00", "Virtual PCD 00 01")
    assert pick_reader_name(names, "Virtual PCD 00 01") == "Virtual PCD 00 01"
    assert pick_reader_name(names, "acr122") == "ACS ACR122U PICC Interface 00 00"
    with pytest.raises(ReaderError, match="2 readers match 'virtual'"):
        pick_reader_name(names, "virtual")
    with pytest.raises(ReaderError, match="no reader matches 'omnikey'"):
        pick_reader_name(names, "omnikey")
    with pytest.raises(ReaderError, match=r"no reader matches .*readers: none"):
        pick_reader_name((), "")
    assert pick_reader_name(names[:1], "") == names[0]


def test_reader_found_by_substring_through_pcscd(pcsc_reader_name: str) -> None:
    with PcscReader(pcsc_reader_name.lower().replace("virtual ", "")) as reader:
        assert reader.name == pcsc_reader_name
        assert isinstance(reader, ReaderPort)
    with pytest.raises(ReaderError, match="readers match 'Virtual PCD'"):
        PcscReader("Virtual PCD")
    with pytest.raises(ReaderError, match="no reader matches 'No Such Reader'"):
        PcscReader("No Such Reader")


def test_exchanges_reach_the_card(bridge: VpcdBridge, reader: PcscReader) -> None:
    card = insert(bridge, reader)
    assert reader.card_present()
    assert reader.atr() == test_atr
    assert reader.card_uid is None  # not asked yet: the driver spends no exchange on it
    assert reader.transmit(bytes.fromhex("FFCA000000")) == test_uid + b"\x90\x00"
    assert reader.card_uid == test_uid
    for command in (bytes.fromhex("905A000003AABBCC00"), b"\x60", bytes(range(200))):
        assert reader.transmit(command) == command[::-1] + b"\x91\x00"
    assert card.commands[-1] == bytes(range(200))
    assert reader.wait_for_card(0)  # still the same card, still connected


def test_no_card_means_false_after_the_timeout_and_card_error_on_transmit(
    reader: PcscReader,
) -> None:
    assert not reader.card_present()
    assert not reader.wait_for_card(300)
    with pytest.raises(CardError, match="cannot connect to the card"):
        reader.transmit(b"\x60")


def test_card_pulled_mid_transaction_gives_card_error_with_transcript(
    bridge: VpcdBridge, reader: PcscReader
) -> None:
    card = insert(bridge, reader)
    reader.transmit(bytes.fromhex("FFCA000000"))
    card.tear_at_command = 4
    select, authenticate, debit = (
        bytes.fromhex(text) for text in ("905A00000311223300", "90AA0000010000", "90DC000005")
    )
    reader.transmit(select)
    reader.transmit(authenticate)
    with pytest.raises(CardError) as caught:
        reader.transmit(debit)
    error = caught.value
    assert error.reader_name == reader.name
    assert error.card_uid == test_uid
    assert error.transcript[-3:] == (
        (select.hex().upper(), (select[::-1] + b"\x91\x00").hex().upper()),
        (authenticate.hex().upper(), (authenticate[::-1] + b"\x91\x00").hex().upper()),
        ("90DC000005", ""),
    )
    assert "90DC000005" in str(error)
    assert "04A1B2C3D4E5F6" in str(error)
    assert reader.wait_for_removal(card_timeout_ms)
    assert not reader.card_present()


def test_reconnects_after_the_emulator_goes_away_and_comes_back(
    pcsc_reader_name: str, reader: PcscReader
) -> None:
    first = VpcdBridge(EchoCard()).start()
    assert reader.wait_for_card(card_timeout_ms)
    assert reader.transmit(b"\x01\x02") == b"\x02\x01\x91\x00"
    first.stop()  # the emulator process died, say
    with pytest.raises(CardError):
        reader.transmit(b"\x01\x02")
    assert reader.wait_for_removal(card_timeout_ms)
    with VpcdBridge(EchoCard()):
        assert reader.wait_for_card(card_timeout_ms)
        assert reader.transmit(b"\x03\x04") == b"\x04\x03\x91\x00"


def test_insert_and_remove_events(bridge: VpcdBridge, reader: PcscReader) -> None:
    assert reader.next_event(200) is None
    bridge.insert(EchoCard())
    assert reader.next_event(card_timeout_ms) is CardEvent.inserted
    assert reader.card_present()
    bridge.remove()
    assert reader.next_event(card_timeout_ms) is CardEvent.removed
    assert not reader.card_present()


def pcscd_children_of_this_process() -> list[int]:
    result = subprocess.run(["pgrep", "-x", "-P", str(os.getpid()), "pcscd"], capture_output=True)
    return [int(pid) for pid in result.stdout.split()]


@pytest.fixture(scope="session")
def restarted_pcscds() -> Iterator[list[subprocess.Popen[bytes]]]:
    """pcscd processes started by a test in place of the session's; stopped at session end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        stop_pcscd(process)


def test_recovers_after_pcscd_restarts(
    pcsc_reader_name: str,
    bridge: VpcdBridge,
    restarted_pcscds: list[subprocess.Popen[bytes]],
) -> None:
    """Stop pcscd under a connected reader; the next calls fail cleanly, then recover.

    Only a pcscd this test run started may be stopped (others may be using a system one).
    """
    ours = pcscd_children_of_this_process()
    if len(ours) != 1 or not Path("/proc", str(ours[0])).exists():
        unavailable(
            "pcscd was not started by this test run, so restarting it would disturb others",
            "stop pcscd and let the test fixture start it",
        )
    reader = PcscReader(pcsc_reader_name)
    bridge.insert(EchoCard())
    assert reader.wait_for_card(card_timeout_ms)
    os.kill(ours[0], signal.SIGTERM)
    os.waitpid(ours[0], 0)
    with pytest.raises(ReaderError, match="Service not available"):
        reader.transmit(b"\x01\x02")
    with pytest.raises(ReaderError, match="cannot reach pcscd"):
        reader.wait_for_card(100)
    restarted = start_pcscd_if_needed(pcsc_reader_name)
    assert restarted is not None  # the session fixture's handle is dead: this one is ours
    restarted_pcscds.append(restarted)
    assert reader.wait_for_card(card_timeout_ms)
    assert reader.transmit(b"\x05\x06") == b"\x06\x05\x91\x00"
    reader.close()


def test_a_card_held_exclusively_elsewhere_is_waited_for_without_spinning(
    pcsc_reader_name: str, bridge: VpcdBridge, reader: PcscReader
) -> None:
    from smartcard import scard

    bridge.insert(EchoCard())
    assert reader.next_event(card_timeout_ms) is CardEvent.inserted
    result, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert result == scard.SCARD_S_SUCCESS
    result, holder, _ = scard.SCardConnect(
        context, pcsc_reader_name, scard.SCARD_SHARE_EXCLUSIVE, scard.SCARD_PROTOCOL_T1
    )
    assert result == scard.SCARD_S_SUCCESS
    try:
        cpu_before = time.process_time()
        assert not reader.wait_for_card(600)
        assert time.process_time() - cpu_before < 0.1  # waited on pcscd, not in a busy loop
        with pytest.raises(CardError, match="cannot connect to the card: Sharing violation"):
            reader.transmit(b"\x01\x02")
    finally:
        scard.SCardDisconnect(holder, scard.SCARD_LEAVE_CARD)
        scard.SCardReleaseContext(context)
    assert reader.wait_for_card(card_timeout_ms)
    assert reader.transmit(b"\x01\x02") == b"\x02\x01\x91\x00"
