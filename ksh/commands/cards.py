"""`ksh cards`: cards in the back office's books (issue, and the service desk: register to a
holder, block, replace, move-due, show; pending top-ups no card took given back:
expire-top-ups, refunds-due, refund-paid).

Plural on purpose: `ksh card` works with one card on a reader (personalise, top up, read);
`ksh cards` works with the register of cards the back office keeps, and never touches a card.
A card the back office has not issued has its taps quarantined (`unknown_card`), so every card
sold is issued here (or by `ksh card deck-new --register`, or the admin API) with the balance
it was sold with: that balance is booked from the selling point's clearing account into the
card's purse. Issuing creates money, so it is done by a named clerk or supervisor (`--as`,
`--reason`) and written to the staff actions log. Uses DATABASE_URL or the embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from ksh import acting, argtypes
from ksh.cli import UserError
from ksh.database import run_with_database
from ksh.tables import rupiah

clerks_may = "a clerk or a supervisor"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "cards",
        help="issue cards in the back office's books, with their opening balance "
        "(`ksh card` is the card itself, on a reader)",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    issue = actions.add_parser(
        "issue",
        help="issue a card: its purse, with the opening balance it was sold with",
        description="Issue a card in the books: its purse and pending top-up accounts, and "
        "its opening balance booked from the selling point's clearing account. A card already "
        "issued is an error. See its purse with `ksh ledger balance --owner "
        "card_purse:NUMBER`.",
    )
    issue.add_argument("--number", required=True, help="the printed card number (8 to 19 digits)")
    issue.add_argument(
        "--opening-balance",
        type=int,
        required=True,
        metavar="RUPIAH",
        help="what is on the card as sold (0 to 2,000,000)",
    )
    issue.add_argument(
        "--sold-at",
        default="counter",
        metavar="BANK",
        help="whose clearing account the opening balance comes from (default: counter)",
    )
    acting.add_arguments(issue, clerks_may)
    issue.set_defaults(handler=run_issue)
    add_desk_parsers(actions)
    from ksh.commands.refunds import add_refund_parsers

    add_refund_parsers(actions)


def add_desk_parsers(actions: Any) -> None:
    """The service desk's work on one card: register, block, replace, move-due, show."""
    register_card = actions.add_parser(
        "register",
        help="register a card to its holder (Bank Indonesia's registered cap: Rp 20,000,000)",
        description="Register an issued card to a person. The NIK is kept only as a salted "
        "hash and its last four digits. A registered card may hold up to Rp 20,000,000 "
        "(unregistered: Rp 2,000,000) and is the one whose balance a replacement recovers.",
    )
    register_card.add_argument("number", help="the card number")
    register_card.add_argument("--name", required=True)
    register_card.add_argument("--nik", required=True, help="the 16-digit national ID number")
    register_card.add_argument("--phone", required=True)
    acting.add_arguments(register_card, clerks_may)
    register_card.set_defaults(handler=run_register)
    block = actions.add_parser(
        "block",
        help="block a lost, stolen, damaged or fraudulent card: the deny list carries it to "
        "every terminal at its next sync",
    )
    block.add_argument("number", help="the card number")
    block.add_argument("--cause", required=True, choices=["lost", "stolen", "damaged", "fraud"])
    acting.add_arguments(block, clerks_may)
    block.set_defaults(handler=run_block)
    replace = actions.add_parser(
        "replace",
        help="name the card that replaces a blocked registered card; its balance moves there "
        "after the waiting period",
    )
    replace.add_argument("number", help="the blocked card")
    replace.add_argument("--new", required=True, metavar="NUMBER", help="the new card (issued)")
    add_wait_argument(replace)
    acting.add_arguments(replace, clerks_may)
    replace.set_defaults(handler=run_replace)
    move_due = actions.add_parser(
        "move-due",
        help="move every replaced card's balance whose waiting period is over (run daily)",
    )
    add_wait_argument(move_due)
    acting.add_arguments(move_due, clerks_may)
    move_due.set_defaults(handler=run_move_due)
    grant = actions.add_parser(
        "pass",
        help="grant a pass of the fare feed to a card (the student subscription: Rp 0), or "
        "sell a priced one for cash; the next validator it taps activates it",
        description="Grant a pass of the fare feed's fare_passes.txt to an issued card, or sell "
        "one with a price for cash. Terminals download it at their next sync; the next "
        "validator the card taps writes it onto the card and the ride is priced with it. A "
        "pass priced Rp 0 is granted (nothing booked; who, when and why are recorded). A "
        "priced one is sold: run without --drawer to see the price, take the cash, then run "
        "with --drawer YOURNAME: booked from your drawer to the operator's revenue, once per "
        "--receipt.",
    )
    grant.add_argument("--card", required=True, metavar="NUMBER", help="the card number")
    grant.add_argument(
        "--product",
        required=True,
        metavar="FARE_PASS_ID",
        help="a fare_pass_id of the feed (Trans Semarang: student_ecard_pelajar, "
        "student_ecard_mahasiswa)",
    )
    grant.add_argument(
        "--drawer",
        metavar="USERNAME",
        help="a priced pass: the cash is paid into this drawer, your own (the price is shown "
        "when it is left out; nothing is sold then)",
    )
    grant.add_argument(
        "--receipt",
        type=argtypes.reference,
        metavar="ID",
        help="the counter's receipt (a sale needs one): the same again answers the first sale "
        "and takes nothing twice",
    )
    grant.add_argument(
        "--operator", type=argtypes.reference, metavar="ID",
        help="whose revenue the sale is (default: the one active operator)",
    )  # fmt: skip
    acting.add_arguments(grant, clerks_may)
    grant.set_defaults(handler=run_grant_pass)
    cancel = actions.add_parser(
        "pass-cancel",
        help="cancel a pass no card has activated: a sale's cash back from your drawer",
        description="Cancel a pass granted or sold that no card has activated yet: it leaves "
        "the terminals' list at their next sync; a sale's price is booked back from the "
        "operator's revenue into your drawer, and you give the rider the cash. A terminal that "
        "downloaded it before may still write it to the card: the card keeps it, and is "
        "flagged pass_cancelled_activated for a look.",
    )
    cancel.add_argument("sale", metavar="PASS_SALE_ID", help="the pass sale (pass-...)")
    acting.add_arguments(cancel, clerks_may)
    cancel.set_defaults(handler=run_cancel_pass)
    show = actions.add_parser(
        "show", help="a card at the desk: holder, cap, balance, deny list entry, replacement"
    )
    show.add_argument("number", help="the card number")
    show.set_defaults(handler=run_show)


