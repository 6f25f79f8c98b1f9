"""QRIS sales through the acquirer, over the real SNAP HTTP endpoints and the real database:
a code asked for a sale, paid by a rider's app and booked once on the acquirer's notification;
a notification repeated, one with another amount, one for an order we never made; an expired
code; a lost notification made good by a query. The books move exactly once per paid sale."""

from __future__ import annotations

import contextlib

import asyncpg
import pytest

from bus_terminals import qris as payload
from gateways.bank_simulator.acquirer import QrisRefused
from gateways.snap import qris
from gateways.snap.client import SnapSession
from gateways.terminal_api import registry
from ledger.records import derive_id
from ledger.store import lookup_accounts
from tests.snap.conftest import Harness, partner_id, qris_trans_semarang, qris_warung

merchant = "M-WARUNG"


async def payable_rupiah(connection: asyncpg.Connection) -> int:
    account_id = derive_id("merchant-payable", merchant)
    found = await lookup_accounts(connection, [account_id])
    return found[account_id].balances.credit_balance


async def notifications(connection: asyncpg.Connection) -> list[tuple[str, str]]:
    rows = await connection.fetch(
        "select original_partner_reference_no, outcome from qris_notifications "
        "order by notification_id"
    )
    return [(row[0], row[1]) for row in rows]


@pytest.fixture
async def shop(harness: Harness):
    connection = await asyncpg.connect(harness.database_url)
    await registry.register_merchant(connection, merchant, "Warung Bu Sugeng")
    await qris.register_payee(
        connection,
        qris.Payee(qris.PayeeKind.merchant, merchant),
        partner_id=partner_id,
        acquirer_merchant_id=qris_warung.merchant_id,
        mdr_category="UMI",
    )
    session = SnapSession(harness.our_connection(), harness.http)
    try:
        yield connection, session
    finally:
        await connection.close()


async def new_order(harness: Harness, shop, order_id: str, amount: int, **options):
    connection, session = shop
    return await qris.create_order(
        connection,
        session,
        order_id=order_id,
        payee=qris.Payee(qris.PayeeKind.merchant, merchant),
        terminal_id="POS-1",
        amount_rupiah=amount,
        now=harness.clock.now(),
        **options,
    )


async def test_a_paid_code_is_booked_once_and_a_repeated_notification_is_refused(harness, shop):
    connection, _ = shop
    sale = await new_order(harness, shop, "POS-1:1", 150_000)
    code = payload.read(sale.qr_content)
    assert (code.dynamic, code.amount_rupiah, code.merchant.nmid) == (
        True,
        150_000,
        qris_warung.nmid,
    )
    assert sale.state is qris.OrderState.open

    await harness.simulator.pay_qr(sale.qr_content)
    paid = await qris.order(connection, "POS-1:1")
    assert paid is not None and paid.state is qris.OrderState.paid
    assert paid.mdr_rupiah == 450  # UMI: 0.3 % above Rp 100.000
    assert await payable_rupiah(connection) == 150_000 - 450

    order = harness.simulator.acquirer.orders[sale.reference_no]
    assert await harness.simulator.notify_qr(order) == "4045214"  # bill has been paid
    assert await payable_rupiah(connection) == 150_000 - 450
    assert [outcome for _, outcome in await notifications(connection)] == [
        "booked",
        "Bill has been paid the order is already paid",
    ]
    # The same sale asked again (a POS that lost our answer) is the same order, not a new code.
    again = await new_order(harness, shop, "POS-1:1", 150_000)
    assert again.qr_content == sale.qr_content and again.state is qris.OrderState.paid


async def test_a_notification_with_another_amount_is_refused_and_the_query_books_the_real_one(
    harness, shop
):
    connection, session = shop
    sale = await new_order(harness, shop, "POS-1:2", 20_000)
    await harness.simulator.pay_qr(sale.qr_content, notify_amount_rupiah=2_000_000)
    assert (await qris.order(connection, "POS-1:2")).state is qris.OrderState.open
    assert await payable_rupiah(connection) == 0
    assert (await notifications(connection))[-1] == (
        "POS-1:2",
        "Invalid Amount the order is for 20000",
    )
    checked = await qris.check_order(connection, session, "POS-1:2", now=harness.clock.now())
    assert checked.state is qris.OrderState.paid
    assert await payable_rupiah(connection) == 20_000  # UMI up to Rp 100.000: no MDR


