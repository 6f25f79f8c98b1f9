"""What `/metrics` says of settlement, read from the database at scrape time (so the same from
every back office process, whichever ran the payout or the reconciliation: `ksh settle pay` and
`ksh reconcile run` are commands, not requests): payouts by state and how long the oldest
unfinished one has waited, and reconciliation exceptions still open, by reason.

Mounted by `ksh serve` (`install`), beside the finance pages.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from gateways import observability


def install(app: web.Application) -> None:
    observability.install(app)
    app[observability.metric_sources_key].append(settlement_metrics)


async def settlement_metrics(app: web.Application, connection: asyncpg.Connection) -> str:
    from gateways.backoffice import config_key

    now = app[config_key].clock.now()
    payouts = await connection.fetch(
        "select state, count(*) as payouts, coalesce(sum(amount_rupiah), 0) as rupiah "
        "from settlement_payouts group by state order by state"
    )
    oldest = await connection.fetchval(
        "select min(updated_at) from settlement_payouts "
        "where state in ('in_progress', 'unknown', 'not_found')"
    )
    exceptions = await connection.fetch(
        "select reason, count(*) as open from settlement_exceptions where resolved_at is null "
        "group by reason order by reason"
    )
    text = observability.gauge_text(
        "ksh_settlement_payouts",
        "Payout attempts by state (exported, succeeded, in_progress, failed, unknown, not_found).",
        [({"state": str(row["state"])}, row["payouts"]) for row in payouts],
    )
    text += observability.gauge_text(
        "ksh_settlement_payouts_rupiah",
        "Rupiah of payout attempts by state.",
        [({"state": str(row["state"])}, row["rupiah"]) for row in payouts],
    )
    text += observability.gauge_text(
        "ksh_settlement_payout_unsettled_seconds",
        "Seconds since the oldest payout without a final answer from the bank last changed.",
        [({}, max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)],
    )
    text += observability.gauge_text(
        "ksh_reconciliation_exceptions_open",
        "Reconciliation exceptions staff have not resolved yet, by reason.",
        [({"reason": str(row["reason"])}, row["open"]) for row in exceptions],
    )
    return text
