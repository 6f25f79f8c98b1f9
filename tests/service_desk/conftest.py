"""The service desk's back office: what `ksh serve` mounts, on loopback, on a clock of its own
(1 December 2026, 08:00 in Semarang), with staff in every role, the operator, one bus validator
and one KSH card (software, in-process) issued with Rp 50,000 and tapped once on the bus."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from bus_terminals.fare.feed import load_feed
from bus_terminals.simulator import Bus, validator_keys
from bus_terminals.sync import UploadStatus
from bus_terminals.validator import fare_decider
from bus_terminals.wire import public_key_text
from card_reader.deck import make_ksh_deck
from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.keys import KeyRole, demo_key_store
from card_reader.ksh_card import KshCard
from gateways import four_eyes
from gateways.backoffice import BackofficeConfig, create_app
from gateways.staff import StaffMember
from gateways.terminal_api import registry
from gateways.terminal_api.registry import TerminalRole
from ksh.commands import serve
from ksh.commands.demo import start
from ledger.clock import ManualClock, jakarta
from settlement import pages
from settlement.actions import Role

desk_start = dt.datetime(2026, 12, 1, 8, 0, tzinfo=jakarta)
operator_id = "TRANS-SEMARANG"
proxy_header = "X-Forwarded-For"
opening_rupiah = 50_000
passwords = {
    "ani": "clerk-password-1",
    "budi": "supervisor-password-1",
    "dewi": "supervisor-password-2",
    "citra": "auditor-password-1",
}
roles = {"ani": Role.clerk, "budi": Role.supervisor, "dewi": Role.supervisor, "citra": Role.auditor}
lookups_max = 4  # the citizen page's limit per address in these tests
refund_limit_rupiah = 10_000  # above this a refund needs a second supervisor


async def set_refund_limit(connection: asyncpg.Connection, rupiah: int, now: dt.datetime) -> None:
    """Lower the refund limit (in force at once: a lowering needs one supervisor)."""
    supervisor = StaffMember("budi", Role.supervisor)
    asked = await four_eyes.set_limit(
        connection, four_eyes.Limit.refund, rupiah, supervisor, "the tests' limit", now=now
    )
    assert asked.outcome is four_eyes.Outcome.lowered


@dataclass
class Desk:
    url: str
    database_url: str
    clock: ManualClock
    pool: asyncpg.Pool
    bus: Bus
    card: EmulatedCard
    number: str
    store: Any

    def tap(self) -> int:
        """The card taps the bus now; the fare it paid (after any top-up it took)."""
        before = self.card_balance()
        feedback = self.bus.tap(self.card, self.clock.unix_ms(), fare_decider(load_feed(), "K1"))
        assert feedback.verdict.value == "accepted", feedback
        return before + feedback.top_up_rupiah - self.card_balance()

    async def upload(self) -> None:
        assert await self.bus.sync.upload_once() is UploadStatus.acknowledged

    def card_balance(self) -> int:
        reader = EmulatedReader("desk inspection")
        reader.insert(self.card)
        try:
            return KshCard(reader, self.store.view(KeyRole.READ)).read_state().balance_rupiah
        finally:
            reader.remove()

    async def fetchval(self, query: str, *arguments: Any) -> Any:
        async with self.pool.acquire() as connection:
            return await connection.fetchval(query, *arguments)

    async def books(self) -> tuple[int, int]:
        """(ledger transfers booked, sum of every account's balance: always 0)."""
        count = await self.fetchval("select count(*) from ledger_transfers")
        total = await self.fetchval(
            "select coalesce(sum(credits_posted - debits_posted), 0) from ledger_accounts"
        )
        return int(count), int(total)

    async def purse(self) -> int:
        return int(
            await self.fetchval(
                "select credits_posted - debits_posted from ledger_accounts where id = $1",
                registry.purse_account_id(self.number),
            )
        )


@pytest.fixture
def card_deck() -> Iterator[tuple[Any, EmulatedCard, str]]:
    store = demo_key_store()
    (card,) = make_ksh_deck(store, [opening_rupiah], seed="service-desk")
    reader = EmulatedReader("numbering")
    reader.insert(card)
    number = str(KshCard(reader, store.view(KeyRole.READ)).read_state().profile.card_number)
    reader.remove()
    yield store, card, number


@pytest.fixture
async def desk(
    database_url: str, tmp_path: Path, card_deck: tuple[Any, EmulatedCard, str]
) -> AsyncIterator[Desk]:
    store, card, number = card_deck
    clock = ManualClock(desk_start)
    settings = {
        "client_address_header": proxy_header,
        "expiry_sweep_interval_s": 0,
        "citizen_lookups_max": lookups_max,
    }
    app = create_app(
        BackofficeConfig(
            database_url,
            pool_connections_min=1,
            pool_connections_max=4,
            settings=settings,
            clock=clock,
        ),
        serve.extensions(),
    )
    runner, url = await start(app)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert pool is not None
    async with aiohttp.ClientSession() as http:
        bus = Bus("BUS-D1", "K1", tmp_path, validator_keys(store), url, http, now_ms=clock.unix_ms)
        try:
            async with pool.acquire() as connection:
                for username, role in roles.items():
                    await pages.add_staff(connection, username, passwords[username], role)
                await set_refund_limit(connection, refund_limit_rupiah, clock.now())
                await registry.register_operator(connection, operator_id, "Trans Semarang")
                await registry.register_terminal(
                    connection,
                    bus.terminal_id,
                    public_key_text(bus.private_key.public_key()),
                    TerminalRole.validator,
                    operator_id=operator_id,
                )
                await registry.issue_cards(connection, {number: opening_rupiah}, now=clock.now())
            desk = Desk(url, database_url, clock, pool, bus, card, number, store)
            assert desk.tap() > 0
            await desk.upload()
            yield desk
        finally:
            bus.close()
            await pool.close()
            await runner.cleanup()
