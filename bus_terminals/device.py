"""A terminal as a running device: the reader loop in the foreground, sync in a thread.

Used by `ksh validator` and `ksh pos`. The reader is a PC/SC reader (`card_reader.pcsc`) or a
deck of emulated cards, tapped by typing a card's index. Each tap's `Feedback` is printed as one
JSON line (what the display shows). The sync thread owns a second journal connection
(`recover=False`) and uploads/downloads every `sync_interval_ms`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from bus_terminals.fleet import Fleet, use_key_versions
from bus_terminals.journal import Journal
from bus_terminals.sync import (
    SyncClient,
    SyncState,
    UploadStatus,
    load_private_key,
    save_new_private_key,
)
from bus_terminals.terminal import Decide, Feedback, Terminal
from bus_terminals.wire import load_public_key, public_key_text
from card_reader.keys import CardKeys
from card_reader.ksh_card import KshCard
from card_reader.port import ReaderPort

sync_interval_ms_default = 30_000
card_wait_ms = 500
removal_wait_ms = 60_000


def key_path(state_folder: Path) -> Path:
    return state_folder / "terminal-key"


def initialise(state_folder: Path) -> str:
    """Create the terminal's Ed25519 key (once); return its public key to register."""
    state_folder.mkdir(parents=True, exist_ok=True)
    path = key_path(state_folder)
    key = load_private_key(path) if path.exists() else save_new_private_key(path)
    return public_key_text(key.public_key())


def fleet_of(state_folder: Path, fleet_public_key: str | None) -> Fleet | None:
    """The terminal's fleet packages, when it is configured with the back office's fleet key
    (`ksh fleet key` prints it); ValueError for a bad key or damaged fleet state."""
    if fleet_public_key is None:
        return None
    return Fleet.open(state_folder / "fleet", load_public_key(fleet_public_key))


class SyncThread:
    def __init__(
        self,
        backoffice_url: str,
        terminal_id: str,
        state_folder: Path,
        state: SyncState,
        interval_ms: int,
        now_ms: Callable[[], int],
        feed_service_end: dt.date | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.stop_event: asyncio.Event | None = None
        self.loop = asyncio.new_event_loop()
        journal = Journal(state_folder / "journal.db", terminal_id, recover=False)
        key = load_private_key(key_path(state_folder))
        self.client = SyncClient(
            backoffice_url,
            terminal_id,
            key,
            journal,
            state,
            now_ms=now_ms,
            feed_service_end=feed_service_end,
            fleet=fleet,
        )
        self.state_folder = state_folder
        self.interval_ms = interval_ms
        self.thread = threading.Thread(target=self._run, name="sync", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.stop_event = asyncio.Event()
            try:
                await self.client.run(self.interval_ms, self.stop_event, self.state_folder)
            finally:
                await self.client.close()

        self.loop.run_until_complete(main())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.stop_event is not None and not self.loop.is_closed():  # not stopped already
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():  # closed here, not by the garbage collector later
            self.loop.close()
        self.client.journal.close()


class Device:
    def __init__(
        self,
        terminal_id: str,
        state_folder: Path,
        keys: CardKeys,
        backoffice_url: str,
        *,
        now_ms: Callable[[], int],
        route: str = "",
        merchant_id: str = "",
        sync_interval_ms: int = sync_interval_ms_default,
        feed_service_end: dt.date | None = None,  # a validator's fare feed: reported on sync
        fleet: Fleet | None = None,  # its fleet packages (`fleet_of`), shared by taps and sync
    ) -> None:
        if not key_path(state_folder).exists():
            raise FileNotFoundError(f"{key_path(state_folder)}: run with --init first")
        self.keys = keys
        self.state = SyncState.load(state_folder)
        self.journal = Journal(state_folder / "journal.db", terminal_id)
        if fleet is not None:
            use_key_versions(fleet, keys)
        self.terminal = Terminal(
            terminal_id, self.journal, self.state, route=route, merchant_id=merchant_id
        )
        self.sync = SyncThread(
            backoffice_url,
            terminal_id,
            state_folder,
            self.state,
            sync_interval_ms,
            now_ms,
            feed_service_end,
            fleet,
        )

    def __enter__(self) -> Device:
        self.sync.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.sync.stop()
        self.journal.close()

    def tap(self, reader: ReaderPort, time_ms: int, decide: Decide) -> Feedback:
        return self.terminal.tap(KshCard(reader, self.keys), time_ms, decide)


def feedback_line(feedback: Feedback) -> str:
    document = asdict(feedback)
    document["verdict"] = feedback.verdict.value
    document["reason"] = feedback.reason.value
    return json.dumps(document, sort_keys=True)


def pcsc_taps(reader: ReaderPort, stop: Callable[[], bool]) -> Iterator[ReaderPort]:
    """Yield the reader each time a card arrives; wait for it to leave (a minute at most)
    before the next. `stop` is asked at least every `card_wait_ms`."""
    while not stop():
        if reader.wait_for_card(card_wait_ms):
            yield reader
            for _ in range(removal_wait_ms // card_wait_ms):
                if stop() or reader.wait_for_removal(card_wait_ms):
                    break


def deck_taps(
    deck_path: Path, lines: Iterable[str], out: TextIO
) -> Iterator[tuple[ReaderPort, list[str]]]:
    """Read `INDEX [words...]` lines; insert that card of the deck, yield, save the deck."""
    # Imported here, for development only: a validator on a real reader never loads the
    # software card.
    from card_reader.emulator import EmulatedCard, EmulatedReader, load_deck, save_deck

    cards: list[EmulatedCard] = load_deck(deck_path)
    reader = EmulatedReader("emulated deck")
    for line in lines:
        words = line.split()
        if not words:
            continue
        if words[0] in ("q", "quit", "exit"):
            break
        if not words[0].isdigit() or int(words[0]) >= len(cards):
            print(json.dumps({"error": f"card index 0..{len(cards) - 1} expected"}), file=out)
            continue
        reader.insert(cards[int(words[0])])
        try:
            yield reader, words[1:]
        finally:
            reader.remove()
            save_deck(cards, deck_path)


def deliver_once(
    terminal_id: str,
    state_folder: Path,
    keys: CardKeys,
    backoffice_url: str,
    reader: ReaderPort,
    *,
    now_ms: Callable[[], int],
) -> tuple[Feedback, UploadStatus]:
    """A cash counter's reader, for the card on it: fetch the pending top-ups (the cash just
    booked for it among them), write the card's oldest onto it in a journalled card
    transaction (`Terminal.deliver`), and upload the record so the back office books it."""
    if not key_path(state_folder).exists():
        raise FileNotFoundError(f"{key_path(state_folder)}: run with --init first")
    state = SyncState.load(state_folder)
    journal = Journal(state_folder / "journal.db", terminal_id)
    client = SyncClient(
        backoffice_url,
        terminal_id,
        load_private_key(key_path(state_folder)),
        journal,
        state,
        now_ms=now_ms,
    )
    terminal = Terminal(terminal_id, journal, state)

    async def main() -> tuple[Feedback, UploadStatus]:
        try:
            await client.upload_all()  # what an earlier run could not send
            if await client.download():
                state.save(state_folder)
            feedback = terminal.deliver(KshCard(reader, keys), now_ms())
            return feedback, await client.upload_all()
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    finally:
        journal.close()
