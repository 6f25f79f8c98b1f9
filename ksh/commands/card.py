"""`ksh card`: software cards in the PC/SC stack, and the card operations of a service desk.

`emulate` puts a software card into vsmartcard's vpcd, so every PC/SC program (ours included)
sees it in "Virtual PCD" as it would see a card on a real reader. The other commands talk to a
PC/SC reader by name or by a unique part of its name.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import getpass
import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ksh import acting, argtypes
from ksh.cli import UserError
from ksh.commands import card_keys
from ksh.signals import stop_on_signals
from ledger.clock import system_clock

if TYPE_CHECKING:
    from card_reader.emulator import EmulatedCard
    from card_reader.keys import KeyStore, TerminalKeys
    from card_reader.ksh_card import CardState, LogRecord, Profile
    from card_reader.pcsc import PcscReader
    from card_reader.port import ReaderPortError
    from card_reader.vpcd import VpcdBridge

card_wait_ms_default = 10_000
deck_cards_max = 10_000
passphrase_variable = "KSH_KEYSTORE_PASSPHRASE"
passphrase_chars_min = 8
vpcd_hint_after_ms = 3_000  # say so when vpcd has not answered by then


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

    readers = actions.add_parser(
        "readers", help="list the PC/SC readers pcscd knows, and whether a card is in each"
    )
    readers.set_defaults(handler=run_readers)

    info = actions.add_parser(
        "info",
        help="show the card on a reader: UID, version, KSH profile, balance, log",
        description="Read the card on a reader. Without --keystore it reads what any phone may "
        "read (free access, not MAC-checked); with it, it authenticates with the read key, so "
        "every answer is proven to come from a genuine card.",
    )
    add_reader_arguments(info)
    info.add_argument("--keystore", type=Path, metavar="FILE", help="verify with the read key")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=run_info)

    issue = actions.add_parser("issue", help="personalise a blank card as a KSH card")
    add_reader_arguments(issue)
    add_keystore_argument(issue)
    issue.add_argument(
        "--category", required=True, choices=[category.name.lower() for category in categories()]
    )
    issue.add_argument(
        "--card-number", type=int, help="the printed card number (default: made from the UID)"
    )
    issue.add_argument("--balance", type=int, default=0, help="opening balance in rupiah")
    issue.add_argument("--registered", action="store_true", help="a registered (named) card")
    issue.add_argument(
        "--valid-years", type=int, default=5, help="years until expiry (default %(default)s)"
    )
    issue.add_argument("--terminal-id", type=int, default=0, help="this station's terminal id")
    issue.set_defaults(handler=run_issue)

    add_unblock_parser(actions)
    add_top_up_parser(actions)

    keystore_new = actions.add_parser(
        "keystore-new",
        help="generate issuer master keys into a passphrase-sealed key store",
        description="Generate fresh master keys for every role and seal them with a passphrase "
        f"(from {passphrase_variable}, or asked twice).",
    )
    keystore_new.add_argument("--out", type=argtypes.new_file, required=True, metavar="FILE")
    keystore_new.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    keystore_new.set_defaults(handler=run_keystore_new)
    card_keys.register(actions)

    deck_new = actions.add_parser(
        "deck-new",
        help="write a deck of software cards (JSON): blank, or issued with --keystore",
    )
    deck_new.add_argument("--out", type=argtypes.new_file, required=True, metavar="FILE")
    deck_new.add_argument("--cards", type=int, default=10, help="how many (default 10)")
    deck_new.add_argument(
        "--keystore", type=Path, metavar="FILE", help="issue the cards with these keys"
    )
    deck_new.add_argument(
        "--balance", type=int, default=50_000, help="opening balance of issued cards (rupiah)"
    )
    deck_new.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    deck_new.add_argument(
        "--first-number",
        type=int,
        metavar="N",
        help="card number of the first issued card, counting up (default 6032900000000001; "
        "with --register, the one after the highest issued from there)",
    )
    add_deck_register_arguments(deck_new)
    deck_new.set_defaults(handler=run_deck_new)


def add_unblock_parser(actions: Any) -> None:
    unblock = actions.add_parser(
        "unblock",
        help="a blocked card found again or blocked wrongly: active again on its chip "
        "(an issuing station's key store)",
        description="Write a blocked card's status back to active, under the personalisation "
        "key (only an issuing station's key store holds it). Lift its deny list entry too "
        "(ksh deny lift NUMBER), or every terminal refuses it, and blocks it again on the chip. "
        "The back office is asked first (DATABASE_URL or the embedded PostgreSQL): a card it "
        "never issued, or one it replaced, stays blocked; the unblock is a staff action.",
    )
    add_reader_arguments(unblock)
    add_keystore_argument(unblock)
    acting.add_arguments(unblock, "a clerk or a supervisor")
    unblock.set_defaults(handler=run_unblock)


def add_top_up_parser(actions: Any) -> None:
    top_up = actions.add_parser(
        "topup",
        help="development only: credit a card's purse with no journal, upload or booking "
        "(a counter takes cash with `ksh counter top-up`)",
        description="Credit a card directly, for development with cards no back office knows: "
        "nothing is journalled, uploaded or booked, so a back office would find the card "
        "above its purse account and flag it. Refused without --offline-development; a "
        "service counter uses `ksh counter top-up`.",
    )
    add_reader_arguments(top_up)
    add_keystore_argument(top_up)
    top_up.add_argument(
        "--offline-development",
        action="store_true",
        help="yes: these cards are not in any back office's books",
    )
    top_up.add_argument("--amount", type=int, required=True, help="rupiah to add")
    top_up.add_argument("--terminal-id", type=int, default=0, help="this top-up point's id")
    top_up.set_defaults(handler=run_top_up)


def add_deck_register_arguments(deck_new: argparse.ArgumentParser) -> None:
    from ksh import acting

    books = deck_new.add_argument_group(
        "issuing the cards in the back office's books, so their fares are booked (not "
        "quarantined as unknown cards)"
    )
    books.add_argument(
        "--register",
        action="store_true",
        help="issue the cards with their opening balance in the back office's database "
        "(DATABASE_URL, or the embedded PostgreSQL); all or none, before the deck is written",
    )
    books.add_argument(
        "--backoffice-db",
        metavar="URL",
        help="issue them in this database instead (implies --register)",
    )
    acting.add_arguments(books, "a clerk or a supervisor; with --register", required=False)


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reader", required=True, metavar="NAME", help="reader name, or a unique part of it"
    )
    parser.add_argument(
        "--wait",
        type=argtypes.seconds,
        default=card_wait_ms_default / 1000,
        metavar="SECONDS",
        help="how long to wait for a card (default %(default)g)",
    )


def add_keystore_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keystore",
        type=Path,
        required=True,
        metavar="FILE",
        help=f"the issuer key store (passphrase from {passphrase_variable}, or asked)",
    )


def categories() -> list[Any]:
    from card_reader.ksh_card import RiderCategory

    return list(RiderCategory)


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


def hint_if_not_connected(bridge: VpcdBridge) -> None:
    if not bridge.connected.is_set():
        print(
            f"still waiting for vpcd at {bridge.address}: is pcscd running with the vpcd driver?",
            file=sys.stderr,
            flush=True,
        )


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
    hint = threading.Timer(vpcd_hint_after_ms / 1000, hint_if_not_connected, (bridge,))
    hint.daemon = True
    # Ctrl-C and `kill` alike take the card away, even when SIGINT was inherited ignored.
    with stop_on_signals() as stop:
        stop.when_requested(bridge.stop)
        hint.start()
        try:
            bridge.serve()
        finally:
            hint.cancel()
            bridge.stop()
            card.power_off()  # a deck card saves itself here
    print("card removed", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- readers, decks


def run_readers(arguments: argparse.Namespace) -> int:
    from card_reader.pcsc import reader_card_presence
    from card_reader.port import ReaderPortError

    try:
        readers = reader_card_presence()
    except ReaderPortError as error:
        raise UserError("cannot reach pcscd: is it running? (start it as root: pcscd)") from error
    if not readers:
        raise UserError("pcscd runs but knows no reader (plug one in, or install vpcd)")
    for name, card_present in readers:
        print(f"{name}\t{'card' if card_present else 'empty'}")
    return 0


def run_deck_new(arguments: argparse.Namespace) -> int:
    from card_reader.deck import make_ksh_deck
    from card_reader.emulator import EmulatedCard, save_deck
    from card_reader.ksh_card import balance_max_rupiah
    from ksh import acting
    from ksh.commands.cards import deck_first_number, issue_cards_as, print_check_codes

    if not 1 <= arguments.cards <= deck_cards_max:
        raise UserError(f"--cards must be 1..{deck_cards_max}")
    if not 0 <= arguments.balance <= balance_max_rupiah:
        raise UserError(f"--balance must be 0..{balance_max_rupiah} rupiah")
    register = arguments.register or arguments.backoffice_db is not None
    if arguments.keystore is None and (register or arguments.first_number is not None):
        raise UserError("blank cards have no number and are not issued: give --keystore")
    reason = acting.reason_of(arguments) if register else ""
    refuse_to_overwrite(arguments.out, arguments.force)
    first = 0
    if arguments.keystore is None:
        cards = [EmulatedCard() for _ in range(arguments.cards)]
        described = "blank cards"
    else:
        keys = load_keystore(arguments.keystore)
        issuer_keys(keys, arguments.keystore)  # every role, or a clear error
        first = deck_first_number(
            arguments, arguments.cards, register=register, url=arguments.backoffice_db
        )
        seed = os.urandom(8).hex()  # fresh UIDs for every deck
        cards = make_ksh_deck(
            keys, [arguments.balance] * arguments.cards, seed=seed, first_number=first
        )
        described = f"KSH cards with {rupiah(arguments.balance)} each"
    # Registering, the deck is written beside FILE, the cards issued (all or none), then it
    # is renamed FILE: no deck of cards the books do not know, no cards booked with no deck.
    written = arguments.out.with_name(arguments.out.name + ".new") if register else arguments.out
    try:
        save_deck(cards, written)
    except OSError as error:
        raise UserError(f"cannot write {arguments.out}: {error.strerror}") from error
    if register:
        numbers = {str(first + index): arguments.balance for index in range(len(cards))}
        try:
            issue_cards_as(arguments, numbers, reason, url=arguments.backoffice_db)
        except BaseException:
            written.unlink(missing_ok=True)
            raise
        written.replace(arguments.out)
        described += f", issued in the books as {first}..{first + len(cards) - 1}"
        # What to print on each card beside its number (the public card page asks for it).
        codes = print_check_codes(sorted(numbers), arguments.backoffice_db)
        for number, code in codes.items():
            print(f"card {number} check code {code}")
    print(f"{len(cards)} {described} -> {arguments.out}")
    return 0


def run_keystore_new(arguments: argparse.Namespace) -> int:
    from card_reader.keys import KeyStore

    refuse_to_overwrite(arguments.out, arguments.force)
    passphrase = read_passphrase(confirm=True)
    store = KeyStore.generate()
    try:
        store.save(arguments.out, passphrase)
    except OSError as error:
        raise UserError(f"cannot write {arguments.out}: {error.strerror}") from error
    held = ", ".join(f"{role.value} v{version}" for role, version in store.current_versions.items())
    print(f"key store -> {arguments.out} ({held})")
    return 0


def refuse_to_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UserError(f"{path} exists (use --force to overwrite it)")


# ---------------------------------------------------------------------------- keys


def read_passphrase(*, confirm: bool = False) -> str:
    """From KSH_KEYSTORE_PASSPHRASE, else asked on the terminal (twice for a new store)."""
    passphrase = os.environ.get(passphrase_variable)
    if passphrase is None:
        if not sys.stdin.isatty():
            raise UserError(f"no passphrase: set {passphrase_variable} or run in a terminal")
        passphrase = getpass.getpass("key store passphrase: ")
        if confirm and getpass.getpass("again: ") != passphrase:
            raise UserError("the two passphrases differ")
    if confirm and len(passphrase) < passphrase_chars_min:
        raise UserError(f"the passphrase needs at least {passphrase_chars_min} characters")
    return passphrase


def load_keystore(path: Path) -> KeyStore:
    from card_reader.keys import KeyStore, KeyStoreError

    if not path.exists():
        raise UserError(f"no key store at {path} (make one with `ksh card keystore-new`)")
    try:
        return KeyStore.load(path, read_passphrase())
    except KeyStoreError as error:
        raise UserError(f"cannot open the key store {path}: {error}") from error


def issuer_keys(keys: KeyStore, path: Path) -> TerminalKeys:
    """Every role's keys, as personalisation needs them; a store sealed before a role existed
    (the Transaction MAC master came later) is a user error, not a traceback."""
    from card_reader.keys import KeyRole, KeyStoreError

    try:
        return keys.view(*KeyRole)
    except KeyStoreError as error:
        raise UserError(f"{path}: {error}: make a new one with `ksh card keystore-new`") from error


# ---------------------------------------------------------------------------- reader access


def explain(error: ReaderPortError) -> str:
    """The error on one line, without the APDU transcript (that is for logs, not the desk)."""
    return str(error).split(" [> ")[0]


@contextlib.contextmanager
def card_on_reader(arguments: argparse.Namespace) -> Iterator[PcscReader]:
    """The reader named (or uniquely matched by) --reader, with a card connected; any reader or
    card failure inside becomes a one-line UserError."""
    from card_reader.pcsc import PcscReader
    from card_reader.port import ReaderPortError

    wait_ms = int(arguments.wait * 1000)
    try:
        with PcscReader(arguments.reader) as reader:
            if not reader.wait_for_card(wait_ms):
                raise UserError(f"no card on reader {reader.name!r} after {arguments.wait:g} s")
            yield reader
    except ReaderPortError as error:
        raise UserError(explain(error)) from error


def rupiah(amount: int) -> str:
    return f"Rp {amount:,}"


def describe_record(record: LogRecord) -> str:
    when = dt.datetime.fromtimestamp(record.time_unix_seconds, dt.UTC).strftime("%Y-%m-%d %H:%M")
    return (
        f"#{record.counter:<5} {record.kind.name.lower():<6} {rupiah(record.amount_rupiah):>14}"
        f"  balance {rupiah(record.balance_after_rupiah):>14}  terminal {record.terminal_id:<8}"
        f" {when} UTC"
    )


def describe_profile(profile: Profile) -> str:
    return (
        f"{profile.card_number}, {profile.rider_category.name.lower()}, "
        f"{'registered' if profile.registered else 'unregistered'}, "
        f"{profile.status.name.lower()}, issued {profile.issue_date}, expires {profile.expiry_date}"
    )


def profile_json(profile: Profile) -> dict[str, Any]:
    return {
        "card_number": profile.card_number,
        "rider_category": profile.rider_category.name.lower(),
        "registered": profile.registered,
        "status": profile.status.name.lower(),
        "issue_date": profile.issue_date.isoformat(),
        "expiry_date": profile.expiry_date.isoformat(),
    }


def record_json(record: LogRecord) -> dict[str, Any]:
    return {
        "counter": record.counter,
        "kind": record.kind.name.lower(),
        "amount_rupiah": record.amount_rupiah,
        "balance_after_rupiah": record.balance_after_rupiah,
        "terminal_id": record.terminal_id,
        "time_unix_seconds": record.time_unix_seconds,
    }


# ---------------------------------------------------------------------------- info


def run_info(arguments: argparse.Namespace) -> int:
    keys = load_keystore(arguments.keystore) if arguments.keystore else None
    with card_on_reader(arguments) as reader:
        report = read_card_report(reader, keys)
    if arguments.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    print(f"reader     {report['reader']}")
    print(f"uid        {report['uid']}")
    print(f"version    {report['version']}")
    ksh = report["ksh"]
    if ksh is None:
        print("ksh        none (a blank card, or another issuer's)")
        return 0
    print(f"ksh card   {ksh['described']}")
    print(f"balance    {rupiah(ksh['balance_rupiah'])}")
    print(f"verified   {ksh['verified']}")
    print("log        oldest first")
    for line in ksh["log_lines"]:
        print(f"  {line}")
    return 0


def read_card_report(reader: PcscReader, keys: KeyStore | None) -> dict[str, Any]:
    """Everything `info` shows, as plain data."""
    from card_reader.apdu import Status
    from card_reader.desfire import Desfire, DesfireError
    from card_reader.keys import KeyRole
    from card_reader.ksh_card import (
        KshCard,
        LayoutError,
        LogRecord,
        Profile,
        comm_mode,
        ksh_application_id,
        log_file,
        log_record_bytes,
        profile_bytes,
        profile_file,
        purse_file,
        read_uid,
    )

    uid = read_uid(reader)
    desfire = Desfire(reader, card_uid=uid)
    desfire.select_application(0)  # ends any session an earlier program left open on the card
    version = desfire.get_version()
    report: dict[str, Any] = {
        "reader": reader.name,
        "uid": uid.hex().upper(),
        "version": f"hardware {version.hardware.hex().upper()}, software "
        f"{version.software.hex().upper()}, EV2 or later: {version.is_ev2_or_later}",
        "ksh": None,
    }
    try:
        desfire.select_application(ksh_application_id)
    except DesfireError as error:
        if error.status == Status.APPLICATION_NOT_FOUND:
            return report
        raise
    try:
        if keys is None:
            # What anyone may read: free access, plain, no MAC to check.
            profile = Profile.from_bytes(
                desfire.read_data(profile_file, 0, profile_bytes, comm_mode)
            )
            balance = desfire.get_value(purse_file, comm_mode)
            raw_log = desfire.read_records(log_file, 0, 0, comm_mode)
            log = tuple(
                LogRecord.from_bytes(raw_log[offset : offset + log_record_bytes])
                for offset in range(0, len(raw_log), log_record_bytes)
            )
            verified = "no: free reads, not MAC-checked (give --keystore to verify)"
        else:
            card = KshCard(reader, keys.view(KeyRole.READ))
            state = card.read_state()
            profile, balance, log = state.profile, state.balance_rupiah, card.read_log()
            verified = f"yes: read key version {state.key_version}, every answer MAC-checked"
    except LayoutError as error:
        raise UserError(
            f"the KSH files on card {uid.hex().upper()} are damaged: {error}"
        ) from error
    report["ksh"] = {
        "profile": profile_json(profile),
        "described": describe_profile(profile),
        "balance_rupiah": balance,
        "verified": verified,
        "log": [record_json(record) for record in log],
        "log_lines": [describe_record(record) for record in log],
    }
    return report


# ---------------------------------------------------------------------------- issue, top-up


def years_after(day: dt.date, years: int) -> dt.date:
    """The same day `years` later; 29 February becomes 28 February in a common year."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def card_number_for(uid: bytes) -> int:
    """A 16-digit card number made from the UID when the desk gives none (issuer prefix 603290)."""
    digest = int.from_bytes(hashlib.sha256(uid).digest()[:8], "big")
    return 6_032_900_000_000_000 + digest % 10**10