def add_wait_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait-days",
        type=float,
        default=3.0,
        metavar="DAYS",
        help="how long after the block the balance waits for offline taps (default 3; the "
        "back office's --replacement-wait-days)",
    )


def wait_of(arguments: argparse.Namespace) -> Any:
    import datetime as dt

    if not 0 <= arguments.wait_days <= 365:
        raise UserError("--wait-days must be 0 to 365")
    return dt.timedelta(days=arguments.wait_days)


def run_desk_change(
    arguments: argparse.Namespace, action: str | None, subject: str, change: Any
) -> Any:
    """Do `change(connection, member, now)` as the --as staff member, with its staff action
    (`action`; None: the change records its own), in one transaction; a refusal of the desk's
    rules is a one-line error."""
    from gateways.staff import desk_roles
    from gateways.terminal_api import registry
    from ledger.clock import system_clock

    reason = acting.reason_of(arguments)

    async def work(connection: Any) -> Any:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, desk_roles)
            try:
                done = await change(connection, member, system_clock.now())
            except registry.RegistryError as error:
                raise UserError(str(error)) from None
            if action is not None:
                await acting.record(connection, member, action, subject, reason)
        return done

    return run_with_database(work)


def run_register(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import card_desk

    async def change(connection: Any, member: Any, now: Any) -> Any:
        return await card_desk.register_holder(
            connection,
            arguments.number,
            arguments.name,
            arguments.nik,
            arguments.phone,
            username=member.username,
            now=now,
        )

    holder = run_desk_change(arguments, "register_card", arguments.number, change)
    print(
        f"card {arguments.number} registered to {holder.name} (NIK ****{holder.nik_last4}): "
        f"it may hold up to {rupiah(card_desk.purse_cap_rupiah_registered)}"
    )
    return 0


def run_block(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import card_desk

    async def change(connection: Any, member: Any, now: Any) -> None:
        await card_desk.block_card(
            connection,
            arguments.number,
            card_desk.BlockCause(arguments.cause),
            arguments.reason or "",
            username=member.username,
            now=now,
        )

    run_desk_change(arguments, "block_card", arguments.number, change)
    print(
        f"card {arguments.number} blocked ({arguments.cause}): terminals refuse it from their next sync"
    )
    return 0


def run_grant_pass(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import counter, passes

    reason = acting.reason_of(arguments)

    async def change(connection: Any, member: Any, now: Any) -> Any:
        price = await passes.pass_price(connection, arguments.product, now=now)
        if price and arguments.drawer is None:
            raise UserError(
                f"pass {arguments.product} costs {rupiah(price)}: take the cash, then run again "
                f"with --drawer {member.username} (your drawer); nothing was sold"
            )
        if price and arguments.receipt is None:
            raise UserError(
                "a sale needs --receipt ID (the counter's receipt): run again with it, and the "
                "same again takes nothing twice; nothing was sold"
            )
        if arguments.drawer is not None and arguments.drawer.lower() != member.username:
            raise UserError(
                f"--drawer is your own drawer ({member.username}): a sale never pays into another's"
            )
        sold = await passes.grant_pass(
            connection,
            arguments.card,
            arguments.product,
            username=member.username,
            reason=reason,
            now=now,
            receipt_id=arguments.receipt,
            drawer=counter.drawer_code(member.username) if price else None,
            operator_id=arguments.operator,
        )
        if sold.created:
            action = "sell_pass" if sold.amount_rupiah else "grant_pass"
            detail = {"pass_sale_id": sold.pass_sale_id, "amount_rupiah": sold.amount_rupiah}
            await acting.record(connection, member, action, arguments.card, reason, **detail)
        return sold

    sold = run_desk_change(arguments, None, arguments.card, change)
    if not sold.amount_rupiah:
        print(
            f"pass {sold.fare_pass_id} granted to card {sold.card_number} "
            f"({sold.pass_sale_id}, Rp 0): the next validator it taps activates it"
        )
        return 0
    again = "" if sold.created else " (sold before: nothing booked again)"
    print(
        f"receipt {sold.receipt_id}: pass {sold.fare_pass_id} sold to card {sold.card_number} "
        f"for {rupiah(sold.amount_rupiah)} into {sold.drawer} ({sold.pass_sale_id}){again}: "
        "the next validator it taps activates it"
    )
    return 0


def run_cancel_pass(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import passes

    async def change(connection: Any, member: Any, now: Any) -> Any:
        cancelled = await passes.cancel_pass(
            connection,
            arguments.sale,
            member=member,
            reason=arguments.reason or "",
            now=now,
        )
        if cancelled.created:
            await acting.record(
                connection,
                member,
                "cancel_pass",
                cancelled.card_number,
                arguments.reason,
                pass_sale_id=cancelled.pass_sale_id,
                amount_rupiah=cancelled.amount_rupiah,
            )
        return cancelled

    cancelled = run_desk_change(arguments, None, arguments.sale, change)
    paid = (
        f"give the rider {rupiah(cancelled.amount_rupiah)} from your drawer"
        if cancelled.amount_rupiah
        else "nothing was paid"
    )
    again = "" if cancelled.created else f" before, by {cancelled.cancelled_by}"
    print(
        f"pass sale {cancelled.pass_sale_id} ({cancelled.fare_pass_id}, card "
        f"{cancelled.card_number}) cancelled{again}: terminals drop it at their next sync; "
        + (paid if cancelled.created else "nothing booked again")
    )
    return 0


def run_replace(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import card_desk

    wait = wait_of(arguments)

    async def change(connection: Any, member: Any, now: Any) -> Any:
        return await card_desk.request_replacement(
            connection,
            arguments.number,
            arguments.new,
            username=member.username,
            now=now,
            wait=wait,
        )

    found = run_desk_change(arguments, "replace_card", arguments.number, change)
    print(f"card {found.old_card_number} is replaced by {found.new_card_number}")
    print(describe_replacement(found, wait))
    return 0


def describe_replacement(found: Any, wait: Any) -> str:
    if found.moved_at is None:
        return f"its balance moves on {found.due_at(wait):%Y-%m-%d %H:%M %Z} (ksh cards move-due)"
    return (
        f"moved {found.moved_at:%Y-%m-%d %H:%M}: {rupiah(found.purse_rupiah)} from the purse and "
        f"{rupiah(found.pending_rupiah)} pending, delivered at the new card's next tap"
    )


def run_move_due(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import card_desk

    wait = wait_of(arguments)

    async def change(connection: Any, member: Any, now: Any) -> Any:
        moved = await card_desk.move_due_balances(connection, now=now, wait=wait)
        for found in moved:
            await acting.record(
                connection,
                member,
                "move_card_balance",
                found.old_card_number,
                arguments.reason,
                new_card_number=found.new_card_number,
                purse_rupiah=found.purse_rupiah,
                pending_rupiah=found.pending_rupiah,
            )
        return moved

    moved = run_desk_change(arguments, "move_due_balances", "cards", change)
    for found in moved:
        print(
            f"{found.old_card_number} -> {found.new_card_number}: {describe_replacement(found, wait)}"
        )
    print(f"{len(moved)} balance(s) moved")
    return 0


def describe_pass(sale: Any, ran_out: frozenset[str]) -> str:
    """One pass of `ksh cards show`: its sale id (to cancel it), product, price and state;
    `ran_out`: the carried passes whose last day passed before the card tapped."""
    state = (
        f"activated {sale.activated_at:%Y-%m-%d}"
        if sale.activated_at is not None
        else "ran out before the card tapped"
        if sale.pass_sale_id in ran_out
        else "waiting"
    )
    cancelled = "" if sale.cancelled_at is None else f", cancelled by {sale.cancelled_by}"
    return (
        f"{sale.pass_sale_id} {sale.fare_pass_id} {rupiah(sale.amount_rupiah)} {state}{cancelled}"
    )


def run_show(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import books, card_desk, registry
    from ksh.tables import print_fields

    number = arguments.number
    try:
        registry.check_card_number(number)
    except registry.RegistryError as error:
        raise UserError(str(error)) from None

    async def work(connection: Any) -> dict[str, object]:
        if not await connection.fetchval("select 1 from cards where card_number = $1", number):
            raise UserError(f"card {number} was never issued")
        holder = await card_desk.holder_of(connection, number)
        entry = await card_desk.deny_entry(connection, number)
        replaced = await card_desk.replacement_of(connection, number)
        accounts = registry.card_accounts(number)
        found = await books.balances(
            connection, [accounts.purse_account_id, accounts.pending_top_up_account_id]
        )
        return {
            "card": number,
            "holder": None
            if holder is None
            else f"{holder.name} (NIK ****{holder.nik_last4}, {holder.phone})",
            "cap": rupiah(await card_desk.purse_cap_rupiah(connection, number)),
            "purse": rupiah(found[accounts.purse_account_id].credit_balance),
            "pending top-ups": rupiah(found[accounts.pending_top_up_account_id].credit_balance),
            "deny list": None
            if entry is None
            else f"{entry.reason} ({entry.source.value}, {entry.added_by or 'rule'}, {entry.added_at:%Y-%m-%d %H:%M})",
            "replaced by": None if replaced is None else replaced.new_card_number,
            "passes": await describe_passes(connection, number),
            **await chip_fields(connection, number),
        }

    print_fields(run_with_database(work))
    return 0


async def describe_passes(connection: Any, number: str) -> str | None:
    from gateways.terminal_api import passes
    from ledger.clock import system_clock

    sales = await passes.passes_of(connection, number)
    now = system_clock.now()
    ran_out = passes.ran_out_before_tap(sales, await passes.sale_tariff(connection, now), now)
    return "; ".join(describe_pass(sale, ran_out) for sale in sales) or None


async def chip_fields(connection: Any, number: str) -> dict[str, object]:
    """`show`'s lines on the card's chip: blocked on it (by which terminal, when), and a block
    the back office did not ask for (the desk unblocks or re-issues the card)."""
    from gateways.terminal_api import registry
    from ledger.clock import jakarta

    block = await registry.chip_block_of(connection, number)
    unrequested = await connection.fetch(
        "select detail from card_flags where card_number = $1 and reason = 'unrequested_block' "
        "order by flag_id",
        number,
    )
    fields: dict[str, object] = {}
    if block is not None:
        at = dt.datetime.fromtimestamp(block["time_ms"] / 1000, jakarta)
        chip = (
            f"blocked on the chip by {block['terminal_id']} at {at:%Y-%m-%d %H:%M} WIB "
            f"(record {block['terminal_id']}/{block['sequence']}, card counter "
            f"{block['card_counter']})"
        )
        if block["active_again_counter"] is not None:
            chip += (
                f"; active again (unblocked at a desk): its card counter "
                f"{block['active_again_counter']} followed"
            )
        fields["chip"] = chip
    if unrequested and (block is None or block["active_again_counter"] is None):
        fields["attention"] = f"unrequested_block: {unrequested[-1]['detail']}"
    return fields


def run_issue(arguments: argparse.Namespace) -> int:
    from gateways.terminal_api import registry

    reason = acting.reason_of(arguments)
    number, opening = arguments.number, arguments.opening_balance
    try:
        registry.check_card_number(number)
        registry.check_opening_balance(opening)
        registry.check_reference("--sold-at", arguments.sold_at)
    except registry.RegistryError as error:
        raise UserError(str(error)) from None
    issued = issue_cards_as(arguments, {number: opening}, reason, bank_code=arguments.sold_at)
    print(f"card {number} issued: purse {issued[number]} holds {rupiah(opening)}")
    print(f"check code {print_check_codes([number])[number]} (print it on the card)")
    return 0


def issue_cards_as(
    arguments: argparse.Namespace,
    opening_balances_rupiah: dict[str, int],
    reason: str,
    *,
    bank_code: str = "counter",
    url: str | None = None,
) -> dict[str, Any]:
    """Issue new cards in the name of the staff member --as names (one staff action per card,
    as the admin API writes), all or none; returns each card's purse account id. Shared with
    `ksh card deck-new --register`."""
    from gateways.staff import money_roles
    from gateways.terminal_api import registry
    from ledger.clock import system_clock

    async def work(connection: Any) -> dict[str, Any]:
        async with connection.transaction():
            member = await acting.acting_member(connection, arguments, money_roles)
            try:
                await registry.issue_cards(
                    connection,
                    opening_balances_rupiah,
                    bank_code,
                    now=system_clock.now(),
                    new=True,
                )
            except registry.RegistryError as error:
                raise UserError(str(error)) from None
            for number, opening in sorted(opening_balances_rupiah.items()):
                await acting.record(
                    connection,
                    member,
                    "issue_card",
                    number,
                    reason,
                    opening_balance_rupiah=opening,
                )
        return {number: registry.purse_account_id(number) for number in opening_balances_rupiah}

    return run_with_database(work, url)


def print_check_codes(card_numbers: list[str], url: str | None = None) -> dict[str, str]:
    """The check code to print on each card (the public card page asks for it)."""
    from gateways.service_desk.check_codes import check_codes

    return run_with_database(lambda connection: check_codes(connection, card_numbers), url)


deck_number_digits = (8, 16)  # what the back office accepts and a deck card's profile holds


def deck_first_number(
    arguments: argparse.Namespace, count: int, *, register: bool, url: str | None
) -> int:
    """The first card number of a new deck: --first-number, else (registering) the one after
    the highest issued from the decks' first number, else the decks' first number."""
    from card_reader.deck import first_card_number
    from gateways.terminal_api import registry

    first = arguments.first_number
    if first is None and register:
        highest = run_with_database(
            lambda connection: registry.highest_card_number(connection, first_card_number), url
        )
        first = first_card_number if highest is None else highest + 1
    first = first_card_number if first is None else first
    shortest, longest = deck_number_digits
    if not (10 ** (shortest - 1) <= first and first + count - 1 < 10**longest):
        raise UserError(f"the deck's card numbers must have {shortest} to {longest} digits")
    return int(first)
