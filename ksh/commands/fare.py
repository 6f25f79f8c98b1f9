"""`ksh fare`: validate a GTFS-Fares v2 feed and price journeys with it."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from pathlib import Path
from typing import Any

from ksh.cli import UserError

journey_file_bytes_max = 1024 * 1024
#: A journey to try `ksh fare price` with (shipped beside the Trans Semarang feed).
sample_journey = (
    Path(__file__).parents[2] / "bus_terminals" / "fare" / "data" / "journey_sample.json"
)
journey_legs_max = 100
#: `ksh fare check` warns when the feed's service ends within this many days.
service_end_warning_days = 60


def _date_argument(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fare",
        help="validate a fare feed, price a journey",
        description="Fares from GTFS-Fares v2 plus our extension files (caps, passes, holidays). "
        "Without --gtfs the shipped Trans Semarang feed is used.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser("check", help="validate a feed (file, line and field of the error)")
    check.add_argument("--gtfs", metavar="DIR", help="feed directory (default: Trans Semarang)")
    check.add_argument(
        "--today",
        metavar="YYYY-MM-DD",
        type=_date_argument,
        help="the day to measure the feed's service against (default: today in Asia/Jakarta); "
        f"a warning when it ends within {service_end_warning_days} days, an error once it has",
    )
    check.set_defaults(handler=run_check)
    price = actions.add_parser(
        "price",
        help="price a journey file and print JSON",
        description="Price a whole journey (GTFS-Fares v2 leg, transfer and join rules; not "
        "caps or passes, which belong to a card's history). The journey is a JSON object: "
        '{"rider_category_id": ..., "fare_media_id": ..., "legs": [{"route_id": ..., '
        '"from_stop_id": ..., "to_stop_id": ..., "departure": "YYYY-MM-DDTHH:MM", '
        '"arrival": ...}, ...]}, local times in the feed\'s time zone, legs in time order; '
        "the category and medium default to the feed's default and the cheapest. A sample: "
        f"{sample_journey}",
    )
    price.add_argument("--gtfs", metavar="DIR", help="feed directory (default: Trans Semarang)")
    price.add_argument(
        "--journey", metavar="FILE", required=True, help=f"journey JSON file, e.g. {sample_journey}"
    )
    price.set_defaults(handler=run_price)


def _load(directory: str | None) -> Any:
    from bus_terminals.fare.feed import load_feed
    from bus_terminals.fare.model import FeedError

    try:
        return load_feed(directory)
    except FeedError as error:
        raise UserError(str(error)) from error
    except OSError as error:
        raise UserError(
            f"{directory}: {error.strerror}" if error.strerror else str(error)
        ) from error


def run_check(arguments: argparse.Namespace) -> int:
    from bus_terminals.fare.feed import feed_coverage
    from ledger.clock import system_clock

    tariff = _load(arguments.gtfs)
    name = arguments.gtfs or "trans_semarang (shipped)"
    print(
        f"{name}: ok: {len(tariff.route_index)} routes, "
        f"{len(tariff.network_ids)} networks, {len(tariff.product_ids)} fare products, "
        f"{sum(len(rules) for rules in tariff.leg_rules.values())} fare leg rules, "
        f"{len(tariff.transfer_rule_list)} fare transfer rules, {len(tariff.caps)} caps, "
        f"{len(tariff.passes)} passes, currency {tariff.currency}"
    )
    today = arguments.today or system_clock.today()  # Semarang's date (Asia/Jakarta)
    coverage = feed_coverage(tariff, today)
    if coverage.days_left is not None:
        if coverage.ended:
            raise UserError(
                f"{name}: service ended {coverage.service_end}, {-coverage.days_left} days "
                f"before {today}: validators with this feed charge every tap the full fare; "
                f"ship a feed whose calendar covers {today}"
            )
        print(
            f"{name}: service {coverage.service_start} to {coverage.service_end}: "
            f"{coverage.days_left} days left on {today}"
        )
        if coverage.days_left <= service_end_warning_days:
            print(
                f"ksh fare: warning: {name}: service ends {coverage.service_end}, "
                f"{coverage.days_left} days left on {today}: after that validators charge the "
                "full fare on every tap; extend calendar.txt (and public_holidays.txt)",
                file=sys.stderr,
            )
    for year in coverage.years_without_holidays:
        print(
            f"ksh fare: warning: {name}: no public holidays in {year}, which the calendar "
            "covers: services that depend on holidays treat every day of it as a working day",
            file=sys.stderr,
        )
    return 0


class _Journey:
    """A journey file's text, so field errors can name the line they are on."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            file = Path(path)
            if file.stat().st_size > journey_file_bytes_max:
                raise UserError(f"{path}:1: (file): larger than {journey_file_bytes_max} bytes")
            self.text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise UserError(f"{path}: {error.strerror or error}") from error
        except UnicodeDecodeError as error:
            raise UserError(f"{path}:1: (file): not UTF-8") from error
        try:
            self.data = json.loads(self.text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}:{error.lineno}: (json): {error.msg}") from error

    def error(self, field: str, message: str, occurrence: int = 0) -> UserError:
        """Name the line where the `occurrence`-th key `field` appears (1 if not found)."""
        key = field.rsplit(".", 1)[-1]
        matches = list(re.finditer(rf'"{re.escape(key)}"\s*:', self.text))
        line = 1
        if occurrence < len(matches):
            line = self.text.count("\n", 0, matches[occurrence].start()) + 1
        return UserError(f"{self.path}:{line}: {field}: {message}")


