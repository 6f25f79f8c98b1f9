"""`ksh partner` and `ksh bank-sim` from the command line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from ksh.cli import main
from tests.snap.conftest import Harness, issuer_account_no, va_number


async def test_partner_commands(
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    key = tmp_path / "keys" / "ksh-snap.pem"

    def run(*argv: str) -> int:
        return main(list(argv))

    assert await asyncio.to_thread(run, "partner", "own-key", "--generate", "--out", str(key)) == 0
    public = capsys.readouterr().out
    assert public.startswith("-----BEGIN PUBLIC KEY-----")
    assert key.stat().st_mode & 0o777 == 0o600
    assert await asyncio.to_thread(run, "partner", "own-key", "--generate", "--out", str(key)) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert await asyncio.to_thread(run, "partner", "own-key", "--out", str(key)) == 0
    assert capsys.readouterr().out == public

    bank_public = tmp_path / "bank.pub.pem"
    bank_public.write_text(public)
    add = ["partner", "add", "--id", "BNI-01", "--client-secret", "0123456789abcdef0123",
           "--public-key", str(bank_public), "--channel", "95221", "--company-code", "88001",
           "--bank-code", "009", "--on-us", "--top-up-fee", "750"]  # fmt: skip
    assert await asyncio.to_thread(run, *add) == 0
    assert "'   88001'" in capsys.readouterr().out
    assert await asyncio.to_thread(run, "partner", "list") == 0
    assert "BNI-01" in capsys.readouterr().out
    same_prefix = [arg if arg != "BNI-01" else "BRI-01" for arg in add]
    assert await asyncio.to_thread(run, *same_prefix) == 2
    assert "company code 88001 is already another partner's" in capsys.readouterr().err

    over_cap = [*add[:-1], "751"]
    assert await asyncio.to_thread(run, *over_cap) == 2
    assert "Bank Indonesia cap" in capsys.readouterr().err
    not_a_key = tmp_path / "junk.pem"
    not_a_key.write_text("hello")
    bad_key = [arg if arg != str(bank_public) else str(not_a_key) for arg in add]
    assert await asyncio.to_thread(run, *bad_key) == 2
    assert "public key" in capsys.readouterr().err


async def test_bank_sim_commands(
    harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(*argv: str) -> int:
        return main(list(argv))

    url = harness.bank_base_url
    assert (
        await asyncio.to_thread(
            run, "bank-sim", "pay-va", "--url", url, "--va", va_number(), "--amount", "30000"
        )
        == 0
    )
    assert '"paymentResponseCode": "2002500"' in capsys.readouterr().out
    out = tmp_path / "statement.sta"
    day = harness.bank.today().isoformat()
    assert (
        await asyncio.to_thread(
            run,
            "bank-sim",
            "statement",
            "--url",
            url,
            "--account",
            issuer_account_no,
            "--day",
            day,
            "--out",
            str(out),
        )
        == 0
    )
    assert "C30000,00NTRF" in out.read_text()
    assert (
        await asyncio.to_thread(
            run, "bank-sim", "trouble", "--url", url, "--fail-next-transfers", "2"
        )
        == 0
    )
    assert harness.bank.trouble.fail_next_transfers == 2
    assert await asyncio.to_thread(run, "bank-sim", "trouble", "--url", "http://127.0.0.1:9") == 2
    assert (
        await asyncio.to_thread(
            run, "bank-sim", "trouble", "--url", "http://127.0.0.1:9", "--lose-next-answers", "1"
        )
        == 2
    )
    assert "not reachable" in capsys.readouterr().err
