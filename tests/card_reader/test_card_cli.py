"""`ksh card` end to end: a software card in vpcd (the `emulate` command, as a process) and the
service-desk commands through pyscard → pcscd → vpcd, plus their user errors (exit 2, one line)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from card_reader.desfire import Desfire
from card_reader.emulator import EmulatedCard, EmulatedReader, load_deck
from card_reader.ksh_card import read_uid
from card_reader.pcsc import PcscReader
from card_reader.vpcd import VpcdBridge
from ksh.cli import main
from tests.terminals.test_chip_block_hostile import write_active

card_timeout_ms = 5_000


def ksh(*arguments: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(list(arguments))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_user_error(status: int, err: str, fragment: str) -> None:
    assert status == 2
    assert err.count("\n") == 1, err  # one line, no traceback
    assert fragment in err


@pytest.fixture
def deck(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "deck.json"
    status, out, _ = ksh("card", "deck-new", "--out", str(path), "--cards", "3", capsys=capsys)
    assert status == 0
    assert "3 blank cards" in out
    return path


emulator_exit_timeout_s = 10


class Emulator:
    """`ksh card emulate` as its own process, started as a non-interactive shell starts a
    background job: with SIGINT ignored (the emulator must handle it explicitly anyway)."""

    def __init__(self, *arguments: str) -> None:
        command = [sys.executable, "-m", "ksh", "card", "emulate", *arguments]
        self.process = subprocess.Popen(
            ["/bin/sh", "-c", 'trap "" INT; exec "$@"', "sh", *command],  # same pid
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def stop(self, signal_number: int) -> tuple[int, str, str]:
        self.process.send_signal(signal_number)
        try:
            out, err = self.process.communicate(timeout=emulator_exit_timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            name = signal.Signals(signal_number).name
            pytest.fail(f"the emulator did not exit within {emulator_exit_timeout_s} s of {name}")
        return self.process.returncode, out, err

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


@pytest.fixture
def emulators() -> Iterator[list[Emulator]]:
    started: list[Emulator] = []
    yield started
    for emulator in started:
        emulator.kill()


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_deck_card_in_vpcd_is_seen_by_pcsc_and_saved_back(
    pcsc_reader_name: str, deck: Path, emulators: list[Emulator], signal_number: int
) -> None:
    """Ctrl-C or `kill` takes the card away and saves it to its deck, even when the emulator
    was started with SIGINT ignored (as from a script: the failure this reproduces)."""
    cards_before = load_deck(deck)
    with PcscReader(pcsc_reader_name) as reader:
        assert reader.wait_for_removal(card_timeout_ms)  # what an earlier test left
        emulator = Emulator("--deck", str(deck), "--index", "1")
        emulators.append(emulator)
        assert reader.wait_for_card(card_timeout_ms)
        assert read_uid(reader) == cards_before[1].uid
        desfire = Desfire(reader, card_uid=reader.card_uid)
        desfire.authenticate_ev2_first(0, bytes(16))
        desfire.create_application(0x010203, 0x0F, 1)
        status, out, err = emulator.stop(signal_number)
        assert status == 0, err
        assert "card removed" in err
        assert cards_before[1].uid.hex().upper() in out
        assert reader.wait_for_removal(card_timeout_ms)
    cards_after = load_deck(deck)
    assert 0x010203 in cards_after[1].applications
    assert cards_after[0].to_dict() == cards_before[0].to_dict()
    assert cards_after[2].to_dict() == cards_before[2].to_dict()


def test_readers_lists_the_virtual_reader_and_its_card(
    pcsc_reader_name: str, bridge: VpcdBridge, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = ksh("card", "readers", capsys=capsys)
    assert status == 0
    assert f"{pcsc_reader_name}\tempty" in out.splitlines()
    bridge.insert(EmulatedCard())
    with PcscReader(pcsc_reader_name) as reader:
        assert reader.wait_for_card(card_timeout_ms)
    status, out, _ = ksh("card", "readers", capsys=capsys)
    assert status == 0
    assert f"{pcsc_reader_name}\tcard" in out.splitlines()


def test_emulate_user_errors(
    tmp_path: Path, deck: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.json"
    status, _, err = ksh("card", "emulate", "--deck", str(missing), capsys=capsys)
    assert_user_error(status, err, "no deck at")
    status, _, err = ksh("card", "emulate", "--deck", str(deck), "--index", "3", capsys=capsys)
    assert_user_error(status, err, "outside the deck (3 cards")
    status, _, err = ksh("card", "emulate", "--blank", "--vpcd", "host:port", capsys=capsys)
    assert_user_error(status, err, "port must be a number")
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "something else"}')
    status, _, err = ksh("card", "emulate", "--deck", str(broken), capsys=capsys)
    assert_user_error(status, err, "is not a version 1 KSH card deck")
    status, _, err = ksh("card", "deck-new", "--out", str(deck), capsys=capsys)
    assert_user_error(status, err, "exists (use --force")
    status, _, err = ksh("card", "deck-new", "--out", str(deck), "--cards", "0", capsys=capsys)
    assert_user_error(status, err, "--cards must be")


# ---------------------------------------------------------------------------- the service desk

passphrase = "correct horse battery"


@pytest.fixture
def keystore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Path:
    monkeypatch.setenv("KSH_KEYSTORE_PASSPHRASE", passphrase)
    path = tmp_path / "keys.json"
    status, out, err = ksh("card", "keystore-new", "--out", str(path), capsys=capsys)
    assert status == 0, err
    assert "debit v1" in out
    return path


@pytest.fixture
def bridge(pcsc_reader_name: str) -> Iterator[VpcdBridge]:
    """vpcd slot 0 with no card yet; the test inserts one (the card lives in this process)."""
    bridge = VpcdBridge(None).start()
    with PcscReader(pcsc_reader_name) as reader:
        assert reader.wait_for_removal(card_timeout_ms)  # what an earlier test left
    yield bridge
    bridge.stop()


def info(reader_name: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    status, out, err = ksh("card", "info", "--reader", reader_name, "--json", *extra, capsys=capsys)
    assert status == 0, err
    report: dict[str, Any] = json.loads(out)
    return report


def test_issue_top_up_and_info_through_the_virtual_reader(
    pcsc_reader_name: str,
    bridge: VpcdBridge,
    keystore: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    card = EmulatedCard()
    bridge.insert(card)
    reader = pcsc_reader_name.lower().removeprefix("virtual ")  # a unique part is enough
    blank = info(reader, capsys)
    assert blank["uid"] == card.uid.hex().upper()
    assert blank["ksh"] is None

    status, out, err = ksh(
        "card", "issue", "--reader", reader, "--keystore", str(keystore),
        "--category", "school_student", "--balance", "10000", "--card-number", "6032900000000042",
        capsys=capsys,
    )  # fmt: skip
    assert status == 0, err
    assert "issued card 6032900000000042" in out

    status, out, err = ksh(
        "card", "topup", "--offline-development", "--reader", reader, "--keystore", str(keystore), "--amount", "25000",
        capsys=capsys,
    )  # fmt: skip
    assert status == 0, err
    assert "Rp 10,000 + Rp 25,000 = Rp 35,000 (log #1)" in out

    verified = info(reader, capsys, "--keystore", str(keystore))["ksh"]
    assert verified["verified"].startswith("yes")
    assert verified["balance_rupiah"] == 35_000
    assert verified["profile"]["card_number"] == 6032900000000042
    assert verified["profile"]["rider_category"] == "school_student"
    assert verified["profile"]["status"] == "active"
    assert [(r["counter"], r["kind"], r["amount_rupiah"]) for r in verified["log"]] == [
        (0, "issue", 10_000),
        (1, "credit", 25_000),
    ]
    free = info(reader, capsys)["ksh"]  # what anyone may read says the same, unverified
    assert free["verified"].startswith("no")
    assert (free["balance_rupiah"], free["log"]) == (35_000, verified["log"])

    status, out, _ = ksh("card", "info", "--reader", reader, capsys=capsys)
    assert status == 0
    assert "Rp 35,000" in out
    assert "#1     credit" in out


def test_service_desk_user_errors(
    pcsc_reader_name: str,
    bridge: VpcdBridge,
    keystore: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = pcsc_reader_name
    top_up = (
        "card",
        "topup",
        "--offline-development",
        "--reader",
        name,
        "--keystore",
        str(keystore),
        "--amount",
    )

    status, _, err = ksh("card", "info", "--reader", "No Such Reader", capsys=capsys)
    assert_user_error(status, err, "no reader matches 'No Such Reader'")
    status, _, err = ksh("card", "info", "--reader", "Virtual PCD", capsys=capsys)
    assert_user_error(status, err, "2 readers match")
    status, _, err = ksh("card", "info", "--reader", name, "--wait", "0.2", capsys=capsys)
    assert_user_error(status, err, "no card on reader")

    bridge.insert(EmulatedCard())
    status, _, err = ksh(*top_up, "1000", capsys=capsys)
    assert_user_error(status, err, "not a KSH card")
    status, _, err = ksh(*top_up, "0", capsys=capsys)
    assert_user_error(status, err, "--amount must be")
    missing = tmp_path / "none.json"
    status, _, err = ksh(*top_up[:6], str(missing), "--amount", "1", capsys=capsys)
    assert_user_error(status, err, "no key store at")

    issue = ("card", "issue", "--reader", name, "--keystore", str(keystore), "--category")
    status, _, err = ksh(*issue, "general", "--balance", "1999000", capsys=capsys)
    assert status == 0, err
    status, _, err = ksh(*issue, "general", capsys=capsys)
    assert_user_error(status, err, "is already a KSH card")
    status, _, err = ksh(*top_up, "2000", capsys=capsys)
    assert_user_error(status, err, "would exceed the cap of Rp 2,000,000")

    monkeypatch.setenv("KSH_KEYSTORE_PASSPHRASE", "not the passphrase")
    status, _, err = ksh(*top_up, "1000", capsys=capsys)
    assert_user_error(status, err, "wrong passphrase")
    monkeypatch.setenv("KSH_KEYSTORE_PASSPHRASE", "short")
    other = tmp_path / "other.json"
    status, _, err = ksh("card", "keystore-new", "--out", str(other), capsys=capsys)
    assert_user_error(status, err, "at least 8 characters")
    status, _, err = ksh("card", "keystore-new", "--out", str(keystore), capsys=capsys)
    assert_user_error(status, err, "exists (use --force")

    # Another issuer's keys: the card's keys do not match ours.
    monkeypatch.setenv("KSH_KEYSTORE_PASSPHRASE", "another issuer")
    assert ksh("card", "keystore-new", "--out", str(other), capsys=capsys)[0] == 0
    status, _, err = ksh(*top_up[:6], str(other), "--amount", "1000", capsys=capsys)
    assert_user_error(status, err, "does not match ours")

    # A card that does not have the factory key cannot be issued.
    locked = EmulatedCard()
    locked.picc.keys[0] = (bytes(range(16)), 1)
    bridge.remove()
    with PcscReader(name) as reader:
        assert reader.wait_for_removal(card_timeout_ms)
    bridge.insert(locked)
    status, _, err = ksh(*issue[:5], str(other), "--category", "general", capsys=capsys)
    assert_user_error(status, err, "is not blank")


def test_card_pulled_during_top_up_is_reported_in_doubt(
    pcsc_reader_name: str,
    bridge: VpcdBridge,
    keystore: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = pcsc_reader_name
    card = EmulatedCard()
    bridge.insert(card)
    issue = ("card", "issue", "--reader", name, "--keystore", str(keystore))
    assert ksh(*issue, "--category", "general", capsys=capsys)[0] == 0
    top_up = (
        "card",
        "topup",
        "--offline-development",
        "--reader",
        name,
        "--keystore",
        str(keystore),
        "--amount",
        "5000",
    )
    # The commit, the last exchange of a top-up, takes effect but its answer is lost.
    card.fail_after_exchanges(exchanges_of_a_top_up(card, keystore))
    status, _, err = ksh(*top_up, capsys=capsys)
    assert_user_error(status, err, "the top-up of Rp 5,000 is in doubt")
    assert "log record #1" in err
    with PcscReader(name) as reader:
        assert reader.wait_for_removal(card_timeout_ms)
    bridge.insert(card)
    log = info(name, capsys)["ksh"]["log"]
    assert [(r["counter"], r["kind"], r["amount_rupiah"]) for r in log][-1] == (1, "credit", 5000)


def exchanges_of_a_top_up(card: EmulatedCard, keystore: Path) -> int:
    """How many exchanges a top-up takes, counted on an in-process copy of the card."""
    from card_reader.keys import KeyRole, KeyStore
    from card_reader.ksh_card import KshCard

    reader = EmulatedReader()
    reader.insert(EmulatedCard.from_dict(card.to_dict()))
    keys = KeyStore.load(keystore, passphrase).view(KeyRole.CREDIT)
    desk = KshCard(reader, keys)
    desk.read_state()
    desk.credit(5000, terminal_id=0, time_unix_seconds=0)
    return reader.exchanges


def test_deck_new_with_a_keystore_issues_the_cards(
    tmp_path: Path, keystore: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from card_reader.keys import KeyRole, KeyStore
    from card_reader.ksh_card import KshCard

    path = tmp_path / "issued.json"
    status, out, err = ksh(
        "card", "deck-new", "--out", str(path), "--cards", "2", "--keystore", str(keystore),
        "--balance", "7000", capsys=capsys,
    )  # fmt: skip
    assert status == 0, err
    assert "2 KSH cards with Rp 7,000 each" in out
    keys = KeyStore.load(keystore, passphrase).view(KeyRole.DEBIT)
    cards = load_deck(path)
    assert cards[0].uid != cards[1].uid
    for card in cards:
        reader = EmulatedReader()
        reader.insert(card)
        assert KshCard(reader, keys).read_state().balance_rupiah == 7000


def test_a_keystore_from_before_the_transaction_mac_is_a_clear_error(
    tmp_path: Path, keystore: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cards cannot be issued without the TMAC master: say so, once, without a traceback."""
    from card_reader.keys import KeyRole, KeyStore

    store = KeyStore.load(keystore, passphrase)
    older = KeyStore()
    for role in KeyRole:
        if role is not KeyRole.TMAC:
            older.add(store.master_key(role))
    older.save(keystore, passphrase)
    path = tmp_path / "issued.json"
    status, _, err = ksh(
        "card", "deck-new", "--out", str(path), "--keystore", str(keystore), capsys=capsys
    )
    assert_user_error(status, err, "holds no tmac key")
    assert "keystore-new" in err