async def test_a_lost_notification_is_made_good_by_a_query_and_only_once(harness, shop):
    connection, session = shop
    sale = await new_order(harness, shop, "POS-1:3", 250_000)
    harness.bank.trouble.lose_next_notifications = 1
    await harness.simulator.pay_qr(sale.qr_content)
    assert (await qris.order(connection, "POS-1:3")).state is qris.OrderState.open
    for _ in range(2):
        checked = await qris.check_order(connection, session, "POS-1:3", now=harness.clock.now())
        assert checked.state is qris.OrderState.paid
    assert await payable_rupiah(connection) == 250_000 - 750
    # The notification, arriving late after all, books nothing more.
    assert await harness.simulator.notify_qr(harness.simulator.acquirer.orders[sale.reference_no])
    assert await payable_rupiah(connection) == 250_000 - 750


async def test_an_expired_code_cannot_be_paid_and_the_order_expires(harness, shop):
    connection, session = shop
    sale = await new_order(harness, shop, "POS-1:4", 35_000, validity_seconds=60)
    harness.clock.advance(61)
    with pytest.raises(QrisRefused, match="expired"):
        await harness.simulator.pay_qr(sale.qr_content)
    checked = await qris.check_order(connection, session, "POS-1:4", now=harness.clock.now())
    assert checked.state is qris.OrderState.expired
    assert await payable_rupiah(connection) == 0


async def test_a_notification_for_an_order_we_never_made_is_refused_and_recorded(harness, shop):
    connection, _ = shop
    from gateways.snap.fields import format_amount

    _, answer = harness.simulator.acquirer.generate(
        {
            "partnerReferenceNo": "SOMEONE-ELSE:9",
            "amount": format_amount(99_000),
            "merchantId": qris_warung.merchant_id,
        }
    )
    order = harness.simulator.acquirer.orders[answer["referenceNo"]]
    harness.simulator.acquirer.pay(order.qr_content)
    assert await harness.simulator.notify_qr(order) == "4045201"  # transaction not found
    assert (await notifications(connection))[-1] == (
        "SOMEONE-ELSE:9",
        "Transaction Not Found no such QRIS order",
    )
    assert await payable_rupiah(connection) == 0


async def test_the_acquirer_code_must_be_for_the_amount_asked(harness, shop):
    """A code for another amount (an acquirer's fault, or a tampered answer) is never shown."""
    connection, session = shop
    with pytest.raises(qris.QrisError, match="no QRIS"):
        await qris.create_order(
            connection,
            session,
            order_id="POS-9:1",
            payee=qris.Payee(qris.PayeeKind.merchant, "NOT-A-QRIS-MERCHANT"),
            terminal_id="POS-9",
            amount_rupiah=1_000,
            now=harness.clock.now(),
        )
    with pytest.raises(qris.QrisError, match="amount"):
        await new_order(harness, shop, "POS-1:5", 0)
    assert qris.mdr_rupiah("UMI", 100_000) == 0
    assert qris.mdr_rupiah("UMI", 100_001) == 300
    assert qris.mdr_rupiah("BLU", 3_500) == 14  # 0.4 % of Rp 3.500 = 14
    assert qris.mdr_rupiah("UKE", 10_000) == 70


# ------------------------------------------------------------------ a POS through the back office


@contextlib.asynccontextmanager
async def terminal_backoffice(harness: Harness, connection, terminal_id: str, role, **owner):
    """A registered terminal (its key) and a back office serving it QRIS sales over HTTP: its
    own process in service, here a second app on the same database and clock. Yields the back
    office's URL and the terminal's signing key."""
    import dataclasses

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bus_terminals.wire import public_key_text
    from gateways.backoffice import BackofficeConfig, create_app
    from gateways.snap.partners import load_partner, save_partner
    from gateways.terminal_api import qris_sales
    from gateways.terminal_api.routes import terminal_extension
    from ksh.commands.demo import start

    key = Ed25519PrivateKey.generate()
    await registry.register_terminal(
        connection, terminal_id, public_key_text(key.public_key()), role, **owner
    )
    partner = await load_partner(connection, partner_id)
    assert partner is not None
    await save_partner(
        connection, dataclasses.replace(partner, base_url=harness.bank_base_url + "/snap")
    )
    app = create_app(
        BackofficeConfig(
            harness.database_url,
            pool_connections_min=1,
            pool_connections_max=2,
            clock=harness.clock,
            settings={"snap_private_key_pem": harness.own_private_pem.decode()},
        ),
        [terminal_extension, qris_sales.install],
    )
    runner, base_url = await start(app)
    try:
        yield base_url, key
    finally:
        await runner.cleanup()


