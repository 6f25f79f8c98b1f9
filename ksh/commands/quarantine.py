"""`ksh quarantine`: upload records the back office did not believe as their terminal reported
them (a sale from a validator, a POS reporting another merchant's sale). Their card money
waits in suspense; no party is paid until staff decide."""

from __future__ import annotations

import argparse
import json
from typing import Any

quarantine_listed_max = 1_000


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "quarantine",
        help="list upload records held apart, whose card money waits in suspense",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the open quarantine, oldest first")
    listing.add_argument("--all", action="store_true", help="resolved records too")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list)


def run_list(arguments: argparse.Namespace) -> int:
    from ksh.database import run_with_database

    async def rows(connection: Any) -> list[dict[str, Any]]:
        found = await connection.fetch(
            """select q.terminal_id, q.sequence, r.kind, r.status, r.card_number, r.card_counter,
                      r.amount_rupiah, r.merchant_id, q.reason, q.detail, q.quarantined_at,
                      q.resolved_by, q.resolved_at
                 from quarantined_records q join card_records r using (terminal_id, sequence)
                where $1 or q.resolved_at is null
                order by q.quarantined_at, q.terminal_id, q.sequence
                limit $2""",
            arguments.all,
            quarantine_listed_max,
        )
        return [dict(row) for row in found]

    found = run_with_database(rows)
    for row in found:
        if arguments.json:
            print(json.dumps(row, default=str, sort_keys=True))
        else:
            print(
                f"{row['quarantined_at']:%Y-%m-%d %H:%M} {row['terminal_id']}/{row['sequence']} "
                f"card {row['card_number']}#{row['card_counter']} {row['kind']} {row['status']} "
                f"Rp {row['amount_rupiah']:,}: {row['reason']} ({row['detail']})"
                + (f" resolved by {row['resolved_by']}" if row["resolved_by"] else "")
            )
    if not found and not arguments.json:
        print("nothing in quarantine")
    return 0
