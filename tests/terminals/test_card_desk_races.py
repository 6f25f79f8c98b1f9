"""A complaint refund answered while the desk replaces the card, or while the hourly job moves
balances: the refund reaches the card in use, and neither waits on the other crosswise."""

from __future__ import annotations

import asyncio
import datetime as dt

import aiohttp
import asyncpg
import pytest

from gateways import staff
from gateways.service_desk import complaints
from gateways.terminal_api import card_desk
from tests.terminals.conftest import Backoffice
from tests.terminals.helpers import post_batch, record
from tests.waiting import wait_until_blocked

A, A2, B, B2 = "6032984000000201", "6032984000000202", "6032984000000203", "6032984000000204"
clerk = staff.StaffMember("clerk-ani", staff.Role.clerk)
wait = dt.timedelta(days=3)


async def setup(backoffice: Backoffice, olds: list[str], news: list[str]) -> int:
    await backoffice.issue_cards({**dict.fromkeys(olds, 50_000), **dict.fromkeys(news, 0)})
    key = await backoffice.register_validator("V1")
    async with aiohttp.ClientSession() as session:
        fares = [
            record("V1", i + 1, old, 1, 4_000, 46_000, previous=(0, "", 50_000))
            for i, old in enumerate(olds)
        ]
        assert (await post_batch(session, backoffice.url, key, "V1", 1, fares))[0] == 200
    async with backoffice.pool.acquire() as c:
        now = backoffice.clock.now()
        for i, old in enumerate(olds):
            await card_desk.register_holder(
                c, old, "Siti", f"337401234567890{i}", "081234567890", username="clerk-ani", now=now
            )
            await card_desk.block_card(
                c, old, card_desk.BlockCause.lost, "lost", username="clerk-ani", now=now
            )
        complaint = await complaints.add_complaint(
            c,
            card_number=olds[-1],
            channel="counter",
            description="x",
            taps=[complaints.TapRef("V1", len(olds))],
            received_by="clerk-ani",
            now=now,
        )
    return complaint


def pause_after_card_owed(monkeypatch: pytest.MonkeyPatch) -> tuple[asyncio.Event, asyncio.Event]:
    reached, release = asyncio.Event(), asyncio.Event()
    original = card_desk.card_owed

    async def paused(connection: asyncpg.Connection, number: str) -> str:
        found = await original(connection, number)
        reached.set()
        await release.wait()
        return found

    monkeypatch.setattr(card_desk, "card_owed", paused)
    return reached, release


