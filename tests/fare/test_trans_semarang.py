"""The shipped Trans Semarang tariff (reference/indonesia.md §4.2) and the `ksh fare` command."""

from __future__ import annotations

import csv
import datetime
import json
import re
from importlib import resources
from pathlib import Path

import pytest

from bus_terminals.fare.engine import activate_pass, decide, price_journey
from bus_terminals.fare.feed import feed_coverage, load_feed
from bus_terminals.fare.model import FareOutcome, Leg, Tap, blank_trip_state
from bus_terminals.fare.tariff import Tariff
from ksh.cli import main

jakarta = datetime.timezone(datetime.timedelta(hours=7))
concession_categories = ("elderly", "veteran", "toddler", "disabled", "kia_holder")
student_categories = ("school_student", "university_student", "santri")


@pytest.fixture(scope="module")
def semarang() -> Tariff:
    return load_feed()


def local(text: str) -> int:
    return int(datetime.datetime.fromisoformat(text).replace(tzinfo=jakarta).timestamp())


def fare(tariff: Tariff, when: str, category: str = "general", medium: str = "ksh_card") -> int:
    decision = decide(
        tariff, blank_trip_state, Tap(local(when), "K1", "mangkang", category, medium)
    )
    assert decision.outcome is FareOutcome.priced
    return decision.amount


def test_general_fare_by_card_and_cash(semarang: Tariff) -> None:
    assert semarang.currency == "IDR"
    assert fare(semarang, "2025-03-12T08:05") == 3_500_00  # IDR has 2 decimals in ISO 4217
    assert fare(semarang, "2025-03-12T08:05", medium="cash") == 4_000_00
    assert fare(semarang, "2025-03-12T08:05", medium="bank_emoney") == 3_500_00


@pytest.mark.parametrize("category", concession_categories + student_categories)
def test_concessions_on_a_weekday_and_saturday(semarang: Tariff, category: str) -> None:
    assert fare(semarang, "2025-03-12T08:05", category) == 1_000_00
    assert fare(semarang, "2025-03-15T08:05", category, "cash") == 1_000_00  # Saturday


@pytest.mark.parametrize("category", student_categories)
def test_student_rates_do_not_apply_on_sundays_and_public_holidays(
    semarang: Tariff, category: str
) -> None:
    assert fare(semarang, "2025-03-16T08:05", category) == 3_500_00  # Sunday
    assert fare(semarang, "2025-03-16T08:05", category, "cash") == 4_000_00
    assert fare(semarang, "2025-05-29T08:05", category) == 3_500_00  # Thursday, a holiday
    assert fare(semarang, "2025-05-30T08:05", category) == 1_000_00  # the next day


@pytest.mark.parametrize("category", concession_categories)
def test_other_concessions_apply_on_sundays_and_holidays(semarang: Tariff, category: str) -> None:
    assert fare(semarang, "2025-03-16T08:05", category) == 1_000_00
    assert fare(semarang, "2025-05-29T08:05", category) == 1_000_00


def test_student_subscription_makes_rides_free_for_its_validity(semarang: Tariff) -> None:
    start = local("2025-05-02T10:00")
    card = activate_pass(semarang, blank_trip_state, "student_ecard_pelajar", start)
    sunday = Tap(local("2025-05-04T08:00"), "K2", None, "school_student", "e_card")
    decision = decide(semarang, card, sunday)
    assert (decision.amount, decision.pass_id) == (0, "student_ecard_pelajar")
    last_day = start + 182 * 86400
    assert decide(semarang, card, Tap(last_day, "K2", None, "school_student", "e_card")).amount == 0
    after = Tap(last_day + 86400, "K2", None, "school_student", "e_card")
    expired = decide(semarang, card, after)  # a Saturday: back to the student rate
    assert (expired.amount, expired.pass_id) == (1_000_00, None)
    before = Tap(start - 86400, "K2", None, "school_student", "e_card")
    assert decide(semarang, card, before).pass_id is None
    # The pelajar pass is for school students only.
    general = Tap(local("2025-05-05T08:00"), "K2", None, "general", "e_card")
    assert decide(semarang, card, general).amount == 3_500_00


