"""APDUs: ISO 7816-4 command/response codec, DESFire status words, the two DESFire framings
(ISO-wrapped with CLA 0x90, and native) and `91 AF` chaining in both directions.

Facts: `reference/desfire.md` §1. A parse error names the field, the bad value and the raw bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

desfire_cla = 0x90
additional_frame_code = 0xAF
short_apdu_data_bytes_max = 255
# The DF name of the DESFire AID (libfreefare SELECTs it by name before anything else).
desfire_df_name = bytes.fromhex("D2760000850100")
# PC/SC Part 3 GET DATA: the reader answers with the card's anticollision UID.
get_uid_apdu = bytes.fromhex("FFCA000000")


class ApduFormatError(ValueError):
    """Bytes that are not a well-formed APDU or DESFire frame."""

    def __init__(self, field_name: str, value: object, raw: bytes, expected: str) -> None:
        self.field_name = field_name
        self.value = value
        self.raw = raw
        super().__init__(
            f"bad {field_name} {value!r}: expected {expected} (raw {raw.hex().upper()})"
        )


class Status(enum.IntEnum):
    """Native DESFire status codes (SW2 after 0x91 in ISO framing)."""

    OPERATION_OK = 0x00
    NO_CHANGES = 0x0C
    OUT_OF_EEPROM_ERROR = 0x0E
    ILLEGAL_COMMAND_CODE = 0x1C
    INTEGRITY_ERROR = 0x1E
    NO_SUCH_KEY = 0x40
    LENGTH_ERROR = 0x7E
    PERMISSION_DENIED = 0x9D
    PARAMETER_ERROR = 0x9E
    APPLICATION_NOT_FOUND = 0xA0
    APPL_INTEGRITY_ERROR = 0xA1
    AUTHENTICATION_ERROR = 0xAE
    ADDITIONAL_FRAME = 0xAF
    BOUNDARY_ERROR = 0xBE
    PICC_INTEGRITY_ERROR = 0xC1
    COMMAND_ABORTED = 0xCA
    PICC_DISABLED_ERROR = 0xCD
    COUNT_ERROR = 0xCE
    DUPLICATE_ERROR = 0xDE
    EEPROM_ERROR = 0xEE
    FILE_NOT_FOUND = 0xF0
    FILE_INTEGRITY_ERROR = 0xF1


status_meanings: dict[Status, str] = {
    Status.OPERATION_OK: "success",
    Status.NO_CHANGES: "no changes done to backup files",
    Status.OUT_OF_EEPROM_ERROR: "insufficient NV memory to complete command",
    Status.ILLEGAL_COMMAND_CODE: "command code not supported",
    Status.INTEGRITY_ERROR: "CRC or MAC does not match data, or padding bytes invalid",
    Status.NO_SUCH_KEY: "invalid key number specified",
    Status.LENGTH_ERROR: "length of command string invalid",
    Status.PERMISSION_DENIED: "current configuration or status does not allow the command",
    Status.PARAMETER_ERROR: "value of the parameter(s) invalid",
    Status.APPLICATION_NOT_FOUND: "requested AID not present on PICC",
    Status.APPL_INTEGRITY_ERROR: "application integrity error",
    Status.AUTHENTICATION_ERROR: "current authentication status does not allow the command",
    Status.ADDITIONAL_FRAME: "additional data frame expected",
    Status.BOUNDARY_ERROR: "attempt to read or write beyond a file's or record's limit",
    Status.PICC_INTEGRITY_ERROR: "PICC integrity error",
    Status.COMMAND_ABORTED: "previous command was not fully completed",
    Status.PICC_DISABLED_ERROR: "PICC was disabled by an unrecoverable error",
    Status.COUNT_ERROR: "application count limited to 28",
    Status.DUPLICATE_ERROR: "file or application already exists",
    Status.EEPROM_ERROR: "EEPROM error due to loss of power",
    Status.FILE_NOT_FOUND: "specified file number does not exist",
    Status.FILE_INTEGRITY_ERROR: "file integrity error",
}


class IsoStatus(enum.IntEnum):
    """ISO 7816-4 status words the card answers outside DESFire's own (wrapper errors: [U])."""

    SUCCESS = 0x9000
    WRONG_LENGTH = 0x6700
    FILE_NOT_FOUND = 0x6A82
    WRONG_PARAMETERS = 0x6B00
    INSTRUCTION_NOT_SUPPORTED = 0x6D00
    CLASS_NOT_SUPPORTED = 0x6E00


def status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return f"UNKNOWN_STATUS_{status:02X}"


