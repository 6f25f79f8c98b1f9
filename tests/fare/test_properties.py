"""Properties over generated tariffs and taps (Hypothesis).

The tariffs are small but use every mechanism: both empty-value regimes, areas, timeframes,
leg groups, all transfer types with counts and duration limits, join rules, two media, a
concession category and caps.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from bus_terminals.fare.engine import decide, legs_of_taps, price_journey
from bus_terminals.fare.feed import compile_feed
from bus_terminals.fare.model import FareDecision, FareOutcome, Tap, TripState, blank_trip_state
from bus_terminals.fare.rerate import rerate_day
from bus_terminals.fare.tariff import Tariff
from bus_terminals.fare.trip_state import decode_trip_state, encode_trip_state
from tests.fare.feeds import feed, utc

networks = ("n0", "n1", "n2")
routes = {"r0": "n0", "r1": "n1", "r2": "n2", "r3": ""}
stops = ("s0", "s1", "s2", "s3", "s4")
areas = ("z0", "z1", "z2")
start_s = utc("2025-03-10T05:00")  # a Monday


def _rows(header: str, rows: list[str]) -> str:
    return "\n".join([header, *rows])


@st.composite
def feeds(
    draw: st.DrawFn,
    negative: bool = False,
    caps: bool = True,
    ride_caps: bool = True,
    one_group: bool = False,
    every_medium: bool = False,
    timed: bool = False,
) -> dict[str, str]:
    amount = st.integers(-300 if negative else 0, 600)
    products = ("p0", "p1", "p2", "p3", "t0", "t1")
    product_rows = []
    for product in products:
        choices = ("", ("card", "cash")) if every_medium else ("", ("card", "cash"), ("card",))
        media = draw(st.sampled_from(choices))
        for medium in media if isinstance(media, tuple) else (media,):
            product_rows.append(f"{product},,{medium},{draw(amount)}")
        if draw(st.booleans()):
            product_rows.append(f"{product},reduced,,{draw(amount)}")
    priority = draw(st.booleans())
    leg_rules: dict[tuple[str, ...], str] = {}
    for _ in range(draw(st.integers(1, 8))):
        network = draw(st.sampled_from(("", *networks)))
        from_area = draw(st.sampled_from(("", *areas)))
        to_area = draw(st.sampled_from(("", *areas)))
        timeframe = draw(st.sampled_from(("peak", "off") if timed else ("", "", "peak", "off")))
        product = draw(st.sampled_from(products[:4]))
        group = "g" if one_group else f"g{network}"
        key = (network, from_area, to_area, timeframe, product)
        rank = draw(st.integers(0, 2)) if priority else ""
        leg_rules[key] = f"{group},{network},{from_area},{to_area},{timeframe},{product},{rank}"
    groups = sorted({row.split(",")[0] for row in leg_rules.values()})
    transfers: dict[tuple[str, ...], str] = {}
    for _ in range(draw(st.integers(0, 4))):
        source = draw(st.sampled_from(("", *groups)))
        target = draw(st.sampled_from(("", *groups)))
        count = str(draw(st.sampled_from((-1, 1, 2, 3)))) if source == target else ""
        limit = draw(st.sampled_from(("", "1800", "3600", "65534", "2678400")))
        limit_type = str(draw(st.integers(0, 3))) if limit else ""
        kind = draw(st.integers(0, 2))
        product = draw(st.sampled_from(("", "t0", "t1")))
        key = (source, target, product, count, limit)
        transfers[key] = f"{source},{target},{count},{limit},{limit_type},{kind},{product}"
    joins = {
        f"{draw(st.sampled_from(networks))},{draw(st.sampled_from(networks))},,"
        for _ in range(draw(st.integers(0, 2)))
    }
    files = {
        "routes": _rows(
            "route_id,route_type,network_id", [f"{r},3,{n}" for r, n in routes.items()]
        ),
        "stops": _rows("stop_id,stop_name", [f"{s},{s}" for s in stops]),
        "areas": _rows("area_id", list(areas)),
        "stop_areas": _rows(
            "area_id,stop_id",
            sorted(
                draw(
                    st.sets(
                        st.tuples(st.sampled_from(areas), st.sampled_from(stops)).map(",".join),
                        max_size=6,
                    )
                )
            ),
        ),
        "fare_media": "fare_media_id,fare_media_type\ncard,2\ncash,0",
        "rider_categories": "rider_category_id,rider_category_name,is_default_fare_category\n"
        "adult,Adult,1\nreduced,Reduced,0",
        "fare_products": _rows(
            "fare_product_id,rider_category_id,fare_media_id,amount,currency",
            [f"{row},EUR" for row in product_rows],
        ),
        "timeframes": "timeframe_group_id,start_time,end_time,service_id\n"
        "peak,07:00:00,09:00:00,weekdays\noff,09:00:00,24:00:00,all",
        "fare_leg_rules": _rows(
            "leg_group_id,network_id,from_area_id,to_area_id,from_timeframe_group_id,"
            "fare_product_id" + (",rule_priority" if priority else ""),
            [row if priority else row.rsplit(",", 1)[0] for row in leg_rules.values()],
        ),
        "fare_transfer_rules": _rows(
            "from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,duration_limit_type,"
            "fare_transfer_type,fare_product_id",
            list(transfers.values()),
        ),
        "fare_leg_join_rules": _rows(
            "from_network_id,to_network_id,from_stop_id,to_stop_id", sorted(joins)
        ),
    }
    if caps:
        cap_rows = []
        for position in range(draw(st.integers(0, 2))):
            period = draw(st.sampled_from(("daily", "weekly", "rolling")))
            days = str(draw(st.integers(1, 4))) if period == "rolling" else ""
            cut_off = draw(st.sampled_from(("", "03:00:00")))
            cap_amount = f"{draw(st.integers(0, 1500))}" if draw(st.booleans()) else ""
            rides = str(draw(st.integers(1, 4))) if ride_caps and draw(st.booleans()) else ""
            if not cap_amount and not rides:
                cap_amount = "10"
            currency = "EUR" if cap_amount else ""
            cap_rows.append(
                f"c{position},{period},{days},{cut_off},{cap_amount},{rides},{currency}"
            )
        files["fare_caps"] = _rows(
            "fare_cap_id,period,period_days,service_day_start_time,amount,ride_count,currency",
            cap_rows,
        )
    return feed(**files)


@st.composite
def card_days(draw: st.DrawFn, category: str | None = None) -> list[Tap]:
    rider = category or draw(st.sampled_from(("adult", "reduced")))
    medium = draw(st.sampled_from(("card", "cash")))
    time_s = start_s + draw(st.integers(0, 86_400 * 3))
    taps = []
    for _ in range(draw(st.integers(1, 12))):
        route = draw(st.sampled_from(sorted(routes)))
        stop = draw(st.sampled_from((None, *stops)))
        taps.append(Tap(time_s, route, stop, rider, medium))
        time_s += draw(st.sampled_from((0, 60, 600, 1800, 3600, 3601, 7200, 30_000, 86_400)))
    return taps


def through_the_card(tariff: Tariff, taps: list[Tap]) -> list[FareDecision]:
    """decide over a card's taps, writing and reading the 48-byte state between taps."""
    state: TripState = blank_trip_state
    decisions = []
    for tap in taps:
        decision = decide(tariff, state, tap)
        if decision.outcome is FareOutcome.priced:
            state = decode_trip_state(encode_trip_state(decision.state))
        decisions.append(decision)
    return decisions


