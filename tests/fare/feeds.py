"""Small feeds written as CSV text, for tests."""

from __future__ import annotations

import datetime
from importlib import resources

from bus_terminals.fare.feed import compile_feed, feed_file_names
from bus_terminals.fare.model import Leg, Tap
from bus_terminals.fare.tariff import Tariff

base_files = {
    "agency.txt": "agency_id,agency_name,agency_url,agency_timezone\na,A,https://a,UTC\n",
    "calendar.txt": (
        "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,start_date,end_date\n"
        "all,1,1,1,1,1,1,1,20250101,20261231\n"
        "weekdays,1,1,1,1,1,0,0,20250101,20261231\n"
    ),
}


def feed(**files: str) -> dict[str, str]:
    """Feed texts: the base files plus `files` (keyword = file name without .txt)."""
    texts = dict(base_files)
    for name, text in files.items():
        texts[f"{name}.txt"] = text.strip() + "\n"
    return texts


def tariff(**files: str) -> Tariff:
    return compile_feed(feed(**files))


def utc(text: str) -> int:
    """'2025-03-12T08:05' (UTC) -> epoch seconds."""
    moment = datetime.datetime.fromisoformat(text).replace(tzinfo=datetime.UTC)
    return int(moment.timestamp())


def leg(
    route: str, departure: str, arrival: str | None = None, start: str = "", end: str = ""
) -> Leg:
    return Leg(route, start or None, end or None, utc(departure), utc(arrival or departure))


def tap(
    route: str, time: str, stop: str | None = None, category: str = "", medium: str = ""
) -> Tap:
    return Tap(utc(time), route, stop, category, medium)


# Three networks (A, B, C), one route each, a stop per route and a shared interchange.
network_files = {
    "routes": "route_id,route_type,network_id\nra,3,A\nrb,3,B\nrc,3,C\nrx,3,",
    "stops": "stop_id,stop_name\ns1,S1\ns2,S2\ns3,S3\nhub,Hub",
}


def trans_semarang_ending(end_date: str) -> Tariff:
    """The shipped Trans Semarang feed with its calendar cut to end on `end_date` (YYYYMMDD):
    a feed whose service has run out, on any day the tests run."""
    shipped = resources.files("bus_terminals.fare").joinpath("data", "trans_semarang")
    texts = {
        name: shipped.joinpath(name).read_text(encoding="utf-8")
        for name in feed_file_names
        if shipped.joinpath(name).is_file()
    }
    calendar = texts["calendar.txt"]
    assert calendar.count(",20301231,") == 2, "the shipped calendar changed: update this helper"
    texts["calendar.txt"] = calendar.replace(",20301231,", f",{end_date},")
    return compile_feed(texts)
