"""Synthetic feeds and tap streams for benchmarks and tests (deterministic from a seed)."""

from __future__ import annotations

import random

from bus_terminals.fare.model import Tap
from bus_terminals.fare.tariff import Tariff

#: 2025-03-12 00:00 UTC, a Wednesday.
day_start_utc_s = 1_741_737_600


def _csv(header: str, rows: list[str]) -> str:
    return "\n".join([header, *rows]) + "\n"


def large_feed_texts(
    networks: int = 100, areas: int = 1_000, leg_rules: int = 10_000, seed: int = 1
) -> dict[str, str]:
    """A big zone tariff: networks x areas fare leg rules, peak timeframes, transfers.

    Each network has 10 routes; each area has 2 stops; rule i prices network i % networks from
    area (i // networks) % areas, so leg_rules / networks areas are listed per network.
    """
    chooser = random.Random(seed)
    routes = [f"r{n}_{k},a,R{n}_{k},3" for n in range(networks) for k in range(10)]
    route_networks = [f"n{n},r{n}_{k}" for n in range(networks) for k in range(10)]
    stops = [f"s{a}_{k},Stop {a}/{k},0,0" for a in range(areas) for k in range(2)]
    stop_areas = [f"z{a},s{a}_{k}" for a in range(areas) for k in range(2)]
    products = [
        f"p{p},,{medium},{amount}.00,EUR"
        for p in range(100)
        for medium, amount in (("card", 1 + p % 7), ("cash", 2 + p % 7))
    ]
    products += ["xfer,,,0.50,EUR", "reduced,reduced,,0.80,EUR"]
    rules = []
    for position in range(leg_rules):
        network = position % networks
        area = (position // networks) % areas
        timeframe = "peak" if position % 3 == 0 else ""
        rules.append(f"g{network},n{network},z{area},,{timeframe},,p{chooser.randrange(100)}")
    transfers = [f"g{n},g{n},-1,3600,1,0," for n in range(networks)]
    transfers += [f"g{n},g{(n + 1) % networks},,5400,0,1,xfer" for n in range(networks)]
    return {
        "agency.txt": _csv(
            "agency_id,agency_name,agency_url,agency_timezone", ["a,A,https://a,Europe/Berlin"]
        ),
        "routes.txt": _csv("route_id,agency_id,route_short_name,route_type", routes),
        "networks.txt": _csv("network_id", [f"n{n}" for n in range(networks)]),
        "route_networks.txt": _csv("network_id,route_id", route_networks),
        "stops.txt": _csv("stop_id,stop_name,stop_lat,stop_lon", stops),
        "areas.txt": _csv("area_id", [f"z{a}" for a in range(areas)]),
        "stop_areas.txt": _csv("area_id,stop_id", stop_areas),
        "calendar.txt": _csv(
            "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date",
            ["weekdays,1,1,1,1,1,0,0,20250101,20261231"],
        ),
        "timeframes.txt": _csv(
            "timeframe_group_id,start_time,end_time,service_id",
            ["peak,07:00:00,09:00:00,weekdays", "peak,16:00:00,18:30:00,weekdays"],
        ),
        "fare_media.txt": _csv("fare_media_id,fare_media_type", ["card,2", "cash,0"]),
        "rider_categories.txt": _csv(
            "rider_category_id,rider_category_name,is_default_fare_category",
            ["adult,Adult,1", "reduced,Reduced,0"],
        ),
        "fare_products.txt": _csv(
            "fare_product_id,rider_category_id,fare_media_id,amount,currency", products
        ),
        "fare_leg_rules.txt": _csv(
            "leg_group_id,network_id,from_area_id,to_area_id,from_timeframe_group_id,"
            "to_timeframe_group_id,fare_product_id",
            rules,
        ),
        "fare_transfer_rules.txt": _csv(
            "from_leg_group_id,to_leg_group_id,transfer_count,duration_limit,duration_limit_type,"
            "fare_transfer_type,fare_product_id",
            transfers,
        ),
    }


def day_of_taps(
    tariff: Tariff,
    cards: int,
    taps: int,
    seed: int = 1,
    categories: tuple[str, ...] | None = None,
    media: tuple[str, ...] | None = None,
) -> list[tuple[str, Tap]]:
    """`taps` tap-ons by `cards` cards over one service day, in time order (card id, tap).

    Each card rides in bursts (a trip and its transfers a few minutes to an hour apart).
    """
    chooser = random.Random(seed)
    routes = sorted(tariff.route_index)
    stops: list[str | None] = [*sorted(tariff.stop_index)] or [None]
    categories = categories or tariff.category_ids or ("",)
    media = media or tariff.media_ids or ("",)
    profiles = [
        (f"card{c:06d}", chooser.choice(categories), chooser.choice(media)) for c in range(cards)
    ]
    rows: list[tuple[str, Tap]] = []
    per_card = max(taps // cards, 1)
    offset = tariff.fixed_offset_s or 0
    for card_id, category, medium in profiles:
        time_s = day_start_utc_s - offset + chooser.randrange(5 * 3600, 10 * 3600)
        for _ in range(per_card):
            rows.append(
                (
                    card_id,
                    Tap(time_s, chooser.choice(routes), chooser.choice(stops), category, medium),
                )
            )
            time_s += chooser.choice((300, 900, 1800, 3600, 4 * 3600))
            if len(rows) >= taps:
                break
        if len(rows) >= taps:
            break
    rows.sort(key=lambda row: row[1].time_s)
    return rows
