"""A broken feed is refused with the file, line and field of the first problem."""

from __future__ import annotations

import pytest

from bus_terminals.fare.feed import compile_feed, load_feed
from bus_terminals.fare.model import FeedError
from tests.fare.feeds import feed

good = {
    "routes": "route_id,route_type,network_id\nr1,3,n1\nr2,3,n2",
    "fare_products": "fare_product_id,amount,currency\np,1.50,EUR\nq,0.50,EUR",
    "fare_leg_rules": "leg_group_id,network_id,fare_product_id\ng,n1,p",
}


def compile_with(**changes: str) -> None:
    compile_feed(feed(**{**good, **changes}))


def test_the_good_feed_compiles() -> None:
    compile_with()


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"fare_products": "fare_product_id,amount,currency\np,1.5x,EUR"},
            "fare_products.txt:2: amount: not a decimal amount: '1.5x'",
        ),
        (
            {"fare_products": "fare_product_id,amount,currency\np,1.505,EUR"},
            "fare_products.txt:2: amount: 1.505 has more than 2 decimals (ISO 4217)",
        ),
        (
            {"fare_products": "fare_product_id,amount,currency\np,1.50,EUR\nq,1,USD"},
            "fare_products.txt:3: currency: USD differs from EUR: one currency",
        ),
        (
            {"fare_products": "fare_product_id,amount,currency\np,1.50,XXX"},
            "fare_products.txt:2: currency: unsupported currency 'XXX'",
        ),
        (
            {"fare_leg_rules": "network_id,fare_product_id\nn1,p\nn1,p"},
            "fare_leg_rules.txt:3: fare_product_id: duplicate fare leg rule",
        ),
        (
            {"fare_leg_rules": "network_id,fare_product_id\nn9,p"},
            "fare_leg_rules.txt:2: network_id: 'n9' is not defined in networks",
        ),
        (
            {"fare_leg_rules": "network_id,fare_product_id,rule_priority\nn1,p,-1"},
            "fare_leg_rules.txt:2: rule_priority: -1 is outside 0..2147483648",
        ),
        (
            {"fare_transfer_rules": "from_leg_group_id,to_leg_group_id,fare_transfer_type\ng,g,0"},
            "fare_transfer_rules.txt:2: transfer_count: required when from == to",
        ),
        (
            {
                "fare_leg_rules": "leg_group_id,network_id,fare_product_id\ng,n1,p\nh,n2,p",
                "fare_transfer_rules": "from_leg_group_id,to_leg_group_id,transfer_count,"
                "fare_transfer_type\ng,h,1,0",
            },
            "fare_transfer_rules.txt:2: transfer_count: forbidden when from != to",
        ),
        (
            {
                "fare_transfer_rules": "from_leg_group_id,to_leg_group_id,transfer_count,"
                "duration_limit_type,fare_transfer_type\ng,g,1,1,0"
            },
            "fare_transfer_rules.txt:2: duration_limit_type: needs duration_limit",
        ),
        (
            {
                "fare_transfer_rules": "from_leg_group_id,to_leg_group_id,transfer_count,"
                "duration_limit,fare_transfer_type\ng,g,1,600,0"
            },
            "fare_transfer_rules.txt:1: duration_limit_type: no column duration_limit_type (the "
            "header has: from_leg_group_id, to_leg_group_id, transfer_count, duration_limit, "
            "fare_transfer_type)",
        ),
        (
            {
                "fare_transfer_rules": "from_leg_group_id,to_leg_group_id,transfer_count,"
                "fare_transfer_type\ng,g,0,0"
            },
            "fare_transfer_rules.txt:2: transfer_count: 0 is not allowed",
        ),
        (
            {
                "fare_transfer_rules": "from_leg_group_id,to_leg_group_id,transfer_count,"
                "fare_transfer_type\ng,g,1,3"
            },
            "fare_transfer_rules.txt:2: fare_transfer_type: 3 is outside 0..2",
        ),
        (
            {"timeframes": "timeframe_group_id,start_time,end_time,service_id\nt,08:00:00,,all"},
            "timeframes.txt:2: end_time: start_time and end_time go together",
        ),
        (
            {
                "timeframes": "timeframe_group_id,start_time,end_time,service_id\n"
                "t,08:00:00,25:00:00,all"
            },
            "timeframes.txt:2: end_time: 25:00:00 is after 24:00:00",
        ),
        (
            {
                "timeframes": "timeframe_group_id,start_time,end_time,service_id\n"
                "t,08:00:00,10:00:00,all\nt,09:00:00,11:00:00,all"
            },
            "timeframes.txt:3: start_time: overlaps another timeframe row",
        ),
        (
            {
                "timeframes": "timeframe_group_id,start_time,end_time,service_id\n"
                "t,08:00:00,10:00:00,nope"
            },
            "timeframes.txt:2: service_id: 'nope' is not a calendar service",
        ),
        (
            {"networks": "network_id\nn1\nn2"},
            "routes.txt:1: network_id: forbidden when networks.txt or route_networks.txt exists",
        ),
        (
            {
                "rider_categories": "rider_category_id,rider_category_name,"
                "is_default_fare_category\na,A,1\nb,B,1",
                "fare_products": "fare_product_id,rider_category_id,amount,currency\np,a,1,EUR\n"
                "p,b,1,EUR",
            },
            "fare_products.txt:1: rider_category_id: product 'p' has several default categories",
        ),
        (
            {"stop_areas": "area_id,stop_id\nz,s", "areas": "area_id\nz", "stops": "stop_id\nt"},
            "stop_areas.txt:2: stop_id: 's' is not defined in stops.txt",
        ),
        (
            {"fare_caps": "fare_cap_id,period,amount,currency\nc,hourly,5.00,EUR"},
            "fare_caps.txt:2: period: 'hourly' is not one of daily, weekly, rolling",
        ),
        (
            {"fare_caps": "fare_cap_id,period,amount,currency\nc,daily,-5.00,EUR"},
            "fare_caps.txt:2: amount: -5.00 is negative: an amount here cannot be",
        ),
        (
            {
                "fare_passes": "fare_pass_id,network_id,validity_days,amount,currency\n"
                "month,n1,30,-20.00,EUR"
            },
            "fare_passes.txt:2: amount: -20.00 is negative: an amount here cannot be",
        ),
        (  # a renamed column is named as missing, with the columns that are there
            {"fare_products": "fare_product_id,price,currency\np,1.50,EUR"},
            "fare_products.txt:1: amount: no column amount (the header has: fare_product_id, "
            "price, currency)",
        ),
        (
            {"fare_products": "fare_product_id,amount\np,1.50"},
            "fare_products.txt:1: currency: no column currency (the header has: "
            "fare_product_id, amount)",
        ),
        (
            {"fare_products": "fare_product_id,amount,currency\np,1.50,EUR\nq,,EUR"},
            "fare_products.txt:3: amount: required value is empty",
        ),
        (
            {"fare_caps": "fare_cap_id,period\nc,daily"},
            "fare_caps.txt:2: amount: give amount, ride_count or both",
        ),
        (
            {
                "fare_caps": "fare_cap_id,period,period_days,ride_count\nc1,daily,,5\n"
                "c2,weekly,,20\nc3,rolling,30,40"
            },
            "fare_caps.txt:1: rider_category_id: more than 2 caps apply to one category and medium",
        ),
        (
            {"fare_caps": "fare_cap_id,period,period_days,ride_count\nc,rolling,,5"},
            "fare_caps.txt:2: period_days: required value is empty",
        ),
        (
            {"calendar": "service_id,monday\nx,1"},
            "calendar.txt:1: tuesday: no column tuesday (the header has: service_id, monday)",
        ),
        (
            {"public_holidays": "date,holiday_name\n20250230,Nope"},
            "public_holidays.txt:2: date: not a calendar date: '20250230'",
        ),
        (
            {"public_holidays": "date,holiday_name,ksh_basis\n20250101,New Year,rumour"},
            "public_holidays.txt:2: ksh_basis: 'rumour' is not one of decree, projection",
        ),
        (
            {"agency": "agency_id,agency_timezone\na,Mars/Olympus"},
            "agency.txt:2: agency_timezone: unknown time zone 'Mars/Olympus'",
        ),
        (
            {"routes": 'route_id,route_type\n"r1,3'},
            "routes.txt:2: (row): not CSV: unexpected end of data",
        ),
        ({"routes": ""}, "routes.txt:1: (header): file is empty"),
        (
            {"routes": "route_id,route_type\nr1,3,extra"},
            "routes.txt:2: (row): 3 values for 2 columns",
        ),
    ],
)
def test_errors_name_file_line_and_field(changes: dict[str, str], expected: str) -> None:
    with pytest.raises(FeedError) as raised:
        compile_with(**changes)
    assert str(raised.value) == expected


