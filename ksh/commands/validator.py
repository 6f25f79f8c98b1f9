"""`ksh validator`: a bus validator on a PC/SC reader or a deck of emulated cards."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ksh import argtypes
from ksh.cli import UserError
from ksh.commands.card_keys import terminal_keys
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
        help="a role-limited sealed key store, for development (ksh card keystore-export; "
        "passphrase from KSH_KEYSTORE_PASSPHRASE or a prompt)",
    )
    keys.add_argument(
        "--demo-keys",
        action="store_true",
        help="use the public demo card keys (only for emulated demo decks; never in service)",
    )
    keys.add_argument(
        "--token-dir",
        type=Path,
        metavar="DIR",
        help="the terminal's key token, a SoftHSM 2 folder made by `ksh card token-load` "
        "(user PIN from KSH_TOKEN_PIN or a prompt)",
    )
    parser.add_argument(
        "--token-label", default="ksh", metavar="LABEL", help="the token's label (default ksh)"
    )
    parser.add_argument(
        "--fleet-key",
        metavar="KEY|FILE",
        help="the back office's fleet public key (as `ksh fleet key` prints it), or a file "
        "holding it: take the signed fare feed, key version, deny list and settings packages "
        "it publishes (default: none taken)",
    )
    parser.add_argument(
        "--sync-interval-s",
        type=argtypes.seconds,
        default=30.0,
        help="seconds between syncs (default 30; a settings package may set it)",
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
    parser.add_argument(
        "--qris-rides",
        action="store_true",
        help="sell rides by QRIS to riders without a card (the operator must take QRIS: ksh "
        "operator qris): with --emulated, type 'qr' to sell one at the cash fare; the code and "
        "the outcome are JSON lines, and card taps go on meanwhile",
    )
    parser.set_defaults(handler=run)


def state_folder(arguments: argparse.Namespace) -> Path:
    from ledger.database import data_dir

    return arguments.state or data_dir() / "terminals" / arguments.terminal_id


def validator_roles() -> tuple[frozenset[Any], frozenset[Any]]:
    """What a validator needs, and what it may hold: credit delivers pending top-ups."""
    from card_reader.keys import KeyRole

    return frozenset({KeyRole.DEBIT}), frozenset({KeyRole.DEBIT, KeyRole.CREDIT})


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
    from bus_terminals.validator import fare_decider, fleet_fare_decider

    fleet = fleet_from_arguments(arguments, folder)
    shipped = load_feed()
    running = (fleet.tariff() if fleet is not None else None) or shipped
    if arguments.route not in running.network_of_route:
        raise UserError(f"route {arguments.route!r} is not in the tariff")
    deciders: dict[int, Any] = {}  # one for the device's sync state (built at its first tap)

    def decider_for(words: list[str], synced: Any) -> Any:
        """Passes granted at the desk wait in the device's sync state (`SyncState`)."""
        if id(synced) not in deciders:
            deciders[id(synced)] = (
                fare_decider(shipped, arguments.route, arguments.stop, synced.passes_for)
                if fleet is None
                else fleet_fare_decider(
                    fleet, shipped, arguments.route, arguments.stop, synced.passes_for
                )
            )
        return deciders[id(synced)]

    keys = terminal_keys(arguments, "validator", *validator_roles())
    with contextlib.ExitStack() as stack:
        side_command = None
        if arguments.qris_rides:
            side_command = stack.enter_context(qris_ride_seller(arguments, folder, running))
        return run_device(
            arguments,
            folder,
            keys,
            decider_for,
            route=arguments.route,
            feed_service_end=service_end_date(shipped),
            fleet=fleet,
            side_command=side_command,
        )


@contextlib.contextmanager
def qris_ride_seller(arguments: argparse.Namespace, folder: Path, tariff: Any) -> Iterator[Any]:
    """The 'qr' command: a ride sold by QRIS at the cash fare, on a thread of its own."""
    from bus_terminals.device import key_path
    from bus_terminals.qris_till import QrisRides
    from bus_terminals.sync import load_private_key
    from bus_terminals.validator import no_card_fare

    if not arguments.emulated:
        raise UserError("--qris-rides needs --emulated (type 'qr' to sell a ride)")

    def show(ride: dict[str, Any]) -> None:
        print(json.dumps(ride), flush=True)

    rides = QrisRides(
        folder / "journal.db",
        arguments.terminal_id,
        arguments.backoffice.split(",")[0],
        load_private_key(key_path(folder)),
        system_clock.unix_ms,
        show,
    )

    def side_command(words: list[str]) -> bool:
        if words != ["qr"]:
            return False
        priced = no_card_fare(tariff, arguments.route, arguments.stop, system_clock.unix_ms())
        if priced is None:
            show({"error": "no cash fare for this route now"})
        else:
            rides.sell(priced[0], arguments.route, priced[1])
        return True

    with rides:
        yield side_command


def fleet_from_arguments(arguments: argparse.Namespace, folder: Path) -> Any:
    """The terminal's fleet packages (`bus_terminals.fleet.Fleet`), or None without --fleet-key."""
    from bus_terminals.device import fleet_of
    from ksh.commands.terminal import public_key_of

    if arguments.fleet_key is None:
        return None
    try:
        return fleet_of(folder, public_key_of(arguments.fleet_key))
    except ValueError as error:  # a bad key, or damaged fleet state
        raise UserError(f"--fleet-key: {error}") from error


def run_device(
    arguments: argparse.Namespace,
    folder: Path,
    keys: Any,
    decider_for: Any,
    *,
    route: str = "",
    merchant_id: str = "",
    feed_service_end: Any = None,  # datetime.date: a validator's fare feed, reported on sync
    fleet: Any = None,  # bus_terminals.fleet.Fleet, from --fleet-key
    side_command: Callable[[list[str]], bool] | None = None,  # True: a line it took (not a tap)
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
            fleet=fleet,
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
            if side_command is not None:
                lines = (line for line in lines if not side_command(line.split()))
            for reader, words in deck_taps(arguments.emulated, lines, sys.stdout):
                decide = decider_for(words, device.state)
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
                decide = decider_for([], device.state)
                print(
                    feedback_line(device.tap(present, system_clock.unix_ms(), decide)), flush=True
                )
    return 0
