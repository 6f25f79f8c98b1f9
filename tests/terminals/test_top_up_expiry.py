"""Pending top-ups no card took go back (`settlement.top_up_refunds`), on the real database and
the terminal API over HTTP: a counter top-up (no bank account known) older than the setting
leaves the terminals' list, waits 3 days for deliveries on their way (one is paid as usual),
and goes on the refund-due list, booked once however often the
sweep runs; a fresh one stays; a terminal that downloaded the expired one before and delivers
it afterwards gets no money for it (quarantined `top_up_not_delivered`); a clerk pays the due
refund in cash and the books balance. The payer's bank account case: tests/snap."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from bus_terminals.wire import UploadKind
from gateways.terminal_api import counter, registry
from ledger.audit import check_ledger
from ledger.clock import system_clock
from settlement import top_up_refunds
from tests.setup.helpers import Ksh, add_staff, assert_user_error
from tests.terminals.conftest import Backoffice
from tests.terminals.helpers import books_snapshot, post_batch, purse_balance, record
from tests.terminals.test_card_desk import sync_client

card = "6032984000000709"


async def pending_rupiah(backoffice: Backoffice) -> int:
    async with backoffice.pool.acquire() as connection:
        found = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1",
            registry.pending_top_up_account_id(card),
        )
    return int(found)


async def sweep(backoffice: Backoffice) -> list[top_up_refunds.Refund]:
    async with backoffice.pool.acquire() as connection:
        return await top_up_refunds.expire_top_ups(
            connection,
            now=backoffice.clock.now(),
            older_than=top_up_refunds.expiry_default,
            who="clerk",
        )


async def test_an_old_counter_top_up_goes_to_the_refund_due_list_and_is_never_paid_twice(
    backoffice: Backoffice, tmp_path: Path
) -> None:
    await backoffice.issue_cards({card: 10_000})
    key = await backoffice.register_validator("V1")
    client = await sync_client(backoffice, tmp_path, "V2")
    async with backoffice.pool.acquire() as connection:
        for top_up_id, rupiah in (("COUNTER-1", 30_000), ("COUNTER-3", 3_000)):
            await registry.pay_pending_top_up(
                connection, top_up_id, card, rupiah, paid_at=backoffice.clock.now()
            )
    assert await client.download()
    assert len(client.state.top_ups_for(card)) == 2

    backoffice.clock.advance(90 * 86_400 - 60)
    async with backoffice.pool.acquire() as connection:
        await registry.pay_pending_top_up(
            connection, "COUNTER-2", card, 5_000, paid_at=backoffice.clock.now()
        )
    backoffice.clock.advance(59)
    assert await sweep(backoffice) == []  # a second short of 90 days: left alone
    assert await client.download()
    assert len(client.state.top_ups_for(card)) == 3
    backoffice.clock.advance(1)
    assert await sweep(backoffice) == []  # withdrawn: waits 3 days for offline deliveries
    assert await client.download()
    assert [t[:2] for t in client.state.top_ups_for(card)] == [("COUNTER-2", 5_000)]
    # V1 downloaded COUNTER-3 before and writes it to the card during the wait: paid as usual.
    within = record("V1", 1, card, 1, 0, 13_000, kind=UploadKind.topup_credit, top_up=3_000,
                    top_up_id="COUNTER-3", previous=(0, "", 10_000))  # fmt: skip
    async with aiohttp.ClientSession() as session:
        assert (await post_batch(session, backoffice.url, key, "V1", 1, [within]))[0] == 200
    backoffice.clock.advance(3 * 86_400)
    [refund] = await sweep(backoffice)
    assert (refund.top_up_id, refund.amount_rupiah, refund.state) == ("COUNTER-1", 30_000, "due")
    before = await books_snapshot(backoffice.pool)
    assert await sweep(backoffice) == []  # twice: booked once
    assert await books_snapshot(backoffice.pool) == before
    assert await pending_rupiah(backoffice) == 5_000  # the fresh one waits for its card

    # V1 downloaded COUNTER-1 before it expired and writes it to the card now: the card has
    # it, but the pending account paid it back already: from suspense, quarantined.
    late = record("V1", 2, card, 2, 0, 43_000, kind=UploadKind.topup_credit, top_up=30_000,
                  top_up_id="COUNTER-1", previous=(1, "V1", 13_000))  # fmt: skip
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(session, backoffice.url, key, "V1", 2, [late])
    assert status == 200, answer
    async with backoffice.pool.acquire() as connection:
        quarantined = await connection.fetch("select reason, detail from quarantined_records")
        assert [row["reason"] for row in quarantined] == ["top_up_not_delivered"]
        assert "delivered already" in quarantined[0]["detail"]
        assert await purse_balance(backoffice.pool, card) == 43_000  # as the card says
        assert await pending_rupiah(backoffice) == 5_000  # nothing more left it

        [listed] = await top_up_refunds.refunds_due(connection)
        assert listed.top_up_id == "COUNTER-1"
        with pytest.raises(top_up_refunds.RefundError, match="note"):
            await top_up_refunds.mark_paid_in_cash(
                connection, "COUNTER-1", who="clerk", note=" ", now=backoffice.clock.now()
            )
        paid = await top_up_refunds.mark_paid_in_cash(
            connection,
            "COUNTER-1",
            who="clerk",
            note="paid to Ibu Sri at the Simpang Lima counter, receipt 17",
            now=backoffice.clock.now(),
        )
        assert (paid.state, paid.paid_by) == ("paid_cash", "clerk")
        # Paid out of the clerk's own drawer: the close of the shift expects that much less.
        assert await counter.drawer_rupiah(connection, "clerk") == -30_000
        with pytest.raises(top_up_refunds.RefundError, match="paid_cash, not due"):
            await top_up_refunds.mark_paid_in_cash(
                connection, "COUNTER-1", who="clerk", note="again", now=backoffice.clock.now()
            )
        assert await top_up_refunds.refunds_due(connection) == []
        payable = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where kind = $1",
            "refund_payable",
        )
        assert payable == 0
        assert await check_ledger(connection) == []
    assert (await books_snapshot(backoffice.pool))[1] == 0


async def old_top_ups(
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    top_ups: dict[str, int],
) -> Ksh:
    """`ksh` on the database with its staff, and the card's counter top-ups (id: rupiah) paid
    91 days ago, none taken."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    ksh = Ksh(capsys)
    await add_staff(ksh, monkeypatch)
    paid_at = system_clock.now() - dt.timedelta(days=91)
    connection = await asyncpg.connect(database_url)
    try:
        await registry.issue_cards(connection, {card: 0}, now=paid_at)
        for top_up_id, rupiah in top_ups.items():
            await registry.pay_pending_top_up(connection, top_up_id, card, rupiah, paid_at=paid_at)
    finally:
        await connection.close()
    return ksh


