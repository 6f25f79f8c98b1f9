"""Our SNAP endpoints as a bank sees them: token, VA inquiry and payment, every refusal with
its SNAP code, and nothing booked unless everything checked out."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg

from bus_terminals.wire import reference_check
from gateways.backoffice import BackofficeConfig, create_app
from gateways.snap import signature
from gateways.snap.client import SnapSession
from gateways.snap.ledger_port import top_up_id
from gateways.snap.partners import Partner, save_partner, set_card_holder
from gateways.snap.server import install
from gateways.terminal_api import card_desk, registry
from ledger.store import lookup_accounts
from tests.snap.conftest import (
    Harness,
    card_holder,
    card_number,
    channel_id,
    client_secret,
    company_code,
    partner_id,
    public_pem,
    start,
    va_number,
)

inquiry_path = "/snap/v1.0/transfer-va/inquiry"
payment_path = "/snap/v1.0/transfer-va/payment"
external_ids = itertools.count(10_000)


def inquiry_body(card: str = card_number, amount: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "partnerServiceId": company_code.rjust(8),
        "customerNo": card,
        "virtualAccountNo": va_number(card),
        "inquiryRequestId": "IQ-1",
    }
    if amount is not None:
        body["amount"] = {"value": f"{amount}.00", "currency": "IDR"}
    return body


def payment_body(amount: int, request_id: str = "PR-1", card: str = card_number) -> dict[str, Any]:
    return {
        "partnerServiceId": company_code.rjust(8),
        "customerNo": card,
        "virtualAccountNo": va_number(card),
        "paymentRequestId": request_id,
        "paidAmount": {"value": f"{amount}.00", "currency": "IDR"},
        "trxDateTime": "2026-11-24T08:00:00+07:00",
    }


async def raw_post(
    harness: Harness,
    path: str,
    body: bytes,
    *,
    token: str | None = None,
    secret: str = client_secret,
    partner: str = partner_id,
    timestamp: str | None = None,
    external_id: str | None = None,
    signature_text: str | None = None,
    channel: str = channel_id,
    drop: tuple[str, ...] = (),
) -> tuple[int, dict[str, Any]]:
    token = token if token is not None else await harness.session.access_token()
    timestamp = timestamp or signature.format_timestamp(harness.clock.now())
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
        "X-TIMESTAMP": timestamp,
        "X-SIGNATURE": signature_text
        or signature.sign_transaction(secret, "POST", path, token, body, timestamp),
        "X-PARTNER-ID": partner,
        "X-EXTERNAL-ID": external_id or str(next(external_ids)),
        "CHANNEL-ID": channel,
    }
    for name in drop:
        del headers[name]
    async with harness.http.post(harness.base_url + path, data=body, headers=headers) as response:
        return response.status, await response.json()


async def booked(harness: Harness, card: str = card_number) -> tuple[int, int]:
    """(pending top-up balance of the card in the ledger, VA payments recorded)."""
    connection = await asyncpg.connect(harness.database_url)
    try:
        pending_id = registry.pending_top_up_account_id(card)
        found = await lookup_accounts(connection, [pending_id])
        pending = found[pending_id].balances.credit_balance if pending_id in found else 0
        payments = await connection.fetchval("select count(*) from snap_va_payments")
        return pending, int(payments)
    finally:
        await connection.close()


async def test_access_token_is_issued_and_cached(harness: Harness) -> None:
    token = await harness.session.access_token()
    assert token == await harness.session.access_token()
    assert harness.session.token_requests == 1


async def test_access_token_refusals(harness: Harness, own_private_pem: bytes) -> None:
    url = harness.base_url + "/snap/v1.0/access-token/b2b"
    body = b'{"grantType":"client_credentials"}'
    bank_key = signature.load_private_key(harness.session.connection.private_key_pem)
    wrong_key = signature.load_private_key(own_private_pem)

    async def ask(key: Any, client: str, stamp: str, drop: str = "") -> tuple[int, str]:
        headers = {
            "Content-Type": "application/json",
            "X-TIMESTAMP": stamp,
            "X-CLIENT-KEY": client,
            "X-SIGNATURE": signature.sign_access_token(key, client, stamp),
        }
        headers.pop(drop, None)
        async with harness.http.post(url, data=body, headers=headers) as response:
            return response.status, (await response.json())["responseCode"]

    now = signature.format_timestamp(harness.clock.now())
    stale = signature.format_timestamp(harness.clock.now() - timedelta(minutes=10))
    assert await ask(bank_key, partner_id, now) == (200, "2007300")
    assert await ask(wrong_key, partner_id, now) == (401, "4017300")
    assert await ask(bank_key, "NOBODY", now) == (401, "4017300")
    assert await ask(bank_key, partner_id, stale) == (401, "4017300")
    assert await ask(bank_key, partner_id, "24/11/2026") == (400, "4007301")
    assert await ask(bank_key, partner_id, now, drop="X-SIGNATURE") == (400, "4007302")


async def test_inquiry_answers_holder_and_amount_allowed_under_the_cap(harness: Harness) -> None:
    connection = await asyncpg.connect(harness.database_url)
    try:
        await set_card_holder(connection, card_number, card_holder)
    finally:
        await connection.close()
    response = await harness.session.post("/v1.0/transfer-va/inquiry", inquiry_body())
    assert response.http_status == 200
    assert response.response_code == "2002400"
    data = response.body["virtualAccountData"]
    assert data["virtualAccountName"] == card_holder
    assert data["virtualAccountNo"] == va_number()
    # purse 1,500,000 of the 2,000,000 cap: 500,000 may still come in; on-us above 200k: 750
    assert data["totalAmount"] == {"value": "500000.00", "currency": "IDR"}
    assert data["feeAmount"] == {"value": "750.00", "currency": "IDR"}
    small = await harness.session.post("/v1.0/transfer-va/inquiry", inquiry_body(amount=100_000))
    assert small.body["virtualAccountData"]["feeAmount"]["value"] == "0.00"  # on-us ≤ 200k free
    too_much = await harness.session.post("/v1.0/transfer-va/inquiry", inquiry_body(amount=500_001))
    assert (too_much.http_status, too_much.response_code) == (404, "4042413")


async def test_payment_books_a_pending_top_up_once(harness: Harness) -> None:
    first = await harness.session.post("/v1.0/transfer-va/payment", payment_body(200_000))
    assert (first.http_status, first.response_code) == (200, "2002500")
    assert first.body["virtualAccountData"]["paymentFlagStatus"] == "00"
    assert await booked(harness) == (200_000, 1)
    # the bank retries (a new X-EXTERNAL-ID, same paymentRequestId): the original answer
    again = await harness.session.post("/v1.0/transfer-va/payment", payment_body(200_000))
    assert again.http_status == 200
    assert again.body == first.body
    assert await booked(harness) == (200_000, 1)
    # the same paymentRequestId for another amount is a conflict
    other = await harness.session.post("/v1.0/transfer-va/payment", payment_body(100_000))
    assert (other.http_status, other.response_code) == (409, "4092501")
    # the terminals see it in the pending top-ups they download
    connection = await asyncpg.connect(harness.database_url)
    try:
        rows = await connection.fetch(
            "select top_up_id, card_number, amount_rupiah from pending_top_ups"
        )
    finally:
        await connection.close()
    assert [tuple(row) for row in rows] == [(f"snap:{partner_id}:PR-1", card_number, 200_000)]


async def test_a_long_payment_request_id_gives_a_top_up_id_terminals_can_carry(
    harness: Harness,
) -> None:
    """paymentRequestId may be 128 characters; the pending top-up id a terminal writes on the
    card's record holds at most 64 printable ones, else the top-up could never be delivered."""
    long_id = "R" * 128
    for _ in ("payment", "the bank's retry"):
        paid = await harness.session.post(
            "/v1.0/transfer-va/payment", payment_body(50_000, long_id)
        )
        assert (paid.http_status, paid.response_code) == (200, "2002500")
    connection = await asyncpg.connect(harness.database_url)
    try:
        rows = await connection.fetch("select top_up_id from pending_top_ups")
    finally:
        await connection.close()
    assert len(rows) == 1
    assert reference_check(rows[0]["top_up_id"]) is None
    assert rows[0]["top_up_id"] == top_up_id(partner_id, long_id)
    assert await booked(harness) == (50_000, 1)


