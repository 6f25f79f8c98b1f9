"""The software card against an independent DESFire client: python-desfire (EV1 AES, native
framing), written by others from their reading of the same public sources. What it writes we
read back with our own client, and the other way round."""

from __future__ import annotations

import pytest

from card_reader.apdu import Framing
from card_reader.desfire import Desfire
from card_reader.desfire_files import CommMode
from card_reader.emulator import EmulatedCard, EmulatedReader
from tests.conftest import unavailable

try:
    from desfire import DESFire, DESFireKey
    from desfire.devices.base import Device
    from desfire.enums import DESFireCommunicationMode, DESFireFileType, DESFireKeySettings
    from desfire.exceptions import DESFireCommunicationError
    from desfire.schemas import FileSettings, KeySettings
    from desfire.schemas.file_permissions import FilePermissions
except ImportError:  # pragma: no cover - the dev extra installs it
    DESFire = None  # type: ignore[assignment,misc]

application = 0x0A0B0C
wire_aid = list(application.to_bytes(3, "little"))  # python-desfire takes AIDs in wire order
data_files = {1: "ENCRYPTED", 2: "CMAC", 3: "PLAIN"}


@pytest.fixture
def other_client() -> tuple[EmulatedCard, DESFire]:
    if DESFire is None:
        unavailable("python-desfire is not installed", "pip install -e '.[dev]'")

    class EmulatedDevice(Device):
        """python-desfire's device port, in front of our card (native framing)."""

        def __init__(self, card: EmulatedCard) -> None:
            self.card = card

        def transceive(self, command: list[int]) -> list[int]:  # type: ignore[override]
            return list(self.card.process(bytes(command)))

    card = EmulatedCard()
    card.power_on()
    return card, DESFire(EmulatedDevice(card))


def test_python_desfire_personalises_and_reads_our_card(
    other_client: tuple[EmulatedCard, DESFire],
) -> None:
    card, client = other_client
    settings = client.get_key_setting()

    def zero_key() -> (
        DESFireKey
    ):  # python-desfire turns the key it authenticates with into the session key
        return DESFireKey(settings, "00" * 16)

    client.authenticate(0, zero_key())
    assert bytes(client.get_real_uid()) == card.uid  # enciphered GetCardUID, CRC32, IV chain
    assert client.get_application_ids() == []
    # python-desfire counts "factory default" (0x0F) as one more flag when it sums the settings
    # (giving 0x1E: ChangeKey needs key 1), so name the four flags ourselves.
    application_settings = KeySettings(
        key_type=settings.key_type,
        settings=[flag for flag in DESFireKeySettings if flag.value in (1, 2, 4, 8)],
    )
    client.create_application(wire_aid, application_settings, 2)
    assert client.get_application_ids() == [wire_aid]
    client.select_application(wire_aid)
    client.authenticate(0, zero_key())
    payloads = {}
    for file_number, mode_name in data_files.items():
        mode = DESFireCommunicationMode[mode_name]
        file_settings = FileSettings(
            mode, DESFireFileType.MDFT_STANDARD_DATA_FILE, FilePermissions(0, 0, 0, 0), 32
        )
        client.create_standard_file(file_number, file_settings)
        payload = [(file_number * 37 + index) % 251 + 1 for index in range(32)]
        payloads[file_number] = payload
        assert client.get_file_settings(file_number).file_size == 32
        if mode_name == "CMAC":
            # python-desfire 0.1.5 appends the *last* 8 CMAC bytes to MACed writes; DESFire (and
            # libfreefare, and the reference's worked example) take the first 8, so a real card
            # refuses those writes as well. Our card must too; the write itself is done below.
            with pytest.raises(DESFireCommunicationError, match="IntegrityError"):
                client.write_file_data(file_number, 0, mode, payload)
            client.authenticate(0, zero_key())
            continue
        client.write_file_data(file_number, 0, mode, payload)
        read = client.read_file_data(file_number, file_settings)
        if mode_name == "PLAIN":
            # In an EV1 session a card MACs every answer, plain files included (the reference's
            # real-card trace shows it); python-desfire hands those 8 bytes back as data.
            # Not having checked that MAC, it is out of step with the card's IV: start afresh.
            assert len(read) == 32 + 8
            read = read[:32]
            client.authenticate(0, zero_key())
        assert read == payload
    assert client.get_file_ids() == [1, 2, 3]
    reader = EmulatedReader()
    reader.insert(card)
    ours = Desfire(reader, framing=Framing.ISO_WRAPPED)
    ours.select_application(application)
    ours.authenticate_aes(0, bytes(16))
    ours.write_data(2, 0, bytes(payloads[2]), CommMode.MAC)
    card.power_on()
    client.select_application(wire_aid)
    client.authenticate(0, zero_key())
    mac_file = client.get_file_settings(2)
    assert client.read_file_data(2, mac_file) == payloads[2]  # their MAC check of our card's answer
    new_key = DESFireKey(settings, "11" * 16)
    client.change_key(1, zero_key(), new_key, new_key_version=5)
    assert client.get_key_version(1) == 5

    # Our client sees what theirs wrote, under EV2 secure messaging.
    reader.insert(card)
    ours = Desfire(reader, framing=Framing.ISO_WRAPPED)
    ours.select_application(application)
    ours.authenticate_ev2_first(1, bytes.fromhex("11" * 16))  # the key they changed
    ours.authenticate_ev2_first(0, bytes(16))  # the files' key
    for file_number, mode_name in data_files.items():
        mode = {"ENCRYPTED": CommMode.FULL, "CMAC": CommMode.MAC, "PLAIN": CommMode.PLAIN}[
            mode_name
        ]
        assert list(ours.read_data(file_number, 0, 32, mode)) == payloads[file_number]


