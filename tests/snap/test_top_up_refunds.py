"""An expired VA top-up goes back to the payer's account through SNAP, on the real database,
the back office's SNAP API and the bank simulator: the payer's account at the bank moves once
(a lost answer resolved by the bank's status, never paid under a new reference), the card's
pending top-up account is left with the fresh payment only, and the books balance."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import asyncpg

from gateways.backoffice import BackofficeConfig, create_app
from gateways.bank_simulator import write_mt940
from gateways.snap.client import BankClient
from gateways.snap.partners import load_partner, save_partner
from gateways.terminal_api import registry
from ksh.commands.demo import start
from ledger.audit import check_ledger
from settlement import reconciliation, refund_sweep, top_up_refunds
from tests.snap.conftest import (
    Harness,
    card_number,
    issuer_account_no,
    partner_id,
    payer_account_no,
    va_number,
)
from tests.waiting import wait_until_async

day_s = 86_400


async def test_an_expired_va_top_up_is_paid_back_to_the_payers_account_once(
    harness: Harness, tmp_path: Path
) -> None:
    bank = harness.bank
    old = await harness.simulator.pay_va(
        va_number(), 100_000, payer_name="SRI", payer_account_no=payer_account_no
    )
    assert old.credited
    harness.clock.advance(30 * day_s)
    fresh = await harness.simulator.pay_va(
        va_number(), 20_000, payer_name="SRI", payer_account_no=payer_account_no
    )
    assert fresh.credited
    harness.clock.advance(61 * day_s)
    issuer_before = bank.accounts[issuer_account_no].balance_rupiah
    connection = await asyncpg.connect(harness.database_url)
    try:
        [refund] = await top_up_refunds.expire_top_ups(
            connection,
            now=harness.clock.now(),
            older_than=top_up_refunds.expiry_default,
            who="clerk",
            wait=dt.timedelta(0),
        )
        assert (refund.amount_rupiah, refund.state) == (100_000, "sending")
        assert refund.partner_reference_no == top_up_refunds.partner_reference_for(refund.top_up_id)
        # The bank books the transfer but its answer is lost: the repeat under the same
        # reference is a duplicate, and the bank's status says it is done.
        bank.trouble.lose_next_answers = 1
        client = BankClient.open(harness.our_connection(timeout_ms=500), harness.http)
        [paid] = await pay(connection, client, harness)
        assert paid.state == "paid"
        assert bank.accounts[payer_account_no].balance_rupiah == 100_000
        assert (
            await top_up_refunds.expire_top_ups(
                connection,
                now=harness.clock.now(),
                older_than=top_up_refunds.expiry_default,
                who="x",
            )
            == []
        )
        assert await pay(connection, client, harness) == []
        assert bank.accounts[payer_account_no].balance_rupiah == 100_000
        assert bank.accounts[issuer_account_no].balance_rupiah == issuer_before - 100_000

        pending = registry.pending_top_up_account_id(card_number)
        held = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where id = $1", pending
        )
        assert held == 20_000  # the fresh payment waits for its card
        movement = await connection.fetchrow(
            "select kind, account, direction, amount_rupiah from settlement_expected_movements "
            "where movement_id = $1",
            refund.partner_reference_no,
        )
        assert tuple(movement.values()) == ("payout", issuer_account_no, "debit", 100_000)
        # The day's statement shows it: reconciliation books it out of settlement in transit.
        statement = tmp_path / "refund-day.sta"
        statement.write_text(write_mt940(bank.statement(issuer_account_no, bank.today())))
        await reconciliation.import_statement(
            connection, statement, "009", "clerk", expected_account=issuer_account_no
        )
        await reconciliation.reconcile(
            connection, statement_through=bank.today(), now=harness.clock.now()
        )
        matched = await connection.fetchval(
            "select count(*) from settlement_match_movements where movement_id = $1",
            refund.partner_reference_no,
        )
        in_transit = await connection.fetchval(
            "select credits_posted - debits_posted from ledger_accounts where kind = $1",
            "settlement_in_transit",
        )
        assert (matched, in_transit) == (1, 0)
        assert await top_up_refunds.refunds_due(connection) == []
        assert await check_ledger(connection) == []
        total = await connection.fetchval(
            "select sum(credits_posted - debits_posted) from ledger_accounts"
        )
        assert total == 0
    finally:
        await connection.close()


async def pay(
    connection: asyncpg.Connection, client: BankClient, harness: Harness
) -> list[top_up_refunds.Refund]:
    return await top_up_refunds.pay_refunds(
        connection,
        client,
        partner_id=partner_id,
        source_account_no=issuer_account_no,
        now=harness.clock.now(),
    )


async def test_ksh_serve_gives_expired_top_ups_back_by_itself(
    harness: Harness, bank_private_pem: bytes
) -> None:
    """The back office's hourly job (here every 50 ms) expires and pays back without anyone
    running `ksh cards expire-top-ups`."""
    await harness.simulator.pay_va(va_number(), 40_000, payer_account_no=payer_account_no)
    connection = await asyncpg.connect(harness.database_url)
    try:
        partner = await load_partner(connection, partner_id)
        assert partner is not None
        await save_partner(
            connection,
            dataclasses.replace(
                partner,
                base_url=harness.bank_base_url + "/snap",
                source_account_no=issuer_account_no,
            ),
        )
    finally:
        await connection.close()
    harness.clock.advance(90 * day_s)
    settings = {
        "top_up_expiry_sweep_interval_s": 0.05,
        "top_up_withdrawal_wait_days": 0,
        "snap_private_key_pem": harness.own_private_pem.decode(),
        "expiry_sweep_interval_s": 0,
    }
    app = create_app(
        BackofficeConfig(harness.database_url, settings=settings, clock=harness.clock),
        [refund_sweep.install],
    )
    runner, _ = await start(app)
    connection = await asyncpg.connect(harness.database_url)
    try:

        async def paid() -> bool:
            state = await connection.fetchval("select state from top_up_refunds")
            return bool(state == "paid")

        await wait_until_async(paid, "the refund paid", within_s=30)
        assert harness.bank.accounts[payer_account_no].balance_rupiah == 40_000
        assert await check_ledger(connection) == []
    finally:
        await runner.cleanup()
        await connection.close()


async def test_a_refund_the_bank_refuses_goes_on_the_refund_due_list(harness: Harness) -> None:
    await harness.simulator.pay_va(va_number(), 15_000, payer_account_no=payer_account_no)
    harness.clock.advance(90 * day_s)
    harness.bank.trouble.reject_accounts.add(payer_account_no)  # the payer closed it
    connection = await asyncpg.connect(harness.database_url)
    try:
        await top_up_refunds.expire_top_ups(
            connection,
            now=harness.clock.now(),
            older_than=top_up_refunds.expiry_default,
            who="x",
            wait=dt.timedelta(0),
        )
        client = BankClient.open(harness.our_connection(), harness.http)
        [refused] = await pay(connection, client, harness)
        assert refused.state == "due"
        assert "Inactive" in refused.detail
        assert await pay(connection, client, harness) == []  # never sent again
        assert [r.top_up_id for r in await top_up_refunds.refunds_due(connection)] == [
            refused.top_up_id
        ]
        assert harness.bank.accounts[payer_account_no].balance_rupiah == 0
        assert await check_ledger(connection) == []
    finally:
        await connection.close()


async def test_a_payment_naming_an_unreadable_payer_account_is_refused(harness: Harness) -> None:
    body = {
        "partnerServiceId": va_number()[:8],
        "customerNo": card_number,
        "virtualAccountNo": va_number(),
        "paymentRequestId": "PR-BAD-ACCOUNT",
        "paidAmount": {"value": "10000.00", "currency": "IDR"},
        "additionalInfo": {"sourceAccountNo": "0811-22"},
    }
    answer = await harness.session.post("/v1.0/transfer-va/payment", body)
    assert (answer.http_status, answer.response_code) == (400, "4002501"), answer
    connection = await asyncpg.connect(harness.database_url)
    try:
        assert await connection.fetchval("select count(*) from pending_top_ups") == 0
    finally:
        await connection.close()