def run_issue(arguments: argparse.Namespace) -> int:
    from card_reader.apdu import Status
    from card_reader.desfire import Desfire, DesfireError
    from card_reader.ksh_card import (
        CardStatus,
        Profile,
        RiderCategory,
        balance_max_rupiah,
        ksh_application_id,
        personalise,
        read_uid,
    )

    if not 0 <= arguments.balance <= balance_max_rupiah:
        raise UserError(f"--balance must be 0..{balance_max_rupiah} rupiah")
    if not 1 <= arguments.valid_years <= 20:
        raise UserError("--valid-years must be 1..20")
    if arguments.card_number is not None and not 0 < arguments.card_number < 10**16:
        raise UserError("--card-number must have at most 16 digits")
    keys = load_keystore(arguments.keystore)
    all_keys = issuer_keys(keys, arguments.keystore)
    issue_date = system_clock.today()
    with card_on_reader(arguments) as reader:
        uid = read_uid(reader)
        desfire = Desfire(reader, card_uid=uid)
        try:
            desfire.select_application(ksh_application_id)
            raise UserError(f"card {uid.hex().upper()} is already a KSH card")
        except DesfireError as error:
            if error.status != Status.APPLICATION_NOT_FOUND:
                raise
        profile = Profile(
            card_number=arguments.card_number or card_number_for(uid),
            rider_category=RiderCategory[arguments.category.upper()],
            registered=arguments.registered,
            status=CardStatus.ACTIVE,
            expiry_date=years_after(issue_date, arguments.valid_years),
            issue_date=issue_date,
        )
        try:
            state = personalise(
                reader,
                all_keys,
                profile,
                initial_balance_rupiah=arguments.balance,
                terminal_id=arguments.terminal_id,
                time_unix_seconds=system_clock.unix_ms() // 1000,
            )
        except DesfireError as error:
            if error.status in (Status.AUTHENTICATION_ERROR, Status.PERMISSION_DENIED):
                raise UserError(
                    f"card {uid.hex().upper()} is not blank (its master key is not the factory "
                    "key): issue needs a factory-fresh card"
                ) from error
            raise
    print(f"issued card {profile.card_number} on {uid.hex().upper()}: {describe_profile(profile)}")
    print(f"balance {rupiah(state.balance_rupiah)}")
    return 0


