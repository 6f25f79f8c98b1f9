"""Master keys in a PKCS#11 token: the SAM of a terminal, the HSM of the back office.

Debian's SoftHSM 2 stands in for both (`softhsm2`, used through `python-pkcs11`). A token holds
the master keys of its roles only, each an AES key that is sensitive and never extractable: no
process, not even the one logged in, can read its value back. `TokenKeys` is the same kind of
object as `TerminalKeys` (`card_reader.keys.CardKeys`) and computes each card's AN10922 key inside
the token, so a terminal sees per-card keys, never a master.

AN10922 is not plain CMAC for messages of 16 bytes or fewer, ours included (it pads to two
blocks), so it is not the token's CKM_AES_CMAC but two token operations: L = E_K(0) (AES-ECB) gives the CMAC subkey K2, then AES-CBC with a zero
IV over the two padded blocks, the second XORed with K2; the last cipher block is the card key.
Neither L nor the card key reveals K.

A token folder (`--token-dir`) holds `softhsm2.conf` and the token files it points at; SoftHSM
reads the folder from SOFTHSM2_CONF, which `token_library` sets. Objects are labelled
`ksh-ROLE-vVERSION`; a data object `ksh-current-versions` says which version of each role is
current (versions wrap at 256, so the highest is not always the newest).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from card_reader.crypto import an10922_blocks, block_bytes, subkeys_of
from card_reader.keys import (
    CardKey,
    KeyRole,
    MasterKey,
    accepted_versions_of,
    diversification_input,
)

softhsm_library = "/usr/lib/softhsm/libsofthsm2.so"  # Debian's softhsm2 (libsofthsm2)
library_variable = "KSH_PKCS11_LIBRARY"  # another PKCS#11 module, for a real SAM or HSM
config_name = "softhsm2.conf"
versions_label = "ksh-current-versions"
_library_lock = threading.Lock()


class TokenError(Exception):
    """No such token folder or token, a wrong PIN, or a token without the keys asked for."""


def key_label(role: KeyRole, version: int) -> str:
    return f"ksh-{role.value}-v{version}"


def token_library(token_dir: Path) -> Any:
    """The PKCS#11 library, initialised on this token folder. SoftHSM reads its configuration
    when initialised, so moving a process to another folder re-initialises it (closing the
    sessions on the first: one folder per process in service)."""
    import pkcs11

    config = token_dir / config_name
    if not config.is_file():
        raise TokenError(f"{token_dir} is not a token folder (no {config_name})")
    with _library_lock:
        library = pkcs11.lib(os.environ.get(library_variable, softhsm_library))
        if os.environ.get("SOFTHSM2_CONF") != str(config.resolve()):
            os.environ["SOFTHSM2_CONF"] = str(config.resolve())
            library.reinitialize()
        return library


def _token(token_dir: Path, label: str) -> Any:
    import pkcs11

    try:
        return token_library(token_dir).get_token(token_label=label)
    except pkcs11.NoSuchToken:
        raise TokenError(f"no token labelled {label!r} in {token_dir}") from None


def _login(token: Any, pin: str, *, rw: bool = False) -> Any:
    import pkcs11

    try:
        return token.open(rw=rw, user_pin=pin)
    except pkcs11.UserAlreadyLoggedIn:
        # PKCS#11 logs in a process, not a session: another session of ours already did
        return token.open(rw=rw)
    except (pkcs11.PinIncorrect, pkcs11.PinLenRange):
        raise TokenError(f"wrong PIN for token {token.label!r}") from None
    except pkcs11.PinLocked:
        raise TokenError(f"token {token.label!r} is locked (too many wrong PINs)") from None


class TokenKeys:
    """A terminal's (or the back office's) view of a logged-in token: the per-card keys of the
    roles the token holds, diversified inside it. Holds handles, never key values."""

    def __init__(self, session: Any, label: str) -> None:
        import pkcs11
        from pkcs11 import Attribute, ObjectClass

        self._session = session
        self.label = label
        self._lock = threading.Lock()  # a PKCS#11 session serves one call at a time
        data = list(session.get_objects({Attribute.LABEL: versions_label}))
        if not data:
            raise TokenError(f"token {label!r} holds no KSH keys (load it with token-load)")
        current = json.loads(bytes(data[0][Attribute.VALUE]))
        self.current_versions = {KeyRole(name): int(v) for name, v in current.items()}
        self._keys: dict[tuple[KeyRole, int], Any] = {}
        for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}):
            role, version = _parse_label(key[Attribute.LABEL])
            if role is not None:
                self._keys[(role, version)] = key
        for role, version in self.current_versions.items():
            if (role, version) not in self._keys:
                raise TokenError(f"token {label!r} lacks its current {role.value} key")
        self._mechanisms = (pkcs11.Mechanism.AES_ECB, pkcs11.Mechanism.AES_CBC)

    @property
    def roles(self) -> frozenset[KeyRole]:
        return frozenset(self.current_versions)

    def accepted_versions(self, role: KeyRole) -> tuple[int, ...]:
        return accepted_versions_of(self.current_versions[role], lambda v: self.holds(role, v))

    def holds(self, role: KeyRole, version: int) -> bool:
        return (role, version) in self._keys

    def use_current(self, role: KeyRole, version: int) -> None:
        """A fleet key-version package's switch: this process uses `version` as current (the
        token's own record of its current versions changes only with `ksh card token-load`)."""
        assert self.holds(role, version), f"no {role.value} key version {version} here"
        self.current_versions[role] = version

    def card_key(self, role: KeyRole, uid: bytes, aid: int, version: int | None = None) -> CardKey:
        chosen = self.current_versions[role] if version is None else version
        if chosen not in self.accepted_versions(role):
            raise KeyError(f"{role.value} key version {chosen} is not accepted here")
        return CardKey(role, chosen, self.diversify(role, chosen, diversification_input(uid, aid)))

    def diversify(self, role: KeyRole, version: int, data: bytes) -> bytes:
        """AN10922 (`card_reader.crypto.diversify_an10922`) with the master kept in the token."""
        master = self._keys[(role, version)]
        ecb, cbc = self._mechanisms
        with self._lock:
            encrypted_zero = master.encrypt(bytes(block_bytes), mechanism=ecb)
            blocks = an10922_blocks(data, subkeys_of(bytes(encrypted_zero)))
            cipher = master.encrypt(blocks, mechanism=cbc, mechanism_param=bytes(block_bytes))
        return bytes(cipher)[-block_bytes:]

    def close(self) -> None:
        self._session.close()

    def __repr__(self) -> str:
        held = ", ".join(f"{role.value} v{v}" for role, v in self.current_versions.items())
        return f"TokenKeys({self.label}: {held})"


