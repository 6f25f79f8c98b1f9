"""Deciding fares: `decide` for one tap-on, `price_journey` for a complete journey.

Pure: no I/O, no clock, no datetime. Both APIs run the same leg step (`_step`) over a
`TripState`, so they agree by construction on everything the card carries; what differs is
only what each knows. A journey knows where each leg ends and when it arrives; a tap-on does
not, so for `decide` the destination is unknown (only rules with an empty `to_area_id` can
match) and the leg's arrival is its tap time.

Semantics (GTFS-Fares v2 as in reference/fares.md, with our choices where the spec is silent):
- Leg rules: the two empty-value regimes, keyed on the presence of the `rule_priority` column.
  A rule whose product the rider cannot buy (category/medium) does not match; among what is
  left the highest priority wins, then the cheapest product for the rider (ties: file order).
- Timeframes: local calendar date of the event, start inclusive, end exclusive.
- Join rules make an effective fare leg, charged as if it had been one leg from the start: a
  joined leg pays the change in the effective leg's product (nothing when a type 0 or 2
  transfer priced the effective leg). The fare transfer into the effective leg is the one
  chosen when its first leg was boarded. Joins are considered only within `join_window_s`.
- Transfer rules are directional; for from == to, the minimum transfer_count >= the current
  count wins (-1 = no limit); duration_limit is measured from the first leg of the chain and
  a transfer exactly at the limit is still within it. Type 0 pays AB, type 1 pays AB + B,
  type 2 pays AB - A when A began the journey, else BC (the spec's S + BC).
- Amounts are signed. Even without negative products one leg can come out negative: a type 2
  transfer whose AB is below what A paid, or a join that makes the effective leg cheaper. The
  running total of a journey or a card's day never goes below 0 then (the spec's arithmetic).
- Out of service (ours, `decide` only): a tap no rule prices on a local date outside the feed's
  service period (its calendar ran out, or has not begun) is `full_fare_no_service`: the full
  fare (`_full_fare`) after passes and caps, on a fresh trip. A validator never refuses a rider
  because the feed's calendar is stale; the outcome says why it charged. `price_journey` leaves
  such legs unknown: it prices what the feed says, so it agrees with `decide` only in service.
"""

from __future__ import annotations

from collections.abc import Sequence

from bus_terminals.fare.model import (
    CapSlot,
    FareDecision,
    FareOutcome,
    JourneyPrice,
    Leg,
    LegPrice,
    Tap,
    TripState,
    blank_cap_slot,
    blank_trip_state,
    no_index,
)
from bus_terminals.fare.tariff import (
    LegMatch,
    LegRule,
    Tariff,
    TransferRule,
    any_index,
    leg_price_memo_entries_max,
    seconds_per_day,
)

#: Legs join into one effective fare leg only if the effective leg started less than this
#: long ago (the card keeps the start as a 16-bit delta).
join_window_s = 0xFFFF
_missing = LegMatch(0, 0, LegRule(0, 0, 0, 0, 0, 0, ""), ())  # memo sentinel
#: The card keeps the transfer count in 4 bits.
transfer_count_saturated = 15


def _in_timeframe(tariff: Tariff, timeframe: int, day: int, second_of_day: int) -> bool:
    spans = tariff.timeframe_days[timeframe].get(day)
    if spans is None:
        return False
    return any(start <= second_of_day < end for start, end in spans)


def _match_leg_uncached(
    tariff: Tariff,
    network: int,
    from_stop: int,
    to_stop: int,
    departure_local_s: int,
    arrival_local_s: int,
    category: int,
    medium: int,
) -> LegMatch | None:
    departure_day, departure_second = divmod(departure_local_s, seconds_per_day)
    arrival_day, arrival_second = divmod(arrival_local_s, seconds_per_day)
    matched: list[LegRule] = []
    rules_by_key = tariff.leg_rules
    for network_key in tariff.network_keys[network]:
        for from_key in tariff.from_area_keys[from_stop]:
            for to_key in tariff.to_area_keys[to_stop]:
                rules = rules_by_key.get((network_key, from_key, to_key))
                if rules is None:
                    continue
                for rule in rules:
                    if rule.from_timeframe_index != any_index and not _in_timeframe(
                        tariff, rule.from_timeframe_index, departure_day, departure_second
                    ):
                        continue
                    if rule.to_timeframe_index != any_index and not _in_timeframe(
                        tariff, rule.to_timeframe_index, arrival_day, arrival_second
                    ):
                        continue
                    if (rule.product_index, category, medium) in tariff.product_price:
                        matched.append(rule)
    if not matched:
        return None
    if tariff.priority_regime:
        top = max(rule.priority for rule in matched)
        matched = [rule for rule in matched if rule.priority == top]
    priced = sorted(
        ((tariff.product_price[(rule.product_index, category, medium)], rule.order, rule))
        for rule in matched
    )
    amount, _, best = priced[0]
    candidates: list[tuple[int, int]] = []
    for candidate_amount, _, rule in priced:
        if all(product != rule.product_index for product, _ in candidates):
            candidates.append((rule.product_index, candidate_amount))
    return LegMatch(amount, best.product_index, best, tuple(candidates))


