"""Load a GTFS(-Fares v2) feed plus our extension files, validate it, compile a `Tariff`.

This is the edge of the fare core: it reads files and the time-zone database. `load_feed(dir)`
reads the directory; `compile_feed(texts)` does the rest from file contents, so tests can build
feeds in memory. Every problem raises `FeedError(file, line, field, message)`; line 1 is the
header, so the first data row is line 2.

Extension files (not GTFS; documented in the README, section Fares): `public_holidays.txt`
(with the column `ksh_basis`: `decree` or `projection`), `fare_caps.txt`, `fare_passes.txt`, and
the `calendar.txt` column `ksh_public_holidays`.

`feed_coverage(tariff, today)` says what the feed's calendar covers seen from a given day (the
caller reads the clock): when its service ends, how many days are left, and which years of it
have no public holidays.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import re
import zoneinfo
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from bus_terminals.fare.model import FeedError
from bus_terminals.fare.tariff import (
    CapRule,
    LegRule,
    PassRule,
    Tariff,
    TransferRule,
    any_index,
    seconds_per_day,
    transfer_count_unlimited,
)

feed_file_names = (
    "agency.txt",
    "routes.txt",
    "stops.txt",
    "calendar.txt",
    "calendar_dates.txt",
    "networks.txt",
    "route_networks.txt",
    "areas.txt",
    "stop_areas.txt",
    "fare_media.txt",
    "rider_categories.txt",
    "fare_products.txt",
    "fare_leg_rules.txt",
    "fare_leg_join_rules.txt",
    "fare_transfer_rules.txt",
    "timeframes.txt",
    "public_holidays.txt",
    "fare_caps.txt",
    "fare_passes.txt",
)

#: ISO 4217 minor-unit digits for the currencies we expect; others are refused by name.
currency_decimals_by_code = {
    "IDR": 2, "EUR": 2, "USD": 2, "GBP": 2, "AUD": 2, "CAD": 2, "SGD": 2, "MYR": 2,
    "CHF": 2, "JPY": 0, "KRW": 0, "VND": 0,
}  # fmt: skip

feed_file_bytes_max = 64 * 1024 * 1024
#: The card stores compiled indices in 16 bits (0xFFFF = none).
card_index_max = 0xFFFE
#: The card keeps the duration-limit anchor as a 24-bit delta (trip_state.py): up to 194 days.
duration_limit_s_max = 2**24 - 2
#: The card keeps the last network in one byte (0xFF = none).
network_count_max = 0xFE
#: The card stores the transfer count in 4 bits (15 = saturated).
transfer_count_max = 14
#: The card has room for two cap accumulators.
card_caps_max = 2
rolling_days_max = 366
amount_minor_max = 2**31
#: `public_holidays.txt` column `ksh_basis`: an official decree, or our projection of a year
#: no decree covers yet (empty: not said).
holiday_bases = ("decree", "projection")
#: Service days and timeframes are computed over this many years around the calendar.
timezone_scan_years = (2000, 2060)

_time_pattern = re.compile(r"^(\d{1,2}):([0-5]\d):([0-5]\d)$")
_date_pattern = re.compile(r"^\d{8}$")
_epoch = datetime.date(1970, 1, 1)


class _Row(dict[str, str]):
    line: int


class _Table:
    def __init__(self, name: str, header: tuple[str, ...], rows: list[_Row]) -> None:
        self.name = name
        self.header = header
        self.rows = rows

    def error(self, row: _Row | None, field: str, message: str) -> FeedError:
        return FeedError(self.name, row.line if row is not None else 1, field, message)

    def required(self, row: _Row, field: str) -> str:
        value = row.get(field, "")
        if value == "":
            self.require_column(field)
            raise self.error(row, field, "required value is empty")
        return value

    def require_column(self, field: str) -> None:
        """A required field whose column is absent (left out, or renamed): say so, on the
        header line, rather than call every row's value empty."""
        if field not in self.header:
            raise self.error(
                None, field, f"no column {field} (the header has: {', '.join(self.header)})"
            )

    def integer(
        self, row: _Row, field: str, low: int, high: int, default: int | None = None
    ) -> int:
        value = row.get(field, "")
        if value == "":
            if default is None:
                self.require_column(field)
                raise self.error(row, field, "required value is empty")
            return default
        try:
            number = int(value)
        except ValueError:
            raise self.error(row, field, f"not an integer: {value!r}") from None
        if not low <= number <= high:
            raise self.error(row, field, f"{number} is outside {low}..{high}")
        return number

    def choice(self, row: _Row, field: str, allowed: tuple[str, ...], default: str) -> str:
        value = row.get(field, "") or default
        if value not in allowed:
            raise self.error(row, field, f"{value!r} is not one of {', '.join(allowed)}")
        return value

    def time_of_day(self, row: _Row, field: str, default: int) -> int:
        value = row.get(field, "")
        if value == "":
            return default
        match = _time_pattern.match(value)
        if match is None:
            raise self.error(row, field, f"not a time HH:MM:SS: {value!r}")
        seconds = int(match[1]) * 3600 + int(match[2]) * 60 + int(match[3])
        if seconds > seconds_per_day:
            raise self.error(row, field, f"{value} is after 24:00:00")
        return seconds

    def date(self, row: _Row, field: str) -> int:
        value = self.required(row, field)
        if _date_pattern.match(value) is None:
            raise self.error(row, field, f"not a date YYYYMMDD: {value!r}")
        try:
            day = datetime.date(int(value[:4]), int(value[4:6]), int(value[6:]))
        except ValueError:
            raise self.error(row, field, f"not a calendar date: {value!r}") from None
        return (day - _epoch).days

    def reference(self, row: _Row, field: str, known: Mapping[str, int], target: str) -> int:
        value = row.get(field, "")
        if value == "":
            return any_index
        if value not in known:
            raise self.error(row, field, f"{value!r} is not defined in {target}")
        return known[value]


