"""MIFARE DESFire EV1/EV2 (AES-128), reader side, over a `ReaderPort`.

One `Desfire` object talks to one card: framing (ISO-wrapped by default, native on request),
`91 AF` chaining both ways, authentication (EV2 First/NonFirst, EV1 AES) and the secure messaging
that follows (plain, MAC, full), and the commands the KSH application needs. A card error status
or a bad MAC raises `DesfireError` (a `CardError`) carrying the status, the card UID when known,
and the transcript of recent exchanges in hex. Facts: `reference/desfire.md`.
"""

from __future__ import annotations

import hmac
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from card_reader import crypto
from card_reader.apdu import (
    ApduFormatError,
    Framing,
    Status,
    additional_frame_code,
    split_frames,
    status_name,
    unwrap_response,
    wrap_command,
)
from card_reader.desfire_files import AccessRights, CommMode, FileType
from card_reader.port import CardError, ReaderPort, hex_transcript

transcript_exchanges_max = 64
transaction_mac_key_option_aes = 0x02  # TMKeyOption of CreateTransactionMACFile
# Command bytes after the code in one frame. An ISO-wrapped short APDU carries 255; the PC/SC
# reader's ISO 14443-4 layer chains blocks below us. Set 59 to chain at DESFire's native frame
# size with `AF` frames instead (the card accepts both).
command_frame_data_bytes_max = 255
response_bytes_max = 4096  # the longest answer we collect over AF frames
# A card asking for frame after frame without sending data would otherwise keep a terminal in
# this loop for ever; no answer of ours needs more frames than this.
response_frames_max = response_bytes_max // 16
_write_commands = {0x3D, 0x3B, 0x0C, 0xDC, 0x1C}


