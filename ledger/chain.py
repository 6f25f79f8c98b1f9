"""The hash chain over booked transfers.

What is chained, exactly: each booked batch has a `digest` = SHA-256 over its transfers in
sequence order, every stored column of every transfer (sequence, id, batch number, booking
time, accounts, amount, code, flags, pending id, timeout, references, metadata as canonical
JSON, and both accounts' four totals after it), encoded column by column as `batch_digest`
says. Its `chain_hash` = SHA-256(previous batch's chain_hash ||
digest), starting from 32 zero bytes. Changing, removing, inserting or reordering any stored
transfer or batch changes a digest or breaks the chain, and `ksh ledger check` reports where.
"""

from __future__ import annotations

import array
import hashlib
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

chain_hash_genesis = bytes(32)
_epoch = datetime(1970, 1, 1, tzinfo=UTC)

# The columns of ledger_transfers in storage order; COPY and the chain both use it.
transfer_columns: tuple[str, ...] = (
    "sequence",
    "id",
    "batch_number",
    "booked_at",
    "debit_account_id",
    "credit_account_id",
    "amount",
    "code",
    "flags",
    "pending_id",
    "timeout_s",
    "terminal_id",
    "terminal_sequence",
    "card_number",
    "card_counter",
    "bank_reference",
    "settlement_batch",
    "metadata",
    "debit_debits_pending_after",
    "debit_debits_posted_after",
    "debit_credits_pending_after",
    "debit_credits_posted_after",
    "credit_debits_pending_after",
    "credit_debits_posted_after",
    "credit_credits_pending_after",
    "credit_credits_posted_after",
)


def microseconds_since_epoch(moment: datetime) -> int:
    delta = moment - _epoch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def canonical_json(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_uuid_columns = frozenset({"id", "debit_account_id", "credit_account_id"})
_integer_columns = frozenset(
    {"sequence", "batch_number", "amount", "code", "flags", "timeout_s"}
    | {name for name in transfer_columns if name.endswith("_after")}
)


def batch_digest(rows: Sequence[tuple[Any, ...] | Any]) -> bytes:
    """SHA-256 over the batch's transfers, column by column (rows in sequence order).

    For each column of `transfer_columns`, in order, the digest covers a 4-byte big-endian
    length and then: for the three account/transfer ids, their 16-byte values concatenated;
    for `booked_at`, the microseconds since the epoch as 8-byte little-endian integers; for
    the integer columns, 8-byte little-endian integers; for every other (nullable) column,
    the UTF-8 Python repr of the tuple of its values, with uuids as hex strings and metadata
    as canonical JSON. Column-wise, so the work is done by C loops rather than per row.
    """
    if not rows:
        return hashlib.sha256(b"").digest()
    digest = hashlib.sha256()
    for name, column in zip(transfer_columns, zip(*rows)):
        if name in _uuid_columns:
            encoded = b"".join([value.bytes for value in column])
        elif name == "booked_at":
            first = column[0]
            if all(value == first for value in column):
                encoded = _little_endian([microseconds_since_epoch(first)] * len(column))
            else:
                encoded = _little_endian([microseconds_since_epoch(value) for value in column])
        elif name in _integer_columns:
            encoded = _little_endian(column)
        elif name == "pending_id":
            encoded = repr(tuple(None if v is None else v.hex for v in column)).encode()
        elif name == "metadata":
            encoded = repr(tuple(None if v is None else canonical_json(v) for v in column)).encode()
        else:
            encoded = repr(column).encode("utf-8")
        digest.update(len(encoded).to_bytes(4, "big"))
        digest.update(encoded)
    return digest.digest()


def _little_endian(values: Sequence[int]) -> bytes:
    packed = array.array("q", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def next_chain_hash(previous: bytes, digest: bytes) -> bytes:
    assert len(previous) == 32
    assert len(digest) == 32
    return hashlib.sha256(previous + digest).digest()
