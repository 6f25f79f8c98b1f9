"""Re-rating for the back office: re-price a day of taps, card by card, in bulk.

Pure: the caller loads the taps (and each card's state at the start of the day, if known) and
gets back what each tap should have cost under `tariff`. Each card's taps are replayed in time
order through `decide`, so caps, passes and transfers come out exactly as a validator holding
this tariff would have charged them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from bus_terminals.fare.engine import decide
from bus_terminals.fare.model import Tap, TripState, blank_trip_state, charged_outcomes
from bus_terminals.fare.tariff import Tariff

#: Taps one card can have in a re-rated day; more is a data problem, not a rider.
card_taps_per_day_max = 1_000


@dataclass(frozen=True, slots=True)
class CardRerating:
    card_id: str
    total: int  # minor units over the priced taps
    amounts: tuple[int, ...]  # per tap, in time order (0 for an unpriced tap)
    unpriced: tuple[int, ...]  # positions of taps not charged (no rule prices them, in service)
    state: TripState  # the trip state after the last tap
    too_many_taps: bool = False  # more than card_taps_per_day_max: not re-rated, look at it


def group_taps_by_card(rows: Iterable[tuple[str, Tap]]) -> dict[str, list[Tap]]:
    """(card id, tap) rows -> taps per card."""
    grouped: dict[str, list[Tap]] = defaultdict(list)
    for card_id, tap in rows:
        grouped[card_id].append(tap)
    return grouped


def rerate_card(
    tariff: Tariff, card_id: str, taps: Sequence[Tap], state: TripState
) -> CardRerating:
    if len(taps) > card_taps_per_day_max:
        return CardRerating(card_id, 0, (), (), state, too_many_taps=True)
    ordered = sorted(taps, key=lambda tap: tap.time_s)
    amounts: list[int] = []
    unpriced: list[int] = []
    total = 0
    for position, tap in enumerate(ordered):
        decision = decide(tariff, state, tap)
        if decision.outcome in charged_outcomes:  # priced, or the full fare out of service
            state = decision.state
            total += decision.amount
            amounts.append(decision.amount)
        else:
            unpriced.append(position)
            amounts.append(0)
    return CardRerating(card_id, total, tuple(amounts), tuple(unpriced), state)


def rerate_day(
    tariff: Tariff,
    taps_by_card: Mapping[str, Sequence[Tap]],
    opening_states: Mapping[str, TripState] | None = None,
) -> dict[str, CardRerating]:
    """Re-price every card's taps; a card without an opening state starts blank."""
    states = opening_states or {}
    return {
        card_id: rerate_card(tariff, card_id, taps, states.get(card_id, blank_trip_state))
        for card_id, taps in taps_by_card.items()
    }
