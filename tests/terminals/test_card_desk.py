"""The service desk's card flows over HTTP into PostgreSQL: a card registered to its holder (and
its cap), a lost card blocked, refused at terminals, replaced, its balance moved after the wait
and its late taps booked against suspense; the deny list reviewed and lifted (four eyes for
fraud), lifts reaching the terminals."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from bus_terminals.journal import Journal
from bus_terminals.sync import SyncClient, SyncState
from bus_terminals.wire import UploadKind
from gateways import staff
from gateways.backoffice import BackofficeConfig, create_app
from gateways.service_desk import complaints
from gateways.terminal_api import card_desk, registry
from gateways.terminal_api.card_desk_routes import card_desk_extension
from gateways.terminal_api.routes import terminal_extension
from ledger.clock import ManualClock
from tests.terminals.conftest import Backoffice, admin_token, merchant_id, test_day_start
from tests.terminals.helpers import books_snapshot, post_batch, purse_balance, record
from tests.waiting import wait_until_async, wait_until_blocked

old_card = "6032984000000101"
new_card = "6032984000000102"
plain_card = "6032984000000103"
clerk_token = "test-clerk-token-0001"
second_supervisor_token = "test-supervisor-token-2"
nik = "3374012345678901"


class Desk:
    """Staff calling the admin API, each with their own token."""

    def __init__(self, session: aiohttp.ClientSession, backoffice: Backoffice) -> None:
        self.session = session
        self.url = backoffice.url

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str = admin_token
    ) -> tuple[int, Any]:
        async with self.session.request(
            method,
            self.url + path,
            json=None if body is None else {"reason": "desk test", **body},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            return response.status, await response.json()


async def staff_tokens(backoffice: Backoffice) -> None:
    async with backoffice.pool.acquire() as connection:
        for username, role, token in [
            ("clerk-ani", staff.Role.clerk, clerk_token),
            ("supervisor-budi", staff.Role.supervisor, second_supervisor_token),
        ]:
            await staff.issue_token(
                connection,
                staff.StaffMember(username, role),
                issued_by="tests",
                now=backoffice.clock.now(),
                token=token,
            )


async def test_a_registered_card_has_the_registered_cap(backoffice: Backoffice) -> None:
    await backoffice.issue_cards({old_card: 1_500_000, plain_card: 1_500_000})
    async with aiohttp.ClientSession() as session:
        desk = Desk(session, backoffice)
        holder = {"name": "Siti Rahayu", "nik": nik, "phone": "+62 812-3456-7890"}
        status, problem = await desk.call(
            "POST", f"/admin/v1/cards/{old_card}/holder", {**holder, "nik": "12345"}
        )
        assert (status, problem["field"]) == (400, "nik")
        status, registered = await desk.call("POST", f"/admin/v1/cards/{old_card}/holder", holder)
        assert status == 201, registered
        assert registered["nik_last4"] == "8901"
        assert registered["phone"] == "+6281234567890"
        assert nik not in str(registered)
        status, problem = await desk.call("POST", f"/admin/v1/cards/{old_card}/holder", holder)
        assert (status, problem["code"]) == (409, "already_registered")
        status, shown = await desk.call("GET", f"/admin/v1/cards/{old_card}/holder")
        assert (status, shown["purse_cap_rupiah"]) == (200, 20_000_000)

        # Rp 1,500,000 on each: the registered card takes Rp 2,000,000 more, the other does not.
        for card, top_up_id, expected in [(old_card, "C-1", 201), (plain_card, "C-2", 409)]:
            status, answer = await desk.call(
                "POST",
                "/admin/v1/pending-top-ups",
                {"card_number": card, "top_up_id": top_up_id, "amount_rupiah": 2_000_000},
            )
            assert status == expected, answer
        assert answer["code"] == "purse_cap"
    async with backoffice.pool.acquire() as connection:
        assert await card_desk.nik_matches(connection, old_card, nik)
        assert not await card_desk.nik_matches(connection, old_card, "3374012345678900")
        assert await card_desk.top_up_room_rupiah(connection, old_card) == 16_500_000
        assert await card_desk.top_up_room_rupiah(connection, plain_card) == 500_000


async def sync_client(backoffice: Backoffice, tmp_path: Path, terminal_id: str) -> SyncClient:
    key = await backoffice.register_validator(terminal_id)
    journal = Journal(tmp_path / f"{terminal_id}.db", terminal_id)
    return SyncClient(
        backoffice.url, terminal_id, key, journal, SyncState(), now_ms=backoffice.clock.unix_ms
    )


async def test_a_lost_card_is_blocked_replaced_and_its_balance_moves_once(
    backoffice: Backoffice, tmp_path: Path
) -> None:
    await backoffice.issue_cards({old_card: 50_000, new_card: 0})
    key = await backoffice.register_validator("V1")
    client = await sync_client(backoffice, tmp_path, "V2")
    async with aiohttp.ClientSession() as session:
        desk = Desk(session, backoffice)
        holder = {"name": "Siti Rahayu", "nik": nik, "phone": "081234567890"}
        assert (await desk.call("POST", f"/admin/v1/cards/{old_card}/holder", holder))[0] == 201
        status, problem = await desk.call(
            "POST", f"/admin/v1/cards/{old_card}/replace", {"new_card_number": new_card}
        )
        assert (status, problem["code"]) == (409, "not_blocked")
        blocked = await desk.call("POST", f"/admin/v1/cards/{old_card}/block", {"cause": "lost"})
        assert blocked[0] == 201, blocked
        assert await client.download()
        assert old_card in client.state.deny_list  # terminals refuse it from their next sync

        status, found = await desk.call(
            "POST", f"/admin/v1/cards/{old_card}/replace", {"new_card_number": new_card}
        )
        assert status == 201, found
        assert found["moved_at"] is None  # taps still on their way may come for 3 days
        due = dt.datetime.fromisoformat(found["due_at"])
        assert due == backoffice.clock.now() + dt.timedelta(days=3)
        # A tap the card made offline before the block arrives: booked from its purse.
        first = record("V1", 1, old_card, 1, 4_000, 46_000, previous=(0, "", 50_000))
        assert (await post_batch(session, backoffice.url, key, "V1", 1, [first]))[0] == 200

        backoffice.clock.advance(3 * 86_400 - 1)
        assert (await desk.call("POST", "/admin/v1/replacements/move-due", {}))[1]["moved"] == []
        backoffice.clock.advance(1)
        status, answer = await desk.call("POST", "/admin/v1/replacements/move-due", {})
        assert status == 200
        assert [(m["purse_rupiah"], m["pending_rupiah"]) for m in answer["moved"]] == [(46_000, 0)]
        assert (await desk.call("POST", "/admin/v1/replacements/move-due", {}))[1]["moved"] == []
        assert await client.download()
        assert [t[:2] for t in client.state.top_ups_for(new_card)] == [
            (f"replace:{old_card}:1", 46_000)
        ]
        assert await purse_balance(backoffice.pool, old_card) == 0
        before = await books_snapshot(backoffice.pool)

        # A late offline tap of the old card: booked against suspense, flagged, never from
        # the balance that moved.
        late = record("V1", 2, old_card, 2, 4_000, 42_000, previous=(1, "V1", 46_000))
        status, answer = await post_batch(session, backoffice.url, key, "V1", 2, [late])
        assert status == 200, answer
        status, shown = await desk.call("GET", f"/admin/v1/cards/{old_card}")
        assert [flag["reason"] for flag in shown["flags"]] == ["purse_closed"]
        async with session.get(backoffice.url + "/metrics") as response:
            assert 'ksh_card_flags_total{reason="purse_closed"} 1.0' in await response.text()
        status, problem = await desk.call("POST", f"/admin/v1/deny-list/{old_card}/lift", {})
        assert (status, problem["code"]) == (409, "card_replaced")
        # Issued again as it was (the admin API is idempotent): fine, its purse stays closed.
        card = {"card_number": old_card, "opening_balance_rupiah": 50_000}
        assert (await desk.call("POST", "/admin/v1/cards", card))[0] == 201
    await client.close()
    client.journal.close()
    count, total = await books_snapshot(backoffice.pool)
    assert (count, total) == (before[0] + 1, 0)
    assert await purse_balance(backoffice.pool, old_card) == 0
    async with backoffice.pool.acquire() as connection:
        pending = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1",
            registry.pending_top_up_account_id(new_card),
        )
        suspense = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1",
            registry.suspense_account_id,
        )
        holder_of_new = await card_desk.holder_of(connection, new_card)
    assert pending == 46_000
    assert suspense == -4_000  # what the old card spent after its balance moved
    assert holder_of_new is not None and holder_of_new.nik_last4 == "8901"

    # A complaint about the old card's first fare, answered after the move: the refund goes to
    # the card in use (the old purse is closed and the old card denied everywhere).
    clerk = staff.StaffMember("clerk-ani", staff.Role.clerk)
    async with backoffice.pool.acquire() as connection:
        number = await complaints.add_complaint(
            connection,
            card_number=old_card,
            channel="counter",
            description="charged on a free transfer",
            taps=[complaints.TapRef("V1", 1)],
            received_by=clerk.username,
            now=backoffice.clock.now(),
        )
        await complaints.resolve(
            connection, number, clerk, "refunded", refund_rupiah=4_000, now=backoffice.clock.now()
        )
        waiting = await connection.fetch(
            "select card_number, amount_rupiah from pending_top_ups where top_up_id = $1",
            complaints.refund_top_up_id(number),
        )
        pending_now = {
            card: await connection.fetchval(
                "select credits_posted - debits_posted from ledger_accounts where id = $1",
                registry.pending_top_up_account_id(card),
            )
            for card in (old_card, new_card)
        }
    assert [tuple(row) for row in waiting] == [(new_card, 4_000)]
    assert pending_now == {old_card: 0, new_card: 50_000}


async def test_deny_list_entries_are_reviewed_and_lifted_with_four_eyes_for_fraud(
    backoffice: Backoffice, tmp_path: Path
) -> None:
    await staff_tokens(backoffice)
    await backoffice.issue_cards({old_card: 10_000, plain_card: 10_000})
    client = await sync_client(backoffice, tmp_path, "V2")
    async with backoffice.pool.acquire() as connection:
        await registry.deny_cards(
            connection, [old_card], "counter_repeat", now=backoffice.clock.now()
        )
    async with aiohttp.ClientSession() as session:
        desk = Desk(session, backoffice)
        blocked = await desk.call(
            "POST", f"/admin/v1/cards/{plain_card}/block", {"cause": "stolen"}, clerk_token
        )
        assert blocked[0] == 201
        status, problem = await desk.call(
            "POST", f"/admin/v1/cards/{plain_card}/block", {"cause": "lost"}
        )
        assert (status, problem["code"]) == (409, "already_denied")
        assert await client.download()
        assert {old_card, plain_card} <= set(map(str, client.state.deny_list.values))

        status, unreviewed = await desk.call("GET", "/admin/v1/deny-list?unreviewed=1")
        assert [(e["card_number"], e["source"]) for e in unreviewed] == [(old_card, "rule")]
        assert (await desk.call("POST", f"/admin/v1/deny-list/{old_card}/review", {}))[0] == 200
        assert (await desk.call("GET", "/admin/v1/deny-list?unreviewed=1"))[1] == []

        # Fraud: the clerk asks, the clerk cannot approve, a supervisor other than them lifts.
        lift = f"/admin/v1/deny-list/{old_card}/lift"
        status, answer = await desk.call("POST", lift, {}, clerk_token)
        assert (status, answer["outcome"]) == (202, "awaiting_approval")
        assert (await desk.call("POST", lift, {}, clerk_token))[1]["code"] == "same_person"
        assert await client.download()
        assert old_card in client.state.deny_list  # still denied while it waits
        status, answer = await desk.call("POST", lift, {}, second_supervisor_token)
        assert (status, answer["outcome"]) == (200, "lifted")
        # A stolen card found again: one person lifts it.
        status, answer = await desk.call(
            "POST", f"/admin/v1/deny-list/{plain_card}/lift", {}, clerk_token
        )
        assert (status, answer["outcome"]) == (200, "lifted")
        assert await client.download()
        assert old_card not in client.state.deny_list
        assert plain_card not in client.state.deny_list

        status, shown = await desk.call("GET", f"/admin/v1/deny-list/{old_card}")
        assert shown["entry"] is None
        assert [(c["change"], c["username"]) for c in shown["history"]] == [
            ("added", ""),
            ("reviewed", "terminal-tests"),
            ("lift_requested", "clerk-ani"),
            ("lifted", "supervisor-budi"),
        ]
        # Denied again later: the terminals get it again.
        assert (await desk.call("POST", f"/admin/v1/cards/{old_card}/block", {"cause": "fraud"}))[
            0
        ] == 201
        assert await client.download()
        assert old_card in client.state.deny_list
    await client.close()
    client.journal.close()


async def test_the_back_office_moves_a_due_balance_by_itself(database_url: str) -> None:
    clock = ManualClock(test_day_start)
    settings = {"replacement_sweep_interval_s": 0.05, "replacement_wait_days": 1}
    app = create_app(
        BackofficeConfig(database_url, clock=clock, settings=settings),
        [terminal_extension, card_desk_extension],
    )
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    connection = await asyncpg.connect(database_url)
    try:
        await registry.issue_cards(connection, {old_card: 20_000, new_card: 0}, now=clock.now())
        await card_desk.register_holder(
            connection, old_card, "Siti", nik, "081234567890", username="ani", now=clock.now()
        )
        await card_desk.block_card(
            connection,
            old_card,
            card_desk.BlockCause.stolen,
            "bag",
            username="ani",
            now=clock.now(),
        )
        await card_desk.request_replacement(
            connection, old_card, new_card, username="ani", now=clock.now()
        )

        async def moved() -> int | None:
            found = await card_desk.replacement_of(connection, old_card)
            assert found is not None
            return found.purse_rupiah

        assert await moved() is None  # due in a day (the setting): before that, see above
        clock.advance(86_400)
        await wait_until_async(moved, "the sweep moved the balance")
        assert await moved() == 20_000
    finally:
        await connection.close()
        await server.close()


async def test_a_replacement_lost_in_its_turn_passes_the_balance_on(database_url: str) -> None:
    """The new card is lost too, and replaced, before the first balance moves: the first
    balance reaches the card in use, and each old purse is closed. (The sweep takes the second
    card first: its number is lower.)"""
    first_card, second_card, third_card = "6032984000000105", new_card, "6032984000000104"
    clock = ManualClock(test_day_start)
    connection = await asyncpg.connect(database_url)
    try:
        await registry.issue_cards(
            connection, {first_card: 20_000, second_card: 5_000, third_card: 0}, now=clock.now()
        )
        await card_desk.register_holder(
            connection, first_card, "Siti", nik, "081234567890", username="ani", now=clock.now()
        )
        for lost, replacing in ((first_card, second_card), (second_card, third_card)):
            await card_desk.block_card(
                connection, lost, card_desk.BlockCause.lost, "bus", username="ani", now=clock.now()
            )
            await card_desk.request_replacement(
                connection, lost, replacing, username="ani", now=clock.now()
            )
            clock.advance(3_600)
        clock.advance(3 * 86_400)
        moved = await card_desk.move_due_balances(connection, now=clock.now())
        assert [(m.old_card_number, m.purse_rupiah) for m in moved] == [
            (second_card, 5_000),
            (first_card, 20_000),
        ]
        third = registry.card_accounts(third_card)
        balances = await connection.fetch(
            "select id, credits_posted - debits_posted as balance, flags & 4 = 4 as closed "
            "from ledger_accounts where owner_reference = any($1::text[]) "
            "and kind in ('card_purse', 'pending_top_up')",
            [first_card, second_card, third_card],
        )
        in_use = [await card_desk.card_in_use(connection, n) for n in (first_card, second_card)]
    finally:
        await connection.close()
    assert in_use == [third_card, third_card]
    held = {row["id"]: (row["balance"], row["closed"]) for row in balances}
    assert held.pop(third.pending_top_up_account_id) == (25_000, False)
    assert held.pop(third.purse_account_id) == (0, False)
    assert {balance for balance, _ in held.values()} == {0}
    closed_purses = [closed for (_, closed) in held.values() if closed]
    assert len(closed_purses) == 2


async def test_a_sale_its_pos_refunded_on_the_card_is_not_refunded_again(
    backoffice: Backoffice,
) -> None:
    """The POS gave a sale back on the card (LimitedCredit: the debits of the card's last
    paying transaction); a complaint about that sale has nothing left to give back, while the
    sale before it, not refunded, still has."""
    await backoffice.issue_cards({plain_card: 50_000})
    key = await backoffice.register_pos("P1")
    sales = [
        record(
            "P1", 1, plain_card, 1, 7_000, 43_000, kind=UploadKind.sale, merchant_id=merchant_id
        ),
        record(
            "P1", 2, plain_card, 2, 5_000, 38_000, kind=UploadKind.sale, merchant_id=merchant_id
        ),
        record(
            "P1", 3, plain_card, 3, 5_000, 43_000, kind=UploadKind.refund, merchant_id=merchant_id
        ),
    ]
    async with aiohttp.ClientSession() as session:
        status, answer = await post_batch(session, backoffice.url, key, "P1", 1, sales)
        assert status == 200, answer
    clerk = staff.StaffMember("clerk-ani", staff.Role.clerk)
    async with backoffice.pool.acquire() as connection:

        async def complain(sequence: int, rupiah: int) -> None:
            number = await complaints.add_complaint(
                connection,
                card_number=plain_card,
                channel="counter",
                description="charged for nothing",
                taps=[complaints.TapRef("P1", sequence)],
                received_by=clerk.username,
                now=backoffice.clock.now(),
            )
            await complaints.resolve(
                connection,
                number,
                clerk,
                "given back",
                refund_rupiah=rupiah,
                now=backoffice.clock.now(),
            )

        before = await books_snapshot(backoffice.pool)
        with pytest.raises(complaints.ComplaintError, match="at most Rp 0") as refused:
            await complain(2, 5_000)
        assert refused.value.code == "over_refund"
        assert await books_snapshot(backoffice.pool) == before
        await complain(1, 7_000)
        assert (await books_snapshot(backoffice.pool))[0] == before[0] + 1


async def test_deny_list_versions_commit_in_order(database_url: str) -> None:
    """Two writers of the deny list at once: the first has taken its change id and not yet
    committed when the second writes. A terminal syncing between the two commits must not
    end up at a version past the first change (it would never be sent that card)."""
    first = await asyncpg.connect(database_url)
    second = await asyncpg.connect(database_url)
    terminal = await asyncpg.connect(database_url)
    now = test_day_start
    try:
        await registry.issue_cards(first, {old_card: 0, new_card: 0}, now=now)
        opened = first.transaction()
        await opened.start()
        await registry.deny_cards(first, [old_card], "counter_repeat", now=now)
        later = asyncio.ensure_future(
            registry.deny_cards(second, [new_card], "counter_repeat", now=now)
        )
        await wait_until_blocked(terminal, second, later, "the second writer ran or waited")
        version = await registry.deny_list_version(terminal)  # a terminal syncs now
        await opened.commit()
        await later
        sent = await terminal.fetch(
            "select card_number from deny_list_changes where change_id > $1", version
        )
        assert old_card in {row["card_number"] for row in sent}
    finally:
        for connection in (first, second, terminal):
            await connection.close()
