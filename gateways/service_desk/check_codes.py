"""The check code printed on every card beside its number: who knows both may see the card on
the public card page (`gateways.service_desk.citizen`); a card number alone, guessed or read
off a receipt, shows nothing.

The code is a keyed check value: HMAC-SHA256 over the card number with a secret only the back
office holds (`backoffice_secrets`, made at random on first use), its first 40 bits written as
8 characters of Crockford's base 32 (no I, L, O or U: nothing to misread on a card) in two
groups, e.g. `7KQ2-M9XD`. Guessing one is a 1 in 2**40 chance a try, and the page counts tries
per address. Pure apart from reading the secret; the same in every process and command.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import asyncpg

alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base 32
check_code_characters = 8
check_code_bits = check_code_characters * 5
secret_name = "card_check_code"
secret_bytes = 32
# What a reader may type for a character that is not in the alphabet (Crockford's rule).
_read_as = {"O": "0", "I": "1", "L": "1"}


def check_code(secret: bytes, card_number: str) -> str:
    """The code printed on card `card_number`, as `XXXX-XXXX`."""
    assert len(secret) >= 16
    digest = hmac.new(secret, b"ksh-card-check\x00" + card_number.encode(), hashlib.sha256)
    value = int.from_bytes(digest.digest()[:5], "big")
    characters = "".join(
        alphabet[(value >> (5 * (check_code_characters - 1 - index))) & 31]
        for index in range(check_code_characters)
    )
    return f"{characters[:4]}-{characters[4:]}"


def normalised(typed: str) -> str | None:
    """What someone typed as a check code, as printed (`XXXX-XXXX`), or None when it cannot be
    one: case, spaces and dashes do not matter; O, I and L read as 0, 1 and 1."""
    characters = "".join(
        _read_as.get(character, character) for character in typed.upper() if character not in " -"
    )
    if len(characters) != check_code_characters or any(c not in alphabet for c in characters):
        return None
    return f"{characters[:4]}-{characters[4:]}"


def matches(secret: bytes, card_number: str, typed: str) -> bool:
    """Whether `typed` is the check code of `card_number` (compared in constant time)."""
    given = normalised(typed)
    expected = check_code(secret, card_number)
    return given is not None and hmac.compare_digest(given, expected)


async def check_code_secret(connection: asyncpg.Connection) -> bytes:
    """The back office's check code secret, made at random the first time it is asked for (two
    processes asking at once agree: the first insert wins)."""
    query = "select secret from backoffice_secrets where name = $1"
    secret = await connection.fetchval(query, secret_name)
    if secret is None:
        await connection.execute(
            "insert into backoffice_secrets (name, secret) values ($1, $2) "
            "on conflict (name) do nothing",
            secret_name,
            secrets.token_bytes(secret_bytes),
        )
        secret = await connection.fetchval(query, secret_name)
    return bytes(secret)


async def check_codes(connection: asyncpg.Connection, card_numbers: list[str]) -> dict[str, str]:
    """The check code of each card (to print on it, or to tell its holder at the counter)."""
    secret = await check_code_secret(connection)
    return {number: check_code(secret, number) for number in card_numbers}