async def test_payment_over_the_cap_is_refused_and_books_nothing(harness: Harness) -> None:
    done = await harness.session.post("/v1.0/transfer-va/payment", payment_body(300_000, "PR-A"))
    assert done.http_status == 200
    # purse 1,500,000 + pending 300,000: only 200,000 more fits
    refused = await harness.session.post("/v1.0/transfer-va/payment", payment_body(200_001, "PR-B"))
    assert (refused.http_status, refused.response_code) == (404, "4042513")
    assert "200000" in refused.response_message
    assert await booked(harness) == (300_000, 1)
    inquiry = await harness.session.post("/v1.0/transfer-va/inquiry", inquiry_body())
    assert inquiry.body["virtualAccountData"]["totalAmount"]["value"] == "200000.00"


async def test_a_registered_card_takes_top_ups_up_to_the_registered_cap(harness: Harness) -> None:
    connection = await asyncpg.connect(harness.database_url)
    try:
        await card_desk.register_holder(
            connection,
            card_number,
            "Siti Rahayu",
            "3374012345678901",
            "081234567890",
            username="ani",
            now=harness.clock.now(),
        )
    finally:
        await connection.close()
    # purse 1,500,000 of the registered cap of 20,000,000; one top-up is one card transaction,
    # at most 2,000,000
    for payment_request_id in ("PR-1", "PR-2"):
        inquiry = await harness.session.post("/v1.0/transfer-va/inquiry", inquiry_body())
        assert inquiry.body["virtualAccountData"]["totalAmount"]["value"] == "2000000.00"
        paid = await harness.session.post(
            "/v1.0/transfer-va/payment", payment_body(2_000_000, payment_request_id)
        )
        assert (paid.http_status, paid.response_code) == (200, "2002500")
    assert await booked(harness) == (4_000_000, 2)


