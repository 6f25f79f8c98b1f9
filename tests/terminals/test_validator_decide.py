"""The validator's decision step: card profile and trip state in, a charge out (pure)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus_terminals.fare.feed import load_feed
from bus_terminals.fare.model import blank_trip_state
from bus_terminals.fare.tariff import Tariff
from bus_terminals.fare.trip_state import decode_trip_state, trip_state_bytes
from bus_terminals.terminal import Reason
from bus_terminals.validator import fare_decider, rider_category_ids, with_pending_pass
from bus_terminals.wire import WaitingPass
from card_reader.ksh_card import (
    CardState,
    CardStatus,
    LogRecord,
    Profile,
    RecordKind,
    RiderCategory,
)
from tests.fare.feeds import tariff as small_tariff
from tests.fare.feeds import trans_semarang_ending

tuesday_seven_am_ms = 1_795_478_400_000  # 2026-11-24 07:00 WIB, a Tuesday
sunday_seven_am_ms = tuesday_seven_am_ms - 2 * 86_400_000  # 2026-11-22


def card(category: RiderCategory, trip_state: bytes = bytes(trip_state_bytes)) -> CardState:
    profile = Profile(
        6032900000000001,
        category,
        False,
        CardStatus.ACTIVE,
        dt.date(2030, 1, 1),
        dt.date(2026, 1, 1),
    )
    issued = LogRecord(1, RecordKind.ISSUE, 0, 50_000, 1, 1_790_000_000)
    return CardState(b"\x04" * 7, 1, profile, 50_000, trip_state, issued)


trans_semarang = load_feed()


def test_every_card_category_has_its_trans_semarang_fare() -> None:
    decide = fare_decider(trans_semarang, "K1")
    expected = {category: 1_000 for category in RiderCategory} | {RiderCategory.GENERAL: 3_500}
    charged = {
        category: decide(card(category), tuesday_seven_am_ms).amount_rupiah
        for category in RiderCategory
    }
    assert charged == expected
    assert set(rider_category_ids.values()) <= set(trans_semarang.category_ids)


def test_student_rates_do_not_apply_on_sunday() -> None:
    decide = fare_decider(trans_semarang, "K1")
    assert decide(card(RiderCategory.SCHOOL_STUDENT), sunday_seven_am_ms).amount_rupiah == 3_500
    assert decide(card(RiderCategory.ELDERLY), sunday_seven_am_ms).amount_rupiah == 1_000


def test_a_damaged_trip_state_rides_on_a_blank_one_and_says_so() -> None:
    decide = fare_decider(trans_semarang, "K1")
    damaged = bytes([0xFF]) * trip_state_bytes
    charge = decide(card(RiderCategory.GENERAL, damaged), tuesday_seven_am_ms)
    assert charge.refusal is Reason.none
    assert charge.amount_rupiah == 3_500
    assert charge.detail.endswith("trip_state_reset")
    assert charge.trip_state is not None
    decode_trip_state(charge.trip_state)  # what is written back is a good state again
    fresh = decide(card(RiderCategory.GENERAL), tuesday_seven_am_ms)
    assert "trip_state_reset" not in fresh.detail


@pytest.fixture
def cheaper_transfer_tariff() -> Tariff:
    """Rp 5,000 on route A, then a type 2 transfer to route B that costs Rp 2,000 in all."""
    return small_tariff(
        agency="agency_id,agency_name,agency_url,agency_timezone\na,A,https://a,Asia/Jakarta",
        fare_media="fare_media_id,fare_media_type\nksh_card,2",
        rider_categories="rider_category_id,rider_category_name,is_default_fare_category\n"
        "general,General,1",
        routes="route_id,route_type,network_id\nra,3,A\nrb,3,B",
        fare_products="fare_product_id,amount,currency\nlong,5000.00,IDR\nab,2000.00,IDR",
        fare_leg_rules="leg_group_id,network_id,fare_product_id\nga,A,long\ngb,B,long",
        fare_transfer_rules="from_leg_group_id,to_leg_group_id,fare_transfer_type,"
        "fare_product_id,duration_limit,duration_limit_type\nga,gb,2,ab,3600,0",
    )


def test_a_transfer_cheaper_than_the_leg_before_debits_nothing_and_records_what_is_owed(
    cheaper_transfer_tariff: Tariff,
) -> None:
    first = fare_decider(cheaper_transfer_tariff, "ra")(
        card(RiderCategory.GENERAL), tuesday_seven_am_ms
    )
    assert first.amount_rupiah == 5_000
    assert first.trip_state is not None
    second = fare_decider(cheaper_transfer_tariff, "rb")(
        card(RiderCategory.GENERAL, first.trip_state), tuesday_seven_am_ms + 600_000
    )
    assert second.refusal is Reason.none
    assert second.amount_rupiah == 0
    assert "owed 3000" in second.detail


def test_a_feed_whose_service_has_ended_charges_the_full_fare_and_says_why() -> None:
    stale = fare_decider(trans_semarang_ending("20260630"), "K1")  # the tap is in November
    charges = {
        category: stale(card(category), tuesday_seven_am_ms)
        for category in (RiderCategory.GENERAL, RiderCategory.SCHOOL_STUDENT, RiderCategory.ELDERLY)
    }
    assert {category: charge.refusal for category, charge in charges.items()} == {
        category: Reason.none for category in charges
    }
    assert {category: (c.amount_rupiah, c.detail) for category, c in charges.items()} == {
        RiderCategory.GENERAL: (3_500, "full_fare_no_service general_fare"),
        # no school-day rate on a Sunday
        RiderCategory.SCHOOL_STUDENT: (3_500, "full_fare_no_service general_fare"),
        RiderCategory.ELDERLY: (1_000, "full_fare_no_service concession_fare"),
    }
    written = charges[RiderCategory.GENERAL].trip_state
    assert written is not None and not decode_trip_state(written).has_leg
    # The same tap with the feed in service: the ordinary charge, and no reason given.
    fresh = fare_decider(trans_semarang, "K1")(card(RiderCategory.GENERAL), tuesday_seven_am_ms)
    assert (fresh.amount_rupiah, fresh.detail) == (3_500, "general_fare")


@given(
    st.lists(st.integers(0, 400 * 86_400_000), min_size=1, max_size=8),
    st.integers(1, 200),  # the back office grants again from the day after an activation
)
@settings(deadline=None)
def test_a_granted_pass_is_activated_once_and_a_renewal_once_more(
    gaps_ms: list[int], renewal_day: int
) -> None:
    """Taps after a grant (any gaps, over a year): the first activates the pass, no later one
    moves it; a renewal sold later is activated at the next tap after it, once."""
    tariff = load_feed()
    sold_ms = tuesday_seven_am_ms
    sales = [WaitingPass("pass-000000000a", "student_ecard_pelajar", sold_ms)]
    trip = blank_trip_state
    activations = []
    # Renewed (the back office allows it) from the day after the first activation.
    renewal_ms = sold_ms + min(gaps_ms) + renewal_day * 86_400_000
    for gap in sorted(gaps_ms):
        time_ms = sold_ms + gap
        if time_ms >= renewal_ms and len(sales) == 1:
            sales.append(WaitingPass("pass-000000000b", "student_ecard_pelajar", renewal_ms))
        trip, activated = with_pending_pass(tariff, trip, sales, time_ms // 1000)
        if activated:
            activations.append(activated)
            renewed_on = tariff.local_seconds(time_ms // 1000) // 86_400
    assert activations[0] == "pass-000000000a"
    assert len(activations) == len(set(activations)) == len(sales)
    assert activations == [sale.sale_id for sale in sales]
    first_day = tariff.local_seconds((sold_ms + min(gaps_ms)) // 1000) // 86_400
    if len(activations) == 2:  # from the day after the first ends, or the tap's day if later
        assert trip.pass_last_day == max(first_day + 183, renewed_on) + 183 - 1


@given(
    st.integers(0, 182),  # how many days the pass had run on the lost card
    st.integers(0, 30),  # days from the replacement to the new card's first tap
    st.booleans(),  # a renewal of the same pass waits behind the carried one
    st.lists(st.integers(0, 200 * 86_400_000), max_size=5),  # later taps
)
@settings(deadline=None)
def test_a_carried_pass_runs_to_its_old_last_day_and_a_renewal_follows_it(
    ran_days: int, wait_days: int, renewed: bool, later_ms: list[int]
) -> None:
    """A pass carried from a replaced card (`from_ms`: its first day there) is written at the
    new card's first tap to end when it would have ended on the old card, whatever day that
    tap is, if that day has not passed; once. A renewal bought before the loss follows on from
    that last day (or, the carried pass run out, starts at that tap)."""
    tariff = load_feed()
    day_ms = 86_400_000
    started_ms = tuesday_seven_am_ms
    first_day = tariff.local_seconds(started_ms // 1000) // 86_400
    validity = 183
    waiting = [WaitingPass("pass-00000000c0", "student_ecard_pelajar", started_ms, started_ms)]
    if renewed:
        waiting.append(WaitingPass("pass-00000000c1", "student_ecard_pelajar", started_ms + day_ms))
    tap_ms = started_ms + (ran_days + wait_days) * day_ms
    trip, activated = with_pending_pass(tariff, blank_trip_state, waiting, tap_ms // 1000)
    tap_day = tariff.local_seconds(tap_ms // 1000) // 86_400
    if tap_day > first_day + validity - 1:  # ran out before the new card's first tap
        assert activated == ("pass-00000000c1" if renewed else "")
        if renewed:
            assert trip.pass_last_day == tap_day + validity - 1
        return
    assert activated == "pass-00000000c0"
    assert trip.pass_last_day == first_day + validity - 1
    activations = [activated]
    for gap in sorted(later_ms):
        trip, activated = with_pending_pass(tariff, trip, waiting, (tap_ms + gap) // 1000)
        if activated:
            activations.append(activated)
            renewed_on = tariff.local_seconds((tap_ms + gap) // 1000) // 86_400
    # One pass a tap: the renewal at the next tap after the carried one, from the day after it
    # ends (or that tap's day, if later).
    assert activations == [held.sale_id for held in waiting][: 1 + len(later_ms)]
    if len(activations) == 2:
        assert trip.pass_last_day == max(first_day + validity, renewed_on) + validity - 1


def test_a_carried_pass_that_ran_out_never_replaces_the_pass_on_the_card() -> None:
    """A validator that synced before the carried pass ran out still lists it; the card has
    since had another pass written. The run-out pass is not written over it."""
    tariff = load_feed()
    day_ms = 86_400_000
    started_ms = tuesday_seven_am_ms - 190 * day_ms  # its first day on the lost card
    carried = WaitingPass("pass-00000000d0", "student_ecard_pelajar", started_ms, started_ms)
    other = WaitingPass("pass-00000000d1", "student_ecard_mahasiswa", tuesday_seven_am_ms)
    trip, activated = with_pending_pass(
        tariff, blank_trip_state, [other], tuesday_seven_am_ms // 1000
    )
    assert activated == "pass-00000000d1"
    later_s = (tuesday_seven_am_ms + 3_600_000) // 1000
    assert with_pending_pass(tariff, trip, [carried], later_s) == (trip, "")
    day_before_it_ran_out_s = (started_ms + 182 * day_ms) // 1000
    _, written = with_pending_pass(tariff, blank_trip_state, [carried], day_before_it_ran_out_s)
    assert written == "pass-00000000d0"  # on its last day it is still written