def run_unblock(arguments: argparse.Namespace) -> int:
    from card_reader.keys import KeyRole
    from card_reader.ksh_card import CardStatus, KshCardError, desk_profile, unblock
    from gateways.staff import desk_roles
    from gateways.terminal_api import card_desk, registry
    from ksh.database import run_with_database

    keys = load_keystore(arguments.keystore)
    missing = sorted(role.value for role in set(KeyRole) - keys.roles)
    if missing:
        raise UserError(
            f"{arguments.keystore} holds no {', '.join(missing)} key: only an issuing station's "
            "key store (every role) unblocks a card"
        )
    reason = acting.reason_of(arguments)
    all_keys = issuer_keys(keys, arguments.keystore)
    with card_on_reader(arguments) as reader:
        try:
            found, last_counter = desk_profile(reader, all_keys)
        except KshCardError as error:
            raise UserError(explain(error)) from error
        number = str(found.card_number)
        chip_blocked = found.status is CardStatus.BLOCKED

        # Asked, written on the chip and recorded in one transaction: a refusal of the back
        # office or of the card leaves no staff action behind.
        async def work(connection: Any) -> Any:
            async with connection.transaction():
                if not chip_blocked and not await blocked_in_the_books(
                    connection, number, last_counter
                ):
                    raise UserError("the card on the reader is not blocked: nothing written")
                member = await acting.acting_member(connection, arguments, desk_roles)
                try:
                    await card_desk.check_unblock(connection, number)
                except registry.RegistryError as error:
                    raise UserError(str(error)) from None
                # The card's counter: the back office takes its later transactions as the
                # desk's doing, not a terminal's that ignored the block (`ingest`).
                await acting.record(
                    connection,
                    member,
                    registry.chip_unblock_action,
                    number,
                    reason,
                    card_counter=last_counter,
                )
                if not chip_blocked:
                    return None
                try:
                    written = unblock(reader, all_keys, card_number=found.card_number)
                except KshCardError as error:
                    raise UserError(explain(error)) from error
                if written is None:  # active meanwhile: the staff action is rolled back
                    raise UserError("the card on the reader is not blocked: nothing written")
                return written

        profile = run_with_database(work)
    if profile is None:
        print(
            f"card {number} is active on its chip already, but the books still saw it blocked "
            f"(an unblock whose record was lost, or a terminal's doing): recorded as unblocked "
            f"at its counter {last_counter}, so its later fares are booked as usual"
        )
        profile = found
    else:
        print(f"card {profile.card_number} unblocked on its chip: {describe_profile(profile)}")
    print(
        f"its deny list entry stays until staff lift it (ksh deny lift {profile.card_number} "
        "--as USERNAME --reason ...): until then every terminal refuses the card, and a lost, stolen or "
        "damaged block is written onto the chip again at its next tap"
    )
    return 0


