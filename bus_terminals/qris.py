"""QRIS payloads (Bank Indonesia's national QR, EMVCo merchant-presented mode): read and written
through `qriskit`, seen here as what our books need.

`qriskit` (MIT, no dependencies) owns the EMVCo tag-length-value format, the tag rules and the
CRC-16/CCITT-FALSE; this module adds our own rules on top and turns every problem into one
`QrisError` that names the tag:

- money is whole rupiah: an amount with sen (`15000.50`) is refused, not rounded;
- a convenience fee (tip indicator 02 or 03, tags 56/57) is a surcharge, which Bank Indonesia
  forbids (PBI 23/6/PBI/2021): we never write one, and a payload that carries one says so
  (`surcharge`), so the back office can refuse to book it;
- a merchant account template (26–45) names its acquirer by the first 8 digits of the merchant
  PAN (the NNS); the national repository (tag 51) carries the NMID.

One module both sides import (the bank simulator as acquirer, the back office, the POS that shows
the code): it imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import qriskit
from qriskit import spec
from qriskit.crc import crc16

national_guid = spec.NATIONAL_GUID
merchant_criteria = ("UMI", "UKE", "UME", "UBE")  # micro, small, medium, large
payload_length_max = 512  # EMVCo: a merchant-presented payload is at most 512 characters
nns_length = 8
surcharge_tips = (spec.TIP_FIXED, spec.TIP_PERCENT)
# The tag an error belongs to when the problem is the payload as a whole.
whole_payload = "payload"


class QrisError(ValueError):
    """A payload we refuse, with the tag (e.g. "53", "26.01") the problem is in."""

    def __init__(self, tag: str, message: str) -> None:
        self.tag = tag
        super().__init__(f"QRIS tag {tag}: {message}" if tag != whole_payload else message)


@dataclass(frozen=True, slots=True)
class QrisMerchant:
    """A merchant as its acquirer registered it for QRIS: what a code says about who is paid."""

    name: str  # tag 59, at most 25 characters
    city: str  # tag 60, at most 15
    mcc: str  # tag 52, ISO 18245 merchant category code
    nmid: str  # tag 51.02, "ID" and 13 digits
    criteria: str  # UMI, UKE, UME or UBE (tag 51.03 and 26.03)
    acquirer_guid: str  # tag 26.00, the acquirer's reverse domain, e.g. "ID.CO.BANKJATENG.WWW"
    merchant_pan: str  # tag 26.01: the acquirer's NNS (8 digits), then the merchant's number
    merchant_id: str  # tag 26.02, the acquirer's merchant id
    postal_code: str | None = None  # tag 61

    @property
    def nns(self) -> str:
        return self.merchant_pan[:nns_length]


@dataclass(frozen=True, slots=True)
class QrisPayment:
    """What a payload asks for: who is paid, how much (a dynamic code) and the reference."""

    merchant: QrisMerchant
    dynamic: bool
    amount_rupiah: int | None  # None: a static code, the payer types the amount
    reference: str | None  # tag 62.05, the acquirer's reference label for a dynamic code
    terminal_label: str | None  # tag 62.07, the terminal (POS, bus validator) that showed it
    bill_number: str | None  # tag 62.01
    surcharge: bool  # a convenience fee is asked for (forbidden; never booked)


def crc(text: str) -> str:
    """CRC-16/CCITT-FALSE as QRIS writes it (four upper-case hex digits)."""
    return crc16(text)


def read(payload: str) -> QrisPayment:
    """The payment a payload describes; `QrisError` naming the tag for anything we refuse."""
    if not isinstance(payload, str) or not payload:
        raise QrisError(whole_payload, "empty QRIS payload")
    if len(payload) > payload_length_max:
        raise QrisError(
            whole_payload,
            f"QRIS payload is {len(payload)} characters (at most {payload_length_max})",
        )
    try:
        code = qriskit.parse(payload, strict=True)
    except qriskit.QRISValidationError as error:
        first = next(issue for issue in error.issues if issue.severity == "error")
        raise QrisError(first.path or whole_payload, first.message) from error
    except qriskit.QRISParseError as error:
        raise QrisError(_tag_at(payload, error.position), str(error)) from error
    return QrisPayment(
        merchant=_merchant_of(code),
        dynamic=code.is_dynamic,
        amount_rupiah=_whole_rupiah(code.amount, code.get(spec.TAG_AMOUNT)),
        reference=code.additional_data.reference_label,
        terminal_label=code.additional_data.terminal_label,
        bill_number=code.additional_data.bill_number,
        surcharge=code.get(spec.TAG_TIP) in surcharge_tips,
    )


def write(
    merchant: QrisMerchant,
    *,
    amount_rupiah: int | None = None,
    reference: str | None = None,
    terminal_label: str | None = None,
    bill_number: str | None = None,
) -> str:
    """A static code (no amount) or a dynamic one for one payment; never with a surcharge."""
    if amount_rupiah is not None and (
        isinstance(amount_rupiah, bool) or not isinstance(amount_rupiah, int) or amount_rupiah <= 0
    ):
        raise QrisError(
            spec.TAG_AMOUNT, f"amount must be a positive whole rupiah, got {amount_rupiah!r}"
        )
    additional = {
        sub: value
        for sub, value in (("01", bill_number), ("05", reference), ("07", terminal_label))
        if value is not None
    }
    try:
        code = qriskit.build(
            merchant_name=merchant.name,
            merchant_city=merchant.city,
            mcc=merchant.mcc,
            postal_code=merchant.postal_code,
            amount=amount_rupiah,
            additional_data=additional or None,
            accounts=[
                qriskit.MerchantAccount.create(
                    tag="26",
                    guid=merchant.acquirer_guid,
                    pan=merchant.merchant_pan,
                    merchant_id=merchant.merchant_id,
                    criteria=merchant.criteria,
                ),
                qriskit.MerchantAccount.national(nmid=merchant.nmid, criteria=merchant.criteria),
            ],
        )
    except qriskit.QRISValidationError as error:
        first = error.issues[0]
        raise QrisError(first.path or whole_payload, first.message) from error
    except ValueError as error:  # qriskit's own argument checks (lengths of our fields)
        raise QrisError(whole_payload, str(error)) from error
    payload = code.dumps()
    read(payload)  # our own rules too: what we write, we would read
    return payload


def _merchant_of(code: qriskit.QRIS) -> QrisMerchant:
    national = code.national
    if national is None or national.guid != national_guid or not national.merchant_id:
        raise QrisError(
            spec.TAG_NATIONAL, f"no national repository account ({national_guid} with an NMID)"
        )
    accounts = [account for account in code.merchant_accounts if "26" <= account.tag <= "45"]
    if not accounts:
        raise QrisError("26", "no acquirer's merchant account (tags 26–45)")
    account = accounts[0]
    pan = account.pan or ""
    if len(pan) < nns_length or not pan.isdigit():
        raise QrisError(
            f"{account.tag}.01", f"merchant PAN {pan!r} does not start with an 8-digit NNS"
        )
    criteria = national.criteria or account.criteria or ""
    if criteria not in merchant_criteria:
        raise QrisError(
            f"{spec.TAG_NATIONAL}.03",
            f"merchant criteria {criteria!r} is not one of {', '.join(merchant_criteria)}",
        )
    return QrisMerchant(
        name=code.merchant_name or "",
        city=code.merchant_city or "",
        mcc=code.mcc or "",
        nmid=national.merchant_id,
        criteria=criteria,
        acquirer_guid=account.guid or "",
        merchant_pan=pan,
        merchant_id=account.merchant_id or "",
        postal_code=code.postal_code,
    )


def _whole_rupiah(amount: Decimal | None, written: str | None) -> int | None:
    if amount is None:
        return None
    if amount != amount.to_integral_value():
        raise QrisError(spec.TAG_AMOUNT, f"amount {written} has sen; rupiah are whole here")
    return int(amount)


def _tag_at(payload: str, position: int | None) -> str:
    """The top-level tag whose element holds `position` (for qriskit's structural errors)."""
    if position is None:
        return whole_payload
    cursor = 0
    while cursor + 4 <= len(payload):
        tag, length = payload[cursor : cursor + 2], payload[cursor + 2 : cursor + 4]
        if not length.isdigit():
            return tag
        end = cursor + 4 + int(length)
        if position < end or end >= len(payload):
            return tag
        cursor = end
    return payload[cursor : cursor + 2] or whole_payload
