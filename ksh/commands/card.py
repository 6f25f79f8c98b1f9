"""`ksh card`: software cards in the PC/SC stack, and the card operations of a service desk.

`emulate` puts a software card into vsmartcard's vpcd, so every PC/SC program (ours included)
sees it in "Virtual PCD" as it would see a card on a real reader. The other commands talk to a
PC/SC reader by name or by a unique part of its name.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ksh.cli import UserError

if TYPE_CHECKING:
    from card_reader.emulator import EmulatedCard
    from card_reader.pcsc import PcscReader

card_wait_ms_default = 10_000
deck_cards_max = 10_000


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "card", help="software cards, readers, and card issue / top-up / inspection"
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    emulate = actions.add_parser(
        "emulate",
        help="put a software card into vpcd (the PC/SC 'Virtual PCD' reader) until Ctrl-C",
        description="Connect a software DESFire card to vsmartcard's vpcd, so that pcscd shows "
        "it in the 'Virtual PCD' reader. A deck card's state is written back to the deck each "
        "time the card leaves the field, and on exit.",
    )
    emulate.add_argument(
        "--vpcd",
        default="127.0.0.1:35963",
        metavar="HOST:PORT",
        help="vpcd to connect to (slot 0 is port 35963, slot 1 is 35964; default %(default)s)",
    )
    source = emulate.add_mutually_exclusive_group(required=True)
    source.add_argument("--blank", action="store_true", help="a factory-fresh card")
    source.add_argument("--deck", type=Path, metavar="FILE", help="a card deck (JSON)")
    emulate.add_argument("--index", type=int, default=0, help="which card of the deck (from 0)")
    emulate.set_defaults(handler=run_emulate)

    readers = actions.add_parser("readers", help="list the PC/SC readers pcscd knows")
    readers.set_defaults(handler=run_readers)

    deck_new = actions.add_parser(
        "deck-new", help="write a deck of factory-fresh software cards (JSON)"
    )
    deck_new.add_argument("--out", type=Path, required=True, metavar="FILE")
    deck_new.add_argument("--cards", type=int, default=10, help="how many (default 10)")
    deck_new.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    deck_new.set_defaults(handler=run_deck_new)


# ---------------------------------------------------------------------------- emulate


@contextlib.contextmanager
def deck_lock(path: Path) -> Iterator[None]:
    """Serialise writers of one deck (several emulators may share it, one card each)."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def load_deck_or_explain(path: Path) -> list[EmulatedCard]:
    from card_reader.emulator import load_deck

    try:
        return load_deck(path)
    except FileNotFoundError as error:
        raise UserError(f"no deck at {path} (make one with `ksh card deck-new`)") from error
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read the deck {path}: {error}") from error


class DeckCard:
    """A deck card in the field: the emulator card, written back to its deck whenever it leaves
    the field (power off or torn), if its committed state changed."""

    def __init__(self, card: EmulatedCard, deck_path: Path, index: int) -> None:
        self.card = card
        self.deck_path = deck_path
        self.index = index
        self._saved = card.to_dict()

    @property
    def uid(self) -> bytes:
        return self.card.uid

    def atr(self) -> bytes:
        return self.card.atr()

    def power_on(self) -> None:
        self.card.power_on()

    def power_off(self) -> None:
        self.card.power_off()
        self.save_if_changed()

    def process(self, command: bytes) -> bytes:
        from card_reader.emulator import CardPoweredOff

        try:
            return self.card.process(command)
        except CardPoweredOff:
            self.save_if_changed()
            raise

    def save_if_changed(self) -> None:
        from card_reader.emulator import EmulatedCard, save_deck

        current = self.card.to_dict()
        if current == self._saved:
            return
        with deck_lock(self.deck_path):
            cards = load_deck_or_explain(self.deck_path)
            cards[self.index] = EmulatedCard.from_dict(current)
            save_deck(cards, self.deck_path)
        self._saved = current


def run_emulate(arguments: argparse.Namespace) -> int:
    from card_reader.emulator import EmulatedCard
    from card_reader.vpcd import VirtualCard, VpcdAddress, VpcdBridge

    try:
        address = VpcdAddress.parse(arguments.vpcd)
    except ValueError as error:
        raise UserError(str(error)) from error
    card: VirtualCard
    if arguments.blank:
        card = EmulatedCard()
        described = "blank card"
    else:
        cards = load_deck_or_explain(arguments.deck)
        if not 0 <= arguments.index < len(cards):
            raise UserError(
                f"--index {arguments.index} is outside the deck ({len(cards)} cards, from 0)"
            )
        card = DeckCard(cards[arguments.index], arguments.deck, arguments.index)
        described = f"card {arguments.index} of {arguments.deck}"
    print(
        f"{described} {card.uid.hex().upper()} -> vpcd at {address} (Ctrl-C to take it away)",
        flush=True,
    )
    bridge = VpcdBridge(card, address)
    try:
        bridge.serve()
    except KeyboardInterrupt:
        pass
    finally:
        bridge.stop()
        card.power_off()  # a deck card saves itself here
    print("card removed", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- readers, decks


def run_readers(arguments: argparse.Namespace) -> int:
    from card_reader.pcsc import list_reader_names
    from card_reader.port import ReaderPortError

    try:
        names = list_reader_names()
    except ReaderPortError as error:
        raise UserError("cannot reach pcscd: is it running? (start it as root: pcscd)") from error
    if not names:
        raise UserError("pcscd runs but knows no reader (plug one in, or install vpcd)")
    print("\n".join(names))
    return 0


def run_deck_new(arguments: argparse.Namespace) -> int:
    from card_reader.emulator import EmulatedCard, save_deck

    if not 1 <= arguments.cards <= deck_cards_max:
        raise UserError(f"--cards must be 1..{deck_cards_max}")
    if arguments.out.exists() and not arguments.force:
        raise UserError(f"{arguments.out} exists (use --force to overwrite it)")
    cards = [EmulatedCard() for _ in range(arguments.cards)]
    try:
        save_deck(cards, arguments.out)
    except OSError as error:
        raise UserError(f"cannot write {arguments.out}: {error.strerror}") from error
    print(f"{len(cards)} blank cards -> {arguments.out}")
    return 0


# ---------------------------------------------------------------------------- reader access


def open_reader(wanted: str, wait_ms: int) -> PcscReader:
    """The reader named (or uniquely matched by) `wanted`, with a card connected."""
    from card_reader.pcsc import PcscReader
    from card_reader.port import ReaderPortError

    try:
        reader = PcscReader(wanted)
    except ReaderPortError as error:
        raise UserError(str(error)) from error
    try:
        if not reader.wait_for_card(wait_ms):
            raise UserError(f"no card on reader {reader.name!r} after {wait_ms / 1000:g} s")
    except ReaderPortError as error:
        reader.close()
        raise UserError(str(error)) from error
    except UserError:
        reader.close()
        raise
    return reader
