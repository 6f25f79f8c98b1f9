"""The terminal ↔ back office message format: one module both sides import (stdlib + Ed25519).

An upload batch is a JSON object: the terminal id, the batch sequence (1, 2, 3, ... per
terminal, no gaps), and records. Each record is a JSON array whose positions follow
`record_fields` (a table of fields: name, type, bounds), which keeps big batches small and
fast to parse. The bytes a terminal signs are exactly the bytes it sends (`encode_batch` is
deterministic), so the back office verifies the signature over the raw body once per batch and
only then parses. Parse errors raise `WireError` naming the field, the bad value and the place.

Identity: (terminal id, sequence) names the upload record; (card number, card counter) names
the card transaction (see DESIGN.md, "Identity of a card transaction").

Proof: a committed card transaction carries the card's own Transaction MAC (TMC and TMV, the
last two fields), which only the card and the back office can compute (`card_reader.tmac`);
`card_log_fields` is what the back office rebuilds its input from. Those two fields came after
the first terminals shipped: a batch whose `fields` list stops before them is still accepted,
its records read as carrying no Transaction MAC.
"""

from __future__ import annotations

import base64
import enum
import json
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

wire_version = 1
upload_records_max = 5_000
# A record encodes to ~200 bytes; the body limit leaves headroom for long route/detail text.
record_bytes_max = 400
upload_body_bytes_max = upload_records_max * record_bytes_max
text_length_max = 64
card_number_length_max = 19
# The purse's cap (Bank Indonesia's for unregistered e-money; `card_reader.ksh_card.
# balance_max_rupiah`, held equal by a test): no card transaction can move more, or leave
# more on the card, so a record that claims it is refused, not booked.
rupiah_max = 2_000_000
signature_header = "X-KSH-Signature"
terminal_header = "X-KSH-Terminal"
timestamp_header = "X-KSH-Timestamp"  # a download's signed time, terminal's clock, Unix ms
deny_list_version_header = "X-KSH-Version"  # the version of a whole deny list downloaded
content_type = "application/vnd.ksh.upload+json"


class UploadKind(enum.StrEnum):
    fare_debit = "fare_debit"  # a validator charged a fare (amount may be 0: free transfer)
    sale = "sale"  # a POS debited the card for a purchase
    refund = "refund"  # a POS credited the card back for its last sale
    topup_credit = "topup_credit"  # only a pending top-up was credited (no charge)
    denied = "denied"  # no card transaction: deny list, expired, no funds (audit only)
    # The terminal wrote the card's status "blocked" (the back office asked: its chip-block
    # list); amount 0, the purse unchanged. The card refuses every later debit and credit.
    block = "block"


#: A fare_debit whose `fare_detail` starts with this word was charged the full fare because the
#: validator's fare feed has no service on the tap's date (its calendar ran out): the tap is
#: booked as usual and the back office raises an alarm for the stale feed.
no_service_fare_detail = "full_fare_no_service"
# A fare record whose tap activated a pass granted at the desk names the sale at its end.
pass_activation_pattern = re.compile(r" activates (pass-[0-9a-f]{10})$")


class WaitingPass(NamedTuple):
    """A pass sold or granted to a card and not known to be on it yet, as terminals hold it
    (the sync answer's `pending_passes`, and `carried_passes` with their fifth field)."""

    sale_id: str
    pass_id: str
    sold_ms: int
    # A pass carried from a replaced card (`gateways.terminal_api.passes.carry_running_passes`):
    # the moment it runs from, on the old card; 0: from the day of the tap that activates it.
    from_ms: int = 0


def pass_activation_detail(detail: str, pass_sale_id: str) -> str:
    """A record's fare detail (64 characters at most) that names the activated pass sale."""
    activation = f" activates {pass_sale_id}"
    return detail[: text_length_max - len(activation)] + activation


class RecordStatus(enum.StrEnum):
    committed = "committed"  # the card answered CommitTransaction with success
    in_doubt = "in_doubt"  # the commit's answer was lost: the card's log will tell
    void = "void"  # an in-doubt transaction the card's log showed never happened


