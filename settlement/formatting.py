"""How finance staff read numbers: Indonesian digit grouping (1.234.567) everywhere."""

from __future__ import annotations


def grouped(number: int) -> str:
    return f"{number:,}".replace(",", ".")


def rupiah(amount: int) -> str:
    return f"Rp {grouped(amount)}"