@given(feeds(), card_days())
def test_no_negative_running_total_without_negative_products(
    texts: dict[str, str], taps: list[Tap]
) -> None:
    tariff = compile_feed(texts)
    assert not tariff.has_negative_products
    running = 0
    for decision in through_the_card(tariff, taps):
        running += decision.amount
        assert running >= 0
    journey = price_journey(tariff, legs_of_taps(taps), taps[0].rider_category_id, "card")
    running = 0
    for leg in journey.legs:
        running += leg.amount or 0
        assert running >= 0


@given(feeds(caps=False, one_group=True, every_medium=True), card_days("adult"))
def test_a_concession_never_costs_more_than_the_general_fare(
    texts: dict[str, str], taps: list[Tap]
) -> None:
    tariff = compile_feed(texts)
    legs = legs_of_taps(taps)
    for medium in ("card", "cash", None):
        general = price_journey(tariff, legs, "adult", medium)
        reduced = price_journey(tariff, legs, "reduced", medium)
        assert general.unknown_legs == reduced.unknown_legs
        if general.total is not None:
            assert reduced.total is not None
            assert reduced.total <= general.total


@given(feeds(), card_days())
def test_a_capped_period_never_totals_more_than_its_cap(
    texts: dict[str, str], taps: list[Tap]
) -> None:
    tariff = compile_feed(texts)
    paid: dict[tuple[int, int], int] = defaultdict(int)
    rides: dict[tuple[int, int], int] = defaultdict(int)
    category = tariff.category_index[taps[0].rider_category_id]
    medium = tariff.media_index[taps[0].fare_media_id]
    cap_indices = tariff.caps_for[(category, medium)]
    for decision in through_the_card(tariff, taps):
        if decision.outcome is not FareOutcome.priced:
            continue
        for slot_position, cap_index in enumerate(cap_indices):
            period = decision.state.caps[slot_position].period_day
            paid[(cap_index, period)] += decision.amount
            rides[(cap_index, period)] += decision.amount > 0
    for (cap_index, _), total in paid.items():
        cap = tariff.caps[cap_index]
        if cap.amount_max is not None:
            assert total <= cap.amount_max
    for (cap_index, _), count in rides.items():
        cap = tariff.caps[cap_index]
        if cap.rides_max is not None:
            assert count <= cap.rides_max


