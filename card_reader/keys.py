"""Issuer master keys by role and version, encrypted at rest, and the role-restricted views that
terminals receive.

A card's keys are diversified from the master keys with AN10922 (input: card UID ‖ AID ‖ "KSH"),
so one card's keys reveal nothing about another's. The Transaction MAC key (`KeyRole.TMAC`) is
diversified the same way from its own master, which only the issuer and the back office hold:
no terminal view includes it, so no terminal can forge a card's Transaction MAC. Cards carry the key version they were
personalised (or last re-keyed) with; terminals accept the current and the previous version of
their role, so a key roll-over does not lock out cards that have not yet been re-keyed.

In service the masters live in PKCS#11 tokens, limited to the holder's roles, that compute the
per-card keys themselves (`card_reader.token_keys.TokenKeys`); terminals take either kind through
`CardKeys`. This sealed file store is the issuer's, and, exported role by role
(`KeyStore.export`), a development terminal's.

At rest the store is JSON sealed with AES-256-GCM under a key made from a passphrase with Scrypt
(memory-hard). The file header (format, KDF parameters, salt, nonce) is authenticated as GCM's
associated data, so no field can be altered without the open failing.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from card_reader.crypto import diversify_an10922, key_bytes
from card_reader.durable import replace_file

store_format = "ksh-key-store"
store_format_version = 1
scrypt_cost = 2**15  # N; with r=8 about 32 MiB and ~0.1 s per open
scrypt_block_size = 8
scrypt_parallelism = 1
salt_bytes = 16
nonce_bytes = 12
system_identifier = b"KSH"  # the AN10922 system identifier of our diversification input
key_version_max = 0xFF
uid_lengths = (4, 7, 10)  # ISO 14443-3 single, double and triple size UIDs
accepted_previous_versions = 1  # terminals accept the current version and this many before it


class KeyRole(enum.Enum):
    PERSONALISATION = "personalisation"  # application master key and PICC master key
    READ = "read"
    DEBIT = "debit"
    CREDIT = "credit"
    # The card's AppTransactionMACKey (file 5, not an application key number): the back office
    # verifies each transaction's TMV with it (`card_reader.tmac.verify`). Last, so the demo
    # store's other keys stay as they were.
    TMAC = "tmac"


class KeyStoreError(Exception):
    """The key store file is missing, damaged, or the passphrase is wrong."""


@dataclass(frozen=True, slots=True)
class MasterKey:
    role: KeyRole
    version: int
    key: bytes

    def __post_init__(self) -> None:
        assert 0 <= self.version <= key_version_max
        assert len(self.key) == key_bytes

    def __repr__(self) -> str:  # never print key material
        return f"MasterKey({self.role.value}, version {self.version})"


@dataclass(frozen=True, slots=True)
class CardKey:
    """One card's diversified key, with the version the card stores beside it."""

    role: KeyRole
    version: int
    key: bytes

    def __repr__(self) -> str:
        return f"CardKey({self.role.value}, version {self.version})"


def diversify_card_key(master: MasterKey, uid: bytes, aid: int) -> CardKey:
    return CardKey(
        master.role,
        master.version,
        diversify_an10922(master.key, diversification_input(uid, aid)),
    )


class CardKeys(Protocol):
    """What every terminal takes: the per-card keys of its roles. `TerminalKeys` holds masters in
    memory (development, the issuer's own tools); `card_reader.token_keys.TokenKeys` asks a
    PKCS#11 token that never lets a master out."""

    @property
    def current_versions(self) -> Mapping[KeyRole, int]: ...

    @property
    def roles(self) -> frozenset[KeyRole]: ...

    def accepted_versions(self, role: KeyRole) -> tuple[int, ...]: ...

    def holds(self, role: KeyRole, version: int) -> bool: ...

    def use_current(self, role: KeyRole, version: int) -> None:
        """Make a held version current (a fleet key-version package at its effective time)."""

    def card_key(
        self, role: KeyRole, uid: bytes, aid: int, version: int | None = None
    ) -> CardKey: ...


def accepted_versions_of(current: int, held: Callable[[int], bool]) -> tuple[int, ...]:
    """The current version first, then the previous ones still accepted, of those held."""
    candidates = [
        (current - back) % (key_version_max + 1) for back in range(1 + accepted_previous_versions)
    ]
    return tuple(version for version in candidates if held(version))


def diversification_input(uid: bytes, aid: int) -> bytes:
    """UID ‖ AID (3 bytes, little-endian as on the wire) ‖ "KSH": AN10922's input for our cards."""
    assert len(uid) in uid_lengths
    assert 0 <= aid <= 0xFFFFFF
    return uid + aid.to_bytes(3, "little") + system_identifier


