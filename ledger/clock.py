"""The one clock: where the product asks "now", and where it measures how long something took.

Business time (when a payment was made, which service day it is, when a session expires)
comes from a `Clock` handed down from the composition root (`ksh`); nothing else reads the
wall clock (`tests/test_tidy.py` fails if a module does). Durations (timeouts, lockouts,
token lifetimes) use the same clock's `monotonic()`, so a test can advance them.

- `SystemClock()`: the machine's clock; `SystemClock(shift)` is the machine's clock moved by
  a fixed amount (`ksh demo --day` runs another day at the time of day it is now).
- `ManualClock(start)`: stands still until `advance()` or `set()` moves it (tests, replays).

The ledger keeps it because every other package of the back office already depends on the
ledger; terminals (`bus_terminals`) take a plain function returning Unix milliseconds, which the
composition root makes from this clock (`Clock.unix_ms`).
"""

from __future__ import annotations

import datetime as dt
import time
import zoneinfo

jakarta = zoneinfo.ZoneInfo("Asia/Jakarta")  # Semarang's time zone (WIB, UTC+7, no DST)


class Clock:
    """Business time as an aware UTC datetime, and monotonic seconds for durations."""

    def now(self) -> dt.datetime:
        raise NotImplementedError

    def monotonic(self) -> float:
        raise NotImplementedError

    def unix_ms(self) -> int:
        return int(self.now().timestamp() * 1000)

    def local_now(self) -> dt.datetime:
        """Now in Semarang (Asia/Jakarta)."""
        return self.now().astimezone(jakarta)

    def today(self) -> dt.date:
        """Today's calendar date in Semarang."""
        return self.local_now().date()


class SystemClock(Clock):
    """The machine's clock, moved by `shift` (zero: the real time)."""

    def __init__(self, shift: dt.timedelta = dt.timedelta(0)) -> None:
        self.shift = shift

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.shift

    def monotonic(self) -> float:
        return time.monotonic()

    @classmethod
    def starting_at(cls, moment: dt.datetime) -> SystemClock:
        """The machine's clock moved so that it reads `moment` now, and runs on from there."""
        return cls(moment - SystemClock().now())

    @classmethod
    def on_day(cls, day: dt.date) -> SystemClock:
        """The machine's clock moved by whole days so that it is now `day` in Semarang, at the
        time of day it really is."""
        return cls(dt.timedelta(days=(day - SystemClock().today()).days))


class ManualClock(Clock):
    """A clock that moves only when told: `advance(seconds)` moves both readings."""

    def __init__(self, start: dt.datetime) -> None:
        assert start.tzinfo is not None, "a clock's time is aware"
        self._now = start.astimezone(dt.UTC)
        self._monotonic = 0.0

    def now(self) -> dt.datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "time does not go back"
        self._now += dt.timedelta(seconds=seconds)
        self._monotonic += seconds

    def set(self, moment: dt.datetime) -> None:
        assert moment.tzinfo is not None, "a clock's time is aware"
        self.advance((moment - self._now).total_seconds())


system_clock = SystemClock()  # the default where nothing else is injected
