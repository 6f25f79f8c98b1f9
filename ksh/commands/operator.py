"""`ksh operator`: bus operators, who run validators and earn the fares (add, list, show,
suspend). `ksh merchant` is the same for merchants; both are built here.

Each change is made by a named supervisor (`--as`, `--reason`) and written with what the admin
API writes (`gateways.terminal_api.registry`) and the staff actions log, in one transaction.
Uses DATABASE_URL or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ksh import acting
from ksh.cli import UserError
from ksh.database import run_with_database
from ksh.tables import plain, print_fields, print_json_lines, print_table, rupiah

if TYPE_CHECKING:
    from gateways.terminal_api.registry import PartyKind, PartyRow

supervisors_may = "a supervisor"


def register(subparsers: Any) -> None:
    register_party_commands(subparsers, "operator")


def register_party_commands(subparsers: Any, kind: str) -> None:
    """`ksh operator` or `ksh merchant`: add, list, show, suspend."""
    what = {
        "operator": "bus operators: run validators, earn the fares",
        "merchant": "merchants: run points of sale, are paid their sales less their fee",
    }[kind]
    parser = subparsers.add_parser(
        kind,
        help=f"{what} (add, list, show, suspend)",
        description=f"{kind.capitalize()}s: {what}. Changes are made by a named supervisor "
        "(--as, --reason) and logged. Uses DATABASE_URL or the embedded PostgreSQL.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = actions.add_parser(
        "add", help=f"register a new {kind} and its ledger account (an id taken is an error)"
    )
    add.add_argument("--id", required=True, help="its id: printable, 1 to 64 characters")
    add.add_argument("--name", default="", help="its name as people know it")
    if kind == "merchant":
        add.add_argument(
            "--fee-basis-points",
            type=int,
            default=0,
            metavar="N",
            help="the fee kept from each sale, in basis points (100 = 1 %%; default 0)",
        )
    acting.add_arguments(add, supervisors_may)
    add.set_defaults(handler=run_add, kind=kind)

    listing = actions.add_parser("list", help=f"every {kind}: status, terminals, bank account")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list, kind=kind)

    show = actions.add_parser(
        "show", help=f"one {kind} in full: account, balance, terminals, bank account, history"
    )
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="one JSON object")
    show.set_defaults(handler=run_show, kind=kind)

    suspend = actions.add_parser(
        "suspend",
        help=f"suspend a {kind}: its terminals are revoked and no new one is registered",
        description=f"Suspend a {kind}: every terminal of it is revoked (its uploads are "
        "refused from now on) and no terminal can be registered for it; what it is owed is "
        "still closed and paid at end of day.",
    )
    suspend.add_argument("id")
    acting.add_arguments(suspend, supervisors_may)
    suspend.set_defaults(handler=run_suspend, kind=kind)
    register_qris_command(actions, kind)


def register_qris_command(actions: Any, kind: str) -> None:
    """`ksh merchant|operator qris`: which acquirer takes QRIS for the party, in which MDR
    category."""
    from gateways.snap.qris import mdr_rates

    sells = (
        "its POS sell by QRIS (ksh pos --qris)"
        if kind == "merchant"
        else ("its validators sell rides by QRIS to riders without a card")
    )
    qris = actions.add_parser(
        "qris",
        help=f"let a {kind} take QRIS: its acquiring bank, its id there, its MDR category",
        description=f"Let a {kind} take QRIS, so {sells}: the acquiring bank "
        f"(a SNAP partner, see ksh partner), the {kind}'s id at that bank, and its MDR "
        "category (Bank Indonesia's rates: UMI 0.3 %% and nothing up to Rp 100.000; UKE, "
        "UME, UBE 0.7 %%; education 0.6 %%; BLU 0.4 %% (Trans Semarang is a BLU); "
        f"government 0 %%). Again for the same {kind} changes them.",
    )
    qris.add_argument("id", help=f"the {kind}")
    qris.add_argument("--acquirer", required=True, help="the acquiring bank's SNAP partner id")
    qris.add_argument(
        "--acquirer-merchant-id", required=True, help="the merchant's id at the acquirer"
    )
    qris.add_argument("--category", required=True, choices=sorted(mdr_rates))
    acting.add_arguments(qris, supervisors_may)
    qris.set_defaults(handler=run_qris, kind=kind)


def run_qris(arguments: argparse.Namespace) -> int:
    from gateways.snap import qris
    from gateways.snap.partners import load_partner
    from gateways.staff import party_roles

    reason = acting.reason_of(arguments)

    async def work(connection: Any) -> None:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, party_roles)
            if await load_partner(connection, arguments.acquirer) is None:
                raise UserError(f"no SNAP partner {arguments.acquirer} (see ksh partner list)")
            try:
                await qris.register_payee(
                    connection,
                    qris.Payee(qris.PayeeKind(arguments.kind), arguments.id),
                    partner_id=arguments.acquirer,
                    acquirer_merchant_id=arguments.acquirer_merchant_id,
                    mdr_category=arguments.category,
                )
            except qris.QrisError as error:
                raise UserError(error.detail) from None
            await acting.record(
                connection,
                member,
                f"set_{arguments.kind}_qris",
                arguments.id,
                reason,
                acquirer=arguments.acquirer,
                acquirer_merchant_id=arguments.acquirer_merchant_id,
                category=arguments.category,
            )

    run_with_database(work)
    print(
        f"{arguments.kind} {arguments.id} takes QRIS through {arguments.acquirer} "
        f"({arguments.category})"
    )
    return 0


def party_kind(arguments: argparse.Namespace) -> PartyKind:
    from gateways.terminal_api.registry import PartyKind

    return PartyKind(arguments.kind)


def run_add(arguments: argparse.Namespace) -> int:
    from gateways.staff import party_roles
    from gateways.terminal_api import registry

    reason = acting.reason_of(arguments)
    kind = party_kind(arguments)

    async def work(connection: Any) -> None:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, party_roles)
            try:
                if kind is registry.PartyKind.operator:
                    await registry.register_operator(
                        connection, arguments.id, arguments.name, new=True
                    )
                    detail: dict[str, Any] = {"name": arguments.name}
                else:
                    fee = arguments.fee_basis_points
                    await registry.register_merchant(
                        connection, arguments.id, arguments.name, fee, new=True
                    )
                    detail = {"name": arguments.name, "fee_basis_points": fee}
            except registry.RegistryError as error:
                raise UserError(str(error)) from None
            await acting.record(
                connection, member, f"register_{kind.value}", arguments.id, reason, **detail
            )

    run_with_database(work)
    print(f"{kind.value} {arguments.id} registered")
    return 0


def run_list(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import registry
    from settlement.end_of_day import party_accounts

    kind = party_kind(arguments)

    async def work(connection: Any) -> list[tuple[PartyRow, Any]]:
        found = await registry.parties(connection, kind)
        accounts = {a.party_id: a for a in await party_accounts(connection, kind.value)}
        return [(row, accounts.get(row.party_id)) for row in found]

    found = run_with_database(work)
    if arguments.json:
        print_json_lines({**plain(row), "bank_account": account} for row, account in found)
        return 0
    if not found:
        print(f"no {kind.value}s registered (add one with ksh {kind.value} add)")
        return 0
    merchant = kind is registry.PartyKind.merchant
    print_table(
        ["ID", "NAME", "STATUS", "TERMINALS", *(["FEE BP"] if merchant else []), "BANK ACCOUNT"],
        (
            [
                row.party_id,
                row.name,
                row.status.value,
                f"{row.terminals_active} of {row.terminals}",
                *([row.fee_basis_points] if merchant else []),
                _account_text(account),
            ]
            for row, account in found
        ),
    )
    return 0


def run_show(arguments: argparse.Namespace) -> int:
    from gateways import staff
    from gateways.terminal_api import books, registry
    from settlement.end_of_day import party_accounts

    kind = party_kind(arguments)

    async def work(connection: Any) -> dict[str, Any]:
        row = await registry.party(connection, kind, arguments.id)
        if row is None:
            raise UserError(f"no {kind.value} {arguments.id} (see ksh {kind.value} list)")
        balances = await books.balances(connection, [row.account_id])
        accounts = await party_accounts(connection, kind.value, arguments.id)
        terminals = await registry.terminal_listings(connection, owner=(kind, arguments.id))
        history = await staff.actions_on(
            connection,
            arguments.id,
            (f"register_{kind.value}", f"suspend_{kind.value}", "set_party_account"),
        )
        balance = balances.get(row.account_id)
        return {
            **plain(row),
            "balance_rupiah": balance.credit_balance if balance else 0,
            "bank_account": accounts[0] if accounts else None,
            "terminal_list": [
                {"terminal_id": t.terminal_id, "role": t.role, "status": t.status}
                for t in terminals
            ],
            "history": history,
        }

    shown = run_with_database(work)
    if arguments.json:
        print_json_lines([shown])
        return 0
    print_party(kind, shown)
    return 0


def print_party(kind: PartyKind, shown: dict[str, Any]) -> None:
    account_label = "revenue account" if kind.value == "operator" else "payable account"
    fields: dict[str, object] = {
        kind.value: shown["party_id"],
        "name": shown["name"] or "-",
        "status": shown["status"],
        account_label: f"{shown['account_id']} ({rupiah(shown['balance_rupiah'])})",
    }
    if kind.value == "merchant":
        fields["fee"] = f"{shown['fee_basis_points']} basis points per sale"
    account = shown["bank_account"]
    fields["bank account"] = (
        _account_text(account)
        if account
        else f"none (set one: ksh party set --{kind.value} {shown['party_id']} ...)"
    )
    fields["terminals"] = f"{shown['terminals_active']} active of {shown['terminals']}"
    print_fields(fields)
    for terminal in shown["terminal_list"]:
        print(f"  {terminal['terminal_id']}  {terminal['role']}  {terminal['status']}")
    print_history(shown["history"])


def print_history(history: list[dict[str, Any]]) -> None:
    from ledger.clock import jakarta

    print("history (WIB)")
    for entry in history:
        print(
            f"  {entry['at'].astimezone(jakarta):%Y-%m-%d %H:%M:%S}  {entry['username']} "
            f"({entry['role']})  {entry['action']}: {entry['reason']}"
        )
    if not history:
        print("  (no staff actions recorded)")


def run_suspend(arguments: argparse.Namespace) -> int:
    from gateways.staff import party_roles
    from gateways.terminal_api import registry

    reason = acting.reason_of(arguments)
    kind = party_kind(arguments)

    async def work(connection: Any) -> list[str]:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, party_roles)
            try:
                revoked = await registry.suspend_party(connection, kind, arguments.id)
            except registry.RegistryError as error:
                raise UserError(str(error)) from None
            await acting.record(
                connection,
                member,
                f"suspend_{kind.value}",
                arguments.id,
                reason,
                revoked_terminals=revoked,
            )
            return revoked

    revoked = run_with_database(work)
    print(
        f"{kind.value} {arguments.id} suspended; terminals revoked: "
        + (", ".join(revoked) if revoked else "none")
    )
    return 0


def _account_text(account: Any) -> str:
    """A bank account on file, as `ksh party list` shows it."""
    if account is None:
        return "none"
    bank = account.bank_code or "our bank"
    return f"{bank} {account.account_no} ({account.name})"
