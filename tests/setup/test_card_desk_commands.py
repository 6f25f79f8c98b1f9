"""The service desk from the command line, in the order staff work: `ksh cards register`,
`block`, `replace`, `show`; `ksh deny list`, `review`, `lift`, `show`. Mistakes are one line,
exit 2, and change nothing."""

from __future__ import annotations

import asyncpg
import pytest

from gateways.terminal_api import registry
from tests.setup.helpers import Ksh, add_staff, assert_user_error, books_snapshot

lost = "6032984000000001"
spare = "6032984000000002"
why = ("--reason", "rider at the Simpang Lima desk")


@pytest.fixture
async def ksh(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Ksh:
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = Ksh(capsys)
    await add_staff(runner, monkeypatch)
    await runner.ok("settle", "staff", "dewi", "--role", "supervisor")
    for number, opening in ((lost, "50000"), (spare, "0")):
        await runner.ok(
            "cards", "issue", "--number", number, "--opening-balance", opening, "--as", "ani", *why
        )
    return runner


async def test_a_lost_card_registered_blocked_and_replaced(ksh: Ksh, database_url: str) -> None:
    ran = await ksh.ok(
        "cards", "register", lost, "--name", "Siti Rahayu", "--nik", "3374012345678901",
        "--phone", "0812 3456 7890", "--as", "ani", *why,
    )  # fmt: skip
    assert ran.out == (
        f"card {lost} registered to Siti Rahayu (NIK ****8901): it may hold up to Rp 20,000,000\n"
    )
    before = await books_snapshot(database_url)
    mistakes = [
        (f"cards replace {lost} --new {spare} --as ani", "is not blocked as lost"),
        (f"cards register {spare} --name X --nik 12 --phone 0812345678 --as ani", "16-digit"),
        (f"cards block {lost} --cause lost --as citra", "citra is an auditor"),
        ("cards block 6032984000000009 --cause lost --as ani", "was never issued"),
    ]
    for line, fragment in mistakes:
        assert_user_error(await ksh(*line.split(), *why), "cards", fragment)
    assert await books_snapshot(database_url) == before

    ran = await ksh.ok("cards", "block", lost, "--cause", "lost", "--as", "ani", *why)
    assert "terminals refuse it from their next sync" in ran.out
    ran = await ksh.ok(
        "cards", "replace", lost, "--new", spare, "--wait-days", "0", "--as", "ani", *why
    )
    assert f"card {lost} is replaced by {spare}\n" in ran.out
    assert "Rp 50,000 from the purse and Rp 0 pending" in ran.out
    shown = (await ksh.ok("cards", "show", spare)).out
    assert "Siti Rahayu (NIK ****8901, 081234567890)" in shown
    assert "pending top-ups  Rp 50,000" in shown
    shown = (await ksh.ok("cards", "show", lost)).out
    assert "purse            Rp 0" in shown
    assert f"replaced by      {spare}" in shown
    assert_user_error(
        await ksh("deny", "lift", lost, "--as", "budi", *why), "deny", "it stays denied"
    )
    connection = await asyncpg.connect(database_url)
    try:
        purse_flags = await connection.fetchval(
            "select flags from ledger_accounts where id = $1", registry.purse_account_id(lost)
        )
        actions = await connection.fetch(
            "select username, action from staff_actions where subject = $1 order by action_id",
            lost,
        )
    finally:
        await connection.close()
    assert purse_flags & 4  # closed
    assert [tuple(row) for row in actions] == [
        ("ani", "issue_card"),
        ("ani", "register_card"),
        ("ani", "block_card"),
        ("ani", "replace_card"),
    ]


async def test_a_fraud_block_is_lifted_by_two_people(ksh: Ksh) -> None:
    await ksh.ok("cards", "block", lost, "--cause", "fraud", "--as", "ani", *why)
    listed = (await ksh.ok("deny", "list", "--json")).json_lines()
    assert [(e["card_number"], e["reason"], e["source"]) for e in listed] == [
        (lost, "fraud", "staff")
    ]
    assert (await ksh.ok("deny", "list", "--unreviewed")).out.count("\n") == 1  # the header
    ran = await ksh.ok("deny", "lift", lost, "--as", "budi", *why)
    assert "waits for a supervisor other than you" in ran.out
    assert_user_error(await ksh("deny", "lift", lost, "--as", "budi", *why), "deny", "second")
    ran = await ksh.ok("deny", "lift", lost, "--as", "dewi", *why)
    assert f"card {lost} lifted" in ran.out
    history = (await ksh.ok("deny", "show", lost)).out.splitlines()
    assert [line.split()[0] for line in history] == ["change", "added", "lift_requested", "lifted"]
    assert_user_error(await ksh("deny", "show", spare), "deny", "never on the deny list")
