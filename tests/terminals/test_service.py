"""The staff endpoints (registration over HTTP, bearer token, field errors), health, metrics,
OpenAPI; and a point of sale: sale with the merchant fee, refund of the last sale."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bus_terminals.journal import Journal
from bus_terminals.point_of_sale import refund_decider, sale_decider
from bus_terminals.sync import SyncClient, SyncState, UploadStatus
from bus_terminals.terminal import Reason, Terminal, Verdict
from bus_terminals.wire import public_key_text
from card_reader.deck import make_ksh_deck
from card_reader.emulator import EmulatedReader
from card_reader.keys import KeyRole, demo_key_store
from card_reader.ksh_card import KshCard
from gateways.terminal_api import registry
from tests.terminals.conftest import Backoffice, admin_token, merchant_id
from tests.terminals.helpers import books_snapshot, purse_balance


async def test_staff_endpoints_health_metrics_openapi(backoffice: Backoffice) -> None:
    staff = {"Authorization": f"Bearer {admin_token}"}
    key = public_key_text(Ed25519PrivateKey.generate().public_key())
    async with aiohttp.ClientSession() as session:

        async def post(
            path: str, body: object, headers: dict[str, str] = staff
        ) -> tuple[int, dict[str, object]]:
            sent = {"reason": "service test", **body} if isinstance(body, dict) else body
            async with session.post(backoffice.url + path, json=sent, headers=headers) as response:
                return response.status, await response.json()

        assert (await post("/admin/v1/operators", {"operator_id": "X"}, {}))[0] == 401
        assert (
            await post("/admin/v1/operators", {"operator_id": "X"}, {"Authorization": "Bearer no"})
        )[0] == 401
        assert (await post("/admin/v1/operators", {"operator_id": "OP-2"}))[0] == 201
        status, problem = await post(
            "/admin/v1/terminals", {"terminal_id": "T9", "role": "validator"}
        )
        assert (status, problem["field"]) == (400, "public_key")
        status, problem = await post(
            "/admin/v1/terminals",
            {"terminal_id": "T9", "public_key": "bad", "role": "validator", "operator_id": "OP-2"},
        )
        assert (status, problem["field"]) == (400, "public_key")
        status, problem = await post(
            "/admin/v1/terminals",
            {"terminal_id": "T9", "public_key": key, "role": "pos", "operator_id": "OP-2"},
        )
        assert status == 400
        body = {"terminal_id": "T9", "public_key": key, "role": "validator", "operator_id": "NOPE"}
        assert (await post("/admin/v1/terminals", body))[0] == 404
        body["operator_id"] = "OP-2"
        assert (await post("/admin/v1/terminals", body))[0] == 201
        assert (await post("/admin/v1/terminals/T9/revoke", {}))[0] == 200
        assert (await post("/admin/v1/terminals/T10/revoke", {}))[0] == 404
        status, card = await post(
            "/admin/v1/cards", {"card_number": "6032984000000009", "opening_balance_rupiah": 5_000}
        )
        assert status == 201
        assert card["purse_account_id"] == str(registry.purse_account_id("6032984000000009"))
        assert (await post("/admin/v1/cards", {"card_number": "12AB"}))[0] == 400
        # What no terminal could report back (a top-up id longer than a record holds), or no
        # time at all: refused, nothing booked.
        for bad in ({"top_up_id": "V" * 65}, {"paid_at_ms": 10**20}, {"source": "a\nb"}):
            body = {"top_up_id": "VA-8", "card_number": "6032984000000009", "amount_rupiah": 1}
            status, problem = await post("/admin/v1/pending-top-ups", {**body, **bad})
            assert (status, problem["field"]) == (400, next(iter(bad))), problem
        status, problem = await post("/admin/v1/operators", {"operator_id": "O" * 65})
        assert (status, problem["field"]) == (400, "operator_id")
        status, _ = await post(
            "/admin/v1/pending-top-ups",
            {"top_up_id": "VA-9", "card_number": "6032984000000009", "amount_rupiah": 10_000},
        )
        assert status == 201
        async with session.get(
            backoffice.url + "/admin/v1/cards/6032984000000009", headers=staff
        ) as response:
            view = await response.json()
        assert view["purse_balance_rupiah"] == 5_000
        async with session.get(backoffice.url + "/health") as response:
            health = await response.json()
        assert health["status"] == "ok"
        assert health["validator_feeds"]["reporting"] == 0  # no validator has synced yet
        async with session.get(backoffice.url + "/openapi.json") as response:
            document = await response.json()
        assert "/terminal/v1/uploads" in document["paths"]
        assert "/admin/v1/deny-list/{card_number}/lift" in document["paths"]
        async with session.get(backoffice.url + "/metrics") as response:
            text = await response.text()
        assert "# TYPE ksh_terminal_uploads_total counter" in text
        assert "# TYPE ksh_taps_charged_without_service_total counter" in text
        assert "# TYPE ksh_terminal_feed_days_left gauge" in text


async def test_point_of_sale_sale_fee_and_refund(backoffice: Backoffice, tmp_path: Path) -> None:
    store = demo_key_store()
    keys = store.view(KeyRole.DEBIT, KeyRole.CREDIT)
    card = make_ksh_deck(store, [100_000], seed="pos")[0]
    number = "6032900000000001"
    async with backoffice.pool.acquire() as connection:
        await registry.issue_cards(connection, {number: 100_000}, now=backoffice.clock.now())
    key = await backoffice.register_pos("POS-1")
    journal = Journal(tmp_path / "journal.db", "POS-1")
    terminal = Terminal("POS-1", journal, SyncState(), merchant_id=merchant_id)
    reader = EmulatedReader("pos")

    def tap(decide: object, time_ms: int) -> object:
        reader.insert(card)
        try:
            return terminal.tap(KshCard(reader, keys), time_ms, decide)  # type: ignore[arg-type]
        finally:
            reader.remove()

    sale = tap(sale_decider(40_000), 1_795_478_400_000)
    assert (sale.verdict, sale.balance_rupiah) == (Verdict.accepted, 60_000)  # type: ignore[attr-defined]
    refund = tap(refund_decider(journal), 1_795_478_460_000)
    assert (refund.verdict, refund.balance_rupiah) == (Verdict.accepted, 100_000)  # type: ignore[attr-defined]
    again = tap(refund_decider(journal), 1_795_478_520_000)
    assert again.reason == Reason.nothing_to_refund  # type: ignore[attr-defined]
    too_much = tap(sale_decider(150_000), 1_795_478_580_000)
    assert too_much.reason == Reason.insufficient_balance  # type: ignore[attr-defined]
    async with aiohttp.ClientSession() as session:
        client = SyncClient(
            backoffice.url,
            "POS-1",
            key,
            journal,
            terminal.sync_state,
            session=session,
            now_ms=backoffice.clock.unix_ms,
        )
        assert await client.upload_all() == UploadStatus.nothing_to_send
    journal.close()
    assert await purse_balance(backoffice.pool, number) == 100_000
    async with backoffice.pool.acquire() as connection:
        payable = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1",
            registry.merchant_payable_account_id(merchant_id),
        )
        fees = await connection.fetchval(
            "select credits_posted from ledger_accounts where id = $1",
            registry.fee_income_account_id,
        )
    assert fees == 400  # 1% of the sale, kept when the sale is refunded
    assert payable == 40_000 - 400 - 40_000
    assert (await books_snapshot(backoffice.pool))[1] == 0
