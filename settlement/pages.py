"""The finance pages: server-rendered HTML in the back office, mounted as an extension.

    create_app(config, [..., settlement.pages.install])

Staff log in (`settlement.logins`: scrypt checked off the event loop; attempts counted in the
database per user name and per client address, so that guessing is limited across processes
and restarts; sessions are random tokens stored hashed, in an HttpOnly SameSite=Strict cookie,
`Secure` with HSTS when served over HTTPS). Every form that changes something carries the
session's CSRF token. Roles: a clerk works exceptions; a supervisor also approves write-offs
above the limit (never their own), unlocks user names and ends others' sessions; an auditor
reads everything and changes nothing. Each action goes through `settlement.actions`, which books
a ledger transfer saying who, when and why; unlocks and ended sessions go to `staff_actions`.

New pages and fragments are Jinja2 templates (`settlement/templates/`, autoescaped).
"""

from __future__ import annotations

import datetime as dt
import hmac
import io
import logging
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any

import aiohttp
import asyncpg
import jinja2
from aiohttp import web

from gateways import staff as staff_tokens
from gateways.backoffice import Extension, config_key, pool_key, reporting_pool_key
from settlement import actions, charts, logins, views
from settlement.actions import ActionResult, Role, Staff
from settlement.end_of_day import EndOfDayConfig, PayoutPort, jakarta
from settlement.formatting import grouped, rupiah
from settlement.logins import LoginLimits
from settlement.logins import hash_password as hash_password
from settlement.logins import password_length_min as password_length_min
from settlement.logins import verify_password as verify_password

logger = logging.getLogger("ksh.finance")

session_cookie = "ksh_finance"
login_csrf_cookie = "ksh_finance_login"
form_body_bytes_max = 16 * 1024
reason_length_max = 500
strict_transport_security = "max-age=31536000"  # a year; sent only when cookies are Secure

