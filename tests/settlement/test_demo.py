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


class MidnightRun(Clock):
    """Starts 30 s before midnight in Semarang when the demo first asks the time, and runs
    thirty times faster than real time: the day's first second is on one date, and however
    slow the machine, the bank pays out and writes statements on the next."""

    speed = 30

    def __init__(self, start: dt.datetime) -> None:
        self.start = start
        self.started_at: float | None = None  # the monotonic time of the first question

    def monotonic(self) -> float:
        return SystemClock().monotonic()

    def now(self) -> dt.datetime:
        if self.started_at is None:
            self.started_at = self.monotonic()
        elapsed = (self.monotonic() - self.started_at) * self.speed
        return self.start.astimezone(dt.UTC) + dt.timedelta(seconds=elapsed)


def across_midnight() -> Clock:
    return MidnightRun(dt.datetime(2028, 3, 14, 23, 59, 30, tzinfo=jakarta))


@pytest.mark.parametrize("make_clock", [fixed_past_day, across_midnight])
async def test_demo_day_closes_with_every_invariant(
    postgres_server_url: str, tmp_path: Path, make_clock: object
) -> None:
    assert callable(make_clock)
    clock = make_clock()
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
    service_day = dt.date.fromisoformat(summary["service_day"])
    assert service_day == (
        dt.date(2028, 2, 29) if make_clock is fixed_past_day else dt.date(2028, 3, 14)
    )
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
    # QRIS at a merchant's POS (one notification lost and made good by a query) and rides sold
    # by QR on a bus: booked once each, the acquirer's credit reconciled, nothing owed.
    assert (summary["qris_sales"], summary["qris_rides"]) == (3, 2)
    assert summary["qris_settled_rupiah"] > 0
    assert summary["invariants"]["qris_paid_once_each"]
    assert summary["invariants"]["qris_acquirer_settled"]
    assert summary["statement_lines_matched"] == summary["statement_lines"] - 3
    report = Path(summary["report"])
    assert report.exists()
    text = report.read_text()
    assert text.count("<svg") == 2
    assert "payout_rejected" in text
    json.dumps(summary, default=str)  # --json can print it
