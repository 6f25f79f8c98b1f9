"""Statement importers against golden files, and broken files that must import nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path

import pytest

from gateways.bank_simulator import statements as simulator
from settlement.statements import (
    Direction,
    StatementError,
    StatementLine,
    import_file,
    whole_rupiah,
    write_csv,
    write_mt940,
)

golden = Path(__file__).parent / "golden"
samples = sorted(p for p in golden.iterdir() if p.suffix in (".sta", ".csv"))


def as_json(lines: tuple[StatementLine, ...]) -> list[dict[str, object]]:
    return [
        {**dataclasses.asdict(line), "value_date": line.value_date.isoformat(), "key": line.key}
        for line in lines
    ]


@pytest.mark.parametrize("sample", samples, ids=[p.name for p in samples])
def test_golden(sample: Path) -> None:
    expected_path = sample.with_name(sample.name + ".expected.json")
    actual = as_json(import_file(sample, "golden-bank"))
    if os.environ.get("KSH_UPDATE_GOLDEN") == "1":  # regenerate, then review the diff by eye
        expected_path.write_text(json.dumps(actual, indent=1, ensure_ascii=False) + "\n")
    assert actual == json.loads(expected_path.read_text())


def test_golden_files_cover_both_formats() -> None:
    assert {p.suffix for p in samples} == {".sta", ".csv"}


def test_bank_duplicate_keeps_both_lines_with_distinct_keys() -> None:
    lines = import_file(golden / "mandiri-20261123.sta", "mandiri")
    fees = [line for line in lines if line.type_code == "NCHG"]
    assert [line.occurrence for line in fees] == [0, 1]
    assert fees[0].key != fees[1].key
    again = import_file(golden / "mandiri-20261123.sta", "mandiri")
    assert [line.key for line in again] == [line.key for line in lines]


def test_written_files_read_back(tmp_path: Path) -> None:
    lines = import_file(golden / "mandiri-20261123.sta", "mandiri")
    mt940_path = tmp_path / "out.sta"
    mt940_path.write_text(write_mt940(lines, lines[0].account, "ROUNDTRIP", 0))
    csv_path = tmp_path / "out.csv"
    csv_path.write_text(write_csv(lines))
    for path in (mt940_path, csv_path):
        back = import_file(path, "mandiri")
        assert [(b.amount_rupiah, b.direction, b.reference, b.value_date) for b in back] == [
            (line.amount_rupiah, line.direction, line.reference[:16], line.value_date)
            for line in lines
        ]
    assert {line.direction for line in lines} == {Direction.credit, Direction.debit}


csv_head = "account,value_date,direction,amount,reference,bank_reference,type,description\n"
mt940_head = (
    ":20:X\n:25:123\n:28C:1/1\n:60F:C261123IDR0,00\n:61:2611231123C100,00NTRFREF1\n:86:ok\n"
)
broken_files = {
    "unclosed-quote.csv": (
        "account,value_date,direction,amount,reference,bank_reference,type,description\n"
        '1,2026-11-23,C,100,VA1,B1,NTRF,"Toko ""A\n'
        "1,2026-11-23,C,250000,VA2,B2,NTRF,top-up\n"
        "1,2026-11-23,D,90000,P1,B3,NTRF,payout\n",
        4,
        "malformed CSV",
    ),
    "nul.csv": (
        "account,value_date,direction,amount,reference,bank_reference,type,description\n"
        "1,2026-11-23,C,100,VA1,B1,NTRF,fine\n"
        "1,2026-11-23,C,100,V\x00A2,B2,NTRF,nul\n",
        3,
        "NUL",
    ),
    "bad-amount.csv": (
        "account,value_date,direction,amount,reference,bank_reference,type,description\n"
        "1,2026-11-23,C,100,VA1,B1,NTRF,fine\n"
        "1,2026-11-23,C,12x,VA2,B2,NTRF,broken\n",
        3,
        "not a number",
    ),
    "sen.csv": (
        "account,value_date,direction,amount,reference,bank_reference,type,description\n"
        "1,2026-11-23,C,100.50,VA1,B1,NTRF,half a rupiah\n",
        2,
        "not whole rupiah",
    ),
    "bad-date.csv": (
        "account,value_date,direction,amount,reference,bank_reference,type,description\n"
        "1,2026-11-23,C,100,VA1,B1,NTRF,fine\n"
        "1,2026-11-23,C,100,VA1,B1,NTRF,fine\n"
        "1,23/11/2026,C,100,VA2,B2,NTRF,bad date\n",
        4,
        "YYYY-MM-DD",
    ),
    "short-row.csv": (
        "account,value_date,direction,amount,reference,bank_reference,type,description\n"
        "1,2026-11-23,C,100\n",
        2,
        "columns",
    ),
    "bad-61.sta": (
        ":20:X\n:25:123\n:28C:1/1\n:60F:C261123IDR0,00\n"
        ":61:2611231123C100,00NTRFREF1\n:86:ok\n"
        ":61:garbage\n:86:bad\n:62F:C261123IDR100,00\n",
        7,
        "malformed MT940",
    ),
    "usd.sta": (
        ":20:X\n:25:123\n:28C:1/1\n:60F:C261123USD0,00\n"
        ":61:2611231123C100,00NTRFREF1\n:86:ok\n:62F:C261123USD100,00\n",
        5,
        "not IDR",
    ),
    "not-a-statement.txt": ("hello, world\n", 1, "neither MT940"),
    "unbalanced.sta": (
        mt940_head + ":62F:C261123IDR90,00\n",
        7,
        "closing balance :62F: Rp 90 is not the opening balance Rp 0 plus the movements "
        "Rp 100 = Rp 100: a difference of Rp 10",
    ),
    "second-statement-unbalanced.sta": (
        mt940_head + ":62F:C261123IDR100,00\n:20:Y\n:25:123\n:28C:2/1\n:60F:C261124IDR100,00\n"
        ":61:2611241124D30,00NTRFREF2\n:86:ok\n:62F:C261124IDR170,00\n",
        14,
        "a difference of Rp 100",
    ),
    "no-closing.sta": (mt940_head, 6, "truncated: the statement starting at line 1 has no"),
    "cut-61.sta": (mt940_head + ":61:2611231123C10", 7, "truncated"),
    "cut-62.sta": (mt940_head + ":62F:C2611", 7, "is the file cut off?"),
    "cut-envelope.sta": (
        "{1:F01BNINIDJAXXX}{2:O940}{4:\n" + mt940_head + ":62F:C261123IDR100,00\n",
        8,
        "truncated: the SWIFT message does not end with -}",
    ),
    "cut-row.csv": (
        csv_head + "1,2026-11-23,C,100,VA1,B1,NTRF,fine\n1,2026-11-23,C,250000,VA2,B2,NT",
        3,
        "truncated: the last line has no line end",
    ),
    "feb-30.sta": (
        mt940_head.replace(":61:2611231123", ":61:2602300230") + ":62F:C261123IDR100,00\n",
        5,
        ":61: value date '260230' is not a date (YYMMDD)",
    ),
    "entry-feb-30.sta": (
        mt940_head.replace(":61:2611231123", ":61:2602280230") + ":62F:C261123IDR100,00\n",
        5,
        ":61: entry date '0230' is not a date (MMDD)",
    ),
    "opening-feb-30.sta": (
        mt940_head.replace(":60F:C261123", ":60F:C260230") + ":62F:C261123IDR100,00\n",
        4,
        ":60F: date '260230' is not a date",
    ),
    "feb-30.csv": (csv_head + "1,2026-02-30,C,100,VA1,B1,NTRF,x\n", 2, "is not a date"),
    "huge.csv": (
        csv_head + "1,2026-11-23,C,9223372036854775808,VA1,B1,NTRF,x\n",
        2,
        "more than the ledger can hold (Rp 9.223.372.036.854.775.807)",
    ),
    "huge.sta": (
        mt940_head.replace("C100,00", "C99999999999999999999,00")
        + ":62F:C261123IDR99999999999999999999,00\n",
        5,
        "more than the ledger can hold",
    ),
    "long-amount.sta": (  # the parser would read the first 15 characters and carry on
        mt940_head.replace("C100,00", "C1000000000000000,00")
        + ":62F:C261123IDR1000000000000000,00\n",
        5,
        "longer than MT940's 15 characters",
    ),
}


@pytest.mark.parametrize("name", sorted(broken_files))
def test_broken_file_names_file_and_line(tmp_path: Path, name: str) -> None:
    text, line, words = broken_files[name]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(StatementError) as caught:
        import_file(path, "bank")
    assert caught.value.source_file == name
    assert caught.value.source_line == line, str(caught.value)
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"{name}:{line}: ")


def test_byte_order_mark_and_crlf_as_a_spreadsheet_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    rows = csv_head + "0112233445,2026-11-23,C,50000,VA1,B1,NTRF,VA PAYMENT\n"
    path.write_bytes(b"\xef\xbb\xbf" + rows.replace("\n", "\r\n").encode())
    (line,) = import_file(path, "009")
    assert (line.account, line.amount_rupiah, line.source_line) == ("0112233445", 50_000, 2)
    assert line.key == import_file(write_to(tmp_path / "plain.csv", rows), "009")[0].key


def test_each_mt940_statement_keeps_its_own_account(tmp_path: Path) -> None:
    text = (
        mt940_head + ":62F:C261123IDR100,00\n:20:Y\n:25:456\n:28C:2/1\n:60F:D261123IDR100,00\n"
        ":61:2611231123RC30,00NTRFREF2\n:86:reversal\n:62F:D261123IDR130,00\n"
    )
    lines = import_file(write_to(tmp_path / "two.sta", text), "009")
    assert [(line.account, line.signed_rupiah, line.source_line) for line in lines] == [
        ("123", 100, 5),
        ("456", -30, 12),
    ]


def test_bank_simulator_statements_import_cleanly(tmp_path: Path) -> None:
    """The simulator's writers (the demo's and test_day's statements) pass every check, an
    overdrawn day and a day without movements included."""
    day = dt.date(2028, 2, 29)
    movements = (
        simulator.BankLine(day, simulator.Direction.credit, 150_000, "VA1", "B1", "NTRF", "VA"),
        simulator.BankLine(day, simulator.Direction.debit, 400_000, "PO1", "B2", "NTRF", "TF"),
        simulator.BankLine(day, simulator.Direction.debit, 2_500, "PO1", "B3", "NCHG", "FEE"),
    )
    for opening, lines in ((100_000, movements), (-5_000, ()), (0, movements[:1])):
        statement = simulator.Statement("1350012345678", day, 7, opening, lines)
        for name, text in (
            ("s.sta", simulator.write_mt940(statement)),
            ("s.csv", simulator.write_csv(statement)),
        ):
            read = import_file(write_to(tmp_path / name, text), "009")
            assert sum(line.signed_rupiah for line in read) == statement.closing_rupiah - opening


def write_to(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "rupiah"),
    [
        ("150000", 150_000),
        ("150000,00", 150_000),
        ("150000.00", 150_000),
        ("150.000", 150_000),  # Indonesian thousands dot, not Rp 150
        ("1.500.000,00", 1_500_000),
        ("1,500", 1_500),
        ("1,500,000.00", 1_500_000),
        (" 2 500 ", 2_500),
        ("-75000,00", -75_000),
    ],
)
def test_amount_text_forms(text: str, rupiah: int) -> None:
    assert whole_rupiah(text, "f", 1) == rupiah


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1e3", "not a number"),
        ("Infinity", "not a number"),
        ("NaN", "not a number"),
        ("1.500,000", "not a number"),
        ("1.50.000", "not a number"),
        ("", "not a number"),
        ("150000,5", "not whole rupiah"),
        ("1.500.000,50", "not whole rupiah"),
    ],
)
def test_amount_text_refused(text: str, words: str) -> None:
    with pytest.raises(StatementError, match=words):
        whole_rupiah(text, "f", 1)