templates = jinja2.Environment(
    loader=jinja2.PackageLoader("settlement", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
templates.filters["rupiah"] = rupiah
templates.filters["local"] = lambda moment: moment.astimezone(jakarta).strftime("%Y-%m-%d %H:%M")
templates.filters["wib"] = lambda time_ms: dt.datetime.fromtimestamp(
    time_ms / 1000, jakarta
).strftime("%Y-%m-%d %H:%M:%S")


# ---------------------------------------------------------------------------- staff


async def add_staff(
    connection: asyncpg.Connection, username: str, password: str, role: Role
) -> None:
    """Add a staff account, or set its password and role; either ends its sessions, and its
    staff tokens act in the new role."""
    if len(password) < password_length_min:
        raise ValueError(f"password must have at least {password_length_min} characters")
    async with connection.transaction():
        await connection.execute(
            """insert into settlement_staff (username, password_hash, role) values ($1, $2, $3)
               on conflict (username) do update set password_hash = excluded.password_hash, role = excluded.role""",
            username,
            hash_password(password),
            role.value,
        )
        await connection.execute("delete from settlement_sessions where username = $1", username)
        await staff_tokens.set_role_of_tokens(connection, Staff(username, role))


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class PagesSettings:
    end_of_day: EndOfDayConfig = field(default_factory=EndOfDayConfig)
    # Above this a write-off needs a second person (a supervisor other than the requester).
    write_off_limit_rupiah: int = actions.write_off_limit_rupiah_default
    # Builds the bank client used to re-initiate payouts; None: re-initiation is unavailable.
    payer_factory: Callable[[aiohttp.ClientSession], PayoutPort] | None = None
    # Served over HTTPS (directly or behind a proxy): cookies are Secure and pages send HSTS.
    secure_cookies: bool = False
    login_limits: LoginLimits = field(default_factory=LoginLimits)
    # Behind a reverse proxy every request comes from the proxy's address: name the header the
    # proxy sets (e.g. X-Forwarded-For; its last entry is taken) so that the per-address
    # limit counts clients. Empty: the connection's peer address. Never set it without such a
    # proxy in front: clients could then name any address they like.
    client_address_header: str = ""


def settings_from(values: dict[str, Any]) -> PagesSettings:
    """Our settings from the back office's `BackofficeConfig.settings`: a whole PagesSettings
    under `settlement_pages`, or the plain keys `secure_cookies`, `client_address_header`,
    `write_off_limit_rupiah` and `password_checks_concurrent_max` (what `ksh serve` passes)."""
    configured = values.get("settlement_pages")
    if isinstance(configured, PagesSettings):
        return configured
    default = PagesSettings()
    return PagesSettings(
        write_off_limit_rupiah=int(
            values.get("write_off_limit_rupiah", default.write_off_limit_rupiah)
        ),
        secure_cookies=bool(values.get("secure_cookies", default.secure_cookies)),
        login_limits=LoginLimits(
            checks_concurrent_max=int(
                values.get(
                    "password_checks_concurrent_max", default.login_limits.checks_concurrent_max
                )
            )
        ),
        client_address_header=str(
            values.get("client_address_header", default.client_address_header)
        ),
    )


settings_key = web.AppKey("settlement_pages", PagesSettings)
http_key = web.AppKey("settlement_http", aiohttp.ClientSession)
password_checker_key = web.AppKey("settlement_password_checker", logins.PasswordChecker)


def extension(settings: PagesSettings) -> Extension:
    def mount(app: web.Application) -> None:
        app[settings_key] = settings
        app[password_checker_key] = logins.PasswordChecker(
            settings.login_limits.checks_concurrent_max
        )

        async def http_client(app: web.Application) -> Any:
            app[http_key] = aiohttp.ClientSession()
            yield
            await app[http_key].close()

        app.cleanup_ctx.append(http_client)
        if settings.secure_cookies:
            app.on_response_prepare.append(send_strict_transport_security)
        routes = [
            web.get("/finance/login", login_form),
            web.post("/finance/login", login),
            web.post("/finance/logout", logout),
            web.post("/finance/logout-everywhere", logout_everywhere),
            web.get("/finance", overview),
            web.get("/finance/", overview),
            web.get("/finance/batches", batches_page),
            web.get("/finance/batches.csv", batches_csv),
            web.get("/finance/batches.pdf", batches_pdf),
            web.get("/finance/exceptions", exceptions_page),
            web.get("/finance/exceptions.csv", exceptions_csv),
            web.post("/finance/exceptions/action", exception_action),
            web.post("/finance/match", manual_match),
            web.get("/finance/cards", card_page),
            web.get("/finance/staff", staff_page),
            web.post("/finance/staff/unlock", unlock_staff),
            web.post("/finance/staff/end-sessions", end_staff_sessions),
        ]
        app.router.add_routes(routes)

    return mount


def install(app: web.Application) -> None:
    """The default mounting (`ksh serve`): settings from the back office config, if any."""
    extension(settings_from(app[config_key].settings))(app)


async def send_strict_transport_security(
    request: web.Request, response: web.StreamResponse
) -> None:
    if request.path.startswith("/finance"):
        response.headers["Strict-Transport-Security"] = strict_transport_security


# ---------------------------------------------------------------------------- sessions


@dataclass(frozen=True, slots=True)
class Session:
    staff: Staff
    csrf_token: str


def client_address(request: web.Request, header: str) -> str:
    """Who is asking, for the per-address limit: the last entry of the configured proxy header
    (what the nearest proxy saw), else the connection's peer."""
    if header:
        last = request.headers.get(header, "").rsplit(",", 1)[-1].strip()
        if last:
            return last[: logins.subject_length_max]
    return (request.remote or "unknown")[: logins.subject_length_max]


async def current_session(request: web.Request) -> Session | None:
    token = request.cookies.get(session_cookie, "")
    if not token:
        return None
    async with request.app[pool_key].acquire() as connection:
        row = await connection.fetchrow(
            """select s.csrf_token, u.username, u.role from settlement_sessions s
                 join settlement_staff u using (username)
                where s.token_sha256 = $1 and s.expires_at > $2""",
            logins.session_digest(token),
            request.app[config_key].clock.now(),
        )
    if row is None:
        return None
    return Session(Staff(row["username"], Role(row["role"])), row["csrf_token"])


async def require(request: web.Request, *roles: Role) -> Session:
    session = await current_session(request)
    if session is None:
        raise web.HTTPSeeOther("/finance/login?next=" + urllib.parse.quote(request.path_qs))
    if roles and session.staff.role not in roles:
        raise web.HTTPForbidden(
            text=page("Not allowed", session, "<p>Your role may not do this.</p>"),
            content_type="text/html",
        )
    return session


async def read_form(request: web.Request, session: Session | None) -> dict[str, str]:
    if request.content_length is not None and request.content_length > form_body_bytes_max:
        raise web.HTTPRequestEntityTooLarge(
            max_size=form_body_bytes_max, actual_size=request.content_length
        )
    form = await request.post()
    values = {key: str(value) for key, value in form.items() if isinstance(value, str)}
    expected = session.csrf_token if session else request.cookies.get(login_csrf_cookie, "")
    if not expected or not hmac.compare_digest(values.get("csrf", ""), expected):
        raise web.HTTPForbidden(
            text="CSRF token missing or wrong; reload the page", content_type="text/plain"
        )
    return values


# ---------------------------------------------------------------------------- layout

style = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#111827;background:#f3f4f6}
header{background:#0f3d91;color:#fff;padding:10px 24px;display:flex;align-items:center;gap:24px}
header a{color:#dbeafe;text-decoration:none;font-weight:500}header a:hover{color:#fff}
header .who{margin-left:auto;font-size:14px}header form{display:inline}
header button{background:none;border:1px solid #93c5fd;color:#fff;border-radius:4px;padding:3px 10px;cursor:pointer}
main{padding:20px 24px;max-width:1200px}
h1{font-size:22px;margin:4px 0 16px}h2{font-size:17px;margin:24px 0 8px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:12px}
.card{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0000001a}
.card .label{font-size:12px;color:#6b7280;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:22px;font-weight:600;margin-top:4px}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px #0000001a;font-size:14px}
th,td{padding:6px 10px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{background:#f9fafb;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.message{background:#ecfdf5;border:1px solid #10b981;padding:8px 12px;border-radius:6px;margin-bottom:12px}
.warning{background:#fef2f2;border-color:#ef4444}
.chart{background:#fff;border-radius:8px;box-shadow:0 1px 2px #0000001a;margin:6px 12px 6px 0}
form.inline{display:flex;gap:6px;align-items:center;flex-wrap:wrap}
input[type=text],input[type=password],input[type=date]{padding:5px 8px;border:1px solid #d1d5db;border-radius:4px}
button.action{background:#2563eb;color:#fff;border:0;border-radius:4px;padding:5px 10px;cursor:pointer}
button.action.secondary{background:#6b7280}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#e5e7eb}
.badge.open{background:#fde68a}.badge.done{background:#bbf7d0}
.login{max-width:340px;margin:80px auto;background:#fff;padding:24px;border-radius:8px;box-shadow:0 1px 3px #00000026}
.login label{display:block;margin:10px 0 4px}.login input{width:100%;box-sizing:border-box}
"""


def page(title: str, session: Session | None, body: str, message: str = "") -> str:
    nav = templates.get_template("nav.html").render(session=session) if session else ""
    note = ""
    if message:
        warn = " warning" if not message.startswith("done") else ""
        note = f'<div class="message{warn}" role="status">{escape(message)}</div>'
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · KSH finance</title>'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{style}</style></head>'
        f"<body><header><strong>KSH finance</strong>{nav}</header><main><h1>{escape(title)}</h1>{note}{body}</main></body></html>"
    )


def html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",
        },
    )


def hidden_csrf(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(session.csrf_token)}">'


def requested_day(request: web.Request, fallback: dt.date) -> dt.date:
    text = request.query.get("day", "")
    try:
        return dt.date.fromisoformat(text) if text else fallback
    except ValueError:
        raise web.HTTPBadRequest(text="day must be YYYY-MM-DD") from None


async def default_day(request: web.Request, connection: asyncpg.Connection) -> dt.date:
    latest = await connection.fetchval("select max(service_day) from settlement_batches")
    return latest or request.app[config_key].clock.today()


def day_picker(path: str, day: dt.date) -> str:
    return (
        f'<form class="inline" method="get" action="{path}"><label>Service day '
        f'<input type="date" name="day" value="{day.isoformat()}"></label>'
        '<button class="action secondary">Show</button></form>'
    )


# ---------------------------------------------------------------------------- login


async def login_form(request: web.Request) -> web.Response:
    token = secrets.token_urlsafe(24)
    next_path = request.query.get("next", "/finance")
    body = (
        '<form class="login" method="post" action="/finance/login">'
        f'<input type="hidden" name="csrf" value="{token}">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<label for="username">User name</label><input id="username" name="username" type="text" autocomplete="username" required>'
        '<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>'
        '<p><button class="action" type="submit">Log in</button></p></form>'
    )
    response = html(page("Log in", None, body, request.query.get("message", "")))
    response.set_cookie(
        login_csrf_cookie,
        token,
        httponly=True,
        samesite="Strict",
        secure=request.app[settings_key].secure_cookies,
        path="/finance",
    )
    return response


def back_to_login(message: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther("/finance/login?message=" + urllib.parse.quote(message))


async def login(request: web.Request) -> web.Response:
    form = await read_form(request, None)
    username = form.get("username", "").strip().lower()[: logins.subject_length_max]
    password = form.get("password", "")
    settings = request.app[settings_key]
    limits = settings.login_limits
    clock = request.app[config_key].clock
    address = client_address(request, settings.client_address_header)
    # Counted before the password is checked, in the database every process shares; the
    # connection goes back to the pool while the password is checked on a worker thread.
    async with request.app[pool_key].acquire() as connection:
        gate = await logins.open_gate(connection, username, address, now=clock.now(), limits=limits)
        row = None
        if gate is logins.Gate.open:
            row = await connection.fetchrow(
                "select password_hash from settlement_staff where username = $1", username
            )
    if gate is not logins.Gate.open:
        logger.warning(
            "login refused", extra={"username": username, "address": address, "gate": gate.value}
        )
        minutes = max(1, limits.window_seconds // 60)
        raise back_to_login(f"too many wrong passwords; try again in {minutes} minutes")
    stored = row["password_hash"] if row is not None else None
    valid = await request.app[password_checker_key].verify(password, stored)
    if row is None or not valid:
        logger.info("login failed", extra={"username": username, "address": address})
        raise back_to_login("wrong user name or password")
    now = clock.now()
    async with request.app[pool_key].acquire() as connection:
        await logins.login_succeeded(connection, username, address, now=now)
        session = await logins.open_session(connection, username, address, now=now)
    logger.info("login", extra={"username": username, "address": address})
    next_path = form.get("next", "/finance")
    if not next_path.startswith("/finance") or next_path.startswith("//"):
        next_path = "/finance"
    response = web.HTTPSeeOther(next_path)
    response.set_cookie(
        session_cookie,
        session.token,
        httponly=True,
        samesite="Strict",
        secure=settings.secure_cookies,
        path="/finance",
        max_age=logins.session_ttl_seconds,
    )
    response.del_cookie(login_csrf_cookie, path="/finance")
    raise response


async def logout(request: web.Request) -> web.Response:
    session = await require(request)
    await read_form(request, session)
    async with request.app[pool_key].acquire() as connection:
        await connection.execute(
            "delete from settlement_sessions where token_sha256 = $1",
            logins.session_digest(request.cookies[session_cookie]),
        )
    response = back_to_login("logged out")
    response.del_cookie(session_cookie, path="/finance")
    raise response


async def logout_everywhere(request: web.Request) -> web.Response:
    """End every session of the person asking (other browsers and devices too)."""
    session = await require(request)
    await read_form(request, session)
    async with request.app[pool_key].acquire() as connection:
        ended = await logins.end_sessions(
            connection,
            session.staff.username,
            by=session.staff.username,
            by_role=session.staff.role.value,
            reason="logged out everywhere",
            now=request.app[config_key].clock.now(),
        )
    response = back_to_login(f"logged out everywhere ({ended} sessions ended)")
    response.del_cookie(session_cookie, path="/finance")
    raise response


# ---------------------------------------------------------------------------- overview


async def overview(request: web.Request) -> web.Response:
    session = await require(request)
    settings = request.app[settings_key]
    async with request.app[pool_key].acquire() as connection:
        day = requested_day(request, await default_day(request, connection))
        numbers = await views.day_overview(connection, day, settings.end_of_day)
        hours = await views.taps_per_hour(connection, day, settings.end_of_day)
        corridors = await views.revenue_per_corridor(connection, day, settings.end_of_day)
        close = await actions.day_close(connection, day + dt.timedelta(days=1))
        held = await views.held_in_quarantine(connection, day, settings.end_of_day)
    still_held = held.total.rupiah.get("open", 0) + held.total.rupiah.get("asked", 0)
    tiles = [
        ("Taps", grouped(numbers.taps)),
        ("Fare revenue", rupiah(numbers.fare_revenue_rupiah)),
        ("Merchant sales", rupiah(numbers.sales_rupiah)),
        ("Top-ups received", rupiah(numbers.top_ups_rupiah)),
        ("Payouts", rupiah(numbers.payouts_rupiah)),
        ("Float (banks)", rupiah(numbers.float_rupiah)),
        ("Card liabilities", rupiah(numbers.card_liabilities_rupiah)),
        ("Float minus liabilities", rupiah(numbers.float_rupiah - numbers.card_liabilities_rupiah)),
        ("Open exceptions", grouped(numbers.exceptions_open)),
        ("Held in quarantine (unpaid)", rupiah(still_held)),
        ("Unexplained on statements", rupiah(close.unexplained_rupiah)),
    ]
    body = (
        day_picker("/finance", day)
        + '<h2>The day</h2><div class="cards">'
        + "".join(
            f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div></div>'
            for label, value in tiles
        )
        + "</div><h2>Charts</h2>"
    )
    body += charts.bar_chart("Taps per hour", hours, unit="taps")
    body += charts.bar_chart("Fare revenue per corridor (rupiah)", corridors, unit="rupiah")
    return html(
        page(f"Overview {day.isoformat()}", session, body, request.query.get("message", ""))
    )


# ---------------------------------------------------------------------------- batches


async def batches_page(request: web.Request) -> web.Response:
    session = await require(request)
    async with request.app[pool_key].acquire() as connection:
        day = requested_day(request, await default_day(request, connection))
        rows = await views.batches(connection, day)
        held = await views.held_in_quarantine(connection, day, request.app[settings_key].end_of_day)
    body = day_picker("/finance/batches", day)
    body += (
        f'<p><a href="/finance/batches.csv?day={day.isoformat()}">CSV</a> · '
        f'<a href="/finance/batches.pdf?day={day.isoformat()}">PDF report</a></p>'
    )
    body += "<table><thead><tr><th>Batch</th><th>Party</th><th>Paid to</th><th>Gross</th><th>Fees</th><th>Net</th><th>Attempts</th><th>On statement</th></tr></thead><tbody>"
    for row in rows:
        body += (
            f"<tr><td>{escape(row['batch_id'])}</td><td>{escape(row['party_kind'])} {escape(row['party_id'])}<br><small>{escape(row['name'] or '')}</small></td>"
            f"<td>{escape((row['bank_code'] or 'same bank') + ' ' + (row['account_no'] or '-'))}</td>"
            f'<td class="num">{rupiah(row["gross_rupiah"])}</td><td class="num">{rupiah(row["fees_rupiah"])}</td>'
            f'<td class="num">{rupiah(row["net_rupiah"])}</td><td>{escape(row["attempts"] or "not sent")}</td>'
            f"<td>{confirmed_badge if row['confirmed'] else in_transit_badge}</td></tr>"
        )
    if not rows:
        body += '<tr><td colspan="8">No settlement batches for this day.</td></tr>'
    body += "</tbody></table>"
    total = sum(row["net_rupiah"] for row in rows)
    body += f"<p>{len(rows)} batches, net {rupiah(total)}.</p>"
    # What the day's uploads held apart: in no batch until two supervisors release it.
    body += (
        '<h2>Held in quarantine</h2><pre class="held">' + escape("\n".join(held.lines())) + "</pre>"
    )
    return html(page(f"Settlement batches {day.isoformat()}", session, body))


confirmed_badge = '<span class="badge done">confirmed</span>'
in_transit_badge = '<span class="badge open">in transit</span>'

batch_columns = (
    "batch_id",
    "service_day",
    "party_kind",
    "party_id",
    "name",
    "bank_code",
    "account_no",
    "gross_rupiah",
    "fees_rupiah",
    "net_rupiah",
    "attempts",
    "confirmed",
)


async def batches_csv(request: web.Request) -> web.Response:
    await require(request)
    async with request.app[reporting_pool_key].acquire() as connection:
        day = requested_day(request, await default_day(request, connection))
        rows = await views.batches(connection, day)
    return csv_response(batch_columns, rows, f"settlement-{day.isoformat()}.csv")


def spreadsheet_safe(value: Any) -> Any:
    """Text a spreadsheet would run as a formula (bank narratives and names reach these files)
    is written with a leading apostrophe; numbers and dates stay as they are."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_response(
    columns: tuple[str, ...], rows: list[asyncpg.Record], file_name: str
) -> web.Response:
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([spreadsheet_safe(row[column]) for column in columns])
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{file_name}"'},
    )


async def batches_pdf(request: web.Request) -> web.Response:
    await require(request)
    async with request.app[reporting_pool_key].acquire() as connection:
        day = requested_day(request, await default_day(request, connection))
        rows = await views.batches(connection, day)
        held = await views.held_in_quarantine(connection, day, request.app[settings_key].end_of_day)
    from settlement.reports import batches_pdf_bytes

    return web.Response(
        body=batches_pdf_bytes(day, rows, held.lines()),
        content_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="settlement-{day.isoformat()}.pdf"'},
    )


# ---------------------------------------------------------------------------- exceptions


async def exceptions_page(request: web.Request) -> web.Response:
    session = await require(request)
    show_all = request.query.get("all") == "1"
    async with request.app[pool_key].acquire() as connection:
        rows = await views.exceptions(connection, open_only=not show_all)
        count = await views.exceptions_count(connection, open_only=not show_all)
        movements = await views.open_movements(connection)
    can_act = session.staff.role is not Role.auditor
    body = (
        '<p><a href="/finance/exceptions?all=1">Show resolved too</a> · <a href="/finance/exceptions.csv">CSV</a></p>'
        if not show_all
        else '<p><a href="/finance/exceptions">Open only</a> · <a href="/finance/exceptions.csv">CSV</a></p>'
    )
    body += "<table><thead><tr><th>Exception</th><th>Reason</th><th>Amount</th><th>Detail</th><th>State</th><th>Action</th></tr></thead><tbody>"
    for row in rows:
        source = (
            f"<br><small>{escape(row['source_file'])}:{row['source_line']}</small>"
            if row["source_file"]
            else ""
        )
        state = (
            f'<span class="badge done">{escape(row["resolution"])}</span><br><small>by {escape(row["resolved_by"] or "")}'
            f"{' approved by ' + escape(row['approved_by']) if row['approved_by'] and row['approved_by'] != row['resolved_by'] else ''}: {escape(row['resolution_note'] or '')}</small>"
            if row["resolved_at"]
            else '<span class="badge open">open</span>'
            + (
                f"<br><small>write-off requested by {escape(row['write_off_requested_by'])}: {escape(row['write_off_requested_note'] or '')}</small>"
                if row["write_off_requested_by"]
                else ""
            )
        )
        action = ""
        if can_act and row["resolved_at"] is None:
            action = exception_actions(session, row)
        body += (
            f'<tr data-exception="{escape(row["exception_id"])}"><td><small>{escape(row["exception_id"][:24])}</small>{source}</td>'
            f'<td>{escape(row["reason"])}</td><td class="num">{rupiah(row["amount_rupiah"])}</td>'
            f"<td>{escape(row['detail'])}</td><td>{state}</td><td>{action}</td></tr>"
        )
    if not rows:
        body += '<tr><td colspan="6">Nothing to work on.</td></tr>'
    body += "</tbody></table>"
    if count > len(rows):
        body += f'<p class="message warning">Showing the first {grouped(len(rows))} of {grouped(count)}; the CSV has them all.</p>'
    if can_act and movements:
        body += "<h2>Manual match</h2><p>Expected movements nothing matched yet; pick statement line keys (from an exception) and movement ids whose amounts agree.</p>"
        body += (
            '<form class="inline" method="post" action="/finance/match">'
            + hidden_csrf(session)
            + '<input type="text" name="line_keys" placeholder="line key(s), comma separated" size="40">'
            + '<input type="text" name="movement_ids" placeholder="movement id(s)" size="30">'
            + '<input type="text" name="note" placeholder="why" size="30"><button class="action">Match</button></form>'
        )
        body += "<table><thead><tr><th>Movement</th><th>Kind</th><th>Reference</th><th>Amount</th><th>Value date</th></tr></thead><tbody>"
        for movement in movements[:50]:
            body += (
                f"<tr><td><small>{escape(movement['movement_id'])}</small></td><td>{escape(movement['kind'])}</td>"
                f'<td>{escape(movement["reference"])}</td><td class="num">{rupiah(movement["amount_rupiah"])}</td><td>{movement["value_date"]}</td></tr>'
            )
        body += "</tbody></table>"
    return html(page("Exceptions", session, body, request.query.get("message", "")))


def exception_actions(session: Session, row: asyncpg.Record) -> str:
    exception_id = escape(row["exception_id"])
    forms = []

    def form(action: str, label: str, with_note: bool = True) -> str:
        note = (
            '<input type="text" name="note" placeholder="why" required size="18">'
            if with_note
            else ""
        )
        return (
            '<form class="inline" method="post" action="/finance/exceptions/action">'
            + hidden_csrf(session)
            + f'<input type="hidden" name="exception_id" value="{exception_id}">'
            + f'<input type="hidden" name="action" value="{action}">{note}<button class="action" name="do" value="{action}">{label}</button></form>'
        )

    if row["subject_kind"] == "line":
        requested_by = row["write_off_requested_by"]
        if requested_by and requested_by == session.staff.username:
            forms.append("<small>waiting for another supervisor to approve</small>")
        elif requested_by and session.staff.role is Role.supervisor:
            forms.append(form("approve", "Approve write-off", with_note=False))
        elif not requested_by:
            forms.append(form("write-off", "Write off to suspense"))
        if row["subject_id"]:
            forms.append(f"<small>line key {escape(row['subject_id'])}</small>")
    elif row["reason"] in ("payout_rejected", "no_beneficiary_account"):
        forms.append(form("reinitiate", "Re-initiate payout"))
    elif row["reason"] == "payout_unresolved":
        forms.append(form("ask-again", "Ask the bank again", with_note=False))
    return "".join(forms)


messages = {
    ActionResult.done: "done",
    ActionResult.awaiting_approval: "recorded: a supervisor must approve this write-off (above the limit), and not the person who asked",
    ActionResult.not_found: "nothing found to act on",
    ActionResult.already_resolved: "already resolved by someone else",
    ActionResult.not_allowed: "your role may not do this",
    ActionResult.note_required: "say why (a note is required)",
    ActionResult.wrong_kind: "this action does not apply to this exception",
    ActionResult.amounts_differ: "amounts differ: a manual match must balance exactly",
    ActionResult.same_person: "the approver must be someone other than the requester",
    ActionResult.attempt_outstanding: "another attempt of this payout was paid or may still pay: ask the bank about it first",
}


async def exception_action(request: web.Request) -> web.Response:
    session = await require(request, Role.clerk, Role.supervisor)
    form = await read_form(request, session)
    settings = request.app[settings_key]
    exception_id = form.get("exception_id", "")
    note = form.get("note", "")
    action = form.get("action", "")
    now = request.app[config_key].clock.local_now()
    async with request.app[pool_key].acquire() as connection:
        if action == "write-off":
            result = await actions.write_off(
                connection,
                exception_id,
                session.staff,
                note,
                now=now,
                limit_rupiah=settings.write_off_limit_rupiah,
            )
        elif action == "approve":
            result = await actions.approve_write_off(
                connection, exception_id, session.staff, now=now
            )
        elif action in ("reinitiate", "ask-again"):
            if settings.payer_factory is None:
                raise web.HTTPSeeOther(
                    "/finance/exceptions?message="
                    + urllib.parse.quote("no bank connection configured")
                )
            payer = settings.payer_factory(request.app[http_key])
            if action == "reinitiate":
                result = await actions.reinitiate_payout(
                    connection, exception_id, session.staff, note, payer, settings.end_of_day, now
                )
            else:
                result = await actions.ask_bank_again(
                    connection, exception_id, session.staff, payer, settings.end_of_day, now
                )
        else:
            raise web.HTTPBadRequest(text="unknown action")
    raise web.HTTPSeeOther("/finance/exceptions?message=" + urllib.parse.quote(messages[result]))


async def manual_match(request: web.Request) -> web.Response:
    session = await require(request, Role.clerk, Role.supervisor)
    form = await read_form(request, session)

    def split(text: str) -> list[str]:
        return [part.strip() for part in text.split(",") if part.strip()][:50]

    async with request.app[pool_key].acquire() as connection:
        result = await actions.manual_match(
            connection,
            split(form.get("line_keys", "")),
            split(form.get("movement_ids", "")),
            session.staff,
            form.get("note", ""),
            now=request.app[config_key].clock.now(),
        )
    raise web.HTTPSeeOther("/finance/exceptions?message=" + urllib.parse.quote(messages[result]))


exception_columns = (
    "exception_id",
    "subject_kind",
    "subject_id",
    "reason",
    "detail",
    "amount_rupiah",
    "service_day",
    "opened_at",
    "resolution",
    "resolved_by",
    "approved_by",
    "resolution_note",
    "resolution_transfer_id",
    "resolved_at",
)


async def exceptions_csv(request: web.Request) -> web.Response:
    await require(request)
    async with request.app[reporting_pool_key].acquire() as connection:
        rows = await views.exceptions(
            connection, open_only=False, rows_max=views.exceptions_export_rows_max
        )
    return csv_response(exception_columns, rows, "exceptions.csv")


# ---------------------------------------------------------------------------- cards


async def card_page(request: web.Request) -> web.Response:
    session = await require(request)
    number = request.query.get("number", "").strip()
    body = (
        '<form class="inline" method="get" action="/finance/cards"><label>Card number '
        f'<input type="text" name="number" value="{escape(number)}" inputmode="numeric" pattern="[0-9]{{1,20}}"></label>'
        '<button class="action">Look up</button></form>'
    )
    if number:
        if not number.isdigit() or len(number) > 20:
            body += '<p class="message warning">A card number is up to 20 digits.</p>'
        else:
            async with request.app[pool_key].acquire() as connection:
                story = await views.card_story(connection, number)
            body += card_section(story, number)
    return html(page("Card lookup", session, body))


def card_section(story: views.CardStory | None, number: str) -> str:
    return templates.get_template("card.html").render(story=story, number=number)


# ---------------------------------------------------------------------------- staff

staff_actions_shown_max = 50


async def staff_page(request: web.Request) -> web.Response:
    """Everyone: their own sessions and "log out everywhere". Supervisors and auditors: each
    staff member's open sessions and counted wrong passwords, and the staff actions log;
    supervisors also unlock user names and end other people's sessions."""
    session = await require(request)
    limits = request.app[settings_key].login_limits
    now = request.app[config_key].clock.now()
    can_read = session.staff.role in (Role.supervisor, Role.auditor)
    async with request.app[pool_key].acquire() as connection:
        members = await connection.fetch(
            """select u.username, u.role, count(s.token_sha256) as sessions
                 from settlement_staff u
                 left join settlement_sessions s on s.username = u.username and s.expires_at > $1
                group by 1, 2 order by 1""",
            now,
        )
        locks = await logins.lock_states(connection, now=now, limits=limits)
        recent = await connection.fetch(
            """select at, username, role, action, subject, reason from staff_actions
                order by action_id desc limit $1""",
            staff_actions_shown_max,
        )
    own = next(
        (int(row["sessions"]) for row in members if row["username"] == session.staff.username), 0
    )
    known = {row["username"] for row in members}
    body = templates.get_template("staff.html").render(
        session=session,
        own_sessions=own,
        can_read=can_read,
        can_manage=session.staff.role is Role.supervisor,
        members=members if can_read else [],
        locks=locks,
        others=[lock for name, lock in sorted(locks.items()) if name not in known],
        recent=recent if can_read else [],
    )
    return html(page("Staff", session, body, request.query.get("message", "")))


async def staff_form(request: web.Request) -> tuple[Session, str, str]:
    """A supervisor's form about another staff member: (session, user name, reason)."""
    session = await require(request, Role.supervisor)
    form = await read_form(request, session)
    username = form.get("username", "").strip().lower()
    reason = form.get("reason", "").strip()[:reason_length_max]
    if not username:
        raise web.HTTPBadRequest(text="username is required")
    if not reason:
        raise web.HTTPSeeOther(
            "/finance/staff?message=" + urllib.parse.quote(messages[ActionResult.note_required])
        )
    return session, username, reason


async def unlock_staff(request: web.Request) -> web.Response:
    session, username, reason = await staff_form(request)
    async with request.app[pool_key].acquire() as connection:
        cleared = await logins.unlock(
            connection,
            username,
            by=session.staff.username,
            by_role=session.staff.role.value,
            reason=reason,
            now=request.app[config_key].clock.now(),
        )
    message = f"done: {username} unlocked" if cleared else f"done: {username} was not locked"
    raise web.HTTPSeeOther("/finance/staff?message=" + urllib.parse.quote(message))


async def end_staff_sessions(request: web.Request) -> web.Response:
    session, username, reason = await staff_form(request)
    async with request.app[pool_key].acquire() as connection:
        ended = await logins.end_sessions(
            connection,
            username,
            by=session.staff.username,
            by_role=session.staff.role.value,
            reason=reason,
            now=request.app[config_key].clock.now(),
        )
    message = f"done: {ended} session(s) of {username} ended"
    raise web.HTTPSeeOther("/finance/staff?message=" + urllib.parse.quote(message))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
