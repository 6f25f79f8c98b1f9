"""Tap: a complete debit transaction on the software card, in-process and through pcscd, side by side.

One tap = select the application, authenticate with the debit key, read the card state (purse,
trip state), debit, write trip state and a log record, commit. The same card (two copies of one
personalised card) is tapped in-process (`EmulatedReader`) and through the real stack: pyscard →
pcscd → vpcd → the vpcd bridge → the emulator (`ksh card emulate`, in its own process). The card stays in the field
between taps, so the figures are the transaction itself, not pcscd's card-detection polling.

Starts pcscd when it is not running and we are root, and stops it again afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

card_timeout_ms = 10_000
fare_rupiah = 3_500
warmup_taps = 20
purse_aid = 0x4B5348
debit_key_number = 1
debit_key = bytes.fromhex("00112233445566778899AABBCCDDEEFF")
purse_file, trip_file, log_file = 1, 2, 3
purse_rupiah_max = 2_000_000  # Bank Indonesia's cap for unregistered e-money


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


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def time_taps(tap: Callable[[int], None], taps: int) -> list[float]:
    """Milliseconds per tap, after a warm-up; the collector is kept out of the timed region."""
    for sequence in range(warmup_taps):
        tap(sequence)
    gc.collect()
    gc.disable()
    try:
        samples: list[float] = []
        for sequence in range(taps):
            started = time.perf_counter()
            tap(warmup_taps + sequence)
            samples.append((time.perf_counter() - started) * 1000)
        return samples
    finally:
        gc.enable()


def personalised_card() -> Any:
    """A card with a full purse, trip state and a cyclic log; key 1 may debit."""
    from card_reader.desfire import Desfire
    from card_reader.desfire_files import AccessRights, CommMode
    from card_reader.emulator import EmulatedCard, EmulatedReader

    card = EmulatedCard(bytes.fromhex("04BE4C4B534801"))
    reader = EmulatedReader()
    reader.insert(card)
    desfire = Desfire(reader, card_uid=card.uid)
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.create_application(purse_aid, 0x0F, 2)
    desfire.select_application(purse_aid)
    desfire.authenticate_ev2_first(0, bytes(16))
    desfire.change_key(debit_key_number, debit_key, 1, old_key=bytes(16))
    access = AccessRights(read=1, write=1, read_write=1, change=0)
    desfire.create_value_file(
        purse_file,
        CommMode.FULL,
        access,
        0,
        purse_rupiah_max,
        purse_rupiah_max,
        limited_credit_enabled=False,
        free_get_value=False,
    )
    desfire.create_backup_data_file(trip_file, CommMode.FULL, access, 48)
    desfire.create_cyclic_record_file(log_file, CommMode.FULL, access, 32, 11)
    reader.remove()
    return card


def debit(reader: Any, card_uid: bytes, sequence: int) -> None:
    """One complete debit tap."""
    from card_reader.desfire import Desfire
    from card_reader.desfire_files import CommMode

    desfire = Desfire(reader, card_uid=card_uid)
    desfire.select_application(purse_aid)
    desfire.authenticate_ev2_first(debit_key_number, debit_key)
    balance_rupiah = desfire.get_value(purse_file, CommMode.FULL)
    trip_state = desfire.read_data(trip_file, 0, 48, CommMode.FULL)
    assert balance_rupiah >= fare_rupiah, "the bench ran the purse dry"
    desfire.debit(purse_file, fare_rupiah, CommMode.FULL)
    desfire.write_data(trip_file, 0, sequence.to_bytes(4, "big") + trip_state[4:], CommMode.FULL)
    record = sequence.to_bytes(4, "big") + (balance_rupiah - fare_rupiah).to_bytes(4, "big")
    desfire.write_record(log_file, 0, record.ljust(32, b"\0"), CommMode.FULL)
    desfire.commit_transaction()


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
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(arguments: argparse.Namespace) -> dict[str, Any]:
    from card_reader.emulator import EmulatedCard, EmulatedReader, save_deck
    from card_reader.pcsc import PcscReader, start_pcscd_if_needed, stop_pcscd
    from card_reader.port import ReaderPortError

    taps = int(arguments.taps)
    taps_max = purse_rupiah_max // fare_rupiah - warmup_taps - 1
    if not 1 <= taps <= taps_max:
        raise ValueError(f"--taps must be 1..{taps_max} (one purse's worth)")
    card = personalised_card()

    in_process_card = EmulatedCard.from_dict(card.to_dict())
    in_process_reader = EmulatedReader()
    in_process_reader.insert(in_process_card)
    exchanges_before = in_process_reader.exchanges
    debit(in_process_reader, in_process_card.uid, 0)
    exchanges_per_tap = in_process_reader.exchanges - exchanges_before
    in_process_ms = time_taps(
        lambda sequence: debit(in_process_reader, in_process_card.uid, sequence + 1),
        taps,
    )

    try:
        started_pcscd = start_pcscd_if_needed(arguments.reader)
    except ReaderPortError as error:
        raise ValueError(str(error)) from error
    try:
        with tempfile.TemporaryDirectory() as folder:
            deck = Path(folder) / "deck.json"
            save_deck([card], deck)
            with emulator_process(deck, arguments.vpcd), PcscReader(arguments.reader) as reader:
                if not reader.wait_for_card(card_timeout_ms):
                    raise ValueError(f"no card appeared in {reader.name!r} (vpcd on that port?)")
                pcsc_ms = time_taps(lambda sequence: debit(reader, card.uid, sequence), taps)
    except ReaderPortError as error:
        raise ValueError(str(error)) from error
    finally:
        if started_pcscd is not None:
            stop_pcscd(started_pcscd)

    figures = {
        "taps": taps,
        "exchanges_per_tap": exchanges_per_tap,
        "inprocess_ms_median": round(statistics.median(in_process_ms), 3),
        "inprocess_ms_p99": round(percentile(in_process_ms, 0.99), 3),
        "pcsc_ms_median": round(statistics.median(pcsc_ms), 3),
        "pcsc_ms_p99": round(percentile(pcsc_ms, 0.99), 3),
        "pcsc_exchange_overhead_ms_median": round(
            (statistics.median(pcsc_ms) - statistics.median(in_process_ms)) / exchanges_per_tap, 3
        ),
    }
    figures["pcsc_to_inprocess_median_ratio"] = round(
        figures["pcsc_ms_median"] / figures["inprocess_ms_median"], 2
    )
    return figures
