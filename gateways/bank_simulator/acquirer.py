"""The simulated bank as a QRIS acquirer: it makes dynamic codes for the merchants it acquires
(`qr/qr-mpm-generate`), answers status queries (`qr/qr-mpm-query`), plays the paying app a
rider scans the code with, and settles each day's payments to the issuer in one credit, net of
the MDR (by the merchant's criteria), with the reference the issuer expects
(`gateways.snap.qris.settlement_reference`). Paying and notifying the issuer are `Simulator.pay_qr`'s (it holds
the signed session to the issuer); this module keeps the orders and their rules.

Status codes (SNAP `latestTransactionStatus`): "00" paid, "03" waiting to be paid, "06" failed
(here: the code expired unpaid).
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from typing import Any

from bus_terminals import qris
from gateways.snap import signature
from gateways.snap.codes import Case, Cases, SnapError
from gateways.snap.fields import format_amount, parse_amount_value, require_text
from gateways.snap.qris import mdr_rupiah
from ledger.clock import Clock

validity_seconds_default = 300
invalid_merchant = Case(404, "08", "Invalid Merchant")


@dataclass
class QrOrder:
    reference_no: str  # ours (the acquirer's), written into the code (tag 62.05)
    partner_reference_no: str  # the issuer's order id
    merchant: qris.QrisMerchant
    amount_rupiah: int
    terminal_id: str
    qr_content: str
    expires_at: dt.datetime
    paid_at: dt.datetime | None = None
    settled: bool = False  # paid out to the issuer in a day's QRIS settlement

    def status(self, now: dt.datetime) -> tuple[str, str]:
        if self.paid_at is not None:
            return "00", "SUCCESS"
        if now >= self.expires_at:
            return "06", "EXPIRED"
        return "03", "PENDING"


class QrisRefused(Exception):
    """The paying app could not pay: the reason a rider's phone would show."""


class Acquirer:
    def __init__(self, merchants: tuple[qris.QrisMerchant, ...], clock: Clock) -> None:
        self.merchants = {merchant.merchant_id: merchant for merchant in merchants}
        # A merchant's MDR category when it is not its criteria (UMI, UKE, ...): a public
        # service body (BLU) or a school, as the acquirer agreed with it.
        self.mdr_categories: dict[str, str] = {}
        self.clock = clock
        self.orders: dict[str, QrOrder] = {}  # by reference_no
        self._by_partner_reference: dict[str, QrOrder] = {}
        self._numbers = itertools.count(1)

    def generate(self, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        partner_reference = require_text(body, "partnerReferenceNo", length_max=64)
        amount = parse_amount_value(body.get("amount"), "amount")
        merchant_id = require_text(body, "merchantId", length_max=64)
        terminal_id = str(body.get("terminalId") or "")[:16]
        merchant = self.merchants.get(merchant_id)
        if merchant is None:
            raise SnapError(invalid_merchant, merchant_id)
        if amount <= 0:
            raise SnapError(Cases.invalid_amount, "amount must be positive")
        if partner_reference in self._by_partner_reference:
            raise SnapError(Cases.duplicate_reference)
        now = self.clock.now()
        expires_at = now + dt.timedelta(seconds=validity_seconds_default)
        validity = body.get("validityPeriod")
        if validity is not None:
            moment = signature.parse_timestamp(validity) if isinstance(validity, str) else None
            if moment is None:
                raise SnapError(Cases.invalid_field_format, "validityPeriod")
            expires_at = moment
        reference_no = f"QR{now:%y%m%d}{next(self._numbers):08d}"
        content = qris.write(
            merchant,
            amount_rupiah=amount,
            reference=reference_no,
            terminal_label=terminal_id or None,
        )
        order = QrOrder(
            reference_no, partner_reference, merchant, amount, terminal_id, content, expires_at
        )
        self.orders[reference_no] = order
        self._by_partner_reference[partner_reference] = order
        return Cases.success, {
            "referenceNo": reference_no,
            "partnerReferenceNo": partner_reference,
            "qrContent": content,
            "merchantName": merchant.name,
            "terminalId": terminal_id,
        }

    def query(self, body: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        reference = body.get("originalReferenceNo")
        order = self.orders.get(reference) if isinstance(reference, str) else None
        if order is None:
            partner_reference = require_text(body, "originalPartnerReferenceNo", length_max=64)
            order = self._by_partner_reference.get(partner_reference)
        if order is None:
            raise SnapError(Cases.transaction_not_found)
        status, description = order.status(self.clock.now())
        answer = {
            "originalReferenceNo": order.reference_no,
            "originalPartnerReferenceNo": order.partner_reference_no,
            "serviceCode": "47",
            "latestTransactionStatus": status,
            "transactionStatusDesc": description,
            "amount": format_amount(order.amount_rupiah),
        }
        if order.paid_at is not None:
            answer["paidTime"] = signature.format_timestamp(order.paid_at)
        return Cases.success, answer

    def pay(self, qr_content: str) -> QrOrder:
        """A paying app scanned `qr_content` and the payer confirmed: the order is paid."""
        try:
            payment = qris.read(qr_content)
        except qris.QrisError as error:
            raise QrisRefused(f"not a valid QRIS code: {error}") from error
        order = self.orders.get(payment.reference or "")
        if order is None or order.qr_content != qr_content:
            raise QrisRefused("this acquirer made no such code")
        now = self.clock.now()
        status, description = order.status(now)
        if status != "03":
            raise QrisRefused(f"the code cannot be paid: {description.lower()}")
        order.paid_at = now
        return order

    def net_rupiah(self, order: QrOrder) -> int:
        """What the acquirer pays out for an order: the amount less its MDR."""
        merchant = order.merchant
        category = self.mdr_categories.get(merchant.merchant_id, merchant.criteria)
        return order.amount_rupiah - mdr_rupiah(category, order.amount_rupiah)

    def notification(self, order: QrOrder, *, amount_rupiah: int | None = None) -> dict[str, Any]:
        """The body of the notification to the issuer (`amount_rupiah`: trouble, another one)."""
        assert order.paid_at is not None
        return {
            "originalReferenceNo": order.reference_no,
            "originalPartnerReferenceNo": order.partner_reference_no,
            "latestTransactionStatus": "00",
            "transactionStatusDesc": "SUCCESS",
            "amount": format_amount(
                order.amount_rupiah if amount_rupiah is None else amount_rupiah
            ),
            "additionalInfo": {
                "nmid": order.merchant.nmid,
                "terminalId": order.terminal_id,
                "transactionDate": signature.format_timestamp(order.paid_at),
            },
        }


def unsettled_on(orders: list[QrOrder], day: dt.date) -> list[QrOrder]:
    """The orders paid on `day` (Jakarta) and not yet settled."""
    return [
        order
        for order in orders
        if order.paid_at is not None
        and not order.settled
        and order.paid_at.astimezone(signature.jakarta_timezone).date() == day
    ]
