"""The KSH card application on a DESFire EV2 card: its AID, keys, files and layouts, personalisation
of a blank card, and the typed operations a terminal performs (read the state, debit, credit,
block, read the log), each one card transaction committed by one `CommitTransaction`; and the
issuing station's own: personalise, re-key, unblock.

Application `KSH` (AID 0x48534B, bytes 4B 53 48 on the wire), AES, 4 keys:
    key 0 personalisation (application master), key 1 read, key 2 debit, key 3 credit.
    Once written, each key changes only itself (key settings 0xE9): a terminal moves the key it
    authenticated with to the current version after a roll-over (`move_to_current_key`).
Files (every one MACed; R/W/RW/Chg are key numbers, E free, F never):
    1 profile      backup data 32 B   R=E W=0 RW=2 Chg=0   card number, category, status, expiry
    2 purse        value              R=2 W=2 RW=3 Chg=0   0 ≤ balance ≤ Rp 2,000,000,
                                                           limited credit on, free GetValue
    3 trip state   backup data 48 B   R=E W=0 RW=2 Chg=0   opaque bytes owned by the fare core
    4 log          cyclic 24 B × 16   R=E W=3 RW=2 Chg=0   15 newest transactions, own counter
    5 TMAC         transaction MAC    R=E W=F RW=F Chg=0   TMC ‖ TMV of the last transaction
                                                           (RW=F: CommitReaderID disabled)
Why these rights: DESFire names one key per right, and three roles must read. Reading is free,
so a phone can show the card number and history (as on many transit cards); terminals read
inside their authenticated session, where every answer carries the card's MAC, so what they act
on is genuine. The read key proves a card genuine to inspection devices and can change nothing.
Credit (RW on the purse) belongs to the credit key alone; the debit key may Debit and
LimitedCredit (refund of the last transaction's debits), block the card and write trip state.

Trip state: 48 bytes reserved (`trip_state_bytes`), written whole in the debit transaction. The
fare core owns its encoding and hands `bytes` of exactly that length; a fresh card holds zeros.

Log: every committed card transaction appends one record whose counter is one more than the
newest record's. (card number, counter) names the transaction everywhere. The issue record
(counter 0) is written at personalisation, so the log is never empty.

Transaction MAC (file 5, `card_reader.tmac`): the card MACs each transaction it commits with a
per-card key (role `KeyRole.TMAC`, diversified like the others) that only the back office
holds; terminals commit with option 0x01 and carry the card's TMC and TMV in the upload record.
The issue record is the card's first MACed transaction (TMC 1), so after issue TMC = log
counter + 1. Cards issued before file 5 existed have the profile's feature bit clear and are
committed without it (`Profile.transaction_mac`).

A debit tap is 12 exchanges: GET DATA (UID), SelectApplication, AuthenticateEV2First (2),
ReadData profile, GetValue, ReadData trip state, ReadRecords newest, Debit, WriteData trip state,
WriteRecord, CommitTransaction (11 when the trip state is unchanged). Every command after the
authentication carries EV2 secure messaging (CmdCtr + MACt both ways).

Pending top-ups at a validator: only the credit key may Credit, so a validator that applies them
holds the debit and credit roles (`KeyStore.view(KeyRole.DEBIT, KeyRole.CREDIT)`); `credit` then
switches keys with AuthenticateEV2NonFirst and commits the top-up as its own card transaction
(own log record and counter) before the fare is debited in the next one, in the same tap.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from card_reader.apdu import Framing, IsoStatus, Status, get_uid_apdu
from card_reader.desfire import Desfire, DesfireError, TransactionMac
from card_reader.desfire_files import AccessRights, CommMode, free_access, no_access
from card_reader.keys import CardKey, CardKeys, KeyRole, uid_lengths
from card_reader.port import CardError, ReaderPort

ksh_application_id = 0x48534B
application_key_settings = 0x09  # master key changeable, configuration changeable, rest needs key 0
# Once its keys are written: each key changes itself only (ChangeKey right 0xE), so a terminal
# moves a card's key of its own role to the current version at a tap after a roll-over, and
# never needs the personalisation key. Cards issued before keep 0x09 (re-keyed at a desk).
application_key_settings_issued = 0xE9
picc_key_settings = 0x09  # listing and creating applications need the PICC master key
factory_key = bytes(16)

key_numbers = {
    KeyRole.PERSONALISATION: 0,
    KeyRole.READ: 1,
    KeyRole.DEBIT: 2,
    KeyRole.CREDIT: 3,
}

profile_file = 1
purse_file = 2
trip_state_file = 3
log_file = 4
transaction_mac_file = 5

balance_max_rupiah = 2_000_000  # Bank Indonesia cap for unregistered e-money
profile_bytes = 32
trip_state_bytes = 48
log_record_bytes = 24
log_records_max = 16  # cyclic: 15 usable, one spare
log_records_kept = log_records_max - 1
comm_mode = CommMode.MAC

profile_access = AccessRights(read=free_access, write=0, read_write=2, change=0)
purse_access = AccessRights(read=2, write=2, read_write=3, change=0)
trip_state_access = AccessRights(read=free_access, write=0, read_write=2, change=0)
log_access = AccessRights(read=free_access, write=3, read_write=2, change=0)
# Anyone may read the last TMC ‖ TMV; nobody writes it; CommitReaderID disabled (RW = F).
transaction_mac_access = AccessRights(
    read=free_access, write=no_access, read_write=no_access, change=0
)


# ---------------------------------------------------------------------------- layouts


class LayoutError(ValueError):
    """Card data that does not fit its layout: names the field, the bad value and the raw bytes."""

    def __init__(self, layout: str, field_name: str, value: object, raw: bytes, why: str) -> None:
        self.field_name = field_name
        self.value = value
        self.raw = raw
        super().__init__(f"{layout}.{field_name} = {value!r}: {why} (raw {raw.hex().upper()})")


class Encoding(enum.Enum):
    UNSIGNED = "unsigned little-endian"
    DATE = "days since 1970-01-01, unsigned little-endian"
    RESERVED = "zero bytes"


epoch_date = dt.date(1970, 1, 1)
FieldValue = int | dt.date


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    offset: int
    length: int
    encoding: Encoding = Encoding.UNSIGNED
    allowed: frozenset[int] | None = None  # for enumerations


_struct_codes = {1: "B", 2: "H", 4: "I", 8: "Q"}  # unsigned little-endian, by length


@dataclass(frozen=True, slots=True)
class Layout:
    """A table of fields; `decode` and `encode` are the one codec for every card record.

    A layout of plain unsigned fields (and reserved bytes) also gets a `struct` packer, so
    `encode_fields` builds a record in about a microsecond: the back office rebuilds every
    card's log record from its upload to check the card's Transaction MAC."""

    name: str
    size: int
    fields: tuple[Field, ...]
    _packer: struct.Struct | None = field(init=False, repr=False, compare=False)
    _valued: tuple[Field, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        position = 0
        for item in self.fields:
            assert item.offset == position, f"{self.name}.{item.name} leaves a gap or overlaps"
            position += item.length
        assert position == self.size, f"{self.name} fields cover {position} of {self.size} bytes"
        valued = tuple(item for item in self.fields if item.encoding is not Encoding.RESERVED)
        codes = [
            f"{item.length}x"
            if item.encoding is Encoding.RESERVED
            else _struct_codes.get(item.length)
            for item in self.fields
        ]
        plain = all(item.encoding is Encoding.UNSIGNED for item in valued) and all(codes)
        packer = struct.Struct("<" + "".join(str(code) for code in codes)) if plain else None
        object.__setattr__(self, "_packer", packer)
        object.__setattr__(self, "_valued", valued)

    def encode_fields(self, *numbers: int) -> bytes:
        """`encode` with the values in field order (reserved fields left out): the fast path."""
        packer = self._packer
        if packer is not None and all(
            item.allowed is None or number in item.allowed
            for item, number in zip(self._valued, numbers)
        ):
            try:
                return packer.pack(*numbers)
            except struct.error:
                pass  # out of range: `encode` names the field
        return self.encode(dict(zip((item.name for item in self._valued), numbers)))

    def decode(self, raw: bytes) -> dict[str, FieldValue]:
        if len(raw) != self.size:
            raise LayoutError(self.name, "length", len(raw), raw, f"expected {self.size} bytes")
        values: dict[str, FieldValue] = {}
        for item in self.fields:
            chunk = raw[item.offset : item.offset + item.length]
            number = int.from_bytes(chunk, "little")
            if item.encoding is Encoding.RESERVED:
                if number:
                    raise LayoutError(self.name, item.name, chunk.hex(), raw, "must be zero")
                continue
            if item.allowed is not None and number not in item.allowed:
                allowed = sorted(item.allowed)
                raise LayoutError(self.name, item.name, number, raw, f"expected one of {allowed}")
            if item.encoding is Encoding.DATE:
                values[item.name] = epoch_date + dt.timedelta(days=number)
            else:
                values[item.name] = number
        return values

    def encode(self, values: Mapping[str, FieldValue]) -> bytes:
        out = bytearray(self.size)
        for item in self.fields:
            if item.encoding is Encoding.RESERVED:
                continue
            value = values[item.name]
            number = (value - epoch_date).days if isinstance(value, dt.date) else value
            if not 0 <= number < 1 << (8 * item.length):
                raise LayoutError(self.name, item.name, value, bytes(out), "out of range")
            if item.allowed is not None and number not in item.allowed:
                raise LayoutError(self.name, item.name, value, bytes(out), "not an allowed value")
            out[item.offset : item.offset + item.length] = number.to_bytes(item.length, "little")
        return bytes(out)


class RiderCategory(enum.IntEnum):
    """Who the card is for; the tariff prices each (Trans Semarang: concessions at Rp 1,000)."""

    GENERAL = 0
    SCHOOL_STUDENT = 1  # pelajar
    ELDERLY = 2
    DISABLED = 3
    VETERAN = 4
    UNIVERSITY_STUDENT = 5  # mahasiswa
    SANTRI = 6
    TODDLER = 7
    KIA_HOLDER = 8  # Kartu Identitas Anak


class CardStatus(enum.IntEnum):
    ACTIVE = 1
    BLOCKED = 2


class RecordKind(enum.IntEnum):
    ISSUE = 1
    DEBIT = 2
    CREDIT = 3
    BLOCK = 4


profile_format_version = 1
profile_feature_transaction_mac = 0x01  # the application has the TransactionMAC file

profile_layout = Layout(
    "profile",
    profile_bytes,
    (
        Field("format_version", 0, 1, allowed=frozenset({profile_format_version})),
        Field("card_number", 1, 8),
        Field("rider_category", 9, 1, allowed=frozenset(RiderCategory)),
        Field("registered", 10, 1, allowed=frozenset({0, 1})),
        Field("status", 11, 1, allowed=frozenset(CardStatus)),
        Field("expiry_date", 12, 2, Encoding.DATE),
        Field("issue_date", 14, 2, Encoding.DATE),
        # Bit flags (older cards: a reserved zero byte). Unknown bits are ignored, so a later
        # feature does not make older terminals refuse the card.
        Field("features", 16, 1),
        Field("reserved", 17, 15, Encoding.RESERVED),
    ),
)

log_record_layout = Layout(
    "log record",
    log_record_bytes,
    (
        Field("counter", 0, 4),
        Field("kind", 4, 1, allowed=frozenset(RecordKind)),
        Field("amount_rupiah", 5, 4),
        Field("balance_after_rupiah", 9, 4),
        Field("terminal_id", 13, 4),
        Field("time_unix_seconds", 17, 4),
        Field("reserved", 21, 3, Encoding.RESERVED),
    ),
)


@dataclass(frozen=True, slots=True)
class Profile:
    card_number: int
    rider_category: RiderCategory
    registered: bool
    status: CardStatus
    expiry_date: dt.date
    issue_date: dt.date
    transaction_mac: bool = True  # the card has file 5 and MACs its transactions

    def to_bytes(self) -> bytes:
        return profile_layout.encode(
            {
                "format_version": profile_format_version,
                "card_number": self.card_number,
                "rider_category": int(self.rider_category),
                "registered": int(self.registered),
                "status": int(self.status),
                "expiry_date": self.expiry_date,
                "issue_date": self.issue_date,
                "features": profile_feature_transaction_mac if self.transaction_mac else 0,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> Profile:
        values = profile_layout.decode(raw)
        return cls(
            card_number=_int(values["card_number"]),
            rider_category=RiderCategory(_int(values["rider_category"])),
            registered=bool(values["registered"]),
            status=CardStatus(_int(values["status"])),
            expiry_date=_date(values["expiry_date"]),
            issue_date=_date(values["issue_date"]),
            transaction_mac=bool(_int(values["features"]) & profile_feature_transaction_mac),
        )


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One committed card transaction, as the card's own log keeps it."""

    counter: int
    kind: RecordKind
    amount_rupiah: int
    balance_after_rupiah: int
    terminal_id: int
    time_unix_seconds: int

    def to_bytes(self) -> bytes:
        return log_record_layout.encode_fields(
            self.counter,
            self.kind,
            self.amount_rupiah,
            self.balance_after_rupiah,
            self.terminal_id,
            self.time_unix_seconds,
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> LogRecord:
        values = log_record_layout.decode(raw)
        return cls(
            counter=_int(values["counter"]),
            kind=RecordKind(_int(values["kind"])),
            amount_rupiah=_int(values["amount_rupiah"]),
            balance_after_rupiah=_int(values["balance_after_rupiah"]),
            terminal_id=_int(values["terminal_id"]),
            time_unix_seconds=_int(values["time_unix_seconds"]),
        )


class PurseOperation(enum.IntEnum):
    """The DESFire value command a card transaction sends to the purse."""

    CREDIT = 0x0C
    DEBIT = 0xDC


def purse_operation(record: LogRecord) -> PurseOperation | None:
    """What a card transaction does to the purse, from its log record: a debit of its amount, a
    credit of its amount, or nothing (a free transfer debits 0 and sends no Debit; issue and
    block leave the purse alone). `KshCard.perform` sends it; `card_reader.tmac` rebuilds it."""
    return purse_operation_of(record.kind, record.amount_rupiah)


def purse_operation_of(kind: RecordKind, amount_rupiah: int) -> PurseOperation | None:
    """`purse_operation` from a log record's kind and amount."""
    if kind is RecordKind.DEBIT and amount_rupiah:
        return PurseOperation.DEBIT
    if kind is RecordKind.CREDIT:
        return PurseOperation.CREDIT
    return None


def _int(value: FieldValue) -> int:
    assert isinstance(value, int)
    return value


def _date(value: FieldValue) -> dt.date:
    assert isinstance(value, dt.date)
    return value


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class CardState:
    """Everything a terminal needs from one tap, read in one authenticated session."""

    uid: bytes
    key_version: int
    profile: Profile
    balance_rupiah: int
    trip_state: bytes
    last_record: LogRecord
    # The card's Transaction MAC of the transaction that produced this state (`perform`); None
    # when the state was read, or the card has no TransactionMAC file. Not part of the state
    # itself: a state read back from the card equals the one `perform` returned.
    transaction_mac: TransactionMac | None = field(default=None, compare=False)

    @property
    def counter(self) -> int:
        return self.last_record.counter


class Refusal(enum.Enum):
    """Business outcomes that stop a transaction before anything is sent to the card."""

    CARD_BLOCKED = "card_blocked"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    BALANCE_CAP_EXCEEDED = "balance_cap_exceeded"
    ALREADY_BLOCKED = "already_blocked"
    ROLE_NOT_HELD = "role_not_held"


@dataclass(frozen=True, slots=True)
class CardPlan:
    """A card transaction prepared and checked, not yet sent: journal `record` before `perform`."""

    uid: bytes
    card_number: int
    record: LogRecord
    role: KeyRole
    trip_state: bytes | None = None
    profile: Profile | None = None


class InDoubtOutcome(enum.Enum):
    COMMITTED = "committed"
    NOT_COMMITTED = "not_committed"
    UNKNOWN = "unknown"  # the record is older than the log keeps


def settle_in_doubt(log: Sequence[LogRecord], intended: LogRecord) -> InDoubtOutcome:
    """Did a transaction whose commit answer was lost take effect? Decide from the card's log."""
    for record in log:
        if record.counter == intended.counter:
            return InDoubtOutcome.COMMITTED if record == intended else InDoubtOutcome.NOT_COMMITTED
    if not log or intended.counter > max(record.counter for record in log):
        return InDoubtOutcome.NOT_COMMITTED
    return InDoubtOutcome.UNKNOWN


class KshCardError(CardError):
    """The card is not a usable KSH card: no KSH application, a key version this terminal does
    not accept, or data that does not fit the layouts."""


# ---------------------------------------------------------------------------- the application


def read_uid(reader: ReaderPort) -> bytes:
    """The anticollision UID through PC/SC Part 3 GET DATA."""
    response = reader.transmit(get_uid_apdu)
    uid, status = response[:-2], response[-2:]
    # Anything but 4, 7 or 10 bytes (a phone, a foreign card) is refused here, as a card error,
    # rather than trip the diversification's own check.
    if status != IsoStatus.SUCCESS.to_bytes(2, "big") or len(uid) not in uid_lengths:
        raise CardError(
            "the reader did not give a card UID of 4, 7 or 10 bytes",
            reader_name=reader.name,
            transcript=((get_uid_apdu.hex().upper(), response.hex().upper()),),
        )
    return uid


class KshCard:
    """One tap of one card. `read_state` opens the session (select, authenticate with this
    terminal's role key, read everything); the operations then run in that session, each ending
    with its own CommitTransaction. A CardError from any of them means the card went away or
    misbehaved: whatever was not committed is gone; if the commit's answer was lost, the next tap
    settles it from the log (`settle_in_doubt`)."""

    def __init__(
        self,
        reader: ReaderPort,
        keys: CardKeys,
        *,
        framing: Framing = Framing.ISO_WRAPPED,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.reader = reader
        self.keys = keys
        self.desfire = Desfire(reader, framing=framing, random_bytes=random_bytes)
        self.state: CardState | None = None
        self._role: KeyRole | None = None
        self._key_version = 0

    def _session_role(self) -> KeyRole:
        for role in (KeyRole.DEBIT, KeyRole.CREDIT, KeyRole.READ):
            if role in self.keys.roles:
                return role
        raise AssertionError("KshCard needs a read, debit or credit key")

    def _fail(self, message: str, uid: bytes | None) -> KshCardError:
        return KshCardError(
            message,
            reader_name=self.reader.name,
            card_uid=uid,
            transcript=self.desfire.transcript_hex(),
        )

    def authenticate(self, role: KeyRole, uid: bytes, *, first: bool) -> int:
        """Authenticate with the role key, trying the current version, then the card's own version
        if the terminal still accepts it. Returns the version used."""
        key_number = key_numbers[role]
        card_key = self.keys.card_key(role, uid, ksh_application_id)
        authenticate_ev2 = (
            self.desfire.authenticate_ev2_first
            if first
            else self.desfire.authenticate_ev2_non_first
        )
        try:
            authenticate_ev2(key_number, card_key.key)
            return card_key.version
        except DesfireError as error:
            if error.status != Status.AUTHENTICATION_ERROR:
                raise
        # The card ended the session; ask which version it carries (GetKeyVersion is free).
        card_version = self.desfire.get_key_version(key_number)
        if card_version == card_key.version:
            raise self._fail(
                f"the card's {role.value} key (version {card_version}) does not match ours: "
                "a card of another issuer, or a forged one",
                uid,
            )
        if card_version not in self.keys.accepted_versions(role):
            raise self._fail(
                f"{role.value} key version {card_version} on the card is not accepted here", uid
            )
        older: CardKey = self.keys.card_key(role, uid, ksh_application_id, card_version)
        self.desfire.authenticate_ev2_first(key_number, older.key)
        return older.version

    def read_state(self) -> CardState:
        uid = read_uid(self.reader)
        self.desfire.card_uid = uid
        try:
            self.desfire.select_application(ksh_application_id)
        except DesfireError as error:
            if error.status == Status.APPLICATION_NOT_FOUND:
                raise self._fail("not a KSH card (no KSH application)", uid) from error
            raise
        role = self._session_role()
        self._key_version = self.authenticate(role, uid, first=True)
        self._role = role
        desfire = self.desfire
        try:
            profile = Profile.from_bytes(
                desfire.read_data(profile_file, 0, profile_bytes, comm_mode)
            )
            balance = desfire.get_value(purse_file, comm_mode)
            trip_state = desfire.read_data(trip_state_file, 0, trip_state_bytes, comm_mode)
            newest = desfire.read_records(log_file, 0, 1, comm_mode, record_bytes=log_record_bytes)
            last_record = LogRecord.from_bytes(newest)
        except LayoutError as error:
            raise self._fail(f"card data does not fit the KSH layout: {error}", uid) from error
        self.state = CardState(uid, self._key_version, profile, balance, trip_state, last_record)
        return self.state

    def read_log(self) -> tuple[LogRecord, ...]:
        """Every record the card keeps, oldest first (for settling in-doubt transactions)."""
        assert self.state is not None, "read_state first"
        raw = self.desfire.read_records(log_file, 0, 0, comm_mode)
        if len(raw) % log_record_bytes:
            raise self._fail(f"log answer of {len(raw)} bytes", self.state.uid)
        try:
            return tuple(
                LogRecord.from_bytes(raw[i : i + log_record_bytes])
                for i in range(0, len(raw), log_record_bytes)
            )
        except LayoutError as error:
            raise self._fail(
                f"log record does not fit the layout: {error}", self.state.uid
            ) from error

    def read_transaction_mac(self) -> TransactionMac | None:
        """The card's Transaction MAC of its last committed transaction (file 5: TMC ‖ TMV), read
        in the session; None for a card without the file. What proves a transaction whose
        commit answer was lost when no later transaction of the card will."""
        state = self.state
        assert state is not None, "read_state first"
        if not state.profile.transaction_mac:
            return None
        raw = self.desfire.read_data(transaction_mac_file, 0, TransactionMac.wire_bytes, comm_mode)
        return TransactionMac.from_bytes(raw)

    # ------------------------------------------------------------------ planning (no I/O)

    def _next_record(
        self,
        kind: RecordKind,
        amount: int,
        balance_after: int,
        terminal_id: int,
        time_unix_seconds: int,
    ) -> LogRecord:
        assert self.state is not None, "read_state first"
        return LogRecord(
            self.state.counter + 1, kind, amount, balance_after, terminal_id, time_unix_seconds
        )

    def plan_debit(
        self, amount_rupiah: int, trip_state: bytes, *, terminal_id: int, time_unix_seconds: int
    ) -> CardPlan | Refusal:
        state = self.state
        assert state is not None, "read_state first"
        assert amount_rupiah >= 0
        assert len(trip_state) == trip_state_bytes, f"trip state must be {trip_state_bytes} bytes"
        if KeyRole.DEBIT not in self.keys.roles:
            return Refusal.ROLE_NOT_HELD
        if state.profile.status is CardStatus.BLOCKED:
            return Refusal.CARD_BLOCKED
        if amount_rupiah > state.balance_rupiah:
            return Refusal.INSUFFICIENT_BALANCE
        balance_after = state.balance_rupiah - amount_rupiah
        record = self._next_record(
            RecordKind.DEBIT, amount_rupiah, balance_after, terminal_id, time_unix_seconds
        )
        return CardPlan(
            state.uid, state.profile.card_number, record, KeyRole.DEBIT, trip_state=trip_state
        )

    def plan_credit(
        self, amount_rupiah: int, *, terminal_id: int, time_unix_seconds: int
    ) -> CardPlan | Refusal:
        state = self.state
        assert state is not None, "read_state first"
        assert amount_rupiah > 0
        if KeyRole.CREDIT not in self.keys.roles:
            return Refusal.ROLE_NOT_HELD
        if state.profile.status is CardStatus.BLOCKED:
            return Refusal.CARD_BLOCKED
        balance_after = state.balance_rupiah + amount_rupiah
        if balance_after > balance_max_rupiah:
            return Refusal.BALANCE_CAP_EXCEEDED
        record = self._next_record(
            RecordKind.CREDIT, amount_rupiah, balance_after, terminal_id, time_unix_seconds
        )
        return CardPlan(state.uid, state.profile.card_number, record, KeyRole.CREDIT)

    def plan_block(self, *, terminal_id: int, time_unix_seconds: int) -> CardPlan | Refusal:
        state = self.state
        assert state is not None, "read_state first"
        if KeyRole.DEBIT not in self.keys.roles:
            return Refusal.ROLE_NOT_HELD
        if state.profile.status is CardStatus.BLOCKED:
            return Refusal.ALREADY_BLOCKED
        record = self._next_record(
            RecordKind.BLOCK, 0, state.balance_rupiah, terminal_id, time_unix_seconds
        )
        profile = replace(state.profile, status=CardStatus.BLOCKED)
        return CardPlan(
            state.uid, state.profile.card_number, record, KeyRole.DEBIT, profile=profile
        )

    # ------------------------------------------------------------------ performing

    def perform(self, plan: CardPlan) -> CardState:
        """Send a plan as one card transaction and commit it. Returns the card's new state."""
        state = self.state
        assert state is not None, "read_state first"
        assert plan.uid == state.uid, "the plan is for another card"
        assert plan.record.counter == state.counter + 1, "the plan is stale: plan again"
        if self._role is not plan.role:
            assert self._role is not None
            self._key_version = self.authenticate(plan.role, state.uid, first=False)
            self._role = plan.role
        desfire = self.desfire
        record = plan.record
        operation = purse_operation(record)
        if operation is PurseOperation.DEBIT:
            desfire.debit(purse_file, record.amount_rupiah, comm_mode)
        elif operation is PurseOperation.CREDIT:
            desfire.credit(purse_file, record.amount_rupiah, comm_mode)
        if plan.trip_state is not None and plan.trip_state != state.trip_state:
            desfire.write_data(trip_state_file, 0, plan.trip_state, comm_mode)
        if plan.profile is not None:
            desfire.write_data(profile_file, 0, plan.profile.to_bytes(), comm_mode)
        desfire.write_record(log_file, 0, record.to_bytes(), comm_mode)
        transaction_mac = desfire.commit_transaction(transaction_mac=state.profile.transaction_mac)
        self.state = CardState(
            state.uid,
            self._key_version,
            plan.profile or state.profile,
            record.balance_after_rupiah,
            plan.trip_state if plan.trip_state is not None else state.trip_state,
            record,
            transaction_mac,
        )
        return self.state

    def debit(
        self, amount_rupiah: int, trip_state: bytes, *, terminal_id: int, time_unix_seconds: int
    ) -> CardState | Refusal:
        """Debit the purse, write the trip state and the log record, commit: one transaction."""
        plan = self.plan_debit(
            amount_rupiah, trip_state, terminal_id=terminal_id, time_unix_seconds=time_unix_seconds
        )
        return plan if isinstance(plan, Refusal) else self.perform(plan)

    def credit(
        self, amount_rupiah: int, *, terminal_id: int, time_unix_seconds: int
    ) -> CardState | Refusal:
        """Top up: credit the purse and write the log record, commit: one transaction."""
        plan = self.plan_credit(
            amount_rupiah, terminal_id=terminal_id, time_unix_seconds=time_unix_seconds
        )
        return plan if isinstance(plan, Refusal) else self.perform(plan)

    def move_to_current_key(self) -> int | None:
        """After a tap's last commit: if the card authenticated with an older version of this
        session's key than the terminal's current one, change that key to the current version
        (ChangeKey of the authenticated key; it ends the session). So after a roll-over each
        card moves at its next tap. A card issued before keys could change themselves refuses
        (`91 9D`): it moves at a desk (`rekey`). Returns the new version, or None."""
        role, state = self._role, self.state
        if role is None or state is None or role not in key_numbers:
            return None
        if self._key_version == self.keys.current_versions[role]:
            return None
        new = self.keys.card_key(role, state.uid, ksh_application_id)
        self._role = None  # whatever the answer, the session is over
        try:
            self.desfire.change_key(key_numbers[role], new.key, new.version)
        except DesfireError as error:
            if error.status == Status.PERMISSION_DENIED:
                return None
            raise
        self._key_version = new.version
        return new.version

    def block(self, *, terminal_id: int, time_unix_seconds: int) -> CardState | Refusal:
        plan = self.plan_block(terminal_id=terminal_id, time_unix_seconds=time_unix_seconds)
        return plan if isinstance(plan, Refusal) else self.perform(plan)


# ---------------------------------------------------------------------------- personalisation


def personalise(
    reader: ReaderPort,
    keys: CardKeys,
    profile: Profile,
    *,
    initial_balance_rupiah: int = 0,
    terminal_id: int,
    time_unix_seconds: int,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> CardState:
    """Turn a factory-fresh card into a KSH card. `keys` must hold every role (the personalisation
    station loads all of them, the Transaction MAC master too). The PICC master key becomes the
    card's personalisation key, so nobody else can format the card or add applications. The
    TransactionMAC file is created when `profile.transaction_mac` (always, but for tests of
    cards issued before it existed)."""
    assert set(KeyRole) <= keys.roles, "personalisation needs every role's keys"
    assert 0 <= initial_balance_rupiah <= balance_max_rupiah
    uid = read_uid(reader)
    desfire = Desfire(reader, random_bytes=random_bytes, card_uid=uid)
    desfire.select_application(0)
    desfire.authenticate_ev2_first(0, factory_key)
    desfire.create_application(ksh_application_id, application_key_settings, len(key_numbers))
    desfire.select_application(ksh_application_id)
    desfire.authenticate_ev2_first(0, factory_key)
    desfire.create_backup_data_file(profile_file, comm_mode, profile_access, profile_bytes)
    desfire.create_value_file(
        purse_file,
        comm_mode,
        purse_access,
        0,
        balance_max_rupiah,
        initial_balance_rupiah,
        limited_credit_enabled=True,
        free_get_value=True,
    )
    desfire.create_backup_data_file(trip_state_file, comm_mode, trip_state_access, trip_state_bytes)
    desfire.create_cyclic_record_file(
        log_file, comm_mode, log_access, log_record_bytes, log_records_max
    )
    card_keys = {role: keys.card_key(role, uid, ksh_application_id) for role in KeyRole}
    if profile.transaction_mac:
        tmac_key = card_keys[KeyRole.TMAC]
        desfire.create_transaction_mac_file(
            transaction_mac_file, comm_mode, transaction_mac_access, tmac_key.key, tmac_key.version
        )
    desfire.write_data(profile_file, 0, profile.to_bytes(), comm_mode)
    desfire.commit_transaction()  # the profile write is not MACed: TMC stays 0
    for role in (KeyRole.READ, KeyRole.DEBIT, KeyRole.CREDIT):
        card_key = card_keys[role]
        desfire.change_key(key_numbers[role], card_key.key, card_key.version, old_key=factory_key)
    desfire.change_key_settings(application_key_settings_issued)
    personalisation = card_keys[KeyRole.PERSONALISATION]
    desfire.change_key(0, personalisation.key, personalisation.version)  # ends the session
    # The issue record, written with the credit key: it also proves the new keys work.
    credit_key = card_keys[KeyRole.CREDIT]
    desfire.authenticate_ev2_first(key_numbers[KeyRole.CREDIT], credit_key.key)
    issue = LogRecord(
        0,
        RecordKind.ISSUE,
        initial_balance_rupiah,
        initial_balance_rupiah,
        terminal_id,
        time_unix_seconds,
    )
    desfire.write_record(log_file, 0, issue.to_bytes(), comm_mode)
    issue_mac = desfire.commit_transaction(transaction_mac=profile.transaction_mac)  # TMC 1
    # Lock the PICC level: its master key becomes this card's personalisation key.
    picc_key = keys.card_key(KeyRole.PERSONALISATION, uid, 0)
    desfire.select_application(0)
    desfire.authenticate_ev2_first(0, factory_key)
    desfire.change_key_settings(picc_key_settings)
    desfire.change_key(0x80, picc_key.key, picc_key.version)
    return CardState(
        uid,
        credit_key.version,
        profile,
        initial_balance_rupiah,
        bytes(trip_state_bytes),
        issue,
        issue_mac,
    )


def _desk_profile(
    reader: ReaderPort, keys: CardKeys, random_bytes: Callable[[int], bytes]
) -> tuple[Desfire, Profile]:
    """At an issuing station: the card's profile, read under the personalisation key."""
    assert set(KeyRole) <= keys.roles, "the desk's card work needs an issuing station's keys"
    session = KshCard(reader, keys, random_bytes=random_bytes)
    uid = read_uid(reader)
    desfire = session.desfire
    desfire.card_uid = uid
    try:
        desfire.select_application(ksh_application_id)
    except DesfireError as error:
        if error.status == Status.APPLICATION_NOT_FOUND:
            raise session._fail("not a KSH card (no KSH application)", uid) from error
        raise
    session.authenticate(KeyRole.PERSONALISATION, uid, first=True)
    try:
        profile = Profile.from_bytes(desfire.read_data(profile_file, 0, profile_bytes, comm_mode))
    except LayoutError as error:
        raise session._fail(f"card data does not fit the KSH layout: {error}", uid) from error
    return desfire, profile


class DeskCard(NamedTuple):
    """What an issuing station reads of a card before it changes it."""

    profile: Profile
    # The counter of the card's newest transaction: an unblock writes no record, so every
    # transaction the card commits after the unblock has a higher one.
    last_counter: int


def desk_profile(
    reader: ReaderPort,
    keys: CardKeys,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> DeskCard:
    """At an issuing station: the card's profile (its number and status) and its newest
    counter, changing nothing; the desk asks the back office about the card before `unblock`."""
    desfire, profile = _desk_profile(reader, keys, random_bytes)
    try:
        newest = desfire.read_records(log_file, 0, 1, comm_mode, record_bytes=log_record_bytes)
        last = LogRecord.from_bytes(newest)
    except LayoutError as error:
        raise KshCardError(
            f"card data does not fit the KSH layout: {error}",
            reader_name=reader.name,
            card_uid=desfire.card_uid,
        ) from error
    return DeskCard(profile, last.counter)


def unblock(
    reader: ReaderPort,
    keys: CardKeys,
    *,
    card_number: int | None = None,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> Profile | None:
    """At an issuing station (`keys` holds every role): write a blocked card's status back to
    active, under the personalisation key (the profile's write right), which no terminal
    holds. Nothing else changes: no log record, no counter, no Transaction MAC (a profile write
    is not covered), so the card's next transaction follows its block in its log, and that is
    how the back office sees it active again. Returns the profile now on the card, or None
    when the card was not blocked (nothing written). With `card_number`, a card of another
    number (the plastic swapped on the reader since the back office was asked) is refused."""
    desfire, profile = _desk_profile(reader, keys, random_bytes)
    if card_number is not None and profile.card_number != card_number:
        raise KshCardError(
            f"the card on the reader is {profile.card_number}, not {card_number}: nothing written",
            reader_name=reader.name,
            card_uid=desfire.card_uid,
        )
    if profile.status is not CardStatus.BLOCKED:
        return None
    active = replace(profile, status=CardStatus.ACTIVE)
    desfire.write_data(profile_file, 0, active.to_bytes(), comm_mode)
    desfire.commit_transaction()
    return active


def rekey(
    reader: ReaderPort,
    keys: CardKeys,
    *,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> dict[KeyRole, int]:
    """Bring a KSH card's keys to the current versions after a key roll-over (a personalisation
    station: `keys` holds every role). Keys already current are left alone; a key older than the
    previous version cannot be changed here (its old value is no longer held). Returns the
    version of each role's key now on the card."""
    assert set(KeyRole) <= keys.roles, "re-keying needs every role's keys"
    session = KshCard(reader, keys, random_bytes=random_bytes)
    uid = read_uid(reader)
    desfire = session.desfire
    desfire.card_uid = uid
    desfire.select_application(ksh_application_id)
    session.authenticate(KeyRole.PERSONALISATION, uid, first=True)
    # Cards issued with 0xE9 change each key in its own session; older ones (0x09) change
    # keys 1-3 under the application master key.
    each_key_itself = desfire.get_key_settings() >> 4 == free_access
    versions: dict[KeyRole, int] = {}
    # The application master key last: changing it ends the session.
    for role in (KeyRole.READ, KeyRole.DEBIT, KeyRole.CREDIT, KeyRole.PERSONALISATION):
        key_number = key_numbers[role]
        if each_key_itself:  # a session of that key (the last change ended the one before)
            session.authenticate(role, uid, first=True)
        on_card = desfire.get_key_version(key_number)
        current = keys.current_versions[role]
        if on_card != current:
            if on_card not in keys.accepted_versions(role):
                raise session._fail(
                    f"{role.value} key version {on_card} is too old to re-key here", uid
                )
            old = keys.card_key(role, uid, ksh_application_id, on_card)
            new = keys.card_key(role, uid, ksh_application_id)
            if role is KeyRole.PERSONALISATION or each_key_itself:
                desfire.change_key(key_number, new.key, new.version)  # ends the session
            else:
                desfire.change_key(key_number, new.key, new.version, old_key=old.key)
        versions[role] = current
    return versions
