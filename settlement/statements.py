"""Bank statements: the `StatementLine` record and small importers for MT940 and CSV files.

Each importer does three things, in the manner of beangulp: `identify` (is this file mine?),
`extract` (the file's lines as records, or one `StatementError` naming file and line: a broken
file imports nothing), and deduplication (`line_key`), so that importing the same file twice, or
two statements that overlap, adds each bank movement once. A movement the bank itself lists
twice in one file keeps both lines (the second one has occurrence 1): reconciliation reports it.

Amounts are parsed at this edge (MT940 writes a decimal comma, Indonesian exports a thousands
dot) and kept as whole rupiah integers from here on; one the ledger cannot hold is an error.

A statement is checked, not trusted: an MT940's closing balance must be its opening balance plus
its movements, a file cut short (an MT940 without its closing balance, a CSV whose last line has
no line end) and an impossible date are errors, and `check_account` refuses a statement of an
account other than the bank's. A spreadsheet's byte order mark is read as nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import hashlib
import io
import re
from collections import Counter
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ledger.records import amount_max
from settlement.formatting import rupiah

statement_file_bytes_max = 64 * 1024 * 1024  # a month of a busy collection account fits
statement_lines_max = 1_000_000


class Direction(enum.StrEnum):
    credit = "credit"  # money into our account
    debit = "debit"  # money out of our account


@dataclass(frozen=True, slots=True)
class StatementLine:
    bank: str
    account: str
    value_date: dt.date
    amount_rupiah: int  # always positive; `direction` says which way
    direction: Direction
    reference: str  # customer reference (ours, e.g. a partnerReferenceNo or VA number)
    bank_reference: str
    type_code: str  # MT940 transaction type (NTRF, NCHG, ...) or the CSV's type column
    description: str
    source_file: str
    source_line: int
    occurrence: int = 0  # how many identical movements came before this one in the same file
    key: str = field(default="", compare=False, repr=False)  # `line_key`, filled in once

    def __post_init__(self) -> None:
        assert self.amount_rupiah > 0, self
        assert self.source_line >= 1, self
        object.__setattr__(self, "key", line_key(self))

    @property
    def signed_rupiah(self) -> int:
        return self.amount_rupiah if self.direction is Direction.credit else -self.amount_rupiah


def line_key(line: StatementLine) -> str:
    """Identity of a bank movement, independent of the file it arrived in."""
    parts = (
        line.bank,
        line.account,
        line.value_date.isoformat(),
        str(line.amount_rupiah),
        line.direction.value,
        line.reference,
        line.bank_reference,
        line.type_code,
        line.description,
        str(line.occurrence),
    )
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class StatementError(Exception):
    """A statement file that cannot be imported; names the file and the line."""

    def __init__(self, source_file: str, source_line: int, problem: str) -> None:
        super().__init__(f"{source_file}:{source_line}: {problem}")
        self.source_file = source_file
        self.source_line = source_line
        self.problem = problem


# Rupiah has no three-digit fraction, so three digits after a mark are always a thousands group
# ("150.000" is Rp 150,000 as Indonesians write it, "1,500" is Rp 1,500); one or two digits are
# the fraction. Anything else (exponents, NaN, mixed groups) is refused, never guessed at.
amount_text_pattern = re.compile(
    r"""^(?P<sign>-?)(?:
        (?P<plain>[0-9]+)(?:[.,](?P<plain_fraction>[0-9]{1,2}))?
      | (?P<dotted>[0-9]{1,3}(?:\.[0-9]{3})+)(?:,(?P<dotted_fraction>[0-9]{1,2}))?
      | (?P<commas>[0-9]{1,3}(?:,[0-9]{3})+)(?:\.(?P<commas_fraction>[0-9]{1,2}))?
    )$""",
    re.VERBOSE,
)


def whole_rupiah(text: str, source_file: str, source_line: int) -> int:
    """'150000', '150000,00', '150.000,00', '150,000.00' and '150.000' -> 150000; a fraction
    other than zero, or anything that is not one of these forms, is an error."""
    found = amount_text_pattern.match(text.strip().replace(" ", ""))
    if found is None:
        raise StatementError(source_file, source_line, f"amount {text!r} is not a number")
    whole = found["plain"] or found["dotted"] or found["commas"]
    fraction = found["plain_fraction"] or found["dotted_fraction"] or found["commas_fraction"]
    if fraction is not None and int(fraction) != 0:
        raise StatementError(source_file, source_line, f"amount {text!r} is not whole rupiah")
    amount = int(whole.replace(".", "").replace(",", ""))
    check_ledger_amount(amount, text, source_file, source_line)
    return -amount if found["sign"] else amount


def check_ledger_amount(amount: int, text: str, source_file: str, source_line: int) -> None:
    if amount > amount_max:
        raise StatementError(
            source_file,
            source_line,
            f"amount {text.strip()!r} is more than the ledger can hold ({rupiah(amount_max)})",
        )


def with_occurrences(lines: Iterable[StatementLine]) -> tuple[StatementLine, ...]:
    """Number repeated identical movements within one file (0, 1, 2, ...)."""
    from dataclasses import replace

    seen: Counter[str] = Counter()
    numbered = []
    for line in lines:
        assert line.occurrence == 0
        occurrence = seen[line.key]
        numbered.append(line if occurrence == 0 else replace(line, occurrence=occurrence))
        seen[line.key] += 1
    return tuple(numbered)


# ---------------------------------------------------------------------------- MT940

mt940_reference_pattern = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_/]{5,}")
mt940_field_pattern = re.compile(r"(?:\{4:)?:(?P<tag>[0-9]{2}[A-Z]?):(?P<value>.*)")
# :60F:, :62F: (and M for a statement's intermediate pages): mark, date, currency, amount
mt940_balance_pattern = re.compile(
    r"(?P<mark>[CD])(?P<date>[0-9]{6})(?P<currency>[A-Z]{3})(?P<amount>[0-9][0-9,]*)"
)
# :61: up to its amount: value date, entry date (MMDD, optional), mark, funds code, amount
mt940_movement_pattern = re.compile(
    r"(?P<date>[0-9]{6})(?P<entry>[0-9]{4}|\s{4})?(?P<mark>R?[CD])[A-Z]?[ ]?(?P<amount>[0-9][0-9,]*)"
)
mt940_amount_length_max = 15  # SWIFT's 15d, decimal comma included
mt940_envelope_end_pattern = re.compile(r"-\}(?:\{5:[^}]*(?:\}[^}]*)*\})?\s*$")


@dataclass(frozen=True, slots=True)
class Mt940Movement:
    """A `:61:` line as the structural check reads it, to hold the parser's reading against."""

    source_line: int
    account: str
    amount_rupiah: int
    direction: Direction


