"""Records of the fare core: taps, legs, trip state, decisions, and the feed error.

Hot-path records (`TripState`, `FareDecision`, `LegPrice`) are `NamedTuple`s: immutable like a
frozen dataclass, but built by one C call instead of one `object.__setattr__` per field, which
is what lets `decide` run at several hundred thousand decisions per second in CPython.
Times are integer seconds; amounts are integers in the feed currency's minor units.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

#: Index value meaning "none" in trip state fields that hold a compiled index (0xFFFF on the card).
no_index = -1


class FeedError(Exception):
    """A feed file is broken. Names the file, the line (1 = header) and the field."""

    def __init__(self, file_name: str, line: int, field: str, message: str) -> None:
        self.file_name = file_name
        self.line = line
        self.field = field
        self.message = message
        super().__init__(f"{file_name}:{line}: {field}: {message}")


class TripStateError(ValueError):
    """Bytes read from the card's trip-state file are not a trip state we can decode."""


class FareOutcome(enum.Enum):
    """Business outcome of a fare decision (the validator acts on it)."""

    priced = "priced"  # amount is due (may be 0: transfer, pass, cap)
    # No fare leg rule prices this tap and its local date is outside the feed's service period
    # (the calendar has run out): the full fare is due, so the tap is never refused for the
    # operator's paperwork. `amount` is the full fare after passes and caps (see engine).
    full_fare_no_service = "full_fare_no_service"
    unknown_fare = "unknown_fare"  # no fare leg rule prices this tap (e.g. outside service hours)
    unknown_route = "unknown_route"  # the route id is not in the tariff
    unknown_rider_category = "unknown_rider_category"
    unknown_fare_media = "unknown_fare_media"


@dataclass(frozen=True, slots=True)
class Tap:
    """One tap-on, as the validator sees it.

    `time_s` is UTC epoch seconds (what the validator's clock gives cheaply); the tariff holds
    the agency time zone and turns it into local time itself. `stop_id` may be None when the
    validator does not know where the bus is. `fare_media_id` is the medium the card is
    (for a KSH card, the feed's transit-card medium).
    """

    time_s: int
    route_id: str
    stop_id: str | None
    rider_category_id: str
    fare_media_id: str


@dataclass(frozen=True, slots=True)
class Leg:
    """One leg of a complete journey; times are UTC epoch seconds."""

    route_id: str
    from_stop_id: str | None
    to_stop_id: str | None
    departure_s: int
    arrival_s: int


class CapSlot(NamedTuple):
    """One cap accumulator on the card: the period it counts, what was paid, paid rides."""

    period_day: int  # local service-day number (days since 1970-01-01) the period starts on
    paid_amount: int  # minor units paid in this period
    paid_rides: int


blank_cap_slot = CapSlot(0, 0, 0)


class TripState(NamedTuple):
    """What the card carries between taps (its trip-state file, 48 bytes encoded).

    Times are UTC epoch seconds; `*_index` fields hold compiled tariff indices (`no_index` when
    absent). The "effective leg" is the current leg joined with earlier ones by
    fare_leg_join_rules; the "chain" is the run of fare transfers it belongs to.
    """

    tariff_tag: int  # 4 bits of the tariff's index fingerprint; a mismatch drops the trip part
    has_leg: bool  # a previous leg exists
    last_time_s: int  # end of the previous leg (its arrival; a tap-on's own time)
    effective_start_s: int  # departure of the effective leg's first leg
    effective_from_stop_index: int
    effective_network_mixed: bool  # the effective leg spans networks (matches as no network)
    effective_group_index: int  # leg group of the effective leg
    effective_product_amount: int  # leg product price of the effective leg (for join deltas)
    effective_charged_amount: int  # what the effective leg was charged before caps
    last_network_index: int  # network of the previous leg (for join rules)
    last_to_stop_index: int  # where the previous leg ended, if known
    chain_rule_index: int  # fare transfer rule applied last in the current chain
    chain_transfer_count: int  # consecutive transfers made under that rule's leg groups
    chain_departure_s: int  # departure of the chain's first leg (duration_limit anchor)
    chain_arrival_s: int  # arrival of the chain's first leg
    pass_index: int  # 0 = none, else 1 + index into the tariff's passes
    pass_last_day: int  # last local date (days since epoch) the pass is valid on
    caps: tuple[CapSlot, ...]  # one slot per cap that applies to the card, in tariff order


blank_trip_state = TripState(
    tariff_tag=0,
    has_leg=False,
    last_time_s=0,
    effective_start_s=0,
    effective_from_stop_index=no_index,
    effective_network_mixed=False,
    effective_group_index=no_index,
    effective_product_amount=0,
    effective_charged_amount=0,
    last_network_index=no_index,
    last_to_stop_index=no_index,
    chain_rule_index=no_index,
    chain_transfer_count=0,
    chain_departure_s=0,
    chain_arrival_s=0,
    pass_index=0,
    pass_last_day=0,
    caps=(),
)


#: Outcomes whose amount is charged (the others charge nothing and keep the card's state).
charged_outcomes = frozenset({FareOutcome.priced, FareOutcome.full_fare_no_service})


class FareDecision(NamedTuple):
    """The answer to one tap: what to charge, the card's new state, and why."""

    outcome: FareOutcome
    amount: int  # minor units to debit (0 when not priced)
    state: TripState  # the state to write (the old one when not priced)
    fare_product_id: str | None  # leg product that priced the leg
    fare_leg_rule: str | None  # "fare_leg_rules.txt:LINE"
    fare_transfer_rule: str | None  # "fare_transfer_rules.txt:LINE"
    cap_id: str | None  # the cap that reduced the amount
    pass_id: str | None  # the pass that made the ride free
    amount_before_caps: int


class LegPrice(NamedTuple):
    """Price of one leg of a journey (`price_journey`)."""

    amount: int | None  # None: no rule prices the leg
    fare_product_id: str | None
    fare_leg_rule: str | None
    fare_transfer_rule: str | None
    transfer_fare_product_id: str | None
    candidates: tuple[tuple[str, int], ...]  # (fare_product_id, amount) that could price the leg
    joined_previous: bool  # the leg was joined to the previous one (fare_leg_join_rules)


@dataclass(frozen=True, slots=True)
class JourneyPrice:
    currency: str
    total: int | None  # None when any leg is unknown
    legs: tuple[LegPrice, ...]
    unknown_legs: tuple[int, ...]
