"""The same counter receipt sent for two cards at once (two desks, or a retry sent to another
card by mistake): the second waits for the first and is refused as `receipt_used`, not a
database error."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from gateways.terminal_api import counter, passes, registry
from gateways.terminal_api.registry import Conflict
from tests.service_desk.conftest import Desk
from tests.service_desk.test_pass_sales import monthly, publish_priced_feed
from tests.waiting import wait_until_blocked

other = "6032984000000777"


async def test_a_receipt_sent_twice_at_once_is_refused_as_receipt_used(desk: Desk) -> None:
    await publish_priced_feed(desk)
    async with desk.pool.acquire() as connection:
        await registry.issue_cards(connection, {other: 0}, now=desk.clock.now())
    first, second = await desk.pool.acquire(), await desk.pool.acquire()

    async def sell(connection: asyncpg.Connection, card: str) -> object:
        async with connection.transaction():  # as every desk change runs
            return await passes.grant_pass(
                connection, card, monthly, username="ani", reason="cash",
                now=desk.clock.now(), receipt_id="R-1", drawer=counter.drawer_code("ani"),
            )  # fmt: skip

    try:
        opened = first.transaction()
        await opened.start()
        await passes.grant_pass(
            first, desk.number, monthly, username="ani", reason="cash", now=desk.clock.now(),
            receipt_id="R-1", drawer=counter.drawer_code("ani"),
        )  # fmt: skip
        later = asyncio.ensure_future(sell(second, other))
        async with desk.pool.acquire() as watcher:
            await wait_until_blocked(watcher, second, later, "the second sale waits for the first")
        await opened.commit()
        with pytest.raises(Conflict) as refused:
            await later
        assert refused.value.code == "receipt_used"
    finally:
        await desk.pool.release(first)
        await desk.pool.release(second)
    assert await desk.fetchval("select count(*) from pending_passes") == 1