def _memo_key(
    tariff: Tariff,
    network: int,
    from_stop: int,
    to_stop: int,
    departure_local_s: int,
    arrival_local_s: int,
    category: int,
    medium: int,
) -> tuple[int, ...]:
    """What a leg's price depends on: the same key `_step` builds inline."""
    if not tariff.uses_timeframes:
        return (network, from_stop, to_stop, category, medium)
    segment = tariff.segment_of_second
    departure_day, departure_second = divmod(departure_local_s, seconds_per_day)
    if departure_local_s == arrival_local_s:
        return (
            network,
            from_stop,
            to_stop,
            category,
            medium,
            departure_day,
            segment[departure_second],
        )
    arrival_day, arrival_second = divmod(arrival_local_s, seconds_per_day)
    return (
        network,
        from_stop,
        to_stop,
        category,
        medium,
        departure_day,
        segment[departure_second],
        arrival_day,
        segment[arrival_second],
    )


def _match_leg(
    tariff: Tariff,
    network: int,
    from_stop: int,
    to_stop: int,
    departure_local_s: int,
    arrival_local_s: int,
    category: int,
    medium: int,
) -> LegMatch | None:
    """The cheapest product for this leg and rider, memoised on what the answer depends on."""
    key = _memo_key(
        tariff, network, from_stop, to_stop, departure_local_s, arrival_local_s, category, medium
    )
    memo = tariff.leg_memo
    try:
        return memo[key]
    except KeyError:
        pass
    match = _match_leg_uncached(
        tariff,
        network,
        from_stop,
        to_stop,
        departure_local_s,
        arrival_local_s,
        category,
        medium,
    )
    _remember_leg(tariff, key, match)
    return match


def _remember_leg(tariff: Tariff, key: tuple[int, ...], match: LegMatch | None) -> None:
    memo = tariff.leg_memo
    if len(memo) >= leg_price_memo_entries_max:
        memo.clear()
    memo[key] = match


def _joins(tariff: Tariff, state: TripState, network: int, from_stop: int, time_s: int) -> bool:
    """Does a leg boarding at `from_stop` on `network` join the previous one (join rules)?"""
    if time_s - state.effective_start_s >= join_window_s:
        return False
    candidates = tariff.join_rules.get((state.last_network_index, network))
    if candidates is None:
        return False
    stations = tariff.stop_station
    previous_stop = state.last_to_stop_index
    previous = stations[previous_stop] if previous_stop != no_index else no_index
    boarding = stations[from_stop] if from_stop != no_index else no_index
    for from_station, to_station in candidates:
        if from_station == any_index:
            # Same station required; an unknown end (tap-on only) cannot refute it.
            if no_index in (previous, boarding) or previous == boarding:
                return True
        elif previous == from_station and boarding == to_station:
            return True
    return False


#: One leg's result: amount before passes and caps, state after it, the leg match, the fare
#: transfer rule applied (or None), and whether the leg joined the previous one.
_StepResult = tuple[int, TripState, LegMatch, TransferRule | None, bool]
_new_state = tuple.__new__  # builds a TripState from a tuple without the keyword wrapper


def _local(tariff: Tariff, utc_s: int) -> int:
    fixed = tariff.fixed_offset_s
    return utc_s + fixed if fixed is not None else tariff.local_seconds(utc_s)


