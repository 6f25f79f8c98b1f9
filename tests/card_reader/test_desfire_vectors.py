"""Every [V] transcript of reference/desfire.md, run through `card_reader.desfire.Desfire` with a
scripted reader that fails on the first unexpected command, and, where the card's random numbers
are known, through the emulator as the card."""

from __future__ import annotations

import pytest

from card_reader import crypto
from card_reader.apdu import Framing
from card_reader.desfire import Authentication, Desfire, DesfireError, response_frames_max
from card_reader.desfire_files import AccessRights, CommMode
from card_reader.emulator import EmulatedCard

from .scripted import ScriptedReader, fixed_random

h = bytes.fromhex


def native(exchanges: list[tuple[str, str]]) -> ScriptedReader:
    return ScriptedReader(exchanges)


# ---------------------------------------------------------------------------- EV1 AuthenticateAES


@pytest.mark.parametrize(
    ("key", "random_b_cipher", "random_a", "token", "answer", "session_key"),
    [
        (  # EV1-A
            "00" * 16,
            "B969FDFE56FD91FC9DE6F6F213B8FD1E",
            "F44B26F5686F3A391CD38EBD10772281",
            "36AAD7DF6E436BA08D18613830A70D5AD43E3D3F4A8D47541EEE623A934E4774",
            "800DB680BC146BD121D6578F2D2E2059",
            "F44B26F5C05DDD7110772281C4D066E8",
        ),
        (  # EV1-B
            "10182028303840485058606870788088",
            "3E2BE626C05E7798EE518355A751648E",
            "90F7A201C4DB760538FF8A49EC63DECD",
            "FABF71BB0DC45B8F31BAEDDFF7F3439652D4094DF12C17EF0C94353E6D7770C8",
            "1CE6C574E24923D404E18B6A240C1B08",
            "90F7A20191036845EC63DECD544B9931",
        ),
    ],
)
def test_ev1_authentication_transcripts(
    key: str, random_b_cipher: str, random_a: str, token: str, answer: str, session_key: str
) -> None:
    reader = native([("AA00", "AF" + random_b_cipher), ("AF" + token, "00" + answer)])
    desfire = Desfire(reader, framing=Framing.NATIVE, random_bytes=fixed_random(random_a))
    desfire.authenticate_aes(0, h(key))
    reader.assert_done()
    assert desfire.authentication is not None and desfire.authentication.ev1 is not None
    assert desfire.authentication.ev1.session_key == h(session_key)


def test_ev1_c_session_key_from_the_card_random() -> None:
    key = h("10182028303840485058606870788088")
    random_b = crypto.aes_cbc_decrypt(key, crypto.zero_block, h("B351CB2465D4F33AC627FD6E87A168F2"))
    assert random_b == h("626FFBD45CAF334ACCA45599304F5B17")
    assert crypto.ev1_session_key(h("40E7D27174CBA675E8EFBAB99C530E3D"), random_b) == h(
        "40E7D271626FFBD49C530E3D304F5B17"
    )


def test_emulator_as_the_ev1_a_card() -> None:
    card = EmulatedCard(
        h("04063F72633480"), random_bytes=fixed_random("C05DDD714FD788A6B7B754F3C4D066E8")
    )
    card.power_on()
    assert card.process(h("AA00")) == h("AFB969FDFE56FD91FC9DE6F6F213B8FD1E")
    token = "36AAD7DF6E436BA08D18613830A70D5AD43E3D3F4A8D47541EEE623A934E4774"
    assert card.process(h("AF" + token)) == h("00800DB680BC146BD121D6578F2D2E2059")


def ev1_desfire(
    session_key: str, exchanges: list[tuple[str, str]], key_number: int = 0
) -> tuple[Desfire, ScriptedReader]:
    reader = native(exchanges)
    desfire = Desfire(reader, framing=Framing.NATIVE)
    desfire.authentication = Authentication(key_number, ev1=crypto.Ev1Session(h(session_key)))
    return desfire, reader


