"""Crypto vectors from reference/desfire.md: NIST CMAC, CRC32, session keys, EV2 IV and MAC,
AN10922 diversification."""

from __future__ import annotations

import pytest

from card_reader import crypto

h = bytes.fromhex


def test_nist_cmac_subkeys_and_macs() -> None:
    key = h("2b7e151628aed2a6abf7158809cf4f3c")
    assert crypto.cmac_subkeys(key) == (
        h("fbeed618357133667c85e08f7236a8de"),
        h("f7ddac306ae266ccf90bc11ee46d513b"),
    )
    assert crypto.cmac(key, b"") == h("bb1d6929e95937287fa37d129b756746")
    assert crypto.cmac(key, h("6bc1bee22e409f96e93d7e117393172a")) == h(
        "070a16b46b4d4144f79bdd9dd04a287c"
    )
    # The IV-chained EV1 CMAC equals the plain CMAC when the IV is zero.
    subkeys = crypto.cmac_subkeys(key)
    for message in (b"", h("6bc1bee22e409f96e93d7e117393172a"), b"x" * 20):
        assert crypto.cmac_with_iv(key, crypto.zero_block, message, subkeys) == crypto.cmac(
            key, message
        )


def test_desfire_crc32() -> None:
    assert crypto.desfire_crc32(h("04440F3276318000")) == h("99CE1AD4")


@pytest.mark.parametrize(
    ("random_a", "random_b", "session_key"),
    [
        (
            "F44B26F5686F3A391CD38EBD10772281",
            "C05DDD714FD788A6B7B754F3C4D066E8",
            "F44B26F5C05DDD7110772281C4D066E8",
        ),
        (
            "90F7A201C4DB760538FF8A49EC63DECD",
            "910368457E2E9AA167355BFB544B9931",
            "90F7A20191036845EC63DECD544B9931",
        ),
        (
            "40E7D27174CBA675E8EFBAB99C530E3D",
            "626FFBD45CAF334ACCA45599304F5B17",
            "40E7D271626FFBD49C530E3D304F5B17",
        ),
    ],
)
def test_ev1_session_keys(random_a: str, random_b: str, session_key: str) -> None:
    assert crypto.ev1_session_key(h(random_a), h(random_b)) == h(session_key)


@pytest.mark.parametrize(
    ("key", "random_a", "random_b", "encryption_key", "mac_key"),
    [
        (  # AN12196 Table 14
            "00" * 16,
            "13C5DB8A5930439FC3DEF9A4C675360F",
            "B9E2FC789B64BF237CCCAA20EC7E6E48",
            "1309C877509E5A215007FF0ED19CA564",
            "4C6626F5E72EA694202139295C7A7FC7",
        ),
        (  # AN12343 §7.1.3.1
            "00" * 16,
            "B04D0787C93EE0CC8CACC8E86F16C6FE",
            "FA659AD0DCA738DD65DC7DC38612AD81",
            "63DC07286289A7A6C0334CA31C314A04",
            "774F26743ECE6AF5033B6AE8522946F6",
        ),
        (  # PM3 non-NXP vector
            "00112233445566778899AABBCCDDEEFF",
            "0123456789ABCDEF0123456789ABCDEF",
            "FEDCBA9876543210FEDCBA9876543210",
            "195428119C8528D59580A73C7C96C6A3",
            "0AF00F6E39F904C4A6388C812D53DC94",
        ),
    ],
)
def test_ev2_session_keys(
    key: str, random_a: str, random_b: str, encryption_key: str, mac_key: str
) -> None:
    assert crypto.ev2_session_keys(h(key), h(random_a), h(random_b)) == (
        h(encryption_key),
        h(mac_key),
    )


def test_ev2_command_iv_vectors() -> None:
    first = crypto.Ev2Session(h("66A8CB93269DC9BC2885B7A91B9C697B"), bytes(16), h("ED56F6E6"), 0)
    assert first.command_iv() == h("DA0F644A4986275957CF1EC3AF4CCE53")
    second = crypto.Ev2Session(h("445A8626B3338459321232FADF6ADE2B"), bytes(16), h("11223344"), 5)
    assert second.command_iv() == h("177494FCC4F1DAB2AFBE8FAE2057A9D2")


def test_ev2_mac_vectors_an12343() -> None:
    session = crypto.Ev2Session(bytes(16), h("9366FA195EB566F5BD2BAD4020B83002"), h("E2D3AF69"), 0)
    # WriteData header (file 0, offset 0, length 0x19) then 25 bytes of 0x22.
    assert session.command_mac(0x8D, h("00000000190000") + h("22") * 25) == h("68F2C28C575A1628")
    assert session.response_mac(0x00, b"") == h("0820F68898C2A7F1")
    session.advance()
    assert session.command_mac(0xAD, h("00000000300000")) == h("0D9BE191D5960834")
    assert session.response_mac(0x00, h("22") * 25 + bytes(23)) == h("A49A44222D926666")


def test_ev2_mac_truncation_an12196() -> None:
    session = crypto.Ev2Session(bytes(16), h("8248134A386E86EB7FAF54A52E536CB6"), h("7A21085E"), 0)
    assert session.command_mac(0xF5, h("02")) == h("6597A457C8CD442C")


def test_ev2_padding_always_adds() -> None:
    assert len(crypto.pad_iso9797_method2(bytes(128))) == 144
    assert crypto.unpad_iso9797_method2(crypto.pad_iso9797_method2(b"abc")) == b"abc"
    with pytest.raises(crypto.IntegrityError):
        crypto.unpad_iso9797_method2(bytes(16))


def test_an10922_reference_vector() -> None:
    master = h("00112233445566778899AABBCCDDEEFF")
    assert crypto.cmac_subkeys(master) == (
        h("FBC9F75C9413C041DFEE452D3F0706D1"),
        h("F793EEB928278083BFDC8A5A7E0E0D25"),
    )
    diversification_input = h("04782E21801D80") + h("3042F5") + b"NXP Abu"
    assert crypto.diversify_an10922(master, diversification_input) == h(
        "A8DD63A3B89D54B37CA802473FDA9175"
    )


def test_an10957_short_input_vector_differs_from_plain_cmac() -> None:
    master = h("F3F9377698707B688EAF84ABE39E3791")
    diversified = crypto.diversify_an10922(master, h("04DEADBEEFFEED"))
    assert diversified == h("0BB408BAFF98B6EE9F2E1585777F6A51")
    assert crypto.cmac(master, h("0104DEADBEEFFEED")) != diversified


def test_ev1_crc_search_is_not_fooled_by_the_zero_residue() -> None:
    key = bytes(range(16))
    for length in range(0, 40):
        data = bytes((i * 7 + 1) % 256 for i in range(length))
        sender, receiver = crypto.Ev1Session(key), crypto.Ev1Session(key)
        cipher = sender.encrypt_with_crc(data, b"\x3d" + data)
        assert receiver.decrypt_with_crc(cipher, b"\x3d", b"") == data


def test_session_state_never_prints_key_material() -> None:
    key, other = h("000102030405060708090A0B0C0D0E0F"), h("F0E0D0C0B0A090807060504030201000")
    for session in (crypto.Ev1Session(key), crypto.Ev2Session(key, other, h("01020304"))):
        printed = repr(session).upper()
        assert key.hex().upper() not in printed
        assert other.hex().upper() not in printed
        assert "\\X00\\X01" not in printed  # nor as a bytes literal
