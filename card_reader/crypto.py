"""DESFire cryptography (AES-128 only): CBC, CMAC, CRC32, session keys, secure messaging state for
EV1 (`AuthenticateAES`) and EV2 (`AuthenticateEV2First`), and AN10922 key diversification.

Both sides of the wire use the same classes: the reader (`card_reader.desfire`) and the software
card (`card_reader.emulator`), so one set of vectors pins both. Facts and vectors:
`reference/desfire.md` §2, §3, §6.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

block_bytes = 16
key_bytes = 16
mac_bytes = 8  # transmitted MAC length for AES (EV1: first 8 bytes; EV2: MACt)
zero_block = bytes(block_bytes)


class IntegrityError(Exception):
    """A MAC, CRC or padding did not verify: the peer is not who it claims, or the data was altered."""


def aes_ecb_encrypt(key: bytes, block: bytes) -> bytes:
    assert len(key) == key_bytes
    assert len(block) % block_bytes == 0
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(block) + encryptor.finalize()


def aes_cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    assert len(key) == key_bytes
    assert len(iv) == block_bytes
    assert len(data) % block_bytes == 0
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def aes_cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    assert len(key) == key_bytes
    assert len(iv) == block_bytes
    assert len(data) % block_bytes == 0
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def cmac(key: bytes, data: bytes) -> bytes:
    """NIST SP 800-38B AES-CMAC, full 16 bytes."""
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def _shift_left_one_bit(block: bytes) -> bytes:
    value = int.from_bytes(block, "big") << 1
    if value >> 128:
        value = (value & ((1 << 128) - 1)) ^ 0x87
    return value.to_bytes(block_bytes, "big")


def cmac_subkeys(key: bytes) -> tuple[bytes, bytes]:
    """K1, K2 of SP 800-38B (needed where the plain CMAC API does not fit: EV1 IV, AN10922)."""
    return subkeys_of(aes_ecb_encrypt(key, zero_block))


def subkeys_of(encrypted_zero_block: bytes) -> tuple[bytes, bytes]:
    """K1, K2 from L = E_K(0) (a PKCS#11 token gives L and keeps K)."""
    first = _shift_left_one_bit(encrypted_zero_block)
    return first, _shift_left_one_bit(first)


def _xor(left: bytes, right: bytes) -> bytes:
    assert len(left) == len(right)
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(len(left), "big")


def _cmac_last_block(data: bytes, subkeys: tuple[bytes, bytes]) -> bytes:
    """The message with its last block padded and masked by K1 or K2, as CMAC prescribes."""
    if data and len(data) % block_bytes == 0:
        return data[:-block_bytes] + _xor(data[-block_bytes:], subkeys[0])
    padded = data + b"\x80" + bytes(-(len(data) + 1) % block_bytes)
    return padded[:-block_bytes] + _xor(padded[-block_bytes:], subkeys[1])


def cmac_with_iv(key: bytes, iv: bytes, data: bytes, subkeys: tuple[bytes, bytes]) -> bytes:
    """EV1 CMAC: as SP 800-38B, but the CBC starts from the session IV instead of zero."""
    return aes_cbc_encrypt(key, iv, _cmac_last_block(data, subkeys))[-block_bytes:]


def truncate_mac(full_mac: bytes) -> bytes:
    """EV2 MACt: the bytes at 0-based odd indices 1, 3, ..., 15 of the 16-byte CMAC."""
    assert len(full_mac) == block_bytes
    return full_mac[1::2]


def desfire_crc32(data: bytes) -> bytes:
    """CRC32 as DESFire uses it: IEEE reflected, preset all ones, no final XOR; little-endian."""
    return (~zlib.crc32(data) & 0xFFFFFFFF).to_bytes(4, "little")


def rotate_left(data: bytes) -> bytes:
    return data[1:] + data[:1]


def pad_iso9797_method2(data: bytes) -> bytes:
    """`80 00..` padding, always added (a full block gains a whole padding block)."""
    return data + b"\x80" + bytes(-(len(data) + 1) % block_bytes)


def unpad_iso9797_method2(data: bytes) -> bytes:
    stripped = data.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80 or len(data) - len(stripped) >= block_bytes:
        raise IntegrityError("padding is not ISO/IEC 9797-1 method 2")
    return stripped[:-1]


def pad_zeros(data: bytes) -> bytes:
    """EV1 padding: zeros, only if needed."""
    return data + bytes(-len(data) % block_bytes)


# ---------------------------------------------------------------------------- session keys


def ev1_session_key(random_a: bytes, random_b: bytes) -> bytes:
    """AES session key after AuthenticateAES: A0..3 ‖ B0..3 ‖ A12..15 ‖ B12..15."""
    return random_a[0:4] + random_b[0:4] + random_a[12:16] + random_b[12:16]


def ev2_session_keys(key: bytes, random_a: bytes, random_b: bytes) -> tuple[bytes, bytes]:
    """(SesAuthENCKey, SesAuthMACKey) after AuthenticateEV2First/NonFirst."""
    context = random_a[0:2] + _xor(random_a[2:8], random_b[0:6]) + random_b[6:16] + random_a[8:16]
    encryption_key = cmac(key, bytes.fromhex("A55A00010080") + context)
    mac_key = cmac(key, bytes.fromhex("5AA500010080") + context)
    return encryption_key, mac_key


# ---------------------------------------------------------------------------- secure messaging


@dataclass(slots=True)
class Ev1Session:
    """EV1 AES secure messaging: one session key and one IV that every operation uses and updates."""

    session_key: bytes = field(repr=False)  # key material is never printed
    iv: bytes = field(default=zero_block, repr=False)
    subkeys: tuple[bytes, bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.subkeys = cmac_subkeys(self.session_key)

    def mac(self, data: bytes) -> bytes:
        """CMAC chained on the session IV; the full result becomes the IV."""
        self.iv = cmac_with_iv(self.session_key, self.iv, data, self.subkeys)
        return self.iv

    def encrypt(self, plain: bytes) -> bytes:
        cipher = aes_cbc_encrypt(self.session_key, self.iv, plain)
        self.iv = cipher[-block_bytes:]
        return cipher

    def decrypt(self, cipher: bytes) -> bytes:
        plain = aes_cbc_decrypt(self.session_key, self.iv, cipher)
        self.iv = cipher[-block_bytes:]
        return plain

    def encrypt_with_crc(self, plain: bytes, crc_input: bytes) -> bytes:
        return self.encrypt(pad_zeros(plain + desfire_crc32(crc_input)))

    def decrypt_with_crc(
        self, cipher: bytes, crc_prefix: bytes, crc_suffix: bytes, data_bytes: int | None = None
    ) -> bytes:
        """Decrypt `data ‖ CRC32(prefix ‖ data ‖ suffix) ‖ zeros`; the data length is found by
        trying each place the CRC can sit (the padding is shorter than a block) unless the caller
        knows it (`data_bytes`, from a length in the command header): guessing is ambiguous in
        rare cases, so protocol code passes the length whenever it has one."""
        if not cipher or len(cipher) % block_bytes:
            raise IntegrityError(f"cryptogram length {len(cipher)} is not a multiple of 16")
        plain = self.decrypt(cipher)
        # Shortest first: CRC32 without final XOR has a zero residue, so `data ‖ CRC ‖ zeros`
        # also "verifies" at every longer cut.
        candidates = range(max(len(plain) - 4 - block_bytes + 1, 0), len(plain) - 3)
        if data_bytes is not None:  # known from the command header: no guessing
            candidates = range(data_bytes, data_bytes + 1) if data_bytes in candidates else range(0)
        for data_length in candidates:
            data = plain[:data_length]
            crc = plain[data_length : data_length + 4]
            padding = plain[data_length + 4 :]
            padding_ok = not padding.strip(b"\x00") or padding.rstrip(b"\x00") == b"\x80"
            if padding_ok and crc == desfire_crc32(crc_prefix + data + crc_suffix):
                return data
        raise IntegrityError("CRC32 of the enciphered data does not match")


@dataclass(slots=True)
class Ev2Session:
    """EV2 secure messaging state: session keys, transaction identifier, command counter."""

    encryption_key: bytes = field(repr=False)  # key material is never printed
    mac_key: bytes = field(repr=False)
    transaction_identifier: bytes
    command_counter: int = 0

    def _iv(self, label: bytes, counter: int) -> bytes:
        block = label + self.transaction_identifier + counter.to_bytes(2, "little") + bytes(8)
        return aes_ecb_encrypt(self.encryption_key, block)

    def command_iv(self) -> bytes:
        return self._iv(b"\xa5\x5a", self.command_counter)

    def response_iv(self) -> bytes:
        return self._iv(b"\x5a\xa5", self.command_counter + 1)

    def command_mac(self, command_code: int, header_and_data: bytes) -> bytes:
        counter = self.command_counter.to_bytes(2, "little")
        message = bytes([command_code]) + counter + self.transaction_identifier + header_and_data
        return truncate_mac(cmac(self.mac_key, message))

    def response_mac(self, status: int, data: bytes) -> bytes:
        """MACt over the response; call before `advance` (it uses CmdCtr + 1)."""
        counter = (self.command_counter + 1).to_bytes(2, "little")
        message = bytes([status]) + counter + self.transaction_identifier + data
        return truncate_mac(cmac(self.mac_key, message))

    def encrypt_command(self, plain: bytes) -> bytes:
        return aes_cbc_encrypt(self.encryption_key, self.command_iv(), pad_iso9797_method2(plain))

    def decrypt_command(self, cipher: bytes) -> bytes:
        if not cipher or len(cipher) % block_bytes:
            raise IntegrityError(f"cryptogram length {len(cipher)} is not a multiple of 16")
        return unpad_iso9797_method2(
            aes_cbc_decrypt(self.encryption_key, self.command_iv(), cipher)
        )

    def encrypt_response(self, plain: bytes) -> bytes:
        return aes_cbc_encrypt(self.encryption_key, self.response_iv(), pad_iso9797_method2(plain))

    def decrypt_response(self, cipher: bytes) -> bytes:
        if not cipher or len(cipher) % block_bytes:
            raise IntegrityError(f"cryptogram length {len(cipher)} is not a multiple of 16")
        return unpad_iso9797_method2(
            aes_cbc_decrypt(self.encryption_key, self.response_iv(), cipher)
        )

    def advance(self) -> None:
        self.command_counter = (self.command_counter + 1) & 0xFFFF


# ---------------------------------------------------------------------------- diversification

diversification_input_bytes_max = 31


def diversify_an10922(master_key: bytes, diversification_input: bytes) -> bytes:
    """AN10922 AES-128 diversification: CMAC-like over `01 ‖ input`, always padded to 32 bytes
    (so inputs of 15 bytes or fewer differ from plain CMAC, as the AN10957 vector shows)."""
    assert len(master_key) == key_bytes
    padded = an10922_blocks(diversification_input, cmac_subkeys(master_key))
    return aes_cbc_encrypt(master_key, zero_block, padded)[-block_bytes:]


def an10922_blocks(diversification_input: bytes, subkeys: tuple[bytes, bytes]) -> bytes:
    """The two blocks AN10922 runs AES-CBC over with a zero IV (the last cipher block is the
    diversified key): `01 ‖ input`, padded to 32 bytes, the second block masked by K1 or K2."""
    assert 1 <= len(diversification_input) <= diversification_input_bytes_max
    message = b"\x01" + diversification_input
    first, second = subkeys
    if len(message) == 2 * block_bytes:
        return message[:block_bytes] + _xor(message[block_bytes:], first)
    filled = message + b"\x80" + bytes(2 * block_bytes - len(message) - 1)
    return filled[:block_bytes] + _xor(filled[block_bytes:], second)