def mt940_date(
    text: str, source_file: str, source_line: int, field: str, form: str = "YYMMDD"
) -> dt.date:
    """YYMMDD (20YY, as the mt-940 library reads it), or an error naming the field."""
    try:
        return dt.date(2000 + int(text[:2]), int(text[2:4]), int(text[4:6]))
    except ValueError:
        shown = text[-len(form) :]
        raise StatementError(
            source_file, source_line, f"{field} {shown!r} is not a date ({form})"
        ) from None


def mt940_rupiah(text: str, source_file: str, source_line: int, field: str) -> int:
    """An MT940 amount (decimal comma, no grouping) in whole rupiah."""
    whole, _, fraction = text.partition(",")
    if not whole.isdigit() or not (fraction == "" or fraction.isdigit()):
        raise StatementError(source_file, source_line, f"{field} amount {text!r} is not a number")
    if fraction.strip("0"):
        raise StatementError(
            source_file, source_line, f"{field} amount {text!r} is not whole rupiah"
        )
    amount = int(whole)
    check_ledger_amount(amount, text, source_file, source_line)
    if len(text) > mt940_amount_length_max:
        raise StatementError(
            source_file,
            source_line,
            f"{field} amount {text!r} is longer than MT940's {mt940_amount_length_max} characters",
        )
    return amount