def _parse(name: str, text: str) -> _Table:
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = tuple(column.strip() for column in next(reader))
    except StopIteration:
        raise FeedError(name, 1, "(header)", "file is empty") from None
    except csv.Error as error:
        raise FeedError(name, 1, "(header)", f"not CSV: {error}") from None
    if not any(header):
        raise FeedError(name, 1, "(header)", "file is empty")
    if len(set(header)) != len(header):
        raise FeedError(name, 1, "(header)", "a column name appears twice")
    rows: list[_Row] = []
    line = 1
    try:
        for values in reader:
            line = reader.line_num
            if not values or values == [""]:
                continue
            if len(values) > len(header):
                raise FeedError(
                    name, line, "(row)", f"{len(values)} values for {len(header)} columns"
                )
            row = _Row(zip(header, (value.strip() for value in values)))
            row.line = line
            rows.append(row)
    except csv.Error as error:
        raise FeedError(name, line + 1, "(row)", f"not CSV: {error}") from None
    return _Table(name, header, rows)


def load_feed(directory: str | Path | None = None) -> Tariff:
    """Read, validate and compile the feed in `directory` (default: shipped Trans Semarang)."""
    texts: dict[str, str] = {}
    if directory is None:
        shipped = resources.files("bus_terminals.fare").joinpath("data", "trans_semarang")
        for name in feed_file_names:
            entry = shipped.joinpath(name)
            if entry.is_file():
                texts[name] = entry.read_text(encoding="utf-8")
        return compile_feed(texts)
    return compile_feed(read_feed_texts(directory))


def read_feed_texts(directory: str | Path) -> dict[str, str]:
    """The feed files in `directory` as {file name: contents} (what `compile_feed` takes, and
    what a fleet package carries)."""
    texts: dict[str, str] = {}
    folder = Path(directory)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a directory")
    for name in feed_file_names:
        path = folder / name
        if path.is_file():
            if path.stat().st_size > feed_file_bytes_max:
                raise FeedError(name, 1, "(file)", f"larger than {feed_file_bytes_max} bytes")
            try:
                texts[name] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as error:
                raise FeedError(name, 1, "(file)", f"not UTF-8: {error}") from None
    return texts


def _index(table: _Table | None, field: str) -> dict[str, int]:
    """id -> index in sorted id order, refusing duplicates."""
    if table is None:
        return {}
    seen: dict[str, int] = {}
    for row in table.rows:
        value = table.required(row, field)
        if value in seen:
            raise table.error(row, field, f"duplicate id {value!r}")
        seen[value] = row.line
    if len(seen) > card_index_max:
        raise table.error(None, field, f"more than {card_index_max} ids")
    return {value: position for position, value in enumerate(sorted(seen))}


def _amount(table: _Table, row: _Row, field: str, decimals: int, *, signed: bool = False) -> int:
    """An amount in minor units; negative only when `signed` (GTFS lets a fare product be
    negative, a discount; a cap or a pass price cannot be)."""
    value = table.required(row, field)
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise table.error(row, field, f"not a decimal amount: {value!r}") from None
    if not number.is_finite():
        raise table.error(row, field, f"not a decimal amount: {value!r}")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    if -exponent > decimals:
        raise table.error(row, field, f"{value} has more than {decimals} decimals (ISO 4217)")
    minor = int(number.scaleb(decimals))
    if abs(minor) >= amount_minor_max:
        raise table.error(row, field, f"{value} is too large (the card holds 32-bit amounts)")
    if minor < 0 and not signed:
        raise table.error(row, field, f"{value} is negative: an amount here cannot be")
    return minor