def test_free_transfer_within_90_minutes_of_the_first_boarding(semarang: Tariff) -> None:
    state = blank_trip_state
    paid = []
    for when, route in (
        ("2025-03-12T08:00", "K1"),
        ("2025-03-12T08:50", "K7"),
        ("2025-03-12T09:30", "F2"),  # 90 min after the first boarding: still free
        ("2025-03-12T09:31", "K2"),  # 91 min: a new journey
        ("2025-03-12T10:00", "K3"),
    ):
        decision = decide(
            semarang, state, Tap(local(when), route, "balai_kota", "general", "ksh_card")
        )
        state = decision.state
        paid.append(decision.amount)
        if decision.amount == 0:
            assert decision.fare_transfer_rule == "fare_transfer_rules.txt:2"
    assert paid == [3_500_00, 0, 0, 3_500_00, 0]


def test_no_fare_outside_service_hours(semarang: Tariff) -> None:
    early = Tap(local("2025-03-12T04:30"), "K1", None, "general", "cash")
    assert decide(semarang, blank_trip_state, early).outcome is FareOutcome.unknown_fare
    unknown = Tap(local("2025-03-12T08:30"), "K99", None, "general", "cash")
    assert decide(semarang, blank_trip_state, unknown).outcome is FareOutcome.unknown_route
    stranger = Tap(local("2025-03-12T08:30"), "K1", None, "astronaut", "cash")
    assert (
        decide(semarang, blank_trip_state, stranger).outcome is FareOutcome.unknown_rider_category
    )


def test_corridors_feeders_and_night_service_are_in_one_network(semarang: Tariff) -> None:
    corridors = {f"K{n}" for n in range(1, 9)}
    feeders = {f"F{n}" for n in range(1, 5)}
    assert set(semarang.route_index) == corridors | feeders | {"N1"}
    assert semarang.network_ids == ("trans_semarang",)
    assert all(network == 0 for network in semarang.route_network)
    assert len(semarang.stop_ids) >= 10


def test_every_fare_row_says_whether_it_is_published_or_assumed() -> None:
    folder = resources.files("bus_terminals.fare").joinpath("data", "trans_semarang")
    for name in (
        "fare_products.txt", "fare_leg_rules.txt", "fare_transfer_rules.txt", "timeframes.txt",
        "fare_passes.txt", "public_holidays.txt", "calendar.txt", "fare_media.txt",
    ):  # fmt: skip
        rows = list(csv.DictReader(folder.joinpath(name).read_text().splitlines()))
        assert rows, name
        for row in rows:
            assert row["ksh_source"].startswith(("published:", "assumption:")), (name, row)


def test_price_journey_agrees_with_decide_for_tap_ons(semarang: Tariff) -> None:
    times = ("2025-03-12T08:00", "2025-03-12T08:30", "2025-03-12T12:00")
    legs = [Leg("K1", None, None, local(t), local(t)) for t in times]
    journey = price_journey(semarang, legs, "general", "cash")
    state, amounts = blank_trip_state, []
    for t in times:
        decision = decide(semarang, state, Tap(local(t), "K1", None, "general", "cash"))
        state = decision.state
        amounts.append(decision.amount)
    assert [leg.amount for leg in journey.legs] == amounts == [4_000_00, 0, 4_000_00]


