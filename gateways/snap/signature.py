"""SNAP BI signatures: what is signed, how, and how it is checked.

Three kinds (see /work/shared/reference/indonesia.md §1.2-1.5):

- access token (B2B): SHA256withRSA over ``clientId|X-TIMESTAMP``, Base64;
- transaction (symmetric): HMAC-SHA512, keyed with the client secret, over
  ``METHOD:path:token:hex(sha256(body)):X-TIMESTAMP``, Base64;
- notification (asymmetric): SHA256withRSA over ``METHOD:path:hex(sha256(body)):X-TIMESTAMP``.

The body digest is taken over the bytes exactly as sent or received: we serialise a body once
(`minified_json`) and send those bytes, and a server hashes the bytes it read, so no
re-serialisation can make the two sides disagree. The timestamp is signed verbatim as it
appears in the header.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

jakarta_timezone = timezone(timedelta(hours=7), "WIB")
timestamp_tolerance_seconds_default = 300
rsa_key_bits = 2048


def minified_json(value: Any) -> bytes:
    """The one serialisation we send: no whitespace, keys in the order given, UTF-8 kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def access_token_string(client_key: str, timestamp: str) -> bytes:
    return f"{client_key}|{timestamp}".encode()


def transaction_string(
    method: str, path: str, access_token: str, body: bytes, timestamp: str
) -> bytes:
    return f"{method.upper()}:{path}:{access_token}:{body_digest(body)}:{timestamp}".encode()


def notification_string(method: str, path: str, body: bytes, timestamp: str) -> bytes:
    return f"{method.upper()}:{path}:{body_digest(body)}:{timestamp}".encode()


# ---------------------------------------------------------------------------- RSA


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    return key


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key


def generate_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=rsa_key_bits)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: rsa.RSAPublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def rsa_sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_verify(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def sign_access_token(key: rsa.RSAPrivateKey, client_key: str, timestamp: str) -> str:
    return rsa_sign(key, access_token_string(client_key, timestamp))


def verify_access_token(
    key: rsa.RSAPublicKey, client_key: str, timestamp: str, signature: str
) -> bool:
    return rsa_verify(key, access_token_string(client_key, timestamp), signature)


def sign_notification(
    key: rsa.RSAPrivateKey, method: str, path: str, body: bytes, timestamp: str
) -> str:
    return rsa_sign(key, notification_string(method, path, body, timestamp))


def verify_notification(
    key: rsa.RSAPublicKey, method: str, path: str, body: bytes, timestamp: str, signature: str
) -> bool:
    return rsa_verify(key, notification_string(method, path, body, timestamp), signature)


# ---------------------------------------------------------------------------- HMAC


def sign_transaction(
    client_secret: str, method: str, path: str, access_token: str, body: bytes, timestamp: str
) -> str:
    message = transaction_string(method, path, access_token, body, timestamp)
    digest = hmac.new(client_secret.encode(), message, hashlib.sha512).digest()
    return base64.b64encode(digest).decode()


def verify_transaction(
    client_secret: str,
    method: str,
    path: str,
    access_token: str,
    body: bytes,
    timestamp: str,
    signature: str,
) -> bool:
    expected = sign_transaction(client_secret, method, path, access_token, body, timestamp)
    return hmac.compare_digest(expected.encode(), signature.encode())


# ---------------------------------------------------------------------------- time


def format_timestamp(moment: datetime) -> str:
    """X-TIMESTAMP as the ASPI examples write it: local Jakarta time, seconds, +07:00."""
    assert moment.tzinfo is not None, "timestamps must be timezone-aware"
    return moment.astimezone(jakarta_timezone).isoformat(timespec="seconds")


def parse_timestamp(text: str) -> datetime | None:
    """An ISO-8601 X-TIMESTAMP with an offset (``+07:00`` or ``Z``); None when it is not one."""
    if not 19 <= len(text) <= 30:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment


def timestamp_is_fresh(moment: datetime, now: datetime, tolerance_seconds: int) -> bool:
    return abs((now - moment).total_seconds()) <= tolerance_seconds
