"""The compiled tariff: lookup tables built once from a feed, read by every decision.

Nothing here parses text. `bus_terminals.fare.feed` builds a `Tariff`; `engine` only reads it
(the one mutable part is the bounded memo of leg prices, which never changes an answer).
Conventions: `any_index` (-1) in a key means "empty field" (matches per the regime);
`no_index` (0xFFFF) means "absent" in trip state.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import NamedTuple

#: A key component standing for an empty GTFS field (after "excluding listed" normalisation).
any_index = -1

#: Bounded memo of leg prices (entries); cleared when full so memory stays flat.
leg_price_memo_entries_max = 200_000

seconds_per_day = 86_400


class LegRule(NamedTuple):
    order: int  # file order, for stable tie-breaks
    priority: int
    from_timeframe_index: int  # any_index = does not affect matching
    to_timeframe_index: int
    product_index: int
    group_index: int  # any_index = no leg group
    label: str  # "fare_leg_rules.txt:LINE"


class TransferRule(NamedTuple):
    order: int
    key: tuple[int, int]  # (from group key, to group key) after normalisation
    transfer_count: int | None  # None when from != to; -1 = no limit
    duration_limit_s: int | None
    duration_limit_type: int  # 0 dep->arr, 1 dep->dep, 2 arr->dep, 3 arr->arr
    fare_transfer_type: int  # 0 A+AB, 1 A+AB+B, 2 AB
    product_index: int  # any_index = the transfer costs 0
    label: str
    count_max: int  # transfer_count as a bound on the current count (no limit: a huge number)


#: `TransferRule.count_max` when transfer_count is empty or -1.
transfer_count_unlimited = 1 << 30


class CapRule(NamedTuple):
    cap_id: str
    period: str  # "daily" | "weekly" | "rolling"
    period_days: int  # 1, 7, or N for rolling
    day_start_s: int  # service-day cut-off, seconds after local midnight
    amount_max: int | None  # minor units
    rides_max: int | None  # paid rides


class PassRule(NamedTuple):
    pass_id: str
    category_index: int  # any_index = any category
    network_index: int  # any_index = every network
    validity_days: int
    amount: int  # price of the pass (sold elsewhere), minor units


class LegMatch(NamedTuple):
    """The cheapest product pricing one (effective) leg for one rider, and what else could."""

    amount: int
    product_index: int
    rule: LegRule
    candidates: tuple[tuple[int, int], ...]  # (product_index, amount), cheapest first


@dataclass(slots=True, eq=False)
class Tariff:
    currency: str
    currency_decimals: int
    timezone_name: str
    # Local time: offset_s[i] applies from offset_start_s[i] (UTC) on; one entry for fixed zones.
    offset_start_s: tuple[int, ...]
    offset_s: tuple[int, ...]
    route_index: dict[str, int]
    route_network: tuple[int, ...]  # route index -> network index or any_index
    network_of_route: dict[str, int]  # route id -> network index or any_index
    network_ids: tuple[str, ...]
    stop_index: dict[str, int]
    stop_ids: tuple[str, ...]
    stop_station: tuple[int, ...]  # stop index -> its station's index (or itself)
    category_index: dict[str, int]
    category_ids: tuple[str, ...]
    default_category_id: str | None
    media_index: dict[str, int]
    media_ids: tuple[str, ...]
    product_ids: tuple[str, ...]
    # (product index, category index or any_index, media index or any_index) -> cheapest amount
    product_price: dict[tuple[int, int, int], int]
    has_negative_products: bool
    priority_regime: bool
    network_keys: tuple[tuple[int, ...], ...]  # network index (last = none) -> rule keys
    from_area_keys: tuple[tuple[int, ...], ...]  # stop index (last = unknown) -> rule keys
    to_area_keys: tuple[tuple[int, ...], ...]
    leg_rules: dict[tuple[int, int, int], tuple[LegRule, ...]]
    timeframe_ids: tuple[str, ...]
    timeframe_days: tuple[dict[int, tuple[tuple[int, int], ...]], ...]
    timeframe_bounds_s: tuple[int, ...]  # sorted start/end seconds of day over all timeframes
    # second of day -> index of the span between bounds it falls in (timeframes are constant
    # inside a span, so the leg memo keys on it)
    segment_of_second: tuple[int, ...]
    uses_timeframes: bool
    group_ids: tuple[str, ...]
    from_group_keys: tuple[int, ...]  # group index (last = none) -> transfer key
    to_group_keys: tuple[int, ...]
    transfer_rules: dict[tuple[int, int], tuple[TransferRule, ...]]
    transfer_labels: tuple[str, ...]  # transfer rule index -> label
    transfer_rule_list: tuple[TransferRule, ...]
    join_rules: dict[tuple[int, int], tuple[tuple[int, int], ...]]  # nets -> (from, to) stations
    caps: tuple[CapRule, ...]
    caps_for: dict[tuple[int, int], tuple[int, ...]]  # (category, media) -> cap indices
    passes: tuple[PassRule, ...]
    pass_index: dict[str, int]
    tag: int  # 4-bit fingerprint of the index tables (goes on the card)
    # (rider_category_id or None, fare_media_id or None) -> (category index, media index)
    rider_lookup: dict[tuple[str | None, str | None], tuple[int, int]]
    capped_riders: frozenset[tuple[int, int]]  # (category, medium) with at least one cap
    fixed_offset_s: int | None  # the zone's only offset, when it has one (no bisect needed)
    # The feed's service period: the first and last local day (days since 1970-01-01) of its
    # calendar (calendar.txt start/end dates, calendar_dates.txt added dates); None without one.
    # A tap no rule prices on a day outside it is charged the full fare (`engine.decide`).
    service_first_day: int | None
    service_last_day: int | None
    holiday_days: frozenset[int]  # public_holidays.txt, local days since 1970-01-01
    uses_public_holidays: bool  # some calendar.txt service has ksh_public_holidays 1 or 2
    # One local day per distinct timeframe pattern of the service period (which timeframes
    # hold which spans that day): every situation a leg can be priced in, for the full fare.
    pattern_days: tuple[int, ...]
    leg_memo: dict[tuple[int, ...], LegMatch | None] = field(default_factory=dict)
    # (network, from stop, category, medium) -> the full fare's leg match (`engine`); bounded
    # like leg_memo, and like it never changes an answer.
    full_fare_memo: dict[tuple[int, int, int, int], LegMatch | None] = field(default_factory=dict)

    def local_seconds(self, utc_s: int) -> int:
        """UTC epoch seconds -> local epoch seconds (days since epoch * 86400 + seconds of day)."""
        starts = self.offset_start_s
        if len(starts) == 1:
            return utc_s + self.offset_s[0]
        position = bisect.bisect_right(starts, utc_s) - 1
        return utc_s + self.offset_s[max(position, 0)]

    def format_amount(self, amount: int) -> str:
        """Minor units -> the feed's decimal text ("3500.00" for IDR, which has 2 in ISO 4217)."""
        if self.currency_decimals == 0:
            return str(amount)
        sign = "-" if amount < 0 else ""
        whole, minor = divmod(abs(amount), 10**self.currency_decimals)
        return f"{sign}{whole}.{minor:0{self.currency_decimals}d}"