def parse_roles(text: str) -> tuple[KeyRole, ...]:
    """`debit,credit` -> the roles; ValueError naming an unknown one."""
    roles: list[KeyRole] = []
    for name in (part.strip() for part in text.split(",")):
        try:
            role = KeyRole(name)
        except ValueError:
            known = ", ".join(role.value for role in KeyRole)
            raise ValueError(f"unknown key role {name!r} (roles: {known})") from None
        if role not in roles:
            roles.append(role)
    return tuple(roles)


class TerminalKeys:
    """What a terminal holds: for each of its roles, the current master key and the previous
    ones it still accepts. Nothing else."""

    def __init__(self, keys: Iterable[MasterKey], current_versions: dict[KeyRole, int]) -> None:
        self._keys = {(key.role, key.version): key for key in keys}
        self.current_versions = dict(current_versions)
        for role, version in self.current_versions.items():
            assert (role, version) in self._keys, f"no current {role.value} key"

    @property
    def roles(self) -> frozenset[KeyRole]:
        return frozenset(self.current_versions)

    def accepted_versions(self, role: KeyRole) -> tuple[int, ...]:
        """Current first, then the previous ones still held."""
        return accepted_versions_of(
            self.current_versions[role], lambda version: (role, version) in self._keys
        )

    def holds(self, role: KeyRole, version: int) -> bool:
        return (role, version) in self._keys

    def use_current(self, role: KeyRole, version: int) -> None:
        """Make a held version the current one (a fleet key-version package, switched at its
        effective time: the back office names the version, the key store brought the key)."""
        assert self.holds(role, version), f"no {role.value} key version {version} here"
        self.current_versions[role] = version

    def card_key(self, role: KeyRole, uid: bytes, aid: int, version: int | None = None) -> CardKey:
        """The card's key for a role; `version` None means the current one. A version this terminal
        does not accept raises KeyError."""
        chosen = self.current_versions[role] if version is None else version
        if chosen not in self.accepted_versions(role):
            raise KeyError(f"{role.value} key version {chosen} is not accepted here")
        return diversify_card_key(self._keys[(role, chosen)], uid, aid)

    def __repr__(self) -> str:
        held = ", ".join(
            f"{role.value} v{version}" for role, version in self.current_versions.items()
        )
        return f"TerminalKeys({held})"


