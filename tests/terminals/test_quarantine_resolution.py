"""Supervisors release or write off what the quarantine holds, through `ksh quarantine` against
the records a terminal uploaded over HTTP: money moves only when two supervisors agree, once,
and what is held never reaches a settlement batch until it is released (then the next one)."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest

from bus_terminals.wire import (
    UploadKind,
    sign,
    signature_header,
    terminal_header,
    timestamp_header,
)
from gateways import staff
from gateways.terminal_api import registry
from gateways.terminal_api.accounts import quarantine_write_off_account_id, suspense_account_id
from ledger.audit import check_ledger
from ledger.clock import system_clock
from tests.setup.helpers import Ksh, add_staff, assert_user_error
from tests.terminals.conftest import Backoffice, admin_token, operator_id, test_day_start
from tests.terminals.helpers import post_batch, record

card = "6032984000000701"
never_issued = "6032984000000799"
note = ("--note", "checked the bus's paper log: the sale was real")


async def balance(pool: asyncpg.Pool, account_id: object) -> int:
    async with pool.acquire() as connection:
        value = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1", account_id
        )
    return int(value or 0)


async def operator_batches_rupiah(pool: asyncpg.Pool) -> list[int]:
    async with pool.acquire() as connection:
        rows = await connection.fetch(
            "select owed_rupiah from settlement_batches where party_kind = 'operator' "
            "order by batch_id"
        )
    return [int(row["owed_rupiah"]) for row in rows]


@pytest.fixture
async def ksh(
    backoffice: Backoffice, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Ksh:
    """`ksh` on the back office's database, with budi and dewi (supervisors) and ani (clerk)."""
    monkeypatch.setenv("DATABASE_URL", backoffice.database_url)
    ksh = Ksh(capsys)
    await add_staff(ksh, monkeypatch)
    await ksh.ok("settle", "staff", "dewi", "--role", "supervisor")
    return ksh


async def test_a_release_needs_two_supervisors_and_is_paid_at_the_next_close(
    backoffice: Backoffice, ksh: Ksh
) -> None:
    """A validator reports a sale (not its role: the card's Rp 20,000 waits in suspense) and a
    fare. The day's close pays the operator the fare only; the release, asked by budi and
    confirmed by dewi, books the Rp 20,000 once, and the next close pays it."""
    key = await backoffice.register_validator("BUS-01")
    await backoffice.issue_cards({card: 50_000})
    sale = record("BUS-01", 1, card, 1, 20_000, 30_000, kind=UploadKind.sale)
    fare = record("BUS-01", 2, card, 2, 3_500, 26_500, previous=(1, "BUS-01", 30_000))
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(session, backoffice.url, key, "BUS-01", 1, [sale, fare])
    assert status == 200, answer
    assert await balance(backoffice.pool, suspense_account_id) == 20_000

    day = test_day_start.date().isoformat()
    await ksh.ok("settle", "close", "--day", day)
    assert await operator_batches_rupiah(backoffice.pool) == [3_500]  # the held sale is not
    status_out = (await ksh("settle", "status", "--day", day)).out
    assert "held in quarantine: 1 record, Rp 20,000 (open 1 Rp 20,000" in status_out
    assert "record_not_for_role: 1 record, Rp 20,000" in status_out
    assert "BUS-01: 1 record, Rp 20,000" in status_out

    release = ("quarantine", "release", "BUS-01/1")
    assert_user_error(await ksh(*release, "--as", "ani", *note), "quarantine", "only a supervisor")
    asked = await ksh.ok(*release, "--as", "budi", *note)
    assert "a second supervisor confirms" in asked.out
    assert await balance(backoffice.pool, suspense_account_id) == 20_000  # nothing moved yet
    assert_user_error(await ksh(*release, "--as", "budi", *note), "quarantine", "same person")
    assert_user_error(
        await ksh("quarantine", "write-off", "BUS-01/1", "--as", "dewi", *note),
        "quarantine",
        "budi asked for release",
    )
    confirmed = await ksh.ok(*release, "--as", "dewi", *note)
    assert confirmed.out == "BUS-01/1 released: Rp 20,000 booked (by dewi, asked by budi)\n"
    assert await balance(backoffice.pool, suspense_account_id) == 0
    again = await ksh(*release, "--as", "dewi", *note)
    assert_user_error(again, "quarantine", "released already")
    revenue = registry.operator_revenue_account_id(operator_id)
    async with backoffice.pool.acquire() as connection:
        credited = await connection.fetchval(
            "select count(*) from ledger_transfers where credit_account_id = $1", revenue
        )
    assert credited == 2  # the fare and the release, once

    # Booked after the day's cut-off: the day closed again pays nothing more; today's pays it.
    await ksh.ok("settle", "close", "--day", day)
    assert await operator_batches_rupiah(backoffice.pool) == [3_500]
    await ksh.ok("settle", "close", "--day", system_clock.today().isoformat())
    assert await operator_batches_rupiah(backoffice.pool) == [3_500, 20_000]

    listed = (await ksh.ok("quarantine", "list", "--all", "--json")).json_lines()
    assert [(r["state"], r["requested_by"], r["approved_by"]) for r in listed] == [
        ("released", "budi", "dewi")
    ]
    assert (await ksh.ok("quarantine", "list")).out == "nothing in quarantine\n"
    async with backoffice.pool.acquire() as connection:
        actions = await connection.fetch(
            "select username, action from staff_actions where subject = 'quarantine BUS-01/1' "
            "order by action_id"
        )
        assert await check_ledger(connection) == []
    assert [tuple(row) for row in actions] == [
        ("budi", "request_quarantine_release"),
        ("dewi", "release_quarantine"),
    ]


