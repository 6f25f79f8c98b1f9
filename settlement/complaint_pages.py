"""The service desk's complaint pages, beside the finance pages and behind the same logins:

    GET  /finance/complaints              open complaints, overdue first (?all=1: answered too)
    GET  /finance/complaints/new?card=N   intake: the card's history to pick the taps from
    POST /finance/complaints              take the complaint
    GET  /finance/complaints/{id}         the complaint, its taps, its history, the card's history
    POST /finance/complaints/{id}         investigate | resolve (with or without a refund) |
                                          reject | approve (a refund above the limit)
    GET  /finance/complaints/report?month=YYYY-MM   the monthly report

Clerks and supervisors take and answer complaints; auditors read. Every change goes through
`gateways.service_desk.complaints` (who, when, why; a refund is a ledger transfer). Templates
are `settlement/templates/complaint*.html`, their words in `_()` for the translations.
"""

from __future__ import annotations

import urllib.parse

from aiohttp import web

from gateways.backoffice import config_key, pool_key
from gateways.service_desk import check_codes, complaints
from gateways.service_desk.complaints import ComplaintError, Resolution
from settlement.actions import Role
from settlement.pages import (
    Session,
    html,
    page,
    read_form,
    render,
    require,
    shown_message,
    translator,
)

changing_roles = (Role.clerk, Role.supervisor)


def install(app: web.Application) -> None:
    app.router.add_routes(
        [
            web.get("/finance/complaints", list_page),
            web.post("/finance/complaints", take),
            web.get("/finance/complaints/new", new_page),
            web.get("/finance/complaints/report", report_page),
            web.get(r"/finance/complaints/{complaint_id:\d{1,18}}", detail_page),
            web.post(r"/finance/complaints/{complaint_id:\d{1,18}}", act),
        ]
    )


def complaint_page(
    request: web.Request, name: str, title: str, session: Session, **values: object
) -> web.Response:
    """A complaint template in the asker's language, inside the finance pages' layout."""
    body = render(request, name, session=session, **values)
    return html(page(request, title, session, body, **shown_message(request)))


def back(path: str, message: str, *, ok: bool = False) -> web.HTTPSeeOther:
    query = {"message": message, **({"ok": "1"} if ok else {})}
    return web.HTTPSeeOther(f"{path}?" + urllib.parse.urlencode(query))


async def list_page(request: web.Request) -> web.Response:
    session = await require(request)
    everything = request.query.get("all") == "1"
    today = request.app[config_key].clock.today()
    async with request.app[pool_key].acquire() as connection:
        listed = await complaints.complaints(connection, today=today, open_only=not everything)
    return complaint_page(
        request,
        "complaints.html",
        translator(request).gettext("Complaints"),
        session,
        complaints=listed,
        today=today,
        everything=everything,
        can_change=session.staff.role in changing_roles,
    )


async def new_page(request: web.Request) -> web.Response:
    session = await require(request, *changing_roles)
    number = request.query.get("card", "").strip()
    history: list[complaints.HistoryRecord] = []
    code = ""
    known = False
    if number.isdigit() and len(number) <= 20:
        async with request.app[pool_key].acquire() as connection:
            known = bool(
                await connection.fetchval("select 1 from cards where card_number = $1", number)
            )
            if known:
                history = await complaints.card_history(connection, number)
                code = (await check_codes.check_codes(connection, [number]))[number]
    return complaint_page(
        request,
        "complaint_new.html",
        translator(request).gettext("New complaint"),
        session,
        number=number,
        known=known,
        check_code=code,
        history=history,
        channels=list(complaints.Channel),
    )