class KeyStore:
    """All master keys of the issuer, by role and version, with the current version per role."""

    def __init__(self) -> None:
        self._keys: dict[tuple[KeyRole, int], MasterKey] = {}
        self.current_versions: dict[KeyRole, int] = {}

    def add(self, key: MasterKey, *, make_current: bool = True) -> None:
        existing = self._keys.get((key.role, key.version))
        assert existing is None or existing.key == key.key, "a key version is never reused"
        self._keys[(key.role, key.version)] = key
        if make_current:
            self.current_versions[key.role] = key.version

    def accepted_master_keys(self, role: KeyRole) -> tuple[bytes, ...]:
        """The role's master keys a card may carry, current version first (for the back office:
        the Transaction MAC masters it verifies cards' proofs with)."""
        self.view(role)  # present, or KeyStoreError
        return tuple(key.key for key in self.accepted_keys(role))

    def master_key(self, role: KeyRole, version: int | None = None) -> MasterKey:
        chosen = self.current_versions[role] if version is None else version
        return self._keys[(role, chosen)]

    def roll_over(
        self, role: KeyRole, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> MasterKey:
        """Make a new current key version for a role (the previous stays accepted)."""
        version = (self.current_versions.get(role, 0) + 1) % (key_version_max + 1)
        key = MasterKey(role, version, random_bytes(key_bytes))
        self.add(key)
        return key

    @classmethod
    def generate(
        cls, version: int = 1, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> KeyStore:
        store = cls()
        for role in KeyRole:
            store.add(MasterKey(role, version, random_bytes(key_bytes)))
        return store

    def view(self, *roles: KeyRole) -> TerminalKeys:
        """The role-restricted keys a terminal receives: current and previous versions only."""
        assert roles, "name at least one role"
        missing = [role.value for role in roles if role not in self.current_versions]
        if missing:  # a store sealed before the role existed (the TMAC master came later)
            raise KeyStoreError(f"the key store holds no {', '.join(missing)} key")
        keys = [key for role in roles for key in self.accepted_keys(role)]
        return TerminalKeys(keys, {role: self.current_versions[role] for role in roles})

    def accepted_keys(self, role: KeyRole) -> tuple[MasterKey, ...]:
        """The role's master keys a card may carry: the current version first, then the
        previous ones still accepted (what a terminal view or a token of that role holds)."""
        versions = accepted_versions_of(
            self.current_versions[role], lambda version: (role, version) in self._keys
        )
        return tuple(self._keys[(role, version)] for version in versions)

    @property
    def roles(self) -> frozenset[KeyRole]:
        return frozenset(self.current_versions)

    def export(self, *roles: KeyRole) -> KeyStore:
        """A store holding only these roles, each with its current and previous version (for a
        development terminal: `ksh card keystore-export`)."""
        self.view(*roles)  # every role present, or KeyStoreError
        limited = KeyStore()
        for role in roles:
            for key in reversed(self.accepted_keys(role)):  # the current one added last
                limited.add(key)
        return limited

    # ------------------------------------------------------------------ at rest

    def _plain_document(self) -> bytes:
        return json.dumps(
            {
                "current_versions": {role.value: v for role, v in self.current_versions.items()},
                "keys": [
                    {"role": key.role.value, "version": key.version, "key": key.key.hex()}
                    for key in self._keys.values()
                ],
            }
        ).encode()

    def seal(self, passphrase: str, random_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
        header = {
            "format": store_format,
            "version": store_format_version,
            "kdf": {
                "name": "scrypt",
                "n": scrypt_cost,
                "r": scrypt_block_size,
                "p": scrypt_parallelism,
                "salt": random_bytes(salt_bytes).hex(),
            },
            "cipher": {"name": "AES-256-GCM", "nonce": random_bytes(nonce_bytes).hex()},
        }
        header_bytes = json.dumps(header, sort_keys=True).encode()
        key = _derive(passphrase, header["kdf"])  # type: ignore[arg-type]
        nonce = bytes.fromhex(header["cipher"]["nonce"])  # type: ignore[index]
        sealed = AESGCM(key).encrypt(nonce, self._plain_document(), header_bytes)
        return json.dumps({"header": header, "sealed": sealed.hex()}, indent=1).encode()

    @classmethod
    def open(cls, sealed_document: bytes, passphrase: str) -> KeyStore:
        try:
            document = json.loads(sealed_document)
            header = document["header"]
            if header["format"] != store_format or header["version"] != store_format_version:
                raise KeyStoreError(f"not a version {store_format_version} {store_format}")
            header_bytes = json.dumps(header, sort_keys=True).encode()
            key = _derive(passphrase, header["kdf"])
            nonce = bytes.fromhex(header["cipher"]["nonce"])
            plain = AESGCM(key).decrypt(nonce, bytes.fromhex(document["sealed"]), header_bytes)
        except InvalidTag as error:
            raise KeyStoreError("wrong passphrase, or the key store was altered") from error
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise KeyStoreError(f"damaged key store: {error!r}") from error
        content = json.loads(plain)
        store = cls()
        for item in content["keys"]:
            store.add(
                MasterKey(KeyRole(item["role"]), int(item["version"]), bytes.fromhex(item["key"])),
                make_current=False,
            )
        for role_name, version in content["current_versions"].items():
            store.current_versions[KeyRole(role_name)] = int(version)
        return store

    def save(self, path: Path, passphrase: str) -> None:
        """Atomically and durably: after a roll-over, cards are re-keyed with the new keys, so a
        store lost to a crash would lock those cards out for good."""
        replace_file(path, self.seal(passphrase))

    @classmethod
    def load(cls, path: Path, passphrase: str) -> KeyStore:
        try:
            sealed = path.read_bytes()
        except OSError as error:
            raise KeyStoreError(f"cannot read key store {path}: {error}") from error
        return cls.open(sealed, passphrase)


def _derive(passphrase: str, kdf: dict[str, object]) -> bytes:
    if kdf.get("name") != "scrypt":
        raise KeyStoreError(f"unknown KDF {kdf.get('name')!r}")
    n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])  # type: ignore[call-overload]
    if not (2**14 <= n <= 2**20 and 1 <= r <= 16 and 1 <= p <= 4):
        raise KeyStoreError(f"KDF parameters out of range: n={n} r={r} p={p}")
    salt = bytes.fromhex(str(kdf["salt"]))
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode())


def demo_key_store(seed: str = "ksh-demo") -> KeyStore:
    """Deterministic keys for tests and demos ONLY (derived from a public seed)."""
    counter = 0

    def seeded_bytes(size: int) -> bytes:
        nonlocal counter
        counter += 1
        return hashlib.sha256(f"{seed}/{counter}".encode()).digest()[:size]

    return KeyStore.generate(version=1, random_bytes=seeded_bytes)