async def test_write_offs_a_credit_nobody_paid_for_and_a_card_never_issued(
    backoffice: Backoffice, ksh: Ksh
) -> None:
    """A credit with no top-up behind it (suspense paid the card Rp 900,000) is written off by
    two supervisors against the issuer; a sale on a card never issued (nothing booked) by one.
    Neither can be released."""
    key = await backoffice.register_validator("BUS-02")
    await backoffice.issue_cards({card: 10_000})
    credit = record(
        "BUS-02", 1, card, 1, 0, 910_000, kind=UploadKind.topup_credit, top_up=900_000,
        top_up_id="INVENTED",
    )  # fmt: skip
    unknown = record("BUS-02", 2, never_issued, 1, 3_500, 0)
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(
            session, backoffice.url, key, "BUS-02", 1, [credit, unknown]
        )
    assert status == 200, answer
    assert await balance(backoffice.pool, suspense_account_id) == -900_000

    for entry in ("BUS-02/1", "BUS-02/2"):
        refused = await ksh("quarantine", "release", entry, "--as", "budi", *note)
        assert_user_error(refused, "quarantine", "cannot release")
    write_off = ("quarantine", "write-off", "BUS-02/1")
    await ksh.ok(*write_off, "--as", "budi", *note)
    done = await ksh.ok(*write_off, "--as", "dewi", *note)
    assert done.out == "BUS-02/1 written off: Rp 900,000 booked (by dewi, asked by budi)\n"
    alone = await ksh.ok("quarantine", "write-off", "BUS-02/2", "--as", "budi", *note)
    assert alone.out == "BUS-02/2 written off: no money moved (by budi)\n"
    assert await balance(backoffice.pool, suspense_account_id) == 0
    assert await balance(backoffice.pool, quarantine_write_off_account_id) == -900_000
    bad = await ksh("quarantine", "write-off", "BUS-02", "--as", "budi", *note)
    assert_user_error(bad, "quarantine", "is not TERMINAL/SEQUENCE")
    async with backoffice.pool.acquire() as connection:
        assert await check_ledger(connection) == []