class DesfireError(CardError):
    """The card refused a command (`status`), or its answer failed a MAC/CRC/format check
    (`status` is None)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        command_code: int,
        reader_name: str,
        card_uid: bytes | None,
        transcript: tuple[tuple[str, str], ...],
    ) -> None:
        self.status = status
        self.command_code = command_code
        super().__init__(message, reader_name=reader_name, card_uid=card_uid, transcript=transcript)


@dataclass(frozen=True, slots=True)
class CardVersion:
    hardware: bytes  # vendor, type, subtype, major, minor, storage, protocol
    software: bytes
    uid: bytes
    batch: bytes
    production_week: int
    production_year: int

    @property
    def is_ev2_or_later(self) -> bool:
        return self.hardware[3] >= 0x12


@dataclass(frozen=True, slots=True)
class FileSettings:
    file_type: FileType
    comm_mode: CommMode
    access: AccessRights
    size: int | None = None  # data files
    lower_limit: int | None = None  # value files
    upper_limit: int | None = None
    limited_credit_value: int | None = None
    limited_credit_enabled: bool | None = None
    free_get_value: bool | None = None
    record_size: int | None = None  # record files
    records_max: int | None = None
    records_current: int | None = None
    transaction_mac_key_version: int | None = None  # the Transaction MAC file


@dataclass(frozen=True, slots=True)
class TransactionMac:
    """The card's Transaction MAC of its last committed transaction (`reference/desfire.md` §5):
    what `CommitTransaction` with option 0x01 answers and what the TransactionMAC file holds,
    TMC (4 bytes, LE) ‖ TMV (8 bytes). The counter counts the transactions the card MACed."""

    counter: int
    value: bytes

    wire_bytes: ClassVar[int] = 12

    def __post_init__(self) -> None:
        assert 0 <= self.counter <= 0xFFFFFFFF
        assert len(self.value) == 8

    def to_bytes(self) -> bytes:
        return self.counter.to_bytes(4, "little") + self.value

    @classmethod
    def from_bytes(cls, raw: bytes) -> TransactionMac:
        assert len(raw) == cls.wire_bytes
        return cls(int.from_bytes(raw[:4], "little"), raw[4:])


@dataclass(slots=True)
class Authentication:
    key_number: int
    ev2: crypto.Ev2Session | None = None
    ev1: crypto.Ev1Session | None = None


class Desfire:
    """A DESFire card behind a reader. Not thread-safe; one card session at a time."""

    def __init__(
        self,
        reader: ReaderPort,
        *,
        framing: Framing = Framing.ISO_WRAPPED,
        frame_data_bytes_max: int = command_frame_data_bytes_max,
        random_bytes: Callable[[int], bytes] = os.urandom,
        card_uid: bytes | None = None,
    ) -> None:
        assert 48 <= frame_data_bytes_max <= 255
        self.reader = reader
        self.framing = framing
        self.frame_data_bytes_max = frame_data_bytes_max
        self.random_bytes = random_bytes
        self.card_uid = card_uid
        self.authentication: Authentication | None = None
        # the recent exchanges, raw
        self.transcript: deque[tuple[bytes, bytes]] = deque(maxlen=transcript_exchanges_max)

    # ------------------------------------------------------------------ exchanges

    def _error(self, message: str, command_code: int, status: int | None = None) -> DesfireError:
        self.authentication = None
        return DesfireError(
            message,
            status=status,
            command_code=command_code,
            reader_name=self.reader.name,
            card_uid=self.card_uid,
            transcript=self.transcript_hex(),
        )

    def transcript_hex(self) -> tuple[tuple[str, str], ...]:
        return hex_transcript(self.transcript)

    def exchange(self, code: int, data: bytes = b"") -> tuple[int, bytes]:
        """One frame out, one frame back: (status, data)."""
        command = wrap_command(code, data, self.framing)
        try:
            response = self.reader.transmit(command)
        except CardError as error:
            self.authentication = None
            transcript = self.transcript_hex() + (error.transcript or ())
            raise CardError(
                error.message,
                reader_name=self.reader.name,
                card_uid=self.card_uid,
                transcript=transcript,
            ) from error
        self.transcript.append((command, response))
        try:
            frame = unwrap_response(response, self.framing)
        except ApduFormatError as error:
            raise self._error(f"malformed answer: {error}", code) from error
        return frame.code, frame.data

    def _transceive(self, code: int, payload: bytes) -> tuple[int, bytes]:
        """Send a command over as many AF frames as it needs; collect every answer frame."""
        # Only writes are chained: the card knows their length from the header. Every other
        # command fits one frame (the longest, ChangeKey under EV2, is 41 bytes).
        frame_bytes_max = self.frame_data_bytes_max if code in (0x3D, 0x3B) else len(payload)
        frames = split_frames(payload, max(frame_bytes_max, 1), max(self.frame_data_bytes_max, 1))
        status, data = self.exchange(code, frames[0])
        for frame in frames[1:]:
            if status != Status.ADDITIONAL_FRAME or data:
                raise self._error(
                    f"{status_name(status)} before the last command frame", code, status
                )
            status, data = self.exchange(additional_frame_code, frame)
        collected = bytearray(data)
        answer_frames = 1
        while status == Status.ADDITIONAL_FRAME:
            if len(collected) > response_bytes_max or answer_frames >= response_frames_max:
                raise self._error(
                    f"answer of {answer_frames} frames, {len(collected)} bytes: longer than we take",
                    code,
                )
            status, data = self.exchange(additional_frame_code)
            collected += data
            answer_frames += 1
        return status, bytes(collected)

    def command(
        self,
        code: int,
        header: bytes = b"",
        data: bytes = b"",
        *,
        command_mode: CommMode = CommMode.MAC,
        response_mode: CommMode = CommMode.MAC,
        response_bytes: int | None = None,
    ) -> bytes:
        """Run one command under the current secure messaging; return the plain answer data.
        Modes are as EV2 defines them (MAC for commands that carry no file data); under EV1 the
        same rules map to CMAC chaining and enciphering with CRC32. `response_bytes`, when known,
        locates the CRC of an EV1 enciphered answer exactly."""
        payload = self._protect(code, header, data, command_mode)
        status, answer = self._transceive(code, payload)
        if status != Status.OPERATION_OK:
            raise self._error(f"command {code:02X} refused: {status_name(status)}", code, status)
        try:
            return self._unprotect(answer, response_mode, response_bytes)
        except crypto.IntegrityError as error:
            raise self._error(f"command {code:02X}: answer {error}", code) from error

    def _protect(self, code: int, header: bytes, data: bytes, mode: CommMode) -> bytes:
        session = self.authentication
        if session is None:
            return header + data
        if session.ev2 is not None:
            ev2 = session.ev2
            if mode is CommMode.PLAIN:
                return header + data
            body = header + (ev2.encrypt_command(data) if mode is CommMode.FULL and data else data)
            return body + ev2.command_mac(code, body)
        assert session.ev1 is not None
        ev1 = session.ev1
        message = bytes((code,)) + header + data
        if code in _write_commands and mode is CommMode.MAC:
            return header + data + ev1.mac(message)[: crypto.mac_bytes]
        if mode is CommMode.FULL and data:
            return header + ev1.encrypt_with_crc(data, message)
        ev1.mac(message)
        return header + data

    def _unprotect(self, answer: bytes, mode: CommMode, data_bytes: int | None = None) -> bytes:
        session = self.authentication
        if session is None:
            return answer
        if session.ev2 is not None:
            ev2 = session.ev2
            if mode is CommMode.PLAIN:
                ev2.advance()
                return answer
            if len(answer) < crypto.mac_bytes:
                raise crypto.IntegrityError("has no MAC")
            body, mac = answer[: -crypto.mac_bytes], answer[-crypto.mac_bytes :]
            if not hmac.compare_digest(ev2.response_mac(Status.OPERATION_OK, body), mac):
                raise crypto.IntegrityError("MAC does not verify")
            plain = ev2.decrypt_response(body) if mode is CommMode.FULL and body else body
            ev2.advance()
            return plain
        assert session.ev1 is not None
        ev1 = session.ev1
        if mode is CommMode.FULL and len(answer) >= crypto.block_bytes:
            return ev1.decrypt_with_crc(answer, b"", b"\x00", data_bytes)
        if len(answer) < crypto.mac_bytes:
            raise crypto.IntegrityError("has no CMAC")
        body, mac = answer[: -crypto.mac_bytes], answer[-crypto.mac_bytes :]
        if not hmac.compare_digest(ev1.mac(body + b"\x00")[: crypto.mac_bytes], mac):
            raise crypto.IntegrityError("CMAC does not verify")
        return body

    # ------------------------------------------------------------------ authentication

    def _authenticate(self, code: int, key_number: int, key: bytes) -> tuple[bytes, bytes, bytes]:
        """The three passes; returns (RndA, RndB, decrypted last answer). The caller sets up the
        new session (NonFirst keeps TI and CmdCtr of the one it read before calling)."""
        assert len(key) == crypto.key_bytes
        self.authentication = None
        first = bytes((key_number,)) + (b"\x00" if code == 0x71 else b"")
        status, random_b_cipher = self.exchange(code, first)
        if status != Status.ADDITIONAL_FRAME or len(random_b_cipher) != 16:
            raise self._error(f"authentication refused: {status_name(status)}", code, status)
        random_b = crypto.aes_cbc_decrypt(key, crypto.zero_block, random_b_cipher)
        random_a = self.random_bytes(16)
        iv = random_b_cipher if code == 0xAA else crypto.zero_block
        token = crypto.aes_cbc_encrypt(key, iv, random_a + crypto.rotate_left(random_b))
        status, answer = self.exchange(additional_frame_code, token)
        expected_bytes = 32 if code == 0x71 else 16
        if status != Status.OPERATION_OK or len(answer) != expected_bytes:
            raise self._error(f"authentication failed: {status_name(status)}", code, status)
        iv = token[-16:] if code == 0xAA else crypto.zero_block
        plain = crypto.aes_cbc_decrypt(key, iv, answer)
        rotated_a = plain[4:20] if code == 0x71 else plain
        if not hmac.compare_digest(rotated_a, crypto.rotate_left(random_a)):
            raise self._error("card did not prove the key (RndA' mismatch)", code)
        return random_a, random_b, plain

    def authenticate_ev2_first(self, key_number: int, key: bytes) -> None:
        random_a, random_b, plain = self._authenticate(0x71, key_number, key)
        encryption_key, mac_key = crypto.ev2_session_keys(key, random_a, random_b)
        session = crypto.Ev2Session(encryption_key, mac_key, plain[:4])
        self.authentication = Authentication(key_number, ev2=session)

    def authenticate_ev2_non_first(self, key_number: int, key: bytes) -> None:
        previous = self.authentication
        assert previous is not None and previous.ev2 is not None, "NonFirst needs an EV2 session"
        random_a, random_b, _ = self._authenticate(0x77, key_number, key)
        encryption_key, mac_key = crypto.ev2_session_keys(key, random_a, random_b)
        session = crypto.Ev2Session(
            encryption_key,
            mac_key,
            previous.ev2.transaction_identifier,
            previous.ev2.command_counter,
        )
        self.authentication = Authentication(key_number, ev2=session)

    def authenticate_aes(self, key_number: int, key: bytes) -> None:
        """EV1 AuthenticateAES (0xAA)."""
        random_a, random_b, _ = self._authenticate(0xAA, key_number, key)
        session_key = crypto.ev1_session_key(random_a, random_b)
        self.authentication = Authentication(key_number, ev1=crypto.Ev1Session(session_key))

    # ------------------------------------------------------------------ PICC and applications

    def select_application(self, aid: int) -> None:
        assert 0 <= aid <= 0xFFFFFF
        self.authentication = None
        status, _ = self.exchange(0x5A, aid.to_bytes(3, "little"))
        if status != Status.OPERATION_OK:
            raise self._error(f"select {aid:06X}: {status_name(status)}", 0x5A, status)

    def get_version(self) -> CardVersion:
        data = self.command(0x60)
        if len(data) != 28:
            raise self._error(f"GetVersion answered {len(data)} bytes, expected 28", 0x60)
        return CardVersion(data[0:7], data[7:14], data[14:21], data[21:26], data[26], data[27])

    def get_card_uid(self) -> bytes:
        assert self.authentication is not None, "GetCardUID needs authentication"
        uid = self.command(0x51, response_mode=CommMode.FULL)
        if len(uid) not in (4, 7, 10):
            raise self._error(f"GetCardUID answered {len(uid)} bytes", 0x51)
        return uid

    def get_application_ids(self) -> list[int]:
        data = self.command(0x6A)
        return [int.from_bytes(data[i : i + 3], "little") for i in range(0, len(data), 3)]

    def get_file_ids(self) -> list[int]:
        return list(self.command(0x6F))

    def create_application(self, aid: int, key_settings: int, key_count: int) -> None:
        assert 1 <= key_count <= 14
        header = aid.to_bytes(3, "little") + bytes((key_settings, 0x80 | key_count))
        self.command(0xCA, header)

    def format_picc(self) -> None:
        self.command(0xFC)

    def get_key_version(self, key_number: int) -> int:
        data = self.command(0x64, bytes((key_number,)))
        if len(data) != 1:
            raise self._error(f"GetKeyVersion answered {len(data)} bytes", 0x64)
        return data[0]

    def get_key_settings(self) -> int:
        """The selected application's key settings (GetKeySettings; the key count is dropped)."""
        data = self.command(0x45, b"")
        if len(data) != 2:
            raise self._error(f"GetKeySettings answered {len(data)} bytes", 0x45)
        return data[0]

    def change_key_settings(self, key_settings: int) -> None:
        session = self.authentication
        assert session is not None, "ChangeKeySettings needs authentication"
        if session.ev2 is not None:
            self.command(0x54, b"", bytes((key_settings,)), command_mode=CommMode.FULL)
            return
        assert session.ev1 is not None
        payload = session.ev1.encrypt_with_crc(bytes((key_settings,)), bytes((0x54, key_settings)))
        self._finish_raw(0x54, payload)

    def change_key(
        self, key_number: int, new_key: bytes, new_version: int, old_key: bytes | None = None
    ) -> None:
        """ChangeKey. `old_key` is needed unless the key being changed is the one authenticated
        (then the session ends, as on the card). `key_number` may carry PICC key-type bits."""
        session = self.authentication
        assert session is not None, "ChangeKey needs authentication"
        assert len(new_key) == crypto.key_bytes
        same_key = key_number & 0x3F == session.key_number
        if same_key:
            body = new_key + bytes((new_version,))
        else:
            assert old_key is not None, "changing another key needs the old key"
            body = bytes(a ^ b for a, b in zip(new_key, old_key)) + bytes((new_version,))
        header = bytes((key_number,))
        if session.ev2 is not None:
            if not same_key:
                body += crypto.desfire_crc32(new_key)
            if same_key:
                payload = self._protect(0xC4, header, body, CommMode.FULL)
                status, answer = self._transceive(0xC4, payload)
                self._finish_key_change(status, answer)
                return
            self.command(0xC4, header, body, command_mode=CommMode.FULL)
            return
        assert session.ev1 is not None
        plain = body + crypto.desfire_crc32(bytes((0xC4,)) + header + body)
        if not same_key:
            plain += crypto.desfire_crc32(new_key)
        payload = header + session.ev1.encrypt(crypto.pad_zeros(plain))
        if same_key:
            status, answer = self._transceive(0xC4, payload)
            self._finish_key_change(status, answer)
            return
        self._finish_raw(0xC4, payload)

    def _finish_key_change(self, status: int, answer: bytes) -> None:
        """The authenticated key changed: the card answers without MAC and the session ends."""
        self.authentication = None
        if status != Status.OPERATION_OK or answer:
            raise self._error(f"ChangeKey refused: {status_name(status)}", 0xC4, status)

    def _finish_raw(self, code: int, payload: bytes) -> None:
        """Send an already protected EV1 payload; check the CMAC of the answer."""
        status, answer = self._transceive(code, payload)
        if status != Status.OPERATION_OK:
            raise self._error(f"command {code:02X} refused: {status_name(status)}", code, status)
        try:
            self._unprotect(answer, CommMode.MAC)
        except crypto.IntegrityError as error:
            raise self._error(f"command {code:02X}: answer {error}", code) from error

    # ------------------------------------------------------------------ files

    def _create_file(self, code: int, header: bytes) -> None:
        self.command(code, header)

    def create_std_data_file(
        self, file_number: int, comm_mode: CommMode, access: AccessRights, size: int
    ) -> None:
        header = bytes((file_number, comm_mode)) + access.to_bytes() + size.to_bytes(3, "little")
        self._create_file(0xCD, header)

    def create_backup_data_file(
        self, file_number: int, comm_mode: CommMode, access: AccessRights, size: int
    ) -> None:
        header = bytes((file_number, comm_mode)) + access.to_bytes() + size.to_bytes(3, "little")
        self._create_file(0xCB, header)

    def create_value_file(
        self,
        file_number: int,
        comm_mode: CommMode,
        access: AccessRights,
        lower_limit: int,
        upper_limit: int,
        value: int,
        *,
        limited_credit_enabled: bool,
        free_get_value: bool,
    ) -> None:
        options = int(limited_credit_enabled) | int(free_get_value) << 1
        header = (
            bytes((file_number, comm_mode))
            + access.to_bytes()
            + lower_limit.to_bytes(4, "little", signed=True)
            + upper_limit.to_bytes(4, "little", signed=True)
            + value.to_bytes(4, "little", signed=True)
            + bytes((options,))
        )
        self._create_file(0xCC, header)

    def create_cyclic_record_file(
        self,
        file_number: int,
        comm_mode: CommMode,
        access: AccessRights,
        record_size: int,
        records_max: int,
    ) -> None:
        header = (
            bytes((file_number, comm_mode))
            + access.to_bytes()
            + record_size.to_bytes(3, "little")
            + records_max.to_bytes(3, "little")
        )
        self._create_file(0xC0, header)

    def create_transaction_mac_file(
        self,
        file_number: int,
        comm_mode: CommMode,
        access: AccessRights,
        key: bytes,
        key_version: int,
    ) -> None:
        """CreateTransactionMACFile (0xCE): FileNo ‖ FileOption ‖ AccessRights ‖ TMKeyOption (AES)
        in the clear, the key and its version enciphered (PM3's header length 5). Needs an
        authenticated session: the key travels under its session key."""
        assert self.authentication is not None, "the Transaction MAC key travels enciphered"
        assert len(key) == crypto.key_bytes and 0 <= key_version <= 0xFF
        header = (
            bytes((file_number, comm_mode))
            + access.to_bytes()
            + bytes((transaction_mac_key_option_aes,))
        )
        self.command(0xCE, header, key + bytes((key_version,)), command_mode=CommMode.FULL)

    def get_file_settings(self, file_number: int) -> FileSettings:
        data = self.command(0xF5, bytes((file_number,)))
        try:
            file_type, comm_mode = FileType(data[0]), CommMode(data[1] & 0x03)
            access = AccessRights.from_bytes(data[2:4])
            if file_type is FileType.TRANSACTION_MAC and len(data) in (6, 10):
                # TMKeyOption ‖ TMKeyVersion [‖ TMCLimit]
                return FileSettings(
                    file_type, comm_mode, access, transaction_mac_key_version=data[5]
                )
            if file_type in (FileType.STANDARD_DATA, FileType.BACKUP_DATA) and len(data) == 7:
                return FileSettings(file_type, comm_mode, access, size=_u24(data[4:7]))
            if file_type is FileType.VALUE and len(data) == 17:
                return FileSettings(
                    file_type,
                    comm_mode,
                    access,
                    lower_limit=_s32(data[4:8]),
                    upper_limit=_s32(data[8:12]),
                    limited_credit_value=_s32(data[12:16]),
                    limited_credit_enabled=bool(data[16] & 1),
                    free_get_value=bool(data[16] & 2),
                )
            if len(data) == 13:
                return FileSettings(
                    file_type,
                    comm_mode,
                    access,
                    record_size=_u24(data[4:7]),
                    records_max=_u24(data[7:10]),
                    records_current=_u24(data[10:13]),
                )
        except (ValueError, IndexError):
            pass
        raise self._error(f"GetFileSettings answer not understood: {data.hex().upper()}", 0xF5)

    def _file_modes(self, comm_mode: CommMode) -> CommMode:
        """EV2 command protection of reads: MACed unless the file is plain."""
        return CommMode.PLAIN if comm_mode is CommMode.PLAIN else CommMode.MAC

    def read_data(self, file_number: int, offset: int, length: int, comm_mode: CommMode) -> bytes:
        header = bytes((file_number,)) + offset.to_bytes(3, "little") + length.to_bytes(3, "little")
        data = self.command(
            0xBD,
            header,
            command_mode=self._file_modes(comm_mode),
            response_mode=comm_mode,
            response_bytes=length or None,
        )
        if length and len(data) != length:
            raise self._error(f"ReadData answered {len(data)} bytes, asked {length}", 0xBD)
        return data

    def write_data(self, file_number: int, offset: int, data: bytes, comm_mode: CommMode) -> None:
        assert data
        header = (
            bytes((file_number,)) + offset.to_bytes(3, "little") + len(data).to_bytes(3, "little")
        )
        self.command(0x3D, header, data, command_mode=comm_mode, response_mode=comm_mode)

    def write_record(self, file_number: int, offset: int, data: bytes, comm_mode: CommMode) -> None:
        assert data
        header = (
            bytes((file_number,)) + offset.to_bytes(3, "little") + len(data).to_bytes(3, "little")
        )
        self.command(0x3B, header, data, command_mode=comm_mode, response_mode=comm_mode)

    def read_records(
        self,
        file_number: int,
        newest_offset: int,
        count: int,
        comm_mode: CommMode,
        *,
        record_bytes: int | None = None,
    ) -> bytes:
        """Records `newest_offset` .. `newest_offset + count - 1` back from the newest (count 0:
        all), oldest first, concatenated. Give `record_bytes` when known (EV1 full mode)."""
        header = (
            bytes((file_number,))
            + newest_offset.to_bytes(3, "little")
            + count.to_bytes(3, "little")
        )
        return self.command(
            0xBB,
            header,
            command_mode=self._file_modes(comm_mode),
            response_mode=comm_mode,
            response_bytes=count * record_bytes if count and record_bytes else None,
        )

    def get_value(self, file_number: int, comm_mode: CommMode) -> int:
        data = self.command(
            0x6C,
            bytes((file_number,)),
            command_mode=self._file_modes(comm_mode),
            response_mode=comm_mode,
            response_bytes=4,
        )
        if len(data) != 4:
            raise self._error(f"GetValue answered {len(data)} bytes", 0x6C)
        return _s32(data)

    def _change_value(self, code: int, file_number: int, amount: int, comm_mode: CommMode) -> None:
        assert 0 <= amount < 2**31
        self.command(
            code,
            bytes((file_number,)),
            amount.to_bytes(4, "little", signed=True),
            command_mode=comm_mode,
            response_mode=comm_mode,
        )

    def credit(self, file_number: int, amount: int, comm_mode: CommMode) -> None:
        self._change_value(0x0C, file_number, amount, comm_mode)

    def debit(self, file_number: int, amount: int, comm_mode: CommMode) -> None:
        self._change_value(0xDC, file_number, amount, comm_mode)

    def limited_credit(self, file_number: int, amount: int, comm_mode: CommMode) -> None:
        self._change_value(0x1C, file_number, amount, comm_mode)

    def commit_transaction(self, *, transaction_mac: bool = False) -> TransactionMac | None:
        """CommitTransaction. With `transaction_mac` (option 0x01; the application must have a
        TransactionMAC file, or the card refuses and the transaction is lost) the card answers
        the Transaction MAC of what it just committed."""
        if not transaction_mac:
            self.command(0xC7)
            return None
        answer = self.command(0xC7, b"\x01")
        if len(answer) != TransactionMac.wire_bytes:
            raise self._error(f"CommitTransaction answered {len(answer)} bytes, expected 12", 0xC7)
        return TransactionMac.from_bytes(answer)

    def abort_transaction(self) -> None:
        self.command(0xA7)


def _u24(raw: bytes) -> int:
    return int.from_bytes(raw, "little")


def _s32(raw: bytes) -> int:
    return int.from_bytes(raw, "little", signed=True)
