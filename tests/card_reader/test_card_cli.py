"""`ksh card` end to end: a software card in vpcd (the `emulate` command, as a process) and the
service-desk commands through pyscard → pcscd → vpcd, plus their user errors (exit 2, one line)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from card_reader.desfire import Desfire
from card_reader.emulator import load_deck
from card_reader.pcsc import PcscReader
from ksh.cli import main

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


class Emulator:
    """`ksh card emulate` as its own process, stopped with Ctrl-C (SIGINT)."""

    def __init__(self, *arguments: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ksh", "card", "emulate", *arguments],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def interrupt(self) -> tuple[int, str, str]:
        self.process.send_signal(signal.SIGINT)
        out, err = self.process.communicate(timeout=10)
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


def test_deck_card_in_vpcd_is_seen_by_pcsc_and_saved_back(
    pcsc_reader_name: str, deck: Path, emulators: list[Emulator]
) -> None:
    cards_before = load_deck(deck)
    emulator = Emulator("--deck", str(deck), "--index", "1")
    emulators.append(emulator)
    with PcscReader(pcsc_reader_name) as reader:
        assert reader.wait_for_card(card_timeout_ms)
        assert reader.card_uid == cards_before[1].uid
        desfire = Desfire(reader, card_uid=reader.card_uid)
        desfire.authenticate_ev2_first(0, bytes(16))
        desfire.create_application(0x010203, 0x0F, 1)
        status, out, err = emulator.interrupt()
        assert status == 0, err
        assert cards_before[1].uid.hex().upper() in out
        assert reader.wait_for_removal(card_timeout_ms)
    cards_after = load_deck(deck)
    assert 0x010203 in cards_after[1].applications
    assert cards_after[0].to_dict() == cards_before[0].to_dict()
    assert cards_after[2].to_dict() == cards_before[2].to_dict()


def test_readers_lists_the_virtual_reader(
    pcsc_reader_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = ksh("card", "readers", capsys=capsys)
    assert status == 0
    assert pcsc_reader_name in out.splitlines()


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
