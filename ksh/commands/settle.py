"""`ksh settle`: end of day (close payables into settlement batches, pay them out host-to-host or
export a bulk-transfer file), the day's close status, and finance staff accounts."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import sys
from typing import Any

from ksh import acting, argtypes
from ksh.cli import UserError
from ksh.database import connect, run_with_database
from ledger.clock import system_clock


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "settle",
        help="end of day: settlement batches, payouts, day status, finance staff",
        description=__doc__ + " Uses DATABASE_URL or the embedded PostgreSQL.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    def with_day(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--day",
            type=parse_day,
            default=None,
            help="service day YYYY-MM-DD (default: yesterday, Jakarta)",
        )
        sub.add_argument(
            "--cutoff",
            type=parse_time,
            default=dt.time(2, 0),
            help="end of the service day next morning, HH:MM (default 02:00)",
        )
        sub.add_argument("--source-bank", default="009", help="bank code our payouts leave from")
        sub.add_argument(
            "--source-account",
            default=None,
            help="our account at that bank (default: the partner's, for pay)",
        )

    close = actions.add_parser("close", help="close every payable owed at the cut-off into a batch")
    with_day(close)
    close.set_defaults(handler=run_close)

    pay = actions.add_parser(
        "pay",
        help="pay the day's unpaid batches through a SNAP partner bank",
        description="Pay each of the day's batches with no payout yet, and ask the bank again "
        "about payouts left without an answer. Says each batch it could not pay and the "
        "exception that stands for it (no bank account on file, refused, no final answer); "
        "exit status 1 when there is one.",
    )
    with_day(pay)
    pay.add_argument("--partner", required=True, help="the bank's partner id (see ksh partner)")
    pay.add_argument(
        "--key",
        type=argtypes.existing_file,
        required=True,
        help="our RSA private key (PEM) for the access token",
    )
    pay.set_defaults(handler=run_pay)

    export = actions.add_parser(
        "export", help="write the day's unpaid batches as a bulk-transfer CSV instead"
    )
    with_day(export)
    export.add_argument(
        "--out", type=argtypes.new_file, required=True, help="the CSV file to write"
    )
    export.set_defaults(handler=run_export)

    status = actions.add_parser(
        "status",
        help="is the day closed: exceptions open, unexplained rupiah, what quarantine holds",
        description="Whether a service day is closed: its statement lines (matched, written "
        "off, open), the exceptions still open, the rupiah the books cannot explain and the "
        "difference between bank and books, and what the day's uploads held in quarantine. Exit status 0 when the day is closed; 1 when it "
        "is not, or was never closed with `ksh settle close` (then it says so).",
    )
    status.add_argument(
        "--day",
        type=parse_day,
        default=None,
        help="service day YYYY-MM-DD (default: yesterday, Jakarta)",
    )
    status.set_defaults(handler=run_status)

    staff = actions.add_parser(
        "staff",
        help="finance staff: add or update an account, unlock it, issue or revoke its admin "
        "API token, end its sessions",
        description="With --role: add USERNAME or set their password and role (password from "
        "KSH_STAFF_PASSWORD or a prompt; their sessions end). --unlock clears the wrong "
        "passwords counted against USERNAME. --issue-token prints a new bearer token for the "
        "admin API, acting in the account's role. --revoke-tokens and --end-sessions end "
        "those. Every change but --role names why (--reason) and is written to staff_actions "
        "with your OS user name.",
    )
    staff.add_argument("username")
    what = staff.add_mutually_exclusive_group(required=True)
    what.add_argument("--role", choices=("clerk", "supervisor", "auditor"))
    what.add_argument("--unlock", action="store_true", help="clear the wrong-password count")
    what.add_argument("--issue-token", action="store_true", help="print a new staff token")
    what.add_argument("--revoke-tokens", action="store_true", help="revoke every staff token")
    what.add_argument("--end-sessions", action="store_true", help="log them out everywhere")
    staff.add_argument("--reason", default="", help="why (required but with --role)")
    staff.add_argument("--label", default="", help="--issue-token: what the token is for")
    staff.set_defaults(handler=run_staff)

    add_limit_parser(actions)


def add_limit_parser(actions: Any) -> None:
    limit = actions.add_parser(
        "limit",
        help="the four-eyes limits (refund, write-off): show them, or set one (a supervisor; "
        "a raise takes a second)",
        description="Above a limit, money moves only once a second person agrees: a "
        "complaint's refund or a cash refund at the counter (refund), an unexplained statement "
        "line written off to suspense (write-off). Without RUPIAH: the limits in force, a "
        "raise waiting, the last changes. With it: lowering takes effect at once; raising "
        "takes effect when a second supervisor runs the same command. Every `ksh serve` and "
        "`ksh` command reads the same figure (default Rp 1,000,000).",
    )
    limit.add_argument("name", nargs="?", choices=("refund", "write-off"))
    limit.add_argument(
        "rupiah", nargs="?", type=argtypes.integer(0, unit="rupiah"), metavar="RUPIAH"
    )
    acting.add_arguments(limit, "a supervisor", required=False)
    limit.set_defaults(handler=run_limit)


def parse_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a day is YYYY-MM-DD") from None


def parse_time(text: str) -> dt.time:
    try:
        return dt.time.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a time is HH:MM") from None


def day_of(arguments: argparse.Namespace) -> dt.date:

    return arguments.day or system_clock.today() - dt.timedelta(days=1)


def config_of(arguments: argparse.Namespace) -> Any:
    from settlement.end_of_day import EndOfDayConfig

    return EndOfDayConfig(
        source_bank=arguments.source_bank,
        source_account_no=arguments.source_account or EndOfDayConfig().source_account_no,
        cutoff=arguments.cutoff,
    )


def run_close(arguments: argparse.Namespace) -> int:
    from settlement.end_of_day import close_day

    async def work(connection: Any) -> int:
        batches = await close_day(
            connection, day_of(arguments), config_of(arguments), now=system_clock.now()
        )
        for batch in batches:
            print(
                f"{batch.batch_id} {batch.party_kind:8} {batch.party_id:20} gross {batch.gross_rupiah:>14,} fees {batch.fees_rupiah:>10,} net {batch.net_rupiah:>14,}"
            )
        print(f"{len(batches)} new batches for {day_of(arguments)}")
        return 0

    return run_with_database(work)


def run_pay(arguments: argparse.Namespace) -> int:
    import dataclasses

    import aiohttp
    import asyncpg

    from gateways.snap.client import BankClient
    from gateways.snap.partners import bank_connection, load_partner
    from gateways.snap.signature import load_private_key
    from ksh.schema import migrate_all
    from ledger.database import server_url
    from settlement.end_of_day import open_payout_exceptions, pay_day

    try:
        private_key = arguments.key.read_bytes()
        load_private_key(private_key)
    except (OSError, ValueError, TypeError) as error:  # TypeError: an encrypted key
        raise UserError(f"cannot load our private key {arguments.key}: {error}") from None

    async def main(url: str) -> int:
        connection = await connect(url)
        try:
            await migrate_all(connection)
            partner = await load_partner(connection, arguments.partner)
            open_before = {
                e.exception_id for e in await open_payout_exceptions(connection, day_of(arguments))
            }
        finally:
            await connection.close()
        if partner is None:
            raise UserError(f"no partner {arguments.partner}; add it with ksh partner add")
        if not partner.base_url:
            raise UserError(f"partner {arguments.partner} has no --base-url to call")
        # Payouts leave from the account registered with the partner unless told otherwise:
        # the statement of that account is where reconciliation looks for them.
        source_account = arguments.source_account or partner.source_account_no
        if not source_account:
            raise UserError(f"partner {arguments.partner} has no --source-account; give one")
        config = dataclasses.replace(config_of(arguments), source_account_no=source_account)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        assert pool is not None
        try:
            async with aiohttp.ClientSession() as http:
                counts = await pay_day(
                    pool,
                    day_of(arguments),
                    BankClient.open(bank_connection(partner, private_key), http),
                    config,
                    getpass.getuser(),
                    system_clock.local_now(),
                )
            async with pool.acquire() as connection:
                open_after = await open_payout_exceptions(connection, day_of(arguments))
        finally:
            await pool.close()
        print(", ".join(f"{result.value} {count}" for result, count in counts.items()))
        return report_unpaid(open_after, open_before)

    try:
        with server_url() as url:
            return asyncio.run(main(url))
    except BrokenPipeError:
        raise  # the reader of our output went away (`| head`): not the database
    except OSError as error:
        raise UserError(f"cannot reach the database: {error}") from error


def report_unpaid(open_after: list[Any], open_before: set[str]) -> int:
    """One line on stderr per batch this run could not pay: the exceptions it opened, and the
    no-account exceptions of batches still without an attempt. 1 if there is one."""
    unpaid = [
        e
        for e in open_after
        if e.exception_id not in open_before
        or (e.reason == "no_beneficiary_account" and not e.attempted)
    ]
    for exception in unpaid:
        party = f"{exception.party_kind} {exception.party_id}"
        said = {
            "no_beneficiary_account": f"no bank account for {party}",
            "payout_rejected": f"payout {exception.payout_id} to {party} refused by the bank "
            f"({exception.detail})",
            "payout_unresolved": f"payout {exception.payout_id} to {party} has no final answer "
            "from the bank",
        }.get(exception.reason, f"{exception.reason} for {party}")
        state = "opened" if exception.exception_id not in open_before else "still open"
        hint = " (set one: ksh party set)" if exception.reason == "no_beneficiary_account" else ""
        print(
            f"ksh settle pay: {said}: exception {state} (batch {exception.batch_id}, "
            f"Rp {exception.amount_rupiah:,}){hint}",
            file=sys.stderr,
        )
    return 1 if unpaid else 0


def run_export(arguments: argparse.Namespace) -> int:
    from settlement.end_of_day import export_bulk_csv

    async def work(connection: Any) -> int:
        text = await export_bulk_csv(
            connection,
            day_of(arguments),
            config_of(arguments),
            getpass.getuser(),
            system_clock.local_now(),
        )
        arguments.out.write_text(text)
        print(f"{max(0, len(text.splitlines()) - 1)} payouts written to {arguments.out}")
        return 0

    return run_with_database(work)


def run_status(arguments: argparse.Namespace) -> int:
    from settlement.actions import day_close
    from settlement.end_of_day import EndOfDayConfig, day_closed_at
    from settlement.views import held_in_quarantine

    async def work(connection: Any) -> int:
        day = day_of(arguments)
        closed_at = await day_closed_at(connection, day)
        if closed_at is None:
            print(f"day {day} was never closed (close it with ksh settle close --day {day})")
            return 1
        close = await day_close(connection, day)
        print(
            f"service day {close.service_day}: {close.statement_lines} statement lines, {close.lines_matched} matched, {close.lines_written_off} written off, {close.lines_open} open"
        )
        print(
            f"exceptions open {close.exceptions_open}; unexplained Rp {close.unexplained_rupiah:,}; bank vs books Rp {close.bank_books_difference_rupiah:,}"
        )
        for line in (await held_in_quarantine(connection, day, EndOfDayConfig())).lines():
            print(line)
        print("closed" if close.closed else "NOT closed")
        return 0 if close.closed else 1

    return run_with_database(work)


def run_staff(arguments: argparse.Namespace) -> int:
    from settlement.actions import Role
    from settlement.pages import add_staff

    if arguments.role is None:
        return run_staff_change(arguments)
    password = argtypes.secret("KSH_STAFF_PASSWORD", f"password for {arguments.username}")

    async def work(connection: Any) -> int:
        try:
            await add_staff(connection, arguments.username, password, Role(arguments.role))
        except ValueError as error:
            raise UserError(str(error)) from None
        except Exception as error:  # asyncpg.CheckViolationError: a malformed user name
            if type(error).__name__ == "CheckViolationError":
                raise UserError(
                    "user names are lower case letters, digits, . _ - (2..40)"
                ) from None
            raise
        print(f"{arguments.username} is a {arguments.role}")
        return 0

    return run_with_database(work)


command_line_role = "command line"  # the role `ksh settle staff` acts in, in staff_actions


def run_staff_change(arguments: argparse.Namespace) -> int:
    """--unlock, --issue-token, --revoke-tokens, --end-sessions: one change, logged."""
    from gateways import staff
    from settlement import logins

    reason = arguments.reason.strip()
    if not reason and not arguments.issue_token:
        raise UserError("say why with --reason; it is written to staff_actions")
    who = getpass.getuser()
    username = arguments.username.strip().lower()

    async def work(connection: Any) -> int:
        now = system_clock.now()
        if arguments.unlock:
            cleared = await logins.unlock(
                connection, username, by=who, by_role=command_line_role, reason=reason, now=now
            )
            print(f"{username} unlocked" if cleared else f"{username} was not locked")
            return 0
        if arguments.end_sessions:
            ended = await logins.end_sessions(
                connection, username, by=who, by_role=command_line_role, reason=reason, now=now
            )
            print(f"{ended} session(s) of {username} ended")
            return 0
        role = await connection.fetchval(
            "select role from settlement_staff where username = $1", username
        )
        if role is None:
            raise UserError(f"no staff account {username}; add it with --role first")
        async with connection.transaction():
            if arguments.revoke_tokens:
                revoked = await staff.revoke_tokens(connection, username, now=now)
                action, detail, said = "revoke_tokens", {"revoked": revoked}, f"{revoked} revoked"
            else:
                token = await staff.issue_token(
                    connection,
                    staff.StaffMember(username, staff.Role(role)),
                    issued_by=who,
                    now=now,
                    label=arguments.label,
                )
                action, detail, said = "issue_token", {"label": arguments.label}, token
            await staff.record_action(
                connection,
                username=who,
                role=command_line_role,
                action=action,
                subject=username,
                reason=reason or arguments.label or "issued from the command line",
                now=now,
                detail=detail,
            )
        print(said)
        return 0

    return run_with_database(work)


def run_limit(arguments: argparse.Namespace) -> int:
    from gateways import four_eyes
    from gateways.staff import Role
    from ksh.tables import rupiah

    chosen = [four_eyes.Limit(arguments.name.replace("-", "_"))] if arguments.name else []
    if arguments.rupiah is None:
        if arguments.acting_as is not None or arguments.reason is not None:
            raise UserError("--as and --reason go with a new figure: ksh settle limit NAME RUPIAH")

        async def show(connection: Any) -> int:
            for limit in chosen or list(four_eyes.Limit):
                in_force = await four_eyes.limit_rupiah(connection, limit)
                print(f"{limit.value.replace('_', '-')}: {rupiah(in_force)}")
                for newest, change in enumerate(
                    await four_eyes.changes(connection, limit, newest=5)
                ):
                    state = (
                        f"confirmed by {change.confirmed_by}"
                        if change.confirmed_by
                        else "waiting for a second supervisor"
                        if newest == 0
                        else "overtaken by a later change"
                    )
                    print(
                        f"  {change.asked_at:%Y-%m-%d %H:%M} {rupiah(change.rupiah)} asked by "
                        f"{change.asked_by} ({change.reason}), {state}"
                    )
            return 0

        return run_with_database(show)
    [limit] = chosen
    reason = acting.reason_of(arguments)

    async def work(connection: Any) -> int:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, (Role.supervisor,))
            try:
                outcome, was = await four_eyes.set_limit(
                    connection, limit, arguments.rupiah, member, reason, now=system_clock.now()
                )
            except four_eyes.LimitError as error:
                raise UserError(str(error)) from None
            await acting.record(
                connection,
                member,
                f"four_eyes_limit_{outcome.value}",
                limit.value,
                reason,
                limit_rupiah=arguments.rupiah,
                was_rupiah=was,
            )
        name = limit.value.replace("_", "-")
        if outcome.in_force:
            print(f"{name} limit: {rupiah(arguments.rupiah)} (was {rupiah(was)})")
        else:
            print(
                f"{name} limit: {rupiah(arguments.rupiah)} asked; still {rupiah(was)} until a "
                "second supervisor runs the same command"
            )
        return 0

    return run_with_database(work)