def mt940_balance(value: str, source_file: str, source_line: int, tag: str) -> int:
    """A balance field's amount, signed (debit negative)."""
    found = mt940_balance_pattern.fullmatch(value.removesuffix("-}").rstrip())
    if found is None:
        raise StatementError(
            source_file,
            source_line,
            f"malformed MT940: field :{tag}: cannot be read from {value[:80]!r}",
        )
    mt940_date(found["date"], source_file, source_line, f":{tag}: date")
    amount = mt940_rupiah(found["amount"], source_file, source_line, f":{tag}:")
    return amount if found["mark"] == "C" else -amount


def scan_mt940(text: str, source_file: str) -> tuple[Mt940Movement, ...]:
    """The checks the mt-940 library does not make, each naming its line: every statement in
    the file has an account, an opening balance before its movements and a closing balance
    after them that is the opening balance plus the movements; dates are dates; amounts fit
    MT940 and the ledger; an enveloped message ends with `-}`. A file cut short fails here."""
    try:
        return _scan_mt940(text, source_file)
    except StatementError as error:
        cut_line = text.count("\n") + 1  # the last line, when it has no line end
        if text.endswith("\n") or error.source_line != cut_line or "truncated" in error.problem:
            raise
        raise StatementError(
            source_file,
            cut_line,
            f"{error.problem} (the last line has no line end: is the file cut off?)",
        ) from None


def _scan_mt940(text: str, source_file: str) -> tuple[Mt940Movement, ...]:
    movements: list[Mt940Movement] = []
    account = ""
    opening: int | None = None
    net = 0
    started_at = 0  # the line of the open statement's :20:, 0 when none is open
    last_line = 0
    for number, row in enumerate(text.split("\n"), 1):
        if row.strip():
            last_line = number
        found = mt940_field_pattern.match(row)
        if found is None:
            continue
        tag, value = found["tag"], found["value"].strip()
        if tag == "20":
            if started_at:
                raise StatementError(
                    source_file,
                    number,
                    f"the statement starting at line {started_at} has no closing balance :62F:",
                )
            started_at, account, opening, net = number, "", None, 0
        elif not started_at and tag in ("25", "60F", "60M", "61", "62F", "62M"):
            raise StatementError(
                source_file, number, f":{tag}: outside a statement (no :20: before it)"
            )
        elif tag == "25":
            account = value
        elif tag in ("60F", "60M"):
            if not account:
                raise StatementError(source_file, number, "no :25: account identification")
            if opening is not None:
                raise StatementError(source_file, number, "a second opening balance")
            opening = mt940_balance(value, source_file, number, tag)
        elif tag == "61":
            if opening is None:
                raise StatementError(source_file, number, ":61: before the opening balance :60F:")
            movement = mt940_movement_pattern.match(value)
            if movement is None:
                raise StatementError(
                    source_file,
                    number,
                    f"malformed MT940: field :61: cannot be read from {value[:80]!r}",
                )
            value_date = mt940_date(movement["date"], source_file, number, ":61: value date")
            entry = movement["entry"]
            if entry and entry.strip():
                mt940_date(
                    f"{value_date:%y}{entry}", source_file, number, ":61: entry date", "MMDD"
                )
            amount = mt940_rupiah(movement["amount"], source_file, number, ":61:")
            if amount == 0:
                raise StatementError(source_file, number, "amount is zero")
            # RD, the reversal of a debit, brings money back in; RC takes it out
            credit = movement["mark"] in ("C", "RD")
            net += amount if credit else -amount
            movements.append(
                Mt940Movement(
                    number, account, amount, Direction.credit if credit else Direction.debit
                )
            )
        elif tag in ("62F", "62M"):
            if opening is None:
                raise StatementError(source_file, number, f":{tag}: before the opening balance")
            closing = mt940_balance(value, source_file, number, tag)
            expected = opening + net
            if closing != expected:
                raise StatementError(
                    source_file,
                    number,
                    f"closing balance :{tag}: {rupiah(closing)} is not the opening balance "
                    f"{rupiah(opening)} plus the movements {rupiah(net)} = {rupiah(expected)}: "
                    f"a difference of {rupiah(abs(closing - expected))}",
                )
            started_at = 0
        elif tag in ("64", "65") and mt940_balance_pattern.match(value):
            mt940_date(value[1:7], source_file, number, f":{tag}: date")
    if started_at:
        raise StatementError(
            source_file,
            last_line,
            f"truncated: the statement starting at line {started_at} has no closing balance "
            f":62F: (the file ends at line {last_line})",
        )
    if text.lstrip().startswith("{") and not mt940_envelope_end_pattern.search(text):
        raise StatementError(
            source_file, last_line, "truncated: the SWIFT message does not end with -}"
        )
    return tuple(movements)