def _step(
    tariff: Tariff,
    state: TripState,
    network: int,
    from_stop: int,
    to_stop: int,
    departure_s: int,
    arrival_s: int,
    category: int,
    medium: int,
) -> _StepResult | None:
    """One leg over the trip state: the leg's product, then `_charge_leg`; None: no rule
    prices it.

    Every tap runs this, so the common path stays inline (the memo lookup here, the fare
    transfer and the new state in `_charge_leg`) and only rare cases are functions of their
    own: a leg that joins the previous one (`_step_joined`), a leg of a journey (`_memo_key`),
    a memo miss. A function choosing the fare transfer and returning a record of its choice
    cost 6-9% of decisions per second (the budget: 3%); the one call to `_charge_leg` costs
    under 1% (0.6% more instructions per decision).
    """
    has_previous = state.has_leg and state.tariff_tag == tariff.tag
    if (
        has_previous
        and tariff.join_rules
        and _joins(tariff, state, network, from_stop, departure_s)
    ):
        return _step_joined(tariff, state, network, to_stop, arrival_s, category, medium)

    # The memo lookup of _match_leg, inlined: this is the hot path of every tap.
    fixed = tariff.fixed_offset_s
    if fixed is not None:
        departure_local_s = departure_s + fixed
        arrival_local_s = arrival_s + fixed
    else:
        departure_local_s = tariff.local_seconds(departure_s)
        arrival_local_s = tariff.local_seconds(arrival_s)
    if not tariff.uses_timeframes:
        key: tuple[int, ...] = (network, from_stop, to_stop, category, medium)
    elif departure_s == arrival_s:  # a tap-on: one instant, a shorter key
        day, second = divmod(departure_local_s, seconds_per_day)
        key = (network, from_stop, to_stop, category, medium, day, tariff.segment_of_second[second])
    else:  # a leg of a journey (`price_journey`), never a tap
        key = _memo_key(
            tariff,
            network,
            from_stop,
            to_stop,
            departure_local_s,
            arrival_local_s,
            category,
            medium,
        )
    match = tariff.leg_memo.get(key, _missing)
    if match is _missing:  # the key is built: price the leg and remember it under that key
        match = _match_leg_uncached(
            tariff,
            network,
            from_stop,
            to_stop,
            departure_local_s,
            arrival_local_s,
            category,
            medium,
        )
        _remember_leg(tariff, key, match)
    if match is None:
        return None
    return _charge_leg(
        tariff,
        state,
        has_previous,
        match,
        network,
        from_stop,
        to_stop,
        departure_s,
        arrival_s,
        category,
        medium,
    )


def _charge_leg(
    tariff: Tariff,
    state: TripState,
    has_previous: bool,
    match: LegMatch,
    network: int,
    from_stop: int,
    to_stop: int,
    departure_s: int,
    arrival_s: int,
    category: int,
    medium: int,
) -> _StepResult:
    """What a matched leg is charged (its product or a fare transfer) and the state after it."""
    amount = leg_amount = match.amount
    group = match.rule.group_index
    chosen: TransferRule | None = None
    chain_rule = no_index
    chain_count = 0
    chain_departure_s = departure_s
    chain_arrival_s = arrival_s
    if has_previous:
        key = (tariff.from_group_keys[state.effective_group_index], tariff.to_group_keys[group])
        rules = tariff.transfer_rules.get(key)
        if rules is not None:
            previous_chain_rule = state.chain_rule_index
            if (
                previous_chain_rule != no_index
                and tariff.transfer_rule_list[previous_chain_rule].key == key
            ):  # the chain goes on: count on, measure from its first leg
                count = min(state.chain_transfer_count + 1, transfer_count_saturated)
                anchor_departure_s = state.chain_departure_s
                anchor_arrival_s = state.chain_arrival_s
            else:
                count = 1
                anchor_departure_s = state.effective_start_s
                anchor_arrival_s = state.last_time_s
            for rule in rules:
                order, _, _, limit_s, limit_type, kind, product, _, count_max = rule
                if count > count_max:
                    continue
                if limit_s is not None:
                    # since the chain's first leg: 0 dep->arr, 1 dep->dep, 2 arr->dep, 3 arr->arr
                    if limit_type == 1:
                        elapsed_s = departure_s - anchor_departure_s
                    elif limit_type == 0:
                        elapsed_s = arrival_s - anchor_departure_s
                    elif limit_type == 2:
                        elapsed_s = departure_s - anchor_arrival_s
                    else:
                        elapsed_s = arrival_s - anchor_arrival_s
                    if elapsed_s > limit_s:
                        continue
                if product == any_index:
                    transfer_amount = 0
                else:
                    price = tariff.product_price.get((product, category, medium))
                    if price is None:
                        continue
                    transfer_amount = price
                if kind == 0:
                    amount = transfer_amount
                elif kind == 1:
                    amount = transfer_amount + leg_amount
                elif previous_chain_rule != no_index:
                    amount = transfer_amount  # "S + BC": the previous leg was a transfer
                else:
                    amount = transfer_amount - state.effective_charged_amount
                chosen = rule
                chain_rule = order
                chain_count = count
                chain_departure_s = anchor_departure_s
                chain_arrival_s = anchor_arrival_s
                break
    new_state: TripState = _new_state(
        TripState,
        (
            tariff.tag,
            True,
            arrival_s,
            departure_s,
            from_stop,
            False,
            group,
            leg_amount,
            amount,
            network,
            to_stop,
            chain_rule,
            chain_count,
            chain_departure_s,
            chain_arrival_s,
            state.pass_index,
            state.pass_last_day,
            state.caps,
        ),
    )
    return amount, new_state, match, chosen, False