async def test_unknown_virtual_account(harness: Harness) -> None:
    inquiry = await harness.session.post("/v1.0/transfer-va/inquiry", inquiry_body("999999"))
    assert (inquiry.http_status, inquiry.response_code) == (404, "4042412")
    payment = await harness.session.post(
        "/v1.0/transfer-va/payment", payment_body(10_000, "PR-X", "999999")
    )
    assert (payment.http_status, payment.response_code) == (404, "4042512")
    wrong_prefix = dict(payment_body(10_000, "PR-Y"), partnerServiceId="   77777")
    wrong_prefix["virtualAccountNo"] = "   77777" + card_number
    answer = await harness.session.post("/v1.0/transfer-va/payment", wrong_prefix)
    assert answer.response_code == "4042512"
    assert await booked(harness) == (0, 0)


async def test_blocked_card_is_refused(harness: Harness) -> None:
    connection = await asyncpg.connect(harness.database_url)
    try:
        await registry.deny_cards(
            connection, [card_number], "reported lost", now=harness.clock.now()
        )
    finally:
        await connection.close()
    answer = await harness.session.post("/v1.0/transfer-va/payment", payment_body(10_000))
    assert (answer.http_status, answer.response_code) == (403, "4032518")
    assert await booked(harness) == (0, 0)


async def test_invalid_or_missing_fields_are_named(harness: Harness) -> None:
    cases = [
        (
            {k: v for k, v in payment_body(10_000).items() if k != "paymentRequestId"},
            "4002502",
            "paymentRequestId",
        ),
        (
            dict(payment_body(10_000), paidAmount={"value": "10.50", "currency": "IDR"}),
            "4002501",
            "paidAmount.value",
        ),
        (
            dict(payment_body(10_000), paidAmount={"value": "10000.00", "currency": "USD"}),
            "4002501",
            "paidAmount.currency",
        ),
        (
            dict(payment_body(10_000), paidAmount={"value": "1e5", "currency": "IDR"}),
            "4002501",
            "paidAmount.value",
        ),
        (dict(payment_body(10_000), customerNo="12AB"), "4002501", "customerNo"),
        (dict(payment_body(10_000), paymentRequestId=7), "4002501", "paymentRequestId"),
        (dict(payment_body(10_000), virtualAccountNo="X"), "4002501", "virtualAccountNo"),
    ]
    for body, code, field in cases:
        answer = await harness.session.post("/v1.0/transfer-va/payment", body)
        assert (answer.http_status, answer.response_code) == (400, code), (field, answer.body)
        assert answer.response_message.endswith(field), answer.response_message
    assert await booked(harness) == (0, 0)