class Mt940Importer:
    """SWIFT MT940 (as Mandiri and BRI send it: decimal comma, `:86:` free text)."""

    name = "mt940"

    def __init__(self, bank: str) -> None:
        self.bank = bank

    def identify(self, path: Path, head: str) -> bool:
        # a day without movements has no :61:, only its balances
        fields = ":20:" in head and ":25:" in head
        return (fields and (":61:" in head or ":60F:" in head)) or head.startswith("{1:")

    def extract(self, path: Path, text: str) -> tuple[StatementLine, ...]:
        import logging

        import mt940  # the maintained MT940 parser (PyPI `mt-940`)

        source_file = path.name
        movements = scan_mt940(text, source_file)
        logging.getLogger("mt940").setLevel(logging.CRITICAL)  # it logs each failed regex try
        transactions = mt940.models.Transactions()
        try:
            transactions.parse(text)
        except (RuntimeError, ValueError, KeyError, ArithmeticError) as error:
            raise StatementError(
                source_file, locate(text, error), f"malformed MT940: {describe(error)}"
            ) from None
        if len(transactions) != len(movements):
            raise StatementError(
                source_file, 1, f"{len(movements)} :61: lines but {len(transactions)} parsed"
            )
        lines = []
        for transaction, movement in zip(transactions, movements, strict=True):
            data = transaction.data
            source_line = movement.source_line
            currency = str(data.get("currency") or "IDR")
            if currency != "IDR":
                raise StatementError(source_file, source_line, f"currency {currency} is not IDR")
            status = str(data["status"])
            direction = Direction.credit if status in ("C", "RD") else Direction.debit
            parsed = abs(data["amount"].amount)
            if (parsed, direction) != (movement.amount_rupiah, movement.direction):
                raise StatementError(
                    source_file,
                    source_line,
                    f"malformed MT940: the parser read {direction.value} {parsed} "
                    f"where the line says {movement.direction.value} {movement.amount_rupiah}",
                )
            date = data["date"]
            lines.append(
                StatementLine(
                    bank=self.bank,
                    account=movement.account,
                    value_date=dt.date(date.year, date.month, date.day),
                    amount_rupiah=movement.amount_rupiah,
                    direction=direction,
                    reference=str(data.get("customer_reference") or "").strip(),
                    bank_reference=str(data.get("bank_reference") or "").strip(),
                    type_code=str(data.get("id") or "").strip(),
                    description=" ".join(str(data.get("transaction_details") or "").split()),
                    source_file=source_file,
                    source_line=source_line,
                )
            )
        return with_occurrences(lines)


def describe(error: Exception) -> str:
    """The parser's complaint without its object reprs: which tag, which text."""
    if len(error.args) >= 3 and isinstance(error.args[2], str):
        tag = getattr(error.args[1], "id", "?")
        return f"field :{tag}: cannot be read from {error.args[2][:80]!r}"
    return str(error.args[0] if error.args else error)[:200]


