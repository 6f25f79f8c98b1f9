"""`ksh cards expire-top-ups`, `refunds-due`, `refund-approve`, `refund-paid`: pending top-ups
no card took go back to whoever paid them (`settlement.top_up_refunds`)."""

from __future__ import annotations

import argparse
from typing import Any

from ksh import acting, argtypes
from ksh.cli import UserError
from ksh.database import run_with_database
from ksh.tables import rupiah

clerks_may = "a clerk or a supervisor"


def add_refund_parsers(actions: Any) -> None:
    expire = actions.add_parser(
        "expire-top-ups",
        help="give back pending top-ups no card took (run daily; `ksh serve` does it hourly)",
        description="Every pending top-up older than --older-than-days that no card took leaves "
        "the terminals' list; --wait-days after that, if no card took it meanwhile, it is "
        "booked pending top-up -> refund payable. One the bank "
        "paid from a named account is paid back there by a SNAP transfer through that bank "
        "(with --partner and --key; otherwise at the next run that has them); the others are "
        "listed by `ksh cards refunds-due`, to pay at the counter.",
    )
    expire.add_argument(
        "--older-than-days",
        type=argtypes.integer(1, 3_650, "days"),
        default=90,
        metavar="DAYS",
        help="how long a top-up waits for its card (default 90; ksh serve's --top-up-expiry-days)",
    )
    expire.add_argument(
        "--wait-days",
        type=argtypes.integer(0, 365, "days"),
        default=3,
        metavar="DAYS",
        help="how long a withdrawn top-up waits for a terminal that downloaded it before to "
        "deliver it, before it is given back (default 3; ksh serve's --replacement-wait-days)",
    )
    expire.add_argument("--partner", help="send the refunds of VA payments made through this bank")
    expire.add_argument(
        "--key", type=argtypes.existing_file, help="our RSA private key (PEM) for that bank"
    )
    acting.add_arguments(expire, clerks_may)
    expire.set_defaults(handler=run_expire)
    due = actions.add_parser(
        "refunds-due", help="the refund-due list: expired top-ups to pay back at the counter"
    )
    due.add_argument("--all", action="store_true", help="every refund, paid ones too")
    due.set_defaults(handler=run_refunds_due)
    paid = actions.add_parser(
        "refund-paid", help="mark a due refund paid in cash at the counter (booked)"
    )
    paid.add_argument("top_up_id", metavar="TOP_UP_ID", help="as `ksh cards refunds-due` lists")
    paid.add_argument("--note", required=True, help="how and to whom it was paid")
    acting.add_arguments(paid, clerks_may)
    paid.set_defaults(handler=run_refund_paid)
    approve = actions.add_parser(
        "refund-approve",
        help="a supervisor approves a due refund above the refund limit, for someone else to "
        "pay out at the counter",
    )
    approve.add_argument("top_up_id", metavar="TOP_UP_ID", help="as `ksh cards refunds-due` lists")
    acting.add_arguments(approve, "a supervisor")
    approve.set_defaults(handler=run_refund_approve)


def describe(refund: Any, limit_rupiah: int) -> str:
    """One line for a refund; `limit_rupiah`: the refund limit in force (`gateways.four_eyes`)."""
    where = {
        "sending": f"to the payer's account, {refund.partner_reference_no}",
        "paid": f"paid to the payer's account, {refund.partner_reference_no}",
        "due": "due at the counter"
        + (
            f" (approved by {refund.approved_by})"
            if refund.approved_by
            else " (above the limit: a supervisor approves it first)"
            if refund.needs_approval(limit_rupiah)
            else ""
        ),
        "paid_cash": f"paid at the counter by {refund.paid_by}: {refund.note}",
    }[refund.state]
    detail = f" ({refund.detail})" if refund.detail and refund.state != "paid" else ""
    return (
        f"{refund.top_up_id}  card {refund.card_number}  {rupiah(refund.amount_rupiah)}  "
        f"expired {refund.expired_at:%Y-%m-%d}  {where}{detail}"
    )


