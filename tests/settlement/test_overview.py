"""The overview's tiles and charts count the same fares: one query for the day (the window the
settlement uses), so a tile never sits beside a chart that says something else. (A test day
booked without the terminals' records once showed 24 taps beside "Taps per hour: no data".)"""

from __future__ import annotations

import datetime as dt
import uuid

import asyncpg

from ledger import store
from ledger.records import AccountKind, Transfer, TransferCode
from settlement import end_of_day, views
from tests.settlement.day import book_day, ledger_account, service_day

config = end_of_day.EndOfDayConfig()


async def test_tiles_and_charts_count_the_same_fares(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        day = await book_day(connection)  # 24 fares in the ledger, no terminal records
        # One more fare with the validator's record: tapped at 07:15 on corridor K1, uploaded
        # and booked at 09:00 like the others.
        purse = ledger_account(AccountKind.card_purse, "620000000000")
        revenue = ledger_account(AccountKind.operator_revenue, "trans-semarang")
        await store.create_accounts(connection, [purse])
        tapped = dt.datetime.combine(service_day, dt.time(7, 15), tzinfo=end_of_day.jakarta)
        await connection.execute(
            """insert into card_records (terminal_id, sequence, batch_sequence, kind, status,
                 card_number, card_counter, amount_rupiah, topup_rupiah, pending_topup_id,
                 balance_after_rupiah, time_ms, route, merchant_id, fare_detail, previous_counter,
                 previous_terminal_number, previous_balance_rupiah, outcome)
               values ('BUS-K1-01', 7, 1, 'fare_debit', 'committed', '620000000000', 3, 4_000, 0,
                       '', 10_000, $1, 'K1', '', '', 2, 0, 14_000, 'booked')""",
            int(tapped.timestamp() * 1000),
        )
        fare = Transfer(
            uuid.uuid4(),
            purse.id,
            revenue.id,
            4_000,
            TransferCode.fare,
            terminal_id="BUS-K1-01",
            terminal_sequence=7,
        )
        await store.create_transfers(connection, [fare], now=day.booked_at)
        # A fare booked the next day is in neither.
        await store.create_transfers(
            connection,
            [Transfer(uuid.uuid4(), purse.id, revenue.id, 4_000, TransferCode.fare)],
            now=day.booked_at + dt.timedelta(days=1),
        )

        overview = await views.day_overview(connection, service_day, config)
        assert overview.taps == 25
        assert overview.fare_revenue_rupiah == day.fares_rupiah + 4_000
        hours = dict(overview.fares.per_hour)
        assert len(hours) == 24 and sum(hours.values()) == overview.taps
        assert hours["07"] == 1 and hours["09"] == 24  # the tap's own hour, else its booking's
        corridors = dict(overview.fares.per_corridor)
        assert corridors == {"?": day.fares_rupiah, "K1": 4_000}
        assert sum(corridors.values()) == overview.fare_revenue_rupiah
    finally:
        await connection.close()


def test_many_corridors_are_summed_into_one_bar_not_dropped() -> None:
    amounts = {f"K{n:02d}": n for n in range(1, 41)}
    shown = views.bars(amounts)
    assert len(shown) == views.corridors_shown_max
    assert shown[-1] == (views.other_corridors, sum(range(1, 18)))  # K01..K17
    assert sum(amount for _, amount in shown) == sum(amounts.values())
    assert views.bars({"K2": 5, "K1": 7}) == [("K1", 7), ("K2", 5)]


async def test_card_and_qris_side_by_side_per_payee(database_url: str) -> None:
    """Each merchant's card sales beside its QRIS sales (less the acquirer's MDR), and the
    operator's card fares beside its rides sold by QRIS: what end of day owes each."""
    connection = await asyncpg.connect(database_url)
    try:
        day = await book_day(connection)
        purse = ledger_account(AccountKind.card_purse, "620000000001")
        payable = ledger_account(AccountKind.merchant_payable, "warung-sugeng")
        revenue = ledger_account(AccountKind.operator_revenue, "trans-semarang")
        clearing = ledger_account(AccountKind.bank_clearing, "qris:BNI-SNAP-01")
        await store.create_accounts(connection, [purse, payable, clearing])

        def moved(debit, credit, amount, code):  # type: ignore[no-untyped-def]
            return Transfer(uuid.uuid4(), debit.id, credit.id, amount, code)

        await store.create_transfers(
            connection,
            [
                moved(purse, payable, 25_000, TransferCode.merchant_sale),
                moved(clearing, payable, 150_000, TransferCode.qris_payment),
                moved(payable, clearing, 450, TransferCode.qris_mdr),
                moved(clearing, revenue, 4_000, TransferCode.qris_payment),
                moved(revenue, clearing, 16, TransferCode.qris_mdr),
            ],
            now=day.booked_at,
        )
        payees = {
            (p.kind, p.party_id): p for p in await views.payee_days(connection, service_day, config)
        }
        warung = payees[("merchant", "warung-sugeng")]
        assert (warung.card_count, warung.card_rupiah) == (1, 25_000)
        assert (warung.qris_count, warung.qris_rupiah, warung.qris_mdr_rupiah) == (1, 150_000, 450)
        assert warung.total_rupiah == 25_000 + 150_000 - 450
        operator = payees[("operator", "trans-semarang")]
        assert (operator.card_count, operator.card_rupiah) == (24, day.fares_rupiah)
        assert (operator.qris_count, operator.qris_rupiah, operator.qris_mdr_rupiah) == (
            1,
            4_000,
            16,
        )
    finally:
        await connection.close()