def _step_joined(
    tariff: Tariff,
    state: TripState,
    network: int,
    to_stop: int,
    arrival_s: int,
    category: int,
    medium: int,
) -> _StepResult | None:
    """A leg that joins the previous one (join rules): the effective leg, priced as one leg
    from its start; None: no rule prices the effective leg."""
    mixed = state.effective_network_mixed or state.last_network_index != network
    match = _match_leg(
        tariff,
        no_index if mixed else network,
        state.effective_from_stop_index,
        to_stop,
        _local(tariff, state.effective_start_s),
        _local(tariff, arrival_s),
        category,
        medium,
    )
    if match is None:
        return None
    # The effective leg is charged as if it had been one leg from the start: only a
    # charge that includes the leg's own product (no transfer, or type 1) changes.
    chain_rule_index = state.chain_rule_index
    if (
        chain_rule_index == no_index
        or tariff.transfer_rule_list[chain_rule_index].fare_transfer_type == 1
    ):
        amount = match.amount - state.effective_product_amount
    else:
        amount = 0
    joined_state = state._replace(
        last_time_s=arrival_s,
        effective_network_mixed=mixed,
        effective_group_index=match.rule.group_index,
        effective_product_amount=match.amount,
        effective_charged_amount=state.effective_charged_amount + amount,
        last_network_index=network,
        last_to_stop_index=to_stop,
    )
    return amount, joined_state, match, None, True


def _unpriced(outcome: FareOutcome, state: TripState) -> FareDecision:
    return FareDecision(outcome, 0, state, None, None, None, None, None, 0)


def _period_day(cap_period: str, period_days: int, service_day: int, slot: CapSlot) -> int:
    if cap_period == "daily":
        return service_day
    if cap_period == "weekly":
        return service_day - (service_day + 3) % 7  # the Monday (1970-01-01 was a Thursday)
    if slot.period_day == 0 or service_day - slot.period_day >= period_days:
        return service_day  # a rolling window opens at the first tap after the last one closed
    return slot.period_day


def apply_caps(
    tariff: Tariff, state: TripState, amount: int, local_s: int, category: int, medium: int
) -> tuple[int, tuple[CapSlot, ...], str | None]:
    """Limit `amount` by the caps of this category and medium; return it and the new slots."""
    cap_indices = tariff.caps_for[(category, medium)]
    if not cap_indices:
        return amount, state.caps, None
    caps = tariff.caps
    old_slots = state.caps
    slots: list[CapSlot] = []
    limiting: str | None = None
    for position, cap_index in enumerate(cap_indices):
        cap = caps[cap_index]
        slot = old_slots[position] if position < len(old_slots) else blank_cap_slot
        service_day = (local_s - cap.day_start_s) // seconds_per_day
        period_day = _period_day(cap.period, cap.period_days, service_day, slot)
        if period_day != slot.period_day:
            slot = CapSlot(period_day, 0, 0)
        slots.append(slot)
        if amount > 0 and cap.amount_max is not None:
            remaining = cap.amount_max - slot.paid_amount
            if amount > remaining:
                amount = max(remaining, 0)
                limiting = cap.cap_id
        if amount > 0 and cap.rides_max is not None and slot.paid_rides >= cap.rides_max:
            amount = 0
            limiting = cap.cap_id
    if amount < 0:
        # A credit (type 2 transfer, cheaper joined leg) never returns more than the card
        # paid in the current periods: what a cap waived is not refunded.
        floor = -min(slot.paid_amount for slot in slots)
        if amount < floor:
            amount = min(floor, 0)
            limiting = caps[cap_indices[0]].cap_id
    paid_ride = 1 if amount > 0 else 0
    new_slots = tuple(
        CapSlot(slot.period_day, slot.paid_amount + amount, min(slot.paid_rides + paid_ride, 255))
        for slot in slots
    )
    return amount, new_slots, limiting


