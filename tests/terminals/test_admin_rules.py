"""The admin API answers by the registry's rules, the same ones `ksh operator|merchant|terminal
add` and `ksh cards issue` use (gateways.terminal_api.registry): a terminal id no upload can
carry, a suspended owner, a card issued again with another balance are refused, with nothing
written."""

from __future__ import annotations

from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.wire import public_key_text
from gateways.terminal_api import registry
from tests.terminals.conftest import Backoffice, admin_token, operator_id


async def test_admin_api_refuses_by_the_registry_rules(backoffice: Backoffice) -> None:
    key = public_key_text(Ed25519PrivateKey.generate().public_key())
    async with aiohttp.ClientSession() as session:

        async def post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
            async with session.post(
                backoffice.url + path,
                json={"reason": "rules test", **body},
                headers={"Authorization": f"Bearer {admin_token}"},
            ) as response:
                return response.status, await response.json()

        validator = {"public_key": key, "role": "validator", "operator_id": operator_id}
        status, problem = await post("/admin/v1/terminals", {"terminal_id": "T" * 33, **validator})
        assert (status, problem["field"]) == (400, "terminal_id")
        status, problem = await post(
            "/admin/v1/merchants", {"merchant_id": "M-9", "fee_basis_points": 10_001}
        )
        assert (status, problem["field"]) == (400, "fee_basis_points")

        card = {"card_number": "6032984000000077", "opening_balance_rupiah": 10_000}
        assert (await post("/admin/v1/cards", card))[0] == 201
        assert (await post("/admin/v1/cards", card))[0] == 201  # the same again: idempotent
        status, problem = await post("/admin/v1/cards", {**card, "opening_balance_rupiah": 9_000})
        assert (status, problem["code"]) == (409, "issued_differently")

        async with backoffice.pool.acquire() as connection:
            assert (
                await registry.suspend_party(connection, registry.PartyKind.operator, operator_id)
                == []
            )
        status, problem = await post("/admin/v1/terminals", {"terminal_id": "BUS-9", **validator})
        assert (status, problem["code"]) == (409, "owner_suspended")
    async with backoffice.pool.acquire() as connection:
        assert await connection.fetchval("select count(*) from terminals") == 0
        purse = await connection.fetchval(
            "select credits_posted from ledger_accounts where id = $1",
            registry.purse_account_id("6032984000000077"),
        )
        assert purse == 10_000
