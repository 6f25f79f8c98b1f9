"""Key custody: no terminal holds a master key. `ksh validator` and `ksh pos` run from a SoftHSM 2
token (or a role-limited key store, for development); a store or token with roles they must not
hold is refused; keys are exported, rolled and loaded into tokens from the command line."""

from __future__ import annotations

import gc
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from card_reader.keys import KeyRole, KeyStore
from ksh.cli import main
from tests.waiting import wait_until

project_root = Path(__file__).resolve().parents[2]
passphrase = "custody-passphrase"
pin = "custody-pin-1234"
unreachable_backoffice = "http://127.0.0.1:9"  # discard port: sync fails, taps go on


def ksh(
    folder: Path, *argv: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "ksh", *argv],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KSH_KEYSTORE_PASSPHRASE": passphrase, "KSH_TOKEN_PIN": pin, **env},
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh issuer (random masters this test process never sees until it looks for them),
    a validator's token, a POS's token, and a deck of issued cards: all from the command line."""
    folder = tmp_path_factory.mktemp("issuer")
    ksh(folder, "card", "keystore-new", "--out", "issuer.keys")
    ksh(folder, "card", "deck-new", "--keystore", "issuer.keys", "--cards", "2", "--out", "deck.json",
        "--balance", "50000")  # fmt: skip
    for label, roles in (("validator", "debit,credit"), ("pos", "debit"), ("backoffice", "tmac")):
        ksh(folder, "card", "token-load", "--keystore", "issuer.keys", "--roles", roles,
            "--token-dir", "tokens", "--token-label", label)  # fmt: skip
    for terminal in ("V1", "P1"):
        ksh(folder, "validator", "--terminal-id", terminal, "--state", terminal, "--init")
    return folder


class Lines:
    """stdin for a terminal command: lines handed over one at a time."""

    def __init__(self) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()

    def __iter__(self) -> Iterator[str]:
        while (line := self.queue.get()) is not None:
            yield line


class Output:
    """stdout for a terminal command: the lines it printed."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass


def strings_held() -> list[bytes | str]:
    """Every bytes, bytearray and str object the process can reach through the collector (the
    contents of every container: instance dicts, closures, caches, frames)."""
    held: list[bytes | str] = []
    for container in gc.get_objects():
        for item in gc.get_referents(container):
            if isinstance(item, (bytes, bytearray, str)) and len(item) >= 16:
                held.append(bytes(item) if isinstance(item, bytearray) else item)
    return held


def masters_found(held: list[bytes | str], store: KeyStore) -> list[str]:
    found = []
    for role in store.roles:
        for master in store.accepted_keys(role):
            hexed = master.key.hex()
            for item in held:
                if isinstance(item, bytes) and master.key in item:
                    found.append(f"{role.value} v{master.version} (bytes)")
                elif isinstance(item, str) and hexed in item.lower():
                    found.append(f"{role.value} v{master.version} (hex)")
    return sorted(set(found))


def run_terminal_and_look(
    monkeypatch: pytest.MonkeyPatch, folder: Path, argv: list[str], taps: list[str]
) -> tuple[str, list[bytes | str]]:
    """Run a terminal command in this process (as `ksh` would), tap the deck's cards, and, with
    the terminal still running between two taps, collect every string it can reach."""
    lines, output = Lines(), Output()
    monkeypatch.setattr(sys, "stdin", lines)
    monkeypatch.setattr(sys, "stdout", output)
    held: list[list[bytes | str]] = []

    def operate() -> None:
        try:
            for line in taps:
                lines.queue.put(line + "\n")
            wait_until(lambda: output.text.count("\n") >= len(taps), "every tap answered")
            held.append(strings_held())
        finally:
            lines.queue.put(None)

    monkeypatch.chdir(folder)
    operator = threading.Thread(target=operate)
    operator.start()
    status = main(argv)
    operator.join()
    assert status == 0
    assert held, output.text
    return output.text, held[0]


