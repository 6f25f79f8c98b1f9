"""`ksh demo` end to end with real parts on loopback (back office, SNAP bank simulator, fleet
simulator with emulated cards), small: every injected trouble lands as the right exception,
the staff actions close the day with nothing unexplained, and every invariant holds."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import pytest

from ksh.commands import demo
from ledger.clock import Clock, SystemClock, jakarta


def fixed_past_day() -> Clock:
    """A leap day two years after the tariff's first calendar ended (it ran out 2027-12-31)."""
    return SystemClock.on_day(dt.date(2028, 2, 29))


def across_midnight() -> Clock:
    """Just before midnight in Semarang (the small day takes about two seconds): the day starts
    on one date and the bank pays out and writes statements on the next."""
    return SystemClock.starting_at(dt.datetime(2028, 3, 14, 23, 59, 59, 200_000, tzinfo=jakarta))


@pytest.mark.parametrize("make_clock", [fixed_past_day, across_midnight])
async def test_demo_day_closes_with_every_invariant(
    postgres_server_url: str, tmp_path: Path, make_clock: object
) -> None:
    assert callable(make_clock)
    clock = make_clock()
    service_day = clock.today()
    arguments = argparse.Namespace(
        buses=4,
        cards=40,
        merchants=2,
        shoppers=8,
        seed=7,
        reports=tmp_path,
        json=True,
        keep_database=False,
    )
    summary = await demo.demo(postgres_server_url, arguments, clock)
    assert summary["service_day"] == service_day.isoformat()
    if make_clock is across_midnight:
        assert clock.today() == service_day + dt.timedelta(days=1), "the run did not cross midnight"
    assert summary["invariants"], summary
    assert all(summary["invariants"].values()), summary["invariants"]
    reasons = sorted(found["reason"] for found in summary["exceptions"])
    assert reasons == [
        "duplicate_line",
        "payout_rejected",
        "unexpected_fee",
        "unknown_reference",
    ], reasons
    assert summary["unexplained_rupiah"] == 0
    assert summary["exceptions_open_at_close"] == 0
    assert summary["taps_booked"] > 0
    assert summary["merchant_sales"]["sales"] > 0
    assert summary["settlement_batches"] == 3  # two merchants and the operator
    assert summary["statement_lines_matched"] == summary["statement_lines"] - 3
    report = Path(summary["report"])
    assert report.exists()
    text = report.read_text()
    assert text.count("<svg") == 2
    assert "payout_rejected" in text
    json.dumps(summary, default=str)  # --json can print it
