"""The bank simulator end to end: a citizen pays a VA (a pending top-up in our ledger),
payouts through our client (failures, lost answers, retries that never pay twice), balance,
statements as MT940 and CSV (read back by the settlement importer), and injected trouble."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import mt940

from gateways.bank_simulator import write_csv, write_mt940
from gateways.snap import ledger_port
from gateways.snap.client import BankClient, Payout, PayoutState
from gateways.terminal_api import registry
from ledger.records import TransferCode
from ledger.store import lookup_accounts, lookup_transfers
from settlement.statements import import_file
from tests.snap.conftest import (
    Harness,
    card_number,
    harness_time,
    issuer_account_no,
    merchant_account_no,
    partner_id,
    va_number,
)


def payout(
    reference: str, amount: int, account: str = merchant_account_no, bank_code: str = ""
) -> Payout:
    return Payout(
        partner_reference_no=reference,
        source_account_no=issuer_account_no,
        beneficiary_account_no=account,
        amount_rupiah=amount,
        transaction_date=harness_time,
        beneficiary_bank_code=bank_code,
        beneficiary_account_name="WARUNG" if bank_code else "",
        remark="KSH SETTLEMENT",
    )


async def pending_rupiah(harness: Harness) -> int:
    connection = await asyncpg.connect(harness.database_url)
    try:
        pending_id = registry.pending_top_up_account_id(card_number)
        found = await lookup_accounts(connection, [pending_id])
        return found[pending_id].balances.credit_balance if pending_id in found else 0
    finally:
        await connection.close()


async def test_citizen_pays_a_virtual_account_and_a_pending_top_up_is_booked(
    harness: Harness,
) -> None:
    simulator = harness.simulator
    payment = await simulator.pay_va(va_number(), 150_000, payer_name="SRI")
    assert payment.inquiry_code == "2002400"
    assert payment.payment_code == "2002500"
    assert payment.credited
    assert await pending_rupiah(harness) == 150_000
    connection = await asyncpg.connect(harness.database_url)
    try:
        transfer_id = ledger_port.pending_top_up_transfer_id(partner_id, payment.payment_request_id)
        booked = (await lookup_transfers(connection, [transfer_id]))[transfer_id]
    finally:
        await connection.close()
    assert booked.transfer.code == TransferCode.pending_top_up
    assert booked.transfer.amount == 150_000
    assert booked.transfer.bank_reference == f"snap:{partner_id}:{payment.payment_request_id}"
    # The bank repeats the same payment (same paymentRequestId): booked once, credited once.
    again = await simulator.pay_va(
        va_number(), 150_000, payment_request_id=payment.payment_request_id
    )
    assert again.payment_code == "2002500"
    assert not again.credited
    assert await pending_rupiah(harness) == 150_000
    issuer = harness.bank.accounts[issuer_account_no]
    assert issuer.balance_rupiah == 10_000_000 + 150_000
    # Over the cap (1,500,000 in the purse + 150,000 pending): refused, nothing moves.
    refused = await simulator.pay_va(va_number(), 400_000)
    assert refused.inquiry_code == "4042413"
    assert not refused.credited
    assert await pending_rupiah(harness) == 150_000


async def test_control_endpoint_pays_a_va_and_serves_statements(harness: Harness) -> None:
    async with harness.http.post(
        harness.bank_base_url + "/sim/va-payments",
        json={"virtualAccountNo": va_number(), "amount": 25_000},
    ) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer["paymentResponseCode"] == "2002500"
    assert await pending_rupiah(harness) == 25_000
    today = harness.bank.today().isoformat()
    url = f"{harness.bank_base_url}/sim/statements/{issuer_account_no}/{today}"
    async with harness.http.get(url + ".csv") as response:
        text = await response.text()
    assert answer["paymentRequestId"] in text
    async with harness.http.get(url + ".mt940") as response:
        assert ":61:" in await response.text()


async def test_control_endpoints_refuse_bad_input_and_change_nothing(harness: Harness) -> None:
    trouble = harness.bank.trouble
    bad = [
        ("/sim/trouble", b"{not json"),
        ("/sim/trouble", b"[1]"),
        ("/sim/trouble", b'{"failNextTransfers": 2, "loseNextAnswers": "many"}'),
        ("/sim/trouble", b'{"rejectAccounts": 5}'),
        ("/sim/va-payments", b"{not json"),
        ("/sim/va-payments", b'{"virtualAccountNo": "1", "amount": "lots"}'),
    ]
    for path, body in bad:
        async with harness.http.post(harness.bank_base_url + path, data=body) as response:
            assert response.status == 400, (path, body, await response.text())
    assert trouble.fail_next_transfers == 0
    assert trouble.reject_accounts == set()
    assert await pending_rupiah(harness) == 0


async def test_payout_with_failure_lost_answer_and_retry_pays_once(harness: Harness) -> None:
    bank = harness.bank
    client = BankClient.open(harness.our_connection(timeout_ms=1000, attempts_max=3), harness.http)
    client.sleep = _no_sleep

    # 1. core banking down twice, then up: the same reference is retried and pays once
    bank.trouble.fail_next_transfers = 2
    outcome = await client.transfer(payout("KSHPO0001", 400_000))
    assert outcome.state is PayoutState.succeeded
    assert outcome.attempts == 3
    assert bank.accounts[merchant_account_no].balance_rupiah == 400_000

    # 2. the answer is lost after booking: the retry meets "duplicate", status resolves it
    bank.trouble.lose_next_answers = 1
    lost = await client.pay(payout("KSHPO0002", 100_000))
    assert lost.state is PayoutState.succeeded
    assert bank.accounts[merchant_account_no].balance_rupiah == 500_000  # not 600,000

    # 3. every attempt unanswered: outcome unknown, then resolved by status only
    bank.trouble.lose_next_answers = 3
    unknown = await client.transfer(payout("KSHPO0003", 50_000))
    assert unknown.state is PayoutState.unknown
    status = await client.transfer_status(payout("KSHPO0003", 50_000))
    assert status.state is PayoutState.succeeded
    assert bank.accounts[merchant_account_no].balance_rupiah == 550_000

    # 4. a rejected beneficiary: failed for good, nothing moved
    bank.trouble.reject_accounts = {merchant_account_no}
    rejected = await client.pay(payout("KSHPO0004", 70_000))
    assert rejected.state is PayoutState.failed
    assert rejected.response_code == "4031718"
    assert bank.accounts[merchant_account_no].balance_rupiah == 550_000
    bank.trouble.reject_accounts = set()

    # 5. a reference the bank never saw: status says not found
    never = await client.transfer_status(payout("KSHPO0099", 1_000))
    assert never.state is PayoutState.not_found

    # 6. interbank with the BI-FAST fee, and an unexpected fee on top
    bank.trouble.unexpected_fee_rupiah = 1_234
    opening = bank.accounts[issuer_account_no].balance_rupiah
    inter = await client.pay(payout("KSHPO0005", 300_000, "5550001111", bank_code="113"))
    assert inter.state is PayoutState.succeeded
    assert bank.accounts[issuer_account_no].balance_rupiah == opening - 300_000 - 2_500 - 1_234

    balance = await client.balance(issuer_account_no, "KSHBAL0001")
    assert balance.available_rupiah == bank.accounts[issuer_account_no].balance_rupiah
    assert client.session.token_requests == 1  # one cached token for all of it


async def _no_sleep(seconds: float) -> None:
    return None


async def test_timeout_is_an_unknown_outcome(harness: Harness) -> None:
    client = BankClient.open(harness.our_connection(timeout_ms=200, attempts_max=2), harness.http)
    client.sleep = _no_sleep
    await client.session.access_token()
    harness.bank.trouble.response_delay_ms = 400
    outcome = await client.transfer(payout("KSHPO0100", 10_000))
    assert outcome.state is PayoutState.unknown
    harness.bank.trouble.response_delay_ms = 0
    resolved = await client.pay(payout("KSHPO0100", 10_000))
    assert resolved.state is PayoutState.succeeded
    assert harness.bank.accounts[merchant_account_no].balance_rupiah == 10_000


async def test_refusal_after_an_uncertain_attempt_is_confirmed_by_status(
    harness: Harness,
) -> None:
    """A 5xx (or no answer) may have moved the money: a refusal of the retry must not be taken
    as the payout's outcome (staff could then pay it again); the status inquiry decides."""
    bank = harness.bank
    client = BankClient.open(harness.our_connection(attempts_max=3), harness.http)
    client.sleep = _no_sleep
    bank.trouble.fail_next_transfers = 1
    bank.trouble.reject_accounts = {merchant_account_no}
    sent = await client.transfer(payout("KSHPO0200", 20_000))
    assert sent.state is PayoutState.unknown
    assert sent.attempts == 2
    assert sent.response_code == "4031718"
    bank.trouble.fail_next_transfers = 1
    resolved = await client.pay(payout("KSHPO0201", 20_000))
    assert resolved.state is PayoutState.failed  # the bank's own status says so
    assert resolved.response_code == "2003600"
    assert bank.accounts[merchant_account_no].balance_rupiah == 0


