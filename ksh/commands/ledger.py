"""`ksh ledger`: check the books, export them, list accounts, show an account's balance, expire
holds."""

from __future__ import annotations

import argparse
import contextlib
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from ksh import argtypes
from ksh.cli import UserError

if TYPE_CHECKING:
    from ledger.store import ExpirySweep
from ksh.database import run_with_database

Result = TypeVar("Result")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ledger",
        help="check, export and query the ledger",
        description="The double-entry ledger in the back office database (DATABASE_URL, or the "
        "embedded PostgreSQL). Each action migrates the schema first.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="recompute balances and verify the hash chain; exit 1 if anything differs",
    )
    check.set_defaults(handler=run_check)
    export = actions.add_parser("export", help="write the books as Beancount or CSV")
    export.add_argument("--format", choices=("beancount", "csv"), required=True)
    export.add_argument(
        "--out", type=argtypes.new_file, help="file to write (default: standard output)"
    )
    export.set_defaults(handler=run_export)
    accounts = actions.add_parser(
        "accounts",
        help="list accounts: id, kind, owner, balance",
        description="Accounts by kind and owner, with their posted balance (credits minus "
        "debits: positive for what we owe, such as a purse or a payable; negative for what "
        "we hold, such as a bank clearing account) and what is pending.",
    )
    accounts.add_argument("--kind", choices=[kind.value for kind in account_kinds()])
    accounts.add_argument("--owner", metavar="TEXT", help="only owners containing TEXT (any case)")
    accounts.add_argument(
        "--limit",
        type=int,
        default=accounts_listed_default,
        help="at most this many (default %(default)s)",
    )
    accounts.add_argument("--json", action="store_true", help="one JSON object per line")
    accounts.set_defaults(handler=run_accounts)
    balance = actions.add_parser(
        "balance",
        help="an account's totals, now or at a time",
        description="An account's totals, named by its id or by its kind and owner "
        "(--owner card_purse:6032900000000001; see ksh ledger accounts).",
    )
    named = balance.add_mutually_exclusive_group(required=True)
    named.add_argument("account", nargs="?", help="account id (a UUID)")
    named.add_argument(
        "--owner",
        metavar="KIND:OWNER",
        help="the account of this kind and owner, e.g. card_purse:6032900000000001 or "
        "operator_revenue:trans-semarang",
    )
    balance.add_argument("--at", help="ISO 8601 time, e.g. 2026-11-24T08:00:00+07:00")
    balance.set_defaults(handler=run_balance)
    expire = actions.add_parser(
        "expire",
        help="void the pending transfers (holds) whose timeout has passed",
        description="Voids every hold past its timeout (code expiry), in ledger batches; safe to "
        "run again or from several places at once (each expiry has a stable id). Run it "
        "periodically, e.g. from cron or before end of day.",
    )
    expire.set_defaults(handler=run_expire)


def run_check(arguments: argparse.Namespace) -> int:
    from ledger.audit import check_ledger

    problems = run_with_database(check_ledger)
    for problem in problems:
        print(f"{problem.check}: {problem.subject}: {problem.detail}")
    if problems:
        print(f"ledger check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print("ledger check: balances recomputed, hash chain verified, nothing differs")
    return 0


@contextlib.contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    if path is None:
        yield sys.stdout
        return
    try:
        handle = path.open("w", encoding="utf-8", newline="")
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror}") from error
    with handle:
        yield handle


def run_export(arguments: argparse.Namespace) -> int:
    from ledger.export import write_beancount, write_csv

    writer = write_beancount if arguments.format == "beancount" else write_csv
    with _output(arguments.out) as out:
        run_with_database(lambda connection: writer(connection, out))
    return 0


accounts_listed_default = 1000


def account_kinds() -> list[Any]:
    from ledger.records import AccountKind

    return list(AccountKind)