def _resolve(
    tariff: Tariff, category_id: str | None, media_id: str | None
) -> tuple[int, int] | FareOutcome:
    """Rider category and medium ids -> indices (None: default category / any medium)."""
    found = tariff.rider_lookup.get((category_id, media_id))
    if found is not None:
        return found
    category = any_index
    if tariff.category_ids:
        if category_id is not None and category_id not in tariff.category_index:
            return FareOutcome.unknown_rider_category
        effective = category_id if category_id is not None else tariff.default_category_id
        category = tariff.category_index[effective] if effective is not None else any_index
    medium = any_index
    if tariff.media_ids and media_id is not None:
        if media_id not in tariff.media_index:
            return FareOutcome.unknown_fare_media
        medium = tariff.media_index[media_id]
    return category, medium


def _full_fare(
    tariff: Tariff, network: int, stop: int, category: int, medium: int
) -> LegMatch | None:
    """The full fare of a leg boarded at `stop` on `network`, for this rider (category and
    medium): the highest price the feed asks them for one leg at any time it prices one (each
    timeframe pattern of its service period, each span between timeframe bounds), from the rules
    a tap-on can match (destination unknown). So a discount limited in time (a student rate on
    school days, an off-peak rate) does not apply, a concession that holds at all times does,
    and no fare transfer. Ties: the earliest day and time. None: the rider can buy nothing."""
    key = (network, stop, category, medium)
    memo = tariff.full_fare_memo
    if key in memo:
        return memo[key]
    best: LegMatch | None = None
    for day in tariff.pattern_days or (0,):
        for second in tariff.timeframe_bounds_s:
            if second >= seconds_per_day:
                continue
            local_s = day * seconds_per_day + second
            match = _match_leg(tariff, network, stop, no_index, local_s, local_s, category, medium)
            if match is not None and (best is None or match.amount > best.amount):
                best = match
    if len(memo) >= leg_price_memo_entries_max:
        memo.clear()
    memo[key] = best
    return best


def _forget_trip(state: TripState) -> TripState:
    """Keep what the card paid (caps) and holds (pass); drop the trip part."""
    return blank_trip_state._replace(
        pass_index=state.pass_index, pass_last_day=state.pass_last_day, caps=state.caps
    )