async def test_a_replacement_asked_while_a_refund_is_answered_takes_the_refund_along(
    backoffice: Backoffice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The block is old, so the replacement moves the balance at once; it waits for the
    refund's commit and moves it along to the new card: nothing is left on the closed card."""
    complaint = await setup(backoffice, [A], [A2])
    backoffice.clock.advance(3 * 86_400)
    reached, release = pause_after_card_owed(monkeypatch)
    refund_connection = await backoffice.pool.acquire()
    refund = asyncio.ensure_future(
        complaints.resolve(
            refund_connection,
            complaint,
            clerk,
            "refunded",
            refund_rupiah=4_000,
            now=backoffice.clock.now(),
        )
    )
    await reached.wait()
    desk = await backoffice.pool.acquire()

    async def replace() -> card_desk.Replacement:
        async with desk.transaction():
            return await card_desk.request_replacement(
                desk, A, A2, username="clerk-budi", now=backoffice.clock.now(), wait=wait
            )

    replacing = asyncio.ensure_future(replace())
    async with backoffice.pool.acquire() as watcher:
        await wait_until_blocked(watcher, desk, replacing, "the replacement waits for the refund")
    assert not replacing.done()
    release.set()
    await refund
    found = await replacing
    await backoffice.pool.release(refund_connection)
    await backoffice.pool.release(desk)
    assert found.moved_at is not None
    assert (found.purse_rupiah, found.pending_rupiah) == (46_000, 4_000)
    async with backoffice.pool.acquire() as c:
        open_for_a = await c.fetchval(
            "select count(*) from pending_top_ups where card_number = $1 "
            "and taken_terminal_id is null",
            A,
        )
    assert open_for_a == 0  # the refund went along with the balance


async def test_the_hourly_move_and_a_refund_do_not_deadlock(
    backoffice: Backoffice, monkeypatch: pytest.MonkeyPatch
) -> None:
    complaint = await setup(backoffice, [A, B], [A2, B2])
    async with backoffice.pool.acquire() as c:
        for old, new in [(A, A2), (B, B2)]:
            await card_desk.request_replacement(
                c, old, new, username="clerk-ani", now=backoffice.clock.now(), wait=wait
            )
    backoffice.clock.advance(3 * 86_400)
    reached, release = pause_after_card_owed(monkeypatch)
    refund_connection = await backoffice.pool.acquire()
    refund = asyncio.ensure_future(
        complaints.resolve(
            refund_connection,
            complaint,
            clerk,
            "refunded",
            refund_rupiah=4_000,
            now=backoffice.clock.now(),
        )
    )  # about B: holds B's replacement row (for share)
    await reached.wait()
    mover = await backoffice.pool.acquire()

    async def hourly() -> list[card_desk.Replacement]:
        async with mover.transaction():  # as ksh serve's job: every due move in one transaction
            return await card_desk.move_due_balances(mover, now=backoffice.clock.now(), wait=wait)

    moving = asyncio.ensure_future(hourly())
    async with backoffice.pool.acquire() as watcher:
        await wait_until_blocked(watcher, mover, moving, "the move waits for B's row")
    release.set()
    results = await asyncio.gather(refund, moving, return_exceptions=True)
    await backoffice.pool.release(refund_connection)
    await backoffice.pool.release(mover)
    errors = [
        (name, r) for name, r in zip(("refund", "move"), results) if isinstance(r, BaseException)
    ]
    assert not errors, errors


async def test_the_move_and_an_upload_delivering_the_old_cards_top_up_do_not_deadlock(
    backoffice: Backoffice,
) -> None:
    """An upload locks the pending top-ups it delivers, then the ledger when it books; the
    hourly move takes the old card's waiting top-ups before the ledger too. So a move that
    meets such an upload waits for it, and the upload books meanwhile (the other way round,
    PostgreSQL found a deadlock and aborted one of them)."""
    from gateways.terminal_api import books, ingest, registry

    await setup(backoffice, [A], [A2])
    async with backoffice.pool.acquire() as c:
        await registry.pay_pending_top_up(c, "TOPUP-A", A, 10_000, paid_at=backoffice.clock.now())
        await card_desk.request_replacement(
            c, A, A2, username="clerk-ani", now=backoffice.clock.now(), wait=wait
        )
    backoffice.clock.advance(3 * 86_400)
    upload = await backoffice.pool.acquire()
    mover = await backoffice.pool.acquire()
    delivered = record("V1", 9, A, 2, 0, 56_000, top_up=10_000, top_up_id="TOPUP-A")
    try:
        async with upload.transaction():
            assert list(await ingest._pending_top_ups(upload, [delivered])) == ["TOPUP-A"]

            async def hourly() -> list[card_desk.Replacement]:
                async with mover.transaction():
                    return await card_desk.move_due_balances(
                        mover, now=backoffice.clock.now(), wait=wait
                    )

            moving = asyncio.ensure_future(hourly())
            async with backoffice.pool.acquire() as watcher:
                await wait_until_blocked(watcher, mover, moving, "the move waits for the top-up")
            await books.lock_ledger(upload)  # as the upload books: the ledger is free
            assert not moving.done()
            await upload.execute(
                "update pending_top_ups set taken_terminal_id = 'V1' where top_up_id = 'TOPUP-A'"
            )  # delivered by the upload, which commits
        [moved] = await moving
    finally:
        await backoffice.pool.release(upload)
        await backoffice.pool.release(mover)
    assert (moved.old_card_number, moved.purse_rupiah + moved.pending_rupiah) == (A, 56_000)
