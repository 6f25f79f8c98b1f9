"""Tap: a complete debit transaction on the software card, in-process and through pcscd, side by side.

One tap = a validator's whole card transaction on the KSH application (`KshCard.read_state` then
`debit`): select, authenticate with the debit key, read profile, purse, trip state and the newest
log record, debit, write trip state and log record, commit. The same card (two copies of one
personalised card) is tapped in-process (`EmulatedReader`) and through the real stack: pyscard →
pcscd → vpcd → the vpcd bridge → the emulator (`ksh card emulate`, in its own process). The card
stays in the field between taps, so the figures are the transaction itself, not pcscd's
card-detection polling.

`--keys` chooses where the debit master sits: `file` (a key store view in memory, development),
`token` (a SoftHSM 2 token: each tap asks the token for the card's key, two AES operations over
PKCS#11) or `both` (default), side by side in one run, the token figures prefixed `token_`.

Starts pcscd when it is not running and we are root, and stops it again afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ksh.signals import Stop, stop_on_signals

if TYPE_CHECKING:
    from card_reader.emulator import EmulatedCard
    from card_reader.keys import CardKeys, KeyStore
    from card_reader.port import ReaderPort

card_timeout_ms = 10_000
fare_rupiah = 3_500
warmup_taps = 20
purse_rupiah_max = 2_000_000  # Bank Indonesia's cap for unregistered e-money
bench_terminal_id = 9_999


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--taps", type=int, default=300, help="timed taps per side (default 300)")
    parser.add_argument(
        "--reader",
        default="Virtual PCD 00 00",
        help="the PC/SC reader vpcd slot 0 appears as (default: %(default)s)",
    )
    parser.add_argument(
        "--vpcd", default="127.0.0.1:35963", help="vpcd slot 0 (default: %(default)s)"
    )
    parser.add_argument(
        "--keys",
        choices=("file", "token", "both"),
        default="both",
        help="debit master in a key store view, in a SoftHSM 2 token, or both side by side "
        "(default: %(default)s)",
    )


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def time_taps(tap: Callable[[int], object], taps: int, stop: Stop) -> list[float]:
    """Milliseconds per tap, after a warm-up; the collector is kept out of the timed region.
    A stop signal ends it between two taps (`Stopped`)."""
    for sequence in range(warmup_taps):
        stop.check()
        tap(sequence)
    gc.collect()
    gc.disable()
    try:
        samples: list[float] = []
        for sequence in range(taps):
            stop.check()
            started = time.perf_counter()
            tap(warmup_taps + sequence)
            samples.append((time.perf_counter() - started) * 1000)
        return samples
    finally:
        gc.enable()


def personalised_card() -> EmulatedCard:
    """A KSH card with a full purse (demo keys: a benchmark, not a deployment)."""
    from card_reader.deck import make_ksh_deck

    return make_ksh_deck(bench_keys(), [purse_rupiah_max], seed="bench-tap")[0]


def bench_keys() -> KeyStore:
    from card_reader.keys import demo_key_store

    return demo_key_store("bench-tap")


def debit(reader: ReaderPort, keys: CardKeys, sequence: int) -> None:
    """One complete validator tap: GET DATA UID, select, authenticate with the debit key, read
    profile, purse, trip state and newest log record, debit, write trip state and log record,
    commit."""
    from card_reader.ksh_card import CardState, KshCard

    card = KshCard(reader, keys)
    state = card.read_state()
    trip_state = sequence.to_bytes(4, "big") + state.trip_state[4:]
    result = card.debit(
        fare_rupiah, trip_state, terminal_id=bench_terminal_id, time_unix_seconds=sequence
    )
    assert isinstance(result, CardState), f"the bench card refused a debit: {result}"


@contextlib.contextmanager
def emulator_process(deck: Path, vpcd: str) -> Iterator[subprocess.Popen[bytes]]:
    """`ksh card emulate` with the deck's first card, in its own process (as a card is its own
    device; a bridge thread here would share our interpreter lock and add its own jitter)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ksh", "card", "emulate", "--deck", str(deck), "--vpcd", vpcd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)  # it saves the deck and exits, as on Ctrl-C
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    # SIGINT or SIGTERM (even SIGINT inherited ignored) ends the run between two taps, and the
    # emulator process and a pcscd started here are stopped on the way out.
    with stop_on_signals() as stop:
        return run_until_stopped(arguments, stop)


