"""A bank account's day as a statement: MT940 (decimal comma, `:61:` and `:86:` lines, as
Indonesian banks deliver it) and CSV (the layout `settlement.statements.CsvImporter` reads).
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
from dataclasses import dataclass

mt940_reference_length_max = 16  # :61: customer reference and bank reference
mt940_narrative_length_max = 65  # one :86: line


class Direction(enum.StrEnum):
    credit = "C"  # money into the account
    debit = "D"  # money out of the account


@dataclass(frozen=True, slots=True)
class BankLine:
    """One movement on an account, as the bank records it."""

    value_date: dt.date
    direction: Direction
    amount_rupiah: int
    reference: str  # the customer's reference: partnerReferenceNo, paymentRequestId
    bank_reference: str
    type_code: str  # NTRF transfer, NCHG charge
    description: str

    def __post_init__(self) -> None:
        assert self.amount_rupiah > 0
        assert len(self.type_code) == 4

    @property
    def signed_rupiah(self) -> int:
        return self.amount_rupiah if self.direction is Direction.credit else -self.amount_rupiah


@dataclass(frozen=True, slots=True)
class Statement:
    account_no: str
    day: dt.date
    number: int  # statement sequence of the account (MT940 :28C:)
    opening_rupiah: int
    lines: tuple[BankLine, ...]

    @property
    def closing_rupiah(self) -> int:
        return self.opening_rupiah + sum(line.signed_rupiah for line in self.lines)


def _money(rupiah: int) -> str:
    return f"{abs(rupiah)},00"


def _mark(rupiah: int) -> str:
    return "C" if rupiah >= 0 else "D"


def _mt940_text(text: str, length_max: int) -> str:
    """SWIFT's character set is narrow: keep letters, digits and a few marks."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789/-?:().,'+ ")
    return "".join(c if c in allowed else " " for c in text)[:length_max]


def write_mt940(statement: Statement) -> str:
    day = statement.day
    out = [
        f":20:{_mt940_text(f'STMT{day:%Y%m%d}', 16)}",
        f":25:{statement.account_no}",
        f":28C:{statement.number:05d}/001",
        f":60F:{_mark(statement.opening_rupiah)}{day:%y%m%d}IDR{_money(statement.opening_rupiah)}",
    ]
    for line in statement.lines:
        reference = _mt940_text(line.reference, mt940_reference_length_max).strip() or "NONREF"
        bank_reference = _mt940_text(line.bank_reference, mt940_reference_length_max).strip()
        out.append(
            f":61:{line.value_date:%y%m%d}{line.value_date:%m%d}{line.direction.value}"
            f"{_money(line.amount_rupiah)}N{line.type_code[-3:]}{reference}"
            + (f"//{bank_reference}" if bank_reference else "")
        )
        out.append(f":86:{_mt940_text(line.description, mt940_narrative_length_max)}")
    closing = statement.closing_rupiah
    out.append(f":62F:{_mark(closing)}{day:%y%m%d}IDR{_money(closing)}")
    return "\n".join(out) + "\n"


csv_columns = (
    "account",
    "value_date",
    "direction",
    "amount",
    "reference",
    "bank_reference",
    "type",
    "description",
)


def write_csv(statement: Statement) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_columns)
    for line in statement.lines:
        writer.writerow(
            (
                statement.account_no,
                line.value_date.isoformat(),
                line.direction.value,
                line.amount_rupiah,
                line.reference,
                line.bank_reference,
                line.type_code,
                line.description,
            )
        )
    return out.getvalue()
