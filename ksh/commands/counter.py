"""`ksh counter`: cash top-ups at a service counter, through the books, and the shift's close.

`top-up` books the cash as a pending top-up for the card, paid from the cashier's own drawer
(the staff token's owner: `POST /admin/v1/pending-top-ups`, source "drawer"), then the counter's
card reader (a terminal registered as a validator: `ksh terminal add`, its key made with
`--init`) writes it onto the card in a journalled card transaction, as a validator delivers a
pending top-up, and uploads it; the back office books the delivery (pending top-up -> purse).
If the card leaves too soon the top-up stays pending: the next validator the card meets
delivers it, once. `close-shift` compares the counted drawer with the books: the counted cash
goes to the cash office, a shortage or surplus to suspense, and the difference is printed.
The staff token comes from KSH_STAFF_TOKEN (or a prompt): `ksh settle staff USER --issue-token`.
"""

from __future__ import annotations

import argparse
from typing import Any

from ksh import argtypes
from ksh.cli import UserError
from ksh.commands.validator import add_terminal_arguments, state_folder
from ledger.clock import system_clock

token_variable = "KSH_STAFF_TOKEN"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "counter",
        help="cash top-ups at a service counter (booked, written, uploaded); close a shift",
        description=__doc__,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    top_up = actions.add_parser(
        "top-up", help="take cash for a card: book it, write it onto the card, upload"
    )
    top_up.add_argument("--card", required=True, help="the card number printed on the card")
    top_up.add_argument(
        "--amount", type=argtypes.integer(1, 2_000_000, "rupiah"), required=True, help="rupiah"
    )
    top_up.add_argument(
        "--receipt",
        help="the receipt number (the top-up's id; default CTR-TERMINAL-MILLISECONDS): give "
        "the same again to retry a top-up without taking the cash twice",
    )
    top_up.add_argument("--index", type=int, default=0, help="with --emulated: which card")
    top_up.add_argument("--reason", default="cash top-up at the counter", help="for the log")
    add_terminal_arguments(top_up)
    top_up.set_defaults(handler=run_top_up)

    close = actions.add_parser(
        "close-shift", help="count the drawer: compare with the books, book any difference"
    )
    close.add_argument(
        "--counted", type=argtypes.integer(0, 10_000_000_000, "rupiah"), required=True
    )
    close.add_argument("--shift", required=True, help="the shift's id (e.g. 2026-11-24-pagi)")
    close.add_argument("--cashier", help="whose drawer (a supervisor's count; default: yours)")
    close.add_argument(
        "--backoffice", type=argtypes.http_urls, default="http://127.0.0.1:8080", metavar="URL"
    )
    close.add_argument("--reason", default="end of shift", help="for the log")
    close.set_defaults(handler=run_close_shift)


def admin_post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the admin API with the staff token; its refusal is a one-line error."""
    import asyncio

    import aiohttp

    token = argtypes.secret(token_variable, "staff token")

    async def post() -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                url.split(",")[0] + path, json=body, headers={"Authorization": f"Bearer {token}"}
            ) as response,
        ):
            return response.status, await response.json(content_type=None)

    try:
        status, answer = asyncio.run(post())
    except (aiohttp.ClientError, OSError, ValueError) as error:
        raise UserError(f"the back office at {url}: {error}") from error
    if status >= 300:
        detail = answer.get("detail", answer) if isinstance(answer, dict) else answer
        raise UserError(f"the back office refused ({status}): {detail}")
    return dict(answer)


def run_top_up(arguments: argparse.Namespace) -> int:
    from bus_terminals.device import deliver_once, initialise
    from bus_terminals.terminal import Verdict
    from ksh.commands.card import rupiah
    from ksh.commands.card_keys import terminal_keys
    from ksh.commands.validator import validator_roles

    folder = state_folder(arguments)
    if arguments.init:
        print(initialise(folder))
        return 0
    if not (arguments.reader or arguments.emulated):
        raise UserError("give --reader NAME or --emulated DECK")
    keys = terminal_keys(arguments, "counter", *validator_roles())
    receipt = arguments.receipt or f"CTR-{arguments.terminal_id}-{system_clock.unix_ms()}"
    body = {"card_number": arguments.card, "top_up_id": receipt}
    body |= {"amount_rupiah": arguments.amount, "source": "drawer", "reason": arguments.reason}
    admin_post(arguments.backoffice, "/admin/v1/pending-top-ups", body)
    with card_on_counter(arguments) as reader:
        try:
            feedback, uploaded = deliver_once(
                arguments.terminal_id,
                folder,
                keys,
                arguments.backoffice,
                reader,
                now_ms=system_clock.unix_ms,
            )
        except (FileNotFoundError, ValueError) as error:
            raise UserError(str(error)) from error
    if feedback.verdict != Verdict.accepted or feedback.card_number != arguments.card:
        raise UserError(
            f"receipt {receipt}: {rupiah(arguments.amount)} booked for card {arguments.card} "
            f"but not written ({feedback.reason.value} {feedback.detail}); it stays pending: "
            "the card's next validator tap delivers it, or run again with --receipt "
            f"{receipt}"
        )
    print(
        f"receipt {receipt}: card {feedback.card_number} + {rupiah(feedback.top_up_rupiah)} = "
        f"{rupiah(feedback.balance_rupiah)} (upload: {uploaded.value})"
    )
    return 0


def card_on_counter(arguments: argparse.Namespace) -> Any:
    """The counter's reader with the card on it: PC/SC, or one card of an emulated deck."""
    import contextlib

    @contextlib.contextmanager
    def emulated() -> Any:
        from card_reader.emulator import EmulatedReader, save_deck
        from ksh.commands.card import load_deck_or_explain

        cards = load_deck_or_explain(arguments.emulated)
        if not 0 <= arguments.index < len(cards):
            raise UserError(f"--index: the deck has cards 0..{len(cards) - 1}")
        reader = EmulatedReader("counter")
        reader.insert(cards[arguments.index])
        try:
            yield reader
        finally:
            reader.remove()
            save_deck(cards, arguments.emulated)

    if arguments.emulated:
        return emulated()
    from ksh.commands.card import card_on_reader

    arguments.wait = 10.0  # seconds for the cashier to put the card on the reader
    return card_on_reader(arguments)


def run_close_shift(arguments: argparse.Namespace) -> int:
    from ksh.commands.card import rupiah

    body: dict[str, Any] = {"shift_id": arguments.shift, "counted_rupiah": arguments.counted}
    body["reason"] = arguments.reason
    if arguments.cashier:
        body["cashier"] = arguments.cashier
    closed = admin_post(arguments.backoffice, "/admin/v1/counter/close-shift", body)
    difference = closed["difference_rupiah"]
    verdict = (
        "clean"
        if difference == 0
        else f"short {rupiah(-difference)}"
        if difference < 0
        else f"over {rupiah(difference)}"
    )
    again = "" if closed["created"] else " (closed before: these are that close's figures)"
    print(
        f"shift {closed['shift_id']} of {closed['cashier']}: books {rupiah(closed['expected_rupiah'])}, "
        f"counted {rupiah(closed['counted_rupiah'])}: {verdict}{again}"
    )
    return 0 if difference == 0 else 1