class WireError(ValueError):
    """A message that does not follow the format. Names the field and the bad value."""

    def __init__(self, field: str, value: Any, problem: str, where: str = "") -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.where = where
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        place = f" in {where}" if where else ""
        super().__init__(f"field {field!r}{place}: {problem} (got {shown})")


class UploadRecord(NamedTuple):
    """One journal record as the back office sees it. Field order is the wire order.
    (A named tuple: the back office builds thousands per upload, several times faster than
    a frozen dataclass.)"""

    terminal_id: str
    sequence: int
    kind: UploadKind
    status: RecordStatus
    card_number: str
    card_counter: int  # the card's log counter of this transaction (0 when denied)
    amount_rupiah: int  # charged (fare_debit, sale) or credited back (refund)
    topup_rupiah: int  # pending top-up credited in the same card transaction
    pending_topup_id: str  # "" when none was taken
    balance_after_rupiah: int  # the card's purse after the transaction
    time_ms: int  # Unix time of the tap, milliseconds (the terminal's clock)
    route: str  # validator: route or corridor; "" at a POS
    merchant_id: str  # POS: merchant; "" on a validator
    fare_detail: str  # fare core's short explanation ("full", "transfer", "cap") or denial reason
    previous_counter: int  # the card's last log entry before this transaction (0: none)
    previous_terminal_number: int  # ...and the card-side number of the terminal that wrote it
    previous_balance_rupiah: int  # ...and the balance after it (the balance this tap began with)
    # The card's Transaction MAC of this card transaction as its CommitTransaction answered:
    # counter (TMC) and value (TMV, 16 lowercase hex digits). Only on a committed card
    # transaction whose commit answer the terminal received; 0 and "" otherwise (denied, void,
    # in doubt, settled from the card's log, a card issued before Transaction MACs).
    tmac_counter: int = 0
    tmac_value: str = ""

    @property
    def card_transaction(self) -> tuple[str, int]:
        return (self.card_number, self.card_counter)


@dataclass(frozen=True, slots=True)
class UploadBatch:
    terminal_id: str
    batch_sequence: int
    records: tuple[UploadRecord, ...]


# -------------------------------------------------------------------------- the field table


def _text(length_max: int, *, allow_empty: bool = True) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if type(value) is not str:
            return "must be a string"
        if len(value) > length_max:
            return f"must be at most {length_max} characters"
        if not allow_empty and not value:
            return "must not be empty"
        if not value.isprintable():
            return "must be printable text"
        return None

    return check