def _parse_label(label: str) -> tuple[KeyRole | None, int]:
    parts = label.split("-")
    if len(parts) != 3 or parts[0] != "ksh" or not parts[2].startswith("v"):
        return None, 0
    try:
        return KeyRole(parts[1]), int(parts[2][1:])
    except ValueError:
        return None, 0


def open_token(token_dir: Path, label: str, pin: str) -> TokenKeys:
    return TokenKeys(_login(_token(token_dir, label), pin), label)


def create_token(token_dir: Path, label: str, pin: str) -> None:
    """A new, empty token in the folder (made if missing). SoftHSM's tool takes PINs only as
    arguments, so it gets throw-away ones, and the user PIN is then set through PKCS#11: the real
    PIN never appears on a command line. The security officer's PIN is thrown away: a token whose
    PIN is forgotten is deleted and loaded again from the key store."""
    (token_dir / "tokens").mkdir(parents=True, exist_ok=True, mode=0o700)
    config = token_dir / config_name
    if not config.exists():
        config.write_text(
            f"directories.tokendir = {(token_dir / 'tokens').resolve()}\n"
            "objectstore.backend = file\nlog.level = ERROR\n"
        )
    library = token_library(token_dir)
    if any(token.label == label for token in library.get_tokens()):
        raise TokenError(f"{token_dir} already has a token labelled {label!r}")
    temporary = secrets.token_hex(16)
    initialise = [
        *("softhsm2-util", "--init-token", "--free", "--label", label),
        *("--so-pin", secrets.token_hex(16), "--pin", temporary),
    ]
    try:
        done = subprocess.run(initialise, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise TokenError("softhsm2-util is missing (apt-get install softhsm2)") from None
    if done.returncode != 0:
        raise TokenError(f"softhsm2-util: {(done.stderr or done.stdout).strip()[:200]}")
    # SoftHSM finds new tokens only when initialised again, which closes this process's open
    # sessions: create tokens before opening any (`ksh card token-load` is a process of its own).
    library.reinitialize()
    with _login(_token(token_dir, label), temporary, rw=True) as session:
        session.set_pin(temporary, pin)


def load_token(
    token_dir: Path, label: str, pin: str, keys: Iterable[MasterKey], current: Mapping[KeyRole, int]
) -> None:
    """Import master keys (sensitive, never extractable, usable only to encrypt) and the current
    versions; keys of these roles that are no longer given are destroyed, and a version already
    there is left as it was (a version is never reused)."""
    from pkcs11 import Attribute, KeyType, ObjectClass

    given = {(key.role, key.version): key for key in keys}
    with _login(_token(token_dir, label), pin, rw=True) as session:
        held: dict[str, Any] = {
            obj[Attribute.LABEL]: obj
            for obj in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
        }
        for (role, version), key in given.items():
            if key_label(role, version) in held:
                continue
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.SECRET_KEY,
                    Attribute.KEY_TYPE: KeyType.AES,
                    Attribute.LABEL: key_label(role, version),
                    Attribute.VALUE: key.key,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.ENCRYPT: True,
                    Attribute.DECRYPT: False,
                    Attribute.WRAP: False,
                    Attribute.UNWRAP: False,
                    Attribute.SIGN: False,
                    Attribute.VERIFY: False,
                    Attribute.DERIVE: False,
                }
            )
        for name, obj in held.items():
            held_role, held_version = _parse_label(name)
            if held_role in current and (held_role, held_version) not in given:
                obj.destroy()  # a version no longer accepted for a role being loaded
        previous: dict[str, int] = {}
        for obj in list(session.get_objects({Attribute.LABEL: versions_label})):
            previous = json.loads(bytes(obj[Attribute.VALUE]))
            obj.destroy()
        versions = {**previous, **{role.value: version for role, version in current.items()}}
        session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.LABEL: versions_label,
                Attribute.VALUE: json.dumps(versions, sort_keys=True).encode(),
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
            }
        )
