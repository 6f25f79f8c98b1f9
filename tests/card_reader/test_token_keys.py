"""Master keys in a PKCS#11 token (SoftHSM 2): never readable, and the per-card keys diversified
inside the token are exactly the file store's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pkcs11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pkcs11 import Attribute, ObjectClass

from card_reader.keys import (
    KeyRole,
    KeyStore,
    MasterKey,
    demo_key_store,
    diversify_card_key,
    uid_lengths,
)
from card_reader.token_keys import (
    TokenError,
    TokenKeys,
    create_token,
    key_label,
    load_token,
    open_token,
)

pin = "token-pin-1234"
vector_master = bytes.fromhex("00112233445566778899AABBCCDDEEFF")  # AN10922 §2.2.1
short_master = bytes.fromhex("F3F9377698707B688EAF84ABE39E3791")  # AN10957 pp.13-14


def rolled_store() -> KeyStore:
    """Debit at versions 2 and 3 (1 no longer accepted), the other roles at version 1."""
    store = demo_key_store("token")
    for seed in (b"2", b"3"):
        store.roll_over(KeyRole.DEBIT, lambda size, seed=seed: (seed * size)[:size])
    return store


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One token folder for the module (SoftHSM reads its folder once per process): a terminal
    token from the rolled store, and one with the public vectors' masters as read keys."""
    folder = tmp_path_factory.mktemp("tokens")
    store = rolled_store()
    roles = (KeyRole.DEBIT, KeyRole.CREDIT)
    create_token(folder, "validator", pin)
    load_token(
        folder,
        "validator",
        pin,
        [key for role in roles for key in store.accepted_keys(role)],
        {role: store.current_versions[role] for role in roles},
    )
    create_token(folder, "vectors", pin)
    vectors = [MasterKey(KeyRole.READ, 1, vector_master), MasterKey(KeyRole.READ, 2, short_master)]
    load_token(folder, "vectors", pin, vectors, {KeyRole.READ: 2})
    create_token(folder, "reload", pin)  # loaded by a test (creating closes open sessions)
    return folder


@pytest.fixture(scope="module")
def validator_token(token_dir: Path) -> Iterator[TokenKeys]:
    keys = open_token(token_dir, "validator", pin)
    yield keys
    keys.close()


def test_public_an10922_vectors_computed_in_the_token(token_dir: Path) -> None:
    keys = open_token(token_dir, "vectors", pin)
    try:
        long_input = bytes.fromhex("04782E21801D803042F54E585020416275")
        assert keys.diversify(KeyRole.READ, 1, long_input).hex().upper() == (
            "A8DD63A3B89D54B37CA802473FDA9175"
        )
        # 8-byte message: the padding-to-32 case where AN10922 is not plain CMAC
        short_input = bytes.fromhex("04DEADBEEFFEED")
        assert keys.diversify(KeyRole.READ, 2, short_input).hex().upper() == (
            "0BB408BAFF98B6EE9F2E1585777F6A51"
        )
    finally:
        keys.close()


@settings(max_examples=60, deadline=None)
@given(
    role=st.sampled_from([KeyRole.DEBIT, KeyRole.CREDIT]),
    uid=st.sampled_from(uid_lengths).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    aid=st.integers(0, 0xFFFFFF),
    back=st.integers(0, 1),
)
def test_token_card_keys_equal_the_file_stores(
    validator_token: TokenKeys, role: KeyRole, uid: bytes, aid: int, back: int
) -> None:
    store = rolled_store()
    view = store.view(KeyRole.DEBIT, KeyRole.CREDIT)
    assert validator_token.accepted_versions(role) == view.accepted_versions(role)
    versions = view.accepted_versions(role)
    version = versions[min(back, len(versions) - 1)]
    from_token = validator_token.card_key(role, uid, aid, version)
    assert from_token == view.card_key(role, uid, aid, version)
    assert from_token == diversify_card_key(store.master_key(role, version), uid, aid)


def test_the_token_holds_its_roles_current_and_previous_versions_only(
    validator_token: TokenKeys,
) -> None:
    assert validator_token.roles == frozenset({KeyRole.DEBIT, KeyRole.CREDIT})
    assert validator_token.accepted_versions(KeyRole.DEBIT) == (3, 2)
    assert validator_token.current_versions == {KeyRole.DEBIT: 3, KeyRole.CREDIT: 1}
    uid = bytes(7)
    with pytest.raises(KeyError, match="version 1 is not accepted"):
        validator_token.card_key(KeyRole.DEBIT, uid, 1, version=1)
    with pytest.raises(KeyError):
        validator_token.card_key(KeyRole.PERSONALISATION, uid, 1)
    assert repr(validator_token) == "TokenKeys(validator: credit v1, debit v3)"


def test_master_keys_in_the_token_cannot_be_read_back(validator_token: TokenKeys) -> None:
    session = validator_token._session
    store = rolled_store()
    keys = list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY}))
    assert sorted(key[Attribute.LABEL] for key in keys) == sorted(
        [key_label(KeyRole.DEBIT, 3), key_label(KeyRole.DEBIT, 2), key_label(KeyRole.CREDIT, 1)]
    )
    for key in keys:
        assert key[Attribute.SENSITIVE] and not key[Attribute.EXTRACTABLE]
        with pytest.raises(pkcs11.AttributeSensitive):
            key[Attribute.VALUE]
        # encrypting is all it can do: no decrypting, wrapping or deriving other keys
        for use in (Attribute.DECRYPT, Attribute.WRAP, Attribute.DERIVE, Attribute.SIGN):
            assert key[use] is False
    assert store.master_key(KeyRole.DEBIT).key not in repr(validator_token).encode()


def test_a_reload_after_a_roll_over_drops_the_version_no_longer_accepted(
    tmp_path_factory: pytest.TempPathFactory, token_dir: Path
) -> None:
    store = demo_key_store("reload")

    def load() -> None:
        keys = store.accepted_keys(KeyRole.DEBIT)
        current = {KeyRole.DEBIT: store.current_versions[KeyRole.DEBIT]}
        load_token(token_dir, "reload", pin, keys, current)

    load()
    store.roll_over(KeyRole.DEBIT)
    load()
    store.roll_over(KeyRole.DEBIT)
    load()
    keys = open_token(token_dir, "reload", pin)
    try:
        assert keys.accepted_versions(KeyRole.DEBIT) == (3, 2)
        objects = keys._session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY})
        labels = {key[Attribute.LABEL] for key in objects}
        assert labels == {key_label(KeyRole.DEBIT, 3), key_label(KeyRole.DEBIT, 2)}
    finally:
        keys.close()
    with pytest.raises(TokenError, match="already has a token labelled 'reload'"):
        create_token(token_dir, "reload", pin)  # refused before it re-initialises anything
    with pytest.raises(TokenError, match="no token labelled 'absent'"):
        open_token(token_dir, "absent", pin)
    with pytest.raises(TokenError, match="not a token folder"):
        open_token(tmp_path_factory.mktemp("empty"), "reload", pin)
