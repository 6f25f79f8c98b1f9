"""GTFS-Fares v2 semantics as documented in the spec (reference/fares.md §1.3, §1.5).

Each test names the spec statement it checks. Amounts are in minor units (EUR cents).
"""

from __future__ import annotations

from bus_terminals.fare.engine import decide, price_journey
from bus_terminals.fare.model import FareOutcome, blank_trip_state
from bus_terminals.fare.trip_state import decode_trip_state, encode_trip_state
from tests.fare.feeds import leg, network_files, tap, tariff

products = (
    "fare_product_id,amount,currency\n"
    "pa,2.00,EUR\npb,3.00,EUR\npc,4.00,EUR\npany,1.00,EUR\nab,1.00,EUR\nbc,0.50,EUR"
)


def total(t, legs, category=None, medium=None):  # type: ignore[no-untyped-def]
    return price_journey(t, legs, category, medium).total


def test_empty_network_without_priority_means_all_networks_not_listed() -> None:
    # "empty network_id = all networks ... excluding the ones listed" (no rule_priority column)
    t = tariff(
        **network_files,
        fare_products=products,
        fare_leg_rules="network_id,fare_product_id\nA,pa\n,pany",
    )
    assert total(t, [leg("ra", "2025-03-12T08:00")]) == 200  # the cheaper empty rule is excluded
    assert total(t, [leg("rb", "2025-03-12T08:00")]) == 100
    assert total(t, [leg("rx", "2025-03-12T08:00")]) == 100  # a route without network


def test_empty_network_with_priority_column_does_not_affect_matching() -> None:
    # "empty = does not affect the matching"; "the highest value ... will be selected"
    same_priority = tariff(
        **network_files,
        fare_products=products,
        fare_leg_rules="network_id,fare_product_id,rule_priority\nA,pa,\n,pany,",
    )
    assert total(same_priority, [leg("ra", "2025-03-12T08:00")]) == 100  # both match: cheapest
    higher = tariff(
        **network_files,
        fare_products=products,
        fare_leg_rules="network_id,fare_product_id,rule_priority\nA,pa,1\n,pany,0",
    )
    assert total(higher, [leg("ra", "2025-03-12T08:00")]) == 200
    assert total(higher, [leg("rb", "2025-03-12T08:00")]) == 100


def test_areas_a_stop_in_several_areas_and_listed_to_areas() -> None:
    t = tariff(
        **network_files,
        areas="area_id\nz1\nz2\nz3",
        stop_areas="area_id,stop_id\nz1,s1\nz2,s1\nz3,s3",
        fare_products=products,
        fare_leg_rules=(
            "from_area_id,to_area_id,fare_product_id\nz1,,pc\nz2,,pb\n,,pany\nz1,z3,pa"
        ),
    )
    # s1 is in z1 and z2; to s2 (in no listed to-area) both "z1/empty" and "z2/empty" match.
    assert total(t, [leg("ra", "2025-03-12T08:00", start="s1", end="s2")]) == 300
    # To s3 (z3 is listed in to_area_id) only the exact rule matches.
    assert total(t, [leg("ra", "2025-03-12T08:00", start="s1", end="s3")]) == 200
    # From a stop in no listed area: the empty from_area rule.
    assert total(t, [leg("ra", "2025-03-12T08:00", start="s3", end="s2")]) == 100


timeframe_files = {
    "routes": "route_id,route_type\nr,3",
    "fare_products": "fare_product_id,amount,currency\npeak,3.00,EUR\noff,2.00,EUR\nlate,5.00,EUR",
    "timeframes": (
        "timeframe_group_id,start_time,end_time,service_id\n"
        "peak,07:00:00,09:00:00,weekdays\n"
        "off,00:00:00,07:00:00,weekdays\n"
        "off,09:00:00,24:00:00,weekdays\n"
        "off,,,weekend\n"
    ),
    "calendar_dates": "service_id,date,exception_type\nweekend,20250315,1\nweekend,20250316,1",
    "fare_leg_rules": (
        "from_timeframe_group_id,to_timeframe_group_id,fare_product_id\npeak,,peak\noff,,off\n"
    ),
}