async def blocked_in_the_books(connection: Any, number: str, last_counter: int) -> bool:
    """The back office took a block of the card's chip with no desk unblock since: its next
    transaction would be held apart (`planning.standing_block`)."""
    from gateways.terminal_api import ingest, planning

    blocks = (await ingest.blocked_chips(connection, [number])).get(number)
    return blocks is not None and planning.standing_block(blocks, last_counter + 1) is not None


def run_top_up(arguments: argparse.Namespace) -> int:
    from card_reader.keys import KeyRole
    from card_reader.ksh_card import (
        KshCard,
        KshCardError,
        Refusal,
        balance_max_rupiah,
    )
    from card_reader.port import CardError

    if not arguments.offline_development:
        raise UserError(
            "a top-up written only to the card is not in the books (the back office flags the "
            "card): take cash with `ksh counter top-up`; for cards no back office knows, add "
            "--offline-development"
        )
    if not 0 < arguments.amount <= balance_max_rupiah:
        raise UserError(f"--amount must be 1..{balance_max_rupiah} rupiah")
    keys = load_keystore(arguments.keystore)
    with card_on_reader(arguments) as reader:
        card = KshCard(reader, keys.view(KeyRole.CREDIT))
        try:
            before = card.read_state()
        except KshCardError as error:
            raise UserError(explain(error)) from error
        plan = card.plan_credit(
            arguments.amount,
            terminal_id=arguments.terminal_id,
            time_unix_seconds=system_clock.unix_ms() // 1000,
        )
        if isinstance(plan, Refusal):
            raise UserError(refusal_text(plan, before, arguments.amount))
        try:
            after: CardState = card.perform(plan)
        except CardError as error:
            raise UserError(
                f"{explain(error)}: the top-up of {rupiah(arguments.amount)} is in doubt; "
                f"`ksh card info` shows whether log record #{plan.record.counter} is on the card"
            ) from error
    print(
        f"card {before.profile.card_number}: {rupiah(before.balance_rupiah)} + "
        f"{rupiah(arguments.amount)} = {rupiah(after.balance_rupiah)} (log #{after.counter})"
    )
    return 0


def refusal_text(refusal: Any, state: CardState, amount_rupiah: int) -> str:
    from card_reader.ksh_card import Refusal, balance_max_rupiah

    if refusal is Refusal.BALANCE_CAP_EXCEEDED:
        return (
            f"refused: {rupiah(state.balance_rupiah)} + {rupiah(amount_rupiah)} would exceed the "
            f"cap of {rupiah(balance_max_rupiah)}"
        )
    if refusal is Refusal.CARD_BLOCKED:
        return f"refused: card {state.profile.card_number} is blocked"
    return f"refused: {refusal.value}"