@pytest.fixture
async def till(harness: Harness, shop):
    """A registered POS of the merchant, selling through the back office."""
    import aiohttp

    from bus_terminals.qris_till import Till

    connection, _ = shop
    pos = registry.TerminalRole.pos
    async with (
        terminal_backoffice(harness, connection, "POS-7", pos, merchant_id=merchant) as served,
        aiohttp.ClientSession() as http,
    ):
        base_url, key = served
        yield Till(http, base_url, "POS-7", key, harness.clock.unix_ms)


async def test_a_pos_sells_by_qris_through_the_back_office(harness, shop, till, tmp_path):
    from bus_terminals.qris_till import TillError, qr_text, save_qr_image

    connection, _ = shop
    sale = await till.sell(1, 42_000)
    assert (sale.amount_rupiah, sale.merchant_name, sale.state) == (
        42_000,
        qris_warung.name,
        "open",
    )
    assert sale.order_id == "POS-7:1"
    assert (await till.sell(1, 42_000)).qr_content == sale.qr_content  # asked again: same code
    with pytest.raises(TillError, match="order_conflict"):
        await till.sell(1, 43_000)
    assert "\u2580" in qr_text(sale.qr_content) or "\u2588" in qr_text(sale.qr_content)

    await harness.simulator.pay_qr(sale.qr_content)
    paid = await till.status(sale.order_id)
    assert paid.state == "paid" and paid.paid_at is not None
    assert await payable_rupiah(connection) == 42_000

    with pytest.raises(TillError, match="unknown_order"):
        await till.status("POS-1:1")  # another terminal's order
    with pytest.raises(TillError, match="bad_amount"):
        await till.sell(2, 0)
    save_qr_image(sale.qr_content, tmp_path / "code.png")
    save_qr_image(sale.qr_content, tmp_path / "code.svg")
    assert (tmp_path / "code.png").read_bytes().startswith(b"\x89PNG")
    assert b"<svg" in (tmp_path / "code.svg").read_bytes()
    with pytest.raises(ValueError, match=r"png or \.svg"):
        save_qr_image(sale.qr_content, tmp_path / "code.gif")


async def test_the_acquirers_settlement_reconciles_with_nothing_unexplained(
    harness, shop, tmp_path
):
    import datetime as dt

    from ledger.clock import jakarta
    from settlement.reconciliation import expect_qris_settlements, import_statement, reconcile
    from tests.snap.conftest import issuer_account_no

    connection, _ = shop
    for number, amount in ((11, 150_000), (12, 20_000), (13, 3_500)):
        sale = await new_order(harness, shop, f"POS-1:{number}", amount)
        await harness.simulator.pay_qr(sale.qr_content)
    unpaid = await new_order(harness, shop, "POS-1:14", 9_000)
    assert unpaid.state is qris.OrderState.open
    day = harness.clock.now().astimezone(jakarta).date()
    net = 150_000 - 450 + 20_000 + 3_500  # UMI: no MDR up to Rp 100.000
    assert harness.simulator.settle_qris(day) == net
    assert harness.simulator.settle_qris(day) == 0  # a day is settled once

    [statement] = [
        path
        for path in harness.simulator.write_statements(tmp_path, day)
        if path.name.startswith(issuer_account_no) and path.suffix == ".sta"
    ]
    await import_statement(
        connection, statement, "009", "finance", expected_account=issuer_account_no
    )
    start = dt.datetime.combine(day, dt.time(0), jakarta)
    expected = await expect_qris_settlements(
        connection, start, start + dt.timedelta(days=1), {"009": issuer_account_no}, "none"
    )
    assert expected == 3
    report = await reconcile(connection, now=harness.clock.now())
    assert (report.lines_matched, report.exceptions_open, report.movements_missing) == (1, 0, 0)
    clearing = qris.clearing_account_id(partner_id)
    balances = (await lookup_accounts(connection, [clearing]))[clearing].balances
    assert balances.credit_balance == 0  # the acquirer owes us nothing more
    assert await payable_rupiah(connection) == net  # owed to the merchant, paid at end of day

    # End of day pays the merchant its card and QRIS sales in one batch (one card sale here).
    from tests.snap.conftest import card_number

    await registry.register_cards(connection, [card_number])
    from gateways.terminal_api.accounts import purse_account_id
    from ledger.records import Transfer, TransferCode
    from ledger.store import create_transfers
    from settlement.end_of_day import EndOfDayConfig, close_day

    [sold] = await create_transfers(
        connection,
        [
            Transfer(
                derive_id("test-card-sale", "1"),
                purse_account_id(card_number),
                derive_id("merchant-payable", merchant),
                12_000,
                TransferCode.merchant_sale,
            )
        ],
        now=harness.clock.now(),
    )
    assert sold.result.value == "created"
    [batch] = await close_day(connection, day, EndOfDayConfig(), now=harness.clock.now())
    assert (batch.party_kind, batch.party_id, batch.gross_rupiah) == (
        "merchant",
        merchant,
        net + 12_000,
    )


