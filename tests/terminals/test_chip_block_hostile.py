"""A hostile validator and the chip block: it cannot use a block record to take a rider's
pending top-up (the card's proof of a block says it moved no money), and a block it wrote and
never uploaded is still seen, from the next honest terminal's refused tap."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from bus_terminals.terminal import Reason
from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.keys import KeyRole
from card_reader.ksh_card import CardStatus, KshCard
from gateways.terminal_api import card_desk, registry
from tests.terminals.conftest import Backoffice, admin_token
from tests.terminals.helpers import purse_balance
from tests.terminals.test_chip_block import bus_of, fare, honest_card, read, store
from tests.terminals.test_chip_block import cards as cards  # the fixture

top_up = {"reason": "t", "card_number": honest_card, "top_up_id": "T-1", "amount_rupiah": 10_000}


async def pay_top_up(backoffice: Backoffice) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            backoffice.url + "/admin/v1/pending-top-ups",
            json=top_up,
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as response,
    ):
        assert response.status == 201, await response.text()


async def block_with_a_top_up(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path, *, asked: bool
) -> None:
    await pay_top_up(backoffice)
    if asked:
        async with backoffice.pool.acquire() as connection:
            await card_desk.block_card(
                connection,
                honest_card,
                card_desk.BlockCause.lost,
                "lost",
                username="clerk-ani",
                now=backoffice.clock.now(),
            )
    hostile = await bus_of(backoffice, tmp_path, "V-HOSTILE")
    await hostile.sync_now()
    if not asked:
        hostile.state.chip_block_list.add([honest_card], hostile.state.chip_block_list.version)
        hostile.state.deny_list.add([honest_card], hostile.state.deny_list.version)
    tapped = hostile.tap(cards[honest_card], backoffice.clock.unix_ms(), fare())
    assert tapped.reason == Reason.card_blocked
    # The terminal edits its own journal before the upload: the card's MAC covers the block's
    # counter, kind, balance after, terminal and time, not these.
    hostile.journal.connection.execute(
        "update records set topup_rupiah = 10000, amount_rupiah = 10000, "
        "pending_topup_id = 'T-1' where kind = 'block'"
    )
    await hostile.sync_now()
    async with backoffice.pool.acquire() as connection:
        taken = await connection.fetchval(
            "select taken_terminal_id from pending_top_ups where top_up_id = 'T-1'"
        )
    assert (
        await purse_balance(backoffice.pool, honest_card) == read(cards[honest_card]).balance_rupiah
    )
    assert taken is None, "the rider's top-up was taken by a block that credited nothing"
    hostile.close()
    await hostile.sync.close()


async def test_a_requested_block_record_cannot_deliver_a_top_up(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path
) -> None:
    await block_with_a_top_up(backoffice, cards, tmp_path, asked=True)


async def test_an_unrequested_block_record_cannot_deliver_a_top_up(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path
) -> None:
    await block_with_a_top_up(backoffice, cards, tmp_path, asked=False)


async def test_a_block_never_uploaded_is_seen_from_the_next_refused_tap(
    backoffice: Backoffice, cards: dict[str, EmulatedCard], tmp_path: Path
) -> None:
    reader = EmulatedReader("hostile")
    reader.insert(cards[honest_card])
    session = KshCard(reader, store.view(KeyRole.DEBIT, KeyRole.READ))
    session.read_state()
    now_s = backoffice.clock.unix_ms() // 1000
    session.perform(session.plan_block(terminal_id=1234, time_unix_seconds=now_s))
    reader.remove()
    assert read(cards[honest_card]).profile.status is CardStatus.BLOCKED

    honest = await bus_of(backoffice, tmp_path, "V-HONEST")
    await honest.sync_now()
    assert honest.tap(cards[honest_card], backoffice.clock.unix_ms(), fare()).reason == (
        Reason.card_blocked
    )
    await honest.sync_now()
    async with backoffice.pool.acquire() as connection:
        view = await registry.card_view(connection, honest_card)
    assert view is not None
    [flag] = view["flags"]
    assert flag["reason"] == "unrequested_block"
    assert "terminal number 1234" in flag["detail"]
    honest.close()
    await honest.sync.close()
