"""QRIS sales through an acquiring bank over SNAP BI: we ask it for a dynamic code for a sale
(`qr/qr-mpm-generate`, service 47), it tells us when a paying app paid (`qr/qr-mpm-notify`, 52,
the bank calls us) and we can ask (`qr/qr-mpm-query`, 51) when a notification is late or lost.

Books. A payment is booked once, when the acquirer confirms it (by notification or by query,
whichever comes first; the transfer ids are derived from the order, so the second finds the
first): the acquirer's QRIS clearing account → the merchant's payable for the whole amount,
linked with the MDR back from the merchant's payable to the clearing account (the acquirer
keeps it when it settles to us). The merchant's payable is the one its card sales go to, so end
of day pays card and QRIS together. The MDR is data (`mdr_rates`, Bank Indonesia's rates by
merchant category); the customer is never surcharged (`bus_terminals.qris` never writes a fee).

Trust. The POS names only the amount: the merchant is the one its terminal is registered to,
and the acquirer's code is read back (`bus_terminals.qris.read`) and must name that merchant's
NMID-bearing account and that amount before anyone is shown it. A notification must match an
open order of the same acquirer and the same amount; anything else is refused and recorded in
`qris_notifications`, never booked.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from bus_terminals import qris as payload
from gateways.snap import signature
from gateways.snap.client import BankUnreachable, SnapSession
from gateways.snap.codes import Cases, Service, SnapError
from gateways.snap.fields import format_amount, parse_amount_value, require_text
from gateways.terminal_api import books
from gateways.terminal_api.accounts import merchant_payable_account_id, operator_revenue_account_id
from ledger.records import (
    Account,
    AccountKind,
    Transfer,
    TransferCode,
    TransferFlags,
    booked_results,
    derive_id,
)

validity_seconds_default = 300  # how long a dynamic code may be paid (the POS shows it)
# A sale's bound: far above a fare or a stall's sale, it keeps a mistyped amount (an extra
# zero or three) from becoming a code a rider's app would pay.
sale_rupiah_max = 10_000_000
order_id_length_max = 64  # partnerReferenceNo


@dataclass(frozen=True, slots=True)
class MdrRate:
    basis_points: int
    free_up_to_rupiah: int = 0  # a payment up to this amount pays no MDR


# Bank Indonesia's QRIS MDR since 1 July 2023 (shared/reference/indonesia.md §2.6): micro
# merchants 0.3 % and nothing up to Rp 100.000; regular 0.7 %; education 0.6 %; public service
# bodies (BLU, such as Trans Semarang) and fuel 0.4 %; government and donations 0 %.
mdr_rates: dict[str, MdrRate] = {
    "UMI": MdrRate(30, free_up_to_rupiah=100_000),
    "UKE": MdrRate(70),
    "UME": MdrRate(70),
    "UBE": MdrRate(70),
    "education": MdrRate(60),
    "BLU": MdrRate(40),
    "government": MdrRate(0),
}


def mdr_rupiah(category: str, amount_rupiah: int) -> int:
    """The MDR on one payment, in whole rupiah, rounded half up."""
    rate = mdr_rates[category]
    if amount_rupiah <= rate.free_up_to_rupiah:
        return 0
    return (amount_rupiah * rate.basis_points + 5_000) // 10_000


class OrderState(enum.StrEnum):
    open = "open"
    paid = "paid"
    expired = "expired"


class PayeeKind(enum.StrEnum):
    merchant = "merchant"  # a POS sale: its payable, paid at end of day with its card sales
    operator = "operator"  # a bus ride sold by QR: the operator's fare revenue


@dataclass(frozen=True, slots=True)
class Payee:
    """Who a QRIS payment is for: a merchant (POS sales) or the bus operator (QR rides)."""

    kind: PayeeKind
    party_id: str

    @property
    def account_id(self) -> uuid.UUID:
        if self.kind is PayeeKind.merchant:
            return merchant_payable_account_id(self.party_id)
        return operator_revenue_account_id(self.party_id)


@dataclass(frozen=True, slots=True)
class QrisOrder:
    order_id: str
    payee: Payee
    terminal_id: str
    detail: str
    amount_rupiah: int
    partner_id: str
    reference_no: str
    qr_content: str
    created_at: dt.datetime
    expires_at: dt.datetime
    state: OrderState
    paid_at: dt.datetime | None
    mdr_rupiah: int | None

    def as_json(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            self.payee.kind.value: self.payee.party_id,
            "amount": self.amount_rupiah,
            "qr_content": self.qr_content,
            "expires_at": self.expires_at.isoformat(),
            "state": self.state.value,
            "paid_at": self.paid_at.isoformat() if self.paid_at else None,
        }


class QrisError(Exception):
    """A QRIS sale we cannot start or finish: a stable code and a sentence."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def settlement_reference(day: dt.date) -> str:
    """The reference of an acquirer's settlement of `day`'s QRIS payments (one credit)."""
    return f"QRIS{day:%Y%m%d}"


