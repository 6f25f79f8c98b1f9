"""Fixtures of the terminal tests: the back office on loopback (real aiohttp server, real
PostgreSQL), with an operator, a merchant, and helpers to register terminals."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.wire import public_key_text
from card_reader.keys import KeyRole, demo_key_store
from gateways import staff
from gateways.backoffice import BackofficeConfig, create_app
from gateways.terminal_api import registry
from gateways.terminal_api.card_desk_routes import card_desk_extension
from gateways.terminal_api.registry import TerminalRole
from gateways.terminal_api.routes import terminal_extension
from ledger.clock import ManualClock, jakarta

admin_token = "test-staff-token"  # a supervisor's staff token (`gateways.staff`)
# The terminal tests' day starts here (06:00 in Semarang, before the first bus).
test_day_start = dt.datetime(2026, 11, 24, 6, 0, tzinfo=jakarta)
operator_id = "TRANS-SEMARANG"
merchant_id = "WARUNG-01"


@dataclass
class Backoffice:
    url: str
    database_url: str
    pool: asyncpg.Pool
    clock: ManualClock  # the back office's: terminals sign with it, top-ups are paid by it

    async def register_validator(self, terminal_id: str) -> Ed25519PrivateKey:
        key = Ed25519PrivateKey.generate()
        async with self.pool.acquire() as connection:
            await registry.register_terminal(
                connection,
                terminal_id,
                public_key_text(key.public_key()),
                TerminalRole.validator,
                operator_id=operator_id,
            )
        return key

    async def issue_cards(self, opening_balances_rupiah: dict[str, int]) -> None:
        """Issue cards as the back office does (the only cards whose records it books)."""
        async with self.pool.acquire() as connection:
            await registry.issue_cards(connection, opening_balances_rupiah, now=self.clock.now())

    async def register_pos(self, terminal_id: str) -> Ed25519PrivateKey:
        key = Ed25519PrivateKey.generate()
        async with self.pool.acquire() as connection:
            await registry.register_terminal(
                connection,
                terminal_id,
                public_key_text(key.public_key()),
                TerminalRole.pos,
                merchant_id=merchant_id,
            )
        return key


@pytest.fixture
async def backoffice(database_url: str) -> AsyncIterator[Backoffice]:
    clock = ManualClock(test_day_start)
    # The issuer's Transaction MAC masters: the test cards (the demo key store's) prove their
    # own transactions, as in service.
    masters = demo_key_store().accepted_master_keys(KeyRole.TMAC)
    config = BackofficeConfig(
        database_url,
        clock=clock,
        # The service desk's sweep of due replacements runs only where a test asks for it.
        settings={"tmac_master_keys": masters, "replacement_sweep_interval_s": 0},
    )
    app = create_app(config, [terminal_extension, card_desk_extension])
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    async with pool.acquire() as connection:
        await registry.register_operator(connection, operator_id, "Trans Semarang")
        await registry.register_merchant(connection, merchant_id, "Warung", fee_basis_points=100)
        await staff.issue_token(
            connection,
            staff.StaffMember("terminal-tests", staff.Role.supervisor),
            issued_by="tests",
            now=clock.now(),
            token=admin_token,
        )
    try:
        yield Backoffice(str(server.make_url("")).rstrip("/"), database_url, pool, clock)
    finally:
        await pool.close()
        await server.close()
