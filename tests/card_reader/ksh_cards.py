"""Shared setup for the KSH card tests: demo keys, a personalised software card, a reader."""

from __future__ import annotations

import datetime as dt

from card_reader.emulator import EmulatedCard, EmulatedReader
from card_reader.keys import KeyRole, KeyStore, demo_key_store
from card_reader.ksh_card import CardStatus, Profile, RiderCategory, personalise

issue_time = 1_790_000_000
store: KeyStore = demo_key_store("tests")


def profile(card_number: int = 6_032_900_000_000_001) -> Profile:
    return Profile(
        card_number=card_number,
        rider_category=RiderCategory.SCHOOL_STUDENT,
        registered=True,
        status=CardStatus.ACTIVE,
        expiry_date=dt.date(2031, 1, 1),
        issue_date=dt.date(2026, 11, 24),
    )


def personalised_card(
    balance_rupiah: int = 50_000, keys: KeyStore = store
) -> tuple[EmulatedCard, EmulatedReader]:
    card = EmulatedCard(bytes.fromhex("04112233445566"))
    reader = EmulatedReader()
    reader.insert(card)
    personalise(
        reader,
        keys.view(*KeyRole),
        profile(),
        initial_balance_rupiah=balance_rupiah,
        terminal_id=0,
        time_unix_seconds=issue_time,
    )
    reader.insert(card)  # a fresh tap
    return card, reader
