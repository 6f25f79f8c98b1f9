"""Top-ups through a bank virtual account (VA): inquiry (service 24) and payment (service 25).

The VA number names the card: ``virtualAccountNo = partnerServiceId + customerNo`` where
`partnerServiceId` is the bank's company code left-padded with spaces to 8 characters and
`customerNo` is the card number (digits). A card can be topped up when the ledger has its
card was issued (the terminal side's card registry, see `ledger_port`).

The purse balance as the back office knows it is the card purse account's balance plus the
card's pending top-ups; inquiry and payment keep that sum within the e-money cap
(Rp 2,000,000 for unregistered cards, Rp 20,000,000 for registered ones). Payment books one ledger transfer, bank clearing ->
the card's pending top-up account, with an id derived from (partner, paymentRequestId), once
per paymentRequestId, and announces it to the terminals; a repeat gets the original answer.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import asyncpg

from bus_terminals.wire import rupiah_max
from gateways.snap import ledger_port
from gateways.snap.codes import Cases, SnapError
from gateways.snap.fields import (
    format_amount,
    optional_text,
    parse_amount_value,
    require_text,
)
from gateways.snap.partners import Partner, top_up_fee_rupiah
from gateways.terminal_api import card_desk

purse_cap_rupiah_default = 2_000_000
customer_number_length_max = 20
virtual_account_number_length_max = 28
request_id_length_max = 128
# Serialises VA payments of one card, so two payments cannot both pass the cap check.
card_lock_namespace = 0x5641  # "VA"


def read_virtual_account(partner: Partner, body: dict[str, Any]) -> tuple[str, str]:
    """(virtualAccountNo, card number) of a request, checked against the partner's prefix."""
    service_id = require_text(body, "partnerServiceId", length_max=8)
    customer_no = require_text(
        body, "customerNo", length_max=customer_number_length_max, digits=True
    )
    va_number = require_text(body, "virtualAccountNo", length_max=virtual_account_number_length_max)
    # Banks pad the company code with spaces (ASPI) or zeros (some banks): accept either.
    if service_id.strip().lstrip("0") != partner.company_code.lstrip("0"):
        raise SnapError(Cases.invalid_bill, "partnerServiceId is not this partner's")
    if va_number.strip() != f"{service_id}{customer_no}".strip():
        raise SnapError(Cases.invalid_field_format, "virtualAccountNo")
    return va_number, customer_no


def masked_name(card_number: str) -> str:
    return f"KSH {'*' * 4}{card_number[-4:]}"


async def holder_name(connection: asyncpg.Connection, card_number: str) -> str:
    name = await connection.fetchval(
        "select holder_name from snap_card_holders where card_number = $1", card_number
    )
    return str(name) if name else masked_name(card_number)


async def allowed_rupiah(
    connection: asyncpg.Connection, card_number: str, purse_cap_rupiah: int
) -> int:
    """How much one top-up may bring: cap - (purse + pending top-ups), never below zero, and
    at most what one card transaction carries (`bus_terminals.wire.rupiah_max`).
    `purse_cap_rupiah` is the cap of an unregistered card; a registered card's is its own
    (Rp 20,000,000: `card_desk`)."""
    position = await ledger_port.card_position(connection, card_number)
    if position is None:
        raise SnapError(Cases.invalid_bill, "unknown virtual account")
    if position.blocked:
        raise SnapError(Cases.inactive_account, "card is blocked")
    cap = card_desk.purse_cap_rupiah_registered if position.registered else purse_cap_rupiah
    room = max(0, cap - position.purse_rupiah - position.pending_rupiah)
    # One top-up is one card transaction, which moves at most what a purse holds.
    return min(room, rupiah_max)


def _va_data(body: dict[str, Any], va_number: str, card_name: str) -> dict[str, Any]:
    return {
        "partnerServiceId": body["partnerServiceId"],
        "customerNo": body["customerNo"],
        "virtualAccountNo": va_number,
        "virtualAccountName": card_name,
    }


async def inquire(
    connection: asyncpg.Connection, partner: Partner, body: dict[str, Any], purse_cap_rupiah: int
) -> dict[str, Any]:
    va_number, card_number = read_virtual_account(partner, body)
    inquiry_request_id = require_text(body, "inquiryRequestId", length_max=request_id_length_max)
    requested = parse_amount_value(body["amount"], "amount") if body.get("amount") else None
    allowed = await allowed_rupiah(connection, card_number, purse_cap_rupiah)
    if allowed == 0:
        raise SnapError(Cases.invalid_amount, "card is at the e-money balance cap")
    if requested is not None and requested > allowed:
        raise SnapError(Cases.invalid_amount, f"at most {allowed} rupiah may be topped up")
    shown = requested if requested else allowed
    return {
        "virtualAccountData": {
            **_va_data(body, va_number, await holder_name(connection, card_number)),
            "inquiryRequestId": inquiry_request_id,
            "inquiryStatus": "00",
            "inquiryReason": {"english": "Success", "indonesia": "Sukses"},
            "totalAmount": format_amount(shown),
            "feeAmount": format_amount(top_up_fee_rupiah(partner, shown)),
            # Open amount up to totalAmount: the payer chooses how much to top up.
            "virtualAccountTrxType": "X",
            "additionalInfo": {"maximumAmount": format_amount(allowed)},
        }
    }