def test_no_terminal_process_holds_a_master_key(
    monkeypatch: pytest.MonkeyPatch, issuer: Path
) -> None:
    monkeypatch.setenv("KSH_KEYSTORE_PASSPHRASE", passphrase)
    monkeypatch.setenv("KSH_TOKEN_PIN", pin)
    common = ["--emulated", "deck.json", "--backoffice", unreachable_backoffice,
              "--token-dir", "tokens"]  # fmt: skip
    validator = ["validator", "--terminal-id", "V1", "--state", "V1", "--route", "K1",
                 "--token-label", "validator", *common]  # fmt: skip
    out, validator_held = run_terminal_and_look(monkeypatch, issuer, validator, ["0", "1", "0"])
    # Each card authenticated with its token-made debit key and was read in that session; the
    # fare is the wall clock's (no service at night): charged, or refused for want of a fare.
    answers = [json.loads(line) for line in out.splitlines()]
    assert [answer["card_number"][-1] for answer in answers] == ["1", "2", "1"], out
    assert all(a["verdict"] == "accepted" or a["reason"] == "no_fare" for a in answers), out
    pos = ["pos", "--terminal-id", "P1", "--state", "P1", "--merchant", "M1",
           "--token-label", "pos", *common]  # fmt: skip
    out, pos_held = run_terminal_and_look(monkeypatch, issuer, pos, ["0 sale 2500", "0 refund"])
    sale, refund = (json.loads(line) for line in out.splitlines())
    fares = sum(a["amount_rupiah"] for a in answers[::2] if a["verdict"] == "accepted")
    assert (sale["verdict"], sale["balance_rupiah"]) == ("accepted", 50_000 - fares - 2_500), out
    assert (refund["verdict"], refund["reason"]) == ("denied", "role_not_held"), out  # debit only
    # The same look at the development path, a POS from a debit-only key store file: it holds
    # the debit master (so the look does find a master where one is held), and nothing else.
    ksh(issuer, "card", "keystore-export", "--keystore", "issuer.keys", "--roles", "debit",
        "--out", "pos.keys")  # fmt: skip
    from_file = ["pos", "--terminal-id", "P1", "--state", "P1", "--merchant", "M1",
                 "--emulated", "deck.json", "--backoffice", unreachable_backoffice,
                 "--keystore", "pos.keys"]  # fmt: skip
    _, file_held = run_terminal_and_look(monkeypatch, issuer, from_file, ["0 sale 1000"])
    # Only now does this process learn the masters, to look for them in what the terminals held.
    store = KeyStore.load(issuer / "issuer.keys", passphrase)
    assert masters_found(validator_held, store) == []
    assert masters_found(pos_held, store) == []
    assert {found.split(" (")[0] for found in masters_found(file_held, store)} == {"debit v1"}


def test_terminals_refuse_keys_of_roles_they_must_not_hold(issuer: Path) -> None:
    common = ["--emulated", "deck.json", "--backoffice", unreachable_backoffice]
    validator = ["validator", "--terminal-id", "V1", "--state", "V1", "--route", "K1", *common]
    done = ksh(issuer, *validator, "--keystore", "issuer.keys", check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "ksh validator: error: the key store issuer.keys holds personalisation, read, tmac "
        "keys, which a validator must not hold (a validator may hold credit, debit: ksh card "
        "keystore-export or token-load --roles)"
    ]
    done = ksh(issuer, *validator, "--token-dir", "tokens", "--token-label", "backoffice",
               check=False)  # fmt: skip
    assert done.returncode == 2
    assert "token 'backoffice' holds tmac keys, which a validator must not hold" in done.stderr
    pos = ["pos", "--terminal-id", "P1", "--state", "P1", "--merchant", "M1", *common]
    done = ksh(issuer, *pos, "--token-dir", "tokens", "--token-label", "backoffice", check=False)
    assert "which a POS must not hold" in done.stderr and done.returncode == 2
    done = ksh(issuer, *pos, "--token-dir", "tokens", "--token-label", "pos", check=False,
               KSH_TOKEN_PIN="wrong-pin")  # fmt: skip
    assert done.stderr.strip() == "ksh pos: error: wrong PIN for token 'pos'"
    done = ksh(issuer, *pos, "--token-dir", "tokens", "--token-label", "nope", check=False)
    assert "no token labelled 'nope' in tokens" in done.stderr