def test_ksh_fare_price_prints_the_journey_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journey = tmp_path / "journey.json"
    journey.write_text(
        json.dumps(
            {
                "rider_category_id": "general",
                "legs": [
                    {
                        "route_id": "K1",
                        "from_stop_id": "mangkang",
                        "to_stop_id": "balai_kota",
                        "departure": "2025-03-12T08:05:00",
                        "arrival": "2025-03-12T08:40:00",
                    },
                    {
                        "route_id": "K7",
                        "from_stop_id": "balai_kota",
                        "to_stop_id": "terboyo",
                        "departure": "2025-03-12T08:50:00",
                        "arrival": "2025-03-12T09:20:00",
                    },
                    {
                        "route_id": "K3",
                        "departure": "2025-03-13T04:00:00",  # next day, before service
                        "arrival": "2025-03-13T04:30:00",
                    },
                ],
            }
        )
    )
    assert main(["fare", "price", "--journey", str(journey)]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["currency"] == "IDR"
    assert output["total"] is None
    assert output["unknown_legs"] == [2]
    first, second = output["legs"][0], output["legs"][1]
    assert (first["fare_product_id"], first["amount"]) == ("general_fare", "3500.00")
    assert first["fare_leg_rule"] == "fare_leg_rules.txt:2"
    assert (second["amount"], second["fare_transfer_rule"]) == ("0.00", "fare_transfer_rules.txt:2")


def test_ksh_fare_price_names_file_line_and_field_of_a_bad_journey(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journey = tmp_path / "journey.json"
    journey.write_text(
        '{"fare_media_id": "cash",\n "legs": [\n  {"route_id": "K1", "departure": "2025-03-12T08:05",'
        ' "arrival": "2025-03-12T08:30"},\n  {"route_id": "K1", "departure": "yesterday",'
        ' "arrival": "2025-03-12T08:30"}]}'
    )
    assert main(["fare", "price", "--journey", str(journey)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"ksh fare: error: {journey}:4: legs[1].departure: not a local ISO date and time "
        "(YYYY-MM-DDTHH:MM): 'yesterday'"
    )
    journey.write_text('{"legs": [')
    assert main(["fare", "price", "--journey", str(journey)]) == 2
    assert f"{journey}:1: (json):" in capsys.readouterr().err


def test_ksh_fare_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fare", "check", "--today", "2026-03-01"]) == 0
    assert "13 routes" in capsys.readouterr().out
    shipped = resources.files("bus_terminals.fare").joinpath("data", "trans_semarang")
    for entry in shipped.iterdir():
        if entry.name.endswith(".txt"):
            (tmp_path / entry.name).write_text(entry.read_text())
    assert main(["fare", "check", "--gtfs", str(tmp_path), "--today", "2026-03-01"]) == 0
    capsys.readouterr()
    products = tmp_path / "fare_products.txt"
    products.write_text(products.read_text().replace("3500.00", "3500.005", 1))
    assert main(["fare", "check", "--gtfs", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        "ksh fare: error: fare_products.txt:3: amount: 3500.005 has more than 2 decimals (ISO 4217)"
    )


def test_rerating_a_day_in_bulk(semarang: Tariff) -> None:
    from bus_terminals.fare.rerate import card_taps_per_day_max, group_taps_by_card, rerate_day
    from bus_terminals.fare.synthetic import day_of_taps

    rows = day_of_taps(semarang, cards=50, taps=400, seed=3)
    results = rerate_day(semarang, group_taps_by_card(rows))
    assert len(results) == 50
    for card_id, result in results.items():
        taps = sorted((tap for card, tap in rows if card == card_id), key=lambda tap: tap.time_s)
        state, expected = blank_trip_state, []
        for tap in taps:
            decision = decide(semarang, state, tap)
            if decision.outcome is FareOutcome.priced:
                state = decision.state
            expected.append(decision.amount)
        assert list(result.amounts) == expected
        assert result.total == sum(expected)
    busy = [Tap(local("2025-03-12T06:00") + n, "K1", None, "general", "cash")
            for n in range(card_taps_per_day_max + 1)]  # fmt: skip
    refused = rerate_day(semarang, {"busy": busy})["busy"]
    assert refused.too_many_taps
    assert refused.total == 0


def _gregorian_easter(year: int) -> datetime.date:
    """The anonymous Gregorian computus (Meeus/Jones/Butcher)."""
    a, b, c = year % 19, year // 100, year % 100
    d, e = divmod(b, 4)
    g = (8 * b + 13) // 25
    h = (19 * a + b - d - g + 15) % 30
    i, k = divmod(c, 4)
    el = (32 + 2 * e + 2 * i - h - k) % 7
    m = (a + 11 * h + 22 * el) // 451
    month, day = divmod(h + el - 7 * m + 114, 31)
    return datetime.date(year, month, day + 1)


fixed_date_holidays = {
    (1, 1): "Tahun Baru Masehi",
    (5, 1): "Hari Buruh",
    (6, 1): "Hari Lahir Pancasila",
    (8, 17): "Hari Kemerdekaan",
    (12, 25): "Natal",
}
every_year_holidays = {
    *fixed_date_holidays.values(),
    "Isra Mikraj",
    "Tahun Baru Imlek",
    "Hari Suci Nyepi",
    "Idul Fitri",
    "Wafat Yesus Kristus",
    "Kebangkitan Yesus Kristus (Paskah)",
    "Waisak",
    "Kenaikan Yesus Kristus",
    "Idul Adha",
    "Tahun Baru Islam",
    "Maulid Nabi Muhammad",
}


def _shipped_rows(name: str) -> list[dict[str, str]]:
    folder = resources.files("bus_terminals.fare").joinpath("data", "trans_semarang")
    return list(csv.DictReader(folder.joinpath(name).read_text().splitlines()))


def test_shipped_calendar_and_holidays_cover_every_year_through_2030(semarang: Tariff) -> None:
    calendar = _shipped_rows("calendar.txt")
    assert all(row["end_date"] >= "20301231" for row in calendar)
    first_year = min(int(row["start_date"][:4]) for row in calendar)
    last_year = max(int(row["end_date"][:4]) for row in calendar)
    holidays: dict[int, list[dict[str, str]]] = {}
    for row in _shipped_rows("public_holidays.txt"):
        holidays.setdefault(int(row["date"][:4]), []).append(row)
    assert set(range(first_year, last_year + 1)) <= set(holidays)  # every year the calendar covers
    assert set(range(2025, 2031)) <= set(holidays)
    for year, rows in holidays.items():
        days = {
            datetime.date(year, int(row["date"][4:6]), int(row["date"][6:])): row for row in rows
        }
        for (month, day), name in fixed_date_holidays.items():
            assert days[datetime.date(year, month, day)]["holiday_name"] == name, year
        assert {row["holiday_name"] for row in rows} >= every_year_holidays, year
        easter = _gregorian_easter(year)
        for offset, name in ((-2, "Wafat Yesus Kristus"), (0, "Kebangkitan Yesus Kristus (Paskah)"),
                             (39, "Kenaikan Yesus Kristus")):  # fmt: skip
            assert days[easter + datetime.timedelta(days=offset)]["holiday_name"] == name, year
        eid = sorted(day for day, row in days.items() if row["holiday_name"] == "Idul Fitri")
        assert len(eid) == 2 and eid[1] - eid[0] == datetime.timedelta(days=1), year
        # A decree where one exists (2025, 2026), our projection (and how) for the years after.
        basis = "decree" if year <= 2026 else "projection"
        for row in rows:
            assert row["ksh_basis"] == basis, row
            if basis == "decree":
                assert "SKB 3 Menteri" in row["ksh_source"], row
            else:
                assert row["ksh_source"].startswith("assumption: projection"), row
    coverage = feed_coverage(semarang, datetime.date(2025, 1, 1))
    assert coverage.service_end == datetime.date(2030, 12, 31)
    assert coverage.years_without_holidays == ()


def test_the_student_rate_follows_the_2026_decree_and_the_projections(semarang: Tariff) -> None:
    assert fare(semarang, "2026-03-20T08:05", "school_student") == 1_000_00  # cuti bersama only
    assert fare(semarang, "2026-03-23T08:05", "school_student") == 1_000_00
    assert fare(semarang, "2029-04-24T08:05", "school_student") == 3_500_00  # Idul Adha, projected
    assert fare(semarang, "2030-12-25T08:05", "school_student") == 3_500_00  # Natal


def test_after_the_service_ends_a_tap_is_charged_the_full_fare_and_says_why(
    semarang: Tariff,
) -> None:
    monday = "2031-01-06T08:05"  # after the calendar's last day (2030-12-31)

    def no_service(when: str, category: str, medium: str = "ksh_card") -> tuple[int, str | None]:
        decision = decide(
            semarang, blank_trip_state, Tap(local(when), "K1", None, category, medium)
        )
        assert decision.outcome is FareOutcome.full_fare_no_service
        assert not decision.state.has_leg  # a fresh trip: nothing to transfer from
        return decision.amount, decision.fare_product_id

    assert no_service(monday, "general") == (3_500_00, "general_fare")
    assert no_service(monday, "general", "cash") == (4_000_00, "general_fare")
    # A concession that holds every day stays; the student rate (school days only) does not.
    assert no_service(monday, "elderly") == (1_000_00, "concession_fare")
    assert no_service(monday, "school_student") == (3_500_00, "general_fare")
    # The feed cannot say which hours a day it does not cover has: no tap is refused.
    assert no_service("2031-01-06T04:30", "general") == (3_500_00, "general_fare")
    assert no_service("2024-12-31T08:05", "general") == (3_500_00, "general_fare")  # not begun
    # Each tap pays in full: no fare transfer out of service.
    first = decide(semarang, blank_trip_state, Tap(local(monday), "K1", None, "general", "cash"))
    second = decide(semarang, first.state, Tap(local(monday) + 600, "K2", None, "general", "cash"))
    assert (second.outcome, second.amount) == (FareOutcome.full_fare_no_service, 4_000_00)
    # A pass on the card still holds.
    card = activate_pass(
        semarang, blank_trip_state, "student_ecard_pelajar", local("2030-12-01T08:00")
    )
    held = decide(semarang, card, Tap(local(monday), "K2", None, "school_student", "e_card"))
    assert (held.outcome, held.amount, held.pass_id) == (
        FareOutcome.full_fare_no_service, 0, "student_ecard_pelajar",
    )  # fmt: skip
    # Inside the service period nothing changes: before 05:00 there is no fare.
    early = Tap(local("2030-12-31T04:30"), "K1", None, "general", "ksh_card")
    assert decide(semarang, blank_trip_state, early).outcome is FareOutcome.unknown_fare


def test_ksh_fare_check_warns_before_the_service_ends_and_fails_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fare", "check", "--today", "2030-10-01"]) == 0
    captured = capsys.readouterr()
    assert "service 2025-01-01 to 2030-12-31: 91 days left on 2030-10-01" in captured.out
    assert captured.err == ""
    assert main(["fare", "check", "--today", "2030-11-01"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(
        "ksh fare: warning: trans_semarang (shipped): service ends 2030-12-31, "
        "60 days left on 2030-11-01"
    )
    assert main(["fare", "check", "--today", "2031-01-02"]) == 2
    assert capsys.readouterr().err.startswith(
        "ksh fare: error: trans_semarang (shipped): service ended 2030-12-31, 2 days before "
        "2031-01-02"
    )
    # A feed whose calendar runs on past the holidays it ships: a warning per year.
    shipped = resources.files("bus_terminals.fare").joinpath("data", "trans_semarang")
    for entry in shipped.iterdir():
        if entry.name.endswith(".txt"):
            (tmp_path / entry.name).write_text(entry.read_text())
    calendar = tmp_path / "calendar.txt"
    calendar.write_text(calendar.read_text().replace("20301231", "20321231"))
    assert main(["fare", "check", "--gtfs", str(tmp_path), "--today", "2031-01-02"]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[3] for line in warnings] == [
        "no public holidays in 2031, which the calendar covers",
        "no public holidays in 2032, which the calendar covers",
    ]


def test_a_card_carries_exactly_the_rider_categories_the_feed_defines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One vocabulary: `ksh card issue --category` offers the feed's rider_category_id values,
    no more and no fewer (a card that said `student` to a feed of `school_student` was priced
    as no one)."""
    from card_reader.ksh_card import RiderCategory

    with pytest.raises(SystemExit):
        main(["card", "issue", "--help"])
    usage = capsys.readouterr().out
    offered = re.search(r"--category \{([a-z_,]+)\}", usage)
    assert offered is not None, usage
    feed_categories = set(load_feed().category_ids)
    assert set(offered[1].split(",")) == feed_categories
    assert {category.name.lower() for category in RiderCategory} == feed_categories