def test_expiry_of_a_card_issued_on_a_leap_day() -> None:
    import datetime as dt

    from ksh.commands.card import years_after

    assert years_after(dt.date(2028, 2, 29), 5) == dt.date(2033, 2, 28)
    assert years_after(dt.date(2028, 2, 29), 4) == dt.date(2032, 2, 29)
    assert years_after(dt.date(2026, 11, 24), 5) == dt.date(2031, 11, 24)


async def desk_knows(
    database_url: str, number: str, *, issued: bool = True, replaced_by: str | None = None
) -> None:
    """The back office has clerk Ani and issued `number` (unless not `issued`); with
    `replaced_by`, the card was registered, blocked as lost and replaced by that card."""
    import asyncpg

    from gateways.staff import Role
    from gateways.terminal_api import card_desk, registry
    from ledger.clock import jakarta
    from settlement import pages

    now = dt.datetime(2027, 1, 5, 10, 0, tzinfo=jakarta)
    connection = await asyncpg.connect(database_url)
    try:
        if replaced_by is None:
            await pages.add_staff(connection, "ani", "a long enough password", Role.clerk)
            if issued:
                await registry.register_card(connection, number)
            return
        await registry.register_card(connection, replaced_by)
        await card_desk.register_holder(
            connection,
            number,
            "Sri Wahyuni",
            "3374010101900001",
            "081234567890",
            username="ani",
            now=now,
        )
        lost = card_desk.BlockCause.lost
        await card_desk.block_card(connection, number, lost, "lost", username="ani", now=now)
        await card_desk.request_replacement(
            connection, number, replaced_by, username="ani", now=now
        )
    finally:
        await connection.close()