async def take(request: web.Request) -> web.Response:
    session = await require(request, *changing_roles)
    form = await read_form(request, session)
    posted = await request.post()
    number = form.get("card_number", "").strip()
    taps = []
    for value in posted.getall("tap", [])[: complaints.taps_per_complaint_max]:
        terminal_id, _, sequence = str(value).rpartition("/")
        if sequence.isdigit():
            taps.append(complaints.TapRef(terminal_id, int(sequence)))
    async with request.app[pool_key].acquire() as connection:
        try:
            complaint_id = await complaints.add_complaint(
                connection,
                card_number=number,
                channel=form.get("channel", ""),
                description=form.get("description", ""),
                taps=taps,
                received_by=session.staff.username,
                now=request.app[config_key].clock.now(),
            )
        except ComplaintError as error:
            raise web.HTTPSeeOther(
                "/finance/complaints/new?"
                + urllib.parse.urlencode({"card": number, "message": str(error)})
            ) from None
    taken = translator(request).gettext("Complaint %(id)s taken") % {"id": complaint_id}
    raise back(f"/finance/complaints/{complaint_id}", taken, ok=True)


async def detail_page(request: web.Request) -> web.Response:
    session = await require(request)
    complaint_id = int(request.match_info["complaint_id"])
    today = request.app[config_key].clock.today()
    async with request.app[pool_key].acquire() as connection:
        found = await complaints.complaint(connection, complaint_id)
        if found is None:
            raise web.HTTPNotFound(text=f"no complaint {complaint_id}")
        history = await complaints.card_history(connection, found.card_number)
        refundable = await complaints.refundable_rupiah(connection, found)
    named = {(tap.terminal_id, tap.sequence) for tap in found.taps}
    return complaint_page(
        request,
        "complaint.html",
        translator(request).gettext("Complaint %(id)s") % {"id": complaint_id},
        session,
        complaint=found,
        overdue=found.overdue(today),
        history=history,
        named=named,
        refundable_rupiah=refundable,
        can_change=session.staff.role in changing_roles,
        can_approve=session.staff.role is Role.supervisor
        and found.refund_requested_by not in (None, session.staff.username),
    )


async def act(request: web.Request) -> web.Response:
    session = await require(request, *changing_roles)
    form = await read_form(request, session)
    complaint_id = int(request.match_info["complaint_id"])
    here = f"/finance/complaints/{complaint_id}"
    action = form.get("action", "")
    note = form.get("note", "")
    clock = request.app[config_key].clock
    _ = translator(request).gettext
    message, ok = _("Done"), True
    async with request.app[pool_key].acquire() as connection:
        try:
            if action == "investigate":
                await complaints.investigate(
                    connection, complaint_id, session.staff, note, now=clock.now()
                )
            elif action == "resolve":
                refund_text = form.get("refund_rupiah", "0").strip().replace(".", "") or "0"
                if not refund_text.isdigit():
                    raise ComplaintError("the refund is whole rupiah", "bad_field")
                outcome = await complaints.resolve(
                    connection,
                    complaint_id,
                    session.staff,
                    note,
                    refund_rupiah=int(refund_text),
                    now=clock.now(),
                )
                if outcome is Resolution.awaiting_approval:
                    message = _("Recorded: above the limit, another supervisor approves the refund")
            elif action == "reject":
                await complaints.reject(
                    connection, complaint_id, session.staff, note, now=clock.now()
                )
            elif action == "approve":
                await complaints.approve_refund(
                    connection, complaint_id, session.staff, now=clock.now()
                )
            else:
                raise web.HTTPBadRequest(text="unknown action")
        except ComplaintError as error:
            message, ok = str(error), False
    raise back(here, message, ok=ok)


async def report_page(request: web.Request) -> web.Response:
    session = await require(request)
    today = request.app[config_key].clock.today()
    text = request.query.get("month", "") or today.strftime("%Y-%m")
    try:
        first_day = complaints.month_start(text)
    except ValueError as error:
        raise web.HTTPBadRequest(text=str(error)) from None
    async with request.app[pool_key].acquire() as connection:
        report = await complaints.monthly_report(connection, first_day, today=today)
    title = translator(request).gettext("Complaints %(month)s") % {"month": report.month}
    return complaint_page(request, "complaint_report.html", title, session, report=report)
