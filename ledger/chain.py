"""The hash chain over booked transfers, and the one encoding of a stored transfer row.

A booked transfer is sent to PostgreSQL as one row of a binary COPY (`TransferRowEncoder`),
and the very same bytes are what the chain covers: each booked batch has a `digest` =
SHA-256 over its rows' binary COPY tuples in sequence order (every stored column: sequence,
id, batch number, booking time, accounts, amount, code, flags, pending id, timeout,
references, metadata as canonical JSON, and both accounts' four totals after it). Its
`chain_hash` = SHA-256(previous batch's chain_hash || digest), starting from 32 zero bytes.
Changing, removing, inserting or reordering any stored transfer or batch changes a digest or
breaks the chain, and `ksh ledger check` reports where: it reads the rows back and encodes
them again with `encode_stored_row`, which must give the bytes the booking sent.

Encoding once for both jobs is also the fast way: a batch's rows are packed by one
`struct` call each and hashed as one buffer, instead of being built as tuples, encoded by
the driver and walked again for the digest.
"""

from __future__ import annotations

import decimal
import functools
import hashlib
import json
import struct
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.records import Transfer, TransferFlags

chain_hash_genesis = bytes(32)

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


metadata_depth_max = 32  # arrays and objects within each other


def canonical_json(text: str) -> str:
    """The one form of a metadata JSON text, the same for what the ledger sends and for what
    PostgreSQL's jsonb gives back: keys sorted, no spaces, strings as Python's json writes
    them, numbers as PostgreSQL's numeric prints them (plain notation, scale kept, no
    negative zero: 1e16 -> 10000000000000000, 1.50 stays 1.50).

    Raises ValueError for what jsonb refuses or changes beyond that, and for what the ledger
    does not keep although jsonb would: NaN and Infinity, a NUL or a lone surrogate in a
    string, numbers beyond 1e±1000, nesting deeper than `metadata_depth_max`."""
    try:
        value = json.loads(text, parse_float=decimal.Decimal, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ArithmeticError:  # decimal.InvalidOperation: an exponent beyond Decimal's range
        raise ValueError("number out of range") from None
    written: list[str] = []
    _write_json(value, written, 0)
    return "".join(written)


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _write_json(value: Any, written: list[str], depth: int) -> None:
    if depth > metadata_depth_max:
        raise ValueError(f"nested deeper than {metadata_depth_max}")
    if isinstance(value, dict):
        written.append("{")
        for position, key in enumerate(sorted(value)):
            if position:
                written.append(",")
            written.append(_json_string(key))
            written.append(":")
            _write_json(value[key], written, depth + 1)
        written.append("}")
    elif isinstance(value, list):
        written.append("[")
        for position, item in enumerate(value):
            if position:
                written.append(",")
            _write_json(item, written, depth + 1)
        written.append("]")
    elif isinstance(value, str):
        written.append(_json_string(value))
    elif value is None or isinstance(value, bool):
        written.append(json.dumps(value))
    elif isinstance(value, int):
        written.append(str(value))
    else:
        assert isinstance(value, decimal.Decimal)
        if not value.is_finite() or abs(value.adjusted()) > 1000:
            raise ValueError(f"number {value} out of range")
        written.append(format(abs(value) if value.is_zero() else value, "f"))


def _json_string(text: str) -> str:
    if "\x00" in text:
        raise ValueError("a NUL character (jsonb cannot store it)")
    text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, a ValueError
    return json.dumps(text, ensure_ascii=False)


# PostgreSQL's binary COPY framing and the binary forms of the column types used:
# int8/int4 big-endian, uuid 16 bytes, timestamptz microseconds since 2000-01-01 UTC,
# text UTF-8, jsonb a version byte (1) and the JSON text. A NULL is length -1.
copy_header = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no header extension
copy_trailer = b"\xff\xff"
_postgres_epoch = datetime(2000, 1, 1, tzinfo=UTC)
_null = b"\xff\xff\xff\xff"
_length_8 = (8).to_bytes(4, "big")
_length_16 = (16).to_bytes(4, "big")
_field_count_then_length_8 = len(transfer_columns).to_bytes(2, "big") + _length_8
_length_4_shifted = 4 << 32  # an int4 field (length 4, value) packed as one big-endian int8
_int4_max = 2**31 - 1  # ...which holds for values 0 .. this
_int4 = struct.Struct(">ii")
_int8 = struct.Struct(">iq")
_length = struct.Struct(">i")
# Everything from `pending_id` to `metadata` for the usual transfer: none of them set.
_nothing_optional = _null + _int4.pack(4, 0) + _null * 7
_no_flags = TransferFlags.none


@functools.cache
def _row_struct(optional_length: int) -> struct.Struct:
    """One transfer row: field count, sequence, id, [batch number, booking time] (one
    pre-encoded piece per batch), debit and credit accounts, amount, code, flags (int4
    fields packed with their length as one int8), the optional fields pre-encoded, and
    both accounts' four totals after."""
    return struct.Struct(">6sq4s16s28s16s4s16s4sqqq" + f"{optional_length}s" + "4sq" * 8)


_plain_row_pack = _row_struct(len(_nothing_optional)).pack


@functools.cache
def _card_transaction_struct(terminal_id_length: int, card_number_length: int) -> struct.Struct:
    """`pending_id` .. `metadata` with only the terminal and card references set."""
    return struct.Struct(
        f">4sii i{terminal_id_length}s iq i{card_number_length}s iq 12s".replace(" ", "")
    )


def _text(value: str | None) -> bytes:
    if value is None:
        return _null
    encoded = value.encode("utf-8")
    return _length.pack(len(encoded)) + encoded


def _optional_fields(
    pending_id: Any,
    timeout_s: int,
    terminal_id: str | None,
    terminal_sequence: int | None,
    card_number: str | None,
    card_counter: int | None,
    bank_reference: str | None,
    settlement_batch: str | None,
    metadata: str | None,
) -> bytes:
    if (
        pending_id is None
        and bank_reference is None
        and settlement_batch is None
        and metadata is None
        and terminal_id is not None
        and card_number is not None
        and terminal_sequence is not None
        and card_counter is not None
    ):
        # A card transaction from a terminal (the upload ingest's every row), in one call.
        terminal = terminal_id.encode("utf-8")
        card = card_number.encode("utf-8")
        return _card_transaction_struct(len(terminal), len(card)).pack(
            _null, 4, timeout_s, len(terminal), terminal, 8, terminal_sequence,
            len(card), card, 8, card_counter, _null * 3,
        )  # fmt: skip
    if metadata is None:
        encoded_metadata = _null
    else:
        json_bytes = canonical_json(metadata).encode("utf-8")
        encoded_metadata = _length.pack(len(json_bytes) + 1) + b"\x01" + json_bytes
    return b"".join(
        (
            _null if pending_id is None else _length_16 + pending_id.bytes,
            _int4.pack(4, timeout_s),
            _text(terminal_id),
            _null if terminal_sequence is None else _int8.pack(8, terminal_sequence),
            _text(card_number),
            _null if card_counter is None else _int8.pack(8, card_counter),
            _text(bank_reference),
            _text(settlement_batch),
            encoded_metadata,
        )
    )


def _batch_piece(batch_number: int, booked_at: datetime) -> bytes:
    delta = booked_at - _postgres_epoch
    microseconds = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return _int8.pack(8, batch_number) + _int8.pack(8, microseconds) + _length_16


class TransferRowEncoder:
    """Encodes one batch's transfer rows (columns as `transfer_columns`) for binary COPY."""

    __slots__ = ("_batch_piece", "_credit", "_credit_bytes", "_debit", "_debit_bytes")

    def __init__(self, batch_number: int, booked_at: datetime) -> None:
        self._batch_piece = _batch_piece(batch_number, booked_at)
        # The last account seen on each side and its 16 bytes: a hot account (revenue,
        # bank clearing) comes again and again, and `UUID.bytes` costs 0.2 µs a time
        # (`int.to_bytes`, which it calls, about half that).
        self._debit: uuid.UUID | None = None
        self._debit_bytes = b""
        self._credit: uuid.UUID | None = None
        self._credit_bytes = b""

    def row(
        self,
        sequence: int,
        transfer: Transfer,
        debit_after: Sequence[int],
        credit_after: Sequence[int],
    ) -> bytes:
        """The row of a booked transfer (accounts, amount and code resolved)."""
        (
            id_uuid,
            debit,
            credit,
            amount,
            code,
            transfer_flags,
            pending_id,
            timeout_s,
            terminal_id,
            terminal_sequence,
            card_number,
            card_counter,
            bank_reference,
            settlement_batch,
            metadata,
        ) = transfer  # at once: fifteen attribute reads cost more
        if (
            pending_id is None
            and not timeout_s
            and terminal_id is None
            and card_number is None
            and bank_reference is None
            and settlement_batch is None
            and metadata is None
            and terminal_sequence is None
            and card_counter is None
        ):
            optional = _nothing_optional
            pack = _plain_row_pack
        else:
            optional = _optional_fields(*transfer[6:])
            pack = _row_struct(len(optional)).pack
        flags = 0 if transfer_flags is _no_flags else int(transfer_flags)
        if not (0 <= code <= _int4_max and 0 <= flags <= _int4_max):
            raise ValueError(f"code {code} or flags {flags} outside integer (validate first)")
        if debit is not self._debit:
            self._debit, self._debit_bytes = debit, debit.int.to_bytes(16)  # type: ignore[union-attr]
        if credit is not self._credit:
            self._credit, self._credit_bytes = credit, credit.int.to_bytes(16)  # type: ignore[union-attr]
        debit_0, debit_1, debit_2, debit_3 = debit_after
        credit_0, credit_1, credit_2, credit_3 = credit_after
        return pack(
            _field_count_then_length_8,
            sequence,
            _length_16,
            id_uuid.int.to_bytes(16),
            self._batch_piece,
            self._debit_bytes,
            _length_16,
            self._credit_bytes,
            _length_8,
            amount,
            _length_4_shifted | code,
            _length_4_shifted | flags,
            optional,
            _length_8, debit_0, _length_8, debit_1, _length_8, debit_2, _length_8, debit_3,
            _length_8, credit_0, _length_8, credit_1, _length_8, credit_2, _length_8, credit_3,
        )  # fmt: skip


def encode_stored_row(row: Sequence[Any]) -> bytes:
    """A row read back from ledger_transfers (columns as `transfer_columns`), encoded as the
    booking encoded it."""
    transfer = Transfer(row[1], row[4], row[5], row[6], row[7], row[8], *row[9:18])
    return _batch_encoder(row[2], row[3]).row(row[0], transfer, row[18:22], row[22:26])


@functools.lru_cache(maxsize=4)
def _batch_encoder(batch_number: int, booked_at: datetime) -> TransferRowEncoder:
    return TransferRowEncoder(batch_number, booked_at)


def batch_digest(encoded_rows: Iterable[bytes]) -> bytes:
    """SHA-256 over a batch's encoded rows, in sequence order."""
    digest = hashlib.sha256()
    for encoded in encoded_rows:
        digest.update(encoded)
    return digest.digest()


digest_format = 2  # ledger_batches.digest_format of the batches booked now


def batch_digest_format_1(rows: Sequence[Sequence[Any]]) -> bytes:
    """The digest of batches booked before the binary encoding (digest_format 1): SHA-256,
    column by column of `transfer_columns`, over a 4-byte big-endian length and then: ids as
    their 16 bytes; the booking time as microseconds since 1970, and the integer columns,
    as 8-byte little-endian integers; every other column as the UTF-8 repr of the tuple of
    its values (pending ids as hex strings, metadata as sorted-keys compact JSON)."""
    digest = hashlib.sha256()
    if not rows:
        return digest.digest()
    for name, column in zip(transfer_columns, zip(*rows)):
        if name in ("id", "debit_account_id", "credit_account_id"):
            encoded = b"".join(value.bytes for value in column)
        elif name == "booked_at":
            encoded = _little_endian_int8s(
                (value - _unix_epoch) // _one_microsecond for value in column
            )
        elif name in _format_1_integer_columns:
            encoded = _little_endian_int8s(column)
        elif name == "pending_id":
            encoded = repr(tuple(None if v is None else v.hex for v in column)).encode()
        elif name == "metadata":
            encoded = repr(
                tuple(
                    None
                    if v is None
                    else json.dumps(
                        json.loads(v), sort_keys=True, separators=(",", ":"), ensure_ascii=False
                    )
                    for v in column
                )
            ).encode()
        else:
            encoded = repr(column).encode("utf-8")
        digest.update(len(encoded).to_bytes(4, "big"))
        digest.update(encoded)
    return digest.digest()


_unix_epoch = datetime(1970, 1, 1, tzinfo=UTC)
_one_microsecond = timedelta(microseconds=1)
_format_1_integer_columns = frozenset(
    {"sequence", "batch_number", "amount", "code", "flags", "timeout_s"}
    | {name for name in transfer_columns if name.endswith("_after")}
)


def _little_endian_int8s(values: Iterable[int]) -> bytes:
    return b"".join(value.to_bytes(8, "little", signed=True) for value in values)


def next_chain_hash(previous: bytes, digest: bytes) -> bytes:
    assert len(previous) == 32
    assert len(digest) == 32
    return hashlib.sha256(previous + digest).digest()
