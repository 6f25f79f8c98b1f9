"""Fleet packages: what the back office publishes to every terminal, signed, versioned, and with
an effective time. Both sides import this module (the publisher to build and check, the
terminal to verify); it imports nothing of ours but the fare core (which checks a feed), as
`bus_terminals.wire` does for uploads. Keys are text as `wire.public_key_text` writes them.

A package is a *manifest* (canonical JSON: kind, version, effective time, the content's SHA-256
and size) signed with the back office's fleet key (Ed25519), and its *content* (bytes). The
terminal checks the signature over the manifest's exact bytes, then the content's hash and size,
then the content itself (`content_problem`: a fare feed compiles with the feed validation, the
settings are known and in range...), then that the version is newer than the one it runs.

Who holds which key: the fleet signing key (private) is held by whoever publishes (`ksh fleet
publish`, from a key file the back office keeps offline from its HTTP service); the HTTP
service stores and relays signed packages and never signs one, so a compromised server cannot
forge a tariff. Each terminal is configured with the fleet key's public half. Card key
*material* never travels in a package: a key-version package names only which version of each
role's key the terminal uses as current (the keys arrive through the terminal's key store).
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bus_terminals.fare.feed import compile_feed, feed_file_names
from bus_terminals.fare.model import FeedError

package_format = "ksh-fleet-package/1"  # inside every signed manifest: domain separation
manifest_bytes_max = 4096
package_content_bytes_max = 32 * 1024 * 1024  # a whole fare feed, uncompressed JSON
label_length_max = 200
version_max = 2**62


class PackageKind(enum.StrEnum):
    fare_feed = "fare_feed"  # a GTFS-Fares-v2-like feed: {file name: text}, JSON
    key_version = "key_version"  # {key role: version the terminal uses as current}, JSON
    deny_list = "deny_list"  # the whole deny list and chip-block list (`deny_list_content`)
    settings = "settings"  # terminal settings: {name: integer}, JSON, names below


class Refusal(enum.StrEnum):
    """Why a terminal refuses a package (reported to the back office on its next sync)."""

    malformed = "malformed"  # the manifest is not ours, or not what the back office offered
    signature_invalid = "signature_invalid"
    hash_mismatch = "hash_mismatch"  # the content is not the one the manifest signed
    content_invalid = "content_invalid"  # e.g. a feed that fails validation
    stale_version = "stale_version"  # not newer than the version the terminal runs
    key_not_held = "key_not_held"  # a key version whose material this terminal lacks


# Terminal settings a package may set: name -> (lowest, highest), integers.
setting_ranges: dict[str, tuple[int, int]] = {
    "sync_interval_s": (5, 3600),
    "records_per_batch": (1, 1000),
}
key_roles = ("debit", "credit", "read")  # the roles a terminal may hold (card_reader.keys)
key_version_max = 0xFF


@dataclass(frozen=True, slots=True)
class Manifest:
    kind: PackageKind
    version: int
    effective_at_ms: int
    published_at_ms: int
    content_sha256: str
    content_bytes: int
    label: str


@dataclass(frozen=True, slots=True)
class SignedManifest:
    """The manifest as signed: its exact bytes and the signature (base64), and what they say."""

    raw: bytes
    signature: str
    manifest: Manifest

    def to_json(self) -> dict[str, str]:
        return {"manifest": base64.b64encode(self.raw).decode(), "signature": self.signature}


class PackageError(ValueError):
    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal


def encode_manifest(manifest: Manifest) -> bytes:
    document = {
        "format": package_format,
        "kind": manifest.kind.value,
        "version": manifest.version,
        "effective_at_ms": manifest.effective_at_ms,
        "published_at_ms": manifest.published_at_ms,
        "content_sha256": manifest.content_sha256,
        "content_bytes": manifest.content_bytes,
        "label": manifest.label,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def sign_package(
    key: Ed25519PrivateKey,
    kind: PackageKind,
    version: int,
    content: bytes,
    *,
    effective_at_ms: int,
    published_at_ms: int,
    label: str = "",
) -> SignedManifest:
    """The publisher's side: check the content, then sign its manifest."""
    assert 0 < version <= version_max
    problem = content_problem(kind, content)
    if problem:
        raise PackageError(Refusal.content_invalid, problem)
    manifest = Manifest(
        kind,
        version,
        effective_at_ms,
        published_at_ms,
        hashlib.sha256(content).hexdigest(),
        len(content),
        label[:label_length_max],
    )
    raw = encode_manifest(manifest)
    return SignedManifest(raw, base64.b64encode(key.sign(raw)).decode(), manifest)


