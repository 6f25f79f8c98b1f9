"""The service desk's admin API: cards registered, blocked and replaced, the deny list kept
(`card_desk`). Staff call it with their own bearer token, as the rest of the admin API; every
change names why (`reason`) and is written to `staff_actions` in the change's transaction.

    POST /admin/v1/cards/{card_number}/holder    register to a person (name, nik, phone)
    GET  /admin/v1/cards/{card_number}/holder    the holder (NIK's last four digits only)
    POST /admin/v1/cards/{card_number}/block     cause: lost | stolen | damaged | fraud
    POST /admin/v1/cards/{card_number}/replace   new_card_number; the balance moves when due
    GET  /admin/v1/cards/{card_number}/replacement
    POST /admin/v1/cards/{card_number}/passes    grant a pass (fare_pass_id): next tap activates;
                                         priced: sold, source "drawer", receipt_id (`passes`)
    GET  /admin/v1/cards/{card_number}/passes    the passes granted or sold, activated or waiting
    POST /admin/v1/passes/{pass_sale_id}/cancel  before activation: the cash back from your drawer
    POST /admin/v1/replacements/move-due         move every balance whose wait is over
    GET  /admin/v1/deny-list[?unreviewed=1]      entries as they stand, newest first
    GET  /admin/v1/deny-list/{card_number}       one entry and its history
    POST /admin/v1/deny-list/{card_number}/review   keep an automatic entry, with a note
    POST /admin/v1/deny-list/{card_number}/lift     lift (fraud: a second person, a supervisor)
    POST /admin/v1/counter/close-shift   shift_id, counted_rupiah[, cashier]: the drawer against
                                         the books (`counter`); a clerk closes only their own

Changes take a clerk or a supervisor (`staff.desk_roles`); reads any role. The instance that
runs the singleton jobs also moves every balance whose wait is over, once an hour (setting
`replacement_sweep_interval_s`; 0: not here), so nobody has to remember `move-due`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from aiohttp import web

from gateways.backoffice import (
    Problem,
    config_key,
    leadership_key,
    leadership_poll_s,
    pool_key,
    singleton_jobs,
)
from gateways.staff import Role, any_role, desk_roles, money_roles
from gateways.terminal_api import card_desk, counter, passes, registry
from gateways.terminal_api.routes import (
    admin_body,
    body_field,
    record_staff_action,
    registry_refusals,
    staff_change,
    staff_member_key,
    staff_reason,
)


def card_desk_extension(app: web.Application) -> None:
    app.router.add_post("/admin/v1/cards/{card_number}/holder", register_holder)
    app.router.add_get("/admin/v1/cards/{card_number}/holder", holder)
    app.router.add_post("/admin/v1/cards/{card_number}/block", block)
    app.router.add_post("/admin/v1/cards/{card_number}/replace", replace)
    app.router.add_get("/admin/v1/cards/{card_number}/replacement", replacement)
    app.router.add_post("/admin/v1/cards/{card_number}/passes", grant_pass)
    app.router.add_get("/admin/v1/cards/{card_number}/passes", card_passes)
    app.router.add_post("/admin/v1/passes/{pass_sale_id}/cancel", cancel_pass)
    app.router.add_post("/admin/v1/replacements/move-due", move_due)
    app.router.add_get("/admin/v1/deny-list", deny_entries)
    app.router.add_get("/admin/v1/deny-list/{card_number}", deny_entry)
    app.router.add_post("/admin/v1/deny-list/{card_number}/review", review)
    app.router.add_post("/admin/v1/deny-list/{card_number}/lift", lift)
    app.router.add_post("/admin/v1/counter/close-shift", close_shift)
    if _sweep_interval_s(app) > 0:
        singleton_jobs(app)
        app.cleanup_ctx.append(_sweeping_due_replacements)


replacement_sweep_interval_s = 3_600.0
sweeps = logging.getLogger("ksh.desk.replacements")


def _sweep_interval_s(app: web.Application) -> float:
    settings = app[config_key].settings
    return float(settings.get("replacement_sweep_interval_s", replacement_sweep_interval_s))


async def _sweeping_due_replacements(app: web.Application) -> AsyncIterator[None]:
    sweeping = asyncio.create_task(_sweep_due_replacements(app, _sweep_interval_s(app)))
    yield
    sweeping.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sweeping


async def _sweep_due_replacements(app: web.Application, interval_s: float) -> None:
    """While this instance leads: move the balances whose wait is over, then wait."""
    leadership = app[leadership_key]
    while True:
        if not leadership.leading:
            await asyncio.sleep(leadership_poll_s / 4)
            continue
        try:
            async with app[pool_key].acquire() as connection, connection.transaction():
                moved = await card_desk.move_due_balances(
                    connection, now=app[config_key].clock.now(), wait=replacement_wait(app)
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            sweeps.warning("sweep failed, tried again in %.0f s: %s", interval_s, error)
        except Exception:  # a bug: logged whole, and the service goes on
            sweeps.exception("sweep failed, tried again in %.0f s", interval_s)
        else:
            for found in moved:
                sweeps.info(
                    "balance moved",
                    extra={
                        "card_number": found.old_card_number,
                        "new_card_number": found.new_card_number,
                        "purse_rupiah": found.purse_rupiah,
                        "pending_rupiah": found.pending_rupiah,
                    },
                )
        await asyncio.sleep(interval_s)


def replacement_wait(app: web.Application) -> dt.timedelta:
    """Setting `replacement_wait_days` (default 3)."""
    days = app[config_key].settings.get("replacement_wait_days")
    return card_desk.replacement_wait_default if days is None else dt.timedelta(days=float(days))


def _json(value: Any) -> Any:
    """A record as JSON: times as ISO 8601, enums as their values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: _json(item) for key, item in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {key: _json(item) for key, item in value.items()}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


