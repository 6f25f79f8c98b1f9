"""`ksh deny`: the deny list terminals hold, as staff keep it.

Every entry says why and where it came from: an automatic rule of the back office (a cloned or
tampered card: `counter_repeat`, `balance_mismatch`) or a person (`ksh cards block`). Staff
review the automatic entries (`review`: kept, with a note) and lift entries that were wrong
(`lift`, with a note): a fraud entry is lifted by two people, one who asks and a supervisor
other than them. A lift reaches the terminals at their next sync, as a block does; the history
of every card's entries is kept (`show`). Uses DATABASE_URL or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
from typing import Any

from ksh import acting
from ksh.cli import UserError
from ksh.commands.cards import clerks_may, run_desk_change
from ksh.database import run_with_database


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "deny",
        help="the deny list: review automatic entries, lift wrong ones (four eyes for fraud)",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the entries as they stand, newest first")
    listing.add_argument(
        "--unreviewed", action="store_true", help="only automatic entries nobody has reviewed"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list)
    show = actions.add_parser("show", help="a card's entry and its whole history")
    show.add_argument("number", help="the card number")
    show.set_defaults(handler=run_show)
    review = actions.add_parser(
        "review", help="keep an automatic entry after looking at it (--reason is the note)"
    )
    review.add_argument("number", help="the card number")
    acting.add_arguments(review, clerks_may)
    review.set_defaults(handler=run_review)
    lift = actions.add_parser(
        "lift",
        help="take a card off the deny list (--reason is the note); a fraud entry waits for a "
        "supervisor other than the one who asked",
    )
    lift.add_argument("number", help="the card number")
    acting.add_arguments(lift, clerks_may)
    lift.set_defaults(handler=run_lift)


def run_list(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import card_desk
    from ksh.tables import print_json_lines, print_table

    async def work(connection: Any) -> list[Any]:
        return await card_desk.deny_entries(connection, unreviewed=arguments.unreviewed)

    entries = run_with_database(work)
    if arguments.json:
        print_json_lines(entries)
        return 0
    print_table(
        ("card", "reason", "source", "by", "added", "reviewed by", "lift asked by"),
        [
            (
                entry.card_number,
                entry.reason,
                entry.source.value,
                entry.added_by or None,
                f"{entry.added_at:%Y-%m-%d %H:%M}",
                entry.reviewed_by,
                entry.lift_requested_by,
            )
            for entry in entries
        ],
    )
    return 0


def run_show(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import card_desk
    from ksh.tables import print_table

    async def work(connection: Any) -> list[Any]:
        return await card_desk.deny_history(connection, arguments.number)

    history = run_with_database(work)
    if not history:
        raise UserError(f"card {arguments.number} was never on the deny list")
    print_table(
        ("change", "at", "reason", "source", "by", "note"),
        [
            (
                change.change,
                f"{change.at:%Y-%m-%d %H:%M}",
                change.reason,
                change.source.value,
                change.username or None,
                change.note or None,
            )
            for change in history
        ],
    )
    return 0


def run_review(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import card_desk

    async def change(connection: Any, member: Any, now: Any) -> None:
        await card_desk.review_entry(
            connection, arguments.number, arguments.reason, username=member.username, now=now
        )

    run_desk_change(arguments, "review_deny_entry", arguments.number, change)
    print(f"card {arguments.number} stays on the deny list (reviewed)")
    return 0


def run_lift(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import card_desk

    async def change(connection: Any, member: Any, now: Any) -> Any:
        return await card_desk.lift_entry(
            connection, arguments.number, arguments.reason, member, now=now
        )

    outcome = run_desk_change(arguments, "lift_deny_entry", arguments.number, change)
    if outcome is card_desk.LiftOutcome.lifted:
        print(f"card {arguments.number} lifted: terminals let it through from their next sync")
        print(
            "a card blocked on its chip (ksh cards show says so) stays blocked until an issuing "
            "desk unblocks it: ksh card unblock --reader NAME --keystore FILE --as USERNAME --reason TEXT"
        )
    else:
        print(
            f"card {arguments.number}: a fraud entry; the lift waits for a supervisor other "
            "than you (ksh deny lift again, as them)"
        )
    return 0
