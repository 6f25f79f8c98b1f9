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

Pages are Jinja2 templates (`settlement/templates/`, autoescaped) in the staff member's
language: Bahasa Indonesia by default, English as a choice (`settlement.i18n`).
"""

from __future__ import annotations

import datetime as dt
import gettext
import hmac
import io
import logging
import secrets
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web
from markupsafe import Markup

from gateways import staff as staff_tokens
from gateways.backoffice import Extension, config_key, pool_key, reporting_pool_key
from settlement import actions, charts, formatting, i18n, logins, views
from settlement.actions import ActionResult, Role, Staff
from settlement.end_of_day import EndOfDayConfig, PayoutPort
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


def N_(text: str) -> str:
    """Marks text for the catalog where it is defined; it is translated where it is shown."""
    return text


# Codes the pages show, in words (the code stays in the cell's title, as the exports have
# it); a code not listed here is shown as it is.
terms = {
    # staff roles; statement directions
    "clerk": N_("clerk"),
    "supervisor": N_("supervisor"),
    "auditor": N_("auditor"),
    "credit": N_("in (credit)"),
    "debit": N_("out (debit)"),
    # why an exception is open, and how it was resolved
    "duplicate_line": N_("line seen twice"),
    "amount_mismatch": N_("amount does not match"),
    "date_out_of_tolerance": N_("date too far off"),
    "unexpected_fee": N_("unexpected bank fee"),
    "unknown_reference": N_("unknown reference"),
    "missing_from_statement": N_("missing from the statement"),
    "no_beneficiary_account": N_("no bank account for the party"),
    "payout_rejected": N_("payout refused by the bank"),
    "payout_unresolved": N_("payout outcome unknown"),
    "matched": N_("matched"),
    "written_off": N_("written off to suspense"),
    "reinitiated": N_("paid again (new attempt)"),
    "confirmed": N_("confirmed by the bank"),
    # expected movements
    "collection": N_("collection"),
    "payout": N_("payout"),
    "fee": N_("bank fee"),
    # terminals' records and what the back office made of them
    "fare_debit": N_("fare"),
    "sale": N_("sale"),
    "refund": N_("refund"),
    "topup_credit": N_("top-up"),
    "denied": N_("denied"),
    "block": N_("blocked on the chip"),
    "booked": N_("booked"),
    "held": N_("held (in doubt)"),
    "void": N_("void"),
    "anomaly": N_("anomaly"),
    "quarantined": N_("quarantined"),
    # the deny list: why a card is on it, who put it there, what changed
    "lost": N_("lost"),
    "stolen": N_("stolen"),
    "damaged": N_("damaged"),
    "fraud": N_("fraud"),
    "counter_repeat": N_("counter repeated (cloned card?)"),
    "balance_mismatch": N_("balance does not add up"),
    "rule": N_("automatic rule"),
    "staff": N_("staff"),
    "added": N_("added"),
    "reviewed": N_("reviewed, kept"),
    "lift_requested": N_("lift asked"),
    "lifted": N_("lifted"),
    # what moves a cashier's drawer
    "pending_top_up": N_("cash top-up for a card"),
    "pass_sale": N_("pass sold"),
    # refunds of pending top-ups no card took
    "due": N_("due at the counter"),
    "sending": N_("sending to the bank"),
    "paid": N_("paid to the payer's account"),
    "paid_cash": N_("paid at the counter"),
}


def translator(request: web.Request) -> gettext.NullTranslations:
    return i18n.translations("settlement", i18n.language_of(request))


def render(request: web.Request, template: str, **values: Any) -> Markup:
    """A template in the language of the person asking."""
    _ = translator(request).gettext
    env = i18n.environment("settlement", i18n.language_of(request))
    return Markup(
        env.get_template(template).render(
            term=lambda code: _(terms[code]) if code in terms else code,
            **values,
        )
    )


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
    and `password_checks_concurrent_max` (what `ksh serve` passes)."""
    configured = values.get("settlement_pages")
    if isinstance(configured, PagesSettings):
        return configured
    default = PagesSettings()
    return PagesSettings(
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
            web.get("/finance/language", i18n.language_switch),
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
        _ = translator(request).gettext
        raise web.HTTPForbidden(
            text=page(
                request,
                _("Not allowed"),
                session,
                Markup("<p>%s</p>") % _("Your role may not do this."),
            ),
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
            text=translator(request).gettext("CSRF token missing or wrong; reload the page"),
            content_type="text/plain",
        )
    return values


# ---------------------------------------------------------------------------- layout

style = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#111827;background:#f3f4f6}
header{background:#0f3d91;color:#fff;padding:10px 24px;display:flex;align-items:center;gap:24px}
header a{color:#dbeafe;text-decoration:none;font-weight:500}header a:hover{color:#fff}
header .who{margin-left:auto;font-size:14px}header form{display:inline}
header .languages{display:flex;gap:10px;font-size:14px}header .languages b{color:#fff}
form[data-form=manual-match] h3{font-size:15px;margin:16px 0 6px}
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


def page(
    request: web.Request,
    title: str,
    session: Session | None,
    body: Markup,
    message: str = "",
    ok: bool = False,
) -> str:
    return render(
        request,
        "layout.html",
        title=title,
        session=session,
        body=body,
        message=message,
        ok=ok,
        style=Markup(style),
        here=request.path_qs if request.method == "GET" else "/finance",  # where a switch returns
    )


def with_message(path: str, message: str, ok: bool) -> web.HTTPSeeOther:
    """Back to a page that shows `message` (already in the reader's language)."""
    query = {"message": message} | ({"ok": "1"} if ok else {})
    return web.HTTPSeeOther(
        path + "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    )


def shown_message(request: web.Request) -> dict[str, Any]:
    return {"message": request.query.get("message", ""), "ok": request.query.get("ok") == "1"}


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


def requested_day(request: web.Request, fallback: dt.date) -> dt.date:
    text = request.query.get("day", "")
    try:
        return dt.date.fromisoformat(text) if text else fallback
    except ValueError:
        raise web.HTTPBadRequest(
            text=translator(request).gettext("day must be YYYY-MM-DD")
        ) from None


async def default_day(request: web.Request, connection: asyncpg.Connection) -> dt.date:
    latest = await connection.fetchval("select max(service_day) from settlement_batches")
    return latest or request.app[config_key].clock.today()


# ---------------------------------------------------------------------------- login


async def login_form(request: web.Request) -> web.Response:
    token = secrets.token_urlsafe(24)
    next_path = request.query.get("next", "/finance")
    body = render(request, "login.html", token=token, next_path=next_path)
    title = translator(request).gettext("Log in")
    response = html(page(request, title, None, body, **shown_message(request)))
    response.set_cookie(
        login_csrf_cookie,
        token,
        httponly=True,
        samesite="Strict",
        secure=request.app[settings_key].secure_cookies,
        path="/finance",
    )
    return response


def back_to_login(message: str, ok: bool = False) -> web.HTTPSeeOther:
    return with_message("/finance/login", message, ok)


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
    _ = translator(request).gettext
    if gate is not logins.Gate.open:
        logger.warning(
            "login refused", extra={"username": username, "address": address, "gate": gate.value}
        )
        minutes = max(1, limits.window_seconds // 60)
        raise back_to_login(
            _("too many wrong passwords; try again in %(minutes)s minutes") % {"minutes": minutes}
        )
    stored = row["password_hash"] if row is not None else None
    valid = await request.app[password_checker_key].verify(password, stored)
    if row is None or not valid:
        logger.info("login failed", extra={"username": username, "address": address})
        raise back_to_login(_("wrong user name or password"))
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
    response = back_to_login(translator(request).gettext("logged out"), ok=True)
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
    response = back_to_login(
        translator(request).gettext("logged out everywhere (%(ended)s sessions ended)")
        % {"ended": ended},
        ok=True,
    )
    response.del_cookie(session_cookie, path="/finance")
    raise response


# ---------------------------------------------------------------------------- overview


async def overview(request: web.Request) -> web.Response:
    session = await require(request)
    settings = request.app[settings_key]
    _ = translator(request).gettext
    language = i18n.language_of(request)
    async with request.app[pool_key].acquire() as connection:
        day = requested_day(request, await default_day(request, connection))
        numbers = await views.day_overview(connection, day, settings.end_of_day)
        payees = await views.payee_days(connection, day, settings.end_of_day)
        close = await actions.day_close(connection, day + dt.timedelta(days=1))
        held = await views.held_in_quarantine(connection, day, settings.end_of_day)
    still_held = held.total.rupiah.get("open", 0) + held.total.rupiah.get("asked", 0)

    def money(amount: int) -> str:
        return formatting.rupiah(amount, language)

    tiles = [
        ("taps", _("Taps"), formatting.grouped(numbers.taps, language)),
        ("fare-revenue", _("Fare revenue"), money(numbers.fare_revenue_rupiah)),
        ("sales", _("Merchant sales"), money(numbers.sales_rupiah)),
        ("top-ups", _("Top-ups received"), money(numbers.top_ups_rupiah)),
        ("payouts", _("Payouts"), money(numbers.payouts_rupiah)),
        ("float", _("Float (banks)"), money(numbers.float_rupiah)),
        ("liabilities", _("Card liabilities"), money(numbers.card_liabilities_rupiah)),
        (
            "float-minus-liabilities",
            _("Float minus liabilities"),
            money(numbers.float_rupiah - numbers.card_liabilities_rupiah),
        ),
        ("exceptions", _("Open exceptions"), formatting.grouped(numbers.exceptions_open, language)),
        ("held", _("Held in quarantine (unpaid)"), money(still_held)),
        ("unexplained", _("Unexplained on statements"), money(close.unexplained_rupiah)),
    ]
    empty = _("no data for this day")
    body = render(
        request,
        "overview.html",
        path="/finance",
        day=day,
        tiles=tiles,
        payees=payees,
        taps_chart=Markup(
            charts.bar_chart(
                _("Taps per hour"),
                numbers.fares.per_hour,
                unit=_("taps"),
                empty=empty,
                language=language,
            )
        ),
        corridors_chart=Markup(
            charts.bar_chart(
                _("Fare revenue per corridor (rupiah)"),
                numbers.fares.per_corridor,
                unit="rupiah",
                empty=empty,
                language=language,
            )
        ),
    )
    title = _("Overview %(day)s") % {"day": formatting.day(day, language)}
    return html(page(request, title, session, body, **shown_message(request)))


# ---------------------------------------------------------------------------- batches


async def batches_page(request: web.Request) -> web.Response:
    session = await require(request)
    async with request.app[pool_key].acquire() as connection:
        day = requested_day(request, await default_day(request, connection))
        rows = await views.batches(connection, day)
        held = await views.held_in_quarantine(connection, day, request.app[settings_key].end_of_day)
    body = render(
        request,
        "batches.html",
        path="/finance/batches",
        day=day,
        rows=rows,
        total=sum(row["net_rupiah"] for row in rows),
        held_lines=held.lines(),
    )
    title = translator(request).gettext("Settlement batches %(day)s") % {
        "day": formatting.day(day, i18n.language_of(request))
    }
    return html(page(request, title, session, body))


# Exported columns and their headings (translated when the file is made).
batch_columns = (
    ("batch_id", N_("Batch")),
    ("service_day", N_("Service day")),
    ("party_kind", N_("Party kind")),
    ("party_id", N_("Party")),
    ("name", N_("Name")),
    ("bank_code", N_("Bank code")),
    ("account_no", N_("Account number")),
    ("gross_rupiah", N_("Gross (rupiah)")),
    ("fees_rupiah", N_("Fees (rupiah)")),
    ("net_rupiah", N_("Net (rupiah)")),
    ("attempts", N_("Attempts")),
    ("confirmed", N_("Confirmed by statement")),
)


async def batches_csv(request: web.Request) -> web.Response:
    await require(request)
    async with request.app[reporting_pool_key].acquire() as connection:
        day = requested_day(request, await default_day(request, connection))
        rows = await views.batches(connection, day)
    return csv_response(
        batch_columns, rows, f"settlement-{day.isoformat()}.csv", translator(request).gettext
    )


def spreadsheet_safe(value: Any) -> Any:
    """Text a spreadsheet would run as a formula (bank narratives and names reach these files)
    is written with a leading apostrophe; numbers and dates stay as they are."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_response(
    columns: tuple[tuple[str, str], ...],
    rows: list[asyncpg.Record],
    file_name: str,
    translate: Callable[[str], str] = str,
) -> web.Response:
    """`columns`: (column, heading) pairs; the heading row in the reader's language."""
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([translate(heading) for _, heading in columns])
    for row in rows:
        writer.writerow([spreadsheet_safe(row[column]) for column, _ in columns])
    return web.Response(
        text=out.getvalue(),
        content_type="text/csv",
        charset="utf-8",
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
        body=batches_pdf_bytes(day, rows, i18n.language_of(request), held.lines()),
        content_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="settlement-{day.isoformat()}.pdf"'},
    )


# ---------------------------------------------------------------------------- exceptions


async def exceptions_page(request: web.Request) -> web.Response:
    session = await require(request)
    show_all = request.query.get("all") == "1"
    can_act = session.staff.role is not Role.auditor
    async with request.app[pool_key].acquire() as connection:
        rows = await views.exceptions(connection, open_only=not show_all)
        count = await views.exceptions_count(connection, open_only=not show_all)
        lines = await views.open_lines(connection) if can_act else []
        movements = await views.open_movements(connection) if can_act else []
    body = render(
        request,
        "exceptions.html",
        session=session,
        show_all=show_all,
        rows=rows,
        count=count,
        can_act=can_act,
        is_supervisor=session.staff.role is Role.supervisor,
        lines=lines,
        movements=movements,
        picked_lines=set(request.query.getall("line_keys", [])),
        picked_movements=set(request.query.getall("movement_ids", [])),
    )
    title = translator(request).gettext("Exceptions")
    return html(page(request, title, session, body, **shown_message(request)))


messages = {
    ActionResult.done: N_("done"),
    ActionResult.awaiting_approval: N_(
        "recorded: a supervisor must approve this write-off (above the limit), and not the person who asked"
    ),
    ActionResult.not_found: N_("nothing found to act on"),
    ActionResult.already_resolved: N_("already resolved by someone else"),
    ActionResult.not_allowed: N_("your role may not do this"),
    ActionResult.note_required: N_("say why (a note is required)"),
    ActionResult.wrong_kind: N_("this action does not apply to this exception"),
    ActionResult.amounts_differ: N_("amounts differ: a manual match must balance exactly"),
    ActionResult.same_person: N_("the approver must be someone other than the requester"),
    ActionResult.attempt_outstanding: N_(
        "another attempt of this payout was paid or may still pay: ask the bank about it first"
    ),
}


def result_message(request: web.Request, path: str, result: ActionResult) -> web.HTTPSeeOther:
    message = translator(request).gettext(messages[result])
    return with_message(path, message, ok=result is ActionResult.done)


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
            )
        elif action == "approve":
            result = await actions.approve_write_off(
                connection, exception_id, session.staff, now=now
            )
        elif action in ("reinitiate", "ask-again"):
            if settings.payer_factory is None:
                message = translator(request).gettext("no bank connection configured")
                raise with_message("/finance/exceptions", message, ok=False)
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
            raise web.HTTPBadRequest(text=translator(request).gettext("unknown action"))
    raise result_message(request, "/finance/exceptions", result)


picked_max = 50  # lines or movements in one manual match


def match_problem(request: web.Request, preview: actions.MatchPreview) -> str:
    """Why these cannot be matched, in words; for amounts, by how much and which side is more."""
    _ = translator(request).gettext
    assert preview.problem is not None
    if preview.problem is ActionResult.not_found:
        return _("pick at least one statement line and one expected movement")
    if preview.problem is ActionResult.already_resolved:
        return _("one of these was matched or written off meanwhile; pick again")
    if preview.problem is ActionResult.wrong_kind:
        return _("the lines and movements must be of one account and one direction (in or out)")
    if preview.problem is ActionResult.amounts_differ:
        language = i18n.language_of(request)
        difference = formatting.rupiah(abs(preview.difference_rupiah), language)
        if preview.difference_rupiah > 0:
            return _("amounts differ by %(difference)s: the statement lines are more") % {
                "difference": difference
            }
        return _("amounts differ by %(difference)s: the expected movements are more") % {
            "difference": difference
        }
    return _(messages[preview.problem])


async def manual_match(request: web.Request) -> web.Response:
    """Two steps from the picking lists: `review` shows the picked lines and movements with
    their totals (and what is wrong, changing nothing); `confirm` (with a note) matches them."""
    session = await require(request, Role.clerk, Role.supervisor)
    form = await read_form(request, session)
    posted = await request.post()  # read_form read it already: the lists' many values
    line_keys = [str(key) for key in posted.getall("line_keys", [])][:picked_max]
    movement_ids = [str(key) for key in posted.getall("movement_ids", [])][:picked_max]
    async with request.app[pool_key].acquire() as connection:
        if form.get("step") == "confirm":
            result = await actions.manual_match(
                connection,
                line_keys,
                movement_ids,
                session.staff,
                form.get("note", ""),
                now=request.app[config_key].clock.now(),
            )
            if result is not ActionResult.amounts_differ:
                raise result_message(request, "/finance/exceptions", result)
        preview = await actions.preview_match(connection, line_keys, movement_ids)
    _ = translator(request).gettext
    back = "/finance/exceptions?" + urllib.parse.urlencode(
        [("line_keys", key) for key in line_keys] + [("movement_ids", key) for key in movement_ids]
    )
    message = match_problem(request, preview) if preview.problem else ""
    body = render(request, "match_review.html", session=session, preview=preview, back=back)
    return html(page(request, _("Check the manual match"), session, body, message))


exception_columns = (
    ("exception_id", N_("Exception")),
    ("subject_kind", N_("Subject kind")),
    ("subject_id", N_("Subject")),
    ("reason", N_("Reason")),
    ("detail", N_("Detail")),
    ("amount_rupiah", N_("Amount (rupiah)")),
    ("service_day", N_("Service day")),
    ("opened_at", N_("Opened at")),
    ("resolution", N_("Resolution")),
    ("resolved_by", N_("Resolved by")),
    ("approved_by", N_("Approved by")),
    ("resolution_note", N_("Resolution note")),
    ("resolution_transfer_id", N_("Resolution transfer")),
    ("resolved_at", N_("Resolved at")),
)


async def exceptions_csv(request: web.Request) -> web.Response:
    await require(request)
    async with request.app[reporting_pool_key].acquire() as connection:
        rows = await views.exceptions(
            connection, open_only=False, rows_max=views.exceptions_export_rows_max
        )
    return csv_response(exception_columns, rows, "exceptions.csv", translator(request).gettext)


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
    body = render(
        request,
        "staff.html",
        session=session,
        own_sessions=own,
        can_read=can_read,
        can_manage=session.staff.role is Role.supervisor,
        members=members if can_read else [],
        locks=locks,
        others=[lock for name, lock in sorted(locks.items()) if name not in known],
        recent=recent if can_read else [],
    )
    title = translator(request).gettext("Staff")
    return html(page(request, title, session, body, **shown_message(request)))


async def staff_form(request: web.Request) -> tuple[Session, str, str]:
    """A supervisor's form about another staff member: (session, user name, reason)."""
    session = await require(request, Role.supervisor)
    form = await read_form(request, session)
    username = form.get("username", "").strip().lower()
    reason = form.get("reason", "").strip()[:reason_length_max]
    if not username:
        raise web.HTTPBadRequest(text=translator(request).gettext("username is required"))
    if not reason:
        raise result_message(request, "/finance/staff", ActionResult.note_required)
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
    _ = translator(request).gettext
    message = _("done: %(name)s unlocked") if cleared else _("done: %(name)s was not locked")
    raise with_message("/finance/staff", message % {"name": username}, ok=True)


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
    message = translator(request).gettext("done: %(ended)s session(s) of %(name)s ended")
    raise with_message("/finance/staff", message % {"ended": ended, "name": username}, ok=True)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