@given(feeds(negative=True), card_days(), card_days())
def test_adding_a_tap_never_changes_what_earlier_taps_paid(
    texts: dict[str, str], taps: list[Tap], other_card: list[Tap]
) -> None:
    tariff = compile_feed(texts)
    everything = [decision.amount for decision in through_the_card(tariff, taps)]
    for end in range(len(taps)):
        prefix = [decision.amount for decision in through_the_card(tariff, taps[:end])]
        assert prefix == everything[:end]
    alone = rerate_day(tariff, {"a": taps})
    together = rerate_day(tariff, {"a": taps, "b": other_card})
    assert alone["a"] == together["a"]


def _cap_model(tariff: Tariff, taps: list[Tap], amounts: list[int | None]) -> list[int]:
    """Caps applied on top of journey prices, written independently of the engine."""
    category = tariff.category_index[taps[0].rider_category_id]
    medium = tariff.media_index[taps[0].fare_media_id]
    caps = [tariff.caps[index] for index in tariff.caps_for[(category, medium)]]
    windows: list[tuple[int, int, int]] = [(-(10**9), 0, 0)] * len(caps)  # start, paid, rides
    charged = []
    offset = tariff.offset_s[0]
    for tap, amount in zip(taps, amounts):
        if amount is None:
            charged.append(0)
            continue
        periods = []
        for cap, (window, paid, ride_count) in zip(caps, windows):
            day = (tap.time_s + offset - cap.day_start_s) // 86_400
            if cap.period == "daily":
                period = day
            elif cap.period == "weekly":
                period = day - (day + 3) % 7
            else:
                period = window if 0 <= day - window < cap.period_days else day
            periods.append((period, paid, ride_count) if period == window else (period, 0, 0))
        for cap, (_, paid, ride_count) in zip(caps, periods):
            if amount > 0 and cap.amount_max is not None:
                amount = max(min(amount, cap.amount_max - paid), 0)
            if amount > 0 and cap.rides_max is not None and ride_count >= cap.rides_max:
                amount = 0
        if amount < 0 and periods:
            amount = max(amount, -min(paid for _, paid, _ in periods))
        windows = [(p, paid + amount, rides + (amount > 0)) for p, paid, rides in periods]
        charged.append(amount)
    return charged


