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
    price = actions.add_parser("price", help="price a journey file and print JSON")
    price.add_argument("--gtfs", metavar="DIR", help="feed directory (default: Trans Semarang)")
    price.add_argument("--journey", metavar="FILE", required=True, help="journey JSON file")
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


def run_price(arguments: argparse.Namespace) -> int:
    import datetime
    import zoneinfo

    from bus_terminals.fare.engine import price_journey
    from bus_terminals.fare.model import Leg

    journey = _Journey(arguments.journey)
    tariff = _load(arguments.gtfs)
    data = journey.data
    if not isinstance(data, dict):
        raise UserError(f"{journey.path}:1: (journey): expected a JSON object")
    category = data.get("rider_category_id")
    if category is not None and category not in tariff.category_index:
        raise journey.error("rider_category_id", f"{category!r} is not in rider_categories.txt")
    medium = data.get("fare_media_id")
    if medium is not None and medium not in tariff.media_index:
        raise journey.error("fare_media_id", f"{medium!r} is not in fare_media.txt")
    raw_legs = data.get("legs")
    if not isinstance(raw_legs, list) or not raw_legs:
        raise journey.error("legs", "a non-empty list of legs is required")
    if len(raw_legs) > journey_legs_max:
        raise journey.error("legs", f"more than {journey_legs_max} legs")
    zone = zoneinfo.ZoneInfo(tariff.timezone_name)
    legs: list[Leg] = []
    for position, raw in enumerate(raw_legs):
        name = f"legs[{position}]"
        if not isinstance(raw, dict):
            raise journey.error("legs", f"{name} is not an object")
        route = raw.get("route_id")
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
            try:
                moment = datetime.datetime.fromisoformat(str(value))
            except ValueError:
                raise journey.error(
                    f"{name}.{field}", f"not a local ISO date-time: {value!r}", position
                ) from None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=zone)
            times.append(int(moment.timestamp()))
        if times[1] < times[0]:
            raise journey.error(f"{name}.arrival", "before departure", position)
        legs.append(Leg(route, stops[0], stops[1], times[0], times[1]))
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
