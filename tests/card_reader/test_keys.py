"""Key store at rest, role-restricted views, versions and per-card diversification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from card_reader import crypto
from card_reader.keys import (
    KeyRole,
    KeyStore,
    KeyStoreError,
    MasterKey,
    demo_key_store,
    diversify_card_key,
)

uid = bytes.fromhex("04782E21801D80")


def test_sealed_store_opens_with_the_passphrase_only(tmp_path: Path) -> None:
    store = demo_key_store("at-rest")
    path = tmp_path / "keys.json"
    path.with_name("keys.json.tmp").write_text("left by a crash")
    path.with_name("keys.json.tmp").chmod(0o644)
    store.save(path, "correct horse battery staple")
    assert (path.stat().st_mode & 0o777) == 0o600
    text = path.read_text()
    for role in KeyRole:
        assert store.master_key(role).key.hex() not in text  # nothing readable at rest
    opened = KeyStore.load(path, "correct horse battery staple")
    for role in KeyRole:
        assert opened.master_key(role) == store.master_key(role)
    with pytest.raises(KeyStoreError, match="wrong passphrase"):
        KeyStore.load(path, "wrong")


def test_altered_header_or_ciphertext_is_refused(tmp_path: Path) -> None:
    sealed = demo_key_store().seal("pass")
    document = json.loads(sealed)
    document["header"]["cipher"]["name"] = "AES-256-GCM "  # header is authenticated data
    with pytest.raises(KeyStoreError, match="altered"):
        KeyStore.open(json.dumps(document).encode(), "pass")
    document = json.loads(sealed)
    document["header"]["kdf"]["n"] = 2
    with pytest.raises(KeyStoreError, match="out of range"):
        KeyStore.open(json.dumps(document).encode(), "pass")
    with pytest.raises(KeyStoreError, match="damaged"):
        KeyStore.open(b"{not json", "pass")
    document = json.loads(sealed)
    document["header"]["kdf"] = "scrypt"  # not an object: a clear error, not a traceback
    with pytest.raises(KeyStoreError, match="damaged"):
        KeyStore.open(json.dumps(document).encode(), "pass")
    with pytest.raises(KeyStoreError, match="cannot read"):
        KeyStore.load(tmp_path / "missing.json", "pass")


def test_views_hold_only_their_roles_and_two_versions() -> None:
    store = demo_key_store()
    store.roll_over(KeyRole.DEBIT)
    store.roll_over(KeyRole.DEBIT)  # versions 1, 2, 3
    view = store.view(KeyRole.DEBIT)
    assert view.roles == frozenset({KeyRole.DEBIT})
    assert view.accepted_versions(KeyRole.DEBIT) == (3, 2)
    with pytest.raises(KeyError):
        view.card_key(KeyRole.CREDIT, uid, 1)
    with pytest.raises(KeyError, match="version 1 is not accepted"):
        view.card_key(KeyRole.DEBIT, uid, 1, version=1)
    card_key = view.card_key(KeyRole.DEBIT, uid, 1)
    assert card_key.key.hex() not in repr(card_key).lower()  # key material is never printed


def test_card_keys_are_an10922_diversified_per_card_and_application() -> None:
    master = MasterKey(KeyRole.DEBIT, 1, bytes.fromhex("00112233445566778899AABBCCDDEEFF"))
    card_key = diversify_card_key(master, uid, 0xF54230)
    expected = crypto.diversify_an10922(master.key, uid + bytes.fromhex("3042F5") + b"KSH")
    assert card_key.key == expected
    assert card_key.version == 1
    other_card = diversify_card_key(master, bytes.fromhex("04782E21801D81"), 0xF54230)
    other_application = diversify_card_key(master, uid, 0xF54231)
    assert len({card_key.key, other_card.key, other_application.key}) == 3
