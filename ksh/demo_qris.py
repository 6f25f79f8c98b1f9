"""The demo's QRIS: a merchant's POS sells by QRIS and a bus sells rides by QR to riders without
a card, through the back office's terminal API and the bank simulator as acquirer (with one
notification lost on the way, made good by the POS's status request). `ksh demo` calls
`run_qris` after the day's taps and before end of day, which then pays card and QRIS together;
the acquirer's daily credit is reconciled with the rest of the statement."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

from ledger.clock import jakarta

merchant_sales_rupiah = (27_500, 150_000, 12_000)  # the second one's notification is lost
rides = 2
pos_terminal_id, bus_terminal_id = "POS-QRIS-01", "BUS-QRIS-01"
wait_for_code_s = 30.0


async def run_qris(
    connection: Any,
    simulator: Any,
    bank_url: str,
    backoffice_url: str,
    clock: Any,
    partner_id: str,
) -> dict[str, Any]:
    """Sell by QRIS at the first merchant and on a bus of the first operator; what happened."""
    import aiohttp

    from bus_terminals.qris_till import Till

    payees = await register_payees(connection, simulator, bank_url, partner_id)
    if payees is None:
        return {"qris": "no merchant or no operator registered: no QRIS sales"}
    merchant, operator = payees
    pos_key = await register_terminal(connection, pos_terminal_id, merchant=merchant)
    bus_key = await register_terminal(connection, bus_terminal_id, operator=operator)
    paid: list[int] = []
    async with aiohttp.ClientSession() as http:
        till = Till(http, backoffice_url, pos_terminal_id, pos_key, clock.unix_ms)
        for sale, amount in enumerate(merchant_sales_rupiah, start=1):
            simulator.bank.trouble.lose_next_notifications = 1 if sale == 2 else 0
            shown = await till.sell(sale, amount)
            await simulator.pay_qr(shown.qr_content)
            done = await till.status(shown.order_id)  # a lost notification: the query books it
            if done.state == "paid":
                paid.append(done.amount_rupiah)
    ridden = await sell_rides(simulator, backoffice_url, clock, bus_key)
    return {
        "qris_sales": len(paid),
        "qris_sales_rupiah": sum(paid),
        "qris_notifications_lost": 1,
        "qris_rides": len(ridden),
        "qris_rides_rupiah": sum(ridden),
    }


async def register_payees(
    connection: Any, simulator: Any, bank_url: str, partner_id: str
) -> tuple[str, str] | None:
    """The first merchant and the first operator take QRIS at the demo's bank (its acquirer)."""
    from bus_terminals.qris import QrisMerchant
    from gateways.snap import qris
    from gateways.snap.partners import load_partner, save_partner

    merchant = await connection.fetchval(
        "select merchant_id from merchants order by merchant_id limit 1"
    )
    operator = await connection.fetchval(
        "select operator_id from operators order by operator_id limit 1"
    )
    if merchant is None or operator is None:
        return None
    partner = await load_partner(connection, partner_id)
    assert partner is not None
    await save_partner(connection, dataclasses.replace(partner, base_url=bank_url + "/snap"))
    for number, (kind, party, category, mcc) in enumerate(
        (
            (qris.PayeeKind.merchant, merchant, "UMI", "5411"),
            (qris.PayeeKind.operator, operator, "BLU", "4111"),
        ),
        start=1,
    ):
        acquirer_id = f"QRIS{number:05d}"
        simulator.acquirer.merchants[acquirer_id] = QrisMerchant(
            name=f"{party}"[:25],
            city="Semarang",
            mcc=mcc,
            nmid=f"ID1020{number:09d}",
            criteria="UMI" if category == "UMI" else "UBE",
            acquirer_guid="ID.CO.BNI.WWW",
            merchant_pan=f"93600009{number:010d}",
            merchant_id=acquirer_id,
            postal_code="50132",
        )
        simulator.acquirer.mdr_categories[acquirer_id] = category
        await qris.register_payee(
            connection,
            qris.Payee(kind, party),
            partner_id=partner_id,
            acquirer_merchant_id=acquirer_id,
            mdr_category=category,
        )
    return merchant, operator


async def register_terminal(
    connection: Any, terminal_id: str, *, merchant: str | None = None, operator: str | None = None
) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bus_terminals.wire import public_key_text
    from gateways.terminal_api import registry

    key = Ed25519PrivateKey.generate()
    await registry.register_terminal(
        connection,
        terminal_id,
        public_key_text(key.public_key()),
        registry.TerminalRole.pos if merchant else registry.TerminalRole.validator,
        merchant_id=merchant,
        operator_id=operator,
    )
    return key


async def sell_rides(simulator: Any, backoffice_url: str, clock: Any, key: Any) -> list[int]:
    """Riders without a card buy rides by QR on a bus: priced at the cash fare, sold on the
    validator's own thread (`QrisRides`), paid from the rider's app."""
    from bus_terminals.fare.feed import load_feed
    from bus_terminals.journal import Journal
    from bus_terminals.qris_till import QrisRides
    from bus_terminals.validator import no_card_fare

    tariff = load_feed()
    route = sorted(tariff.network_of_route)[0]
    # Priced as at a morning bus of the service day (the demo's day runs at whatever time of day
    # it is; at night no bus runs and the feed prices nothing).
    morning = dt.datetime.combine(clock.today(), dt.time(8), jakarta)
    morning_ms = int(morning.timestamp() * 1000)
    loop = asyncio.get_running_loop()
    codes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def show(ride: dict[str, Any]) -> None:  # on the rides' thread
        loop.call_soon_threadsafe(codes.put_nowait, ride)

    ridden: list[int] = []
    with tempfile.TemporaryDirectory(prefix="ksh-demo-bus-") as folder:
        journal = Path(folder) / "journal.db"
        Journal(journal, bus_terminal_id).close()
        with QrisRides(
            journal, bus_terminal_id, backoffice_url, key, clock.unix_ms, show, poll_interval_s=0.05
        ) as seller:
            for _ in range(rides):
                priced = no_card_fare(tariff, route, None, morning_ms)
                if priced is None:
                    break
                sold = seller.sell(priced[0], route, priced[1])
                shown = await asyncio.wait_for(codes.get(), wait_for_code_s)
                if shown["state"] == "open":
                    await simulator.pay_qr(shown["qr_content"])
                ride = await asyncio.wrap_future(sold)
                await codes.get()  # the ride's last state, shown too
                if ride["state"] == "paid":
                    ridden.append(int(ride["amount"]))
    return ridden