def test_export_roll_and_reload_a_token_from_the_command_line(issuer: Path) -> None:
    folder = issuer / "roll"
    folder.mkdir()
    ksh(folder, "card", "keystore-new", "--out", "issuer.keys")
    done = ksh(folder, "card", "keystore-export", "--keystore", "issuer.keys", "--roles",
               "debit,credit", "--out", "validator.keys")  # fmt: skip
    assert done.stdout.strip() == "key store -> validator.keys (debit v1, credit v1)"
    exported = KeyStore.load(folder / "validator.keys", passphrase)
    assert exported.roles == {KeyRole.DEBIT, KeyRole.CREDIT}
    ksh(folder, "card", "token-load", "--keystore", "issuer.keys", "--roles", "debit",
        "--token-dir", "tokens", "--token-label", "v")  # fmt: skip
    done = ksh(folder, "card", "keystore-roll", "--keystore", "issuer.keys", "--role", "debit")
    assert done.stdout.startswith("debit: version 2 is current; accepted v2, v1.")
    done = ksh(folder, "card", "token-load", "--keystore", "issuer.keys", "--roles", "debit",
               "--token-dir", "tokens", "--token-label", "v")  # fmt: skip
    assert done.stdout.strip() == "token 'v' in tokens (updated): debit v2, debit v1"
    ksh(folder, "card", "keystore-roll", "--keystore", "issuer.keys", "--role", "debit")
    done = ksh(folder, "card", "token-load", "--keystore", "issuer.keys", "--roles", "debit",
               "--token-dir", "tokens", "--token-label", "v")  # fmt: skip
    assert done.stdout.strip() == "token 'v' in tokens (updated): debit v3, debit v2"
    done = ksh(folder, "card", "keystore-export", "--keystore", "issuer.keys", "--roles", "debit",
               "--out", "validator.keys", check=False)  # fmt: skip
    assert done.stderr.strip() == (
        "ksh card: error: validator.keys exists (use --force to overwrite it)"
    )
    done = ksh(folder, "card", "keystore-export", "--keystore", "validator.keys", "--roles",
               "tmac", "--out", "x.keys", check=False)  # fmt: skip
    assert done.returncode == 2 and "holds no tmac key" in done.stderr
    assert not (folder / "x.keys").exists()


def test_the_back_office_takes_its_tmac_keys_from_a_token(
    monkeypatch: pytest.MonkeyPatch, issuer: Path
) -> None:
    from card_reader import tmac
    from gateways.terminal_api.ingest import ProofKeys
    from ksh.cli import UserError
    from ksh.commands.serve import transaction_mac_token

    monkeypatch.setenv("KSH_TOKEN_PIN", pin)
    token = transaction_mac_token(issuer / "tokens", "backoffice")
    assert token is not None and token["label"] == "backoffice"
    store = KeyStore.load(issuer / "issuer.keys", passphrase)
    uid = bytes.fromhex("04A1B2C3D4E5F6")
    expected = tuple(tmac.card_key(m, uid) for m in store.accepted_master_keys(KeyRole.TMAC))
    assert ProofKeys(token=token).proof(uid).keys == expected
    with pytest.raises(UserError, match="token 'validator' holds credit, debit keys, which a "
                       "back office must not hold"):  # fmt: skip
        transaction_mac_token(issuer / "tokens", "validator")
    assert transaction_mac_token(None, "ksh") is None


def key_versions(deck: Path) -> list[int]:
    """Each deck card's debit key version (key 2 of the KSH application), as the card holds it."""
    from card_reader.emulator import load_deck
    from card_reader.ksh_card import key_numbers, ksh_application_id

    return [
        card.applications[ksh_application_id].keys[key_numbers[KeyRole.DEBIT]][1]
        for card in load_deck(deck)
    ]


def test_after_a_roll_over_a_tap_moves_the_card_to_the_new_key(issuer: Path) -> None:
    """Rotation: roll the debit master, load the token again, and a POS running from that token
    changes the card's debit key at its next tap; the tap after uses the new key directly."""
    assert key_versions(issuer / "deck.json") == [1, 1]
    ksh(issuer, "card", "keystore-roll", "--keystore", "issuer.keys", "--role", "debit")
    ksh(issuer, "card", "token-load", "--keystore", "issuer.keys", "--roles", "debit",
        "--token-dir", "tokens", "--token-label", "pos")  # fmt: skip
    pos = ["pos", "--terminal-id", "P1", "--state", "P1", "--merchant", "M1", "--emulated",
           "deck.json", "--backoffice", unreachable_backoffice, "--token-dir", "tokens",
           "--token-label", "pos"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "ksh", *pos],
        cwd=issuer,
        input="0 sale 100\n0 sale 100\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "KSH_TOKEN_PIN": pin},
    )
    assert done.returncode == 0, done.stderr
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [answer["verdict"] for answer in answers] == ["accepted", "accepted"], done.stdout
    assert key_versions(issuer / "deck.json") == [2, 1]  # the card tapped moved; the other not