def test_a_missing_directory_is_an_os_error() -> None:
    with pytest.raises(FileNotFoundError):
        load_feed("/nonexistent/feed")


def test_undecodable_file_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for name, text in feed(**good).items():
        (tmp_path / name).write_text(text)
    (tmp_path / "routes.txt").write_bytes(b"route_id\n\xff\xfe\n")
    with pytest.raises(FeedError, match=r"^routes.txt:1: \(file\): not UTF-8"):
        load_feed(tmp_path)


def test_duration_limits_reach_194_days_and_networks_254() -> None:
    """The card keeps the duration-limit anchor in 24 bits and the last network in one byte."""
    rule = "from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,duration_limit_type,"
    rule += "fare_transfer_type\ng,g,1,{},1,0"
    compile_with(fare_transfer_rules=rule.format(31 * 86_400))
    compile_with(fare_transfer_rules=rule.format(2**24 - 2))
    with pytest.raises(FeedError, match="duration_limit"):
        compile_with(fare_transfer_rules=rule.format(2**24 - 1))
    routes = "route_id,route_type,network_id\n" + "\n".join(f"r{n},3,n{n}" for n in range(254))
    compile_with(routes=routes)
    with pytest.raises(FeedError, match="more than 254 networks"):
        compile_with(routes=routes + "\nr254,3,n254")