@given(feeds(negative=True), card_days())
def test_decide_over_a_day_equals_price_journey_with_caps_on_top(
    texts: dict[str, str], taps: list[Tap]
) -> None:
    tariff = compile_feed(texts)
    decisions = through_the_card(tariff, taps)
    journey = price_journey(
        tariff, legs_of_taps(taps), taps[0].rider_category_id, taps[0].fare_media_id
    )
    unknown = [d.outcome is FareOutcome.unknown_fare for d in decisions]
    assert [i for i, flag in enumerate(unknown) if flag] == list(journey.unknown_legs)
    assert [d.amount_before_caps for d in decisions] == [leg.amount or 0 for leg in journey.legs]
    expected = _cap_model(tariff, taps, [leg.amount for leg in journey.legs])
    assert [d.amount for d in decisions] == expected


@given(feeds(negative=True), card_days())
def test_results_depend_only_on_the_arguments(texts: dict[str, str], taps: list[Tap]) -> None:
    warm = compile_feed(texts)
    first = through_the_card(warm, taps)
    assert through_the_card(warm, taps) == first  # memo filled
    cold = compile_feed(texts)
    assert through_the_card(cold, list(taps)) == first  # fresh tables, empty memo
    warm.leg_memo.clear()
    assert [decide(warm, blank_trip_state, tap) for tap in taps] == [
        decide(cold, blank_trip_state, tap) for tap in taps
    ]


#: Moves a card's days (from `start_s`, a Monday) to the same weekdays after the feeds'
#: calendar ends (2026-12-31): 2027-01-04 is a Monday.
after_service_s = utc("2027-01-04T00:00") - utc("2025-03-10T00:00")


def _after_service(texts: dict[str, str], taps: list[Tap]) -> None:
    """Taps after the calendar ends: a rider who can buy a leg in service is never refused; a
    tap no rule prices pays the highest single-leg fare the rider pays there in service (from
    a blank card, at every half past the hour of a week: timeframes change on whole hours),
    on a fresh trip, with caps only lowering it."""
    tariff = compile_feed(texts)
    late = [replace(tap, time_s=tap.time_s + after_service_s) for tap in taps]
    monday = utc("2025-03-10T00:00")
    for tap, decision in zip(late, through_the_card(tariff, late)):
        in_service = [
            step.amount_before_caps
            for second in range(1800, 7 * 86_400, 3600)
            for step in [decide(tariff, blank_trip_state, replace(tap, time_s=monday + second))]
            if step.outcome is FareOutcome.priced
        ]
        if not in_service:
            # No single leg from a blank card is priced: nothing can be charged as a full fare.
            # A rule without a timeframe may still price it as part of the card's trip (a leg
            # joined to the one before: Hypothesis found `r1` tapped twice, the second at a
            # stop the rules cannot place, priced 0 by the join), as on any day.
            assert decision.outcome in (FareOutcome.unknown_fare, FareOutcome.priced)
            if decision.outcome is FareOutcome.priced:
                assert decision.fare_leg_rule is not None and decision.state.has_leg
            continue
        assert decision.outcome is not FareOutcome.unknown_fare
        if decision.outcome is FareOutcome.full_fare_no_service:
            assert decision.amount_before_caps == max(in_service)
            assert not decision.state.has_leg
            if decision.amount_before_caps >= 0:
                assert 0 <= decision.amount <= decision.amount_before_caps
        else:  # a rule without a timeframe priced it, as on any day
            rules = csv.DictReader(texts["fare_leg_rules.txt"].splitlines())
            assert not all(rule["from_timeframe_group_id"] for rule in rules)


@given(feeds(negative=True), card_days())
def test_out_of_service_a_tap_is_never_refused_and_an_unpriced_one_pays_the_full_fare(
    texts: dict[str, str], taps: list[Tap]
) -> None:
    _after_service(texts, taps)


@given(feeds(negative=True, timed=True), card_days())
def test_out_of_service_a_timed_feed_charges_every_tap_the_full_fare(
    texts: dict[str, str], taps: list[Tap]
) -> None:
    _after_service(texts, taps)
