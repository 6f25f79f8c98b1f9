"""How staff read numbers and times, per language (Babel's locale data): Indonesian by default,
`Rp 1.500.000` and `23 Agu 2026 09:00`; in English `Rp 1,500,000` and `23 Aug 2026 09:00`."""

from __future__ import annotations

import datetime as dt
import zoneinfo

from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal

default_language = "id"
jakarta = zoneinfo.ZoneInfo("Asia/Jakarta")  # the same zone as settlement.end_of_day's


def grouped(number: int, language: str = default_language) -> str:
    return format_decimal(number, format="#,##0", locale=language)


def rupiah(amount: int, language: str = default_language) -> str:
    """Whole rupiah with the symbol before (as banks print it), in both languages."""
    return f"Rp {grouped(amount, language)}"


def day(value: dt.date, language: str = default_language) -> str:
    return format_date(value, format="d MMM y", locale=language)


def moment(value: dt.datetime, language: str = default_language, seconds: bool = False) -> str:
    """A moment as a clock in Semarang shows it (WIB)."""
    pattern = "d MMM y HH:mm:ss" if seconds else "d MMM y HH:mm"
    return format_datetime(value, format=pattern, tzinfo=jakarta, locale=language)


def from_epoch_ms(time_ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(time_ms / 1000, jakarta)
