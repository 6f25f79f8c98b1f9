"""`ksh reconcile`: import bank statements (MT940 or CSV), match them against what the books
expect, and list what is left for finance staff."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
from typing import Any

from ksh import argtypes
from ksh.cli import UserError
from ksh.commands.settle import parse_day, parse_time
from ksh.database import run_with_database
from ledger.clock import system_clock


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reconcile",
        help="import bank statements and match them against the books",
        description=__doc__ + " Uses DATABASE_URL or the embedded PostgreSQL.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    imports = actions.add_parser(
        "import", help="import statement files (a broken file imports nothing)"
    )
    imports.add_argument("files", nargs="+", type=argtypes.existing_file, metavar="FILE")
    imports.add_argument("--bank", required=True, help="the bank's code, e.g. 009")
    imports.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="[BANK=]ACCOUNT",
        help="our account at the bank: a statement for another account is refused (default: "
        "the source account of the bank's SNAP partner; with neither, the import is refused)",
    )
    imports.set_defaults(handler=run_import)

    run = actions.add_parser(
        "run",
        help="match open statement lines against expected movements",
        description="Match the open lines of imported statements (ksh reconcile import) against "
        "the movements the books expect: payouts sent, and the day's virtual-account "
        "collections. A line matches a movement of the same amount (within "
        "--amount-tolerance) and value date (within --date-tolerance); what matches nothing "
        "opens an exception, listed by `ksh reconcile exceptions` and on the finance pages.",
    )
    run.add_argument(
        "--day",
        type=parse_day,
        default=None,
        help="service day whose VA collections to expect (default: yesterday)",
    )
    run.add_argument(
        "--cutoff",
        type=parse_time,
        default=dt.time(2, 0),
        help="end of the service day next morning, HH:MM (default 02:00)",
    )
    run.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="BANK=ACCOUNT",
        help="our collection account per bank code",
    )
    run.add_argument(
        "--through", type=parse_day, default=None, help="statements are complete up to this day"
    )
    run.add_argument(
        "--amount-tolerance",
        type=argtypes.integer(0, 1_000_000, "rupiah"),
        default=0,
        help="rupiah a line may differ from its movement",
    )
    run.add_argument(
        "--date-tolerance",
        type=argtypes.integer(0, 31, "days"),
        default=2,
        help="days a line's value date may differ from its movement's",
    )
    run.set_defaults(handler=run_match)

    listing = actions.add_parser("exceptions", help="list open exceptions")
    listing.set_defaults(handler=run_exceptions)


def run_import(arguments: argparse.Namespace) -> int:
    from settlement.reconciliation import import_statement
    from settlement.statements import StatementError

    expected_account = parse_accounts(arguments.account, arguments.bank).get(arguments.bank)

    async def work(connection: Any) -> int:
        for path in arguments.files:
            try:
                result = await import_statement(
                    connection,
                    path,
                    arguments.bank,
                    getpass.getuser(),
                    expected_account=expected_account,
                    require_account=True,
                )
            except StatementError as error:
                raise UserError(f"{error} (nothing imported from {path.name})") from None
            except OSError as error:
                raise UserError(f"cannot read {path}: {error}") from None
            on = f" on account {', '.join(result.accounts)}" if result.accounts else ""
            print(f"{result.file_name}: {result.lines_in_file} lines, {result.lines_new} new{on}")
        return 0

    return run_with_database(work)


def parse_accounts(items: list[str], bank: str | None = None) -> dict[str, str]:
    """`--account BANK=ACCOUNT` options as {bank: account}; a bare ACCOUNT is `bank`'s."""
    accounts: dict[str, str] = {}
    for item in items:
        if "=" in item:
            code, _, account = item.partition("=")
        else:
            code, account = bank or "", item
        code, account = code.strip(), account.strip()
        if not code or not account:
            forms = "BANK=ACCOUNT or ACCOUNT" if bank else "BANK=ACCOUNT"
            raise UserError(f"--account takes {forms}, not {item!r}")
        if accounts.get(code, account) != account:
            raise UserError(
                f"--account gives bank {code} two accounts: {accounts[code]}, {account}"
            )
        accounts[code] = account
    return accounts


def run_match(arguments: argparse.Namespace) -> int:
    from settlement.end_of_day import EndOfDayConfig, cutoff_at
    from settlement.matching import MatchRules
    from settlement.reconciliation import expect_collections, expect_qris_settlements, reconcile

    accounts = parse_accounts(arguments.account)
    if arguments.amount_tolerance < 0 or arguments.date_tolerance < 0:
        raise UserError("tolerances are not negative")
    day = arguments.day or system_clock.today() - dt.timedelta(days=1)
    config = EndOfDayConfig(cutoff=arguments.cutoff)
    rules = MatchRules(arguments.amount_tolerance, arguments.date_tolerance)

    async def work(connection: Any) -> int:
        end = cutoff_at(day, config)
        start = end - dt.timedelta(days=1)
        expected = await expect_collections(
            connection, start, end, day, accounts, config.source_account_no
        )
        expected += await expect_qris_settlements(
            connection, start, end, accounts, config.source_account_no
        )
        report = await reconcile(
            connection, rules, now=system_clock.now(), statement_through=arguments.through
        )
        print(f"collections expected (new, VA top-ups and QRIS payments): {expected}")
        print(
            f"lines considered {report.lines_considered}, matched {report.lines_matched}, new matches {report.matches_new}, transfers booked {report.transfers_booked}"
        )
        for reason, count in report.exceptions_by_reason:
            print(f"  open: {reason} {count}")
        return 0

    return run_with_database(work)


def run_exceptions(arguments: argparse.Namespace) -> int:
    from settlement.views import exceptions, exceptions_count

    async def work(connection: Any) -> int:
        rows = await exceptions(connection, open_only=True)
        count = await exceptions_count(connection, open_only=True)
        for row in rows:
            where = f" {row['source_file']}:{row['source_line']}" if row["source_file"] else ""
            print(
                f"{row['exception_id']}\t{row['reason']}\tRp {row['amount_rupiah']:,}\t{row['detail']}{where}"
            )
        shown = f" (the first {len(rows)} listed)" if count > len(rows) else ""
        print(f"{count} open{shown}")
        return 0

    return run_with_database(work)