def clearing_account_id(partner_id: str) -> uuid.UUID:
    """The acquirer's QRIS clearing: what it owes us for payments it confirmed."""
    return derive_id("bank-clearing", f"qris:{partner_id}")


def payment_transfer_id(order_id: str) -> uuid.UUID:
    return derive_id("qris-payment", order_id)


def mdr_transfer_id(order_id: str) -> uuid.UUID:
    return derive_id("qris-mdr", order_id)


async def register_payee(
    connection: asyncpg.Connection,
    payee: Payee,
    *,
    partner_id: str,
    acquirer_merchant_id: str,
    mdr_category: str,
) -> None:
    """Say which acquirer takes QRIS for a registered merchant or operator, and in which MDR
    category; again for the same payee changes them."""
    if mdr_category not in mdr_rates:
        raise QrisError("bad_category", f"MDR category is one of {', '.join(mdr_rates)}")
    table, column = (
        ("merchants", "merchant_id")
        if payee.kind is PayeeKind.merchant
        else ("operators", "operator_id")
    )
    known = await connection.fetchval(
        f"select exists (select 1 from {table} where {column} = $1)", payee.party_id
    )
    if not known:
        raise QrisError(
            f"unknown_{payee.kind.value}", f"{payee.kind.value} {payee.party_id} is not registered"
        )
    taken = await connection.fetchrow(
        "select party_kind, party_id from qris_payees where partner_id = $1 "
        "and acquirer_merchant_id = $2 and (party_kind, party_id) <> ($3, $4)",
        partner_id,
        acquirer_merchant_id,
        payee.kind.value,
        payee.party_id,
    )
    if taken is not None:
        raise QrisError(
            "acquirer_id_taken",
            f"{acquirer_merchant_id} at {partner_id} is {taken['party_kind']} "
            f"{taken['party_id']}'s",
        )
    await connection.execute(
        """
        insert into qris_payees
            (party_kind, party_id, partner_id, acquirer_merchant_id, mdr_category)
        values ($1, $2, $3, $4, $5)
        on conflict (party_kind, party_id) do update set partner_id = excluded.partner_id,
            acquirer_merchant_id = excluded.acquirer_merchant_id,
            mdr_category = excluded.mdr_category
        """,
        payee.kind.value,
        payee.party_id,
        partner_id,
        acquirer_merchant_id,
        mdr_category,
    )


async def payee_acquirer(connection: asyncpg.Connection, payee: Payee) -> str | None:
    """The SNAP partner that acquires QRIS for `payee`; None when it takes no QRIS."""
    partner_id: str | None = await connection.fetchval(
        "select partner_id from qris_payees where party_kind = $1 and party_id = $2",
        payee.kind.value,
        payee.party_id,
    )
    return partner_id


_order_columns = (
    "order_id, party_kind, party_id, terminal_id, detail, amount_rupiah, partner_id, "
    "reference_no, qr_content, created_at, expires_at, state, paid_at, mdr_rupiah"
)


def _order(row: asyncpg.Record) -> QrisOrder:
    values = dict(row)
    payee = Payee(PayeeKind(values.pop("party_kind")), values.pop("party_id"))
    return QrisOrder(**{**values, "payee": payee, "state": OrderState(row["state"])})


async def order(connection: asyncpg.Connection, order_id: str) -> QrisOrder | None:
    row = await connection.fetchrow(
        f"select {_order_columns} from qris_orders where order_id = $1", order_id
    )
    return _order(row) if row else None


