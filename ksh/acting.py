"""Changes made from the command line in a staff member's name.

A command that creates money or changes a party takes `--as USERNAME` (a finance staff
account, `ksh settle staff USERNAME --role ...`, whose role may make the change: README, "Who
can do what") and `--reason TEXT`, and writes the change and its `staff_actions` row (who, in
what role, what, on what, why) in one transaction, as the admin API does. The row's detail
also says it came from `ksh` and which OS user ran it: whoever can run `ksh` against the
database can name anyone, so the OS user is kept beside the name given.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ksh.cli import UserError
from ledger.clock import system_clock

if TYPE_CHECKING:
    from gateways.staff import Role, StaffMember


def add_arguments(
    parser: Any,  # a parser or an argument group
    who_may: str,
    *,
    required: bool = True,
) -> None:
    """--as and --reason; `who_may` says which roles may (shown in the help)."""
    parser.add_argument(
        "--as",
        dest="acting_as",
        required=required,
        metavar="USERNAME",
        help=f"the staff member doing this, in their own name ({who_may})",
    )
    parser.add_argument(
        "--reason",
        required=required,
        help="why: written to the staff actions log with the change",
    )


def reason_of(arguments: argparse.Namespace) -> str:
    """The reason given, checked before anything is opened (the admin API's rule)."""
    from gateways.staff import reason_problem

    if arguments.acting_as is None or arguments.reason is None:
        raise UserError("say who does this and why: --as USERNAME --reason TEXT")
    problem = reason_problem(arguments.reason)
    if problem:
        raise UserError(problem)
    return str(arguments.reason.strip())


async def acting_member(
    connection: Any, arguments: argparse.Namespace, roles: Sequence[Role]
) -> StaffMember:
    """The staff member named by --as, if they exist and their role is one of `roles`."""
    from gateways.staff import Role, StaffMember

    username = arguments.acting_as.strip().lower()
    role = await connection.fetchval(
        "select role from settlement_staff where username = $1", username
    )
    if role is None:
        raise UserError(
            f"no staff member {username!r} (add one with ksh settle staff {username} --role ...)"
        )
    member = StaffMember(username, Role(role))
    if member.role not in roles:
        allowed = " or ".join(role.value for role in roles)
        article = "an" if member.role.value[0] in "aeiou" else "a"
        raise UserError(
            f"{username} is {article} {member.role.value}; only a {allowed} may do this"
        )
    return member


async def record(
    connection: Any,
    member: StaffMember,
    action: str,
    subject: str,
    reason: str,
    **detail: Any,
) -> None:
    """Write the change to `staff_actions` (call it inside the change's transaction)."""
    from gateways.staff import record_action

    await record_action(
        connection,
        username=member.username,
        role=member.role.value,
        action=action,
        subject=subject,
        reason=reason,
        now=system_clock.now(),
        detail={**detail, "via": "ksh", "os_user": getpass.getuser()},
    )
