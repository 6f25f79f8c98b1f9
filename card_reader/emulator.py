"""A MIFARE DESFire EV2-class card in software, and an in-process reader for it.

The card answers the same APDUs with the same status words as `reference/desfire.md` describes:
AES keys and access rights enforced, EV1 (`AuthenticateAES`) and EV2 (`AuthenticateEV2First`)
secure messaging checked (a wrong MAC gives 91 1E and ends the session), value limits, backup
semantics (value, backup data and record files change only at `CommitTransaction`), cyclic
records, both framings (ISO-wrapped CLA 0x90 and native), and the ISO SELECT of the DESFire AID.

Choices where the public sources are silent ([U] in the reference), so a reader knows what to
expect from this card:
- Reads (ReadData, GetValue, ReadRecords) return committed data while a transaction is pending.
- A failing command ends the authenticated session and discards pending changes; so do
  SelectApplication, any authentication, and power off.
- CommitTransaction / AbortTransaction with nothing pending answer 91 00.
- ReadRecords returns the chosen records oldest first; record 0 is the newest. Several WriteRecord
  to one record file in one transaction fill the same new record.
- Value limits are checked when Credit/Debit/LimitedCredit is staged (91 BE). LimitedCredit is
  allowed up to the sum of the debits of the last committed transaction, once.
- A file whose access right is free (0xE) is read in plain when no one is authenticated; inside an
  authenticated session its file communication mode applies as for any other file.
- Standard data files are written whole at once (a real card may leave undefined content when torn).
- Only AES keys. Wrapper errors: 67 00 (length), 6E 00 (class), 6D 00 (instruction), 6A 82
  (SELECT of another AID).
- Transaction MAC (`card_reader.tmac`: session key, TMI and TMV; the TMI layout is ours, after the
  public DESFire Light definition, so a real EV2 card's TMV differs): one TransactionMAC file per
  application (`CreateTransactionMACFile` 0xCE, AES only, created by the application master key
  with its key enciphered; CommitReaderID is not implemented, so its RW right must be F). While
  a transaction runs, each successful covered command appends to the TMI; CommitTransaction with
  a non-empty TMI increments TMC and stores TMC ‖ TMV with the other changes, at once; option
  0x01 answers those 12 bytes (the file's unchanged content when nothing covered ran), and is
  refused (91 9D, which aborts the transaction) when the application has no TransactionMAC file.
  Reading the file gives the same 12 bytes. Anything that discards pending changes (abort, a
  failing command, select, authentication, power loss) discards the TMI; TMC stays. A card whose
  TMC reached 2^32 - 1 refuses to commit a MACed transaction (91 9D).

Power loss: `fail_after_exchanges(n)` makes the n-th exchange from now the last one. By default it is
processed (a CommitTransaction in it takes effect) and its answer is lost; with
`before_processing=True` the card loses power as the command arrives. Either way the card then
holds its committed state only, and `process` raises `CardPowerLost`.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from card_reader import crypto, tmac
from card_reader.apdu import (
    ApduFormatError,
    CommandApdu,
    IsoStatus,
    Status,
    desfire_df_name,
    get_uid_apdu,
    split_frames,
    unwrap_command,
    wrap_response,
)
from card_reader.desfire_files import AccessRights, CommMode, FileType, free_access, no_access
from card_reader.durable import replace_file
from card_reader.port import CardError

desfire_atr = bytes.fromhex("3B8180018080")
response_frame_data_bytes_max = 59  # one native frame: 1 status + 59 data bytes
command_chain_bytes_max = 1024  # longest command this card accepts over several AF frames
card_memory_bytes = 8192  # EV2 8K
applications_max = 28
application_keys_max = 14
file_number_max = 31
picc_aid = 0
factory_picc_key_settings = 0x0F
version_hardware = bytes.fromhex(
    "04010112001A05"
)  # NXP, DESFire, EV2 (major 0x12), 8K, ISO 14443-4
version_software = bytes.fromhex("04010102001A05")
version_batch = bytes.fromhex("BA4519E320")
version_week_year = bytes.fromhex("2126")
tmac_key_option_aes = 0x02
commit_option_transaction_mac = 0x01  # CommitTransaction answers TMC ‖ TMV


class CardPoweredOff(Exception):
    """The card has no power (not yet powered on, or lost it)."""


class CardPowerLost(CardPoweredOff):
    """Injected power loss: this exchange's answer never reached the reader."""


class _Fail(Exception):
    """A command refused with a DESFire status (ends the session, aborts the transaction)."""

    def __init__(self, status: Status) -> None:
        super().__init__(status.name)
        self.status = status


# ---------------------------------------------------------------------------- persistent state


@dataclass(slots=True)
class DataFile:
    file_type: FileType
    comm_mode: CommMode
    access: AccessRights
    data: bytearray
    pending: bytearray | None = None

    def memory_bytes(self) -> int:
        return len(self.data) * (2 if self.file_type is FileType.BACKUP_DATA else 1)


@dataclass(slots=True)
class ValueFile:
    comm_mode: CommMode
    access: AccessRights
    lower_limit: int
    upper_limit: int
    value: int
    limited_credit_enabled: bool
    free_get_value: bool
    limited_credit_value: int = 0
    pending_delta: int | None = None
    pending_debits: int = 0
    pending_limited_credit: bool = False
    file_type: FileType = FileType.VALUE

    def memory_bytes(self) -> int:
        return 32


@dataclass(slots=True)
class RecordFile:
    file_type: FileType
    comm_mode: CommMode
    access: AccessRights
    record_size: int
    records_max: int
    records: list[bytes] = field(default_factory=list)  # committed, oldest first
    pending_record: bytearray | None = None
    pending_clear: bool = False

    def capacity(self) -> int:
        # A cyclic file keeps one record as the spare for anti-tearing.
        return (
            self.records_max - 1 if self.file_type is FileType.CYCLIC_RECORD else self.records_max
        )

    def memory_bytes(self) -> int:
        return self.record_size * self.records_max


@dataclass(slots=True)
class TransactionMacFile:
    """The TransactionMAC file: the AppTransactionMACKey, TMC and TMV of the last MACed
    transaction, and the TMI of the ongoing one (never saved: uncommitted)."""

    comm_mode: CommMode
    access: AccessRights
    key: bytes = field(repr=False)  # key material is never printed
    key_version: int
    counter: int = 0
    value: bytes = bytes(tmac.value_bytes)
    pending_input: bytearray = field(default_factory=bytearray, repr=False)
    file_type: FileType = FileType.TRANSACTION_MAC

    def content(self) -> bytes:
        """TMC (4, LE) ‖ TMV (8): what ReadData and CommitTransaction option 0x01 answer."""
        return self.counter.to_bytes(4, "little") + self.value

    def memory_bytes(self) -> int:
        return 32


CardFile = DataFile | ValueFile | RecordFile | TransactionMacFile
_FileKind = TypeVar("_FileKind", DataFile, ValueFile, RecordFile)


@dataclass(slots=True)
class Application:
    aid: int
    key_settings: int
    keys: list[tuple[bytes, int]] = field(repr=False)  # (AES key, version) per key number
    files: dict[int, CardFile] = field(default_factory=dict)

    def has_pending(self) -> bool:
        return any(_file_has_pending(card_file) for card_file in self.files.values())

    def discard_pending(self) -> None:
        for card_file in self.files.values():
            _discard_file_pending(card_file)

    def commit(self) -> None:
        for card_file in self.files.values():
            _commit_file(card_file)

    def transaction_mac_file(self) -> TransactionMacFile | None:
        for card_file in self.files.values():
            if isinstance(card_file, TransactionMacFile):
                return card_file
        return None