async def create_order(
    connection: asyncpg.Connection,
    session: SnapSession,
    *,
    order_id: str,
    payee: Payee,
    terminal_id: str,
    amount_rupiah: int,
    now: dt.datetime,
    detail: str = "",
    validity_seconds: int = validity_seconds_default,
) -> QrisOrder:
    """Ask the payee's acquirer for a dynamic code for one sale. The same `order_id` again
    returns the order already made (a terminal that lost our answer asks again)."""
    existing = await order(connection, order_id)
    if existing is not None:
        if (existing.payee, existing.amount_rupiah) != (payee, amount_rupiah):
            raise QrisError("order_conflict", f"order {order_id} exists with another sale")
        return existing
    if not 0 < amount_rupiah <= sale_rupiah_max:
        raise QrisError("bad_amount", f"amount is 1..{sale_rupiah_max} rupiah")
    if not order_id or len(order_id) > order_id_length_max:
        raise QrisError("bad_order_id", f"order id is 1..{order_id_length_max} characters")
    acquiring = await connection.fetchrow(
        "select partner_id, acquirer_merchant_id from qris_payees "
        "where party_kind = $1 and party_id = $2",
        payee.kind.value,
        payee.party_id,
    )
    if acquiring is None:
        raise QrisError("no_acquirer", f"{payee.kind.value} {payee.party_id} takes no QRIS")
    expires_at = now + dt.timedelta(seconds=validity_seconds)
    try:
        answer = await session.post(
            "/v1.0/qr/qr-mpm-generate",
            {
                "partnerReferenceNo": order_id,
                "amount": format_amount(amount_rupiah),
                "merchantId": acquiring["acquirer_merchant_id"],
                "terminalId": terminal_id,
                "validityPeriod": signature.format_timestamp(expires_at),
            },
        )
    except BankUnreachable as error:
        raise QrisError("acquirer_unreachable", str(error)) from error
    if answer.http_status != 200:
        raise QrisError("acquirer_refused", f"{answer.response_code} {answer.response_message}")
    qr_content, reference_no = _checked_code(answer.body, amount_rupiah)
    row = await connection.fetchrow(
        f"""
        insert into qris_orders (order_id, party_kind, party_id, terminal_id, detail,
            amount_rupiah, partner_id, reference_no, qr_content, created_at, expires_at, state)
        values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'open')
        returning {_order_columns}
        """,
        order_id,
        payee.kind.value,
        payee.party_id,
        terminal_id,
        detail[:64],
        amount_rupiah,
        acquiring["partner_id"],
        reference_no,
        qr_content,
        now,
        expires_at,
    )
    return _order(row)


def _checked_code(body: dict[str, Any], amount_rupiah: int) -> tuple[str, str]:
    """The acquirer's code, read back: it must be a dynamic code for exactly this amount."""
    qr_content = body.get("qrContent")
    reference_no = body.get("referenceNo")
    if not isinstance(qr_content, str) or not isinstance(reference_no, str) or not reference_no:
        raise QrisError("acquirer_answer", "the acquirer's answer has no qrContent/referenceNo")
    try:
        payment = payload.read(qr_content)
    except payload.QrisError as error:
        raise QrisError(
            "acquirer_code", f"the acquirer's code is not valid QRIS: {error}"
        ) from error
    if not payment.dynamic or payment.amount_rupiah != amount_rupiah or payment.surcharge:
        raise QrisError("acquirer_code", "the acquirer's code is not for this amount")
    return qr_content, reference_no


async def _book_payment(
    connection: asyncpg.Connection, sale: QrisOrder, *, paid_at: dt.datetime, via: str
) -> QrisOrder:
    """Acquirer clearing → the payee's account, and the MDR back (linked); the order is paid."""
    category = await connection.fetchval(
        "select mdr_category from qris_payees where party_kind = $1 and party_id = $2",
        sale.payee.kind.value,
        sale.payee.party_id,
    )
    mdr = mdr_rupiah(category, sale.amount_rupiah)
    clearing = clearing_account_id(sale.partner_id)
    payable = sale.payee.account_id
    await books.ensure_accounts(
        connection, [Account(clearing, AccountKind.bank_clearing, f"qris:{sale.partner_id}")]
    )
    reference = sale.reference_no[:64]
    transfers = [
        Transfer(
            payment_transfer_id(sale.order_id),
            clearing,
            payable,
            sale.amount_rupiah,
            TransferCode.qris_payment,
            flags=TransferFlags.linked if mdr else TransferFlags.none,
            terminal_id=sale.terminal_id,
            bank_reference=reference,
        )
    ]
    if mdr:
        transfers.append(
            Transfer(
                mdr_transfer_id(sale.order_id),
                payable,
                clearing,
                mdr,
                TransferCode.qris_mdr,
                terminal_id=sale.terminal_id,
                bank_reference=reference,
            )
        )
    outcomes = await books.create_transfers(connection, transfers, now=paid_at)
    assert all(outcome.result in booked_results for outcome in outcomes), outcomes
    row = await connection.fetchrow(
        f"""
        update qris_orders set state = 'paid', paid_at = $2, paid_via = $3, mdr_rupiah = $4
        where order_id = $1 and state <> 'paid'
        returning {_order_columns}
        """,
        sale.order_id,
        paid_at,
        via,
        mdr,
    )
    assert row is not None, "booked a payment for an order already paid"
    return _order(row)


