"""The PC/SC driver through the real stack: pyscard → pcscd → vpcd → the bridge → a card.

The card here is a stand-in that echoes; DESFire transactions through the same stack are in
test_pcsc_transactions.py. pcscd polls card presence, so tests wait with timeouts, never sleep.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from card_reader.pcsc import CardEvent, PcscReader, pick_reader_name, stop_pcscd
from card_reader.port import CardError, ReaderError, ReaderPort
from card_reader.vpcd import VpcdAddress, VpcdBridge
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


# ---------------------------------------------------------------------------- pcscd restarts

shared_vpcd_config = Path("/etc/reader.conf.d/vpcd")
pcscd_run_folder = Path("/run/pcscd")  # pcscd 1.9 puts its socket here, whatever the environment
private_pcscd_timeout_s = 10
restart_test_timeout_s = 90
exit_unavailable = 3  # the scenario's exit status when no private pcscd can be started here


def pcscd_usb_driver_folder() -> str:
    """Where this pcscd looks for USB reader drivers (`usbdropdir` in `pcscd --version`)."""
    version = subprocess.run(["pcscd", "--version"], capture_output=True, text=True).stdout
    for word in version.split():
        if word.startswith("usbdropdir="):
            return word.removeprefix("usbdropdir=")
    raise ValueError(f"pcscd --version names no usbdropdir: {version!r}")


def vpcd_library() -> str:
    """The vpcd driver the shared configuration names (LIBPATH)."""
    for line in shared_vpcd_config.read_text().splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "LIBPATH":
            return words[1]
    raise ValueError(f"{shared_vpcd_config} names no LIBPATH")


def free_port_pair() -> int:
    """A TCP port free on every interface, with the next one free too (vpcd's second slot)."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("", 0))
            port = int(first.getsockname()[1])
            if port >= 0xFFFF:
                continue
            try:
                second.bind(("", port + 1))
            except OSError:
                continue
            return port
    raise OSError("no two free neighbouring TCP ports")


class PrivatePcscd:
    """A pcscd of this test's own, beside the shared one (which it never touches).

    pcscd 1.9 always listens on /run/pcscd/pcscd.comm, so it runs in a mount namespace of its
    own where `folder`/run is mounted there: its socket appears as `socket_path` (clients find
    it through PCSCLITE_CSOCK_NAME). Its reader configuration is the shared vpcd one on another
    port, and an empty USB driver folder keeps it off real readers (they are the shared one's).
    """

    def __init__(self, folder: Path, vpcd_port: int) -> None:
        self.folder = folder
        self.vpcd_port = vpcd_port
        self.run_folder = folder / "run"
        self.socket_path = self.run_folder / "pcscd.comm"
        self.process: subprocess.Popen[bytes] | None = None

    def prepare(self) -> None:
        for name in ("run", "config", "no-usb-drivers"):
            (self.folder / name).mkdir(exist_ok=True)
        (self.folder / "libifdvpcd.so").touch()  # where the real driver is mounted
        channel = f"0x{self.vpcd_port:04X}"
        (self.folder / "config" / "vpcd").write_text(
            f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:{channel}\n'
            f"LIBPATH {self.folder / 'libifdvpcd.so'}\nCHANNELID {channel}\n"
        )

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        script = (
            "set -e\n"
            f'mkdir -p "{pcscd_run_folder}"\n'
            f'mount --bind "{self.run_folder}" "{pcscd_run_folder}"\n'
            f'mount --bind "{vpcd_library()}" "{self.folder / "libifdvpcd.so"}"\n'
            f'mount --bind "{self.folder / "no-usb-drivers"}" "{pcscd_usb_driver_folder()}"\n'
            f'exec pcscd --foreground --config "{self.folder / "config"}"\n'
        )
        with open(self.folder / "pcscd.log", "ab") as log:
            # unshare execs the shell, which execs pcscd: self.process is pcscd itself.
            self.process = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_for_reader(self) -> str:
        """The private vpcd's first reader, once pcscd shows it."""
        from card_reader.pcsc import reader_names_if_reachable

        assert self.process is not None
        deadline = time.monotonic() + private_pcscd_timeout_s
        while time.monotonic() < deadline:
            names = sorted(
                name for name in reader_names_if_reachable() or () if "Virtual PCD" in name
            )
            if names:
                return names[0]
            if self.process.poll() is not None:
                if "unshare: " in self.log():  # no mount namespace for us here
                    raise PrivatePcscdUnavailable(self.log())
                raise AssertionError(f"private pcscd exited: {self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"private pcscd showed no reader in time: {self.log()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_pcscd(self.process)

    def log(self) -> str:
        return (self.folder / "pcscd.log").read_text(errors="replace").strip()[-2000:]


class PrivatePcscdUnavailable(Exception):
    pass


def restart_scenario(folder: str, vpcd_port: str) -> None:
    """The restart test proper, in a process whose PCSCLITE_CSOCK_NAME names the private
    pcscd's socket (libpcsclite reads it once per process, so not in pytest's)."""
    pcscd = PrivatePcscd(Path(folder), int(vpcd_port))
    assert os.environ.get("PCSCLITE_CSOCK_NAME") == str(pcscd.socket_path)
    pcscd.start()
    try:
        try:
            name = pcscd.wait_for_reader()
        except PrivatePcscdUnavailable as error:
            print(error, file=sys.stderr)
            sys.exit(exit_unavailable)
        with VpcdBridge(EchoCard(), VpcdAddress("127.0.0.1", pcscd.vpcd_port)):
            reader = PcscReader(name)
            assert reader.wait_for_card(card_timeout_ms)
            assert reader.transmit(b"\x01\x02") == b"\x02\x01\x91\x00"
            pcscd.stop()
            with pytest.raises(ReaderError, match="Service not available"):
                reader.transmit(b"\x01\x02")
            with pytest.raises(ReaderError, match="cannot reach pcscd"):
                reader.wait_for_card(100)
            pcscd.start()
            assert pcscd.wait_for_reader() == name
            assert reader.wait_for_card(card_timeout_ms)
            assert reader.transmit(b"\x05\x06") == b"\x06\x05\x91\x00"
            reader.close()
    finally:
        pcscd.stop()
    print("recovered")


def test_recovers_after_pcscd_restarts() -> None:
    """Stop pcscd under a connected reader; the next calls fail cleanly, then recover.

    The pcscd stopped is a private one (its own socket and vpcd port), never the shared pcscd
    the other tests use, so this works beside a system pcscd, socket-activated or not.
    """
    missing = [
        what
        for what, present in (
            ("root", os.geteuid() == 0),
            ("unshare", shutil.which("unshare") is not None),
            ("pcscd", shutil.which("pcscd") is not None),
            (str(shared_vpcd_config), shared_vpcd_config.exists()),
        )
        if not present
    ]
    if missing:
        unavailable(
            f"a private pcscd needs {', '.join(missing)}",
            "run the tests as root with util-linux, pcscd and vsmartcard-vpcd installed",
        )
    with tempfile.TemporaryDirectory(prefix="ksh-pcscd-") as folder:  # short: a socket path
        run_restart_scenario(PrivatePcscd(Path(folder), free_port_pair()))


def run_restart_scenario(pcscd: PrivatePcscd) -> None:
    pcscd.prepare()
    scenario = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tests.card_reader.test_pcsc_reader import restart_scenario; "
            "restart_scenario(*sys.argv[1:])",
            str(pcscd.folder),
            str(pcscd.vpcd_port),
        ],
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PCSCLITE_CSOCK_NAME": str(pcscd.socket_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its pcscd too: one process group to clean up
    )
    try:
        out, err = scenario.communicate(timeout=restart_test_timeout_s)
    except subprocess.TimeoutExpired:
        out, err = "", f"no result within {restart_test_timeout_s} s"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(scenario.pid, signal.SIGKILL)  # whatever is left of it (nothing, normally)
        scenario.wait()
    if scenario.returncode == exit_unavailable:
        unavailable(
            f"no private pcscd can run here ({err.strip()[-500:]})",
            "run the tests as root where mount namespaces are allowed (unshare --mount)",
        )
    assert scenario.returncode == 0 and out.strip() == "recovered", (
        f"exit {scenario.returncode}\n{out}\n{err}\npcscd log:\n{pcscd.log()}"
    )


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