def _file_has_pending(card_file: CardFile) -> bool:
    if isinstance(card_file, DataFile):
        return card_file.pending is not None
    if isinstance(card_file, ValueFile):
        return card_file.pending_delta is not None
    if isinstance(card_file, TransactionMacFile):
        return bool(card_file.pending_input)
    return card_file.pending_record is not None or card_file.pending_clear


def _discard_file_pending(card_file: CardFile) -> None:
    if isinstance(card_file, DataFile):
        card_file.pending = None
    elif isinstance(card_file, ValueFile):
        card_file.pending_delta = None
        card_file.pending_debits = 0
        card_file.pending_limited_credit = False
    elif isinstance(card_file, TransactionMacFile):
        card_file.pending_input.clear()
    else:
        card_file.pending_record = None
        card_file.pending_clear = False


def _commit_file(card_file: CardFile) -> None:
    if isinstance(card_file, DataFile):
        if card_file.pending is not None:
            card_file.data = card_file.pending
    elif isinstance(card_file, ValueFile):
        if card_file.pending_delta is not None:
            card_file.value += card_file.pending_delta
            assert card_file.lower_limit <= card_file.value <= card_file.upper_limit
            if card_file.pending_limited_credit:
                card_file.limited_credit_value = 0
            elif card_file.pending_debits:
                card_file.limited_credit_value = card_file.pending_debits
    elif isinstance(card_file, TransactionMacFile):
        pass  # TMC and TMV are set by CommitTransaction itself, which has the UID
    else:
        if card_file.pending_clear:
            card_file.records = []
        if card_file.pending_record is not None:
            card_file.records.append(bytes(card_file.pending_record))
            del card_file.records[: max(0, len(card_file.records) - card_file.capacity())]
    _discard_file_pending(card_file)


# ---------------------------------------------------------------------------- session state


@dataclass(slots=True)
class _Authenticated:
    key_number: int
    ev2: crypto.Ev2Session | None
    ev1: crypto.Ev1Session | None


@dataclass(slots=True)
class _AuthenticationInProgress:
    command_code: int  # 0xAA, 0x71, 0x77
    key_number: int
    key: bytes = field(repr=False)  # key material is never printed
    random_b: bytes = field(repr=False)
    random_b_cipher: bytes
    previous_ev2: crypto.Ev2Session | None  # NonFirst keeps TI and CmdCtr


@dataclass(slots=True)
class _CommandChain:
    code: int
    data: bytearray
    expected_bytes: int


# Commands whose data goes in the file's communication mode (write type).
_write_commands = {0x3D, 0x3B, 0x0C, 0xDC, 0x1C}
# Plain header length (never enciphered) for commands that carry file data.
_header_bytes = {0x3D: 7, 0x3B: 7, 0x0C: 1, 0xDC: 1, 0x1C: 1, 0xC4: 1, 0x54: 0, 0xCE: 5}


