"""The fare feed on each validator: the last service day it reports on sync, and the days left.

A validator sends its feed's last service day (`feed_service_end=YYYYMMDD`) in the query of its
signed sync request, so the value is authenticated with the rest of the path. It is kept in
`terminals.feed_service_end`, written only when it changes. Days left are counted against the
back office's clock (`BackofficeConfig.clock`), in Semarang's calendar: 0 means today is the
feed's last day with service, a negative number that the feed ran out that many days ago (its
validators then charge every tap the full fare, see `bus_terminals.fare.engine`).

`/health` shows the fewest days left across active validators; `/metrics` a gauge per terminal.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import asyncpg
from aiohttp import web

from gateways.backoffice import config_key
from ledger.clock import Clock

feed_service_end_query = "feed_service_end"
_date_pattern = re.compile(r"^\d{8}$")


def parse_feed_service_end(text: str) -> dt.date:
    """YYYYMMDD -> date; ValueError names what is wrong."""
    if not _date_pattern.match(text):
        raise ValueError(f"{feed_service_end_query} must be a date YYYYMMDD, got {text[:20]!r}")
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise ValueError(f"{feed_service_end_query} {text!r} is not a calendar date") from None


async def record_feed_service_end(
    connection: asyncpg.Connection, terminal_id: str, service_end: dt.date
) -> None:
    """Keep what the terminal reported (a write only when it changed: buses sync often)."""
    await connection.execute(
        "update terminals set feed_service_end = $2 "
        "where terminal_id = $1 and feed_service_end is distinct from $2",
        terminal_id,
        service_end,
    )


def backoffice_clock(app: web.Application) -> Clock:
    """The back office's business clock: today is measured against it."""
    return app[config_key].clock


async def validator_feed_days_left(
    connection: asyncpg.Connection, today: dt.date
) -> dict[str, int]:
    """Active validators that reported a feed -> days from `today` to its last service day."""
    rows = await connection.fetch(
        "select terminal_id, feed_service_end from terminals "
        "where role = 'validator' and status = 'active' and feed_service_end is not null "
        "order by terminal_id"
    )
    return {row["terminal_id"]: (row["feed_service_end"] - today).days for row in rows}


async def feed_health(app: web.Application, connection: asyncpg.Connection) -> dict[str, Any]:
    """What `/health` says of the validators' feeds: the fewest days left and on which one."""
    today = backoffice_clock(app).today()
    days_left = await validator_feed_days_left(connection, today)
    fewest = min(days_left.items(), key=lambda item: (item[1], item[0]), default=None)
    return {
        "validator_feeds": {
            "today": today.isoformat(),
            "reporting": len(days_left),
            "days_left_min": fewest[1] if fewest else None,
            "terminal": fewest[0] if fewest else None,
            "ended": sum(1 for days in days_left.values() if days < 0),
        }
    }


def _label(value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_days_left(days_left: dict[str, int]) -> str:
    """The gauge `ksh_terminal_feed_days_left{terminal="..."}` in the text exposition format."""
    name = "ksh_terminal_feed_days_left"
    lines = [
        f"# HELP {name} Days from the back office's today to the last service day of the fare "
        "feed each active validator last reported (0: its last day; negative: ended, the "
        "validator charges every tap the full fare).",
        f"# TYPE {name} gauge",
    ]
    lines += [
        f'{name}{{terminal="{_label(terminal)}"}} {days}' for terminal, days in days_left.items()
    ]
    return "\n".join(lines) + "\n"
