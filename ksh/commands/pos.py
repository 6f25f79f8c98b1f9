"""`ksh pos`: a merchant's point of sale (cashier types the amount; refund of the last sale)."""

from __future__ import annotations

import argparse
from typing import Any

from ksh import argtypes
from ksh.cli import UserError
from ksh.commands.validator import add_terminal_arguments, run_device, state_folder, terminal_keys


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "pos",
        help="run a point-of-sale terminal (sales and refunds on the card, sync with the back office)",
        description="Run a POS. With --emulated, type 'INDEX sale AMOUNT' or 'INDEX refund' "
        "(refund of this terminal's last sale, to the same card). With --reader, give the sale "
        "amount with --amount (one sale per tap). Feedback: one JSON line per tap.",
    )
    add_terminal_arguments(parser)
    parser.add_argument("--merchant", help="merchant id the POS belongs to")
    parser.add_argument(
        "--amount",
        type=argtypes.integer(1, 2_000_000, "rupiah"),  # a card holds at most Rp 2,000,000
        help="sale amount in rupiah (PC/SC mode)",
    )
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from bus_terminals.device import initialise

    folder = state_folder(arguments)
    if arguments.init:
        print(initialise(folder))
        return 0
    if not arguments.merchant:
        raise UserError("--merchant is required")
    if not (arguments.reader or arguments.emulated):
        raise UserError("give --reader NAME or --emulated DECK")
    if arguments.reader and not arguments.amount:
        raise UserError("--reader needs --amount")
    from bus_terminals.journal import Journal
    from bus_terminals.point_of_sale import refund_decider, sale_decider, sale_rupiah_max
    from card_reader.keys import KeyRole

    keys = terminal_keys(arguments, KeyRole.DEBIT, KeyRole.CREDIT)
    journal_holder: list[Journal] = []

    def decider_for(words: list[str]) -> Any:
        if not words and arguments.amount:
            return sale_decider(arguments.amount)
        if len(words) == 2 and words[0] == "sale" and words[1].isdigit():
            amount = int(words[1])
            if 0 < amount <= sale_rupiah_max:
                return sale_decider(amount)
        if words == ["refund"]:
            if not journal_holder:
                journal_holder.append(
                    Journal(folder / "journal.db", arguments.terminal_id, recover=False)
                )
            return refund_decider(journal_holder[0])
        return None

    try:
        return run_device(arguments, folder, keys, decider_for, merchant_id=arguments.merchant)
    finally:
        for journal in journal_holder:
            journal.close()
