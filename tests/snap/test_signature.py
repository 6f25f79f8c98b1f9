"""SNAP signatures against every public vector, and the ways verification must fail."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateways.snap import signature
from gateways.snap.fields import format_amount, parse_amount_value

vectors_folder = Path(
    "/work/shared/reference/snap_vectors"
)  # the team copy; tests/snap/vectors mirrors it
local_vectors_folder = Path(__file__).parent / "vectors"


def vectors_dir() -> Path:
    return local_vectors_folder if local_vectors_folder.exists() else vectors_folder


def vector(name: str) -> dict[str, str]:
    document = json.loads((vectors_dir() / "vectors.json").read_text())
    [found] = [v for v in document["vectors"] if v["name"] == name]
    return found


def test_symmetric_hmac_sha512_vector() -> None:
    v = vector("symmetric_hmac_sha512")
    body = v["body_minified"].encode()
    assert signature.body_digest(body) == v["body_sha256"]
    made = signature.sign_transaction(
        v["client_secret"], v["method"], v["path"], v["access_token"], body, v["timestamp"]
    )
    assert made == v["x_signature"]
    assert signature.verify_transaction(
        v["client_secret"], v["method"], v["path"], v["access_token"], body, v["timestamp"], made
    )


def test_minified_json_reproduces_the_vector_bytes() -> None:
    v = vector("symmetric_hmac_sha512")
    pretty = json.dumps(json.loads(v["body_minified"]), indent=2)
    assert signature.minified_json(json.loads(pretty)) == v["body_minified"].encode()


def test_b2b_access_token_vector() -> None:
    v = vector("b2b_access_token_sha256withrsa")
    key = signature.load_private_key((vectors_dir() / v["private_key_file"]).read_bytes())
    assert (
        signature.access_token_string(v["client_key"], v["timestamp"]).decode()
        == v["string_to_sign"]
    )
    made = signature.sign_access_token(key, v["client_key"], v["timestamp"])
    assert made == v["x_signature"]  # PKCS#1 v1.5 is deterministic
    assert signature.verify_access_token(key.public_key(), v["client_key"], v["timestamp"], made)


def test_notification_signature_vector() -> None:
    v = vector("notification_sha256withrsa")
    key = signature.load_private_key((vectors_dir() / v["private_key_file"]).read_bytes())
    body = v["body_minified"].encode()
    assert signature.body_digest(body) == v["body_sha256"]
    made = signature.sign_notification(key, v["method"], v["path"], body, v["timestamp"])
    assert made == v["x_signature"]


def test_notification_verification_vector() -> None:
    v = vector("notification_verification")
    key = signature.load_public_key((vectors_dir() / v["public_key_file"]).read_bytes())
    body = v["body_minified"].encode()
    assert signature.body_digest(body) == v["body_sha256"]
    assert v["expect"] == "valid"
    assert signature.verify_notification(
        key, v["method"], v["path"], body, v["timestamp"], v["x_signature"]
    )


def test_sample_public_key_is_the_pair_of_the_sample_private_key() -> None:
    private = signature.load_private_key(
        (vectors_dir() / "midtrans_sample_private_key.pem").read_bytes()
    )
    public = (vectors_dir() / "midtrans_sample_public_key.pem").read_bytes()
    assert signature.public_key_pem(private.public_key()) == signature.public_key_pem(
        signature.load_public_key(public)
    )


@pytest.mark.parametrize(
    "change",
    ["method", "path", "token", "body", "timestamp", "secret", "signature", "garbage"],
)
def test_symmetric_verification_fails_on_any_change(change: str) -> None:
    v = vector("symmetric_hmac_sha512")
    arguments = {
        "secret": v["client_secret"],
        "method": v["method"],
        "path": v["path"],
        "token": v["access_token"],
        "body": v["body_minified"].encode(),
        "timestamp": v["timestamp"],
        "signature": v["x_signature"],
    }
    if change == "body":
        arguments["body"] = v["body_minified"].replace(",", ", ", 1).encode()  # same JSON
    elif change == "garbage":
        arguments["signature"] = "not base64 at all!"
    elif change == "signature":
        arguments["signature"] = "A" + v["x_signature"][1:]
    elif change == "timestamp":
        arguments["timestamp"] = v["timestamp"].replace(".196Z", ".197Z")
    elif change == "method":
        arguments["method"] = "PUT"
    else:
        arguments[change] = str(arguments[change]) + "x"
    assert not signature.verify_transaction(
        str(arguments["secret"]),
        str(arguments["method"]),
        str(arguments["path"]),
        str(arguments["token"]),
        arguments["body"],  # type: ignore[arg-type]
        str(arguments["timestamp"]),
        str(arguments["signature"]),
    )


def test_rsa_verification_fails_for_another_key_or_string() -> None:
    v = vector("b2b_access_token_sha256withrsa")
    key = signature.load_private_key((vectors_dir() / v["private_key_file"]).read_bytes())
    other = signature.generate_private_key()
    assert not signature.verify_access_token(
        other.public_key(), v["client_key"], v["timestamp"], v["x_signature"]
    )
    assert not signature.verify_access_token(
        key.public_key(), v["client_key"] + "X", v["timestamp"], v["x_signature"]
    )
    assert not signature.verify_access_token(
        key.public_key(), v["client_key"], v["timestamp"], "%%%"
    )


def test_timestamps_are_parsed_verbatim_and_checked_against_the_tolerance() -> None:
    now = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)
    text = signature.format_timestamp(now)
    assert text == "2026-11-24T08:00:00+07:00"
    parsed = signature.parse_timestamp(text)
    assert parsed == now
    assert signature.parse_timestamp("2024-03-05T10:37:16.196Z") is not None
    assert signature.parse_timestamp("2026-11-24T08:00:00") is None  # no offset
    assert signature.parse_timestamp("yesterday") is None
    assert signature.timestamp_is_fresh(now + timedelta(seconds=299), now, 300)
    assert not signature.timestamp_is_fresh(now - timedelta(seconds=301), now, 300)
    assert not signature.timestamp_is_fresh(now + timedelta(seconds=301), now, 300)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    body=st.dictionaries(st.text(max_size=8), json_values, max_size=6), flip=st.integers(0, 10_000)
)
def test_signed_bytes_verify_and_any_changed_byte_fails(body: dict[str, object], flip: int) -> None:
    sent = signature.minified_json(body)
    assert json.loads(sent) == body  # the bytes we hash are the body we meant
    stamp = "2026-11-24T08:00:00+07:00"
    made = signature.sign_transaction("secret-key-123456", "POST", "/p", "tok", sent, stamp)
    assert signature.verify_transaction("secret-key-123456", "POST", "/p", "tok", sent, stamp, made)
    changed = bytearray(sent)
    changed[flip % len(changed)] ^= 0x01
    assert not signature.verify_transaction(
        "secret-key-123456", "POST", "/p", "tok", bytes(changed), stamp, made
    )


@given(rupiah=st.integers(0, 10**15))
def test_amounts_round_trip_as_whole_rupiah(rupiah: int) -> None:
    assert parse_amount_value(format_amount(rupiah), "amount") == rupiah
