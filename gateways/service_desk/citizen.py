"""The public card page: a citizen types the card number and the check code printed on the card
(`gateways.service_desk.check_codes`) and sees what the back office knows of it: the balance in
the books, the last 10 card transactions, value waiting for the card (pending top-ups, refunds
among them), their complaints' state, and how to complain; or complains on the web.

    GET  /kartu                  the form (Bahasa Indonesia; ?lang=en for English)
    POST /kartu                  the card (form fields card_number, check_code, lang)
    POST /kartu/keluhan          a complaint from the web (the same two fields, description, taps)
    POST /kartu/v1/card          the card as JSON ({"card_number", "check_code"})

No login, so: no personal data (no name, no ID number, no complaint's text), the same answer
for an unknown card and a wrong code, and at most `citizen_lookups_max` lookups per client
address in `citizen_window_s` (counted in the database, by the business clock, for every
process together), then 429 with Retry-After. The client address is the connection's peer, or
the last entry of the proxy header `client_address_header` names (as for staff logins).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import jinja2
from aiohttp import web

from gateways import observability
from gateways.backoffice import Problem, config_key, pool_key
from gateways.service_desk import check_codes, complaints
from gateways.terminal_api import books, passes, registry
from ledger.clock import jakarta

citizen_lookups_max_default = 20
citizen_window_s_default = 900
transactions_shown = 10
pending_shown_max = 20
complaints_shown_max = 10
form_body_bytes_max = 8 * 1024
address_length_max = 100
shown_kinds = ("fare_debit", "sale", "refund", "topup_credit")
web_complainant = "web"  # `received_by` of a complaint made on this page

templates = jinja2.Environment(
    loader=jinja2.PackageLoader("gateways.service_desk", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)

# The page's words: written in English as gettext message ids (`_("...")` in the template),
# shown in Bahasa Indonesia unless the reader asks for English. When the pages take a Babel
# catalogue, these move into its Indonesian .po file.
indonesian = {
    "Your KSH card": "Kartu KSH Anda",
    "Card number": "Nomor kartu",
    "Check code (printed on the card)": "Kode cek (tercetak di kartu)",
    "Show my card": "Lihat kartu saya",
    "No card with this number and check code.": "Tidak ada kartu dengan nomor dan kode cek ini.",
    "Too many lookups from your address; try again later.": (
        "Terlalu banyak pencarian dari alamat Anda; coba lagi nanti."
    ),
    "Balance in our books": "Saldo menurut catatan kami",
    "The card itself may show less if its last taps have not reached us yet.": (
        "Kartu bisa menunjukkan saldo lain jika transaksi terakhirnya belum sampai ke kami."
    ),
    "Waiting for your card": "Menunggu kartu Anda",
    "Written to the card at its next tap on a bus validator.": (
        "Dimasukkan ke kartu saat tap berikutnya di validator bus."
    ),
    "Nothing is waiting.": "Tidak ada yang menunggu.",
    "Passes": "Tiket berlangganan",
    "None.": "Tidak ada.",
    "Pass": "Tiket",
    "Bought": "Dibeli",
    "Valid until": "Berlaku sampai",
    "At your next tap on a bus validator": "Pada tap berikutnya di validator bus",
    "Last transactions": "Transaksi terakhir",
    "No transactions yet.": "Belum ada transaksi.",
    "Time (WIB)": "Waktu (WIB)",
    "What": "Jenis",
    "Amount": "Jumlah",
    "Top-up": "Isi ulang",
    "Balance after": "Saldo setelah",
    "Where": "Tempat",
    "Your complaints": "Keluhan Anda",
    "Number": "Nomor",
    "State": "Status",
    "Answer due": "Batas jawaban",
    "How to complain": "Cara menyampaikan keluhan",
    "complain_how": (
        "Setiap keluhan dijawab dalam 10 hari. Sampaikan di loket layanan Trans Semarang, "
        "lewat telepon layanan, di aplikasi Lapor Hendi, atau dengan formulir di bawah ini. "
        "Sebutkan nomor kartu dan transaksi yang dimaksud."
    ),
    "Complain here": "Sampaikan keluhan di sini",
    "What happened": "Apa yang terjadi",
    "The transactions it is about": "Transaksi yang dimaksud",
    "Send complaint": "Kirim keluhan",
    "complaint_taken": "Keluhan Anda diterima dengan nomor {number}; jawaban paling lambat {due}.",
    "Fare": "Ongkos",
    "Purchase": "Belanja",
    "Refund": "Pengembalian",
    "received": "diterima",
    "investigating": "sedang diperiksa",
    "resolved_refund": "selesai, dana dikembalikan",
    "resolved_no_refund": "selesai",
    "rejected": "ditolak",
    "card_blocked": (
        "Kartu ini diblokir (hilang, dicuri atau rusak). Tanyakan di loket layanan untuk "
        "menggantinya atau membuka blokirnya."
    ),
    "We never show names or personal data here.": (
        "Kami tidak pernah menampilkan nama atau data pribadi di sini."
    ),
    "English": "English",
    "Bahasa Indonesia": "Bahasa Indonesia",
}
english = {
    "complain_how": (
        "Every complaint is answered within 10 days. Complain at a Trans Semarang service "
        "counter, by the service phone, in the Lapor Hendi app, or with the form below. Name "
        "the card and the transactions it is about."
    ),
    "complaint_taken": "Your complaint is number {number}; it will be answered by {due}.",
    "card_blocked": (
        "This card is blocked (lost, stolen or damaged). Ask at a service counter to replace "
        "it or to unblock it."
    ),
    "topup_credit": "Top-up",
    "received": "received",
    "investigating": "being looked into",
    "resolved_refund": "answered, money given back",
    "resolved_no_refund": "answered",
    "rejected": "rejected",
}
kind_words = {
    "fare_debit": "Fare",
    "sale": "Purchase",
    "refund": "Refund",
    "topup_credit": "Top-up",
}


def gettext_for(language: str) -> Callable[[str], str]:
    catalogue = english if language == "en" else indonesian

    def gettext(message: str) -> str:
        return catalogue.get(message, message)

    return gettext


# ------------------------------------------------------------------------------ the card


@dataclass(frozen=True, slots=True)
class CitizenCard:
    """What the page shows of a card: nothing personal."""

    card_number: str
    balance_rupiah: int
    pending: tuple[tuple[int, dt.datetime], ...]  # (amount, since) of each open top-up
    passes: tuple[passes.PassOnCard, ...]  # waiting for the next tap, or running
    transactions: tuple[complaints.HistoryRecord, ...]
    complaints: tuple[complaints.Complaint, ...]
    # Blocked by staff for good (lost, stolen, damaged: terminals write it on the chip), or
    # blocked on its chip and not active since.
    blocked: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "card_number": self.card_number,
            "balance_rupiah": self.balance_rupiah,
            "pending_top_ups": [
                {"amount_rupiah": amount, "since": since.isoformat()}
                for amount, since in self.pending
            ],
            "pending_top_ups_rupiah": sum(amount for amount, _ in self.pending),
            "blocked": self.blocked,
            "passes": [
                {
                    "fare_pass_id": held.fare_pass_id,
                    "sold_on": held.sold_on.isoformat(),
                    "activated_on": held.activated_on and held.activated_on.isoformat(),
                    "valid_until": held.last_day and held.last_day.isoformat(),
                }
                for held in self.passes
            ],
            "transactions": [
                {
                    "time": wib(record.time_ms),
                    "kind": record.kind,
                    "amount_rupiah": record.amount_rupiah,
                    "top_up_rupiah": record.topup_rupiah,
                    "balance_after_rupiah": record.balance_after_rupiah,
                    "where": record.route or record.merchant_id,
                }
                for record in self.transactions
            ],
            "complaints": [
                {
                    "complaint_id": complaint.complaint_id,
                    "state": complaint.state.value,
                    "due_on": complaint.due_on.isoformat(),
                }
                for complaint in self.complaints
            ],
            "how_to_complain": {
                "id": indonesian["complain_how"],
                "en": english["complain_how"],
            },
        }


def wib(time_ms: int) -> str:
    return dt.datetime.fromtimestamp(time_ms / 1000, jakarta).strftime("%Y-%m-%d %H:%M")


async def citizen_card(
    connection: asyncpg.Connection, card_number: str, check_code: str, *, now: dt.datetime
) -> CitizenCard | None:
    """The card, when the check code is its own; None otherwise (unknown card or wrong code,
    alike)."""
    if not (card_number.isascii() and card_number.isdigit()) or len(card_number) > 20:
        return None
    secret = await check_codes.check_code_secret(connection)
    if not check_codes.matches(secret, card_number, check_code):
        return None
    known = await connection.fetchval("select 1 from cards where card_number = $1", card_number)
    if known is None:
        return None
    purse = await books.balances(connection, [registry.purse_account_id(card_number)])
    balance = purse.get(registry.purse_account_id(card_number))
    pending = await connection.fetch(
        "select amount_rupiah, created_at from pending_top_ups where card_number = $1 "
        "and taken_terminal_id is null order by created_at limit $2",
        card_number,
        pending_shown_max,
    )
    today = complaints.local_day(now)
    tariff = await passes.sale_tariff(connection, now)
    held = passes.passes_on_card(await passes.passes_of(connection, card_number), tariff)
    history = await complaints.card_history(connection, card_number, complaints.history_rows_max)
    shown = [
        record
        for record in history
        if record.kind in shown_kinds and record.outcome not in ("void", "denied")
    ]
    filed = await complaints.complaints(
        connection, today=today, card_number=card_number, limit=complaints_shown_max
    )
    return CitizenCard(
        card_number,
        balance.credit_balance if balance else 0,
        tuple((int(row["amount_rupiah"]), row["created_at"]) for row in pending),
        tuple(p for p in held if p.last_day is None or p.last_day >= today),
        tuple(shown[:transactions_shown]),
        tuple(filed),
        await blocked(connection, card_number),
    )


async def blocked(connection: asyncpg.Connection, card_number: str) -> bool:
    """On the chip-block list, or blocked on its chip and not active since."""
    if await connection.fetchval(
        "select 1 from deny_list d where d.card_number = $1 and " + registry.chip_block_condition,
        card_number,
    ):
        return True
    block = await registry.chip_block_of(connection, card_number)
    return block is not None and block["active_again_counter"] is None


# ------------------------------------------------------------------------------ the limit


def client_address(request: web.Request) -> str:
    """Who is asking: the last entry of the configured proxy header, else the peer."""
    header = str(request.app[config_key].settings.get("client_address_header", ""))
    if header:
        last = request.headers.get(header, "").rsplit(",", 1)[-1].strip()
        if last:
            return last[:address_length_max]
    return (request.remote or "unknown")[:address_length_max]


async def count_lookup(request: web.Request, connection: asyncpg.Connection) -> int:
    """Count this lookup against its address; 0 when allowed, else the seconds until the
    address's window ends (the answer's Retry-After)."""
    settings = request.app[config_key].settings
    lookups_max = int(settings.get("citizen_lookups_max", citizen_lookups_max_default))
    window_s = int(settings.get("citizen_window_s", citizen_window_s_default))
    now = request.app[config_key].clock.now()
    # Windows that ended count for nothing: dropped, so the table holds the active ones only.
    await connection.execute(
        "delete from citizen_lookups where window_started_at <= $1",
        now - dt.timedelta(seconds=window_s),
    )
    row = await connection.fetchrow(
        """insert into citizen_lookups as l (address, window_started_at, lookups)
           values ($1, $2, 1)
           on conflict (address) do update set
               window_started_at = case when l.window_started_at <= $3
                                        then excluded.window_started_at
                                        else l.window_started_at end,
               lookups = case when l.window_started_at <= $3 then 1 else l.lookups + 1 end
           returning window_started_at, lookups""",
        client_address(request),
        now,
        now - dt.timedelta(seconds=window_s),
    )
    if row["lookups"] <= lookups_max:
        return 0
    ends = row["window_started_at"] + dt.timedelta(seconds=window_s)
    return max(1, math.ceil((ends - now).total_seconds()))


# ------------------------------------------------------------------------------ HTTP


def install(app: web.Application) -> None:
    """Mount the public card page and the complaints gauges on `/metrics`."""
    observability.install(app)
    app[observability.metric_sources_key].append(complaint_metrics)
    app.router.add_get("/kartu", form_page)
    app.router.add_post("/kartu", card_page)
    app.router.add_post("/kartu/keluhan", web_complaint)
    app.router.add_post("/kartu/v1/card", card_json)


def language_of(values: Any) -> str:
    return "en" if values.get("lang", "") == "en" else "id"


def render(language: str, status: int = 200, **values: Any) -> web.Response:
    shown: dict[str, Any] = {"card": None, "message": "", "card_number": "", "check_code": ""}
    text = templates.get_template("citizen.html").render(
        _=gettext_for(language),
        lang=language,
        kind_words=kind_words,
        wib=wib,
        local_day=complaints.local_day,
        rupiah=lambda amount: f"Rp {amount:,}".replace(",", "."),
        **{**shown, **values},
    )
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
            "form-action 'self'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Cache-Control": "no-store",
        },
    )


async def form_page(request: web.Request) -> web.Response:
    return render(language_of(request.query))


async def read_form(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > form_body_bytes_max:
        raise web.HTTPRequestEntityTooLarge(
            max_size=form_body_bytes_max, actual_size=request.content_length
        )
    form = await request.post()
    return {
        "card_number": str(form.get("card_number", "")).strip().replace(" ", ""),
        "check_code": str(form.get("check_code", "")).strip(),
        "lang": str(form.get("lang", "")),
        "description": str(form.get("description", "")),
        "taps": [str(value) for value in form.getall("tap", [])],
    }


async def looked_up(
    request: web.Request, connection: asyncpg.Connection, number: str, code: str
) -> CitizenCard | int | None:
    """The card; or the seconds to wait (too many lookups); or None (no such card)."""
    wait_s = await count_lookup(request, connection)
    if wait_s:
        return wait_s
    return await citizen_card(connection, number, code, now=request.app[config_key].clock.now())


def refused(language: str, wait_s: int | None, card_number: str) -> web.Response:
    """No card to show: none with this number and code (404), or too many lookups (429)."""
    gettext = gettext_for(language)
    if wait_s is None:
        message = gettext("No card with this number and check code.")
        return render(language, 404, message=message, card_number=card_number)
    message = gettext("Too many lookups from your address; try again later.")
    response = render(language, 429, message=message)
    response.headers["Retry-After"] = str(wait_s)
    return response


async def card_page(request: web.Request) -> web.Response:
    form = await read_form(request)
    language = language_of(form)
    async with request.app[pool_key].acquire() as connection:
        found = await looked_up(request, connection, form["card_number"], form["check_code"])
    if found is None or isinstance(found, int):
        return refused(language, found, form["card_number"])
    return render(
        language, card=found, card_number=found.card_number, check_code=form["check_code"]
    )


async def web_complaint(request: web.Request) -> web.Response:
    """A complaint from the page: counted as a lookup, checked like one, taken on the card's
    own transactions (`terminal_id/sequence` values of its history)."""
    form = await read_form(request)
    language = language_of(form)
    gettext = gettext_for(language)
    taps = []
    for value in form["taps"][: complaints.taps_per_complaint_max]:
        terminal_id, _, sequence = value.rpartition("/")
        if sequence.isdigit():
            taps.append(complaints.TapRef(terminal_id, int(sequence)))
    async with request.app[pool_key].acquire() as connection:
        found = await looked_up(request, connection, form["card_number"], form["check_code"])
        if found is None or isinstance(found, int):
            return refused(language, found, form["card_number"])
        try:
            complaint_id = await complaints.add_complaint(
                connection,
                card_number=found.card_number,
                channel=complaints.Channel.web,
                description=form["description"],
                taps=taps,
                received_by=web_complainant,
                now=request.app[config_key].clock.now(),
            )
        except complaints.ComplaintError as error:
            return render(
                language,
                400,
                card=found,
                card_number=found.card_number,
                check_code=form["check_code"],
                message=str(error),
            )
        now = request.app[config_key].clock.now()
        card = await citizen_card(connection, found.card_number, form["check_code"], now=now)
    due = complaints.due_on(request.app[config_key].clock.now())
    return render(
        language,
        card=card,
        card_number=found.card_number,
        check_code=form["check_code"],
        message=gettext("complaint_taken").format(number=complaint_id, due=due.isoformat()),
    )


async def card_json(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > form_body_bytes_max:
        raise Problem(413, "body_too_large", f"a lookup is at most {form_body_bytes_max} bytes")
    body = await request.json()
    if not isinstance(body, dict):
        raise Problem(400, "bad_body", "the body is a JSON object")
    number, code = str(body.get("card_number", "")), str(body.get("check_code", ""))
    async with request.app[pool_key].acquire() as connection:
        found = await looked_up(request, connection, number, code)
    if isinstance(found, int):
        problem = Problem(429, "too_many_lookups", "too many lookups from this address")
        response = web.json_response(
            problem.body(), status=429, content_type="application/problem+json"
        )
        response.headers["Retry-After"] = str(found)
        return response
    if found is None:
        raise Problem(404, "card_not_found", "no card with this number and check code")
    return web.Response(
        text=json.dumps(found.as_json(), ensure_ascii=False),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def complaint_metrics(app: web.Application, connection: asyncpg.Connection) -> str:
    """Open complaints by state, and the overdue ones (past their due day, unanswered)."""
    by_state, overdue = await complaints.open_counts(connection, app[config_key].clock.today())
    text = observability.gauge_text(
        "ksh_complaints_open",
        "Complaints not answered yet, by state.",
        [({"state": state}, count) for state, count in sorted(by_state.items())],
    )
    return text + observability.gauge_text(
        "ksh_complaints_overdue",
        f"Complaints still open after their due day ({complaints.answer_days} days after receipt).",
        [({}, overdue)],
    )
