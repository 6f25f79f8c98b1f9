"""The terminal commands from the command line: `ksh simulate` (in-process back office over a
fresh database), `ksh validator --init`, and one-line errors for bad arguments."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from card_reader.emulator import EmulatedCard, EmulatedReader, load_deck
from card_reader.keys import KeyRole, demo_key_store
from card_reader.ksh_card import KshCard
from ksh.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_simulate_prints_a_summary_where_every_card_matches_its_purse(
    postgres_server_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DATABASE_URL", postgres_server_url)
    deck = tmp_path / "cards.json"
    status, out, err = run(
        capsys, "simulate", "--buses", "3", "--cards", "15", "--seed", "5", "--json",
        "--folder", str(tmp_path), "--cards-out", str(deck), "--keep-database",
    )  # fmt: skip
    assert status == 0, err
    summary = json.loads(out)
    assert summary["cards_checked"] == 15
    assert summary["cards_mismatched"] == []
    assert summary["taps"] > 20
    # Audited from outside: the cards as they ended, against the kept database's books.
    [kept] = [line.rsplit(": ", 1)[1] for line in err.splitlines() if "database is kept" in line]
    cards = dict(map(number_and_balance, load_deck(deck)))
    assert len(cards) == 15

    async def purses() -> dict[str, int]:
        connection = await asyncpg.connect(kept)
        try:
            rows = await connection.fetch(
                "select owner_reference, credits_posted - debits_posted as balance "
                "from ledger_accounts where kind = 'card_purse'"
            )
        finally:
            await connection.close()
        return {row["owner_reference"]: int(row["balance"]) for row in rows}

    assert asyncio.run(purses()) == cards

    async def drop_kept() -> None:
        admin = await asyncpg.connect(postgres_server_url)
        try:
            name = kept.partition("?")[0].rsplit("/", 1)[1]
            await admin.execute(f'drop database "{name}" with (force)')
        finally:
            await admin.close()

    asyncio.run(drop_kept())


def number_and_balance(card: EmulatedCard) -> tuple[str, int]:
    """What the card itself says: its number and purse (read with the read key, as any
    inspection point would)."""
    reader = EmulatedReader("inspection")
    reader.insert(card)
    state = KshCard(reader, demo_key_store().view(KeyRole.READ)).read_state()
    reader.remove()
    return str(state.profile.card_number), state.balance_rupiah


def test_validator_init_and_argument_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, out, _ = run(
        capsys, "validator", "--terminal-id", "V1", "--state", str(tmp_path), "--init"
    )
    assert status == 0
    public_key = out.strip()
    assert len(public_key) == 44
    status, out, _ = run(
        capsys, "validator", "--terminal-id", "V1", "--state", str(tmp_path), "--init"
    )
    assert out.strip() == public_key  # the key is made once
    deck = tmp_path / "deck.json"
    status, _, err = run(
        capsys, "validator", "--terminal-id", "V1", "--state", str(tmp_path), "--emulated",
        str(deck), "--route", "NOPE",
    )  # fmt: skip
    assert status == 2
    assert "route 'NOPE' is not in the tariff" in err
    status, _, err = run(
        capsys, "validator", "--terminal-id", "V1", "--state", str(tmp_path), "--route", "K1"
    )
    assert (status, err.strip().endswith("give --reader NAME or --emulated DECK")) == (2, True)
    status, _, err = run(
        capsys, "validator", "--terminal-id", "V1", "--state", str(tmp_path), "--emulated",
        str(deck), "--route", "K1",
    )  # fmt: skip
    assert status == 2  # the public demo keys are never a silent default
    assert "give --token-dir DIR, --keystore FILE (or --demo-keys for emulated demo decks)" in err
    status, _, err = run(
        capsys, "validator", "--terminal-id", "V1", "--state", str(tmp_path), "--emulated",
        str(deck), "--route", "K1", "--keystore", str(tmp_path / "missing.keys"),
    )  # fmt: skip
    assert status == 2
    assert "no key store at" in err
    status, _, err = run(capsys, "simulate", "--cards", "0")
    assert status == 2
    status, _, err = run(
        capsys, "pos", "--terminal-id", "P1", "--state", str(tmp_path), "--merchant", "M"
    )
    assert status == 2


def test_serve_takes_the_transaction_mac_masters_from_the_issuers_key_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ksh serve --keystore FILE` hands every serving process the issuer's TMAC masters
    (current first) and nothing else of the store; a wrong passphrase is a one-line error."""
    from card_reader.keys import KeyRole, KeyStore
    from ksh.cli import UserError
    from ksh.commands.serve import transaction_mac_masters

    store = KeyStore.generate()
    store.roll_over(KeyRole.TMAC)
    path = tmp_path / "issuer.keys"
    path.write_bytes(store.seal("a passphrase long enough"))
    monkeypatch.setenv("KSH_KEYSTORE_PASSPHRASE", "a passphrase long enough")
    masters = transaction_mac_masters(path)
    assert masters == store.accepted_master_keys(KeyRole.TMAC)
    assert masters[0] == store.master_key(KeyRole.TMAC).key  # the current version first
    assert transaction_mac_masters(None) == ()
    monkeypatch.setenv("KSH_KEYSTORE_PASSPHRASE", "not the passphrase at all")
    with pytest.raises(UserError, match="cannot open the key store"):
        transaction_mac_masters(path)