def _offsets(
    table: _Table, row: _Row, timezone_name: str
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    try:
        zone = zoneinfo.ZoneInfo(timezone_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise table.error(row, "agency_timezone", f"unknown time zone {timezone_name!r}") from None
    first, last = timezone_scan_years
    start = int(datetime.datetime(first, 1, 1, tzinfo=datetime.UTC).timestamp())
    end = int(datetime.datetime(last, 1, 1, tzinfo=datetime.UTC).timestamp())

    def offset_at(utc_s: int) -> int:
        moment = datetime.datetime.fromtimestamp(utc_s, tz=datetime.UTC).astimezone(zone)
        delta = moment.utcoffset()
        assert delta is not None
        return int(delta.total_seconds())

    starts, offsets = [0], [offset_at(start)]
    probes = range(start, end, seconds_per_day * 30)
    if all(offset_at(probe) == offsets[0] for probe in probes):
        return tuple(starts), tuple(offsets)  # a fixed offset over the whole range
    for day_start in range(start, end, seconds_per_day):
        offset = offset_at(day_start + seconds_per_day)
        if offset != offsets[-1]:
            low, high = day_start, day_start + seconds_per_day  # offset changes in (low, high]
            while high - low > 1:
                middle = (low + high) // 2
                if offset_at(middle) == offset:
                    high = middle
                else:
                    low = middle
            starts.append(high)
            offsets.append(offset)
    return tuple(starts), tuple(offsets)


def compile_feed(texts: Mapping[str, str]) -> Tariff:
    """Validate the feed given as {file name: contents} and compile its lookup tables.

    One pass per section, in this order (the first problem found is the one raised): each
    takes its files and what earlier sections compiled, and returns a record for later ones.
    """
    unknown = set(texts) - set(feed_file_names)
    assert not unknown, f"not feed files: {unknown}"
    tables = {name: _parse(name, text) for name, text in texts.items()}
    zone = _compile_time_zone(tables.get("agency.txt"))
    networks = _compile_networks(
        tables.get("routes.txt"), tables.get("networks.txt"), tables.get("route_networks.txt")
    )
    stops = _compile_stops(tables.get("stops.txt"))
    service = _compile_service_days(
        tables.get("public_holidays.txt"),
        tables.get("calendar.txt"),
        tables.get("calendar_dates.txt"),
    )
    timeframes = _compile_timeframes(tables.get("timeframes.txt"), service)
    areas = _compile_areas(tables.get("areas.txt"), tables.get("stop_areas.txt"), stops)
    riders = _compile_riders(tables.get("fare_media.txt"), tables.get("rider_categories.txt"))
    products = _compile_products(tables.get("fare_products.txt"), riders)
    transfer_table = tables.get("fare_transfer_rules.txt")
    parsed_leg_rules = _parse_leg_rules(
        tables.get("fare_leg_rules.txt"), networks, areas, timeframes, products
    )
    legs = _compile_leg_rules(parsed_leg_rules, transfer_table, networks, areas)
    transfers = _compile_transfer_rules(transfer_table, legs, products)
    join_rules = _compile_join_rules(tables.get("fare_leg_join_rules.txt"), networks, stops)
    caps = _compile_caps(tables.get("fare_caps.txt"), products.currency, riders)
    passes = _compile_passes(tables.get("fare_passes.txt"), products.currency, riders, networks)
    return _assemble_tariff(
        zone,
        networks,
        stops,
        service,
        timeframes,
        riders,
        products,
        legs,
        transfers,
        join_rules,
        caps,
        passes,
    )


# --- agency, time zone


@dataclass(frozen=True, slots=True)
class _TimeZone:
    """agency.txt: the agencies' one time zone and its UTC offsets over the scanned years."""

    name: str
    offset_start_s: tuple[int, ...]  # offset_s[i] applies from offset_start_s[i] (UTC) on
    offset_s: tuple[int, ...]


def _compile_time_zone(agency: _Table | None) -> _TimeZone:
    if agency is None or not agency.rows:
        raise FeedError(
            "agency.txt", 1, "agency_timezone", "agency.txt with one agency is required"
        )
    timezone_name = agency.required(agency.rows[0], "agency_timezone")
    for row in agency.rows[1:]:
        if agency.required(row, "agency_timezone") != timezone_name:
            raise agency.error(row, "agency_timezone", "all agencies must share one time zone")
    offset_start_s, offset_s = _offsets(agency, agency.rows[0], timezone_name)
    return _TimeZone(timezone_name, offset_start_s, offset_s)


# --- networks, routes, stops


@dataclass(frozen=True, slots=True)
class _Networks:
    """routes.txt with networks.txt and route_networks.txt (or a network_id column)."""

    route_index: dict[str, int]
    route_network: tuple[int, ...]  # route index -> network index or any_index
    network_index: dict[str, int]
    network_ids: tuple[str, ...]


def _compile_networks(
    routes: _Table | None, networks: _Table | None, route_networks: _Table | None
) -> _Networks:
    if routes is None:
        raise FeedError("routes.txt", 1, "route_id", "routes.txt is required")
    route_index = _index(routes, "route_id")
    route_has_network_column = "network_id" in routes.header
    if route_has_network_column and (networks is not None or route_networks is not None):
        raise routes.error(
            None, "network_id", "forbidden when networks.txt or route_networks.txt exists"
        )
    if route_has_network_column:
        network_names = sorted({row["network_id"] for row in routes.rows if row.get("network_id")})
        network_index = {value: position for position, value in enumerate(network_names)}
    else:
        network_index = _index(networks, "network_id")
    route_network = [any_index] * len(route_index)
    if route_has_network_column:
        for row in routes.rows:
            if row.get("network_id"):
                route_network[route_index[row["route_id"]]] = network_index[row["network_id"]]
    elif route_networks is not None:
        seen_routes: set[str] = set()
        for row in route_networks.rows:
            route = route_networks.required(row, "route_id")
            if route in seen_routes:
                raise route_networks.error(row, "route_id", f"route {route!r} is in two networks")
            seen_routes.add(route)
            route_position = route_networks.reference(row, "route_id", route_index, "routes.txt")
            network_position = route_networks.reference(
                row, "network_id", network_index, "networks.txt"
            )
            if network_position == any_index:
                raise route_networks.error(row, "network_id", "required value is empty")
            route_network[route_position] = network_position
    if len(network_index) > network_count_max:
        raise FeedError("networks.txt", 1, "network_id", f"more than {network_count_max} networks")
    network_ids = tuple(sorted(network_index, key=network_index.__getitem__))
    return _Networks(route_index, tuple(route_network), network_index, network_ids)


@dataclass(frozen=True, slots=True)
class _Stops:
    """stops.txt: stop indices and each stop's station."""

    stop_index: dict[str, int]
    stop_ids: tuple[str, ...]
    stop_station: tuple[int, ...]  # stop index -> its station's index (or itself)


def _compile_stops(stops: _Table | None) -> _Stops:
    stop_index = _index(stops, "stop_id")
    stop_ids = tuple(sorted(stop_index, key=stop_index.__getitem__))
    stop_station = list(range(len(stop_ids)))
    if stops is not None:
        for row in stops.rows:
            parent = stops.reference(row, "parent_station", stop_index, "stops.txt")
            if parent != any_index:
                stop_station[stop_index[row["stop_id"]]] = parent
    return _Stops(stop_index, stop_ids, tuple(stop_station))


# --- service days (calendar, calendar_dates, public holidays)


@dataclass(frozen=True, slots=True)
class _ServiceDays:
    """public_holidays.txt, calendar.txt and calendar_dates.txt: the days each service runs."""

    holidays: frozenset[int]  # local days since 1970-01-01
    # service id -> the local days it runs (calendar_dates.txt may name services calendar.txt
    # does not; a removed date still makes the service known)
    service_days: dict[str, set[int]]
    service_period: frozenset[int]  # first and last days of each calendar row, added dates
    uses_public_holidays: bool  # some calendar row has ksh_public_holidays 1 or 2


def _compile_public_holidays(holidays_table: _Table | None) -> frozenset[int]:
    holidays: set[int] = set()
    if holidays_table is not None:
        for row in holidays_table.rows:
            day = holidays_table.date(row, "date")
            if day in holidays:
                raise holidays_table.error(row, "date", "date listed twice")
            holidays.add(day)
            basis = row.get("ksh_basis", "")
            if basis and basis not in holiday_bases:
                raise holidays_table.error(
                    row, "ksh_basis", f"{basis!r} is not one of {', '.join(holiday_bases)}"
                )
    return frozenset(holidays)


def _compile_service_days(
    holidays_table: _Table | None, calendar: _Table | None, calendar_dates: _Table | None
) -> _ServiceDays:
    holidays = _compile_public_holidays(holidays_table)
    service_days: dict[str, set[int]] = defaultdict(set)
    service_period: set[int] = set()  # first and last days of each row, added dates
    uses_public_holidays = False
    weekday_fields = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    if calendar is not None:
        seen_services: set[str] = set()
        for row in calendar.rows:
            service = calendar.required(row, "service_id")
            if service in seen_services:
                raise calendar.error(row, "service_id", f"duplicate id {service!r}")
            seen_services.add(service)
            runs = [calendar.integer(row, name, 0, 1) for name in weekday_fields]
            first, last = calendar.date(row, "start_date"), calendar.date(row, "end_date")
            if last < first:
                raise calendar.error(row, "end_date", "before start_date")
            holiday_rule = calendar.integer(row, "ksh_public_holidays", 0, 2, default=0)
            uses_public_holidays = uses_public_holidays or holiday_rule != 0
            service_period.update((first, last))
            days = service_days[service]
            for day in range(first, last + 1):
                if runs[(day + 3) % 7]:  # 1970-01-01 was a Thursday; Monday = 0
                    days.add(day)
            if holiday_rule == 1:
                days -= holidays
            elif holiday_rule == 2:
                days &= holidays
    if calendar_dates is not None:
        for row in calendar_dates.rows:
            service = calendar_dates.required(row, "service_id")
            day = calendar_dates.date(row, "date")
            exception = calendar_dates.integer(row, "exception_type", 1, 2)
            if exception == 1:
                service_days[service].add(day)
                service_period.add(day)
            else:
                service_days[service].discard(day)
    return _ServiceDays(holidays, service_days, frozenset(service_period), uses_public_holidays)


# --- timeframes


@dataclass(frozen=True, slots=True)
class _Timeframes:
    """timeframes.txt: each timeframe group's spans by local day, and the segments of a day."""

    ids: tuple[str, ...]
    position: dict[str, int]  # timeframe group id -> index
    days: tuple[dict[int, tuple[tuple[int, int], ...]], ...]  # index -> {day: spans}
    bounds_s: tuple[int, ...]  # sorted start/end seconds of day over all timeframes
    segment_of_second: tuple[int, ...]  # second of day -> span between bounds it falls in
    pattern_days: tuple[int, ...]  # one day per distinct pattern of spans (`Tariff`)


def _compile_timeframes(timeframes: _Table | None, service: _ServiceDays) -> _Timeframes:
    service_days = service.service_days
    timeframe_rows: dict[str, dict[int, list[tuple[int, int]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    bounds: set[int] = {0}
    if timeframes is not None:
        per_service: dict[tuple[str, str], list[tuple[int, int, int]]] = defaultdict(list)
        for row in timeframes.rows:
            group = timeframes.required(row, "timeframe_group_id")
            has_start, has_end = bool(row.get("start_time")), bool(row.get("end_time"))
            if has_start != has_end:
                field_name = "end_time" if has_start else "start_time"
                raise timeframes.error(row, field_name, "start_time and end_time go together")
            start = timeframes.time_of_day(row, "start_time", 0)
            end = timeframes.time_of_day(row, "end_time", seconds_per_day)
            if end <= start:
                raise timeframes.error(row, "end_time", "not after start_time")
            service_id = timeframes.required(row, "service_id")
            if service_id not in service_days:
                raise timeframes.error(
                    row, "service_id", f"{service_id!r} is not a calendar service"
                )
            for other_start, other_end, _ in per_service[(group, service_id)]:
                if start < other_end and other_start < end:
                    raise timeframes.error(row, "start_time", "overlaps another timeframe row")
            per_service[(group, service_id)].append((start, end, row.line))
            for day in service_days[service_id]:
                timeframe_rows[group][day].append((start, end))
            bounds.update((start, end))
    timeframe_ids = tuple(sorted(timeframe_rows))
    timeframe_days = tuple(
        {day: tuple(sorted(spans)) for day, spans in timeframe_rows[group].items()}
        for group in timeframe_ids
    )
    # One day per distinct pattern of timeframe spans over the service period (`pattern_days`).
    patterns: dict[tuple[tuple[tuple[int, int], ...] | None, ...], int] = {}
    if service.service_period:
        for day in range(min(service.service_period), max(service.service_period) + 1):
            pattern = tuple(spans.get(day) for spans in timeframe_days)
            patterns.setdefault(pattern, day)
    sorted_bounds = tuple(sorted(bounds))
    return _Timeframes(
        timeframe_ids,
        {value: position for position, value in enumerate(timeframe_ids)},
        timeframe_days,
        sorted_bounds,
        _segment_of_second(sorted_bounds),
        tuple(sorted(patterns.values())),
    )


def _segment_of_second(sorted_bounds: tuple[int, ...]) -> tuple[int, ...]:
    """Segment of second s = bisect_right(sorted_bounds, s), built span by span."""
    segment_of_second: list[int] = []
    for position, low in enumerate(sorted_bounds):
        high = sorted_bounds[position + 1] if position + 1 < len(sorted_bounds) else seconds_per_day
        segment_of_second += [position + 1] * max(min(high, seconds_per_day) - low, 0)
    return tuple(segment_of_second)


# --- areas


@dataclass(frozen=True, slots=True)
class _Areas:
    """areas.txt and stop_areas.txt: the areas each stop is in."""

    area_index: dict[str, int]
    areas_of_stop: tuple[set[int], ...]  # stop index -> area indices


def _compile_areas(areas: _Table | None, stop_areas_table: _Table | None, stops: _Stops) -> _Areas:
    area_index = _index(areas, "area_id")
    areas_of_stop: list[set[int]] = [set() for _ in stops.stop_ids]
    if stop_areas_table is not None:
        for row in stop_areas_table.rows:
            area = stop_areas_table.reference(row, "area_id", area_index, "areas.txt")
            stop = stop_areas_table.reference(row, "stop_id", stops.stop_index, "stops.txt")
            if area == any_index or stop == any_index:
                field_name = "area_id" if area == any_index else "stop_id"
                raise stop_areas_table.error(row, field_name, "required value is empty")
            areas_of_stop[stop].add(area)
        # A station's areas reach its platforms unless a platform has areas of its own.
        for stop, station in enumerate(stops.stop_station):
            if station != stop and not areas_of_stop[stop]:
                areas_of_stop[stop] = set(areas_of_stop[station])
    return _Areas(area_index, tuple(areas_of_stop))


# --- media, categories, products


@dataclass(frozen=True, slots=True)
class _Riders:
    """fare_media.txt and rider_categories.txt."""

    media_index: dict[str, int]
    media_ids: tuple[str, ...]
    category_index: dict[str, int]
    category_ids: tuple[str, ...]
    default_categories: frozenset[str]  # is_default_fare_category = 1


def _compile_riders(media: _Table | None, categories: _Table | None) -> _Riders:
    media_index = _index(media, "fare_media_id")
    if media is not None:
        for row in media.rows:
            media.integer(row, "fare_media_type", 0, 4)
    media_ids = tuple(sorted(media_index, key=media_index.__getitem__))
    category_index = _index(categories, "rider_category_id")
    category_ids = tuple(sorted(category_index, key=category_index.__getitem__))
    default_categories: set[str] = set()
    if categories is not None:
        for row in categories.rows:
            categories.required(row, "rider_category_name")
            if categories.integer(row, "is_default_fare_category", 0, 1, default=0):
                default_categories.add(row["rider_category_id"])
    return _Riders(
        media_index, media_ids, category_index, category_ids, frozenset(default_categories)
    )


@dataclass(frozen=True, slots=True)
class _Products:
    """fare_products.txt: the one currency and each product's cheapest price per rider."""

    currency: str
    product_ids: tuple[str, ...]
    product_index: dict[str, int]
    # (product index, category index or any_index, media index or any_index) -> cheapest amount
    product_price: dict[tuple[int, int, int], int]
    has_negative_products: bool


def _compile_products(products: _Table | None, riders: _Riders) -> _Products:
    if products is None:
        raise FeedError("fare_products.txt", 1, "fare_product_id", "fare_products.txt is required")
    product_ids = tuple(
        sorted({products.required(row, "fare_product_id") for row in products.rows})
    )
    product_index = {value: position for position, value in enumerate(product_ids)}
    currency: str | None = None
    product_rows: dict[tuple[int, int, int], int] = {}
    product_categories: dict[int, set[int]] = defaultdict(set)
    for row in products.rows:
        code = products.required(row, "currency")
        if code not in currency_decimals_by_code:
            raise products.error(row, "currency", f"unsupported currency {code!r}")
        if currency is None:
            currency = code
        elif code != currency:
            raise products.error(row, "currency", f"{code} differs from {currency}: one currency")
        amount = _amount(products, row, "amount", currency_decimals_by_code[code], signed=True)
        key = (
            product_index[row["fare_product_id"]],
            products.reference(
                row, "rider_category_id", riders.category_index, "rider_categories.txt"
            ),
            products.reference(row, "fare_media_id", riders.media_index, "fare_media.txt"),
        )
        if key in product_rows:
            raise products.error(row, "fare_product_id", "duplicate product/category/media")
        product_rows[key] = amount
        product_categories[key[0]].add(key[1])
    assert currency is not None or not products.rows
    if currency is None:
        raise products.error(None, "currency", "no fare products")
    for product, eligible in product_categories.items():
        defaults = {riders.category_ids[c] for c in eligible if c != any_index}
        defaults &= riders.default_categories
        if len(defaults) > 1:
            raise products.error(
                None,
                "rider_category_id",
                f"product {product_ids[product]!r} has several default categories",
            )
    return _Products(
        currency,
        product_ids,
        product_index,
        _cheapest_prices(product_rows, riders),
        any(amount < 0 for amount in product_rows.values()),
    )


def _cheapest_prices(
    product_rows: dict[tuple[int, int, int], int], riders: _Riders
) -> dict[tuple[int, int, int], int]:
    """Cheapest variant per (product, category, media); any_index = rider/medium not given."""
    variants: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
    for (product, category, medium), amount in product_rows.items():
        variants[product].append((category, medium, amount))
    product_price: dict[tuple[int, int, int], int] = {}
    for product, rows_of_product in variants.items():
        for category in (*range(len(riders.category_ids)), any_index):
            for medium in (*range(len(riders.media_ids)), any_index):
                amounts = [
                    amount
                    for c, m, amount in rows_of_product
                    if c in (category, any_index)
                    and (medium == any_index or m in (medium, any_index))
                ]
                if amounts:
                    product_price[(product, category, medium)] = min(amounts)
    return product_price


# --- fare leg rules


class _ParsedLegRule(NamedTuple):
    """One fare_leg_rules.txt row, its leg group still a name."""

    network: int
    from_area: int
    to_area: int
    rule: LegRule  # group_index not set yet
    group_name: str  # "" = no leg group


@dataclass(frozen=True, slots=True)
class _ParsedLegRules:
    """fare_leg_rules.txt, row by row, and the values each column lists."""

    priority_regime: bool  # the rule_priority column is present
    rules: tuple[_ParsedLegRule, ...]
    group_names: frozenset[str]
    listed_networks: frozenset[int]
    listed_from: frozenset[int]
    listed_to: frozenset[int]


def _parse_leg_rules(
    leg_table: _Table | None,
    networks: _Networks,
    areas: _Areas,
    timeframes: _Timeframes,
    products: _Products,
) -> _ParsedLegRules:
    priority_regime = leg_table is not None and "rule_priority" in leg_table.header
    group_names: set[str] = set()
    parsed: list[_ParsedLegRule] = []
    listed_networks: set[int] = set()
    listed_from: set[int] = set()
    listed_to: set[int] = set()
    if leg_table is not None:
        area_index = areas.area_index
        timeframe_position = timeframes.position
        seen_keys: set[tuple[str, ...]] = set()
        for order, row in enumerate(leg_table.rows):
            product = leg_table.reference(
                row, "fare_product_id", products.product_index, "fare_products.txt"
            )
            if product == any_index:
                raise leg_table.error(row, "fare_product_id", "required value is empty")
            network = leg_table.reference(row, "network_id", networks.network_index, "networks")
            from_area = leg_table.reference(row, "from_area_id", area_index, "areas.txt")
            to_area = leg_table.reference(row, "to_area_id", area_index, "areas.txt")
            from_timeframe = leg_table.reference(
                row, "from_timeframe_group_id", timeframe_position, "timeframes.txt"
            )
            to_timeframe = leg_table.reference(
                row, "to_timeframe_group_id", timeframe_position, "timeframes.txt"
            )
            key_fields = (
                "network_id", "from_area_id", "to_area_id", "from_timeframe_group_id",
                "to_timeframe_group_id", "fare_product_id",
            )  # fmt: skip
            primary_key = tuple(row.get(name, "") for name in key_fields)
            if primary_key in seen_keys:
                raise leg_table.error(row, "fare_product_id", "duplicate fare leg rule")
            seen_keys.add(primary_key)
            priority = leg_table.integer(row, "rule_priority", 0, 2**31, default=0)
            group_name = row.get("leg_group_id", "")
            if group_name:
                group_names.add(group_name)
            listed_networks.add(network)
            listed_from.add(from_area)
            listed_to.add(to_area)
            rule = LegRule(
                order,
                priority,
                from_timeframe,
                to_timeframe,
                product,
                any_index,
                f"fare_leg_rules.txt:{row.line}",
            )
            parsed.append(_ParsedLegRule(network, from_area, to_area, rule, group_name))
    return _ParsedLegRules(
        priority_regime,
        tuple(parsed),
        frozenset(group_names),
        frozenset(listed_networks),
        frozenset(listed_from),
        frozenset(listed_to),
    )


@dataclass(frozen=True, slots=True)
class _LegRules:
    """The compiled fare leg rules: by (network, from area, to area) key, and the keys a
    network or stop can match."""

    priority_regime: bool
    group_ids: tuple[str, ...]
    group_position: dict[str, int]  # leg group id -> index
    leg_rules: dict[tuple[int, int, int], tuple[LegRule, ...]]
    network_keys: tuple[tuple[int, ...], ...]  # network index (last = none) -> rule keys
    from_area_keys: tuple[tuple[int, ...], ...]  # stop index (last = unknown) -> rule keys
    to_area_keys: tuple[tuple[int, ...], ...]


def _compile_leg_rules(
    parsed: _ParsedLegRules, transfer_table: _Table | None, networks: _Networks, areas: _Areas
) -> _LegRules:
    if transfer_table is not None:
        for row in transfer_table.rows:
            for name in ("from_leg_group_id", "to_leg_group_id"):
                if row.get(name) and row[name] not in parsed.group_names:
                    raise transfer_table.error(row, name, f"{row[name]!r} is no leg_group_id")
    group_ids = tuple(sorted(parsed.group_names))
    if len(group_ids) > card_index_max:
        raise FeedError("fare_leg_rules.txt", 1, "leg_group_id", "too many leg groups")
    group_position = {value: position for position, value in enumerate(group_ids)}
    leg_rules: dict[tuple[int, int, int], list[LegRule]] = defaultdict(list)
    for network, from_area, to_area, rule, group_name in parsed.rules:
        group_of_rule = group_position[group_name] if group_name else any_index
        leg_rules[(network, from_area, to_area)].append(rule._replace(group_index=group_of_rule))
    regime = parsed.priority_regime
    all_networks = (*range(len(networks.network_ids)), any_index)
    return _LegRules(
        regime,
        group_ids,
        group_position,
        {key: tuple(rules) for key, rules in leg_rules.items()},
        tuple(_rule_keys({network}, parsed.listed_networks, regime) for network in all_networks),
        tuple(_rule_keys(a, parsed.listed_from, regime) for a in (*areas.areas_of_stop, set())),
        tuple(_rule_keys(a, parsed.listed_to, regime) for a in (*areas.areas_of_stop, set())),
    )


def _rule_keys(actual: set[int], listed: frozenset[int], priority_regime: bool) -> tuple[int, ...]:
    """Rule keys a leg's value can match: the two empty-value regimes differ here."""
    named = tuple(sorted((actual & listed) - {any_index}))
    if priority_regime:  # empty = does not affect matching
        return (*named, any_index)
    # empty = everything not listed in the column
    return named if named else (any_index,)


# --- fare transfer rules


@dataclass(frozen=True, slots=True)
class _TransferRules:
    """fare_transfer_rules.txt compiled: by (from, to) group key, in the order they are tried."""

    rule_list: tuple[TransferRule, ...]  # file order
    rules: dict[tuple[int, int], tuple[TransferRule, ...]]
    from_group_keys: tuple[int, ...]  # group index (last = none) -> transfer key
    to_group_keys: tuple[int, ...]


def _compile_transfer_rules(
    transfer_table: _Table | None, legs: _LegRules, products: _Products
) -> _TransferRules:
    transfer_list: list[TransferRule] = []
    listed_from_groups: set[int] = set()
    listed_to_groups: set[int] = set()
    if transfer_table is not None:
        seen_transfers: set[tuple[str, ...]] = set()
        key_fields = (
            "from_leg_group_id", "to_leg_group_id", "fare_product_id", "transfer_count",
            "duration_limit",
        )  # fmt: skip
        for order, row in enumerate(transfer_table.rows):
            rule = _parse_transfer_rule(
                transfer_table, order, row, legs.group_position, products.product_index
            )
            primary_key = tuple(row.get(name, "") for name in key_fields)
            if primary_key in seen_transfers:
                raise transfer_table.error(row, "fare_product_id", "duplicate transfer rule")
            seen_transfers.add(primary_key)
            listed_from_groups.add(rule.key[0])
            listed_to_groups.add(rule.key[1])
            transfer_list.append(rule)
        if len(transfer_list) > card_index_max:
            raise transfer_table.error(None, "(file)", "too many transfer rules")
    all_groups = (*range(len(legs.group_ids)), any_index)
    transfer_rules: dict[tuple[int, int], list[TransferRule]] = defaultdict(list)
    for rule in transfer_list:
        transfer_rules[rule.key].append(rule)
    for candidates in transfer_rules.values():
        # Minimum transfer_count first (-1 = no limit = last), then file order.
        candidates.sort(key=lambda r: (r.transfer_count == -1, r.transfer_count or 0, r.order))
    return _TransferRules(
        tuple(transfer_list),
        {key: tuple(rules) for key, rules in transfer_rules.items()},
        tuple(g if g in listed_from_groups else any_index for g in all_groups),
        tuple(g if g in listed_to_groups else any_index for g in all_groups),
    )


def _parse_transfer_rule(
    transfer_table: _Table,
    order: int,
    row: _Row,
    group_position: dict[str, int],
    product_index: dict[str, int],
) -> TransferRule:
    """One fare_transfer_rules.txt row, validated (its primary key is checked by the caller)."""
    from_group = group_position.get(row.get("from_leg_group_id", ""), any_index)
    to_group = group_position.get(row.get("to_leg_group_id", ""), any_index)
    has_count = bool(row.get("transfer_count"))
    same = row.get("from_leg_group_id", "") == row.get("to_leg_group_id", "")
    if same and not has_count:
        raise transfer_table.error(row, "transfer_count", "required when from == to")
    if not same and has_count:
        raise transfer_table.error(row, "transfer_count", "forbidden when from != to")
    count: int | None = None
    if has_count:
        count = transfer_table.integer(row, "transfer_count", -1, transfer_count_max)
        if count == 0:
            raise transfer_table.error(row, "transfer_count", "0 is not allowed")
    limit: int | None = None
    limit_type = 0
    if row.get("duration_limit"):
        limit = transfer_table.integer(row, "duration_limit", 1, duration_limit_s_max)
        limit_type = transfer_table.integer(row, "duration_limit_type", 0, 3)
    elif row.get("duration_limit_type"):
        raise transfer_table.error(row, "duration_limit_type", "needs duration_limit")
    transfer_type = transfer_table.integer(row, "fare_transfer_type", 0, 2)
    product = transfer_table.reference(row, "fare_product_id", product_index, "fare_products.txt")
    return TransferRule(
        order,
        (from_group, to_group),
        count,
        limit,
        limit_type,
        transfer_type,
        product,
        f"fare_transfer_rules.txt:{row.line}",
        transfer_count_unlimited if count is None or count == -1 else count,
    )


# --- fare leg join rules


def _compile_join_rules(
    join_table: _Table | None, networks: _Networks, stops: _Stops
) -> dict[tuple[int, int], tuple[tuple[int, int], ...]]:
    """(from network, to network) -> the (from, to) station pairs that join (any_index: any)."""
    join_rules: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    if join_table is not None:
        stop_station = stops.stop_station
        for row in join_table.rows:
            nets = []
            for name in ("from_network_id", "to_network_id"):
                position = join_table.reference(row, name, networks.network_index, "networks")
                if position == any_index:
                    raise join_table.error(row, name, "required value is empty")
                nets.append(position)
            if bool(row.get("from_stop_id")) != bool(row.get("to_stop_id")):
                name = "to_stop_id" if row.get("from_stop_id") else "from_stop_id"
                raise join_table.error(row, name, "from_stop_id and to_stop_id go together")
            from_stop = join_table.reference(row, "from_stop_id", stops.stop_index, "stops.txt")
            to_stop = join_table.reference(row, "to_stop_id", stops.stop_index, "stops.txt")
            stations = (
                stop_station[from_stop] if from_stop != any_index else any_index,
                stop_station[to_stop] if to_stop != any_index else any_index,
            )
            join_rules[(nets[0], nets[1])].append(stations)
    return {key: tuple(stations) for key, stations in join_rules.items()}


# --- extensions: caps, passes


@dataclass(frozen=True, slots=True)
class _Caps:
    """fare_caps.txt: the caps, and which apply to each rider category and medium."""

    caps: tuple[CapRule, ...]
    caps_for: dict[tuple[int, int], tuple[int, ...]]  # (category, media) -> cap indices


def _compile_caps(caps_table: _Table | None, currency: str, riders: _Riders) -> _Caps:
    caps: list[CapRule] = []
    cap_scope: list[tuple[int, int]] = []
    if caps_table is not None:
        _index(caps_table, "fare_cap_id")
        for row in caps_table.rows:
            caps.append(_parse_cap(caps_table, row, currency))
            cap_scope.append(
                (
                    caps_table.reference(
                        row, "rider_category_id", riders.category_index, "rider_categories.txt"
                    ),
                    caps_table.reference(
                        row, "fare_media_id", riders.media_index, "fare_media.txt"
                    ),
                )
            )
    caps_for: dict[tuple[int, int], tuple[int, ...]] = {}
    for category in (*range(len(riders.category_ids)), any_index):
        for medium in (*range(len(riders.media_ids)), any_index):
            chosen = tuple(
                position
                for position, (c, m) in enumerate(cap_scope)
                if c in (category, any_index) and m in (medium, any_index)
            )
            if len(chosen) > card_caps_max:
                assert caps_table is not None
                raise caps_table.error(
                    None,
                    "rider_category_id",
                    f"more than {card_caps_max} caps apply to one category and medium",
                )
            caps_for[(category, medium)] = chosen
    return _Caps(tuple(caps), caps_for)


def _parse_cap(caps_table: _Table, row: _Row, currency: str) -> CapRule:
    """One fare_caps.txt row, validated (its category and medium are read by the caller)."""
    period = caps_table.choice(row, "period", ("daily", "weekly", "rolling"), "")
    period_days = {"daily": 1, "weekly": 7}.get(period, 0)
    if period == "rolling":
        period_days = caps_table.integer(row, "period_days", 1, rolling_days_max)
    elif row.get("period_days"):
        raise caps_table.error(row, "period_days", "only for period=rolling")
    day_start = caps_table.time_of_day(row, "service_day_start_time", 0)
    if day_start >= seconds_per_day:
        raise caps_table.error(row, "service_day_start_time", "must be before 24:00:00")
    amount_max = None
    if row.get("amount"):
        if caps_table.required(row, "currency") != currency:
            raise caps_table.error(row, "currency", f"must be {currency}")
        amount_max = _amount(caps_table, row, "amount", currency_decimals_by_code[currency])
    rides_max = None
    if row.get("ride_count"):
        rides_max = caps_table.integer(row, "ride_count", 1, 255)
    if amount_max is None and rides_max is None:
        raise caps_table.error(row, "amount", "give amount, ride_count or both")
    return CapRule(row["fare_cap_id"], period, period_days, day_start, amount_max, rides_max)


def _compile_passes(
    passes_table: _Table | None, currency: str, riders: _Riders, networks: _Networks
) -> tuple[PassRule, ...]:
    passes: list[PassRule] = []
    if passes_table is not None:
        _index(passes_table, "fare_pass_id")
        if len(passes_table.rows) > 254:
            raise passes_table.error(None, "fare_pass_id", "at most 254 passes (one card byte)")
        for row in passes_table.rows:
            if passes_table.required(row, "currency") != currency:
                raise passes_table.error(row, "currency", f"must be {currency}")
            passes.append(
                PassRule(
                    row["fare_pass_id"],
                    passes_table.reference(
                        row, "rider_category_id", riders.category_index, "rider_categories.txt"
                    ),
                    passes_table.reference(row, "network_id", networks.network_index, "networks"),
                    passes_table.integer(row, "validity_days", 1, 3660),
                    _amount(passes_table, row, "amount", currency_decimals_by_code[currency]),
                )
            )
    return tuple(passes)


# --- the tariff


def _assemble_tariff(
    zone: _TimeZone,
    networks: _Networks,
    stops: _Stops,
    service: _ServiceDays,
    timeframes: _Timeframes,
    riders: _Riders,
    products: _Products,
    legs: _LegRules,
    transfers: _TransferRules,
    join_rules: dict[tuple[int, int], tuple[tuple[int, int], ...]],
    caps: _Caps,
    passes: tuple[PassRule, ...],
) -> Tariff:
    """The sections' records as one `Tariff`, with the lookups built from several of them."""
    default_category_id = min(riders.default_categories) if riders.default_categories else None
    service_period = service.service_period
    return Tariff(
        currency=products.currency,
        currency_decimals=currency_decimals_by_code[products.currency],
        timezone_name=zone.name,
        offset_start_s=zone.offset_start_s,
        offset_s=zone.offset_s,
        route_index=networks.route_index,
        route_network=networks.route_network,
        network_of_route={
            route: networks.route_network[position]
            for route, position in networks.route_index.items()
        },
        network_ids=networks.network_ids,
        stop_index=stops.stop_index,
        stop_ids=stops.stop_ids,
        stop_station=stops.stop_station,
        category_index=riders.category_index,
        category_ids=riders.category_ids,
        default_category_id=default_category_id,
        media_index=riders.media_index,
        media_ids=riders.media_ids,
        product_ids=products.product_ids,
        product_price=products.product_price,
        has_negative_products=products.has_negative_products,
        priority_regime=legs.priority_regime,
        network_keys=legs.network_keys,
        from_area_keys=legs.from_area_keys,
        to_area_keys=legs.to_area_keys,
        leg_rules=legs.leg_rules,
        timeframe_ids=timeframes.ids,
        timeframe_days=timeframes.days,
        timeframe_bounds_s=timeframes.bounds_s,
        segment_of_second=timeframes.segment_of_second,
        uses_timeframes=bool(timeframes.ids),
        group_ids=legs.group_ids,
        from_group_keys=transfers.from_group_keys,
        to_group_keys=transfers.to_group_keys,
        transfer_rules=transfers.rules,
        transfer_labels=tuple(rule.label for rule in transfers.rule_list),
        transfer_rule_list=transfers.rule_list,
        join_rules=join_rules,
        caps=caps.caps,
        caps_for=caps.caps_for,
        passes=passes,
        pass_index={rule.pass_id: position for position, rule in enumerate(passes)},
        tag=_tag(stops, networks, legs, transfers),
        rider_lookup=_rider_lookup(riders, default_category_id),
        capped_riders=frozenset(key for key, chosen in caps.caps_for.items() if chosen),
        fixed_offset_s=zone.offset_s[0] if len(zone.offset_s) == 1 else None,
        service_first_day=min(service_period) if service_period else None,
        service_last_day=max(service_period) if service_period else None,
        holiday_days=service.holidays,
        uses_public_holidays=service.uses_public_holidays,
        pattern_days=timeframes.pattern_days,
    )


def _tag(stops: _Stops, networks: _Networks, legs: _LegRules, transfers: _TransferRules) -> int:
    """4 bits of a fingerprint of the index tables the trip state holds indices into."""
    labels = [rule.label for rule in transfers.rule_list]
    fingerprint = hashlib.sha256(
        repr((stops.stop_ids, networks.network_ids, legs.group_ids, labels)).encode()
    ).digest()
    return fingerprint[0] & 0x0F


def _rider_lookup(
    riders: _Riders, default_category_id: str | None
) -> dict[tuple[str | None, str | None], tuple[int, int]]:
    """(rider_category_id or None, fare_media_id or None) -> (category index, media index)."""
    rider_lookup: dict[tuple[str | None, str | None], tuple[int, int]] = {}
    for category_id in (*riders.category_ids, None):
        effective = category_id if category_id is not None else default_category_id
        category = riders.category_index[effective] if effective is not None else any_index
        for media_id in (*riders.media_ids, None):
            medium = riders.media_index[media_id] if media_id is not None else any_index
            rider_lookup[(category_id, media_id)] = (category, medium)
    return rider_lookup


# ------------------------------------------------------------------------------ coverage


def _date_of_day(day: int) -> datetime.date:
    return _epoch + datetime.timedelta(days=day)


def service_end_date(tariff: Tariff) -> datetime.date | None:
    """The last local date the feed's calendar covers (None: the feed has no calendar)."""
    if tariff.service_last_day is None:
        return None
    return _date_of_day(tariff.service_last_day)


@dataclass(frozen=True, slots=True)
class FeedCoverage:
    """What a feed's calendar covers, seen from `today` (a local date in the agency zone)."""

    service_start: datetime.date | None  # None: no calendar (nothing in the feed expires)
    service_end: datetime.date | None
    days_left: int | None  # service_end - today: 0 = today is the last day; < 0: ended
    years_without_holidays: tuple[int, ...]  # years of the service period with no holiday

    @property
    def ended(self) -> bool:
        return self.days_left is not None and self.days_left < 0


def feed_coverage(tariff: Tariff, today: datetime.date) -> FeedCoverage:
    """The feed's service period against `today`. Years without public holidays are listed
    only for a feed that ships holidays or has a service that depends on them."""
    if tariff.service_first_day is None or tariff.service_last_day is None:
        return FeedCoverage(None, None, None, ())
    start = _date_of_day(tariff.service_first_day)
    end = _date_of_day(tariff.service_last_day)
    missing: tuple[int, ...] = ()
    if tariff.uses_public_holidays or tariff.holiday_days:
        shipped = {_date_of_day(day).year for day in tariff.holiday_days}
        missing = tuple(year for year in range(start.year, end.year + 1) if year not in shipped)
    return FeedCoverage(start, end, (end - today).days, missing)