def test_timeframes_are_start_inclusive_end_exclusive() -> None:
    t = tariff(**timeframe_files)
    assert total(t, [leg("r", "2025-03-12T06:59:59")]) == 200
    assert total(t, [leg("r", "2025-03-12T07:00:00")]) == 300
    assert total(t, [leg("r", "2025-03-12T08:59:59")]) == 300
    assert total(t, [leg("r", "2025-03-12T09:00:00")]) == 200
    assert total(t, [leg("r", "2025-03-15T08:00:00")]) == 200  # Saturday: calendar_dates service
    assert total(t, [leg("r", "2025-03-17T08:00:00")]) == 300  # Monday again


def test_timeframes_use_the_local_date_of_the_event() -> None:
    files = dict(timeframe_files)
    t = tariff(
        **files,
        agency="agency_id,agency_name,agency_url,agency_timezone\na,A,https://a,Asia/Jakarta",
    )
    # Friday 2025-03-14 23:30 UTC is Saturday 06:30 in Jakarta (UTC+7): the weekend timeframe.
    assert total(t, [leg("r", "2025-03-14T23:30:00")]) == 200
    # Friday 00:30 UTC is Friday 07:30 local: peak.
    assert total(t, [leg("r", "2025-03-14T00:30:00")]) == 300


def test_to_timeframe_matches_the_arrival() -> None:
    files = dict(timeframe_files)
    files["fare_leg_rules"] = (
        "from_timeframe_group_id,to_timeframe_group_id,fare_product_id\noff,peak,late\noff,off,off"
    )
    t = tariff(**files)
    assert total(t, [leg("r", "2025-03-12T06:50", "2025-03-12T07:10")]) == 500
    assert total(t, [leg("r", "2025-03-12T06:10", "2025-03-12T06:50")]) == 200


def transfer_tariff(transfer_type: int, **extra: str):  # type: ignore[no-untyped-def]
    files = {
        **network_files,
        "fare_products": products,
        "fare_leg_rules": "leg_group_id,network_id,fare_product_id\ngA,A,pa\ngB,B,pb\ngC,C,pc",
        "fare_transfer_rules": (
            "from_leg_group_id,to_leg_group_id,fare_transfer_type,fare_product_id\n"
            f"gA,gB,{transfer_type},ab\ngB,gC,{transfer_type},bc"
        ),
    }
    files.update(extra)
    return tariff(**files)


three_legs = [
    leg("ra", "2025-03-12T08:00", "2025-03-12T08:10"),
    leg("rb", "2025-03-12T08:20", "2025-03-12T08:30"),
    leg("rc", "2025-03-12T08:40", "2025-03-12T08:50"),
]


def test_transfer_type_0_is_a_plus_ab_then_s_plus_bc() -> None:
    price = price_journey(transfer_tariff(0), three_legs)
    assert [leg.amount for leg in price.legs] == [200, 100, 50]
    assert price.total == 200 + 100 + 50
    assert price.legs[1].fare_transfer_rule == "fare_transfer_rules.txt:2"
    assert price.legs[1].transfer_fare_product_id == "ab"


def test_transfer_type_1_is_a_plus_ab_plus_b_then_s_plus_bc_plus_c() -> None:
    price = price_journey(transfer_tariff(1), three_legs)
    assert [leg.amount for leg in price.legs] == [200, 100 + 300, 50 + 400]


def test_transfer_type_2_is_ab_then_s_plus_bc() -> None:
    price = price_journey(transfer_tariff(2), three_legs)
    assert price.total == 100 + 50  # AB replaces A and B; then S + BC
    assert [leg.amount for leg in price.legs] == [200, 100 - 200, 50]