journey_fields = ("rider_category_id", "fare_media_id", "legs")
leg_fields = ("route_id", "from_stop_id", "to_stop_id", "departure", "arrival")
# A local date and time, to the minute at least: a day alone would be read as its midnight.
_date_time_pattern = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def _refuse_unknown_fields(
    journey: _Journey, data: dict[str, Any], known: tuple[str, ...], name: str, position: int = 0
) -> None:
    """A misspelt or renamed field is named, not ignored (it would price as if absent)."""
    for key in data:
        if key not in known:
            raise journey.error(
                key if name == "(journey)" else f"{name}.{key}",
                f"unknown field (expected: {', '.join(known)})",
                position if name != "(journey)" else 0,
            )


def _legs(journey: _Journey, tariff: Any, raw_legs: list[Any]) -> list[Any]:
    """The journey's legs, checked: known routes and stops, local date-times, and each leg
    starting no earlier than the one before it ends (in time order, none overlapping)."""
    import datetime
    import zoneinfo

    from bus_terminals.fare.model import Leg

    zone = zoneinfo.ZoneInfo(tariff.timezone_name)
    legs: list[Leg] = []
    for position, raw in enumerate(raw_legs):
        name = f"legs[{position}]"
        if not isinstance(raw, dict):
            raise journey.error("legs", f"{name} is not an object")
        _refuse_unknown_fields(journey, raw, leg_fields, name, position)
        route = raw.get("route_id")
        if route is None:
            raise journey.error("legs", f"{name}.route_id: missing")
        if not isinstance(route, str) or route not in tariff.route_index:
            raise journey.error(f"{name}.route_id", f"{route!r} is not in routes.txt", position)
        stops: list[str | None] = []
        for field in ("from_stop_id", "to_stop_id"):
            stop = raw.get(field)
            if stop is not None and stop not in tariff.stop_index:
                raise journey.error(f"{name}.{field}", f"{stop!r} is not in stops.txt", position)
            stops.append(stop)
        times: list[int] = []
        for field in ("departure", "arrival"):
            value = raw.get(field)
            if value is None:
                raise journey.error("legs", f"{name}.{field}: missing")
            try:
                if not isinstance(value, str) or not _date_time_pattern.match(value):
                    raise ValueError
                moment = datetime.datetime.fromisoformat(value)
            except ValueError:
                raise journey.error(
                    f"{name}.{field}",
                    f"not a local ISO date and time (YYYY-MM-DDTHH:MM): {value!r}",
                    position,
                ) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
            times.append(int(moment.timestamp()))
        if times[1] < times[0]:
            raise journey.error(f"{name}.arrival", "before departure", position)
        if legs and times[0] < legs[-1].arrival_s:
            raise journey.error(
                f"{name}.departure",
                f"before legs[{position - 1}] arrives: legs are in time order and do not overlap",
                position,
            )
        legs.append(Leg(route, stops[0], stops[1], times[0], times[1]))
    return legs


def run_price(arguments: argparse.Namespace) -> int:
    from bus_terminals.fare.engine import price_journey

    journey = _Journey(arguments.journey)
    tariff = _load(arguments.gtfs)
    data = journey.data
    if not isinstance(data, dict):
        raise UserError(f"{journey.path}:1: (journey): expected a JSON object")
    _refuse_unknown_fields(journey, data, journey_fields, "(journey)")
    category = data.get("rider_category_id")
    if category is not None and category not in tariff.category_index:
        raise journey.error(
            "rider_category_id",
            f"{category!r} is not in rider_categories.txt ({', '.join(tariff.category_index)})",
        )
    medium = data.get("fare_media_id")
    if medium is not None and medium not in tariff.media_index:
        raise journey.error("fare_media_id", f"{medium!r} is not in fare_media.txt")
    raw_legs = data.get("legs")
    if not isinstance(raw_legs, list) or not raw_legs:
        raise journey.error("legs", "a non-empty list of legs is required")
    if len(raw_legs) > journey_legs_max:
        raise journey.error("legs", f"more than {journey_legs_max} legs")
    legs = _legs(journey, tariff, raw_legs)
    price = price_journey(tariff, legs, category, medium)

    def money(amount: int | None) -> str | None:
        return None if amount is None else tariff.format_amount(amount)

    output = {
        "currency": price.currency,
        "total": money(price.total),
        "rider_category_id": category or tariff.default_category_id,
        "fare_media_id": medium,
        "legs": [
            {
                "fare_product_id": leg.fare_product_id,
                "amount": money(leg.amount),
                "fare_leg_rule": leg.fare_leg_rule,
                "fare_transfer_rule": leg.fare_transfer_rule,
                "transfer_fare_product_id": leg.transfer_fare_product_id,
                "joined_previous_leg": leg.joined_previous,
                "candidates": [
                    {"fare_product_id": product, "amount": money(amount)}
                    for product, amount in leg.candidates
                ],
            }
            for leg in price.legs
        ],
        "unknown_legs": list(price.unknown_legs),
    }
    print(json.dumps(output, indent=2))
    return 0