class EmulatedCard:
    """A DESFire EV2-class card. Factory-fresh unless loaded: PICC master key AES zeros, version 0."""

    def __init__(
        self,
        uid: bytes | None = None,
        *,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.uid = uid if uid is not None else b"\x04" + random_bytes(6)
        assert len(self.uid) == 7
        self._random_bytes = random_bytes
        self.picc = Application(picc_aid, factory_picc_key_settings, [(bytes(16), 0)])
        self.applications: dict[int, Application] = {}
        self.powered = False
        self._exchanges_until_power_loss: int | None = None
        self._lose_power_before_processing = False
        self._reset_session()

    # ------------------------------------------------------------------ the interface

    def atr(self) -> bytes:
        return desfire_atr

    def power_on(self) -> None:
        self.powered = True
        self._reset_session()

    def power_off(self) -> None:
        """Field gone: the session and everything uncommitted are lost."""
        self.powered = False
        for application in self.applications.values():
            application.discard_pending()
        self._reset_session()

    def fail_after_exchanges(self, n: int | None, *, before_processing: bool = False) -> None:
        """Lose power at the n-th exchange from now (1 = the next one); None cancels."""
        assert n is None or n >= 1
        self._exchanges_until_power_loss = n
        self._lose_power_before_processing = before_processing

    def process(self, command: bytes) -> bytes:
        """One C-APDU in either framing -> its R-APDU."""
        if not self.powered:
            raise CardPoweredOff("the card is not powered")
        if self._exchanges_until_power_loss is not None:
            self._exchanges_until_power_loss -= 1
            if self._exchanges_until_power_loss == 0:
                self._exchanges_until_power_loss = None
                if not self._lose_power_before_processing:
                    self._process(command)
                self.power_off()
                raise CardPowerLost("power lost during the exchange")
        return self._process(command)

    # ------------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid.hex(),
            "picc": _application_to_dict(self.picc),
            "applications": [_application_to_dict(a) for a in self.applications.values()],
        }

    @classmethod
    def from_dict(
        cls, saved: dict[str, Any], *, random_bytes: Callable[[int], bytes] = os.urandom
    ) -> EmulatedCard:
        uid = bytes.fromhex(saved["uid"])
        if len(uid) != 7:
            raise ValueError(f"a card UID has 7 bytes, not {len(uid)}")
        card = cls(uid, random_bytes=random_bytes)
        card.picc = _application_from_dict(saved["picc"])
        for application_dict in saved["applications"]:
            application = _application_from_dict(application_dict)
            card.applications[application.aid] = application
        return card

    # ------------------------------------------------------------------ dispatch

    def _reset_session(self) -> None:
        self.selected: Application = self.picc
        self._authenticated: _Authenticated | None = None
        self._authenticating: _AuthenticationInProgress | None = None
        self._command_chain: _CommandChain | None = None
        self._response_frames: list[bytes] = []

    def _process(self, raw: bytes) -> bytes:
        if raw[:1] == b"\x00":
            return self._process_interindustry(raw)
        if raw[:1] == b"\xff":
            return self._process_reader_pseudo_apdu(raw)
        try:
            frame, framing = unwrap_command(raw)
        except ApduFormatError:
            return IsoStatus.WRONG_LENGTH.to_bytes(2, "big")
        status, data = self._process_frame(frame.code, frame.data)
        return wrap_response(status, data, framing)

    def _process_reader_pseudo_apdu(self, raw: bytes) -> bytes:
        """PC/SC Part 3 GET DATA (`FF CA 00 00 00`): a contactless reader answers it with the
        anticollision UID. vpcd passes it through to the card, so the software card answers it."""
        if raw == get_uid_apdu:
            return self.uid + IsoStatus.SUCCESS.to_bytes(2, "big")
        if len(raw) < 4:
            return IsoStatus.WRONG_LENGTH.to_bytes(2, "big")
        if raw[1] != 0xCA:
            return IsoStatus.INSTRUCTION_NOT_SUPPORTED.to_bytes(2, "big")
        return IsoStatus.WRONG_PARAMETERS.to_bytes(2, "big")

    def _process_interindustry(self, raw: bytes) -> bytes:
        try:
            apdu = CommandApdu.parse(raw)
        except ApduFormatError:
            return IsoStatus.WRONG_LENGTH.to_bytes(2, "big")
        if apdu.ins != 0xA4:
            return IsoStatus.INSTRUCTION_NOT_SUPPORTED.to_bytes(2, "big")
        if apdu.p1 != 0x04 or apdu.p2 != 0x00:
            return IsoStatus.WRONG_PARAMETERS.to_bytes(2, "big")
        if apdu.data != desfire_df_name:
            return IsoStatus.FILE_NOT_FOUND.to_bytes(2, "big")
        self._end_session()
        self.selected = self.picc
        return IsoStatus.SUCCESS.to_bytes(2, "big")

    def _process_frame(self, code: int, data: bytes) -> tuple[int, bytes]:
        if code == 0xAF:
            if self._response_frames:
                frame = self._response_frames.pop(0)
                return (Status.ADDITIONAL_FRAME if self._response_frames else 0), frame
            if self._authenticating is not None:
                return self._run(lambda: self._authenticate_second_pass(data))
            if self._command_chain is not None:
                chain = self._command_chain
                chain.data += data
                if len(chain.data) > chain.expected_bytes:
                    self._command_chain = None
                    return self._fail(Status.LENGTH_ERROR)
                if len(chain.data) < chain.expected_bytes:
                    return Status.ADDITIONAL_FRAME, b""
                self._command_chain = None
                return self._run_command(chain.code, bytes(chain.data))
            return self._fail(Status.COMMAND_ABORTED)
        # A new command abandons whatever was half done.
        self._response_frames = []
        self._command_chain = None
        self._authenticating = None
        expected = self._chained_command_bytes(code, data)
        if expected is not None and len(data) < expected:
            if expected > command_chain_bytes_max:
                return self._fail(Status.LENGTH_ERROR)
            self._command_chain = _CommandChain(code, bytearray(data), expected)
            return Status.ADDITIONAL_FRAME, b""
        return self._run_command(code, data)

    def _run_command(self, code: int, data: bytes) -> tuple[int, bytes]:
        handler = self._handlers.get(code)
        if handler is None:
            return self._fail(Status.ILLEGAL_COMMAND_CODE)
        return self._run(lambda: handler(self, code, data))

    def _run(self, action: Callable[[], tuple[int, bytes]]) -> tuple[int, bytes]:
        try:
            status, data = action()
        except _Fail as failure:
            return self._fail(failure.status)
        except crypto.IntegrityError:
            return self._fail(Status.INTEGRITY_ERROR)
        if len(data) <= response_frame_data_bytes_max:
            return status, data
        frames = split_frames(data, response_frame_data_bytes_max, response_frame_data_bytes_max)
        self._response_frames = frames[1:]
        return Status.ADDITIONAL_FRAME, frames[0]

    def _fail(self, status: Status) -> tuple[int, bytes]:
        self._end_session()
        return status, b""

    def _end_session(self) -> None:
        self.selected.discard_pending()
        self._authenticated = None
        self._authenticating = None
        self._command_chain = None
        self._response_frames = []

    # ------------------------------------------------------------------ secure messaging

    def _chained_command_bytes(self, code: int, data: bytes) -> int | None:
        """Total command data expected for a write that may arrive over several AF frames."""
        if code not in (0x3D, 0x3B) or len(data) < 7:
            return None
        card_file = self.selected.files.get(data[0])
        if card_file is None:
            return None
        length = int.from_bytes(data[4:7], "little")
        if self._authenticated is None:  # free access: plain, whatever the file's mode
            return 7 + length
        mode = card_file.comm_mode
        if mode is CommMode.MAC:
            return 7 + length + crypto.mac_bytes
        if mode is CommMode.FULL:
            if self._authenticated.ev2 is not None:
                return 7 + (length // 16 + 1) * 16 + crypto.mac_bytes
            return 7 + -(-(length + 4) // 16) * 16
        return 7 + length

    def _unprotect(self, code: int, data: bytes, mode: CommMode) -> bytes:
        """Check and strip the secure messaging of one command; returns header ‖ plain data.
        `mode` is the command's protection as EV2 defines it (MAC for every non-file command)."""
        session = self._authenticated
        if session is None:
            return data
        if session.ev2 is not None:
            ev2 = session.ev2
            if mode is CommMode.PLAIN:
                return data
            if len(data) < crypto.mac_bytes:
                raise _Fail(Status.LENGTH_ERROR)
            body, mac = data[: -crypto.mac_bytes], data[-crypto.mac_bytes :]
            if not hmac.compare_digest(ev2.command_mac(code, body), mac):
                raise crypto.IntegrityError("command MAC")
            if mode is CommMode.MAC:
                return body
            header_bytes = _header_bytes.get(code, len(body))
            header, cipher = body[:header_bytes], body[header_bytes:]
            return header + (ev2.decrypt_command(cipher) if cipher else b"")
        assert session.ev1 is not None
        ev1 = session.ev1
        if code not in _write_commands and code not in (0xC4, 0xCE):
            ev1.mac(bytes((code,)) + data)
            return data
        if mode is CommMode.MAC:
            if len(data) < crypto.mac_bytes:
                raise _Fail(Status.LENGTH_ERROR)
            body, mac = data[: -crypto.mac_bytes], data[-crypto.mac_bytes :]
            if not hmac.compare_digest(ev1.mac(bytes((code,)) + body)[: crypto.mac_bytes], mac):
                raise crypto.IntegrityError("command MAC")
            return body
        if mode is CommMode.FULL:
            header_bytes = _header_bytes[code]
            header, cipher = data[:header_bytes], data[header_bytes:]
            if code == 0xC4:
                if not cipher or len(cipher) % crypto.block_bytes:
                    raise _Fail(Status.LENGTH_ERROR)
                return header + ev1.decrypt(cipher)  # ChangeKey checks its own CRCs
            prefix = bytes((code,)) + header
            if code in (0x3D, 0x3B):
                data_bytes = int.from_bytes(header[4:7], "little")
            else:  # a value, or a Transaction MAC key and its version
                data_bytes = 17 if code == 0xCE else 4
            return header + ev1.decrypt_with_crc(cipher, prefix, b"", data_bytes)
        ev1.mac(bytes((code,)) + data)
        return data

    def _protect(self, data: bytes, mode: CommMode) -> bytes:
        """Secure messaging of a successful (status 00) response."""
        session = self._authenticated
        if session is None:
            return data
        if session.ev2 is not None:
            ev2 = session.ev2
            if mode is CommMode.PLAIN:
                ev2.advance()
                return data
            body = ev2.encrypt_response(data) if mode is CommMode.FULL and data else data
            mac = ev2.response_mac(0, body)
            ev2.advance()
            return body + mac
        assert session.ev1 is not None
        ev1 = session.ev1
        if mode is CommMode.FULL and data:
            return ev1.encrypt_with_crc(data, data + b"\x00")
        return data + ev1.mac(data + b"\x00")[: crypto.mac_bytes]

    def _finish(self, data: bytes, mode: CommMode) -> tuple[int, bytes]:
        return Status.OPERATION_OK, self._protect(data, mode)

    # ------------------------------------------------------------------ access

    def _file(self, file_number: int) -> CardFile:
        if self.selected is self.picc:
            raise _Fail(Status.PERMISSION_DENIED)
        card_file = self.selected.files.get(file_number)
        if card_file is None:
            raise _Fail(Status.FILE_NOT_FOUND)
        return card_file

    def _file_of_kind(self, data: bytes, kind: type[_FileKind]) -> _FileKind:
        """The file named by the command's first byte; it must be of the kind the command needs."""
        if not data:
            raise _Fail(Status.LENGTH_ERROR)
        card_file = self._file(data[0])
        if not isinstance(card_file, kind):
            raise _Fail(Status.PARAMETER_ERROR)
        return card_file

    def _require_access(self, key_numbers: tuple[int, ...]) -> None:
        if free_access in key_numbers:
            return
        allowed = {number for number in key_numbers if number < application_keys_max}
        if not allowed:
            raise _Fail(Status.PERMISSION_DENIED)
        if self._authenticated is None:
            raise _Fail(Status.AUTHENTICATION_ERROR)
        if self._authenticated.key_number not in allowed:
            raise _Fail(Status.PERMISSION_DENIED)

    def _require_master_key(self, free_when: bool = False) -> None:
        if free_when:
            return
        if self._authenticated is None or self._authenticated.key_number != 0:
            raise _Fail(Status.AUTHENTICATION_ERROR)

    def _require_listing_right(self) -> None:
        """Key settings bit 1 ("free directory list access"): when clear, GetApplicationIDs,
        GetFileIDs, GetFileSettings and GetKeySettings need the PICC or application master
        key (DESFire data sheet, public MF3ICD40 edition)."""
        self._require_master_key(free_when=bool(self.selected.key_settings & 0x02))

    def _file_command_mode(self, code: int, card_file: CardFile) -> CommMode:
        """EV2 protection of the command itself: writes carry the file's mode, reads are MACed
        unless the file is plain."""
        if code in _write_commands:
            return card_file.comm_mode
        return CommMode.PLAIN if card_file.comm_mode is CommMode.PLAIN else CommMode.MAC

    # ------------------------------------------------------------------ authentication

    def _authenticate_first_pass(self, code: int, data: bytes) -> tuple[int, bytes]:
        previous_ev2 = self._authenticated.ev2 if self._authenticated else None
        if code == 0x77 and previous_ev2 is None:
            raise _Fail(Status.PERMISSION_DENIED)
        if code == 0x71:
            if len(data) < 2 or len(data) != 2 + data[1]:
                raise _Fail(Status.LENGTH_ERROR)
        elif len(data) != 1:
            raise _Fail(Status.LENGTH_ERROR)
        key_number = data[0] & 0x3F
        if key_number >= len(self.selected.keys):
            raise _Fail(Status.NO_SUCH_KEY)
        self._end_session()
        key = self.selected.keys[key_number][0]
        random_b = self._random_bytes(16)
        random_b_cipher = crypto.aes_cbc_encrypt(key, crypto.zero_block, random_b)
        self._authenticating = _AuthenticationInProgress(
            code, key_number, key, random_b, random_b_cipher, previous_ev2
        )
        return Status.ADDITIONAL_FRAME, random_b_cipher

    def _authenticate_second_pass(self, data: bytes) -> tuple[int, bytes]:
        pending = self._authenticating
        assert pending is not None
        self._authenticating = None
        if len(data) != 32:
            raise _Fail(Status.LENGTH_ERROR)
        ev1 = pending.command_code == 0xAA
        iv = pending.random_b_cipher if ev1 else crypto.zero_block
        plain = crypto.aes_cbc_decrypt(pending.key, iv, data)
        random_a, rotated_b = plain[:16], plain[16:]
        if not hmac.compare_digest(rotated_b, crypto.rotate_left(pending.random_b)):
            raise _Fail(Status.AUTHENTICATION_ERROR)
        rotated_a = crypto.rotate_left(random_a)
        if ev1:
            answer = crypto.aes_cbc_encrypt(pending.key, data[-16:], rotated_a)
            session_key = crypto.ev1_session_key(random_a, pending.random_b)
            self._authenticated = _Authenticated(
                pending.key_number, None, crypto.Ev1Session(session_key)
            )
            return Status.OPERATION_OK, answer
        encryption_key, mac_key = crypto.ev2_session_keys(pending.key, random_a, pending.random_b)
        if pending.command_code == 0x77:
            previous = pending.previous_ev2
            assert previous is not None
            session = crypto.Ev2Session(
                encryption_key, mac_key, previous.transaction_identifier, previous.command_counter
            )
            answer = crypto.aes_cbc_encrypt(pending.key, crypto.zero_block, rotated_a)
        else:
            transaction_identifier = self._random_bytes(4)
            session = crypto.Ev2Session(encryption_key, mac_key, transaction_identifier)
            answer = crypto.aes_cbc_encrypt(
                pending.key, crypto.zero_block, transaction_identifier + rotated_a + bytes(12)
            )
        self._authenticated = _Authenticated(pending.key_number, session, None)
        return Status.OPERATION_OK, answer

    # ------------------------------------------------------------------ PICC and application

    def _select_application(self, code: int, data: bytes) -> tuple[int, bytes]:
        if len(data) != 3:
            raise _Fail(Status.LENGTH_ERROR)
        aid = int.from_bytes(data, "little")
        self._end_session()
        if aid == picc_aid:
            self.selected = self.picc
            return Status.OPERATION_OK, b""
        application = self.applications.get(aid)
        if application is None:
            self.selected = self.picc
            raise _Fail(Status.APPLICATION_NOT_FOUND)
        self.selected = application
        return Status.OPERATION_OK, b""

    def _get_version(self, code: int, data: bytes) -> tuple[int, bytes]:
        if self._unprotect(code, data, CommMode.MAC):
            raise _Fail(Status.LENGTH_ERROR)
        payload = version_hardware + version_software + self.uid + version_batch
        payload += version_week_year
        response = self._protect(payload, CommMode.MAC)
        # Real cards answer in three frames: hardware, software, then UID and production data.
        self._response_frames = [response[7:14], response[14:]]
        return Status.ADDITIONAL_FRAME, response[:7]

    def _get_card_uid(self, code: int, data: bytes) -> tuple[int, bytes]:
        if self._authenticated is None:
            raise _Fail(Status.AUTHENTICATION_ERROR)
        plain = self._unprotect(code, data, CommMode.MAC)
        if plain:
            raise _Fail(Status.LENGTH_ERROR)
        return self._finish(self.uid, CommMode.FULL)

    def _get_application_ids(self, code: int, data: bytes) -> tuple[int, bytes]:
        plain = self._unprotect(code, data, CommMode.MAC)
        if plain:
            raise _Fail(Status.LENGTH_ERROR)
        if self.selected is not self.picc:
            raise _Fail(Status.PERMISSION_DENIED)
        self._require_listing_right()
        payload = b"".join(aid.to_bytes(3, "little") for aid in sorted(self.applications))
        return self._finish(payload, CommMode.MAC)

    def _get_file_ids(self, code: int, data: bytes) -> tuple[int, bytes]:
        plain = self._unprotect(code, data, CommMode.MAC)
        if plain:
            raise _Fail(Status.LENGTH_ERROR)
        if self.selected is self.picc:
            raise _Fail(Status.PERMISSION_DENIED)
        self._require_listing_right()
        return self._finish(bytes(sorted(self.selected.files)), CommMode.MAC)

    def _memory_used(self) -> int:
        return sum(
            card_file.memory_bytes()
            for application in self.applications.values()
            for card_file in application.files.values()
        )

    def _create_application(self, code: int, data: bytes) -> tuple[int, bytes]:
        plain = self._unprotect(code, data, CommMode.MAC)
        if len(plain) != 5:
            raise _Fail(Status.LENGTH_ERROR)
        if self.selected is not self.picc:
            raise _Fail(Status.PERMISSION_DENIED)
        self._require_master_key(free_when=bool(self.picc.key_settings & 0x04))
        aid = int.from_bytes(plain[:3], "little")
        key_settings, key_count_and_type = plain[3], plain[4]
        key_count = key_count_and_type & 0x0F
        if aid == picc_aid or key_count_and_type & 0xC0 != 0x80:
            raise _Fail(Status.PARAMETER_ERROR)  # AES applications only
        if not 1 <= key_count <= application_keys_max:
            raise _Fail(Status.PARAMETER_ERROR)
        if aid in self.applications:
            raise _Fail(Status.DUPLICATE_ERROR)
        if len(self.applications) >= applications_max:
            raise _Fail(Status.COUNT_ERROR)
        keys = [(bytes(16), 0) for _ in range(key_count)]
        self.applications[aid] = Application(aid, key_settings, keys)
        return self._finish(b"", CommMode.MAC)

    def _format_picc(self, code: int, data: bytes) -> tuple[int, bytes]:
        plain = self._unprotect(code, data, CommMode.MAC)
        if plain:
            raise _Fail(Status.LENGTH_ERROR)
        if self.selected is not self.picc:
            raise _Fail(Status.PERMISSION_DENIED)
        self._require_master_key()
        self.applications.clear()
        return self._finish(b"", CommMode.MAC)

    def _get_key_settings(self, code: int, data: bytes) -> tuple[int, bytes]:
        if self._unprotect(code, data, CommMode.MAC):
            raise _Fail(Status.LENGTH_ERROR)
        self._require_listing_right()
        key_count = len(self.selected.keys)
        return self._finish(bytes((self.selected.key_settings, 0x80 | key_count)), CommMode.MAC)

    def _get_key_version(self, code: int, data: bytes) -> tuple[int, bytes]:
        plain = self._unprotect(code, data, CommMode.MAC)
        if len(plain) != 1:
            raise _Fail(Status.LENGTH_ERROR)
        key_number = plain[0] & 0x3F
        if key_number >= len(self.selected.keys):
            raise _Fail(Status.NO_SUCH_KEY)
        return self._finish(bytes((self.selected.keys[key_number][1],)), CommMode.MAC)

    def _change_key_settings(self, code: int, data: bytes) -> tuple[int, bytes]:
        if self._authenticated is None or self._authenticated.key_number != 0:
            raise _Fail(Status.AUTHENTICATION_ERROR)
        session = self._authenticated
        if session.ev2 is not None:
            plain = self._unprotect(code, data, CommMode.FULL)
        else:
            assert session.ev1 is not None
            plain = session.ev1.decrypt_with_crc(data, bytes((code,)), b"", 1)
        if len(plain) != 1:
            raise _Fail(Status.LENGTH_ERROR)
        if not self.selected.key_settings & 0x08:
            raise _Fail(Status.PERMISSION_DENIED)
        self.selected.key_settings = plain[0]
        return self._finish(b"", CommMode.MAC)

    def _change_key(self, code: int, data: bytes) -> tuple[int, bytes]:
        session = self._authenticated
        if session is None:
            raise _Fail(Status.AUTHENTICATION_ERROR)
        if len(data) < 1:
            raise _Fail(Status.LENGTH_ERROR)
        plain = self._unprotect(code, data, CommMode.FULL)
        if not plain:
            raise _Fail(Status.LENGTH_ERROR)
        key_number = plain[0] & 0x3F
        application = self.selected
        if key_number >= len(application.keys):
            raise _Fail(Status.NO_SUCH_KEY)
        change_right = application.key_settings >> 4
        same_key = key_number == session.key_number
        if key_number == 0 or change_right == 0:
            allowed = session.key_number == 0 and (key_number != 0 or application.key_settings & 1)
        elif change_right == free_access:
            allowed = same_key
        elif change_right == no_access:
            allowed = False
        else:
            allowed = session.key_number == change_right
        if not allowed:
            raise _Fail(Status.PERMISSION_DENIED)
        old_key = application.keys[key_number][0]
        body = plain[1:]
        header = bytes((code, plain[0]))
        if same_key:
            new_key, version = body[:16], body[16:17]
            crc_end = 21
            if session.ev1 is not None and body[17:21] != crypto.desfire_crc32(header + body[:17]):
                raise crypto.IntegrityError("ChangeKey CRC")
        else:
            new_key = bytes(a ^ b for a, b in zip(body[:16], old_key))
            version = body[16:17]
            if session.ev1 is not None:
                crc_end = 25
                if body[17:21] != crypto.desfire_crc32(header + body[:17]):
                    raise crypto.IntegrityError("ChangeKey CRC")
                if body[21:25] != crypto.desfire_crc32(new_key):
                    raise crypto.IntegrityError("ChangeKey CRC of the new key")
            else:
                crc_end = 21
                if body[17:21] != crypto.desfire_crc32(new_key):
                    raise crypto.IntegrityError("ChangeKey CRC of the new key")
        if session.ev1 is not None and body[crc_end:].strip(b"\x00"):
            raise crypto.IntegrityError("ChangeKey padding")
        if session.ev2 is not None and len(body) != crc_end - 4 + (0 if same_key else 4):
            raise _Fail(Status.LENGTH_ERROR)
        if len(new_key) != 16 or len(version) != 1:
            raise _Fail(Status.LENGTH_ERROR)
        application.keys[key_number] = (new_key, version[0])
        if same_key:
            # The key that opened the session is gone: the session ends, the answer has no MAC.
            self._authenticated = None
            return Status.OPERATION_OK, b""
        return self._finish(b"", CommMode.MAC)

    # ------------------------------------------------------------------ files

    def _create_file(self, code: int, data: bytes) -> tuple[int, bytes]:
        plain = self._unprotect(code, data, CommMode.MAC)
        expected = {0xCD: 7, 0xCB: 7, 0xCC: 17, 0xC1: 10, 0xC0: 10}[code]
        if len(plain) != expected:
            raise _Fail(Status.LENGTH_ERROR)
        application = self.selected
        if application is self.picc:
            raise _Fail(Status.PERMISSION_DENIED)
        self._require_master_key(free_when=bool(application.key_settings & 0x04))
        file_number, comm_byte = plain[0], plain[1]
        access = AccessRights.from_bytes(plain[2:4])
        if file_number > file_number_max or comm_byte not in (0, 1, 3):
            raise _Fail(Status.PARAMETER_ERROR)
        if file_number in application.files:
            raise _Fail(Status.DUPLICATE_ERROR)
        comm_mode = CommMode(comm_byte)
        new_file: CardFile
        if code in (0xCD, 0xCB):
            size = int.from_bytes(plain[4:7], "little")
            if size == 0:
                raise _Fail(Status.PARAMETER_ERROR)
            file_type = FileType.STANDARD_DATA if code == 0xCD else FileType.BACKUP_DATA
            if size * 2 > card_memory_bytes:
                raise _Fail(Status.OUT_OF_EEPROM_ERROR)
            new_file = DataFile(file_type, comm_mode, access, bytearray(size))
        elif code == 0xCC:
            lower = int.from_bytes(plain[4:8], "little", signed=True)
            upper = int.from_bytes(plain[8:12], "little", signed=True)
            value = int.from_bytes(plain[12:16], "little", signed=True)
            options = plain[16]
            if not lower <= value <= upper or options & ~0x03:
                raise _Fail(Status.PARAMETER_ERROR)
            new_file = ValueFile(
                comm_mode, access, lower, upper, value, bool(options & 1), bool(options & 2)
            )
        else:
            record_size = int.from_bytes(plain[4:7], "little")
            records_max = int.from_bytes(plain[7:10], "little")
            file_type = FileType.CYCLIC_RECORD if code == 0xC0 else FileType.LINEAR_RECORD
            minimum = 2 if file_type is FileType.CYCLIC_RECORD else 1
            if record_size == 0 or records_max < minimum:
                raise _Fail(Status.PARAMETER_ERROR)
            if record_size * records_max > card_memory_bytes:
                raise _Fail(Status.OUT_OF_EEPROM_ERROR)
            new_file = RecordFile(file_type, comm_mode, access, record_size, records_max)
        if self._memory_used() + new_file.memory_bytes() > card_memory_bytes:
            raise _Fail(Status.OUT_OF_EEPROM_ERROR)
        application.files[file_number] = new_file
        return self._finish(b"", CommMode.MAC)

    def _get_file_settings(self, code: int, data: bytes) -> tuple[int, bytes]:
        plain = self._unprotect(code, data, CommMode.MAC)
        if len(plain) != 1:
            raise _Fail(Status.LENGTH_ERROR)
        card_file = self._file(plain[0])
        self._require_listing_right()
        head = bytes((card_file.file_type, card_file.comm_mode)) + card_file.access.to_bytes()
        if isinstance(card_file, DataFile):
            tail = len(card_file.data).to_bytes(3, "little")
        elif isinstance(card_file, TransactionMacFile):  # TMKeyOption ‖ TMKeyVersion
            tail = bytes((tmac_key_option_aes, card_file.key_version))
        elif isinstance(card_file, ValueFile):
            options = int(card_file.limited_credit_enabled) | int(card_file.free_get_value) << 1
            tail = (
                card_file.lower_limit.to_bytes(4, "little", signed=True)
                + card_file.upper_limit.to_bytes(4, "little", signed=True)
                + card_file.limited_credit_value.to_bytes(4, "little", signed=True)
                + bytes((options,))
            )
        else:
            tail = (
                card_file.record_size.to_bytes(3, "little")
                + card_file.records_max.to_bytes(3, "little")
                + len(card_file.records).to_bytes(3, "little")
            )
        return self._finish(head + tail, CommMode.MAC)

    def _read_data(self, code: int, data: bytes) -> tuple[int, bytes]:
        if not data:
            raise _Fail(Status.LENGTH_ERROR)
        card_file = self._file(data[0])
        if not isinstance(card_file, DataFile | TransactionMacFile):
            raise _Fail(Status.PARAMETER_ERROR)
        access = card_file.access
        self._require_access((access.read, access.read_write))
        plain = self._unprotect(code, data, self._file_command_mode(code, card_file))
        if len(plain) != 7:
            raise _Fail(Status.LENGTH_ERROR)
        offset = int.from_bytes(plain[1:4], "little")
        length = int.from_bytes(plain[4:7], "little")
        content = (
            card_file.content() if isinstance(card_file, TransactionMacFile) else card_file.data
        )
        size = len(content)
        if offset >= size or offset + length > size:
            raise _Fail(Status.BOUNDARY_ERROR)
        end = size if length == 0 else offset + length
        answer = bytes(content[offset:end])
        if isinstance(card_file, DataFile):  # reading the TransactionMAC file is never MACed
            read = plain[:4] + len(answer).to_bytes(3, "little")
            self._collect_transaction_mac_input(code, read, answer)
        return self._finish(answer, card_file.comm_mode)

    def _write_data(self, code: int, data: bytes) -> tuple[int, bytes]:
        card_file = self._file_of_kind(data, DataFile)
        access = card_file.access
        self._require_access((access.write, access.read_write))
        plain = self._unprotect(code, data, self._file_command_mode(code, card_file))
        offset, content = _write_arguments(plain)
        length = len(content)
        if offset + length > len(card_file.data):
            raise _Fail(Status.BOUNDARY_ERROR)
        if card_file.file_type is FileType.STANDARD_DATA:
            card_file.data[offset : offset + length] = content
        else:
            if card_file.pending is None:
                card_file.pending = bytearray(card_file.data)
            card_file.pending[offset : offset + length] = content
        self._collect_transaction_mac_input(code, plain)
        return self._finish(b"", card_file.comm_mode)

    def _get_value(self, code: int, data: bytes) -> tuple[int, bytes]:
        card_file = self._file_of_kind(data, ValueFile)
        access = card_file.access
        if not card_file.free_get_value:
            self._require_access((access.read, access.write, access.read_write))
        plain = self._unprotect(code, data, self._file_command_mode(code, card_file))
        if len(plain) != 1:
            raise _Fail(Status.LENGTH_ERROR)
        value = card_file.value.to_bytes(4, "little", signed=True)
        self._collect_transaction_mac_input(code, plain, value)
        return self._finish(value, card_file.comm_mode)

    def _change_value(self, code: int, data: bytes) -> tuple[int, bytes]:
        card_file = self._file_of_kind(data, ValueFile)
        access = card_file.access
        if code == 0x0C:  # Credit
            self._require_access((access.read_write,))
        elif code == 0x1C:  # LimitedCredit
            self._require_access((access.write, access.read_write))
        else:  # Debit
            self._require_access((access.read, access.write, access.read_write))
        if self._authenticated is None and code != 0xDC:
            raise _Fail(Status.AUTHENTICATION_ERROR)
        plain = self._unprotect(code, data, card_file.comm_mode)
        if len(plain) != 5:
            raise _Fail(Status.LENGTH_ERROR)
        amount = int.from_bytes(plain[1:5], "little", signed=True)
        if amount < 0:
            raise _Fail(Status.PARAMETER_ERROR)
        delta = card_file.pending_delta or 0
        if code == 0x1C:
            if not card_file.limited_credit_enabled or card_file.pending_limited_credit:
                raise _Fail(Status.PERMISSION_DENIED)
            if amount > card_file.limited_credit_value:
                raise _Fail(Status.BOUNDARY_ERROR)
        staged = card_file.value + delta + (-amount if code == 0xDC else amount)
        if not card_file.lower_limit <= staged <= card_file.upper_limit:
            raise _Fail(Status.BOUNDARY_ERROR)
        card_file.pending_delta = staged - card_file.value
        if code == 0xDC:
            card_file.pending_debits += amount
        if code == 0x1C:
            card_file.pending_limited_credit = True
        self._collect_transaction_mac_input(code, plain)
        return self._finish(b"", card_file.comm_mode)

    def _write_record(self, code: int, data: bytes) -> tuple[int, bytes]:
        card_file = self._file_of_kind(data, RecordFile)
        access = card_file.access
        self._require_access((access.write, access.read_write))
        plain = self._unprotect(code, data, self._file_command_mode(code, card_file))
        offset, content = _write_arguments(plain)
        length = len(content)
        if offset + length > card_file.record_size:
            raise _Fail(Status.BOUNDARY_ERROR)
        if card_file.pending_clear:
            raise _Fail(Status.PERMISSION_DENIED)
        if card_file.pending_record is None:
            full = (
                card_file.file_type is FileType.LINEAR_RECORD
                and len(card_file.records) >= card_file.capacity()
            )
            if full:
                raise _Fail(Status.BOUNDARY_ERROR)
            card_file.pending_record = bytearray(card_file.record_size)
        card_file.pending_record[offset : offset + length] = content
        self._collect_transaction_mac_input(code, plain)
        return self._finish(b"", card_file.comm_mode)

    def _read_records(self, code: int, data: bytes) -> tuple[int, bytes]:
        card_file = self._file_of_kind(data, RecordFile)
        access = card_file.access
        self._require_access((access.read, access.read_write))
        plain = self._unprotect(code, data, self._file_command_mode(code, card_file))
        if len(plain) != 7:
            raise _Fail(Status.LENGTH_ERROR)
        newest_offset = int.from_bytes(plain[1:4], "little")
        count = int.from_bytes(plain[4:7], "little")
        records = card_file.records
        available = len(records) - newest_offset
        if available <= 0 or count > available:
            raise _Fail(Status.BOUNDARY_ERROR)
        count = count or available
        end = len(records) - newest_offset
        answer = b"".join(records[end - count : end])
        read = plain[:4] + count.to_bytes(3, "little")
        self._collect_transaction_mac_input(code, read, answer)
        return self._finish(answer, card_file.comm_mode)

    def _clear_record_file(self, code: int, data: bytes) -> tuple[int, bytes]:
        card_file = self._file_of_kind(data, RecordFile)
        self._require_access((card_file.access.read_write,))
        plain = self._unprotect(code, data, CommMode.MAC)
        if len(plain) != 1:
            raise _Fail(Status.LENGTH_ERROR)
        card_file.pending_record = None
        card_file.pending_clear = True
        self._collect_transaction_mac_input(code, plain)
        return self._finish(b"", CommMode.MAC)

    def _commit_or_abort(self, code: int, data: bytes) -> tuple[int, bytes]:
        plain = self._unprotect(code, data, CommMode.MAC)
        application = self.selected
        if code == 0xA7:
            if plain:
                raise _Fail(Status.LENGTH_ERROR)
            application.discard_pending()
            return self._finish(b"", CommMode.MAC)
        if len(plain) > 1:
            raise _Fail(Status.LENGTH_ERROR)
        option = plain[0] if plain else 0
        if option & ~commit_option_transaction_mac:
            raise _Fail(Status.PARAMETER_ERROR)
        mac_file = application.transaction_mac_file()
        if option and mac_file is None:
            raise _Fail(Status.PERMISSION_DENIED)
        if mac_file is not None and mac_file.pending_input:
            if mac_file.counter >= tmac.counter_max:
                raise _Fail(Status.PERMISSION_DENIED)
            counter = mac_file.counter + 1
            value = tmac.transaction_mac_value(
                mac_file.key, self.uid, counter, bytes(mac_file.pending_input)
            )
            mac_file.counter, mac_file.value = counter, value  # with the commit below, at once
        application.commit()
        answer = mac_file.content() if option and mac_file is not None else b""
        return self._finish(answer, CommMode.MAC)

    def _collect_transaction_mac_input(
        self, code: int, plain: bytes, response: bytes = b""
    ) -> None:
        """A command that succeeded updates the ongoing transaction's TMI (`tmac.command_input`
        decides whether it is covered), when the application has a TransactionMAC file."""
        mac_file = self.selected.transaction_mac_file()
        if mac_file is not None:
            mac_file.pending_input += tmac.command_input(code, plain, response)

    def _create_transaction_mac_file(self, code: int, data: bytes) -> tuple[int, bytes]:
        """CreateTransactionMACFile: FileNo ‖ FileOption ‖ AccessRights(2) ‖ TMKeyOption in the
        clear, then the key and its version enciphered; the application master key only."""
        application = self.selected
        if application is self.picc:
            raise _Fail(Status.PERMISSION_DENIED)
        if self._authenticated is None:  # the key would travel in the clear
            raise _Fail(Status.AUTHENTICATION_ERROR)
        plain = self._unprotect(code, data, CommMode.FULL)
        if len(plain) != 22:
            raise _Fail(Status.LENGTH_ERROR)
        self._require_master_key()
        file_number, comm_byte = plain[0], plain[1]
        access = AccessRights.from_bytes(plain[2:4])
        key_option, key, key_version = plain[4], plain[5:21], plain[21]
        if file_number > file_number_max or comm_byte not in (0, 1, 3):
            raise _Fail(Status.PARAMETER_ERROR)
        if key_option != tmac_key_option_aes or access.read_write != no_access:
            raise _Fail(Status.PARAMETER_ERROR)  # AES only; no CommitReaderID here
        if file_number in application.files or application.transaction_mac_file() is not None:
            raise _Fail(Status.DUPLICATE_ERROR)
        new_file = TransactionMacFile(CommMode(comm_byte), access, bytes(key), key_version)
        if self._memory_used() + new_file.memory_bytes() > card_memory_bytes:
            raise _Fail(Status.OUT_OF_EEPROM_ERROR)
        application.files[file_number] = new_file
        return self._finish(b"", CommMode.MAC)

    _handlers: ClassVar[dict[int, Callable[[EmulatedCard, int, bytes], tuple[int, bytes]]]] = {
        0xAA: _authenticate_first_pass,
        0x71: _authenticate_first_pass,
        0x77: _authenticate_first_pass,
        0x5A: _select_application,
        0x60: _get_version,
        0x51: _get_card_uid,
        0x6A: _get_application_ids,
        0x6F: _get_file_ids,
        0xCA: _create_application,
        0xFC: _format_picc,
        0x45: _get_key_settings,
        0x64: _get_key_version,
        0x54: _change_key_settings,
        0xC4: _change_key,
        0xCD: _create_file,
        0xCB: _create_file,
        0xCC: _create_file,
        0xC0: _create_file,
        0xC1: _create_file,
        0xCE: _create_transaction_mac_file,
        0xF5: _get_file_settings,
        0xBD: _read_data,
        0x3D: _write_data,
        0x6C: _get_value,
        0x0C: _change_value,
        0xDC: _change_value,
        0x1C: _change_value,
        0x3B: _write_record,
        0xBB: _read_records,
        0xEB: _clear_record_file,
        0xC7: _commit_or_abort,
        0xA7: _commit_or_abort,
    }


def _write_arguments(plain: bytes) -> tuple[int, bytes]:
    """(offset, content) of WriteData / WriteRecord: FileNo Offset(3) Length(3) Data, where
    Length must be the data's own length and not zero."""
    if len(plain) < 7:
        raise _Fail(Status.LENGTH_ERROR)
    offset = int.from_bytes(plain[1:4], "little")
    length = int.from_bytes(plain[4:7], "little")
    content = plain[7:]
    if length == 0 or len(content) != length:
        raise _Fail(Status.LENGTH_ERROR)
    return offset, content


# ---------------------------------------------------------------------------- saving


def _file_to_dict(card_file: CardFile) -> dict[str, Any]:
    common = {
        "type": card_file.file_type.name,
        "comm_mode": card_file.comm_mode.name,
        "access": card_file.access.to_bytes().hex(),
    }
    if isinstance(card_file, DataFile):
        return common | {"data": card_file.data.hex()}
    if isinstance(card_file, ValueFile):
        return common | {
            "lower_limit": card_file.lower_limit,
            "upper_limit": card_file.upper_limit,
            "value": card_file.value,
            "limited_credit_enabled": card_file.limited_credit_enabled,
            "free_get_value": card_file.free_get_value,
            "limited_credit_value": card_file.limited_credit_value,
        }
    if isinstance(card_file, TransactionMacFile):
        return common | {
            "key": card_file.key.hex(),
            "key_version": card_file.key_version,
            "counter": card_file.counter,
            "value": card_file.value.hex(),
        }
    return common | {
        "record_size": card_file.record_size,
        "records_max": card_file.records_max,
        "records": [record.hex() for record in card_file.records],
    }


def _require(condition: bool, what: str) -> None:
    """A saved card that breaks what the card itself guarantees is refused when loaded, not
    found out later by an assertion in the middle of an exchange."""
    if not condition:
        raise ValueError(what)


def _file_from_dict(saved: dict[str, Any]) -> CardFile:
    file_type = FileType[saved["type"]]
    comm_mode = CommMode[saved["comm_mode"]]
    raw_access = bytes.fromhex(saved["access"])
    _require(len(raw_access) == 2, f"access rights of {len(raw_access)} bytes")
    access = AccessRights.from_bytes(raw_access)
    if file_type in (FileType.STANDARD_DATA, FileType.BACKUP_DATA):
        data = bytearray.fromhex(saved["data"])
        _require(0 < len(data) <= card_memory_bytes, f"data file of {len(data)} bytes")
        return DataFile(file_type, comm_mode, access, data)
    if file_type is FileType.VALUE:
        value_file = ValueFile(
            comm_mode,
            access,
            int(saved["lower_limit"]),
            int(saved["upper_limit"]),
            int(saved["value"]),
            bool(saved["limited_credit_enabled"]),
            bool(saved["free_get_value"]),
            int(saved["limited_credit_value"]),
        )
        lower, upper = value_file.lower_limit, value_file.upper_limit
        _require(-(2**31) <= lower <= value_file.value <= upper < 2**31, "value outside its limits")
        _require(0 <= value_file.limited_credit_value < 2**31, "limited credit value")
        return value_file
    if file_type is FileType.TRANSACTION_MAC:
        mac_file = TransactionMacFile(
            comm_mode,
            access,
            bytes.fromhex(saved["key"]),
            int(saved["key_version"]),
            int(saved["counter"]),
            bytes.fromhex(saved["value"]),
        )
        _require(len(mac_file.key) == crypto.key_bytes, "Transaction MAC key length")
        _require(0 <= mac_file.key_version <= 0xFF, "Transaction MAC key version")
        _require(0 <= mac_file.counter <= tmac.counter_max, "Transaction MAC counter")
        _require(len(mac_file.value) == tmac.value_bytes, "Transaction MAC value length")
        return mac_file
    record_file = RecordFile(
        file_type,
        comm_mode,
        access,
        int(saved["record_size"]),
        int(saved["records_max"]),
        [bytes.fromhex(record) for record in saved["records"]],
    )
    _require(record_file.record_size > 0 and record_file.capacity() > 0, "record file shape")
    _require(record_file.memory_bytes() <= card_memory_bytes, "record file larger than the card")
    _require(len(record_file.records) <= record_file.capacity(), "more records than fit")
    _require(
        all(len(record) == record_file.record_size for record in record_file.records),
        "a record of the wrong size",
    )
    return record_file


def _application_to_dict(application: Application) -> dict[str, Any]:
    return {
        "aid": f"{application.aid:06X}",
        "key_settings": application.key_settings,
        "keys": [{"key": key.hex(), "version": version} for key, version in application.keys],
        "files": {str(number): _file_to_dict(f) for number, f in application.files.items()},
    }


def _application_from_dict(saved: dict[str, Any]) -> Application:
    application = Application(
        int(saved["aid"], 16),
        int(saved["key_settings"]),
        [(bytes.fromhex(k["key"]), int(k["version"])) for k in saved["keys"]],
        {int(number): _file_from_dict(f) for number, f in saved["files"].items()},
    )
    _require(0 <= application.aid <= 0xFFFFFF, f"AID {application.aid:X}")
    _require(0 <= application.key_settings <= 0xFF, "key settings")
    _require(1 <= len(application.keys) <= application_keys_max, "key count")
    for key, version in application.keys:
        _require(len(key) == crypto.key_bytes, f"an AES key of {len(key)} bytes")
        _require(0 <= version <= 0xFF, f"key version {version}")
    _require(all(0 <= number <= file_number_max for number in application.files), "file number")
    mac_files = [f for f in application.files.values() if isinstance(f, TransactionMacFile)]
    _require(len(mac_files) <= 1, "more than one TransactionMAC file")
    return application


deck_format_version = 1


def save_deck(cards: list[EmulatedCard], path: Path) -> None:
    """Write a JSON deck of cards (committed state only), atomically and durably, readable by
    its owner only (it holds the cards' keys)."""
    document: dict[str, Any] = {"format": "ksh-card-deck", "version": deck_format_version}
    document["cards"] = [card.to_dict() for card in cards]
    replace_file(path, json.dumps(document, indent=1).encode())


def load_deck(path: Path) -> list[EmulatedCard]:
    """The cards of a deck; a damaged deck raises ValueError naming the file and the card."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict) or document.get("format") != "ksh-card-deck":
        raise ValueError(f"{path} is not a version {deck_format_version} KSH card deck")
    if document.get("version") != deck_format_version:
        raise ValueError(f"{path} is not a version {deck_format_version} KSH card deck")
    cards = []
    for index, saved in enumerate(document.get("cards", [])):
        try:
            cards.append(EmulatedCard.from_dict(saved))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"{path}: card {index} is damaged: {error!r}") from error
    return cards


# ---------------------------------------------------------------------------- in-process reader


class EmulatedReader:
    """`ReaderPort` in-process: insert a card, transmit to it. A card that lost power counts as
    removed (it was pulled from the field); insert it again for the next tap."""

    def __init__(self, name: str = "Emulated reader") -> None:
        self._name = name
        self.card: EmulatedCard | None = None
        self.exchanges = 0  # count of transmit calls, for benchmarks

    @property
    def name(self) -> str:
        return self._name

    def insert(self, card: EmulatedCard) -> None:
        if self.card is not None and self.card is not card:
            self.card.power_off()
        self.card = card
        card.power_on()

    def remove(self) -> None:
        if self.card is not None:
            self.card.power_off()
        self.card = None

    def card_present(self) -> bool:
        return self.card is not None

    def wait_for_card(self, timeout_ms: int) -> bool:
        deadline = time.monotonic() + timeout_ms / 1000
        while self.card is None and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.card is not None

    def wait_for_removal(self, timeout_ms: int) -> bool:
        deadline = time.monotonic() + timeout_ms / 1000
        while self.card is not None and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.card is None

    def atr(self) -> bytes:
        if self.card is None:
            raise CardError("no card", reader_name=self._name)
        return self.card.atr()

    def transmit(self, command: bytes) -> bytes:
        card = self.card
        if card is None:
            raise CardError("no card", reader_name=self._name)
        self.exchanges += 1
        try:
            return card.process(command)
        except CardPoweredOff as error:
            self.card = None
            raise CardError(
                f"card lost power: {error}",
                reader_name=self._name,
                card_uid=card.uid,
                transcript=((command.hex().upper(), ""),),
            ) from error