async def register_holder(request: web.Request) -> web.Response:
    body = await admin_body(request, desk_roles)
    number = request.match_info["card_number"]
    name = body_field(body, "name", str)
    nik = body_field(body, "nik", str)
    phone = body_field(body, "phone", str)
    reason = staff_reason(body)
    async with staff_change(request) as (connection, member, now):
        registered = await card_desk.register_holder(
            connection, number, name, nik, phone, username=member.username, now=now
        )
        await record_staff_action(
            request, connection, "register_card", number, reason, nik_last4=nik[-4:]
        )
    return web.json_response(_json(registered), status=201)


async def holder(request: web.Request) -> web.Response:
    await admin_body(request, any_role)
    number = request.match_info["card_number"]
    async with request.app[pool_key].acquire() as connection:
        found = await card_desk.holder_of(connection, number)
        cap = await card_desk.purse_cap_rupiah(connection, number)
    if found is None:
        raise Problem(404, "not_registered", f"card {number} is not registered to anyone")
    return web.json_response({**_json(found), "purse_cap_rupiah": cap})


async def block(request: web.Request) -> web.Response:
    body = await admin_body(request, desk_roles)
    number = request.match_info["card_number"]
    cause_text = body_field(body, "cause", str)
    if cause_text not in card_desk.BlockCause.__members__:
        causes = " | ".join(card_desk.BlockCause)
        raise Problem(400, "bad_field", f"cause is {causes}", field="cause")
    reason = staff_reason(body)
    async with staff_change(request) as (connection, member, now):
        cause = card_desk.BlockCause(cause_text)
        await card_desk.block_card(
            connection, number, cause, reason, username=member.username, now=now
        )
        await record_staff_action(
            request, connection, "block_card", number, reason, cause=cause_text
        )
    return web.json_response({"card_number": number, "denied": cause_text}, status=201)


