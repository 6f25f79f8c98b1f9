"""`ksh cards`: cards in the back office's books (issue).

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
from typing import Any

from ksh import acting
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