def decide(tariff: Tariff, state: TripState, tap: Tap) -> FareDecision:
    """Price one tap-on from what the card carries; return the amount, new state and why."""
    network = tariff.network_of_route.get(tap.route_id)
    if network is None:
        return _unpriced(FareOutcome.unknown_route, state)
    resolved = tariff.rider_lookup.get((tap.rider_category_id, tap.fare_media_id))
    if resolved is None:
        slow = _resolve(tariff, tap.rider_category_id, tap.fare_media_id)
        if isinstance(slow, FareOutcome):
            return _unpriced(slow, state)
        resolved = slow
    category, medium = resolved
    stop = tariff.stop_index.get(tap.stop_id or "", no_index)
    time_s = tap.time_s
    try:
        step = _step(tariff, state, network, stop, no_index, time_s, time_s, category, medium)
    except IndexError:
        # Same 4-bit tag but indices from another tariff: start a fresh trip.
        state = _forget_trip(state)
        step = _step(tariff, state, network, stop, no_index, time_s, time_s, category, medium)
    outcome = _priced
    if step is None:
        # No rule prices the tap. On a date the feed's calendar does not cover (it has run
        # out, or has not begun) the feed cannot say, and the tap is not refused for that:
        # the full fare is due, after passes and caps, on a fresh trip (no fare transfer).
        first_day, last_day = tariff.service_first_day, tariff.service_last_day
        if first_day is None or last_day is None:
            return _unpriced(FareOutcome.unknown_fare, state)
        day = _local(tariff, time_s) // seconds_per_day
        if first_day <= day <= last_day:
            return _unpriced(FareOutcome.unknown_fare, state)
        full = _full_fare(tariff, network, stop, category, medium)
        if full is None:
            return _unpriced(FareOutcome.unknown_fare, state)
        outcome = FareOutcome.full_fare_no_service
        amount, new_state, match, transfer = full.amount, _forget_trip(state), full, None
    else:
        amount, new_state, match, transfer, _ = step
    before_caps = amount
    pass_id: str | None = None
    if state.pass_index:
        local_s = _local(tariff, time_s)
        pass_position = state.pass_index - 1
        if pass_position < len(tariff.passes):
            rule = tariff.passes[pass_position]
            day = local_s // seconds_per_day
            if (
                state.pass_last_day - rule.validity_days < day <= state.pass_last_day
                and rule.category_index in (any_index, category)
                and rule.network_index in (any_index, network)
            ):
                amount = 0
                before_caps = 0
                pass_id = rule.pass_id
    cap_id: str | None = None
    if tariff.capped_riders and (category, medium) in tariff.capped_riders:
        amount, slots, cap_id = apply_caps(
            tariff, state, amount, _local(tariff, time_s), category, medium
        )
        new_state = new_state._replace(caps=slots)
    return _new_decision(
        FareDecision,
        (
            outcome,
            amount,
            new_state,
            tariff.product_ids[match.product_index],
            match.rule.label,
            transfer.label if transfer is not None else None,
            cap_id,
            pass_id,
            before_caps,
        ),
    )


_priced = FareOutcome.priced
_new_decision = tuple.__new__


def activate_pass(
    tariff: Tariff, state: TripState, pass_id: str, first_day_utc_s: int
) -> TripState:
    """Put a period pass on the card, valid from the local date of `first_day_utc_s`."""
    position = tariff.pass_index[pass_id]
    first_day = tariff.local_seconds(first_day_utc_s) // seconds_per_day
    last_day = first_day + tariff.passes[position].validity_days - 1
    return state._replace(pass_index=position + 1, pass_last_day=last_day)


def price_journey(
    tariff: Tariff,
    legs: Sequence[Leg],
    rider_category_id: str | None = None,
    fare_media_id: str | None = None,
) -> JourneyPrice:
    """Price a complete journey: each leg's product, the transfer rules applied, the total.

    `rider_category_id` None means the feed's default category; `fare_media_id` None means any
    medium (the cheapest for the rider). Caps and passes are not applied (they belong to a
    card's history, see `decide`); unknown legs are listed and make the total None.
    """
    resolved = _resolve(tariff, rider_category_id, fare_media_id)
    assert not isinstance(resolved, FareOutcome), f"unknown {resolved.value}"
    category, medium = resolved
    state = blank_trip_state
    prices: list[LegPrice] = []
    unknown: list[int] = []
    total = 0
    for position, leg in enumerate(legs):
        route = tariff.route_index.get(leg.route_id)
        step = None
        if route is not None:
            from_stop = tariff.stop_index.get(leg.from_stop_id or "", no_index)
            to_stop = tariff.stop_index.get(leg.to_stop_id or "", no_index)
            step = _step(
                tariff,
                state,
                tariff.route_network[route],
                from_stop,
                to_stop,
                leg.departure_s,
                leg.arrival_s,
                category,
                medium,
            )
        if step is None:
            unknown.append(position)
            prices.append(LegPrice(None, None, None, None, None, (), False))
            continue
        amount, state, match, transfer, joined = step
        total += amount
        prices.append(
            LegPrice(
                amount,
                tariff.product_ids[match.product_index],
                match.rule.label,
                transfer.label if transfer is not None else None,
                tariff.product_ids[transfer.product_index]
                if transfer is not None and transfer.product_index != any_index
                else None,
                tuple(
                    (tariff.product_ids[product], candidate_amount)
                    for product, candidate_amount in match.candidates
                ),
                joined,
            )
        )
    return JourneyPrice(tariff.currency, None if unknown else total, tuple(prices), tuple(unknown))


def legs_of_taps(taps: Sequence[Tap]) -> list[Leg]:
    """The journey a run of tap-ons describes: destinations unknown, arrival = tap time."""
    return [Leg(tap.route_id, tap.stop_id, None, tap.time_s, tap.time_s) for tap in taps]