async def replace(request: web.Request) -> web.Response:
    body = await admin_body(request, desk_roles)
    number = request.match_info["card_number"]
    new_number = body_field(body, "new_card_number", str)
    reason = staff_reason(body)
    wait = replacement_wait(request.app)
    async with staff_change(request) as (connection, member, now):
        found = await card_desk.request_replacement(
            connection, number, new_number, username=member.username, now=now, wait=wait
        )
        await record_staff_action(
            request, connection, "replace_card", number, reason, new_card_number=new_number
        )
    return web.json_response(_replacement_json(found, wait), status=201)


def _replacement_json(found: card_desk.Replacement, wait: dt.timedelta) -> dict[str, Any]:
    return {**_json(found), "due_at": found.due_at(wait).isoformat()}


async def replacement(request: web.Request) -> web.Response:
    await admin_body(request, any_role)
    number = request.match_info["card_number"]
    async with request.app[pool_key].acquire() as connection:
        found = await card_desk.replacement_of(connection, number)
    if found is None:
        raise Problem(404, "not_replaced", f"card {number} has no replacement")
    return web.json_response(_replacement_json(found, replacement_wait(request.app)))


async def move_due(request: web.Request) -> web.Response:
    body = await admin_body(request, desk_roles)
    reason = staff_reason(body)
    async with request.app[pool_key].acquire() as connection, connection.transaction():
        moved = await card_desk.move_due_balances(
            connection, now=request.app[config_key].clock.now(), wait=replacement_wait(request.app)
        )
        for found in moved:
            await record_staff_action(
                request,
                connection,
                "move_card_balance",
                found.old_card_number,
                reason,
                new_card_number=found.new_card_number,
                purse_rupiah=found.purse_rupiah,
                pending_rupiah=found.pending_rupiah,
            )
    return web.json_response({"moved": [_json(found) for found in moved]})


async def deny_entries(request: web.Request) -> web.Response:
    await admin_body(request, any_role)
    unreviewed = request.query.get("unreviewed", "") in ("1", "true", "yes")
    async with request.app[pool_key].acquire() as connection:
        found = await card_desk.deny_entries(connection, unreviewed=unreviewed)
    return web.json_response([_json(entry) for entry in found])


async def deny_entry(request: web.Request) -> web.Response:
    await admin_body(request, any_role)
    number = request.match_info["card_number"]
    async with request.app[pool_key].acquire() as connection:
        entry = await card_desk.deny_entry(connection, number)
        history = await card_desk.deny_history(connection, number)
    if entry is None and not history:
        raise Problem(404, "not_denied", f"card {number} was never on the deny list")
    return web.json_response(
        {"entry": None if entry is None else _json(entry), "history": [_json(c) for c in history]}
    )


async def review(request: web.Request) -> web.Response:
    body = await admin_body(request, desk_roles)
    number = request.match_info["card_number"]
    reason = staff_reason(body)
    async with staff_change(request) as (connection, member, now):
        await card_desk.review_entry(connection, number, reason, username=member.username, now=now)
        await record_staff_action(request, connection, "review_deny_entry", number, reason)
    return web.json_response({"card_number": number, "reviewed_by": member.username})


async def lift(request: web.Request) -> web.Response:
    body = await admin_body(request, desk_roles)
    number = request.match_info["card_number"]
    reason = staff_reason(body)
    async with staff_change(request) as (connection, member, now):
        outcome = await card_desk.lift_entry(connection, number, reason, member, now=now)
        await record_staff_action(
            request, connection, "lift_deny_entry", number, reason, outcome=outcome.value
        )
    status = 200 if outcome is card_desk.LiftOutcome.lifted else 202
    return web.json_response({"card_number": number, "outcome": outcome.value}, status=status)


