"""The software card against a small reference model of one DESFire application: random
commands (with bad MACs, wrong keys, out-of-range values, power loss at any exchange) through
the real reader-side protocol, EV1 and EV2 alike. Invariants: the card's committed state equals
the model's; nothing uncommitted survives power loss; the purse never leaves its limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from card_reader.apdu import Status
from card_reader.desfire import Desfire, DesfireError
from card_reader.desfire_files import AccessRights, CommMode
from card_reader.emulator import EmulatedCard, EmulatedReader, ValueFile
from card_reader.port import CardError

aid = 0x00AE16
rw_key = bytes(range(16))
value_file, backup_file, record_file = 1, 2, 3
lower_limit, upper_limit = 0, 1_000
backup_bytes, record_bytes, records_max = 16, 8, 3
rw_access = AccessRights(1, 1, 1, 0)


@dataclass
class Committed:
    value: int = 100
    backup: bytes = bytes(backup_bytes)
    records: list[bytes] = field(default_factory=list)


class CardModel(RuleBasedStateMachine):
    @initialize(ev2=st.booleans())
    def make_card(self, ev2: bool) -> None:
        self.card = EmulatedCard(bytes.fromhex("04A1B2C3D4E5F6"))
        self.reader = EmulatedReader()
        self.reader.insert(self.card)
        desfire = Desfire(self.reader)
        desfire.authenticate_ev2_first(0, bytes(16))
        desfire.create_application(aid, 0x0F, 2)
        desfire.select_application(aid)
        desfire.authenticate_ev2_first(0, bytes(16))
        desfire.change_key(1, rw_key, 1, old_key=bytes(16))
        desfire.create_value_file(
            value_file,
            CommMode.MAC,
            rw_access,
            lower_limit,
            upper_limit,
            100,
            limited_credit_enabled=False,
            free_get_value=False,
        )
        desfire.create_backup_data_file(backup_file, CommMode.FULL, rw_access, backup_bytes)
        desfire.create_cyclic_record_file(
            record_file, CommMode.MAC, rw_access, record_bytes, records_max
        )
        self.ev2 = ev2
        self.committed = Committed()
        self.staged_value = 100
        self.staged_backup: bytes | None = None
        self.staged_record: bytes | None = None
        self.new_session()

    # ---------------------------------------------------------------- model helpers

    def new_session(self) -> None:
        self.desfire = Desfire(self.reader)
        self.desfire.select_application(aid)
        self.authenticated = False
        self.discard()

    def discard(self) -> None:
        self.staged_value = self.committed.value
        self.staged_backup = None
        self.staged_record = None

    def failed(self) -> None:
        self.authenticated = False
        self.discard()

    def expect(self, action, status: int | None) -> bool:  # type: ignore[no-untyped-def]
        """Run an action; it must succeed (status None) or fail with that status."""
        try:
            action()
        except DesfireError as error:
            assert status is not None, f"unexpected {error}"
            assert error.status == status, (hex(error.status or 0), hex(status))
            self.failed()
            return False
        assert status is None, f"expected status {status:02X}, the card said OK"
        return True

    def not_authenticated_status(self) -> int | None:
        return None if self.authenticated else Status.AUTHENTICATION_ERROR

    # ---------------------------------------------------------------- rules

    @precondition(lambda self: not self.authenticated)
    @rule(correct=st.sampled_from([True, True, True, False]))
    def authenticate(self, correct: bool) -> None:
        key = rw_key if correct else bytes(16)
        action = self.desfire.authenticate_ev2_first if self.ev2 else self.desfire.authenticate_aes
        if self.expect(lambda: action(1, key), None if correct else Status.AUTHENTICATION_ERROR):
            self.authenticated = True
            self.discard()  # a new authentication abandons the transaction

    @rule(amount=st.integers(0, 1_200))
    def credit(self, amount: int) -> None:
        status = self.not_authenticated_status()
        if status is None and self.staged_value + amount > upper_limit:
            status = Status.BOUNDARY_ERROR
        if self.expect(lambda: self.desfire.credit(value_file, amount, CommMode.MAC), status):
            self.staged_value += amount

    @rule(amount=st.integers(0, 1_200))
    def debit(self, amount: int) -> None:
        status = self.not_authenticated_status()
        if status is None and self.staged_value - amount < lower_limit:
            status = Status.BOUNDARY_ERROR
        if self.expect(lambda: self.desfire.debit(value_file, amount, CommMode.MAC), status):
            self.staged_value -= amount

    @rule(offset=st.integers(0, 20), data=st.binary(min_size=1, max_size=20))
    def write_backup(self, offset: int, data: bytes) -> None:
        status = self.not_authenticated_status()
        if status is None and offset + len(data) > backup_bytes:
            status = Status.BOUNDARY_ERROR
        action = lambda: self.desfire.write_data(backup_file, offset, data, CommMode.FULL)  # noqa: E731
        if self.expect(action, status):
            staged = bytearray(self.staged_backup or self.committed.backup)
            staged[offset : offset + len(data)] = data
            self.staged_backup = bytes(staged)

    @rule(data=st.binary(min_size=1, max_size=record_bytes))
    def write_record(self, data: bytes) -> None:
        status = self.not_authenticated_status()
        if self.expect(
            lambda: self.desfire.write_record(record_file, 0, data, CommMode.MAC), status
        ):
            staged = bytearray(self.staged_record or bytes(record_bytes))
            staged[: len(data)] = data
            self.staged_record = bytes(staged)

    @precondition(lambda self: self.authenticated)
    @rule(data=st.binary(min_size=record_bytes, max_size=record_bytes), amount=st.integers(0, 50))
    def log_a_payment(self, data: bytes, amount: int) -> None:
        """The common case, so that long histories (cyclic wrap-around) are reached."""
        self.debit(amount)
        if self.authenticated:
            self.write_record(data)
            self.commit()

    def apply_commit(self) -> None:
        self.committed.value = self.staged_value
        if self.staged_backup is not None:
            self.committed.backup = self.staged_backup
        if self.staged_record is not None:
            self.committed.records = ([*self.committed.records, self.staged_record])[
                -(records_max - 1) :
            ]
        self.discard()

    @rule()
    def commit(self) -> None:
        # Commit and abort need no key (free-access files can stage changes too).
        if self.expect(self.desfire.commit_transaction, None):
            self.apply_commit()

    @rule()
    def abort(self) -> None:
        if self.expect(self.desfire.abort_transaction, None):
            self.discard()

    @precondition(lambda self: self.authenticated)
    @rule(corrupt_byte=st.integers(0, 7))
    def bad_mac(self, corrupt_byte: int) -> None:
        """A Debit whose MAC was altered on the way: 91 1E, and the session is over."""
        session = self.desfire.authentication
        assert session is not None
        payload = bytearray(
            self.desfire._protect(
                0xDC, bytes((value_file,)), (1).to_bytes(4, "little"), CommMode.MAC
            )
        )
        payload[-1 - corrupt_byte] ^= 0x01
        status, _ = self.desfire.exchange(0xDC, bytes(payload))
        assert status == Status.INTEGRITY_ERROR
        self.desfire.authentication = None
        self.failed()
        assert (
            self.expect(
                lambda: self.desfire.debit(value_file, 0, CommMode.MAC), Status.AUTHENTICATION_ERROR
            )
            is False
        )

    @precondition(lambda self: self.authenticated)
    @rule(
        before_processing=st.booleans(),
        operation=st.sampled_from(["commit", "debit", "write_backup", "authenticate"]),
        exchange=st.integers(1, 2),
    )
    def power_loss(self, before_processing: bool, operation: str, exchange: int) -> None:
        """The field goes away during an exchange of the next command (the second pass of an
        authentication, or the next command); the reader sees a card error."""
        exchange = exchange if operation == "authenticate" else 1
        self.card.fail_after_exchanges(exchange, before_processing=before_processing)
        try:
            if operation == "authenticate":
                self.desfire.authenticate_ev2_first(1, rw_key)
            elif operation == "commit":
                self.desfire.commit_transaction()
            elif operation == "debit":
                self.desfire.debit(value_file, 0, CommMode.MAC)
            else:
                self.desfire.write_data(backup_file, 0, b"\xff", CommMode.FULL)
            raise AssertionError("the exchange should have been lost")
        except CardError as error:
            assert not isinstance(error, DesfireError)
        assert not self.card.powered
        assert not self.card.applications[aid].has_pending()  # nothing uncommitted survives
        if operation == "commit" and not before_processing:
            self.apply_commit()
        self.reader.insert(self.card)
        self.new_session()

    @rule()
    def power_cycle(self) -> None:
        self.reader.remove()
        assert not self.card.applications[aid].has_pending()
        self.reader.insert(self.card)
        self.new_session()

    # ---------------------------------------------------------------- invariants

    @invariant()
    def committed_state_equals_the_model(self) -> None:
        files = self.card.applications[aid].files
        purse = files[value_file]
        assert isinstance(purse, ValueFile)
        assert purse.value == self.committed.value
        assert lower_limit <= purse.value <= upper_limit
        assert bytes(files[backup_file].data) == self.committed.backup  # type: ignore[union-attr]
        assert files[record_file].records == self.committed.records  # type: ignore[union-attr]

    @invariant()
    def nothing_staged_without_a_session(self) -> None:
        if not self.card.powered or not self.authenticated:
            assert not self.card.applications[aid].has_pending()


CardModel.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestCardModel = CardModel.TestCase
