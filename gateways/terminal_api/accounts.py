"""The ids of the terminal side's ledger accounts and transfers, derived from what they belong
to (`ledger.records.derive_id`), so any component names a card's purse without a lookup. Pure:
the ingest planner uses them, and so does everything that registers or books.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from typing import Any

from ledger.records import derive_id

fee_income_owner = "merchant-discount"
suspense_owner = "card-anomalies"


account_ids_cached_max = 100_000  # ~ the cards active in a few hours of uploads


@functools.lru_cache(maxsize=account_ids_cached_max)
def purse_account_id(card_number: str) -> uuid.UUID:
    return derive_id("card-purse", card_number)


@functools.lru_cache(maxsize=account_ids_cached_max)
def pending_top_up_account_id(card_number: str) -> uuid.UUID:
    return derive_id("card-pending-top-up", card_number)


def operator_revenue_account_id(operator_id: str) -> uuid.UUID:
    return derive_id("operator-revenue", operator_id)


def merchant_payable_account_id(merchant_id: str) -> uuid.UUID:
    return derive_id("merchant-payable", merchant_id)


fee_income_account_id = derive_id("fee-income", fee_income_owner)
suspense_account_id = derive_id("suspense", suspense_owner)


def bank_clearing_account_id(bank_code: str) -> uuid.UUID:
    return derive_id("bank-clearing", bank_code)


def pending_top_up_transfer_id(top_up_id: str) -> uuid.UUID:
    return derive_id("pending-top-up", top_up_id)


def card_issue_transfer_id(card_number: str) -> uuid.UUID:
    return derive_id("card-issue", card_number)


def card_transfer_id(card_number: str, card_counter: int, leg: str) -> uuid.UUID:
    """The ledger id of one leg of a card transaction: the same from whichever terminal.

    Equal to `derive_id("card-transaction", card_number, card_counter, leg)` (a test holds
    them together), computed from a hash state that has already taken the namespace: this
    runs once per tap at upload rates.
    """
    digest = _card_transaction_namespace.copy()
    number = card_number.encode()
    counter = str(card_counter).encode()
    digest.update(
        b"".join(
            (
                (len(number) + 1).to_bytes(4, "big"),
                b"s",
                number,
                (len(counter) + 1).to_bytes(4, "big"),
                b"i",
                counter,
                _encoded_leg(leg),
            )
        )
    )
    return uuid.UUID(bytes=digest.digest())


@functools.cache
def _encoded_leg(leg: str) -> bytes:
    name = b"s" + leg.encode()
    return len(name).to_bytes(4, "big") + name


def _namespace_state(namespace: str) -> Any:
    digest = hashlib.blake2b(digest_size=16, person=b"ksh-ledger-id")
    encoded = b"s" + namespace.encode()
    digest.update(len(encoded).to_bytes(4, "big") + encoded)
    return digest


_card_transaction_namespace = _namespace_state("card-transaction")


quarantine_write_off_owner = "quarantine-write-offs"
# What a supervisor writes off from the quarantine (suspense against it): the issuer's own.
quarantine_write_off_account_id = derive_id("equity", quarantine_write_off_owner)


def quarantine_transfer_id(terminal_id: str, sequence: int, action: str, leg: str) -> uuid.UUID:
    """A release or write-off leg of one quarantined record: booked once however often asked."""
    return derive_id("quarantine", terminal_id, sequence, action, leg)