async def close_shift(request: web.Request) -> web.Response:
    body = await admin_body(request, money_roles)
    member = request[staff_member_key]
    shift_id = body_field(body, "shift_id", str)
    counted = body_field(body, "counted_rupiah", int)
    cashier = body_field(body, "cashier", str, member.username)
    if not 0 <= counted <= counter.counted_rupiah_max:
        raise Problem(
            400,
            "bad_field",
            f"counted_rupiah is 0..{counter.counted_rupiah_max:,}",
            field="counted_rupiah",
        )
    if cashier != member.username and member.role is not Role.supervisor:
        raise Problem(403, "forbidden", "a clerk closes only their own drawer")
    with registry_refusals():
        shift_id = registry.check_reference("shift_id", shift_id)
    reason = staff_reason(body)
    async with request.app[pool_key].acquire() as connection, connection.transaction():
        closed = await counter.close_shift(
            connection,
            cashier,
            shift_id,
            counted,
            closed_by=member.username,
            now=request.app[config_key].clock.now(),
        )
        if closed.created:
            await record_staff_action(
                request,
                connection,
                "close_shift",
                cashier,
                reason,
                shift_id=shift_id,
                expected_rupiah=closed.expected_rupiah,
                counted_rupiah=counted,
            )
    return web.json_response(
        {
            "cashier": cashier,
            "shift_id": shift_id,
            "expected_rupiah": closed.expected_rupiah,
            "counted_rupiah": closed.counted_rupiah,
            "difference_rupiah": closed.difference_rupiah,
            "created": closed.created,
        }
    )


async def grant_pass(request: web.Request) -> web.Response:
    """A pass to a card: a Rp 0 one granted, a priced one sold for cash into the caller's own
    drawer (source "drawer", receipt_id: a repeat answers the first sale, 200)."""
    body = await admin_body(request, desk_roles)
    number = request.match_info["card_number"]
    fare_pass_id = body_field(body, "fare_pass_id", str)
    source = body_field(body, "source", str, None)
    if source is not None and source != "drawer":
        raise Problem(
            400, "bad_field", "source is 'drawer': cash into your own drawer", field="source"
        )
    receipt_id = body_field(body, "receipt_id", str, None)
    if source is not None and receipt_id is None:
        raise Problem(400, "missing_field", "a sale needs its receipt_id", field="receipt_id")
    operator_id = body_field(body, "operator_id", str, None)
    amount = body_field(body, "amount_rupiah", int, None)
    reason = staff_reason(body)
    async with staff_change(request) as (connection, member, now):
        drawer = None if source is None else counter.drawer_code(member.username)
        granted = await passes.grant_pass(
            connection,
            number,
            fare_pass_id,
            username=member.username,
            reason=reason,
            now=now,
            receipt_id=receipt_id,
            drawer=drawer,
            operator_id=operator_id,
            amount_rupiah=amount,
        )
        if granted.created:
            await record_staff_action(
                request,
                connection,
                "sell_pass" if granted.amount_rupiah else "grant_pass",
                number,
                reason,
                fare_pass_id=fare_pass_id,
                pass_sale_id=granted.pass_sale_id,
                amount_rupiah=granted.amount_rupiah,
                receipt_id=receipt_id,
            )
    return web.json_response(_json(granted), status=201 if granted.created else 200)


async def cancel_pass(request: web.Request) -> web.Response:
    """Withdraw a pass no card has activated; a sale's cash goes back out of the caller's
    drawer. A repeat answers the first cancellation (200)."""
    body = await admin_body(request, desk_roles)
    sale_id = request.match_info["pass_sale_id"]
    reason = staff_reason(body)
    async with staff_change(request) as (connection, member, now):
        cancelled = await passes.cancel_pass(
            connection, sale_id, member=member, reason=reason, now=now
        )
        if cancelled.created:
            await record_staff_action(
                request,
                connection,
                "cancel_pass",
                cancelled.card_number,
                reason,
                pass_sale_id=sale_id,
                amount_rupiah=cancelled.amount_rupiah,
            )
    return web.json_response(_json(cancelled), status=201 if cancelled.created else 200)


async def card_passes(request: web.Request) -> web.Response:
    await admin_body(request, any_role)
    number = request.match_info["card_number"]
    async with request.app[pool_key].acquire() as connection:
        found = await passes.passes_of(connection, number)
    listed = [_json(granted) for granted in found]
    return web.json_response([{k: v for k, v in p.items() if k != "created"} for p in listed])