async def test_ksh_cards_expires_lists_and_marks_a_refund_paid(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ksh = await old_top_ups(database_url, capsys, monkeypatch, {"COUNTER-9": 25_000})
    assert_user_error(
        await ksh("cards", "expire-top-ups", "--partner", "BNI", "--as", "ani", "--reason", "x"),
        "cards",
        "--partner and --key go together",
    )
    nothing = await ksh.ok(
        "cards", "expire-top-ups", "--older-than-days", "92", "--as", "ani", "--reason", "sweep"
    )
    assert "0 top-up(s) expired" in nothing.out
    expired = await ksh.ok(
        "cards", "expire-top-ups", "--wait-days", "0", "--as", "ani", "--reason", "monthly sweep"
    )
    assert "COUNTER-9" in expired.out and "due at the counter" in expired.out
    listed = await ksh.ok("cards", "refunds-due")
    assert "COUNTER-9" in listed.out and "Rp 25,000" in listed.out
    note = "paid to the payer at the counter"
    paid = await ksh.ok("cards", "refund-paid", "COUNTER-9", "--note", note, "--as", "ani",
                        "--reason", "payer came")  # fmt: skip
    assert "paid at the counter by ani" in paid.out
    assert_user_error(
        await ksh(
            "cards", "refund-paid", "COUNTER-9", "--note", note, "--as", "ani", "--reason", "again"
        ),
        "cards",
        "not due",
    )
    assert "0 refund(s)" in (await ksh.ok("cards", "refunds-due")).out
    assert "COUNTER-9" in (await ksh.ok("cards", "refunds-due", "--all")).out


async def test_a_cash_refund_above_the_limit_is_approved_by_a_supervisor_and_paid_by_another(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four eyes at the counter: above the refund limit (Rp 1,000,000) a clerk cannot pay a
    refund due on their own word; a clerk cannot approve; the supervisor who approves does not
    pay it out; someone else does, once. Each refusal books and records nothing."""
    top_ups = {"BIG-1": 1_500_000, "SMALL-1": 1_000_000}
    ksh = await old_top_ups(database_url, capsys, monkeypatch, top_ups)
    await ksh.ok("cards", "expire-top-ups", "--wait-days", "0", "--as", "ani", "--reason", "sweep")
    listed = (await ksh.ok("cards", "refunds-due")).out
    assert "BIG-1" in listed and "above the limit: a supervisor approves it first" in listed
    assert "SMALL-1" in listed  # at the limit: one person pays it

    async def recorded() -> tuple[int, int, list[str]]:
        connection = await asyncpg.connect(database_url)
        try:
            transfers = await connection.fetchval("select count(*) from ledger_transfers")
            drawers = await connection.fetchval(
                "select count(*) from ledger_accounts where owner_reference like 'drawer:%'"
            )
            actions = await connection.fetch(
                "select action || ' ' || username from staff_actions "
                "where subject = 'BIG-1' order by action_id"
            )
        finally:
            await connection.close()
        return int(transfers), int(drawers), [row[0] for row in actions]

    pay = ("cards", "refund-paid", "BIG-1", "--note", "paid to Ibu Sri, receipt 18")
    before = await recorded()
    refused = await ksh(*pay, "--as", "ani", "--reason", "payer came")
    assert_user_error(refused, "cards", "above the Rp 1,000,000 limit: a supervisor approves")
    refused = await ksh("cards", "refund-approve", "BIG-1", "--as", "ani", "--reason", "ok")
    assert_user_error(refused, "cards", "only a supervisor approves")
    assert await recorded() == before
    approved = await ksh.ok(
        "cards", "refund-approve", "BIG-1", "--as", "budi", "--reason", "payer's KTP checked"
    )
    assert "approved by budi" in approved.out
    again = await ksh.ok("cards", "refund-approve", "BIG-1", "--as", "budi", "--reason", "again")
    assert "approved by budi" in again.out  # answers as before
    await ksh.ok("settle", "staff", "dewi", "--role", "supervisor")
    before = await recorded()
    refused = await ksh("cards", "refund-approve", "BIG-1", "--as", "dewi", "--reason", "ok")
    assert_user_error(refused, "cards", "is approved by budi already")
    assert await recorded() == before  # the log never names dewi as an approver
    refused = await ksh(*pay, "--as", "budi", "--reason", "payer came")
    assert_user_error(refused, "cards", "budi approved the refund of top-up BIG-1: someone else")
    assert await recorded() == before
    paid = await ksh.ok(*pay, "--as", "ani", "--reason", "payer came")
    assert "paid at the counter by ani" in paid.out
    transfers, _, actions = await recorded()
    assert transfers == before[0] + 1
    assert actions == [
        "top_up_refund_approved budi",
        "top_up_refund_approved budi",
        "top_up_refund_paid ani",
    ]
    small = ("cards", "refund-paid", "SMALL-1", "--note", "paid to Pak Joko, receipt 19")
    assert (
        "paid at the counter by ani" in (await ksh.ok(*small, "--as", "ani", "--reason", "x")).out
    )
    assert "0 refund(s)" in (await ksh.ok("cards", "refunds-due")).out


async def test_the_refund_limit_is_one_figure_lowered_by_a_supervisor_raised_by_two(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ksh settle limit`: the refund limit lives in the database, so the counter's rule is the
    same in every process; a clerk cannot change it, one supervisor's raise waits for a
    second, a lowering takes effect at once, and each step is in staff_actions."""
    ksh = await old_top_ups(
        database_url, capsys, monkeypatch, {"BIG-1": 1_500_000, "SMALL-1": 600_000}
    )
    await ksh.ok("settle", "staff", "dewi", "--role", "supervisor")
    await ksh.ok("cards", "expire-top-ups", "--wait-days", "0", "--as", "ani", "--reason", "sweep")
    shown = (await ksh.ok("settle", "limit")).out
    assert "refund: Rp 1,000,000\n" in shown and "write-off: Rp 1,000,000\n" in shown
    raise_to = ("settle", "limit", "refund", "2000000", "--reason", "city decree 12/2026")
    pay_big = ("cards", "refund-paid", "BIG-1", "--note", "paid to Ibu Sri", "--reason", "came")

    async def actions() -> list[str]:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch(
                "select action || ' ' || username || ' ' || (detail->>'os_user' is not null) "
                "from staff_actions where subject = 'refund' order by action_id"
            )
        finally:
            await connection.close()
        return [row[0] for row in rows]

    assert_user_error(await ksh(*raise_to, "--as", "ani"), "settle", "ani is a clerk")
    assert_user_error(await ksh(*raise_to), "settle", "say who does this and why")
    assert_user_error(
        await ksh("settle", "limit", "refund", "--as", "budi", "--reason", "x"),
        "settle",
        "--as and --reason go with a new figure",
    )
    assert await actions() == []
    asked = await ksh.ok(*raise_to, "--as", "budi")
    assert "still Rp 1,000,000 until a second supervisor" in asked.out
    assert_user_error(await ksh(*raise_to, "--as", "budi"), "settle", "you asked for Rp 2,000,000")
    assert_user_error(await ksh(*pay_big, "--as", "ani"), "cards", "above the Rp 1,000,000 limit")
    assert "waiting for a second supervisor" in (await ksh.ok("settle", "limit", "refund")).out

    confirmed = await ksh.ok(*raise_to, "--as", "dewi")
    assert "refund limit: Rp 2,000,000 (was Rp 1,000,000)" in confirmed.out
    assert "paid at the counter by ani" in (await ksh.ok(*pay_big, "--as", "ani")).out

    lowered = await ksh.ok(
        "settle", "limit", "refund", "500000", "--as", "budi", "--reason", "audit finding"
    )
    assert "refund limit: Rp 500,000 (was Rp 2,000,000)" in lowered.out
    listed = (await ksh.ok("cards", "refunds-due")).out
    assert "SMALL-1" in listed and "above the limit: a supervisor approves it first" in listed
    pay_small = ("cards", "refund-paid", "SMALL-1", "--note", "to Pak Joko", "--reason", "came")
    assert_user_error(await ksh(*pay_small, "--as", "ani"), "cards", "above the Rp 500,000 limit")
    assert await actions() == [
        "four_eyes_limit_raise_asked budi true",
        "four_eyes_limit_raise_confirmed dewi true",
        "four_eyes_limit_lowered budi true",
    ]
    await ksh.ok("settle", "limit", "refund", "3000000", "--as", "budi", "--reason", "asked")
    await ksh.ok("settle", "limit", "refund", "400000", "--as", "dewi", "--reason", "not now")
    history = (await ksh.ok("settle", "limit", "refund")).out
    assert history.startswith("refund: Rp 400,000\n")
    assert "Rp 3,000,000 asked by budi (asked), overtaken by a later change" in history
    assert "asked by budi (city decree 12/2026), confirmed by dewi" in history