async def test_statements_are_mt940_and_csv_that_importers_read(
    harness: Harness, tmp_path: Path
) -> None:
    simulator = harness.simulator
    bank = harness.bank
    paid = await simulator.pay_va(va_number(), 80_000)
    # trouble: a VA payment for no known card, credited by the bank anyway
    stray = await simulator.pay_va(
        va_number("4000000000000002"), 20_000, credit_even_if_refused=True
    )
    assert stray.inquiry_code == "4042412"
    assert stray.credited
    client = BankClient.open(harness.our_connection(), harness.http)
    bank.trouble.duplicate_next_statement_lines = 1
    assert (await client.pay(payout("KSHPO0200", 60_000))).state is PayoutState.succeeded

    statement = bank.statement(issuer_account_no, bank.today())
    assert statement.opening_rupiah == 10_000_000
    assert statement.closing_rupiah == 10_000_000 + 80_000 + 20_000 - 60_000 - 60_000
    assert len(statement.lines) == 4

    mt940_text = write_mt940(statement)
    assert "C80000,00NTRF" in mt940_text
    parsed = mt940.models.Transactions()
    parsed.parse(mt940_text)
    assert [str(t.data["amount"].amount) for t in parsed] == [
        "80000.00",
        "20000.00",
        "-60000.00",
        "-60000.00",
    ]
    assert parsed.data["final_closing_balance"].amount.amount == statement.closing_rupiah

    (tmp_path / "bni.sta").write_text(mt940_text)
    (tmp_path / "bni.csv").write_text(write_csv(statement))
    from_mt940 = import_file(tmp_path / "bni.sta", "BNI")
    from_csv = import_file(tmp_path / "bni.csv", "BNI")
    assert [(line.amount_rupiah, line.direction.value, line.reference) for line in from_mt940] == [
        (line.amount_rupiah, line.direction.value, line.reference) for line in from_csv
    ]
    assert from_csv[0].reference == paid.payment_request_id
    assert [line.occurrence for line in from_csv] == [0, 0, 0, 1]  # the duplicated line shows


async def test_each_days_statements_are_written_to_a_folder(
    harness: Harness, tmp_path: Path
) -> None:
    await harness.simulator.pay_va(va_number(), 45_000)
    assert harness.simulator.days_with_movements() == [harness.bank.today()]
    written = harness.simulator.write_statements(tmp_path, harness.bank.today())
    names = sorted(path.name for path in written)
    day = f"{harness.bank.today():%Y%m%d}"
    assert names == [f"{issuer_account_no}-{day}.csv", f"{issuer_account_no}-{day}.sta"]
    lines = import_file(tmp_path / f"{issuer_account_no}-{day}.sta", "BNI")
    assert [(line.amount_rupiah, line.direction.value) for line in lines] == [(45_000, "credit")]
