"""The hash chain over booked transfers.

What is chained, exactly: each booked batch has a `digest` = SHA-256 over its transfers in
sequence order, each transfer encoded by `encode_transfer_row` (every stored column of the
transfer: sequence, id, batch number, booking time in microseconds since the Unix epoch,
accounts, amount, code, flags, pending id, timeout, references, metadata as canonical JSON, and
both accounts' four totals after it). Its `chain_hash` = SHA-256(previous batch's chain_hash ||
digest), starting from 32 zero bytes. Changing, removing, inserting or reordering any stored
transfer or batch changes a digest or breaks the chain, and `ksh ledger check` reports where.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable
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
_fixed_part = struct.Struct(">q16sqq16s16sqii8q")


def microseconds_since_epoch(moment: datetime) -> int:
    delta = moment - _epoch
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def canonical_json(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def encode_transfer_row(row: tuple[Any, ...] | Any) -> bytes:
    """One stored transfer row (in `transfer_columns` order) as the bytes the digest covers:
    the fixed-width fields packed big-endian (uuids as 16 bytes, booking time in microseconds
    since the epoch, then the 8 totals after), then a 0 byte, or, when any optional field is set, a 1 byte, a 4-byte length and the
    Python repr of (pending id hex, timeout, terminal id, terminal sequence, card number, card
    counter, bank reference, settlement batch, canonical JSON metadata).
    """
    (sequence, transfer_id, batch_number, booked_at, debit, credit, amount, code, flags) = row[:9]
    (pending_id, timeout_s, terminal_id, terminal_sequence, card_number, card_counter) = row[9:15]
    (bank_reference, settlement_batch, metadata) = row[15:18]
    fixed = _fixed_part.pack(
        sequence,
        transfer_id.bytes,
        batch_number,
        microseconds_since_epoch(booked_at),
        debit.bytes,
        credit.bytes,
        amount,
        code,
        flags,
        *row[18:26],
    )
    optional = (
        None if pending_id is None else pending_id.hex,
        timeout_s,
        terminal_id,
        terminal_sequence,
        card_number,
        card_counter,
        bank_reference,
        settlement_batch,
        None if metadata is None else canonical_json(metadata),
    )
    if optional == _no_optional:
        return fixed + b"\x00"
    extra = repr(optional).encode("utf-8")
    return fixed + b"\x01" + len(extra).to_bytes(4, "big") + extra


_no_optional = (None, 0, None, None, None, None, None, None, None)


def batch_digest(rows: Iterable[tuple[Any, ...] | Any]) -> bytes:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(encode_transfer_row(row))
    return digest.digest()


def next_chain_hash(previous: bytes, digest: bytes) -> bytes:
    assert len(previous) == 32
    assert len(digest) == 32
    return hashlib.sha256(previous + digest).digest()
