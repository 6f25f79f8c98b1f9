"""The validator's decision: the fare core prices a tap from the card's trip state (pure)."""

from __future__ import annotations

from bus_terminals.fare.card_state import decode_card_state, encode_card_state
from bus_terminals.fare.engine import decide
from bus_terminals.fare.model import CardStateError, FareOutcome, Tap, blank_card_state
from bus_terminals.fare.tariff import Tariff
from bus_terminals.terminal import Charge, Decide, Reason
from bus_terminals.wire import RecordKind
from card_reader.ksh_card import CardState, RiderCategory

fare_media_id = "ksh_card"
rider_category_ids = {
    RiderCategory.GENERAL: "general",
    RiderCategory.STUDENT: "school_student",
    RiderCategory.ELDERLY: "elderly",
    RiderCategory.DISABLED: "disabled",
}


def fare_decider(tariff: Tariff, route_id: str, stop_id: str | None = None) -> Decide:
    """A `Decide` for a validator on `route_id` (and at `stop_id` when the bus knows it)."""

    # The fare core counts in the feed currency's minor units (IDR: 2 decimals, ISO 4217);
    # money on the card and in the ledger is whole rupiah.
    minor_per_rupiah = 10**tariff.currency_decimals
    assert tariff.currency == "IDR", f"the card purse holds rupiah, not {tariff.currency}"

    def decide_fare(state: CardState, time_ms: int) -> Charge:
        try:
            trip = decode_card_state(state.trip_state)
        except CardStateError:
            trip = blank_card_state  # a fresh card (zeros) or a state from an older format
        tap = Tap(
            time_ms // 1000,
            route_id,
            stop_id,
            rider_category_ids[state.profile.rider_category],
            fare_media_id,
        )
        decision = decide(tariff, trip, tap)
        if decision.outcome != FareOutcome.priced:
            return Charge(RecordKind.fare_debit, 0, None, decision.outcome.value, Reason.no_fare)
        fare_rupiah, sen = divmod(decision.amount, minor_per_rupiah)
        if sen:
            return Charge(RecordKind.fare_debit, 0, None, "fare not whole rupiah", Reason.no_fare)
        detail = decision.fare_product_id or ""
        if decision.fare_transfer_rule:
            detail += " transfer"
        if decision.cap_id:
            detail += f" cap {decision.cap_id}"
        if decision.pass_id:
            detail = f"pass {decision.pass_id}"
        return Charge(
            RecordKind.fare_debit, fare_rupiah, encode_card_state(decision.state), detail[:64]
        )

    return decide_fare