# ---------------------------------------------------------------------------- EV1 CMAC chain


def test_ev1_get_key_version_then_change_the_authenticated_key() -> None:
    desfire, reader = ev1_desfire(
        "90F7A20191036845EC63DECD544B9931",
        [
            ("6400", "00108A8FA36F55CD210D"),
            ("C400635375E4919F8AF2E9E86B1C1BA55B0C0807EAF484D7A7EF6E0C3084160F5A61", "00"),
        ],
    )
    assert desfire.get_key_version(0) == 0x10
    assert desfire.authentication is not None and desfire.authentication.ev1 is not None
    assert desfire.authentication.ev1.iv == h("8A8FA36F55CD210DD8054658AC70D99A")
    desfire.change_key(0, bytes(16), 0)
    reader.assert_done()
    assert desfire.authentication is None  # the session key died with the key


def test_ev1_create_std_data_file_and_get_file_ids() -> None:
    desfire, reader = ev1_desfire(
        "40E7D271626FFBD49C530E3D304F5B17",
        [("CD05001100500000", "00A75316AD1596B953"), ("6F", "00052D5FF67FFEC9D2D3")],
    )
    desfire.create_std_data_file(5, CommMode.PLAIN, AccessRights.from_bytes(h("1100")), 0x50)
    assert desfire.authentication is not None and desfire.authentication.ev1 is not None
    assert desfire.authentication.ev1.iv == h("A75316AD1596B95374EEF55FB7FA00EC")
    assert desfire.get_file_ids() == [5]
    reader.assert_done()


def test_ev1_change_another_key() -> None:
    desfire, reader = ev1_desfire(
        "C2A1E47BD8100044FE6D00A74D7AB17C",
        [
            (
                "C401E7ECCB6BD1CA64BC161A12B1C024F71430337408C8A87EACAB7A1FF18951FCA3",
                "002128D3CD9C9ACFFF",
            )
        ],
    )
    desfire.change_key(1, h("00102030405060708090A0B0B0A09080"), 0x10, old_key=bytes(16))
    reader.assert_done()
    assert desfire.authentication is not None and desfire.authentication.ev1 is not None
    assert desfire.authentication.ev1.iv == h("2128D3CD9C9ACFFFF6EB9546ADF35E17")


def test_ev1_credit_enciphered_and_maced() -> None:
    session_key = "40E7D271626FFBD49C530E3D304F5B17"
    reader = ScriptedReader(
        [("900C00001102BE6F25608B8BED47B63558B60F79F65600", "2911CEC187DD5C649100")]
    )
    desfire = Desfire(reader)
    desfire.authentication = Authentication(0, ev1=crypto.Ev1Session(h(session_key)))
    desfire.credit(2, 100, CommMode.FULL)
    reader.assert_done()
    reader = ScriptedReader([("900C00000D02640000002D49686D4447790D00", "169C14A0C83470099100")])
    desfire = Desfire(reader)
    desfire.authentication = Authentication(0, ev1=crypto.Ev1Session(h(session_key)))
    desfire.credit(2, 100, CommMode.MAC)
    reader.assert_done()


def test_ev1_wrong_response_cmac_is_an_integrity_failure() -> None:
    desfire, _ = ev1_desfire("90F7A20191036845EC63DECD544B9931", [("6400", "00108A8FA36F55CD210E")])
    with pytest.raises(DesfireError, match="CMAC does not verify"):
        desfire.get_key_version(0)
    assert desfire.authentication is None


# ---------------------------------------------------------------------------- EV2


EV2_FIRST = [
    ("9071000002000000", "A04C124213C186F22399D33AC2A30215 91AF"),
    (
        "90AF000020 35C3E05A752E0144BAC0DE51C1F22C56B34408A23D8AEA266CAB947EA8E0118D 00",
        "3FA64DB5446D1F34CD6EA311167F5E4985B89690C04A05F17FA7AB2F08120663 9100",
    ),
]


