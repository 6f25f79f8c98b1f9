"""The point of sale's decisions: a sale of the amount the cashier typed, or the refund of the
last sale made on this terminal to the same card."""

from __future__ import annotations

from bus_terminals.journal import Journal
from bus_terminals.terminal import Charge, Decide, Reason
from bus_terminals.wire import RecordStatus, UploadKind
from card_reader.ksh_card import CardState

sale_rupiah_max = 2_000_000


def sale_decider(amount_rupiah: int, detail: str = "sale") -> Decide:
    assert 0 < amount_rupiah <= sale_rupiah_max

    def decide_sale(state: CardState, time_ms: int) -> Charge:
        return Charge(UploadKind.sale, amount_rupiah, None, detail[:64])

    return decide_sale


def refund_decider(journal: Journal) -> Decide:
    """Refund the last committed sale of this terminal, if it was to the card now tapped and has
    not been refunded yet."""

    def decide_refund(state: CardState, time_ms: int) -> Charge:
        sale = journal.last_record(UploadKind.sale)
        card_number = str(state.profile.card_number)
        refund = journal.last_record(UploadKind.refund)
        already = refund is not None and sale is not None and refund.sequence > sale.sequence
        if sale is None or sale.card_number != card_number or already:
            return Charge(UploadKind.refund, 0, None, "no sale to refund", Reason.nothing_to_refund)
        assert sale.status in (RecordStatus.committed, RecordStatus.in_doubt)
        return Charge(UploadKind.refund, sale.amount_rupiah, None, f"refund of {sale.sequence}")

    return decide_refund
