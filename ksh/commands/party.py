"""`ksh party`: where each operator and merchant is paid (set, list).

End of day pays each party's settlement batch to the bank account on file
(`settlement.end_of_day`); a batch of a party with none is not paid and opens an exception.
Setting an account is done by a named supervisor (`--as`, `--reason`) and written to the staff
actions log with the account it replaces. Attempts already made keep the account they were
sent to. Uses DATABASE_URL or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
from typing import Any

from ksh import acting
from ksh.cli import UserError
from ksh.commands.operator import supervisors_may
from ksh.database import run_with_database
from ksh.tables import print_json_lines, print_table


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "party",
        help="operators' and merchants' bank accounts for payouts (set, list)",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    set_account = actions.add_parser(
        "set", help="put on file the bank account an operator or merchant is paid to"
    )
    who = set_account.add_mutually_exclusive_group(required=True)
    who.add_argument("--operator", metavar="ID", help="a registered operator")
    who.add_argument("--merchant", metavar="ID", help="a registered merchant")
    bank = set_account.add_mutually_exclusive_group(required=True)
    bank.add_argument(
        "--bank", metavar="CODE", help="the beneficiary's bank code (e.g. 113): paid interbank"
    )
    bank.add_argument(
        "--same-bank",
        action="store_true",
        help="the account is at the bank our payouts leave from: paid intrabank",
    )
    set_account.add_argument("--account", required=True, metavar="NUMBER", help="digits")
    set_account.add_argument(
        "--holder", required=True, metavar="NAME", help="the account holder's name"
    )
    acting.add_arguments(set_account, supervisors_may)
    set_account.set_defaults(handler=run_set)

    listing = actions.add_parser(
        "list", help="every operator and merchant with its bank account (or none)"
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list)


def run_set(arguments: argparse.Namespace) -> int:
    from gateways.staff import party_roles
    from settlement.end_of_day import PartyAccount, set_party_account

    reason = acting.reason_of(arguments)
    kind, party_id = (
        ("operator", arguments.operator)
        if arguments.operator is not None
        else ("merchant", arguments.merchant)
    )
    account = PartyAccount(
        kind, party_id, arguments.holder.strip(), arguments.bank or "", arguments.account
    )

    async def work(connection: Any) -> PartyAccount | None:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, party_roles)
            try:
                before = await set_party_account(connection, account)
            except ValueError as error:
                raise UserError(str(error)) from None
            await acting.record(
                connection,
                member,
                "set_party_account",
                party_id,
                reason,
                party_kind=kind,
                bank_code=account.bank_code,
                account_no=account.account_no,
                holder=account.name,
                replaced=None
                if before is None
                else {
                    "bank_code": before.bank_code,
                    "account_no": before.account_no,
                    "holder": before.name,
                },
            )
            return before

    before = run_with_database(work)
    print(
        f"{kind} {party_id} is paid to {account_text(account)}"
        + (f" (was {account_text(before)})" if before else "")
    )
    return 0


def account_text(account: Any) -> str:
    bank = f"bank {account.bank_code}" if account.bank_code else "our bank"
    return f"{account.account_no} at {bank}, {account.name}"


def run_list(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import registry
    from settlement.end_of_day import party_accounts

    async def work(connection: Any) -> list[dict[str, Any]]:
        accounts = {(a.party_kind, a.party_id): a for a in await party_accounts(connection)}
        rows = []
        for kind in registry.PartyKind:
            for party in await registry.parties(connection, kind):
                account = accounts.pop((kind.value, party.party_id), None)
                rows.append(_row(kind.value, party.party_id, party.status.value, account))
        # accounts on file for ids the registry does not know (set before it was kept here)
        for (kind_value, party_id), account in sorted(accounts.items()):
            rows.append(_row(kind_value, party_id, "not registered", account))
        return rows

    rows = run_with_database(work)
    if arguments.json:
        print_json_lines(rows)
        return 0
    if not rows:
        print("no operators or merchants registered (ksh operator add, ksh merchant add)")
        return 0
    print_table(
        ["KIND", "ID", "STATUS", "BANK", "ACCOUNT", "HOLDER"],
        (
            [
                row["party_kind"],
                row["party_id"],
                row["status"],
                row["bank_code"] if row["account_no"] is None or row["bank_code"] else "ours",
                row["account_no"] or "none",
                row["holder"],
            ]
            for row in rows
        ),
    )
    return 0


def _row(kind: str, party_id: str, status: str, account: Any) -> dict[str, Any]:
    return {
        "party_kind": kind,
        "party_id": party_id,
        "status": status,
        "bank_code": None if account is None else account.bank_code,
        "account_no": None if account is None else account.account_no,
        "holder": None if account is None else account.name,
    }
