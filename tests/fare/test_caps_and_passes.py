"""Our extensions: fare caps (daily with cut-off, weekly Mon-Sun, rolling, ride counts), passes."""

from __future__ import annotations

from bus_terminals.fare.engine import activate_pass, decide
from bus_terminals.fare.model import FareDecision, TripState, blank_trip_state
from bus_terminals.fare.trip_state import decode_trip_state, encode_trip_state
from tests.fare.feeds import tap, tariff

base = {
    "routes": "route_id,route_type,network_id\nr,3,n\nm,3,metro",
    "fare_media": "fare_media_id,fare_media_type\ncard,2\ncash,0",
    "rider_categories": (
        "rider_category_id,rider_category_name,is_default_fare_category\nadult,Adult,1\n"
        "child,Child,0"
    ),
    "fare_products": (
        "fare_product_id,rider_category_id,fare_media_id,amount,currency\n"
        "ride,,,2.00,EUR\nride,child,,1.00,EUR"
    ),
    "fare_leg_rules": "fare_product_id\nride",
}


def ride_all(t, times: list[str], category: str = "adult", medium: str = "card",  # type: ignore[no-untyped-def]
             state: TripState = blank_trip_state) -> list[FareDecision]:  # fmt: skip
    decisions = []
    for time in times:
        decision = decide(t, state, tap("r", time, None, category, medium))
        state = decode_trip_state(encode_trip_state(decision.state))  # through the card
        decisions.append(decision)
    return decisions


def test_daily_amount_cap_with_a_service_day_cut_off_charges_the_remainder() -> None:
    t = tariff(
        **base,
        fare_caps=(
            "fare_cap_id,rider_category_id,fare_media_id,period,service_day_start_time,amount,"
            "currency\nday,adult,card,daily,04:00:00,5.00,EUR"
        ),
    )
    times = ["2025-03-12T07:00", "2025-03-12T09:00", "2025-03-12T12:00", "2025-03-12T18:00",
             "2025-03-13T03:59", "2025-03-13T04:00"]  # fmt: skip
    decisions = ride_all(t, times)
    assert [d.amount for d in decisions] == [200, 200, 100, 0, 0, 200]
    assert [d.cap_id for d in decisions] == [None, None, "day", "day", "day", None]
    assert decisions[2].amount_before_caps == 200
    # The cap is per category and medium: a child and a cash rider are not capped.
    assert [d.amount for d in ride_all(t, times, "child")] == [100] * 6
    assert [d.amount for d in ride_all(t, times, "adult", "cash")] == [200] * 6


def test_weekly_cap_runs_monday_to_sunday() -> None:
    t = tariff(
        **base,
        fare_caps="fare_cap_id,period,amount,currency\nweek,weekly,7.00,EUR",
    )
    # 2025-03-10 is a Monday; 2025-03-16 a Sunday.
    times = ["2025-03-10T08:00", "2025-03-11T08:00", "2025-03-14T08:00", "2025-03-16T08:00",
             "2025-03-16T20:00", "2025-03-17T08:00"]  # fmt: skip
    assert [d.amount for d in ride_all(t, times)] == [200, 200, 200, 100, 0, 200]


def test_rolling_cap_opens_at_the_first_tap_and_lasts_n_service_days() -> None:
    t = tariff(
        **base,
        fare_caps="fare_cap_id,period,period_days,amount,currency\nr3,rolling,3,4.00,EUR",
    )
    times = ["2025-03-12T08:00", "2025-03-13T08:00", "2025-03-14T23:00", "2025-03-15T00:30",
             "2025-03-16T08:00"]  # fmt: skip
    # Window 12-14 March: 2 + 2, then capped; 15 March opens a new window.
    assert [d.amount for d in ride_all(t, times)] == [200, 200, 0, 200, 200]


def test_ride_count_cap_and_two_caps_together() -> None:
    t = tariff(
        **base,
        fare_caps=(
            "fare_cap_id,period,period_days,amount,ride_count,currency\n"
            "rides,daily,,,3,EUR\nweek,weekly,,9.00,,EUR"
        ),
    )
    day1 = [f"2025-03-10T{hour:02d}:00" for hour in range(8, 13)]
    day2 = [f"2025-03-11T{hour:02d}:00" for hour in range(8, 13)]
    decisions = ride_all(t, day1 + day2)
    assert [d.amount for d in decisions] == [200, 200, 200, 0, 0, 200, 100, 0, 0, 0]
    assert [d.cap_id for d in decisions][3:] == ["rides", "rides", None, "week", "week", "week",
                                                 "week"]  # fmt: skip


def test_pass_rides_are_free_only_for_its_category_and_network() -> None:
    t = tariff(
        **base,
        fare_passes=(
            "fare_pass_id,rider_category_id,network_id,validity_days,amount,currency\n"
            "kids_month,child,n,30,20.00,EUR"
        ),
    )
    card = activate_pass(t, blank_trip_state, "kids_month", tap("r", "2025-03-01T00:00").time_s)
    assert decide(t, card, tap("r", "2025-03-30T20:00", None, "child", "card")).amount == 0
    assert decide(t, card, tap("r", "2025-03-31T08:00", None, "child", "card")).amount == 100
    assert decide(t, card, tap("m", "2025-03-10T08:00", None, "child", "card")).amount == 100
    assert decide(t, card, tap("r", "2025-03-10T08:00", None, "adult", "card")).amount == 200
    assert decode_trip_state(encode_trip_state(card)).pass_index == 1