async def _booked_payment(
    connection: asyncpg.Connection, partner: Partner, payment_request_id: str
) -> asyncpg.Record | None:
    """The payment already recorded under this partner's paymentRequestId, if any."""
    return await connection.fetchrow(
        "select virtual_account_no, amount_rupiah, response from snap_va_payments"
        " where partner_id = $1 and payment_request_id = $2",
        partner.partner_id,
        payment_request_id,
    )


async def pay(
    connection: asyncpg.Connection,
    partner: Partner,
    body: dict[str, Any],
    purse_cap_rupiah: int,
    paid_at: dt.datetime,
) -> dict[str, Any]:
    va_number, card_number = read_virtual_account(partner, body)
    payment_request_id = require_text(body, "paymentRequestId", length_max=request_id_length_max)
    paid_rupiah = parse_amount_value(body.get("paidAmount"), "paidAmount")
    if paid_rupiah == 0:
        raise SnapError(Cases.invalid_amount, "paidAmount must be positive")
    optional_text(body, "referenceNo", length_max=64)  # checked; the bank's own reference
    payer_account_no = _payer_account(body)

    # Lock first, then look for a repeat: a twin of this request running concurrently has
    # committed by the time we hold the lock, so we answer as it did.
    await connection.execute(
        "select pg_advisory_xact_lock($1, hashtext($2))", card_lock_namespace, card_number
    )
    repeat = await _booked_payment(connection, partner, payment_request_id)
    if repeat is not None:
        return _repeat_answer(repeat, va_number, paid_rupiah)
    allowed = await allowed_rupiah(connection, card_number, purse_cap_rupiah)
    if paid_rupiah > allowed:
        raise SnapError(Cases.invalid_amount, f"at most {allowed} rupiah may be topped up")
    fee_rupiah = top_up_fee_rupiah(partner, paid_rupiah)
    transfer_id = ledger_port.pending_top_up_transfer_id(partner.partner_id, payment_request_id)
    answer = {
        "virtualAccountData": {
            **_va_data(body, va_number, await holder_name(connection, card_number)),
            "paymentRequestId": payment_request_id,
            "paidAmount": format_amount(paid_rupiah),
            "feeAmount": format_amount(fee_rupiah),
            "paymentFlagStatus": "00",
            "paymentFlagReason": {"english": "Success", "indonesia": "Sukses"},
        },
        "additionalInfo": {"topUpId": str(transfer_id)},
    }
    inserted = await connection.fetchval(
        """
        insert into snap_va_payments (partner_id, payment_request_id, virtual_account_no,
            card_number, amount_rupiah, fee_rupiah, transfer_id, response)
        values ($1, $2, $3, $4, $5, $6, $7, $8)
        on conflict do nothing
        returning true
        """,
        partner.partner_id,
        payment_request_id,
        va_number,
        card_number,
        paid_rupiah,
        fee_rupiah,
        transfer_id,
        json.dumps(answer),
    )
    if not inserted:  # a concurrent twin committed first; answer as it did
        repeat = await _booked_payment(connection, partner, payment_request_id)
        assert repeat is not None
        return _repeat_answer(repeat, va_number, paid_rupiah)
    await ledger_port.book_pending_top_up(
        connection,
        partner_id=partner.partner_id,
        bank_code=partner.bank_code,
        payment_request_id=payment_request_id,
        card_number=card_number,
        amount_rupiah=paid_rupiah,
        paid_at=paid_at,
    )
    if payer_account_no:
        await ledger_port.remember_payer(
            connection,
            partner=partner,
            payment_request_id=payment_request_id,
            account_no=payer_account_no,
            name=optional_text(body, "virtualAccountName", length_max=255) or "",
        )
    return answer


def _payer_account(body: dict[str, Any]) -> str:
    """The payer's account number if the bank gave it (`additionalInfo.sourceAccountNo`): an
    expired top-up is paid back there; without it, it is refunded at the counter."""
    info = body.get("additionalInfo")
    if not isinstance(info, dict):
        return ""
    account_no = optional_text(info, "sourceAccountNo", length_max=34) or ""
    if account_no and not (account_no.isascii() and account_no.isdigit()):
        raise SnapError(Cases.invalid_field_format, "additionalInfo.sourceAccountNo")
    return account_no


def _repeat_answer(row: asyncpg.Record, va_number: str, paid_rupiah: int) -> dict[str, Any]:
    if row["virtual_account_no"] != va_number or row["amount_rupiah"] != paid_rupiah:
        raise SnapError(Cases.duplicate_reference, "paymentRequestId was used for another payment")
    answer: dict[str, Any] = json.loads(row["response"])
    return answer