def test_ev2_first_transcript_an12196_table_14() -> None:
    reader = ScriptedReader(EV2_FIRST)
    desfire = Desfire(reader, random_bytes=fixed_random("13C5DB8A5930439FC3DEF9A4C675360F"))
    desfire.authenticate_ev2_first(0, bytes(16))
    reader.assert_done()
    assert desfire.authentication is not None
    session = desfire.authentication.ev2
    assert session is not None
    assert session.transaction_identifier == h("9D00C4DF")
    assert session.command_counter == 0
    assert session.encryption_key == h("1309C877509E5A215007FF0ED19CA564")
    assert session.mac_key == h("4C6626F5E72EA694202139295C7A7FC7")


def test_ev2_first_second_transcript_an12196_6_10() -> None:
    reader = ScriptedReader(
        [
            ("9071000002000000", "B875CEB0E66A6C5CD00898DC371F92D1 91AF"),
            (
                "90AF000020FF0306E47DFBC50087C4D8A78E88E62DE1E8BE457AA477C707E2F0874916A8B100",
                "0CC9A8094A8EEA683ECAAC5C7BF20584206D0608D477110FC6B3D5D3F65C3A6A9100",
            ),
        ]
    )
    desfire = Desfire(reader, random_bytes=fixed_random("B98F4C50CF1C2E084FD150E33992B048"))
    desfire.authenticate_ev2_first(0, bytes(16))
    reader.assert_done()
    assert desfire.authentication is not None and desfire.authentication.ev2 is not None
    session = desfire.authentication.ev2
    assert session.transaction_identifier == h("7614281A")
    assert session.encryption_key == h("7A93D6571E4B180FCA6AC90C9A7488D4")
    assert session.mac_key == h("FC4AF159B62E549B5812394CAB1918CC")


def test_emulator_as_the_ev2_first_card() -> None:
    card = EmulatedCard(
        h("04958CAA5C5E80"),
        random_bytes=fixed_random("B9E2FC789B64BF237CCCAA20EC7E6E48", "9D00C4DF"),
    )
    card.power_on()
    for command, response in EV2_FIRST:
        assert card.process(h(command.replace(" ", ""))) == h(response.replace(" ", ""))


def ev2_desfire(
    encryption_key: str, mac_key: str, ti: str, exchanges: list[tuple[str, str]]
) -> tuple[Desfire, ScriptedReader]:
    reader = ScriptedReader(exchanges)
    desfire = Desfire(reader)
    session = crypto.Ev2Session(h(encryption_key), h(mac_key), h(ti), 0)
    desfire.authentication = Authentication(0, ev2=session)
    return desfire, reader


def test_ev2_mac_mode_get_file_settings_an12196_5_3() -> None:
    desfire, reader = ev2_desfire(
        "00" * 16,
        "8248134A386E86EB7FAF54A52E536CB6",
        "7A21085E",
        [
            (
                "90F5000009026597A457C8CD442C00",
                "0040EEEE000100D1FE001F00004400004400002000006A0000 2A474282E7A47986 9100",
            )
        ],
    )
    data = desfire.command(0xF5, h("02"))
    reader.assert_done()
    assert data == h("0040EEEE000100D1FE001F00004400004400002000006A0000")
    assert desfire.authentication is not None and desfire.authentication.ev2 is not None
    assert desfire.authentication.ev2.command_counter == 1


def test_ev2_full_mode_write_data_an12196_6_12() -> None:
    desfire, reader = ev2_desfire(
        "7A93D6571E4B180FCA6AC90C9A7488D4",
        "FC4AF159B62E549B5812394CAB1918CC",
        "7614281A",
        [
            (
                "908D00001F030000000A00006B5E6804909962FC4E3FF5522CF0F8436C0C53315B9C73AA00",
                "C26D236E4A7C046D9100",
            )
        ],
    )
    desfire.command(
        0x8D, h("030000000A0000"), h("0102030405060708090A"), command_mode=CommMode.FULL
    )
    reader.assert_done()


