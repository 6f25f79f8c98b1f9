"""`ksh pos`: a merchant's point of sale (cashier types the amount; refund of the last sale)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from ksh import argtypes
from ksh.cli import UserError
from ksh.commands.card_keys import terminal_keys
from ksh.commands.validator import (
    add_terminal_arguments,
    fleet_from_arguments,
    run_device,
    state_folder,
)


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
    qris = parser.add_argument_group("QRIS sale (no card: the customer pays with any QRIS app)")
    qris.add_argument(
        "--qris",
        metavar="AMOUNT",
        type=argtypes.integer(1, 10_000_000, "rupiah"),
        help="sell AMOUNT rupiah by dynamic QRIS: show the code, wait until paid or expired, "
        "print the receipt as one JSON line (exit 0 paid, 1 expired or not paid in time)",
    )
    qris.add_argument(
        "--sale",
        type=argtypes.integer(1, 10**12),
        help="this POS's sale number for --qris (the same number again shows the same code); "
        "default: one more than the last QRIS sale of this terminal",
    )
    qris.add_argument(
        "--qr-out",
        type=Path,
        help="also write the code as a PNG or SVG (by suffix) for a screen (default: none)",
    )
    qris.add_argument(
        "--wait-s",
        type=argtypes.seconds,
        default=330.0,
        help="how long to wait for the payment (default: %(default)s s, the code's validity "
        "and a margin)",
    )
    parser.set_defaults(handler=run)


def pos_roles() -> tuple[frozenset[Any], frozenset[Any]]:
    """What a POS needs, and what it may hold: debit for sales; credit only for refunds (a
    refund is a Credit on the card; without the role a refund is refused, `role_not_held`)."""
    from card_reader.keys import KeyRole

    return frozenset({KeyRole.DEBIT}), frozenset({KeyRole.DEBIT, KeyRole.CREDIT})


def run(arguments: argparse.Namespace) -> int:
    from bus_terminals.device import initialise

    folder = state_folder(arguments)
    if arguments.init:
        print(initialise(folder))
        return 0
    if arguments.qris is not None:
        return sell_by_qris(arguments, folder)
    if not arguments.merchant:
        raise UserError("--merchant is required")
    if not (arguments.reader or arguments.emulated):
        raise UserError("give --reader NAME or --emulated DECK")
    if arguments.reader and not arguments.amount:
        raise UserError("--reader needs --amount")
    from bus_terminals.journal import Journal
    from bus_terminals.point_of_sale import refund_decider, sale_decider, sale_rupiah_max

    keys = terminal_keys(arguments, "POS", *pos_roles())
    journal_holder: list[Journal] = []

    def decider_for(words: list[str], synced: Any) -> Any:
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
        return run_device(
            arguments,
            folder,
            keys,
            decider_for,
            merchant_id=arguments.merchant,
            fleet=fleet_from_arguments(arguments, folder),
        )
    finally:
        for journal in journal_holder:
            journal.close()


qris_poll_interval_s = 2.0


def sell_by_qris(arguments: argparse.Namespace, folder: Path) -> int:
    """One QRIS sale through the back office (the merchant is the one this POS is registered
    to): the code on stderr (and --qr-out), the receipt on stdout."""
    from bus_terminals.device import key_path
    from bus_terminals.sync import load_private_key

    if not 0 < arguments.qris <= 10_000_000:
        raise UserError("--qris is the sale amount, 1..10000000 rupiah")
    if arguments.qr_out and arguments.qr_out.suffix.lower() not in (".png", ".svg"):
        raise UserError("--qr-out must end in .png or .svg")
    if not key_path(folder).exists():
        raise UserError(f"no terminal key in {folder}: run with --init and register the POS")
    counter = folder / "qris-last-sale"
    sale = arguments.sale or int((counter.read_text() if counter.exists() else "0") or 0) + 1
    url = arguments.backoffice.split(",")[0]
    receipt = asyncio.run(
        _qris_sale(url, arguments, load_private_key(key_path(folder)), sale, counter)
    )
    print(json.dumps(receipt), flush=True)
    return 0 if receipt["state"] == "paid" else 1


async def _qris_sale(
    url: str, arguments: argparse.Namespace, key: Any, sale: int, counter: Path
) -> dict[str, Any]:
    import aiohttp

    from bus_terminals.qris_till import Till, TillError, finished_states, qr_text, save_qr_image
    from ledger.clock import system_clock

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        till = Till(http, url, arguments.terminal_id, key, system_clock.unix_ms)
        try:
            shown = await till.sell(sale, arguments.qris)
        except TillError as error:
            raise UserError(f"QRIS sale refused: {error}") from error
        counter.write_text(str(sale))
        print(qr_text(shown.qr_content), file=sys.stderr)
        print(
            f"{shown.merchant_name}: Rp {shown.amount_rupiah:,} — scan to pay, "
            f"valid until {shown.expires_at} (order {shown.order_id})".replace(",", "."),
            file=sys.stderr,
            flush=True,
        )
        if arguments.qr_out:
            save_qr_image(shown.qr_content, arguments.qr_out)
        deadline = system_clock.monotonic() + arguments.wait_s
        current = shown
        while current.state not in finished_states and system_clock.monotonic() < deadline:
            await asyncio.sleep(qris_poll_interval_s)  # asking the back office, not syncing
            try:
                current = await till.status(shown.order_id)
            except TillError as error:  # offline for a moment: ask again
                print(f"ksh pos: still waiting ({error})", file=sys.stderr)
    return {
        "order_id": current.order_id,
        "amount": current.amount_rupiah,
        "merchant": current.merchant_name,
        "state": current.state,
        "paid_at": current.paid_at,
    }