def test_transfer_rules_are_directional() -> None:
    # "A fare transfer rule defined from from_leg_group_id to to_leg_group_id does not apply
    # in the reverse direction."
    t = transfer_tariff(0)
    backwards = [leg("rb", "2025-03-12T08:00"), leg("ra", "2025-03-12T08:20")]
    assert price_journey(t, backwards).total == 300 + 200
    assert price_journey(t, backwards).legs[1].fare_transfer_rule is None


def test_empty_leg_group_means_all_groups_not_listed() -> None:
    t = transfer_tariff(
        0,
        fare_transfer_rules=(
            "from_leg_group_id,to_leg_group_id,fare_transfer_type,fare_product_id\n"
            "gA,,0,ab\ngA,gB,0,bc"
        ),
    )
    # gA -> gB: the exact rule (0.50); gA -> gC: gC is not listed in to_leg_group_id (1.00).
    assert price_journey(t, [three_legs[0], three_legs[1]]).legs[1].amount == 50
    assert price_journey(t, [three_legs[0], three_legs[2]]).legs[1].amount == 100


def same_group_tariff(rows: str):  # type: ignore[no-untyped-def]
    return tariff(
        routes="route_id,route_type\nr,3",
        fare_products="fare_product_id,amount,currency\nride,2.00,EUR\nxfer,0.25,EUR",
        fare_leg_rules="leg_group_id,fare_product_id\ng,ride",
        fare_transfer_rules=(
            "from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,"
            "duration_limit_type,fare_transfer_type,fare_product_id\n" + rows
        ),
    )


def rides(*times: str) -> list:  # type: ignore[type-arg]
    return [leg("r", time) for time in times]


def test_transfer_count_limits_consecutive_transfers() -> None:
    t = same_group_tariff("g,g,2,,,0,")
    amounts = [p.amount for p in price_journey(t, rides("2025-03-12T08:00", "2025-03-12T08:10",
                                                        "2025-03-12T08:20", "2025-03-12T08:30")).legs]  # fmt: skip
    assert amounts == [200, 0, 0, 200]  # two transfers, then a new journey


def test_transfer_count_minimum_at_least_current_count_wins() -> None:
    # "pick the minimum transfer_count that is greater than or equal to the current count"
    t = same_group_tariff("g,g,1,,,0,\ng,g,-1,,,0,xfer")
    times = ("2025-03-12T08:00", "2025-03-12T08:10", "2025-03-12T08:20", "2025-03-12T08:30")
    assert [p.amount for p in price_journey(t, rides(*times)).legs] == [200, 0, 25, 25]


def test_duration_limit_is_measured_from_the_first_leg_of_the_chain() -> None:
    t = same_group_tariff("g,g,-1,3600,1,0,")
    times = ("2025-03-12T08:00", "2025-03-12T08:40", "2025-03-12T09:00", "2025-03-12T09:20")
    # 08:40 and 09:00 are within 60 min of 08:00 (09:00 exactly at the limit counts);
    # 09:20 is 80 min after the chain's first leg even though 20 min after the previous one.
    assert [p.amount for p in price_journey(t, rides(*times)).legs] == [200, 0, 0, 200]


def test_a_31_day_duration_limit_is_judged_through_the_card() -> None:
    """A month-long chain, the card's 48 bytes written and read between taps (version 1 of
    the trip state kept 65,535 s at most, and the feed refused a longer duration_limit)."""
    t = same_group_tariff(f"g,g,-1,{31 * 86_400},1,0,")
    times = ("2025-03-01T08:00", "2025-03-16T08:00", "2025-04-01T08:00", "2025-04-01T08:00:01")
    state, amounts = blank_trip_state, []
    for time in times:
        decision = decide(t, state, tap("r", time))
        state = decode_trip_state(encode_trip_state(decision.state))
        amounts.append(decision.amount)
    assert amounts == [200, 0, 0, 200]  # 1 April 08:00 is exactly 31 days after the first