def run_accounts(arguments: argparse.Namespace) -> int:
    from ksh.tables import print_json_lines, print_table
    from ledger.records import AccountKind
    from ledger.store import find_accounts

    if arguments.limit < 1:
        raise UserError("--limit must be at least 1")
    kind = None if arguments.kind is None else AccountKind(arguments.kind)
    found = run_with_database(
        lambda connection: find_accounts(
            connection, kind=kind, owner_contains=arguments.owner, limit=arguments.limit + 1
        )
    )
    more = len(found) > arguments.limit
    found = found[: arguments.limit]
    if arguments.json:
        print_json_lines(
            {
                "id": booked.account.id,
                "kind": booked.account.kind,
                "owner": booked.account.owner_reference,
                "balance_rupiah": booked.balances.credit_balance,
                "pending_rupiah": booked.balances.credits_pending - booked.balances.debits_pending,
            }
            for booked in found
        )
        return 0
    if not found:
        print("no accounts" + (" match" if arguments.kind or arguments.owner else " yet"))
        return 0
    print_table(
        ["ID", "KIND", "OWNER", "BALANCE", "PENDING"],
        (
            [
                booked.account.id,
                booked.account.kind.value,
                booked.account.owner_reference,
                booked.balances.credit_balance,
                booked.balances.credits_pending - booked.balances.debits_pending,
            ]
            for booked in found
        ),
    )
    if more:
        print(f"(the first {arguments.limit}; narrow with --kind or --owner, or raise --limit)")
    return 0


def account_named(arguments: argparse.Namespace) -> uuid.UUID:
    """The account id given, or the one account of --owner KIND:OWNER."""
    from ledger.records import AccountKind
    from ledger.store import find_accounts

    if arguments.owner is None:
        try:
            return uuid.UUID(arguments.account)
        except ValueError as error:
            raise UserError(f"not an account id (UUID): {arguments.account!r}") from error
    kind_text, colon, owner = arguments.owner.partition(":")
    if not colon or not owner:
        raise UserError("--owner is KIND:OWNER, e.g. card_purse:6032900000000001")
    if kind_text not in AccountKind.__members__:
        raise UserError(
            f"no account kind {kind_text!r} (one of: {', '.join(AccountKind.__members__)})"
        )
    found = run_with_database(
        lambda connection: find_accounts(
            connection, kind=AccountKind(kind_text), owner=owner, limit=2
        )
    )
    if not found:
        raise UserError(f"no {kind_text} account of {owner!r} (see ksh ledger accounts)")
    if len(found) > 1:
        raise UserError(
            f"several {kind_text} accounts of {owner!r}: give the id (ksh ledger accounts "
            f"--kind {kind_text} --owner {owner})"
        )
    return found[0].account.id


def run_balance(arguments: argparse.Namespace) -> int:
    from ledger.store import account_balances

    account_id = account_named(arguments)
    at = None
    if arguments.at is not None:
        try:
            at = datetime.fromisoformat(arguments.at)
        except ValueError as error:
            raise UserError(f"not an ISO 8601 time: {arguments.at!r}") from error
        if at.tzinfo is None:
            raise UserError("--at needs a time zone, e.g. 2026-11-24T08:00:00+07:00")
        at = at.astimezone(UTC)
    balances = run_with_database(lambda connection: account_balances(connection, account_id, at=at))
    if balances is None:
        raise UserError(f"no such account: {account_id}")
    print(f"account           {account_id}")
    if arguments.owner is not None:
        print(f"owner             {arguments.owner}")
    if at is not None:
        print(f"at                {at.isoformat()}")
    print(f"debits_pending    {balances.debits_pending}")
    print(f"debits_posted     {balances.debits_posted}")
    print(f"credits_pending   {balances.credits_pending}")
    print(f"credits_posted    {balances.credits_posted}")
    print(f"credit_balance    {balances.credit_balance}")
    return 0


def run_expire(arguments: argparse.Namespace) -> int:
    from ledger.store import expire_due_holds

    return report_expiry(run_with_database(expire_due_holds))


def report_expiry(sweep: ExpirySweep) -> int:
    """Print what a sweep did; exit status 1 if a void was refused (reported, not hidden)."""
    already = f", {sweep.already} already" if sweep.already else ""
    print(f"ledger expire: {sweep.voided} hold(s) voided{already}")
    for result, count in sweep.refused:
        print(f"ledger expire: {count} void(s) refused: {result}", file=sys.stderr)
    return 1 if sweep.refused else 0
