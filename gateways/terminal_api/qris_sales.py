"""A POS sells, and a bus validator sells a ride, by QRIS through the back office: the terminal
asks for a dynamic code for one sale, shows it, and asks how the sale stands until it is paid or
expired (`gateways.snap.qris` talks to the acquirer and keeps the books).

    POST /terminal/v1/qris/orders?sale=17&amount=25000[&detail=...] -> the order: qr_content
    GET  /terminal/v1/qris/orders/{order_id}        -> the order, asking the acquirer when it
                                                       is still open

Both are signed like a terminal's downloads (`bus_terminals.wire.request_signing_bytes`: the
amount is in the signed query). The payee is the POS's merchant, or the validator's operator;
the order id is "<terminal>:<sale>", so a terminal that lost our answer asks again and gets
the same code, and no terminal can see another's orders. A validator prices the ride itself (the
cash fare); the rider's app shows the amount before anyone pays, so a wrong price moves no money
the rider did not agree to.

The back office calls the acquirer with its own SNAP key: setting `snap_private_key_pem` (PEM
text; `ksh serve --snap-key FILE`). Without it QRIS sales are refused (503 `qris_unavailable`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from gateways.backoffice import Problem, config_key, pool_key
from gateways.snap import qris
from gateways.snap.client import SnapSession
from gateways.snap.partners import bank_connection, load_partner
from gateways.terminal_api.registry import TerminalRole, TerminalRow
from gateways.terminal_api.routes import authenticated_terminal

sale_number_max = 10**12
detail_length_max = 64  # what was sold, e.g. a ride's route and fare product

http_key = web.AppKey("qris_http", aiohttp.ClientSession)
sessions_key = web.AppKey("qris_sessions", dict)  # partner id -> SnapSession (keeps its token)


async def _acquirer_session(app: web.Application, partner_id: str) -> SnapSession:
    sessions: dict[str, SnapSession] = app[sessions_key]
    if partner_id not in sessions:
        config = app[config_key]
        private_key_pem = config.settings.get("snap_private_key_pem")
        if not private_key_pem:
            raise Problem(
                503, "qris_unavailable", "the back office has no SNAP key to call acquirers"
            )
        async with app[pool_key].acquire() as connection:
            partner = await load_partner(connection, partner_id)
        if partner is None or not partner.base_url:
            raise Problem(503, "qris_unavailable", f"acquirer {partner_id} has no base URL")
        sessions[partner_id] = SnapSession(
            bank_connection(partner, str(private_key_pem).encode(), clock=config.clock),
            app[http_key],
        )
    return sessions[partner_id]


def _problem(error: qris.QrisError) -> Problem:
    status = 502 if error.code.startswith("acquirer") else 422
    return Problem(status, error.code, error.detail)


def payee_of(terminal: TerminalRow) -> qris.Payee:
    """A POS sells for its merchant, a validator rides for its operator: never another."""
    if terminal.role is TerminalRole.pos and terminal.merchant_id:
        return qris.Payee(qris.PayeeKind.merchant, terminal.merchant_id)
    if terminal.role is TerminalRole.validator and terminal.operator_id:
        return qris.Payee(qris.PayeeKind.operator, terminal.operator_id)
    raise Problem(403, "no_payee", f"terminal {terminal.terminal_id} sells for nobody")


async def create_order(request: web.Request) -> web.Response:
    terminal = await authenticated_terminal(request)
    payee = payee_of(terminal)
    try:
        sale = int(request.query.get("sale", ""))
        amount = int(request.query.get("amount", ""))
    except ValueError:
        raise Problem(400, "bad_field", "sale and amount are whole numbers") from None
    if not 0 < sale <= sale_number_max:
        raise Problem(400, "bad_field", f"sale is 1..{sale_number_max}")
    detail = request.query.get("detail", "")
    if len(detail) > detail_length_max or not detail.isprintable():
        raise Problem(
            400, "bad_field", f"detail is at most {detail_length_max} printable characters"
        )
    async with request.app[pool_key].acquire() as connection:
        partner_id = await qris.payee_acquirer(connection, payee)
    if partner_id is None:
        raise Problem(422, "no_acquirer", f"{payee.kind.value} {payee.party_id} takes no QRIS")
    session = await _acquirer_session(request.app, partner_id)
    async with request.app[pool_key].acquire() as connection:
        try:
            order = await qris.create_order(
                connection,
                session,
                order_id=f"{terminal.terminal_id}:{sale}",
                payee=payee,
                terminal_id=terminal.terminal_id,
                amount_rupiah=amount,
                now=request.app[config_key].clock.now(),
                detail=detail,
            )
        except qris.QrisError as error:
            raise _problem(error) from error
    return web.json_response(order.as_json())


async def order_status(request: web.Request) -> web.Response:
    terminal = await authenticated_terminal(request)
    order_id = request.match_info["order_id"]
    async with request.app[pool_key].acquire() as connection:
        order = await qris.order(connection, order_id)
        if order is None or order.terminal_id != terminal.terminal_id:
            raise Problem(404, "unknown_order", f"no QRIS order {order_id} of this terminal")
        if order.state is qris.OrderState.open:
            session = await _acquirer_session(request.app, order.partner_id)
            try:
                order = await qris.check_order(
                    connection, session, order_id, now=request.app[config_key].clock.now()
                )
            except qris.QrisError as error:
                raise _problem(error) from error
    return web.json_response(order.as_json())


def install(app: web.Application) -> None:
    async def http_client(app: web.Application) -> AsyncIterator[None]:
        app[http_key] = aiohttp.ClientSession()
        yield
        await app[http_key].close()

    app[sessions_key] = {}
    app.cleanup_ctx.append(http_client)
    app.router.add_post("/terminal/v1/qris/orders", create_order)
    app.router.add_get("/terminal/v1/qris/orders/{order_id}", order_status)