def verify_manifest(public_key: Ed25519PublicKey, raw: bytes, signature: str) -> SignedManifest:
    """The signature first, then the fields; `PackageError` says which failed."""
    if len(raw) > manifest_bytes_max:
        raise PackageError(Refusal.malformed, f"manifest over {manifest_bytes_max} bytes")
    try:
        public_key.verify(base64.b64decode(signature, validate=True), raw)
    except (InvalidSignature, binascii.Error, ValueError):
        raise PackageError(Refusal.signature_invalid, "not signed by the fleet key") from None
    try:
        document = json.loads(raw)
        if document.pop("format") != package_format:
            raise ValueError("another format")
        manifest = Manifest(
            kind=PackageKind(document["kind"]),
            version=_integer(document["version"], 1, version_max),
            effective_at_ms=_integer(document["effective_at_ms"], 0, 2**53),
            published_at_ms=_integer(document["published_at_ms"], 0, 2**53),
            content_sha256=str(document["content_sha256"]),
            content_bytes=_integer(document["content_bytes"], 0, package_content_bytes_max),
            label=str(document["label"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PackageError(Refusal.malformed, f"manifest unreadable: {error!r}") from None
    return SignedManifest(raw, signature, manifest)


def verify_content(manifest: Manifest, content: bytes) -> None:
    """The content is the one signed, and is what its kind must be."""
    if len(content) != manifest.content_bytes:
        raise PackageError(
            Refusal.hash_mismatch, f"{len(content)} bytes, signed for a different size"
        )
    if hashlib.sha256(content).hexdigest() != manifest.content_sha256:
        raise PackageError(Refusal.hash_mismatch, "the content's SHA-256 is not the one signed")
    problem = content_problem(manifest.kind, content)
    if problem:
        raise PackageError(Refusal.content_invalid, problem)


def _integer(value: Any, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise ValueError(f"{value!r} is not an integer in {low}..{high}")
    return value


# ------------------------------------------------------------------------------ contents


def feed_content(texts: dict[str, str]) -> bytes:
    """A fare feed's files as package content (sorted, so the same feed gives the same bytes)."""
    return json.dumps(texts, sort_keys=True, ensure_ascii=False).encode()


def feed_texts(content: bytes) -> dict[str, str]:
    texts = json.loads(content)
    if not isinstance(texts, dict) or not all(
        isinstance(name, str) and isinstance(text, str) for name, text in texts.items()
    ):
        raise ValueError("a feed is {file name: text}")
    unknown = sorted(set(texts) - set(feed_file_names))
    if unknown:
        raise ValueError(f"not feed files: {', '.join(unknown)[:200]}")
    return texts


# A deny-list package's content: its version (u64), the denied card numbers (sorted u64), then
# this marker and the cards to block on the chip (sorted u64; `bus_terminals.sync`). No card
# number is the marker (19 digits at most). A package from before the chip-block list stops
# after the denied numbers; a terminal from before it refuses a package with the marker
# (`content_invalid`, its numbers not sorted: it keeps its list from the sync's deltas).
chip_block_marker = 2**64 - 1


class DenyListPackage(NamedTuple):
    version: int
    denied: list[int]
    chip_blocked: list[int] | None  # None: a package from before the chip-block list


def deny_list_content(
    version: int, card_numbers: list[int], chip_blocked: list[int] | None = None
) -> bytes:
    """The package content: the denied cards, and (unless None) the cards to block on the chip."""
    numbers = sorted(set(card_numbers))
    if chip_blocked is not None:
        numbers += [chip_block_marker, *sorted(set(chip_blocked))]
    return version.to_bytes(8, "little") + b"".join(
        number.to_bytes(8, "little") for number in numbers
    )


def deny_list_numbers(content: bytes) -> DenyListPackage:
    """The deny list's version, its card numbers and the cards to block on the chip."""
    if len(content) < 8 or len(content) % 8:
        raise ValueError("a deny list is a version then card numbers, 8 bytes each")
    numbers = [int.from_bytes(content[at : at + 8], "little") for at in range(8, len(content), 8)]
    chip_blocked = None
    if chip_block_marker in numbers:
        at = numbers.index(chip_block_marker)
        numbers, chip_blocked = numbers[:at], numbers[at + 1 :]
    for part in (numbers, chip_blocked or []):
        if any(later <= earlier for earlier, later in itertools.pairwise(part)):
            raise ValueError("the deny list's numbers are not sorted and distinct")
    return DenyListPackage(int.from_bytes(content[:8], "little"), numbers, chip_blocked)


def integer_table(content: bytes, ranges: dict[str, tuple[int, int]], what: str) -> dict[str, int]:
    """Settings or key versions: a JSON object of known names and integers in range."""
    table = json.loads(content)
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{what} are a JSON object, not empty")
    for name, value in table.items():
        if name not in ranges:
            raise ValueError(f"unknown {what[:-1]} {name!r} (known: {', '.join(ranges)})")
        low, high = ranges[name]
        if type(value) is not int or not low <= value <= high:
            raise ValueError(f"{what[:-1]} {name} must be an integer {low}..{high}")
    return table


key_version_ranges = {role: (0, key_version_max) for role in key_roles}


def content_problem(kind: PackageKind, content: bytes) -> str:
    """What is wrong with a package's content, or "" (one line, names the fault)."""
    if len(content) > package_content_bytes_max:
        return f"content over {package_content_bytes_max} bytes"
    try:
        if kind is PackageKind.fare_feed:
            compile_feed(feed_texts(content))
        elif kind is PackageKind.deny_list:
            deny_list_numbers(content)
        elif kind is PackageKind.settings:
            integer_table(content, setting_ranges, "settings")
        else:
            integer_table(content, key_version_ranges, "key versions")
    except FeedError as error:
        return f"fare feed: {error}"
    except (ValueError, UnicodeDecodeError) as error:  # (JSON errors are ValueErrors)
        return f"{kind.value}: {error}"
    return ""