def _integer(minimum: int, maximum: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if type(value) is not int:
            return "must be an integer"
        if not minimum <= value <= maximum:
            return f"must be between {minimum} and {maximum}"
        return None

    return check


def _card_number(value: Any) -> str | None:
    if type(value) is not str or not value.isdigit() or not value.isascii():
        return "must be a string of digits"
    if not 8 <= len(value) <= card_number_length_max:
        return f"must have 8 to {card_number_length_max} digits"
    return None


def _member(enumeration: type[enum.StrEnum]) -> Callable[[Any], str | None]:
    allowed = frozenset(item.value for item in enumeration)

    def check(value: Any) -> str | None:
        if not isinstance(value, str) or value not in allowed:
            return f"must be one of {sorted(allowed)}"
        return None

    return check


counter_max = 2**32 - 1
time_ms_max = 2**53  # exact in JSON doubles
tmac_value_length = 16  # 8 bytes in hex
_hex_digits = "0123456789abcdef"


def _tmac_value(value: Any) -> str | None:
    if type(value) is not str:
        return "must be a string"
    if value and (len(value) != tmac_value_length or value.strip(_hex_digits)):
        return f'must be "" or {tmac_value_length} lowercase hexadecimal digits'
    return None


_terminal_id_text = _text(32, allow_empty=False)


def terminal_id_check(value: Any) -> str | None:
    """A terminal id: printable, 1 to 32 characters, and safe as a folder name, since a
    terminal keeps its journal and keys under one (no `/`, `\\`, and not `.` first: no `..`)."""
    problem = _terminal_id_text(value)
    if problem is None and ("/" in value or "\\" in value or value.startswith(".")):
        return "must not contain / or \\ nor start with . (it names the terminal's folder)"
    return problem


# An operator, merchant or top-up id: what a record can carry (a pending top-up's id is one).
reference_check = _text(text_length_max, allow_empty=False)

record_fields: tuple[tuple[str, Callable[[Any], str | None]], ...] = (
    ("terminal_id", terminal_id_check),
    ("sequence", _integer(1, 2**53)),
    ("kind", _member(UploadKind)),
    ("status", _member(RecordStatus)),
    ("card_number", _card_number),
    ("card_counter", _integer(0, counter_max)),
    ("amount_rupiah", _integer(0, rupiah_max)),
    ("topup_rupiah", _integer(0, rupiah_max)),
    ("pending_topup_id", _text(text_length_max)),
    ("balance_after_rupiah", _integer(0, rupiah_max)),
    ("time_ms", _integer(0, time_ms_max)),
    ("route", _text(text_length_max)),
    ("merchant_id", _text(text_length_max)),
    ("fare_detail", _text(text_length_max)),
    ("previous_counter", _integer(0, counter_max)),
    ("previous_terminal_number", _integer(0, counter_max)),
    ("previous_balance_rupiah", _integer(0, rupiah_max)),
    ("tmac_counter", _integer(0, counter_max)),
    ("tmac_value", _tmac_value),
)
assert tuple(name for name, _ in record_fields) == UploadRecord._fields
field_names = [name for name, _ in record_fields]
# The fields of the first terminals, before the Transaction MAC: still accepted (see above).
fields_before_tmac = field_names[: field_names.index("tmac_counter")]
assert upload_body_bytes_max >= upload_records_max * record_bytes_max


def card_terminal_number(terminal_id: str) -> int:
    """The u32 a terminal writes into the card's log (the card has no room for text). The back
    office refuses to register two terminals with the same number."""
    return zlib.crc32(terminal_id.encode("utf-8"))


# The card's log record kinds (`card_reader.ksh_card.RecordKind`, held equal by a test: this
# module imports nothing of ours) of the card transactions a terminal uploads.
card_log_debit = 2  # a fare or a sale (amount 0: a free transfer, no purse command)
card_log_credit = 3  # a top-up or a refund
card_log_block = 4  # the card's status set to blocked; amount 0


class CardLogFields(NamedTuple):
    """What the card's own log record of a card transaction holds
    (`card_reader.ksh_card.LogRecord`): the terminal checks its plan against it before the card
    commits, and the back office rebuilds the card's Transaction MAC input from it
    (`card_reader.tmac.CardTransaction.of_log_fields(*fields)`)."""

    counter: int
    kind: int  # card_log_debit, card_log_credit or card_log_block
    amount_rupiah: int
    balance_after_rupiah: int
    terminal_number: int
    time_unix_seconds: int


def card_log_fields(record: UploadRecord) -> CardLogFields:
    """The log record the card writes (or wrote) for this record's card transaction."""
    assert record.kind != UploadKind.denied, "a denied tap has no card transaction"
    if record.kind in (UploadKind.fare_debit, UploadKind.sale):
        kind, amount = card_log_debit, record.amount_rupiah
    elif record.kind == UploadKind.topup_credit:
        kind, amount = card_log_credit, record.topup_rupiah
    elif record.kind == UploadKind.block:
        kind, amount = card_log_block, 0
    else:  # refund
        kind, amount = card_log_credit, record.amount_rupiah
    return CardLogFields(
        record.card_counter,
        kind,
        amount,
        record.balance_after_rupiah,
        card_terminal_number(record.terminal_id),
        record.time_ms // 1000,
    )


def check_record(record: UploadRecord) -> None:
    """Raise WireError if `record` breaks the format (terminals check before journalling)."""
    _check_values(record, f"record {record.terminal_id}/{record.sequence}")


def _check_values(values: Sequence[Any], where: str) -> None:
    for (name, check), value in zip(record_fields, values):
        problem = check(value)
        if problem is not None:
            raise WireError(name, value, problem, where)
    kind, status, counter = values[2], values[3], values[5]
    if kind == UploadKind.denied and status != RecordStatus.committed:
        raise WireError("status", status, "a denied tap has no card transaction", where)
    if kind != UploadKind.denied and counter == 0:
        raise WireError("card_counter", counter, "a card transaction has a counter >= 1", where)
    if kind == UploadKind.block and (values[6] or values[7] or values[8]):
        # The card's proof of a block (its log record, under its MAC) says amount 0: a block
        # carrying money or a pending top-up's id would book what the card never did.
        problem = "a block moves no money: amount, top-up and top-up id are empty"
        raise WireError("amount_rupiah", values[6], problem, where)
    tmac_counter, tmac_value = values[17], values[18]
    if (tmac_counter == 0) != (tmac_value == ""):
        problem = "a Transaction MAC has both a counter (>= 1) and a value, or neither"
        raise WireError("tmac_counter", tmac_counter, problem, where)
    if tmac_counter and (kind == UploadKind.denied or status != RecordStatus.committed):
        problem = "only a committed card transaction carries the card's Transaction MAC"
        raise WireError("tmac_counter", tmac_counter, problem, where)


# -------------------------------------------------------------------------- encode / decode


def encode_batch(batch: UploadBatch) -> bytes:
    """The canonical bytes of a batch: what the terminal signs and sends."""
    assert len(batch.records) <= upload_records_max
    document = {
        "version": wire_version,
        "terminal_id": batch.terminal_id,
        "batch_sequence": batch.batch_sequence,
        "fields": field_names,
        # (fields in wire order; the kinds and statuses are StrEnums: JSON strings)
        "records": [list(record) for record in batch.records],
    }
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    assert len(body) <= upload_body_bytes_max, "batch too big: lower the records per batch"
    return body


def decode_batch(body: bytes) -> UploadBatch:
    """Parse and check a batch body; WireError names the first field that is wrong."""
    if len(body) > upload_body_bytes_max:
        raise WireError("body", f"{len(body)} bytes", f"must be at most {upload_body_bytes_max}")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # not UTF-8 or JSON, a 5,000-digit number,
        raise WireError("body", body[:40], f"is not JSON: {error}") from None  # deep nesting
    if type(document) is not dict:
        raise WireError("body", document, "must be a JSON object")
    expected_keys = {"version", "terminal_id", "batch_sequence", "fields", "records"}
    if set(document) != expected_keys:
        raise WireError(
            "body", sorted(document), f"must have exactly the keys {sorted(expected_keys)}"
        )
    if type(document["version"]) is not int or document["version"] != wire_version:
        raise WireError("version", document["version"], f"must be {wire_version}")
    terminal_id = document["terminal_id"]
    problem = terminal_id_check(terminal_id)
    if problem:
        raise WireError("terminal_id", terminal_id, problem)
    batch_sequence = document["batch_sequence"]
    problem = _integer(1, 2**53)(batch_sequence)
    if problem:
        raise WireError("batch_sequence", batch_sequence, problem)
    fields = document["fields"]
    if fields == field_names:
        missing: tuple[Any, ...] = ()
    elif fields == fields_before_tmac:  # a terminal from before the Transaction MAC
        missing = (0, "")
    else:
        raise WireError("fields", fields, "must list the record fields of this version")
    rows = document["records"]
    if type(rows) is not list:
        raise WireError("records", rows, "must be a list")
    if len(rows) > upload_records_max:
        raise WireError("records", f"{len(rows)} records", f"must be at most {upload_records_max}")
    records = []
    field_count = len(fields)
    sequences: set[int] = set()
    for index, row in enumerate(rows):
        if type(row) is not list or len(row) != field_count:
            where = f"records[{index}]"
            raise WireError("records", row, f"each record must be a list of {field_count}", where)
        if missing:
            row.extend(missing)
        if not _row_valid(row, terminal_id):
            # The slow path names the field (the fast one only says yes or no).
            where = f"records[{index}]"
            _check_values(row, where)
            raise WireError("terminal_id", row[0], "must be the batch's terminal", where)
        if row[1] in sequences:
            raise WireError("sequence", row[1], "repeats within the batch", f"records[{index}]")
        sequences.add(row[1])
        row[2] = _kinds[row[2]]
        row[3] = _statuses[row[3]]
        records.append(UploadRecord(*row))
    return UploadBatch(terminal_id, batch_sequence, tuple(records))


_kinds = {kind.value: kind for kind in UploadKind}
_statuses = {status.value: status for status in RecordStatus}
_sequence_max = 2**53


def _short_text(value: Any) -> bool:
    return type(value) is str and len(value) <= text_length_max and value.isprintable()


def _rupiah(value: Any) -> bool:
    return type(value) is int and 0 <= value <= rupiah_max


def _row_valid(row: list[Any], terminal_id: str) -> bool:
    """The same checks as the field table, in one expression: the common case of a good record
    costs a few microseconds. Kept equal to `_check_values` by a property test."""
    (
        terminal,
        sequence,
        kind,
        status,
        card_number,
        counter,
        amount,
        top_up,
        top_up_id,
        balance,
        time_ms,
        route,
        merchant_id,
        detail,
        previous_counter,
        previous_terminal,
        previous_balance,
        tmac_counter,
        tmac_value,
    ) = row
    return (
        terminal == terminal_id
        and type(sequence) is int
        and 1 <= sequence <= _sequence_max
        and type(kind) is str
        and kind in _kinds
        and type(status) is str
        and status in _statuses
        and type(card_number) is str
        and 8 <= len(card_number) <= card_number_length_max
        and card_number.isdigit()
        and card_number.isascii()
        and type(counter) is int
        and 0 <= counter <= counter_max
        and _rupiah(amount)
        and _rupiah(top_up)
        and _short_text(top_up_id)
        and _rupiah(balance)
        and type(time_ms) is int
        and 0 <= time_ms <= time_ms_max
        and _short_text(route)
        and _short_text(merchant_id)
        and _short_text(detail)
        and type(previous_counter) is int
        and 0 <= previous_counter <= counter_max
        and type(previous_terminal) is int
        and 0 <= previous_terminal <= counter_max
        and _rupiah(previous_balance)
        and (status == "committed" if kind == "denied" else counter != 0)
        and (kind != "block" or not (amount or top_up or top_up_id))
        and type(tmac_counter) is int
        and type(tmac_value) is str
        and (
            (tmac_counter == 0 and tmac_value == "")
            or (
                0 < tmac_counter <= counter_max
                and len(tmac_value) == tmac_value_length
                and not tmac_value.strip(_hex_digits)
                and status == "committed"
                and kind != "denied"
            )
        )
    )


# -------------------------------------------------------------------------- signatures


def sign(private_key: Ed25519PrivateKey, body: bytes) -> str:
    return base64.b64encode(private_key.sign(body)).decode("ascii")


def request_signing_bytes(method: str, path_qs: str, timestamp_ms: str) -> bytes:
    """What a terminal signs for a download: method, path with query, and its clock."""
    return f"{method}\n{path_qs}\n{timestamp_ms}".encode()


def signed_request_headers(
    private_key: Ed25519PrivateKey, terminal_id: str, method: str, path_qs: str, timestamp_ms: int
) -> dict[str, str]:
    """The headers of a terminal's signed download request (`request_signing_bytes`)."""
    timestamp = str(timestamp_ms)
    return {
        terminal_header: terminal_id,
        signature_header: sign(private_key, request_signing_bytes(method, path_qs, timestamp)),
        timestamp_header: timestamp,
    }


def signature_valid(public_key: Ed25519PublicKey, body: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, body)
    except (ValueError, InvalidSignature):
        return False
    return True


def public_key_text(public_key: Ed25519PublicKey) -> str:
    """The raw 32-byte Ed25519 public key in base64: how a terminal registers."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return base64.b64encode(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def load_public_key(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as error:
        raise WireError("public_key", text, f"must be a base64 raw Ed25519 key ({error})") from None
