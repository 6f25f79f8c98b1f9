"""Key custody commands (`ksh card keystore-export`, `keystore-roll`, `token-load`) and the keys a
terminal opens: a PKCS#11 token or a role-limited key store file, never a role it must not hold.

Who holds which role (docs/card.md, "Key custody"):
    validator         debit, credit (pending top-ups are credits)
    POS               debit; credit only where the merchant does refunds (a refund is a credit)
    issuing station   every role: personalisation writes all of a card's keys (`ksh card issue`)
    back office       tmac (verifies each card's Transaction MAC; `ksh serve --keystore`)
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ksh.cli import UserError

if TYPE_CHECKING:
    from card_reader.keys import CardKeys, KeyRole

pin_variable = "KSH_TOKEN_PIN"
pin_chars_min = 6
export_passphrase_variable = "KSH_EXPORT_PASSPHRASE"
token_label_default = "ksh"


def role_list(text: str) -> tuple[KeyRole, ...]:
    """argparse type for `--roles debit,credit`."""
    from card_reader.keys import parse_roles

    try:
        return parse_roles(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(actions: Any) -> None:
    """The key commands under `ksh card`."""
    from ksh.commands.card import add_keystore_argument, passphrase_variable

    export = actions.add_parser(
        "keystore-export",
        help="write a key store holding only some roles (a development terminal's keys)",
        description="Copy the named roles' current and previous master keys into a new sealed "
        f"key store (passphrase from {export_passphrase_variable}, else the source's). "
        "In service, terminals take a token instead (token-load).",
    )
    add_keystore_argument(export)
    export.add_argument("--roles", type=role_list, required=True, metavar="ROLE[,ROLE]")
    export.add_argument("--out", type=Path, required=True, metavar="FILE")
    export.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    export.set_defaults(handler=run_keystore_export)

    roll = actions.add_parser(
        "keystore-roll",
        help="make a new current key version for a role (the previous one stays accepted)",
        description="Key rotation: a new master key version for the role, sealed into the same "
        "store. Then load the role into its tokens again (token-load) and re-key cards "
        "(docs/card.md, 'Key rotation').",
    )
    add_keystore_argument(roll)
    roll.add_argument("--role", type=role_list, required=True, metavar="ROLE")
    roll.set_defaults(handler=run_keystore_roll)

    load = actions.add_parser(
        "token-load",
        help="load roles' master keys into a PKCS#11 token (SoftHSM 2), made if missing",
        description="Create (if missing) a SoftHSM 2 token in DIR and import the named roles' "
        "current and previous master keys as sensitive, never-extractable AES keys; versions "
        "no longer accepted are destroyed. The token's user PIN comes from "
        f"{pin_variable} or is asked (never on the command line); the key store's passphrase "
        f"from {passphrase_variable}.",
    )
    add_keystore_argument(load)
    load.add_argument("--roles", type=role_list, required=True, metavar="ROLE[,ROLE]")
    add_token_arguments(load, required=True)
    load.set_defaults(handler=run_token_load)


def add_token_arguments(parser: Any, *, required: bool = False) -> None:
    parser.add_argument(
        "--token-dir",
        type=Path,
        required=required,
        metavar="DIR",
        help=f"a SoftHSM 2 token folder (made by `ksh card token-load`; PIN from {pin_variable})",
    )
    parser.add_argument(
        "--token-label",
        default=token_label_default,
        metavar="LABEL",
        help="the token's label (default %(default)s)",
    )


def read_token_pin(*, confirm: bool = False) -> str:
    pin = os.environ.get(pin_variable)
    if pin is None:
        if not sys.stdin.isatty():
            raise UserError(f"no token PIN: set {pin_variable} or run in a terminal")
        pin = getpass.getpass("token PIN: ")
        if confirm and getpass.getpass("again: ") != pin:
            raise UserError("the two PINs differ")
    if len(pin) < pin_chars_min:
        raise UserError(f"the token PIN needs at least {pin_chars_min} characters")
    return pin


def role_names(roles: Iterable[KeyRole]) -> str:
    return ", ".join(sorted(role.value for role in roles))


def run_keystore_export(arguments: argparse.Namespace) -> int:
    from card_reader.keys import KeyStoreError
    from ksh.commands.card import load_keystore, read_passphrase, refuse_to_overwrite

    refuse_to_overwrite(arguments.out, arguments.force)
    store = load_keystore(arguments.keystore)
    try:
        limited = store.export(*arguments.roles)
    except KeyStoreError as error:
        raise UserError(f"{arguments.keystore}: {error}") from error
    # Its own passphrase when given, else the source's (a development copy).
    passphrase = os.environ.get(export_passphrase_variable) or read_passphrase()
    try:
        limited.save(arguments.out, passphrase)
    except OSError as error:
        raise UserError(f"cannot write {arguments.out}: {error.strerror}") from error
    held = ", ".join(f"{r.value} v{v}" for r, v in limited.current_versions.items())
    print(f"key store -> {arguments.out} ({held})")
    return 0


def run_keystore_roll(arguments: argparse.Namespace) -> int:
    from ksh.commands.card import load_keystore, read_passphrase

    if len(arguments.role) != 1:
        raise UserError("--role takes one role")
    (role,) = arguments.role
    store = load_keystore(arguments.keystore)
    if role not in store.roles:
        raise UserError(f"{arguments.keystore} holds no {role.value} key")
    key = store.roll_over(role)
    try:
        store.save(arguments.keystore, read_passphrase())
    except OSError as error:
        raise UserError(f"cannot write {arguments.keystore}: {error.strerror}") from error
    accepted = store.view(role).accepted_versions(role)
    print(
        f"{role.value}: version {key.version} is current; accepted "
        f"{', '.join(f'v{v}' for v in accepted)}. Load it into the tokens of that role "
        f"(ksh card token-load --roles {role.value} ...)"
    )
    return 0


def run_token_load(arguments: argparse.Namespace) -> int:
    from card_reader.keys import KeyStoreError
    from card_reader.token_keys import TokenError, create_token, load_token, token_library
    from ksh.commands.card import load_keystore

    store = load_keystore(arguments.keystore)
    try:
        store.view(*arguments.roles)
    except KeyStoreError as error:
        raise UserError(f"{arguments.keystore}: {error}") from error
    folder, label = arguments.token_dir, arguments.token_label
    try:
        exists = (folder / "softhsm2.conf").is_file() and any(
            token.label == label for token in token_library(folder).get_tokens()
        )
        pin = read_token_pin(confirm=not exists)
        if not exists:
            create_token(folder, label, pin)
        keys = [key for role in arguments.roles for key in store.accepted_keys(role)]
        current = {role: store.current_versions[role] for role in arguments.roles}
        load_token(folder, label, pin, keys, current)
    except TokenError as error:
        raise UserError(str(error)) from error
    held = ", ".join(f"{key.role.value} v{key.version}" for key in keys)
    print(f"token {label!r} in {folder} ({'updated' if exists else 'new'}): {held}")
    return 0


def terminal_keys(
    arguments: argparse.Namespace,
    terminal: str,
    required: frozenset[KeyRole],
    allowed: frozenset[KeyRole],
) -> CardKeys:
    """The keys a terminal runs with: its token, or a role-limited key store file, or (only
    when asked for) the public demo keys. A store or token holding a role outside `allowed`
    is refused: a terminal that could be stolen must not carry it."""
    from card_reader.keys import KeyStoreError, demo_key_store
    from ksh.commands.card import load_keystore

    if arguments.demo_keys:
        print("ksh: using the public demo card keys", file=sys.stderr)
        return demo_key_store().view(*sorted(allowed, key=lambda role: role.value))
    if arguments.token_dir is not None:
        from card_reader.token_keys import TokenError, open_token

        try:
            keys: CardKeys = open_token(
                arguments.token_dir, arguments.token_label, read_token_pin()
            )
        except TokenError as error:
            raise UserError(str(error)) from error
        source = f"token {arguments.token_label!r}"
    elif arguments.keystore is not None:
        store = load_keystore(arguments.keystore)
        held = store.roles
        check_roles(f"the key store {arguments.keystore}", held, terminal, required, allowed)
        try:
            return store.view(*sorted(held, key=lambda role: role.value))
        except KeyStoreError as error:
            raise UserError(f"{arguments.keystore}: {error}") from error
    else:
        raise UserError(
            "give --token-dir DIR, --keystore FILE (or --demo-keys for emulated demo decks)"
        )
    check_roles(source, keys.roles, terminal, required, allowed)
    return keys


def check_roles(
    source: str,
    held: frozenset[KeyRole],
    terminal: str,
    required: frozenset[KeyRole],
    allowed: frozenset[KeyRole],
) -> None:
    extra, missing = held - allowed, required - held
    if extra:
        raise UserError(
            f"{source} holds {role_names(extra)} keys, which a {terminal} must not hold "
            f"(a {terminal} may hold {role_names(allowed)}: ksh card keystore-export or "
            "token-load --roles)"
        )
    if missing:
        raise UserError(f"{source} holds no {role_names(missing)} key, which a {terminal} needs")
