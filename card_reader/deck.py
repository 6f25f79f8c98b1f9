"""Decks of personalised KSH cards in software, for demos, simulations and benchmarks.

A deck is a JSON file of `EmulatedCard.to_dict()` states (`card_reader.emulator.save_deck` /
`load_deck`). UIDs and card numbers follow from a seed, so a deck can be made again identically.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from pathlib import Path

from card_reader.emulator import EmulatedCard, EmulatedReader, load_deck, save_deck
from card_reader.keys import KeyRole, KeyStore
from card_reader.ksh_card import CardStatus, Profile, RiderCategory, personalise

deck_cards_max = 10_000
first_card_number = 6_032_900_000_000_001
personalisation_terminal_id = 0


def deck_uid(seed: str, index: int) -> bytes:
    """A 7-byte NXP-style UID (first byte 0x04) that follows from the seed and the index."""
    return b"\x04" + hashlib.sha256(f"{seed}/uid/{index}".encode()).digest()[:6]


def make_ksh_deck(
    keys: KeyStore,
    balances_rupiah: Sequence[int],
    *,
    seed: str = "ksh-deck",
    rider_categories: Sequence[RiderCategory] | None = None,
    issue_date: dt.date = dt.date(2026, 1, 1),
    expiry_date: dt.date = dt.date(2031, 1, 1),
    first_number: int = first_card_number,
) -> list[EmulatedCard]:
    """One personalised KSH card per balance; card numbers count up from `first_number`."""
    assert len(balances_rupiah) <= deck_cards_max
    assert rider_categories is None or len(rider_categories) == len(balances_rupiah)
    all_roles = keys.view(*KeyRole)
    issue_time = int(dt.datetime.combine(issue_date, dt.time(), dt.UTC).timestamp())
    cards = []
    for index, balance in enumerate(balances_rupiah):
        card = EmulatedCard(deck_uid(seed, index))
        reader = EmulatedReader("Personalisation station")
        reader.insert(card)
        category = rider_categories[index] if rider_categories else RiderCategory.GENERAL
        profile = Profile(
            card_number=first_number + index,
            rider_category=category,
            registered=False,
            status=CardStatus.ACTIVE,
            expiry_date=expiry_date,
            issue_date=issue_date,
        )
        personalise(
            reader,
            all_roles,
            profile,
            initial_balance_rupiah=balance,
            terminal_id=personalisation_terminal_id,
            time_unix_seconds=issue_time,
        )
        reader.remove()
        cards.append(card)
    return cards


def write_ksh_deck(
    path: Path, keys: KeyStore, balances_rupiah: Sequence[int], *, seed: str = "ksh-deck"
) -> None:
    save_deck(make_ksh_deck(keys, balances_rupiah, seed=seed), path)


__all__ = ["deck_uid", "load_deck", "make_ksh_deck", "save_deck", "write_ksh_deck"]
