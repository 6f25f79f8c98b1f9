"""Reading SNAP request bodies: each field checked by name, so an error says which one.

Amounts travel as ``{"value": "10000.00", "currency": "IDR"}``; inside the engine they are
whole rupiah (`int`). A value with non-zero cents is refused: rupiah has no cents in practice
and the ledger books whole rupiah.
"""

from __future__ import annotations

import re
from typing import Any

from gateways.snap.codes import Cases, SnapError

amount_pattern = re.compile(r"^(0|[1-9][0-9]{0,15})\.([0-9]{2})$")
amount_rupiah_max = 10**15  # far above any real transfer; keeps values inside bigint
digits_pattern = re.compile(r"^[0-9]+$")


def format_amount(rupiah: int) -> dict[str, str]:
    assert isinstance(rupiah, int)
    assert rupiah >= 0
    return {"value": f"{rupiah}.00", "currency": "IDR"}


def require_object(value: Any, name: str) -> dict[str, Any]:
    if value is None:
        raise SnapError(Cases.invalid_mandatory_field, name)
    if not isinstance(value, dict):
        raise SnapError(Cases.invalid_field_format, name)
    return value


def require_text(
    body: dict[str, Any],
    name: str,
    *,
    length_max: int,
    length_min: int = 1,
    digits: bool = False,
    prefix: str = "",
) -> str:
    value = body.get(name)
    field = f"{prefix}{name}"
    if value is None or value == "":
        raise SnapError(Cases.invalid_mandatory_field, field)
    if not isinstance(value, str):
        raise SnapError(Cases.invalid_field_format, field)
    if not length_min <= len(value) <= length_max:
        raise SnapError(Cases.invalid_field_format, field)
    if digits and not digits_pattern.match(value):
        raise SnapError(Cases.invalid_field_format, field)
    return value


def optional_text(body: dict[str, Any], name: str, *, length_max: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > length_max:
        raise SnapError(Cases.invalid_field_format, name)
    return value


def parse_amount_value(value: Any, name: str) -> int:
    """Whole rupiah from an amount object; SnapError naming `name` when it is not one."""
    amount = require_object(value, name)
    text = amount.get("value")
    currency = amount.get("currency")
    if text is None or text == "":
        raise SnapError(Cases.invalid_mandatory_field, f"{name}.value")
    if currency is None or currency == "":
        raise SnapError(Cases.invalid_mandatory_field, f"{name}.currency")
    if currency != "IDR":
        raise SnapError(Cases.invalid_field_format, f"{name}.currency")
    match = amount_pattern.match(text) if isinstance(text, str) else None
    if match is None or match.group(2) != "00":
        raise SnapError(Cases.invalid_field_format, f"{name}.value")
    rupiah = int(match.group(1))
    if rupiah > amount_rupiah_max:
        raise SnapError(Cases.invalid_field_format, f"{name}.value")
    return rupiah


def parse_amount_text(value: Any) -> int | None:
    """Whole rupiah from an amount object we received as a client; None when malformed."""
    try:
        return parse_amount_value(value, "amount")
    except SnapError:
        return None