@dataclass(frozen=True, slots=True)
class CommandApdu:
    """An ISO 7816-4 short C-APDU (cases 1 to 4)."""

    cla: int
    ins: int
    p1: int
    p2: int
    data: bytes = b""
    le: int | None = None  # None: no Le field; 0 means 256 in short form

    def __post_init__(self) -> None:
        for name in ("cla", "ins", "p1", "p2"):
            assert 0 <= getattr(self, name) <= 0xFF, name
        assert len(self.data) <= short_apdu_data_bytes_max
        assert self.le is None or 0 <= self.le <= 0xFF

    def to_bytes(self) -> bytes:
        header = bytes((self.cla, self.ins, self.p1, self.p2))
        body = bytes((len(self.data),)) + self.data if self.data else b""
        trailer = bytes((self.le,)) if self.le is not None else b""
        return header + body + trailer

    @classmethod
    def parse(cls, raw: bytes) -> CommandApdu:
        if len(raw) < 4:
            raise ApduFormatError("length", len(raw), raw, "at least 4 bytes (CLA INS P1 P2)")
        cla, ins, p1, p2 = raw[:4]
        body = raw[4:]
        if not body:
            return cls(cla, ins, p1, p2)
        if len(body) == 1:
            return cls(cla, ins, p1, p2, le=body[0])
        lc = body[0]
        if lc == 0:
            raise ApduFormatError("Lc", lc, raw, "1..255 (extended APDUs are not supported)")
        if len(body) == 1 + lc:
            return cls(cla, ins, p1, p2, body[1:])
        if len(body) == 2 + lc:
            return cls(cla, ins, p1, p2, body[1:-1], le=body[-1])
        raise ApduFormatError("Lc", lc, raw, f"{len(body) - 1} or {len(body) - 2} (bytes present)")


@dataclass(frozen=True, slots=True)
class ResponseApdu:
    data: bytes
    sw1: int
    sw2: int

    @property
    def sw(self) -> int:
        return (self.sw1 << 8) | self.sw2

    def to_bytes(self) -> bytes:
        return self.data + bytes((self.sw1, self.sw2))

    @classmethod
    def parse(cls, raw: bytes) -> ResponseApdu:
        if len(raw) < 2:
            raise ApduFormatError("length", len(raw), raw, "at least 2 bytes (SW1 SW2)")
        return cls(raw[:-2], raw[-2], raw[-1])


# ---------------------------------------------------------------------------- DESFire framing


class Framing(enum.Enum):
    ISO_WRAPPED = "iso"  # 90 CMD 00 00 [Lc data] 00  ->  data 91 SC
    NATIVE = "native"  # CMD data  ->  SC data


@dataclass(frozen=True, slots=True)
class NativeFrame:
    """One DESFire frame without framing: a command code (or status) and its data."""

    code: int
    data: bytes


def wrap_command(code: int, data: bytes, framing: Framing) -> bytes:
    assert 0 <= code <= 0xFF
    if framing is Framing.NATIVE:
        return bytes((code,)) + data
    return CommandApdu(desfire_cla, code, 0, 0, data, le=0).to_bytes()


def unwrap_response(raw: bytes, framing: Framing) -> NativeFrame:
    """The card's status and data from one R-APDU."""
    if framing is Framing.NATIVE:
        if not raw:
            raise ApduFormatError("length", 0, raw, "at least 1 byte (status)")
        return NativeFrame(raw[0], raw[1:])
    response = ResponseApdu.parse(raw)
    if response.sw1 != 0x91:
        raise ApduFormatError("SW1", f"{response.sw1:02X}", raw, "91 (DESFire status)")
    return NativeFrame(response.sw2, response.data)


def wrap_response(status: int, data: bytes, framing: Framing) -> bytes:
    if framing is Framing.NATIVE:
        return bytes((status,)) + data
    return data + bytes((0x91, status))


def unwrap_command(raw: bytes) -> tuple[NativeFrame, Framing]:
    """A DESFire command in either framing. CLA 0x90 marks ISO wrapping (no native command code is
    0x90); anything else is taken as native. Interindustry APDUs (CLA 00) are not handled here."""
    if not raw:
        raise ApduFormatError("length", 0, raw, "at least 1 byte")
    if raw[0] != desfire_cla:
        return NativeFrame(raw[0], raw[1:]), Framing.NATIVE
    apdu = CommandApdu.parse(raw)
    if apdu.p1 != 0 or apdu.p2 != 0:
        raise ApduFormatError("P1 P2", f"{apdu.p1:02X}{apdu.p2:02X}", raw, "0000")
    return NativeFrame(apdu.ins, apdu.data), Framing.ISO_WRAPPED


def split_frames(data: bytes, first_bytes_max: int, next_bytes_max: int) -> list[bytes]:
    """Cut data into chained frames: the first up to `first_bytes_max`, the rest up to
    `next_bytes_max`. Always at least one (possibly empty) frame."""
    assert first_bytes_max >= 0
    assert next_bytes_max > 0
    frames = [data[:first_bytes_max]]
    rest = data[first_bytes_max:]
    while rest:
        frames.append(rest[:next_bytes_max])
        rest = rest[next_bytes_max:]
    return frames