async def test_security_refusals_book_nothing(harness: Harness) -> None:
    body = signature.minified_json(payment_body(50_000, "PR-SEC"))
    token = await harness.session.access_token()

    # wrong signature (signed with another secret; and a tampered body)
    assert await raw_post(harness, payment_path, body, secret="another-secret-entirely") == (
        401,
        {"responseCode": "4012500", "responseMessage": "Unauthorized Signature"},
    )
    signed = signature.sign_transaction(
        client_secret,
        "POST",
        payment_path,
        token,
        body,
        signature.format_timestamp(harness.clock.now()),
    )
    tampered = body.replace(b"50000.00", b"90000.00")
    status, answer = await raw_post(harness, payment_path, tampered, signature_text=signed)
    assert (status, answer["responseCode"]) == (401, "4012500")

    # stale and future timestamps, malformed timestamp
    for minutes in (-10, 10):
        stamp = signature.format_timestamp(harness.clock.now() + timedelta(minutes=minutes))
        status, answer = await raw_post(harness, payment_path, body, timestamp=stamp)
        assert (status, answer["responseCode"]) == (401, "4012500"), minutes
    status, answer = await raw_post(harness, payment_path, body, timestamp="2026-11-24 08:00")
    assert (status, answer["responseCode"]) == (400, "4002501")

    # missing header, bad external id
    status, answer = await raw_post(harness, payment_path, body, drop=("X-EXTERNAL-ID",))
    assert (status, answer["responseCode"]) == (400, "4002502")
    assert answer["responseMessage"].endswith("X-EXTERNAL-ID")
    status, answer = await raw_post(harness, payment_path, body, external_id="ABC")
    assert (status, answer["responseCode"]) == (400, "4002501")

    # unknown and forged tokens
    status, answer = await raw_post(harness, payment_path, body, token="not-a-token")
    assert (status, answer["responseCode"]) == (401, "4012503")

    # huge and malformed bodies (correctly signed)
    huge = signature.minified_json(dict(payment_body(50_000), freeTexts=["x" * 100_000]))
    status, answer = await raw_post(harness, payment_path, huge)
    assert (status, answer["responseCode"]) == (400, "4002500")
    status, answer = await raw_post(harness, payment_path, b'{"paymentRequestId": ')
    assert (status, answer["responseCode"]) == (400, "4002500")
    status, answer = await raw_post(harness, payment_path, b"[1, 2, 3]")
    assert (status, answer["responseCode"]) == (400, "4002500")
    status, answer = await raw_post(harness, payment_path, b"\xff\xfe")
    assert (status, answer["responseCode"]) == (400, "4002500")
    assert await booked(harness) == (0, 0)

    # replayed X-EXTERNAL-ID: the first use books, the replay is a conflict
    status, answer = await raw_post(harness, payment_path, body, external_id="777")
    assert status == 200
    replay = signature.minified_json(payment_body(60_000, "PR-SEC-2"))
    status, answer = await raw_post(harness, payment_path, replay, external_id="777")
    assert (status, answer["responseCode"]) == (409, "4092500")
    assert await booked(harness) == (50_000, 1)


async def test_a_body_arriving_in_pieces_is_read_whole(harness: Harness) -> None:
    """A body split over several TCP segments (any body over one MSS, on a real network) is
    signed as a whole and must be hashed as a whole."""
    body = signature.minified_json(
        dict(payment_body(40_000, "PR-PIECES"), freeTexts=[{"english": "x" * 3000}])
    )
    token = await harness.session.access_token()
    timestamp = signature.format_timestamp(harness.clock.now())
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {token}",
        "X-TIMESTAMP": timestamp,
        "X-SIGNATURE": signature.sign_transaction(
            client_secret, "POST", payment_path, token, body, timestamp
        ),
        "X-PARTNER-ID": partner_id,
        "X-EXTERNAL-ID": str(next(external_ids)),
        "CHANNEL-ID": channel_id,
    }

    async def pieces() -> AsyncIterator[bytes]:
        for offset in range(0, len(body), 1000):
            yield body[offset : offset + 1000]
            await asyncio.sleep(0.02)

    async with harness.http.post(
        harness.base_url + payment_path, data=pieces(), headers=headers
    ) as response:
        assert response.status == 200, await response.text()
    assert await booked(harness) == (40_000, 1)


