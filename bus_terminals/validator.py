"""The validator's decision: the fare core prices a tap from the card's trip state (pure), with
the fare feed the fleet runs at the tap's time (`fleet_fare_decider`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bus_terminals.fare.engine import activate_pass, decide
from bus_terminals.fare.model import FareOutcome, Tap, TripState, TripStateError, blank_trip_state
from bus_terminals.fare.tariff import Tariff
from bus_terminals.fare.trip_state import decode_trip_state, encode_trip_state
from bus_terminals.fleet import Fleet
from bus_terminals.packages import PackageKind
from bus_terminals.terminal import Charge, Decide, Reason
from bus_terminals.wire import (
    UploadKind,
    WaitingPass,
    no_service_fare_detail,
    pass_activation_detail,
)
from card_reader.ksh_card import CardState, RiderCategory

fare_media_id = "ksh_card"
# A rider without a card who pays by QRIS pays what a rider without a card pays: the cash fare.
no_card_fare_media_id = "cash"
no_card_rider_category_id = "general"  # nothing proves a concession without a card
# One vocabulary: a card's category is named as the fare feed names it (rider_categories.txt).
# tests/fare/test_rider_categories.py fails if the shipped feed and the card drift apart.
rider_category_ids = {category: category.name.lower() for category in RiderCategory}
assert FareOutcome.full_fare_no_service.value == no_service_fare_detail


#: card number -> the passes granted to it and not known to be on it yet (`SyncState.passes_for`),
#: oldest first.
PendingPasses = Callable[[str], Sequence[WaitingPass]]
seconds_per_day = 86_400


def no_pending_passes(card_number: str) -> Sequence[WaitingPass]:
    return ()


def with_pending_pass(
    tariff: Tariff, trip: TripState, waiting: Sequence[WaitingPass], time_s: int
) -> tuple[TripState, str]:
    """The trip state with the oldest waiting pass activated, and its sale id ("": none).

    A pass starts today (a pass carried from a replaced card: on its first day there), or the
    day after the same pass on the card ends (a renewal bought while it runs loses no day). The
    card tells whether a sale is on it already (activated here or on another bus before the
    back office heard): it holds that pass lasting at least as long as an activation on the day
    of the sale (of a carried pass: its first day) would. That is exact because the back office
    grants a pass again only after the day of its last activation (`gateways.terminal_api.
    passes.grant_pass`). A carried pass whose last day is past is not written: the back office
    no longer lists it, and may have sold the card another pass that it would replace."""
    for held in sorted(waiting, key=lambda sale: sale.sold_ms):
        position = tariff.pass_index.get(held.pass_id)
        if position is None:
            continue  # not in the feed this validator runs: it waits for one that has it
        start_s = held.from_ms // 1000 if held.from_ms else time_s
        sale_s = tariff.local_seconds(held.from_ms // 1000 or held.sold_ms // 1000)
        on_card_from_sale = sale_s // seconds_per_day + tariff.passes[position].validity_days - 1
        if held.from_ms and on_card_from_sale < tariff.local_seconds(time_s) // seconds_per_day:
            continue  # carried, and ran out before this card's first tap
        if trip.pass_index == position + 1:
            if trip.pass_last_day >= on_card_from_sale:
                continue
            start_day = tariff.local_seconds(start_s) // seconds_per_day
            if trip.pass_last_day >= start_day:  # runs still: the renewal follows it
                start_s += (trip.pass_last_day + 1 - start_day) * seconds_per_day
        return activate_pass(tariff, trip, held.pass_id, start_s), held.sale_id
    return trip, ""


def fare_decider(
    tariff: Tariff,
    route_id: str,
    stop_id: str | None = None,
    pending_passes: PendingPasses = no_pending_passes,
) -> Decide:
    """A `Decide` for a validator on `route_id` (and at `stop_id` when the bus knows it). A pass
    granted to the card (`pending_passes`) is activated in the trip state this tap writes."""

    # The fare core counts in the feed currency's minor units (IDR: 2 decimals, ISO 4217);
    # money on the card and in the ledger is whole rupiah.
    minor_per_rupiah = 10**tariff.currency_decimals
    assert tariff.currency == "IDR", f"the card purse holds rupiah, not {tariff.currency}"

    def decide_fare(state: CardState, time_ms: int) -> Charge:
        reset = ""
        if not any(state.trip_state):
            trip = blank_trip_state  # a fresh card: the file holds zeros
        else:
            try:
                trip = decode_trip_state(state.trip_state)
            except TripStateError:
                # Damaged or from another format: ride on a blank state (caps and passes held
                # on the card are lost) and say so in the record for the back office.
                trip, reset = blank_trip_state, " trip_state_reset"
        trip, activated = with_pending_pass(
            tariff, trip, pending_passes(str(state.profile.card_number)), time_ms // 1000
        )
        tap = Tap(
            time_ms // 1000,
            route_id,
            stop_id,
            rider_category_ids[state.profile.rider_category],
            fare_media_id,
        )
        decision = decide(tariff, trip, tap)
        # Out of the feed's service period the full fare is charged, never refused: the card
        # is the authority offline. The record says why, and the back office raises an alarm.
        no_service = decision.outcome == FareOutcome.full_fare_no_service
        if decision.outcome != FareOutcome.priced and not no_service:
            return Charge(UploadKind.fare_debit, 0, None, decision.outcome.value, Reason.no_fare)
        # A negative leg amount (a transfer cheaper than the leg before it) is money owed back
        # to the rider; the validator debits nothing and the record says what is owed.
        fare_rupiah, sen = divmod(max(decision.amount, 0), minor_per_rupiah)
        if sen:
            return Charge(UploadKind.fare_debit, 0, None, "fare not whole rupiah", Reason.no_fare)
        detail = decision.fare_product_id or ""
        if decision.amount < 0:
            detail += f" owed {-decision.amount // minor_per_rupiah}"
        if decision.fare_transfer_rule:
            detail += " transfer"
        if decision.cap_id:
            detail += f" cap {decision.cap_id}"
        if decision.pass_id:
            detail = f"pass {decision.pass_id}"
        detail += reset
        if no_service:
            detail = f"{no_service_fare_detail} {detail}"
        # The back office learns of the activation from the record.
        detail = pass_activation_detail(detail, activated) if activated else detail[:64]
        return Charge(UploadKind.fare_debit, fare_rupiah, encode_trip_state(decision.state), detail)

    return decide_fare


def no_card_fare(
    tariff: Tariff, route_id: str, stop_id: str | None, time_ms: int
) -> tuple[int, str] | None:
    """The fare of a ride sold without a card (by QRIS): the cash fare for a general rider on
    a fresh trip (no transfer, cap or pass: those live on a card), in whole rupiah, and the
    fare product; None when the feed prices no such ride."""
    tap = Tap(time_ms // 1000, route_id, stop_id, no_card_rider_category_id, no_card_fare_media_id)
    decision = decide(tariff, blank_trip_state, tap)
    if decision.outcome not in (FareOutcome.priced, FareOutcome.full_fare_no_service):
        return None
    rupiah, sen = divmod(decision.amount, 10**tariff.currency_decimals)
    if sen or rupiah <= 0:
        return None
    return rupiah, decision.fare_product_id or ""


def fleet_fare_decider(
    fleet: Fleet,
    shipped: Tariff,
    route_id: str,
    stop_id: str | None = None,
    pending_passes: PendingPasses = no_pending_passes,
) -> Decide:
    """A `Decide` that prices each tap with the fare feed the fleet runs at the tap's time:
    a staged feed whose effective time has come is switched to first (`Fleet.switch_due`, by
    the terminal's clock: the tap's time); `shipped` serves until a feed package runs."""
    deciders: dict[int, Decide] = {}

    def decide_fare(state: CardState, time_ms: int) -> Charge:
        fleet.switch_due(time_ms)
        tariff = fleet.tariff()
        version = fleet.running_version(PackageKind.fare_feed) if tariff is not None else 0
        if version not in deciders:
            deciders.clear()  # one feed runs at a time
            deciders[version] = fare_decider(tariff or shipped, route_id, stop_id, pending_passes)
        return deciders[version](state, time_ms)

    return decide_fare