def test_duration_limit_types() -> None:
    legs = [
        leg("r", "2025-03-12T08:00", "2025-03-12T08:30"),
        leg("r", "2025-03-12T08:50", "2025-03-12T09:10"),
    ]
    # Elapsed: 0 dep->arr 70 min, 1 dep->dep 50 min, 2 arr->dep 20 min, 3 arr->arr 40 min.
    for limit_type, within_min in ((0, 70), (1, 50), (2, 20), (3, 40)):
        inside = same_group_tariff(f"g,g,-1,{within_min * 60},{limit_type},0,")
        outside = same_group_tariff(f"g,g,-1,{within_min * 60 - 1},{limit_type},0,")
        assert price_journey(inside, legs).total == 200, limit_type
        assert price_journey(outside, legs).total == 400, limit_type


def join_tariff():  # type: ignore[no-untyped-def]
    return tariff(
        **network_files,
        areas="area_id\nz1\nz3",
        stop_areas="area_id,stop_id\nz1,s1\nz3,s3",
        fare_products=products,
        fare_leg_rules=(
            "network_id,from_area_id,to_area_id,fare_product_id\n"
            "A,z1,z3,pb\nA,z1,,pa\nA,,z3,pa\nA,,,pa\nB,,,pb\nB,z1,z3,pany"
        ),
        fare_leg_join_rules="from_network_id,to_network_id,from_stop_id,to_stop_id\nA,A,,\nA,B,s2,hub",
    )


def test_join_rules_make_an_effective_fare_leg() -> None:
    t = join_tariff()
    legs = [
        leg("ra", "2025-03-12T08:00", "2025-03-12T08:10", start="s1", end="hub"),
        leg("ra", "2025-03-12T08:15", "2025-03-12T08:30", start="hub", end="s3"),
    ]
    price = price_journey(t, legs)
    # One effective leg z1 -> z3 on A: product pb (3.00), not pa + pa.
    assert price.total == 300
    assert price.legs[1].joined_previous
    assert price.legs[1].fare_product_id == "pb"


def test_join_needs_the_same_station_unless_stops_are_given() -> None:
    t = join_tariff()
    apart = [
        leg("ra", "2025-03-12T08:00", "2025-03-12T08:10", start="s1", end="s2"),
        leg("ra", "2025-03-12T08:15", "2025-03-12T08:30", start="hub", end="s3"),
    ]
    assert price_journey(t, apart).total == 400  # not joined: pa + pa
    across = [
        leg("ra", "2025-03-12T08:00", "2025-03-12T08:10", start="s1", end="s2"),
        leg("rb", "2025-03-12T08:15", "2025-03-12T08:30", start="hub", end="s3"),
    ]
    # Joined across networks by the stop-specific rule; mixed networks match as no network,
    # which (no priority column) only the empty-network rules could price: none here.
    price = price_journey(t, across)
    assert price.unknown_legs == (1,)
    assert price.total is None


def test_cheapest_product_for_the_rider_and_medium_wins() -> None:
    t = tariff(
        routes="route_id,route_type\nr,3",
        fare_media="fare_media_id,fare_media_type\ncash,0\ncard,2",
        rider_categories=(
            "rider_category_id,rider_category_name,is_default_fare_category\nadult,Adult,1\n"
            "senior,Senior,0"
        ),
        fare_products=(
            "fare_product_id,rider_category_id,fare_media_id,amount,currency\n"
            "single,,cash,4.00,EUR\nsingle,,card,3.50,EUR\nsingle,senior,,1.00,EUR\n"
            "day,,card,3.00,EUR"
        ),
        fare_leg_rules="fare_product_id\nsingle\nday",
    )
    journey = [leg("r", "2025-03-12T08:00")]
    cash = price_journey(t, journey, None, "cash")
    assert (cash.total, cash.legs[0].fare_product_id) == (400, "single")
    card = price_journey(t, journey, "adult", "card")
    assert (card.total, card.legs[0].fare_product_id) == (300, "day")
    assert card.legs[0].candidates == (("day", 300), ("single", 350))
    assert price_journey(t, journey, "senior", "cash").total == 100
    assert price_journey(t, journey).total == 300  # default category, any medium


