"""Statement importers against golden files, and broken files that must import nothing."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

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