def test_ev2_full_mode_get_card_uid_an12196_7_3() -> None:
    desfire, reader = ev2_desfire(
        "2B4D963C014DC36F24F69A50A394F875",
        "379D32130CE61705DD5FD8C36B95D764",
        "DF055522",
        [("90510000088E2C155ADDA99BE300", "70756055688505B52A5E26E59E329CD6595F672298EA41B79100")],
    )
    assert desfire.get_card_uid() == h("04958CAA5C5E80")
    reader.assert_done()


def test_ev2_full_mode_always_pads_an12196_5_4() -> None:
    desfire, _ = ev2_desfire("00" * 16, "00" * 16, "00000000", [])
    header = h("01000000800000")
    assert len(header) + 128 == 0x87  # Lc of the plain command
    payload = desfire._protect(0x8D, header, bytes(128), CommMode.FULL)
    assert len(payload) == 0x9F  # 128 plain bytes -> 144 cipher bytes, plus the MAC


def test_ev2_tampered_response_mac_ends_the_session() -> None:
    desfire, _ = ev2_desfire(
        "00" * 16,
        "8248134A386E86EB7FAF54A52E536CB6",
        "7A21085E",
        [
            (
                "90F5000009026597A457C8CD442C00",
                "0040EEEE000100D1FE001F00004400004400002000006A0000 2A474282E7A47987 9100",
            )
        ],
    )
    with pytest.raises(DesfireError, match="MAC does not verify"):
        desfire.command(0xF5, h("02"))
    assert desfire.authentication is None


def test_select_application_encodes_the_aid_lsb_first() -> None:
    reader = native([("5A16AE00", "00")])
    Desfire(reader, framing=Framing.NATIVE).select_application(0x00AE16)
    reader.assert_done()


def test_refusal_carries_status_and_transcript() -> None:
    reader = ScriptedReader([("905A00000316AE0000", "91A0")])
    with pytest.raises(DesfireError) as raised:
        Desfire(reader).select_application(0x00AE16)
    assert raised.value.status == 0xA0
    assert "APPLICATION_NOT_FOUND" in str(raised.value)
    assert raised.value.transcript == (("905A00000316AE0000", "91A0"),)


def test_ev1_step_three_chains_the_iv() -> None:
    """ELMU: with IV = 0 instead of E(RndB) the EV1-A cryptogram comes out different."""
    key = bytes(16)
    random_b_cipher = h("B969FDFE56FD91FC9DE6F6F213B8FD1E")
    random_b = crypto.aes_cbc_decrypt(key, crypto.zero_block, random_b_cipher)
    plain = h("F44B26F5686F3A391CD38EBD10772281") + crypto.rotate_left(random_b)
    expected = h("36AAD7DF6E436BA08D18613830A70D5AD43E3D3F4A8D47541EEE623A934E4774")
    assert crypto.aes_cbc_encrypt(key, random_b_cipher, plain) == expected
    assert crypto.aes_cbc_encrypt(key, crypto.zero_block, plain) != expected


def test_access_rights_bytes_elmu() -> None:
    assert AccessRights.from_bytes(h("1100")) == AccessRights(
        read=0, write=0, read_write=1, change=1
    )
    assert AccessRights(1, 2, 3, 0).to_bytes() == h("3012")  # CreateValueFile example


def test_desfire_atr_check_byte() -> None:
    atr = EmulatedCard().atr()
    assert atr == h("3B8180018080")
    assert atr[-1] == atr[1] ^ atr[2] ^ atr[3] ^ atr[4]


def test_a_card_asking_for_frames_for_ever_gets_an_error() -> None:
    """A broken or hostile card that answers 91 AF with no data to every frame: the terminal
    gives up with an error (the mutated-tap property once found the loop that never ended)."""

    class EndlessMore(ScriptedReader):
        def transmit(self, command: bytes) -> bytes:
            self.position += 1
            return bytes.fromhex("91AF")

    reader = EndlessMore([])
    with pytest.raises(DesfireError, match="longer than we take"):
        Desfire(reader).get_version()
    assert reader.position <= response_frames_max
