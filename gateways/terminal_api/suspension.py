"""Terminals whose records land in quarantine: flagged, and past a limit suspended.

Every quarantined record counts against its terminal, by reason (`quarantined_records`). A
terminal with more than `quarantined_per_day_max` of them in the last
`quarantine_window_hours` of business time (setting `terminal_quarantined_per_day_max`: `ksh serve --quarantined-per-day`) is
suspended at once, in the transaction of the upload that crossed the limit, with the source
`automatic` and a reason that says the count and the reasons. That upload is accepted and
acknowledged as usual; from then on the terminal's uploads, sync and deny-list downloads are
refused (403, `terminal_suspended`), and it keeps its journal: nothing it recorded is lost,
and what it uploaded before stays as it was (booked, held or quarantined). A supervisor lifts
the suspension with `ksh terminal resume` (a reason, in `staff_actions`); the terminal then
uploads what it kept. Revoking (`ksh terminal suspend`, the admin API's revoke) is different:
for good (a new key registers it again).

One honest glitch (a card pulled at the wrong moment, a top-up delivered twice by two buses
offline) should not take a bus off the road, so the default allows a few a day; a terminal
making things up makes many, and is stopped after the first batch that shows it.
"""

from __future__ import annotations

import datetime as dt
import logging

import asyncpg

from gateways import staff
from gateways.observability import escape_label
from gateways.terminal_api.planning import not_the_terminals_doing

logger = logging.getLogger("ksh.terminals")

quarantined_per_day_max_default = 3
quarantine_window_hours = 24
terminals_in_metrics_max = 1_000  # labels of the quarantine gauge (`observability.labels_max`)


async def quarantined_recently(
    connection: asyncpg.Connection, *, now: dt.datetime, terminal_id: str | None = None
) -> dict[str, dict[str, int]]:
    """Per terminal (or the one named), its records quarantined in the window, by reason."""
    rows = await connection.fetch(
        """select terminal_id, reason, count(*) as records from quarantined_records
            where quarantined_at > $1 and ($2::text is null or terminal_id = $2)
            group by 1, 2 order by 1, 2 limit $3""",
        now - dt.timedelta(hours=quarantine_window_hours),
        terminal_id,
        terminals_in_metrics_max,
    )
    found: dict[str, dict[str, int]] = {}
    for row in rows:
        found.setdefault(row["terminal_id"], {})[row["reason"]] = int(row["records"])
    return found


def reasons_text(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(by_reason.items()))


async def suspend_if_over_limit(
    connection: asyncpg.Connection, terminal_id: str, *, now: dt.datetime, limit: int
) -> str | None:
    """Suspend the terminal (source `automatic`) when its quarantined records in the window
    exceed `limit`; the reason given, or None. Call inside the upload's transaction."""
    found = await quarantined_recently(connection, now=now, terminal_id=terminal_id)
    by_reason = {
        reason: records
        for reason, records in found.get(terminal_id, {}).items()
        if reason not in not_the_terminals_doing
    }
    count = sum(by_reason.values())
    if count <= limit:
        return None
    reason = (
        f"{count} records quarantined in {quarantine_window_hours} hours (at most {limit}): "
        + reasons_text(by_reason)
    )
    if not await suspend(connection, terminal_id, by="automatic", reason=reason, now=now):
        return None
    # In the staff actions log too, so the terminal's history keeps it after a resume.
    await staff.record_action(
        connection,
        username="automatic",
        role="system",
        action="suspend_terminal",
        subject=terminal_id,
        reason=reason,
        now=now,
        detail={"quarantined": by_reason, "limit": limit},
    )
    logger.warning(
        "terminal suspended automatically: its uploads are refused until a supervisor "
        "resumes it (ksh terminal resume)",
        extra={"terminal_id": terminal_id, "reason": reason},
    )
    return reason


async def suspend(
    connection: asyncpg.Connection, terminal_id: str, *, by: str, reason: str, now: dt.datetime
) -> bool:
    """Suspend an active terminal; False when it is not active (suspended or revoked)."""
    result = await connection.execute(
        """update terminals set status = 'suspended', suspended_at = $2, suspended_by = $3,
                  suspended_reason = $4 where terminal_id = $1 and status = 'active'""",
        terminal_id,
        now,
        by,
        reason,
    )
    return bool(result.endswith(" 1"))


async def resume(connection: asyncpg.Connection, terminal_id: str) -> bool:
    """Lift a suspension; False when the terminal is not suspended. Its window of quarantined
    records is not reset: another one before the window passes suspends it again."""
    result = await connection.execute(
        """update terminals set status = 'active', suspended_at = null, suspended_by = null,
                  suspended_reason = null where terminal_id = $1 and status = 'suspended'""",
        terminal_id,
    )
    return bool(result.endswith(" 1"))


def render_metrics(recent: dict[str, dict[str, int]], suspended: dict[str, str]) -> str:
    """`ksh_terminal_quarantined_records{terminal,reason}`: records quarantined in the window;
    `ksh_terminal_suspended{terminal,source}`: 1 per suspended terminal."""
    held = "ksh_terminal_quarantined_records"
    stopped = "ksh_terminal_suspended"
    lines = [
        f"# HELP {held} Records of each terminal quarantined in the last "
        f"{quarantine_window_hours} hours, by reason.",
        f"# TYPE {held} gauge",
    ]
    for terminal, by_reason in recent.items():
        lines += [
            f'{held}{{terminal="{escape_label(terminal)}",reason="{escape_label(reason)}"}} {count}'
            for reason, count in by_reason.items()
        ]
    lines += [
        f"# HELP {stopped} Terminals suspended (uploads refused), by who suspended them.",
        f"# TYPE {stopped} gauge",
    ]
    lines += [
        f'{stopped}{{terminal="{escape_label(terminal)}",source="{"automatic" if by == "automatic" else "staff"}"}} 1'
        for terminal, by in suspended.items()
    ]
    return "\n".join(lines) + "\n"


async def suspended_terminals(connection: asyncpg.Connection) -> dict[str, str]:
    rows = await connection.fetch(
        "select terminal_id, suspended_by from terminals where status = 'suspended' "
        "order by terminal_id limit $1",
        terminals_in_metrics_max,
    )
    return {row["terminal_id"]: row["suspended_by"] or "" for row in rows}
