"""`ksh merchant qris`: a supervisor lets a merchant take QRIS through its acquiring bank, in
an MDR category; mistakes are one line and change nothing."""

from __future__ import annotations

import asyncpg
import pytest

from gateways.snap import signature
from gateways.snap.partners import Partner, save_partner
from tests.setup.helpers import Ksh, add_staff, assert_user_error, books_snapshot

why = ("--as", "budi", "--reason", "QRIS for the stall")


@pytest.fixture
async def ksh(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Ksh:
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = Ksh(capsys)
    await add_staff(runner, monkeypatch)
    connection = await asyncpg.connect(database_url)
    try:
        await save_partner(
            connection,
            Partner(
                partner_id="JATENG-QRIS",
                name="Bank Jateng",
                client_secret="s" * 16,
                public_key_pem=signature.public_key_pem(
                    signature.generate_private_key().public_key()
                ).decode(),
                channel_id="95221",
                company_code="88113",
                bank_code="113",
            ),
        )
    finally:
        await connection.close()
    await runner.ok("merchant", "add", "--id", "warung-sugeng", *why)
    return runner


async def test_a_merchant_takes_qris_and_mistakes_change_nothing(ksh: Ksh, database_url: str):
    ran = await ksh.ok(
        "merchant", "qris", "warung-sugeng", "--acquirer", "JATENG-QRIS",
        "--acquirer-merchant-id", "022591481", "--category", "UMI", *why,
    )  # fmt: skip
    assert ran.out == "merchant warung-sugeng takes QRIS through JATENG-QRIS (UMI)\n"
    connection = await asyncpg.connect(database_url)
    try:
        row = await connection.fetchrow("select * from qris_payees")
        assert (row["partner_id"], row["acquirer_merchant_id"], row["mdr_category"]) == (
            "JATENG-QRIS",
            "022591481",
            "UMI",
        )
        assert (
            await connection.fetchval(
                "select count(*) from staff_actions where action = 'set_merchant_qris'"
            )
            == 1
        )
    finally:
        await connection.close()

    before = await books_snapshot(database_url)
    for argv, fragment in (
        (("nobody", "--acquirer", "JATENG-QRIS"), "merchant nobody is not registered"),
        (("warung-sugeng", "--acquirer", "NO-BANK"), "no SNAP partner NO-BANK"),
    ):
        ran = await ksh(
            "merchant", "qris", *argv, "--acquirer-merchant-id", "1", "--category", "UKE", *why
        )
        assert_user_error(ran, "merchant", fragment)
    assert await books_snapshot(database_url) == before