async def test_a_bus_validator_sells_a_ride_by_qris_beside_its_card_taps(harness, shop, tmp_path):
    """A rider without a card: the validator prices the cash fare, asks the back office for a
    code for its operator (BLU), shows it, and the ride is booked to the operator's revenue
    once the rider's app pays. The sale runs on its own thread: `sell` returns at once."""
    import asyncio

    from bus_terminals.fare.feed import load_feed
    from bus_terminals.journal import Journal
    from bus_terminals.qris_till import QrisRides
    from bus_terminals.validator import no_card_fare
    from gateways.terminal_api.accounts import operator_revenue_account_id
    from tests.waiting import wait_until_async

    connection, _ = shop
    operator = "trans-semarang"
    await registry.register_operator(connection, operator, "BLU UPTD Trans Semarang")
    await qris.register_payee(
        connection,
        qris.Payee(qris.PayeeKind.operator, operator),
        partner_id=partner_id,
        acquirer_merchant_id=qris_trans_semarang.merchant_id,
        mdr_category="BLU",
    )
    tariff = load_feed()
    route = sorted(tariff.network_of_route)[0]
    priced = no_card_fare(tariff, route, None, harness.clock.unix_ms())
    assert priced is not None
    fare, product = priced
    assert (fare, product) == (4_000, "general_fare")  # the cash fare, not the card's Rp 3.500
    shown: list[dict] = []
    journal_path = tmp_path / "journal.db"
    Journal(journal_path, "BUS-9").close()
    validator = registry.TerminalRole.validator
    async with terminal_backoffice(
        harness, connection, "BUS-9", validator, operator_id=operator
    ) as (base_url, key):
        with QrisRides(
            journal_path, "BUS-9", base_url, key, harness.clock.unix_ms, shown.append,
            poll_interval_s=0.05,
        ) as rides:  # fmt: skip
            harness.bank.trouble.response_delay_ms = 300  # the acquirer is slow to answer
            ride = rides.sell(fare, route, product)
            assert not ride.done()  # the validator's next card tap need not wait for it
            await wait_until_async(lambda: any(s["state"] == "open" for s in shown), "code shown")
            harness.bank.trouble.response_delay_ms = 0
            code = next(s for s in shown if s["state"] == "open")["qr_content"]
            await harness.simulator.pay_qr(code)
            result = await asyncio.wrap_future(ride)
            assert result["state"] == "paid"
    journal = Journal(journal_path, "BUS-9", recover=False)
    try:
        [row] = journal.qris_rides()
        assert (row["state"], row["amount_rupiah"], row["order_id"]) == ("paid", 4_000, "BUS-9:1")
        assert journal.records() == []  # no card moved: nothing to upload
    finally:
        journal.close()
    revenue = operator_revenue_account_id(operator)
    balances = (await lookup_accounts(connection, [revenue]))[revenue].balances
    assert balances.credit_balance == 4_000 - 16  # BLU: 0.4 % MDR
    sale = await qris.order(connection, "BUS-9:1")
    assert sale is not None and sale.detail == f"{route} general_fare"


async def test_a_notification_that_the_payment_failed_is_acknowledged_and_books_nothing(
    harness, shop
):
    connection, _ = shop
    sale = await new_order(harness, shop, "POS-1:20", 18_000)
    body = harness.simulator.acquirer.notification(harness.simulator.acquirer.pay(sale.qr_content))
    body["latestTransactionStatus"] = "06"  # failed at the payer's side
    answer = await harness.session.post("/v1.0/qr/qr-mpm-notify", body)
    assert answer.response_code == "2005200"
    assert (await qris.order(connection, "POS-1:20")).state is qris.OrderState.open
    assert await payable_rupiah(connection) == 0
    assert (await notifications(connection))[-1] == (
        "POS-1:20",
        "status 06: not paid, nothing booked",
    )