def locate(text: str, error: Exception) -> int:
    """The line of `text` where the parser's complaint (its offending fragment) starts."""
    fragment = next((a for a in reversed(error.args) if isinstance(a, str) and a.strip()), "")
    position = text.find(fragment.strip().splitlines()[0]) if fragment.strip() else -1
    return text.count("\n", 0, position) + 1 if position >= 0 else 1


# ---------------------------------------------------------------------------- CSV

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

csv_date_pattern = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class CsvImporter:
    """Our CSV statement layout (the bank simulator writes it; internet banking exports map to it).

    Header: account,value_date,direction,amount,reference,bank_reference,type,description
    value_date is YYYY-MM-DD; direction is C or D (CR/DB also accepted); amount is positive.
    """

    name = "csv"

    def __init__(self, bank: str) -> None:
        self.bank = bank

    def identify(self, path: Path, head: str) -> bool:
        first = head.splitlines()[0] if head else ""
        return tuple(cell.strip().lower() for cell in first.split(",")) == csv_columns

    def extract(self, path: Path, text: str) -> tuple[StatementLine, ...]:
        source_file = path.name
        if text and not text.endswith("\n"):  # the layout ends every line, the last one too
            raise StatementError(
                source_file,
                text.count("\n") + 1,
                "truncated: the last line has no line end (the file looks cut off)",
            )
        # strict: an unclosed quote is an error, not a field swallowing the rest of the file
        reader = csv.reader(io.StringIO(text), strict=True)
        rows = _csv_rows(reader, source_file)
        header = next(rows, None)
        if header is None or tuple(c.strip().lower() for c in header) != csv_columns:
            raise StatementError(source_file, 1, f"header must be {','.join(csv_columns)}")
        lines = []
        for row in rows:
            source_line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(csv_columns):
                raise StatementError(
                    source_file, source_line, f"{len(row)} columns, expected {len(csv_columns)}"
                )
            cells = dict(zip(csv_columns, (cell.strip() for cell in row), strict=True))
            try:
                if not csv_date_pattern.fullmatch(cells["value_date"]):
                    raise ValueError
                value_date = dt.date.fromisoformat(cells["value_date"])
            except ValueError:
                raise StatementError(
                    source_file,
                    source_line,
                    f"value_date {cells['value_date']!r} is not a date (YYYY-MM-DD)",
                ) from None
            mark = cells["direction"].upper()
            if mark not in ("C", "D", "CR", "DB"):
                raise StatementError(source_file, source_line, f"direction {mark!r} is not C or D")
            amount = whole_rupiah(cells["amount"], source_file, source_line)
            if amount <= 0:
                raise StatementError(source_file, source_line, f"amount {amount} is not positive")
            if not cells["account"]:
                raise StatementError(source_file, source_line, "account is empty")
            lines.append(
                StatementLine(
                    bank=self.bank,
                    account=cells["account"],
                    value_date=value_date,
                    amount_rupiah=amount,
                    direction=Direction.credit if mark.startswith("C") else Direction.debit,
                    reference=cells["reference"],
                    bank_reference=cells["bank_reference"],
                    type_code=cells["type"],
                    description=" ".join(cells["description"].split()),
                    source_file=source_file,
                    source_line=source_line,
                )
            )
            if len(lines) > statement_lines_max:
                raise StatementError(
                    source_file, source_line, f"more than {statement_lines_max} lines"
                )
        return with_occurrences(lines)