def test_no_matching_rule_means_the_fare_is_unknown() -> None:
    t = tariff(
        **network_files,
        fare_products=products,
        fare_leg_rules="network_id,fare_product_id\nA,pa",
    )
    price = price_journey(t, [leg("ra", "2025-03-12T08:00"), leg("rb", "2025-03-12T09:00")])
    assert price.unknown_legs == (1,)
    assert price.total is None
    decision = decide(t, blank_trip_state, tap("rb", "2025-03-12T09:00"))
    assert decision.outcome is FareOutcome.unknown_fare
    assert decision.amount == 0
    assert decision.state is blank_trip_state


def translink():  # type: ignore[no-untyped-def]
    """The Translink (Vancouver) AddFare example of gtfs.org's fare-transfers guide."""
    return tariff(
        agency="agency_id,agency_name,agency_url,agency_timezone\nt,T,https://t,America/Vancouver",
        routes="route_id,route_type\nseabus,4\nskytrain,1",
        stops="stop_id,stop_name\nlonsdale,L\nwaterfront,W\ncommercial,C\nlake_city,LC",
        areas="area_id\nzone1\nzone2",
        stop_areas="area_id,stop_id\nzone2,lonsdale\nzone1,waterfront\nzone1,commercial\nzone2,lake_city",
        fare_media="fare_media_id,fare_media_type\ncontactless,3",
        fare_products=(
            "fare_product_id,amount,currency,fare_media_id\n1_zone_fare,3.20,CAD,contactless\n"
            "2_zone_fare,4.65,CAD,contactless\n1_zone_to_2_zone_upgrade,1.45,CAD,contactless"
        ),
        fare_leg_rules=(
            "leg_group_id,from_area_id,to_area_id,fare_product_id\n"
            "ZN1_ZN1,zone1,zone1,1_zone_fare\nZN1_ZN2,zone1,zone2,2_zone_fare\n"
            "ZN1_ZN2,zone2,zone1,2_zone_fare"
        ),
        fare_transfer_rules=(
            "from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,duration_limit_type,"
            "fare_transfer_type,fare_product_id\n"
            "ZN1_ZN2,ZN1_ZN1,,5400,1,0,\n"
            "ZN1_ZN1,ZN1_ZN2,,5400,1,0,1_zone_to_2_zone_upgrade\n"
            "ZN1_ZN2,ZN1_ZN2,-1,5400,1,0,\n"
            "ZN1_ZN1,ZN1_ZN1,-1,5400,1,0,"
        ),
    )


def test_translink_addfare_example_with_consecutive_transfers() -> None:
    t = translink()
    journey = [
        leg("seabus", "2025-03-12T16:00", "2025-03-12T16:15", "lonsdale", "waterfront"),
        leg("skytrain", "2025-03-12T16:20", "2025-03-12T16:40", "waterfront", "commercial"),
        leg("skytrain", "2025-03-12T16:50", "2025-03-12T17:20", "commercial", "lake_city"),
    ]
    price = price_journey(t, journey)
    # The guide: 2-zone fare + free transfer to the 1-zone leg + the 1->2 zone AddFare. (It
    # calls this "incorrect" for Translink because the right answer needs nonconsecutive
    # transfers, which are not in the spec on master; its table prints 1.45, its text 1.65.)
    assert [leg.amount for leg in price.legs] == [465, 0, 145]
    assert price.currency == "CAD"
    upgrade = [
        leg("skytrain", "2025-03-12T08:00", "2025-03-12T08:20", "waterfront", "commercial"),
        leg("skytrain", "2025-03-12T09:29", "2025-03-12T09:50", "commercial", "lake_city"),
    ]
    assert price_journey(t, upgrade).total == 320 + 145  # AddFare within 90 min = a 2-zone fare
    late = [
        upgrade[0],
        leg("skytrain", "2025-03-12T09:31", "2025-03-12T09:50", "commercial", "lake_city"),
    ]
    assert price_journey(t, late).total == 320 + 465
