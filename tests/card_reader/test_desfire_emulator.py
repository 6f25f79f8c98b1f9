"""The reader-side protocol against the software card: every command, in both framings, under
EV1 and EV2 secure messaging, with chained and unchained writes."""

from __future__ import annotations

import pytest

from card_reader.apdu import Framing, Status
from card_reader.desfire import Desfire, DesfireError
from card_reader.desfire_files import AccessRights, CommMode, FileType
from card_reader.emulator import EmulatedCard, EmulatedReader

application = 0x123456
new_master = bytes([9]) * 16
key_one = bytes(range(16))


@pytest.mark.parametrize("framing", [Framing.ISO_WRAPPED, Framing.NATIVE])
@pytest.mark.parametrize("generation", ["ev1", "ev2"])
@pytest.mark.parametrize("frame_bytes_max", [255, 48])
def test_every_command(framing: Framing, generation: str, frame_bytes_max: int) -> None:
    card = EmulatedCard()
    reader = EmulatedReader()
    reader.insert(card)
    desfire = Desfire(reader, framing=framing, frame_data_bytes_max=frame_bytes_max)

    def authenticate(key_number: int, key: bytes) -> None:
        if generation == "ev2":
            desfire.authenticate_ev2_first(key_number, key)
        else:
            desfire.authenticate_aes(key_number, key)

    authenticate(0, bytes(16))
    version = desfire.get_version()
    assert version.uid == card.uid and version.is_ev2_or_later
    assert desfire.get_card_uid() == card.uid
    desfire.create_application(application, 0x0F, 3)
    desfire.select_application(application)
    authenticate(0, bytes(16))
    access = AccessRights(read=1, write=2, read_write=0, change=0)
    desfire.create_backup_data_file(1, CommMode.FULL, access, 48)
    desfire.create_std_data_file(2, CommMode.MAC, access, 32)
    desfire.create_value_file(
        3,
        CommMode.MAC,
        AccessRights(1, 1, 0, 0),
        0,
        2_000_000,
        0,
        limited_credit_enabled=True,
        free_get_value=True,
    )
    desfire.create_cyclic_record_file(4, CommMode.PLAIN, access, 24, 5)
    assert desfire.get_file_ids() == [1, 2, 3, 4]
    assert desfire.get_file_settings(1).file_type is FileType.BACKUP_DATA
    assert desfire.get_file_settings(1).size == 48
    desfire.change_key(1, key_one, 1, old_key=bytes(16))
    desfire.change_key(0, new_master, 2)
    assert desfire.authentication is None  # changing the session's own key ends the session
    authenticate(0, new_master)
    assert desfire.get_key_version(1) == 1
    assert desfire.get_key_version(0) == 2
    desfire.write_data(1, 0, bytes(range(48)), CommMode.FULL)
    desfire.write_data(2, 4, b"std", CommMode.MAC)  # standard files change at once
    desfire.credit(3, 1_000, CommMode.MAC)
    desfire.write_record(4, 0, b"x" * 24, CommMode.PLAIN)
    desfire.commit_transaction()
    assert desfire.read_data(1, 0, 0, CommMode.FULL) == bytes(range(48))
    assert desfire.read_data(2, 4, 3, CommMode.MAC) == b"std"
    assert desfire.get_value(3, CommMode.MAC) == 1_000
    assert desfire.read_records(4, 0, 0, CommMode.PLAIN) == b"x" * 24
    authenticate(1, key_one)
    desfire.debit(3, 300, CommMode.MAC)
    desfire.commit_transaction()
    desfire.limited_credit(3, 300, CommMode.MAC)
    desfire.abort_transaction()
    assert desfire.get_value(3, CommMode.MAC) == 700
    assert desfire.get_file_settings(3).limited_credit_value == 300
    if generation == "ev2":
        desfire.authenticate_ev2_non_first(0, new_master)
        assert desfire.get_file_ids() == [1, 2, 3, 4]
    with pytest.raises(DesfireError) as raised:
        desfire.read_data(1, 40, 9, CommMode.FULL)
    assert raised.value.status == Status.BOUNDARY_ERROR
    desfire.select_application(0)
    authenticate(0, bytes(16))
    desfire.format_picc()
    assert desfire.get_application_ids() == []
