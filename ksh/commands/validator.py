"""`ksh validator`: a bus validator on a PC/SC reader or a deck of emulated cards."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ksh import argtypes
from ksh.cli import UserError
from ksh.signals import lines_until_stopped, stop_on_signals
from ledger.clock import system_clock


def add_terminal_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--reader", metavar="NAME", help="PC/SC reader (substring of its name)")
    source.add_argument(
        "--emulated",
        metavar="DECK",
        type=Path,
        help="deck of emulated cards; type a card's index on stdin to tap it",
    )
    parser.add_argument(
        "--terminal-id",
        type=argtypes.terminal_id,
        required=True,
        help="this terminal's id, as registered (ksh terminal add)",
    )
    parser.add_argument(
        "--backoffice",
        type=argtypes.http_urls,
        metavar="URL[,URL]",
        default="http://127.0.0.1:8080",
        help="the back office; several hosts separated by commas (the next on connection failure)",
    )
    parser.add_argument(
        "--state",
        type=argtypes.folder,
        help="journal, key and sync state folder (default ./.ksh-data/terminals/TERMINAL_ID)",
    )
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument(
        "--keystore",
        type=Path,
        help="sealed card key store (passphrase from KSH_KEYSTORE_PASSPHRASE or a prompt)",
    )
    keys.add_argument(
        "--demo-keys",
        action="store_true",
        help="use the public demo card keys (only for emulated demo decks; never in service)",
    )
    parser.add_argument(
        "--sync-interval-s",
        type=argtypes.seconds,
        default=30.0,
        help="seconds between syncs with the back office",
    )
    parser.add_argument(
        "--init",
        action="store_true",
        help="create the terminal key, print the public key to register, exit",
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "validator",
        help="run a bus validator (fare core, journal, sync with the back office)",
        description="Run a validator: each tap is priced by the fare core, journalled ahead, "
        "debited on the card and uploaded in signed batches. Feedback: one JSON line per tap.",
    )
    add_terminal_arguments(parser)
    parser.add_argument("--route", required=False, help="the route the bus runs (e.g. K1)")
    parser.add_argument("--stop", help="stop id, when the bus knows it")
    parser.set_defaults(handler=run)


def state_folder(arguments: argparse.Namespace) -> Path:
    from ledger.database import data_dir

    return arguments.state or data_dir() / "terminals" / arguments.terminal_id


def terminal_keys(arguments: argparse.Namespace, *roles: Any) -> Any:
    """The card keys of the terminal's roles: from a sealed key store, or, only when asked
    for explicitly, the public demo keys (anyone can derive those, so never by default)."""
    from card_reader.keys import demo_key_store
    from ksh.commands.card import load_keystore

    if arguments.demo_keys:
        print("ksh: using the public demo card keys", file=sys.stderr)
        return demo_key_store().view(*roles)
    if arguments.keystore is None:
        raise UserError("give --keystore FILE (or --demo-keys for emulated demo decks)")
    return load_keystore(arguments.keystore).view(*roles)


def run(arguments: argparse.Namespace) -> int:
    from bus_terminals.device import initialise

    folder = state_folder(arguments)
    if arguments.init:
        print(initialise(folder))
        return 0
    if not arguments.route:
        raise UserError("--route is required")
    if not (arguments.reader or arguments.emulated):
        raise UserError("give --reader NAME or --emulated DECK")
    from bus_terminals.fare.feed import load_feed, service_end_date
    from bus_terminals.validator import fare_decider
    from card_reader.keys import KeyRole

    tariff = load_feed()
    if arguments.route not in tariff.network_of_route:
        raise UserError(f"route {arguments.route!r} is not in the tariff")
    decide = fare_decider(tariff, arguments.route, arguments.stop)
    keys = terminal_keys(arguments, KeyRole.DEBIT, KeyRole.CREDIT)
    return run_device(
        arguments,
        folder,
        keys,
        lambda words: decide,
        route=arguments.route,
        feed_service_end=service_end_date(tariff),
    )


def run_device(
    arguments: argparse.Namespace,
    folder: Path,
    keys: Any,
    decider_for: Any,
    *,
    route: str = "",
    merchant_id: str = "",
    feed_service_end: Any = None,  # datetime.date: a validator's fare feed, reported on sync
) -> int:
    """The reader loop shared by `ksh validator` and `ksh pos`."""
    from bus_terminals.device import Device, deck_taps, feedback_line, pcsc_taps

    try:
        device = Device(
            arguments.terminal_id,
            folder,
            keys,
            arguments.backoffice,
            now_ms=system_clock.unix_ms,
            route=route,
            merchant_id=merchant_id,
            sync_interval_ms=int(arguments.sync_interval_s * 1000),
            feed_service_end=feed_service_end,
        )
    except (FileNotFoundError, ValueError) as error:  # missing, or damaged state files
        raise UserError(str(error)) from error
    # SIGINT or SIGTERM ends the loop between taps (never inside one), even when SIGINT was
    # inherited ignored; leaving `with device` stops the sync thread and closes the journal.
    with stop_on_signals() as stop, device:
        if arguments.emulated:
            from ksh.commands.card import load_deck_or_explain

            load_deck_or_explain(arguments.emulated)  # missing or not a deck: one line
            lines = lines_until_stopped(sys.stdin, stop)
            for reader, words in deck_taps(arguments.emulated, lines, sys.stdout):
                decide = decider_for(words)
                if decide is None:
                    print('{"error": "unknown command"}', flush=True)
                    continue
                print(feedback_line(device.tap(reader, system_clock.unix_ms(), decide)), flush=True)
        else:
            from card_reader.pcsc import PcscReader
            from card_reader.port import ReaderError

            try:
                reader = PcscReader(arguments.reader)
            except ReaderError as error:
                raise UserError(str(error)) from error
            for present in pcsc_taps(reader, lambda: stop.requested):
                decide = decider_for([])
                print(
                    feedback_line(device.tap(present, system_clock.unix_ms(), decide)), flush=True
                )
    return 0