@contextlib.contextmanager
def key_views(kinds: str) -> Iterator[dict[str, CardKeys]]:
    """The debit keys by kind: the file store's view, and the same masters loaded into a
    throw-away SoftHSM 2 token (random PIN) in a temporary folder."""
    import secrets

    from card_reader.keys import KeyRole
    from card_reader.token_keys import TokenError, create_token, load_token, open_token

    store = bench_keys()
    views: dict[str, CardKeys] = {}
    if kinds in ("file", "both"):
        views["file"] = store.view(KeyRole.DEBIT)
    if kinds == "file":
        yield views
        return
    with tempfile.TemporaryDirectory() as folder:
        pin = secrets.token_hex(8)
        try:
            create_token(Path(folder), "bench", pin)
            debit_keys = store.accepted_keys(KeyRole.DEBIT)
            load_token(Path(folder), "bench", pin, debit_keys, {KeyRole.DEBIT: 1})
            token = open_token(Path(folder), "bench", pin)
        except TokenError as error:
            raise ValueError(str(error)) from error
        views["token"] = token
        try:
            yield views
        finally:
            token.close()


def run_until_stopped(arguments: argparse.Namespace, stop: Stop) -> dict[str, Any]:
    from card_reader.pcsc import start_pcscd_if_needed, stop_pcscd
    from card_reader.port import ReaderPortError

    taps = int(arguments.taps)
    taps_max = purse_rupiah_max // fare_rupiah - warmup_taps - 1
    if not 1 <= taps <= taps_max:
        raise ValueError(f"--taps must be 1..{taps_max} (one purse's worth)")
    card = personalised_card()
    figures: dict[str, Any] = {"taps": taps}
    with key_views(arguments.keys) as views:
        try:
            started_pcscd = start_pcscd_if_needed(arguments.reader)
        except ReaderPortError as error:
            raise ValueError(str(error)) from error
        try:
            for kind, keys in views.items():
                prefix = "" if kind == "file" else f"{kind}_"
                side = one_kind(card, keys, arguments, taps, stop)
                figures.update({f"{prefix}{name}": value for name, value in side.items()})
        except ReaderPortError as error:
            raise ValueError(str(error)) from error
        finally:
            if started_pcscd is not None:
                stop_pcscd(started_pcscd)
    figures["load_average_1min"] = round(os.getloadavg()[0], 2)  # other work on the machine
    return figures


def one_kind(
    card: EmulatedCard, keys: CardKeys, arguments: argparse.Namespace, taps: int, stop: Stop
) -> dict[str, Any]:
    """In-process, then through pcscd, each on its own fresh copy of the card."""
    from card_reader.emulator import EmulatedCard, EmulatedReader, save_deck
    from card_reader.ksh_card import read_uid
    from card_reader.pcsc import PcscReader

    in_process_card = EmulatedCard.from_dict(card.to_dict())
    in_process_reader = EmulatedReader()
    in_process_reader.insert(in_process_card)
    debit(in_process_reader, keys, 0)  # warm-up
    # Counted over the timed taps, each of which writes a new trip state (the warm-up's is
    # unchanged, which saves the WriteData exchange).
    exchanges_before = in_process_reader.exchanges
    in_process_ms = time_taps(
        lambda sequence: debit(in_process_reader, keys, sequence + 1), taps, stop
    )
    exchanges_per_tap = (in_process_reader.exchanges - exchanges_before) / (warmup_taps + taps)
    stop.check()
    with tempfile.TemporaryDirectory() as folder:
        deck = Path(folder) / "deck.json"
        save_deck([card], deck)
        with PcscReader(arguments.reader) as reader:
            with emulator_process(deck, arguments.vpcd):
                if not reader.wait_for_card(card_timeout_ms):
                    stop.check()
                    raise ValueError(f"no card appeared in {reader.name!r} (vpcd on that port?)")
                pcsc_ms = time_taps(lambda sequence: debit(reader, keys, sequence), taps, stop)
                # One bare exchange (GET DATA UID: no crypto on either side): the stack's cost.
                exchange_ms = time_taps(lambda _: read_uid(reader), taps, stop)
            # Gone from pcscd's view before the next kind's card comes (or the next run's).
            reader.wait_for_removal(card_timeout_ms)
    figures = {
        "pcsc_exchange_ms_median": round(statistics.median(exchange_ms), 3),
        "pcsc_exchange_ms_p99": round(percentile(exchange_ms, 0.99), 3),
        "exchanges_per_tap": exchanges_per_tap,
        "inprocess_ms_median": round(statistics.median(in_process_ms), 3),
        "inprocess_ms_p99": round(percentile(in_process_ms, 0.99), 3),
        "pcsc_ms_median": round(statistics.median(pcsc_ms), 3),
        "pcsc_ms_p99": round(percentile(pcsc_ms, 0.99), 3),
    }
    figures["pcsc_to_inprocess_median_ratio"] = round(
        figures["pcsc_ms_median"] / figures["inprocess_ms_median"], 2
    )
    return figures
