"""`ksh quarantine`: upload records the back office did not believe as their terminal reported
them (a sale from a validator, a POS reporting another merchant's sale, a card transaction the
card's own MAC does not prove, a credit nobody paid for). Their card money waits in suspense;
no party is paid until supervisors decide:

  ksh quarantine release TERMINAL/SEQ --as USER --note TEXT     pay it to the terminal's party
  ksh quarantine write-off TERMINAL/SEQ --as USER --note TEXT   suspense against write-offs

Money moves only when two supervisors agree: the first asks, a second runs the same command
(`gateways.terminal_api.quarantine`). Uses DATABASE_URL or the embedded PostgreSQL."""

from __future__ import annotations

import argparse
import json
from typing import Any

quarantine_listed_max = 1_000


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "quarantine",
        help="upload records held apart, whose card money waits in suspense: list, release, "
        "write off",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the open quarantine, oldest first")
    listing.add_argument("--all", action="store_true", help="resolved records too")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list)
    for name, resolution, help_text in (
        ("release", "release", "pay a held record to its terminal's party (two supervisors)"),
        ("write-off", "write_off", "write a held record off against the issuer (two supervisors)"),
    ):
        action = actions.add_parser(
            name,
            help=help_text,
            description=f"{help_text[0].upper()}{help_text[1:]}: the first supervisor asks, a "
            "second runs the same command and it is booked, once (a write-off that moves no "
            "money takes one). A credit nobody paid for, or a record the card did not prove, "
            "can only be written off.",
        )
        action.add_argument("entry", metavar="TERMINAL/SEQUENCE")
        action.add_argument(
            "--as",
            dest="acting_as",
            required=True,
            metavar="USERNAME",
            help="the supervisor doing this, in their own name",
        )
        action.add_argument("--note", required=True, help="why: kept with the record")
        action.set_defaults(handler=run_resolve, resolution=resolution)


def run_list(arguments: argparse.Namespace) -> int:
    from ksh.database import run_with_database

    async def rows(connection: Any) -> list[dict[str, Any]]:
        found = await connection.fetch(
            """select q.terminal_id, q.sequence, r.kind, r.status, r.card_number, r.card_counter,
                      r.amount_rupiah, r.merchant_id, q.reason, q.detail, q.quarantined_at,
                      q.state, q.requested_by, q.request_note, q.approved_by, q.resolved_by,
                      q.resolved_at, q.resolution_note, q.resolution_rupiah
                 from quarantined_records q join card_records r using (terminal_id, sequence)
                where $1 or q.state not in ('released', 'written_off')
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
                + (
                    f" [{row['state']}"
                    + (f" by {row['requested_by']}" if row["requested_by"] else "")
                    + (f", confirmed by {row['approved_by']}" if row["approved_by"] else "")
                    + "]"
                    if row["state"] != "open"
                    else ""
                )
            )
    if not found and not arguments.json:
        print("nothing in quarantine")
    return 0


def run_resolve(arguments: argparse.Namespace) -> int:
    from gateways.staff import Role, reason_problem
    from gateways.terminal_api import quarantine
    from ksh import acting
    from ksh.cli import UserError
    from ksh.database import run_with_database
    from ledger.clock import system_clock

    try:
        key = quarantine.EntryKey.parse(arguments.entry)
    except ValueError as error:
        raise UserError(str(error)) from None
    if (problem := reason_problem(arguments.note)) is not None:
        raise UserError(f"--note {problem.removeprefix('reason ')}")
    resolution = quarantine.Resolution(arguments.resolution)

    async def work(connection: Any) -> quarantine.Resolved:
        member = await acting.acting_member(connection, arguments, (Role.supervisor,))
        return await quarantine.resolve(
            connection, key, resolution, member, arguments.note, now=system_clock.now()
        )

    resolved = run_with_database(work)
    what = "release" if resolution is quarantine.Resolution.release else "write-off"
    done = quarantine.ResolveResult
    if resolved.result is done.awaiting_second:
        print(
            f"{what} of {key} (Rp {resolved.rupiah:,}) asked by {arguments.acting_as.strip().lower()}: a second "
            f"supervisor confirms it with the same command"
        )
        return 0
    if resolved.result is not done.done:
        raise UserError(f"{key}: {resolved.result.value.replace('_', ' ')}: {resolved.detail}")
    moved = f"Rp {resolved.rupiah:,} booked" if resolved.transfer_ids else "no money moved"
    acting_as = arguments.acting_as.strip().lower()  # as `acting.acting_member` reads it
    by = resolved.requested_by
    confirmed = "" if by == acting_as else f", asked by {by}"
    state = quarantine.final_state[resolution].replace("_", " ")
    print(f"{key} {state}: {moved} (by {acting_as}{confirmed})")
    return 0
