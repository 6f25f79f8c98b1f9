"""How `list` and `show` commands print: a table with a header for people, one JSON object per
line (`--json`) for programs, and `show`'s label-value lines."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Columns as wide as their widest cell, two spaces apart; numbers right-aligned."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
    numeric = [
        bool(cells) and all(_is_number(row[column]) for row in cells)
        for column in range(len(headers))
    ]
    for row in [list(headers), *cells]:
        line = "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        )
        print(line.rstrip())


def print_json_lines(objects: Iterable[Any]) -> None:
    for item in objects:
        print(json.dumps(plain(item), default=str, ensure_ascii=False))


def print_fields(fields: Mapping[str, object]) -> None:
    """`show`'s lines: each label padded to the longest."""
    width = max((len(label) for label in fields), default=0)
    for label, value in fields.items():
        print(f"{label.ljust(width)}  {_cell(value)}".rstrip())


def plain(item: Any) -> Any:
    """A dataclass as a dict (enums as their values, ids and times as text via json's default)."""
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return {field.name: plain(getattr(item, field.name)) for field in dataclasses.fields(item)}
    if isinstance(item, Mapping):
        return {key: plain(value) for key, value in item.items()}
    if isinstance(item, list | tuple):
        return [plain(value) for value in item]
    return item


def rupiah(amount: int) -> str:
    return f"Rp {amount:,}"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _is_number(text: str) -> bool:
    return text.replace(",", "").lstrip("-").isdigit() or text == "-"