def write_csv(lines: Iterable[StatementLine]) -> str:
    """The CSV layout `CsvImporter` reads (used by exports and test fixtures)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(csv_columns)
    for line in lines:
        writer.writerow(
            (
                line.account,
                line.value_date.isoformat(),
                "C" if line.direction is Direction.credit else "D",
                line.amount_rupiah,
                line.reference,
                line.bank_reference,
                line.type_code,
                line.description,
            )
        )
    return out.getvalue()


def write_mt940(
    lines: Iterable[StatementLine],
    account: str,
    statement_reference: str,
    opening_rupiah: int,
    day: dt.date | None = None,
) -> str:
    """An MT940 statement for `lines` (the bank simulator's format; decimal comma), dated `day`
    (default: the first line's value date; a statement without lines must name its day)."""
    rows = list(lines)
    assert rows or day is not None, "a statement without lines needs its day"
    first_date = day if day is not None else rows[0].value_date
    balance = opening_rupiah

    def money(rupiah: int) -> str:
        return f"{abs(rupiah)},00"

    def mark(rupiah: int) -> str:
        return "C" if rupiah >= 0 else "D"

    out = [
        f":20:{statement_reference[:16]}",
        f":25:{account}",
        ":28C:00001/001",
        f":60F:{mark(balance)}{first_date:%y%m%d}IDR{money(balance)}",
    ]
    for line in rows:
        balance += line.signed_rupiah
        code = line.type_code or "NTRF"
        reference = line.reference[:16] or "NONREF"
        bank_reference = f"//{line.bank_reference[:16]}" if line.bank_reference else ""
        direction = "C" if line.direction is Direction.credit else "D"
        out.append(
            f":61:{line.value_date:%y%m%d}{line.value_date:%m%d}{direction}"
            f"{money(line.amount_rupiah)}N{code[-3:]}{reference}{bank_reference}"
        )
        out.append(f":86:{line.description[:65]}")
    last_date = rows[-1].value_date if rows else first_date
    out.append(f":62F:{mark(balance)}{last_date:%y%m%d}IDR{money(balance)}")
    return "\n".join(out) + "\n"


def _csv_rows(reader: Any, source_file: str) -> Iterator[list[str]]:
    try:
        yield from reader
    except csv.Error as error:
        raise StatementError(source_file, reader.line_num, f"malformed CSV: {error}") from None


importer_kinds = (Mt940Importer, CsvImporter)


def import_file(path: Path, bank: str) -> tuple[StatementLine, ...]:
    """Identify and extract one statement file: all its lines, or a `StatementError`."""
    if path.stat().st_size > statement_file_bytes_max:
        raise StatementError(path.name, 1, f"file is larger than {statement_file_bytes_max} bytes")
    return read_statement(path.name, path.read_bytes(), bank)


def read_statement(name: str, data: bytes, bank: str) -> tuple[StatementLine, ...]:
    """`import_file` for a file already read (`name` is how errors call it)."""
    if len(data) > statement_file_bytes_max:
        raise StatementError(name, 1, f"file is larger than {statement_file_bytes_max} bytes")
    try:
        text = data.decode("utf-8-sig")  # a spreadsheet's byte order mark is not a character
    except UnicodeDecodeError as error:
        raise StatementError(name, 1, f"not UTF-8 text ({error.reason})") from None
    text = text.replace("\r\n", "\n")
    if "\x00" in text:  # no text column can hold it: say where, rather than fail in the database
        raise StatementError(name, text.count("\n", 0, text.index("\x00")) + 1, "a NUL byte")
    path = Path(name)
    for kind in importer_kinds:
        importer = kind(bank)
        if importer.identify(path, text[:4096]):
            return importer.extract(path, text)
    raise StatementError(name, 1, "neither MT940 nor the KSH statement CSV layout")


def check_account(
    lines: Iterable[StatementLine], bank: str, expected: Collection[str], configured_by: str
) -> None:
    """Every line is on one of `expected`, bank `bank`'s accounts (as `configured_by` says)."""
    for line in lines:
        if line.account not in expected:
            ours = " or ".join(sorted(expected))
            raise StatementError(
                line.source_file,
                line.source_line,
                f"the statement is for account {line.account}, not bank {bank}'s account "
                f"{ours} ({configured_by})",
            )