async def block_taken(database_url: str, number: str, counter: int) -> None:
    """The back office took a block of the card at `counter` (as an upload of it would)."""
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "insert into card_records (terminal_id, sequence, batch_sequence, kind, status, "
            "card_number, card_counter, amount_rupiah, topup_rupiah, pending_topup_id, "
            "balance_after_rupiah, time_ms, route, merchant_id, fare_detail, previous_counter, "
            "previous_terminal_number, previous_balance_rupiah, outcome) values ('V7', $2, 1, "
            "'block', 'committed', $1, $2, 0, 0, '', 0, 1795478400000, 'K1', '', '', $3, 7, 0, "
            "'booked')",
            number,
            counter,
            counter - 1,
        )
    finally:
        await connection.close()


async def unblock_actions(database_url: str) -> list[tuple[str, str, str, int]]:
    """Who unblocked which card, why, and the card's newest counter then."""
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "select username, subject, reason, (detail->>'card_counter')::bigint "
            "from staff_actions where action = 'unblock_card_chip'"
        )
    finally:
        await connection.close()
    return [tuple(row) for row in rows]


def test_a_card_blocked_on_its_chip_is_unblocked_at_an_issuing_desk(
    pcsc_reader_name: str,
    bridge: VpcdBridge,
    keystore: Path,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ksh card unblock` with the issuer's key store writes the status back, and nothing else
    (no log record: the card's next transaction follows its block), as a staff action; a
    terminal's key store cannot; a card not blocked is left alone; a card the back office never
    issued, or replaced, stays blocked and leaves no staff action."""
    import asyncio

    from card_reader.emulator import EmulatedReader
    from card_reader.keys import KeyRole, KeyStore
    from card_reader.ksh_card import CardStatus, KshCard

    monkeypatch.setenv("DATABASE_URL", database_url)
    name = pcsc_reader_name
    number = "6032900000000043"
    card = EmulatedCard()
    bridge.insert(card)
    issue = ("card", "issue", "--reader", name, "--keystore", str(keystore))
    assert ksh(*issue, "--category", "general", "--card-number", number, capsys=capsys)[0] == 0
    unblock = ("card", "unblock", "--reader", name, "--as", "ani", "--reason", "found again")
    status, _, err = ksh(*unblock, "--keystore", str(keystore), capsys=capsys)
    assert_user_error(status, err, "is not blocked: nothing written")
    store = KeyStore.load(keystore, passphrase)

    def with_a_terminal_key(act: Callable[[KshCard], object]) -> None:
        """The card off the desk's reader, at a validator (its debit key), then back."""
        bridge.remove()
        with PcscReader(name) as reader:
            assert reader.wait_for_removal(card_timeout_ms)
        terminal_reader = EmulatedReader("validator")
        terminal_reader.insert(card)
        session = KshCard(terminal_reader, store.view(KeyRole.DEBIT))
        session.read_state()
        act(session)
        terminal_reader.remove()
        bridge.insert(card)

    def block_by_a_validator() -> None:  # its debit key writes the profile and a log record
        def block(session: KshCard) -> None:
            blocked = session.block(terminal_id=7, time_unix_seconds=1_795_478_400)
            assert blocked.profile.status is CardStatus.BLOCKED  # type: ignore[union-attr]

        with_a_terminal_key(block)

    block_by_a_validator()
    terminal_store = tmp_path / "validator.keys"
    export = ("card", "keystore-export", "--keystore", str(keystore), "--roles", "debit,credit")
    assert ksh(*export, "--out", str(terminal_store), capsys=capsys)[0] == 0
    status, _, err = ksh(*unblock, "--keystore", str(terminal_store), capsys=capsys)
    assert_user_error(status, err, "only an issuing station's key store")
    asyncio.run(desk_knows(database_url, number, issued=False))
    status, _, err = ksh(*unblock, "--keystore", str(keystore), capsys=capsys)
    assert_user_error(status, err, f"card {number} was never issued")

    asyncio.run(desk_knows(database_url, number))
    status, out, err = ksh(*unblock, "--keystore", str(keystore), capsys=capsys)
    assert status == 0, err
    assert f"card {number} unblocked on its chip" in out
    assert f"ksh deny lift {number} --as USERNAME --reason" in out
    verified = info(name, capsys, "--keystore", str(keystore))["ksh"]
    assert verified["profile"]["status"] == "active"
    assert [(r["counter"], r["kind"]) for r in verified["log"]] == [(0, "issue"), (1, "block")]
    assert asyncio.run(unblock_actions(database_url)) == [("ani", number, "found again", 1)]

    # Blocked again (counter 2, taken by the back office), then written active by someone with
    # the debit key, or by a desk whose record was lost: the books still see it blocked, and
    # would hold its next fares apart. The desk records the unblock, the chip as it is.
    block_by_a_validator()
    asyncio.run(block_taken(database_url, number, 2))
    with_a_terminal_key(write_active)
    status, out, err = ksh(*unblock, "--keystore", str(keystore), capsys=capsys)
    assert status == 0, err
    assert "active on its chip already" in out and "at its counter 2" in out
    assert asyncio.run(unblock_actions(database_url))[-1] == ("ani", number, "found again", 2)
    status, _, err = ksh(*unblock, "--keystore", str(keystore), capsys=capsys)
    assert_user_error(status, err, "is not blocked: nothing written")  # recorded once

    # Lost again and replaced: its balance lives on the new card, its chip stays blocked.
    block_by_a_validator()
    asyncio.run(desk_knows(database_url, number, replaced_by="6032900000000050"))
    status, _, err = ksh(*unblock, "--keystore", str(keystore), capsys=capsys)
    assert_user_error(status, err, f"card {number} was replaced by 6032900000000050")
    verified = info(name, capsys, "--keystore", str(keystore))["ksh"]
    assert verified["profile"]["status"] == "blocked"
    assert len(asyncio.run(unblock_actions(database_url))) == 2
