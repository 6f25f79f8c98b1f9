"""The terminal commands from the command line: `ksh simulate` (in-process back office over a
fresh database), `ksh validator --init`, and one-line errors for bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    status, out, err = run(
        capsys, "simulate", "--buses", "3", "--cards", "15", "--seed", "5", "--json",
        "--folder", str(tmp_path),
    )  # fmt: skip
    assert status == 0, err
    summary = json.loads(out)
    assert summary["cards_checked"] == 15
    assert summary["cards_mismatched"] == []
    assert summary["taps"] > 20


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
    assert "give --keystore FILE (or --demo-keys for emulated demo decks)" in err
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