async def test_another_partners_token_and_expired_tokens(
    harness: Harness, own_private_pem: bytes
) -> None:
    connection = await asyncpg.connect(harness.database_url)
    try:
        await save_partner(
            connection,
            Partner(
                partner_id="JATENG-01",
                name="Bank Jateng",
                client_secret="another-banks-secret-key",
                public_key_pem=public_pem(own_private_pem).decode(),
                channel_id="95999",
                company_code="77001",
                bank_code="113",
            ),
        )
    finally:
        await connection.close()
    from gateways.snap.client import BankConnection

    other = SnapSession(
        BankConnection(
            harness.base_url + "/snap",
            "JATENG-01",
            "another-banks-secret-key",
            own_private_pem,
            "95999",
            clock=harness.clock,
        ),
        harness.http,
    )
    other_token = await other.access_token()
    body = signature.minified_json(payment_body(10_000, "PR-T"))
    # a token of Bank Jateng used with BNI's partner id and secret
    status, answer = await raw_post(harness, payment_path, body, token=other_token)
    assert (status, answer["responseCode"]) == (401, "4012501")

    # X-EXTERNAL-ID is unique per partner: both banks may use 555 today
    status, answer = await raw_post(harness, payment_path, body, external_id="555")
    assert status == 200
    status, answer = await raw_post(
        harness,
        payment_path,
        body,
        token=other_token,
        partner="JATENG-01",
        secret="another-banks-secret-key",
        external_id="555",
        channel="95999",
    )
    assert (status, answer["responseCode"]) == (404, "4042512")  # BNI's VA prefix, not 409

    token = await harness.session.access_token()
    connection = await asyncpg.connect(harness.database_url)
    try:
        await connection.execute(
            "update snap_access_tokens set expires_at = $1",
            harness.clock.now() - timedelta(seconds=1),
        )
    finally:
        await connection.close()
    status, answer = await raw_post(harness, payment_path, body, token=token)
    assert (status, answer["responseCode"]) == (401, "4012501")
    # the session notices the refusal, fetches a fresh token once, and succeeds (a second
    # after its first token request: the same signed request would be answered only once)
    harness.clock.advance(1)
    answer_after = await harness.session.post("/v1.0/transfer-va/payment", json.loads(body))
    assert answer_after.http_status == 200  # the original answer to PR-T
    assert harness.session.token_requests == 2
    assert await booked(harness) == (10_000, 1)


async def test_concurrent_twins_book_once_and_answer_alike(harness: Harness) -> None:
    # 400,000 fits under the cap once (500,000 allowed), not twice
    twins = await asyncio.gather(
        *(
            harness.session.post("/v1.0/transfer-va/payment", payment_body(400_000, "PR-TWIN"))
            for _ in range(4)
        )
    )
    assert {answer.http_status for answer in twins} == {200}
    assert all(answer.body == twins[0].body for answer in twins)
    assert await booked(harness) == (400_000, 1)


async def test_settings_come_from_the_backoffice_config(harness: Harness) -> None:
    app = create_app(
        BackofficeConfig(
            harness.database_url,
            pool_connections_min=1,
            settings={"snap_timestamp_tolerance_seconds": 5, "snap_purse_cap_rupiah": 1_600_000},
            clock=harness.clock,
        ),
        [install],
    )
    runner, base_url = await start(app)
    try:
        connection = dataclasses.replace(harness.session.connection, base_url=base_url + "/snap")
        session = SnapSession(connection, harness.http)
        inquiry = await session.post("/v1.0/transfer-va/inquiry", inquiry_body())
        assert inquiry.body["virtualAccountData"]["totalAmount"]["value"] == "100000.00"
        other = dataclasses.replace(harness, base_url=base_url, session=session)
        body = signature.minified_json(inquiry_body())
        stamp = signature.format_timestamp(harness.clock.now() - timedelta(seconds=30))
        status, answer = await raw_post(other, inquiry_path, body, timestamp=stamp)
        assert (status, answer["responseCode"]) == (401, "4012400")
    finally:
        await runner.cleanup()
