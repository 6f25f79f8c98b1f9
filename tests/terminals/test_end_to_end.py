"""A short service day end to end: validators with emulated KSH cards (real card protocol),
flaky network, power losses and pulled cards, uploads over HTTP into the back office and
PostgreSQL. Every card transaction committed on a card is booked exactly once, each card's
balance equals its purse account, and the books balance."""

from __future__ import annotations

from pathlib import Path

from bus_terminals.simulator import SimulationSettings, simulate_day
from tests.terminals.conftest import Backoffice, admin_token


async def test_a_short_day_books_every_card_transaction_exactly_once(
    backoffice: Backoffice, tmp_path: Path
) -> None:
    settings = SimulationSettings(
        buses=6,
        cards=40,
        seed=11,
        folder=tmp_path,
        staff_token=admin_token,
        network_loss_rate=0.3,
        power_loss_rate=0.03,
        card_pull_rate=0.15,
        top_up_rate=0.3,
    )
    summary = await simulate_day(settings, backoffice.url, backoffice.clock.unix_ms)
    assert summary.taps > 80
    assert summary.cards_pulled > 0
    assert summary.power_losses > 0
    assert summary.uploads_lost > 0
    assert summary.top_ups_delivered > 0
    assert summary.verdicts["accepted"] > 60
    assert summary.cards_mismatched == []
    assert summary.cards_matching == settings.cards
    async with backoffice.pool.acquire() as connection:
        total = await connection.fetchval(
            "select sum(credits_posted - debits_posted) from ledger_accounts"
        )
        # Booked once: one ledger transfer per (card, counter, leg), and every committed or
        # confirmed record of a card transaction with money in it has its transfer.
        duplicates = await connection.fetchval(
            "select count(*) from (select card_number, card_counter, code from ledger_transfers "
            "where card_counter is not null group by 1, 2, 3 having count(*) > 1) repeated"
        )
        missing = await connection.fetchval(
            "select count(*) from card_records r where r.outcome = 'booked' "
            "and (r.amount_rupiah > 0 or r.topup_rupiah > 0) and not exists (select 1 from "
            "ledger_transfers t where t.card_number = r.card_number "
            "and t.card_counter = r.card_counter)"
        )
        held = await connection.fetchval("select count(*) from card_records where outcome = 'held'")
        flags = await connection.fetch("select reason, count(*) from card_flags group by 1")
    assert total == 0
    assert duplicates == 0
    assert missing == 0
    assert held == 0
    assert not flags, flags