async def test_a_terminal_with_too_many_quarantined_records_is_suspended_until_resumed(
    backoffice: Backoffice, ksh: Ksh
) -> None:
    """Four records quarantined in a day (at most three allowed by default): the upload that
    shows the fourth is accepted, and the terminal is suspended (source automatic). Its next
    upload and its sync are refused with `terminal_suspended`; what it uploaded before is as
    it was; /metrics and `ksh terminal show` say why. A supervisor resumes it."""
    backoffice.clock.set(system_clock.now())  # `ksh` counts the last 24 hours by its clock
    key = await backoffice.register_validator("BUS-03")
    await backoffice.issue_cards({card: 50_000})
    fare = record("BUS-03", 1, card, 1, 3_500, 46_500)
    unknown = [record("BUS-03", s, never_issued, s, 3_500, 0) for s in range(2, 6)]
    next_fare = record("BUS-03", 6, card, 2, 3_500, 43_000, previous=(1, "BUS-03", 46_500))
    revenue = registry.operator_revenue_account_id(operator_id)
    async with aiohttp.ClientSession() as session:
        first = await post_batch(session, backoffice.url, key, "BUS-03", 1, [fare, *unknown[:2]])
        assert first[0] == 200, first
        second = await post_batch(session, backoffice.url, key, "BUS-03", 2, unknown[1:3])
        assert second[0] == 200, second  # (a repeat of record 3 is only acknowledged)
        async with backoffice.pool.acquire() as connection:
            assert (
                await connection.fetchval(
                    "select status from terminals where terminal_id = 'BUS-03'"
                )
                == "active"
            )  # three: at the limit
        third = await post_batch(session, backoffice.url, key, "BUS-03", 3, [unknown[3]])
        assert third[0] == 200, third  # the fourth: accepted, and the terminal suspended
        refused = await post_batch(session, backoffice.url, key, "BUS-03", 4, [next_fare])
        assert (refused[0], refused[1]["code"]) == (403, "terminal_suspended")
        assert "ksh terminal resume" in str(refused[1]["detail"])
        path = "/terminal/v1/sync?deny_since=0"
        now = str(backoffice.clock.unix_ms())
        signed = sign(key, f"GET\n{path}\n{now}".encode())
        headers = {terminal_header: "BUS-03", signature_header: signed, timestamp_header: now}
        async with session.get(backoffice.url + path, headers=headers) as response:
            assert (response.status, (await response.json())["code"]) == (
                403,
                "terminal_suspended",
            )
        async with session.get(backoffice.url + "/metrics") as response:
            metrics = await response.text()
    assert 'ksh_terminal_quarantined_records{terminal="BUS-03",reason="unknown_card"} 4' in metrics
    assert 'ksh_terminal_suspended{terminal="BUS-03",source="automatic"} 1' in metrics
    assert await balance(backoffice.pool, revenue) == 3_500  # the fare before stays booked

    shown = (await ksh.ok("terminal", "show", "BUS-03")).out
    assert "unknown_card 4" in shown
    assert "by automatic: 4 records quarantined in 24 hours (at most 3)" in shown
    listed = (await ksh.ok("terminal", "list", "--json")).json_lines()
    assert [(t["status"], t["quarantined_24h"]) for t in listed] == [
        ("suspended", {"unknown_card": 4})
    ]
    why = ("--reason", "the unknown card was a test card; the bus is fine")
    denied = await ksh("terminal", "resume", "BUS-03", "--as", "ani", *why)
    assert_user_error(denied, "terminal", "only a supervisor")
    resumed = await ksh.ok("terminal", "resume", "BUS-03", "--as", "budi", *why)
    assert resumed.out == "terminal BUS-03 resumed: its uploads are accepted again\n"
    again = await ksh("terminal", "resume", "BUS-03", "--as", "budi", *why)
    assert_user_error(again, "terminal", "is active, not suspended")
    async with aiohttp.ClientSession() as session:
        accepted = await post_batch(session, backoffice.url, key, "BUS-03", 4, [next_fare])
    assert accepted[0] == 200, accepted
    assert await balance(backoffice.pool, revenue) == 7_000
    (bus,) = (await ksh.ok("terminal", "show", "BUS-03", "--json")).json_lines()
    assert [(e["action"], e["username"]) for e in bus["history"]][-2:] == [
        ("suspend_terminal", "automatic"),
        ("resume_terminal", "budi"),
    ]


async def test_the_admin_api_releases_with_two_supervisors_tokens(backoffice: Backoffice) -> None:
    """The same four eyes through `POST /admin/v1/quarantine/T/SEQ/release`, each supervisor
    with a token of their own; a clerk's token is refused."""
    key = await backoffice.register_validator("BUS-04")
    await backoffice.issue_cards({card: 50_000})
    tokens = {"dewi": "dewi-supervisor-token", "ani": "ani-clerk-token-00"}
    async with backoffice.pool.acquire() as connection:
        for username, role in (("dewi", staff.Role.supervisor), ("ani", staff.Role.clerk)):
            await staff.issue_token(
                connection,
                staff.StaffMember(username, role),
                issued_by="tests",
                now=backoffice.clock.now(),
                token=tokens[username],
            )
    sale = record("BUS-04", 1, card, 1, 20_000, 30_000, kind=UploadKind.sale)
    url = f"{backoffice.url}/admin/v1/quarantine/BUS-04/1/release"
    body = {"reason": "the bus's paper log shows the sale"}

    async def release(session: aiohttp.ClientSession, token: str) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"}
        async with session.post(url, json=body, headers=headers) as response:
            return response.status, await response.json()

    async with aiohttp.ClientSession() as session:
        assert (await post_batch(session, backoffice.url, key, "BUS-04", 1, [sale]))[0] == 200
        status, clerk = await release(session, tokens["ani"])
        assert (status, clerk["code"]) == (403, "forbidden")
        status, asked = await release(session, admin_token)
        assert (status, asked["result"], asked["rupiah"]) == (202, "awaiting_second", 20_000)
        status, again = await release(session, admin_token)
        assert (status, again["code"]) == (409, "same_person")
        status, done = await release(session, tokens["dewi"])
        assert (status, done["result"], done["requested_by"]) == (200, "done", "terminal-tests")
        assert len(done["transfer_ids"]) == 1
        status, twice = await release(session, tokens["dewi"])
        assert (status, twice["code"]) == (409, "already_resolved")
    revenue = registry.operator_revenue_account_id(operator_id)
    assert await balance(backoffice.pool, revenue) == 20_000
    assert await balance(backoffice.pool, suspense_account_id) == 0