async def notified(
    connection: asyncpg.Connection, partner_id: str, body: dict[str, Any], now: dt.datetime
) -> dict[str, Any]:
    """The acquirer says an order was paid: book it once, or refuse (SnapError) naming why."""
    order_id = require_text(body, "originalPartnerReferenceNo", length_max=order_id_length_max)
    reference_no = require_text(body, "originalReferenceNo", length_max=64)
    status = require_text(body, "latestTransactionStatus", length_max=2)
    amount = parse_amount_value(body.get("amount"), "amount")
    row = await connection.fetchrow(
        f"select {_order_columns} from qris_orders where order_id = $1 for update", order_id
    )
    sale = _order(row) if row else None
    if sale is None or sale.partner_id != partner_id or sale.reference_no != reference_no:
        raise SnapError(Cases.transaction_not_found, "no such QRIS order")
    if status != "00":  # the acquirer says it was not paid: acknowledged, nothing booked
        return {"originalPartnerReferenceNo": order_id, "originalReferenceNo": reference_no}
    if sale.state is OrderState.paid:
        raise SnapError(Cases.paid_bill, "the order is already paid")
    if amount != sale.amount_rupiah:
        raise SnapError(Cases.invalid_amount, f"the order is for {sale.amount_rupiah}")
    await _book_payment(connection, sale, paid_at=now, via="notify")
    return {"originalPartnerReferenceNo": order_id, "originalReferenceNo": reference_no}


async def record_notification(
    connection: asyncpg.Connection,
    partner_id: str,
    external_id: str,
    body: dict[str, Any],
    now: dt.datetime,
    outcome: str,
) -> None:
    amount = body.get("amount")
    value = amount.get("value") if isinstance(amount, dict) else None
    await connection.execute(
        """
        insert into qris_notifications (received_at, partner_id, external_id,
            original_partner_reference_no, original_reference_no, amount_rupiah, outcome)
        values ($1, $2, $3, $4, $5, $6, $7)
        """,
        now,
        partner_id,
        external_id,
        _text_or_none(body.get("originalPartnerReferenceNo")),
        _text_or_none(body.get("originalReferenceNo")),
        _whole_or_none(value),
        outcome[:200],
    )


def _text_or_none(value: Any) -> str | None:
    return value[:64] if isinstance(value, str) else None


def _whole_or_none(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    whole, _, cents = value.partition(".")
    return int(whole) if whole.isdigit() and len(whole) < 16 and cents.strip("0") == "" else None


async def check_order(
    connection: asyncpg.Connection, session: SnapSession, order_id: str, *, now: dt.datetime
) -> QrisOrder:
    """Where an open order stands: ask the acquirer (a notification may be late or lost) and
    book what it confirms; an order past its validity that the acquirer did not see paid is
    expired."""
    sale = await order(connection, order_id)
    if sale is None:
        raise QrisError("unknown_order", f"no QRIS order {order_id}")
    if sale.state is not OrderState.open:
        return sale
    try:
        answer = await session.post(
            "/v1.0/qr/qr-mpm-query",
            {
                "originalPartnerReferenceNo": sale.order_id,
                "originalReferenceNo": sale.reference_no,
                "serviceCode": f"{Service.qr_mpm_generate.value:02d}",
            },
        )
    except BankUnreachable:
        return sale  # still open; ask again later
    status = answer.body.get("latestTransactionStatus") if answer.http_status == 200 else None
    async with connection.transaction():
        row = await connection.fetchrow(
            f"select {_order_columns} from qris_orders where order_id = $1 for update", order_id
        )
        sale = _order(row)
        if sale.state is not OrderState.open:
            return sale  # a notification came in meanwhile
        if status == "00":
            paid_amount = parse_amount_value(answer.body.get("amount"), "amount")
            if paid_amount != sale.amount_rupiah:
                raise QrisError("acquirer_amount", "the acquirer reports another amount")
            return await _book_payment(connection, sale, paid_at=now, via="query")
        if now >= sale.expires_at and status in ("05", "06", "07", None):
            row = await connection.fetchrow(
                f"update qris_orders set state = 'expired' where order_id = $1 "
                f"returning {_order_columns}",
                order_id,
            )
            return _order(row)
    return sale