def test_python_desfire_reads_what_we_wrote(other_client: tuple[EmulatedCard, DESFire]) -> None:
    card, client = other_client
    reader = EmulatedReader()
    reader.insert(card)
    ours = Desfire(reader)
    ours.authenticate_ev2_first(0, bytes(16))
    ours.create_application(application, 0x0F, 1)
    ours.select_application(application)
    ours.authenticate_ev2_first(0, bytes(16))
    from card_reader.desfire_files import AccessRights

    ours.create_std_data_file(1, CommMode.FULL, AccessRights(0, 0, 0, 0), 24)
    written = bytes(range(1, 25))
    ours.write_data(1, 0, written, CommMode.FULL)
    card.power_on()  # a new tap for the other client
    client.select_application(wire_aid)
    settings = client.get_key_setting()
    client.authenticate(0, DESFireKey(settings, "00" * 16))
    file_settings = client.get_file_settings(1)
    assert bytes(client.read_file_data(1, file_settings)) == written


def test_python_desfire_reads_the_transaction_mac_our_card_committed(
    other_client: tuple[EmulatedCard, DESFire],
) -> None:
    """The TransactionMAC file is read like a 12-byte file, free and in plain, by anyone; their
    client reads what our commit answered (TMC ‖ TMV), and a TMV that verifies."""
    from card_reader import ksh_card, tmac
    from card_reader.keys import KeyRole, diversify_card_key
    from card_reader.ksh_card import KshCard, Refusal

    from .ksh_cards import issue_time, personalised_card, store

    _, client = other_client
    card, reader = personalised_card(10_000)
    session = KshCard(reader, store.view(KeyRole.DEBIT))
    session.read_state()
    after = session.debit(3_500, bytes(48), terminal_id=7, time_unix_seconds=issue_time + 1)
    assert not isinstance(after, Refusal) and after.transaction_mac is not None
    reader.remove()
    card.power_on()
    client.device.card = card  # type: ignore[attr-defined]  # their device, our card
    client.select_application(list(ksh_card.ksh_application_id.to_bytes(3, "little")))
    twelve_plain_bytes = FileSettings(
        DESFireCommunicationMode.PLAIN,
        DESFireFileType.MDFT_STANDARD_DATA_FILE,
        FilePermissions(0, 0, 0, 0),
        12,
    )
    read = bytes(client.read_file_data(ksh_card.transaction_mac_file, twelve_plain_bytes))
    assert read == after.transaction_mac.to_bytes()
    key = diversify_card_key(store.master_key(KeyRole.TMAC), card.uid, 0x48534B).key
    counter, value = int.from_bytes(read[:4], "little"), read[4:]
    assert tmac.verify(key, card.uid, counter, value, tmac.CardTransaction.of(after.last_record))
