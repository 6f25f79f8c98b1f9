"""The Transaction MAC (TMAC) of the KSH card application, in one place and pure (no I/O): the
software card computes it with these functions while a transaction runs, and the back office
rebuilds and verifies it from an upload record with the same ones.

DESFire EV2 MACs every transaction it commits with a per-application key, the
AppTransactionMACKey, that the card and the back office hold and terminals never see
(`reference/desfire.md` §5). Ours is per card: AN10922-diversified from the TMAC master key
(`card_reader.keys.KeyRole.TMAC`; input UID ‖ AID ‖ "KSH" as for every KSH key), and written
into the TransactionMAC file (file 5) at personalisation. A terminal that forges, alters or
suppresses a transaction cannot produce a matching TMV, and the counter shows what is missing.

**Counter and session key** (§5, MF2DLHX0 §10.3.2; PM3's vectors). TMC counts the card's MACed
transactions. A transaction that commits with a non-empty TMI takes the next counter value and
is MACed under `SesTMMACKey = CMAC(key, 5A 00 01 00 80 ‖ LE32(TMC) ‖ UID(7))`, where TMC is the
counter the card reports after the commit (the reference writes it TMC+1, TMC being the
counter before). Everything here takes the *reported* TMC, so the back office passes the
record's counter through unchanged.

**TMV** = MACt(SesTMMACKey, TMI): AES-CMAC with a zero IV, truncated to the 8 bytes at the odd
0-based positions ("even-numbered" in NXP's counting), as EV2 secure messaging truncates
(`crypto.truncate_mac`).

**TMI (Transaction MAC Input): our choice.** The EV2/EV3 byte layout is NDA-only ([U] in the
reference), so this TMI is ours and a real EV2 card's TMV will not match it. We follow the public
DESFire Light definition (MF2DLHX0 §10.3.4): each covered command appends its command code and
parameters as they appear on the command interface, zero-padded to a 16-byte boundary, then its
plain data (the data it writes, or the response data of a read), zero-padded likewise; value
commands put the value in the first part (`Cmd ‖ FileNo ‖ Value ‖ ZeroPadding`, one block).
Data are plain whatever the communication mode (no MAC, CRC or padding of secure messaging).

Covered (`covered_commands`; the KSH application's card transaction, rebuilt by
`transaction_input`):
- Debit, Credit, LimitedCredit on the purse: `Cmd ‖ FileNo ‖ Value(4) ‖ 10 zero bytes`;
- WriteRecord of the log record: `3B ‖ FileNo ‖ Offset(3) ‖ Length(3) ‖ 8 zero bytes`, then the
  24-byte record and 8 zero bytes. The record carries the card counter, kind, amount, balance
  after, the terminal's card-side number and the time, so the TMV binds all of them.

Not covered, and why:
- WriteData of the trip state (and of the profile when a card is blocked): the trip state is the
  fare core's 48 opaque bytes, which no upload record carries, so the back office could not
  rebuild the TMI; what it must prove is the money and the card's own log record, which names
  the transaction. Covering it means carrying the trip state in the record (and adding 0x3D).
- Reads (ReadData, GetValue, ReadRecords; covered on DESFire Light): a KSH tap reads profile,
  purse, trip state and the last log record in the same session before it writes, so each
  upload record would have to carry all of them. (A real card excludes reads when the reader
  sends AbortTransaction after them, MF2DLHX0 §10.3.4.)
- CommitReaderID: disabled on KSH cards (the TMAC file's RW right is F).

Changing the choice is the one line `covered_commands`: the software card and the rebuild both
go through `command_input`, which knows every command MF2DLHX0 lists. (Covering a write or read
the upload record does not carry also needs those bytes in the record.)
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from card_reader.crypto import block_bytes, cmac, key_bytes, truncate_mac
from card_reader.keys import KeyRole, MasterKey, diversify_card_key
from card_reader.ksh_card import (
    LogRecord,
    PurseOperation,
    RecordKind,
    ksh_application_id,
    log_file,
    log_record_layout,
    purse_file,
    purse_operation,
    purse_operation_of,
)

counter_max = 0xFFFFFFFF  # TMC is 4 bytes; a card at its limit MACs nothing more
value_bytes = 8  # TMV
uid_bytes = 7  # SV's 11-byte context is LE32(TMC) ‖ UID: 7-byte UIDs only


class Command(enum.IntEnum):
    """The commands MF2DLHX0 §10.3.4 lets update the TMI."""

    READ_DATA = 0xBD
    WRITE_DATA = 0x3D
    GET_VALUE = 0x6C
    CREDIT = 0x0C
    DEBIT = 0xDC
    LIMITED_CREDIT = 0x1C
    READ_RECORDS = 0xBB
    WRITE_RECORD = 0x3B
    CLEAR_RECORD_FILE = 0xEB


# The TMI choice (module docstring): the value commands and the log record's WriteRecord.
covered_commands = frozenset(
    {Command.DEBIT, Command.CREDIT, Command.LIMITED_CREDIT, Command.WRITE_RECORD}
)

# Parameter bytes after the command code, before the first ZeroPadding (MF2DLHX0 §10.3.4).
_parameter_bytes = {
    Command.READ_DATA: 7,  # FileNo Offset(3) Length(3); then the data read
    Command.WRITE_DATA: 7,  # FileNo Offset(3) Length(3); then the data written
    Command.GET_VALUE: 1,  # FileNo; the value read joins the same padded part
    Command.CREDIT: 5,  # FileNo Value(4)
    Command.DEBIT: 5,
    Command.LIMITED_CREDIT: 5,
    Command.READ_RECORDS: 7,  # FileNo RecNo(3) RecCount(3); then the records read
    Command.WRITE_RECORD: 7,  # FileNo Offset(3) Length(3); then the record data
    Command.CLEAR_RECORD_FILE: 1,  # FileNo
}
assert covered_commands <= set(_parameter_bytes)


def _zero_padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % block_bytes)


def command_input(code: int, plain: bytes, response: bytes = b"") -> bytes:
    """What one command appends to the TMI: empty unless `code` is covered. `plain` is the
    command's header and data after the command code, without secure messaging (for ReadData
    and ReadRecords with Length or RecCount 0, the caller puts in the length actually read);
    `response` is the plain data a read answered."""
    if code not in covered_commands:
        return b""
    split = _parameter_bytes[code]  # type: ignore[index]  # an IntEnum key answers to its int
    head = bytes((code,)) + plain[:split]
    if code == Command.GET_VALUE:
        return _zero_padded(head + response)
    return _zero_padded(head) + _zero_padded(plain[split:] + response)


def session_mac_key(transaction_mac_key: bytes, uid: bytes, counter: int) -> bytes:
    """SesTMMACKey of the transaction the card reports as `counter` (its TMC after the commit)."""
    _check_key_and_uid(transaction_mac_key, uid)
    return cmac(transaction_mac_key, b"\x5a" + _session_vector_tail(uid, counter))


def session_encryption_key(transaction_mac_key: bytes, uid: bytes, counter: int) -> bytes:
    """SesTMENCKey (CommitReaderID's EncTMRI; unused by KSH cards), same counter convention."""
    _check_key_and_uid(transaction_mac_key, uid)
    return cmac(transaction_mac_key, b"\xa5" + _session_vector_tail(uid, counter))


def _session_vector_tail(uid: bytes, counter: int) -> bytes:
    if not 1 <= counter <= counter_max:
        raise ValueError(f"a Transaction MAC counter is 1..{counter_max}, not {counter}")
    return bytes.fromhex("00010080") + counter.to_bytes(4, "little") + uid


def _check_key_and_uid(transaction_mac_key: bytes, uid: bytes) -> None:
    if len(transaction_mac_key) != key_bytes:
        raise ValueError(f"an AES-128 key has {key_bytes} bytes, not {len(transaction_mac_key)}")
    if len(uid) != uid_bytes:
        raise ValueError(f"the Transaction MAC needs a {uid_bytes}-byte UID, not {len(uid)}")


def transaction_mac_value(
    transaction_mac_key: bytes, uid: bytes, counter: int, transaction_input: bytes
) -> bytes:
    """TMV = MACt(SesTMMACKey, TMI)."""
    if not transaction_input or len(transaction_input) % block_bytes:
        raise ValueError("a TMI is whole 16-byte blocks and never empty")
    session_key = session_mac_key(transaction_mac_key, uid, counter)
    return truncate_mac(cmac(session_key, transaction_input))


# ---------------------------------------------------------------------------- the KSH transaction


@dataclass(frozen=True, slots=True)
class CardTransaction:
    """One committed card transaction of the KSH application, as the back office knows it from
    an upload record: the purse operation and its amount, and the log record the card wrote
    (`LogRecord.to_bytes`). `of` builds it from the log record, as `KshCard.perform` sends it."""

    purse_operation: PurseOperation | None  # None: no value command (free transfer, issue, block)
    amount_rupiah: int
    log_record: bytes

    @classmethod
    def of(cls, record: LogRecord) -> CardTransaction:
        return cls(purse_operation(record), record.amount_rupiah, record.to_bytes())

    @classmethod
    def of_log_fields(
        cls,
        counter: int,
        kind: int,
        amount_rupiah: int,
        balance_after_rupiah: int,
        terminal_number: int,
        time_unix_seconds: int,
    ) -> CardTransaction:
        """From what an upload record says the card's log record holds, in
        `bus_terminals.wire.card_log_fields` order: `kind` is the log record's kind (a debit or
        a credit of the amount, a block). (The bytes `LogRecord.to_bytes` would give, built
        without the object: once per upload record in the back office.)"""
        record_kind = _record_kinds[kind]
        record = log_record_layout.encode_fields(
            counter,
            record_kind,
            amount_rupiah,
            balance_after_rupiah,
            terminal_number,
            time_unix_seconds,
        )
        return cls(purse_operation_of(record_kind, amount_rupiah), amount_rupiah, record)


_record_kinds = {kind.value: kind for kind in RecordKind}


def card_key(master_key: bytes, uid: bytes) -> bytes:
    """A card's AppTransactionMACKey: the TMAC master (`KeyRole.TMAC`, of the version the card
    was personalised with) diversified with AN10922 over UID ‖ AID 4B 53 48 ‖ "KSH", as every
    KSH card key (`card_reader.keys.diversify_card_key`)."""
    master = MasterKey(KeyRole.TMAC, 0, master_key)
    return diversify_card_key(master, uid, ksh_application_id).key


def token_card_keys(token_dir: str, label: str, pin: str) -> Callable[[bytes], tuple[bytes, ...]]:
    """The back office's HSM: a card's AppTransactionMACKeys for the TMAC versions the token
    accepts (current first), diversified inside a PKCS#11 token that never lets the master out
    (`card_reader.token_keys`; opened here, the one I/O of this module, so the back office's
    gateways need import nothing else of the card side)."""
    from pathlib import Path

    from card_reader.token_keys import open_token

    token = open_token(Path(token_dir), label, pin)

    def card_keys(uid: bytes) -> tuple[bytes, ...]:
        return tuple(
            token.card_key(KeyRole.TMAC, uid, ksh_application_id, version).key
            for version in token.accepted_versions(KeyRole.TMAC)
        )

    return card_keys


def transaction_input(transaction: CardTransaction) -> bytes:
    """The TMI the card accumulated for `transaction`: its commands in the order
    `KshCard.perform` sends them, each through `command_input` (the uncovered trip-state write
    adds nothing, and is left out)."""
    record = transaction.log_record
    write = command_input(
        Command.WRITE_RECORD, _log_write_head + len(record).to_bytes(3, "little") + record
    )
    operation = transaction.purse_operation
    if operation is None:
        return write
    amount = transaction.amount_rupiah.to_bytes(4, "little", signed=True)
    return command_input(operation, _purse_head + amount) + write


_purse_head = bytes((purse_file,))
_log_write_head = bytes((log_file,)) + bytes(3)  # FileNo, Offset 0


def verify(
    transaction_mac_key: bytes,
    uid: bytes,
    counter: int,
    value: bytes,
    transaction: CardTransaction,
) -> bool:
    """Did the card with this UID and per-card TMAC key commit `transaction` as its MACed
    transaction number `counter`, with TMV `value`? False for any mismatch, a counter out of
    range or a value of the wrong length; ValueError for a key or UID of the wrong length."""
    _check_key_and_uid(transaction_mac_key, uid)
    if not 1 <= counter <= counter_max or len(value) != value_bytes:
        return False
    expected = transaction_mac_value(
        transaction_mac_key, uid, counter, transaction_input(transaction)
    )
    return hmac.compare_digest(expected, value)
