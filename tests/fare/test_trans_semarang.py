"""The shipped Trans Semarang tariff (reference/indonesia.md §4.2) and the `ksh fare` command."""

from __future__ import annotations

import csv
import datetime
import json
from importlib import resources
from pathlib import Path

import pytest

from bus_terminals.fare.engine import activate_pass, decide, price_journey
from bus_terminals.fare.feed import load_feed
from bus_terminals.fare.model import FareOutcome, Leg, Tap, blank_card_state
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
        tariff, blank_card_state, Tap(local(when), "K1", "mangkang", category, medium)
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
    card = activate_pass(semarang, blank_card_state, "student_ecard_pelajar", start)
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
    state = blank_card_state
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
    assert decide(semarang, blank_card_state, early).outcome is FareOutcome.unknown_fare
    unknown = Tap(local("2025-03-12T08:30"), "K99", None, "general", "cash")
    assert decide(semarang, blank_card_state, unknown).outcome is FareOutcome.unknown_route
    stranger = Tap(local("2025-03-12T08:30"), "K1", None, "astronaut", "cash")
    assert (
        decide(semarang, blank_card_state, stranger).outcome is FareOutcome.unknown_rider_category
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
    state, amounts = blank_card_state, []
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
                        "departure": "2025-03-12T04:00:00",
                        "arrival": "2025-03-12T04:30:00",
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
        f"ksh fare: error: {journey}:4: legs[1].departure: not a local ISO date-time: 'yesterday'"
    )
    journey.write_text('{"legs": [')
    assert main(["fare", "price", "--journey", str(journey)]) == 2
    assert f"{journey}:1: (json):" in capsys.readouterr().err


def test_ksh_fare_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fare", "check"]) == 0
    assert "13 routes" in capsys.readouterr().out
    shipped = resources.files("bus_terminals.fare").joinpath("data", "trans_semarang")
    for entry in shipped.iterdir():
        if entry.name.endswith(".txt"):
            (tmp_path / entry.name).write_text(entry.read_text())
    assert main(["fare", "check", "--gtfs", str(tmp_path)]) == 0
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
        state, expected = blank_card_state, []
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