def run_expire(arguments: argparse.Namespace) -> int:
    import datetime as dt

    from ksh.commands.cards import run_desk_change
    from settlement import top_up_refunds

    if (arguments.partner is None) != (arguments.key is None):
        raise UserError("--partner and --key go together")
    older_than = dt.timedelta(days=arguments.older_than_days)

    async def change(connection: Any, member: Any, now: Any) -> Any:
        expired = await top_up_refunds.expire_top_ups(
            connection,
            now=now,
            older_than=older_than,
            who=member.username,
            wait=dt.timedelta(days=arguments.wait_days),
        )
        return expired, await refund_limit(connection)

    expired, limit_rupiah = run_desk_change(arguments, "expire_top_ups", "pending_top_ups", change)
    for refund in expired:
        print(describe(refund, limit_rupiah))
    print(f"{len(expired)} top-up(s) expired")
    if arguments.partner is not None:
        sent = run_with_database(lambda connection: send_refunds(connection, arguments))
        for refund in sent:
            print(describe(refund, limit_rupiah))
        print(f"{sum(r.state == 'paid' for r in sent)} of {len(sent)} refund(s) paid by the bank")
    return 0


async def send_refunds(connection: Any, arguments: argparse.Namespace) -> Any:
    """The refunds still to send through the partner (each recorded before it is sent)."""
    import aiohttp

    from gateways.snap.client import BankClient
    from gateways.snap.partners import bank_connection, load_partner
    from gateways.snap.signature import load_private_key
    from ledger.clock import system_clock
    from settlement import top_up_refunds

    try:
        private_key = arguments.key.read_bytes()
        load_private_key(private_key)
    except (OSError, ValueError, TypeError) as error:  # TypeError: an encrypted key
        raise UserError(f"cannot load our private key {arguments.key}: {error}") from None
    partner = await load_partner(connection, arguments.partner)
    if partner is None:
        raise UserError(f"no partner {arguments.partner}; add it with ksh partner add")
    if not partner.base_url or not partner.source_account_no:
        raise UserError(f"partner {arguments.partner} needs --base-url and --source-account")
    async with aiohttp.ClientSession() as http:
        return await top_up_refunds.pay_refunds(
            connection,
            BankClient.open(bank_connection(partner, private_key), http),
            partner_id=partner.partner_id,
            source_account_no=partner.source_account_no,
            now=system_clock.now(),
        )


def run_refunds_due(arguments: argparse.Namespace) -> int:
    from settlement import top_up_refunds

    async def work(connection: Any) -> Any:
        due = await top_up_refunds.refunds_due(connection, everything=arguments.all)
        return due, await refund_limit(connection)

    refunds, limit_rupiah = run_with_database(work)
    for refund in refunds:
        print(describe(refund, limit_rupiah))
    print(f"{len(refunds)} refund(s)")
    return 0


def run_refund_paid(arguments: argparse.Namespace) -> int:
    from ksh.commands.cards import run_desk_change
    from settlement import top_up_refunds

    async def change(connection: Any, member: Any, now: Any) -> Any:
        try:
            paid = await top_up_refunds.mark_paid_in_cash(
                connection, arguments.top_up_id, who=member.username, note=arguments.note, now=now
            )
        except top_up_refunds.RefundError as error:
            raise UserError(str(error)) from None
        return paid, await refund_limit(connection)

    print(describe(*run_desk_change(arguments, "top_up_refund_paid", arguments.top_up_id, change)))
    return 0


def run_refund_approve(arguments: argparse.Namespace) -> int:
    from ksh.commands.cards import run_desk_change
    from settlement import top_up_refunds

    async def change(connection: Any, member: Any, now: Any) -> Any:
        try:
            approved = await top_up_refunds.approve_cash_refund(
                connection, arguments.top_up_id, member, now=now
            )
        except top_up_refunds.RefundError as error:
            raise UserError(str(error)) from None
        return approved, await refund_limit(connection)

    print(
        describe(*run_desk_change(arguments, "top_up_refund_approved", arguments.top_up_id, change))
    )
    return 0


async def refund_limit(connection: Any) -> int:
    from gateways import four_eyes

    return await four_eyes.limit_rupiah(connection, four_eyes.Limit.refund)
