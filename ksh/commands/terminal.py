"""`ksh terminal`: validators and points of sale the back office accepts uploads from (add,
list, show, suspend, resume).

A terminal with too many records quarantined in a day is suspended automatically (its uploads
refused until a supervisor resumes it: `gateways.terminal_api.suspension`); `list` and `show`
say how many of its records were quarantined in the last 24 hours, and why.

A terminal is known by its id and its Ed25519 public key (what `ksh validator --init` or
`ksh pos --init` prints); a validator belongs to an operator, a POS to a merchant. Each change
is made by a named supervisor (`--as`, `--reason`) and written with what the admin API writes
(`gateways.terminal_api.registry`) and the staff actions log, in one transaction. Uses
DATABASE_URL or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ksh import acting
from ksh.cli import UserError
from ksh.commands.operator import print_history, supervisors_may
from ksh.database import run_with_database
from ksh.tables import plain, print_fields, print_json_lines, print_table

public_key_file_bytes_max = 4096


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "terminal",
        help="validators and points of sale: register, list, show, suspend (revoke)",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add", help="register a new terminal with its public key (an id taken is an error)"
    )
    add.add_argument("--id", required=True, help="its id: printable, 1 to 32 characters")
    add.add_argument(
        "--public-key",
        required=True,
        metavar="FILE|KEY",
        help="its Ed25519 public key, base64 (as `ksh validator --init` prints it), or a file "
        "holding it",
    )
    add.add_argument("--role", required=True, choices=("validator", "pos"))
    owner = add.add_mutually_exclusive_group(required=True)
    owner.add_argument("--operator", metavar="ID", help="the operator a validator belongs to")
    owner.add_argument("--merchant", metavar="ID", help="the merchant a POS belongs to")
    acting.add_arguments(add, supervisors_may)
    add.set_defaults(handler=run_add)

    listing = actions.add_parser("list", help="every terminal (or an owner's)")
    listed_owner = listing.add_mutually_exclusive_group()
    listed_owner.add_argument("--operator", metavar="ID", help="only this operator's")
    listed_owner.add_argument("--merchant", metavar="ID", help="only this merchant's")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list)

    show = actions.add_parser("show", help="one terminal in full, with its history")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(handler=run_show)

    suspend = actions.add_parser(
        "suspend",
        help="revoke a terminal: its uploads are refused from now on",
        description="Revoke a terminal (the admin API's revoke): its uploads and downloads are "
        "refused from now on. Registering it again with a new key (the admin API) "
        "reactivates it.",
    )
    suspend.add_argument("id")
    acting.add_arguments(suspend, supervisors_may)
    suspend.set_defaults(handler=run_suspend)

    resume = actions.add_parser(
        "resume",
        help="lift a terminal's suspension: its uploads are accepted again",
        description="Lift a suspension (automatic, after too many quarantined records): the "
        "terminal uploads what its journal kept. Look at its quarantined records first "
        "(ksh quarantine list). A revoked terminal is registered again instead.",
    )
    resume.add_argument("id")
    acting.add_arguments(resume, supervisors_may)
    resume.set_defaults(handler=run_resume)


def public_key_of(given: str) -> str:
    """The key as text: read from the file `given` names, or `given` itself."""
    path = Path(given)
    try:
        if not path.is_file():
            return given.strip()
        if path.stat().st_size > public_key_file_bytes_max:
            raise UserError(f"{given} is too big to be a public key")
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read the public key {given}: {error}") from None


def owner_of(arguments: argparse.Namespace) -> tuple[Any, str] | None:
    from gateways.terminal_api.registry import PartyKind

    if arguments.operator is not None:
        return PartyKind.operator, arguments.operator
    if arguments.merchant is not None:
        return PartyKind.merchant, arguments.merchant
    return None


def run_add(arguments: argparse.Namespace) -> int:
    from gateways.staff import party_roles
    from gateways.terminal_api import registry

    reason = acting.reason_of(arguments)
    key = public_key_of(arguments.public_key)
    role = registry.TerminalRole(arguments.role)

    async def work(connection: Any) -> None:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, party_roles)
            try:
                await registry.register_terminal(
                    connection,
                    arguments.id,
                    key,
                    role,
                    operator_id=arguments.operator,
                    merchant_id=arguments.merchant,
                    new=True,
                )
            except registry.RegistryError as error:
                raise UserError(str(error)) from None
            await acting.record(
                connection,
                member,
                "register_terminal",
                arguments.id,
                reason,
                role=role.value,
                owner=arguments.operator or arguments.merchant,
            )

    run_with_database(work)
    owner = (
        f"operator {arguments.operator}"
        if arguments.operator
        else (f"merchant {arguments.merchant}")
    )
    print(f"terminal {arguments.id} registered: {role.value} of {owner}")
    return 0


def run_list(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import registry

    async def work(connection: Any) -> list[dict[str, Any]]:
        from gateways.terminal_api import suspension
        from ledger.clock import system_clock

        found = await registry.terminal_listings(connection, owner=owner_of(arguments))
        held = await suspension.quarantined_recently(connection, now=system_clock.now())
        return [{**plain(t), "quarantined_24h": held.get(t.terminal_id, {})} for t in found]

    found = run_with_database(work)
    if arguments.json:
        print_json_lines(found)
        return 0
    if not found:
        print("no terminals registered (add one with ksh terminal add)")
        return 0
    print_table(
        ["ID", "ROLE", "OWNER", "STATUS", "NEXT BATCH", "FEED ENDS", "QUARANTINED 24H"],
        (
            [
                t["terminal_id"],
                t["role"],
                f"{t['owner_kind']} {t['owner_id']}",
                t["status"],
                t["next_batch_sequence"],
                t["feed_service_end"],
                sum(t["quarantined_24h"].values()),
            ]
            for t in found
        ),
    )
    return 0


def run_show(arguments: argparse.Namespace) -> int:
    from gateways import staff
    from gateways.terminal_api import registry, suspension
    from ledger.clock import jakarta, system_clock

    async def work(connection: Any) -> dict[str, Any]:
        found = await registry.terminal_listings(connection, terminal_id=arguments.id)
        if not found:
            raise UserError(f"no terminal {arguments.id} (see ksh terminal list)")
        history = await staff.actions_on(
            connection,
            arguments.id,
            ("register_terminal", "revoke_terminal", "suspend_terminal", "resume_terminal"),
        )
        held = await suspension.quarantined_recently(
            connection, now=system_clock.now(), terminal_id=arguments.id
        )
        shown: dict[str, Any] = plain(found[0])
        return {**shown, "quarantined_24h": held.get(arguments.id, {}), "history": history}

    shown = run_with_database(work)
    if arguments.json:
        print_json_lines([shown])
        return 0
    print_fields(
        {
            "terminal": shown["terminal_id"],
            "role": shown["role"],
            "owner": f"{shown['owner_kind']} {shown['owner_id']}",
            "status": shown["status"],
            "public key": shown["public_key"],
            "card terminal number": shown["card_terminal_number"],
            "next batch": shown["next_batch_sequence"],
            "fare feed ends": shown["feed_service_end"],
            "registered": f"{shown['registered_at'].astimezone(jakarta):%Y-%m-%d %H:%M:%S} WIB",
            "quarantined (24 h)": suspension.reasons_text(shown["quarantined_24h"]) or "none",
            **(
                {
                    "suspended": f"{shown['suspended_at'].astimezone(jakarta):%Y-%m-%d %H:%M:%S} "
                    f"WIB by {shown['suspended_by']}: {shown['suspended_reason']}"
                }
                if shown["suspended_at"]
                else {}
            ),
        }
    )
    print_history(shown["history"])
    return 0


def run_suspend(arguments: argparse.Namespace) -> int:
    from gateways.staff import party_roles
    from gateways.terminal_api import registry

    reason = acting.reason_of(arguments)

    async def work(connection: Any) -> None:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, party_roles)
            found = await registry.terminal(connection, arguments.id, for_update=True)
            if found is None:
                raise UserError(f"no terminal {arguments.id} (see ksh terminal list)")
            if found.status is registry.TerminalStatus.revoked:
                raise UserError(f"terminal {arguments.id} is already revoked")
            await registry.revoke_terminal(connection, arguments.id)
            await acting.record(connection, member, "revoke_terminal", arguments.id, reason)

    run_with_database(work)
    print(f"terminal {arguments.id} revoked: its uploads are refused from now on")
    return 0


def run_resume(arguments: argparse.Namespace) -> int:
    from gateways.staff import party_roles
    from gateways.terminal_api import registry, suspension

    reason = acting.reason_of(arguments)

    async def work(connection: Any) -> None:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, party_roles)
            found = await registry.terminal(connection, arguments.id, for_update=True)
            if found is None:
                raise UserError(f"no terminal {arguments.id} (see ksh terminal list)")
            if found.status is not registry.TerminalStatus.suspended:
                raise UserError(f"terminal {arguments.id} is {found.status.value}, not suspended")
            await suspension.resume(connection, arguments.id)
            await acting.record(connection, member, "resume_terminal", arguments.id, reason)

    run_with_database(work)
    print(f"terminal {arguments.id} resumed: its uploads are accepted again")
    return 0
