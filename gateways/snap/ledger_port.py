"""What the SNAP top-up endpoints need to know of cards and the ledger, in one place.

Cards, their ledger accounts and the list of pending top-ups that terminals download belong
to the terminal side's registry (`gateways.terminal_api.registry`): a card is known when it
was issued there (row in `cards`), blocked when it is on the deny list, and its accounts have
ids derived from the card number. A VA payment becomes a pending top-up there, booked bank
clearing -> the card's pending top-up account and announced to the terminals.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass

import asyncpg

from bus_terminals.wire import reference_check
from gateways.snap.partners import Partner
from gateways.terminal_api import card_desk, registry
from ledger.store import lookup_accounts


def top_up_id(partner_id: str, payment_request_id: str) -> str:
    """The pending top-up's id: the same for every repeat of the bank's paymentRequestId.

    Terminals carry it on the card's record (`bus_terminals.wire.reference_check`: at most
    64 printable characters), so a longer or unprintable one (paymentRequestId may be 128
    characters) is replaced by a digest of the two: otherwise the money would be booked but
    no terminal could ever deliver it to the card."""
    readable = f"snap:{partner_id}:{payment_request_id}"
    if reference_check(readable) is None:
        return readable
    digest = hashlib.sha256(f"{partner_id}\x00{payment_request_id}".encode()).hexdigest()
    return f"snap:sha256:{digest[:48]}"


def pending_top_up_transfer_id(partner_id: str, payment_request_id: str) -> uuid.UUID:
    """The ledger transfer id of a VA payment (derived from partner and paymentRequestId)."""
    return registry.pending_top_up_transfer_id(top_up_id(partner_id, payment_request_id))


@dataclass(frozen=True, slots=True)
class CardPosition:
    purse_rupiah: int  # the card purse account's balance (the card's value as we know it)
    pending_rupiah: int  # paid at a bank, not yet written to the card
    blocked: bool
    registered: bool  # to a person: Bank Indonesia's higher cap applies


async def card_position(connection: asyncpg.Connection, card_number: str) -> CardPosition | None:
    """None when no card with this number was issued."""
    known = await connection.fetchval(
        "select exists (select 1 from cards where card_number = $1)", card_number
    )
    if not known:
        return None
    blocked = await connection.fetchval(
        "select exists (select 1 from deny_list where card_number = $1)", card_number
    )
    purse_id = registry.purse_account_id(card_number)
    pending_id = registry.pending_top_up_account_id(card_number)
    found = await lookup_accounts(connection, [purse_id, pending_id])
    purse = found.get(purse_id)
    pending = found.get(pending_id)
    return CardPosition(
        purse_rupiah=purse.balances.credit_balance if purse else 0,
        pending_rupiah=pending.balances.credit_balance if pending else 0,
        blocked=bool(blocked),
        registered=await card_desk.holder_of(connection, card_number) is not None,
    )


def clearing_owner(partner_id: str, bank_code: str) -> str:
    """Bank clearing accounts are named by the BI bank code (partner id when there is none)."""
    return bank_code or partner_id


async def book_pending_top_up(
    connection: asyncpg.Connection,
    *,
    partner_id: str,
    bank_code: str,
    payment_request_id: str,
    card_number: str,
    amount_rupiah: int,
    paid_at: dt.datetime,
) -> None:
    """Bank clearing -> the card's pending top-up account, announced to the terminals."""
    await registry.pay_pending_top_up(
        connection,
        top_up_id(partner_id, payment_request_id),
        card_number,
        amount_rupiah,
        paid_at=paid_at,
        bank_code=clearing_owner(partner_id, bank_code),
    )


async def remember_payer(
    connection: asyncpg.Connection,
    *,
    partner: Partner,
    payment_request_id: str,
    account_no: str,
    name: str,
) -> None:
    """Where the top-up's money goes back if no card takes it (`settlement.top_up_refunds`)."""
    await connection.execute(
        "insert into top_up_payers (top_up_id, partner_id, bank_code, account_no, name) "
        "values ($1, $2, $3, $4, $5) on conflict (top_up_id) do nothing",
        top_up_id(partner.partner_id, payment_request_id),
        partner.partner_id,
        partner.bank_code,
        account_no,
        name,
    )
